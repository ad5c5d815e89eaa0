//! Contract tests of the outbox relay and the event bus, run on the embedded database bus
//! (SQLite) and on Redis Streams (PostgreSQL + Redis). Redis/PostgreSQL variants need
//! `TEST_DATABASE_URL` and `TEST_REDIS_URL` (skipped locally when unset, required under CI).

use econsult_runtime::bus::{DbBus, EventBus, RedisBus};
use econsult_runtime::db::Db;
use econsult_runtime::outbox::{self, NewEvent, Relay};
use std::{sync::Arc, time::Duration};
use tokio::sync::watch;

struct Fixture {
    db: Db,
    bus: Arc<dyn EventBus>,
    relay: Relay,
    /// The sender the fixture's relay reports its highest seq on (a second relay shares it).
    sequenced: watch::Sender<u64>,
    _dir: tempfile::TempDir,
    /// PostgreSQL: (admin URL, scratch database), dropped with the fixture.
    scratch: Option<(String, String)>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some((admin, name)) = self.scratch.take() {
            econsult_runtime::db::drop_database_blocking(admin, name);
        }
    }
}

fn env(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => panic!("{var} must be set in CI"),
        _ => None,
    }
}

async fn sqlite_fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::connect(&format!("sqlite://{}", dir.path().join("t.db").display()))
        .await
        .expect("db");
    db.migrate().await.expect("migrate");
    let (tx, rx) = watch::channel(0);
    let bus: Arc<dyn EventBus> = Arc::new(DbBus::new(db.clone(), rx));
    let relay = Relay::new(db.clone(), bus.clone(), tx.clone());
    Fixture {
        db,
        bus,
        relay,
        sequenced: tx,
        _dir: dir,
        scratch: None,
    }
}

async fn redis_fixture() -> Option<Fixture> {
    let admin = env("TEST_DATABASE_URL")?;
    let redis = env("TEST_REDIS_URL")?;
    let name = format!("econsult_bus_{}", uuid::Uuid::new_v4().simple());
    let url = econsult_runtime::db::create_database(&admin, &name)
        .await
        .expect("create db");
    let db = Db::connect(&url).await.expect("db");
    db.migrate().await.expect("migrate");
    let (tx, _rx) = watch::channel(0);
    let ns = format!("bus-test-{}", uuid::Uuid::new_v4().simple());
    let bus: Arc<dyn EventBus> = Arc::new(
        RedisBus::connect(&redis, &ns, tx.clone())
            .await
            .expect("redis"),
    );
    let relay = Relay::new(db.clone(), bus.clone(), tx.clone());
    Some(Fixture {
        db,
        bus,
        relay,
        sequenced: tx,
        _dir: tempfile::tempdir().expect("tempdir"),
        scratch: Some((admin, name)),
    })
}

async fn enqueue(db: &Db, n: usize, topic: &str) {
    let mut tx = db.begin().await.expect("begin");
    for i in 0..n {
        let body = serde_json::json!({ "i": i });
        outbox::enqueue(
            &mut tx,
            NewEvent {
                topic,
                org_number: "910000001",
                route_key: "",
                payload: &body,
            },
            0,
        )
        .await
        .expect("enqueue");
    }
    tx.commit().await.expect("commit");
}

async fn drain(relay: &Relay) {
    while relay.run_once().await.expect("relay") > 0 {}
}

async fn fetch_all(
    sub: &mut Box<dyn econsult_runtime::bus::Subscription>,
    want: usize,
) -> Vec<econsult_runtime::bus::Delivery> {
    let mut got = Vec::new();
    for _ in 0..20 {
        if got.len() >= want {
            break;
        }
        got.extend(
            sub.fetch(100, Duration::from_millis(200))
                .await
                .expect("fetch"),
        );
    }
    got
}

/// The contract every bus implementation must meet.
async fn contract(f: Fixture) {
    enqueue(&f.db, 5, "test.created").await;
    drain(&f.relay).await;

    // Sequenced gap-free in commit order, all published.
    let events = outbox::read_after(
        &f.db,
        0,
        u64::MAX,
        outbox::EventFilter {
            topic_prefix: "test.",
            ..Default::default()
        },
        100,
    )
    .await
    .expect("read");
    assert_eq!(
        events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    let unpublished: i64 = sqlx::Row::try_get(
        &sqlx::query("SELECT COUNT(*) AS n FROM outbox WHERE published_at IS NULL")
            .fetch_one(f.db.read())
            .await
            .expect("q"),
        "n",
    )
    .expect("n");
    assert_eq!(unpublished, 0);

    // A group receives every event in order.
    let mut sub = f.bus.subscribe("g1", "c1").await.expect("subscribe");
    let got = fetch_all(&mut sub, 5).await;
    assert_eq!(
        got.iter().map(|d| d.event.seq).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    assert_eq!(got[0].event.event_id, events[0].event_id);
    assert_eq!(got[0].event.payload, events[0].payload);

    // Acknowledge three; a new subscription of the same group gets the other two again.
    sub.ack(&got[..3]).await.expect("ack");
    drop(sub);
    let mut sub = f.bus.subscribe("g1", "c1").await.expect("resubscribe");
    let again = fetch_all(&mut sub, 2).await;
    assert_eq!(
        again.iter().map(|d| d.event.seq).collect::<Vec<_>>(),
        vec![4, 5]
    );
    sub.ack(&again).await.expect("ack");
    assert!(
        sub.fetch(10, Duration::from_millis(300))
            .await
            .expect("fetch")
            .is_empty(),
        "nothing left"
    );

    // Another group is independent.
    let mut other = f.bus.subscribe("g2", "c1").await.expect("subscribe g2");
    assert_eq!(fetch_all(&mut other, 5).await.len(), 5);

    // New events after the subscription arrive.
    enqueue(&f.db, 2, "test.more").await;
    drain(&f.relay).await;
    let more = fetch_all(&mut sub, 2).await;
    assert_eq!(
        more.iter().map(|d| d.event.seq).collect::<Vec<_>>(),
        vec![6, 7]
    );
    assert!(more.iter().all(|d| d.event.topic == "test.more"));
}

/// A relay that dies after sequencing but before publishing loses nothing: the next relay
/// publishes the event (at least once, same event id).
async fn relay_restart_publishes_what_a_dead_relay_left(f: Fixture) {
    enqueue(&f.db, 1, "test.created").await;
    // Simulate the crash window: sequence by hand, as the relay's first step would.
    let mut tx = f.db.begin().await.expect("begin");
    sqlx::query("UPDATE outbox SET seq = 1")
        .execute(&mut *tx)
        .await
        .expect("sequence");
    tx.commit().await.expect("commit");
    let mut sub = f.bus.subscribe("g", "c").await.expect("subscribe");
    drain(&f.relay).await;
    let got = fetch_all(&mut sub, 1).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].event.seq, 1);
    let published: i64 = sqlx::Row::try_get(
        &sqlx::query("SELECT COUNT(*) AS n FROM outbox WHERE published_at IS NOT NULL")
            .fetch_one(f.db.read())
            .await
            .expect("q"),
        "n",
    )
    .expect("n");
    assert_eq!(published, 1);
}

#[tokio::test]
async fn database_bus_meets_the_bus_contract() {
    contract(sqlite_fixture().await).await;
}

#[tokio::test]
#[cfg_attr(
    no_test_backends,
    ignore = "needs TEST_DATABASE_URL and TEST_REDIS_URL"
)]
async fn redis_streams_bus_meets_the_bus_contract() {
    if let Some(f) = redis_fixture().await {
        contract(f).await;
    }
}

/// An idle consumer waits without errors: each fetch returns empty after its wait (the stats
/// consumer's `fetch(…, 500 ms)`, and a longer wait), never a client-side timeout that would make
/// it resubscribe; an event published afterwards is still delivered once.
async fn an_idle_subscription_waits_without_errors(f: Fixture) {
    let mut sub = f.bus.subscribe("idle", "c1").await.expect("subscribe");
    let idle_until = tokio::time::Instant::now() + Duration::from_secs(3);
    let mut fetches = 0;
    while tokio::time::Instant::now() < idle_until {
        let got = sub
            .fetch(10, Duration::from_millis(500))
            .await
            .unwrap_or_else(|e| panic!("idle fetch {fetches} failed: {e:#}"));
        assert!(got.is_empty(), "nothing was published");
        fetches += 1;
    }
    let got = sub
        .fetch(10, Duration::from_millis(1500))
        .await
        .unwrap_or_else(|e| panic!("a longer idle fetch failed: {e:#}"));
    assert!(got.is_empty(), "nothing was published");
    enqueue(&f.db, 1, "t.idle").await;
    drain(&f.relay).await;
    let got = fetch_all(&mut sub, 1).await;
    assert_eq!(got.len(), 1, "the event after the idle time is delivered");
}

#[tokio::test]
async fn database_bus_idle_subscription_waits_without_errors() {
    an_idle_subscription_waits_without_errors(sqlite_fixture().await).await;
}

#[tokio::test]
#[cfg_attr(
    no_test_backends,
    ignore = "needs TEST_DATABASE_URL and TEST_REDIS_URL"
)]
async fn redis_idle_subscription_waits_without_errors() {
    if let Some(f) = redis_fixture().await {
        an_idle_subscription_waits_without_errors(f).await;
    }
}

#[tokio::test]
async fn database_bus_relay_restart_publishes_what_a_dead_relay_left() {
    relay_restart_publishes_what_a_dead_relay_left(sqlite_fixture().await).await;
}

#[tokio::test]
#[cfg_attr(
    no_test_backends,
    ignore = "needs TEST_DATABASE_URL and TEST_REDIS_URL"
)]
async fn redis_relay_restart_publishes_what_a_dead_relay_left() {
    if let Some(f) = redis_fixture().await {
        relay_restart_publishes_what_a_dead_relay_left(f).await;
    }
}

#[tokio::test]
async fn audit_log_rows_cannot_be_changed_or_deleted() {
    let f = sqlite_fixture().await;
    sqlx::query("INSERT INTO audit_log (at, subject, role, org_number, action, resource, patient_nin, trace_id) VALUES (1, 's', 1, '', 'a', 'r', 'p', '')")
        .execute(f.db.read())
        .await
        .expect_err("read-only pool refuses writes");
    let mut tx = f.db.begin().await.expect("begin");
    sqlx::query("INSERT INTO audit_log (at, subject, role, org_number, action, resource, patient_nin, trace_id) VALUES (1, 's', 1, '', 'a', 'r', 'p', '')")
        .execute(&mut *tx)
        .await
        .expect("insert");
    tx.commit().await.expect("commit");
    let mut tx = f.db.begin().await.expect("begin");
    assert!(
        sqlx::query("UPDATE audit_log SET subject = 'x'")
            .execute(&mut *tx)
            .await
            .is_err()
    );
    drop(tx);
    let mut tx = f.db.begin().await.expect("begin");
    assert!(
        sqlx::query("DELETE FROM audit_log")
            .execute(&mut *tx)
            .await
            .is_err()
    );
}

/// `Db::writes`: deferred writes only, one autocommit statement on PostgreSQL. All of them or
/// none: a failing write takes the others with it; dropped uncommitted, nothing is written.
async fn writes_commit_all_or_nothing(f: Fixture) {
    use econsult_runtime::db::{Defer as _, Value};
    const OFFSET: &str = "INSERT INTO bus_offsets (consumer_group, seq) VALUES ($1, $2)";
    const EVENT: &str = "INSERT INTO outbox (event_id, topic, org_number, payload, created_at, seq) VALUES ($1, 'test.writes', '', '{}', 1, $2)";
    let offsets = async |db: &Db| -> Vec<(String, i64)> {
        sqlx::query_as("SELECT consumer_group, seq FROM bus_offsets WHERE consumer_group LIKE 'w-%' ORDER BY consumer_group")
            .fetch_all(db.read())
            .await
            .expect("offsets")
    };
    let mut w = f.db.writes();
    w.defer(OFFSET, vec!["w-a".into(), 1i64.into()]);
    w.defer(OFFSET, vec!["w-b".into(), 2i64.into()]);
    w.defer(EVENT, vec!["w-e1".into(), Value::IntOrNull(None)]);
    w.commit().await.expect("commit");
    assert_eq!(
        offsets(&f.db).await,
        vec![("w-a".into(), 1), ("w-b".into(), 2)]
    );
    let unsequenced: Option<i64> =
        sqlx::query_scalar("SELECT seq FROM outbox WHERE event_id = 'w-e1'")
            .fetch_one(f.db.read())
            .await
            .expect("event");
    assert_eq!(unsequenced, None);

    // The second write repeats a primary key: the first one is not kept either.
    let mut w = f.db.writes();
    w.defer(OFFSET, vec!["w-c".into(), 3i64.into()]);
    w.defer(OFFSET, vec!["w-a".into(), 4i64.into()]);
    w.commit().await.expect_err("duplicate key");
    let mut w = f.db.writes();
    w.defer(OFFSET, vec!["w-d".into(), 5i64.into()]);
    drop(w);
    assert_eq!(
        offsets(&f.db).await,
        vec![("w-a".into(), 1), ("w-b".into(), 2)]
    );
}

#[tokio::test]
async fn sqlite_writes_commit_all_or_nothing() {
    writes_commit_all_or_nothing(sqlite_fixture().await).await;
}

#[tokio::test]
#[cfg_attr(
    no_test_backends,
    ignore = "needs TEST_DATABASE_URL and TEST_REDIS_URL"
)]
async fn postgres_writes_commit_all_or_nothing() {
    if let Some(f) = redis_fixture().await {
        writes_commit_all_or_nothing(f).await;
    }
}

/// The relay is woken by exactly the commits that wrote outbox events: a `Tx` or `Writes` with
/// an enqueued event, committed; not by one without events, nor by one rolled back.
async fn commits_with_events_wake_the_relay(f: Fixture) {
    use econsult_runtime::db::Defer as _;
    use econsult_runtime::outbox::{self, NewEvent};
    use futures::FutureExt as _;
    const OFFSET: &str = "INSERT INTO bus_offsets (consumer_group, seq) VALUES ($1, $2)";
    let wake = f.db.events_committed();
    // A stored wake-up makes `notified()` ready at its first poll.
    let woken = || wake.notified().now_or_never().is_some();
    assert!(!woken(), "no commit yet");

    let mut tx = f.db.begin().await.expect("begin");
    tx.defer(OFFSET, vec!["wake-a".into(), 1i64.into()]);
    tx.commit().await.expect("commit");
    assert!(!woken(), "a commit without events");

    let payload = serde_json::json!({});
    let new = || NewEvent {
        topic: "test.wake",
        org_number: "",
        route_key: "",
        payload: &payload,
    };
    let mut tx = f.db.begin().await.expect("begin");
    outbox::enqueue(&mut tx, new(), 1).await.expect("enqueue");
    assert!(!woken(), "not before the commit");
    tx.commit().await.expect("commit");
    assert!(woken(), "a Tx with an event");
    assert!(!woken(), "one wake-up per commit is stored, and taken");

    let mut tx = f.db.begin().await.expect("begin");
    outbox::enqueue(&mut tx, new(), 1).await.expect("enqueue");
    tx.rollback().await.expect("rollback");
    assert!(!woken(), "rolled back");

    let mut w = f.db.writes();
    outbox::enqueue(&mut w, new(), 1).await.expect("enqueue");
    w.commit().await.expect("commit");
    assert!(woken(), "Writes with an event");

    let mut w = f.db.writes();
    w.defer(OFFSET, vec!["wake-b".into(), 2i64.into()]);
    w.commit().await.expect("commit");
    assert!(!woken(), "Writes without events");

    // A clone of the Db (another service of the process) wakes the same relay.
    let mut tx = f.db.clone().begin().await.expect("begin");
    outbox::enqueue(&mut tx, new(), 1).await.expect("enqueue");
    tx.commit().await.expect("commit");
    assert!(woken(), "a clone's commit");
}

#[tokio::test]
async fn sqlite_commits_with_events_wake_the_relay() {
    commits_with_events_wake_the_relay(sqlite_fixture().await).await;
}

#[tokio::test]
#[cfg_attr(
    no_test_backends,
    ignore = "needs TEST_DATABASE_URL and TEST_REDIS_URL"
)]
async fn postgres_commits_with_events_wake_the_relay() {
    if let Some(f) = redis_fixture().await {
        commits_with_events_wake_the_relay(f).await;
    }
}

/// A running relay marks a pass's events published in its next pass (one statement on
/// PostgreSQL), and what its last pass published when it stops: every event ends marked, and a
/// stop publishes nothing twice.
async fn a_running_relay_marks_every_pass_and_stops_without_repeats(f: Fixture) {
    let unmarked = async || -> i64 {
        sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE published_at IS NULL")
            .fetch_one(f.db.read())
            .await
            .expect("count")
    };
    let mut sub = f.bus.subscribe("marks", "c").await.expect("subscribe");
    let (stop_tx, stop_rx) = watch::channel(false);
    let relay = Relay::new(f.db.clone(), f.bus.clone(), f.sequenced.clone());
    let running = tokio::spawn(relay.run(stop_rx));
    enqueue(&f.db, 3, "test.first").await;
    let first = fetch_all(&mut sub, 3).await;
    assert_eq!(first.len(), 3, "the first pass's events arrive");
    enqueue(&f.db, 2, "test.second").await;
    let second = fetch_all(&mut sub, 2).await;
    assert_eq!(second.len(), 2, "the second pass's events arrive");
    // The first pass's events are marked by a later pass (at most a poll later).
    let mut marked_first = false;
    for _ in 0..40 {
        let left: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM outbox WHERE published_at IS NULL AND topic = 'test.first'",
        )
        .fetch_one(f.db.read())
        .await
        .expect("count");
        if left == 0 {
            marked_first = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(marked_first, "a later pass marks the first pass published");
    stop_tx.send(true).expect("stop");
    running.await.expect("relay task");
    assert_eq!(
        unmarked().await,
        0,
        "a stopped relay leaves nothing unmarked"
    );
    sub.ack(&first).await.expect("ack");
    sub.ack(&second).await.expect("ack");
    let again = sub
        .fetch(10, Duration::from_millis(500))
        .await
        .expect("fetch");
    assert!(
        again.is_empty(),
        "the stop published again: {:?}",
        again.iter().map(|d| d.event.seq).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn sqlite_relay_marks_every_pass_and_stops_without_repeats() {
    a_running_relay_marks_every_pass_and_stops_without_repeats(sqlite_fixture().await).await;
}

#[tokio::test]
#[cfg_attr(
    no_test_backends,
    ignore = "needs TEST_DATABASE_URL and TEST_REDIS_URL"
)]
async fn postgres_relay_marks_every_pass_and_stops_without_repeats() {
    if let Some(f) = redis_fixture().await {
        a_running_relay_marks_every_pass_and_stops_without_repeats(f).await;
    }
}

/// The PostgreSQL leader remembers the highest seq it gave instead of reading it each pass. If
/// that is ever stale (a seq given behind its back, which the advisory lock rules out), `seq`'s
/// UNIQUE fails its pass, it leads again from the outbox, and every event still gets one seq,
/// gap-free, and is published.
#[tokio::test]
#[cfg_attr(
    no_test_backends,
    ignore = "needs TEST_DATABASE_URL and TEST_REDIS_URL"
)]
async fn postgres_leader_with_a_stale_highest_seq_gives_no_seq_twice() {
    let Some(f) = redis_fixture().await else {
        return;
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let relay = Relay::new(f.db.clone(), f.bus.clone(), watch::channel(0).0);
    let running = tokio::spawn(relay.run(stop_rx));
    let published = async |n: i64| {
        for _ in 0..200 {
            let done: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM outbox WHERE seq IS NOT NULL AND published_at IS NOT NULL",
            )
            .fetch_one(f.db.read())
            .await
            .expect("count");
            if done >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{n} events were not published in 10 s");
    };
    enqueue(&f.db, 10, "test.stale").await;
    published(10).await;
    // A seq given behind the leader's back: the next one it would give.
    sqlx::query(
        "INSERT INTO outbox (event_id, topic, org_number, route_key, payload, created_at, seq) \
         VALUES ('behind-its-back', 'test.stale', '910000001', '', '{}', 1, 11)",
    )
    .execute(f.db.writer())
    .await
    .expect("insert");
    enqueue(&f.db, 5, "test.stale").await;
    published(16).await;
    let seqs: Vec<i64> = sqlx::query_scalar("SELECT seq FROM outbox ORDER BY seq")
        .fetch_all(f.db.read())
        .await
        .expect("seqs");
    assert_eq!(seqs, (1..=16).collect::<Vec<i64>>());
    stop_tx.send(true).expect("stop");
    running.await.expect("relay");
}

/// The relay's plans and the outbox's size rely on autovacuum: the server says at start when it
/// is off, for the server (as PostgreSQL itself reports it) or for one of our tables.
#[tokio::test]
#[cfg_attr(
    no_test_backends,
    ignore = "needs TEST_DATABASE_URL and TEST_REDIS_URL"
)]
async fn postgres_maintenance_switched_off_is_reported() {
    let Some(f) = redis_fixture().await else {
        return;
    };
    let server_off: String = sqlx::query_scalar(
        "SELECT CASE WHEN current_setting('autovacuum') = 'off' \
                       OR current_setting('track_counts') = 'off' THEN 'off' ELSE 'on' END",
    )
    .fetch_one(f.db.read())
    .await
    .expect("settings");
    let before = f.db.maintenance_warnings().await.expect("warnings");
    assert_eq!(
        before.iter().any(|w| w.starts_with("PostgreSQL runs with")),
        server_off == "off",
        "{before:?}"
    );
    assert!(!before.iter().any(|w| w.contains("table ")), "{before:?}");

    sqlx::query("ALTER TABLE outbox SET (autovacuum_enabled = off)")
        .execute(f.db.writer())
        .await
        .expect("alter");
    let after = f.db.maintenance_warnings().await.expect("warnings");
    let tables: Vec<&String> = after.iter().filter(|w| w.contains("table ")).collect();
    assert_eq!(tables.len(), 1, "{after:?}");
    assert!(tables[0].contains("table outbox "), "{after:?}");

    sqlx::query("ALTER TABLE outbox RESET (autovacuum_enabled)")
        .execute(f.db.writer())
        .await
        .expect("reset");
    assert_eq!(f.db.maintenance_warnings().await.expect("warnings"), before);
}

#[tokio::test]
async fn sqlite_has_no_maintenance_to_report() {
    let f = sqlite_fixture().await;
    assert!(
        f.db.maintenance_warnings()
            .await
            .expect("warnings")
            .is_empty()
    );
}

/// A consumer hands its handler only the events it wants, and a batch of none it wants opens no
/// transaction: the handler is not called.
#[tokio::test]
async fn a_consumer_passes_on_only_the_events_its_handler_wants() {
    use econsult_runtime::bus::{Delivery, Event};
    use econsult_runtime::consumer::{Consumer, Handler};
    use std::sync::Mutex;

    #[derive(Default)]
    struct Wanted(Mutex<Vec<Vec<String>>>);

    #[async_trait::async_trait]
    impl Handler for Wanted {
        async fn apply(
            &self,
            _tx: &mut econsult_runtime::db::Tx,
            events: &[&Event],
        ) -> anyhow::Result<usize> {
            let topics = events.iter().map(|e| e.topic.clone()).collect();
            self.0.lock().expect("lock").push(topics);
            Ok(events.len())
        }

        fn wants(&self, event: &Event) -> bool {
            event.topic == "test.wanted"
        }
    }

    let f = sqlite_fixture().await;
    let handler = Arc::new(Wanted::default());
    let consumer = Consumer::new(f.db.clone(), "wanted", handler.clone());
    let delivery = |seq: u64, topic: &str| Delivery {
        event: Event {
            seq,
            event_id: format!("e{seq}"),
            topic: topic.into(),
            org_number: String::new(),
            payload: "{}".into(),
            created_at: 0,
            trace_parent: String::new(),
        },
        receipt: seq.to_string(),
    };
    let unwanted = [delivery(1, "test.other"), delivery(2, "test.other")];
    assert_eq!(consumer.apply_batch(&unwanted).await.expect("apply"), 0);
    assert!(
        handler.0.lock().expect("lock").is_empty(),
        "no call for a batch of none it wants"
    );
    let mixed = [
        delivery(3, "test.other"),
        delivery(4, "test.wanted"),
        delivery(5, "test.other"),
    ];
    assert_eq!(consumer.apply_batch(&mixed).await.expect("apply"), 1);
    assert_eq!(
        *handler.0.lock().expect("lock"),
        vec![vec!["test.wanted".to_owned()]]
    );
}

/// Entries a consumer took and never acked (it died) go to another consumer of its group once
/// they have been idle for `CLAIM_IDLE`, each once, and within `CLAIM_EVERY` (plus a read's
/// wait) after that: the survivor looks for them once a second, not before every read.
#[tokio::test]
#[cfg_attr(
    no_test_backends,
    ignore = "needs TEST_DATABASE_URL and TEST_REDIS_URL"
)]
async fn redis_a_dead_consumers_entries_are_claimed_once_idle() {
    use econsult_runtime::bus::{CLAIM_EVERY, CLAIM_IDLE};
    let Some(f) = redis_fixture().await else {
        return;
    };
    let mut survivor = f
        .bus
        .subscribe("claims", "survivor")
        .await
        .expect("subscribe");
    let mut dead = f.bus.subscribe("claims", "dead").await.expect("subscribe");
    enqueue(&f.db, 3, "t.claim").await;
    drain(&f.relay).await;
    let taken = fetch_all(&mut dead, 3).await;
    let taken_at = tokio::time::Instant::now();
    assert_eq!(taken.len(), 3, "the consumer that dies took every entry");
    drop(dead);
    let mut claimed = Vec::new();
    let mut fetches = 0;
    while claimed.len() < 3
        && taken_at.elapsed() < CLAIM_IDLE + CLAIM_EVERY + Duration::from_secs(3)
    {
        claimed.extend(
            survivor
                .fetch(10, Duration::from_millis(100))
                .await
                .expect("fetch"),
        );
        fetches += 1;
    }
    let after = taken_at.elapsed();
    assert!(
        after >= CLAIM_IDLE,
        "claimed after {after:?}, before the entries were idle"
    );
    let ids = |d: &[econsult_runtime::bus::Delivery]| {
        let mut v: Vec<String> = d.iter().map(|d| d.event.event_id.clone()).collect();
        v.sort();
        v
    };
    assert_eq!(
        ids(&claimed),
        ids(&taken),
        "each entry the dead consumer took, once ({fetches} fetches)"
    );
    survivor.ack(&claimed).await.expect("ack");
    assert!(
        survivor
            .fetch(10, Duration::from_millis(200))
            .await
            .expect("fetch")
            .is_empty(),
        "nothing is left to claim or read"
    );
}
