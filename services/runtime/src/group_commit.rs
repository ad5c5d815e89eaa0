//! Group commit for the SQLite writer.
//!
//! SQLite has one writer, and with `synchronous = FULL` every commit waits for an fsync. One
//! commit per write transaction made the fsyncs, not the CPU, the limit of the embedded
//! backend (`load-tests/results/HISTORY.md`: the server at 83 % of a core while booking flows queued).
//! Here a write transaction is a savepoint inside a SQLite transaction shared with the write
//! transactions around it, a *group*:
//!
//! - [`GroupWriter::begin`] takes the writer (one at a time, first come first served), opens
//!   the group's `BEGIN IMMEDIATE` if none is open, and sets a savepoint unless it is the
//!   group's first transaction (an uncontended writer runs plain BEGIN … COMMIT).
//! - [`GroupTx::commit`] releases the savepoint, lets the next transaction in, then queues for
//!   the writer again. Whoever reaches the writer first with its group still open commits it:
//!   by then every transaction that was waiting has joined. Each `commit` returns only once its
//!   group is on disk (or with the group's error), so nothing is acknowledged before it is
//!   durable and a crash loses only unacknowledged work.
//! - A transaction that fails or is dropped rolls back to its savepoint: the group's other
//!   transactions are untouched. If SQLite itself rolled the whole group back (I/O error, disk
//!   full) every transaction of the group gets the error.
//!
//! Isolation: a transaction sees the changes of the earlier members of its group before they are
//! on disk; since they commit together (or fail together), a reply built on them is only sent
//! after they are durable, provided the transaction commits. One that only reads and then rolls
//! back (a validation error, a replayed idempotency key) should commit instead when its answer
//! depends on what it read ([`crate::idempotency`] does).
//!
//! Cancellation: the part of `commit` after the savepoint is released runs in a task of its own,
//! and a dropped transaction is rolled back by a task, so an RPC cancelled at any await point
//! never leaves a group open with nobody to commit it.

use opentelemetry::metrics::Histogram;
use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, AnyPool, Executor as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use tokio::sync::{Mutex, OwnedMutexGuard};

/// The outcome of one group, shared by its members.
type Outcome = Arc<OnceLock<Result<(), String>>>;

/// The single SQLite writer connection, handed to one transaction at a time.
pub(crate) struct GroupWriter {
    pool: AnyPool,
    state: Arc<Mutex<State>>,
    counters: Counters,
}

struct Counters {
    sizes: Histogram<u64>,
    commits: AtomicU64,
    transactions: AtomicU64,
}

impl Counters {
    fn committed(&self, members: u64) {
        self.sizes.record(members, &[]);
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.transactions.fetch_add(members, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for GroupWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupWriter").finish_non_exhaustive()
    }
}

#[derive(Default)]
struct State {
    /// The writer connection while a group is open (back in the pool between groups, so
    /// migrations and other users of [`crate::db::Db::writer`] can have it).
    conn: Option<PoolConnection<Any>>,
    /// The open group, if any.
    open: Option<Outcome>,
    /// Transactions that released their savepoint into the open group.
    members: u64,
    /// A dropped transaction's savepoint still has to be rolled back.
    pending_rollback: bool,
    /// Whether the transaction holding the writer set a savepoint. The first transaction of a
    /// group needs none (rolling it back is rolling back the group), so an uncontended writer
    /// runs BEGIN … COMMIT like a plain transaction.
    savepoint: bool,
}

const SAVEPOINT: &str = "SAVEPOINT econsult_tx";
const RELEASE: &str = "RELEASE econsult_tx";
const ROLLBACK_TO: &str = "ROLLBACK TO econsult_tx";

impl State {
    fn conn(&mut self) -> &mut AnyConnection {
        self.conn
            .as_mut()
            .expect("the writer connection is held while a group is open")
    }

    /// Ends the open group with `outcome` and gives the connection back to the pool.
    async fn close(&mut self, outcome: Result<(), String>, counters: &Counters) {
        if outcome.is_err() && self.conn.is_some() {
            // Best effort: SQLite may already have rolled back.
            let _ = self.conn().execute("ROLLBACK").await;
        }
        if outcome.is_ok() && self.members > 0 {
            counters.committed(self.members);
        }
        if let Some(group) = self.open.take() {
            let _ = group.set(outcome);
        }
        self.members = 0;
        self.pending_rollback = false;
        self.conn = None;
    }

    /// Rolls back the savepoint of the transaction that holds (or held) the writer. A group
    /// left with no members ends at once, so an idle writer holds no open transaction.
    async fn rollback_member(&mut self, counters: &Counters) {
        self.pending_rollback = false;
        if self.open.is_none() {
            return;
        }
        // Without a savepoint this is the group's first transaction (no members yet), and
        // rolling back the group below undoes it.
        debug_assert!(self.savepoint || self.members == 0);
        if self.savepoint {
            let undone = match self.conn().execute(ROLLBACK_TO).await {
                Ok(_) => self.conn().execute(RELEASE).await.map(|_| ()),
                Err(e) => Err(e),
            };
            if let Err(e) = undone {
                // The savepoint is gone: SQLite rolled back the whole group.
                self.close(Err(format!("write group rolled back: {e}")), counters)
                    .await;
                return;
            }
        }
        if self.members == 0 {
            let r = self.conn().execute("ROLLBACK").await;
            self.close(r.map(|_| ()).map_err(|e| e.to_string()), counters)
                .await;
        }
    }

    async fn settle(&mut self, counters: &Counters) {
        if self.pending_rollback {
            self.rollback_member(counters).await;
        }
    }
}

impl GroupWriter {
    /// A writer over `pool`, a pool of one SQLite connection.
    pub(crate) fn new(pool: AnyPool) -> Self {
        let sizes = opentelemetry::global::meter("econsult")
            .u64_histogram("db_commit_group_size")
            .with_description("SQLite write transactions made durable by one commit (group commit)")
            .with_boundaries(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0])
            .build();
        Self {
            pool,
            state: Arc::default(),
            counters: Counters {
                sizes,
                commits: AtomicU64::new(0),
                transactions: AtomicU64::new(0),
            },
        }
    }

    /// SQLite commits made so far and the write transactions they made durable.
    pub(crate) fn commit_counts(&self) -> (u64, u64) {
        (
            self.counters.commits.load(Ordering::Relaxed),
            self.counters.transactions.load(Ordering::Relaxed),
        )
    }

    /// Begins a write transaction: waits for the writer, joins the open group or opens one.
    pub(crate) async fn begin(self: &Arc<Self>) -> Result<GroupTx, sqlx::Error> {
        // In a task of its own, like every step that changes the group's state: a caller
        // cancelled here drops the finished task's `GroupTx`, which rolls back.
        tokio::spawn(self.clone().begin_inner())
            .await
            .map_err(join_error)?
    }

    async fn begin_inner(self: Arc<Self>) -> Result<GroupTx, sqlx::Error> {
        let mut st = self.state.clone().lock_owned().await;
        st.settle(&self.counters).await;
        if st.open.is_none() {
            if st.conn.is_none() {
                st.conn = Some(self.pool.acquire().await?);
            }
            if let Err(e) = st.conn().execute("BEGIN IMMEDIATE").await {
                st.conn = None;
                return Err(e);
            }
            st.open = Some(Outcome::default());
        }
        st.savepoint = st.members > 0;
        if st.savepoint
            && let Err(e) = st.conn().execute(SAVEPOINT).await
        {
            st.close(Err(format!("savepoint: {e}")), &self.counters)
                .await;
            return Err(e);
        }
        Ok(GroupTx {
            guard: Some(st),
            writer: self,
        })
    }

    /// Commits `group` unless a member already did, and returns its outcome.
    async fn finish(self: Arc<Self>, group: Outcome) -> Result<(), sqlx::Error> {
        let mut st = self.state.clone().lock_owned().await;
        if group.get().is_none() {
            // Every transaction that queued for the writer before this one has joined.
            st.settle(&self.counters).await;
            if group.get().is_none() {
                debug_assert!(st.open.as_ref().is_some_and(|o| Arc::ptr_eq(o, &group)));
                let r = st.conn().execute("COMMIT").await;
                let outcome = r.as_ref().map(|_| ()).map_err(|e| e.to_string());
                st.close(outcome, &self.counters).await;
                r?;
                return Ok(());
            }
        }
        drop(st);
        match group.get() {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(sqlx::Error::Io(std::io::Error::other(format!(
                "the write group of this transaction did not commit: {e}"
            )))),
            None => unreachable!("a group is closed with an outcome"),
        }
    }
}

/// A write transaction on the SQLite writer (see the module docs). Derefs to the connection.
pub struct GroupTx {
    guard: Option<OwnedMutexGuard<State>>,
    writer: Arc<GroupWriter>,
}

impl GroupTx {
    fn state(&self) -> &State {
        self.guard.as_ref().expect("transaction is live")
    }

    fn state_mut(&mut self) -> &mut State {
        self.guard.as_mut().expect("transaction is live")
    }

    /// Commits: returns once the transaction's group is on disk.
    pub async fn commit(mut self) -> Result<(), sqlx::Error> {
        let mut st = self.guard.take().expect("transaction is live");
        let writer = self.writer.clone();
        // Once the savepoint may be released the rest must happen even if the caller is
        // cancelled, so it runs in a task of its own.
        tokio::spawn(async move {
            if st.savepoint
                && let Err(e) = st.conn().execute(RELEASE).await
            {
                st.rollback_member(&writer.counters).await;
                return Err(e);
            }
            st.members += 1;
            let group = st.open.clone().expect("a member's group is open");
            drop(st);
            writer.finish(group).await
        })
        .await
        .map_err(join_error)?
    }

    /// Rolls back this transaction only.
    pub async fn rollback(mut self) -> Result<(), sqlx::Error> {
        let mut st = self.guard.take().expect("transaction is live");
        let writer = self.writer.clone();
        st.pending_rollback = true;
        tokio::spawn(async move { st.settle(&writer.counters).await })
            .await
            .map_err(join_error)
    }
}

fn join_error(e: tokio::task::JoinError) -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::other(e))
}

impl std::ops::Deref for GroupTx {
    type Target = AnyConnection;
    fn deref(&self) -> &AnyConnection {
        self.state()
            .conn
            .as_deref()
            .expect("the writer connection is held while a group is open")
    }
}

impl std::ops::DerefMut for GroupTx {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        self.state_mut().conn()
    }
}

impl Drop for GroupTx {
    fn drop(&mut self) {
        let Some(mut st) = self.guard.take() else {
            return;
        };
        st.pending_rollback = true;
        drop(st);
        // The next transaction settles it anyway; this makes sure an idle writer does too.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let writer = self.writer.clone();
            rt.spawn(async move {
                let mut st = writer.state.clone().lock_owned().await;
                st.settle(&writer.counters).await;
            });
        }
    }
}
