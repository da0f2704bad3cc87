//! `decide()`: model.md §2, step by step, with the evidence for `explain`. Allocation-free
//! for trees of ordinary depth; the walk up `parents` is bounded by the number of instances.

use super::{Index, NONE, ResHot, STAR, UserRec};
use crate::cond::{Condition, OrgView, Outcome, RequestData, ResourceView, Scope, UserView};
use roaring::RoaringBitmap;
use serde::Serialize;
use smallvec::SmallVec;

/// Who is asking: a user key, or (perm/v1 `role_id`) a role key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject<'a> {
    User(&'a str),
    Role(&'a str),
}

/// One check: may `subject` do `action` on (`resource_type`, `resource_key`) in `org`?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Query<'a> {
    pub subject: Subject<'a>,
    pub action: &'a str,
    pub resource_type: &'a str,
    /// Absent: a type-level check.
    pub resource_key: Option<&'a str>,
    /// Absent: the instance's org, else `default`.
    pub org: Option<&'a str>,
    /// perm/v1 `group_type`: the check is made at the node (`group_type`, `resource_key`).
    pub group_type: Option<&'a str>,
    /// What conditions see beyond the stored data: request attributes, context, time.
    pub request: Option<&'a RequestData>,
}

/// The reason strings of model.md §2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    OrgRole,
    ResourceRole,
    RoleGrant,
    AttributeRule,
    UnknownOrg,
    UnknownResourceType,
    UnknownAction,
    TenantMismatch,
    NoMatchingGrant,
}

impl Reason {
    pub const ALL: [Reason; 9] = [
        Reason::OrgRole,
        Reason::ResourceRole,
        Reason::RoleGrant,
        Reason::AttributeRule,
        Reason::UnknownOrg,
        Reason::UnknownResourceType,
        Reason::UnknownAction,
        Reason::TenantMismatch,
        Reason::NoMatchingGrant,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::OrgRole => "org_role",
            Reason::ResourceRole => "resource_role",
            Reason::RoleGrant => "role_grant",
            Reason::AttributeRule => "attribute_rule",
            Reason::UnknownOrg => "unknown_org",
            Reason::UnknownResourceType => "unknown_resource_type",
            Reason::UnknownAction => "unknown_action",
            Reason::TenantMismatch => "tenant_mismatch",
            Reason::NoMatchingGrant => "no_matching_grant",
        }
    }

    pub fn allows(self) -> bool {
        matches!(
            self,
            Reason::OrgRole | Reason::ResourceRole | Reason::RoleGrant | Reason::AttributeRule
        )
    }

    /// The step of model.md §2 that gives this reason.
    pub fn step(self) -> u8 {
        match self {
            Reason::UnknownOrg => 1,
            Reason::UnknownResourceType | Reason::UnknownAction => 2,
            Reason::TenantMismatch => 3,
            Reason::OrgRole => 4,
            Reason::ResourceRole => 5,
            Reason::RoleGrant => 6,
            // model.md §5 step 6b
            Reason::AttributeRule => 6,
            Reason::NoMatchingGrant => 7,
        }
    }
}

/// What made the decision, in ids; `Index::explain` turns it into names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evidence {
    /// A deny: the step is the reason's.
    None,
    /// Step 4 for a user: the org-wide assignment (org id, role-name id) and the resolved role.
    OrgAssignment { org: u32, role_name: u32, role: u32 },
    /// Step 4 for a role subject: the resolved role.
    RoleSubject { role: u32 },
    /// Step 5: the instance assignment on resource `resource`.
    InstanceAssignment {
        resource: u32,
        org: u32,
        role_name: u32,
        role: u32,
    },
    /// Step 6: the grant on `resource` to `grant_role`, held through the subject's `via` role.
    Grant {
        resource: u32,
        org: u32,
        grant_role: u32,
        via: u32,
    },
    /// Step 6b: the attribute rule (position in the policy's compiled rules).
    Rule { rule: u32 },
}

/// Where a condition that was evaluated sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CondSite {
    /// A role's conditional permission entry (id in `Policy::cond_entries`).
    Entry(u32),
    /// The grant of (`org`, role-name `role`) on `resource`.
    Grant { resource: u32, org: u32, role: u32 },
    /// An attribute rule (position in `Policy::rules`).
    Rule(u32),
}

/// A condition a decision evaluated, and what it gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tried {
    pub site: CondSite,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allow: bool,
    pub reason: Reason,
    pub version: u64,
    pub evidence: Evidence,
    /// The condition that allowed, when one did.
    pub condition: Option<CondSite>,
}

/// The instances of `ResAnc(x)`: inline for ordinary trees, a bitmap past that.
pub(crate) struct Ancestors {
    pub(crate) list: SmallVec<[u32; 16]>,
    big: Option<RoaringBitmap>,
}

impl Ancestors {
    #[inline]
    pub(crate) fn contains(&self, id: u32) -> bool {
        match &self.big {
            Some(b) => b.contains(id),
            None => self.list.contains(&id),
        }
    }

    #[inline]
    fn insert(&mut self, id: u32) -> bool {
        if self.contains(id) {
            return false;
        }
        self.list.push(id);
        if let Some(b) = &mut self.big {
            b.insert(id);
        } else if self.list.len() > 32 {
            self.big = Some(self.list.iter().copied().collect());
        }
        true
    }
}

/// What a decision needs to evaluate conditions, and the record of those it evaluated.
struct Conds<'a, 'q> {
    ix: &'a Index,
    q: &'a Query<'q>,
    o: u32,
    x: Option<u32>,
    user: Option<UserRec<'a>>,
    trace: Option<&'a mut Vec<Tried>>,
}

impl Conds<'_, '_> {
    fn scope(&self) -> Scope<'_> {
        let ix = self.ix;
        let q = self.q;
        let request = q.request;
        let user = match q.subject {
            Subject::User(key) => {
                let meta = self.user.and_then(|u| ix.user_meta(u.id));
                UserView {
                    key,
                    email: meta.and_then(|m| m.email.as_deref()),
                    stored: meta.and_then(|m| m.attributes.as_ref()),
                    request: request.and_then(|r| r.user.as_ref()),
                }
            }
            Subject::Role(_) => UserView::default(),
        };
        let instance = self.x.and_then(|id| ix.res(id));
        let resource = ResourceView {
            resource_type: instance.map_or(q.group_type.unwrap_or(q.resource_type), |r| {
                ix.names.types.name(r.resource_type)
            }),
            key: q.resource_key.unwrap_or(""),
            org: ix.names.orgs.name(self.o),
            stored: instance.and_then(|r| r.item).and_then(|i| i.attributes),
            request: request.and_then(|r| r.resource.as_ref()),
        };
        Scope {
            user,
            resource,
            org: OrgView {
                key: ix.names.orgs.name(self.o),
                stored: ix.policy.org_attributes(self.o, &ix.items),
            },
            action: q.action,
            context: request.and_then(|r| r.context.as_ref()),
            request,
        }
    }

    /// Whether `cond` holds for this check; recorded when tracing.
    fn holds(&mut self, site: CondSite, cond: &Condition) -> bool {
        let outcome = cond.eval(&self.scope());
        let holds = outcome.holds();
        if let Some(t) = self.trace.as_deref_mut() {
            t.push(Tried { site, outcome });
        }
        holds
    }

    /// The first conditional entry of `Expand({role})` for `perm` that holds.
    fn role_permits(&mut self, role: u32, perm: u32) -> Option<CondSite> {
        let p = &*self.ix.policy;
        for e in p.cond_entries_for(role, perm) {
            let Some(entry) = p.cond_entries.get(e as usize) else {
                continue;
            };
            if self.holds(CondSite::Entry(e), &entry.cond) {
                return Some(CondSite::Entry(e));
            }
        }
        None
    }
}

impl Index {
    fn decision(&self, reason: Reason, evidence: Evidence) -> Decision {
        Decision {
            allow: reason.allows(),
            reason,
            version: self.version,
            evidence,
            condition: None,
        }
    }

    fn conditional(&self, reason: Reason, evidence: Evidence, site: CondSite) -> Decision {
        Decision {
            condition: Some(site),
            ..self.decision(reason, evidence)
        }
    }

    /// model.md §2 with the conditions of §5. Never fails: anything unknown is a deny with
    /// its reason, a condition that errors does not permit.
    pub fn decide(&self, q: &Query<'_>) -> Decision {
        self.decide_traced(q, None)
    }

    /// `decide`, recording every condition it evaluates in `trace` (for `explain`).
    pub fn decide_traced(&self, q: &Query<'_>, trace: Option<&mut Vec<Tried>>) -> Decision {
        let p = &*self.policy;
        let names = &self.names;
        // The user's record and the instance are looked up first, one after the other and
        // before anything depends on either, so their cache misses overlap. The type's id is
        // looked up once, for the instance and for step 2.
        let node_type = names.types.get(q.group_type.unwrap_or(q.resource_type));
        let user = match q.subject {
            Subject::User(u) => self.user(u),
            Subject::Role(_) => None,
        };
        let org_roles = user.map_or(&[][..], |u| u.org_roles);
        let x = q
            .resource_key
            .zip(node_type)
            .and_then(|(k, nt)| self.lookup_res_in(nt, k))
            .and_then(|id| self.instance_hot(id).map(|item| (id, item)));

        // Step 1: the org.
        let org = match q.org {
            Some(o) => names.orgs.get(o),
            None => match x {
                Some((_, item)) => Some(item.org),
                None => names.orgs.get("default"),
            },
        };
        let Some(o) = org.filter(|o| p.org_known(*o)) else {
            return self.decision(Reason::UnknownOrg, Evidence::None);
        };
        // Step 2: the type and the action.
        let t = match q.group_type {
            None => node_type,
            Some(_) => names.types.get(q.resource_type),
        };
        let Some(t) = t.filter(|t| p.type_known(*t)) else {
            return self.decision(Reason::UnknownResourceType, Evidence::None);
        };
        let action = names.actions.get(q.action);
        let Some((a, perm)) = action.and_then(|a| p.perm(t, a).map(|perm| (a, perm))) else {
            return self.decision(Reason::UnknownAction, Evidence::None);
        };
        // Step 3: tenant isolation.
        if let Some((_, item)) = x
            && item.org != o
        {
            return self.decision(Reason::TenantMismatch, Evidence::None);
        }

        // Step 4: org-wide roles, collected for step 6 too.
        let anc = p.org_anc(o);
        let mut held: SmallVec<[u32; 8]> = SmallVec::new();
        match q.subject {
            Subject::User(_) => {
                for &(org_a, role_name) in org_roles {
                    if anc.binary_search(&org_a).is_err() {
                        continue;
                    }
                    let Some(role) = p.resolve(org_a, role_name) else {
                        continue;
                    };
                    if p.permits(role, perm) {
                        return self.decision(
                            Reason::OrgRole,
                            Evidence::OrgAssignment {
                                org: org_a,
                                role_name,
                                role,
                            },
                        );
                    }
                    held.push(role);
                }
            }
            Subject::Role(name) => {
                if let Some(role) = names.roles.get(name).and_then(|n| p.resolve(o, n)) {
                    if p.permits(role, perm) {
                        return self.decision(Reason::OrgRole, Evidence::RoleSubject { role });
                    }
                    held.push(role);
                }
            }
        }
        let conditional = p.conditional();
        let mut conds = Conds {
            ix: self,
            q,
            o,
            x: x.map(|(id, _)| id),
            user,
            trace,
        };
        // The conditional entries of the same roles, walked again only when some exist (the
        // assignment behind each is the evidence).
        if conditional {
            match q.subject {
                Subject::User(_) => {
                    for &(org_a, role_name) in org_roles {
                        if anc.binary_search(&org_a).is_err() {
                            continue;
                        }
                        let Some(role) = p.resolve(org_a, role_name) else {
                            continue;
                        };
                        if let Some(site) = conds.role_permits(role, perm) {
                            let evidence = Evidence::OrgAssignment {
                                org: org_a,
                                role_name,
                                role,
                            };
                            return self.conditional(Reason::OrgRole, evidence, site);
                        }
                    }
                }
                Subject::Role(_) => {
                    if let Some(&role) = held.first()
                        && let Some(site) = conds.role_permits(role, perm)
                    {
                        return self.conditional(Reason::OrgRole, Evidence::RoleSubject { role }, site);
                    }
                }
            }
        }

        // Steps 5 and 6 need an instance; a key naming none is a type-level check.
        let Some((x_id, x_hot)) = x else {
            return self.rules(&mut conds, anc, perm);
        };
        let inst_roles = match user {
            Some(u) if u.may_hold_in(o) => u.inst_roles,
            _ => &[],
        };
        // Step 5 can only succeed through a role on a resource whose span covers x's
        // (spans.rs): a load per role rather than one per level of the tree.
        let step5 = inst_roles.iter().any(|&(res, org_a, _)| {
            org_a == o && self.res_hot.get(res as usize).is_some_and(|h| h.may_cover(x_hot.pre))
        });
        let step6 = !held.is_empty() && self.grant_may_match(o, t, a, &held);
        if !step5 && !step6 {
            return self.rules(&mut conds, anc, perm);
        }
        let ancestors = self.res_ancestors(x_id, o);

        // Step 5: instance assignments on the node or above it.
        for &(res, org_a, role_name) in inst_roles {
            if org_a != o || !ancestors.contains(res) {
                continue;
            }
            let Some(role) = p.resolve(org_a, role_name) else {
                continue;
            };
            let evidence = Evidence::InstanceAssignment {
                resource: res,
                org: org_a,
                role_name,
                role,
            };
            if p.permits(role, perm) {
                return self.decision(Reason::ResourceRole, evidence);
            }
            if conditional && let Some(site) = conds.role_permits(role, perm) {
                return self.conditional(Reason::ResourceRole, evidence, site);
            }
        }

        // Step 6: grants on the node or above it, to a role the subject holds through Expand.
        if step6 {
            for &y in &ancestors.list {
                if !self.res_hot.get(y as usize).is_some_and(|h| h.grants) {
                    continue;
                }
                for g in self.res_grants(y) {
                    if g.org != o
                        || !g
                            .patterns
                            .iter()
                            .any(|&(pt, pa)| (pt == STAR || pt == t) && (pa == STAR || pa == a))
                    {
                        continue;
                    }
                    let Some(grant_role) = p.resolve(g.org, g.role) else {
                        continue;
                    };
                    let Some(&via) = held.iter().find(|&&h| p.expand(h).binary_search(&grant_role).is_ok()) else {
                        continue;
                    };
                    let evidence = Evidence::Grant {
                        resource: y,
                        org: g.org,
                        grant_role,
                        via,
                    };
                    match &g.when {
                        None => return self.decision(Reason::RoleGrant, evidence),
                        Some(cond) => {
                            let site = CondSite::Grant {
                                resource: y,
                                org: g.org,
                                role: g.role,
                            };
                            if conds.holds(site, cond) {
                                return self.conditional(Reason::RoleGrant, evidence, site);
                            }
                        }
                    }
                }
            }
        }
        self.rules(&mut conds, anc, perm)
    }

    /// Step 6b (model.md §5): an attribute rule of an org in `anc` (or of every org) that
    /// grants `perm` and whose condition holds; user subjects only. Else the final deny.
    fn rules(&self, conds: &mut Conds<'_, '_>, anc: &[u32], perm: u32) -> Decision {
        let p = &*self.policy;
        if matches!(conds.q.subject, Subject::User(_)) {
            for (i, rule) in p.rules.iter().enumerate() {
                if rule.perms.binary_search(&perm).is_err()
                    || rule.org.is_some_and(|org| anc.binary_search(&org).is_err())
                {
                    continue;
                }
                let site = CondSite::Rule(i as u32);
                if conds.holds(site, &rule.cond) {
                    return self.conditional(Reason::AttributeRule, Evidence::Rule { rule: i as u32 }, site);
                }
            }
        }
        self.decision(Reason::NoMatchingGrant, Evidence::None)
    }

    /// Whether org `o` has a grant that step 6 could find for (`t`, `a`) through a role in
    /// `held`: without one, the walk up the tree for step 6 cannot succeed and is skipped.
    /// An org with many kinds of grant is walked without looking.
    fn grant_may_match(&self, o: u32, t: u32, a: u32, held: &[u32]) -> bool {
        const MAX_KINDS: usize = 32;
        let kinds = self.org_grants(o);
        if kinds.len() > MAX_KINDS {
            return true;
        }
        let p = &*self.policy;
        kinds.iter().any(|k| {
            let (pt, pa) = k.pattern;
            (pt == STAR || pt == t)
                && (pa == STAR || pa == a)
                && p.resolve(o, k.role)
                    .is_some_and(|r| held.iter().any(|&h| p.expand(h).binary_search(&r).is_ok()))
        })
    }

    /// `ResAnc(x)` within org `o`: `x` and every instance reachable through `parents`, skipping
    /// links to unknown instances or into another org (those are ignored items).
    pub(crate) fn res_ancestors(&self, x: u32, o: u32) -> Ancestors {
        let mut anc = Ancestors {
            list: SmallVec::new(),
            big: None,
        };
        anc.insert(x);
        // A chain of single parents, the common tree, reads each entry once; the walk below
        // takes over at the first instance with several parents.
        let Some(mut hot) = self.instance_hot(x) else {
            return anc;
        };
        loop {
            match hot.parent {
                NONE => return anc,
                ResHot::MANY => break,
                parent => match self.instance_hot(parent) {
                    Some(p) if p.org == o && anc.insert(parent) => hot = p,
                    _ => return anc,
                },
            }
        }
        let mut i = anc.list.len() - 1;
        while let Some(&y) = anc.list.get(i) {
            i += 1;
            let Some(hot) = self.instance_hot(y) else { continue };
            let in_org = |parent: u32| self.instance_hot(parent).is_some_and(|pi| pi.org == o);
            match hot.parent {
                NONE => {}
                ResHot::MANY => {
                    let Some(item) = self.instance(y) else { continue };
                    for &parent in item.parents.iter() {
                        if in_org(parent) {
                            anc.insert(parent);
                        }
                    }
                }
                parent => {
                    if in_org(parent) {
                        anc.insert(parent);
                    }
                }
            }
        }
        anc
    }
}
