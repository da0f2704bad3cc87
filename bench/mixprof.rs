//! The mix of `bench/picks.rs` in a plain loop on one size, for `perf record`:
//! `cargo run --release --example mixprof -- SIZE [SECONDS] [mix | REASON]`, e.g.
//! `perf record target/release/examples/mixprof 1m 10 no_matching_grant`. Generates and builds
//! the size (`bench/sizes.rs`), keeps the 1,024 checks of the mix (or only those `decide` answers
//! with REASON), then decides them over and over for SECONDS (5) and prints ns per decision.
//! Unlike `casbin_sizes`, nothing else runs between rounds: the figure is the warm loop.
#![allow(clippy::expect_used, clippy::panic)]
permd::jemalloc!();
#[path = "picks.rs"]
mod picks;
#[path = "sizes.rs"]
mod sizes;
use permd::index::{Index, Query};
use permd::model::generate::generate;
use picks::{OwnedQuery, Shape};
use std::hint::black_box;
use std::time::Instant;

fn main() {
    let size = std::env::args().nth(1).unwrap_or("1m".into());
    let secs: f64 = std::env::args().nth(2).and_then(|s| s.parse().ok()).unwrap_or(5.0);
    let which = std::env::args().nth(3).unwrap_or("mix".into());
    let n = sizes::assignments(&size).expect("size");
    let s = generate(&sizes::params_of(&size, n));
    let t = Instant::now();
    let index = Index::build(&s);
    eprintln!("build {:?}", t.elapsed());
    let shape = Shape::new(&s);
    let mix = shape.mix(&s, 1024);
    let mut qs: Vec<Query<'_>> = mix.iter().map(OwnedQuery::query).collect();
    if which != "mix" {
        qs.retain(|q| index.decide(q).reason.as_str() == which);
    }
    if qs.is_empty() {
        let reasons: Vec<&str> = permd::index::Reason::ALL.iter().map(|r| r.as_str()).collect();
        eprintln!("no check of the mix is answered with `{which}`; `mix` or one of {reasons:?}");
        std::process::exit(2);
    }
    eprintln!("{} queries", qs.len());
    let t = Instant::now();
    let mut k = 0u64;
    while t.elapsed().as_secs_f64() < secs {
        for q in &qs {
            black_box(index.decide(black_box(q)));
        }
        k += qs.len() as u64;
    }
    eprintln!("{:.1} ns/decision", t.elapsed().as_nanos() as f64 / k as f64);
}
