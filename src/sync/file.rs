//! The file source: a local snapshot document, polled for changes. Polling (stat, then a
//! content hash) rather than inotify, because Kubernetes ConfigMaps and editors replace files
//! through renames and symlink swaps that file watches miss.

use crate::index::{Index, Streamed};
use crate::metrics::{self, SyncKind};
use crate::model::Encoding;
use crate::model::SnapshotError;
use crate::store::Store;
use std::hash::Hasher;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

async fn fingerprint(path: &Path) -> std::io::Result<Fingerprint> {
    let meta = tokio::fs::metadata(path).await?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    Ok(Fingerprint {
        len: meta.len(),
        modified: meta.modified().ok(),
        inode,
    })
}

/// What reading a changed file came to.
enum Read {
    /// It could not be read, or is too large.
    Failed(String),
    /// The same content as the active version's.
    Same,
    /// Its content (hashed) and what building it gave.
    Built(u64, Box<Result<Index, SnapshotError>>),
}

/// Reads `path` (at most `limit` bytes) and, unless its content hashes to `previous`, builds
/// it. A MessagePack file is built while it is read (`Index::from_msgpack`), so its bytes are
/// never held whole beside the index; one that path does not take, and the other encodings,
/// are read into memory and decoded whole (`super::load_index`).
fn read_and_build(path: &Path, encoding: Encoding, limit: usize, previous: Option<u64>) -> Read {
    let cannot = |e: std::io::Error| Read::Failed(format!("cannot read `{}`: {e}", path.display()));
    let too_large = || {
        Read::Failed(format!(
            "`{}` is larger than max_snapshot_bytes ({limit} bytes)",
            path.display()
        ))
    };
    if encoding == Encoding::MessagePack {
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) => return cannot(e),
        };
        let mut src = Hashing::new(file.take(limit as u64 + 1));
        // Then the rest (trailing bytes are ignored, as the decode ignores them), for the hash
        // and the size limit.
        let streamed = match Index::from_msgpack(&mut src) {
            Ok(s) => s,
            Err(e) => return cannot(e),
        };
        if let Err(e) = std::io::copy(&mut src, &mut std::io::sink()) {
            return cannot(e);
        }
        if src.read > limit as u64 {
            return too_large();
        }
        let hash = src.hash.finish();
        if previous == Some(hash) {
            return Read::Same;
        }
        if let Streamed::Built(index) = streamed {
            return Read::Built(hash, Box::new(Ok(*index)));
        }
    }
    let mut bytes = Vec::new();
    let read = std::fs::File::open(path).and_then(|f| f.take(limit as u64 + 1).read_to_end(&mut bytes));
    if let Err(e) = read {
        return cannot(e);
    }
    if bytes.len() > limit {
        return too_large();
    }
    let mut h = std::hash::DefaultHasher::new();
    h.write(&bytes);
    let hash = h.finish();
    if previous == Some(hash) {
        return Read::Same;
    }
    Read::Built(hash, Box::new(super::load_document(bytes, encoding)))
}

/// A reader that hashes and counts what passes through it.
struct Hashing<R> {
    inner: R,
    hash: std::hash::DefaultHasher,
    read: u64,
}

impl<R> Hashing<R> {
    fn new(inner: R) -> Hashing<R> {
        Hashing {
            inner,
            hash: std::hash::DefaultHasher::new(),
            read: 0,
        }
    }
}

impl<R: std::io::Read> std::io::Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let got = buf.get(..n).unwrap_or_default();
        self.hash.write(got);
        self.read += n as u64;
        Ok(n)
    }
}

/// Watches `path` forever: every changed content is loaded and, if good, published.
pub async fn watch_file(path: PathBuf, store: Arc<Store>, poll: Duration, max_bytes: usize) {
    let Some(encoding) = Encoding::from_path(&path.to_string_lossy()) else {
        store.fail(format!("`{}`: unknown snapshot extension", path.display()));
        return;
    };
    let mut seen: Option<Fingerprint> = None;
    let mut content: Option<u64> = None;
    let mut last_error: Option<String> = None;
    loop {
        match fingerprint(&path).await {
            Err(e) => {
                let msg = format!("cannot read `{}`: {e}", path.display());
                if last_error.as_deref() != Some(msg.as_str()) {
                    if let Some(m) = metrics::get() {
                        m.sync_attempt(SyncKind::File);
                        m.sync_failure(SyncKind::File);
                    }
                    tracing::warn!(error = %msg, "snapshot file unavailable; the active version keeps serving");
                    store.fail(msg.clone());
                    last_error = Some(msg);
                }
                store.set_online(false);
                seen = None;
            }
            Ok(fp) if Some(fp) == seen => {
                if store.load().is_some() && last_error.is_none() {
                    store.confirm();
                }
            }
            Ok(fp) => {
                seen = Some(fp);
                if let Some(m) = metrics::get() {
                    m.sync_attempt(SyncKind::File);
                }
                let started = std::time::Instant::now();
                let (p, previous) = (path.clone(), content);
                let read = tokio::task::spawn_blocking(move || read_and_build(&p, encoding, max_bytes, previous)).await;
                match read {
                    Ok(Read::Same) => {}
                    Ok(Read::Failed(msg)) => {
                        if let Some(m) = metrics::get() {
                            m.sync_failure(SyncKind::File);
                            m.rejected("snapshot");
                        }
                        tracing::warn!(error = %msg, "snapshot rejected; the active version keeps serving");
                        store.reject(msg.clone());
                        last_error = Some(msg);
                    }
                    Ok(Read::Built(hash, built)) => {
                        content = Some(hash);
                        last_error = publish(*built, started, &store, &path);
                    }
                    Err(e) => {
                        if let Some(m) = metrics::get() {
                            m.sync_failure(SyncKind::File);
                            m.rejected("snapshot");
                        }
                        let msg = format!("`{}`: building the index failed: {e}", path.display());
                        tracing::error!(error = %msg, "snapshot rejected");
                        store.reject(msg.clone());
                        last_error = Some(msg);
                    }
                }
            }
        }
        tokio::time::sleep(poll).await;
    }
}

/// Publishes a built content; returns the error if it was refused.
fn publish(
    built: Result<Index, SnapshotError>,
    started: std::time::Instant,
    store: &Store,
    path: &Path,
) -> Option<String> {
    match built {
        Ok(index) => {
            if let Some(m) = metrics::get() {
                m.index_built(started.elapsed());
            }
            tracing::info!(
                version = index.version(),
                build_ms = started.elapsed().as_millis() as u64,
                path = %path.display(),
                "snapshot active"
            );
            store.publish(index);
            None
        }
        Err(e) => {
            if let Some(m) = metrics::get() {
                m.sync_failure(SyncKind::File);
                m.rejected("snapshot");
            }
            let msg = format!("`{}` rejected: {e}", path.display());
            tracing::warn!(error = %msg, "snapshot rejected; the active version keeps serving");
            store.reject(msg.clone());
            Some(msg)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::model::generate::{Params, generate};

    fn doc() -> crate::model::Snapshot {
        generate(&Params {
            users: 30,
            assignments: 300,
            resources: 40,
            orgs: 3,
            depth: 2,
            grants: 4,
            seed: 5,
            shape: Default::default(),
        })
    }

    fn built(read: Read) -> (u64, Result<Index, SnapshotError>) {
        match read {
            Read::Built(hash, built) => (hash, *built),
            Read::Same => panic!("read as the same content"),
            Read::Failed(msg) => panic!("failed: {msg}"),
        }
    }

    /// MessagePack streamed, the same index as the whole document gives; the same content
    /// again is not rebuilt; the hash does not depend on the path taken.
    #[test]
    fn a_messagepack_file_is_built_as_it_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.msgpack");
        let s = doc();
        std::fs::write(&path, s.encode(Encoding::MessagePack).unwrap()).unwrap();
        let (hash, index) = built(read_and_build(&path, Encoding::MessagePack, 1 << 20, None));
        assert_eq!(index.unwrap().to_snapshot(), Index::build(&s).to_snapshot());
        assert!(matches!(
            read_and_build(&path, Encoding::MessagePack, 1 << 20, Some(hash)),
            Read::Same
        ));
        // A document the streamed load refuses is read whole and refused the reference way,
        // its error naming the item; its hash is that of the same bytes.
        let mut twice = s.clone();
        twice.role_assignments.push(twice.role_assignments[0].clone());
        let bytes = twice.encode(Encoding::MessagePack).unwrap();
        std::fs::write(&path, &bytes).unwrap();
        let (hash_twice, refused) = built(read_and_build(&path, Encoding::MessagePack, 1 << 20, None));
        let err = refused.unwrap_err().to_string();
        assert!(err.contains("role_assignments["), "{err}");
        let mut h = std::hash::DefaultHasher::new();
        h.write(&bytes);
        assert_eq!(hash_twice, h.finish());
    }

    #[test]
    fn a_file_over_the_limit_is_refused_either_way() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.msgpack");
        let bytes = doc().encode(Encoding::MessagePack).unwrap();
        std::fs::write(&path, &bytes).unwrap();
        for limit in [bytes.len() - 1, 10] {
            match read_and_build(&path, Encoding::MessagePack, limit, None) {
                Read::Failed(msg) => assert!(msg.contains("larger than max_snapshot_bytes"), "{msg}"),
                _ => panic!("a file over {limit} bytes was taken"),
            }
        }
        // Trailing bytes after the document are ignored, as ever, but count toward the limit.
        let mut longer = bytes.clone();
        longer.extend_from_slice(&[0u8; 100]);
        std::fs::write(&path, &longer).unwrap();
        assert!(matches!(
            read_and_build(&path, Encoding::MessagePack, bytes.len() + 50, None),
            Read::Failed(_)
        ));
        let (_, ok) = built(read_and_build(&path, Encoding::MessagePack, longer.len(), None));
        assert!(ok.is_ok());
        let missing = dir.path().join("none.msgpack");
        assert!(matches!(
            read_and_build(&missing, Encoding::MessagePack, 1 << 20, None),
            Read::Failed(msg) if msg.contains("cannot read")
        ));
    }
}
