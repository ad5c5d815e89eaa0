//! One reader of new consultation events per process, fanned out to the change streams
//! (`Subscribe`, `WatchInbox`) they concern.
//!
//! Without it each open stream re-read the outbox after every sequenced commit, so the work grew
//! with streams × commits (the load tests: 50 streams took the server from 45 % to 142 % of a
//! core). Now the feed reads each new event once and hands it on; a stream reads the database
//! only to catch up from its cursor: when it opens, and when it fell so far behind that the feed
//! dropped batches for it.
//!
//! **Only the streams a batch concerns wake:** each stream registers its practice or its patient
//! (route key), and the feed hands a batch to the streams of the practices and patients its
//! events name. A broadcast to every stream woke all 500 Subscribe streams of the load test for
//! every batch, for the one or two with a change in it.
//!
//! **No gaps:** a stream subscribes to the feed *before* its catch-up read. An event sent before
//! the subscription was visible before it, so the catch-up read sees it; an event sent after it
//! arrives through the feed. The stream skips what it already sent by `seq`.

use econsult_runtime::bus::Event;
use econsult_runtime::db::Db;
use econsult_runtime::outbox;
use opentelemetry::metrics::Counter;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

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

/// A [`FeedBatch`] as every stream it concerns receives it.
pub type Batch = Arc<FeedBatch>;

/// The events a stream wants: a practice's (by organisation number) or a patient's (by route
/// key). An empty one wants every event, as [`outbox::EventFilter`] reads it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Interest {
    /// A practice's threads (`WatchInbox`).
    Practice(String),
    /// A patient's threads (`Subscribe`): the patient's route key.
    Patient(String),
}

impl Interest {
    /// The same events as a filter of the outbox, for a stream's catch-up read and for the
    /// events of a batch it receives.
    pub fn filter(&self) -> outbox::EventFilter<'_> {
        let (org_number, route_key) = match self {
            Interest::Practice(org) => (Some(org.as_str()), None),
            Interest::Patient(route) => (None, Some(route.as_str())),
        };
        outbox::EventFilter {
            topic_prefix: TOPIC_PREFIX,
            org_number,
            route_key,
        }
    }
}

/// Batches a lagging stream may fall behind before it catches up from the database instead
/// (the default of [`Feed::start`]'s `capacity`).
pub const DEFAULT_CAPACITY: usize = 1024;

/// Events read per query.
const READ_LIMIT: i64 = 500;

/// The process's consultation event feed.
#[derive(Clone)]
pub struct Feed {
    streams: Arc<Mutex<Registry>>,
    capacity: usize,
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
        let streams = Arc::new(Mutex::new(Registry::default()));
        let (ready_tx, ready) = watch::channel(false);
        tokio::spawn(run(db, sequenced, stop, streams.clone(), ready_tx));
        let catch_ups_metric = opentelemetry::global::meter("econsult.consultation")
            .u64_counter("econsult_consultation_stream_catch_ups")
            .with_description(
                "Change streams that fell behind the feed and caught up from the database",
            )
            .build();
        Self {
            streams,
            capacity: capacity.max(1),
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

    /// A receiver of every batch read from now on with an event for `interest`; returns once the
    /// feed knows where it starts, so that whatever it will not send is visible to the caller's
    /// catch-up read. `None` once the feed has stopped.
    pub async fn subscribe(&self, interest: Interest) -> Option<Subscription> {
        let mut ready = self.ready.clone();
        ready.wait_for(|r| *r).await.ok()?;
        register(&self.streams, interest, self.capacity)
    }
}

/// Registers a stream for `interest` with a queue of `capacity` batches; `None` once the feed
/// has stopped.
fn register(
    registry: &Arc<Mutex<Registry>>,
    interest: Interest,
    capacity: usize,
) -> Option<Subscription> {
    let (tx, rx) = mpsc::channel(capacity);
    let lagged = Arc::new(AtomicBool::new(false));
    let mut streams = registry.lock().unwrap_or_else(|e| e.into_inner());
    if streams.stopped {
        return None;
    }
    streams.next_id += 1;
    let id = streams.next_id;
    let stream = Stream {
        tx,
        lagged: lagged.clone(),
    };
    streams.of(&interest).insert(id, stream);
    Some(Subscription {
        rx,
        lagged,
        _registered: Registered {
            streams: registry.clone(),
            interest,
            id,
        },
    })
}

/// Streams by a key (an organisation number or a route key), each by its id.
type Keyed = HashMap<String, HashMap<u64, Stream>>;

/// The open streams of the process by what they want.
#[derive(Default)]
struct Registry {
    /// By organisation number.
    practices: Keyed,
    /// By route key.
    patients: Keyed,
    /// Those registered with an empty organisation number or route key: every event.
    every: HashMap<u64, Stream>,
    next_id: u64,
    /// The feed stopped: no more streams, and those open were told (their senders dropped).
    stopped: bool,
}

struct Stream {
    tx: mpsc::Sender<Batch>,
    /// A batch was dropped because the stream's queue was full.
    lagged: Arc<AtomicBool>,
}

impl Registry {
    /// Closes every stream's queue (its receiver gets [`Missed::Closed`] once it has taken what
    /// is queued) and refuses new ones.
    fn stop(&mut self) {
        self.stopped = true;
        self.practices.clear();
        self.patients.clear();
        self.every.clear();
    }

    /// The streams registered for `interest`.
    fn of(&mut self, interest: &Interest) -> &mut HashMap<u64, Stream> {
        match keyed(&mut self.practices, &mut self.patients, interest) {
            Some((map, k)) => map.entry(k.to_owned()).or_default(),
            None => &mut self.every,
        }
    }

    /// Removes stream `id` of `interest`, and its key once no stream has it.
    fn remove(&mut self, interest: &Interest, id: u64) {
        let Some((map, k)) = keyed(&mut self.practices, &mut self.patients, interest) else {
            self.every.remove(&id);
            return;
        };
        if let Some(streams) = map.get_mut(k) {
            streams.remove(&id);
            if streams.is_empty() {
                map.remove(k);
            }
        }
    }

    /// Hands `batch` to every stream one of its events concerns, once each (a stream is
    /// registered under one key). A stream whose queue is full is marked lagged instead (it
    /// catches up from the database); one whose receiver is gone is removed.
    fn send(&mut self, batch: &Batch) {
        let mut orgs: Vec<&str> = batch
            .events
            .iter()
            .map(|e| e.event.org_number.as_str())
            .collect();
        let mut routes: Vec<&str> = batch.events.iter().map(|e| e.route_key.as_str()).collect();
        for keys in [&mut orgs, &mut routes] {
            keys.sort_unstable();
            keys.dedup();
        }
        hand(&mut self.every, batch);
        for (map, keys) in [(&mut self.practices, orgs), (&mut self.patients, routes)] {
            for k in keys {
                if let Some(streams) = map.get_mut(k) {
                    hand(streams, batch);
                    if streams.is_empty() {
                        map.remove(k);
                    }
                }
            }
        }
    }
}

/// The registry's streams by key (`practices` or `patients`) that `interest` is kept in, and its
/// key there; `None` for an empty organisation number or route key (every event: `every`).
fn keyed<'m, 'i>(
    practices: &'m mut Keyed,
    patients: &'m mut Keyed,
    interest: &'i Interest,
) -> Option<(&'m mut Keyed, &'i str)> {
    match interest {
        Interest::Practice(k) | Interest::Patient(k) if k.is_empty() => None,
        Interest::Practice(org) => Some((practices, org)),
        Interest::Patient(route) => Some((patients, route)),
    }
}

/// Queues `batch` for each of `streams`: see [`Registry::send`].
fn hand(streams: &mut HashMap<u64, Stream>, batch: &Batch) {
    streams.retain(|_, s| match s.tx.try_send(batch.clone()) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(_)) => {
            s.lagged.store(true, Ordering::Release);
            true
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    });
}

/// A stream's registration with the feed, removed when dropped.
struct Registered {
    streams: Arc<Mutex<Registry>>,
    interest: Interest,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        streams.remove(&self.interest, self.id);
    }
}

/// Why [`Subscription::recv`] gave no batch.
#[derive(Debug, PartialEq, Eq)]
pub enum Missed {
    /// The feed dropped a batch for this stream (its queue was full): catch up from the
    /// database, then go on receiving (and skip by `seq` what the catch-up sent).
    Lagged,
    /// The feed stopped.
    Closed,
}

/// The batches of the feed one stream receives ([`Feed::subscribe`]).
pub struct Subscription {
    rx: mpsc::Receiver<Batch>,
    lagged: Arc<AtomicBool>,
    _registered: Registered,
}

impl Subscription {
    /// The next batch with an event this stream wants, in `seq` order. [`Missed::Lagged`] comes
    /// before any batch queued after the one dropped: the feed sets the flag before it queues a
    /// later batch, and a batch is taken from a full queue's front only after a look at the
    /// flag.
    pub async fn recv(&mut self) -> Result<Batch, Missed> {
        if self.lagged.swap(false, Ordering::Acquire) {
            return Err(Missed::Lagged);
        }
        self.rx.recv().await.ok_or(Missed::Closed)
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
    streams: Arc<Mutex<Registry>>,
    ready: watch::Sender<bool>,
) {
    // However the feed ends, its streams are told (their queues close) and no new one opens.
    struct Stopped(Arc<Mutex<Registry>>);
    impl Drop for Stopped {
        fn drop(&mut self) {
            self.0.lock().unwrap_or_else(|e| e.into_inner()).stop();
        }
    }
    let _stopped = Stopped(streams.clone());
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
                        let batch = Arc::new(FeedBatch {
                            events,
                            resolved: tokio::sync::OnceCell::new(),
                        });
                        streams
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .send(&batch);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: u64, org: &str, route: &str) -> FeedEvent {
        FeedEvent {
            route_key: route.into(),
            event: Event {
                seq,
                topic: "consultation.message".into(),
                org_number: org.into(),
                event_id: format!("e{seq}"),
                payload: "{}".into(),
                created_at: 0,
                trace_parent: String::new(),
            },
        }
    }

    fn batch(events: Vec<FeedEvent>) -> Batch {
        Arc::new(FeedBatch {
            events,
            resolved: tokio::sync::OnceCell::new(),
        })
    }

    fn seqs(b: &Batch) -> Vec<u64> {
        b.events.iter().map(|e| e.event.seq).collect()
    }

    /// Whether a batch is queued for `sub` right now.
    fn queued(sub: &mut Subscription) -> Option<Vec<u64>> {
        sub.rx.try_recv().ok().map(|b| seqs(&b))
    }

    #[tokio::test]
    async fn a_batch_goes_to_the_streams_it_concerns_once_each() {
        let registry = Arc::new(Mutex::new(Registry::default()));
        let reg = |i: Interest| register(&registry, i, 8).expect("open");
        let mut practice_a = reg(Interest::Practice("A".into()));
        let mut practice_b = reg(Interest::Practice("B".into()));
        let mut patient_1 = reg(Interest::Patient("p1".into()));
        let mut patient_2 = reg(Interest::Patient("p2".into()));
        let mut every = reg(Interest::Patient(String::new()));
        // Two events of patient 1 at practice A: one batch for each stream they concern.
        let b = batch(vec![event(1, "A", "p1"), event(2, "A", "p1")]);
        registry.lock().expect("lock").send(&b);
        assert_eq!(queued(&mut practice_a), Some(vec![1, 2]));
        assert_eq!(queued(&mut practice_a), None, "once");
        assert_eq!(queued(&mut patient_1), Some(vec![1, 2]));
        assert_eq!(queued(&mut patient_1), None, "once");
        assert_eq!(queued(&mut every), Some(vec![1, 2]));
        assert_eq!(queued(&mut practice_b), None, "not woken");
        assert_eq!(queued(&mut patient_2), None, "not woken");
        // A stream that went is no longer registered, and an empty key goes with it.
        drop(patient_2);
        let r = registry.lock().expect("lock");
        assert!(!r.patients.contains_key("p2"));
        assert_eq!(r.patients.len(), 1);
    }

    #[tokio::test]
    async fn a_full_queue_is_lagged_before_any_later_batch() {
        let registry = Arc::new(Mutex::new(Registry::default()));
        let mut sub = register(&registry, Interest::Patient("p1".into()), 1).expect("open");
        for seq in 1..=3 {
            registry
                .lock()
                .expect("lock")
                .send(&batch(vec![event(seq, "A", "p1")]));
        }
        // 1 was queued, 2 and 3 dropped (full): the stream hears it lagged first (its catch-up
        // reads 1, 2 and 3 from the database), then gets 1 (which it skips by seq).
        assert_eq!(sub.recv().await.err(), Some(Missed::Lagged));
        assert_eq!(sub.recv().await.map(|b| seqs(&b)), Ok(vec![1]));
        registry
            .lock()
            .expect("lock")
            .send(&batch(vec![event(4, "A", "p1")]));
        assert_eq!(sub.recv().await.map(|b| seqs(&b)), Ok(vec![4]));
    }

    #[tokio::test]
    async fn a_stopped_feed_closes_its_streams_and_opens_no_more() {
        let registry = Arc::new(Mutex::new(Registry::default()));
        let mut sub = register(&registry, Interest::Practice("A".into()), 4).expect("open");
        registry.lock().expect("lock").stop();
        assert_eq!(sub.recv().await.err(), Some(Missed::Closed));
        assert!(register(&registry, Interest::Practice("A".into()), 4).is_none());
    }
}
