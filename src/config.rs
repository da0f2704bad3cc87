//! permd's configuration: a YAML file with unknown keys refused, overridden by `PERMD_*`
//! environment variables, overridden by flags. Validated whole before any port is bound.

use serde::{Deserialize, Deserializer};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The file `permd serve` reads when no `--config` is given and it exists (the repository's
/// bundled example when run from the repository root).
pub const DEFAULT_CONFIG: &str = "config/permd.yaml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file `{path}`: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("config file `{path}`: {message}")]
    Parse { path: String, message: String },
    #[error("`{field}`: {message}")]
    Invalid { field: &'static str, message: String },
}

fn invalid(field: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        message: message.into(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Where a listener binds: a TCP address or a Unix socket path (`unix:/path`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(std::net::SocketAddr),
    Unix(PathBuf),
}

impl ListenAddr {
    pub fn parse(field: &'static str, s: &str) -> Result<ListenAddr, ConfigError> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(invalid(field, "`unix:` needs a socket path"));
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        if s.starts_with('/') {
            return Ok(ListenAddr::Unix(PathBuf::from(s)));
        }
        // `localhost:port` is the IPv4 loopback address.
        let ip_port = match s.strip_prefix("localhost:") {
            Some(port) => format!("127.0.0.1:{port}"),
            None => s.to_string(),
        };
        let addr = ip_port
            .parse()
            .map_err(|_| invalid(field, format!("`{s}` is not `ip:port` or `unix:/path`")))?;
        Ok(ListenAddr::Tcp(addr))
    }

    /// Loopback (127.0.0.0/8, ::1) or a Unix socket: reachable from the same host (pod) only.
    pub fn is_local(&self) -> bool {
        match self {
            ListenAddr::Tcp(a) => a.ip().is_loopback(),
            ListenAddr::Unix(_) => true,
        }
    }
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// Where snapshots come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A local document, watched.
    File(PathBuf),
    /// An http(s) control plane; `base` has no trailing `/` and no userinfo.
    Upstream { base: String, protocol: Protocol },
}

/// How an http(s) upstream is spoken to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// The native protocol of sync.md: snapshot, then a stream of delta batches.
    Permd,
    /// Permit-style REST pull of schema and facts, polled.
    Permit,
}

impl Source {
    /// Parses a `source` URI; relative file paths are taken relative to `base`.
    pub fn parse(s: &str, base: &Path, protocol: Option<&str>) -> Result<Source, ConfigError> {
        let path = if let Some(rest) = s.strip_prefix("file://") {
            rest
        } else if let Some(rest) = s.strip_prefix("http://").or_else(|| s.strip_prefix("https://")) {
            let scheme = if s.starts_with("https") { "https" } else { "http" };
            let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
            if host.is_empty() || host.contains('@') {
                return Err(invalid(
                    "source",
                    "an upstream URL needs a host and no userinfo (credentials come from PERMD_API_KEY or api_key_file)",
                ));
            }
            if rest.contains(['?', '#']) {
                return Err(invalid("source", "an upstream URL takes no query or fragment"));
            }
            let protocol = match protocol {
                None | Some("permd") => Protocol::Permd,
                Some("permit") => Protocol::Permit,
                Some(p) => {
                    return Err(invalid(
                        "source_protocol",
                        format!("`{p}`: expected `permd` or `permit`"),
                    ));
                }
            };
            return Ok(Source::Upstream {
                base: format!("{scheme}://{}", rest.trim_end_matches('/')),
                protocol,
            });
        } else if s.contains("://") {
            return Err(invalid(
                "source",
                format!("`{s}`: unknown scheme; expected `file://`, `http://` or `https://`"),
            ));
        } else {
            s
        };
        if path.is_empty() {
            return Err(invalid("source", "the file path is empty"));
        }
        if crate::model::Encoding::from_path(path).is_none() {
            return Err(invalid(
                "source",
                format!("`{path}`: the extension must be .yaml, .yml, .json, .msgpack or .mpk"),
            ));
        }
        let path = PathBuf::from(path);
        Ok(Source::File(if path.is_absolute() { path } else { base.join(path) }))
    }

    /// How the source appears in logs and status pages.
    pub fn display(&self) -> String {
        match self {
            Source::File(p) => format!("file://{}", p.display()),
            Source::Upstream { base, .. } => base.clone(),
        }
    }
}

/// An upstream API key. Its `Debug` never shows it; only the sync client reads it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// The key itself, for the `Authorization` header and nothing else.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// The config file as written; every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub source: Option<String>,
    pub source_protocol: Option<String>,
    pub http_addr: Option<String>,
    pub grpc_addr: Option<String>,
    pub admin_addr: Option<String>,
    pub cache_dir: Option<PathBuf>,
    #[serde(default, deserialize_with = "duration")]
    pub max_staleness: Option<Duration>,
    pub api_key_file: Option<PathBuf>,
    pub max_body_bytes: Option<usize>,
    pub max_snapshot_bytes: Option<usize>,
    pub max_connections: Option<usize>,
    #[serde(default, deserialize_with = "duration")]
    pub header_read_timeout: Option<Duration>,
    pub max_concurrent_streams: Option<u32>,
    #[serde(default, deserialize_with = "duration")]
    pub shutdown_grace: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub poll_interval: Option<Duration>,
    pub log_format: Option<LogFormat>,
    pub log_level: Option<String>,
    #[serde(default, deserialize_with = "duration")]
    pub upstream_timeout: Option<Duration>,
    pub max_line_bytes: Option<usize>,
    pub permit_project: Option<String>,
    pub permit_env: Option<String>,
    pub metrics: Option<bool>,
    pub decision_log: Option<DecisionLogFile>,
    /// Subject and tenant of requests from proxies (nginx `auth_request`, Envoy ext_authz).
    pub proxy: Option<crate::api::proxy::ProxyFile>,
    pub auth_keys_file: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_client_ca: Option<PathBuf>,
    pub insecure_listen: Option<bool>,
    pub queries: Option<bool>,
    pub disabled_routes: Option<Vec<String>>,
}

/// `decision_log:` in the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionLogFile {
    /// `stdout` or a file path; absent means off.
    pub output: Option<String>,
    pub sample_rate: Option<f64>,
    pub buffer: Option<usize>,
    #[serde(default)]
    pub mask: Vec<String>,
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s: Option<String> = Option::deserialize(d)?;
    s.map(|s| humantime::parse_duration(&s).map_err(serde::de::Error::custom))
        .transpose()
}

/// Values given on the command line or in `PERMD_*` variables (clap merges those two).
#[derive(Debug, Default, Clone, clap::Args)]
pub struct Overrides {
    #[command(flatten)]
    pub proxy: crate::api::proxy::ProxyOverrides,
    /// Snapshot source URI: file:///abs/path.yaml (.json, .msgpack) or a relative path.
    #[arg(long, env = "PERMD_SOURCE")]
    pub source: Option<String>,
    /// Upstream protocol for http(s) sources: permd or permit.
    #[arg(long, env = "PERMD_SOURCE_PROTOCOL")]
    pub source_protocol: Option<String>,
    /// HTTP listen address (ip:port or unix:/path); default 127.0.0.1:7766.
    #[arg(long, env = "PERMD_HTTP_ADDR")]
    pub http_addr: Option<String>,
    /// gRPC listen address (ip:port or unix:/path); default 127.0.0.1:7767.
    #[arg(long, env = "PERMD_GRPC_ADDR")]
    pub grpc_addr: Option<String>,
    /// Optional admin listener (ip:port or unix:/path) serving only /healthz, /readyz and
    /// /v1/status, e.g. on the pod IP for probes while checks stay on loopback.
    #[arg(long, env = "PERMD_ADMIN_ADDR")]
    pub admin_addr: Option<String>,
    /// Directory for the on-disk cache of the active version.
    #[arg(long, env = "PERMD_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Readiness fails when the data is older than this (e.g. 5m).
    #[arg(long, env = "PERMD_MAX_STALENESS", value_parser = humantime::parse_duration)]
    pub max_staleness: Option<Duration>,
    /// File holding the upstream API key (PERMD_API_KEY also works).
    #[arg(long, env = "PERMD_API_KEY_FILE")]
    pub api_key_file: Option<PathBuf>,
    /// Largest accepted request body in bytes (default 1 MiB).
    #[arg(long, env = "PERMD_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Largest accepted snapshot document in bytes (default 2 GiB).
    #[arg(long, env = "PERMD_MAX_SNAPSHOT_BYTES")]
    pub max_snapshot_bytes: Option<usize>,
    /// Most concurrent connections per listener (default 10000).
    #[arg(long, env = "PERMD_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// How long a client may take to send a request's headers, and how long an idle
    /// keep-alive connection stays open (default 10s): slow or idle clients are closed.
    #[arg(long, env = "PERMD_HEADER_READ_TIMEOUT", value_parser = humantime::parse_duration)]
    pub header_read_timeout: Option<Duration>,
    /// Most concurrent HTTP/2 streams per connection, HTTP and gRPC (default 256).
    #[arg(long, env = "PERMD_MAX_CONCURRENT_STREAMS")]
    pub max_concurrent_streams: Option<u32>,
    /// How long in-flight requests may take to finish on shutdown (default 10s).
    #[arg(long, env = "PERMD_SHUTDOWN_GRACE", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Option<Duration>,
    /// How often the file source looks for changes (default 200ms).
    #[arg(long, env = "PERMD_POLL_INTERVAL", value_parser = humantime::parse_duration)]
    pub poll_interval: Option<Duration>,
    /// Log format: text or json.
    #[arg(long, env = "PERMD_LOG_FORMAT", value_parser = ["text", "json"])]
    pub log_format: Option<String>,
    /// Log filter, e.g. info or permd=debug.
    #[arg(long, env = "PERMD_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// Serve /metrics and record metrics (default true).
    #[arg(long, env = "PERMD_METRICS")]
    pub metrics: Option<bool>,
    /// Turn the decision log on: `stdout` or a file path.
    #[arg(long, env = "PERMD_DECISION_LOG")]
    pub decision_log: Option<String>,
    /// Fraction of check requests the decision log records, 0 to 1 (default 1).
    #[arg(long, env = "PERMD_DECISION_LOG_SAMPLE_RATE")]
    pub decision_log_sample_rate: Option<f64>,
    /// Decision log entries buffered before new ones are dropped (default 10000).
    #[arg(long, env = "PERMD_DECISION_LOG_BUFFER")]
    pub decision_log_buffer: Option<usize>,
    /// Fields masked in the decision log, comma-separated: bare keys or dotted paths
    /// (e.g. `context.ssn,email`). Adds to the file's list.
    #[arg(long, env = "PERMD_DECISION_LOG_MASK", value_delimiter = ',')]
    pub decision_log_mask: Option<Vec<String>>,
    /// Upstream: connect timeout, longest silence on a stream or body, longest time a line may
    /// take to complete (default 45s; heartbeats come at least every 15s).
    #[arg(long, env = "PERMD_UPSTREAM_TIMEOUT", value_parser = humantime::parse_duration)]
    pub upstream_timeout: Option<Duration>,
    /// Longest accepted delta line in bytes (default 64 MiB).
    #[arg(long, env = "PERMD_MAX_LINE_BYTES")]
    pub max_line_bytes: Option<usize>,
    /// Permit project key or id (protocol permit).
    #[arg(long, env = "PERMD_PERMIT_PROJECT")]
    pub permit_project: Option<String>,
    /// Permit environment key or id (protocol permit).
    #[arg(long, env = "PERMD_PERMIT_ENV")]
    pub permit_env: Option<String>,
    /// File of bearer keys clients must send (`Authorization: Bearer <key>`), one a line,
    /// `#` comments; read again on change. PERMD_AUTH_KEYS (comma-separated) adds keys.
    #[arg(long, env = "PERMD_AUTH_KEYS_FILE")]
    pub auth_keys_file: Option<PathBuf>,
    /// PEM certificate chain: the HTTP and gRPC listeners speak TLS (reloaded on change).
    #[arg(long, env = "PERMD_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `--tls-cert`.
    #[arg(long, env = "PERMD_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle: clients must present a certificate it signed (mTLS).
    #[arg(long, env = "PERMD_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// Listen on a non-loopback address without keys or client certificates (anyone who can
    /// connect may ask anything).
    #[arg(long, env = "PERMD_INSECURE_LISTEN")]
    pub insecure_listen: bool,
    /// Serve the listing endpoints (/local/role_assignments, /authorized_users, search, …);
    /// false answers them 403 (default true).
    #[arg(long, env = "PERMD_QUERIES")]
    pub queries: Option<bool>,
    /// HTTP paths or gRPC methods (`/package.Service/Method`) answered 403, comma-separated.
    #[arg(long, env = "PERMD_DISABLED_ROUTES", value_delimiter = ',')]
    pub disabled_routes: Option<Vec<String>>,
}

/// The validated configuration `serve` runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub source: Source,
    pub http_addr: ListenAddr,
    pub grpc_addr: ListenAddr,
    pub admin_addr: Option<ListenAddr>,
    pub cache_dir: Option<PathBuf>,
    pub max_staleness: Option<Duration>,
    pub api_key_file: Option<PathBuf>,
    pub max_body_bytes: usize,
    pub max_snapshot_bytes: usize,
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub max_concurrent_streams: u32,
    pub shutdown_grace: Duration,
    pub poll_interval: Duration,
    pub log_format: LogFormat,
    pub log_level: String,
    pub metrics: bool,
    pub decision_log: Option<crate::decision_log::Settings>,
    /// From `PERMD_API_KEY` or `api_key_file`; never a flag, never logged.
    pub api_key: Option<ApiKey>,
    pub upstream_timeout: Duration,
    pub max_line_bytes: usize,
    /// (project, environment) for the Permit pull.
    pub permit_scope: Option<(String, String)>,
    /// Subject and tenant of requests from proxies (`crate::api::proxy`).
    pub proxy: crate::api::proxy::ProxySettings,
    /// Bearer keys clients must send: this file's, re-read on change…
    pub auth_keys_file: Option<PathBuf>,
    /// …and `PERMD_AUTH_KEYS` (environment only; never a flag, never logged).
    pub auth_keys: Vec<ApiKey>,
    /// TLS on the HTTP and gRPC listeners.
    pub tls: Option<crate::tls::TlsFiles>,
    /// A non-loopback listener without authentication is allowed (with a warning).
    pub insecure_listen: bool,
    /// The listing endpoints are served.
    pub queries: bool,
    /// Paths and gRPC methods answered 403.
    pub disabled_routes: Vec<String>,
}

impl Config {
    /// Reads the file (if any), then applies the overrides. `config_path` absent means
    /// `config/permd.yaml` when that exists.
    pub fn load(config_path: Option<&Path>, over: &Overrides) -> Result<Config, ConfigError> {
        let default = Path::new(DEFAULT_CONFIG);
        let path = config_path.or_else(|| default.exists().then_some(default));
        let (file, base) = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.display().to_string(),
                    source,
                })?;
                let file: FileConfig = yaml_serde::from_str(&text).map_err(|e| ConfigError::Parse {
                    path: path.display().to_string(),
                    message: e.to_string(),
                })?;
                let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
                (file, base)
            }
            None => (FileConfig::default(), PathBuf::new()),
        };
        let mut cfg = Config::merge(file, &base, over)?;
        cfg.api_key = read_api_key(std::env::var("PERMD_API_KEY").ok(), cfg.api_key_file.as_deref())?;
        cfg.auth_keys = read_auth_keys(std::env::var("PERMD_AUTH_KEYS").ok())?;
        cfg.check_exposure()?;
        Ok(cfg)
    }

    /// Whether clients must authenticate (a bearer key or a client certificate).
    pub fn authenticates(&self) -> bool {
        !self.auth_keys.is_empty()
            || self.auth_keys_file.is_some()
            || self.tls.as_ref().is_some_and(|t| t.client_ca.is_some())
    }

    /// Closed by default: a listener beyond loopback needs keys or mTLS, or
    /// `insecure_listen` said in so many words. Also reads the key file once, so that a
    /// missing or empty one is a configuration error before any port is bound.
    pub fn check_exposure(&self) -> Result<(), ConfigError> {
        if let Some(path) = &self.auth_keys_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| invalid("auth_keys_file", format!("cannot read `{}`: {e}", path.display())))?;
            let keys = crate::auth::parse_keys(&text)
                .map_err(|e| invalid("auth_keys_file", format!("`{}` {e}", path.display())))?;
            if keys.is_empty() && self.auth_keys.is_empty() {
                return Err(invalid(
                    "auth_keys_file",
                    format!("`{}` holds no key (and PERMD_AUTH_KEYS is not set)", path.display()),
                ));
            }
        }
        if let Some(tls) = &self.tls {
            crate::tls::check(tls).map_err(|e| {
                let field = if e.to_string().contains("client CA") {
                    "tls_client_ca"
                } else {
                    "tls_cert"
                };
                invalid(field, format!("{e:#}"))
            })?;
        }
        if self.authenticates() || self.insecure_listen {
            return Ok(());
        }
        for (field, addr) in [("http_addr", &self.http_addr), ("grpc_addr", &self.grpc_addr)] {
            if !addr.is_local() {
                return Err(invalid(
                    field,
                    format!(
                        "`{addr}` is not a loopback address and no client authentication is configured: \
                         set `auth_keys_file` (or PERMD_AUTH_KEYS) or `tls_client_ca`, or pass \
                         `--insecure-listen` (`insecure_listen: true`) to serve anyone who can connect"
                    ),
                ));
            }
        }
        Ok(())
    }

    fn merge(file: FileConfig, file_base: &Path, over: &Overrides) -> Result<Config, ConfigError> {
        let (source, base) = match (&over.source, &file.source) {
            (Some(s), _) => (s.clone(), PathBuf::new()),
            (None, Some(s)) => (s.clone(), file_base.to_path_buf()),
            (None, None) => {
                return Err(invalid(
                    "source",
                    "no source given: pass --source, PERMD_SOURCE or `source:` in the config file",
                ));
            }
        };
        let protocol = over.source_protocol.as_ref().or(file.source_protocol.as_ref());
        if let Some(p) = protocol
            && p != "permd"
            && p != "permit"
        {
            return Err(invalid(
                "source_protocol",
                format!("`{p}`: expected `permd` or `permit`"),
            ));
        }
        let source = Source::parse(&source, &base, protocol.map(String::as_str))?;
        let permit = matches!(
            source,
            Source::Upstream {
                protocol: Protocol::Permit,
                ..
            }
        );
        let permit_scope = match (
            over.permit_project.clone().or(file.permit_project),
            over.permit_env.clone().or(file.permit_env),
        ) {
            (Some(p), Some(e)) => Some((p, e)),
            _ if permit => {
                return Err(invalid(
                    "permit_project",
                    "protocol `permit` needs both `permit_project` and `permit_env`",
                ));
            }
            _ => None,
        };
        if let Some((p, e)) = &permit_scope
            && [p, e].iter().any(|x| x.is_empty() || x.contains(['/', '?', '#', '%']))
        {
            return Err(invalid(
                "permit_project",
                "project and environment must be non-empty keys without `/`, `?`, `#` or `%`",
            ));
        }
        let default_poll = if permit {
            Duration::from_secs(30)
        } else {
            Duration::from_millis(200)
        };
        let http = over
            .http_addr
            .clone()
            .or(file.http_addr)
            .unwrap_or_else(|| "127.0.0.1:7766".into());
        let grpc = over
            .grpc_addr
            .clone()
            .or(file.grpc_addr)
            .unwrap_or_else(|| "127.0.0.1:7767".into());
        let log_format = match over.log_format.as_deref() {
            Some("json") => LogFormat::Json,
            Some(_) => LogFormat::Text,
            None => file.log_format.unwrap_or(LogFormat::Text),
        };
        let proxy = crate::api::proxy::ProxySettings::merge(file.proxy, &over.proxy)?;
        let dl_file = file.decision_log.unwrap_or_default();
        let decision_log = match over.decision_log.clone().or(dl_file.output) {
            None => None,
            Some(out) if out.is_empty() => {
                return Err(invalid("decision_log.output", "is empty; use `stdout` or a file path"));
            }
            Some(out) => {
                let sample_rate = over.decision_log_sample_rate.or(dl_file.sample_rate).unwrap_or(1.0);
                if !(0.0..=1.0).contains(&sample_rate) {
                    return Err(invalid(
                        "decision_log.sample_rate",
                        format!("{sample_rate} is outside 0..=1"),
                    ));
                }
                let buffer = over.decision_log_buffer.or(dl_file.buffer).unwrap_or(10_000);
                if buffer == 0 {
                    return Err(invalid("decision_log.buffer", "must be greater than 0"));
                }
                let mut mask = dl_file.mask;
                mask.extend(over.decision_log_mask.clone().unwrap_or_default());
                mask.retain(|m| !m.trim().is_empty());
                Some(crate::decision_log::Settings {
                    output: crate::decision_log::Output::parse(&out),
                    sample_rate,
                    buffer,
                    mask,
                })
            }
        };
        let cfg = Config {
            source,
            http_addr: ListenAddr::parse("http_addr", &http)?,
            grpc_addr: ListenAddr::parse("grpc_addr", &grpc)?,
            admin_addr: match over.admin_addr.clone().or(file.admin_addr) {
                Some(a) => Some(ListenAddr::parse("admin_addr", &a)?),
                None => None,
            },
            cache_dir: over.cache_dir.clone().or(file.cache_dir),
            max_staleness: over.max_staleness.or(file.max_staleness),
            api_key_file: over.api_key_file.clone().or(file.api_key_file),
            max_body_bytes: over.max_body_bytes.or(file.max_body_bytes).unwrap_or(1 << 20),
            max_snapshot_bytes: over.max_snapshot_bytes.or(file.max_snapshot_bytes).unwrap_or(2 << 30),
            max_connections: over.max_connections.or(file.max_connections).unwrap_or(10_000),
            header_read_timeout: over
                .header_read_timeout
                .or(file.header_read_timeout)
                .unwrap_or(Duration::from_secs(10)),
            max_concurrent_streams: over
                .max_concurrent_streams
                .or(file.max_concurrent_streams)
                .unwrap_or(256),
            shutdown_grace: over
                .shutdown_grace
                .or(file.shutdown_grace)
                .unwrap_or(Duration::from_secs(10)),
            poll_interval: over.poll_interval.or(file.poll_interval).unwrap_or(default_poll),
            log_format,
            log_level: over
                .log_level
                .clone()
                .or(file.log_level)
                .unwrap_or_else(|| "info".into()),
            metrics: over.metrics.or(file.metrics).unwrap_or(true),
            decision_log,
            api_key: None,
            upstream_timeout: over
                .upstream_timeout
                .or(file.upstream_timeout)
                .unwrap_or(Duration::from_secs(45)),
            max_line_bytes: over.max_line_bytes.or(file.max_line_bytes).unwrap_or(64 << 20),
            permit_scope,
            proxy,
            auth_keys_file: over.auth_keys_file.clone().or(file.auth_keys_file),
            auth_keys: Vec::new(),
            tls: match (
                over.tls_cert.clone().or(file.tls_cert),
                over.tls_key.clone().or(file.tls_key),
                over.tls_client_ca.clone().or(file.tls_client_ca),
            ) {
                (Some(cert), Some(key), client_ca) => Some(crate::tls::TlsFiles { cert, key, client_ca }),
                (None, None, None) => None,
                (None, None, Some(_)) => {
                    return Err(invalid(
                        "tls_client_ca",
                        "client certificates need TLS: set `tls_cert` and `tls_key` too",
                    ));
                }
                (Some(_), None, _) => return Err(invalid("tls_key", "`tls_cert` is set but `tls_key` is not")),
                (None, Some(_), _) => return Err(invalid("tls_cert", "`tls_key` is set but `tls_cert` is not")),
            },
            insecure_listen: over.insecure_listen || file.insecure_listen.unwrap_or(false),
            queries: over.queries.or(file.queries).unwrap_or(true),
            disabled_routes: {
                let mut routes = file.disabled_routes.unwrap_or_default();
                routes.extend(over.disabled_routes.clone().unwrap_or_default());
                routes.retain(|r| !r.trim().is_empty());
                routes
            },
        };
        if let Some(r) = cfg.disabled_routes.iter().find(|r| !r.starts_with('/')) {
            return Err(invalid(
                "disabled_routes",
                format!(
                    "`{r}`: a route is a path (`/authorized_users`) or a gRPC method (`/perm.v1.RoleService/ListRoles`)"
                ),
            ));
        }
        if cfg.upstream_timeout.is_zero() {
            return Err(invalid("upstream_timeout", "must be greater than 0"));
        }
        if cfg.max_line_bytes == 0 {
            return Err(invalid("max_line_bytes", "must be greater than 0"));
        }
        if cfg.max_body_bytes == 0 {
            return Err(invalid("max_body_bytes", "must be greater than 0"));
        }
        if cfg.header_read_timeout.is_zero() {
            return Err(invalid("header_read_timeout", "must be greater than 0"));
        }
        if cfg.max_concurrent_streams == 0 {
            return Err(invalid("max_concurrent_streams", "must be greater than 0"));
        }
        if cfg.max_connections == 0 {
            return Err(invalid("max_connections", "must be greater than 0"));
        }
        if cfg.poll_interval.is_zero() {
            return Err(invalid("poll_interval", "must be greater than 0"));
        }
        Ok(cfg)
    }
}

/// The API key: `PERMD_API_KEY` wins over `api_key_file`; surrounding whitespace is dropped.
fn read_api_key(env: Option<String>, file: Option<&Path>) -> Result<Option<ApiKey>, ConfigError> {
    let key = match (env, file) {
        (Some(k), _) => k,
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| invalid("api_key_file", format!("cannot read `{}`: {e}", path.display())))?,
        (None, None) => return Ok(None),
    };
    let key = key.trim();
    if key.is_empty() {
        return Err(invalid("api_key_file", "the API key is empty"));
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(
            "api_key_file",
            "the API key holds characters a header cannot carry",
        ));
    }
    Ok(Some(ApiKey(key.to_string())))
}

/// `PERMD_AUTH_KEYS`: comma-separated keys; blanks ignored; each must fit in a header.
fn read_auth_keys(env: Option<String>) -> Result<Vec<ApiKey>, ConfigError> {
    let Some(env) = env else {
        return Ok(Vec::new());
    };
    let mut keys = Vec::new();
    for k in env.split(',').map(str::trim).filter(|k| !k.is_empty()) {
        if !k.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid(
                "PERMD_AUTH_KEYS",
                "a key holds characters a header cannot carry",
            ));
        }
        keys.push(ApiKey(k.to_string()));
    }
    Ok(keys)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn file(yaml: &str) -> FileConfig {
        yaml_serde::from_str(yaml).unwrap()
    }

    #[test]
    fn flags_beat_file_and_paths_resolve_against_the_file() {
        let f = file("source: snap.yaml\nhttp_addr: 127.0.0.1:1\nshutdown_grace: 3s\n");
        let cfg = Config::merge(f, Path::new("/etc/permd"), &Overrides::default()).unwrap();
        assert_eq!(cfg.source, Source::File("/etc/permd/snap.yaml".into()));
        assert_eq!(cfg.http_addr.to_string(), "127.0.0.1:1");
        assert_eq!(cfg.shutdown_grace, Duration::from_secs(3));
        let over = Overrides {
            source: Some("file:///x/s.json".into()),
            http_addr: Some("unix:/run/p.sock".into()),
            ..Overrides::default()
        };
        let f = file("source: snap.yaml\nhttp_addr: 127.0.0.1:1\n");
        let cfg = Config::merge(f, Path::new("/etc/permd"), &over).unwrap();
        assert_eq!(cfg.source, Source::File("/x/s.json".into()));
        assert_eq!(cfg.http_addr, ListenAddr::Unix("/run/p.sock".into()));
        assert_eq!(cfg.grpc_addr.to_string(), "127.0.0.1:7767");
    }

    #[test]
    fn upstream_sources_and_keys() {
        let f = file("source: https://cp.example:8443/base/\n");
        let cfg = Config::merge(f, Path::new(""), &Overrides::default()).unwrap();
        assert_eq!(
            cfg.source,
            Source::Upstream {
                base: "https://cp.example:8443/base".into(),
                protocol: Protocol::Permd
            }
        );
        let f = file("source: http://h\nsource_protocol: permit\npermit_project: p\npermit_env: e\n");
        let cfg = Config::merge(f, Path::new(""), &Overrides::default()).unwrap();
        assert_eq!(cfg.permit_scope, Some(("p".into(), "e".into())));
        assert_eq!(cfg.poll_interval, Duration::from_secs(30));
        let key = read_api_key(Some(" pk_secret\n".into()), None).unwrap().unwrap();
        assert_eq!(key.expose(), "pk_secret");
        assert!(!format!("{key:?}").contains("pk_secret"));
        let err = read_api_key(None, Some(Path::new("/nonexistent/key"))).unwrap_err();
        assert!(err.to_string().starts_with("`api_key_file`"), "{err}");
    }

    #[test]
    fn closed_by_default_beyond_loopback() {
        let cfg = |yaml: &str| Config::merge(file(yaml), Path::new(""), &Overrides::default());
        for local in [
            "127.0.0.1:1",
            "127.1.2.3:1",
            "[::1]:1",
            "localhost:1",
            "unix:/run/p.sock",
        ] {
            let c = cfg(&format!("source: a.yaml\nhttp_addr: '{local}'\n")).unwrap();
            assert!(c.http_addr.is_local(), "{local}");
            c.check_exposure().unwrap();
        }
        let c = cfg("source: a.yaml\nhttp_addr: 0.0.0.0:1\n").unwrap();
        let err = c.check_exposure().unwrap_err().to_string();
        assert!(
            err.starts_with("`http_addr`") && err.contains("--insecure-listen"),
            "{err}"
        );
        let err = cfg("source: a.yaml\ngrpc_addr: 10.0.0.1:1\n")
            .unwrap()
            .check_exposure()
            .unwrap_err();
        assert!(err.to_string().starts_with("`grpc_addr`"), "{err}");
        cfg("source: a.yaml\nhttp_addr: 0.0.0.0:1\ninsecure_listen: true\n")
            .unwrap()
            .check_exposure()
            .unwrap();
        let mut c = cfg("source: a.yaml\nhttp_addr: 0.0.0.0:1\n").unwrap();
        c.auth_keys = read_auth_keys(Some(" k1 , ,k2".into())).unwrap();
        assert_eq!(c.auth_keys.len(), 2);
        assert!(!format!("{c:?}").contains("k1"), "keys never shown");
        c.check_exposure().unwrap();
        // mTLS alone is enough (authenticates); the files are read by the check, which names them.
        let c = cfg("source: a.yaml\nhttp_addr: 0.0.0.0:1\ntls_cert: c\ntls_key: k\ntls_client_ca: ca\n").unwrap();
        assert!(c.authenticates());
        let err = c.check_exposure().unwrap_err().to_string();
        assert!(
            err.starts_with("`tls_cert`") && err.contains("reading TLS certificate c"),
            "{err}"
        );
        for (yaml, field) in [
            ("tls_client_ca: ca\n", "tls_client_ca"),
            ("tls_cert: c\n", "tls_key"),
            ("tls_key: k\n", "tls_cert"),
            ("disabled_routes: [authorized_users]\n", "disabled_routes"),
        ] {
            let err = cfg(&format!("source: a.yaml\n{yaml}")).unwrap_err();
            assert!(err.to_string().starts_with(&format!("`{field}`")), "{yaml}: {err}");
        }
        let err = cfg("source: a.yaml\nauth_keys_file: /nonexistent/keys\n")
            .unwrap()
            .check_exposure()
            .unwrap_err();
        assert!(err.to_string().starts_with("`auth_keys_file`"), "{err}");
        assert!(read_auth_keys(Some("a b".into())).is_err());
    }

    #[test]
    fn bad_values_name_the_field() {
        assert!(
            yaml_serde::from_str::<FileConfig>("sourc: x\n")
                .unwrap_err()
                .to_string()
                .contains("sourc")
        );
        let cases = [
            ("source: a.txt\n", "source"),
            ("source: a.yaml\nhttp_addr: localhost\n", "http_addr"),
            ("source: a.yaml\nmax_body_bytes: 0\n", "max_body_bytes"),
            ("source: a.yaml\nsource_protocol: grpc\n", "source_protocol"),
            ("http_addr: 127.0.0.1:1\n", "source"),
            (
                "source: a.yaml\ndecision_log: {output: stdout, sample_rate: 2}\n",
                "decision_log.sample_rate",
            ),
            (
                "source: a.yaml\ndecision_log: {output: stdout, buffer: 0}\n",
                "decision_log.buffer",
            ),
            ("source: https://u:p@h/x\n", "source"),
            ("source: https://h\nsource_protocol: permit\n", "permit_project"),
            ("source: https://h\nupstream_timeout: 0s\n", "upstream_timeout"),
        ];
        for (yaml, field) in cases {
            let err = Config::merge(file(yaml), Path::new(""), &Overrides::default()).unwrap_err();
            assert!(err.to_string().starts_with(&format!("`{field}`")), "{yaml}: {err}");
        }
    }
}
