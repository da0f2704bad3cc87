//! The queries of model.md §3, answered from the roaring bitmaps: candidates come from the
//! bitmaps (instances per (org, type), users per (org, role)), an org-wide permit answers a
//! whole bitmap at once, and whatever is left is filtered exactly with `decide()`, so every
//! answer agrees with §2 element by element. Pure and synchronous, like the rest of the index.
//! Paging is by id (or by position for the small policy lists): an opaque cursor names the
//! last element given, so a page never repeats or skips an element of the same version.

use super::{Evidence, Query};
use super::{Index, STAR, Subject};
use crate::cond::{Condition, RequestData, ResourceView, Scope};
use roaring::RoaringBitmap;
use serde::Serialize;
use std::collections::BTreeSet;
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

/// A role's perm/v1 id: its own `id` when it has one, else its position in the document plus
/// one (api.md's rule for documents without ids).
fn role_id(r: &crate::model::Role, position: usize) -> i32 {
    match r.id {
        Some(id) => i32::try_from(id).unwrap_or(i32::MAX),
        None => i32::try_from(position + 1).unwrap_or(i32::MAX),
    }
}

fn role_status(r: &crate::model::Role) -> Option<String> {
    r.attributes.as_ref()?.get("status")?.as_str().map(str::to_owned)
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
    fn org_ids(&self) -> impl Iterator<Item = u32> + '_ {
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
            &rec.key,
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

    /// The conditions that could allow `subject` `perm` across org `o` where the unconditional
    /// data does not. Those that read only the resource and hold for the whole org (a rule
    /// for `perm` in `OrgAnc(o)`, a conditional entry on an org-wide role the subject holds
    /// there) are returned; any other (a conditional entry on an instance role, a grant with
    /// a `when`, a condition reading more than the resource) sets the flag: each candidate
    /// must then be decided.
    fn conditions_for(&self, subject: Subject<'_>, perm: u32, o: u32) -> (Vec<Arc<Condition>>, bool) {
        let p = &*self.policy;
        let mut whole = Vec::new();
        let mut others = self.conditional_grants();
        if !p.conditional() {
            return (whole, others);
        }
        let anc = p.org_anc(o);
        // A resource-only condition joins `whole`; any other says so (true).
        let take = |c: &Arc<Condition>, whole: &mut Vec<Arc<Condition>>| -> bool {
            if c.uses().resource_only() {
                whole.push(c.clone());
                false
            } else {
                true
            }
        };
        let mut org_wide: Vec<u32> = Vec::new();
        match subject {
            Subject::User(u) => {
                for r in &p.rules {
                    if r.perms.binary_search(&perm).is_ok() && r.org.is_none_or(|org| anc.binary_search(&org).is_ok()) {
                        others |= take(&r.cond, &mut whole);
                    }
                }
                if let Some(rec) = self.user(u) {
                    org_wide.extend(
                        rec.org_roles
                            .iter()
                            .filter(|(org_a, _)| anc.binary_search(org_a).is_ok())
                            .filter_map(|&(org_a, name)| p.resolve(org_a, name)),
                    );
                    let inst = rec
                        .inst_roles
                        .iter()
                        .filter(|(_, org_a, _)| *org_a == o)
                        .filter_map(|&(_, org_a, name)| p.resolve(org_a, name));
                    for r in inst {
                        if p.may_permit_when(r, perm) {
                            others = true;
                        }
                    }
                }
            }
            Subject::Role(r) => org_wide.extend(self.names.roles.get(r).and_then(|n| p.resolve(o, n))),
        }
        for role in org_wide {
            for e in p.cond_entries_for(role, perm) {
                if let Some(entry) = p.cond_entries.get(e as usize) {
                    others |= take(&entry.cond, &mut whole);
                }
            }
        }
        (whole, others)
    }

    /// The instances of type `t` (every org) for which a resource-only condition holds with
    /// no request data: evaluated once per version and condition, then shared.
    fn cond_holds(&self, c: &Arc<Condition>, t: u32) -> Arc<RoaringBitmap> {
        let key = (Arc::as_ptr(c) as usize, t);
        if let Ok(cache) = self.cond_holds.lock()
            && let Some(b) = cache.get(&key)
        {
            return b.clone();
        }
        let mut holds = RoaringBitmap::new();
        for o in self.org_ids() {
            let Some(ids) = self.org_type_res.get(&(o, t)) else {
                continue;
            };
            let org = self.names.orgs.name(o);
            for id in ids.iter() {
                let Some(rec) = self.res(id) else { continue };
                let scope = Scope {
                    resource: ResourceView {
                        resource_type: self.names.types.name(t),
                        key: &rec.key,
                        org,
                        stored: rec.item.as_ref().and_then(|i| i.attributes.as_deref()),
                        request: None,
                    },
                    ..Scope::default()
                };
                if c.eval(&scope).holds() {
                    holds.insert(id);
                }
            }
        }
        let holds = Arc::new(holds);
        if let Ok(mut cache) = self.cond_holds.lock() {
            cache.insert(key, holds.clone());
        }
        holds
    }

    /// Adds to `out` the `candidates` that conditions allow: through the per-version bitmaps
    /// of resource-only conditions when the request lets them apply, else by deciding each.
    #[allow(clippy::too_many_arguments)]
    fn add_conditional(
        &self,
        out: &mut RoaringBitmap,
        candidates: &RoaringBitmap,
        subject: Subject<'_>,
        a: &str,
        perm: u32,
        tid: u32,
        o: u32,
        request: Option<&RequestData>,
    ) {
        let (whole, others) = self.conditions_for(subject, perm, o);
        let stored_only = request.is_none_or(|r| r.resource.as_ref().is_none_or(|m| m.is_empty()));
        if !others && stored_only {
            for c in &whole {
                *out |= candidates & &*self.cond_holds(c, tid);
            }
        } else if others || !whole.is_empty() {
            self.add_decided(out, candidates, subject, a, o, request);
        }
    }

    /// The instances of `candidates` not in `allowed` that `decide` allows, added to it.
    fn add_decided(
        &self,
        allowed: &mut RoaringBitmap,
        candidates: &RoaringBitmap,
        subject: Subject<'_>,
        a: &str,
        o: u32,
        request: Option<&RequestData>,
    ) {
        let org = self.names.orgs.name(o);
        for id in candidates.iter() {
            if allowed.contains(id) {
                continue;
            }
            let Some(rec) = self.res(id) else { continue };
            let q = Query {
                subject,
                action: a,
                resource_type: self.names.types.name(rec.resource_type),
                resource_key: Some(&rec.key),
                org: Some(org),
                group_type: None,
                request,
            };
            if self.decide(&q).allow {
                allowed.insert(id);
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
                    for &(org_a, name) in &rec.org_roles {
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
            for &(res, org_a, name) in &rec.inst_roles {
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
            let Some(rec) = self.res(y) else { continue };
            for &(uid, org_a, _) in &rec.holders {
                if org_a == o {
                    candidates.insert(uid);
                }
            }
            for g in &rec.grants {
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
    fn holders_of(&self, o: u32, role: u32) -> RoaringBitmap {
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

    /// **Roles for user**: keys of the roles of `u`'s direct org-wide assignments in `org`
    /// that resolve; with `effective`, `Expand(OrgRoles(u, org))` (ancestor orgs and
    /// `extends`). Sorted, without repeats.
    pub fn roles_for_user(&self, u: &str, org: &str, effective: bool) -> Vec<String> {
        let p = &*self.policy;
        let mut out = BTreeSet::new();
        let (Some(o), Some(rec)) = (self.names.orgs.get(org).filter(|o| p.org_known(*o)), self.user(u)) else {
            return Vec::new();
        };
        for &(org_a, name) in &rec.org_roles {
            let inside = if effective {
                p.org_anc(o).binary_search(&org_a).is_ok()
            } else {
                org_a == o
            };
            let Some(role) = p.resolve(org_a, name).filter(|_| inside) else {
                continue;
            };
            if effective {
                for &r in p.expand(role) {
                    if let Some(c) = p.roles.get(r as usize) {
                        out.insert(self.names.roles.name(c.name).to_string());
                    }
                }
            } else {
                out.insert(self.names.roles.name(name).to_string());
            }
        }
        out.into_iter().collect()
    }

    /// **Users for role**: ids of the users with a direct org-wide assignment of `role` in
    /// `org`; with `effective`, every user whose `Expand(OrgRoles(u, org))` holds the role.
    /// Without a role: every user with an org-wide assignment in `org` (with `effective`,
    /// in `OrgAnc(org)`) of a role that resolves. A role that does not resolve in `org` is
    /// an error.
    pub fn users_for_role(&self, role: Option<&str>, org: &str, effective: bool) -> Result<RoaringBitmap, QueryError> {
        let p = &*self.policy;
        let names = &self.names;
        let o = names.orgs.get(org).filter(|o| p.org_known(*o));
        let Some(role) = role else {
            let mut out = RoaringBitmap::new();
            let Some(o) = o else { return Ok(out) };
            let orgs: Vec<u32> = if effective { p.org_anc(o).to_vec() } else { vec![o] };
            for org_a in orgs {
                for name in 0..names.roles.len() as u32 {
                    if p.resolve(org_a, name).is_some()
                        && let Some(b) = self.org_role_users.get(&(org_a, name))
                    {
                        out |= &**b;
                    }
                }
            }
            return Ok(out);
        };
        let not_found = || QueryError::RoleNotFound {
            role: role.into(),
            org: org.into(),
        };
        let o = o.ok_or_else(not_found)?;
        let name = names.roles.get(role).ok_or_else(not_found)?;
        let resolved = p.resolve(o, name).ok_or_else(not_found)?;
        if effective {
            return Ok(self.holders_of(o, resolved));
        }
        Ok(self
            .org_role_users
            .get(&(o, name))
            .map(|b| (**b).clone())
            .unwrap_or_default())
    }

    /// **Roles**: with an org, the roles usable in it (global ones and those scoped to it);
    /// without, every role. Document order.
    pub fn list_roles(&self, org: Option<&str>) -> Vec<RoleInfo> {
        self.items
            .roles
            .iter()
            .enumerate()
            .filter(|(_, r)| org.is_none_or(|o| r.org.as_deref().is_none_or(|ro| ro == o)))
            .map(|(i, r)| RoleInfo {
                id: role_id(r, i),
                key: r.key.clone(),
                org: r.org.clone(),
                name: r.name.clone(),
                status: role_status(r),
            })
            .collect()
    }

    /// The role with perm/v1 id `id` (see `RoleInfo::id`).
    pub fn role_by_id(&self, id: i32) -> Option<RoleInfo> {
        let wanted = u32::try_from(id).ok()?;
        let by_id = self.items.roles.iter().find(|r| r.id == Some(wanted));
        let r = match by_id {
            Some(r) => r,
            None => {
                let i = usize::try_from(id).ok()?.checked_sub(1)?;
                self.items.roles.get(i).filter(|r| r.id.is_none())?
            }
        };
        Some(RoleInfo {
            id,
            key: r.key.clone(),
            org: r.org.clone(),
            name: r.name.clone(),
            status: role_status(r),
        })
    }

    /// Org keys in document order.
    pub fn list_orgs(&self) -> Vec<&str> {
        self.items.orgs.iter().map(|o| o.key.as_str()).collect()
    }

    /// **Role assignments** as the document has them, filtered, in user-id order: `skip`
    /// rows left out, then up to `take`; the flag says whether more rows follow.
    pub fn role_assignments(&self, f: &AssignmentFilter, skip: usize, take: usize) -> (Vec<AssignmentRow>, bool) {
        let names = &self.names;
        let ok = |list: &[String], v: &str| list.is_empty() || list.iter().any(|x| x == v);
        let mut seen = 0usize;
        let mut out = Vec::new();
        let uids: Vec<u32> = if f.users.is_empty() {
            (0..self.users.len() as u32).collect()
        } else {
            let mut v: Vec<u32> = f.users.iter().filter_map(|u| names.users.get(u)).collect();
            v.sort_unstable();
            v.dedup();
            v
        };
        let mut push = |row: AssignmentRow| -> bool {
            seen += 1;
            if seen > skip {
                if out.len() == take {
                    return false;
                }
                out.push(row);
            }
            true
        };
        for uid in uids {
            let Some(rec) = self.users.get(uid as usize) else {
                continue;
            };
            let user = names.users.name(uid);
            for &(org, role) in &rec.org_roles {
                let (org, role) = (names.orgs.name(org), names.roles.name(role));
                if ok(&f.roles, role)
                    && ok(&f.tenants, org)
                    && f.resources.is_empty()
                    && f.resource_instances.is_empty()
                    && !push(AssignmentRow {
                        user: user.into(),
                        role: role.into(),
                        tenant: org.into(),
                        resource_instance: None,
                    })
                {
                    return (out, true);
                }
            }
            for &(res, org, role) in &rec.inst_roles {
                let (org, role) = (names.orgs.name(org), names.roles.name(role));
                let Some(r) = self.res(res) else { continue };
                let rtype = names.types.name(r.resource_type);
                let inst = format!("{rtype}:{}", r.key);
                if ok(&f.roles, role)
                    && ok(&f.tenants, org)
                    && ok(&f.resources, rtype)
                    && ok(&f.resource_instances, &inst)
                    && !push(AssignmentRow {
                        user: user.into(),
                        role: role.into(),
                        tenant: org.into(),
                        resource_instance: Some(inst),
                    })
                {
                    return (out, true);
                }
            }
        }
        (out, false)
    }

    /// The roles `Expand(OrgRoles(subject, o))`, as compiled role ids.
    fn expanded_roles(&self, subject: Subject<'_>, o: u32) -> BTreeSet<u32> {
        let p = &*self.policy;
        let mut held = Vec::new();
        match subject {
            Subject::User(u) => {
                if let Some(rec) = self.user(u) {
                    for &(org_a, name) in &rec.org_roles {
                        if p.org_anc(o).binary_search(&org_a).is_ok()
                            && let Some(r) = p.resolve(org_a, name)
                        {
                            held.push(r);
                        }
                    }
                }
            }
            Subject::Role(r) => {
                if let Some(r) = self.names.roles.get(r).and_then(|n| p.resolve(o, n)) {
                    held.push(r);
                }
            }
        }
        held.iter().flat_map(|&h| p.expand(h).iter().copied()).collect()
    }

    /// **Menus**: the items of `platform` (every platform when `None`) whose code is among
    /// the `menus` of a role in `Expand(OrgRoles(subject, org))`, with every ancestor item,
    /// as a tree in document order. Without a subject: every item.
    pub fn menus(&self, subject: Option<Subject<'_>>, org: &str, platform: Option<&str>) -> Vec<MenuNode> {
        let menus = &self.items.menus;
        let on_platform = |i: usize| menus.get(i).is_some_and(|m| platform.is_none_or(|pl| m.platform == pl));
        let parent_of = |i: usize| -> Option<usize> {
            let m = menus.get(i)?;
            let parent = m.parent.as_deref()?;
            menus.iter().position(|x| x.platform == m.platform && x.code == parent)
        };
        let mut keep = vec![false; menus.len()];
        match subject {
            None => {
                for (i, k) in keep.iter_mut().enumerate() {
                    *k = on_platform(i);
                }
            }
            Some(s) => {
                let Some(o) = self.names.orgs.get(org).filter(|o| self.policy.org_known(*o)) else {
                    return Vec::new();
                };
                let mut codes: BTreeSet<&str> = BTreeSet::new();
                for r in self.expanded_roles(s, o) {
                    if let Some(item) = self.role_item(r) {
                        codes.extend(item.menus.iter().map(String::as_str));
                    }
                }
                for i in 0..menus.len() {
                    if !on_platform(i) || !menus.get(i).is_some_and(|m| codes.contains(m.code.as_str())) {
                        continue;
                    }
                    // The item and its ancestors; a cycle stops where it meets a kept item.
                    let mut cur = Some(i);
                    while let Some(c) = cur {
                        if keep.get(c).copied().unwrap_or(true) {
                            break;
                        }
                        if let Some(k) = keep.get_mut(c) {
                            *k = true;
                        }
                        cur = parent_of(c);
                    }
                }
            }
        }
        let parents: Vec<Option<usize>> = (0..menus.len())
            .map(|i| parent_of(i).filter(|p| keep.get(*p).copied().unwrap_or(false)))
            .collect();
        let mut emitted = vec![false; menus.len()];
        let mut roots = Vec::new();
        let root_ids: Vec<usize> = (0..menus.len())
            .filter(|&i| keep.get(i).copied().unwrap_or(false) && parents.get(i).copied().flatten().is_none())
            .collect();
        for i in root_ids {
            roots.push(self.menu_node(i, &keep, &parents, &mut emitted));
        }
        // Items on a parent cycle have no root: each cycle hangs from its first item.
        for i in 0..menus.len() {
            if keep.get(i).copied().unwrap_or(false) && !emitted.get(i).copied().unwrap_or(true) {
                roots.push(self.menu_node(i, &keep, &parents, &mut emitted));
            }
        }
        roots
    }

    fn menu_node(&self, i: usize, keep: &[bool], parents: &[Option<usize>], emitted: &mut [bool]) -> MenuNode {
        if let Some(e) = emitted.get_mut(i) {
            *e = true;
        }
        let m = self.items.menus.get(i);
        let kids: Vec<usize> = (0..keep.len())
            .filter(|&c| {
                keep.get(c).copied().unwrap_or(false)
                    && parents.get(c).copied().flatten() == Some(i)
                    && !emitted.get(c).copied().unwrap_or(true)
            })
            .collect();
        let mut children = Vec::new();
        for c in kids {
            if !emitted.get(c).copied().unwrap_or(true) {
                children.push(self.menu_node(c, keep, parents, emitted));
            }
        }
        MenuNode {
            platform: m.map(|m| m.platform.clone()).unwrap_or_default(),
            code: m.map(|m| m.code.clone()).unwrap_or_default(),
            name: m.and_then(|m| m.name.clone()).unwrap_or_default(),
            children,
        }
    }

    /// **Groups**: the instances of `org` that contain other instances (they are a parent of
    /// one) at which §2 allows `subject` to `a` on type `t` (a check made at the node, as
    /// perm/v1 `group_type` does), as the forest of `parents` links. Each node lists the
    /// allowed actions of `t` there, and the keys of the `t` instances directly below it that
    /// are allowed too. Without a subject: every containing instance and every `t` instance
    /// below it. At most `MAX_TREE_NODES` nodes; the flag says whether the forest was cut.
    pub fn groups(&self, subject: Option<Subject<'_>>, t: &str, a: &str, org: &str) -> (Vec<GroupNode>, bool) {
        let p = &*self.policy;
        let names = &self.names;
        let Some(o) = names.orgs.get(org).filter(|o| p.org_known(*o)) else {
            return (Vec::new(), false);
        };
        if subject.is_some() && names.types.get(t).filter(|x| p.type_known(*x)).is_none() {
            return (Vec::new(), false);
        }
        // Every instance of the org, and the valid parent links among them.
        let mut all = RoaringBitmap::new();
        for tid in 0..names.types.len() as u32 {
            if let Some(b) = self.org_type_res.get(&(o, tid)) {
                all |= &**b;
            }
        }
        let mut parents_of: std::collections::BTreeMap<u32, Vec<u32>> = std::collections::BTreeMap::new();
        let mut containers = RoaringBitmap::new();
        for id in all.iter() {
            let Some(item) = self.instance(id) else { continue };
            for &parent in item.parents.iter() {
                if all.contains(parent) && self.instance(parent).is_some() {
                    containers.insert(parent);
                    let e = parents_of.entry(id).or_default();
                    if !e.contains(&parent) {
                        e.push(parent);
                    }
                }
            }
        }
        let node_query = |id: u32| -> Option<(String, String)> {
            let rec = self.res(id)?;
            Some((names.types.name(rec.resource_type).to_string(), rec.key.to_string()))
        };
        // The included nodes with their actions.
        let mut acts: std::collections::HashMap<u32, Vec<String>> = std::collections::HashMap::new();
        for n in containers.iter() {
            let Some((gt, gk)) = node_query(n) else { continue };
            match subject {
                None => {
                    acts.insert(n, Vec::new());
                }
                Some(s) => {
                    let q = Query {
                        subject: s,
                        action: a,
                        resource_type: t,
                        resource_key: Some(&gk),
                        org: Some(org),
                        group_type: Some(&gt),
                        request: None,
                    };
                    if self.decide(&q).allow {
                        let allowed = self.allowed_actions(&q).into_iter().map(String::from).collect();
                        acts.insert(n, allowed);
                    }
                }
            }
        }
        let mut children: std::collections::BTreeMap<u32, Vec<u32>> = std::collections::BTreeMap::new();
        let mut resources: std::collections::BTreeMap<u32, Vec<String>> = std::collections::BTreeMap::new();
        let mut has_parent = RoaringBitmap::new();
        for (&id, ps) in &parents_of {
            let Some(rec) = self.res(id) else { continue };
            let child_is_t = names.types.name(rec.resource_type) == t;
            let child_ok = child_is_t
                && match subject {
                    None => true,
                    Some(s) => {
                        self.decide(&Query {
                            subject: s,
                            action: a,
                            resource_type: t,
                            resource_key: Some(&rec.key),
                            org: Some(org),
                            group_type: None,
                            request: None,
                        })
                        .allow
                    }
                };
            for &parent in ps {
                if !acts.contains_key(&parent) {
                    continue;
                }
                if child_ok {
                    resources.entry(parent).or_default().push(rec.key.to_string());
                }
                if acts.contains_key(&id) {
                    children.entry(parent).or_default().push(id);
                    has_parent.insert(id);
                }
            }
        }
        for v in children.values_mut() {
            v.sort_unstable();
        }
        let mut ids: Vec<u32> = acts.keys().copied().collect();
        ids.sort_unstable();
        let mut budget = MAX_TREE_NODES;
        let mut truncated = false;
        let mut emitted = RoaringBitmap::new();
        let mut out = Vec::new();
        let ctx = GroupCtx {
            children: &children,
            resources: &resources,
            acts: &acts,
            node_names: &node_query,
        };
        let roots: Vec<u32> = ids.iter().copied().filter(|i| !has_parent.contains(*i)).collect();
        let rest: Vec<u32> = ids.iter().copied().filter(|i| has_parent.contains(*i)).collect();
        for r in roots {
            if let Some(node) = ctx.node(r, &mut Vec::new(), &mut budget, &mut truncated, &mut emitted) {
                out.push(node);
            }
        }
        // Nodes on a parent cycle with no root above them hang from their lowest id.
        for r in rest {
            if !emitted.contains(r)
                && let Some(node) = ctx.node(r, &mut Vec::new(), &mut budget, &mut truncated, &mut emitted)
            {
                out.push(node);
            }
        }
        (out, truncated)
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
        for (id, rec) in ix.resources.iter().enumerate() {
            let Some(rec) = rec else { continue };
            let id = id as u32;
            if let Some(item) = &rec.item {
                for &p in item.parents.iter() {
                    aux.children.entry(p).or_default().push(id);
                }
            }
            for g in &rec.grants {
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

type NodeNames<'a> = dyn Fn(u32) -> Option<(String, String)> + 'a;

struct GroupCtx<'a> {
    children: &'a std::collections::BTreeMap<u32, Vec<u32>>,
    resources: &'a std::collections::BTreeMap<u32, Vec<String>>,
    acts: &'a std::collections::HashMap<u32, Vec<String>>,
    node_names: &'a NodeNames<'a>,
}

impl GroupCtx<'_> {
    /// The subtree at `id`; a node already on the path (a cycle) is not entered again.
    fn node(
        &self,
        id: u32,
        path: &mut Vec<u32>,
        budget: &mut usize,
        truncated: &mut bool,
        emitted: &mut RoaringBitmap,
    ) -> Option<GroupNode> {
        if *budget == 0 {
            *truncated = true;
            return None;
        }
        *budget -= 1;
        emitted.insert(id);
        let (group_type, group_id) = (self.node_names)(id)?;
        path.push(id);
        let mut children = Vec::new();
        for &c in self.children.get(&id).map_or(&[][..], |v| &v[..]) {
            if path.contains(&c) {
                continue;
            }
            if let Some(n) = self.node(c, path, budget, truncated, emitted) {
                children.push(n);
            }
        }
        path.pop();
        Some(GroupNode {
            group_type,
            group_id,
            resources: self.resources.get(&id).cloned().unwrap_or_default(),
            acts: self.acts.get(&id).cloned().unwrap_or_default(),
            children,
        })
    }
}
