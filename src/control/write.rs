//! The write path every face maps onto: validated ops → one transaction on the project →
//! one batch at the next version (or none when nothing changed) → the replica's feed woken.
//! A write that breaks a reject rule is refused before the database sees it.

use super::Control;
use super::auth::db_error;
use super::db::DbError;
use crate::model::{Op, Snapshot};
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
    // Without an expected version the write cannot find the project moved.
    write_at(ctl, project, None, ops)
        .await?
        .ok_or_else(|| RequestError::Retry("the project changed meanwhile; retry".into()))
}

/// How often [`write_with`] plans again when other writes keep landing first.
const PLAN_ATTEMPTS: usize = 8;

/// Writes the ops `plan` makes from the project's current document (cascades, existence
/// checks, "the next free name"): if another write commits between the read and this one,
/// reads again and plans again, so the ops always fit the state they are applied to. `plan`
/// may refuse (its error is the answer, nothing is written) or return no ops (the answer is
/// the current version).
pub async fn write_with<F>(ctl: &Control, project: i64, plan: F) -> Result<Written, RequestError>
where
    F: Fn(&Snapshot) -> Result<Vec<Op>, RequestError>,
{
    for _ in 0..PLAN_ATTEMPTS {
        let current = ctl.snapshots.current(project).await.map_err(db_error)?;
        let ops = plan(&current.snapshot)?;
        if ops.is_empty() {
            return Ok(Written {
                version: current.version,
                changed: false,
            });
        }
        if let Some(w) = write_at(ctl, project, Some(current.version), ops).await? {
            return Ok(w);
        }
    }
    Err(RequestError::Retry(
        "the project changed under this write too many times; retry".into(),
    ))
}

/// Writes `ops` planned on the project at version `at`: `None` (nothing written) when another
/// write landed since, so the caller plans again on the new state.
pub async fn write_planned(
    ctl: &Control,
    project: i64,
    at: u64,
    ops: Vec<Op>,
) -> Result<Option<Written>, RequestError> {
    write_at(ctl, project, Some(at), ops).await
}

/// One write; `None` when the project is no longer at `expected`.
async fn write_at(
    ctl: &Control,
    project: i64,
    expected: Option<u64>,
    ops: Vec<Op>,
) -> Result<Option<Written>, RequestError> {
    for (i, op) in ops.iter().enumerate() {
        let value = match op {
            Op::Upsert(item) => item
                .to_value()
                .map_err(|e| RequestError::invalid(format!("ops[{i}].value: {e}")))?,
            Op::Delete(id) => id.to_value(),
        };
        // PostgreSQL text cannot hold NUL; refuse it here with the field named.
        if has_nul(&value) {
            ctl.metrics.writes.with_label_values(&["rejected"]).inc();
            return Err(RequestError::invalid(format!(
                "ops[{i}].value: strings may not contain the NUL character (\\u0000)"
            )));
        }
    }
    let mut ops = ops;
    let line = |from_version, to_version, ops: &[Op]| {
        serde_json::to_string(&BatchLine {
            from_version,
            to_version,
            ops,
        })
        .unwrap_or_default()
    };
    match ctl
        .db
        .write(project, expected, &mut ops, line, super::feed::CHANNEL)
        .await
    {
        Ok((version, changed)) => {
            let result = if changed { "applied" } else { "unchanged" };
            ctl.metrics.writes.with_label_values(&[result]).inc();
            if changed {
                ctl.feed.poke(project);
            }
            Ok(Some(Written { version, changed }))
        }
        Err(DbError::Moved) => Ok(None),
        Err(DbError::Conflict(m)) => {
            ctl.metrics.writes.with_label_values(&["rejected"]).inc();
            Err(RequestError::Conflict(m))
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
