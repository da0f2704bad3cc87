//! `permd inject-webhook`: a Kubernetes mutating admission webhook that adds the permd sidecar to pods annotated `permd.io/inject: "true"`.
//!
//! The API server sends an `admission.k8s.io/v1` AdmissionReview for each pod created in the
//! namespaces the MutatingWebhookConfiguration selects (the Helm chart in `charts/permd`
//! renders it). [`review`] answers it: when the pod asks for injection and has not been
//! injected yet, the answer carries a JSON Patch that appends the sidecar's containers and
//! volumes (from the `--sidecar-file` the chart renders) and marks the pod
//! `permd.io/injected: "true"`; otherwise the pod is allowed unchanged. The webhook never
//! denies a pod: a review it cannot read is answered with HTTP 400, and the API server then
//! applies the configuration's `failurePolicy` (`Ignore` by default).
//!
//! [`run`] serves `POST /mutate` and `GET /healthz` over TLS (rustls, HTTP/1.1 and HTTP/2).

mod server;

#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

pub use server::{run, serve};

/// The pod annotation that asks for injection (value `"true"`).
pub const INJECT_ANNOTATION: &str = "permd.io/inject";
/// The pod annotation the webhook sets once it has injected the sidecar.
pub const INJECTED_ANNOTATION: &str = "permd.io/injected";
/// The name of the permd container; a pod that has one is not injected again.
pub const SIDECAR_CONTAINER: &str = "permd";
/// The only AdmissionReview version served.
pub const ADMISSION_API_VERSION: &str = "admission.k8s.io/v1";
/// The largest AdmissionReview accepted (a larger body is answered 413).
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// Command-line options of `permd inject-webhook`.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Address to listen on (TLS).
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:8443")]
    pub addr: SocketAddr,

    /// PEM file with the server certificate (chain), e.g. tls.crt of a kubernetes.io/tls Secret.
    #[arg(long, value_name = "FILE")]
    pub tls_cert: PathBuf,

    /// PEM file with the server's private key, e.g. tls.key of a kubernetes.io/tls Secret.
    #[arg(long, value_name = "FILE")]
    pub tls_key: PathBuf,

    /// JSON file `{"containers": [...], "volumes": [...]}`: what is added to an injected pod.
    #[arg(long, value_name = "FILE")]
    pub sidecar_file: PathBuf,
}

/// What an injected pod gets: Kubernetes `Container` and `Volume` objects, as JSON.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sidecar {
    /// Appended to `spec.containers`.
    #[serde(default)]
    pub containers: Vec<Map<String, Value>>,
    /// Appended to `spec.volumes`, except those whose name the pod already has.
    #[serde(default)]
    pub volumes: Vec<Map<String, Value>>,
}

impl Sidecar {
    /// Parses and checks a sidecar document: at least one container, every container and
    /// volume named, no name twice.
    pub fn from_json(bytes: &[u8]) -> Result<Self, InjectError> {
        let doc: Value =
            serde_json::from_slice(bytes).map_err(|e| InjectError::InvalidSidecar(format!("not valid JSON: {e}")))?;
        if !doc.is_object() {
            return Err(InjectError::InvalidSidecar(
                "not a sidecar document: expected an object {\"containers\", \"volumes\"}".to_owned(),
            ));
        }
        let sidecar: Sidecar = serde_json::from_value(doc)
            .map_err(|e| InjectError::InvalidSidecar(format!("not a sidecar document: {e}")))?;
        if sidecar.containers.is_empty() {
            return Err(InjectError::InvalidSidecar(
                "containers is empty: nothing to inject".to_owned(),
            ));
        }
        for (list, items) in [("containers", &sidecar.containers), ("volumes", &sidecar.volumes)] {
            let mut seen = HashSet::new();
            for (i, item) in items.iter().enumerate() {
                let name = item
                    .get("name")
                    .and_then(Value::as_str)
                    .filter(|n| !n.is_empty())
                    .ok_or_else(|| InjectError::InvalidSidecar(format!("{list}[{i}].name is missing")))?;
                if !seen.insert(name) {
                    return Err(InjectError::InvalidSidecar(format!(
                        "{list}[{i}].name {name:?} appears twice"
                    )));
                }
            }
        }
        Ok(sidecar)
    }

    /// Reads [`Sidecar::from_json`] from a file.
    pub async fn load(path: &Path) -> anyhow::Result<Self> {
        let bytes = tokio::fs::read(path)
            .await
            .with_context(|| format!("reading sidecar file {}", path.display()))?;
        Self::from_json(&bytes).with_context(|| format!("sidecar file {}", path.display()))
    }

    fn container_names(&self) -> impl Iterator<Item = &str> {
        self.containers
            .iter()
            .filter_map(|c| c.get("name").and_then(Value::as_str))
    }
}

/// Why an AdmissionReview (or a sidecar document) could not be used.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("body is not valid JSON: {0}")]
    Json(String),
    #[error("body is not a JSON object")]
    NotAnObject,
    #[error("apiVersion must be \"admission.k8s.io/v1\", got {0}")]
    ApiVersion(String),
    #[error("kind must be \"AdmissionReview\", got {0}")]
    Kind(String),
    #[error("request is missing or not an object")]
    MissingRequest,
    #[error("request.uid is missing or empty")]
    MissingUid,
    #[error("request.object is missing or not an object")]
    MissingObject,
    #[error("request.object is not a Pod (kind {0})")]
    NotAPod(String),
    #[error("{field} must be {expected}")]
    InvalidField {
        field: &'static str,
        expected: &'static str,
    },
    #[error("sidecar: {0}")]
    InvalidSidecar(String),
}

impl InjectError {
    /// The error code of the JSON error body (`{"error": {"code", "message"}}`).
    pub fn code(&self) -> &'static str {
        "invalid_argument"
    }
}

/// Answers one AdmissionReview (`admission.k8s.io/v1`) with an AdmissionReview response.
///
/// The pod is allowed in every case; the response carries a base64 JSON Patch that adds
/// the sidecar when the pod is annotated `permd.io/inject: "true"` and is not already
/// injected (no container named `permd` or like one of the sidecar's, no
/// `permd.io/injected: "true"`). Operations other than CREATE are allowed unchanged.
pub fn review(body: &[u8], sidecar: &Sidecar) -> Result<Value, InjectError> {
    let doc: Value = serde_json::from_slice(body).map_err(|e| InjectError::Json(e.to_string()))?;
    let doc = doc.as_object().ok_or(InjectError::NotAnObject)?;
    match doc.get("apiVersion") {
        Some(Value::String(v)) if v == ADMISSION_API_VERSION => {}
        other => return Err(InjectError::ApiVersion(describe(other))),
    }
    match doc.get("kind") {
        Some(Value::String(k)) if k == "AdmissionReview" => {}
        other => return Err(InjectError::Kind(describe(other))),
    }
    let request = doc
        .get("request")
        .and_then(Value::as_object)
        .ok_or(InjectError::MissingRequest)?;
    let uid = request
        .get("uid")
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty())
        .ok_or(InjectError::MissingUid)?;

    // Only a new pod can get containers: pods' container lists are immutable.
    if let Some(op) = request.get("operation").and_then(Value::as_str)
        && op != "CREATE"
    {
        return Ok(response(uid, None));
    }
    if let Some(kind) = request.get("kind").and_then(|k| k.get("kind")).and_then(Value::as_str)
        && kind != "Pod"
    {
        return Err(InjectError::NotAPod(format!("{kind:?}")));
    }
    let pod = request
        .get("object")
        .and_then(Value::as_object)
        .ok_or(InjectError::MissingObject)?;
    match pod.get("kind") {
        None => {}
        Some(Value::String(k)) if k == "Pod" => {}
        other => return Err(InjectError::NotAPod(describe(other))),
    }

    let metadata = optional_object(pod.get("metadata"), "request.object.metadata")?;
    let annotations = match metadata {
        Some(m) => optional_object(m.get("annotations"), "request.object.metadata.annotations")?,
        None => None,
    };
    if !annotation_is_true(annotations, INJECT_ANNOTATION) || annotation_is_true(annotations, INJECTED_ANNOTATION) {
        return Ok(response(uid, None));
    }

    let spec = pod
        .get("spec")
        .and_then(Value::as_object)
        .ok_or(InjectError::InvalidField {
            field: "request.object.spec",
            expected: "an object",
        })?;
    let containers = spec
        .get("containers")
        .and_then(Value::as_array)
        .ok_or(InjectError::InvalidField {
            field: "request.object.spec.containers",
            expected: "an array",
        })?;
    let volumes = match spec.get("volumes") {
        None | Some(Value::Null) => None,
        Some(Value::Array(v)) => Some(v),
        Some(_) => {
            return Err(InjectError::InvalidField {
                field: "request.object.spec.volumes",
                expected: "an array",
            });
        }
    };

    let existing: HashSet<&str> = containers
        .iter()
        .filter_map(|c| c.get("name").and_then(Value::as_str))
        .collect();
    if existing.contains(SIDECAR_CONTAINER) || sidecar.container_names().any(|n| existing.contains(n)) {
        return Ok(response(uid, None));
    }

    let mut patch = Vec::new();
    for container in &sidecar.containers {
        patch.push(add("/spec/containers/-", Value::Object(container.clone())));
    }
    patch.extend(volume_patch(volumes, &sidecar.volumes));
    patch.push(annotation_patch(
        metadata.is_some(),
        annotations.is_some(),
        INJECTED_ANNOTATION,
        "true",
    ));
    Ok(response(uid, Some(&patch)))
}

/// JSON Patch operations adding `wanted` volumes to a pod whose `spec.volumes` is
/// `existing` (`None`: absent), skipping names the pod already has.
fn volume_patch(existing: Option<&Vec<Value>>, wanted: &[Map<String, Value>]) -> Vec<Value> {
    let have: HashSet<&str> = existing
        .into_iter()
        .flatten()
        .filter_map(|v| v.get("name").and_then(Value::as_str))
        .collect();
    let new: Vec<Value> = wanted
        .iter()
        .filter(|v| v.get("name").and_then(Value::as_str).is_none_or(|n| !have.contains(n)))
        .cloned()
        .map(Value::Object)
        .collect();
    match existing {
        _ if new.is_empty() => Vec::new(),
        None => vec![add("/spec/volumes", Value::Array(new))],
        Some(_) => new.into_iter().map(|v| add("/spec/volumes/-", v)).collect(),
    }
}

/// The JSON Patch operation setting annotation `key` to `value`, creating
/// `/metadata/annotations` (or `/metadata`) when absent.
fn annotation_patch(has_metadata: bool, has_annotations: bool, key: &str, value: &str) -> Value {
    let mut one = Map::new();
    one.insert(key.to_owned(), Value::String(value.to_owned()));
    if !has_metadata {
        add("/metadata", json!({ "annotations": one }))
    } else if !has_annotations {
        add("/metadata/annotations", Value::Object(one))
    } else {
        add(
            &format!("/metadata/annotations/{}", escape_pointer(key)),
            Value::String(value.to_owned()),
        )
    }
}

fn add(path: &str, value: Value) -> Value {
    json!({ "op": "add", "path": path, "value": value })
}

/// Escapes one JSON Pointer reference token (RFC 6901): `~` → `~0`, `/` → `~1`.
fn escape_pointer(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

fn annotation_is_true(annotations: Option<&Map<String, Value>>, key: &str) -> bool {
    annotations
        .and_then(|a| a.get(key))
        .and_then(Value::as_str)
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

fn optional_object<'a>(
    value: Option<&'a Value>,
    field: &'static str,
) -> Result<Option<&'a Map<String, Value>>, InjectError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(_) => Err(InjectError::InvalidField {
            field,
            expected: "an object",
        }),
    }
}

fn response(uid: &str, patch: Option<&[Value]>) -> Value {
    let mut answer = Map::new();
    answer.insert("uid".to_owned(), Value::String(uid.to_owned()));
    answer.insert("allowed".to_owned(), Value::Bool(true));
    if let Some(patch) = patch {
        let encoded = base64::engine::general_purpose::STANDARD.encode(Value::Array(patch.to_vec()).to_string());
        answer.insert("patchType".to_owned(), Value::String("JSONPatch".to_owned()));
        answer.insert("patch".to_owned(), Value::String(encoded));
    }
    json!({
        "apiVersion": ADMISSION_API_VERSION,
        "kind": "AdmissionReview",
        "response": answer,
    })
}

/// A short description of a JSON value for an error message (missing, or the value).
fn describe(value: Option<&Value>) -> String {
    match value {
        None => "nothing".to_owned(),
        Some(v) => {
            let mut s = v.to_string();
            if s.len() > 64 {
                let mut cut = 64;
                while !s.is_char_boundary(cut) {
                    cut -= 1;
                }
                s.truncate(cut);
                s.push('…');
            }
            s
        }
    }
}
