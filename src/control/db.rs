//! The control plane's storage: the only code that speaks SQL. A pool of connections
//! (deadpool over tokio-postgres), the migrations, and one function per statement, every
//! value a bound parameter. Table names come from [`table`] (a fixed name per model kind),
//! never from a request.

use crate::model::{Identity, Item, Kind, Op, Snapshot};
use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod};
use std::collections::HashMap;
use std::time::Duration;
use tokio_postgres::{IsolationLevel, NoTls};

/// A database failure. Connection trouble is worth a retry; the caller maps it to 503.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    #[error("database error: {0}")]
    Query(#[from] tokio_postgres::Error),
    #[error("a stored item does not decode: {0}")]
    Corrupt(String),
    #[error("bad database URL: {0}")]
    Url(String),
    /// The write conflicts with what is stored (a role id another role holds).
    #[error("{0}")]
    Conflict(String),
    /// The project moved past the version a write was planned at.
    #[error("the project changed meanwhile")]
    Moved,
}

impl From<deadpool_postgres::PoolError> for DbError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        DbError::Unavailable(e.to_string())
    }
}

/// The migrations, in order: (version, name, SQL).
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "init", include_str!("migrations/0001_init.sql")),
    (2, "role_ids", include_str!("migrations/0002_role_ids.sql")),
    (3, "orgs", include_str!("migrations/0003_orgs.sql")),
    (4, "url_mappings", include_str!("migrations/0004_url_mappings.sql")),
    (5, "rules", include_str!("migrations/0005_rules.sql")),
];

/// The pool, shared by every request of a replica.
#[derive(Clone)]
pub struct Db {
    pool: Pool,
    url: tokio_postgres::Config,
}

/// The project an API key reaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyProject {
    pub key_id: i64,
    pub project_id: i64,
    pub organisation: String,
    pub project: String,
    pub env: String,
}

/// One row of `permd control keys list`.
#[derive(Debug, Clone)]
pub struct KeyRow {
    pub id: i64,
    pub prefix: String,
    pub organisation: String,
    pub project: String,
    pub env: String,
    pub created_at: String,
    pub revoked_at: Option<String>,
}

/// One op as the database applies it: the kind's table, the identity, the body (absent:
/// a delete).
#[derive(Debug, Clone)]
struct StoredOp {
    kind: Kind,
    ident: String,
    body: Option<String>,
}

/// The table of a model kind.
pub fn table(kind: Kind) -> &'static str {
    match kind {
        Kind::Org => "orgs",
        Kind::ResourceType => "resource_types",
        Kind::Role => "roles",
        Kind::User => "users",
        Kind::Resource => "resources",
        Kind::RoleAssignment => "role_assignments",
        Kind::RoleGrant => "role_grants",
        Kind::Menu => "menus",
        Kind::Rule => "rules",
        Kind::UrlMapping => "url_mappings",
    }
}

/// The identity of an item as stored: canonical JSON of its identity fields (keys sorted).
pub fn ident(id: &Identity) -> String {
    id.to_value().to_string()
}

impl Db {
    /// A pool of at most `max` connections to `url`; connects lazily.
    pub fn connect(url: &str, max: usize) -> Result<Db, DbError> {
        let cfg: tokio_postgres::Config = url
            .parse()
            .map_err(|e: tokio_postgres::Error| DbError::Url(e.to_string()))?;
        let mgr = Manager::from_config(
            cfg.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(mgr)
            .max_size(max)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(5)))
            .create_timeout(Some(Duration::from_secs(5)))
            .build()
            .map_err(|e| DbError::Url(e.to_string()))?;
        Ok(Db { pool, url: cfg })
    }

    /// A connection of its own, outside the pool (the change-feed listener), and the task that
    /// drives it; its notifications arrive on the returned channel.
    pub async fn listen(
        &self,
        channel: &'static str,
    ) -> Result<(tokio_postgres::Client, tokio::sync::mpsc::UnboundedReceiver<String>), DbError> {
        let (client, mut conn) = self.url.connect(NoTls).await?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                    Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
                        if tx.send(n.payload().to_string()).is_err() {
                            break;
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "change listener connection failed");
                        break;
                    }
                    None => break,
                }
            }
        });
        client.batch_execute(&format!("LISTEN {channel}")).await?;
        Ok((client, rx))
    }

    /// Creates or upgrades the schema; replicas starting together take turns (advisory lock).
    pub async fn migrate(&self) -> Result<Vec<i32>, DbError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock(7780)", &[]).await?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS permd_migrations (
                version int PRIMARY KEY,
                name text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await?;
        let done: Vec<i32> = tx
            .query("SELECT version FROM permd_migrations", &[])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut applied = Vec::new();
        for (version, name, sql) in MIGRATIONS {
            if done.contains(version) {
                continue;
            }
            tx.batch_execute(sql).await?;
            tx.execute(
                "INSERT INTO permd_migrations (version, name) VALUES ($1, $2)",
                &[version, name],
            )
            .await?;
            applied.push(*version);
        }
        tx.commit().await?;
        Ok(applied)
    }

    /// `SELECT 1`: readiness.
    pub async fn ping(&self) -> Result<(), DbError> {
        let client = self.pool.get().await?;
        client.execute("SELECT 1", &[]).await?;
        Ok(())
    }

    /// Creates the organisation and project when absent and a key for the project.
    pub async fn create_key(
        &self,
        organisation: &str,
        project: &str,
        env: &str,
        key_hash: &[u8],
        prefix: &str,
    ) -> Result<i64, DbError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "INSERT INTO organisations (name) VALUES ($1) ON CONFLICT (name) DO NOTHING",
            &[&organisation],
        )
        .await?;
        tx.execute(
            "INSERT INTO projects (organisation_id, name, env)
             SELECT id, $2, $3 FROM organisations WHERE name = $1
             ON CONFLICT (organisation_id, name, env) DO NOTHING",
            &[&organisation, &project, &env],
        )
        .await?;
        let row = tx
            .query_one(
                "INSERT INTO api_keys (project_id, key_hash, prefix)
                 SELECT p.id, $4, $5 FROM projects p JOIN organisations o ON o.id = p.organisation_id
                 WHERE o.name = $1 AND p.name = $2 AND p.env = $3
                 RETURNING id",
                &[&organisation, &project, &env, &key_hash, &prefix],
            )
            .await?;
        tx.commit().await?;
        Ok(row.get(0))
    }

    /// Keys, newest first, of one organisation or all.
    pub async fn list_keys(&self, organisation: Option<&str>) -> Result<Vec<KeyRow>, DbError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT k.id, k.prefix, o.name, p.name, p.env, k.created_at::text, k.revoked_at::text
                 FROM api_keys k JOIN projects p ON p.id = k.project_id
                 JOIN organisations o ON o.id = p.organisation_id
                 WHERE $1::text IS NULL OR o.name = $1
                 ORDER BY k.id DESC",
                &[&organisation],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| KeyRow {
                id: r.get(0),
                prefix: r.get(1),
                organisation: r.get(2),
                project: r.get(3),
                env: r.get(4),
                created_at: r.get(5),
                revoked_at: r.get(6),
            })
            .collect())
    }

    /// Revokes a key by id; false when no such key is live.
    pub async fn revoke_key(&self, id: i64) -> Result<bool, DbError> {
        let client = self.pool.get().await?;
        let n = client
            .execute(
                "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL",
                &[&id],
            )
            .await?;
        Ok(n == 1)
    }

    /// The live key with this hash, and its project.
    pub async fn key_project(&self, key_hash: &[u8]) -> Result<Option<KeyProject>, DbError> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(
                "SELECT k.id, p.id, o.name, p.name, p.env
                 FROM api_keys k JOIN projects p ON p.id = k.project_id
                 JOIN organisations o ON o.id = p.organisation_id
                 WHERE k.key_hash = $1 AND k.revoked_at IS NULL",
            )
            .await?;
        let row = client.query_opt(&stmt, &[&key_hash]).await?;
        Ok(row.map(|r| KeyProject {
            key_id: r.get(0),
            project_id: r.get(1),
            organisation: r.get(2),
            project: r.get(3),
            env: r.get(4),
        }))
    }

    /// The project's current version.
    pub async fn version(&self, project: i64) -> Result<u64, DbError> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached("SELECT version FROM projects WHERE id = $1")
            .await?;
        let row = client.query_one(&stmt, &[&project]).await?;
        Ok(as_version(row.get(0)))
    }

    /// Current versions of several projects (the polling fallback).
    pub async fn versions(&self, projects: &[i64]) -> Result<Vec<(i64, u64)>, DbError> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached("SELECT id, version FROM projects WHERE id = ANY($1)")
            .await?;
        let rows = client.query(&stmt, &[&projects]).await?;
        Ok(rows.iter().map(|r| (r.get(0), as_version(r.get(1)))).collect())
    }

    /// Batches of a project after `since`, oldest first, at most `limit`.
    pub async fn changes_after(&self, project: i64, since: u64, limit: i64) -> Result<Vec<(u64, String)>, DbError> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(
                "SELECT version, batch FROM changes WHERE project_id = $1 AND version > $2
                 ORDER BY version LIMIT $3",
            )
            .await?;
        let rows = client.query(&stmt, &[&project, &as_db(since), &limit]).await?;
        Ok(rows.iter().map(|r| (as_version(r.get(0)), r.get(1))).collect())
    }

    /// Whether the batch at `version` is still kept.
    pub async fn has_change(&self, project: i64, version: u64) -> Result<bool, DbError> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached("SELECT 1 FROM changes WHERE project_id = $1 AND version = $2")
            .await?;
        Ok(client.query_opt(&stmt, &[&project, &as_db(version)]).await?.is_some())
    }

    /// Drops batches older than `retention`; returns how many.
    pub async fn prune_changes(&self, retention: Duration) -> Result<u64, DbError> {
        let client = self.pool.get().await?;
        let secs = retention.as_secs_f64();
        Ok(client
            .execute(
                "DELETE FROM changes WHERE created_at < now() - make_interval(secs => $1)",
                &[&secs],
            )
            .await?)
    }

    /// The project's state in one consistent read: every item in document order, and the
    /// version it is at.
    pub async fn snapshot(&self, project: i64) -> Result<Snapshot, DbError> {
        let mut client = self.pool.get().await?;
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let row = tx
            .query_one("SELECT version FROM projects WHERE id = $1", &[&project])
            .await?;
        let version = as_version(row.get(0));
        let mut stmts = Vec::with_capacity(Kind::ALL.len());
        for kind in Kind::ALL {
            stmts.push(tx.prepare_cached(select_items_sql(kind)).await?);
        }
        // The eight reads pipelined on the connection, decoded off the runtime.
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&project];
        let rows = futures_util::future::try_join_all(stmts.iter().map(|s| tx.query(s, &params))).await?;
        tx.commit().await?;
        tokio::task::spawn_blocking(move || decode_snapshot(version, rows))
            .await
            .map_err(|e| DbError::Corrupt(e.to_string()))?
    }

    /// Several writes of one project committed together (group commit: one transaction, one
    /// WAL flush for all of them). Locks the project; then each write, in order, under its own
    /// savepoint: refused with [`DbError::Moved`] if `expected` is set and the project is no
    /// longer there; every role upsert without an `id` gets its stored id or a new one; its
    /// ops are applied in order; if any row changed, its batch (the JSON line `line(from, to,
    /// ops)` gives) is appended at the next version, else it makes no version. A write that
    /// fails rolls back to its savepoint and the others go on. One notification on `channel`
    /// for the lot. Returns one result per write: (version, whether it made a batch). If the
    /// commit itself fails, every write fails and nothing is stored.
    pub async fn write_group(
        &self,
        project: i64,
        writes: &mut [GroupWrite],
        line: impl Fn(u64, u64, &[Op]) -> String,
        channel: &str,
    ) -> Result<Vec<Result<(u64, bool), DbError>>, DbError> {
        let mut client = self.pool.get().await?;
        let mut tx = client.transaction().await?;
        let lock = tx
            .prepare_cached("SELECT version FROM projects WHERE id = $1 FOR UPDATE")
            .await?;
        let first = as_version(tx.query_one(&lock, &[&project]).await?.get(0));
        let mut current = first;
        let mut results = Vec::with_capacity(writes.len());
        for w in writes.iter_mut() {
            if w.expected.is_some_and(|v| v != current) {
                results.push(Err(DbError::Moved));
                continue;
            }
            let sp = tx.savepoint("w").await?;
            match apply(&sp, project, current, &mut w.ops, &line).await {
                Ok(Some(next)) => {
                    sp.commit().await?;
                    current = next;
                    results.push(Ok((next, true)));
                }
                Ok(None) => {
                    sp.rollback().await?;
                    results.push(Ok((current, false)));
                }
                Err(e) => {
                    // A failed statement aborts the savepoint; the rest of the group goes on.
                    sp.rollback().await?;
                    results.push(Err(e));
                }
            }
        }
        if current == first {
            tx.rollback().await?;
            return Ok(results);
        }
        let bump = tx
            .prepare_cached("UPDATE projects SET version = $2 WHERE id = $1")
            .await?;
        let notify = tx.prepare_cached("SELECT pg_notify($1, $2)").await?;
        let project_text = project.to_string();
        tx.execute(&bump, &[&project, &as_db(current)]).await?;
        tx.execute(&notify, &[&channel, &project_text]).await?;
        tx.commit().await?;
        Ok(results)
    }
}

/// One write of a group: the ops, and the version they were planned at, if any.
#[derive(Debug)]
pub struct GroupWrite {
    pub expected: Option<u64>,
    pub ops: Vec<Op>,
}

/// Applies one write's ops at version `current` inside `tx`: the next version when a row
/// changed (its batch appended), `None` when nothing did.
async fn apply(
    tx: &deadpool_postgres::Transaction<'_>,
    project: i64,
    current: u64,
    ops: &mut [Op],
    line: &impl Fn(u64, u64, &[Op]) -> String,
) -> Result<Option<u64>, DbError> {
    role_ids(tx, project, ops).await?;
    let stored: Vec<StoredOp> = ops.iter().map(stored).collect::<Result<_, _>>()?;
    // Sent in order on one connection (pipelined), executed in order by the server.
    let mut pending = Vec::with_capacity(stored.len());
    for op in &stored {
        let stmt = match op.body {
            Some(_) => tx.prepare_cached(upsert_sql(op.kind)).await?,
            None => tx.prepare_cached(delete_sql(op.kind)).await?,
        };
        pending.push((stmt, &op.ident, &op.body));
    }
    let runs = pending.iter().map(|(stmt, ident, body)| async {
        match body {
            Some(body) => tx.execute(stmt, &[&project, ident, body]).await,
            None => tx.execute(stmt, &[&project, ident]).await,
        }
    });
    let changed = futures_util::future::try_join_all(runs).await?.iter().any(|n| *n > 0);
    if !changed {
        return Ok(None);
    }
    let next = current + 1;
    let insert = tx
        .prepare_cached("INSERT INTO changes (project_id, version, batch) VALUES ($1, $2, $3)")
        .await?;
    tx.execute(&insert, &[&project, &as_db(next), &line(current, next, ops)])
        .await?;
    Ok(Some(next))
}

/// The document of `version` from the rows of each kind (in `Kind::ALL` order), each body
/// decoded straight into its type. Identities are unique in a table: items are appended, no
/// search.
fn decode_snapshot(version: u64, rows: Vec<Vec<tokio_postgres::Row>>) -> Result<Snapshot, DbError> {
    fn typed<T: serde::de::DeserializeOwned>(kind: Kind, rows: &[tokio_postgres::Row]) -> Result<Vec<T>, DbError> {
        rows.iter()
            .map(|r| {
                serde_json::from_str(r.get::<_, &str>(0)).map_err(|e| DbError::Corrupt(format!("{}: {e}", table(kind))))
            })
            .collect()
    }
    let mut snap = Snapshot {
        format: 1,
        version,
        ..Snapshot::default()
    };
    for (kind, rows) in Kind::ALL.into_iter().zip(&rows) {
        match kind {
            Kind::Org => snap.orgs = typed(kind, rows)?,
            Kind::ResourceType => snap.resource_types = typed(kind, rows)?,
            Kind::Role => snap.roles = typed(kind, rows)?,
            Kind::User => snap.users = typed(kind, rows)?,
            Kind::Resource => snap.resources = typed(kind, rows)?,
            Kind::RoleAssignment => snap.role_assignments = typed(kind, rows)?,
            Kind::RoleGrant => snap.role_grants = typed(kind, rows)?,
            Kind::Menu => snap.menus = typed(kind, rows)?,
            Kind::Rule => snap.rules = typed(kind, rows)?,
            Kind::UrlMapping => snap.url_mappings = typed(kind, rows)?,
        }
    }
    Ok(snap)
}

/// Fills in the `id` of role upserts that have none (the stored role's, else a new one) and
/// refuses an `id` that another role of the project holds.
async fn role_ids(tx: &deadpool_postgres::Transaction<'_>, project: i64, ops: &mut [Op]) -> Result<(), DbError> {
    let mut in_batch: HashMap<u32, String> = HashMap::new();
    for (i, op) in ops.iter_mut().enumerate() {
        let Op::Upsert(Item::Role(role)) = op else {
            continue;
        };
        let ident = ident(&Identity::Role {
            key: role.key.clone(),
            org: role.org.clone(),
        });
        let id = match role.id {
            Some(id) => {
                let other = tx
                    .prepare_cached(
                        "SELECT 1 FROM roles WHERE project_id = $1 AND ident <> $2
                         AND (body::jsonb ->> 'id')::bigint = $3",
                    )
                    .await?;
                if tx
                    .query_opt(&other, &[&project, &ident, &i64::from(id)])
                    .await?
                    .is_some()
                {
                    return Err(DbError::Conflict(format!(
                        "ops[{i}].value.id: role id `{id}` is held by another role"
                    )));
                }
                id
            }
            None => {
                let stored = tx
                    .prepare_cached(
                        "SELECT (body::jsonb ->> 'id')::bigint FROM roles WHERE project_id = $1 AND ident = $2",
                    )
                    .await?;
                let kept: Option<i64> = tx.query_opt(&stored, &[&project, &ident]).await?.and_then(|r| r.get(0));
                let id = match kept {
                    Some(id) => id,
                    None => tx.query_one("SELECT nextval('role_ids')", &[]).await?.get(0),
                };
                u32::try_from(id).map_err(|_| DbError::Corrupt(format!("role id `{id}` out of range")))?
            }
        };
        if in_batch.get(&id).is_some_and(|other| *other != ident) {
            return Err(DbError::Conflict(format!(
                "ops[{i}].value.id: role id `{id}` is given to two roles in this batch"
            )));
        }
        in_batch.insert(id, ident);
        role.id = Some(id);
    }
    Ok(())
}

/// An op as the database applies it.
fn stored(op: &Op) -> Result<StoredOp, DbError> {
    Ok(match op {
        Op::Upsert(item) => StoredOp {
            kind: item.kind(),
            ident: ident(&item.identity()),
            body: Some(
                item.to_value()
                    .map_err(|e| DbError::Corrupt(e.to_string()))?
                    .to_string(),
            ),
        },
        Op::Delete(id) => StoredOp {
            kind: id.kind(),
            ident: ident(id),
            body: None,
        },
    })
}

fn as_version(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn as_db(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

macro_rules! per_kind {
    ($kind:expr, $head:literal, $tail:literal) => {
        match $kind {
            Kind::Org => concat!($head, "orgs", $tail),
            Kind::ResourceType => concat!($head, "resource_types", $tail),
            Kind::Role => concat!($head, "roles", $tail),
            Kind::User => concat!($head, "users", $tail),
            Kind::Resource => concat!($head, "resources", $tail),
            Kind::RoleAssignment => concat!($head, "role_assignments", $tail),
            Kind::RoleGrant => concat!($head, "role_grants", $tail),
            Kind::Menu => concat!($head, "menus", $tail),
            Kind::Rule => concat!($head, "rules", $tail),
            Kind::UrlMapping => concat!($head, "url_mappings", $tail),
        }
    };
}

/// Inserts, or replaces a different body in place (keeping `seq`); affects no row when equal.
fn upsert_sql(kind: Kind) -> &'static str {
    per_kind!(
        kind,
        "INSERT INTO ",
        " AS t (project_id, ident, body) VALUES ($1, $2, $3)
         ON CONFLICT (project_id, ident) DO UPDATE SET body = EXCLUDED.body
         WHERE t.body IS DISTINCT FROM EXCLUDED.body"
    )
}

fn delete_sql(kind: Kind) -> &'static str {
    per_kind!(kind, "DELETE FROM ", " WHERE project_id = $1 AND ident = $2")
}

fn select_items_sql(kind: Kind) -> &'static str {
    per_kind!(kind, "SELECT body FROM ", " WHERE project_id = $1 ORDER BY seq")
}

// --- The organisation faces (src/control/orgs/): perms.io organisations, projects, API keys
// and invitations (seed 000), and the audit log of deletes (seeds 001 and 004). One function
// per statement, every value a bound parameter. Timestamps are RFC 3339 in UTC.

/// An organisation of seed 000 (`organisations`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrganisationRow {
    pub id: i64,
    pub name: String,
    pub created_at: String,
}

/// A project/environment of an organisation (`projects`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectRow {
    pub id: i64,
    pub name: String,
    pub env: String,
    pub organisation_id: i64,
    pub version: u64,
    pub created_at: String,
}

/// An API key's metadata (never its hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRow {
    pub id: i64,
    pub prefix: String,
    pub project_name: String,
    pub env: String,
    pub created_at: String,
    pub revoked_at: Option<String>,
}

/// One row of the organisation faces' audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry<'a> {
    pub project_id: i64,
    pub key_id: i64,
    pub actor: Option<&'a str>,
    pub action: &'a str,
    pub target: &'a str,
    pub outcome: &'a str,
    pub version: Option<u64>,
}

impl Db {
    /// The organisation named `name`.
    pub async fn organisation_by_name(&self, name: &str) -> Result<Option<OrganisationRow>, DbError> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(
                "SELECT id, name, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')
                 FROM organisations WHERE name = $1",
            )
            .await?;
        Ok(client.query_opt(&stmt, &[&name]).await?.map(|r| OrganisationRow {
            id: r.get(0),
            name: r.get(1),
            created_at: r.get(2),
        }))
    }

    /// The environments of project `name` in an organisation (one, or none with `env`), by id.
    pub async fn organisation_project(
        &self,
        organisation: i64,
        name: &str,
        env: Option<&str>,
    ) -> Result<Vec<ProjectRow>, DbError> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(
                "SELECT id, name, env, organisation_id, version,
                        to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')
                 FROM projects WHERE organisation_id = $1 AND name = $2 AND ($3::text IS NULL OR env = $3)
                 ORDER BY id",
            )
            .await?;
        let rows = client.query(&stmt, &[&organisation, &name, &env]).await?;
        Ok(rows.iter().map(project_row).collect())
    }

    /// Projects of an organisation with an id above `after`, by id, at most `limit`; with
    /// `search`, only those whose name contains it (case-insensitive, no wildcards).
    pub async fn organisation_projects(
        &self,
        organisation: i64,
        after: i64,
        limit: i64,
        search: Option<&str>,
    ) -> Result<Vec<ProjectRow>, DbError> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(
                "SELECT id, name, env, organisation_id, version,
                        to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')
                 FROM projects
                 WHERE organisation_id = $1 AND id > $2
                   AND ($4::text IS NULL OR strpos(lower(name), lower($4)) > 0)
                 ORDER BY id LIMIT $3",
            )
            .await?;
        let rows = client.query(&stmt, &[&organisation, &after, &limit, &search]).await?;
        Ok(rows.iter().map(project_row).collect())
    }

    /// The keys (live and revoked) of project `name` in an organisation, oldest first.
    pub async fn organisation_api_keys(
        &self,
        organisation: i64,
        name: &str,
        env: Option<&str>,
    ) -> Result<Vec<ApiKeyRow>, DbError> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(
                "SELECT k.id, k.prefix, p.name, p.env,
                        to_char(k.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'),
                        to_char(k.revoked_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')
                 FROM api_keys k JOIN projects p ON p.id = k.project_id
                 WHERE p.organisation_id = $1 AND p.name = $2 AND ($3::text IS NULL OR p.env = $3)
                 ORDER BY k.id",
            )
            .await?;
        let rows = client.query(&stmt, &[&organisation, &name, &env]).await?;
        Ok(rows
            .iter()
            .map(|r| ApiKeyRow {
                id: r.get(0),
                prefix: r.get(1),
                project_name: r.get(2),
                env: r.get(3),
                created_at: r.get(4),
                revoked_at: r.get(5),
            })
            .collect())
    }

    /// Records an invitation of `email` to an organisation (again: refreshes its time);
    /// returns when it was made.
    pub async fn invite_to_organisation(&self, organisation: i64, email: &str, key_id: i64) -> Result<String, DbError> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(
                "INSERT INTO organisation_invites AS i (organisation_id, email, invited_by_key) VALUES ($1, $2, $3)
                 ON CONFLICT (organisation_id, lower(email))
                 DO UPDATE SET email = EXCLUDED.email, invited_by_key = EXCLUDED.invited_by_key, invited_at = now()
                 RETURNING to_char(i.invited_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
            )
            .await?;
        Ok(client.query_one(&stmt, &[&organisation, &email, &key_id]).await?.get(0))
    }

    /// Appends one row to the organisation faces' audit log.
    pub async fn audit(&self, e: &AuditEntry<'_>) -> Result<(), DbError> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(
                "INSERT INTO org_audit (project_id, key_id, actor, action, target, outcome, version)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .await?;
        let version = e.version.map(as_db);
        client
            .execute(
                &stmt,
                &[
                    &e.project_id,
                    &e.key_id,
                    &e.actor,
                    &e.action,
                    &e.target,
                    &e.outcome,
                    &version,
                ],
            )
            .await?;
        Ok(())
    }
}

fn project_row(r: &tokio_postgres::Row) -> ProjectRow {
    ProjectRow {
        id: r.get(0),
        name: r.get(1),
        env: r.get(2),
        organisation_id: r.get(3),
        version: as_version(r.get(4)),
        created_at: r.get(5),
    }
}
