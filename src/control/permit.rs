//! The Permit-style REST face (control.md "Permit-style REST", seed 002):
//! `/v2/schema/{project}/{env}/{resources,roles}[/{key}]` and
//! `/v2/facts/{project}/{env}/{tenants,users,resource_instances}[/{key}]`,
//! `/v2/facts/{project}/{env}/{relationship_tuples,role_assignments}`,
//! `/v2/facts/{project}/{env}/proxy_configs[/{key}]` (URL mapping, `proxy_configs.rs`), mapped onto the write
//! path and answered from the project's current snapshot.
//!
//! # The mapping (the inverse of `sync::permit::map`, so a sidecar pulling this face with
//! `--source-protocol permit` ends up deciding as the project's snapshot does)
//! - tenants ⇄ orgs (`key`, `name`, `attributes`; Permit's `description` is accepted and not
//!   kept, an org's `parent` is kept through a PATCH and not shown).
//! - resources ⇄ resource types (`key`, `name`, `description`, `actions` as Permit's map
//!   `{action: {...}}`, a list of keys is accepted on input) plus their `roles`: a resource's
//!   role `R` is the global role `type#R`; its bare permissions `a` are `type:a`, its `extends`
//!   `e` are `type#e`.
//! - roles ⇄ the other global roles (org-scoped roles have no Permit shape and are not listed).
//!   `attr_<name>=value` filters match the role's `attributes.<name>` when the model's role
//!   carries attributes, and otherwise `name`, `description` or `key` (`attr_name=Editor`).
//! - users ⇄ users; `roles` in a user's answer are its tenant-wide assignments.
//! - resource_instances ⇄ resources (`key`, `resource`, `tenant`, `attributes`).
//! - relationship_tuples ⇄ the `parents` of resources: `{subject: parent, relation: "parent",
//!   object: child}`; only the `parent` relation exists.
//! - role_assignments ⇄ role assignments; on an instance of `type`, Permit's role `R` is the
//!   model's `type#R` when `type` defines it (as the puller maps it back).
//!
//! Lists are plain arrays, as Permit answers them, except `users` (and `role_assignments` with
//! `include_total_count=true`): `{data, total_count, page_count}`. `page` counts from 1,
//! `per_page` is 1 to 100 (default 100). `id`s are stable: a hash of the environment and the
//! item's identity (a role's is not the model's numeric `id` of perm/v1, which the write path
//! assigns and every update here keeps). The control plane keeps no per-item timestamps:
//! `created_at` and `updated_at` are `null`.
//!
//! Writes refuse references to things that do not exist (404 naming the field), break no
//! reject rule of the model (400 naming the field) and answer `X-Permd-Version`. Deletes of a
//! tenant, a role, a resource type, a resource instance or a user write their cascade as
//! explicit ops of the same batch (see `cascade`). Existence checks and cascades are computed
//! from the current snapshot and written only if the project is still at its version; when
//! another write landed first, the request is planned again on the new state (at most 8 times,
//! then 503), so a cascade never misses an item written meanwhile.

mod proxy_configs;

use super::Control;
use super::auth::db_error;
use super::db::{KeyProject, ident};
use super::http::{Body, VERSION_HEADER, full, written};
use super::write::{Written, write_planned};
use crate::model::{
    Attributes, Identity, Item, Kind, Op, Org, Permission, Resource, ResourceRef, ResourceType, Role, RoleAssignment,
    Snapshot, User, ops_from_json,
};
use crate::wire::{RequestError, json, read_body};
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

/// The largest `per_page` (Permit's).
pub const MAX_PER_PAGE: usize = 100;

type Answer = Result<Response<Body>, RequestError>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Collection {
    Resources,
    Roles,
    Tenants,
    Users,
    Instances,
    Tuples,
    Assignments,
    ProxyConfigs,
}

impl Collection {
    fn parse(area: &str, name: &str) -> Option<Collection> {
        Some(match (area, name) {
            ("schema", "resources") => Collection::Resources,
            ("schema", "roles") => Collection::Roles,
            ("facts", "tenants") => Collection::Tenants,
            ("facts", "users") => Collection::Users,
            ("facts", "resource_instances") => Collection::Instances,
            ("facts", "relationship_tuples") => Collection::Tuples,
            ("facts", "role_assignments") => Collection::Assignments,
            ("facts", "proxy_configs") => Collection::ProxyConfigs,
            _ => return None,
        })
    }

    /// Whether single objects are addressed by a key in the path.
    fn keyed(self) -> bool {
        !matches!(self, Collection::Tuples | Collection::Assignments)
    }
}

/// What a request asks of a collection.
#[derive(Clone)]
enum Action {
    List,
    Get(String),
    Create,
    Replace(String),
    Update(String),
    Delete(String),
    /// `DELETE` of the collection with a body naming the item (assignments, tuples).
    Remove,
}

/// The collection and key a path names, when it is one of this face's and its project and
/// environment are the key's own; anything else is "no route" (nothing about other projects).
fn target(path: &str, project: &KeyProject) -> Option<(Collection, Option<String>)> {
    let rest = path.strip_prefix("/v2/")?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let segs: Vec<&str> = rest.split('/').collect();
    if segs.len() > 5 {
        return None;
    }
    let (area, proj, env, name) = (segs.first()?, segs.get(1)?, segs.get(2)?, segs.get(3)?);
    if percent_decode(proj, false)? != project.project || percent_decode(env, false)? != project.env {
        return None;
    }
    let collection = Collection::parse(area, name)?;
    let key = match segs.get(4) {
        Some(k) => {
            let k = percent_decode(k, false)?;
            if k.is_empty() || !collection.keyed() {
                return None;
            }
            Some(k)
        }
        None => None,
    };
    Some((collection, key))
}

fn action(collection: Collection, key: Option<String>, method: &Method) -> Result<Action, RequestError> {
    let not_allowed = |allow: &'static str| RequestError::MethodNotAllowed {
        method: method.to_string(),
        allow,
    };
    let get = *method == Method::GET || *method == Method::HEAD;
    match key {
        None if get => Ok(Action::List),
        None if *method == Method::POST => Ok(Action::Create),
        None if *method == Method::DELETE && !collection.keyed() => Ok(Action::Remove),
        None if collection.keyed() => Err(not_allowed("GET, HEAD, POST")),
        None => Err(not_allowed("GET, HEAD, POST, DELETE")),
        Some(k) if get => Ok(Action::Get(k)),
        Some(k) if *method == Method::PATCH => Ok(Action::Update(k)),
        Some(k) if *method == Method::DELETE => Ok(Action::Delete(k)),
        Some(k) if *method == Method::PUT && collection == Collection::Users => Ok(Action::Replace(k)),
        Some(_) if collection == Collection::Users => Err(not_allowed("GET, HEAD, PUT, PATCH, DELETE")),
        Some(_) => Err(not_allowed("GET, HEAD, PATCH, DELETE")),
    }
}

/// Answers one request under `/v2/` for the key's project.
pub async fn route(ctl: &Control, project: &KeyProject, req: Request<Incoming>) -> Answer {
    let path = req.uri().path().to_owned();
    let Some((collection, key)) = target(&path, project) else {
        return Err(RequestError::NotFound(path));
    };
    let act = action(collection, key, req.method())?;
    let query = Query::parse(req.uri().query())?;
    let body = match act {
        Action::Create | Action::Replace(_) | Action::Update(_) | Action::Remove => {
            read_body(req, ctl.settings.max_body_bytes).await?
        }
        _ => Bytes::new(),
    };
    // Answers are planned on the current document and written only if the project is still
    // at its version; when another write landed first, the request is planned again. Writes
    // of this replica take the project's planning turn, so they do not race each other.
    let _turn = match act {
        Action::List | Action::Get(_) => None,
        _ => Some(ctl.groups.plan_turn(project.project_id).await),
    };
    for _ in 0..PLAN_ATTEMPTS {
        let current = ctl.snapshots.current(project.project_id).await.map_err(db_error)?;
        let cx = Ctx::new(ctl, project, current.snapshot.clone(), current.version);
        let answer = answer(&cx, collection, act.clone(), &query, &body, &path).await;
        if !cx.moved.load(std::sync::atomic::Ordering::Relaxed) {
            return answer;
        }
    }
    Err(RequestError::Retry(
        "the project changed under this write too many times; retry".into(),
    ))
}

/// How often a request is planned again when other writes keep landing first.
const PLAN_ATTEMPTS: usize = 8;

async fn answer(cx: &Ctx<'_>, collection: Collection, act: Action, query: &Query, body: &[u8], path: &str) -> Answer {
    use Collection as C;
    let (query, body) = (query, body);
    match (collection, act) {
        (C::Tenants, Action::List) => cx.list_tenants(query),
        (C::Tenants, Action::Get(k)) => cx.get_tenant(&k),
        (C::Tenants, Action::Create) => cx.create_tenant(body).await,
        (C::Tenants, Action::Update(k)) => cx.update_tenant(&k, body).await,
        (C::Tenants, Action::Delete(k)) => cx.delete_tenant(&k).await,
        (C::Users, Action::List) => cx.list_users(query),
        (C::Users, Action::Get(k)) => cx.get_user(&k),
        (C::Users, Action::Create) => cx.put_user(None, body).await,
        (C::Users, Action::Replace(k)) => cx.put_user(Some(&k), body).await,
        (C::Users, Action::Update(k)) => cx.update_user(&k, body).await,
        (C::Users, Action::Delete(k)) => cx.delete_user(&k).await,
        (C::Instances, Action::List) => cx.list_instances(query),
        (C::Instances, Action::Get(k)) => cx.get_instance(&k),
        (C::Instances, Action::Create) => cx.create_instance(body).await,
        (C::Instances, Action::Update(k)) => cx.update_instance(&k, body).await,
        (C::Instances, Action::Delete(k)) => cx.delete_instance(&k).await,
        (C::Resources, Action::List) => cx.list_resources(query),
        (C::Resources, Action::Get(k)) => cx.get_resource(&k),
        (C::Resources, Action::Create) => cx.create_resource(body).await,
        (C::Resources, Action::Update(k)) => cx.update_resource(&k, body).await,
        (C::Resources, Action::Delete(k)) => cx.delete_resource(&k).await,
        (C::Roles, Action::List) => cx.list_roles(query),
        (C::Roles, Action::Get(k)) => cx.get_role(&k),
        (C::Roles, Action::Create) => cx.create_role(body).await,
        (C::Roles, Action::Update(k)) => cx.update_role(&k, body).await,
        (C::Roles, Action::Delete(k)) => cx.delete_role(&k).await,
        (C::Tuples, Action::List) => cx.list_tuples(query),
        (C::Tuples, Action::Create) => cx.create_tuple(body).await,
        (C::Tuples, Action::Remove) => cx.remove_tuple(body).await,
        (C::Assignments, Action::List) => cx.list_assignments(query),
        (C::Assignments, Action::Create) => cx.create_assignment(body).await,
        (C::Assignments, Action::Remove) => cx.remove_assignment(body).await,
        (C::ProxyConfigs, Action::List) => cx.list_proxy_configs(query),
        (C::ProxyConfigs, Action::Get(k)) => cx.get_proxy_config(&k),
        (C::ProxyConfigs, Action::Create) => cx.create_proxy_config(body).await,
        (C::ProxyConfigs, Action::Update(k)) => cx.update_proxy_config(&k, body).await,
        (C::ProxyConfigs, Action::Delete(k)) => cx.delete_proxy_config(&k).await,
        _ => Err(RequestError::NotFound(path.to_owned())),
    }
}

// ---------------------------------------------------------------------------------------------
// Query strings, paths, bodies

/// Decodes `%XX` escapes (and `+` as a space in a query); `None` when malformed or not UTF-8.
pub(super) fn percent_decode(s: &str, plus: bool) -> Option<String> {
    fn hex(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&c) = bytes.get(i) {
        match c {
            b'%' => {
                let hi = hex(*bytes.get(i + 1)?)?;
                let lo = hex(*bytes.get(i + 2)?)?;
                out.push((hi << 4) | lo);
                i += 3;
            }
            b'+' if plus => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The decoded `name=value` pairs of a query string, in order (names may repeat).
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(q: Option<&str>) -> Result<Query, RequestError> {
        let mut pairs = Vec::new();
        for part in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            let name = percent_decode(k, true)
                .ok_or_else(|| RequestError::invalid(format!("query: `{k}` is not a valid percent-encoded name")))?;
            let value = percent_decode(v, true)
                .ok_or_else(|| RequestError::invalid(format!("`{name}`: not a valid percent-encoded UTF-8 value")))?;
            pairs.push((name, value));
        }
        Ok(Query(pairs))
    }

    /// Every value of `name`.
    fn all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The last value of `name`.
    fn last(&self, name: &str) -> Option<&str> {
        self.0.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    fn flag(&self, name: &str) -> bool {
        self.last(name).is_some_and(|v| v == "true" || v == "1")
    }

    /// `page` (from 1) and `per_page` (1 to 100, default 100).
    fn paging(&self) -> Result<(usize, usize), RequestError> {
        let page = match self.last("page") {
            None => 1,
            Some(v) => match v.parse::<usize>() {
                Ok(n) if n >= 1 => n,
                _ => {
                    return Err(RequestError::invalid(format!(
                        "`page`: `{v}` is not a page number (pages count from 1)"
                    )));
                }
            },
        };
        let per_page = match self.last("per_page") {
            None => MAX_PER_PAGE,
            Some(v) => match v.parse::<usize>() {
                Ok(n) if (1..=MAX_PER_PAGE).contains(&n) => n,
                Ok(n) if n > MAX_PER_PAGE => {
                    return Err(RequestError::invalid(format!(
                        "`per_page`: {n} is more than the maximum of {MAX_PER_PAGE}"
                    )));
                }
                _ => {
                    return Err(RequestError::invalid(format!(
                        "`per_page`: `{v}` is not a page size (1 to {MAX_PER_PAGE})"
                    )));
                }
            },
        };
        Ok((page, per_page))
    }
}

/// One page of `items`: (the page, total, page count).
fn page_of<T>(items: Vec<T>, q: &Query) -> Result<(Vec<T>, usize, usize), RequestError> {
    let (page, per_page) = q.paging()?;
    let total = items.len();
    let start = (page - 1).saturating_mul(per_page);
    let out: Vec<T> = items.into_iter().skip(start).take(per_page).collect();
    Ok((out, total, total.div_ceil(per_page)))
}

/// A plain JSON array of one page, as most of Permit's lists answer; only the page's items
/// are shown (ids hashed, roles resolved).
fn array_page<T>(items: Vec<T>, q: &Query, show: impl Fn(T) -> Value) -> Answer {
    let (page, _, _) = page_of(items, q)?;
    let page: Vec<Value> = page.into_iter().map(show).collect();
    Ok(full(json(StatusCode::OK, &Value::Array(page))))
}

/// `{data, total_count, page_count}` of one page.
fn paginated<T>(items: Vec<T>, q: &Query, show: impl Fn(T) -> Value) -> Answer {
    let (page, total, pages) = page_of(items, q)?;
    let page: Vec<Value> = page.into_iter().map(show).collect();
    Ok(full(json(
        StatusCode::OK,
        &json!({"data": page, "total_count": total, "page_count": pages}),
    )))
}

fn ok(body: &Value) -> Answer {
    Ok(full(json(StatusCode::OK, body)))
}

/// A `204` to a write, with the version after it.
fn no_content(version: u64) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::new()).boxed());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    resp.headers_mut().insert(VERSION_HEADER, HeaderValue::from(version));
    resp
}

/// Decodes a request body; a string holding NUL (which the store cannot keep) is refused with
/// its field named, as is a missing, unknown or mistyped field (`` `role_assignments[0].tenant`:
/// required ``).
fn body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, RequestError> {
    if let Ok(v) = serde_json::from_slice::<Value>(bytes)
        && let Some(at) = nul_path(&v, String::new())
    {
        let at = if at.is_empty() { "body".to_string() } else { at };
        return Err(RequestError::invalid(format!(
            "`{at}`: strings may not contain the NUL character (\\u0000)"
        )));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    match serde_path_to_error::deserialize::<_, T>(&mut de) {
        Ok(v) => {
            de.end().map_err(|e| RequestError::invalid(format!("`body`: {e}")))?;
            Ok(v)
        }
        Err(e) => {
            let path = if e.path().iter().next().is_some() {
                e.path().to_string()
            } else {
                String::new()
            };
            let inner = e.into_inner().to_string();
            // The path of an unknown field already ends with it.
            let join = |f: &str| {
                if path.is_empty() {
                    f.to_string()
                } else if path == f || path.ends_with(&format!(".{f}")) {
                    path.clone()
                } else {
                    format!("{path}.{f}")
                }
            };
            let named = |what: &str| {
                inner
                    .strip_prefix(what)
                    .and_then(|rest| rest.strip_prefix('`'))
                    .and_then(|rest| rest.split_once('`'))
                    .map(|(field, _)| field.to_string())
            };
            let msg = if let Some(f) = named("missing field ") {
                format!("`{}`: required", join(&f))
            } else if let Some(f) = named("unknown field ") {
                format!("`{}`: {inner}", join(&f))
            } else if path.is_empty() {
                format!("`body`: {inner}")
            } else {
                format!("`{path}`: {inner}")
            };
            Err(RequestError::invalid(msg))
        }
    }
}

/// The path of the first string (or object key) holding NUL.
fn nul_path(v: &Value, at: String) -> Option<String> {
    let join = |k: &str| {
        if at.is_empty() {
            k.to_string()
        } else {
            format!("{at}.{k}")
        }
    };
    match v {
        Value::String(s) if s.contains('\0') => Some(at),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .find_map(|(i, x)| nul_path(x, format!("{at}[{i}]"))),
        Value::Object(o) => o.iter().find_map(|(k, x)| {
            if k.contains('\0') {
                Some(join(&k.replace('\0', "\\u0000")))
            } else {
                nul_path(x, join(k))
            }
        }),
        _ => None,
    }
}

/// `Some(x)` for a field that is present (even `null`): PATCH tells "clear" from "keep".
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// Sets (or with `None`, removes) a field of a JSON object.
fn set(v: &mut Value, field: &str, new: Option<Value>) {
    if let Value::Object(m) = v {
        match new {
            Some(Value::Null) | None => {
                m.remove(field);
            }
            Some(x) => {
                m.insert(field.to_string(), x);
            }
        }
    }
}

/// Applies a PATCH field: absent keeps, `null` clears, a value replaces.
fn patch<T: serde::Serialize>(v: &mut Value, field: &str, new: Option<Option<T>>) {
    if let Some(new) = new {
        set(v, field, new.and_then(|x| serde_json::to_value(x).ok()));
    }
}

fn to_value<T: serde::Serialize>(x: &T) -> Result<Value, RequestError> {
    serde_json::to_value(x).map_err(|e| RequestError::invalid(format!("cannot encode the item: {e}")))
}

/// Checks an item's JSON against the model's reject rules (the very code `POST /v1/batches`
/// runs) and decodes it. An error names the field as this face calls it: `prefix` before it,
/// the model's first path component renamed by `renames` (`org` → `tenant`).
fn build<T: DeserializeOwned>(
    kind: Kind,
    value: Value,
    prefix: &str,
    renames: &[(&str, &str)],
) -> Result<T, RequestError> {
    let batch = json!({"ops": [{"op": "upsert", "kind": kind.as_str(), "value": &value}]});
    let bytes =
        serde_json::to_vec(&batch).map_err(|e| RequestError::invalid(format!("cannot encode the item: {e}")))?;
    ops_from_json(&bytes).map_err(|e| RequestError::invalid(rename_field(&e.to_string(), prefix, renames)))?;
    serde_json::from_value(value).map_err(|e| RequestError::invalid(format!("`{}`: {e}", prefix_or_body(prefix))))
}

fn prefix_or_body(prefix: &str) -> &str {
    match prefix.trim_end_matches('.') {
        "" => "body",
        p => p,
    }
}

/// `ops[0].value.permissions[1]: problem` → `` `{prefix}permissions[1]`: problem ``.
fn rename_field(msg: &str, prefix: &str, renames: &[(&str, &str)]) -> String {
    let Some(rest) = msg.strip_prefix("ops[0].value") else {
        return msg.to_string();
    };
    let (field, problem) = match rest.split_once(": ") {
        Some((f, p)) if !f.contains(' ') || f.ends_with(')') => (f, p),
        _ => ("", rest.trim_start_matches(':').trim_start()),
    };
    let field = field.strip_prefix('.').unwrap_or(field);
    if field.is_empty() {
        return format!("`{}`: {problem}", prefix_or_body(prefix));
    }
    let cut = field.find(['.', '[', ' ']).unwrap_or(field.len());
    let (head, tail) = field.split_at(cut);
    let head = renames
        .iter()
        .find(|(from, _)| *from == head)
        .map_or(head, |(_, to)| *to);
    format!("`{prefix}{head}{tail}`: {problem}")
}

/// Whether the model's roles carry `attributes` (control.md: perm/v1 `status` is one).
fn roles_have_attributes() -> bool {
    serde_json::from_value::<Role>(json!({"key": "k", "attributes": {}})).is_ok()
}

/// A 32-hex-digit id from `parts` (SHA-256, truncated): stable, like Permit's uuids.
fn hex_id(parts: &[&str]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for p in parts {
        ctx.update(p.as_bytes());
        ctx.update(&[0]);
    }
    let digest = ctx.finish();
    digest.as_ref().iter().take(16).map(|b| format!("{b:02x}")).collect()
}

fn looks_like_id(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn missing(msg: impl Into<String>) -> RequestError {
    RequestError::Missing(msg.into())
}

// ---------------------------------------------------------------------------------------------
// Lookups over one snapshot

fn find_org<'s>(s: &'s Snapshot, key: &str) -> Option<&'s Org> {
    s.orgs.iter().find(|o| o.key == key)
}

fn find_type<'s>(s: &'s Snapshot, key: &str) -> Option<&'s ResourceType> {
    s.resource_types.iter().find(|t| t.key == key)
}

fn find_global_role<'s>(s: &'s Snapshot, key: &str) -> Option<&'s Role> {
    s.roles.iter().find(|r| r.org.is_none() && r.key == key)
}

/// model.md "Role resolution": the org's own role, else the global one.
fn resolve_role<'s>(s: &'s Snapshot, org: &str, name: &str) -> Option<&'s Role> {
    s.roles
        .iter()
        .find(|r| r.org.as_deref() == Some(org) && r.key == name)
        .or_else(|| find_global_role(s, name))
}

fn find_user<'s>(s: &'s Snapshot, key: &str) -> Option<&'s User> {
    s.users.iter().find(|u| u.key == key)
}

fn find_resource<'s>(s: &'s Snapshot, resource_type: &str, key: &str) -> Option<&'s Resource> {
    s.resources
        .iter()
        .find(|r| r.resource_type == resource_type && r.key == key)
}

/// The resource type and role name of a resource's role: a global role `type#role` of an
/// existing type.
fn resource_role<'s>(s: &Snapshot, r: &'s Role) -> Option<(&'s str, &'s str)> {
    if r.org.is_some() {
        return None;
    }
    let (t, name) = r.key.split_once('#')?;
    find_type(s, t).map(|_| (t, name))
}

/// A role this face lists under `/roles`: global, and not a resource's role.
fn top_level(s: &Snapshot, r: &Role) -> bool {
    r.org.is_none() && resource_role(s, r).is_none()
}

fn instance_ref(r: &Resource) -> String {
    format!("{}:{}", r.resource_type, r.key)
}

fn resource_identity(r: &Resource) -> Identity {
    Identity::Resource {
        resource_type: r.resource_type.clone(),
        key: r.key.clone(),
    }
}

fn role_identity(r: &Role) -> Identity {
    Identity::Role {
        key: r.key.clone(),
        org: r.org.clone(),
    }
}

/// The `type#name` roles of each resource type, in document order.
fn roles_by_type(s: &Snapshot) -> HashMap<&str, Vec<(&str, &Role)>> {
    let types: HashSet<&str> = s.resource_types.iter().map(|t| t.key.as_str()).collect();
    let mut out: HashMap<&str, Vec<(&str, &Role)>> = HashMap::new();
    for r in s.roles.iter().filter(|r| r.org.is_none()) {
        if let Some((t, name)) = r.key.split_once('#')
            && types.contains(t)
        {
            out.entry(t).or_default().push((name, r));
        }
    }
    out
}

/// How an assignment's role reads in Permit: on an instance of `type` whose resource defines
/// role `R` (the global role `type#R`), `R`; else the role's key (`sync::permit::map` reads
/// it back the same way).
struct RoleNames<'s> {
    resource_roles: HashSet<(&'s str, &'s str)>,
}

impl<'s> RoleNames<'s> {
    fn new(s: &'s Snapshot) -> RoleNames<'s> {
        let resource_roles = roles_by_type(s)
            .into_iter()
            .flat_map(|(t, roles)| roles.into_iter().map(move |(name, _)| (t, name)))
            .collect();
        RoleNames { resource_roles }
    }

    fn permit_role<'a>(&self, a: &'a RoleAssignment) -> &'a str {
        if let Some(r) = a.resource.as_deref().and_then(ResourceRef::parse)
            && let Some(name) = a.role.strip_prefix(r.resource_type).and_then(|x| x.strip_prefix('#'))
            && self.resource_roles.contains(&(r.resource_type, name))
        {
            return name;
        }
        &a.role
    }
}

// ---------------------------------------------------------------------------------------------
// Request bodies (Permit's create/update shapes; fields Permit has and the model does not keep
// are accepted and ignored, unknown fields are refused so a typo does not pass silently)

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantIn {
    key: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
    #[serde(default)]
    attributes: Option<Attributes>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantPatch {
    #[serde(default, deserialize_with = "present")]
    name: Option<Option<String>>,
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
    #[serde(default, deserialize_with = "present")]
    attributes: Option<Option<Attributes>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserIn {
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    first_name: Option<String>,
    #[serde(default)]
    last_name: Option<String>,
    #[serde(default)]
    attributes: Option<Attributes>,
    #[serde(default)]
    role_assignments: Vec<UserRoleIn>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserRoleIn {
    role: String,
    tenant: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserPatch {
    #[serde(default, deserialize_with = "present")]
    email: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    first_name: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    last_name: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    attributes: Option<Option<Attributes>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InstanceIn {
    key: String,
    resource: String,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    attributes: Option<Attributes>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InstancePatch {
    #[serde(default, deserialize_with = "present")]
    attributes: Option<Option<Attributes>>,
}

/// Permit's `actions`: `{key: {name, description, ...}}`; a list of keys is accepted too.
#[derive(Deserialize)]
#[serde(untagged)]
enum ActionsIn {
    Map(BTreeMap<String, Value>),
    List(Vec<String>),
}

impl ActionsIn {
    fn keys(self) -> Vec<String> {
        match self {
            ActionsIn::Map(m) => m.into_keys().collect(),
            ActionsIn::List(l) => l,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct ResourceIn {
    key: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    urn: Option<Value>,
    #[serde(default)]
    actions: Option<ActionsIn>,
    #[serde(default)]
    roles: Option<BTreeMap<String, RoleBlock>>,
    #[serde(default)]
    attributes: Option<Value>,
    #[serde(default)]
    type_attributes: Option<Value>,
    #[serde(default)]
    relations: Option<Value>,
    #[serde(default)]
    action_groups: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct ResourcePatch {
    #[serde(default, deserialize_with = "present")]
    name: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    description: Option<Option<String>>,
    #[serde(default)]
    urn: Option<Value>,
    #[serde(default)]
    actions: Option<ActionsIn>,
    #[serde(default)]
    roles: Option<BTreeMap<String, RoleBlock>>,
    #[serde(default)]
    attributes: Option<Value>,
    #[serde(default)]
    type_attributes: Option<Value>,
    #[serde(default)]
    relations: Option<Value>,
    #[serde(default)]
    action_groups: Option<Value>,
}

/// A role inside a resource (Permit's RoleBlock): permissions are the resource's action keys.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct RoleBlock {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    permissions: Vec<String>,
    #[serde(default)]
    extends: Vec<String>,
    #[serde(default)]
    attributes: Option<Attributes>,
    #[serde(default)]
    granted_to: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct RoleIn {
    key: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    permissions: Vec<String>,
    #[serde(default)]
    extends: Vec<String>,
    #[serde(default)]
    attributes: Option<Attributes>,
    #[serde(default)]
    granted_to: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct RolePatch {
    #[serde(default, deserialize_with = "present")]
    name: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    description: Option<Option<String>>,
    #[serde(default)]
    permissions: Option<Vec<String>>,
    #[serde(default)]
    extends: Option<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    attributes: Option<Option<Attributes>>,
    #[serde(default)]
    granted_to: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TupleIn {
    subject: String,
    relation: String,
    object: String,
    #[serde(default)]
    tenant: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AssignmentIn {
    user: String,
    role: String,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    resource_instance: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// The handlers

/// One request's view: the project's snapshot at its current version, and its ids.
struct Ctx<'a> {
    ctl: &'a Control,
    project: &'a KeyProject,
    snap: Arc<Snapshot>,
    /// The version `snap` is at: writes are made only if the project is still there.
    version: u64,
    /// Set when a write found the project moved on: the request is planned again.
    moved: std::sync::atomic::AtomicBool,
    organization_id: String,
    project_id: String,
    environment_id: String,
}

impl<'a> Ctx<'a> {
    fn new(ctl: &'a Control, project: &'a KeyProject, snap: Arc<Snapshot>, version: u64) -> Ctx<'a> {
        let p = project;
        Ctx {
            ctl,
            project,
            snap,
            version,
            moved: std::sync::atomic::AtomicBool::new(false),
            organization_id: hex_id(&["organisation", &p.organisation]),
            project_id: hex_id(&["project", &p.organisation, &p.project]),
            environment_id: hex_id(&["environment", &p.organisation, &p.project, &p.env]),
        }
    }

    async fn commit(&self, ops: Vec<Op>) -> Result<Written, RequestError> {
        match write_planned(self.ctl, self.project.project_id, self.version, ops).await? {
            Some(w) => Ok(w),
            None => {
                self.moved.store(true, std::sync::atomic::Ordering::Relaxed);
                Err(RequestError::Retry("the project changed meanwhile; retry".into()))
            }
        }
    }

    /// The stable id of an item.
    fn id(&self, id: &Identity) -> String {
        hex_id(&[&self.environment_id, id.kind().as_str(), &ident(id)])
    }

    /// The fields every object of this face carries: its id and where it lives.
    fn object(&self, id: &Identity, fields: Value) -> Value {
        let mut m = match fields {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        m.insert("id".into(), Value::String(self.id(id)));
        m.insert("organization_id".into(), Value::String(self.organization_id.clone()));
        m.insert("project_id".into(), Value::String(self.project_id.clone()));
        m.insert("environment_id".into(), Value::String(self.environment_id.clone()));
        m.insert("created_at".into(), Value::Null);
        m.insert("updated_at".into(), Value::Null);
        Value::Object(m)
    }

    fn org_id(&self, key: &str) -> String {
        self.id(&Identity::Org { key: key.to_string() })
    }

    fn instance_id(&self, reference: &str) -> Value {
        match ResourceRef::parse(reference) {
            Some(r) => Value::String(self.id(&Identity::Resource {
                resource_type: r.resource_type.to_string(),
                key: r.key.to_string(),
            })),
            None => Value::Null,
        }
    }

    // --- shapes

    fn tenant_json(&self, o: &Org) -> Value {
        self.object(
            &Identity::Org { key: o.key.clone() },
            json!({
                "key": o.key,
                "name": o.name,
                "description": null,
                "attributes": o.attributes,
                "last_action_at": null,
            }),
        )
    }

    fn user_json(&self, u: &User, assignments: &[&RoleAssignment]) -> Value {
        let roles: Vec<Value> = assignments
            .iter()
            .filter(|a| a.resource.is_none())
            .map(|a| json!({"role": a.role, "tenant": a.org}))
            .collect();
        self.object(
            &Identity::User { key: u.key.clone() },
            json!({
                "key": u.key,
                "email": u.email,
                "first_name": u.first_name,
                "last_name": u.last_name,
                "attributes": u.attributes,
                "roles": roles,
            }),
        )
    }

    fn instance_json(&self, r: &Resource) -> Value {
        self.object(
            &resource_identity(r),
            json!({
                "key": r.key,
                "resource": r.resource_type,
                "tenant": r.org,
                "attributes": r.attributes,
                "resource_id": self.id(&Identity::ResourceType { key: r.resource_type.clone() }),
                "tenant_id": self.org_id(&r.org),
            }),
        )
    }

    fn tuple_json(&self, child: &Resource, parent: &str) -> Value {
        let object = instance_ref(child);
        let id = hex_id(&[&self.environment_id, "relationship_tuple", parent, "parent", &object]);
        let mut v = self.object(
            &resource_identity(child),
            json!({
                "subject": parent,
                "relation": "parent",
                "object": object,
                "tenant": child.org,
                "subject_id": self.instance_id(parent),
                "relation_id": hex_id(&[&self.environment_id, "relation", "parent"]),
                "object_id": self.instance_id(&object),
                "tenant_id": self.org_id(&child.org),
            }),
        );
        set(&mut v, "id", Some(Value::String(id)));
        v
    }

    fn role_json(&self, r: &Role) -> Value {
        let attributes = serde_json::to_value(r)
            .ok()
            .and_then(|v| v.get("attributes").cloned())
            .unwrap_or(Value::Null);
        self.object(
            &role_identity(r),
            json!({
                "key": r.key,
                "name": r.name,
                "description": r.description,
                "permissions": r.permissions,
                "extends": r.extends,
                "attributes": attributes,
                "granted_to": null,
            }),
        )
    }

    fn resource_json(&self, t: &ResourceType, roles: &[(&str, &Role)]) -> Value {
        let type_id = self.id(&Identity::ResourceType { key: t.key.clone() });
        let actions: Map<String, Value> = t
            .actions
            .iter()
            .map(|a| {
                let id = hex_id(&[&type_id, "action", a]);
                (a.clone(), json!({"key": a, "name": a, "description": null, "id": id}))
            })
            .collect();
        let prefix = format!("{}#", t.key);
        let roles: Map<String, Value> = roles
            .iter()
            .map(|(name, r)| {
                let permissions: Vec<&str> = r
                    .permissions
                    .iter()
                    .map(|p| {
                        let p = p.as_str();
                        p.strip_prefix(t.key.as_str())
                            .and_then(|x| x.strip_prefix(':'))
                            .filter(|a| !a.contains(':'))
                            .unwrap_or(p)
                    })
                    .collect();
                let extends: Vec<&str> = r
                    .extends
                    .iter()
                    .map(|e| e.strip_prefix(prefix.as_str()).unwrap_or(e))
                    .collect();
                let mut v = self.role_json(r);
                set(&mut v, "key", Some(json!(name)));
                set(&mut v, "permissions", Some(json!(permissions)));
                set(&mut v, "extends", Some(json!(extends)));
                set(&mut v, "resource", Some(json!(t.key)));
                set(&mut v, "resource_id", Some(json!(type_id)));
                (name.to_string(), v)
            })
            .collect();
        self.object(
            &Identity::ResourceType { key: t.key.clone() },
            json!({
                "key": t.key,
                "name": t.name,
                "description": t.description,
                "urn": null,
                "actions": actions,
                "roles": roles,
                "attributes": null,
                "relations": {},
            }),
        )
    }

    fn assignment_json(&self, a: &RoleAssignment, names: &RoleNames) -> Value {
        let s = &*self.snap;
        let role_id = match resolve_role(s, &a.org, &a.role) {
            Some(r) => self.id(&role_identity(r)),
            None => self.id(&Identity::Role {
                key: a.role.clone(),
                org: None,
            }),
        };
        json!({
            "id": self.id(&Identity::RoleAssignment(a.clone())),
            "user": a.user,
            "role": names.permit_role(a),
            "tenant": a.org,
            "resource_instance": a.resource,
            "resource_instance_id": a.resource.as_deref().map_or(Value::Null, |r| self.instance_id(r)),
            "user_id": self.id(&Identity::User { key: a.user.clone() }),
            "role_id": role_id,
            "tenant_id": self.org_id(&a.org),
            "organization_id": self.organization_id,
            "project_id": self.project_id,
            "environment_id": self.environment_id,
            "created_at": null,
        })
    }

    // --- lookups by the path's key (a key, or this face's id)

    fn tenant(&self, k: &str) -> Result<&Org, RequestError> {
        let s = &*self.snap;
        find_org(s, k)
            .or_else(|| {
                looks_like_id(k)
                    .then(|| s.orgs.iter().find(|o| self.org_id(&o.key) == k))
                    .flatten()
            })
            .ok_or_else(|| missing(format!("tenant `{k}` does not exist")))
    }

    fn user(&self, k: &str) -> Result<&User, RequestError> {
        let s = &*self.snap;
        find_user(s, k)
            .or_else(|| {
                looks_like_id(k)
                    .then(|| {
                        s.users
                            .iter()
                            .find(|u| self.id(&Identity::User { key: u.key.clone() }) == k)
                    })
                    .flatten()
            })
            .ok_or_else(|| missing(format!("user `{k}` does not exist")))
    }

    fn resource_type(&self, k: &str) -> Result<&ResourceType, RequestError> {
        let s = &*self.snap;
        find_type(s, k)
            .or_else(|| {
                looks_like_id(k)
                    .then(|| {
                        s.resource_types
                            .iter()
                            .find(|t| self.id(&Identity::ResourceType { key: t.key.clone() }) == k)
                    })
                    .flatten()
            })
            .ok_or_else(|| missing(format!("resource `{k}` does not exist")))
    }

    fn top_role(&self, k: &str) -> Result<&Role, RequestError> {
        let s = &*self.snap;
        find_global_role(s, k)
            .filter(|r| top_level(s, r))
            .or_else(|| {
                looks_like_id(k)
                    .then(|| {
                        s.roles
                            .iter()
                            .find(|r| top_level(s, r) && self.id(&role_identity(r)) == k)
                    })
                    .flatten()
            })
            .ok_or_else(|| missing(format!("role `{k}` does not exist")))
    }

    /// An instance by `type:key`, by a key only one instance has, or by id; `Ok(None)` when
    /// none.
    fn find_instance(&self, k: &str, at: &str) -> Result<Option<&Resource>, RequestError> {
        let s = &*self.snap;
        if let Some(r) = ResourceRef::parse(k)
            && let Some(x) = find_resource(s, r.resource_type, r.key)
        {
            return Ok(Some(x));
        }
        let mut by_key = s.resources.iter().filter(|r| r.key == k);
        if let Some(first) = by_key.next() {
            if let Some(second) = by_key.next() {
                return Err(RequestError::invalid(format!(
                    "`{at}`: `{k}` is the key of several instances (`{}`, `{}`); name one as `type:key`",
                    instance_ref(first),
                    instance_ref(second)
                )));
            }
            return Ok(Some(first));
        }
        if looks_like_id(k) {
            return Ok(s.resources.iter().find(|r| self.id(&resource_identity(r)) == k));
        }
        Ok(None)
    }

    fn instance(&self, k: &str, at: &str) -> Result<&Resource, RequestError> {
        self.find_instance(k, at)?
            .ok_or_else(|| missing(format!("`{at}`: resource instance `{k}` does not exist")))
    }

    /// A permission names an existing resource type and one of its actions (either side may
    /// be `*`); `pending` is a type being written in the same request.
    fn check_permission(&self, p: &str, pending: Option<(&str, &[String])>, at: &str) -> Result<(), RequestError> {
        let Some((t, a)) = p.split_once(':') else {
            return Err(RequestError::invalid(format!("`{at}`: `{p}` is not `resource:action`")));
        };
        if t == "*" {
            return Ok(());
        }
        let actions: &[String] = match pending {
            Some((pt, actions)) if pt == t => actions,
            _ => match find_type(&self.snap, t) {
                Some(rt) => &rt.actions,
                None => return Err(missing(format!("`{at}`: resource `{t}` does not exist"))),
            },
        };
        if a != "*" && !actions.iter().any(|x| x == a) {
            return Err(missing(format!("`{at}`: `{a}` is not an action of resource `{t}`")));
        }
        Ok(())
    }

    // --- tenants

    fn list_tenants(&self, q: &Query) -> Answer {
        let search = q.last("search");
        let items: Vec<&Org> = self
            .snap
            .orgs
            .iter()
            .filter(|o| search.is_none_or(|s| o.key.contains(s) || o.name.as_deref().is_some_and(|n| n.contains(s))))
            .collect();
        array_page(items, q, |o| self.tenant_json(o))
    }

    fn get_tenant(&self, k: &str) -> Answer {
        ok(&self.tenant_json(self.tenant(k)?))
    }

    async fn create_tenant(&self, bytes: &[u8]) -> Answer {
        let t: TenantIn = body(bytes)?;
        if find_org(&self.snap, &t.key).is_some() {
            return Err(RequestError::Conflict(format!("tenant `{}` already exists", t.key)));
        }
        let mut v = json!({"key": t.key});
        set(&mut v, "name", t.name.map(Value::String));
        set(&mut v, "attributes", t.attributes.map(Value::Object));
        let org: Org = build(Kind::Org, v, "", &[])?;
        let w = self.commit(vec![Op::Upsert(Item::Org(org.clone()))]).await?;
        Ok(written(StatusCode::CREATED, w.version, &self.tenant_json(&org)))
    }

    async fn update_tenant(&self, k: &str, bytes: &[u8]) -> Answer {
        let p: TenantPatch = body(bytes)?;
        let mut v = to_value(self.tenant(k)?)?;
        patch(&mut v, "name", p.name);
        patch(&mut v, "attributes", p.attributes);
        let org: Org = build(Kind::Org, v, "", &[])?;
        let w = self.commit(vec![Op::Upsert(Item::Org(org.clone()))]).await?;
        Ok(written(StatusCode::OK, w.version, &self.tenant_json(&org)))
    }

    async fn delete_tenant(&self, k: &str) -> Answer {
        let org = self.tenant(k)?;
        let mut gone = Gone::default();
        gone.orgs.insert(org.key.as_str());
        let w = self.commit(cascade(&self.snap, gone)).await?;
        Ok(no_content(w.version))
    }

    // --- users

    fn list_users(&self, q: &Query) -> Answer {
        let s = &*self.snap;
        let search = q.last("search");
        let roles = q.all("role");
        let mut by_user: HashMap<&str, Vec<&RoleAssignment>> = HashMap::new();
        for a in &s.role_assignments {
            by_user.entry(a.user.as_str()).or_default().push(a);
        }
        let none = Vec::new();
        let items: Vec<&User> = s
            .users
            .iter()
            .filter(|u| {
                search.is_none_or(|x| {
                    u.key.contains(x)
                        || [&u.email, &u.first_name, &u.last_name]
                            .iter()
                            .any(|f| f.as_deref().is_some_and(|f| f.contains(x)))
                })
            })
            .filter(|u| {
                roles.is_empty()
                    || by_user.get(u.key.as_str()).is_some_and(|l| {
                        l.iter()
                            .any(|a| a.resource.is_none() && roles.contains(&a.role.as_str()))
                    })
            })
            .collect();
        paginated(items, q, |u| {
            self.user_json(u, by_user.get(u.key.as_str()).unwrap_or(&none))
        })
    }

    fn user_assignments(&self, key: &str) -> Vec<&RoleAssignment> {
        self.snap.role_assignments.iter().filter(|a| a.user == key).collect()
    }

    fn get_user(&self, k: &str) -> Answer {
        let u = self.user(k)?;
        ok(&self.user_json(u, &self.user_assignments(&u.key)))
    }

    /// `POST /users` (409 when the user exists) or `PUT /users/{key}` (Permit's "sync user":
    /// creates or replaces).
    async fn put_user(&self, path_key: Option<&str>, bytes: &[u8]) -> Answer {
        let u: UserIn = body(bytes)?;
        let key = match (path_key, u.key) {
            (None, None) => return Err(RequestError::invalid("`key`: required")),
            (None, Some(k)) => k,
            (Some(p), None) => p.to_string(),
            (Some(p), Some(k)) if k == p => k,
            (Some(p), Some(k)) => {
                return Err(RequestError::invalid(format!(
                    "`key`: `{k}` differs from the user `{p}` of the path"
                )));
            }
        };
        let existed = find_user(&self.snap, &key).is_some();
        if existed && path_key.is_none() {
            return Err(RequestError::Conflict(format!("user `{key}` already exists")));
        }
        let mut v = json!({"key": key});
        set(&mut v, "email", u.email.map(Value::String));
        set(&mut v, "first_name", u.first_name.map(Value::String));
        set(&mut v, "last_name", u.last_name.map(Value::String));
        set(&mut v, "attributes", u.attributes.map(Value::Object));
        let user: User = build(Kind::User, v, "", &[])?;
        let mut ops = vec![Op::Upsert(Item::User(user.clone()))];
        let mut assigned = Vec::new();
        for (i, ra) in u.role_assignments.iter().enumerate() {
            let a = self.assignment_for(
                &user.key,
                &ra.role,
                Some(&ra.tenant),
                None,
                &format!("role_assignments[{i}]."),
            )?;
            assigned.push(a.clone());
            ops.push(Op::Upsert(Item::RoleAssignment(a)));
        }
        let w = self.commit(ops).await?;
        let mut all: Vec<RoleAssignment> = self.user_assignments(&user.key).into_iter().cloned().collect();
        all.extend(assigned.into_iter().filter(|a| !self.snap.role_assignments.contains(a)));
        let refs: Vec<&RoleAssignment> = all.iter().collect();
        let status = if existed { StatusCode::OK } else { StatusCode::CREATED };
        Ok(written(status, w.version, &self.user_json(&user, &refs)))
    }

    async fn update_user(&self, k: &str, bytes: &[u8]) -> Answer {
        let p: UserPatch = body(bytes)?;
        let mut v = to_value(self.user(k)?)?;
        patch(&mut v, "email", p.email);
        patch(&mut v, "first_name", p.first_name);
        patch(&mut v, "last_name", p.last_name);
        patch(&mut v, "attributes", p.attributes);
        let user: User = build(Kind::User, v, "", &[])?;
        let w = self.commit(vec![Op::Upsert(Item::User(user.clone()))]).await?;
        Ok(written(
            StatusCode::OK,
            w.version,
            &self.user_json(&user, &self.user_assignments(&user.key)),
        ))
    }

    async fn delete_user(&self, k: &str) -> Answer {
        let u = self.user(k)?;
        let mut gone = Gone::default();
        gone.users.insert(u.key.as_str());
        let w = self.commit(cascade(&self.snap, gone)).await?;
        Ok(no_content(w.version))
    }

    // --- resource instances

    fn list_instances(&self, q: &Query) -> Answer {
        let (tenants, types, search) = (q.all("tenant"), q.all("resource"), q.last("search"));
        let items: Vec<&Resource> = self
            .snap
            .resources
            .iter()
            .filter(|r| tenants.is_empty() || tenants.contains(&r.org.as_str()))
            .filter(|r| types.is_empty() || types.contains(&r.resource_type.as_str()))
            .filter(|r| search.is_none_or(|x| r.key.contains(x)))
            .collect();
        array_page(items, q, |r| self.instance_json(r))
    }

    fn get_instance(&self, k: &str) -> Answer {
        let r = self
            .find_instance(k, "instance")?
            .ok_or_else(|| missing(format!("resource instance `{k}` does not exist")))?;
        ok(&self.instance_json(r))
    }

    async fn create_instance(&self, bytes: &[u8]) -> Answer {
        let i: InstanceIn = body(bytes)?;
        let s = &*self.snap;
        if find_type(s, &i.resource).is_none() {
            return Err(missing(format!("`resource`: resource `{}` does not exist", i.resource)));
        }
        let Some(tenant) = i.tenant else {
            return Err(RequestError::invalid(
                "`tenant`: required, the tenant the instance belongs to",
            ));
        };
        if find_org(s, &tenant).is_none() {
            return Err(missing(format!("`tenant`: tenant `{tenant}` does not exist")));
        }
        if find_resource(s, &i.resource, &i.key).is_some() {
            return Err(RequestError::Conflict(format!(
                "resource instance `{}:{}` already exists",
                i.resource, i.key
            )));
        }
        let mut v = json!({"type": i.resource, "key": i.key, "org": tenant});
        set(&mut v, "attributes", i.attributes.map(Value::Object));
        let r: Resource = build(Kind::Resource, v, "", &[("type", "resource"), ("org", "tenant")])?;
        let w = self.commit(vec![Op::Upsert(Item::Resource(r.clone()))]).await?;
        Ok(written(StatusCode::CREATED, w.version, &self.instance_json(&r)))
    }

    async fn update_instance(&self, k: &str, bytes: &[u8]) -> Answer {
        let p: InstancePatch = body(bytes)?;
        let current = self
            .find_instance(k, "instance")?
            .ok_or_else(|| missing(format!("resource instance `{k}` does not exist")))?;
        let mut v = to_value(current)?;
        patch(&mut v, "attributes", p.attributes);
        let r: Resource = build(Kind::Resource, v, "", &[("type", "resource"), ("org", "tenant")])?;
        let w = self.commit(vec![Op::Upsert(Item::Resource(r.clone()))]).await?;
        Ok(written(StatusCode::OK, w.version, &self.instance_json(&r)))
    }

    async fn delete_instance(&self, k: &str) -> Answer {
        let r = self
            .find_instance(k, "instance")?
            .ok_or_else(|| missing(format!("resource instance `{k}` does not exist")))?;
        let mut gone = Gone::default();
        gone.resources.insert((r.resource_type.as_str(), r.key.as_str()));
        let w = self.commit(cascade(&self.snap, gone)).await?;
        Ok(no_content(w.version))
    }

    // --- relationship tuples (`parent` only: the `parents` of resources)

    fn list_tuples(&self, q: &Query) -> Answer {
        let (subjects, relations, objects) = (q.all("subject"), q.all("relation"), q.all("object"));
        let (tenants, subject_types, object_types) = (q.all("tenant"), q.all("subject_type"), q.all("object_type"));
        if !relations.is_empty() && !relations.contains(&"parent") {
            return array_page(Vec::<Value>::new(), q, |v| v);
        }
        let mut items: Vec<(&Resource, &String)> = Vec::new();
        for child in &self.snap.resources {
            if !tenants.is_empty() && !tenants.contains(&child.org.as_str()) {
                continue;
            }
            if !object_types.is_empty() && !object_types.contains(&child.resource_type.as_str()) {
                continue;
            }
            let object = instance_ref(child);
            if !objects.is_empty() && !objects.contains(&object.as_str()) {
                continue;
            }
            for p in &child.parents {
                let ptype = ResourceRef::parse(p).map_or("", |r| r.resource_type);
                if (subjects.is_empty() || subjects.contains(&p.as_str()))
                    && (subject_types.is_empty() || subject_types.contains(&ptype))
                {
                    items.push((child, p));
                }
            }
        }
        array_page(items, q, |(child, p)| self.tuple_json(child, p))
    }

    async fn create_tuple(&self, bytes: &[u8]) -> Answer {
        let t: TupleIn = body(bytes)?;
        if t.relation != "parent" {
            return Err(RequestError::invalid(format!(
                "`relation`: `{}` is not kept; only `parent` (the subject contains the object) is",
                t.relation
            )));
        }
        let subject = self.instance(&t.subject, "subject")?;
        let object = self.instance(&t.object, "object")?;
        if let Some(tenant) = &t.tenant {
            if find_org(&self.snap, tenant).is_none() {
                return Err(missing(format!("`tenant`: tenant `{tenant}` does not exist")));
            }
            if *tenant != object.org {
                return Err(RequestError::invalid(format!(
                    "`tenant`: the object `{}` is in tenant `{}`, not `{tenant}`",
                    instance_ref(object),
                    object.org
                )));
            }
        }
        if subject.org != object.org {
            return Err(RequestError::invalid(format!(
                "`subject`: `{}` is in tenant `{}` and the object `{}` in `{}`; a parent is in its child's tenant",
                instance_ref(subject),
                subject.org,
                instance_ref(object),
                object.org
            )));
        }
        let parent = instance_ref(subject);
        if object.parents.contains(&parent) {
            return Err(RequestError::Conflict(format!(
                "relationship tuple `{parent}` parent `{}` already exists",
                instance_ref(object)
            )));
        }
        let mut v = to_value(object)?;
        let mut parents = object.parents.clone();
        parents.push(parent.clone());
        set(&mut v, "parents", Some(json!(parents)));
        let child: Resource = build(Kind::Resource, v, "", &[("parents", "subject")])?;
        let w = self.commit(vec![Op::Upsert(Item::Resource(child.clone()))]).await?;
        Ok(written(
            StatusCode::CREATED,
            w.version,
            &self.tuple_json(&child, &parent),
        ))
    }

    async fn remove_tuple(&self, bytes: &[u8]) -> Answer {
        let t: TupleIn = body(bytes)?;
        let object = self.instance(&t.object, "object")?;
        let parent = match self.find_instance(&t.subject, "subject")? {
            Some(s) => instance_ref(s),
            None => t.subject.clone(),
        };
        if t.relation != "parent" || !object.parents.contains(&parent) {
            return Err(missing(format!(
                "relationship tuple `{}` {} `{}` does not exist",
                t.subject, t.relation, t.object
            )));
        }
        let mut child = object.clone();
        child.parents.retain(|p| *p != parent);
        let w = self.commit(vec![Op::Upsert(Item::Resource(child))]).await?;
        Ok(no_content(w.version))
    }

    // --- resources (resource types and their roles)

    fn list_resources(&self, q: &Query) -> Answer {
        let s = &*self.snap;
        let roles = roles_by_type(s);
        let items: Vec<&ResourceType> = s.resource_types.iter().collect();
        array_page(items, q, |t| {
            self.resource_json(t, roles.get(t.key.as_str()).map(Vec::as_slice).unwrap_or_default())
        })
    }

    fn get_resource(&self, k: &str) -> Answer {
        let t = self.resource_type(k)?;
        let roles = roles_by_type(&self.snap);
        ok(&self.resource_json(t, roles.get(t.key.as_str()).map(Vec::as_slice).unwrap_or_default()))
    }

    fn check_resource_key(key: &str) -> Result<(), RequestError> {
        if key.contains([':', '#']) {
            return Err(RequestError::invalid(format!(
                "`key`: `{key}` holds `:` or `#`, which separate a resource from its actions and roles"
            )));
        }
        Ok(())
    }

    fn check_actions(actions: &[String]) -> Result<(), RequestError> {
        if let Some(a) = actions.iter().find(|a| a.contains(':')) {
            return Err(RequestError::invalid(format!(
                "`actions.{a}`: an action key may not hold `:`, which separates a resource from its action"
            )));
        }
        Ok(())
    }

    /// The model roles `type#R` of a resource's role blocks: bare permissions qualified with
    /// the type, `extends` naming roles of the same resource. `base` gives a role's current
    /// JSON, so fields this face does not show (a role's `id`) are kept.
    fn resource_roles(
        &self,
        t: &str,
        actions: &[String],
        blocks: BTreeMap<String, RoleBlock>,
    ) -> Result<Vec<Role>, RequestError> {
        let attributes_ok = roles_have_attributes();
        let mut out = Vec::with_capacity(blocks.len());
        for (name, block) in &blocks {
            let at = format!("roles.{name}.");
            let key = format!("{t}#{name}");
            let mut permissions = Vec::with_capacity(block.permissions.len());
            for (i, p) in block.permissions.iter().enumerate() {
                let q = if p.contains(':') { p.clone() } else { format!("{t}:{p}") };
                self.check_permission(&q, Some((t, actions)), &format!("{at}permissions[{i}]"))?;
                permissions.push(q);
            }
            let mut extends = Vec::with_capacity(block.extends.len());
            for (i, e) in block.extends.iter().enumerate() {
                if !blocks.contains_key(e) {
                    return Err(missing(format!("`{at}extends[{i}]`: resource `{t}` has no role `{e}`")));
                }
                extends.push(format!("{t}#{e}"));
            }
            let mut v = match find_global_role(&self.snap, &key) {
                Some(r) => to_value(r)?,
                None => json!({}),
            };
            set(&mut v, "key", Some(json!(key)));
            set(&mut v, "name", block.name.clone().map(Value::String));
            set(&mut v, "description", block.description.clone().map(Value::String));
            set(&mut v, "permissions", Some(json!(permissions)));
            set(&mut v, "extends", Some(json!(extends)));
            if let Some(attrs) = block.attributes.as_ref().filter(|a| !a.is_empty()) {
                if !attributes_ok {
                    return Err(no_role_attributes(&format!("{at}attributes")));
                }
                set(&mut v, "attributes", Some(Value::Object(attrs.clone())));
            }
            out.push(build(Kind::Role, v, &at, &[])?);
        }
        Ok(out)
    }

    async fn create_resource(&self, bytes: &[u8]) -> Answer {
        let r: ResourceIn = body(bytes)?;
        Self::check_resource_key(&r.key)?;
        if find_type(&self.snap, &r.key).is_some() {
            return Err(RequestError::Conflict(format!("resource `{}` already exists", r.key)));
        }
        let actions = r.actions.map(ActionsIn::keys).unwrap_or_default();
        Self::check_actions(&actions)?;
        let mut v = json!({"key": r.key, "actions": actions});
        set(&mut v, "name", r.name.map(Value::String));
        set(&mut v, "description", r.description.map(Value::String));
        let t: ResourceType = build(Kind::ResourceType, v, "", &[])?;
        let roles = self.resource_roles(&t.key, &t.actions, r.roles.unwrap_or_default())?;
        let mut ops = vec![Op::Upsert(Item::ResourceType(t.clone()))];
        ops.extend(roles.iter().cloned().map(|r| Op::Upsert(Item::Role(r))));
        let w = self.commit(ops).await?;
        Ok(written(
            StatusCode::CREATED,
            w.version,
            &self.shown_resource(&t, &roles),
        ))
    }

    fn shown_resource(&self, t: &ResourceType, roles: &[Role]) -> Value {
        let prefix = format!("{}#", t.key);
        let named: Vec<(&str, &Role)> = roles
            .iter()
            .filter_map(|r| r.key.strip_prefix(prefix.as_str()).map(|n| (n, r)))
            .collect();
        self.resource_json(t, &named)
    }

    async fn update_resource(&self, k: &str, bytes: &[u8]) -> Answer {
        let p: ResourcePatch = body(bytes)?;
        let s = &*self.snap;
        let current = self.resource_type(k)?;
        let mut v = to_value(current)?;
        if let Some(actions) = p.actions {
            let actions = actions.keys();
            Self::check_actions(&actions)?;
            set(&mut v, "actions", Some(json!(actions)));
        }
        patch(&mut v, "name", p.name);
        patch(&mut v, "description", p.description);
        let t: ResourceType = build(Kind::ResourceType, v, "", &[])?;
        let existing: Vec<&Role> = roles_by_type(s)
            .remove(t.key.as_str())
            .unwrap_or_default()
            .into_iter()
            .map(|(_, r)| r)
            .collect();
        let mut ops = Vec::new();
        let roles = match p.roles {
            Some(blocks) => {
                let roles = self.resource_roles(&t.key, &t.actions, blocks)?;
                let kept: HashSet<&str> = roles.iter().map(|r| r.key.as_str()).collect();
                let mut gone = Gone::default();
                for r in existing.iter().filter(|r| !kept.contains(r.key.as_str())) {
                    gone.roles.insert((None, r.key.as_str()));
                }
                if !gone.roles.is_empty() {
                    ops.extend(cascade(s, gone));
                }
                roles
            }
            None => existing.into_iter().cloned().collect(),
        };
        // Only what changes goes into the batch (a role the cascade touched is written again
        // as the request defines it).
        let touched: HashSet<String> = ops
            .iter()
            .filter_map(|op| match op {
                Op::Upsert(Item::Role(r)) => Some(r.key.clone()),
                _ => None,
            })
            .collect();
        if Some(&t) != find_type(s, &t.key) {
            ops.push(Op::Upsert(Item::ResourceType(t.clone())));
        }
        for r in &roles {
            if Some(r) != find_global_role(s, &r.key) || touched.contains(&r.key) {
                ops.push(Op::Upsert(Item::Role(r.clone())));
            }
        }
        let w = self.commit(ops).await?;
        Ok(written(StatusCode::OK, w.version, &self.shown_resource(&t, &roles)))
    }

    async fn delete_resource(&self, k: &str) -> Answer {
        let t = self.resource_type(k)?;
        let mut gone = Gone::default();
        gone.types.insert(t.key.as_str());
        let w = self.commit(cascade(&self.snap, gone)).await?;
        Ok(no_content(w.version))
    }

    // --- roles (top-level)

    fn list_roles(&self, q: &Query) -> Answer {
        let s = &*self.snap;
        let filters: Vec<(&str, &str)> =
            q.0.iter()
                .filter_map(|(k, v)| k.strip_prefix("attr_").map(|name| (name, v.as_str())))
                .collect();
        let types: HashSet<&str> = s.resource_types.iter().map(|t| t.key.as_str()).collect();
        let resource_role = |r: &Role| r.key.split_once('#').is_some_and(|(t, _)| types.contains(t));
        let items: Vec<&Role> = s
            .roles
            .iter()
            .filter(|r| r.org.is_none() && !resource_role(r))
            .filter(|r| filters.is_empty() || role_matches(r, &filters))
            .collect();
        array_page(items, q, |r| self.role_json(r))
    }

    fn get_role(&self, k: &str) -> Answer {
        ok(&self.role_json(self.top_role(k)?))
    }

    /// Permissions and `extends` of a top-level role name what exists.
    /// Only the lists a request gives are checked: a PATCH of a name does not trip over a
    /// reference that went dangling through another API.
    fn check_role_refs(
        &self,
        key: &str,
        permissions: Option<&[Permission]>,
        extends: Option<&[String]>,
    ) -> Result<(), RequestError> {
        for (i, p) in permissions.unwrap_or_default().iter().enumerate() {
            self.check_permission(p.as_str(), None, &format!("permissions[{i}]"))?;
        }
        for (i, e) in extends.unwrap_or_default().iter().enumerate() {
            if e != key && find_global_role(&self.snap, e).is_none() {
                return Err(missing(format!("`extends[{i}]`: role `{e}` does not exist")));
            }
        }
        Ok(())
    }

    async fn create_role(&self, bytes: &[u8]) -> Answer {
        let r: RoleIn = body(bytes)?;
        if r.key.contains('#') {
            return Err(RequestError::invalid(format!(
                "`key`: `{}` holds `#`, which names a resource's role (`document#editor`); define those in the resource's `roles`",
                r.key
            )));
        }
        if find_global_role(&self.snap, &r.key).is_some() {
            return Err(RequestError::Conflict(format!("role `{}` already exists", r.key)));
        }
        let mut v = json!({"key": r.key, "permissions": r.permissions, "extends": r.extends});
        set(&mut v, "name", r.name.map(Value::String));
        set(&mut v, "description", r.description.map(Value::String));
        if let Some(attrs) = r.attributes.filter(|a| !a.is_empty()) {
            if !roles_have_attributes() {
                return Err(no_role_attributes("attributes"));
            }
            set(&mut v, "attributes", Some(Value::Object(attrs)));
        }
        let role: Role = build(Kind::Role, v, "", &[])?;
        self.check_role_refs(&role.key, Some(&role.permissions), Some(&role.extends))?;
        let w = self.commit(vec![Op::Upsert(Item::Role(role.clone()))]).await?;
        Ok(written(StatusCode::CREATED, w.version, &self.role_json(&role)))
    }

    async fn update_role(&self, k: &str, bytes: &[u8]) -> Answer {
        let p: RolePatch = body(bytes)?;
        let current = self.top_role(k)?;
        let mut v = to_value(current)?;
        patch(&mut v, "name", p.name);
        patch(&mut v, "description", p.description);
        let (new_permissions, new_extends) = (p.permissions.is_some(), p.extends.is_some());
        if let Some(perms) = p.permissions {
            set(&mut v, "permissions", Some(json!(perms)));
        }
        if let Some(extends) = p.extends {
            set(&mut v, "extends", Some(json!(extends)));
        }
        if let Some(attrs) = p.attributes {
            if attrs.as_ref().is_some_and(|a| !a.is_empty()) && !roles_have_attributes() {
                return Err(no_role_attributes("attributes"));
            }
            if roles_have_attributes() {
                set(&mut v, "attributes", attrs.map(Value::Object));
            }
        }
        let role: Role = build(Kind::Role, v, "", &[])?;
        self.check_role_refs(
            &role.key,
            new_permissions.then_some(role.permissions.as_slice()),
            new_extends.then_some(role.extends.as_slice()),
        )?;
        let w = self.commit(vec![Op::Upsert(Item::Role(role.clone()))]).await?;
        Ok(written(StatusCode::OK, w.version, &self.role_json(&role)))
    }

    async fn delete_role(&self, k: &str) -> Answer {
        let r = self.top_role(k)?;
        let mut gone = Gone::default();
        gone.roles.insert((None, r.key.as_str()));
        let w = self.commit(cascade(&self.snap, gone)).await?;
        Ok(no_content(w.version))
    }

    // --- role assignments

    fn list_assignments(&self, q: &Query) -> Answer {
        let s = &*self.snap;
        let names = RoleNames::new(s);
        let (users, tenants, roles) = (q.all("user"), q.all("tenant"), q.all("role"));
        let (types, instances) = (q.all("resource"), q.all("resource_instance"));
        // Seed 002: with both filters, an assignment on an instance counts only when the
        // instance is in the last tenant given.
        let instance_tenant = (!instances.is_empty()).then(|| tenants.last().copied()).flatten();
        let items: Vec<&RoleAssignment> = s
            .role_assignments
            .iter()
            .filter(|a| users.is_empty() || users.contains(&a.user.as_str()))
            .filter(|a| tenants.is_empty() || tenants.contains(&a.org.as_str()))
            .filter(|a| instance_tenant.is_none_or(|t| a.org == t))
            .filter(|a| roles.is_empty() || roles.contains(&a.role.as_str()) || roles.contains(&names.permit_role(a)))
            .filter(|a| {
                types.is_empty()
                    || a.resource
                        .as_deref()
                        .and_then(ResourceRef::parse)
                        .is_some_and(|r| types.contains(&r.resource_type))
            })
            .filter(|a| {
                instances.is_empty()
                    || a.resource.as_deref().is_some_and(|r| {
                        instances.contains(&r)
                            || instances.iter().any(|i| looks_like_id(i) && self.instance_id(r) == *i)
                    })
            })
            .collect();
        let show = |a: &RoleAssignment| self.assignment_json(a, &names);
        if q.flag("include_total_count") {
            paginated(items, q, show)
        } else {
            array_page(items, q, show)
        }
    }

    /// The model assignment a Permit assignment names, refusing what does not exist: the
    /// tenant, the instance, a role that resolves neither as the instance's resource role nor
    /// in the tenant. `at` prefixes field names (`role_assignments[0].`).
    fn assignment_for(
        &self,
        user: &str,
        role: &str,
        tenant: Option<&str>,
        instance: Option<&str>,
        at: &str,
    ) -> Result<RoleAssignment, RequestError> {
        let s = &*self.snap;
        let inst = match instance {
            Some(i) => Some(self.instance(i, &format!("{at}resource_instance"))?),
            None => None,
        };
        let org = match (tenant, inst) {
            (Some(t), _) => t,
            (None, Some(r)) => r.org.as_str(),
            (None, None) => {
                return Err(RequestError::invalid(format!(
                    "`{at}tenant`: required for a tenant-wide role assignment"
                )));
            }
        };
        if find_org(s, org).is_none() {
            return Err(missing(format!("`{at}tenant`: tenant `{org}` does not exist")));
        }
        if let Some(r) = inst
            && r.org != org
        {
            return Err(RequestError::invalid(format!(
                "`{at}tenant`: resource instance `{}` is in tenant `{}`, not `{org}`",
                instance_ref(r),
                r.org
            )));
        }
        let role_key = match inst {
            Some(r)
                if find_type(s, &r.resource_type).is_some()
                    && find_global_role(s, &format!("{}#{role}", r.resource_type)).is_some() =>
            {
                format!("{}#{role}", r.resource_type)
            }
            _ if resolve_role(s, org, role).is_some() => role.to_string(),
            Some(r) => {
                return Err(missing(format!(
                    "`{at}role`: role `{role}` is neither a role of resource `{}` nor a role in tenant `{org}`",
                    r.resource_type
                )));
            }
            None => {
                return Err(missing(format!(
                    "`{at}role`: role `{role}` does not resolve in tenant `{org}`"
                )));
            }
        };
        let mut v = json!({"user": user, "role": role_key, "org": org});
        set(&mut v, "resource", inst.map(|r| Value::String(instance_ref(r))));
        build(
            Kind::RoleAssignment,
            v,
            at,
            &[("org", "tenant"), ("resource", "resource_instance")],
        )
    }

    async fn create_assignment(&self, bytes: &[u8]) -> Answer {
        let a: AssignmentIn = body(bytes)?;
        let ra = self.assignment_for(
            &a.user,
            &a.role,
            a.tenant.as_deref(),
            a.resource_instance.as_deref(),
            "",
        )?;
        if self.snap.role_assignments.contains(&ra) {
            return Err(RequestError::Conflict(format!(
                "user `{}` already has role `{}` in tenant `{}`{}",
                ra.user,
                a.role,
                ra.org,
                ra.resource.as_deref().map(|r| format!(" on `{r}`")).unwrap_or_default()
            )));
        }
        let w = self.commit(vec![Op::Upsert(Item::RoleAssignment(ra.clone()))]).await?;
        let names = RoleNames::new(&self.snap);
        Ok(written(
            StatusCode::CREATED,
            w.version,
            &self.assignment_json(&ra, &names),
        ))
    }

    async fn remove_assignment(&self, bytes: &[u8]) -> Answer {
        let a: AssignmentIn = body(bytes)?;
        let s = &*self.snap;
        if a.tenant.is_none() && a.resource_instance.is_none() {
            return Err(RequestError::invalid(
                "`tenant`: required for a tenant-wide role assignment",
            ));
        }
        if let Some(t) = &a.tenant
            && find_org(s, t).is_none()
        {
            return Err(missing(format!("`tenant`: tenant `{t}` does not exist")));
        }
        let resource = match &a.resource_instance {
            Some(i) => Some(match self.find_instance(i, "resource_instance")? {
                Some(r) => instance_ref(r),
                None if i.contains(':') => i.clone(),
                None => {
                    return Err(missing(format!(
                        "`resource_instance`: resource instance `{i}` does not exist"
                    )));
                }
            }),
            None => None,
        };
        let names = RoleNames::new(s);
        let ops: Vec<Op> = s
            .role_assignments
            .iter()
            .filter(|x| x.user == a.user && x.resource == resource)
            .filter(|x| a.tenant.as_ref().is_none_or(|t| x.org == *t))
            .filter(|x| names.permit_role(x) == a.role || x.role == a.role)
            .map(|x| Op::Delete(Identity::RoleAssignment(x.clone())))
            .collect();
        if ops.is_empty() {
            return Err(missing(format!(
                "role assignment of role `{}` to user `{}`{}{} does not exist",
                a.role,
                a.user,
                a.tenant
                    .as_deref()
                    .map(|t| format!(" in tenant `{t}`"))
                    .unwrap_or_default(),
                resource.as_deref().map(|r| format!(" on `{r}`")).unwrap_or_default()
            )));
        }
        let w = self.commit(ops).await?;
        Ok(no_content(w.version))
    }
}

fn no_role_attributes(at: &str) -> RequestError {
    RequestError::invalid(format!(
        "`{at}`: roles carry no attributes in this control plane; `attr_name` and `attr_description` filter on a role's name and description"
    ))
}

/// Whether a role passes every `attr_<name>=value` filter: its `attributes.<name>` when the
/// model's roles carry attributes and this one has it, else its `name`, `description` or
/// `key`. A non-string value matches its JSON text (`attr_level=3`).
fn role_matches(r: &Role, filters: &[(&str, &str)]) -> bool {
    let v = serde_json::to_value(r).unwrap_or(Value::Null);
    let attrs = v.get("attributes").and_then(Value::as_object);
    filters.iter().all(|(name, want)| {
        let got = attrs.and_then(|a| a.get(*name)).or_else(|| {
            matches!(*name, "name" | "description" | "key")
                .then(|| v.get(*name))
                .flatten()
        });
        match got {
            Some(Value::String(s)) => s == want,
            Some(Value::Null) | None => false,
            Some(other) => {
                let text = other.to_string();
                text == *want
            }
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Cascades

/// What a delete removes; [`cascade`] adds what goes with it.
#[derive(Default)]
struct Gone<'s> {
    orgs: HashSet<&'s str>,
    types: HashSet<&'s str>,
    /// (org for an org-scoped role, key)
    roles: HashSet<(Option<&'s str>, &'s str)>,
    resources: HashSet<(&'s str, &'s str)>,
    users: HashSet<&'s str>,
}

/// The ops of a delete and everything it takes with it, so a sidecar applies exactly what the
/// database did (control.md "Writes and versions"):
/// - a tenant: its org-scoped roles and its resource instances (below), every assignment and
///   grant in it; orgs whose `parent` it was lose that parent;
/// - a resource type: its instances and its roles `type#R` (below); permissions naming the
///   type leave every other role;
/// - a role: the assignments and grants whose role resolves to it (model.md "Role
///   resolution": an org's own role of that key shields them) and its place in `extends`;
/// - a resource instance: assignments and grants on it; it leaves its children's `parents`;
/// - a user: its assignments.
///
/// Items are removed with explicit delete ops, items that only lose a reference are upserted
/// without it; everything is read from one snapshot.
fn cascade<'s>(s: &'s Snapshot, mut gone: Gone<'s>) -> Vec<Op> {
    for r in &s.roles {
        match r.org.as_deref() {
            Some(o) if gone.orgs.contains(o) => {
                gone.roles.insert((Some(o), r.key.as_str()));
            }
            None if r.key.split_once('#').is_some_and(|(t, _)| gone.types.contains(t)) => {
                gone.roles.insert((None, r.key.as_str()));
            }
            _ => {}
        }
    }
    for x in &s.resources {
        if gone.orgs.contains(x.org.as_str()) || gone.types.contains(x.resource_type.as_str()) {
            gone.resources.insert((x.resource_type.as_str(), x.key.as_str()));
        }
    }
    let gone = gone;
    let scoped: HashSet<(&str, &str)> = s
        .roles
        .iter()
        .filter_map(|r| r.org.as_deref().map(|o| (o, r.key.as_str())))
        .collect();
    let global: HashSet<&str> = s
        .roles
        .iter()
        .filter(|r| r.org.is_none())
        .map(|r| r.key.as_str())
        .collect();
    let role_gone = |scope: Option<&str>, name: &str| match scope {
        Some(o) if scoped.contains(&(o, name)) => gone.roles.contains(&(Some(o), name)),
        _ => global.contains(name) && gone.roles.contains(&(None, name)),
    };
    let resource_gone =
        |r: &str| ResourceRef::parse(r).is_some_and(|r| gone.resources.contains(&(r.resource_type, r.key)));
    let mut ops = Vec::new();
    for a in &s.role_assignments {
        if gone.orgs.contains(a.org.as_str())
            || gone.users.contains(a.user.as_str())
            || a.resource.as_deref().is_some_and(resource_gone)
            || role_gone(Some(&a.org), &a.role)
        {
            ops.push(Op::Delete(Identity::RoleAssignment(a.clone())));
        }
    }
    for g in &s.role_grants {
        if gone.orgs.contains(g.org.as_str()) || resource_gone(&g.resource) || role_gone(Some(&g.org), &g.role) {
            ops.push(Op::Delete(Identity::RoleGrant {
                org: g.org.clone(),
                role: g.role.clone(),
                resource: g.resource.clone(),
            }));
        }
    }
    for r in &s.roles {
        if gone.roles.contains(&(r.org.as_deref(), r.key.as_str())) {
            continue;
        }
        let extends: Vec<String> = r
            .extends
            .iter()
            .filter(|e| !role_gone(r.org.as_deref(), e))
            .cloned()
            .collect();
        let permissions: Vec<Permission> = r
            .permissions
            .iter()
            .filter(|p| {
                !p.permission
                    .split_once(':')
                    .is_some_and(|(t, _)| gone.types.contains(t))
            })
            .cloned()
            .collect();
        if extends.len() != r.extends.len() || permissions.len() != r.permissions.len() {
            let mut r = r.clone();
            r.extends = extends;
            r.permissions = permissions;
            ops.push(Op::Upsert(Item::Role(r)));
        }
    }
    for x in &s.resources {
        if gone.resources.contains(&(x.resource_type.as_str(), x.key.as_str())) {
            continue;
        }
        if x.parents.iter().any(|p| resource_gone(p)) {
            let mut x = x.clone();
            x.parents.retain(|p| !resource_gone(p));
            ops.push(Op::Upsert(Item::Resource(x)));
        }
    }
    for o in &s.orgs {
        if !gone.orgs.contains(o.key.as_str()) && o.parent.as_deref().is_some_and(|p| gone.orgs.contains(p)) {
            let mut o = o.clone();
            o.parent = None;
            ops.push(Op::Upsert(Item::Org(o)));
        }
    }
    for x in s
        .resources
        .iter()
        .filter(|x| gone.resources.contains(&(x.resource_type.as_str(), x.key.as_str())))
    {
        ops.push(Op::Delete(resource_identity(x)));
    }
    for r in s
        .roles
        .iter()
        .filter(|r| gone.roles.contains(&(r.org.as_deref(), r.key.as_str())))
    {
        ops.push(Op::Delete(role_identity(r)));
    }
    for t in s.resource_types.iter().filter(|t| gone.types.contains(t.key.as_str())) {
        ops.push(Op::Delete(Identity::ResourceType { key: t.key.clone() }));
    }
    for o in s.orgs.iter().filter(|o| gone.orgs.contains(o.key.as_str())) {
        ops.push(Op::Delete(Identity::Org { key: o.key.clone() }));
    }
    for u in s.users.iter().filter(|u| gone.users.contains(u.key.as_str())) {
        ops.push(Op::Delete(Identity::User { key: u.key.clone() }));
    }
    ops
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::model::Encoding;

    fn doc(yaml: &str) -> Snapshot {
        Snapshot::load(yaml.as_bytes(), Encoding::Yaml).unwrap()
    }

    #[test]
    fn percent_decoding_and_queries() {
        assert_eq!(percent_decode("a%20b%3Ac", false).as_deref(), Some("a b:c"));
        assert_eq!(percent_decode("a+b", true).as_deref(), Some("a b"));
        assert_eq!(percent_decode("a+b", false).as_deref(), Some("a+b"));
        assert_eq!(percent_decode("%e2%9c%93", false).as_deref(), Some("✓"));
        assert!(percent_decode("%zz", false).is_none());
        assert!(percent_decode("%4", false).is_none());
        assert!(percent_decode("%ff", false).is_none());
        let q = Query::parse(Some("user=a&user=b%26c&page=2&per_page=10&x")).unwrap();
        assert_eq!(q.all("user"), ["a", "b&c"]);
        assert_eq!(q.paging().unwrap(), (2, 10));
        assert_eq!(q.last("x"), Some(""));
        for bad in ["page=0", "page=x", "per_page=0", "per_page=101", "per_page=-1"] {
            let err = Query::parse(Some(bad)).unwrap().paging().unwrap_err().to_string();
            let name = bad.split('=').next().unwrap();
            assert!(err.starts_with(&format!("`{name}`")), "{bad}: {err}");
        }
    }

    #[test]
    fn model_errors_are_renamed_to_this_face_s_fields() {
        let err = build::<Resource>(
            Kind::Resource,
            json!({"type": "doc", "key": "", "org": "acme"}),
            "",
            &[("type", "resource"), ("org", "tenant")],
        )
        .unwrap_err()
        .to_string();
        assert_eq!(err, "`key`: must not be empty");
        let err = build::<Resource>(
            Kind::Resource,
            json!({"type": "doc", "key": "k", "org": ""}),
            "",
            &[("org", "tenant")],
        )
        .unwrap_err()
        .to_string();
        assert_eq!(err, "`tenant`: must not be empty");
        let err = build::<Role>(
            Kind::Role,
            json!({"key": "doc#r", "permissions": ["bad"]}),
            "roles.r.",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("`roles.r.permissions[0]`"), "{err}");
        let err = build::<Org>(Kind::Org, json!({"key": "k", "nope": 1}), "", &[])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("`body`: unknown field `nope`"), "{err}");
    }

    #[test]
    fn nul_is_found_with_its_path() {
        let v = json!({"a": {"b": ["x", "y\u{0}"]}});
        assert_eq!(nul_path(&v, String::new()).as_deref(), Some("a.b[1]"));
        assert!(
            body::<Value>(br#"{"key": "a\u0000b"}"#)
                .unwrap_err()
                .to_string()
                .starts_with("`key`")
        );
        let err = |b: &[u8]| body::<UserIn>(b).err().unwrap().to_string();
        assert_eq!(
            err(br#"{"key": "u", "role_assignments": [{"role": "r"}]}"#),
            "`role_assignments[0].tenant`: required"
        );
        let e = err(br#"{"key": "u", "emial": "x"}"#);
        assert!(e.starts_with("`emial`: unknown field"), "{e}");
        assert!(err(br#"{"key": 7}"#).starts_with("`key`: invalid type"));
        assert!(err(br#"{"key": "u"} x"#).starts_with("`body`: trailing"));
        assert!(err(b"").starts_with("`body`: EOF"));
    }

    #[test]
    fn a_tenant_delete_takes_its_roles_resources_assignments_and_grants() {
        let s = doc(
            "format: 1\nversion: 1\norgs: [{key: a}, {key: b}, {key: c, parent: a}]\n\
             resource_types: [{key: doc, actions: [read]}]\n\
             roles: [{key: v, permissions: ['doc:read']}, {key: g, org: a}, {key: g, org: b}]\n\
             resources: [{type: doc, key: x, org: a}, {type: doc, key: y, org: a, parents: ['doc:x']},\
                         {type: doc, key: z, org: b, parents: ['doc:x']}]\n\
             role_assignments: [{user: u, role: v, org: a}, {user: u, role: v, org: b},\
                                {user: w, role: v, org: b, resource: 'doc:x'}]\n\
             role_grants: [{org: a, role: g, resource: 'doc:x', actions: ['doc:read']}]\n",
        );
        let mut gone = Gone::default();
        gone.orgs.insert("a");
        let ops = cascade(&s, gone);
        let mut after = s.clone();
        after.apply_ops(&ops);
        assert_eq!(
            after
                .orgs
                .iter()
                .map(|o| (o.key.as_str(), o.parent.as_deref()))
                .collect::<Vec<_>>(),
            [("b", None), ("c", None)]
        );
        assert_eq!(after.roles.len(), 2, "{:?}", after.roles);
        assert!(after.roles.iter().all(|r| r.org.as_deref() != Some("a")));
        assert_eq!(after.resources.len(), 1);
        assert!(after.resources[0].parents.is_empty());
        assert_eq!(after.role_assignments.len(), 1);
        assert_eq!(after.role_assignments[0].org, "b");
        assert!(after.role_assignments[0].resource.is_none());
        assert!(after.role_grants.is_empty());
    }

    #[test]
    fn a_role_delete_spares_what_an_org_s_own_role_resolves() {
        let s = doc("format: 1\nversion: 1\norgs: [{key: a}, {key: b}]\n\
             roles: [{key: v}, {key: v, org: a}, {key: e, extends: [v]}, {key: f, org: b, extends: [v]}]\n\
             role_assignments: [{user: u, role: v, org: a}, {user: u, role: v, org: b}]\n");
        let mut gone = Gone::default();
        gone.roles.insert((None, "v"));
        let mut after = s.clone();
        after.apply_ops(&cascade(&s, gone));
        assert_eq!(after.role_assignments.len(), 1);
        assert_eq!(after.role_assignments[0].org, "a");
        assert!(after.roles.iter().all(|r| r.extends.is_empty()));
        assert_eq!(after.roles.len(), 3);
    }
}
