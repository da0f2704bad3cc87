//! Prometheus metrics on one explicit registry (never the crate's default one).
//!
//! The check path only touches pre-resolved handles: a decision is one relaxed atomic add on
//! a counter picked by array index, and one histogram observation. Everything derived from the
//! store (version, staleness, sizes, ignored items) is read when `/metrics` is scraped, so
//! nothing on the write side pays for it either.
//!
//! Metrics are on by default; `metrics: false` leaves the global unset, and every recording
//! function is then a load of a `OnceLock` and a branch.

pub mod grpc;

use crate::index::Reason;
use crate::model::Kind;
use crate::store::Store;
use prometheus::core::Collector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// The metrics, once `init` has run (that is, unless metrics are turned off).
#[inline]
pub fn get() -> Option<&'static Metrics> {
    METRICS.get()
}

/// Creates the registry and its metrics; later calls return the first one.
pub fn init() -> &'static Metrics {
    METRICS.get_or_init(Metrics::new)
}

/// Which API a decision was asked through (the `api` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    Allowed,
    AllowedBulk,
    Enforce,
    Evaluation,
    Evaluations,
    GrpcEnforce,
    GrpcCheck,
    GrpcCheckBulk,
}

impl Api {
    pub const ALL: [Api; 8] = [
        Api::Allowed,
        Api::AllowedBulk,
        Api::Enforce,
        Api::Evaluation,
        Api::Evaluations,
        Api::GrpcEnforce,
        Api::GrpcCheck,
        Api::GrpcCheckBulk,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Api::Allowed => "http_allowed",
            Api::AllowedBulk => "http_allowed_bulk",
            Api::Enforce => "http_enforce",
            Api::Evaluation => "http_authzen_evaluation",
            Api::Evaluations => "http_authzen_evaluations",
            Api::GrpcEnforce => "grpc_enforce",
            Api::GrpcCheck => "grpc_check",
            Api::GrpcCheckBulk => "grpc_check_bulk",
        }
    }
}

/// The HTTP routes counted by name; anything else is `other` (so a scanner probing random
/// paths cannot blow up the label set). A test checks this list against the router.
pub const HTTP_ROUTES: [&str; 26] = [
    "/allowed",
    "/allowed/bulk",
    "/v1/enforce",
    "/access/v1/evaluation",
    "/access/v1/evaluations",
    "/.well-known/authzen-configuration",
    "/healthz",
    "/readyz",
    "/v1/status",
    "/metrics",
    "/user-permissions",
    "/authorized_users",
    "/local/role_assignments",
    "/access/v1/search/subject",
    "/access/v1/search/resource",
    "/access/v1/search/action",
    "/v1/resources",
    "/v1/menus",
    "/v1/groups",
    "/v1/role",
    "/v1/roles",
    "/v1/user-roles",
    "/v1/role-users",
    "/v1/group-tree",
    "/v1/menu-tree",
    "/v1/orgs",
];

const OTHER_ROUTE: &str = "other";

/// The label value of an HTTP path.
pub fn http_route(path: &str) -> &'static str {
    HTTP_ROUTES.iter().find(|r| **r == path).copied().unwrap_or("other")
}

/// Sync work counted by kind (the `kind` label of the sync counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncKind {
    /// Reading the watched file.
    File,
    /// Fetching a snapshot from an upstream.
    Snapshot,
    /// Opening or reading the delta stream.
    Deltas,
    /// One pull of a Permit-style REST API.
    PermitPull,
}

impl SyncKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SyncKind::File => "file",
            SyncKind::Snapshot => "snapshot",
            SyncKind::Deltas => "deltas",
            SyncKind::PermitPull => "permit_pull",
        }
    }
}

const N_REASONS: usize = Reason::ALL.len();

pub struct Metrics {
    registry: Registry,
    decisions: Vec<[IntCounter; N_REASONS]>,
    decision_seconds: Vec<Histogram>,
    http_requests: IntCounterVec,
    http_ok: Vec<IntCounter>,
    grpc_requests: IntCounterVec,
    version: IntGauge,
    has_snapshot: IntGauge,
    online: IntGauge,
    last_success_age: prometheus::Gauge,
    last_success_ts: prometheus::Gauge,
    version_age: prometheus::Gauge,
    sync_attempts: IntCounterVec,
    sync_failures: IntCounterVec,
    batches_applied: IntCounter,
    ops_applied: IntCounter,
    rejected: IntCounterVec,
    ignored: IntGaugeVec,
    index_items: IntGaugeVec,
    build_seconds: Histogram,
    cache: IntCounterVec,
    decision_log: IntCounterVec,
}

/// Buckets from 1 µs to 1 s: a decision takes well under a microsecond; a check request with
/// parsing a few microseconds; a read-your-writes wait up to the wait limit.
const LATENCY_BUCKETS: [f64; 19] = [
    1e-6, 2e-6, 5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1, 0.25, 0.5, 1.0,
];

const BUILD_BUCKETS: [f64; 14] = [
    0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0,
];

// Registering freshly made metrics with distinct names in a fresh registry cannot fail.
fn reg<C: Collector + Clone + 'static>(r: &Registry, c: C) -> C {
    if let Err(e) = r.register(Box::new(c.clone())) {
        tracing::error!(error = %e, "metric registration failed");
    }
    c
}

#[allow(clippy::expect_used)] // constant, valid metric definitions
fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    reg(
        r,
        IntCounterVec::new(Opts::new(name, help), labels).expect("counter vec"),
    )
}

impl Metrics {
    #[allow(clippy::expect_used)] // constant, valid metric definitions
    fn new() -> Metrics {
        let r = Registry::new();
        let decisions_vec = counter_vec(
            &r,
            "permd_decisions_total",
            "Decisions made, by API, result and model.md reason.",
            &["api", "result", "reason"],
        );
        let decisions = Api::ALL
            .iter()
            .map(|api| {
                Reason::ALL.map(|reason| {
                    let result = if reason.allows() { "allow" } else { "deny" };
                    decisions_vec.with_label_values(&[api.as_str(), result, reason.as_str()])
                })
            })
            .collect();
        let decision_hist = reg(
            &r,
            HistogramVec::new(
                HistogramOpts::new(
                    "permd_decision_duration_seconds",
                    "Time to answer a check request, from its body being read to its answer being encoded.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["api"],
            )
            .expect("histogram"),
        );
        let decision_seconds = Api::ALL
            .iter()
            .map(|api| decision_hist.with_label_values(&[api.as_str()]))
            .collect();
        let http_requests = counter_vec(
            &r,
            "permd_http_requests_total",
            "HTTP requests answered, by route and status code.",
            &["route", "status"],
        );
        let http_ok = HTTP_ROUTES
            .iter()
            .chain([&OTHER_ROUTE])
            .map(|route| http_requests.with_label_values(&[route, "200"]))
            .collect();
        let grpc_requests = counter_vec(
            &r,
            "permd_grpc_requests_total",
            "gRPC calls finished, by method and status code.",
            &["method", "code"],
        );
        let gauge = |name: &str, help: &str| reg(&r, IntGauge::new(name, help).expect("gauge"));
        let fgauge = |name: &str, help: &str| reg(&r, prometheus::Gauge::new(name, help).expect("gauge"));
        let counter = |name: &str, help: &str| reg(&r, IntCounter::new(name, help).expect("counter"));
        let m = Metrics {
            decisions,
            decision_seconds,
            http_requests,
            http_ok,
            grpc_requests,
            version: gauge(
                "permd_snapshot_version",
                "Version of the active snapshot (0 before the first).",
            ),
            has_snapshot: gauge("permd_snapshot_active", "1 once a snapshot is active."),
            online: gauge("permd_online", "1 while the source is reachable and current."),
            last_success_age: fgauge(
                "permd_sync_last_success_age_seconds",
                "Seconds since the source last confirmed the active data is current (-1 before the first success).",
            ),
            last_success_ts: fgauge(
                "permd_sync_last_success_timestamp_seconds",
                "Unix time at which the source last confirmed the active data (0 before the first success).",
            ),
            version_age: fgauge(
                "permd_snapshot_age_seconds",
                "Seconds since the active version became active (-1 before the first).",
            ),
            sync_attempts: counter_vec(
                &r,
                "permd_sync_attempts_total",
                "Attempts to read the source, by kind.",
                &["kind"],
            ),
            sync_failures: counter_vec(
                &r,
                "permd_sync_failures_total",
                "Failed attempts to read the source (unreachable, unreadable, refused), by kind.",
                &["kind"],
            ),
            batches_applied: counter("permd_delta_batches_applied_total", "Delta batches applied."),
            ops_applied: counter("permd_delta_ops_applied_total", "Delta operations applied."),
            rejected: counter_vec(
                &r,
                "permd_rejected_total",
                "Documents and batches refused (the last good version kept serving), by kind.",
                &["kind"],
            ),
            ignored: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "permd_ignored_items",
                        "Items of the active version ignored by validation, by kind.",
                    ),
                    &["kind"],
                )
                .expect("gauge vec"),
            ),
            index_items: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new("permd_index_items", "Items in the active index, by kind."),
                    &["kind"],
                )
                .expect("gauge vec"),
            ),
            build_seconds: reg(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "permd_index_build_duration_seconds",
                        "Time to build an index from a whole snapshot.",
                    )
                    .buckets(BUILD_BUCKETS.to_vec()),
                )
                .expect("histogram"),
            ),
            cache: counter_vec(
                &r,
                "permd_cache_operations_total",
                "On-disk cache operations, by operation (write, load) and result (ok, error).",
                &["op", "result"],
            ),
            decision_log: counter_vec(
                &r,
                "permd_decision_log_entries_total",
                "Decision log entries, by outcome (written, dropped when the buffer was full, failed to write).",
                &["outcome"],
            ),
            registry: r,
        };
        let info = reg(
            &m.registry,
            IntGaugeVec::new(
                Opts::new("permd_build_info", "Build information; always 1."),
                &["version", "commit"],
            )
            .expect("gauge vec"),
        );
        info.with_label_values(&[
            env!("CARGO_PKG_VERSION"),
            option_env!("PERMD_COMMIT").unwrap_or("unknown"),
        ])
        .set(1);
        for k in Kind::ALL {
            m.index_items.with_label_values(&[k.as_str()]);
        }
        for k in [
            SyncKind::File,
            SyncKind::Snapshot,
            SyncKind::Deltas,
            SyncKind::PermitPull,
        ] {
            m.sync_attempts.with_label_values(&[k.as_str()]);
            m.sync_failures.with_label_values(&[k.as_str()]);
        }
        for k in ["snapshot", "batch"] {
            m.rejected.with_label_values(&[k]);
        }
        for op in ["write", "load"] {
            for result in ["ok", "error"] {
                m.cache.with_label_values(&[op, result]);
            }
        }
        for o in ["written", "dropped", "failed"] {
            m.decision_log.with_label_values(&[o]);
        }
        #[cfg(target_os = "linux")]
        {
            let pc = prometheus::process_collector::ProcessCollector::for_self();
            if let Err(e) = m.registry.register(Box::new(pc)) {
                tracing::warn!(error = %e, "process metrics unavailable");
            }
        }
        m
    }

    /// Adds a collector kept elsewhere (the auth gate's counters) to the registry.
    pub fn register<C: Collector + Clone + 'static>(&self, c: C) {
        reg(&self.registry, c);
    }

    /// One decision made through `api`.
    #[inline]
    pub fn decision(&self, api: Api, reason: Reason) {
        if let Some(row) = self.decisions.get(api as usize) {
            row[reason as usize].inc();
        }
    }

    /// Time taken to answer one check request through `api`.
    #[inline]
    pub fn decision_latency(&self, api: Api, took: Duration) {
        if let Some(h) = self.decision_seconds.get(api as usize) {
            h.observe(took.as_secs_f64());
        }
    }

    /// One HTTP request answered on `route` (from `http_route`) with `status`.
    #[inline]
    pub fn http_request(&self, route: &'static str, status: http::StatusCode) {
        if status == http::StatusCode::OK
            && let Some(i) = HTTP_ROUTES.iter().chain([&OTHER_ROUTE]).position(|r| *r == route)
        {
            self.http_ok[i].inc();
            return;
        }
        self.http_requests.with_label_values(&[route, status.as_str()]).inc();
    }

    /// One gRPC call finished with `code` (the `grpc-status` name).
    pub fn grpc_request(&self, method: &str, code: &str) {
        self.grpc_requests.with_label_values(&[method, code]).inc();
    }

    pub fn sync_attempt(&self, kind: SyncKind) {
        self.sync_attempts.with_label_values(&[kind.as_str()]).inc();
    }

    pub fn sync_failure(&self, kind: SyncKind) {
        self.sync_failures.with_label_values(&[kind.as_str()]).inc();
    }

    /// A batch of `ops` operations was applied and published.
    pub fn batch_applied(&self, ops: usize) {
        self.batches_applied.inc();
        self.ops_applied.inc_by(ops as u64);
    }

    /// A whole document (`snapshot`) or a delta batch (`batch`) was refused.
    pub fn rejected(&self, kind: &'static str) {
        self.rejected.with_label_values(&[kind]).inc();
    }

    pub fn index_built(&self, took: Duration) {
        self.build_seconds.observe(took.as_secs_f64());
    }

    /// A cache `op` (`write` or `load`) ended `ok` or not.
    pub fn cache(&self, op: &'static str, ok: bool) {
        self.cache
            .with_label_values(&[op, if ok { "ok" } else { "error" }])
            .inc();
    }

    /// A decision log entry `written`, `dropped` or `failed`.
    pub fn decision_log(&self, outcome: &'static str) {
        self.decision_log.with_label_values(&[outcome]).inc();
    }

    /// Sets the gauges read off the store. Walks the ignored-items report of the active
    /// version (computed once per version), so call it off the async workers.
    pub fn refresh(&self, store: &Store) {
        let now = SystemTime::now();
        let age = |t: Option<SystemTime>| t.map_or(-1.0, |t| now.duration_since(t).unwrap_or_default().as_secs_f64());
        let (online, last_success, activated) = {
            let st = store.status();
            (st.online, st.last_success, st.activated_at)
        };
        self.online.set(i64::from(online));
        self.last_success_age.set(age(last_success));
        self.last_success_ts.set(
            last_success
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map_or(0.0, |d| d.as_secs_f64()),
        );
        self.version_age.set(age(activated));
        match store.load() {
            None => {
                self.has_snapshot.set(0);
                self.version.set(0);
            }
            Some(ix) => {
                self.has_snapshot.set(1);
                self.version.set(i64::try_from(ix.version()).unwrap_or(i64::MAX));
                for (kind, n) in ix.counts_by_kind() {
                    self.index_items
                        .with_label_values(&[kind.as_str()])
                        .set(i64::try_from(n).unwrap_or(i64::MAX));
                }
                let mut by_kind: Vec<(&'static str, i64)> = Vec::new();
                for item in ix.ignored().iter() {
                    match by_kind.iter_mut().find(|(k, _)| *k == item.kind) {
                        Some((_, n)) => *n += 1,
                        None => by_kind.push((item.kind, 1)),
                    }
                }
                self.ignored.reset();
                for (kind, n) in by_kind {
                    self.ignored.with_label_values(&[kind]).set(n);
                }
            }
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        out
    }
}

/// Counts the decisions of one answered check request, observes its latency, and offers it
/// to the decision log when sampled. `request` builds the logged request body and is only
/// called for a sampled request; `request_id` is the client's `x-request-id`, if any.
#[inline]
pub fn record_decisions(
    api: Api,
    started: Instant,
    reasons: &[Reason],
    version: u64,
    request: impl FnOnce() -> serde_json::Value,
    request_id: Option<&http::HeaderValue>,
) {
    if let Some(m) = get() {
        for r in reasons {
            m.decision(api, *r);
        }
        m.decision_latency(api, started.elapsed());
    }
    if let Some(log) = crate::decision_log::sampled() {
        log.submit(crate::decision_log::Entry {
            api,
            request_id: crate::decision_log::request_id(request_id),
            request: request(),
            decisions: reasons.iter().map(|r| (r.allows(), r.as_str())).collect(),
            version,
            latency: started.elapsed(),
        });
    }
}

/// Times a check request: started when the body has been read.
pub struct Timer(Option<Instant>);

impl Timer {
    #[inline]
    pub fn start() -> Timer {
        Timer(get().map(|_| Instant::now()))
    }

    #[inline]
    pub fn finish(self, api: Api) {
        if let (Some(m), Some(t)) = (get(), self.0) {
            m.decision_latency(api, t.elapsed());
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_the_families_with_their_labels() {
        let m = init();
        m.decision(Api::Allowed, Reason::OrgRole);
        m.decision(Api::GrpcEnforce, Reason::TenantMismatch);
        m.http_request(http_route("/allowed"), http::StatusCode::OK);
        m.http_request(http_route("/nope"), http::StatusCode::NOT_FOUND);
        m.grpc_request("/perm.v1.PermService/Enforce", "OK");
        m.decision_latency(Api::Allowed, Duration::from_micros(3));
        let text = String::from_utf8(m.render()).unwrap();
        for want in [
            "permd_decisions_total{api=\"http_allowed\",reason=\"org_role\",result=\"allow\"}",
            "permd_decisions_total{api=\"grpc_enforce\",reason=\"tenant_mismatch\",result=\"deny\"}",
            "permd_http_requests_total{route=\"/allowed\",status=\"200\"}",
            "permd_http_requests_total{route=\"other\",status=\"404\"}",
            "permd_grpc_requests_total{code=\"OK\",method=\"/perm.v1.PermService/Enforce\"}",
            "permd_decision_duration_seconds_bucket{api=\"http_allowed\",le=\"0.000005\"}",
            "permd_build_info{",
            "permd_sync_attempts_total{kind=\"file\"} ",
        ] {
            assert!(text.contains(want), "missing {want} in\n{text}");
        }
    }
}
