//! `explain`: the names behind a decision — the assignment or grant that allowed it, or the
//! step that denied it and why.

use super::{Decision, Evidence, Index, Query, Reason, STAR, Subject};
use crate::model::{RoleAssignment, RoleGrant};
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Explanation {
    /// The step of model.md §2 that decided.
    pub step: u8,
    pub reason: &'static str,
    /// The org the check was made in (after org resolution), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub assignment: Option<RoleAssignment>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grant: Option<RoleGrant>,
    /// The role whose permissions (with `extends`) allowed it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// For a grant: the subject's role through which the grant's role is held.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via_role: Option<String>,
    pub message: String,
}

impl Index {
    fn role_label(&self, role: u32) -> String {
        match self.role_item(role) {
            Some(r) => match &r.org {
                Some(o) => format!("{} (org {o})", r.key),
                None => r.key.clone(),
            },
            None => String::new(),
        }
    }

    /// Names the evidence of `d`, which `decide(q)` returned on this index.
    pub fn explain(&self, q: &Query<'_>, d: &Decision) -> Explanation {
        let names = &self.names;
        let node_type = q.group_type.unwrap_or(q.resource_type);
        let instance = q
            .resource_key
            .and_then(|k| self.lookup_res(node_type, k))
            .filter(|id| self.instance(*id).is_some());
        let org = match q.org {
            Some(o) => Some(o.to_string()),
            None => match instance.and_then(|id| self.instance(id)) {
                Some(item) => Some(names.orgs.name(item.org).to_string()),
                None => Some("default".to_string()),
            },
        };
        let user = match q.subject {
            Subject::User(u) => u,
            Subject::Role(_) => "",
        };
        let mut e = Explanation {
            step: d.reason.step(),
            reason: d.reason.as_str(),
            org: org.clone(),
            assignment: None,
            grant: None,
            role: None,
            via_role: None,
            message: String::new(),
        };
        let org = org.unwrap_or_default();
        match d.evidence {
            Evidence::OrgAssignment { org, role_name, role } => {
                let assignment = RoleAssignment {
                    user: user.into(),
                    role: names.roles.name(role_name).into(),
                    org: names.orgs.name(org).into(),
                    resource: None,
                };
                e.message = format!(
                    "org-wide assignment of `{}` in org `{}` permits {}:{}",
                    assignment.role, assignment.org, q.resource_type, q.action
                );
                e.assignment = Some(assignment);
                e.role = Some(self.role_label(role));
            }
            Evidence::RoleSubject { role } => {
                e.message = format!(
                    "role `{}` permits {}:{}",
                    self.role_label(role),
                    q.resource_type,
                    q.action
                );
                e.role = Some(self.role_label(role));
            }
            Evidence::InstanceAssignment {
                resource,
                org,
                role_name,
                role,
            } => {
                let assignment = RoleAssignment {
                    user: user.into(),
                    role: names.roles.name(role_name).into(),
                    org: names.orgs.name(org).into(),
                    resource: Some(self.res_name(resource)),
                };
                e.message = format!(
                    "assignment of `{}` on `{}` covers the resource and permits {}:{}",
                    assignment.role,
                    self.res_name(resource),
                    q.resource_type,
                    q.action
                );
                e.assignment = Some(assignment);
                e.role = Some(self.role_label(role));
            }
            Evidence::Grant {
                resource,
                org,
                grant_role,
                via,
            } => {
                let rec = self.res(resource);
                let grant = rec.and_then(|r| {
                    r.grants
                        .iter()
                        .find(|g| g.org == org && self.policy.resolve(g.org, g.role) == Some(grant_role))
                });
                let actions = grant.map_or_else(Vec::new, |g| {
                    g.patterns
                        .iter()
                        .map(|&(t, a)| {
                            let t = if t == STAR { "*" } else { names.types.name(t) };
                            let a = if a == STAR { "*" } else { names.actions.name(a) };
                            format!("{t}:{a}")
                        })
                        .collect()
                });
                let grant = RoleGrant {
                    org: names.orgs.name(org).into(),
                    role: grant.map_or("", |g| names.roles.name(g.role)).into(),
                    resource: self.res_name(resource),
                    actions,
                };
                e.message = format!(
                    "grant to `{}` on `{}` covers the resource; the subject holds it through `{}`",
                    grant.role,
                    grant.resource,
                    self.role_label(via)
                );
                e.grant = Some(grant);
                e.role = Some(self.role_label(grant_role));
                e.via_role = Some(self.role_label(via));
            }
            Evidence::None => {
                e.message = match d.reason {
                    Reason::UnknownOrg => format!("org `{org}` is not a known org"),
                    Reason::UnknownResourceType => format!("`{}` is not a known resource type", q.resource_type),
                    Reason::UnknownAction => format!("`{}` is not an action of `{}`", q.action, q.resource_type),
                    Reason::TenantMismatch => format!(
                        "instance `{}:{}` belongs to another org than `{org}`",
                        node_type,
                        q.resource_key.unwrap_or_default()
                    ),
                    _ if instance.is_none() => format!(
                        "no org-wide role in `{org}` or its ancestors permits {}:{} (type-level check: no such instance)",
                        q.resource_type, q.action
                    ),
                    _ => format!(
                        "no org-wide role, instance role or grant permits {}:{} on `{}:{}`",
                        q.resource_type,
                        q.action,
                        node_type,
                        q.resource_key.unwrap_or_default()
                    ),
                };
            }
        }
        e
    }
}
