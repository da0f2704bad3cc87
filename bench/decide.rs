//! Criterion benches of the index on the generated 1M-assignment snapshot (100k users, 100k
//! resources, 100 orgs, trees 8 deep): `decide()` on picked and mixed queries, `Index::build`,
//! `Index::apply` of a one-op batch, and casbin-rs `enforce` beside `decide` on the same users,
//! roles and orgs. Run with `cargo bench --bench decide`; see bench/README.md for the figures.
//!
//! Every query is picked from the generated data and checked to give the reason its bench is
//! named after before anything is measured, so a change to the generator cannot silently turn
//! a tree walk into an org-role hit.

// A bench that cannot find the data it is meant to measure must stop loudly, not measure
// something else: `expect` is the right tool here, unlike in the library.
#![allow(clippy::expect_used, clippy::panic)]

use casbin::CoreApi;
use criterion::{Criterion, SamplingMode, criterion_group, criterion_main};
use permd::index::{Index, Query, Reason, Subject};
use permd::model::generate::{Params, generate};
use permd::model::{DeltaBatch, Item, Op, RoleAssignment, Snapshot};
use std::collections::{HashMap, HashSet};
use std::hint::black_box;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

#[path = "picks.rs"]
mod picks;

use picks::{OwnedQuery, Shape};

/// The generated snapshot, its index, and its shape for the picks.
struct Data {
    snapshot: Snapshot,
    index: Index,
    shape: Shape,
}

fn data() -> &'static Data {
    static DATA: OnceLock<Data> = OnceLock::new();
    DATA.get_or_init(|| {
        let started = Instant::now();
        let snapshot = generate(&Params::default());
        eprintln!(
            "generated {} users / {} assignments / {} resources in {:.2?}",
            Params::default().users,
            snapshot.role_assignments.len(),
            snapshot.resources.len(),
            started.elapsed()
        );
        let started = Instant::now();
        let index = Index::build(&snapshot);
        eprintln!("index built in {:.2?}", started.elapsed());
        let shape = Shape::new(&snapshot);
        Data { snapshot, index, shape }
    })
}

impl Data {
    fn reason(&self, q: &OwnedQuery) -> Reason {
        self.index.decide(&q.query()).reason
    }

    /// (a) A document read by a user holding an org-wide role in the document's own org.
    fn pick_org_role(&self) -> OwnedQuery {
        for a in self.snapshot.role_assignments.iter().filter(|a| a.resource.is_none()) {
            let Some(doc) = self.shape.docs_by_org.get(&a.org).and_then(|d| d.first()) else {
                continue;
            };
            let q = OwnedQuery::doc(&a.user, "read", doc, &a.org);
            if self.reason(&q) == Reason::OrgRole {
                return q;
            }
        }
        panic!("no org-role allow in the generated data");
    }

    /// (b) A document at depth ≥ 6 read through an instance role held only on an ancestor
    /// folder at least four levels up (so step 4 fails and step 5 walks the chain).
    fn pick_tree_walk(&self) -> (OwnedQuery, usize, usize) {
        for (doc, org, found) in self.shape.deep_docs(6) {
            for &(user, _, up) in found.iter().filter(|f| f.2 >= 4) {
                let q = OwnedQuery::doc(user, "read", doc, org);
                if self.reason(&q) == Reason::ResourceRole {
                    return (q, self.shape.depth(doc), up);
                }
            }
        }
        panic!("no deep resource-role allow in the generated data");
    }

    /// (c) A deny after the whole walk: a document at depth ≥ 7, a user with an instance
    /// role on an ancestor that does not permit `delete`, and (preferably) an org role in
    /// the org that does not either, so steps 5 and 6 both run over the chain.
    fn pick_deep_deny(&self) -> (OwnedQuery, usize, bool) {
        let mut fallback = None;
        for (doc, org, found) in self.shape.deep_docs(7) {
            for &(user, _, _) in &found {
                let q = OwnedQuery::doc(user, "delete", doc, org);
                if self.reason(&q) != Reason::NoMatchingGrant {
                    continue;
                }
                if self.shape.holds_org_role(user, org) {
                    return (q, self.shape.depth(doc), true);
                }
                fallback.get_or_insert((q, self.shape.depth(doc), false));
            }
        }
        fallback.expect("no deep no_matching_grant deny in the generated data")
    }
}

/// Mean time per decision of each reason in the mix, measured plainly (not by criterion), to
/// show what the mix median is made of.
fn mix_breakdown(ix: &Index, qs: &[Query<'_>]) {
    const ROUNDS: u32 = 300;
    let mut by_reason: HashMap<&'static str, (usize, Duration)> = HashMap::new();
    for q in qs {
        let reason = ix.decide(q).reason.as_str();
        let started = Instant::now();
        for _ in 0..ROUNDS {
            black_box(ix.decide(black_box(q)));
        }
        let e = by_reason.entry(reason).or_default();
        e.0 += 1;
        e.1 += started.elapsed() / ROUNDS;
    }
    let mut rows: Vec<_> = by_reason.into_iter().collect();
    rows.sort();
    for (reason, (n, total)) in rows {
        eprintln!(
            "  mix: {reason:<18} {n:>4} queries, mean {:>8.0?} each (hot, repeated)",
            total / n as u32
        );
    }
}

fn decide(c: &mut Criterion) {
    let d = data();
    let ix = &d.index;
    let org_role = d.pick_org_role();
    let (tree, tree_depth, tree_up) = d.pick_tree_walk();
    let (deny, deny_depth, deny_held) = d.pick_deep_deny();
    let mix = d.shape.mix(&d.snapshot, 1024);
    let qs: Vec<Query<'_>> = mix.iter().map(OwnedQuery::query).collect();
    eprintln!("org_role pick:  {org_role:?}");
    eprintln!("tree_walk pick: {tree:?} (document depth {tree_depth}, role {tree_up} levels up)");
    eprintln!("deep_deny pick: {deny:?} (document depth {deny_depth}, holds an org role there: {deny_held})");
    mix_breakdown(ix, &qs);

    let mut g = c.benchmark_group("decide");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50);
    let q = org_role.query();
    g.bench_function("org_role_allow", |b| b.iter(|| ix.decide(black_box(&q))));
    let q = tree.query();
    g.bench_function("tree_walk_allow", |b| b.iter(|| ix.decide(black_box(&q))));
    let q = deny.query();
    g.bench_function("deep_deny_no_matching_grant", |b| b.iter(|| ix.decide(black_box(&q))));
    // Per decision: one query of the 1024 per iteration, in turn.
    let mut i = 0usize;
    g.bench_function("mix_1024", |b| {
        b.iter(|| {
            i = (i + 1) & 1023;
            ix.decide(black_box(&qs[i]))
        })
    });
    g.finish();
}

/// model.md §3 queries on the 1M index: "which documents may this user read?" (among the
/// 100k instances, every org: no tenant given) and "who may read this document?" (among the
/// 100k users). Result sizes are printed with the picks.
fn queries(c: &mut Criterion) {
    let d = data();
    let ix = &d.index;
    let org_role = d.pick_org_role();
    let (tree, _, _) = d.pick_tree_walk();
    // A user whose only roles are instance roles: every candidate goes through `decide`.
    let inst_only = d
        .snapshot
        .role_assignments
        .iter()
        .filter(|a| a.resource.is_some())
        .map(|a| a.user.as_str())
        .find(|u| {
            !d.snapshot
                .role_assignments
                .iter()
                .any(|a| a.user == *u && a.resource.is_none())
        })
        .unwrap_or(&tree.user);
    let list = |u: &str| ix.list_resources(Subject::User(u), "document", "read", None);
    eprintln!(
        "list_resources: org-role holder {} -> {} documents; instance-role holder {} -> {}; tree user {} -> {}",
        org_role.user,
        list(&org_role.user).len(),
        inst_only,
        list(inst_only).len(),
        tree.user,
        list(&tree.user).len()
    );
    let doc = tree.key.clone().expect("the tree pick names a document");
    let root_doc = d
        .shape
        .docs_by_org
        .get(org_role.org.as_deref().unwrap_or(""))
        .and_then(|v| v.first())
        .cloned();
    let root_doc = root_doc.expect("the org-role pick's org has documents");
    let who = |k: &str| ix.authorized_users("read", "document", Some(k), None);
    eprintln!(
        "authorized_users: deep document {doc} -> {} users; document {root_doc} -> {} users",
        who(&doc).len(),
        who(&root_doc).len()
    );

    let mut g = c.benchmark_group("query");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50);
    g.bench_function("list_resources_org_role_user", |b| {
        b.iter(|| list(black_box(&org_role.user)))
    });
    g.bench_function("list_resources_instance_role_user", |b| {
        b.iter(|| list(black_box(inst_only)))
    });
    g.bench_function("list_resources_tree_user", |b| b.iter(|| list(black_box(&tree.user))));
    g.bench_function("authorized_users_deep_document", |b| b.iter(|| who(black_box(&doc))));
    g.bench_function("authorized_users_document", |b| b.iter(|| who(black_box(&root_doc))));
    g.finish();
}

fn build(c: &mut Criterion) {
    let d = data();
    let mut g = c.benchmark_group("index");
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500));
    // Ten builds of ~2 s each: ask for that much time so criterion does not warn.
    g.measurement_time(Duration::from_secs(25));
    // The old index is dropped outside the timing: build time only.
    g.bench_function("build_1m", |b| {
        b.iter_with_large_drop(|| Index::build(black_box(&d.snapshot)))
    });
    g.finish();

    let ix = &d.index;
    let v = ix.version();
    // An org-wide assignment the data does not have yet, and an instance assignment on a
    // folder with holders already (its holder list is copied on write).
    let user = "u1";
    let have: HashSet<(&str, &str)> = d
        .shape
        .org_roles
        .get(user)
        .into_iter()
        .flatten()
        .map(|(o, r)| (o.as_str(), r.as_str()))
        .collect();
    let org = (0..100)
        .map(|i| format!("t{i}"))
        .find(|o| !have.contains(&(o.as_str(), "auditor")))
        .expect("a free org");
    let org_batch = DeltaBatch {
        from_version: v,
        to_version: v + 1,
        ops: vec![Op::Upsert(Item::RoleAssignment(RoleAssignment {
            user: user.into(),
            role: "auditor".into(),
            org,
            resource: None,
        }))],
    };
    let (folder, holders) = {
        let mut h: Vec<_> = d.shape.holders.iter().collect();
        h.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(b.0)));
        h.into_iter().next().expect("a folder with holders")
    };
    let inst_batch = DeltaBatch {
        from_version: v,
        to_version: v + 1,
        ops: vec![Op::Upsert(Item::RoleAssignment(RoleAssignment {
            user: "u-new".into(),
            role: "editor".into(),
            org: holders[0].2.clone(),
            resource: Some(format!("folder:{folder}")),
        }))],
    };
    for b in [&org_batch, &inst_batch] {
        let next = ix.apply(b).expect("the batch applies");
        assert_eq!(next.counts().role_assignments, ix.counts().role_assignments + 1);
    }
    let mut g = c.benchmark_group("apply");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50);
    // The new index is dropped inside the timing: replacing a version costs that too.
    g.bench_function("one_op_org_assignment", |b| b.iter(|| ix.apply(black_box(&org_batch))));
    g.bench_function("one_op_instance_assignment", |b| {
        b.iter(|| ix.apply(black_box(&inst_batch)))
    });
    g.finish();
}

#[path = "casbin_model.rs"]
mod casbin_model;

fn casbin_vs_permd(c: &mut Criterion) {
    let d = data();
    let ix = &d.index;
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a tokio runtime");
    // The first 100k org-wide assignments (casbin has no org tree and no instances).
    let subset: Vec<&RoleAssignment> = d
        .snapshot
        .role_assignments
        .iter()
        .filter(|a| a.resource.is_none())
        .take(100_000)
        .collect();
    let started = Instant::now();
    let enforcer = casbin_model::load_enforcer(&rt, &subset);
    eprintln!(
        "casbin loaded {} grouping policies in {:.2?}",
        subset.len(),
        started.elapsed()
    );

    // Allow: a loaded viewer assignment reading a document of its org. Deny: the same user
    // deleting it (a viewer may not; no other loaded role of theirs in that org may either).
    let a = subset
        .iter()
        .find(|a| {
            a.role == "viewer"
                && d.shape
                    .org_roles
                    .get(&a.user)
                    .is_some_and(|v| v.iter().filter(|(o, _)| *o == a.org).count() == 1)
        })
        .expect("a viewer assignment");
    let doc = d
        .shape
        .docs_by_org
        .get(&a.org)
        .and_then(|v| v.first())
        .expect("a document in the org");
    let allow = OwnedQuery::doc(&a.user, "read", doc, &a.org);
    let deny = OwnedQuery::doc(&a.user, "delete", doc, &a.org);
    let ok = |q: &OwnedQuery| enforcer.enforce((q.user.as_str(), q.org.as_deref().unwrap_or(""), "document", q.action));
    assert_eq!(ok(&allow).ok(), Some(true), "casbin allows {allow:?}");
    assert_eq!(ok(&deny).ok(), Some(false), "casbin denies {deny:?}");
    assert_eq!(d.reason(&allow), Reason::OrgRole);
    let deny_reason = d.reason(&deny);
    assert!(!deny_reason.allows(), "permd denies {deny:?}");
    eprintln!(
        "casbin/permd picks: allow {allow:?}, deny {deny:?} (permd: {})",
        deny_reason.as_str()
    );

    let mut g = c.benchmark_group("casbin_vs_permd");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    let (qa, qd) = (allow.query(), deny.query());
    g.bench_function("casbin_enforce_allow", |b| {
        b.iter(|| enforcer.enforce(black_box((allow.user.as_str(), a.org.as_str(), "document", "read"))))
    });
    g.bench_function("permd_decide_allow", |b| b.iter(|| ix.decide(black_box(&qa))));
    g.bench_function("casbin_enforce_deny", |b| {
        b.iter(|| enforcer.enforce(black_box((deny.user.as_str(), a.org.as_str(), "document", "delete"))))
    });
    g.bench_function("permd_decide_deny", |b| b.iter(|| ix.decide(black_box(&qd))));
    g.finish();
}

/// What observing a decision costs the check path: `record_decisions` with metrics off (the
/// default registry unset), on, and on with the decision log sampling 1% into /dev/null.
/// Runs in that order, since turning metrics on cannot be undone in one process.
fn observe(c: &mut Criterion) {
    use permd::metrics::{Api, record_decisions};
    let mut g = c.benchmark_group("observe");
    g.warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(30);
    let body = br#"{"user":"u1","action":"read","resource":"document:d1-1"}"#;
    let run = |b: &mut criterion::Bencher<'_>| {
        b.iter(|| {
            record_decisions(
                Api::Allowed,
                Instant::now(),
                black_box(&[Reason::OrgRole]),
                7,
                || serde_json::from_slice(body).unwrap_or_default(),
                None,
            )
        })
    };
    g.bench_function("record_metrics_off", run);
    permd::metrics::init();
    g.bench_function("record_metrics_on", run);
    let log = permd::decision_log::Settings {
        output: permd::decision_log::Output::File("/dev/null".into()),
        sample_rate: 0.01,
        buffer: 10_000,
        mask: vec![],
    };
    if permd::decision_log::init(log).is_ok() {
        g.bench_function("record_metrics_on_log_1pct", run);
    }
    g.finish();
}

criterion_group!(benches, decide, queries, observe, build, casbin_vs_permd);
criterion_main!(benches);
