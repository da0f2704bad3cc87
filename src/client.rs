//! A minimal HTTP/1.1 client (hyper) for `permd check --url`: one JSON POST, bounded answer.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Largest answer read.
const MAX_ANSWER: usize = 16 << 20;

/// POSTs `body` as JSON to `url`; returns the status and the body.
pub async fn post_json(url: &str, body: Vec<u8>, bearer: Option<&str>) -> Result<(u16, Bytes), String> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut req = http::Request::post(url).header(http::header::CONTENT_TYPE, "application/json");
    if let Some(key) = bearer {
        let mut value = http::HeaderValue::try_from(format!("Bearer {key}"))
            .map_err(|_| "the key holds characters a header cannot carry".to_string())?;
        value.set_sensitive(true);
        req = req.header(http::header::AUTHORIZATION, value);
    }
    let req = req.body(Full::new(Bytes::from(body))).map_err(|e| e.to_string())?;
    let resp = client.request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = Limited::new(resp.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok((status, body.to_bytes()))
}
