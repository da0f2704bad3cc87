//! The index held against a naive, obviously-correct reading of model.md §2 that walks the
//! snapshot document directly with sets, on random snapshots and random delta batches; and
//! "snapshot, then batch" held equal to "the snapshot with the batch's ops applied".
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use permd::cond::RequestData;
use permd::index::{Index, Query, Subject};
use permd::model::{
    Attributes, DeltaBatch, Identity, Item, Menu, Op, Org, Permission, Resource, ResourceType, Role, RoleAssignment,
    RoleGrant, Rule, Snapshot, UrlMapping, User, validate,
};
use proptest::prelude::*;
use rand::rngs::SmallRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};

// ---------------------------------------------------------------------------------------
// The naive model: model.md §2 read literally over the document, with the conditions of §5.
//
// Conditions come from a fixed family whose meaning is written out here in Rust (the
// reference does not run CEL): each is `true` only as the comment says; a missing key, a
// value of another type or an error is never `true`.

const CONDS: [&str; 9] = [
    "resource.attributes.owner == user.key",
    "user.attributes.dept == resource.attributes.dept",
    "context.ip.startsWith('10.')",
    "resource.attributes.level > 2",
    "org.attributes.tier == 'gold'",
    "action == 'r'",
    "true",
    "1 / 0 == 0",
    "user.attributes.dept in ['a', 'b'] && has(resource.attributes.owner)",
];

/// What one condition sees: the merged attributes (stored win) and the rest.
struct Seen<'a> {
    user_key: &'a str,
    user: Attributes,
    resource: Attributes,
    org: Attributes,
    action: &'a str,
    context: Attributes,
}

fn merged(stored: Option<&Attributes>, request: Option<&Attributes>) -> Attributes {
    let mut out = request.cloned().unwrap_or_default();
    for (k, v) in stored.into_iter().flatten() {
        out.insert(k.clone(), v.clone());
    }
    out
}

fn holds(when: &str, v: &Seen<'_>) -> bool {
    let s = |m: &Attributes, k: &str| m.get(k).and_then(Value::as_str).map(str::to_owned);
    match CONDS.iter().position(|c| *c == when) {
        Some(0) => s(&v.resource, "owner").is_some_and(|o| o == v.user_key),
        Some(1) => match (v.user.get("dept"), v.resource.get("dept")) {
            // CEL equality: same type and value (`null == null` holds).
            (Some(a), Some(b)) => a == b,
            _ => false,
        },
        Some(2) => s(&v.context, "ip").is_some_and(|ip| ip.starts_with("10.")),
        Some(3) => v.resource.get("level").and_then(Value::as_i64).is_some_and(|l| l > 2),
        Some(4) => s(&v.org, "tier").is_some_and(|t| t == "gold"),
        Some(5) => v.action == "r",
        Some(6) => true,
        Some(7) => false,
        Some(8) => s(&v.user, "dept").is_some_and(|d| d == "a" || d == "b") && v.resource.contains_key("owner"),
        _ => panic!("condition outside the family: {when}"),
    }
}

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
    fn some_permits(&self, roles: &BTreeSet<(Option<String>, String)>, t: &str, a: &str, seen: &Seen<'_>) -> bool {
        roles.iter().filter_map(|r| self.role(r)).any(|r| {
            r.permissions
                .iter()
                .any(|p| Self::pattern_matches(p.as_str(), t, a) && p.when.as_deref().is_none_or(|w| holds(w, seen)))
        })
    }

    /// What conditions see for `q`, decided in org `o` at instance `x` (if any).
    fn seen<'q>(&self, q: &Query<'q>, o: &str, x: Option<&Resource>) -> Seen<'q> {
        let req = q.request;
        let (user_key, user) = match q.subject {
            Subject::User(u) => {
                let stored = self
                    .s
                    .users
                    .iter()
                    .find(|x| x.key == u)
                    .and_then(|x| x.attributes.as_ref());
                (u, merged(stored, req.and_then(|r| r.user.as_ref())))
            }
            Subject::Role(_) => ("", Attributes::new()),
        };
        Seen {
            user_key,
            user,
            resource: merged(
                x.and_then(|x| x.attributes.as_ref()),
                req.and_then(|r| r.resource.as_ref()),
            ),
            org: self
                .s
                .orgs
                .iter()
                .find(|x| x.key == o)
                .and_then(|x| x.attributes.clone())
                .unwrap_or_default(),
            action: q.action,
            context: req.and_then(|r| r.context.clone()).unwrap_or_default(),
        }
    }

    /// Step 6b: a rule of an org in `OrgAnc(o)` (or of every org) for (`t`, `a`) that holds.
    fn rule_allows(&self, q: &Query<'_>, o: &str, t: &str, a: &str, seen: &Seen<'_>) -> bool {
        if !matches!(q.subject, Subject::User(_)) {
            return false;
        }
        let anc = self.org_anc(o);
        self.s.rules.iter().any(|r| {
            r.org.as_ref().is_none_or(|ro| anc.contains(ro))
                && r.permissions.iter().any(|p| Self::pattern_matches(p, t, a))
                && holds(&r.when, seen)
        })
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
        let seen = self.seen(q, &o, x);
        let held = self.org_roles(&q.subject, &o);
        if self.some_permits(&self.expand(&held), t, a, &seen) {
            return (true, "org_role");
        }
        let Some(x) = x else {
            if self.rule_allows(q, &o, t, a, &seen) {
                return (true, "attribute_rule");
            }
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
                if self.some_permits(&self.expand(&BTreeSet::from([r])), t, a, &seen) {
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
            if g.when.as_deref().is_some_and(|w| !holds(w, &seen)) {
                continue;
            }
            let Some(r) = self.resolve(&g.org, &g.role) else {
                continue;
            };
            if self.expand(&self.org_roles(&q.subject, &g.org)).contains(&r) {
                return (true, "role_grant");
            }
        }
        if self.rule_allows(q, &o, t, a, &seen) {
            return (true, "attribute_rule");
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

fn rand_when(rng: &mut SmallRng) -> String {
    pick(rng, &CONDS).to_string()
}

fn rand_attr_value(rng: &mut SmallRng, key: &str) -> Value {
    match (key, rng.random_range(0..4)) {
        ("owner", 0) => json!(5),
        ("owner", _) => json!(pick(rng, &USERS)),
        ("dept", 0) => json!(1),
        ("dept", 1) => Value::Null,
        ("dept", _) => json!(pick(rng, &["a", "b", "c"])),
        ("level", 0) => json!("3"),
        ("level", _) => json!(rng.random_range(0..6)),
        ("tier", _) => json!(pick(rng, &["gold", "silver"])),
        ("ip", 0) => json!(7),
        ("ip", _) => json!(pick(rng, &["10.0.0.1", "192.168.1.1"])),
        _ => Value::Null,
    }
}

fn rand_attrs(rng: &mut SmallRng, keys: &[&str], p: f64) -> Option<Attributes> {
    maybe(rng, p, |rng| {
        let mut m = Attributes::new();
        for k in keys {
            if rng.random_bool(0.6) {
                m.insert(k.to_string(), rand_attr_value(rng, k));
            }
        }
        m
    })
}

fn rand_request(rng: &mut SmallRng) -> RequestData {
    RequestData {
        user: rand_attrs(rng, &["dept"], 0.5),
        resource: rand_attrs(rng, &["owner", "dept", "level"], 0.5),
        context: rand_attrs(rng, &["ip"], 0.5),
        now_unix_nanos: None,
    }
}

fn rand_rule(rng: &mut SmallRng) -> Rule {
    let n = rng.random_range(1..3);
    Rule {
        key: pick(rng, &["ru0", "ru1", "ru2"]).into(),
        permissions: (0..n).map(|_| pattern(rng)).collect(),
        when: rand_when(rng),
        org: maybe(rng, 0.4, |r| pick(r, &ORGS).to_string()),
        name: None,
        description: None,
    }
}

fn rand_org(rng: &mut SmallRng) -> Org {
    Org {
        key: pick(rng, &ORGS[..5]).into(),
        parent: maybe(rng, 0.6, |r| pick(r, &ORGS).to_string()),
        name: None,
        attributes: rand_attrs(rng, &["tier"], 0.5),
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
        id: None,
        attributes: None,
        key: pick(rng, &ROLES).into(),
        org: maybe(rng, 0.3, |r| pick(r, &ORGS).to_string()),
        permissions: (0..np)
            .map(|_| Permission {
                permission: pattern(rng),
                when: maybe(rng, 0.3, rand_when),
            })
            .collect(),
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
        attributes: rand_attrs(rng, &["dept"], 0.5),
    }
}
fn rand_resource(rng: &mut SmallRng) -> Resource {
    let np = rng.random_range(0..3);
    Resource {
        resource_type: pick(rng, &TYPES).into(),
        key: pick(rng, &KEYS).into(),
        org: pick(rng, &ORGS).into(),
        parents: (0..np).map(|_| res_ref(rng)).collect(),
        attributes: rand_attrs(rng, &["owner", "dept", "level"], 0.6),
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
        when: maybe(rng, 0.3, rand_when),
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

fn rand_url_mapping(rng: &mut SmallRng) -> UrlMapping {
    let regex = rng.random_bool(0.3);
    UrlMapping {
        method: pick(rng, &["GET", "PUT", "*"]).into(),
        url: if regex {
            pick(rng, &["^/a/(?P<id>[^/]+)$", "^/b$"]).into()
        } else {
            pick(rng, &["/a/{id}", "/a/b", "/{x}/c"]).into()
        },
        url_type: regex.then(|| "regex".into()),
        resource: pick(rng, &TYPES).into(),
        action: pick(rng, &ACTIONS).into(),
        priority: maybe(rng, 0.3, |r| r.random_range(0..3)),
    }
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
    let c = n(rng, 3);
    let rules = dedup((0..c).map(|_| rand_rule(rng)).collect(), |r: &Rule| r.key.clone());
    let c = n(rng, 3);
    let url_mappings = dedup((0..c).map(|_| rand_url_mapping(rng)).collect(), |m: &UrlMapping| {
        (m.method.clone(), m.url.clone())
    });
    let s = Snapshot {
        url_mappings,
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
        rules,
    };
    validate(&s).expect("generated snapshot is valid");
    s
}

fn rand_op(rng: &mut SmallRng) -> Op {
    let upsert = rng.random_bool(0.6);
    match rng.random_range(0..10) {
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
        7 if upsert => Op::Upsert(Item::Rule(rand_rule(rng))),
        7 => Op::Delete(Identity::Rule {
            key: pick(rng, &["ru0", "ru1", "ru2"]).into(),
        }),
        8 if upsert => Op::Upsert(Item::UrlMapping(rand_url_mapping(rng))),
        8 => {
            let m = rand_url_mapping(rng);
            Op::Delete(Identity::UrlMapping {
                method: m.method,
                url: m.url,
            })
        }
        _ if upsert => Op::Upsert(Item::Menu(rand_menu(rng))),
        _ => Op::Delete(Identity::Menu {
            platform: "web".into(),
            code: pick(rng, &["m0", "m1", "m2"]).into(),
        }),
    }
}

/// Request data for random queries: none, or one of a few made once per run.
fn requests(rng: &mut SmallRng) -> Vec<RequestData> {
    (0..6).map(|_| rand_request(rng)).collect()
}

fn with_request<'a>(q: Query<'a>, pool: &'a [RequestData], rng: &mut SmallRng) -> Query<'a> {
    Query {
        request: if rng.random_bool(0.5) { pool.choose(rng) } else { None },
        ..q
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
        request: None,
    }
}

fn check_agrees(ix: &Index, s: &Snapshot, rng: &mut SmallRng, n: usize) -> Result<(), TestCaseError> {
    let naive = Naive { s };
    let pool = requests(rng);
    for _ in 0..n {
        let q = rand_query(rng);
        let q = with_request(q, &pool, rng);
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

// The document with lists sorted, so id order and document order compare equal where the
// model does not fix an order: the fuzz targets' own.
use permd::fuzzing::normal;

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn index_agrees_with_naive_model(seed in any::<u64>()) {
        let mut rng = SmallRng::seed_from_u64(seed);
        let s = rand_snapshot(&mut rng);
        let ix = Index::build(&s);
        prop_assert_eq!(ix.span_violation(), None);
        check_agrees(&ix, &s, &mut rng, 400)?;
        prop_assert_eq!(normal(ix.to_snapshot()), normal(s.clone()));
        // The streamed MessagePack load (through a small window) builds the same index.
        let bytes = s.encode(permd::model::Encoding::MessagePack).expect("the document encodes");
        let streamed = match Index::from_msgpack_windowed(&bytes[..], 64).expect("reading a slice") {
            permd::index::Streamed::Built(ix) => *ix,
            permd::index::Streamed::Declined => panic!("the streamed load declined a valid document"),
        };
        prop_assert_eq!(streamed.to_snapshot(), ix.to_snapshot());
        prop_assert_eq!(streamed.span_violation(), None);
        check_agrees(&streamed, &s, &mut rng, 100)?;
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
            // Queries cache per-version data: warm it, so a stale cache after the batch shows.
            for subject in subjects() {
                for t in &TYPES[..3] {
                    for a in &ACTIONS[..3] {
                        let _ = ix.list_resources(subject, t, a, None);
                    }
                }
            }
            ix = ix.apply(&batch).expect("contiguous batch applies");
            doc.apply_ops(&batch.ops);
            doc.version = batch.to_version;
            // The old version is untouched by the apply.
            prop_assert_eq!(before.version(), batch.from_version);
            prop_assert_eq!(normal(ix.to_snapshot()), normal(doc.clone()));
            prop_assert_eq!(ix.span_violation(), None, "batch {:?}", batch);
            check_agrees(&ix, &doc, &mut rng, 200)?;
            let rebuilt = Index::build(&doc);
            for _ in 0..200 {
                let q = rand_query(&mut rng);
                let (a, b) = (ix.decide(&q), rebuilt.decide(&q));
                prop_assert_eq!((a.allow, a.reason, a.version), (b.allow, b.reason, b.version));
            }
            prop_assert_eq!(ix.counts(), rebuilt.counts());
            let keys = |x: &Index, b: roaring::RoaringBitmap| -> BTreeSet<(String, String)> {
                b.iter().map(|id| inst_key(x, id)).collect()
            };
            for subject in subjects() {
                for t in &TYPES[..3] {
                    for a in &ACTIONS[..3] {
                        prop_assert_eq!(
                            keys(&ix, ix.list_resources(subject, t, a, None)),
                            keys(&rebuilt, rebuilt.list_resources(subject, t, a, None))
                        );
                    }
                }
            }
            prop_assert_eq!(ix.ignored().len(), rebuilt.ignored().len());
        }
        // A batch that does not start at the active version is refused.
        let gap = DeltaBatch { from_version: ix.version() + 1, to_version: ix.version() + 2, ops: vec![] };
        prop_assert!(ix.apply(&gap).is_err());
    }
}

// ---------------------------------------------------------------------------------------
// model.md §3: every query against brute force over the naive §2 (all users, instances,
// actions), and paging that gives each element exactly once.

use permd::index::{AssignmentFilter, UserPermissionsFilter, decode_cursor, page_bitmap};

/// Group node → (acts, resources below).
type GroupsSeen = BTreeMap<(String, String), (Vec<String>, BTreeSet<String>)>;

const SUBJECT_USERS: [&str; 5] = ["u0", "u1", "u2", "u3", "nobody"];

fn subjects() -> Vec<Subject<'static>> {
    let mut v: Vec<Subject<'static>> = SUBJECT_USERS.iter().map(|u| Subject::User(u)).collect();
    v.extend(ROLES.iter().map(|r| Subject::Role(r)));
    v
}

fn orgs_or_none() -> Vec<Option<&'static str>> {
    std::iter::once(None).chain(ORGS.iter().map(|o| Some(*o))).collect()
}

/// Every page of `b` with pages of `limit`, concatenated; each page no longer than `limit`.
fn all_pages(b: &roaring::RoaringBitmap, limit: usize) -> Result<Vec<u32>, TestCaseError> {
    let mut out = Vec::new();
    let mut after = None;
    for _ in 0..10_000 {
        let (ids, next) = page_bitmap(b, after, limit);
        prop_assert!(ids.len() <= limit);
        out.extend(ids);
        match next {
            None => return Ok(out),
            Some(c) => after = Some(decode_cursor(&c, "cursor").unwrap()),
        }
    }
    Err(TestCaseError::fail("paging does not end"))
}

fn inst_key(ix: &Index, id: u32) -> (String, String) {
    let (t, k, _) = ix.instance_names(id).expect("a listed id is an instance");
    (t.to_string(), k.to_string())
}

fn check_queries(ix: &Index, s: &Snapshot, rng: &mut SmallRng) -> Result<(), TestCaseError> {
    let naive = Naive { s };
    let limit = rng.random_range(1..4);
    // Each query with no request data, and with some (model.md §5: conditions see it).
    let pool = requests(rng);
    let request = if rng.random_bool(0.5) { pool.first() } else { None };
    // List resources: set equality with every instance of the type, decided one by one.
    for subject in subjects() {
        for t in TYPES {
            for a in ACTIONS {
                for org in orgs_or_none() {
                    let got = ix.list_resources_with(subject, t, a, org, request);
                    let paged = all_pages(&got, limit)?;
                    prop_assert_eq!(paged.len() as u64, got.len(), "paging gives each id once");
                    prop_assert_eq!(paged.iter().copied().collect::<roaring::RoaringBitmap>(), got.clone());
                    let got: BTreeSet<(String, String)> = got.iter().map(|id| inst_key(ix, id)).collect();
                    let want: BTreeSet<(String, String)> = s
                        .resources
                        .iter()
                        .filter(|r| r.resource_type == t && naive.instance(t, &r.key).is_some())
                        .filter(|r| {
                            let q = Query {
                                subject,
                                action: a,
                                resource_type: t,
                                resource_key: Some(&r.key),
                                org,
                                group_type: None,
                                request,
                            };
                            naive.decide(&q).0
                        })
                        .map(|r| (r.resource_type.clone(), r.key.clone()))
                        .collect();
                    prop_assert_eq!(got, want, "list_resources {:?} {} {} {:?}", subject, t, a, org);
                }
            }
        }
    }
    // Authorized users and allowed actions, for every key (and none) of every type. The users
    // a listing can name are those the document knows (a user item or an assignment): a rule
    // may allow any key, and only known ones can be listed.
    let mut users: BTreeSet<&str> = s.users.iter().map(|u| u.key.as_str()).collect();
    users.extend(s.role_assignments.iter().map(|a| a.user.as_str()));
    for t in TYPES {
        for k in std::iter::once(None).chain(KEYS.iter().map(|k| Some(*k))) {
            for org in orgs_or_none() {
                for a in ACTIONS {
                    let got: BTreeSet<String> = ix
                        .authorized_users_with(a, t, k, org, request)
                        .iter()
                        .map(|u| ix.user_key(u).to_string())
                        .collect();
                    let want: BTreeSet<String> = users
                        .iter()
                        .filter(|u| {
                            let q = Query {
                                subject: Subject::User(u),
                                action: a,
                                resource_type: t,
                                resource_key: k,
                                org,
                                group_type: None,
                                request,
                            };
                            naive.decide(&q).0
                        })
                        .map(|u| u.to_string())
                        .collect();
                    prop_assert_eq!(got, want, "authorized_users {} {} {:?} {:?}", a, t, k, org);
                }
                let subject = Subject::User(pick(rng, &SUBJECT_USERS));
                let q = Query {
                    subject,
                    action: "",
                    resource_type: t,
                    resource_key: k,
                    org,
                    group_type: None,
                    request: None,
                };
                let got: Vec<&str> = ix.allowed_actions(&q);
                let mut want: Vec<&str> = Vec::new();
                for a in naive.type_actions(t).map(|v| v.as_slice()).unwrap_or(&[]) {
                    if !want.contains(&a.as_str()) && naive.decide(&Query { action: a, ..q }).0 {
                        want.push(a);
                    }
                }
                prop_assert_eq!(got, want);
            }
        }
    }
    // Roles for user, users for role (direct and effective).
    for o in ORGS {
        let known = naive.org_known(o);
        for u in users.iter().copied() {
            let direct: BTreeSet<String> = s
                .role_assignments
                .iter()
                .filter(|a| a.user == u && a.org == o && a.resource.is_none() && known)
                .filter(|a| naive.resolve(o, &a.role).is_some())
                .map(|a| a.role.clone())
                .collect();
            prop_assert_eq!(ix.roles_for_user(u, o, false), direct.into_iter().collect::<Vec<_>>());
            let eff: BTreeSet<String> = if known {
                naive
                    .expand(&naive.org_roles(&Subject::User(u), o))
                    .into_iter()
                    .map(|r| r.1)
                    .collect()
            } else {
                BTreeSet::new()
            };
            prop_assert_eq!(ix.roles_for_user(u, o, true), eff.into_iter().collect::<Vec<_>>());
        }
        for r in ROLES {
            let resolved = if known { naive.resolve(o, r) } else { None };
            for effective in [false, true] {
                let got = ix.users_for_role(Some(r), o, effective);
                let Some(role) = resolved.clone() else {
                    prop_assert!(got.is_err(), "role {} in {} does not resolve", r, o);
                    continue;
                };
                let got: BTreeSet<String> = got.unwrap().iter().map(|u| ix.user_key(u).to_string()).collect();
                let want: BTreeSet<String> = users
                    .iter()
                    .filter(|u| {
                        if effective {
                            naive.expand(&naive.org_roles(&Subject::User(u), o)).contains(&role)
                        } else {
                            s.role_assignments
                                .iter()
                                .any(|a| a.user == **u && a.org == o && a.resource.is_none() && a.role == r)
                        }
                    })
                    .map(|u| u.to_string())
                    .collect();
                prop_assert_eq!(got, want, "users_for_role {} {} effective={}", r, o, effective);
            }
        }
    }
    // Menus: the codes of the subject's expanded roles and their ancestors, each once.
    for subject in subjects() {
        for o in ORGS {
            let tree = ix.menus(Some(subject), o, Some("web"));
            let mut flat = Vec::new();
            fn walk(n: &[permd::index::MenuNode], out: &mut Vec<String>) {
                for m in n {
                    out.push(m.code.clone());
                    walk(&m.children, out);
                }
            }
            walk(&tree, &mut flat);
            let got: BTreeSet<String> = flat.iter().cloned().collect();
            prop_assert_eq!(got.len(), flat.len(), "a menu item appears once");
            let mut want = BTreeSet::new();
            if naive.org_known(o) {
                let roles = naive.expand(&naive.org_roles(&subject, o));
                let codes: BTreeSet<&String> = roles
                    .iter()
                    .filter_map(|r| naive.role(r))
                    .flat_map(|r| r.menus.iter())
                    .collect();
                for m in s.menus.iter().filter(|m| codes.contains(&m.code)) {
                    let mut cur = Some(m);
                    while let Some(c) = cur {
                        if !want.insert(c.code.clone()) {
                            break;
                        }
                        cur = c.parent.as_ref().and_then(|p| s.menus.iter().find(|x| &x.code == p));
                    }
                }
            }
            prop_assert_eq!(got, want, "menus {:?} {}", subject, o);
        }
    }
    // Groups: containing instances where the node check allows, with their actions and the
    // allowed instances of the type directly below them.
    for subject in subjects().into_iter().take(3) {
        for o in ORGS {
            for t in &TYPES[..3] {
                let a = pick(rng, &ACTIONS[..3]);
                let (tree, truncated) = ix.groups(Some(subject), t, a, o);
                prop_assert!(!truncated);
                let mut got = BTreeMap::new();
                fn walk_g(n: &[permd::index::GroupNode], out: &mut GroupsSeen) {
                    for g in n {
                        out.insert(
                            (g.group_type.clone(), g.group_id.clone()),
                            (g.acts.clone(), g.resources.iter().cloned().collect()),
                        );
                        walk_g(&g.children, out);
                    }
                }
                walk_g(&tree, &mut got);
                let mut want = BTreeMap::new();
                if naive.org_known(o) {
                    let in_org: Vec<&Resource> = s
                        .resources
                        .iter()
                        .filter(|r| r.org == o && naive.instance(&r.resource_type, &r.key).is_some())
                        .collect();
                    for n in &in_org {
                        let name = format!("{}:{}", n.resource_type, n.key);
                        let below: Vec<&&Resource> = in_org.iter().filter(|c| c.parents.contains(&name)).collect();
                        if below.is_empty() {
                            continue;
                        }
                        let node_q = |a: &'static str| Query {
                            subject,
                            action: a,
                            resource_type: t,
                            resource_key: Some(&n.key),
                            org: Some(o),
                            group_type: Some(&n.resource_type),
                            request: None,
                        };
                        if !naive.decide(&node_q(a)).0 {
                            continue;
                        }
                        let mut acts: Vec<String> = Vec::new();
                        for x in naive.type_actions(t).map(|v| v.as_slice()).unwrap_or(&[]) {
                            let x: &'static str = ACTIONS.iter().find(|y| **y == x).copied().unwrap_or("zz");
                            if !acts.iter().any(|y| y == x) && naive.decide(&node_q(x)).0 {
                                acts.push(x.to_string());
                            }
                        }
                        let res: BTreeSet<String> = below
                            .iter()
                            .filter(|c| c.resource_type == *t)
                            .filter(|c| {
                                naive
                                    .decide(&Query {
                                        subject,
                                        action: a,
                                        resource_type: t,
                                        resource_key: Some(&c.key),
                                        org: Some(o),
                                        group_type: None,
                                        request: None,
                                    })
                                    .0
                            })
                            .map(|c| c.key.clone())
                            .collect();
                        want.insert((n.resource_type.clone(), n.key.clone()), (acts, res));
                    }
                }
                prop_assert_eq!(got, want, "groups {:?} {} {} {}", subject, t, a, o);
            }
        }
    }
    // User permissions: type-level entries per org, instance entries where an instance allows
    // more than its org's type level; paged with a small limit.
    for u in users.iter().copied() {
        let f = UserPermissionsFilter::default();
        let first = ix.user_permissions(u, &f, None, limit);
        let mut inst = first.instances.clone();
        let mut next = first.next_cursor.clone();
        let mut pages = 0;
        while let Some(c) = next {
            let page = ix.user_permissions(u, &f, Some(decode_cursor(&c, "cursor").unwrap()), limit);
            prop_assert!(page.instances.len() <= limit);
            inst.extend(page.instances);
            next = page.next_cursor;
            pages += 1;
            prop_assert!(pages < 1000);
        }
        let got_t: BTreeMap<String, Vec<String>> = first
            .tenants
            .iter()
            .map(|e| (e.org.clone(), e.permissions.clone()))
            .collect();
        let got_i: Vec<((String, String), Vec<String>)> = inst
            .iter()
            .map(|e| (e.resource.clone().unwrap(), e.permissions.clone()))
            .collect();
        let mut want_t = BTreeMap::new();
        let perms_of = |org: &str, key: Option<&str>, only: Option<&str>| -> Vec<String> {
            let mut v = Vec::new();
            for rt in &s.resource_types {
                if only.is_some_and(|t| t != rt.key) {
                    continue;
                }
                let mut seen: Vec<&str> = Vec::new();
                for a in &rt.actions {
                    if seen.contains(&a.as_str()) {
                        continue;
                    }
                    seen.push(a);
                    let q = Query {
                        subject: Subject::User(u),
                        action: a,
                        resource_type: &rt.key,
                        resource_key: key,
                        org: Some(org),
                        group_type: None,
                        request: None,
                    };
                    if naive.decide(&q).0 {
                        v.push(format!("{}:{a}", rt.key));
                    }
                }
            }
            v
        };
        for o in &s.orgs {
            let v = perms_of(&o.key, None, None);
            if !v.is_empty() {
                want_t.insert(o.key.clone(), v);
            }
        }
        prop_assert_eq!(got_t, want_t.clone());
        let mut want_i = BTreeMap::new();
        for r in &s.resources {
            if naive.instance(&r.resource_type, &r.key).is_none() {
                continue;
            }
            let on = perms_of(&r.org, Some(&r.key), Some(&r.resource_type));
            let level = want_t.get(&r.org).cloned().unwrap_or_default();
            if on.iter().any(|p| !level.contains(p)) {
                want_i.insert((r.resource_type.clone(), r.key.clone()), on);
            }
        }
        let got_keys: BTreeSet<_> = got_i.iter().map(|x| x.0.clone()).collect();
        prop_assert_eq!(got_keys.len(), got_i.len(), "paging gives each instance once");
        prop_assert_eq!(got_i.into_iter().collect::<BTreeMap<_, _>>(), want_i);
    }
    // Role assignments: filters and page/per_page against filtering the document.
    let f = AssignmentFilter {
        users: maybe(rng, 0.5, |r| vec![pick(r, &USERS).to_string()]).unwrap_or_default(),
        roles: maybe(rng, 0.3, |r| {
            vec![pick(r, &ROLES).to_string(), pick(r, &ROLES).to_string()]
        })
        .unwrap_or_default(),
        tenants: maybe(rng, 0.3, |r| vec![pick(r, &ORGS).to_string()]).unwrap_or_default(),
        resources: maybe(rng, 0.2, |r| vec![pick(r, &TYPES).to_string()]).unwrap_or_default(),
        resource_instances: maybe(rng, 0.2, res_ref).into_iter().collect(),
    };
    let mut got = Vec::new();
    for page in 0..1000 {
        let (rows, more) = ix.role_assignments(&f, page * limit, limit);
        prop_assert!(rows.len() <= limit);
        got.extend(
            rows.into_iter()
                .map(|r| (r.user, r.role, r.tenant, r.resource_instance)),
        );
        if !more {
            break;
        }
    }
    let ok = |list: &[String], v: &str| list.is_empty() || list.iter().any(|x| x == v);
    let mut want: Vec<_> = s
        .role_assignments
        .iter()
        .filter(|a| ok(&f.users, &a.user) && ok(&f.roles, &a.role) && ok(&f.tenants, &a.org))
        .filter(|a| match &a.resource {
            None => f.resources.is_empty() && f.resource_instances.is_empty(),
            Some(r) => ok(&f.resources, r.split_once(':').map_or("", |x| x.0)) && ok(&f.resource_instances, r),
        })
        .map(|a| (a.user.clone(), a.role.clone(), a.org.clone(), a.resource.clone()))
        .collect();
    got.sort();
    want.sort();
    prop_assert_eq!(got, want);
    Ok(())
}

/// More grants and org-wide assignments that line up with the resources' orgs, so steps 5
/// and 6 (the ones the bitmaps cannot answer alone) are hit often.
fn enrich(s: &mut Snapshot, rng: &mut SmallRng) {
    let targets: Vec<(String, String)> = s
        .resources
        .iter()
        .map(|r| (format!("{}:{}", r.resource_type, r.key), r.org.clone()))
        .collect();
    for _ in 0..rng.random_range(0..6) {
        let Some((res, org)) = targets.choose(rng).cloned() else {
            break;
        };
        let n = rng.random_range(1..3);
        s.role_grants.push(RoleGrant {
            org: org.clone(),
            role: pick(rng, &ROLES).into(),
            resource: res.clone(),
            actions: (0..n).map(|_| pattern(rng)).collect(),
            when: None,
        });
        s.role_assignments.push(RoleAssignment {
            user: pick(rng, &USERS).into(),
            role: pick(rng, &ROLES).into(),
            org: if rng.random_bool(0.7) {
                org
            } else {
                pick(rng, &ORGS).into()
            },
            resource: maybe(rng, 0.3, |_| res),
        });
    }
    // Children in their parent's org, so trees below assignments and grants are common.
    for i in 0..rng.random_range(0..5) {
        let Some((parent, org)) = targets.choose(rng).cloned() else {
            break;
        };
        let t = pick(rng, &TYPES[..3]);
        s.resources.push(Resource {
            resource_type: t.into(),
            key: format!("c{i}"),
            org: org.clone(),
            parents: vec![parent.clone()],
            attributes: None,
        });
        if rng.random_bool(0.5) {
            s.resources.push(Resource {
                resource_type: t.into(),
                key: format!("g{i}"),
                org,
                parents: vec![format!("{t}:c{i}")],
                attributes: None,
            });
        }
    }
    s.resources = dedup(std::mem::take(&mut s.resources), |r: &Resource| {
        (r.resource_type.clone(), r.key.clone())
    });
    s.role_grants = dedup(std::mem::take(&mut s.role_grants), |g: &RoleGrant| {
        (g.org.clone(), g.role.clone(), g.resource.clone())
    });
    s.role_assignments = dedup(std::mem::take(&mut s.role_assignments), |a: &RoleAssignment| a.clone());
    validate(s).expect("enriched snapshot is valid");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn queries_agree_with_brute_force(seed in any::<u64>()) {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut s = rand_snapshot(&mut rng);
        enrich(&mut s, &mut rng);
        let ix = Index::build(&s);
        check_queries(&ix, &s, &mut rng)?;
    }
}

// ---------------------------------------------------------------------------------------
// Trees that move: a forest of folders in one org with instance roles on some of them,
// batches that re-parent, add, delete and re-create folders (one parent, none, two, or a
// cycle), and every (user, folder) check after each batch held to the naive model. The
// snapshots above are too small and too flat for step 5 through deep, moving trees.

const TREE_NODES: usize = 24;

fn tree_folder(rng: &mut SmallRng, key: usize) -> Resource {
    let parent = |rng: &mut SmallRng| format!("folder:n{}", rng.random_range(0..TREE_NODES));
    let parents = match rng.random_range(0..10) {
        0..2 => vec![],
        2..9 => vec![parent(rng)],
        _ => vec![parent(rng), parent(rng)],
    };
    Resource {
        resource_type: "folder".into(),
        key: format!("n{key}"),
        org: "t".into(),
        parents,
        attributes: None,
    }
}

fn tree_snapshot(rng: &mut SmallRng) -> Snapshot {
    let mut s = Snapshot {
        format: 1,
        version: 1,
        orgs: vec![Org {
            key: "t".into(),
            parent: None,
            name: None,
            attributes: None,
        }],
        resource_types: vec![ResourceType {
            key: "folder".into(),
            actions: vec!["read".into()],
            name: None,
            description: None,
        }],
        roles: vec![Role {
            id: None,
            attributes: None,
            key: "viewer".into(),
            org: None,
            permissions: vec!["folder:read".into()],
            extends: vec![],
            menus: vec![],
            name: None,
            description: None,
        }],
        ..Snapshot::default()
    };
    // Mostly a chain-shaped forest: each folder under an earlier one, deep enough to matter.
    for i in 0..TREE_NODES {
        let mut r = tree_folder(rng, i);
        if i > 0 && rng.random_bool(0.8) {
            r.parents = vec![format!("folder:n{}", rng.random_range(i.saturating_sub(3)..i))];
        }
        s.resources.push(r);
    }
    s.resources.retain(|_| rng.random_bool(0.9));
    for u in 0..4 {
        for _ in 0..rng.random_range(1..4) {
            s.role_assignments.push(RoleAssignment {
                user: format!("u{u}"),
                role: "viewer".into(),
                org: "t".into(),
                resource: Some(format!("folder:n{}", rng.random_range(0..TREE_NODES))),
            });
        }
    }
    s.role_assignments = dedup(std::mem::take(&mut s.role_assignments), |a: &RoleAssignment| a.clone());
    validate(&s).expect("tree snapshot is valid");
    s
}

fn tree_op(rng: &mut SmallRng) -> Op {
    let key = rng.random_range(0..TREE_NODES);
    match rng.random_range(0..10) {
        0 => Op::Delete(Identity::Resource {
            resource_type: "folder".into(),
            key: format!("n{key}"),
        }),
        1 => Op::Upsert(Item::RoleAssignment(RoleAssignment {
            user: format!("u{}", rng.random_range(0..4)),
            role: "viewer".into(),
            org: "t".into(),
            resource: Some(format!("folder:n{}", rng.random_range(0..TREE_NODES))),
        })),
        _ => Op::Upsert(Item::Resource(tree_folder(rng, key))),
    }
}

fn check_tree(ix: &Index, s: &Snapshot) -> Result<(), TestCaseError> {
    prop_assert_eq!(ix.span_violation(), None);
    let naive = Naive { s };
    for u in 0..5 {
        let user = format!("u{u}");
        for k in 0..TREE_NODES {
            let key = format!("n{k}");
            let q = Query {
                subject: Subject::User(&user),
                action: "read",
                resource_type: "folder",
                resource_key: Some(&key),
                org: None,
                group_type: None,
                request: None,
            };
            let d = ix.decide(&q);
            prop_assert_eq!((d.allow, d.reason.as_str()), naive.decide(&q), "{:?}", q);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn moving_trees_keep_decisions(seed in any::<u64>()) {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut doc = tree_snapshot(&mut rng);
        let mut ix = Index::build(&doc);
        check_tree(&ix, &doc)?;
        for _ in 0..rng.random_range(1..8) {
            let batch = DeltaBatch {
                from_version: doc.version,
                to_version: doc.version + 1,
                ops: (0..rng.random_range(1..4)).map(|_| tree_op(&mut rng)).collect(),
            };
            ix = ix.apply(&batch).expect("contiguous batch applies");
            doc.apply_ops(&batch.ops);
            doc.version = batch.to_version;
            check_tree(&ix, &doc)?;
        }
    }
}

// ---------------------------------------------------------------------------------------
// The index image (the cache's warm start): written after random batches and read back, it
// holds the same document and answers the same decisions and queries, and the same batch on
// both gives the same next version; cut short it is refused, damaged it is refused or reads
// as an index that answers, never a panic.

/// Decisions, queries and a batch on an index read from a damaged image: they must not panic.
fn use_freely(ix: &Index, rng: &mut SmallRng) {
    let _ = ix.to_snapshot();
    let _ = ix.ignored();
    for _ in 0..50 {
        let q = rand_query(rng);
        let d = ix.decide(&q);
        let _ = ix.explain(&q, &d);
    }
    for subject in subjects() {
        let _ = ix.list_resources(subject, TYPES[0], ACTIONS[0], None);
    }
    let batch = DeltaBatch {
        from_version: ix.version(),
        to_version: ix.version() + 1,
        ops: (0..8).map(|_| rand_op(rng)).collect(),
    };
    if let Ok(next) = ix.apply(&batch) {
        for _ in 0..20 {
            let _ = next.decide(&rand_query(rng));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn an_image_reads_back_as_the_same_index(seed in any::<u64>()) {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut doc = rand_snapshot(&mut rng);
        enrich(&mut doc, &mut rng);
        let mut ix = Index::build(&doc);
        // Batches first, so the image holds what deltas leave behind (names and keys added
        // after the build, moved resources, emptied records).
        for _ in 0..rng.random_range(0..4) {
            let batch = DeltaBatch {
                from_version: doc.version,
                to_version: doc.version + 1,
                ops: (0..rng.random_range(0..12)).map(|_| rand_op(&mut rng)).collect(),
            };
            ix = ix.apply(&batch).expect("contiguous batch applies");
            doc.apply_ops(&batch.ops);
            doc.version = batch.to_version;
        }
        let mut bytes = Vec::new();
        ix.write_image(&mut bytes).expect("the image is written");
        let back = Index::read_image(&bytes).expect("the image reads back");
        prop_assert_eq!(back.to_snapshot(), ix.to_snapshot());
        prop_assert_eq!(back.counts(), ix.counts());
        prop_assert_eq!(back.span_violation(), None);
        prop_assert_eq!(back.ignored().len(), ix.ignored().len());
        check_agrees(&back, &doc, &mut rng, 200)?;
        check_queries(&back, &doc, &mut rng)?;
        for _ in 0..200 {
            let q = rand_query(&mut rng);
            let (a, b) = (ix.decide(&q), back.decide(&q));
            prop_assert_eq!((a.allow, a.reason, a.version), (b.allow, b.reason, b.version));
        }
        let mut again = Vec::new();
        back.write_image(&mut again).expect("the image is written");
        prop_assert!(again == bytes, "the loaded index writes the same image");

        // The same batch on both.
        let batch = DeltaBatch {
            from_version: doc.version,
            to_version: doc.version + 1,
            ops: (0..rng.random_range(1..12)).map(|_| rand_op(&mut rng)).collect(),
        };
        let (a, b) = (ix.apply(&batch).expect("applies"), back.apply(&batch).expect("applies"));
        prop_assert_eq!(b.to_snapshot(), a.to_snapshot());
        prop_assert_eq!(b.counts(), a.counts());
        prop_assert_eq!(b.span_violation(), None);
        doc.apply_ops(&batch.ops);
        doc.version = batch.to_version;
        check_agrees(&b, &doc, &mut rng, 100)?;
        for subject in subjects() {
            for t in &TYPES[..3] {
                for act in &ACTIONS[..3] {
                    prop_assert_eq!(
                        a.list_resources(subject, t, act, None).len(),
                        b.list_resources(subject, t, act, None).len()
                    );
                }
            }
        }

        // Cut short anywhere: refused. Damaged: refused, or an index that answers.
        for _ in 0..30 {
            let cut = rng.random_range(0..bytes.len());
            prop_assert!(Index::read_image(&bytes[..cut]).is_err(), "cut at {}", cut);
        }
        for _ in 0..30 {
            let mut damaged = bytes.clone();
            let at = rng.random_range(0..damaged.len());
            damaged[at] ^= rng.random_range(1..=255u8);
            if let Ok(other) = Index::read_image(&damaged) {
                use_freely(&other, &mut rng);
            }
        }
    }
}
