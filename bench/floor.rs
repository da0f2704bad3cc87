//! The floor: a hyper 1 server that reads each request body and answers every request with a
//! fixed `{"allow":true}`. Same runtime, builder and socket options as `permd serve`, no
//! routing, no JSON decoding, no index: what this machine can do for an HTTP check at best.
//! bench/http.sh runs it beside permd; `cargo build --release --example floor` builds it.
//!
//! Usage: `floor [--addr 127.0.0.1:0]`; prints `listening 127.0.0.1:PORT` on stdout.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::io::Write;
use tokio::net::TcpListener;

const ANSWER: &[u8] = br#"{"allow":true}"#;

async fn answer(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    // Read the whole body, as a real check must before it can decide.
    let _body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut resp = Response::new(Full::new(Bytes::from_static(ANSWER)));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(resp)
}

fn addr_arg() -> anyhow::Result<String> {
    let mut args = std::env::args().skip(1);
    let mut addr = "127.0.0.1:0".to_string();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--addr" => addr = args.next().ok_or_else(|| anyhow::anyhow!("`--addr` needs a value"))?,
            other => match other.strip_prefix("--addr=") {
                Some(v) => addr = v.to_string(),
                None => anyhow::bail!("unknown argument `{other}`; usage: floor [--addr 127.0.0.1:0]"),
            },
        }
    }
    Ok(addr)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = addr_arg()?;
    let listener = TcpListener::bind(&addr).await?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening {}", listener.local_addr()?)?;
        out.flush()?;
    }
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let conn = builder
            .serve_connection(TokioIo::new(stream), service_fn(answer))
            .into_owned();
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}
