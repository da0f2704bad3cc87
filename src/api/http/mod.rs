//! The HTTP face (hyper 1, no framework): routing, bounded body reading, and the one place
//! errors become JSON responses. Handlers decode, call the index, encode; no decision logic.

mod checks;
pub mod input;
mod ops;
mod queries;

use crate::store::Store;
use bytes::Bytes;
use http::header::{ALLOW, CONTENT_LENGTH, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use serde::Serialize;
use std::sync::Arc;

/// What every handler shares.
pub struct HttpState {
    pub store: Arc<Store>,
    pub max_body_bytes: usize,
    pub max_staleness: Option<std::time::Duration>,
    /// The admin listener: operations endpoints only, no checks.
    pub admin_only: bool,
}

/// A request permd will not answer, mapped to its status and JSON error in `into_response`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("{0}")]
    Invalid(String),
    #[error("request body is larger than the limit of {0} bytes")]
    TooLarge(usize),
    #[error("no route for `{0}`")]
    NotFound(String),
    /// A named item (a role) that does not exist.
    #[error("{0}")]
    Missing(String),
    #[error("method `{method}` is not allowed here; use {allow}")]
    MethodNotAllowed { method: String, allow: &'static str },
    #[error("content type `{0}` is not supported; send application/json")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("version {min} was not reached within {wait_ms} ms (active: {active})")]
    VersionNotReached { min: u64, wait_ms: u64, active: String },
}

impl RequestError {
    pub fn invalid(msg: impl Into<String>) -> RequestError {
        RequestError::Invalid(msg.into())
    }

    fn status(&self) -> StatusCode {
        match self {
            RequestError::Invalid(_) => StatusCode::BAD_REQUEST,
            RequestError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            RequestError::NotFound(_) | RequestError::Missing(_) => StatusCode::NOT_FOUND,
            RequestError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            RequestError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            RequestError::Unavailable(_) | RequestError::VersionNotReached { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            RequestError::Invalid(_) => "invalid_argument",
            RequestError::TooLarge(_) => "payload_too_large",
            RequestError::NotFound(_) | RequestError::Missing(_) => "not_found",
            RequestError::MethodNotAllowed { .. } => "method_not_allowed",
            RequestError::UnsupportedMediaType(_) => "unsupported_media_type",
            RequestError::Unavailable(_) => "unavailable",
            RequestError::VersionNotReached { .. } => "version_not_reached",
        }
    }

    pub fn into_response(self) -> Response<Full<Bytes>> {
        #[derive(Serialize)]
        struct Body<'a> {
            error: Inner<'a>,
        }
        #[derive(Serialize)]
        struct Inner<'a> {
            code: &'a str,
            message: String,
        }
        let status = self.status();
        let allow = match &self {
            RequestError::MethodNotAllowed { allow, .. } => Some(*allow),
            _ => None,
        };
        let mut resp = json(
            status,
            &Body {
                error: Inner {
                    code: self.code(),
                    message: self.to_string(),
                },
            },
        );
        if let Some(allow) = allow {
            resp.headers_mut().insert(ALLOW, http::HeaderValue::from_static(allow));
        }
        resp
    }
}

/// A JSON response.
pub fn json<T: Serialize>(status: StatusCode, body: &T) -> Response<Full<Bytes>> {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    let mut resp = Response::new(Full::new(Bytes::from(bytes)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    resp
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
    let (want, allow): (Method, &'static str) = match path.as_str() {
        "/allowed" | "/allowed/bulk" | "/v1/enforce" | "/access/v1/evaluation" | "/access/v1/evaluations" => {
            (Method::POST, "POST")
        }
        "/healthz" | "/readyz" | "/v1/status" | "/.well-known/authzen-configuration" => (Method::GET, "GET, HEAD"),
        "/metrics" if crate::metrics::get().is_some() => (Method::GET, "GET, HEAD"),
        "/user-permissions"
        | "/authorized_users"
        | "/access/v1/search/subject"
        | "/access/v1/search/resource"
        | "/access/v1/search/action" => (Method::POST, "POST"),
        p if queries::PERM_V1_ROUTES.contains(&p) => (Method::POST, "POST"),
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
        "/healthz" => return Ok(ops::healthz()),
        "/readyz" => return Ok(ops::readyz(state)),
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
        p if p.starts_with("/access/v1/search/") => queries::search(&ctx, p, &body).await,
        p => queries::perm_v1(&ctx, p, &body).await,
    }
}

/// Reads a JSON body of at most `limit` bytes.
async fn read_body<B>(req: Request<B>, limit: usize) -> Result<Bytes, RequestError>
where
    B: hyper::body::Body<Data = Bytes> + Send,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    if let Some(ct) = req.headers().get(CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("").to_ascii_lowercase();
        let essence = ct.split(';').next().unwrap_or("").trim();
        // curl's -d default (form-urlencoded) is tolerated so hand-typed checks just work.
        let ok = essence.is_empty()
            || essence == "application/json"
            || essence.ends_with("+json")
            || essence == "application/x-www-form-urlencoded"
            || essence == "text/plain";
        if !ok {
            return Err(RequestError::UnsupportedMediaType(essence.to_string()));
        }
    }
    if let Some(len) = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        && len > limit as u64
    {
        return Err(RequestError::TooLarge(limit));
    }
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(RequestError::TooLarge(limit)),
        Err(e) => Err(RequestError::invalid(format!("cannot read the request body: {e}"))),
    }
}

/// Decodes a JSON body; a failure names the path of the offending field.
pub fn decode<'a, T: serde::Deserialize<'a>>(body: &'a [u8]) -> Result<T, RequestError> {
    match serde_json::from_slice(body) {
        Ok(v) => Ok(v),
        Err(plain) => {
            let de = &mut serde_json::Deserializer::from_slice(body);
            match serde_path_to_error::deserialize::<_, T>(de) {
                Err(e) if e.path().iter().next().is_some() => {
                    Err(RequestError::invalid(format!("`{}`: {}", e.path(), e.inner())))
                }
                _ => Err(RequestError::invalid(format!(
                    "body is not valid JSON for this endpoint: {plain}"
                ))),
            }
        }
    }
}
