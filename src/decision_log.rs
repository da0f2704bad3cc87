//! The decision log: an opt-in, sampled record of decisions as JSON lines.
//!
//! The request path never waits for it. A sampled request builds its entry and offers it to a
//! bounded channel with `try_send`; when the channel is full the entry is dropped and counted
//! (`permd_decision_log_entries_total{outcome="dropped"}`). One writer thread drains the
//! channel, masks secrets, and writes to stdout or a file, flushing whenever it has caught up.
//!
//! Masking: keys that look like secrets (`authorization`, `password`, `secret`, `token`,
//! `api_key`, `apikey`, `cookie`) are masked at any depth of the logged request; each
//! configured `mask` entry is either a bare key (masked at any depth) or a dotted path from
//! the request body's root (`context.ssn`, `user.attributes.email`). HTTP headers are never
//! logged, so an `Authorization: Bearer` header cannot reach the log.

use crate::metrics::{self, Api};
use serde::Serialize;
use serde_json::Value;
use std::io::Write;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, SystemTime};

/// Keys masked wherever they appear.
const SECRET_KEYS: [&str; 7] = [
    "authorization",
    "password",
    "secret",
    "token",
    "api_key",
    "apikey",
    "cookie",
];
const MASK: &str = "***";

/// Where entries go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Stdout,
    File(PathBuf),
}

impl Output {
    pub fn parse(s: &str) -> Output {
        match s {
            "stdout" | "-" => Output::Stdout,
            path => Output::File(PathBuf::from(path)),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub output: Output,
    /// Fraction of check requests logged, in `[0, 1]`.
    pub sample_rate: f64,
    /// Entries held for the writer before new ones are dropped.
    pub buffer: usize,
    /// Extra fields to mask: bare keys or dotted paths from the request root.
    pub mask: Vec<String>,
}

/// One logged request.
pub struct Entry {
    pub api: Api,
    pub request_id: String,
    /// The request as received (JSON), masked by the writer.
    pub request: Value,
    /// One `(allow, reason)` per check in the request.
    pub decisions: Vec<(bool, &'static str)>,
    pub version: u64,
    pub latency: Duration,
}

pub struct DecisionLog {
    tx: SyncSender<Entry>,
    sample_rate: f64,
}

static LOG: OnceLock<DecisionLog> = OnceLock::new();
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// Starts the writer thread; later calls keep the first log.
pub fn init(settings: Settings) -> std::io::Result<&'static DecisionLog> {
    if let Some(log) = LOG.get() {
        return Ok(log);
    }
    let mut out: Box<dyn Write + Send> = match &settings.output {
        Output::Stdout => Box::new(std::io::stdout()),
        Output::File(p) => Box::new(std::fs::OpenOptions::new().create(true).append(true).open(p)?),
    };
    let (tx, rx) = sync_channel(settings.buffer.max(1));
    let mask = settings.mask.clone();
    std::thread::Builder::new()
        .name("decision-log".into())
        .spawn(move || writer(rx, &mut out, &mask))?;
    Ok(LOG.get_or_init(|| DecisionLog {
        tx,
        sample_rate: settings.sample_rate.clamp(0.0, 1.0),
    }))
}

/// The log, if this request is to be logged (sampled; `None` when logging is off).
#[inline]
pub fn sampled() -> Option<&'static DecisionLog> {
    let log = LOG.get()?;
    if log.sample_rate >= 1.0 || (log.sample_rate > 0.0 && rand::random::<f64>() < log.sample_rate) {
        Some(log)
    } else {
        None
    }
}

/// A request id: the client's `x-request-id` (at most 128 visible ASCII characters), or a new one.
pub fn request_id(given: Option<&http::HeaderValue>) -> String {
    if let Some(s) = given.and_then(|v| v.to_str().ok())
        && !s.is_empty()
        && s.len() <= 128
    {
        return s.to_string();
    }
    static PREFIX: OnceLock<u32> = OnceLock::new();
    let prefix = PREFIX.get_or_init(rand::random::<u32>);
    format!("{prefix:08x}-{:x}", NEXT_ID.fetch_add(1, Ordering::Relaxed))
}

impl DecisionLog {
    /// Offers `entry` to the writer; never blocks.
    pub fn submit(&self, entry: Entry) {
        match self.tx.try_send(entry) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                if let Some(m) = metrics::get() {
                    m.decision_log("dropped");
                }
            }
        }
    }
}

#[derive(Serialize)]
struct Line<'a> {
    ts: String,
    request_id: &'a str,
    api: &'static str,
    request: &'a Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    allow: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    results: Option<Vec<Result1>>,
    version: u64,
    latency_us: f64,
}

#[derive(Serialize)]
struct Result1 {
    allow: bool,
    reason: &'static str,
}

fn writer(rx: Receiver<Entry>, out: &mut dyn Write, mask: &[String]) {
    let mut buf = std::io::BufWriter::with_capacity(64 * 1024, out);
    // Block for the first entry, then take what is queued without waiting, then flush.
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(entry) = next {
            let ok = write_entry(&mut buf, entry, mask).is_ok();
            if let Some(m) = metrics::get() {
                m.decision_log(if ok { "written" } else { "failed" });
            }
            next = rx.try_recv().ok();
        }
        if let Err(e) = buf.flush() {
            tracing::warn!(error = %e, "cannot write the decision log");
        }
    }
    let _ = buf.flush();
}

fn write_entry(out: &mut impl Write, mut e: Entry, mask: &[String]) -> std::io::Result<()> {
    mask_value(&mut e.request, mask);
    let single = e.decisions.len() == 1 && !matches!(e.api, Api::AllowedBulk | Api::Evaluations | Api::GrpcCheckBulk);
    let line = Line {
        ts: humantime::format_rfc3339_micros(SystemTime::now()).to_string(),
        request_id: &e.request_id,
        api: e.api.as_str(),
        request: &e.request,
        allow: single.then(|| e.decisions[0].0),
        reason: single.then(|| e.decisions[0].1),
        results: (!single).then(|| {
            e.decisions
                .iter()
                .map(|&(allow, reason)| Result1 { allow, reason })
                .collect()
        }),
        version: e.version,
        latency_us: e.latency.as_secs_f64() * 1e6,
    };
    serde_json::to_writer(&mut *out, &line)?;
    out.write_all(b"\n")
}

/// Masks secret-looking keys at any depth, and the configured keys or paths.
pub fn mask_value(v: &mut Value, mask: &[String]) {
    mask_keys(v, mask);
    for path in mask.iter().filter(|m| m.contains('.')) {
        let mut cur = &mut *v;
        let mut parts = path.split('.').peekable();
        while let Some(part) = parts.next() {
            let Value::Object(map) = cur else { break };
            if parts.peek().is_none() {
                if let Some(slot) = map.get_mut(part) {
                    *slot = Value::String(MASK.into());
                }
                break;
            }
            match map.get_mut(part) {
                Some(child) => cur = child,
                None => break,
            }
        }
    }
}

fn mask_keys(v: &mut Value, mask: &[String]) {
    match v {
        Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                let lower = k.to_ascii_lowercase();
                if SECRET_KEYS.contains(&lower.as_str()) || mask.iter().any(|m| !m.contains('.') && m == k) {
                    *child = Value::String(MASK.into());
                } else {
                    mask_keys(child, mask);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|c| mask_keys(c, mask)),
        _ => {}
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn masks_secret_keys_bare_keys_and_paths() {
        let mut v = json!({
            "user": {"key": "alice", "attributes": {"email": "a@x", "Token": "t"}},
            "context": {"ssn": "123", "nested": {"password": "p", "ssn": "keep-path-only"}},
            "resource": "doc:1"
        });
        mask_value(&mut v, &["context.ssn".into(), "email".into()]);
        assert_eq!(v["user"]["attributes"]["email"], "***");
        assert_eq!(v["user"]["attributes"]["Token"], "***");
        assert_eq!(v["context"]["ssn"], "***");
        assert_eq!(v["context"]["nested"]["password"], "***");
        assert_eq!(v["context"]["nested"]["ssn"], "keep-path-only");
        assert_eq!(v["user"]["key"], "alice");
        assert_eq!(v["resource"], "doc:1");
    }

    #[test]
    fn entries_are_json_lines() {
        let mut out = Vec::new();
        let e = Entry {
            api: Api::Allowed,
            request_id: "r1".into(),
            request: json!({"user": "alice", "context": {"password": "p"}}),
            decisions: vec![(true, "org_role")],
            version: 7,
            latency: Duration::from_micros(12),
        };
        write_entry(&mut out, e, &[]).unwrap();
        let line: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(line["allow"], true);
        assert_eq!(line["reason"], "org_role");
        assert_eq!(line["version"], 7);
        assert_eq!(line["request_id"], "r1");
        assert_eq!(line["request"]["context"]["password"], "***");
        assert!(line["latency_us"].as_f64().unwrap() >= 12.0);
        assert!(out.ends_with(b"\n"));
    }

    #[test]
    fn request_ids_come_from_the_header_when_sane() {
        let h = http::HeaderValue::from_static("abc-123");
        assert_eq!(request_id(Some(&h)), "abc-123");
        let long = http::HeaderValue::from_str(&"x".repeat(200)).unwrap();
        assert_ne!(request_id(Some(&long)).len(), 200);
        assert_ne!(request_id(None), request_id(None));
    }
}
