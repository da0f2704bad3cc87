//! The gRPC face (tonic): perm/v1 `PermService`, `RoleService`, `GroupService`, `MenuService`
//! and `OrgService` (reads from the index, writes UNIMPLEMENTED: they belong to the control
//! plane) and the `permd.v1` service (`Check`, `CheckBulk`, `WatchVersion`), answered from the
//! same index as HTTP, plus
//! `grpc.health.v1.Health` and server reflection. Decode, call the index, encode; errors map
//! to status codes in one place (`status`).

use crate::api::forward::Forwarder;
use crate::api::http::RequestError;
use crate::api::reads::{self, Paged, Paging};
use crate::cond::RequestData;
use crate::index::{Decision, Index, Query, Subject};
use crate::store::Store;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio_stream::{Stream, StreamExt};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Request, Response, Status};

pub mod envoy;

#[allow(clippy::all, clippy::unwrap_used, clippy::expect_used, clippy::panic)]
pub mod perm {
    tonic::include_proto!("perm.v1");
}
#[allow(clippy::all, clippy::unwrap_used, clippy::expect_used, clippy::panic)]
pub mod permd {
    tonic::include_proto!("permd.v1");
}

/// The encoded descriptors of every served proto, for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("permd_descriptor");

/// Most checks in one `CheckBulk`.
const MAX_BATCH: usize = 1000;
const MAX_WAIT_MS: u64 = 60_000;

/// What both services share.
#[derive(Clone)]
pub struct GrpcState {
    pub store: Arc<Store>,
    /// Where the perm/v1 writes go.
    pub forward: Arc<Forwarder>,
    /// Where Envoy ext_authz requests' subject and tenant come from (`envoy.rs`).
    pub proxy: Arc<crate::api::proxy::ProxySettings>,
}

/// The one place errors become gRPC statuses.
fn status(e: RequestError) -> Status {
    e.into_status()
}

fn non_empty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

impl GrpcState {
    /// The index to answer from, honouring `x-permd-min-version` / `x-permd-wait-ms`.
    async fn index(&self, md: &MetadataMap) -> Result<Arc<Index>, Status> {
        let num = |name: &str| -> Result<Option<u64>, Status> {
            match md.get(name) {
                None => Ok(None),
                Some(v) => v
                    .to_str()
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                    .map(Some)
                    .ok_or_else(|| Status::invalid_argument(format!("metadata `{name}` must be an unsigned integer"))),
            }
        };
        match num("x-permd-min-version")? {
            None => self
                .store
                .load()
                .ok_or_else(|| status(RequestError::Unavailable("no snapshot is active yet".into()))),
            Some(min) => {
                let wait_ms = num("x-permd-wait-ms")?.unwrap_or(1000).min(MAX_WAIT_MS);
                self.store
                    .at_least(min, Duration::from_millis(wait_ms))
                    .await
                    .ok_or_else(|| {
                        status(RequestError::VersionNotReached {
                            min,
                            wait_ms,
                            active: self
                                .store
                                .load()
                                .map_or_else(|| "none".into(), |i| i.version().to_string()),
                        })
                    })
            }
        }
    }
}

/// A response carrying `x-permd-version`.
fn versioned<T>(body: T, version: u64) -> Response<T> {
    let mut resp = Response::new(body);
    resp.metadata_mut()
        .insert("x-permd-version", MetadataValue::from(version));
    resp
}

fn required<'a>(v: &'a str, field: &str) -> Result<&'a str, Status> {
    non_empty(v).ok_or_else(|| Status::invalid_argument(format!("`{field}` is required and must not be empty")))
}

fn enforce_query(r: &perm::EnforceRequest) -> Result<Query<'_>, Status> {
    let subject = match (non_empty(&r.user_id), non_empty(&r.role_id)) {
        (Some(u), _) => Subject::User(u),
        (None, Some(role)) => Subject::Role(role),
        (None, None) => return Err(Status::invalid_argument("one of `user_id` or `role_id` is required")),
    };
    Ok(Query {
        subject,
        action: required(&r.act, "act")?,
        resource_type: required(&r.res_type, "res_type")?,
        resource_key: non_empty(&r.res_id),
        org: non_empty(&r.org_id),
        group_type: non_empty(&r.group_type),
        request: None,
    })
}

/// Paging from `x-permd-limit` and `x-permd-cursor` (perm/v1 messages have no such fields).
fn paging(md: &MetadataMap) -> Result<Paging, Status> {
    let text = |name: &str| -> Result<Option<&str>, Status> {
        md.get(name)
            .map(|v| {
                v.to_str()
                    .map_err(|_| Status::invalid_argument(format!("metadata `{name}` is not text")))
            })
            .transpose()
    };
    let limit = match text("x-permd-limit")? {
        None => None,
        Some(v) => Some(
            v.trim()
                .parse::<u64>()
                .map_err(|_| Status::invalid_argument("metadata `x-permd-limit` must be an unsigned integer"))?,
        ),
    };
    let cursor = text("x-permd-cursor")?;
    Paging::parse(limit, cursor, "x-permd-").map_err(status)
}

/// `x-permd-effective: true` asks GetRolesForUser / GetUsersForRole for inherited roles too.
fn effective(md: &MetadataMap) -> Result<bool, Status> {
    match md.get("x-permd-effective").map(|v| v.to_str().unwrap_or("")) {
        None | Some("false" | "0") => Ok(false),
        Some("true" | "1") => Ok(true),
        Some(_) => Err(Status::invalid_argument(
            "metadata `x-permd-effective` must be `true` or `false`",
        )),
    }
}

/// A read answer with its version, and `x-permd-next-cursor` / `x-permd-truncated` when the
/// list goes on or the tree was cut.
fn answer<T>(r: Result<Paged<T>, RequestError>, ix: &Index) -> Result<Response<T>, Status> {
    let p = r.map_err(status)?;
    let mut resp = versioned(p.body, ix.version());
    if let Some(c) = p.next_cursor.and_then(|c| MetadataValue::try_from(c).ok()) {
        resp.metadata_mut().insert("x-permd-next-cursor", c);
    }
    if p.truncated {
        resp.metadata_mut()
            .insert("x-permd-truncated", MetadataValue::from_static("true"));
    }
    Ok(resp)
}

#[tonic::async_trait]
impl perm::perm_service_server::PermService for GrpcState {
    async fn enforce(&self, req: Request<perm::EnforceRequest>) -> Result<Response<perm::EnforceResponse>, Status> {
        let started = std::time::Instant::now();
        let q = enforce_query(req.get_ref())?;
        let ix = self.index(req.metadata()).await?;
        let d = ix.decide(&q);
        let r = req.get_ref();
        crate::metrics::record_decisions(
            crate::metrics::Api::GrpcEnforce,
            started,
            &[d.reason],
            d.version,
            || {
                serde_json::json!({
                    "org_id": r.org_id, "user_id": r.user_id, "role_id": r.role_id, "res_type": r.res_type,
                    "group_type": r.group_type, "res_id": r.res_id, "act": r.act,
                })
            },
            request_id(req.metadata()).as_ref(),
        );
        Ok(versioned(
            perm::EnforceResponse {
                ok: d.allow,
                code: d.reason.as_str().into(),
            },
            d.version,
        ))
    }

    async fn list_resources(
        &self,
        req: Request<perm::PermServiceListResourcesRequest>,
    ) -> Result<Response<perm::PermServiceListResourcesResponse>, Status> {
        let p = paging(req.metadata())?;
        let ix = self.index(req.metadata()).await?;
        answer(reads::list_resources(&ix, req.get_ref(), p), &ix)
    }

    async fn list_menus(
        &self,
        req: Request<perm::PermServiceListMenusRequest>,
    ) -> Result<Response<perm::PermServiceListMenusResponse>, Status> {
        let ix = self.index(req.metadata()).await?;
        answer(reads::perm_list_menus(&ix, req.get_ref()), &ix)
    }

    async fn list_groups(
        &self,
        req: Request<perm::PermServiceListGroupsRequest>,
    ) -> Result<Response<perm::PermServiceListGroupsResponse>, Status> {
        let ix = self.index(req.metadata()).await?;
        answer(reads::perm_list_groups(&ix, req.get_ref()), &ix)
    }

    async fn save_role_perm(
        &self,
        req: Request<perm::PermServiceSaveRolePermRequest>,
    ) -> Result<Response<perm::PermServiceSaveRolePermResponse>, Status> {
        self.forward.rpc("PermService", "SaveRolePerm", req).await
    }
}

/// A JSON object given as text in a request field; empty: none.
fn json_object(text: &str, field: &str) -> Result<Option<crate::model::Attributes>, Status> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(m)) => Ok(Some(m)),
        Ok(_) => Err(Status::invalid_argument(format!("`{field}` must be a JSON object"))),
        Err(e) => Err(Status::invalid_argument(format!("`{field}` is not JSON: {e}"))),
    }
}

/// The request data of a permd.v1 check (model.md §5), when it carries any.
fn check_data(r: &permd::CheckRequest, at: &str) -> Result<Option<RequestData>, Status> {
    let data = RequestData {
        user: json_object(&r.user_attributes_json, &format!("{at}user_attributes_json"))?,
        resource: json_object(&r.resource_attributes_json, &format!("{at}resource_attributes_json"))?,
        context: json_object(&r.context_json, &format!("{at}context_json"))?,
        now_unix_nanos: None,
    };
    Ok((!data.is_empty()).then_some(data))
}

fn check_query<'a>(
    r: &'a permd::CheckRequest,
    at: &str,
    request: Option<&'a RequestData>,
) -> Result<Query<'a>, Status> {
    let subject = match (non_empty(&r.user), non_empty(&r.role)) {
        (Some(_), Some(_)) => {
            return Err(Status::invalid_argument(format!(
                "{at}give one of `user` or `role`, not both"
            )));
        }
        (Some(u), None) => Subject::User(u),
        (None, Some(role)) => Subject::Role(role),
        (None, None) => {
            return Err(Status::invalid_argument(format!(
                "`{at}user` (or `{at}role`) is required"
            )));
        }
    };
    let res = r
        .resource
        .as_ref()
        .ok_or_else(|| Status::invalid_argument(format!("`{at}resource` is required")))?;
    Ok(Query {
        subject,
        action: required(&r.action, &format!("{at}action"))?,
        resource_type: required(&res.r#type, &format!("{at}resource.type"))?,
        resource_key: non_empty(&res.key),
        org: non_empty(&res.tenant),
        group_type: None,
        request,
    })
}

fn check_response(ix: &Index, q: &Query<'_>, d: &Decision, explain: bool) -> permd::CheckResponse {
    permd::CheckResponse {
        allow: d.allow,
        reason: d.reason.as_str().into(),
        version: d.version,
        debug_json: if explain {
            serde_json::to_string(&ix.explain(q, d)).unwrap_or_default()
        } else {
            String::new()
        },
    }
}

/// A check request as JSON, for the decision log.
fn check_json(c: &permd::CheckRequest) -> serde_json::Value {
    let res = c.resource.as_ref();
    serde_json::json!({
        "user": c.user, "role": c.role, "action": c.action,
        "resource": {
            "type": res.map(|r| r.r#type.as_str()), "key": res.map(|r| r.key.as_str()),
            "tenant": res.map(|r| r.tenant.as_str()),
        },
    })
}

/// The client's `x-request-id` metadata.
fn request_id(md: &MetadataMap) -> Option<http::HeaderValue> {
    md.get("x-request-id")
        .and_then(|v| http::HeaderValue::from_bytes(v.as_bytes()).ok())
}

type VersionStream = Pin<Box<dyn Stream<Item = Result<permd::VersionEvent, Status>> + Send>>;

#[tonic::async_trait]
impl permd::permd_service_server::PermdService for GrpcState {
    async fn check(&self, req: Request<permd::CheckRequest>) -> Result<Response<permd::CheckResponse>, Status> {
        let started = std::time::Instant::now();
        let data = check_data(req.get_ref(), "")?;
        let q = check_query(req.get_ref(), "", data.as_ref())?;
        let ix = self.index(req.metadata()).await?;
        let d = ix.decide(&q);
        crate::metrics::record_decisions(
            crate::metrics::Api::GrpcCheck,
            started,
            &[d.reason],
            d.version,
            || check_json(req.get_ref()),
            request_id(req.metadata()).as_ref(),
        );
        Ok(versioned(check_response(&ix, &q, &d, req.get_ref().explain), d.version))
    }

    async fn check_bulk(
        &self,
        req: Request<permd::CheckBulkRequest>,
    ) -> Result<Response<permd::CheckBulkResponse>, Status> {
        let started = std::time::Instant::now();
        let checks = &req.get_ref().checks;
        if checks.len() > MAX_BATCH {
            return Err(Status::invalid_argument(format!(
                "{} checks given; at most {MAX_BATCH} per request",
                checks.len()
            )));
        }
        let data = checks
            .iter()
            .enumerate()
            .map(|(i, c)| check_data(c, &format!("checks[{i}].")))
            .collect::<Result<Vec<_>, _>>()?;
        let queries = checks
            .iter()
            .zip(&data)
            .enumerate()
            .map(|(i, (c, d))| check_query(c, &format!("checks[{i}]."), d.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        let ix = self.index(req.metadata()).await?;
        let mut reasons = Vec::with_capacity(queries.len());
        let results = queries
            .iter()
            .zip(checks)
            .map(|(q, c)| {
                let d = ix.decide(q);
                reasons.push(d.reason);
                check_response(&ix, q, &d, c.explain)
            })
            .collect();
        crate::metrics::record_decisions(
            crate::metrics::Api::GrpcCheckBulk,
            started,
            &reasons,
            ix.version(),
            || serde_json::Value::Array(checks.iter().map(check_json).collect()),
            request_id(req.metadata()).as_ref(),
        );
        Ok(versioned(
            permd::CheckBulkResponse {
                results,
                version: ix.version(),
            },
            ix.version(),
        ))
    }

    type WatchVersionStream = VersionStream;

    async fn watch_version(
        &self,
        _: Request<permd::WatchVersionRequest>,
    ) -> Result<Response<Self::WatchVersionStream>, Status> {
        let store = self.store.clone();
        let events = tokio_stream::wrappers::WatchStream::new(self.store.subscribe()).filter_map(move |v| {
            let version = v?;
            let st = store.status();
            Some(Ok(permd::VersionEvent {
                version,
                source: st.source.clone(),
                online: st.online,
            }))
        });
        Ok(Response::new(Box::pin(events)))
    }
}

#[tonic::async_trait]
impl perm::role_service_server::RoleService for GrpcState {
    async fn get_role(&self, req: Request<perm::GetRoleRequest>) -> Result<Response<perm::GetRoleResponse>, Status> {
        let ix = self.index(req.metadata()).await?;
        answer(reads::get_role(&ix, req.get_ref()), &ix)
    }

    async fn list_roles(
        &self,
        req: Request<perm::ListRolesRequest>,
    ) -> Result<Response<perm::ListRolesResponse>, Status> {
        let p = paging(req.metadata())?;
        let ix = self.index(req.metadata()).await?;
        answer(reads::list_roles(&ix, req.get_ref(), p), &ix)
    }

    async fn get_roles_for_user(
        &self,
        req: Request<perm::GetRolesForUserRequest>,
    ) -> Result<Response<perm::GetRolesForUserResponse>, Status> {
        let (p, eff) = (paging(req.metadata())?, effective(req.metadata())?);
        let ix = self.index(req.metadata()).await?;
        answer(reads::roles_for_user(&ix, req.get_ref(), eff, p), &ix)
    }

    async fn get_users_for_role(
        &self,
        req: Request<perm::GetUsersForRoleRequest>,
    ) -> Result<Response<perm::GetUsersForRoleResponse>, Status> {
        let (p, eff) = (paging(req.metadata())?, effective(req.metadata())?);
        let ix = self.index(req.metadata()).await?;
        answer(reads::users_for_role(&ix, req.get_ref(), eff, p), &ix)
    }

    async fn create_role(
        &self,
        req: Request<perm::CreateRoleRequest>,
    ) -> Result<Response<perm::CreateRoleResponse>, Status> {
        self.forward.rpc("RoleService", "CreateRole", req).await
    }

    async fn delete_role(
        &self,
        req: Request<perm::DeleteRoleRequest>,
    ) -> Result<Response<perm::DeleteRoleResponse>, Status> {
        self.forward.rpc("RoleService", "DeleteRole", req).await
    }

    async fn update_role(
        &self,
        req: Request<perm::UpdateRoleRequest>,
    ) -> Result<Response<perm::UpdateRoleResponse>, Status> {
        self.forward.rpc("RoleService", "UpdateRole", req).await
    }

    async fn add_role_for_user(
        &self,
        req: Request<perm::AddRoleForUserRequest>,
    ) -> Result<Response<perm::AddRoleForUserResponse>, Status> {
        self.forward.rpc("RoleService", "AddRoleForUser", req).await
    }

    async fn del_role_for_user(
        &self,
        req: Request<perm::DelRoleForUserRequest>,
    ) -> Result<Response<perm::DelRoleForUserResponse>, Status> {
        self.forward.rpc("RoleService", "DelRoleForUser", req).await
    }
}

#[tonic::async_trait]
impl perm::group_service_server::GroupService for GrpcState {
    async fn list_groups(
        &self,
        req: Request<perm::ListGroupsRequest>,
    ) -> Result<Response<perm::ListGroupsResponse>, Status> {
        let ix = self.index(req.metadata()).await?;
        answer(reads::list_groups(&ix, req.get_ref()), &ix)
    }

    async fn create_group(
        &self,
        req: Request<perm::CreateGroupRequest>,
    ) -> Result<Response<perm::CreateGroupResponse>, Status> {
        self.forward.rpc("GroupService", "CreateGroup", req).await
    }

    async fn delete_group(
        &self,
        req: Request<perm::DeleteGroupRequest>,
    ) -> Result<Response<perm::DeleteGroupResponse>, Status> {
        self.forward.rpc("GroupService", "DeleteGroup", req).await
    }

    async fn move_group(
        &self,
        req: Request<perm::MoveGroupRequest>,
    ) -> Result<Response<perm::MoveGroupResponse>, Status> {
        self.forward.rpc("GroupService", "MoveGroup", req).await
    }

    async fn add_res_for_group(
        &self,
        req: Request<perm::AddResForGroupRequest>,
    ) -> Result<Response<perm::AddResForGroupResponse>, Status> {
        self.forward.rpc("GroupService", "AddResForGroup", req).await
    }

    async fn del_res_for_group(
        &self,
        req: Request<perm::DelResForGroupRequest>,
    ) -> Result<Response<perm::DelResForGroupResponse>, Status> {
        self.forward.rpc("GroupService", "DelResForGroup", req).await
    }
}

#[tonic::async_trait]
impl perm::menu_service_server::MenuService for GrpcState {
    async fn list_menus(
        &self,
        req: Request<perm::ListMenusRequest>,
    ) -> Result<Response<perm::ListMenusResponse>, Status> {
        let ix = self.index(req.metadata()).await?;
        answer(reads::list_menus(&ix, req.get_ref()), &ix)
    }
}

#[tonic::async_trait]
impl perm::org_service_server::OrgService for GrpcState {
    async fn list_org(&self, req: Request<perm::ListOrgRequest>) -> Result<Response<perm::ListOrgResponse>, Status> {
        let p = paging(req.metadata())?;
        let ix = self.index(req.metadata()).await?;
        answer(reads::list_orgs(&ix, p), &ix)
    }

    async fn create_org(
        &self,
        req: Request<perm::CreateOrgRequest>,
    ) -> Result<Response<perm::CreateOrgResponse>, Status> {
        self.forward.rpc("OrgService", "CreateOrg", req).await
    }

    async fn delete_org(
        &self,
        req: Request<perm::DeleteOrgRequest>,
    ) -> Result<Response<perm::DeleteOrgResponse>, Status> {
        self.forward.rpc("OrgService", "DeleteOrg", req).await
    }

    async fn transfer_org(
        &self,
        req: Request<perm::TransferOrgRequest>,
    ) -> Result<Response<perm::TransferOrgResponse>, Status> {
        self.forward.rpc("OrgService", "TransferOrg", req).await
    }
}
