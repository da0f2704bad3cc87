//! Operations endpoints: liveness, readiness, status, and AuthZEN discovery.

use super::{HttpState, json};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;
use serde_json::json;
use std::collections::BTreeMap;
use std::time::SystemTime;

/// Ignored items listed in full on `/v1/status`; the rest are counted.
const STATUS_IGNORED_ITEMS: usize = 100;

pub fn healthz() -> Response<Full<Bytes>> {
    json(StatusCode::OK, &json!({ "status": "ok" }))
}

fn rfc3339(t: Option<SystemTime>) -> Option<String> {
    t.map(|t| humantime::format_rfc3339_millis(t).to_string())
}

fn age_seconds(t: Option<SystemTime>) -> Option<f64> {
    let age = SystemTime::now().duration_since(t?).unwrap_or_default();
    Some((age.as_secs_f64() * 1000.0).round() / 1000.0)
}

#[derive(Serialize)]
struct Ready {
    status: &'static str,
    version: Option<u64>,
    age_seconds: Option<f64>,
    source: String,
    online: bool,
}

/// 200 once a snapshot is active (and not older than `max_staleness`), 503 otherwise.
pub fn readyz(state: &HttpState) -> Response<Full<Bytes>> {
    let version = state.store.load().map(|i| i.version());
    let st = state.store.status().clone();
    let age = age_seconds(st.last_success);
    let stale = match (state.max_staleness, age) {
        (Some(max), Some(age)) => age > max.as_secs_f64(),
        _ => false,
    };
    let status = if state.store.shutting_down() {
        "shutting_down"
    } else if version.is_none() {
        "not_ready"
    } else if stale {
        "stale"
    } else {
        "ready"
    };
    let code = if status == "ready" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(
        code,
        &Ready {
            status,
            version,
            age_seconds: age,
            source: st.source,
            online: st.online,
        },
    )
}

pub fn status(state: &HttpState) -> Response<Full<Bytes>> {
    let ix = state.store.load();
    let st = state.store.status().clone();
    let (counts, ignored) = match &ix {
        Some(ix) => {
            let counts: BTreeMap<&str, usize> = ix.counts_by_kind().iter().map(|(k, n)| (k.as_str(), *n)).collect();
            let all = ix.ignored();
            let mut by_kind: BTreeMap<&str, usize> = BTreeMap::new();
            for i in all.iter() {
                *by_kind.entry(i.kind).or_default() += 1;
            }
            let items: Vec<_> = all.iter().take(STATUS_IGNORED_ITEMS).collect();
            let ignored = json!({
                "total": all.len(),
                "by_kind": by_kind,
                "items": items,
                "truncated": all.len() > STATUS_IGNORED_ITEMS,
            });
            (json!(counts), ignored)
        }
        None => (
            json!({}),
            json!({ "total": 0, "by_kind": {}, "items": [], "truncated": false }),
        ),
    };
    let body = json!({
        "source": st.source,
        "version": ix.as_ref().map(|i| i.version()),
        "online": st.online,
        "ready": ix.is_some() && !state.store.shutting_down(),
        "activated_at": rfc3339(st.activated_at),
        "last_success": rfc3339(st.last_success),
        "age_seconds": age_seconds(st.last_success),
        "last_error": st.last_error.as_ref().map(|(at, msg)| json!({ "at": rfc3339(Some(*at)), "message": msg })),
        "rejected_total": state.store.rejected_total(),
        "cache_rejected_total": st.cache_rejected,
        "counts": counts,
        "ignored": ignored,
    });
    json(StatusCode::OK, &body)
}

/// AuthZEN PDP metadata (`/.well-known/authzen-configuration`).
pub fn authzen_configuration<B>(req: &Request<B>) -> Response<Full<Bytes>> {
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| h.bytes().all(|b| b.is_ascii_graphic()))
        .unwrap_or("127.0.0.1:7766");
    let base = format!("http://{host}");
    json(
        StatusCode::OK,
        &json!({
            "policy_decision_point": base,
            "access_evaluation_endpoint": format!("{base}/access/v1/evaluation"),
            "access_evaluations_endpoint": format!("{base}/access/v1/evaluations"),
        }),
    )
}

/// `GET /metrics`: the Prometheus text exposition. The gauges read off the store are set
/// first, off the async workers (the ignored-items count walks the index once per version).
pub async fn metrics(state: &HttpState) -> Response<Full<Bytes>> {
    let Some(m) = crate::metrics::get() else {
        return super::RequestError::NotFound("/metrics".into()).into_response();
    };
    let store = state.store.clone();
    let text = tokio::task::spawn_blocking(move || {
        m.refresh(&store);
        m.render()
    })
    .await
    .unwrap_or_default();
    let mut resp = Response::new(Full::new(Bytes::from(text)));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}
