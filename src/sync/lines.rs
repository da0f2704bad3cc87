//! The NDJSON line reader of the delta stream: chunks in, complete lines out, the unfinished
//! tail kept, every line held to the length limit. Pure: no I/O, no clock, no decoding.

/// A line (complete, or the unfinished tail) longer than the limit; the stream is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line} is longer than max_line_bytes ({limit} bytes)")]
pub struct LineTooLong {
    /// The 1-based number of the line in the stream.
    pub line: u64,
    pub limit: usize,
}

/// Splits a byte stream at `\n`. Lines come out without their `\n`, numbered from 1 in stream
/// order; blank lines (heartbeats) come out too, for the caller to skip. After an error the
/// splitter is spent: the caller drops the stream.
#[derive(Debug, Clone)]
pub struct LineSplitter {
    tail: Vec<u8>,
    max_line_bytes: usize,
    done: u64,
}

impl LineSplitter {
    pub fn new(max_line_bytes: usize) -> LineSplitter {
        LineSplitter {
            tail: Vec::new(),
            max_line_bytes,
            done: 0,
        }
    }

    /// Feeds one chunk and returns the lines it completed. A line longer than the limit, or a
    /// tail that grows past it, is an error; lines completed earlier in the same chunk are
    /// dropped with it (the stream is refused from that line on).
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<(u64, Vec<u8>)>, LineTooLong> {
        let mut lines = Vec::new();
        let mut rest = chunk;
        while let Some(nl) = rest.iter().position(|b| *b == b'\n') {
            let (head, after) = rest.split_at(nl);
            rest = after.get(1..).unwrap_or_default();
            let number = self.done + 1;
            if self.tail.len() + head.len() > self.max_line_bytes {
                return Err(self.too_long(number));
            }
            let mut line = std::mem::take(&mut self.tail);
            line.extend_from_slice(head);
            self.done = number;
            lines.push((number, line));
        }
        if self.tail.len() + rest.len() > self.max_line_bytes {
            return Err(self.too_long(self.done + 1));
        }
        self.tail.extend_from_slice(rest);
        Ok(lines)
    }

    /// The bytes of the unfinished line.
    pub fn tail(&self) -> &[u8] {
        &self.tail
    }

    /// How many complete lines have come out.
    pub fn lines_done(&self) -> u64 {
        self.done
    }

    fn too_long(&self, line: u64) -> LineTooLong {
        LineTooLong {
            line,
            limit: self.max_line_bytes,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn texts(lines: Vec<(u64, Vec<u8>)>) -> Vec<(u64, String)> {
        lines
            .into_iter()
            .map(|(n, l)| (n, String::from_utf8(l).unwrap()))
            .collect()
    }

    #[test]
    fn whole_lines_in_one_chunk() {
        let mut s = LineSplitter::new(100);
        let got = texts(s.feed(b"a\nbb\n\nccc").unwrap());
        assert_eq!(got, [(1, "a".into()), (2, "bb".into()), (3, String::new())]);
        assert_eq!(s.tail(), b"ccc");
        assert_eq!(s.lines_done(), 3);
    }

    #[test]
    fn a_line_across_chunks_keeps_its_tail() {
        let mut s = LineSplitter::new(100);
        assert!(s.feed(b"{\"from").unwrap().is_empty());
        assert!(s.feed(b"").unwrap().is_empty());
        assert!(s.feed(b"_version\":").unwrap().is_empty());
        let got = texts(s.feed(b"1}\nnext").unwrap());
        assert_eq!(got, [(1, "{\"from_version\":1}".into())]);
        assert_eq!(s.tail(), b"next");
        let got = texts(s.feed(b"\n").unwrap());
        assert_eq!(got, [(2, "next".into())]);
        assert!(s.tail().is_empty());
    }

    #[test]
    fn a_line_at_the_limit_passes_and_one_past_it_fails() {
        let mut s = LineSplitter::new(3);
        assert_eq!(texts(s.feed(b"abc\n").unwrap()), [(1, "abc".into())]);
        assert_eq!(s.feed(b"abcd\n"), Err(LineTooLong { line: 2, limit: 3 }));
    }

    #[test]
    fn an_unfinished_tail_past_the_limit_fails_before_its_newline() {
        let mut s = LineSplitter::new(4);
        assert!(s.feed(b"ok\nab").unwrap().len() == 1);
        assert!(s.feed(b"cd").unwrap().is_empty());
        assert_eq!(s.feed(b"e"), Err(LineTooLong { line: 2, limit: 4 }));
    }

    #[test]
    fn lines_before_a_long_one_in_the_same_chunk_are_dropped_with_it() {
        let mut s = LineSplitter::new(2);
        assert_eq!(s.feed(b"a\nb\ntoolong\n"), Err(LineTooLong { line: 3, limit: 2 }));
    }

    #[test]
    fn carriage_returns_stay_in_the_line() {
        let mut s = LineSplitter::new(10);
        assert_eq!(texts(s.feed(b"x\r\n").unwrap()), [(1, "x\r".into())]);
    }
}
