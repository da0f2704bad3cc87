//! Conditions (model.md §5): CEL expressions compiled once when a document or batch is loaded,
//! evaluated at check time over borrowed views of the stored and requested attributes.
//!
//! An expression sees `user`, `resource`, `org`, `action`, `context` and `now`; anything else
//! it names is refused when it is compiled. Evaluation never fails: a value that is not `true`
//! (false, an error, a non-boolean) is an [`Outcome`] that does not permit.

use crate::model::Attributes;
use cel::common::ast::{EntryExpr, Expr};
use cel::common::types::{CelBool, CelDouble, CelInt, CelList, CelMap, CelMapKey, CelNull, CelString, CelUInt};
use cel::common::value::Val;
use cel::{Context, Env, Program, Value};
use serde_json::Value as Json;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

/// The longest expression accepted, in bytes.
pub const MAX_CONDITION_BYTES: usize = 4096;
/// The deepest nesting of brackets accepted: the parser recurses once per level.
const MAX_NESTING: usize = 32;

/// The variables an expression may name (model.md §5 "What an expression sees").
pub const VARIABLES: [&str; 6] = ["user", "resource", "org", "action", "context", "now"];

/// Identifiers CEL resolves to types (`type(x) == string`).
const TYPE_NAMES: [&str; 11] = [
    "bool",
    "bytes",
    "double",
    "int",
    "uint",
    "string",
    "list",
    "map",
    "null_type",
    "type",
    "dyn",
];

static ENV: LazyLock<Arc<Env>> = LazyLock::new(|| Arc::new(Env::stdlib()));

/// Which of the variables an expression reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Uses {
    pub user: bool,
    pub resource: bool,
    pub org: bool,
    pub action: bool,
    pub context: bool,
    pub now: bool,
}

impl Uses {
    /// Whether the expression reads nothing but the resource: its value for an instance is
    /// fixed by the stored data when the request carries no resource attributes.
    pub fn resource_only(&self) -> bool {
        self.resource && !(self.user || self.org || self.action || self.context || self.now)
    }
}

/// One compiled condition.
pub struct Condition {
    source: Arc<str>,
    /// `None` for a source that does not compile: it never holds.
    program: Option<Program>,
    uses: Uses,
}

impl std::fmt::Debug for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Condition").field(&self.source).finish()
    }
}

impl PartialEq for Condition {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

/// What a condition evaluated to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    True,
    False,
    /// An error, or a value that is not a boolean; it does not permit.
    Error(String),
}

impl Outcome {
    pub fn holds(&self) -> bool {
        matches!(self, Outcome::True)
    }

    /// A short text for `explain`: `true`, `false` or the error.
    pub fn describe(&self) -> String {
        match self {
            Outcome::True => "true".into(),
            Outcome::False => "false".into(),
            Outcome::Error(e) => format!("error: {e}"),
        }
    }
}

impl Condition {
    /// Parses `source` and checks that it names only the variables of model.md §5. The error
    /// is the parser's message (or names the unknown variable).
    pub fn compile(source: &str) -> Result<Condition, String> {
        if source.trim().is_empty() {
            return Err("the condition is empty".into());
        }
        if source.len() > MAX_CONDITION_BYTES {
            return Err(format!(
                "the condition is {} bytes; at most {MAX_CONDITION_BYTES} are accepted",
                source.len()
            ));
        }
        if source.contains('\0') {
            return Err("the condition contains a NUL character".into());
        }
        let mut depth = 0usize;
        for c in source.chars() {
            match c {
                '(' | '[' | '{' => {
                    depth += 1;
                    if depth > MAX_NESTING {
                        return Err(format!("the condition nests deeper than {MAX_NESTING} levels"));
                    }
                }
                ')' | ']' | '}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        let parsed = std::panic::catch_unwind(|| Program::compile(source))
            .map_err(|_| "the CEL parser failed on this expression".to_string())?;
        let program = parsed.map_err(|e| e.to_string().replace('\n', " "))?;
        let mut uses = Uses::default();
        let mut bound = Vec::new();
        free_variables(&program.expression().expr, &mut bound, &mut |name| {
            match name {
                "user" => uses.user = true,
                "resource" => uses.resource = true,
                "org" => uses.org = true,
                "action" => uses.action = true,
                "context" => uses.context = true,
                "now" => uses.now = true,
                n if TYPE_NAMES.contains(&n) => {}
                other => {
                    return Err(format!(
                        "unknown variable `{other}`; a condition sees {}",
                        VARIABLES.join(", ")
                    ));
                }
            }
            Ok(())
        })?;
        Ok(Condition {
            source: source.into(),
            program: Some(program),
            uses,
        })
    }

    /// [`Condition::compile`] through a cache of recent sources: a document whose grants share
    /// a handful of conditions parses each once, for validation and for the index alike.
    pub fn compile_shared(source: &str) -> Result<Arc<Condition>, String> {
        const MAX_CACHED: usize = 4096;
        type Compiled = Result<Arc<Condition>, String>;
        static CACHE: LazyLock<Mutex<HashMap<Arc<str>, Compiled>>> = LazyLock::new(Mutex::default);
        if let Ok(cache) = CACHE.lock()
            && let Some(hit) = cache.get(source)
        {
            return hit.clone();
        }
        let compiled = Condition::compile(source).map(Arc::new);
        if let Ok(mut cache) = CACHE.lock() {
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
            cache.insert(source.into(), compiled.clone());
        }
        compiled
    }

    /// The compiled condition, or for a source that does not compile (a document that skipped
    /// validation) one with that source that never holds.
    pub fn compile_or_never(source: &str) -> Arc<Condition> {
        Condition::compile_shared(source).unwrap_or_else(|_| {
            Arc::new(Condition {
                source: source.into(),
                program: None,
                uses: Uses::default(),
            })
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn uses(&self) -> Uses {
        self.uses
    }

    /// Evaluates the condition in `scope`; anything but `true` does not permit.
    pub fn eval(&self, scope: &Scope<'_>) -> Outcome {
        let Some(program) = &self.program else {
            return Outcome::Error("the condition does not compile".into());
        };
        let mut ctx = Context::with_env(ENV.clone());
        let u = self.uses;
        if u.user {
            ctx.add_variable_as_val("user", scope.user.val());
        }
        if u.resource {
            ctx.add_variable_as_val("resource", scope.resource.val());
        }
        if u.org {
            ctx.add_variable_as_val("org", scope.org.val());
        }
        if u.action {
            ctx.add_variable_as_val("action", Box::new(CelString::from(scope.action)));
        }
        if u.context {
            ctx.add_variable_as_val("context", object(scope.context, None));
        }
        if u.now {
            let nanos = scope.request.and_then(|r| r.now_unix_nanos).unwrap_or_else(now_nanos);
            let ts = chrono::DateTime::from_timestamp_nanos(nanos).fixed_offset();
            ctx.add_variable_from_value("now", Value::Timestamp(ts));
        }
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| program.execute(&ctx))) {
            Ok(Ok(Value::Bool(true))) => Outcome::True,
            Ok(Ok(Value::Bool(false))) => Outcome::False,
            Ok(Ok(other)) => Outcome::Error(format!("evaluated to {:?}, not a boolean", other.type_of())),
            Ok(Err(e)) => Outcome::Error(e.to_string()),
            Err(_) => Outcome::Error("the evaluator failed".into()),
        }
    }
}

fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// Calls `found` with every identifier of `expr` not bound by an enclosing comprehension.
fn free_variables(
    expr: &Expr,
    bound: &mut Vec<String>,
    found: &mut impl FnMut(&str) -> Result<(), String>,
) -> Result<(), String> {
    match expr {
        Expr::Unspecified | Expr::Literal(_) => Ok(()),
        Expr::Ident(name) => {
            if bound.iter().any(|b| b == name) {
                Ok(())
            } else {
                found(name)
            }
        }
        Expr::Select(s) => free_variables(&s.operand.expr, bound, found),
        Expr::Call(c) => {
            if let Some(t) = &c.target {
                free_variables(&t.expr, bound, found)?;
            }
            for a in &c.args {
                free_variables(&a.expr, bound, found)?;
            }
            Ok(())
        }
        Expr::List(l) => {
            for e in &l.elements {
                free_variables(&e.expr, bound, found)?;
            }
            Ok(())
        }
        Expr::Map(m) => {
            for e in &m.entries {
                if let EntryExpr::MapEntry(me) = &e.expr {
                    free_variables(&me.key.expr, bound, found)?;
                    free_variables(&me.value.expr, bound, found)?;
                }
            }
            Ok(())
        }
        Expr::Struct(s) => {
            for e in &s.entries {
                match &e.expr {
                    EntryExpr::StructField(f) => free_variables(&f.value.expr, bound, found)?,
                    EntryExpr::MapEntry(me) => {
                        free_variables(&me.key.expr, bound, found)?;
                        free_variables(&me.value.expr, bound, found)?;
                    }
                }
            }
            Ok(())
        }
        Expr::Comprehension(c) => {
            free_variables(&c.iter_range.expr, bound, found)?;
            let mark = bound.len();
            bound.push(c.accu_var.clone());
            free_variables(&c.accu_init.expr, bound, found)?;
            bound.push(c.iter_var.clone());
            if let Some(v2) = &c.iter_var2 {
                bound.push(v2.clone());
            }
            let r = free_variables(&c.loop_cond.expr, bound, found)
                .and_then(|_| free_variables(&c.loop_step.expr, bound, found))
                .and_then(|_| free_variables(&c.result.expr, bound, found));
            bound.truncate(mark);
            r
        }
    }
}

/// What a request carries besides its subject, resource and action (model.md §5): attributes
/// of the user and the resource, which fill keys the stored ones lack, the context, the time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestData {
    pub user: Option<Attributes>,
    pub resource: Option<Attributes>,
    pub context: Option<Attributes>,
    /// The request's time; absent: the clock when a condition reads `now`.
    pub now_unix_nanos: Option<i64>,
}

impl RequestData {
    pub fn is_empty(&self) -> bool {
        self.user.as_ref().is_none_or(|m| m.is_empty())
            && self.resource.as_ref().is_none_or(|m| m.is_empty())
            && self.context.as_ref().is_none_or(|m| m.is_empty())
    }
}

/// The `user` variable: the stored user item with the request's attributes beneath it.
#[derive(Debug, Clone, Copy, Default)]
pub struct UserView<'a> {
    pub key: &'a str,
    pub email: Option<&'a str>,
    pub stored: Option<&'a Attributes>,
    pub request: Option<&'a Attributes>,
}

/// The `resource` variable.
#[derive(Debug, Clone, Copy, Default)]
pub struct ResourceView<'a> {
    pub resource_type: &'a str,
    pub key: &'a str,
    pub org: &'a str,
    pub stored: Option<&'a Attributes>,
    pub request: Option<&'a Attributes>,
}

/// The `org` variable.
#[derive(Debug, Clone, Copy, Default)]
pub struct OrgView<'a> {
    pub key: &'a str,
    pub stored: Option<&'a Attributes>,
}

/// Everything one evaluation sees.
#[derive(Debug, Clone, Copy, Default)]
pub struct Scope<'a> {
    pub user: UserView<'a>,
    pub resource: ResourceView<'a>,
    pub org: OrgView<'a>,
    pub action: &'a str,
    pub context: Option<&'a Attributes>,
    pub request: Option<&'a RequestData>,
}

type Fields<'v> = HashMap<CelMapKey<'v>, Box<dyn Val + 'v>>;

fn string(s: &str) -> Box<dyn Val + '_> {
    Box::new(CelString::from(s))
}

impl<'a> UserView<'a> {
    fn val(&self) -> Box<dyn Val + 'a> {
        let mut m: Fields<'a> = HashMap::with_capacity(3);
        m.insert(CelMapKey::from("key"), string(self.key));
        if let Some(e) = self.email {
            m.insert(CelMapKey::from("email"), string(e));
        }
        m.insert(CelMapKey::from("attributes"), object(self.stored, self.request));
        Box::new(CelMap::from(m))
    }
}

impl<'a> ResourceView<'a> {
    fn val(&self) -> Box<dyn Val + 'a> {
        let mut m: Fields<'a> = HashMap::with_capacity(4);
        m.insert(CelMapKey::from("type"), string(self.resource_type));
        m.insert(CelMapKey::from("key"), string(self.key));
        m.insert(CelMapKey::from("org"), string(self.org));
        m.insert(CelMapKey::from("attributes"), object(self.stored, self.request));
        Box::new(CelMap::from(m))
    }
}

impl<'a> OrgView<'a> {
    fn val(&self) -> Box<dyn Val + 'a> {
        let mut m: Fields<'a> = HashMap::with_capacity(2);
        m.insert(CelMapKey::from("key"), string(self.key));
        m.insert(CelMapKey::from("attributes"), object(self.stored, None));
        Box::new(CelMap::from(m))
    }
}

/// A CEL map of `stored`, with the keys of `below` it lacks: the stored value wins.
fn object<'v>(stored: Option<&'v Attributes>, below: Option<&'v Attributes>) -> Box<dyn Val + 'v> {
    let n = stored.map_or(0, |m| m.len()) + below.map_or(0, |m| m.len());
    let mut m: Fields<'v> = HashMap::with_capacity(n);
    if let Some(s) = stored {
        for (k, v) in s {
            m.insert(CelMapKey::from(k.as_str()), json(v));
        }
    }
    if let Some(b) = below {
        for (k, v) in b {
            if stored.is_none_or(|s| !s.contains_key(k)) {
                m.insert(CelMapKey::from(k.as_str()), json(v));
            }
        }
    }
    Box::new(CelMap::from(m))
}

/// A JSON value as CEL sees it: integers as `int` (or `uint` past i64), other numbers as
/// `double`, borrowing every string.
fn json(v: &Json) -> Box<dyn Val + '_> {
    match v {
        Json::Null => Box::new(CelNull),
        Json::Bool(b) => Box::new(CelBool::from(*b)),
        Json::Number(n) => {
            if let Some(i) = n.as_i64() {
                Box::new(CelInt::from(i))
            } else if let Some(u) = n.as_u64() {
                Box::new(CelUInt::from(u))
            } else {
                Box::new(CelDouble::from(n.as_f64().unwrap_or(f64::NAN)))
            }
        }
        Json::String(s) => string(s),
        Json::Array(a) => Box::new(CelList::from(a.iter().map(json).collect::<Vec<_>>())),
        Json::Object(m) => Box::new(CelMap::from(
            m.iter()
                .map(|(k, v)| (CelMapKey::from(k.as_str()), json(v)))
                .collect::<Fields<'_>>(),
        )),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn attrs(v: Json) -> Attributes {
        match v {
            Json::Object(m) => m,
            _ => Attributes::new(),
        }
    }

    #[test]
    fn refuses_unknown_variables_and_bad_syntax() {
        assert!(Condition::compile("resource.attributes.owner == user.key").is_ok());
        assert!(Condition::compile("[1, 2].all(x, x > 0) && context.ip.startsWith('10.')").is_ok());
        let e = Condition::compile("subject.id == 'a'").unwrap_err();
        assert!(e.contains("unknown variable `subject`"), "{e}");
        let e = Condition::compile("[1].exists(x, y > x)").unwrap_err();
        assert!(e.contains("`y`"), "{e}");
        assert!(Condition::compile("user.key ==").is_err());
        assert!(Condition::compile("").is_err());
        assert!(Condition::compile(&"(".repeat(100)).is_err());
        assert!(Condition::compile(&"a".repeat(MAX_CONDITION_BYTES + 1)).is_err());
    }

    #[test]
    fn stored_attributes_win_and_errors_deny() {
        let stored = attrs(json!({"owner": "alice"}));
        let requested = attrs(json!({"owner": "bob", "dept": "legal"}));
        let scope = Scope {
            user: UserView {
                key: "bob",
                ..Default::default()
            },
            resource: ResourceView {
                resource_type: "doc",
                key: "d1",
                org: "acme",
                stored: Some(&stored),
                request: Some(&requested),
            },
            action: "read",
            ..Default::default()
        };
        let owner = Condition::compile("resource.attributes.owner == user.key").unwrap();
        assert_eq!(owner.eval(&scope), Outcome::False);
        let dept = Condition::compile("resource.attributes.dept == 'legal'").unwrap();
        assert_eq!(dept.eval(&scope), Outcome::True);
        for bad in [
            "resource.attributes.missing == 1",
            "1 / 0 == 0",
            "resource.attributes.owner > 1",
            "resource.attributes.owner",
            "null",
        ] {
            let c = Condition::compile(bad).unwrap();
            assert!(matches!(c.eval(&scope), Outcome::Error(_)), "{bad}");
        }
    }

    #[test]
    fn now_and_context() {
        let ctx = attrs(json!({"ip": "10.1.2.3"}));
        let data = RequestData {
            now_unix_nanos: Some(1_700_000_000_000_000_000),
            ..Default::default()
        };
        let scope = Scope {
            context: Some(&ctx),
            request: Some(&data),
            ..Default::default()
        };
        let c = Condition::compile("context.ip.startsWith('10.') && now < timestamp('2024-01-01T00:00:00Z')").unwrap();
        assert_eq!(c.eval(&scope), Outcome::True);
    }
}
