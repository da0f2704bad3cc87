//! perm/v1 on the control plane, against a real PostgreSQL: each row of control.md's mapping
//! table writes exactly the ops it names (the project's snapshot before and after), a follower
//! sidecar answers Enforce / ListResources / GetRolesForUser / GetRole accordingly at the
//! returned version, the status codes the seed's clients expect, bad input on every write RPC
//! (INVALID_ARGUMENT naming the field, nothing stored), the JSON face equal to the gRPC face,
//! and projects that never see each other.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::Permd;
use common::control::{Control, create_key};
use common::pg::Postgres;
use permd::api::grpc::perm;
use permd::api::grpc::perm::group_service_client::GroupServiceClient;
use permd::api::grpc::perm::menu_service_client::MenuServiceClient;
use permd::api::grpc::perm::org_service_client::OrgServiceClient;
use permd::api::grpc::perm::perm_service_client::PermServiceClient;
use permd::api::grpc::perm::role_service_client::RoleServiceClient;
use permd::model::{Snapshot, ops_from_json};
use serde_json::{Value, json};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

/// A gRPC channel and the key every call carries, plus metadata of its own.
struct Api {
    ch: Channel,
    key: String,
    meta: Vec<(&'static str, String)>,
}

impl Api {
    async fn new(addr: &str, key: &str) -> Api {
        let ch = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        Api {
            ch,
            key: key.to_string(),
            meta: Vec::new(),
        }
    }

    fn with(&self, key: &str, meta: &[(&'static str, String)]) -> Api {
        Api {
            ch: self.ch.clone(),
            key: key.to_string(),
            meta: meta.to_vec(),
        }
    }

    fn req<T>(&self, m: T) -> Request<T> {
        let mut r = Request::new(m);
        if !self.key.is_empty() {
            r.metadata_mut()
                .insert("authorization", format!("Bearer {}", self.key).parse().unwrap());
        }
        for (k, v) in &self.meta {
            r.metadata_mut().insert(*k, v.parse().unwrap());
        }
        r
    }
}

fn version<T>(r: &tonic::Response<T>) -> u64 {
    r.metadata()
        .get("x-permd-version")
        .expect("x-permd-version")
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// Calls the RPC of `path` over gRPC with the message `body` (JSON, proto field names):
/// the answer as JSON and its `x-permd-version`.
async fn grpc(api: &Api, path: &str, body: Value) -> Result<(Value, u64), Status> {
    macro_rules! dispatch {
        ($($p:literal => $client:ident . $m:ident ($req:ty)),* $(,)?) => {
            match path {
                $($p => {
                    let msg: $req = serde_json::from_value(body).unwrap();
                    let mut c = $client::new(api.ch.clone());
                    c.$m(api.req(msg)).await.map(|r| {
                        let v = version(&r);
                        (serde_json::to_value(r.into_inner()).unwrap(), v)
                    })
                })*
                other => panic!("no rpc {other}"),
            }
        };
    }
    dispatch!(
        "/perm.v1.PermService/Enforce" => PermServiceClient.enforce(perm::EnforceRequest),
        "/perm.v1.PermService/ListResources" => PermServiceClient.list_resources(perm::PermServiceListResourcesRequest),
        "/perm.v1.PermService/ListMenus" => PermServiceClient.list_menus(perm::PermServiceListMenusRequest),
        "/perm.v1.PermService/ListGroups" => PermServiceClient.list_groups(perm::PermServiceListGroupsRequest),
        "/perm.v1.PermService/SaveRolePerm" => PermServiceClient.save_role_perm(perm::PermServiceSaveRolePermRequest),
        "/perm.v1.RoleService/CreateRole" => RoleServiceClient.create_role(perm::CreateRoleRequest),
        "/perm.v1.RoleService/DeleteRole" => RoleServiceClient.delete_role(perm::DeleteRoleRequest),
        "/perm.v1.RoleService/UpdateRole" => RoleServiceClient.update_role(perm::UpdateRoleRequest),
        "/perm.v1.RoleService/GetRole" => RoleServiceClient.get_role(perm::GetRoleRequest),
        "/perm.v1.RoleService/ListRoles" => RoleServiceClient.list_roles(perm::ListRolesRequest),
        "/perm.v1.RoleService/AddRoleForUser" => RoleServiceClient.add_role_for_user(perm::AddRoleForUserRequest),
        "/perm.v1.RoleService/DelRoleForUser" => RoleServiceClient.del_role_for_user(perm::DelRoleForUserRequest),
        "/perm.v1.RoleService/GetRolesForUser" => RoleServiceClient.get_roles_for_user(perm::GetRolesForUserRequest),
        "/perm.v1.RoleService/GetUsersForRole" => RoleServiceClient.get_users_for_role(perm::GetUsersForRoleRequest),
        "/perm.v1.GroupService/CreateGroup" => GroupServiceClient.create_group(perm::CreateGroupRequest),
        "/perm.v1.GroupService/DeleteGroup" => GroupServiceClient.delete_group(perm::DeleteGroupRequest),
        "/perm.v1.GroupService/MoveGroup" => GroupServiceClient.move_group(perm::MoveGroupRequest),
        "/perm.v1.GroupService/ListGroups" => GroupServiceClient.list_groups(perm::ListGroupsRequest),
        "/perm.v1.GroupService/AddResForGroup" => GroupServiceClient.add_res_for_group(perm::AddResForGroupRequest),
        "/perm.v1.GroupService/DelResForGroup" => GroupServiceClient.del_res_for_group(perm::DelResForGroupRequest),
        "/perm.v1.MenuService/ListMenus" => MenuServiceClient.list_menus(perm::ListMenusRequest),
        "/perm.v1.OrgService/CreateOrg" => OrgServiceClient.create_org(perm::CreateOrgRequest),
        "/perm.v1.OrgService/DeleteOrg" => OrgServiceClient.delete_org(perm::DeleteOrgRequest),
        "/perm.v1.OrgService/TransferOrg" => OrgServiceClient.transfer_org(perm::TransferOrgRequest),
        "/perm.v1.OrgService/ListOrg" => OrgServiceClient.list_org(perm::ListOrgRequest),
    )
}

/// A call that must succeed.
async fn ok(api: &Api, path: &str, body: Value) -> (Value, u64) {
    grpc(api, path, body.clone())
        .await
        .unwrap_or_else(|s| panic!("{path} {body}: {s:?}"))
}

/// A call that must fail with `code`; its message.
async fn fails(api: &Api, path: &str, body: Value, code: Code) -> String {
    match grpc(api, path, body.clone()).await {
        Ok(r) => panic!("{path} {body}: answered {r:?}, expected {code:?}"),
        Err(s) => {
            assert_eq!(s.code(), code, "{path} {body}: {s:?}");
            s.message().to_string()
        }
    }
}

/// The types and menus every test starts from.
fn base(ctl: &Control, key: &str) -> u64 {
    let (status, body, v) = ctl.batch(
        key,
        json!([
            {"op": "upsert", "kind": "resource_type", "value": {"key": "camera", "actions": ["play", "export"]}},
            {"op": "upsert", "kind": "resource_type", "value": {"key": "site", "actions": ["manage"]}},
            {"op": "upsert", "kind": "menu", "value": {"platform": "web", "code": "docs", "name": "Documents"}},
            {"op": "upsert", "kind": "menu", "value": {"platform": "web", "code": "cams", "name": "Cameras", "parent": "docs"}},
        ]),
    );
    assert_eq!(status, 200, "{body}");
    v.unwrap()
}

fn doc(ctl: &Control, key: &str) -> Snapshot {
    serde_json::from_value(ctl.snapshot(key)).unwrap()
}

/// A snapshot without its version and role ids, every list sorted: equal documents are equal
/// here whatever order the database returns items in.
fn norm(s: &Snapshot) -> Value {
    let mut v = serde_json::to_value(s).unwrap();
    let o = v.as_object_mut().unwrap();
    o.remove("version");
    for (_, list) in o.iter_mut() {
        if let Some(items) = list.as_array_mut() {
            for item in items.iter_mut() {
                if let Some(m) = item.as_object_mut() {
                    m.remove("id");
                }
            }
            items.sort_by_key(|i| i.to_string());
        }
    }
    v
}

fn up(kind: &str, value: Value) -> Value {
    json!({"op": "upsert", "kind": kind, "value": value})
}

fn del(kind: &str, value: Value) -> Value {
    json!({"op": "delete", "kind": kind, "value": value})
}

/// The stored role (org, key) as JSON, changed by `edit`.
fn role_json(s: &Snapshot, org: Option<&str>, key: &str, edit: impl FnOnce(&mut Value)) -> Value {
    let r = s
        .roles
        .iter()
        .find(|r| r.key == key && r.org.as_deref() == org)
        .unwrap_or_else(|| panic!("no role {key} in {org:?}"));
    let mut v = serde_json::to_value(r).unwrap();
    edit(&mut v);
    v
}

/// The project now equals `before` with `ops` applied, at version `v` (one more than
/// `before`'s), and every role of `before` still present kept its id.
fn expect(ctl: &Control, key: &str, before: &Snapshot, ops: Value, v: u64) -> Snapshot {
    let after = doc(ctl, key);
    assert_eq!(after.version, v);
    assert_eq!(v, before.version + 1, "one write, one version");
    let ops = ops_from_json(json!({ "ops": ops }).to_string().as_bytes()).unwrap();
    let mut want = before.clone();
    want.apply_ops(&ops);
    assert_eq!(
        norm(&after),
        norm(&want),
        "\nafter:\n{}\nwanted:\n{}",
        serde_json::to_string_pretty(&norm(&after)).unwrap(),
        serde_json::to_string_pretty(&norm(&want)).unwrap()
    );
    for r in &after.roles {
        assert!(r.id.is_some(), "role {} has no id", r.key);
        if let Some(old) = before.roles.iter().find(|o| o.key == r.key && o.org == r.org) {
            assert_eq!(old.id, r.id, "role {} changed its id", r.key);
        }
    }
    after
}

fn role_id(s: &Snapshot, org: Option<&str>, key: &str) -> i64 {
    i64::from(
        s.roles
            .iter()
            .find(|r| r.key == key && r.org.as_deref() == org)
            .unwrap()
            .id
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn each_row_writes_the_ops_it_names() {
    let pg = Postgres::start();
    let key = create_key(&pg, "acme", "app", "default");
    let ctl = Control::start(&pg, &[]);
    base(&ctl, &key);
    let api = Api::new(&ctl.grpc, &key).await;

    // CreateOrg: the org, its admin role, the user as admin; idempotent.
    let s = doc(&ctl, &key);
    let (body, v) = ok(
        &api,
        "/perm.v1.OrgService/CreateOrg",
        json!({"org_id": "acme", "user_id": "alice"}),
    )
    .await;
    assert_eq!(body, json!({}));
    let s = expect(
        &ctl,
        &key,
        &s,
        json!([
            up("org", json!({"key": "acme"})),
            up("role", json!({"key": "admin", "org": "acme", "permissions": ["*:*"]})),
            up(
                "role_assignment",
                json!({"user": "alice", "role": "admin", "org": "acme"})
            ),
        ]),
        v,
    );
    let (_, again) = ok(
        &api,
        "/perm.v1.OrgService/CreateOrg",
        json!({"org_id": "acme", "user_id": "alice"}),
    )
    .await;
    assert_eq!(again, v, "CreateOrg again changes nothing");
    let (_, v) = ok(&api, "/perm.v1.OrgService/CreateOrg", json!({"org_id": "beta"})).await;
    let s = expect(
        &ctl,
        &key,
        &s,
        json!([
            up("org", json!({"key": "beta"})),
            up("role", json!({"key": "admin", "org": "beta", "permissions": ["*:*"]}))
        ]),
        v,
    );

    // CreateRole: scoped and global; the answer carries the stored id.
    let (body, v) = ok(
        &api,
        "/perm.v1.RoleService/CreateRole",
        json!({"role": {"name": "guard", "org_id": "acme", "display_name": "Guards", "status": "active"}}),
    )
    .await;
    let s = expect(
        &ctl,
        &key,
        &s,
        json!([up(
            "role",
            json!({"key": "guard", "org": "acme", "name": "Guards", "attributes": {"status": "active"}})
        )]),
        v,
    );
    let guard = role_id(&s, Some("acme"), "guard");
    assert_eq!(
        body["role"],
        json!({"id": guard, "name": "guard", "org_id": "acme", "display_name": "Guards", "status": "active"})
    );
    // Reads show the stored status too.
    let (body, _) = ok(&api, "/perm.v1.RoleService/GetRole", json!({"id": guard})).await;
    assert_eq!(body["role"]["status"], "active", "{body}");
    let (body, v) = ok(
        &api,
        "/perm.v1.RoleService/CreateRole",
        json!({"role": {"name": "viewer"}}),
    )
    .await;
    let s = expect(&ctl, &key, &s, json!([up("role", json!({"key": "viewer"}))]), v);
    assert_eq!(body["role"]["id"], role_id(&s, None, "viewer"));

    // AddRoleForUser: an org-wide assignment of a role resolving in the org (global too).
    let (body, v) = ok(
        &api,
        "/perm.v1.RoleService/AddRoleForUser",
        json!({"org_id": "acme", "user_id": "bob", "role_id": "guard"}),
    )
    .await;
    assert_eq!(body, json!({"ok": true}));
    let s = expect(
        &ctl,
        &key,
        &s,
        json!([up(
            "role_assignment",
            json!({"user": "bob", "role": "guard", "org": "acme"})
        )]),
        v,
    );
    let (_, v) = ok(
        &api,
        "/perm.v1.RoleService/AddRoleForUser",
        json!({"org_id": "acme", "user_id": "bob", "role_id": "viewer"}),
    )
    .await;
    let s = expect(
        &ctl,
        &key,
        &s,
        json!([up(
            "role_assignment",
            json!({"user": "bob", "role": "viewer", "org": "acme"})
        )]),
        v,
    );
    let (_, v) = ok(
        &api,
        "/perm.v1.RoleService/AddRoleForUser",
        json!({"org_id": "beta", "user_id": "bob", "role_id": "viewer"}),
    )
    .await;
    let s = expect(
        &ctl,
        &key,
        &s,
        json!([up(
            "role_assignment",
            json!({"user": "bob", "role": "viewer", "org": "beta"})
        )]),
        v,
    );

    // CreateGroup: the group, under its parent, its children (created) under it.
    let (_, v) = ok(
        &api,
        "/perm.v1.GroupService/CreateGroup",
        json!({"org_id": "acme", "res_type": "camera", "group_type": "site", "group_id": "hq", "children": ["cam1", "cam2"]}),
    )
    .await;
    let s = expect(
        &ctl,
        &key,
        &s,
        json!([
            up("resource", json!({"type": "site", "key": "hq", "org": "acme"})),
            up(
                "resource",
                json!({"type": "camera", "key": "cam1", "org": "acme", "parents": ["site:hq"]})
            ),
            up(
                "resource",
                json!({"type": "camera", "key": "cam2", "org": "acme", "parents": ["site:hq"]})
            ),
        ]),
        v,
    );
    let (_, v) = ok(
        &api,
        "/perm.v1.GroupService/CreateGroup",
        json!({"org_id": "acme", "res_type": "camera", "group_type": "site", "group_id": "lobby",
               "parent_group_type": "site", "parent_group_id": "hq", "children": ["cam3"]}),
    )
    .await;
    let s = expect(
        &ctl,
        &key,
        &s,
        json!([
            up(
                "resource",
                json!({"type": "site", "key": "lobby", "org": "acme", "parents": ["site:hq"]})
            ),
            up(
                "resource",
                json!({"type": "camera", "key": "cam3", "org": "acme", "parents": ["site:lobby"]})
            ),
        ]),
        v,
    );
    let (_, v) = ok(
        &api,
        "/perm.v1.GroupService/CreateGroup",
        json!({"org_id": "acme", "group_type": "site", "group_id": "annex"}),
    )
    .await;
    let s = expect(
        &ctl,
        &key,
        &s,
        json!([up("resource", json!({"type": "site", "key": "annex", "org": "acme"}))]),
        v,
    );

    // SaveRolePerm: the role's menus, one grant per group (actions merged per group).
    let (_, v) = ok(
        &api,
        "/perm.v1.PermService/SaveRolePerm",
        json!({"org_id": "acme", "role_id": "guard", "menus": ["docs"], "groups": [
            {"res_type": "camera", "group_type": "site", "group_id": "hq"},
            {"res_type": "site", "group_type": "site", "group_id": "hq"},
        ]}),
    )
    .await;
    let s = expect(
        &ctl,
        &key,
        &s,
        json!([
            up(
                "role",
                role_json(&s, Some("acme"), "guard", |r| r["menus"] = json!(["docs"]))
            ),
            up(
                "role_grant",
                json!({"org": "acme", "role": "guard", "resource": "site:hq", "actions": ["camera:*", "site:*"]})
            ),
        ]),
        v,
    );
    // ... and replaces them.
    let (_, v) = ok(
        &api,
        "/perm.v1.PermService/SaveRolePerm",
        json!({"org_id": "acme", "role_id": "guard", "menus": ["cams"], "groups": [
            {"res_type": "camera", "group_type": "site", "group_id": "lobby"},
            {"res_type": "camera", "group_type": "site", "group_id": "annex"},
        ]}),
    )
    .await;
    let s = expect(
        &ctl,
        &key,
        &s,
        json!([
            up(
                "role",
                role_json(&s, Some("acme"), "guard", |r| r["menus"] = json!(["cams"]))
            ),
            del(
                "role_grant",
                json!({"org": "acme", "role": "guard", "resource": "site:hq"})
            ),
            up(
                "role_grant",
                json!({"org": "acme", "role": "guard", "resource": "site:lobby", "actions": ["camera:*"]})
            ),
            up(
                "role_grant",
                json!({"org": "acme", "role": "guard", "resource": "site:annex", "actions": ["camera:*"]})
            ),
        ]),
        v,
    );

    // MoveGroup: parent `from` replaced by `to`.
    let (_, v) = ok(
        &api,
        "/perm.v1.GroupService/MoveGroup",
        json!({"org_id": "acme", "res_type": "camera", "cur_group_type": "site", "cur_group_id": "lobby",
               "from_group_type": "site", "from_group_id": "hq", "to_group_type": "site", "to_group_id": "annex"}),
    )
    .await;
    let s = expect(
        &ctl,
        &key,
        &s,
        json!([up(
            "resource",
            json!({"type": "site", "key": "lobby", "org": "acme", "parents": ["site:annex"]})
        )]),
        v,
    );

    // AddResForGroup / DelResForGroup: the group added to / removed from the parents.
    let (_, v) = ok(
        &api,
        "/perm.v1.GroupService/AddResForGroup",
        json!({"org_id": "acme", "res_type": "camera", "group_type": "site", "group_id": "annex", "res_id": "cam1"}),
    )
    .await;
    let s = expect(
        &ctl,
        &key,
        &s,
        json!([up(
            "resource",
            json!({"type": "camera", "key": "cam1", "org": "acme", "parents": ["site:hq", "site:annex"]})
        )]),
        v,
    );
    let (_, v) = ok(
        &api,
        "/perm.v1.GroupService/AddResForGroup",
        json!({"org_id": "acme", "res_type": "camera", "group_type": "site", "group_id": "annex", "res_id": "cam9"}),
    )
    .await;
    let s = expect(
        &ctl,
        &key,
        &s,
        json!([up(
            "resource",
            json!({"type": "camera", "key": "cam9", "org": "acme", "parents": ["site:annex"]})
        )]),
        v,
    );
    let (_, v) = ok(
        &api,
        "/perm.v1.GroupService/DelResForGroup",
        json!({"org_id": "acme", "res_type": "camera", "group_type": "site", "group_id": "hq", "res_id": "cam1"}),
    )
    .await;
    let s = expect(
        &ctl,
        &key,
        &s,
        json!([up(
            "resource",
            json!({"type": "camera", "key": "cam1", "org": "acme", "parents": ["site:annex"]})
        )]),
        v,
    );

    // TransferOrg: the new user gets admin, the old one loses admin only.
    let (_, v) = ok(
        &api,
        "/perm.v1.RoleService/AddRoleForUser",
        json!({"org_id": "acme", "user_id": "alice", "role_id": "viewer"}),
    )
    .await;
    let s = expect(
        &ctl,
        &key,
        &s,
        json!([up(
            "role_assignment",
            json!({"user": "alice", "role": "viewer", "org": "acme"})
        )]),
        v,
    );
    let (_, v) = ok(
        &api,
        "/perm.v1.OrgService/TransferOrg",
        json!({"org_id": "acme", "user_id": "alice", "new_user_id": "carol"}),
    )
    .await;
    let s = expect(
        &ctl,
        &key,
        &s,
        json!([
            up(
                "role_assignment",
                json!({"user": "carol", "role": "admin", "org": "acme"})
            ),
            del(
                "role_assignment",
                json!({"user": "alice", "role": "admin", "org": "acme"})
            ),
        ]),
        v,
    );

    // UpdateRole: by id, then by name + org_id; empty fields keep what is stored.
    let (body, v) = ok(
        &api,
        "/perm.v1.RoleService/UpdateRole",
        json!({"role": {"id": guard, "display_name": "Night guards"}}),
    )
    .await;
    let s = expect(
        &ctl,
        &key,
        &s,
        json!([up(
            "role",
            role_json(&s, Some("acme"), "guard", |r| r["name"] = json!("Night guards"))
        )]),
        v,
    );
    assert_eq!(
        body["role"],
        json!({"id": guard, "name": "guard", "org_id": "acme", "display_name": "Night guards", "status": "active"})
    );
    let (body, v) = ok(
        &api,
        "/perm.v1.RoleService/UpdateRole",
        json!({"role": {"name": "guard", "org_id": "acme", "status": "disabled"}}),
    )
    .await;
    let s = expect(
        &ctl,
        &key,
        &s,
        json!([up(
            "role",
            role_json(&s, Some("acme"), "guard", |r| r["attributes"]["status"] =
                json!("disabled"))
        )]),
        v,
    );
    assert_eq!(body["role"]["id"], guard);
    assert_eq!(body["role"]["status"], "disabled");

    // DelRoleForUser: one assignment; `*`: every assignment of the user in the org.
    let (body, v) = ok(
        &api,
        "/perm.v1.RoleService/DelRoleForUser",
        json!({"org_id": "acme", "user_id": "alice", "role_id": "viewer"}),
    )
    .await;
    assert_eq!(body, json!({"ok": true}));
    expect(
        &ctl,
        &key,
        &s,
        json!([del(
            "role_assignment",
            json!({"user": "alice", "role": "viewer", "org": "acme"})
        )]),
        v,
    );
    let (status, b, _) = ctl.batch(
        &key,
        json!([up(
            "role_assignment",
            json!({"user": "bob", "role": "guard", "org": "acme", "resource": "camera:cam2"})
        )]),
    );
    assert_eq!(status, 200, "{b}");
    let s2 = doc(&ctl, &key);
    let (_, v) = ok(
        &api,
        "/perm.v1.RoleService/DelRoleForUser",
        json!({"org_id": "acme", "user_id": "bob", "role_id": "*"}),
    )
    .await;
    let s = expect(
        &ctl,
        &key,
        &s2,
        json!([
            del(
                "role_assignment",
                json!({"user": "bob", "role": "guard", "org": "acme"})
            ),
            del(
                "role_assignment",
                json!({"user": "bob", "role": "viewer", "org": "acme"})
            ),
            del(
                "role_assignment",
                json!({"user": "bob", "role": "guard", "org": "acme", "resource": "camera:cam2"})
            ),
        ]),
        v,
    );
    assert!(
        s.role_assignments.iter().any(|a| a.user == "bob" && a.org == "beta"),
        "beta untouched"
    );

    // DeleteGroup: the group; its children lose it as a parent; grants on it go.
    let (_, v) = ok(
        &api,
        "/perm.v1.GroupService/DeleteGroup",
        json!({"org_id": "acme", "res_type": "camera", "group_type": "site", "group_id": "annex"}),
    )
    .await;
    let s = expect(
        &ctl,
        &key,
        &s,
        json!([
            del("resource", json!({"type": "site", "key": "annex"})),
            up("resource", json!({"type": "site", "key": "lobby", "org": "acme"})),
            up("resource", json!({"type": "camera", "key": "cam1", "org": "acme"})),
            up("resource", json!({"type": "camera", "key": "cam9", "org": "acme"})),
            del(
                "role_grant",
                json!({"org": "acme", "role": "guard", "resource": "site:annex"})
            ),
        ]),
        v,
    );

    // DeleteRole by id: the role, its assignments and grants (only where it is the one
    // the name resolves to).
    let (_, b, _) = ctl.batch(
        &key,
        json!([
            up(
                "role_assignment",
                json!({"user": "dave", "role": "guard", "org": "acme"})
            ),
            up(
                "role_assignment",
                json!({"user": "dave", "role": "guard", "org": "beta"})
            ),
        ]),
    );
    assert_eq!(b["version"], s.version + 1);
    let s2 = doc(&ctl, &key);
    let (_, v) = ok(&api, "/perm.v1.RoleService/DeleteRole", json!({"id": guard})).await;
    let s = expect(
        &ctl,
        &key,
        &s2,
        json!([
            del("role", json!({"key": "guard", "org": "acme"})),
            del(
                "role_assignment",
                json!({"user": "dave", "role": "guard", "org": "acme"})
            ),
            del(
                "role_grant",
                json!({"org": "acme", "role": "guard", "resource": "site:lobby"})
            ),
        ]),
        v,
    );
    // By name (a global role): its assignments in every org.
    let (_, v) = ok(&api, "/perm.v1.RoleService/DeleteRole", json!({"name": "viewer"})).await;
    let s = expect(
        &ctl,
        &key,
        &s,
        json!([
            del("role", json!({"key": "viewer"})),
            del(
                "role_assignment",
                json!({"user": "bob", "role": "viewer", "org": "beta"})
            ),
        ]),
        v,
    );

    // DeleteOrg: everything in it, as explicit deletes.
    let (_, v) = ok(&api, "/perm.v1.OrgService/DeleteOrg", json!({"org_id": "acme"})).await;
    let mut ops = vec![
        del("org", json!({"key": "acme"})),
        del("role", json!({"key": "admin", "org": "acme"})),
        del(
            "role_assignment",
            json!({"user": "carol", "role": "admin", "org": "acme"}),
        ),
    ];
    for r in s.resources.iter().filter(|r| r.org == "acme") {
        ops.push(del("resource", json!({"type": r.resource_type, "key": r.key})));
    }
    let s = expect(&ctl, &key, &s, Value::Array(ops), v);
    assert!(!serde_json::to_string(&s).unwrap().contains("\"acme\""), "{s:?}");
    // The batch on the feed is exactly those deletes: a follower applies what the database did.
    assert_eq!(s.orgs.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_follower_answers_each_write_at_its_version() {
    let pg = Postgres::start();
    let key = create_key(&pg, "acme", "app", "default");
    let ctl = Control::start(&pg, &[]);
    base(&ctl, &key);
    let follower = Permd::follow(&ctl.url(), &[], &[("PERMD_API_KEY", &key)]);
    let api = Api::new(&ctl.grpc, &key).await;
    let side = Api::new(&follower.grpc, "").await;
    // The sidecar at (at least) a version.
    let at = |v: u64| {
        side.with(
            "",
            &[
                ("x-permd-min-version", v.to_string()),
                ("x-permd-wait-ms", "20000".into()),
            ],
        )
    };
    let enforce = |user: &str, id: &str, act: &str| json!({"org_id": "acme", "user_id": user, "res_type": "camera", "res_id": id, "act": act});
    let resources = |user: &str| json!({"org_id": "acme", "user_id": user, "res_type": "camera", "act": "play"});
    let roles = |user: &str| json!({"org_id": "acme", "user_id": user});

    ok(
        &api,
        "/perm.v1.OrgService/CreateOrg",
        json!({"org_id": "acme", "user_id": "alice"}),
    )
    .await;
    ok(
        &api,
        "/perm.v1.RoleService/CreateRole",
        json!({"role": {"name": "guard", "org_id": "acme"}}),
    )
    .await;
    ok(
        &api,
        "/perm.v1.GroupService/CreateGroup",
        json!({"org_id": "acme", "res_type": "camera", "group_type": "site", "group_id": "hq", "children": ["cam1", "cam2"]}),
    )
    .await;
    ok(
        &api,
        "/perm.v1.GroupService/AddResForGroup",
        json!({"org_id": "acme", "res_type": "camera", "group_type": "site", "group_id": "hq", "res_id": "cam3"}),
    )
    .await;
    ok(
        &api,
        "/perm.v1.PermService/SaveRolePerm",
        json!({"org_id": "acme", "role_id": "guard", "groups": [{"res_type": "camera", "group_type": "site", "group_id": "hq"}]}),
    )
    .await;
    let (_, v) = ok(
        &api,
        "/perm.v1.RoleService/AddRoleForUser",
        json!({"org_id": "acme", "user_id": "bob", "role_id": "guard"}),
    )
    .await;

    let s = at(v);
    let (d, dv) = ok(&s, "/perm.v1.PermService/Enforce", enforce("bob", "cam1", "play")).await;
    assert!(dv >= v);
    assert_eq!(d, json!({"ok": true, "code": "role_grant"}));
    let (d, _) = ok(&s, "/perm.v1.PermService/Enforce", enforce("alice", "cam1", "export")).await;
    assert_eq!(d, json!({"ok": true, "code": "org_role"}));
    let (d, _) = ok(&s, "/perm.v1.PermService/Enforce", enforce("carol", "cam1", "play")).await;
    assert_eq!(d["ok"], false);
    let (r, _) = ok(&s, "/perm.v1.PermService/ListResources", resources("bob")).await;
    let mut ids: Vec<&str> = r["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["res_id"].as_str().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, ["cam1", "cam2", "cam3"]);
    let (r, _) = ok(&s, "/perm.v1.RoleService/GetRolesForUser", roles("bob")).await;
    assert_eq!(r["roles"], json!(["guard"]));
    // The control plane answers the same reads the same way.
    for (path, body) in [
        ("/perm.v1.PermService/Enforce", enforce("bob", "cam1", "play")),
        ("/perm.v1.PermService/Enforce", enforce("carol", "cam2", "play")),
        ("/perm.v1.PermService/ListResources", resources("bob")),
        ("/perm.v1.RoleService/GetRolesForUser", roles("bob")),
        ("/perm.v1.RoleService/ListRoles", json!({"org_id": "acme"})),
        (
            "/perm.v1.GroupService/ListGroups",
            json!({"org_id": "acme", "res_type": "camera"}),
        ),
        (
            "/perm.v1.PermService/ListGroups",
            json!({"org_id": "acme", "user_id": "bob", "res_type": "camera", "act": "play"}),
        ),
        ("/perm.v1.OrgService/ListOrg", json!({})),
    ] {
        let (mine, cv) = ok(&api, path, body.clone()).await;
        let (theirs, sv) = ok(&s, path, body.clone()).await;
        assert_eq!((mine, cv), (theirs, sv), "{path} {body}");
    }

    // MoveGroup / DelResForGroup: cam3 leaves hq, so bob's grant no longer reaches it.
    let (_, v) = ok(
        &api,
        "/perm.v1.GroupService/DelResForGroup",
        json!({"org_id": "acme", "res_type": "camera", "group_type": "site", "group_id": "hq", "res_id": "cam3"}),
    )
    .await;
    let (d, _) = ok(&at(v), "/perm.v1.PermService/Enforce", enforce("bob", "cam3", "play")).await;
    assert_eq!(d["ok"], false);
    // TransferOrg: carol is admin, alice is not.
    let (_, v) = ok(
        &api,
        "/perm.v1.OrgService/TransferOrg",
        json!({"org_id": "acme", "user_id": "alice", "new_user_id": "carol"}),
    )
    .await;
    let (d, _) = ok(
        &at(v),
        "/perm.v1.PermService/Enforce",
        enforce("carol", "cam3", "export"),
    )
    .await;
    assert_eq!(d, json!({"ok": true, "code": "org_role"}));
    let (d, _) = ok(
        &at(v),
        "/perm.v1.PermService/Enforce",
        enforce("alice", "cam3", "export"),
    )
    .await;
    assert_eq!(d["ok"], false);
    // DelRoleForUser: bob's access and role go.
    let (_, v) = ok(
        &api,
        "/perm.v1.RoleService/DelRoleForUser",
        json!({"org_id": "acme", "user_id": "bob", "role_id": "guard"}),
    )
    .await;
    let (d, _) = ok(&at(v), "/perm.v1.PermService/Enforce", enforce("bob", "cam1", "play")).await;
    assert_eq!(d["ok"], false);
    let (r, _) = ok(&at(v), "/perm.v1.RoleService/GetRolesForUser", roles("bob")).await;
    assert_eq!(r["roles"], json!([]));
    let (r, _) = ok(&at(v), "/perm.v1.PermService/ListResources", resources("bob")).await;
    assert_eq!(r["resources"], json!([]));

    // GetRole: the sidecar and the control plane agree on every id.
    let (list, v) = ok(&api, "/perm.v1.RoleService/ListRoles", json!({})).await;
    let list = list["roles"].as_array().unwrap().clone();
    assert_eq!(list.len(), 2);
    for role in &list {
        let id = role["id"].as_i64().unwrap();
        assert!(id > 0);
        let (mine, _) = ok(&api, "/perm.v1.RoleService/GetRole", json!({"id": id})).await;
        let (theirs, _) = ok(&at(v), "/perm.v1.RoleService/GetRole", json!({"id": id})).await;
        assert_eq!(mine, theirs);
        assert_eq!(&mine["role"], role);
    }
    // Ids are stable across deletes: deleting the first role leaves the second's id alone.
    let first = list[0]["id"].as_i64().unwrap();
    let second = list[1].clone();
    let (_, v) = ok(&api, "/perm.v1.RoleService/DeleteRole", json!({"id": first})).await;
    let (theirs, _) = ok(&at(v), "/perm.v1.RoleService/GetRole", json!({"id": second["id"]})).await;
    assert_eq!(theirs["role"], second);
    let m = fails(
        &at(v),
        "/perm.v1.RoleService/GetRole",
        json!({"id": first}),
        Code::NotFound,
    )
    .await;
    assert!(m.contains("id"), "{m}");
    assert!(!follower.stderr().contains("panicked"));
}

#[tokio::test(flavor = "multi_thread")]
async fn status_codes_as_the_seed_clients_expect() {
    let pg = Postgres::start();
    let key = create_key(&pg, "acme", "app", "default");
    let ctl = Control::start(&pg, &[]);
    base(&ctl, &key);
    let api = Api::new(&ctl.grpc, &key).await;
    ok(
        &api,
        "/perm.v1.OrgService/CreateOrg",
        json!({"org_id": "acme", "user_id": "alice"}),
    )
    .await;
    ok(&api, "/perm.v1.OrgService/CreateOrg", json!({"org_id": "beta"})).await;
    ok(
        &api,
        "/perm.v1.RoleService/CreateRole",
        json!({"role": {"name": "guard", "org_id": "acme"}}),
    )
    .await;
    let (_, v) = ok(
        &api,
        "/perm.v1.GroupService/CreateGroup",
        json!({"org_id": "acme", "group_type": "site", "group_id": "hq"}),
    )
    .await;

    // UNAUTHENTICATED: no key, a wrong one, a malformed one; nothing about the project.
    for bad in ["", "pk_wrong", "nope"] {
        let a = api.with(bad, &[]);
        for (path, body) in [
            ("/perm.v1.OrgService/ListOrg", json!({})),
            ("/perm.v1.OrgService/CreateOrg", json!({"org_id": "evil"})),
            (
                "/perm.v1.PermService/Enforce",
                json!({"user_id": "alice", "res_type": "camera", "act": "play"}),
            ),
        ] {
            let m = fails(&a, path, body, Code::Unauthenticated).await;
            assert!(!m.contains("acme") && !m.contains("app"), "{m}");
        }
    }
    let mut raw = OrgServiceClient::new(api.ch.clone());
    let mut r = Request::new(perm::ListOrgRequest {});
    r.metadata_mut().insert("authorization", "Basic abc".parse().unwrap());
    assert_eq!(raw.list_org(r).await.unwrap_err().code(), Code::Unauthenticated);

    // NOT_FOUND: an unknown org, a role that does not resolve in the org, a missing group.
    let not_found = [
        ("/perm.v1.OrgService/DeleteOrg", json!({"org_id": "nope"}), "org_id"),
        (
            "/perm.v1.OrgService/TransferOrg",
            json!({"org_id": "nope", "user_id": "a", "new_user_id": "b"}),
            "org_id",
        ),
        (
            "/perm.v1.RoleService/AddRoleForUser",
            json!({"org_id": "nope", "user_id": "bob", "role_id": "guard"}),
            "org_id",
        ),
        (
            "/perm.v1.RoleService/AddRoleForUser",
            json!({"org_id": "beta", "user_id": "bob", "role_id": "guard"}),
            "role_id",
        ),
        (
            "/perm.v1.RoleService/DelRoleForUser",
            json!({"org_id": "acme", "user_id": "bob", "role_id": "ghost"}),
            "role_id",
        ),
        (
            "/perm.v1.RoleService/CreateRole",
            json!({"role": {"name": "x", "org_id": "nope"}}),
            "role.org_id",
        ),
        (
            "/perm.v1.RoleService/UpdateRole",
            json!({"role": {"id": 999, "display_name": "x"}}),
            "role.id",
        ),
        (
            "/perm.v1.RoleService/UpdateRole",
            json!({"role": {"name": "guard", "org_id": "beta"}}),
            "role.name",
        ),
        ("/perm.v1.RoleService/DeleteRole", json!({"id": 999}), "id"),
        ("/perm.v1.RoleService/DeleteRole", json!({"name": "guard"}), "name"),
        ("/perm.v1.RoleService/GetRole", json!({"id": 999}), "id"),
        (
            "/perm.v1.PermService/SaveRolePerm",
            json!({"org_id": "beta", "role_id": "guard"}),
            "role_id",
        ),
        (
            "/perm.v1.PermService/SaveRolePerm",
            json!({"org_id": "nope", "role_id": "admin"}),
            "org_id",
        ),
        (
            "/perm.v1.PermService/SaveRolePerm",
            json!({"org_id": "acme", "role_id": "guard", "menus": ["ghost"]}),
            "menus[0]",
        ),
        (
            "/perm.v1.PermService/SaveRolePerm",
            json!({"org_id": "acme", "role_id": "guard",
            "groups": [{"res_type": "camera", "group_type": "site", "group_id": "ghost"}]}),
            "groups[0].group_id",
        ),
        (
            "/perm.v1.GroupService/CreateGroup",
            json!({"org_id": "nope", "group_type": "site", "group_id": "x"}),
            "org_id",
        ),
        (
            "/perm.v1.GroupService/CreateGroup",
            json!({"org_id": "acme", "group_type": "site", "group_id": "x",
            "parent_group_type": "site", "parent_group_id": "ghost"}),
            "parent_group_id",
        ),
        (
            "/perm.v1.GroupService/CreateGroup",
            json!({"org_id": "beta", "group_type": "site", "group_id": "x",
            "parent_group_type": "site", "parent_group_id": "hq"}),
            "parent_group_id",
        ),
        (
            "/perm.v1.GroupService/DeleteGroup",
            json!({"org_id": "beta", "group_type": "site", "group_id": "hq"}),
            "group_id",
        ),
        (
            "/perm.v1.GroupService/MoveGroup",
            json!({"org_id": "acme", "cur_group_type": "site", "cur_group_id": "ghost"}),
            "cur_group_id",
        ),
        (
            "/perm.v1.GroupService/MoveGroup",
            json!({"org_id": "acme", "cur_group_type": "site", "cur_group_id": "hq",
            "to_group_type": "site", "to_group_id": "ghost"}),
            "to_group_id",
        ),
        (
            "/perm.v1.GroupService/AddResForGroup",
            json!({"org_id": "acme", "res_type": "camera", "group_type": "site",
            "group_id": "ghost", "res_id": "c1"}),
            "group_id",
        ),
        (
            "/perm.v1.GroupService/DelResForGroup",
            json!({"org_id": "acme", "res_type": "camera", "group_type": "site",
            "group_id": "hq", "res_id": "ghost"}),
            "res_id",
        ),
    ];
    for (path, body, field) in not_found {
        let m = fails(&api, path, body.clone(), Code::NotFound).await;
        assert!(m.contains(&format!("`{field}`")), "{path} {body}: {m}");
        let (status, b, _) = ctl.call(&key, "POST", path, Some(&body));
        assert_eq!(status, 404, "{path} {body}: {b}");
    }

    // ALREADY_EXISTS: a role that exists; a group key another org holds.
    let m = fails(
        &api,
        "/perm.v1.RoleService/CreateRole",
        json!({"role": {"name": "guard", "org_id": "acme", "display_name": "again"}}),
        Code::AlreadyExists,
    )
    .await;
    assert!(m.contains("guard"), "{m}");
    fails(
        &api,
        "/perm.v1.RoleService/CreateRole",
        json!({"role": {"name": "admin", "org_id": "beta"}}),
        Code::AlreadyExists,
    )
    .await;
    fails(
        &api,
        "/perm.v1.GroupService/CreateGroup",
        json!({"org_id": "beta", "group_type": "site", "group_id": "hq"}),
        Code::AlreadyExists,
    )
    .await;
    let (status, _, _) = ctl.call(
        &key,
        "POST",
        "/perm.v1.RoleService/CreateRole",
        Some(&json!({"role": {"name": "guard", "org_id": "acme"}})),
    );
    assert_eq!(status, 409);
    // Nothing of it was stored.
    assert_eq!(doc(&ctl, &key).version, v);

    // RESOURCE_EXHAUSTED with retry-after, on a replica with a small burst.
    let limited = Control::start(&pg, &["--rate-limit-minute", "3"]);
    let la = Api::new(&limited.grpc, &key).await;
    for _ in 0..3 {
        ok(&la, "/perm.v1.OrgService/ListOrg", json!({})).await;
    }
    let mut c = OrgServiceClient::new(la.ch.clone());
    let s = c
        .create_org(la.req(perm::CreateOrgRequest {
            org_id: "x".into(),
            user_id: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
    let after: u64 = s
        .metadata()
        .get("retry-after")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&after), "{after}");
    assert_eq!(doc(&ctl, &key).version, v);
}

/// (RPC, request, the field the error must name): bad input on every write RPC.
fn bad_inputs() -> Vec<(&'static str, Value, &'static str)> {
    let long = "k".repeat(300);
    vec![
        ("/perm.v1.OrgService/CreateOrg", json!({}), "org_id"),
        ("/perm.v1.OrgService/CreateOrg", json!({"org_id": long}), "org_id"),
        (
            "/perm.v1.OrgService/CreateOrg",
            json!({"org_id": "acme", "user_id": "a\u{0}b"}),
            "user_id",
        ),
        ("/perm.v1.OrgService/DeleteOrg", json!({}), "org_id"),
        (
            "/perm.v1.OrgService/TransferOrg",
            json!({"org_id": "acme", "user_id": "alice"}),
            "new_user_id",
        ),
        (
            "/perm.v1.OrgService/TransferOrg",
            json!({"org_id": "acme", "new_user_id": "bob"}),
            "user_id",
        ),
        ("/perm.v1.RoleService/CreateRole", json!({}), "role"),
        (
            "/perm.v1.RoleService/CreateRole",
            json!({"role": {"org_id": "acme"}}),
            "role.name",
        ),
        (
            "/perm.v1.RoleService/CreateRole",
            json!({"role": {"name": "x", "id": -1}}),
            "role.id",
        ),
        (
            "/perm.v1.RoleService/CreateRole",
            json!({"role": {"name": long}}),
            "role.name",
        ),
        (
            "/perm.v1.RoleService/UpdateRole",
            json!({"role": {"display_name": "x"}}),
            "role.id",
        ),
        (
            "/perm.v1.RoleService/UpdateRole",
            json!({"role": {"name": "guard", "org_id": "acme", "status": "\u{0}"}}),
            "role.status",
        ),
        ("/perm.v1.RoleService/UpdateRole", json!({}), "role"),
        ("/perm.v1.RoleService/DeleteRole", json!({}), "id"),
        ("/perm.v1.RoleService/DeleteRole", json!({"id": -4}), "id"),
        (
            "/perm.v1.RoleService/AddRoleForUser",
            json!({"org_id": "acme", "role_id": "guard"}),
            "user_id",
        ),
        (
            "/perm.v1.RoleService/AddRoleForUser",
            json!({"user_id": "bob", "role_id": "guard"}),
            "org_id",
        ),
        (
            "/perm.v1.RoleService/DelRoleForUser",
            json!({"org_id": "acme", "user_id": "bob"}),
            "role_id",
        ),
        (
            "/perm.v1.PermService/SaveRolePerm",
            json!({"org_id": "acme"}),
            "role_id",
        ),
        (
            "/perm.v1.PermService/SaveRolePerm",
            json!({"org_id": "acme", "role_id": "guard", "menus": ["docs", ""]}),
            "menus[1]",
        ),
        (
            "/perm.v1.PermService/SaveRolePerm",
            json!({"org_id": "acme", "role_id": "guard",
            "groups": [{"res_type": "camera", "group_type": "site"}]}),
            "groups[0].group_id",
        ),
        (
            "/perm.v1.PermService/SaveRolePerm",
            json!({"org_id": "acme", "role_id": "guard",
            "groups": [{"res_type": "camera", "group_type": "site", "group_id": "hq"}, {"res_type": "cam:era", "group_type": "site", "group_id": "hq"}]}),
            "groups[1].res_type",
        ),
        (
            "/perm.v1.GroupService/CreateGroup",
            json!({"org_id": "acme", "group_type": "site"}),
            "group_id",
        ),
        (
            "/perm.v1.GroupService/CreateGroup",
            json!({"org_id": "acme", "group_id": "x"}),
            "group_type",
        ),
        (
            "/perm.v1.GroupService/CreateGroup",
            json!({"org_id": "acme", "group_type": "si:te", "group_id": "x"}),
            "group_type",
        ),
        (
            "/perm.v1.GroupService/CreateGroup",
            json!({"org_id": "acme", "group_type": "site", "group_id": "x",
            "parent_group_type": "site"}),
            "parent_group_id",
        ),
        (
            "/perm.v1.GroupService/CreateGroup",
            json!({"org_id": "acme", "group_type": "site", "group_id": "x",
            "children": ["c1"]}),
            "res_type",
        ),
        (
            "/perm.v1.GroupService/CreateGroup",
            json!({"org_id": "acme", "res_type": "camera", "group_type": "site",
            "group_id": "x", "children": ["c1", ""]}),
            "children[1]",
        ),
        (
            "/perm.v1.GroupService/DeleteGroup",
            json!({"org_id": "acme", "group_id": "hq"}),
            "group_type",
        ),
        (
            "/perm.v1.GroupService/DeleteGroup",
            json!({"group_type": "site", "group_id": "hq"}),
            "org_id",
        ),
        (
            "/perm.v1.GroupService/MoveGroup",
            json!({"org_id": "acme", "cur_group_type": "site"}),
            "cur_group_id",
        ),
        (
            "/perm.v1.GroupService/MoveGroup",
            json!({"org_id": "acme", "cur_group_type": "site", "cur_group_id": "hq",
            "to_group_type": "site"}),
            "to_group_id",
        ),
        (
            "/perm.v1.GroupService/MoveGroup",
            json!({"org_id": "acme", "cur_group_type": "site", "cur_group_id": "hq",
            "from_group_id": "x"}),
            "from_group_type",
        ),
        (
            "/perm.v1.GroupService/AddResForGroup",
            json!({"org_id": "acme", "group_type": "site", "group_id": "hq",
            "res_id": "c1"}),
            "res_type",
        ),
        (
            "/perm.v1.GroupService/AddResForGroup",
            json!({"org_id": "acme", "res_type": "camera", "group_type": "site",
            "group_id": "hq", "res_id": long}),
            "res_id",
        ),
        (
            "/perm.v1.GroupService/DelResForGroup",
            json!({"org_id": "acme", "res_type": "camera", "group_type": "site",
            "group_id": "hq"}),
            "res_id",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_on_every_write_stores_nothing() {
    let pg = Postgres::start();
    let key = create_key(&pg, "acme", "app", "default");
    let ctl = Control::start(&pg, &[]);
    base(&ctl, &key);
    let api = Api::new(&ctl.grpc, &key).await;
    ok(
        &api,
        "/perm.v1.OrgService/CreateOrg",
        json!({"org_id": "acme", "user_id": "alice"}),
    )
    .await;
    ok(
        &api,
        "/perm.v1.RoleService/CreateRole",
        json!({"role": {"name": "guard", "org_id": "acme"}}),
    )
    .await;
    let (_, v) = ok(
        &api,
        "/perm.v1.GroupService/CreateGroup",
        json!({"org_id": "acme", "group_type": "site", "group_id": "hq"}),
    )
    .await;
    let before = ctl.snapshot(&key);
    let mut rpcs = std::collections::BTreeSet::new();
    for (path, body, field) in bad_inputs() {
        rpcs.insert(path);
        let m = fails(&api, path, body.clone(), Code::InvalidArgument).await;
        assert!(m.contains(&format!("`{field}`")), "{path} {body}: {m}");
        let (status, b, version) = ctl.call(&key, "POST", path, Some(&body));
        assert_eq!(status, 400, "{path} {body}: {b}");
        assert_eq!(b["error"]["code"], "invalid_argument");
        assert!(
            b["error"]["message"].as_str().unwrap().contains(&format!("`{field}`")),
            "{path}: {b}"
        );
        assert_eq!(version, None);
    }
    assert_eq!(rpcs.len(), 14, "every write RPC: {rpcs:?}");
    // The JSON face's own: unknown fields, wrong types, not an object, unknown methods.
    for (path, body, field) in [
        ("/perm.v1.OrgService/CreateOrg", json!({"org": "acme"}), "org"),
        ("/perm.v1.OrgService/CreateOrg", json!({"org_id": 5}), "org_id"),
        (
            "/perm.v1.RoleService/CreateRole",
            json!({"role": {"name": "x", "displayname": "y"}}),
            "role.displayname",
        ),
        (
            "/perm.v1.PermService/SaveRolePerm",
            json!({"org_id": "acme", "role_id": "guard", "groups": [{"group": "x"}]}),
            "groups[0].group",
        ),
        ("/perm.v1.RoleService/ListRoles", json!({"limit": 0}), "limit"),
        ("/perm.v1.RoleService/ListRoles", json!({"cursor": "!!"}), "cursor"),
    ] {
        let (status, b, _) = ctl.call(&key, "POST", path, Some(&body));
        assert_eq!(status, 400, "{path} {body}: {b}");
        assert!(
            b["error"]["message"].as_str().unwrap().contains(&format!("`{field}`")),
            "{path}: {b}"
        );
    }
    let (status, head, _) = ctl.raw(
        "POST",
        "/perm.v1.OrgService/CreateOrg",
        &[("authorization", &format!("Bearer {key}"))],
        b"[1, 2]",
    );
    assert_eq!(status, 400, "{head}");
    let (status, _, _) = ctl.raw(
        "POST",
        "/perm.v1.OrgService/CreateOrg",
        &[("authorization", &format!("Bearer {key}"))],
        b"{",
    );
    assert_eq!(status, 400);
    for path in [
        "/perm.v1.OrgService/Nope",
        "/perm.v1.Nope/CreateOrg",
        "/perm.v1.OrgService",
    ] {
        let (status, _, _) = ctl.call(&key, "POST", path, Some(&json!({})));
        assert_eq!(status, 404, "{path}");
    }
    let (status, _, _) = ctl.call(&key, "GET", "/perm.v1.OrgService/ListOrg", None);
    assert_eq!(status, 405);
    // Nothing stored.
    let after = ctl.snapshot(&key);
    assert_eq!(after["version"], v);
    assert_eq!(after, before);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_json_face_is_the_grpc_face_and_projects_stay_apart() {
    let pg = Postgres::start();
    let key = create_key(&pg, "acme", "app", "default");
    let other = create_key(&pg, "acme", "other", "default");
    let ctl = Control::start(&pg, &[]);
    base(&ctl, &key);
    let api = Api::new(&ctl.grpc, &key).await;

    // The same writes through either face: the same answers, one version each.
    let (a, va) = ok(
        &api,
        "/perm.v1.OrgService/CreateOrg",
        json!({"org_id": "acme", "user_id": "alice"}),
    )
    .await;
    let (status, b, vb) = ctl.call(
        &key,
        "POST",
        "/perm.v1.OrgService/CreateOrg",
        Some(&json!({"org_id": "beta", "user_id": "bob"})),
    );
    assert_eq!((status, &b), (200, &a));
    assert_eq!(vb, Some(va + 1));
    let (status, _, again) = ctl.call(
        &key,
        "POST",
        "/perm.v1.OrgService/CreateOrg",
        Some(&json!({"org_id": "beta", "user_id": "bob"})),
    );
    assert_eq!(
        (status, again),
        (200, Some(va + 1)),
        "an idempotent write answers the current version"
    );
    let (g, _) = ok(
        &api,
        "/perm.v1.RoleService/CreateRole",
        json!({"role": {"name": "guard", "org_id": "acme", "status": "on"}}),
    )
    .await;
    let (status, j, _) = ctl.call(
        &key,
        "POST",
        "/perm.v1.RoleService/CreateRole",
        Some(&json!({"role": {"name": "guard", "org_id": "beta", "status": "on"}})),
    );
    assert_eq!(status, 200, "{j}");
    assert_eq!(j["role"]["org_id"], "beta");
    assert_ne!(j["role"]["id"], g["role"]["id"]);
    assert_eq!(
        (&j["role"]["name"], &j["role"]["status"]),
        (&g["role"]["name"], &g["role"]["status"])
    );
    ok(&api, "/perm.v1.GroupService/CreateGroup", json!({"org_id": "acme", "res_type": "camera", "group_type": "site", "group_id": "hq", "children": ["c1", "c2", "c3"]})).await;
    let (status, _, v) = ctl.call(
        &key,
        "POST",
        "/perm.v1.PermService/SaveRolePerm",
        Some(&json!({"org_id": "acme", "role_id": "guard",
        "menus": ["docs"], "groups": [{"res_type": "camera", "group_type": "site", "group_id": "hq"}]})),
    );
    assert_eq!(status, 200);
    let v = v.unwrap();

    // The reads: equal bodies, equal versions.
    for (path, body) in [
        (
            "/perm.v1.PermService/Enforce",
            json!({"org_id": "acme", "role_id": "guard", "res_type": "camera", "res_id": "c1", "act": "play"}),
        ),
        (
            "/perm.v1.PermService/Enforce",
            json!({"org_id": "acme", "user_id": "bob", "res_type": "camera", "res_id": "c1", "act": "play"}),
        ),
        (
            "/perm.v1.PermService/ListResources",
            json!({"org_id": "acme", "user_id": "alice", "res_type": "camera", "act": "play"}),
        ),
        (
            "/perm.v1.PermService/ListMenus",
            json!({"org_id": "acme", "role_id": "guard", "platform": "web"}),
        ),
        (
            "/perm.v1.PermService/ListGroups",
            json!({"org_id": "acme", "role_id": "guard", "res_type": "camera", "act": "play"}),
        ),
        ("/perm.v1.RoleService/ListRoles", json!({"org_id": "acme"})),
        ("/perm.v1.RoleService/GetRole", json!({"id": g["role"]["id"]})),
        (
            "/perm.v1.RoleService/GetRolesForUser",
            json!({"org_id": "beta", "user_id": "bob"}),
        ),
        (
            "/perm.v1.RoleService/GetUsersForRole",
            json!({"org_id": "acme", "role_id": "admin"}),
        ),
        (
            "/perm.v1.GroupService/ListGroups",
            json!({"org_id": "acme", "res_type": "camera"}),
        ),
        ("/perm.v1.MenuService/ListMenus", json!({"platform": "web"})),
        ("/perm.v1.OrgService/ListOrg", json!({})),
    ] {
        let (grpc_body, gv) = ok(&api, path, body.clone()).await;
        let (status, json_body, jv) = ctl.call(&key, "POST", path, Some(&body));
        assert_eq!(status, 200, "{path}: {json_body}");
        assert_eq!(json_body, grpc_body, "{path} {body}");
        assert_eq!((gv, jv), (v, Some(v)), "{path}");
    }
    let (d, _) = ok(
        &api,
        "/perm.v1.PermService/Enforce",
        json!({"org_id": "acme", "role_id": "guard", "res_type": "camera", "res_id": "c1", "act": "play"}),
    )
    .await;
    assert_eq!(d, json!({"ok": true, "code": "role_grant"}));

    // Paging: metadata on gRPC, body fields and headers on JSON; the same pages.
    let paged = api.with(&key, &[("x-permd-limit", "2".into())]);
    let mut c = PermServiceClient::new(paged.ch.clone());
    let resp = c
        .list_resources(paged.req(perm::PermServiceListResourcesRequest {
            org_id: "acme".into(),
            user_id: "alice".into(),
            res_type: "camera".into(),
            act: "play".into(),
            ..Default::default()
        }))
        .await
        .unwrap();
    let cursor = resp
        .metadata()
        .get("x-permd-next-cursor")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(resp.into_inner().resources.len(), 2);
    let body = json!({"org_id": "acme", "user_id": "alice", "res_type": "camera", "act": "play", "limit": 2});
    let (status, head, page) = ctl.raw(
        "POST",
        "/perm.v1.PermService/ListResources",
        &[("authorization", &format!("Bearer {key}"))],
        body.to_string().as_bytes(),
    );
    assert_eq!(status, 200);
    assert!(
        head.contains(&format!("x-permd-next-cursor: {}", cursor.to_ascii_lowercase())),
        "{head}"
    );
    let page: Value = serde_json::from_slice(&page).unwrap();
    assert_eq!(page["resources"].as_array().unwrap().len(), 2);
    let paged = api.with(
        &key,
        &[("x-permd-limit", "2".into()), ("x-permd-cursor", cursor.clone())],
    );
    let (rest, _) = ok(
        &paged,
        "/perm.v1.PermService/ListResources",
        json!({"org_id": "acme", "user_id": "alice", "res_type": "camera", "act": "play"}),
    )
    .await;
    let mut body = json!({"org_id": "acme", "user_id": "alice", "res_type": "camera", "act": "play", "limit": 2});
    body["cursor"] = json!(cursor);
    let (_, json_rest, _) = ctl.call(&key, "POST", "/perm.v1.PermService/ListResources", Some(&body));
    assert_eq!(rest, json_rest);
    assert_eq!(rest["resources"].as_array().unwrap().len(), 1);

    // Another project's key never sees, nor changes, this project's data.
    let o = api.with(&other, &[]);
    let (orgs, ov) = ok(&o, "/perm.v1.OrgService/ListOrg", json!({})).await;
    assert_eq!((orgs, ov), (json!({"orgs": []}), 0));
    fails(
        &o,
        "/perm.v1.RoleService/GetRole",
        json!({"id": g["role"]["id"]}),
        Code::NotFound,
    )
    .await;
    let (r, _) = ok(
        &o,
        "/perm.v1.RoleService/GetRolesForUser",
        json!({"org_id": "acme", "user_id": "alice"}),
    )
    .await;
    assert_eq!(r["roles"], json!([]));
    let (d, _) = ok(
        &o,
        "/perm.v1.PermService/Enforce",
        json!({"org_id": "acme", "user_id": "alice", "res_type": "camera", "res_id": "c1", "act": "play"}),
    )
    .await;
    assert_eq!(d, json!({"ok": false, "code": "unknown_org"}));
    fails(
        &o,
        "/perm.v1.OrgService/DeleteOrg",
        json!({"org_id": "acme"}),
        Code::NotFound,
    )
    .await;
    fails(
        &o,
        "/perm.v1.RoleService/AddRoleForUser",
        json!({"org_id": "acme", "user_id": "eve", "role_id": "admin"}),
        Code::NotFound,
    )
    .await;
    let (status, _, _) = ctl.call(
        &other,
        "POST",
        "/perm.v1.OrgService/DeleteOrg",
        Some(&json!({"org_id": "acme"})),
    );
    assert_eq!(status, 404);
    // Its own writes land in its own project.
    let (_, ov) = ok(
        &o,
        "/perm.v1.OrgService/CreateOrg",
        json!({"org_id": "acme", "user_id": "eve"}),
    )
    .await;
    assert_eq!(ov, 1);
    assert_eq!(doc(&ctl, &key).version, v);
    let mine = ctl.snapshot(&key).to_string();
    assert!(!mine.contains("eve"));
    let theirs = ctl.snapshot(&other).to_string();
    assert!(!theirs.contains("alice") && !theirs.contains("guard"), "{theirs}");
}
