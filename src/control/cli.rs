//! `permd control` on the command line: run a replica, `migrate`, `keys create|list|revoke`.
//! Settings come from flags, `PERMD_CONTROL_*` variables and an optional YAML file (unknown
//! keys refused); flags and variables win. The database URL, a secret, comes from
//! `--database` / `PERMD_CONTROL_DATABASE` or a file (`--database-file`), and is never logged.

use super::Settings;
use super::auth::Limits;
use super::db::Db;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ControlCommand {
    #[command(subcommand)]
    pub sub: Option<ControlSub>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, clap::Subcommand)]
pub enum ControlSub {
    /// Create or upgrade the database schema, then exit.
    Migrate(DbArgs),
    /// API keys of projects.
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Debug, clap::Subcommand)]
pub enum KeysCommand {
    /// Create a key for a project (and the organisation and project when absent); the key is
    /// printed once, alone on the last line.
    Create {
        #[command(flatten)]
        db: DbArgs,
        #[arg(long)]
        org: String,
        #[arg(long)]
        project: String,
        #[arg(long, default_value = "default")]
        env: String,
    },
    /// List keys (metadata only: id, prefix, project, dates).
    List {
        #[command(flatten)]
        db: DbArgs,
        #[arg(long)]
        org: Option<String>,
    },
    /// Revoke a key by its id (from `keys list`).
    Revoke {
        #[command(flatten)]
        db: DbArgs,
        id: i64,
    },
}

#[derive(Debug, Clone, clap::Args)]
pub struct DbArgs {
    /// PostgreSQL URL, e.g. postgres://permd@127.0.0.1:5432/permd.
    #[arg(long, env = "PERMD_CONTROL_DATABASE", hide_env_values = true)]
    pub database: Option<String>,
    /// A file holding the PostgreSQL URL.
    #[arg(long, env = "PERMD_CONTROL_DATABASE_FILE")]
    pub database_file: Option<PathBuf>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Config file (YAML).
    #[arg(long, env = "PERMD_CONTROL_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub db: DbArgs,
    /// HTTP listen address (default 0.0.0.0:7780).
    #[arg(long, env = "PERMD_CONTROL_HTTP_ADDR")]
    pub http_addr: Option<SocketAddr>,
    /// gRPC listen address (default 0.0.0.0:7781).
    #[arg(long, env = "PERMD_CONTROL_GRPC_ADDR")]
    pub grpc_addr: Option<SocketAddr>,
    /// Do not create or upgrade the schema at start.
    #[arg(long)]
    pub no_migrate: bool,
    /// Requests per hour per key (0: no limit; default 10000).
    #[arg(long, env = "PERMD_CONTROL_RATE_LIMIT_HOUR")]
    pub rate_limit_hour: Option<u32>,
    /// Requests per minute per key, the burst (0: no limit; default 100).
    #[arg(long, env = "PERMD_CONTROL_RATE_LIMIT_MINUTE")]
    pub rate_limit_minute: Option<u32>,
    /// How long batches are kept for delta streams (default 24h).
    #[arg(long, env = "PERMD_CONTROL_RETENTION", value_parser = humantime::parse_duration)]
    pub retention: Option<Duration>,
    /// How often to look for new batches when no notification came (default 1s).
    #[arg(long, env = "PERMD_CONTROL_POLL_INTERVAL", value_parser = humantime::parse_duration)]
    pub poll_interval: Option<Duration>,
    /// Longest silence on a delta stream before an empty line (default 10s).
    #[arg(long, env = "PERMD_CONTROL_HEARTBEAT", value_parser = humantime::parse_duration)]
    pub heartbeat: Option<Duration>,
    /// Largest request body (default 4 MiB).
    #[arg(long, env = "PERMD_CONTROL_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Database connections per replica (default 16).
    #[arg(long, env = "PERMD_CONTROL_POOL_SIZE")]
    pub pool_size: Option<usize>,
    #[arg(long, env = "PERMD_CONTROL_LOG_FORMAT", value_parser = ["text", "json"])]
    pub log_format: Option<String>,
    #[arg(long, env = "PERMD_CONTROL_LOG_LEVEL")]
    pub log_level: Option<String>,
}

/// The config file's keys (all optional), as the flags name them.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    database: Option<String>,
    database_file: Option<PathBuf>,
    http_addr: Option<SocketAddr>,
    grpc_addr: Option<SocketAddr>,
    migrate: Option<bool>,
    rate_limit_hour: Option<u32>,
    rate_limit_minute: Option<u32>,
    #[serde(default, with = "humantime_serde_opt")]
    retention: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    poll_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    heartbeat: Option<Duration>,
    max_body_bytes: Option<usize>,
    pool_size: Option<usize>,
    log_format: Option<String>,
    log_level: Option<String>,
}

mod humantime_serde_opt {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(s) => humantime::parse_duration(&s)
                .map(Some)
                .map_err(|e| serde::de::Error::custom(format!("`{s}` is not a duration: {e}"))),
        }
    }
}

/// Logging settings of a run.
pub struct Logs {
    pub json: bool,
    pub level: String,
}

impl DbArgs {
    /// The URL, from the flag or variable, else the file.
    pub fn url(&self, file_url: Option<String>, file_path: Option<PathBuf>) -> Result<String, String> {
        if let Some(url) = self.database.clone().or(file_url) {
            return Ok(url);
        }
        match self.database_file.clone().or(file_path) {
            Some(path) => std::fs::read_to_string(&path)
                .map(|s| s.trim().to_string())
                .map_err(|e| format!("database_file `{}`: {e}", path.display())),
            None => Err("no database given: pass --database, PERMD_CONTROL_DATABASE or --database-file".to_string()),
        }
    }

    pub fn connect(&self) -> Result<Db, String> {
        let url = self.url(None, None)?;
        Db::connect(&url, 2).map_err(|e| e.to_string())
    }
}

impl RunArgs {
    /// The settings of a run: defaults, then the file, then flags and variables.
    pub fn settings(&self) -> Result<(Settings, Logs), String> {
        let file: File = match &self.config {
            Some(path) => {
                let text = std::fs::read(path).map_err(|e| format!("cannot read config `{}`: {e}", path.display()))?;
                yaml_serde::from_slice(&text).map_err(|e| format!("config `{}`: {e}", path.display()))?
            }
            None => File::default(),
        };
        let d = Settings::default();
        let settings = Settings {
            database: self.db.url(file.database, file.database_file)?,
            http_addr: self.http_addr.or(file.http_addr).unwrap_or(d.http_addr),
            grpc_addr: self.grpc_addr.or(file.grpc_addr).unwrap_or(d.grpc_addr),
            migrate: !self.no_migrate && file.migrate.unwrap_or(true),
            limits: Limits {
                per_hour: self
                    .rate_limit_hour
                    .or(file.rate_limit_hour)
                    .unwrap_or(d.limits.per_hour),
                per_minute: self
                    .rate_limit_minute
                    .or(file.rate_limit_minute)
                    .unwrap_or(d.limits.per_minute),
            },
            retention: self.retention.or(file.retention).unwrap_or(d.retention),
            poll_interval: self.poll_interval.or(file.poll_interval).unwrap_or(d.poll_interval),
            heartbeat: self.heartbeat.or(file.heartbeat).unwrap_or(d.heartbeat),
            max_body_bytes: self.max_body_bytes.or(file.max_body_bytes).unwrap_or(d.max_body_bytes),
            pool_size: self.pool_size.or(file.pool_size).unwrap_or(d.pool_size),
            shutdown_grace: d.shutdown_grace,
        };
        if settings.poll_interval.is_zero() || settings.heartbeat.is_zero() {
            return Err("poll_interval and heartbeat must be greater than zero".into());
        }
        if settings.pool_size == 0 {
            return Err("pool_size must be at least 1".into());
        }
        let logs = Logs {
            json: self.log_format.clone().or(file.log_format).as_deref() == Some("json"),
            level: self
                .log_level
                .clone()
                .or(file.log_level)
                .unwrap_or_else(|| "info".into()),
        };
        Ok((settings, logs))
    }
}

/// `permd control migrate`.
pub async fn migrate(db: &DbArgs) -> Result<(), String> {
    let db = db.connect()?;
    let applied = db.migrate().await.map_err(|e| e.to_string())?;
    if applied.is_empty() {
        println!("schema up to date");
    } else {
        println!("applied migrations {applied:?}");
    }
    Ok(())
}

/// `permd control keys …`.
pub async fn keys(cmd: &KeysCommand) -> Result<(), String> {
    match cmd {
        KeysCommand::Create { db, org, project, env } => {
            for (field, v) in [("--org", org), ("--project", project), ("--env", env)] {
                if v.is_empty() || v.len() > 256 {
                    return Err(format!("{field}: must be 1 to 256 bytes"));
                }
            }
            let db = db.connect()?;
            db.migrate().await.map_err(|e| e.to_string())?;
            let (key, hash, prefix) = super::auth::new_key();
            let id = db
                .create_key(org, project, env, &hash, &prefix)
                .await
                .map_err(|e| e.to_string())?;
            eprintln!("created key {id} ({prefix}…) for {org}/{project}/{env}; it is shown only now:");
            println!("{key}");
        }
        KeysCommand::List { db, org } => {
            let db = db.connect()?;
            let rows = db.list_keys(org.as_deref()).await.map_err(|e| e.to_string())?;
            println!(
                "{:<6} {:<14} {:<40} {:<26} revoked",
                "id", "prefix", "project", "created"
            );
            for r in rows {
                println!(
                    "{:<6} {:<14} {:<40} {:<26} {}",
                    r.id,
                    format!("{}…", r.prefix),
                    format!("{}/{}/{}", r.organisation, r.project, r.env),
                    r.created_at,
                    r.revoked_at.unwrap_or_else(|| "-".into())
                );
            }
        }
        KeysCommand::Revoke { db, id } => {
            let db = db.connect()?;
            if !db.revoke_key(*id).await.map_err(|e| e.to_string())? {
                return Err(format!("no live key with id {id}"));
            }
            println!("revoked key {id}");
        }
    }
    Ok(())
}
