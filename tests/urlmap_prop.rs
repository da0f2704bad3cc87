//! URL mapping rules (model.md §6), property-tested against a reference written from the spec
//! alone: random template and regex rules (priorities, overlapping rules, variables) and random
//! requests (percent-encoding, trailing slashes, query strings). For each request the index
//! picks the rule the reference picks, with the same key and attributes, and the decision
//! `/allowed_url` gives (`decide_url`) is the one `/allowed` gives on the mapped check. Also:
//! `url_mapping` deltas give the index the document with the ops applied gives.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use permd::api::proxy::{NO_URL_MAPPING, decide_url};
use permd::index::{Index, Query, Subject};
use permd::model::{DeltaBatch, Encoding, Snapshot, UrlMapping};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

#[derive(Debug, Clone)]
enum Seg {
    Lit(&'static str),
    Var,
}

#[derive(Debug, Clone)]
struct GenRule {
    method: &'static str,
    segs: Vec<Seg>,
    /// The first variable is `id` (the key), the others `v{position}`.
    id_first: bool,
    regex: bool,
    priority: Option<i64>,
    resource: &'static str,
    action: &'static str,
}

fn var_names(r: &GenRule) -> Vec<Option<String>> {
    let mut first = true;
    r.segs
        .iter()
        .enumerate()
        .map(|(i, s)| match s {
            Seg::Lit(_) => None,
            Seg::Var => {
                let name = if first && r.id_first {
                    "id".to_owned()
                } else {
                    format!("v{i}")
                };
                first = false;
                Some(name)
            }
        })
        .collect()
}

impl GenRule {
    fn url(&self) -> String {
        let names = var_names(self);
        let parts: Vec<String> = self
            .segs
            .iter()
            .zip(&names)
            .map(|(s, n)| match (s, n, self.regex) {
                (Seg::Lit(l), _, _) => (*l).to_owned(),
                (Seg::Var, Some(n), false) => format!("{{{n}}}"),
                (Seg::Var, Some(n), true) => format!("(?P<{n}>[^/]+)"),
                (Seg::Var, None, _) => unreachable!(),
            })
            .collect();
        let path = format!("/{}", parts.join("/"));
        if self.regex { format!("^{path}$") } else { path }
    }

    fn mapping(&self) -> UrlMapping {
        UrlMapping {
            method: self.method.into(),
            url: self.url(),
            url_type: self.regex.then(|| "regex".into()),
            resource: self.resource.into(),
            action: self.action.into(),
            priority: self.priority,
        }
    }

    /// The literal prefix of §6's tie-break, from the rule's own text.
    fn prefix(&self) -> usize {
        let url = self.url();
        if self.regex {
            let body = &url[1..];
            body.find(['(', '$']).unwrap_or(body.len())
        } else {
            url.find('{').unwrap_or(url.len())
        }
    }
}

fn decode(s: &str, plus: bool) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(if plus && b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `r` matches the raw path, and its path variables (decoded).
fn reference_match(r: &GenRule, method: &str, raw_path: &str) -> Option<Map<String, Value>> {
    if r.method != "*" && r.method != method {
        return None;
    }
    let names = var_names(r);
    let mut segs: Vec<&str> = raw_path[1..].split('/').collect();
    if !r.regex {
        // One trailing slash is insignificant for templates ("/" alone has no segments).
        if segs.last() == Some(&"") {
            segs.pop();
        }
    } else if raw_path == "/" {
        segs.clear();
    }
    if segs.len() != r.segs.len() {
        return None;
    }
    let mut vars = Map::new();
    for ((want, name), got) in r.segs.iter().zip(&names).zip(&segs) {
        match want {
            // A template compares decoded text; a regex the text as sent.
            Seg::Lit(l) if !r.regex && decode(got, false) == *l => {}
            Seg::Lit(l) if r.regex && got == l => {}
            Seg::Lit(_) => return None,
            Seg::Var if got.is_empty() => return None,
            Seg::Var => {
                let v = decode(got, false);
                if !r.regex && v.is_empty() {
                    return None;
                }
                vars.insert(name.clone().unwrap(), json!(v));
            }
        }
    }
    Some(vars)
}

fn request_strategy() -> impl Strategy<Value = (String, String)> {
    let seg = prop::sample::select(vec!["a", "b", "c", "1", "x%2Fy", "%61", "docs"]);
    let query = prop::sample::select(vec!["", "?", "?id=q", "?k=v&id=z", "?x=%20+y", "?a=1&a=2"]);
    (
        prop::sample::select(vec!["GET", "PUT", "POST"]),
        prop::collection::vec(seg, 0..4),
        any::<bool>(),
        query,
    )
        .prop_map(|(m, segs, slash, q)| {
            let mut path = format!("/{}", segs.join("/"));
            if slash && !segs.is_empty() {
                path.push('/');
            }
            (m.to_owned(), format!("{path}{q}"))
        })
}

fn rule_strategy() -> impl Strategy<Value = GenRule> {
    let seg = prop_oneof![
        3 => prop::sample::select(vec!["a", "b", "docs"]).prop_map(Seg::Lit),
        2 => Just(Seg::Var),
    ];
    (
        prop::sample::select(vec!["GET", "PUT", "*"]),
        prop::collection::vec(seg, 0..4),
        any::<bool>(),
        prop::bool::weighted(0.3),
        prop::option::of(0i64..3),
        prop::sample::select(vec![("document", "read"), ("document", "write"), ("folder", "read")]),
    )
        .prop_map(
            |(method, segs, id_first, regex, priority, (resource, action))| GenRule {
                method,
                segs,
                id_first,
                regex,
                priority,
                resource,
                action,
            },
        )
}

fn example() -> Snapshot {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/example-snapshot.yaml")).unwrap();
    Snapshot::load(text.as_bytes(), Encoding::Yaml).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn index_picks_the_reference_rule_and_allowed_url_equals_allowed(
        rules in prop::collection::vec(rule_strategy(), 0..8),
        requests in prop::collection::vec(request_strategy(), 1..12),
        user in prop::sample::select(vec!["alice", "bob", "root"]),
        tenant in prop::option::of(prop::sample::select(vec!["acme", "globex"])),
    ) {
        // One rule per identity (method, url), as validation requires.
        let mut unique: Vec<GenRule> = Vec::new();
        for r in rules {
            if !unique.iter().any(|u| u.method == r.method && u.url() == r.url()) {
                unique.push(r);
            }
        }
        let mut doc = example();
        doc.url_mappings = unique.iter().map(GenRule::mapping).collect();
        permd::model::validate(&doc).unwrap();
        let ix = Index::build(&doc);
        for (method, target) in &requests {
            let (raw_path, query) = target.split_once('?').unwrap_or((target, ""));
            // The reference: every matching rule, the best by (priority, prefix, document order).
            let best = unique
                .iter()
                .enumerate()
                .filter_map(|(i, r)| reference_match(r, method, raw_path).map(|v| (i, r, v)))
                .max_by(|(i, a, _), (j, b, _)| {
                    (a.priority.unwrap_or(0), a.prefix(), std::cmp::Reverse(*i))
                        .cmp(&(b.priority.unwrap_or(0), b.prefix(), std::cmp::Reverse(*j)))
                });
            let got = ix.map_url(method, target);
            let d = decide_url(&ix, method, target, user, tenant);
            match best {
                None => {
                    prop_assert!(got.is_none(), "{method} {target}: matched {:?}", got.map(|g| g.rule));
                    prop_assert_eq!((d.allow, d.reason), (false, NO_URL_MAPPING));
                }
                Some((i, r, mut vars)) => {
                    let got = got.unwrap_or_else(|| panic!("{method} {target}: rule {i} ({}) should match", r.url()));
                    prop_assert_eq!(got.rule, i, "{} {}", method, target);
                    for kv in query.split('&').filter(|kv| !kv.is_empty()) {
                        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                        vars.entry(decode(k, true)).or_insert(json!(decode(v, true)));
                    }
                    let key = vars.get("id").and_then(Value::as_str).map(str::to_owned);
                    prop_assert_eq!(&got.attributes, &vars, "{} {}", method, target);
                    prop_assert_eq!(&got.key, &key);
                    prop_assert_eq!((got.resource_type, got.action), (r.resource, r.action));
                    // `/allowed` on the mapped check, the variables as resource attributes.
                    let data = permd::cond::RequestData {
                        resource: (!vars.is_empty()).then(|| vars.clone()),
                        ..Default::default()
                    };
                    let direct = ix.decide(&Query {
                        subject: Subject::User(user),
                        action: r.action,
                        resource_type: r.resource,
                        resource_key: key.as_deref(),
                        org: tenant,
                        group_type: None,
                        request: Some(&data),
                    });
                    prop_assert_eq!((d.allow, d.reason, d.version), (direct.allow, direct.reason.as_str(), direct.version));
                    let check = d.check.unwrap();
                    prop_assert_eq!((check.resource_type.as_str(), check.key, check.action.as_str()), (r.resource, key, r.action));
                }
            }
        }
    }

    #[test]
    fn url_mapping_deltas_equal_the_applied_document(
        before in prop::collection::vec(rule_strategy(), 0..5),
        upserts in prop::collection::vec(rule_strategy(), 0..4),
        deletes in prop::collection::vec(0usize..5, 0..3),
    ) {
        let dedup = |rules: Vec<GenRule>| {
            let mut out: Vec<GenRule> = Vec::new();
            for r in rules {
                if !out.iter().any(|u| u.method == r.method && u.url() == r.url()) {
                    out.push(r);
                }
            }
            out
        };
        let before = dedup(before);
        let mut doc = example();
        doc.url_mappings = before.iter().map(GenRule::mapping).collect();
        let mut ops: Vec<Value> = upserts
            .iter()
            .map(|r| json!({"op": "upsert", "kind": "url_mapping", "value": r.mapping()}))
            .collect();
        for d in deletes.iter().filter_map(|&i| before.get(i)) {
            ops.push(json!({"op": "delete", "kind": "url_mapping", "value": {"method": d.method, "url": d.url()}}));
        }
        let line = json!({"from_version": 42, "to_version": 43, "ops": ops}).to_string();
        let batch = DeltaBatch::from_json(line.as_bytes()).unwrap();
        let next = Index::build(&doc).apply(&batch).unwrap();
        let mut applied = doc.clone();
        applied.apply_ops(&batch.ops);
        applied.version = 43;
        let rebuilt = Index::build(&applied);
        prop_assert_eq!(&next.to_snapshot().url_mappings, &applied.url_mappings);
        prop_assert_eq!(next.to_snapshot(), rebuilt.to_snapshot());
        for (m, t) in [("GET", "/a/b"), ("PUT", "/docs/1"), ("GET", "/a"), ("POST", "/b/x%2Fy/")] {
            prop_assert_eq!(next.map_url(m, t).map(|x| (x.rule, x.attributes)), rebuilt.map_url(m, t).map(|x| (x.rule, x.attributes)));
        }
        // And the document reads back the same in every encoding.
        for enc in [Encoding::Yaml, Encoding::Json, Encoding::MessagePack] {
            prop_assert_eq!(Snapshot::load(&applied.encode(enc).unwrap(), enc).unwrap(), applied.clone());
        }
    }
}

#[test]
fn priority_and_edge_cases() {
    let mut doc = example();
    let rule = |m: &str, url: &str, regex: bool, p: Option<i64>, action: &str| UrlMapping {
        method: m.into(),
        url: url.into(),
        url_type: regex.then(|| "regex".into()),
        resource: "document".into(),
        action: action.into(),
        priority: p,
    };
    doc.url_mappings = vec![
        rule("GET", "/docs/{id}", false, None, "read"),
        rule("GET", "/docs/special", false, None, "write"),
        rule("*", "^/docs/(?P<id>.+)$", true, Some(1), "delete"),
        rule("GET", "/files/{id}", false, None, "read"),
        rule("GET", "/files/{name}", false, None, "write"),
        rule("GET", "/q?kind=doc&owner={owner}", false, None, "read"),
    ];
    permd::model::validate(&doc).unwrap();
    let ix = Index::build(&doc);
    let pick = |m: &str, t: &str| ix.map_url(m, t).map(|x| (x.action.to_owned(), x.key, x.attributes));
    // Priority wins over a longer literal prefix.
    assert_eq!(pick("GET", "/docs/special").unwrap().0, "delete");
    assert_eq!(pick("GET", "/docs/a%2Fb").unwrap().1.as_deref(), Some("a/b"));
    // A regex sees the path as sent (still encoded) and decodes what it captures; it is
    // anchored, and its `.+` spans segments.
    assert_eq!(pick("PUT", "/docs/a/b").unwrap().1.as_deref(), Some("a/b"));
    assert_eq!(pick("PUT", "/x/docs/a"), None);
    // Same priority and prefix: document order.
    assert_eq!(pick("GET", "/files/f1").unwrap().0, "read");
    assert_eq!(pick("GET", "/files/f1/").unwrap().0, "read", "trailing slash");
    assert_eq!(pick("GET", "/files/f%31").unwrap().1.as_deref(), Some("f1"));
    assert_eq!(pick("GET", "/files"), None);
    assert_eq!(pick("GET", "/files/"), None);
    // Query parameters in a template are required; a literal one must be equal.
    assert_eq!(
        pick("GET", "/q?owner=al%20ice&kind=doc").unwrap().2,
        json!({"owner": "al ice", "kind": "doc"}).as_object().unwrap().clone()
    );
    assert_eq!(pick("GET", "/q?owner=alice&kind=img"), None);
    assert_eq!(pick("GET", "/q?kind=doc"), None);
    // Absolute URLs: scheme and host are dropped; the fragment too.
    assert_eq!(
        pick("GET", "https://h.example/files/f1#top").unwrap().1.as_deref(),
        Some("f1")
    );
}
