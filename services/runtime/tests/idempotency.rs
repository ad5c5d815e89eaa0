//! Contract tests of idempotency where the call's first statement claims the key
//! ([`idempotency::begin_claiming_first`]), on PostgreSQL: on SQLite that call claims the key up
//! front, as `begin` does, and SQLite has no data-modifying CTEs to claim in. Needs
//! `TEST_DATABASE_URL` (skipped locally when unset, required under CI).

use econsult_runtime::db::Db;
use econsult_runtime::idempotency::{self, Begun, IdempotencyError, Op};
use sqlx::Row as _;
use std::time::Duration;

struct Scratch {
    db: Db,
    admin: String,
    name: String,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        econsult_runtime::db::drop_database_blocking(self.admin.clone(), self.name.clone());
    }
}

async fn postgres() -> Option<Scratch> {
    let admin = match std::env::var("TEST_DATABASE_URL") {
        Ok(v) if !v.is_empty() => v,
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("TEST_DATABASE_URL must be set in CI")
        }
        _ => return None,
    };
    let name = format!("econsult_idem_{}", uuid::Uuid::new_v4().simple());
    let url = econsult_runtime::db::create_database(&admin, &name)
        .await
        .expect("create db");
    let db = Db::connect(&url).await.expect("db");
    db.migrate().await.expect("migrate");
    sqlx::query("CREATE TABLE work (id TEXT PRIMARY KEY)")
        .execute(db.writer())
        .await
        .expect("work table");
    Some(Scratch { db, admin, name })
}

const NOW: i64 = 1_800_000_000_000;

async fn begin(db: &Db, key: &str, request: &str) -> Begun<String> {
    idempotency::begin_claiming_first(db, "patient-1", "Test", key, &request, NOW)
        .await
        .expect("begin")
}

fn new(b: Begun<String>) -> Op {
    match b {
        Begun::New(op) => op,
        Begun::Replay(r, _) => panic!("PostgreSQL claims in the first statement, got replay {r}"),
    }
}

/// A call's first statement: claims the key and, only if that went through, writes `id`.
async fn first_statement(op: &mut Op, id: &str) -> Result<Option<String>, IdempotencyError> {
    const SQL: &str = "WITH claim AS (INSERT INTO idempotency (scope, idem_key, request_hash, response, created_at) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (scope, idem_key) DO NOTHING RETURNING 1 AS one), \
         w AS (INSERT INTO work (id) SELECT $6 WHERE EXISTS (SELECT 1 FROM claim) RETURNING id) \
         SELECT c.claimed, w.id FROM (SELECT count(*) AS claimed FROM claim) c LEFT JOIN w ON true";
    let row = op
        .bind_claim(sqlx::query(SQL))
        .bind(id.to_owned())
        .fetch_one(&mut *op.tx)
        .await?;
    let first = op.claimed::<String>(row.try_get("claimed")?).await?;
    let wrote: Option<String> = row.try_get("id")?;
    assert_eq!(wrote.is_some(), first.is_none(), "writes only when claimed");
    Ok(first)
}

async fn work(db: &Db) -> Vec<String> {
    sqlx::query("SELECT id FROM work ORDER BY id")
        .fetch_all(db.read())
        .await
        .expect("work")
        .iter()
        .map(|r| r.try_get("id").expect("id"))
        .collect()
}

#[tokio::test]
#[cfg_attr(
    no_test_backends,
    ignore = "needs TEST_DATABASE_URL and TEST_REDIS_URL"
)]
async fn a_retry_gets_the_first_answer_and_writes_nothing() {
    let Some(s) = postgres().await else { return };
    let mut op = new(begin(&s.db, "k1", "request").await);
    assert_eq!(
        first_statement(&mut op, "first").await.expect("first"),
        None
    );
    op.finish(&"answer-1".to_owned()).await.expect("finish");

    let mut retry = new(begin(&s.db, "k1", "request").await);
    let replay = first_statement(&mut retry, "retry").await.expect("retry");
    assert_eq!(replay.as_deref(), Some("answer-1"));
    drop(retry);
    assert_eq!(work(&s.db).await, ["first"]);

    // The same key for another request is refused.
    let mut other = new(begin(&s.db, "k1", "another request").await);
    let err = first_statement(&mut other, "other").await.unwrap_err();
    assert!(matches!(err, IdempotencyError::KeyReused), "{err:?}");
    drop(other);
    // And a call that claims up front sees the same record.
    match idempotency::begin::<_, String>(&s.db, "patient-1", "Test", "k1", &"request", NOW)
        .await
        .expect("begin")
    {
        Begun::Replay(r, _) => assert_eq!(r, "answer-1"),
        Begun::New(_) => panic!("the key was stored"),
    }
    assert_eq!(work(&s.db).await, ["first"]);
}

#[tokio::test]
#[cfg_attr(
    no_test_backends,
    ignore = "needs TEST_DATABASE_URL and TEST_REDIS_URL"
)]
async fn a_retry_during_the_first_attempt_waits_for_its_outcome() {
    let Some(s) = postgres().await else { return };
    // The first attempt commits: the waiting retry gets its answer.
    let mut op = new(begin(&s.db, "k2", "request").await);
    assert_eq!(first_statement(&mut op, "a").await.expect("first"), None);
    let db = s.db.clone();
    let retry = tokio::spawn(async move {
        let mut retry = new(begin(&db, "k2", "request").await);
        first_statement(&mut retry, "b").await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!retry.is_finished(), "the retry waits on the claim");
    op.finish(&"answer-2".to_owned()).await.expect("finish");
    let replay = retry.await.expect("join").expect("retry");
    assert_eq!(replay.as_deref(), Some("answer-2"));

    // The first attempt rolls back: the waiting retry claims the key and does the work.
    let mut op = new(begin(&s.db, "k3", "request").await);
    assert_eq!(first_statement(&mut op, "c").await.expect("first"), None);
    let db = s.db.clone();
    let retry = tokio::spawn(async move {
        let mut retry = new(begin(&db, "k3", "request").await);
        let first = first_statement(&mut retry, "d").await?;
        retry.finish(&"answer-3".to_owned()).await?;
        Ok::<_, IdempotencyError>(first)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!retry.is_finished(), "the retry waits on the claim");
    op.tx.rollback().await.expect("rollback");
    assert_eq!(retry.await.expect("join").expect("retry"), None);
    assert_eq!(work(&s.db).await, ["a", "d"]);
}

#[tokio::test]
#[cfg_attr(
    no_test_backends,
    ignore = "needs TEST_DATABASE_URL and TEST_REDIS_URL"
)]
async fn a_call_that_never_claimed_stores_its_answer_at_finish_and_only_once() {
    let Some(s) = postgres().await else { return };
    let one = new(begin(&s.db, "k4", "request").await);
    let two = new(begin(&s.db, "k4", "request").await);
    one.finish(&"answer-4".to_owned()).await.expect("finish");
    let err = two.finish(&"answer-5".to_owned()).await.unwrap_err();
    match err {
        IdempotencyError::Db(e) => assert!(
            e.as_database_error()
                .is_some_and(|d| d.kind() == sqlx::error::ErrorKind::UniqueViolation),
            "{e:?}"
        ),
        other => panic!("{other:?}"),
    }
    let mut retry = new(begin(&s.db, "k4", "request").await);
    let replay = first_statement(&mut retry, "e").await.expect("retry");
    assert_eq!(replay.as_deref(), Some("answer-4"));
}
