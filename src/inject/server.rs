//! The webhook's HTTPS server: rustls + hyper (HTTP/1.1 and HTTP/2), `POST /mutate` and `GET /healthz`.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full, LengthLimitError, Limited};
use hyper::body::Body;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::tls::{ALPN_HTTP, ReloadingTls, TlsFiles};

use super::{MAX_BODY_BYTES, Options, Sidecar, review};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the webhook on `opts.addr` until SIGTERM or Ctrl-C, then drains open connections.
pub async fn run(opts: Options) -> anyhow::Result<()> {
    let listener = TcpListener::bind(opts.addr)
        .await
        .with_context(|| format!("binding {}", opts.addr))?;
    serve(listener, &opts, shutdown_signal()).await
}

/// Serves the webhook on an already bound listener until `shutdown` completes.
/// ([`run`] with the listener and the stop signal given, e.g. for tests on port 0.)
pub async fn serve<F>(listener: TcpListener, opts: &Options, shutdown: F) -> anyhow::Result<()>
where
    F: Future<Output = ()>,
{
    let sidecar = Arc::new(Sidecar::load(&opts.sidecar_file).await?);
    // The shared TLS code (src/tls.rs): a renewed certificate (cert-manager) is picked up
    // without a restart.
    let tls = ReloadingTls::load(
        TlsFiles {
            cert: opts.tls_cert.clone(),
            key: opts.tls_key.clone(),
            client_ca: None,
        },
        ALPN_HTTP,
    )?;
    let watch = tls.watch();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();

    tracing::info!(
        addr = %listener.local_addr().context("listener address")?,
        containers = sidecar.containers.len(),
        volumes = sidecar.volumes.len(),
        "inject webhook listening"
    );

    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let acceptor = tls.acceptor();
        let builder = builder.clone();
        let sidecar = Arc::clone(&sidecar);
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let service = service_fn(move |req| {
                let sidecar = Arc::clone(&sidecar);
                async move { Ok::<_, Infallible>(handle(req, &sidecar).await) }
            });
            let conn = builder.serve_connection(TokioIo::new(tls), service);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }

    drop(listener);
    watch.abort();
    tracing::info!("inject webhook stopping");
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await.is_err() {
        tracing::warn!("connections still open after the drain timeout; closing them");
    }
    Ok(())
}

/// Routes one request (any body type, so that tests can call it without a connection).
pub(super) async fn handle<B>(req: Request<B>, sidecar: &Sidecar) -> Response<Full<Bytes>>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // The API server calls e.g. /mutate?timeout=5s: route on the path alone.
    match (req.method(), req.uri().path()) {
        (&Method::POST, "/mutate") => mutate(req, sidecar).await,
        (&Method::GET | &Method::HEAD, "/healthz") => json_response(StatusCode::OK, &json!({ "status": "ok" })),
        (_, "/mutate" | "/healthz") => error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            &format!("{} is not allowed on {}", req.method(), req.uri().path()),
        ),
        (_, path) => error_response(StatusCode::NOT_FOUND, "not_found", &format!("no route for {path}")),
    }
}

async fn mutate<B>(req: Request<B>, sidecar: &Sidecar) -> Response<Full<Bytes>>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return too_large();
    }
    let collected = tokio::time::timeout(BODY_TIMEOUT, Limited::new(req.into_body(), MAX_BODY_BYTES).collect()).await;
    let body = match collected {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => return too_large(),
        Ok(Err(e)) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "invalid_argument",
                &format!("body could not be read: {e}"),
            );
        }
        Err(_) => {
            return error_response(StatusCode::REQUEST_TIMEOUT, "timeout", "body not received in time");
        }
    };
    match review(&body, sidecar) {
        Ok(answer) => {
            let patched = answer.pointer("/response/patch").is_some_and(|p| !p.is_null());
            let uid = answer
                .pointer("/response/uid")
                .and_then(Value::as_str)
                .unwrap_or_default();
            tracing::debug!(uid, injected = patched, "admission review answered");
            json_response(StatusCode::OK, &answer)
        }
        Err(e) => {
            tracing::warn!(error = %e, "malformed admission review");
            error_response(StatusCode::BAD_REQUEST, e.code(), &e.to_string())
        }
    }
}

fn too_large() -> Response<Full<Bytes>> {
    error_response(
        StatusCode::PAYLOAD_TOO_LARGE,
        "invalid_argument",
        &format!("body is larger than {MAX_BODY_BYTES} bytes"),
    )
}

fn error_response(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    json_response(status, &json!({ "error": { "code": code, "message": message } }))
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

/// Completes on SIGTERM (what Kubernetes sends) or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
