//! Transactional outbox and its relay.
//!
//! A service writes its events with [`enqueue`] in the same transaction as the state change, so
//! an event exists exactly when its change committed. The [`Relay`] then (1) gives unsequenced
//! events a gap-free `seq` in one statement, (2) publishes sequenced-but-unpublished events to
//! the bus, (3) marks them published, in the statement of its next step 1 (PostgreSQL; SQLite:
//! in its transaction), at most [`POLL`] later, or when it stops. A crash anywhere repeats at
//! most the last pass's step 2 on restart: delivery is at least once, and consumers deduplicate
//! by `event_id`. Only one relay sequences at a time (PostgreSQL advisory lock held by the
//! leader; `seq` is also UNIQUE). After a wake-up the relay lingers [`RELAY_LINGER`] so that one
//! pass carries the commits of that window.
//!
//! On PostgreSQL the other replicas wait for the lock, trying it every [`LOCK_RETRY`], and pass
//! their own commits that wrote events on to the leader: a `NOTIFY` on [`NOTIFY_CHANNEL`] after
//! the commit, which the leader `LISTEN`s to. Before, a write through a replica that did not
//! lead waited for the leader's 200 ms poll (p50 ~120 ms, p99 ~225 ms) and a killed leader's
//! successor took the lock after up to 2 s; `services/econsult/tests/scaleout.rs` measures both.

use crate::bus::{Event, EventBus};
use crate::db::{Backend, Db, Defer};
use anyhow::Context as _;
use futures::{FutureExt as _, StreamExt as _};
use serde::Serialize;
use sqlx::{Executor as _, Row as _};
use std::{sync::Arc, time::Duration};
use tokio::sync::{Notify, watch};
use tracing::Instrument as _;

/// Topic and routing data of a new event.
#[derive(Debug, Clone)]
pub struct NewEvent<'a, P: Serialize> {
    /// e.g. `booking.created`.
    pub topic: &'a str,
    /// Organisation the event belongs to (routes EHR change streams).
    pub org_number: &'a str,
    /// Routes per-person change streams: the patient's pseudonymous key
    /// ([`crate::pseudonym::Pseudonymizer::key_for`]), never an identity number; "" for none.
    pub route_key: &'a str,
    /// The event body, stored as JSON.
    pub payload: &'a P,
}

/// Writes an event into the outbox inside `tx` (deferred to its commit: one statement with the
/// call's other deferred writes on PostgreSQL); returns its event id.
pub async fn enqueue<P: Serialize>(
    tx: &mut impl Defer,
    event: NewEvent<'_, P>,
    now_ms: i64,
) -> anyhow::Result<String> {
    write(tx, event, now_ms)
}

/// [`enqueue`], for code that is not async (e.g. [`crate::idempotency::Op::emit`]).
pub fn write<P: Serialize>(
    tx: &mut impl Defer,
    event: NewEvent<'_, P>,
    now_ms: i64,
) -> anyhow::Result<String> {
    let event_id = uuid::Uuid::now_v7().to_string();
    let payload = serde_json::to_string(event.payload)?;
    tx.defer_event(
        "INSERT INTO outbox (event_id, topic, org_number, route_key, payload, created_at, trace_parent) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        vec![
            event_id.clone().into(),
            event.topic.into(),
            event.org_number.into(),
            event.route_key.into(),
            payload.into(),
            now_ms.into(),
            crate::telemetry::current_traceparent().into(),
        ],
    );
    Ok(event_id)
}

/// Which sequenced events a reader wants.
#[derive(Debug, Clone, Copy, Default)]
pub struct EventFilter<'a> {
    /// Topics starting with this ("" = all).
    pub topic_prefix: &'a str,
    /// Only this organisation.
    pub org_number: Option<&'a str>,
    /// Only this route key (one patient's events: their pseudonymous key).
    pub route_key: Option<&'a str>,
}

impl EventFilter<'_> {
    /// Whether `event` (with the outbox row's `route_key`) passes the filter: the same rule as
    /// the SQL of [`read_after`], for events that arrive in memory (a feed).
    pub fn matches(&self, event: &Event, route_key: &str) -> bool {
        let pass = |want: Option<&str>, have: &str| want.is_none_or(|w| w.is_empty() || w == have);
        event.topic.starts_with(self.topic_prefix)
            && pass(self.org_number, &event.org_number)
            && pass(self.route_key, route_key)
    }
}

/// Reads sequenced events after `after_seq` up to `upto` (`u64::MAX`: all there are) that match
/// `filter`, in `seq` order.
///
/// The statement bounds `seq` on both sides whatever `upto` is: PostgreSQL then caches a generic
/// plan that scans the seq index over the range. With `seq > $1` alone, a connection that
/// prepared the statement while the outbox was nearly empty could keep a sequential scan, and
/// every later read went through the whole outbox.
pub async fn read_after(
    db: &Db,
    after_seq: u64,
    upto: u64,
    filter: EventFilter<'_>,
    limit: i64,
) -> Result<Vec<Event>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT seq, event_id, topic, org_number, payload, created_at, trace_parent FROM outbox \
         WHERE seq > $1 AND seq <= $6 AND topic LIKE $2 AND ($3 = '' OR org_number = $3) AND ($4 = '' OR route_key = $4) \
         ORDER BY seq LIMIT $5",
    )
    .bind(seq_param(after_seq))
    .bind(format!("{}%", filter.topic_prefix))
    .bind(filter.org_number.unwrap_or(""))
    .bind(filter.route_key.unwrap_or(""))
    .bind(limit)
    .bind(seq_param(upto))
    .fetch_all(db.read())
    .await?;
    rows.iter().map(event_from_row).collect()
}

/// A seq as a BIGINT parameter (`u64::MAX` and anything above `i64::MAX` as `i64::MAX`).
pub fn seq_param(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

/// Reads an outbox row (columns seq, event_id, topic, org_number, payload, created_at,
/// trace_parent).
pub fn event_from_row(r: &sqlx::any::AnyRow) -> Result<Event, sqlx::Error> {
    Ok(Event {
        seq: r.try_get::<i64, _>("seq")? as u64,
        event_id: r.try_get("event_id")?,
        topic: r.try_get("topic")?,
        org_number: r.try_get("org_number")?,
        payload: r.try_get("payload")?,
        created_at: r.try_get("created_at")?,
        trace_parent: r.try_get("trace_parent")?,
    })
}

/// A notification of another replica's commit, or why the leader can no longer hear them.
fn heard_ok<N>(heard: Option<Result<N, sqlx::Error>>) -> anyhow::Result<()> {
    match heard {
        Some(Ok(_)) => Ok(()),
        // The listener reconnects by itself; an error or its end means it could not:
        // leadership ends with it and is taken again.
        Some(Err(e)) => Err(e).context("listen for other replicas' commits"),
        None => anyhow::bail!("the listener for other replicas' commits ended"),
    }
}

/// Moves events from the outbox to the bus.
pub struct Relay {
    db: Db,
    bus: Arc<dyn EventBus>,
    /// [`Db::events_committed`].
    wake: Arc<Notify>,
    sequenced: watch::Sender<u64>,
    batch: i64,
}

const RELAY_LOCK_KEY: i64 = 0x0ec0_5017;

/// `NOTIFY` on [`NOTIFY_CHANNEL`] (a plain statement: no parameters, no result).
const NOTIFY: &str = "NOTIFY econsult_outbox";

/// How long the relay waits after a wake-up before a pass, to batch the commits of that window.
/// It adds at most this much to the delay of change streams and stats.
pub const RELAY_LINGER: Duration = Duration::from_millis(5);

/// How often a replica that does not lead tries the leader lock (`pg_try_advisory_lock`, one
/// cheap round trip): the most a leader's death pauses the relay, besides one pass.
pub const LOCK_RETRY: Duration = Duration::from_millis(100);

/// How often the leader looks for events whose wake-up it missed.
pub const POLL: Duration = Duration::from_millis(200);

/// PostgreSQL channel on which replicas that do not lead wake the leader after their commits
/// that wrote events.
pub const NOTIFY_CHANNEL: &str = "econsult_outbox";

/// The relay's sequencing statement ([`Relay::sequence_batch`]): `$1` the batch, `$2` the
/// highest seq the leader knows.
macro_rules! sequence {
    () => {
        "UPDATE outbox SET seq = COALESCE($2, (SELECT COALESCE(MAX(seq), 0) FROM outbox)) + n.rn \
             FROM (SELECT id, ROW_NUMBER() OVER (ORDER BY id) AS rn FROM outbox WHERE seq IS NULL ORDER BY id LIMIT $1) AS n \
             WHERE outbox.id = n.id \
             RETURNING outbox.seq AS seq, outbox.event_id AS event_id, outbox.topic AS topic, \
                       outbox.org_number AS org_number, outbox.payload AS payload, outbox.created_at AS created_at, \
                       outbox.trace_parent AS trace_parent"
    };
}

impl Relay {
    /// A relay over `db` publishing to `bus`, woken by the commits of `db` that wrote events
    /// ([`Db::events_committed`]), on PostgreSQL by other replicas' `NOTIFY`, and every
    /// [`POLL`]; `sequenced` receives the highest sequenced `seq`.
    pub fn new(db: Db, bus: Arc<dyn EventBus>, sequenced: watch::Sender<u64>) -> Self {
        Self {
            wake: db.events_committed(),
            db,
            bus,
            sequenced,
            batch: 256,
        }
    }

    /// Runs until `stop` turns true, then drains what it can once more.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        loop {
            if *stop.borrow() {
                break;
            }
            match self.lead(&mut stop).await {
                Ok(()) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "outbox relay failed, retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                        _ = stop.changed() => {}
                    }
                }
            }
        }
        if let Err(e) = self.run_once().await {
            tracing::warn!(error = %e, "final outbox flush failed");
        }
    }

    /// Takes leadership (PostgreSQL) and relays until stopped or the lock connection fails.
    async fn lead(&self, stop: &mut watch::Receiver<bool>) -> anyhow::Result<()> {
        let (_lock, listener) = match self.db.backend() {
            Backend::Postgres => {
                // The leader lock is held by a session of its own, outside the pool. A pooled
                // connection held for as long as this replica leads left the calls one
                // connection fewer while every pass of the relay waited for a second one (a
                // pool of one stalled outright). When leadership ends (an error, a lost bus,
                // shutdown) the session ends with it, and the lock with the session: it never
                // goes back to a pool still holding the lock.
                let mut conn = self.db.dedicated().await?;
                let mut next_try = tokio::time::Instant::now();
                loop {
                    if tokio::time::Instant::now() >= next_try {
                        let got: bool = sqlx::query("SELECT pg_try_advisory_lock($1) AS ok")
                            .bind(RELAY_LOCK_KEY)
                            .fetch_one(&mut conn)
                            .await?
                            .try_get("ok")?;
                        if got {
                            tracing::info!("outbox relay leads");
                            break;
                        }
                        next_try = tokio::time::Instant::now() + LOCK_RETRY;
                    }
                    // Another replica relays: pass this replica's commits on to it, and try the
                    // lock again soon (a killed leader's session, and its lock, end at once).
                    tokio::select! {
                        _ = self.wake.notified() => {
                            // After the commit, not inside it: a transaction that NOTIFYs holds
                            // a database-wide lock through its commit (WAL flush included),
                            // which would serialise the commits of every write with events.
                            // Commits during this round trip store a permit: one more NOTIFY.
                            conn.execute(NOTIFY).await?;
                        }
                        _ = tokio::time::sleep_until(next_try) => {}
                        _ = stop.changed() => return Ok(()),
                    }
                }
                // Listening before the first pass: a commit after it is heard, one before it
                // is found by the pass.
                let listener = self.db.listen(NOTIFY_CHANNEL).await?;
                (Some(conn), listener)
            }
            Backend::Sqlite => (None, None),
        };
        // Other replicas' commits (PostgreSQL); on SQLite a stream that never yields.
        let mut remote = match listener {
            Some(listener) => listener.into_stream().boxed(),
            None => futures::stream::pending().boxed(),
        };
        // What an earlier leader (or this one, before an error) sequenced but did not publish
        // goes out first, in seq order; after that each pass publishes what it sequenced.
        while self.publish_batch().await? > 0 {}
        // PostgreSQL: the highest seq this leader gave (no one else sequences while it leads),
        // so its passes need not read it; read from the outbox by the first pass that sequences.
        let mut last = None;
        // The seqs the last pass published, marked published by the next pass's statement.
        let mut unmarked = None;
        loop {
            if *stop.borrow() {
                if let Some(range) = unmarked {
                    self.mark(range).await?;
                }
                return Ok(());
            }
            // A pass that moved less than a full batch emptied the outbox as far as it could see;
            // commits after its statement began have stored a wake-up. (Another pass right
            // away, as before, found nothing most of the time: one statement per pass wasted.)
            let moved = self.pass(&mut last, &mut unmarked).await?;
            if moved < self.batch as usize {
                let woken = tokio::select! {
                    _ = self.wake.notified() => true,
                    heard = remote.next() => {
                        heard_ok(heard)?;
                        true
                    }
                    // The safety net: a wake-up lost with a replica or a connection.
                    _ = tokio::time::sleep(POLL) => false,
                    _ = stop.changed() => false,
                };
                if woken {
                    // Let the commits of the next few milliseconds join this pass: under load
                    // a pass then moves many events for the same three statements.
                    tokio::time::sleep(RELAY_LINGER).await;
                }
                // The notifications heard by now are of commits the next pass sees: one pass
                // for all of them, not one each.
                while let Some(heard) = remote.next().now_or_never() {
                    heard_ok(heard)?;
                }
            }
        }
    }

    /// One pass: sequence a batch, publish a batch. Returns how many events moved.
    pub async fn run_once(&self) -> anyhow::Result<usize> {
        let sequenced = self.sequence_batch(None, None).await?.len();
        let published = self.publish_batch().await?;
        Ok(sequenced + published)
    }

    /// A pass of the leader once nothing sequenced is left unpublished: marks the previous
    /// pass's events published (`unmarked`) and sequences a batch in one statement, then
    /// publishes exactly those events, as the statement returned them (no re-read), and leaves
    /// their seqs in `unmarked` for the next pass: one statement per pass. `last` is the
    /// highest seq the leader gave (PostgreSQL; `None` until known, and always on SQLite).
    /// Returns how many events moved.
    async fn pass(
        &self,
        last: &mut Option<i64>,
        unmarked: &mut Option<(i64, i64)>,
    ) -> anyhow::Result<usize> {
        let events = self.sequence_batch(*last, *unmarked).await?;
        *unmarked = None;
        let (Some(first), Some(end)) = (events.first(), events.last()) else {
            return Ok(0);
        };
        let range = (seq_param(first.seq), seq_param(end.seq));
        if self.db.backend() == Backend::Postgres {
            *last = Some(range.1);
        }
        self.publish(&events).await?;
        *unmarked = Some(range);
        Ok(events.len())
    }

    /// Gives the oldest unsequenced events the next seqs, in one statement (one round trip; on
    /// SQLite one member of a commit group), in id order: base + 1, base + 2, … where base is
    /// `last`, the highest seq as the leader knows it, or else read from the outbox once per
    /// statement (an uncorrelated scalar subquery, evaluated only when `last` is `None` and there
    /// is something to sequence). The leader knows it because a generic plan made while the
    /// outbox looked empty to the planner reads the highest seq by a scan of the whole outbox
    /// (6.4 ms for 20 events with 15 000 in the outbox; as a joined subquery, as it was, once for
    /// every event: 64.6 ms). `seq` is UNIQUE: a stale `last` fails the statement, never gives a
    /// seq twice. First it marks the seqs `published` (inclusive; the previous pass's) published:
    /// on PostgreSQL in the same statement (a data-modifying CTE: the two touch different rows),
    /// on SQLite in the same transaction. Returns the events it sequenced, in seq order.
    async fn sequence_batch(
        &self,
        last: Option<i64>,
        published: Option<(i64, i64)>,
    ) -> anyhow::Result<Vec<Event>> {
        let now = chrono::Utc::now().timestamp_millis();
        let rows = match (self.db.backend(), published) {
            (_, None) => {
                self.db
                    .write_one(sqlx::query(sequence!()).bind(self.batch).bind(last))
                    .await?
            }
            (Backend::Postgres, Some((first, end))) => {
                let query = sqlx::query(concat!(
                    "WITH marked AS (UPDATE outbox SET published_at = $3 \
                     WHERE seq >= $4 AND seq <= $5 AND published_at IS NULL) ",
                    sequence!()
                ))
                .bind(self.batch)
                .bind(last)
                .bind(now)
                .bind(first)
                .bind(end);
                self.db.write_one(query).await?
            }
            (Backend::Sqlite, Some((first, end))) => {
                let mut tx = self.db.begin().await?;
                mark_query(now, first, end).execute(&mut *tx).await?;
                let rows = sqlx::query(sequence!())
                    .bind(self.batch)
                    .bind(last)
                    .fetch_all(&mut *tx)
                    .await?;
                tx.commit().await?;
                rows
            }
        };
        let mut events: Vec<Event> = rows.iter().map(event_from_row).collect::<Result<_, _>>()?;
        events.sort_unstable_by_key(|e| e.seq);
        let Some(last) = events.last().map(|e| e.seq) else {
            return Ok(events);
        };
        crate::failpoint("relay-after-sequence");
        self.sequenced.send_if_modified(|v| {
            let changed = *v < last;
            *v = (*v).max(last);
            changed
        });
        Ok(events)
    }

    /// Publishes the sequenced events no pass published, and marks them: what an earlier leader
    /// left, and [`Relay::run_once`]'s.
    async fn publish_batch(&self) -> anyhow::Result<usize> {
        let rows = sqlx::query(
            "SELECT seq, event_id, topic, org_number, payload, created_at, trace_parent FROM outbox \
             WHERE seq IS NOT NULL AND published_at IS NULL ORDER BY seq LIMIT $1",
        )
        .bind(self.batch)
        .fetch_all(self.db.read())
        .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let events: Vec<Event> = rows.iter().map(event_from_row).collect::<Result<_, _>>()?;
        self.publish(&events).await?;
        if let (Some(first), Some(end)) = (events.first(), events.last()) {
            self.mark((seq_param(first.seq), seq_param(end.seq)))
                .await?;
        }
        Ok(events.len())
    }

    /// Publishes `events` (in seq order). Traced as `outbox relay`, a span of its own linked to
    /// the calls that wrote the events.
    async fn publish(&self, events: &[Event]) -> anyhow::Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let span = crate::telemetry::event_batch_span(
            "outbox relay",
            "producer",
            events.iter().map(|e| e.trace_parent.as_str()),
        );
        self.publish_traced(events).instrument(span).await
    }

    async fn publish_traced(&self, events: &[Event]) -> anyhow::Result<()> {
        self.bus.publish(events).await?;
        Ok(())
    }

    /// Marks the seqs `range` (inclusive) published, in a statement of its own.
    async fn mark(&self, (first, end): (i64, i64)) -> anyhow::Result<()> {
        let now = chrono::Utc::now().timestamp_millis();
        self.db.write_one(mark_query(now, first, end)).await?;
        Ok(())
    }
}

/// Marks the seqs `first..=end` published at `now_ms`.
fn mark_query<'q>(
    now_ms: i64,
    first: i64,
    end: i64,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    sqlx::query(
        "UPDATE outbox SET published_at = $1 WHERE seq >= $2 AND seq <= $3 AND published_at IS NULL",
    )
    .bind(now_ms)
    .bind(first)
    .bind(end)
}

#[cfg(test)]
mod tests {
    use super::{Event, EventFilter};

    #[test]
    fn the_non_leaders_notify_the_channel_the_leader_listens_on() {
        assert_eq!(super::NOTIFY, format!("NOTIFY {}", super::NOTIFY_CHANNEL));
    }

    #[test]
    fn a_filter_matches_in_memory_as_its_sql_does() {
        let event = Event {
            seq: 1,
            event_id: "e".into(),
            topic: "consultation.message".into(),
            org_number: "999999999".into(),
            payload: "{}".into(),
            created_at: 0,
            trace_parent: String::new(),
        };
        let practice = EventFilter {
            topic_prefix: "consultation.",
            org_number: Some("999999999"),
            route_key: None,
        };
        assert!(practice.matches(&event, "any patient"));
        let other_practice = EventFilter {
            org_number: Some("888888888"),
            ..practice
        };
        assert!(!other_practice.matches(&event, "any patient"));
        let patient = EventFilter {
            topic_prefix: "consultation.",
            org_number: None,
            route_key: Some("p1"),
        };
        assert!(patient.matches(&event, "p1"));
        assert!(!patient.matches(&event, "p2"));
        let bookings = EventFilter {
            topic_prefix: "booking.",
            ..EventFilter::default()
        };
        assert!(!bookings.matches(&event, "p1"));
        // "" means all, as in the SQL.
        assert!(EventFilter::default().matches(&event, "p1"));
    }
}
