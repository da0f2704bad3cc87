//! What an index says about itself: the ignored-items report, the document it holds
//! (`to_snapshot`), role items by id and counts per kind.

use super::*;
use crate::model;

impl Index {
    /// The items that can grant nothing, computed once per version on first use.
    pub fn ignored(&self) -> Arc<Vec<Ignored>> {
        self.ignored.get_or_init(|| Arc::new(self.compute_ignored())).clone()
    }

    pub(super) fn compute_ignored(&self) -> Vec<Ignored> {
        let p = &*self.policy;
        let names = &self.names;
        let mut out = p.ignored.clone();
        let org_name = |o: u32| names.orgs.name(o).to_string();
        let role_name = |r: u32| names.roles.name(r).to_string();
        for id in 0..self.res_count() {
            let Some(rec) = self.res(id) else { continue };
            let who = || format!("resource={}", self.res_name(id));
            if let Some(item) = &rec.item {
                if !p.type_known(rec.resource_type) {
                    out.push(Ignored::new(
                        "resource",
                        who(),
                        "type is not a known resource type".into(),
                    ));
                } else if !p.org_known(item.org) {
                    out.push(Ignored::new(
                        "resource",
                        who(),
                        format!("org `{}` is not a known org", org_name(item.org)),
                    ));
                } else {
                    for &parent in item.parents.iter() {
                        let why = match self.instance(parent) {
                            None => "is not a known instance",
                            Some(pi) if pi.org != item.org => "is in another org",
                            Some(_) => continue,
                        };
                        out.push(Ignored::new(
                            "resource",
                            who(),
                            format!("parent `{}` {why}", self.res_name(parent)),
                        ));
                    }
                }
            }
            let target = self.instance(id);
            for g in rec.grants {
                let item = format!(
                    "org={} role={} resource={}",
                    org_name(g.org),
                    role_name(g.role),
                    self.res_name(id)
                );
                let why = if !p.org_known(g.org) {
                    Some("org is not a known org".to_string())
                } else if p.resolve(g.org, g.role).is_none() {
                    Some("role does not resolve in its org".to_string())
                } else {
                    match target {
                        None => Some("resource is not a known instance".to_string()),
                        Some(t) if t.org != g.org => Some("resource is in another org".to_string()),
                        Some(_) => None,
                    }
                };
                if let Some(why) = why {
                    out.push(Ignored::new("role_grant", item, why));
                }
                for &(t, a) in g.patterns.iter() {
                    let known = match (t, a) {
                        (STAR, STAR) => true,
                        (STAR, a) => p.perms.iter().any(|(_, x)| *x == a),
                        (t, STAR) => p.type_known(t),
                        (t, a) => p.perm(t, a).is_some(),
                    };
                    if !known {
                        out.push(Ignored::new(
                            "role_grant",
                            format!(
                                "org={} role={} resource={}",
                                org_name(g.org),
                                role_name(g.role),
                                self.res_name(id)
                            ),
                            "an action pattern names an unknown type or action".into(),
                        ));
                    }
                }
            }
        }
        for (uid, rec) in self.users.iter().enumerate() {
            let user = names.users.name(uid as u32);
            for &(org, role) in rec.org_roles {
                let why = if !p.org_known(org) {
                    "org is not a known org"
                } else if p.resolve(org, role).is_none() {
                    "role does not resolve in its org"
                } else {
                    continue;
                };
                out.push(Ignored::new(
                    "role_assignment",
                    format!("user={user} role={} org={}", role_name(role), org_name(org)),
                    why.into(),
                ));
            }
            for &(res, org, role) in rec.inst_roles {
                let why = if !p.org_known(org) {
                    "org is not a known org"
                } else if p.resolve(org, role).is_none() {
                    "role does not resolve in its org"
                } else {
                    match self.instance(res) {
                        None => "resource is not a known instance",
                        Some(i) if i.org != org => "resource is in another org",
                        Some(_) => continue,
                    }
                };
                out.push(Ignored::new(
                    "role_assignment",
                    format!(
                        "user={user} role={} org={} resource={}",
                        role_name(role),
                        org_name(org),
                        self.res_name(res)
                    ),
                    why.into(),
                ));
            }
        }
        out
    }

    /// The document this index holds. Orgs, resource types, roles and menus keep document
    /// order; the other kinds come in id order.
    pub fn to_snapshot(&self) -> Snapshot {
        let names = &self.names;
        let pattern = |(t, a): (u32, u32)| {
            let t = if t == STAR { "*" } else { names.types.name(t) };
            let a = if a == STAR { "*" } else { names.actions.name(a) };
            format!("{t}:{a}")
        };
        let mut s = Snapshot {
            format: 1,
            version: self.version,
            orgs: self.items.orgs.clone(),
            resource_types: self.items.resource_types.clone(),
            roles: self.items.roles.clone(),
            menus: self.items.menus.clone(),
            rules: self.items.rules.clone(),
            url_mappings: self.urls.items.clone(),
            ..Snapshot::default()
        };
        for (uid, rec) in self.users.iter().enumerate() {
            let user = names.users.name(uid as u32);
            if rec.listed {
                s.users.push(match self.user_meta(uid as u32) {
                    Some(meta) => meta.clone(),
                    None => User {
                        key: user.into(),
                        email: None,
                        first_name: None,
                        last_name: None,
                        attributes: None,
                    },
                });
            }
            for &(org, role) in rec.org_roles {
                s.role_assignments.push(RoleAssignment {
                    user: user.into(),
                    role: names.roles.name(role).into(),
                    org: names.orgs.name(org).into(),
                    resource: None,
                });
            }
            for &(res, org, role) in rec.inst_roles {
                s.role_assignments.push(RoleAssignment {
                    user: user.into(),
                    role: names.roles.name(role).into(),
                    org: names.orgs.name(org).into(),
                    resource: Some(self.res_name(res)),
                });
            }
        }
        for id in 0..self.res_count() {
            let Some(rec) = self.res(id) else { continue };
            if let Some(item) = &rec.item {
                s.resources.push(model::Resource {
                    resource_type: names.types.name(rec.resource_type).into(),
                    key: rec.key.to_string(),
                    org: names.orgs.name(item.org).into(),
                    parents: item.parents.iter().map(|p| self.res_name(*p)).collect(),
                    attributes: item.attributes.cloned(),
                });
            }
            for g in rec.grants {
                s.role_grants.push(RoleGrant {
                    org: names.orgs.name(g.org).into(),
                    role: names.roles.name(g.role).into(),
                    resource: self.res_name(id),
                    actions: g.patterns.iter().map(|p| pattern(*p)).collect(),
                    when: g.when.as_ref().map(|c| c.source().to_owned()),
                });
            }
        }
        s
    }

    /// The role item of a compiled role id.
    pub fn role_item(&self, role: u32) -> Option<&Role> {
        let compiled = self.policy.roles.get(role as usize)?;
        self.items.roles.get(compiled.item)
    }

    /// Item counts per kind name, for status pages and metrics.
    pub fn counts_by_kind(&self) -> [(Kind, usize); 10] {
        let c = self.counts;
        [
            (Kind::Org, c.orgs),
            (Kind::ResourceType, c.resource_types),
            (Kind::Role, c.roles),
            (Kind::User, c.users),
            (Kind::Resource, c.resources),
            (Kind::RoleAssignment, c.role_assignments),
            (Kind::RoleGrant, c.role_grants),
            (Kind::Menu, c.menus),
            (Kind::Rule, c.rules),
            (Kind::UrlMapping, c.url_mappings),
        ]
    }
}
