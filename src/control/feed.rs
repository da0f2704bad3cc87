//! The change feed of one replica: a single database listener (`LISTEN permd_changes`) and a
//! polling fallback wake one hub task, which reads each new batch of a project once and
//! broadcasts its line to every delta stream of that project in memory. A stream that falls
//! behind the broadcast (or sees a gap) reads what it missed from the database itself, so a
//! lost notification or a slow client delays a batch but never loses or repeats one.

use super::db::Db;
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};

/// The NOTIFY channel writers signal; the payload is the project id.
pub const CHANNEL: &str = "permd_changes";
/// Lines a stream may fall behind the broadcast before it reads from the database instead.
const BROADCAST_DEPTH: usize = 1024;
/// Batches read per query.
pub const PAGE: i64 = 500;

/// One batch as a stream sends it: its version and its line (with the newline).
#[derive(Debug)]
pub struct Line {
    pub version: u64,
    pub bytes: Bytes,
}

struct ProjectFeed {
    tx: broadcast::Sender<Arc<Line>>,
    /// The newest version broadcast (or known when the feed was made).
    last: u64,
}

/// The hub: per project, a broadcast of its new batches.
pub struct Feed {
    db: Db,
    projects: Mutex<HashMap<i64, ProjectFeed>>,
    wake: mpsc::UnboundedSender<i64>,
}

impl Feed {
    /// Starts the hub (listener, polling every `poll`) and returns it.
    pub fn start(db: Db, poll: Duration) -> Arc<Feed> {
        let (wake, woken) = mpsc::unbounded_channel();
        let feed = Arc::new(Feed {
            db,
            projects: Mutex::new(HashMap::new()),
            wake,
        });
        tokio::spawn(hub(Arc::downgrade(&feed), woken, poll));
        tokio::spawn(listener(Arc::downgrade(&feed)));
        feed
    }

    /// Subscribes to a project's new batches; the first stream of a project starts its feed
    /// at `current` (the version the stream's caller read).
    pub fn subscribe(&self, project: i64, current: u64) -> broadcast::Receiver<Arc<Line>> {
        let Ok(mut projects) = self.projects.lock() else {
            // A poisoned map: a receiver of a fresh channel still works (it reads the database).
            return broadcast::channel(1).1;
        };
        let f = projects.entry(project).or_insert_with(|| ProjectFeed {
            tx: broadcast::channel(BROADCAST_DEPTH).0,
            last: current,
        });
        f.tx.subscribe()
    }

    /// Open streams over all projects.
    pub fn streams(&self) -> usize {
        self.projects
            .lock()
            .map(|p| p.values().map(|f| f.tx.receiver_count()).sum())
            .unwrap_or(0)
    }

    /// Wakes the hub for a project (a write of this replica; the others hear NOTIFY).
    pub fn poke(&self, project: i64) {
        let _ = self.wake.send(project);
    }

    fn last(&self, project: i64) -> Option<u64> {
        let p = self.projects.lock().ok()?;
        p.get(&project).filter(|f| f.tx.receiver_count() > 0).map(|f| f.last)
    }

    /// Reads the project's batches after the last broadcast and broadcasts them.
    async fn pump(&self, project: i64) {
        let Some(mut last) = self.last(project) else {
            return;
        };
        loop {
            let rows = match self.db.changes_after(project, last, PAGE).await {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::warn!(error = %e, project, "reading the change feed failed");
                    return;
                }
            };
            let n = rows.len();
            let Ok(mut projects) = self.projects.lock() else {
                return;
            };
            let Some(f) = projects.get_mut(&project) else {
                return;
            };
            for (version, batch) in rows {
                let mut line = batch.into_bytes();
                line.push(b'\n');
                f.last = version;
                last = version;
                let _ = f.tx.send(Arc::new(Line {
                    version,
                    bytes: Bytes::from(line),
                }));
            }
            if n < PAGE as usize {
                return;
            }
        }
    }

    /// The projects with open streams; feeds without any are dropped.
    fn watched(&self) -> Vec<i64> {
        let Ok(mut projects) = self.projects.lock() else {
            return Vec::new();
        };
        projects.retain(|_, f| f.tx.receiver_count() > 0);
        projects.keys().copied().collect()
    }
}

/// Wakes on notifications and on every poll tick; pumps the projects that moved.
async fn hub(feed: std::sync::Weak<Feed>, mut woken: mpsc::UnboundedReceiver<i64>, poll: Duration) {
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            p = woken.recv() => {
                let Some(p) = p else { return };
                let Some(feed) = feed.upgrade() else { return };
                // Coalesce a burst of wake-ups into one read per project.
                let mut projects = vec![p];
                while let Ok(p) = woken.try_recv() {
                    if !projects.contains(&p) {
                        projects.push(p);
                    }
                }
                for p in projects {
                    feed.pump(p).await;
                }
            }
            _ = tick.tick() => {
                let Some(feed) = feed.upgrade() else { return };
                let watched = feed.watched();
                if watched.is_empty() {
                    continue;
                }
                match feed.db.versions(&watched).await {
                    Ok(versions) => {
                        for (p, v) in versions {
                            if feed.last(p).is_some_and(|last| v > last) {
                                feed.pump(p).await;
                            }
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "polling project versions failed"),
                }
            }
        }
    }
}

/// Keeps one `LISTEN` connection open, reconnecting with a pause; notifications wake the hub.
async fn listener(feed: std::sync::Weak<Feed>) {
    let mut pause = Duration::from_millis(200);
    loop {
        let Some(db) = feed.upgrade().map(|f| f.db.clone()) else {
            return;
        };
        match db.listen(CHANNEL).await {
            Ok((_client, mut rx)) => {
                pause = Duration::from_millis(200);
                tracing::debug!("change listener connected");
                while let Some(payload) = rx.recv().await {
                    let Some(feed) = feed.upgrade() else { return };
                    if let Ok(p) = payload.parse::<i64>() {
                        feed.poke(p);
                    }
                }
                // The connection ended: anything missed meanwhile is found by the poll.
            }
            Err(e) => tracing::debug!(error = %e, "change listener cannot connect"),
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}
