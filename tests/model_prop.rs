//! The index held against a naive, obviously-correct reading of model.md §2 that walks the
//! snapshot document directly with sets, on random snapshots and random delta batches; and
//! "snapshot, then batch" held equal to "the snapshot with the batch's ops applied".
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use permd::index::{Index, Query, Subject};
use permd::model::{
    DeltaBatch, Identity, Item, Menu, Op, Org, Resource, ResourceType, Role, RoleAssignment, RoleGrant, Snapshot, User,
    validate,
};
use proptest::prelude::*;
use rand::rngs::SmallRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeSet, HashSet, VecDeque};

// ---------------------------------------------------------------------------------------
// The naive model: model.md §2 read literally over the document.

struct Naive<'a> {
    s: &'a Snapshot,
}

impl<'a> Naive<'a> {
    fn org_known(&self, o: &str) -> bool {
        self.s.orgs.iter().any(|x| x.key == o)
    }
    fn type_actions(&self, t: &str) -> Option<&'a Vec<String>> {
        self.s.resource_types.iter().find(|x| x.key == t).map(|x| &x.actions)
    }
    /// An instance that exists: in the document, type and org known.
    fn instance(&self, t: &str, k: &str) -> Option<&'a Resource> {
        self.s
            .resources
            .iter()
            .find(|r| r.resource_type == t && r.key == k)
            .filter(|r| self.type_actions(t).is_some() && self.org_known(&r.org))
    }
    fn instance_ref(&self, reference: &str) -> Option<&'a Resource> {
        let (t, k) = reference.split_once(':')?;
        self.instance(t, k)
    }
    fn org_anc(&self, o: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let mut cur = Some(o.to_string());
        while let Some(c) = cur {
            if !self.org_known(&c) || !out.insert(c.clone()) {
                break;
            }
            cur = self.s.orgs.iter().find(|x| x.key == c).and_then(|x| x.parent.clone());
        }
        out
    }
    /// Role identity: (org, key).
    fn resolve(&self, o: &str, name: &str) -> Option<(Option<String>, String)> {
        if self
            .s
            .roles
            .iter()
            .any(|r| r.key == name && r.org.as_deref() == Some(o))
        {
            return Some((Some(o.to_string()), name.to_string()));
        }
        self.s
            .roles
            .iter()
            .any(|r| r.key == name && r.org.is_none())
            .then(|| (None, name.to_string()))
    }
    fn role(&self, id: &(Option<String>, String)) -> Option<&'a Role> {
        self.s.roles.iter().find(|r| r.org == id.0 && r.key == id.1)
    }
    fn expand(&self, start: &BTreeSet<(Option<String>, String)>) -> BTreeSet<(Option<String>, String)> {
        let mut seen = start.clone();
        let mut queue: VecDeque<_> = start.iter().cloned().collect();
        while let Some(r) = queue.pop_front() {
            let Some(role) = self.role(&r) else { continue };
            for ext in &role.extends {
                let target = match &r.0 {
                    Some(o) => self.resolve(o, ext),
                    None => self
                        .s
                        .roles
                        .iter()
                        .any(|x| x.key == *ext && x.org.is_none())
                        .then(|| (None, ext.clone())),
                };
                if let Some(t) = target
                    && seen.insert(t.clone())
                {
                    queue.push_back(t);
                }
            }
        }
        seen
    }
    fn pattern_matches(p: &str, t: &str, a: &str) -> bool {
        match p.split_once(':') {
            Some((pt, pa)) => (pt == "*" || pt == t) && (pa == "*" || pa == a),
            None => false,
        }
    }
    fn some_permits(&self, roles: &BTreeSet<(Option<String>, String)>, t: &str, a: &str) -> bool {
        roles
            .iter()
            .filter_map(|r| self.role(r))
            .any(|r| r.permissions.iter().any(|p| Self::pattern_matches(p, t, a)))
    }
    fn org_roles(&self, subject: &Subject<'_>, o: &str) -> BTreeSet<(Option<String>, String)> {
        match subject {
            Subject::Role(r) => self.resolve(o, r).into_iter().collect(),
            Subject::User(u) => {
                let anc = self.org_anc(o);
                self.s
                    .role_assignments
                    .iter()
                    .filter(|a| a.user == *u && a.resource.is_none() && anc.contains(&a.org))
                    .filter_map(|a| self.resolve(&a.org, &a.role))
                    .collect()
            }
        }
    }
    fn res_anc(&self, x: &'a Resource) -> Vec<&'a Resource> {
        let mut out = vec![x];
        let mut i = 0;
        while let Some(y) = out.get(i).copied() {
            i += 1;
            for p in &y.parents {
                if let Some(pr) = self.instance_ref(p)
                    && pr.org == y.org
                    && !out
                        .iter()
                        .any(|z| z.resource_type == pr.resource_type && z.key == pr.key)
                {
                    out.push(pr);
                }
            }
        }
        out
    }

    fn decide(&self, q: &Query<'_>) -> (bool, &'static str) {
        let node_type = q.group_type.unwrap_or(q.resource_type);
        let x = q.resource_key.and_then(|k| self.instance(node_type, k));
        let o = match (q.org, x) {
            (Some(o), _) => o.to_string(),
            (None, Some(x)) => x.org.clone(),
            (None, None) => "default".to_string(),
        };
        if !self.org_known(&o) {
            return (false, "unknown_org");
        }
        let Some(actions) = self.type_actions(q.resource_type) else {
            return (false, "unknown_resource_type");
        };
        if !actions.iter().any(|a| a == q.action) {
            return (false, "unknown_action");
        }
        if let Some(x) = x
            && x.org != o
        {
            return (false, "tenant_mismatch");
        }
        let (t, a) = (q.resource_type, q.action);
        let held = self.org_roles(&q.subject, &o);
        if self.some_permits(&self.expand(&held), t, a) {
            return (true, "org_role");
        }
        let Some(x) = x else {
            return (false, "no_matching_grant");
        };
        let anc = self.res_anc(x);
        let in_anc = |r: &Resource| anc.iter().any(|y| y.resource_type == r.resource_type && y.key == r.key);
        if let Subject::User(u) = q.subject {
            for asg in self.s.role_assignments.iter().filter(|a| a.user == u) {
                let Some(y) = asg.resource.as_deref().and_then(|r| self.instance_ref(r)) else {
                    continue;
                };
                if !in_anc(y) || asg.org != y.org {
                    continue;
                }
                let Some(r) = self.resolve(&asg.org, &asg.role) else {
                    continue;
                };
                if self.some_permits(&self.expand(&BTreeSet::from([r])), t, a) {
                    return (true, "resource_role");
                }
            }
        }
        for g in &self.s.role_grants {
            let Some(y) = self.instance_ref(&g.resource) else {
                continue;
            };
            if !in_anc(y) || g.org != y.org || !self.org_known(&g.org) {
                continue;
            }
            if !g.actions.iter().any(|p| Self::pattern_matches(p, t, a)) {
                continue;
            }
            let Some(r) = self.resolve(&g.org, &g.role) else {
                continue;
            };
            if self.expand(&self.org_roles(&q.subject, &g.org)).contains(&r) {
                return (true, "role_grant");
            }
        }
        (false, "no_matching_grant")
    }
}

// ---------------------------------------------------------------------------------------
// Random documents over a small universe, so references collide, dangle and cycle often.

const ORGS: [&str; 6] = ["default", "o1", "o2", "o3", "o4", "oz"];
const TYPES: [&str; 4] = ["ta", "tb", "tc", "tz"];
const ACTIONS: [&str; 4] = ["r", "w", "x", "zz"];
const ROLES: [&str; 5] = ["r0", "r1", "r2", "r3", "r4"];
const USERS: [&str; 4] = ["u0", "u1", "u2", "u3"];
const KEYS: [&str; 4] = ["k0", "k1", "k2", "k3"];

fn pick<'a>(rng: &mut SmallRng, xs: &[&'a str]) -> &'a str {
    xs.choose(rng).copied().unwrap_or("x")
}

fn maybe<T>(rng: &mut SmallRng, p: f64, f: impl FnOnce(&mut SmallRng) -> T) -> Option<T> {
    if rng.random_bool(p) { Some(f(rng)) } else { None }
}

fn pattern(rng: &mut SmallRng) -> String {
    let t = if rng.random_bool(0.2) { "*" } else { pick(rng, &TYPES) };
    let a = if rng.random_bool(0.2) { "*" } else { pick(rng, &ACTIONS) };
    format!("{t}:{a}")
}

fn res_ref(rng: &mut SmallRng) -> String {
    format!("{}:{}", pick(rng, &TYPES[..3]), pick(rng, &KEYS))
}

fn rand_org(rng: &mut SmallRng) -> Org {
    Org {
        key: pick(rng, &ORGS[..5]).into(),
        parent: maybe(rng, 0.6, |r| pick(r, &ORGS).to_string()),
        name: None,
        attributes: None,
    }
}
fn rand_type(rng: &mut SmallRng) -> ResourceType {
    let n = rng.random_range(0..4);
    let actions = (0..n).map(|_| pick(rng, &ACTIONS[..3]).to_string()).collect();
    ResourceType {
        key: pick(rng, &TYPES[..3]).into(),
        actions,
        name: None,
        description: None,
    }
}
fn rand_role(rng: &mut SmallRng) -> Role {
    let np = rng.random_range(0..3);
    let ne = rng.random_range(0..3);
    Role {
        key: pick(rng, &ROLES).into(),
        org: maybe(rng, 0.3, |r| pick(r, &ORGS).to_string()),
        permissions: (0..np).map(|_| pattern(rng)).collect(),
        extends: (0..ne).map(|_| pick(rng, &ROLES).to_string()).collect(),
        menus: maybe(rng, 0.2, |_| vec!["m0".to_string()]).unwrap_or_default(),
        name: None,
        description: None,
    }
}
fn rand_user(rng: &mut SmallRng) -> User {
    User {
        key: pick(rng, &USERS).into(),
        email: maybe(rng, 0.5, |_| "e@x".to_string()),
        first_name: None,
        last_name: None,
        attributes: None,
    }
}
fn rand_resource(rng: &mut SmallRng) -> Resource {
    let np = rng.random_range(0..3);
    Resource {
        resource_type: pick(rng, &TYPES).into(),
        key: pick(rng, &KEYS).into(),
        org: pick(rng, &ORGS).into(),
        parents: (0..np).map(|_| res_ref(rng)).collect(),
        attributes: None,
    }
}
fn rand_assignment(rng: &mut SmallRng) -> RoleAssignment {
    RoleAssignment {
        user: pick(rng, &USERS).into(),
        role: pick(rng, &ROLES).into(),
        org: pick(rng, &ORGS).into(),
        resource: maybe(rng, 0.4, res_ref),
    }
}
fn rand_grant(rng: &mut SmallRng) -> RoleGrant {
    let n = rng.random_range(0..3);
    RoleGrant {
        org: pick(rng, &ORGS).into(),
        role: pick(rng, &ROLES).into(),
        resource: res_ref(rng),
        actions: (0..n).map(|_| pattern(rng)).collect(),
    }
}
fn rand_menu(rng: &mut SmallRng) -> Menu {
    Menu {
        platform: "web".into(),
        code: pick(rng, &["m0", "m1", "m2"]).into(),
        name: None,
        parent: maybe(rng, 0.5, |r| pick(r, &["m0", "m1", "m9"]).to_string()),
    }
}

/// Keeps the first item of each identity, as a valid document must.
fn dedup<T, K: std::hash::Hash + Eq>(items: Vec<T>, id: impl Fn(&T) -> K) -> Vec<T> {
    let mut seen = HashSet::new();
    items.into_iter().filter(|x| seen.insert(id(x))).collect()
}

fn rand_snapshot(rng: &mut SmallRng) -> Snapshot {
    let n = |rng: &mut SmallRng, max: usize| rng.random_range(0..=max);
    let c = n(rng, 6);
    let orgs = dedup((0..c).map(|_| rand_org(rng)).collect(), |o: &Org| o.key.clone());
    let c = n(rng, 4);
    let types = dedup((0..c).map(|_| rand_type(rng)).collect(), |t: &ResourceType| {
        t.key.clone()
    });
    let c = n(rng, 8);
    let roles = dedup((0..c).map(|_| rand_role(rng)).collect(), |r: &Role| {
        (r.org.clone(), r.key.clone())
    });
    let c = n(rng, 3);
    let users = dedup((0..c).map(|_| rand_user(rng)).collect(), |u: &User| u.key.clone());
    let c = n(rng, 12);
    let resources = dedup((0..c).map(|_| rand_resource(rng)).collect(), |r: &Resource| {
        (r.resource_type.clone(), r.key.clone())
    });
    let c = n(rng, 14);
    let assignments = dedup((0..c).map(|_| rand_assignment(rng)).collect(), |a: &RoleAssignment| {
        a.clone()
    });
    let c = n(rng, 6);
    let grants = dedup((0..c).map(|_| rand_grant(rng)).collect(), |g: &RoleGrant| {
        (g.org.clone(), g.role.clone(), g.resource.clone())
    });
    let c = n(rng, 3);
    let menus = dedup((0..c).map(|_| rand_menu(rng)).collect(), |m: &Menu| {
        (m.platform.clone(), m.code.clone())
    });
    let s = Snapshot {
        format: 1,
        version: rng.random_range(1..100),
        orgs,
        resource_types: types,
        roles,
        users,
        resources,
        role_assignments: assignments,
        role_grants: grants,
        menus,
    };
    validate(&s).expect("generated snapshot is valid");
    s
}

fn rand_op(rng: &mut SmallRng) -> Op {
    let upsert = rng.random_bool(0.6);
    match rng.random_range(0..8) {
        0 if upsert => Op::Upsert(Item::Org(rand_org(rng))),
        0 => Op::Delete(Identity::Org {
            key: pick(rng, &ORGS).into(),
        }),
        1 if upsert => Op::Upsert(Item::ResourceType(rand_type(rng))),
        1 => Op::Delete(Identity::ResourceType {
            key: pick(rng, &TYPES).into(),
        }),
        2 if upsert => Op::Upsert(Item::Role(rand_role(rng))),
        2 => Op::Delete(Identity::Role {
            key: pick(rng, &ROLES).into(),
            org: maybe(rng, 0.3, |r| pick(r, &ORGS).to_string()),
        }),
        3 if upsert => Op::Upsert(Item::User(rand_user(rng))),
        3 => Op::Delete(Identity::User {
            key: pick(rng, &USERS).into(),
        }),
        4 if upsert => Op::Upsert(Item::Resource(rand_resource(rng))),
        4 => Op::Delete(Identity::Resource {
            resource_type: pick(rng, &TYPES).into(),
            key: pick(rng, &KEYS).into(),
        }),
        5 if upsert => Op::Upsert(Item::RoleAssignment(rand_assignment(rng))),
        5 => Op::Delete(Identity::RoleAssignment(rand_assignment(rng))),
        6 if upsert => Op::Upsert(Item::RoleGrant(rand_grant(rng))),
        6 => {
            let g = rand_grant(rng);
            Op::Delete(Identity::RoleGrant {
                org: g.org,
                role: g.role,
                resource: g.resource,
            })
        }
        _ if upsert => Op::Upsert(Item::Menu(rand_menu(rng))),
        _ => Op::Delete(Identity::Menu {
            platform: "web".into(),
            code: pick(rng, &["m0", "m1", "m2"]).into(),
        }),
    }
}

fn rand_query<'a>(rng: &mut SmallRng) -> Query<'a> {
    let subject = if rng.random_bool(0.8) {
        Subject::User(pick(rng, &["u0", "u1", "u2", "u3", "nobody"]))
    } else {
        Subject::Role(pick(rng, &ROLES))
    };
    Query {
        subject,
        action: pick(rng, &ACTIONS),
        resource_type: pick(rng, &TYPES),
        resource_key: maybe(rng, 0.8, |r| pick(r, &KEYS)),
        org: maybe(rng, 0.5, |r| pick(r, &ORGS)),
        group_type: maybe(rng, 0.15, |r| pick(r, &TYPES[..3])),
    }
}

fn check_agrees(ix: &Index, s: &Snapshot, rng: &mut SmallRng, n: usize) -> Result<(), TestCaseError> {
    let naive = Naive { s };
    for _ in 0..n {
        let q = rand_query(rng);
        let d = ix.decide(&q);
        let want = naive.decide(&q);
        prop_assert_eq!((d.allow, d.reason.as_str()), want, "query {:?}\nsnapshot {:#?}", q, s);
        prop_assert_eq!(d.version, s.version);
        // The explanation never contradicts the decision.
        let e = ix.explain(&q, &d);
        prop_assert_eq!(e.reason, d.reason.as_str());
    }
    Ok(())
}

/// The document with lists sorted, so id order and document order compare equal where the
/// model does not fix an order.
fn normal(mut s: Snapshot) -> Snapshot {
    s.users.sort_by(|a, b| a.key.cmp(&b.key));
    s.resources
        .sort_by(|a, b| (&a.resource_type, &a.key).cmp(&(&b.resource_type, &b.key)));
    s.role_assignments.sort();
    s.role_grants
        .sort_by(|a, b| (&a.org, &a.role, &a.resource).cmp(&(&b.org, &b.role, &b.resource)));
    s
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn index_agrees_with_naive_model(seed in any::<u64>()) {
        let mut rng = SmallRng::seed_from_u64(seed);
        let s = rand_snapshot(&mut rng);
        let ix = Index::build(&s);
        check_agrees(&ix, &s, &mut rng, 400)?;
        prop_assert_eq!(normal(ix.to_snapshot()), normal(s.clone()));
    }

    #[test]
    fn batches_equal_rebuild(seed in any::<u64>()) {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut doc = rand_snapshot(&mut rng);
        let mut ix = Index::build(&doc);
        for _ in 0..rng.random_range(1..5) {
            let n = rng.random_range(0..12);
            let batch = DeltaBatch {
                from_version: doc.version,
                to_version: doc.version + rng.random_range(1..3),
                ops: (0..n).map(|_| rand_op(&mut rng)).collect(),
            };
            // Round-trip through the wire form, as the stream delivers it.
            let batch = DeltaBatch::from_json(&batch.to_json()).expect("batch decodes");
            let before = ix.clone();
            ix = ix.apply(&batch).expect("contiguous batch applies");
            doc.apply_ops(&batch.ops);
            doc.version = batch.to_version;
            // The old version is untouched by the apply.
            prop_assert_eq!(before.version(), batch.from_version);
            prop_assert_eq!(normal(ix.to_snapshot()), normal(doc.clone()));
            check_agrees(&ix, &doc, &mut rng, 200)?;
            let rebuilt = Index::build(&doc);
            for _ in 0..200 {
                let q = rand_query(&mut rng);
                let (a, b) = (ix.decide(&q), rebuilt.decide(&q));
                prop_assert_eq!((a.allow, a.reason, a.version), (b.allow, b.reason, b.version));
            }
            prop_assert_eq!(ix.counts(), rebuilt.counts());
            prop_assert_eq!(ix.ignored().len(), rebuilt.ignored().len());
        }
        // A batch that does not start at the active version is refused.
        let gap = DeltaBatch { from_version: ix.version() + 1, to_version: ix.version() + 2, ops: vec![] };
        prop_assert!(ix.apply(&gap).is_err());
    }
}
