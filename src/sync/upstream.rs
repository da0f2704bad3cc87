//! The native upstream protocol (sync.md): `GET {base}/v1/snapshot` (MessagePack or JSON,
//! ETag / If-None-Match), then `GET {base}/v1/deltas?since=V`, a long-lived NDJSON body of
//! delta batches applied in order, each whole or not at all. Reconnects with `since` = the
//! active version; `410` or a `from_version` gap means a fresh snapshot. Every wait is bounded
//! by `upstream_timeout`: the connect, a silent body, a line that never ends.

use super::{Backoff, Cache, LineSplitter, LineTooLong, SyncError, report, status_error};
use crate::index::{ApplyError, Index};
use crate::model::{DeltaBatch, Encoding};
use crate::store::Store;
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

pub struct Settings {
    pub base: String,
    pub client: reqwest::Client,
    pub timeout: Duration,
    pub max_line_bytes: usize,
    pub max_snapshot_bytes: usize,
}

/// How long the first snapshot request may take before the cache is loaded meanwhile.
const WARM_START_AFTER: Duration = Duration::from_secs(2);

/// How a delta stream ended.
#[derive(Debug)]
enum StreamEnd {
    /// The upstream closed the body (possibly mid-line: that partial line is dropped).
    Closed {
        applied: bool,
    },
    /// `since` is too old, a batch does not follow the active version, or a line is refused:
    /// only a fresh snapshot can continue.
    Resync {
        applied: bool,
        why: Option<SyncError>,
    },
    Failed {
        applied: bool,
        error: SyncError,
    },
}

/// Follows the upstream forever; the active version keeps serving through every failure.
pub async fn run(s: Settings, store: Arc<Store>, cache: Option<Arc<Cache>>) {
    let mut backoff = Backoff::default();
    let mut need_snapshot = true;
    let mut cache_tried = cache.is_none();
    loop {
        if need_snapshot || store.load().is_none() {
            let fetch = fetch_snapshot(&s, &store);
            tokio::pin!(fetch);
            let fetched = match &cache {
                // A hung upstream must not hold back the warm start for a whole timeout.
                Some(c) if !cache_tried => tokio::select! {
                    r = &mut fetch => r,
                    _ = tokio::time::sleep(WARM_START_AFTER) => {
                        cache_tried = true;
                        super::cache::warm_start(c, &store).await;
                        fetch.await
                    }
                },
                _ => fetch.await,
            };
            match fetched {
                Ok(()) => {
                    need_snapshot = false;
                    cache_tried = true;
                    backoff.reset();
                }
                Err(e) => {
                    report(&store, &e);
                    super::cache::warm_start_once(&mut cache_tried, &cache, &store).await;
                    tokio::time::sleep(e.delay(&mut backoff)).await;
                    continue;
                }
            }
        }
        match stream(&s, &store).await {
            StreamEnd::Closed { applied } => {
                tracing::debug!("delta stream closed by the upstream; reconnecting");
                if applied {
                    backoff.reset();
                } else {
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
            StreamEnd::Resync { applied, why } => {
                need_snapshot = true;
                if let Some(e) = why {
                    report(&store, &e);
                }
                if applied {
                    backoff.reset();
                }
                tokio::time::sleep(backoff.next_delay()).await;
            }
            StreamEnd::Failed { applied, error } => {
                report(&store, &error);
                if applied {
                    backoff.reset();
                }
                tokio::time::sleep(error.delay(&mut backoff)).await;
            }
        }
    }
}

/// Fetches the snapshot and publishes it; a `304` for the active version confirms it.
async fn fetch_snapshot(s: &Settings, store: &Store) -> Result<(), SyncError> {
    let m = crate::metrics::get();
    if let Some(m) = m {
        m.sync_attempt(crate::metrics::SyncKind::Snapshot);
    }
    let r = fetch_snapshot_once(s, store).await;
    if let (Some(m), Err(e)) = (m, &r) {
        m.sync_failure(crate::metrics::SyncKind::Snapshot);
        if e.is_rejection() {
            m.rejected("snapshot");
        }
    }
    r
}

async fn fetch_snapshot_once(s: &Settings, store: &Store) -> Result<(), SyncError> {
    // A MessagePack body is built while it arrives; one that path does not take is fetched
    // again and decoded whole, the reference way, which gives the answer or the error.
    match fetch_snapshot_as(s, store, true).await? {
        Some(()) => Ok(()),
        None => fetch_snapshot_as(s, store, false).await.map(drop),
    }
}

/// One snapshot request; `Ok(None)` when `streamed` was asked for and the streamed load did
/// not take the body.
async fn fetch_snapshot_as(s: &Settings, store: &Store, streamed: bool) -> Result<Option<()>, SyncError> {
    let url = format!("{}/v1/snapshot", s.base);
    let active = store.load().map(|ix| ix.version());
    let mut req = s
        .client
        .get(&url)
        .header(http::header::ACCEPT, "application/msgpack, application/json;q=0.9");
    if let Some(v) = active {
        req = req.header(http::header::IF_NONE_MATCH, format!("\"{v}\""));
    }
    let transport = |e: reqwest::Error| SyncError::Transport {
        url: url.clone(),
        message: without_url(e),
    };
    let resp = tokio::time::timeout(s.timeout, req.send())
        .await
        .map_err(|_| SyncError::Transport {
            url: url.clone(),
            message: format!("no answer within {:?}", s.timeout),
        })?
        .map_err(transport)?;
    if resp.status() == http::StatusCode::NOT_MODIFIED && active.is_some() {
        tracing::debug!(version = active, "snapshot unchanged");
        store.confirm();
        return Ok(Some(()));
    }
    if resp.status() != http::StatusCode::OK {
        return Err(status_error(&url, &resp));
    }
    let encoding = snapshot_encoding(resp.headers());
    let started = std::time::Instant::now();
    let built = if streamed && encoding == Some(Encoding::MessagePack) {
        match stream_body(resp, &url, s.max_snapshot_bytes, s.timeout).await? {
            Some(index) => Ok(Ok(index)),
            None => return Ok(None),
        }
    } else {
        let bytes = read_body(resp, &url, s.max_snapshot_bytes, s.timeout).await?;
        tokio::task::spawn_blocking(move || {
            let encoding = encoding.unwrap_or(if bytes.first() == Some(&b'{') {
                Encoding::Json
            } else {
                Encoding::MessagePack
            });
            super::load_index(bytes, encoding)
        })
        .await
    };
    match built {
        Ok(Ok(index)) => {
            if let Some(m) = crate::metrics::get() {
                m.index_built(started.elapsed());
            }
            // Versions never go back: an upstream restored from an old backup, or a stale
            // replica, must not roll the sidecar back.
            if let Some(active) = store.load().map(|ix| ix.version())
                && index.version() < active
            {
                return Err(SyncError::Rejected {
                    url,
                    message: format!(
                        "snapshot version {} is lower than the active version {active}; refused",
                        index.version()
                    ),
                });
            }
            tracing::info!(
                version = index.version(),
                build_ms = started.elapsed().as_millis() as u64,
                "upstream snapshot active"
            );
            store.publish(index);
            Ok(Some(()))
        }
        Ok(Err(e)) => Err(SyncError::Rejected {
            url,
            message: format!("snapshot rejected: {e}"),
        }),
        Err(e) => Err(SyncError::Rejected {
            url,
            message: format!("building the index failed: {e}"),
        }),
    }
}

fn snapshot_encoding(h: &http::HeaderMap) -> Option<Encoding> {
    let ct = h.get(http::header::CONTENT_TYPE)?.to_str().ok()?.to_ascii_lowercase();
    if ct.contains("msgpack") {
        Some(Encoding::MessagePack)
    } else if ct.contains("json") {
        Some(Encoding::Json)
    } else {
        None
    }
}

/// A reqwest error without the URL (it is named once, by the caller).
pub(super) fn without_url(e: reqwest::Error) -> String {
    use std::error::Error;
    let e = e.without_url();
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

/// Builds the index of a MessagePack body while it arrives (`Index::from_msgpack` on a
/// blocking thread, fed the body's chunks): the body is never held whole beside the index.
/// `Ok(None)` when the streamed load does not take it; the body's own failures (too large,
/// stalled, broken off) are errors as `read_body` gives them.
async fn stream_body(
    resp: reqwest::Response,
    url: &str,
    limit: usize,
    timeout: Duration,
) -> Result<Option<Index>, SyncError> {
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(SyncError::Rejected {
            url: url.to_string(),
            message: format!("body is larger than max_snapshot_bytes ({limit} bytes)"),
        });
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(8);
    let build = tokio::task::spawn_blocking(move || {
        Index::from_msgpack(Chunks {
            rx,
            current: bytes::Bytes::new(),
        })
    });
    let mut body = resp.bytes_stream();
    let mut read = 0usize;
    let pumped = loop {
        let chunk = match tokio::time::timeout(timeout, body.next()).await {
            Err(_) => {
                break Err(SyncError::Transport {
                    url: url.to_string(),
                    message: format!("the body stalled for {timeout:?}"),
                });
            }
            Ok(None) => break Ok(()),
            Ok(Some(Err(e))) => {
                break Err(SyncError::Transport {
                    url: url.to_string(),
                    message: format!("the body broke off: {}", without_url(e)),
                });
            }
            Ok(Some(Ok(c))) => c,
        };
        read += chunk.len();
        if read > limit {
            break Err(SyncError::Rejected {
                url: url.to_string(),
                message: format!("body is larger than max_snapshot_bytes ({limit} bytes)"),
            });
        }
        // The load has ended (what follows the document is ignored) or given up.
        if tx.send(chunk).await.is_err() {
            break Ok(());
        }
    };
    // The load sees the end of the input, reads what is left and ends.
    drop(tx);
    let built = build.await;
    pumped?;
    match built {
        Ok(Ok(crate::index::Streamed::Built(index))) => Ok(Some(*index)),
        Ok(Ok(crate::index::Streamed::Declined)) | Ok(Err(_)) => Ok(None),
        Err(e) => Err(SyncError::Rejected {
            url: url.to_string(),
            message: format!("building the index failed: {e}"),
        }),
    }
}

/// A body's chunks as a reader, for the blocking thread that builds from it.
struct Chunks {
    rx: tokio::sync::mpsc::Receiver<bytes::Bytes>,
    current: bytes::Bytes,
}

impl std::io::Read for Chunks {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(c) => self.current = c,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        let taken = self.current.split_to(n);
        if let Some(out) = buf.get_mut(..n) {
            out.copy_from_slice(&taken);
        }
        Ok(n)
    }
}

/// Reads a whole body, refusing one over `limit` and giving up on `timeout` of silence.
pub(super) async fn read_body(
    resp: reqwest::Response,
    url: &str,
    limit: usize,
    timeout: Duration,
) -> Result<Vec<u8>, SyncError> {
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(SyncError::Rejected {
            url: url.to_string(),
            message: format!("body is larger than max_snapshot_bytes ({limit} bytes)"),
        });
    }
    let mut out = Vec::with_capacity(resp.content_length().unwrap_or(0) as usize);
    let mut body = resp.bytes_stream();
    loop {
        let chunk = tokio::time::timeout(timeout, body.next())
            .await
            .map_err(|_| SyncError::Transport {
                url: url.to_string(),
                message: format!("the body stalled for {timeout:?}"),
            })?;
        match chunk {
            None => return Ok(out),
            Some(Err(e)) => {
                return Err(SyncError::Transport {
                    url: url.to_string(),
                    message: format!("the body broke off: {}", without_url(e)),
                });
            }
            Some(Ok(c)) => {
                if out.len() + c.len() > limit {
                    return Err(SyncError::Rejected {
                        url: url.to_string(),
                        message: format!("body is larger than max_snapshot_bytes ({limit} bytes)"),
                    });
                }
                out.extend_from_slice(&c);
            }
        }
    }
}

/// Streams delta batches from the active version until the stream ends.
async fn stream(s: &Settings, store: &Store) -> StreamEnd {
    let m = crate::metrics::get();
    if let Some(m) = m {
        m.sync_attempt(crate::metrics::SyncKind::Deltas);
    }
    let end = stream_once(s, store).await;
    if let Some(m) = m {
        match &end {
            StreamEnd::Closed { .. } => {}
            StreamEnd::Resync { why: Some(_), .. } | StreamEnd::Failed { .. } => {
                m.sync_failure(crate::metrics::SyncKind::Deltas)
            }
            StreamEnd::Resync { why: None, .. } => {}
        }
    }
    end
}

async fn stream_once(s: &Settings, store: &Store) -> StreamEnd {
    let Some(since) = store.load().map(|ix| ix.version()) else {
        return StreamEnd::Resync {
            applied: false,
            why: None,
        };
    };
    let url = format!("{}/v1/deltas", s.base);
    let failed = |error| StreamEnd::Failed { applied: false, error };
    let sent = tokio::time::timeout(
        s.timeout,
        s.client
            .get(format!("{url}?since={since}"))
            .header(http::header::ACCEPT, "application/x-ndjson")
            .send(),
    )
    .await;
    let resp = match sent {
        Err(_) => {
            return failed(SyncError::Transport {
                url,
                message: format!("no answer within {:?}", s.timeout),
            });
        }
        Ok(Err(e)) => {
            return failed(SyncError::Transport {
                message: without_url(e),
                url,
            });
        }
        Ok(Ok(r)) => r,
    };
    match resp.status() {
        http::StatusCode::OK => {}
        http::StatusCode::GONE => {
            tracing::info!(
                since,
                "upstream no longer has deltas since the active version; fetching a snapshot"
            );
            return StreamEnd::Resync {
                applied: false,
                why: None,
            };
        }
        _ => return failed(status_error(&url, &resp)),
    }
    store.confirm();
    tracing::debug!(since, "delta stream open");
    let mut body = resp.bytes_stream();
    let mut splitter = LineSplitter::new(s.max_line_bytes);
    let mut applied = false;
    // When the first byte of the unfinished line arrived.
    let mut line_started: Option<Instant> = None;
    loop {
        let idle = Instant::now() + s.timeout;
        let deadline = line_started.map_or(idle, |t| (t + s.timeout).min(idle));
        let chunk = match tokio::time::timeout_at(deadline, body.next()).await {
            Err(_) => {
                let message = if line_started.is_some_and(|t| t + s.timeout <= Instant::now()) {
                    format!("line {} did not end within {:?}", splitter.lines_done() + 1, s.timeout)
                } else {
                    format!("no data or heartbeat for {:?}", s.timeout)
                };
                return StreamEnd::Failed {
                    applied,
                    error: SyncError::Transport { url, message },
                };
            }
            Ok(None) => {
                if !splitter.tail().is_empty() {
                    tracing::warn!(
                        line = splitter.lines_done() + 1,
                        bytes = splitter.tail().len(),
                        "delta stream ended inside a line; the partial line is dropped"
                    );
                }
                return StreamEnd::Closed { applied };
            }
            Ok(Some(Err(e))) => {
                if !splitter.tail().is_empty() {
                    tracing::warn!(
                        line = splitter.lines_done() + 1,
                        bytes = splitter.tail().len(),
                        "delta stream broke inside a line; the partial line is dropped"
                    );
                }
                return StreamEnd::Failed {
                    applied,
                    error: SyncError::Transport {
                        message: format!("the stream broke off: {}", without_url(e)),
                        url,
                    },
                };
            }
            Ok(Some(Ok(c))) => c,
        };
        // Complete lines in this chunk, in order; the tail stays buffered.
        let continues_tail = !splitter.tail().is_empty();
        let complete = match splitter.feed(&chunk) {
            Ok(lines) => lines,
            Err(e) => return too_long(url, e, applied),
        };
        line_started = match (splitter.tail().is_empty(), line_started) {
            (true, _) => None,
            (false, Some(t)) if continues_tail && complete.is_empty() => Some(t),
            (false, _) => Some(Instant::now()),
        };
        // Blank lines are heartbeats.
        let lines: Vec<(u64, Vec<u8>)> = complete
            .into_iter()
            .filter(|(_, line)| !line.iter().all(u8::is_ascii_whitespace))
            .collect();
        if lines.is_empty() {
            store.confirm();
            continue;
        }
        match apply_lines(store, lines, &url).await {
            Ok(()) => applied = true,
            Err((any, end)) => {
                return match end {
                    LineError::Gap(e) => {
                        tracing::warn!(error = %e, "delta batch does not follow the active version; fetching a snapshot");
                        if let Some(m) = crate::metrics::get() {
                            m.rejected("batch");
                            m.sync_failure(crate::metrics::SyncKind::Deltas);
                        }
                        store.reject(e);
                        StreamEnd::Resync {
                            applied: applied || any,
                            why: None,
                        }
                    }
                    LineError::Bad(e) => {
                        if let Some(m) = crate::metrics::get() {
                            m.rejected("batch");
                        }
                        StreamEnd::Resync {
                            applied: applied || any,
                            why: Some(e),
                        }
                    }
                };
            }
        }
    }
}

fn too_long(url: String, e: LineTooLong, applied: bool) -> StreamEnd {
    if let Some(m) = crate::metrics::get() {
        m.rejected("batch");
    }
    StreamEnd::Resync {
        applied,
        why: Some(SyncError::Rejected {
            url,
            message: e.to_string(),
        }),
    }
}

enum LineError {
    Gap(String),
    Bad(SyncError),
}

/// Lines up to this many bytes in all are decoded and applied on the runtime's thread: a batch
/// of a few ops applies in tens of microseconds, less than the two thread hops of
/// `spawn_blocking` cost on an idle machine. Larger chunks go to the blocking pool.
const INLINE_LINE_BYTES: usize = 4 * 1024;

/// Decodes and applies lines in order (off the runtime unless they are small), publishing the
/// last good version. On a failing line, what came before it is still published; the error says
/// whether any was.
async fn apply_lines(store: &Store, lines: Vec<(u64, Vec<u8>)>, url: &str) -> Result<(), (bool, LineError)> {
    let Some(ix) = store.load() else {
        return Err((false, LineError::Gap("no active version to apply deltas to".into())));
    };
    let url = url.to_string();
    let worked = if lines.iter().map(|(_, l)| l.len()).sum::<usize>() <= INLINE_LINE_BYTES {
        Ok(decode_and_apply(&ix, lines, url))
    } else {
        tokio::task::spawn_blocking(move || decode_and_apply(&ix, lines, url)).await
    };
    let (next, err) = match worked {
        Ok(r) => r,
        Err(e) => {
            return Err((
                false,
                LineError::Bad(SyncError::Rejected {
                    url: String::new(),
                    message: format!("applying deltas failed: {e}"),
                }),
            ));
        }
    };
    let any = next.is_some();
    if let Some(next) = next {
        store.publish(next);
    }
    match err {
        None => Ok(()),
        Some(e) => Err((any, e)),
    }
}

fn decode_and_apply(ix: &Index, lines: Vec<(u64, Vec<u8>)>, url: String) -> (Option<Index>, Option<LineError>) {
    let mut next: Option<Index> = None;
    let m = crate::metrics::get();
    for (no, line) in lines {
        let batch = match DeltaBatch::from_json(&line) {
            Ok(b) => b,
            Err(e) => {
                return (
                    next,
                    Some(LineError::Bad(SyncError::Rejected {
                        url,
                        message: format!("line {no}: batch rejected: {e}"),
                    })),
                );
            }
        };
        let base = next.as_ref().unwrap_or(ix);
        match base.apply(&batch) {
            Ok(n) => {
                if let Some(m) = m {
                    m.batch_applied(batch.ops.len());
                }
                next = Some(n)
            }
            Err(ApplyError::VersionGap { from, active }) => {
                return (
                    next,
                    Some(LineError::Gap(format!(
                        "`{url}` line {no}: from_version `{from}` does not follow the active version `{active}`"
                    ))),
                );
            }
        }
    }
    (next, None)
}
