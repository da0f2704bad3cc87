//! The control plane's HTTP face: the native protocol of sync.md (`GET /v1/snapshot`,
//! `GET /v1/deltas?since=V`), the write primitive `POST /v1/batches`, the Permit-style REST
//! of [`super::permit`], and the operations endpoints (`/healthz`, `/readyz`, `/metrics`,
//! open without a key). Every other route needs the project's key; errors become JSON in
//! `wire` as on the sidecar.

use super::Control;
use super::auth::db_error;
use super::feed::{Line, PAGE};
use crate::model::{Encoding, ops_from_json};
use crate::wire::{RequestError, json, read_body};
use bytes::Bytes;
use http::header::{CONTENT_TYPE, ETAG};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;

pub type Body = BoxBody<Bytes, Infallible>;

/// The header every write answers with.
pub const VERSION_HEADER: &str = "x-permd-version";

pub fn full(resp: Response<Full<Bytes>>) -> Response<Body> {
    resp.map(BodyExt::boxed)
}

/// The one entry point hyper calls.
pub async fn handle(req: Request<Incoming>, ctl: Arc<Control>) -> Result<Response<Body>, Infallible> {
    let resp = match route(req, &ctl).await {
        Ok(r) => r,
        Err(e) => {
            match &e {
                RequestError::Unauthorized(_) => ctl.metrics.refused.with_label_values(&["unauthenticated"]).inc(),
                RequestError::RateLimited { .. } => ctl.metrics.refused.with_label_values(&["rate_limited"]).inc(),
                _ => {}
            }
            full(e.into_response())
        }
    };
    Ok(resp)
}

async fn route(req: Request<Incoming>, ctl: &Arc<Control>) -> Result<Response<Body>, RequestError> {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let only = |want: Method, allow: &'static str| -> Result<(), RequestError> {
        let head_ok = want == Method::GET && method == Method::HEAD;
        if method == want || head_ok {
            Ok(())
        } else {
            Err(RequestError::MethodNotAllowed {
                method: method.to_string(),
                allow,
            })
        }
    };
    match path.as_str() {
        "/healthz" => {
            only(Method::GET, "GET, HEAD")?;
            return Ok(full(json(StatusCode::OK, &serde_json::json!({"status": "ok"}))));
        }
        "/readyz" => {
            only(Method::GET, "GET, HEAD")?;
            return Ok(full(readyz(ctl).await));
        }
        "/metrics" => {
            only(Method::GET, "GET, HEAD")?;
            return Ok(full(metrics(ctl)));
        }
        "/v1/batches" | "/v1/snapshot" | "/v1/deltas" | "/v1/project" => {}
        p if p.starts_with("/v2/") || p.starts_with("/perm.v1.") || super::orgs::routes(p) => {}
        _ => return Err(RequestError::NotFound(path)),
    }
    // Every other route answers only for the project of a valid key.
    let project = ctl.keys.authorize(req.headers()).await?;
    match path.as_str() {
        "/v1/batches" => {
            only(Method::POST, "POST")?;
            let body = read_body(req, ctl.settings.max_body_bytes).await?;
            batches(ctl, project.project_id, &body).await
        }
        "/v1/snapshot" => {
            only(Method::GET, "GET, HEAD")?;
            snapshot(ctl, project.project_id, &req).await
        }
        "/v1/deltas" => {
            only(Method::GET, "GET")?;
            let since = since(req.uri().query())?;
            deltas(ctl, project.project_id, since).await
        }
        "/v1/project" => {
            only(Method::GET, "GET, HEAD")?;
            let version = ctl.db.version(project.project_id).await.map_err(db_error)?;
            Ok(full(json(
                StatusCode::OK,
                &serde_json::json!({
                    "organisation": project.organisation,
                    "project": project.project,
                    "env": project.env,
                    "version": version,
                }),
            )))
        }
        p if p.starts_with("/perm.v1.") => {
            only(Method::POST, "POST")?;
            let body = read_body(req, ctl.settings.max_body_bytes).await?;
            super::perm::route_json(ctl, &project, &path, &body).await
        }
        p if super::orgs::routes(p) => super::orgs::route(ctl, &project, req).await,
        _ => super::permit::route(ctl, &project, req).await,
    }
}

async fn readyz(ctl: &Control) -> Response<Full<Bytes>> {
    let ping = tokio::time::timeout(std::time::Duration::from_secs(2), ctl.db.ping()).await;
    match ping {
        Ok(Ok(())) if !*ctl.stop.borrow() => json(StatusCode::OK, &serde_json::json!({"ready": true})),
        Ok(Ok(())) => json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({"ready": false, "reason": "shutting down"}),
        ),
        _ => json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({"ready": false, "reason": "the database does not answer"}),
        ),
    }
}

fn metrics(ctl: &Control) -> Response<Full<Bytes>> {
    use prometheus::Encoder;
    let mut out = Vec::new();
    let _ = prometheus::TextEncoder::new().encode(&ctl.metrics.registry.gather(), &mut out);
    let extra = format!(
        "# HELP permd_control_snapshot_encodes_total Snapshot documents encoded (each encoding of a version once)\n\
         # TYPE permd_control_snapshot_encodes_total counter\npermd_control_snapshot_encodes_total {}\n\
         # HELP permd_control_snapshot_reads_total Snapshots read from the database\n\
         # TYPE permd_control_snapshot_reads_total counter\npermd_control_snapshot_reads_total {}\n\
         # HELP permd_control_write_transactions_total Database transactions of the write path (a group of writes each)\n\
         # TYPE permd_control_write_transactions_total counter\npermd_control_write_transactions_total {}\n\
         # HELP permd_control_delta_streams Delta streams open on this replica\n\
         # TYPE permd_control_delta_streams gauge\npermd_control_delta_streams {}\n",
        ctl.snapshots.encodes.load(Ordering::Relaxed),
        ctl.snapshots.reads.load(Ordering::Relaxed),
        ctl.groups.transactions.load(Ordering::Relaxed),
        ctl.feed.streams(),
    );
    out.extend_from_slice(extra.as_bytes());
    let mut resp = Response::new(Full::new(Bytes::from(out)));
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

/// A write's answer: `{"version": N}` and `X-Permd-Version`.
pub fn written(status: StatusCode, version: u64, body: &serde_json::Value) -> Response<Body> {
    let mut resp = json(status, body);
    resp.headers_mut().insert(VERSION_HEADER, HeaderValue::from(version));
    full(resp)
}

async fn batches(ctl: &Control, project: i64, body: &[u8]) -> Result<Response<Body>, RequestError> {
    let ops = ops_from_json(body).map_err(|e| {
        ctl.metrics.writes.with_label_values(&["rejected"]).inc();
        RequestError::invalid(e.to_string())
    })?;
    let w = super::write::write(ctl, project, ops).await?;
    Ok(written(
        StatusCode::OK,
        w.version,
        &serde_json::json!({"version": w.version}),
    ))
}

async fn snapshot(ctl: &Control, project: i64, req: &Request<Incoming>) -> Result<Response<Body>, RequestError> {
    let encoded = ctl.snapshots.current(project).await.map_err(db_error)?;
    let etag = format!("\"{}\"", encoded.version);
    let not_modified = req
        .headers()
        .get(http::header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let etag_value = HeaderValue::from_str(&etag).unwrap_or(HeaderValue::from_static("\"0\""));
    if not_modified {
        let mut resp = Response::new(Full::new(Bytes::new()).boxed());
        *resp.status_mut() = StatusCode::NOT_MODIFIED;
        resp.headers_mut().insert(ETAG, etag_value);
        return Ok(resp);
    }
    let accept = req
        .headers()
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let (encoding, content_type) = if accept.contains("msgpack") {
        (Encoding::MessagePack, "application/msgpack")
    } else {
        (Encoding::Json, "application/json")
    };
    let bytes = encoded
        .bytes(encoding, &ctl.snapshots.encodes)
        .await
        .map_err(db_error)?;
    let mut resp = Response::new(Full::new(bytes).boxed());
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp.headers_mut().insert(ETAG, etag_value);
    resp.headers_mut()
        .insert(VERSION_HEADER, HeaderValue::from(encoded.version));
    Ok(resp)
}

fn since(query: Option<&str>) -> Result<u64, RequestError> {
    let value = query
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("since="))
        .ok_or_else(|| RequestError::invalid("`since`: required, the version the client has"))?;
    value
        .parse()
        .map_err(|_| RequestError::invalid(format!("`since`: `{value}` is not a version (a whole number)")))
}

type Sender = mpsc::Sender<Result<Frame<Bytes>, Infallible>>;

async fn deltas(ctl: &Arc<Control>, project: i64, since: u64) -> Result<Response<Body>, RequestError> {
    let current = ctl.db.version(project).await.map_err(db_error)?;
    if since > current {
        return Err(RequestError::Gone(format!(
            "`since` {since} is ahead of the project's version {current}; fetch a snapshot"
        )));
    }
    if since < current && !ctl.db.has_change(project, since + 1).await.map_err(db_error)? {
        return Err(RequestError::Gone(format!(
            "`since` {since} is older than the batches kept; fetch a snapshot"
        )));
    }
    let rx = ctl.feed.subscribe(project, current);
    let (tx, body) = mpsc::channel(16);
    tokio::spawn(stream(ctl.clone(), project, since, rx, tx));
    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(body));
    let mut resp = Response::new(BodyExt::boxed(body));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
    resp.headers_mut()
        .insert(http::header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// Why a stream stops.
enum End {
    /// The client went away, or the replica stops.
    Closed,
}

/// Feeds one delta stream: what the database holds after `since`, then each new batch as the
/// hub broadcasts it, heartbeats in between. Ends the body on any trouble; the client
/// reconnects with its version.
async fn stream(ctl: Arc<Control>, project: i64, since: u64, mut rx: broadcast::Receiver<Arc<Line>>, tx: Sender) {
    let mut sent = since;
    let mut stop = ctl.stop.clone();
    let stopping = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    tokio::pin!(stopping);
    let heartbeat = ctl.settings.heartbeat;
    let mut quiet_until = Instant::now() + heartbeat;
    if catch_up(&ctl, project, &mut sent, &tx).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            _ = &mut stopping => return,
            _ = tx.closed() => return,
            _ = tokio::time::sleep_until(quiet_until) => {
                if send(&tx, Bytes::from_static(b"\n")).await.is_err() {
                    return;
                }
            }
            r = rx.recv() => match r {
                Ok(line) if line.version <= sent => continue,
                Ok(line) if line.version == sent + 1 => {
                    if send(&tx, line.bytes.clone()).await.is_err() {
                        return;
                    }
                    sent = line.version;
                }
                // A gap or a lag: the database has what was missed.
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    if catch_up(&ctl, project, &mut sent, &tx).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
        quiet_until = Instant::now() + heartbeat;
    }
}

/// Sends every kept batch after `sent`, in order; a gap (batches pruned meanwhile) ends the
/// stream, and the reconnect gets 410.
async fn catch_up(ctl: &Control, project: i64, sent: &mut u64, tx: &Sender) -> Result<(), End> {
    loop {
        let rows = match ctl.db.changes_after(project, *sent, PAGE).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::debug!(error = %e, project, "a delta stream cannot read the feed");
                return Err(End::Closed);
            }
        };
        let n = rows.len();
        for (version, batch) in rows {
            if version != *sent + 1 {
                return Err(End::Closed);
            }
            let mut line = batch.into_bytes();
            line.push(b'\n');
            send(tx, Bytes::from(line)).await?;
            *sent = version;
        }
        if n < PAGE as usize {
            return Ok(());
        }
    }
}

async fn send(tx: &Sender, bytes: Bytes) -> Result<(), End> {
    tx.send(Ok(Frame::data(bytes))).await.map_err(|_| End::Closed)
}
