//! The local cache of the active version (sync.md): MessagePack (rmp-serde, named fields) in
//! one file, written to a temporary file, fsynced, renamed into place, with a SHA-256
//! checksum. Read at start when the upstream is out of reach; a corrupt, truncated or foreign
//! file is ignored (logged, counted), never trusted.
//!
//! File layout: `PERMDC01` (8 bytes), payload length (u64 LE), SHA-256 of the payload (32
//! bytes), payload = `{source, current_at_ms, snapshot}`.

use crate::index::Index;
use crate::model::{Snapshot, SnapshotError, validate};
use crate::store::Store;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const MAGIC: &[u8; 8] = b"PERMDC01";
const HEADER: usize = 8 + 8 + 32;
/// The cache file inside `cache_dir`.
pub const FILE_NAME: &str = "permd-cache.bin";

/// Why a cache file is not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CacheError {
    #[error("cache `{path}`: {problem}")]
    Invalid { path: String, problem: String },
    #[error("cache `{path}`: {message}")]
    Io { path: String, message: String },
}

#[derive(Serialize)]
struct DocRef<'a> {
    source: &'a str,
    current_at_ms: u64,
    snapshot: &'a Snapshot,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Doc {
    source: String,
    current_at_ms: u64,
    snapshot: Snapshot,
}

/// `Doc` the way `Snapshot::decode` takes a MessagePack document (`model::msgpack`): the
/// snapshot's large lists in parallel chunks. `None` for anything it does not take, which the
/// caller then decodes with rmp-serde (the same result, and the error to report).
fn fast_doc(payload: &[u8]) -> Option<Doc> {
    use crate::model::msgpack;
    fn once<T>(slot: &mut Option<T>, v: T) -> Option<()> {
        slot.replace(v).is_none().then_some(())
    }
    let (mut source, mut current_at_ms, mut snapshot) = (None, None, None);
    msgpack::walk_map(payload, |key, rest| match key {
        "source" => msgpack::one(rest, 1).and_then(|(v, n)| once(&mut source, v).map(|()| n)),
        "current_at_ms" => msgpack::one(rest, 1).and_then(|(v, n)| once(&mut current_at_ms, v).map(|()| n)),
        "snapshot" => {
            let plan = msgpack::Plan {
                depth: 1,
                ..msgpack::Plan::for_len(rest.len())
            };
            msgpack::decode_at(rest, plan).and_then(|(v, n)| once(&mut snapshot, v).map(|()| n))
        }
        _ => None,
    })?;
    Some(Doc {
        source: source?,
        current_at_ms: current_at_ms?,
        snapshot: snapshot?,
    })
}

/// The cache of one source in one directory.
pub struct Cache {
    dir: PathBuf,
    source: String,
    max_bytes: usize,
    /// The version the file holds, so the writer does not rewrite what it just read.
    written: Mutex<Option<u64>>,
}

impl Cache {
    pub fn new(dir: PathBuf, source: String, max_bytes: usize) -> Cache {
        Cache {
            dir,
            source,
            max_bytes,
            written: Mutex::new(None),
        }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE_NAME)
    }

    fn written(&self) -> std::sync::MutexGuard<'_, Option<u64>> {
        self.written.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes `snapshot` atomically: temporary file, fsync, rename, fsync of the directory.
    pub fn write(&self, snapshot: &Snapshot, current_at: SystemTime) -> Result<(), CacheError> {
        let path = self.path();
        let io = |e: std::io::Error| CacheError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        let current_at_ms = current_at.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
        let payload = rmp_serde::to_vec_named(&DocRef {
            source: &self.source,
            current_at_ms,
            snapshot,
        })
        .map_err(|e| CacheError::Io {
            path: path.display().to_string(),
            message: format!("cannot encode: {e}"),
        })?;
        let digest = ring::digest::digest(&ring::digest::SHA256, &payload);
        std::fs::create_dir_all(&self.dir).map_err(io)?;
        let tmp = self.dir.join(format!(".{FILE_NAME}.{}.tmp", std::process::id()));
        let result = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(MAGIC)?;
            f.write_all(&(payload.len() as u64).to_le_bytes())?;
            f.write_all(digest.as_ref())?;
            f.write_all(&payload)?;
            f.sync_all()?;
            drop(f);
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(&self.dir)?.sync_all()
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map_err(io)?;
        *self.written() = Some(snapshot.version);
        Ok(())
    }

    /// Reads and checks the cache: `Ok(None)` when there is none.
    pub fn read(&self) -> Result<Option<(Snapshot, SystemTime)>, CacheError> {
        let Some((snapshot, at)) = self.read_unvalidated()? else {
            return Ok(None);
        };
        validate(&snapshot).map_err(|e| self.rejected(&e))?;
        *self.written() = Some(snapshot.version);
        Ok(Some((snapshot, at)))
    }

    /// The built index of the cached version, for a warm start (`super::build_validated`).
    pub fn load_index(&self) -> Result<Option<(Index, SystemTime)>, CacheError> {
        let Some((snapshot, at)) = self.read_unvalidated()? else {
            return Ok(None);
        };
        let version = snapshot.version;
        let index = super::build_validated(snapshot).map_err(|e| self.rejected(&e))?;
        *self.written() = Some(version);
        Ok(Some((index, at)))
    }

    fn rejected(&self, e: &SnapshotError) -> CacheError {
        CacheError::Invalid {
            path: self.path().display().to_string(),
            problem: format!("rejected: {e}"),
        }
    }

    /// Reads, checks the header and checksum, and decodes; validation is the caller's.
    fn read_unvalidated(&self) -> Result<Option<(Snapshot, SystemTime)>, CacheError> {
        let path = self.path();
        let bad = |problem: String| CacheError::Invalid {
            path: path.display().to_string(),
            problem,
        };
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(CacheError::Io {
                    path: path.display().to_string(),
                    message: e.to_string(),
                });
            }
        };
        let (Some(magic), Some(len), Some(sum), Some(payload)) = (
            bytes.get(..8),
            bytes.get(8..16),
            bytes.get(16..HEADER),
            bytes.get(HEADER..),
        ) else {
            return Err(bad(format!(
                "truncated: {} bytes, shorter than the header",
                bytes.len()
            )));
        };
        if magic != MAGIC {
            return Err(bad("not a permd cache file (bad magic)".into()));
        }
        let len = u64::from_le_bytes(len.try_into().map_err(|_| bad("bad length field".into()))?);
        if len as usize > self.max_bytes {
            return Err(bad(format!("payload of {len} bytes is over max_snapshot_bytes")));
        }
        if payload.len() as u64 != len {
            return Err(bad(format!(
                "truncated: payload is {} bytes, header says {len}",
                payload.len()
            )));
        }
        if ring::digest::digest(&ring::digest::SHA256, payload).as_ref() != sum {
            return Err(bad("checksum mismatch".into()));
        }
        let doc = match fast_doc(payload) {
            Some(doc) => doc,
            None => rmp_serde::from_slice(payload).map_err(|e| bad(format!("does not decode: {e}")))?,
        };
        if doc.source != self.source {
            return Err(bad(format!("written for source `{}`, not this one", doc.source)));
        }
        Ok(Some((
            doc.snapshot,
            UNIX_EPOCH + Duration::from_millis(doc.current_at_ms),
        )))
    }
}

/// Loads the cache into the store, off the runtime. True when a version became active.
/// After a failed first request: the one warm start from the cache, if there is a cache, it has
/// not been tried yet, and nothing is serving.
pub async fn warm_start_once(tried: &mut bool, cache: &Option<Arc<Cache>>, store: &Store) {
    if !*tried
        && store.load().is_none()
        && let Some(cache) = cache
    {
        *tried = true;
        warm_start(cache, store).await;
    }
}

pub async fn warm_start(cache: &Arc<Cache>, store: &Store) -> bool {
    if store.load().is_some() {
        return false; // only ever instead of nothing, never over a live version
    }
    let started = std::time::Instant::now();
    let c = cache.clone();
    let loaded = tokio::task::spawn_blocking(move || c.load_index()).await;
    match loaded {
        Ok(Ok(Some((index, at)))) => {
            tracing::info!(
                version = index.version(),
                load_ms = started.elapsed().as_millis() as u64,
                path = %cache.path().display(),
                "upstream out of reach; serving the cached version"
            );
            if let Some(m) = crate::metrics::get() {
                m.cache("load", true);
            }
            store.publish_cached(index, at);
            true
        }
        Ok(Ok(None)) => {
            tracing::info!(path = %cache.path().display(), "no cache to start from");
            false
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cache ignored");
            if let Some(m) = crate::metrics::get() {
                m.cache("load", false);
            }
            store.status().cache_rejected += 1;
            false
        }
        Err(e) => {
            tracing::error!(error = %e, "reading the cache failed");
            if let Some(m) = crate::metrics::get() {
                m.cache("load", false);
            }
            store.status().cache_rejected += 1;
            false
        }
    }
}

/// How the writer paces itself. A write is the whole version (encode, checksum, fsync): on a
/// large index under a steady delta stream, writing each version back to back would keep a
/// core busy. After a write that took `t` the writer rests `t × rest_factor` (within
/// `min_rest..=max_rest`) before it writes again, so it spends at most about
/// `1 / (rest_factor + 1)` of one core, and the file lags the active version by at most about
/// one write and one rest. Versions that come while it writes or rests collapse into the
/// newest.
#[derive(Debug, Clone, Copy)]
pub struct Pacing {
    pub rest_factor: u32,
    pub min_rest: Duration,
    pub max_rest: Duration,
}

impl Pacing {
    /// At most a tenth of a core; a rest never longer than a minute.
    pub const DEFAULT: Pacing = Pacing {
        rest_factor: 9,
        min_rest: Duration::ZERO,
        max_rest: Duration::from_secs(60),
    };

    pub fn rest_after(&self, took: Duration) -> Duration {
        took.saturating_mul(self.rest_factor)
            .clamp(self.min_rest, self.max_rest)
    }
}

/// Writes the active version whenever a new one comes, paced by `pacing`.
pub async fn write_each_version(cache: Arc<Cache>, store: Arc<Store>, pacing: Pacing) {
    let mut rx = store.subscribe();
    // A version published before this task first ran is written too.
    rx.mark_changed();
    loop {
        if rx.changed().await.is_err() {
            return;
        }
        let Some(index) = store.load() else { continue };
        if *cache.written() == Some(index.version()) {
            continue;
        }
        let current_at = store.status().last_success.unwrap_or_else(SystemTime::now);
        let c = cache.clone();
        let started = std::time::Instant::now();
        let version = index.version();
        let written = tokio::task::spawn_blocking(move || c.write(&index.to_snapshot(), current_at)).await;
        let took = started.elapsed();
        if let Some(m) = crate::metrics::get() {
            m.cache("write", matches!(written, Ok(Ok(()))));
        }
        match written {
            Ok(Ok(())) => tracing::debug!(version, write_ms = took.as_millis() as u64, "cache written"),
            Ok(Err(e)) => tracing::warn!(error = %e, "cache not written"),
            Err(e) => tracing::error!(error = %e, "cache writer failed"),
        }
        tokio::time::sleep(pacing.rest_after(took)).await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn snap() -> Snapshot {
        Snapshot::load(
            b"format: 1\nversion: 9\norgs: [{key: acme}]\nroles: [{key: r, permissions: ['*:*']}]\n",
            crate::model::Encoding::Yaml,
        )
        .unwrap()
    }

    #[test]
    fn round_trip_and_every_corruption_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path().into(), "http://up".into(), 1 << 20);
        assert_eq!(cache.read().unwrap(), None);
        let at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        cache.write(&snap(), at).unwrap();
        assert_eq!(cache.read().unwrap(), Some((snap(), at)));
        let good = std::fs::read(cache.path()).unwrap();
        let mut flipped = good.clone();
        let last = flipped.len() - 3;
        flipped[last] ^= 0x40;
        let cases: [(&[u8], &str); 4] = [
            (&good[..good.len() - 5], "truncated"),
            (&good[..20], "truncated"),
            (&flipped, "checksum"),
            (
                b"garbage that is long enough to pass the header length check...",
                "magic",
            ),
        ];
        for (bytes, want) in cases {
            std::fs::write(cache.path(), bytes).unwrap();
            let err = cache.read().unwrap_err().to_string();
            assert!(err.contains(want), "{want}: {err}");
        }
        std::fs::write(cache.path(), &good).unwrap();
        let other = Cache::new(dir.path().into(), "http://other".into(), 1 << 20);
        assert!(other.read().unwrap_err().to_string().contains("written for source"));
        let small = Cache::new(dir.path().into(), "http://up".into(), 10);
        assert!(small.read().unwrap_err().to_string().contains("max_snapshot_bytes"));
    }

    #[test]
    fn the_rest_is_the_write_time_times_the_factor_within_its_bounds() {
        let p = Pacing::DEFAULT;
        assert_eq!(p.rest_after(Duration::from_millis(100)), Duration::from_millis(900));
        assert_eq!(p.rest_after(Duration::from_secs(3600)), Duration::from_secs(60));
        assert_eq!(p.rest_after(Duration::ZERO), Duration::ZERO);
        let floor = Pacing {
            min_rest: Duration::from_millis(5),
            ..p
        };
        assert_eq!(floor.rest_after(Duration::ZERO), Duration::from_millis(5));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_writer_rests_after_a_write_then_writes_the_newest_version() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(Cache::new(dir.path().into(), "http://up".into(), 1 << 20));
        let store = Store::new("http://up");
        let rest = Duration::from_millis(800);
        let pacing = Pacing {
            rest_factor: 0,
            min_rest: rest,
            max_rest: rest,
        };
        tokio::spawn(write_each_version(cache.clone(), store.clone(), pacing));
        let on_disk = || cache.read().unwrap().map(|(s, _)| s.version);
        let until = |want: u64| {
            let on_disk = &on_disk;
            async move {
                let end = std::time::Instant::now() + Duration::from_secs(20);
                while on_disk() != Some(want) {
                    assert!(std::time::Instant::now() < end, "version {want} never written");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        };
        let published = std::time::Instant::now();
        store.publish(Index::build(&snap()));
        until(9).await;
        for v in [10, 11] {
            let batch = crate::model::DeltaBatch {
                from_version: v - 1,
                to_version: v,
                ops: vec![],
            };
            store.publish(store.load().unwrap().apply(&batch).unwrap());
        }
        until(11).await;
        // Version 9's write ended after it was published, and the next one waited `rest` after
        // that: without the rest, 10 and 11 are on disk within milliseconds.
        assert!(published.elapsed() >= rest, "{:?}", published.elapsed());
    }

    /// The cache's decode takes its own files the fast way, to what rmp-serde reads.
    #[test]
    fn the_fast_decode_takes_a_written_cache() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path().into(), "http://up".into(), 1 << 20);
        let at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        cache.write(&snap(), at).unwrap();
        let bytes = std::fs::read(cache.path()).unwrap();
        let fast = fast_doc(&bytes[HEADER..]).unwrap();
        let reference: Doc = rmp_serde::from_slice(&bytes[HEADER..]).unwrap();
        assert_eq!(
            (fast.source, fast.current_at_ms, fast.snapshot),
            (reference.source, reference.current_at_ms, reference.snapshot)
        );
        // A field of the wrong type is left to rmp-serde, which names it.
        let mut wrong = bytes[HEADER..].to_vec();
        let at = wrong.windows(6).position(|w| w == b"source").unwrap() + 6;
        wrong[at] = 0x07;
        wrong.drain(at + 1..at + 1 + "http://up".len());
        assert!(fast_doc(&wrong).is_none());
        assert!(rmp_serde::from_slice::<Doc>(&wrong).is_err());
    }

    #[test]
    fn load_index_builds_the_cached_version_and_refuses_one_that_does_not_validate() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path().into(), "http://up".into(), 1 << 20);
        assert!(cache.load_index().unwrap().is_none());
        let at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        cache.write(&snap(), at).unwrap();
        let (index, when) = cache.load_index().unwrap().unwrap();
        assert_eq!((index.version(), when), (9, at));
        assert_eq!(index.counts().orgs, 1);
        // Whole and checksummed, but two orgs with one key: refused like a corrupt file.
        let mut twice = snap();
        twice.orgs.push(twice.orgs[0].clone());
        cache.write(&twice, at).unwrap();
        let err = cache.load_index().unwrap_err().to_string();
        assert!(err.contains("rejected") && err.contains("orgs[1]: duplicate"), "{err}");
    }
}
