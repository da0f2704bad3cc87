//! What the faces for proxies share (nginx `auth_request`, Envoy ext_authz, `/allowed_url`):
//! where the subject and tenant of a proxied request come from (settings under `proxy:`), and
//! one decision for (method, URL, user, tenant) through the URL mapping rules (model.md §6).

use crate::cond::RequestData;
use crate::config::ConfigError;
use crate::index::{Index, Query, Subject};
use crate::model::Attributes;
use serde::Deserialize;

/// The deny reason when no URL mapping rule matches (model.md §6).
pub const NO_URL_MAPPING: &str = "no_url_mapping";

/// `proxy:` in the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyFile {
    pub user_header: Option<String>,
    pub tenant_header: Option<String>,
    pub default_tenant: Option<String>,
    pub jwt_claim: Option<String>,
    pub jwt_metadata_key: Option<String>,
}

/// The same settings as flags and `PERMD_PROXY_*` variables.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct ProxyOverrides {
    /// Request header naming the user for nginx `auth_request` and Envoy ext_authz (default x-user-id).
    #[arg(long, env = "PERMD_PROXY_USER_HEADER")]
    pub proxy_user_header: Option<String>,
    /// Request header naming the tenant for proxied requests (default x-tenant-id).
    #[arg(long, env = "PERMD_PROXY_TENANT_HEADER")]
    pub proxy_tenant_header: Option<String>,
    /// Tenant of a proxied request without the tenant header (default: the model's org rule).
    #[arg(long, env = "PERMD_PROXY_DEFAULT_TENANT")]
    pub proxy_default_tenant: Option<String>,
    /// JWT claim naming the user in Envoy's jwt_authn metadata (default sub).
    #[arg(long, env = "PERMD_PROXY_JWT_CLAIM")]
    pub proxy_jwt_claim: Option<String>,
    /// Key of the JWT payload in jwt_authn's metadata (`payload_in_metadata`; default jwt_payload).
    #[arg(long, env = "PERMD_PROXY_JWT_METADATA_KEY")]
    pub proxy_jwt_metadata_key: Option<String>,
}

/// Where a proxied request's subject and tenant come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxySettings {
    /// Lower-cased header name.
    pub user_header: String,
    /// Lower-cased header name.
    pub tenant_header: String,
    pub default_tenant: Option<String>,
    pub jwt_claim: String,
    pub jwt_metadata_key: String,
}

impl Default for ProxySettings {
    fn default() -> ProxySettings {
        ProxySettings {
            user_header: "x-user-id".into(),
            tenant_header: "x-tenant-id".into(),
            default_tenant: None,
            jwt_claim: "sub".into(),
            jwt_metadata_key: "jwt_payload".into(),
        }
    }
}

fn header_name(field: &'static str, v: String) -> Result<String, ConfigError> {
    match http::HeaderName::from_bytes(v.as_bytes()) {
        Ok(h) => Ok(h.as_str().to_owned()),
        Err(_) => Err(ConfigError::Invalid {
            field,
            message: format!("`{v}` is not an HTTP header name"),
        }),
    }
}

fn non_empty(field: &'static str, v: String) -> Result<String, ConfigError> {
    if v.is_empty() {
        return Err(ConfigError::Invalid {
            field,
            message: "must not be empty".into(),
        });
    }
    Ok(v)
}

impl ProxySettings {
    /// The file's `proxy:` overridden by flags and environment.
    pub fn merge(file: Option<ProxyFile>, over: &ProxyOverrides) -> Result<ProxySettings, ConfigError> {
        let file = file.unwrap_or_default();
        let d = ProxySettings::default();
        Ok(ProxySettings {
            user_header: header_name(
                "proxy.user_header",
                over.proxy_user_header
                    .clone()
                    .or(file.user_header)
                    .unwrap_or(d.user_header),
            )?,
            tenant_header: header_name(
                "proxy.tenant_header",
                over.proxy_tenant_header
                    .clone()
                    .or(file.tenant_header)
                    .unwrap_or(d.tenant_header),
            )?,
            default_tenant: match over.proxy_default_tenant.clone().or(file.default_tenant) {
                Some(t) => Some(non_empty("proxy.default_tenant", t)?),
                None => None,
            },
            jwt_claim: non_empty(
                "proxy.jwt_claim",
                over.proxy_jwt_claim.clone().or(file.jwt_claim).unwrap_or(d.jwt_claim),
            )?,
            jwt_metadata_key: non_empty(
                "proxy.jwt_metadata_key",
                over.proxy_jwt_metadata_key
                    .clone()
                    .or(file.jwt_metadata_key)
                    .unwrap_or(d.jwt_metadata_key),
            )?,
        })
    }
}

/// The answer for one proxied request.
#[derive(Debug, Clone, PartialEq)]
pub struct UrlDecision {
    pub allow: bool,
    pub reason: &'static str,
    pub version: u64,
    /// The check the request mapped to, when a rule matched.
    pub check: Option<MappedCheck>,
}

/// The check a URL rule gave: (resource type, key, action) and the request attributes.
#[derive(Debug, Clone, PartialEq)]
pub struct MappedCheck {
    pub resource_type: String,
    pub key: Option<String>,
    pub action: String,
    /// The path and query variables as the resource's request attributes (model.md §5/§6),
    /// what conditions see of the request.
    pub request: RequestData,
}

impl MappedCheck {
    /// The path and query variables.
    pub fn attributes(&self) -> &Attributes {
        static NONE: std::sync::LazyLock<Attributes> = std::sync::LazyLock::new(Attributes::new);
        self.request.resource.as_ref().unwrap_or(&NONE)
    }

    /// The index query of this check for `user` in `tenant`: the variables are the resource's
    /// request attributes.
    pub fn query<'a>(&'a self, user: &'a str, tenant: Option<&'a str>) -> Query<'a> {
        Query {
            subject: Subject::User(user),
            action: &self.action,
            resource_type: &self.resource_type,
            resource_key: self.key.as_deref(),
            org: tenant,
            group_type: None,
            request: Some(&self.request),
        }
    }
}

/// Maps (method, target) through the version's URL rules and decides for `user` in `tenant`.
pub fn decide_url(ix: &Index, method: &str, target: &str, user: &str, tenant: Option<&str>) -> UrlDecision {
    let Some(m) = ix.map_url(method, target) else {
        return UrlDecision {
            allow: false,
            reason: NO_URL_MAPPING,
            version: ix.version(),
            check: None,
        };
    };
    let check = MappedCheck {
        resource_type: m.resource_type.to_owned(),
        key: m.key,
        action: m.action.to_owned(),
        request: RequestData {
            resource: (!m.attributes.is_empty()).then_some(m.attributes),
            ..RequestData::default()
        },
    };
    let d = ix.decide(&check.query(user, tenant));
    UrlDecision {
        allow: d.allow,
        reason: d.reason.as_str(),
        version: d.version,
        check: Some(check),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn settings_merge_file_then_flags_and_name_bad_values() {
        let d = ProxySettings::merge(None, &ProxyOverrides::default()).unwrap();
        assert_eq!(d, ProxySettings::default());
        let file: ProxyFile =
            yaml_serde::from_str("user_header: X-Auth-User\ndefault_tenant: acme\njwt_claim: email\n").unwrap();
        let over = ProxyOverrides {
            proxy_jwt_claim: Some("preferred_username".into()),
            ..ProxyOverrides::default()
        };
        let s = ProxySettings::merge(Some(file), &over).unwrap();
        assert_eq!(s.user_header, "x-auth-user");
        assert_eq!(s.default_tenant.as_deref(), Some("acme"));
        assert_eq!(s.jwt_claim, "preferred_username");
        assert_eq!(s.tenant_header, "x-tenant-id");
        for (over, field) in [
            (
                ProxyOverrides {
                    proxy_user_header: Some("bad header".into()),
                    ..ProxyOverrides::default()
                },
                "proxy.user_header",
            ),
            (
                ProxyOverrides {
                    proxy_default_tenant: Some(String::new()),
                    ..ProxyOverrides::default()
                },
                "proxy.default_tenant",
            ),
            (
                ProxyOverrides {
                    proxy_jwt_metadata_key: Some(String::new()),
                    ..ProxyOverrides::default()
                },
                "proxy.jwt_metadata_key",
            ),
        ] {
            let err = ProxySettings::merge(None, &over).unwrap_err().to_string();
            assert!(err.contains(field), "{err}");
        }
        assert!(yaml_serde::from_str::<ProxyFile>("user_hedaer: x\n").is_err());
    }
}
