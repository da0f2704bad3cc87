//! The test harness shared by the integration tests: the real permd binary on 127.0.0.1:0,
//! and a raw HTTP/1.1 client so malformed requests can be sent as they are.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
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
        let (child, addr, admin, grpc) = launch(cmd);
        Permd {
            child,
            addr,
            admin,
            grpc,
            _dir: dir,
            snapshot,
        }
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
        let (child, addr, admin, grpc) = launch(cmd);
        let snapshot = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/example-snapshot.yaml");
        Permd {
            child,
            addr,
            admin,
            grpc,
            _dir: dir,
            snapshot,
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
fn launch(mut cmd: Command) -> (Child, String, Option<String>, String) {
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
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
            "http listening" => return (child, addr, admin, grpc),
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
