//! The permd binary: parse the command line, read the config, run. Exit 64 on a bad config,
//! before any port is bound.

use clap::Parser;
use permd::cli::{self, Cli, Command};
use permd::config::{Config, LogFormat};
use std::process::ExitCode;

// jemalloc returns the memory of a dropped snapshot document to the system and keeps the
// index's millions of small allocations tighter than glibc's malloc: on the 1M-assignment
// snapshot about half the resident memory and a faster build (bench/README.md).
permd::jemalloc!();

/// EX_USAGE: the configuration is wrong.
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Check(args) => cli::check(&args),
        Command::Validate { file } => cli::validate(&file),
        Command::Snapshot(cmd) => cli::snapshot(&cmd),
        Command::InjectWebhook(opts) => inject_webhook(opts),
        Command::Control(cmd) => control(cmd),
    }
}

fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            None
        }
    }
}

fn control(cmd: permd::control::cli::ControlCommand) -> ExitCode {
    use permd::control::cli::{self as ccli, ControlSub};
    match cmd.sub {
        Some(sub) => {
            let Some(rt) = runtime() else {
                return ExitCode::FAILURE;
            };
            let done = rt.block_on(async {
                match &sub {
                    ControlSub::Migrate(db) => ccli::migrate(db).await,
                    ControlSub::Keys(k) => ccli::keys(k).await,
                }
            });
            match done {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
            }
        }
        None => {
            let (settings, logs) = match cmd.run.settings() {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: bad configuration: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            // The driver logs the server's NOTICEs (e.g. `IF NOT EXISTS` skips) at info.
            let filter = tracing_subscriber::EnvFilter::try_new(format!("{},tokio_postgres=warn", logs.level))
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tokio_postgres=warn"));
            let builder = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr);
            if logs.json {
                builder.json().init();
            } else {
                builder.init();
            }
            let Some(rt) = runtime() else {
                return ExitCode::FAILURE;
            };
            match rt.block_on(permd::control::run(settings, shutdown_signal())) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "permd control stopped");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn init_logs(cfg: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&cfg.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cfg.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn serve(args: cli::ServeArgs) -> ExitCode {
    let cfg = match Config::load(args.config.as_deref(), &args.overrides) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("error: bad configuration: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    init_logs(&cfg);
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(permd::server::run(cfg, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "permd stopped");
            ExitCode::FAILURE
        }
    }
}

fn inject_webhook(opts: permd::inject::Options) -> ExitCode {
    tracing_subscriber::fmt().with_writer(std::io::stderr).init();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(permd::inject::run(opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => {},
        _ = tokio::signal::ctrl_c() => {},
    }
}
