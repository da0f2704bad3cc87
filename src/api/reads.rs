//! The perm/v1 read RPCs, shared by the gRPC services and their HTTP JSON routes: check the
//! request (errors name the field), ask the index, build the response message, and page it.
//! No decision logic: every answer comes from `crate::index` queries.

use crate::api::grpc::perm;
use crate::api::http::RequestError;
use crate::index::{
    DEFAULT_LIMIT, GroupNode, Index, MAX_LIMIT, MenuNode, QueryError, RoleInfo, Subject, decode_cursor, encode_cursor,
    page_bitmap,
};

/// Where a page starts and how long it may be.
#[derive(Debug, Clone, Copy)]
pub struct Paging {
    pub after: Option<u64>,
    pub limit: usize,
}

impl Paging {
    /// From an optional `limit` (1 to `MAX_LIMIT`, default `DEFAULT_LIMIT`) and `cursor`;
    /// `at` prefixes the field names in errors.
    pub fn parse(limit: Option<u64>, cursor: Option<&str>, at: &str) -> Result<Paging, RequestError> {
        let limit = match limit {
            None => DEFAULT_LIMIT,
            Some(n) if n >= 1 && n <= MAX_LIMIT as u64 => n as usize,
            Some(n) => {
                return Err(RequestError::invalid(format!(
                    "`{at}limit` is {n}; it must be between 1 and {MAX_LIMIT}"
                )));
            }
        };
        let after = match cursor.filter(|c| !c.is_empty()) {
            None => None,
            Some(c) => Some(decode_cursor(c, &format!("{at}cursor")).map_err(query_error)?),
        };
        Ok(Paging { after, limit })
    }
}

/// A response message with what its paging says.
#[derive(Debug)]
pub struct Paged<T> {
    pub body: T,
    /// Present when more elements follow: pass it back as the cursor.
    pub next_cursor: Option<String>,
    /// A tree answer that was cut at `MAX_TREE_NODES`.
    pub truncated: bool,
}

fn whole<T>(body: T) -> Paged<T> {
    Paged {
        body,
        next_cursor: None,
        truncated: false,
    }
}

pub fn query_error(e: QueryError) -> RequestError {
    match e {
        e @ QueryError::RoleNotFound { .. } => RequestError::Missing(e.to_string()),
        e @ QueryError::BadCursor { .. } => RequestError::Invalid(e.to_string()),
    }
}

fn non_empty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

fn required<'a>(v: &'a str, field: &str) -> Result<&'a str, RequestError> {
    non_empty(v).ok_or_else(|| RequestError::invalid(format!("`{field}` is required and must not be empty")))
}

fn subject<'a>(user_id: &'a str, role_id: &'a str) -> Result<Subject<'a>, RequestError> {
    match (non_empty(user_id), non_empty(role_id)) {
        (Some(u), _) => Ok(Subject::User(u)),
        (None, Some(r)) => Ok(Subject::Role(r)),
        (None, None) => Err(RequestError::invalid("one of `user_id` or `role_id` is required")),
    }
}

/// A page of a list kept in a fixed order, by position.
fn page_vec<T>(items: Vec<T>, p: Paging) -> (Vec<T>, Option<String>) {
    let start = p
        .after
        .map_or(0, |a| usize::try_from(a).unwrap_or(usize::MAX).saturating_add(1));
    let total = items.len();
    let page: Vec<T> = items.into_iter().skip(start).take(p.limit).collect();
    let end = start.saturating_add(page.len());
    let next = (end < total && !page.is_empty()).then(|| encode_cursor(end as u64 - 1));
    (page, next)
}

/// The org of a perm/v1 request that names none: `default`, as model.md §2 does.
fn org_or_default(org_id: &str) -> &str {
    non_empty(org_id).unwrap_or("default")
}

/// PermService.ListResources: the instances the subject may `act` on, each with every action
/// of the type allowed on it. Without `org_id`, every org (each instance in its own org).
pub fn list_resources(
    ix: &Index,
    r: &perm::PermServiceListResourcesRequest,
    p: Paging,
) -> Result<Paged<perm::PermServiceListResourcesResponse>, RequestError> {
    let s = subject(&r.user_id, &r.role_id)?;
    let t = required(&r.res_type, "res_type")?;
    let act = required(&r.act, "act")?;
    let ids = ix.list_resources(s, t, act, non_empty(&r.org_id));
    let (page, next_cursor) = page_bitmap(&ids, p.after, p.limit);
    let resources = page
        .into_iter()
        .filter_map(|id| {
            let (_, key, org) = ix.instance_names(id)?;
            let q = crate::index::Query {
                subject: s,
                action: act,
                resource_type: t,
                resource_key: Some(key),
                org: Some(org),
                group_type: None,
                request: None,
            };
            Some(perm::Resource {
                res_id: key.to_string(),
                acts: ix.allowed_actions(&q).into_iter().map(String::from).collect(),
            })
        })
        .collect();
    Ok(Paged {
        body: perm::PermServiceListResourcesResponse { resources },
        next_cursor,
        truncated: false,
    })
}

fn menu_item(n: MenuNode) -> perm::MenuItem {
    perm::MenuItem {
        code: n.code,
        r#type: n.platform,
        name: n.name,
        children: n.children.into_iter().map(menu_item).collect(),
    }
}

/// PermService.ListMenus: the subject's menu tree in `org_id` (default `default`) on
/// `platform` (every platform when empty).
pub fn perm_list_menus(
    ix: &Index,
    r: &perm::PermServiceListMenusRequest,
) -> Result<Paged<perm::PermServiceListMenusResponse>, RequestError> {
    let s = subject(&r.user_id, &r.role_id)?;
    let items = ix.menus(Some(s), org_or_default(&r.org_id), non_empty(&r.platform));
    Ok(whole(perm::PermServiceListMenusResponse {
        items: items.into_iter().map(menu_item).collect(),
    }))
}

/// MenuService.ListMenus: every menu item of `platform` (all when empty) as a tree.
pub fn list_menus(ix: &Index, r: &perm::ListMenusRequest) -> Result<Paged<perm::ListMenusResponse>, RequestError> {
    let items = ix.menus(None, "", non_empty(&r.platform));
    Ok(whole(perm::ListMenusResponse {
        items: items.into_iter().map(menu_item).collect(),
    }))
}

fn perm_group(t: &str, n: GroupNode) -> perm::PermGroup {
    perm::PermGroup {
        res_type: t.to_string(),
        group_type: n.group_type,
        group_id: n.group_id,
        resources: n.resources,
        children: n.children.into_iter().map(|c| perm_group(t, c)).collect(),
        acts: n.acts,
    }
}

fn group(t: &str, n: GroupNode) -> perm::Group {
    perm::Group {
        res_type: t.to_string(),
        group_type: n.group_type,
        group_id: n.group_id,
        resources: n.resources,
        children: n.children.into_iter().map(|c| group(t, c)).collect(),
    }
}

/// PermService.ListGroups: the containing instances of `org_id` (default `default`) under
/// which the subject may `act` on `res_type`, as a forest.
pub fn perm_list_groups(
    ix: &Index,
    r: &perm::PermServiceListGroupsRequest,
) -> Result<Paged<perm::PermServiceListGroupsResponse>, RequestError> {
    let s = subject(&r.user_id, &r.role_id)?;
    let t = required(&r.res_type, "res_type")?;
    let act = required(&r.act, "act")?;
    let (nodes, truncated) = ix.groups(Some(s), t, act, org_or_default(&r.org_id));
    Ok(Paged {
        body: perm::PermServiceListGroupsResponse {
            groups: nodes.into_iter().map(|n| perm_group(t, n)).collect(),
        },
        next_cursor: None,
        truncated,
    })
}

/// GroupService.ListGroups: every containing instance of `org_id` with the `res_type`
/// instances directly below each.
pub fn list_groups(ix: &Index, r: &perm::ListGroupsRequest) -> Result<Paged<perm::ListGroupsResponse>, RequestError> {
    let org = required(&r.org_id, "org_id")?;
    let t = required(&r.res_type, "res_type")?;
    let (nodes, truncated) = ix.groups(None, t, "", org);
    Ok(Paged {
        body: perm::ListGroupsResponse {
            groups: nodes.into_iter().map(|n| group(t, n)).collect(),
        },
        next_cursor: None,
        truncated,
    })
}

fn role(r: RoleInfo) -> perm::Role {
    perm::Role {
        id: r.id,
        name: r.key,
        status: r.status.unwrap_or_default(),
        org_id: r.org.unwrap_or_default(),
        display_name: r.name.unwrap_or_default(),
    }
}

/// RoleService.GetRole by perm/v1 id (the role's position in the document, from 1).
pub fn get_role(ix: &Index, r: &perm::GetRoleRequest) -> Result<Paged<perm::GetRoleResponse>, RequestError> {
    if r.id == 0 {
        return Err(RequestError::invalid("`id` is required and must not be 0"));
    }
    let found = ix
        .role_by_id(r.id)
        .ok_or_else(|| RequestError::Missing(format!("role with `id` {} does not exist", r.id)))?;
    Ok(whole(perm::GetRoleResponse {
        role: Some(role(found)),
    }))
}

/// RoleService.ListRoles: the roles usable in `org_id` (global and scoped to it), or every
/// role without one; document order.
pub fn list_roles(
    ix: &Index,
    r: &perm::ListRolesRequest,
    p: Paging,
) -> Result<Paged<perm::ListRolesResponse>, RequestError> {
    let (page, next_cursor) = page_vec(ix.list_roles(non_empty(&r.org_id)), p);
    Ok(Paged {
        body: perm::ListRolesResponse {
            roles: page.into_iter().map(role).collect(),
        },
        next_cursor,
        truncated: false,
    })
}

/// RoleService.GetRolesForUser: direct org-wide roles in `org_id`, or with `effective` the
/// roles inherited from ancestor orgs and through `extends` too. Sorted.
pub fn roles_for_user(
    ix: &Index,
    r: &perm::GetRolesForUserRequest,
    effective: bool,
    p: Paging,
) -> Result<Paged<perm::GetRolesForUserResponse>, RequestError> {
    let org = required(&r.org_id, "org_id")?;
    let user = required(&r.user_id, "user_id")?;
    let (roles, next_cursor) = page_vec(ix.roles_for_user(user, org, effective), p);
    Ok(Paged {
        body: perm::GetRolesForUserResponse { roles },
        next_cursor,
        truncated: false,
    })
}

/// RoleService.GetUsersForRole: users holding `role_id` org-wide in `org_id` (with
/// `effective`, through ancestor orgs and `extends`); without `role_id`, every user with a
/// role in the org. A role that does not resolve in the org is NOT_FOUND.
pub fn users_for_role(
    ix: &Index,
    r: &perm::GetUsersForRoleRequest,
    effective: bool,
    p: Paging,
) -> Result<Paged<perm::GetUsersForRoleResponse>, RequestError> {
    let org = required(&r.org_id, "org_id")?;
    let users = ix
        .users_for_role(non_empty(&r.role_id), org, effective)
        .map_err(query_error)?;
    let (page, next_cursor) = page_bitmap(&users, p.after, p.limit);
    Ok(Paged {
        body: perm::GetUsersForRoleResponse {
            users: page.into_iter().map(|u| ix.user_key(u).to_string()).collect(),
        },
        next_cursor,
        truncated: false,
    })
}

/// OrgService.ListOrg: every org key in document order.
pub fn list_orgs(ix: &Index, p: Paging) -> Result<Paged<perm::ListOrgResponse>, RequestError> {
    let orgs: Vec<String> = ix.list_orgs().into_iter().map(String::from).collect();
    let (orgs, next_cursor) = page_vec(orgs, p);
    Ok(Paged {
        body: perm::ListOrgResponse { orgs },
        next_cursor,
        truncated: false,
    })
}
