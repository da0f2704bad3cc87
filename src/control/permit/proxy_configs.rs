//! `/v2/facts/{project}/{env}/proxy_configs[/{key}]`: Permit's URL mapping (proxy configs) ⇄
//! the project's `url_mappings` (model.md §6), so a sidecar pulling this face gets the rules.
//!
//! The model keeps rules, not proxy configs: every rule of the project is shown as one proxy
//! config with the key `permd`. `POST` of a proxy config upserts its `mapping_rules` (other
//! fields, such as `secret` or `auth_mechanism`, are not kept); `PATCH /proxy_configs/{key}` with
//! `mapping_rules` replaces the whole set; `DELETE /proxy_configs/{key}` removes every rule.
//! A rule: `url`, `http_method` (`*` for any), `resource`, `action` (absent: the method, as
//! Permit's PDP reads it), `priority`, `url_type` (`regex`, else a template).

use super::{Answer, Ctx, array_page, body, missing, no_content, ok};
use crate::control::http::written;
use crate::model::{Identity, Item, Op, UrlMapping};
use crate::wire::RequestError;
use http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

/// The key the project's rules are shown under.
pub const KEY: &str = "permd";

#[derive(Deserialize)]
struct RuleIn {
    url: String,
    http_method: String,
    resource: String,
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    priority: Option<i64>,
    #[serde(default)]
    url_type: Option<String>,
    /// Header values Permit's proxy injects; no part of a decision.
    #[serde(default, rename = "headers")]
    _headers: Option<Value>,
}

#[derive(Deserialize)]
struct ConfigIn {
    #[serde(default)]
    mapping_rules: Option<Vec<RuleIn>>,
    // key, name, secret, auth_mechanism, ...: accepted, not kept.
    #[serde(flatten)]
    _rest: serde_json::Map<String, Value>,
}

fn rule(r: RuleIn, at: &str) -> Result<UrlMapping, RequestError> {
    let method = match r.http_method.trim() {
        "" | "*" | "any" | "ANY" => "*".to_owned(),
        m => m.to_ascii_uppercase(),
    };
    let m = UrlMapping {
        action: r
            .action
            .filter(|a| !a.is_empty())
            .unwrap_or_else(|| r.http_method.to_ascii_lowercase()),
        method,
        url: r.url,
        url_type: r.url_type.filter(|t| !t.is_empty() && t != "none"),
        resource: r.resource,
        priority: r.priority,
    };
    for (field, v) in [("resource", &m.resource), ("action", &m.action)] {
        if v.is_empty() || v.len() > crate::model::MAX_KEY_BYTES {
            return Err(RequestError::invalid(format!(
                "`{at}.{field}`: must be 1 to {} bytes",
                crate::model::MAX_KEY_BYTES
            )));
        }
    }
    crate::urlmap::check(&m).map_err(|(field, problem)| {
        let field = if field == "method" { "http_method" } else { field };
        RequestError::invalid(format!("`{at}.{field}`: {problem}"))
    })?;
    Ok(m)
}

fn rules(list: Vec<RuleIn>) -> Result<Vec<UrlMapping>, RequestError> {
    let mut out: Vec<UrlMapping> = Vec::with_capacity(list.len());
    for (i, r) in list.into_iter().enumerate() {
        let m = rule(r, &format!("mapping_rules[{i}]"))?;
        if out.iter().any(|x| x.method == m.method && x.url == m.url) {
            return Err(RequestError::invalid(format!(
                "`mapping_rules[{i}]`: a rule for ({}, {}) is already in this list",
                m.method, m.url
            )));
        }
        out.push(m);
    }
    Ok(out)
}

fn rule_json(m: &UrlMapping) -> Value {
    json!({
        "url": m.url,
        "http_method": if m.method == "*" { "*".to_owned() } else { m.method.to_ascii_lowercase() },
        "resource": m.resource,
        "action": m.action,
        "priority": m.priority,
        "url_type": m.url_type,
        "headers": {},
    })
}

fn identity(m: &UrlMapping) -> Identity {
    Identity::UrlMapping {
        method: m.method.clone(),
        url: m.url.clone(),
    }
}

impl Ctx<'_> {
    fn config_json(&self, list: &[UrlMapping]) -> Value {
        let id = Identity::UrlMapping {
            method: "*".into(),
            url: KEY.into(),
        };
        self.object(
            &id,
            json!({
                "key": KEY,
                "name": "URL mapping rules",
                "mapping_rules": list.iter().map(rule_json).collect::<Vec<_>>(),
                "auth_mechanism": "Bearer",
            }),
        )
    }

    pub(super) fn list_proxy_configs(&self, q: &super::Query) -> Answer {
        let list = &self.snap.url_mappings;
        let items: Vec<&[UrlMapping]> = if list.is_empty() { vec![] } else { vec![list] };
        array_page(items, q, |l| self.config_json(l))
    }

    pub(super) fn get_proxy_config(&self, k: &str) -> Answer {
        if k != KEY || self.snap.url_mappings.is_empty() {
            return Err(missing(format!("proxy config `{k}` does not exist")));
        }
        ok(&self.config_json(&self.snap.url_mappings))
    }

    pub(super) async fn create_proxy_config(&self, bytes: &[u8]) -> Answer {
        let c: ConfigIn = body(bytes)?;
        let new = rules(c.mapping_rules.unwrap_or_default())?;
        let ops: Vec<Op> = new.iter().cloned().map(|m| Op::Upsert(Item::UrlMapping(m))).collect();
        let mut after = self.snap.url_mappings.clone();
        for m in new {
            crate::model::put(&mut after, m.clone(), |x| x.method == m.method && x.url == m.url);
        }
        let version = if ops.is_empty() {
            self.version
        } else {
            self.commit(ops).await?.version
        };
        Ok(written(StatusCode::CREATED, version, &self.config_json(&after)))
    }

    pub(super) async fn update_proxy_config(&self, k: &str, bytes: &[u8]) -> Answer {
        if k != KEY {
            return Err(missing(format!(
                "proxy config `{k}` does not exist; the project's rules are proxy config `{KEY}`"
            )));
        }
        let c: ConfigIn = body(bytes)?;
        let Some(list) = c.mapping_rules else {
            return ok(&self.config_json(&self.snap.url_mappings));
        };
        let new = rules(list)?;
        let mut ops: Vec<Op> = self
            .snap
            .url_mappings
            .iter()
            .filter(|x| !new.iter().any(|m| m.method == x.method && m.url == x.url))
            .map(|x| Op::Delete(identity(x)))
            .collect();
        ops.extend(
            new.iter()
                .filter(|m| !self.snap.url_mappings.contains(m))
                .cloned()
                .map(|m| Op::Upsert(Item::UrlMapping(m))),
        );
        let version = if ops.is_empty() {
            self.version
        } else {
            self.commit(ops).await?.version
        };
        Ok(written(StatusCode::OK, version, &self.config_json(&new)))
    }

    pub(super) async fn delete_proxy_config(&self, k: &str) -> Answer {
        if k != KEY || self.snap.url_mappings.is_empty() {
            return Err(missing(format!("proxy config `{k}` does not exist")));
        }
        let ops = self.snap.url_mappings.iter().map(|x| Op::Delete(identity(x))).collect();
        let w = self.commit(ops).await?;
        Ok(no_content(w.version))
    }
}
