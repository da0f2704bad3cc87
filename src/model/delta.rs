//! Delta batches (model.md §4): decoding from a JSON line, structural validation, encoding.

use super::{
    Menu, Org, Resource, ResourceType, Role, RoleAssignment, RoleGrant, Rule, SnapshotError, UrlMapping, User,
};
use serde::de::DeserializeOwned;
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;

/// A batch moving the snapshot from `from_version` to `to_version`, applied atomically.
#[derive(Debug, Clone, PartialEq)]
pub struct DeltaBatch {
    pub from_version: u64,
    pub to_version: u64,
    pub ops: Vec<Op>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Inserts the item, or replaces the one with the same identity.
    Upsert(Item),
    /// Removes the item with this identity; a missing item is a no-op.
    Delete(Identity),
}

/// The kinds of item a snapshot holds, by their wire names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Org,
    ResourceType,
    Role,
    User,
    Resource,
    RoleAssignment,
    RoleGrant,
    Menu,
    Rule,
    UrlMapping,
}

impl Kind {
    pub const ALL: [Kind; 10] = [
        Kind::Org,
        Kind::ResourceType,
        Kind::Role,
        Kind::User,
        Kind::Resource,
        Kind::RoleAssignment,
        Kind::RoleGrant,
        Kind::Menu,
        Kind::Rule,
        Kind::UrlMapping,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Org => "org",
            Kind::ResourceType => "resource_type",
            Kind::Role => "role",
            Kind::User => "user",
            Kind::Resource => "resource",
            Kind::RoleAssignment => "role_assignment",
            Kind::RoleGrant => "role_grant",
            Kind::Menu => "menu",
            Kind::Rule => "rule",
            Kind::UrlMapping => "url_mapping",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// A whole item, as an upsert carries it.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    Org(Org),
    ResourceType(ResourceType),
    Role(Role),
    User(User),
    Resource(Resource),
    RoleAssignment(RoleAssignment),
    RoleGrant(RoleGrant),
    Menu(Menu),
    Rule(Rule),
    UrlMapping(UrlMapping),
}

/// The identity fields of an item, as a delete carries them.
#[derive(Debug, Clone, PartialEq)]
pub enum Identity {
    Org {
        key: String,
    },
    ResourceType {
        key: String,
    },
    Role {
        key: String,
        org: Option<String>,
    },
    User {
        key: String,
    },
    Resource {
        resource_type: String,
        key: String,
    },
    RoleAssignment(RoleAssignment),
    RoleGrant {
        org: String,
        role: String,
        resource: String,
    },
    Menu {
        platform: String,
        code: String,
    },
    Rule {
        key: String,
    },
    UrlMapping {
        method: String,
        url: String,
    },
}

impl Item {
    pub fn kind(&self) -> Kind {
        match self {
            Item::Org(_) => Kind::Org,
            Item::ResourceType(_) => Kind::ResourceType,
            Item::Role(_) => Kind::Role,
            Item::User(_) => Kind::User,
            Item::Resource(_) => Kind::Resource,
            Item::RoleAssignment(_) => Kind::RoleAssignment,
            Item::RoleGrant(_) => Kind::RoleGrant,
            Item::Menu(_) => Kind::Menu,
            Item::Rule(_) => Kind::Rule,
            Item::UrlMapping(_) => Kind::UrlMapping,
        }
    }

    /// The identity fields of the item: what a delete of it carries.
    pub fn identity(&self) -> Identity {
        match self {
            Item::Org(v) => Identity::Org { key: v.key.clone() },
            Item::ResourceType(v) => Identity::ResourceType { key: v.key.clone() },
            Item::Role(v) => Identity::Role {
                key: v.key.clone(),
                org: v.org.clone(),
            },
            Item::User(v) => Identity::User { key: v.key.clone() },
            Item::Resource(v) => Identity::Resource {
                resource_type: v.resource_type.clone(),
                key: v.key.clone(),
            },
            Item::RoleAssignment(v) => Identity::RoleAssignment(v.clone()),
            Item::RoleGrant(v) => Identity::RoleGrant {
                org: v.org.clone(),
                role: v.role.clone(),
                resource: v.resource.clone(),
            },
            Item::Menu(v) => Identity::Menu {
                platform: v.platform.clone(),
                code: v.code.clone(),
            },
            Item::Rule(v) => Identity::Rule { key: v.key.clone() },
            Item::UrlMapping(v) => Identity::UrlMapping {
                method: v.method.clone(),
                url: v.url.clone(),
            },
        }
    }

    /// The item as the JSON object a snapshot holds.
    pub fn to_value(&self) -> serde_json::Result<Value> {
        match self {
            Item::Org(v) => serde_json::to_value(v),
            Item::ResourceType(v) => serde_json::to_value(v),
            Item::Role(v) => serde_json::to_value(v),
            Item::User(v) => serde_json::to_value(v),
            Item::Resource(v) => serde_json::to_value(v),
            Item::RoleAssignment(v) => serde_json::to_value(v),
            Item::RoleGrant(v) => serde_json::to_value(v),
            Item::Menu(v) => serde_json::to_value(v),
            Item::Rule(v) => serde_json::to_value(v),
            Item::UrlMapping(v) => serde_json::to_value(v),
        }
    }
}

impl Identity {
    pub fn kind(&self) -> Kind {
        match self {
            Identity::Org { .. } => Kind::Org,
            Identity::ResourceType { .. } => Kind::ResourceType,
            Identity::Role { .. } => Kind::Role,
            Identity::User { .. } => Kind::User,
            Identity::Resource { .. } => Kind::Resource,
            Identity::RoleAssignment(_) => Kind::RoleAssignment,
            Identity::RoleGrant { .. } => Kind::RoleGrant,
            Identity::Menu { .. } => Kind::Menu,
            Identity::Rule { .. } => Kind::Rule,
            Identity::UrlMapping { .. } => Kind::UrlMapping,
        }
    }

    /// The identity as a JSON object of its fields only (keys sorted): what a delete carries,
    /// and a canonical text for it.
    pub fn to_value(&self) -> Value {
        use serde_json::json;
        match self {
            Identity::Org { key }
            | Identity::ResourceType { key }
            | Identity::User { key }
            | Identity::Rule { key } => {
                json!({ "key": key })
            }
            Identity::Role { key, org } => match org {
                Some(org) => json!({ "key": key, "org": org }),
                None => json!({ "key": key }),
            },
            Identity::Resource { resource_type, key } => json!({ "type": resource_type, "key": key }),
            Identity::RoleAssignment(a) => serde_json::to_value(a).unwrap_or(Value::Null),
            Identity::RoleGrant { org, role, resource } => {
                json!({ "org": org, "role": role, "resource": resource })
            }
            Identity::Menu { platform, code } => json!({ "platform": platform, "code": code }),
            Identity::UrlMapping { method, url } => json!({ "method": method, "url": url }),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBatch {
    from_version: u64,
    to_version: u64,
    #[serde(default)]
    ops: Vec<RawOp>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOp {
    op: String,
    kind: String,
    value: Value,
}

/// Only the identity fields of each kind; other fields of a delete's value are ignored.
#[derive(Deserialize)]
struct KeyId {
    key: String,
}
#[derive(Deserialize)]
struct RoleId {
    key: String,
    #[serde(default)]
    org: Option<String>,
}
#[derive(Deserialize)]
struct ResourceId {
    #[serde(rename = "type")]
    resource_type: String,
    key: String,
}
#[derive(Deserialize)]
struct AssignmentId {
    user: String,
    role: String,
    org: String,
    #[serde(default)]
    resource: Option<String>,
}
#[derive(Deserialize)]
struct GrantId {
    org: String,
    role: String,
    resource: String,
}
#[derive(Deserialize)]
struct MenuId {
    platform: String,
    code: String,
}
#[derive(Deserialize)]
struct UrlMappingId {
    method: String,
    url: String,
}

fn field<T: DeserializeOwned>(value: Value, at: &str) -> Result<T, SnapshotError> {
    serde_json::from_value(value).map_err(|e| SnapshotError::invalid(at, e.to_string()))
}

/// The ops of a write request (`{"ops": [...]}` of the control plane's `POST /v1/batches`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOps {
    ops: Vec<RawOp>,
}

/// Decodes `{"ops": [...]}` and validates each op as a batch's (the reject rules of model.md);
/// an error names the op (`ops[3].value.key`).
pub fn ops_from_json(body: &[u8]) -> Result<Vec<Op>, SnapshotError> {
    let raw: RawOps = serde_json::from_slice(body).map_err(|e| SnapshotError::Parse(e.to_string()))?;
    decode_ops(raw.ops)
}

fn decode_ops(raw: Vec<RawOp>) -> Result<Vec<Op>, SnapshotError> {
    let mut ops = Vec::with_capacity(raw.len());
    for (i, raw_op) in raw.into_iter().enumerate() {
        let at = format!("ops[{i}]");
        let kind = Kind::parse(&raw_op.kind)
            .ok_or_else(|| SnapshotError::invalid(format!("{at}.kind"), format!("unknown kind `{}`", raw_op.kind)))?;
        let vat = format!("{at}.value");
        let op = match raw_op.op.as_str() {
            "upsert" => Op::Upsert(Item::decode(kind, raw_op.value, &vat)?),
            "delete" => Op::Delete(Identity::decode(kind, raw_op.value, &vat)?),
            other => {
                return Err(SnapshotError::invalid(
                    format!("{at}.op"),
                    format!("unknown op `{other}`; expected `upsert` or `delete`"),
                ));
            }
        };
        super::validate::validate_op(&op, &vat)?;
        ops.push(op);
    }
    Ok(ops)
}

impl DeltaBatch {
    /// Decodes one NDJSON line and validates it structurally (keys, permission strings,
    /// versions). References to unknown items are not errors here: they are ignored items.
    pub fn from_json(line: &[u8]) -> Result<DeltaBatch, SnapshotError> {
        let raw: RawBatch = serde_json::from_slice(line).map_err(|e| SnapshotError::Parse(e.to_string()))?;
        if raw.to_version <= raw.from_version {
            return Err(SnapshotError::invalid(
                "to_version",
                format!(
                    "`{}` is not greater than from_version `{}`",
                    raw.to_version, raw.from_version
                ),
            ));
        }
        let ops = decode_ops(raw.ops)?;
        Ok(DeltaBatch {
            from_version: raw.from_version,
            to_version: raw.to_version,
            ops,
        })
    }

    /// Encodes the batch as one JSON line (no trailing newline).
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

impl Op {
    pub fn kind(&self) -> Kind {
        match self {
            Op::Upsert(item) => item.kind(),
            Op::Delete(id) => id.kind(),
        }
    }
}

impl Item {
    /// Decodes an item of `kind` from its JSON object; an error names `at`.
    pub fn decode(kind: Kind, value: Value, at: &str) -> Result<Item, SnapshotError> {
        Ok(match kind {
            Kind::Org => Item::Org(field(value, at)?),
            Kind::ResourceType => Item::ResourceType(field(value, at)?),
            Kind::Role => Item::Role(field(value, at)?),
            Kind::User => Item::User(field(value, at)?),
            Kind::Resource => Item::Resource(field(value, at)?),
            Kind::RoleAssignment => Item::RoleAssignment(field(value, at)?),
            Kind::RoleGrant => Item::RoleGrant(field(value, at)?),
            Kind::Menu => Item::Menu(field(value, at)?),
            Kind::Rule => Item::Rule(field(value, at)?),
            Kind::UrlMapping => Item::UrlMapping(field(value, at)?),
        })
    }
}

impl Identity {
    fn decode(kind: Kind, value: Value, at: &str) -> Result<Identity, SnapshotError> {
        Ok(match kind {
            Kind::Org => Identity::Org {
                key: field::<KeyId>(value, at)?.key,
            },
            Kind::ResourceType => Identity::ResourceType {
                key: field::<KeyId>(value, at)?.key,
            },
            Kind::User => Identity::User {
                key: field::<KeyId>(value, at)?.key,
            },
            Kind::Rule => Identity::Rule {
                key: field::<KeyId>(value, at)?.key,
            },
            Kind::Role => {
                let RoleId { key, org } = field(value, at)?;
                Identity::Role { key, org }
            }
            Kind::Resource => {
                let ResourceId { resource_type, key } = field(value, at)?;
                Identity::Resource { resource_type, key }
            }
            Kind::RoleAssignment => {
                let AssignmentId {
                    user,
                    role,
                    org,
                    resource,
                } = field(value, at)?;
                Identity::RoleAssignment(RoleAssignment {
                    user,
                    role,
                    org,
                    resource,
                })
            }
            Kind::RoleGrant => {
                let GrantId { org, role, resource } = field(value, at)?;
                Identity::RoleGrant { org, role, resource }
            }
            Kind::Menu => {
                let MenuId { platform, code } = field(value, at)?;
                Identity::Menu { platform, code }
            }
            Kind::UrlMapping => {
                let UrlMappingId { method, url } = field(value, at)?;
                Identity::UrlMapping { method, url }
            }
        })
    }
}

impl Serialize for Op {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (op, kind, value) = match self {
            Op::Upsert(item) => (
                "upsert",
                item.kind(),
                item.to_value().map_err(serde::ser::Error::custom)?,
            ),
            Op::Delete(id) => ("delete", id.kind(), id.to_value()),
        };
        let mut map = s.serialize_map(Some(3))?;
        map.serialize_entry("op", op)?;
        map.serialize_entry("kind", kind.as_str())?;
        map.serialize_entry("value", &value)?;
        map.end()
    }
}

impl Serialize for DeltaBatch {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(3))?;
        map.serialize_entry("from_version", &self.from_version)?;
        map.serialize_entry("to_version", &self.to_version)?;
        map.serialize_entry("ops", &self.ops)?;
        map.end()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_spec_example() {
        let line = br#"{"from_version": 42, "to_version": 43,
 "ops": [{"op": "upsert", "kind": "role_assignment", "value": {"user": "carol", "role": "viewer", "org": "acme"}},
         {"op": "delete", "kind": "user", "value": {"key": "dave"}}]}"#;
        let b = DeltaBatch::from_json(line).unwrap();
        assert_eq!((b.from_version, b.to_version, b.ops.len()), (42, 43, 2));
        assert_eq!(b.ops[1], Op::Delete(Identity::User { key: "dave".into() }));
        let again = DeltaBatch::from_json(&b.to_json()).unwrap();
        assert_eq!(again, b);
    }

    #[test]
    fn errors_name_the_field() {
        let cases: [(&[u8], &str); 5] = [
            (br#"{"from_version": 2, "to_version": 2, "ops": []}"#, "to_version"),
            (br#"{"from_version": 1, "to_version": 2, "ops": [{"op": "put", "kind": "user", "value": {"key": "a"}}]}"#, "ops[0].op"),
            (br#"{"from_version": 1, "to_version": 2, "ops": [{"op": "upsert", "kind": "usr", "value": {"key": "a"}}]}"#, "ops[0].kind"),
            (br#"{"from_version": 1, "to_version": 2, "ops": [{"op": "upsert", "kind": "role_assignment", "value": {"user": "a"}}]}"#, "ops[0].value"),
            (br#"{"from_version": 1, "to_version": 2, "ops": [{"op": "upsert", "kind": "role", "value": {"key": "r", "permissions": ["nocolon"]}}]}"#, "ops[0].value.permissions[0]"),
        ];
        for (line, field) in cases {
            let err = DeltaBatch::from_json(line).unwrap_err().to_string();
            assert!(err.starts_with(field), "{err} should name {field}");
        }
        assert!(matches!(
            DeltaBatch::from_json(b"{\"from_ver"),
            Err(SnapshotError::Parse(_))
        ));
    }
}
