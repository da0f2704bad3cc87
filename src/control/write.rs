//! The write path every face maps onto: validated ops → the project's group commit (one
//! transaction for the writes that arrive together, each its own savepoint and version) →
//! one batch per write at the next version (or none when nothing changed) → the replica's
//! feed woken. A write that breaks a reject rule is refused before the database sees it.

use super::Control;
use super::auth::db_error;
use super::db::{Db, DbError, GroupWrite};
use super::feed::Feed;
use crate::model::{Op, Snapshot};
use crate::wire::RequestError;
use serde::Serialize;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

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
    let _turn = ctl.groups.plan_turn(project).await;
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
    match ctl.groups.submit(project, GroupWrite { expected, ops }).await {
        Ok((version, changed)) => {
            let result = if changed { "applied" } else { "unchanged" };
            ctl.metrics.writes.with_label_values(&[result]).inc();
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

/// Where a queued write's result goes.
type Waiter = oneshot::Sender<Result<(u64, bool), DbError>>;

/// Writes of one project waiting for their turn.
#[derive(Default)]
struct Queue {
    pending: Vec<(GroupWrite, Waiter)>,
    /// A flush task is running for the project.
    running: bool,
}

/// Group commit, per project and replica. Writers of one project are serialised by the
/// project's row lock, and each commit waits for its WAL flush (about 3 ms on the machine of
/// bench/README.md): one write per commit would cap a project near 300 writes/s. So the writes
/// that arrive while a commit is under way queue up and go together in the next transaction,
/// each still its own savepoint, version and batch, all behind one flush.
#[derive(Clone)]
pub struct Groups {
    db: Db,
    feed: Arc<Feed>,
    queues: Arc<Mutex<HashMap<i64, Queue>>>,
    /// Transactions the groups took (`permd_control_write_transactions_total`).
    pub transactions: Arc<AtomicU64>,
    /// One planner at a time per project (see [`Groups::plan_turn`]).
    plans: Arc<Mutex<HashMap<i64, Arc<tokio::sync::Mutex<()>>>>>,
}

/// Writes in one transaction at most.
const GROUP_MAX: usize = 256;

impl Groups {
    pub fn new(db: Db, feed: Arc<Feed>) -> Groups {
        Groups {
            db,
            feed,
            queues: Arc::default(),
            transactions: Arc::default(),
            plans: Arc::default(),
        }
    }

    /// The project's planning turn: writes planned from the current document (cascades,
    /// existence checks) take it from the read to the commit, so on one replica they never
    /// plan on a version another of them is about to move; only writes of other replicas can
    /// still make a plan stale (then it is planned again).
    pub async fn plan_turn(&self, project: i64) -> tokio::sync::OwnedMutexGuard<()> {
        let gate = match self.plans.lock() {
            Ok(mut plans) => plans.entry(project).or_default().clone(),
            Err(_) => Arc::default(),
        };
        gate.lock_owned().await
    }

    /// Queues a write and waits for its result; starts the project's flush task when none runs.
    async fn submit(&self, project: i64, write: GroupWrite) -> Result<(u64, bool), DbError> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut queues = self
                .queues
                .lock()
                .map_err(|_| DbError::Unavailable("write queue poisoned".into()))?;
            let q = queues.entry(project).or_default();
            q.pending.push((write, tx));
            !std::mem::replace(&mut q.running, true)
        };
        if start {
            // A task of its own: a client that goes away must not stall the others' writes.
            tokio::spawn(self.clone().flush(project));
        }
        rx.await
            .unwrap_or_else(|_| Err(DbError::Unavailable("the write was dropped".into())))
    }

    /// Commits the project's queued writes, a group at a time, until none are left.
    async fn flush(self, project: i64) {
        loop {
            let group = {
                let Ok(mut queues) = self.queues.lock() else {
                    return;
                };
                let Some(q) = queues.get_mut(&project) else {
                    return;
                };
                if q.pending.is_empty() {
                    queues.remove(&project);
                    return;
                }
                let n = q.pending.len().min(GROUP_MAX);
                q.pending.drain(..n).collect::<Vec<_>>()
            };
            let (mut writes, waiters): (Vec<_>, Vec<_>) = group.into_iter().unzip();
            self.transactions.fetch_add(1, Ordering::Relaxed);
            let line = |from_version, to_version, ops: &[Op]| {
                serde_json::to_string(&BatchLine {
                    from_version,
                    to_version,
                    ops,
                })
                .unwrap_or_default()
            };
            match self
                .db
                .write_group(project, &mut writes, line, super::feed::CHANNEL)
                .await
            {
                Ok(results) => {
                    if results.iter().any(|r| matches!(r, Ok((_, true)))) {
                        self.feed.poke(project);
                    }
                    for (waiter, result) in waiters.into_iter().zip(results) {
                        let _ = waiter.send(result);
                    }
                }
                Err(e) => {
                    let why = e.to_string();
                    for waiter in waiters {
                        let _ = waiter.send(Err(DbError::Unavailable(why.clone())));
                    }
                }
            }
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
