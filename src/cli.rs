//! The command line (clap): `serve`, `check`, `validate`, `snapshot convert|stats|generate`.
//! Each command returns its exit code; `main` only parses and dispatches.

use crate::config::Overrides;
use crate::index::{Index, Query, Subject};
use crate::model::{Encoding, Snapshot, generate};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

#[derive(Debug, Parser)]
#[command(name = "permd", version, about = "Sidecar policy decision point")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
// Parsed once at start; the size of `serve`'s flags does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Run the sidecar (config file, PERMD_* environment, flags; flags win).
    Serve(Box<ServeArgs>),
    /// One decision from a snapshot file or a running permd; exit 0 allow, 1 deny, 2 error.
    Check(CheckArgs),
    /// Parse and validate a snapshot document; print what is rejected or ignored.
    Validate { file: PathBuf },
    /// Snapshot tools.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Serve the Kubernetes mutating admission webhook that injects the permd sidecar.
    InjectWebhook(crate::inject::Options),
    /// The control plane on PostgreSQL: run a replica, `migrate`, `keys create|list|revoke`.
    Control(crate::control::cli::ControlCommand),
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Config file (YAML); default config/permd.yaml when it exists.
    #[arg(long, env = "PERMD_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub overrides: Overrides,
}

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Snapshot document to decide from.
    #[arg(long, conflicts_with = "url", required_unless_present = "url")]
    pub snapshot: Option<PathBuf>,
    /// A running permd to ask, e.g. http://127.0.0.1:7766 (its bearer key, if it asks for
    /// one, from PERMD_CLIENT_KEY).
    #[arg(long)]
    pub url: Option<String>,
    #[arg(long, required_unless_present = "role", conflicts_with = "role")]
    pub user: Option<String>,
    /// Check as a role subject (perm/v1 role_id) instead of a user.
    #[arg(long)]
    pub role: Option<String>,
    #[arg(long)]
    pub action: String,
    /// `type:key`, or a bare `type` for a type-level check.
    #[arg(long)]
    pub resource: String,
    /// The org; absent: the instance's org, else `default`.
    #[arg(long)]
    pub tenant: Option<String>,
    /// perm/v1 group_type: check at the node (group_type, key).
    #[arg(long)]
    pub group_type: Option<String>,
    /// Print the explanation too.
    #[arg(long)]
    pub explain: bool,
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Convert between YAML, JSON and MessagePack (by file extension).
    Convert { input: PathBuf, output: PathBuf },
    /// Counts, sizes, build time and ignored items of a snapshot.
    Stats { file: PathBuf },
    /// Write a generated snapshot of the given size (deterministic for a seed).
    Generate {
        #[arg(long, default_value_t = 100_000)]
        users: usize,
        #[arg(long, default_value_t = 1_000_000)]
        assignments: usize,
        #[arg(long, default_value_t = 100_000)]
        resources: usize,
        #[arg(long, default_value_t = 100)]
        orgs: usize,
        #[arg(long, default_value_t = 8)]
        depth: usize,
        #[arg(long, default_value_t = 1_000)]
        grants: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// How assignments fall on users: `even` (about the same number each) or `tail`
        /// (most users hold a few, a long tail of heavy users holds many).
        #[arg(long, default_value = "even")]
        shape: generate::Shape,
        /// Output file; the extension picks the encoding.
        #[arg(long)]
        out: PathBuf,
    },
}

fn encoding(path: &Path) -> Result<Encoding, String> {
    Encoding::from_path(&path.to_string_lossy()).ok_or_else(|| {
        format!(
            "`{}`: the extension must be .yaml, .yml, .json, .msgpack or .mpk",
            path.display()
        )
    })
}

/// Reads and validates a snapshot file.
pub fn read_snapshot(path: &Path) -> Result<Snapshot, String> {
    let enc = encoding(path)?;
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    Snapshot::load(&bytes, enc).map_err(|e| format!("`{}` rejected: {e}", path.display()))
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {msg}");
    ExitCode::from(2)
}

pub fn validate(file: &Path) -> ExitCode {
    let snapshot = match read_snapshot(file) {
        Ok(s) => s,
        Err(e) => {
            println!("rejected: {e}");
            return ExitCode::from(1);
        }
    };
    let ix = Index::build(&snapshot);
    let ignored = ix.ignored();
    println!("valid: version {}", ix.version());
    for (kind, n) in ix.counts_by_kind() {
        println!("  {:<16} {n}", kind.as_str());
    }
    println!("ignored items: {}", ignored.len());
    for i in ignored.iter() {
        println!("  ignored {} {}: {}", i.kind, i.item, i.reason);
    }
    ExitCode::SUCCESS
}

pub fn check(args: &CheckArgs) -> ExitCode {
    let (resource_type, key) = match args.resource.split_once(':') {
        Some((t, k)) => (t, (!k.is_empty()).then_some(k)),
        None => (args.resource.as_str(), None),
    };
    let subject = match (&args.user, &args.role) {
        (Some(u), _) => Subject::User(u),
        (None, Some(r)) => Subject::Role(r),
        (None, None) => return fail("one of --user or --role is required"),
    };
    let q = Query {
        subject,
        action: &args.action,
        resource_type,
        resource_key: key,
        org: args.tenant.as_deref(),
        group_type: args.group_type.as_deref(),
        request: None,
    };
    if let Some(url) = &args.url {
        return remote_check(url, &q, args.explain);
    }
    let Some(path) = &args.snapshot else {
        return fail("one of --snapshot or --url is required");
    };
    let ix = match read_snapshot(path) {
        Ok(s) => Index::build(&s),
        Err(e) => return fail(e),
    };
    let d = ix.decide(&q);
    println!(
        "{} {} version={}",
        if d.allow { "allow" } else { "deny" },
        d.reason.as_str(),
        d.version
    );
    if args.explain {
        println!(
            "{}",
            serde_json::to_string_pretty(&ix.explain(&q, &d)).unwrap_or_default()
        );
    }
    if d.allow { ExitCode::SUCCESS } else { ExitCode::from(1) }
}

/// Asks a running permd through `/v1/enforce`, which carries every field of a check.
fn remote_check(url: &str, q: &Query<'_>, explain: bool) -> ExitCode {
    let (user_id, role_id) = match q.subject {
        Subject::User(u) => (u, ""),
        Subject::Role(r) => ("", r),
    };
    let body = serde_json::json!({
        "user_id": user_id, "role_id": role_id, "act": q.action, "res_type": q.resource_type,
        "res_id": q.resource_key.unwrap_or(""), "org_id": q.org.unwrap_or(""),
        "group_type": q.group_type.unwrap_or(""), "explain": explain,
    });
    let target = format!("{}/v1/enforce", url.trim_end_matches('/'));
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(e),
    };
    // A permd that asks for keys: the key from the environment only (never a flag, where `ps`
    // would show it).
    let key = std::env::var("PERMD_CLIENT_KEY").ok().filter(|k| !k.is_empty());
    let answer = rt.block_on(crate::client::post_json(
        &target,
        body.to_string().into_bytes(),
        key.as_deref(),
    ));
    let (status, text) = match answer {
        Ok(a) => a,
        Err(e) => return fail(format!("{target}: {e}")),
    };
    let v: serde_json::Value = serde_json::from_slice(&text).unwrap_or_default();
    if status != 200 {
        return fail(format!(
            "{target} answered {status}: {}",
            String::from_utf8_lossy(&text)
        ));
    }
    let ok = v.get("ok").and_then(|o| o.as_bool()).unwrap_or(false);
    println!(
        "{} {} version={}",
        if ok { "allow" } else { "deny" },
        v.get("code").and_then(|c| c.as_str()).unwrap_or(""),
        v.get("version").map(|v| v.to_string()).unwrap_or_default()
    );
    if explain && let Some(d) = v.get("debug") {
        println!("{}", serde_json::to_string_pretty(d).unwrap_or_default());
    }
    if ok { ExitCode::SUCCESS } else { ExitCode::from(1) }
}

pub fn snapshot(cmd: &SnapshotCommand) -> ExitCode {
    match cmd {
        SnapshotCommand::Convert { input, output } => {
            let result = read_snapshot(input).and_then(|s| {
                let bytes = s.encode(encoding(output)?).map_err(|e| e.to_string())?;
                std::fs::write(output, bytes).map_err(|e| format!("cannot write `{}`: {e}", output.display()))
            });
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(e),
            }
        }
        SnapshotCommand::Stats { file } => {
            let started = Instant::now();
            let s = match read_snapshot(file) {
                Ok(s) => s,
                Err(e) => return fail(e),
            };
            let parsed = started.elapsed();
            let started = Instant::now();
            let ix = Index::build(&s);
            let built = started.elapsed();
            let size = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
            println!("file: {} ({size} bytes)", file.display());
            println!("version: {}", ix.version());
            println!(
                "decode+validate: {:.3}s  index build: {:.3}s",
                parsed.as_secs_f64(),
                built.as_secs_f64()
            );
            for (kind, n) in ix.counts_by_kind() {
                println!("  {:<16} {n}", kind.as_str());
            }
            println!("ignored items: {}", ix.ignored().len());
            ExitCode::SUCCESS
        }
        SnapshotCommand::Generate {
            users,
            assignments,
            resources,
            orgs,
            depth,
            grants,
            seed,
            shape,
            out,
        } => {
            let p = generate::Params {
                users: *users,
                assignments: *assignments,
                resources: *resources,
                orgs: *orgs,
                depth: *depth,
                grants: *grants,
                seed: *seed,
                shape: *shape,
            };
            let s = generate::generate(&p);
            let result = encoding(out).and_then(|enc| {
                let bytes = s.encode(enc).map_err(|e| e.to_string())?;
                std::fs::write(out, bytes).map_err(|e| format!("cannot write `{}`: {e}", out.display()))
            });
            match result {
                Ok(()) => {
                    println!(
                        "wrote {}: {} users, {} assignments, {} resources, {} orgs",
                        out.display(),
                        users,
                        s.role_assignments.len(),
                        s.resources.len(),
                        s.orgs.len()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
    }
}
