//! Delta visibility and absorption against the release `permd` binary following the stand-in
//! upstream (tests/upstream) with the generated 1M-assignment snapshot:
//!
//! 1. one-op batch → visible to checks: a check holding `X-Permd-Min-Version: N+1` waits in
//!    permd; the time from the upstream writing the line to the check's answer, p50/p99;
//! 2. `/allowed` p50/p99 under closed-loop load, without and then with 10,000 ops/s of streamed
//!    deltas (100 batches/s of 100 ops), and whether permd kept up; then the same in a fresh
//!    permd with `--cache-dir`, counting its cache writes while it absorbs;
//! 3. warm start: the cache of that snapshot, upstream down, process start → `/readyz` 200.
//!
//! `cargo build --release && cargo run --release --example sync_bench` (env `PERMD_BIN`,
//! `SAMPLES`, `SECONDS`, `CLIENTS`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/upstream/mod.rs"]
mod upstream;

use permd::model::generate::{Params, generate};
use permd::model::{DeltaBatch, Item, Op, RoleAssignment};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use upstream::Upstream;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A keep-alive HTTP/1.1 client for one connection.
struct Conn {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Conn {
    fn new(addr: &str) -> Conn {
        let s = TcpStream::connect(addr).unwrap();
        s.set_nodelay(true).unwrap();
        Conn {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
        }
    }

    fn send(&mut self, path: &str, headers: &str, body: &str) {
        let req = format!(
            "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{headers}\r\n{body}",
            body.len()
        );
        self.w.write_all(req.as_bytes()).unwrap();
    }

    fn recv(&mut self) -> (u16, String) {
        let mut line = String::new();
        self.r.read_line(&mut line).unwrap();
        let status = line.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
        let mut len = 0;
        loop {
            line.clear();
            self.r.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; len];
        self.r.read_exact(&mut body).unwrap();
        (status, String::from_utf8(body).unwrap())
    }
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
}

fn spawn(bin: &str, args: &[&str]) -> (Child, String) {
    let mut child = Command::new(bin)
        .args(["serve", "--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"])
        .args(["--log-format", "json", "--config", "/dev/null"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().unwrap().unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if v["fields"]["message"] == "http listening" {
            break v["fields"]["addr"].as_str().unwrap().to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (child, addr)
}

fn ready(addr: &str, within: Duration) -> bool {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if let Ok(mut s) = TcpStream::connect(addr) {
            let _ = s.write_all(b"GET /readyz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            if out.starts_with("HTTP/1.1 200") {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    false
}

fn assignment(i: u64) -> Op {
    Op::Upsert(Item::RoleAssignment(RoleAssignment {
        user: format!("bench-user-{i}"),
        role: "viewer".into(),
        org: "t1".into(),
        resource: None,
    }))
}

const CHECK: &str = r#"{"user": "bench-user-0", "action": "read", "resource": {"type": "document", "tenant": "t1"}}"#;

/// Closed-loop `/allowed` load on `clients` connections for `secs`; latencies of every answer.
fn load(addr: &str, clients: u64, secs: u64) -> Vec<Duration> {
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (addr, stop) = (addr.to_string(), stop.clone());
            std::thread::spawn(move || {
                let mut c = Conn::new(&addr);
                let mut lat = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    c.send("/allowed", "", CHECK);
                    assert_eq!(c.recv().0, 200);
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    threads.into_iter().flat_map(|t| t.join().unwrap()).collect()
}

/// What `absorb` measured.
struct Absorbed {
    base: (Duration, Duration),
    under: (Duration, Duration),
    ops_per_s: f64,
    caught_up: Duration,
}

impl Absorbed {
    fn print(&self, how: &str) {
        let yes = |ok: bool| if ok { "yes" } else { "no" };
        let ((b50, b99), (u50, u99)) = (self.base, self.under);
        let ratio = u99.as_secs_f64() / b99.as_secs_f64();
        println!(
            "/allowed{how}: alone p50 {b50:?}, p99 {b99:?}; absorbing {:.0} ops/s p50 {u50:?}, p99 {u99:?} (x{ratio:.2}); the last version reached {:?} after the feed stopped",
            self.ops_per_s, self.caught_up
        );
        println!(
            "TABLE|sync|/allowed p99 absorbing {:.0} ops/s vs alone{how}|{u99:.2?} vs {b99:.2?} (x{ratio:.2})|at most doubled|{}",
            self.ops_per_s,
            yes(u99 <= b99 * 2)
        );
    }
}

/// `/allowed` under closed-loop load alone, then while the upstream streams 100 batches of 100
/// ops a second, starting at `version`; waits until permd has the last one.
fn absorb(up: &Arc<Upstream>, addr: &str, version: u64, clients: u64, secs: u64) -> Absorbed {
    let mut base = load(addr, clients, secs);
    let base = (pct(&mut base, 0.5), pct(&mut base, 0.99));
    let stop = Arc::new(AtomicBool::new(false));
    let published = Arc::new(AtomicU64::new(0));
    let feeder = {
        let (stop, published, up) = (stop.clone(), published.clone(), up.clone());
        std::thread::spawn(move || {
            let mut v = version;
            let mut i = 1_000_000u64 + version * 100;
            let start = Instant::now();
            let mut tick = 0u64;
            while !stop.load(Ordering::Relaxed) {
                tick += 1;
                let ops = (0..100).map(|k| assignment(i + k)).collect();
                i += 100;
                up.publish_stream_only(&DeltaBatch {
                    from_version: v,
                    to_version: v + 1,
                    ops,
                });
                v += 1;
                published.fetch_add(100, Ordering::Relaxed);
                let due = start + Duration::from_millis(10 * tick);
                if let Some(d) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(d);
                }
            }
            v
        })
    };
    let mut under = load(addr, clients, secs);
    stop.store(true, Ordering::Relaxed);
    let last = feeder.join().unwrap();
    let ops = published.load(Ordering::Relaxed);
    let under = (pct(&mut under, 0.5), pct(&mut under, 0.99));
    let t = Instant::now();
    let mut c = Conn::new(addr);
    c.send(
        "/allowed",
        &format!("x-permd-min-version: {last}\r\nx-permd-wait-ms: 30000\r\n"),
        CHECK,
    );
    let (st, body) = c.recv();
    assert_eq!(st, 200, "version {last} not reached: {body}");
    Absorbed {
        base,
        under,
        ops_per_s: ops as f64 / secs as f64,
        caught_up: t.elapsed(),
    }
}

/// `permd_cache_operations_total{op="write",result="ok"}` from permd's `/metrics`.
fn cache_writes(addr: &str) -> u64 {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.lines()
        .find_map(|l| l.strip_prefix("permd_cache_operations_total{op=\"write\",result=\"ok\"} "))
        .map_or(0, |v| v.trim().parse().unwrap_or(0))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let bin = std::env::var("PERMD_BIN").unwrap_or_else(|_| "target/release/permd".into());
    let samples = env_or("SAMPLES", 300);
    let secs = env_or("SECONDS", 10);
    let clients = env_or("CLIENTS", 2);
    let t = Instant::now();
    let snapshot = generate(&Params::default());
    let n = snapshot.role_assignments.len();
    eprintln!("generated {n} role assignments in {:?}", t.elapsed());
    let up = Upstream::start(snapshot.clone(), 0).await;
    up.state().heartbeat = Duration::from_secs(5);
    let (mut child, addr) = spawn(&bin, &["--source", &up.url()]);
    let t = Instant::now();
    assert!(ready(&addr, Duration::from_secs(120)), "permd did not get ready");
    eprintln!("permd ready on the 1M snapshot in {:?} (fetch + build)", t.elapsed());

    // 1. One-op batch visibility.
    let mut version = up.version();
    let mut lat = Vec::new();
    let mut waiter = Conn::new(&addr);
    for i in 0..samples {
        let next = version + 1;
        waiter.send(
            "/allowed",
            &format!("x-permd-min-version: {next}\r\nx-permd-wait-ms: 5000\r\n"),
            CHECK,
        );
        std::thread::sleep(Duration::from_millis(3)); // the check is now waiting inside permd
        let batch = DeltaBatch {
            from_version: version,
            to_version: next,
            ops: vec![assignment(i)],
        };
        let t = Instant::now();
        up.publish_stream_only(&batch);
        let (st, body) = waiter.recv();
        lat.push(t.elapsed());
        assert_eq!(st, 200, "{body}");
        assert!(body.contains(&format!("\"version\":{next}")), "{body}");
        version = next;
    }
    let (p50, p99) = (pct(&mut lat, 0.5), pct(&mut lat, 0.99));
    println!(
        "one-op batch visible: p50 {p50:?}, p99 {p99:?}, max {:?} ({samples} samples)",
        lat.last().unwrap()
    );
    let yes = |ok: bool| if ok { "yes" } else { "no" };
    println!(
        "TABLE|sync|one-op batch visible to checks, p50 / p99|{p50:.2?} / {p99:.2?}|p99 ≤ 1 ms|{}",
        yes(p99 <= Duration::from_millis(1))
    );

    // 2. /allowed under load, without and with 10,000 ops/s of deltas; then the same with a
    //    cache directory, in a fresh permd, so the cache writer's cost shows beside it.
    let up = Arc::new(up);
    let plain = absorb(&up, &addr, version, clients, secs);
    plain.print("");
    let _ = child.kill();
    let _ = child.wait();
    let cache_dir = tempfile::tempdir().unwrap();
    let (mut child, addr) = spawn(
        &bin,
        &["--source", &up.url(), "--cache-dir", cache_dir.path().to_str().unwrap()],
    );
    assert!(
        ready(&addr, Duration::from_secs(120)),
        "permd with a cache did not get ready"
    );
    // The first write (the fetched snapshot) is not part of the measurement.
    let end = Instant::now() + Duration::from_secs(60);
    while cache_writes(&addr) == 0 {
        assert!(Instant::now() < end, "the first cache write did not come");
        std::thread::sleep(Duration::from_millis(20));
    }
    let writes_before = cache_writes(&addr);
    let cached = absorb(&up, &addr, up.version(), clients, secs);
    let writes = cache_writes(&addr) - writes_before;
    cached.print(" with --cache-dir");
    println!("cache writes of the 1M index while absorbing: {writes} in {secs} s");
    println!("TABLE|sync|cache writes of the 1M index in {secs} s of absorbing (paced: rest 9x a write)|{writes}||");
    let _ = child.kill();
    let _ = child.wait();

    // 3. Warm start from the cache of the 1M snapshot, upstream down.
    let dir = tempfile::tempdir().unwrap();
    let cache = permd::sync::Cache::new(dir.path().into(), up.url(), usize::MAX);
    cache.write(&snapshot, std::time::SystemTime::now()).unwrap();
    let size = std::fs::metadata(cache.path()).unwrap().len();
    up.state().down = true;
    let mut warm = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let (mut child, addr) = spawn(
            &bin,
            &["--source", &up.url(), "--cache-dir", dir.path().to_str().unwrap()],
        );
        assert!(ready(&addr, Duration::from_secs(60)));
        warm.push(t.elapsed());
        let _ = child.kill();
        let _ = child.wait();
    }
    println!("warm start from the cache ({:.1} MB): {warm:?}", size as f64 / 1e6);
    let mut sorted = warm.clone();
    sorted.sort();
    let median = sorted[sorted.len() / 2];
    println!(
        "TABLE|sync|warm start from the cache ({:.1} MB), median of {}|{median:.2?}|≤ 2 s|{}",
        size as f64 / 1e6,
        warm.len(),
        yes(median <= Duration::from_secs(2))
    );
}
