//! Who may ask (api.md "Beyond loopback"): bearer keys checked at the listener, before any
//! route is chosen or any body read, for every HTTP route and every gRPC method, including
//! routes added later; and the listing endpoints an operator may turn off.
//!
//! Keys come from `auth_keys_file` (one a line, `#` comments; read again every 500 ms, so a
//! key removed from the file is refused within a second) and `PERMD_AUTH_KEYS`
//! (comma-separated, environment only). Only SHA-256 digests of the keys are kept. A
//! presented key is hashed and its digest compared with every stored digest, each byte of
//! each, without stopping at a match or a mismatch: the time taken depends on neither how much
//! of the key is right nor which key matched. Keys are never logged and never shown; status
//! and metrics carry their count and the number of refused requests only.

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::Full;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::wire::RequestError;

/// How often the key file is read again.
pub const RELOAD_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

type Digest = [u8; 32];

fn digest(key: &[u8]) -> Digest {
    let d = ring::digest::digest(&ring::digest::SHA256, key);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// The keys of a key file's text: one a line, `#` starts a comment line, blank lines and
/// surrounding whitespace ignored. A key a header cannot carry is an error naming its line
/// (not the key).
pub fn parse_keys(text: &str) -> Result<Vec<String>, String> {
    let mut keys = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if !line.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!("line {}: a key must be printable ASCII without spaces", n + 1));
        }
        keys.push(line.to_string());
    }
    Ok(keys)
}

/// The set of valid keys (as digests), the environment's fixed, the file's reloaded.
pub struct Keys {
    fixed: Vec<Digest>,
    file: Option<PathBuf>,
    all: ArcSwap<Vec<Digest>>,
    /// Bumped at every change of the set: a connection's remembered key is good only for the
    /// generation it was checked in.
    generation: std::sync::atomic::AtomicU64,
    seen: std::sync::Mutex<Option<String>>,
}

impl Keys {
    /// `env` from `PERMD_AUTH_KEYS`; `file` from `auth_keys_file`, read now.
    pub fn load(env: &[String], file: Option<&Path>) -> Result<Keys, String> {
        let fixed: Vec<Digest> = env.iter().map(|k| digest(k.as_bytes())).collect();
        let (from_file, seen) = match file {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
                let keys = parse_keys(&text).map_err(|e| format!("`{}` {e}", path.display()))?;
                (keys.iter().map(|k| digest(k.as_bytes())).collect(), Some(text))
            }
            None => (Vec::new(), None),
        };
        let mut all = fixed.clone();
        all.extend(from_file);
        Ok(Keys {
            fixed,
            file: file.map(Path::to_path_buf),
            all: ArcSwap::from_pointee(all),
            generation: std::sync::atomic::AtomicU64::new(0),
            seen: std::sync::Mutex::new(seen),
        })
    }

    /// How many keys are valid now.
    pub fn count(&self) -> usize {
        self.all.load().len()
    }

    /// Reads the key file again; true when the set changed. An unreadable file keeps the keys
    /// in force (logged): a Secret being replaced must not lock every client out. A file that
    /// reads but holds no key leaves only the environment's keys.
    pub fn reload(&self) -> bool {
        let Some(path) = &self.file else {
            return false;
        };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "auth_keys_file unreadable; keeping the keys in force");
                return false;
            }
        };
        let Ok(mut seen) = self.seen.lock() else {
            return false;
        };
        if seen.as_deref() == Some(text.as_str()) {
            return false;
        }
        *seen = Some(text.clone());
        match parse_keys(&text) {
            Ok(keys) => {
                let mut all = self.fixed.clone();
                all.extend(keys.iter().map(|k| digest(k.as_bytes())));
                let n = all.len();
                self.all.store(Arc::new(all));
                self.generation.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                tracing::info!(file = %path.display(), keys = n, "auth keys reloaded");
                true
            }
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "auth_keys_file rejected; keeping the keys in force");
                false
            }
        }
    }

    /// Whether `presented` is one of the keys, in time independent of its contents.
    pub fn verify(&self, presented: &[u8]) -> bool {
        let d = digest(presented);
        let all = self.all.load();
        let mut found = 0u8;
        for k in all.iter() {
            let mut diff = 0u8;
            for (a, b) in k.iter().zip(d.iter()) {
                diff |= a ^ b;
            }
            // 1 when equal, 0 otherwise, without a branch on the bytes.
            let eq = (((diff as u16).wrapping_sub(1)) >> 8) as u8 & 1;
            found |= std::hint::black_box(eq);
        }
        found == 1
    }
}

/// What a connection remembers: the `Authorization` value it last authenticated with and the
/// key set's generation then. A keep-alive client sending the same header again is not hashed
/// again; a changed header, or a changed key set (a revoked key), is checked in full.
#[derive(Default)]
pub struct ConnAuth(std::sync::Mutex<Option<(Vec<u8>, u64)>>);

/// Equal bytes, in time that depends on the lengths only.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

/// What the listener checks before a request reaches a route.
pub struct Gate {
    /// None: no bearer key is required (loopback without keys, or mTLS alone).
    keys: Option<Arc<Keys>>,
    /// HTTP paths and gRPC methods (`/package.Service/Method`) answered 403.
    disabled: Vec<String>,
    /// `permd_auth_refused_total{listener}` and `permd_auth_keys`, registered when metrics are on.
    refused: prometheus::IntCounterVec,
    refused_http: prometheus::IntCounter,
    refused_grpc: prometheus::IntCounter,
    key_count: prometheus::IntGauge,
}

/// The listing endpoints `queries: false` turns off: the ones that enumerate who holds what
/// or who may do what, rather than deciding one check.
pub const LISTING_ROUTES: &[&str] = &[
    "/local/role_assignments",
    "/authorized_users",
    "/user-permissions",
    "/user-tenants",
    "/allowed/all-tenants",
    "/access/v1/search/subject",
    "/access/v1/search/resource",
    "/access/v1/search/action",
    "/v1/resources",
    "/v1/menus",
    "/v1/groups",
    "/v1/roles",
    "/v1/user-roles",
    "/v1/role-users",
    "/v1/group-tree",
    "/v1/menu-tree",
    "/v1/orgs",
    "/perm.v1.PermService/ListResources",
    "/perm.v1.PermService/ListMenus",
    "/perm.v1.PermService/ListGroups",
    "/perm.v1.RoleService/ListRoles",
    "/perm.v1.RoleService/GetRolesForUser",
    "/perm.v1.RoleService/GetUsersForRole",
    "/perm.v1.GroupService/ListGroups",
    "/perm.v1.MenuService/ListMenus",
    "/perm.v1.OrgService/ListOrg",
];

impl Gate {
    pub fn new(keys: Option<Arc<Keys>>, queries: bool, disabled_routes: &[String]) -> Gate {
        let mut disabled: Vec<String> = disabled_routes.to_vec();
        if !queries {
            disabled.extend(LISTING_ROUTES.iter().map(|r| r.to_string()));
        }
        let (refused, key_count) = gate_metrics();
        let refused_http = refused.with_label_values(&["http"]);
        let refused_grpc = refused.with_label_values(&["grpc"]);
        key_count.set(keys.as_ref().map_or(0, |k| k.count()) as i64);
        Gate {
            keys,
            disabled,
            refused,
            refused_http,
            refused_grpc,
            key_count,
        }
    }

    /// Adds the gate's metrics to permd's registry.
    pub fn register(&self, m: &crate::metrics::Metrics) {
        m.register(self.refused.clone());
        m.register(self.key_count.clone());
    }

    /// Reads the key file again every [`RELOAD_EVERY`] until the task is aborted.
    pub fn watch_keys(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(RELOAD_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(keys) = me.keys.clone() else {
                    return;
                };
                let changed = tokio::task::spawn_blocking(move || keys.reload()).await;
                if changed.unwrap_or(false) {
                    me.key_count.set(me.keys.as_ref().map_or(0, |k| k.count()) as i64);
                }
            }
        })
    }

    /// A gate that lets everything through (a loopback listener without keys).
    pub fn open() -> Gate {
        Gate::new(None, true, &[])
    }

    /// Lets everything through: no keys and no turned-off routes (the listener can skip it).
    pub fn is_open(&self) -> bool {
        self.keys.is_none() && self.disabled.is_empty()
    }

    pub fn keys(&self) -> Option<&Arc<Keys>> {
        self.keys.as_ref()
    }

    /// Requests refused for a missing or wrong key: (HTTP, gRPC).
    pub fn refused(&self) -> (u64, u64) {
        (self.refused_http.get(), self.refused_grpc.get())
    }

    /// [`Gate::authenticate`] for a connection that may have shown the same header before.
    fn authenticate_on(&self, headers: &HeaderMap, conn: &ConnAuth) -> Result<(), &'static str> {
        let Some(keys) = &self.keys else {
            return Ok(());
        };
        let Some(value) = headers.get(http::header::AUTHORIZATION) else {
            return self.authenticate(headers);
        };
        let generation = keys.generation.load(std::sync::atomic::Ordering::Acquire);
        if let Ok(last) = conn.0.lock()
            && let Some((bytes, at)) = last.as_ref()
            && *at == generation
            && same_bytes(bytes, value.as_bytes())
        {
            return Ok(());
        }
        self.authenticate(headers)?;
        if let Ok(mut last) = conn.0.lock() {
            *last = Some((value.as_bytes().to_vec(), generation));
        }
        Ok(())
    }

    /// Checks the `Authorization: Bearer <key>` header; the error says what is wrong without
    /// saying anything about the key.
    fn authenticate(&self, headers: &HeaderMap) -> Result<(), &'static str> {
        let Some(keys) = &self.keys else {
            return Ok(());
        };
        let Some(value) = headers.get(http::header::AUTHORIZATION) else {
            return Err("an API key is required: send `Authorization: Bearer <key>`");
        };
        let v = value.as_bytes();
        let token = match v.get(..7) {
            Some(scheme) if scheme.eq_ignore_ascii_case(b"bearer ") => v.get(7..).unwrap_or_default(),
            _ => return Err("the Authorization header must be `Bearer <key>`"),
        };
        let token = token.trim_ascii();
        if !token.is_empty() && keys.verify(token) {
            Ok(())
        } else {
            Err("the API key is not valid")
        }
    }

    fn disabled(&self, path: &str) -> bool {
        !self.disabled.is_empty() && self.disabled.iter().any(|d| d == path)
    }

    /// For the HTTP listener: `Some(response)` when the request must not reach a route.
    pub fn http<B>(&self, req: &Request<B>) -> Option<Response<Full<Bytes>>> {
        self.http_on(req, &ConnAuth::default())
    }

    /// [`Gate::http`] on a connection that remembers the key it authenticated with.
    pub fn http_on<B>(&self, req: &Request<B>, conn: &ConnAuth) -> Option<Response<Full<Bytes>>> {
        if let Err(msg) = self.authenticate_on(req.headers(), conn) {
            self.refused_http.inc();
            tracing::debug!(
                path = req.uri().path(),
                reason = msg,
                "request refused: not authenticated"
            );
            let mut resp = RequestError::Unauthorized(msg.into()).into_response();
            // The body is not read: ask an HTTP/1 client to close rather than send it (HTTP/2
            // has no such header; its stream is reset instead).
            if req.version() < http::Version::HTTP_2 {
                resp.headers_mut()
                    .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
            }
            return Some(resp);
        }
        let path = req.uri().path();
        if self.disabled(path) {
            return Some(disabled_response(path));
        }
        None
    }

    /// For the gRPC listener: `Some(status)` when the call must not reach a service.
    pub fn grpc<B>(&self, req: &Request<B>) -> Option<tonic::Status> {
        if let Err(msg) = self.authenticate(req.headers()) {
            self.refused_grpc.inc();
            tracing::debug!(
                method = req.uri().path(),
                reason = msg,
                "call refused: not authenticated"
            );
            return Some(tonic::Status::unauthenticated(msg));
        }
        let path = req.uri().path();
        if self.disabled(path) {
            return Some(tonic::Status::permission_denied(format!(
                "`{path}` is turned off on this permd (`queries: false` or `disabled_routes`)"
            )));
        }
        None
    }
}

#[allow(clippy::expect_used)] // constant, valid metric definitions
fn gate_metrics() -> (prometheus::IntCounterVec, prometheus::IntGauge) {
    let refused = prometheus::IntCounterVec::new(
        prometheus::Opts::new(
            "permd_auth_refused_total",
            "Requests and calls refused for a missing or wrong API key, by listener.",
        ),
        &["listener"],
    )
    .expect("counter vec");
    let keys = prometheus::IntGauge::new("permd_auth_keys", "API keys valid now (their count, never the keys).")
        .expect("gauge");
    (refused, keys)
}

fn disabled_response(path: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({"error": {
        "code": "permission_denied",
        "message": format!("`{path}` is turned off on this permd (`queries: false` or `disabled_routes`)"),
    }});
    crate::wire::json(http::StatusCode::FORBIDDEN, &body)
}

/// The tower layer that puts a [`Gate`] in front of the whole tonic router: every service,
/// health and reflection included.
#[derive(Clone)]
pub struct GrpcGateLayer(pub Arc<Gate>);

impl<S> tower::Layer<S> for GrpcGateLayer {
    type Service = GrpcGate<S>;
    fn layer(&self, inner: S) -> GrpcGate<S> {
        GrpcGate {
            inner,
            gate: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct GrpcGate<S> {
    inner: S,
    gate: Arc<Gate>,
}

impl<S, ReqB> tower::Service<Request<ReqB>> for GrpcGate<S>
where
    S: tower::Service<Request<ReqB>, Response = Response<tonic::body::Body>>,
{
    type Response = Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = futures_util::future::Either<S::Future, std::future::Ready<Result<Self::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        match self.gate.grpc(&req) {
            Some(status) => futures_util::future::Either::Right(std::future::ready(Ok(status.into_http()))),
            None => futures_util::future::Either::Left(self.inner.call(req)),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn key_files_and_verification() {
        let keys = parse_keys("# rotation\n\n  k1  \nk2\n#k3\n").unwrap();
        assert_eq!(keys, ["k1", "k2"]);
        assert!(parse_keys("a b\n").unwrap_err().starts_with("line 1"));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keys");
        std::fs::write(&file, "k1\nk2\n").unwrap();
        let k = Keys::load(&["envkey".into()], Some(&file)).unwrap();
        assert_eq!(k.count(), 3);
        for good in ["k1", "k2", "envkey"] {
            assert!(k.verify(good.as_bytes()), "{good}");
        }
        for bad in ["k", "k12", "", "K1", "envkey "] {
            assert!(!k.verify(bad.as_bytes()), "{bad}");
        }
        std::fs::write(&file, "k2\n").unwrap();
        assert!(k.reload());
        assert!(!k.verify(b"k1"));
        assert!(k.verify(b"k2") && k.verify(b"envkey"));
        assert!(!k.reload(), "unchanged file");
        std::fs::remove_file(&file).unwrap();
        assert!(!k.reload());
        assert!(k.verify(b"k2"), "an unreadable file keeps the keys in force");
    }

    #[test]
    fn a_connection_remembers_its_key_until_the_set_changes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keys");
        std::fs::write(&file, "k1\nk2\n").unwrap();
        let keys = Arc::new(Keys::load(&[], Some(&file)).unwrap());
        let g = Gate::new(Some(keys.clone()), true, &[]);
        let conn = ConnAuth::default();
        let req = |k: &str| {
            Request::builder()
                .uri("/allowed")
                .header("authorization", format!("Bearer {k}"))
                .body(())
                .unwrap()
        };
        assert!(g.http_on(&req("k1"), &conn).is_none());
        assert!(g.http_on(&req("k1"), &conn).is_none(), "remembered");
        assert!(
            g.http_on(&req("k3"), &conn).is_some(),
            "another header is checked in full"
        );
        assert!(g.http_on(&req("k1"), &conn).is_none());
        std::fs::write(&file, "k2\n").unwrap();
        assert!(keys.reload());
        assert!(
            g.http_on(&req("k1"), &conn).is_some(),
            "revoked: the remembered key is stale"
        );
        assert!(g.http_on(&req("k2"), &conn).is_none());
        assert!(!same_bytes(b"ab", b"abc") && !same_bytes(b"ab", b"ac") && same_bytes(b"ab", b"ab"));
    }

    #[test]
    fn bearer_header_forms() {
        let k = Keys::load(&["sekrit".into()], None).unwrap();
        let g = Gate::new(Some(Arc::new(k)), true, &[]);
        let req = |v: Option<&str>| {
            let mut b = Request::builder().uri("/allowed");
            if let Some(v) = v {
                b = b.header("authorization", v);
            }
            b.body(()).unwrap()
        };
        assert!(g.http(&req(Some("Bearer sekrit"))).is_none());
        assert!(g.http(&req(Some("bearer sekrit"))).is_none());
        for bad in [
            None,
            Some("sekrit"),
            Some("Basic sekrit"),
            Some("Bearer "),
            Some("Bearer sekrit2"),
        ] {
            let resp = g.http(&req(bad)).unwrap();
            assert_eq!(resp.status(), 401, "{bad:?}");
            assert_eq!(resp.headers()["www-authenticate"], "Bearer");
        }
        assert_eq!(g.refused().0, 5);
    }
}
