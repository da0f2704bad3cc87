//! Permit-style REST pull (sync.md, `protocol: permit`): every `interval`, read the schema
//! (`/v2/schema/{project}/{env}/resources`, `/roles`) and the facts (`/v2/facts/{project}/{env}/`
//! `tenants`, `users`, `role_assignments`, `resource_instances`, `relationship_tuples`), page
//! by page (`page` from 1, `per_page` = 100), map them to a snapshot document, and apply the
//! difference from the previous pull as one delta batch. `429` waits `Retry-After` and retries
//! the same page; requests are paced to at most 100 a minute (perms.io's burst budget, which
//! also keeps the hour inside 10,000).
//!
//! Mapping: tenants → orgs; top-level roles → global roles; a resource's own roles (Permit
//! resource roles) → roles `type#role`, their bare action permissions → `type:action`; a role
//! assignment with `resource_instance` → an instance assignment (of `type#role` when that
//! resource defines the role, else of the top-level role); `parent` relationship tuples
//! (`subject` is parent of `object`) → the object's `parents`; the mapping rules of every
//! proxy config (`/v2/facts/{project}/{env}/proxy_configs`, Permit's URL mapping) → `url_mappings`
//! (`map_url_rules`).

use super::abac;
use super::{Backoff, Cache, SyncError, report, status_error, upstream::read_body, upstream::without_url};
use crate::index::Index;
use crate::model::{
    Attributes, DeltaBatch, Identity, Item, Op, Org, Permission, Resource, ResourceType, Role, RoleAssignment,
    Snapshot, User, validate,
};
use crate::store::Store;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Items per page: Permit's maximum.
pub const PER_PAGE: usize = 100;
/// Requests allowed in any `WINDOW`.
pub const BUDGET: usize = 100;
pub const WINDOW: Duration = Duration::from_secs(60);

pub struct Settings {
    pub base: String,
    pub project: String,
    pub env: String,
    pub client: reqwest::Client,
    pub timeout: Duration,
    pub interval: Duration,
    pub max_snapshot_bytes: usize,
}

/// Pulls forever; the active version keeps serving through every failure.
pub async fn run(s: Settings, store: Arc<Store>, cache: Option<Arc<Cache>>) {
    let mut puller = Puller {
        s,
        sent: VecDeque::new(),
    };
    let mut backoff = Backoff::default();
    let mut prev: Option<Snapshot> = None;
    let mut cache_tried = cache.is_none();
    loop {
        let m = crate::metrics::get();
        if let Some(m) = m {
            m.sync_attempt(crate::metrics::SyncKind::PermitPull);
        }
        let pulled = puller.pull().await;
        if let (Some(m), Err(_)) = (m, &pulled) {
            m.sync_failure(crate::metrics::SyncKind::PermitPull);
        }
        match pulled {
            Ok(doc) => {
                backoff.reset();
                match apply(&store, prev.take(), doc).await {
                    Ok(p) => prev = Some(p),
                    Err((p, e)) => {
                        prev = p;
                        if let Some(m) = crate::metrics::get() {
                            m.sync_failure(crate::metrics::SyncKind::PermitPull);
                            m.rejected("batch");
                        }
                        report(&store, &e);
                    }
                }
                tokio::time::sleep(puller.s.interval).await;
            }
            Err(e) => {
                report(&store, &e);
                super::cache::warm_start_once(&mut cache_tried, &cache, &store).await;
                tokio::time::sleep(e.delay(&mut backoff).max(Duration::from_millis(200))).await;
            }
        }
    }
}

/// What one pull comes to, decided off the runtime.
enum Outcome {
    Applied(Snapshot, Box<Index>),
    Unchanged(Snapshot),
    Refused(Option<Snapshot>, String),
}

/// Publishes `doc` as the next version: built whole the first time, else the difference from
/// the previous pull as one batch. Returns the document now active.
async fn apply(
    store: &Store,
    prev: Option<Snapshot>,
    mut doc: Snapshot,
) -> Result<Snapshot, (Option<Snapshot>, SyncError)> {
    let active = store.load();
    let worked = tokio::task::spawn_blocking(move || {
        let prev = match (prev, &active) {
            (Some(p), _) => Some(p),
            // After a warm start from the cache, diff against what is serving.
            (None, Some(ix)) => Some(ix.to_snapshot()),
            (None, None) => None,
        };
        if let Err(e) = validate(&doc) {
            return Outcome::Refused(prev, format!("the pulled data is rejected: {e}"));
        }
        match (prev, active) {
            (Some(prev), Some(ix)) if ix.version() == prev.version => {
                let ops = diff(&prev, &doc);
                if ops.is_empty() {
                    return Outcome::Unchanged(prev);
                }
                doc.version = prev.version + 1;
                let batch = DeltaBatch {
                    from_version: prev.version,
                    to_version: doc.version,
                    ops,
                };
                match ix.apply(&batch) {
                    Ok(next) => {
                        if let Some(m) = crate::metrics::get() {
                            m.batch_applied(batch.ops.len());
                        }
                        Outcome::Applied(doc, Box::new(next))
                    }
                    Err(e) => Outcome::Refused(Some(prev), e.to_string()),
                }
            }
            (prev, _) => {
                doc.version = prev.map_or(1, |p| p.version + 1);
                let started = std::time::Instant::now();
                let ix = Index::build(&doc);
                if let Some(m) = crate::metrics::get() {
                    m.index_built(started.elapsed());
                }
                Outcome::Applied(doc, Box::new(ix))
            }
        }
    })
    .await;
    let rejected = |message: String| SyncError::Rejected {
        url: "permit pull".into(),
        message,
    };
    match worked {
        Ok(Outcome::Applied(doc, ix)) => {
            tracing::info!(version = ix.version(), "permit pull applied");
            store.publish(*ix);
            Ok(doc)
        }
        Ok(Outcome::Unchanged(doc)) => {
            store.confirm();
            Ok(doc)
        }
        Ok(Outcome::Refused(prev, msg)) => Err((prev, rejected(msg))),
        Err(e) => Err((None, rejected(format!("applying the pull failed: {e}")))),
    }
}

struct Puller {
    s: Settings,
    /// When recent requests were sent, for the request budget.
    sent: VecDeque<Instant>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum PageBody<T> {
    List(Vec<T>),
    Paginated {
        data: Vec<T>,
        #[serde(default)]
        page_count: Option<u64>,
    },
}

impl Puller {
    /// Waits until one more request fits the budget, then counts it.
    async fn pace(&mut self) {
        loop {
            let now = Instant::now();
            while self.sent.front().is_some_and(|t| now.duration_since(*t) >= WINDOW) {
                self.sent.pop_front();
            }
            match self.sent.front() {
                Some(oldest) if self.sent.len() >= BUDGET => tokio::time::sleep_until(*oldest + WINDOW).await,
                _ => break,
            }
        }
        self.sent.push_back(Instant::now());
    }

    /// Every page of a list an upstream may not serve at all (404: none): Permit's ABAC lists,
    /// which a Permit-shaped upstream without conditions (the control plane's face) lacks.
    async fn list_optional<T: DeserializeOwned>(&mut self, path: &str) -> Result<Vec<T>, SyncError> {
        match self.list(path).await {
            Err(SyncError::Status { status: 404, .. }) => Ok(Vec::new()),
            other => other,
        }
    }

    /// Every page of one list.
    async fn list<T: DeserializeOwned>(&mut self, path: &str) -> Result<Vec<T>, SyncError> {
        let mut out = Vec::new();
        let mut page = 1u64;
        let mut backoff = Backoff::default();
        loop {
            let url = format!("{}{path}?page={page}&per_page={PER_PAGE}", self.s.base);
            self.pace().await;
            let resp = tokio::time::timeout(self.s.timeout, self.s.client.get(&url).send())
                .await
                .map_err(|_| SyncError::Transport {
                    url: url.clone(),
                    message: format!("no answer within {:?}", self.s.timeout),
                })?
                .map_err(|e| SyncError::Transport {
                    url: url.clone(),
                    message: without_url(e),
                })?;
            if resp.status() == http::StatusCode::TOO_MANY_REQUESTS {
                let e = status_error(&url, &resp);
                let wait = e.delay(&mut backoff);
                tracing::info!(wait_ms = wait.as_millis() as u64, url = %url, "rate limited; waiting");
                tokio::time::sleep(wait).await;
                continue;
            }
            if !resp.status().is_success() {
                return Err(status_error(&url, &resp));
            }
            let bytes = read_body(resp, &url, self.s.max_snapshot_bytes, self.s.timeout).await?;
            let body: PageBody<T> = serde_json::from_slice(&bytes).map_err(|e| SyncError::Rejected {
                url: url.clone(),
                message: format!("page does not parse: {e}"),
            })?;
            let (items, page_count) = match body {
                PageBody::List(items) => (items, None),
                PageBody::Paginated { data, page_count } => (data, page_count),
            };
            let n = items.len();
            out.extend(items);
            let last = match page_count {
                Some(count) => page >= count,
                None => n < PER_PAGE,
            };
            if last || n == 0 {
                return Ok(out);
            }
            page += 1;
        }
    }

    /// One whole pull, mapped to a document (its `version` is set by `apply`).
    async fn pull(&mut self) -> Result<Snapshot, SyncError> {
        let (p, e) = (self.s.project.clone(), self.s.env.clone());
        let resources: Vec<PResource> = self.list(&format!("/v2/schema/{p}/{e}/resources")).await?;
        let roles: Vec<PRole> = self.list(&format!("/v2/schema/{p}/{e}/roles")).await?;
        let tenants: Vec<PTenant> = self.list(&format!("/v2/facts/{p}/{e}/tenants")).await?;
        let users: Vec<PUser> = self.list(&format!("/v2/facts/{p}/{e}/users")).await?;
        let assignments: Vec<PAssignment> = self.list(&format!("/v2/facts/{p}/{e}/role_assignments")).await?;
        let instances: Vec<PInstance> = self.list(&format!("/v2/facts/{p}/{e}/resource_instances")).await?;
        let tuples: Vec<PTuple> = self.list(&format!("/v2/facts/{p}/{e}/relationship_tuples")).await?;
        // URL mapping (proxy configs) is optional: an upstream without it (404) has no rules.
        let proxies: Vec<PProxyConfig> = self.list_optional(&format!("/v2/facts/{p}/{e}/proxy_configs")).await?;
        let sets_path = format!("/v2/schema/{p}/{e}/condition_sets");
        let sets: Vec<abac::PConditionSet> = self.list_optional(&sets_path).await?;
        let set_rules: Vec<abac::PSetRule> = self.list_optional(&format!("/v2/facts/{p}/{e}/set_rules")).await?;
        let mut doc = map(resources, roles, tenants, users, assignments, instances, tuples);
        doc.url_mappings = map_url_rules(proxies);
        doc.rules = abac::rules(&sets, &set_rules).map_err(|message| SyncError::Rejected {
            url: format!("{}{sets_path}", self.s.base),
            message,
        })?;
        Ok(doc)
    }
}

// Permit's shapes: only the fields permd uses; everything else is ignored.

#[derive(Deserialize)]
pub struct PResource {
    pub key: String,
    #[serde(default)]
    pub name: Option<String>,
    /// `{action_key: {...}}` (Permit's ResourceRead); a list of keys is accepted too.
    #[serde(default)]
    pub actions: Keys,
    #[serde(default)]
    pub roles: BTreeMap<String, PResourceRole>,
}

#[derive(Deserialize, Default)]
#[serde(untagged)]
pub enum Keys {
    #[default]
    None,
    Map(BTreeMap<String, Value>),
    List(Vec<String>),
}

#[derive(Deserialize)]
pub struct PResourceRole {
    #[serde(default)]
    pub permissions: Vec<String>,
    #[serde(default)]
    pub extends: Vec<String>,
}

#[derive(Deserialize)]
pub struct PRole {
    pub key: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub permissions: Vec<String>,
    #[serde(default)]
    pub extends: Vec<String>,
}

#[derive(Deserialize)]
pub struct PTenant {
    pub key: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub attributes: Option<Attributes>,
}

#[derive(Deserialize)]
pub struct PUser {
    pub key: String,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub first_name: Option<String>,
    #[serde(default)]
    pub last_name: Option<String>,
    #[serde(default)]
    pub attributes: Option<Attributes>,
}

#[derive(Deserialize)]
pub struct PAssignment {
    pub user: String,
    pub role: String,
    pub tenant: String,
    #[serde(default)]
    pub resource_instance: Option<String>,
}

#[derive(Deserialize)]
pub struct PInstance {
    pub key: String,
    pub resource: String,
    pub tenant: String,
    #[serde(default)]
    pub attributes: Option<Attributes>,
}

#[derive(Deserialize)]
pub struct PTuple {
    pub subject: String,
    pub relation: String,
    pub object: String,
}

/// A Permit proxy config (URL mapping): only its mapping rules are read.
#[derive(Deserialize)]
pub struct PProxyConfig {
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub mapping_rules: Vec<PMappingRule>,
}

/// Permit's `MappingRule`: `url` (absolute, `{var}` templates or, with `url_type: regex`, a
/// regex), `http_method`, `resource`, `action` (absent: the method, as Permit's PDP reads it),
/// `priority`. `headers` (header values the proxy injects) has no part in a decision.
#[derive(Deserialize)]
pub struct PMappingRule {
    pub url: String,
    pub http_method: String,
    pub resource: String,
    #[serde(default)]
    pub action: Option<String>,
    #[serde(default)]
    pub priority: Option<i64>,
    #[serde(default)]
    pub url_type: Option<String>,
}

/// The mapping rules of every proxy config, in order, as `url_mappings`. A rule that does not
/// compile is left out (and logged) rather than refusing the whole pull; of two rules with the
/// same (method, url) the first is kept.
pub fn map_url_rules(proxies: Vec<PProxyConfig>) -> Vec<crate::model::UrlMapping> {
    let mut out: Vec<crate::model::UrlMapping> = Vec::new();
    for p in proxies {
        for r in p.mapping_rules {
            let method = match r.http_method.trim() {
                "" | "*" | "any" | "ANY" => "*".to_owned(),
                m => m.to_ascii_uppercase(),
            };
            let rule = crate::model::UrlMapping {
                action: r
                    .action
                    .filter(|a| !a.is_empty())
                    .unwrap_or_else(|| r.http_method.to_ascii_lowercase()),
                method,
                url: r.url,
                url_type: r.url_type.filter(|t| t != "none" && !t.is_empty()),
                resource: r.resource,
                priority: r.priority,
            };
            let ok = crate::urlmap::check(&rule).and_then(|()| {
                [&rule.resource, &rule.action]
                    .iter()
                    .all(|k| !k.is_empty() && k.len() <= crate::model::MAX_KEY_BYTES)
                    .then_some(())
                    .ok_or(("resource", "is empty or too long".to_owned()))
            });
            match ok {
                Err((field, problem)) => {
                    tracing::warn!(proxy_config = ?p.key, url = %rule.url, field, %problem, "mapping rule left out");
                }
                Ok(()) if out.iter().any(|x| x.method == rule.method && x.url == rule.url) => {}
                Ok(()) => out.push(rule),
            }
        }
    }
    out
}

/// Maps one pull to a snapshot document (version 0; `apply` numbers it).
pub fn map(
    resources: Vec<PResource>,
    roles: Vec<PRole>,
    tenants: Vec<PTenant>,
    users: Vec<PUser>,
    assignments: Vec<PAssignment>,
    instances: Vec<PInstance>,
    tuples: Vec<PTuple>,
) -> Snapshot {
    let mut doc = Snapshot {
        format: 1,
        ..Snapshot::default()
    };
    let mut resource_roles: BTreeMap<(String, String), ()> = BTreeMap::new();
    for r in resources {
        let actions = match r.actions {
            Keys::None => vec![],
            Keys::Map(m) => m.into_keys().collect(),
            Keys::List(l) => l,
        };
        for (role, rr) in r.roles {
            let qualify = |p: String| if p.contains(':') { p } else { format!("{}:{p}", r.key) };
            doc.roles.push(Role {
                id: None,
                attributes: None,
                key: format!("{}#{role}", r.key),
                org: None,
                permissions: rr
                    .permissions
                    .into_iter()
                    .map(|p| Permission::from(qualify(p)))
                    .collect(),
                extends: rr.extends.into_iter().map(|e| format!("{}#{e}", r.key)).collect(),
                menus: vec![],
                name: None,
                description: None,
            });
            resource_roles.insert((r.key.clone(), role), ());
        }
        doc.resource_types.push(ResourceType {
            key: r.key,
            actions,
            name: r.name,
            description: None,
        });
    }
    for r in roles {
        doc.roles.push(Role {
            id: None,
            attributes: None,
            key: r.key,
            org: None,
            permissions: r.permissions.into_iter().map(Permission::from).collect(),
            extends: r.extends,
            menus: vec![],
            name: r.name,
            description: r.description,
        });
    }
    doc.orgs = tenants
        .into_iter()
        .map(|t| Org {
            key: t.key,
            parent: None,
            name: t.name,
            attributes: t.attributes,
        })
        .collect();
    doc.users = users
        .into_iter()
        .map(|u| User {
            key: u.key,
            email: u.email,
            first_name: u.first_name,
            last_name: u.last_name,
            attributes: u.attributes,
        })
        .collect();
    let mut parents: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for t in tuples.into_iter().filter(|t| t.relation == "parent") {
        parents.entry(t.object).or_default().push(t.subject);
    }
    doc.resources = instances
        .into_iter()
        .map(|i| {
            let id = format!("{}:{}", i.resource, i.key);
            Resource {
                parents: parents.remove(&id).unwrap_or_default(),
                resource_type: i.resource,
                key: i.key,
                org: i.tenant,
                attributes: i.attributes,
            }
        })
        .collect();
    let mut seen = std::collections::BTreeSet::new();
    for a in assignments {
        let role = match a.resource_instance.as_deref().and_then(|r| r.split_once(':')) {
            Some((t, _)) if resource_roles.contains_key(&(t.to_string(), a.role.clone())) => format!("{t}#{}", a.role),
            _ => a.role,
        };
        let ra = RoleAssignment {
            user: a.user,
            role,
            org: a.tenant,
            resource: a.resource_instance,
        };
        if seen.insert(ra.clone()) {
            doc.role_assignments.push(ra);
        }
    }
    doc
}

/// The ops that turn `old` into `new`: upserts of new or changed items, deletes of gone ones.
pub fn diff(old: &Snapshot, new: &Snapshot) -> Vec<Op> {
    fn kind<T: PartialEq + Clone, K: Ord>(
        ops: &mut Vec<Op>,
        old: &[T],
        new: &[T],
        id: impl Fn(&T) -> K,
        item: impl Fn(T) -> Item,
        identity: impl Fn(&T) -> Identity,
    ) {
        let before: BTreeMap<K, &T> = old.iter().map(|x| (id(x), x)).collect();
        let after: BTreeMap<K, &T> = new.iter().map(|x| (id(x), x)).collect();
        for (k, x) in &after {
            if before.get(k) != Some(x) {
                ops.push(Op::Upsert(item((*x).clone())));
            }
        }
        for (k, x) in &before {
            if !after.contains_key(k) {
                ops.push(Op::Delete(identity(x)));
            }
        }
    }
    let mut ops = Vec::new();
    kind(
        &mut ops,
        &old.orgs,
        &new.orgs,
        |x| x.key.clone(),
        Item::Org,
        |x| Identity::Org { key: x.key.clone() },
    );
    kind(
        &mut ops,
        &old.resource_types,
        &new.resource_types,
        |x| x.key.clone(),
        Item::ResourceType,
        |x| Identity::ResourceType { key: x.key.clone() },
    );
    kind(
        &mut ops,
        &old.roles,
        &new.roles,
        |x| (x.org.clone(), x.key.clone()),
        Item::Role,
        |x| Identity::Role {
            key: x.key.clone(),
            org: x.org.clone(),
        },
    );
    kind(
        &mut ops,
        &old.users,
        &new.users,
        |x| x.key.clone(),
        Item::User,
        |x| Identity::User { key: x.key.clone() },
    );
    kind(
        &mut ops,
        &old.resources,
        &new.resources,
        |x| (x.resource_type.clone(), x.key.clone()),
        Item::Resource,
        |x| Identity::Resource {
            resource_type: x.resource_type.clone(),
            key: x.key.clone(),
        },
    );
    kind(
        &mut ops,
        &old.role_assignments,
        &new.role_assignments,
        Clone::clone,
        Item::RoleAssignment,
        |x| Identity::RoleAssignment(x.clone()),
    );
    kind(
        &mut ops,
        &old.role_grants,
        &new.role_grants,
        |x| (x.org.clone(), x.role.clone(), x.resource.clone()),
        Item::RoleGrant,
        |x| Identity::RoleGrant {
            org: x.org.clone(),
            role: x.role.clone(),
            resource: x.resource.clone(),
        },
    );
    kind(
        &mut ops,
        &old.menus,
        &new.menus,
        |x| (x.platform.clone(), x.code.clone()),
        Item::Menu,
        |x| Identity::Menu {
            platform: x.platform.clone(),
            code: x.code.clone(),
        },
    );
    kind(
        &mut ops,
        &old.rules,
        &new.rules,
        |x| x.key.clone(),
        Item::Rule,
        |x| Identity::Rule { key: x.key.clone() },
    );
    kind(
        &mut ops,
        &old.url_mappings,
        &new.url_mappings,
        |x| (x.method.clone(), x.url.clone()),
        Item::UrlMapping,
        |x| Identity::UrlMapping {
            method: x.method.clone(),
            url: x.url.clone(),
        },
    );
    ops
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn diff_then_apply_equals_the_new_document() {
        let y = |s: &str| Snapshot::load(s.as_bytes(), crate::model::Encoding::Yaml).unwrap();
        let old = y(
            "format: 1\nversion: 3\norgs: [{key: a}, {key: b}]\nresource_types: [{key: d, actions: [r]}]\n\
                     roles: [{key: v, permissions: ['d:r']}]\nrole_assignments: [{user: u, role: v, org: a}]\n",
        );
        let new = y(
            "format: 1\nversion: 3\norgs: [{key: a, name: A}]\nresource_types: [{key: d, actions: [r]}]\n\
                     roles: [{key: v, permissions: ['d:r']}]\nrole_assignments: [{user: w, role: v, org: a}]\n",
        );
        let ops = diff(&old, &new);
        assert_eq!(ops.len(), 4, "{ops:?}");
        let mut applied = old.clone();
        applied.apply_ops(&ops);
        let canon = |s: &Snapshot| Index::build(s).to_snapshot();
        assert_eq!(canon(&applied), canon(&new));
        assert!(diff(&new, &new).is_empty());
    }
}
