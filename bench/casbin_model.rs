//! The casbin-rs model and policy lines both casbin benches use (bench/decide.rs and
//! bench/casbin.rs), so both measure casbin on the same rules.

use casbin::{CoreApi, DefaultModel, Enforcer, MemoryAdapter, MgmtApi};
use permd::model::RoleAssignment;

/// casbin-rs RBAC with domains: roles are global (as the generator's roles are), so a policy
/// line is (role, type, action) and `g(user, role, org)` carries the org-wide assignments.
const CASBIN_MODEL: &str = r#"
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
const CASBIN_POLICY: &[(&str, &str, &str)] = &[
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

/// An enforcer with the model, the policy lines and `assignments` as `g(user, role, org)`.
pub fn load_enforcer(rt: &tokio::runtime::Runtime, assignments: &[&RoleAssignment]) -> Enforcer {
    rt.block_on(async {
        let model = DefaultModel::from_str(CASBIN_MODEL)
            .await
            .expect("the casbin model parses");
        let mut e = Enforcer::new(model, MemoryAdapter::default())
            .await
            .expect("an enforcer");
        let policy: Vec<Vec<String>> = CASBIN_POLICY
            .iter()
            .map(|(r, t, a)| vec![(*r).into(), (*t).into(), (*a).into()])
            .collect();
        e.add_policies(policy).await.expect("policies load");
        let grouping: Vec<Vec<String>> = assignments
            .iter()
            .map(|a| vec![a.user.clone(), a.role.clone(), a.org.clone()])
            .collect();
        e.add_grouping_policies(grouping).await.expect("grouping policies load");
        e
    })
}
