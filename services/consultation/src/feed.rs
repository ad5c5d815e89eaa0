//! One reader of new consultation events per process, fanned out to every change stream
//! (`Subscribe`, `WatchInbox`).
//!
//! Without it each open stream re-read the outbox after every sequenced commit, so the work grew
//! with streams × commits (the load tests: 50 streams took the server from 45 % to 142 % of a
//! core). Now the feed reads each new event once and broadcasts it; a stream reads the database
//! only to catch up from its cursor: when it opens, and when it fell so far behind that the
//! broadcast dropped batches for it.
//!
//! **No gaps:** a stream subscribes to the feed *before* its catch-up read. An event broadcast
//! before the subscription was visible before it, so the catch-up read sees it; an event
//! broadcast after it arrives through the feed. The stream skips what it already sent by `seq`.

use econsult_runtime::bus::Event;
use econsult_runtime::db::Db;
use econsult_runtime::outbox;
use opentelemetry::metrics::Counter;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{broadcast, watch};

/// Topic prefix of the events the feed carries.
pub const TOPIC_PREFIX: &str = "consultation.";

/// A sequenced consultation event with its route key (the patient's pseudonymous key).
#[derive(Debug, Clone)]
pub struct FeedEvent {
    /// Routes per-patient streams: [`econsult_runtime::pseudonym::Pseudonymizer::key_for`] of
    /// the thread's patient.
    pub route_key: String,
    /// The event.
    pub event: Event,
}

/// New events in `seq` order, with what they stand for, read once for every stream of the
/// process that sends any of them.
pub struct FeedBatch {
    /// The events.
    pub events: Vec<FeedEvent>,
    /// The threads and messages of all the events, read by the first stream that needs them
    /// ([`crate::service::Consultations::changes_in`]); a failed read is tried again by the next.
    pub(crate) resolved: tokio::sync::OnceCell<crate::service::threads::Resolved>,
}

/// A [`FeedBatch`] as every stream receives it.
pub type Batch = Arc<FeedBatch>;

/// Batches a lagging stream may fall behind before it catches up from the database instead
/// (the default of [`Feed::start`]'s `capacity`).
pub const DEFAULT_CAPACITY: usize = 1024;

/// Events read per query.
const READ_LIMIT: i64 = 500;

/// The process's consultation event feed.
#[derive(Clone)]
pub struct Feed {
    tx: broadcast::Sender<Batch>,
    ready: watch::Receiver<bool>,
    catch_ups: Arc<AtomicU64>,
    catch_ups_metric: Counter<u64>,
}

impl Feed {
    /// Starts the reader task: from the highest `seq` at start, then after every sequenced
    /// commit (and every 500 ms, for commits another replica sequenced), until `stop`. A stream
    /// that falls more than `capacity` batches behind catches up from the database.
    pub fn start(
        db: Db,
        sequenced: watch::Receiver<u64>,
        stop: watch::Receiver<bool>,
        capacity: usize,
    ) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(1));
        let (ready_tx, ready) = watch::channel(false);
        tokio::spawn(run(db, sequenced, stop, tx.clone(), ready_tx));
        let catch_ups_metric = opentelemetry::global::meter("econsult.consultation")
            .u64_counter("econsult_consultation_stream_catch_ups")
            .with_description(
                "Change streams that fell behind the feed and caught up from the database",
            )
            .build();
        Self {
            tx,
            ready,
            catch_ups: Arc::default(),
            catch_ups_metric,
        }
    }

    /// Counts a stream that fell behind and catches up from the database.
    pub fn fell_behind(&self) {
        self.catch_ups.fetch_add(1, Ordering::Relaxed);
        self.catch_ups_metric.add(1, &[]);
    }

    /// How many times a stream of this process fell behind and caught up from the database.
    pub fn catch_ups(&self) -> u64 {
        self.catch_ups.load(Ordering::Relaxed)
    }

    /// A receiver of every batch read from now on; returns once the feed knows where it starts,
    /// so that whatever it will not broadcast is visible to the caller's catch-up read.
    pub async fn subscribe(&self) -> Option<broadcast::Receiver<Batch>> {
        let mut ready = self.ready.clone();
        ready.wait_for(|r| *r).await.ok()?;
        Some(self.tx.subscribe())
    }
}

/// Sequenced consultation events after `after` up to `upto`, with their route keys.
///
/// Bounded on both sides for the reason [`outbox::read_after`] gives (the load tests, before: 1 220
/// sequential scans of the outbox reading 2.3 million rows in a 15 s rush at 300 flows/s).
async fn read_after(db: &Db, after: u64, upto: u64) -> Result<Vec<FeedEvent>, sqlx::Error> {
    use sqlx::Row as _;
    let rows = sqlx::query(
        "SELECT seq, event_id, topic, org_number, payload, created_at, trace_parent, route_key FROM outbox \
         WHERE seq > $1 AND seq <= $2 AND topic LIKE $3 ORDER BY seq LIMIT $4",
    )
    .bind(outbox::seq_param(after))
    .bind(outbox::seq_param(upto))
    .bind(format!("{TOPIC_PREFIX}%"))
    .bind(READ_LIMIT)
    .fetch_all(db.read())
    .await?;
    rows.iter()
        .map(|r| {
            Ok(FeedEvent {
                route_key: r.try_get("route_key")?,
                event: outbox::event_from_row(r)?,
            })
        })
        .collect()
}

async fn start_position(db: &Db) -> Result<u64, sqlx::Error> {
    let max: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM outbox")
        .fetch_one(db.read())
        .await?;
    Ok(max.max(0) as u64)
}

async fn run(
    db: Db,
    mut sequenced: watch::Receiver<u64>,
    mut stop: watch::Receiver<bool>,
    tx: broadcast::Sender<Batch>,
    ready: watch::Sender<bool>,
) {
    let mut cursor = loop {
        match start_position(&db).await {
            Ok(c) => break c,
            Err(e) => {
                tracing::warn!(error = %e, "consultation feed: start position, retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.changed() => return,
                }
            }
        }
    };
    ready.send_replace(true);
    let mut announced = true;
    loop {
        // Every seq up to `high` is committed (the relay announces a seq after its commit). Woken
        // by an announcement, read up to it (nothing new: no read at all); woken by the timer (in
        // case an announcement was missed), read whatever is there.
        let high = *sequenced.borrow_and_update();
        let upto = if announced { high } else { u64::MAX };
        if upto > cursor {
            match read_after(&db, cursor, upto).await {
                Ok(events) => {
                    let full = events.len() as i64 == READ_LIMIT;
                    if let Some(last) = events.last() {
                        cursor = last.event.seq;
                        // No receivers is fine: nobody watches right now.
                        let _ = tx.send(Arc::new(FeedBatch {
                            events,
                            resolved: tokio::sync::OnceCell::new(),
                        }));
                    }
                    if full {
                        continue;
                    }
                    // No more consultation events up to `high`: skip past it, so the next read
                    // scans only newer rows (otherwise every read re-scanned all other events
                    // since the last consultation one, which grew without bound under a rush).
                    cursor = cursor.max(high);
                }
                Err(e) => tracing::warn!(error = %e, "consultation feed: read failed, retrying"),
            }
        }
        announced = tokio::select! {
            _ = sequenced.changed() => true,
            _ = tokio::time::sleep(Duration::from_millis(500)) => false,
            _ = stop.changed() => return,
        };
    }
}
