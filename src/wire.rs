//! What the HTTP faces share (the sidecar's `api` and the control plane's `control`): the
//! request error and its mapping to an HTTP status and JSON body (and to a gRPC status), JSON
//! responses, and bounded body reading. Neither face imports the other; both import this.

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use serde::Serialize;

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
    /// No key, or one that is not valid; says nothing about what the key would reach.
    #[error("{0}")]
    Unauthorized(String),
    #[error("rate limit of this API key reached; retry in {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    /// A `since` older than the changes kept, or ahead of them: only a snapshot can continue.
    #[error("{0}")]
    Gone(String),
    /// The request conflicts with the current state (an item that must not exist yet).
    #[error("{0}")]
    Conflict(String),
    /// The store failed in a way a retry may fix (database down, connection lost).
    #[error("{0}")]
    Retry(String),
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
            RequestError::Unavailable(_) | RequestError::VersionNotReached { .. } | RequestError::Retry(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            RequestError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            RequestError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            RequestError::Gone(_) => StatusCode::GONE,
            RequestError::Conflict(_) => StatusCode::CONFLICT,
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
            RequestError::Unauthorized(_) => "unauthenticated",
            RequestError::RateLimited { .. } => "resource_exhausted",
            RequestError::Gone(_) => "gone",
            RequestError::Conflict(_) => "already_exists",
            RequestError::Retry(_) => "unavailable",
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
        let (allow, retry_after) = match &self {
            RequestError::MethodNotAllowed { allow, .. } => (Some(*allow), None),
            RequestError::RateLimited { retry_after_secs } => (None, Some(*retry_after_secs)),
            RequestError::Retry(_) => (None, Some(1)),
            _ => (None, None),
        };
        let unauthorized = matches!(self, RequestError::Unauthorized(_));
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
        if let Some(secs) = retry_after {
            resp.headers_mut().insert(RETRY_AFTER, http::HeaderValue::from(secs));
        }
        if unauthorized {
            resp.headers_mut()
                .insert(WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer"));
        }
        resp
    }

    /// The same error as a gRPC status: the one place that mapping is made.
    pub fn into_status(self) -> tonic::Status {
        use tonic::Status;
        match self {
            RequestError::Invalid(m) => Status::invalid_argument(m),
            RequestError::Unavailable(m) | RequestError::Retry(m) => Status::unavailable(m),
            RequestError::Missing(m) | RequestError::NotFound(m) => Status::not_found(m),
            e @ RequestError::VersionNotReached { .. } => Status::unavailable(e.to_string()),
            RequestError::Unauthorized(m) => Status::unauthenticated(m),
            e @ RequestError::RateLimited { retry_after_secs } => {
                let mut s = Status::resource_exhausted(e.to_string());
                s.metadata_mut()
                    .insert("retry-after", tonic::metadata::MetadataValue::from(retry_after_secs));
                s
            }
            RequestError::Gone(m) => Status::out_of_range(m),
            RequestError::Conflict(m) => Status::already_exists(m),
            e => Status::internal(e.to_string()),
        }
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

/// Reads a JSON body of at most `limit` bytes.
pub async fn read_body<B>(req: Request<B>, limit: usize) -> Result<Bytes, RequestError>
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
