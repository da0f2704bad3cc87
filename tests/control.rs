//! The control plane against a real PostgreSQL: keys and project isolation, the write path
//! (versions, reject rules, bad input storing nothing), the native protocol served (snapshot
//! encoded once, delta streams, 410), rate limits, sidecars following it, and faults (the
//! database restarted under writes, a replica killed under its sidecars).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::Permd;
use common::control::{Control, cli, create_key, deltas};
use common::pg::Postgres;
use permd::model::Snapshot;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn snapshot_doc(v: &Value) -> Snapshot {
    Snapshot::load(v.to_string().as_bytes(), permd::model::Encoding::Json).unwrap()
}

/// Random ops over a small universe, so upserts replace and deletes hit.
fn random_ops(rng: &mut SmallRng, n: usize) -> Vec<Value> {
    let mut ops = Vec::new();
    for _ in 0..n {
        let org = format!("o{}", rng.random_range(0..3));
        let user = format!("u{}", rng.random_range(0..6));
        let role = format!("r{}", rng.random_range(0..4));
        let res = format!("doc:d{}", rng.random_range(0..6));
        let (kind, value) = match rng.random_range(0..8) {
            0 => (
                "org",
                if rng.random_bool(0.3) {
                    json!({"key": org, "parent": format!("o{}", rng.random_range(0..3))})
                } else {
                    json!({"key": org, "attributes": {"n": rng.random_range(0..100)}})
                },
            ),
            1 => ("resource_type", json!({"key": "doc", "actions": ["read", "write"]})),
            2 => {
                let perms = ["doc:read", "doc:write", "doc:*", "*:*"];
                let p = perms[rng.random_range(0..perms.len())];
                if rng.random_bool(0.3) {
                    ("role", json!({"key": role, "org": org, "permissions": [p]}))
                } else {
                    (
                        "role",
                        json!({"key": role, "permissions": [p], "extends": [format!("r{}", rng.random_range(0..4))]}),
                    )
                }
            }
            3 => ("user", json!({"key": user, "email": format!("{user}@example.com")})),
            4 => {
                let parent = format!("doc:d{}", rng.random_range(0..6));
                (
                    "resource",
                    json!({"type": "doc", "key": &res[4..], "org": org, "parents": [parent]}),
                )
            }
            5 | 6 => {
                if rng.random_bool(0.5) {
                    ("role_assignment", json!({"user": user, "role": role, "org": org}))
                } else {
                    (
                        "role_assignment",
                        json!({"user": user, "role": role, "org": org, "resource": res}),
                    )
                }
            }
            _ => (
                "role_grant",
                json!({"org": org, "role": role, "resource": res, "actions": ["doc:read"]}),
            ),
        };
        let op = if rng.random_bool(0.25) { "delete" } else { "upsert" };
        ops.push(json!({"op": op, "kind": kind, "value": value}));
    }
    ops
}

/// Every (user, action, doc) of the random universe, asked of a sidecar.
fn decisions(p: &Permd) -> Vec<bool> {
    let mut out = Vec::new();
    for u in 0..6 {
        for a in ["read", "write"] {
            for d in 0..7 {
                out.push(p.allowed(&format!("u{u}"), a, &format!("doc:d{d}")).0);
            }
        }
    }
    out
}

#[test]
fn keys_reach_only_their_project() {
    let pg = Postgres::start();
    let a = create_key(&pg, "acme", "app", "default");
    let b = create_key(&pg, "acme", "other", "default");
    let ctl = Control::start(&pg, &[]);
    assert!(a.starts_with("pk_") && a != b);

    // Missing, malformed, wrong: 401, the same body, nothing about any project.
    for auth in [None, Some("Bearer nope"), Some("Bearer pk_wrong"), Some("Basic abc")] {
        let headers: Vec<(&str, &str)> = auth.iter().map(|v| ("authorization", *v)).collect();
        for path in ["/v1/snapshot", "/v1/deltas?since=0", "/v2/facts/app/default/users"] {
            let (status, head, body) = ctl.raw("GET", path, &headers, b"");
            assert_eq!(status, 401, "{path} with {auth:?}");
            assert!(head.contains("www-authenticate: bearer"), "{head}");
            let body = String::from_utf8_lossy(&body);
            assert!(!body.contains("app") && !body.contains("acme"), "{body}");
        }
        let (status, _, _) = ctl.raw("POST", "/v1/batches", &headers, br#"{"ops":[]}"#);
        assert_eq!(status, 401);
    }

    // A write through A's key is in A's snapshot and feed, never in B's.
    let (status, body, version) = ctl.batch(
        &a,
        json!([{"op": "upsert", "kind": "user", "value": {"key": "secret-user-of-a"}}]),
    );
    assert_eq!((status, version), (200, Some(1)), "{body}");
    assert_eq!(body["version"], 1);
    assert_eq!(ctl.snapshot(&a)["users"][0]["key"], "secret-user-of-a");
    let sb = ctl.snapshot(&b);
    assert_eq!(sb["version"], 0);
    assert!(!sb.to_string().contains("secret-user-of-a"));
    // B is at version 0: asking it for anything after 0 is asking ahead of it.
    assert_eq!(ctl.call(&b, "GET", "/v1/deltas?since=1", None).0, 410);
    let batches = deltas(&ctl, &a, 0, 1);
    assert_eq!(batches.len(), 1);

    // Keys are stored hashed: neither key appears anywhere in the database.
    let dump = pg.psql("SELECT string_agg(encode(key_hash, 'escape') || prefix, ' ') FROM api_keys");
    assert!(!dump.contains(&a) && !dump.contains(&b));
    let (code, listing, _) = cli(&pg, &["keys", "list"]);
    assert_eq!(code, 0);
    assert!(
        listing.contains("acme/app/default") && !listing.contains(&a),
        "{listing}"
    );

    // Revoked: refused within about a second.
    let id = pg.psql("SELECT k.id FROM api_keys k JOIN projects p ON p.id = k.project_id WHERE p.name = 'other'");
    let (code, _, err) = cli(&pg, &["keys", "revoke", id.trim()]);
    assert_eq!(code, 0, "{err}");
    let end = Instant::now() + Duration::from_secs(3);
    loop {
        let (status, _, _) = ctl.call(&b, "GET", "/v1/snapshot", None);
        if status == 401 {
            break;
        }
        assert!(Instant::now() < end, "a revoked key still works");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, _, err) = cli(&pg, &["keys", "revoke", id.trim()]);
    assert_eq!(code, 2, "revoking twice: {err}");
}

#[test]
fn writes_are_versions_and_the_snapshot_is_their_sum() {
    let pg = Postgres::start();
    let key = create_key(&pg, "acme", "app", "default");
    let ctl = Arc::new(Control::start(&pg, &[]));
    let follower = Permd::follow(&ctl.url(), &[], &[("PERMD_API_KEY", &key)]);
    follower.ready();

    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut checkpoints = Vec::new();
    for phase in 0..4u64 {
        // Four writers at once, each a few batches of random ops.
        let writers: Vec<_> = (0..4u64)
            .map(|w| {
                let (ctl, key, seen) = (ctl.clone(), key.clone(), seen.clone());
                std::thread::spawn(move || {
                    let mut rng = SmallRng::seed_from_u64(phase * 100 + w);
                    for _ in 0..5 {
                        let n = rng.random_range(1..12);
                        let (status, body, version) = ctl.batch(&key, Value::Array(random_ops(&mut rng, n)));
                        assert_eq!(status, 200, "{body}");
                        assert_eq!(version, body["version"].as_u64());
                        seen.lock().unwrap().push(version.unwrap());
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        let snap = ctl.snapshot(&key);
        checkpoints.push((snap["version"].as_u64().unwrap(), snapshot_doc(&snap)));
    }
    let last = checkpoints.last().unwrap().0;
    // Versions are contiguous: every write that changed something has its own.
    let mut versions = seen.lock().unwrap().clone();
    versions.sort_unstable();
    versions.dedup();
    assert_eq!(*versions.last().unwrap(), last);
    let batches = deltas(&ctl, &key, 0, last);
    for (at, b) in (0u64..).zip(&batches) {
        assert_eq!((b.from_version, b.to_version), (at, at + 1), "batches are contiguous");
    }
    // The snapshot at each checkpoint equals the empty document plus every batch up to it.
    let mut doc = Snapshot {
        format: 1,
        ..Snapshot::default()
    };
    for (version, expected) in &checkpoints {
        let from = doc.version;
        for b in batches
            .iter()
            .filter(|b| b.from_version >= from && b.to_version <= *version)
        {
            doc.apply_ops(&b.ops);
            doc.version = b.to_version;
        }
        assert_eq!(&doc, expected, "snapshot at version {version}");
    }
    // A replica with nothing cached reads the same document from the database (the first
    // replica brings its cached one forward by applying batches).
    let fresh = Control::start(&pg, &[]);
    assert_eq!(
        snapshot_doc(&fresh.snapshot(&key)),
        doc,
        "a fresh read equals the batches applied"
    );

    // The follower converged, and decides as `permd serve` on that snapshot file does.
    follower.wait_version(last);
    let file = Permd::start(Some(&serde_json::to_string(&ctl.snapshot(&key)).unwrap()), &[]);
    // A YAML file holds the JSON document (JSON is YAML).
    file.ready();
    assert_eq!(file.version(), Some(last));
    assert_eq!(decisions(&follower), decisions(&file));

    // A write that changes nothing makes no version.
    let (_, _, v) = ctl.batch(
        &key,
        json!([{"op": "upsert", "kind": "resource_type", "value": {"key": "doc", "actions": ["read", "write"]}}]),
    );
    let (_, _, again) = ctl.batch(
        &key,
        json!([{"op": "upsert", "kind": "resource_type", "value": {"key": "doc", "actions": ["read", "write"]}}]),
    );
    assert_eq!(v, again);
}

#[test]
fn bad_writes_store_nothing() {
    let pg = Postgres::start();
    let key = create_key(&pg, "acme", "app", "default");
    let other = create_key(&pg, "evil", "app", "default");
    let ctl = Control::start(&pg, &[]);
    let (_, _, v) = ctl.batch(
        &key,
        json!([{"op": "upsert", "kind": "user", "value": {"key": "alice"}}]),
    );
    assert_eq!(v, Some(1));
    let count = || pg.psql("SELECT (SELECT count(*) FROM changes) || '/' || (SELECT count(*) FROM users)");
    let before = count();
    let bad: Vec<(&str, Vec<u8>, &str)> = vec![
        ("not json", b"{\"ops\": [".to_vec(), "does not parse"),
        ("no ops", b"{}".to_vec(), "ops"),
        ("unknown field", br#"{"ops": [], "extra": 1}"#.to_vec(), "extra"),
        ("unknown kind", br#"{"ops": [{"op": "upsert", "kind": "usr", "value": {"key": "a"}}]}"#.to_vec(), "ops[0].kind"),
        ("unknown op", br#"{"ops": [{"op": "put", "kind": "user", "value": {"key": "a"}}]}"#.to_vec(), "ops[0].op"),
        ("bad permission", br#"{"ops": [{"op": "upsert", "kind": "user", "value": {"key": "b"}}, {"op": "upsert", "kind": "role", "value": {"key": "r", "permissions": ["nocolon"]}}]}"#.to_vec(), "ops[1].value.permissions[0]"),
        ("empty key", br#"{"ops": [{"op": "upsert", "kind": "user", "value": {"key": ""}}]}"#.to_vec(), "ops[0].value"),
        ("long key", format!(r#"{{"ops": [{{"op": "upsert", "kind": "user", "value": {{"key": "{}"}}}}]}}"#, "k".repeat(300)).into_bytes(), "ops[0].value"),
        ("nul", br#"{"ops": [{"op": "upsert", "kind": "user", "value": {"key": "b"}}, {"op": "upsert", "kind": "user", "value": {"key": "a\u0000b"}}]}"#.to_vec(), "ops[1].value"),
        ("nul in attributes", br#"{"ops": [{"op": "upsert", "kind": "user", "value": {"key": "b", "attributes": {"x": ["\u0000"]}}}]}"#.to_vec(), "ops[0].value"),
    ];
    for (what, body, field) in &bad {
        let (status, _, resp) = ctl.raw(
            "POST",
            "/v1/batches",
            &[
                ("authorization", &format!("Bearer {key}")),
                ("content-type", "application/json"),
            ],
            body,
        );
        let resp: Value = serde_json::from_slice(&resp).unwrap_or(Value::Null);
        assert_eq!(status, 400, "{what}: {resp}");
        let msg = resp["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains(field), "{what}: `{msg}` should name {field}");
        assert_eq!(count(), before, "{what} stored something");
    }
    // 10 MB: refused before it is read whole.
    let big = vec![b' '; 10 << 20];
    let (status, _, _) = ctl.raw(
        "POST",
        "/v1/batches",
        &[
            ("authorization", &format!("Bearer {key}")),
            ("content-type", "application/json"),
        ],
        &big,
    );
    assert_eq!(status, 413);
    let (status, _, _) = ctl.raw(
        "POST",
        "/v1/batches",
        &[
            ("authorization", &format!("Bearer {key}")),
            ("content-type", "text/xml"),
        ],
        b"{}",
    );
    assert_eq!(status, 415);
    // SQL metacharacters are data.
    let hostile = "x'); DROP TABLE users; -- \\\" ' ` $$ \u{1F600}";
    let (status, body, v) = ctl.batch(
        &key,
        json!([{"op": "upsert", "kind": "user", "value": {"key": hostile, "email": hostile, "attributes": {hostile: hostile}}}]),
    );
    assert_eq!((status, v), (200, Some(2)), "{body}");
    let snap = ctl.snapshot(&key);
    let u = snap["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["key"] == hostile)
        .unwrap();
    assert_eq!(u["email"], hostile);
    assert_eq!(u["attributes"][hostile], hostile);
    // The other project's key cannot delete it.
    let (status, _, _) = ctl.batch(
        &other,
        json!([{"op": "delete", "kind": "user", "value": {"key": hostile}}]),
    );
    assert_eq!(status, 200);
    assert!(ctl.snapshot(&key).to_string().contains("DROP TABLE"));
    assert!(!ctl.snapshot(&other).to_string().contains("DROP TABLE"));
    // Wrong methods and routes.
    assert_eq!(ctl.call(&key, "GET", "/v1/batches", None).0, 405);
    assert_eq!(ctl.call(&key, "GET", "/v1/nothing", None).0, 404);
    assert_eq!(ctl.call(&key, "GET", "/v1/deltas", None).0, 400);
    assert_eq!(ctl.call(&key, "GET", "/v1/deltas?since=x", None).0, 400);
}

#[test]
fn rate_limits_answer_429_with_retry_after() {
    let pg = Postgres::start();
    let key = create_key(&pg, "acme", "app", "default");
    let other = create_key(&pg, "acme", "app2", "default");
    let ctl = Control::start(&pg, &["--rate-limit-minute", "5"]);
    for i in 0..5 {
        assert_eq!(ctl.call(&key, "GET", "/v1/snapshot", None).0, 200, "request {i}");
    }
    let (status, head, _) = ctl.raw(
        "GET",
        "/v1/snapshot",
        &[("authorization", &format!("Bearer {key}"))],
        b"",
    );
    assert_eq!(status, 429);
    let retry: u64 = head
        .lines()
        .find_map(|l| l.strip_prefix("retry-after: "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    // Another key is not limited by this one; health is never limited.
    assert_eq!(ctl.call(&other, "GET", "/v1/snapshot", None).0, 200);
    assert_eq!(ctl.raw("GET", "/healthz", &[], b"").0, 200);
    assert!(ctl.metrics()["permd_control_refused_total{reason=\"rate_limited\"}"] >= 1.0);
}

#[test]
fn one_encode_per_version_and_410_past_retention() {
    let pg = Postgres::start();
    let key = create_key(&pg, "acme", "app", "default");
    let ctl = Arc::new(Control::start(&pg, &["--retention", "1s"]));
    let (_, _, v) = ctl.batch(&key, json!([{"op": "upsert", "kind": "org", "value": {"key": "acme"}}]));
    assert_eq!(v, Some(1));
    let encodes = |c: &Control| c.metrics()["permd_control_snapshot_encodes_total"];
    let before = encodes(&ctl);
    let threads: Vec<_> = (0..50)
        .map(|_| {
            let (ctl, key) = (ctl.clone(), key.clone());
            std::thread::spawn(move || {
                let auth = format!("Bearer {key}");
                let (status, head, body) = ctl.raw(
                    "GET",
                    "/v1/snapshot",
                    &[("authorization", &auth), ("accept", "application/msgpack")],
                    b"",
                );
                assert_eq!(status, 200);
                assert!(head.contains("etag: \"1\""), "{head}");
                Snapshot::load(&body, permd::model::Encoding::MessagePack).unwrap()
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap().version, 1);
    }
    assert_eq!(encodes(&ctl) - before, 1.0, "50 requests for one version, one encode");
    let (status, _, _) = ctl.raw(
        "GET",
        "/v1/snapshot",
        &[("authorization", &format!("Bearer {key}")), ("if-none-match", "\"1\"")],
        b"",
    );
    assert_eq!(status, 304);

    // Ahead of the project: 410. Older than the batches kept: 410.
    assert_eq!(ctl.call(&key, "GET", "/v1/deltas?since=9", None).0, 410);
    let (_, _, v) = ctl.batch(&key, json!([{"op": "upsert", "kind": "org", "value": {"key": "b"}}]));
    assert_eq!(v, Some(2));
    let end = Instant::now() + Duration::from_secs(10);
    while pg.psql("SELECT count(*) FROM changes").trim() != "0" {
        assert!(Instant::now() < end, "batches past retention are dropped");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, body, _) = ctl.call(&key, "GET", "/v1/deltas?since=0", None);
    assert_eq!(status, 410, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("snapshot"));
    // A sidecar far behind gets 410 and then a snapshot: it starts at version 2 all the same.
    let follower = Permd::follow(&ctl.url(), &[], &[("PERMD_API_KEY", &key)]);
    follower.wait_version(2);
}

/// A TCP forwarder to whichever backend is current: a Service in front of replicas.
struct Forwarder {
    addr: String,
    backend: Arc<Mutex<String>>,
    stop: Arc<AtomicBool>,
}

impl Forwarder {
    fn start(backend: &str) -> Forwarder {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let backend = Arc::new(Mutex::new(backend.to_string()));
        let stop = Arc::new(AtomicBool::new(false));
        let (b, st) = (backend.clone(), stop.clone());
        l.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                let Ok((client, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                client.set_nonblocking(false).unwrap();
                let target = b.lock().unwrap().clone();
                let Ok(server) = TcpStream::connect(&target) else {
                    continue;
                };
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Forwarder { addr, backend, stop }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// `/allowed` for reading docs in org acme.
fn reads_docs(p: &Permd, user: &str) -> bool {
    let (status, v) = p.post(
        "/allowed",
        json!({"user": user, "action": "read", "resource": {"type": "doc", "tenant": "acme"}}),
    );
    assert_eq!(status, 200, "{v}");
    v["allow"].as_bool().unwrap()
}

#[test]
fn faults_lose_nothing() {
    let pg = Postgres::start();
    let key = create_key(&pg, "acme", "app", "default");
    let a = Control::start(&pg, &[]);
    let b = Control::start(&pg, &[]);
    let fwd = Forwarder::start(&a.addr);
    let sidecar = Permd::follow(
        &format!("http://{}", fwd.addr),
        &["--upstream-timeout", "2s"],
        &[("PERMD_API_KEY", &key)],
    );
    sidecar.ready();
    let write = |ctl: &Control, i: u64| {
        ctl.batch(
            &key,
            json!([{"op": "upsert", "kind": "role_assignment", "value": {"user": format!("u{i}"), "role": "viewer", "org": "acme"}}]),
        )
    };
    let setup = json!([
        {"op": "upsert", "kind": "org", "value": {"key": "acme"}},
        {"op": "upsert", "kind": "resource_type", "value": {"key": "doc", "actions": ["read"]}},
        {"op": "upsert", "kind": "role", "value": {"key": "viewer", "permissions": ["doc:read"]}}
    ]);
    assert_eq!(a.batch(&key, setup).0, 200);
    // Writes through replica B reach the sidecar on replica A (B's NOTIFY, A's stream).
    let mut applied = vec![];
    for i in 0..10 {
        let (status, _, v) = write(&b, i);
        assert_eq!(status, 200);
        applied.push((i, v.unwrap()));
    }
    sidecar.wait_version(applied.last().unwrap().1);

    // The database stops under writes: 503 with Retry-After, nothing half-written.
    pg.stop();
    let (status, head, _) = a.raw(
        "POST",
        "/v1/batches",
        &[
            ("authorization", &format!("Bearer {key}")),
            ("content-type", "application/json"),
        ],
        json!({"ops": [{"op": "upsert", "kind": "user", "value": {"key": "lost"}}]})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(status, 503, "{head}");
    assert!(head.contains("retry-after: 1"), "{head}");
    assert_eq!(a.raw("GET", "/readyz", &[], b"").0, 503);
    // The sidecar keeps serving its version meanwhile.
    assert!(reads_docs(&sidecar, "u3"));
    pg.start_again();
    let end = Instant::now() + Duration::from_secs(20);
    while a.raw("GET", "/readyz", &[], b"").0 != 200 {
        assert!(Instant::now() < end, "the replica is ready again");
        std::thread::sleep(Duration::from_millis(100));
    }
    for i in 10..20 {
        let (status, body, v) = write(&a, i);
        assert_eq!(status, 200, "{body}");
        applied.push((i, v.unwrap()));
    }
    sidecar.wait_version(applied.last().unwrap().1);

    // Replica A dies under its sidecar: the Service now leads to B; the sidecar resumes.
    *fwd.backend.lock().unwrap() = b.addr.clone();
    drop(a);
    for i in 20..30 {
        let (status, _, v) = write(&b, i);
        assert_eq!(status, 200);
        applied.push((i, v.unwrap()));
    }
    let last = applied.last().unwrap().1;
    sidecar.wait_version(last);
    for (i, _) in &applied {
        assert!(reads_docs(&sidecar, &format!("u{i}")), "u{i}");
    }
    assert!(!reads_docs(&sidecar, "lost"));
    // Nothing lost or repeated: one batch per version, each write once.
    let batches = deltas(&b, &key, 0, last);
    assert_eq!(batches.len() as u64, last);
    assert_eq!(pg.psql("SELECT count(*) FROM role_assignments").trim(), "30");
    assert!(!sidecar.stderr().contains("panicked"));
}

#[test]
fn roles_get_stable_ids() {
    let pg = Postgres::start();
    let key = create_key(&pg, "acme", "app", "default");
    let ctl = Control::start(&pg, &[]);
    let role =
        |k: &str, perms: Value| json!({"op": "upsert", "kind": "role", "value": {"key": k, "permissions": perms}});
    let (status, body, v) = ctl.batch(
        &key,
        json!([role("viewer", json!(["doc:read"])), role("editor", json!([]))]),
    );
    assert_eq!((status, v), (200, Some(1)), "{body}");
    let ids = |c: &Control| -> Vec<(String, u64)> {
        c.snapshot(&key)["roles"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["key"].as_str().unwrap().to_string(), r["id"].as_u64().unwrap()))
            .collect()
    };
    let first = ids(&ctl);
    assert_eq!(first.len(), 2);
    assert_ne!(first[0].1, first[1].1);
    // The same upsert without an id keeps the id and makes no version; a change keeps it too.
    let (_, _, again) = ctl.batch(&key, json!([role("viewer", json!(["doc:read"]))]));
    assert_eq!(again, Some(1));
    let (_, _, v) = ctl.batch(&key, json!([role("viewer", json!(["doc:*"]))]));
    assert_eq!(v, Some(2));
    assert_eq!(ids(&ctl), first);
    // An id another role holds is refused, and nothing is stored.
    let taken = first[1].1;
    let (status, body, _) = ctl.batch(
        &key,
        json!([{"op": "upsert", "kind": "user", "value": {"key": "x"}},
               {"op": "upsert", "kind": "role", "value": {"key": "other", "id": taken}}]),
    );
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("ops[1].value.id"),
        "{body}"
    );
    assert_eq!(ctl.snapshot(&key)["version"], 2);
    // A follower's perm/v1 GetRole answers by the stored id.
    let follower = Permd::follow(&ctl.url(), &[], &[("PERMD_API_KEY", &key)]);
    follower.wait_version(2);
    let (status, got) = follower.post("/v1/role", json!({"id": first[1].1}));
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["role"]["name"], "editor", "{got}");
}

#[test]
fn concurrent_writes_share_transactions_and_fail_alone() {
    let pg = Postgres::start();
    let key = create_key(&pg, "acme", "app", "default");
    let ctl = Arc::new(Control::start(&pg, &[]));
    let (_, _, v) = ctl.batch(
        &key,
        json!([{"op": "upsert", "kind": "role", "value": {"key": "held", "id": 7}}]),
    );
    assert_eq!(v, Some(1));
    let before = ctl.metrics()["permd_control_write_transactions_total"];
    // 16 writers at once, 25 writes each; every fifth write of writer 0 takes a held role id.
    let threads: Vec<_> = (0..16)
        .map(|w| {
            let (ctl, key) = (ctl.clone(), key.clone());
            std::thread::spawn(move || {
                let mut out = vec![];
                for i in 0..25 {
                    let ops = if w == 0 && i % 5 == 0 {
                        json!([{"op": "upsert", "kind": "role", "value": {"key": format!("r{i}"), "id": 7}}])
                    } else {
                        json!([{"op": "upsert", "kind": "user", "value": {"key": format!("u{w}-{i}")}}])
                    };
                    let (status, body, v) = ctl.batch(&key, ops);
                    out.push((w, i, status, body, v));
                }
                out
            })
        })
        .collect();
    let results: Vec<_> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    let mut versions = vec![];
    for (w, i, status, body, v) in &results {
        if *w == 0 && i % 5 == 0 {
            assert_eq!(*status, 409, "{body}");
        } else {
            assert_eq!(*status, 200, "{body}");
            versions.push(v.unwrap());
        }
    }
    // Every accepted write has its own version, contiguous after the first.
    versions.sort_unstable();
    assert_eq!(versions, (2..2 + versions.len() as u64).collect::<Vec<_>>());
    let snap = ctl.snapshot(&key);
    assert_eq!(snap["users"].as_array().unwrap().len(), versions.len());
    assert_eq!(
        snap["roles"].as_array().unwrap().len(),
        1,
        "the refused writes stored nothing"
    );
    let batches = deltas(&ctl, &key, 1, *versions.last().unwrap());
    assert_eq!(batches.len(), versions.len());
    // Writes that arrived together shared transactions.
    let transactions = ctl.metrics()["permd_control_write_transactions_total"] - before;
    assert!(
        transactions < results.len() as f64,
        "{transactions} transactions for {} writes",
        results.len()
    );
}

/// Conditions through the control plane: rules, conditional permissions and grant conditions
/// are stored, streamed and decided by a follower; a condition that does not compile is
/// refused with the op named and nothing stored.
#[test]
fn conditions_are_stored_streamed_and_decided() {
    let pg = Postgres::start();
    let key = create_key(&pg, "acme", "app", "default");
    let ctl = Control::start(&pg, &[]);
    let sidecar = Permd::follow(&ctl.url(), &["--upstream-timeout", "2s"], &[("PERMD_API_KEY", &key)]);
    sidecar.ready();
    let setup = json!([
        {"op": "upsert", "kind": "org", "value": {"key": "acme"}},
        {"op": "upsert", "kind": "resource_type", "value": {"key": "doc", "actions": ["read", "write"]}},
        {"op": "upsert", "kind": "role", "value": {"key": "viewer", "permissions": ["doc:read",
            {"permission": "doc:write", "when": "resource.attributes.dept == user.attributes.dept"}]}},
        {"op": "upsert", "kind": "user", "value": {"key": "ann", "attributes": {"dept": "legal"}}},
        {"op": "upsert", "kind": "role_assignment", "value": {"user": "ann", "role": "viewer", "org": "acme"}},
        {"op": "upsert", "kind": "resource", "value": {"type": "doc", "key": "d1", "org": "acme", "attributes": {"dept": "legal", "owner": "bo"}}},
        {"op": "upsert", "kind": "resource", "value": {"type": "doc", "key": "d2", "org": "acme", "attributes": {"dept": "sales"}}},
        {"op": "upsert", "kind": "rule", "value": {"key": "owners", "permissions": ["doc:write"], "when": "resource.attributes.owner == user.key"}}
    ]);
    let (status, v, version) = ctl.batch(&key, setup);
    assert_eq!(status, 200, "{v}");
    sidecar.wait_version(version.unwrap());
    let writes = |user: &str, doc: &str| -> (bool, String) {
        let (st, v) = sidecar.post(
            "/allowed",
            json!({"user": user, "action": "write", "resource": format!("doc:{doc}")}),
        );
        assert_eq!(st, 200, "{v}");
        (v["allow"].as_bool().unwrap(), v["reason"].as_str().unwrap().to_string())
    };
    assert_eq!(writes("ann", "d1"), (true, "org_role".into()));
    assert_eq!(writes("ann", "d2"), (false, "no_matching_grant".into()));
    assert_eq!(writes("bo", "d1"), (true, "attribute_rule".into()));
    let snap = ctl.snapshot(&key);
    assert_eq!(snap["rules"][0]["key"], json!("owners"), "{snap}");

    // A broken condition: 400 naming the op, nothing stored, the version unchanged.
    let (status, v, _) = ctl.batch(
        &key,
        json!([{"op": "upsert", "kind": "rule", "value": {"key": "bad", "permissions": ["doc:read"], "when": "user.key =="}}]),
    );
    assert_eq!(status, 400, "{v}");
    assert!(v.to_string().contains("ops[0].value.when"), "{v}");
    assert_eq!(ctl.snapshot(&key)["version"], json!(version.unwrap()));

    // Deleting the rule reaches the follower.
    let (status, _, version) = ctl.batch(
        &key,
        json!([{"op": "delete", "kind": "rule", "value": {"key": "owners"}}]),
    );
    assert_eq!(status, 200);
    sidecar.wait_version(version.unwrap());
    assert_eq!(writes("bo", "d1"), (false, "no_matching_grant".into()));
}
