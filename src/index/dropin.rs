//! What the drop-in faces (Permit's `/allowed_url`, `/allowed/all-tenants`, `/user-tenants`,
//! nginx `auth_request`, Envoy ext_authz) read from a version: the URL mapping rules compiled
//! once per version, the tenants a user belongs to, and a check made in every tenant.

use super::{Decision, Index, Query};
use crate::model::{Attributes, Identity, Item, Op, Org, UrlMapping, put};
use crate::urlmap::{UrlMap, UrlMatch};
use std::sync::Arc;

/// The URL mapping rules of one version: as the document has them, and compiled.
#[derive(Debug, Default)]
pub struct UrlRules {
    pub items: Vec<UrlMapping>,
    pub map: UrlMap,
}

impl UrlRules {
    pub fn build(items: Vec<UrlMapping>) -> UrlRules {
        let map = UrlMap::build(&items);
        UrlRules { items, map }
    }
}

/// A tenant as Permit's PDP answers it: `{"key", "attributes"}`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TenantInfo<'a> {
    pub key: &'a str,
    pub attributes: &'a Attributes,
}

static NO_ATTRIBUTES: std::sync::LazyLock<Attributes> = std::sync::LazyLock::new(Attributes::new);

fn tenant(o: &Org) -> TenantInfo<'_> {
    TenantInfo {
        key: &o.key,
        attributes: o.attributes.as_ref().unwrap_or(&NO_ATTRIBUTES),
    }
}

impl Index {
    /// Applies a batch's `url_mapping` ops and compiles the rules again, once, when there are any.
    pub(super) fn apply_url_ops(&mut self, ops: &[Op]) {
        let mut items: Option<Vec<UrlMapping>> = None;
        for op in ops {
            match op {
                Op::Upsert(Item::UrlMapping(v)) => {
                    let list = items.get_or_insert_with(|| self.urls.items.clone());
                    put(list, v.clone(), |x| x.method == v.method && x.url == v.url);
                }
                Op::Delete(Identity::UrlMapping { method, url }) => {
                    let list = items.get_or_insert_with(|| self.urls.items.clone());
                    list.retain(|x| !(&x.method == method && &x.url == url));
                }
                _ => {}
            }
        }
        if let Some(items) = items {
            self.counts.url_mappings = items.len();
            self.urls = Arc::new(UrlRules::build(items));
        }
    }

    /// The URL mapping rules of this version.
    pub fn url_rules(&self) -> &UrlRules {
        &self.urls
    }

    /// The check an HTTP request maps to (model.md §6); `None`: no rule matches
    /// (deny, reason `no_url_mapping`). `target` is a path with its query, or an absolute URL.
    pub fn map_url(&self, method: &str, target: &str) -> Option<UrlMatch<'_>> {
        self.urls.map.find(method, target)
    }

    /// The tenants a user belongs to, in document order: every known org where the user holds
    /// a role org-wide (directly or through an ancestor org) or on an instance.
    pub fn user_tenants(&self, user: &str) -> Vec<TenantInfo<'_>> {
        let Some(rec) = self.names.users.get(user).and_then(|uid| self.users.get(uid)) else {
            return Vec::new();
        };
        let p = &self.policy;
        self.items
            .orgs
            .iter()
            .filter(|o| {
                let Some(oid) = self.names.orgs.get(&o.key) else {
                    return false;
                };
                let anc = p.org_anc(oid);
                rec.org_roles
                    .iter()
                    .any(|&(a, role)| anc.binary_search(&a).is_ok() && p.resolve(a, role).is_some())
                    || rec.inst_roles.iter().any(|&(_, a, _)| a == oid)
            })
            .map(tenant)
            .collect()
    }

    /// The check `q` made in every known org (its `org` replaced), in document order; only the
    /// allowed ones are returned (Permit's `/allowed/all-tenants`).
    pub fn allowed_tenants(&self, q: &Query<'_>) -> Vec<(TenantInfo<'_>, Decision)> {
        self.items
            .orgs
            .iter()
            .filter_map(|o| {
                let d = self.decide(&Query {
                    org: Some(&o.key),
                    ..*q
                });
                d.allow.then(|| (tenant(o), d))
            })
            .collect()
    }
}
