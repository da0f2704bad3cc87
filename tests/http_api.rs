//! The real binary on 127.0.0.1:0: every endpoint, bad input, hot reload, readiness before
//! the first snapshot, graceful shutdown, config errors. A raw HTTP/1.1 client so malformed
//! requests can be sent as they are.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{BIN, Permd, example};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn checks_answer_on_every_face() {
    let p = Permd::start(Some(&example()), &[]);
    p.ready();
    // Permit SDK shape, with the extra fields and header SDKs send.
    let permit = json!({"user": {"key": "alice", "firstName": "Alice", "attributes": {}}, "action": "write",
        "resource": {"type": "document", "key": "photo", "tenant": "acme", "attributes": {}, "context": {}},
        "context": {}, "sdk": "python"});
    let (st, v) = p.request(
        "POST",
        "/allowed",
        &[
            ("authorization", "Bearer pk_test"),
            ("content-type", "application/json"),
        ],
        permit.to_string().as_bytes(),
    );
    assert_eq!(
        (st, v),
        (
            200,
            json!({"allow": true, "result": true, "reason": "org_role", "version": 42})
        )
    );
    let cases = [
        (
            json!({"user": "bob", "action": "read", "resource": "document:photo"}),
            true,
            "resource_role",
        ),
        (
            json!({"user": "bob", "action": "read", "resource": "document:plan"}),
            false,
            "no_matching_grant",
        ),
        (
            json!({"user": "carol", "action": "play", "resource": "camera:cam1"}),
            true,
            "role_grant",
        ),
        (
            json!({"user": "alice", "action": "read", "resource": "document:plan"}),
            true,
            "org_role",
        ),
        (
            json!({"user": "root", "action": "read", "resource": {"type": "document", "key": "photo", "tenant": "globex"}}),
            false,
            "tenant_mismatch",
        ),
        (
            json!({"user": "alice", "action": "read", "resource": {"type": "document", "tenant": "nope"}}),
            false,
            "unknown_org",
        ),
        (
            json!({"user": "alice", "action": "read", "resource": "video:1"}),
            false,
            "unknown_resource_type",
        ),
        (
            json!({"user": "alice", "action": "fly", "resource": "document:photo"}),
            false,
            "unknown_action",
        ),
    ];
    for (body, allow, reason) in &cases {
        let (st, v) = p.post("/allowed", body.clone());
        assert_eq!(st, 200, "{body}");
        assert_eq!(
            (
                v["allow"].as_bool(),
                v["result"].as_bool(),
                v["reason"].as_str(),
                v["version"].as_u64()
            ),
            (Some(*allow), Some(*allow), Some(*reason), Some(42)),
            "{body}"
        );
    }
    let bulk: Vec<Value> = cases.iter().map(|c| c.0.clone()).collect();
    let (st, v) = p.post("/allowed/bulk", json!(bulk));
    assert_eq!((st, v["version"].as_u64()), (200, Some(42)));
    let got: Vec<(bool, String)> = v["allow"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["allow"].as_bool().unwrap(), e["reason"].as_str().unwrap().to_string()))
        .collect();
    let want: Vec<(bool, String)> = cases.iter().map(|c| (c.1, c.2.to_string())).collect();
    assert_eq!(got, want);

    // perm/v1 Enforce: user, role subject, and a check at a node.
    let (st, v) = p.post(
        "/v1/enforce",
        json!({"org_id": "acme", "user_id": "alice", "res_type": "document", "res_id": "photo", "act": "write"}),
    );
    assert_eq!((st, v), (200, json!({"ok": true, "code": "org_role", "version": 42})));
    let (_, v) = p.post("/v1/enforce", json!({"org_id": "acme", "role_id": "guard", "res_type": "camera", "group_type": "site", "res_id": "hq", "act": "play"}));
    assert_eq!(v["code"], "role_grant");
    let (_, v) = p.post("/v1/enforce", json!({"org_id": "", "user_id": "bob", "role_id": "", "res_type": "document", "res_id": "photo", "act": "delete"}));
    assert_eq!(
        (v["ok"].as_bool(), v["code"].as_str()),
        (Some(false), Some("no_matching_grant"))
    );

    // AuthZEN.
    let eval = json!({"subject": {"type": "user", "id": "bob"}, "action": {"name": "read"}, "resource": {"type": "document", "id": "photo", "properties": {"tenant": "acme"}}, "context": {}});
    let (st, v) = p.post("/access/v1/evaluation", eval.clone());
    assert_eq!(
        (st, v),
        (
            200,
            json!({"decision": true, "context": {"reason": "resource_role", "version": 42}})
        )
    );
    let batch = json!({"subject": {"type": "user", "id": "bob"}, "action": {"name": "read"},
        "evaluations": [{"resource": {"type": "document", "id": "photo"}}, {"resource": {"type": "document", "id": "plan"}}, {"action": {"name": "write"}, "resource": {"type": "document", "id": "photo"}}]});
    let (st, v) = p.post("/access/v1/evaluations", batch.clone());
    let decisions: Vec<bool> = v["evaluations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["decision"].as_bool().unwrap())
        .collect();
    assert_eq!((st, decisions), (200, vec![true, false, false]));
    let mut short = batch.clone();
    short["options"] = json!({"evaluations_semantic": "deny_on_first_deny"});
    let (_, v) = p.post("/access/v1/evaluations", short);
    assert_eq!(v["evaluations"].as_array().unwrap().len(), 2);
    let (st, v) = p.get("/.well-known/authzen-configuration");
    assert_eq!(st, 200);
    assert_eq!(
        v["access_evaluation_endpoint"],
        format!("http://{}/access/v1/evaluation", p.addr)
    );

    // explain, in the body or as a query parameter.
    let (_, v) = p.post(
        "/allowed?explain=true",
        json!({"user": "bob", "action": "read", "resource": "document:photo"}),
    );
    assert_eq!(
        v["debug"]["assignment"],
        json!({"user": "bob", "role": "viewer", "org": "acme", "resource": "folder:shared"})
    );
    let (_, v) = p.post(
        "/allowed",
        json!({"user": "bob", "action": "read", "resource": "document:plan", "explain": true}),
    );
    assert_eq!(
        (v["debug"]["step"].as_u64(), v["debug"]["reason"].as_str()),
        (Some(7), Some("no_matching_grant"))
    );
}

#[test]
fn bad_input_gets_a_precise_error_and_changes_nothing() {
    let p = Permd::start(Some(&example()), &["--max-body-bytes", "2048"]);
    p.ready();
    let error = |(st, v): (u16, Value)| {
        (
            st,
            v["error"]["code"].as_str().unwrap_or("").to_string(),
            v["error"]["message"].as_str().unwrap_or("").to_string(),
        )
    };
    let json_ct = [("content-type", "application/json")];
    let (st, code, _) = error(p.request("POST", "/allowed", &json_ct, b"{\"user\": \"alice\", "));
    assert_eq!((st, code.as_str()), (400, "invalid_argument"));
    let (st, code, msg) = error(p.post(
        "/allowed",
        json!({"user": 5, "action": "read", "resource": "document:photo"}),
    ));
    assert_eq!((st, code.as_str()), (400, "invalid_argument"));
    assert!(msg.contains("user"), "{msg}");
    let (st, _, msg) = error(p.post("/allowed", json!({"user": "alice", "resource": "document:photo"})));
    assert!(st == 400 && msg.contains("`action`"), "{msg}");
    let (st, _, msg) = error(p.post(
        "/allowed",
        json!({"user": "alice", "action": "read", "resource": {"key": "photo"}}),
    ));
    assert!(st == 400 && msg.contains("`resource.type`"), "{msg}");
    let (st, _, msg) = error(p.post("/v1/enforce", json!({"res_type": "document", "act": "read"})));
    assert!(st == 400 && msg.contains("user_id") && msg.contains("role_id"), "{msg}");
    let (st, _, msg) = error(p.post("/v1/enforce", json!({"user_id": "a", "res_type": "", "act": "read"})));
    assert!(st == 400 && msg.contains("`res_type`"), "{msg}");
    let (st, _, msg) = error(p.post(
        "/access/v1/evaluation",
        json!({"subject": {"type": "robot", "id": "r"}, "action": {"name": "read"}, "resource": {"type": "document"}}),
    ));
    assert!(st == 400 && msg.contains("subject.type"), "{msg}");
    let (st, _, msg) = error(p.post(
        "/allowed/bulk",
        json!([{"user": "a", "action": "read", "resource": "document"}, {"user": "a", "resource": "document"}]),
    ));
    assert!(st == 400 && msg.contains("`[1].action`"), "{msg}");
    let many: Vec<Value> = (0..1001)
        .map(|_| json!({"user": "a", "action": "read", "resource": "document"}))
        .collect();
    let body = serde_json::to_vec(&many).unwrap();
    let p_big = Permd::start(Some(&example()), &[]);
    p_big.ready();
    let (st, _, msg) = error(p_big.request("POST", "/allowed/bulk", &json_ct, &body));
    assert!(st == 400 && msg.contains("at most 1000"), "{msg}");
    // Over the body limit, declared or not.
    let big = format!(
        "{{\"user\": \"{}\", \"action\": \"read\", \"resource\": \"document\"}}",
        "x".repeat(4096)
    );
    let (st, code, _) = error(p.request("POST", "/allowed", &json_ct, big.as_bytes()));
    assert_eq!((st, code.as_str()), (413, "payload_too_large"));
    // Invalid UTF-8 inside a string.
    let (st, code, _) = error(p.request(
        "POST",
        "/allowed",
        &json_ct,
        b"{\"user\": \"\xff\xfe\", \"action\": \"read\", \"resource\": \"document\"}",
    ));
    assert_eq!((st, code.as_str()), (400, "invalid_argument"));
    let (st, code, _) = error(p.request("POST", "/allowed", &[("content-type", "application/xml")], b"<a/>"));
    assert_eq!((st, code.as_str()), (415, "unsupported_media_type"));
    let (st, code, _) = error(p.get("/nope"));
    assert_eq!((st, code.as_str()), (404, "not_found"));
    let (st, code, _) = error(p.get("/allowed"));
    assert_eq!((st, code.as_str()), (405, "method_not_allowed"));
    let (st, code, _) = error(p.post("/healthz", json!({})));
    assert_eq!((st, code.as_str()), (405, "method_not_allowed"));
    // Read-your-writes: a version that never comes.
    let (st, code, _) = error(p.request(
        "POST",
        "/allowed",
        &[("x-permd-min-version", "43"), ("x-permd-wait-ms", "100")],
        br#"{"user": "a", "action": "read", "resource": "document"}"#,
    ));
    assert_eq!((st, code.as_str()), (503, "version_not_reached"));
    let (st, v) = p.request(
        "POST",
        "/allowed",
        &[("x-permd-min-version", "42")],
        br#"{"user": "alice", "action": "read", "resource": "document:photo"}"#,
    );
    assert_eq!((st, v["allow"].as_bool()), (200, Some(true)));
    let (st, code, _) = error(p.request("POST", "/allowed", &[("x-permd-min-version", "soon")], b"{}"));
    assert_eq!((st, code.as_str()), (400, "invalid_argument"));
    // Still serving, same version.
    let (st, v) = p.post(
        "/allowed",
        json!({"user": "alice", "action": "write", "resource": "document:photo"}),
    );
    assert_eq!(
        (st, v["allow"].as_bool(), v["version"].as_u64()),
        (200, Some(true), Some(42))
    );
}

#[test]
fn operations_endpoints() {
    let p = Permd::start(Some(&example()), &[]);
    p.ready();
    assert_eq!(p.get("/healthz"), (200, json!({"status": "ok"})));
    let (st, v) = p.get("/readyz");
    assert_eq!(
        (st, v["status"].as_str(), v["version"].as_u64(), v["online"].as_bool()),
        (200, Some("ready"), Some(42), Some(true))
    );
    assert!(v["source"].as_str().unwrap().starts_with("file://"));
    let (st, v) = p.get("/v1/status");
    assert_eq!(st, 200);
    assert_eq!(
        v["counts"],
        json!({"org": 4, "resource_type": 4, "role": 4, "user": 3, "resource": 7, "role_assignment": 4, "role_grant": 1, "menu": 2, "rule": 1, "url_mapping": 0})
    );
    assert_eq!(
        (v["ignored"]["total"].as_u64(), v["last_error"].is_null()),
        (Some(0), true)
    );
}

#[test]
fn ignored_items_are_listed_in_status() {
    let doc = example().replace("  - {user: root, role: superuser, org: globex}", "  - {user: root, role: superuser, org: globex}\n  - {user: eve, role: ghost, org: acme}\n  - {user: eve, role: viewer, org: mars}");
    let p = Permd::start(Some(&doc), &[]);
    p.ready();
    let (_, v) = p.get("/v1/status");
    assert_eq!(v["ignored"]["by_kind"], json!({"role_assignment": 2}));
    let items = v["ignored"]["items"].as_array().unwrap();
    assert!(items.iter().any(|i| i["item"].as_str().unwrap().contains("role=ghost")
        && i["reason"].as_str().unwrap().contains("does not resolve")));
}

#[test]
fn hot_reload_takes_good_edits_and_refuses_bad_ones() {
    let p = Permd::start(Some(&example()), &[]);
    p.ready();
    let alice_deletes = |p: &Permd| {
        p.post(
            "/allowed",
            json!({"user": "alice", "action": "delete", "resource": "document:photo"}),
        )
        .1
    };
    assert_eq!(alice_deletes(&p)["allow"], false);
    // A good edit: version 43 gives alice superuser in acme.
    let good = example().replace("version: 42", "version: 43").replace(
        "{user: alice, role: editor, org: acme}",
        "{user: alice, role: superuser, org: acme}",
    );
    let started = Instant::now();
    std::fs::write(&p.snapshot, &good).unwrap();
    p.wait_for("version 43", |p| alice_deletes(p)["version"] == 43);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "reload took {:?}",
        started.elapsed()
    );
    assert_eq!(alice_deletes(&p)["allow"], true);
    // A bad edit (unknown top-level field) is refused; 43 keeps serving.
    std::fs::write(&p.snapshot, good.replace("version: 43", "version: 44\npolicies: []")).unwrap();
    p.wait_for("the rejection", |p| p.get("/v1/status").1["rejected_total"] == 1);
    let (_, v) = p.get("/v1/status");
    assert!(
        v["last_error"]["message"]
            .as_str()
            .unwrap()
            .contains("unknown field `policies`"),
        "{v}"
    );
    assert_eq!((v["version"].as_u64(), p.get("/readyz").0), (Some(43), 200));
    assert_eq!(alice_deletes(&p)["allow"], true);
    // A file truncated mid-item is refused too.
    let cut = good.find("{user: bob").unwrap() + 8;
    std::fs::write(&p.snapshot, &good[..cut]).unwrap();
    p.wait_for("the second rejection", |p| p.get("/v1/status").1["rejected_total"] == 2);
    assert_eq!(alice_deletes(&p)["version"], 43);
}

#[test]
fn not_ready_until_the_first_snapshot() {
    let p = Permd::start(None, &[]);
    let (st, v) = p.get("/readyz");
    assert_eq!((st, v["status"].as_str()), (503, Some("not_ready")));
    let (st, v) = p.post(
        "/allowed",
        json!({"user": "alice", "action": "read", "resource": "document:photo"}),
    );
    assert_eq!((st, v["error"]["code"].as_str()), (503, Some("unavailable")));
    assert_eq!(p.get("/healthz").0, 200);
    std::fs::write(&p.snapshot, example()).unwrap();
    p.ready();
}

#[test]
fn sigterm_finishes_in_flight_requests_and_exits_zero() {
    let mut p = Permd::start(Some(&example()), &["--shutdown-grace", "5s"]);
    p.ready();
    let addr = p.addr.clone();
    // A request that waits 1.5 s for a version that will not come is in flight at SIGTERM.
    let in_flight = std::thread::spawn(move || {
        let mut s = TcpStream::connect(&addr).unwrap();
        let body = br#"{"user": "alice", "action": "read", "resource": "document:photo"}"#;
        let req = format!(
            "POST /allowed HTTP/1.1\r\nhost: x\r\nconnection: close\r\nx-permd-min-version: 99\r\nx-permd-wait-ms: 1500\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(req.as_bytes()).unwrap();
        s.write_all(body).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    });
    std::thread::sleep(Duration::from_millis(300));
    p.signal("-TERM");
    let answer = in_flight.join().unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 503") && answer.contains("version_not_reached"),
        "{answer}"
    );
    let end = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = p.child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < end, "permd did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
    assert!(TcpStream::connect(&p.addr).is_err(), "the listener is closed");
}

#[test]
fn unix_socket_listener() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("permd.sock");
    let snap = dir.path().join("s.yaml");
    std::fs::write(&snap, example()).unwrap();
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--config",
            "/dev/null",
            "--source",
            snap.to_str().unwrap(),
            "--http-addr",
            &format!("unix:{}", sock.display()),
        ])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    let answer = loop {
        if let Ok(mut s) = std::os::unix::net::UnixStream::connect(&sock) {
            s.write_all(b"GET /readyz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            if out.starts_with("HTTP/1.1 200") {
                break out;
            }
        }
        assert!(Instant::now() < end, "no answer on the unix socket");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(answer.contains("\"version\":42"));
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn bad_config_exits_64_before_binding() {
    let out = Command::new(BIN)
        .args([
            "serve",
            "--config",
            "/dev/null",
            "--source",
            "snapshot.txt",
            "--http-addr",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`source`"));
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("permd.yaml");
    std::fs::write(&cfg, "source: s.yaml\nhttp_adr: 127.0.0.1:1\n").unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("http_adr"));
    // The environment is read too, and flags beat it.
    let out = Command::new(BIN)
        .args(["serve", "--config", "/dev/null"])
        .env("PERMD_SOURCE", "x.yaml")
        .env("PERMD_HTTP_ADDR", "nonsense")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`http_addr`"));
}

#[test]
fn cli_check_validate_and_snapshot_tools() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/example-snapshot.yaml");
    let run = |args: &[&str]| Command::new(BIN).args(args).output().unwrap();
    let out = run(&[
        "check",
        "--snapshot",
        yaml.to_str().unwrap(),
        "--user",
        "bob",
        "--action",
        "read",
        "--resource",
        "document:photo",
    ]);
    assert_eq!(
        (out.status.code(), String::from_utf8_lossy(&out.stdout).trim()),
        (Some(0), "allow resource_role version=42")
    );
    let out = run(&[
        "check",
        "--snapshot",
        yaml.to_str().unwrap(),
        "--user",
        "bob",
        "--action",
        "write",
        "--resource",
        "document:photo",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let out = run(&["validate", yaml.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "format: 1\nversion: 1\nroles: [{key: r, permissions: [read]}]\n").unwrap();
    let out = run(&["validate", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("roles[0].permissions[0]"));
    // YAML → MessagePack → JSON round trip decides the same.
    let mpk = dir.path().join("s.msgpack");
    let js = dir.path().join("s.json");
    assert!(
        run(&["snapshot", "convert", yaml.to_str().unwrap(), mpk.to_str().unwrap()])
            .status
            .success()
    );
    assert!(
        run(&["snapshot", "convert", mpk.to_str().unwrap(), js.to_str().unwrap()])
            .status
            .success()
    );
    let out = run(&[
        "check",
        "--snapshot",
        js.to_str().unwrap(),
        "--user",
        "carol",
        "--action",
        "play",
        "--resource",
        "camera:cam1",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "allow role_grant version=42"
    );
    let generated = dir.path().join("g.msgpack");
    let out = run(&[
        "snapshot",
        "generate",
        "--users",
        "100",
        "--assignments",
        "1000",
        "--resources",
        "500",
        "--orgs",
        "10",
        "--out",
        generated.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let out = run(&["snapshot", "stats", generated.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("role_assignment  1000"));
    // check against a running permd.
    let p = Permd::start(Some(&example()), &[]);
    p.ready();
    let out = run(&[
        "check",
        "--url",
        &format!("http://{}", p.addr),
        "--role",
        "guard",
        "--action",
        "play",
        "--resource",
        "camera:hq",
        "--group-type",
        "site",
        "--tenant",
        "acme",
    ]);
    assert_eq!(
        (out.status.code(), String::from_utf8_lossy(&out.stdout).trim()),
        (Some(0), "allow role_grant version=42")
    );
}

#[test]
fn admin_listener_serves_operations_only() {
    let mut p = Permd::start(Some(&example()), &["--admin-addr", "127.0.0.1:0"]);
    p.ready();
    let admin = p.admin.clone().expect("admin address logged");
    let http = std::mem::replace(&mut p.addr, admin);
    assert_eq!(p.get("/readyz").0, 200);
    assert_eq!(p.get("/healthz").0, 200);
    // Health, readiness and metrics only: the status page names ignored items.
    assert_eq!(p.get("/v1/status").0, 404);
    assert_eq!(p.get("/local/role_assignments").0, 404);
    let (st, v) = p.post(
        "/allowed",
        json!({"user": "alice", "action": "write", "resource": "document:photo"}),
    );
    assert_eq!((st, v["error"]["code"].as_str()), (404, Some("not_found")));
    p.addr = http;
    let (st, v) = p.post(
        "/allowed",
        json!({"user": "alice", "action": "write", "resource": "document:photo"}),
    );
    assert_eq!((st, v["allow"].as_bool()), (200, Some(true)));
}

/// Conditions (model.md §5) on every HTTP face of the example: the owner rule, the guard's
/// conditional export with the request's context, request attributes never overriding stored
/// ones, explain naming what was tried, and the queries agreeing with the checks.
#[test]
fn conditions_on_every_face() {
    let p = Permd::start(Some(&example()), &[]);
    p.ready();
    let allowed = |body: Value| {
        let (st, v) = p.post("/allowed", body);
        assert_eq!(st, 200, "{v}");
        (v["allow"].as_bool().unwrap(), v["reason"].as_str().unwrap().to_string())
    };
    // The rule: bob owns the notes; alice does not (and her request cannot say she does: the
    // stored `owner` wins over the request's).
    assert_eq!(
        allowed(json!({"user": "bob", "action": "delete", "resource": "document:notes"})),
        (true, "attribute_rule".into())
    );
    assert_eq!(
        allowed(
            json!({"user": "alice", "action": "delete", "resource": {"type": "document", "key": "notes", "attributes": {"owner": "alice"}}})
        ),
        (false, "no_matching_grant".into())
    );
    // A type-level check sees only the request's attributes.
    assert_eq!(
        allowed(
            json!({"user": "dan", "action": "write", "resource": {"type": "document", "tenant": "acme", "attributes": {"owner": "dan"}}})
        ),
        (true, "attribute_rule".into())
    );
    // The guard's export: context decides; a context of the wrong type denies.
    for (ctx, allow) in [
        (json!({"ip": "10.0.0.7"}), true),
        (json!({"ip": "192.168.0.1"}), false),
        (json!({"ip": 10}), false),
        (json!({}), false),
    ] {
        let (ok, _) = allowed(json!({"user": "carol", "action": "export", "resource": "camera:cam1", "context": ctx}));
        assert_eq!(ok, allow, "{ctx}");
    }
    let (st, v) = p.post(
        "/allowed",
        json!({"user": "carol", "action": "export", "resource": "camera:cam1", "context": "10.0.0.1"}),
    );
    assert_eq!(st, 400, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("context"), "{v}");
    // Explain on a deny lists the condition tried and why it failed.
    let (_, v) = p.post(
        "/allowed?explain=true",
        json!({"user": "carol", "action": "export", "resource": "camera:cam1"}),
    );
    let tried = &v["debug"]["conditions_tried"];
    assert_eq!(tried[0]["when"], json!("context.ip.startsWith('10.')"), "{v}");
    assert!(tried[0]["result"].as_str().unwrap().starts_with("error:"), "{v}");
    assert!(tried[0]["item"].as_str().unwrap().contains("guard"), "{v}");
    // AuthZEN: subject and resource properties, context.
    let (_, v) = p.post(
        "/access/v1/evaluation",
        json!({"subject": {"type": "user", "id": "carol"}, "action": {"name": "export"},
               "resource": {"type": "camera", "id": "cam1", "properties": {"tenant": "acme"}},
               "context": {"ip": "10.9.9.9"}}),
    );
    assert_eq!(v["decision"], json!(true), "{v}");
    let (_, v) = p.post(
        "/access/v1/evaluations",
        json!({"subject": {"type": "user", "id": "erin"}, "action": {"name": "write"},
               "evaluations": [
                   {"resource": {"type": "document", "properties": {"tenant": "acme", "owner": "erin"}}},
                   {"resource": {"type": "document", "properties": {"tenant": "acme", "owner": "frank"}}}]}),
    );
    assert_eq!(
        (
            v["evaluations"][0]["decision"].clone(),
            v["evaluations"][1]["decision"].clone()
        ),
        (json!(true), json!(false)),
        "{v}"
    );
    // Queries: bob may write the notes (the rule), and authorized users of the notes say so.
    let (_, v) = p.post(
        "/authorized_users",
        json!({"action": "write", "resource": "document:notes"}),
    );
    let users = v["users"].as_object().unwrap();
    assert!(users.contains_key("bob"), "{v}");
    assert!(users.contains_key("alice"), "{v}");
    assert_eq!(users["bob"][0]["rule"], json!("owners-edit"), "{v}");
    let (_, v) = p.post(
        "/access/v1/search/resource",
        json!({"subject": {"type": "user", "id": "bob"}, "action": {"name": "delete"}, "resource": {"type": "document"}}),
    );
    assert_eq!(v["results"], json!([{"type": "document", "id": "notes"}]), "{v}");
    let (_, v) = p.post(
        "/access/v1/search/subject",
        json!({"subject": {"type": "user"}, "action": {"name": "export"}, "resource": {"type": "camera", "id": "cam1"}, "context": {"ip": "10.0.0.1"}}),
    );
    let ids: Vec<&str> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"carol"), "{v}");
}
