//! The bodies of the fuzz targets in `fuzz/`, as plain functions, so the fuzz crate and the
//! corpus replay test (`tests/fuzz_corpus.rs`) run the same checks. Not a public API.
//!
//! Each function takes arbitrary bytes and returns `Err` when an invariant of permd does not
//! hold; a panic inside permd is a finding too. Nothing here writes files or opens sockets.

use crate::api::http::{HttpState, handle};
use crate::index::{Index, Query, Subject};
use crate::model::{DeltaBatch, Encoding, ResourceRef, Snapshot, validate};
use crate::store::Store;
use crate::sync::LineSplitter;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use std::collections::BTreeSet;
use std::sync::{Arc, OnceLock};

/// The example snapshot of `config/`, the fixed base of the `delta` and `http_bodies` targets.
pub const EXAMPLE_SNAPSHOT: &str = include_str!("../config/example-snapshot.yaml");

/// In a `delta` input, separates the base document (YAML or JSON) from the batch lines.
pub const DELTA_SEPARATOR: &[u8] = b"\n%%\n";

/// The routes `http_bodies` drives, chosen by the input's first byte. The last one takes its
/// input as the query string; the others as the body.
pub const HTTP_ROUTES: [&str; 21] = [
    "/allowed",
    "/allowed/bulk",
    "/v1/enforce",
    "/access/v1/evaluation",
    "/access/v1/evaluations",
    "/user-permissions",
    "/authorized_users",
    "/access/v1/search/subject",
    "/access/v1/search/resource",
    "/access/v1/search/action",
    "/v1/resources",
    "/v1/menus",
    "/v1/groups",
    "/v1/role",
    "/v1/roles",
    "/v1/user-roles",
    "/v1/role-users",
    "/v1/group-tree",
    "/v1/menu-tree",
    "/v1/orgs",
    "/local/role_assignments",
];

/// Most queries derived from one document; keeps one run fast whatever the input's size.
const MAX_NAMES: usize = 5;

/// An invariant that did not hold, naming the target and what differed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    #[error("snapshot: {0}")]
    Snapshot(String),
    #[error("image: {0}")]
    Image(String),
    #[error("delta: {0}")]
    Delta(String),
    #[error("http `{route}`: {problem}")]
    Http { route: &'static str, problem: String },
    #[error("ndjson: {0}")]
    Lines(String),
    #[error("condition: {0}")]
    Condition(String),
    #[error("setup: {0}")]
    Setup(String),
}

fn example() -> Result<&'static Snapshot, Violation> {
    static DOC: OnceLock<Result<Snapshot, String>> = OnceLock::new();
    DOC.get_or_init(|| Snapshot::load(EXAMPLE_SNAPSHOT.as_bytes(), Encoding::Yaml).map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| Violation::Setup(format!("the example snapshot does not load: {e}")))
}

// ---------------------------------------------------------------------------------------
// Queries derived from a document.

/// Names taken from a document (and a batch), plus names it does not have.
#[derive(Default)]
struct Vocabulary<'a> {
    users: BTreeSet<&'a str>,
    roles: BTreeSet<&'a str>,
    orgs: BTreeSet<&'a str>,
    actions: BTreeSet<&'a str>,
    /// (type, key); a key of `None` is a type-level check.
    targets: BTreeSet<(&'a str, Option<&'a str>)>,
}

impl<'a> Vocabulary<'a> {
    fn add_doc(&mut self, s: &'a Snapshot) {
        let refs = s
            .role_assignments
            .iter()
            .filter_map(|a| a.resource.as_deref())
            .chain(s.role_grants.iter().map(|g| g.resource.as_str()))
            .chain(s.resources.iter().flat_map(|r| r.parents.iter().map(String::as_str)));
        for r in refs.filter_map(ResourceRef::parse) {
            self.targets.insert((r.resource_type, Some(r.key)));
        }
        for r in &s.resources {
            self.targets.insert((&r.resource_type, Some(&r.key)));
        }
        for t in &s.resource_types {
            self.targets.insert((&t.key, None));
            self.actions.extend(t.actions.iter().map(String::as_str));
        }
        self.users.extend(s.users.iter().map(|u| u.key.as_str()));
        self.users.extend(s.role_assignments.iter().map(|a| a.user.as_str()));
        self.roles.extend(s.roles.iter().map(|r| r.key.as_str()));
        self.orgs.extend(s.orgs.iter().map(|o| o.key.as_str()));
    }

    fn queries(&self) -> Vec<Query<'a>> {
        let cap = |set: &BTreeSet<&'a str>, unknown: &'static str| -> Vec<&'a str> {
            set.iter().copied().take(MAX_NAMES).chain([unknown]).collect()
        };
        let users = cap(&self.users, "fuzz-no-user");
        let roles = cap(&self.roles, "fuzz-no-role");
        let actions = cap(&self.actions, "fuzz-no-action");
        let orgs: Vec<Option<&'a str>> = std::iter::once(None)
            .chain(cap(&self.orgs, "fuzz-no-org").into_iter().map(Some))
            .collect();
        let targets: Vec<(&'a str, Option<&'a str>)> = self
            .targets
            .iter()
            .copied()
            .take(3 * MAX_NAMES)
            .chain([("fuzz-no-type", None), ("fuzz-no-type", Some("fuzz-no-key"))])
            .collect();
        let types: Vec<&'a str> = targets.iter().map(|t| t.0).collect();
        let subjects = users
            .iter()
            .map(|u| Subject::User(u))
            .chain(roles.iter().take(2).map(|r| Subject::Role(r)));
        let mut out = Vec::new();
        let mut n = 0usize;
        for subject in subjects {
            for &(resource_type, resource_key) in &targets {
                for &action in &actions {
                    n += 1;
                    // Orgs and group types rotate rather than multiply the queries.
                    let org = orgs.get(n % orgs.len()).copied().flatten();
                    let group_type = match (n % 7, resource_key) {
                        (0, Some(_)) => types.get(n % types.len()).copied(),
                        _ => None,
                    };
                    out.push(Query {
                        subject,
                        action,
                        resource_type,
                        resource_key,
                        org,
                        group_type,
                        request: None,
                    });
                }
            }
        }
        out
    }
}

fn queries_of<'a>(docs: &[&'a Snapshot]) -> Vec<Query<'a>> {
    let mut names = Vocabulary::default();
    for d in docs {
        names.add_doc(d);
    }
    names.queries()
}

/// One decision and its explanation agree with each other and with the index's version.
fn check_decision(ix: &Index, q: &Query<'_>) -> Result<(), String> {
    let d = ix.decide(q);
    if d.allow != d.reason.allows() {
        return Err(format!("{q:?}: allow {} with reason {}", d.allow, d.reason.as_str()));
    }
    if d.version != ix.version() {
        return Err(format!(
            "{q:?}: decision at version {} from index {}",
            d.version,
            ix.version()
        ));
    }
    let e = ix.explain(q, &d);
    if e.reason != d.reason.as_str() || e.step != d.reason.step() {
        return Err(format!(
            "{q:?}: explanation says {} (step {}), decision {} (step {})",
            e.reason,
            e.step,
            d.reason.as_str(),
            d.reason.step()
        ));
    }
    for a in ix.allowed_actions(q) {
        if !ix.decide(&Query { action: a, ..*q }).allow {
            return Err(format!("{q:?}: allowed_actions lists `{a}`, decide denies it"));
        }
    }
    Ok(())
}

/// Two indexes decide every query alike.
fn same_decisions(a: &Index, b: &Index, queries: &[Query<'_>]) -> Result<(), String> {
    for q in queries {
        let (x, y) = (a.decide(q), b.decide(q));
        if (x.allow, x.reason, x.version) != (y.allow, y.reason, y.version) {
            return Err(format!("{q:?}: {x:?} vs {y:?}"));
        }
    }
    Ok(())
}

fn subject_key(s: Subject<'_>) -> (bool, &str) {
    match s {
        Subject::User(u) => (false, u),
        Subject::Role(r) => (true, r),
    }
}

/// The instance keys `list_resources` gives for a few (subject, type, action), without an org.
fn listings(ix: &Index, queries: &[Query<'_>]) -> Vec<BTreeSet<(String, String)>> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for q in queries {
        if out.len() >= 12 || !seen.insert((subject_key(q.subject), q.resource_type, q.action)) {
            continue;
        }
        let ids = ix.list_resources(q.subject, q.resource_type, q.action, None);
        out.push(
            ids.iter()
                .filter_map(|id| ix.instance_names(id))
                .map(|(t, k, _)| (t.to_string(), k.to_string()))
                .collect(),
        );
    }
    out
}

/// `list_resources` without an org equals asking `decide()` about each existing instance of
/// the type.
fn check_listings(ix: &Index, doc: &Snapshot, queries: &[Query<'_>]) -> Result<(), String> {
    let mut seen = BTreeSet::new();
    for q in queries {
        if seen.len() >= 12 || !seen.insert((subject_key(q.subject), q.resource_type, q.action)) {
            continue;
        }
        let listed: BTreeSet<(String, String)> = ix
            .list_resources(q.subject, q.resource_type, q.action, None)
            .iter()
            .filter_map(|id| ix.instance_names(id))
            .map(|(t, k, _)| (t.to_string(), k.to_string()))
            .collect();
        // Only instances that exist (type and org known) are listed; a check on a key whose
        // org is unknown is decided in `default`, as for a key the document lacks.
        let org_known = |o: &str| doc.orgs.iter().any(|x| x.key == o);
        let type_known = doc.resource_types.iter().any(|x| x.key == q.resource_type);
        let decided: BTreeSet<(String, String)> = doc
            .resources
            .iter()
            .filter(|r| type_known && r.resource_type == q.resource_type && org_known(&r.org))
            .filter(|r| {
                ix.decide(&Query {
                    resource_key: Some(&r.key),
                    org: None,
                    group_type: None,
                    ..*q
                })
                .allow
            })
            .map(|r| (r.resource_type.clone(), r.key.clone()))
            .collect();
        if listed != decided {
            return Err(format!(
                "list_resources({:?}, `{}`, `{}`) gives {listed:?}, decide allows {decided:?}",
                q.subject, q.resource_type, q.action
            ));
        }
    }
    Ok(())
}

/// The document with lists sorted where the index does not keep document order (also used by
/// tests/model_prop.rs to compare `to_snapshot` with a document).
pub fn normal(mut s: Snapshot) -> Snapshot {
    s.users.sort_by(|a, b| a.key.cmp(&b.key));
    s.resources
        .sort_by(|a, b| (&a.resource_type, &a.key).cmp(&(&b.resource_type, &b.key)));
    s.role_assignments.sort();
    s.role_grants
        .sort_by(|a, b| (&a.org, &a.role, &a.resource).cmp(&(&b.org, &b.role, &b.resource)));
    s
}

// ---------------------------------------------------------------------------------------
// Targets.

/// Bytes → YAML, JSON and MessagePack decoding → validation → `Index::build` → decisions,
/// explanations and listings; the index's document and every encoding round-trip.
pub fn snapshot(data: &[u8]) -> Result<(), Violation> {
    for encoding in [Encoding::Yaml, Encoding::Json, Encoding::MessagePack] {
        let decoded = Snapshot::decode(data, encoding);
        if encoding == Encoding::MessagePack {
            same_as_rmp_serde(data, &decoded)?;
            streamed_agrees(data)?;
        }
        let Ok(doc) = decoded else {
            continue;
        };
        let valid = validate(&doc);
        let loaded = Snapshot::load(data, encoding);
        if loaded.as_ref().err() != valid.as_ref().err() {
            return Err(Violation::Snapshot(format!(
                "{encoding:?}: load gives {loaded:?}, decode + validate gives {valid:?}"
            )));
        }
        if valid.is_ok() {
            check_document(&doc, encoding).map_err(Violation::Snapshot)?;
        }
    }
    Ok(())
}

/// MessagePack's fast path (`model::msgpack`, in small chunks on two threads too) gives what
/// rmp-serde over the whole document gives, or leaves the document to it.
fn same_as_rmp_serde(data: &[u8], decoded: &Result<Snapshot, crate::model::SnapshotError>) -> Result<(), Violation> {
    use crate::model::msgpack;
    let reference = msgpack::reference(data);
    if decoded.as_ref().map_err(|e| e.to_string())
        != reference.as_ref().map_err(|e| format!("document does not parse: {e}"))
    {
        return Err(Violation::Snapshot(format!(
            "MessagePack: decode gives {decoded:?}, rmp-serde gives {reference:?}"
        )));
    }
    let plan = msgpack::Plan {
        chunk: 2,
        threads: 2,
        depth: 0,
    };
    match msgpack::decode(data, plan) {
        Some(fast) if reference.as_ref() != Ok(&fast) => Err(Violation::Snapshot(format!(
            "MessagePack: the fast path in chunks gives {fast:?}, rmp-serde gives {reference:?}"
        ))),
        _ => Ok(()),
    }
}

/// The streamed load (`Index::from_msgpack`, through a window of a few bytes) takes a
/// document only when the reference path (decode, validate) does, and builds what
/// `Index::build` builds of it, ids included.
fn streamed_agrees(data: &[u8]) -> Result<(), Violation> {
    let Ok(crate::index::Streamed::Built(streamed)) = Index::from_msgpack_windowed(data, 16) else {
        return Ok(());
    };
    let doc = Snapshot::load(data, Encoding::MessagePack).map_err(|e| {
        Violation::Snapshot(format!(
            "MessagePack: the streamed load takes a document the reference path refuses: {e}"
        ))
    })?;
    let built = Index::build(&doc);
    if streamed.to_snapshot() != built.to_snapshot() || streamed.counts() != built.counts() {
        return Err(Violation::Snapshot(
            "MessagePack: the streamed load builds another index than Index::build".into(),
        ));
    }
    Ok(())
}

fn check_document(doc: &Snapshot, from: Encoding) -> Result<(), String> {
    let ix = Index::build(doc);
    if ix.version() != doc.version {
        return Err(format!("index version {} from document {}", ix.version(), doc.version));
    }
    let queries = queries_of(&[doc]);
    for q in &queries {
        check_decision(&ix, q)?;
    }
    check_listings(&ix, doc, &queries)?;
    let _ = ix.ignored();
    // The index holds the document: to_snapshot gives it back and builds the same index.
    let back = ix.to_snapshot();
    if normal(back.clone()) != normal(doc.clone()) {
        return Err(format!("{from:?}: to_snapshot differs from the document"));
    }
    validate(&back).map_err(|e| format!("to_snapshot does not validate: {e}"))?;
    let rebuilt = Index::build(&back);
    same_decisions(&ix, &rebuilt, &queries).map_err(|e| format!("rebuilt from to_snapshot: {e}"))?;
    if ix.counts() != rebuilt.counts() {
        return Err("rebuilt from to_snapshot: counts differ".into());
    }
    // Every encoding permd writes (the cache, the upstream, `permd convert`) reads back equal.
    for to in [Encoding::Yaml, Encoding::Json, Encoding::MessagePack] {
        let bytes = doc
            .encode(to)
            .map_err(|e| format!("{from:?} document, {to:?}: encode fails: {e}"))?;
        let again = Snapshot::load(&bytes, to).map_err(|e| format!("{from:?} document, {to:?}: reload fails: {e}"))?;
        if &again != doc {
            return Err(format!("{from:?} document, {to:?}: reloads different"));
        }
    }
    Ok(())
}

/// An index image's body (what follows the header: magic, format, layout, crate version, so
/// that seeds outlive a version bump) → `Index::read_image`, which refuses or gives an index
/// that decides, explains and lists without panicking, and whose own image reads back as
/// itself.
pub fn image(data: &[u8]) -> Result<(), Violation> {
    let mut bytes = crate::index::image_header();
    bytes.extend_from_slice(data);
    let Ok(ix) = Index::read_image(&bytes) else {
        return Ok(());
    };
    let fail = |what: String| Violation::Image(what);
    let doc = ix.to_snapshot();
    let queries = queries_of(&[&doc]);
    for q in &queries {
        check_decision(&ix, q).map_err(fail)?;
    }
    let _ = listings(&ix, &queries);
    let _ = ix.ignored();
    let mut again = Vec::new();
    ix.write_image(&mut again)
        .map_err(|e| fail(format!("a read image does not write: {e}")))?;
    let back = Index::read_image(&again).map_err(|e| fail(format!("its own image does not read: {e}")))?;
    if back.to_snapshot() != doc || back.counts() != ix.counts() {
        return Err(fail("its own image reads as another index".into()));
    }
    same_decisions(&ix, &back, &queries).map_err(fail)?;
    Ok(())
}

/// The body of `doc`'s index image (see [`image`]): a seed of the `image` target.
pub fn image_seed(doc: &Snapshot) -> Result<Vec<u8>, Violation> {
    let mut bytes = Vec::new();
    Index::build(doc)
        .write_image(&mut bytes)
        .map_err(|e| Violation::Image(e.to_string()))?;
    Ok(bytes.split_off(crate::index::image_header().len()))
}

/// A base document and delta batch lines: `Index::apply` equals `Index::build` of the
/// document with `Snapshot::apply_ops`, or both refuse. The input is `base`, the separator
/// `\n%%\n`, then one batch per line; without the separator the base is the example snapshot
/// (version 42) and the whole input is batch lines.
pub fn delta(data: &[u8]) -> Result<(), Violation> {
    delta_applied(data).map(|_| ())
}

/// `delta`, returning how many batches applied.
pub fn delta_applied(data: &[u8]) -> Result<usize, Violation> {
    let split = data.windows(DELTA_SEPARATOR.len()).position(|w| w == DELTA_SEPARATOR);
    let (mut doc, lines) = match split {
        Some(at) => {
            let (base, rest) = data.split_at(at);
            let decoded = Snapshot::load(base, Encoding::Yaml).or_else(|_| Snapshot::load(base, Encoding::Json));
            let Ok(doc) = decoded else { return Ok(0) };
            (doc, rest.get(DELTA_SEPARATOR.len()..).unwrap_or_default())
        }
        None => (example()?.clone(), data),
    };
    let mut ix = Index::build(&doc);
    let mut applied = 0;
    for line in lines.split(|b| *b == b'\n').take(8) {
        let Ok(batch) = DeltaBatch::from_json(line) else {
            continue;
        };
        match DeltaBatch::from_json(&batch.to_json()) {
            Ok(again) if again == batch => {}
            other => {
                return Err(Violation::Delta(format!(
                    "batch does not round-trip through to_json: {other:?}"
                )));
            }
        }
        let queries_before = queries_of(&[&doc]);
        // Warm the per-version query cache, so a stale one after the apply shows.
        let _ = listings(&ix, &queries_before);
        let before = normal(ix.to_snapshot());
        let next = match ix.apply(&batch) {
            Err(e) if batch.from_version == doc.version => {
                return Err(Violation::Delta(format!("a contiguous batch is refused: {e}")));
            }
            Err(_) => continue,
            Ok(_) if batch.from_version != doc.version => {
                return Err(Violation::Delta(format!(
                    "batch from {} applied to version {}",
                    batch.from_version, doc.version
                )));
            }
            Ok(next) => next,
        };
        let mut after = doc.clone();
        after.apply_ops(&batch.ops);
        after.version = batch.to_version;
        check_applied(&ix, &before, &next, &after, &doc).map_err(Violation::Delta)?;
        doc = after;
        ix = next;
        applied += 1;
    }
    Ok(applied)
}

fn check_applied(
    old: &Index,
    before: &Snapshot,
    next: &Index,
    doc: &Snapshot,
    old_doc: &Snapshot,
) -> Result<(), String> {
    if normal(old.to_snapshot()) != *before {
        return Err("apply changed the index it was applied to".into());
    }
    validate(doc).map_err(|e| format!("the document with the batch applied does not validate: {e}"))?;
    if normal(next.to_snapshot()) != normal(doc.clone()) {
        return Err("apply's to_snapshot differs from apply_ops on the document".into());
    }
    let rebuilt = Index::build(doc);
    if next.version() != rebuilt.version() || next.counts() != rebuilt.counts() {
        return Err(format!(
            "apply gives version {} {:?}, build gives {} {:?}",
            next.version(),
            next.counts(),
            rebuilt.version(),
            rebuilt.counts()
        ));
    }
    let queries = queries_of(&[doc, old_doc]);
    same_decisions(next, &rebuilt, &queries).map_err(|e| format!("apply vs build: {e}"))?;
    for q in &queries {
        check_decision(next, q)?;
    }
    if listings(next, &queries) != listings(&rebuilt, &queries) {
        return Err("apply vs build: list_resources differ".into());
    }
    check_listings(next, doc, &queries)?;
    if next.ignored().len() != rebuilt.ignored().len() {
        return Err("apply vs build: ignored items differ".into());
    }
    Ok(())
}

struct Http {
    runtime: tokio::runtime::Runtime,
    state: Arc<HttpState>,
}

fn http() -> Result<&'static Http, Violation> {
    static HTTP: OnceLock<Result<Http, String>> = OnceLock::new();
    HTTP.get_or_init(|| {
        let doc = Snapshot::load(EXAMPLE_SNAPSHOT.as_bytes(), Encoding::Yaml).map_err(|e| e.to_string())?;
        let store = Store::new("fuzz");
        store.publish(Index::build(&doc));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let state = Arc::new(HttpState {
            store,
            max_body_bytes: 64 * 1024,
            max_staleness: None,
            admin_only: false,
            forward: None,
            proxy: Arc::default(),
        });
        Ok(Http { runtime, state })
    })
    .as_ref()
    .map_err(|e| Violation::Setup(e.clone()))
}

/// One request to the real router with the example snapshot loaded. The first byte picks the
/// route (`HTTP_ROUTES`), the second sets `?explain` (bit 0), a JSON content type (bit 1) and
/// an `x-request-id` (bit 2); the rest is the body (the query string for the GET route).
/// The answer must be 200, 400, 404 or 413, with a JSON object (or list) body; errors carry
/// `error.code` and `error.message`.
pub fn http_bodies(data: &[u8]) -> Result<(), Violation> {
    http_answer(data).map(|_| ())
}

/// `http_bodies`, returning the status and JSON body of the answer (`None`: no request).
pub fn http_answer(data: &[u8]) -> Result<Option<(u16, serde_json::Value)>, Violation> {
    let h = http()?;
    let (&pick, rest) = data.split_first().unwrap_or((&0, &[][..]));
    let (&flags, body) = rest.split_first().unwrap_or((&0, &[][..]));
    let route = HTTP_ROUTES[usize::from(pick) % HTTP_ROUTES.len()];
    let fail = |problem: String| Violation::Http { route, problem };
    let get = route == "/local/role_assignments";
    let mut uri = route.to_string();
    if get {
        // Only bytes a URI may carry; the rest are dropped.
        let query: String = body
            .iter()
            .map(|b| char::from(*b))
            .filter(|c| c.is_ascii_graphic() && *c != '#')
            .collect();
        uri.push('?');
        uri.push_str(&query);
    } else if flags & 1 != 0 {
        uri.push_str("?explain=true");
    }
    let mut req = http::Request::builder()
        .method(if get { http::Method::GET } else { http::Method::POST })
        .uri(&uri);
    if flags & 2 != 0 {
        req = req.header(http::header::CONTENT_TYPE, "application/json");
    }
    if flags & 4 != 0 {
        req = req.header("x-request-id", "fuzz");
    }
    let body = if get {
        Bytes::new()
    } else {
        Bytes::copy_from_slice(body)
    };
    let Ok(req) = req.body(Full::new(body)) else {
        return Ok(None); // not a request hyper would have parsed
    };
    let (status, content_type, bytes) = h.runtime.block_on(async {
        let resp = match handle(req, h.state.clone()).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
        let status = resp.status();
        let content_type = resp.headers().get(http::header::CONTENT_TYPE).cloned();
        let bytes = match resp.into_body().collect().await {
            Ok(c) => c.to_bytes(),
            Err(never) => match never {},
        };
        (status, content_type, bytes)
    });
    if ![200, 400, 404, 413].contains(&status.as_u16()) {
        return Err(fail(format!("status {status}")));
    }
    if content_type.as_ref().and_then(|v| v.to_str().ok()) != Some("application/json") {
        return Err(fail(format!("content type {content_type:?}")));
    }
    let value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| fail(format!("body is not JSON ({e}): {bytes:?}")))?;
    // Permit's `/local/role_assignments` answers a bare list; everything else an object.
    if !(value.is_object() || (status == http::StatusCode::OK && value.is_array())) {
        return Err(fail(format!("body is not an object: {value}")));
    }
    if status != http::StatusCode::OK {
        let code = value.pointer("/error/code").and_then(|v| v.as_str());
        let message = value.pointer("/error/message").and_then(|v| v.as_str());
        if code.is_none() || message.is_none() {
            return Err(fail(format!("error without code and message: {value}")));
        }
    }
    Ok(Some((status.as_u16(), value)))
}

/// The delta stream's line reader against a plain split of the whole input. The first byte
/// is the line limit, the second the number of chunk-size bytes that follow (mod 16); the
/// rest is the stream, fed in chunks of those sizes, cycled.
pub fn ndjson(data: &[u8]) -> Result<(), Violation> {
    let (&limit, rest) = data.split_first().unwrap_or((&0, &[][..]));
    let (&n, rest) = rest.split_first().unwrap_or((&0, &[][..]));
    let (sizes, stream) = rest.split_at(usize::from(n % 16).min(rest.len()));
    let limit = usize::from(limit);
    let fail = Violation::Lines;

    // The plain reading: every `\n` ends a line; what follows the last one is the tail.
    let mut segments: Vec<&[u8]> = stream.split(|b| *b == b'\n').collect();
    let want_tail = segments.pop().unwrap_or_default();
    let first_long = segments
        .iter()
        .chain([&want_tail])
        .position(|s| s.len() > limit)
        .map(|i| i as u64 + 1);

    let mut splitter = LineSplitter::new(limit);
    let mut got: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut at = 0usize;
    let mut turn = 0usize;
    while at < stream.len() {
        let size = sizes
            .get(turn % sizes.len().max(1))
            .map_or(stream.len(), |s| usize::from(*s));
        turn += 1;
        // Empty chunks are fed too, but a run of them must not stall the loop.
        let size = if turn > stream.len() + sizes.len() {
            stream.len()
        } else {
            size
        };
        let end = at.saturating_add(size).min(stream.len());
        let chunk = stream.get(at..end).unwrap_or_default();
        at = end;
        match splitter.feed(chunk) {
            Ok(lines) => got.extend(lines),
            Err(e) => {
                if Some(e.line) != first_long || e.limit != limit {
                    return Err(fail(format!("{e} but the first long line is {first_long:?}")));
                }
                // Lines before the long one came out in order, and nothing after it.
                return check_lines(&got, &segments, e.line - 1);
            }
        }
        if splitter.tail().len() > limit {
            return Err(fail(format!(
                "tail of {} bytes kept over a limit of {limit}",
                splitter.tail().len()
            )));
        }
    }
    if let Some(line) = first_long {
        return Err(fail(format!("line {line} is over the limit and was not refused")));
    }
    check_lines(&got, &segments, segments.len() as u64)?;
    if got.len() != segments.len() || splitter.tail() != want_tail {
        return Err(fail(format!(
            "{} lines and tail {:?}; want {} lines and tail {:?}",
            got.len(),
            splitter.tail(),
            segments.len(),
            want_tail
        )));
    }
    if splitter.lines_done() != segments.len() as u64 {
        return Err(fail(format!(
            "lines_done {} of {}",
            splitter.lines_done(),
            segments.len()
        )));
    }
    Ok(())
}

/// `got` is a prefix of the first `upto` segments, numbered from 1.
fn check_lines(got: &[(u64, Vec<u8>)], segments: &[&[u8]], upto: u64) -> Result<(), Violation> {
    if got.len() as u64 > upto {
        return Err(Violation::Lines(format!(
            "{} lines out, at most {upto} expected",
            got.len()
        )));
    }
    for (i, (number, line)) in got.iter().enumerate() {
        if *number != i as u64 + 1 || segments.get(i) != Some(&line.as_slice()) {
            return Err(Violation::Lines(format!("line {number} at position {i} is {line:?}")));
        }
    }
    Ok(())
}

/// The longest one evaluation of a fuzzed condition may take.
const CONDITION_BUDGET: std::time::Duration = std::time::Duration::from_secs(1);

/// A CEL condition against attribute documents (model.md §5). The input is the expression,
/// a line `%%`, then a JSON object whose `user`, `resource`, `org` and `context` are the
/// attributes (stored and requested alike; `request` the request's user and resource
/// attributes). Compiling never panics; a condition that compiles evaluates, within a bounded
/// time, to an outcome, the same one twice; one that does not compile is refused with a message.
pub fn condition(data: &[u8]) -> Result<(), Violation> {
    use crate::cond::{Condition, OrgView, RequestData, ResourceView, Scope, UserView};
    use crate::model::Attributes;
    let (expr, doc) = match data.windows(4).position(|w| w == b"\n%%\n") {
        Some(at) => (&data[..at], &data[at + 4..]),
        None => (data, &b""[..]),
    };
    let Ok(expr) = std::str::from_utf8(expr) else {
        return Ok(());
    };
    let compiled = match Condition::compile(expr) {
        Ok(c) => c,
        Err(message) if message.is_empty() => {
            return Err(Violation::Condition(format!("`{expr}` refused without a message")));
        }
        Err(_) => return Ok(()),
    };
    let doc: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(doc).unwrap_or_default();
    let obj = |k: &str| -> Option<Attributes> { doc.get(k).and_then(|v| v.as_object()).cloned() };
    let (user, resource, org, context) = (obj("user"), obj("resource"), obj("org"), obj("context"));
    let request = doc.get("request").and_then(|v| v.as_object());
    let data = RequestData {
        user: request.and_then(|r| r.get("user")).and_then(|v| v.as_object()).cloned(),
        resource: request
            .and_then(|r| r.get("resource"))
            .and_then(|v| v.as_object())
            .cloned(),
        context: context.clone(),
        now_unix_nanos: Some(1_700_000_000_000_000_000),
    };
    let scope = Scope {
        user: UserView {
            key: "alice",
            email: Some("alice@example.com"),
            stored: user.as_ref(),
            request: data.user.as_ref(),
        },
        resource: ResourceView {
            resource_type: "document",
            key: "d1",
            org: "acme",
            stored: resource.as_ref(),
            request: data.resource.as_ref(),
        },
        org: OrgView {
            key: "acme",
            stored: org.as_ref(),
        },
        action: "read",
        context: data.context.as_ref(),
        request: Some(&data),
    };
    let started = std::time::Instant::now();
    let first = compiled.eval(&scope);
    let took = started.elapsed();
    if took > CONDITION_BUDGET {
        return Err(Violation::Condition(format!("`{expr}` took {took:?} to evaluate")));
    }
    let again = compiled.eval(&scope);
    if again != first {
        return Err(Violation::Condition(format!(
            "`{expr}` gave {first:?}, then {again:?} on the same data"
        )));
    }
    Ok(())
}
