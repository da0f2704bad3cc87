//! The gRPC face of the real binary, through tonic clients: Enforce, permd.v1 Check,
//! CheckBulk and WatchVersion, health before and after the first snapshot, reflection, status
//! codes, and parity with HTTP `/v1/enforce` on random requests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Permd, example};
use permd::api::grpc::perm::EnforceRequest;
use permd::api::grpc::perm::perm_service_client::PermServiceClient;
use permd::api::grpc::permd::permd_service_client::PermdServiceClient;
use permd::api::grpc::permd::{CheckBulkRequest, CheckRequest, Resource, WatchVersionRequest};
use rand::rngs::SmallRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::time::Duration;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

async fn channel(p: &Permd) -> Channel {
    Channel::from_shared(format!("http://{}", p.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn enforce(org: &str, user: &str, role: &str, t: &str, group: &str, id: &str, act: &str) -> EnforceRequest {
    EnforceRequest {
        org_id: org.into(),
        user_id: user.into(),
        role_id: role.into(),
        res_type: t.into(),
        group_type: group.into(),
        res_id: id.into(),
        act: act.into(),
    }
}

async fn health(ch: Channel, service: &str) -> i32 {
    let mut h = HealthClient::new(ch);
    h.check(HealthCheckRequest {
        service: service.into(),
    })
    .await
    .unwrap()
    .into_inner()
    .status
}

#[tokio::test(flavor = "multi_thread")]
async fn enforce_check_and_status_codes() {
    let p = Permd::start(Some(&example()), &[]);
    p.ready();
    let ch = channel(&p).await;
    let mut perm = PermServiceClient::new(ch.clone());
    let resp = perm
        .enforce(enforce("acme", "alice", "", "document", "", "photo", "write"))
        .await
        .unwrap();
    assert_eq!(resp.metadata().get("x-permd-version").unwrap(), "42");
    let r = resp.into_inner();
    assert_eq!((r.ok, r.code.as_str()), (true, "org_role"));
    let r = perm
        .enforce(enforce("acme", "", "guard", "camera", "site", "hq", "play"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.ok, r.code.as_str()), (true, "role_grant"));
    let r = perm
        .enforce(enforce("", "bob", "", "document", "", "photo", "delete"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.ok, r.code.as_str()), (false, "no_matching_grant"));
    // Bad requests name the field.
    let e = perm
        .enforce(enforce("acme", "", "", "document", "", "", "read"))
        .await
        .unwrap_err();
    assert!(
        e.code() == Code::InvalidArgument && e.message().contains("user_id"),
        "{e:?}"
    );
    let e = perm
        .enforce(enforce("acme", "a", "", "", "", "", "read"))
        .await
        .unwrap_err();
    assert!(
        e.code() == Code::InvalidArgument && e.message().contains("res_type"),
        "{e:?}"
    );
    let e = perm
        .enforce(enforce("acme", "a", "", "document", "", "", ""))
        .await
        .unwrap_err();
    assert!(
        e.code() == Code::InvalidArgument && e.message().contains("act"),
        "{e:?}"
    );
    // Writes belong to the control plane.
    let e = perm
        .save_role_perm(permd::api::grpc::perm::PermServiceSaveRolePermRequest::default())
        .await
        .unwrap_err();
    assert!(
        e.code() == Code::Unimplemented && e.message().contains("control plane"),
        "{e:?}"
    );
    // Read-your-writes metadata: a version that never comes.
    let mut req = tonic::Request::new(enforce("acme", "alice", "", "document", "", "photo", "write"));
    req.metadata_mut().insert("x-permd-min-version", "43".parse().unwrap());
    req.metadata_mut().insert("x-permd-wait-ms", "50".parse().unwrap());
    let e = perm.enforce(req).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);

    let mut pd = PermdServiceClient::new(ch);
    let check = |user: &str, action: &str, t: &str, key: &str| CheckRequest {
        user: user.into(),
        action: action.into(),
        resource: Some(Resource {
            r#type: t.into(),
            key: key.into(),
            tenant: String::new(),
        }),
        explain: false,
        role: String::new(),
        ..Default::default()
    };
    let mut explained = check("bob", "read", "document", "photo");
    explained.explain = true;
    let r = pd.check(explained).await.unwrap().into_inner();
    assert_eq!((r.allow, r.reason.as_str(), r.version), (true, "resource_role", 42));
    let debug: serde_json::Value = serde_json::from_str(&r.debug_json).unwrap();
    assert_eq!(debug["assignment"]["resource"], "folder:shared");
    let bulk = CheckBulkRequest {
        checks: vec![
            check("carol", "play", "camera", "cam1"),
            check("carol", "export", "camera", "cam1"),
        ],
    };
    let r = pd.check_bulk(bulk).await.unwrap().into_inner();
    let got: Vec<(bool, &str)> = r.results.iter().map(|c| (c.allow, c.reason.as_str())).collect();
    assert_eq!(
        (got, r.version),
        (vec![(true, "role_grant"), (false, "no_matching_grant")], 42)
    );
    let e = pd
        .check(CheckRequest {
            resource: None,
            ..check("a", "read", "", "")
        })
        .await
        .unwrap_err();
    assert!(
        e.code() == Code::InvalidArgument && e.message().contains("resource"),
        "{e:?}"
    );
    let e = pd
        .check_bulk(CheckBulkRequest {
            checks: vec![check("a", "", "document", "")],
        })
        .await
        .unwrap_err();
    assert!(
        e.code() == Code::InvalidArgument && e.message().contains("checks[0].action"),
        "{e:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn health_follows_the_first_snapshot_and_watch_follows_edits() {
    let p = Permd::start(None, &[]);
    let ch = channel(&p).await;
    for service in ["", "perm.v1.PermService", "permd.v1.PermdService"] {
        assert_eq!(
            health(ch.clone(), service).await,
            ServingStatus::NotServing as i32,
            "{service}"
        );
    }
    let mut perm = PermServiceClient::new(ch.clone());
    let e = perm
        .enforce(enforce("acme", "alice", "", "document", "", "photo", "read"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    let mut watch = PermdServiceClient::new(ch.clone())
        .watch_version(WatchVersionRequest {})
        .await
        .unwrap()
        .into_inner();
    std::fs::write(&p.snapshot, example()).unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!((first.version, first.online), (42, true));
    assert!(first.source.starts_with("file://"));
    let mut serving = false;
    for _ in 0..100 {
        if health(ch.clone(), "permd.v1.PermdService").await == ServingStatus::Serving as i32 {
            serving = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(serving);
    std::fs::write(&p.snapshot, example().replace("version: 42", "version: 43")).unwrap();
    let next = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(next.version, 43);
}

#[tokio::test(flavor = "multi_thread")]
async fn reflection_lists_the_services() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let p = Permd::start(Some(&example()), &[]);
    let mut client = ServerReflectionClient::new(channel(&p).await);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = client
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("{answer:?}")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in [
        "perm.v1.PermService",
        "perm.v1.RoleService",
        "perm.v1.GroupService",
        "perm.v1.MenuService",
        "perm.v1.OrgService",
        "permd.v1.PermdService",
        "grpc.health.v1.Health",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn http_and_grpc_enforce_agree() {
    let p = Permd::start(Some(&example()), &[]);
    p.ready();
    let mut perm = PermServiceClient::new(channel(&p).await);
    let mut rng = SmallRng::seed_from_u64(7);
    let pick = |rng: &mut SmallRng, xs: &[&'static str]| *xs.choose(rng).unwrap();
    for _ in 0..300 {
        let req = enforce(
            pick(&mut rng, &["", "acme", "acme-eu", "globex", "default", "nope"]),
            pick(&mut rng, &["", "alice", "bob", "carol", "root", "zed"]),
            if rng.random_bool(0.3) {
                pick(&mut rng, &["viewer", "editor", "guard", "superuser"])
            } else {
                ""
            },
            pick(&mut rng, &["document", "folder", "camera", "site", "video"]),
            if rng.random_bool(0.2) {
                pick(&mut rng, &["site", "folder"])
            } else {
                ""
            },
            pick(&mut rng, &["", "photo", "plan", "shared", "cam1", "hq", "report"]),
            pick(&mut rng, &["read", "write", "delete", "play", "export", "manage"]),
        );
        let body = json!({"org_id": req.org_id, "user_id": req.user_id, "role_id": req.role_id, "res_type": req.res_type,
            "group_type": req.group_type, "res_id": req.res_id, "act": req.act});
        let (status, http) = p.post("/v1/enforce", body.clone());
        match perm.enforce(req).await {
            Ok(r) => {
                let r = r.into_inner();
                assert_eq!(status, 200, "{body}");
                assert_eq!(
                    (http["ok"].as_bool(), http["code"].as_str()),
                    (Some(r.ok), Some(r.code.as_str())),
                    "{body}"
                );
            }
            Err(e) => {
                assert_eq!((status, e.code()), (400, Code::InvalidArgument), "{body}");
            }
        }
    }
}

/// permd.v1 Check carries the request data conditions see (model.md §5) as JSON text fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_with_conditions() {
    let p = Permd::start(Some(&example()), &[]);
    p.ready();
    let mut pd = PermdServiceClient::new(channel(&p).await);
    let export = |ctx: &str| CheckRequest {
        user: "carol".into(),
        action: "export".into(),
        resource: Some(Resource {
            r#type: "camera".into(),
            key: "cam1".into(),
            tenant: String::new(),
        }),
        context_json: ctx.into(),
        ..Default::default()
    };
    let r = pd.check(export(r#"{"ip": "10.0.0.1"}"#)).await.unwrap().into_inner();
    assert_eq!((r.allow, r.reason.as_str()), (true, "org_role"));
    let r = pd.check(export(r#"{"ip": "8.8.8.8"}"#)).await.unwrap().into_inner();
    assert_eq!((r.allow, r.reason.as_str()), (false, "no_matching_grant"));
    let r = pd.check(export("")).await.unwrap().into_inner();
    assert!(!r.allow);
    for bad in ["[1]", "{\"ip\":", "\"10.0.0.1\""] {
        let e = pd.check(export(bad)).await.unwrap_err();
        assert!(
            e.code() == Code::InvalidArgument && e.message().contains("context_json"),
            "{bad}: {e:?}"
        );
    }
    // The owner rule, and the stored owner winning over the request's.
    let notes = |user: &str, attrs: &str| CheckRequest {
        user: user.into(),
        action: "write".into(),
        resource: Some(Resource {
            r#type: "document".into(),
            key: "notes".into(),
            tenant: String::new(),
        }),
        resource_attributes_json: attrs.into(),
        ..Default::default()
    };
    let r = pd.check(notes("bob", "")).await.unwrap().into_inner();
    assert_eq!((r.allow, r.reason.as_str()), (true, "attribute_rule"));
    let r = pd
        .check(notes("erin", r#"{"owner": "erin"}"#))
        .await
        .unwrap()
        .into_inner();
    assert!(!r.allow);
}
