//! Writes through a sidecar (control.md, "Writes through a sidecar"), against a real
//! PostgreSQL and control plane: Permit's `/facts/…` paths and the perm/v1 write RPCs forwarded
//! with the sidecar's key, answered once the sidecar's own index has the write (a check sent
//! right after sees it, with no `X-Permd-Min-Version`); `X-Wait-Timeout` / `X-Timeout-Policy`
//! on a follower whose delta stream is held back; no control plane (501 / UNIMPLEMENTED); a
//! control plane that is gone (503 / UNAVAILABLE at once while checks keep answering); the
//! control plane's refusals passed through.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::Permd;
use common::control::{Control, create_key};
use common::pg::Postgres;
use permd::api::grpc::perm;
use permd::api::grpc::perm::org_service_client::OrgServiceClient;
use permd::api::grpc::perm::role_service_client::RoleServiceClient;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tonic::Code;
use tonic::transport::Channel;

const S: &str = "/v2/schema/app/default";
const F: &str = "/v2/facts/app/default";

/// A cluster (fsync off: these tests are about the sidecar, not the disk), a control plane on
/// it, and a key of acme/app/default.
fn setup() -> (Postgres, Control, String) {
    let pg = Postgres::start_with(&[("fsync", "off"), ("synchronous_commit", "off")]);
    let key = create_key(&pg, "acme", "app", "default");
    let ctl = Control::start(&pg, &[]);
    (pg, ctl, key)
}

/// A sidecar following `url` with `key`.
fn follow(url: &str, key: &str, extra: &[&str]) -> Permd {
    let p = Permd::follow(url, extra, &[("PERMD_API_KEY", key)]);
    p.ready();
    p
}

/// Tenant `t1`, resource type `document` (with a resource role `owner`), global role `viewer`
/// (`document:read`), written on the control plane directly; its version.
fn schema(ctl: &Control, key: &str) -> u64 {
    let mut version = 0;
    for (path, body) in [
        (format!("{F}/tenants"), json!({"key": "t1"})),
        (
            format!("{S}/resources"),
            json!({"key": "document", "actions": ["read", "write"], "roles": {"owner": {"permissions": ["read", "write"]}}}),
        ),
        (
            format!("{S}/roles"),
            json!({"key": "viewer", "permissions": ["document:read"]}),
        ),
    ] {
        let (status, v, ver) = ctl.call(key, "POST", &path, Some(&body));
        assert_eq!(status, 201, "{path}: {v}");
        version = ver.unwrap();
    }
    version
}

/// One request to `addr`: (status, lowercase head, JSON body or Null).
fn call(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&Value>) -> (u16, String, Value) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(90))).unwrap();
    let bytes = body.map(Value::to_string).unwrap_or_default();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n",
        bytes.len()
    );
    if body.is_some() {
        head.push_str("content-type: application/json\r\n");
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(bytes.as_bytes()).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let split = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(out.len());
    let head = String::from_utf8_lossy(&out[..split]).to_ascii_lowercase();
    let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let rest = out.get(split + 4..).unwrap_or_default();
    (status, head, serde_json::from_slice(rest).unwrap_or(Value::Null))
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')))
        .map(str::trim)
}

fn version_of(head: &str) -> Option<u64> {
    header(head, "x-permd-version").and_then(|v| v.parse().ok())
}

/// A write through the sidecar that must answer `want`, synced: (body, version).
fn write(p: &Permd, method: &str, path: &str, body: Value, want: u16) -> (Value, u64) {
    let (status, head, v) = call(&p.addr, method, path, &[], Some(&body));
    assert_eq!(status, want, "{method} {path} {body}: {v}\n{head}");
    assert_eq!(header(&head, "x-permd-synced"), Some("true"), "{method} {path}: {head}");
    (
        v,
        version_of(&head).unwrap_or_else(|| panic!("{method} {path}: no version: {head}")),
    )
}

/// A refusal of the control plane passed through: the status and a message naming `field`.
fn refused(p: &Permd, method: &str, path: &str, body: Value, want: u16, field: &str) {
    let (status, head, v) = call(&p.addr, method, path, &[], Some(&body));
    assert_eq!(status, want, "{method} {path} {body}: {v}");
    assert_eq!(header(&head, "x-permd-synced"), None, "{head}");
    let msg = v["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.starts_with(&format!("`{field}`")),
        "{method} {path}: `{msg}` should name `{field}`"
    );
}

/// `/allowed` for a type-level check in tenant `t`: (allow, version).
fn allowed_in(p: &Permd, user: &str, action: &str, t: &str, headers: &[(&str, &str)]) -> (bool, u64) {
    let body = json!({"user": user, "action": action, "resource": {"type": "document", "tenant": t}});
    let (status, _, v) = call(&p.addr, "POST", "/allowed", headers, Some(&body));
    assert_eq!(status, 200, "{v}");
    (v["allow"].as_bool().unwrap(), v["version"].as_u64().unwrap())
}

#[test]
fn facts_writes_are_seen_by_the_next_check_on_the_same_sidecar() {
    let (_pg, ctl, key) = setup();
    let v0 = schema(&ctl, &key);
    let p = follow(&ctl.url(), &key, &["--max-body-bytes", "4096"]);
    p.wait_version(v0);

    // Tenant, user, assignment: each answer comes once this sidecar has it.
    let (t, v1) = write(&p, "POST", "/facts/tenants", json!({"key": "t2", "name": "Two"}), 201);
    assert_eq!(t["key"], "t2");
    assert!(v1 > v0);
    let (u, _) = write(
        &p,
        "PUT",
        "/facts/users/alice",
        json!({"email": "alice@example.com"}),
        201,
    );
    assert_eq!(u["key"], "alice");
    assert!(!allowed_in(&p, "alice", "read", "t2", &[]).0);
    let (a, v2) = write(
        &p,
        "POST",
        "/facts/role_assignments",
        json!({"user": "alice", "role": "viewer", "tenant": "t2"}),
        201,
    );
    assert_eq!(
        (a["user"].as_str(), a["role"].as_str()),
        (Some("alice"), Some("viewer"))
    );
    let (allow, at) = allowed_in(&p, "alice", "read", "t2", &[]);
    assert!(allow && at >= v2, "version {at} < {v2}");

    // The SDKs' assign_role / unassign_role: `users/{id}/roles`.
    let (a, _) = write(
        &p,
        "POST",
        "/facts/users/bob%40example.com/roles",
        json!({"role": "viewer", "tenant": "t1"}),
        201,
    );
    assert_eq!(a["user"], "bob@example.com");
    assert!(allowed_in(&p, "bob@example.com", "read", "t1", &[]).0);
    let (status, head, _) = call(
        &p.addr,
        "DELETE",
        "/facts/users/bob%40example.com/roles",
        &[],
        Some(&json!({"role": "viewer", "tenant": "t1"})),
    );
    assert_eq!((status, header(&head, "x-permd-synced")), (204, Some("true")), "{head}");
    assert!(!allowed_in(&p, "bob@example.com", "read", "t1", &[]).0);
    let (status, head, _) = call(
        &p.addr,
        "DELETE",
        "/facts/role_assignments",
        &[],
        Some(&json!({"user": "alice", "role": "viewer", "tenant": "t2"})),
    );
    assert_eq!(status, 204, "{head}");
    assert!(!allowed_in(&p, "alice", "read", "t2", &[]).0);

    // Instances and tuples: an owner of a folder's child document.
    write(
        &p,
        "POST",
        "/facts/resource_instances",
        json!({"key": "d1", "resource": "document", "tenant": "t1"}),
        201,
    );
    write(
        &p,
        "POST",
        "/facts/role_assignments",
        json!({"user": "carol", "role": "owner", "resource_instance": "document:d1"}),
        201,
    );
    let (status, _, v) = call(
        &p.addr,
        "POST",
        "/allowed",
        &[],
        Some(&json!({"user": "carol", "action": "write", "resource": "document:d1"})),
    );
    assert_eq!(status, 200);
    assert_eq!(v["allow"], true, "{v}");

    // Reads pass through, with their query.
    let (status, head, v) = call(&p.addr, "GET", "/facts/role_assignments?user=carol", &[], None);
    assert_eq!(status, 200, "{v}");
    assert_eq!(header(&head, "x-permd-synced"), None);
    assert_eq!(v.as_array().map(Vec::len), Some(1), "{v}");
    let (status, _, v) = call(&p.addr, "GET", "/facts/users/alice", &[], None);
    assert_eq!((status, v["email"].as_str()), (200, Some("alice@example.com")));

    // The control plane's refusals pass through, naming the field.
    refused(&p, "POST", "/facts/tenants", json!({"key": 7}), 400, "key");
    refused(
        &p,
        "POST",
        "/facts/role_assignments",
        json!({"user": "alice", "role": "viewer"}),
        400,
        "tenant",
    );
    refused(
        &p,
        "POST",
        "/facts/role_assignments",
        json!({"user": "alice", "role": "viewer", "tenant": "nope"}),
        404,
        "tenant",
    );
    let (status, _, v) = call(&p.addr, "POST", "/facts/tenants", &[], Some(&json!({"key": "t2"})));
    assert_eq!(status, 409, "{v}");
    let (status, _, _) = call(&p.addr, "GET", "/facts/nothing", &[], None);
    assert_eq!(status, 404);
    // The sidecar's own checks: the body limit, the wait headers, paths that would climb out.
    let big = json!({"key": "t9", "attributes": {"pad": "x".repeat(5000)}});
    let (status, _, _) = call(&p.addr, "POST", "/facts/tenants", &[], Some(&big));
    assert_eq!(status, 413);
    for (h, v) in [("x-wait-timeout", "soon"), ("x-timeout-policy", "maybe")] {
        let (status, _, e) = call(
            &p.addr,
            "POST",
            "/facts/tenants",
            &[(h, v)],
            Some(&json!({"key": "t9"})),
        );
        assert_eq!(status, 400, "{e}");
        assert!(
            e["error"]["message"]
                .as_str()
                .unwrap()
                .to_ascii_lowercase()
                .starts_with(&format!("`{h}`"))
        );
    }
    let (status, _, _) = call(&p.addr, "GET", "/facts/tenants/t9", &[], None);
    assert_eq!(status, 404, "a refused request wrote nothing");
    for path in [
        "/facts/../v1/snapshot",
        "/facts/%2e%2e/%2E%2E/v1/snapshot",
        "/facts",
        "/facts/",
    ] {
        let (status, _, _) = call(&p.addr, "GET", path, &[], None);
        assert_eq!(status, 404, "{path}");
    }
    let (status, _, _) = call(&p.addr, "OPTIONS", "/facts/users", &[], None);
    assert_eq!(status, 405);
    // The key travels, and is never written to the log.
    assert!(!p.stderr().contains(&key));

    // A sidecar with a key the control plane refuses gets its 401, and says nothing else.
    let bad = Permd::follow(&ctl.url(), &[], &[("PERMD_API_KEY", "pk_not_a_key")]);
    let (status, _, v) = call(&bad.addr, "POST", "/facts/tenants", &[], Some(&json!({"key": "t3"})));
    assert_eq!(status, 401, "{v}");
    assert!(!bad.stderr().contains("pk_not_a_key"));
}

/// Assign or unassign `viewer` in `t1` for a random user through `writer`, then check on
/// `reader` (with `X-Permd-Min-Version` when it is another sidecar): the number of checks that
/// did not see their write.
fn write_then_check(writer: &Permd, reader: &Permd, pairs: usize, seed: u64) -> usize {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut assigned = BTreeSet::new();
    let mut stale = 0;
    for i in 0..pairs {
        let user = format!("u{}", rng.random_range(0..20));
        let give = !assigned.contains(&user);
        // Both shapes of the SDKs, alternately.
        let (method, path, body) = match (give, i % 2 == 0) {
            (true, true) => (
                "POST",
                "/facts/role_assignments".to_string(),
                json!({"user": user, "role": "viewer", "tenant": "t1"}),
            ),
            (true, false) => (
                "POST",
                format!("/facts/users/{user}/roles"),
                json!({"role": "viewer", "tenant": "t1"}),
            ),
            (false, true) => (
                "DELETE",
                "/facts/role_assignments".to_string(),
                json!({"user": user, "role": "viewer", "tenant": "t1"}),
            ),
            (false, false) => (
                "DELETE",
                format!("/facts/users/{user}/roles"),
                json!({"role": "viewer", "tenant": "t1"}),
            ),
        };
        let (status, head, v) = call(&writer.addr, method, &path, &[], Some(&body));
        assert_eq!(status, if give { 201 } else { 204 }, "{method} {path}: {v}");
        let version = version_of(&head).unwrap();
        if give {
            assigned.insert(user.clone());
        } else {
            assigned.remove(&user);
        }
        let min = version.to_string();
        let headers: &[(&str, &str)] = if std::ptr::eq(writer, reader) {
            &[]
        } else {
            &[("x-permd-min-version", &min), ("x-permd-wait-ms", "10000")]
        };
        let (allow, at) = allowed_in(reader, &user, "read", "t1", headers);
        if allow != give || at < version {
            stale += 1;
        }
    }
    stale
}

#[test]
fn a_thousand_writes_each_seen_by_the_next_check() {
    let (_pg, ctl, key) = setup();
    let v0 = schema(&ctl, &key);
    let p = follow(&ctl.url(), &key, &[]);
    p.wait_version(v0);
    let started = Instant::now();
    let stale = write_then_check(&p, &p, 1000, 7);
    eprintln!("1000 write-then-check pairs on one sidecar: {:?}", started.elapsed());
    assert_eq!(stale, 0, "checks that did not see the write just answered");
}

#[test]
fn a_thousand_writes_seen_on_another_sidecar_with_min_version() {
    let (_pg, ctl, key) = setup();
    let v0 = schema(&ctl, &key);
    let a = follow(&ctl.url(), &key, &[]);
    let b = follow(&ctl.url(), &key, &[]);
    a.wait_version(v0);
    b.wait_version(v0);
    let started = Instant::now();
    let stale = write_then_check(&a, &b, 1000, 11);
    eprintln!(
        "1000 write-then-check pairs across two sidecars: {:?}",
        started.elapsed()
    );
    assert_eq!(stale, 0, "checks on the other sidecar that did not see the write");
}

/// A TCP proxy in front of the control plane that passes every request through (one request
/// per connection) but holds delta streams back while `stalled`: they get a 200 and heartbeats,
/// never a batch. When the flag clears, held streams end and the follower reconnects.
struct Proxy {
    addr: String,
    stalled: Arc<AtomicBool>,
}

impl Proxy {
    fn start(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let stalled = Arc::new(AtomicBool::new(true));
        let (flag, upstream) = (stalled.clone(), upstream.to_string());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let (flag, upstream) = (flag.clone(), upstream.clone());
                std::thread::spawn(move || proxy_one(conn, &upstream, &flag));
            }
        });
        Proxy { addr, stalled }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

fn proxy_one(mut client: TcpStream, upstream: &str, stalled: &AtomicBool) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        match client.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let path = head.split(' ').nth(1).unwrap_or("");
    if path.starts_with("/v1/deltas") && stalled.load(Ordering::SeqCst) {
        let _ = client.write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n",
        );
        while stalled.load(Ordering::SeqCst) {
            if client.write_all(b"1\r\n\n\r\n").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        return;
    }
    let mut head: Vec<&str> = head
        .split("\r\n")
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
        .collect();
    head.push("connection: close");
    let Ok(mut up) = TcpStream::connect(upstream) else {
        return;
    };
    let _ = up.write_all(format!("{}\r\n\r\n", head.join("\r\n")).as_bytes());
    let _ = up.write_all(&buf[head_end + 4..]);
    let (mut from_client, mut to_up) = (client.try_clone().unwrap(), up.try_clone().unwrap());
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from_client, &mut to_up);
    });
    let _ = std::io::copy(&mut up, &mut client);
    let _ = client.shutdown(std::net::Shutdown::Both);
}

#[test]
fn wait_policies_when_the_follower_lags() {
    let (_pg, ctl, key) = setup();
    let v0 = schema(&ctl, &key);
    let proxy = Proxy::start(&ctl.addr);
    let p = follow(&proxy.url(), &key, &[]);
    p.wait_version(v0);
    let body = |u: &str| json!({"user": u, "role": "viewer", "tenant": "t1"});

    // `ignore` (the default): the write's answer after the wait, marked not synced.
    let started = Instant::now();
    let (status, head, v) = call(
        &p.addr,
        "POST",
        "/facts/role_assignments",
        &[("x-wait-timeout", "0.3")],
        Some(&body("ann")),
    );
    let waited = started.elapsed();
    assert_eq!(status, 201, "{v}");
    assert_eq!(header(&head, "x-permd-synced"), Some("false"), "{head}");
    let v1 = version_of(&head).unwrap();
    assert!(v1 > v0);
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    assert_eq!(v["user"], "ann");
    assert!(!allowed_in(&p, "ann", "read", "t1", &[]).0, "the stream is held back");
    let (status, head, _) = call(
        &p.addr,
        "POST",
        "/facts/role_assignments",
        &[("x-wait-timeout", "0.2"), ("x-timeout-policy", "ignore")],
        Some(&body("ben")),
    );
    assert_eq!((status, header(&head, "x-permd-synced")), (201, Some("false")));

    // `fail`: 424 carrying the version; the write itself is applied.
    let (status, head, v) = call(
        &p.addr,
        "POST",
        "/facts/role_assignments",
        &[("x-wait-timeout", "0.2"), ("x-timeout-policy", "fail")],
        Some(&body("cat")),
    );
    assert_eq!(status, 424, "{v}");
    assert_eq!(v["error"]["code"], "version_not_reached", "{v}");
    let v3 = version_of(&head).unwrap();
    let (status, got, _) = ctl.call(&key, "GET", &format!("{F}/role_assignments?user=cat"), None);
    assert_eq!((status, got.as_array().map(Vec::len)), (200, Some(1)), "{got}");
    // A read carries no version: nothing to wait for, whatever the policy.
    let (status, _, _) = call(
        &p.addr,
        "GET",
        "/facts/tenants/t1",
        &[("x-wait-timeout", "0"), ("x-timeout-policy", "fail")],
        None,
    );
    assert_eq!(status, 200);
    // gRPC: ABORTED with the version, when the control plane answers perm/v1 writes.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let grpc = rt.block_on(async {
        let ch = Channel::from_shared(format!("http://{}", p.grpc))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut roles = RoleServiceClient::new(ch);
        let mut req = tonic::Request::new(perm::AddRoleForUserRequest {
            org_id: "t1".into(),
            user_id: "dan".into(),
            role_id: "viewer".into(),
        });
        req.metadata_mut().insert("x-wait-timeout", "0.2".parse().unwrap());
        req.metadata_mut().insert("x-timeout-policy", "fail".parse().unwrap());
        roles.add_role_for_user(req).await
    });
    let e = grpc.unwrap_err();
    assert_eq!(e.code(), Code::Aborted, "{e:?}");
    let v4: u64 = e
        .metadata()
        .get("x-permd-version")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(v4 > v3, "{e:?}");

    // Once the stream flows again, the follower catches up and sees all of it.
    proxy.stalled.store(false, Ordering::SeqCst);
    p.wait_version(v4);
    for u in ["ann", "ben", "cat", "dan"] {
        assert!(allowed_in(&p, u, "read", "t1", &[]).0, "{u}");
    }
}

#[test]
fn without_a_control_plane_writes_are_unimplemented() {
    let p = Permd::start(Some(&common::example()), &[]);
    p.ready();
    let (status, _, v) = call(&p.addr, "POST", "/facts/users", &[], Some(&json!({"key": "a"})));
    assert_eq!(status, 501, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("file://") && msg.contains("control plane source"), "{msg}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let e = rt.block_on(async {
        let ch = Channel::from_shared(format!("http://{}", p.grpc))
            .unwrap()
            .connect()
            .await
            .unwrap();
        RoleServiceClient::new(ch)
            .create_role(perm::CreateRoleRequest {
                role: Some(perm::Role {
                    name: "r".into(),
                    ..Default::default()
                }),
            })
            .await
            .unwrap_err()
    });
    assert_eq!(e.code(), Code::Unimplemented, "{e:?}");
    assert!(
        e.message().contains("CreateRole") && e.message().contains("file://"),
        "{e:?}"
    );
    // Checks are untouched.
    assert_eq!(
        p.allowed("alice", "read", "document:photo").0,
        p.allowed("alice", "read", "document:photo").0
    );
}

#[test]
fn a_permit_pull_takes_no_writes_and_a_lost_control_plane_fails_fast() {
    let (_pg, mut ctl, key) = setup();
    let v0 = schema(&ctl, &key);
    // Permit pull of the same control plane: no native protocol, no writes.
    let pull = follow(
        &ctl.url(),
        &key,
        &[
            "--source-protocol",
            "permit",
            "--permit-project",
            "app",
            "--permit-env",
            "default",
        ],
    );
    let (status, _, v) = call(&pull.addr, "POST", "/facts/tenants", &[], Some(&json!({"key": "x"})));
    assert_eq!(status, 501, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("Permit protocol"),
        "{v}"
    );

    let p = follow(&ctl.url(), &key, &[]);
    p.wait_version(v0);
    let (_, v1) = write(
        &p,
        "POST",
        "/facts/role_assignments",
        json!({"user": "eve", "role": "viewer", "tenant": "t1"}),
        201,
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ch = rt.block_on(async {
        Channel::from_shared(format!("http://{}", p.grpc))
            .unwrap()
            .connect()
            .await
            .unwrap()
    });

    ctl.child.kill().unwrap();
    ctl.child.wait().unwrap();
    let started = Instant::now();
    let (status, head, v) = call(
        &p.addr,
        "POST",
        "/facts/role_assignments",
        &[],
        Some(&json!({"user": "fay", "role": "viewer", "tenant": "t1"})),
    );
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["error"]["code"], "unavailable");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("cannot be reached"),
        "{v}"
    );
    assert_eq!(header(&head, "retry-after"), Some("1"));
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    let e = rt.block_on(async {
        OrgServiceClient::new(ch.clone())
            .create_org(perm::CreateOrgRequest {
                org_id: "o".into(),
                user_id: String::new(),
            })
            .await
            .unwrap_err()
    });
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // Checks keep answering from the last version.
    let (allow, at) = allowed_in(&p, "eve", "read", "t1", &[]);
    assert!(allow && at >= v1);
    assert!(!p.stderr().contains(&key));
}

/// The version of a forwarded write's answer, checked to be synced on `p` (whose index has it).
fn synced<T>(r: &tonic::Response<T>, p: &Permd) -> u64 {
    let md = r.metadata();
    assert_eq!(
        md.get("x-permd-synced").map(|v| v.to_str().unwrap()),
        Some("true"),
        "{md:?}"
    );
    let version: u64 = md.get("x-permd-version").unwrap().to_str().unwrap().parse().unwrap();
    assert!(p.version().unwrap() >= version);
    version
}

#[tokio::test(flavor = "multi_thread")]
async fn perm_v1_writes_are_forwarded_and_seen_by_the_next_read() {
    use perm::group_service_client::GroupServiceClient;
    use perm::perm_service_client::PermServiceClient;
    let (_pg, ctl, key) = setup();
    for t in ["document", "folder"] {
        let body = json!({"key": t, "actions": ["read", "write"]});
        let (status, v, _) = ctl.call(&key, "POST", &format!("{S}/resources"), Some(&body));
        assert_eq!(status, 201, "{v}");
    }
    let p = follow(&ctl.url(), &key, &[]);
    let ch = Channel::from_shared(format!("http://{}", p.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut orgs = OrgServiceClient::new(ch.clone());
    let mut roles = RoleServiceClient::new(ch.clone());
    let mut groups = GroupServiceClient::new(ch.clone());
    let mut perms = PermServiceClient::new(ch.clone());
    let enforce = |user: &str, res_id: &str| perm::EnforceRequest {
        org_id: "acme".into(),
        user_id: user.into(),
        res_type: "document".into(),
        res_id: res_id.into(),
        act: "read".into(),
        ..Default::default()
    };
    let roles_of = |user: &str| perm::GetRolesForUserRequest {
        org_id: "acme".into(),
        user_id: user.into(),
    };

    // Each answer comes once this sidecar has the write: the next read here sees it.
    let r = orgs
        .create_org(perm::CreateOrgRequest {
            org_id: "acme".into(),
            user_id: "alice".into(),
        })
        .await
        .unwrap();
    synced(&r, &p);
    assert!(perms.enforce(enforce("alice", "")).await.unwrap().get_ref().ok);
    assert!(
        orgs.list_org(perm::ListOrgRequest {})
            .await
            .unwrap()
            .get_ref()
            .orgs
            .contains(&"acme".to_string())
    );
    let viewer = perm::Role {
        name: "viewer".into(),
        org_id: "acme".into(),
        display_name: "Viewers".into(),
        ..Default::default()
    };
    let r = roles
        .create_role(perm::CreateRoleRequest {
            role: Some(viewer.clone()),
        })
        .await
        .unwrap();
    synced(&r, &p);
    let created = r.into_inner().role.unwrap();
    assert_eq!(created.name, "viewer");
    let got = roles.get_role(perm::GetRoleRequest { id: created.id }).await.unwrap();
    assert_eq!(got.get_ref().role.as_ref().unwrap().name, "viewer");
    let r = roles
        .update_role(perm::UpdateRoleRequest {
            role: Some(perm::Role {
                status: "active".into(),
                ..viewer.clone()
            }),
        })
        .await
        .unwrap();
    synced(&r, &p);
    let r = roles
        .add_role_for_user(perm::AddRoleForUserRequest {
            org_id: "acme".into(),
            user_id: "bob".into(),
            role_id: "viewer".into(),
        })
        .await
        .unwrap();
    synced(&r, &p);
    assert_eq!(
        roles.get_roles_for_user(roles_of("bob")).await.unwrap().get_ref().roles,
        ["viewer"]
    );
    // Groups: the viewer's grant on folder f1 reaches the documents in it.
    let r = groups
        .create_group(perm::CreateGroupRequest {
            org_id: "acme".into(),
            res_type: "document".into(),
            group_type: "folder".into(),
            group_id: "f1".into(),
            children: vec!["d1".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    synced(&r, &p);
    let r = perms
        .save_role_perm(perm::PermServiceSaveRolePermRequest {
            org_id: "acme".into(),
            role_id: "viewer".into(),
            menus: vec![],
            groups: vec![perm::perm_service_save_role_perm_request::Group {
                res_type: "document".into(),
                group_type: "folder".into(),
                group_id: "f1".into(),
            }],
        })
        .await
        .unwrap();
    synced(&r, &p);
    assert!(perms.enforce(enforce("bob", "d1")).await.unwrap().get_ref().ok);
    assert!(!perms.enforce(enforce("bob", "d2")).await.unwrap().get_ref().ok);
    let res = |id: &str| perm::AddResForGroupRequest {
        org_id: "acme".into(),
        res_type: "document".into(),
        group_type: "folder".into(),
        group_id: "f1".into(),
        res_id: id.into(),
    };
    synced(&groups.add_res_for_group(res("d2")).await.unwrap(), &p);
    assert!(perms.enforce(enforce("bob", "d2")).await.unwrap().get_ref().ok);
    let r = groups
        .del_res_for_group(perm::DelResForGroupRequest {
            org_id: "acme".into(),
            res_type: "document".into(),
            group_type: "folder".into(),
            group_id: "f1".into(),
            res_id: "d2".into(),
        })
        .await
        .unwrap();
    synced(&r, &p);
    assert!(!perms.enforce(enforce("bob", "d2")).await.unwrap().get_ref().ok);
    let r = groups
        .create_group(perm::CreateGroupRequest {
            org_id: "acme".into(),
            res_type: "document".into(),
            group_type: "folder".into(),
            group_id: "f2".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    synced(&r, &p);
    let r = groups
        .move_group(perm::MoveGroupRequest {
            org_id: "acme".into(),
            res_type: "document".into(),
            cur_group_type: "folder".into(),
            cur_group_id: "f1".into(),
            to_group_type: "folder".into(),
            to_group_id: "f2".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    synced(&r, &p);
    let r = groups
        .delete_group(perm::DeleteGroupRequest {
            org_id: "acme".into(),
            res_type: "document".into(),
            group_type: "folder".into(),
            group_id: "f1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    synced(&r, &p);
    assert!(!perms.enforce(enforce("bob", "d1")).await.unwrap().get_ref().ok);

    // The control plane's refusals come back as their codes, naming the field.
    let e = roles
        .create_role(perm::CreateRoleRequest {
            role: Some(viewer.clone()),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    let e = roles
        .create_role(perm::CreateRoleRequest { role: None })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().starts_with("`role`"), "{e:?}");
    let e = roles
        .add_role_for_user(perm::AddRoleForUserRequest {
            org_id: "nope".into(),
            user_id: "bob".into(),
            role_id: "viewer".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(e.message().starts_with("`org_id`"), "{e:?}");
    let mut req = tonic::Request::new(perm::DeleteOrgRequest { org_id: "acme".into() });
    req.metadata_mut().insert("x-wait-timeout", "soon".parse().unwrap());
    let e = orgs.delete_org(req).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().starts_with("`x-wait-timeout`"), "{e:?}");

    let r = roles
        .del_role_for_user(perm::DelRoleForUserRequest {
            org_id: "acme".into(),
            user_id: "bob".into(),
            role_id: "viewer".into(),
        })
        .await
        .unwrap();
    synced(&r, &p);
    assert!(
        roles
            .get_roles_for_user(roles_of("bob"))
            .await
            .unwrap()
            .get_ref()
            .roles
            .is_empty()
    );
    let r = roles
        .delete_role(perm::DeleteRoleRequest {
            name: "viewer".into(),
            org_id: "acme".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    synced(&r, &p);
    let r = orgs
        .transfer_org(perm::TransferOrgRequest {
            org_id: "acme".into(),
            user_id: "alice".into(),
            new_user_id: "carol".into(),
        })
        .await
        .unwrap();
    synced(&r, &p);
    assert!(perms.enforce(enforce("carol", "")).await.unwrap().get_ref().ok);
    assert!(!perms.enforce(enforce("alice", "")).await.unwrap().get_ref().ok);
    let r = orgs
        .delete_org(perm::DeleteOrgRequest { org_id: "acme".into() })
        .await
        .unwrap();
    synced(&r, &p);
    assert!(
        !orgs
            .list_org(perm::ListOrgRequest {})
            .await
            .unwrap()
            .get_ref()
            .orgs
            .contains(&"acme".to_string())
    );
    assert!(!p.stderr().contains(&key));

    // The sidecar's key is what the control plane sees: a wrong one gets its 401.
    let bad = Permd::follow(&ctl.url(), &[], &[("PERMD_API_KEY", "pk_wrong")]);
    let ch = Channel::from_shared(format!("http://{}", bad.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let e = OrgServiceClient::new(ch)
        .create_org(perm::CreateOrgRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
}
