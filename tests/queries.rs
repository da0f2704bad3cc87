//! The queries of the real binary on 127.0.0.1:0: every perm/v1 read RPC through tonic
//! clients (answers, paging metadata, INVALID_ARGUMENT / NOT_FOUND / UNAVAILABLE /
//! UNIMPLEMENTED), their HTTP JSON routes, Permit's `/user-permissions`, `/authorized_users`
//! and `/local/role_assignments`, AuthZEN search; and, on generated snapshots, gRPC and HTTP
//! listings held equal to the index (which tests/model_prop.rs holds to brute force).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Permd, example};
use permd::api::grpc::perm::*;
use permd::api::grpc::perm::{
    group_service_client::GroupServiceClient, menu_service_client::MenuServiceClient,
    org_service_client::OrgServiceClient, perm_service_client::PermServiceClient,
    role_service_client::RoleServiceClient,
};
use permd::index::{Index, Subject};
use permd::model::generate::{Params, generate};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use tonic::transport::Channel;
use tonic::{Code, Request};

async fn channel(p: &Permd) -> Channel {
    Channel::from_shared(format!("http://{}", p.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn list_res(org: &str, user: &str, role: &str, t: &str, act: &str) -> PermServiceListResourcesRequest {
    PermServiceListResourcesRequest {
        org_id: org.into(),
        user_id: user.into(),
        role_id: role.into(),
        res_type: t.into(),
        act: act.into(),
    }
}

fn with_md<T>(msg: T, md: &[(&'static str, &str)]) -> Request<T> {
    let mut r = Request::new(msg);
    for (k, v) in md {
        r.metadata_mut().insert(*k, v.parse().unwrap());
    }
    r
}

fn bad(e: tonic::Status, code: Code, needle: &str) {
    assert!(
        e.code() == code && e.message().contains(needle),
        "{code:?} {needle}: {e:?}"
    );
}

fn ids(rs: &[permd::api::grpc::perm::Resource]) -> Vec<(String, Vec<String>)> {
    rs.iter().map(|r| (r.res_id.clone(), r.acts.clone())).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_read_rpcs_on_the_example() {
    let p = Permd::start(Some(&example()), &[]);
    p.ready();
    let ch = channel(&p).await;
    let mut perm = PermServiceClient::new(ch.clone());

    // ListResources: org-wide (with the child org), instance role, grant, role subject.
    let r = perm
        .list_resources(list_res("", "alice", "", "document", "read"))
        .await
        .unwrap();
    assert_eq!(r.metadata().get("x-permd-version").unwrap(), "42");
    let got = ids(&r.into_inner().resources);
    let rw = vec!["read".to_string(), "write".to_string()];
    assert_eq!(
        got,
        vec![
            ("photo".into(), rw.clone()),
            ("plan".into(), rw.clone()),
            ("notes".into(), rw.clone())
        ]
    );
    let got = ids(&perm
        .list_resources(list_res("acme", "alice", "", "document", "read"))
        .await
        .unwrap()
        .into_inner()
        .resources);
    assert_eq!(got, vec![("photo".into(), rw.clone()), ("notes".into(), rw)]);
    let got = ids(&perm
        .list_resources(list_res("", "bob", "", "document", "read"))
        .await
        .unwrap()
        .into_inner()
        .resources);
    assert_eq!(got, vec![("photo".into(), vec!["read".to_string()])]);
    let got = ids(&perm
        .list_resources(list_res("acme", "", "guard", "camera", "play"))
        .await
        .unwrap()
        .into_inner()
        .resources);
    assert_eq!(got, vec![("cam1".into(), vec!["play".to_string()])]);
    // Nothing allowed is an empty answer, not an error.
    let r = perm
        .list_resources(list_res("globex", "bob", "", "document", "delete"))
        .await
        .unwrap()
        .into_inner();
    assert!(r.resources.is_empty());
    // Paging through metadata.
    let first = perm
        .list_resources(with_md(
            list_res("", "alice", "", "document", "read"),
            &[("x-permd-limit", "1")],
        ))
        .await
        .unwrap();
    let cursor = first
        .metadata()
        .get("x-permd-next-cursor")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(first.into_inner().resources.len(), 1);
    let second = perm
        .list_resources(with_md(
            list_res("", "alice", "", "document", "read"),
            &[("x-permd-limit", "2"), ("x-permd-cursor", &cursor)],
        ))
        .await
        .unwrap();
    assert!(second.metadata().get("x-permd-next-cursor").is_none());
    let rest: Vec<String> = second.into_inner().resources.into_iter().map(|r| r.res_id).collect();
    assert_eq!(rest, ["plan", "notes"]);
    // Bad requests name the field.
    bad(
        perm.list_resources(list_res("acme", "", "", "document", "read"))
            .await
            .unwrap_err(),
        Code::InvalidArgument,
        "user_id",
    );
    bad(
        perm.list_resources(list_res("acme", "a", "", "", "read"))
            .await
            .unwrap_err(),
        Code::InvalidArgument,
        "res_type",
    );
    bad(
        perm.list_resources(list_res("acme", "a", "", "document", ""))
            .await
            .unwrap_err(),
        Code::InvalidArgument,
        "act",
    );
    bad(
        perm.list_resources(with_md(
            list_res("acme", "a", "", "document", "read"),
            &[("x-permd-cursor", "garbage")],
        ))
        .await
        .unwrap_err(),
        Code::InvalidArgument,
        "x-permd-cursor",
    );
    bad(
        perm.list_resources(with_md(
            list_res("acme", "a", "", "document", "read"),
            &[("x-permd-limit", "0")],
        ))
        .await
        .unwrap_err(),
        Code::InvalidArgument,
        "x-permd-limit",
    );

    // Menus: the subject's (editor holds `docs`), and the whole tree.
    let m = perm
        .list_menus(PermServiceListMenusRequest {
            org_id: "acme".into(),
            user_id: "alice".into(),
            role_id: String::new(),
            platform: "web".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(m.items.len(), 1);
    assert_eq!(
        (m.items[0].code.as_str(), m.items[0].name.as_str()),
        ("docs", "Documents")
    );
    assert!(m.items[0].children.is_empty());
    let m = perm
        .list_menus(PermServiceListMenusRequest {
            org_id: "acme".into(),
            user_id: "bob".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(m.items.is_empty());
    bad(
        perm.list_menus(PermServiceListMenusRequest::default())
            .await
            .unwrap_err(),
        Code::InvalidArgument,
        "user_id",
    );
    let all = MenuServiceClient::new(ch.clone())
        .list_menus(ListMenusRequest { platform: "web".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.items.len(), 1);
    assert_eq!(all.items[0].children[0].code, "docs-archive");
    assert_eq!(all.items[0].r#type, "web");

    // Groups: carol may play cameras under site hq, not under folder shared.
    let g = perm
        .list_groups(PermServiceListGroupsRequest {
            org_id: "acme".into(),
            user_id: "carol".into(),
            role_id: String::new(),
            res_type: "camera".into(),
            act: "play".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(g.groups.len(), 1);
    let hq = &g.groups[0];
    assert_eq!(
        (hq.group_type.as_str(), hq.group_id.as_str(), hq.res_type.as_str()),
        ("site", "hq", "camera")
    );
    assert_eq!(
        (hq.resources.clone(), hq.acts.clone()),
        (vec!["cam1".to_string()], vec!["play".to_string()])
    );
    bad(
        perm.list_groups(PermServiceListGroupsRequest {
            user_id: "carol".into(),
            res_type: "camera".into(),
            ..Default::default()
        })
        .await
        .unwrap_err(),
        Code::InvalidArgument,
        "act",
    );
    let tree = GroupServiceClient::new(ch.clone())
        .list_groups(ListGroupsRequest {
            org_id: "acme".into(),
            res_type: "document".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let nodes: Vec<(String, Vec<String>)> = tree
        .groups
        .iter()
        .map(|g| (format!("{}:{}", g.group_type, g.group_id), g.resources.clone()))
        .collect();
    assert_eq!(
        nodes,
        vec![
            ("folder:shared".into(), vec!["photo".to_string()]),
            ("site:hq".into(), vec![])
        ]
    );
    bad(
        GroupServiceClient::new(ch.clone())
            .list_groups(ListGroupsRequest {
                org_id: String::new(),
                res_type: "document".into(),
            })
            .await
            .unwrap_err(),
        Code::InvalidArgument,
        "org_id",
    );

    // Roles.
    let mut roles = RoleServiceClient::new(ch.clone());
    let r = roles
        .get_role(GetRoleRequest { id: 3 })
        .await
        .unwrap()
        .into_inner()
        .role
        .unwrap();
    assert_eq!((r.id, r.name.as_str(), r.org_id.as_str()), (3, "guard", "acme"));
    bad(
        roles.get_role(GetRoleRequest { id: 99 }).await.unwrap_err(),
        Code::NotFound,
        "99",
    );
    bad(
        roles.get_role(GetRoleRequest { id: 0 }).await.unwrap_err(),
        Code::InvalidArgument,
        "id",
    );
    let names = |rs: Vec<Role>| rs.into_iter().map(|r| r.name).collect::<Vec<_>>();
    let all = roles
        .list_roles(ListRolesRequest { org_id: "acme".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(names(all.roles), ["viewer", "editor", "guard", "superuser"]);
    let gl = roles
        .list_roles(ListRolesRequest {
            org_id: "globex".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(names(gl.roles), ["viewer", "editor", "superuser"]);
    let page = roles
        .list_roles(with_md(
            ListRolesRequest { org_id: "acme".into() },
            &[("x-permd-limit", "3")],
        ))
        .await
        .unwrap();
    let c = page
        .metadata()
        .get("x-permd-next-cursor")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(page.into_inner().roles.len(), 3);
    let rest = roles
        .list_roles(with_md(
            ListRolesRequest { org_id: "acme".into() },
            &[("x-permd-limit", "3"), ("x-permd-cursor", &c)],
        ))
        .await
        .unwrap();
    assert!(rest.metadata().get("x-permd-next-cursor").is_none());
    assert_eq!(names(rest.into_inner().roles), ["superuser"]);

    let for_user = |org: &str, user: &str| GetRolesForUserRequest {
        org_id: org.into(),
        user_id: user.into(),
    };
    let r = roles
        .get_roles_for_user(for_user("acme", "alice"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.roles, ["editor"]);
    let r = roles
        .get_roles_for_user(for_user("acme-eu", "alice"))
        .await
        .unwrap()
        .into_inner();
    assert!(r.roles.is_empty());
    let r = roles
        .get_roles_for_user(with_md(for_user("acme-eu", "alice"), &[("x-permd-effective", "true")]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.roles, ["editor", "viewer"]);
    bad(
        roles.get_roles_for_user(for_user("acme", "")).await.unwrap_err(),
        Code::InvalidArgument,
        "user_id",
    );
    bad(
        roles.get_roles_for_user(for_user("", "alice")).await.unwrap_err(),
        Code::InvalidArgument,
        "org_id",
    );
    bad(
        roles
            .get_roles_for_user(with_md(for_user("acme", "alice"), &[("x-permd-effective", "maybe")]))
            .await
            .unwrap_err(),
        Code::InvalidArgument,
        "x-permd-effective",
    );
    let for_role = |org: &str, role: &str| GetUsersForRoleRequest {
        org_id: org.into(),
        role_id: role.into(),
    };
    let u = roles
        .get_users_for_role(for_role("acme", "editor"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(u.users, ["alice"]);
    let u = roles
        .get_users_for_role(for_role("acme", "viewer"))
        .await
        .unwrap()
        .into_inner();
    assert!(u.users.is_empty());
    let u = roles
        .get_users_for_role(with_md(for_role("acme-eu", "viewer"), &[("x-permd-effective", "true")]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(u.users, ["alice"]);
    let u = roles
        .get_users_for_role(for_role("acme", ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        u.users.iter().collect::<BTreeSet<_>>(),
        BTreeSet::from([&"alice".to_string(), &"carol".to_string()])
    );
    bad(
        roles.get_users_for_role(for_role("acme", "nope")).await.unwrap_err(),
        Code::NotFound,
        "nope",
    );
    bad(
        roles.get_users_for_role(for_role("globex", "guard")).await.unwrap_err(),
        Code::NotFound,
        "guard",
    );
    bad(
        roles.get_users_for_role(for_role("", "editor")).await.unwrap_err(),
        Code::InvalidArgument,
        "org_id",
    );

    // Orgs.
    let o = OrgServiceClient::new(ch.clone())
        .list_org(ListOrgRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(o.orgs, ["default", "acme", "acme-eu", "globex"]);

    // Every mutating RPC: UNIMPLEMENTED, saying where writes go.
    let mut errs = vec![
        roles.create_role(CreateRoleRequest::default()).await.unwrap_err(),
        roles.delete_role(DeleteRoleRequest::default()).await.unwrap_err(),
        roles.update_role(UpdateRoleRequest::default()).await.unwrap_err(),
        roles
            .add_role_for_user(AddRoleForUserRequest::default())
            .await
            .unwrap_err(),
        roles
            .del_role_for_user(DelRoleForUserRequest::default())
            .await
            .unwrap_err(),
        perm.save_role_perm(PermServiceSaveRolePermRequest::default())
            .await
            .unwrap_err(),
    ];
    let mut groups = GroupServiceClient::new(ch.clone());
    errs.push(groups.create_group(CreateGroupRequest::default()).await.unwrap_err());
    errs.push(groups.delete_group(DeleteGroupRequest::default()).await.unwrap_err());
    errs.push(groups.move_group(MoveGroupRequest::default()).await.unwrap_err());
    errs.push(
        groups
            .add_res_for_group(AddResForGroupRequest::default())
            .await
            .unwrap_err(),
    );
    errs.push(
        groups
            .del_res_for_group(DelResForGroupRequest::default())
            .await
            .unwrap_err(),
    );
    let mut orgs = OrgServiceClient::new(ch);
    errs.push(orgs.create_org(CreateOrgRequest::default()).await.unwrap_err());
    errs.push(orgs.delete_org(DeleteOrgRequest::default()).await.unwrap_err());
    errs.push(orgs.transfer_org(TransferOrgRequest::default()).await.unwrap_err());
    for e in errs {
        bad(e, Code::Unimplemented, "control plane");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_reads_are_unavailable_before_the_first_snapshot() {
    let p = Permd::start(None, &[]);
    let ch = channel(&p).await;
    let mut perm = PermServiceClient::new(ch.clone());
    let mut roles = RoleServiceClient::new(ch.clone());
    let errs = vec![
        perm.list_resources(list_res("acme", "alice", "", "document", "read"))
            .await
            .unwrap_err(),
        perm.list_menus(PermServiceListMenusRequest {
            user_id: "alice".into(),
            ..Default::default()
        })
        .await
        .unwrap_err(),
        perm.list_groups(PermServiceListGroupsRequest {
            user_id: "alice".into(),
            res_type: "camera".into(),
            act: "play".into(),
            ..Default::default()
        })
        .await
        .unwrap_err(),
        roles.get_role(GetRoleRequest { id: 1 }).await.unwrap_err(),
        roles.list_roles(ListRolesRequest::default()).await.unwrap_err(),
        roles
            .get_roles_for_user(GetRolesForUserRequest {
                org_id: "acme".into(),
                user_id: "alice".into(),
            })
            .await
            .unwrap_err(),
        roles
            .get_users_for_role(GetUsersForRoleRequest {
                org_id: "acme".into(),
                role_id: "editor".into(),
            })
            .await
            .unwrap_err(),
        GroupServiceClient::new(ch.clone())
            .list_groups(ListGroupsRequest {
                org_id: "acme".into(),
                res_type: "document".into(),
            })
            .await
            .unwrap_err(),
        MenuServiceClient::new(ch.clone())
            .list_menus(ListMenusRequest::default())
            .await
            .unwrap_err(),
        OrgServiceClient::new(ch).list_org(ListOrgRequest {}).await.unwrap_err(),
    ];
    for e in errs {
        assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    }
    let (status, body) = p.post("/v1/orgs", json!({}));
    assert_eq!((status, body["error"]["code"].as_str()), (503, Some("unavailable")));
}

#[test]
fn http_query_routes_on_the_example() {
    let p = Permd::start(Some(&example()), &[]);
    p.ready();
    // perm/v1 JSON routes.
    let (s, b) = p.post(
        "/v1/resources",
        json!({"user_id": "alice", "res_type": "document", "act": "read"}),
    );
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["version"], 42);
    assert_eq!(b["resources"][0], json!({"res_id": "photo", "acts": ["read", "write"]}));
    let (_, b) = p.post(
        "/v1/resources",
        json!({"user_id": "alice", "res_type": "document", "act": "read", "limit": 1}),
    );
    assert_eq!(b["resources"].as_array().unwrap().len(), 1);
    let cursor = b["next_cursor"].as_str().unwrap().to_string();
    let (_, b) = p.post(
        "/v1/resources",
        json!({"user_id": "alice", "res_type": "document", "act": "read", "limit": 1, "cursor": cursor}),
    );
    assert_eq!(b["resources"], json!([{"res_id": "plan", "acts": ["read", "write"]}]));
    let cursor = b["next_cursor"].as_str().unwrap().to_string();
    let (_, b) = p.post(
        "/v1/resources",
        json!({"user_id": "alice", "res_type": "document", "act": "read", "limit": 1, "cursor": cursor}),
    );
    assert_eq!(b["resources"], json!([{"res_id": "notes", "acts": ["read", "write"]}]));
    assert!(b.get("next_cursor").is_none());
    let (s, b) = p.post("/v1/resources", json!({"res_type": "document", "act": "read"}));
    assert_eq!((s, b["error"]["code"].as_str()), (400, Some("invalid_argument")));
    assert!(b["error"]["message"].as_str().unwrap().contains("user_id"));
    let (s, b) = p.post(
        "/v1/resources",
        json!({"user_id": "a", "res_type": "document", "act": "read", "limit": 0}),
    );
    assert!(
        s == 400 && b["error"]["message"].as_str().unwrap().contains("limit"),
        "{b}"
    );
    let (_, b) = p.post(
        "/v1/menus",
        json!({"org_id": "acme", "user_id": "alice", "platform": "web"}),
    );
    assert_eq!(
        b["items"],
        json!([{"code": "docs", "type": "web", "name": "Documents", "children": []}])
    );
    let (_, b) = p.post(
        "/v1/groups",
        json!({"org_id": "acme", "role_id": "guard", "res_type": "camera", "act": "play"}),
    );
    assert_eq!(b["groups"][0]["group_id"], "hq");
    let (_, b) = p.post("/v1/role", json!({"id": 1}));
    assert_eq!(b["role"]["name"], "viewer");
    let (s, b) = p.post("/v1/role", json!({"id": 42}));
    assert_eq!((s, b["error"]["code"].as_str()), (404, Some("not_found")));
    let (_, b) = p.post("/v1/roles", json!({"org_id": "globex"}));
    assert_eq!(b["roles"].as_array().unwrap().len(), 3);
    let (_, b) = p.post(
        "/v1/user-roles",
        json!({"org_id": "acme-eu", "user_id": "alice", "effective": true}),
    );
    assert_eq!(b["roles"], json!(["editor", "viewer"]));
    let (_, b) = p.post("/v1/role-users", json!({"org_id": "acme", "role_id": "guard"}));
    assert_eq!(b["users"], json!(["carol"]));
    let (s, _) = p.post("/v1/role-users", json!({"org_id": "acme", "role_id": "nope"}));
    assert_eq!(s, 404);
    let (_, b) = p.post("/v1/group-tree", json!({"org_id": "acme", "res_type": "camera"}));
    assert_eq!(b["groups"][1]["resources"], json!(["cam1"]));
    let (_, b) = p.post("/v1/menu-tree", json!({}));
    assert_eq!(b["items"][0]["children"][0]["code"], "docs-archive");
    let (_, b) = p.request("POST", "/v1/orgs", &[], b"");
    assert_eq!(b["orgs"], json!(["default", "acme", "acme-eu", "globex"]));
    let (s, _) = p.get("/v1/orgs");
    assert_eq!(s, 405);

    // Permit: authorized users with the assignment that allows each.
    let (s, b) = p.post(
        "/authorized_users",
        json!({"action": "read", "resource": "document:photo", "context": {}}),
    );
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["resource"], "document:photo");
    assert_eq!(b["tenant"], "acme");
    assert_eq!(
        b["users"],
        json!({
            "alice": [{"user": "alice", "tenant": "acme", "resource": "__tenant:acme", "role": "editor"}],
            "bob": [{"user": "bob", "tenant": "acme", "resource": "folder:shared", "role": "viewer"}],
        })
    );
    let (_, b) = p.post(
        "/authorized_users",
        json!({"action": "play", "resource": {"type": "camera", "key": "cam1"}}),
    );
    assert_eq!(b["users"]["carol"][0]["resource"], "site:hq");
    let (s, b) = p.post("/authorized_users", json!({"resource": "document:photo"}));
    assert!(s == 400 && b["error"]["message"].as_str().unwrap().contains("action"));

    // Permit: user permissions, per tenant and per instance.
    let (_, b) = p.post("/user-permissions", json!({"user": {"key": "alice"}}));
    let want = json!(["document:read", "document:write", "folder:read"]);
    assert_eq!(b["__tenant:acme"]["permissions"], want);
    assert_eq!(b["__tenant:acme-eu"]["permissions"], want);
    assert_eq!(b["__tenant:acme"]["roles"], json!(["editor"]));
    assert_eq!(b.as_object().unwrap().len(), 2, "{b}");
    let (_, b) = p.post("/user-permissions", json!({"user": "bob"}));
    assert_eq!(b["folder:shared"]["permissions"], json!(["folder:read"]));
    assert_eq!(b["document:photo"]["permissions"], json!(["document:read"]));
    assert_eq!(b["document:photo"]["roles"], json!(["viewer"]));
    assert_eq!(b["document:photo"]["tenant"]["key"], "acme");
    let (_, b) = p.post(
        "/user-permissions",
        json!({"user": "bob", "resource_types": ["folder"]}),
    );
    assert_eq!(b.as_object().unwrap().keys().collect::<Vec<_>>(), ["folder:shared"]);
    let (s, b) = p.post("/user-permissions", json!({"user": "bob", "resources": ["shared"]}));
    assert!(
        s == 400 && b["error"]["message"].as_str().unwrap().contains("resources[0]"),
        "{b}"
    );

    // Permit: role assignments with repeatable filters and pages.
    let (_, b) = p.get("/local/role_assignments?user=alice");
    assert_eq!(b, json!([{"user": "alice", "role": "editor", "tenant": "acme"}]));
    let (_, b) = p.get("/local/role_assignments?user=bob&user=carol");
    assert_eq!(b.as_array().unwrap().len(), 2);
    assert_eq!(b[0]["resource_instance"], "folder:shared");
    let mut seen = Vec::new();
    for page in 1..=4 {
        let (_, b) = p.get(&format!("/local/role_assignments?tenant=acme&per_page=1&page={page}"));
        seen.extend(
            b.as_array()
                .unwrap()
                .iter()
                .map(|r| r["user"].as_str().unwrap().to_string()),
        );
    }
    assert_eq!(seen, ["alice", "bob", "carol"]);
    let (_, b) = p.get("/local/role_assignments?resource=folder");
    assert_eq!(b.as_array().unwrap().len(), 1);
    let (s, b) = p.get("/local/role_assignments?per_page=101");
    assert!(s == 400 && b["error"]["message"].as_str().unwrap().contains("per_page"));
    let (s, b) = p.get("/local/role_assignments?colour=red");
    assert!(s == 400 && b["error"]["message"].as_str().unwrap().contains("colour"));

    // AuthZEN search.
    let (_, b) = p.post(
        "/access/v1/search/resource",
        json!({"subject": {"type": "user", "id": "bob"}, "action": {"name": "read"}, "resource": {"type": "document"}}),
    );
    assert_eq!(b["results"], json!([{"type": "document", "id": "photo"}]));
    assert_eq!(b["page"]["next_token"], "");
    let (_, b) = p.post(
        "/access/v1/search/subject",
        json!({"subject": {"type": "user"}, "action": {"name": "play"}, "resource": {"type": "camera", "id": "cam1"}}),
    );
    assert_eq!(b["results"], json!([{"type": "user", "id": "carol"}]));
    let (_, b) = p.post(
        "/access/v1/search/action",
        json!({"subject": {"type": "user", "id": "alice"}, "resource": {"type": "document", "id": "photo"}}),
    );
    assert_eq!(b["results"], json!([{"name": "read"}, {"name": "write"}]));
    let (_, b) = p.post(
        "/access/v1/search/action",
        json!({"subject": {"type": "user", "id": "alice"}, "resource": {"type": "document", "id": "photo"}, "page": {"limit": 1}}),
    );
    assert_eq!(b["results"], json!([{"name": "read"}]));
    let token = b["page"]["next_token"].as_str().unwrap().to_string();
    let (_, b) = p.post(
        "/access/v1/search/action",
        json!({"subject": {"type": "user", "id": "alice"}, "resource": {"type": "document", "id": "photo"}, "page": {"limit": 1, "token": token}}),
    );
    assert_eq!(
        (b["results"].clone(), b["page"]["next_token"].clone()),
        (json!([{"name": "write"}]), json!(""))
    );
    let (s, b) = p.post(
        "/access/v1/search/resource",
        json!({"subject": {"type": "user", "id": "bob"}, "resource": {"type": "document"}}),
    );
    assert!(
        s == 400 && b["error"]["message"].as_str().unwrap().contains("action"),
        "{b}"
    );
}

/// Pages a gRPC ListResources to the end through `x-permd-cursor`.
async fn grpc_all_resources(
    perm: &mut PermServiceClient<Channel>,
    req: PermServiceListResourcesRequest,
) -> Vec<String> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut md = vec![("x-permd-limit", "40")];
        if let Some(c) = &cursor {
            md.push(("x-permd-cursor", c.as_str()));
        }
        let resp = perm.list_resources(with_md(req.clone(), &md)).await.unwrap();
        let next = resp
            .metadata()
            .get("x-permd-next-cursor")
            .map(|v| v.to_str().unwrap().to_string());
        out.extend(resp.into_inner().resources.into_iter().map(|r| r.res_id));
        match next {
            Some(c) => cursor = Some(c),
            None => return out,
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn wire_listings_equal_the_index_on_generated_snapshots() {
    for seed in [3, 11] {
        let params = Params {
            users: 150,
            assignments: 1500,
            resources: 400,
            orgs: 6,
            depth: 4,
            grants: 40,
            seed,
            shape: Default::default(),
        };
        let snapshot = generate(&params);
        let ix = Index::build(&snapshot);
        let yaml = String::from_utf8(snapshot.encode(permd::model::Encoding::Yaml).unwrap()).unwrap();
        let p = Permd::start(Some(&yaml), &[]);
        p.ready();
        let mut perm = PermServiceClient::new(channel(&p).await);
        let users: Vec<String> = snapshot
            .role_assignments
            .iter()
            .map(|a| a.user.clone())
            .take(40)
            .collect();
        let orgs: Vec<String> = snapshot.orgs.iter().map(|o| o.key.clone()).collect();
        // Paging is exercised only if some listings span several pages.
        let (mut longest_list, mut most_users) = (0, 0);
        for (i, u) in users.iter().enumerate() {
            let org = if i % 2 == 0 {
                String::new()
            } else {
                orgs[i % orgs.len()].clone()
            };
            let action = ["read", "write", "delete"][i % 3];
            let want: Vec<String> = ix
                .list_resources(
                    Subject::User(u),
                    "document",
                    action,
                    Some(&org).filter(|o| !o.is_empty()).map(|o| o.as_str()),
                )
                .iter()
                .map(|id| ix.instance_names(id).unwrap().1.to_string())
                .collect();
            let got = grpc_all_resources(&mut perm, list_res(&org, u, "", "document", action)).await;
            assert_eq!(got, want, "ListResources {u} {action} {org:?}");
            longest_list = longest_list.max(want.len());
            // The same listing over HTTP, paged with its cursor.
            let mut http = Vec::new();
            let mut cursor = Value::Null;
            loop {
                let (s, b) = p.post(
                    "/v1/resources",
                    json!({"org_id": org, "user_id": u, "res_type": "document", "act": action, "limit": 30, "cursor": cursor}),
                );
                assert_eq!(s, 200, "{b}");
                http.extend(
                    b["resources"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|r| r["res_id"].as_str().unwrap().to_string()),
                );
                match b.get("next_cursor") {
                    Some(c) => cursor = c.clone(),
                    None => break,
                }
            }
            assert_eq!(http, want);
        }
        // Authorized users of documents, through AuthZEN subject search paged to the end.
        for r in snapshot
            .resources
            .iter()
            .filter(|r| r.resource_type == "document")
            .take(25)
        {
            let want: Vec<String> = ix
                .authorized_users("read", "document", Some(&r.key), None)
                .iter()
                .map(|u| ix.user_key(u).to_string())
                .collect();
            let mut got = Vec::new();
            let mut token = String::new();
            loop {
                let (s, b) = p.post(
                    "/access/v1/search/subject",
                    json!({"subject": {"type": "user"}, "action": {"name": "read"},
                           "resource": {"type": "document", "id": r.key}, "page": {"limit": 25, "token": token}}),
                );
                assert_eq!(s, 200, "{b}");
                got.extend(
                    b["results"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|x| x["id"].as_str().unwrap().to_string()),
                );
                token = b["page"]["next_token"].as_str().unwrap().to_string();
                if token.is_empty() {
                    break;
                }
            }
            assert_eq!(got, want, "authorized users of document:{}", r.key);
            most_users = most_users.max(want.len());
        }
        assert!(longest_list > 40 && most_users > 25, "{longest_list} {most_users}");
    }
}
