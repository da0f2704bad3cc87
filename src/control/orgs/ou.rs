//! Seed 001, pdk.io OU permissions: `POST /api/ous/{org}/permissions {email, role}`,
//! `PUT|DELETE /api/ous/{org}/permissions/{id}`, `GET /api/ous/{org}/ancestorPermissions`.
//! A permission is the org-wide assignment of one of the pdk.io roles to a user in the org
//! (the model's org `{org}` of the key's project); a user has at most one per org. Its `_id`
//! is derived from the org and the user (see [`permission_id`]), so it needs no storage and
//! survives a role change.

use super::organizations::resolves;
use super::{Answer, Ctx, Params, Refused, allow, answer, array_page, body, check_email, no_content, segments};
use crate::control::Control;
use crate::control::db::KeyProject;
use crate::control::write::write_with;
use crate::model::{Identity, Item, Op, RoleAssignment, Snapshot, User};
use crate::wire::RequestError;
use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

/// The pdk.io roles, the only roles a permission may have.
pub const ROLES: [&str; 4] = ["reporter", "manager", "admin", "integrator"];

/// Permissions in one `ancestorPermissions` page unless `limit` says otherwise, and at most.
const MAX_PAGE: usize = 1000;

/// `/api/ous/{rest}`.
pub async fn route(ctl: &Arc<Control>, project: &KeyProject, rest: &str, req: Request<Incoming>) -> Answer {
    let path = req.uri().path().to_owned();
    let segs = segments(rest, &path)?;
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let params = Params::parse(req.uri().query())?;
    let method = match segs.as_slice() {
        [_, "permissions"] => allow(req.method(), &[Method::POST], "POST")?,
        [_, "permissions", _] => allow(req.method(), &[Method::PUT, Method::DELETE], "PUT, DELETE")?,
        [_, "ancestorPermissions"] => allow(req.method(), &[Method::GET], "GET, HEAD")?,
        _ => return Err(RequestError::NotFound(path).into()),
    };
    let cx = Ctx::load(ctl, project, req.headers()).await?;
    match (segs.as_slice(), method) {
        ([org, "permissions"], _) => {
            let new: NewPermission = body(ctl, req).await?;
            create(&cx, org, new).await
        }
        ([org, "permissions", id], Method::PUT) => {
            let change: RoleChange = body(ctl, req).await?;
            update(&cx, org, id, change).await
        }
        ([org, "permissions", id], _) => delete(&cx, org, id).await,
        ([org, "ancestorPermissions"], _) => ancestors(&cx, org, &params),
        _ => Err(RequestError::NotFound(path).into()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewPermission {
    email: String,
    role: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleChange {
    role: String,
}

fn check_role(role: &str) -> Result<(), RequestError> {
    if ROLES.contains(&role) {
        Ok(())
    } else {
        Err(RequestError::invalid(format!(
            "`role`: `{role}` is not a role; use one of reporter, manager, admin, integrator"
        )))
    }
}

/// A permission's `_id`: the first 24 hex digits of SHA-256 of `pdk.io/permission`, the org
/// key and the user key, NUL between them (the length of a pdk.io id).
pub fn permission_id(org: &str, user: &str) -> String {
    let text = format!("pdk.io/permission\0{org}\0{user}");
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    digest.as_ref()[..12].iter().map(|b| format!("{b:02x}")).collect()
}

/// One permission: the user's (first) pdk.io role in the org.
struct Permission<'s> {
    org: &'s str,
    user: &'s str,
    role: &'s str,
}

/// The permissions of each org in `orgs`: per org, one per user (its first org-wide assignment
/// of a pdk.io role), in document order.
fn permissions<'s>(s: &'s Snapshot, orgs: &HashSet<&str>) -> HashMap<&'s str, Vec<Permission<'s>>> {
    let mut out: HashMap<&str, Vec<Permission>> = HashMap::new();
    let mut seen: HashSet<(&str, &str)> = HashSet::new();
    for a in &s.role_assignments {
        if a.resource.is_none()
            && orgs.contains(a.org.as_str())
            && ROLES.contains(&a.role.as_str())
            && seen.insert((&a.org, &a.user))
        {
            out.entry(&a.org).or_default().push(Permission {
                org: &a.org,
                user: &a.user,
                role: &a.role,
            });
        }
    }
    out
}

/// The permission `id` of `org`, if any.
fn find<'s>(s: &'s Snapshot, org: &str, id: &str) -> Option<Permission<'s>> {
    let orgs = HashSet::from([org]);
    permissions(s, &orgs)
        .remove(org)
        .unwrap_or_default()
        .into_iter()
        .find(|p| permission_id(p.org, p.user) == id)
}

fn permission_json(org: &str, user: &str, role: &str, item: Option<&User>) -> Value {
    let names: Vec<&str> = item
        .map(|u| [u.first_name.as_deref(), u.last_name.as_deref()])
        .unwrap_or_default()
        .into_iter()
        .flatten()
        .filter(|n| !n.is_empty())
        .collect();
    json!({
        "_id": permission_id(org, user),
        "userId": user,
        "name": (!names.is_empty()).then(|| names.join(" ")),
        "email": item.and_then(|u| u.email.as_deref()),
        "role": role,
        "organizationId": org,
    })
}

fn org_missing(org: &str) -> RequestError {
    RequestError::Missing(format!("organization `{org}` not found"))
}

fn role_missing(org: &str, role: &str) -> RequestError {
    RequestError::Missing(format!("`role`: role `{role}` does not exist in organization `{org}`"))
}

fn permission_missing(org: &str, id: &str) -> RequestError {
    RequestError::Missing(format!("permission `{id}` not found in organization `{org}`"))
}

/// The org if the caller may see it (404 otherwise), and whether it may change its
/// permissions (403 otherwise).
fn may_change(cx: &Ctx<'_>, org: &str) -> Result<(), Refused> {
    let caller = cx.caller();
    if !cx.current.snapshot.orgs.iter().any(|o| o.key == org) || !caller.sees(org) {
        return Err(org_missing(org).into());
    }
    if !caller.administers(org) {
        return Err(Refused::Forbidden(format!(
            "changing the permissions of organization `{org}` needs an admin of it or a superuser"
        )));
    }
    Ok(())
}

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

async fn create(cx: &Ctx<'_>, org: &str, new: NewPermission) -> Answer {
    let email = check_email(&new.email, "email")?;
    check_role(&new.role)?;
    may_change(cx, org)?;
    let role = new.role.as_str();
    let made = Mutex::new(None);
    let w = write_with(cx.ctl, cx.project.project_id, |s| {
        if !s.orgs.iter().any(|o| o.key == org) {
            return Err(org_missing(org));
        }
        if !resolves(s, org, role) {
            return Err(role_missing(org, role));
        }
        // The user with that email (else one keyed by it), else a new user keyed by the email.
        let found = s
            .users
            .iter()
            .find(|u| u.email.as_deref().is_some_and(|e| e.eq_ignore_ascii_case(&email)))
            .or_else(|| s.users.iter().find(|u| u.key == email));
        let user = found.map_or(email.as_str(), |u| u.key.as_str());
        let orgs = HashSet::from([org]);
        if let Some(p) = permissions(s, &orgs)
            .remove(org)
            .unwrap_or_default()
            .into_iter()
            .find(|p| p.user == user)
        {
            return Err(RequestError::Conflict(format!(
                "`email`: `{email}` already has a permission in organization `{org}` (`{}`, role `{}`); change its role with PUT",
                permission_id(org, user),
                p.role
            )));
        }
        let mut ops = Vec::new();
        let new_user;
        let item = match found {
            Some(u) => Some(u),
            None => {
                new_user = User {
                    key: email.clone(),
                    email: Some(email.clone()),
                    first_name: None,
                    last_name: None,
                    attributes: None,
                };
                ops.push(Op::Upsert(Item::User(new_user.clone())));
                Some(&new_user)
            }
        };
        keep(&made, permission_json(org, user, role, item));
        ops.push(Op::Upsert(Item::RoleAssignment(RoleAssignment {
            user: user.to_owned(),
            role: role.to_owned(),
            org: org.to_owned(),
            resource: None,
        })));
        Ok(ops)
    })
    .await?;
    Ok(answer(StatusCode::CREATED, &kept(made)?, Some(w.version)))
}

/// The org-wide pdk.io-role assignments of `user` in `org`.
fn pdk_assignments<'s>(s: &'s Snapshot, org: &str, user: &str) -> impl Iterator<Item = &'s RoleAssignment> {
    let (org, user) = (org.to_owned(), user.to_owned());
    s.role_assignments
        .iter()
        .filter(move |a| a.org == org && a.user == user && a.resource.is_none() && ROLES.contains(&a.role.as_str()))
}

async fn update(cx: &Ctx<'_>, org: &str, id: &str, change: RoleChange) -> Answer {
    check_role(&change.role)?;
    may_change(cx, org)?;
    let role = change.role.as_str();
    let made = Mutex::new(None);
    let w = write_with(cx.ctl, cx.project.project_id, |s| {
        if !s.orgs.iter().any(|o| o.key == org) {
            return Err(org_missing(org));
        }
        let p = find(s, org, id).ok_or_else(|| permission_missing(org, id))?;
        if !resolves(s, org, role) {
            return Err(role_missing(org, role));
        }
        let mut ops: Vec<Op> = pdk_assignments(s, org, p.user)
            .filter(|a| a.role != role)
            .map(|a| Op::Delete(Identity::RoleAssignment(a.clone())))
            .collect();
        ops.push(Op::Upsert(Item::RoleAssignment(RoleAssignment {
            user: p.user.to_owned(),
            role: role.to_owned(),
            org: org.to_owned(),
            resource: None,
        })));
        let item = s.users.iter().find(|u| u.key == p.user);
        keep(&made, permission_json(org, p.user, role, item));
        Ok(ops)
    })
    .await?;
    // pdk.io answers an update with 201.
    Ok(answer(StatusCode::CREATED, &kept(made)?, Some(w.version)))
}

async fn delete(cx: &Ctx<'_>, org: &str, id: &str) -> Answer {
    let target = json!({ "organization": org, "permission": id });
    cx.audited("ou.permission.delete", &target, async {
        may_change(cx, org)?;
        let w = write_with(cx.ctl, cx.project.project_id, |s| {
            if !s.orgs.iter().any(|o| o.key == org) {
                return Err(org_missing(org));
            }
            let p = find(s, org, id).ok_or_else(|| permission_missing(org, id))?;
            Ok(pdk_assignments(s, org, p.user)
                .map(|a| Op::Delete(Identity::RoleAssignment(a.clone())))
                .collect())
        })
        .await?;
        Ok((no_content(w.version), w.version))
    })
    .await
}

/// The permissions of `org` and of every org above it (up the `parent` chain, each org once).
fn ancestors(cx: &Ctx<'_>, org: &str, params: &Params) -> Answer {
    let (skip, limit) = params.skip_limit(MAX_PAGE, MAX_PAGE)?;
    let s = &cx.current.snapshot;
    if !s.orgs.iter().any(|o| o.key == org) || !cx.caller().sees(org) {
        return Err(org_missing(org).into());
    }
    let by_key: HashMap<&str, &crate::model::Org> = s.orgs.iter().map(|o| (o.key.as_str(), o)).collect();
    let mut chain: Vec<&str> = Vec::new();
    let mut seen = HashSet::new();
    let mut at = by_key.get(org).copied();
    while let Some(o) = at {
        if !seen.insert(o.key.as_str()) {
            break;
        }
        chain.push(&o.key);
        at = o.parent.as_deref().and_then(|p| by_key.get(p).copied());
    }
    let mut perms = permissions(s, &seen);
    let all: Vec<Permission> = chain.iter().flat_map(|o| perms.remove(o).unwrap_or_default()).collect();
    let total = all.len();
    let page: Vec<Permission> = all.into_iter().skip(skip).take(limit).collect();
    let wanted: HashSet<&str> = page.iter().map(|p| p.user).collect();
    let users: HashMap<&str, &User> = s
        .users
        .iter()
        .filter(|u| wanted.contains(u.key.as_str()))
        .map(|u| (u.key.as_str(), u))
        .collect();
    let items = page
        .iter()
        .map(|p| permission_json(p.org, p.user, p.role, users.get(p.user).copied()))
        .collect();
    Ok(array_page(items, total, cx.current.version))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_distinct() {
        let a = permission_id("acme", "alice");
        assert_eq!(a.len(), 24);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(a, permission_id("acme", "alice"));
        assert_ne!(a, permission_id("acme", "bob"));
        // The separator keeps (org, user) pairs apart.
        assert_ne!(permission_id("ab", "c"), permission_id("a", "bc"));
        assert!(check_role("admin").is_ok());
        assert!(check_role("owner").unwrap_err().to_string().contains("`role`"));
    }
}
