//! Snapshots served by the control plane: the project's state at its current version, read in
//! one consistent transaction and encoded once per version; every request for that version
//! (a thousand sidecars starting together) shares the one encoding. Builds of a project are
//! single-flight: requests that arrive while one runs wait for it.

use super::db::{Db, DbError};
use crate::index::Index;
use crate::model::{DeltaBatch, Encoding, Snapshot};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::OnceCell;

/// One version's document and its encodings.
pub struct Encoded {
    pub version: u64,
    pub snapshot: Arc<Snapshot>,
    msgpack: OnceCell<Bytes>,
    json: OnceCell<Bytes>,
    index: OnceCell<Arc<Index>>,
}

impl Encoded {
    /// The version's index, built on first use (off the runtime) and shared: the control
    /// plane's reads (perm/v1, the organisation rules) answer from it with the sidecar's code.
    pub async fn index(self: &Arc<Self>) -> Result<Arc<Index>, DbError> {
        let ix = self
            .index
            .get_or_try_init(|| async {
                let me = self.clone();
                tokio::task::spawn_blocking(move || Arc::new(Index::build(&me.snapshot)))
                    .await
                    .map_err(|e| DbError::Corrupt(e.to_string()))
            })
            .await?;
        Ok(ix.clone())
    }

    /// The document in `encoding` (MessagePack or JSON), encoded on first use.
    pub async fn bytes(self: &Arc<Self>, encoding: Encoding, encodes: &AtomicU64) -> Result<Bytes, DbError> {
        let cell = match encoding {
            Encoding::Json => &self.json,
            _ => &self.msgpack,
        };
        // Single flight: the first request encodes, the others wait for its bytes.
        let bytes = cell
            .get_or_try_init(|| async {
                let me = self.clone();
                let bytes = tokio::task::spawn_blocking(move || me.snapshot.encode(encoding))
                    .await
                    .map_err(|e| DbError::Corrupt(e.to_string()))?
                    .map_err(|e| DbError::Corrupt(e.to_string()))?;
                encodes.fetch_add(1, Ordering::Relaxed);
                Ok::<_, DbError>(Bytes::from(bytes))
            })
            .await?;
        Ok(bytes.clone())
    }
}

/// The newest encoded snapshot of each project.
pub struct Snapshots {
    db: Db,
    latest: Mutex<HashMap<i64, Arc<Encoded>>>,
    building: Mutex<HashMap<i64, Arc<tokio::sync::Mutex<()>>>>,
    /// Documents encoded (both encodings count), for `/metrics`.
    pub encodes: AtomicU64,
    /// Documents read from the database.
    pub reads: AtomicU64,
}

/// Versions a cached document is brought forward by applying batches rather than read again.
const CATCH_UP_MAX: u64 = 512;

impl Snapshots {
    async fn read(&self, project: i64) -> Result<Snapshot, DbError> {
        let s = self.db.snapshot(project).await?;
        self.reads.fetch_add(1, Ordering::Relaxed);
        Ok(s)
    }

    /// The cached document with the batches after it applied (model.md §4: the same document
    /// a read would give); `None` when they are not all kept or do not follow on.
    async fn catch_up(&self, project: i64, from: &Encoded) -> Result<Option<Snapshot>, DbError> {
        let rows = self
            .db
            .changes_after(project, from.version, CATCH_UP_MAX as i64)
            .await?;
        let base = from.snapshot.clone();
        let applied = tokio::task::spawn_blocking(move || {
            let mut doc = (*base).clone();
            for (version, line) in rows {
                let batch = DeltaBatch::from_json(line.as_bytes()).ok()?;
                if batch.from_version != doc.version || batch.to_version != version {
                    return None;
                }
                doc.apply_ops(&batch.ops);
                doc.version = batch.to_version;
            }
            Some(doc)
        })
        .await
        .map_err(|e| DbError::Corrupt(e.to_string()))?;
        Ok(applied.filter(|d| d.version > from.version))
    }

    pub fn new(db: Db) -> Snapshots {
        Snapshots {
            db,
            latest: Mutex::new(HashMap::new()),
            building: Mutex::new(HashMap::new()),
            encodes: AtomicU64::new(0),
            reads: AtomicU64::new(0),
        }
    }

    fn cached(&self, project: i64, at_least: u64) -> Option<Arc<Encoded>> {
        let latest = self.latest.lock().ok()?;
        latest.get(&project).filter(|e| e.version >= at_least).cloned()
    }

    /// The project's snapshot at its current version (or newer).
    pub async fn current(&self, project: i64) -> Result<Arc<Encoded>, DbError> {
        let version = self.db.version(project).await?;
        if let Some(e) = self.cached(project, version) {
            return Ok(e);
        }
        let gate = {
            let mut building = self
                .building
                .lock()
                .map_err(|_| DbError::Corrupt("snapshot cache poisoned".into()))?;
            building.entry(project).or_default().clone()
        };
        let _turn = gate.lock().await;
        if let Some(e) = self.cached(project, version) {
            return Ok(e);
        }
        let previous = self.latest.lock().ok().and_then(|l| l.get(&project).cloned());
        let snapshot = match previous {
            Some(p) if version.saturating_sub(p.version) <= CATCH_UP_MAX => match self.catch_up(project, &p).await? {
                Some(s) => s,
                None => self.read(project).await?,
            },
            _ => self.read(project).await?,
        };
        let encoded = Arc::new(Encoded {
            version: snapshot.version,
            snapshot: Arc::new(snapshot),
            msgpack: OnceCell::new(),
            json: OnceCell::new(),
            index: OnceCell::new(),
        });
        if let Ok(mut latest) = self.latest.lock() {
            let newer = latest.get(&project).is_some_and(|e| e.version > encoded.version);
            if !newer {
                latest.insert(project, encoded.clone());
            }
        }
        Ok(encoded)
    }
}
