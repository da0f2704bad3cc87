//! permd following the stand-in upstream (tests/upstream) over the native protocol: snapshot,
//! streamed batches, read-your-writes, credentials, every fault of sync.md (5xx, 429 with
//! Retry-After, 410, a line cut in half, a stalled stream, a line that never ends, a wrong
//! token, a version gap), the cache (warm start, staleness, corruption) and convergence after
//! random batches. A watcher checks throughout that no answer ever shows half a batch.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod churn;
mod common;
mod upstream;

use common::{Permd, example};
use permd::index::Index;
use permd::model::{DeltaBatch, Encoding, Snapshot};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use upstream::{StreamFault, Upstream};

const KEY: &str = "pk_test_9f8e7d6c5b4a_SECRET";

fn example_snapshot() -> Snapshot {
    Snapshot::load(example().as_bytes(), Encoding::Yaml).unwrap()
}

fn batch(from: u64, ops: Value) -> DeltaBatch {
    let line = json!({"from_version": from, "to_version": from + 1, "ops": ops}).to_string();
    DeltaBatch::from_json(line.as_bytes()).unwrap()
}

/// Two ops that must land together: dave and erin get (or lose) `viewer` in acme.
fn pair(from: u64, grant: bool) -> DeltaBatch {
    let op = if grant { "upsert" } else { "delete" };
    batch(
        from,
        json!([
            {"op": op, "kind": "role_assignment", "value": {"user": "dave", "role": "viewer", "org": "acme"}},
            {"op": op, "kind": "role_assignment", "value": {"user": "erin", "role": "viewer", "org": "acme"}},
        ]),
    )
}

/// Asks, over and over, whether dave and erin may read the photo, in one bulk request (one
/// version): a half-applied pair would answer differently for them. Versions never go back.
struct Watcher {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<(usize, Vec<String>)>>,
}

impl Watcher {
    fn start(addr: &str) -> Watcher {
        let stop = Arc::new(AtomicBool::new(false));
        let (s, addr) = (stop.clone(), addr.to_string());
        let thread = std::thread::spawn(move || {
            let mut samples = 0;
            let mut problems = Vec::new();
            let mut last = 0;
            let body = json!([
                {"user": "dave", "action": "read", "resource": "document:photo"},
                {"user": "erin", "action": "read", "resource": "document:photo"},
            ]);
            while !s.load(Ordering::Relaxed) {
                let (st, v) = common::raw_post(&addr, "/allowed/bulk", &body);
                if st == 200 {
                    samples += 1;
                    let version = v["version"].as_u64().unwrap();
                    if v["allow"][0]["allow"] != v["allow"][1]["allow"] {
                        problems.push(format!("half a batch visible at version {version}: {v}"));
                    }
                    if version < last {
                        problems.push(format!("version went back from {last} to {version}"));
                    }
                    last = version;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            (samples, problems)
        });
        Watcher {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let (samples, problems) = self.thread.take().unwrap().join().unwrap();
        assert!(problems.is_empty(), "{problems:#?}");
        assert!(samples > 10, "the watcher saw only {samples} answers");
    }
}

fn status(p: &Permd) -> Value {
    p.get("/v1/status").1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_batches_with_read_your_writes_and_keeps_the_key_secret() {
    let up = Upstream::start(example_snapshot(), 0).await;
    up.state().token = Some(KEY.into());
    let p = Permd::follow(&up.url(), &["--upstream-timeout", "2s"], &[("PERMD_API_KEY", KEY)]);
    p.ready();
    assert_eq!(p.allowed("dave", "read", "document:photo"), (false, 42));
    assert_eq!(p.allowed("alice", "write", "document:photo"), (true, 42));
    let st = status(&p);
    assert_eq!(
        (st["online"].clone(), st["source"].clone()),
        (json!(true), json!(up.url()))
    );

    // Read-your-writes: a check asking for version 43 waits for the stream to bring it.
    let addr = p.addr.clone();
    let waiter = std::thread::spawn(move || {
        common::raw_request(
            &addr,
            "/allowed",
            &[("x-permd-min-version", "43"), ("x-permd-wait-ms", "10000")],
            &json!({"user": "dave", "action": "read", "resource": "document:photo"}),
        )
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "answered before version 43 existed");
    up.publish(&pair(42, true));
    let (st, v) = waiter.join().unwrap();
    assert_eq!(
        (st, v["allow"].clone(), v["version"].clone()),
        (200, json!(true), json!(43))
    );
    let (st, v) = common::raw_request(
        &p.addr,
        "/allowed",
        &[("x-permd-min-version", "999"), ("x-permd-wait-ms", "100")],
        &json!({"user": "dave", "action": "read", "resource": "document:photo"}),
    );
    assert_eq!((st, v["error"]["code"].clone()), (503, json!("version_not_reached")));

    // Many batches in a row arrive in order.
    for v in 43..53 {
        up.publish(&pair(v, v % 2 == 0));
    }
    p.wait_version(53);
    assert_eq!(p.allowed("dave", "read", "document:photo"), (true, 53));

    // The key went upstream on every request and nowhere else.
    let st = up.state();
    assert!(st.requests.len() >= 2, "{:?}", st.requests);
    for (_, path, auth) in &st.requests {
        assert_eq!(auth.as_deref(), Some(format!("Bearer {KEY}").as_str()), "{path}");
    }
    drop(st);
    for path in ["/v1/status", "/readyz"] {
        assert!(!p.get(path).1.to_string().contains(KEY), "{path}");
    }
    assert!(!p.stderr().contains(KEY), "the key is in the logs");
    let m = p.metrics();
    assert!(!format!("{m:?}").contains(KEY), "the key is in the metrics");
    assert_eq!(m["permd_delta_batches_applied_total"], 11.0);
    assert_eq!(m["permd_delta_ops_applied_total"], 22.0);
    assert_eq!(m["permd_snapshot_version"], 53.0);
    assert_eq!(m["permd_online"], 1.0);
    assert!(m["permd_sync_attempts_total{kind=\"snapshot\"}"] >= 1.0);
    assert!(m["permd_sync_attempts_total{kind=\"deltas\"}"] >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_is_retried_and_never_shown() {
    let up = Upstream::start(example_snapshot(), 0).await;
    up.state().token = Some("pk_right".into());
    let p = Permd::follow(&up.url(), &[], &[("PERMD_API_KEY", KEY)]);
    p.wait_for("a 401 in the status", |p| {
        status(p)["last_error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("401"))
    });
    let (code, body) = p.get("/readyz");
    assert_eq!((code, body["status"].clone()), (503, json!("not_ready")));
    let before = up.count("/v1/snapshot");
    p.wait_for("retries", |_| up.count("/v1/snapshot") > before);
    // The control plane rotates to the key permd holds: it catches up without a restart.
    up.state().token = Some(KEY.into());
    p.ready();
    assert_eq!(p.allowed("alice", "write", "document:photo"), (true, 42));
    assert!(!p.stderr().contains(KEY));
    assert!(!status(&p).to_string().contains(KEY));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_file_is_read_and_an_unreadable_one_is_a_config_error() {
    let up = Upstream::start(example_snapshot(), 0).await;
    up.state().token = Some(KEY.into());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("key");
    std::fs::write(&file, format!("{KEY}\n")).unwrap();
    let p = Permd::follow(&up.url(), &["--api-key-file", file.to_str().unwrap()], &[]);
    p.ready();
    assert!(!p.stderr().contains(KEY));
    let out = std::process::Command::new(common::BIN)
        .args(["serve", "--config", "/dev/null", "--source", &up.url()])
        .args(["--api-key-file", "/nonexistent/permd-key"])
        .env_remove("PERMD_API_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`api_key_file`"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_keeps_the_last_good_version_and_nothing_partial_is_visible() {
    let up = Upstream::start(example_snapshot(), 0).await;
    let mut p = Permd::follow(&up.url(), &["--upstream-timeout", "1s"], &[]);
    p.ready();
    let watcher = Watcher::start(&p.addr);
    let snapshots = |up: &Upstream| up.count("/v1/snapshot");

    // 5xx on reconnect: backoff, the stream comes back.
    up.state().fail_next.extend([500, 503, 502]);
    up.drop_streams();
    p.wait_for("the three 5xx answers to be used up", |_| {
        up.state().fail_next.is_empty()
    });
    assert_eq!(p.allowed("dave", "read", "document:photo"), (false, 42));
    up.publish(&pair(42, true));
    p.wait_version(43);

    // A line cut in half, then the connection dropped: the half is never applied.
    up.state().stream_faults.push_back(StreamFault::CutNextLine);
    up.drop_streams();
    tokio::time::sleep(Duration::from_millis(200)).await;
    up.publish(&pair(43, false));
    p.wait_version(44);
    assert!(p.stderr().contains("partial line is dropped"));
    assert_eq!(p.allowed("dave", "read", "document:photo"), (false, 44));

    // A stalled stream (no heartbeats): timed out, reconnected.
    up.state().stream_faults.push_back(StreamFault::Stall);
    up.drop_streams();
    tokio::time::sleep(Duration::from_millis(200)).await;
    up.publish(&pair(44, true));
    p.wait_version(45);
    assert!(p.stderr().contains("no data or heartbeat"));

    // A line that starts and never ends.
    up.state().stream_faults.push_back(StreamFault::EndlessLine);
    up.drop_streams();
    tokio::time::sleep(Duration::from_millis(200)).await;
    up.publish(&pair(45, false));
    p.wait_version(46);
    assert!(p.stderr().contains("did not end within"));

    // A gap in versions: refused, counted, a fresh snapshot instead.
    let (rejected, snaps) = (status(&p)["rejected_total"].as_u64().unwrap(), snapshots(&up));
    up.publish_with_gap(&pair(46, true));
    p.wait_version(47);
    assert!(status(&p)["rejected_total"].as_u64().unwrap() > rejected);
    assert!(snapshots(&up) > snaps);
    assert_eq!(p.allowed("dave", "read", "document:photo"), (true, 47));

    // 410: the upstream forgot the history permd would resume from.
    up.state().down = true;
    up.drop_streams();
    p.wait_for("offline", |p| status(p)["online"] == json!(false));
    assert_eq!(p.allowed("dave", "read", "document:photo"), (true, 47));
    up.publish(&pair(47, false));
    up.publish(&pair(48, true));
    up.publish(&pair(49, false));
    up.compact();
    let snaps = snapshots(&up);
    up.state().down = false;
    p.wait_version(50);
    assert!(snapshots(&up) > snaps);
    assert!(
        up.state()
            .requests
            .iter()
            .any(|(_, path, _)| path == "/v1/deltas?since=47")
    );
    p.wait_for("online", |p| status(p)["online"] == json!(true));

    // 429 with Retry-After: the next request waits for it.
    {
        let mut st = up.state();
        st.fail_next.push_back(429);
        st.retry_after = Some("1".into());
    }
    let seen = up.state().requests.len();
    up.drop_streams();
    p.wait_for("the retry after 429", |_| up.state().requests.len() >= seen + 2);
    let st = up.state();
    let (limited, retried) = (&st.requests[seen], &st.requests[seen + 1]);
    let waited = retried.0.duration_since(limited.0);
    assert!(waited >= Duration::from_millis(950), "retried after {waited:?}");
    drop(st);
    up.publish(&pair(50, true));
    p.wait_version(51);
    watcher.finish();
    assert_eq!(p.allowed("dave", "read", "document:photo"), (true, 51));
    assert!(p.child.try_wait().unwrap().is_none());
    // The faults are in the metrics: refused batches, failed stream attempts.
    let m = p.metrics();
    assert!(m["permd_rejected_total{kind=\"batch\"}"] >= 1.0, "{m:?}");
    assert!(m["permd_sync_failures_total{kind=\"deltas\"}"] >= 3.0, "{m:?}");
    assert!(m["permd_sync_attempts_total{kind=\"snapshot\"}"] >= 2.0, "{m:?}");
    assert_eq!(m["permd_snapshot_version"], 51.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_warm_start_staleness_and_a_corrupt_cache() {
    let up = Upstream::start(example_snapshot(), 0).await;
    let cache_dir = tempfile::tempdir().unwrap();
    let dir = cache_dir.path().to_str().unwrap().to_string();
    let args = ["--cache-dir", dir.as_str(), "--upstream-timeout", "1s"];
    let p1 = Permd::follow(&up.url(), &args, &[]);
    p1.ready();
    up.publish(&pair(42, true));
    p1.wait_version(43);
    let cache = permd::sync::Cache::new(cache_dir.path().into(), up.url(), 1 << 30);
    p1.wait_for("the cache at version 43", |_| {
        cache.read().ok().flatten().is_some_and(|(s, _)| s.version == 43)
    });

    // Outage: the last good version keeps serving, offline.
    up.state().down = true;
    up.drop_streams();
    p1.wait_for("offline", |p| status(p)["online"] == json!(false));
    assert_eq!(p1.allowed("dave", "read", "document:photo"), (true, 43));
    assert_eq!(p1.get("/readyz").0, 200);
    drop(p1);

    // Warm start from the cache while the upstream is down.
    let p2 = Permd::follow(&up.url(), &args, &[]);
    p2.ready();
    let (_, ready) = p2.get("/readyz");
    assert_eq!(
        (ready["online"].clone(), ready["version"].clone()),
        (json!(false), json!(43))
    );
    assert!(ready["age_seconds"].as_f64().unwrap() >= 0.0);
    assert_eq!(p2.allowed("dave", "read", "document:photo"), (true, 43));

    // With max_staleness, readiness fails once the data is older than that.
    let mut stale_args = args.to_vec();
    stale_args.extend(["--max-staleness", "1s"]);
    let p3 = Permd::follow(&up.url(), &stale_args, &[]);
    p3.wait_for("stale readiness", |p| {
        let (code, body) = p.get("/readyz");
        code == 503 && body["status"] == json!("stale") && body["version"] == json!(43)
    });
    assert_eq!(p3.allowed("dave", "read", "document:photo"), (true, 43));
    drop(p3);

    // The upstream returns: online again, then new batches flow.
    up.state().down = false;
    p2.wait_for("online", |p| status(p)["online"] == json!(true));
    up.publish(&pair(43, false));
    p2.wait_version(44);
    p2.wait_for("the cache at version 44", |_| {
        cache.read().ok().flatten().is_some_and(|(s, _)| s.version == 44)
    });
    drop(p2);

    // A corrupt cache is ignored, counted, never served.
    let path = cache_dir.path().join("permd-cache.bin");
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x5a;
    std::fs::write(&path, &bytes).unwrap();
    up.state().down = true;
    let p4 = Permd::follow(&up.url(), &args, &[]);
    p4.wait_for("the corrupt cache counted", |p| {
        status(p)["cache_rejected_total"] == json!(1)
    });
    assert_eq!(p4.get("/readyz").0, 503);
    assert_eq!(status(&p4)["version"], Value::Null);
    assert!(p4.stderr().contains("checksum mismatch"));
    let m = p4.metrics();
    assert_eq!(m["permd_cache_operations_total{op=\"load\",result=\"error\"}"], 1.0);
    assert_eq!(m["permd_cache_operations_total{op=\"load\",result=\"ok\"}"], 0.0);
    assert_eq!(m["permd_snapshot_active"], 0.0);
    up.state().down = false;
    p4.ready();
    assert_eq!(p4.allowed("dave", "read", "document:photo"), (false, 44));
    // Stopped first, so its own cache writes cannot race the truncation below.
    drop(p4);

    // A truncated cache likewise.
    std::fs::write(&path, &bytes[..bytes.len() / 3]).unwrap();
    up.state().down = true;
    let p5 = Permd::follow(&up.url(), &args, &[]);
    p5.wait_for("the truncated cache counted", |p| {
        status(p)["cache_rejected_total"] == json!(1)
    });
    assert!(p5.stderr().contains("truncated"));
    assert_eq!(p5.get("/readyz").0, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_upstream_does_not_hold_back_the_warm_start() {
    // The kernel accepts connections to a listener nobody serves: requests hang.
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", hung.local_addr().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let mut snap = example_snapshot();
    snap.version = 77;
    permd::sync::Cache::new(dir.path().into(), url.clone(), 1 << 30)
        .write(&snap, std::time::SystemTime::now())
        .unwrap();
    // upstream_timeout stays at its 45 s default: readiness comes from the cache well before.
    let p = Permd::follow(&url, &["--cache-dir", dir.path().to_str().unwrap()], &[]);
    p.ready();
    let (_, ready) = p.get("/readyz");
    assert_eq!(
        (ready["online"].clone(), ready["version"].clone()),
        (json!(false), json!(77))
    );
    drop(hung);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_cache_and_no_upstream_is_not_ready_but_keeps_trying() {
    // A port with nothing behind it.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let p = Permd::follow(&format!("http://{addr}"), &["--upstream-timeout", "1s"], &[]);
    p.wait_for("an error in the status", |p| !status(p)["last_error"].is_null());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (code, body) = p.get("/readyz");
    assert_eq!(
        (code, body["status"].clone(), body["online"].clone()),
        (503, json!("not_ready"), json!(false))
    );
    let mut p = p;
    assert!(p.child.try_wait().unwrap().is_none(), "permd exited");
    // The upstream appears on that port: permd gets there by itself.
    let up = Upstream::start(example_snapshot(), addr.port()).await;
    p.ready();
    assert_eq!(p.allowed("alice", "write", "document:photo"), (true, 42));
    drop(up);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn convergence_after_random_batches_equals_loading_the_final_snapshot() {
    for seed in [1u64, 7, 42] {
        let mut rng = SmallRng::seed_from_u64(seed);
        let up = Upstream::start(example_snapshot(), 0).await;
        let p = Permd::follow(&up.url(), &["--upstream-timeout", "1s"], &[]);
        p.ready();
        for i in 0..25u64 {
            let from = 42 + i;
            up.publish(&churn::random_batch(&mut rng, from));
            if i == 12 {
                // A cut line in the middle of the run.
                up.state().stream_faults.push_back(StreamFault::CutNextLine);
                up.drop_streams();
            }
            if i % 5 == 0 {
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..30))).await;
            }
        }
        p.wait_version(67);
        let final_doc = up.state().snapshot.clone();
        churn::agrees_with(&p, &Index::build(&final_doc), &format!("seed {seed}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_older_than_the_active_version_is_refused() {
    let up = Upstream::start(example_snapshot(), 0).await;
    let p = Permd::follow(&up.url(), &["--upstream-timeout", "1s"], &[]);
    p.ready();
    up.publish(&pair(42, true));
    p.wait_version(43);
    // The upstream comes back from an old backup: version 40, no history permd can resume from.
    {
        let mut st = up.state();
        st.snapshot.version = 40;
        st.oldest_since = 1000;
    }
    let snaps = up.count("/v1/snapshot");
    up.drop_streams();
    p.wait_for("the old snapshot to be fetched and refused", |p| {
        up.count("/v1/snapshot") > snaps && p.stderr().contains("lower than the active version 43")
    });
    assert_eq!(p.allowed("dave", "read", "document:photo"), (true, 43));
    assert!(status(&p)["rejected_total"].as_u64().unwrap() >= 1);
    assert!(p.metrics()["permd_rejected_total{kind=\"snapshot\"}"] >= 1.0);
    assert_eq!(p.get("/readyz").0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_cache_is_counted_and_serving_goes_on() {
    let up = Upstream::start(example_snapshot(), 0).await;
    // A regular file where the cache directory should be: every write fails (as on a full or
    // read-only disk; root ignores permission bits, so a mode would not do).
    let dir = tempfile::tempdir().unwrap();
    let not_a_dir = dir.path().join("cache");
    std::fs::write(&not_a_dir, b"not a directory").unwrap();
    let p = Permd::follow(
        &up.url(),
        &["--upstream-timeout", "1s", "--cache-dir", not_a_dir.to_str().unwrap()],
        &[],
    );
    p.ready();
    up.publish(&pair(42, true));
    p.wait_version(43);
    p.wait_for("the failed cache writes to be counted", |p| {
        p.metrics()["permd_cache_operations_total{op=\"write\",result=\"error\"}"] >= 1.0
    });
    assert_eq!(
        p.metrics()["permd_cache_operations_total{op=\"write\",result=\"ok\"}"],
        0.0
    );
    assert_eq!(p.allowed("dave", "read", "document:photo"), (true, 43));
    assert_eq!(std::fs::read(&not_a_dir).unwrap(), b"not a directory");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_batches_stream_in_exits_cleanly_and_leaves_a_whole_cache() {
    let up = Upstream::start(example_snapshot(), 0).await;
    let cache_dir = tempfile::tempdir().unwrap();
    let mut p = Permd::follow(
        &up.url(),
        &[
            "--upstream-timeout",
            "1s",
            "--cache-dir",
            cache_dir.path().to_str().unwrap(),
            "--shutdown-grace",
            "2s",
        ],
        &[],
    );
    p.ready();
    let mut rng = SmallRng::seed_from_u64(3);
    for v in 42..242u64 {
        up.publish(&churn::random_batch(&mut rng, v));
        if v == 140 {
            p.signal("-TERM");
        }
    }
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(s) = p.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "permd did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status:?}");
    // Whatever version the cache holds, it is whole: it reads back, checksum and all.
    let cache = permd::sync::Cache::new(cache_dir.path().to_path_buf(), up.url(), usize::MAX);
    let (doc, _) = cache.read().unwrap().expect("a cache file was written");
    assert!(doc.version >= 42 && doc.version <= 242, "{}", doc.version);
    let leftovers: Vec<_> = std::fs::read_dir(cache_dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n != "permd-cache.bin")
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_trickled_byte_by_byte_is_taken_while_the_old_version_serves() {
    let up = Upstream::start(example_snapshot(), 0).await;
    let p = Permd::follow(&up.url(), &["--upstream-timeout", "1s"], &[]);
    p.ready();
    // The next snapshot (version 50) comes 16 bytes every 5 ms, a few seconds in all: never
    // silent for a whole timeout, so permd waits for it while version 42 keeps answering.
    {
        let mut st = up.state();
        st.snapshot.version = 50;
        st.oldest_since = 1000;
        st.slow_snapshot = Some((16, Duration::from_millis(5)));
    }
    up.drop_streams();
    let started = std::time::Instant::now();
    let mut answered_meanwhile = 0;
    loop {
        let (allow, version) = p.allowed("alice", "write", "document:photo");
        assert!(allow);
        if version == 50 {
            break;
        }
        assert_eq!(version, 42);
        answered_meanwhile += 1;
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the slow snapshot never landed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        answered_meanwhile >= 5,
        "the trickle was not slow: {answered_meanwhile} checks"
    );
    assert_eq!(p.allowed("alice", "write", "document:photo"), (true, 50));
}

/// A MessagePack snapshot that does not validate: the streamed load leaves it, the body is
/// fetched again and decoded whole, and the refusal names the item, as before; the active
/// version serves throughout, and the next good one is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_messagepack_snapshot_is_refused_naming_the_item() {
    let up = Upstream::start(example_snapshot(), 0).await;
    let p = Permd::follow(&up.url(), &["--upstream-timeout", "1s"], &[]);
    p.ready();
    {
        let mut st = up.state();
        let repeat = st.snapshot.role_assignments[0].clone();
        st.snapshot.role_assignments.push(repeat);
        st.snapshot.version = 60;
        st.oldest_since = 1000;
    }
    let snaps = up.count("/v1/snapshot");
    up.drop_streams();
    p.wait_for("the invalid snapshot to be refused", |p| {
        p.stderr().contains("snapshot rejected") && p.stderr().contains("role_assignments[")
    });
    // The streamed request, then the whole one.
    assert!(up.count("/v1/snapshot") >= snaps + 2);
    assert_eq!(p.allowed("dave", "read", "document:photo"), (false, 42));
    let asked = up
        .state()
        .requests
        .iter()
        .filter(|(_, path, _)| path == "/v1/snapshot")
        .count();
    {
        let mut st = up.state();
        st.snapshot.role_assignments.pop();
        st.snapshot.version = 61;
    }
    p.wait_version(61);
    let now = up
        .state()
        .requests
        .iter()
        .filter(|(_, path, _)| path == "/v1/snapshot")
        .count();
    assert!(now > asked);
    assert_eq!(p.get("/readyz").0, 200);
}
