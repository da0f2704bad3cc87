//! Facts under change: users, resource instances, role assignments and grants as the build and
//! `apply` write them (the interned ids, the per-user and per-resource records, the bitmaps,
//! the hot resource table, the per-org grant kinds).

use super::*;
use crate::model;

impl Index {
    pub(super) fn user_mut(&mut self, key: &str) -> (u32, &mut UserRec) {
        let id = self.names.users.intern(key);
        (id, self.users.slot(id as usize))
    }

    /// The resource id of `type:key`, creating an empty record for a new one.
    pub(super) fn res_id(&mut self, resource_type: &str, key: &str) -> u32 {
        ResIds {
            types: &mut self.names.types,
            res_keys: &mut self.res_keys,
            resources: &mut self.resources,
        }
        .id(resource_type, key)
    }

    pub(super) fn res_ref(&mut self, reference: &str) -> u32 {
        ResIds {
            types: &mut self.names.types,
            res_keys: &mut self.res_keys,
            resources: &mut self.resources,
        }
        .reference(reference)
    }

    pub(super) fn res_mut(&mut self, id: u32) -> Option<&mut ResRec> {
        self.resources.get_mut(id as usize)?.as_mut().map(Arc::make_mut)
    }

    pub(super) fn upsert_user(&mut self, u: &User) {
        let (_, rec) = self.user_mut(&u.key);
        let added = !rec.listed;
        rec.listed = true;
        let says_more = u.email.is_some() || u.first_name.is_some() || u.last_name.is_some() || u.attributes.is_some();
        rec.meta = says_more.then(|| Box::new(u.clone()));
        self.counts.users += usize::from(added);
    }

    pub(super) fn delete_user(&mut self, key: &str) {
        let Some(id) = self.names.users.get(key) else { return };
        if let Some(rec) = self.users.get_mut(id as usize)
            && rec.listed
        {
            rec.listed = false;
            rec.meta = None;
            self.counts.users -= 1;
        }
    }

    pub(super) fn upsert_resource(&mut self, r: &model::Resource) {
        let id = self.res_id(&r.resource_type, &r.key);
        let org = self.names.orgs.intern(&r.org);
        let parents: Box<[u32]> = r.parents.iter().map(|p| self.res_ref(p)).collect();
        let Some(rec) = self.res_mut(id) else { return };
        let t = rec.resource_type;
        let old = rec.item.replace(ResItem {
            org,
            parents,
            attributes: r.attributes.clone().map(Box::new),
        });
        match old {
            Some(old) => bitmap_remove(&mut self.org_type_res, (old.org, t), id),
            None => self.counts.resources += 1,
        }
        bitmap_insert(&mut self.org_type_res, (org, t), id);
        self.sync_hot(id);
    }

    /// Recomputes resource `id`'s `ResHot` from its record, and its span when its link up
    /// changed (`spans.rs`).
    pub(super) fn sync_hot(&mut self, id: u32) {
        let old = self.res_hot.get(id as usize).copied().unwrap_or_default();
        let mut hot = match self.res(id) {
            None => ResHot::default(),
            Some(rec) => {
                let (org, parent) = match &rec.item {
                    None => (NONE, NONE),
                    Some(item) => (
                        item.org,
                        match &item.parents[..] {
                            [] => NONE,
                            [one] => *one,
                            _ => ResHot::MANY,
                        },
                    ),
                };
                ResHot {
                    org,
                    resource_type: rec.resource_type,
                    parent,
                    grants: !rec.grants.is_empty(),
                    ..ResHot::default()
                }
            }
        };
        (hot.pre, hot.end, hot.kids) = (old.pre, old.end, old.kids);
        if hot.parent != old.parent || (hot.parent == NONE && old.pre == NONE) {
            self.place_moved(id, &old, &mut hot);
        }
        if self.res_hot.get(id as usize) != Some(&hot) {
            *self.res_hot.slot(id as usize) = hot;
        }
    }

    pub(super) fn delete_resource(&mut self, resource_type: &str, key: &str) {
        let Some(id) = self.lookup_res(resource_type, key) else {
            return;
        };
        let Some(rec) = self.res_mut(id) else { return };
        let t = rec.resource_type;
        if let Some(old) = rec.item.take() {
            self.counts.resources -= 1;
            bitmap_remove(&mut self.org_type_res, (old.org, t), id);
        }
        self.sync_hot(id);
    }

    pub(super) fn upsert_assignment(&mut self, a: &RoleAssignment) {
        let org = self.names.orgs.intern(&a.org);
        let role = self.names.roles.intern(&a.role);
        match &a.resource {
            None => {
                let (uid, rec) = self.user_mut(&a.user);
                if let Err(at) = rec.org_roles.binary_search(&(org, role)) {
                    rec.org_roles.insert(at, (org, role));
                    self.counts.role_assignments += 1;
                    bitmap_insert(&mut self.org_role_users, (org, role), uid);
                }
            }
            Some(reference) => {
                let res = self.res_ref(reference);
                let (uid, rec) = self.user_mut(&a.user);
                if let Err(at) = rec.inst_roles.binary_search(&(res, org, role)) {
                    rec.inst_roles.insert(at, (res, org, role));
                    rec.sync_inst_orgs();
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
        let Index {
            names,
            res_keys,
            resources,
            ..
        } = self;
        let Names {
            orgs,
            roles,
            types,
            users,
            ..
        } = names;
        let user_ids = |users: &mut Interner| list.iter().map(|a| users.intern(&a.user)).collect::<Vec<u32>>();
        let mut res = ResIds {
            types,
            res_keys,
            resources,
        };
        let mut others = |res: &mut ResIds<'_>| {
            list.iter()
                .map(|a| {
                    let org = orgs.intern(&a.org);
                    let role = roles.intern(&a.role);
                    (org, role, a.resource.as_deref().map(|r| res.reference(r)))
                })
                .collect::<Vec<(u32, u32, Option<u32>)>>()
        };
        let (uids, rest) = if list.len() >= PARALLEL_BUILD {
            let (uids, rest) = std::thread::scope(|scope| {
                let half = scope.spawn(|| user_ids(users));
                let rest = others(&mut res);
                (half.join().ok(), rest)
            });
            // A panic cannot happen there; should it, interning again gives the same ids.
            (uids.unwrap_or_else(|| user_ids(users)), rest)
        } else {
            (user_ids(users), others(&mut res))
        };
        // (user, org, role) and (user, resource, org, role).
        let mut org_wide: Vec<(u32, u32, u32)> = Vec::with_capacity(list.len());
        let mut on_instance: Vec<(u32, u32, u32, u32)> = Vec::new();
        for (&uid, &(org, role, res)) in uids.iter().zip(&rest) {
            match res {
                None => org_wide.push((uid, org, role)),
                Some(res) => on_instance.push((uid, res, org, role)),
            }
        }
        drop((uids, rest));
        // Every user an assignment names has a record, as `user_mut` would have made it.
        if let Some(last) = self.names.users.len().checked_sub(1) {
            self.users.slot(last);
        }
        org_wide.sort_unstable();
        org_wide.dedup();
        on_instance.sort_unstable();
        on_instance.dedup();
        self.counts.role_assignments += org_wide.len() + on_instance.len();

        for run in org_wide.chunk_by(|a, b| a.0 == b.0) {
            let Some(&(uid, ..)) = run.first() else { continue };
            if let Some(rec) = self.users.get_mut(uid as usize) {
                rec.org_roles = run.iter().map(|&(_, org, role)| (org, role)).collect();
            }
        }
        for run in on_instance.chunk_by(|a, b| a.0 == b.0) {
            let Some(&(uid, ..)) = run.first() else { continue };
            if let Some(rec) = self.users.get_mut(uid as usize) {
                rec.inst_roles = run.iter().map(|&(_, res, org, role)| (res, org, role)).collect();
                rec.sync_inst_orgs();
            }
        }

        org_wide.sort_unstable_by_key(|&(uid, org, role)| (org, role, uid));
        for run in org_wide.chunk_by(|a, b| (a.1, a.2) == (b.1, b.2)) {
            let Some(&(_, org, role)) = run.first() else { continue };
            let uids = run.iter().map(|&(uid, ..)| uid);
            // Sorted and unique by construction; `collect` would give the same, only slower.
            let users = RoaringBitmap::from_sorted_iter(uids.clone()).unwrap_or_else(|_| uids.collect());
            match self.org_role_users.get_mut(&(org, role)) {
                Some(b) => *Arc::make_mut(b) |= users,
                None => {
                    self.org_role_users.insert((org, role), Arc::new(users));
                }
            }
        }

        on_instance.sort_unstable_by_key(|&(uid, res, org, role)| (res, uid, org, role));
        for run in on_instance.chunk_by(|a, b| a.1 == b.1) {
            let Some(&(_, res, ..)) = run.first() else { continue };
            if let Some(r) = self.res_mut(res) {
                r.holders = run.iter().map(|&(uid, _, org, role)| (uid, org, role)).collect();
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
        let Some(rec) = self.users.get_mut(uid as usize) else {
            return;
        };
        match res {
            None => {
                if let Ok(at) = rec.org_roles.binary_search(&(org, role)) {
                    rec.org_roles.remove(at);
                    self.counts.role_assignments -= 1;
                    bitmap_remove(&mut self.org_role_users, (org, role), uid);
                }
            }
            Some(res) => {
                if let Ok(at) = rec.inst_roles.binary_search(&(res, org, role)) {
                    rec.inst_roles.remove(at);
                    rec.sync_inst_orgs();
                    self.counts.role_assignments -= 1;
                    if let Some(r) = self.res_mut(res)
                        && let Ok(at) = r.holders.binary_search(&(uid, org, role))
                    {
                        r.holders.remove(at);
                    }
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
        if self.res(res).is_none() {
            return;
        }
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
        self.sync_hot(res);
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
        self.sync_hot(res);
    }
}

/// Documents with at least this many assignments are built on two threads.
pub(super) const PARALLEL_BUILD: usize = 50_000;

/// The three tables a resource id lives in, borrowed apart from the rest of the index so the
/// bulk build can intern resources while another thread interns users.
pub(super) struct ResIds<'a> {
    types: &'a mut Interner,
    res_keys: &'a mut Vec<KeyMap>,
    resources: &'a mut PagedVec<Option<Arc<ResRec>>>,
}

impl ResIds<'_> {
    /// The resource id of `type:key`, creating an empty record for a new one.
    fn id(&mut self, resource_type: &str, key: &str) -> u32 {
        let t = self.types.intern(resource_type);
        if self.res_keys.len() <= t as usize {
            self.res_keys.resize_with(t as usize + 1, KeyMap::default);
        }
        if let Some(id) = self.res_keys.get(t as usize).and_then(|m| m.get(key)) {
            return id;
        }
        let id = self.resources.len() as u32;
        if let Some(m) = self.res_keys.get_mut(t as usize) {
            m.insert(key, id);
        }
        self.resources.push(Some(Arc::new(ResRec {
            resource_type: t,
            key: Arc::from(key),
            ..ResRec::default()
        })));
        id
    }

    /// The resource id of a `type:key` reference (all of it the type when there is no `:`).
    fn reference(&mut self, reference: &str) -> u32 {
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
