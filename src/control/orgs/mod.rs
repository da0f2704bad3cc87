//! The organisation faces of the seeds on the control plane: perms.io's organisation service
//! (seed 000, `/organisation-service/v1/…` and gRPC `organisation.v1.OrganisationService`),
//! pdk.io OU permissions (seed 001, `/api/ous/…`) and organisations with their isolation rules
//! (seed 004, `/api/v1/organizations…`).
//!
//! - [`service`]: seed 000, answered from the `organisations`, `projects` and `api_keys`
//!   tables; a key sees its own organisation only.
//! - [`ou`]: seed 001, OU permissions as org-wide role assignments of the project's model.
//! - [`organizations`]: seed 004, the project's model orgs (tenants) and their users.
//! - [`authority`]: who may call what when a request names its acting user
//!   (`X-Permd-Actor`), decided by permd's own engine on the project's index.
//!
//! # Choices where the seeds and the spec are silent
//!
//! - **Actors.** Without `X-Permd-Actor` an API key acts with its project's authority. With
//!   it, seeds 004 and 001 hold the request to these rules, decided on the project's index at
//!   its current version (`Index::roles_for_user` with `effective`: org-wide assignments in
//!   the org or an org above it, expanded through `extends`):
//!   - *superuser*: the global role `superuser` is among the actor's effective roles in some
//!     org of the project (not in an org that defines its own role `superuser`);
//!   - *admin of org X*: `admin` is among the actor's effective roles in X (an admin of an org
//!     is an admin of the orgs below it);
//!   - *member of org X*: the actor has any effective role in X.
//!
//!   Seed 004: list and view need membership (a superuser sees every org); create needs
//!   superuser, or admin of `parent` (admin of any org for a top-level org); update, add and
//!   remove a user need admin of the org; delete needs superuser; list users needs
//!   membership. Seed 001: `ancestorPermissions` needs membership of the org, writes need
//!   admin of it. An org the actor may not see is 404, exactly as an unknown one; one it may
//!   see but not change is 403 `permission_denied`. Only a superuser may remove a user's
//!   `superuser` assignment. The header is honoured by these two faces only: an application
//!   that lets end users reach the control plane must not let them reach the others.
//! - **Seed 004 orgs.** `{id}` is the org's key. `POST {name, description, id?, parent?}`:
//!   without `id` the key is made from the name (lower-case ASCII letters and digits, other
//!   runs become `-`, at most 64 bytes, `org` when nothing is left; `-2`, `-3`, … when taken).
//!   `name` is the org's `name`, `description` its `attributes.description`. `PUT` changes
//!   `name` and `description` (`null` clears it). Lists are plain arrays, `skip` / `limit`
//!   (default 100, at most 1000), the total in `X-Total-Count`.
//! - **Users of an org** are the users with an org-wide role assignment in it (any role);
//!   `POST …/users/{user_id}` gives the user the role `member` in the org (it must resolve
//!   there: 404 otherwise); `DELETE …/users/{user_id}` removes every assignment of the user in
//!   the org (org-wide and on its instances) and answers 200 with what it removed. `DELETE` of
//!   an org with users is 409 `failed_precondition`; otherwise the org goes with everything in
//!   it (org-scoped roles, instances, assignments, grants; orgs below lose their `parent`) in
//!   one batch.
//! - **Audit.** Every delete of these faces (an org, a user from an org, an OU permission) and
//!   every refused one (403, 409) writes a row of `org_audit` (project, API key, actor, action,
//!   target, outcome, version, time) after the change commits, and a log line with target
//!   `permd::audit`.
//! - **Seed 001.** `{org}` is the org's key. A permission is the org-wide assignment of one of
//!   `reporter`, `manager`, `admin`, `integrator` to a user; a user has at most one per org
//!   (`POST` for a user who has one is 409; `PUT` replaces it). `_id` is stable: the first 24
//!   hex digits of SHA-256 of `pdk.io/permission`, the org key and the user key (NUL between),
//!   so it survives a role change and needs no storage. `userId` is the user's key, `name` the
//!   user's first and last names (`null` when it has none), `organizationId` the org. The role
//!   must resolve in the org (404 naming `role`). `PUT` answers 201, as pdk.io does.
//!   `ancestorPermissions` lists the org's permissions, then its parent's, up the `parent`
//!   chain (each org once), `skip` / `limit` (default and maximum 1000), `X-Total-Count`.
//! - **Seed 000.** `{id}` is the organisation's numeric id or its name. A project is a
//!   (name, environment) row; `project_name` names it, `env` picks the environment when it has
//!   several. `limit` 1 to 100 (default 50); `search` matches a substring of the name without
//!   case (no wildcards). Invitations are kept in `organisation_invites` (one per email without
//!   case; inviting again refreshes it); no mail is sent.

pub mod authority;
pub mod organizations;
pub mod ou;
pub mod service;

pub use service::{OrganisationGrpc, grpc_service};

use super::Control;
use super::auth::db_error;
use super::db::{AuditEntry, KeyProject};
use super::http::{Body, full};
use super::permit::percent_decode;
use super::snapshots::Encoded;
use crate::index::Index;
use crate::model::MAX_KEY_BYTES;
use crate::wire::{RequestError, decode, json, read_body};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::sync::Arc;

/// The generated code of `proto/perms/v1` (packages `organisation.v1` and `pagination.v1`).
#[allow(clippy::all, clippy::unwrap_used, clippy::expect_used, clippy::panic)]
pub mod pb {
    pub mod organisation {
        pub mod v1 {
            tonic::include_proto!("organisation.v1");
        }
    }
    pub mod pagination {
        pub mod v1 {
            tonic::include_proto!("pagination.v1");
        }
    }
    /// The encoded descriptors of `proto/perms/v1`, for reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("perms_descriptor");
}

/// The header naming the acting user of a request (seed 004's rules apply to it).
pub const ACTOR_HEADER: &str = "x-permd-actor";

/// Whether `path` belongs to one of these faces.
pub fn routes(path: &str) -> bool {
    path.starts_with("/organisation-service/v1/")
        || path.starts_with("/api/ous/")
        || path.starts_with("/api/v1/organizations")
}

/// Answers a request of one of these faces for the project of its (already checked) key.
pub async fn route(
    ctl: &Arc<Control>,
    project: &KeyProject,
    req: Request<Incoming>,
) -> Result<Response<Body>, RequestError> {
    let path = req.uri().path().to_owned();
    let answer = if let Some(rest) = path.strip_prefix("/organisation-service/v1/") {
        service::route(ctl, project, rest, req).await
    } else if let Some(rest) = path.strip_prefix("/api/ous/") {
        ou::route(ctl, project, rest, req).await
    } else if let Some(rest) = path.strip_prefix("/api/v1/organizations") {
        organizations::route(ctl, project, rest, req).await
    } else {
        Err(RequestError::NotFound(path.clone()).into())
    };
    match answer {
        Ok(resp) => Ok(resp),
        Err(Refused::Request(e)) => Err(e),
        Err(refused) => Ok(refused.into_response()),
    }
}

/// Why a request of these faces is not done.
#[derive(Debug)]
pub enum Refused {
    Request(RequestError),
    /// 403 `permission_denied`: the actor may see the item but not do this to it.
    Forbidden(String),
    /// 409 `failed_precondition`: the state does not allow it yet (an org that has users).
    Precondition(String),
}

impl From<RequestError> for Refused {
    fn from(e: RequestError) -> Refused {
        Refused::Request(e)
    }
}

impl Refused {
    fn into_response(self) -> Response<Body> {
        let (status, code, message) = match self {
            Refused::Request(e) => return full(e.into_response()),
            Refused::Forbidden(m) => (StatusCode::FORBIDDEN, "permission_denied", m),
            Refused::Precondition(m) => (StatusCode::CONFLICT, "failed_precondition", m),
        };
        full(json(
            status,
            &serde_json::json!({"error": {"code": code, "message": message}}),
        ))
    }

    /// The outcome an audit row records for it.
    fn outcome(&self) -> &'static str {
        match self {
            Refused::Forbidden(_) => "forbidden",
            Refused::Precondition(_) | Refused::Request(RequestError::Conflict(_)) => "conflict",
            Refused::Request(RequestError::NotFound(_) | RequestError::Missing(_)) => "not_found",
            Refused::Request(RequestError::Invalid(_)) => "invalid",
            Refused::Request(_) => "failed",
        }
    }
}

pub type Answer = Result<Response<Body>, Refused>;

/// A JSON answer, with `X-Permd-Version` when given.
fn answer(status: StatusCode, body: &Value, version: Option<u64>) -> Response<Body> {
    let mut resp = json(status, body);
    if let Some(v) = version {
        resp.headers_mut()
            .insert(super::http::VERSION_HEADER, HeaderValue::from(v));
    }
    full(resp)
}

/// An empty answer (204) with `X-Permd-Version`.
fn no_content(version: u64) -> Response<Body> {
    let mut resp = Response::new(http_body_util::BodyExt::boxed(http_body_util::Full::new(
        bytes::Bytes::new(),
    )));
    *resp.status_mut() = StatusCode::NO_CONTENT;
    resp.headers_mut()
        .insert(super::http::VERSION_HEADER, HeaderValue::from(version));
    resp
}

/// A plain JSON array (one page of it), the total in `X-Total-Count`.
fn array_page(items: Vec<Value>, total: usize, version: u64) -> Response<Body> {
    let mut resp = json(StatusCode::OK, &items);
    resp.headers_mut()
        .insert("x-total-count", HeaderValue::from(total as u64));
    resp.headers_mut()
        .insert(super::http::VERSION_HEADER, HeaderValue::from(version));
    full(resp)
}

/// The method a route allows (HEAD counts as GET), or 405 with `Allow`.
fn allow(method: &Method, allowed: &[Method], header: &'static str) -> Result<Method, RequestError> {
    let m = if method == Method::HEAD { &Method::GET } else { method };
    if allowed.contains(m) {
        Ok(m.clone())
    } else {
        Err(RequestError::MethodNotAllowed {
            method: method.to_string(),
            allow: header,
        })
    }
}

/// The decoded segments of the rest of a path (one trailing `/` is ignored); an empty or
/// malformed segment is 404 / 400.
fn segments(rest: &str, path: &str) -> Result<Vec<String>, RequestError> {
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() {
        return Ok(Vec::new());
    }
    rest.split('/')
        .map(|s| {
            if s.is_empty() {
                return Err(RequestError::NotFound(path.to_owned()));
            }
            percent_decode(s, false)
                .ok_or_else(|| RequestError::invalid(format!("path segment `{s}` is not valid percent-encoded UTF-8")))
        })
        .collect()
}

/// The decoded `name=value` pairs of a query string.
#[derive(Debug, Default)]
pub struct Params(Vec<(String, String)>);

impl Params {
    fn parse(q: Option<&str>) -> Result<Params, RequestError> {
        let mut pairs = Vec::new();
        for part in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            let name = percent_decode(k, true)
                .ok_or_else(|| RequestError::invalid(format!("query: `{k}` is not a valid percent-encoded name")))?;
            let value = percent_decode(v, true)
                .ok_or_else(|| RequestError::invalid(format!("`{name}`: not a valid percent-encoded UTF-8 value")))?;
            pairs.push((name, value));
        }
        Ok(Params(pairs))
    }

    /// The last value of `name`.
    fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// `skip` (default 0) and `limit` (1 to `max`, default `default`).
    fn skip_limit(&self, default: usize, max: usize) -> Result<(usize, usize), RequestError> {
        let skip = match self.get("skip") {
            None => 0,
            Some(v) => v
                .parse::<usize>()
                .map_err(|_| RequestError::invalid(format!("`skip`: `{v}` is not a whole number of items")))?,
        };
        let limit = match self.get("limit") {
            None => default,
            Some(v) => match v.parse::<usize>() {
                Ok(n) if (1..=max).contains(&n) => n,
                _ => {
                    return Err(RequestError::invalid(format!(
                        "`limit`: `{v}` is not a page size (1 to {max})"
                    )));
                }
            },
        };
        Ok((skip, limit))
    }
}

/// A key of the model (an org, a user) given in `field`: not empty, at most 256 bytes, no NUL.
fn check_key(value: &str, field: &str) -> Result<(), RequestError> {
    if value.is_empty() {
        return Err(RequestError::invalid(format!("`{field}`: must not be empty")));
    }
    if value.len() > MAX_KEY_BYTES {
        return Err(RequestError::invalid(format!(
            "`{field}`: is {} bytes; keys are at most {MAX_KEY_BYTES}",
            value.len()
        )));
    }
    if value.contains('\0') {
        return Err(RequestError::invalid(format!(
            "`{field}`: must not contain the NUL character"
        )));
    }
    Ok(())
}

/// Free text given in `field` (a name, a description): at most `max` bytes, no control
/// characters but tab and newline (`line`: none at all).
fn check_text(value: &str, field: &str, max: usize, line: bool) -> Result<(), RequestError> {
    if value.len() > max {
        return Err(RequestError::invalid(format!(
            "`{field}`: is {} bytes; at most {max}",
            value.len()
        )));
    }
    if value
        .chars()
        .any(|c| c.is_control() && (line || (c != '\n' && c != '\t')))
    {
        return Err(RequestError::invalid(format!(
            "`{field}`: must not contain control characters"
        )));
    }
    Ok(())
}

/// An email address given in `field`: `local@domain`, no spaces or control characters, at most
/// 254 bytes. Returned trimmed.
fn check_email(value: &str, field: &str) -> Result<String, RequestError> {
    let v = value.trim();
    let bad = |why: &str| RequestError::invalid(format!("`{field}`: `{v}` is not an email address ({why})"));
    if v.is_empty() {
        return Err(RequestError::invalid(format!("`{field}`: must not be empty")));
    }
    if v.len() > 254 {
        return Err(RequestError::invalid(format!(
            "`{field}`: is {} bytes; an email address is at most 254",
            v.len()
        )));
    }
    if v.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("no spaces or control characters"));
    }
    match v.rsplit_once('@') {
        Some((local, domain)) if !local.is_empty() && !domain.is_empty() && !domain.starts_with('.') => {
            Ok(v.to_owned())
        }
        _ => Err(bad("expected local@domain")),
    }
}

/// Reads and decodes a JSON body (an empty one is `{}`); a bad field is 400 naming it.
async fn body<T: DeserializeOwned>(ctl: &Control, req: Request<Incoming>) -> Result<T, RequestError> {
    let bytes = read_body(req, ctl.settings.max_body_bytes).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return decode(b"{}");
    }
    decode(&bytes)
}

/// The acting user a request names in `X-Permd-Actor`, if any.
fn actor(headers: &HeaderMap) -> Result<Option<String>, RequestError> {
    let mut values = headers.get_all(ACTOR_HEADER).iter();
    let Some(v) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(RequestError::invalid(
            "`X-Permd-Actor`: give one acting user, not several",
        ));
    }
    let key = std::str::from_utf8(v.as_bytes())
        .map_err(|_| RequestError::invalid("`X-Permd-Actor`: not valid UTF-8"))?
        .trim();
    check_key(key, "X-Permd-Actor")?;
    Ok(Some(key.to_owned()))
}

/// What a request of these faces works with: the key's project, the actor, and the project's
/// current snapshot and index (one version).
pub struct Ctx<'a> {
    pub ctl: &'a Arc<Control>,
    pub project: &'a KeyProject,
    pub actor: Option<String>,
    pub current: Arc<Encoded>,
    pub index: Arc<Index>,
}

impl<'a> Ctx<'a> {
    async fn load(
        ctl: &'a Arc<Control>,
        project: &'a KeyProject,
        headers: &HeaderMap,
    ) -> Result<Ctx<'a>, RequestError> {
        let actor = actor(headers)?;
        let current = ctl.snapshots.current(project.project_id).await.map_err(db_error)?;
        let index = current.index().await.map_err(db_error)?;
        Ok(Ctx {
            ctl,
            project,
            actor,
            current,
            index,
        })
    }

    fn caller(&self) -> authority::Caller<'_> {
        authority::Caller::new(self.actor.as_deref(), &self.index, &self.current.snapshot)
    }

    /// Writes an audit row and the audit log line of a delete (or a refused one).
    async fn audit(&self, action: &str, target: &Value, outcome: &str, version: Option<u64>) {
        let target = target.to_string();
        let at = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
        tracing::info!(
            target: "permd::audit",
            at = %at,
            organisation = %self.project.organisation,
            project = %self.project.project,
            env = %self.project.env,
            key_id = self.project.key_id,
            actor = self.actor.as_deref().unwrap_or(""),
            action,
            target = %target,
            outcome,
            version,
            "audit"
        );
        let entry = AuditEntry {
            project_id: self.project.project_id,
            key_id: self.project.key_id,
            actor: self.actor.as_deref(),
            action,
            target: &target,
            outcome,
            version,
        };
        if let Err(e) = self.ctl.db.audit(&entry).await {
            tracing::error!(error = %e, action, target = %target, "the audit row could not be written");
        }
    }

    /// Runs a delete and audits its outcome (the version it made, or why it was refused).
    async fn audited<F>(&self, action: &str, target: &Value, run: F) -> Answer
    where
        F: Future<Output = Result<(Response<Body>, u64), Refused>>,
    {
        match run.await {
            Ok((resp, version)) => {
                self.audit(action, target, "deleted", Some(version)).await;
                Ok(resp)
            }
            Err(refused) => {
                self.audit(action, target, refused.outcome(), None).await;
                Err(refused)
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_queries_decode() {
        assert_eq!(segments("a%2Fb/c/", "/p").unwrap(), vec!["a/b", "c"]);
        assert!(segments("a//b", "/p").is_err());
        assert_eq!(segments("", "/p").unwrap(), Vec::<String>::new());
        assert!(segments("%zz", "/p").is_err());
        let p = Params::parse(Some("project_name=a%27%3B+b&limit=5&limit=7")).unwrap();
        assert_eq!(p.get("project_name"), Some("a'; b"));
        assert_eq!(p.get("limit"), Some("7"));
        assert_eq!(p.skip_limit(10, 100).unwrap(), (0, 7));
        assert!(Params::parse(Some("limit=0")).unwrap().skip_limit(10, 100).is_err());
        assert!(Params::parse(Some("x=%ff")).is_err());
    }

    #[test]
    fn emails_and_keys() {
        assert_eq!(check_email(" a@b.c ", "email").unwrap(), "a@b.c");
        for bad in ["", "a", "@b", "a@", "a b@c", "a@.c"] {
            assert!(check_email(bad, "email").is_err(), "{bad}");
        }
        assert!(check_key("", "id").is_err());
        assert!(check_key(&"x".repeat(257), "id").is_err());
        assert!(check_key("'; DROP TABLE orgs; --", "id").is_ok());
        assert!(check_text("a\u{7}", "name", 10, true).is_err());
    }
}
