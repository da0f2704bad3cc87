//! The drop-in HTTP paths of the real binary (api.md, "Drop-in for what sits in front of
//! applications"): `/allowed_url` through the URL mapping rules (and equal to `/allowed` on the
//! check it maps to), `/allowed/all-tenants`, `/user-tenants`, `/nginx_allowed`,
//! `/auth_request`, `/health`, `/healthy`, `/ready`; bad rules refused naming the item.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{BIN, Permd};
use serde_json::{Value, json};
use std::process::Command;

fn url_check(p: &Permd, user: &str, method: &str, url: &str, tenant: Option<&str>) -> Value {
    let mut body = json!({"user": {"key": user}, "http_method": method, "url": url});
    if let Some(t) = tenant {
        body["tenant"] = json!(t);
    }
    let (st, v) = p.post("/allowed_url", body);
    assert_eq!(st, 200, "{v}");
    v
}

/// (user, method, url, tenant, allow, reason, the mapped query)
type UrlCase<'a> = (&'a str, &'a str, &'a str, Option<&'a str>, bool, &'a str, Value);

#[test]
fn allowed_url_maps_and_agrees_with_allowed() {
    let p = Permd::start(Some(&common::dropin::snapshot()), &[]);
    p.ready();
    // (user, method, url, tenant) → (allow, reason, resource, key, action, attributes)
    let cases: &[UrlCase] = &[
        (
            "alice",
            "GET",
            "/documents/photo",
            Some("acme"),
            true,
            "org_role",
            json!({"resource": "document", "key": "photo", "action": "read", "attributes": {"id": "photo"}}),
        ),
        (
            "bob",
            "GET",
            "https://app.example.com/documents/photo",
            None,
            true,
            "resource_role",
            json!({"resource": "document", "key": "photo", "action": "read", "attributes": {"id": "photo"}}),
        ),
        (
            "bob",
            "get",
            "/documents/photo/",
            None,
            true,
            "resource_role",
            json!({"resource": "document", "key": "photo", "action": "read", "attributes": {"id": "photo"}}),
        ),
        (
            "bob",
            "GET",
            "/documents/ph%6Fto?x=1&y=a+b",
            None,
            true,
            "resource_role",
            json!({"resource": "document", "key": "photo", "action": "read", "attributes": {"id": "photo", "x": "1", "y": "a b"}}),
        ),
        (
            "bob",
            "PUT",
            "/documents/photo",
            None,
            false,
            "no_matching_grant",
            json!({"resource": "document", "key": "photo", "action": "write", "attributes": {"id": "photo"}}),
        ),
        (
            "alice",
            "DELETE",
            "/documents/photo",
            None,
            false,
            "no_matching_grant",
            json!({"resource": "document", "key": "photo", "action": "delete", "attributes": {"id": "photo"}}),
        ),
        (
            "root",
            "DELETE",
            "https://api.example.com/documents/report",
            None,
            true,
            "org_role",
            json!({"resource": "document", "key": "report", "action": "delete", "attributes": {"id": "report"}}),
        ),
        (
            "carol",
            "GET",
            "/cameras/cam1/play",
            None,
            true,
            "role_grant",
            json!({"resource": "camera", "key": "cam1", "action": "play", "attributes": {"id": "cam1", "op": "play"}}),
        ),
        // Both regex rules match; priority 10 wins.
        (
            "carol",
            "POST",
            "/cameras/cam1/export",
            None,
            false,
            "no_matching_grant",
            json!({"resource": "camera", "key": "cam1", "action": "export", "attributes": {"id": "cam1"}}),
        ),
        (
            "bob",
            "GET",
            "https://files.example.com/photo",
            None,
            true,
            "resource_role",
            json!({"resource": "document", "key": "photo", "action": "read", "attributes": {"id": "photo"}}),
        ),
        (
            "alice",
            "GET",
            "/search?owner=alice&id=photo",
            Some("acme"),
            true,
            "org_role",
            json!({"resource": "document", "key": "photo", "action": "read", "attributes": {"owner": "alice", "id": "photo"}}),
        ),
        (
            "alice",
            "GET",
            "/documents",
            Some("globex"),
            false,
            "no_matching_grant",
            json!({"resource": "document", "action": "read", "attributes": {}}),
        ),
        (
            "alice",
            "GET",
            "/folders/shared/documents/photo",
            Some("acme"),
            true,
            "org_role",
            json!({"resource": "folder", "action": "read", "attributes": {"id": "shared", "doc": "photo"}, "key": "shared"}),
        ),
    ];
    for (user, method, url, tenant, allow, reason, query) in cases {
        let v = url_check(&p, user, method, url, *tenant);
        let at = format!("{user} {method} {url}");
        assert_eq!(v["allow"], json!(allow), "{at}: {v}");
        assert_eq!(v["result"], json!(allow), "{at}: {v}");
        assert_eq!(v["reason"], json!(reason), "{at}: {v}");
        assert_eq!(v["version"], json!(42), "{at}: {v}");
        assert_eq!(v["query"], *query, "{at}");
        // The same check through `/allowed` gives the same answer.
        let mut resource = json!({"type": query["resource"]});
        if let Some(k) = query.get("key") {
            resource["key"] = k.clone();
        }
        if let Some(t) = tenant {
            resource["tenant"] = json!(t);
        }
        let (st, direct) = p.post(
            "/allowed",
            json!({"user": user, "action": query["action"], "resource": resource}),
        );
        assert_eq!(st, 200);
        assert_eq!(
            (direct["allow"].clone(), direct["reason"].clone()),
            (v["allow"].clone(), v["reason"].clone()),
            "{at}"
        );
    }
    // No rule: deny with `no_url_mapping`, and no mapped query.
    for (method, url) in [
        ("GET", "/nothing"),
        ("PATCH", "/documents/photo"),
        ("GET", "/documents/photo/x"),
        ("GET", "/documents//"),
        ("GET", "/photo"),
        ("GET", "http://files.example.com/photo"),
    ] {
        let v = url_check(&p, "root", method, url, None);
        assert_eq!(
            v,
            json!({"allow": false, "result": false, "reason": "no_url_mapping", "version": 42}),
            "{method} {url}"
        );
    }
    // Bad bodies name the field.
    for (body, field) in [
        (json!({"http_method": "GET", "url": "/documents/a"}), "`user`"),
        (json!({"user": "a", "url": "/documents/a"}), "`http_method`"),
        (json!({"user": "a", "http_method": "GET", "url": ""}), "`url`"),
    ] {
        let (st, v) = p.post("/allowed_url", body);
        assert_eq!(st, 400, "{v}");
        assert!(v["error"]["message"].as_str().unwrap().contains(field), "{v}");
    }
}

#[test]
fn permit_tenant_paths_and_health_names() {
    let p = Permd::start(Some(&common::dropin::snapshot()), &[]);
    p.ready();
    let (st, v) = p.post(
        "/allowed/all-tenants",
        json!({"user": {"key": "alice"}, "action": "read", "resource": {"type": "document"}}),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        v["allowed_tenants"],
        json!([
            {"allow": true, "result": true, "reason": "org_role", "tenant": {"key": "acme", "attributes": {}}},
            {"allow": true, "result": true, "reason": "org_role", "tenant": {"key": "acme-eu", "attributes": {"region": "eu"}}},
        ])
    );
    let (_, v) = p.post(
        "/allowed/all-tenants",
        json!({"user": "alice", "action": "delete", "resource": "document"}),
    );
    assert_eq!(v["allowed_tenants"], json!([]));
    let (_, v) = p.post(
        "/allowed/all-tenants",
        json!({"user": "root", "action": "delete", "resource": "document"}),
    );
    assert_eq!(v["allowed_tenants"][0]["tenant"]["key"], "globex");
    assert_eq!(v["allowed_tenants"].as_array().unwrap().len(), 1);

    let tenants = |user: Value| {
        let (st, v) = p.post("/user-tenants", json!({"user": user}));
        assert_eq!(st, 200, "{v}");
        v.as_array()
            .unwrap()
            .iter()
            .map(|t| t["key"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(tenants(json!({"key": "alice"})), ["acme", "acme-eu"]);
    assert_eq!(tenants(json!("bob")), ["acme"]);
    assert_eq!(tenants(json!("root")), ["globex"]);
    assert!(tenants(json!("nobody")).is_empty());
    let (st, v) = p.post("/user-tenants", json!({}));
    assert_eq!(st, 400, "{v}");

    for path in ["/health", "/healthy", "/ready", "/healthz", "/readyz"] {
        assert_eq!(p.get(path).0, 200, "{path}");
    }
    assert_eq!(p.request("POST", "/ready", &[], b"").0, 405);
}

#[test]
fn not_ready_before_a_snapshot() {
    let p = Permd::start(None, &[]);
    assert_eq!(p.get("/health").0, 200);
    assert_eq!(p.get("/healthy").0, 503);
    assert_eq!(p.get("/ready").0, 503);
}

#[test]
fn nginx_allowed_and_auth_request() {
    let p = Permd::start(Some(&common::dropin::snapshot()), &["--proxy-default-tenant", "acme"]);
    p.ready();
    let permit = |user: &str, action: &str, rtype: &str, tenant: Option<&str>, key: Option<&str>| {
        let mut h = vec![
            ("permit-user-key", user),
            ("permit-action", action),
            ("permit-resource-type", rtype),
        ];
        if let Some(t) = tenant {
            h.push(("permit-tenant-id", t));
        }
        if let Some(k) = key {
            h.push(("permit-resource-key", k));
        }
        p.request("GET", "/nginx_allowed", &h, b"")
    };
    let (st, v) = permit("alice", "write", "document", Some("acme"), None);
    assert_eq!(
        (st, v["allow"].clone(), v["reason"].clone()),
        (200, json!(true), json!("org_role"))
    );
    let (st, v) = permit("alice", "write", "document", Some("globex"), None);
    assert_eq!((st, v["reason"].clone()), (403, json!("no_matching_grant")));
    let (st, v) = permit("bob", "read", "document", None, Some("photo"));
    assert_eq!((st, v["reason"].clone()), (200, json!("resource_role")));
    let (st, v) = p.request(
        "POST",
        "/nginx_allowed",
        &[("permit-user-key", "alice"), ("permit-resource-type", "document")],
        b"",
    );
    assert_eq!(st, 400, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("permit-action"), "{v}");

    let auth = |method: &str, uri: &str, user: Option<&str>, tenant: Option<&str>| {
        let mut h = vec![("x-original-method", method), ("x-original-uri", uri)];
        if let Some(u) = user {
            h.push(("x-user-id", u));
        }
        if let Some(t) = tenant {
            h.push(("x-tenant-id", t));
        }
        p.request("GET", "/auth_request", &h, b"")
    };
    // alice's documents: the default tenant (acme) from `--proxy-default-tenant`.
    assert_eq!(auth("PUT", "/documents/new", Some("alice"), None).0, 200);
    assert_eq!(auth("PUT", "/documents/new", Some("alice"), Some("globex")).0, 403);
    assert_eq!(auth("GET", "/documents/photo?x=1", Some("bob"), None).0, 200);
    let (st, v) = auth("PUT", "/documents/photo", Some("bob"), None);
    assert_eq!((st, v["reason"].clone()), (403, json!("no_matching_grant")));
    let (st, v) = auth("GET", "/unmapped", Some("root"), None);
    assert_eq!((st, v["reason"].clone()), (403, json!("no_url_mapping")));
    let (st, v) = auth("GET", "/documents/photo", None, None);
    assert_eq!((st, v["reason"].clone()), (401, json!("no_subject")));
    let (st, v) = p.request("GET", "/auth_request", &[("x-user-id", "bob")], b"");
    assert_eq!(st, 400, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("x-original-method"),
        "{v}"
    );
}

#[test]
fn bad_url_rules_are_refused_naming_the_item() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "{method: GET, url: '^/a/(', url_type: regex, resource: document, action: read}",
            "url_mappings[1].url",
            "bad regex",
        ),
        (
            "{method: GET, url: '/a/{id', resource: document, action: read}",
            "url_mappings[1].url",
            "bad template",
        ),
        (
            "{method: GET, url: '/a', url_type: glob, resource: document, action: read}",
            "url_mappings[1].url_type",
            "unknown url_type",
        ),
        (
            "{method: GET, url: '/documents/{id}', resource: document, action: write}",
            "url_mappings[1]",
            "duplicate",
        ),
    ];
    for (rule, field, problem) in cases {
        let doc = format!(
            "format: 1\nversion: 1\nurl_mappings:\n  - {{method: GET, url: '/documents/{{id}}', resource: document, action: read}}\n  - {rule}\n"
        );
        let path = dir.path().join("s.yaml");
        std::fs::write(&path, doc).unwrap();
        let out = Command::new(BIN)
            .args(["validate", path.to_str().unwrap()])
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{rule}: {text}");
        assert!(
            text.contains(field) && text.contains(problem),
            "{rule}: `{text}` should name {field} and say {problem}"
        );
    }
}
