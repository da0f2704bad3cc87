//! The soak: minutes of mixed checks and deltas against the real binary, with the stand-in
//! upstream restarted at random (its history lost, so permd resumes or gets 410 and a fresh
//! snapshot), the cache on. At the end every decision agrees with a fresh load of the final
//! snapshot, no check was ever refused or failed, and RSS stayed within a stated bound.
//!
//! Ignored by the plain test run; `bash bench/soak.sh [SECONDS]` runs it (release build),
//! or `SOAK_SECONDS=120 cargo test --release --test soak -- --ignored --nocapture`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod churn;
mod common;
mod upstream;

use common::{Permd, example};
use permd::index::Index;
use permd::model::{Encoding, Snapshot};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use upstream::Upstream;

/// RSS may grow at most this much over its value after the first 10 seconds.
const RSS_GROWTH_BOUND_KIB: u64 = 64 * 1024;

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Checks on one keep-alive connection, as fast as they come back; counts answers, and
/// anything that is not a 200 with a decision.
fn checker(addr: String, stop: Arc<AtomicBool>, answered: Arc<AtomicU64>, failed: Arc<AtomicU64>) {
    let bodies = [
        json!({"user": "alice", "action": "write", "resource": "document:photo"}),
        json!({"user": "dave", "action": "read", "resource": {"type": "document", "key": "plan", "tenant": "acme-eu"}}),
        json!({"user": "carol", "action": "play", "resource": "camera:cam1"}),
    ];
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        let body = bodies[i % bodies.len()].to_string();
        i += 1;
        let req = format!(
            "POST /allowed HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        if s.write_all(req.as_bytes()).is_err() {
            failed.fetch_add(1, Ordering::Relaxed);
            s = TcpStream::connect(&addr).unwrap();
            continue;
        }
        let text = read_response(&mut s, &mut buf);
        if text.starts_with("HTTP/1.1 200") && text.contains("\"allow\":") {
            answered.fetch_add(1, Ordering::Relaxed);
        } else {
            failed.fetch_add(1, Ordering::Relaxed);
            eprintln!("check failed: {text}");
            s = TcpStream::connect(&addr).unwrap();
        }
    }
}

/// One HTTP/1.1 response with a content-length, read whole (empty on error).
fn read_response(s: &mut TcpStream, buf: &mut [u8]) -> String {
    let mut have = 0;
    loop {
        let n = match s.read(&mut buf[have..]) {
            Ok(0) | Err(_) => return String::new(),
            Ok(n) => n,
        };
        have += n;
        let text = String::from_utf8_lossy(&buf[..have]);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_string())
                })
                .and_then(|v| v.parse::<usize>().ok());
            if len.is_some_and(|len| body.len() >= len) {
                return text.into_owned();
            }
        }
        if have == buf.len() {
            return String::new();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "minutes long; run by bench/soak.sh"]
async fn soak() {
    let seconds: u64 = std::env::var("SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    let seed: u64 = std::env::var("SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let mut rng = SmallRng::seed_from_u64(seed);
    let start_doc = Snapshot::load(example().as_bytes(), Encoding::Yaml).unwrap();
    let mut up = Upstream::start(start_doc, 0).await;
    let port = up.addr.port();
    let cache = tempfile::tempdir().unwrap();
    let p = Permd::follow(
        &up.url(),
        &[
            "--upstream-timeout",
            "1s",
            "--cache-dir",
            cache.path().to_str().unwrap(),
        ],
        &[],
    );
    p.ready();
    let pid = p.child.id();

    let stop = Arc::new(AtomicBool::new(false));
    let (answered, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let checkers: Vec<_> = (0..2)
        .map(|_| {
            let (addr, stop, a, f) = (p.addr.clone(), stop.clone(), answered.clone(), failed.clone());
            std::thread::spawn(move || checker(addr, stop, a, f))
        })
        .collect();

    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut next_restart = started + Duration::from_secs(rng.random_range(5..15));
    let mut rss_base = None;
    let mut rss_max = 0;
    let mut last_rss_sample = started;
    let (mut batches, mut restarts, mut outages) = (0u64, 0u64, 0u64);
    while Instant::now() < deadline {
        let from = up.version();
        up.publish(&churn::random_batch(&mut rng, from));
        batches += 1;
        tokio::time::sleep(Duration::from_millis(rng.random_range(1..10))).await;
        if Instant::now() >= next_restart {
            // Down for a moment, then back as a new process without history, on the same port.
            let doc = up.state().snapshot.clone();
            up.drop_streams();
            drop(up);
            if rng.random_bool(0.5) {
                outages += 1;
                tokio::time::sleep(Duration::from_millis(rng.random_range(200..2500))).await;
            }
            // The old listener closes once its aborted task is dropped: wait for the port.
            while std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            up = Upstream::start(doc, port).await;
            restarts += 1;
            next_restart = Instant::now() + Duration::from_secs(rng.random_range(5..15));
        }
        if last_rss_sample.elapsed() >= Duration::from_secs(1) {
            last_rss_sample = Instant::now();
            let rss = rss_kib(pid);
            rss_max = rss_max.max(rss);
            if rss_base.is_none() && started.elapsed() >= Duration::from_secs(10) {
                rss_base = Some(rss);
            }
        }
    }
    let final_version = up.version();
    p.wait_version(final_version);
    stop.store(true, Ordering::Relaxed);
    for c in checkers {
        c.join().unwrap();
    }
    let final_doc = up.state().snapshot.clone();
    churn::agrees_with(&p, &Index::build(&final_doc), "after the soak");
    let (answered, failed) = (answered.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    let rss_end = rss_kib(pid);
    let base = rss_base.unwrap_or(rss_end);
    eprintln!(
        "soak: {seconds} s, {batches} batches to version {final_version}, {restarts} upstream restarts \
         ({outages} with an outage), {answered} checks answered, {failed} failed; \
         RSS {base} KiB after 10 s, max {rss_max} KiB, end {rss_end} KiB"
    );
    assert_eq!(failed, 0, "checks failed during the soak");
    assert!(answered > 0);
    assert!(restarts > 0 || seconds < 15);
    assert!(
        rss_max <= base + RSS_GROWTH_BOUND_KIB,
        "RSS grew from {base} KiB to {rss_max} KiB (bound +{RSS_GROWTH_BOUND_KIB} KiB)"
    );
    assert!(p.child.id() == pid);
}
