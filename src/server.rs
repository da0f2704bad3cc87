//! Listeners and the serve loop: bind (TCP or Unix socket), accept with a connection limit,
//! serve HTTP/1.1 and h2c with hyper (or both over TLS), and shut down gracefully: stop
//! accepting, let in-flight requests finish within the grace period.
//!
//! Who may ask is decided here, in front of every route: the [`Gate`] (bearer keys, turned-off
//! listings) wraps the whole HTTP service and the whole tonic router, and TLS (with client
//! certificates when configured) is negotiated before a connection reaches either.

use crate::api::forward::Forwarder;
use crate::api::grpc::{FILE_DESCRIPTOR_SET, GrpcState, perm, permd};
use crate::api::http::{HttpState, handle};
use crate::auth::{Gate, GrpcGateLayer, Keys};
use crate::config::{Config, ListenAddr};
use crate::store::Store;
use crate::tls::ReloadingTls;
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

/// Serves one TLS connection: the handshake (client certificate verified when mTLS is on)
/// within the first-bytes deadline, then HTTP as on a plain connection.
fn spawn_tls_conn<S, F, B>(
    io: tokio::net::TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    service: S,
    builder: &auto::Builder<TokioExecutor>,
    graceful: &GracefulShutdown,
    permit: tokio::sync::OwnedSemaphorePermit,
    first_bytes_timeout: Duration,
) where
    S: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Result<Response<B>, std::convert::Infallible>> + Send + 'static,
    B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let builder = builder.clone();
    let watcher = graceful.watcher();
    tokio::spawn(async move {
        let io = FirstBytesDeadline {
            io,
            deadline: Some(Box::pin(tokio::time::sleep(first_bytes_timeout))),
        };
        let tls = match tokio::time::timeout(first_bytes_timeout, acceptor.accept(io)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!("TLS handshake timed out");
                return;
            }
        };
        let conn = builder.serve_connection(TokioIo::new(tls), service_fn(service));
        if let Err(e) = watcher.watch(conn.into_owned()).await {
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
    serve_http_guarded(listener, state, Front::default(), limits, grace, shutdown).await
}

/// What stands in front of a listener's routes.
#[derive(Clone, Default)]
pub struct Front {
    /// Checked before any route; `None` lets every request through.
    pub gate: Option<Arc<Gate>>,
    pub tls: Option<Arc<ReloadingTls>>,
    /// The admin listener: health, readiness and metrics only.
    pub admin: bool,
}

/// The admin listener's routes: no permission data behind any of them.
pub const ADMIN_ROUTES: &[&str] = &["/healthz", "/readyz", "/health", "/healthy", "/ready", "/metrics"];

/// [`serve_http`] behind `front`: the gate answers before the body is read or a route chosen.
pub async fn serve_http_guarded(
    listener: Listener,
    state: Arc<HttpState>,
    front: Front,
    limits: HttpLimits,
    grace: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let tls = front.tls.clone();
    match (front.gate, front.admin) {
        (None, false) => {
            let service = move |req, _: &Arc<Conn>| handle(req, state.clone());
            serve_with_tls(listener, Arc::new(service), limits, grace, shutdown, tls).await
        }
        (gate, admin) => {
            let service = move |req: Request<Incoming>, conn: &Arc<Conn>| {
                let refused = if admin && !ADMIN_ROUTES.contains(&req.uri().path()) {
                    Some(crate::wire::RequestError::NotFound(req.uri().path().to_owned()).into_response())
                } else {
                    gate.as_ref().and_then(|g| g.http_on(&req, &conn.auth))
                };
                let state = state.clone();
                async move {
                    match refused {
                        Some(resp) => Ok(resp),
                        None => handle(req, state).await,
                    }
                }
            };
            serve_with_tls(listener, Arc::new(service), limits, grace, shutdown, tls).await
        }
    }
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
    let service = move |req, _: &Arc<Conn>| service(req);
    serve_with_tls(listener, Arc::new(service), limits, grace, shutdown, None).await
}

/// What one connection keeps between its requests: the key it last authenticated with.
#[derive(Default)]
pub struct Conn {
    pub auth: crate::auth::ConnAuth,
}

/// [`serve_with`], over TLS on TCP when `tls` is given (a Unix socket stays plain: its file
/// permissions guard it).
pub async fn serve_with_tls<S, F, B>(
    listener: Listener,
    service: Arc<S>,
    limits: HttpLimits,
    grace: Duration,
    shutdown: impl Future<Output = ()>,
    tls: Option<Arc<ReloadingTls>>,
) where
    S: Fn(Request<Incoming>, &Arc<Conn>) -> F + Send + Sync + 'static,
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
            Ok(Accepted::Tcp(s)) if tls.is_some() => {
                let _ = s.set_nodelay(true);
                let service = service.clone();
                let conn = Arc::new(Conn::default());
                let acceptor = tls.as_ref().map(|t| t.acceptor());
                if let Some(acceptor) = acceptor {
                    spawn_tls_conn(
                        s,
                        acceptor,
                        move |req| service(req, &conn),
                        &builder,
                        &graceful,
                        permit,
                        limits.header_read_timeout,
                    )
                }
            }
            Ok(Accepted::Tcp(s)) => {
                let _ = s.set_nodelay(true);
                let service = service.clone();
                let conn = Arc::new(Conn::default());
                spawn_conn(
                    s,
                    move |req| service(req, &conn),
                    &builder,
                    &graceful,
                    permit,
                    limits.header_read_timeout,
                )
            }
            Ok(Accepted::Unix(s)) => {
                let service = service.clone();
                let conn = Arc::new(Conn::default());
                spawn_conn(
                    s,
                    move |req| service(req, &conn),
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
    let security = Security::start(&cfg)?;
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
        let serve = serve_http_guarded(
            listener,
            state(true),
            Front {
                gate: None,
                tls: None,
                admin: true,
            },
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
        tokio::spawn(serve_grpc_guarded(
            grpc,
            state,
            Front {
                gate: Some(security.gate.clone()),
                tls: security.grpc_tls.clone(),
                admin: false,
            },
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
    let serve = serve_http_guarded(
        http,
        state(false),
        Front {
            // An open gate is left out: the plain path, not even a wrapper.
            gate: (!security.gate.is_open()).then(|| security.gate.clone()),
            tls: security.http_tls.clone(),
            admin: false,
        },
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
    security.stop();
    Ok(())
}

/// The authentication of a running sidecar: the gate, the TLS configurations, and the tasks
/// that follow their files.
struct Security {
    gate: Arc<Gate>,
    http_tls: Option<Arc<ReloadingTls>>,
    grpc_tls: Option<Arc<ReloadingTls>>,
    watchers: Vec<tokio::task::JoinHandle<()>>,
}

impl Security {
    fn start(cfg: &Config) -> anyhow::Result<Security> {
        let mut watchers = Vec::new();
        let keys = if cfg.auth_keys_file.is_some() || !cfg.auth_keys.is_empty() {
            let env: Vec<String> = cfg.auth_keys.iter().map(|k| k.expose().to_string()).collect();
            let keys =
                Keys::load(&env, cfg.auth_keys_file.as_deref()).map_err(|e| anyhow::anyhow!("auth_keys_file: {e}"))?;
            Some(Arc::new(keys))
        } else {
            None
        };
        let gate = Arc::new(Gate::new(keys, cfg.queries, &cfg.disabled_routes));
        if let Some(m) = crate::metrics::get() {
            gate.register(m);
        }
        if gate.keys().is_some() {
            watchers.push(gate.watch_keys());
        }
        let (http_tls, grpc_tls) = match &cfg.tls {
            Some(files) => {
                let http = ReloadingTls::load(files.clone(), crate::tls::ALPN_HTTP)?;
                let grpc = ReloadingTls::load(files.clone(), crate::tls::ALPN_H2)?;
                watchers.push(http.watch());
                watchers.push(grpc.watch());
                (Some(http), Some(grpc))
            }
            None => (None, None),
        };
        let exposed = !cfg.http_addr.is_local() || !cfg.grpc_addr.is_local();
        if exposed && !cfg.authenticates() {
            tracing::warn!(
                http_addr = %cfg.http_addr,
                grpc_addr = %cfg.grpc_addr,
                "insecure_listen: serving beyond loopback without authentication; anyone who can connect may ask anything, listings included"
            );
        }
        tracing::info!(
            keys = gate.keys().map_or(0, |k| k.count()),
            tls = cfg.tls.is_some(),
            client_certificates = cfg.tls.as_ref().is_some_and(|t| t.client_ca.is_some()),
            queries = cfg.queries,
            "client authentication"
        );
        Ok(Security {
            gate,
            http_tls,
            grpc_tls,
            watchers,
        })
    }

    fn stop(&self) {
        for w in &self.watchers {
            w.abort();
        }
    }
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
    serve_grpc_guarded(listener, state, Front::default(), limits, grace, stop).await
}

/// [`serve_grpc`] behind `front`: the gate is a layer around the whole router (every service,
/// health and reflection included), TLS is negotiated before tonic sees the connection.
pub async fn serve_grpc_guarded(
    listener: Listener,
    state: GrpcState,
    front: Front,
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
        .layer(GrpcGateLayer(
            front.gate.clone().unwrap_or_else(|| Arc::new(Gate::open())),
        ))
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
            Listener::Tcp(l) if front.tls.is_some() => {
                let incoming = tls_incoming(l, front.tls.clone(), limits);
                router
                    .serve_with_incoming_shutdown(incoming, stopped(stop.clone()))
                    .await
            }
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

/// A TLS connection handed to tonic (which knows TLS streams only with its own TLS feature).
pub struct TlsConn(tokio_rustls::server::TlsStream<tokio::net::TcpStream>);

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.get_ref().0.connect_info()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

/// Accepts TCP connections and completes their TLS handshakes off the accept loop (each within
/// `header_read_timeout`, at most `max_connections` at once); tonic gets the finished ones. A
/// failed handshake (no client certificate, one from another CA, an expired one) never
/// reaches it.
fn tls_incoming(
    listener: TcpListener,
    tls: Option<Arc<ReloadingTls>>,
    limits: HttpLimits,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<TlsConn>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let handshake_timeout = limits.header_read_timeout;
    let handshakes = Arc::new(Semaphore::new(limits.max_connections));
    tokio::spawn(async move {
        let Some(tls) = tls else {
            return;
        };
        loop {
            let permit = tokio::select! {
                _ = tx.closed() => return,
                p = handshakes.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            };
            let tcp = tokio::select! {
                _ = tx.closed() => return,
                a = listener.accept() => match a {
                    Ok((s, _)) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = tls.acceptor();
            let tx = tx.clone();
            tokio::spawn(async move {
                let done = tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await;
                drop(permit);
                match done {
                    Ok(Ok(s)) => {
                        let _ = tx.send(Ok(TlsConn(s))).await;
                    }
                    Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!("TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
