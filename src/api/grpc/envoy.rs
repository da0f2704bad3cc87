//! Envoy external authorization (`envoy.service.auth.v3.Authorization/Check`) on the gRPC
//! port: Envoy's `ext_authz` filter and Istio's `CUSTOM` action. The HTTP request Envoy
//! describes (method, path with query, headers, jwt_authn metadata) is mapped through the URL
//! mapping rules (model.md §6) to a check. Envoy's own protos, from the `envoy-types` crate.
//!
//! - the URL: `scheme://host` + `path` when Envoy gives scheme and host (so Permit's absolute
//!   regex rules match), else the path;
//! - subject: the `proxy.jwt_claim` claim (default `sub`) of the JWT payload jwt_authn puts in
//!   `metadata_context.filter_metadata["envoy.filters.http.jwt_authn"]` (under
//!   `proxy.jwt_metadata_key`, default `jwt_payload`, else any payload there that has the
//!   claim), else the `proxy.user_header` header (default `x-user-id`);
//! - tenant: the `proxy.tenant_header` header (default `x-tenant-id`), else the route's
//!   `context_extensions["tenant"]`, else `proxy.default_tenant`, else the model's org rule;
//! - allowed: OK, with `x-permd-version` and `x-permd-reason` added to the upstream request;
//! - denied: PERMISSION_DENIED with HTTP 403 (401 when there is no subject, 503 before the
//!   first snapshot), the reason in `x-permd-reason` and a JSON body. A malformed request is
//!   denied with a reason naming what is missing; it never fails the RPC.

use super::GrpcState;
use crate::api::proxy::{self, ProxySettings};
use envoy_types::ext_authz::v3::pb::{
    Authorization, CheckRequest, CheckResponse, DeniedHttpResponse, HttpStatusCode, OkHttpResponse,
};
use envoy_types::ext_authz::v3::{CheckResponseExt, DeniedHttpResponseBuilder, OkHttpResponseBuilder};
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use tonic::{Request, Response, Status};

pub use envoy_types::ext_authz::v3::pb::AuthorizationServer;

/// The metadata namespace of Envoy's jwt_authn filter.
pub const JWT_AUTHN: &str = "envoy.filters.http.jwt_authn";

/// What a Check comes to before its answer is encoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub allow: bool,
    pub reason: String,
    pub version: Option<u64>,
    pub http_status: HttpStatusCode,
}

impl Verdict {
    fn deny(reason: impl Into<String>, http_status: HttpStatusCode) -> Verdict {
        Verdict {
            allow: false,
            reason: reason.into(),
            version: None,
            http_status,
        }
    }
}

fn text(v: &Value) -> Option<&str> {
    match &v.kind {
        Some(Kind::StringValue(s)) if !s.is_empty() => Some(s),
        _ => None,
    }
}

/// The claim of a JWT payload struct.
fn claim<'a>(payload: &'a Struct, name: &str) -> Option<&'a str> {
    payload.fields.get(name).and_then(text)
}

/// The subject from jwt_authn's metadata: the configured payload key first, then any payload
/// struct in the namespace that has the claim (providers keyed by name or issuer).
fn jwt_subject<'a>(req: &'a CheckRequest, p: &ProxySettings) -> Option<&'a str> {
    let ns = req
        .attributes
        .as_ref()?
        .metadata_context
        .as_ref()?
        .filter_metadata
        .get(JWT_AUTHN)?;
    let payload_of = |v: &'a Value| match &v.kind {
        Some(Kind::StructValue(s)) => Some(s),
        _ => None,
    };
    if let Some(s) = ns.fields.get(&p.jwt_metadata_key).and_then(payload_of) {
        return claim(s, &p.jwt_claim);
    }
    let mut keys: Vec<&String> = ns.fields.keys().collect();
    keys.sort();
    keys.into_iter()
        .filter_map(|k| ns.fields.get(k).and_then(payload_of))
        .find_map(|s| claim(s, &p.jwt_claim))
}

/// The decision for one Check, from the active index (`None`: no snapshot yet).
pub fn verdict(ix: Option<&crate::index::Index>, req: &CheckRequest, p: &ProxySettings) -> Verdict {
    let Some(attrs) = req.attributes.as_ref() else {
        return Verdict::deny("malformed_request: `attributes` is missing", HttpStatusCode::Forbidden);
    };
    let Some(http) = attrs.request.as_ref().and_then(|r| r.http.as_ref()) else {
        return Verdict::deny(
            "malformed_request: `attributes.request.http` is missing",
            HttpStatusCode::Forbidden,
        );
    };
    if http.path.is_empty() {
        return Verdict::deny(
            "malformed_request: `attributes.request.http.path` is empty",
            HttpStatusCode::Forbidden,
        );
    }
    if http.method.is_empty() {
        return Verdict::deny(
            "malformed_request: `attributes.request.http.method` is empty",
            HttpStatusCode::Forbidden,
        );
    }
    // Envoy lower-cases header names; with `encode_raw_headers` they come in `header_map`.
    let header = |name: &str| -> Option<String> {
        if let Some(v) = http.headers.get(name) {
            return Some(v.clone());
        }
        http.header_map.as_ref().and_then(|m| {
            m.headers.iter().find(|h| h.key.eq_ignore_ascii_case(name)).map(|h| {
                if h.value.is_empty() {
                    String::from_utf8_lossy(&h.raw_value).into_owned()
                } else {
                    h.value.clone()
                }
            })
        })
    };
    let non_empty = |s: String| {
        let t = s.trim();
        (!t.is_empty()).then(|| t.to_owned())
    };
    let user = match jwt_subject(req, p) {
        Some(u) => u.to_owned(),
        None => match header(&p.user_header).and_then(non_empty) {
            Some(u) => u,
            None => {
                return Verdict::deny(
                    format!(
                        "no_subject: no `{}` claim in jwt_authn metadata and no `{}` header",
                        p.jwt_claim, p.user_header
                    ),
                    HttpStatusCode::Unauthorized,
                );
            }
        },
    };
    let tenant = header(&p.tenant_header)
        .and_then(non_empty)
        .or_else(|| attrs.context_extensions.get("tenant").cloned().and_then(non_empty))
        .or_else(|| p.default_tenant.clone());
    let Some(ix) = ix else {
        return Verdict::deny(
            "not_ready: no snapshot is active yet",
            HttpStatusCode::ServiceUnavailable,
        );
    };
    // The absolute URL when Envoy says the scheme and host, so rules in Permit's absolute
    // regex form match too; templates and path regexes see the same path either way.
    let target = match (http.scheme.as_str(), http.host.as_str()) {
        ("", _) | (_, "") => std::borrow::Cow::Borrowed(http.path.as_str()),
        (scheme, host) if http.path.starts_with('/') => {
            std::borrow::Cow::Owned(format!("{scheme}://{host}{}", http.path))
        }
        _ => std::borrow::Cow::Borrowed(http.path.as_str()),
    };
    let d = proxy::decide_url(ix, &http.method, &target, &user, tenant.as_deref());
    Verdict {
        allow: d.allow,
        reason: d.reason.to_owned(),
        version: Some(d.version),
        http_status: if d.allow {
            HttpStatusCode::Ok
        } else {
            HttpStatusCode::Forbidden
        },
    }
}

/// Encodes a verdict as Envoy expects it.
pub fn response(v: &Verdict) -> CheckResponse {
    if v.allow {
        let mut ok = OkHttpResponseBuilder::new();
        if let Some(version) = v.version {
            ok.add_header("x-permd-version", version.to_string(), None, false);
        }
        ok.add_header("x-permd-reason", v.reason.clone(), None, false);
        let mut resp = CheckResponse::with_status(Status::ok(""));
        resp.set_http_response(OkHttpResponse::from(ok));
        return resp;
    }
    let mut denied = DeniedHttpResponseBuilder::new();
    denied.set_http_status(v.http_status);
    // Header values are one line: the reason's code before any detail.
    let code = v.reason.split(':').next().unwrap_or_default();
    denied.add_header("x-permd-reason", code, None, false);
    denied.add_header("content-type", "application/json", None, false);
    if let Some(version) = v.version {
        denied.add_header("x-permd-version", version.to_string(), None, false);
    }
    let body = serde_json::json!({"allow": false, "reason": v.reason, "version": v.version});
    denied.set_body(body.to_string());
    let status = match v.http_status {
        HttpStatusCode::Unauthorized => Status::unauthenticated(v.reason.clone()),
        HttpStatusCode::ServiceUnavailable => Status::unavailable(v.reason.clone()),
        _ => Status::permission_denied(v.reason.clone()),
    };
    let mut resp = CheckResponse::with_status(status);
    resp.set_http_response(DeniedHttpResponse::from(denied));
    resp
}

#[tonic::async_trait]
impl Authorization for GrpcState {
    async fn check(&self, request: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        let ix = self.store.load();
        let v = verdict(ix.as_deref(), request.get_ref(), &self.proxy);
        Ok(Response::new(response(&v)))
    }
}
