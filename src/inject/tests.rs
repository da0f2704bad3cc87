//! Tests of the inject webhook: AdmissionReview fixtures in, JSON Patch out, applied to the pod.

use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use serde_json::{Value, json};

use super::server::handle;
use super::*;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

const ANNOTATED: &str = include_str!("../../tests/fixtures/admission/pod-annotated.json");
const NO_VOLUMES: &str = include_str!("../../tests/fixtures/admission/pod-annotated-no-volumes.json");
const NOT_ANNOTATED: &str = include_str!("../../tests/fixtures/admission/pod-not-annotated.json");
const ALREADY_INJECTED: &str = include_str!("../../tests/fixtures/admission/pod-already-injected.json");
const WITH_PERMD: &str = include_str!("../../tests/fixtures/admission/pod-with-permd-container.json");
const NOT_A_POD: &str = include_str!("../../tests/fixtures/admission/not-a-pod.json");
const MISSING_UID: &str = include_str!("../../tests/fixtures/admission/missing-uid.json");
const V1BETA1: &str = include_str!("../../tests/fixtures/admission/v1beta1.json");
const SIDECAR: &str = include_str!("../../tests/fixtures/admission/sidecar.json");

fn sidecar() -> Result<Sidecar, InjectError> {
    Sidecar::from_json(SIDECAR.as_bytes())
}

fn at<'a>(doc: &'a Value, pointer: &str) -> Result<&'a Value, String> {
    doc.pointer(pointer)
        .ok_or_else(|| format!("{pointer} missing in {doc}"))
}

/// The pod of a review fixture.
fn pod_of(review_doc: &Value) -> Result<Value, String> {
    at(review_doc, "/request/object").cloned()
}

/// The decoded JSON Patch of a review response, if any.
fn patch_of(answer: &Value) -> Result<Option<json_patch::Patch>, Box<dyn std::error::Error + Send + Sync>> {
    let response = at(answer, "/response")?;
    match response.get("patch") {
        None => {
            assert!(response.get("patchType").is_none(), "patchType without patch");
            Ok(None)
        }
        Some(encoded) => {
            assert_eq!(response.get("patchType"), Some(&json!("JSONPatch")));
            let raw =
                base64::engine::general_purpose::STANDARD.decode(encoded.as_str().ok_or("patch is not a string")?)?;
            Ok(Some(serde_json::from_slice(&raw)?))
        }
    }
}

/// Reviews `doc` and returns (answer, the pod after applying the answer's patch).
fn review_and_apply(
    doc: &Value,
    sidecar: &Sidecar,
) -> Result<(Value, Value), Box<dyn std::error::Error + Send + Sync>> {
    let answer = review(doc.to_string().as_bytes(), sidecar)?;
    assert_eq!(at(&answer, "/apiVersion")?, "admission.k8s.io/v1");
    assert_eq!(at(&answer, "/kind")?, "AdmissionReview");
    assert_eq!(at(&answer, "/response/uid")?, at(doc, "/request/uid")?);
    assert_eq!(at(&answer, "/response/allowed")?, &json!(true));
    let mut pod = pod_of(doc)?;
    if let Some(patch) = patch_of(&answer)? {
        json_patch::patch(&mut pod, &patch)?;
    }
    Ok((answer, pod))
}

fn with_pod(doc: &Value, pod: Value) -> Result<Value, String> {
    let mut doc = doc.clone();
    let slot = doc.pointer_mut("/request/object").ok_or("no request.object")?;
    *slot = pod;
    Ok(doc)
}

fn names(list: &Value) -> Vec<&str> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("name").and_then(Value::as_str))
        .collect()
}

#[test]
fn annotated_pod_is_injected_exactly_once() -> TestResult {
    let sidecar = sidecar()?;
    let doc: Value = serde_json::from_str(ANNOTATED)?;
    let (answer, pod) = review_and_apply(&doc, &sidecar)?;
    assert!(patch_of(&answer)?.is_some(), "no patch for an annotated pod");

    assert_eq!(names(at(&pod, "/spec/containers")?), ["app", "permd"]);
    let injected = at(&pod, "/spec/containers/1")?;
    assert_eq!(
        injected.as_object(),
        sidecar.containers.first(),
        "the container is added as given"
    );
    assert_eq!(
        names(at(&pod, "/spec/volumes")?),
        ["kube-api-access-x2x9z", "permd-cache", "permd-socket"]
    );
    let annotations = at(&pod, "/metadata/annotations")?;
    assert_eq!(annotations.get("permd.io/injected"), Some(&json!("true")));
    assert_eq!(annotations.get("permd.io/inject"), Some(&json!("true")));
    assert_eq!(
        annotations.get("kubectl.kubernetes.io/restartedAt"),
        Some(&json!("2026-11-01T10:00:00Z"))
    );
    // Nothing else changed.
    let mut expected = pod_of(&doc)?;
    let mut got = pod.clone();
    for p in [&mut expected, &mut got] {
        for key in ["/spec/containers", "/spec/volumes", "/metadata/annotations"] {
            if let Some(v) = p.pointer_mut(key) {
                *v = Value::Null;
            }
        }
    }
    assert_eq!(expected, got);

    // Reviewing the patched pod again changes nothing.
    let again = with_pod(&doc, pod.clone())?;
    let (answer, pod2) = review_and_apply(&again, &sidecar)?;
    assert!(patch_of(&answer)?.is_none(), "injected twice: {answer}");
    assert_eq!(pod, pod2);

    // Even without the injected annotation, the permd container alone prevents a second one.
    let mut stripped = pod;
    if let Some(Value::Object(a)) = stripped.pointer_mut("/metadata/annotations") {
        a.remove(INJECTED_ANNOTATION);
    }
    let (answer, _) = review_and_apply(&with_pod(&doc, stripped)?, &sidecar)?;
    assert!(patch_of(&answer)?.is_none());
    Ok(())
}

#[test]
fn pod_without_volumes_gets_the_volumes_array() -> TestResult {
    let sidecar = sidecar()?;
    let doc: Value = serde_json::from_str(NO_VOLUMES)?;
    assert!(at(&doc, "/request/object/spec")?.get("volumes").is_none());
    let (answer, pod) = review_and_apply(&doc, &sidecar)?;
    let patch = serde_json::to_value(patch_of(&answer)?.ok_or("no patch")?)?;
    assert!(
        patch
            .as_array()
            .into_iter()
            .flatten()
            .any(|op| op.get("path") == Some(&json!("/spec/volumes"))),
        "the volumes array is created: {patch}"
    );
    assert_eq!(names(at(&pod, "/spec/volumes")?), ["permd-cache", "permd-socket"]);
    assert_eq!(names(at(&pod, "/spec/containers")?), ["app", "permd"]);
    Ok(())
}

#[test]
fn existing_volume_names_are_not_added_twice() -> TestResult {
    let sidecar = sidecar()?;
    let mut doc: Value = serde_json::from_str(ANNOTATED)?;
    // The application declares the shared socket volume itself (it mounts it too).
    if let Some(Value::Array(v)) = doc.pointer_mut("/request/object/spec/volumes") {
        v.push(json!({"name": "permd-socket", "emptyDir": {"medium": "Memory"}}));
    }
    let (_, pod) = review_and_apply(&doc, &sidecar)?;
    assert_eq!(
        names(at(&pod, "/spec/volumes")?),
        ["kube-api-access-x2x9z", "permd-socket", "permd-cache"]
    );
    assert_eq!(
        at(&pod, "/spec/volumes/1/emptyDir/medium")?,
        "Memory",
        "the pod's own volume is kept"
    );
    Ok(())
}

#[test]
fn not_annotated_or_already_injected_pods_are_unchanged() -> TestResult {
    let sidecar = sidecar()?;
    for fixture in [NOT_ANNOTATED, ALREADY_INJECTED, WITH_PERMD] {
        let doc: Value = serde_json::from_str(fixture)?;
        let (answer, pod) = review_and_apply(&doc, &sidecar)?;
        assert!(patch_of(&answer)?.is_none(), "patched: {answer}");
        assert_eq!(pod, pod_of(&doc)?);
    }
    Ok(())
}

#[test]
fn annotation_value_must_be_true() -> TestResult {
    let sidecar = sidecar()?;
    for (value, injects) in [
        (json!("true"), true),
        (json!("True"), true),
        (json!("false"), false),
        (json!(""), false),
        (json!("yes"), false),
        (json!(true), false), // annotations are strings; a bool is not "true"
    ] {
        let mut doc: Value = serde_json::from_str(ANNOTATED)?;
        if let Some(v) = doc.pointer_mut("/request/object/metadata/annotations/permd.io~1inject") {
            *v = value.clone();
        }
        let answer = review(doc.to_string().as_bytes(), &sidecar)?;
        assert_eq!(patch_of(&answer)?.is_some(), injects, "value {value}");
    }
    Ok(())
}

#[test]
fn only_create_is_patched() -> TestResult {
    let sidecar = sidecar()?;
    for op in ["UPDATE", "DELETE", "CONNECT"] {
        let mut doc: Value = serde_json::from_str(ANNOTATED)?;
        if let Some(v) = doc.pointer_mut("/request/operation") {
            *v = json!(op);
        }
        let answer = review(doc.to_string().as_bytes(), &sidecar)?;
        assert!(patch_of(&answer)?.is_none(), "{op} patched");
    }
    Ok(())
}

#[test]
fn annotations_and_metadata_are_created_when_absent() -> TestResult {
    let cases = [
        (json!({"metadata": {"name": "p"}, "spec": {}}), "/metadata/annotations"),
        (json!({"spec": {}}), "/metadata"),
        (
            json!({"metadata": {"annotations": {"a": "b"}}, "spec": {}}),
            "/metadata/annotations/permd.io~1injected",
        ),
    ];
    for (mut pod, path) in cases {
        let has_metadata = pod.get("metadata").is_some();
        let has_annotations = pod.pointer("/metadata/annotations").is_some();
        let op = annotation_patch(has_metadata, has_annotations, INJECTED_ANNOTATION, "true");
        assert_eq!(op.get("path"), Some(&json!(path)));
        let patch: json_patch::Patch = serde_json::from_value(json!([op]))?;
        json_patch::patch(&mut pod, &patch)?;
        assert_eq!(at(&pod, "/metadata/annotations/permd.io~1injected")?, "true", "{pod}");
    }
    Ok(())
}

#[test]
fn json_pointer_tokens_are_escaped() {
    assert_eq!(escape_pointer("permd.io/injected"), "permd.io~1injected");
    assert_eq!(escape_pointer("a~b/c"), "a~0b~1c");
    assert_eq!(escape_pointer("plain"), "plain");
}

#[test]
fn malformed_reviews_are_errors_naming_the_field() -> TestResult {
    let sidecar = sidecar()?;
    let annotated: Value = serde_json::from_str(ANNOTATED)?;
    let mut cases: Vec<(String, &str)> = vec![
        ("not json".to_owned(), "not valid json"),
        ("".to_owned(), "not valid json"),
        ("[1, 2]".to_owned(), "not a json object"),
        ("{}".to_owned(), "apiversion"),
        (V1BETA1.to_owned(), "apiversion"),
        (MISSING_UID.to_owned(), "request.uid"),
        (NOT_A_POD.to_owned(), "not a pod"),
        (
            json!({"apiVersion": "admission.k8s.io/v1", "kind": "Pod"}).to_string(),
            "kind",
        ),
        (
            json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}).to_string(),
            "request",
        ),
        (
            json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": ""}}).to_string(),
            "request.uid",
        ),
        (
            json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": 7}}).to_string(),
            "request.uid",
        ),
        (
            json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": "u"}})
                .to_string(),
            "request.object",
        ),
        (
            json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                   "request": {"uid": "u", "object": {"kind": "Service", "spec": {}}}})
            .to_string(),
            "not a pod",
        ),
    ];
    for (pointer, value, field) in [
        ("/request/object/spec", json!(null), "request.object.spec"),
        (
            "/request/object/spec/containers",
            json!({}),
            "request.object.spec.containers",
        ),
        (
            "/request/object/spec/volumes",
            json!("x"),
            "request.object.spec.volumes",
        ),
        (
            "/request/object/metadata/annotations",
            json!([]),
            "request.object.metadata.annotations",
        ),
        ("/request/object/metadata", json!(1), "request.object.metadata"),
    ] {
        let mut doc = annotated.clone();
        if let Some(v) = doc.pointer_mut(pointer) {
            *v = value;
        }
        cases.push((doc.to_string(), field));
    }
    for (body, field) in cases {
        match review(body.as_bytes(), &sidecar) {
            Ok(answer) => return Err(format!("accepted {body}: {answer}").into()),
            Err(e) => {
                let message = e.to_string();
                assert!(
                    message.to_lowercase().contains(field),
                    "{message:?} does not name {field:?}"
                );
                assert!(
                    message.starts_with(|c: char| !c.is_uppercase()),
                    "{message:?} starts uppercase"
                );
                assert_eq!(e.code(), "invalid_argument");
            }
        }
    }
    Ok(())
}

#[test]
fn truncated_or_mangled_input_never_panics() -> TestResult {
    let sidecar = sidecar()?;
    let bytes = ANNOTATED.as_bytes();
    for end in (0..bytes.len()).step_by(7) {
        let _ = review(bytes.get(..end).unwrap_or_default(), &sidecar);
    }
    let mut flipped = bytes.to_vec();
    for i in (0..flipped.len()).step_by(13) {
        if let Some(b) = flipped.get_mut(i) {
            *b ^= 0x20;
        }
        let _ = review(&flipped, &sidecar);
    }
    Ok(())
}

#[test]
fn sidecar_documents_are_checked() {
    for (doc, message) in [
        (r#"{"containers": []}"#, "containers is empty"),
        (r#"{"volumes": []}"#, "containers is empty"),
        (r#"{"containers": [{"image": "x"}]}"#, "containers[0].name"),
        (r#"{"containers": [{"name": "permd"}, {"name": "permd"}]}"#, "twice"),
        (
            r#"{"containers": [{"name": "permd"}], "volumes": [{"emptyDir": {}}]}"#,
            "volumes[0].name",
        ),
        (
            r#"{"containers": [{"name": "permd"}], "extra": 1}"#,
            "not a sidecar document",
        ),
        ("[]", "not a sidecar document"),
        ("{", "not valid JSON"),
    ] {
        match Sidecar::from_json(doc.as_bytes()) {
            Ok(s) => assert!(s.containers.is_empty(), "accepted {doc}"),
            Err(e) => assert!(e.to_string().contains(message), "{e} vs {message}"),
        }
    }
    assert!(sidecar().is_ok());
}

// ----------------------------------------------------------------------------- HTTP layer

async fn call(
    sidecar: &Sidecar,
    method: Method,
    path: &str,
    body: Vec<u8>,
) -> Result<(StatusCode, Value), Box<dyn std::error::Error + Send + Sync>> {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .body(Full::new(Bytes::from(body)))?;
    let resp = handle(req, sidecar).await;
    let status = resp.status();
    assert_eq!(
        resp.headers().get(http::header::CONTENT_TYPE).map(|v| v.as_bytes()),
        Some(&b"application/json"[..])
    );
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, serde_json::from_slice(&body)?))
}

#[tokio::test]
async fn handler_statuses() -> TestResult {
    let sidecar = sidecar()?;
    let (status, body) = call(&sidecar, Method::POST, "/mutate?timeout=5s", ANNOTATED.into()).await?;
    assert_eq!(status, StatusCode::OK);
    assert!(patch_of(&body)?.is_some());

    let (status, body) = call(&sidecar, Method::POST, "/mutate", b"{".to_vec()).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(at(&body, "/error/code")?, "invalid_argument");
    assert!(
        at(&body, "/error/message")?
            .as_str()
            .is_some_and(|m| m.to_lowercase().contains("json"))
    );

    // Over the limit, without a Content-Length header: cut off while reading.
    let big = vec![b' '; MAX_BODY_BYTES + 1];
    let (status, body) = call(&sidecar, Method::POST, "/mutate", big).await?;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(at(&body, "/error/code")?, "invalid_argument");
    // With a Content-Length over the limit: refused before reading.
    let req = Request::builder()
        .method(Method::POST)
        .uri("/mutate")
        .header(http::header::CONTENT_LENGTH, (MAX_BODY_BYTES + 1).to_string())
        .body(Full::new(Bytes::from_static(b"{}")))?;
    assert_eq!(handle(req, &sidecar).await.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // Exactly at the limit is read (and then judged on content).
    let mut padded = ANNOTATED.as_bytes().to_vec();
    padded.resize(MAX_BODY_BYTES, b' ');
    let (status, _) = call(&sidecar, Method::POST, "/mutate", padded).await?;
    assert_eq!(status, StatusCode::OK);

    let (status, body) = call(&sidecar, Method::GET, "/healthz", Vec::new()).await?;
    assert_eq!((status, body), (StatusCode::OK, json!({"status": "ok"})));
    let (status, _) = call(&sidecar, Method::GET, "/mutate", Vec::new()).await?;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let (status, body) = call(&sidecar, Method::GET, "/nope", Vec::new()).await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(at(&body, "/error/code")?, "not_found");
    Ok(())
}

// ----------------------------------------------------------------------------- over TLS

struct Pki {
    ca_der: rustls::pki_types::CertificateDer<'static>,
    dir: tempfile::TempDir,
}

/// A CA and a server certificate for localhost / 127.0.0.1 signed by it, written as PEM
/// files (tls.crt, tls.key) with the sidecar file beside them.
fn pki() -> Result<Pki, Box<dyn std::error::Error + Send + Sync>> {
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "permd test CA");
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let server_key = rcgen::KeyPair::generate()?;
    let server_params = rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
    let server_cert = server_params.signed_by(&server_key, &issuer)?;

    let dir = tempfile::tempdir()?;
    // The chain as a kubernetes.io/tls Secret often holds it: leaf, then CA.
    std::fs::write(
        dir.path().join("tls.crt"),
        format!("{}{}", server_cert.pem(), ca_cert.pem()),
    )?;
    std::fs::write(dir.path().join("tls.key"), server_key.serialize_pem())?;
    std::fs::write(dir.path().join("sidecar.json"), SIDECAR)?;
    Ok(Pki {
        ca_der: ca_cert.der().clone(),
        dir,
    })
}

fn options(pki: &Pki, addr: SocketAddr) -> Options {
    Options {
        addr,
        tls_cert: pki.dir.path().join("tls.crt"),
        tls_key: pki.dir.path().join("tls.key"),
        sidecar_file: pki.dir.path().join("sidecar.json"),
    }
}

async fn post_tls(
    connector: &tokio_rustls::TlsConnector,
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: &str,
) -> Result<(StatusCode, Value), Box<dyn std::error::Error + Send + Sync>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let tls = connector.connect(ServerName::try_from("localhost")?, tcp).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, "localhost")
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let bytes = resp.into_body().collect().await?.to_bytes();
    Ok((status, serde_json::from_slice(&bytes)?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_reviews_over_tls() -> TestResult {
    let pki = pki()?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let opts = options(&pki, addr);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        serve(listener, &opts, async {
            let _ = stopped.await;
        })
        .await
    });

    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca_der.clone())?;
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));

    let (status, answer) = post_tls(&connector, addr, Method::POST, "/mutate?timeout=5s", ANNOTATED).await?;
    assert_eq!(status, StatusCode::OK);
    let doc: Value = serde_json::from_str(ANNOTATED)?;
    assert_eq!(at(&answer, "/response/uid")?, at(&doc, "/request/uid")?);
    let mut pod = pod_of(&doc)?;
    json_patch::patch(&mut pod, &patch_of(&answer)?.ok_or("no patch")?)?;
    assert_eq!(names(at(&pod, "/spec/containers")?), ["app", "permd"]);

    let (status, answer) = post_tls(&connector, addr, Method::POST, "/mutate", NOT_ANNOTATED).await?;
    assert_eq!(status, StatusCode::OK);
    assert!(patch_of(&answer)?.is_none());

    let (status, body) = post_tls(&connector, addr, Method::POST, "/mutate", "{\"kind\": 1}").await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(at(&body, "/error/code")?, "invalid_argument");

    let (status, body) = post_tls(&connector, addr, Method::GET, "/healthz", "").await?;
    assert_eq!((status, body), (StatusCode::OK, json!({"status": "ok"})));

    // A client that does not trust the CA is refused at the handshake.
    let untrusting = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let refused = post_tls(
        &tokio_rustls::TlsConnector::from(Arc::new(untrusting)),
        addr,
        Method::GET,
        "/healthz",
        "",
    )
    .await;
    assert!(refused.is_err());

    let _ = stop.send(());
    tokio::time::timeout(std::time::Duration::from_secs(15), server).await???;
    Ok(())
}

#[tokio::test]
async fn run_fails_cleanly_on_bad_files() -> TestResult {
    let pki = pki()?;
    let addr: SocketAddr = "127.0.0.1:0".parse()?;

    let mut opts = options(&pki, addr);
    opts.tls_cert = pki.dir.path().join("missing.crt");
    let err = run(opts).await.err().ok_or("run accepted a missing certificate")?;
    assert!(format!("{err:#}").contains("missing.crt"), "{err:#}");

    let mut opts = options(&pki, addr);
    opts.tls_key = pki.dir.path().join("sidecar.json"); // not a key
    let err = run(opts).await.err().ok_or("run accepted a bad key")?;
    assert!(format!("{err:#}").contains("TLS key"), "{err:#}");

    let mut opts = options(&pki, addr);
    opts.sidecar_file = pki.dir.path().join("tls.key"); // not JSON
    let err = run(opts).await.err().ok_or("run accepted a bad sidecar file")?;
    assert!(format!("{err:#}").contains("sidecar"), "{err:#}");
    Ok(())
}
