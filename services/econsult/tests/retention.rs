//! Retention of idempotent answers and published outbox events, on SQLite and on
//! PostgreSQL + Redis: one pass (driven directly, at a chosen time) deletes what is older than
//! its window and keeps the rest, and the relay and readers carry on after it.

mod common;

use common::*;
use econsult_runtime::clock::Clock as _;
use econsult_runtime::db::Db;
use econsult_runtime::outbox::{self, EventFilter};
use econsult_runtime::retention::{self, Deleted, Retention};
use sqlx::Row as _;

const DAY: i64 = 86_400_000;

async fn insert_event(
    db: &Db,
    id: &str,
    created_at: i64,
    seq: Option<i64>,
    published: Option<i64>,
) {
    let mut tx = db.begin().await.expect("begin");
    sqlx::query(
        "INSERT INTO outbox (event_id, topic, org_number, route_key, payload, created_at, seq, published_at) \
         VALUES ($1, 'test.retention', '999999999', '', '{}', $2, $3, $4)",
    )
    .bind(id)
    .bind(created_at)
    .bind(seq)
    .bind(published)
    .execute(&mut *tx)
    .await
    .expect("insert event");
    tx.commit().await.expect("commit");
}

async fn event_ids(db: &Db) -> Vec<String> {
    sqlx::query("SELECT event_id FROM outbox WHERE topic = 'test.retention' ORDER BY event_id")
        .fetch_all(db.read())
        .await
        .expect("events")
        .iter()
        .map(|r| r.get::<String, _>("event_id"))
        .collect()
}

/// Sets the catch-up watermark of consumer `group` (as if it had applied every event to `seq`).
async fn set_watermark(db: &Db, group: &str, seq: i64) {
    let mut tx = db.begin().await.expect("begin");
    sqlx::query(
        "INSERT INTO bus_offsets (consumer_group, seq) VALUES ($1, $2) \
         ON CONFLICT (consumer_group) DO UPDATE SET seq = excluded.seq",
    )
    .bind(group)
    .bind(seq)
    .execute(&mut *tx)
    .await
    .expect("watermark");
    tx.commit().await.expect("commit");
}

/// Every durable consumer of the stopped server (statistics, notifications) has applied the
/// events up to `seq`.
async fn set_watermarks(db: &Db, seq: i64) {
    let groups: Vec<String> = sqlx::query_scalar(
        "SELECT consumer_group FROM bus_offsets WHERE consumer_group LIKE '%-catch-up'",
    )
    .fetch_all(db.read())
    .await
    .expect("groups");
    assert!(groups.len() >= 2, "stats and notify watermarks: {groups:?}");
    for g in groups {
        set_watermark(db, &g, seq).await;
    }
}

async fn retention_deletes_only_what_is_older_than_its_window(env: Env) {
    let mut server = TestApp::start(env).await;
    let now = server.clock.now_ms();
    // Stop the server's relay: the test's rows keep the state it gives them until the pass.
    server
        .app
        .take()
        .expect("running")
        .stop()
        .await
        .expect("stop");
    let url = server.env.database_url.clone().unwrap_or_else(|| {
        format!(
            "sqlite://{}",
            server.dir.path().join("econsult.db").display()
        )
    });
    let db = Db::connect(&url).await.expect("db");

    // More old idempotency rows than one statement deletes, and two recent ones.
    let mut tx = db.begin().await.expect("begin");
    for (i, age) in (0..2 * retention::BATCH + 5)
        .map(|i| (i, 8 * DAY))
        .chain([(-1, 6 * DAY), (-2, DAY)])
    {
        sqlx::query(
            "INSERT INTO idempotency (scope, idem_key, request_hash, response, created_at) VALUES ('test', $1, 'h', $2, $3)",
        )
        .bind(format!("k{i}"))
        .bind(Vec::<u8>::new())
        .bind(now - age)
        .execute(&mut *tx)
        .await
        .expect("insert idempotency");
    }
    tx.commit().await.expect("commit");
    insert_event(
        &db,
        "a-old-published",
        now - 31 * DAY,
        Some(1),
        Some(now - 31 * DAY),
    )
    .await;
    insert_event(
        &db,
        "b-old-published",
        now - 31 * DAY,
        Some(2),
        Some(now - 30 * DAY - 1),
    )
    .await;
    insert_event(&db, "c-old-unpublished", now - 40 * DAY, Some(3), None).await;
    insert_event(
        &db,
        "d-recent-published",
        now - 29 * DAY,
        Some(4),
        Some(now - 29 * DAY),
    )
    .await;
    insert_event(&db, "e-old-unsequenced", now - 40 * DAY, None, None).await;

    // A durable consumer that has applied only seq 1 holds seq 2 back, and is named.
    set_watermarks(&db, 4).await;
    set_watermark(&db, "laggard-catch-up", 1).await;
    let deleted = retention::run_once(&db, &Retention::default(), now)
        .await
        .expect("pass");
    assert_eq!(
        deleted,
        Deleted {
            idempotency: 2 * retention::BATCH as u64 + 5,
            outbox: 1,
            held: 1,
            held_by: Some("laggard-catch-up".into()),
        }
    );
    assert_eq!(
        event_ids(&db).await,
        [
            "b-old-published",
            "c-old-unpublished",
            "d-recent-published",
            "e-old-unsequenced"
        ]
    );
    // Once it has caught up, the event goes.
    set_watermark(&db, "laggard-catch-up", 4).await;
    let deleted = retention::run_once(&db, &Retention::default(), now)
        .await
        .expect("pass");
    assert_eq!(
        deleted,
        Deleted {
            outbox: 1,
            ..Deleted::default()
        }
    );
    let keys: Vec<String> = sqlx::query("SELECT idem_key FROM idempotency ORDER BY idem_key")
        .fetch_all(db.read())
        .await
        .expect("keys")
        .iter()
        .map(|r| r.get("idem_key"))
        .collect();
    assert_eq!(keys, ["k-1", "k-2"]);
    assert_eq!(
        event_ids(&db).await,
        [
            "c-old-unpublished",
            "d-recent-published",
            "e-old-unsequenced"
        ]
    );

    // Much later every published event is old, but the one with the highest seq stays: the
    // relay numbers new events after it.
    let later = retention::run_once(&db, &Retention::default(), now + 60 * DAY)
        .await
        .expect("pass");
    assert_eq!(
        later,
        Deleted {
            idempotency: 2,
            ..Deleted::default()
        }
    );
    db.close().await;

    // The server carries on: the relay sequences the waiting event after seq 4 and publishes
    // both unpublished ones, and a reader whose cursor is older than the oldest kept event
    // gets every kept event from there.
    server.restart().await;
    let db = &server.platform().db;
    let mut seqs = Vec::new();
    for _ in 0..200 {
        let events = outbox::read_after(db, 1, u64::MAX, EventFilter::default(), 100)
            .await
            .expect("read");
        seqs = events
            .iter()
            .filter(|e| e.topic == "test.retention")
            .map(|e| (e.event_id.clone(), e.seq))
            .collect();
        if seqs.len() == 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        seqs,
        [
            ("c-old-unpublished".to_owned(), 3),
            ("d-recent-published".to_owned(), 4),
            ("e-old-unsequenced".to_owned(), 5)
        ]
    );
    server.shutdown().await;
}

on_both_backends!(retention_deletes_only_what_is_older_than_its_window);
