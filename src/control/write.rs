//! The write path every face maps onto: validated ops → one transaction on the project →
//! one batch at the next version (or none when nothing changed) → the replica's feed woken.
//! A write that breaks a reject rule is refused before the database sees it.

use super::Control;
use super::auth::db_error;
use super::db::{StoredOp, ident};
use crate::model::Op;
use crate::wire::RequestError;
use serde::Serialize;
use serde_json::Value;

/// The result of a write: the project's version after it, and whether it made one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub version: u64,
    pub changed: bool,
}

#[derive(Serialize)]
struct BatchLine<'a> {
    from_version: u64,
    to_version: u64,
    ops: &'a [Op],
}

/// Writes `ops` (already validated as a batch's) to `project` as one batch.
pub async fn write(ctl: &Control, project: i64, ops: Vec<Op>) -> Result<Written, RequestError> {
    let mut stored = Vec::with_capacity(ops.len());
    for (i, op) in ops.iter().enumerate() {
        let (id, value) = match op {
            Op::Upsert(item) => (
                item.identity(),
                Some(
                    item.to_value()
                        .map_err(|e| RequestError::invalid(format!("ops[{i}].value: {e}")))?,
                ),
            ),
            Op::Delete(id) => (id.clone(), None),
        };
        // PostgreSQL text cannot hold NUL; refuse it here with the field named.
        if has_nul(&id.to_value()) || value.as_ref().is_some_and(has_nul) {
            ctl.metrics.writes.with_label_values(&["rejected"]).inc();
            return Err(RequestError::invalid(format!(
                "ops[{i}].value: strings may not contain the NUL character (\\u0000)"
            )));
        }
        let ident = ident(&id);
        let body = value.map(|v| v.to_string());
        stored.push(StoredOp {
            kind: op.kind(),
            ident,
            body,
        });
    }
    let line = |from_version, to_version| {
        serde_json::to_string(&BatchLine {
            from_version,
            to_version,
            ops: &ops,
        })
        .unwrap_or_default()
    };
    match ctl.db.write(project, &stored, line, super::feed::CHANNEL).await {
        Ok((version, changed)) => {
            let result = if changed { "applied" } else { "unchanged" };
            ctl.metrics.writes.with_label_values(&[result]).inc();
            if changed {
                ctl.feed.poke(project);
            }
            Ok(Written { version, changed })
        }
        Err(e) => {
            ctl.metrics.writes.with_label_values(&["failed"]).inc();
            Err(db_error(e))
        }
    }
}

/// Whether any string (or object key) in `v` holds a NUL character.
fn has_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(has_nul),
        Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}
