//! The control plane for integration tests: `permd control` (the real binary) on a throwaway
//! PostgreSQL cluster ([`super::pg::Postgres`]), listening on 127.0.0.1:0, and its CLI.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use super::pg::Postgres;
use super::{BIN, launch};
use permd::model::DeltaBatch;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Control {
    pub child: Child,
    pub addr: String,
    /// The gRPC listener's address.
    pub grpc: String,
    pub logs: Arc<Mutex<Vec<String>>>,
}

/// `permd control keys create`: the new key (the last line of stdout).
pub fn create_key(pg: &Postgres, org: &str, project: &str, env: &str) -> String {
    let out = Command::new(BIN)
        .args([
            "control",
            "keys",
            "create",
            "--org",
            org,
            "--project",
            project,
            "--env",
            env,
        ])
        .env("PERMD_CONTROL_DATABASE", pg.url())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "keys create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    stdout.lines().last().unwrap().trim().to_string()
}

/// Runs `permd control <args>` to completion: (exit code, stdout, stderr).
pub fn cli(pg: &Postgres, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .arg("control")
        .args(args)
        .env("PERMD_CONTROL_DATABASE", pg.url())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

impl Control {
    /// A replica on `pg` with no rate limits (unless `extra` sets them), polling every 200 ms.
    pub fn start(pg: &Postgres, extra: &[&str]) -> Control {
        Control::start_url(&pg.url(), extra)
    }

    pub fn start_url(url: &str, extra: &[&str]) -> Control {
        let mut cmd = Command::new(BIN);
        cmd.args([
            "control",
            "--http-addr",
            "127.0.0.1:0",
            "--grpc-addr",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--poll-interval",
            "200ms",
        ]);
        for limit in ["--rate-limit-hour", "--rate-limit-minute"] {
            if !extra.contains(&limit) {
                cmd.args([limit, "0"]);
            }
        }
        cmd.args(extra).env("PERMD_CONTROL_DATABASE", url);
        let (child, addr, _, grpc, logs) = launch(cmd);
        Control {
            child,
            addr,
            grpc,
            logs,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn stderr(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// One request: (status, headers as lowercase `name: value` lines, body bytes).
    pub fn raw(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String, Vec<u8>) {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
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
        let _ = s.write_all(body);
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        let split = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(out.len());
        let head = String::from_utf8_lossy(&out[..split]).to_ascii_lowercase();
        let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
        let mut body = out.get(split + 4..).unwrap_or_default().to_vec();
        if head.contains("transfer-encoding: chunked") {
            body = dechunk(&body);
        }
        (status, head, body)
    }

    /// A JSON request with a key: (status, JSON body, the `x-permd-version` header if any).
    pub fn call(&self, key: &str, method: &str, path: &str, body: Option<&Value>) -> (u16, Value, Option<u64>) {
        let auth = format!("Bearer {key}");
        let bytes = body.map(|b| b.to_string()).unwrap_or_default();
        let mut headers = vec![("authorization", auth.as_str())];
        if body.is_some() {
            headers.push(("content-type", "application/json"));
        }
        let (status, head, body) = self.raw(method, path, &headers, bytes.as_bytes());
        let version = head
            .lines()
            .find_map(|l| l.strip_prefix("x-permd-version: "))
            .and_then(|v| v.trim().parse().ok());
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null), version)
    }

    /// `POST /v1/batches` with `ops`: (status, body, version header).
    pub fn batch(&self, key: &str, ops: Value) -> (u16, Value, Option<u64>) {
        self.call(key, "POST", "/v1/batches", Some(&serde_json::json!({ "ops": ops })))
    }

    /// The project's snapshot as JSON.
    pub fn snapshot(&self, key: &str) -> Value {
        let (status, body, _) = self.call(key, "GET", "/v1/snapshot", None);
        assert_eq!(status, 200, "{body}");
        body
    }

    /// `GET /metrics` as samples.
    pub fn metrics(&self) -> std::collections::HashMap<String, f64> {
        let (status, _, body) = self.raw("GET", "/metrics", &[], b"");
        assert_eq!(status, 200);
        super::samples(&String::from_utf8_lossy(&body))
    }
}

/// The batches of `GET /v1/deltas?since=` up to version `upto`, read from the live stream.
pub fn deltas(ctl: &Control, key: &str, since: u64, upto: u64) -> Vec<DeltaBatch> {
    let mut s = TcpStream::connect(&ctl.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    write!(
        s,
        "GET /v1/deltas?since={since} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\n\r\n"
    )
    .unwrap();
    let end = Instant::now() + Duration::from_secs(20);
    let mut raw = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        let batches = parse_stream(&raw);
        if batches.last().is_some_and(|b| b.to_version >= upto) || since >= upto {
            return batches;
        }
        assert!(
            Instant::now() < end,
            "stream did not reach {upto}: {}",
            String::from_utf8_lossy(&raw)
        );
    }
    let batches = parse_stream(&raw);
    assert!(
        batches.last().is_some_and(|b| b.to_version >= upto),
        "stream ended early"
    );
    batches
}

/// The complete lines of a chunked NDJSON response so far.
fn parse_stream(raw: &[u8]) -> Vec<DeltaBatch> {
    let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Vec::new();
    };
    let body = dechunk(&raw[split + 4..]);
    let text = String::from_utf8_lossy(&body);
    let complete = match text.rfind('\n') {
        Some(i) => &text[..i],
        None => "",
    };
    complete
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| DeltaBatch::from_json(l.as_bytes()).unwrap())
        .collect()
}

/// Decodes a chunked body (the whole of it, as read until the connection closed).
pub fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size = usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16).unwrap_or(0);
        if size == 0 || b.len() < eol + 2 + size {
            out.extend_from_slice(b.get(eol + 2..).map(|r| &r[..r.len().min(size)]).unwrap_or_default());
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = b.get(eol + 2 + size + 2..).unwrap_or_default();
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
