//! The organisation faces of the seeds on the control plane: perms.io's organisation service
//! (seed 000, `/organisation-service/v1/…`), pdk.io OU permissions (seed 001, `/api/ous/…`) and
//! organisations with their isolation rules (seed 004, `/api/v1/organizations…`).

use super::Control;
use super::db::KeyProject;
use super::http::Body;
use crate::wire::RequestError;
use http::{Request, Response};
use hyper::body::Incoming;
use std::sync::Arc;

/// Whether `path` belongs to one of these faces.
pub fn routes(path: &str) -> bool {
    path.starts_with("/organisation-service/v1/")
        || path.starts_with("/api/ous/")
        || path.starts_with("/api/v1/organizations")
}

pub async fn route(
    _ctl: &Arc<Control>,
    _project: &KeyProject,
    req: Request<Incoming>,
) -> Result<Response<Body>, RequestError> {
    Err(RequestError::NotFound(req.uri().path().to_owned()))
}
