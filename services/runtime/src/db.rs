//! Storage: one sqlx `Any` pool per process, on SQLite (embedded default) or PostgreSQL.
//!
//! Every service writes its SQL once, in the dialect both engines share (`$1` placeholders,
//! `RETURNING`, `ON CONFLICT`, partial unique indexes, integers for times and flags), and the
//! same contract tests run it on both. Where the engines differ (locks, auto-increment, DDL) the
//! code asks [`Db::backend`]. Correctness lives in the database: unique constraints and
//! conditional updates, never check-then-write in Rust.
//!
//! On SQLite there is exactly one writer connection (SQLite has one writer anyway; a single
//! connection avoids lock-upgrade deadlocks) and a pool of read-only connections in WAL mode;
//! write transactions share commits ([group commit](crate::group_commit): one fsync for all the
//! transactions that finished while the previous commit was on its way to disk). On PostgreSQL
//! both are the same pool and a [`Tx`] is an ordinary transaction.

use crate::group_commit::{GroupTx, GroupWriter};
use anyhow::Context as _;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{Any, AnyConnection, AnyPool, Executor as _, Transaction};
use std::sync::Arc;
use std::{str::FromStr, time::Duration};
use tokio::sync::Notify;
use tracing::Instrument as _;

mod multirow;
mod scratch;
pub use multirow::{MultiRow, rows_by_ids};
pub use scratch::{create_database, drop_database, drop_database_blocking, with_database};

/// A write transaction: derefs to its connection (`&mut **tx` is an executor); commit with
/// [`Tx::commit`], or drop (or [`Tx::rollback`]) to roll back.
///
/// Writes that nothing in the transaction reads back — outbox rows, audit rows, the stored
/// idempotent answer, a new appointment — are [deferred](Tx::defer) to the commit, where PostgreSQL runs them all
/// as one statement (data-modifying CTEs): one round trip instead of one each.
///
/// A commit that wrote outbox events ([`Defer::defer_event`]) wakes the relay
/// ([`Db::events_committed`]); one that wrote none does not.
pub struct Tx {
    kind: TxKind,
    deferred: Vec<Deferred>,
    events_committed: Arc<Notify>,
}

/// A write held back until commit: `sql` numbers its placeholders from `$1`.
struct Deferred {
    sql: &'static str,
    values: Vec<Value>,
    /// An outbox row: its commit wakes the relay.
    event: bool,
}

/// Whether any of `deferred` is an outbox row.
fn any_event(deferred: &[Deferred]) -> bool {
    deferred.iter().any(|d| d.event)
}

/// A value bound to a statement built at run time (a deferred write, a multi-row insert).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Value {
    /// TEXT.
    Text(String),
    /// BIGINT / INTEGER.
    Int(i64),
    /// BYTEA / BLOB.
    Bytes(Vec<u8>),
    /// BIGINT / INTEGER or NULL.
    IntOrNull(Option<i64>),
    /// TEXT or NULL.
    TextOrNull(Option<String>),
}

impl From<Option<&str>> for Value {
    fn from(v: Option<&str>) -> Self {
        Value::TextOrNull(v.map(str::to_owned))
    }
}

impl From<Option<i64>> for Value {
    fn from(v: Option<i64>) -> Self {
        Value::IntOrNull(v)
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_owned())
    }
}

impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}

impl From<Vec<u8>> for Value {
    fn from(v: Vec<u8>) -> Self {
        Value::Bytes(v)
    }
}

/// `sql` with each placeholder `$n` renumbered to `$(n + offset)`.
fn shift_placeholders(sql: &str, offset: usize) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut chars = sql.char_indices().peekable();
    while let Some((_, c)) = chars.next() {
        out.push(c);
        if c != '$' {
            continue;
        }
        let mut n = 0usize;
        let mut digits = false;
        while let Some(&(_, d)) = chars.peek() {
            let Some(v) = d.to_digit(10) else { break };
            n = n * 10 + v as usize;
            digits = true;
            chars.next();
        }
        if digits {
            out.push_str(&(n + offset).to_string());
        }
    }
    out
}

/// The deferred writes as one statement (PostgreSQL): `WITH d0 AS (…), d1 AS (…) SELECT 1`.
fn combined(deferred: &[Deferred]) -> String {
    let mut sql = String::from("WITH ");
    let mut offset = 0;
    for (i, d) in deferred.iter().enumerate() {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&format!("d{i} AS ({})", shift_placeholders(d.sql, offset)));
        offset += d.values.len();
    }
    sql.push_str(" SELECT 1");
    sql
}

/// Binds `values` to `q` in order.
pub fn bind_values<'q>(
    mut q: sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>>,
    values: Vec<Value>,
) -> sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>> {
    for v in values {
        q = match v {
            Value::Text(t) => q.bind(t),
            Value::Int(i) => q.bind(i),
            Value::Bytes(b) => q.bind(b),
            Value::IntOrNull(i) => q.bind(i),
            Value::TextOrNull(t) => q.bind(t),
        };
    }
    q
}

enum TxKind {
    Postgres(Transaction<'static, Any>),
    Sqlite(GroupTx),
}

/// Something that holds writes back until it commits: a [`Tx`] or [`Writes`].
pub trait Defer {
    /// Holds back a write that nothing before the commit reads back (an INSERT or UPDATE,
    /// placeholders `$1`…`$n` for `values`). Its errors surface at commit.
    fn defer(&mut self, sql: &'static str, values: Vec<Value>);

    /// [`Defer::defer`] of an outbox row ([`crate::outbox::enqueue`]): once committed, the
    /// relay is woken ([`Db::events_committed`]).
    fn defer_event(&mut self, sql: &'static str, values: Vec<Value>);
}

impl Defer for Tx {
    fn defer(&mut self, sql: &'static str, values: Vec<Value>) {
        self.deferred.push(Deferred {
            sql,
            values,
            event: false,
        });
    }

    fn defer_event(&mut self, sql: &'static str, values: Vec<Value>) {
        self.deferred.push(Deferred {
            sql,
            values,
            event: true,
        });
    }
}

/// A write transaction made only of deferred writes (a row with its outbox event and audit row,
/// say): on PostgreSQL one autocommit statement — one round trip, where a [`Tx`] takes BEGIN,
/// the statement and COMMIT; on SQLite a transaction of the commit group. Nothing is written
/// until [`Writes::commit`]; dropping it writes nothing.
pub struct Writes {
    db: Db,
    deferred: Vec<Deferred>,
}

impl Defer for Writes {
    fn defer(&mut self, sql: &'static str, values: Vec<Value>) {
        self.deferred.push(Deferred {
            sql,
            values,
            event: false,
        });
    }

    fn defer_event(&mut self, sql: &'static str, values: Vec<Value>) {
        self.deferred.push(Deferred {
            sql,
            values,
            event: true,
        });
    }
}

impl Writes {
    /// Writes everything, atomically.
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        if self.db.group.is_some() {
            let mut tx = self.db.begin().await?;
            tx.deferred = self.deferred;
            return tx.commit().await;
        }
        let events = any_event(&self.deferred);
        let n = self.deferred.len();
        let (sql, values) = match n {
            0 => return Ok(()),
            1 => {
                let d = self.deferred.into_iter().next().expect("one write");
                (d.sql.to_owned(), d.values)
            }
            _ => (
                combined(&self.deferred),
                self.deferred.into_iter().flat_map(|d| d.values).collect(),
            ),
        };
        bind_values(sqlx::query(&sql), values)
            .execute(&self.db.write)
            .instrument(tracing::info_span!(
                "db.writes",
                otel.name = "acquire connection and write",
                econsult.db.deferred_writes = n,
            ))
            .await?;
        if events {
            self.db.events_committed.notify_one();
        }
        Ok(())
    }
}

impl Tx {
    fn new(kind: TxKind, events_committed: Arc<Notify>) -> Self {
        Tx {
            kind,
            deferred: Vec::new(),
            events_committed,
        }
    }

    /// The values of the writes deferred so far with the statement `sql` (the access-log rows
    /// of a call, say, stored with its idempotent answer).
    pub fn deferred_values<'a>(&'a self, sql: &'a str) -> impl Iterator<Item = &'a [Value]> {
        self.deferred
            .iter()
            .filter(move |d| d.sql == sql)
            .map(|d| d.values.as_slice())
    }

    /// Runs the deferred writes: on PostgreSQL as one statement, on SQLite one by one (no
    /// round trips there, and SQLite has no data-modifying CTEs).
    async fn flush(&mut self) -> Result<(), sqlx::Error> {
        let deferred = std::mem::take(&mut self.deferred);
        let postgres = matches!(self.kind, TxKind::Postgres(_));
        match (postgres, deferred.len()) {
            (_, 0) => Ok(()),
            (true, n) if n > 1 => {
                let sql = combined(&deferred);
                let values = deferred.into_iter().flat_map(|d| d.values).collect();
                bind_values(sqlx::query(&sql), values)
                    .execute(&mut **self)
                    .await?;
                Ok(())
            }
            _ => {
                for d in deferred {
                    bind_values(sqlx::query(d.sql), d.values)
                        .execute(&mut **self)
                        .await?;
                }
                Ok(())
            }
        }
    }

    /// Runs the deferred writes and commits; on SQLite returns once the transaction's commit
    /// group is on disk. Wakes the relay if the transaction wrote outbox events.
    pub async fn commit(mut self) -> Result<(), sqlx::Error> {
        let events = any_event(&self.deferred);
        let span = tracing::info_span!(
            "db.commit",
            otel.name = match self.kind {
                TxKind::Postgres(_) => "deferred writes and COMMIT",
                TxKind::Sqlite(_) => "deferred writes and group commit",
            },
            econsult.db.deferred_writes = self.deferred.len(),
        );
        let wake = self.events_committed.clone();
        async move {
            self.flush().await?;
            match self.kind {
                TxKind::Postgres(t) => t.commit().await,
                TxKind::Sqlite(t) => t.commit().await,
            }
        }
        .instrument(span)
        .await?;
        if events {
            wake.notify_one();
        }
        Ok(())
    }

    /// Rolls back.
    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        match self.kind {
            TxKind::Postgres(t) => t.rollback().await,
            TxKind::Sqlite(t) => t.rollback().await,
        }
    }
}

impl std::ops::Deref for Tx {
    type Target = AnyConnection;
    fn deref(&self) -> &AnyConnection {
        match &self.kind {
            TxKind::Postgres(t) => t,
            TxKind::Sqlite(t) => t,
        }
    }
}

impl std::ops::DerefMut for Tx {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        match &mut self.kind {
            TxKind::Postgres(t) => t,
            TxKind::Sqlite(t) => t,
        }
    }
}

/// The file of a `sqlite:` URL (`None` for an in-memory database).
fn sqlite_file(url: &str) -> Option<std::path::PathBuf> {
    let rest = url.strip_prefix("sqlite:")?;
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let path = rest.split('?').next().unwrap_or_default();
    (!path.is_empty() && !path.contains(":memory:")).then(|| std::path::PathBuf::from(path))
}

/// Creates the database file readable and writable by its owner only (0600), or narrows an
/// existing one to that: it holds identity numbers and health messages. SQLite gives the
/// `-wal` and `-shm` files the database file's permissions; existing ones are narrowed too.
fn private_file(path: &std::path::Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)?;
        for suffix in ["", "-wal", "-shm"] {
            let p = std::path::PathBuf::from(format!("{}{suffix}", path.display()));
            if p.exists() {
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))?;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Which engine a [`Db`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite file, single process.
    Sqlite,
    /// PostgreSQL server, any number of processes.
    Postgres,
}

/// The database of a process.
#[derive(Clone, Debug)]
pub struct Db {
    backend: Backend,
    write: AnyPool,
    read: AnyPool,
    /// SQLite: the group-committing writer over `write`.
    group: Option<Arc<GroupWriter>>,
    /// Notified after each commit that wrote outbox events (see [`Db::events_committed`]).
    events_committed: Arc<Notify>,
}

/// Default pool size of [`Db::connect`].
pub const DEFAULT_MAX_CONNECTIONS: u32 = 16;

/// The grants of [`Db::grant_service_role`] (`role` already checked to be a plain name).
fn service_role_grants(role: &str) -> [String; 7] {
    [
        format!("GRANT USAGE ON SCHEMA public TO {role}"),
        format!("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}"),
        format!("GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO {role}"),
        format!(
            "REVOKE UPDATE, DELETE, TRUNCATE ON audit_log, consultation_messages, consultation_attachments FROM {role}"
        ),
        format!("REVOKE DELETE, TRUNCATE ON consultation_threads FROM {role}"),
        format!("GRANT UPDATE (chain_seq, hash) ON audit_log TO {role}"),
        format!("REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON _sqlx_migrations FROM {role}"),
    ]
}

static SQLITE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The pragmas of SQLite's writing connection: WAL, an fsync per commit (of a group), a busy
/// wait, foreign keys. The load test's floor opens its SQLite connection with the same.
pub const SQLITE_WRITER_PRAGMAS: &str = "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
     PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON;";

/// How long a pooled PostgreSQL connection may have been idle and still be handed out without
/// a ping first.
const PING_AFTER_IDLE: Duration = Duration::from_secs(1);

/// Whether a PostgreSQL connection idle for `idle_for` is pinged before it is handed out: one
/// that has been idle longer may have been closed by a restart, a failover or a proxy since
/// (a failed ping closes it and the pool takes another). Under load connections come back
/// within milliseconds, and a ping on every acquire was a round trip per transaction and per
/// read (sqlx's default, `test_before_acquire`). A connection closed less than this after its
/// last use fails the call that gets it (a transient error: UNAVAILABLE), as a call in flight
/// on it would have. sqlx still pings every connection returned to the pool, whatever this
/// says: its guard against one left mid-protocol by a cancelled call.
fn stale(idle_for: Duration) -> bool {
    idle_for > PING_AFTER_IDLE
}

impl Db {
    /// Connects to `url`: `sqlite://path/to/file.db` (created if missing) or `postgres://…`,
    /// with the default pool size ([`DEFAULT_MAX_CONNECTIONS`]).
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        Self::connect_with(url, DEFAULT_MAX_CONNECTIONS).await
    }

    /// [`Db::connect`] with at most `max_connections` connections (PostgreSQL: the pool;
    /// SQLite: the read pool, besides its single writer).
    pub async fn connect_with(url: &str, max_connections: u32) -> anyhow::Result<Self> {
        let max_connections = max_connections.max(1);
        sqlx::any::install_default_drivers();
        if url.starts_with("sqlite:") {
            crate::telemetry::db::set_system("sqlite");
            if let Some(path) = sqlite_file(url) {
                private_file(&path).with_context(|| {
                    format!("make {} readable by its owner only", path.display())
                })?;
            }
            let rw = with_param(url, "mode=rwc");
            // A connection to a file cannot go stale while idle: no ping before each use (a
            // round trip to the connection's worker thread).
            let write = AnyPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(Duration::from_secs(10))
                .test_before_acquire(false)
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        conn.execute(SQLITE_WRITER_PRAGMAS).await?;
                        Ok(())
                    })
                })
                .connect_with(AnyConnectOptions::from_str(&rw)?)
                .await
                .with_context(|| "open sqlite database for writing")?;
            // Make sure the file exists in WAL mode before readers open it.
            write.acquire().await.context("first sqlite connection")?;
            let ro = with_param(url, "mode=ro");
            let read = AnyPoolOptions::new()
                .max_connections(max_connections)
                .min_connections(1)
                .acquire_timeout(Duration::from_secs(10))
                .test_before_acquire(false)
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        conn.execute("PRAGMA busy_timeout = 10000;").await?;
                        Ok(())
                    })
                })
                .connect_with(AnyConnectOptions::from_str(&ro)?)
                .await
                .context("open sqlite database for reading")?;
            Ok(Self {
                backend: Backend::Sqlite,
                group: Some(Arc::new(GroupWriter::new(write.clone()))),
                write,
                read,
                events_committed: Arc::new(Notify::new()),
            })
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            crate::telemetry::db::set_system("postgresql");
            let pool = AnyPoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(Duration::from_secs(5))
                .test_before_acquire(false)
                .before_acquire(|conn, meta| {
                    Box::pin(async move {
                        Ok(!stale(meta.idle_for) || sqlx::Connection::ping(conn).await.is_ok())
                    })
                })
                .connect(url)
                .await
                .context("connect to postgresql")?;
            Ok(Self {
                backend: Backend::Postgres,
                write: pool.clone(),
                read: pool,
                group: None,
                events_committed: Arc::new(Notify::new()),
            })
        } else {
            anyhow::bail!("unsupported database url: expected sqlite:// or postgres://")
        }
    }

    /// Applies the embedded migrations of every service (PostgreSQL: under an advisory lock,
    /// so replicas starting together do not race).
    /// A database whose migrations are all applied (same versions and checksums) is left
    /// untouched, so a server connected as a service role that may not create anything
    /// starts on a schema its owner migrated.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        let migrator = match self.backend {
            Backend::Sqlite => &SQLITE_MIGRATOR,
            Backend::Postgres => &POSTGRES_MIGRATOR,
        };
        if self.all_applied(migrator).await {
            return Ok(());
        }
        migrator.run(&self.write).await.context(
            "run migrations (a role that does not own the schema cannot: run `econsult migrate` \
             as its owner first)",
        )?;
        Ok(())
    }

    /// Whether every migration of `migrator` is recorded as applied with its checksum (false
    /// also when the record cannot be read, e.g. on a new database).
    async fn all_applied(&self, migrator: &sqlx::migrate::Migrator) -> bool {
        let applied: Vec<(i64, Vec<u8>)> =
            match sqlx::query_as("SELECT version, checksum FROM _sqlx_migrations WHERE success")
                .fetch_all(&self.write)
                .await
            {
                Ok(rows) => rows,
                Err(_) => return false,
            };
        migrator.iter().all(|m| {
            applied
                .iter()
                .any(|(v, sum)| *v == m.version && sum.as_slice() == &*m.checksum)
        })
    }

    /// PostgreSQL: gives the service role `role` what the running system needs and no more,
    /// after [`Db::migrate`] ran as the owner of the schema (`econsult migrate --grant-to`).
    /// The service role reads and writes the mutable tables, only appends to the append-only
    /// ones (the access log, whose sealer may fill in `chain_seq`/`hash` once, and the
    /// e-consultations' messages and attachments), never deletes or truncates those, and owns
    /// nothing, so it cannot drop or disable their triggers. Idempotent: run after every
    /// migration (new tables get their grants). An error on SQLite (one file, one user).
    pub async fn grant_service_role(&self, role: &str) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.backend == Backend::Postgres,
            "--grant-to needs PostgreSQL: SQLite has no roles"
        );
        anyhow::ensure!(
            !role.is_empty()
                && role.len() <= 63
                && role.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                && role
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "role {role:?}: expected a plain lower-case PostgreSQL role name"
        );
        let mut tx = self.write.begin().await?;
        for statement in service_role_grants(role) {
            tx.execute(statement.as_str())
                .await
                .with_context(|| format!("grant to {role}: {statement}"))?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// PostgreSQL: what is switched off of the maintenance the schema relies on, one sentence
    /// each (empty when nothing is, and always on SQLite). The outbox is a queue and a log at
    /// once; its statements' plans follow its size only as autovacuum re-analyzes it, and only
    /// autovacuum removes the dead row versions its relay leaves (two per event). Off for the
    /// server (`autovacuum`, or `track_counts`, without which autovacuum does nothing) or for one
    /// of our tables (`autovacuum_enabled`), the relay's plans went stale in a load test (a
    /// whole-outbox scan per pass, `load-tests/results/HISTORY.md`, 2026-12-01). Logged at start.
    pub async fn maintenance_warnings(&self) -> Result<Vec<String>, sqlx::Error> {
        if self.backend != Backend::Postgres {
            return Ok(Vec::new());
        }
        let settings: Vec<String> = sqlx::query_scalar(
            "SELECT name::text FROM pg_settings \
             WHERE name IN ('autovacuum', 'track_counts') AND setting = 'off' ORDER BY 1",
        )
        .fetch_all(&self.read)
        .await?;
        let mut warnings: Vec<String> = settings
            .into_iter()
            .map(|setting| {
                format!(
                    "PostgreSQL runs with {setting} = off: the outbox's statistics go stale as it \
                     grows and its dead rows are never removed; turn it on"
                )
            })
            .collect();
        // The stored option is however it was spelled (off, false, 0, f, …): PostgreSQL's own
        // boolean cast reads every spelling it accepted.
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT c.relname::text FROM pg_class c \
             WHERE c.relnamespace = to_regnamespace(current_schema())::oid AND c.relkind = 'r' \
               AND EXISTS (SELECT 1 FROM unnest(c.reloptions) o \
                           WHERE split_part(o, '=', 1) = 'autovacuum_enabled' \
                             AND NOT split_part(o, '=', 2)::boolean) \
             ORDER BY 1",
        )
        .fetch_all(&self.read)
        .await?;
        for table in tables {
            warnings.push(format!(
                "autovacuum is off for table {table} (autovacuum_enabled = false): its statistics \
                 go stale and its dead rows are never removed; RESET (autovacuum_enabled)"
            ));
        }
        Ok(warnings)
    }

    /// The engine.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The pool for reads that need no transaction.
    pub fn read(&self) -> &AnyPool {
        &self.read
    }

    /// The pool for single-statement writes outside an explicit transaction (autocommit). On
    /// SQLite such a write waits for the open commit group and commits (fsyncs) on its own: for
    /// anything frequent prefer [`Db::begin`], whose commits are grouped.
    pub fn writer(&self) -> &AnyPool {
        &self.write
    }

    /// A connection of its own to the database, outside the pools, for a session held for as
    /// long as the process runs (the outbox relay's leader lock): a pooled connection held that
    /// long would leave the calls one fewer. Dropping it closes it.
    pub async fn dedicated(&self) -> Result<AnyConnection, sqlx::Error> {
        let options = self.write.connect_options();
        <AnyConnection as sqlx::Connection>::connect_with(&options).await
    }

    /// PostgreSQL: a session of its own (outside the pools, reconnecting by itself) that
    /// listens on `channel`, as a stream of its notifications; `None` on SQLite. The outbox
    /// relay's leader hears other replicas' commits through it.
    pub async fn listen(
        &self,
        channel: &str,
    ) -> Result<Option<sqlx::postgres::PgListener>, sqlx::Error> {
        if self.backend != Backend::Postgres {
            return Ok(None);
        }
        let url = self.write.connect_options().database_url.clone();
        let mut listener = sqlx::postgres::PgListener::connect(url.as_str()).await?;
        listener.listen(channel).await?;
        Ok(Some(listener))
    }

    /// Begins a write transaction. Traced as `db.begin`: on PostgreSQL the wait for a pooled
    /// connection and BEGIN (and the lock's wait, from [`Db::begin_locked`]), on SQLite the wait
    /// for the single writer.
    pub async fn begin(&self) -> Result<Tx, sqlx::Error> {
        self.begin_with(None).await
    }

    /// [`Db::begin`], then [`Db::lock`] of `key`, in one round trip on PostgreSQL: the BEGIN
    /// and the lock go as one simple query (the key inlined as hex, so nothing of it is SQL).
    /// The lock is the one [`Db::lock`] takes, so the two serialise against each other.
    pub async fn begin_locked(&self, key: &str) -> Result<Tx, sqlx::Error> {
        self.begin_with(Some(key)).await
    }

    async fn begin_with(&self, lock: Option<&str>) -> Result<Tx, sqlx::Error> {
        let span = tracing::info_span!(
            "db.begin",
            otel.name = if self.group.is_some() {
                "wait for the writer"
            } else if lock.is_some() {
                "acquire connection, BEGIN and lock"
            } else {
                "acquire connection and BEGIN"
            },
            db.system.name = if self.group.is_some() {
                "sqlite"
            } else {
                "postgresql"
            },
        );
        let kind = async {
            Ok::<_, sqlx::Error>(match &self.group {
                Some(g) => TxKind::Sqlite(g.begin().await?),
                None => TxKind::Postgres(match lock {
                    None => self.write.begin().await?,
                    Some(key) => self.write.begin_with(begin_and_lock(key)).await?,
                }),
            })
        }
        .instrument(span)
        .await?;
        Ok(Tx::new(kind, self.events_committed.clone()))
    }

    /// Notified (one stored permit) after every commit through this `Db` (and its clones) that
    /// wrote outbox events: the outbox relay of the process waits on it. Commits of other
    /// processes are not seen here: on PostgreSQL a replica that does not lead the relay passes
    /// them on to the leader with a `NOTIFY` ([`crate::outbox::Relay`]).
    pub fn events_committed(&self) -> Arc<Notify> {
        self.events_committed.clone()
    }

    /// A write transaction of deferred writes only (see [`Writes`]).
    pub fn writes(&self) -> Writes {
        Writes {
            db: self.clone(),
            deferred: Vec::new(),
        }
    }

    /// SQLite: the commits made so far and the write transactions they made durable (their
    /// ratio is the mean commit group size); `None` on PostgreSQL.
    pub fn commit_counts(&self) -> Option<(u64, u64)> {
        self.group.as_ref().map(|g| g.commit_counts())
    }

    /// Runs one write statement as a transaction of its own and returns its rows: autocommit on
    /// PostgreSQL (one round trip), a member of the commit group on SQLite (no fsync of its own).
    pub async fn write_one<'q>(
        &self,
        query: sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>>,
    ) -> Result<Vec<sqlx::any::AnyRow>, sqlx::Error> {
        if self.group.is_none() {
            return query.fetch_all(&self.write).await;
        }
        let mut tx = self.begin().await?;
        let rows = query.fetch_all(&mut *tx).await?;
        tx.commit().await?;
        Ok(rows)
    }

    /// Serialises transactions that use the same `key` until the end of `tx` (PostgreSQL
    /// transaction-scoped advisory lock; a no-op on SQLite, whose single writer serialises
    /// everything already).
    pub async fn lock(&self, tx: &mut Tx, key: &str) -> Result<(), sqlx::Error> {
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))::text")
                .bind(key)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    /// Closes all connections.
    pub async fn close(&self) {
        self.write.close().await;
        self.read.close().await;
    }
}

/// `BEGIN` and [`Db::lock`]'s lock of `key` as one simple query. A simple query has no
/// parameters, so the key travels as hex digits and PostgreSQL turns it back into the same text.
fn begin_and_lock(key: &str) -> String {
    use std::fmt::Write as _;
    let mut hex = String::with_capacity(2 * key.len());
    for b in key.as_bytes() {
        let _ = write!(hex, "{b:02x}");
    }
    format!(
        "BEGIN; SELECT pg_advisory_xact_lock(hashtextextended(convert_from(decode('{hex}', 'hex'), 'UTF8'), 0))"
    )
}

fn with_param(url: &str, param: &str) -> String {
    if url.contains('?') {
        format!("{url}&{param}")
    } else {
        format!("{url}?{param}")
    }
}

/// True when the error is a unique-constraint violation.
pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|d| d.is_unique_violation())
}

/// True when the error is transient (connection lost, pool exhausted, database busy, PostgreSQL
/// serialization failure or deadlock): the client should retry, so it maps to `UNAVAILABLE`.
pub fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(d) => {
            let code = d.code().unwrap_or_default();
            // SQLite BUSY/LOCKED, PostgreSQL serialization failure, deadlock, admin shutdown,
            // cannot connect now.
            matches!(
                code.as_ref(),
                "5" | "6" | "40001" | "40P01" | "57P01" | "57P02" | "57P03"
            )
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn deferred_writes_combine_into_one_statement_with_renumbered_placeholders() {
        let d = |sql, n| super::Deferred {
            sql,
            values: (0..n).map(super::Value::Int).collect(),
            event: false,
        };
        assert_eq!(
            super::combined(&[
                d("INSERT INTO a (x, y) VALUES ($1, $2)", 2),
                d("UPDATE b SET z = $1 WHERE k = $2 AND j = $3", 3),
                d("INSERT INTO c (v) VALUES ($1)", 1),
            ]),
            "WITH d0 AS (INSERT INTO a (x, y) VALUES ($1, $2)), \
             d1 AS (UPDATE b SET z = $3 WHERE k = $4 AND j = $5), \
             d2 AS (INSERT INTO c (v) VALUES ($6)) SELECT 1"
        );
        assert_eq!(super::shift_placeholders("$10, $1", 5), "$15, $6");
    }

    #[test]
    fn with_database_replaces_only_the_database_name() {
        assert_eq!(
            super::with_database("postgres://u:p@127.0.0.1:5432/admin", "run1"),
            "postgres://u:p@127.0.0.1:5432/run1"
        );
        assert_eq!(
            super::with_database("postgres://u@localhost/admin?sslmode=disable", "run1"),
            "postgres://u@localhost/run1?sslmode=disable"
        );
    }
}

#[cfg(all(test, unix))]
mod file_mode_tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn mode(p: &std::path::Path) -> u32 {
        std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777
    }

    #[tokio::test]
    async fn the_sqlite_files_are_readable_by_their_owner_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("econsult.db");
        let url = format!("sqlite://{}", path.display());
        let db = Db::connect(&url).await.expect("connect");
        db.migrate().await.expect("migrate");
        for suffix in ["", "-wal", "-shm"] {
            let p = std::path::PathBuf::from(format!("{}{suffix}", path.display()));
            if suffix.is_empty() || p.exists() {
                assert_eq!(mode(&p), 0o600, "{}", p.display());
            }
        }
        db.close().await;
        // A file made readable by all (an older version) is narrowed at the next start.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let db = Db::connect(&url).await.expect("connect again");
        assert_eq!(mode(&path), 0o600);
        db.close().await;
        assert_eq!(sqlite_file("sqlite::memory:"), None);
        assert_eq!(sqlite_file(&format!("{url}?mode=rwc")), Some(path));
    }
}
