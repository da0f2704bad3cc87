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

/// A map from strings to ids: a hash map built once for a whole snapshot, and a persistent
/// overlay for the keys deltas add afterwards. The base keeps keys of up to 24 bytes inline in
/// its buckets, so a lookup compares them without loading another cache line.
#[derive(Clone, Debug, Default)]
pub struct KeyMap {
    base: Arc<std::collections::HashMap<compact_str::CompactString, u32, foldhash::fast::RandomState>>,
    overlay: imbl::HashMap<Arc<str>, u32>,
}

impl KeyMap {
    #[inline]
    pub fn get(&self, key: &str) -> Option<u32> {
        match self.base.get(key) {
            Some(id) => Some(*id),
            None if self.overlay.is_empty() => None,
            None => self.overlay.get(key).copied(),
        }
    }

    /// Adds a key; during a bulk build (the base not yet shared) it goes straight into the base.
    pub fn insert(&mut self, key: &str, id: u32) {
        match Arc::get_mut(&mut self.base) {
            Some(base) if self.overlay.is_empty() => {
                base.insert(compact_str::CompactString::new(key), id);
            }
            _ => {
                self.overlay.insert(Arc::from(key), id);
            }
        }
    }
}

/// Dense, append-only ids for one namespace of keys (users, orgs, role names, ...). An id is
/// never reused within one lineage of versions, so everything that holds ids stays valid
/// across delta batches.
#[derive(Clone, Debug, Default)]
pub struct Interner {
    ids: KeyMap,
    names: PagedVec<Arc<str>>,
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
        let id = self.names.len() as u32;
        self.ids.insert(key, id);
        self.names.push(Arc::from(key));
        id
    }

    pub fn name(&self, id: u32) -> &str {
        self.names.get(id as usize).map_or("", |s| s)
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
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
        assert_eq!(PagedVec::<super::super::UserRec>::PER_PAGE, 255);
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
    }
}
