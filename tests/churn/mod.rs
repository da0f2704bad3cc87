//! Random churn shared by the convergence test and the soak: random delta batches over a small
//! universe, and a matrix of checks compared with a fresh index.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use crate::common::Permd;
use permd::index::{Index, Query, Subject};
use permd::model::DeltaBatch;
use rand::Rng;
use rand::rngs::SmallRng;
use rand::seq::IndexedRandom;
use serde_json::{Value, json};

/// A random batch over a small universe: assignments (org-wide and on instances), roles,
/// resources with parents, orgs with parents, users; upserts and deletes.
pub fn random_batch(rng: &mut SmallRng, from: u64) -> DeltaBatch {
    let users = ["alice", "bob", "carol", "dave", "erin"];
    let roles = ["viewer", "editor", "guard", "auditor"];
    let orgs = ["acme", "acme-eu", "globex"];
    let res = [
        "folder:shared",
        "document:photo",
        "document:plan",
        "site:hq",
        "camera:cam1",
        "document:x",
    ];
    let perms = ["document:read", "document:write", "folder:read", "camera:*", "*:read"];
    let mut ops = Vec::new();
    for _ in 0..rng.random_range(1..6) {
        let op = if rng.random_bool(0.7) { "upsert" } else { "delete" };
        let v = match rng.random_range(0..5) {
            0 | 1 => {
                let mut a = json!({"user": users.choose(rng).unwrap(), "role": roles.choose(rng).unwrap(),
                    "org": orgs.choose(rng).unwrap()});
                if rng.random_bool(0.4) {
                    a["resource"] = json!(res.choose(rng).unwrap());
                }
                json!({"op": op, "kind": "role_assignment", "value": a})
            }
            2 => {
                let n = rng.random_range(0..3);
                let p: Vec<_> = perms.choose_multiple(rng, n).collect();
                let n = rng.random_range(0..2);
                let e: Vec<_> = roles.choose_multiple(rng, n).collect();
                json!({"op": "upsert", "kind": "role", "value": {"key": roles.choose(rng).unwrap(), "permissions": p, "extends": e}})
            }
            3 => {
                let (t, k) = res.choose(rng).unwrap().split_once(':').unwrap();
                let n = rng.random_range(0..2);
                let parents: Vec<_> = res.choose_multiple(rng, n).collect();
                json!({"op": op, "kind": "resource", "value": {"type": t, "key": k, "org": orgs.choose(rng).unwrap(), "parents": parents}})
            }
            _ => {
                let parent = orgs.choose(rng).unwrap();
                json!({"op": "upsert", "kind": "org", "value": {"key": orgs.choose(rng).unwrap(), "parent": parent}})
            }
        };
        ops.push(v);
    }
    let line = json!({"from_version": from, "to_version": from + 1, "ops": ops}).to_string();
    DeltaBatch::from_json(line.as_bytes()).unwrap()
}

/// Every check of the matrix (users × resources × actions × tenants) answered by `p` in one
/// bulk request equals what `want` decides, at `want`'s version.
pub fn agrees_with(p: &Permd, want: &Index, what: &str) {
    let mut checks = Vec::new();
    let mut expected = Vec::new();
    for user in ["alice", "bob", "carol", "dave", "erin", "root"] {
        for (t, k) in [
            ("document", "photo"),
            ("document", "plan"),
            ("folder", "shared"),
            ("camera", "cam1"),
        ] {
            for action in ["read", "write", "play"] {
                for org in [None, Some("acme"), Some("acme-eu"), Some("globex")] {
                    let mut resource = json!({"type": t, "key": k});
                    if let Some(o) = org {
                        resource["tenant"] = json!(o);
                    }
                    checks.push(json!({"user": user, "action": action, "resource": resource}));
                    let d = want.decide(&Query {
                        subject: Subject::User(user),
                        action,
                        resource_type: t,
                        resource_key: Some(k),
                        org,
                        group_type: None,
                        request: None,
                    });
                    expected.push(json!({"allow": d.allow, "reason": d.reason.as_str()}));
                }
            }
        }
    }
    let (st, v) = p.post("/allowed/bulk", json!(checks));
    assert_eq!((st, v["version"].clone()), (200, json!(want.version())), "{what}: {v}");
    let got: Vec<Value> = v["allow"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| json!({"allow": a["allow"], "reason": a["reason"]}))
        .collect();
    for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
        assert_eq!(g, e, "{what}: {}", checks[i]);
    }
}
