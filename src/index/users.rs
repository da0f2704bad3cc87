//! Users' role assignments, packed by page: a page of `PER` users is one array of fixed
//! 16-byte slots and two arrays of the page's assignments, each user's run after the one
//! before it. Nothing is allocated per user, so a user costs their slot and their
//! assignments' own bytes (8 for an org-wide one, 12 on an instance), not a record, two vector
//! headers and the allocator's rounding of two small allocations. The three arrays of a page
//! are separate `Arc<[_]>`s whose pointers sit in three small vectors of the table: finding a
//! user's runs reads their slot's line and then the run's, as many dependent loads as a
//! record per user did. Pages are shared between versions; a change copies its page's slots
//! and the array it changes.

use std::sync::Arc;

/// Users per page: as many 16-byte slots as fit with the `Arc` counts in 4 KiB (one
/// allocator size class).
pub(super) const PER: usize = 255;

/// One user in a page: where their runs end in the page's arrays, and two flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Slot {
    /// End of this user's org-wide run in the page's org array (its start is the previous
    /// slot's end).
    pub(super) org_end: u32,
    /// End of this user's instance run in the page's instance array.
    pub(super) inst_end: u32,
    /// Bit `o % 32` is set for every org `o` of the instance run: `decide` reads the run only
    /// when the user may hold an instance role in the org.
    pub(super) inst_orgs: u32,
    /// The document has a user item for this key.
    pub(super) listed: bool,
    /// Unused entries before this user's org-wide run (after the previous user's end), put
    /// there so that a run of up to a cache line does not straddle two (`repack`).
    pub(super) org_pad: u8,
    /// The same in the instance array.
    pub(super) inst_pad: u8,
}

/// Where user `at` of a page has their runs: (org start, org end, inst start, inst end).
#[inline]
pub(super) fn bounds(slots: &[Slot], at: usize) -> (usize, usize, usize, usize) {
    let end = slots.get(at).copied().unwrap_or_default();
    let start = at
        .checked_sub(1)
        .and_then(|p| slots.get(p))
        .copied()
        .unwrap_or_default();
    (
        start.org_end as usize + end.org_pad as usize,
        end.org_end as usize,
        start.inst_end as usize + end.inst_pad as usize,
        end.inst_end as usize,
    )
}

/// Where an array's first entry sits in its cache line: a page's `Arc<[T]>` is a large
/// allocation (page-aligned) whose entries follow the two 8-byte counts. Only the padding
/// depends on it, never what is read.
const DATA_OFFSET: usize = 16;

/// A page's array written again from `data` (the runs the slots' old ends and pads give),
/// with `edit` applied — (user, place in their run, the entry to put there, or `None` to take
/// that place out) — and every run of up to 64 bytes placed so that it does not straddle a
/// cache line: `decide` reads a user's run whole, and packed end to end a run of eight
/// org-wide assignments straddles two lines seven times in eight. Writes the new ends and
/// pads into `slots`.
fn repack<T: Copy + Default>(
    slots: &mut [Slot],
    data: &[T],
    inst: bool,
    edit: Option<(usize, usize, Option<T>)>,
) -> Arc<[T]> {
    let size = std::mem::size_of::<T>().max(1);
    let mut out: Vec<T> = Vec::with_capacity(data.len() + data.len() / 4 + 1);
    let mut old_prev_end = 0usize;
    for (u, s) in slots.iter_mut().enumerate() {
        let (end, pad) = if inst {
            (s.inst_end as usize, s.inst_pad as usize)
        } else {
            (s.org_end as usize, s.org_pad as usize)
        };
        let edited: Vec<T>;
        let mut run = data.get(old_prev_end + pad..end).unwrap_or_default();
        old_prev_end = end;
        if let Some((at, k, entry)) = edit
            && at == u
        {
            let (head, tail) = run.split_at(k.min(run.len()));
            let tail = if entry.is_some() {
                tail
            } else {
                tail.get(1..).unwrap_or_default()
            };
            edited = head.iter().copied().chain(entry).chain(tail.iter().copied()).collect();
            run = &edited;
        }
        let bytes = run.len() * size;
        let mut pad = 0usize;
        if bytes > 0 && bytes <= 64 {
            let line_at = |k: usize| (DATA_OFFSET + (out.len() + k) * size) % 64;
            pad = (0..64 / size).find(|&k| line_at(k) + bytes <= 64).unwrap_or(0);
        }
        out.extend(std::iter::repeat_n(T::default(), pad));
        out.extend_from_slice(run);
        let (end_field, pad_field) = if inst {
            (&mut s.inst_end, &mut s.inst_pad)
        } else {
            (&mut s.org_end, &mut s.org_pad)
        };
        *end_field = out.len() as u32;
        *pad_field = pad as u8;
    }
    Arc::from(out)
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

/// Every user id's assignments (see the module's comment). The three vectors have one entry
/// per page.
#[derive(Clone, Debug, Default)]
pub struct UserTable {
    pub(super) slots: Vec<Arc<[Slot]>>,
    /// Per page, org-wide assignments as (org id, role-name id), each user's run sorted.
    pub(super) org: Vec<Arc<[(u32, u32)]>>,
    /// Per page, instance assignments as (resource id, org id, role-name id), each run sorted.
    pub(super) inst: Vec<Arc<[(u32, u32, u32)]>>,
    pub(super) len: usize,
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
        let (p, at) = (i / PER, i % PER);
        let slots = self.slots.get(p)?;
        let (o0, o1, i0, i1) = bounds(slots, at);
        let slot = slots.get(at)?;
        Some(UserRec {
            id,
            listed: slot.listed,
            org_roles: self.org.get(p).and_then(|r| r.get(o0..o1)).unwrap_or_default(),
            inst_roles: self.inst.get(p).and_then(|r| r.get(i0..i1)).unwrap_or_default(),
            inst_orgs: slot.inst_orgs,
        })
    }

    pub fn iter(&self) -> impl Iterator<Item = UserRec<'_>> {
        (0..self.len as u32).filter_map(|id| self.get(id))
    }

    /// Makes ids up to `id` exist (with no assignments, not listed).
    pub fn ensure(&mut self, id: u32) {
        let i = id as usize;
        while self.slots.len() <= i / PER {
            self.slots.push(Arc::from(vec![Slot::default(); PER]));
            self.org.push(Arc::from(Vec::new()));
            self.inst.push(Arc::from(Vec::new()));
        }
        self.len = self.len.max(i + 1);
    }

    /// The slots of user `id`'s page, copied if shared, and the user's place in them.
    fn slots_mut(&mut self, id: u32) -> (&mut [Slot], usize) {
        self.ensure(id);
        let i = id as usize;
        // `ensure` made the page exist.
        (Arc::make_mut(&mut self.slots[i / PER]), i % PER)
    }

    /// Sets whether the document lists user `id`; gives what it was.
    pub fn set_listed(&mut self, id: u32, listed: bool) -> bool {
        if !listed && self.get(id).is_none_or(|u| !u.listed) {
            return false;
        }
        let (slots, at) = self.slots_mut(id);
        match slots.get_mut(at) {
            Some(s) => std::mem::replace(&mut s.listed, listed),
            None => false,
        }
    }

    /// Adds an org-wide assignment; false when the user already has it.
    pub fn insert_org_role(&mut self, id: u32, entry: (u32, u32)) -> bool {
        self.ensure(id);
        let Some(Err(k)) = self.get(id).map(|u| u.org_roles.binary_search(&entry)) else {
            return false;
        };
        self.change_org(id, k, Some(entry));
        true
    }

    /// Removes an org-wide assignment; false when the user does not have it.
    pub fn remove_org_role(&mut self, id: u32, entry: (u32, u32)) -> bool {
        let Some(Ok(k)) = self.get(id).map(|u| u.org_roles.binary_search(&entry)) else {
            return false;
        };
        self.change_org(id, k, None);
        true
    }

    /// Puts `entry` at place `k` of user `id`'s org-wide run, or takes place `k` out.
    fn change_org(&mut self, id: u32, k: usize, entry: Option<(u32, u32)>) {
        let p = id as usize / PER;
        let Some(data) = self.org.get(p).cloned() else {
            return;
        };
        let (slots, at) = self.slots_mut(id);
        let data = repack(slots, &data, false, Some((at, k, entry)));
        if let Some(run) = self.org.get_mut(p) {
            *run = data;
        }
    }

    /// Adds an instance assignment; false when the user already has it.
    pub fn insert_inst_role(&mut self, id: u32, entry: (u32, u32, u32)) -> bool {
        self.ensure(id);
        let Some(Err(k)) = self.get(id).map(|u| u.inst_roles.binary_search(&entry)) else {
            return false;
        };
        self.change_inst(id, k, Some(entry));
        true
    }

    /// Removes an instance assignment; false when the user does not have it.
    pub fn remove_inst_role(&mut self, id: u32, entry: (u32, u32, u32)) -> bool {
        let Some(Ok(k)) = self.get(id).map(|u| u.inst_roles.binary_search(&entry)) else {
            return false;
        };
        self.change_inst(id, k, None);
        true
    }

    /// Puts `entry` at place `k` of user `id`'s instance run, or takes place `k` out, and
    /// keeps the user's org mask right.
    fn change_inst(&mut self, id: u32, k: usize, entry: Option<(u32, u32, u32)>) {
        let p = id as usize / PER;
        let Some(run) = self.inst.get(p).cloned() else {
            return;
        };
        let (slots, at) = self.slots_mut(id);
        let run = repack(slots, &run, true, Some((at, k, entry)));
        let (_, _, i0, i1) = bounds(slots, at);
        let mask = run
            .get(i0..i1)
            .unwrap_or_default()
            .iter()
            .fold(0, |m, &(_, o, _)| m | 1 << (o % 32));
        if let Some(s) = slots.get_mut(at) {
            s.inst_orgs = mask;
        }
        if let Some(slot) = self.inst.get_mut(p) {
            *slot = run;
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
        for p in 0..self.slots.len() {
            let end = ((p + 1) * PER) as u32;
            let (o, rest) = org_wide.split_at(org_wide.partition_point(|a| a.0 < end));
            let (n, rest_i) = on_instance.split_at(on_instance.partition_point(|a| a.0 < end));
            (org_wide, on_instance) = (rest, rest_i);
            self.fill_page(p, o, n);
        }
    }

    /// `fill` of page `p` alone: `o` and `n` are the page's users' assignments, sorted and
    /// unique, as `fill` takes them (the page must exist: `ensure`).
    pub fn fill_page(&mut self, p: usize, o: &[(u32, u32, u32)], n: &[(u32, u32, u32, u32)]) {
        if o.is_empty() && n.is_empty() {
            return;
        }
        let org: Vec<(u32, u32)> = o.iter().map(|&(_, org, role)| (org, role)).collect();
        let inst: Vec<(u32, u32, u32)> = n.iter().map(|&(_, res, org, role)| (res, org, role)).collect();
        let Some(slots) = self.slots.get_mut(p).map(Arc::make_mut) else {
            return;
        };
        let base = (p * PER) as u32;
        let (mut oi, mut ni) = (0, 0);
        for (at, s) in slots.iter_mut().enumerate() {
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
            (s.org_end, s.inst_end, s.inst_orgs) = (oi as u32, ni as u32, mask);
            (s.org_pad, s.inst_pad) = (0, 0);
        }
        let org = repack(slots, &org, false, None);
        let inst = repack(slots, &inst, true, None);
        if let Some(run) = self.org.get_mut(p) {
            *run = org;
        }
        if let Some(run) = self.inst.get_mut(p) {
            *run = inst;
        }
    }

    /// How many of this table's pages are the very ones of `other` (for tests of sharing): a
    /// page is shared when its slots and both its arrays are.
    #[cfg(test)]
    pub fn pages_shared_with(&self, other: &UserTable) -> (usize, usize) {
        fn same<T: ?Sized>(a: Option<&Arc<T>>, b: Option<&Arc<T>>) -> bool {
            a.zip(b).is_some_and(|(a, b)| Arc::ptr_eq(a, b))
        }
        let shared = (0..self.slots.len())
            .filter(|&p| {
                same(self.slots.get(p), other.slots.get(p))
                    && same(self.org.get(p), other.org.get(p))
                    && same(self.inst.get(p), other.inst.get(p))
            })
            .count();
        (shared, self.slots.len())
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
    fn a_page_of_slots_is_one_allocator_size_class() {
        assert_eq!(std::mem::size_of::<Slot>(), 16);
        assert_eq!(16 + PER * std::mem::size_of::<Slot>(), 4096);
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
        assert!(!Arc::ptr_eq(&bulk.slots[0], &before.slots[0]));
        assert!(!Arc::ptr_eq(&bulk.slots[1], &before.slots[1]));
        assert_eq!(
            bulk.pages_shared_with(&before),
            (bulk.slots.len() - 2, bulk.slots.len())
        );
        assert!(!bulk.set_listed(8, false) && bulk.set_listed(7, false) && !bulk.get(7).unwrap().listed);
        assert_eq!(bulk.iter().count(), 2100);
    }
}
