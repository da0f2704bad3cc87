//! The stand-in upstream of the tests, by hand: serves a snapshot over permd's native protocol
//! and streams every delta batch typed (or piped) on stdin, one JSON line each.
//!
//! ```sh
//! cargo run --example upstream -- --snapshot config/example-snapshot.yaml --port 7700
//! cargo run -- serve --source http://127.0.0.1:7700 --cache-dir /tmp/permd-cache
//! # then type on the upstream's stdin:
//! {"from_version": 42, "to_version": 43, "ops": [{"op": "upsert", "kind": "role_assignment", "value": {"user": "dave", "role": "viewer", "org": "acme"}}]}
//! ```
//! Also: `--token T` requires `Authorization: Bearer T`; stdin commands `down`, `up`, `compact`
//! (so a lagging permd gets 410), `drop` (ends open streams), `fail 503`, `429 SECONDS`, `cut`,
//! `stall`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/upstream/mod.rs"]
mod upstream;

use permd::model::{DeltaBatch, Encoding, Snapshot};
use upstream::{StreamFault, Upstream};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let Some(path) = arg("--snapshot") else {
        eprintln!("usage: upstream --snapshot FILE [--port N] [--token T]");
        std::process::exit(64);
    };
    let bytes = std::fs::read(&path).unwrap_or_else(|e| {
        eprintln!("cannot read `{path}`: {e}");
        std::process::exit(66);
    });
    let encoding = Encoding::from_path(&path).unwrap_or(Encoding::Yaml);
    let snapshot = Snapshot::load(&bytes, encoding).unwrap_or_else(|e| {
        eprintln!("`{path}` rejected: {e}");
        std::process::exit(65);
    });
    let port = arg("--port").and_then(|p| p.parse().ok()).unwrap_or(7700);
    let up = Upstream::start(snapshot, port).await;
    up.state().token = arg("--token");
    eprintln!(
        "upstream on {} at version {}; delta lines on stdin",
        up.url(),
        up.version()
    );
    // stdin on a plain thread: tokio's stdin needs a feature the server does not.
    let (tx, mut lines) = tokio::sync::mpsc::channel::<String>(16);
    std::thread::spawn(move || {
        for line in std::io::stdin().lines().map_while(Result::ok) {
            if tx.blocking_send(line).is_err() {
                return;
            }
        }
    });
    while let Some(line) = lines.recv().await {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [] => {}
            ["down"] => up.state().down = true,
            ["up"] => up.state().down = false,
            ["compact"] => up.compact(),
            ["drop"] => up.drop_streams(),
            ["cut"] => up.state().stream_faults.push_back(StreamFault::CutNextLine),
            ["stall"] => up.state().stream_faults.push_back(StreamFault::Stall),
            ["fail", code] => match code.parse() {
                Ok(c) => up.state().fail_next.push_back(c),
                Err(_) => eprintln!("`{code}` is not a status"),
            },
            ["429", secs] => {
                let mut st = up.state();
                st.fail_next.push_back(429);
                st.retry_after = Some(secs.to_string());
            }
            _ => match DeltaBatch::from_json(line.as_bytes()) {
                Ok(b) if b.from_version == up.version() => {
                    up.publish(&b);
                    eprintln!("version {}", up.version());
                }
                Ok(b) => eprintln!(
                    "from_version {} does not follow version {}",
                    b.from_version,
                    up.version()
                ),
                Err(e) => eprintln!("batch rejected: {e}"),
            },
        }
    }
    // stdin closed (run in the background): keep serving until killed.
    std::future::pending::<()>().await;
}
