//! The gRPC floor: a bare tonic server whose perm/v1 `Enforce` decodes the request and answers a
//! fixed `{ok: true, code: "org_role"}` — same protos, tonic and runtime as `permd serve`, no
//! index, no metrics, no gate: what this machine can do for a gRPC check at best. The other
//! PermService methods answer UNIMPLEMENTED. bench/h2load.sh runs it beside permd.
//!
//! Usage: `grpc_floor [ADDR]` (default `127.0.0.1:0`); prints `listening ADDR` on stdout.
#![allow(clippy::expect_used)]

use permd::api::grpc::perm;
use permd::api::grpc::perm::perm_service_server::{PermService, PermServiceServer};
use std::io::Write;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

struct Floor;

#[tonic::async_trait]
impl PermService for Floor {
    async fn enforce(&self, req: Request<perm::EnforceRequest>) -> Result<Response<perm::EnforceResponse>, Status> {
        // Touch the request as a real check must before it can decide.
        std::hint::black_box(req.get_ref().user_id.len());
        Ok(Response::new(perm::EnforceResponse {
            ok: true,
            code: "org_role".into(),
        }))
    }

    async fn list_resources(
        &self,
        _: Request<perm::PermServiceListResourcesRequest>,
    ) -> Result<Response<perm::PermServiceListResourcesResponse>, Status> {
        Err(Status::unimplemented("the floor answers Enforce only"))
    }

    async fn list_menus(
        &self,
        _: Request<perm::PermServiceListMenusRequest>,
    ) -> Result<Response<perm::PermServiceListMenusResponse>, Status> {
        Err(Status::unimplemented("the floor answers Enforce only"))
    }

    async fn list_groups(
        &self,
        _: Request<perm::PermServiceListGroupsRequest>,
    ) -> Result<Response<perm::PermServiceListGroupsResponse>, Status> {
        Err(Status::unimplemented("the floor answers Enforce only"))
    }

    async fn save_role_perm(
        &self,
        _: Request<perm::PermServiceSaveRolePermRequest>,
    ) -> Result<Response<perm::PermServiceSaveRolePermResponse>, Status> {
        Err(Status::unimplemented("the floor answers Enforce only"))
    }
}

fn main() {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:0".into());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(&addr).await.expect("bind");
        let local = listener.local_addr().expect("local address");
        println!("listening {local}");
        std::io::stdout().flush().expect("stdout");
        tonic::transport::Server::builder()
            .add_service(PermServiceServer::new(Floor))
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await
            .expect("serve");
    });
}
