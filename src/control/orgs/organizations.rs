//! Seed 004, organisations with isolation rules: `/api/v1/organizations/` (list, create),
//! `/api/v1/organizations/{id}` (view, update, delete), `/api/v1/organizations/{id}/users`
//! (list) and `/api/v1/organizations/{id}/users/{user_id}` (add, remove). The organisations are
//! the model's orgs (tenants) of the key's project; writes go through the write path as ops
//! planned on the current document. The who-may-call rules are [`super::authority`]'s.

use super::authority::{Caller, MEMBER, SUPERUSER};
use super::{
    Answer, Ctx, Params, Refused, allow, answer, array_page, body, check_key, check_text, no_content, segments,
};
use crate::control::Control;
use crate::control::db::KeyProject;
use crate::control::write::write_with;
use crate::model::{Identity, Item, Op, Org, ResourceRef, RoleAssignment, Snapshot, User};
use crate::wire::RequestError;
use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value, json};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

/// Items in a list page unless `limit` says otherwise, and at most.
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;
/// The longest generated org key.
const MAX_SLUG: usize = 64;
const MAX_NAME: usize = 256;
const MAX_DESCRIPTION: usize = 4096;

/// `/api/v1/organizations{rest}`.
pub async fn route(ctl: &Arc<Control>, project: &KeyProject, rest: &str, req: Request<Incoming>) -> Answer {
    let path = req.uri().path().to_owned();
    let rest = match rest.strip_prefix('/') {
        Some(r) => r,
        None if rest.is_empty() => "",
        None => return Err(RequestError::NotFound(path).into()),
    };
    let segs = segments(rest, &path)?;
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let params = Params::parse(req.uri().query())?;
    let method = match segs.as_slice() {
        [] => allow(req.method(), &[Method::GET, Method::POST], "GET, HEAD, POST")?,
        [_] => allow(
            req.method(),
            &[Method::GET, Method::PUT, Method::DELETE],
            "GET, HEAD, PUT, DELETE",
        )?,
        [_, "users"] => allow(req.method(), &[Method::GET], "GET, HEAD")?,
        [_, "users", _] => allow(req.method(), &[Method::POST, Method::DELETE], "POST, DELETE")?,
        _ => return Err(RequestError::NotFound(path).into()),
    };
    let cx = Ctx::load(ctl, project, req.headers()).await?;
    match (segs.as_slice(), method) {
        ([], Method::GET) => list(&cx, &params),
        ([], _) => {
            let new: NewOrg = body(ctl, req).await?;
            create(&cx, new).await
        }
        ([id], Method::GET) => {
            let caller = cx.caller();
            Ok(answer(
                StatusCode::OK,
                &org_json(visible(&cx, &caller, id)?),
                Some(cx.current.version),
            ))
        }
        ([id], Method::PUT) => {
            let id = id.to_string();
            let patch: OrgPatch = body(ctl, req).await?;
            update(&cx, &id, patch).await
        }
        ([id], _) => delete(&cx, id).await,
        ([id, "users"], _) => list_users(&cx, id, &params),
        ([id, "users", user], Method::POST) => add_user(&cx, id, user).await,
        ([id, "users", user], _) => remove_user(&cx, id, user).await,
        _ => Err(RequestError::NotFound(path).into()),
    }
}

fn org_missing(id: &str) -> RequestError {
    RequestError::Missing(format!("organization `{id}` not found"))
}

/// The org `id` if the caller may see it; else 404, exactly as for an org that does not exist.
fn visible<'s>(cx: &'s Ctx<'_>, caller: &Caller<'_>, id: &str) -> Result<&'s Org, RequestError> {
    cx.current
        .snapshot
        .orgs
        .iter()
        .find(|o| o.key == id)
        .filter(|_| caller.sees(id))
        .ok_or_else(|| org_missing(id))
}

fn org_json(o: &Org) -> Value {
    let description = o
        .attributes
        .as_ref()
        .and_then(|a| a.get("description"))
        .cloned()
        .unwrap_or(Value::Null);
    json!({
        "id": o.key,
        "name": o.name.as_deref().unwrap_or(&o.key),
        "description": description,
        "parent": o.parent,
    })
}

/// The users of `org` (those with an org-wide assignment in it) with their roles there, in
/// the order of their first assignment.
fn users_of<'s>(s: &'s Snapshot, org: &str) -> Vec<(&'s str, Vec<&'s str>)> {
    let mut out: Vec<(&str, Vec<&str>)> = Vec::new();
    let mut at: HashMap<&str, usize> = HashMap::new();
    for a in s
        .role_assignments
        .iter()
        .filter(|a| a.org == org && a.resource.is_none())
    {
        match at.get(a.user.as_str()) {
            Some(&i) => {
                if let Some((_, roles)) = out.get_mut(i) {
                    roles.push(&a.role);
                }
            }
            None => {
                at.insert(&a.user, out.len());
                out.push((&a.user, vec![&a.role]));
            }
        }
    }
    out
}

fn user_json(key: &str, user: Option<&User>, org: &str, roles: &[&str]) -> Value {
    json!({
        "id": key,
        "email": user.and_then(|u| u.email.as_deref()),
        "first_name": user.and_then(|u| u.first_name.as_deref()),
        "last_name": user.and_then(|u| u.last_name.as_deref()),
        "organization_id": org,
        "roles": roles,
    })
}

fn list(cx: &Ctx<'_>, params: &Params) -> Answer {
    let (skip, limit) = params.skip_limit(DEFAULT_PAGE, MAX_PAGE)?;
    let caller = cx.caller();
    let seen: Vec<&Org> = cx
        .current
        .snapshot
        .orgs
        .iter()
        .filter(|o| caller.sees(&o.key))
        .collect();
    let total = seen.len();
    let page = seen.into_iter().skip(skip).take(limit).map(org_json).collect();
    Ok(array_page(page, total, cx.current.version))
}

/// `POST /api/v1/organizations/`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewOrg {
    name: String,
    #[serde(default)]
    description: Option<String>,
    /// The org's key; made from `name` when absent.
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parent: Option<String>,
}

/// `PUT /api/v1/organizations/{id}`: what is given changes; `description: null` clears it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OrgPatch {
    #[serde(default)]
    name: Option<String>,
    #[serde(default, deserialize_with = "present")]
    description: Option<Option<String>>,
}

/// A field that is present (`Some`), perhaps `null` (`Some(None)`).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

fn check_name(name: &str) -> Result<String, RequestError> {
    let name = name.trim();
    if name.is_empty() {
        return Err(RequestError::invalid("`name`: must not be empty"));
    }
    check_text(name, "name", MAX_NAME, true)?;
    Ok(name.to_owned())
}

/// A key made from `name`: lower-case ASCII letters and digits, other runs become `-`.
fn slug(name: &str) -> String {
    let mut out = String::new();
    let mut gap = false;
    for c in name.chars() {
        if out.len() >= MAX_SLUG {
            break;
        }
        if c.is_ascii_alphanumeric() {
            if gap && !out.is_empty() {
                out.push('-');
            }
            gap = false;
            out.push(c.to_ascii_lowercase());
        } else {
            gap = true;
        }
    }
    if out.is_empty() { "org".to_owned() } else { out }
}

/// The first free key for an org named `name`: its slug, else the slug with `-2`, `-3`, ….
fn free_key(s: &Snapshot, name: &str) -> String {
    let base = slug(name);
    let taken: HashSet<&str> = s.orgs.iter().map(|o| o.key.as_str()).collect();
    if !taken.contains(base.as_str()) {
        return base;
    }
    (2..)
        .map(|n| format!("{base}-{n}"))
        .find(|k| !taken.contains(k.as_str()))
        .unwrap_or(base)
}

fn with_description(attributes: Option<Map<String, Value>>, description: Option<String>) -> Option<Map<String, Value>> {
    let mut a = attributes.unwrap_or_default();
    match description {
        Some(d) => {
            a.insert("description".into(), Value::String(d));
        }
        None => {
            a.remove("description");
        }
    }
    (!a.is_empty()).then_some(a)
}

/// What a plan made, read back after the write.
fn kept<T>(cell: Mutex<Option<T>>) -> Result<T, RequestError> {
    cell.into_inner()
        .ok()
        .flatten()
        .ok_or_else(|| RequestError::Retry("the write planned nothing; retry".into()))
}

fn keep<T>(cell: &Mutex<Option<T>>, value: T) {
    if let Ok(mut c) = cell.lock() {
        *c = Some(value);
    }
}

async fn create(cx: &Ctx<'_>, new: NewOrg) -> Answer {
    let name = check_name(&new.name)?;
    if let Some(d) = &new.description {
        check_text(d, "description", MAX_DESCRIPTION, false)?;
    }
    if let Some(id) = &new.id {
        check_key(id, "id")?;
    }
    if let Some(p) = &new.parent {
        check_key(p, "parent")?;
    }
    let caller = cx.caller();
    match &new.parent {
        Some(p) if !caller.sees(p) => {
            return Err(RequestError::Missing(format!("`parent`: organization `{p}` not found")).into());
        }
        Some(p) if !caller.administers(p) => {
            return Err(Refused::Forbidden(format!(
                "creating an organization under `{p}` needs an admin of `{p}` or a superuser"
            )));
        }
        None if !caller.administers_any() => {
            return Err(Refused::Forbidden(
                "creating an organization needs an admin or a superuser".into(),
            ));
        }
        _ => {}
    }
    let made = Mutex::new(None);
    let w = write_with(cx.ctl, cx.project.project_id, |s| {
        if let Some(p) = &new.parent
            && !s.orgs.iter().any(|o| o.key == *p)
        {
            return Err(RequestError::Missing(format!("`parent`: organization `{p}` not found")));
        }
        let key = match &new.id {
            Some(k) if s.orgs.iter().any(|o| o.key == *k) => {
                return Err(RequestError::Conflict(format!(
                    "`id`: organization `{k}` already exists"
                )));
            }
            Some(k) => k.clone(),
            None => free_key(s, &name),
        };
        let org = Org {
            key,
            parent: new.parent.clone(),
            name: Some(name.clone()),
            attributes: with_description(None, new.description.clone()),
        };
        keep(&made, org.clone());
        Ok(vec![Op::Upsert(Item::Org(org))])
    })
    .await?;
    let org = kept(made)?;
    Ok(answer(StatusCode::CREATED, &org_json(&org), Some(w.version)))
}

async fn update(cx: &Ctx<'_>, id: &str, patch: OrgPatch) -> Answer {
    let name = patch.name.as_deref().map(check_name).transpose()?;
    if let Some(Some(d)) = &patch.description {
        check_text(d, "description", MAX_DESCRIPTION, false)?;
    }
    let caller = cx.caller();
    visible(cx, &caller, id)?;
    if !caller.administers(id) {
        return Err(Refused::Forbidden(format!(
            "changing organization `{id}` needs an admin of it or a superuser"
        )));
    }
    let made = Mutex::new(None);
    let w = write_with(cx.ctl, cx.project.project_id, |s| {
        let mut org = s
            .orgs
            .iter()
            .find(|o| o.key == id)
            .cloned()
            .ok_or_else(|| org_missing(id))?;
        if let Some(n) = &name {
            org.name = Some(n.clone());
        }
        if let Some(d) = &patch.description {
            org.attributes = with_description(org.attributes.take(), d.clone());
        }
        keep(&made, org.clone());
        Ok(vec![Op::Upsert(Item::Org(org))])
    })
    .await?;
    let org = kept(made)?;
    Ok(answer(StatusCode::OK, &org_json(&org), Some(w.version)))
}

async fn delete(cx: &Ctx<'_>, id: &str) -> Answer {
    let target = json!({ "organization": id });
    cx.audited("organization.delete", &target, async {
        let caller = cx.caller();
        visible(cx, &caller, id)?;
        if !caller.is_superuser() {
            return Err(Refused::Forbidden(format!(
                "deleting organization `{id}` needs a superuser"
            )));
        }
        let w = write_with(cx.ctl, cx.project.project_id, |s| {
            if !s.orgs.iter().any(|o| o.key == id) {
                return Err(org_missing(id));
            }
            let users = users_of(s, id).len();
            if users > 0 {
                return Err(RequestError::Conflict(format!(
                    "organization `{id}` still has {users} user(s); remove all users first"
                )));
            }
            Ok(cascade(s, id))
        })
        .await
        .map_err(|e| match e {
            RequestError::Conflict(m) => Refused::Precondition(m),
            e => Refused::Request(e),
        })?;
        Ok((no_content(w.version), w.version))
    })
    .await
}

/// The ops of deleting org `org` and everything in it, so a sidecar applies exactly what the
/// database did: its assignments and grants (and those on its instances), its org-scoped
/// roles, its instances (which leave the `parents` of others), the org; the orgs below it lose
/// their `parent`.
fn cascade(s: &Snapshot, org: &str) -> Vec<Op> {
    let instances: HashSet<(&str, &str)> = s
        .resources
        .iter()
        .filter(|x| x.org == org)
        .map(|x| (x.resource_type.as_str(), x.key.as_str()))
        .collect();
    let gone = |r: &str| ResourceRef::parse(r).is_some_and(|r| instances.contains(&(r.resource_type, r.key)));
    let mut ops = Vec::new();
    for a in &s.role_assignments {
        if a.org == org || a.resource.as_deref().is_some_and(gone) {
            ops.push(Op::Delete(Identity::RoleAssignment(a.clone())));
        }
    }
    for g in &s.role_grants {
        if g.org == org || gone(&g.resource) {
            ops.push(Op::Delete(Identity::RoleGrant {
                org: g.org.clone(),
                role: g.role.clone(),
                resource: g.resource.clone(),
            }));
        }
    }
    for x in s.resources.iter().filter(|x| x.org != org) {
        if x.parents.iter().any(|p| gone(p)) {
            let mut x = x.clone();
            x.parents.retain(|p| !gone(p));
            ops.push(Op::Upsert(Item::Resource(x)));
        }
    }
    for o in &s.orgs {
        if o.key != org && o.parent.as_deref() == Some(org) {
            let mut o = o.clone();
            o.parent = None;
            ops.push(Op::Upsert(Item::Org(o)));
        }
    }
    for x in s.resources.iter().filter(|x| x.org == org) {
        ops.push(Op::Delete(Identity::Resource {
            resource_type: x.resource_type.clone(),
            key: x.key.clone(),
        }));
    }
    for r in s.roles.iter().filter(|r| r.org.as_deref() == Some(org)) {
        ops.push(Op::Delete(Identity::Role {
            key: r.key.clone(),
            org: r.org.clone(),
        }));
    }
    ops.push(Op::Delete(Identity::Org { key: org.to_owned() }));
    ops
}

fn list_users(cx: &Ctx<'_>, id: &str, params: &Params) -> Answer {
    let (skip, limit) = params.skip_limit(DEFAULT_PAGE, MAX_PAGE)?;
    let caller = cx.caller();
    visible(cx, &caller, id)?;
    let s = &cx.current.snapshot;
    let users = users_of(s, id);
    let total = users.len();
    let page: Vec<(&str, Vec<&str>)> = users.into_iter().skip(skip).take(limit).collect();
    let wanted: HashSet<&str> = page.iter().map(|(u, _)| *u).collect();
    let items: HashMap<&str, &User> = s
        .users
        .iter()
        .filter(|u| wanted.contains(u.key.as_str()))
        .map(|u| (u.key.as_str(), u))
        .collect();
    let page = page
        .iter()
        .map(|(u, roles)| user_json(u, items.get(u).copied(), id, roles))
        .collect();
    Ok(array_page(page, total, cx.current.version))
}

/// Whether role `role` resolves in org `org` (its own role of that key, or a global one).
pub fn resolves(s: &Snapshot, org: &str, role: &str) -> bool {
    s.roles
        .iter()
        .any(|r| r.key == role && r.org.as_deref().is_none_or(|o| o == org))
}

async fn add_user(cx: &Ctx<'_>, id: &str, user: &str) -> Answer {
    check_key(user, "user_id")?;
    let caller = cx.caller();
    visible(cx, &caller, id)?;
    if !caller.administers(id) {
        return Err(Refused::Forbidden(format!(
            "adding users to organization `{id}` needs an admin of it or a superuser"
        )));
    }
    let made = Mutex::new(None);
    let w = write_with(cx.ctl, cx.project.project_id, |s| {
        if !s.orgs.iter().any(|o| o.key == id) {
            return Err(org_missing(id));
        }
        if !resolves(s, id, MEMBER) {
            return Err(RequestError::Missing(format!(
                "role `{MEMBER}` does not exist in organization `{id}`: define it (a global role or one of the org's) to add users"
            )));
        }
        let mut roles: Vec<&str> = users_of(s, id)
            .into_iter()
            .find(|(u, _)| *u == user)
            .map(|(_, r)| r)
            .unwrap_or_default();
        if !roles.contains(&MEMBER) {
            roles.push(MEMBER);
        }
        let item = s.users.iter().find(|u| u.key == user);
        keep(&made, user_json(user, item, id, &roles));
        Ok(vec![Op::Upsert(Item::RoleAssignment(RoleAssignment {
            user: user.to_owned(),
            role: MEMBER.to_owned(),
            org: id.to_owned(),
            resource: None,
        }))])
    })
    .await?;
    let shown = kept(made)?;
    let status = if w.changed { StatusCode::CREATED } else { StatusCode::OK };
    Ok(answer(status, &shown, Some(w.version)))
}

async fn remove_user(cx: &Ctx<'_>, id: &str, user: &str) -> Answer {
    check_key(user, "user_id")?;
    let target = json!({ "organization": id, "user": user });
    cx.audited("organization.user.remove", &target, async {
        let caller = cx.caller();
        visible(cx, &caller, id)?;
        if !caller.administers(id) {
            return Err(Refused::Forbidden(format!(
                "removing users from organization `{id}` needs an admin of it or a superuser"
            )));
        }
        let superuser = caller.is_superuser();
        let holds_superuser = |s: &Snapshot| {
            s.role_assignments
                .iter()
                .any(|a| a.user == user && a.org == id && a.role == SUPERUSER)
        };
        if !superuser && holds_superuser(&cx.current.snapshot) {
            return Err(Refused::Forbidden(format!(
                "user `{user}` holds `{SUPERUSER}` in organization `{id}`; only a superuser may remove it"
            )));
        }
        let removed = Mutex::new(None);
        let w = write_with(cx.ctl, cx.project.project_id, |s| {
            if !s.orgs.iter().any(|o| o.key == id) {
                return Err(org_missing(id));
            }
            if !superuser && holds_superuser(s) {
                return Err(RequestError::Conflict(format!(
                    "user `{user}` now holds `{SUPERUSER}` in organization `{id}`; only a superuser may remove it"
                )));
            }
            let mine: Vec<&RoleAssignment> = s
                .role_assignments
                .iter()
                .filter(|a| a.user == user && a.org == id)
                .collect();
            if mine.is_empty() {
                return Err(RequestError::Missing(format!(
                    "`user_id`: user `{user}` is not a user of organization `{id}`"
                )));
            }
            let shown: Vec<Value> = mine
                .iter()
                .map(|a| json!({"role": a.role, "resource": a.resource}))
                .collect();
            keep(&removed, shown);
            Ok(mine
                .into_iter()
                .map(|a| Op::Delete(Identity::RoleAssignment(a.clone())))
                .collect())
        })
        .await
        .map_err(|e| match e {
            RequestError::Conflict(m) => Refused::Precondition(m),
            e => Refused::Request(e),
        })?;
        let removed = kept(removed)?;
        let body = json!({"organization_id": id, "user_id": user, "removed": removed});
        Ok((answer(StatusCode::OK, &body, Some(w.version)), w.version))
    })
    .await
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::model::Encoding;

    #[test]
    fn keys_from_names() {
        assert_eq!(slug("Engineering Team"), "engineering-team");
        assert_eq!(slug("  R&D / Ops!! "), "r-d-ops");
        assert_eq!(slug("日本"), "org");
        assert_eq!(slug("'; DROP TABLE orgs; --"), "drop-table-orgs");
        assert!(slug(&"a".repeat(300)).len() <= MAX_SLUG);
        let s = Snapshot::load(
            b"format: 1\nversion: 1\norgs: [{key: eng}, {key: eng-2}]\n",
            Encoding::Yaml,
        )
        .unwrap();
        assert_eq!(free_key(&s, "Eng"), "eng-3");
        assert_eq!(free_key(&s, "Ops"), "ops");
    }

    #[test]
    fn a_deleted_org_takes_what_is_in_it() {
        let s = Snapshot::load(
            b"format: 1\nversion: 1\norgs: [{key: a}, {key: b, parent: a}, {key: c}]\n\
              resource_types: [{key: doc, actions: [read]}]\n\
              roles: [{key: r}, {key: own, org: a}, {key: own, org: c}]\n\
              resources: [{type: doc, key: x, org: a}, {type: doc, key: y, org: c, parents: ['doc:x']}]\n\
              role_assignments: [{user: u, role: r, org: a, resource: 'doc:x'}, {user: v, role: r, org: c}]\n\
              role_grants: [{org: a, role: own, resource: 'doc:x', actions: ['doc:read']}]\n",
            Encoding::Yaml,
        )
        .unwrap();
        let ops = cascade(&s, "a");
        let mut after = s.clone();
        after.apply_ops(&ops);
        assert_eq!(
            after
                .orgs
                .iter()
                .map(|o| (o.key.as_str(), o.parent.clone()))
                .collect::<Vec<_>>(),
            vec![("b", None), ("c", None)]
        );
        assert_eq!(after.resources.len(), 1);
        assert!(after.resources[0].parents.is_empty());
        assert_eq!(after.role_assignments.len(), 1);
        assert!(after.role_grants.is_empty());
        assert_eq!(after.roles.len(), 2);
        assert_eq!(users_of(&s, "c"), vec![("v", vec!["r"])]);
    }
}
