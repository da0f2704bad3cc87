//! The HTTP face (hyper 1, no framework): routing, bounded body reading, and the one place
//! errors become JSON responses. Handlers decode, call the index, encode; no decision logic.

mod checks;
mod dropin;
pub mod input;
mod ops;
mod queries;

use crate::api::forward::Forwarder;
use crate::store::Store;
use crate::wire::read_body;
pub use crate::wire::{RequestError, decode, json};
use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::Full;
use std::sync::Arc;

/// What every handler shares.
pub struct HttpState {
    pub store: Arc<Store>,
    pub max_body_bytes: usize,
    pub max_staleness: Option<std::time::Duration>,
    /// The admin listener: operations endpoints only, no checks.
    pub admin_only: bool,
    /// Permit's `/facts/…` writes go to the control plane through this (`crate::api::forward`);
    /// `None` on a face that forwards nothing (the admin listener).
    pub forward: Option<Arc<Forwarder>>,
    /// Where proxied requests' subject and tenant come from (`/auth_request`).
    pub proxy: Arc<crate::api::proxy::ProxySettings>,
}

/// The one entry point hyper calls.
pub async fn handle<B>(
    req: Request<B>,
    state: Arc<HttpState>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible>
where
    B: hyper::body::Body<Data = Bytes> + Send,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let route_label = crate::metrics::get().map(|_| crate::metrics::http_route(req.uri().path()));
    let resp = route(req, &state).await.unwrap_or_else(RequestError::into_response);
    if let (Some(m), Some(route)) = (crate::metrics::get(), route_label) {
        m.http_request(route, resp.status());
    }
    Ok(resp)
}

async fn route<B>(req: Request<B>, state: &HttpState) -> Result<Response<Full<Bytes>>, RequestError>
where
    B: hyper::body::Body<Data = Bytes> + Send,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    // Permit's facts proxy (`proxy_facts_via_pdp`): every method, forwarded to the control plane.
    if path == "/facts" || path.starts_with("/facts/") {
        return match &state.forward {
            Some(f) if !state.admin_only => Ok(f.facts(req).await),
            _ => Err(RequestError::NotFound(path)),
        };
    }
    // nginx `auth_request` (the subrequest keeps the client's method; no body is read).
    if dropin::ANY_METHOD.contains(&path.as_str()) && !state.admin_only {
        let ctx = checks::Ctx {
            state,
            explain: false,
            min_version: checks::MinVersion::from_headers(req.headers())?,
            started: std::time::Instant::now(),
            request_id: None,
        };
        return match path.as_str() {
            "/nginx_allowed" => dropin::nginx_allowed(&ctx, req.headers()).await,
            _ => dropin::auth_request(&ctx, state, req.headers()).await,
        };
    }
    let (want, allow): (Method, &'static str) = match path.as_str() {
        "/allowed" | "/allowed/bulk" | "/v1/enforce" | "/access/v1/evaluation" | "/access/v1/evaluations" => {
            (Method::POST, "POST")
        }
        "/healthz"
        | "/readyz"
        | "/health"
        | "/healthy"
        | "/ready"
        | "/v1/status"
        | "/.well-known/authzen-configuration" => (Method::GET, "GET, HEAD"),
        "/metrics" if crate::metrics::get().is_some() => (Method::GET, "GET, HEAD"),
        "/user-permissions"
        | "/authorized_users"
        | "/access/v1/search/subject"
        | "/access/v1/search/resource"
        | "/access/v1/search/action" => (Method::POST, "POST"),
        p if queries::PERM_V1_ROUTES.contains(&p) || dropin::POST.contains(&p) => (Method::POST, "POST"),
        "/local/role_assignments" => (Method::GET, "GET, HEAD"),
        _ => return Err(RequestError::NotFound(path)),
    };
    if state.admin_only && (want == Method::POST || path == "/local/role_assignments") {
        return Err(RequestError::NotFound(path));
    }
    let head_ok = want == Method::GET && method == Method::HEAD;
    if method != want && !head_ok {
        return Err(RequestError::MethodNotAllowed {
            method: method.to_string(),
            allow,
        });
    }
    match path.as_str() {
        // Permit's PDP names: `/health` is liveness, `/healthy` and `/ready` readiness.
        "/healthz" | "/health" => return Ok(ops::healthz()),
        "/readyz" | "/healthy" | "/ready" => return Ok(ops::readyz(state)),
        "/v1/status" => return Ok(ops::status(state)),
        "/.well-known/authzen-configuration" => return Ok(ops::authzen_configuration(&req)),
        "/metrics" => return Ok(ops::metrics(state).await),
        _ => {}
    }
    let explain_param = req.uri().query().is_some_and(|q| {
        q.split('&')
            .any(|kv| kv == "explain=true" || kv == "explain=1" || kv == "explain")
    });
    let min_version = checks::MinVersion::from_headers(req.headers())?;
    if path == "/local/role_assignments" {
        let ctx = checks::Ctx {
            state,
            explain: false,
            min_version,
            started: std::time::Instant::now(),
            request_id: None,
        };
        return queries::role_assignments(&ctx, req.uri().query()).await;
    }
    let request_id = req.headers().get("x-request-id").cloned();
    let body = read_body(req, state.max_body_bytes).await?;
    let ctx = checks::Ctx {
        state,
        explain: explain_param,
        min_version,
        started: std::time::Instant::now(),
        request_id,
    };
    match path.as_str() {
        "/allowed" => checks::allowed(&ctx, &body).await,
        "/allowed/bulk" => checks::allowed_bulk(&ctx, &body).await,
        "/v1/enforce" => checks::enforce(&ctx, &body).await,
        "/access/v1/evaluation" => checks::evaluation(&ctx, &body).await,
        "/access/v1/evaluations" => checks::evaluations(&ctx, &body).await,
        "/user-permissions" => queries::user_permissions(&ctx, &body).await,
        "/authorized_users" => queries::authorized_users(&ctx, &body).await,
        "/allowed_url" => dropin::allowed_url(&ctx, &body).await,
        "/allowed/all-tenants" => dropin::allowed_all_tenants(&ctx, &body).await,
        "/user-tenants" => dropin::user_tenants(&ctx, &body).await,
        p if p.starts_with("/access/v1/search/") => queries::search(&ctx, p, &body).await,
        p => queries::perm_v1(&ctx, p, &body).await,
    }
}
