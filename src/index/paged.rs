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

    /// How many of this vector's pages are the very ones of `other` (for tests of sharing).
    #[cfg(test)]
    pub fn pages_shared_with(&self, other: &PagedVec<T>) -> (usize, usize) {
        let shared = self
            .pages
            .iter()
            .zip(&other.pages)
            .filter(|(a, b)| Arc::ptr_eq(a, b))
            .count();
        (shared, self.pages.len())
    }
}

/// A map from strings to ids: a table built once for a whole snapshot (`KeyTable`), and a
/// persistent overlay for the keys deltas add afterwards. The keys themselves are kept by the
/// caller in a `NameList` indexed by the ids the map hands back (an interner's names, the
/// resources' keys), which every call passes in: the table holds a key only when it fits in
/// its slot.
#[derive(Clone, Debug, Default)]
pub struct KeyMap {
    base: Arc<KeyTable>,
    overlay: imbl::HashMap<Arc<str>, u32>,
}

impl KeyMap {
    /// The id of `key`; `names` gives the key of every id the map holds.
    #[inline]
    pub fn get(&self, key: &str, names: &NameList) -> Option<u32> {
        match self.base.get(key, names) {
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

    /// Adds a key; during a bulk build (the base not yet shared) it goes straight into the
    /// base. `names` gives the key of every id already in the map (not yet this one's).
    pub fn insert(&mut self, key: &str, id: u32, names: &NameList) {
        if self.overlay.is_empty()
            && let Some(base) = Arc::get_mut(&mut self.base)
            && base.insert(key, id, names)
        {
            return;
        }
        self.overlay.insert(Arc::from(key), id);
    }

    /// Gives back the spare capacity of the slots once a build is done.
    pub fn shrink(&mut self, names: &NameList) {
        if let Some(base) = Arc::get_mut(&mut self.base) {
            base.settle(names);
        }
    }
}

/// An open-addressing hash table (linear probing) of 16-byte slots, four to a cache line. A
/// slot holds a hash tag, the id, and the key itself when it is at most `INLINE` bytes: a
/// lookup of a short key reads one line of the table and nothing else. A longer key is
/// compared with the caller's name of the slot's id, once its tag (24 bits of the hash and
/// the length) matched, so such keys are stored once, in the name list, not twice.
#[derive(Clone, Debug, Default)]
struct KeyTable {
    slots: Box<[Slot]>,
    len: usize,
    state: foldhash::fast::RandomState,
}

/// Keys of up to this many bytes live in their slot.
const INLINE: usize = 8;

/// The share of slots in use once a build settles a table (`KeyTable::settle`), as a
/// fraction: seven in ten. Linear probing then reads about 2.2 slots for a key it finds (four
/// slots to a cache line) and 6 for one it does not.
const SETTLED_LOAD: (usize, usize) = (7, 10);

/// The home slot of hash `h` among `cap` (at most 2^32): the low half of the hash scaled to
/// the table by a multiply, so the table can be any size, not only a power of two. The tag
/// takes the high half.
#[inline]
fn home(h: u64, cap: usize) -> usize {
    (((h & 0xffff_ffff) * cap as u64) >> 32) as usize
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C, align(16))]
struct Slot {
    /// High 24 bits: of the key's hash. Low 8: the key's length, or `LONG`.
    tag: u32,
    id: u32,
    /// A short key: its bytes as a word (`Slot::word`). A long one: 0.
    key: u64,
}

impl Slot {
    /// `id` of a slot that holds nothing (interners never hand it out).
    const VACANT_ID: u32 = u32::MAX;
    const VACANT: Slot = Slot {
        tag: 0,
        id: Slot::VACANT_ID,
        key: 0,
    };
    const LONG: u32 = 0xff;

    /// A short key as one word, loaded whole (two overlapping halves when the length is 4 to
    /// 7), never through a byte buffer: with the length, it gives the key back.
    #[inline]
    fn word(key: &[u8]) -> Option<u64> {
        #[inline]
        fn w4(b: &[u8], at: usize) -> u64 {
            b.get(at..at + 4)
                .and_then(|s| <[u8; 4]>::try_from(s).ok())
                .map_or(0, |a| u32::from_le_bytes(a) as u64)
        }
        let n = key.len();
        Some(match n {
            0..=3 => key.iter().rev().fold(0, |w, &b| w << 8 | b as u64),
            4..=7 => w4(key, 0) | w4(key, n - 4) << 32,
            8 => <[u8; 8]>::try_from(key).map_or(0, u64::from_le_bytes),
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
    /// Short keys are hashed in their slot form, so placing them again needs no names.
    #[inline]
    fn hash(&self, key: &[u8], word: Option<u64>) -> u64 {
        use std::hash::BuildHasher;
        match word {
            Some(w) => self.hash_word(w, key.len()),
            None => self.state.hash_one(key),
        }
    }

    #[inline]
    fn hash_word(&self, w: u64, len: usize) -> u64 {
        use std::hash::{BuildHasher, Hasher};
        let mut h = self.state.build_hasher();
        h.write_u64(w);
        h.write_u64(len as u64);
        h.finish()
    }

    /// The hash of the key in slot `s`.
    fn slot_hash(&self, s: &Slot, names: &NameList) -> u64 {
        use std::hash::BuildHasher;
        match s.tag & 0xff {
            Slot::LONG => self.state.hash_one(names.name(s.id).as_bytes()),
            len => self.hash_word(s.key, len as usize),
        }
    }

    /// Where `key` is, or the vacant slot where it would go.
    #[inline]
    fn find(&self, key: &[u8], word: Option<u64>, h: u64, names: &NameList) -> Result<usize, usize> {
        let tag = Slot::tag(h, key.len());
        match word {
            Some(w) => self.probe(h, |s| s.tag == tag && s.key == w),
            None => self.probe(h, |s| s.tag == tag && names.name(s.id).as_bytes() == key),
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
    fn get(&self, key: &str, names: &NameList) -> Option<u32> {
        if self.len == 0 {
            return None;
        }
        let key = key.as_bytes();
        let word = Slot::word(key);
        let i = self.find(key, word, self.hash(key, word), names).ok()?;
        self.slots.get(i).map(|s| s.id)
    }

    /// Adds `key` (or sets its id); false when it cannot hold it (an id it uses as a marker),
    /// and the caller keeps it elsewhere.
    fn insert(&mut self, key: &str, id: u32, names: &NameList) -> bool {
        self.put(key, id, names, true)
    }

    /// Adds `key` with `id`; a key already there gets `id` when `replace`, else is left as it
    /// is and gives false. False too for the marker id.
    fn put(&mut self, key: &str, id: u32, names: &NameList, replace: bool) -> bool {
        let key = key.as_bytes();
        if id == Slot::VACANT_ID {
            return false;
        }
        if (self.len + 1) * 4 > self.slots.len() * 3 {
            self.grow(names);
        }
        let word = Slot::word(key);
        let h = self.hash(key, word);
        let i = match self.find(key, word, h, names) {
            Ok(i) => {
                if replace && let Some(slot) = self.slots.get_mut(i) {
                    slot.id = id;
                }
                return replace;
            }
            Err(i) => i,
        };
        let Some(slot) = self.slots.get_mut(i) else {
            return false;
        };
        *slot = Slot {
            tag: Slot::tag(h, key.len()),
            id,
            key: word.unwrap_or(0),
        };
        self.len += 1;
        true
    }

    /// Doubles the slots (16 to start) and places every key again.
    fn grow(&mut self, names: &NameList) {
        self.resize((self.slots.len() * 2).max(16), names);
    }

    /// Places every key again in `cap` slots (more than `len`).
    fn resize(&mut self, cap: usize, names: &NameList) {
        let old = std::mem::replace(&mut self.slots, vec![Slot::VACANT; cap].into_boxed_slice());
        for s in old.iter().filter(|s| s.id != Slot::VACANT_ID) {
            let mut i = home(self.slot_hash(s, names), cap);
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
    /// that doubling leaves (at a million keys, 2^21 slots: 32 MiB where 23 do).
    fn settle(&mut self, names: &NameList) {
        let cap = (self.len * SETTLED_LOAD.1 / SETTLED_LOAD.0 + 1).max(16);
        if cap < self.slots.len() {
            self.resize(cap, names);
        }
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

impl KeyMap {
    /// A map of ids `0..names.len()` to their names, the table sized once for them (as a
    /// build settles it); `Err(id)` for the first id whose name repeats an earlier one's.
    pub(super) fn of_names(names: &NameList) -> Result<KeyMap, u32> {
        Self::of_ids(0..names.len() as u32, names)
    }

    /// A map of each of `ids` to its name in `names`, the table sized once; `Err(id)` for the
    /// first id whose name repeats an earlier one's (or that is the marker id).
    pub(super) fn of_ids(ids: impl ExactSizeIterator<Item = u32>, names: &NameList) -> Result<KeyMap, u32> {
        let n = ids.len();
        let mut table = KeyTable {
            slots: vec![Slot::VACANT; (n * SETTLED_LOAD.1 / SETTLED_LOAD.0 + 1).max(16)].into_boxed_slice(),
            len: 0,
            state: foldhash::fast::RandomState::default(),
        };
        for id in ids {
            if !table.insert_new(names.name(id), id, names) {
                return Err(id);
            }
        }
        Ok(KeyMap {
            base: Arc::new(table),
            overlay: imbl::HashMap::new(),
        })
    }
}

impl KeyTable {
    /// Adds `key`, which must not be there yet: false when it is (or `id` is the marker).
    fn insert_new(&mut self, key: &str, id: u32, names: &NameList) -> bool {
        self.put(key, id, names, false)
    }
}

impl NameList {
    /// Names packed as `NameArena` packs them: id `i` is `text[ends[i - 1]..ends[i]]`.
    /// `Err` says what is wrong: an end out of order, past the text or inside a character.
    pub(super) fn from_packed(text: String, ends: Vec<u32>) -> Result<NameList, String> {
        let mut start = 0usize;
        for (i, &end) in ends.iter().enumerate() {
            let end = end as usize;
            if end < start || end > text.len() || !text.is_char_boundary(end) {
                return Err(format!("name {i} ends at {end}, not a place in the text after {start}"));
            }
            start = end;
        }
        if start != text.len() {
            return Err(format!("the names end at {start}, the text at {}", text.len()));
        }
        Ok(NameList {
            base: Arc::new(NameArena { text, ends }),
            late: PagedVec::default(),
        })
    }
}

impl Interner {
    /// The interner whose ids are `names` in list order; `Err(id)` for the first name that
    /// repeats an earlier one.
    pub(super) fn from_names(names: NameList) -> Result<Interner, u32> {
        Ok(Interner {
            ids: KeyMap::of_names(&names)?,
            names,
        })
    }

    pub(super) fn names(&self) -> &NameList {
        &self.names
    }
}

impl Interner {
    #[inline]
    pub fn get(&self, key: &str) -> Option<u32> {
        self.ids.get(key, &self.names)
    }

    pub fn intern(&mut self, key: &str) -> u32 {
        if let Some(id) = self.get(key) {
            return id;
        }
        let id = self.len() as u32;
        self.ids.insert(key, id, &self.names);
        self.names.push(key);
        id
    }

    /// Gives back spare capacity once a build is done.
    pub fn shrink(&mut self) {
        self.ids.shrink(&self.names);
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
        let long = |i: u32| format!("{i:08}-aaaa-bbbb-cccc-{i:012}");
        let mut keys: Vec<String> = (0..10_000).map(|i| format!("user-{i}")).collect();
        keys.push(String::new());
        keys.extend((0..1_000).map(long));
        keys.push("x".repeat(INLINE));
        keys.push("x".repeat(INLINE + 1));
        let mut ix = Interner::default();
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(ix.intern(k), i as u32, "{k}");
        }
        assert_eq!(ix.intern("user-5"), 5);
        ix.shrink();
        assert_eq!(ix.ids.base.len, 11_003);
        assert_eq!(ix.ids.overlay.len(), 0, "a bulk build fills the base");
        assert_eq!(ix.ids.base.slots.len(), 11_003 * 10 / 7 + 1);
        assert_eq!(std::mem::size_of::<Slot>(), 16);
        assert_eq!(
            ix.ids.base.slots.iter().filter(|s| s.tag & 0xff == Slot::LONG).count(),
            9_000 + 1_000 + 1,
            "keys over INLINE bytes are compared through the names"
        );
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(ix.get(k), Some(i as u32), "{k}");
        }
        for miss in [
            "user-10000",
            "user-",
            "user-01",
            "x",
            "user-5 ",
            &long(1_000),
            &"x".repeat(INLINE + 2),
        ] {
            assert_eq!(ix.get(miss), None, "{miss}");
        }
        // The marker id cannot live in a slot: it goes to the overlay, and is still found.
        let mut m = ix.ids.clone();
        m.insert("marker", u32::MAX, &ix.names);
        assert_eq!(m.get("marker", &ix.names), Some(u32::MAX));
        // Once shared, new keys go to the overlay and the other version does not see them.
        let before = ix.clone();
        assert_eq!(ix.intern("late"), 11_003);
        assert_eq!((ix.get("late"), before.get("late")), (Some(11_003), None));
        assert_eq!(ix.ids.overlay.len(), 1);
        // Every length from 0 to past `INLINE`, keys that differ in one byte anywhere.
        let mut ix = Interner::default();
        let key = |n: usize, at: usize| -> String { (0..n).map(|i| if i == at { 'b' } else { 'a' }).collect() };
        let mut want = Vec::new();
        for n in 0..=INLINE + 2 {
            for at in 0..=n {
                want.push((key(n, at), ix.intern(&key(n, at))));
            }
        }
        assert_eq!(ix.len(), want.len(), "every key is new");
        for (k, id) in &want {
            assert_eq!(ix.get(k), Some(*id), "{k}");
        }
        assert_eq!(ix.get(&key(INLINE + 3, 0)), None);
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
