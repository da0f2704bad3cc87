//! The bearer key check in-process: how long `Keys::verify` takes for the right key and for
//! wrong keys that differ from it at the first or at the last character (a comparison that
//! stopped at the first difference would be faster for the former), and the whole gate
//! (`Gate::http`: header parsing, SHA-256, compare) per request.
//!
//!   cargo run --release --example auth_timing [KEYS_IN_SET] [ROUNDS]
//!
//! Variants are interleaved round by round (each round times CALLS calls of each), so drift of
//! the machine hits them alike; the table gives the median and spread of ns per call.

use permd::auth::{Gate, Keys};
use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

const CALLS: u32 = 200_000;

fn flip(s: &str, at: usize) -> String {
    let mut b = s.as_bytes().to_vec();
    b[at] = if b[at] == b'a' { b'b' } else { b'a' };
    String::from_utf8(b).unwrap_or_default()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n_keys: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(3);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(31);
    // Keys like Permit's: a prefix and 64 hex characters.
    let keys: Vec<String> = (0..n_keys.max(1))
        .map(|i| {
            format!(
                "permit_key_{:064x}",
                0x9e37_79b9_7f4a_7c15u128.wrapping_mul(i as u128 + 7)
            )
        })
        .collect();
    let set = Arc::new(match Keys::load(&keys, None) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("{e}");
            return;
        }
    });
    let right = keys[keys.len() - 1].clone();
    let variants: Vec<(&str, String)> = vec![
        ("right key (last of the set)", right.clone()),
        ("wrong at the first character", flip(&right, 0)),
        ("wrong at the last character", flip(&right, right.len() - 1)),
        (
            "wrong: right key minus its last character",
            right[..right.len() - 1].to_string(),
        ),
    ];
    let mut ns: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    for _ in 0..rounds {
        for (i, (_, key)) in variants.iter().enumerate() {
            let t = Instant::now();
            for _ in 0..CALLS {
                black_box(set.verify(black_box(key.as_bytes())));
            }
            ns[i].push(t.elapsed().as_nanos() as f64 / CALLS as f64);
        }
    }
    println!(
        "Keys::verify, {} keys in the set, {rounds} rounds x {CALLS} calls",
        keys.len()
    );
    let mut medians = Vec::new();
    for (i, (name, _)) in variants.iter().enumerate() {
        let (lo, hi) = (
            ns[i].iter().cloned().fold(f64::MAX, f64::min),
            ns[i].iter().cloned().fold(0.0, f64::max),
        );
        let m = median(&mut ns[i]);
        medians.push(m);
        println!("  {name:<44} median {m:7.1} ns  (min {lo:7.1}, max {hi:7.1})");
    }
    println!(
        "  wrong-at-last / wrong-at-first: {:.3}; right / wrong-at-first: {:.3}",
        medians[2] / medians[1],
        medians[0] / medians[1]
    );

    // The whole gate on a request, as the listener runs it.
    let gate = Gate::new(Some(set), true, &[]);
    let req = match http::Request::builder()
        .uri("/allowed")
        .header("authorization", format!("Bearer {right}"))
        .body(())
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            return;
        }
    };
    let mut per = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        for _ in 0..CALLS {
            black_box(gate.http(black_box(&req)).is_none());
        }
        per.push(t.elapsed().as_nanos() as f64 / CALLS as f64);
    }
    println!(
        "Gate::http with the right key: median {:.1} ns per request",
        median(&mut per)
    );
}
