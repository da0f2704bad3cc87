//! Persistent containers the index is built from: a paged copy-on-write vector and an
//! append-only interner. Cloning either is cheap (pointer copies); changing one element
//! copies only its page, so a delta batch yields a new index without copying the old one.

use std::sync::Arc;

/// Elements a page holds at most; see `PagedVec::PER_PAGE`.
const PAGE: usize = 256;

/// A vector split into fixed pages shared between versions. Every page is a full
/// `PER_PAGE` slots (the last one padded with defaults) held as `Arc<[T]>`, so a lookup is
/// the page pointer and then the element: no `Vec` header between them.
#[derive(Clone, Debug)]
pub struct PagedVec<T> {
    pages: Vec<Arc<[T]>>,
    len: usize,
}

impl<T> Default for PagedVec<T> {
    fn default() -> Self {
        PagedVec {
            pages: Vec::new(),
            len: 0,
        }
    }
}

impl<T> PagedVec<T> {
    /// Slots per page: between half of `PAGE` and `PAGE`, as many as fit with the `Arc`
    /// header in a power-of-two number of bytes, so that a page is exactly one allocator size
    /// class (256 slots and the header would spill into the next class, a quarter larger).
    const PER_PAGE: usize = {
        let size = if std::mem::size_of::<T>() == 0 {
            1
        } else {
            std::mem::size_of::<T>()
        };
        let header = if std::mem::align_of::<T>() > 16 {
            std::mem::align_of::<T>()
        } else {
            16
        };
        let bytes = (PAGE * size + header).next_power_of_two() / 2;
        let n = (bytes - header) / size;
        if n == 0 { 1 } else { n }
    };
}

impl<T: Clone + Default> PagedVec<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[inline]
    pub fn get(&self, i: usize) -> Option<&T> {
        if i >= self.len {
            return None;
        }
        self.pages.get(i / Self::PER_PAGE)?.get(i % Self::PER_PAGE)
    }

    /// A mutable slot, copying its page first if another version shares it.
    pub fn get_mut(&mut self, i: usize) -> Option<&mut T> {
        if i >= self.len {
            return None;
        }
        Arc::make_mut(self.pages.get_mut(i / Self::PER_PAGE)?).get_mut(i % Self::PER_PAGE)
    }

    /// Grows the vector with default values until `i` is a valid index, then gives its slot.
    pub fn slot(&mut self, i: usize) -> &mut T {
        while self.pages.len() <= i / Self::PER_PAGE {
            self.pages.push((0..Self::PER_PAGE).map(|_| T::default()).collect());
        }
        self.len = self.len.max(i + 1);
        // The loop above made the page exist, and a page has `PER_PAGE` slots.
        &mut Arc::make_mut(&mut self.pages[i / Self::PER_PAGE])[i % Self::PER_PAGE]
    }

    pub fn push(&mut self, value: T) {
        let i = self.len;
        *self.slot(i) = value;
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.pages.iter().flat_map(|p| p.iter()).take(self.len)
    }
}

/// A map from strings to ids: a table built once for a whole snapshot (`KeyTable`), and a
/// persistent overlay for the keys deltas add afterwards.
#[derive(Clone, Debug, Default)]
pub struct KeyMap {
    base: Arc<KeyTable>,
    overlay: imbl::HashMap<Arc<str>, u32>,
}

impl KeyMap {
    #[inline]
    pub fn get(&self, key: &str) -> Option<u32> {
        match self.base.get(key) {
            Some(id) => Some(id),
            None if self.overlay.is_empty() => None,
            None => self.overlay_get(key),
        }
    }

    #[cold]
    #[inline(never)]
    fn overlay_get(&self, key: &str) -> Option<u32> {
        self.overlay.get(key).copied()
    }

    /// Adds a key; during a bulk build (the base not yet shared) it goes straight into the base.
    pub fn insert(&mut self, key: &str, id: u32) {
        if self.overlay.is_empty()
            && let Some(base) = Arc::get_mut(&mut self.base)
            && base.insert(key, id)
        {
            return;
        }
        self.overlay.insert(Arc::from(key), id);
    }

    /// Gives back the spare capacity of the slots and key bytes once a build is done.
    pub fn shrink(&mut self) {
        if let Some(base) = Arc::get_mut(&mut self.base) {
            base.settle();
        }
    }
}

/// An open-addressing hash table (linear probing, at most three quarters full) of 32-byte
/// slots, two to a cache line. A slot holds a hash tag, the id, and the key itself when it is
/// at most `INLINE` bytes (else where its bytes are in an arena): a lookup of a short key reads
/// one line of the table and nothing else, and the id it finds is not waiting behind a second
/// dependent miss as it is with a map that keeps the key, or a pointer to it, in a bucket the
/// control bytes point to.
#[derive(Clone, Debug, Default)]
struct KeyTable {
    slots: Box<[Slot]>,
    /// The bytes of the keys longer than `INLINE`, one after the other.
    arena: Vec<u8>,
    len: usize,
    state: foldhash::fast::RandomState,
}

/// Keys of up to this many bytes live in their slot.
const INLINE: usize = 24;

/// The share of slots in use once a build settles a table (`KeyTable::settle`), as a
/// fraction: seven in ten. Linear probing then reads about 2.2 slots for a key it finds (two
/// slots to a cache line) and 6 for one it does not.
const SETTLED_LOAD: (usize, usize) = (7, 10);

/// The home slot of hash `h` among `cap` (at most 2^32): the low half of the hash scaled to
/// the table by a multiply, so the table can be any size, not only a power of two. The tag
/// takes the high half.
#[inline]
fn home(h: u64, cap: usize) -> usize {
    ((h & 0xffff_ffff) * cap as u64 >> 32) as usize
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C, align(32))]
struct Slot {
    /// High 24 bits: of the key's hash. Low 8: the key's length, or `LONG`.
    tag: u32,
    id: u32,
    /// A short key: its bytes as words (`Slot::words`). A long one: its offset in the arena
    /// and its length.
    key: [u64; 3],
}

impl Slot {
    /// `id` of a slot that holds nothing (interners never hand it out).
    const VACANT_ID: u32 = u32::MAX;
    const VACANT: Slot = Slot {
        tag: 0,
        id: Slot::VACANT_ID,
        key: [0; 3],
    };
    const LONG: u32 = 0xff;

    /// A short key as three words, loaded whole (overlapping where the length is not a
    /// multiple of 8), never through a byte buffer: with the length, it gives the key back.
    #[inline]
    fn words(key: &[u8]) -> Option<[u64; 3]> {
        #[inline]
        fn w8(b: &[u8], at: usize) -> u64 {
            b.get(at..at + 8)
                .and_then(|s| <[u8; 8]>::try_from(s).ok())
                .map_or(0, u64::from_le_bytes)
        }
        #[inline]
        fn w4(b: &[u8], at: usize) -> u64 {
            b.get(at..at + 4)
                .and_then(|s| <[u8; 4]>::try_from(s).ok())
                .map_or(0, |a| u32::from_le_bytes(a) as u64)
        }
        let n = key.len();
        Some(match n {
            0..=3 => [key.iter().rev().fold(0, |w, &b| w << 8 | b as u64), 0, 0],
            4..=7 => [w4(key, 0) | w4(key, n - 4) << 32, 0, 0],
            8..=15 => [w8(key, 0), w8(key, n - 8), 0],
            16..=INLINE => [w8(key, 0), w8(key, 8), w8(key, n - 8)],
            _ => return None,
        })
    }

    /// The slot's tag for a key of `len` bytes and hash `h`.
    #[inline]
    fn tag(h: u64, len: usize) -> u32 {
        let len = if len <= INLINE { len as u32 } else { Slot::LONG };
        (h >> 32) as u32 & !0xff | len
    }
}

impl KeyTable {
    /// Short keys are hashed in their slot form, so growing the table needs no arena.
    #[inline]
    fn hash(&self, key: &[u8], words: Option<&[u64; 3]>) -> u64 {
        use std::hash::BuildHasher;
        match words {
            Some(w) => self.hash_words(w, key.len()),
            None => self.state.hash_one(key),
        }
    }

    #[inline]
    fn hash_words(&self, w: &[u64; 3], len: usize) -> u64 {
        use std::hash::{BuildHasher, Hasher};
        let mut h = self.state.build_hasher();
        h.write_u64(w[0]);
        h.write_u64(w[1]);
        h.write_u64(w[2] ^ (len as u64) << 59);
        h.finish()
    }

    /// The hash of the key in slot `s`.
    fn slot_hash(&self, s: &Slot) -> u64 {
        use std::hash::BuildHasher;
        match s.tag & 0xff {
            Slot::LONG => self.state.hash_one(self.long_key(s)),
            len => self.hash_words(&s.key, len as usize),
        }
    }

    fn long_key(&self, s: &Slot) -> &[u8] {
        let (off, len) = (s.key[0] as usize, s.key[1] as usize);
        self.arena.get(off..off + len).unwrap_or_default()
    }

    /// Where `key` is, or the vacant slot where it would go.
    #[inline]
    fn find(&self, key: &[u8], words: Option<&[u64; 3]>, h: u64) -> Result<usize, usize> {
        let tag = Slot::tag(h, key.len());
        match words {
            // The words are compared one by one from registers: comparing the arrays whole
            // reloads them as one vector from where they were just stored, which the CPU
            // cannot forward and waits for.
            Some(&[w0, w1, w2]) => self.probe(h, |s| {
                s.tag == tag && s.key[0] == w0 && s.key[1] == w1 && s.key[2] == w2
            }),
            None => self.probe(h, |s| s.tag == tag && self.long_key(s) == key),
        }
    }

    #[inline]
    fn probe(&self, h: u64, same: impl Fn(&Slot) -> bool) -> Result<usize, usize> {
        let cap = self.slots.len();
        let mut i = home(h, cap);
        loop {
            let Some(s) = self.slots.get(i) else { return Err(i) };
            if s.id == Slot::VACANT_ID {
                return Err(i);
            }
            if same(s) {
                return Ok(i);
            }
            i += 1;
            if i == cap {
                i = 0;
            }
        }
    }

    #[inline]
    fn get(&self, key: &str) -> Option<u32> {
        if self.len == 0 {
            return None;
        }
        let key = key.as_bytes();
        let words = Slot::words(key);
        let i = self.find(key, words.as_ref(), self.hash(key, words.as_ref())).ok()?;
        self.slots.get(i).map(|s| s.id)
    }

    /// Adds `key` (or sets its id); false when it cannot hold it (an id it uses as a marker,
    /// or past 4 GiB of key bytes), and the caller keeps it elsewhere.
    fn insert(&mut self, key: &str, id: u32) -> bool {
        let key = key.as_bytes();
        if id == Slot::VACANT_ID || self.arena.len() + key.len() > u32::MAX as usize {
            return false;
        }
        if (self.len + 1) * 4 > self.slots.len() * 3 {
            self.grow();
        }
        let words = Slot::words(key);
        let h = self.hash(key, words.as_ref());
        let i = match self.find(key, words.as_ref(), h) {
            Ok(i) => {
                self.slots[i].id = id;
                return true;
            }
            Err(i) => i,
        };
        let stored = match words {
            Some(w) => w,
            None => {
                let off = self.arena.len() as u64;
                self.arena.extend_from_slice(key);
                [off, key.len() as u64, 0]
            }
        };
        self.slots[i] = Slot {
            tag: Slot::tag(h, key.len()),
            id,
            key: stored,
        };
        self.len += 1;
        true
    }

    /// Doubles the slots (16 to start) and places every key again.
    fn grow(&mut self) {
        self.resize((self.slots.len() * 2).max(16));
    }

    /// Places every key again in `cap` slots (more than `len`).
    fn resize(&mut self, cap: usize) {
        let old = std::mem::replace(&mut self.slots, vec![Slot::VACANT; cap].into_boxed_slice());
        for s in old.iter().filter(|s| s.id != Slot::VACANT_ID) {
            let mut i = home(self.slot_hash(s), cap);
            while self.slots[i].id != Slot::VACANT_ID {
                i += 1;
                if i == cap {
                    i = 0;
                }
            }
            self.slots[i] = *s;
        }
    }

    /// Once a build is done: the slots cut down to `len / SETTLED_LOAD`, from the up to twice
    /// that doubling leaves (at a million keys, 2^21 slots of 32 bytes: 64 MiB where 46 do).
    fn settle(&mut self) {
        let cap = (self.len * SETTLED_LOAD.1 / SETTLED_LOAD.0 + 1).max(16);
        if cap < self.slots.len() {
            self.resize(cap);
        }
        self.arena.shrink_to_fit();
    }
}

/// Dense, append-only ids for one namespace of keys (users, orgs, role names, ...). An id is
/// never reused within one lineage of versions, so everything that holds ids stays valid
/// across delta batches.
#[derive(Clone, Debug, Default)]
pub struct Interner {
    ids: KeyMap,
    names: NameList,
}

/// The names of ids `0..len`, append-only: the first ones packed in one string while the list
/// is not shared (a bulk build), fixed once it is; the ones after those one allocation each,
/// shared page by page between versions.
#[derive(Clone, Debug, Default)]
pub struct NameList {
    base: Arc<NameArena>,
    late: PagedVec<Arc<str>>,
}

/// Names packed in one string: id `i` is `text[ends[i - 1]..ends[i]]`. At a million users
/// that is 4 bytes and the name's own per id, where a `str` allocation each costs ~48.
#[derive(Debug, Default)]
struct NameArena {
    text: String,
    ends: Vec<u32>,
}

impl NameList {
    /// Adds the name of the next id.
    pub fn push(&mut self, name: &str) {
        match Arc::get_mut(&mut self.base) {
            Some(base) if self.late.is_empty() && base.text.len() + name.len() <= u32::MAX as usize => {
                base.text.push_str(name);
                base.ends.push(base.text.len() as u32);
            }
            _ => self.late.push(Arc::from(name)),
        }
    }

    /// The name of id `id`, `""` for one not handed out.
    pub fn name(&self, id: u32) -> &str {
        let i = id as usize;
        let ends = &self.base.ends;
        match ends.get(i) {
            Some(&end) => {
                let start = i.checked_sub(1).and_then(|p| ends.get(p)).map_or(0, |&s| s as usize);
                self.base.text.get(start..end as usize).unwrap_or_default()
            }
            None => self.late.get(i - ends.len()).map_or("", |s| s),
        }
    }

    pub fn len(&self) -> usize {
        self.base.ends.len() + self.late.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Gives back spare capacity once a build is done.
    pub fn shrink(&mut self) {
        if let Some(base) = Arc::get_mut(&mut self.base) {
            base.text.shrink_to_fit();
            base.ends.shrink_to_fit();
        }
    }
}

impl Interner {
    #[inline]
    pub fn get(&self, key: &str) -> Option<u32> {
        self.ids.get(key)
    }

    pub fn intern(&mut self, key: &str) -> u32 {
        if let Some(id) = self.ids.get(key) {
            return id;
        }
        let id = self.len() as u32;
        self.ids.insert(key, id);
        self.names.push(key);
        id
    }

    /// Gives back spare capacity once a build is done.
    pub fn shrink(&mut self) {
        self.ids.shrink();
        self.names.shrink();
    }

    pub fn name(&self, id: u32) -> &str {
        self.names.name(id)
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn pages_fill_an_allocator_size_class() {
        assert_eq!(PagedVec::<u32>::PER_PAGE, 252);
        assert_eq!(PagedVec::<Option<Arc<u64>>>::PER_PAGE, 254);
        assert_eq!(PagedVec::<(u64, u64)>::PER_PAGE, 255);
        assert_eq!(PagedVec::<super::super::ResHot>::PER_PAGE, 170);
        let mut v: PagedVec<u64> = PagedVec::default();
        for i in 0..1000 {
            v.push(i);
        }
        assert_eq!(
            (v.len(), v.iter().count(), v.get(999), v.get(1000)),
            (1000, 1000, Some(&999), None)
        );
        assert_eq!(v.pages.len(), 4);
    }

    #[test]
    fn paged_vec_copies_only_touched_pages() {
        let mut a: PagedVec<u32> = PagedVec::default();
        for i in 0..1000 {
            a.push(i);
        }
        let mut b = a.clone();
        *b.get_mut(700).unwrap() = 7;
        *b.slot(1500) = 15;
        assert_eq!(a.get(700), Some(&700));
        assert_eq!(b.get(700), Some(&7));
        assert_eq!((a.len(), b.len()), (1000, 1501));
        assert_eq!(b.get(1500), Some(&15));
        assert_eq!(b.get(1200), Some(&0));
        assert!(Arc::ptr_eq(&a.pages[0], &b.pages[0]));
        assert!(!Arc::ptr_eq(&a.pages[2], &b.pages[2]));
        assert_eq!(a.iter().count(), 1000);
    }

    #[test]
    fn key_table_finds_every_key_and_no_other() {
        let mut m = KeyMap::default();
        for i in 0..10_000u32 {
            m.insert(&format!("user-{i}"), i);
        }
        m.insert("", 10_000);
        m.insert("user-5", 55);
        let long = |i: u32| format!("{i:08}-aaaa-bbbb-cccc-{i:012}");
        for i in 0..1_000u32 {
            m.insert(&long(i), 20_000 + i);
        }
        m.insert(&"x".repeat(INLINE), 30_000);
        m.insert(&"x".repeat(INLINE + 1), 30_001);
        m.shrink();
        assert_eq!(m.base.len, 11_003);
        assert_eq!(m.overlay.len(), 0, "a bulk build fills the base");
        for i in 0..10_000u32 {
            let want = if i == 5 { 55 } else { i };
            assert_eq!(m.get(&format!("user-{i}")), Some(want), "user-{i}");
        }
        assert_eq!(m.get(""), Some(10_000));
        for i in 0..1_000u32 {
            assert_eq!(m.get(&long(i)), Some(20_000 + i));
        }
        assert_eq!(m.get(&"x".repeat(INLINE)), Some(30_000));
        assert_eq!(m.get(&"x".repeat(INLINE + 1)), Some(30_001));
        assert_eq!(
            m.base.arena.len(),
            1_000 * 36 + INLINE + 1,
            "only long keys are in the arena"
        );
        for miss in [
            "user-10000",
            "user-",
            "user-01",
            "x",
            "user-5 ",
            &long(1_000),
            &"x".repeat(INLINE + 2),
        ] {
            assert_eq!(m.get(miss), None, "{miss}");
        }
        // The marker id cannot live in a slot: it goes to the overlay, and is still found.
        m.insert("marker", u32::MAX);
        assert_eq!(m.get("marker"), Some(u32::MAX));
        // Once shared, new keys go to the overlay and the other version does not see them.
        let before = m.clone();
        m.insert("late", 7);
        assert_eq!((m.get("late"), before.get("late")), (Some(7), None));
        assert_eq!(m.base.slots.len(), 11_003 * 10 / 7 + 1);
        assert_eq!(std::mem::size_of::<Slot>(), 32);
        // Every length from 0 to past `INLINE`, keys that differ in one byte anywhere.
        let mut m = KeyMap::default();
        let key = |n: usize, at: usize| -> String { (0..n).map(|i| if i == at { 'b' } else { 'a' }).collect() };
        for n in 0..=INLINE + 2 {
            for at in 0..=n {
                m.insert(&key(n, at), (n * 100 + at) as u32);
            }
        }
        for n in 0..=INLINE + 2 {
            for at in 0..=n {
                assert_eq!(m.get(&key(n, at)), Some((n * 100 + at) as u32), "{n} {at}");
            }
        }
        assert_eq!(m.get(&key(INLINE + 3, 0)), None);
    }

    #[test]
    fn interner_is_append_only_across_clones() {
        let mut a = Interner::default();
        assert_eq!(a.intern("x"), 0);
        assert_eq!(a.intern("y"), 1);
        let mut b = a.clone();
        assert_eq!(b.intern("z"), 2);
        assert_eq!(b.intern("x"), 0);
        assert_eq!(a.get("z"), None);
        assert_eq!(b.get("z"), Some(2));
        assert_eq!(b.name(2), "z");
        assert_eq!(b.len(), 3);
        // Built alone, the names are packed; once shared, later ones are kept apart.
        assert_eq!((a.names.base.ends.len(), a.names.late.len()), (2, 0));
        assert_eq!((b.names.base.ends.len(), b.names.late.len()), (2, 1));
        assert_eq!((b.name(0), b.name(1), b.name(3), a.name(2)), ("x", "y", "", ""));
        drop(a);
        // The only holder again, but names stay in order: 3 cannot go to the arena after 2.
        assert_eq!(b.intern("w"), 3);
        assert_eq!((b.names.base.ends.len(), b.names.late.len(), b.name(3)), (2, 2, "w"));
        let mut c = Interner::default();
        for k in ["", "é", "ab", ""] {
            c.intern(k);
        }
        assert_eq!((c.len(), c.name(0), c.name(1), c.name(2)), (3, "", "é", "ab"));
    }
}
