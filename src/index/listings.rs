//! The listings of model.md §3 that follow roles rather than permissions: roles for a user,
//! users for a role, roles and orgs, role assignments with Permit's filters, menus, and the
//! groups forest.

use super::query::{AssignmentFilter, AssignmentRow, GroupNode, MAX_TREE_NODES, MenuNode, QueryError, RoleInfo};
use super::*;
use std::collections::BTreeSet;

/// A role's perm/v1 id: its own `id` when it has one, else its position in the document plus
/// one (api.md's rule for documents without ids).
pub(super) fn role_id(r: &crate::model::Role, position: usize) -> i32 {
    match r.id {
        Some(id) => i32::try_from(id).unwrap_or(i32::MAX),
        None => i32::try_from(position + 1).unwrap_or(i32::MAX),
    }
}

pub(super) fn role_status(r: &crate::model::Role) -> Option<String> {
    r.attributes.as_ref()?.get("status")?.as_str().map(str::to_owned)
}

impl Index {
    /// **Roles for user**: keys of the roles of `u`'s direct org-wide assignments in `org`
    /// that resolve; with `effective`, `Expand(OrgRoles(u, org))` (ancestor orgs and
    /// `extends`). Sorted, without repeats.
    pub fn roles_for_user(&self, u: &str, org: &str, effective: bool) -> Vec<String> {
        let p = &*self.policy;
        let mut out = BTreeSet::new();
        let (Some(o), Some(rec)) = (self.names.orgs.get(org).filter(|o| p.org_known(*o)), self.user(u)) else {
            return Vec::new();
        };
        for &(org_a, name) in rec.org_roles {
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
            let Some(rec) = self.users.get(uid) else {
                continue;
            };
            let user = names.users.name(uid);
            for &(org, role) in rec.org_roles {
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
            for &(res, org, role) in rec.inst_roles {
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
    pub(super) fn expanded_roles(&self, subject: Subject<'_>, o: u32) -> BTreeSet<u32> {
        let p = &*self.policy;
        let mut held = Vec::new();
        match subject {
            Subject::User(u) => {
                if let Some(rec) = self.user(u) {
                    for &(org_a, name) in rec.org_roles {
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

    pub(super) fn menu_node(
        &self,
        i: usize,
        keep: &[bool],
        parents: &[Option<usize>],
        emitted: &mut [bool],
    ) -> MenuNode {
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
                            resource_key: Some(rec.key),
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
}

pub(super) type NodeNames<'a> = dyn Fn(u32) -> Option<(String, String)> + 'a;

pub(super) struct GroupCtx<'a> {
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
