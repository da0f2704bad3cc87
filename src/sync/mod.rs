//! Sources of data: each produces a first snapshot and then changes, builds the next index
//! off the request path (`spawn_blocking`) and publishes it whole to the store. A bad
//! document is refused and the last good version keeps serving.

mod file;

pub use file::watch_file;

use crate::config::{Config, Source};
use crate::store::Store;
use std::sync::Arc;

/// Starts the configured source on the current runtime.
pub fn spawn(cfg: &Config, store: Arc<Store>) -> tokio::task::JoinHandle<()> {
    match &cfg.source {
        Source::File(path) => tokio::spawn(watch_file(
            path.clone(),
            store,
            cfg.poll_interval,
            cfg.max_snapshot_bytes,
        )),
    }
}
