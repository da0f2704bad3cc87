//! `explain`: the names behind a decision — the assignment or grant that allowed it, or the
//! step that denied it and why.

use super::{CondSite, Decision, Evidence, Index, Query, Reason, STAR, Subject, Tried};
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
    /// The condition that allowed (model.md §5), when one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub condition: Option<ConditionTried>,
    /// Every condition the decision evaluated, in order, with what each gave: for a deny,
    /// why each did not hold.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conditions_tried: Vec<ConditionTried>,
    pub message: String,
}

/// One condition, where it sits and what it evaluated to.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConditionTried {
    /// The item that carries it: `role editor permissions[1] (todo:update)`, `grant ...`,
    /// `rule own-records`.
    pub item: String,
    pub when: String,
    /// `true`, `false` or `error: ...`.
    pub result: String,
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

    /// Where a condition sits, in names, and its source.
    fn cond_site(&self, site: CondSite) -> (String, String) {
        let names = &self.names;
        let p = &*self.policy;
        match site {
            CondSite::Entry(e) => {
                let Some(entry) = p.cond_entries.get(e as usize) else {
                    return (String::new(), String::new());
                };
                let perm = self
                    .role_item(entry.role)
                    .and_then(|r| r.permissions.get(entry.entry))
                    .map(|p| p.permission.clone())
                    .unwrap_or_default();
                (
                    format!(
                        "role {} permissions[{}] ({perm})",
                        self.role_label(entry.role),
                        entry.entry
                    ),
                    entry.cond.source().to_owned(),
                )
            }
            CondSite::Grant { resource, org, role } => {
                let when = self
                    .res(resource)
                    .and_then(|r| r.grants.iter().find(|g| g.org == org && g.role == role))
                    .and_then(|g| g.when.as_ref())
                    .map(|c| c.source().to_owned())
                    .unwrap_or_default();
                (
                    format!(
                        "grant to {} on {} in org {}",
                        names.roles.name(role),
                        self.res_name(resource),
                        names.orgs.name(org)
                    ),
                    when,
                )
            }
            CondSite::Rule(i) => match p.rules.get(i as usize) {
                Some(rule) => {
                    let key = self.items.rules.get(rule.item).map_or("", |r| r.key.as_str());
                    (format!("rule {key}"), rule.cond.source().to_owned())
                }
                None => (String::new(), String::new()),
            },
        }
    }

    fn tried(&self, t: &Tried) -> ConditionTried {
        let (item, when) = self.cond_site(t.site);
        ConditionTried {
            item,
            when,
            result: t.outcome.describe(),
        }
    }

    /// Names the evidence of `d`, which `decide(q)` returned on this index, with the
    /// conditions it evaluated (decided again, tracing them).
    pub fn explain(&self, q: &Query<'_>, d: &Decision) -> Explanation {
        let mut trace = Vec::new();
        if self.has_conditions() {
            self.decide_traced(q, Some(&mut trace));
        }
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
            condition: None,
            conditions_tried: trace.iter().map(|t| self.tried(t)).collect(),
            message: String::new(),
        };
        if let Some(site) = d.condition {
            let (item, when) = self.cond_site(site);
            e.condition = Some(ConditionTried {
                item,
                when,
                result: "true".into(),
            });
        }
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
                    when: grant.and_then(|g| g.when.as_ref()).map(|c| c.source().to_owned()),
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
            Evidence::Rule { rule } => {
                let (item, when) = self.cond_site(CondSite::Rule(rule));
                e.message = format!(
                    "{item} permits {}:{} and its condition `{when}` holds",
                    q.resource_type, q.action
                );
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
