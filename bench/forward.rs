//! Writes through a sidecar, end to end (control.md, "Writes through a sidecar"): an open-loop
//! load generator sending Permit facts writes (`POST /facts/role_assignments`, a new user each
//! time) to a sidecar at a fixed rate, timing each answer. A forwarded write is answered once the
//! sidecar's own index has its version, so each time covers sidecar → control plane → PostgreSQL
//! commit → change feed → delta stream → the sidecar's index → answer. After each answer a
//! `/allowed` on the same sidecar checks the write is seen (stale reads are counted). Scenarios:
//!
//! - `forward` (default): the above, `--rate` writes/s for `--seconds`.
//! - `direct`: the same writes straight to the control plane's `/v2/facts/…` (no sidecar, no
//!   wait for a stream), for comparison.
//!
//! Prints p50/p99/max, errors, answers not synced, stale reads, and its own CPU time.
//!
//! Running it (release binaries, a throwaway local PostgreSQL as examples/control-plane.sh
//! starts one; fsync on, the server's defaults):
//!
//! ```bash
//! cargo build --release --bin permd --example forward_bench
//! bindir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1); dir=$(mktemp -d); chmod 755 "$dir"
//! as_pg=(); [ "$(id -u)" = 0 ] && { chown postgres: "$dir"; as_pg=(runuser -u postgres --); }
//! "${as_pg[@]}" "$bindir/initdb" -D "$dir/data" -U permd -A trust >/dev/null
//! "${as_pg[@]}" "$bindir/pg_ctl" -D "$dir/data" -l "$dir/pg.log" -w -o "-p 55433 -k $dir -c listen_addresses=127.0.0.1" start
//! "$bindir/createdb" -h 127.0.0.1 -p 55433 -U permd permd
//! export PERMD_CONTROL_DATABASE=postgres://permd@127.0.0.1:55433/permd
//! target/release/permd control --http-addr 127.0.0.1:17780 --rate-limit-hour 0 --rate-limit-minute 0 --log-level warn &
//! export PERMD_API_KEY=$(target/release/permd control keys create --org bench --project fwd | tail -n 1)
//! target/release/permd serve --config /dev/null --source http://127.0.0.1:17780 --log-level warn &
//! target/release/examples/forward_bench --control http://127.0.0.1:17780 --sidecar http://127.0.0.1:7766 \
//!     --rate 100 --seconds 20
//! target/release/examples/forward_bench --control http://127.0.0.1:17780 --scenario direct --rate 100 --seconds 20
//! kill %1 %2; "${as_pg[@]}" "$bindir/pg_ctl" -D "$dir/data" stop; rm -rf "$dir"
//! ```
//!
//! The run of record is in bench/README.md, "Control plane" (2 cores; figures
//! move with the host).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// Creates tenant `bench` and role `viewer` (`document:read`) on the control plane when absent;
/// the facts path prefix of the key's project.
async fn setup(client: &reqwest::Client, control: &str, key: &str) -> Result<String, String> {
    let project: serde_json::Value = client
        .get(format!("{control}/v1/project"))
        .bearer_auth(key)
        .send()
        .await
        .map_err(|e| e.to_string())?
        .bytes()
        .await
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))?;
    let (p, e) = (
        project["project"].as_str().unwrap_or_default(),
        project["env"].as_str().unwrap_or_default(),
    );
    for (path, body) in [
        (
            format!("/v2/facts/{p}/{e}/tenants"),
            serde_json::json!({"key": "bench"}),
        ),
        (
            format!("/v2/schema/{p}/{e}/resources"),
            serde_json::json!({"key": "document", "actions": ["read"]}),
        ),
        (
            format!("/v2/schema/{p}/{e}/roles"),
            serde_json::json!({"key": "viewer", "permissions": ["document:read"]}),
        ),
    ] {
        let status = client
            .post(format!("{control}{path}"))
            .bearer_auth(key)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| e.to_string())?
            .status();
        if !status.is_success() && status.as_u16() != 409 {
            return Err(format!("{path}: {status}"));
        }
    }
    Ok(format!("/v2/facts/{p}/{e}"))
}

#[derive(Default)]
struct Tally {
    times: Vec<Duration>,
    errors: u64,
    /// Errors by status (0: no answer), with the first message of each.
    why: std::collections::BTreeMap<u16, (u64, String)>,
    not_synced: u64,
    stale: u64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let control = arg("--control", "http://127.0.0.1:7780");
    let sidecar = arg("--sidecar", "http://127.0.0.1:7766");
    let scenario = arg("--scenario", "forward");
    let rate: u64 = arg("--rate", "100").parse().unwrap_or(100).max(1);
    let secs: u64 = arg("--seconds", "20").parse().unwrap_or(20);
    let key = std::env::var("PERMD_API_KEY").unwrap_or_default();
    // reqwest is built without a crypto provider of its own (plain http here, but it asks).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .tcp_nodelay(true)
        .build()
        .unwrap_or_default();
    let facts = match setup(&client, &control, &key).await {
        Ok(f) => f,
        Err(e) => {
            eprintln!("setup failed: {e}");
            std::process::exit(1);
        }
    };
    let (base, direct) = match scenario.as_str() {
        "direct" => (format!("{control}{facts}"), true),
        _ => (format!("{sidecar}/facts"), false),
    };
    // Distinct users per run, so every write changes something.
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    let tally = Arc::new(Mutex::new(Tally::default()));
    let counter = Arc::new(AtomicU64::new(0));
    let cpu0 = cpu_seconds();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let end = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    while Instant::now() < end {
        tick.tick().await;
        let (client, base, key, sidecar, tally) = (
            client.clone(),
            base.clone(),
            key.clone(),
            sidecar.clone(),
            tally.clone(),
        );
        let n = counter.fetch_add(1, Ordering::Relaxed);
        tasks.push(tokio::spawn(async move {
            let user = format!("w{run}-{n}");
            let body = serde_json::json!({"user": user, "role": "viewer", "tenant": "bench"});
            let mut req = client
                .post(format!("{base}/role_assignments"))
                .header("content-type", "application/json")
                .body(body.to_string());
            if direct {
                req = req.bearer_auth(&key);
            }
            let started = Instant::now();
            let resp = req.send().await;
            let elapsed = started.elapsed();
            let resp = match resp {
                Ok(r) if r.status().as_u16() == 201 => r,
                Ok(r) => {
                    let status = r.status().as_u16();
                    let text = r.text().await.unwrap_or_default();
                    let mut t = tally.lock().await;
                    t.errors += 1;
                    t.why.entry(status).or_insert((0, text)).0 += 1;
                    return;
                }
                Err(e) => {
                    let mut t = tally.lock().await;
                    t.errors += 1;
                    t.why.entry(0).or_insert((0, e.to_string())).0 += 1;
                    return;
                }
            };
            let mut t = tally.lock().await;
            t.times.push(elapsed);
            if direct {
                return;
            }
            let synced = resp.headers().get("x-permd-synced").and_then(|v| v.to_str().ok()) == Some("true");
            if !synced {
                t.not_synced += 1;
            }
            drop(t);
            let check = serde_json::json!({"user": user, "action": "read", "resource": {"type": "document", "tenant": "bench"}});
            let sent = client
                .post(format!("{sidecar}/allowed"))
                .header("content-type", "application/json")
                .body(check.to_string())
                .send()
                .await;
            let seen = match sent {
                Ok(r) => r
                    .bytes()
                    .await
                    .ok()
                    .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                    .and_then(|v| v["allow"].as_bool())
                    .unwrap_or(false),
                Err(_) => false,
            };
            if !seen {
                tally.lock().await.stale += 1;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let mut t = tally.lock().await;
    t.times.sort();
    let n = t.times.len();
    println!(
        "{scenario}: {rate} writes/s for {secs} s: {n} answered, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, errors {}, not synced {}, stale reads {}, loadgen cpu {:.2} s",
        pct(&t.times, 0.5),
        pct(&t.times, 0.99),
        pct(&t.times, 1.0),
        t.errors,
        t.not_synced,
        t.stale,
        cpu_seconds() - cpu0
    );
    for (status, (n, first)) in &t.why {
        println!("  {n} errors with status {status}, e.g. {first}");
    }
}
