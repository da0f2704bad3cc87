//! Writes through the sidecar (control.md, "Writes through a sidecar"): a sidecar following a
//! control plane (`--source http(s)://…`, the native protocol) takes writes and forwards them
//! with its own key, then answers once its own index has the write's version, so the caller's
//! next check on this sidecar already sees the write.
//!
//! - perm/v1 mutating RPCs on the gRPC port → `POST {source}/perm.v1.<Service>/<Method>`, the
//!   request message as JSON with the proto's field names; the answer's JSON becomes the
//!   response message.
//! - Permit's `/facts/…` paths on the HTTP port (what the Permit SDKs call with
//!   `proxy_facts_via_pdp`, as Permit's PDP serves them) → `{source}/v2/facts/{project}/{env}/…`,
//!   same method, body and query; project and environment come from `GET {source}/v1/project`,
//!   asked once and kept. `POST|DELETE /facts/users/{id}/roles` (the SDKs' `assign_role` /
//!   `unassign_role`) become `role_assignments` with `user` set to `{id}`.
//!
//! The wait: when the control plane's answer is a success carrying `X-Permd-Version`, the
//! answer waits for the sidecar's index to reach that version, at most `X-Wait-Timeout` seconds
//! (gRPC `x-wait-timeout`; default 10; empty or negative means the longest wait, 60 s, which also
//! caps larger values). Past it, `X-Timeout-Policy: ignore` (the default) answers the write's
//! result anyway and `fail` answers 424 (gRPC ABORTED); either way the write stays applied and
//! the answer carries its version, so the caller can retry the read with `X-Permd-Min-Version`.
//! Every forwarded answer carries `X-Permd-Version` when the control plane gave one, and
//! `X-Permd-Synced: true|false` when there was a version to wait for.
//!
//! Failures: no control plane configured (a file source, a Permit pull) → 501 / UNIMPLEMENTED
//! naming the source; the control plane not reached (refused, a 2 s connect timeout, no answer
//! within `upstream_timeout`) → 503 / UNAVAILABLE at once, while checks keep answering from the
//! active version. The control plane's own refusals (400, 401, 404, 409, 429, …) pass through
//! with their status and body; on gRPC they become the matching code, from the JSON error's
//! `code` (or the HTTP status) with its `message`. Request bodies are bounded by
//! `max_body_bytes`. The key travels only as a sensitive default header of the client and is
//! never logged; the caller's own `Authorization` is not forwarded.

use crate::config::{ApiKey, Config, Protocol, Source};
use crate::store::Store;
use crate::wire::{RequestError, json, read_body};
use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;
use tonic::metadata::{MetadataMap, MetadataValue};

/// How long an answer waits for the index when the caller does not say.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(10);
/// The longest wait honoured (also what an empty or negative `X-Wait-Timeout` means).
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// How long a connection to the control plane may take: a control plane that is down or out of
/// reach fails the write quickly instead of holding the caller.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long an idle connection to the control plane is kept for the next write.
const POOL_IDLE: Duration = Duration::from_secs(5);
/// The largest answer of the control plane passed back (a page of facts is far smaller).
const MAX_ANSWER_BYTES: usize = 16 << 20;

/// The header (and gRPC metadata) naming the version a write created.
pub const VERSION_HEADER: &str = "x-permd-version";
/// Whether this sidecar's index had reached that version when it answered.
pub const SYNCED_HEADER: &str = "x-permd-synced";

/// What `X-Timeout-Policy` asks for when the index does not reach the write's version in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutPolicy {
    /// Answer the write's result anyway.
    Ignore,
    /// Answer 424 (gRPC ABORTED).
    Fail,
}

/// How long a forwarded write's answer waits for the index, and what happens past it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wait {
    pub timeout: Duration,
    pub policy: TimeoutPolicy,
}

impl Default for Wait {
    fn default() -> Wait {
        Wait {
            timeout: DEFAULT_WAIT,
            policy: TimeoutPolicy::Ignore,
        }
    }
}

impl Wait {
    /// Reads `X-Wait-Timeout` (seconds, fractions allowed) and `X-Timeout-Policy`, given as the
    /// raw values of whichever face carried them; `names` are the names to report.
    pub fn parse(timeout: Option<&[u8]>, policy: Option<&[u8]>, names: (&str, &str)) -> Result<Wait, String> {
        let mut wait = Wait::default();
        if let Some(raw) = timeout {
            let text = std::str::from_utf8(raw).unwrap_or("\u{fffd}").trim();
            wait.timeout = if text.is_empty() {
                MAX_WAIT
            } else {
                match text.parse::<f64>() {
                    Ok(s) if s.is_finite() && s < 0.0 => MAX_WAIT,
                    Ok(s) if s.is_finite() => Duration::from_secs_f64(s.min(MAX_WAIT.as_secs_f64())),
                    _ => {
                        return Err(format!("`{}`: `{text}` is not a number of seconds", names.0));
                    }
                }
            };
        }
        if let Some(raw) = policy {
            let text = std::str::from_utf8(raw).unwrap_or("\u{fffd}").trim();
            wait.policy = if text.eq_ignore_ascii_case("ignore") {
                TimeoutPolicy::Ignore
            } else if text.eq_ignore_ascii_case("fail") {
                TimeoutPolicy::Fail
            } else {
                return Err(format!("`{}`: `{text}`; expected `ignore` or `fail`", names.1));
            };
        }
        Ok(wait)
    }

    fn from_headers(h: &HeaderMap) -> Result<Wait, String> {
        Wait::parse(
            h.get("x-wait-timeout").map(HeaderValue::as_bytes),
            h.get("x-timeout-policy").map(HeaderValue::as_bytes),
            ("X-Wait-Timeout", "X-Timeout-Policy"),
        )
    }

    fn from_metadata(md: &MetadataMap) -> Result<Wait, String> {
        Wait::parse(
            md.get("x-wait-timeout").map(|v| v.as_bytes()),
            md.get("x-timeout-policy").map(|v| v.as_bytes()),
            ("x-wait-timeout", "x-timeout-policy"),
        )
    }
}

/// The control plane's answer to a forwarded request, and how the wait for it went.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub content_type: Option<HeaderValue>,
    pub retry_after: Option<HeaderValue>,
    pub body: Bytes,
    /// `X-Permd-Version` of the answer.
    pub version: Option<u64>,
    /// Whether the index reached `version` (None: there was nothing to wait for).
    pub synced: Option<bool>,
}

impl Answer {
    fn into_response(self) -> Response<Full<Bytes>> {
        let mut resp = Response::new(Full::new(self.body));
        *resp.status_mut() = self.status;
        let h = resp.headers_mut();
        if let Some(ct) = self.content_type {
            h.insert(CONTENT_TYPE, ct);
        }
        if let Some(ra) = self.retry_after {
            h.insert(RETRY_AFTER, ra);
        }
        if let Some(v) = self.version {
            h.insert(VERSION_HEADER, HeaderValue::from(v));
        }
        if let Some(s) = self.synced {
            h.insert(
                SYNCED_HEADER,
                HeaderValue::from_static(if s { "true" } else { "false" }),
            );
        }
        resp
    }

    /// `{"error": {"code", "message"}}` of a refusal, when the body is one.
    fn error(&self) -> (Option<String>, Option<String>) {
        let v: serde_json::Value = serde_json::from_slice(&self.body).unwrap_or_default();
        let e = &v["error"];
        let text = |x: &serde_json::Value| x.as_str().map(str::to_owned);
        // Permit-style errors may carry `message` or `detail` at the top level instead.
        let message = text(&e["message"])
            .or_else(|| text(e))
            .or_else(|| text(&v["message"]))
            .or_else(|| text(&v["detail"]));
        (text(&e["code"]), message)
    }

    /// A refusal of the control plane as a gRPC status of the matching code.
    fn into_status(self) -> tonic::Status {
        let (code, message) = self.error();
        let grpc = grpc_code(self.status, code.as_deref());
        let message = message.unwrap_or_else(|| {
            format!(
                "the control plane answered {} {}",
                self.status.as_u16(),
                self.status.canonical_reason().unwrap_or("")
            )
        });
        let mut s = tonic::Status::new(grpc, message);
        if let Some(ra) = self
            .retry_after
            .as_ref()
            .and_then(|v| MetadataValue::try_from(v.as_bytes()).ok())
        {
            s.metadata_mut().insert("retry-after", ra);
        }
        if let Some(v) = self.version {
            s.metadata_mut().insert(VERSION_HEADER, MetadataValue::from(v));
        }
        s
    }
}

/// The gRPC code of a control plane's refusal: its JSON error `code` when it names one, else
/// its HTTP status.
pub fn grpc_code(status: StatusCode, code: Option<&str>) -> tonic::Code {
    use tonic::Code;
    let by_name = match code.unwrap_or("") {
        "invalid_argument" | "payload_too_large" | "unsupported_media_type" => Some(Code::InvalidArgument),
        "not_found" => Some(Code::NotFound),
        "already_exists" => Some(Code::AlreadyExists),
        "unauthenticated" => Some(Code::Unauthenticated),
        "permission_denied" => Some(Code::PermissionDenied),
        "resource_exhausted" => Some(Code::ResourceExhausted),
        "failed_precondition" => Some(Code::FailedPrecondition),
        "aborted" => Some(Code::Aborted),
        "gone" | "out_of_range" => Some(Code::OutOfRange),
        "unimplemented" => Some(Code::Unimplemented),
        "unavailable" | "version_not_reached" => Some(Code::Unavailable),
        "deadline_exceeded" => Some(Code::DeadlineExceeded),
        "internal" => Some(Code::Internal),
        _ => None,
    };
    by_name.unwrap_or(match status.as_u16() {
        400 | 413 | 415 | 422 => Code::InvalidArgument,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 | 405 => Code::NotFound,
        409 => Code::AlreadyExists,
        410 => Code::OutOfRange,
        412 => Code::FailedPrecondition,
        424 => Code::Aborted,
        429 => Code::ResourceExhausted,
        501 => Code::Unimplemented,
        502..=504 => Code::Unavailable,
        _ => Code::Internal,
    })
}

/// Why a write was not forwarded, or not answered as the control plane did.
#[derive(Debug, Clone)]
pub enum Refusal {
    /// No control plane to forward to (501 / UNIMPLEMENTED).
    NoControlPlane(String),
    /// The control plane was not reached, or did not answer (503 / UNAVAILABLE).
    Unreachable(String),
    /// The request itself is wrong (400, 404, 405, 413, 415).
    Request(RequestError),
    /// The control plane's own answer to a preliminary request, passed through as it is.
    Upstream(Box<Answer>),
    /// The write is applied at `version`, but this sidecar did not reach it within the wait
    /// and the policy is `fail` (424 / ABORTED).
    NotSynced {
        version: u64,
        waited: Duration,
        active: Option<u64>,
    },
}

impl Refusal {
    fn message(&self) -> String {
        match self {
            Refusal::NoControlPlane(m) | Refusal::Unreachable(m) => m.clone(),
            Refusal::Request(e) => e.to_string(),
            Refusal::Upstream(a) => a.error().1.unwrap_or_default(),
            Refusal::NotSynced {
                version,
                waited,
                active,
            } => format!(
                "the write is applied at version {version}, but this sidecar did not reach it within {:.3} s \
                 (active: {}); X-Timeout-Policy is `fail`",
                waited.as_secs_f64(),
                active.map_or_else(|| "none".to_string(), |v| v.to_string())
            ),
        }
    }

    pub fn into_response(self) -> Response<Full<Bytes>> {
        let message = self.message();
        let error = |status: StatusCode, code: &str| {
            json(
                status,
                &serde_json::json!({"error": {"code": code, "message": message}}),
            )
        };
        match self {
            Refusal::Request(e) => e.into_response(),
            Refusal::Upstream(a) => a.into_response(),
            Refusal::NoControlPlane(_) => error(StatusCode::NOT_IMPLEMENTED, "unimplemented"),
            Refusal::Unreachable(_) => {
                let mut resp = error(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
                resp.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static("1"));
                resp
            }
            Refusal::NotSynced { version, .. } => {
                let mut resp = error(StatusCode::FAILED_DEPENDENCY, "version_not_reached");
                resp.headers_mut().insert(VERSION_HEADER, HeaderValue::from(version));
                resp.headers_mut()
                    .insert(SYNCED_HEADER, HeaderValue::from_static("false"));
                resp
            }
        }
    }

    pub fn into_status(self) -> tonic::Status {
        let message = self.message();
        match self {
            Refusal::NoControlPlane(_) => tonic::Status::unimplemented(message),
            Refusal::Unreachable(_) => tonic::Status::unavailable(message),
            Refusal::Request(RequestError::TooLarge(_)) => tonic::Status::resource_exhausted(message),
            Refusal::Request(e) => e.into_status(),
            Refusal::Upstream(a) => a.into_status(),
            Refusal::NotSynced { version, .. } => {
                let mut s = tonic::Status::aborted(message);
                s.metadata_mut().insert(VERSION_HEADER, MetadataValue::from(version));
                s.metadata_mut()
                    .insert(SYNCED_HEADER, MetadataValue::from_static("false"));
                s
            }
        }
    }
}

/// The control plane a sidecar forwards to.
struct Upstream {
    /// `http(s)://host[/base]`, no trailing `/`.
    base: String,
    client: reqwest::Client,
    /// The key's project and environment, as path segments, once asked.
    scope: OnceCell<(String, String)>,
    /// The longest a forwarded request may take to be answered.
    answer_timeout: Duration,
}

/// Forwards writes to the control plane a sidecar follows, and waits for its index.
pub struct Forwarder {
    /// The control plane, or why there is none.
    upstream: Result<Upstream, String>,
    store: Arc<Store>,
    max_body_bytes: usize,
}

impl Forwarder {
    /// The forwarder of a sidecar running with `cfg`, answering from `store`.
    pub fn new(cfg: &Config, store: Arc<Store>) -> Forwarder {
        let upstream = match &cfg.source {
            Source::Upstream {
                base,
                protocol: Protocol::Permd,
            } => client(cfg.api_key.as_ref(), CONNECT_TIMEOUT.min(cfg.upstream_timeout)).map(|client| Upstream {
                base: base.clone(),
                client,
                scope: OnceCell::new(),
                answer_timeout: cfg.upstream_timeout,
            }),
            Source::Upstream {
                base,
                protocol: Protocol::Permit,
            } => Err(format!(
                "this sidecar pulls `{base}` with the Permit protocol; writes need a control plane source \
                 (`--source http(s)://…` with the native protocol, its key in PERMD_API_KEY or api_key_file)"
            )),
            Source::File(_) => Err(format!(
                "this sidecar follows `{}`; writes need a control plane source (`--source http(s)://…` with \
                 the native protocol, its key in PERMD_API_KEY or api_key_file)",
                cfg.source.display()
            )),
        };
        Forwarder {
            upstream,
            store,
            max_body_bytes: cfg.max_body_bytes,
        }
    }

    /// Whether writes are forwarded (a control plane is configured).
    pub fn enabled(&self) -> bool {
        self.upstream.is_ok()
    }

    /// The control plane, or a 501 saying why there is none; `what` says what needed it.
    fn upstream(&self, what: &str) -> Result<&Upstream, Refusal> {
        self.upstream
            .as_ref()
            .map_err(|why| Refusal::NoControlPlane(format!("{what}: {why}")))
    }

    /// One request to the control plane; its answer read whole (bounded).
    async fn send(
        &self,
        up: &Upstream,
        method: Method,
        path_and_query: &str,
        content_type: Option<&HeaderValue>,
        request_id: Option<&[u8]>,
        body: Bytes,
    ) -> Result<Answer, Refusal> {
        let url = format!("{}{path_and_query}", up.base);
        let mut req = up.client.request(method.clone(), &url).timeout(up.answer_timeout);
        if let Some(ct) = content_type {
            req = req.header(CONTENT_TYPE, ct);
        }
        if let Some(id) = request_id.and_then(|v| HeaderValue::from_bytes(v).ok()) {
            req = req.header("x-request-id", id);
        }
        if !body.is_empty() || matches!(method, Method::POST | Method::PUT | Method::PATCH) {
            req = req.body(body);
        }
        let unreachable = |e: reqwest::Error| {
            let msg = if e.is_connect() {
                format!(
                    "the control plane at `{}` cannot be reached: {}",
                    up.base,
                    source_chain(&e)
                )
            } else if e.is_timeout() {
                format!(
                    "the control plane at `{}` did not answer within {} s; the write may or may not be applied",
                    up.base,
                    up.answer_timeout.as_secs_f64()
                )
            } else {
                format!(
                    "the control plane at `{}` gave no complete answer ({}); the write may or may not be applied",
                    up.base,
                    source_chain(&e)
                )
            };
            tracing::warn!(error = %msg, %method, "forwarding to the control plane failed; checks keep answering");
            Refusal::Unreachable(msg)
        };
        let mut resp = req.send().await.map_err(unreachable)?;
        let status = resp.status();
        let headers = resp.headers();
        let version = headers
            .get(VERSION_HEADER)
            .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
        let content_type = headers.get(CONTENT_TYPE).cloned();
        let retry_after = headers.get(RETRY_AFTER).cloned();
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(unreachable)? {
            if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(Refusal::Unreachable(format!(
                    "the control plane's answer is larger than {MAX_ANSWER_BYTES} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        tracing::debug!(%method, path = path_and_query, status = status.as_u16(), ?version, "forwarded");
        Ok(Answer {
            status,
            content_type,
            retry_after,
            body: Bytes::from(body),
            version,
            synced: None,
        })
    }

    /// Waits, per `wait`, for the index to reach the version of a successful answer.
    async fn settle(&self, mut answer: Answer, wait: Wait) -> Result<Answer, Refusal> {
        let Some(version) = answer.version.filter(|_| answer.status.is_success()) else {
            return Ok(answer);
        };
        let started = Instant::now();
        let reached = self.store.at_least(version, wait.timeout).await.is_some();
        answer.synced = Some(reached);
        if reached || wait.policy == TimeoutPolicy::Ignore {
            return Ok(answer);
        }
        Err(Refusal::NotSynced {
            version,
            waited: started.elapsed(),
            active: self.store.load().map(|ix| ix.version()),
        })
    }

    /// The key's project and environment as path segments: `GET {source}/v1/project`, asked
    /// once (a failure is not kept: the next write asks again).
    async fn scope<'a>(&self, up: &'a Upstream) -> Result<&'a (String, String), Refusal> {
        up.scope
            .get_or_try_init(|| async {
                let a = self
                    .send(up, Method::GET, "/v1/project", None, None, Bytes::new())
                    .await?;
                if !a.status.is_success() {
                    return Err(Refusal::Upstream(Box::new(a)));
                }
                let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap_or_default();
                match (v["project"].as_str(), v["env"].as_str()) {
                    (Some(p), Some(e)) if !p.is_empty() && !e.is_empty() => Ok((encode_segment(p), encode_segment(e))),
                    _ => Err(Refusal::Unreachable(format!(
                        "`{}/v1/project` did not name the key's project and environment",
                        up.base
                    ))),
                }
            })
            .await
    }

    /// Answers `/facts/…` on the HTTP port: forwarded to `{source}/v2/facts/{project}/{env}/…`.
    pub async fn facts<B>(&self, req: Request<B>) -> Response<Full<Bytes>>
    where
        B: hyper::body::Body<Data = Bytes> + Send,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        self.facts_inner(req).await.unwrap_or_else(Refusal::into_response)
    }

    async fn facts_inner<B>(&self, req: Request<B>) -> Result<Response<Full<Bytes>>, Refusal>
    where
        B: hyper::body::Body<Data = Bytes> + Send,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let path = req.uri().path().to_owned();
        let method = req.method().clone();
        if !matches!(
            method,
            Method::GET | Method::HEAD | Method::POST | Method::PUT | Method::PATCH | Method::DELETE
        ) {
            return Err(Refusal::Request(RequestError::MethodNotAllowed {
                method: method.to_string(),
                allow: "GET, HEAD, POST, PUT, PATCH, DELETE",
            }));
        }
        let rest = facts_rest(&path)?;
        let up = self.upstream("Permit's facts (`/facts/…`) belong to the control plane")?;
        let wait = Wait::from_headers(req.headers()).map_err(|m| Refusal::Request(RequestError::Invalid(m)))?;
        let query = req.uri().query().map(str::to_owned);
        let content_type = req.headers().get(CONTENT_TYPE).cloned();
        let request_id = req.headers().get("x-request-id").map(|v| v.as_bytes().to_vec());
        let body = read_body(req, self.max_body_bytes).await.map_err(Refusal::Request)?;
        let (rest, body) = match user_roles(&rest, &method) {
            Some(user) => ("role_assignments".to_string(), with_user(&body, &user)?),
            None => (rest, body),
        };
        let (project, env) = self.scope(up).await?;
        let mut target = format!("/v2/facts/{project}/{env}/{rest}");
        if let Some(q) = query {
            target.push('?');
            target.push_str(&q);
        }
        let answer = self
            .send(up, method, &target, content_type.as_ref(), request_id.as_deref(), body)
            .await?;
        Ok(self.settle(answer, wait).await?.into_response())
    }

    /// Forwards a perm/v1 write RPC: `POST {source}/perm.v1.<service>/<method>` with the
    /// message as JSON; the answer's JSON is the response message.
    pub async fn rpc<Req, Resp>(
        &self,
        service: &str,
        method: &str,
        req: tonic::Request<Req>,
    ) -> Result<tonic::Response<Resp>, tonic::Status>
    where
        Req: Serialize,
        Resp: DeserializeOwned + Default,
    {
        self.rpc_inner(service, method, req).await.map_err(Refusal::into_status)
    }

    async fn rpc_inner<Req, Resp>(
        &self,
        service: &str,
        method: &str,
        req: tonic::Request<Req>,
    ) -> Result<tonic::Response<Resp>, Refusal>
    where
        Req: Serialize,
        Resp: DeserializeOwned + Default,
    {
        let up = self.upstream(&format!("{method} changes data that belongs to the control plane"))?;
        let wait = Wait::from_metadata(req.metadata()).map_err(|m| Refusal::Request(RequestError::Invalid(m)))?;
        let request_id = req.metadata().get("x-request-id").map(|v| v.as_bytes().to_vec());
        let body = serde_json::to_vec(req.get_ref())
            .map_err(|e| Refusal::Request(RequestError::invalid(format!("the request cannot be encoded: {e}"))))?;
        if body.len() > self.max_body_bytes {
            return Err(Refusal::Request(RequestError::TooLarge(self.max_body_bytes)));
        }
        let json_type = HeaderValue::from_static("application/json");
        let answer = self
            .send(
                up,
                Method::POST,
                &format!("/perm.v1.{service}/{method}"),
                Some(&json_type),
                request_id.as_deref(),
                Bytes::from(body),
            )
            .await?;
        if !answer.status.is_success() {
            return Err(Refusal::Upstream(Box::new(answer)));
        }
        let answer = self.settle(answer, wait).await?;
        let message = if answer.body.iter().all(u8::is_ascii_whitespace) {
            Resp::default()
        } else {
            serde_json::from_slice(&answer.body).map_err(|e| {
                Refusal::Unreachable(format!(
                    "the control plane's answer to {service}/{method} is not its response message: {e}"
                ))
            })?
        };
        let mut resp = tonic::Response::new(message);
        if let Some(v) = answer.version {
            resp.metadata_mut().insert(VERSION_HEADER, MetadataValue::from(v));
        }
        if let Some(s) = answer.synced {
            resp.metadata_mut().insert(
                SYNCED_HEADER,
                MetadataValue::from_static(if s { "true" } else { "false" }),
            );
        }
        Ok(resp)
    }
}

/// The client for the control plane: rustls with the ring provider, a short connect timeout,
/// and the key as a sensitive default header (never printed with a request).
fn client(key: Option<&ApiKey>, connect_timeout: Duration) -> Result<reqwest::Client, String> {
    // Another part of the process may have installed a provider already; either is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut headers = HeaderMap::new();
    if let Some(key) = key {
        let mut value = HeaderValue::from_str(&format!("Bearer {}", key.expose()))
            .map_err(|_| "`api_key_file`: the API key cannot be sent in a header".to_string())?;
        value.set_sensitive(true);
        headers.insert(http::header::AUTHORIZATION, value);
    }
    reqwest::Client::builder()
        .user_agent(concat!("permd/", env!("CARGO_PKG_VERSION")))
        .default_headers(headers)
        .connect_timeout(connect_timeout)
        // Below the control plane's idle keep-alive timeout (10 s): a write is not sent on a
        // connection the server is closing at that moment (it could not be retried safely).
        .pool_idle_timeout(POOL_IDLE)
        .tcp_nodelay(true)
        .build()
        .map_err(|e| format!("cannot build the client for the control plane: {e}"))
}

/// An error with its causes, `a: b: c` (reqwest's own text says little: "error sending request").
fn source_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

/// The part of a `/facts/…` path after `/facts/`, checked to be safe to put under the control
/// plane's `/v2/facts/{project}/{env}/`: no dot segments (which would climb out of it), only
/// the characters of a path.
fn facts_rest(path: &str) -> Result<String, Refusal> {
    let rest = path
        .strip_prefix("/facts/")
        .filter(|r| !r.is_empty())
        .ok_or_else(|| Refusal::Request(RequestError::NotFound(path.to_owned())))?;
    let path_char = |b: u8| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@%/".contains(&b);
    if !rest.bytes().all(path_char) {
        return Err(Refusal::Request(RequestError::invalid(format!(
            "path `{path}`: holds a character that must be percent-encoded"
        ))));
    }
    for seg in rest.split('/') {
        let decoded = percent_decode(seg).unwrap_or_default();
        if decoded == "." || decoded == ".." {
            return Err(Refusal::Request(RequestError::NotFound(path.to_owned())));
        }
    }
    Ok(rest.to_owned())
}

/// `users/{id}/roles` with POST or DELETE (assign / unassign a role): the decoded `{id}`.
fn user_roles(rest: &str, method: &Method) -> Option<String> {
    if !matches!(*method, Method::POST | Method::DELETE) {
        return None;
    }
    let segs: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
    match segs.as_slice() {
        ["users", id, "roles"] if !id.is_empty() => percent_decode(id),
        _ => None,
    }
}

/// The body of `users/{id}/roles` with `user` set to the path's user.
fn with_user(body: &[u8], user: &str) -> Result<Bytes, Refusal> {
    let mut v: serde_json::Value = if body.iter().all(u8::is_ascii_whitespace) {
        serde_json::Value::Object(serde_json::Map::new())
    } else {
        serde_json::from_slice(body)
            .map_err(|e| Refusal::Request(RequestError::invalid(format!("body is not valid JSON: {e}"))))?
    };
    let Some(obj) = v.as_object_mut() else {
        return Err(Refusal::Request(RequestError::invalid(
            "body: expected a JSON object such as {\"role\": \"viewer\", \"tenant\": \"default\"}",
        )));
    };
    obj.insert("user".into(), serde_json::Value::String(user.to_owned()));
    Ok(Bytes::from(serde_json::to_vec(&v).unwrap_or_default()))
}

/// Decodes `%XX` escapes; `None` when malformed or not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        if c == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(c);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Percent-encodes a path segment (everything but the unreserved characters).
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn wait_headers() {
        let names = ("X-Wait-Timeout", "X-Timeout-Policy");
        assert_eq!(Wait::parse(None, None, names).unwrap(), Wait::default());
        let w = Wait::parse(Some(b"0.25"), Some(b"FAIL"), names).unwrap();
        assert_eq!((w.timeout, w.policy), (Duration::from_millis(250), TimeoutPolicy::Fail));
        assert_eq!(Wait::parse(Some(b""), None, names).unwrap().timeout, MAX_WAIT);
        assert_eq!(Wait::parse(Some(b"-1"), None, names).unwrap().timeout, MAX_WAIT);
        assert_eq!(Wait::parse(Some(b"1e9"), None, names).unwrap().timeout, MAX_WAIT);
        assert_eq!(Wait::parse(Some(b"0"), None, names).unwrap().timeout, Duration::ZERO);
        for bad in [&b"soon"[..], b"NaN", b"inf"] {
            let e = Wait::parse(Some(bad), None, names).unwrap_err();
            assert!(e.starts_with("`X-Wait-Timeout`"), "{e}");
        }
        let e = Wait::parse(None, Some(b"maybe"), names).unwrap_err();
        assert!(e.starts_with("`X-Timeout-Policy`"), "{e}");
    }

    #[test]
    fn facts_paths_stay_under_the_project() {
        assert_eq!(facts_rest("/facts/users/a%20b").unwrap(), "users/a%20b");
        assert_eq!(facts_rest("/facts/users").unwrap(), "users");
        for bad in [
            "/facts/",
            "/facts",
            "/facts/../v1/batches",
            "/facts/users/..",
            "/facts/%2e%2E/x",
            "/facts/users\\..\\x",
            "/facts/a b",
        ] {
            assert!(facts_rest(bad).is_err(), "{bad}");
        }
        assert_eq!(user_roles("users/a%40b/roles", &Method::POST).as_deref(), Some("a@b"));
        assert_eq!(user_roles("users/a/roles/", &Method::DELETE).as_deref(), Some("a"));
        assert_eq!(user_roles("users/a/roles", &Method::GET), None);
        assert_eq!(user_roles("users/a", &Method::POST), None);
        let b = with_user(br#"{"role":"r","tenant":"t","user":"x"}"#, "alice").unwrap();
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v, serde_json::json!({"role": "r", "tenant": "t", "user": "alice"}));
        assert!(with_user(b"[1]", "a").is_err());
        assert_eq!(encode_segment("a b/c"), "a%20b%2Fc");
    }

    #[test]
    fn refusals_map_to_codes() {
        use tonic::Code;
        assert_eq!(grpc_code(StatusCode::BAD_REQUEST, None), Code::InvalidArgument);
        assert_eq!(
            grpc_code(StatusCode::CONFLICT, Some("already_exists")),
            Code::AlreadyExists
        );
        assert_eq!(grpc_code(StatusCode::NOT_FOUND, Some("not_found")), Code::NotFound);
        assert_eq!(grpc_code(StatusCode::TOO_MANY_REQUESTS, None), Code::ResourceExhausted);
        assert_eq!(
            grpc_code(StatusCode::UNAUTHORIZED, Some("unauthenticated")),
            Code::Unauthenticated
        );
        let a = Answer {
            status: StatusCode::BAD_REQUEST,
            content_type: None,
            retry_after: Some(HeaderValue::from_static("3")),
            body: Bytes::from_static(br#"{"error":{"code":"invalid_argument","message":"`role.name`: required"}}"#),
            version: None,
            synced: None,
        };
        let s = a.into_status();
        assert_eq!(
            (s.code(), s.message()),
            (Code::InvalidArgument, "`role.name`: required")
        );
        let s = Refusal::NotSynced {
            version: 7,
            waited: Duration::from_millis(5),
            active: Some(6),
        }
        .into_status();
        assert_eq!(s.code(), Code::Aborted);
        assert_eq!(s.metadata().get(VERSION_HEADER).unwrap(), "7");
        let r = Refusal::NoControlPlane("no".into()).into_response();
        assert_eq!(r.status(), StatusCode::NOT_IMPLEMENTED);
    }
}
