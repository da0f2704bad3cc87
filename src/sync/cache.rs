//! The local cache of the active version (sync.md): the built index's image
//! (`Index::write_image`) in one file, written to a temporary file, fsynced, renamed into
//! place, with a SHA-256 checksum. Read at start when the upstream is out of reach: the image
//! is read back into an index, checked part by part (`index/image.rs`), with no document to
//! decode, validate or build. A corrupt, truncated or foreign file, or the image of another
//! build, is ignored (logged, counted), never trusted.
//!
//! The checksum guards against a file damaged on disk or cut short, not against someone who
//! can write the cache directory (they could write a valid file as well).
//!
//! File layout: magic (8 bytes), payload length (u64 LE), SHA-256 of the payload (32 bytes),
//! then the payload. `PERMDC02`: payload = a MessagePack map `{source, current_at_ms, image}`,
//! the index image a bin. `PERMDC01` (the files of earlier builds, still read):
//! payload = MessagePack (rmp-serde, named fields) `{source, current_at_ms, snapshot}`, the
//! document decoded, validated and built as a snapshot is.

use crate::index::Index;
use crate::model::{Snapshot, SnapshotError, validate};
use crate::store::Store;
use serde::Deserialize;
#[cfg(test)]
use serde::Serialize;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The magic of a file holding an index image.
const MAGIC: &[u8; 8] = b"PERMDC02";
/// The magic of a file holding the document (earlier builds); read, no longer written.
const MAGIC_DOCUMENT: &[u8; 8] = b"PERMDC01";
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

#[cfg(test)]
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

/// What a cache file holds, once its header and checksum are good.
enum Payload {
    Document(Box<Snapshot>),
    Index(Box<Index>),
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

    fn io(&self) -> impl Fn(std::io::Error) -> CacheError + '_ {
        move |e| CacheError::Io {
            path: self.path().display().to_string(),
            message: e.to_string(),
        }
    }

    fn invalid(&self, problem: String) -> CacheError {
        CacheError::Invalid {
            path: self.path().display().to_string(),
            problem,
        }
    }

    /// Writes `index`'s image atomically: temporary file, fsync, rename, fsync of the
    /// directory.
    pub fn write_index(&self, index: &Index, current_at: SystemTime) -> Result<(), CacheError> {
        let current_at_ms = current_at.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
        // A MessagePack map (sync.md: the cache is MessagePack): `{source, current_at_ms,
        // image}`, the image written in place as the bytes of a bin.
        let mut payload = vec![0x83];
        for text in ["source", &self.source, "current_at_ms"] {
            write_str(&mut payload, text);
        }
        payload.push(0xcf);
        payload.extend_from_slice(&current_at_ms.to_be_bytes());
        write_str(&mut payload, "image");
        payload.push(0xc6);
        let at = payload.len();
        payload.extend_from_slice(&[0; 4]);
        index
            .write_image(&mut payload)
            .map_err(|e| self.invalid(format!("cannot write the index: {e}")))?;
        let len = u32::try_from(payload.len() - at - 4)
            .map_err(|_| self.invalid("the index image is over 4 GiB, more than a bin holds".into()))?;
        if let Some(slot) = payload.get_mut(at..at + 4) {
            slot.copy_from_slice(&len.to_be_bytes());
        }
        self.write_file(MAGIC, &payload)?;
        *self.written() = Some(index.version());
        Ok(())
    }

    /// Writes the index of `snapshot` (validated and built first; a document that does not
    /// validate is refused): what a warm start would load had `snapshot` been served.
    pub fn write(&self, snapshot: &Snapshot, current_at: SystemTime) -> Result<(), CacheError> {
        let index = super::validate_and_build(snapshot).map_err(|e| self.rejected(&e))?;
        self.write_index(&index, current_at)
    }

    /// Writes `snapshot` as earlier builds did (`PERMDC01`), for the tests of reading them.
    #[cfg(test)]
    fn write_document(&self, snapshot: &Snapshot, current_at: SystemTime) -> Result<(), CacheError> {
        let current_at_ms = current_at.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
        let payload = rmp_serde::to_vec_named(&DocRef {
            source: &self.source,
            current_at_ms,
            snapshot,
        })
        .map_err(|e| self.invalid(format!("cannot encode: {e}")))?;
        self.write_file(MAGIC_DOCUMENT, &payload)
    }

    /// Header, checksum and payload to a temporary file, fsynced, renamed into place, the
    /// directory fsynced.
    fn write_file(&self, magic: &[u8; 8], payload: &[u8]) -> Result<(), CacheError> {
        let digest = ring::digest::digest(&ring::digest::SHA256, payload);
        std::fs::create_dir_all(&self.dir).map_err(self.io())?;
        let tmp = self.dir.join(format!(".{FILE_NAME}.{}.tmp", std::process::id()));
        let result = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(magic)?;
            f.write_all(&(payload.len() as u64).to_le_bytes())?;
            f.write_all(digest.as_ref())?;
            f.write_all(payload)?;
            f.sync_all()?;
            drop(f);
            std::fs::rename(&tmp, self.path())?;
            std::fs::File::open(&self.dir)?.sync_all()
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map_err(self.io())
    }

    /// Reads and checks the cache, as a document: `Ok(None)` when there is none.
    pub fn read(&self) -> Result<Option<(Snapshot, SystemTime)>, CacheError> {
        let Some((payload, at)) = self.read_payload()? else {
            return Ok(None);
        };
        let snapshot = match payload {
            Payload::Document(snapshot) => {
                validate(&snapshot).map_err(|e| self.rejected(&e))?;
                *snapshot
            }
            Payload::Index(index) => index.to_snapshot(),
        };
        *self.written() = Some(snapshot.version);
        Ok(Some((snapshot, at)))
    }

    /// The index of the cached version, for a warm start: the image read back, or a document
    /// of an earlier build's file validated and built (`super::build_validated`).
    pub fn load_index(&self) -> Result<Option<(Index, SystemTime)>, CacheError> {
        let Some((payload, at)) = self.read_payload()? else {
            return Ok(None);
        };
        let index = match payload {
            Payload::Index(index) => *index,
            Payload::Document(snapshot) => super::build_validated(*snapshot).map_err(|e| self.rejected(&e))?,
        };
        *self.written() = Some(index.version());
        Ok(Some((index, at)))
    }

    fn rejected(&self, e: &SnapshotError) -> CacheError {
        self.invalid(format!("rejected: {e}"))
    }

    /// Reads, checks the header and checksum, and reads the payload (an image is checked as
    /// it is read; a document's validation is the caller's).
    fn read_payload(&self) -> Result<Option<(Payload, SystemTime)>, CacheError> {
        let path = self.path();
        let bad = |problem: String| self.invalid(problem);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io()(e)),
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
        if magic != MAGIC && magic != MAGIC_DOCUMENT {
            return Err(bad("not a permd cache file (bad magic)".into()));
        }
        let len = u64::from_le_bytes(len.try_into().map_err(|_| bad("bad length field".into()))?);
        if len > self.max_bytes as u64 {
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
        let (source, current_at_ms, payload) = if magic == MAGIC_DOCUMENT {
            let doc = match fast_doc(payload) {
                Some(doc) => doc,
                None => rmp_serde::from_slice(payload).map_err(|e| bad(format!("does not decode: {e}")))?,
            };
            (doc.source, doc.current_at_ms, Payload::Document(Box::new(doc.snapshot)))
        } else {
            let (source, current_at_ms, image) = split_image_payload(payload).ok_or_else(|| {
                bad("truncated or malformed: the payload is not a whole map of source, current_at_ms and image".into())
            })?;
            if source != self.source {
                return Err(bad(format!("written for source `{source}`, not this one")));
            }
            let index = Index::read_image(image).map_err(|e| bad(e.to_string()))?;
            (source.to_owned(), current_at_ms, Payload::Index(Box::new(index)))
        };
        if source != self.source {
            return Err(bad(format!("written for source `{source}`, not this one")));
        }
        Ok(Some((payload, UNIX_EPOCH + Duration::from_millis(current_at_ms))))
    }
}

/// A MessagePack string header and `text`.
fn write_str(out: &mut Vec<u8>, text: &str) {
    let n = text.len();
    match n {
        0..32 => out.push(0xa0 | n as u8),
        32..256 => out.extend_from_slice(&[0xd9, n as u8]),
        256..65536 => {
            out.push(0xda);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        _ => {
            out.push(0xdb);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
    }
    out.extend_from_slice(text.as_bytes());
}

/// A `PERMDC02` payload, the MessagePack map `{source, current_at_ms, image}` (each once,
/// nothing else): the source, `current_at_ms` and the image's bytes.
fn split_image_payload(payload: &[u8]) -> Option<(&str, u64, &[u8])> {
    use crate::model::msgpack::Reader;
    let mut r = Reader { buf: payload, pos: 0 };
    if r.map_len()? != 3 {
        return None;
    }
    let (mut source, mut at, mut image) = (None, None, None);
    for _ in 0..3 {
        match r.str()? {
            "source" if source.is_none() => source = Some(r.str()?),
            "current_at_ms" if at.is_none() => {
                (r.byte()? == 0xcf).then_some(())?;
                at = Some(u64::from_be_bytes(r.take(8)?.try_into().ok()?));
            }
            "image" if image.is_none() => {
                let n = match r.byte()? {
                    0xc4 => usize::from(r.byte()?),
                    0xc5 => usize::from(u16::from_be_bytes(r.take(2)?.try_into().ok()?)),
                    0xc6 => u32::from_be_bytes(r.take(4)?.try_into().ok()?) as usize,
                    _ => return None,
                };
                image = Some(r.take(n)?);
            }
            _ => return None,
        }
    }
    (r.pos == payload.len()).then_some(())?;
    Some((source?, at?, image?))
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
        let written = tokio::task::spawn_blocking(move || c.write_index(&index, current_at)).await;
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

    /// The cache's decode takes the document files of earlier builds the fast way, to what
    /// rmp-serde reads.
    #[test]
    fn the_fast_decode_takes_a_document_cache() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path().into(), "http://up".into(), 1 << 20);
        let at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        cache.write_document(&snap(), at).unwrap();
        let bytes = std::fs::read(cache.path()).unwrap();
        assert_eq!(&bytes[..8], MAGIC_DOCUMENT);
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
    fn load_index_reads_the_image_and_a_document_file_of_an_earlier_build() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path().into(), "http://up".into(), 1 << 20);
        assert!(cache.load_index().unwrap().is_none());
        let at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        cache.write(&snap(), at).unwrap();
        assert_eq!(&std::fs::read(cache.path()).unwrap()[..8], MAGIC);
        let (index, when) = cache.load_index().unwrap().unwrap();
        assert_eq!((index.version(), when), (9, at));
        assert_eq!(index.counts().orgs, 1);
        assert_eq!(index.to_snapshot(), snap());
        // The file of an earlier build: the document, validated and built.
        cache.write_document(&snap(), at).unwrap();
        let (index, when) = cache.load_index().unwrap().unwrap();
        assert_eq!((index.version(), when, index.to_snapshot()), (9, at, snap()));
        assert_eq!(cache.read().unwrap(), Some((snap(), at)));
        // Whole and checksummed, but two orgs with one key: refused like a corrupt file.
        let mut twice = snap();
        twice.orgs.push(twice.orgs[0].clone());
        cache.write_document(&twice, at).unwrap();
        let err = cache.load_index().unwrap_err().to_string();
        assert!(err.contains("rejected") && err.contains("orgs[1]: duplicate"), "{err}");
        assert!(cache.read().unwrap_err().to_string().contains("orgs[1]: duplicate"));
        // Such a document is not written as an image either.
        let err = cache.write(&twice, at).unwrap_err().to_string();
        assert!(err.contains("orgs[1]: duplicate"), "{err}");
    }

    /// The file of `payload` with a right header and checksum.
    fn file_of(magic: &[u8; 8], payload: &[u8]) -> Vec<u8> {
        let mut f = magic.to_vec();
        f.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        f.extend_from_slice(ring::digest::digest(&ring::digest::SHA256, payload).as_ref());
        f.extend_from_slice(payload);
        f
    }

    #[tokio::test]
    async fn an_image_of_another_build_or_cut_short_is_refused_and_the_start_goes_on_without() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(Cache::new(dir.path().into(), "http://up".into(), 1 << 20));
        let at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        cache.write(&snap(), at).unwrap();
        let good = std::fs::read(cache.path()).unwrap();
        let payload = &good[HEADER..];
        // The payload is a MessagePack document (sync.md): a map of the three fields.
        let fields: std::collections::BTreeMap<String, serde::de::IgnoredAny> = rmp_serde::from_slice(payload).unwrap();
        assert_eq!(fields.keys().collect::<Vec<_>>(), ["current_at_ms", "image", "source"]);
        // After the map's header, `source` and its value, `current_at_ms` and its u64, `image`
        // and the bin's header.
        let image_at = 1 + 7 + (1 + "http://up".len()) + 14 + 9 + 6 + 5;
        // Checksummed, but the layout number is another build's.
        let mut other = payload.to_vec();
        other[image_at + 12] ^= 0x01;
        std::fs::write(cache.path(), file_of(MAGIC, &other)).unwrap();
        let err = cache.load_index().unwrap_err().to_string();
        assert!(err.contains("another build"), "{err}");
        let store = Store::new("http://up");
        assert!(!warm_start(&cache, &store).await);
        assert!(store.load().is_none());
        assert_eq!(store.status().cache_rejected, 1);
        // Checksummed, but the image ends early, at any length.
        for cut in [0, 3, image_at - 1, image_at + 30, payload.len() / 2, payload.len() - 1] {
            std::fs::write(cache.path(), file_of(MAGIC, &payload[..cut])).unwrap();
            let err = cache.load_index().unwrap_err().to_string();
            assert!(err.contains("cut short") || err.contains("truncated"), "{cut}: {err}");
        }
        // Another source's image is not read at all.
        let other = Cache::new(dir.path().into(), "http://other".into(), 1 << 20);
        std::fs::write(cache.path(), &good).unwrap();
        assert!(
            other
                .load_index()
                .unwrap_err()
                .to_string()
                .contains("written for source")
        );
        // And the good file still loads.
        assert!(warm_start(&cache, &store).await);
        assert_eq!(store.load().unwrap().version(), 9);
    }
}
