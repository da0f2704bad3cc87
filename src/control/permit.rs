//! The Permit-style REST face (control.md "Permit-style REST"): `/v2/schema/{project}/{env}/…`
//! and `/v2/facts/{project}/{env}/…`, mapped onto the write path and answered from the
//! project's current snapshot.

use super::Control;
use super::db::KeyProject;
use super::http::Body;
use crate::wire::RequestError;
use http::{Request, Response};
use hyper::body::Incoming;

pub async fn route(
    _ctl: &Control,
    _project: &KeyProject,
    req: Request<Incoming>,
) -> Result<Response<Body>, RequestError> {
    Err(RequestError::NotFound(req.uri().path().to_owned()))
}
