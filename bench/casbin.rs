//! casbin-rs `enforce` beside permd `decide` on the same generated data at 1k, 100k and 1M
//! role assignments, and `decide` on the 1,024-check mix of bench/picks.rs at each size (is
//! `decide` flat from 1k to 1M?). Plain timing loops, not criterion: per figure, the median of
//! `BATCHES` batches of about 20 ms each; the mix is measured after every size is built, one
//! batch per size in turns, so the sizes are compared under the same machine conditions.
//! `MIX_DETAIL=1` also prints, per size, the mix's checks by reason and their time.
//!
//! `cargo run --release --example casbin_sizes -- [SIZES]` (comma-separated, `1k,100k,1m` by
//! default, or env `SIZES`; env `BATCHES` (15), `CASBIN_MAX` (no cap) caps the grouping
//! policies given to casbin). Rows prefixed `TABLE|` are for bench/run.sh.
//!
//! Same data: at each size the snapshot is generated with the parameters of bench/sizes.rs;
//! permd gets the whole snapshot (org tree, folder trees, instance roles, grants), casbin every
//! org-wide assignment of it as a grouping policy `g(user, role, org)` (casbin has no org tree
//! and no resource instances; the model is bench/decide.rs's RBAC with domains). The allow
//! and deny checks are picked so both engines give the same answer, asserted before timing.

// A bench that cannot find the data it is meant to measure must stop loudly, not measure
// something else: `expect` and `panic` are the right tools here, unlike in the library.
#![allow(clippy::expect_used, clippy::panic)]

// The allocator of the permd binary (src/main.rs): where the index's records land in memory
// is part of what `decide` costs on a big index.
permd::jemalloc!();

#[path = "picks.rs"]
mod picks;
#[path = "sizes.rs"]
mod sizes;

use casbin::CoreApi;
use permd::index::{Index, Query};
use permd::model::RoleAssignment;
use permd::model::generate::generate;
use picks::{OwnedQuery, Shape};
use std::hint::black_box;
use std::time::{Duration, Instant};

#[path = "casbin_model.rs"]
mod casbin_model;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Median time per call of `f` over `batches` batches of about 20 ms each.
fn per_call(batches: usize, mut f: impl FnMut()) -> Duration {
    let mut calls = |n: u32| {
        for _ in 0..n {
            f();
        }
    };
    let n = batch_size(&mut calls);
    median(
        (0..batches.max(1))
            .map(|_| {
                let t = Instant::now();
                calls(n);
                t.elapsed() / n
            })
            .collect(),
    )
}

/// The number of calls that makes a batch of about 20 ms: `run(n)` makes `n` calls.
fn batch_size(mut run: impl FnMut(u32)) -> u32 {
    let mut n = 1u32;
    loop {
        let t = Instant::now();
        run(n);
        if t.elapsed() >= Duration::from_millis(20) || n >= 1 << 26 {
            return n;
        }
        n *= 2;
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn fmt(d: Duration) -> String {
    let ns = d.as_secs_f64() * 1e9;
    if ns >= 1000.0 {
        format!("{:.2} µs", ns / 1000.0)
    } else {
        format!("{ns:.0} ns")
    }
}

struct Row {
    name: String,
    assignments: usize,
    loaded: usize,
    org_wide: usize,
    load: Duration,
    casbin_allow: Duration,
    permd_allow: Duration,
    casbin_deny: Duration,
    permd_deny: Duration,
    mix: Duration,
}

fn run(name: &str, n: usize, batches: usize, cap: usize) -> (Row, Index, Vec<OwnedQuery>) {
    let t = Instant::now();
    let snapshot = generate(&sizes::params(n));
    let index = Index::build(&snapshot);
    let shape = Shape::new(&snapshot);
    eprintln!(
        "[casbin] {name}: generated and built {} assignments in {:.1?}",
        snapshot.role_assignments.len(),
        t.elapsed()
    );
    let org_wide: Vec<&RoleAssignment> = snapshot
        .role_assignments
        .iter()
        .filter(|a| a.resource.is_none())
        .collect();
    let loaded: Vec<&RoleAssignment> = org_wide.iter().take(cap).copied().collect();

    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a tokio runtime");
    let t = Instant::now();
    let enforcer = casbin_model::load_enforcer(&rt, &loaded);
    let load = t.elapsed();
    eprintln!(
        "[casbin] {name}: casbin loaded {} of {} org-wide assignments as grouping policies in {load:.2?}",
        loaded.len(),
        org_wide.len()
    );

    let casbin = |q: &OwnedQuery| {
        enforcer
            .enforce((
                q.user.as_str(),
                q.org.as_deref().unwrap_or(""),
                q.resource_type,
                q.action,
            ))
            .expect("casbin enforces")
    };
    let permd = |q: &OwnedQuery| index.decide(&q.query()).reason.allows();
    // Allow: a loaded viewer reads a document of its org; deny: the same user deletes it.
    // Both engines must agree on both.
    let (allow, deny) = loaded
        .iter()
        .filter(|a| a.role == "viewer")
        .find_map(|a| {
            let doc = shape.docs_by_org.get(&a.org)?.first()?;
            let allow = OwnedQuery::doc(&a.user, "read", doc, &a.org);
            let deny = OwnedQuery::doc(&a.user, "delete", doc, &a.org);
            (casbin(&allow) && permd(&allow) && !casbin(&deny) && !permd(&deny)).then_some((allow, deny))
        })
        .unwrap_or_else(|| panic!("{name}: no allow/deny pair both engines agree on"));
    assert!(casbin(&allow) && permd(&allow), "both allow {allow:?}");
    assert!(!casbin(&deny) && !permd(&deny), "both deny {deny:?}");
    eprintln!(
        "[casbin] {name}: allow {allow:?} (permd: {}); deny {deny:?} (permd: {})",
        index.decide(&allow.query()).reason.as_str(),
        index.decide(&deny.query()).reason.as_str()
    );

    let req = |q: &OwnedQuery| {
        (
            q.user.clone(),
            q.org.clone().unwrap_or_default(),
            q.resource_type,
            q.action,
        )
    };
    let (ra, rd) = (req(&allow), req(&deny));
    let (qa, qd) = (allow.query(), deny.query());
    let casbin_allow = per_call(batches, || {
        black_box(
            enforcer
                .enforce(black_box((ra.0.as_str(), ra.1.as_str(), ra.2, ra.3)))
                .ok(),
        );
    });
    let permd_allow = per_call(batches, || {
        black_box(index.decide(black_box(&qa)));
    });
    let casbin_deny = per_call(batches, || {
        black_box(
            enforcer
                .enforce(black_box((rd.0.as_str(), rd.1.as_str(), rd.2, rd.3)))
                .ok(),
        );
    });
    let permd_deny = per_call(batches, || {
        black_box(index.decide(black_box(&qd)));
    });
    let mix = shape.mix(&snapshot, 1024);
    if std::env::var_os("MIX_DETAIL").is_some() {
        let qs: Vec<Query<'_>> = mix.iter().map(OwnedQuery::query).collect();
        mix_detail(name, &index, &qs, batches);
    }
    eprintln!(
        "[casbin] {name}: casbin allow {}, permd allow {}, casbin deny {}, permd deny {}",
        fmt(casbin_allow),
        fmt(permd_allow),
        fmt(casbin_deny),
        fmt(permd_deny),
    );
    let row = Row {
        name: name.into(),
        assignments: snapshot.role_assignments.len(),
        loaded: loaded.len(),
        org_wide: org_wide.len(),
        load,
        casbin_allow,
        permd_allow,
        casbin_deny,
        permd_deny,
        mix: Duration::ZERO,
    };
    (row, index, mix)
}

/// `n` decisions cycling through `qs`.
fn cycle(index: &Index, qs: &[Query<'_>], n: u32) {
    for q in qs.iter().cycle().take(n as usize) {
        black_box(index.decide(black_box(q)));
    }
}

/// The mix's time per decision at every size, measured in turns: each round runs one batch
/// of about 20 ms per size, and each size's figure is the median over `batches` rounds. A
/// machine that speeds up or slows down during the run (a shared host does) then moves every
/// size alike, instead of whichever size happened to run at the time.
fn mix_interleaved(sets: &[(Index, Vec<OwnedQuery>)], batches: usize) -> Vec<Duration> {
    let qs: Vec<Vec<Query<'_>>> = sets
        .iter()
        .map(|(_, mix)| mix.iter().map(OwnedQuery::query).collect())
        .collect();
    let ns: Vec<u32> = sets
        .iter()
        .zip(&qs)
        .map(|((index, _), qs)| batch_size(|n| cycle(index, qs, n)))
        .collect();
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); sets.len()];
    for _ in 0..batches.max(1) {
        for (((index, _), qs), (&n, out)) in sets.iter().zip(&qs).zip(ns.iter().zip(samples.iter_mut())) {
            let t = Instant::now();
            cycle(index, qs, n);
            out.push(t.elapsed() / n);
        }
    }
    samples.into_iter().map(median).collect()
}

/// What the mix is made of: per reason, how many checks and the time per decision cycling
/// through just those checks.
fn mix_detail(name: &str, index: &Index, qs: &[Query<'_>], batches: usize) {
    let mut by: std::collections::BTreeMap<&'static str, Vec<Query<'_>>> = Default::default();
    for q in qs {
        by.entry(index.decide(q).reason.as_str()).or_default().push(*q);
    }
    for (reason, group) in by {
        let mut i = 0usize;
        let t = per_call(batches, || {
            i = (i + 1) % group.len();
            if let Some(q) = group.get(i) {
                black_box(index.decide(black_box(q)));
            }
        });
        eprintln!(
            "[casbin] {name}: mix {reason:<18} {:>4} checks, {}",
            group.len(),
            fmt(t)
        );
    }
}

fn main() {
    let list = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("SIZES").ok())
        .unwrap_or_else(|| "1k,100k,1m".into());
    let sizes = sizes::parse_list(&list).unwrap_or_else(|e| panic!("{e}"));
    let batches = env_or("BATCHES", 15);
    let cap = env_or("CASBIN_MAX", usize::MAX);
    let mut rows = Vec::new();
    let mut sets = Vec::new();
    for (name, n) in &sizes {
        let (row, index, mix) = run(name, *n, batches, cap);
        rows.push(row);
        sets.push((index, mix));
    }
    for (row, mix) in rows.iter_mut().zip(mix_interleaved(&sets, batches)) {
        eprintln!("[casbin] {}: permd mix_1024 {}", row.name, fmt(mix));
        row.mix = mix;
    }
    drop(sets);

    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(1e-12);
    println!();
    println!("casbin-rs enforce vs permd decide, same generated data per size: permd has the whole snapshot,");
    println!("casbin its org-wide assignments as g(user, role, org) (no org tree, no instance roles);");
    println!("median of {batches} batches of ~20 ms per figure; mix = decide over the 1,024 checks of bench/picks.rs,");
    println!("measured at every size in turns (one batch per size per round)");
    println!();
    println!(
        "{:<5} {:>11} {:>16} {:>10} {:>12} {:>12} {:>8} {:>12} {:>12} {:>8} {:>10}",
        "size",
        "assignments",
        "casbin g lines",
        "casbin load",
        "casbin allow",
        "permd allow",
        "ratio",
        "casbin deny",
        "permd deny",
        "ratio",
        "permd mix"
    );
    for r in &rows {
        println!(
            "{:<5} {:>11} {:>16} {:>9.2}s {:>12} {:>12} {:>7.0}x {:>12} {:>12} {:>7.0}x {:>10}",
            r.name,
            r.assignments,
            r.loaded,
            r.load.as_secs_f64(),
            fmt(r.casbin_allow),
            fmt(r.permd_allow),
            ratio(r.casbin_allow, r.permd_allow),
            fmt(r.casbin_deny),
            fmt(r.permd_deny),
            ratio(r.casbin_deny, r.permd_deny),
            fmt(r.mix)
        );
    }
    println!();
    for r in &rows {
        let goal = r.name == "100k";
        let capped = if r.loaded < r.org_wide {
            format!(" (capped at {} of {} org-wide: CASBIN_MAX)", r.loaded, r.org_wide)
        } else {
            String::new()
        };
        for (what, c, p) in [
            ("allow", r.casbin_allow, r.permd_allow),
            ("deny", r.casbin_deny, r.permd_deny),
        ] {
            let x = ratio(c, p);
            println!(
                "TABLE|in-process {}|casbin enforce / permd decide, {what}|{} / {} = {x:.0}x{capped}|{}|{}",
                r.name,
                fmt(c),
                fmt(p),
                if goal { "≥ 20x at 100k" } else { "" },
                if goal { if x >= 20.0 { "yes" } else { "no" } } else { "" }
            );
        }
        println!(
            "TABLE|in-process {}|casbin load of {} grouping policies|{:.2?}||",
            r.name, r.loaded, r.load
        );
        println!(
            "TABLE|in-process {}|permd decide, mix_1024 per decision|{}||",
            r.name,
            fmt(r.mix)
        );
    }
    if rows.len() > 1 {
        let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        let picks: [(&str, Vec<Duration>); 3] = [
            ("mix_1024 per decision", rows.iter().map(|r| r.mix).collect()),
            ("the allow pick", rows.iter().map(|r| r.permd_allow).collect()),
            ("the deny pick", rows.iter().map(|r| r.permd_deny).collect()),
        ];
        for (what, times) in picks {
            let (lo, hi) = times
                .iter()
                .map(Duration::as_secs_f64)
                .fold((f64::MAX, 0f64), |(lo, hi), m| (lo.min(m), hi.max(m)));
            println!(
                "TABLE|in-process|decide flat, {what}: slowest / fastest over {}|{:.2}x|within 2x|{}",
                names.join(", "),
                hi / lo,
                if hi / lo <= 2.0 { "yes" } else { "no" }
            );
        }
    }
}
