//! Observability on the real binary: `/metrics` counted and linted by `promtool`, scraped by a
//! real Prometheus (Debian's `prometheus` package, which `.ci/run` installs), and the
//! decision log with a writer that can never catch up.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Permd, example, samples};
use permd::api::grpc::perm::EnforceRequest;
use permd::api::grpc::perm::perm_service_client::PermServiceClient;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// GET `path` from `addr`; the status and the body as text.
fn get_text(addr: &str, path: &str) -> (u16, String) {
    try_get_text(addr, path).unwrap_or_else(|e| panic!("GET {addr}{path}: {e}"))
}

fn try_get_text(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n")?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or(("", ""));
    // Bodies here are small and sent with a content-length, never chunked.
    assert!(!head.to_ascii_lowercase().contains("chunked"), "{head}");
    Ok((status, body.to_string()))
}

fn value(s: &HashMap<String, f64>, key: &str) -> f64 {
    *s.get(key).unwrap_or_else(|| panic!("no sample `{key}`"))
}

fn check(p: &Permd, user: &str, action: &str, resource: &str) -> Value {
    let (status, body) = p.post(
        "/allowed",
        json!({"user": user, "action": action, "resource": resource}),
    );
    assert_eq!(status, 200, "{body}");
    body
}

fn promtool(exposition: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package `prometheus`; .ci/run installs it) must be on PATH");
    child.stdin.take().unwrap().write_all(exposition.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_decisions_requests_and_state_and_pass_promtool() {
    let p = Permd::start(Some(&example()), &[]);
    p.ready();
    let before = samples(&get_text(&p.addr, "/metrics").1);
    assert_eq!(value(&before, "permd_snapshot_version"), 42.0);
    assert_eq!(value(&before, "permd_snapshot_active"), 1.0);
    assert_eq!(value(&before, "permd_online"), 1.0);
    assert!(value(&before, "permd_index_items{kind=\"role_assignment\"}") > 0.0);
    assert_eq!(value(&before, "permd_index_build_duration_seconds_count"), 1.0);
    assert!(value(&before, "process_resident_memory_bytes") > 0.0);

    for _ in 0..3 {
        assert_eq!(check(&p, "alice", "write", "document:photo")["reason"], "org_role");
    }
    assert_eq!(
        check(&p, "bob", "write", "document:photo")["reason"],
        "no_matching_grant"
    );
    let (status, _) = p.post("/allowed", json!({"user": "alice"}));
    assert_eq!(status, 400);
    let (status, body) = p.post(
        "/allowed/bulk",
        json!([
            {"user": "bob", "action": "read", "resource": "document:photo"},
            {"user": "carol", "action": "play", "resource": "camera:cam1"},
        ]),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(p.get("/nothing-here").0, 404);

    let channel = tonic::transport::Channel::from_shared(format!("http://{}", p.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = PermServiceClient::new(channel);
    let ok = client
        .enforce(EnforceRequest {
            user_id: "alice".into(),
            res_type: "document".into(),
            res_id: "photo".into(),
            act: "write".into(),
            ..EnforceRequest::default()
        })
        .await
        .unwrap();
    assert!(ok.get_ref().ok);
    let bad = client.enforce(EnforceRequest::default()).await.unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);

    let text = get_text(&p.addr, "/metrics").1;
    let s = samples(&text);
    let d = |api: &str, result: &str, reason: &str| {
        value(
            &s,
            &format!("permd_decisions_total{{api=\"{api}\",reason=\"{reason}\",result=\"{result}\"}}"),
        )
    };
    assert_eq!(d("http_allowed", "allow", "org_role"), 3.0);
    assert_eq!(d("http_allowed", "deny", "no_matching_grant"), 1.0);
    assert_eq!(d("http_allowed_bulk", "allow", "resource_role"), 1.0);
    assert_eq!(d("http_allowed_bulk", "allow", "role_grant"), 1.0);
    assert_eq!(d("grpc_enforce", "allow", "org_role"), 1.0);
    assert_eq!(d("http_enforce", "allow", "org_role"), 0.0);
    assert_eq!(
        value(&s, "permd_decision_duration_seconds_count{api=\"http_allowed\"}"),
        4.0,
        "the rejected request is not a decision"
    );
    assert_eq!(
        value(&s, "permd_http_requests_total{route=\"/allowed\",status=\"200\"}"),
        4.0
    );
    assert_eq!(
        value(&s, "permd_http_requests_total{route=\"/allowed\",status=\"400\"}"),
        1.0
    );
    assert_eq!(
        value(&s, "permd_http_requests_total{route=\"other\",status=\"404\"}"),
        1.0
    );
    assert!(value(&s, "permd_http_requests_total{route=\"/metrics\",status=\"200\"}") >= 1.0);
    assert_eq!(
        value(
            &s,
            "permd_grpc_requests_total{code=\"OK\",method=\"/perm.v1.PermService/Enforce\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &s,
            "permd_grpc_requests_total{code=\"INVALID_ARGUMENT\",method=\"/perm.v1.PermService/Enforce\"}"
        ),
        1.0
    );

    // A bad edit is refused and counted; a good one moves the version gauge.
    std::fs::write(&p.snapshot, "format: 1\nversion: [\n").unwrap();
    p.wait_for("the refusal to be counted", |p| {
        samples(&get_text(&p.addr, "/metrics").1)
            .get("permd_rejected_total{kind=\"snapshot\"}")
            .is_some_and(|v| *v == 1.0)
    });
    std::fs::write(&p.snapshot, example().replace("version: 42", "version: 43")).unwrap();
    p.wait_for("version 43 in the gauge", |p| {
        samples(&get_text(&p.addr, "/metrics").1)
            .get("permd_snapshot_version")
            .is_some_and(|v| *v == 43.0)
    });

    let (ok, out) = promtool(&text);
    assert!(ok, "promtool check metrics failed:\n{out}");
    // promtool is not a rubber stamp: a counter without `_total` fails it.
    let (ok, _) = promtool("# HELP permd_bad A counter.\n# TYPE permd_bad counter\npermd_bad 1\n");
    assert!(!ok, "promtool accepted a counter without _total");
}

#[test]
fn metrics_can_be_turned_off() {
    let p = Permd::start(Some(&example()), &["--metrics", "false"]);
    p.ready();
    assert_eq!(check(&p, "alice", "write", "document:photo")["allow"], true);
    assert_eq!(get_text(&p.addr, "/metrics").0, 404);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Asks Prometheus for an instant query; the single value, if there is exactly one series.
fn prom_query(prom: &str, query: &str) -> Option<f64> {
    let q: String = query
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    // Refused until Prometheus has started listening.
    let (status, body) = try_get_text(prom, &format!("/api/v1/query?query={q}")).ok()?;
    if status != 200 {
        return None;
    }
    let v: Value = serde_json::from_str(&body).ok()?;
    let result = v["data"]["result"].as_array()?;
    if result.len() != 1 {
        return None;
    }
    result[0]["value"][1].as_str()?.parse().ok()
}

struct Prometheus(std::process::Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_real_prometheus_scrapes_the_admin_listener() {
    let p = Permd::start(Some(&example()), &["--admin-addr", "127.0.0.1:0"]);
    p.ready();
    let admin = p.admin.clone().unwrap();
    // Checks stay off the admin listener; metrics are on it.
    assert_eq!(get_text(&admin, "/metrics").0, 200);
    for _ in 0..5 {
        assert_eq!(check(&p, "alice", "write", "document:photo")["allow"], true);
    }
    assert_eq!(
        check(&p, "root", "read", "document:photo")["reason"],
        "no_matching_grant"
    );

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: permd\n    static_configs:\n      - targets: ['{admin}']\n"
        ),
    )
    .unwrap();
    let web = format!("127.0.0.1:{}", free_port());
    let prom = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
        .arg(format!("--web.listen-address={web}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus (Debian package `prometheus`; .ci/run installs it) must be on PATH");
    let _prom = Prometheus(prom);

    let want = [
        ("permd_snapshot_version{job=\"permd\"}", 42.0),
        (
            "permd_decisions_total{job=\"permd\",api=\"http_allowed\",result=\"allow\",reason=\"org_role\"}",
            5.0,
        ),
        (
            "permd_decisions_total{job=\"permd\",api=\"http_allowed\",result=\"deny\",reason=\"no_matching_grant\"}",
            1.0,
        ),
        ("permd_online{job=\"permd\"}", 1.0),
        ("up{job=\"permd\"}", 1.0),
    ];
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let last = want.iter().map(|(q, _)| prom_query(&web, q)).collect::<Vec<_>>();
        if want.iter().zip(&last).all(|((_, w), got)| *got == Some(*w)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus did not report the values in time: wanted {want:?}, got {last:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    // And it follows a change: a new version reaches Prometheus through the gauge.
    std::fs::write(&p.snapshot, example().replace("version: 42", "version: 44")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while prom_query(&web, "permd_snapshot_version{job=\"permd\"}") != Some(44.0) {
        assert!(Instant::now() < deadline, "version 44 never reached Prometheus");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn decision_log_writes_masked_lines() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("decisions.jsonl");
    let p = Permd::start(
        Some(&example()),
        &[
            "--decision-log",
            log.to_str().unwrap(),
            "--decision-log-mask",
            "context.ssn",
        ],
    );
    p.ready();
    let (status, _) = p.request(
        "POST",
        "/allowed",
        &[
            ("content-type", "application/json"),
            ("authorization", "Bearer pk_secret_never_logged"),
            ("x-request-id", "req-7"),
        ],
        json!({"user": "alice", "action": "write", "resource": "document:photo",
               "context": {"ssn": "123-45-6789", "api_key": "k-1", "ip": "10.0.0.1"}})
        .to_string()
        .as_bytes(),
    );
    assert_eq!(status, 200);
    assert_eq!(check(&p, "bob", "write", "document:photo")["allow"], false);
    let mut lines = Vec::new();
    p.wait_for("two decision log lines", |_| {
        lines = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .collect();
        lines.len() == 2
    });
    let first = &lines[0];
    assert_eq!(first["request_id"], "req-7");
    assert_eq!(first["api"], "http_allowed");
    assert_eq!(first["allow"], true);
    assert_eq!(first["reason"], "org_role");
    assert_eq!(first["version"], 42);
    assert!(first["latency_us"].as_f64().unwrap() > 0.0);
    assert_eq!(first["request"]["context"]["ssn"], "***");
    assert_eq!(first["request"]["context"]["api_key"], "***");
    assert_eq!(first["request"]["context"]["ip"], "10.0.0.1");
    assert_eq!(lines[1]["reason"], "no_matching_grant");
    assert_ne!(lines[1]["request_id"], "req-7");
    let raw = std::fs::read_to_string(&log).unwrap();
    assert!(!raw.contains("pk_secret_never_logged") && !raw.contains("123-45-6789"));
}

/// The writer is stuck for good on a pipe nobody reads. Requests must keep being answered
/// (if `submit` could block, they would hang once the one-entry buffer is full), and what
/// cannot be buffered is dropped and counted.
#[test]
fn a_stuck_decision_log_never_blocks_requests_and_counts_drops() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("decisions.fifo");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    // Opened read-write, never read: permd's open succeeds at once, and its writes block once
    // the pipe's buffer (64 KiB) is full.
    let mut reader = std::fs::OpenOptions::new().read(true).write(true).open(&fifo).unwrap();
    let p = Permd::start(
        Some(&example()),
        &["--decision-log", fifo.to_str().unwrap(), "--decision-log-buffer", "1"],
    );
    p.ready();
    const N: usize = 1500;
    let started = Instant::now();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let addr = p.addr.clone();
            std::thread::spawn(move || {
                let body = json!({"user": "alice", "action": "write", "resource": "document:photo",
                                  "context": {"padding": "x".repeat(200)}})
                .to_string();
                for _ in 0..N / 4 {
                    let mut s = TcpStream::connect(&addr).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    write!(
                        s,
                        "POST /allowed HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    )
                    .unwrap();
                    let mut out = String::new();
                    s.read_to_string(&mut out).unwrap();
                    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
                    assert!(out.contains("\"allow\":true"), "{out}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let took = started.elapsed();
    let s = samples(&get_text(&p.addr, "/metrics").1);
    let written = value(&s, "permd_decision_log_entries_total{outcome=\"written\"}");
    let dropped = value(&s, "permd_decision_log_entries_total{outcome=\"dropped\"}");
    eprintln!("{N} requests in {took:?} with the log stuck: {written} written, {dropped} dropped");
    // ~300-byte lines: the pipe takes a few hundred, the buffer one, one sits in the writer.
    assert!(dropped >= (N / 2) as f64, "dropped {dropped}");
    assert!(written + dropped <= N as f64 && written + dropped >= (N - 2) as f64);
    // Unstick the writer: what it wrote is whole JSON lines.
    let mut buf = vec![0u8; 64 * 1024];
    let n = reader.read(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    let first = text.lines().next().unwrap();
    let v: Value = serde_json::from_str(first).unwrap();
    assert_eq!(v["reason"], "org_role");
}

#[test]
fn every_route_has_its_own_metrics_label() {
    let p = Permd::start(Some(&example()), &[]);
    p.ready();
    for route in permd::metrics::HTTP_ROUTES {
        let (status, body) = p.get(route);
        assert_ne!(status, 404, "{route} is labelled but not routed: {body}");
    }
    let (status, _) = p.post(
        "/authorized_users",
        json!({"action": "read", "resource": "document:photo"}),
    );
    assert_eq!(status, 200);
    let s = p.metrics();
    assert_eq!(
        value(
            &s,
            "permd_http_requests_total{route=\"/authorized_users\",status=\"200\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &s,
            "permd_http_requests_total{route=\"/authorized_users\",status=\"405\"}"
        ),
        1.0
    );
}
