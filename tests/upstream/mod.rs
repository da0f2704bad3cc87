//! A stand-in control plane for tests and for trying the whole loop by hand
//! (`cargo run --example upstream`): the native protocol of sync.md (snapshot with ETag, a
//! streamed NDJSON delta body with heartbeats, 410 for a `since` too old) and a Permit-shaped
//! REST API (`/v2/schema/...`, `/v2/facts/...` with `page`/`per_page`), served by hyper on
//! 127.0.0.1, with knobs for the faults permd must survive.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use permd::model::{DeltaBatch, Snapshot};
use serde_json::Value;
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

type Body = BoxBody<Bytes, std::io::Error>;

/// What the next delta stream does instead of behaving.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamFault {
    /// Sends the first half of the next batch line, then drops the connection.
    CutNextLine,
    /// Sends nothing more, not even heartbeats, and keeps the connection open.
    Stall,
    /// Starts a line and trickles bytes of it without ever ending it.
    EndlessLine,
}

/// One published batch: the line as sent and the version it really starts from.
struct Published {
    from: u64,
    line: String,
}

pub struct State {
    /// The current document, at the newest version.
    pub snapshot: Snapshot,
    history: Vec<Published>,
    /// A `since` below this gets 410.
    pub oldest_since: u64,
    /// Statuses answered, one each, to the next requests (429 carries `retry_after`).
    pub fail_next: VecDeque<u16>,
    pub retry_after: Option<String>,
    /// Faults for the next delta streams, one each.
    pub stream_faults: VecDeque<StreamFault>,
    /// Every connection is dropped unanswered while true.
    pub down: bool,
    /// The bearer token required, if any.
    pub token: Option<String>,
    /// Heartbeat interval on delta streams.
    pub heartbeat: Duration,
    /// When set, snapshot bodies are sent `(bytes, pause)`: that many bytes, then a pause, and
    /// so on: an upstream answering slowly byte by byte.
    pub slow_snapshot: Option<(usize, Duration)>,
    /// `(when, path and query, authorization header)` of every request.
    pub requests: Vec<(tokio::time::Instant, String, Option<String>)>,
    /// Permit-shaped lists by path (without query), paginated on request.
    pub permit: BTreeMap<String, Vec<Value>>,
    /// Paths whose list answers use Permit's `{"data", "total_count", "page_count"}` shape.
    pub paginated_shape: Vec<String>,
}

pub struct Upstream {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    /// Bumped on every publish (wakes streams) and on `drop_streams` (ends them).
    tick: watch::Sender<(u64, u64)>,
    task: tokio::task::JoinHandle<()>,
    /// Dropped with the upstream: every open connection ends then, as when a process exits.
    _alive: watch::Sender<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    /// Serves `snapshot` on 127.0.0.1:`port` (0 for any).
    pub async fn start(snapshot: Snapshot, port: u16) -> Upstream {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            oldest_since: snapshot.version,
            snapshot,
            history: Vec::new(),
            fail_next: VecDeque::new(),
            retry_after: None,
            stream_faults: VecDeque::new(),
            down: false,
            token: None,
            heartbeat: Duration::from_millis(500),
            slow_snapshot: None,
            requests: Vec::new(),
            permit: BTreeMap::new(),
            paginated_shape: Vec::new(),
        }));
        let (tick, _) = watch::channel((0, 0));
        let (alive, alive_rx) = watch::channel(());
        let (st, tk) = (state.clone(), tick.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    continue;
                };
                let (st, tk) = (st.clone(), tk.clone());
                let mut gone = alive_rx.clone();
                tokio::spawn(async move {
                    if st.lock().unwrap().down {
                        drop(conn);
                        return;
                    }
                    let svc = service_fn(move |req| handle(req, st.clone(), tk.clone()));
                    let serve = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(conn), svc);
                    tokio::select! {
                        _ = serve => {}
                        // Err once the upstream is dropped.
                        _ = gone.changed() => {}
                    }
                });
            }
        });
        Upstream {
            addr,
            state,
            tick,
            task,
            _alive: alive,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    pub fn version(&self) -> u64 {
        self.state().snapshot.version
    }

    /// Publishes a batch: the document moves to `to_version`, streams send the line.
    pub fn publish(&self, batch: &DeltaBatch) {
        let line = String::from_utf8(batch.to_json()).unwrap();
        self.publish_line(batch, line);
    }

    /// Publishes a batch whose line claims a `from_version` one past the real one: a gap.
    pub fn publish_with_gap(&self, batch: &DeltaBatch) {
        let mut lie = batch.clone();
        lie.from_version += 1;
        lie.to_version += 1;
        let line = String::from_utf8(lie.to_json()).unwrap();
        self.publish_line(batch, line);
    }

    /// Publishes `batch` to the document but sends `line` on the streams.
    pub fn publish_line(&self, batch: &DeltaBatch, line: String) {
        {
            let mut st = self.state();
            assert_eq!(
                batch.from_version, st.snapshot.version,
                "batches must follow the document"
            );
            st.snapshot.apply_ops(&batch.ops);
            st.snapshot.version = batch.to_version;
            st.history.push(Published {
                from: batch.from_version,
                line,
            });
        }
        self.tick.send_modify(|t| t.0 += 1);
    }

    /// Streams a batch without applying it to the served document (only its version moves):
    /// for benchmarks, where scanning a 1M-item document per op would measure the stand-in.
    pub fn publish_stream_only(&self, batch: &DeltaBatch) {
        let line = String::from_utf8(batch.to_json()).unwrap();
        {
            let mut st = self.state();
            assert_eq!(
                batch.from_version, st.snapshot.version,
                "batches must follow the document"
            );
            st.snapshot.version = batch.to_version;
            st.history.push(Published {
                from: batch.from_version,
                line,
            });
        }
        self.tick.send_modify(|t| t.0 += 1);
    }

    /// Forgets history: a `since` older than the current version now gets 410.
    pub fn compact(&self) {
        let mut st = self.state();
        st.oldest_since = st.snapshot.version;
    }

    /// Ends every open delta stream (cleanly), as an upstream restart would.
    pub fn drop_streams(&self) {
        self.tick.send_modify(|t| t.1 += 1);
    }

    /// Requests made so far to paths starting with `prefix`.
    pub fn count(&self, prefix: &str) -> usize {
        self.state()
            .requests
            .iter()
            .filter(|(_, p, _)| p.starts_with(prefix))
            .count()
    }
}

fn full(status: StatusCode, ct: &str, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", ct)
        .body(Full::new(body.into()).map_err(|never| match never {}).boxed())
        .unwrap()
}

fn json(status: StatusCode, v: &Value) -> Response<Body> {
    full(status, "application/json", v.to_string())
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<Mutex<State>>,
    tick: watch::Sender<(u64, u64)>,
) -> Result<Response<Body>, std::io::Error> {
    if state.lock().unwrap().down {
        // Drops the connection unanswered, kept-alive ones included.
        return Err(std::io::Error::other("down"));
    }
    let path_q = req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default();
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut st = state.lock().unwrap();
    // The stream generation as of this request: a `drop_streams` from now on ends its stream,
    // even one that comes before the stream's task first runs.
    let generation = tick.borrow().1;
    st.requests
        .push((tokio::time::Instant::now(), path_q.clone(), auth.clone()));
    if let Some(token) = &st.token
        && auth.as_deref() != Some(&format!("Bearer {token}"))
    {
        return Ok(json(
            StatusCode::UNAUTHORIZED,
            &serde_json::json!({"error": "bad token"}),
        ));
    }
    if let Some(code) = st.fail_next.pop_front() {
        let mut resp = json(
            StatusCode::from_u16(code).unwrap(),
            &serde_json::json!({"error": "injected"}),
        );
        if code == 429
            && let Some(ra) = &st.retry_after
        {
            resp.headers_mut().insert("retry-after", ra.parse().unwrap());
        }
        return Ok(resp);
    }
    let path = req.uri().path().to_string();
    let query: BTreeMap<String, String> = req
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    match path.as_str() {
        "/v1/snapshot" => {
            let version = st.snapshot.version;
            let etag = format!("\"{version}\"");
            if req.headers().get("if-none-match").and_then(|v| v.to_str().ok()) == Some(etag.as_str()) {
                let mut r = full(StatusCode::NOT_MODIFIED, "application/json", "");
                r.headers_mut().insert("etag", etag.parse().unwrap());
                return Ok(r);
            }
            let accept = req.headers().get("accept").and_then(|v| v.to_str().ok()).unwrap_or("");
            let (ct, bytes) = if accept.starts_with("application/msgpack") {
                ("application/msgpack", rmp_serde::to_vec_named(&st.snapshot).unwrap())
            } else {
                ("application/json", serde_json::to_vec(&st.snapshot).unwrap())
            };
            let slow = st.slow_snapshot;
            drop(st);
            let mut r = match slow {
                None => full(StatusCode::OK, ct, bytes),
                Some((chunk, pause)) => {
                    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(1);
                    tokio::spawn(async move {
                        for piece in bytes.chunks(chunk.max(1)) {
                            if tx.send(Ok(Frame::data(Bytes::copy_from_slice(piece)))).await.is_err() {
                                return;
                            }
                            tokio::time::sleep(pause).await;
                        }
                    });
                    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
                    Response::builder()
                        .status(StatusCode::OK)
                        .header("content-type", ct)
                        .body(BodyExt::boxed(body))
                        .unwrap()
                }
            };
            r.headers_mut().insert("etag", etag.parse().unwrap());
            Ok(r)
        }
        "/v1/deltas" => {
            let Some(since) = query.get("since").and_then(|s| s.parse::<u64>().ok()) else {
                return Ok(json(
                    StatusCode::BAD_REQUEST,
                    &serde_json::json!({"error": "since is required"}),
                ));
            };
            if since < st.oldest_since || since > st.snapshot.version {
                return Ok(json(
                    StatusCode::GONE,
                    &serde_json::json!({"error": "since is too old"}),
                ));
            }
            let start = st
                .history
                .iter()
                .position(|p| p.from >= since)
                .unwrap_or(st.history.len());
            let fault = st.stream_faults.pop_front();
            let heartbeat = st.heartbeat;
            drop(st);
            let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(64);
            tokio::spawn(stream_deltas(
                state.clone(),
                tick.subscribe(),
                generation,
                tx,
                start,
                fault,
                heartbeat,
            ));
            let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
            Ok(Response::builder()
                .status(StatusCode::OK)
                .header("content-type", "application/x-ndjson")
                .body(BodyExt::boxed(body))
                .unwrap())
        }
        p if p.starts_with("/v2/") => {
            let key = p.trim_end_matches('/').to_string();
            let Some(items) = st.permit.get(&key) else {
                return Ok(json(StatusCode::NOT_FOUND, &serde_json::json!({"detail": "not found"})));
            };
            let page: usize = query.get("page").and_then(|s| s.parse().ok()).unwrap_or(1);
            let per_page: usize = query.get("per_page").and_then(|s| s.parse().ok()).unwrap_or(30);
            if page == 0 || per_page == 0 || per_page > 100 {
                return Ok(json(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    &serde_json::json!({"detail": "page must be >= 1 and per_page between 1 and 100"}),
                ));
            }
            let slice: Vec<Value> = items
                .iter()
                .skip((page - 1) * per_page)
                .take(per_page)
                .cloned()
                .collect();
            if st.paginated_shape.contains(&key) {
                let total = items.len();
                Ok(json(
                    StatusCode::OK,
                    &serde_json::json!({"data": slice, "total_count": total, "page_count": total.div_ceil(per_page)}),
                ))
            } else {
                Ok(json(StatusCode::OK, &Value::Array(slice)))
            }
        }
        _ => Ok(json(
            StatusCode::NOT_FOUND,
            &serde_json::json!({"error": "no such path"}),
        )),
    }
}

/// Sends history from `next`, then every new batch, with heartbeats, until the client goes
/// away or `drop_streams` is called; or misbehaves as `fault` says.
async fn stream_deltas(
    state: Arc<Mutex<State>>,
    mut tick: watch::Receiver<(u64, u64)>,
    generation: u64,
    tx: mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>,
    mut next: usize,
    fault: Option<StreamFault>,
    heartbeat: Duration,
) {
    let send = |b: Bytes| {
        let tx = tx.clone();
        async move { tx.send(Ok(Frame::data(b))).await.is_ok() }
    };
    match fault {
        Some(StreamFault::Stall) => {
            tx.closed().await;
            return;
        }
        Some(StreamFault::EndlessLine) => {
            if !send(Bytes::from_static(b"{\"from_version\": ")).await {
                return;
            }
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if !send(Bytes::from_static(b" ")).await {
                    return;
                }
            }
        }
        _ => {}
    }
    let cut = fault == Some(StreamFault::CutNextLine);
    loop {
        if tick.borrow_and_update().1 != generation {
            return;
        }
        let lines: Vec<String> = {
            let st = state.lock().unwrap();
            st.history
                .get(next..)
                .unwrap_or_default()
                .iter()
                .map(|p| p.line.clone())
                .collect()
        };
        for line in lines {
            next += 1;
            if cut {
                let half = line.len() / 2;
                let _ = send(Bytes::from(line.as_bytes()[..half].to_vec())).await;
                // Give the half line time to leave before the connection is dropped.
                tokio::time::sleep(Duration::from_millis(50)).await;
                let _ = tx.send(Err(std::io::Error::other("cut"))).await;
                return;
            }
            if !send(Bytes::from(format!("{line}\n"))).await {
                return;
            }
        }
        tokio::select! {
            changed = tick.changed() => {
                if changed.is_err() || tick.borrow_and_update().1 != generation {
                    return;
                }
            }
            _ = tokio::time::sleep(heartbeat) => {
                if !send(Bytes::from_static(b"\n")).await {
                    return;
                }
            }
            _ = tx.closed() => return,
        }
    }
}
