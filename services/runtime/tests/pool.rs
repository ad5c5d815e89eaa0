//! The PostgreSQL pool hands out no connection that was closed while it sat idle: it pings one
//! idle for over a second first, and takes another when the ping fails (`db::stale`). Needs
//! `TEST_DATABASE_URL` (built as ignored locally when unset, required under CI).

use econsult_runtime::db::Db;
use std::time::Duration;

#[tokio::test]
#[cfg_attr(
    no_test_backends,
    ignore = "needs TEST_DATABASE_URL and TEST_REDIS_URL"
)]
async fn a_connection_closed_while_idle_is_replaced_before_a_call_gets_it() {
    let url = std::env::var("TEST_DATABASE_URL").expect("TEST_DATABASE_URL");
    let db = Db::connect_with(&url, 1).await.expect("connect");
    let backend = || async {
        sqlx::query_scalar::<_, i32>("SELECT pg_backend_pid()")
            .fetch_one(db.read())
            .await
    };
    let first = backend().await.expect("first read");

    // Another session closes the pool's only connection, as a restart or a proxy would.
    let admin = Db::connect_with(&url, 1).await.expect("admin");
    let closed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(first)
        .fetch_one(admin.read())
        .await
        .expect("terminate");
    assert!(closed, "the pool's connection {first} was terminated");
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let second = backend()
        .await
        .expect("the call got a live connection, not the closed one");
    assert_ne!(second, first, "a new connection");
}
