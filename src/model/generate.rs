//! A deterministic generator of large, realistic snapshots for benchmarks and tests: tenants
//! in a two-level hierarchy, folder trees with documents, org-wide and instance assignments,
//! and grants. The same parameters and seed always give the same document.

use super::{Org, Permission, Resource, ResourceType, Role, RoleAssignment, RoleGrant, Snapshot};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::HashSet;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    pub users: usize,
    pub assignments: usize,
    pub resources: usize,
    pub orgs: usize,
    /// Deepest folder tree (a document under the deepest folder is one level more).
    pub depth: usize,
    pub grants: usize,
    pub seed: u64,
    /// How assignments fall on users.
    pub shape: Shape,
}

/// How the generator spreads role assignments over users.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Shape {
    /// Every user equally likely: about `assignments / users` each (10 by default).
    #[default]
    Even,
    /// User `u` drawn as `users × r²` for a uniform `r`: most users hold one to three
    /// assignments, a long tail of heavy users holds hundreds to thousands, and some ids draw
    /// none (fewer users than `users` end up in the document).
    Tail,
}

impl std::str::FromStr for Shape {
    type Err = String;
    fn from_str(s: &str) -> Result<Shape, String> {
        match s {
            "even" => Ok(Shape::Even),
            "tail" => Ok(Shape::Tail),
            _ => Err(format!("unknown shape `{s}` (even, tail)")),
        }
    }
}

impl Default for Params {
    fn default() -> Self {
        Params {
            users: 100_000,
            assignments: 1_000_000,
            resources: 100_000,
            orgs: 100,
            depth: 8,
            grants: 1_000,
            seed: 1,
            shape: Shape::Even,
        }
    }
}

/// The roles the generator assigns org-wide.
pub const ORG_ROLES: [&str; 4] = ["viewer", "editor", "admin", "auditor"];

fn role(key: &str, permissions: &[&str], extends: &[&str]) -> Role {
    Role {
        id: None,
        attributes: None,
        key: key.into(),
        org: None,
        permissions: permissions.iter().map(|s| Permission::from(*s)).collect(),
        extends: extends.iter().map(|s| s.to_string()).collect(),
        menus: Vec::new(),
        name: None,
        description: None,
    }
}

fn rtype(key: &str, actions: &[&str]) -> ResourceType {
    ResourceType {
        key: key.into(),
        actions: actions.iter().map(|s| s.to_string()).collect(),
        name: None,
        description: None,
    }
}

/// Org key of tenant `i`: tenants come in groups of ten under the group's first tenant.
pub fn org_key(i: usize) -> String {
    format!("t{i}")
}

pub fn generate(p: &Params) -> Snapshot {
    let mut rng = SmallRng::seed_from_u64(p.seed);
    let n_orgs = p.orgs.max(1);
    let mut s = Snapshot {
        format: 1,
        version: 1,
        ..Snapshot::default()
    };
    s.orgs.push(Org {
        key: "default".into(),
        parent: None,
        name: None,
        attributes: None,
    });
    for i in 0..n_orgs {
        let parent = (i % 10 != 0).then(|| org_key(i - i % 10));
        s.orgs.push(Org {
            key: org_key(i),
            parent,
            name: None,
            attributes: None,
        });
    }
    s.resource_types = vec![
        rtype("folder", &["read", "write", "share"]),
        rtype("document", &["read", "write", "delete", "share"]),
        rtype("report", &["read", "export"]),
    ];
    s.roles = vec![
        role("viewer", &["document:read", "folder:read"], &[]),
        role("editor", &["document:write", "folder:write"], &["viewer"]),
        role("admin", &["document:*", "folder:*"], &["editor"]),
        role("auditor", &["*:read"], &[]),
        role("owner", &["*:*"], &[]),
        role("sharer", &[], &[]),
    ];
    // Folder trees per org, documents under folders.
    let per_org = (p.resources / n_orgs).max(1);
    let mut folders_by_org: Vec<Vec<(String, usize)>> = vec![Vec::new(); n_orgs];
    let mut made = 0usize;
    'orgs: for (o, folders) in folders_by_org.iter_mut().enumerate() {
        let org = org_key(o);
        for j in 0..per_org {
            if made >= p.resources {
                break 'orgs;
            }
            let is_folder = j == 0 || rng.random_range(0..5) == 0;
            let candidates: Vec<usize> = (0..folders.len())
                .filter(|&f| folders.get(f).is_some_and(|(_, d)| *d + 1 < p.depth.max(1)))
                .collect();
            let parent = if folders.is_empty() {
                None
            } else if is_folder && !candidates.is_empty() {
                candidates
                    .get(rng.random_range(0..candidates.len()))
                    .and_then(|&f| folders.get(f))
                    .cloned()
            } else {
                folders.get(rng.random_range(0..folders.len())).cloned()
            };
            let (rtype, key) = if is_folder {
                ("folder", format!("f{o}-{j}"))
            } else {
                ("document", format!("d{o}-{j}"))
            };
            let depth = parent.as_ref().map_or(0, |(_, d)| d + 1);
            s.resources.push(Resource {
                resource_type: rtype.into(),
                key: key.clone(),
                org: org.clone(),
                parents: parent.map(|(k, _)| vec![format!("folder:{k}")]).unwrap_or_default(),
                attributes: None,
            });
            if is_folder {
                folders.push((key, depth));
            }
            made += 1;
        }
    }
    // Assignments: four in five org-wide, the rest on folders.
    let users = p.users.max(1);
    let mut seen: HashSet<(usize, usize, usize, Option<String>)> = HashSet::with_capacity(p.assignments);
    let mut tries = 0usize;
    while s.role_assignments.len() < p.assignments && tries < p.assignments * 4 {
        tries += 1;
        let u = match p.shape {
            Shape::Even => rng.random_range(0..users),
            Shape::Tail => ((users as f64) * rng.random::<f64>().powi(2)) as usize % users,
        };
        let o = rng.random_range(0..n_orgs);
        let (r, resource) = if rng.random_range(0..5) == 0 {
            let Some(folders) = folders_by_org.get(o).filter(|f| !f.is_empty()) else {
                continue;
            };
            let f = folders
                .get(rng.random_range(0..folders.len()))
                .map(|(k, _)| format!("folder:{k}"));
            (rng.random_range(0..2), f)
        } else {
            (rng.random_range(0..ORG_ROLES.len()), None)
        };
        if !seen.insert((u, o, r, resource.clone())) {
            continue;
        }
        s.role_assignments.push(RoleAssignment {
            user: format!("u{u}"),
            role: ORG_ROLES.get(r).copied().unwrap_or("viewer").into(),
            org: org_key(o),
            resource,
        });
    }
    // Grants: holders of `auditor` may share the documents under some folders.
    let mut granted = HashSet::new();
    for _ in 0..p.grants {
        let o = rng.random_range(0..n_orgs);
        let Some(folders) = folders_by_org.get(o).filter(|f| !f.is_empty()) else {
            continue;
        };
        let Some((k, _)) = folders.get(rng.random_range(0..folders.len())) else {
            continue;
        };
        if granted.insert(k.clone()) {
            s.role_grants.push(RoleGrant {
                when: None,
                org: org_key(o),
                role: "auditor".into(),
                resource: format!("folder:{k}"),
                actions: vec!["document:share".into()],
            });
        }
    }
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn generated_snapshots_are_valid_and_deterministic() {
        let p = Params {
            users: 50,
            assignments: 400,
            resources: 300,
            orgs: 12,
            depth: 4,
            grants: 10,
            seed: 9,
            shape: Shape::Even,
        };
        let a = generate(&p);
        super::super::validate(&a).unwrap();
        assert_eq!(a, generate(&p));
        assert_eq!(a.role_assignments.len(), 400);
        assert_eq!(a.resources.len(), 300);
    }
}
