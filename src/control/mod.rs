//! The control plane (`permd control`, docs/control-plane.md): the system of record on
//! PostgreSQL, taking writes and serving the native protocol to every sidecar following a
//! project. It shares `model` (ops, validation, the snapshot document) with the sidecar and
//! keeps no state of its own that the database does not have: any number of replicas may run
//! against one database.
//!
//! # Layout
//! - [`db`]: the storage layer, the only code that speaks SQL; migrations in `migrations/`.
//! - [`auth`]: API keys (hashed at rest) and per-key rate limits.
//! - [`write`]: the write path, request → ops → one transaction → one batch and version.
//! - [`feed`]: one `LISTEN` per replica fanned out to every delta stream, polling as fallback.
//! - [`snapshots`]: the snapshot of a version, read consistently and encoded once.
//! - [`http`]: the HTTP face: the native protocol, `POST /v1/batches`, operations endpoints.
//! - [`permit`]: the Permit-style REST face (`/v2/schema/…`, `/v2/facts/…`).
//! - [`perm`]: perm/v1 (seed 003): reads with the sidecar's code on the project's index,
//!   writes per control.md's mapping table; [`grpc`] serves it (and the organisation service)
//!   on the gRPC port, [`http`] as JSON at `POST /perm.v1.<Service>/<Method>`.
//! - [`orgs`]: the organisation faces of seeds 000 (perms.io organisation service), 001
//!   (pdk.io OU permissions) and 004 (organisations with isolation rules).
//!
//! Data flows one way: API → write path → database → change feed → sidecars.

pub mod auth;
pub mod cli;
pub mod db;
pub mod feed;
pub mod grpc;
pub mod http;
pub mod orgs;
pub mod perm;
pub mod permit;
pub mod snapshots;
pub mod write;

use crate::server::{HttpLimits, Listener};
use auth::{Keys, Limits};
use db::Db;
use feed::Feed;
use prometheus::{IntCounterVec, Opts, Registry};
use snapshots::Snapshots;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// What `permd control` runs with (flags, `PERMD_CONTROL_*`, a config file: see [`cli`]).
#[derive(Debug, Clone)]
pub struct Settings {
    pub database: String,
    pub http_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    pub migrate: bool,
    pub limits: Limits,
    /// Batches older than this are dropped; a `since` before them gets 410.
    pub retention: Duration,
    /// How often the feed asks the database for new versions when no notification came.
    pub poll_interval: Duration,
    /// A delta stream sends an empty line when it has sent nothing for this long.
    pub heartbeat: Duration,
    pub max_body_bytes: usize,
    pub pool_size: usize,
    pub shutdown_grace: Duration,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            database: String::new(),
            http_addr: SocketAddr::from(([0, 0, 0, 0], 7780)),
            grpc_addr: SocketAddr::from(([0, 0, 0, 0], 7781)),
            migrate: true,
            limits: Limits {
                per_hour: 10_000,
                per_minute: 100,
            },
            retention: Duration::from_secs(24 * 3600),
            poll_interval: Duration::from_secs(1),
            heartbeat: Duration::from_secs(10),
            max_body_bytes: 4 << 20,
            pool_size: 16,
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// The control plane's counters, on its own registry (`GET /metrics`).
pub struct Metrics {
    pub registry: Registry,
    /// Write requests by result: `applied`, `unchanged`, `rejected`, `failed`.
    pub writes: IntCounterVec,
    /// Requests refused before they were handled: `unauthenticated`, `rate_limited`.
    pub refused: IntCounterVec,
}

impl Metrics {
    fn new() -> Metrics {
        let registry = Registry::new();
        let writes = IntCounterVec::new(
            Opts::new("permd_control_writes_total", "Write requests by result"),
            &["result"],
        )
        .unwrap_or_else(|_| unreachable_counter());
        let refused = IntCounterVec::new(
            Opts::new(
                "permd_control_refused_total",
                "Requests refused before handling, by reason",
            ),
            &["reason"],
        )
        .unwrap_or_else(|_| unreachable_counter());
        let _ = registry.register(Box::new(writes.clone()));
        let _ = registry.register(Box::new(refused.clone()));
        Metrics {
            registry,
            writes,
            refused,
        }
    }
}

/// A counter with a name that always validates (the constant names above do too).
fn unreachable_counter() -> IntCounterVec {
    IntCounterVec::new(Opts::new("permd_control_unused", "unused"), &["x"]).unwrap_or_else(|_| {
        // Both names are constants that prometheus accepts; this is never reached.
        std::process::abort()
    })
}

/// Everything a request of a replica shares.
pub struct Control {
    pub db: Db,
    /// The write queue of each project (group commit).
    pub groups: write::Groups,
    pub keys: Keys,
    pub feed: Arc<Feed>,
    pub snapshots: Snapshots,
    pub settings: Settings,
    pub metrics: Metrics,
    /// Turns true when the replica begins to shut down: delta streams end.
    pub stop: tokio::sync::watch::Receiver<bool>,
}

/// Runs a control-plane replica until `shutdown` resolves.
pub async fn run(settings: Settings, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let db = Db::connect(&settings.database, settings.pool_size)?;
    if settings.migrate {
        let applied = db
            .migrate()
            .await
            .map_err(|e| anyhow::anyhow!("cannot migrate the database: {e}"))?;
        if !applied.is_empty() {
            tracing::info!(?applied, "schema migrated");
        }
    }
    let listener = Listener::bind(&crate::config::ListenAddr::Tcp(settings.http_addr))
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on http_addr `{}`: {e}", settings.http_addr))?;
    let grpc_listener = Listener::bind(&crate::config::ListenAddr::Tcp(settings.grpc_addr))
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on grpc_addr `{}`: {e}", settings.grpc_addr))?;
    tracing::info!(addr = %grpc_listener.local_addr(), "grpc listening");
    tracing::info!(addr = %listener.local_addr(), "http listening");
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let feed = Feed::start(db.clone(), settings.poll_interval);
    let ctl = Arc::new(Control {
        keys: Keys::new(db.clone(), settings.limits),
        groups: write::Groups::new(db.clone(), feed.clone()),
        feed,
        snapshots: Snapshots::new(db.clone()),
        db: db.clone(),
        metrics: Metrics::new(),
        settings: settings.clone(),
        stop,
    });
    let pruner = tokio::spawn(prune(db, settings.retention));
    let grpc_task = tokio::spawn(grpc::serve(grpc_listener, ctl.clone()));
    let limits = HttpLimits {
        max_connections: 10_000,
        header_read_timeout: Duration::from_secs(10),
        max_concurrent_streams: 256,
    };
    let service = {
        let ctl = ctl.clone();
        move |req| http::handle(req, ctl.clone())
    };
    let mut stopped = ctl.stop.clone();
    let serve = crate::server::serve_with(
        listener,
        Arc::new(service),
        limits,
        settings.shutdown_grace,
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        },
    );
    let trigger = async {
        shutdown.await;
        tracing::info!("shutting down: no new connections, delta streams end");
        let _ = stop_tx.send(true);
    };
    tokio::join!(trigger, serve);
    pruner.abort();
    match tokio::time::timeout(settings.shutdown_grace, grpc_task).await {
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "grpc server ended with an error"),
        Ok(Err(e)) => tracing::warn!(error = %e, "grpc server task failed"),
        _ => {}
    }
    Ok(())
}

/// Drops batches past the retention, once a minute (more often for a short retention), and
/// at start.
async fn prune(db: Db, retention: Duration) {
    let every = (retention / 2).clamp(Duration::from_millis(100), Duration::from_secs(60));
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        match db.prune_changes(retention).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(batches = n, "old batches dropped"),
            Err(e) => tracing::debug!(error = %e, "pruning old batches failed"),
        }
    }
}
