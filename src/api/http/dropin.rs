//! Permit's remaining PDP paths and the endpoints proxies call (api.md, "Drop-in for what sits
//! in front of applications"): `/allowed_url`, `/allowed/all-tenants`, `/user-tenants`,
//! `/nginx_allowed` (Permit's header form), `/auth_request` (nginx `auth_request` through the
//! URL mapping rules), and `/health`, `/healthy`, `/ready`.

use super::checks::Ctx;
use super::input::{AllowedBody, Text, UserIn};
use super::{HttpState, RequestError, decode, json};
use crate::api::proxy::{self, UrlDecision};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use serde::{Deserialize, Serialize};

/// The paths this module answers, any method: nginx's `auth_request` subrequest keeps the
/// client's method.
pub const ANY_METHOD: [&str; 2] = ["/nginx_allowed", "/auth_request"];
/// The paths this module answers with POST and a JSON body.
pub const POST: [&str; 3] = ["/allowed_url", "/allowed/all-tenants", "/user-tenants"];

fn non_empty<'x>(t: &'x Option<Text<'_>>) -> Option<&'x str> {
    t.as_ref().map(|t| &*t.0).filter(|s| !s.is_empty())
}

/// `POST /allowed_url`: Permit's `UrlAuthorizationQuery`.
#[derive(Debug, Deserialize)]
struct UrlBody<'a> {
    #[serde(borrow, default)]
    user: Option<UserIn<'a>>,
    #[serde(borrow, default)]
    http_method: Option<Text<'a>>,
    #[serde(borrow, default)]
    url: Option<Text<'a>>,
    #[serde(borrow, default)]
    tenant: Option<Text<'a>>,
}

#[derive(Serialize)]
struct MappedOut<'a> {
    resource: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<&'a str>,
    action: &'a str,
    attributes: &'a crate::model::Attributes,
}

#[derive(Serialize)]
struct UrlOut<'a> {
    allow: bool,
    result: bool,
    reason: &'static str,
    version: u64,
    /// The check the URL mapped to (absent: no rule matched).
    #[serde(skip_serializing_if = "Option::is_none")]
    query: Option<MappedOut<'a>>,
}

fn url_out(d: &UrlDecision) -> UrlOut<'_> {
    UrlOut {
        allow: d.allow,
        result: d.allow,
        reason: d.reason,
        version: d.version,
        query: d.check.as_ref().map(|c| MappedOut {
            resource: &c.resource_type,
            key: c.key.as_deref(),
            action: &c.action,
            attributes: c.attributes(),
        }),
    }
}

fn need<'x>(v: Option<&'x str>, field: &str) -> Result<&'x str, RequestError> {
    v.ok_or_else(|| RequestError::invalid(format!("`{field}` is required and must not be empty")))
}

pub async fn allowed_url(ctx: &Ctx<'_>, body: &[u8]) -> Result<Response<Full<Bytes>>, RequestError> {
    let req: UrlBody = decode(body)?;
    let user = need(req.user.as_ref().and_then(|u| non_empty(&u.0)), "user")?;
    let method = need(non_empty(&req.http_method), "http_method")?;
    let url = need(non_empty(&req.url), "url")?;
    let ix = ctx.index().await?;
    let d = proxy::decide_url(&ix, method, url, user, non_empty(&req.tenant));
    Ok(json(StatusCode::OK, &url_out(&d)))
}

#[derive(Serialize)]
struct TenantAllowed<'a> {
    allow: bool,
    result: bool,
    reason: &'static str,
    tenant: crate::index::TenantInfo<'a>,
}

#[derive(Serialize)]
struct AllTenantsOut<'a> {
    allowed_tenants: Vec<TenantAllowed<'a>>,
    version: u64,
}

/// `POST /allowed/all-tenants`: the `/allowed` body checked in every tenant; the allowed ones.
pub async fn allowed_all_tenants(ctx: &Ctx<'_>, body: &[u8]) -> Result<Response<Full<Bytes>>, RequestError> {
    let req: AllowedBody = decode(body)?;
    let q = req.query("")?;
    let ix = ctx.index().await?;
    let allowed_tenants = ix
        .allowed_tenants(&q)
        .into_iter()
        .map(|(tenant, d)| TenantAllowed {
            allow: d.allow,
            result: d.allow,
            reason: d.reason.as_str(),
            tenant,
        })
        .collect();
    Ok(json(
        StatusCode::OK,
        &AllTenantsOut {
            allowed_tenants,
            version: ix.version(),
        },
    ))
}

#[derive(Debug, Deserialize)]
struct UserTenantsBody<'a> {
    #[serde(borrow, default)]
    user: Option<UserIn<'a>>,
}

/// `POST /user-tenants`: `[{"key", "attributes"}]`, the tenants where the user holds a role.
pub async fn user_tenants(ctx: &Ctx<'_>, body: &[u8]) -> Result<Response<Full<Bytes>>, RequestError> {
    let req: UserTenantsBody = decode(body)?;
    let user = req
        .user
        .as_ref()
        .and_then(|u| non_empty(&u.0))
        .ok_or_else(|| RequestError::invalid("`user` is required and must not be empty"))?;
    let ix = ctx.index().await?;
    Ok(json(StatusCode::OK, &ix.user_tenants(user)))
}

fn header<'h>(h: &'h HeaderMap, name: &str) -> Result<Option<&'h str>, RequestError> {
    match h.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(|s| Some(s.trim()).filter(|s| !s.is_empty()))
            .map_err(|_| RequestError::invalid(format!("header `{name}` is not visible ASCII"))),
    }
}

#[derive(Serialize)]
struct ProxyOut<'a> {
    allow: bool,
    result: bool,
    reason: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<u64>,
}

/// An answer nginx's `auth_request` understands: 200 allows, 403 denies, 401 when there is
/// no subject; the reason and version in `x-permd-reason` / `x-permd-version` (nginx can pass
/// them upstream with `auth_request_set`).
fn proxy_answer(allow: bool, reason: &str, version: Option<u64>, status: StatusCode) -> Response<Full<Bytes>> {
    let mut resp = json(
        status,
        &ProxyOut {
            allow,
            result: allow,
            reason,
            version,
        },
    );
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(reason) {
        h.insert("x-permd-reason", v);
    }
    if let Some(v) = version {
        h.insert("x-permd-version", HeaderValue::from(v));
    }
    resp
}

fn decided(allow: bool, reason: &str, version: u64) -> Response<Full<Bytes>> {
    let status = if allow { StatusCode::OK } else { StatusCode::FORBIDDEN };
    proxy_answer(allow, reason, Some(version), status)
}

/// `/nginx_allowed`: Permit's header form (`permit-user-key`, `permit-tenant-id` (or
/// `permit-tenant`), `permit-action`, `permit-resource-type`, and permd's `permit-resource-key`).
pub async fn nginx_allowed(ctx: &Ctx<'_>, headers: &HeaderMap) -> Result<Response<Full<Bytes>>, RequestError> {
    let need = |name: &str| -> Result<&str, RequestError> {
        header(headers, name)?.ok_or_else(|| RequestError::invalid(format!("header `{name}` is required")))
    };
    let user = need("permit-user-key")?;
    let action = need("permit-action")?;
    let resource_type = need("permit-resource-type")?;
    let tenant = match header(headers, "permit-tenant-id")? {
        Some(t) => Some(t),
        None => header(headers, "permit-tenant")?,
    };
    let key = header(headers, "permit-resource-key")?;
    let ix = ctx.index().await?;
    let d = ix.decide(&crate::index::Query {
        subject: crate::index::Subject::User(user),
        action,
        resource_type,
        resource_key: key,
        org: tenant,
        group_type: None,
        request: None,
    });
    Ok(decided(d.allow, d.reason.as_str(), d.version))
}

/// `/auth_request`: nginx `auth_request` for any application: `X-Original-Method` and
/// `X-Original-URI` through the URL mapping rules, the user from the configured header
/// (`proxy.user_header`), the tenant from `proxy.tenant_header` or `proxy.default_tenant`.
pub async fn auth_request(
    ctx: &Ctx<'_>,
    state: &HttpState,
    headers: &HeaderMap,
) -> Result<Response<Full<Bytes>>, RequestError> {
    let p = &state.proxy;
    let method = header(headers, "x-original-method")?
        .ok_or_else(|| RequestError::invalid("header `x-original-method` is required"))?;
    let uri = header(headers, "x-original-uri")?
        .ok_or_else(|| RequestError::invalid("header `x-original-uri` is required"))?;
    let Some(user) = header(headers, &p.user_header)? else {
        return Ok(proxy_answer(false, "no_subject", None, StatusCode::UNAUTHORIZED));
    };
    let tenant = header(headers, &p.tenant_header)?.or(p.default_tenant.as_deref());
    let ix = ctx.index().await?;
    let d = proxy::decide_url(&ix, method, uri, user, tenant);
    Ok(decided(d.allow, d.reason, d.version))
}
