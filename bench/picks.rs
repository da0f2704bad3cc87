//! Shared by bench/decide.rs and bench/bodies.rs (included with `#[path]`): the shape of a
//! generated snapshot (depths, documents per org, holders per folder) and the 1024-check mix,
//! so the in-process mix and the HTTP bodies are the same checks. Reads a `Snapshot` only.

// Each includer uses part of this module; what one leaves unused is not dead.
#![allow(dead_code)]

use permd::index::{Query, Subject};
use permd::model::Snapshot;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;

pub const DOC_ACTIONS: [&str; 4] = ["read", "write", "delete", "share"];

/// One check with owned strings, so a list of them can be precomputed.
#[derive(Debug, Clone)]
pub struct OwnedQuery {
    pub user: String,
    pub action: &'static str,
    pub resource_type: &'static str,
    pub key: Option<String>,
    pub org: Option<String>,
}

impl OwnedQuery {
    pub fn doc(user: &str, action: &'static str, key: &str, org: &str) -> OwnedQuery {
        OwnedQuery {
            user: user.into(),
            action,
            resource_type: "document",
            key: Some(key.into()),
            org: Some(org.into()),
        }
    }

    pub fn query(&self) -> Query<'_> {
        Query {
            subject: Subject::User(&self.user),
            action: self.action,
            resource_type: self.resource_type,
            resource_key: self.key.as_deref(),
            org: self.org.as_deref(),
            group_type: None,
            request: None,
        }
    }

    /// The Permit `/allowed` body of this check.
    pub fn allowed_body(&self) -> serde_json::Value {
        let mut resource = serde_json::json!({ "type": self.resource_type });
        if let Some(k) = &self.key {
            resource["key"] = k.as_str().into();
        }
        if let Some(o) = &self.org {
            resource["tenant"] = o.as_str().into();
        }
        serde_json::json!({ "user": self.user, "action": self.action, "resource": resource })
    }
}

/// A deep document, its org, and the instance assignments on its ancestors in that org as
/// (user, role, levels up), farthest first.
pub type DeepDoc<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str, usize)>);

/// What the picks need to know about a generated snapshot.
pub struct Shape {
    /// Resource key → (org, parent folder key, depth; a root folder is 0).
    pub res: HashMap<String, (String, Option<String>, usize)>,
    /// Document keys per org, in document order.
    pub docs_by_org: HashMap<String, Vec<String>>,
    /// Instance assignments per folder key: (user, role, org).
    pub holders: HashMap<String, Vec<(String, String, String)>>,
    /// Org-wide assignments per user: (org, role).
    pub org_roles: HashMap<String, Vec<(String, String)>>,
    /// Distinct users, for "anyone on anything" checks.
    pub users: usize,
}

impl Shape {
    pub fn new(s: &Snapshot) -> Shape {
        let mut res: HashMap<String, (String, Option<String>, usize)> = HashMap::new();
        let mut docs_by_org: HashMap<String, Vec<String>> = HashMap::new();
        // The generator lists a folder before anything under it.
        for r in &s.resources {
            let parent = r
                .parents
                .first()
                .and_then(|p| p.strip_prefix("folder:"))
                .map(str::to_owned);
            let depth = parent.as_ref().and_then(|p| res.get(p)).map_or(0, |(_, _, d)| d + 1);
            res.insert(r.key.clone(), (r.org.clone(), parent, depth));
            if r.resource_type == "document" {
                docs_by_org.entry(r.org.clone()).or_default().push(r.key.clone());
            }
        }
        let mut holders: HashMap<String, Vec<(String, String, String)>> = HashMap::new();
        let mut org_roles: HashMap<String, Vec<(String, String)>> = HashMap::new();
        let mut users = std::collections::HashSet::new();
        for a in &s.role_assignments {
            users.insert(a.user.as_str());
            match a.resource.as_deref().and_then(|r| r.strip_prefix("folder:")) {
                Some(f) => holders
                    .entry(f.into())
                    .or_default()
                    .push((a.user.clone(), a.role.clone(), a.org.clone())),
                None => org_roles
                    .entry(a.user.clone())
                    .or_default()
                    .push((a.org.clone(), a.role.clone())),
            }
        }
        Shape {
            res,
            docs_by_org,
            holders,
            org_roles,
            users: users.len(),
        }
    }

    pub fn depth(&self, key: &str) -> usize {
        self.res.get(key).map_or(0, |r| r.2)
    }

    /// Folder ancestors of `key`, nearest first.
    pub fn ancestors(&self, key: &str) -> Vec<&str> {
        let mut out = Vec::new();
        let mut at = self.res.get(key).and_then(|(_, p, _)| p.as_deref());
        while let Some(f) = at {
            out.push(f);
            at = self.res.get(f).and_then(|(_, p, _)| p.as_deref());
        }
        out
    }

    /// Every document, sorted by key (a stable order for seeded picks).
    pub fn docs(&self) -> Vec<&str> {
        let mut docs: Vec<&str> = self.docs_by_org.values().flatten().map(String::as_str).collect();
        docs.sort_unstable();
        docs
    }

    /// Documents of depth ≥ `min_depth` with the holders of instance roles above them.
    pub fn deep_docs(&self, min_depth: usize) -> impl Iterator<Item = DeepDoc<'_>> + '_ {
        self.docs().into_iter().filter_map(move |doc| {
            let (org, _, depth) = self.res.get(doc)?;
            if *depth < min_depth {
                return None;
            }
            let mut found = Vec::new();
            for (up, f) in self.ancestors(doc).into_iter().enumerate() {
                for (u, role, o) in self.holders.get(f).into_iter().flatten() {
                    if o == org {
                        found.push((u.as_str(), role.as_str(), up + 1));
                    }
                }
            }
            found.sort_by_key(|&(_, _, up)| std::cmp::Reverse(up));
            Some((doc, org.as_str(), found))
        })
    }

    /// Whether `user` holds an org-wide role in `org` or its parent (the generator's orgs are
    /// two levels: `t{10k}` is the parent of `t{10k+1}`..`t{10k+9}`).
    pub fn holds_org_role(&self, user: &str, org: &str) -> bool {
        let parent = org
            .strip_prefix('t')
            .and_then(|n| n.parse::<usize>().ok())
            .map(|n| format!("t{}", n - n % 10));
        self.org_roles
            .get(user)
            .is_some_and(|v| v.iter().any(|(o, _)| o == org || Some(o) == parent.as_ref()))
    }

    /// `n` checks in proportions a sidecar might see (seeded, so always the same list):
    /// 40% a user on a document of an org they hold a role in, 30% any user on any document
    /// (mostly denies), 15% a deep document checked by a holder of a role on an ancestor,
    /// 10% folders, 5% without a tenant (the instance's org is used).
    pub fn mix(&self, s: &Snapshot, n: usize) -> Vec<OwnedQuery> {
        let mut rng = SmallRng::seed_from_u64(7);
        let assignments = &s.role_assignments;
        let docs = self.docs();
        let mut folders: Vec<(&String, &String)> = self
            .res
            .iter()
            .filter(|(k, _)| k.starts_with('f'))
            .map(|(k, (o, _, _))| (k, o))
            .collect();
        folders.sort_unstable();
        let deep: Vec<DeepDoc<'_>> = self
            .deep_docs(5)
            .filter(|(_, _, found)| !found.is_empty())
            .take(2000)
            .collect();
        let pick = |rng: &mut SmallRng, len: usize| rng.random_range(0..len.max(1));
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let action = DOC_ACTIONS
                .get(pick(&mut rng, DOC_ACTIONS.len()))
                .copied()
                .unwrap_or("read");
            let roll = rng.random_range(0..100);
            let a = assignments.get(pick(&mut rng, assignments.len()));
            let doc = docs.get(pick(&mut rng, docs.len())).copied();
            let q = match roll {
                0..40 => {
                    let Some(a) = a else { continue };
                    let Some(org_docs) = self.docs_by_org.get(&a.org) else {
                        continue;
                    };
                    let Some(doc) = org_docs.get(pick(&mut rng, org_docs.len())) else {
                        continue;
                    };
                    OwnedQuery::doc(&a.user, action, doc, &a.org)
                }
                40..70 => {
                    let user = format!("u{}", pick(&mut rng, self.users));
                    let Some((doc, (org, _, _))) = doc.and_then(|d| self.res.get_key_value(d)) else {
                        continue;
                    };
                    OwnedQuery::doc(&user, action, doc, org)
                }
                70..85 => {
                    let Some((doc, org, found)) = deep.get(pick(&mut rng, deep.len())) else {
                        continue;
                    };
                    let Some((user, _, _)) = found.get(pick(&mut rng, found.len())) else {
                        continue;
                    };
                    OwnedQuery::doc(user, action, doc, org)
                }
                85..95 => {
                    let (Some(a), Some((key, org))) = (a, folders.get(pick(&mut rng, folders.len()))) else {
                        continue;
                    };
                    let action = ["read", "write", "share"]
                        .get(pick(&mut rng, 3))
                        .copied()
                        .unwrap_or("read");
                    OwnedQuery {
                        user: a.user.clone(),
                        action,
                        resource_type: "folder",
                        key: Some((*key).clone()),
                        org: Some((*org).clone()),
                    }
                }
                _ => {
                    let (Some(a), Some(doc)) = (a, doc) else { continue };
                    OwnedQuery {
                        user: a.user.clone(),
                        action,
                        resource_type: "document",
                        key: Some(doc.into()),
                        org: None,
                    }
                }
            };
            out.push(q);
        }
        out
    }
}
