//! A MessagePack snapshot built into an index while it is read: no document in between.
//!
//! `Index::build` takes a decoded `Snapshot`; at 10M role assignments that document is about
//! 1.3 GB of owned strings beside the bytes it came from, and decoding it is half of the load.
//! Here the bytes are read through a window of a few MiB, and each element of the three large
//! lists goes into the index as soon as it is whole: a user or a resource is interned and
//! written, an assignment becomes a tuple of ids (12 or 16 bytes). Assignments come in blocks
//! of whole elements, and two threads take each block: one interns the users, the other the
//! orgs, roles and resources (the split `Index::build` makes), so the bytes are never held
//! whole and the index is all that grows.
//!
//! The same document, the same index: users, resources and assignments go through the
//! build's own code in the build's order, so ids come out as `Index::build` gives them.
//! Validation is the same too, by construction rather than a copy of it: each element is
//! checked as it comes (keys, references, repeats), and the small lists are checked by
//! `validate` itself. Anything this path does not take the way the reference decode would —
//! a list it does not expect at that place (users, then resources, then assignments), an
//! element that is not a map of string fields, anything that would not validate — makes it
//! give up with `None`; the caller then decodes the whole document the reference way
//! (`Snapshot::decode`, `validate`), which gives the answer, or the error to report. A
//! document that fails is therefore read twice; a good one once.

use super::facts::{AssignmentIds, Placing};
use super::*;
use crate::model::msgpack::{self, FIELDS, Reader};
use crate::model::{MAX_KEY_BYTES, validate};
use std::collections::VecDeque;
use std::io::{self, Read};
use std::sync::mpsc;

/// The window's first size; it doubles for an element that does not fit.
const WINDOW: usize = 4 << 20;

/// The depth of a large list's elements in the document (as `msgpack::decode_at` reads them).
const ELEMENT_DEPTH: usize = 2;

/// What `Index::from_msgpack` made of a document.
pub enum Streamed {
    /// The whole document is in the index.
    Built(Box<Index>),
    /// The fast path does not take this document; decode it the reference way.
    Declined,
}

impl Index {
    /// Builds the index of the MessagePack snapshot `src` holds, reading it once through a
    /// window. `Ok(Declined)` for a document this path does not take (see the module doc);
    /// `Err` only when reading fails.
    pub fn from_msgpack<R: Read>(src: R) -> io::Result<Streamed> {
        Index::from_msgpack_windowed(src, WINDOW)
    }

    /// `from_msgpack` through a window of `window` bytes at first (the tests and the fuzz
    /// target use a few bytes, so that elements straddle refills).
    pub fn from_msgpack_windowed<R: Read>(src: R, window: usize) -> io::Result<Streamed> {
        let mut feed = Feed::new(src, window.max(1));
        let mut ix = Index::empty(0);
        Ok(match ix.read_document(&mut feed)? {
            Some(()) => Streamed::Built(Box::new(ix)),
            None => Streamed::Declined,
        })
    }

    fn read_document<R: Read>(&mut self, f: &mut Feed<R>) -> io::Result<Option<()>> {
        let Some(entries) = f.parse(|r| r.map_len())? else {
            return Ok(None);
        };
        let mut rest = Snapshot::default();
        let mut seen = [false; FIELDS.len()];
        // Users, then resources, then assignments: the build's order.
        let mut stage = 0;
        for _ in 0..entries {
            let Some(field) = f.parse(|r| {
                let key = r.str()?;
                FIELDS.iter().position(|k| *k == key)
            })?
            else {
                return Ok(None);
            };
            if std::mem::replace(&mut seen[field], true) {
                return Ok(None);
            }
            let taken = match FIELDS[field] {
                "users" if stage < 1 => {
                    stage = 1;
                    self.read_users(f)?
                }
                "resources" if stage < 2 => {
                    stage = 2;
                    self.read_resources(f)?
                }
                "role_assignments" => {
                    stage = 3;
                    self.read_assignments(f)?
                }
                "users" | "resources" => None,
                name => match f.value()? {
                    Some(n) => {
                        let taken = f.window().get(..n).and_then(|v| msgpack::small(&mut rest, name, v, 1));
                        f.start += n;
                        taken
                    }
                    None => None,
                },
            };
            if taken.is_none() {
                return Ok(None);
            }
        }
        // `format` and `version` are required; the small lists validate as in the document.
        if !seen[0] || !seen[1] || validate(&rest).is_err() {
            return Ok(None);
        }
        self.version = rest.version;
        self.finish(&rest);
        Ok(Some(()))
    }

    fn read_users<R: Read>(&mut self, f: &mut Feed<R>) -> io::Result<Option<()>> {
        let Some(len) = f.parse(|r| r.list_len())? else {
            return Ok(None);
        };
        for _ in 0..len {
            let Some(n) = f.value()? else { return Ok(None) };
            let taken = f.window().get(..n).and_then(|v| self.take_user(v));
            f.start += n;
            if taken.is_none() {
                return Ok(None);
            }
        }
        Ok(Some(()))
    }

    /// One element of `users`: most are `{key}` alone, read by hand; the rest through serde.
    fn take_user(&mut self, bytes: &[u8]) -> Option<()> {
        let mut r = Reader { buf: bytes, pos: 0 };
        let alone = r.map_len()? == 1 && r.str()? == "key";
        let key = if alone {
            r.str().filter(|_| r.pos == bytes.len())
        } else {
            None
        };
        let id = match key {
            Some(key) => {
                key_ok(key)?;
                self.user_id(key)
            }
            None => {
                let (user, _) = msgpack::one::<User>(bytes, ELEMENT_DEPTH)?;
                key_ok(&user.key)?;
                let id = self.user_id(&user.key);
                if self.users.get(id).is_some_and(|u| u.listed) {
                    return None; // a repeat: validation refuses it
                }
                self.upsert_user(&user);
                return Some(());
            }
        };
        if self.users.set_listed(id, true) {
            return None; // a repeat
        }
        self.counts.users += 1;
        Some(())
    }

    fn read_resources<R: Read>(&mut self, f: &mut Feed<R>) -> io::Result<Option<()>> {
        let Some(len) = f.parse(|r| r.list_len())? else {
            return Ok(None);
        };
        for _ in 0..len {
            let Some(n) = f.value()? else { return Ok(None) };
            let mut parents = Vec::new();
            let taken = f.window().get(..n).and_then(|v| self.take_resource(v, &mut parents));
            f.start += n;
            if taken.is_none() {
                return Ok(None);
            }
        }
        Ok(Some(()))
    }

    /// One element of `resources`: type, key, org and parents by hand; with attributes (or
    /// anything else) through serde.
    fn take_resource<'a>(&mut self, bytes: &'a [u8], parents: &mut Vec<&'a str>) -> Option<()> {
        if let Some((t, key, org)) = plain_resource(bytes, parents) {
            return self.put_checked(t, key, org, parents, None);
        }
        let (r, _) = msgpack::one::<crate::model::Resource>(bytes, ELEMENT_DEPTH)?;
        let parents: Vec<&str> = r.parents.iter().map(String::as_str).collect();
        self.put_checked(&r.resource_type, &r.key, &r.org, &parents, r.attributes.clone())
    }

    /// A resource checked as validation checks it (keys, parent references, no repeat), then
    /// written as `upsert_resource` writes it.
    fn put_checked(
        &mut self,
        t: &str,
        key: &str,
        org: &str,
        parents: &[&str],
        attributes: Option<Attributes>,
    ) -> Option<()> {
        key_ok(t)?;
        key_ok(key)?;
        key_ok(org)?;
        for p in parents {
            let r = ResourceRef::parse(p)?;
            key_ok(r.resource_type)?;
            key_ok(r.key)?;
        }
        let id = self.res_id(t, key);
        if self.res_hot.get(id as usize).is_none_or(|h| h.org != NONE) {
            return None; // a repeat: validation refuses it
        }
        let ids: Box<[u32]> = parents.iter().map(|p| self.res_ref(p)).collect();
        self.put_resource(id, org, ids, attributes);
        Some(())
    }

    /// The assignments: blocks of whole elements, users interned on a second thread.
    fn read_assignments<R: Read>(&mut self, f: &mut Feed<R>) -> io::Result<Option<()>> {
        let Some(len) = f.parse(|r| r.list_len())? else {
            return Ok(None);
        };
        let mut placing = Placing::default();
        let (users, mut ids) = self.assignment_ids();
        let read = std::thread::scope(|scope| -> io::Result<Option<()>> {
            let (to_users, blocks) = mpsc::sync_channel::<(Arc<[u8]>, usize)>(2);
            let (to_main, user_ids) = mpsc::sync_channel::<Option<Vec<u32>>>(2);
            let worker = std::thread::Builder::new()
                .name("permd-load-users".into())
                .spawn_scoped(scope, move || {
                    for (block, count) in blocks {
                        if to_main.send(block_users(&block, count, users)).is_err() {
                            return;
                        }
                    }
                })?;
            // This block's (org, role, resource or NONE), waiting for its user ids.
            let mut pending: VecDeque<Vec<(u32, u32, u32)>> = VecDeque::new();
            let mut zip = |rest: Vec<(u32, u32, u32)>, uids: Option<Vec<u32>>| -> Option<()> {
                let uids = uids?;
                if uids.len() != rest.len() {
                    return None;
                }
                for (uid, (org, role, res)) in uids.into_iter().zip(rest) {
                    match res {
                        NONE => placing.org_wide(uid, org, role),
                        res => placing.on_instance(uid, res, org, role),
                    }
                }
                Some(())
            };
            let mut left = len;
            while left > 0 {
                if f.unread() < f.window_size / 2 {
                    f.more()?;
                }
                // At least one whole element, then as many as the window holds.
                if f.value()?.is_none() {
                    return Ok(None);
                }
                let window = f.window();
                let mut r = Reader { buf: window, pos: 0 };
                let (mut count, mut end) = (0, 0);
                while count < left && r.skip().is_some() {
                    (count, end) = (count + 1, r.pos);
                }
                let Some(block) = window.get(..end).map(Arc::<[u8]>::from) else {
                    return Ok(None);
                };
                f.start += end;
                left -= count;
                if to_users.send((block.clone(), count)).is_err() {
                    return Ok(None);
                }
                let Some(rest) = block_others(&block, count, &mut ids) else {
                    return Ok(None);
                };
                pending.push_back(rest);
                // The users' thread may be a block behind.
                while pending.len() > 1 {
                    let (Some(rest), Ok(uids)) = (pending.pop_front(), user_ids.recv()) else {
                        return Ok(None);
                    };
                    if zip(rest, uids).is_none() {
                        return Ok(None);
                    }
                }
            }
            drop(to_users);
            while let Some(rest) = pending.pop_front() {
                if zip(rest, user_ids.recv().ok().flatten()).is_none() {
                    return Ok(None);
                }
            }
            drop(user_ids);
            if worker.join().is_err() {
                return Ok(None);
            }
            Ok(Some(()))
        });
        if read?.is_none() {
            return Ok(None);
        }
        // Validation refuses a document with an assignment twice.
        Ok((self.place_assignments(placing) == 0).then_some(()))
    }
}

/// The user ids of a block's `count` assignments; `None` if one does not read or check.
fn block_users(block: &[u8], count: usize, users: &mut Interner) -> Option<Vec<u32>> {
    let mut r = Reader { buf: block, pos: 0 };
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let a = assignment(&mut r)?;
        key_ok(a.user)?;
        out.push(users.intern(a.user));
    }
    Some(out)
}

/// (org, role, resource or NONE) of a block's `count` assignments; `None` if one does not
/// read or check.
fn block_others(block: &[u8], count: usize, ids: &mut AssignmentIds<'_>) -> Option<Vec<(u32, u32, u32)>> {
    let mut r = Reader { buf: block, pos: 0 };
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let a = assignment(&mut r)?;
        key_ok(a.role)?;
        key_ok(a.org)?;
        let res = match a.resource {
            None => NONE,
            Some(reference) => {
                let rr = ResourceRef::parse(reference)?;
                key_ok(rr.resource_type)?;
                key_ok(rr.key)?;
                ids.res.reference(reference)
            }
        };
        out.push((ids.orgs.intern(a.org), ids.roles.intern(a.role), res));
    }
    Some(out)
}

/// A role assignment's fields, borrowed from the bytes.
struct Assignment<'a> {
    user: &'a str,
    role: &'a str,
    org: &'a str,
    resource: Option<&'a str>,
}

/// The assignment at the reader: a map of `user`, `role`, `org` and an optional `resource`
/// (string or nil), each once, nothing else.
fn assignment<'a>(r: &mut Reader<'a>) -> Option<Assignment<'a>> {
    let n = r.map_len()?;
    if !(3..=4).contains(&n) {
        return None;
    }
    let (mut user, mut role, mut org, mut resource) = (None, None, None, None);
    for _ in 0..n {
        let slot = match r.str()? {
            "user" => &mut user,
            "role" => &mut role,
            "org" => &mut org,
            "resource" => {
                if resource.is_some() {
                    return None;
                }
                resource = Some(if r.nil() { None } else { Some(r.str()?) });
                continue;
            }
            _ => return None,
        };
        if slot.replace(r.str()?).is_some() {
            return None;
        }
    }
    Some(Assignment {
        user: user?,
        role: role?,
        org: org?,
        resource: resource.flatten(),
    })
}

/// A resource of `type`, `key`, `org` and string `parents` (or nil) only, each once, read by
/// hand: (type, key, org), parents in `parents`. `None` for any other shape.
fn plain_resource<'a>(bytes: &'a [u8], parents: &mut Vec<&'a str>) -> Option<(&'a str, &'a str, &'a str)> {
    let mut r = Reader { buf: bytes, pos: 0 };
    let n = r.map_len()?;
    let (mut t, mut key, mut org, mut listed) = (None, None, None, false);
    parents.clear();
    for _ in 0..n {
        let slot = match r.str()? {
            "type" => &mut t,
            "key" => &mut key,
            "org" => &mut org,
            "parents" => {
                if std::mem::replace(&mut listed, true) {
                    return None;
                }
                for _ in 0..r.list_len()? {
                    parents.push(r.str()?);
                }
                continue;
            }
            _ => return None,
        };
        if slot.replace(r.str()?).is_some() {
            return None;
        }
    }
    (r.pos == bytes.len()).then_some(())?;
    Some((t?, key?, org?))
}

/// A key as validation takes it: not empty, at most `MAX_KEY_BYTES`.
fn key_ok(key: &str) -> Option<()> {
    (!key.is_empty() && key.len() <= MAX_KEY_BYTES).then_some(())
}

/// A reader seen through a window of its bytes: `start..end` of `buf` not yet taken.
struct Feed<R> {
    src: R,
    /// The window's first size.
    window_size: usize,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    eof: bool,
}

impl<R: Read> Feed<R> {
    fn new(src: R, window: usize) -> Feed<R> {
        Feed {
            src,
            window_size: window,
            buf: Vec::new(),
            start: 0,
            end: 0,
            eof: false,
        }
    }

    fn window(&self) -> &[u8] {
        self.buf.get(self.start..self.end).unwrap_or_default()
    }

    fn unread(&self) -> usize {
        self.end - self.start
    }

    /// Reads more into the window, keeping what is unread (the window doubles when that
    /// fills it); false at the end of the input.
    fn more(&mut self) -> io::Result<bool> {
        if self.eof {
            return Ok(false);
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            let grown = (self.buf.len() * 2).max(self.window_size);
            self.buf.resize(grown, 0);
        }
        loop {
            match self.src.read(self.buf.get_mut(self.end..).unwrap_or_default()) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(false);
                }
                Ok(n) => {
                    self.end += n;
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// The length of the next value, read whole into the window; `None` when the input ends
    /// first or the value is not MessagePack.
    fn value(&mut self) -> io::Result<Option<usize>> {
        loop {
            let mut r = Reader {
                buf: self.window(),
                pos: 0,
            };
            if r.skip().is_some() {
                return Ok(Some(r.pos));
            }
            if !self.more()? {
                return Ok(None);
            }
        }
    }

    /// `read` of the next header (a map's or a list's length, a key), taken from the window;
    /// `None` when it does not read.
    fn parse<T>(&mut self, read: impl Fn(&mut Reader<'_>) -> Option<T>) -> io::Result<Option<T>> {
        loop {
            let mut r = Reader {
                buf: self.window(),
                pos: 0,
            };
            if let Some(v) = read(&mut r) {
                self.start += r.pos;
                return Ok(Some(v));
            }
            // A header is at most 9 bytes: with that many it does not read at all.
            if self.unread() >= 9 + MAX_KEY_BYTES || !self.more()? {
                return Ok(None);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::model::generate::{Params, generate};
    use crate::model::{Encoding, Org, RoleAssignment};

    /// A generated document with the less common shapes too: users with metadata, resources
    /// with attributes and several parents, an assignment to a resource no one lists.
    fn doc() -> Snapshot {
        let mut s = generate(&Params {
            users: 60,
            assignments: 900,
            resources: 150,
            orgs: 6,
            depth: 3,
            grants: 12,
            seed: 11,
            shape: Default::default(),
        });
        for (i, u) in (0..20).zip(["a", "b"].iter().cycle()) {
            s.users.push(User {
                key: format!("meta-{i}"),
                email: Some(format!("{u}{i}@example.com")),
                first_name: None,
                last_name: None,
                attributes: (i % 2 == 0).then(|| serde_json::json!({"level": i}).as_object().cloned().unwrap()),
            });
        }
        s.users.push(User {
            key: "u1".into(),
            email: None,
            first_name: None,
            last_name: None,
            attributes: None,
        });
        let first = s.resources[1].clone();
        s.resources[3].parents.push(format!("folder:{}", first.key));
        s.resources[4].attributes = serde_json::json!({"owner": "u1"}).as_object().cloned();
        s.resources[5].parents.push("folder:nowhere".into());
        s.role_assignments.push(RoleAssignment {
            user: "someone-new".into(),
            role: "viewer".into(),
            org: "org-unknown".into(),
            resource: Some("report:r-unlisted".into()),
        });
        s.orgs.push(Org {
            key: "org-unknown".into(),
            parent: None,
            name: None,
            attributes: None,
        });
        s
    }

    /// A reader that hands out at most `n` bytes a call.
    struct Trickle<'a>(&'a [u8], usize);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.1.min(buf.len()).min(self.0.len());
            let (head, tail) = self.0.split_at(n);
            buf[..n].copy_from_slice(head);
            self.0 = tail;
            Ok(n)
        }
    }

    fn built(bytes: &[u8], window: usize, per_read: usize) -> Option<Index> {
        match Index::from_msgpack_windowed(Trickle(bytes, per_read), window).unwrap() {
            Streamed::Built(ix) => Some(*ix),
            Streamed::Declined => None,
        }
    }

    /// The same index as the build: the same document back in the same order (so the same
    /// ids), the same counts, for every window and read size.
    #[test]
    fn builds_what_the_build_builds() {
        let s = doc();
        validate(&s).unwrap();
        let bytes = s.encode(Encoding::MessagePack).unwrap();
        let want = Index::build(&s);
        for (window, per_read) in [
            (WINDOW, usize::MAX),
            (1, 1),
            (7, 3),
            (64, 1000),
            (4096, 17),
            (1 << 16, 1 << 16),
        ] {
            let ix = built(&bytes, window, per_read);
            assert!(ix.is_some(), "declined at {window}/{per_read}");
            let ix = ix.unwrap();
            assert_eq!(
                ix.to_snapshot(),
                want.to_snapshot(),
                "window {window}, reads of {per_read}"
            );
            assert_eq!(ix.counts(), want.counts());
            assert_eq!(ix.version(), s.version);
            for id in 0..want.names.users.len() as u32 {
                assert_eq!(ix.names.users.name(id), want.names.users.name(id));
            }
            for id in 0..want.res_count() {
                assert_eq!(ix.res_name(id), want.res_name(id));
            }
            assert_eq!(ix.span_violation(), None);
        }
    }

    /// Every document that would not validate, and every shape this path does not read, is
    /// left to the reference path, which then gives the same answer as ever.
    #[test]
    fn leaves_what_it_does_not_take_to_the_reference_path() {
        let base = doc();
        let mut cases: Vec<(&str, Snapshot)> = Vec::new();
        let mut s = base.clone();
        s.users.push(s.users[0].clone());
        cases.push(("a user twice", s));
        let mut s = base.clone();
        s.resources.push(s.resources[2].clone());
        cases.push(("a resource twice", s));
        let mut s = base.clone();
        s.role_assignments.push(s.role_assignments[7].clone());
        cases.push(("an assignment twice", s));
        let mut s = base.clone();
        s.role_assignments[3].user = String::new();
        cases.push(("an empty user", s));
        let mut s = base.clone();
        s.role_assignments[4].resource = Some("no-colon".into());
        cases.push(("a reference without a type", s));
        let mut s = base.clone();
        s.resources[6].parents.push("folder:".into());
        cases.push(("an empty parent key", s));
        let mut s = base.clone();
        s.role_assignments[5].role = "r".repeat(MAX_KEY_BYTES + 1);
        cases.push(("a long role", s));
        let mut s = base.clone();
        s.format = 2;
        cases.push(("format 2", s));
        for (what, s) in cases {
            let bytes = s.encode(Encoding::MessagePack).unwrap();
            assert!(built(&bytes, 64, 5).is_none(), "{what}: taken");
            let want = crate::sync::load_document(&bytes, Encoding::MessagePack).map(|ix| ix.to_snapshot());
            assert!(want.is_err(), "{what}: validates");
            let got = crate::sync::load_index(&bytes, Encoding::MessagePack).map(|ix| ix.to_snapshot());
            assert_eq!(got, want, "{what}");
        }
    }

    /// Shapes rmp-serde reads but this path does not: left to it, with the same result.
    #[test]
    fn other_shapes_load_the_reference_way() {
        let s = doc();
        let want = Index::build(&s).to_snapshot();
        // Assignments before users (a map is in any order).
        let bytes = s.encode(Encoding::MessagePack).unwrap();
        let mut entries: Vec<(&str, &[u8])> = Vec::new();
        msgpack::walk_map(&bytes, |key, rest| {
            let mut r = Reader { buf: rest, pos: 0 };
            r.skip()?;
            entries.push((key, &rest[..r.pos]));
            Some(r.pos)
        })
        .unwrap();
        entries.sort_by_key(|(k, _)| *k != "role_assignments");
        assert!(entries.len() < 16);
        let mut reordered = vec![0x80 | entries.len() as u8];
        for (k, v) in &entries {
            reordered.push(0xa0 | k.len() as u8);
            reordered.extend_from_slice(k.as_bytes());
            reordered.extend_from_slice(v);
        }
        assert!(built(&reordered, WINDOW, usize::MAX).is_none());
        let got = crate::sync::load_index(&reordered, Encoding::MessagePack).unwrap();
        assert_eq!(got.to_snapshot(), want);
        // Structs as arrays (rmp-serde's compact form): refused either way, with one error.
        let compact = rmp_serde::to_vec(&s).unwrap();
        assert!(built(&compact, WINDOW, usize::MAX).is_none());
        let got = crate::sync::load_index(&compact, Encoding::MessagePack).map(|ix| ix.version());
        let want = crate::sync::load_document(&compact, Encoding::MessagePack).map(|ix| ix.version());
        assert!(got.is_err());
        assert_eq!(got, want);
    }

    /// Cut anywhere, the document is never taken unless what is left still holds all of it.
    #[test]
    fn truncated_documents_are_never_taken() {
        let bytes = doc().encode(Encoding::MessagePack).unwrap();
        for cut in (0..bytes.len()).step_by(97).chain([bytes.len() - 1]) {
            assert!(built(&bytes[..cut], 64, 13).is_none(), "cut at {cut}");
        }
    }
}
