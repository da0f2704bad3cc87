//! The queries of model.md §3, answered from the roaring bitmaps: candidates come from the
//! bitmaps (instances per (org, type), users per (org, role)), an org-wide permit answers a
//! whole bitmap at once, and whatever is left is filtered exactly with `decide()`, so every
//! answer agrees with §2 element by element. Pure and synchronous, like the rest of the index.
//! Paging is by id (or by position for the small policy lists): an opaque cursor names the
//! last element given, so a page never repeats or skips an element of the same version.

use super::{Evidence, Query};
use super::{Index, STAR, Subject};
use crate::cond::RequestData;
use roaring::RoaringBitmap;
use serde::Serialize;
use std::sync::Arc;

/// Page size of a list answer when the request gives none.
pub const DEFAULT_LIMIT: usize = 1000;
/// Largest page size a request may ask for.
pub const MAX_LIMIT: usize = 10_000;

/// Most tree nodes one `groups` answer holds before it says `truncated`.
pub const MAX_TREE_NODES: usize = 10_000;

/// Why a query has no answer (as opposed to an empty one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("role `{role}` does not exist in org `{org}`")]
    RoleNotFound { role: String, org: String },
    #[error("`{field}` is not a cursor this server gave out")]
    BadCursor { field: String },
}

/// An opaque cursor for "after position `pos`".
pub fn encode_cursor(pos: u64) -> String {
    format!("c1.{pos:x}")
}

/// The position an `encode_cursor` string names; `field` names the request field in the error.
pub fn decode_cursor(s: &str, field: &str) -> Result<u64, QueryError> {
    s.strip_prefix("c1.")
        .and_then(|h| u64::from_str_radix(h, 16).ok())
        .ok_or_else(|| QueryError::BadCursor { field: field.into() })
}

/// One page of a bitmap: up to `limit` ids after `after`, and the cursor of the next page when
/// there is more.
pub fn page_bitmap(b: &RoaringBitmap, after: Option<u64>, limit: usize) -> (Vec<u32>, Option<String>) {
    let start = match after {
        None => 0,
        Some(a) if a >= u64::from(u32::MAX) => return (Vec::new(), None),
        Some(a) => a as u32 + 1,
    };
    let mut it = b.range(start..);
    let items: Vec<u32> = it.by_ref().take(limit).collect();
    let more = it.next().is_some();
    let next = match (more, items.last()) {
        (true, Some(last)) => Some(encode_cursor(u64::from(*last))),
        _ => None,
    };
    (items, next)
}

/// A role as perm/v1 `Role` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoleInfo {
    /// The role's `id`, else its position in the document's `roles` plus one (perm/v1 ids are
    /// int32, 0 meaning unset).
    pub id: i32,
    pub key: String,
    pub org: Option<String>,
    pub name: Option<String>,
    /// perm/v1 `status`: the role's `attributes.status` when it is a string.
    pub status: Option<String>,
}

/// Permit's `/local/role_assignments` filters; an empty list does not filter.
#[derive(Debug, Clone, Default)]
pub struct AssignmentFilter {
    pub users: Vec<String>,
    pub roles: Vec<String>,
    pub tenants: Vec<String>,
    /// Resource types.
    pub resources: Vec<String>,
    /// `type:key` references.
    pub resource_instances: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AssignmentRow {
    pub user: String,
    pub role: String,
    pub tenant: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_instance: Option<String>,
}

/// A menu item and the items below it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MenuNode {
    pub platform: String,
    pub code: String,
    pub name: String,
    pub children: Vec<MenuNode>,
}

/// A containing instance (a group) and what lies below it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupNode {
    pub group_type: String,
    pub group_id: String,
    /// Keys of the instances of the asked type directly below this node (that the subject
    /// may act on, when there is a subject).
    pub resources: Vec<String>,
    /// The actions of the asked type allowed at this node (empty without a subject).
    pub acts: Vec<String>,
    pub children: Vec<GroupNode>,
}

/// `/user-permissions` filters; an empty list does not filter.
#[derive(Debug, Clone, Default)]
pub struct UserPermissionsFilter {
    pub tenants: Vec<String>,
    /// `type:key` references; when given, exactly these instances are reported.
    pub resources: Vec<String>,
    pub resource_types: Vec<String>,
}

/// Permissions of one org (type level) or one instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PermEntry {
    pub org: String,
    /// `(type, key)` for an instance entry; `None` for the org's type-level entry.
    pub resource: Option<(String, String)>,
    pub permissions: Vec<String>,
    pub roles: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UserPermissions {
    pub tenants: Vec<PermEntry>,
    pub instances: Vec<PermEntry>,
    pub next_cursor: Option<String>,
}

impl Index {
    /// The actions of a known type in document order, without repeats.
    pub fn type_action_names(&self, t: &str) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        if let Some(rt) = self.items.resource_types.iter().find(|rt| rt.key == t) {
            for a in &rt.actions {
                if !out.contains(&a.as_str()) {
                    out.push(a);
                }
            }
        }
        out
    }

    /// Known org ids.
    pub(super) fn org_ids(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.names.orgs.len() as u32).filter(|o| self.policy.org_known(*o))
    }

    /// The user key of a user id.
    pub fn user_key(&self, uid: u32) -> &str {
        self.names.users.name(uid)
    }

    /// `(type, key, org)` of an instance id.
    pub fn instance_names(&self, id: u32) -> Option<(&str, &str, &str)> {
        let rec = self.res(id)?;
        let item = self.instance(id)?;
        Some((
            self.names.types.name(rec.resource_type),
            rec.key,
            self.names.orgs.name(item.org),
        ))
    }

    /// **List resources**: ids of the instances of type `t` that §2 allows `subject` to `a`,
    /// in org `org`, or without an org in every org (each instance decided in its own org, as
    /// §2 does for a check that names no tenant).
    pub fn list_resources(&self, subject: Subject<'_>, t: &str, a: &str, org: Option<&str>) -> RoaringBitmap {
        self.list_resources_with(subject, t, a, org, None)
    }

    /// `list_resources` for a request that carries data conditions see (model.md §5
    /// "Queries with conditions"): each instance is what `decide` says with that data.
    pub fn list_resources_with(
        &self,
        subject: Subject<'_>,
        t: &str,
        a: &str,
        org: Option<&str>,
        request: Option<&RequestData>,
    ) -> RoaringBitmap {
        match org {
            Some(o) => match self.names.orgs.get(o) {
                Some(o) => self.list_resources_in(subject, t, a, o, request),
                None => RoaringBitmap::new(),
            },
            None => {
                let mut out = RoaringBitmap::new();
                for o in self.org_ids() {
                    out |= self.list_resources_in(subject, t, a, o, request);
                }
                out
            }
        }
    }

    /// `list_resources` in one org id.
    fn list_resources_in(
        &self,
        subject: Subject<'_>,
        t: &str,
        a: &str,
        o: u32,
        request: Option<&RequestData>,
    ) -> RoaringBitmap {
        let p = &*self.policy;
        let names = &self.names;
        if !p.org_known(o) {
            return RoaringBitmap::new();
        }
        let Some(tid) = names.types.get(t).filter(|x| p.type_known(*x)) else {
            return RoaringBitmap::new();
        };
        let Some(perm) = names.actions.get(a).and_then(|aid| p.perm(tid, aid)) else {
            return RoaringBitmap::new();
        };
        let Some(candidates) = self.org_type_res.get(&(o, tid)) else {
            return RoaringBitmap::new();
        };
        // Step 4 is the same for every instance of the org: one permit answers the bitmap.
        let mut held = false;
        let mut inst_any = false;
        match subject {
            Subject::User(u) => {
                if let Some(rec) = self.user(u) {
                    let anc = p.org_anc(o);
                    for &(org_a, name) in rec.org_roles {
                        if anc.binary_search(&org_a).is_err() {
                            continue;
                        }
                        if let Some(role) = p.resolve(org_a, name) {
                            if p.permits(role, perm) {
                                return (**candidates).clone();
                            }
                            held = true;
                        }
                    }
                    inst_any = rec.inst_roles.iter().any(|&(_, org_a, _)| org_a == o);
                }
            }
            Subject::Role(r) => {
                if let Some(role) = names.roles.get(r).and_then(|n| p.resolve(o, n)) {
                    if p.permits(role, perm) {
                        return (**candidates).clone();
                    }
                    held = true;
                }
            }
        }
        let conditional = self.has_conditions();
        let may_walk = inst_any || (held && self.counts.role_grants > 0);
        if !may_walk {
            let mut out = RoaringBitmap::new();
            if conditional {
                self.add_conditional(&mut out, candidates, subject, a, perm, tid, o, request);
            }
            return out;
        }
        // Steps 5 and 6: the nodes that allow (instance assignments that permit, grants that
        // match to a role the subject holds), then everything below them in the org.
        let aid = names.actions.get(a).unwrap_or(STAR);
        let mut sources: Vec<u32> = Vec::new();
        if let Subject::User(u) = subject
            && let Some(rec) = self.user(u)
        {
            for &(res, org_a, name) in rec.inst_roles {
                if org_a == o
                    && self.instance(res).is_some_and(|i| i.org == o)
                    && p.resolve(org_a, name).is_some_and(|r| p.permits(r, perm))
                {
                    sources.push(res);
                }
            }
        }
        let aux = self.query_aux();
        if held && let Some(sites) = aux.grant_sites.get(&o) {
            let expanded = self.expanded_roles(subject, o);
            for &y in sites {
                let Some(rec) = self.res(y) else { continue };
                let hit = rec.grants.iter().any(|g| {
                    g.org == o
                        && g.when.is_none()
                        && g.patterns
                            .iter()
                            .any(|&(pt, pa)| (pt == STAR || pt == tid) && (pa == STAR || pa == aid))
                        && p.resolve(o, g.role).is_some_and(|r| expanded.contains(&r))
                });
                if hit && self.instance(y).is_some_and(|i| i.org == o) {
                    sources.push(y);
                }
            }
        }
        let below = aux.descendants(self, &sources, o);
        let mut out = below & &**candidates;
        if conditional {
            self.add_conditional(&mut out, candidates, subject, a, perm, tid, o, request);
        }
        out
    }

    fn query_aux(&self) -> Arc<QueryAux> {
        self.query_aux.get_or_init(|| Arc::new(QueryAux::build(self))).clone()
    }

    /// The actions of `t` that §2 allows on one target, in the type's document order.
    pub fn allowed_actions<'a>(&'a self, q: &Query<'_>) -> Vec<&'a str> {
        self.type_action_names(q.resource_type)
            .into_iter()
            .filter(|a| self.decide(&Query { action: a, ..*q }).allow)
            .collect()
    }

    /// **Authorized users**: ids of the users §2 allows to `a` on (`t`, `k`) in `org` (org
    /// resolution as §2). Org-wide holders of a permitting role come straight from the
    /// users-per-(org, role) bitmaps; holders below the instance and grant holders are
    /// candidates checked with `decide()`.
    pub fn authorized_users(&self, a: &str, t: &str, k: Option<&str>, org: Option<&str>) -> RoaringBitmap {
        self.authorized_users_with(a, t, k, org, None)
    }

    /// `authorized_users` for a request that carries data conditions see. With conditions,
    /// the holders of a role with a conditional entry for the permission are candidates, and
    /// with a rule for it every known user is: each is checked with `decide()`.
    pub fn authorized_users_with(
        &self,
        a: &str,
        t: &str,
        k: Option<&str>,
        org: Option<&str>,
        request: Option<&RequestData>,
    ) -> RoaringBitmap {
        let p = &*self.policy;
        let names = &self.names;
        let x = k
            .and_then(|k| self.lookup_res(t, k))
            .and_then(|id| self.instance(id).map(|item| (id, item)));
        let o = match org {
            Some(o) => names.orgs.get(o),
            None => match x {
                Some((_, item)) => Some(item.org),
                None => names.orgs.get("default"),
            },
        };
        let mut allowed = RoaringBitmap::new();
        let Some(o) = o.filter(|o| p.org_known(*o)) else {
            return allowed;
        };
        let Some(tid) = names.types.get(t).filter(|x| p.type_known(*x)) else {
            return allowed;
        };
        let Some((aid, perm)) = names
            .actions
            .get(a)
            .and_then(|aid| p.perm(tid, aid).map(|pm| (aid, pm)))
        else {
            return allowed;
        };
        if let Some((_, item)) = x
            && item.org != o
        {
            return allowed;
        }
        let anc = p.org_anc(o);
        let n_names = names.roles.len() as u32;
        let mut candidates = RoaringBitmap::new();
        // Step 4, and the holders of conditional entries as candidates.
        for &org_a in anc {
            for name in 0..n_names {
                let Some(role) = p.resolve(org_a, name) else { continue };
                let Some(b) = self.org_role_users.get(&(org_a, name)) else {
                    continue;
                };
                if p.permits(role, perm) {
                    allowed |= &**b;
                } else if p.may_permit_when(role, perm) {
                    candidates |= &**b;
                }
            }
        }
        // Step 6b: any user the document knows (a user item or an assignment) may meet a
        // rule's condition.
        if p.rules
            .iter()
            .any(|r| r.perms.binary_search(&perm).is_ok() && r.org.is_none_or(|org| anc.binary_search(&org).is_ok()))
        {
            for (uid, rec) in self.users.iter().enumerate() {
                if rec.listed || !rec.org_roles.is_empty() || !rec.inst_roles.is_empty() {
                    candidates.insert(uid as u32);
                }
            }
        }
        if let Some((x_id, _)) = x {
            self.instance_candidates(&mut candidates, x_id, o, tid, aid);
        }
        candidates -= &allowed;
        for uid in candidates.iter() {
            let q = Query {
                subject: Subject::User(names.users.name(uid)),
                action: a,
                resource_type: t,
                resource_key: k,
                org,
                group_type: None,
                request,
            };
            if self.decide(&q).allow {
                allowed.insert(uid);
            }
        }
        allowed
    }

    /// Steps 5 and 6 of `authorized_users`: holders on the instance's ancestors and holders
    /// of grant roles there.
    fn instance_candidates(&self, candidates: &mut RoaringBitmap, x_id: u32, o: u32, tid: u32, aid: u32) {
        let p = &*self.policy;
        let ancestors = self.res_ancestors(x_id, o);
        for &y in &ancestors.list {
            for &(uid, org_a, _) in self.res_holders(y) {
                if org_a == o {
                    candidates.insert(uid);
                }
            }
            for g in self.res_grants(y) {
                if g.org != o
                    || !g
                        .patterns
                        .iter()
                        .any(|&(pt, pa)| (pt == STAR || pt == tid) && (pa == STAR || pa == aid))
                {
                    continue;
                }
                let Some(grant_role) = p.resolve(o, g.role) else {
                    continue;
                };
                *candidates |= self.holders_of(o, grant_role);
            }
        }
    }

    /// Users with `role` in `Expand(OrgRoles(u, o))`: org-wide holders, in an org of
    /// `OrgAnc(o)`, of a role whose `extends` closure reaches `role`.
    pub(super) fn holders_of(&self, o: u32, role: u32) -> RoaringBitmap {
        let p = &*self.policy;
        let mut out = RoaringBitmap::new();
        for (h, compiled) in p.roles.iter().enumerate() {
            let h = h as u32;
            if p.expand(h).binary_search(&role).is_err() {
                continue;
            }
            for &org_a in p.org_anc(o) {
                if p.resolve(org_a, compiled.name) == Some(h)
                    && let Some(b) = self.org_role_users.get(&(org_a, compiled.name))
                {
                    out |= &**b;
                }
            }
        }
        out
    }

    /// **User permissions**: per org, the `type:action` strings §2 allows at type level, with
    /// the roles that give them; per instance, those it allows on the instance. Instances are
    /// reported where they allow more than their org's type-level entry (or exactly the ones
    /// named in `resources`), paged by id.
    pub fn user_permissions(
        &self,
        user: &str,
        f: &UserPermissionsFilter,
        after: Option<u64>,
        limit: usize,
    ) -> UserPermissions {
        self.user_permissions_with(user, f, after, limit, None)
    }

    /// `user_permissions` for a request that carries data conditions see.
    pub fn user_permissions_with(
        &self,
        user: &str,
        f: &UserPermissionsFilter,
        after: Option<u64>,
        limit: usize,
        request: Option<&RequestData>,
    ) -> UserPermissions {
        let names = &self.names;
        let mut out = UserPermissions::default();
        let tenant_ok = |o: &str| f.tenants.is_empty() || f.tenants.iter().any(|x| x == o);
        let type_ok = |t: &str| f.resource_types.is_empty() || f.resource_types.iter().any(|x| x == t);
        let perms: Vec<(&str, &str)> = self
            .items
            .resource_types
            .iter()
            .filter(|rt| type_ok(&rt.key))
            .flat_map(|rt| {
                self.type_action_names(&rt.key)
                    .into_iter()
                    .map(move |a| (rt.key.as_str(), a))
            })
            .collect();
        let subject = Subject::User(user);
        let mut instances = RoaringBitmap::new();
        for o in self.org_ids() {
            let org = names.orgs.name(o);
            if !tenant_ok(org) {
                continue;
            }
            let mut entry = PermEntry {
                org: org.into(),
                resource: None,
                permissions: Vec::new(),
                roles: Vec::new(),
            };
            for &(t, a) in &perms {
                let q = Query {
                    subject,
                    action: a,
                    resource_type: t,
                    resource_key: None,
                    org: Some(org),
                    group_type: None,
                    request,
                };
                let d = self.decide(&q);
                if d.allow {
                    entry.permissions.push(format!("{t}:{a}"));
                    self.push_role(&mut entry.roles, d.evidence);
                } else if f.resources.is_empty() {
                    instances |= self.list_resources_in(subject, t, a, o, request);
                }
            }
            if !entry.permissions.is_empty() {
                entry.roles.sort();
                out.tenants.push(entry);
            }
        }
        if !f.resources.is_empty() {
            for r in &f.resources {
                if let Some((t, k)) = r.split_once(':')
                    && let Some(id) = self.lookup_res(t, k)
                    && self.instance(id).is_some()
                {
                    instances.insert(id);
                }
            }
        }
        let mut after = after;
        loop {
            let (ids, next) = page_bitmap(&instances, after, limit.saturating_sub(out.instances.len()));
            let last = ids.last().copied();
            for id in ids {
                let Some((t, k, org)) = self.instance_names(id) else {
                    continue;
                };
                if !tenant_ok(org) || !type_ok(t) {
                    continue;
                }
                let mut entry = PermEntry {
                    org: org.into(),
                    resource: Some((t.into(), k.into())),
                    permissions: Vec::new(),
                    roles: Vec::new(),
                };
                for a in self.type_action_names(t) {
                    let d = self.decide(&Query {
                        subject,
                        action: a,
                        resource_type: t,
                        resource_key: Some(k),
                        org: Some(org),
                        group_type: None,
                        request,
                    });
                    if d.allow {
                        entry.permissions.push(format!("{t}:{a}"));
                        self.push_role(&mut entry.roles, d.evidence);
                    }
                }
                if !entry.permissions.is_empty() {
                    entry.roles.sort();
                    out.instances.push(entry);
                }
            }
            // Filtered-out ids do not count against the limit: fill the page or run out.
            match next {
                Some(_) if out.instances.len() < limit && last.is_some() => after = last.map(u64::from),
                other => {
                    out.next_cursor = other;
                    break;
                }
            }
        }
        out
    }

    fn push_role(&self, roles: &mut Vec<String>, e: Evidence) {
        let role = match e {
            Evidence::OrgAssignment { role, .. }
            | Evidence::RoleSubject { role }
            | Evidence::InstanceAssignment { role, .. } => role,
            Evidence::Grant { grant_role, .. } => grant_role,
            Evidence::Rule { .. } | Evidence::None => return,
        };
        if let Some(item) = self.role_item(role)
            && !roles.contains(&item.key)
        {
            roles.push(item.key.clone());
        }
    }
}

/// Per version, for the queries: the reverse of the `parents` links, and the resources that
/// carry grants, per grant org.
#[derive(Debug, Default)]
pub struct QueryAux {
    children: std::collections::HashMap<u32, Vec<u32>>,
    grant_sites: std::collections::HashMap<u32, Vec<u32>>,
}

impl QueryAux {
    fn build(ix: &Index) -> QueryAux {
        let mut aux = QueryAux::default();
        for id in 0..ix.res_count() {
            let Some(rec) = ix.res(id) else { continue };
            if let Some(item) = &rec.item {
                for &p in item.parents.iter() {
                    aux.children.entry(p).or_default().push(id);
                }
            }
            for g in rec.grants {
                let sites = aux.grant_sites.entry(g.org).or_default();
                if sites.last() != Some(&id) {
                    sites.push(id);
                }
            }
        }
        aux
    }

    /// The instances of org `o` whose `ResAnc` (model.md §2) holds one of `sources`.
    fn descendants(&self, ix: &Index, sources: &[u32], o: u32) -> RoaringBitmap {
        let mut seen = RoaringBitmap::new();
        let mut stack: Vec<u32> = Vec::new();
        for &s in sources {
            if seen.insert(s) {
                stack.push(s);
            }
        }
        while let Some(y) = stack.pop() {
            for &c in self.children.get(&y).map_or(&[][..], |v| &v[..]) {
                if ix.instance(c).is_some_and(|i| i.org == o) && seen.insert(c) {
                    stack.push(c);
                }
            }
        }
        seen
    }
}
