//! The control plane's organisation faces against a real PostgreSQL: the perms.io organisation
//! service (seed 000) over REST and gRPC, pdk.io OU permissions (seed 001) with
//! `ancestorPermissions` over a three-level org tree, organisations (seed 004) with their
//! isolation rules for acting users (`X-Permd-Actor`) decided by permd's engine, the audit log
//! of deletes, keys of other projects seeing nothing, and bad input storing nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::control::{Control, create_key};
use common::pg::Postgres;
use serde_json::{Value, json};

const ORGS: &str = "/api/v1/organizations";
const SVC: &str = "/organisation-service/v1/organisation";

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

/// One request, as `actor` when given: (status, JSON body, lower-case head).
fn req(
    ctl: &Control,
    key: &str,
    actor: Option<&str>,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> (u16, Value, String) {
    let auth = format!("Bearer {key}");
    let mut headers = vec![("authorization", auth.as_str())];
    if let Some(a) = actor {
        headers.push(("x-permd-actor", a));
    }
    let bytes = body.map(|b| b.to_string()).unwrap_or_default();
    if body.is_some() {
        headers.push(("content-type", "application/json"));
    }
    let (status, head, out) = ctl.raw(method, path, &headers, bytes.as_bytes());
    (status, serde_json::from_slice(&out).unwrap_or(Value::Null), head)
}

/// A request that must answer `want`; the body.
fn expect(
    ctl: &Control,
    key: &str,
    actor: Option<&str>,
    method: &str,
    path: &str,
    body: Option<Value>,
    want: u16,
) -> Value {
    let (status, v, _) = req(ctl, key, actor, method, path, body.as_ref());
    assert_eq!(status, want, "{actor:?} {method} {path} {body:?}: {v}");
    v
}

/// The value of header `name` in a lower-case head.
fn header(head: &str, name: &str) -> Option<String> {
    head.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")).map(|v| v.trim().to_string()))
}

/// An error naming `field` in its message.
fn names(v: &Value, field: &str) {
    let m = v["error"]["message"].as_str().unwrap_or_default();
    assert!(
        m.contains(&format!("`{field}`")),
        "the error should name `{field}`: {v}"
    );
}

/// The project's version.
fn version(ctl: &Control, key: &str) -> u64 {
    ctl.snapshot(key)["version"].as_u64().unwrap()
}

fn batch(ctl: &Control, key: &str, ops: Value) -> u64 {
    let (status, body, v) = ctl.batch(key, ops);
    assert_eq!(status, 200, "{body}");
    v.unwrap()
}

fn up(kind: &str, value: Value) -> Value {
    json!({"op": "upsert", "kind": kind, "value": value})
}

/// Orgs `a`, `b` and the tree `root` > `mid` > `leaf`; the roles of seeds 001 and 004; `su` a
/// superuser (assigned in `b`), `alice` admin of `a`, `bob` member of `a`, `carol` admin of
/// `b`, `dave` member of `b`.
fn seed(ctl: &Control, key: &str) -> u64 {
    let mut ops = vec![
        up("org", json!({"key": "a", "name": "Org A"})),
        up("org", json!({"key": "b"})),
        up("org", json!({"key": "root"})),
        up("org", json!({"key": "mid", "parent": "root"})),
        up("org", json!({"key": "leaf", "parent": "mid"})),
        up("role", json!({"key": "superuser", "permissions": ["*:*"]})),
    ];
    for r in ["admin", "member", "reporter", "manager", "integrator"] {
        ops.push(up("role", json!({"key": r})));
    }
    for (u, r, o) in [
        ("su", "superuser", "b"),
        ("alice", "admin", "a"),
        ("bob", "member", "a"),
        ("carol", "admin", "b"),
        ("dave", "member", "b"),
    ] {
        ops.push(up("role_assignment", json!({"user": u, "role": r, "org": o})));
    }
    ops.push(up(
        "user",
        json!({"key": "bob", "email": "Bob@Example.com", "first_name": "Bob", "last_name": "Builder"}),
    ));
    batch(ctl, key, Value::Array(ops))
}

fn audit_rows(pg: &Postgres) -> Vec<String> {
    let out = pg.psql(
        "SELECT coalesce(actor, '-') || '|' || action || '|' || target || '|' || outcome || '|' || coalesce(version::text, '-') \
         || '|' || (at > now() - interval '5 minutes')::text FROM org_audit ORDER BY id",
    );
    out.lines().map(str::to_string).filter(|l| !l.is_empty()).collect()
}

// --- seed 000 over REST

#[test]
fn organisation_service_rest() {
    let (pg, ctl, key) = setup();
    let staging = create_key(&pg, "acme", "app", "staging");
    for p in ["billing", "web-100%", "o'brien"] {
        create_key(&pg, "acme", p, "default");
    }
    let other = create_key(&pg, "globex", "app", "default");
    let org_id = pg
        .psql("SELECT id FROM organisations WHERE name = 'acme'")
        .trim()
        .to_string();

    // The organisation, by name or id.
    let v = expect(&ctl, &key, None, "GET", &format!("{SVC}/acme"), None, 200);
    assert_eq!(v["organisation"]["name"], "acme");
    assert_eq!(v["organisation"]["id"], org_id.as_str());
    assert!(v["organisation"]["created_at"].as_str().unwrap().ends_with('Z'), "{v}");
    let by_id = expect(&ctl, &key, None, "GET", &format!("{SVC}/{org_id}"), None, 200);
    assert_eq!(by_id, v);
    // Another organisation is exactly an unknown one.
    let theirs = expect(&ctl, &key, None, "GET", &format!("{SVC}/globex"), None, 404);
    let nobody = expect(&ctl, &key, None, "GET", &format!("{SVC}/nobody"), None, 404);
    assert_eq!(
        theirs["error"]["message"].as_str().unwrap().replace("globex", "X"),
        nobody["error"]["message"].as_str().unwrap().replace("nobody", "X")
    );
    expect(&ctl, &other, None, "GET", &format!("{SVC}/acme/projects"), None, 404);
    let mine = expect(&ctl, &other, None, "GET", &format!("{SVC}/globex/projects"), None, 200);
    assert_eq!(mine["projects"].as_array().unwrap().len(), 1);

    // One project; with several environments `env` picks one.
    let v = expect(
        &ctl,
        &key,
        None,
        "GET",
        &format!("{SVC}/acme/project?project_name=billing"),
        None,
        200,
    );
    assert_eq!(v["project"]["name"], "billing");
    assert_eq!(v["project"]["env"], "default");
    assert_eq!(v["project"]["organisation_id"], org_id.as_str());
    let v = expect(
        &ctl,
        &key,
        None,
        "GET",
        &format!("{SVC}/acme/project?project_name=app"),
        None,
        400,
    );
    names(&v, "env");
    let v = expect(
        &ctl,
        &key,
        None,
        "GET",
        &format!("{SVC}/acme/project?project_name=app&env=staging"),
        None,
        200,
    );
    assert_eq!(v["project"]["env"], "staging");
    let v = expect(&ctl, &key, None, "GET", &format!("{SVC}/acme/project"), None, 400);
    names(&v, "project_name");
    expect(
        &ctl,
        &key,
        None,
        "GET",
        &format!("{SVC}/acme/project?project_name=nope"),
        None,
        404,
    );
    let q = enc("o'brien");
    let v = expect(
        &ctl,
        &key,
        None,
        "GET",
        &format!("{SVC}/acme/project?project_name={q}"),
        None,
        200,
    );
    assert_eq!(v["project"]["name"], "o'brien");

    // Every project by cursor pages.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10 {
        let c = cursor
            .as_deref()
            .map(|c| format!("&cursor={}", enc(c)))
            .unwrap_or_default();
        let v = expect(
            &ctl,
            &key,
            None,
            "GET",
            &format!("{SVC}/acme/projects?limit=2{c}"),
            None,
            200,
        );
        let page = v["projects"].as_array().unwrap();
        assert!(page.len() <= 2);
        seen.extend(
            page.iter()
                .map(|p| format!("{}/{}", p["name"].as_str().unwrap(), p["env"].as_str().unwrap())),
        );
        cursor = v["pagination"]["next_cursor"].as_str().map(str::to_string);
        if cursor.is_none() {
            break;
        }
    }
    assert_eq!(
        seen,
        [
            "app/default",
            "app/staging",
            "billing/default",
            "web-100%/default",
            "o'brien/default"
        ]
    );
    // `search`: a substring without case; `%`, `_` and quotes are data.
    let v = expect(
        &ctl,
        &key,
        None,
        "GET",
        &format!("{SVC}/acme/projects?search=BILL"),
        None,
        200,
    );
    assert_eq!(v["projects"].as_array().unwrap().len(), 1);
    for (needle, want) in [("%", 1), ("_", 0), ("'", 1), ("' OR '1'='1", 0)] {
        let v = expect(
            &ctl,
            &key,
            None,
            "GET",
            &format!("{SVC}/acme/projects?search={}", enc(needle)),
            None,
            200,
        );
        assert_eq!(v["projects"].as_array().unwrap().len(), want, "search {needle}: {v}");
    }
    let v = expect(
        &ctl,
        &key,
        None,
        "GET",
        &format!("{SVC}/acme/projects?limit=0"),
        None,
        400,
    );
    names(&v, "limit");
    let v = expect(
        &ctl,
        &key,
        None,
        "GET",
        &format!("{SVC}/acme/projects?limit=x"),
        None,
        400,
    );
    names(&v, "limit");
    let v = expect(
        &ctl,
        &key,
        None,
        "GET",
        &format!("{SVC}/acme/projects?cursor=nope"),
        None,
        400,
    );
    names(&v, "cursor");

    // API keys: metadata only.
    let (status, _, body) = ctl.raw(
        "GET",
        &format!("{SVC}/acme/api-key?project_name=app"),
        &[("authorization", &format!("Bearer {key}"))],
        b"",
    );
    assert_eq!(status, 200);
    let text = String::from_utf8(body).unwrap();
    assert!(
        !text.contains(&key) && !text.contains(&staging),
        "a secret leaked: {text}"
    );
    assert!(!text.contains("hash"), "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    let keys = v["api_keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2, "{v}");
    assert!(key.starts_with(keys[0]["prefix"].as_str().unwrap()));
    assert_eq!(keys[1]["env"], "staging");
    assert!(keys[0]["revoked_at"].is_null());
    let v = expect(
        &ctl,
        &key,
        None,
        "GET",
        &format!("{SVC}/acme/api-key?project_name=app&env=staging"),
        None,
        200,
    );
    assert_eq!(v["api_keys"].as_array().unwrap().len(), 1);
    expect(
        &ctl,
        &key,
        None,
        "GET",
        &format!("{SVC}/acme/api-key?project_name=nope"),
        None,
        404,
    );

    // Invitations.
    let v = expect(
        &ctl,
        &key,
        None,
        "POST",
        &format!("{SVC}/acme/invite"),
        Some(json!({"email": "o'brien@example.com"})),
        200,
    );
    assert_eq!(v["email"], "o'brien@example.com");
    expect(
        &ctl,
        &key,
        None,
        "POST",
        &format!("{SVC}/acme/invite"),
        Some(json!({"email": "O'Brien@example.com"})),
        200,
    );
    for bad in [
        json!({"email": "not an email"}),
        json!({}),
        json!({"email": 5}),
        json!({"email": "a@b", "x": 1}),
    ] {
        let v = expect(
            &ctl,
            &key,
            None,
            "POST",
            &format!("{SVC}/acme/invite"),
            Some(bad.clone()),
            400,
        );
        let m = v["error"]["message"].as_str().unwrap();
        assert!(m.contains("email") || m.contains('x'), "{bad}: {v}");
    }
    expect(
        &ctl,
        &key,
        None,
        "POST",
        &format!("{SVC}/globex/invite"),
        Some(json!({"email": "x@y.z"})),
        404,
    );
    assert_eq!(
        pg.psql("SELECT count(*) || ':' || min(email) FROM organisation_invites"),
        "1:O'Brien@example.com"
    );

    // Methods, routes, keys.
    let (status, _, head) = req(&ctl, &key, None, "DELETE", &format!("{SVC}/acme"), None);
    assert_eq!(status, 405);
    assert_eq!(header(&head, "allow").as_deref(), Some("get, head"));
    expect(&ctl, &key, None, "GET", &format!("{SVC}/acme/dashboard"), None, 404);
    expect(&ctl, "pk_wrong", None, "GET", &format!("{SVC}/acme"), None, 401);
    assert_eq!(pg.psql("SELECT count(*) FROM organisations"), "2");
}

// --- seed 000 over gRPC, on the gRPC port of the real `permd control`

mod grpc {
    use super::*;
    use permd::control::orgs::pb::organisation::v1 as pb;
    use permd::control::orgs::pb::organisation::v1::organisation_service_client::OrganisationServiceClient;
    use permd::control::orgs::pb::pagination::v1::PaginationRequest;
    use tonic::Code;
    use tonic::transport::Channel;

    /// A channel to the replica's gRPC port.
    async fn serve(ctl: &Control) -> Channel {
        Channel::from_shared(format!("http://{}", ctl.grpc))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    fn with_key<T>(key: &str, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.metadata_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
        r
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn organisation_service_grpc() {
        let pg = Postgres::start();
        let key = create_key(&pg, "acme", "app", "default");
        create_key(&pg, "acme", "app", "staging");
        create_key(&pg, "acme", "billing", "default");
        create_key(&pg, "globex", "app", "default");
        let control = Control::start(&pg, &[]);
        let ch = serve(&control).await;
        let mut c = OrganisationServiceClient::new(ch);

        let org = c
            .get_organisation(with_key(&key, pb::GetOrganisationRequest { id: "acme".into() }))
            .await
            .unwrap()
            .into_inner()
            .organisation
            .unwrap();
        assert_eq!(org.name, "acme");
        let again = c
            .get_organisation(with_key(&key, pb::GetOrganisationRequest { id: org.id.clone() }))
            .await
            .unwrap();
        assert_eq!(again.into_inner().organisation.unwrap().name, "acme");
        let e = c
            .get_organisation(with_key(&key, pb::GetOrganisationRequest { id: "globex".into() }))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{e:?}");
        let e = c
            .get_organisation(tonic::Request::new(pb::GetOrganisationRequest { id: "acme".into() }))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
        let e = c
            .get_organisation(with_key(&key, pb::GetOrganisationRequest { id: String::new() }))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);

        // The seed's request: pagination { limit }, then the cursor.
        let page = |cursor: Option<String>| pb::GetProjectsForOrganisationRequest {
            organisation_id: "acme".into(),
            pagination: Some(PaginationRequest { limit: Some(2), cursor }),
            search: None,
        };
        let first = c
            .get_projects_for_organisation(with_key(&key, page(None)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(first.projects.len(), 2);
        let next = first.pagination.unwrap().next_cursor.unwrap();
        let second = c
            .get_projects_for_organisation(with_key(&key, page(Some(next))))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(second.projects.len(), 1);
        assert_eq!(second.projects[0].name, "billing");
        assert!(second.pagination.unwrap().next_cursor.is_none());
        let mut bad = page(None);
        bad.pagination = Some(PaginationRequest {
            limit: Some(1000),
            cursor: None,
        });
        let e = c.get_projects_for_organisation(with_key(&key, bad)).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains("`pagination.limit`"), "{e:?}");

        let p = c
            .get_project(with_key(
                &key,
                pb::GetProjectRequest {
                    organisation_id: "acme".into(),
                    project_name: "app".into(),
                    env: Some("staging".into()),
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .project
            .unwrap();
        assert_eq!((p.name.as_str(), p.env.as_str()), ("app", "staging"));

        let keys = c
            .list_api_keys(with_key(
                &key,
                pb::ListApiKeysRequest {
                    organisation_id: "acme".into(),
                    project_name: "app".into(),
                    env: None,
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .api_keys;
        assert_eq!(keys.len(), 2);
        assert!(key.starts_with(&keys[0].prefix) && keys[0].prefix.len() < key.len());

        let invited = c
            .invite_user_to_organisation(with_key(
                &key,
                pb::InviteUserToOrganisationRequest {
                    organisation_id: "acme".into(),
                    email: "new@example.com".into(),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(invited.email, "new@example.com");
        let e = c
            .invite_user_to_organisation(with_key(
                &key,
                pb::InviteUserToOrganisationRequest {
                    organisation_id: "acme".into(),
                    email: "nope".into(),
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains("`email`"), "{e:?}");
        assert_eq!(pg.psql("SELECT count(*) FROM organisation_invites"), "1");
    }
}

// --- seed 001

#[test]
fn ou_permissions() {
    let (pg, ctl, key) = setup();
    seed(&ctl, &key);
    let base = "/api/ous/a/permissions";

    // A new user keyed by the email.
    let (status, v, head) = req(
        &ctl,
        &key,
        None,
        "POST",
        base,
        Some(&json!({"email": "new@example.com", "role": "reporter"})),
    );
    assert_eq!(status, 201, "{v}");
    assert!(header(&head, "x-permd-version").is_some());
    let id = v["_id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 24);
    assert_eq!(
        v,
        json!({"_id": id, "userId": "new@example.com", "name": null, "email": "new@example.com",
               "role": "reporter", "organizationId": "a"})
    );
    let snap = ctl.snapshot(&key);
    assert!(
        snap["users"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u["key"] == "new@example.com")
    );
    assert!(
        snap["role_assignments"]
            .as_array()
            .unwrap()
            .contains(&json!({"user": "new@example.com", "role": "reporter", "org": "a"}))
    );
    // The user with that email (case aside): its key and name.
    let v = expect(
        &ctl,
        &key,
        None,
        "POST",
        "/api/ous/b/permissions",
        Some(json!({"email": "bob@example.COM", "role": "manager"})),
        201,
    );
    assert_eq!(v["userId"], "bob");
    assert_eq!(v["name"], "Bob Builder");
    assert_eq!(v["email"], "Bob@Example.com");
    // One permission per user and org.
    let v = expect(
        &ctl,
        &key,
        None,
        "POST",
        base,
        Some(json!({"email": "new@example.com", "role": "admin"})),
        409,
    );
    names(&v, "email");
    // Roles: only pdk.io's; and the role must exist in the org.
    let v = expect(
        &ctl,
        &key,
        None,
        "POST",
        base,
        Some(json!({"email": "x@example.com", "role": "owner"})),
        400,
    );
    names(&v, "role");
    let v = expect(
        &ctl,
        &key,
        None,
        "POST",
        base,
        Some(json!({"email": "x@example.com", "role": "superuser"})),
        400,
    );
    names(&v, "role");
    batch(
        &ctl,
        &key,
        json!([{"op": "delete", "kind": "role", "value": {"key": "integrator"}}]),
    );
    let v = expect(
        &ctl,
        &key,
        None,
        "POST",
        base,
        Some(json!({"email": "x@example.com", "role": "integrator"})),
        404,
    );
    names(&v, "role");
    expect(
        &ctl,
        &key,
        None,
        "POST",
        "/api/ous/nope/permissions",
        Some(json!({"email": "x@example.com", "role": "admin"})),
        404,
    );

    // PUT: the same `_id`, the new role (201, as pdk.io answers).
    let before = version(&ctl, &key);
    let (status, v, head) = req(
        &ctl,
        &key,
        None,
        "PUT",
        &format!("{base}/{id}"),
        Some(&json!({"role": "manager"})),
    );
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["_id"], id.as_str());
    assert_eq!(v["role"], "manager");
    assert_eq!(header(&head, "x-permd-version"), Some((before + 1).to_string()));
    let held: Vec<Value> = ctl.snapshot(&key)["role_assignments"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["user"] == "new@example.com")
        .cloned()
        .collect();
    assert_eq!(
        held,
        vec![json!({"user": "new@example.com", "role": "manager", "org": "a"})]
    );
    let v = expect(
        &ctl,
        &key,
        None,
        "PUT",
        &format!("{base}/{id}"),
        Some(json!({"role": "boss"})),
        400,
    );
    names(&v, "role");
    expect(
        &ctl,
        &key,
        None,
        "PUT",
        &format!("{base}/000000000000000000000000"),
        Some(json!({"role": "admin"})),
        404,
    );
    // The same user's permission in another org is another id.
    expect(
        &ctl,
        &key,
        None,
        "PUT",
        &format!("/api/ous/b/permissions/{id}"),
        Some(json!({"role": "admin"})),
        404,
    );

    // DELETE: 204 with the version, then gone; audited.
    let (status, _, head) = req(&ctl, &key, None, "DELETE", &format!("{base}/{id}"), None);
    assert_eq!(status, 204);
    let deleted_at = header(&head, "x-permd-version").unwrap();
    assert!(
        !ctl.snapshot(&key)["role_assignments"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["user"] == "new@example.com")
    );
    expect(&ctl, &key, None, "DELETE", &format!("{base}/{id}"), None, 404);
    let rows = audit_rows(&pg);
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(
        rows[0],
        format!("-|ou.permission.delete|{{\"organization\":\"a\",\"permission\":\"{id}\"}}|deleted|{deleted_at}|true")
    );
    assert!(rows[1].ends_with("|not_found|-|true"), "{rows:?}");

    // The rules hold for acting users too: a member of `a` may not change its permissions.
    let v = expect(
        &ctl,
        &key,
        Some("bob"),
        "POST",
        base,
        Some(json!({"email": "y@example.com", "role": "admin"})),
        403,
    );
    assert_eq!(v["error"]["code"], "permission_denied");
    expect(
        &ctl,
        &key,
        Some("carol"),
        "POST",
        base,
        Some(json!({"email": "y@example.com", "role": "admin"})),
        404,
    );
    expect(
        &ctl,
        &key,
        Some("alice"),
        "POST",
        base,
        Some(json!({"email": "y@example.com", "role": "admin"})),
        201,
    );
    // Methods.
    let (status, _, head) = req(&ctl, &key, None, "GET", base, None);
    assert_eq!(status, 405);
    assert_eq!(header(&head, "allow").as_deref(), Some("post"));
}

#[test]
fn ancestor_permissions_over_three_levels() {
    let (_pg, ctl, key) = setup();
    seed(&ctl, &key);
    let grant = |org: &str, email: &str, role: &str| {
        expect(
            &ctl,
            &key,
            None,
            "POST",
            &format!("/api/ous/{org}/permissions"),
            Some(json!({"email": email, "role": role})),
            201,
        )
    };
    let r = grant("root", "r@example.com", "admin");
    let m1 = grant("mid", "m1@example.com", "manager");
    let m2 = grant("mid", "m2@example.com", "integrator");
    let l = grant("leaf", "l@example.com", "reporter");
    // A role that is not pdk.io's, and an assignment on an instance, are no permissions.
    batch(
        &ctl,
        &key,
        json!([up(
            "role_assignment",
            json!({"user": "x", "role": "superuser", "org": "mid"})
        )]),
    );
    let ids = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|p| p["_id"].as_str().unwrap().to_string())
            .collect()
    };
    let id = |v: &Value| v["_id"].as_str().unwrap().to_string();
    let (status, v, head) = req(&ctl, &key, None, "GET", "/api/ous/leaf/ancestorPermissions", None);
    assert_eq!(status, 200);
    assert_eq!(ids(&v), vec![id(&l), id(&m1), id(&m2), id(&r)]);
    assert_eq!(header(&head, "x-total-count").as_deref(), Some("4"));
    assert_eq!(v[0]["organizationId"], "leaf");
    assert_eq!(v[3]["organizationId"], "root");
    assert_eq!(v[1]["role"], "manager");
    let v = expect(&ctl, &key, None, "GET", "/api/ous/mid/ancestorPermissions", None, 200);
    assert_eq!(ids(&v), vec![id(&m1), id(&m2), id(&r)]);
    let v = expect(&ctl, &key, None, "GET", "/api/ous/root/ancestorPermissions", None, 200);
    assert_eq!(ids(&v), vec![id(&r)]);
    let v = expect(
        &ctl,
        &key,
        None,
        "GET",
        "/api/ous/leaf/ancestorPermissions?skip=1&limit=2",
        None,
        200,
    );
    assert_eq!(ids(&v), vec![id(&m1), id(&m2)]);
    // A cycle of parents ends.
    batch(&ctl, &key, json!([up("org", json!({"key": "root", "parent": "leaf"}))]));
    let v = expect(&ctl, &key, None, "GET", "/api/ous/mid/ancestorPermissions", None, 200);
    assert_eq!(ids(&v), vec![id(&m1), id(&m2), id(&r), id(&l)]);
    expect(&ctl, &key, None, "GET", "/api/ous/nope/ancestorPermissions", None, 404);
    // An acting user sees the chain of an org it belongs to, not of another.
    expect(
        &ctl,
        &key,
        Some("bob"),
        "GET",
        "/api/ous/a/ancestorPermissions",
        None,
        200,
    );
    expect(
        &ctl,
        &key,
        Some("bob"),
        "GET",
        "/api/ous/leaf/ancestorPermissions",
        None,
        404,
    );
    let v = expect(
        &ctl,
        &key,
        None,
        "GET",
        "/api/ous/leaf/ancestorPermissions?limit=0",
        None,
        400,
    );
    names(&v, "limit");
}

// --- seed 004

#[test]
fn organizations_crud_delete_409_and_audit() {
    let (pg, ctl, key) = setup();
    seed(&ctl, &key);

    // Create: the key made from the name, then the next free one; an explicit id.
    let (status, v, head) = req(
        &ctl,
        &key,
        None,
        "POST",
        &format!("{ORGS}/"),
        Some(&json!({"name": "Engineering", "description": "Engineering department"})),
    );
    assert_eq!(status, 201, "{v}");
    assert!(header(&head, "x-permd-version").is_some());
    assert_eq!(
        v,
        json!({"id": "engineering", "name": "Engineering", "description": "Engineering department", "parent": null})
    );
    let v = expect(
        &ctl,
        &key,
        None,
        "POST",
        ORGS,
        Some(json!({"name": "Engineering"})),
        201,
    );
    assert_eq!(v["id"], "engineering-2");
    let v = expect(
        &ctl,
        &key,
        None,
        "POST",
        ORGS,
        Some(json!({"name": "Sub", "id": "sub", "parent": "engineering"})),
        201,
    );
    assert_eq!(v["parent"], "engineering");
    let v = expect(
        &ctl,
        &key,
        None,
        "POST",
        ORGS,
        Some(json!({"name": "Dup", "id": "sub"})),
        409,
    );
    names(&v, "id");
    let v = expect(
        &ctl,
        &key,
        None,
        "POST",
        ORGS,
        Some(json!({"name": "Orphan", "parent": "nope"})),
        404,
    );
    names(&v, "parent");
    let snap = ctl.snapshot(&key);
    let eng = snap["orgs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["key"] == "engineering")
        .unwrap()
        .clone();
    assert_eq!(
        eng,
        json!({"key": "engineering", "name": "Engineering", "attributes": {"description": "Engineering department"}})
    );

    // List, view, update.
    let (status, v, head) = req(&ctl, &key, None, "GET", &format!("{ORGS}/"), None);
    assert_eq!(status, 200);
    assert_eq!(v.as_array().unwrap().len(), 8);
    assert_eq!(header(&head, "x-total-count").as_deref(), Some("8"));
    let v = expect(&ctl, &key, None, "GET", &format!("{ORGS}?skip=2&limit=2"), None, 200);
    assert_eq!(
        v.as_array()
            .unwrap()
            .iter()
            .map(|o| o["id"].clone())
            .collect::<Vec<_>>(),
        vec![json!("root"), json!("mid")]
    );
    let v = expect(&ctl, &key, None, "GET", &format!("{ORGS}/a"), None, 200);
    assert_eq!(
        v,
        json!({"id": "a", "name": "Org A", "description": null, "parent": null})
    );
    let v = expect(
        &ctl,
        &key,
        None,
        "PUT",
        &format!("{ORGS}/engineering"),
        Some(json!({"name": "Engineering Team", "description": "Updated description"})),
        200,
    );
    assert_eq!(v["name"], "Engineering Team");
    assert_eq!(v["description"], "Updated description");
    let v = expect(
        &ctl,
        &key,
        None,
        "PUT",
        &format!("{ORGS}/engineering"),
        Some(json!({"description": null})),
        200,
    );
    assert_eq!(
        v,
        json!({"id": "engineering", "name": "Engineering Team", "description": null, "parent": null})
    );
    expect(
        &ctl,
        &key,
        None,
        "PUT",
        &format!("{ORGS}/nope"),
        Some(json!({"name": "x"})),
        404,
    );

    // Users: add (201, then 200), list, remove.
    let v = expect(
        &ctl,
        &key,
        None,
        "POST",
        &format!("{ORGS}/engineering/users/erin"),
        None,
        201,
    );
    assert_eq!(v["id"], "erin");
    assert_eq!(v["roles"], json!(["member"]));
    expect(
        &ctl,
        &key,
        None,
        "POST",
        &format!("{ORGS}/engineering/users/erin"),
        None,
        200,
    );
    expect(
        &ctl,
        &key,
        None,
        "POST",
        &format!("{ORGS}/engineering/users/frank"),
        None,
        201,
    );
    let (status, v, head) = req(&ctl, &key, None, "GET", &format!("{ORGS}/engineering/users"), None);
    assert_eq!(status, 200);
    assert_eq!(
        v.as_array()
            .unwrap()
            .iter()
            .map(|u| u["id"].clone())
            .collect::<Vec<_>>(),
        vec![json!("erin"), json!("frank")]
    );
    assert_eq!(header(&head, "x-total-count").as_deref(), Some("2"));
    let v = expect(&ctl, &key, None, "GET", &format!("{ORGS}/a/users"), None, 200);
    let bob = v.as_array().unwrap().iter().find(|u| u["id"] == "bob").unwrap().clone();
    assert_eq!(bob["email"], "Bob@Example.com");
    assert_eq!(bob["roles"], json!(["member"]));

    // Delete with users left: 409, nothing written.
    let before = version(&ctl, &key);
    let v = expect(&ctl, &key, None, "DELETE", &format!("{ORGS}/engineering"), None, 409);
    assert_eq!(v["error"]["code"], "failed_precondition");
    assert!(v["error"]["message"].as_str().unwrap().contains("2 user"), "{v}");
    assert_eq!(version(&ctl, &key), before);
    let v = expect(
        &ctl,
        &key,
        None,
        "DELETE",
        &format!("{ORGS}/engineering/users/erin"),
        None,
        200,
    );
    assert_eq!(v["removed"], json!([{"role": "member", "resource": null}]));
    expect(
        &ctl,
        &key,
        None,
        "DELETE",
        &format!("{ORGS}/engineering/users/erin"),
        None,
        404,
    );
    expect(
        &ctl,
        &key,
        None,
        "DELETE",
        &format!("{ORGS}/engineering/users/frank"),
        None,
        200,
    );

    // Delete: the org and what is in it, in one batch; the org below loses its parent.
    batch(
        &ctl,
        &key,
        json!([
            up("resource_type", json!({"key": "doc", "actions": ["read"]})),
            up("role", json!({"key": "own", "org": "engineering"})),
            up("resource", json!({"type": "doc", "key": "d1", "org": "engineering"})),
            up(
                "role_assignment",
                json!({"user": "gina", "role": "own", "org": "engineering", "resource": "doc:d1"})
            ),
        ]),
    );
    let before = version(&ctl, &key);
    let (status, _, head) = req(&ctl, &key, None, "DELETE", &format!("{ORGS}/engineering"), None);
    assert_eq!(status, 204);
    assert_eq!(header(&head, "x-permd-version"), Some((before + 1).to_string()));
    let snap = ctl.snapshot(&key);
    let dump = snap.to_string();
    assert!(!dump.contains("\"engineering\""), "{dump}");
    assert!(
        snap["orgs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o == &json!({"key": "sub", "name": "Sub"}))
    );
    expect(&ctl, &key, None, "GET", &format!("{ORGS}/engineering"), None, 404);
    expect(&ctl, &key, None, "DELETE", &format!("{ORGS}/engineering"), None, 404);

    // The audit log: who, what, when, outcome, version.
    let rows = audit_rows(&pg);
    let want = [
        "-|organization.delete|{\"organization\":\"engineering\"}|conflict|-|true".to_string(),
        format!(
            "-|organization.user.remove|{{\"organization\":\"engineering\",\"user\":\"erin\"}}|deleted|{}|true",
            before - 2
        ),
        "-|organization.user.remove|{\"organization\":\"engineering\",\"user\":\"erin\"}|not_found|-|true".to_string(),
        format!(
            "-|organization.user.remove|{{\"organization\":\"engineering\",\"user\":\"frank\"}}|deleted|{}|true",
            before - 1
        ),
        format!(
            "-|organization.delete|{{\"organization\":\"engineering\"}}|deleted|{}|true",
            before + 1
        ),
        "-|organization.delete|{\"organization\":\"engineering\"}|not_found|-|true".to_string(),
    ];
    assert_eq!(rows, want);
    let key_id = pg.psql("SELECT DISTINCT key_id FROM org_audit");
    assert_eq!(key_id, pg.psql("SELECT min(id) FROM api_keys"));
    // And the structured log line.
    let logs = ctl.stderr();
    let line = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| {
            l["target"] == "permd::audit"
                && l["fields"]["outcome"] == "deleted"
                && l["fields"]["action"] == "organization.delete"
        })
        .unwrap_or_else(|| panic!("no audit line in {logs}"));
    assert_eq!(line["fields"]["key_id"].as_i64().unwrap().to_string(), key_id);
    assert!(line["fields"]["at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(line["fields"]["version"].as_u64(), Some(before + 1));
}

#[test]
fn organizations_isolation_rules() {
    let (pg, ctl, key) = setup();
    seed(&ctl, &key);
    let ids = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|o| o["id"].as_str().unwrap().to_string())
            .collect()
    };

    // An admin of `a` cannot view, change or list the users of `b` (it does not exist for them).
    let alice = Some("alice");
    assert_eq!(ids(&expect(&ctl, &key, alice, "GET", ORGS, None, 200)), ["a"]);
    expect(&ctl, &key, alice, "GET", &format!("{ORGS}/b"), None, 404);
    expect(
        &ctl,
        &key,
        alice,
        "PUT",
        &format!("{ORGS}/b"),
        Some(json!({"name": "mine"})),
        404,
    );
    expect(&ctl, &key, alice, "GET", &format!("{ORGS}/b/users"), None, 404);
    expect(&ctl, &key, alice, "POST", &format!("{ORGS}/b/users/alice"), None, 404);
    expect(&ctl, &key, alice, "DELETE", &format!("{ORGS}/b/users/dave"), None, 404);
    expect(&ctl, &key, alice, "DELETE", &format!("{ORGS}/b"), None, 404);
    // In its own org it may view, change, list and add users, not delete the org.
    expect(&ctl, &key, alice, "GET", &format!("{ORGS}/a"), None, 200);
    expect(
        &ctl,
        &key,
        alice,
        "PUT",
        &format!("{ORGS}/a"),
        Some(json!({"description": "ours"})),
        200,
    );
    expect(&ctl, &key, alice, "GET", &format!("{ORGS}/a/users"), None, 200);
    expect(&ctl, &key, alice, "POST", &format!("{ORGS}/a/users/hank"), None, 201);
    expect(&ctl, &key, alice, "DELETE", &format!("{ORGS}/a/users/hank"), None, 200);
    let v = expect(&ctl, &key, alice, "DELETE", &format!("{ORGS}/a"), None, 403);
    assert_eq!(v["error"]["code"], "permission_denied");
    // An admin may create a top-level org.
    expect(&ctl, &key, alice, "POST", ORGS, Some(json!({"name": "Alice's"})), 201);

    // A member sees only its org, and changes nothing.
    let bob = Some("bob");
    assert_eq!(ids(&expect(&ctl, &key, bob, "GET", ORGS, None, 200)), ["a"]);
    expect(&ctl, &key, bob, "GET", &format!("{ORGS}/a"), None, 200);
    let users = expect(&ctl, &key, bob, "GET", &format!("{ORGS}/a/users"), None, 200);
    assert_eq!(ids(&users), ["alice", "bob"]);
    expect(&ctl, &key, bob, "GET", &format!("{ORGS}/b"), None, 404);
    expect(&ctl, &key, bob, "GET", &format!("{ORGS}/b/users"), None, 404);
    expect(
        &ctl,
        &key,
        bob,
        "PUT",
        &format!("{ORGS}/a"),
        Some(json!({"name": "x"})),
        403,
    );
    expect(&ctl, &key, bob, "POST", &format!("{ORGS}/a/users/ivan"), None, 403);
    expect(&ctl, &key, bob, "DELETE", &format!("{ORGS}/a/users/alice"), None, 403);
    expect(&ctl, &key, bob, "POST", ORGS, Some(json!({"name": "Bob's"})), 403);
    // Someone without any role sees nothing.
    assert_eq!(
        ids(&expect(&ctl, &key, Some("stranger"), "GET", ORGS, None, 200)),
        Vec::<String>::new()
    );
    expect(&ctl, &key, Some("stranger"), "GET", &format!("{ORGS}/a"), None, 404);

    // An admin of an org administers the orgs below it (the engine's ancestor orgs).
    batch(
        &ctl,
        &key,
        json!([up(
            "role_assignment",
            json!({"user": "ruth", "role": "admin", "org": "root"})
        )]),
    );
    assert_eq!(
        ids(&expect(&ctl, &key, Some("ruth"), "GET", ORGS, None, 200)),
        ["root", "mid", "leaf"]
    );
    expect(
        &ctl,
        &key,
        Some("ruth"),
        "PUT",
        &format!("{ORGS}/leaf"),
        Some(json!({"name": "Leaf"})),
        200,
    );
    // Through `extends` too.
    batch(
        &ctl,
        &key,
        json!([
            up("role", json!({"key": "boss", "extends": ["admin"]})),
            up("role_assignment", json!({"user": "tom", "role": "boss", "org": "b"}))
        ]),
    );
    expect(
        &ctl,
        &key,
        Some("tom"),
        "PUT",
        &format!("{ORGS}/b"),
        Some(json!({"name": "B"})),
        200,
    );

    // Only a superuser removes a superuser's assignment.
    expect(
        &ctl,
        &key,
        Some("carol"),
        "DELETE",
        &format!("{ORGS}/b/users/su"),
        None,
        403,
    );

    // A superuser: everything, anywhere.
    let su = Some("su");
    assert_eq!(ids(&expect(&ctl, &key, su, "GET", ORGS, None, 200)).len(), 6);
    expect(&ctl, &key, su, "GET", &format!("{ORGS}/a/users"), None, 200);
    expect(
        &ctl,
        &key,
        su,
        "PUT",
        &format!("{ORGS}/a"),
        Some(json!({"name": "A"})),
        200,
    );
    expect(&ctl, &key, su, "DELETE", &format!("{ORGS}/a"), None, 409);
    for u in ["alice", "bob"] {
        expect(&ctl, &key, su, "DELETE", &format!("{ORGS}/a/users/{u}"), None, 200);
    }
    expect(&ctl, &key, su, "DELETE", &format!("{ORGS}/a"), None, 204);
    // An org-scoped role named `superuser` is not the global one.
    batch(
        &ctl,
        &key,
        json!([
            up("role", json!({"key": "superuser", "org": "mid"})),
            up(
                "role_assignment",
                json!({"user": "fake", "role": "superuser", "org": "mid"})
            )
        ]),
    );
    expect(&ctl, &key, Some("fake"), "GET", &format!("{ORGS}/b"), None, 404);

    // The audit rows name the actor.
    let rows = audit_rows(&pg);
    assert!(
        rows.contains(&"alice|organization.delete|{\"organization\":\"b\"}|not_found|-|true".to_string()),
        "{rows:?}"
    );
    assert!(
        rows.contains(&"alice|organization.delete|{\"organization\":\"a\"}|forbidden|-|true".to_string()),
        "{rows:?}"
    );
    assert!(
        rows.contains(
            &"carol|organization.user.remove|{\"organization\":\"b\",\"user\":\"su\"}|forbidden|-|true".to_string()
        ),
        "{rows:?}"
    );
    assert!(
        rows.iter()
            .any(|r| r.starts_with("su|organization.delete|{\"organization\":\"a\"}|deleted|")),
        "{rows:?}"
    );

    // A bad actor header is a clear 400.
    let too_long = "x".repeat(300);
    for bad in ["", too_long.as_str()] {
        let v = expect(&ctl, &key, Some(bad), "GET", ORGS, None, 400);
        names(&v, "X-Permd-Actor");
    }
}

#[test]
fn keys_of_other_projects_see_nothing() {
    let (pg, ctl, key) = setup();
    seed(&ctl, &key);
    expect(
        &ctl,
        &key,
        None,
        "POST",
        "/api/ous/a/permissions",
        Some(json!({"email": "p@example.com", "role": "admin"})),
        201,
    );
    let sibling = create_key(&pg, "acme", "other-app", "default");
    let stranger = create_key(&pg, "globex", "app", "default");
    for k in [&sibling, &stranger] {
        assert_eq!(expect(&ctl, k, None, "GET", ORGS, None, 200), json!([]));
        for path in [
            format!("{ORGS}/a"),
            format!("{ORGS}/a/users"),
            "/api/ous/a/ancestorPermissions".to_string(),
        ] {
            expect(&ctl, k, None, "GET", &path, None, 404);
        }
        expect(&ctl, k, None, "DELETE", &format!("{ORGS}/b"), None, 404);
        expect(
            &ctl,
            k,
            None,
            "POST",
            "/api/ous/a/permissions",
            Some(json!({"email": "q@example.com", "role": "admin"})),
            404,
        );
        // Naming an actor of the other project changes nothing.
        expect(&ctl, k, Some("su"), "GET", &format!("{ORGS}/a"), None, 404);
    }
    expect(&ctl, &stranger, None, "GET", &format!("{SVC}/acme"), None, 404);
    expect(&ctl, &sibling, None, "GET", &format!("{SVC}/acme"), None, 200);
    // The first project is as it was.
    expect(&ctl, &key, None, "GET", &format!("{ORGS}/b"), None, 200);
    // alice's `admin` and the new one.
    assert_eq!(
        expect(&ctl, &key, None, "GET", "/api/ous/a/ancestorPermissions", None, 200)
            .as_array()
            .unwrap()
            .len(),
        2
    );
    expect(&ctl, "pk_nothing", None, "GET", ORGS, None, 401);
}

#[test]
fn bad_input_stores_nothing() {
    let (pg, ctl, key) = setup();
    seed(&ctl, &key);
    let before = version(&ctl, &key);
    let changes = || pg.psql("SELECT count(*) FROM changes");
    let stored = changes();
    let long = "n".repeat(300);
    let cases: Vec<(&str, String, Value, &str)> = vec![
        ("POST", ORGS.to_string(), json!({}), "name"),
        ("POST", ORGS.to_string(), json!({"name": ""}), "name"),
        ("POST", ORGS.to_string(), json!({"name": "   "}), "name"),
        ("POST", ORGS.to_string(), json!({"name": 7}), "name"),
        ("POST", ORGS.to_string(), json!({"name": long}), "name"),
        ("POST", ORGS.to_string(), json!({"name": "a\u{0}b"}), "name"),
        ("POST", ORGS.to_string(), json!({"name": "a\u{7}b"}), "name"),
        (
            "POST",
            ORGS.to_string(),
            json!({"name": "x", "description": "\u{0}"}),
            "description",
        ),
        (
            "POST",
            ORGS.to_string(),
            json!({"name": "x", "description": "d".repeat(5000)}),
            "description",
        ),
        ("POST", ORGS.to_string(), json!({"name": "x", "id": ""}), "id"),
        ("POST", ORGS.to_string(), json!({"name": "x", "id": long}), "id"),
        ("POST", ORGS.to_string(), json!({"name": "x", "parent": ""}), "parent"),
        ("POST", ORGS.to_string(), json!({"name": "x", "owner": "me"}), "owner"),
        ("PUT", format!("{ORGS}/a"), json!({"name": ""}), "name"),
        (
            "PUT",
            format!("{ORGS}/a"),
            json!({"name": "x", "parent": "b"}),
            "parent",
        ),
        ("PUT", format!("{ORGS}/a"), json!({"description": 5}), "description"),
        (
            "POST",
            format!("{ORGS}/a/users/{}", "u".repeat(300)),
            Value::Null,
            "user_id",
        ),
        (
            "DELETE",
            format!("{ORGS}/a/users/{}", "u".repeat(300)),
            Value::Null,
            "user_id",
        ),
        (
            "POST",
            "/api/ous/a/permissions".to_string(),
            json!({"role": "admin"}),
            "email",
        ),
        (
            "POST",
            "/api/ous/a/permissions".to_string(),
            json!({"email": "x@y.z"}),
            "role",
        ),
        (
            "POST",
            "/api/ous/a/permissions".to_string(),
            json!({"email": "nope", "role": "admin"}),
            "email",
        ),
        (
            "POST",
            "/api/ous/a/permissions".to_string(),
            json!({"email": "x@y.z", "role": "ADMIN"}),
            "role",
        ),
        (
            "POST",
            "/api/ous/a/permissions".to_string(),
            json!({"email": "x@y.z", "role": "admin", "name": "x"}),
            "name",
        ),
        ("PUT", "/api/ous/a/permissions/abc".to_string(), json!({}), "role"),
        (
            "PUT",
            "/api/ous/a/permissions/abc".to_string(),
            json!({"role": ["admin"]}),
            "role",
        ),
        ("GET", format!("{ORGS}?limit=5000"), Value::Null, "limit"),
        ("GET", format!("{ORGS}?skip=-1"), Value::Null, "skip"),
        ("GET", format!("{ORGS}/a/users?limit=abc"), Value::Null, "limit"),
    ];
    for (method, path, body, field) in &cases {
        let body = (!body.is_null()).then_some(body);
        let (status, v, _) = req(&ctl, &key, None, method, path, body);
        assert_eq!(status, 400, "{method} {path} {body:?}: {v}");
        let m = v["error"]["message"].as_str().unwrap_or_default();
        assert!(
            m.contains(field),
            "{method} {path} {body:?}: the error should name `{field}`: {v}"
        );
    }
    // Bodies that are not JSON, and bad escapes in paths.
    for (method, path) in [
        ("POST", ORGS.to_string()),
        ("PUT", format!("{ORGS}/a")),
        ("POST", "/api/ous/a/permissions".to_string()),
    ] {
        let (status, _, _) = ctl.raw(
            method,
            &path,
            &[
                ("authorization", &format!("Bearer {key}")),
                ("content-type", "application/json"),
            ],
            b"{\"name\": ",
        );
        assert_eq!(status, 400, "{method} {path}");
    }
    let (status, _, _) = ctl.raw(
        "POST",
        ORGS,
        &[
            ("authorization", &format!("Bearer {key}")),
            ("content-type", "text/xml"),
        ],
        b"<x/>",
    );
    assert_eq!(status, 415);
    expect(&ctl, &key, None, "GET", &format!("{ORGS}/%ff"), None, 400);
    expect(&ctl, &key, None, "GET", &format!("{ORGS}/a/users/x/y"), None, 404);
    expect(&ctl, &key, None, "GET", "/api/v1/organizationsX", None, 404);
    assert_eq!(version(&ctl, &key), before);
    assert_eq!(changes(), stored);

    // SQL metacharacters are data: stored and read back exactly, the tables intact.
    let hostile = "x'); DELETE FROM orgs; --";
    let name = "Robert'); DROP TABLE orgs;-- \"%_\\";
    let v = expect(
        &ctl,
        &key,
        None,
        "POST",
        ORGS,
        Some(json!({"name": name, "id": hostile, "description": "' OR 1=1 --"})),
        201,
    );
    assert_eq!(v["id"], hostile);
    let v = expect(&ctl, &key, None, "GET", &format!("{ORGS}/{}", enc(hostile)), None, 200);
    assert_eq!(v["name"], name);
    assert_eq!(v["description"], "' OR 1=1 --");
    let v = expect(&ctl, &key, None, "POST", ORGS, Some(json!({"name": name})), 201);
    assert_eq!(v["id"], "robert-drop-table-orgs");
    expect(
        &ctl,
        &key,
        None,
        "POST",
        &format!("{ORGS}/{}/users/{}", enc(hostile), enc("u' OR '1'='1")),
        None,
        201,
    );
    let users = expect(
        &ctl,
        &key,
        None,
        "GET",
        &format!("{ORGS}/{}/users", enc(hostile)),
        None,
        200,
    );
    assert_eq!(users[0]["id"], "u' OR '1'='1");
    expect(
        &ctl,
        &key,
        None,
        "POST",
        &format!("/api/ous/{}/permissions", enc(hostile)),
        Some(json!({"email": "o'hara+%_@example.com", "role": "admin"})),
        201,
    );
    assert_eq!(pg.psql("SELECT count(*) FROM orgs"), "7");
    assert_eq!(ctl.snapshot(&key)["orgs"].as_array().unwrap().len(), 7);
}
