//! Facts under change: users, resource instances, role assignments and grants as the build and
//! `apply` write them (the interned ids, the per-user and per-resource records, the bitmaps,
//! the hot resource table, the per-org grant kinds).

use super::*;
use crate::model;

impl Index {
    /// The id of user `key`, interned (and given an empty record) if new.
    pub(super) fn user_id(&mut self, key: &str) -> u32 {
        let id = self.names.users.intern(key);
        self.users.ensure(id);
        id
    }

    /// The resource id of `type:key`, creating an empty record for a new one.
    pub(super) fn res_id(&mut self, resource_type: &str, key: &str) -> u32 {
        ResIds {
            types: &mut self.names.types,
            res_keys: &mut self.res_keys,
            res_names: &mut self.res_names,
            res_hot: &mut self.res_hot,
        }
        .id(resource_type, key)
    }

    pub(super) fn res_ref(&mut self, reference: &str) -> u32 {
        ResIds {
            types: &mut self.names.types,
            res_keys: &mut self.res_keys,
            res_names: &mut self.res_names,
            res_hot: &mut self.res_hot,
        }
        .reference(reference)
    }

    /// The `ResExtra` of resource `id`, made (empty) if it has none; `None` for an id never
    /// handed out. Whoever empties one calls `tidy_extra`.
    pub(super) fn res_mut(&mut self, id: u32) -> Option<&mut ResExtra> {
        if id as usize >= self.res_hot.len() {
            return None;
        }
        let slot = self.res_extra.slot(id as usize);
        Some(Arc::make_mut(slot.get_or_insert_with(Arc::default)))
    }

    /// Drops resource `id`'s `ResExtra` when nothing is left in it.
    pub(super) fn tidy_extra(&mut self, id: u32) {
        if self.res_extra(id).is_some_and(ResExtra::is_empty)
            && let Some(slot) = self.res_extra.get_mut(id as usize)
        {
            *slot = None;
        }
    }

    pub(super) fn upsert_user(&mut self, u: &User) {
        let id = self.user_id(&u.key);
        let added = !self.users.set_listed(id, true);
        let says_more = u.email.is_some() || u.first_name.is_some() || u.last_name.is_some() || u.attributes.is_some();
        if says_more {
            self.user_meta.insert(id, Arc::new(u.clone()));
        } else if !self.user_meta.is_empty() {
            self.user_meta.remove(&id);
        }
        self.counts.users += usize::from(added);
    }

    pub(super) fn delete_user(&mut self, key: &str) {
        let Some(id) = self.names.users.get(key) else { return };
        if self.users.set_listed(id, false) {
            self.user_meta.remove(&id);
            self.counts.users -= 1;
        }
    }

    pub(super) fn upsert_resource(&mut self, r: &model::Resource) {
        let id = self.res_id(&r.resource_type, &r.key);
        let parents: Box<[u32]> = r.parents.iter().map(|p| self.res_ref(p)).collect();
        self.put_resource(id, &r.org, parents, r.attributes.clone());
    }

    /// Writes instance `id` (its `type:key` interned already, its parents' ids given).
    pub(super) fn put_resource(&mut self, id: u32, org: &str, parents: Box<[u32]>, attributes: Option<Attributes>) {
        let org = self.names.orgs.intern(org);
        let Some(old) = self.res_hot.get(id as usize).copied() else {
            return;
        };
        let t = old.resource_type;
        let parent = match &parents[..] {
            [] => NONE,
            [one] => *one,
            _ => ResHot::MANY,
        };
        let many = parents.len() > 1;
        let attributes = attributes.map(Box::new);
        if many || attributes.is_some() || self.res_extra(id).is_some() {
            if let Some(extra) = self.res_mut(id) {
                extra.parents = if many { parents } else { Box::default() };
                extra.attributes = attributes;
            }
            self.tidy_extra(id);
        }
        match old.org {
            NONE => self.counts.resources += 1,
            old_org => bitmap_remove(&mut self.org_type_res, (old_org, t), id),
        }
        bitmap_insert(&mut self.org_type_res, (org, t), id);
        self.set_hot(id, |h| (h.org, h.parent) = (org, parent));
    }

    /// Changes resource `id`'s `ResHot` entry (the instance's org and only parent, whether it
    /// has grants) and places its span again when its link up changed (`spans.rs`).
    pub(super) fn set_hot(&mut self, id: u32, change: impl FnOnce(&mut ResHot)) {
        let Some(old) = self.res_hot.get(id as usize).copied() else {
            return;
        };
        let mut hot = old;
        change(&mut hot);
        if hot.parent != old.parent || (hot.parent == NONE && old.pre == NONE) {
            self.place_moved(id, &old, &mut hot);
        }
        if hot != old {
            *self.res_hot.slot(id as usize) = hot;
        }
    }

    /// Marks in `ResHot` whether resource `id` has grants.
    fn sync_grants_flag(&mut self, id: u32) {
        let grants = !self.res_grants(id).is_empty();
        self.set_hot(id, |h| h.grants = grants);
    }

    pub(super) fn delete_resource(&mut self, resource_type: &str, key: &str) {
        let Some(id) = self.lookup_res(resource_type, key) else {
            return;
        };
        let Some(old) = self.res_hot.get(id as usize).copied() else {
            return;
        };
        if old.org != NONE {
            self.counts.resources -= 1;
            bitmap_remove(&mut self.org_type_res, (old.org, old.resource_type), id);
        }
        if self.res_extra(id).is_some() {
            if let Some(extra) = self.res_mut(id) {
                extra.parents = Box::default();
                extra.attributes = None;
            }
            self.tidy_extra(id);
        }
        self.set_hot(id, |h| (h.org, h.parent) = (NONE, NONE));
    }

    pub(super) fn upsert_assignment(&mut self, a: &RoleAssignment) {
        let org = self.names.orgs.intern(&a.org);
        let role = self.names.roles.intern(&a.role);
        match &a.resource {
            None => {
                let uid = self.user_id(&a.user);
                if self.users.insert_org_role(uid, (org, role)) {
                    self.counts.role_assignments += 1;
                    bitmap_insert(&mut self.org_role_users, (org, role), uid);
                }
            }
            Some(reference) => {
                let res = self.res_ref(reference);
                let uid = self.user_id(&a.user);
                if self.users.insert_inst_role(uid, (res, org, role)) {
                    self.counts.role_assignments += 1;
                    if let Some(r) = self.res_mut(res)
                        && let Err(at) = r.holders.binary_search(&(uid, org, role))
                    {
                        r.holders.insert(at, (uid, org, role));
                    }
                }
            }
        }
    }

    /// All of a document's assignments at once, on an index that has none yet. Gives the same
    /// index as `upsert_assignment` of each in turn (ids handed out in the same order, the same
    /// sorted, de-duplicated vectors and bitmaps), but sorts the lot and builds every vector and
    /// bitmap once instead of inserting into them one at a time.
    pub(super) fn bulk_assignments(&mut self, list: &[RoleAssignment]) {
        // Interned in document order, so ids come out as one upsert after another would give
        // them. Users are one namespace and orgs, roles and resources others: on a large
        // document the two halves run on two threads.
        let (users, mut ids) = self.assignment_ids();
        let user_ids = |users: &mut Interner| list.iter().map(|a| users.intern(&a.user)).collect::<Vec<u32>>();
        let others = |ids: &mut AssignmentIds<'_>| {
            list.iter()
                .map(|a| {
                    let org = ids.orgs.intern(&a.org);
                    let role = ids.roles.intern(&a.role);
                    (org, role, a.resource.as_deref().map(|r| ids.res.reference(r)))
                })
                .collect::<Vec<(u32, u32, Option<u32>)>>()
        };
        let (uids, rest) = if list.len() >= PARALLEL_BUILD {
            let (uids, rest) = std::thread::scope(|scope| {
                let half = scope.spawn(|| user_ids(users));
                let rest = others(&mut ids);
                (half.join().ok(), rest)
            });
            // A panic cannot happen there; should it, interning again gives the same ids.
            (uids.unwrap_or_else(|| user_ids(users)), rest)
        } else {
            (user_ids(users), others(&mut ids))
        };
        let mut placing = Placing::default();
        for (&uid, &(org, role, res)) in uids.iter().zip(&rest) {
            match res {
                None => placing.org_wide(uid, org, role),
                Some(res) => placing.on_instance(uid, res, org, role),
            }
        }
        drop((uids, rest));
        self.place_assignments(placing);
    }

    /// Places interned assignments, bucketed by the users' page, in any order and with
    /// repeats, into the users' table (a page at a time, each bucket sorted and freed as its
    /// page is written, so the buckets shrink as the table grows), then the bitmaps and the
    /// holders, read back from the table; answers how many repeats there were (validation
    /// refuses a document with any).
    pub(super) fn place_assignments(&mut self, placing: Placing) -> usize {
        // Every user an assignment names has a record, as `user_id` would have made it.
        if let Some(last) = self.names.users.len().checked_sub(1) {
            self.users.ensure(last as u32);
        }
        let Placing { mut org, mut inst } = placing;
        let pages = org.len().max(inst.len());
        let (mut given, mut placed) = (0, 0);
        for p in 0..pages {
            let mut o = org.get_mut(p).map(std::mem::take).unwrap_or_default();
            let mut n = inst.get_mut(p).map(std::mem::take).unwrap_or_default();
            given += o.len() + n.len();
            o.sort_unstable();
            o.dedup();
            n.sort_unstable();
            n.dedup();
            placed += o.len() + n.len();
            self.users.fill_page(p, &o, &n);
        }
        drop((org, inst));
        self.counts.role_assignments += placed;
        self.index_assignments();
        given - placed
    }

    /// The users per (org, role) bitmaps and each resource's holders, from the users' table:
    /// read in user order, so each bitmap is appended to at its end and each resource's
    /// holders come sorted.
    fn index_assignments(&mut self) {
        let mut bitmaps: std::collections::HashMap<(u32, u32), RoaringBitmap, foldhash::fast::RandomState> =
            Default::default();
        let mut holders: std::collections::HashMap<u32, Vec<(u32, u32, u32)>, foldhash::fast::RandomState> =
            Default::default();
        for u in self.users.iter() {
            for &key in u.org_roles {
                let b = bitmaps.entry(key).or_default();
                if b.try_push(u.id).is_err() {
                    b.insert(u.id);
                }
            }
            for &(res, org, role) in u.inst_roles {
                holders.entry(res).or_default().push((u.id, org, role));
            }
        }
        for (key, users) in bitmaps {
            match self.org_role_users.get_mut(&key) {
                Some(b) => *Arc::make_mut(b) |= users,
                None => {
                    self.org_role_users.insert(key, Arc::new(users));
                }
            }
        }
        for (res, list) in holders {
            if let Some(r) = self.res_mut(res) {
                r.holders = list;
            }
        }
    }

    pub(super) fn delete_assignment(&mut self, a: &RoleAssignment) {
        let (Some(uid), Some(org), Some(role)) = (
            self.names.users.get(&a.user),
            self.names.orgs.get(&a.org),
            self.names.roles.get(&a.role),
        ) else {
            return;
        };
        let res = match &a.resource {
            None => None,
            Some(reference) => {
                let r = ResourceRef::parse(reference);
                match r.and_then(|r| self.lookup_res(r.resource_type, r.key)) {
                    Some(id) => Some(id),
                    None => return,
                }
            }
        };
        match res {
            None => {
                if self.users.remove_org_role(uid, (org, role)) {
                    self.counts.role_assignments -= 1;
                    bitmap_remove(&mut self.org_role_users, (org, role), uid);
                }
            }
            Some(res) => {
                if self.users.remove_inst_role(uid, (res, org, role)) {
                    self.counts.role_assignments -= 1;
                    if let Some(r) = self.res_mut(res)
                        && let Ok(at) = r.holders.binary_search(&(uid, org, role))
                    {
                        r.holders.remove(at);
                    }
                    self.tidy_extra(res);
                }
            }
        }
    }

    pub(super) fn upsert_grant(&mut self, g: &RoleGrant) {
        let org = self.names.orgs.intern(&g.org);
        let role = self.names.roles.intern(&g.role);
        let patterns: Box<[(u32, u32)]> = g
            .actions
            .iter()
            .filter_map(|p| p.split_once(':'))
            .map(|(t, a)| {
                let t = if t == "*" { STAR } else { self.names.types.intern(t) };
                let a = if a == "*" { STAR } else { self.names.actions.intern(a) };
                (t, a)
            })
            .collect();
        let res = self.res_ref(&g.resource);
        let when = g.when.as_deref().map(Condition::compile_or_never);
        let grant = GrantRec {
            org,
            role,
            patterns,
            when,
        };
        self.count_grant(&grant, 1);
        if grant.when.is_some() {
            self.cond_grants += 1;
        }
        let Some(rec) = self.res_mut(res) else { return };
        let old = match rec.grants.iter_mut().find(|x| x.org == org && x.role == role) {
            Some(slot) => Some(std::mem::replace(slot, grant)),
            None => {
                rec.grants.push(grant);
                self.counts.role_grants += 1;
                None
            }
        };
        if let Some(old) = old {
            self.count_grant(&old, -1);
            if old.when.is_some() {
                self.cond_grants -= 1;
            }
        }
        self.sync_grants_flag(res);
    }

    /// Adds (`by` = 1) or removes (-1) a grant's kinds in its org's `org_grants`.
    pub(super) fn count_grant(&mut self, g: &GrantRec, by: i64) {
        let kinds = self.org_grants.slot(g.org as usize);
        for &pattern in g.patterns.iter() {
            let key = (g.role, pattern);
            match kinds.binary_search_by_key(&key, |k| (k.role, k.pattern)) {
                Ok(at) => {
                    if let Some(k) = kinds.get_mut(at) {
                        k.count = (i64::from(k.count) + by).max(0) as u32;
                        if k.count == 0 {
                            kinds.remove(at);
                        }
                    }
                }
                Err(at) if by > 0 => kinds.insert(
                    at,
                    GrantKind {
                        role: g.role,
                        pattern,
                        count: by as u32,
                    },
                ),
                Err(_) => {}
            }
        }
    }

    /// The grant kinds of org `o`, sorted by (role-name id, pattern).
    #[inline]
    pub(crate) fn org_grants(&self, o: u32) -> &[GrantKind] {
        self.org_grants.get(o as usize).map_or(&[], |k| k)
    }

    pub(super) fn delete_grant(&mut self, org: &str, role: &str, resource: &str) {
        let (Some(org), Some(role)) = (self.names.orgs.get(org), self.names.roles.get(role)) else {
            return;
        };
        let Some(res) = ResourceRef::parse(resource).and_then(|r| self.lookup_res(r.resource_type, r.key)) else {
            return;
        };
        let Some(rec) = self.res_mut(res) else { return };
        let Some(at) = rec.grants.iter().position(|x| x.org == org && x.role == role) else {
            return;
        };
        let old = rec.grants.remove(at);
        self.counts.role_grants -= 1;
        self.count_grant(&old, -1);
        if old.when.is_some() {
            self.cond_grants -= 1;
        }
        self.tidy_extra(res);
        self.sync_grants_flag(res);
    }
}

/// Documents with at least this many assignments are built on two threads.
/// Interned assignments bucketed by the page of the users' table their user is on:
/// (user, org, role) org-wide and (user, resource, org, role) on an instance.
#[derive(Default)]
pub(super) struct Placing {
    org: Vec<Vec<(u32, u32, u32)>>,
    inst: Vec<Vec<(u32, u32, u32, u32)>>,
}

impl Placing {
    pub(super) fn org_wide(&mut self, uid: u32, org: u32, role: u32) {
        bucket(&mut self.org, uid).push((uid, org, role));
    }

    pub(super) fn on_instance(&mut self, uid: u32, res: u32, org: u32, role: u32) {
        bucket(&mut self.inst, uid).push((uid, res, org, role));
    }
}

fn bucket<T>(buckets: &mut Vec<Vec<T>>, uid: u32) -> &mut Vec<T> {
    let p = uid as usize / super::users::PER;
    if buckets.len() <= p {
        buckets.resize_with(p + 1, Vec::new);
    }
    &mut buckets[p]
}

pub(super) const PARALLEL_BUILD: usize = 50_000;

/// The three tables a resource id lives in, borrowed apart from the rest of the index so the
/// bulk build can intern resources while another thread interns users.
pub(super) struct ResIds<'a> {
    types: &'a mut Interner,
    res_keys: &'a mut Vec<KeyMap>,
    res_names: &'a mut NameList,
    res_hot: &'a mut PagedVec<ResHot>,
}

/// The tables assignments are interned into, borrowed apart: users' on one side (another
/// thread may take it), orgs', roles' and resources' on the other.
pub(super) struct AssignmentIds<'a> {
    pub(super) orgs: &'a mut Interner,
    pub(super) roles: &'a mut Interner,
    pub(super) res: ResIds<'a>,
}

impl Index {
    pub(super) fn assignment_ids(&mut self) -> (&mut Interner, AssignmentIds<'_>) {
        let Index {
            names,
            res_keys,
            res_names,
            res_hot,
            ..
        } = self;
        let Names {
            orgs,
            roles,
            types,
            users,
            ..
        } = names;
        let res = ResIds {
            types,
            res_keys,
            res_names,
            res_hot,
        };
        (users, AssignmentIds { orgs, roles, res })
    }
}

impl ResIds<'_> {
    /// The resource id of `type:key`, handing out the next one (with a `ResHot` entry of its
    /// type and nothing else) for a new one.
    pub(super) fn id(&mut self, resource_type: &str, key: &str) -> u32 {
        let t = self.types.intern(resource_type);
        if self.res_keys.len() <= t as usize {
            self.res_keys.resize_with(t as usize + 1, KeyMap::default);
        }
        if let Some(id) = self.res_keys.get(t as usize).and_then(|m| m.get(key, self.res_names)) {
            return id;
        }
        let id = self.res_hot.len() as u32;
        if let Some(m) = self.res_keys.get_mut(t as usize) {
            m.insert(key, id, self.res_names);
        }
        self.res_names.push(key);
        self.res_hot.push(ResHot {
            resource_type: t,
            ..ResHot::default()
        });
        id
    }

    /// The resource id of a `type:key` reference (all of it the type when there is no `:`).
    pub(super) fn reference(&mut self, reference: &str) -> u32 {
        let r = ResourceRef::parse(reference).unwrap_or(ResourceRef {
            resource_type: reference,
            key: "",
        });
        self.id(r.resource_type, r.key)
    }
}

pub(super) fn bitmap_insert(map: &mut imbl::HashMap<(u32, u32), Arc<RoaringBitmap>>, key: (u32, u32), id: u32) {
    Arc::make_mut(map.entry(key).or_default()).insert(id);
}

pub(super) fn bitmap_remove(map: &mut imbl::HashMap<(u32, u32), Arc<RoaringBitmap>>, key: (u32, u32), id: u32) {
    let now_empty = match map.get_mut(&key) {
        Some(b) => {
            let b = Arc::make_mut(b);
            b.remove(id);
            b.is_empty()
        }
        None => false,
    };
    if now_empty {
        map.remove(&key);
    }
}
