//! The PostgreSQL test harness (tests/common/pg.rs) itself: a real cluster answers queries,
//! survives a restart with its data, reports failures with the server log, and leaves nothing
//! behind (no directory, no postmaster, no bound port) after a drop, a panic, or the test
//! process exiting without running `Drop`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::pg::{Postgres, alive};
use std::net::TcpListener;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// What must be gone once a cluster is cleaned up.
struct Trace {
    dir: PathBuf,
    port: u16,
    pid: u32,
}

impl Trace {
    fn of(pg: &Postgres) -> Trace {
        Trace {
            dir: pg.dir().to_path_buf(),
            port: pg.port(),
            pid: pg.postmaster_pid().expect("server running"),
        }
    }

    /// Within `limit`: the postmaster has exited, the directory is removed, the port binds.
    fn assert_gone(&self, limit: Duration) {
        let end = Instant::now() + limit;
        loop {
            let running = alive(self.pid);
            let dir = self.dir.exists();
            let bound = TcpListener::bind(("127.0.0.1", self.port)).is_err();
            if !running && !dir && !bound {
                return;
            }
            if Instant::now() >= end {
                panic!(
                    "left behind: postmaster {} alive: {running}, {} exists: {dir}, port {} taken: {bound}",
                    self.pid,
                    self.dir.display(),
                    self.port
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn query_restart_and_clean_up_on_drop() {
    let pg = Postgres::start();
    assert_eq!(pg.url(), format!("postgres://permd@127.0.0.1:{}/permd", pg.port()));
    assert_eq!(pg.psql("select 1+1"), "2");
    assert_eq!(pg.psql("select current_user, current_database()"), "permd|permd");
    assert_eq!(pg.psql("show fsync"), "on");
    assert_eq!(pg.psql("show max_connections"), "200");
    assert_eq!(pg.psql("show server_encoding"), "UTF8");
    if let Some(user) = pg.user() {
        // As root the server runs as another user.
        assert_ne!(user, "root");
    }
    pg.psql("create table t (id int primary key, v text); insert into t values (1, 'a'), (2, 'b')");

    let before = pg.postmaster_pid().unwrap();
    pg.restart();
    let after = pg.postmaster_pid().unwrap();
    assert_ne!(before, after, "a new postmaster after restart");
    assert!(!alive(before));
    assert_eq!(pg.psql("select 1+1"), "2");
    assert_eq!(
        pg.psql("select id, v from t order by id"),
        "1|a\n2|b",
        "data survives the restart"
    );

    pg.stop();
    assert!(pg.postmaster_pid().is_none());
    assert!(!alive(after));
    pg.start_again();
    assert_eq!(pg.psql("select count(*) from t"), "2");

    let trace = Trace::of(&pg);
    assert!(trace.dir.join("data").is_dir());
    drop(pg);
    // Drop waits for the postmaster, so everything is gone at once.
    trace.assert_gone(Duration::ZERO);
}

#[test]
fn extra_settings() {
    let pg = Postgres::start_with(&[("fsync", "off"), ("application_name", "it's permd")]);
    assert_eq!(pg.psql("show fsync"), "off");
    assert_eq!(pg.psql("show application_name"), "psql", "psql sets its own");
    pg.restart();
    assert_eq!(pg.psql("show fsync"), "off", "kept across restarts");
}

#[test]
fn failures_carry_the_server_log() {
    let pg = Postgres::start();
    let err = catch_unwind(AssertUnwindSafe(|| pg.psql("select no_such_column"))).unwrap_err();
    let msg = err.downcast_ref::<String>().unwrap();
    assert!(msg.contains(r#"column "no_such_column" does not exist"#), "{msg}");
    assert!(msg.contains("server log"), "{msg}");
    assert!(msg.contains("database system is ready to accept connections"), "{msg}");
}

#[test]
fn clean_up_when_the_test_panics() {
    let mut trace = None;
    let result = catch_unwind(AssertUnwindSafe(|| {
        let pg = Postgres::start();
        trace = Some(Trace::of(&pg));
        panic!("the test fails while the cluster runs");
    }));
    assert!(result.is_err());
    trace.unwrap().assert_gone(Duration::ZERO);
}

const CHILD_ENV: &str = "PERMD_PG_HARNESS_CHILD";

/// Run by `clean_up_when_the_process_dies` in a child process: starts a cluster, prints where
/// it is, and exits without running `Drop`.
#[test]
#[ignore = "run as a child process by clean_up_when_the_process_dies"]
fn exits_without_drop() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let pg = Postgres::start();
    let t = Trace::of(&pg);
    // After the harness's "test exits_without_drop ... " on the same line.
    println!("CLUSTER {} {} {}", t.pid, t.port, t.dir.display());
    std::process::exit(3);
}

#[test]
fn clean_up_when_the_process_dies() {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "exits_without_drop",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("CLUSTER ").map(|(_, rest)| rest))
        .expect("the child's cluster");
    let mut parts = line.splitn(3, ' ');
    let trace = Trace {
        pid: parts.next().unwrap().parse().unwrap(),
        port: parts.next().unwrap().parse().unwrap(),
        dir: Path::new(parts.next().unwrap()).to_path_buf(),
    };
    // The watchdog notices the closed pipe, kills the postmaster and removes the directory.
    trace.assert_gone(Duration::from_secs(10));
}
