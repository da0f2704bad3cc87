//! Seed 000, the perms.io organisation service: REST under `/organisation-service/v1/` and
//! gRPC `organisation.v1.OrganisationService`, one implementation for both. Answered from the
//! `organisations`, `projects` and `api_keys` tables (`invite` writes
//! `organisation_invites`). A key sees its own organisation only: any other `id` is 404 /
//! NOT_FOUND with the same message as an organisation that does not exist.

use super::pb::organisation::v1 as pb;
use super::pb::organisation::v1::organisation_service_server::{OrganisationService, OrganisationServiceServer};
use super::pb::pagination::v1::{PaginationRequest, PaginationResponse};
use super::{Answer, Params, allow, body, check_email, check_text, segments};
use crate::control::Control;
use crate::control::auth::db_error;
use crate::control::db::{ApiKeyRow, KeyProject, OrganisationRow, ProjectRow};
use crate::control::http::Body;
use crate::control::http::full;
use crate::index::{decode_cursor, encode_cursor};
use crate::wire::{RequestError, json};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;
use std::sync::Arc;

/// Projects in one page unless `limit` says otherwise, and at most.
const DEFAULT_PROJECTS: i32 = 50;
const MAX_PROJECTS: i32 = 100;

/// `/organisation-service/v1/{rest}`.
pub async fn route(ctl: &Arc<Control>, project: &KeyProject, rest: &str, req: Request<Incoming>) -> Answer {
    let path = req.uri().path().to_owned();
    let segs = segments(rest, &path)?;
    let params = Params::parse(req.uri().query())?;
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    match segs.as_slice() {
        ["organisation", id] => {
            allow(req.method(), &[Method::GET], "GET, HEAD")?;
            Ok(ok(&get_organisation(ctl, project, id).await?))
        }
        ["organisation", id, "project"] => {
            allow(req.method(), &[Method::GET], "GET, HEAD")?;
            let name = params.get("project_name").unwrap_or_default();
            Ok(ok(&get_project(
                ctl,
                project,
                id,
                name,
                params.get("env"),
                "project_name",
            )
            .await?))
        }
        ["organisation", id, "projects"] => {
            allow(req.method(), &[Method::GET], "GET, HEAD")?;
            let limit = match params.get("limit") {
                None => None,
                Some(v) => Some(v.parse::<i32>().map_err(|_| {
                    RequestError::invalid(format!("`limit`: `{v}` is not a page size (1 to {MAX_PROJECTS})"))
                })?),
            };
            let paging = PaginationRequest {
                limit,
                cursor: params.get("cursor").map(str::to_owned),
            };
            let fields = Fields {
                limit: "limit",
                cursor: "cursor",
                search: "search",
            };
            Ok(ok(&get_projects(
                ctl,
                project,
                id,
                &paging,
                params.get("search"),
                &fields,
            )
            .await?))
        }
        ["organisation", id, "api-key"] => {
            allow(req.method(), &[Method::GET], "GET, HEAD")?;
            let name = params.get("project_name").unwrap_or_default();
            Ok(ok(&list_api_keys(ctl, project, id, name, params.get("env")).await?))
        }
        ["organisation", id, "invite"] => {
            allow(req.method(), &[Method::POST], "POST")?;
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Invite {
                email: String,
            }
            let id = id.to_string();
            let invite: Invite = body(ctl, req).await?;
            Ok(ok(&invite_user(ctl, project, &id, &invite.email).await?))
        }
        _ => Err(RequestError::NotFound(path).into()),
    }
}

/// A response message as the JSON answer (the REST answers are the gRPC messages).
fn ok<T: serde::Serialize>(message: &T) -> Response<Body> {
    full(json(StatusCode::OK, message))
}

/// The names of the paging fields in errors (REST query parameters or gRPC fields).
struct Fields {
    limit: &'static str,
    cursor: &'static str,
    search: &'static str,
}

fn not_found(id: &str) -> RequestError {
    RequestError::Missing(format!("organisation `{id}` not found"))
}

/// The key's organisation, when `id` names it (its numeric id or its name); else 404.
async fn own_organisation(ctl: &Control, project: &KeyProject, id: &str) -> Result<OrganisationRow, RequestError> {
    if id.is_empty() {
        return Err(RequestError::invalid("`organisation_id`: required"));
    }
    let row = ctl
        .db
        .organisation_by_name(&project.organisation)
        .await
        .map_err(db_error)?
        .ok_or_else(|| not_found(id))?;
    if row.name == id || row.id.to_string() == id {
        Ok(row)
    } else {
        Err(not_found(id))
    }
}

fn organisation(row: OrganisationRow) -> pb::Organisation {
    pb::Organisation {
        id: row.id.to_string(),
        name: row.name,
        created_at: row.created_at,
    }
}

fn project_message(row: ProjectRow) -> pb::Project {
    pb::Project {
        id: row.id.to_string(),
        name: row.name,
        env: row.env,
        organisation_id: row.organisation_id.to_string(),
        version: row.version,
        created_at: row.created_at,
    }
}

fn api_key(row: ApiKeyRow) -> pb::ApiKey {
    pb::ApiKey {
        id: row.id.to_string(),
        prefix: row.prefix,
        project_name: row.project_name,
        env: row.env,
        created_at: row.created_at,
        revoked_at: row.revoked_at,
    }
}

/// A project name or environment given in `field`.
fn check_name(value: &str, field: &str) -> Result<(), RequestError> {
    if value.is_empty() {
        return Err(RequestError::invalid(format!("`{field}`: required")));
    }
    check_text(value, field, 256, true)
}

pub async fn get_organisation(
    ctl: &Control,
    project: &KeyProject,
    id: &str,
) -> Result<pb::GetOrganisationResponse, RequestError> {
    if id.is_empty() {
        return Err(RequestError::invalid("`id`: required"));
    }
    let row = own_organisation(ctl, project, id).await?;
    Ok(pb::GetOrganisationResponse {
        organisation: Some(organisation(row)),
    })
}

/// The project `name` (in environment `env` when given) of the organisation.
async fn find_project(
    ctl: &Control,
    org: &OrganisationRow,
    name: &str,
    env: Option<&str>,
    field: &str,
) -> Result<Vec<ProjectRow>, RequestError> {
    check_name(name, field)?;
    if let Some(env) = env {
        check_name(env, "env")?;
    }
    let rows = ctl.db.organisation_project(org.id, name, env).await.map_err(db_error)?;
    if rows.is_empty() {
        let env = env.map(|e| format!(" (environment `{e}`)")).unwrap_or_default();
        return Err(RequestError::Missing(format!("project `{name}`{env} not found")));
    }
    Ok(rows)
}

pub async fn get_project(
    ctl: &Control,
    project: &KeyProject,
    org_id: &str,
    name: &str,
    env: Option<&str>,
    field: &str,
) -> Result<pb::GetProjectResponse, RequestError> {
    let org = own_organisation(ctl, project, org_id).await?;
    let mut rows = find_project(ctl, &org, name, env, field).await?;
    if rows.len() > 1 {
        let envs: Vec<String> = rows.iter().map(|r| format!("`{}`", r.env)).collect();
        return Err(RequestError::invalid(format!(
            "`env`: project `{name}` has the environments {}; name one",
            envs.join(", ")
        )));
    }
    Ok(pb::GetProjectResponse {
        project: rows.pop().map(project_message),
    })
}

async fn get_projects(
    ctl: &Control,
    project: &KeyProject,
    org_id: &str,
    paging: &PaginationRequest,
    search: Option<&str>,
    fields: &Fields,
) -> Result<pb::GetProjectsForOrganisationResponse, RequestError> {
    let limit = match paging.limit {
        None => DEFAULT_PROJECTS,
        Some(n) if (1..=MAX_PROJECTS).contains(&n) => n,
        Some(n) => {
            return Err(RequestError::invalid(format!(
                "`{}`: {n} is not a page size (1 to {MAX_PROJECTS})",
                fields.limit
            )));
        }
    };
    let after = match paging.cursor.as_deref().filter(|c| !c.is_empty()) {
        None => 0,
        Some(c) => decode_cursor(c, fields.cursor)
            .ok()
            .and_then(|v| i64::try_from(v).ok())
            .ok_or_else(|| RequestError::invalid(format!("`{}`: not a cursor this server gave out", fields.cursor)))?,
    };
    let search = search.filter(|s| !s.is_empty());
    if let Some(s) = search {
        check_text(s, fields.search, 256, true)?;
    }
    let org = own_organisation(ctl, project, org_id).await?;
    let mut rows = ctl
        .db
        .organisation_projects(org.id, after, i64::from(limit) + 1, search)
        .await
        .map_err(db_error)?;
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next_cursor = more.then(|| rows.last().map(|r| encode_cursor(r.id as u64))).flatten();
    Ok(pb::GetProjectsForOrganisationResponse {
        projects: rows.into_iter().map(project_message).collect(),
        pagination: Some(PaginationResponse { next_cursor }),
    })
}

async fn list_api_keys(
    ctl: &Control,
    project: &KeyProject,
    org_id: &str,
    name: &str,
    env: Option<&str>,
) -> Result<pb::ListApiKeysResponse, RequestError> {
    let org = own_organisation(ctl, project, org_id).await?;
    find_project(ctl, &org, name, env, "project_name").await?;
    let rows = ctl
        .db
        .organisation_api_keys(org.id, name, env)
        .await
        .map_err(db_error)?;
    Ok(pb::ListApiKeysResponse {
        api_keys: rows.into_iter().map(api_key).collect(),
    })
}

async fn invite_user(
    ctl: &Control,
    project: &KeyProject,
    org_id: &str,
    email: &str,
) -> Result<pb::InviteUserToOrganisationResponse, RequestError> {
    let email = check_email(email, "email")?;
    let org = own_organisation(ctl, project, org_id).await?;
    let invited_at = ctl
        .db
        .invite_to_organisation(org.id, &email, project.key_id)
        .await
        .map_err(db_error)?;
    tracing::info!(
        organisation = %org.name,
        key_id = project.key_id,
        email = %email,
        "user invited to the organisation"
    );
    Ok(pb::InviteUserToOrganisationResponse { email, invited_at })
}

/// The gRPC `OrganisationService` of the control plane.
pub struct OrganisationGrpc {
    ctl: Arc<Control>,
}

/// The service to add to the control plane's gRPC server.
pub fn grpc_service(ctl: Arc<Control>) -> OrganisationServiceServer<OrganisationGrpc> {
    OrganisationServiceServer::new(OrganisationGrpc { ctl })
}

impl OrganisationGrpc {
    /// The project of the request's key (`authorization: Bearer pk_…`), its rate limit taken.
    async fn key(&self, md: &tonic::metadata::MetadataMap) -> Result<KeyProject, tonic::Status> {
        let headers = md.clone().into_headers();
        self.ctl.keys.authorize(&headers).await.map_err(|e| {
            let refused = &self.ctl.metrics.refused;
            match &e {
                RequestError::Unauthorized(_) => refused.with_label_values(&["unauthenticated"]).inc(),
                RequestError::RateLimited { .. } => refused.with_label_values(&["rate_limited"]).inc(),
                _ => {}
            }
            e.into_status()
        })
    }
}

type Reply<T> = Result<tonic::Response<T>, tonic::Status>;

fn reply<T>(r: Result<T, RequestError>) -> Reply<T> {
    r.map(tonic::Response::new).map_err(RequestError::into_status)
}

#[tonic::async_trait]
impl OrganisationService for OrganisationGrpc {
    async fn get_organisation(
        &self,
        req: tonic::Request<pb::GetOrganisationRequest>,
    ) -> Reply<pb::GetOrganisationResponse> {
        let project = self.key(req.metadata()).await?;
        reply(get_organisation(&self.ctl, &project, &req.get_ref().id).await)
    }

    async fn get_project(&self, req: tonic::Request<pb::GetProjectRequest>) -> Reply<pb::GetProjectResponse> {
        let project = self.key(req.metadata()).await?;
        let r = req.get_ref();
        reply(
            get_project(
                &self.ctl,
                &project,
                &r.organisation_id,
                &r.project_name,
                r.env.as_deref().filter(|e| !e.is_empty()),
                "project_name",
            )
            .await,
        )
    }

    async fn get_projects_for_organisation(
        &self,
        req: tonic::Request<pb::GetProjectsForOrganisationRequest>,
    ) -> Reply<pb::GetProjectsForOrganisationResponse> {
        let project = self.key(req.metadata()).await?;
        let r = req.get_ref();
        let fields = Fields {
            limit: "pagination.limit",
            cursor: "pagination.cursor",
            search: "search",
        };
        let paging = r.pagination.clone().unwrap_or_default();
        reply(
            get_projects(
                &self.ctl,
                &project,
                &r.organisation_id,
                &paging,
                r.search.as_deref(),
                &fields,
            )
            .await,
        )
    }

    async fn list_api_keys(&self, req: tonic::Request<pb::ListApiKeysRequest>) -> Reply<pb::ListApiKeysResponse> {
        let project = self.key(req.metadata()).await?;
        let r = req.get_ref();
        reply(
            list_api_keys(
                &self.ctl,
                &project,
                &r.organisation_id,
                &r.project_name,
                r.env.as_deref().filter(|e| !e.is_empty()),
            )
            .await,
        )
    }

    async fn invite_user_to_organisation(
        &self,
        req: tonic::Request<pb::InviteUserToOrganisationRequest>,
    ) -> Reply<pb::InviteUserToOrganisationResponse> {
        let project = self.key(req.metadata()).await?;
        let r = req.get_ref();
        reply(invite_user(&self.ctl, &project, &r.organisation_id, &r.email).await)
    }
}
