//! URL mapping rules (model.md §6): an HTTP request (method, path, query) mapped to a check
//! (resource type, action, key) with the path and query variables as the resource's request
//! attributes. Rules are compiled once per snapshot version (`UrlMap::build`, held by the
//! index); a request only walks the compiled list.
//!
//! Choices where the spec is silent (docs/http.md, "URL mapping rules"):
//! - a rule's `url` and a request's URL may be absolute (`https://host/path?q`, Permit's form)
//!   or a path (`/path?q`); scheme and host are dropped, the match is on path and query;
//! - template: `{name}` is one whole, non-empty path segment; literal segments and variables
//!   compare percent-decoded (so `%2F` stays inside a segment); one trailing `/` on either side
//!   is insignificant; a template's query part (`?owner={owner}&kind=doc`) requires those
//!   parameters (a `{var}` binds the value, a literal must be equal);
//! - regex: must match the whole path as sent (still percent-encoded; implicitly anchored),
//!   named groups are variables (decoded). A regex that names a scheme (its text has `://`,
//!   Permit's absolute form) is matched against the whole absolute URL with its query instead,
//!   and only an absolute request URL can match it;
//! - every query parameter of the request is a variable too (decoded, `+` as space, the first
//!   of repeated keys); a path variable wins over a query parameter of the same name;
//! - among matches: highest `priority` (absent = 0), then longest literal prefix, then
//!   document order.

use crate::model::{Attributes, UrlMapping};
use regex::Regex;
use serde_json::Value;

/// Longest `url` of a rule, in bytes.
pub const MAX_URL_BYTES: usize = 4096;
/// Compiled size limit of one regex rule.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// How a rule's `url` is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UrlType {
    Template,
    Regex,
}

impl UrlType {
    /// `url_type` as written: absent or `template`, or `regex`.
    pub fn parse(s: Option<&str>) -> Result<UrlType, String> {
        match s {
            None | Some("template") => Ok(UrlType::Template),
            Some("regex") => Ok(UrlType::Regex),
            Some(other) => Err(format!("unknown url_type `{other}`; expected `template` or `regex`")),
        }
    }
}

#[derive(Debug, Clone)]
enum Part {
    Lit(String),
    Var(String),
}

#[derive(Debug, Clone)]
enum Pattern {
    Template {
        segments: Vec<Part>,
        query: Vec<(String, Part)>,
    },
    /// `absolute`: matched against the whole absolute URL rather than the path.
    Regex { re: Regex, absolute: bool },
}

/// One rule, compiled.
#[derive(Debug, Clone)]
struct Rule {
    /// Upper-cased; `None` for `*`.
    method: Option<String>,
    pattern: Pattern,
    resource: String,
    action: String,
    priority: i64,
    prefix: usize,
    /// Position in the document.
    order: usize,
}

/// A request mapped through the rules: the check to make and its request attributes.
#[derive(Debug, Clone, PartialEq)]
pub struct UrlMatch<'a> {
    pub resource_type: &'a str,
    pub action: &'a str,
    /// The `id` variable, when there is one.
    pub key: Option<String>,
    /// Every path and query variable, as strings: the resource's request attributes.
    pub attributes: Attributes,
    /// The rule's position in the document's `url_mappings`.
    pub rule: usize,
}

/// The rules of one version, compiled and ordered so that the first match wins.
#[derive(Debug, Clone, Default)]
pub struct UrlMap {
    rules: Vec<Rule>,
}

/// Checks one rule as validation does; the error is (field, problem).
pub fn check(rule: &UrlMapping) -> Result<(), (&'static str, String)> {
    compile(rule, 0).map(|_| ())
}

fn valid_method(m: &str) -> bool {
    m == "*" || (!m.is_empty() && m.len() <= 32 && m.bytes().all(|b| b.is_ascii_alphabetic()))
}

fn compile(rule: &UrlMapping, order: usize) -> Result<Rule, (&'static str, String)> {
    if !valid_method(&rule.method) {
        return Err(("method", format!("`{}` is not an HTTP method name or `*`", rule.method)));
    }
    if rule.url.is_empty() {
        return Err(("url", "must not be empty".into()));
    }
    if rule.url.len() > MAX_URL_BYTES {
        return Err(("url", format!("is {} bytes; at most {MAX_URL_BYTES}", rule.url.len())));
    }
    let url_type = UrlType::parse(rule.url_type.as_deref()).map_err(|e| ("url_type", e))?;
    let (pattern, prefix) = match url_type {
        UrlType::Template => template(&rule.url).map_err(|e| ("url", e))?,
        UrlType::Regex => {
            // The rule alone must be a regex (so `a)|(b` is refused rather than completed by the
            // anchoring group around it), then it is anchored to the whole subject.
            regex::RegexBuilder::new(&rule.url)
                .size_limit(REGEX_SIZE_LIMIT)
                .build()
                .map_err(|e| ("url", format!("bad regex: {e}")))?;
            let re = regex::RegexBuilder::new(&format!("^(?:{})$", rule.url))
                .size_limit(REGEX_SIZE_LIMIT)
                .build()
                .map_err(|e| ("url", format!("bad regex: {e}")))?;
            let absolute = rule.url.contains("://");
            (Pattern::Regex { re, absolute }, regex_prefix(&rule.url))
        }
    };
    Ok(Rule {
        method: (rule.method != "*").then(|| rule.method.to_ascii_uppercase()),
        pattern,
        resource: rule.resource.clone(),
        action: rule.action.clone(),
        priority: rule.priority.unwrap_or(0),
        prefix,
        order,
    })
}

/// The literal characters a regex starts with (after `^`): the tie-break length.
fn regex_prefix(re: &str) -> usize {
    let body = re.strip_prefix('^').unwrap_or(re);
    body.find(|c: char| "\\.+*?()|[]{}^$".contains(c)).unwrap_or(body.len())
}

/// Drops `scheme://authority` and a `#fragment`; splits path and query.
pub fn split_target(target: &str) -> (&str, Option<&str>) {
    let target = target.split_once('#').map_or(target, |(t, _)| t);
    let rest = match target.find("://") {
        Some(i)
            if target[..i]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b)) =>
        {
            let after = &target[i + 3..];
            match after.find(['/', '?']) {
                Some(j) => &after[j..],
                None => "/",
            }
        }
        _ => target,
    };
    match rest.split_once('?') {
        Some((p, q)) => (if p.is_empty() { "/" } else { p }, Some(q)),
        None => (if rest.is_empty() { "/" } else { rest }, None),
    }
}

fn var_name(s: &str) -> Option<&str> {
    let name = s.strip_prefix('{')?.strip_suffix('}')?;
    (!name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')).then_some(name)
}

fn part(s: &str, what: &str) -> Result<Part, String> {
    if let Some(name) = var_name(s) {
        return Ok(Part::Var(name.to_owned()));
    }
    if s.contains(['{', '}']) {
        return Err(format!(
            "bad template: `{s}`: a variable is `{{name}}` (letters, digits, `_`) and fills a whole {what}"
        ));
    }
    Ok(Part::Lit(percent_decode(s, false)))
}

fn template(url: &str) -> Result<(Pattern, usize), String> {
    let (path, query) = split_target(url);
    if !path.starts_with('/') {
        return Err(format!(
            "bad template: `{url}` does not start with `/` (or a scheme and host)"
        ));
    }
    let prefix = path.find('{').unwrap_or(path.len());
    let segments = segments(path)
        .map(|s| part(s, "path segment"))
        .collect::<Result<Vec<_>, _>>()?;
    let mut seen = std::collections::HashSet::new();
    for p in &segments {
        if let Part::Var(n) = p
            && !seen.insert(n.clone())
        {
            return Err(format!("bad template: variable `{n}` appears twice"));
        }
    }
    let mut params = Vec::new();
    for kv in query.into_iter().flat_map(|q| q.split('&')).filter(|kv| !kv.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        if k.is_empty() || k.contains(['{', '}']) {
            return Err(format!("bad template: query parameter `{kv}` needs a literal name"));
        }
        params.push((percent_decode(k, true), part(v, "query value")?));
    }
    Ok((
        Pattern::Template {
            segments,
            query: params,
        },
        prefix,
    ))
}

/// The segments of a path after its leading `/`, without one trailing empty segment.
fn segments(path: &str) -> impl Iterator<Item = &str> {
    let trimmed = path.strip_prefix('/').unwrap_or(path);
    let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
    let empty = trimmed.is_empty();
    trimmed.split('/').filter(move |_| !empty)
}

/// Decodes `%XX` escapes (invalid ones stay as written), and `+` as a space in a query.
pub fn percent_decode(s: &str, plus: bool) -> String {
    if !s.contains(['%', '+']) {
        return s.to_owned();
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match b[i] {
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' if plus => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A request's query as decoded (key, value) pairs, in order.
fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k, true), percent_decode(v, true))
        })
        .collect()
}

impl Rule {
    fn matches(&self, target: &str, path: &str, query: &[(String, String)]) -> Option<Attributes> {
        let mut vars = Attributes::new();
        match &self.pattern {
            Pattern::Template {
                segments: want,
                query: params,
            } => {
                let mut got = segments(path);
                for p in want {
                    let seg = percent_decode(got.next()?, false);
                    match p {
                        Part::Lit(l) if *l == seg => {}
                        Part::Lit(_) => return None,
                        Part::Var(_) if seg.is_empty() => return None,
                        Part::Var(n) => {
                            vars.insert(n.clone(), Value::String(seg));
                        }
                    }
                }
                if got.next().is_some() {
                    return None;
                }
                for (k, p) in params {
                    let (_, v) = query.iter().find(|(qk, _)| qk == k)?;
                    match p {
                        Part::Lit(l) if l == v => {}
                        Part::Lit(_) => return None,
                        Part::Var(n) => {
                            vars.entry(n.clone()).or_insert_with(|| Value::String(v.clone()));
                        }
                    }
                }
            }
            Pattern::Regex { re, absolute } => {
                let subject = match absolute {
                    false => path,
                    true if target.contains("://") => target.split_once('#').map_or(target, |(t, _)| t),
                    true => return None,
                };
                let caps = re.captures(subject)?;
                for name in re.capture_names().flatten() {
                    if let Some(m) = caps.name(name) {
                        vars.insert(name.to_owned(), Value::String(percent_decode(m.as_str(), false)));
                    }
                }
            }
        }
        for (k, v) in query {
            vars.entry(k.clone()).or_insert_with(|| Value::String(v.clone()));
        }
        Some(vars)
    }
}

impl UrlMap {
    /// Compiles the rules of a validated document; a rule that does not compile (which
    /// validation has already refused) is left out.
    pub fn build(rules: &[UrlMapping]) -> UrlMap {
        let mut rules: Vec<Rule> = rules
            .iter()
            .enumerate()
            .filter_map(|(i, r)| compile(r, i).ok())
            .collect();
        rules.sort_by(|a, b| {
            b.priority
                .cmp(&a.priority)
                .then(b.prefix.cmp(&a.prefix))
                .then(a.order.cmp(&b.order))
        });
        UrlMap { rules }
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The check a request maps to: the first matching rule in (priority, literal prefix,
    /// document order). `target` is a path with an optional query, or an absolute URL.
    pub fn find(&self, method: &str, target: &str) -> Option<UrlMatch<'_>> {
        let (path, query) = split_target(target);
        let query = query_pairs(query);
        self.rules.iter().find_map(|r| {
            if let Some(m) = &r.method
                && !m.eq_ignore_ascii_case(method)
            {
                return None;
            }
            let attributes = r.matches(target, path, &query)?;
            Some(UrlMatch {
                resource_type: &r.resource,
                action: &r.action,
                key: attributes.get("id").and_then(Value::as_str).map(str::to_owned),
                attributes,
                rule: r.order,
            })
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn rule(method: &str, url: &str, url_type: Option<&str>, resource: &str, priority: Option<i64>) -> UrlMapping {
        UrlMapping {
            method: method.into(),
            url: url.into(),
            url_type: url_type.map(Into::into),
            resource: resource.into(),
            action: "read".into(),
            priority,
        }
    }

    #[test]
    fn splits_absolute_and_relative_targets() {
        assert_eq!(split_target("https://h.example:8/a/b?x=1#f"), ("/a/b", Some("x=1")));
        assert_eq!(split_target("https://h.example"), ("/", None));
        assert_eq!(split_target("http://h?x"), ("/", Some("x")));
        assert_eq!(split_target("/a?"), ("/a", Some("")));
        assert_eq!(split_target("/a/b"), ("/a/b", None));
        assert_eq!(split_target(""), ("/", None));
    }

    #[test]
    fn decodes_percent_escapes() {
        assert_eq!(percent_decode("a%20b%2Fc", false), "a b/c");
        assert_eq!(percent_decode("a+b", true), "a b");
        assert_eq!(percent_decode("a+b", false), "a+b");
        assert_eq!(percent_decode("100%", false), "100%");
        assert_eq!(percent_decode("%zz%4", false), "%zz%4");
        assert_eq!(percent_decode("%C3%A9", false), "é");
    }

    #[test]
    fn templates_bind_whole_segments() {
        let m = UrlMap::build(&[rule("GET", "/documents/{id}", None, "document", None)]);
        let hit = m.find("get", "/documents/a%2Fb?x=1&id=q").unwrap();
        assert_eq!(hit.key.as_deref(), Some("a/b"));
        assert_eq!(hit.attributes["x"], "1");
        assert_eq!(
            hit.attributes["id"], "a/b",
            "a path variable wins over a query parameter"
        );
        assert!(m.find("GET", "/documents/1/").is_some(), "trailing slash");
        assert!(m.find("GET", "/documents/").is_none(), "an empty segment binds nothing");
        assert!(m.find("GET", "/documents/1/x").is_none());
        assert!(m.find("PUT", "/documents/1").is_none());
    }

    #[test]
    fn bad_rules_are_named() {
        let cases = [
            (rule("GET", "/a/{b", None, "r", None), "url"),
            (rule("GET", "/a/x{b}", None, "r", None), "url"),
            (rule("GET", "/a/{b}/{b}", None, "r", None), "url"),
            (rule("GET", "^/a/(", Some("regex"), "r", None), "url"),
            (rule("GET", "x)|(.*", Some("regex"), "r", None), "url"),
            (rule("GET", "/a", Some("glob"), "r", None), "url_type"),
            (rule("GE T", "/a", None, "r", None), "method"),
            (rule("GET", "a", None, "r", None), "url"),
        ];
        for (r, field) in cases {
            assert_eq!(check(&r).unwrap_err().0, field, "{r:?}");
        }
    }
}
