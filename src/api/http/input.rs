//! Request bodies of the check endpoints, decoded without copying strings where JSON allows,
//! and turned into index queries. Every problem is an error naming the field.

use super::RequestError;
use crate::cond::RequestData;
use crate::index::{Query, Subject};
use crate::model::Attributes;
use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use std::borrow::Cow;
use std::fmt;

/// A JSON string, borrowed from the body when it has no escapes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text<'a>(pub Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

impl Text<'_> {
    fn non_empty(&self) -> Option<&str> {
        (!self.0.is_empty()).then_some(&*self.0)
    }
}

fn text<'x>(t: &'x Option<Text<'_>>) -> Option<&'x str> {
    t.as_ref().and_then(Text::non_empty)
}

/// Permit's `user`: a key, or an object with `key` and `attributes` (other fields ignored).
#[derive(Debug)]
pub struct UserIn<'a>(pub Option<Text<'a>>, pub Option<Attributes>);

impl<'de: 'a, 'a> Deserialize<'de> for UserIn<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = UserIn<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a user key or an object with `key`")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(UserIn(Some(Text(Cow::Borrowed(v))), None))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(UserIn(Some(Text(Cow::Owned(v.to_owned()))), None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut key = None;
                let mut attributes = None;
                while let Some(k) = map.next_key::<Text<'de>>()? {
                    match &*k.0 {
                        "key" => key = map.next_value::<Option<Text<'de>>>()?,
                        "attributes" => attributes = map.next_value::<Option<Attributes>>()?,
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(UserIn(key, attributes))
            }
        }
        d.deserialize_any(V)
    }
}

/// Permit's `resource`: `type:key`, a bare `type`, or `{type, key, tenant, ...}`.
#[derive(Debug, Default)]
pub struct ResourceIn<'a> {
    pub resource_type: Option<Text<'a>>,
    pub key: Option<Text<'a>>,
    pub tenant: Option<Text<'a>>,
    pub attributes: Option<Attributes>,
}

impl<'de: 'a, 'a> Deserialize<'de> for ResourceIn<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        fn split<'x>(s: Cow<'x, str>) -> ResourceIn<'x> {
            let (t, k) = match s {
                Cow::Borrowed(b) => match b.split_once(':') {
                    Some((t, k)) => (Cow::Borrowed(t), Some(Cow::Borrowed(k))),
                    None => (Cow::Borrowed(b), None),
                },
                Cow::Owned(o) => match o.split_once(':') {
                    Some((t, k)) => (Cow::Owned(t.to_owned()), Some(Cow::Owned(k.to_owned()))),
                    None => (Cow::Owned(o), None),
                },
            };
            ResourceIn {
                resource_type: Some(Text(t)),
                key: k.map(Text),
                tenant: None,
                attributes: None,
            }
        }
        impl<'de> Visitor<'de> for V {
            type Value = ResourceIn<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("`type:key`, `type`, or an object with `type`, `key` and `tenant`")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(split(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(split(Cow::Owned(v.to_owned())))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut r = ResourceIn::default();
                while let Some(k) = map.next_key::<Text<'de>>()? {
                    match &*k.0 {
                        "type" => r.resource_type = map.next_value()?,
                        "key" => r.key = map.next_value()?,
                        "tenant" => r.tenant = map.next_value()?,
                        "attributes" => r.attributes = map.next_value()?,
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(r)
            }
        }
        d.deserialize_any(V)
    }
}

/// `POST /allowed` (and each entry of `/allowed/bulk`). Unknown fields (`sdk`, ...) are
/// accepted and ignored, as Permit SDKs send them. `user.attributes`, `resource.attributes`
/// and `context` are what conditions see of the request (model.md §5).
#[derive(Debug, Deserialize)]
pub struct AllowedBody<'a> {
    #[serde(borrow, default)]
    pub user: Option<UserIn<'a>>,
    #[serde(borrow, default)]
    pub action: Option<Text<'a>>,
    #[serde(borrow, default)]
    pub resource: Option<ResourceIn<'a>>,
    #[serde(default)]
    pub context: Option<Attributes>,
    #[serde(default)]
    pub explain: bool,
    /// The request data, gathered by [`AllowedBody::prepare`].
    #[serde(skip)]
    pub data: Option<RequestData>,
}

/// The request data of a check, when it carries any.
pub(super) fn request_data(
    user: Option<Attributes>,
    resource: Option<Attributes>,
    context: Option<Attributes>,
) -> Option<RequestData> {
    let data = RequestData {
        user,
        resource,
        context,
        now_unix_nanos: None,
    };
    (!data.is_empty()).then_some(data)
}

fn required<'x>(v: Option<&'x str>, field: &str) -> Result<&'x str, RequestError> {
    v.ok_or_else(|| RequestError::invalid(format!("`{field}` is required and must not be empty")))
}

impl<'a> AllowedBody<'a> {
    /// Moves the attributes and context into `data`, for `query`.
    pub fn prepare(&mut self) {
        let user = self.user.as_mut().and_then(|u| u.1.take());
        let resource = self.resource.as_mut().and_then(|r| r.attributes.take());
        self.data = request_data(user, resource, self.context.take());
    }

    pub fn query(&self, at: &str) -> Result<Query<'_>, RequestError> {
        let user = required(self.user.as_ref().and_then(|u| text(&u.0)), &format!("{at}user"))?;
        let action = required(text(&self.action), &format!("{at}action"))?;
        let res = self
            .resource
            .as_ref()
            .ok_or_else(|| RequestError::invalid(format!("`{at}resource` is required")))?;
        let resource_type = required(text(&res.resource_type), &format!("{at}resource.type"))?;
        Ok(Query {
            subject: Subject::User(user),
            action,
            resource_type,
            resource_key: text(&res.key),
            org: text(&res.tenant),
            group_type: None,
            request: self.data.as_ref(),
        })
    }
}

/// `POST /v1/enforce`: perm/v1 `EnforceRequest` with the proto's field names (the proto3
/// JSON camelCase names are accepted too). An empty string counts as absent.
#[derive(Debug, Deserialize)]
pub struct EnforceBody<'a> {
    #[serde(borrow, default, alias = "orgId")]
    pub org_id: Option<Text<'a>>,
    #[serde(borrow, default, alias = "userId")]
    pub user_id: Option<Text<'a>>,
    #[serde(borrow, default, alias = "roleId")]
    pub role_id: Option<Text<'a>>,
    #[serde(borrow, default, alias = "resType")]
    pub res_type: Option<Text<'a>>,
    #[serde(borrow, default, alias = "groupType")]
    pub group_type: Option<Text<'a>>,
    #[serde(borrow, default, alias = "resId")]
    pub res_id: Option<Text<'a>>,
    #[serde(borrow, default)]
    pub act: Option<Text<'a>>,
    #[serde(default)]
    pub explain: bool,
}

impl EnforceBody<'_> {
    pub fn query(&self) -> Result<Query<'_>, RequestError> {
        let subject = match (text(&self.user_id), text(&self.role_id)) {
            (Some(u), _) => Subject::User(u),
            (None, Some(r)) => Subject::Role(r),
            (None, None) => return Err(RequestError::invalid("one of `user_id` or `role_id` is required")),
        };
        Ok(Query {
            subject,
            action: required(text(&self.act), "act")?,
            resource_type: required(text(&self.res_type), "res_type")?,
            resource_key: text(&self.res_id),
            org: text(&self.org_id),
            group_type: text(&self.group_type),
            request: None,
        })
    }
}

/// AuthZEN subject: `type` `user` (or `role`, a role subject), `id` and `properties` (the
/// user's request attributes).
#[derive(Debug, Clone, Deserialize)]
pub struct AzSubject<'a> {
    #[serde(borrow, default, rename = "type")]
    pub kind: Option<Text<'a>>,
    #[serde(borrow, default)]
    pub id: Option<Text<'a>>,
    #[serde(default)]
    pub properties: Option<Attributes>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AzAction<'a> {
    #[serde(borrow, default)]
    pub name: Option<Text<'a>>,
}

/// AuthZEN resource: `properties.tenant` names the org; the other properties are the
/// resource's request attributes.
#[derive(Debug, Clone, Deserialize)]
pub struct AzResource<'a> {
    #[serde(borrow, default, rename = "type")]
    pub kind: Option<Text<'a>>,
    #[serde(borrow, default)]
    pub id: Option<Text<'a>>,
    #[serde(default)]
    pub properties: Option<Attributes>,
}

impl AzResource<'_> {
    /// `properties.tenant`: a string, or absent.
    pub fn tenant(&self, at: &str) -> Result<Option<&str>, RequestError> {
        match self.properties.as_ref().and_then(|p| p.get("tenant")) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) => Ok((!s.is_empty()).then_some(s.as_str())),
            Some(_) => Err(RequestError::invalid(format!(
                "`{at}resource.properties.tenant` must be a string"
            ))),
        }
    }
}

/// One AuthZEN evaluation, or the defaults and items of a batch.
#[derive(Debug, Clone, Deserialize)]
pub struct AzEvaluation<'a> {
    #[serde(borrow, default)]
    pub subject: Option<AzSubject<'a>>,
    #[serde(borrow, default)]
    pub action: Option<AzAction<'a>>,
    #[serde(borrow, default)]
    pub resource: Option<AzResource<'a>>,
    #[serde(default)]
    pub context: Option<Attributes>,
    #[serde(default)]
    pub explain: bool,
    /// The request data, gathered by [`AzEvaluation::prepare`].
    #[serde(skip)]
    pub data: Option<RequestData>,
}

#[derive(Debug, Deserialize)]
pub struct AzOptions<'a> {
    #[serde(borrow, default)]
    pub evaluations_semantic: Option<Text<'a>>,
}

#[derive(Debug, Deserialize)]
pub struct AzBatch<'a> {
    #[serde(borrow, flatten)]
    pub defaults: AzEvaluation<'a>,
    #[serde(borrow, default)]
    pub evaluations: Option<Vec<AzEvaluation<'a>>>,
    #[serde(borrow, default)]
    pub options: Option<AzOptions<'a>>,
}

impl<'a> AzEvaluation<'a> {
    /// This evaluation with absent parts taken from `defaults` (AuthZEN batch semantics).
    pub fn merged(&self, defaults: &AzEvaluation<'a>) -> AzEvaluation<'a> {
        AzEvaluation {
            subject: self.subject.clone().or_else(|| defaults.subject.clone()),
            action: self.action.clone().or_else(|| defaults.action.clone()),
            resource: self.resource.clone().or_else(|| defaults.resource.clone()),
            context: self.context.clone().or_else(|| defaults.context.clone()),
            explain: self.explain || defaults.explain,
            data: None,
        }
    }

    /// Gathers `subject.properties`, `resource.properties` less `tenant`, and `context` into
    /// `data`, for `query`.
    pub fn prepare(&mut self) {
        let user = self.subject.as_ref().and_then(|s| s.properties.clone());
        let resource = self.resource.as_ref().and_then(|r| r.properties.clone()).map(|mut p| {
            p.remove("tenant");
            p
        });
        self.data = request_data(user, resource, self.context.clone());
    }

    pub fn query(&self, at: &str) -> Result<Query<'_>, RequestError> {
        let subject = self
            .subject
            .as_ref()
            .ok_or_else(|| RequestError::invalid(format!("`{at}subject` is required")))?;
        let id = required(text(&subject.id), &format!("{at}subject.id"))?;
        let subject = match text(&subject.kind) {
            Some("user") => Subject::User(id),
            Some("role") => Subject::Role(id),
            Some(other) => {
                return Err(RequestError::invalid(format!(
                    "`{at}subject.type` is `{other}`; expected `user` or `role`"
                )));
            }
            None => return Err(RequestError::invalid(format!("`{at}subject.type` is required"))),
        };
        let action = required(
            self.action.as_ref().and_then(|a| text(&a.name)),
            &format!("{at}action.name"),
        )?;
        let res = self
            .resource
            .as_ref()
            .ok_or_else(|| RequestError::invalid(format!("`{at}resource` is required")))?;
        Ok(Query {
            subject,
            action,
            resource_type: required(text(&res.kind), &format!("{at}resource.type"))?,
            resource_key: text(&res.id),
            org: res.tenant(at)?,
            group_type: None,
            request: self.data.as_ref(),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn permit_sdk_shapes_decode() {
        let body = br#"{"user": {"key": "alice", "firstName": "A", "attributes": {"x": [1]}},
            "action": "read", "resource": {"type": "document", "key": "photo", "tenant": "acme",
            "attributes": {}, "context": {}}, "context": {"k": 1}, "sdk": "python"}"#;
        let b: AllowedBody = serde_json::from_slice(body).unwrap();
        let q = b.query("").unwrap();
        assert_eq!(q.subject, Subject::User("alice"));
        assert_eq!(
            (q.resource_type, q.resource_key, q.org),
            ("document", Some("photo"), Some("acme"))
        );
        let b: AllowedBody =
            serde_json::from_slice(br#"{"user": "bob", "action": "read", "resource": "folder:a:b"}"#).unwrap();
        let q = b.query("").unwrap();
        assert_eq!((q.resource_type, q.resource_key, q.org), ("folder", Some("a:b"), None));
        let b: AllowedBody =
            serde_json::from_slice(br#"{"user": "b\u0062", "action": "read", "resource": "folder"}"#).unwrap();
        let q = b.query("").unwrap();
        assert_eq!((q.subject, q.resource_key), (Subject::User("bb"), None));
    }

    #[test]
    fn missing_fields_are_named() {
        let cases: [(&[u8], &str); 4] = [
            (br#"{"action": "read", "resource": "d"}"#, "`user`"),
            (
                br#"{"user": {"name": "x"}, "action": "read", "resource": "d"}"#,
                "`user`",
            ),
            (br#"{"user": "u", "action": "", "resource": "d"}"#, "`action`"),
            (
                br#"{"user": "u", "action": "a", "resource": {"key": "k"}}"#,
                "`resource.type`",
            ),
        ];
        for (body, field) in cases {
            let b: AllowedBody = serde_json::from_slice(body).unwrap();
            let err = b.query("").unwrap_err().to_string();
            assert!(err.contains(field), "{err}");
        }
    }
}
