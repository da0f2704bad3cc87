//! The snapshot the drop-in tests share: the example snapshot with URL mapping rules.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

/// URL mapping rules over the example snapshot's types (document, folder, camera, site).
pub const URL_MAPPINGS: &str = r#"
url_mappings:
  - {method: GET, url: "/documents/{id}", resource: document, action: read}
  - {method: PUT, url: "/documents/{id}", resource: document, action: write}
  - {method: DELETE, url: "https://api.example.com/documents/{id}", resource: document, action: delete}
  - {method: GET, url: "/documents", resource: document, action: read}
  - {method: GET, url: "/folders/{id}/documents/{doc}", resource: folder, action: read}
  - {method: "*", url: "^/cameras/(?P<id>[a-z0-9]+)/(?P<op>play|export)$", url_type: regex, resource: camera, action: play}
  - {method: POST, url: "^/cameras/(?P<id>[a-z0-9]+)/export$", url_type: regex, resource: camera, action: export, priority: 10}
  - {method: GET, url: "/search?owner={owner}", resource: document, action: read}
  - {method: GET, url: "^https://files\\.example\\.com/(?P<id>[a-z]+)$", url_type: regex, resource: document, action: read}
"#;

/// The example snapshot with `URL_MAPPINGS`.
pub fn snapshot() -> String {
    format!("{}\n{URL_MAPPINGS}", super::example())
}
