//! The gRPC face (tonic): perm/v1 `PermService.Enforce` and the `permd.v1` service (`Check`,
//! `CheckBulk`, `WatchVersion`), answered from the same index as HTTP, plus
//! `grpc.health.v1.Health` and server reflection. Decode, call the index, encode; errors map
//! to status codes in one place (`status`).

use crate::api::http::RequestError;
use crate::index::{Decision, Index, Query, Subject};
use crate::store::Store;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio_stream::{Stream, StreamExt};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Request, Response, Status};

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
}

/// The one place errors become gRPC statuses.
fn status(e: RequestError) -> Status {
    match e {
        RequestError::Invalid(m) => Status::invalid_argument(m),
        RequestError::Unavailable(m) => Status::unavailable(m),
        e @ RequestError::VersionNotReached { .. } => Status::unavailable(e.to_string()),
        e => Status::internal(e.to_string()),
    }
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
    })
}

fn unimplemented_write(rpc: &str) -> Status {
    Status::unimplemented(format!(
        "{rpc} changes data that belongs to the control plane; permd is a read-only decision point until write forwarding exists"
    ))
}

fn not_served_yet(rpc: &str) -> Status {
    Status::unimplemented(format!(
        "{rpc} is not served by this build yet; use Enforce or permd.v1 Check"
    ))
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
        _: Request<perm::PermServiceListResourcesRequest>,
    ) -> Result<Response<perm::PermServiceListResourcesResponse>, Status> {
        Err(not_served_yet("ListResources"))
    }

    async fn list_menus(
        &self,
        _: Request<perm::PermServiceListMenusRequest>,
    ) -> Result<Response<perm::PermServiceListMenusResponse>, Status> {
        Err(not_served_yet("ListMenus"))
    }

    async fn list_groups(
        &self,
        _: Request<perm::PermServiceListGroupsRequest>,
    ) -> Result<Response<perm::PermServiceListGroupsResponse>, Status> {
        Err(not_served_yet("ListGroups"))
    }

    async fn save_role_perm(
        &self,
        _: Request<perm::PermServiceSaveRolePermRequest>,
    ) -> Result<Response<perm::PermServiceSaveRolePermResponse>, Status> {
        Err(unimplemented_write("SaveRolePerm"))
    }
}

fn check_query<'a>(r: &'a permd::CheckRequest, at: &str) -> Result<Query<'a>, Status> {
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
        let q = check_query(req.get_ref(), "")?;
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
        let queries = checks
            .iter()
            .enumerate()
            .map(|(i, c)| check_query(c, &format!("checks[{i}].")))
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
