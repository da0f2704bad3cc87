//! Permit's ABAC in the Permit pull: condition sets (user sets and resource sets, their
//! `conditions` trees of `allOf` / `anyOf` / `not` over attribute comparisons) and condition
//! set rules (user set × permission × resource set) become attribute rules (model.md §5) with
//! equivalent CEL. An operator or attribute path with no mapping refuses the pull, naming the
//! set: a rule half-mapped could allow what Permit denies.

use crate::model::Rule;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// A condition set (`/v2/schema/{project}/{env}/condition_sets`): only the fields used.
#[derive(Debug, Clone, Deserialize)]
pub struct PConditionSet {
    pub key: String,
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub conditions: Value,
}

/// A condition set rule (`/v2/facts/{project}/{env}/set_rules`).
#[derive(Debug, Clone, Deserialize)]
pub struct PSetRule {
    pub user_set: String,
    pub permission: String,
    pub resource_set: String,
}

/// Permit's comparison operators that map, with the CEL each becomes (`L` the attribute, `V`
/// the operand). The `-ref` forms take another attribute's path as the operand.
pub const OPERATORS: [&str; 20] = [
    "equals",
    "not-equals",
    "less-than",
    "greater-than",
    "less-than-equals",
    "greater-than-equals",
    "contains",
    "array_contains",
    "array_subset",
    "array_superset",
    "array_intersect",
    "equals-ref",
    "not-equals-ref",
    "contains-ref",
    "array-contains-ref",
    "less-than-ref",
    "greater-than-ref",
    "less-than-equals-ref",
    "greater-than-equals-ref",
    "in",
];

/// The rules of one pull: one per (user set, resource set) pair, holding each permission the
/// set rules give that pair.
pub fn rules(sets: &[PConditionSet], set_rules: &[PSetRule]) -> Result<Vec<Rule>, String> {
    let by_key: BTreeMap<&str, &PConditionSet> = sets.iter().map(|s| (s.key.as_str(), s)).collect();
    let mut grouped: BTreeMap<(&str, &str), Vec<String>> = BTreeMap::new();
    for r in set_rules {
        let perms = grouped.entry((&r.user_set, &r.resource_set)).or_default();
        if !perms.contains(&r.permission) {
            perms.push(r.permission.clone());
        }
    }
    let mut out = Vec::with_capacity(grouped.len());
    for ((user_set, resource_set), permissions) in grouped {
        let set = |key: &str, want: &str| -> Result<String, String> {
            let s = by_key
                .get(key)
                .ok_or_else(|| format!("condition set rule names condition set `{key}`, which does not exist"))?;
            if let Some(kind) = &s.kind
                && kind != want
            {
                return Err(format!(
                    "condition set `{key}` is a `{kind}`; a set rule uses it as a `{want}`"
                ));
            }
            cel(&s.conditions).map_err(|e| format!("condition set `{key}`: {e}"))
        };
        let when = format!(
            "({}) && ({})",
            set(user_set, "userset")?,
            set(resource_set, "resourceset")?
        );
        out.push(Rule {
            key: format!("{user_set}|{resource_set}"),
            permissions,
            when,
            org: None,
            name: None,
            description: Some(format!("Permit condition set rule: {user_set} on {resource_set}")),
        });
    }
    Ok(out)
}

/// A `conditions` tree as CEL.
pub fn cel(node: &Value) -> Result<String, String> {
    let Value::Object(map) = node else {
        return Err(format!("a condition is an object, not `{node}`"));
    };
    if map.is_empty() {
        return Ok("true".into());
    }
    let mut parts = Vec::with_capacity(map.len());
    for (key, value) in map {
        parts.push(match key.as_str() {
            "allOf" => join(value, " && ", "true")?,
            "anyOf" => join(value, " || ", "false")?,
            "not" => format!("!({})", cel(value)?),
            path => comparisons(path, value)?,
        });
    }
    Ok(parts.join(" && "))
}

fn join(list: &Value, op: &str, empty: &str) -> Result<String, String> {
    let Value::Array(items) = list else {
        return Err(format!("`allOf` / `anyOf` takes a list, not `{list}`"));
    };
    if items.is_empty() {
        return Ok(empty.into());
    }
    let parts = items
        .iter()
        .map(|i| cel(i).map(|c| format!("({c})")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(parts.join(op))
}

/// `{"user.department": {"equals": "legal"}}`: each operator on the attribute, and-ed.
fn comparisons(path: &str, ops: &Value) -> Result<String, String> {
    let Value::Object(ops) = ops else {
        return Err(format!("`{path}` takes an object of operators, not `{ops}`"));
    };
    if ops.is_empty() {
        return Err(format!("`{path}` has no operator"));
    }
    let left = attribute(path)?;
    let mut parts = Vec::with_capacity(ops.len());
    for (op, operand) in ops {
        let right = match (op.ends_with("-ref"), operand) {
            (_, Value::Object(m)) if m.len() == 1 && m.contains_key("ref") => match m.get("ref") {
                Some(Value::String(p)) => attribute(p)?,
                _ => return Err(format!("`{path}`: `ref` takes an attribute path")),
            },
            (true, Value::String(p)) => attribute(p)?,
            (true, other) => return Err(format!("`{path}`: `{op}` takes an attribute path, not `{other}`")),
            (false, v) => literal(v)?,
        };
        let base = op.trim_end_matches("-ref").replace('-', "_");
        parts.push(match base.as_str() {
            "equals" => format!("{left} == {right}"),
            "not_equals" => format!("{left} != {right}"),
            "less_than" => format!("{left} < {right}"),
            "greater_than" => format!("{left} > {right}"),
            "less_than_equals" => format!("{left} <= {right}"),
            "greater_than_equals" => format!("{left} >= {right}"),
            "contains" => format!("{left}.contains({right})"),
            "array_contains" => format!("{right} in {left}"),
            "in" => format!("{left} in {right}"),
            "array_subset" => format!("{left}.all(x, x in {right})"),
            "array_superset" => format!("{right}.all(x, x in {left})"),
            "array_intersect" => format!("{left}.exists(x, x in {right})"),
            _ => {
                return Err(format!(
                    "operator `{op}` on `{path}` has no mapping (mapped: {})",
                    OPERATORS.join(", ")
                ));
            }
        });
    }
    Ok(parts.join(" && "))
}

/// A Permit attribute path as the CEL that reads it: `user.key`, `user.email` and
/// `user.<attribute>`; `resource.key`, `resource.type`, `resource.tenant` and
/// `resource.<attribute>`; `tenant.key` and `tenant.<attribute>`; `context.<field>`.
pub fn attribute(path: &str) -> Result<String, String> {
    let (root, rest) = path
        .split_once('.')
        .ok_or_else(|| format!("attribute path `{path}` has no `.`"))?;
    let fields: Vec<&str> = rest.split('.').collect();
    if fields.iter().any(|f| !is_ident(f)) {
        return Err(format!("attribute path `{path}` is not a dotted list of names"));
    }
    let tail = fields.join(".");
    let first = fields.first().copied().unwrap_or_default();
    Ok(match (root, first) {
        ("user" | "subject", "key" | "email") if fields.len() == 1 => format!("user.{tail}"),
        ("user" | "subject", "roles") => {
            return Err(format!(
                "`{path}`: a condition on the user's roles has no mapping; use a role"
            ));
        }
        ("user" | "subject", _) => format!("user.attributes.{tail}"),
        ("resource", "key" | "type") if fields.len() == 1 => format!("resource.{tail}"),
        ("resource", "tenant") if fields.len() == 1 => "resource.org".into(),
        ("resource", _) => format!("resource.attributes.{tail}"),
        ("tenant", "key") if fields.len() == 1 => "org.key".into(),
        ("tenant", _) => format!("org.attributes.{tail}"),
        ("context", _) => format!("context.{tail}"),
        _ => {
            return Err(format!(
                "attribute path `{path}` starts with an unknown object `{root}`"
            ));
        }
    })
}

fn is_ident(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A JSON operand as a CEL literal: strings quoted with JSON's escapes (a subset of CEL's),
/// numbers, booleans, null and lists of those.
fn literal(v: &Value) -> Result<String, String> {
    Ok(match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(_) => serde_json::to_string(v).map_err(|e| e.to_string())?,
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(literal).collect::<Result<Vec<_>, _>>()?.join(", ")
        ),
        Value::Object(_) => return Err(format!("operand `{v}` is an object; only `{{\"ref\": path}}` is")),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::cond::Condition;
    use serde_json::json;

    #[test]
    fn condition_trees_become_cel_that_compiles() {
        let cases = [
            (
                json!({"allOf": [{"user.department": {"equals": "legal"}}, {"user.age": {"greater-than-equals": 18}}]}),
                "(user.attributes.department == \"legal\") && (user.attributes.age >= 18)",
            ),
            (
                json!({"anyOf": [{"resource.owner": {"equals": {"ref": "user.key"}}}, {"not": {"resource.private": {"equals": true}}}]}),
                "(resource.attributes.owner == user.key) || (!(resource.attributes.private == true))",
            ),
            (
                json!({"allOf": [{"resource.tags": {"array_contains": "public"}}, {"user.email": {"contains": "@acme.com"}}]}),
                "(\"public\" in resource.attributes.tags) && (user.email.contains(\"@acme.com\"))",
            ),
            (
                json!({"allOf": [{"resource.tenant": {"equals-ref": "tenant.key"}}, {"user.groups": {"array_intersect": ["a", "b"]}}]}),
                "(resource.org == org.key) && (user.attributes.groups.exists(x, x in [\"a\", \"b\"]))",
            ),
            (json!({}), "true"),
        ];
        for (tree, want) in cases {
            let got = cel(&tree).unwrap();
            assert_eq!(got, want);
            Condition::compile(&got).unwrap();
        }
    }

    #[test]
    fn unmapped_operators_and_paths_are_refused() {
        for tree in [
            json!({"user.x": {"matches-regex": "a.*"}}),
            json!({"user.roles": {"array_contains": "admin"}}),
            json!({"weird.x": {"equals": 1}}),
            json!({"user.x": {"equals": {"nested": 1}}}),
            json!({"allOf": "nope"}),
        ] {
            assert!(cel(&tree).is_err(), "{tree}");
        }
    }

    #[test]
    fn set_rules_group_into_one_rule_per_pair() {
        let sets = vec![
            PConditionSet {
                key: "us".into(),
                kind: Some("userset".into()),
                conditions: json!({"allOf": [{"user.country": {"equals": "US"}}]}),
            },
            PConditionSet {
                key: "private".into(),
                kind: Some("resourceset".into()),
                conditions: json!({"allOf": [{"resource.private": {"equals": true}}]}),
            },
        ];
        let rule = |p: &str| PSetRule {
            user_set: "us".into(),
            permission: p.into(),
            resource_set: "private".into(),
        };
        let rules = rules(&sets, &[rule("repo:clone"), rule("repo:read"), rule("repo:clone")]).unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].permissions, ["repo:clone", "repo:read"]);
        assert_eq!(
            rules[0].when,
            "((user.attributes.country == \"US\")) && ((resource.attributes.private == true))"
        );
        let missing = PSetRule {
            user_set: "nobody".into(),
            ..rule("repo:read")
        };
        assert!(super::rules(&sets, &[missing]).unwrap_err().contains("`nobody`"));
    }
}
