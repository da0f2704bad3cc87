//! Who may ask (api.md "Beyond loopback"), on the real binary and real sockets: bearer keys on
//! every HTTP route and every gRPC method (forwarded writes, health and reflection included),
//! key rotation through the file, the admin listener left open for health and metrics only,
//! TLS and mTLS (curl and a tonic client; certificates made by rcgen), closed by default
//! beyond loopback, listings turned off, and checks going on under a flood of bad keys.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{BIN, Permd, example, samples};
use permd::api::grpc::perm::EnforceRequest;
use permd::api::grpc::perm::perm_service_client::PermServiceClient;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::Code;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

const OLD: &str = "pdp_old_0123456789abcdef";
const NEW: &str = "pdp_new_fedcba9876543210";
const ENV_KEY: &str = "pdp_env_aaaaaaaaaaaaaaaa";

/// permd on a snapshot file with keys `OLD` and `NEW` in a key file and `ENV_KEY` in the
/// environment; returns the key file too.
fn keyed(extra: &[&str]) -> (Permd, tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let snapshot = dir.path().join("snapshot.yaml");
    std::fs::write(&snapshot, example()).unwrap();
    let keys = dir.path().join("keys");
    std::fs::write(&keys, format!("# rotated monthly\n{OLD}\n\n{NEW}\n")).unwrap();
    let mut args = vec!["--auth-keys-file", keys.to_str().unwrap()];
    args.extend_from_slice(extra);
    let p = Permd::follow(
        &format!("file://{}", snapshot.display()),
        &args,
        &[("PERMD_AUTH_KEYS", ENV_KEY)],
    );
    let end = Instant::now() + Duration::from_secs(20);
    while http(&p.addr, "GET", "/readyz", Some(OLD), b"").0 != 200 {
        assert!(Instant::now() < end, "not ready: {}", p.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
    (p, dir, keys)
}

/// One HTTP/1.1 request: (status, headers, body).
fn http(addr: &str, method: &str, path: &str, key: Option<&str>, body: &[u8]) -> (u16, String, Value) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    if let Some(k) = key {
        head.push_str(&format!("authorization: Bearer {k}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let (headers, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (
        status,
        headers.to_ascii_lowercase(),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

/// Every HTTP route permd serves (and some it does not: the gate stands before routing).
const HTTP_ROUTES: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/health"),
    ("GET", "/ready"),
    ("GET", "/v1/status"),
    ("GET", "/metrics"),
    ("GET", "/.well-known/authzen-configuration"),
    ("GET", "/local/role_assignments"),
    ("POST", "/allowed"),
    ("POST", "/allowed/bulk"),
    ("POST", "/allowed/all-tenants"),
    ("POST", "/user-tenants"),
    ("POST", "/allowed_url"),
    ("GET", "/nginx_allowed"),
    ("POST", "/v1/enforce"),
    ("POST", "/access/v1/evaluation"),
    ("POST", "/access/v1/evaluations"),
    ("POST", "/user-permissions"),
    ("POST", "/authorized_users"),
    ("POST", "/access/v1/search/subject"),
    ("POST", "/access/v1/search/resource"),
    ("POST", "/access/v1/search/action"),
    ("POST", "/v1/resources"),
    ("POST", "/v1/menus"),
    ("POST", "/v1/groups"),
    ("POST", "/v1/role"),
    ("POST", "/v1/roles"),
    ("POST", "/v1/user-roles"),
    ("POST", "/v1/role-users"),
    ("POST", "/v1/group-tree"),
    ("POST", "/v1/menu-tree"),
    ("POST", "/v1/orgs"),
    // Permit's facts writes, forwarded to the control plane.
    ("POST", "/facts/users"),
    ("PUT", "/facts/users/alice"),
    ("DELETE", "/facts/users/alice"),
    ("POST", "/facts/role_assignments"),
    ("POST", "/facts/users/alice/roles"),
    ("GET", "/no-such-route"),
];

const CHECK: &str = r#"{"user": "alice", "action": "write", "resource": "document:photo"}"#;

fn assert_refused(addr: &str, key: Option<&str>) {
    for (method, path) in HTTP_ROUTES {
        let (st, headers, body) = http(addr, method, path, key, CHECK.as_bytes());
        assert_eq!(st, 401, "{method} {path} with {key:?}: {body}");
        assert!(headers.contains("www-authenticate: bearer"), "{path}: {headers}");
        assert_eq!(body["error"]["code"], "unauthenticated", "{path}");
    }
}

#[test]
fn every_http_route_needs_a_key_and_revoked_keys_stop_within_a_second() {
    let (p, _dir, keys) = keyed(&["--admin-addr", "127.0.0.1:0"]);
    assert_refused(&p.addr, None);
    assert_refused(&p.addr, Some("pdp_wrong_key"));
    // All but the last byte right, or the right key with a byte more: refused the same.
    assert_refused(&p.addr, Some(&OLD[..OLD.len() - 1]));
    assert_refused(&p.addr, Some(&format!("{OLD}x")));
    for (scheme, st) in [("Bearer", 200), ("bearer", 200), ("Basic", 401), ("Token", 401)] {
        let mut s = TcpStream::connect(&p.addr).unwrap();
        write!(
            s,
            "POST /allowed HTTP/1.1\r\nhost: x\r\nconnection: close\r\nauthorization: {scheme} {NEW}\r\ncontent-length: {}\r\n\r\n{CHECK}",
            CHECK.len()
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert_eq!(out.get(9..12), Some(st.to_string().as_str()), "{scheme}: {out}");
    }
    // Refused before the body is read: a huge declared body that never comes.
    let mut s = TcpStream::connect(&p.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "POST /allowed HTTP/1.1\r\nhost: x\r\ncontent-length: 100000000\r\nauthorization: Bearer nope\r\n\r\n"
    )
    .unwrap();
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"HTTP/1.1 401");

    // `permd check --url` takes its key from PERMD_CLIENT_KEY.
    let check = |key: Option<&str>| {
        let mut cmd = Command::new(BIN);
        cmd.args(["check", "--url", &format!("http://{}", p.addr)])
            .args(["--user", "alice", "--action", "write", "--resource", "document:photo"])
            .env_remove("PERMD_CLIENT_KEY");
        if let Some(k) = key {
            cmd.env("PERMD_CLIENT_KEY", k);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, out) = check(Some(NEW));
    assert_eq!(code, Some(0), "{out}");
    assert!(out.starts_with("allow"), "{out}");
    let (code, out) = check(None);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("401") && out.contains("unauthenticated"), "{out}");
    // HTTP/2 (h2c) clients are refused the same way, and served with a key.
    for (key, want) in [("nope", "401 2"), (NEW, "200 2")] {
        let out = Command::new("curl")
            .args([
                "-s",
                "--http2-prior-knowledge",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{http_version}",
            ])
            .args(["-H", &format!("authorization: Bearer {key}"), "-d", CHECK])
            .arg(format!("http://{}/allowed", p.addr))
            .output()
            .unwrap();
        // A refused HTTP/2 stream is reset after its 401 (its body unread); curl may report
        // the reset (exit 92) instead of the status. Never served.
        let got = String::from_utf8_lossy(&out.stdout).to_string();
        let reset = key == "nope" && out.status.code() == Some(92) && !got.starts_with("200");
        assert!(got == want || reset, "{key}: {got} {:?}", out.status.code());
    }
    // Every key works: the file's two and the environment's.
    for key in [OLD, NEW, ENV_KEY] {
        let (st, _, v) = http(&p.addr, "POST", "/allowed", Some(key), CHECK.as_bytes());
        assert_eq!((st, v["allow"].as_bool()), (200, Some(true)), "{v}");
    }
    // The admin listener: health, readiness and metrics without a key; nothing else.
    let admin = p.admin.clone().unwrap();
    for path in ["/healthz", "/readyz", "/metrics"] {
        let mut s = TcpStream::connect(&admin).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "{path}: {out}");
    }
    for (method, path) in HTTP_ROUTES {
        if ["/healthz", "/readyz", "/health", "/ready", "/metrics"].contains(path) {
            continue;
        }
        let (st, _, _) = http(&admin, method, path, Some(OLD), CHECK.as_bytes());
        assert_eq!(st, 404, "admin {method} {path}");
    }

    // Rotation: OLD leaves the file; it is refused within a second, NEW and the env key go on.
    std::fs::write(&keys, format!("{NEW}\n")).unwrap();
    let removed = Instant::now();
    while http(&p.addr, "POST", "/allowed", Some(OLD), CHECK.as_bytes()).0 != 401 {
        assert!(removed.elapsed() < Duration::from_secs(1), "revoked key still accepted");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(removed.elapsed() < Duration::from_secs(1));
    for key in [NEW, ENV_KEY] {
        assert_eq!(http(&p.addr, "POST", "/allowed", Some(key), CHECK.as_bytes()).0, 200);
    }

    // Keys appear nowhere: not in logs, status or metrics; their count and the refusals do.
    let (_, _, status) = http(&p.addr, "GET", "/v1/status", Some(NEW), b"");
    let mut s = TcpStream::connect(&admin).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").unwrap();
    let mut metrics = String::new();
    s.read_to_string(&mut metrics).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let logs = p.stderr();
    for key in [OLD, NEW, ENV_KEY] {
        for (what, text) in [("logs", &logs), ("status", &status.to_string()), ("metrics", &metrics)] {
            assert!(!text.contains(key), "a key in the {what}");
        }
    }
    let m = samples(metrics.split_once("\r\n\r\n").unwrap().1);
    assert_eq!(
        m["permd_auth_keys"], 2.0,
        "one key left in the file, one in the environment"
    );
    assert!(m[r#"permd_auth_refused_total{listener="http"}"#] >= (4 * HTTP_ROUTES.len()) as f64);
}

/// The gRPC methods the sidecar serves, read from the protos it is built from, with health
/// and reflection.
fn grpc_methods() -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("proto");
    let mut out = vec![
        "/grpc.health.v1.Health/Check".to_string(),
        "/grpc.health.v1.Health/Watch".to_string(),
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo".to_string(),
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo".to_string(),
    ];
    for dir in ["perm/v1", "permd/v1"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            let package = text
                .lines()
                .find_map(|l| l.trim().strip_prefix("package "))
                .unwrap()
                .trim_end_matches(';')
                .to_string();
            let mut service = String::new();
            for line in text.lines().map(str::trim) {
                if let Some(rest) = line.strip_prefix("service ") {
                    service = rest.trim_end_matches('{').trim().to_string();
                } else if let Some(rest) = line.strip_prefix("rpc ") {
                    let method = rest.split('(').next().unwrap().trim();
                    out.push(format!("/{package}.{service}/{method}"));
                }
            }
        }
    }
    assert!(out.len() > 30, "{out:?}");
    out
}

/// Calls `path` as a unary method with an empty message (every field at its default).
async fn raw_call(ch: Channel, path: &str, key: Option<&str>) -> Result<(), tonic::Status> {
    let mut g = tonic::client::Grpc::new(ch);
    g.ready().await.unwrap();
    let mut req = tonic::Request::new(());
    if let Some(k) = key {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {k}").parse().unwrap());
    }
    let path: http::uri::PathAndQuery = path.parse().unwrap();
    g.unary(req, path, tonic_prost::ProstCodec::<(), ()>::default())
        .await
        .map(|_| ())
}

fn with_key<T>(msg: T, key: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    req
}

fn enforce() -> EnforceRequest {
    EnforceRequest {
        org_id: "acme".into(),
        user_id: "alice".into(),
        res_type: "document".into(),
        res_id: "photo".into(),
        act: "write".into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_grpc_method_needs_a_key() {
    let (p, _dir, keys) = tokio::task::spawn_blocking(|| keyed(&[])).await.unwrap();
    let ch = Channel::from_shared(format!("http://{}", p.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    for method in grpc_methods() {
        for key in [None, Some("pdp_wrong_key"), Some(&OLD[1..])] {
            let err = raw_call(ch.clone(), &method, key).await.unwrap_err();
            assert_eq!(err.code(), Code::Unauthenticated, "{method} with {key:?}: {err:?}");
        }
        // With a key the call reaches its service (answered, whatever the answer).
        if !method.contains("Watch") && !method.contains("Reflection") {
            let r = raw_call(ch.clone(), &method, Some(ENV_KEY)).await;
            assert!(
                r.as_ref().err().is_none_or(|e| e.code() != Code::Unauthenticated),
                "{method}: {r:?}"
            );
        }
    }
    let mut health = HealthClient::new(ch.clone());
    let r = health
        .check(with_key(HealthCheckRequest { service: String::new() }, NEW))
        .await
        .unwrap();
    assert_eq!(r.into_inner().status, 1, "SERVING");
    let mut perm = PermServiceClient::new(ch.clone());
    let r = perm.enforce(with_key(enforce(), OLD)).await.unwrap().into_inner();
    assert!(r.ok);
    assert_eq!(perm.enforce(enforce()).await.unwrap_err().code(), Code::Unauthenticated);
    // OLD leaves the file: refused within a second on the open channel too.
    std::fs::write(&keys, format!("{NEW}\n")).unwrap();
    let removed = Instant::now();
    while perm.enforce(with_key(enforce(), OLD)).await.is_ok() {
        assert!(removed.elapsed() < Duration::from_secs(1), "revoked key still accepted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let err = perm.enforce(with_key(enforce(), OLD)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(perm.enforce(with_key(enforce(), NEW)).await.unwrap().into_inner().ok);
}

#[test]
fn listings_can_be_turned_off() {
    let (p, _dir, _keys) = keyed(&["--queries", "false", "--disabled-routes", "/v1/enforce"]);
    for path in [
        "/authorized_users",
        "/access/v1/search/subject",
        "/user-permissions",
        "/v1/enforce",
    ] {
        let (st, _, v) = http(&p.addr, "POST", path, Some(NEW), b"{}");
        assert_eq!(
            (st, v["error"]["code"].as_str()),
            (403, Some("permission_denied")),
            "{path}"
        );
        assert!(v["error"]["message"].as_str().unwrap().contains("turned off"));
    }
    assert_eq!(http(&p.addr, "GET", "/local/role_assignments", Some(NEW), b"").0, 403);
    // Still authentication first.
    assert_eq!(http(&p.addr, "POST", "/authorized_users", None, b"{}").0, 401);
    assert_eq!(http(&p.addr, "POST", "/allowed", Some(NEW), CHECK.as_bytes()).0, 200);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let ch = Channel::from_shared(format!("http://{}", p.grpc))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let err = raw_call(ch.clone(), "/perm.v1.RoleService/ListRoles", Some(NEW))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
        let mut perm = PermServiceClient::new(ch);
        assert!(perm.enforce(with_key(enforce(), NEW)).await.unwrap().into_inner().ok);
    });
}

/// `permd serve` with `args`: (its exit code, stderr) when it ends within `wait`, else (None,
/// stderr so far) and it is stopped.
fn run_briefly(args: &[&str], wait: Duration) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let snapshot = dir.path().join("s.yaml");
    std::fs::write(&snapshot, example()).unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--config", "/dev/null", "--source"])
        .arg(&snapshot)
        .args(args)
        .env_remove("PERMD_AUTH_KEYS")
        .env_remove("PERMD_INSECURE_LISTEN")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let end = Instant::now() + wait;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            return (status.code(), err);
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            let mut err = String::new();
            child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            return (None, err);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A refusal comes at once; a server that starts is still up after this.
const EXITS: Duration = Duration::from_secs(10);
const SERVES: Duration = Duration::from_millis(1500);

#[test]
fn closed_by_default_beyond_loopback() {
    let (code, err) = run_briefly(&["--http-addr", "0.0.0.0:0", "--grpc-addr", "127.0.0.1:0"], EXITS);
    assert_eq!(code, Some(64), "{err}");
    assert!(
        err.contains("`http_addr`") && err.contains("auth_keys_file") && err.contains("--insecure-listen"),
        "{err}"
    );
    let (code, err) = run_briefly(&["--http-addr", "127.0.0.1:0", "--grpc-addr", "[::]:0"], EXITS);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("`grpc_addr`"), "{err}");
    // An empty key file is no protection.
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("keys");
    std::fs::write(&empty, "# none yet\n").unwrap();
    let (code, err) = run_briefly(
        &["--http-addr", "0.0.0.0:0", "--auth-keys-file", empty.to_str().unwrap()],
        EXITS,
    );
    assert_eq!(code, Some(64), "{err}");
    assert!(
        err.contains("`auth_keys_file`") && err.contains("holds no key"),
        "{err}"
    );
    // A certificate that is not one is a configuration error too, before any port is bound.
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    let (code, err) = run_briefly(
        &[
            "--tls-cert",
            junk.to_str().unwrap(),
            "--tls-key",
            junk.to_str().unwrap(),
        ],
        EXITS,
    );
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("`tls_cert`") && err.contains("junk.pem"), "{err}");
    // Loopback and Unix sockets need nothing.
    let sock = dir.path().join("p.sock");
    let (code, err) = run_briefly(
        &[
            "--http-addr",
            &format!("unix:{}", sock.display()),
            "--grpc-addr",
            "localhost:0",
            "--shutdown-grace",
            "1s",
        ],
        SERVES,
    );
    assert_eq!(code, None, "still serving: {err}");
    // Said in so many words: it starts, and says so.
    let (code, err) = run_briefly(
        &[
            "--http-addr",
            "0.0.0.0:0",
            "--grpc-addr",
            "127.0.0.1:0",
            "--insecure-listen",
        ],
        SERVES,
    );
    assert_eq!(code, None, "still serving: {err}");
    assert!(err.contains("WARN") && err.contains("insecure_listen"), "{err}");
}

#[test]
fn checks_go_on_under_a_flood_of_bad_keys() {
    let (p, _dir, _keys) = keyed(&[]);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood: Vec<_> = (0..3)
        .map(|i| {
            let addr = p.addr.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let key = format!("{NEW}-{i}-{n}");
                    assert_eq!(http(&addr, "POST", "/allowed", Some(&key), CHECK.as_bytes()).0, 401);
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut took = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        let (st, _, v) = http(&p.addr, "POST", "/allowed", Some(NEW), CHECK.as_bytes());
        took.push(t.elapsed());
        assert_eq!((st, v["allow"].as_bool()), (200, Some(true)));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let refused: u64 = flood.into_iter().map(|t| t.join().unwrap()).sum();
    took.sort();
    let p99 = took[took.len() * 99 / 100];
    // Loose: a debug build on a shared machine; bench/README.md has the measured figures.
    assert!(p99 < Duration::from_millis(250), "p99 {p99:?} under {refused} refusals");
    assert!(refused > 100, "the flood ran: {refused}");
}

// ----------------------------------------------------------------------------- TLS

struct Ca {
    params: rcgen::CertificateParams,
    key: rcgen::KeyPair,
    pem: String,
}

fn ca(name: &str) -> Ca {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    let pem = params.self_signed(&key).unwrap().pem();
    Ca { params, key, pem }
}

/// A leaf certificate signed by `ca`, written as `<name>.crt` / `<name>.key` in `dir`.
fn leaf(ca: &Ca, dir: &Path, name: &str, server: bool, expired: bool) -> (PathBuf, PathBuf) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    params.extended_key_usages = vec![if server {
        rcgen::ExtendedKeyUsagePurpose::ServerAuth
    } else {
        rcgen::ExtendedKeyUsagePurpose::ClientAuth
    }];
    if expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let issuer = rcgen::Issuer::from_params(&ca.params, &ca.key);
    let cert = params.signed_by(&key, &issuer).unwrap();
    let (c, k) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}

fn curl(port: u16, ca: &Path, client: Option<&(PathBuf, PathBuf)>, extra: &[&str]) -> (i32, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "10", "--resolve"])
        .arg(format!("localhost:{port}:127.0.0.1"))
        .arg("--cacert")
        .arg(ca);
    if let Some((c, k)) = client {
        cmd.arg("--cert").arg(c).arg("--key").arg(k);
    }
    let out = cmd.args(extra).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn port(addr: &str) -> u16 {
    addr.rsplit(':').next().unwrap().parse().unwrap()
}

/// A tonic channel over rustls to `addr`, presenting `client` when given.
async fn tls_channel(addr: &str, ca_pem: &str, client: Option<&(PathBuf, PathBuf)>) -> Result<Channel, String> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match client {
        Some((c, k)) => {
            let chain = rustls::pki_types::CertificateDer::pem_file_iter(c)
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = rustls::pki_types::PrivateKeyDer::from_pem_file(k).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let addr = addr.to_string();
    Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: http::Uri| {
            let connector = connector.clone();
            let addr = addr.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
        .await
        .map_err(|e| format!("{e:?}"))
}

#[test]
fn mutual_tls_on_both_listeners() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let good_ca = ca("permd clients");
    let other_ca = ca("someone else");
    let server = leaf(&good_ca, d, "server", true, false);
    let client = leaf(&good_ca, d, "client", false, false);
    let stranger = leaf(&other_ca, d, "stranger", false, false);
    let expired = leaf(&good_ca, d, "expired", false, true);
    let ca_file = d.join("ca.pem");
    std::fs::write(&ca_file, &good_ca.pem).unwrap();
    let snapshot = d.join("s.yaml");
    std::fs::write(&snapshot, example()).unwrap();
    // mTLS alone is enough beyond loopback: no key needed.
    let p = Permd::follow(
        &format!("file://{}", snapshot.display()),
        &[
            "--tls-cert",
            server.0.to_str().unwrap(),
            "--tls-key",
            server.1.to_str().unwrap(),
            "--tls-client-ca",
            ca_file.to_str().unwrap(),
        ],
        &[],
    );
    let hp = port(&p.addr);
    let url = |path: &str| format!("https://localhost:{hp}{path}");
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, out) = curl(hp, &ca_file, Some(&client), &["-f", &url("/readyz")]);
        if code == 0 {
            break;
        }
        assert!(Instant::now() < end, "not ready: {out} {}", p.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
    let (code, out) = curl(
        hp,
        &ca_file,
        Some(&client),
        &["-H", "content-type: application/json", "-d", CHECK, &url("/allowed")],
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["allow"], true, "{out}");
    // No certificate, one from another CA, an expired one: the handshake fails, nothing served.
    for (what, cert) in [
        ("none", None),
        ("other CA", Some(&stranger)),
        ("expired", Some(&expired)),
    ] {
        let (code, out) = curl(hp, &ca_file, cert, &[&url("/readyz")]);
        assert_ne!(code, 0, "{what}: {out}");
        assert!(!out.contains("ready"), "{what}: {out}");
    }
    // Plain HTTP to the TLS port gets nothing either.
    let (st, _, _) = http(&p.addr, "GET", "/readyz", None, b"");
    assert_eq!(st, 0);

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let ch = tls_channel(&p.grpc, &good_ca.pem, Some(&client)).await.unwrap();
        let mut perm = PermServiceClient::new(ch.clone());
        assert!(perm.enforce(enforce()).await.unwrap().into_inner().ok);
        let mut health = HealthClient::new(ch);
        let r = health
            .check(HealthCheckRequest { service: String::new() })
            .await
            .unwrap();
        assert_eq!(r.into_inner().status, 1);
        for (what, cert) in [
            ("none", None),
            ("other CA", Some(&stranger)),
            ("expired", Some(&expired)),
        ] {
            // The handshake may complete on the client's side before the server's alert
            // arrives (TLS 1.3); either way no call is answered.
            let refused = match tls_channel(&p.grpc, &good_ca.pem, cert).await {
                Err(_) => true,
                Ok(ch) => PermServiceClient::new(ch).enforce(enforce()).await.is_err(),
            };
            assert!(refused, "gRPC with {what} certificate was served");
        }
    });

    // A renewed server certificate (another CA) is picked up without a restart.
    let renewed_ca = ca("renewed CA");
    let renewed = leaf(&renewed_ca, d, "renewed", true, false);
    std::fs::write(d.join("renewed-ca.pem"), &renewed_ca.pem).unwrap();
    std::fs::copy(&renewed.1, &server.1).unwrap();
    std::fs::copy(&renewed.0, &server.0).unwrap();
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let (code, out) = curl(hp, &d.join("renewed-ca.pem"), Some(&client), &[&url("/healthz")]);
        if code == 0 {
            break;
        }
        assert!(Instant::now() < end, "certificate not reloaded: {out} {}", p.stderr());
        std::thread::sleep(Duration::from_millis(100));
    }
    // The old CA no longer vouches for the server.
    assert_ne!(curl(hp, &ca_file, Some(&client), &[&url("/healthz")]).0, 0);
}

#[test]
fn tls_with_keys_serves_permit_style_bearer_clients() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let the_ca = ca("permd");
    let server = leaf(&the_ca, &d, "server", true, false);
    let ca_file = d.join("ca.pem");
    std::fs::write(&ca_file, &the_ca.pem).unwrap();
    let snapshot = d.join("s.yaml");
    std::fs::write(&snapshot, example()).unwrap();
    let p = Permd::follow(
        &format!("file://{}", snapshot.display()),
        &[
            "--tls-cert",
            server.0.to_str().unwrap(),
            "--tls-key",
            server.1.to_str().unwrap(),
        ],
        &[("PERMD_AUTH_KEYS", &format!("{OLD},{NEW}"))],
    );
    let hp = port(&p.addr);
    let url = format!("https://localhost:{hp}/allowed");
    let auth = format!("Authorization: Bearer {NEW}");
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, out) = curl(
            hp,
            &ca_file,
            None,
            &["-H", &auth, "-H", "content-type: application/json", "-d", CHECK, &url],
        );
        if serde_json::from_str::<Value>(&out).is_ok_and(|v| v["allow"] == true) {
            break;
        }
        assert!(Instant::now() < end, "{out}: {}", p.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_, out) = curl(
        hp,
        &ca_file,
        None,
        &["--http1.1", "-w", "%{http_code}", "-d", CHECK, &url],
    );
    assert!(out.ends_with("401") && out.contains("unauthenticated"), "{out}");
    // Over HTTP/2 the 401 comes before the request body is read, so the stream is then reset
    // (RST_STREAM NO_ERROR, RFC 9113 §8.1); curl sometimes reports that reset instead of the
    // answer. Either way nothing is served.
    for _ in 0..5 {
        let (code, out) = curl(
            hp,
            &ca_file,
            None,
            &["--http2", "-w", "%{http_code}", "-d", CHECK, &url],
        );
        assert!(!out.contains("allow"), "{out}");
        assert!((code == 0 && out.ends_with("401")) || code == 92, "{code}: {out}");
    }
    // HTTP/2 over TLS (ALPN) works too.
    let (_, out) = curl(
        hp,
        &ca_file,
        None,
        &["--http2", "-w", "%{http_version}", "-H", &auth, "-d", CHECK, &url],
    );
    assert!(out.ends_with('2') && out.contains("\"allow\":true"), "{out}");
}

#[test]
fn keys_and_client_certificates_together_need_both() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let the_ca = ca("permd both");
    let server = leaf(&the_ca, d, "server", true, false);
    let client = leaf(&the_ca, d, "client", false, false);
    let ca_file = d.join("ca.pem");
    std::fs::write(&ca_file, &the_ca.pem).unwrap();
    let snapshot = d.join("s.yaml");
    std::fs::write(&snapshot, example()).unwrap();
    let p = Permd::follow(
        &format!("file://{}", snapshot.display()),
        &[
            "--tls-cert",
            server.0.to_str().unwrap(),
            "--tls-key",
            server.1.to_str().unwrap(),
            "--tls-client-ca",
            ca_file.to_str().unwrap(),
        ],
        &[("PERMD_AUTH_KEYS", NEW)],
    );
    let hp = port(&p.addr);
    let url = format!("https://localhost:{hp}/allowed");
    let auth = format!("Authorization: Bearer {NEW}");
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, out) = curl(hp, &ca_file, Some(&client), &["-H", &auth, "-d", CHECK, &url]);
        if out.contains("\"allow\":true") {
            break;
        }
        assert!(Instant::now() < end, "{out}: {}", p.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
    // The certificate without the key: 401; the key without the certificate: no handshake.
    let (_, out) = curl(
        hp,
        &ca_file,
        Some(&client),
        &["--http1.1", "-w", "%{http_code}", "-d", CHECK, &url],
    );
    assert!(out.ends_with("401"), "{out}");
    let (code, out) = curl(hp, &ca_file, None, &["-H", &auth, "-d", CHECK, &url]);
    assert_ne!(code, 0, "{out}");
    assert!(!out.contains("allow"), "{out}");
}
