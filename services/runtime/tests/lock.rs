//! `Db::begin_locked` takes, with its BEGIN in one round trip, the very advisory lock that
//! `Db::lock` takes by a parameter: the two serialise against each other, whatever the key
//! holds (quotes, non-ASCII). Needs `TEST_DATABASE_URL` (built as ignored locally when unset,
//! required under CI).

use econsult_runtime::db::Db;
use std::time::Duration;

/// Whether another session could take `key`'s transaction lock now (taken and released at once).
async fn free(other: &Db, key: &str) -> bool {
    let mut tx = other.begin().await.expect("begin");
    let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(key)
        .fetch_one(&mut *tx)
        .await
        .expect("try lock");
    tx.rollback().await.expect("rollback");
    got
}

#[tokio::test]
#[cfg_attr(
    no_test_backends,
    ignore = "needs TEST_DATABASE_URL and TEST_REDIS_URL"
)]
async fn begin_locked_holds_the_lock_that_lock_takes_until_the_end() {
    let url = std::env::var("TEST_DATABASE_URL").expect("TEST_DATABASE_URL");
    let db = Db::connect_with(&url, 2).await.expect("connect");
    let other = Db::connect_with(&url, 2).await.expect("connect");
    let key = format!("video:ø'); SELECT 1; --{}", uuid::Uuid::new_v4());
    assert!(free(&other, &key).await, "nobody holds the lock yet");

    let mut first = db.begin_locked(&key).await.expect("begin locked");
    assert!(!free(&other, &key).await, "begin_locked holds the lock");
    assert!(free(&other, "another key").await, "and only that key's");
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut *first)
        .await
        .expect("the transaction is usable");
    assert_eq!(one, 1);

    // A second writer of the same key, by either way of locking, waits for the first.
    let waiter = {
        let db = other.clone();
        let key = key.clone();
        tokio::spawn(async move {
            let mut tx = db.begin().await.expect("begin");
            db.lock(&mut tx, &key).await.expect("lock");
            tx.commit().await.expect("commit");
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiter.is_finished(),
        "Db::lock waited for begin_locked's holder"
    );
    first.commit().await.expect("commit");
    tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the waiter got the lock once the first committed")
        .expect("waiter");
    assert!(
        free(&other, &key).await,
        "the lock ends with the transaction"
    );
}
