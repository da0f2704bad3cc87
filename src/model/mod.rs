//! The snapshot document and delta batches of model.md: serde types, decoding from YAML, JSON
//! and MessagePack, and the whole-document validation. No I/O beyond byte slices, no index.

mod delta;
pub mod generate;
pub(crate) mod msgpack;
mod validate;

pub use delta::{DeltaBatch, Identity, Item, Kind, Op, ops_from_json};
pub use validate::{MAX_KEY_BYTES, ResourceRef, validate};

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

/// Free-form JSON attributes carried on orgs, users and resources.
pub type Attributes = Map<String, Value>;

/// One whole document: the policy and facts of one project/environment at one revision.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    pub format: u32,
    pub version: u64,
    #[serde(default, deserialize_with = "nullable", skip_serializing_if = "Vec::is_empty")]
    pub orgs: Vec<Org>,
    #[serde(default, deserialize_with = "nullable", skip_serializing_if = "Vec::is_empty")]
    pub resource_types: Vec<ResourceType>,
    #[serde(default, deserialize_with = "nullable", skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<Role>,
    #[serde(default, deserialize_with = "nullable", skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<User>,
    #[serde(default, deserialize_with = "nullable", skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<Resource>,
    #[serde(default, deserialize_with = "nullable", skip_serializing_if = "Vec::is_empty")]
    pub role_assignments: Vec<RoleAssignment>,
    #[serde(default, deserialize_with = "nullable", skip_serializing_if = "Vec::is_empty")]
    pub role_grants: Vec<RoleGrant>,
    #[serde(default, deserialize_with = "nullable", skip_serializing_if = "Vec::is_empty")]
    pub menus: Vec<Menu>,
    /// Attribute rules (model.md §5): permissions held by whoever a condition admits.
    #[serde(default, deserialize_with = "nullable", skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
    #[serde(default, deserialize_with = "nullable", skip_serializing_if = "Vec::is_empty")]
    pub url_mappings: Vec<UrlMapping>,
}

/// A tenant. `parent` builds a forest; permissions of an org-wide role flow to descendants.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Org {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attributes: Option<Attributes>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceType {
    pub key: String,
    #[serde(default, deserialize_with = "nullable", skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Role {
    pub key: String,
    /// A stable numeric id (perm/v1 `Role.id`; the control plane assigns one to every role),
    /// 1 to 2^31 - 1, unique in the document when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u32>,
    /// Present for an org-scoped role: it exists only for assignments and grants in that org.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
    #[serde(default, deserialize_with = "nullable", skip_serializing_if = "Vec::is_empty")]
    pub permissions: Vec<Permission>,
    #[serde(default, deserialize_with = "nullable", skip_serializing_if = "Vec::is_empty")]
    pub extends: Vec<String>,
    #[serde(default, deserialize_with = "nullable", skip_serializing_if = "Vec::is_empty")]
    pub menus: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Free-form attributes (Permit role attributes, perm/v1 `status`); no decision reads them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attributes: Option<Attributes>,
}

/// User metadata. A user key used anywhere exists implicitly; this item only adds metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attributes: Option<Attributes>,
}

/// A resource instance (also a group node: other instances name it in `parents`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resource {
    #[serde(rename = "type")]
    pub resource_type: String,
    pub key: String,
    pub org: String,
    /// Containing nodes as `type:key`, instances of the same org.
    #[serde(default, deserialize_with = "nullable", skip_serializing_if = "Vec::is_empty")]
    pub parents: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attributes: Option<Attributes>,
}

/// A role given to a user org-wide (`resource` absent) or on an instance and its subtree.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleAssignment {
    pub user: String,
    pub role: String,
    pub org: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
}

/// perm/v1 SaveRolePerm: holders of `role` may do `actions` on the subtree of `resource`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleGrant {
    pub org: String,
    pub role: String,
    pub resource: String,
    #[serde(default, deserialize_with = "nullable", skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<String>,
    /// A CEL condition (model.md §5): the grant counts only when it holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
}

/// An attribute rule (model.md §5): a user may do `permissions` whenever `when` holds, in
/// `org` and the orgs below it (every org when absent), with no role needed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub key: String,
    #[serde(default, deserialize_with = "nullable", skip_serializing_if = "Vec::is_empty")]
    pub permissions: Vec<String>,
    pub when: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// A role's permission: `type:action` (either side may be `*`), held unconditionally or, with
/// `when`, only for checks where the CEL condition holds. Written as the bare string when it
/// has no condition, as `{permission, when}` otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Permission {
    pub permission: String,
    pub when: Option<String>,
}

impl Permission {
    pub fn as_str(&self) -> &str {
        &self.permission
    }
}

/// An unconditional permission equals its string.
impl PartialEq<&str> for Permission {
    fn eq(&self, other: &&str) -> bool {
        self.when.is_none() && self.permission == *other
    }
}

impl From<&str> for Permission {
    fn from(p: &str) -> Permission {
        Permission {
            permission: p.to_owned(),
            when: None,
        }
    }
}

impl From<String> for Permission {
    fn from(permission: String) -> Permission {
        Permission { permission, when: None }
    }
}

impl std::fmt::Display for Permission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.when {
            None => f.write_str(&self.permission),
            Some(w) => write!(f, "{} when {w}", self.permission),
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConditionalPermission {
    permission: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    when: Option<String>,
}

impl Serialize for Permission {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.when {
            None => s.serialize_str(&self.permission),
            Some(w) => ConditionalPermission {
                permission: self.permission.clone(),
                when: Some(w.clone()),
            }
            .serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Permission {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Permission;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("`type:action` or `{permission, when}`")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Permission, E> {
                Ok(Permission::from(v))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Permission, E> {
                Ok(Permission::from(v))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Permission, A::Error> {
                let c = ConditionalPermission::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(Permission {
                    permission: c.permission,
                    when: c.when,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// An item of a perm/v1 menu tree; one tree per platform, `parent` is a code of the same platform.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Menu {
    pub platform: String,
    pub code: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
}

/// A URL mapping rule (model.md §6): an HTTP request matching `method` and `url` is the check
/// (`resource`, `action`), key = the `id` variable. Identity: (`method`, `url`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UrlMapping {
    /// An HTTP method, or `*` for any.
    pub method: String,
    /// A path template (`/documents/{id}`) or, with `url_type: regex`, a regex with named groups.
    pub url: String,
    /// `template` (the default) or `regex`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_type: Option<String>,
    pub resource: String,
    pub action: String,
    /// Higher wins among matching rules; absent is 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i64>,
}

/// Replaces the item `same` finds in place, or appends: what an upsert does to a list.
pub(crate) fn put<T>(list: &mut Vec<T>, item: T, same: impl Fn(&T) -> bool) {
    match list.iter_mut().find(|x| same(x)) {
        Some(slot) => *slot = item,
        None => list.push(item),
    }
}

/// `null` (an empty YAML key) reads as an empty list, like an absent one.
fn nullable<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

/// The encodings a snapshot document is read from and written to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Yaml,
    Json,
    MessagePack,
}

impl Encoding {
    /// The encoding a file name's extension names, if any.
    pub fn from_path(path: &str) -> Option<Encoding> {
        let ext = path.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase())?;
        match ext.as_str() {
            "yaml" | "yml" => Some(Encoding::Yaml),
            "json" => Some(Encoding::Json),
            "msgpack" | "mpk" => Some(Encoding::MessagePack),
            _ => None,
        }
    }
}

/// Why a whole document (or a delta batch) is rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("document does not parse: {0}")]
    Parse(String),
    #[error("`format` is {0}; only format 1 exists")]
    Format(u32),
    #[error("{field}: {problem}")]
    Invalid { field: String, problem: String },
    #[error("{field}: duplicate identity {identity}")]
    Duplicate { field: String, identity: String },
}

impl SnapshotError {
    pub(crate) fn invalid(field: impl Into<String>, problem: impl Into<String>) -> Self {
        SnapshotError::Invalid {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

impl Snapshot {
    /// Decodes a document without validating it. MessagePack takes the fast path of
    /// `msgpack` (the large lists in parallel chunks, straight into their final `Vec`s) and,
    /// for anything it does not take, rmp-serde over the whole document: the same result and
    /// the same error either way.
    pub fn decode(bytes: &[u8], encoding: Encoding) -> Result<Snapshot, SnapshotError> {
        let parsed = match encoding {
            Encoding::Yaml => yaml_serde::from_slice(bytes).map_err(|e| e.to_string()),
            Encoding::Json => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
            Encoding::MessagePack => match msgpack::decode(bytes, msgpack::Plan::for_len(bytes.len())) {
                Some(s) => Ok(s),
                None => msgpack::reference(bytes),
            },
        };
        parsed.map_err(SnapshotError::Parse)
    }

    /// Decodes and validates a document: the only way a snapshot from outside enters permd.
    pub fn load(bytes: &[u8], encoding: Encoding) -> Result<Snapshot, SnapshotError> {
        let snapshot = Snapshot::decode(bytes, encoding)?;
        validate(&snapshot)?;
        Ok(snapshot)
    }

    /// Encodes the document; MessagePack uses field names (`to_vec_named`).
    pub fn encode(&self, encoding: Encoding) -> Result<Vec<u8>, SnapshotError> {
        let out = match encoding {
            Encoding::Yaml => yaml_serde::to_string(self)
                .map(String::into_bytes)
                .map_err(|e| e.to_string()),
            Encoding::Json => serde_json::to_vec_pretty(self).map_err(|e| e.to_string()),
            Encoding::MessagePack => rmp_serde::to_vec_named(self).map_err(|e| e.to_string()),
        };
        out.map_err(SnapshotError::Parse)
    }

    /// Applies a batch to the document itself: the reference meaning of a delta (model.md §4).
    /// An upsert replaces the item with the same identity in place or appends it; a delete
    /// removes it. The version check is the caller's (see `Index::apply`).
    pub fn apply_ops(&mut self, ops: &[Op]) {
        for op in ops {
            match op {
                Op::Upsert(item) => self.upsert(item.clone()),
                Op::Delete(id) => self.delete(id),
            }
        }
    }

    fn upsert(&mut self, item: delta::Item) {
        use delta::Item;
        match item {
            Item::Org(v) => {
                let k = v.key.clone();
                put(&mut self.orgs, v, |x| x.key == k)
            }
            Item::ResourceType(v) => {
                let k = v.key.clone();
                put(&mut self.resource_types, v, |x| x.key == k)
            }
            Item::Role(v) => {
                let (k, o) = (v.key.clone(), v.org.clone());
                put(&mut self.roles, v, |x| x.key == k && x.org == o)
            }
            Item::User(v) => {
                let k = v.key.clone();
                put(&mut self.users, v, |x| x.key == k)
            }
            Item::Resource(v) => {
                let (t, k) = (v.resource_type.clone(), v.key.clone());
                put(&mut self.resources, v, |x| x.resource_type == t && x.key == k)
            }
            Item::RoleAssignment(v) => {
                let id = v.clone();
                put(&mut self.role_assignments, v, |x| *x == id)
            }
            Item::RoleGrant(v) => {
                let (o, r, res) = (v.org.clone(), v.role.clone(), v.resource.clone());
                put(&mut self.role_grants, v, |x| {
                    x.org == o && x.role == r && x.resource == res
                })
            }
            Item::Menu(v) => {
                let (p, c) = (v.platform.clone(), v.code.clone());
                put(&mut self.menus, v, |x| x.platform == p && x.code == c)
            }
            Item::Rule(v) => {
                let k = v.key.clone();
                put(&mut self.rules, v, |x| x.key == k)
            }
            Item::UrlMapping(v) => {
                let (m, u) = (v.method.clone(), v.url.clone());
                put(&mut self.url_mappings, v, |x| x.method == m && x.url == u)
            }
        }
    }

    fn delete(&mut self, id: &delta::Identity) {
        use delta::Identity as I;
        match id {
            I::Org { key } => self.orgs.retain(|x| &x.key != key),
            I::ResourceType { key } => self.resource_types.retain(|x| &x.key != key),
            I::Role { key, org } => self.roles.retain(|x| !(&x.key == key && &x.org == org)),
            I::User { key } => self.users.retain(|x| &x.key != key),
            I::Resource { resource_type, key } => self
                .resources
                .retain(|x| !(&x.resource_type == resource_type && &x.key == key)),
            I::RoleAssignment(a) => self.role_assignments.retain(|x| x != a),
            I::RoleGrant { org, role, resource } => self
                .role_grants
                .retain(|x| !(&x.org == org && &x.role == role && &x.resource == resource)),
            I::Menu { platform, code } => self.menus.retain(|x| !(&x.platform == platform && &x.code == code)),
            I::Rule { key } => self.rules.retain(|x| &x.key != key),
            I::UrlMapping { method, url } => self.url_mappings.retain(|x| !(&x.method == method && &x.url == url)),
        }
    }
}
