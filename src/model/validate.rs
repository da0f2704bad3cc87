//! Whole-document validation (model.md "Validation", the reject half): format, key sizes,
//! permission strings, duplicate identities. Dangling references are not errors here: the
//! index ignores them and reports them (the "ignore the item" half).

use super::delta::{Identity, Item, Op};
use super::{
    Menu, Org, Resource, ResourceType, Role, RoleAssignment, RoleGrant, Rule, Snapshot, SnapshotError, UrlMapping, User,
};
use std::collections::HashSet;

/// The longest key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 256;

/// A `type:key` reference to a resource instance, split at the first `:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceRef<'a> {
    pub resource_type: &'a str,
    pub key: &'a str,
}

impl<'a> ResourceRef<'a> {
    /// Splits `type:key`; `None` when there is no `:`.
    pub fn parse(s: &'a str) -> Option<ResourceRef<'a>> {
        s.split_once(':')
            .map(|(resource_type, key)| ResourceRef { resource_type, key })
    }
}

fn key(value: &str, at: impl FnOnce() -> String) -> Result<(), SnapshotError> {
    if value.is_empty() {
        return Err(SnapshotError::invalid(at(), "must not be empty"));
    }
    if value.len() > MAX_KEY_BYTES {
        return Err(SnapshotError::invalid(
            at(),
            format!("is {} bytes; keys are at most {MAX_KEY_BYTES}", value.len()),
        ));
    }
    Ok(())
}

fn keys(values: &[String], at: &str) -> Result<(), SnapshotError> {
    for (i, v) in values.iter().enumerate() {
        key(v, || format!("{at}[{i}]"))?;
    }
    Ok(())
}

/// A `type:key` reference: both sides present and within the key limits.
fn resource_ref(value: &str, at: impl Fn() -> String) -> Result<(), SnapshotError> {
    let Some(r) = ResourceRef::parse(value) else {
        return Err(SnapshotError::invalid(at(), format!("`{value}` is not `type:key`")));
    };
    key(r.resource_type, || format!("{} (type)", at()))?;
    key(r.key, || format!("{} (key)", at()))
}

/// A permission or grant action pattern: `type:action`, either side may be `*`.
fn permission(value: &str, at: impl Fn() -> String) -> Result<(), SnapshotError> {
    match value.split_once(':') {
        Some((t, a)) if !t.is_empty() && !a.is_empty() => {
            key(t, &at)?;
            key(a, &at)
        }
        _ => Err(SnapshotError::invalid(at(), format!("`{value}` is not `type:action`"))),
    }
}

/// A `when`: CEL that parses and names only the variables of model.md §5.
fn condition(value: &str, at: impl FnOnce() -> String) -> Result<(), SnapshotError> {
    crate::cond::Condition::compile_shared(value)
        .map(drop)
        .map_err(|e| SnapshotError::invalid(at(), format!("condition does not compile: {e}")))
}

fn opt_key(value: &Option<String>, at: impl FnOnce() -> String) -> Result<(), SnapshotError> {
    value.as_deref().map_or(Ok(()), |v| key(v, at))
}

fn org(v: &Org, at: &str) -> Result<(), SnapshotError> {
    key(&v.key, || format!("{at}.key"))?;
    opt_key(&v.parent, || format!("{at}.parent"))
}

fn resource_type(v: &ResourceType, at: &str) -> Result<(), SnapshotError> {
    key(&v.key, || format!("{at}.key"))?;
    keys(&v.actions, &format!("{at}.actions"))
}

fn role(v: &Role, at: &str) -> Result<(), SnapshotError> {
    key(&v.key, || format!("{at}.key"))?;
    if let Some(id) = v.id
        && !(1..=i32::MAX as u32).contains(&id)
    {
        return Err(SnapshotError::invalid(
            format!("{at}.id"),
            format!("`{id}` is not between 1 and {}", i32::MAX),
        ));
    }
    opt_key(&v.org, || format!("{at}.org"))?;
    for (i, p) in v.permissions.iter().enumerate() {
        permission(&p.permission, || format!("{at}.permissions[{i}]"))?;
        if let Some(w) = &p.when {
            condition(w, || format!("{at}.permissions[{i}].when"))?;
        }
    }
    keys(&v.extends, &format!("{at}.extends"))?;
    keys(&v.menus, &format!("{at}.menus"))
}

fn user(v: &User, at: &str) -> Result<(), SnapshotError> {
    key(&v.key, || format!("{at}.key"))
}

fn resource(v: &Resource, at: &str) -> Result<(), SnapshotError> {
    key(&v.resource_type, || format!("{at}.type"))?;
    key(&v.key, || format!("{at}.key"))?;
    key(&v.org, || format!("{at}.org"))?;
    for (i, p) in v.parents.iter().enumerate() {
        resource_ref(p, || format!("{at}.parents[{i}]"))?;
    }
    Ok(())
}

fn assignment(v: &RoleAssignment, at: &str) -> Result<(), SnapshotError> {
    key(&v.user, || format!("{at}.user"))?;
    key(&v.role, || format!("{at}.role"))?;
    key(&v.org, || format!("{at}.org"))?;
    match &v.resource {
        Some(r) => resource_ref(r, || format!("{at}.resource")),
        None => Ok(()),
    }
}

fn grant(v: &RoleGrant, at: &str) -> Result<(), SnapshotError> {
    key(&v.org, || format!("{at}.org"))?;
    key(&v.role, || format!("{at}.role"))?;
    resource_ref(&v.resource, || format!("{at}.resource"))?;
    for (i, p) in v.actions.iter().enumerate() {
        permission(p, || format!("{at}.actions[{i}]"))?;
    }
    match &v.when {
        Some(w) => condition(w, || format!("{at}.when")),
        None => Ok(()),
    }
}

fn rule(v: &Rule, at: &str) -> Result<(), SnapshotError> {
    key(&v.key, || format!("{at}.key"))?;
    opt_key(&v.org, || format!("{at}.org"))?;
    for (i, p) in v.permissions.iter().enumerate() {
        permission(p, || format!("{at}.permissions[{i}]"))?;
    }
    condition(&v.when, || format!("{at}.when"))
}

fn menu(v: &Menu, at: &str) -> Result<(), SnapshotError> {
    key(&v.platform, || format!("{at}.platform"))?;
    key(&v.code, || format!("{at}.code"))?;
    opt_key(&v.parent, || format!("{at}.parent"))
}

/// A URL mapping rule: the resource and action are keys; method, url and url_type compile
/// (`crate::urlmap`: a bad regex, a bad template or an unknown url_type is named).
fn url_mapping(v: &UrlMapping, at: &str) -> Result<(), SnapshotError> {
    key(&v.resource, || format!("{at}.resource"))?;
    key(&v.action, || format!("{at}.action"))?;
    crate::urlmap::check(v).map_err(|(field, problem)| SnapshotError::invalid(format!("{at}.{field}"), problem))
}

/// Checks every item of `list` and that no two share an identity. The field path of an item
/// (`role_assignments[12]`) is only formatted when that item is wrong: the checks are pure, so
/// a failing item is checked again with its path to name it.
fn each<'a, T, I: std::hash::Hash + Eq + std::fmt::Debug>(
    list: &'a [T],
    name: &str,
    check: impl Fn(&T, &str) -> Result<(), SnapshotError>,
    identity: impl Fn(&'a T) -> I,
) -> Result<(), SnapshotError> {
    let at = |i: usize| format!("{name}[{i}]");
    let mut seen: HashSet<I, foldhash::fast::RandomState> =
        HashSet::with_capacity_and_hasher(list.len(), Default::default());
    for (i, item) in list.iter().enumerate() {
        if check(item, "").is_err() {
            check(item, &at(i))?;
        }
        if !seen.insert(identity(item)) {
            return Err(SnapshotError::Duplicate {
                field: at(i),
                identity: format!("{:?}", identity(item)),
            });
        }
    }
    Ok(())
}

/// The reject half of model.md's validation: `Err` means the whole document is refused.
pub fn validate(s: &Snapshot) -> Result<(), SnapshotError> {
    if s.format != 1 {
        return Err(SnapshotError::Format(s.format));
    }
    each(&s.orgs, "orgs", org, |v| v.key.as_str())?;
    each(&s.resource_types, "resource_types", resource_type, |v| v.key.as_str())?;
    each(&s.roles, "roles", role, |v| (v.org.as_deref(), v.key.as_str()))?;
    let mut ids = std::collections::HashSet::new();
    for (i, r) in s.roles.iter().enumerate() {
        if let Some(id) = r.id
            && !ids.insert(id)
        {
            return Err(SnapshotError::Duplicate {
                field: format!("roles[{i}].id"),
                identity: format!("id {id}"),
            });
        }
    }
    each(&s.users, "users", user, |v| v.key.as_str())?;
    each(&s.resources, "resources", resource, |v| {
        (v.resource_type.as_str(), v.key.as_str())
    })?;
    each(&s.role_assignments, "role_assignments", assignment, |v| v)?;
    each(&s.role_grants, "role_grants", grant, |v| {
        (v.org.as_str(), v.role.as_str(), v.resource.as_str())
    })?;
    each(&s.menus, "menus", menu, |v| (v.platform.as_str(), v.code.as_str()))?;
    each(&s.rules, "rules", rule, |v| v.key.as_str())?;
    each(&s.url_mappings, "url_mappings", url_mapping, |v| {
        (v.method.as_str(), v.url.as_str())
    })?;
    Ok(())
}

/// The same structural rules for one delta op; `at` names the op's value.
pub(super) fn validate_op(op: &Op, at: &str) -> Result<(), SnapshotError> {
    match op {
        Op::Upsert(item) => match item {
            Item::Org(v) => org(v, at),
            Item::ResourceType(v) => resource_type(v, at),
            Item::Role(v) => role(v, at),
            Item::User(v) => user(v, at),
            Item::Resource(v) => resource(v, at),
            Item::RoleAssignment(v) => assignment(v, at),
            Item::RoleGrant(v) => grant(v, at),
            Item::Menu(v) => menu(v, at),
            Item::Rule(v) => rule(v, at),
            Item::UrlMapping(v) => url_mapping(v, at),
        },
        Op::Delete(id) => match id {
            Identity::Org { key: k }
            | Identity::ResourceType { key: k }
            | Identity::User { key: k }
            | Identity::Rule { key: k } => key(k, || format!("{at}.key")),
            Identity::Role { key: k, org } => {
                key(k, || format!("{at}.key"))?;
                opt_key(org, || format!("{at}.org"))
            }
            Identity::Resource { resource_type, key: k } => {
                key(resource_type, || format!("{at}.type"))?;
                key(k, || format!("{at}.key"))
            }
            Identity::RoleAssignment(a) => assignment(a, at),
            Identity::RoleGrant { org, role, resource } => {
                key(org, || format!("{at}.org"))?;
                key(role, || format!("{at}.role"))?;
                resource_ref(resource, || format!("{at}.resource"))
            }
            Identity::Menu { platform, code } => {
                key(platform, || format!("{at}.platform"))?;
                key(code, || format!("{at}.code"))
            }
            Identity::UrlMapping { method, url } => {
                key(method, || format!("{at}.method"))?;
                if url.is_empty() {
                    return Err(SnapshotError::invalid(format!("{at}.url"), "must not be empty"));
                }
                Ok(())
            }
        },
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::{Attributes, Encoding};
    use super::*;

    fn load(yaml: &str) -> Result<Snapshot, SnapshotError> {
        Snapshot::load(yaml.as_bytes(), Encoding::Yaml)
    }

    #[test]
    fn accepts_minimal_and_null_lists() {
        let s = load("format: 1\nversion: 3\norgs:\nroles: []\n").unwrap();
        assert_eq!(s.version, 3);
        assert!(s.orgs.is_empty());
    }

    #[test]
    fn rejects_with_the_field_named() {
        let long = "k".repeat(257);
        let cases = [
            ("version: 1\n", "missing field `format`"),
            ("format: 2\nversion: 1\n", "only format 1"),
            ("format: 1\nversion: -1\n", "does not parse"),
            ("format: 1\nversion: 1\nroless: []\n", "unknown field `roless`"),
            (
                "format: 1\nversion: 1\norgs: [{key: a}, {key: a}]\n",
                "orgs[1]: duplicate",
            ),
            (
                "format: 1\nversion: 1\nroles: [{key: r, permissions: [read]}]\n",
                "roles[0].permissions[0]",
            ),
            (
                "format: 1\nversion: 1\nroles: [{key: r, permissions: [':read']}]\n",
                "roles[0].permissions[0]",
            ),
            (
                "format: 1\nversion: 1\norgs: [{key: ''}]\n",
                "orgs[0].key: must not be empty",
            ),
            (
                "format: 1\nversion: 1\nresources: [{type: t, key: k, org: o, parents: ['t']}]\n",
                "resources[0].parents[0]",
            ),
            (
                "format: 1\nversion: 1\nrole_assignments: [{user: u, role: r}]\n",
                "missing field `org`",
            ),
            (
                "format: 1\nversion: 1\nusers: [{key: u, emial: x}]\n",
                "unknown field `emial`",
            ),
            (
                "format: 1\nversion: 1\nroles: [{key: a, id: 3}, {key: b, id: 3}]\n",
                "roles[1].id",
            ),
            ("format: 1\nversion: 1\nroles: [{key: a, id: 0}]\n", "roles[0].id"),
            (
                "format: 1\nversion: 1\nroles: [{key: a, permissions: [{permission: 'd:r', when: 'user.key =='}]}]\n",
                "roles[0].permissions[0].when: condition does not compile",
            ),
            (
                "format: 1\nversion: 1\nroles: [{key: a, permissions: [{permission: 'd:r', when: 'subject.id == 1'}]}]\n",
                "unknown variable `subject`",
            ),
            (
                "format: 1\nversion: 1\nroles: [{key: a, permissions: [{permission: 'd:r', wen: 'true'}]}]\n",
                "unknown field `wen`",
            ),
            (
                "format: 1\nversion: 1\nrules: [{key: own, permissions: ['d:r'], when: 'resource.attributes.x ==='}]\n",
                "rules[0].when",
            ),
            (
                "format: 1\nversion: 1\nrules: [{key: own, permissions: ['d:r']}]\n",
                "missing field `when`",
            ),
            (
                "format: 1\nversion: 1\nrole_grants: [{org: o, role: r, resource: 'a:b', when: 'nope'}]\n",
                "role_grants[0].when",
            ),
            (
                "format: 1\nversion: 1\nroles: [{key: a, id: 2147483648}]\n",
                "roles[0].id",
            ),
        ];
        for (doc, want) in cases {
            let err = load(doc).unwrap_err().to_string();
            assert!(err.contains(want), "{doc:?}: `{err}` should contain `{want}`");
        }
        let err = load(&format!("format: 1\nversion: 1\nusers: [{{key: {long}}}]\n")).unwrap_err();
        assert!(err.to_string().contains("users[0].key: is 257 bytes"));
    }

    #[test]
    fn roles_with_same_key_in_different_orgs_are_distinct() {
        load("format: 1\nversion: 1\nroles: [{key: r}, {key: r, org: a}, {key: r, org: b}]\n").unwrap();
        assert!(load("format: 1\nversion: 1\nroles: [{key: r, org: a}, {key: r, org: a}]\n").is_err());
    }

    #[test]
    fn three_encodings_read_the_same_document() {
        let s = load(
            "format: 1\nversion: 7\norgs: [{key: acme, attributes: {region: eu, n: 1}}]\n\
             role_assignments: [{user: u, role: r, org: acme, resource: 'doc:1'}]\n",
        )
        .unwrap();
        for enc in [Encoding::Json, Encoding::MessagePack, Encoding::Yaml] {
            let bytes = s.encode(enc).unwrap();
            assert_eq!(Snapshot::load(&bytes, enc).unwrap(), s, "{enc:?}");
        }
    }

    /// A float attribute reads back as the very f64 it was written from, in each encoding.
    /// -1.81996730402717e-179 is one serde_json's default (not `float_roundtrip`) parser reads
    /// as its neighbour; the `snapshot` fuzz target found it in a MessagePack document.
    #[test]
    fn float_attributes_keep_their_bits_in_every_encoding() {
        let floats = [
            -1.81996730402717e-179,
            1.0715660391465826e-75,
            -1.603964615428183e143,
            f64::MAX,
            f64::MIN_POSITIVE,
            5e-324,
            -0.0,
            0.1,
        ];
        let mut s = load("format: 1\nversion: 1\norgs: [{key: acme}]\n").unwrap();
        let attrs: Attributes = floats
            .iter()
            .enumerate()
            .map(|(i, f)| (format!("f{i}"), serde_json::json!(f)))
            .collect();
        s.orgs[0].attributes = Some(attrs);
        for enc in [Encoding::Json, Encoding::MessagePack, Encoding::Yaml] {
            let back = Snapshot::load(&s.encode(enc).unwrap(), enc).unwrap();
            let got = back.orgs[0].attributes.as_ref().unwrap();
            for (i, f) in floats.iter().enumerate() {
                let v = got[&format!("f{i}")].as_f64().unwrap();
                assert_eq!(v.to_bits(), f.to_bits(), "{enc:?}: f{i} {f:e} read back as {v:e}");
            }
        }
    }
}
