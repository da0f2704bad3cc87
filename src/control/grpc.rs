//! The control plane's gRPC port: health, reflection, and (with the key of a project in
//! `authorization: Bearer pk_…` metadata) every perm/v1 service, answered by [`super::perm`]
//! (the same functions as the JSON face), and the organisation service.
//!
//! Every call is authorised first (missing or wrong key: UNAUTHENTICATED; past the key's rate
//! limits: RESOURCE_EXHAUSTED with `retry-after`); errors become statuses through
//! `RequestError::into_status`, as on the sidecar. Answers carry `x-permd-version` (a write's
//! new version, or the current one when it changed nothing; a read's version), and lists
//! `x-permd-next-cursor` / `x-permd-truncated`. Reads take `x-permd-limit`, `x-permd-cursor` and
//! `x-permd-effective` metadata, as the sidecar's do.

use super::Control;
use super::db::KeyProject;
use super::perm::{self as face, Answer, NEXT_CURSOR, ReadOpts, TRUNCATED};
use crate::api::grpc::{FILE_DESCRIPTOR_SET, perm};
use crate::api::reads::Paging;
use crate::server::Listener;
use crate::wire::RequestError;
use std::future::Future;
use std::sync::Arc;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Request, Response, Status};

/// The services this port serves, as health and reflection name them.
const SERVICES: [&str; 6] = [
    "organisation.v1.OrganisationService",
    "perm.v1.PermService",
    "perm.v1.RoleService",
    "perm.v1.GroupService",
    "perm.v1.MenuService",
    "perm.v1.OrgService",
];

/// Serves gRPC on `listener` until the replica stops.
pub async fn serve(listener: Listener, ctl: Arc<Control>) -> anyhow::Result<()> {
    use tonic_health::ServingStatus;
    let (health, health_svc) = tonic_health::server::health_reporter();
    for name in std::iter::once("").chain(SERVICES) {
        health.set_service_status(name, ServingStatus::Serving).await;
    }
    let reporter = {
        let mut stop = ctl.stop.clone();
        tokio::spawn(async move {
            let _ = stop.wait_for(|s| *s).await;
            for name in std::iter::once("").chain(SERVICES) {
                health.set_service_status(name, ServingStatus::NotServing).await;
            }
        })
    };
    let reflection = {
        let mut b = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(super::orgs::pb::FILE_DESCRIPTOR_SET)
            .with_service_name("grpc.health.v1.Health");
        for name in SERVICES {
            b = b.with_service_name(name);
        }
        b.build_v1()?
    };
    let state = PermFace { ctl: ctl.clone() };
    let router = tonic::transport::Server::builder()
        .http2_max_header_list_size(64 * 1024)
        .add_service(health_svc)
        .add_service(reflection)
        .add_service(perm::perm_service_server::PermServiceServer::new(state.clone()))
        .add_service(perm::role_service_server::RoleServiceServer::new(state.clone()))
        .add_service(perm::group_service_server::GroupServiceServer::new(state.clone()))
        .add_service(perm::menu_service_server::MenuServiceServer::new(state.clone()))
        .add_service(perm::org_service_server::OrgServiceServer::new(state))
        .add_service(super::orgs::grpc_service(ctl.clone()));
    let mut stop = ctl.stop.clone();
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    let result = match listener {
        Listener::Tcp(l) => {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(l);
            router.serve_with_incoming_shutdown(incoming, stopped).await
        }
        Listener::Unix(l, _file) => {
            let incoming = tokio_stream::wrappers::UnixListenerStream::new(l);
            router.serve_with_incoming_shutdown(incoming, stopped).await
        }
    };
    reporter.abort();
    result?;
    Ok(())
}

/// The perm/v1 services of the control plane.
#[derive(Clone)]
struct PermFace {
    ctl: Arc<Control>,
}

/// The key's project, or the status that refuses the call (counted as the HTTP face counts it).
pub async fn authorize(ctl: &Control, md: &MetadataMap) -> Result<KeyProject, Status> {
    let headers = md.clone().into_headers();
    ctl.keys.authorize(&headers).await.map_err(|e| {
        match &e {
            RequestError::Unauthorized(_) => ctl.metrics.refused.with_label_values(&["unauthenticated"]).inc(),
            RequestError::RateLimited { .. } => ctl.metrics.refused.with_label_values(&["rate_limited"]).inc(),
            _ => {}
        }
        e.into_status()
    })
}

fn text<'a>(md: &'a MetadataMap, name: &str) -> Result<Option<&'a str>, Status> {
    md.get(name)
        .map(|v| {
            v.to_str()
                .map_err(|_| Status::invalid_argument(format!("metadata `{name}` is not text")))
        })
        .transpose()
}

/// `x-permd-limit`, `x-permd-cursor` and `x-permd-effective`, as the sidecar reads them.
fn read_opts(md: &MetadataMap) -> Result<ReadOpts, Status> {
    let limit = match text(md, "x-permd-limit")? {
        None => None,
        Some(v) => Some(
            v.trim()
                .parse::<u64>()
                .map_err(|_| Status::invalid_argument("metadata `x-permd-limit` must be an unsigned integer"))?,
        ),
    };
    let paging = Paging::parse(limit, text(md, "x-permd-cursor")?, "x-permd-").map_err(RequestError::into_status)?;
    let effective = match text(md, "x-permd-effective")? {
        None | Some("false" | "0") => false,
        Some("true" | "1") => true,
        Some(_) => {
            return Err(Status::invalid_argument(
                "metadata `x-permd-effective` must be `true` or `false`",
            ));
        }
    };
    Ok(ReadOpts { paging, effective })
}

/// The gRPC answer: the message, `x-permd-version`, and the paging metadata.
fn respond<T>(a: Answer<T>) -> Response<T> {
    let mut resp = Response::new(a.body);
    let md = resp.metadata_mut();
    md.insert(super::http::VERSION_HEADER, MetadataValue::from(a.version));
    if let Some(c) = a.next_cursor.and_then(|c| MetadataValue::try_from(c).ok()) {
        md.insert(NEXT_CURSOR, c);
    }
    if a.truncated {
        md.insert(TRUNCATED, MetadataValue::from_static("true"));
    }
    resp
}

impl PermFace {
    /// One call: authorise, read the options of a `paged` read, answer with `f`.
    async fn call<Q, A, F, Fut>(&self, req: Request<Q>, paged: bool, f: F) -> Result<Response<A>, Status>
    where
        F: FnOnce(Arc<Control>, KeyProject, Q, ReadOpts) -> Fut,
        Fut: Future<Output = Result<Answer<A>, RequestError>>,
    {
        let project = authorize(&self.ctl, req.metadata()).await?;
        let opts = if paged {
            read_opts(req.metadata())?
        } else {
            ReadOpts::default()
        };
        let answer = f(self.ctl.clone(), project, req.into_inner(), opts)
            .await
            .map_err(RequestError::into_status)?;
        Ok(respond(answer))
    }
}

/// The answer of one method: the `perm` function of the same name (with the read options when
/// marked `paged`).
macro_rules! call {
    ($self:ident, $req:ident, $f:ident) => {
        $self
            .call($req, false, |ctl, p, r, _| async move { face::$f(&ctl, &p, &r).await })
            .await
    };
    ($self:ident, $req:ident, $f:ident, paged) => {
        $self
            .call(
                $req,
                true,
                |ctl, p, r, o| async move { face::$f(&ctl, &p, &r, &o).await },
            )
            .await
    };
}

/// A service's impl (the attribute must see the methods, so the macro writes the whole impl).
macro_rules! service {
    ($trait:path { $($method:ident => $f:ident($req:ty) -> $resp:ty $(, $paged:ident)?;)* }) => {
        #[tonic::async_trait]
        impl $trait for PermFace {
            $(
                async fn $method(&self, req: Request<$req>) -> Result<Response<$resp>, Status> {
                    call!(self, req, $f $(, $paged)?)
                }
            )*
        }
    };
}

service!(perm::perm_service_server::PermService {
    enforce => enforce(perm::EnforceRequest) -> perm::EnforceResponse;
    list_resources => list_resources(perm::PermServiceListResourcesRequest) -> perm::PermServiceListResourcesResponse, paged;
    list_menus => perm_list_menus(perm::PermServiceListMenusRequest) -> perm::PermServiceListMenusResponse;
    list_groups => perm_list_groups(perm::PermServiceListGroupsRequest) -> perm::PermServiceListGroupsResponse;
    save_role_perm => save_role_perm(perm::PermServiceSaveRolePermRequest) -> perm::PermServiceSaveRolePermResponse;
});

service!(perm::role_service_server::RoleService {
    create_role => create_role(perm::CreateRoleRequest) -> perm::CreateRoleResponse;
    delete_role => delete_role(perm::DeleteRoleRequest) -> perm::DeleteRoleResponse;
    update_role => update_role(perm::UpdateRoleRequest) -> perm::UpdateRoleResponse;
    get_role => get_role(perm::GetRoleRequest) -> perm::GetRoleResponse;
    list_roles => list_roles(perm::ListRolesRequest) -> perm::ListRolesResponse, paged;
    add_role_for_user => add_role_for_user(perm::AddRoleForUserRequest) -> perm::AddRoleForUserResponse;
    del_role_for_user => del_role_for_user(perm::DelRoleForUserRequest) -> perm::DelRoleForUserResponse;
    get_roles_for_user => get_roles_for_user(perm::GetRolesForUserRequest) -> perm::GetRolesForUserResponse, paged;
    get_users_for_role => get_users_for_role(perm::GetUsersForRoleRequest) -> perm::GetUsersForRoleResponse, paged;
});

service!(perm::group_service_server::GroupService {
    create_group => create_group(perm::CreateGroupRequest) -> perm::CreateGroupResponse;
    delete_group => delete_group(perm::DeleteGroupRequest) -> perm::DeleteGroupResponse;
    move_group => move_group(perm::MoveGroupRequest) -> perm::MoveGroupResponse;
    list_groups => list_groups(perm::ListGroupsRequest) -> perm::ListGroupsResponse;
    add_res_for_group => add_res_for_group(perm::AddResForGroupRequest) -> perm::AddResForGroupResponse;
    del_res_for_group => del_res_for_group(perm::DelResForGroupRequest) -> perm::DelResForGroupResponse;
});

service!(perm::menu_service_server::MenuService {
    list_menus => list_menus(perm::ListMenusRequest) -> perm::ListMenusResponse;
});

service!(perm::org_service_server::OrgService {
    create_org => create_org(perm::CreateOrgRequest) -> perm::CreateOrgResponse;
    delete_org => delete_org(perm::DeleteOrgRequest) -> perm::DeleteOrgResponse;
    transfer_org => transfer_org(perm::TransferOrgRequest) -> perm::TransferOrgResponse;
    list_org => list_org(perm::ListOrgRequest) -> perm::ListOrgResponse, paged;
});
