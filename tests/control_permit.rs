//! The control plane's Permit-style REST face (`/v2/schema/…`, `/v2/facts/…`) against a real
//! PostgreSQL: CRUD of every collection with Permit's status codes and shapes, paging, the
//! role-assignment filters of seed 002, references to things that do not exist, isolation of
//! projects, hostile strings, cascades written as explicit delete ops, and a sidecar pulling
//! this face with `--source-protocol permit` deciding as a native follower does.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::Permd;
use common::control::{Control, create_key, deltas};
use common::pg::Postgres;
use permd::model::Snapshot;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const F: &str = "/v2/facts/app/default";
const S: &str = "/v2/schema/app/default";

/// A cluster, a control plane on it, and a key of acme/app/default.
fn setup() -> (Postgres, Control, String) {
    let pg = Postgres::start();
    let key = create_key(&pg, "acme", "app", "default");
    let ctl = Control::start(&pg, &[]);
    (pg, ctl, key)
}

/// Percent-encodes a path segment or query value.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A request that must answer `want`; the body.
fn expect(ctl: &Control, key: &str, method: &str, path: &str, body: Option<Value>, want: u16) -> Value {
    let (status, v, _) = ctl.call(key, method, path, body.as_ref());
    assert_eq!(status, want, "{method} {path} {body:?}: {v}");
    v
}

/// A write that must answer `want` with `X-Permd-Version`: (body, version).
fn write(ctl: &Control, key: &str, method: &str, path: &str, body: Value, want: u16) -> (Value, u64) {
    let (status, v, version) = ctl.call(key, method, path, Some(&body));
    assert_eq!(status, want, "{method} {path} {body}: {v}");
    (
        v,
        version.unwrap_or_else(|| panic!("{method} {path}: no x-permd-version")),
    )
}

/// An error answer naming `field` (as `` `field` `` at the start of its message).
fn refused(ctl: &Control, key: &str, method: &str, path: &str, body: Value, want: u16, field: &str) {
    let (status, v, _) = ctl.call(key, method, path, Some(&body));
    assert_eq!(status, want, "{method} {path} {body}: {v}");
    let msg = v["error"]["message"].as_str().unwrap_or_default();
    assert!(!msg.is_empty(), "{method} {path}: {v}");
    if !field.is_empty() {
        assert!(
            msg.starts_with(&format!("`{field}`")),
            "{method} {path} {body}: `{msg}` should name `{field}`"
        );
    }
}

fn keys(list: &Value, field: &str) -> Vec<String> {
    list.as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .map(|x| x[field].as_str().unwrap().to_string())
        .collect()
}

fn snapshot_doc(v: &Value) -> Snapshot {
    Snapshot::load(v.to_string().as_bytes(), permd::model::Encoding::Json).unwrap()
}

fn is_id(v: &Value) -> bool {
    v.as_str()
        .is_some_and(|s| s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The one batch that moved the project from `v - 1` to `v`, its ops as JSON.
fn batch_ops(ctl: &Control, key: &str, v: u64) -> Vec<Value> {
    let batches = deltas(ctl, key, v - 1, v);
    assert_eq!(batches.len(), 1, "{batches:?}");
    assert_eq!((batches[0].from_version, batches[0].to_version), (v - 1, v));
    serde_json::to_value(&batches[0]).unwrap()["ops"]
        .as_array()
        .unwrap()
        .clone()
}

/// `ops` are `want`, in any order. A role upsert carries the role's numeric `id` (the write
/// path gives every role one, and a role keeps it): checked, then left out of the comparison.
fn assert_ops(ops: &[Value], want: &[Value]) {
    let ops: Vec<Value> = ops
        .iter()
        .map(|op| {
            let mut op = op.clone();
            if op["kind"] == "role" && op["op"] == "upsert" {
                assert!(op["value"]["id"].is_u64(), "a role upsert keeps the role's id: {op}");
                op["value"].as_object_mut().unwrap().remove("id");
            }
            op
        })
        .collect();
    for w in want {
        assert!(ops.contains(w), "missing op {w} in {}", Value::Array(ops.clone()));
    }
    assert_eq!(ops.len(), want.len(), "unexpected ops: {}", Value::Array(ops.clone()));
}

#[test]
fn tenants_users_instances_and_tuples() {
    let (_pg, ctl, key) = setup();
    let k = key.as_str();

    // Tenants: create (201, Permit's shape, a version), conflict, read, patch, paging.
    let (t, v1) = write(
        &ctl,
        k,
        "POST",
        &format!("{F}/tenants"),
        json!({"key": "acme", "name": "Acme", "description": "not kept", "attributes": {"tier": "gold"}}),
        201,
    );
    assert_eq!(v1, 1);
    assert_eq!((t["key"].as_str(), t["name"].as_str()), (Some("acme"), Some("Acme")));
    assert_eq!(t["attributes"], json!({"tier": "gold"}));
    for f in ["id", "organization_id", "project_id", "environment_id"] {
        assert!(is_id(&t[f]), "{f}: {t}");
    }
    assert!(t.get("created_at").is_some() && t.get("updated_at").is_some(), "{t}");
    refused(
        &ctl,
        k,
        "POST",
        &format!("{F}/tenants"),
        json!({"key": "acme"}),
        409,
        "",
    );
    refused(
        &ctl,
        k,
        "POST",
        &format!("{F}/tenants"),
        json!({"name": "x"}),
        400,
        "key",
    );
    refused(&ctl, k, "POST", &format!("{F}/tenants"), json!({"key": ""}), 400, "key");
    refused(
        &ctl,
        k,
        "POST",
        &format!("{F}/tenants"),
        json!({"key": "x", "nmae": "typo"}),
        400,
        "nmae",
    );
    refused(&ctl, k, "POST", &format!("{F}/tenants"), json!({"key": 7}), 400, "key");
    assert_eq!(expect(&ctl, k, "GET", &format!("{F}/tenants/acme"), None, 200), t);
    assert_eq!(
        expect(
            &ctl,
            k,
            "GET",
            &format!("{F}/tenants/{}", t["id"].as_str().unwrap()),
            None,
            200
        ),
        t
    );
    expect(&ctl, k, "GET", &format!("{F}/tenants/nope"), None, 404);
    let (t2, v2) = write(
        &ctl,
        k,
        "PATCH",
        &format!("{F}/tenants/acme"),
        json!({"name": "Acme Inc"}),
        200,
    );
    assert_eq!((t2["name"].as_str(), v2), (Some("Acme Inc"), 2));
    assert_eq!(
        t2["attributes"],
        json!({"tier": "gold"}),
        "a PATCH keeps what it does not name"
    );
    // A write that changes nothing answers the current version and makes none.
    let (_, same) = write(
        &ctl,
        k,
        "PATCH",
        &format!("{F}/tenants/acme"),
        json!({"name": "Acme Inc"}),
        200,
    );
    assert_eq!(same, 2);
    let (t3, _) = write(
        &ctl,
        k,
        "PATCH",
        &format!("{F}/tenants/acme"),
        json!({"attributes": null}),
        200,
    );
    assert_eq!(t3["attributes"], Value::Null);
    expect(&ctl, k, "PUT", &format!("{F}/tenants/acme"), Some(json!({})), 405);
    expect(&ctl, k, "DELETE", &format!("{F}/tenants"), Some(json!({})), 405);
    expect(
        &ctl,
        k,
        "PATCH",
        &format!("{F}/tenants/nope"),
        Some(json!({"name": "x"})),
        404,
    );
    expect(&ctl, k, "GET", &format!("{F}/tenants/acme/extra"), None, 404);
    expect(&ctl, k, "GET", &format!("{F}/nothing"), None, 404);

    // 150 more tenants through the batch primitive, then pages of them.
    let ops: Vec<Value> = (0..150)
        .map(|i| json!({"op": "upsert", "kind": "org", "value": {"key": format!("t{i:03}")}}))
        .collect();
    assert_eq!(ctl.batch(k, json!(ops)).0, 200);
    let all = expect(&ctl, k, "GET", &format!("{F}/tenants"), None, 200);
    assert_eq!(all.as_array().unwrap().len(), 100, "per_page defaults to 100");
    let p2 = expect(&ctl, k, "GET", &format!("{F}/tenants?page=2&per_page=100"), None, 200);
    assert_eq!(p2.as_array().unwrap().len(), 51);
    assert_eq!(keys(&p2, "key").last().map(String::as_str), Some("t149"));
    let p3 = expect(&ctl, k, "GET", &format!("{F}/tenants?page=3&per_page=7"), None, 200);
    assert_eq!(
        keys(&p3, "key"),
        ["t013", "t014", "t015", "t016", "t017", "t018", "t019"]
    );
    assert_eq!(
        expect(&ctl, k, "GET", &format!("{F}/tenants?page=9"), None, 200),
        json!([])
    );
    for (q, field) in [
        ("per_page=101", "per_page"),
        ("per_page=0", "per_page"),
        ("page=0", "page"),
        ("page=x", "page"),
    ] {
        let (status, v, _) = ctl.call(k, "GET", &format!("{F}/tenants?{q}"), None);
        assert_eq!(status, 400, "{q}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with(&format!("`{field}`")),
            "{v}"
        );
    }
    let found = expect(&ctl, k, "GET", &format!("{F}/tenants?search=t14"), None, 200);
    assert_eq!(found.as_array().unwrap().len(), 10);

    // Users: `{data, total_count, page_count}`, roles from tenant-wide assignments, PUT upserts.
    write(&ctl, k, "POST", &format!("{S}/roles"), json!({"key": "viewer"}), 201);
    let (u, _) = write(
        &ctl,
        k,
        "POST",
        &format!("{F}/users"),
        json!({"key": "alice", "email": "alice@example.com", "first_name": "Alice", "last_name": "L",
               "attributes": {"dept": "legal"}, "role_assignments": [{"role": "viewer", "tenant": "acme"}]}),
        201,
    );
    assert_eq!(u["email"], "alice@example.com");
    assert_eq!(u["roles"], json!([{"role": "viewer", "tenant": "acme"}]));
    assert!(is_id(&u["id"]));
    refused(&ctl, k, "POST", &format!("{F}/users"), json!({"key": "alice"}), 409, "");
    refused(
        &ctl,
        k,
        "POST",
        &format!("{F}/users"),
        json!({"email": "x@y"}),
        400,
        "key",
    );
    refused(
        &ctl,
        k,
        "POST",
        &format!("{F}/users"),
        json!({"key": "zed", "role_assignments": [{"role": "viewer", "tenant": "nope"}]}),
        404,
        "role_assignments[0].tenant",
    );
    refused(
        &ctl,
        k,
        "POST",
        &format!("{F}/users"),
        json!({"key": "zed", "role_assignments": [{"role": "ghost", "tenant": "acme"}]}),
        404,
        "role_assignments[0].role",
    );
    expect(&ctl, k, "GET", &format!("{F}/users/zed"), None, 404);
    let (_, _) = write(
        &ctl,
        k,
        "PUT",
        &format!("{F}/users/bob"),
        json!({"email": "bob@example.com"}),
        201,
    );
    let (b, _) = write(
        &ctl,
        k,
        "PUT",
        &format!("{F}/users/bob"),
        json!({"key": "bob", "first_name": "Bob"}),
        200,
    );
    assert_eq!(
        (b["first_name"].as_str(), b["email"].as_str()),
        (Some("Bob"), None),
        "PUT replaces"
    );
    refused(
        &ctl,
        k,
        "PUT",
        &format!("{F}/users/bob"),
        json!({"key": "other"}),
        400,
        "key",
    );
    let (a2, _) = write(
        &ctl,
        k,
        "PATCH",
        &format!("{F}/users/alice"),
        json!({"email": null, "last_name": "Lee"}),
        200,
    );
    assert_eq!(
        (a2["email"].clone(), a2["last_name"].as_str()),
        (Value::Null, Some("Lee"))
    );
    assert_eq!(a2["first_name"], "Alice");
    let users = expect(&ctl, k, "GET", &format!("{F}/users?per_page=1"), None, 200);
    assert_eq!(
        (users["total_count"].as_u64(), users["page_count"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(keys(&users["data"], "key"), ["alice"]);
    let users = expect(&ctl, k, "GET", &format!("{F}/users?page=2&per_page=1"), None, 200);
    assert_eq!(keys(&users["data"], "key"), ["bob"]);
    let users = expect(&ctl, k, "GET", &format!("{F}/users?role=viewer"), None, 200);
    assert_eq!(keys(&users["data"], "key"), ["alice"]);
    let users = expect(&ctl, k, "GET", &format!("{F}/users?search=bob"), None, 200);
    assert_eq!(keys(&users["data"], "key"), ["bob"]);
    refused(
        &ctl,
        k,
        "GET",
        &format!("{F}/users?per_page=500"),
        json!(null),
        400,
        "per_page",
    );
    // Deleting a user takes its assignments.
    let (status, _, v) = ctl.call(k, "DELETE", &format!("{F}/users/alice"), None);
    assert_eq!(status, 204);
    assert!(v.is_some());
    expect(&ctl, k, "GET", &format!("{F}/users/alice"), None, 404);
    let snap = ctl.snapshot(k);
    assert!(!snap.to_string().contains("alice"), "{snap}");

    // Resource instances.
    write(
        &ctl,
        k,
        "POST",
        &format!("{S}/resources"),
        json!({"key": "doc", "actions": {"read": {}}}),
        201,
    );
    write(
        &ctl,
        k,
        "POST",
        &format!("{S}/resources"),
        json!({"key": "folder", "actions": ["read"]}),
        201,
    );
    let (i, _) = write(
        &ctl,
        k,
        "POST",
        &format!("{F}/resource_instances"),
        json!({"key": "d1", "resource": "doc", "tenant": "acme", "attributes": {"owner": "bob"}}),
        201,
    );
    assert_eq!(
        (i["key"].as_str(), i["resource"].as_str(), i["tenant"].as_str()),
        (Some("d1"), Some("doc"), Some("acme"))
    );
    assert!(
        is_id(&i["id"]) && is_id(&i["resource_id"]) && is_id(&i["tenant_id"]),
        "{i}"
    );
    assert_eq!(i["attributes"], json!({"owner": "bob"}));
    write(
        &ctl,
        k,
        "POST",
        &format!("{F}/resource_instances"),
        json!({"key": "f1", "resource": "folder", "tenant": "acme"}),
        201,
    );
    write(
        &ctl,
        k,
        "POST",
        &format!("{F}/resource_instances"),
        json!({"key": "d2", "resource": "doc", "tenant": "t000"}),
        201,
    );
    let rs = format!("{F}/resource_instances");
    refused(
        &ctl,
        k,
        "POST",
        &rs,
        json!({"key": "d1", "resource": "doc", "tenant": "acme"}),
        409,
        "",
    );
    refused(
        &ctl,
        k,
        "POST",
        &rs,
        json!({"key": "x", "resource": "ghost", "tenant": "acme"}),
        404,
        "resource",
    );
    refused(
        &ctl,
        k,
        "POST",
        &rs,
        json!({"key": "x", "resource": "doc", "tenant": "ghost"}),
        404,
        "tenant",
    );
    refused(
        &ctl,
        k,
        "POST",
        &rs,
        json!({"key": "x", "resource": "doc"}),
        400,
        "tenant",
    );
    refused(
        &ctl,
        k,
        "POST",
        &rs,
        json!({"key": "", "resource": "doc", "tenant": "acme"}),
        400,
        "key",
    );
    assert_eq!(expect(&ctl, k, "GET", &format!("{rs}/doc:d1"), None, 200), i);
    assert_eq!(expect(&ctl, k, "GET", &format!("{rs}/d1"), None, 200), i);
    assert_eq!(
        expect(
            &ctl,
            k,
            "GET",
            &format!("{rs}/{}", i["id"].as_str().unwrap()),
            None,
            200
        ),
        i
    );
    expect(&ctl, k, "GET", &format!("{rs}/doc:nope"), None, 404);
    assert_eq!(keys(&expect(&ctl, k, "GET", &rs, None, 200), "key"), ["d1", "f1", "d2"]);
    assert_eq!(
        keys(&expect(&ctl, k, "GET", &format!("{rs}?tenant=acme"), None, 200), "key"),
        ["d1", "f1"]
    );
    assert_eq!(
        keys(&expect(&ctl, k, "GET", &format!("{rs}?resource=doc"), None, 200), "key"),
        ["d1", "d2"]
    );
    let (i2, _) = write(
        &ctl,
        k,
        "PATCH",
        &format!("{rs}/doc:d1"),
        json!({"attributes": {"owner": "carol"}}),
        200,
    );
    assert_eq!(i2["attributes"], json!({"owner": "carol"}));
    refused(
        &ctl,
        k,
        "PATCH",
        &format!("{rs}/doc:d1"),
        json!({"tenant": "t000"}),
        400,
        "tenant",
    );

    // Relationship tuples: `parent` only, both ends must exist, in one tenant.
    let ts = format!("{F}/relationship_tuples");
    let (tu, _) = write(
        &ctl,
        k,
        "POST",
        &ts,
        json!({"subject": "folder:f1", "relation": "parent", "object": "doc:d1"}),
        201,
    );
    assert_eq!(
        (
            tu["subject"].as_str(),
            tu["relation"].as_str(),
            tu["object"].as_str(),
            tu["tenant"].as_str()
        ),
        (Some("folder:f1"), Some("parent"), Some("doc:d1"), Some("acme"))
    );
    assert!(
        is_id(&tu["id"]) && is_id(&tu["subject_id"]) && is_id(&tu["object_id"]),
        "{tu}"
    );
    refused(
        &ctl,
        k,
        "POST",
        &ts,
        json!({"subject": "folder:f1", "relation": "parent", "object": "doc:d1"}),
        409,
        "",
    );
    refused(
        &ctl,
        k,
        "POST",
        &ts,
        json!({"subject": "folder:f1", "relation": "owner", "object": "doc:d1"}),
        400,
        "relation",
    );
    refused(
        &ctl,
        k,
        "POST",
        &ts,
        json!({"subject": "folder:ghost", "relation": "parent", "object": "doc:d1"}),
        404,
        "subject",
    );
    refused(
        &ctl,
        k,
        "POST",
        &ts,
        json!({"subject": "folder:f1", "relation": "parent", "object": "doc:ghost"}),
        404,
        "object",
    );
    refused(
        &ctl,
        k,
        "POST",
        &ts,
        json!({"subject": "folder:f1", "relation": "parent", "object": "doc:d2"}),
        400,
        "subject",
    );
    refused(
        &ctl,
        k,
        "POST",
        &ts,
        json!({"subject": "folder:f1", "relation": "parent", "object": "doc:d1", "tenant": "ghost"}),
        404,
        "tenant",
    );
    let listed = expect(&ctl, k, "GET", &ts, None, 200);
    assert_eq!(listed, json!([tu]));
    assert_eq!(
        expect(&ctl, k, "GET", &format!("{ts}?object=doc:d2"), None, 200),
        json!([])
    );
    assert_eq!(
        expect(
            &ctl,
            k,
            "GET",
            &format!("{ts}?subject=folder:f1&relation=parent"),
            None,
            200
        ),
        json!([tu])
    );
    assert_eq!(
        expect(&ctl, k, "GET", &format!("{ts}?relation=owner"), None, 200),
        json!([])
    );
    let snap = snapshot_doc(&ctl.snapshot(k));
    let d1 = snap.resources.iter().find(|r| r.key == "d1").unwrap();
    assert_eq!(d1.parents, ["folder:f1"]);
    let (status, _, v) = ctl.call(
        k,
        "DELETE",
        &ts,
        Some(&json!({"subject": "folder:f1", "relation": "parent", "object": "doc:d1"})),
    );
    assert_eq!(status, 204);
    assert!(v.is_some());
    refused(
        &ctl,
        k,
        "DELETE",
        &ts,
        json!({"subject": "folder:f1", "relation": "parent", "object": "doc:d1"}),
        404,
        "",
    );
    assert_eq!(expect(&ctl, k, "GET", &ts, None, 200), json!([]));

    // Deleting an instance: 204 with a version, then gone.
    let (status, _, v) = ctl.call(k, "DELETE", &format!("{rs}/doc:d2"), None);
    assert_eq!((status, v.is_some()), (204, true));
    expect(&ctl, k, "GET", &format!("{rs}/doc:d2"), None, 404);
    expect(&ctl, k, "DELETE", &format!("{rs}/doc:d2"), None, 404);
}

#[test]
fn schema_resources_and_roles() {
    let (_pg, ctl, key) = setup();
    let k = key.as_str();
    let rs = format!("{S}/resources");
    let (doc, _) = write(
        &ctl,
        k,
        "POST",
        &rs,
        json!({"key": "document", "name": "Document", "description": "Docs", "urn": null,
               "actions": {"read": {"name": "Read"}, "write": {}, "delete": {}},
               "roles": {"owner": {"name": "Owner", "permissions": ["read", "write", "delete"], "extends": ["reader"]},
                         "reader": {"permissions": ["read"]}}}),
        201,
    );
    assert_eq!(
        (doc["key"].as_str(), doc["name"].as_str()),
        (Some("document"), Some("Document"))
    );
    let mut actions: Vec<&String> = doc["actions"].as_object().unwrap().keys().collect();
    actions.sort();
    assert_eq!(actions, ["delete", "read", "write"]);
    assert_eq!(doc["actions"]["read"]["key"], "read");
    assert_eq!(doc["roles"]["owner"]["permissions"], json!(["read", "write", "delete"]));
    assert_eq!(doc["roles"]["owner"]["extends"], json!(["reader"]));
    assert_eq!(doc["roles"]["owner"]["name"], "Owner");
    assert_eq!(doc["roles"]["reader"]["permissions"], json!(["read"]));
    assert!(is_id(&doc["id"]) && is_id(&doc["roles"]["owner"]["id"]));
    // In the model: the type, and its roles as global roles `document#R`.
    let snap = snapshot_doc(&ctl.snapshot(k));
    let owner = snap.roles.iter().find(|r| r.key == "document#owner").unwrap();
    assert_eq!(
        owner.permissions,
        ["document:read", "document:write", "document:delete"]
    );
    assert_eq!(owner.extends, ["document#reader"]);
    assert_eq!(expect(&ctl, k, "GET", &format!("{rs}/document"), None, 200), doc);
    write(
        &ctl,
        k,
        "POST",
        &rs,
        json!({"key": "folder", "actions": ["read", "write"]}),
        201,
    );
    assert_eq!(
        keys(&expect(&ctl, k, "GET", &rs, None, 200), "key"),
        ["document", "folder"]
    );
    assert_eq!(
        keys(
            &expect(&ctl, k, "GET", &format!("{rs}?per_page=1&page=2"), None, 200),
            "key"
        ),
        ["folder"]
    );

    refused(&ctl, k, "POST", &rs, json!({"key": "document"}), 409, "");
    refused(&ctl, k, "POST", &rs, json!({"key": "a:b"}), 400, "key");
    refused(&ctl, k, "POST", &rs, json!({"key": "a#b"}), 400, "key");
    refused(&ctl, k, "POST", &rs, json!({"key": ""}), 400, "key");
    refused(
        &ctl,
        k,
        "POST",
        &rs,
        json!({"key": "x", "actions": ["a:b"]}),
        400,
        "actions.a:b",
    );
    refused(
        &ctl,
        k,
        "POST",
        &rs,
        json!({"key": "x", "actions": [""]}),
        400,
        "actions[0]",
    );
    refused(
        &ctl,
        k,
        "POST",
        &rs,
        json!({"key": "x", "actions": ["read"], "roles": {"r": {"permissions": ["fly"]}}}),
        404,
        "roles.r.permissions[0]",
    );
    refused(
        &ctl,
        k,
        "POST",
        &rs,
        json!({"key": "x", "actions": ["read"], "roles": {"r": {"permissions": ["read"], "extends": ["ghost"]}}}),
        404,
        "roles.r.extends[0]",
    );
    refused(
        &ctl,
        k,
        "POST",
        &rs,
        json!({"key": "x", "actions": ["read"], "roles": {"r": {"permissions": ["ghost:read"]}}}),
        404,
        "roles.r.permissions[0]",
    );
    expect(&ctl, k, "GET", &format!("{rs}/x"), None, 404);

    // Roles: top-level ones only, `attr_` filters, references checked.
    let ro = format!("{S}/roles");
    let (viewer, v) = write(
        &ctl,
        k,
        "POST",
        &ro,
        json!({"key": "viewer", "name": "Viewer", "description": "Reads", "permissions": ["document:read", "folder:read"]}),
        201,
    );
    assert_eq!(viewer["permissions"], json!(["document:read", "folder:read"]));
    assert!(is_id(&viewer["id"]));
    write(
        &ctl,
        k,
        "POST",
        &ro,
        json!({"key": "editor", "name": "Editor", "permissions": ["document:write"], "extends": ["viewer"]}),
        201,
    );
    write(
        &ctl,
        k,
        "POST",
        &ro,
        json!({"key": "super", "permissions": ["*:*", "document:*", "*:read"]}),
        201,
    );
    refused(&ctl, k, "POST", &ro, json!({"key": "viewer"}), 409, "");
    refused(&ctl, k, "POST", &ro, json!({"key": "a#b"}), 400, "key");
    refused(
        &ctl,
        k,
        "POST",
        &ro,
        json!({"key": "x", "permissions": ["nocolon"]}),
        400,
        "permissions[0]",
    );
    refused(
        &ctl,
        k,
        "POST",
        &ro,
        json!({"key": "x", "permissions": ["document:fly"]}),
        404,
        "permissions[0]",
    );
    refused(
        &ctl,
        k,
        "POST",
        &ro,
        json!({"key": "x", "permissions": ["ghost:read"]}),
        404,
        "permissions[0]",
    );
    refused(
        &ctl,
        k,
        "POST",
        &ro,
        json!({"key": "x", "extends": ["viewer", "ghost"]}),
        404,
        "extends[1]",
    );
    refused(
        &ctl,
        k,
        "POST",
        &ro,
        json!({"key": "x", "permissions": "document:read"}),
        400,
        "permissions",
    );
    assert_eq!(
        keys(&expect(&ctl, k, "GET", &ro, None, 200), "key"),
        ["viewer", "editor", "super"]
    );
    assert_eq!(expect(&ctl, k, "GET", &format!("{ro}/viewer"), None, 200), viewer);
    expect(&ctl, k, "GET", &format!("{ro}/{}", enc("document#owner")), None, 404);
    let q = |f: &str| keys(&expect(&ctl, k, "GET", &format!("{ro}/?{f}"), None, 200), "key");
    assert_eq!(q("attr_name=Viewer"), ["viewer"]);
    assert_eq!(q("attr_description=Reads"), ["viewer"]);
    assert_eq!(q("attr_name=Editor&attr_description=Reads"), Vec::<String>::new());
    assert_eq!(q("attr_name=Nobody"), Vec::<String>::new());
    assert_eq!(q("attr_key=super"), ["super"]);
    // Roles carry `attributes` only when the model gives roles attributes; else 400 naming it.
    let (status, body, _) = ctl.call(
        k,
        "POST",
        &ro,
        Some(&json!({"key": "red", "attributes": {"color": "red", "level": 3}})),
    );
    match status {
        201 => {
            assert_eq!(q("attr_color=red&attr_level=3"), ["red"]);
            assert_eq!(q("attr_color=blue"), Vec::<String>::new());
        }
        400 => assert!(
            body["error"]["message"].as_str().unwrap().starts_with("`attributes`"),
            "{body}"
        ),
        _ => panic!("{status}: {body}"),
    }

    let (viewer2, v2) = write(
        &ctl,
        k,
        "PATCH",
        &format!("{ro}/viewer"),
        json!({"description": "Reads documents", "permissions": ["document:read"]}),
        200,
    );
    assert!(v2 > v);
    assert_eq!(
        (viewer2["name"].as_str(), viewer2["description"].as_str()),
        (Some("Viewer"), Some("Reads documents"))
    );
    assert_eq!(viewer2["permissions"], json!(["document:read"]));
    refused(
        &ctl,
        k,
        "PATCH",
        &format!("{ro}/viewer"),
        json!({"extends": ["ghost"]}),
        404,
        "extends[0]",
    );
    refused(&ctl, k, "PATCH", &format!("{ro}/ghost"), json!({"name": "x"}), 404, "");

    // A PATCH of a resource replaces its actions and, when given, its roles.
    let (doc2, _) = write(
        &ctl,
        k,
        "PATCH",
        &format!("{rs}/document"),
        json!({"actions": ["read", "write", "delete", "archive"], "roles": {"reader": {"permissions": ["read", "archive"]}}}),
        200,
    );
    assert_eq!(doc2["name"], "Document");
    assert_eq!(doc2["actions"].as_object().unwrap().len(), 4);
    assert_eq!(
        doc2["roles"].as_object().unwrap().keys().collect::<Vec<_>>(),
        ["reader"]
    );
    // The same again changes nothing: the current version, no batch.
    let version = snapshot_doc(&ctl.snapshot(k)).version;
    let (same, v4) = write(
        &ctl,
        k,
        "PATCH",
        &format!("{rs}/document"),
        json!({"name": "Document", "actions": ["read", "write", "delete", "archive"],
               "roles": {"reader": {"permissions": ["read", "archive"]}}}),
        200,
    );
    assert_eq!((v4, same), (version, doc2.clone()));
    let snap = snapshot_doc(&ctl.snapshot(k));
    assert!(snap.roles.iter().all(|r| r.key != "document#owner"));
    let reader = snap.roles.iter().find(|r| r.key == "document#reader").unwrap();
    assert_eq!(reader.permissions, ["document:read", "document:archive"]);
    assert!(reader.extends.is_empty());

    let (status, _, v3) = ctl.call(k, "DELETE", &format!("{ro}/super"), None);
    assert_eq!((status, v3.is_some()), (204, true));
    expect(&ctl, k, "GET", &format!("{ro}/super"), None, 404);
    expect(&ctl, k, "DELETE", &format!("{ro}/super"), None, 404);
}

/// Tenants t1, t2; `document` (role `owner`) and `folder`; top-level `viewer` and `editor`;
/// instances document:d1 (t1), document:d2 (t2), folder:f1 (t1).
fn assignment_fixture(ctl: &Control, k: &str) {
    for t in ["t1", "t2"] {
        write(ctl, k, "POST", &format!("{F}/tenants"), json!({"key": t}), 201);
    }
    write(
        ctl,
        k,
        "POST",
        &format!("{S}/resources"),
        json!({"key": "document", "actions": ["read", "write"], "roles": {"owner": {"permissions": ["read", "write"]}}}),
        201,
    );
    write(
        ctl,
        k,
        "POST",
        &format!("{S}/resources"),
        json!({"key": "folder", "actions": ["read"]}),
        201,
    );
    write(
        ctl,
        k,
        "POST",
        &format!("{S}/roles"),
        json!({"key": "viewer", "permissions": ["document:read"]}),
        201,
    );
    write(
        ctl,
        k,
        "POST",
        &format!("{S}/roles"),
        json!({"key": "editor", "permissions": ["document:write"]}),
        201,
    );
    for (key, r, t) in [
        ("d1", "document", "t1"),
        ("d2", "document", "t2"),
        ("f1", "folder", "t1"),
    ] {
        write(
            ctl,
            k,
            "POST",
            &format!("{F}/resource_instances"),
            json!({"key": key, "resource": r, "tenant": t}),
            201,
        );
    }
}

#[test]
fn role_assignments_filters_and_references() {
    let (_pg, ctl, key) = setup();
    let k = key.as_str();
    assignment_fixture(&ctl, k);
    let ra = format!("{F}/role_assignments");
    let (a, _) = write(
        &ctl,
        k,
        "POST",
        &ra,
        json!({"user": "alice", "role": "viewer", "tenant": "t1"}),
        201,
    );
    // Seed 002's shape, every field.
    let mut fields: Vec<&String> = a.as_object().unwrap().keys().collect();
    fields.sort();
    assert_eq!(
        fields,
        [
            "created_at",
            "environment_id",
            "id",
            "organization_id",
            "project_id",
            "resource_instance",
            "resource_instance_id",
            "role",
            "role_id",
            "tenant",
            "tenant_id",
            "user",
            "user_id"
        ]
    );
    assert_eq!(
        (a["user"].as_str(), a["role"].as_str(), a["tenant"].as_str()),
        (Some("alice"), Some("viewer"), Some("t1"))
    );
    assert_eq!(
        (a["resource_instance"].clone(), a["resource_instance_id"].clone()),
        (Value::Null, Value::Null)
    );
    for f in [
        "id",
        "user_id",
        "role_id",
        "tenant_id",
        "organization_id",
        "project_id",
        "environment_id",
    ] {
        assert!(is_id(&a[f]), "{f}: {a}");
    }
    let roles = expect(&ctl, k, "GET", &format!("{S}/roles/viewer"), None, 200);
    assert_eq!(a["role_id"], roles["id"]);
    write(
        &ctl,
        k,
        "POST",
        &ra,
        json!({"user": "alice", "role": "editor", "tenant": "t2"}),
        201,
    );
    write(
        &ctl,
        k,
        "POST",
        &ra,
        json!({"user": "bob", "role": "viewer", "tenant": "t1"}),
        201,
    );
    // On an instance: the resource's own role (`owner` is `document#owner`), tenant inferred.
    let (c, _) = write(
        &ctl,
        k,
        "POST",
        &ra,
        json!({"user": "carol", "role": "owner", "resource_instance": "document:d1"}),
        201,
    );
    assert_eq!(
        (
            c["role"].as_str(),
            c["tenant"].as_str(),
            c["resource_instance"].as_str()
        ),
        (Some("owner"), Some("t1"), Some("document:d1"))
    );
    assert!(is_id(&c["resource_instance_id"]));
    let inst = expect(
        &ctl,
        k,
        "GET",
        &format!("{F}/resource_instances/document:d1"),
        None,
        200,
    );
    assert_eq!(c["resource_instance_id"], inst["id"]);
    // A top-level role on an instance.
    write(
        &ctl,
        k,
        "POST",
        &ra,
        json!({"user": "dave", "role": "viewer", "tenant": "t1", "resource_instance": "folder:f1"}),
        201,
    );
    let snap = snapshot_doc(&ctl.snapshot(k));
    let roles_of = |u: &str| -> Vec<(String, Option<String>)> {
        snap.role_assignments
            .iter()
            .filter(|a| a.user == u)
            .map(|a| (a.role.clone(), a.resource.clone()))
            .collect()
    };
    assert_eq!(
        roles_of("carol"),
        [("document#owner".to_string(), Some("document:d1".to_string()))]
    );
    assert_eq!(
        roles_of("dave"),
        [("viewer".to_string(), Some("folder:f1".to_string()))]
    );

    // What does not exist is refused, naming it; duplicates conflict.
    refused(
        &ctl,
        k,
        "POST",
        &ra,
        json!({"user": "alice", "role": "viewer", "tenant": "t1"}),
        409,
        "",
    );
    refused(
        &ctl,
        k,
        "POST",
        &ra,
        json!({"user": "x", "role": "viewer", "tenant": "ghost"}),
        404,
        "tenant",
    );
    refused(
        &ctl,
        k,
        "POST",
        &ra,
        json!({"user": "x", "role": "ghost", "tenant": "t1"}),
        404,
        "role",
    );
    refused(
        &ctl,
        k,
        "POST",
        &ra,
        json!({"user": "x", "role": "owner", "tenant": "t1"}),
        404,
        "role",
    );
    refused(
        &ctl,
        k,
        "POST",
        &ra,
        json!({"user": "x", "role": "viewer", "resource_instance": "document:ghost"}),
        404,
        "resource_instance",
    );
    refused(
        &ctl,
        k,
        "POST",
        &ra,
        json!({"user": "x", "role": "owner", "tenant": "t2", "resource_instance": "document:d1"}),
        400,
        "tenant",
    );
    refused(
        &ctl,
        k,
        "POST",
        &ra,
        json!({"user": "x", "role": "viewer"}),
        400,
        "tenant",
    );
    refused(
        &ctl,
        k,
        "POST",
        &ra,
        json!({"user": "", "role": "viewer", "tenant": "t1"}),
        400,
        "user",
    );
    refused(
        &ctl,
        k,
        "POST",
        &ra,
        json!({"role": "viewer", "tenant": "t1"}),
        400,
        "user",
    );

    // Filters: each, repeated, combined.
    let who = |q: &str| -> Vec<String> {
        let v = expect(&ctl, k, "GET", &format!("{ra}?{q}"), None, 200);
        v.as_array()
            .unwrap()
            .iter()
            .map(|a| format!("{}/{}", a["user"].as_str().unwrap(), a["role"].as_str().unwrap()))
            .collect()
    };
    assert_eq!(
        who(""),
        [
            "alice/viewer",
            "alice/editor",
            "bob/viewer",
            "carol/owner",
            "dave/viewer"
        ]
    );
    assert_eq!(who("user=alice"), ["alice/viewer", "alice/editor"]);
    assert_eq!(
        who("user=alice&user=bob"),
        ["alice/viewer", "alice/editor", "bob/viewer"]
    );
    assert_eq!(who("tenant=t2"), ["alice/editor"]);
    assert_eq!(
        who("tenant=t1"),
        ["alice/viewer", "bob/viewer", "carol/owner", "dave/viewer"]
    );
    assert_eq!(who("role=viewer"), ["alice/viewer", "bob/viewer", "dave/viewer"]);
    assert_eq!(who("role=editor&role=owner"), ["alice/editor", "carol/owner"]);
    assert_eq!(who("resource=document"), ["carol/owner"]);
    assert_eq!(who("resource=document&resource=folder"), ["carol/owner", "dave/viewer"]);
    assert_eq!(who("resource_instance=folder:f1"), ["dave/viewer"]);
    assert_eq!(
        who("resource_instance=folder%3Af1&resource_instance=document:d1"),
        ["carol/owner", "dave/viewer"]
    );
    assert_eq!(who("user=alice&tenant=t1"), ["alice/viewer"]);
    assert_eq!(
        who("user=alice&user=dave&role=viewer&tenant=t1"),
        ["alice/viewer", "dave/viewer"]
    );
    assert_eq!(who("tenant=t1&resource_instance=document:d1"), ["carol/owner"]);
    // Seed 002: with several tenants, the instance is compared with the last one.
    assert_eq!(
        who("tenant=t1&tenant=t2&resource_instance=document:d1"),
        Vec::<String>::new()
    );
    assert_eq!(who("user=nobody"), Vec::<String>::new());
    // Paging.
    assert_eq!(who("per_page=2"), ["alice/viewer", "alice/editor"]);
    assert_eq!(who("per_page=2&page=3"), ["dave/viewer"]);
    assert_eq!(who("per_page=2&page=4"), Vec::<String>::new());
    refused(
        &ctl,
        k,
        "GET",
        &format!("{ra}?per_page=101"),
        json!(null),
        400,
        "per_page",
    );
    let counted = expect(
        &ctl,
        k,
        "GET",
        &format!("{ra}?include_total_count=true&per_page=2"),
        None,
        200,
    );
    assert_eq!(
        (counted["total_count"].as_u64(), counted["page_count"].as_u64()),
        (Some(5), Some(3))
    );
    assert_eq!(counted["data"].as_array().unwrap().len(), 2);

    // DELETE with the same body.
    let del = |body: Value| ctl.call(k, "DELETE", &ra, Some(&body));
    let (status, _, v) = del(json!({"user": "alice", "role": "viewer", "tenant": "t1"}));
    assert_eq!((status, v.is_some()), (204, true));
    let (status, _, _) = del(json!({"user": "alice", "role": "viewer", "tenant": "t1"}));
    assert_eq!(status, 404);
    let (status, _, _) = del(json!({"user": "alice", "role": "viewer", "tenant": "ghost"}));
    assert_eq!(status, 404);
    let (status, body, _) = del(json!({"user": "bob", "role": "viewer"}));
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().starts_with("`tenant`"),
        "{body}"
    );
    let (status, _, _) = del(json!({"user": "carol", "role": "owner", "resource_instance": "document:d1"}));
    assert_eq!(status, 204);
    assert_eq!(who(""), ["alice/editor", "bob/viewer", "dave/viewer"]);
}

#[test]
fn a_key_reaches_only_its_project_and_environment() {
    let pg = Postgres::start();
    let a = create_key(&pg, "acme", "app", "default");
    let b = create_key(&pg, "acme", "other", "default");
    let c = create_key(&pg, "acme", "app", "staging");
    let ctl = Control::start(&pg, &[]);
    write(
        &ctl,
        &b,
        "POST",
        "/v2/facts/other/default/tenants",
        json!({"key": "b-secret-tenant"}),
        201,
    );
    write(
        &ctl,
        &b,
        "PUT",
        "/v2/facts/other/default/users/b-secret-user",
        json!({}),
        201,
    );
    write(
        &ctl,
        &c,
        "POST",
        "/v2/facts/app/staging/tenants",
        json!({"key": "c-secret-tenant"}),
        201,
    );
    write(
        &ctl,
        &a,
        "POST",
        &format!("{F}/tenants"),
        json!({"key": "a-tenant"}),
        201,
    );

    // A's key on B's (and C's) paths: 404 and nothing of theirs, reading or writing.
    for path in [
        "/v2/facts/other/default/tenants",
        "/v2/facts/other/default/tenants/b-secret-tenant",
        "/v2/facts/other/default/users",
        "/v2/facts/other/default/users/b-secret-user",
        "/v2/facts/other/default/role_assignments",
        "/v2/schema/other/default/roles",
        "/v2/facts/app/staging/tenants",
        "/v2/facts/app/staging/tenants/c-secret-tenant",
        "/v2/facts/App/default/tenants",
    ] {
        // The answer any unknown path gets: it says nothing the caller did not send.
        let (status, v, _) = ctl.call(&a, "GET", path, None);
        assert_eq!(status, 404, "{path}: {v}");
        assert_eq!(
            v,
            json!({"error": {"code": "not_found", "message": format!("no route for `{path}`")}})
        );
    }
    let (status, _, version) = ctl.call(
        &a,
        "POST",
        "/v2/facts/other/default/tenants",
        Some(&json!({"key": "planted-by-a"})),
    );
    assert_eq!((status, version), (404, None));
    let (status, _, _) = ctl.call(&a, "DELETE", "/v2/facts/other/default/tenants/b-secret-tenant", None);
    assert_eq!(status, 404);
    let sb = ctl.snapshot(&b).to_string();
    assert!(sb.contains("b-secret-tenant") && !sb.contains("planted-by-a"), "{sb}");
    // A's own lists hold only A's data.
    let mine = ctl.call(&a, "GET", &format!("{F}/tenants"), None).1;
    assert_eq!(keys(&mine, "key"), ["a-tenant"]);
    let users = ctl.call(&a, "GET", &format!("{F}/users"), None).1;
    assert_eq!(users["total_count"], 0);
    // No key: 401 before anything else.
    let (status, _, _) = ctl.raw("GET", &format!("{F}/tenants"), &[], b"");
    assert_eq!(status, 401);
}

#[test]
fn hostile_strings_are_kept_verbatim_or_refused() {
    let (pg, ctl, key) = setup();
    let k = key.as_str();
    let hostile = [
        "'; DROP TABLE roles; --",
        "Robert\"); DROP TABLE orgs;--",
        "back\\slash \\\\ \\' \\x00",
        "ünïcødé ✓ 日本語 🎉 \u{202e}rtl",
        "$1 %s %% _ ? \" ' `",
        "tab\tnew\nline",
        "%00 %27 + &user=x",
    ];
    // A type key and an action hold no `:` or `#`; everything else may.
    let t = "'; DROP TABLE resource_types; --";
    write(
        &ctl,
        k,
        "POST",
        &format!("{S}/resources"),
        json!({"key": t, "name": hostile[1], "description": hostile[2],
               "actions": ["'; DROP--", "ü✓"], "roles": {hostile[0]: {"name": hostile[3], "permissions": ["'; DROP--"]}}}),
        201,
    );
    let got = expect(&ctl, k, "GET", &format!("{S}/resources/{}", enc(t)), None, 200);
    assert_eq!(
        (got["key"].as_str(), got["name"].as_str(), got["description"].as_str()),
        (Some(t), Some(hostile[1]), Some(hostile[2]))
    );
    assert_eq!(got["roles"][hostile[0]]["permissions"], json!(["'; DROP--"]));
    assert_eq!(got["roles"][hostile[0]]["name"], hostile[3]);

    for (i, s) in hostile.iter().enumerate() {
        let tenant = expect(
            &ctl,
            k,
            "POST",
            &format!("{F}/tenants"),
            Some(json!({"key": s, "name": s, "attributes": {*s: s}})),
            201,
        );
        assert_eq!((tenant["key"].as_str(), tenant["name"].as_str()), (Some(*s), Some(*s)));
        assert_eq!(tenant["attributes"], json!({*s: s}));
        assert_eq!(
            expect(&ctl, k, "GET", &format!("{F}/tenants/{}", enc(s)), None, 200),
            tenant
        );
        let user = json!({"key": s, "email": s, "first_name": s, "last_name": s, "attributes": {*s: [s, 1.5, null]}});
        let u = expect(&ctl, k, "POST", &format!("{F}/users"), Some(user.clone()), 201);
        for f in ["key", "email", "first_name", "last_name", "attributes"] {
            assert_eq!(u[f], user[f], "{f}");
        }
        assert_eq!(expect(&ctl, k, "GET", &format!("{F}/users/{}", enc(s)), None, 200), u);
        let role_key = format!("role{i} {s}");
        let role = expect(
            &ctl,
            k,
            "POST",
            &format!("{S}/roles"),
            Some(json!({"key": role_key, "name": s, "description": s, "permissions": [format!("{t}:'; DROP--")]})),
            201,
        );
        assert_eq!(
            (
                role["key"].as_str(),
                role["name"].as_str(),
                role["description"].as_str()
            ),
            (Some(role_key.as_str()), Some(*s), Some(*s))
        );
        assert_eq!(
            expect(&ctl, k, "GET", &format!("{S}/roles/{}", enc(&role_key)), None, 200),
            role
        );
        let inst = expect(
            &ctl,
            k,
            "POST",
            &format!("{F}/resource_instances"),
            Some(json!({"key": s, "resource": t, "tenant": s, "attributes": {"x": s}})),
            201,
        );
        assert_eq!(
            (
                inst["key"].as_str(),
                inst["tenant"].as_str(),
                inst["attributes"]["x"].as_str()
            ),
            (Some(*s), Some(*s), Some(*s))
        );
        let reference = format!("{t}:{s}");
        assert_eq!(
            expect(
                &ctl,
                k,
                "GET",
                &format!("{F}/resource_instances/{}", enc(&reference)),
                None,
                200
            ),
            inst
        );
        let a = expect(
            &ctl,
            k,
            "POST",
            &format!("{F}/role_assignments"),
            Some(json!({"user": s, "role": role_key, "tenant": s})),
            201,
        );
        assert_eq!(
            (a["user"].as_str(), a["role"].as_str(), a["tenant"].as_str()),
            (Some(*s), Some(role_key.as_str()), Some(*s))
        );
        let by_user = expect(
            &ctl,
            k,
            "GET",
            &format!("{F}/role_assignments?user={}", enc(s)),
            None,
            200,
        );
        assert_eq!(by_user, json!([a]));
        let on = expect(
            &ctl,
            k,
            "POST",
            &format!("{F}/role_assignments"),
            Some(json!({"user": s, "role": hostile[0], "resource_instance": reference})),
            201,
        );
        assert_eq!(on["role"], hostile[0]);
    }
    // A tuple between two hostile instances.
    let (subject, object) = (format!("{t}:{}", hostile[0]), format!("{t}:{}", hostile[1]));
    let (status, _, _) = ctl.call(
        k,
        "POST",
        &format!("{F}/relationship_tuples"),
        Some(&json!({"subject": subject, "relation": "parent", "object": object})),
    );
    assert_eq!(status, 400, "different tenants");
    write(
        &ctl,
        k,
        "POST",
        &format!("{F}/resource_instances"),
        json!({"key": "child", "resource": t, "tenant": hostile[0]}),
        201,
    );
    let tu = expect(
        &ctl,
        k,
        "POST",
        &format!("{F}/relationship_tuples"),
        Some(json!({"subject": subject, "relation": "parent", "object": format!("{t}:child")})),
        201,
    );
    assert_eq!(tu["subject"], subject);
    // Everything is in the snapshot as sent, and the tables are all still there.
    let snap = snapshot_doc(&ctl.snapshot(k));
    for s in hostile {
        assert!(
            snap.orgs.iter().any(|o| o.key == s && o.name.as_deref() == Some(s)),
            "{s}"
        );
        assert!(
            snap.users.iter().any(|u| u.key == s && u.email.as_deref() == Some(s)),
            "{s}"
        );
        assert!(snap.resources.iter().any(|r| r.key == s && r.org == s), "{s}");
        assert!(snap.role_assignments.iter().any(|a| a.user == s && a.org == s), "{s}");
    }
    assert_eq!(
        pg.psql("SELECT count(*) FROM pg_tables WHERE tablename IN ('roles', 'orgs', 'resource_types')"),
        "3"
    );

    // NUL cannot be stored: refused with the field named, nothing written.
    let before = ctl.snapshot(k)["version"].clone();
    refused(
        &ctl,
        k,
        "POST",
        &format!("{F}/tenants"),
        json!({"key": "a\u{0}b"}),
        400,
        "key",
    );
    refused(
        &ctl,
        k,
        "POST",
        &format!("{F}/users"),
        json!({"key": "u", "attributes": {"x": ["ok", "n\u{0}"]}}),
        400,
        "attributes.x[1]",
    );
    refused(
        &ctl,
        k,
        "POST",
        &format!("{S}/roles"),
        json!({"key": "r", "name": "\u{0}"}),
        400,
        "name",
    );
    refused(
        &ctl,
        k,
        "POST",
        &format!("{F}/role_assignments"),
        json!({"user": "\u{0}", "role": "r", "tenant": "t"}),
        400,
        "user",
    );
    refused(
        &ctl,
        k,
        "PATCH",
        &format!("{F}/tenants/{}", enc(hostile[0])),
        json!({"name": "x\u{0}"}),
        400,
        "name",
    );
    assert_eq!(ctl.snapshot(k)["version"], before);
    expect(&ctl, k, "GET", &format!("{F}/tenants/a%00b"), None, 404);
}

#[test]
fn deletes_cascade_as_explicit_ops() {
    let (_pg, ctl, key) = setup();
    let k = key.as_str();
    for t in ["acme", "beta", "acme-eu"] {
        write(&ctl, k, "POST", &format!("{F}/tenants"), json!({"key": t}), 201);
    }
    write(
        &ctl,
        k,
        "POST",
        &format!("{S}/resources"),
        json!({"key": "document", "actions": ["read", "write"], "roles": {"owner": {"permissions": ["read", "write"]}}}),
        201,
    );
    write(
        &ctl,
        k,
        "POST",
        &format!("{S}/resources"),
        json!({"key": "folder", "actions": ["read"]}),
        201,
    );
    write(
        &ctl,
        k,
        "POST",
        &format!("{S}/roles"),
        json!({"key": "viewer", "permissions": ["document:read", "folder:read"]}),
        201,
    );
    write(
        &ctl,
        k,
        "POST",
        &format!("{S}/roles"),
        json!({"key": "editor", "permissions": ["document:write", "folder:read"], "extends": ["viewer"]}),
        201,
    );
    for (key, r, t) in [
        ("f1", "folder", "acme"),
        ("d1", "document", "acme"),
        ("d2", "document", "acme"),
        ("b1", "document", "beta"),
    ] {
        write(
            &ctl,
            k,
            "POST",
            &format!("{F}/resource_instances"),
            json!({"key": key, "resource": r, "tenant": t}),
            201,
        );
    }
    for child in ["document:d1", "document:d2"] {
        write(
            &ctl,
            k,
            "POST",
            &format!("{F}/relationship_tuples"),
            json!({"subject": "folder:f1", "relation": "parent", "object": child}),
            201,
        );
    }
    let ra = format!("{F}/role_assignments");
    for body in [
        json!({"user": "alice", "role": "viewer", "tenant": "acme"}),
        json!({"user": "bob", "role": "editor", "tenant": "acme"}),
        json!({"user": "carol", "role": "owner", "resource_instance": "document:d1"}),
        json!({"user": "dave", "role": "viewer", "resource_instance": "folder:f1"}),
        json!({"user": "erin", "role": "viewer", "tenant": "beta"}),
    ] {
        write(&ctl, k, "POST", &ra, body, 201);
    }
    // What only the batch primitive writes: an org-scoped role, a grant, an org parent.
    let (status, _, _) = ctl.batch(
        k,
        json!([
            {"op": "upsert", "kind": "role", "value": {"key": "guard", "org": "acme"}},
            {"op": "upsert", "kind": "role_grant", "value": {"org": "acme", "role": "guard", "resource": "folder:f1", "actions": ["document:read"]}},
            {"op": "upsert", "kind": "role_assignment", "value": {"user": "frank", "role": "guard", "org": "acme"}},
            {"op": "upsert", "kind": "org", "value": {"key": "acme-eu", "parent": "acme"}},
        ]),
    );
    assert_eq!(status, 200);

    // An instance: its assignments and grants; it leaves its children's parents.
    let (status, _, v) = ctl.call(k, "DELETE", &format!("{F}/resource_instances/folder:f1"), None);
    assert_eq!(status, 204);
    let v = v.unwrap();
    assert_ops(
        &batch_ops(&ctl, k, v),
        &[
            json!({"op": "delete", "kind": "role_assignment", "value": {"user": "dave", "role": "viewer", "org": "acme", "resource": "folder:f1"}}),
            json!({"op": "delete", "kind": "role_grant", "value": {"org": "acme", "role": "guard", "resource": "folder:f1"}}),
            json!({"op": "upsert", "kind": "resource", "value": {"type": "document", "key": "d1", "org": "acme"}}),
            json!({"op": "upsert", "kind": "resource", "value": {"type": "document", "key": "d2", "org": "acme"}}),
            json!({"op": "delete", "kind": "resource", "value": {"type": "folder", "key": "f1"}}),
        ],
    );
    let snap = snapshot_doc(&ctl.snapshot(k));
    assert!(snap.resources.iter().all(|r| r.key != "f1" && r.parents.is_empty()));
    assert!(snap.role_grants.is_empty() && snap.role_assignments.iter().all(|a| a.user != "dave"));
    assert_eq!(
        expect(&ctl, k, "GET", &format!("{F}/relationship_tuples"), None, 200),
        json!([])
    );

    // A role: assignments whose role resolves to it, its place in `extends`.
    let (status, _, v) = ctl.call(k, "DELETE", &format!("{S}/roles/viewer"), None);
    assert_eq!(status, 204);
    let v = v.unwrap();
    assert_ops(
        &batch_ops(&ctl, k, v),
        &[
            json!({"op": "delete", "kind": "role_assignment", "value": {"user": "alice", "role": "viewer", "org": "acme"}}),
            json!({"op": "delete", "kind": "role_assignment", "value": {"user": "erin", "role": "viewer", "org": "beta"}}),
            json!({"op": "upsert", "kind": "role", "value": {"key": "editor", "permissions": ["document:write", "folder:read"]}}),
            json!({"op": "delete", "kind": "role", "value": {"key": "viewer"}}),
        ],
    );

    // A resource type: its instances (with their assignments), its roles, permissions naming it.
    let (status, _, v) = ctl.call(k, "DELETE", &format!("{S}/resources/document"), None);
    assert_eq!(status, 204);
    let v = v.unwrap();
    assert_ops(
        &batch_ops(&ctl, k, v),
        &[
            json!({"op": "delete", "kind": "role_assignment", "value": {"user": "carol", "role": "document#owner", "org": "acme", "resource": "document:d1"}}),
            json!({"op": "upsert", "kind": "role", "value": {"key": "editor", "permissions": ["folder:read"]}}),
            json!({"op": "delete", "kind": "resource", "value": {"type": "document", "key": "d1"}}),
            json!({"op": "delete", "kind": "resource", "value": {"type": "document", "key": "d2"}}),
            json!({"op": "delete", "kind": "resource", "value": {"type": "document", "key": "b1"}}),
            json!({"op": "delete", "kind": "role", "value": {"key": "document#owner"}}),
            json!({"op": "delete", "kind": "resource_type", "value": {"key": "document"}}),
        ],
    );

    // A tenant: its scoped roles, assignments, resources; orgs below it lose it as parent.
    write(
        &ctl,
        k,
        "POST",
        &format!("{F}/resource_instances"),
        json!({"key": "f2", "resource": "folder", "tenant": "acme"}),
        201,
    );
    let (status, _, v) = ctl.call(k, "DELETE", &format!("{F}/tenants/acme"), None);
    assert_eq!(status, 204);
    let v = v.unwrap();
    assert_ops(
        &batch_ops(&ctl, k, v),
        &[
            json!({"op": "delete", "kind": "role_assignment", "value": {"user": "bob", "role": "editor", "org": "acme"}}),
            json!({"op": "delete", "kind": "role_assignment", "value": {"user": "frank", "role": "guard", "org": "acme"}}),
            json!({"op": "upsert", "kind": "org", "value": {"key": "acme-eu"}}),
            json!({"op": "delete", "kind": "resource", "value": {"type": "folder", "key": "f2"}}),
            json!({"op": "delete", "kind": "role", "value": {"key": "guard", "org": "acme"}}),
            json!({"op": "delete", "kind": "org", "value": {"key": "acme"}}),
        ],
    );
    let snap = snapshot_doc(&ctl.snapshot(k));
    assert_eq!(snap.version, v);
    let orgs: Vec<(&str, Option<&str>)> = snap
        .orgs
        .iter()
        .map(|o| (o.key.as_str(), o.parent.as_deref()))
        .collect();
    assert_eq!(orgs, [("beta", None), ("acme-eu", None)]);
    assert!(
        snap.role_assignments.is_empty() && snap.resources.is_empty(),
        "{snap:?}"
    );
    let roles: Vec<&str> = snap.roles.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(roles, ["editor"]);
    // Deleting what is gone: 404, no version.
    let (status, _, v) = ctl.call(k, "DELETE", &format!("{F}/tenants/acme"), None);
    assert_eq!((status, v), (404, None));
}

/// (user, action, resource, allowed?) for the end-to-end project, before and after the
/// further writes.
fn expected(after: bool) -> Vec<(&'static str, &'static str, &'static str, bool)> {
    let mut out = Vec::new();
    for u in ["alice", "bob", "carol", "dave", "erin", "zed"] {
        for a in ["read", "write", "delete"] {
            for r in ["document:d1", "document:d2", "document:g1", "folder:f1"] {
                let allow = match (u, r) {
                    // editor in acme: document write, and through viewer document/folder read.
                    ("alice", "document:d1" | "document:d2") => a == "read" || a == "write",
                    ("alice", "folder:f1") => a == "read" && !after,
                    // owner (extends reader) on d2.
                    ("bob", "document:d2") => true,
                    // reader on d1.
                    ("carol", "document:d1") => a == "read",
                    // viewer on folder f1, so on d1 below it until the tuple goes.
                    ("dave", "folder:f1") => a == "read" && !after,
                    ("dave", "document:d1") => a == "read" && !after,
                    ("erin", "document:g1") => a == "read",
                    // owner on d1, given after.
                    ("erin", "document:d1") => after,
                    _ => false,
                };
                out.push((u, a, r, allow));
            }
        }
    }
    out
}

fn decisions(p: &Permd, checks: &[(&str, &str, &str, bool)]) -> Vec<bool> {
    checks.iter().map(|(u, a, r, _)| p.allowed(u, a, r).0).collect()
}

/// Waits (up to 20 s) for `p` to answer `want`; returns what it answered last.
fn settle(p: &Permd, want: &[bool], checks: &[(&str, &str, &str, bool)]) -> Vec<bool> {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        if p.get("/readyz").0 == 200 {
            let got = decisions(p, checks);
            if got == want || Instant::now() > end {
                return got;
            }
        } else if Instant::now() > end {
            panic!("not ready: {}", p.stderr());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn type_level(p: &Permd, user: &str, action: &str, resource: &str, tenant: &str) -> bool {
    let (status, v) = p.post(
        "/allowed",
        json!({"user": user, "action": action, "resource": {"type": resource, "tenant": tenant}}),
    );
    assert_eq!(status, 200, "{v}");
    v["allow"].as_bool().unwrap()
}

#[test]
fn a_permit_pull_of_this_face_decides_as_a_native_follower() {
    let (_pg, ctl, key) = setup();
    let k = key.as_str();
    for t in ["acme", "globex"] {
        write(
            &ctl,
            k,
            "POST",
            &format!("{F}/tenants"),
            json!({"key": t, "name": t.to_uppercase()}),
            201,
        );
    }
    write(
        &ctl,
        k,
        "POST",
        &format!("{S}/resources"),
        json!({"key": "document", "name": "Document", "actions": {"read": {}, "write": {}, "delete": {}},
               "roles": {"owner": {"permissions": ["write", "delete"], "extends": ["reader"]},
                         "reader": {"permissions": ["read"]}}}),
        201,
    );
    write(
        &ctl,
        k,
        "POST",
        &format!("{S}/resources"),
        json!({"key": "folder", "actions": ["read", "write"]}),
        201,
    );
    write(
        &ctl,
        k,
        "POST",
        &format!("{S}/roles"),
        json!({"key": "viewer", "name": "Viewer", "permissions": ["document:read", "folder:read"]}),
        201,
    );
    write(
        &ctl,
        k,
        "POST",
        &format!("{S}/roles"),
        json!({"key": "editor", "permissions": ["document:write"], "extends": ["viewer"]}),
        201,
    );
    for u in ["alice", "bob", "carol", "dave", "erin"] {
        write(
            &ctl,
            k,
            "PUT",
            &format!("{F}/users/{u}"),
            json!({"email": format!("{u}@example.com")}),
            201,
        );
    }
    for (key, r, t) in [
        ("f1", "folder", "acme"),
        ("d1", "document", "acme"),
        ("d2", "document", "acme"),
        ("g1", "document", "globex"),
    ] {
        write(
            &ctl,
            k,
            "POST",
            &format!("{F}/resource_instances"),
            json!({"key": key, "resource": r, "tenant": t, "attributes": {"n": key}}),
            201,
        );
    }
    write(
        &ctl,
        k,
        "POST",
        &format!("{F}/relationship_tuples"),
        json!({"subject": "folder:f1", "relation": "parent", "object": "document:d1"}),
        201,
    );
    let ra = format!("{F}/role_assignments");
    let mut version = 0;
    for body in [
        json!({"user": "alice", "role": "editor", "tenant": "acme"}),
        json!({"user": "bob", "role": "owner", "resource_instance": "document:d2"}),
        json!({"user": "carol", "role": "reader", "tenant": "acme", "resource_instance": "document:d1"}),
        json!({"user": "dave", "role": "viewer", "resource_instance": "folder:f1"}),
        json!({"user": "erin", "role": "viewer", "tenant": "globex"}),
    ] {
        version = write(&ctl, k, "POST", &ra, body, 201).1;
    }

    let native = Permd::follow(&ctl.url(), &[], &[("PERMD_API_KEY", k)]);
    let permit = Permd::follow(
        &ctl.url(),
        &[
            "--source-protocol",
            "permit",
            "--permit-project",
            "app",
            "--permit-env",
            "default",
            "--poll-interval",
            "1s",
        ],
        &[("PERMD_API_KEY", k)],
    );
    native.wait_version(version);
    let checks = expected(false);
    let want: Vec<bool> = checks.iter().map(|c| c.3).collect();
    assert_eq!(decisions(&native, &checks), want, "native follower");
    let got = settle(&permit, &want, &checks);
    for (c, g) in checks.iter().zip(&got) {
        assert_eq!(*g, c.3, "permit pull: {c:?}\n{}", permit.stderr());
    }
    // Type-level checks (Permit's tenant-wide role semantics) agree too.
    for p in [&native, &permit] {
        assert!(type_level(p, "alice", "write", "document", "acme"));
        assert!(!type_level(p, "alice", "write", "document", "globex"));
        assert!(type_level(p, "erin", "read", "folder", "globex"));
        assert!(!type_level(p, "bob", "read", "document", "acme"));
    }

    // Further REST writes reach both.
    write(
        &ctl,
        k,
        "POST",
        &ra,
        json!({"user": "erin", "role": "owner", "resource_instance": "document:d1"}),
        201,
    );
    let (status, _, _) = ctl.call(
        k,
        "DELETE",
        &format!("{F}/relationship_tuples"),
        Some(&json!({"subject": "folder:f1", "relation": "parent", "object": "document:d1"})),
    );
    assert_eq!(status, 204);
    let (_, version) = write(
        &ctl,
        k,
        "PATCH",
        &format!("{S}/roles/viewer"),
        json!({"permissions": ["document:read"]}),
        200,
    );
    native.wait_version(version);
    let checks = expected(true);
    let want: Vec<bool> = checks.iter().map(|c| c.3).collect();
    assert_eq!(decisions(&native, &checks), want, "native follower after the writes");
    let got = settle(&permit, &want, &checks);
    for (c, g) in checks.iter().zip(&got) {
        assert_eq!(*g, c.3, "permit pull after the writes: {c:?}\n{}", permit.stderr());
    }
}

/// Permit's URL mapping (`proxy_configs`) ⇄ the project's `url_mappings`: written through this
/// face (bad rules refused naming the field), listed, replaced, deleted, and carried to a
/// native follower and to a Permit pull of this face alike.
#[test]
fn proxy_configs_carry_url_mapping_rules() {
    let (_pg, ctl, key) = setup();
    let k = key.as_str();
    write(&ctl, k, "POST", &format!("{F}/tenants"), json!({"key": "acme"}), 201);
    write(
        &ctl,
        k,
        "POST",
        &format!("{S}/resources"),
        json!({"key": "document", "actions": {"read": {}, "write": {}, "get": {}}}),
        201,
    );
    write(
        &ctl,
        k,
        "POST",
        &format!("{S}/roles"),
        json!({"key": "reader", "permissions": ["document:read"]}),
        201,
    );
    write(
        &ctl,
        k,
        "POST",
        &format!("{F}/role_assignments"),
        json!({"user": "alice", "role": "reader", "tenant": "acme"}),
        201,
    );
    let pc = format!("{F}/proxy_configs");
    assert_eq!(expect(&ctl, k, "GET", &pc, None, 200), json!([]));
    refused(
        &ctl,
        k,
        "POST",
        &pc,
        json!({"key": "api", "name": "API", "mapping_rules": [
            {"url": "https://api.example.com/documents/{id}", "http_method": "get", "resource": "document", "action": "read"},
            {"url": "^/x/(", "url_type": "regex", "http_method": "get", "resource": "document", "action": "read"}]}),
        400,
        "mapping_rules[1].url",
    );
    refused(
        &ctl,
        k,
        "POST",
        &pc,
        json!({"mapping_rules": [{"url": "/a", "url_type": "glob", "http_method": "get", "resource": "document"}]}),
        400,
        "mapping_rules[0].url_type",
    );
    let (v, _) = write(
        &ctl,
        k,
        "POST",
        &pc,
        json!({"key": "api", "name": "API", "auth_mechanism": "Bearer", "mapping_rules": [
            {"url": "https://api.example.com/documents/{id}", "http_method": "get", "resource": "document", "action": "read", "headers": {}},
            {"url": "https://api.example.com/documents/{id}", "http_method": "put", "resource": "document", "action": "write"},
            {"url": "^/raw/(?P<id>[a-z0-9]+)$", "url_type": "regex", "http_method": "get", "resource": "document", "priority": 3}]}),
        201,
    );
    assert_eq!(v["key"], "permd");
    assert_eq!(v["mapping_rules"].as_array().unwrap().len(), 3);
    // An absent action is the method, as Permit's PDP reads it.
    assert_eq!(v["mapping_rules"][2]["action"], "get");
    let list = expect(&ctl, k, "GET", &pc, None, 200);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["mapping_rules"], v["mapping_rules"]);
    assert_eq!(
        expect(&ctl, k, "GET", &format!("{pc}/permd"), None, 200)["mapping_rules"],
        v["mapping_rules"]
    );
    expect(&ctl, k, "GET", &format!("{pc}/other"), None, 404);

    let native = Permd::follow(&ctl.url(), &[], &[("PERMD_API_KEY", k)]);
    let permit = Permd::follow(
        &ctl.url(),
        &[
            "--source-protocol",
            "permit",
            "--permit-project",
            "app",
            "--permit-env",
            "default",
            "--poll-interval",
            "300ms",
        ],
        &[("PERMD_API_KEY", k)],
    );
    let url = |p: &Permd, method: &str, u: &str| {
        let (st, v) = p.post(
            "/allowed_url",
            json!({"user": "alice", "http_method": method, "url": u, "tenant": "acme"}),
        );
        assert_eq!(st, 200, "{v}");
        v["reason"].as_str().unwrap().to_owned()
    };
    let cases = [
        ("GET", "https://api.example.com/documents/d1", "org_role"),
        ("PUT", "https://api.example.com/documents/d1", "no_matching_grant"),
        ("GET", "/raw/d1", "no_matching_grant"),
        ("GET", "/other", "no_url_mapping"),
    ];
    for p in [&native, &permit] {
        p.ready();
        p.wait_for("the URL rules", |p| {
            p.post(
                "/allowed_url",
                json!({"user": "alice", "http_method": "GET", "url": "/raw/d1", "tenant": "acme"}),
            )
            .1["reason"]
                == "no_matching_grant"
        });
        for (m, u, want) in cases {
            assert_eq!(url(p, m, u), want, "{m} {u}");
        }
    }

    // PATCH replaces the whole set; both followers see it.
    let (_, version) = write(
        &ctl,
        k,
        "PATCH",
        &format!("{pc}/permd"),
        json!({"mapping_rules": [{"url": "/only/{id}", "http_method": "*", "resource": "document", "action": "read"}]}),
        200,
    );
    native.wait_version(version);
    assert_eq!(url(&native, "DELETE", "/only/d1"), "org_role");
    assert_eq!(
        url(&native, "GET", "https://api.example.com/documents/d1"),
        "no_url_mapping"
    );
    permit.wait_for("the replaced rules", |p| url(p, "DELETE", "/only/d1") == "org_role");
    assert_eq!(
        url(&permit, "GET", "https://api.example.com/documents/d1"),
        "no_url_mapping"
    );
    let (status, _, _) = ctl.call(k, "DELETE", &format!("{pc}/permd"), None);
    assert_eq!(status, 204);
    assert_eq!(expect(&ctl, k, "GET", &pc, None, 200), json!([]));
}
