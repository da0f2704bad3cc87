//! Envoy external authorization on the real binary's gRPC port, through a tonic client built
//! from Envoy's own protos (`envoy-types`): a matrix of methods, paths, headers and jwt_authn
//! metadata against the decisions the URL mapping rules give; malformed requests are DENIED
//! with a reason naming what is missing. And the examples in examples/envoy and examples/istio
//! parse and point at permd.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::Permd;
use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue, Metadata};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request as AttrRequest};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use std::collections::HashMap;
use std::path::Path;
use tonic::transport::Channel;

const OK: i32 = 0;
const PERMISSION_DENIED: i32 = 7;
const UNAVAILABLE: i32 = 14;
const UNAUTHENTICATED: i32 = 16;

fn string(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.into())),
    }
}

fn payload(claims: &[(&str, Value)]) -> Value {
    Value {
        kind: Some(Kind::StructValue(Struct {
            fields: claims.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
        })),
    }
}

/// jwt_authn's metadata: `{key: payload}` in the filter's namespace.
fn jwt(key: &str, claims: &[(&str, Value)]) -> Metadata {
    Metadata {
        filter_metadata: HashMap::from([(
            "envoy.filters.http.jwt_authn".to_string(),
            Struct {
                fields: HashMap::from([(key.to_string(), payload(claims))]),
            },
        )]),
        ..Metadata::default()
    }
}

#[derive(Default, Clone)]
struct Req<'a> {
    host: Option<&'a str>,
    method: &'a str,
    path: &'a str,
    headers: Vec<(&'a str, &'a str)>,
    raw_headers: bool,
    metadata: Option<Metadata>,
    route_tenant: Option<&'a str>,
}

fn check_request(r: &Req<'_>) -> CheckRequest {
    let mut http = HttpRequest {
        method: r.method.into(),
        path: r.path.into(),
        host: r.host.unwrap_or("app.example.com").into(),
        scheme: "https".into(),
        ..HttpRequest::default()
    };
    if r.raw_headers {
        http.header_map = Some(HeaderMap {
            headers: r
                .headers
                .iter()
                .map(|(k, v)| HeaderValue {
                    key: k.to_string(),
                    raw_value: v.as_bytes().to_vec(),
                    ..HeaderValue::default()
                })
                .collect(),
        });
    } else {
        http.headers = r.headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    }
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(AttrRequest {
                http: Some(http),
                ..AttrRequest::default()
            }),
            metadata_context: r.metadata.clone(),
            context_extensions: r
                .route_tenant
                .map(|t| HashMap::from([("tenant".to_string(), t.to_string())]))
                .unwrap_or_default(),
            ..AttributeContext::default()
        }),
    }
}

async fn client(p: &Permd) -> AuthorizationClient<Channel> {
    AuthorizationClient::connect(format!("http://{}", p.grpc))
        .await
        .unwrap()
}

/// (gRPC status code in the answer, HTTP status for a denial or 200, x-permd-reason, body)
fn outcome(resp: &CheckResponse) -> (i32, u32, String, String) {
    let code = resp.status.as_ref().map_or(-1, |s| s.code);
    let header = |hs: &[envoy_types::pb::envoy::config::core::v3::HeaderValueOption], name: &str| {
        hs.iter()
            .filter_map(|h| h.header.as_ref())
            .find(|h| h.key == name)
            .map(|h| h.value.clone())
            .unwrap_or_default()
    };
    match &resp.http_response {
        Some(HttpResponse::OkResponse(ok)) => (
            code,
            200,
            header(&ok.headers, "x-permd-reason"),
            header(&ok.headers, "x-permd-version"),
        ),
        Some(HttpResponse::DeniedResponse(d)) => (
            code,
            d.status.as_ref().map_or(0, |s| s.code as u32),
            header(&d.headers, "x-permd-reason"),
            d.body.clone(),
        ),
        None => (code, 0, String::new(), String::new()),
        Some(_) => (code, 0, "other".into(), String::new()),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ext_authz_matrix() {
    let p = Permd::start(Some(&common::dropin::snapshot()), &[]);
    p.ready();
    let mut c = client(&p).await;
    let user = |u| vec![("x-user-id", u)];
    let cases: Vec<(Req<'_>, i32, u32, &str)> = vec![
        (
            Req {
                method: "GET",
                path: "/documents/photo",
                headers: user("bob"),
                ..Req::default()
            },
            OK,
            200,
            "resource_role",
        ),
        (
            Req {
                method: "GET",
                path: "/documents/photo?x=1",
                headers: user("bob"),
                raw_headers: true,
                ..Req::default()
            },
            OK,
            200,
            "resource_role",
        ),
        (
            Req {
                method: "PUT",
                path: "/documents/photo",
                headers: user("bob"),
                ..Req::default()
            },
            PERMISSION_DENIED,
            403,
            "no_matching_grant",
        ),
        (
            Req {
                method: "GET",
                path: "/cameras/cam1/play",
                headers: user("carol"),
                ..Req::default()
            },
            OK,
            200,
            "role_grant",
        ),
        (
            Req {
                method: "POST",
                path: "/cameras/cam1/export",
                headers: user("carol"),
                ..Req::default()
            },
            PERMISSION_DENIED,
            403,
            "no_matching_grant",
        ),
        (
            Req {
                method: "GET",
                path: "/not/mapped",
                headers: user("root"),
                ..Req::default()
            },
            PERMISSION_DENIED,
            403,
            "no_url_mapping",
        ),
        // Envoy passes the absolute form's host separately; an absolute-URL template still matches the path.
        (
            Req {
                method: "DELETE",
                path: "/documents/report",
                headers: user("root"),
                ..Req::default()
            },
            OK,
            200,
            "org_role",
        ),
        // The subject from jwt_authn's payload; the route's tenant from context_extensions.
        (
            Req {
                method: "PUT",
                path: "/documents/new",
                metadata: Some(jwt("jwt_payload", &[("sub", string("alice"))])),
                route_tenant: Some("acme"),
                ..Req::default()
            },
            OK,
            200,
            "org_role",
        ),
        // Without a tenant a type-level check is in `default`, where alice holds nothing.
        (
            Req {
                method: "PUT",
                path: "/documents/new",
                metadata: Some(jwt("jwt_payload", &[("sub", string("alice"))])),
                ..Req::default()
            },
            PERMISSION_DENIED,
            403,
            "no_matching_grant",
        ),
        // The JWT's subject wins over the header.
        (
            Req {
                method: "PUT",
                path: "/documents/photo",
                headers: user("bob"),
                metadata: Some(jwt("jwt_payload", &[("sub", string("alice"))])),
                ..Req::default()
            },
            OK,
            200,
            "org_role",
        ),
        // A payload under a provider's own key is found too.
        (
            Req {
                method: "PUT",
                path: "/documents/photo",
                metadata: Some(jwt("idp", &[("sub", string("alice")), ("aud", string("x"))])),
                ..Req::default()
            },
            OK,
            200,
            "org_role",
        ),
        // The tenant header wins over the route's tenant.
        (
            Req {
                method: "PUT",
                path: "/documents/new",
                headers: vec![("x-user-id", "alice"), ("x-tenant-id", "globex")],
                route_tenant: Some("acme"),
                ..Req::default()
            },
            PERMISSION_DENIED,
            403,
            "no_matching_grant",
        ),
        (
            Req {
                method: "PUT",
                path: "/documents/new",
                headers: vec![("x-user-id", "alice"), ("x-tenant-id", "acme-eu")],
                ..Req::default()
            },
            OK,
            200,
            "org_role",
        ),
        // A rule in Permit's absolute regex form matches Envoy's scheme + host + path.
        (
            Req {
                method: "GET",
                path: "/photo",
                host: Some("files.example.com"),
                headers: user("bob"),
                ..Req::default()
            },
            OK,
            200,
            "resource_role",
        ),
        (
            Req {
                method: "GET",
                path: "/photo",
                headers: user("bob"),
                ..Req::default()
            },
            PERMISSION_DENIED,
            403,
            "no_url_mapping",
        ),
    ];
    for (i, (r, code, http, reason)) in cases.iter().enumerate() {
        let resp = c.check(check_request(r)).await.unwrap().into_inner();
        let (got_code, got_http, got_reason, extra) = outcome(&resp);
        let at = format!("case {i}: {} {}", r.method, r.path);
        assert_eq!(
            (got_code, got_http, got_reason.as_str()),
            (*code, *http, *reason),
            "{at}: {extra}"
        );
        if *code == OK {
            assert_eq!(extra, "42", "{at}: x-permd-version");
        } else {
            let body: serde_json::Value = serde_json::from_str(&extra).unwrap();
            assert_eq!(body["reason"], *reason, "{at}");
            assert_eq!(body["allow"], false, "{at}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_checks_are_denied_with_a_reason() {
    let p = Permd::start(Some(&common::dropin::snapshot()), &[]);
    p.ready();
    let mut c = client(&p).await;
    let with_http = |http: Option<HttpRequest>| CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(AttrRequest {
                http,
                ..AttrRequest::default()
            }),
            ..AttributeContext::default()
        }),
    };
    let user = HashMap::from([("x-user-id".to_string(), "bob".to_string())]);
    let cases: Vec<(CheckRequest, i32, u32, &str)> = vec![
        (
            CheckRequest::default(),
            PERMISSION_DENIED,
            403,
            "`attributes` is missing",
        ),
        (
            with_http(None),
            PERMISSION_DENIED,
            403,
            "`attributes.request.http` is missing",
        ),
        (
            with_http(Some(HttpRequest {
                method: "GET".into(),
                headers: user.clone(),
                ..HttpRequest::default()
            })),
            PERMISSION_DENIED,
            403,
            "`attributes.request.http.path` is empty",
        ),
        (
            with_http(Some(HttpRequest {
                path: "/documents/photo".into(),
                headers: user.clone(),
                ..HttpRequest::default()
            })),
            PERMISSION_DENIED,
            403,
            "`attributes.request.http.method` is empty",
        ),
        (
            with_http(Some(HttpRequest {
                method: "GET".into(),
                path: "/documents/photo".into(),
                ..HttpRequest::default()
            })),
            UNAUTHENTICATED,
            401,
            "no_subject",
        ),
        (
            // A claim that is not a string names no one.
            check_request(&Req {
                method: "GET",
                path: "/documents/photo",
                metadata: Some(jwt(
                    "jwt_payload",
                    &[(
                        "sub",
                        Value {
                            kind: Some(Kind::NumberValue(7.0)),
                        },
                    )],
                )),
                ..Req::default()
            }),
            UNAUTHENTICATED,
            401,
            "no_subject",
        ),
        (
            check_request(&Req {
                method: "GET",
                path: "/documents/photo",
                headers: vec![("x-user-id", "  ")],
                ..Req::default()
            }),
            UNAUTHENTICATED,
            401,
            "no_subject",
        ),
    ];
    for (i, (req, code, http, says)) in cases.into_iter().enumerate() {
        let resp = c.check(req).await.unwrap().into_inner();
        let (got_code, got_http, reason, body) = outcome(&resp);
        assert_eq!((got_code, got_http), (code, http), "case {i}: {body}");
        assert!(body.contains(says), "case {i}: `{body}` should say {says}");
        assert!(
            !reason.is_empty() && !reason.contains(' '),
            "case {i}: header `{reason}` is a code"
        );
        let message = resp.status.unwrap().message;
        assert!(message.contains(says), "case {i}: {message}");
    }
    // Still serving after all that.
    let ok = c
        .check(check_request(&Req {
            method: "GET",
            path: "/documents/photo",
            headers: vec![("x-user-id", "bob")],
            ..Req::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(outcome(&ok).0, OK);
}

#[tokio::test(flavor = "multi_thread")]
async fn configured_header_and_claim_and_no_snapshot() {
    let p = Permd::start(
        Some(&common::dropin::snapshot()),
        &[
            "--proxy-user-header",
            "X-Forwarded-User",
            "--proxy-jwt-claim",
            "email",
            "--proxy-jwt-metadata-key",
            "claims",
        ],
    );
    p.ready();
    let mut c = client(&p).await;
    let r = Req {
        method: "GET",
        path: "/documents/photo",
        headers: vec![("x-forwarded-user", "bob")],
        ..Req::default()
    };
    assert_eq!(outcome(&c.check(check_request(&r)).await.unwrap().into_inner()).0, OK);
    let r = Req {
        method: "GET",
        path: "/documents/photo",
        headers: vec![("x-user-id", "bob")],
        ..Req::default()
    };
    let (code, _, reason, body) = outcome(&c.check(check_request(&r)).await.unwrap().into_inner());
    assert_eq!((code, reason.as_str()), (UNAUTHENTICATED, "no_subject"));
    assert!(
        body.contains("`email` claim") && body.contains("`x-forwarded-user` header"),
        "{body}"
    );
    let r = Req {
        method: "GET",
        path: "/documents/photo",
        metadata: Some(jwt("claims", &[("sub", string("nobody")), ("email", string("bob"))])),
        ..Req::default()
    };
    assert_eq!(
        outcome(&c.check(check_request(&r)).await.unwrap().into_inner()).2,
        "resource_role"
    );

    // Before the first snapshot: denied (503), not an RPC error.
    let empty = Permd::start(None, &[]);
    let mut c = client(&empty).await;
    let r = Req {
        method: "GET",
        path: "/documents/photo",
        headers: vec![("x-user-id", "bob")],
        ..Req::default()
    };
    let (code, http, reason, _) = outcome(&c.check(check_request(&r)).await.unwrap().into_inner());
    assert_eq!((code, http, reason.as_str()), (UNAVAILABLE, 503, "not_ready"));
}

fn yaml(path: &str) -> Vec<serde_json::Value> {
    use serde::Deserialize;
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap();
    yaml_serde::Deserializer::from_str(&text)
        .map(|d| serde_json::Value::deserialize(d).unwrap())
        .collect()
}

#[test]
fn envoy_example_points_at_permd() {
    let docs = yaml("examples/envoy/envoy.yaml");
    let cfg = &docs[0]["static_resources"];
    let permd = cfg["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "permd")
        .unwrap();
    let addr = &permd["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"];
    assert_eq!(
        (addr["address"].as_str(), addr["port_value"].as_u64()),
        (Some("127.0.0.1"), Some(7767)),
        "permd's default gRPC port"
    );
    let opts = &permd["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"];
    assert!(
        opts["explicit_http_config"]["http2_protocol_options"].is_object(),
        "gRPC needs HTTP/2"
    );
    let hcm = &cfg["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
    let filters = hcm["http_filters"].as_array().unwrap();
    let names: Vec<&str> = filters.iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "envoy.filters.http.jwt_authn",
            "envoy.filters.http.ext_authz",
            "envoy.filters.http.router"
        ]
    );
    let authz = &filters[1]["typed_config"];
    assert_eq!(
        authz["@type"],
        "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"
    );
    assert_eq!(authz["grpc_service"]["envoy_grpc"]["cluster_name"], "permd");
    assert_eq!(authz["transport_api_version"], "V3");
    assert_eq!(authz["failure_mode_allow"], false, "fail closed");
    assert_eq!(authz["metadata_context_namespaces"][0], "envoy.filters.http.jwt_authn");
    let provider = &filters[0]["typed_config"]["providers"]["idp"];
    assert_eq!(
        provider["payload_in_metadata"], "jwt_payload",
        "permd's default proxy.jwt_metadata_key"
    );
    let route = &hcm["route_config"]["virtual_hosts"][0]["routes"][0];
    assert_eq!(
        route["typed_per_filter_config"]["envoy.filters.http.ext_authz"]["check_settings"]["context_extensions"]["tenant"],
        "acme"
    );
}

#[test]
fn istio_examples_point_at_permd() {
    let mesh = yaml("examples/istio/meshconfig.yaml");
    let inner: serde_json::Value = {
        use serde::Deserialize;
        let text = mesh[0]["data"]["mesh"].as_str().unwrap();
        serde_json::Value::deserialize(yaml_serde::Deserializer::from_str(text)).unwrap()
    };
    let provider = &inner["extensionProviders"][0];
    assert_eq!(provider["name"], "permd");
    let grpc = &provider["envoyExtAuthzGrpc"];
    assert!(grpc["service"].as_str().unwrap().starts_with("permd."), "{grpc}");
    assert_eq!(grpc["port"], 7767);
    assert_eq!(grpc["failOpen"], false);

    let docs = yaml("examples/istio/authorization-policy.yaml");
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["RequestAuthentication", "AuthorizationPolicy", "AuthorizationPolicy"]
    );
    let custom = docs.iter().find(|d| d["spec"]["action"] == "CUSTOM").unwrap();
    assert_eq!(
        custom["spec"]["provider"]["name"], provider["name"],
        "the policy asks the mesh's permd provider"
    );
    let claim = &docs[0]["spec"]["jwtRules"][0]["outputClaimToHeaders"][0];
    assert_eq!(
        (claim["header"].as_str(), claim["claim"].as_str()),
        (Some("x-user-id"), Some("sub")),
        "permd's default proxy.user_header"
    );
    let deny = docs.iter().find(|d| d["spec"]["action"] == "DENY").unwrap();
    assert_eq!(
        deny["spec"]["rules"][0]["from"][0]["source"]["notRequestPrincipals"][0],
        "*"
    );
}
