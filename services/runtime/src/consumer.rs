//! A durable event consumer: one consumer group on the bus, each batch applied in one
//! transaction and acknowledged after the commit, plus a catch-up from the outbox (the durable
//! log) for what the bus lost (a Redis restart, an instance killed with entries it had taken).
//!
//! The same sequence as the statistics aggregator (`econsult_stats::aggregate`), for consumers
//! that bring their own [`Handler`]. The handler makes its effect exactly once, by a unique key
//! in its own tables or by `processed_events`: the bus and the catch-up deliver at least once.

use crate::bus::{Delivery, Event};
use crate::db::{Db, Tx};
use crate::platform::Platform;
use async_trait::async_trait;
use std::sync::Arc;
use std::time::Duration;

/// What a consumer does with events.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Applies `events` inside `tx` (committed by the caller). An event may come again: the
    /// effect must be idempotent. Returns how many had an effect.
    async fn apply(&self, tx: &mut Tx, events: &[&Event]) -> anyhow::Result<usize>;

    /// Whether [`Handler::apply`] could do anything with `event` (by its topic, say). A batch
    /// from the bus of none it wants is acknowledged without a transaction: on a bus that
    /// carries every service's events, most batches of a consumer that takes a few topics.
    fn wants(&self, _event: &Event) -> bool {
        true
    }

    /// Called after a transaction of [`Handler::apply`] committed, with its count (wake a
    /// worker, add to counters).
    fn after_commit(&self, _applied: usize) {}
}

/// Events fetched and applied per transaction at most.
const BATCH: usize = 256;

/// A consumer group on the bus with its outbox catch-up.
pub struct Consumer<H> {
    db: Db,
    group: &'static str,
    handler: Arc<H>,
}

impl<H> Clone for Consumer<H> {
    fn clone(&self) -> Self {
        Self {
            db: self.db.clone(),
            group: self.group,
            handler: self.handler.clone(),
        }
    }
}

impl<H: Handler> Consumer<H> {
    /// Consumer group `group` (the catch-up keeps its watermark in `bus_offsets` under
    /// `<group>-catch-up`).
    pub fn new(db: Db, group: &'static str, handler: Arc<H>) -> Self {
        Self { db, group, handler }
    }

    fn catch_up_group(&self) -> String {
        format!("{}-catch-up", self.group)
    }

    /// Makes a new consumer start at the end of the log: on a database whose outbox already
    /// holds events, a consumer added later begins with the events from now on (both its bus
    /// position, on the database bus, and its catch-up watermark). A consumer that has a
    /// position keeps it.
    pub async fn start_from_now(&self) -> anyhow::Result<()> {
        let mut tx = self.db.begin().await?;
        for group in [self.group.to_owned(), self.catch_up_group()] {
            sqlx::query(
                "INSERT INTO bus_offsets (consumer_group, seq) \
                 SELECT $1, COALESCE(MAX(seq), 0) FROM outbox WHERE seq IS NOT NULL \
                 ON CONFLICT (consumer_group) DO NOTHING",
            )
            .bind(group)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Applies a batch of deliveries in one transaction; returns how many had an effect.
    pub async fn apply_batch(&self, deliveries: &[Delivery]) -> anyhow::Result<usize> {
        use tracing::Instrument as _;
        let span = crate::telemetry::event_batch_span(
            &format!("{} consumer", self.group),
            "consumer",
            deliveries.iter().map(|d| d.event.trace_parent.as_str()),
        );
        self.apply_batch_traced(deliveries).instrument(span).await
    }

    async fn apply_batch_traced(&self, deliveries: &[Delivery]) -> anyhow::Result<usize> {
        let events: Vec<&Event> = deliveries
            .iter()
            .map(|d| &d.event)
            .filter(|e| self.handler.wants(e))
            .collect();
        if events.is_empty() {
            return Ok(0);
        }
        let mut tx = self.db.begin().await?;
        let n = self.handler.apply(&mut tx, &events).await?;
        tx.commit().await?;
        self.handler.after_commit(n);
        Ok(n)
    }

    /// Consumes from the bus until shutdown: fetch, apply and commit, then acknowledge.
    pub async fn run(self, platform: Platform, consumer: String) {
        let mut stop = platform.shutdown.clone();
        loop {
            let result: anyhow::Result<()> = async {
                let mut sub = platform.bus.subscribe(self.group, &consumer).await?;
                loop {
                    if *stop.borrow() {
                        return Ok(());
                    }
                    let batch = tokio::select! {
                        b = sub.fetch(BATCH, Duration::from_millis(500)) => b?,
                        _ = stop.changed() => return Ok(()),
                    };
                    if batch.is_empty() {
                        continue;
                    }
                    self.apply_batch(&batch).await?;
                    sub.ack(&batch).await?;
                }
            }
            .await;
            match result {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(group = self.group, error = %e, "consumer failed, resubscribing");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = stop.changed() => return,
                    }
                }
            }
        }
    }

    /// Applies the sequenced outbox events after the catch-up watermark up to seq `through`
    /// (at most `limit`), in one transaction with the watermark's advance. Returns how many
    /// had an effect and whether any event was read.
    pub async fn catch_up(&self, through: i64, limit: i64) -> anyhow::Result<(usize, bool)> {
        let group = self.catch_up_group();
        let mut tx = self.db.begin().await?;
        let after: i64 = sqlx::query_scalar(
            "SELECT COALESCE(MAX(seq), 0) FROM bus_offsets WHERE consumer_group = $1",
        )
        .bind(&group)
        .fetch_one(&mut *tx)
        .await?;
        let rows = sqlx::query(
            "SELECT seq, event_id, topic, org_number, payload, created_at FROM outbox \
             WHERE seq > $1 AND seq <= $2 ORDER BY seq LIMIT $3",
        )
        .bind(after)
        .bind(through)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        let events = rows
            .iter()
            .map(crate::outbox::event_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let Some(last) = events.last().map(|e| e.seq) else {
            return Ok((0, false));
        };
        let refs: Vec<&Event> = events.iter().collect();
        let n = self.handler.apply(&mut tx, &refs).await?;
        sqlx::query(
            "INSERT INTO bus_offsets (consumer_group, seq) VALUES ($1, $2) \
             ON CONFLICT (consumer_group) DO UPDATE SET seq = CASE WHEN excluded.seq > bus_offsets.seq THEN excluded.seq ELSE bus_offsets.seq END",
        )
        .bind(&group)
        .bind(crate::outbox::seq_param(last))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.handler.after_commit(n);
        Ok((n, true))
    }

    /// Runs [`Consumer::catch_up`] every `every` until shutdown, each pass through the last seq
    /// the previous pass saw sequenced (so it does not race the live consumer over the events
    /// of the last moments). A missed event is applied within two periods.
    pub async fn run_catch_up(self, platform: Platform, every: Duration) {
        let mut stop = platform.shutdown.clone();
        let mut horizon = 0i64;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.changed() => return,
            }
            let sequenced: Result<Option<i64>, sqlx::Error> =
                sqlx::query_scalar("SELECT MAX(seq) FROM outbox WHERE seq IS NOT NULL")
                    .fetch_one(self.db.read())
                    .await;
            let next = match sequenced {
                Ok(max) => max.unwrap_or(0),
                Err(e) => {
                    tracing::warn!(group = self.group, error = %e, "catch-up failed");
                    continue;
                }
            };
            loop {
                match self.catch_up(horizon, 1000).await {
                    Ok((n, true)) => {
                        if n > 0 {
                            tracing::warn!(
                                group = self.group,
                                applied = n,
                                "applied events the bus did not deliver (catch-up from the outbox)"
                            );
                        }
                    }
                    Ok((_, false)) => break,
                    Err(e) => {
                        tracing::warn!(group = self.group, error = %e, "catch-up failed");
                        break;
                    }
                }
            }
            horizon = next;
        }
    }
}
