//! Light-load generator for bench/dropin.sh: the same checks asked as Envoy ext_authz `Check`
//! (gRPC, through the URL mapping rules) or as Permit's `POST /allowed` (HTTP/1.1 keep-alive),
//! from CONNECTIONS closed-loop callers, each on its own connection, for DURATION seconds after
//! a warm-up. Prints the rate, latency percentiles and the generator's own CPU time (so a
//! reader can see what the client cost on the same machine).
//!
//! Usage: `authz_load envoy|allowed ADDR [CONNECTIONS=4] [DURATION_S=10] [WARMUP_S=2]`
//! Prints `RESULT mode=… rps=… p50_us=… p99_us=… max_us=… requests=… errors=… allow=… deny=… client_cpu_s=…`

use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request as AttrRequest};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// (user, method, path) and the `/allowed` body of the check the URL rules map it to
/// (bench/dropin-rules.yaml over config/example-snapshot.yaml): allows and denies mixed.
const CHECKS: [(&str, &str, &str, &str); 8] = [
    (
        "bob",
        "GET",
        "/documents/photo",
        r#"{"user":"bob","action":"read","resource":"document:photo"}"#,
    ),
    (
        "bob",
        "PUT",
        "/documents/photo",
        r#"{"user":"bob","action":"write","resource":"document:photo"}"#,
    ),
    (
        "alice",
        "PUT",
        "/documents/plan",
        r#"{"user":"alice","action":"write","resource":"document:plan"}"#,
    ),
    (
        "alice",
        "DELETE",
        "/documents/plan",
        r#"{"user":"alice","action":"delete","resource":"document:plan"}"#,
    ),
    (
        "carol",
        "GET",
        "/cameras/cam1/play",
        r#"{"user":"carol","action":"play","resource":"camera:cam1"}"#,
    ),
    (
        "carol",
        "GET",
        "/cameras/cam1/export",
        r#"{"user":"carol","action":"export","resource":"camera:cam1"}"#,
    ),
    (
        "root",
        "DELETE",
        "/documents/report",
        r#"{"user":"root","action":"delete","resource":"document:report"}"#,
    ),
    (
        "bob",
        "GET",
        "/documents/report?x=1",
        r#"{"user":"bob","action":"read","resource":"document:report"}"#,
    ),
];

#[derive(Default)]
struct Tally {
    lat_us: Vec<u32>,
    errors: u64,
    allow: u64,
    deny: u64,
}

fn check_request(user: &str, method: &str, path: &str) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(AttrRequest {
                http: Some(HttpRequest {
                    method: method.into(),
                    path: path.into(),
                    host: "app".into(),
                    headers: HashMap::from([("x-user-id".to_string(), user.to_string())]),
                    ..HttpRequest::default()
                }),
                ..AttrRequest::default()
            }),
            ..AttributeContext::default()
        }),
    }
}

async fn envoy_caller(addr: String, offset: usize, warm_until: Instant, end: Instant) -> anyhow::Result<Tally> {
    let mut client = AuthorizationClient::connect(format!("http://{addr}")).await?;
    let reqs: Vec<CheckRequest> = CHECKS.iter().map(|(u, m, p, _)| check_request(u, m, p)).collect();
    let mut t = Tally::default();
    let mut i = offset;
    while Instant::now() < end {
        i = (i + 1) % reqs.len();
        let req = reqs[i].clone();
        let started = Instant::now();
        let answer = client.check(req).await;
        let took = started.elapsed();
        if started < warm_until {
            continue;
        }
        t.lat_us.push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX));
        match answer.map(|r| r.into_inner().status.map_or(-1, |s| s.code)) {
            Ok(0) => t.allow += 1,
            Ok(7) => t.deny += 1,
            _ => t.errors += 1,
        }
    }
    Ok(t)
}

async fn allowed_caller(addr: String, offset: usize, warm_until: Instant, end: Instant) -> anyhow::Result<Tally> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(&addr).await?;
    s.set_nodelay(true)?;
    let reqs: Vec<Vec<u8>> = CHECKS
        .iter()
        .map(|(_, _, _, body)| {
            format!(
                "POST /allowed HTTP/1.1\r\nhost: permd\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes()
        })
        .collect();
    let mut t = Tally::default();
    let mut i = offset;
    let mut buf = vec![0u8; 8192];
    while Instant::now() < end {
        i = (i + 1) % reqs.len();
        let started = Instant::now();
        s.write_all(&reqs[i]).await?;
        // One response: headers, then content-length bytes of body.
        let mut got = 0usize;
        let (head_end, total) = loop {
            let n = s.read(&mut buf[got..]).await?;
            anyhow::ensure!(n > 0, "connection closed");
            got += n;
            if let Some(h) = buf[..got].windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..h]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                break (h + 4, h + 4 + len);
            }
        };
        while got < total {
            let n = s.read(&mut buf[got..]).await?;
            anyhow::ensure!(n > 0, "connection closed");
            got += n;
        }
        let took = started.elapsed();
        if started < warm_until {
            continue;
        }
        t.lat_us.push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX));
        let body = &buf[head_end..total];
        if !buf.starts_with(b"HTTP/1.1 200") {
            t.errors += 1;
        } else if body.windows(12).any(|w| w == b"\"allow\":true") {
            t.allow += 1;
        } else {
            t.deny += 1;
        }
    }
    Ok(t)
}

/// User + system CPU seconds of this process so far (`/proc/self/stat`, 100 ticks a second).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / 100.0
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(mode), Some(addr)) = (args.first().cloned(), args.get(1).cloned()) else {
        anyhow::bail!("usage: authz_load envoy|allowed ADDR [CONNECTIONS] [DURATION_S] [WARMUP_S]");
    };
    let num = |i: usize, d: u64| -> anyhow::Result<u64> {
        match args.get(i) {
            Some(v) => v.parse().map_err(|e| anyhow::anyhow!("argument {i} `{v}`: {e}")),
            None => Ok(d),
        }
    };
    let (conns, duration, warmup) = (num(2, 4)?, num(3, 10)?, num(4, 2)?);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let cpu0 = cpu_seconds();
    let tally = rt.block_on(async {
        let warm_until = Instant::now() + Duration::from_secs(warmup);
        let end = warm_until + Duration::from_secs(duration);
        let mode = Arc::new(mode.clone());
        let tasks: Vec<_> = (0..conns as usize)
            .map(|c| {
                let (addr, mode) = (addr.clone(), mode.clone());
                tokio::spawn(async move {
                    match mode.as_str() {
                        "envoy" => envoy_caller(addr, c * 3, warm_until, end).await,
                        _ => allowed_caller(addr, c * 3, warm_until, end).await,
                    }
                })
            })
            .collect();
        let mut all = Tally::default();
        for t in tasks {
            let t = t.await??;
            all.lat_us.extend(t.lat_us);
            all.errors += t.errors;
            all.allow += t.allow;
            all.deny += t.deny;
        }
        anyhow::Ok(all)
    })?;
    let cpu = cpu_seconds() - cpu0;
    let mut lat = tally.lat_us;
    lat.sort_unstable();
    let q = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    let n = lat.len() as u64;
    println!(
        "RESULT mode={mode} rps={:.0} p50_us={} p99_us={} max_us={} requests={n} errors={} allow={} deny={} client_cpu_s={cpu:.2}",
        n as f64 / duration as f64,
        q(0.50),
        q(0.99),
        lat.last().copied().unwrap_or(0),
        tally.errors,
        tally.allow,
        tally.deny,
    );
    Ok(())
}
