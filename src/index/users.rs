//! Users' role assignments, packed by page: a page of `PER` users holds one fixed 16-byte slot
//! per user and the page's assignments in two arrays, each user's run after the one before
//! it. Nothing is allocated per user, so a user costs their slot and their assignments' own
//! bytes (8 for an org-wide one, 12 on an instance), not a record, two vector headers and the
//! allocator's rounding of two small allocations. Pages are shared between versions; a
//! change copies its page once per batch (about 4 KiB and the page's assignments) and then
//! moves the rest of the page's run along.

use std::sync::Arc;

/// Users per page: as many 16-byte slots as fit, with the page's two vectors and the `Arc`
/// counts, in 4 KiB (one allocator size class; one slot more would need the next, 5 KiB).
const PER: usize = 252;

/// One user in a page: where their runs end in the page's arrays, and two flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Slot {
    /// End of this user's org-wide run in `Page::org` (its start is the previous slot's end).
    org_end: u32,
    /// End of this user's instance run in `Page::inst`.
    inst_end: u32,
    /// Bit `o % 32` is set for every org `o` of the instance run: `decide` reads the run only
    /// when the user may hold an instance role in the org.
    inst_orgs: u32,
    /// The document has a user item for this key.
    listed: bool,
}

#[derive(Clone, Debug)]
struct Page {
    /// Org-wide assignments as (org id, role-name id), each user's run sorted and unique.
    org: Vec<(u32, u32)>,
    /// Instance assignments as (resource id, org id, role-name id), each run sorted and unique.
    inst: Vec<(u32, u32, u32)>,
    slots: [Slot; PER],
}

impl Default for Page {
    fn default() -> Page {
        Page {
            org: Vec::new(),
            inst: Vec::new(),
            slots: [Slot::default(); PER],
        }
    }
}

impl Page {
    /// Where user `i` of the page has their runs: (org start, org end, inst start, inst end).
    #[inline]
    fn bounds(&self, i: usize) -> (usize, usize, usize, usize) {
        let end = self.slots.get(i).copied().unwrap_or_default();
        let start = i
            .checked_sub(1)
            .and_then(|p| self.slots.get(p))
            .copied()
            .unwrap_or_default();
        (
            start.org_end as usize,
            end.org_end as usize,
            start.inst_end as usize,
            end.inst_end as usize,
        )
    }

    /// Moves the ends of users `i..` by `by` in the org (`inst` false) or instance array.
    fn shift(&mut self, i: usize, inst: bool, by: i64) {
        for s in self.slots.iter_mut().skip(i) {
            let end = if inst { &mut s.inst_end } else { &mut s.org_end };
            *end = (i64::from(*end) + by) as u32;
        }
    }

    fn sync_inst_orgs(&mut self, i: usize) {
        let (_, _, i0, i1) = self.bounds(i);
        let mask = self
            .inst
            .get(i0..i1)
            .unwrap_or_default()
            .iter()
            .fold(0, |m, &(_, o, _)| m | 1 << (o % 32));
        if let Some(s) = self.slots.get_mut(i) {
            s.inst_orgs = mask;
        }
    }
}

/// What the index knows of one user's assignments, read from their page.
#[derive(Clone, Copy, Debug)]
pub struct UserRec<'a> {
    pub id: u32,
    /// The document has a user item for this key.
    pub listed: bool,
    /// Org-wide assignments as (org id, role-name id), sorted and unique.
    pub org_roles: &'a [(u32, u32)],
    /// Instance assignments as (resource id, org id, role-name id), sorted and unique.
    pub inst_roles: &'a [(u32, u32, u32)],
    inst_orgs: u32,
}

impl UserRec<'_> {
    /// Whether the user may hold an instance role in org `o` (no false negatives).
    #[inline]
    pub fn may_hold_in(&self, o: u32) -> bool {
        self.inst_orgs & 1 << (o % 32) != 0
    }
}

/// Every user id's assignments (see the module's comment).
#[derive(Clone, Debug, Default)]
pub struct UserTable {
    pages: Vec<Arc<Page>>,
    len: usize,
}

impl UserTable {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[inline]
    pub fn get(&self, id: u32) -> Option<UserRec<'_>> {
        let i = id as usize;
        if i >= self.len {
            return None;
        }
        let page = self.pages.get(i / PER)?;
        let at = i % PER;
        let (o0, o1, i0, i1) = page.bounds(at);
        let slot = page.slots.get(at)?;
        Some(UserRec {
            id,
            listed: slot.listed,
            org_roles: page.org.get(o0..o1).unwrap_or_default(),
            inst_roles: page.inst.get(i0..i1).unwrap_or_default(),
            inst_orgs: slot.inst_orgs,
        })
    }

    pub fn iter(&self) -> impl Iterator<Item = UserRec<'_>> {
        (0..self.len as u32).filter_map(|id| self.get(id))
    }

    /// Makes ids up to `id` exist (with no assignments, not listed).
    pub fn ensure(&mut self, id: u32) {
        let i = id as usize;
        while self.pages.len() <= i / PER {
            self.pages.push(Arc::default());
        }
        self.len = self.len.max(i + 1);
    }

    /// The page of user `id` and the user's place in it, made and copied if shared.
    fn page_mut(&mut self, id: u32) -> (&mut Page, usize) {
        self.ensure(id);
        let i = id as usize;
        // `ensure` made the page exist.
        (Arc::make_mut(&mut self.pages[i / PER]), i % PER)
    }

    /// Sets whether the document lists user `id`; gives what it was.
    pub fn set_listed(&mut self, id: u32, listed: bool) -> bool {
        if !listed && self.get(id).is_none_or(|u| !u.listed) {
            return false;
        }
        let (page, at) = self.page_mut(id);
        match page.slots.get_mut(at) {
            Some(s) => std::mem::replace(&mut s.listed, listed),
            None => false,
        }
    }

    /// Adds an org-wide assignment; false when the user already has it.
    pub fn insert_org_role(&mut self, id: u32, entry: (u32, u32)) -> bool {
        let (page, at) = self.page_mut(id);
        let (o0, o1, ..) = page.bounds(at);
        match page.org.get(o0..o1).unwrap_or_default().binary_search(&entry) {
            Ok(_) => false,
            Err(k) => {
                page.org.insert(o0 + k, entry);
                page.shift(at, false, 1);
                true
            }
        }
    }

    /// Removes an org-wide assignment; false when the user does not have it.
    pub fn remove_org_role(&mut self, id: u32, entry: (u32, u32)) -> bool {
        if self.get(id).is_none_or(|u| u.org_roles.binary_search(&entry).is_err()) {
            return false;
        }
        let (page, at) = self.page_mut(id);
        let (o0, o1, ..) = page.bounds(at);
        match page.org.get(o0..o1).unwrap_or_default().binary_search(&entry) {
            Ok(k) => {
                page.org.remove(o0 + k);
                page.shift(at, false, -1);
                true
            }
            Err(_) => false,
        }
    }

    /// Adds an instance assignment; false when the user already has it.
    pub fn insert_inst_role(&mut self, id: u32, entry: (u32, u32, u32)) -> bool {
        let (page, at) = self.page_mut(id);
        let (_, _, i0, i1) = page.bounds(at);
        match page.inst.get(i0..i1).unwrap_or_default().binary_search(&entry) {
            Ok(_) => false,
            Err(k) => {
                page.inst.insert(i0 + k, entry);
                page.shift(at, true, 1);
                page.sync_inst_orgs(at);
                true
            }
        }
    }

    /// Removes an instance assignment; false when the user does not have it.
    pub fn remove_inst_role(&mut self, id: u32, entry: (u32, u32, u32)) -> bool {
        if self.get(id).is_none_or(|u| u.inst_roles.binary_search(&entry).is_err()) {
            return false;
        }
        let (page, at) = self.page_mut(id);
        let (_, _, i0, i1) = page.bounds(at);
        match page.inst.get(i0..i1).unwrap_or_default().binary_search(&entry) {
            Ok(k) => {
                page.inst.remove(i0 + k);
                page.shift(at, true, -1);
                page.sync_inst_orgs(at);
                true
            }
            Err(_) => false,
        }
    }

    /// Every user's assignments at once, on a table that has none yet: `org_wide` as (user,
    /// org, role) and `on_instance` as (user, resource, org, role), both sorted and unique.
    /// Users keep whether they are listed.
    pub fn fill(&mut self, org_wide: &[(u32, u32, u32)], on_instance: &[(u32, u32, u32, u32)]) {
        if let Some(last) = org_wide.last().map(|a| a.0).max(on_instance.last().map(|a| a.0)) {
            self.ensure(last);
        }
        let (mut org_wide, mut on_instance) = (org_wide, on_instance);
        for (p, page) in self.pages.iter_mut().enumerate() {
            let end = ((p + 1) * PER) as u32;
            let (o, rest) = org_wide.split_at(org_wide.partition_point(|a| a.0 < end));
            let (n, rest_i) = on_instance.split_at(on_instance.partition_point(|a| a.0 < end));
            (org_wide, on_instance) = (rest, rest_i);
            if o.is_empty() && n.is_empty() {
                continue;
            }
            let page = Arc::make_mut(page);
            page.org = o.iter().map(|&(_, org, role)| (org, role)).collect();
            page.inst = n.iter().map(|&(_, res, org, role)| (res, org, role)).collect();
            let base = (p * PER) as u32;
            let (mut oi, mut ni) = (0, 0);
            for at in 0..PER {
                let uid = base + at as u32;
                while o.get(oi).is_some_and(|a| a.0 == uid) {
                    oi += 1;
                }
                let start = ni;
                while n.get(ni).is_some_and(|a| a.0 == uid) {
                    ni += 1;
                }
                let mask = n
                    .get(start..ni)
                    .unwrap_or_default()
                    .iter()
                    .fold(0, |m, &(_, _, org, _)| m | 1 << (org % 32));
                if let Some(s) = page.slots.get_mut(at) {
                    (s.org_end, s.inst_end, s.inst_orgs) = (oi as u32, ni as u32, mask);
                }
            }
        }
    }

    /// How many of this table's pages are the very ones of `other` (for tests of sharing).
    #[cfg(test)]
    pub fn pages_shared_with(&self, other: &UserTable) -> (usize, usize) {
        let shared = self
            .pages
            .iter()
            .zip(&other.pages)
            .filter(|(a, b)| Arc::ptr_eq(a, b))
            .count();
        (shared, self.pages.len())
    }

    /// Gives back the spare capacity of pages no other version shares.
    pub fn shrink(&mut self) {
        for page in &mut self.pages {
            if let Some(page) = Arc::get_mut(page) {
                page.org.shrink_to_fit();
                page.inst.shrink_to_fit();
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    type Runs = (Vec<(u32, u32)>, Vec<(u32, u32, u32)>);

    fn roles(t: &UserTable, id: u32) -> Runs {
        let u = t.get(id).unwrap();
        (u.org_roles.to_vec(), u.inst_roles.to_vec())
    }

    #[test]
    fn a_page_is_one_allocator_size_class() {
        assert_eq!(std::mem::size_of::<Slot>(), 16);
        assert!(std::mem::size_of::<Page>() + 16 <= 4096);
        assert!(std::mem::size_of::<Page>() + 16 + 16 > 4096);
    }

    #[test]
    fn fill_equals_one_insert_at_a_time_and_pages_are_shared() {
        let org_wide: Vec<(u32, u32, u32)> = (0..2000u32)
            .flat_map(|u| (0..u % 5).map(move |k| (u, k * 3 + u % 7, k)))
            .collect();
        let on_instance: Vec<(u32, u32, u32, u32)> = (0..2000u32)
            .filter(|u| u % 3 == 0)
            .flat_map(|u| (0..u % 4).map(move |k| (u, 100 + k, (u + k) % 40, 1)))
            .collect();
        let mut bulk = UserTable::default();
        bulk.ensure(2099);
        bulk.set_listed(7, true);
        bulk.fill(&org_wide, &on_instance);
        let mut one = UserTable::default();
        one.set_listed(7, true);
        for &(u, o, r) in org_wide.iter().rev() {
            assert!(one.insert_org_role(u, (o, r)));
        }
        for &(u, res, o, r) in &on_instance {
            assert!(one.insert_inst_role(u, (res, o, r)));
        }
        one.ensure(2099);
        assert_eq!(bulk.len(), 2100);
        for id in 0..2100 {
            assert_eq!(roles(&bulk, id), roles(&one, id), "user {id}");
            let (b, o) = (bulk.get(id).unwrap(), one.get(id).unwrap());
            assert_eq!((b.listed, b.inst_orgs), (o.listed, o.inst_orgs), "user {id}");
            assert_eq!(b.listed, id == 7);
        }
        let u = bulk.get(3).unwrap();
        assert!(u.may_hold_in(3) && !u.may_hold_in(9));

        let before = bulk.clone();
        assert!(!bulk.insert_org_role(4, (4, 0)), "already there");
        assert!(bulk.insert_org_role(300, (99, 9)));
        assert!(bulk.remove_org_role(4, (4, 0)));
        assert!(!bulk.remove_org_role(4, (4, 0)));
        assert!(bulk.remove_inst_role(3, (100, 3, 1)));
        assert!(!bulk.get(3).unwrap().may_hold_in(3));
        assert!(!bulk.remove_inst_role(3, (100, 3, 1)));
        assert_eq!(roles(&bulk, 300).0.last(), Some(&(99, 9)));
        assert_eq!(roles(&bulk, 4).0, [(7, 1), (10, 2), (13, 3)]);
        // The old version is untouched; only the touched pages (0 and 1) were copied.
        for id in 0..2100 {
            if ![3, 4, 300].contains(&id) {
                assert_eq!(roles(&bulk, id), roles(&before, id), "user {id}");
            }
        }
        assert_eq!(roles(&before, 4), roles(&one, 4));
        assert!(!Arc::ptr_eq(&bulk.pages[0], &before.pages[0]));
        assert!(!Arc::ptr_eq(&bulk.pages[1], &before.pages[1]));
        assert!(
            bulk.pages[2..]
                .iter()
                .zip(&before.pages[2..])
                .all(|(a, b)| Arc::ptr_eq(a, b))
        );
        assert!(!bulk.set_listed(8, false) && bulk.set_listed(7, false) && !bulk.get(7).unwrap().listed);
        assert_eq!(bulk.iter().count(), 2100);
    }
}
