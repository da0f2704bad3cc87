//! permd pulling the Permit-shaped REST API of the stand-in upstream: the mapping on recorded
//! fixtures (tenants → orgs, resource roles, instance assignments, `parent` tuples), pagination
//! across several pages with `per_page` = 100, the difference between pulls applied as one
//! batch, `429` with `Retry-After`, and the key kept out of logs and status.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod upstream;

use common::Permd;
use permd::model::Snapshot;
use serde_json::{Value, json};
use std::time::Duration;
use upstream::Upstream;

const KEY: &str = "permit_key_Zq81NVsecret";
const SCHEMA: &str = "/v2/schema/proj/prod";
const FACTS: &str = "/v2/facts/proj/prod";

fn fixture(name: &str) -> Vec<Value> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/permit/{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

async fn permit_upstream() -> Upstream {
    let up = Upstream::start(Snapshot::default(), 0).await;
    {
        let mut st = up.state();
        st.token = Some(KEY.into());
        for name in ["resources", "roles"] {
            st.permit.insert(format!("{SCHEMA}/{name}"), fixture(name));
        }
        for name in [
            "tenants",
            "users",
            "role_assignments",
            "resource_instances",
            "relationship_tuples",
            "proxy_configs",
        ] {
            st.permit.insert(format!("{FACTS}/{name}"), fixture(name));
        }
        st.paginated_shape.push(format!("{FACTS}/users"));
    }
    up
}

fn follow(up: &Upstream) -> Permd {
    Permd::follow(
        &up.url(),
        &[
            "--source-protocol",
            "permit",
            "--permit-project",
            "proj",
            "--permit-env",
            "prod",
            "--poll-interval",
            "300ms",
            "--upstream-timeout",
            "2s",
        ],
        &[("PERMD_API_KEY", KEY)],
    )
}

fn check(p: &Permd, user: &str, action: &str, resource: Value) -> (bool, String) {
    let (st, v) = p.post(
        "/allowed",
        json!({"user": user, "action": action, "resource": resource}),
    );
    assert_eq!(st, 200, "{v}");
    (v["allow"].as_bool().unwrap(), v["reason"].as_str().unwrap().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixtures_map_to_the_model_and_changes_arrive_as_one_batch() {
    let up = permit_upstream().await;
    let p = follow(&up);
    p.ready();
    assert_eq!(p.version(), Some(1));
    let cases = [
        ("alice", "write", json!("document:photo"), true, "org_role"),
        ("alice", "delete", json!("document:plan"), true, "org_role"),
        // bob is viewer on folder:shared; the photo's parent tuple puts it below the folder.
        ("bob", "read", json!("document:photo"), true, "resource_role"),
        ("bob", "read", json!("folder:shared"), true, "resource_role"),
        ("bob", "read", json!("document:plan"), false, "no_matching_grant"),
        // carol is document#editor on the plan, which extends document#viewer.
        ("carol", "write", json!("document:plan"), true, "resource_role"),
        ("carol", "read", json!("document:plan"), true, "resource_role"),
        ("carol", "write", json!("document:photo"), false, "no_matching_grant"),
        // Tenants are isolated.
        (
            "alice",
            "read",
            json!({"type": "document", "key": "report", "tenant": "globex"}),
            false,
            "no_matching_grant",
        ),
        (
            "alice",
            "read",
            json!({"type": "document", "key": "photo", "tenant": "globex"}),
            false,
            "tenant_mismatch",
        ),
        ("alice", "fly", json!("document:photo"), false, "unknown_action"),
    ];
    for (user, action, resource, allow, reason) in cases {
        assert_eq!(
            check(&p, user, action, resource.clone()),
            (allow, reason.to_string()),
            "{user} {action} {resource}"
        );
    }
    // Permit's URL mapping (proxy configs) arrives as url_mappings; the broken rule is left out.
    let url = |user: &str, method: &str, url: &str| {
        let (st, v) = p.post("/allowed_url", json!({"user": user, "http_method": method, "url": url}));
        assert_eq!(st, 200, "{v}");
        (v["allow"].as_bool().unwrap(), v["reason"].as_str().unwrap().to_string())
    };
    assert_eq!(
        url("bob", "GET", "https://api.example.com/documents/photo"),
        (true, "resource_role".into())
    );
    assert_eq!(
        url("bob", "DELETE", "https://api.example.com/documents/photo"),
        (false, "no_matching_grant".into())
    );
    assert_eq!(
        url("alice", "DELETE", "https://api.example.com/documents/photo"),
        (true, "org_role".into())
    );
    assert_eq!(
        url("bob", "GET", "https://api.example.com/folders/shared?x=1"),
        (true, "resource_role".into())
    );
    assert_eq!(url("bob", "GET", "/folders/shared"), (false, "no_url_mapping".into()));
    assert_eq!(
        url("bob", "GET", "https://api.example.com/broken/photo"),
        (false, "no_url_mapping".into())
    );
    let st = p.get("/v1/status").1;
    assert_eq!(st["counts"]["url_mapping"], json!(3), "{st}");
    assert_eq!(st["counts"]["org"], json!(2), "{st}");
    assert_eq!(st["online"], json!(true));

    // Every request carried the key, per_page 100, page from 1.
    {
        let st = up.state();
        for (_, path, auth) in &st.requests {
            assert_eq!(auth.as_deref(), Some(format!("Bearer {KEY}").as_str()));
            assert!(path.ends_with("?page=1&per_page=100"), "{path}");
        }
    }

    // Upstream changes: alice loses admin, dave gets reader; bob's folder is unlinked.
    {
        let mut st = up.state();
        let ras = st.permit.get_mut(&format!("{FACTS}/role_assignments")).unwrap();
        ras.retain(|a| a["user"] != "alice");
        ras.push(json!({"user": "dave", "role": "reader", "tenant": "acme", "resource_instance": null}));
        st.permit.insert(format!("{FACTS}/relationship_tuples"), vec![]);
    }
    p.wait_version(2);
    assert!(!check(&p, "alice", "write", json!("document:photo")).0);
    assert_eq!(
        check(&p, "dave", "read", json!("document:photo")),
        (true, "org_role".into())
    );
    assert!(!check(&p, "bob", "read", json!("document:photo")).0);
    // Unchanged pulls do not make versions.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(p.version(), Some(2));
    assert!(p.stderr().contains("permit pull applied"));
    assert!(!p.stderr().contains(KEY));
    assert!(!p.get("/v1/status").1.to_string().contains(KEY));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pagination_across_pages_and_429_with_retry_after() {
    let up = permit_upstream().await;
    {
        let mut st = up.state();
        let ras = st.permit.get_mut(&format!("{FACTS}/role_assignments")).unwrap();
        for i in 0..247 {
            ras.push(json!({"user": format!("u{i}"), "role": "reader", "tenant": "acme", "resource_instance": null}));
        }
        // 3 + 247 = 250 assignments: pages of 100, 100, 50. Users: 130 in the paginated shape.
        let users = st.permit.get_mut(&format!("{FACTS}/users")).unwrap();
        for i in 0..127 {
            users.push(json!({"key": format!("u{i}"), "email": null, "attributes": {}}));
        }
        st.fail_next.push_back(429);
        st.retry_after = Some("1".into());
    }
    let p = follow(&up);
    p.ready();
    assert_eq!(
        check(&p, "u246", "read", json!("document:photo")),
        (true, "org_role".into())
    );
    assert_eq!(
        check(&p, "u0", "read", json!("document:photo")),
        (true, "org_role".into())
    );
    let st = up.state();
    let ra_pages: Vec<&str> = st
        .requests
        .iter()
        .map(|(_, p, _)| p.as_str())
        .filter(|p| p.starts_with(&format!("{FACTS}/role_assignments")))
        .take(3)
        .collect();
    assert_eq!(
        ra_pages,
        ["1", "2", "3"].map(|n| format!("{FACTS}/role_assignments?page={n}&per_page=100"))
    );
    let user_pages = st
        .requests
        .iter()
        .take_while(|(_, p, _)| !p.starts_with(&format!("{FACTS}/role_assignments")))
        .filter(|(_, p, _)| p.starts_with(&format!("{FACTS}/users")))
        .count();
    assert_eq!(user_pages, 2, "page_count says 2 pages of users");
    // The first request got 429; the same page was asked again after Retry-After.
    let (first, second) = (&st.requests[0], &st.requests[1]);
    assert_eq!(first.1, second.1);
    let waited = second.0.duration_since(first.0);
    assert!(waited >= Duration::from_millis(950), "retried after {waited:?}");
    // One pull of this data costs 1 + 1 + 1 + 2 + 3 + 1 + 1 = 10 requests (plus the 429'd one).
    let first_pull: Vec<_> = st.requests.iter().take(11).collect();
    assert!(
        first_pull
            .last()
            .unwrap()
            .1
            .starts_with(&format!("{FACTS}/relationship_tuples"))
    );
}

/// Permit ABAC: condition sets and set rules become attribute rules; an operator with no
/// mapping refuses the pull (reported in /v1/status) and the last good version keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn condition_sets_and_set_rules_become_rules() {
    let up = permit_upstream().await;
    {
        let mut st = up.state();
        st.permit.insert(
            format!("{SCHEMA}/condition_sets"),
            vec![
                json!({"key": "example_staff", "name": "Staff", "type": "userset",
                       "conditions": {"allOf": [{"user.email": {"contains": "@example.com"}}]}}),
                json!({"key": "documents", "name": "Documents", "type": "resourceset",
                       "conditions": {"allOf": [{"resource.type": {"equals": "document"}}]}}),
            ],
        );
        st.permit.insert(
            format!("{FACTS}/set_rules"),
            vec![json!({"user_set": "example_staff", "permission": "document:delete", "resource_set": "documents"})],
        );
    }
    let p = follow(&up);
    p.ready();
    // carol's email is @example.com; bob has none (a missing attribute never allows).
    assert_eq!(
        check(&p, "carol", "delete", json!("document:photo")),
        (true, "attribute_rule".into())
    );
    assert_eq!(
        check(&p, "bob", "delete", json!("document:photo")),
        (false, "no_matching_grant".into())
    );
    assert_eq!(p.get("/v1/status").1["counts"]["rule"], json!(1));
    let v = p.version().unwrap();

    // An operator with no mapping: the pull is refused, the rule keeps serving.
    {
        let mut st = up.state();
        let sets = st.permit.get_mut(&format!("{SCHEMA}/condition_sets")).unwrap();
        sets[0]["conditions"] = json!({"allOf": [{"user.email": {"matches-glob": "*@example.com"}}]});
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let st = p.get("/v1/status").1;
        let message = st["last_error"]["message"].as_str().unwrap_or_default().to_string();
        if message.contains("matches-glob") {
            assert!(message.contains("condition set `example_staff`"), "{st}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no refusal reported: {st}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(p.version(), Some(v));
    assert!(check(&p, "carol", "delete", json!("document:photo")).0);
}
