//! Group commit on the SQLite writer (`econsult_runtime::group_commit`): transactions that queue
//! for the writer while it is busy share one commit, each `commit` returns only once its row is
//! visible to other connections (on disk), a rolled-back or dropped member leaves the rest of
//! its group alone, and a cancelled transaction never leaves the writer stuck.

use econsult_runtime::db::Db;
use sqlx::Row as _;
use std::time::Duration;

async fn db() -> (Db, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::connect(&format!("sqlite://{}", dir.path().join("g.db").display()))
        .await
        .expect("db");
    sqlx::query("CREATE TABLE t (id INTEGER PRIMARY KEY, who TEXT NOT NULL)")
        .execute(db.writer())
        .await
        .expect("create table");
    (db, dir)
}

async fn insert(tx: &mut econsult_runtime::db::Tx, who: &str) {
    sqlx::query("INSERT INTO t (who) VALUES ($1)")
        .bind(who)
        .execute(&mut **tx)
        .await
        .expect("insert");
}

/// The rows as another connection (the read pool) sees them: only what is committed.
async fn committed(db: &Db) -> Vec<String> {
    sqlx::query("SELECT who FROM t ORDER BY who")
        .fetch_all(db.read())
        .await
        .expect("read")
        .iter()
        .map(|r| r.get::<String, _>("who"))
        .collect()
}

fn counts(db: &Db) -> (u64, u64) {
    db.commit_counts().expect("sqlite has commit counts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_waiting_for_the_writer_share_one_commit_and_each_is_visible_when_acknowledged()
 {
    let (db, _dir) = db().await;
    let before = counts(&db);
    // Hold the writer so the others queue behind it.
    let mut first = db.begin().await.expect("begin");
    insert(&mut first, "first").await;
    let mut waiting = Vec::new();
    for i in 0..20 {
        let db = db.clone();
        waiting.push(tokio::spawn(async move {
            let mut tx = db.begin().await.expect("begin");
            let who = format!("w{i:02}");
            insert(&mut tx, &who).await;
            tx.commit().await.expect("commit");
            // Acknowledged: another connection must see it now.
            assert!(
                committed(&db).await.contains(&who),
                "{who} acknowledged but not visible to other connections"
            );
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        committed(&db).await,
        Vec::<String>::new(),
        "nothing committed yet"
    );
    first.commit().await.expect("commit first");
    assert!(committed(&db).await.contains(&"first".to_string()));
    for w in waiting {
        w.await.expect("task");
    }
    assert_eq!(committed(&db).await.len(), 21);
    let after = counts(&db);
    let (commits, transactions) = (after.0 - before.0, after.1 - before.1);
    assert_eq!(transactions, 21, "every transaction counted once");
    assert!(
        commits < 10,
        "21 transactions queued together took {commits} commits: not grouped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_rolls_back_or_is_dropped_leaves_the_rest_of_its_group_alone() {
    let (db, _dir) = db().await;
    let before = counts(&db);
    let mut first = db.begin().await.expect("begin");
    insert(&mut first, "a-committed").await;
    let (d1, d2, d3) = (db.clone(), db.clone(), db.clone());
    let dropped = tokio::spawn(async move {
        let mut tx = d1.begin().await.expect("begin");
        insert(&mut tx, "b-dropped").await;
        drop(tx);
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let rolled_back = tokio::spawn(async move {
        let mut tx = d2.begin().await.expect("begin");
        insert(&mut tx, "c-rolled-back").await;
        tx.rollback().await.expect("rollback");
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let last = tokio::spawn(async move {
        let mut tx = d3.begin().await.expect("begin");
        insert(&mut tx, "d-committed").await;
        tx.commit().await.expect("commit");
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    first.commit().await.expect("commit");
    dropped.await.expect("task");
    rolled_back.await.expect("task");
    last.await.expect("task");
    assert_eq!(committed(&db).await, vec!["a-committed", "d-committed"]);
    let after = counts(&db);
    assert_eq!(
        (after.0 - before.0, after.1 - before.1),
        (1, 2),
        "one commit carried both surviving transactions"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_transaction_releases_the_writer() {
    let (db, _dir) = db().await;
    // An RPC cancelled mid-transaction: its future is dropped with the transaction open.
    let d = db.clone();
    let cancelled = tokio::time::timeout(Duration::from_millis(100), async move {
        let mut tx = d.begin().await.expect("begin");
        insert(&mut tx, "cancelled").await;
        std::future::pending::<()>().await;
    })
    .await;
    assert!(cancelled.is_err(), "the transaction future was cancelled");
    // The writer is free again: both a grouped transaction and an autocommit write (which
    // needs the connection back in the pool) go through, well before the pool's 10 s timeout.
    tokio::time::timeout(Duration::from_secs(5), async {
        let mut tx = db.begin().await.expect("begin");
        insert(&mut tx, "after").await;
        tx.commit().await.expect("commit");
        sqlx::query("INSERT INTO t (who) VALUES ('autocommit')")
            .execute(db.writer())
            .await
            .expect("autocommit write");
    })
    .await
    .expect("the writer was released");
    assert_eq!(committed(&db).await, vec!["after", "autocommit"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committer_that_gives_up_waiting_does_not_strand_its_group() {
    let (db, _dir) = db().await;
    let mut tx = db.begin().await.expect("begin");
    insert(&mut tx, "impatient").await;
    // The caller (an RPC the client cancelled) stops waiting after the first poll of commit.
    let gave_up = futures::FutureExt::now_or_never(tx.commit());
    assert!(
        gave_up.is_none(),
        "the commit could not finish within one poll"
    );
    // The commit still happens, and the writer is free afterwards.
    tokio::time::timeout(Duration::from_secs(5), async {
        while committed(&db).await != vec!["impatient"] {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        sqlx::query("INSERT INTO t (who) VALUES ('autocommit')")
            .execute(db.writer())
            .await
            .expect("autocommit write");
    })
    .await
    .expect("the abandoned commit went through and released the writer");
    assert_eq!(committed(&db).await, vec!["autocommit", "impatient"]);
}
