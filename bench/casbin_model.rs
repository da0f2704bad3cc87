//! The casbin-rs model and policy lines both casbin benches use (bench/decide.rs and
//! bench/casbin.rs), so both measure casbin on the same rules.

/// casbin-rs RBAC with domains: roles are global (as the generator's roles are), so a policy
/// line is (role, type, action) and `g(user, role, org)` carries the org-wide assignments.
pub const CASBIN_MODEL: &str = r#"
[request_definition]
r = sub, dom, obj, act

[policy_definition]
p = sub, obj, act

[role_definition]
g = _, _, _

[policy_effect]
e = some(where (p.eft == allow))

[matchers]
m = g(r.sub, p.sub, r.dom) && r.obj == p.obj && r.act == p.act
"#;

/// The generator's roles expanded to concrete (type, action) pairs.
pub const CASBIN_POLICY: &[(&str, &str, &str)] = &[
    ("viewer", "document", "read"),
    ("viewer", "folder", "read"),
    ("editor", "document", "read"),
    ("editor", "folder", "read"),
    ("editor", "document", "write"),
    ("editor", "folder", "write"),
    ("admin", "document", "read"),
    ("admin", "document", "write"),
    ("admin", "document", "delete"),
    ("admin", "document", "share"),
    ("admin", "folder", "read"),
    ("admin", "folder", "write"),
    ("admin", "folder", "share"),
    ("auditor", "document", "read"),
    ("auditor", "folder", "read"),
    ("auditor", "report", "read"),
];
