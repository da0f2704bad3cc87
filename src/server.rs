//! Listeners and the serve loop: bind (TCP or Unix socket), accept with a connection limit,
//! serve HTTP/1.1 and h2c with hyper, and shut down gracefully: stop accepting, let in-flight
//! requests finish within the grace period.

use crate::api::forward::Forwarder;
use crate::api::grpc::{FILE_DESCRIPTOR_SET, GrpcState, perm, permd};
use crate::api::http::{HttpState, handle};
use crate::config::{Config, ListenAddr};
use crate::store::Store;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;

/// A bound listener.
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, SocketFile),
}

/// A Unix socket's path, removed when the listener goes away.
pub struct SocketFile(std::path::PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Listener {
    pub async fn bind(addr: &ListenAddr) -> std::io::Result<Listener> {
        match addr {
            ListenAddr::Tcp(a) => Ok(Listener::Tcp(TcpListener::bind(a).await?)),
            ListenAddr::Unix(path) => {
                // A socket file left by an earlier run would make bind fail.
                if std::fs::symlink_metadata(path)
                    .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
                {
                    std::fs::remove_file(path)?;
                }
                Ok(Listener::Unix(UnixListener::bind(path)?, SocketFile(path.clone())))
            }
        }
    }

    /// The bound address, with the real port when 0 was asked for.
    pub fn local_addr(&self) -> String {
        match self {
            Listener::Tcp(l) => l.local_addr().map_or_else(|e| e.to_string(), |a| a.to_string()),
            Listener::Unix(_, p) => format!("unix:{}", p.0.display()),
        }
    }
}

/// A connection whose first bytes must arrive before a deadline. hyper's header timeout
/// starts only once the auto builder has sniffed HTTP/1 from HTTP/2, and that sniffing waits
/// for the first bytes without a timeout of its own: a client that connects and says
/// nothing would hold its connection slot for ever.
struct FirstBytesDeadline<IO> {
    io: IO,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<IO: AsyncRead + Unpin> AsyncRead for FirstBytesDeadline<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        let Some(deadline) = self.deadline.as_mut() else {
            return polled;
        };
        match polled {
            Poll::Ready(_) if buf.filled().len() > before => self.deadline = None,
            Poll::Pending if deadline.as_mut().poll(cx).is_ready() => {
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "nothing received within header_read_timeout",
                )));
            }
            _ => {}
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for FirstBytesDeadline<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

fn spawn_conn<IO, S, F, B>(
    io: IO,
    service: S,
    builder: &auto::Builder<TokioExecutor>,
    graceful: &GracefulShutdown,
    permit: tokio::sync::OwnedSemaphorePermit,
    first_bytes_timeout: Duration,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Result<Response<B>, std::convert::Infallible>> + Send + 'static,
    B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let io = FirstBytesDeadline {
        io,
        deadline: Some(Box::pin(tokio::time::sleep(first_bytes_timeout))),
    };
    let conn = builder
        .serve_connection(TokioIo::new(io), service_fn(service))
        .into_owned();
    let conn = graceful.watch(conn);
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            // A client going away mid-request, or one that never spoke, is routine.
            tracing::debug!(error = %e, "connection ended with an error");
        }
        drop(permit);
    });
}

/// Connection limits of one HTTP listener.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    pub max_connections: usize,
    /// For a request's headers to arrive, and for an idle keep-alive connection.
    pub header_read_timeout: Duration,
    pub max_concurrent_streams: u32,
}

impl HttpLimits {
    pub fn from_config(cfg: &Config) -> HttpLimits {
        HttpLimits {
            max_connections: cfg.max_connections,
            header_read_timeout: cfg.header_read_timeout,
            max_concurrent_streams: cfg.max_concurrent_streams,
        }
    }
}

/// Serves the sidecar's HTTP API on `listener` until `shutdown` resolves, then drains within
/// `grace`.
pub async fn serve_http(
    listener: Listener,
    state: Arc<HttpState>,
    limits: HttpLimits,
    grace: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let service = move |req| handle(req, state.clone());
    serve_with(listener, Arc::new(service), limits, grace, shutdown).await
}

/// Serves HTTP/1.1 and h2c on `listener` with `service` (the sidecar's API, the control
/// plane's): the connection limit, the header and first-bytes timeouts, graceful shutdown.
pub async fn serve_with<S, F, B>(
    listener: Listener,
    service: Arc<S>,
    limits: HttpLimits,
    grace: Duration,
    shutdown: impl Future<Output = ()>,
) where
    S: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Result<Response<B>, std::convert::Infallible>> + Send + 'static,
    B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let max_connections = limits.max_connections;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Slow-header (slowloris) and idle keep-alive clients are closed after the timeout; h2c
    // clients are pinged and dropped when they stop answering, and their streams bounded.
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(64 * 1024);
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(limits.header_read_timeout)
        .keep_alive_timeout(limits.header_read_timeout)
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(64 * 1024);
    let graceful = GracefulShutdown::new();
    let limit = Arc::new(Semaphore::new(max_connections));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            a = accept(&listener) => a,
        };
        match accepted {
            Ok(Accepted::Tcp(s)) => {
                let _ = s.set_nodelay(true);
                let service = service.clone();
                spawn_conn(
                    s,
                    move |req| service(req),
                    &builder,
                    &graceful,
                    permit,
                    limits.header_read_timeout,
                )
            }
            Ok(Accepted::Unix(s)) => {
                let service = service.clone();
                spawn_conn(
                    s,
                    move |req| service(req),
                    &builder,
                    &graceful,
                    permit,
                    limits.header_read_timeout,
                )
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all connections closed"),
        _ = tokio::time::sleep(grace) => tracing::warn!(grace_ms = grace.as_millis() as u64, "grace period over; closing remaining connections"),
    }
}

enum Accepted {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

async fn accept(l: &Listener) -> std::io::Result<Accepted> {
    match l {
        Listener::Tcp(l) => l.accept().await.map(|(s, _)| Accepted::Tcp(s)),
        Listener::Unix(l, _) => l.accept().await.map(|(s, _)| Accepted::Unix(s)),
    }
}

/// Runs the sidecar with `cfg` until `shutdown` resolves: binds, starts the source, serves.
pub async fn run(cfg: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    if cfg.metrics {
        crate::metrics::init();
    }
    if let Some(dl) = &cfg.decision_log {
        crate::decision_log::init(dl.clone())
            .map_err(|e| anyhow::anyhow!("cannot open the decision log `{:?}`: {e}", dl.output))?;
        tracing::info!(output = ?dl.output, sample_rate = dl.sample_rate, "decision log on");
    }
    let store = Store::new(cfg.source.display());
    let http = Listener::bind(&cfg.http_addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on http_addr `{}`: {e}", cfg.http_addr))?;
    let admin = match &cfg.admin_addr {
        Some(addr) => Some(
            Listener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on admin_addr `{addr}`: {e}"))?,
        ),
        None => None,
    };
    if let Some(admin) = &admin {
        tracing::info!(addr = %admin.local_addr(), "admin listening");
    }
    let grpc = Listener::bind(&cfg.grpc_addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on grpc_addr `{}`: {e}", cfg.grpc_addr))?;
    tracing::info!(addr = %grpc.local_addr(), "grpc listening");
    tracing::info!(addr = %http.local_addr(), "http listening");
    let source = crate::sync::spawn(&cfg, store.clone());
    let forward = Arc::new(Forwarder::new(&cfg, store.clone()));
    if forward.enabled() {
        tracing::info!(source = %cfg.source.display(), "writes are forwarded to the control plane");
    }
    let proxy = Arc::new(cfg.proxy.clone());
    let state = |admin_only: bool| {
        Arc::new(HttpState {
            store: store.clone(),
            max_body_bytes: cfg.max_body_bytes,
            max_staleness: cfg.max_staleness,
            // The admin listener serves operations endpoints only: no writes through it.
            forward: (!admin_only).then(|| forward.clone()),
            admin_only,
            proxy: proxy.clone(),
        })
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let admin_task = admin.map(|listener| {
        let serve = serve_http(
            listener,
            state(true),
            HttpLimits::from_config(&cfg),
            cfg.shutdown_grace,
            stopped(stop_rx.clone()),
        );
        tokio::spawn(serve)
    });
    let grpc_task = {
        let state = GrpcState {
            store: store.clone(),
            forward: forward.clone(),
            proxy: proxy.clone(),
        };
        tokio::spawn(serve_grpc(
            grpc,
            state,
            HttpLimits::from_config(&cfg),
            cfg.shutdown_grace,
            stop_rx.clone(),
        ))
    };
    let trigger = async {
        shutdown.await;
        store.begin_shutdown();
        tracing::info!("shutting down: readiness is false, no new connections");
        let _ = stop_tx.send(true);
    };
    let serve = serve_http(
        http,
        state(false),
        HttpLimits::from_config(&cfg),
        cfg.shutdown_grace,
        stopped(stop_rx),
    );
    tokio::join!(trigger, serve);
    if let Some(task) = admin_task {
        let _ = task.await;
    }
    match grpc_task.await {
        Ok(Err(e)) => tracing::warn!(error = %e, "grpc server ended with an error"),
        Err(e) => tracing::warn!(error = %e, "grpc server task failed"),
        Ok(Ok(())) => {}
    }
    source.abort();
    Ok(())
}

/// The gRPC service names health reports on, besides the whole server ("").
const GRPC_SERVICES: [&str; 8] = [
    "",
    "perm.v1.PermService",
    "perm.v1.RoleService",
    "perm.v1.GroupService",
    "perm.v1.MenuService",
    "perm.v1.OrgService",
    "permd.v1.PermdService",
    "envoy.service.auth.v3.Authorization",
];

/// Serves gRPC on `listener` until `stop` turns true; in-flight calls (and `WatchVersion`
/// streams) get `grace`, then the server is dropped.
pub async fn serve_grpc(
    listener: Listener,
    state: GrpcState,
    limits: HttpLimits,
    grace: Duration,
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    use tonic_health::ServingStatus;
    let (health, health_svc) = tonic_health::server::health_reporter();
    for name in GRPC_SERVICES {
        health.set_service_status(name, ServingStatus::NotServing).await;
    }
    // NOT_SERVING until the first snapshot is active, and again once shutdown begins.
    let reporter = {
        let mut versions = state.store.subscribe();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            if versions.wait_for(|v| v.is_some()).await.is_ok() && !*stop.borrow() {
                for name in GRPC_SERVICES {
                    health.set_service_status(name, ServingStatus::Serving).await;
                }
            }
            let _ = stop.wait_for(|s| *s).await;
            for name in GRPC_SERVICES {
                health.set_service_status(name, ServingStatus::NotServing).await;
            }
        })
    };
    // Reflection lists exactly the services served here.
    let reflection_builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name("grpc.health.v1.Health")
            .with_service_name("perm.v1.PermService")
            .with_service_name("perm.v1.RoleService")
            .with_service_name("perm.v1.GroupService")
            .with_service_name("perm.v1.MenuService")
            .with_service_name("perm.v1.OrgService")
            .with_service_name("permd.v1.PermdService")
    };
    let reflection = reflection_builder().build_v1()?;
    let reflection_alpha = reflection_builder().build_v1alpha()?;
    let router = tonic::transport::Server::builder()
        .max_concurrent_streams(limits.max_concurrent_streams)
        .http2_keepalive_interval(Some(limits.header_read_timeout))
        .http2_keepalive_timeout(Some(limits.header_read_timeout))
        .http2_max_header_list_size(64 * 1024)
        .layer(crate::metrics::grpc::GrpcMetricsLayer)
        .add_service(health_svc)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(perm::perm_service_server::PermServiceServer::new(state.clone()))
        .add_service(perm::role_service_server::RoleServiceServer::new(state.clone()))
        .add_service(perm::group_service_server::GroupServiceServer::new(state.clone()))
        .add_service(perm::menu_service_server::MenuServiceServer::new(state.clone()))
        .add_service(perm::org_service_server::OrgServiceServer::new(state.clone()))
        .add_service(crate::api::grpc::envoy::AuthorizationServer::new(state.clone()))
        .add_service(permd::permd_service_server::PermdServiceServer::new(state));
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let serve = async {
        match listener {
            Listener::Tcp(l) => {
                let incoming = tokio_stream::wrappers::TcpListenerStream::new(l);
                router
                    .serve_with_incoming_shutdown(incoming, stopped(stop.clone()))
                    .await
            }
            Listener::Unix(l, _file) => {
                let incoming = tokio_stream::wrappers::UnixListenerStream::new(l);
                router
                    .serve_with_incoming_shutdown(incoming, stopped(stop.clone()))
                    .await
            }
        }
    };
    let deadline = async {
        stopped(stop.clone()).await;
        tokio::time::sleep(grace).await;
    };
    let result = tokio::select! {
        r = serve => r.map_err(anyhow::Error::from),
        _ = deadline => {
            tracing::warn!("grpc grace period over; closing remaining streams");
            Ok(())
        }
    };
    reporter.abort();
    result
}
