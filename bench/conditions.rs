//! Conditions in-process, on the generated 1M-assignment snapshot (100k resources):
//! `cargo run --release --example conditions_bench -- [SECONDS]`.
//!
//! The snapshot gains, on every document, stored attributes `dept` and `public` (one in ten),
//! a conditional permission on `viewer` (`document:write` when `resource.attributes.dept ==
//! user.attributes.dept`, the user's `dept` coming with the request) and a rule `public-read`
//! (`document:read` when `resource.attributes.public == true`, a resource-only condition).
//! Printed: ns per decision for the conditional allow and deny, the 1,024-check mix on the
//! snapshot without and with the conditions, and the time of a listing of the documents a
//! user without roles may read (through the rule alone) over the 100k resources, cold (the
//! first, which evaluates the rule once per document of the version) and warm.
#![allow(clippy::expect_used, clippy::panic)]
permd::jemalloc!();
#[path = "picks.rs"]
mod picks;
use permd::cond::RequestData;
use permd::index::{Index, Query, Subject};
use permd::model::generate::{Params, generate};
use permd::model::{Permission, Rule};
use picks::{OwnedQuery, Shape};
use serde_json::json;
use std::hint::black_box;
use std::time::{Duration, Instant};

/// ns per call of `f` over `secs`, after a warm-up of a tenth of that.
fn per_call(secs: f64, mut f: impl FnMut()) -> f64 {
    let warm = Instant::now();
    while warm.elapsed().as_secs_f64() < secs / 10.0 {
        f();
    }
    let t = Instant::now();
    let mut n = 0u64;
    while t.elapsed().as_secs_f64() < secs {
        for _ in 0..64 {
            f();
        }
        n += 64;
    }
    t.elapsed().as_nanos() as f64 / n as f64
}

fn main() {
    let secs: f64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(3.0);
    let plain = generate(&Params::default());
    let mut s = plain.clone();
    let mut docs = 0usize;
    for (i, r) in s.resources.iter_mut().enumerate() {
        if r.resource_type == "document" {
            docs += 1;
            let mut a = serde_json::Map::new();
            a.insert("dept".into(), json!(["legal", "sales", "ops"][i % 3]));
            a.insert("public".into(), json!(i % 10 == 0));
            r.attributes = Some(a);
        }
    }
    let viewer = s.roles.iter_mut().find(|r| r.key == "viewer").expect("viewer role");
    viewer.permissions.push(Permission {
        permission: "document:write".into(),
        when: Some("resource.attributes.dept == user.attributes.dept".into()),
    });
    s.rules.push(Rule {
        key: "public-read".into(),
        permissions: vec!["document:read".into()],
        when: "resource.attributes.public == true".into(),
        ..Rule::default()
    });
    permd::model::validate(&s).expect("valid");
    let t = Instant::now();
    let ix = Index::build(&s);
    eprintln!("built the conditional index in {:?} ({docs} documents)", t.elapsed());
    let plain_ix = Index::build(&plain);

    // A viewer (org-wide, no editor) and a document of that org: the conditional write.
    let a = s
        .role_assignments
        .iter()
        .find(|a| a.role == "viewer" && a.resource.is_none())
        .expect("an org-wide viewer");
    let holds_other = |u: &str| s.role_assignments.iter().any(|x| x.user == u && x.role != "viewer");
    let a = s
        .role_assignments
        .iter()
        .filter(|x| x.role == "viewer" && x.resource.is_none() && !holds_other(&x.user))
        .find(|_| true)
        .unwrap_or(a);
    let doc = s
        .resources
        .iter()
        .find(|r| r.resource_type == "document" && r.org == a.org)
        .expect("a document in the viewer's org");
    let dept = doc
        .attributes
        .as_ref()
        .and_then(|m| m.get("dept"))
        .cloned()
        .expect("dept");
    let same = RequestData {
        user: Some(serde_json::Map::from_iter([("dept".to_string(), dept)])),
        ..RequestData::default()
    };
    let other = RequestData {
        user: Some(serde_json::Map::from_iter([("dept".to_string(), json!("nobody"))])),
        ..RequestData::default()
    };
    let q = |data: &'static RequestData| Query {
        subject: Subject::User(Box::leak(a.user.clone().into_boxed_str())),
        action: "write",
        resource_type: "document",
        resource_key: Some(Box::leak(doc.key.clone().into_boxed_str())),
        org: None,
        group_type: None,
        request: Some(data),
    };
    let same: &'static RequestData = Box::leak(Box::new(same));
    let other: &'static RequestData = Box::leak(Box::new(other));
    let (allow, deny) = (q(same), q(other));
    assert_eq!(ix.decide(&allow).reason.as_str(), "org_role", "{allow:?}");
    assert_eq!(ix.decide(&deny).reason.as_str(), "no_matching_grant", "{deny:?}");
    let ns = per_call(secs, || {
        black_box(ix.decide(black_box(&allow)));
    });
    println!("conditional allow (viewer write, dept == request dept): {ns:.0} ns/decision");
    let ns = per_call(secs, || {
        black_box(ix.decide(black_box(&deny)));
    });
    println!("conditional deny  (the same, another dept):              {ns:.0} ns/decision");

    // The mix, on the plain index and on the conditional one.
    let shape = Shape::new(&plain);
    let mix = shape.mix(&plain, 1024);
    let qs: Vec<Query<'_>> = mix.iter().map(OwnedQuery::query).collect();
    for (name, index) in [("plain", &plain_ix), ("with conditions", &ix)] {
        let mut i = 0usize;
        let ns = per_call(secs, || {
            i = (i + 1) & 1023;
            black_box(index.decide(black_box(&qs[i])));
        });
        println!("mix of 1,024 checks, {name:<16} {ns:.1} ns/decision");
    }

    // The listing: a user with no role reads the public documents of every org (the rule).
    let t = Instant::now();
    let cold = ix.list_resources(Subject::User("nobody-at-all"), "document", "read", None);
    let cold_t = t.elapsed();
    let mut warm = Duration::MAX;
    for _ in 0..20 {
        let t = Instant::now();
        let got = ix.list_resources(Subject::User("nobody-at-all"), "document", "read", None);
        warm = warm.min(t.elapsed());
        assert_eq!(got.len(), cold.len());
    }
    println!(
        "listing through the resource-only rule over {} resources ({} documents): {} listed, cold {:.1} ms, warm {:.2} ms",
        s.resources.len(),
        docs,
        cold.len(),
        cold_t.as_secs_f64() * 1e3,
        warm.as_secs_f64() * 1e3
    );
    // The same listing where each candidate must be decided: the viewer's write (dept).
    let org = a.org.clone();
    let t = Instant::now();
    let got = ix.list_resources_with(Subject::User(&a.user), "document", "write", Some(&org), Some(same));
    println!(
        "listing through the request-dependent entry (one org, {} listed): {:.2} ms",
        got.len(),
        t.elapsed().as_secs_f64() * 1e3
    );
}
