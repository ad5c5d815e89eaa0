//! Retention of rows that hold personal data only for a while: stored idempotent answers
//! (identity numbers in the answers) and published outbox events (identity numbers and
//! payloads). A background task on every replica deletes what is older than its window, in
//! batches of [`BATCH`] rows per statement, yielding between them; the access log and the
//! clinical tables are not touched (they are kept by law and protected by triggers).
//!
//! The outbox row with the highest `seq` is always kept: the relay numbers new events after it,
//! so `seq` keeps increasing after everything older is gone.

use crate::clock::Clock;
use crate::db::Db;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Rows deleted per statement.
pub const BATCH: i64 = 1000;

/// How long rows are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Stored idempotent answers older than this are deleted (a retry after it is a new call).
    pub idempotency: Duration,
    /// Published outbox events created longer ago than this are deleted (change streams and
    /// the statistics rebuild then start from the oldest kept event).
    pub outbox: Duration,
    /// Time between passes of the background task.
    pub every: Duration,
}

impl Default for Retention {
    /// 7 days of idempotent answers, 30 days of published events, a pass every hour.
    fn default() -> Self {
        Self {
            idempotency: Duration::from_secs(7 * 86_400),
            outbox: Duration::from_secs(30 * 86_400),
            every: Duration::from_secs(3600),
        }
    }
}

/// Rows one [`run_once`] deleted, by table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Deleted {
    /// From `idempotency`.
    pub idempotency: u64,
    /// From `outbox`.
    pub outbox: u64,
}

/// Deletes, at `now_ms`, the idempotency rows and the published outbox rows older than their
/// windows, [`BATCH`] rows per statement until none are left (yielding between statements),
/// and counts them in `econsult_retention_deleted_rows_total{table}`.
pub async fn run_once(db: &Db, policy: &Retention, now_ms: i64) -> Result<Deleted, sqlx::Error> {
    let idempotency = delete_batches(
        db,
        "idempotency",
        "DELETE FROM idempotency WHERE (scope, idem_key) IN \
         (SELECT scope, idem_key FROM idempotency WHERE created_at < $1 LIMIT $2)",
        now_ms.saturating_sub(millis(policy.idempotency)),
    )
    .await?;
    // Oldest first along the seq index (the rows to delete are at its start); never the
    // newest sequenced row, and never an unpublished one.
    let outbox = delete_batches(
        db,
        "outbox",
        "DELETE FROM outbox WHERE id IN \
         (SELECT id FROM outbox WHERE seq IS NOT NULL AND published_at IS NOT NULL AND created_at < $1 \
          AND seq < (SELECT MAX(seq) FROM outbox) ORDER BY seq LIMIT $2)",
        now_ms.saturating_sub(millis(policy.outbox)),
    )
    .await?;
    Ok(Deleted {
        idempotency,
        outbox,
    })
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

async fn delete_batches(
    db: &Db,
    table: &'static str,
    sql: &'static str,
    before_ms: i64,
) -> Result<u64, sqlx::Error> {
    let mut total = 0;
    loop {
        let mut tx = db.begin().await?;
        let n = sqlx::query(sql)
            .bind(before_ms)
            .bind(BATCH)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        total += n;
        if n > 0 {
            deleted_rows().add(n, &[opentelemetry::KeyValue::new("table", table)]);
        }
        if n < BATCH as u64 {
            return Ok(total);
        }
        tokio::task::yield_now().await;
    }
}

fn deleted_rows() -> &'static opentelemetry::metrics::Counter<u64> {
    static DELETED: std::sync::OnceLock<opentelemetry::metrics::Counter<u64>> =
        std::sync::OnceLock::new();
    DELETED.get_or_init(|| {
        opentelemetry::global::meter("econsult")
            .u64_counter("econsult_retention_deleted_rows")
            .with_description("Rows deleted by retention, by table")
            .build()
    })
}

/// Runs [`run_once`] at the time of `clock` every `policy.every` (the first pass five minutes
/// after the start) until `shutdown`. Several replicas may run it at once: a row is deleted once.
pub async fn task(
    db: Db,
    clock: Arc<dyn Clock>,
    policy: Retention,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut wait = policy.every.min(Duration::from_secs(300));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
        match run_once(&db, &policy, clock.now_ms()).await {
            Ok(d) => tracing::info!(
                idempotency = d.idempotency,
                outbox = d.outbox,
                "retention pass"
            ),
            Err(e) => tracing::warn!(error = %e, "retention pass failed; retrying later"),
        }
        wait = policy.every;
    }
}
