//! The one shared handle to the active index: an `ArcSwap` readers load without waiting, a
//! `watch` channel announcing each new version (min-version waits, readiness), and the sync
//! status that `/readyz` and `/v1/status` report. Sources publish whole indexes here.

use crate::index::Index;
use arc_swap::ArcSwapOption;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

/// What the source last said, for status pages. Never holds credentials.
#[derive(Debug, Clone, Default)]
pub struct SyncStatus {
    /// The source URI with any userinfo removed.
    pub source: String,
    pub online: bool,
    /// When the source last confirmed the active data is current.
    pub last_success: Option<SystemTime>,
    pub last_error: Option<(SystemTime, String)>,
    /// When the active version became active.
    pub activated_at: Option<SystemTime>,
    /// Cache files found corrupt, truncated or foreign and ignored.
    pub cache_rejected: u64,
}

pub struct Store {
    active: ArcSwapOption<Index>,
    version: watch::Sender<Option<u64>>,
    status: Mutex<SyncStatus>,
    rejected: AtomicU64,
    shutting_down: AtomicBool,
}

impl Store {
    pub fn new(source: impl Into<String>) -> Arc<Store> {
        Arc::new(Store {
            active: ArcSwapOption::empty(),
            version: watch::Sender::new(None),
            status: Mutex::new(SyncStatus {
                source: source.into(),
                ..SyncStatus::default()
            }),
            rejected: AtomicU64::new(0),
            shutting_down: AtomicBool::new(false),
        })
    }

    /// The active index, if any; never waits.
    #[inline]
    pub fn load(&self) -> Option<Arc<Index>> {
        self.active.load_full()
    }

    /// Makes `index` the active version, whole, and announces it.
    pub fn publish(&self, index: Index) {
        let version = index.version();
        self.active.store(Some(Arc::new(index)));
        let now = SystemTime::now();
        {
            let mut st = self.status();
            st.activated_at = Some(now);
            st.last_success = Some(now);
            st.online = true;
        }
        self.version.send_replace(Some(version));
    }

    /// Makes `index`, read from the local cache, the active version while the source is out of
    /// reach: `online` stays false and the age runs from when the cache was current.
    pub fn publish_cached(&self, index: Index, current_at: SystemTime) {
        let version = index.version();
        self.active.store(Some(Arc::new(index)));
        {
            let mut st = self.status();
            st.activated_at = Some(SystemTime::now());
            st.last_success = Some(current_at);
            st.online = false;
        }
        self.version.send_replace(Some(version));
    }

    /// The source confirmed the active data is current (an unchanged file, a heartbeat).
    pub fn confirm(&self) {
        let mut st = self.status();
        st.last_success = Some(SystemTime::now());
        st.online = true;
    }

    /// A document or batch was refused; the active version keeps serving.
    pub fn reject(&self, error: String) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        self.fail(error);
    }

    /// The source failed (unreachable, unreadable); the active version keeps serving.
    pub fn fail(&self, error: String) {
        let mut st = self.status();
        st.last_error = Some((SystemTime::now(), error));
    }

    pub fn set_online(&self, online: bool) {
        self.status().online = online;
    }

    pub fn rejected_total(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    pub fn status(&self) -> MutexGuard<'_, SyncStatus> {
        // A panic while holding this lock cannot leave the plain data inconsistent.
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn subscribe(&self) -> watch::Receiver<Option<u64>> {
        self.version.subscribe()
    }

    /// The active index once its version is at least `min`, waiting up to `wait` for the
    /// source to get there; `None` if it does not.
    pub async fn at_least(&self, min: u64, wait: Duration) -> Option<Arc<Index>> {
        if let Some(ix) = self.load()
            && ix.version() >= min
        {
            return Some(ix);
        }
        let mut rx = self.subscribe();
        let reached = tokio::time::timeout(wait, rx.wait_for(|v| v.is_some_and(|v| v >= min))).await;
        match reached {
            Ok(Ok(_)) => self.load().filter(|ix| ix.version() >= min),
            _ => None,
        }
    }

    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    pub fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::model::{DeltaBatch, Snapshot};

    #[tokio::test(start_paused = true)]
    async fn min_version_waits_for_the_watch() {
        let store = Store::new("test");
        let s = Snapshot {
            format: 1,
            version: 5,
            ..Snapshot::default()
        };
        store.publish(Index::build(&s));
        assert_eq!(store.at_least(5, Duration::ZERO).await.map(|i| i.version()), Some(5));
        assert!(store.at_least(6, Duration::from_millis(100)).await.is_none());
        let waiter = {
            let store = store.clone();
            tokio::spawn(async move { store.at_least(6, Duration::from_secs(5)).await.map(|i| i.version()) })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        let next = store
            .load()
            .unwrap()
            .apply(&DeltaBatch {
                from_version: 5,
                to_version: 6,
                ops: vec![],
            })
            .unwrap();
        store.publish(next);
        assert_eq!(waiter.await.unwrap(), Some(6));
    }
}
