//! The file source: a local snapshot document, polled for changes. Polling (stat, then a
//! content hash) rather than inotify, because Kubernetes ConfigMaps and editors replace files
//! through renames and symlink swaps that file watches miss.

use crate::metrics::{self, SyncKind};
use crate::model::Encoding;
use crate::store::Store;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::io::AsyncReadExt;

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

/// Reads at most `limit` bytes; a longer file is an error rather than an unbounded buffer.
async fn read_bounded(path: &Path, limit: usize) -> Result<Vec<u8>, String> {
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(limit as u64 + 1)
        .read_to_end(&mut bytes)
        .await
        .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    if bytes.len() > limit {
        return Err(format!(
            "`{}` is larger than max_snapshot_bytes ({limit} bytes)",
            path.display()
        ));
    }
    Ok(bytes)
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
                match read_bounded(&path, max_bytes).await {
                    Err(msg) => {
                        if let Some(m) = metrics::get() {
                            m.sync_failure(SyncKind::File);
                            m.rejected("snapshot");
                        }
                        tracing::warn!(error = %msg, "snapshot rejected; the active version keeps serving");
                        store.reject(msg.clone());
                        last_error = Some(msg);
                    }
                    Ok(bytes) => {
                        let mut h = std::hash::DefaultHasher::new();
                        bytes.hash(&mut h);
                        let hash = h.finish();
                        if content != Some(hash) {
                            content = Some(hash);
                            last_error = load(bytes, encoding, &store, &path).await;
                        }
                    }
                }
            }
        }
        tokio::time::sleep(poll).await;
    }
}

/// Loads one content; returns the error if it was refused.
async fn load(bytes: Vec<u8>, encoding: Encoding, store: &Store, path: &Path) -> Option<String> {
    let started = std::time::Instant::now();
    let built = tokio::task::spawn_blocking(move || super::load_index(bytes, encoding)).await;
    match built {
        Ok(Ok(index)) => {
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
        Ok(Err(e)) => {
            if let Some(m) = metrics::get() {
                m.sync_failure(SyncKind::File);
                m.rejected("snapshot");
            }
            let msg = format!("`{}` rejected: {e}", path.display());
            tracing::warn!(error = %msg, "snapshot rejected; the active version keeps serving");
            store.reject(msg.clone());
            Some(msg)
        }
        Err(e) => {
            if let Some(m) = metrics::get() {
                m.sync_failure(SyncKind::File);
                m.rejected("snapshot");
            }
            let msg = format!("`{}`: building the index failed: {e}", path.display());
            tracing::error!(error = %msg, "snapshot rejected");
            store.reject(msg.clone());
            Some(msg)
        }
    }
}
