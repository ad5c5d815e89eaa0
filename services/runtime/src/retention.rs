//! Retention of rows that hold personal data only for a while: stored idempotent answers
//! (identity numbers in the answers) and published outbox events (identity numbers and
//! payloads). A background task on every replica deletes what is older than its window, in
//! batches of [`BATCH`] rows per statement, yielding between them; the access log and the
//! clinical tables are not touched (they are kept by law and protected by triggers).
//!
//! The outbox row with the highest `seq` is always kept: the relay numbers new events after it,
//! so `seq` keeps increasing after everything older is gone. Nor is an event deleted before
//! every durable consumer (statistics, notifications: the `<group>-catch-up` watermarks in
//! `bus_offsets`) has applied it: a consumer more than the window behind holds the outbox back,
//! and each pass logs a warning naming it (a consumer group retired for good is released by
//! deleting its watermark row).

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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Deleted {
    /// From `idempotency`.
    pub idempotency: u64,
    /// From `outbox`.
    pub outbox: u64,
    /// Published events past their window kept because a durable consumer has not applied them.
    pub held: u64,
    /// The consumer's catch-up watermark group furthest behind, when it held any back.
    pub held_by: Option<String>,
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
    // newest sequenced row, never an unpublished one, never one a durable consumer has not
    // applied yet.
    let before = now_ms.saturating_sub(millis(policy.outbox));
    let outbox = delete_batches(
        db,
        "outbox",
        "DELETE FROM outbox WHERE id IN \
         (SELECT id FROM outbox WHERE seq IS NOT NULL AND published_at IS NOT NULL AND created_at < $1 \
          AND seq < (SELECT MAX(seq) FROM outbox) \
          AND seq <= (SELECT COALESCE(MIN(seq), 9223372036854775807) FROM bus_offsets WHERE consumer_group LIKE '%-catch-up') \
          ORDER BY seq LIMIT $2)",
        before,
    )
    .await?;
    let slowest: Option<(String, i64)> = sqlx::query_as(
        "SELECT consumer_group, seq FROM bus_offsets WHERE consumer_group LIKE '%-catch-up' \
         ORDER BY seq, consumer_group LIMIT 1",
    )
    .fetch_optional(db.read())
    .await?;
    let (mut held, mut held_by) = (0, None);
    if let Some((group, seq)) = slowest {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM outbox WHERE seq > $1 AND published_at IS NOT NULL AND created_at < $2 \
             AND seq < (SELECT MAX(seq) FROM outbox)",
        )
        .bind(seq)
        .bind(before)
        .fetch_one(db.read())
        .await?;
        if n > 0 {
            (held, held_by) = (n as u64, Some(group));
        }
    }
    Ok(Deleted {
        idempotency,
        outbox,
        held,
        held_by,
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
            Ok(d) => {
                tracing::info!(
                    idempotency = d.idempotency,
                    outbox = d.outbox,
                    "retention pass"
                );
                if let Some(group) = &d.held_by {
                    tracing::warn!(
                        consumer = %group,
                        held = d.held,
                        "a consumer is further behind than the outbox retention window: its \
                         events are kept until it applies them (delete its bus_offsets row if \
                         the consumer is retired)"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "retention pass failed; retrying later"),
        }
        wait = policy.every;
    }
}
