//! The test harness shared by the integration tests: the real permd binary on 127.0.0.1:0,
//! and a raw HTTP/1.1 client so malformed requests can be sent as they are.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

pub mod control;
pub mod dropin;
pub mod pg;

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_permd");

pub fn example() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/example-snapshot.yaml")).unwrap()
}

pub struct Permd {
    pub child: Child,
    pub addr: String,
    /// The admin listener's address, when one was asked for.
    pub admin: Option<String>,
    pub grpc: String,
    _dir: tempfile::TempDir,
    pub snapshot: PathBuf,
    /// Every line permd wrote to stderr so far.
    pub logs: Arc<Mutex<Vec<String>>>,
}

impl Permd {
    /// Starts permd on a snapshot file (written first unless `contents` is None).
    pub fn start(contents: Option<&str>, extra: &[&str]) -> Permd {
        let dir = tempfile::tempdir().unwrap();
        let snapshot = dir.path().join("snapshot.yaml");
        if let Some(c) = contents {
            std::fs::write(&snapshot, c).unwrap();
        }
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--source", &format!("file://{}", snapshot.display())])
            .args(["--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"])
            .args([
                "--poll-interval",
                "50ms",
                "--log-format",
                "json",
                "--config",
                "/dev/null",
            ])
            .args(extra);
        let (child, addr, admin, grpc, logs) = launch(cmd);
        Permd {
            child,
            addr,
            admin,
            grpc,
            _dir: dir,
            snapshot,
            logs,
        }
    }

    /// Starts permd following an upstream at `url`, with extra flags and environment.
    pub fn follow(url: &str, extra: &[&str], env: &[(&str, &str)]) -> Permd {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--source", url])
            .args(["--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"])
            .args(["--log-format", "json", "--config", "/dev/null"])
            .args(extra)
            .env_remove("PERMD_API_KEY")
            .envs(env.iter().copied());
        let (child, addr, admin, grpc, logs) = launch(cmd);
        Permd {
            child,
            addr,
            admin,
            grpc,
            snapshot: dir.path().join("none"),
            _dir: dir,
            logs,
        }
    }

    /// All of stderr so far, one string.
    pub fn stderr(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// `/allowed` for (user, action, resource): (allow, version).
    pub fn allowed(&self, user: &str, action: &str, resource: &str) -> (bool, u64) {
        let (st, v) = self.post(
            "/allowed",
            serde_json::json!({"user": user, "action": action, "resource": resource}),
        );
        assert_eq!(st, 200, "{v}");
        (v["allow"].as_bool().unwrap(), v["version"].as_u64().unwrap())
    }

    /// The active version, if any.
    pub fn version(&self) -> Option<u64> {
        self.get("/v1/status").1["version"].as_u64()
    }

    /// Waits (up to 20 s) for the active version to reach `v`.
    pub fn wait_version(&self, v: u64) {
        let end = Instant::now() + Duration::from_secs(20);
        while Instant::now() < end {
            if self.version().is_some_and(|x| x >= v) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("timed out waiting for version {v}; status {}", self.get("/v1/status").1);
    }

    /// `permd serve` as the README's quick start runs it, from the repository root with the
    /// default config, on a free port.
    pub fn repo_default() -> Permd {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(BIN);
        cmd.current_dir(env!("CARGO_MANIFEST_DIR")).args([
            "serve",
            "--http-addr",
            "127.0.0.1:0",
            "--grpc-addr",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ]);
        let (child, addr, admin, grpc, logs) = launch(cmd);
        let snapshot = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/example-snapshot.yaml");
        Permd {
            child,
            addr,
            admin,
            grpc,
            _dir: dir,
            snapshot,
            logs,
        }
    }

    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, Value) {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nhost: {}\r\nconnection: close\r\ncontent-length: {}\r\n",
            self.addr,
            body.len()
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(body).unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).unwrap();
        let text = String::from_utf8_lossy(&out);
        let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        (status, serde_json::from_str(body).unwrap_or(Value::Null))
    }

    /// `GET /metrics` as samples: `name{labels}` (as printed) → value.
    pub fn metrics(&self) -> std::collections::HashMap<String, f64> {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(s, "GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        samples(out.split_once("\r\n\r\n").map_or("", |(_, b)| b))
    }

    pub fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.request(
            "POST",
            path,
            &[("content-type", "application/json")],
            body.to_string().as_bytes(),
        )
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        self.request("GET", path, &[], b"")
    }

    pub fn wait_for(&self, what: &str, mut ok: impl FnMut(&Permd) -> bool) {
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if ok(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("timed out waiting for {what}");
    }

    pub fn ready(&self) {
        self.wait_for("readiness", |p| p.get("/readyz").0 == 200);
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }
}

/// Spawns permd and reads its address from the JSON log line `http listening`.
#[allow(clippy::type_complexity)]
fn launch(mut cmd: Command) -> (Child, String, Option<String>, String, Arc<Mutex<Vec<String>>>) {
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let logs = Arc::new(Mutex::new(Vec::new()));
    let sink = logs.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line.clone());
            let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
            let message = v["fields"]["message"].as_str().unwrap_or_default();
            if message.ends_with(" listening") {
                let addr = v["fields"]["addr"].as_str().unwrap_or_default().to_string();
                let _ = tx.send((message.to_string(), addr));
            }
        }
    });
    let mut admin = None;
    let mut grpc = String::new();
    loop {
        let (message, addr) = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("permd reports its address");
        match message.as_str() {
            "admin listening" => admin = Some(addr),
            "grpc listening" => grpc = addr,
            "http listening" => return (child, addr, admin, grpc, logs),
            _ => {}
        }
    }
}

impl Drop for Permd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// POSTs JSON to a permd at `addr` with extra headers; (status, body).
/// The samples of a Prometheus text exposition: `name{labels}` (labels as printed) → value.
pub fn samples(text: &str) -> std::collections::HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

pub fn raw_request(addr: &str, path: &str, headers: &[(&str, &str)], body: &Value) -> (u16, Value) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let body = body.to_string();
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body.as_bytes()).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let text = String::from_utf8_lossy(&out);
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

pub fn raw_post(addr: &str, path: &str, body: &Value) -> (u16, Value) {
    raw_request(addr, path, &[], body)
}
