//! A real nginx (Debian's package) in front of a tiny upstream, asking the real permd with
//! `auth_request`, configured by examples/nginx/permd.conf itself (ports replaced): allowed
//! requests reach the upstream (with permd's reason passed on), denied ones get 403 and never
//! reach it, a request without a user gets 401, and with permd down nginx answers 500.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::Permd;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn nginx_binary() -> Option<PathBuf> {
    let candidates = [PathBuf::from("/usr/sbin/nginx")];
    if let Some(p) = candidates.into_iter().find(|p| p.exists()) {
        return Some(p);
    }
    let out = Command::new("sh").args(["-c", "command -v nginx"]).output().ok()?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (!path.is_empty()).then(|| PathBuf::from(path))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// An upstream answering 200 with the request head it got as its body.
struct Upstream {
    addr: String,
    hits: Arc<AtomicUsize>,
    heads: Arc<Mutex<Vec<String>>>,
}

fn upstream() -> Upstream {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let hits = Arc::new(AtomicUsize::new(0));
    let heads = Arc::new(Mutex::new(Vec::new()));
    let (h, seen) = (hits.clone(), heads.clone());
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut s) = conn else { continue };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let head = String::from_utf8_lossy(&buf).into_owned();
            h.fetch_add(1, Ordering::SeqCst);
            seen.lock().unwrap().push(head.clone());
            let body = format!("upstream saw:\n{head}");
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    Upstream { addr, hits, heads }
}

struct Nginx {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_nginx(bin: &Path, permd: &str, upstream: &str) -> Nginx {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let example =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/nginx/permd.conf")).unwrap();
    for needle in ["127.0.0.1:7766", "127.0.0.1:8080", "listen 127.0.0.1:8000;"] {
        assert!(example.contains(needle), "the example has `{needle}`");
    }
    let site = example
        .replace("127.0.0.1:7766", permd)
        .replace("127.0.0.1:8080", upstream)
        .replace("listen 127.0.0.1:8000;", &format!("listen 127.0.0.1:{port};"));
    let d = dir.path().display();
    let conf = format!(
        "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
         events {{ worker_connections 256; }}\n\
         http {{\n access_log off;\n client_body_temp_path {d}/body;\n proxy_temp_path {d}/proxy;\n\
          fastcgi_temp_path {d}/fastcgi;\n uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n\
          {site}\n}}\n"
    );
    std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
    let child = Command::new(bin)
        .args([
            "-p",
            &d.to_string(),
            "-e",
            &format!("{d}/error.log"),
            "-c",
            &format!("{d}/nginx.conf"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < end,
            "nginx did not listen: {}",
            std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Nginx { child, port, _dir: dir }
}

/// (status, body) of one request through nginx.
fn get(port: u16, method: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nhost: app\r\nconnection: close\r\ncontent-length: 0\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text)
}

#[test]
fn nginx_auth_request_in_front_of_an_upstream() {
    let Some(bin) = nginx_binary() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "nginx is not installed; .ci/run installs Debian's nginx package"
        );
        eprintln!("SKIPPED: nginx is not installed here (apt-get install nginx); CI installs it");
        return;
    };
    let permd = Permd::start(Some(&common::dropin::snapshot()), &["--proxy-default-tenant", "acme"]);
    permd.ready();
    let up = upstream();
    let nginx = start_nginx(&bin, &permd.addr, &up.addr);

    // Allowed: reaches the upstream, with permd's reason and version passed on.
    let (st, body) = get(nginx.port, "GET", "/documents/photo?x=1", &[("x-user-id", "bob")]);
    assert_eq!(st, 200, "{body}");
    assert!(body.contains("GET /documents/photo?x=1 "), "{body}");
    let lower = body.to_ascii_lowercase();
    assert!(lower.contains("x-permd-reason: resource_role"), "{body}");
    assert!(lower.contains("x-permd-version: 42"), "{body}");
    assert_eq!(
        get(nginx.port, "PUT", "/documents/new", &[("x-user-id", "alice")]).0,
        200
    );
    assert_eq!(
        get(nginx.port, "GET", "/cameras/cam1/play", &[("x-user-id", "carol")]).0,
        200
    );
    let reached = up.hits.load(Ordering::SeqCst);
    assert_eq!(reached, 3);

    // Denied: 403, and the upstream never sees them.
    for (method, path, user) in [
        ("PUT", "/documents/photo", "bob"),
        ("DELETE", "/documents/photo", "alice"),
        ("POST", "/cameras/cam1/export", "carol"),
        ("GET", "/not/mapped", "root"),
        ("PUT", "/documents/new", "alice-typo"),
    ] {
        let (st, body) = get(nginx.port, method, path, &[("x-user-id", user)]);
        assert_eq!(st, 403, "{method} {path} as {user}: {body}");
    }
    // A different tenant than the default: alice holds nothing in globex.
    let (st, _) = get(
        nginx.port,
        "PUT",
        "/documents/new",
        &[("x-user-id", "alice"), ("x-tenant-id", "globex")],
    );
    assert_eq!(st, 403);
    // No user: 401.
    assert_eq!(get(nginx.port, "GET", "/documents/photo", &[]).0, 401);
    assert_eq!(
        up.hits.load(Ordering::SeqCst),
        reached,
        "denied requests never reach the upstream"
    );

    // permd down: nginx fails closed with 500.
    drop(permd);
    for _ in 0..3 {
        let (st, body) = get(nginx.port, "GET", "/documents/photo", &[("x-user-id", "bob")]);
        assert_eq!(st, 500, "{body}");
    }
    assert_eq!(up.hits.load(Ordering::SeqCst), reached);
    assert!(
        up.heads
            .lock()
            .unwrap()
            .iter()
            .all(|h| !h.contains("PUT /documents/photo"))
    );
}
