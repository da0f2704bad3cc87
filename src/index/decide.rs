//! `decide()`: model.md §2, step by step, with the evidence for `explain`. Allocation-free
//! for trees of ordinary depth; the walk up `parents` is bounded by the number of instances.

use super::{Index, NONE, ResHot, STAR};
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
}

/// The reason strings of model.md §2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    OrgRole,
    ResourceRole,
    RoleGrant,
    UnknownOrg,
    UnknownResourceType,
    UnknownAction,
    TenantMismatch,
    NoMatchingGrant,
}

impl Reason {
    pub const ALL: [Reason; 8] = [
        Reason::OrgRole,
        Reason::ResourceRole,
        Reason::RoleGrant,
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
            Reason::UnknownOrg => "unknown_org",
            Reason::UnknownResourceType => "unknown_resource_type",
            Reason::UnknownAction => "unknown_action",
            Reason::TenantMismatch => "tenant_mismatch",
            Reason::NoMatchingGrant => "no_matching_grant",
        }
    }

    pub fn allows(self) -> bool {
        matches!(self, Reason::OrgRole | Reason::ResourceRole | Reason::RoleGrant)
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allow: bool,
    pub reason: Reason,
    pub version: u64,
    pub evidence: Evidence,
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

impl Index {
    fn decision(&self, reason: Reason, evidence: Evidence) -> Decision {
        Decision {
            allow: reason.allows(),
            reason,
            version: self.version,
            evidence,
        }
    }

    /// model.md §2. Never fails: anything unknown is a deny with its reason.
    pub fn decide(&self, q: &Query<'_>) -> Decision {
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
        let org_roles = user.map_or(&[][..], |u| &u.org_roles[..]);
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

        // Steps 5 and 6 need an instance; a key naming none is a type-level check.
        let Some((x_id, x_hot)) = x else {
            return self.decision(Reason::NoMatchingGrant, Evidence::None);
        };
        let inst_roles = match user {
            Some(u) if u.may_hold_in(o) => &u.inst_roles[..],
            _ => &[],
        };
        // Step 5 can only succeed through a role on a resource whose span covers x's
        // (spans.rs): a load per role rather than one per level of the tree.
        let step5 = inst_roles.iter().any(|&(res, org_a, _)| {
            org_a == o && self.res_hot.get(res as usize).is_some_and(|h| h.may_cover(x_hot.pre))
        });
        let step6 = !held.is_empty() && self.grant_may_match(o, t, a, &held);
        if !step5 && !step6 {
            return self.decision(Reason::NoMatchingGrant, Evidence::None);
        }
        let ancestors = self.res_ancestors(x_id, o);

        // Step 5: instance assignments on the node or above it.
        for &(res, org_a, role_name) in inst_roles {
            if org_a != o || !ancestors.contains(res) {
                continue;
            }
            if let Some(role) = p.resolve(org_a, role_name)
                && p.permits(role, perm)
            {
                return self.decision(
                    Reason::ResourceRole,
                    Evidence::InstanceAssignment {
                        resource: res,
                        org: org_a,
                        role_name,
                        role,
                    },
                );
            }
        }

        // Step 6: grants on the node or above it, to a role the subject holds through Expand.
        if step6 {
            for &y in &ancestors.list {
                if !self.res_hot.get(y as usize).is_some_and(|h| h.grants) {
                    continue;
                }
                let Some(rec) = self.res(y) else { continue };
                for g in &rec.grants {
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
                    if let Some(&via) = held.iter().find(|&&h| p.expand(h).binary_search(&grant_role).is_ok()) {
                        return self.decision(
                            Reason::RoleGrant,
                            Evidence::Grant {
                                resource: y,
                                org: g.org,
                                grant_role,
                                via,
                            },
                        );
                    }
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
