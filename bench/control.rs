//! The control plane's load generator (`bench/control.sh` runs it against a release
//! `permd control` on a local PostgreSQL with fsync on):
//!
//! - `writes`: N concurrent writers, each sending single-op batches (`POST /v1/batches`) as fast
//!   as answers come, for a fixed time: writes/s and latency percentiles.
//! - `fanout`: S delta streams open on one replica (`GET /v1/deltas`), writes at R per second;
//!   for each write, the time from its answer (the commit) until the last stream has its line.
//! - `snapshot`: C concurrent `GET /v1/snapshot` (MessagePack) of the current version: time of
//!   the first and of all; the server's encode counter tells how many encodes they cost.
//!
//! Prints one line per scenario and its own CPU time, so it can be shown not to be the
//! bottleneck.

use futures_util::StreamExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

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

async fn write(client: &reqwest::Client, url: &str, key: &str, n: u64) -> Result<u64, String> {
    let body = format!(
        r#"{{"ops":[{{"op":"upsert","kind":"role_assignment","value":{{"user":"u{n}","role":"viewer","org":"acme"}}}}]}}"#
    );
    let resp = client
        .post(format!("{url}/v1/batches"))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("status {}", resp.status()));
    }
    resp.headers()
        .get("x-permd-version")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .ok_or_else(|| "no version".to_string())
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let url = arg("--url", "http://127.0.0.1:7780");
    let key = std::env::var("PERMD_API_KEY").unwrap_or_default();
    let scenario = arg("--scenario", "writes");
    let secs: u64 = arg("--seconds", "10").parse().unwrap_or(10);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .build()
        .unwrap_or_default();
    let counter = Arc::new(AtomicU64::new(1_000_000 * u64::from(std::process::id() % 1000)));
    let cpu0 = cpu_seconds();
    match scenario.as_str() {
        "writes" => {
            let writers: usize = arg("--writers", "16").parse().unwrap_or(16);
            let end = Instant::now() + Duration::from_secs(secs);
            let tasks: Vec<_> = (0..writers)
                .map(|_| {
                    let (client, url, key, counter) = (client.clone(), url.clone(), key.clone(), counter.clone());
                    tokio::spawn(async move {
                        let mut lat = Vec::new();
                        let mut errors = 0u64;
                        while Instant::now() < end {
                            let n = counter.fetch_add(1, Ordering::Relaxed);
                            let t = Instant::now();
                            match write(&client, &url, &key, n).await {
                                Ok(_) => lat.push(t.elapsed()),
                                Err(_) => errors += 1,
                            }
                        }
                        (lat, errors)
                    })
                })
                .collect();
            let mut all = Vec::new();
            let mut errors = 0;
            for t in tasks {
                if let Ok((lat, e)) = t.await {
                    all.extend(lat);
                    errors += e;
                }
            }
            all.sort_unstable();
            println!(
                "writes: {writers} writers, {secs} s: {} writes, {:.0} writes/s, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, errors {errors}, loadgen cpu {:.2} s",
                all.len(),
                all.len() as f64 / secs as f64,
                pct(&all, 0.5),
                pct(&all, 0.99),
                pct(&all, 1.0),
                cpu_seconds() - cpu0
            );
        }
        "fanout" => {
            let streams: usize = arg("--streams", "500").parse().unwrap_or(500);
            let rate: u64 = arg("--rate", "200").parse().unwrap_or(200);
            // The version each stream has seen, and when the last stream saw each version.
            let seen: Arc<Vec<AtomicU64>> = Arc::new((0..streams).map(|_| AtomicU64::new(0)).collect());
            let start_version = {
                let r = client
                    .get(format!("{url}/v1/snapshot"))
                    .bearer_auth(&key)
                    .send()
                    .await
                    .ok()
                    .and_then(|r| {
                        r.headers()
                            .get("etag")?
                            .to_str()
                            .ok()?
                            .trim_matches('"')
                            .parse::<u64>()
                            .ok()
                    });
                r.unwrap_or(0)
            };
            let arrivals: Arc<std::sync::Mutex<std::collections::HashMap<u64, (usize, Instant)>>> = Arc::default();
            for i in 0..streams {
                let (client, url, key, seen, arrivals) =
                    (client.clone(), url.clone(), key.clone(), seen.clone(), arrivals.clone());
                tokio::spawn(async move {
                    let Ok(resp) = client
                        .get(format!("{url}/v1/deltas?since={start_version}"))
                        .bearer_auth(&key)
                        .send()
                        .await
                    else {
                        return;
                    };
                    let mut body = resp.bytes_stream();
                    let mut buf = Vec::new();
                    while let Some(Ok(chunk)) = body.next().await {
                        buf.extend_from_slice(&chunk);
                        while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                            let line: Vec<u8> = buf.drain(..=nl).collect();
                            let Some(v) = serde_json::from_slice::<serde_json::Value>(&line)
                                .ok()
                                .and_then(|v| v["to_version"].as_u64())
                            else {
                                continue;
                            };
                            seen[i].store(v, Ordering::Relaxed);
                            if let Ok(mut a) = arrivals.lock() {
                                let e = a.entry(v).or_insert((0, Instant::now()));
                                e.0 += 1;
                                e.1 = Instant::now();
                            }
                        }
                    }
                });
            }
            // Let every stream open.
            let open_by = Instant::now() + Duration::from_secs(10);
            while Instant::now() < open_by {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let r = client.get(format!("{url}/metrics")).send().await;
                let text = match r {
                    Ok(r) => r.text().await.unwrap_or_default(),
                    Err(_) => String::new(),
                };
                let open = text
                    .lines()
                    .find_map(|l| l.strip_prefix("permd_control_delta_streams "))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if open >= streams {
                    break;
                }
            }
            let mut committed = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
            let end = Instant::now() + Duration::from_secs(secs);
            let mut writes = Vec::new();
            while Instant::now() < end {
                tick.tick().await;
                let (client, url, key) = (client.clone(), url.clone(), key.clone());
                let n = counter.fetch_add(1, Ordering::Relaxed);
                writes.push(tokio::spawn(async move {
                    let r = write(&client, &url, &key, n).await;
                    (r, Instant::now())
                }));
            }
            for w in writes {
                if let Ok((Ok(v), at)) = w.await {
                    committed.push((v, at));
                }
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
            let arrivals = arrivals.lock().map(|a| a.clone()).unwrap_or_default();
            let mut lat = Vec::new();
            let mut incomplete = 0;
            for (v, at) in &committed {
                match arrivals.get(v) {
                    Some((n, last)) if *n == streams => lat.push(last.saturating_duration_since(*at)),
                    _ => incomplete += 1,
                }
            }
            lat.sort_unstable();
            println!(
                "fanout: {streams} streams, {rate} writes/s for {secs} s: {} writes, commit -> last stream p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, not delivered to all {incomplete}, loadgen cpu {:.2} s",
                committed.len(),
                pct(&lat, 0.5),
                pct(&lat, 0.99),
                pct(&lat, 1.0),
                cpu_seconds() - cpu0
            );
        }
        "snapshot" => {
            let concurrent: usize = arg("--concurrent", "50").parse().unwrap_or(50);
            let t0 = Instant::now();
            let tasks: Vec<_> = (0..concurrent)
                .map(|_| {
                    let (client, url, key) = (client.clone(), url.clone(), key.clone());
                    tokio::spawn(async move {
                        let r = client
                            .get(format!("{url}/v1/snapshot"))
                            .bearer_auth(&key)
                            .header("accept", "application/msgpack")
                            .send()
                            .await
                            .ok()?;
                        let bytes = r.bytes().await.ok()?;
                        Some((bytes.len(), t0.elapsed()))
                    })
                })
                .collect();
            let mut done = Vec::new();
            for t in tasks {
                if let Ok(Some(d)) = t.await {
                    done.push(d);
                }
            }
            done.sort_by_key(|d| d.1);
            let first = done.first().map(|d| d.1.as_secs_f64()).unwrap_or(0.0);
            let last = done.last().map(|d| d.1.as_secs_f64()).unwrap_or(0.0);
            println!(
                "snapshot: {concurrent} concurrent requests, {} answered, {} bytes each, first {:.2} s, all {:.2} s, loadgen cpu {:.2} s",
                done.len(),
                done.first().map(|d| d.0).unwrap_or(0),
                first,
                last,
                cpu_seconds() - cpu0
            );
        }
        other => eprintln!("unknown scenario `{other}`: writes, fanout or snapshot"),
    }
}
