//! Sources of data: each produces a first snapshot and then changes, builds the next index
//! off the request path (`spawn_blocking`) and publishes it whole to the store. A bad
//! document is refused and the last good version keeps serving.
//!
//! `file` watches a local document; `upstream` speaks the native protocol of sync.md
//! (snapshot, then a stream of delta batches); `permit` pulls a Permit-style REST API and
//! applies the difference between pulls; `lines` splits the delta stream into NDJSON lines;
//! `cache` keeps the active version on disk for a warm
//! start when the upstream is out of reach. Nothing here decides anything.

pub mod abac;
mod cache;
mod file;
mod lines;
pub mod permit;
mod upstream;

pub use cache::{Cache, CacheError, FILE_NAME as CACHE_FILE};
pub use file::watch_file;
pub use lines::{LineSplitter, LineTooLong};

use crate::config::{ApiKey, Config, Protocol, Source};
use crate::index::Index;
use crate::model::{Encoding, Snapshot, SnapshotError, validate};
use crate::store::Store;
use rand::Rng;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Starts the configured source (and the cache writer, when a cache directory is set) on the
/// current runtime.
pub fn spawn(cfg: &Config, store: Arc<Store>) -> tokio::task::JoinHandle<()> {
    let cache = cfg.cache_dir.as_ref().map(|dir| {
        let cache = Arc::new(Cache::new(dir.clone(), cfg.source.display(), cfg.max_snapshot_bytes));
        tokio::spawn(cache::write_each_version(
            cache.clone(),
            store.clone(),
            cache::Pacing::DEFAULT,
        ));
        cache
    });
    match &cfg.source {
        Source::File(path) => tokio::spawn(watch_file(
            path.clone(),
            store,
            cfg.poll_interval,
            cfg.max_snapshot_bytes,
        )),
        Source::Upstream { base, protocol } => {
            let client = match client(cfg.api_key.as_ref(), cfg.upstream_timeout) {
                Ok(c) => c,
                Err(e) => {
                    store.fail(e.clone());
                    tracing::error!(error = %e, "cannot build the upstream client");
                    return tokio::spawn(async {});
                }
            };
            match protocol {
                Protocol::Permd => tokio::spawn(upstream::run(
                    upstream::Settings {
                        base: base.clone(),
                        client,
                        timeout: cfg.upstream_timeout,
                        max_line_bytes: cfg.max_line_bytes,
                        max_snapshot_bytes: cfg.max_snapshot_bytes,
                    },
                    store,
                    cache,
                )),
                Protocol::Permit => {
                    let (project, env) = cfg.permit_scope.clone().unwrap_or_default();
                    tokio::spawn(permit::run(
                        permit::Settings {
                            base: base.clone(),
                            project,
                            env,
                            client,
                            timeout: cfg.upstream_timeout,
                            interval: cfg.poll_interval,
                            max_snapshot_bytes: cfg.max_snapshot_bytes,
                        },
                        store,
                        cache,
                    ))
                }
            }
        }
    }
}

/// The HTTP client for an upstream: rustls with the ring provider, a connect timeout, and the
/// API key as a sensitive default header (so it is never printed with the request).
fn client(key: Option<&ApiKey>, connect_timeout: Duration) -> Result<reqwest::Client, String> {
    // Another part of the process may have installed a provider already; either is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut headers = http::HeaderMap::new();
    if let Some(key) = key {
        let mut value = http::HeaderValue::from_str(&format!("Bearer {}", key.expose()))
            .map_err(|_| "`api_key_file`: the API key cannot be sent in a header".to_string())?;
        value.set_sensitive(true);
        headers.insert(http::header::AUTHORIZATION, value);
    }
    reqwest::Client::builder()
        .user_agent(concat!("permd/", env!("CARGO_PKG_VERSION")))
        .default_headers(headers)
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .build()
        .map_err(|e| format!("cannot build the upstream client: {e}"))
}

/// Why a request to the upstream did not give what was asked; each decides how long to wait.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SyncError {
    #[error("`{url}`: {message}")]
    Transport { url: String, message: String },
    #[error("`{url}` answered 429 Too Many Requests")]
    RateLimited { url: String, retry_after: Option<Duration> },
    #[error("`{url}` refused the credentials ({status}); set PERMD_API_KEY or api_key_file")]
    Unauthorized { url: String, status: u16 },
    #[error("`{url}` answered {status}")]
    Status { url: String, status: u16 },
    #[error("`{url}`: {message}")]
    Rejected { url: String, message: String },
}

impl SyncError {
    /// How long to wait before the next attempt: `Retry-After` when the upstream said, else
    /// the next exponential step.
    pub fn delay(&self, backoff: &mut Backoff) -> Duration {
        match self {
            SyncError::RateLimited {
                retry_after: Some(d), ..
            } => {
                backoff.step();
                (*d).min(MAX_RETRY_AFTER)
            }
            _ => backoff.next_delay(),
        }
    }

    /// A document or batch that was refused, as opposed to an upstream that was not reached.
    pub fn is_rejection(&self) -> bool {
        matches!(self, SyncError::Rejected { .. })
    }
}

/// The longest `Retry-After` honoured; a larger one is taken as this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// `Retry-After` as seconds or an HTTP date.
pub fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    let v = headers.get(http::header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(SystemTime::now()).unwrap_or_default())
}

/// Maps a non-success status to its error.
pub fn status_error(url: &str, resp: &reqwest::Response) -> SyncError {
    let status = resp.status().as_u16();
    match status {
        429 => SyncError::RateLimited {
            url: url.to_string(),
            retry_after: retry_after(resp.headers()),
        },
        401 | 403 => SyncError::Unauthorized {
            url: url.to_string(),
            status,
        },
        _ => SyncError::Status {
            url: url.to_string(),
            status,
        },
    }
}

/// Exponential backoff with jitter, bounded: 100 ms doubling up to 5 s, each wait drawn
/// uniformly from the upper half of the step.
#[derive(Debug, Clone)]
pub struct Backoff {
    step: Duration,
}

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

impl Default for Backoff {
    fn default() -> Self {
        Backoff { step: BACKOFF_MIN }
    }
}

impl Backoff {
    pub fn reset(&mut self) {
        self.step = BACKOFF_MIN;
    }

    fn step(&mut self) {
        self.step = (self.step * 2).min(BACKOFF_MAX);
    }

    pub fn next_delay(&mut self) -> Duration {
        let d = self.step;
        self.step();
        let half = d / 2;
        half + rand::rng().random_range(Duration::ZERO..=half)
    }
}

/// Logs and records a failure; the active version keeps serving.
fn report(store: &Store, error: &SyncError) {
    let msg = error.to_string();
    if error.is_rejection() {
        tracing::warn!(error = %msg, "upstream data rejected; the active version keeps serving");
        store.reject(msg);
    } else {
        tracing::warn!(error = %msg, "upstream unavailable; the active version keeps serving");
        store.fail(msg);
        store.set_online(false);
    }
}

/// Validates and compiles a decoded document, the way every source takes a whole snapshot in:
/// [`validate_and_build`], and the document freed on a thread of its own afterwards, so that
/// does not delay the new version either.
pub fn build_validated(snapshot: Snapshot) -> Result<Index, SnapshotError> {
    let built = validate_and_build(&snapshot);
    // Should no thread be had, the closure and the document are dropped here instead.
    let _ = std::thread::Builder::new()
        .name("permd-free".into())
        .spawn(move || drop(snapshot));
    built
}

/// Validation on a second thread beside `Index::build` (the build never fails or panics on a
/// document that does not validate; its result is dropped then, and validation's error is the
/// answer). On a 1M-assignment document that is about a third of the time from decoded to
/// serving (bench/README.md).
pub fn validate_and_build(snapshot: &Snapshot) -> Result<Index, SnapshotError> {
    let (index, valid) = std::thread::scope(|scope| {
        let valid = scope.spawn(|| validate(snapshot));
        let index = Index::build(snapshot);
        (index, valid.join())
    });
    match valid {
        Ok(Ok(())) => Ok(index),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(SnapshotError::invalid("snapshot", "validation failed unexpectedly")),
    }
}

/// Decodes, validates and compiles a document. A MessagePack one is built as it is read
/// (`Index::from_msgpack`: no decoded document in between); one that path does not take, and
/// the other encodings, go through [`load_document`].
pub fn load_index(bytes: impl AsRef<[u8]>, encoding: Encoding) -> Result<Index, SnapshotError> {
    if encoding == Encoding::MessagePack
        && let Ok(crate::index::Streamed::Built(index)) = Index::from_msgpack(bytes.as_ref())
    {
        return Ok(*index);
    }
    load_document(bytes, encoding)
}

/// The reference way to the index: the whole document decoded, then validated beside the
/// build. The bytes are freed as soon as they are decoded, so they are not held beside the
/// document and the index being built.
pub fn load_document(bytes: impl AsRef<[u8]>, encoding: Encoding) -> Result<Index, SnapshotError> {
    let snapshot = Snapshot::decode(bytes.as_ref(), encoding)?;
    drop(bytes);
    build_validated(snapshot)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_bounded_and_jittered() {
        let mut b = Backoff::default();
        let waits: Vec<_> = (0..12).map(|_| b.next_delay()).collect();
        assert!(waits[0] >= Duration::from_millis(50) && waits[0] <= BACKOFF_MIN);
        assert!(waits.iter().all(|w| *w <= BACKOFF_MAX));
        assert!(waits[11] >= BACKOFF_MAX / 2);
        b.reset();
        assert!(b.next_delay() <= BACKOFF_MIN);
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::RETRY_AFTER, http::HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(30));
        h.insert(http::header::RETRY_AFTER, http::HeaderValue::from_str(&later).unwrap());
        let d = retry_after(&h).unwrap();
        assert!(d > Duration::from_secs(25) && d <= Duration::from_secs(30), "{d:?}");
        h.insert(http::header::RETRY_AFTER, http::HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), None);
    }
}
