//! The agreement check bench/http.sh runs before timing Cerbos: sends each `/allowed` body to
//! permd and the Cerbos body of the same line to Cerbos's `/api/check/resources`, once each,
//! and counts the checks where Cerbos's effect equals permd's `allow`. Disagreements are
//! counted by permd's reason and the first few are printed. Fails on any non-200 answer.
//!
//! Usage: `cerbos_agree PERMD_URL CERBOS_URL ALLOWED_BODIES CERBOS_BODIES`.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::collections::BTreeMap;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

async fn post(client: &HttpClient, url: &str, body: &str) -> anyhow::Result<serde_json::Value> {
    let req = http::Request::post(url)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))?;
    let resp = client.request(req).await?;
    let status = resp.status();
    let bytes = resp.into_body().collect().await?.to_bytes();
    if status != http::StatusCode::OK {
        anyhow::bail!("{url} answered {status}: {}", String::from_utf8_lossy(&bytes));
    }
    Ok(serde_json::from_slice(&bytes)?)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [permd, cerbos, allowed, cerbos_bodies] = args.as_slice() else {
        anyhow::bail!("usage: cerbos_agree PERMD_URL CERBOS_URL ALLOWED_BODIES CERBOS_BODIES");
    };
    let allowed = std::fs::read_to_string(allowed)?;
    let cerbos_bodies = std::fs::read_to_string(cerbos_bodies)?;
    let (allowed, cerbos_bodies): (Vec<&str>, Vec<&str>) = (allowed.lines().collect(), cerbos_bodies.lines().collect());
    if allowed.len() != cerbos_bodies.len() {
        anyhow::bail!(
            "{} /allowed bodies but {} Cerbos bodies",
            allowed.len(),
            cerbos_bodies.len()
        );
    }
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let permd_url = format!("{}/allowed", permd.trim_end_matches('/'));
    let cerbos_url = format!("{}/api/check/resources", cerbos.trim_end_matches('/'));
    let (mut agree, mut permd_allows, mut cerbos_allows) = (0usize, 0usize, 0usize);
    let mut differ: BTreeMap<String, usize> = BTreeMap::new();
    let mut examples = Vec::new();
    for (a, c) in allowed.iter().zip(&cerbos_bodies) {
        let p = post(&client, &permd_url, a).await?;
        let allow = p["allow"]
            .as_bool()
            .ok_or_else(|| anyhow::anyhow!("permd answer without `allow`: {p}"))?;
        let body: serde_json::Value = serde_json::from_str(c)?;
        let action = body["resources"][0]["actions"][0].as_str().unwrap_or_default();
        let answer = post(&client, &cerbos_url, c).await?;
        let effect = answer["results"][0]["actions"][action]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("Cerbos answer without an effect for `{action}`: {answer}"))?;
        let cerbos_allow = effect == "EFFECT_ALLOW";
        permd_allows += usize::from(allow);
        cerbos_allows += usize::from(cerbos_allow);
        if allow == cerbos_allow {
            agree += 1;
            continue;
        }
        let reason = p["reason"].as_str().unwrap_or("?").to_owned();
        *differ
            .entry(format!(
                "permd {reason} ({}), cerbos {effect}",
                if allow { "allow" } else { "deny" }
            ))
            .or_default() += 1;
        if examples.len() < 3 {
            examples.push(format!("  {a}\n    roles {}", body["principal"]["roles"]));
        }
    }
    println!(
        "agreement: {agree} of {} checks (permd allows {permd_allows}, Cerbos allows {cerbos_allows})",
        allowed.len()
    );
    for (what, n) in &differ {
        println!("  differ: {n} x {what}");
    }
    for e in &examples {
        println!("{e}");
    }
    Ok(())
}
