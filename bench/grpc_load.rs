//! gRPC load generator for bench/http.sh: perm/v1 `Enforce` over tonic, the same checks as
//! the `/allowed` bodies wrk sends (one JSON body per line, as written by `bodies`), from
//! CONNECTIONS concurrent callers, each on its own HTTP/2 connection, for DURATION seconds
//! after a warm-up. Every answer's grpc-status is counted (an OK with a decision, or the
//! code of the error), and the latency of every call recorded.
//!
//! Usage: `grpc_load ADDR BODIES_FILE [CONNECTIONS=32] [DURATION_S=10] [WARMUP_S=2] [THREADS=1]`
//! Prints one line: `RESULT rps=… p50_us=… p99_us=… max_us=… requests=… non2xx=… allow=… deny=…`
//! (`non2xx` counts calls whose grpc-status was not OK, named so http.sh can read it like wrk's).

use permd::api::grpc::perm::EnforceRequest;
use permd::api::grpc::perm::perm_service_client::PermServiceClient;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn enforce_of(body: &serde_json::Value) -> Option<EnforceRequest> {
    let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    let r = &body["resource"];
    let (t, k, tenant) = match r {
        serde_json::Value::String(x) => match x.split_once(':') {
            Some((t, k)) => (t.to_string(), k.to_string(), String::new()),
            None => (x.clone(), String::new(), String::new()),
        },
        _ => (s(&r["type"]), s(&r["key"]), s(&r["tenant"])),
    };
    let user = match &body["user"] {
        serde_json::Value::String(u) => u.clone(),
        u => s(&u["key"]),
    };
    Some(EnforceRequest {
        org_id: tenant,
        user_id: user,
        role_id: String::new(),
        res_type: t,
        group_type: String::new(),
        res_id: k,
        act: s(&body["action"]),
    })
}

#[derive(Default)]
struct Tally {
    lat_us: Vec<u32>,
    codes: BTreeMap<String, u64>,
    allow: u64,
    deny: u64,
}

async fn caller(
    addr: String,
    reqs: Arc<Vec<EnforceRequest>>,
    offset: usize,
    warm_until: Instant,
    end: Instant,
) -> anyhow::Result<Tally> {
    let mut client = PermServiceClient::connect(format!("http://{addr}")).await?;
    let mut t = Tally::default();
    let mut i = offset;
    loop {
        let now = Instant::now();
        if now >= end {
            return Ok(t);
        }
        i = (i + 1) % reqs.len().max(1);
        let Some(req) = reqs.get(i).cloned() else {
            anyhow::bail!("no requests")
        };
        let started = Instant::now();
        let answer = client.enforce(req).await;
        let took = started.elapsed();
        if started < warm_until {
            continue;
        }
        t.lat_us.push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX));
        match answer {
            Ok(r) => {
                *t.codes.entry("ok".into()).or_default() += 1;
                if r.into_inner().ok {
                    t.allow += 1;
                } else {
                    t.deny += 1;
                }
            }
            Err(e) => *t.codes.entry(format!("{:?}", e.code())).or_default() += 1,
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(addr), Some(bodies)) = (args.first().cloned(), args.get(1)) else {
        anyhow::bail!("usage: grpc_load ADDR BODIES_FILE [CONNECTIONS] [DURATION_S] [WARMUP_S] [THREADS]");
    };
    let num = |i: usize, d: u64| -> anyhow::Result<u64> {
        match args.get(i) {
            Some(v) => v.parse().map_err(|e| anyhow::anyhow!("argument {i} `{v}`: {e}")),
            None => Ok(d),
        }
    };
    let (conns, duration, warmup, threads) = (num(2, 32)?, num(3, 10)?, num(4, 2)?, num(5, 1)?);
    let text = std::fs::read_to_string(bodies)?;
    let reqs: Vec<EnforceRequest> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter_map(|v| enforce_of(&v))
        .collect();
    anyhow::ensure!(!reqs.is_empty(), "no bodies in {bodies}");
    let reqs = Arc::new(reqs);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1) as usize)
        .enable_all()
        .build()?;
    let (tally, measured) = rt.block_on(async {
        let warm_until = Instant::now() + Duration::from_secs(warmup);
        let end = warm_until + Duration::from_secs(duration);
        let tasks: Vec<_> = (0..conns as usize)
            .map(|c| tokio::spawn(caller(addr.clone(), reqs.clone(), c * 509, warm_until, end)))
            .collect();
        let mut all = Tally::default();
        for t in tasks {
            let t = t.await??;
            all.lat_us.extend(t.lat_us);
            for (k, v) in t.codes {
                *all.codes.entry(k).or_default() += v;
            }
            all.allow += t.allow;
            all.deny += t.deny;
        }
        anyhow::Ok((all, Duration::from_secs(duration)))
    })?;
    let mut lat = tally.lat_us;
    lat.sort_unstable();
    let q = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    let n = lat.len() as u64;
    let non_ok: u64 = tally.codes.iter().filter(|(k, _)| *k != "ok").map(|(_, v)| v).sum();
    let codes: Vec<String> = tally.codes.iter().map(|(k, v)| format!("{k}:{v}")).collect();
    println!(
        "RESULT rps={:.0} p50_us={} p99_us={} max_us={} requests={n} non2xx={non_ok} allow={} deny={} codes={}",
        n as f64 / measured.as_secs_f64(),
        q(0.50),
        q(0.99),
        lat.last().copied().unwrap_or(0),
        tally.allow,
        tally.deny,
        codes.join(",")
    );
    Ok(())
}
