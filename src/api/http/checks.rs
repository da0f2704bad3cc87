//! The check endpoints: Permit `/allowed` and `/allowed/bulk`, perm/v1 `/v1/enforce`, AuthZEN
//! evaluation(s). Each answer carries the version it was made at.

use super::input::{AllowedBody, AzBatch, AzEvaluation, EnforceBody};
use super::{HttpState, RequestError, decode, json};
use crate::index::{Decision, Explanation, Index, Query, Reason};
use crate::metrics::{self, Api};
use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode};
use http_body_util::Full;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most checks in one bulk or batch request.
pub const MAX_BATCH: usize = 1000;
/// Longest `X-Permd-Wait-Ms` honoured.
const MAX_WAIT_MS: u64 = 60_000;

pub struct Ctx<'a> {
    pub state: &'a HttpState,
    pub explain: bool,
    pub min_version: Option<MinVersion>,
    /// When the body had been read.
    pub started: Instant,
    /// The client's `x-request-id`, for the decision log.
    pub request_id: Option<http::HeaderValue>,
}

/// `X-Permd-Min-Version` / `X-Permd-Wait-Ms`: read-your-writes on the sidecar.
#[derive(Debug, Clone, Copy)]
pub struct MinVersion {
    min: u64,
    wait_ms: u64,
}

impl MinVersion {
    pub fn from_headers(h: &HeaderMap) -> Result<Option<MinVersion>, RequestError> {
        let num = |name: &str| -> Result<Option<u64>, RequestError> {
            match h.get(name) {
                None => Ok(None),
                Some(v) => v
                    .to_str()
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .map(Some)
                    .ok_or_else(|| RequestError::invalid(format!("header `{name}` must be an unsigned integer"))),
            }
        };
        let Some(min) = num("x-permd-min-version")? else {
            return Ok(None);
        };
        let wait_ms = num("x-permd-wait-ms")?.unwrap_or(1000).min(MAX_WAIT_MS);
        Ok(Some(MinVersion { min, wait_ms }))
    }
}

impl Ctx<'_> {
    /// Counts the decisions of one answered request and offers it to the decision log.
    fn done(&self, api: Api, body: &[u8], reasons: &[Reason], version: u64) {
        metrics::record_decisions(
            api,
            self.started,
            reasons,
            version,
            || serde_json::from_slice(body).unwrap_or(serde_json::Value::Null),
            self.request_id.as_ref(),
        );
    }

    /// The index to answer from: the active one, or once it reaches the requested version.
    pub(super) async fn index(&self) -> Result<Arc<Index>, RequestError> {
        let store = &self.state.store;
        match self.min_version {
            None => store
                .load()
                .ok_or_else(|| RequestError::Unavailable("no snapshot is active yet".into())),
            Some(mv) => store
                .at_least(mv.min, Duration::from_millis(mv.wait_ms))
                .await
                .ok_or_else(|| RequestError::VersionNotReached {
                    min: mv.min,
                    wait_ms: mv.wait_ms,
                    active: store.load().map_or_else(|| "none".into(), |i| i.version().to_string()),
                }),
        }
    }
}

fn debug(ix: &Index, q: &Query<'_>, d: &Decision, want: bool) -> Option<Explanation> {
    want.then(|| ix.explain(q, d))
}

#[derive(Serialize)]
struct AllowedOut {
    allow: bool,
    result: bool,
    reason: &'static str,
    version: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    debug: Option<Explanation>,
}

pub async fn allowed(ctx: &Ctx<'_>, body: &[u8]) -> Result<Response<Full<Bytes>>, RequestError> {
    let mut req: AllowedBody = decode(body)?;
    req.prepare();
    let q = req.query("")?;
    let ix = ctx.index().await?;
    let d = ix.decide(&q);
    let resp = json(
        StatusCode::OK,
        &AllowedOut {
            allow: d.allow,
            result: d.allow,
            reason: d.reason.as_str(),
            version: d.version,
            debug: debug(&ix, &q, &d, ctx.explain || req.explain),
        },
    );
    ctx.done(Api::Allowed, body, &[d.reason], d.version);
    Ok(resp)
}

/// A bulk body: a JSON array of `/allowed` bodies, or `{"checks": [...]}`.
#[derive(Deserialize)]
#[serde(untagged)]
enum BulkBody<'a> {
    #[serde(borrow)]
    List(Vec<AllowedBody<'a>>),
    Wrapped {
        #[serde(borrow)]
        checks: Vec<AllowedBody<'a>>,
    },
}

#[derive(Serialize)]
struct BulkEntry {
    allow: bool,
    result: bool,
    reason: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    debug: Option<Explanation>,
}

#[derive(Serialize)]
struct BulkOut {
    allow: Vec<BulkEntry>,
    version: u64,
}

pub async fn allowed_bulk(ctx: &Ctx<'_>, body: &[u8]) -> Result<Response<Full<Bytes>>, RequestError> {
    let mut checks: Vec<AllowedBody> = match decode::<Vec<AllowedBody>>(body) {
        Ok(list) => list,
        Err(list_err) => match serde_json::from_slice::<BulkBody>(body) {
            Ok(BulkBody::Wrapped { checks } | BulkBody::List(checks)) => checks,
            Err(_) => return Err(list_err),
        },
    };
    if checks.len() > MAX_BATCH {
        return Err(RequestError::invalid(format!(
            "{} checks given; at most {MAX_BATCH} per request",
            checks.len()
        )));
    }
    for c in &mut checks {
        c.prepare();
    }
    let queries = checks
        .iter()
        .enumerate()
        .map(|(i, c)| c.query(&format!("[{i}].")))
        .collect::<Result<Vec<_>, _>>()?;
    let ix = ctx.index().await?;
    let mut reasons = Vec::with_capacity(queries.len());
    let allow = queries
        .iter()
        .zip(&checks)
        .map(|(q, c)| {
            let d = ix.decide(q);
            reasons.push(d.reason);
            BulkEntry {
                allow: d.allow,
                result: d.allow,
                reason: d.reason.as_str(),
                debug: debug(&ix, q, &d, ctx.explain || c.explain),
            }
        })
        .collect();
    let resp = json(
        StatusCode::OK,
        &BulkOut {
            allow,
            version: ix.version(),
        },
    );
    ctx.done(Api::AllowedBulk, body, &reasons, ix.version());
    Ok(resp)
}

#[derive(Serialize)]
struct EnforceOut {
    ok: bool,
    code: &'static str,
    version: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    debug: Option<Explanation>,
}

pub async fn enforce(ctx: &Ctx<'_>, body: &[u8]) -> Result<Response<Full<Bytes>>, RequestError> {
    let req: EnforceBody = decode(body)?;
    let q = req.query()?;
    let ix = ctx.index().await?;
    let d = ix.decide(&q);
    let resp = json(
        StatusCode::OK,
        &EnforceOut {
            ok: d.allow,
            code: d.reason.as_str(),
            version: d.version,
            debug: debug(&ix, &q, &d, ctx.explain || req.explain),
        },
    );
    ctx.done(Api::Enforce, body, &[d.reason], d.version);
    Ok(resp)
}

#[derive(Serialize)]
struct AzContext {
    reason: &'static str,
    version: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    debug: Option<Explanation>,
}

#[derive(Serialize)]
struct AzOut {
    decision: bool,
    context: AzContext,
}

fn az_out(ix: &Index, q: &Query<'_>, explain: bool) -> (AzOut, Reason) {
    let d = ix.decide(q);
    let out = AzOut {
        decision: d.allow,
        context: AzContext {
            reason: d.reason.as_str(),
            version: d.version,
            debug: debug(ix, q, &d, explain),
        },
    };
    (out, d.reason)
}

pub async fn evaluation(ctx: &Ctx<'_>, body: &[u8]) -> Result<Response<Full<Bytes>>, RequestError> {
    let mut req: AzEvaluation = decode(body)?;
    req.prepare();
    let q = req.query("")?;
    let ix = ctx.index().await?;
    let (out, reason) = az_out(&ix, &q, ctx.explain || req.explain);
    let resp = json(StatusCode::OK, &out);
    ctx.done(Api::Evaluation, body, &[reason], ix.version());
    Ok(resp)
}

#[derive(Serialize)]
struct AzBatchOut {
    evaluations: Vec<AzOut>,
}

pub async fn evaluations(ctx: &Ctx<'_>, body: &[u8]) -> Result<Response<Full<Bytes>>, RequestError> {
    let mut req: AzBatch = decode(body)?;
    let Some(items) = &req.evaluations else {
        // No `evaluations`: a single evaluation in the batch endpoint's shape.
        req.defaults.prepare();
        let q = req.defaults.query("")?;
        let ix = ctx.index().await?;
        let (out, reason) = az_out(&ix, &q, ctx.explain || req.defaults.explain);
        let resp = json(StatusCode::OK, &AzBatchOut { evaluations: vec![out] });
        ctx.done(Api::Evaluations, body, &[reason], ix.version());
        return Ok(resp);
    };
    if items.len() > MAX_BATCH {
        return Err(RequestError::invalid(format!(
            "`evaluations` has {} items; at most {MAX_BATCH} per request",
            items.len()
        )));
    }
    let semantic = req
        .options
        .as_ref()
        .and_then(|o| o.evaluations_semantic.as_ref())
        .map(|s| &*s.0);
    let stop_on: Option<bool> = match semantic {
        None | Some("execute_all") => None,
        Some("deny_on_first_deny") => Some(false),
        Some("permit_on_first_permit") => Some(true),
        Some(other) => {
            return Err(RequestError::invalid(format!(
                "`options.evaluations_semantic` is `{other}`; expected execute_all, deny_on_first_deny or permit_on_first_permit"
            )));
        }
    };
    let merged: Vec<AzEvaluation> = items
        .iter()
        .map(|e| {
            let mut m = e.merged(&req.defaults);
            m.prepare();
            m
        })
        .collect();
    let queries = merged
        .iter()
        .enumerate()
        .map(|(i, e)| e.query(&format!("evaluations[{i}].")))
        .collect::<Result<Vec<_>, _>>()?;
    let ix = ctx.index().await?;
    let mut evaluations = Vec::with_capacity(queries.len());
    let mut reasons = Vec::with_capacity(queries.len());
    for (q, e) in queries.iter().zip(&merged) {
        let (out, reason) = az_out(&ix, q, ctx.explain || e.explain);
        let stop = stop_on == Some(out.decision);
        evaluations.push(out);
        reasons.push(reason);
        if stop {
            break;
        }
    }
    let resp = json(StatusCode::OK, &AzBatchOut { evaluations });
    ctx.done(Api::Evaluations, body, &reasons, ix.version());
    Ok(resp)
}
