//! Queries with conditions (model.md §5 "Queries with conditions"): which conditions could
//! add to an unconditional answer, the per-version bitmaps of resource-only conditions, and
//! deciding the remaining candidates with the query's request data.

use super::*;
use crate::cond::{Condition, RequestData, ResourceView, Scope};

impl Index {
    /// The conditions that could allow `subject` `perm` across org `o` where the unconditional
    /// data does not. Those that read only the resource and hold for the whole org (a rule
    /// for `perm` in `OrgAnc(o)`, a conditional entry on an org-wide role the subject holds
    /// there) are returned; any other (a conditional entry on an instance role, a grant with
    /// a `when`, a condition reading more than the resource) sets the flag: each candidate
    /// must then be decided.
    pub(super) fn conditions_for(&self, subject: Subject<'_>, perm: u32, o: u32) -> (Vec<Arc<Condition>>, bool) {
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
    pub(super) fn cond_holds(&self, c: &Arc<Condition>, t: u32) -> Arc<RoaringBitmap> {
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
                        key: rec.key,
                        org,
                        stored: rec.item.as_ref().and_then(|i| i.attributes),
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
    pub(super) fn add_conditional(
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
    pub(super) fn add_decided(
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
                resource_key: Some(rec.key),
                org: Some(org),
                group_type: None,
                request,
            };
            if self.decide(&q).allow {
                allowed.insert(id);
            }
        }
    }
}
