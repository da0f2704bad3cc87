//! The fast path of a MessagePack snapshot: the same result as rmp-serde's decode of
//! [`Snapshot`], in less time and memory on a large document.
//!
//! rmp-serde decodes a list into a `Vec` that grows by doubling (serde caps its first
//! allocation at 1 MiB), so a 10M-assignment list is copied over and over into fresh pages, and
//! everything runs on one core. Here the top-level map is walked by hand: the small lists are
//! decoded by rmp-serde as before, and the three large ones (`users`, `resources`,
//! `role_assignments`) are first skipped over (a structural pass, no allocation) to find where
//! each chunk of elements starts, then decoded chunk by chunk, on as many threads as there are
//! cores (up to [`MAX_THREADS`]), straight into a `Vec` of the final length.
//!
//! Each element and each small field is still decoded by rmp-serde through the types' serde
//! impls, at the nesting depth it has in the whole document, so what decodes, and to what, is
//! unchanged. Anything the fast path does not take — a document that is not a map with string
//! keys, an unknown or repeated field, a missing `format` or `version`, an element that does
//! not decode — makes it give up, and the caller decodes the whole document the reference way
//! (`rmp_serde::from_slice`), which then gives today's error text. A failing document is
//! therefore walked twice; a good one once, plus the skip pass over its large lists.

use super::{Resource, RoleAssignment, Snapshot, User};
use serde::Deserialize;
use serde::de::IgnoredAny;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

/// At most this many threads decode one document.
pub const MAX_THREADS: usize = 4;

/// Elements per chunk of a large list: large enough that handing a chunk over costs nothing
/// beside decoding it, small enough that two threads finish within a chunk of each other.
const CHUNK: usize = 8192;

/// Below this many bytes a document is decoded on the calling thread alone.
const PARALLEL_FROM_BYTES: usize = 1 << 20;

/// rmp-serde's nesting limit (`Deserializer::new`): a value at depth `d` of the document is
/// decoded with `DEPTH - d` left, as it would be inside the whole document.
const DEPTH: usize = 1024;

/// How the fast path is run; the tests shrink the chunks and force the threads.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    pub chunk: usize,
    pub threads: usize,
    /// The depth of the snapshot's map in what rmp-serde decodes: 0 for a document, 1 inside
    /// the cache's `{source, current_at_ms, snapshot}`.
    pub depth: usize,
}

impl Plan {
    pub(crate) fn for_len(len: usize) -> Plan {
        let threads = if len < PARALLEL_FROM_BYTES {
            1
        } else {
            std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .clamp(1, MAX_THREADS)
        };
        Plan {
            chunk: CHUNK,
            threads,
            depth: 0,
        }
    }
}

/// The reference decode: rmp-serde over the whole document.
pub(crate) fn reference(bytes: &[u8]) -> Result<Snapshot, String> {
    rmp_serde::from_slice(bytes).map_err(|e| e.to_string())
}

/// The fast path; `None` when it does not take the document (the caller then decodes it with
/// [`reference`]). When it gives a snapshot, [`reference`] gives the same one.
pub(crate) fn decode(bytes: &[u8], plan: Plan) -> Option<Snapshot> {
    decode_at(bytes, plan).map(|(s, _)| s)
}

/// [`decode`] of the snapshot at the start of `bytes`, and the length of its encoding.
pub(crate) fn decode_at(bytes: &[u8], plan: Plan) -> Option<(Snapshot, usize)> {
    // The large lists' placeholders are written (and their pages faulted in) on threads of
    // their own while this one skips over the elements.
    std::thread::scope(|scope| {
        let mut r = Reader { buf: bytes, pos: 0 };
        let entries = r.map_len()?;
        let mut s = Snapshot::default();
        let mut seen = [false; FIELDS.len()];
        // The large lists' elements: where each chunk starts and how many elements it holds.
        let mut users = (Large::default(), Slots::new(0, &plan, scope, empty_user));
        let mut resources = (Large::default(), Slots::new(0, &plan, scope, empty_resource));
        let mut assignments = (Large::default(), Slots::new(0, &plan, scope, empty_assignment));
        for _ in 0..entries {
            let key = r.str()?;
            let field = FIELDS.iter().position(|f| *f == key)?;
            if std::mem::replace(&mut seen[field], true) {
                return None; // rmp-serde: duplicate field
            }
            let start = r.pos;
            // The least entries a valid element has: `key`; `type`, `key`, `org`; `user`,
            // `role`, `org`.
            match FIELDS[field] {
                "users" => {
                    let len = r.large_len(1)?;
                    users.1 = Slots::new(len, &plan, scope, empty_user);
                    users.0 = r.large(len, plan.chunk, 1)?;
                }
                "resources" => {
                    let len = r.large_len(3)?;
                    resources.1 = Slots::new(len, &plan, scope, empty_resource);
                    resources.0 = r.large(len, plan.chunk, 3)?;
                }
                "role_assignments" => {
                    let len = r.large_len(3)?;
                    assignments.1 = Slots::new(len, &plan, scope, empty_assignment);
                    assignments.0 = r.large(len, plan.chunk, 3)?;
                }
                name => {
                    r.skip()?;
                    let value = bytes.get(start..r.pos)?;
                    small(&mut s, name, value, plan.depth + 1)?;
                }
            }
        }
        if !seen[0] || !seen[1] {
            return None; // rmp-serde: missing field `format` / `version`
        }
        // Trailing bytes after the map are ignored, as rmp_serde::from_slice ignores them.
        s.users = users.1.get(empty_user)?;
        s.resources = resources.1.get(empty_resource)?;
        s.role_assignments = assignments.1.get(empty_assignment)?;
        let mut tasks = Vec::new();
        users
            .0
            .tasks(bytes, &mut s.users, plan.chunk, Task::Users, &mut tasks)?;
        resources
            .0
            .tasks(bytes, &mut s.resources, plan.chunk, Task::Resources, &mut tasks)?;
        assignments.0.tasks(
            bytes,
            &mut s.role_assignments,
            plan.chunk,
            Task::Assignments,
            &mut tasks,
        )?;
        let depth = plan.depth + 2;
        run(tasks, plan.threads, depth).then_some((s, r.pos))
    })
}

fn empty_user() -> User {
    User {
        key: String::new(),
        email: None,
        first_name: None,
        last_name: None,
        attributes: None,
    }
}

fn empty_resource() -> Resource {
    Resource {
        resource_type: String::new(),
        key: String::new(),
        org: String::new(),
        parents: Vec::new(),
        attributes: None,
    }
}

fn empty_assignment() -> RoleAssignment {
    RoleAssignment {
        user: String::new(),
        role: String::new(),
        org: String::new(),
        resource: None,
    }
}

/// A large list's `Vec` of placeholders, each later overwritten by its decoded element:
/// written on a thread of its own when the plan has more than one, else when asked for.
enum Slots<'scope, T> {
    Filling(std::thread::ScopedJoinHandle<'scope, Vec<T>>),
    Later(usize),
}

impl<'scope, T: Send + 'scope> Slots<'scope, T> {
    fn new<'env>(len: usize, plan: &Plan, scope: &'scope std::thread::Scope<'scope, 'env>, empty: fn() -> T) -> Self {
        if len < plan.chunk || plan.threads <= 1 {
            return Slots::Later(len);
        }
        std::thread::Builder::new()
            .name("permd-decode-fill".into())
            .spawn_scoped(scope, move || placeholders(len, empty))
            .map_or(Slots::Later(len), Slots::Filling)
    }

    fn get(self, empty: fn() -> T) -> Option<Vec<T>> {
        match self {
            Slots::Filling(h) => h.join().ok(),
            Slots::Later(len) => Some(placeholders(len, empty)),
        }
    }
}

/// Walks a map of string keys: `value` gets each key and the bytes from its value on, and
/// answers how many of them the value took. `None` when the map is not such a map or
/// `value` gives up; else the length of the map's encoding.
pub(crate) fn walk_map<'a>(
    bytes: &'a [u8],
    mut value: impl FnMut(&'a str, &'a [u8]) -> Option<usize>,
) -> Option<usize> {
    let mut r = Reader { buf: bytes, pos: 0 };
    for _ in 0..r.map_len()? {
        let key = r.str()?;
        let took = value(key, bytes.get(r.pos..)?)?;
        r.take(took)?;
    }
    Some(r.pos)
}

/// One value of type `T` at the start of `bytes`, found at `depth`, and its encoding's length.
pub(crate) fn one<'a, T: Deserialize<'a>>(bytes: &'a [u8], depth: usize) -> Option<(T, usize)> {
    let mut r = Reader { buf: bytes, pos: 0 };
    r.skip()?;
    let value = T::deserialize(&mut at_depth(bytes.get(..r.pos)?, depth)).ok()?;
    Some((value, r.pos))
}

/// The fields of [`Snapshot`], `format` and `version` first.
pub(crate) const FIELDS: [&str; 12] = [
    "format",
    "version",
    "orgs",
    "resource_types",
    "roles",
    "users",
    "resources",
    "role_assignments",
    "role_grants",
    "menus",
    "rules",
    "url_mappings",
];

/// Decodes one small field of the top-level map from its value's bytes, as the derive would.
pub(crate) fn small(s: &mut Snapshot, name: &str, value: &[u8], depth: usize) -> Option<()> {
    let list = || at_depth(value, depth);
    match name {
        "format" => s.format = u32::deserialize(&mut at_depth(value, depth)).ok()?,
        "version" => s.version = u64::deserialize(&mut at_depth(value, depth)).ok()?,
        "orgs" => s.orgs = super::nullable(&mut list()).ok()?,
        "resource_types" => s.resource_types = super::nullable(&mut list()).ok()?,
        "roles" => s.roles = super::nullable(&mut list()).ok()?,
        "role_grants" => s.role_grants = super::nullable(&mut list()).ok()?,
        "menus" => s.menus = super::nullable(&mut list()).ok()?,
        "rules" => s.rules = super::nullable(&mut list()).ok()?,
        "url_mappings" => s.url_mappings = super::nullable(&mut list()).ok()?,
        _ => return None,
    }
    Some(())
}

type De<'a> = rmp_serde::Deserializer<rmp_serde::decode::ReadRefReader<'a, [u8]>>;

/// A deserializer for a value found at `depth` (a document's top-level map is at depth 1).
fn at_depth(value: &[u8], depth: usize) -> De<'_> {
    let mut de = rmp_serde::Deserializer::from_read_ref(value);
    de.set_max_depth(DEPTH - depth);
    de
}

/// A `Vec` of `len` placeholders, each overwritten by its decoded element.
fn placeholders<T>(len: usize, empty: impl Fn() -> T) -> Vec<T> {
    let mut v = Vec::with_capacity(len);
    v.resize_with(len, empty);
    v
}

/// A large list as the skip pass found it: each chunk's first byte.
#[derive(Default)]
struct Large {
    /// Byte offsets: chunk `i` spans `starts[i]..starts[i + 1]`; the last entry is the end.
    starts: Vec<usize>,
}

impl Large {
    /// Pairs each chunk's bytes with its slice of `slots` (one slot per element).
    fn tasks<'s, 'b, T>(
        &self,
        bytes: &'b [u8],
        slots: &'s mut [T],
        chunk: usize,
        task: impl Fn(&'s mut [T], &'b [u8]) -> Task<'s, 'b>,
        out: &mut Vec<Task<'s, 'b>>,
    ) -> Option<()> {
        for (i, slots) in slots.chunks_mut(chunk).enumerate() {
            let (from, to) = (*self.starts.get(i)?, *self.starts.get(i + 1)?);
            out.push(task(slots, bytes.get(from..to)?));
        }
        Some(())
    }
}

/// One chunk of a large list: its slots and the bytes of exactly that many elements.
enum Task<'s, 'b> {
    Users(&'s mut [User], &'b [u8]),
    Resources(&'s mut [Resource], &'b [u8]),
    Assignments(&'s mut [RoleAssignment], &'b [u8]),
}

impl Task<'_, '_> {
    fn run(self, depth: usize) -> bool {
        match self {
            Task::Users(slots, bytes) => fill(slots, bytes, depth),
            Task::Resources(slots, bytes) => fill(slots, bytes, depth),
            Task::Assignments(slots, bytes) => fill(slots, bytes, depth),
        }
    }
}

/// Decodes `slots.len()` elements, found at `depth`, from `bytes`, which must hold exactly
/// those.
fn fill<'b, T: Deserialize<'b>>(slots: &mut [T], bytes: &'b [u8], depth: usize) -> bool {
    let mut de = at_depth(bytes, depth);
    for slot in slots.iter_mut() {
        match T::deserialize(&mut de) {
            Ok(v) => *slot = v,
            Err(_) => return false,
        }
    }
    // Nothing may be left: the skip pass and rmp-serde agree on where each element ends.
    matches!(
        IgnoredAny::deserialize(&mut de),
        Err(rmp_serde::decode::Error::InvalidMarkerRead(ref e)) if e.kind() == std::io::ErrorKind::UnexpectedEof
    )
}

/// Runs the tasks on `threads` threads (the calling one among them); false if any failed.
fn run(tasks: Vec<Task<'_, '_>>, threads: usize, depth: usize) -> bool {
    if threads <= 1 || tasks.len() <= 1 {
        return tasks.into_iter().all(|t| t.run(depth));
    }
    let (tx, rx) = mpsc::channel();
    for t in tasks {
        // The receiver is alive here; a send cannot fail.
        let _ = tx.send(t);
    }
    drop(tx);
    let rx = Mutex::new(rx);
    let failed = AtomicBool::new(false);
    let work = || {
        while !failed.load(Ordering::Relaxed) {
            let next = rx.lock().map(|rx| rx.recv());
            match next {
                Ok(Ok(task)) => {
                    if !task.run(depth) {
                        failed.store(true, Ordering::Relaxed);
                    }
                }
                // No task left, or a worker panicked holding the lock.
                Ok(Err(_)) => return,
                Err(_) => {
                    failed.store(true, Ordering::Relaxed);
                    return;
                }
            }
        }
    };
    std::thread::scope(|scope| {
        let helpers: Vec<_> = (1..threads)
            .filter_map(|i| {
                std::thread::Builder::new()
                    .name(format!("permd-decode-{i}"))
                    .spawn_scoped(scope, work)
                    .ok()
            })
            .collect();
        work();
        for h in helpers {
            if h.join().is_err() {
                failed.store(true, Ordering::Relaxed);
            }
        }
    });
    !failed.load(Ordering::Relaxed)
}

/// A cursor over MessagePack bytes that reads headers and skips whole values.
pub(crate) struct Reader<'a> {
    pub(crate) buf: &'a [u8],
    pub(crate) pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn byte(&mut self) -> Option<u8> {
        let b = *self.buf.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    pub(crate) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }

    fn be(&mut self, n: usize) -> Option<usize> {
        Some(self.take(n)?.iter().fold(0usize, |acc, b| (acc << 8) | *b as usize))
    }

    pub(crate) fn map_len(&mut self) -> Option<usize> {
        match self.byte()? {
            m @ 0x80..=0x8f => Some((m & 0x0f) as usize),
            0xde => self.be(2),
            0xdf => self.be(4),
            _ => None,
        }
    }

    /// A string key (fixstr, str8/16/32).
    pub(crate) fn str(&mut self) -> Option<&'a str> {
        let len = match self.byte()? {
            m @ 0xa0..=0xbf => (m & 0x1f) as usize,
            0xd9 => self.be(1)?,
            0xda => self.be(2)?,
            0xdb => self.be(4)?,
            _ => return None,
        };
        std::str::from_utf8(self.take(len)?).ok()
    }

    /// The length of a large list: `nil` (empty, as `nullable` reads it) or an array. Each
    /// element of one that decodes is a map or an array of at least `required` entries, so
    /// takes `1 + required` bytes at least: a length beyond that is a lie, and refusing it
    /// keeps the placeholders allocated from it no more than rmp-serde would allocate for a
    /// document of this size that decodes.
    fn large_len(&mut self, required: usize) -> Option<usize> {
        let len = match self.byte()? {
            0xc0 => return Some(0),
            m @ 0x90..=0x9f => (m & 0x0f) as usize,
            0xdc => self.be(2)?,
            0xdd => self.be(4)?,
            _ => return None,
        };
        (len.checked_mul(1 + required)? <= self.buf.len() - self.pos).then_some(len)
    }

    /// Skips the `len` elements of a large list, noting every `chunk`-th one's offset; each
    /// must be a map or an array of at least `required` entries.
    fn large(&mut self, len: usize, chunk: usize, required: usize) -> Option<Large> {
        let mut starts = Vec::with_capacity(len / chunk + 2);
        for i in 0..len {
            if i % chunk == 0 {
                starts.push(self.pos);
            }
            if self.container_len()? < required {
                return None;
            }
            self.skip()?;
        }
        starts.push(self.pos);
        Some(Large { starts })
    }

    /// The length of an array, or 0 for `nil` (as `nullable` reads a list).
    pub(crate) fn list_len(&mut self) -> Option<usize> {
        match self.byte()? {
            0xc0 => Some(0),
            m @ 0x90..=0x9f => Some((m & 0x0f) as usize),
            0xdc => self.be(2),
            0xdd => self.be(4),
            _ => None,
        }
    }

    /// `nil`, taken: true when the next value is one.
    pub(crate) fn nil(&mut self) -> bool {
        let nil = self.buf.get(self.pos) == Some(&0xc0);
        self.pos += usize::from(nil);
        nil
    }

    /// The entry count of the map or array that starts here, without moving.
    pub(crate) fn container_len(&self) -> Option<usize> {
        let mut peek = Reader {
            buf: self.buf,
            pos: self.pos,
        };
        match peek.byte()? {
            m @ 0x80..=0x9f => Some((m & 0x0f) as usize),
            0xdc | 0xde => peek.be(2),
            0xdd | 0xdf => peek.be(4),
            _ => None,
        }
    }

    /// Skips one whole value, nested ones included, without recursion.
    pub(crate) fn skip(&mut self) -> Option<()> {
        let mut pending: u64 = 1;
        while pending > 0 {
            pending -= 1;
            let m = self.byte()?;
            let more = match m {
                0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => 0,
                0x80..=0x8f => 2 * (m & 0x0f) as u64,
                0x90..=0x9f => (m & 0x0f) as u64,
                0xa0..=0xbf => {
                    self.take((m & 0x1f) as usize)?;
                    0
                }
                0xc4 | 0xd9 => self.data(1, 0)?,
                0xc5 | 0xda => self.data(2, 0)?,
                0xc6 | 0xdb => self.data(4, 0)?,
                0xc7 => self.data(1, 1)?,
                0xc8 => self.data(2, 1)?,
                0xc9 => self.data(4, 1)?,
                0xca => self.fixed(4)?,
                0xcb => self.fixed(8)?,
                0xcc | 0xd0 => self.fixed(1)?,
                0xcd | 0xd1 => self.fixed(2)?,
                0xce | 0xd2 => self.fixed(4)?,
                0xcf | 0xd3 => self.fixed(8)?,
                0xd4 => self.fixed(2)?,
                0xd5 => self.fixed(3)?,
                0xd6 => self.fixed(5)?,
                0xd7 => self.fixed(9)?,
                0xd8 => self.fixed(17)?,
                0xdc => self.be(2)? as u64,
                0xdd => self.be(4)? as u64,
                0xde => 2 * self.be(2)? as u64,
                0xdf => 2 * self.be(4)? as u64,
                // 0xc1, never used
                _ => return None,
            };
            pending = pending.checked_add(more)?;
        }
        Some(())
    }

    /// Skips a length of `len_bytes`, `extra` bytes (an ext's type) and that many bytes.
    fn data(&mut self, len_bytes: usize, extra: usize) -> Option<u64> {
        let n = self.be(len_bytes)?;
        self.take(n.checked_add(extra)?)?;
        Some(0)
    }

    fn fixed(&mut self, n: usize) -> Option<u64> {
        self.take(n)?;
        Some(0)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::Encoding;
    use super::super::generate::{Params, generate};
    use super::*;

    fn small_doc() -> Snapshot {
        let mut s = generate(&Params {
            users: 50,
            assignments: 700,
            resources: 120,
            orgs: 5,
            depth: 3,
            grants: 10,
            seed: 7,
            shape: Default::default(),
        });
        s.users = (0..40)
            .map(|i| User {
                key: format!("user-{i}"),
                email: None,
                first_name: Some("F".into()),
                last_name: None,
                attributes: None,
            })
            .collect();
        s.users[3].email = Some("a@b".into());
        s.users[4].attributes = Some(
            serde_json::json!({"n": [1, 2.5, {"x": null}]})
                .as_object()
                .unwrap()
                .clone(),
        );
        s
    }

    /// Every plan gives what rmp-serde gives, on more chunks than threads and on one.
    #[test]
    fn the_fast_path_decodes_what_rmp_serde_decodes() {
        let s = small_doc();
        let bytes = s.encode(Encoding::MessagePack).unwrap();
        for plan in [
            Plan {
                chunk: 1,
                threads: 1,
                depth: 0,
            },
            Plan {
                chunk: 7,
                threads: 2,
                depth: 0,
            },
            Plan {
                chunk: 64,
                threads: 4,
                depth: 0,
            },
            Plan::for_len(bytes.len()),
        ] {
            let fast = decode(&bytes, plan);
            assert!(fast.is_some(), "{plan:?} gave up");
            let fast = fast.unwrap();
            assert_eq!(fast, s, "{plan:?}");
        }
        assert_eq!(reference(&bytes).unwrap(), s);
    }

    /// What the fast path does not take, it leaves to the reference decode; what it takes
    /// from a damaged document equals the reference's answer.
    #[test]
    fn the_fast_path_gives_up_where_rmp_serde_decides() {
        let s = small_doc();
        let good = s.encode(Encoding::MessagePack).unwrap();
        // Positional (array) encoding, which the derive reads too: left to the reference.
        let positional = rmp_serde::to_vec(&Snapshot {
            format: 1,
            version: 4,
            ..Snapshot::default()
        })
        .unwrap();
        let plan = Plan {
            chunk: 7,
            threads: 2,
            depth: 0,
        };
        assert!(decode(&positional, plan).is_none());
        assert_eq!(reference(&positional).unwrap().version, 4);
        // Every truncation and a flipped byte at many places: never a different answer.
        for cut in (0..good.len()).step_by(97) {
            let part = &good[..cut];
            assert!(decode(part, plan).is_none() || reference(part).is_ok(), "cut at {cut}");
            let mut flipped = good.clone();
            flipped[cut] ^= 0x21;
            if let Some(fast) = decode(&flipped, plan) {
                assert_eq!(Ok(fast), reference(&flipped), "flip at {cut}");
            }
        }
        // A list length beyond the bytes: refused before anything is allocated.
        let mut lie = rmp_serde::to_vec_named(&Snapshot {
            format: 1,
            version: 1,
            ..Snapshot::default()
        })
        .unwrap();
        lie[0] += 1;
        lie.extend_from_slice(b"\xb0role_assignments\xdd\xff\xff\xff\xff");
        assert!(decode(&lie, plan).is_none());
        assert!(reference(&lie).is_err());
    }

    #[test]
    fn skip_walks_every_kind_of_value() {
        let v = serde_json::json!({"a": [1, -1, 300, -300, 70000, 5_000_000_000u64, -5_000_000_000i64, 1.5,
            true, false, null, "x", "y".repeat(40), "z".repeat(300), "w".repeat(70000)], "b": {}});
        let mut bytes = rmp_serde::to_vec(&v).unwrap();
        bytes.extend_from_slice(&[0xc4, 2, 9, 9, 0xd4, 1, 0, 0xc7, 1, 5, 0]);
        let mut r = Reader { buf: &bytes, pos: 0 };
        for _ in 0..4 {
            r.skip().unwrap();
        }
        assert_eq!(r.pos, bytes.len());
        assert!(r.skip().is_none());
    }
}
