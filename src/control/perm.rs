//! perm/v1 (seed 003) on the control plane: the read RPCs answered with the sidecar's code
//! (`crate::api::reads`) from the project's index at its current version, the writes mapped
//! onto the write path per control.md's table. Served as gRPC by [`super::grpc`] and as JSON at
//! `POST /perm.v1.<Service>/<Method>` by [`route_json`].
//!
//! Every write is planned from the project's current document by [`super::write::write_with`]
//! (so existence checks, idempotency and cascades always fit the state they are applied to),
//! after the request's fields are checked against model.md's reject rules with errors naming
//! the request's own fields. Each function answers the response message and the project's
//! version: the write's new one, or the current one when the write changed nothing (and, for
//! reads, the version of the index that answered).

use super::Control;
use super::auth::db_error;
use super::db::KeyProject;
use super::http::{Body, written};
use crate::api::grpc::perm;
use crate::api::reads::{self, Paged, Paging};
use crate::index::{DEFAULT_LIMIT, Index, Query, Subject};
use crate::model::{
    Identity, Item, MAX_KEY_BYTES, Op, Org, Resource, Role, RoleAssignment, RoleGrant, Snapshot, ops_from_json,
};
use crate::wire::RequestError;
use http::{HeaderValue, Response, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// The header (gRPC metadata) naming the cursor of the next page of a list answer.
pub const NEXT_CURSOR: &str = "x-permd-next-cursor";
/// The header (gRPC metadata) saying a tree answer was cut.
pub const TRUNCATED: &str = "x-permd-truncated";

/// The role CreateOrg makes in each org, and TransferOrg moves.
const ADMIN: &str = "admin";

/// An answer of one RPC: the response message and what travels beside it.
#[derive(Debug)]
pub struct Answer<T> {
    pub body: T,
    /// The project's version the answer was made at: a write's new version (or the current one
    /// when it changed nothing), a read's index version. Sent as `x-permd-version`.
    pub version: u64,
    /// More elements follow: pass this back as the cursor (`x-permd-next-cursor`).
    pub next_cursor: Option<String>,
    /// A tree answer was cut at `MAX_TREE_NODES` (`x-permd-truncated: true`).
    pub truncated: bool,
}

impl<T> Answer<T> {
    fn write(body: T, version: u64) -> Answer<T> {
        Answer {
            body,
            version,
            next_cursor: None,
            truncated: false,
        }
    }
}

/// What a read may ask beside its message (the perm/v1 messages have no such fields): a page,
/// and `effective` for GetRolesForUser / GetUsersForRole. gRPC sends them as `x-permd-limit`,
/// `x-permd-cursor`, `x-permd-effective` metadata; JSON as `limit`, `cursor`, `effective`
/// beside the message's fields.
#[derive(Debug, Clone, Copy)]
pub struct ReadOpts {
    pub paging: Paging,
    pub effective: bool,
}

impl Default for ReadOpts {
    fn default() -> ReadOpts {
        ReadOpts {
            paging: Paging {
                after: None,
                limit: DEFAULT_LIMIT,
            },
            effective: false,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Reads: the sidecar's code on the project's index.

/// The project's index at its current version.
async fn index(ctl: &Control, project: &KeyProject) -> Result<Arc<Index>, RequestError> {
    let encoded = ctl.snapshots.current(project.project_id).await.map_err(db_error)?;
    encoded.index().await.map_err(db_error)
}

fn read<T>(ix: &Index, r: Result<Paged<T>, RequestError>) -> Result<Answer<T>, RequestError> {
    let p = r?;
    Ok(Answer {
        body: p.body,
        version: ix.version(),
        next_cursor: p.next_cursor,
        truncated: p.truncated,
    })
}

fn non_empty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

/// PermService.Enforce: model.md §2 with the perm/v1 mapping, as the sidecar answers it.
pub async fn enforce(
    ctl: &Control,
    project: &KeyProject,
    r: &perm::EnforceRequest,
) -> Result<Answer<perm::EnforceResponse>, RequestError> {
    let subject = match (non_empty(&r.user_id), non_empty(&r.role_id)) {
        (Some(u), _) => Subject::User(u),
        (None, Some(role)) => Subject::Role(role),
        (None, None) => return Err(RequestError::invalid("one of `user_id` or `role_id` is required")),
    };
    let q = Query {
        subject,
        action: required(&r.act, "act")?,
        resource_type: required(&r.res_type, "res_type")?,
        resource_key: non_empty(&r.res_id),
        org: non_empty(&r.org_id),
        group_type: non_empty(&r.group_type),
        request: None,
    };
    let ix = index(ctl, project).await?;
    let d = ix.decide(&q);
    Ok(Answer::write(
        perm::EnforceResponse {
            ok: d.allow,
            code: d.reason.as_str().into(),
        },
        d.version,
    ))
}

/// PermService.ListResources.
pub async fn list_resources(
    ctl: &Control,
    project: &KeyProject,
    r: &perm::PermServiceListResourcesRequest,
    o: &ReadOpts,
) -> Result<Answer<perm::PermServiceListResourcesResponse>, RequestError> {
    let ix = index(ctl, project).await?;
    read(&ix, reads::list_resources(&ix, r, o.paging))
}

/// PermService.ListMenus.
pub async fn perm_list_menus(
    ctl: &Control,
    project: &KeyProject,
    r: &perm::PermServiceListMenusRequest,
) -> Result<Answer<perm::PermServiceListMenusResponse>, RequestError> {
    let ix = index(ctl, project).await?;
    read(&ix, reads::perm_list_menus(&ix, r))
}

/// PermService.ListGroups.
pub async fn perm_list_groups(
    ctl: &Control,
    project: &KeyProject,
    r: &perm::PermServiceListGroupsRequest,
) -> Result<Answer<perm::PermServiceListGroupsResponse>, RequestError> {
    let ix = index(ctl, project).await?;
    read(&ix, reads::perm_list_groups(&ix, r))
}

/// MenuService.ListMenus.
pub async fn list_menus(
    ctl: &Control,
    project: &KeyProject,
    r: &perm::ListMenusRequest,
) -> Result<Answer<perm::ListMenusResponse>, RequestError> {
    let ix = index(ctl, project).await?;
    read(&ix, reads::list_menus(&ix, r))
}

/// GroupService.ListGroups.
pub async fn list_groups(
    ctl: &Control,
    project: &KeyProject,
    r: &perm::ListGroupsRequest,
) -> Result<Answer<perm::ListGroupsResponse>, RequestError> {
    let ix = index(ctl, project).await?;
    read(&ix, reads::list_groups(&ix, r))
}

/// RoleService.GetRole.
pub async fn get_role(
    ctl: &Control,
    project: &KeyProject,
    r: &perm::GetRoleRequest,
) -> Result<Answer<perm::GetRoleResponse>, RequestError> {
    let ix = index(ctl, project).await?;
    read(&ix, reads::get_role(&ix, r))
}

/// RoleService.ListRoles.
pub async fn list_roles(
    ctl: &Control,
    project: &KeyProject,
    r: &perm::ListRolesRequest,
    o: &ReadOpts,
) -> Result<Answer<perm::ListRolesResponse>, RequestError> {
    let ix = index(ctl, project).await?;
    read(&ix, reads::list_roles(&ix, r, o.paging))
}

/// RoleService.GetRolesForUser.
pub async fn get_roles_for_user(
    ctl: &Control,
    project: &KeyProject,
    r: &perm::GetRolesForUserRequest,
    o: &ReadOpts,
) -> Result<Answer<perm::GetRolesForUserResponse>, RequestError> {
    let ix = index(ctl, project).await?;
    read(&ix, reads::roles_for_user(&ix, r, o.effective, o.paging))
}

/// RoleService.GetUsersForRole.
pub async fn get_users_for_role(
    ctl: &Control,
    project: &KeyProject,
    r: &perm::GetUsersForRoleRequest,
    o: &ReadOpts,
) -> Result<Answer<perm::GetUsersForRoleResponse>, RequestError> {
    let ix = index(ctl, project).await?;
    read(&ix, reads::users_for_role(&ix, r, o.effective, o.paging))
}

/// OrgService.ListOrg.
pub async fn list_org(
    ctl: &Control,
    project: &KeyProject,
    _r: &perm::ListOrgRequest,
    o: &ReadOpts,
) -> Result<Answer<perm::ListOrgResponse>, RequestError> {
    let ix = index(ctl, project).await?;
    read(&ix, reads::list_orgs(&ix, o.paging))
}

// ---------------------------------------------------------------------------------------
// Request fields: model.md's reject rules, with errors naming the request's fields.

fn invalid(msg: String) -> RequestError {
    RequestError::Invalid(msg)
}

fn no_nul(v: &str, field: &str) -> Result<(), RequestError> {
    if v.contains('\0') {
        return Err(invalid(format!(
            "`{field}` must not contain the NUL character (\\u0000)"
        )));
    }
    Ok(())
}

/// A key: present, at most `MAX_KEY_BYTES`, no NUL.
fn required<'a>(v: &'a str, field: &str) -> Result<&'a str, RequestError> {
    if v.is_empty() {
        return Err(invalid(format!("`{field}` is required and must not be empty")));
    }
    if v.len() > MAX_KEY_BYTES {
        return Err(invalid(format!(
            "`{field}` is {} bytes; keys are at most {MAX_KEY_BYTES}",
            v.len()
        )));
    }
    no_nul(v, field)?;
    Ok(v)
}

/// A resource type: a key without `:` (it is the type side of `type:key` references and of
/// `type:action` patterns).
fn type_key<'a>(v: &'a str, field: &str) -> Result<&'a str, RequestError> {
    required(v, field)?;
    if v.contains(':') {
        return Err(invalid(format!(
            "`{field}` must not contain `:` (it is a resource type)"
        )));
    }
    Ok(v)
}

/// An optional key: empty means absent.
fn optional<'a>(v: &'a str, field: &str) -> Result<Option<&'a str>, RequestError> {
    if v.is_empty() {
        Ok(None)
    } else {
        required(v, field).map(Some)
    }
}

/// A group given as (`{prefix}group_type`, `{prefix}group_id`): both or neither.
fn group_pair<'a>(t: &'a str, k: &'a str, prefix: &str) -> Result<Option<(&'a str, &'a str)>, RequestError> {
    let (tf, kf) = (format!("{prefix}group_type"), format!("{prefix}group_id"));
    match (t.is_empty(), k.is_empty()) {
        (true, true) => Ok(None),
        (false, true) => Err(invalid(format!("`{kf}` is required when `{tf}` is given"))),
        (true, false) => Err(invalid(format!("`{tf}` is required when `{kf}` is given"))),
        (false, false) => Ok(Some((type_key(t, &tf)?, required(k, &kf)?))),
    }
}

/// Runs the ops through the batch validation of `POST /v1/batches` too: nothing reaches the
/// database that a batch could not carry.
fn checked(ops: Vec<Op>) -> Result<Vec<Op>, RequestError> {
    let body = serde_json::to_vec(&serde_json::json!({ "ops": &ops }))
        .map_err(|e| invalid(format!("the request maps to ops that cannot be encoded: {e}")))?;
    ops_from_json(&body).map_err(|e| invalid(format!("the request maps to an invalid op: {e}")))?;
    Ok(ops)
}

/// One write planned from the current document (see the module doc); the version to answer.
async fn commit<F>(ctl: &Control, project: &KeyProject, plan: F) -> Result<u64, RequestError>
where
    F: Fn(&Snapshot) -> Result<Vec<Op>, RequestError>,
{
    match super::write::write_with(ctl, project.project_id, |s| plan(s).and_then(checked)).await {
        Ok(w) => Ok(w.version),
        Err(e) => {
            if matches!(e, RequestError::Invalid(_)) {
                ctl.metrics.writes.with_label_values(&["rejected"]).inc();
            }
            Err(e)
        }
    }
}

/// Counts a request refused before planning, and passes the error on.
fn refuse<T>(ctl: &Control, r: Result<T, RequestError>) -> Result<T, RequestError> {
    if r.is_err() {
        ctl.metrics.writes.with_label_values(&["rejected"]).inc();
    }
    r
}

// ---------------------------------------------------------------------------------------
// The current document: lookups, and the existence rules of the management APIs.

fn missing(msg: String) -> RequestError {
    RequestError::Missing(msg)
}

fn org_exists(s: &Snapshot, org: &str) -> Result<(), RequestError> {
    if s.orgs.iter().any(|o| o.key == org) {
        Ok(())
    } else {
        Err(missing(format!("`org_id`: org `{org}` does not exist")))
    }
}

/// model.md's role resolution: the role scoped to `org`, else the global one.
fn resolve<'s>(s: &'s Snapshot, org: &str, name: &str) -> Option<&'s Role> {
    s.roles
        .iter()
        .find(|r| r.key == name && r.org.as_deref() == Some(org))
        .or_else(|| s.roles.iter().find(|r| r.key == name && r.org.is_none()))
}

fn resolved<'s>(s: &'s Snapshot, org: &str, name: &str, field: &str) -> Result<&'s Role, RequestError> {
    resolve(s, org, name).ok_or_else(|| missing(format!("`{field}`: role `{name}` does not resolve in org `{org}`")))
}

/// The role of exactly this identity.
fn role_at<'s>(s: &'s Snapshot, org: Option<&str>, name: &str) -> Option<&'s Role> {
    s.roles.iter().find(|r| r.key == name && r.org.as_deref() == org)
}

/// The role with perm/v1 id `id`, as the index finds it (`Index::role_by_id`).
fn role_by_id(s: &Snapshot, id: i32) -> Option<&Role> {
    let wanted = u32::try_from(id).ok().filter(|i| *i > 0)?;
    s.roles.iter().find(|r| r.id == Some(wanted)).or_else(|| {
        let i = usize::try_from(wanted - 1).ok()?;
        s.roles.get(i).filter(|r| r.id.is_none())
    })
}

fn resource<'s>(s: &'s Snapshot, t: &str, k: &str) -> Option<&'s Resource> {
    s.resources.iter().find(|r| r.resource_type == t && r.key == k)
}

/// The instance `t:k` of `org`; NOT_FOUND naming `field` otherwise.
fn in_org<'s>(s: &'s Snapshot, org: &str, t: &str, k: &str, field: &str) -> Result<&'s Resource, RequestError> {
    resource(s, t, k)
        .filter(|r| r.org == org)
        .ok_or_else(|| missing(format!("`{field}`: `{t}:{k}` does not exist in org `{org}`")))
}

fn reference(t: &str, k: &str) -> String {
    format!("{t}:{k}")
}

/// The upsert that makes `t:k` an instance of `org` with `parent` among its parents: created
/// when absent, `None` when it already is. An instance of another org is refused (resource
/// keys are unique across the project).
fn attach(
    s: &Snapshot,
    org: &str,
    (t, k): (&str, &str),
    parent: &str,
    field: &str,
) -> Result<Option<Op>, RequestError> {
    match resource(s, t, k) {
        Some(r) if r.org != org => Err(RequestError::Conflict(format!(
            "`{field}`: `{t}:{k}` already exists in another org"
        ))),
        Some(r) if r.parents.iter().any(|p| p == parent) => Ok(None),
        Some(r) => {
            let mut r = r.clone();
            r.parents.push(parent.to_string());
            Ok(Some(Op::Upsert(Item::Resource(r))))
        }
        None => Ok(Some(Op::Upsert(Item::Resource(Resource {
            resource_type: t.to_string(),
            key: k.to_string(),
            org: org.to_string(),
            parents: vec![parent.to_string()],
            attributes: None,
        })))),
    }
}

fn assignment(user: &str, role: &str, org: &str) -> RoleAssignment {
    RoleAssignment {
        user: user.to_string(),
        role: role.to_string(),
        org: org.to_string(),
        resource: None,
    }
}

fn has_assignment(s: &Snapshot, a: &RoleAssignment) -> bool {
    s.role_assignments.iter().any(|x| x == a)
}

/// What a management delete removes; [`cascade`] writes it and everything that depended on it.
#[derive(Default)]
struct Removal {
    orgs: HashSet<String>,
    /// (org, key)
    roles: HashSet<(Option<String>, String)>,
    /// `type:key`
    resources: HashSet<String>,
}

/// The ops of a cascading delete (control.md "Writes and versions"): the items themselves;
/// assignments and grants in a removed org, on a removed instance, or of a removed role (as
/// each resolves in its own org); instances naming a removed instance as a parent lose that
/// parent; orgs whose parent is removed become roots.
fn cascade(s: &Snapshot, rm: &Removal) -> Vec<Op> {
    let scoped: HashSet<(&str, &str)> = s
        .roles
        .iter()
        .filter_map(|r| r.org.as_deref().map(|o| (o, r.key.as_str())))
        .collect();
    let global: HashSet<&str> = s
        .roles
        .iter()
        .filter(|r| r.org.is_none())
        .map(|r| r.key.as_str())
        .collect();
    let role_gone = |org: &str, name: &str| {
        if scoped.contains(&(org, name)) {
            rm.roles.contains(&(Some(org.to_string()), name.to_string()))
        } else {
            global.contains(name) && rm.roles.contains(&(None, name.to_string()))
        }
    };
    let mut ops = Vec::new();
    for o in &s.orgs {
        if rm.orgs.contains(&o.key) {
            ops.push(Op::Delete(Identity::Org { key: o.key.clone() }));
        } else if o.parent.as_ref().is_some_and(|p| rm.orgs.contains(p)) {
            ops.push(Op::Upsert(Item::Org(Org {
                parent: None,
                ..o.clone()
            })));
        }
    }
    for r in &s.roles {
        if rm.roles.contains(&(r.org.clone(), r.key.clone())) {
            ops.push(Op::Delete(Identity::Role {
                key: r.key.clone(),
                org: r.org.clone(),
            }));
        }
    }
    for r in &s.resources {
        if rm.resources.contains(&reference(&r.resource_type, &r.key)) {
            ops.push(Op::Delete(Identity::Resource {
                resource_type: r.resource_type.clone(),
                key: r.key.clone(),
            }));
        } else if r.parents.iter().any(|p| rm.resources.contains(p)) {
            let mut r = r.clone();
            r.parents.retain(|p| !rm.resources.contains(p));
            ops.push(Op::Upsert(Item::Resource(r)));
        }
    }
    for a in &s.role_assignments {
        if rm.orgs.contains(&a.org)
            || a.resource.as_ref().is_some_and(|x| rm.resources.contains(x))
            || role_gone(&a.org, &a.role)
        {
            ops.push(Op::Delete(Identity::RoleAssignment(a.clone())));
        }
    }
    for g in &s.role_grants {
        if rm.orgs.contains(&g.org) || rm.resources.contains(&g.resource) || role_gone(&g.org, &g.role) {
            ops.push(Op::Delete(Identity::RoleGrant {
                org: g.org.clone(),
                role: g.role.clone(),
                resource: g.resource.clone(),
            }));
        }
    }
    ops
}

/// perm/v1 `Role` of a stored role: `name` the key, `display_name` its name, `status` its
/// `attributes.status`.
fn role_message(r: &Role, id: i32) -> perm::Role {
    perm::Role {
        id,
        name: r.key.clone(),
        status: r
            .attributes
            .as_ref()
            .and_then(|a| a.get("status"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        org_id: r.org.clone().unwrap_or_default(),
        display_name: r.name.clone().unwrap_or_default(),
    }
}

fn stored_id(r: &Role) -> i32 {
    r.id.and_then(|i| i32::try_from(i).ok()).unwrap_or(0)
}

// ---------------------------------------------------------------------------------------
// OrgService

fn parse_create_org(r: &perm::CreateOrgRequest) -> Result<(&str, Option<&str>), RequestError> {
    Ok((required(&r.org_id, "org_id")?, optional(&r.user_id, "user_id")?))
}

/// OrgService.CreateOrg: the org, its scoped `admin` role holding `*:*`, and `user_id` as
/// admin org-wide. Idempotent: what exists is kept (an existing `admin` gets `*:*` back).
pub async fn create_org(
    ctl: &Control,
    project: &KeyProject,
    r: &perm::CreateOrgRequest,
) -> Result<Answer<perm::CreateOrgResponse>, RequestError> {
    let (org, user) = refuse(ctl, parse_create_org(r))?;
    let version = commit(ctl, project, |s| {
        let mut ops = Vec::new();
        if !s.orgs.iter().any(|o| o.key == org) {
            ops.push(Op::Upsert(Item::Org(Org {
                key: org.to_string(),
                parent: None,
                name: None,
                attributes: None,
            })));
        }
        match role_at(s, Some(org), ADMIN) {
            Some(admin)
                if admin
                    .permissions
                    .iter()
                    .any(|p| p.when.is_none() && p.permission == "*:*") => {}
            Some(admin) => {
                let mut admin = admin.clone();
                admin.permissions.push("*:*".into());
                ops.push(Op::Upsert(Item::Role(admin)));
            }
            None => ops.push(Op::Upsert(Item::Role(Role {
                key: ADMIN.into(),
                org: Some(org.to_string()),
                permissions: vec!["*:*".into()],
                ..Role::default()
            }))),
        }
        if let Some(user) = user {
            let a = assignment(user, ADMIN, org);
            if !has_assignment(s, &a) {
                ops.push(Op::Upsert(Item::RoleAssignment(a)));
            }
        }
        Ok(ops)
    })
    .await?;
    Ok(Answer::write(perm::CreateOrgResponse {}, version))
}

/// OrgService.DeleteOrg: the org and everything in it, as explicit deletes in one batch.
pub async fn delete_org(
    ctl: &Control,
    project: &KeyProject,
    r: &perm::DeleteOrgRequest,
) -> Result<Answer<perm::DeleteOrgResponse>, RequestError> {
    let org = refuse(ctl, required(&r.org_id, "org_id"))?;
    let version = commit(ctl, project, |s| {
        org_exists(s, org)?;
        let rm = Removal {
            orgs: HashSet::from([org.to_string()]),
            roles: s
                .roles
                .iter()
                .filter(|r| r.org.as_deref() == Some(org))
                .map(|r| (r.org.clone(), r.key.clone()))
                .collect(),
            resources: s
                .resources
                .iter()
                .filter(|r| r.org == org)
                .map(|r| reference(&r.resource_type, &r.key))
                .collect(),
        };
        Ok(cascade(s, &rm))
    })
    .await?;
    Ok(Answer::write(perm::DeleteOrgResponse {}, version))
}

/// `org_id`, `user_id` and a third key, all required.
fn three<'a>(
    org: &'a str,
    user: &'a str,
    third: &'a str,
    field: &str,
) -> Result<(&'a str, &'a str, &'a str), RequestError> {
    Ok((
        required(org, "org_id")?,
        required(user, "user_id")?,
        required(third, field)?,
    ))
}

/// OrgService.TransferOrg: `new_user_id` gets `admin` in the org, `user_id` loses it (and
/// only it).
pub async fn transfer_org(
    ctl: &Control,
    project: &KeyProject,
    r: &perm::TransferOrgRequest,
) -> Result<Answer<perm::TransferOrgResponse>, RequestError> {
    let (org, from, to) = refuse(ctl, three(&r.org_id, &r.user_id, &r.new_user_id, "new_user_id"))?;
    let version = commit(ctl, project, |s| {
        org_exists(s, org)?;
        resolved(s, org, ADMIN, "org_id")?;
        let mut ops = Vec::new();
        let new = assignment(to, ADMIN, org);
        if !has_assignment(s, &new) {
            ops.push(Op::Upsert(Item::RoleAssignment(new)));
        }
        let old = assignment(from, ADMIN, org);
        if from != to && has_assignment(s, &old) {
            ops.push(Op::Delete(Identity::RoleAssignment(old)));
        }
        Ok(ops)
    })
    .await?;
    Ok(Answer::write(perm::TransferOrgResponse {}, version))
}

// ---------------------------------------------------------------------------------------
// RoleService

type CreateRole<'a> = (&'a perm::Role, Option<&'a str>, &'a str);

fn parse_create_role(r: &perm::CreateRoleRequest) -> Result<CreateRole<'_>, RequestError> {
    let want = r.role.as_ref().ok_or_else(|| invalid("`role` is required".into()))?;
    let name = required(&want.name, "role.name")?;
    let org = optional(&want.org_id, "role.org_id")?;
    no_nul(&want.display_name, "role.display_name")?;
    no_nul(&want.status, "role.status")?;
    if want.id < 0 {
        return Err(invalid(format!(
            "`role.id` is {}; it must be positive (or 0 to assign one)",
            want.id
        )));
    }
    Ok((want, org, name))
}

/// RoleService.CreateRole: role `name` (scoped to `org_id` when set); ALREADY_EXISTS when that
/// role exists. Answers the stored role with its id.
pub async fn create_role(
    ctl: &Control,
    project: &KeyProject,
    r: &perm::CreateRoleRequest,
) -> Result<Answer<perm::CreateRoleResponse>, RequestError> {
    let (want, org, name) = refuse(ctl, parse_create_role(r))?;
    let version = commit(ctl, project, |s| {
        if let Some(org) = org {
            org_exists(s, org).map_err(|_| missing(format!("`role.org_id`: org `{org}` does not exist")))?;
        }
        if role_at(s, org, name).is_some() {
            return Err(RequestError::Conflict(match org {
                Some(o) => format!("role `{name}` already exists in org `{o}`"),
                None => format!("role `{name}` already exists"),
            }));
        }
        let id = u32::try_from(want.id).ok().filter(|i| *i > 0);
        if let Some(id) = id
            && let Some(other) = s.roles.iter().find(|x| x.id == Some(id))
        {
            return Err(RequestError::Conflict(format!(
                "`role.id`: id {id} is held by role `{}`",
                other.key
            )));
        }
        let mut role = Role {
            key: name.to_string(),
            id,
            org: org.map(str::to_string),
            name: non_empty(&want.display_name).map(str::to_string),
            ..Role::default()
        };
        if !want.status.is_empty() {
            role.attributes = Some(Map::from_iter([(
                "status".to_string(),
                Value::from(want.status.clone()),
            )]));
        }
        Ok(vec![Op::Upsert(Item::Role(role))])
    })
    .await?;
    // The id is the write path's: read the role back.
    let now = ctl.snapshots.current(project.project_id).await.map_err(db_error)?;
    let role = match role_at(&now.snapshot, org, name) {
        Some(stored) => role_message(stored, stored_id(stored)),
        None => perm::Role {
            id: 0,
            name: name.to_string(),
            status: want.status.clone(),
            org_id: org.unwrap_or_default().to_string(),
            display_name: want.display_name.clone(),
        },
    };
    Ok(Answer::write(perm::CreateRoleResponse { role: Some(role) }, version))
}

/// The role an Update/Delete names: by `id` when non-zero, else by `name` + `org_id` (exactly
/// that identity: empty `org_id` is the global role).
fn named_role<'s>(s: &'s Snapshot, id: i32, name: &str, org: Option<&str>, at: &str) -> Result<&'s Role, RequestError> {
    if id != 0 {
        return role_by_id(s, id).ok_or_else(|| missing(format!("`{at}id`: no role has id {id}")));
    }
    role_at(s, org, name).ok_or_else(|| {
        missing(match org {
            Some(o) => format!("`{at}name`: role `{name}` does not exist in org `{o}`"),
            None => format!("`{at}name`: role `{name}` does not exist (as a global role)"),
        })
    })
}

/// The name and org of an Update/Delete request; one of `id` or `name` is required.
fn role_selector<'a>(
    id: i32,
    name: &'a str,
    org: &'a str,
    at: &str,
) -> Result<(Option<&'a str>, Option<&'a str>), RequestError> {
    if id < 0 {
        return Err(invalid(format!("`{at}id` is {id}; role ids are positive")));
    }
    let name = optional(name, &format!("{at}name"))?;
    let org = optional(org, &format!("{at}org_id"))?;
    if id == 0 && name.is_none() {
        return Err(invalid(format!("one of `{at}id` or `{at}name` is required")));
    }
    Ok((name, org))
}

fn parse_update_role(r: &perm::UpdateRoleRequest) -> Result<CreateRole<'_>, RequestError> {
    let want = r.role.as_ref().ok_or_else(|| invalid("`role` is required".into()))?;
    let (name, org) = role_selector(want.id, &want.name, &want.org_id, "role.")?;
    no_nul(&want.display_name, "role.display_name")?;
    no_nul(&want.status, "role.status")?;
    Ok((want, org, name.unwrap_or_default()))
}

/// RoleService.UpdateRole: by `id`, or by `name` + `org_id`; non-empty `display_name` and
/// `status` replace the stored ones (empty keeps them). A role is not renamed or moved: with
/// `id`, a `name` or `org_id` other than the role's is refused.
pub async fn update_role(
    ctl: &Control,
    project: &KeyProject,
    r: &perm::UpdateRoleRequest,
) -> Result<Answer<perm::UpdateRoleResponse>, RequestError> {
    let (want, org, name) = refuse(ctl, parse_update_role(r))?;
    let result: Mutex<Option<perm::Role>> = Mutex::new(None);
    let version = commit(ctl, project, |s| {
        let stored = named_role(s, want.id, name, org, "role.")?;
        if want.id != 0 {
            if !name.is_empty() && name != stored.key {
                return Err(invalid(format!(
                    "`role.name`: role {} is `{}`; renaming a role is not supported",
                    want.id, stored.key
                )));
            }
            if org.is_some_and(|o| Some(o) != stored.org.as_deref()) {
                return Err(invalid(format!(
                    "`role.org_id`: role {} belongs to {}; moving a role to another org is not supported",
                    want.id,
                    stored
                        .org
                        .as_deref()
                        .map_or("no org (global)".to_string(), |o| format!("org `{o}`"))
                )));
            }
        }
        let mut role = stored.clone();
        if !want.display_name.is_empty() {
            role.name = Some(want.display_name.clone());
        }
        if !want.status.is_empty() {
            role.attributes
                .get_or_insert_with(Map::new)
                .insert("status".into(), Value::from(want.status.clone()));
        }
        let id = if stored.id.is_some() {
            stored_id(stored)
        } else {
            // A role without an id is found by position; the write gives it one.
            0
        };
        if let Ok(mut slot) = result.lock() {
            *slot = Some(role_message(&role, id));
        }
        Ok(if role == *stored {
            Vec::new()
        } else {
            vec![Op::Upsert(Item::Role(role))]
        })
    })
    .await?;
    let mut role = result.lock().ok().and_then(|mut r| r.take());
    if let Some(m) = role.as_mut().filter(|m| m.id == 0) {
        let now = ctl.snapshots.current(project.project_id).await.map_err(db_error)?;
        let org = non_empty(&m.org_id);
        if let Some(stored) = role_at(&now.snapshot, org, &m.name) {
            m.id = stored_id(stored);
        }
    }
    Ok(Answer::write(perm::UpdateRoleResponse { role }, version))
}

/// RoleService.DeleteRole: by `id`, or by `name` + `org_id`; the role's assignments and grants
/// go with it.
pub async fn delete_role(
    ctl: &Control,
    project: &KeyProject,
    r: &perm::DeleteRoleRequest,
) -> Result<Answer<perm::DeleteRoleResponse>, RequestError> {
    let (name, org) = refuse(ctl, role_selector(r.id, &r.name, &r.org_id, ""))?;
    let version = commit(ctl, project, |s| {
        let stored = named_role(s, r.id, name.unwrap_or_default(), org, "")?;
        let rm = Removal {
            roles: HashSet::from([(stored.org.clone(), stored.key.clone())]),
            ..Removal::default()
        };
        Ok(cascade(s, &rm))
    })
    .await?;
    Ok(Answer::write(perm::DeleteRoleResponse {}, version))
}

/// RoleService.AddRoleForUser: the org-wide assignment; `role_id` is a role name that must
/// resolve in the org.
pub async fn add_role_for_user(
    ctl: &Control,
    project: &KeyProject,
    r: &perm::AddRoleForUserRequest,
) -> Result<Answer<perm::AddRoleForUserResponse>, RequestError> {
    let (org, user, role) = refuse(ctl, three(&r.org_id, &r.user_id, &r.role_id, "role_id"))?;
    let version = commit(ctl, project, |s| {
        org_exists(s, org)?;
        resolved(s, org, role, "role_id")?;
        let a = assignment(user, role, org);
        Ok(if has_assignment(s, &a) {
            Vec::new()
        } else {
            vec![Op::Upsert(Item::RoleAssignment(a))]
        })
    })
    .await?;
    Ok(Answer::write(perm::AddRoleForUserResponse { ok: true }, version))
}

/// RoleService.DelRoleForUser: that org-wide assignment; `role_id` `*`: every assignment of
/// the user in the org (org-wide and on instances).
pub async fn del_role_for_user(
    ctl: &Control,
    project: &KeyProject,
    r: &perm::DelRoleForUserRequest,
) -> Result<Answer<perm::DelRoleForUserResponse>, RequestError> {
    let (org, user, role) = refuse(ctl, three(&r.org_id, &r.user_id, &r.role_id, "role_id"))?;
    let version = commit(ctl, project, |s| {
        org_exists(s, org)?;
        if role == "*" {
            return Ok(s
                .role_assignments
                .iter()
                .filter(|a| a.user == user && a.org == org)
                .map(|a| Op::Delete(Identity::RoleAssignment(a.clone())))
                .collect());
        }
        let a = assignment(user, role, org);
        if has_assignment(s, &a) {
            return Ok(vec![Op::Delete(Identity::RoleAssignment(a))]);
        }
        // Nothing to remove: fine for a role of the org, NOT_FOUND for a name that is none.
        resolved(s, org, role, "role_id")?;
        Ok(Vec::new())
    })
    .await?;
    Ok(Answer::write(perm::DelRoleForUserResponse { ok: true }, version))
}

// ---------------------------------------------------------------------------------------
// PermService.SaveRolePerm

/// (org, role, menus without repeats, (group type, group id, action pattern) per group entry).
type SaveRolePerm<'a> = (&'a str, &'a str, Vec<&'a str>, Vec<(&'a str, &'a str, String)>);

fn parse_save_role_perm(r: &perm::PermServiceSaveRolePermRequest) -> Result<SaveRolePerm<'_>, RequestError> {
    let org = required(&r.org_id, "org_id")?;
    let role = required(&r.role_id, "role_id")?;
    let mut menus: Vec<&str> = Vec::new();
    for (i, m) in r.menus.iter().enumerate() {
        let m = required(m, &format!("menus[{i}]"))?;
        if !menus.contains(&m) {
            menus.push(m);
        }
    }
    let mut groups = Vec::new();
    for (i, g) in r.groups.iter().enumerate() {
        let t = type_key(&g.res_type, &format!("groups[{i}].res_type"))?;
        let gt = type_key(&g.group_type, &format!("groups[{i}].group_type"))?;
        let gid = required(&g.group_id, &format!("groups[{i}].group_id"))?;
        groups.push((gt, gid, format!("{t}:*")));
    }
    Ok((org, role, menus, groups))
}

/// PermService.SaveRolePerm: replaces the role's `menus`, and its grants in the org with one
/// grant per group (`group_type:group_id`, actions `<res_type>:*` of every entry naming it).
pub async fn save_role_perm(
    ctl: &Control,
    project: &KeyProject,
    r: &perm::PermServiceSaveRolePermRequest,
) -> Result<Answer<perm::PermServiceSaveRolePermResponse>, RequestError> {
    let (org, role, menus, groups) = refuse(ctl, parse_save_role_perm(r))?;
    let version = commit(ctl, project, |s| {
        org_exists(s, org)?;
        let stored = resolved(s, org, role, "role_id")?;
        for (i, m) in menus.iter().enumerate() {
            if !s.menus.iter().any(|x| x.code == *m) {
                return Err(missing(format!("`menus[{i}]`: no menu item has code `{m}`")));
            }
        }
        let mut wanted: Vec<RoleGrant> = Vec::new();
        for (i, (gt, gid, action)) in groups.iter().enumerate() {
            in_org(s, org, gt, gid, &format!("groups[{i}].group_id"))?;
            let res = reference(gt, gid);
            match wanted.iter_mut().find(|g| g.resource == res) {
                Some(g) if g.actions.contains(action) => {}
                Some(g) => g.actions.push(action.clone()),
                None => wanted.push(RoleGrant {
                    when: None,
                    org: org.to_string(),
                    role: role.to_string(),
                    resource: res,
                    actions: vec![action.clone()],
                }),
            }
        }
        let mut ops = Vec::new();
        let new_menus: Vec<String> = menus.iter().map(|m| m.to_string()).collect();
        if stored.menus != new_menus {
            ops.push(Op::Upsert(Item::Role(Role {
                menus: new_menus,
                ..stored.clone()
            })));
        }
        for g in s.role_grants.iter().filter(|g| g.org == org && g.role == role) {
            if !wanted.iter().any(|w| w.resource == g.resource) {
                ops.push(Op::Delete(Identity::RoleGrant {
                    org: g.org.clone(),
                    role: g.role.clone(),
                    resource: g.resource.clone(),
                }));
            }
        }
        for w in wanted {
            if !s.role_grants.contains(&w) {
                ops.push(Op::Upsert(Item::RoleGrant(w)));
            }
        }
        Ok(ops)
    })
    .await?;
    Ok(Answer::write(perm::PermServiceSaveRolePermResponse {}, version))
}

// ---------------------------------------------------------------------------------------
// GroupService

type Group<'a> = (&'a str, &'a str);
type CreateGroup<'a> = (&'a str, Group<'a>, Option<Group<'a>>, Vec<Group<'a>>);

fn parse_create_group(r: &perm::CreateGroupRequest) -> Result<CreateGroup<'_>, RequestError> {
    let org = required(&r.org_id, "org_id")?;
    let group = group_pair(&r.group_type, &r.group_id, "")?
        .ok_or_else(|| invalid("`group_type` and `group_id` are required".into()))?;
    let parent = group_pair(&r.parent_group_type, &r.parent_group_id, "parent_")?;
    if parent == Some(group) {
        return Err(invalid("`parent_group_id`: a group cannot be its own parent".into()));
    }
    let mut children = Vec::new();
    if r.children.is_empty() {
        optional(&r.res_type, "res_type")?;
        return Ok((org, group, parent, children));
    }
    let t = type_key(&r.res_type, "res_type").map_err(|e| invalid(format!("{e} (the type of `children`)")))?;
    for (i, c) in r.children.iter().enumerate() {
        let c = required(c, &format!("children[{i}]"))?;
        if (t, c) == group {
            return Err(invalid(format!("`children[{i}]` is the group itself")));
        }
        if !children.contains(&(t, c)) {
            children.push((t, c));
        }
    }
    Ok((org, group, parent, children))
}

/// GroupService.CreateGroup: the instance `group_type:group_id` in the org, under the parent
/// group when given (added to its parents when it exists); each child `res_type:child` gets
/// the group as a parent (created when absent).
pub async fn create_group(
    ctl: &Control,
    project: &KeyProject,
    r: &perm::CreateGroupRequest,
) -> Result<Answer<perm::CreateGroupResponse>, RequestError> {
    let (org, group, parent, children) = refuse(ctl, parse_create_group(r))?;
    let version = commit(ctl, project, |s| {
        org_exists(s, org)?;
        let mut ops = Vec::new();
        let parent_ref = match parent {
            Some((t, k)) => {
                in_org(s, org, t, k, "parent_group_id")?;
                Some(reference(t, k))
            }
            None => None,
        };
        match (resource(s, group.0, group.1), &parent_ref) {
            (Some(g), _) if g.org != org => {
                return Err(RequestError::Conflict(format!(
                    "`group_id`: `{}:{}` already exists in another org",
                    group.0, group.1
                )));
            }
            (Some(_), None) => {}
            (Some(_), Some(p)) | (None, Some(p)) => {
                ops.extend(attach(s, org, group, p, "group_id")?);
            }
            (None, None) => ops.push(Op::Upsert(Item::Resource(Resource {
                resource_type: group.0.to_string(),
                key: group.1.to_string(),
                org: org.to_string(),
                parents: Vec::new(),
                attributes: None,
            }))),
        }
        let group_ref = reference(group.0, group.1);
        for (i, child) in children.iter().enumerate() {
            ops.extend(attach(s, org, *child, &group_ref, &format!("children[{i}]"))?);
        }
        Ok(ops)
    })
    .await?;
    Ok(Answer::write(perm::CreateGroupResponse {}, version))
}

fn parse_delete_group(r: &perm::DeleteGroupRequest) -> Result<(&str, Group<'_>), RequestError> {
    let org = required(&r.org_id, "org_id")?;
    let group = group_pair(&r.group_type, &r.group_id, "")?
        .ok_or_else(|| invalid("`group_type` and `group_id` are required".into()))?;
    group_pair(&r.parent_group_type, &r.parent_group_id, "parent_")?;
    optional(&r.res_type, "res_type")?;
    Ok((org, group))
}

/// GroupService.DeleteGroup: the group instance (NOT_FOUND when the org has none); its
/// children lose it as a parent, grants and instance assignments on it go with it. The
/// `parent_group_*` fields are checked but not needed (a group is one instance).
pub async fn delete_group(
    ctl: &Control,
    project: &KeyProject,
    r: &perm::DeleteGroupRequest,
) -> Result<Answer<perm::DeleteGroupResponse>, RequestError> {
    let (org, group) = refuse(ctl, parse_delete_group(r))?;
    let version = commit(ctl, project, |s| {
        org_exists(s, org)?;
        in_org(s, org, group.0, group.1, "group_id")?;
        let rm = Removal {
            resources: HashSet::from([reference(group.0, group.1)]),
            ..Removal::default()
        };
        Ok(cascade(s, &rm))
    })
    .await?;
    Ok(Answer::write(perm::DeleteGroupResponse {}, version))
}

type MoveGroup<'a> = (&'a str, Group<'a>, Option<Group<'a>>, Option<Group<'a>>);

fn parse_move_group(r: &perm::MoveGroupRequest) -> Result<MoveGroup<'_>, RequestError> {
    let org = required(&r.org_id, "org_id")?;
    let cur = group_pair(&r.cur_group_type, &r.cur_group_id, "cur_")?
        .ok_or_else(|| invalid("`cur_group_type` and `cur_group_id` are required".into()))?;
    let from = group_pair(&r.from_group_type, &r.from_group_id, "from_")?;
    let to = group_pair(&r.to_group_type, &r.to_group_id, "to_")?;
    optional(&r.res_type, "res_type")?;
    if to == Some(cur) {
        return Err(invalid("`to_group_id`: a group cannot be moved under itself".into()));
    }
    Ok((org, cur, from, to))
}

/// GroupService.MoveGroup: the group `cur_group_*` loses its parent `from_group_*` (none: it
/// was at the root) and gets `to_group_*` (none: it goes to the root).
pub async fn move_group(
    ctl: &Control,
    project: &KeyProject,
    r: &perm::MoveGroupRequest,
) -> Result<Answer<perm::MoveGroupResponse>, RequestError> {
    let (org, cur, from, to) = refuse(ctl, parse_move_group(r))?;
    let version = commit(ctl, project, |s| {
        org_exists(s, org)?;
        let stored = in_org(s, org, cur.0, cur.1, "cur_group_id")?;
        let to_ref = match to {
            Some((t, k)) => {
                in_org(s, org, t, k, "to_group_id")?;
                Some(reference(t, k))
            }
            None => None,
        };
        let mut parents = stored.parents.clone();
        if let Some((t, k)) = from {
            let from_ref = reference(t, k);
            match parents.iter().position(|p| *p == from_ref) {
                Some(i) => {
                    parents.remove(i);
                }
                // Already moved (a retry): nothing to do.
                None if to_ref.as_ref().is_some_and(|t| parents.contains(t)) => return Ok(Vec::new()),
                None => {
                    return Err(missing(format!(
                        "`from_group_id`: `{from_ref}` is not a parent of `{}:{}`",
                        cur.0, cur.1
                    )));
                }
            }
        }
        if let Some(t) = to_ref
            && !parents.contains(&t)
        {
            parents.push(t);
        }
        if parents == stored.parents {
            return Ok(Vec::new());
        }
        Ok(vec![Op::Upsert(Item::Resource(Resource {
            parents,
            ..stored.clone()
        }))])
    })
    .await?;
    Ok(Answer::write(perm::MoveGroupResponse {}, version))
}

type ResForGroup<'a> = (&'a str, Group<'a>, Group<'a>);

fn res_for_group<'a>(
    org_id: &'a str,
    res_type: &'a str,
    gt: &'a str,
    gid: &'a str,
    res_id: &'a str,
) -> Result<ResForGroup<'a>, RequestError> {
    let org = required(org_id, "org_id")?;
    let group = group_pair(gt, gid, "")?.ok_or_else(|| invalid("`group_type` and `group_id` are required".into()))?;
    let res = (type_key(res_type, "res_type")?, required(res_id, "res_id")?);
    if res == group {
        return Err(invalid("`res_id`: a group cannot contain itself".into()));
    }
    Ok((org, group, res))
}

/// GroupService.AddResForGroup: the group becomes a parent of `res_type:res_id` (created in
/// the org when absent).
pub async fn add_res_for_group(
    ctl: &Control,
    project: &KeyProject,
    r: &perm::AddResForGroupRequest,
) -> Result<Answer<perm::AddResForGroupResponse>, RequestError> {
    let (org, group, res) = refuse(
        ctl,
        res_for_group(&r.org_id, &r.res_type, &r.group_type, &r.group_id, &r.res_id),
    )?;
    let version = commit(ctl, project, |s| {
        org_exists(s, org)?;
        in_org(s, org, group.0, group.1, "group_id")?;
        Ok(attach(s, org, res, &reference(group.0, group.1), "res_id")?
            .into_iter()
            .collect())
    })
    .await?;
    Ok(Answer::write(perm::AddResForGroupResponse {}, version))
}

/// GroupService.DelResForGroup: `res_type:res_id` loses the group as a parent (the instance
/// stays).
pub async fn del_res_for_group(
    ctl: &Control,
    project: &KeyProject,
    r: &perm::DelResForGroupRequest,
) -> Result<Answer<perm::DelResForGroupResponse>, RequestError> {
    let (org, group, res) = refuse(
        ctl,
        res_for_group(&r.org_id, &r.res_type, &r.group_type, &r.group_id, &r.res_id),
    )?;
    let version = commit(ctl, project, |s| {
        org_exists(s, org)?;
        let stored = in_org(s, org, res.0, res.1, "res_id")?;
        let group_ref = reference(group.0, group.1);
        if !stored.parents.contains(&group_ref) {
            return Ok(Vec::new());
        }
        let mut r = stored.clone();
        r.parents.retain(|p| *p != group_ref);
        Ok(vec![Op::Upsert(Item::Resource(r))])
    })
    .await?;
    Ok(Answer::write(perm::DelResForGroupResponse {}, version))
}

// ---------------------------------------------------------------------------------------
// JSON: `POST /perm.v1.<Service>/<Method>`

/// The names of read fields a JSON body may carry beside the message.
const READ_FIELDS: [&str; 3] = ["limit", "cursor", "effective"];

/// The first field of `input` that `known` (the decoded message, encoded again) lacks.
fn unknown_field(input: &Value, known: &Value, at: &str) -> Option<String> {
    match (input, known) {
        (Value::Object(i), Value::Object(k)) => i.iter().find_map(|(name, v)| {
            let path = if at.is_empty() {
                name.clone()
            } else {
                format!("{at}.{name}")
            };
            match k.get(name) {
                None => Some(path),
                Some(kv) => unknown_field(v, kv, &path),
            }
        }),
        (Value::Array(i), Value::Array(k)) => i
            .iter()
            .zip(k)
            .enumerate()
            .find_map(|(n, (v, kv))| unknown_field(v, kv, &format!("{at}[{n}]"))),
        _ => None,
    }
}

/// Decodes the request message (proto field names; absent fields default as in proto3;
/// unknown fields refused, as protojson does) and, for paged reads, `limit`, `cursor` and
/// `effective` beside it.
fn decode<T: DeserializeOwned + Serialize>(body: &[u8], paged: bool) -> Result<(T, ReadOpts), RequestError> {
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    let mut value: Value = serde_json::from_slice(body).map_err(|e| invalid(format!("body is not valid JSON: {e}")))?;
    let Value::Object(fields) = &mut value else {
        return Err(invalid("the body must be a JSON object: the request message".into()));
    };
    let mut opts = ReadOpts::default();
    if paged {
        let limit = match fields.remove("limit") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_u64()
                    .ok_or_else(|| invalid(format!("`limit` is {v}; it must be an unsigned integer")))?,
            ),
        };
        let cursor = match fields.remove("cursor") {
            None | Some(Value::Null) => None,
            Some(Value::String(c)) => Some(c),
            Some(v) => return Err(invalid(format!("`cursor` is {v}; it must be a string"))),
        };
        opts.effective = match fields.remove("effective") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => b,
            Some(v) => return Err(invalid(format!("`effective` is {v}; it must be true or false"))),
        };
        opts.paging = Paging::parse(limit, cursor.as_deref(), "")?;
    }
    let bytes = serde_json::to_vec(&value).map_err(|e| invalid(format!("body: {e}")))?;
    let msg: T = crate::wire::decode(&bytes)?;
    let known = serde_json::to_value(&msg).map_err(|e| invalid(format!("body: {e}")))?;
    if let Some(path) = unknown_field(&value, &known, "") {
        let extra = if paged && !path.contains(['.', '[']) {
            format!(
                " (besides the message's fields only {} are read)",
                READ_FIELDS.join(", ")
            )
        } else {
            String::new()
        };
        return Err(invalid(format!(
            "`{path}`: unknown field of the request message{extra}"
        )));
    }
    Ok((msg, opts))
}

/// The JSON answer: the response message, `X-Permd-Version`, and the paging headers.
fn json_answer<T: Serialize>(a: Answer<T>) -> Result<Response<Body>, RequestError> {
    let body = serde_json::to_value(&a.body)
        .map_err(|e| RequestError::Unavailable(format!("cannot encode the answer: {e}")))?;
    let mut resp = written(StatusCode::OK, a.version, &body);
    if let Some(c) = a.next_cursor.and_then(|c| HeaderValue::from_str(&c).ok()) {
        resp.headers_mut().insert(NEXT_CURSOR, c);
    }
    if a.truncated {
        resp.headers_mut().insert(TRUNCATED, HeaderValue::from_static("true"));
    }
    Ok(resp)
}

/// `POST /perm.v1.<Service>/<Method>` with the request message as JSON (proto field names),
/// answered with the response message as JSON.
pub async fn route_json(
    ctl: &Arc<Control>,
    project: &KeyProject,
    path: &str,
    body: &[u8],
) -> Result<Response<Body>, RequestError> {
    // A read with paging/effective.
    macro_rules! paged {
        ($f:ident) => {{
            let (req, opts) = decode(body, true)?;
            json_answer($f(ctl, project, &req, &opts).await?)
        }};
    }
    // Any other RPC: the message alone.
    macro_rules! plain {
        ($f:ident) => {{
            let (req, _) = decode(body, false)?;
            json_answer($f(ctl, project, &req).await?)
        }};
    }
    match path {
        "/perm.v1.PermService/Enforce" => plain!(enforce),
        "/perm.v1.PermService/ListResources" => paged!(list_resources),
        "/perm.v1.PermService/ListMenus" => plain!(perm_list_menus),
        "/perm.v1.PermService/ListGroups" => plain!(perm_list_groups),
        "/perm.v1.PermService/SaveRolePerm" => plain!(save_role_perm),
        "/perm.v1.RoleService/CreateRole" => plain!(create_role),
        "/perm.v1.RoleService/DeleteRole" => plain!(delete_role),
        "/perm.v1.RoleService/UpdateRole" => plain!(update_role),
        "/perm.v1.RoleService/GetRole" => plain!(get_role),
        "/perm.v1.RoleService/ListRoles" => paged!(list_roles),
        "/perm.v1.RoleService/AddRoleForUser" => plain!(add_role_for_user),
        "/perm.v1.RoleService/DelRoleForUser" => plain!(del_role_for_user),
        "/perm.v1.RoleService/GetRolesForUser" => paged!(get_roles_for_user),
        "/perm.v1.RoleService/GetUsersForRole" => paged!(get_users_for_role),
        "/perm.v1.GroupService/CreateGroup" => plain!(create_group),
        "/perm.v1.GroupService/DeleteGroup" => plain!(delete_group),
        "/perm.v1.GroupService/MoveGroup" => plain!(move_group),
        "/perm.v1.GroupService/ListGroups" => plain!(list_groups),
        "/perm.v1.GroupService/AddResForGroup" => plain!(add_res_for_group),
        "/perm.v1.GroupService/DelResForGroup" => plain!(del_res_for_group),
        "/perm.v1.MenuService/ListMenus" => plain!(list_menus),
        "/perm.v1.OrgService/CreateOrg" => plain!(create_org),
        "/perm.v1.OrgService/DeleteOrg" => plain!(delete_org),
        "/perm.v1.OrgService/TransferOrg" => plain!(transfer_org),
        "/perm.v1.OrgService/ListOrg" => paged!(list_org),
        _ => Err(RequestError::NotFound(path.to_owned())),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    fn doc(yaml: &str) -> Snapshot {
        Snapshot::load(yaml.as_bytes(), crate::model::Encoding::Yaml).unwrap()
    }

    #[test]
    fn cascade_follows_resolution() {
        let s = doc(
            "format: 1\nversion: 1\norgs: [{key: a}, {key: b}, {key: c, parent: a}]\n\
             roles: [{key: viewer}, {key: viewer, org: b}, {key: admin, org: a}]\n\
             resources: [{type: site, key: hq, org: a}, {type: cam, key: c1, org: a, parents: ['site:hq']}]\n\
             role_assignments: [{user: u, role: viewer, org: a}, {user: u, role: viewer, org: b},\n\
               {user: v, role: admin, org: a, resource: 'site:hq'}]\n\
             role_grants: [{org: a, role: admin, resource: 'site:hq', actions: ['cam:*']}]\n",
        );
        // The global viewer: only the assignment in `a` resolves to it.
        let rm = Removal {
            roles: HashSet::from([(None, "viewer".to_string())]),
            ..Removal::default()
        };
        let ops = cascade(&s, &rm);
        assert_eq!(ops.len(), 2, "{ops:?}");
        assert!(ops.contains(&Op::Delete(Identity::RoleAssignment(assignment("u", "viewer", "a")))));
        // The org `a`: its role, instances, assignments, grant; `c` becomes a root.
        let rm = Removal {
            orgs: HashSet::from(["a".to_string()]),
            roles: HashSet::from([(Some("a".to_string()), "admin".to_string())]),
            resources: HashSet::from(["site:hq".to_string(), "cam:c1".to_string()]),
        };
        let ops = cascade(&s, &rm);
        let mut after = s.clone();
        after.apply_ops(&ops);
        assert_eq!(after.orgs.len(), 2);
        assert_eq!(after.orgs[1].parent, None);
        assert!(after.resources.is_empty() && after.role_grants.is_empty());
        assert_eq!(after.role_assignments, vec![assignment("u", "viewer", "b")]);
        assert_eq!(after.roles.len(), 2);
    }

    #[test]
    fn unknown_fields_are_named() {
        let (r, _) = decode::<perm::CreateRoleRequest>(br#"{"role": {"name": "x"}}"#, false).unwrap();
        assert_eq!(r.role.unwrap().name, "x");
        let e = decode::<perm::CreateRoleRequest>(br#"{"role": {"nmae": "x"}}"#, false).unwrap_err();
        assert!(e.to_string().contains("`role.nmae`"), "{e}");
        let e =
            decode::<perm::PermServiceSaveRolePermRequest>(br#"{"groups": [{"res_typ": "x"}]}"#, false).unwrap_err();
        assert!(e.to_string().contains("`groups[0].res_typ`"), "{e}");
        let e = decode::<perm::DeleteRoleRequest>(br#"{"id": "x"}"#, false).unwrap_err();
        assert!(e.to_string().contains("`id`"), "{e}");
        let (_, o) = decode::<perm::ListRolesRequest>(br#"{"limit": 2, "effective": true}"#, true).unwrap();
        assert_eq!((o.paging.limit, o.effective), (2, true));
        assert!(decode::<perm::CreateOrgRequest>(br#"{"limit": 2}"#, false).is_err());
    }
}
