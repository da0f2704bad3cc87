//! The query endpoints: Permit `/user-permissions`, `/authorized_users` and
//! `/local/role_assignments`, AuthZEN search (subject, resource, action), and the JSON routes
//! of the perm/v1 read RPCs. Decode, ask the index (through `api::reads` for perm/v1), encode;
//! every list is paged and says when there is more.

use super::checks::Ctx;
use super::input::request_data;
use super::{RequestError, decode, json};
use crate::api::grpc::perm;
use crate::api::reads::{self, Paged, Paging};
use crate::index::{
    AssignmentFilter, Evidence, Index, Query, Subject, UserPermissionsFilter, encode_cursor, page_bitmap,
};
use crate::model::Attributes;
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// Permit-shaped answers keep their body as Permit has it; paging goes in this header.
const NEXT_CURSOR: &str = "x-permd-next-cursor";

fn with_header(mut resp: Response<Full<Bytes>>, name: &'static str, value: Option<String>) -> Response<Full<Bytes>> {
    if let Some(v) = value.and_then(|v| HeaderValue::from_str(&v).ok()) {
        resp.headers_mut().insert(name, v);
    }
    resp
}

// ---------------------------------------------------------------------------------------
// perm/v1 read RPCs as JSON: the request message plus `limit`, `cursor` and `effective`;
// the response message plus `version`, `next_cursor` and `truncated`.

#[derive(Deserialize)]
struct ReadBody<T> {
    #[serde(flatten)]
    req: T,
    #[serde(default)]
    limit: Option<u64>,
    #[serde(default)]
    cursor: Option<String>,
    #[serde(default)]
    effective: bool,
}

#[derive(Serialize)]
struct ReadOut<T> {
    #[serde(flatten)]
    body: T,
    version: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    truncated: bool,
}

/// The perm/v1 read routes: path → RPC.
pub const PERM_V1_ROUTES: [&str; 10] = [
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
];

fn read_answer<T: Serialize>(
    r: Result<Paged<T>, RequestError>,
    ix: &Index,
) -> Result<Response<Full<Bytes>>, RequestError> {
    let p = r?;
    Ok(json(
        StatusCode::OK,
        &ReadOut {
            body: p.body,
            version: ix.version(),
            next_cursor: p.next_cursor,
            truncated: p.truncated,
        },
    ))
}

fn read_body<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<(ReadBody<T>, Paging), RequestError> {
    // An empty body is an empty request message.
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    let b: ReadBody<T> = decode(body)?;
    let p = Paging::parse(b.limit, b.cursor.as_deref(), "")?;
    Ok((b, p))
}

pub async fn perm_v1(ctx: &Ctx<'_>, path: &str, body: &[u8]) -> Result<Response<Full<Bytes>>, RequestError> {
    match path {
        "/v1/resources" => {
            let (b, p) = read_body::<perm::PermServiceListResourcesRequest>(body)?;
            let ix = ctx.index().await?;
            read_answer(reads::list_resources(&ix, &b.req, p), &ix)
        }
        "/v1/menus" => {
            let (b, _) = read_body::<perm::PermServiceListMenusRequest>(body)?;
            let ix = ctx.index().await?;
            read_answer(reads::perm_list_menus(&ix, &b.req), &ix)
        }
        "/v1/groups" => {
            let (b, _) = read_body::<perm::PermServiceListGroupsRequest>(body)?;
            let ix = ctx.index().await?;
            read_answer(reads::perm_list_groups(&ix, &b.req), &ix)
        }
        "/v1/role" => {
            let (b, _) = read_body::<perm::GetRoleRequest>(body)?;
            let ix = ctx.index().await?;
            read_answer(reads::get_role(&ix, &b.req), &ix)
        }
        "/v1/roles" => {
            let (b, p) = read_body::<perm::ListRolesRequest>(body)?;
            let ix = ctx.index().await?;
            read_answer(reads::list_roles(&ix, &b.req, p), &ix)
        }
        "/v1/user-roles" => {
            let (b, p) = read_body::<perm::GetRolesForUserRequest>(body)?;
            let ix = ctx.index().await?;
            read_answer(reads::roles_for_user(&ix, &b.req, b.effective, p), &ix)
        }
        "/v1/role-users" => {
            let (b, p) = read_body::<perm::GetUsersForRoleRequest>(body)?;
            let ix = ctx.index().await?;
            read_answer(reads::users_for_role(&ix, &b.req, b.effective, p), &ix)
        }
        "/v1/group-tree" => {
            let (b, _) = read_body::<perm::ListGroupsRequest>(body)?;
            let ix = ctx.index().await?;
            read_answer(reads::list_groups(&ix, &b.req), &ix)
        }
        "/v1/menu-tree" => {
            let (b, _) = read_body::<perm::ListMenusRequest>(body)?;
            let ix = ctx.index().await?;
            read_answer(reads::list_menus(&ix, &b.req), &ix)
        }
        _ => {
            let (_, p) = read_body::<perm::ListOrgRequest>(body)?;
            let ix = ctx.index().await?;
            read_answer(reads::list_orgs(&ix, p), &ix)
        }
    }
}

// ---------------------------------------------------------------------------------------
// Permit.

/// Permit's `user`: a key or `{"key": ...}`.
#[derive(Deserialize)]
#[serde(untagged)]
enum UserRef {
    Key(String),
    Object {
        key: String,
        #[serde(default)]
        attributes: Option<Attributes>,
    },
}

impl UserRef {
    fn key(&self) -> &str {
        match self {
            UserRef::Key(k) | UserRef::Object { key: k, .. } => k,
        }
    }

    fn attributes(&self) -> Option<Attributes> {
        match self {
            UserRef::Key(_) => None,
            UserRef::Object { attributes, .. } => attributes.clone(),
        }
    }
}

/// Permit's `resource`: `type:key`, `type`, or `{type, key, tenant}`.
#[derive(Deserialize)]
#[serde(untagged)]
enum ResourceRef {
    Text(String),
    Object {
        #[serde(rename = "type", default)]
        kind: Option<String>,
        #[serde(default)]
        key: Option<String>,
        #[serde(default)]
        tenant: Option<String>,
        #[serde(default)]
        attributes: Option<Attributes>,
    },
}

impl ResourceRef {
    fn attributes(&self) -> Option<Attributes> {
        match self {
            ResourceRef::Text(_) => None,
            ResourceRef::Object { attributes, .. } => attributes.clone(),
        }
    }

    /// (type, key, tenant), empty strings counting as absent.
    fn parts(&self) -> (Option<&str>, Option<&str>, Option<&str>) {
        fn ne(s: Option<&str>) -> Option<&str> {
            s.filter(|s| !s.is_empty())
        }
        match self {
            ResourceRef::Text(s) => match s.split_once(':') {
                Some((t, k)) => (ne(Some(t)), ne(Some(k)), None),
                None => (ne(Some(s)), None, None),
            },
            ResourceRef::Object { kind, key, tenant, .. } => {
                (ne(kind.as_deref()), ne(key.as_deref()), ne(tenant.as_deref()))
            }
        }
    }
}

#[derive(Deserialize)]
struct UserPermissionsBody {
    user: Option<UserRef>,
    #[serde(default)]
    tenants: Option<Vec<String>>,
    #[serde(default)]
    resources: Option<Vec<String>>,
    #[serde(default)]
    resource_types: Option<Vec<String>>,
    #[serde(default)]
    context: Option<Attributes>,
    #[serde(default)]
    limit: Option<u64>,
    #[serde(default)]
    cursor: Option<String>,
}

fn tenant_obj(key: &str) -> Value {
    json!({"key": key, "attributes": {}})
}

pub async fn user_permissions(ctx: &Ctx<'_>, body: &[u8]) -> Result<Response<Full<Bytes>>, RequestError> {
    let b: UserPermissionsBody = decode(body)?;
    let user = b
        .user
        .as_ref()
        .map(UserRef::key)
        .filter(|u| !u.is_empty())
        .ok_or_else(|| RequestError::invalid("`user` is required and must not be empty"))?;
    let p = Paging::parse(b.limit, b.cursor.as_deref(), "")?;
    let f = UserPermissionsFilter {
        tenants: b.tenants.unwrap_or_default(),
        resources: b.resources.unwrap_or_default(),
        resource_types: b.resource_types.unwrap_or_default(),
    };
    for (i, r) in f.resources.iter().enumerate() {
        if !r.split_once(':').is_some_and(|(t, k)| !t.is_empty() && !k.is_empty()) {
            return Err(RequestError::invalid(format!(
                "`resources[{i}]` is `{r}`; expected `type:key`"
            )));
        }
    }
    let data = request_data(b.user.as_ref().and_then(UserRef::attributes), None, b.context.clone());
    let ix = ctx.index().await?;
    let up = ix.user_permissions_with(user, &f, p.after, p.limit, data.as_ref());
    let mut out = Map::new();
    for e in up.tenants {
        out.insert(
            format!("__tenant:{}", e.org),
            json!({"tenant": tenant_obj(&e.org), "permissions": e.permissions, "roles": e.roles}),
        );
    }
    for e in up.instances {
        let Some((t, k)) = e.resource else { continue };
        out.insert(
            format!("{t}:{k}"),
            json!({
                "resource": {"key": k, "type": t, "attributes": {}},
                "tenant": tenant_obj(&e.org),
                "permissions": e.permissions,
                "roles": e.roles,
            }),
        );
    }
    Ok(with_header(json(StatusCode::OK, &out), NEXT_CURSOR, up.next_cursor))
}

#[derive(Deserialize)]
struct AuthorizedUsersBody {
    action: Option<String>,
    resource: Option<ResourceRef>,
    #[serde(default)]
    context: Option<Attributes>,
    #[serde(default)]
    limit: Option<u64>,
    #[serde(default)]
    cursor: Option<String>,
}

/// The org a check on (`t`, `k`) with optional `tenant` is made in (model.md §2).
fn check_org<'a>(ix: &'a Index, t: &str, k: Option<&str>, tenant: Option<&'a str>) -> &'a str {
    tenant
        .or_else(|| {
            k.and_then(|k| ix.lookup_res(t, k))
                .and_then(|id| ix.instance_names(id))
                .map(|(_, _, o)| o)
        })
        .unwrap_or("default")
}

/// The assignment behind an allow, as Permit's `{user, tenant, resource, role}`.
fn assignment(ix: &Index, user: &str, e: Evidence) -> Value {
    let names = ix.names();
    let role_key = |r: u32| ix.role_item(r).map(|i| i.key.clone()).unwrap_or_default();
    let (tenant, resource, role) = match e {
        Evidence::OrgAssignment { org, role_name, .. } => {
            let o = names.orgs.name(org);
            (
                o.to_string(),
                format!("__tenant:{o}"),
                names.roles.name(role_name).to_string(),
            )
        }
        Evidence::InstanceAssignment {
            resource,
            org,
            role_name,
            ..
        } => (
            names.orgs.name(org).to_string(),
            ix.res_name(resource),
            names.roles.name(role_name).to_string(),
        ),
        Evidence::Grant {
            resource,
            org,
            grant_role,
            ..
        } => (
            names.orgs.name(org).to_string(),
            ix.res_name(resource),
            role_key(grant_role),
        ),
        Evidence::RoleSubject { role } => (String::new(), String::new(), role_key(role)),
        // An attribute rule gives no role: the allow carries the rule's key instead.
        Evidence::Rule { rule } => {
            let key = ix
                .policy()
                .rules
                .get(rule as usize)
                .and_then(|r| ix.policy_items().rules.get(r.item))
                .map_or(String::new(), |r| r.key.clone());
            return json!({"user": user, "tenant": "", "resource": "", "role": "", "rule": key});
        }
        Evidence::None => (String::new(), String::new(), String::new()),
    };
    json!({"user": user, "tenant": tenant, "resource": resource, "role": role})
}

pub async fn authorized_users(ctx: &Ctx<'_>, body: &[u8]) -> Result<Response<Full<Bytes>>, RequestError> {
    let b: AuthorizedUsersBody = decode(body)?;
    let action = b
        .action
        .as_deref()
        .filter(|a| !a.is_empty())
        .ok_or_else(|| RequestError::invalid("`action` is required and must not be empty"))?;
    let res = b
        .resource
        .as_ref()
        .ok_or_else(|| RequestError::invalid("`resource` is required"))?;
    let (t, k, tenant) = res.parts();
    let t = t.ok_or_else(|| RequestError::invalid("`resource.type` is required and must not be empty"))?;
    let p = Paging::parse(b.limit, b.cursor.as_deref(), "")?;
    let data = request_data(None, res.attributes(), b.context.clone());
    let ix = ctx.index().await?;
    let users = ix.authorized_users_with(action, t, k, tenant, data.as_ref());
    let (page, next) = page_bitmap(&users, p.after, p.limit);
    let mut out = Map::new();
    for uid in page {
        let user = ix.user_key(uid);
        let d = ix.decide(&Query {
            subject: Subject::User(user),
            action,
            resource_type: t,
            resource_key: k,
            org: tenant,
            group_type: None,
            request: data.as_ref(),
        });
        out.insert(user.to_string(), Value::Array(vec![assignment(&ix, user, d.evidence)]));
    }
    let resource = match k {
        Some(k) => format!("{t}:{k}"),
        None => t.to_string(),
    };
    let body = json!({"resource": resource, "tenant": check_org(&ix, t, k, tenant), "users": out});
    Ok(with_header(json(StatusCode::OK, &body), NEXT_CURSOR, next))
}

/// `user=a&role=b&...` with each key repeatable; `+` and `%XX` decoded.
fn query_pairs(q: &str) -> Result<Vec<(String, String)>, RequestError> {
    fn unescape(s: &str, what: &str) -> Result<String, RequestError> {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while let Some(&c) = bytes.get(i) {
            match c {
                b'+' => out.push(b' '),
                b'%' => {
                    let hex = bytes
                        .get(i + 1..i + 3)
                        .and_then(|h| std::str::from_utf8(h).ok())
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                        .ok_or_else(|| RequestError::invalid(format!("query parameter `{what}` has a bad %-escape")))?;
                    out.push(hex);
                    i += 2;
                }
                c => out.push(c),
            }
            i += 1;
        }
        String::from_utf8(out).map_err(|_| RequestError::invalid(format!("query parameter `{what}` is not UTF-8")))
    }
    q.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            let k = unescape(k, k)?;
            let v = unescape(v, &k)?;
            Ok((k, v))
        })
        .collect()
}

/// Permit's default and largest `per_page`.
const PER_PAGE_DEFAULT: usize = 30;
const PER_PAGE_MAX: usize = 100;

pub async fn role_assignments(ctx: &Ctx<'_>, query: Option<&str>) -> Result<Response<Full<Bytes>>, RequestError> {
    let mut f = AssignmentFilter::default();
    let (mut page, mut per_page) = (1usize, PER_PAGE_DEFAULT);
    let number = |k: &str, v: &str, min: usize, max: usize| -> Result<usize, RequestError> {
        v.parse::<usize>()
            .ok()
            .filter(|n| *n >= min && *n <= max)
            .ok_or_else(|| {
                RequestError::invalid(format!("`{k}` is `{v}`; expected a whole number from {min} to {max}"))
            })
    };
    for (k, v) in query_pairs(query.unwrap_or(""))? {
        match k.as_str() {
            "user" => f.users.push(v),
            "role" => f.roles.push(v),
            "tenant" => f.tenants.push(v),
            "resource" => f.resources.push(v),
            "resource_instance" => f.resource_instances.push(v),
            "page" => page = number(&k, &v, 1, 1_000_000_000)?,
            "per_page" => per_page = number(&k, &v, 1, PER_PAGE_MAX)?,
            // Permit SDKs send these; they change nothing here.
            "detailed" | "include_total_count" => {}
            other => {
                return Err(RequestError::invalid(format!(
                    "query parameter `{other}` is not a filter; use user, role, tenant, resource, resource_instance, page, per_page"
                )));
            }
        }
    }
    let ix = ctx.index().await?;
    let (rows, more) = ix.role_assignments(&f, (page - 1).saturating_mul(per_page), per_page);
    let resp = json(StatusCode::OK, &rows);
    Ok(with_header(
        resp,
        "x-permd-next-page",
        more.then(|| (page + 1).to_string()),
    ))
}

// ---------------------------------------------------------------------------------------
// AuthZEN search (AuthZEN 1.0 §8): `page.token` / `page.limit` in, `page.next_token` out.

#[derive(Deserialize, Default)]
struct AzEntity {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    properties: Option<Attributes>,
}

impl AzEntity {
    /// The properties less `tenant`: request attributes for conditions.
    fn attributes(&self) -> Option<Attributes> {
        self.properties.clone().map(|mut p| {
            p.remove("tenant");
            p
        })
    }
}

#[derive(Deserialize, Default)]
struct AzActionIn {
    #[serde(default)]
    name: Option<String>,
}

#[derive(Deserialize, Default)]
struct AzPage {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    limit: Option<u64>,
}

#[derive(Deserialize)]
struct AzSearch {
    #[serde(default)]
    subject: Option<AzEntity>,
    #[serde(default)]
    action: Option<AzActionIn>,
    #[serde(default)]
    resource: Option<AzEntity>,
    #[serde(default)]
    context: Option<Attributes>,
    #[serde(default)]
    page: Option<AzPage>,
}

fn need<'a>(v: &'a Option<String>, field: &str) -> Result<&'a str, RequestError> {
    v.as_deref()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| RequestError::invalid(format!("`{field}` is required and must not be empty")))
}

impl AzSearch {
    fn paging(&self) -> Result<Paging, RequestError> {
        let p = self.page.as_ref();
        Paging::parse(p.and_then(|p| p.limit), p.and_then(|p| p.token.as_deref()), "page.")
    }

    fn subject(&self) -> Result<Subject<'_>, RequestError> {
        let s = self
            .subject
            .as_ref()
            .ok_or_else(|| RequestError::invalid("`subject` is required"))?;
        let id = need(&s.id, "subject.id")?;
        match need(&s.kind, "subject.type")? {
            "user" => Ok(Subject::User(id)),
            "role" => Ok(Subject::Role(id)),
            other => Err(RequestError::invalid(format!(
                "`subject.type` is `{other}`; expected `user` or `role`"
            ))),
        }
    }

    fn action(&self) -> Result<&str, RequestError> {
        need(
            &self
                .action
                .as_ref()
                .ok_or_else(|| RequestError::invalid("`action` is required"))?
                .name,
            "action.name",
        )
    }

    fn resource(&self) -> Result<&AzEntity, RequestError> {
        self.resource
            .as_ref()
            .ok_or_else(|| RequestError::invalid("`resource` is required"))
    }
}

fn tenant(e: &AzEntity) -> Option<&str> {
    e.properties
        .as_ref()
        .and_then(|p| p.get("tenant"))
        .and_then(|t| t.as_str())
        .filter(|t| !t.is_empty())
}

fn search_out(results: Vec<Value>, next: Option<String>, version: u64) -> Response<Full<Bytes>> {
    json(
        StatusCode::OK,
        &json!({"results": results, "page": {"next_token": next.unwrap_or_default()}, "context": {"version": version}}),
    )
}

pub async fn search(ctx: &Ctx<'_>, path: &str, body: &[u8]) -> Result<Response<Full<Bytes>>, RequestError> {
    let req: AzSearch = decode(body)?;
    let p = req.paging()?;
    let data = request_data(
        req.subject.as_ref().and_then(AzEntity::attributes),
        req.resource.as_ref().and_then(AzEntity::attributes),
        req.context.clone(),
    );
    match path {
        "/access/v1/search/subject" => {
            let kind = need(
                &req.subject
                    .as_ref()
                    .ok_or_else(|| RequestError::invalid("`subject` is required"))?
                    .kind,
                "subject.type",
            )?;
            if kind != "user" {
                return Err(RequestError::invalid(format!(
                    "`subject.type` is `{kind}`; subject search finds users"
                )));
            }
            let action = req.action()?;
            let res = req.resource()?;
            let t = need(&res.kind, "resource.type")?;
            let k = res.id.as_deref().filter(|k| !k.is_empty());
            let ix = ctx.index().await?;
            let users = ix.authorized_users_with(action, t, k, tenant(res), data.as_ref());
            let (page, next) = page_bitmap(&users, p.after, p.limit);
            let results = page
                .into_iter()
                .map(|u| json!({"type": "user", "id": ix.user_key(u)}))
                .collect();
            Ok(search_out(results, next, ix.version()))
        }
        "/access/v1/search/resource" => {
            let subject = req.subject()?;
            let action = req.action()?;
            let res = req.resource()?;
            let t = need(&res.kind, "resource.type")?;
            let ix = ctx.index().await?;
            let ids = ix.list_resources_with(subject, t, action, tenant(res), data.as_ref());
            let (page, next) = page_bitmap(&ids, p.after, p.limit);
            let results = page
                .into_iter()
                .filter_map(|id| ix.instance_names(id))
                .map(|(t, k, _)| json!({"type": t, "id": k}))
                .collect();
            Ok(search_out(results, next, ix.version()))
        }
        _ => {
            let subject = req.subject()?;
            let res = req.resource()?;
            let t = need(&res.kind, "resource.type")?;
            let k = res.id.as_deref().filter(|k| !k.is_empty());
            let ix = ctx.index().await?;
            let q = Query {
                subject,
                action: "",
                resource_type: t,
                resource_key: k,
                org: tenant(res),
                group_type: None,
                request: data.as_ref(),
            };
            let actions = ix.allowed_actions(&q);
            let start = p
                .after
                .map_or(0, |a| usize::try_from(a).unwrap_or(usize::MAX).saturating_add(1));
            let page: Vec<Value> = actions
                .iter()
                .skip(start)
                .take(p.limit)
                .map(|a| json!({"name": a}))
                .collect();
            let end = start.saturating_add(page.len());
            let next = (end < actions.len() && !page.is_empty()).then(|| encode_cursor(end as u64 - 1));
            Ok(search_out(page, next, ix.version()))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn query_pairs_decode_and_repeat() {
        let v = query_pairs("user=a%20b&user=c+d&role=&page=2").unwrap();
        assert_eq!(
            v,
            vec![
                ("user".into(), "a b".into()),
                ("user".into(), "c d".into()),
                ("role".into(), "".into()),
                ("page".into(), "2".into())
            ]
        );
        assert!(query_pairs("user=%zz").unwrap_err().to_string().contains("`user`"));
        assert!(crate::index::decode_cursor("nope", "cursor").is_err());
    }
}
