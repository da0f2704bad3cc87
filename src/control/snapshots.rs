//! Snapshots served by the control plane: the project's state at its current version, read in
//! one consistent transaction and encoded once per version; every request for that version
//! (a thousand sidecars starting together) shares the one encoding. Builds of a project are
//! single-flight: requests that arrive while one runs wait for it.

use super::db::{Db, DbError};
use crate::index::Index;
use crate::model::{Encoding, Snapshot};
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

impl Snapshots {
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
        let snapshot = self.db.snapshot(project).await?;
        self.reads.fetch_add(1, Ordering::Relaxed);
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
