//! A real, throwaway PostgreSQL cluster for the integration tests (never a mock): `initdb` into a
//! temporary directory, the server on a free port of 127.0.0.1 with `trust` authentication for
//! the superuser `permd`, and a database `permd`; see [`Postgres::url`].
//!
//! The server binaries come from `$PERMD_PG_BINDIR`, else `pg_config --bindir`, else the highest
//! `/usr/lib/postgresql/<ver>/bin` (Debian's `postgresql` package, which `.ci/run` installs).
//! `initdb` and `postgres` refuse to run as root, so as root the server runs as the `postgres`
//! system user (else `nobody`) through `setpriv` or `runuser`; otherwise as the current user.
//!
//! Clean-up, even when the test panics: `Drop` stops the server (`pg_ctl stop -m immediate`),
//! kills a postmaster that survived it, then removes the directory. A watchdog process (a shell
//! blocked reading a pipe only this process writes to) does the same if the test process dies
//! without running `Drop` (`abort`, `exit`, a signal).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// Client environment that could redirect or alter the commands run here.
const PG_ENV: &[&str] = &[
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGDATABASE",
    "PGPASSWORD",
    "PGPASSFILE",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGOPTIONS",
    "PGDATA",
    "PGSSLMODE",
    "PGCONNECT_TIMEOUT",
    "PGTARGETSESSIONATTRS",
    "PGCLIENTENCODING",
    "PGTZ",
    "PSQLRC",
];

/// How many fresh ports `start` tries when the one picked was taken before the server bound it.
const PORT_ATTEMPTS: usize = 5;

pub struct Postgres {
    dir: TempDir,
    port: u16,
    bindir: PathBuf,
    /// The user the server runs as, when this process is root.
    user: Option<String>,
    /// `setpriv` or `runuser`, when `user` is set.
    runas: Option<PathBuf>,
    /// `(uid, gid)` of `user`.
    ids: Option<(u32, u32)>,
    /// The running postmaster's pid (from `data/postmaster.pid`), 0 when none.
    pid: AtomicU32,
    watchdog: Option<Child>,
}

impl Postgres {
    /// A fresh cluster with the server's defaults (fsync on) plus the test settings
    /// (`listen_addresses`, `max_connections = 200`, a private socket directory).
    pub fn start() -> Postgres {
        Postgres::start_with(&[])
    }

    /// As [`Postgres::start`], with extra server settings written to `postgresql.conf` before the
    /// first start (and so kept by [`Postgres::start_again`]), e.g. `&[("fsync", "off")]`.
    pub fn start_with(settings: &[(&str, &str)]) -> Postgres {
        let bindir = bindir();
        let (user, runas, ids) = run_as();
        let dir = tempfile::Builder::new().prefix("permd-pg-").tempdir().unwrap();
        let mut pg = Postgres {
            dir,
            port: 0,
            bindir,
            user,
            runas,
            ids,
            pid: AtomicU32::new(0),
            watchdog: None,
        };
        // From here on a panic drops `pg`, which cleans up what exists so far.
        pg.watchdog = pg.spawn_watchdog();
        pg.prepare_dirs();
        pg.initdb(settings);
        let mut last = String::new();
        for _ in 0..PORT_ATTEMPTS {
            pg.port = free_port();
            match pg.try_start() {
                Ok(()) => {
                    pg.create_database();
                    return pg;
                }
                Err((detail, true)) => last = detail,
                Err((detail, false)) => pg.fail(&format!("pg_ctl start on port {} failed", pg.port), &detail),
            }
        }
        pg.fail(
            &format!("no free port after {PORT_ATTEMPTS} attempts (address already in use)"),
            &last,
        )
    }

    /// `postgres://permd@127.0.0.1:PORT/permd`
    pub fn url(&self) -> String {
        format!("postgres://permd@127.0.0.1:{}/permd", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The temporary directory holding everything (`data/`, `sock/`, `postgres.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn bindir(&self) -> &Path {
        &self.bindir
    }

    /// The user the server runs as (`None`: the current user).
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// The running postmaster's pid, if the server is up.
    pub fn postmaster_pid(&self) -> Option<u32> {
        match self.pid.load(Ordering::SeqCst) {
            0 => None,
            pid => Some(pid),
        }
    }

    /// The last `lines` lines of the server log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// `pg_ctl stop -m fast`; returns once the postmaster has exited and the port is free.
    pub fn stop(&self) {
        let out = self.pg_ctl(&["stop", "-m", "fast", "-w", "-t", "30"]);
        if !out.status.success() {
            self.fail("pg_ctl stop -m fast failed", &describe(&out));
        }
        if let Some(pid) = self.postmaster_pid()
            && !wait_exit(pid, Duration::from_secs(10))
        {
            self.fail(&format!("postmaster {pid} still running after pg_ctl stop"), "");
        }
        self.pid.store(0, Ordering::SeqCst);
    }

    /// Starts the stopped server again on the same port and data directory.
    pub fn start_again(&self) {
        if let Err((detail, _)) = self.try_start() {
            self.fail(&format!("pg_ctl start (again) on port {} failed", self.port), &detail);
        }
    }

    /// [`Postgres::stop`] then [`Postgres::start_again`].
    pub fn restart(&self) {
        self.stop();
        self.start_again();
    }

    /// Runs `psql -At -c SQL` as `permd` on database `permd` over TCP and returns its stdout
    /// without the final newline (rows on lines, columns separated by `|`). Panics with psql's
    /// stderr and the server log's tail when psql fails (including any SQL error).
    pub fn psql(&self, sql: &str) -> String {
        self.psql_db("permd", sql)
    }

    /// [`Postgres::psql`] on another database of the cluster.
    pub fn psql_db(&self, db: &str, sql: &str) -> String {
        let conninfo = format!(
            "host=127.0.0.1 port={} user=permd dbname={db} connect_timeout=10",
            self.port
        );
        let psql = self.bindir.join("psql");
        let psql = if psql.exists() { psql } else { PathBuf::from("psql") };
        let mut cmd = Command::new(psql);
        cmd.args([
            "-X",
            "-A",
            "-t",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            &conninfo,
            "-c",
            sql,
        ]);
        clean_env(&mut cmd);
        let out = cmd.output().unwrap();
        if !out.status.success() {
            self.fail(&format!("psql -c {sql:?} failed"), &describe(&out));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        stdout.strip_suffix('\n').unwrap_or(&stdout).to_string()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    fn sock_dir(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    /// Panics with `what`, `detail` and the tail of the server log.
    fn fail(&self, what: &str, detail: &str) -> ! {
        panic!(
            "PostgreSQL test cluster ({}, port {}): {what}\n{detail}\n--- server log ({}), last lines:\n{}",
            self.dir.path().display(),
            self.port,
            self.log_path().display(),
            self.log_tail(40),
        )
    }

    /// A server binary from the bindir, run as the server's user.
    fn server_cmd(&self, prog: &str) -> Command {
        let exe = self.bindir.join(prog);
        let mut cmd = match (&self.runas, &self.user, self.ids) {
            (Some(runas), Some(user), Some((uid, gid))) => {
                let mut cmd = Command::new(runas);
                if runas.ends_with("setpriv") {
                    cmd.args([
                        format!("--reuid={uid}"),
                        format!("--regid={gid}"),
                        "--init-groups".to_string(),
                        "--".to_string(),
                    ]);
                } else {
                    cmd.args(["-u", user, "--"]);
                }
                cmd.arg(exe);
                cmd
            }
            _ => Command::new(exe),
        };
        // The server user may not be able to enter the test's working directory.
        cmd.current_dir(self.dir.path());
        clean_env(&mut cmd);
        cmd
    }

    fn pg_ctl(&self, args: &[&str]) -> Output {
        let mut cmd = self.server_cmd("pg_ctl");
        cmd.arg("-D").arg(self.data_dir()).args(args).stdin(Stdio::null());
        cmd.output().unwrap()
    }

    /// The temporary directory traversable by everyone; `data/`, `sock/` and the log owned by
    /// the server's user.
    fn prepare_dirs(&self) {
        let root = self.dir.path();
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
        let data = self.data_dir();
        let sock = self.sock_dir();
        std::fs::create_dir(&data).unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::create_dir(&sock).unwrap();
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::File::create(self.log_path()).unwrap();
        std::fs::set_permissions(self.log_path(), std::fs::Permissions::from_mode(0o644)).unwrap();
        if let Some((uid, gid)) = self.ids {
            for path in [&data, &sock, &self.log_path()] {
                std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
            }
            // Every directory above must let the server's user through.
            let mut parent = root.parent();
            while let Some(p) = parent {
                let mode = std::fs::metadata(p).map(|m| m.mode()).unwrap_or(0);
                if mode & 0o001 == 0 {
                    self.fail(
                        &format!(
                            "{} is not traversable by {}; point TMPDIR at a directory that is (e.g. /tmp)",
                            p.display(),
                            self.user.as_deref().unwrap_or("?"),
                        ),
                        "",
                    );
                }
                parent = p.parent();
            }
        }
    }

    fn initdb(&self, settings: &[(&str, &str)]) {
        let mut cmd = self.server_cmd("initdb");
        cmd.arg("-D").arg(self.data_dir());
        cmd.args(["-U", "permd", "-A", "trust", "--no-sync", "-E", "UTF8", "--locale=C"]);
        let out = cmd.stdin(Stdio::null()).output().unwrap();
        if !out.status.success() {
            self.fail("initdb failed", &describe(&out));
        }
        if settings.is_empty() {
            return;
        }
        let mut conf = String::from("\n# permd test harness (tests/common/pg.rs)\n");
        for (name, value) in settings {
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.') {
                self.fail(&format!("bad setting name {name:?}"), "");
            }
            conf.push_str(&format!("{name} = '{}'\n", value.replace('\'', "''")));
        }
        std::fs::OpenOptions::new()
            .append(true)
            .open(self.data_dir().join("postgresql.conf"))
            .and_then(|mut f| f.write_all(conf.as_bytes()))
            .unwrap();
    }

    /// `pg_ctl start -w` on `self.port`; `Err` carries pg_ctl's output and whether the server
    /// found the port taken (told by what it logged during this attempt).
    fn try_start(&self) -> Result<(), (String, bool)> {
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c max_connections=200",
            self.port,
            shell_quote(&self.sock_dir().to_string_lossy()),
        );
        let log = self.log_path();
        let logged_before = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        let log = log.to_string_lossy();
        let out = self.pg_ctl(&["-l", &log, "-w", "-t", "30", "-o", &opts, "start"]);
        if !out.status.success() {
            // A postmaster that came up but did not answer in time would outlive the error.
            self.record_pid();
            self.kill_postmaster();
            let logged = std::fs::read(self.log_path()).unwrap_or_default();
            let logged = String::from_utf8_lossy(logged.get(logged_before as usize..).unwrap_or_default());
            return Err((describe(&out), port_taken(&logged)));
        }
        self.record_pid();
        if self.postmaster_pid().is_none() {
            return Err((
                "pg_ctl started the server but data/postmaster.pid has no pid".to_string(),
                false,
            ));
        }
        Ok(())
    }

    fn record_pid(&self) {
        let pid = std::fs::read_to_string(self.data_dir().join("postmaster.pid"))
            .ok()
            .and_then(|s| s.lines().next().and_then(|l| l.trim().parse::<u32>().ok()))
            .unwrap_or(0);
        self.pid.store(pid, Ordering::SeqCst);
    }

    fn create_database(&self) {
        self.psql_db("postgres", "create database permd");
    }

    /// `kill -9` the recorded postmaster if it is still ours and alive; waits for it to exit.
    fn kill_postmaster(&self) {
        let pid = self.pid.swap(0, Ordering::SeqCst);
        if pid == 0 || !is_ours(pid, &self.data_dir()) {
            return;
        }
        let _ = Command::new("sh")
            .args(["-c", "kill -9 \"$1\"", "sh", &pid.to_string()])
            .stderr(Stdio::null())
            .status();
        wait_exit(pid, Duration::from_secs(10));
    }

    /// A shell blocked on `read` from a pipe whose only writer is this process: when this
    /// process dies without dropping `self`, the read returns and the shell kills the postmaster
    /// and removes the directory. Its own process group and ignored INT/TERM/HUP let it outlive
    /// a Ctrl-C or a signal to the test's group.
    fn spawn_watchdog(&self) -> Option<Child> {
        let script = r#"trap '' INT TERM HUP
read -r _ || :
pid=$(head -n 1 "$1/data/postmaster.pid" 2>/dev/null) || pid=
if [ -n "$pid" ] && tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$1/data"; then
    kill -9 "$pid" 2>/dev/null
fi
rm -rf -- "$1"
"#;
        Command::new("sh")
            .args(["-c", script, "permd-pg-watchdog"])
            .arg(self.dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .ok()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // Never panic here: this also runs while a failed test unwinds.
        if self.data_dir().join("postmaster.pid").exists() {
            let _ = self.pg_ctl(&["stop", "-m", "immediate", "-w", "-t", "10"]);
        }
        if self.pid.load(Ordering::SeqCst) == 0 {
            // A start that failed half-way may not have recorded it.
            self.record_pid();
        }
        let pid = self.pid.load(Ordering::SeqCst);
        if pid != 0 && !wait_exit(pid, Duration::from_secs(5)) {
            // pg_ctl failed or timed out: SIGKILL, if the pid is still this cluster's postmaster.
            self.kill_postmaster();
        }
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
        // `self.dir` (TempDir) removes the directory after this.
    }
}

/// The directory with `initdb`, `pg_ctl` and `postgres`.
fn bindir() -> PathBuf {
    let has_server = |d: &Path| ["initdb", "pg_ctl", "postgres"].iter().all(|b| d.join(b).is_file());
    if let Some(dir) = std::env::var_os("PERMD_PG_BINDIR") {
        let dir = PathBuf::from(dir);
        if !has_server(&dir) {
            panic!(
                "PERMD_PG_BINDIR={} has no initdb, pg_ctl and postgres: PostgreSQL server binaries not found",
                dir.display()
            );
        }
        return dir;
    }
    // Debian's pg_config (libpq-dev) may answer /usr/bin, which has no server binaries.
    if let Ok(out) = Command::new("pg_config").arg("--bindir").stderr(Stdio::null()).output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if has_server(&dir) {
            return dir;
        }
    }
    let mut found: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e
                .file_name()
                .to_string_lossy()
                .split('.')
                .map(|p| p.parse::<u32>().ok())
                .collect::<Option<Vec<_>>>()?;
            let bin = e.path().join("bin");
            has_server(&bin).then_some((version, bin))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, dir)) => dir,
        None => panic!(
            "PostgreSQL server binaries not found: install Debian's `postgresql` package (.ci/run does), \
             or set PERMD_PG_BINDIR to the directory holding initdb, pg_ctl and postgres"
        ),
    }
}

/// As root: the user to run the server as (`postgres`, else `nobody`), the tool to switch to it
/// (`setpriv`, else `runuser`) and its ids. Not root: nothing, the server runs as this user.
fn run_as() -> (Option<String>, Option<PathBuf>, Option<(u32, u32)>) {
    let euid = std::fs::metadata("/proc/self").map(|m| m.uid()).ok().or_else(|| {
        let out = Command::new("id").arg("-u").output().ok()?;
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    });
    if euid != Some(0) {
        return (None, None, None);
    }
    let ids = |user: &str| -> Option<(u32, u32)> {
        let id = |flag: &str| -> Option<u32> {
            let out = Command::new("id")
                .args([flag, user])
                .stderr(Stdio::null())
                .output()
                .ok()?;
            if !out.status.success() {
                return None;
            }
            String::from_utf8_lossy(&out.stdout).trim().parse().ok()
        };
        Some((id("-u")?, id("-g")?))
    };
    let Some((user, ids)) = ["postgres", "nobody"]
        .iter()
        .find_map(|u| Some((u.to_string(), ids(u)?)))
    else {
        panic!("running as root, and neither the `postgres` nor the `nobody` user exists to run PostgreSQL as");
    };
    let runas = ["setpriv", "runuser"].iter().find_map(|tool| {
        ["/usr/bin", "/usr/sbin", "/bin", "/sbin"]
            .iter()
            .map(|d| Path::new(d).join(tool))
            .find(|p| p.is_file())
    });
    let Some(runas) = runas else {
        panic!(
            "running as root, and neither `setpriv` nor `runuser` (util-linux) is installed to run PostgreSQL as {user}"
        );
    };
    (Some(user), Some(runas), Some(ids))
}

fn clean_env(cmd: &mut Command) {
    for var in PG_ENV {
        cmd.env_remove(var);
    }
    // English messages, so a port collision can be recognised in the log.
    cmd.env("LC_ALL", "C").env("LANG", "C");
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn port_taken(output: &str) -> bool {
    output.contains("Address already in use") || output.contains("could not bind IPv4 address")
}

fn describe(out: &Output) -> String {
    format!(
        "exit: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim_end(),
        String::from_utf8_lossy(&out.stderr).trim_end(),
    )
}

/// Single-quoted for `sh` (pg_ctl hands `-o` to the shell).
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Whether `pid` is alive (not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Whether `pid` is alive and a postmaster of `data` (guards against a recycled pid).
fn is_ours(pid: u32, data: &Path) -> bool {
    alive(pid)
        && std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| {
                String::from_utf8_lossy(&c)
                    .replace('\0', " ")
                    .contains(&*data.to_string_lossy())
            })
            .unwrap_or(false)
}

/// Waits up to `limit` for `pid` to exit; whether it did.
fn wait_exit(pid: u32, limit: Duration) -> bool {
    let end = Instant::now() + limit;
    while alive(pid) {
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}
