//! The floor on SQLite: the floor's statements in-process, on one writing connection with the
//! service's pragmas and a pool of readers, each part's cost the CPU of this process's SQLite
//! threads; beside them the writes as the product commits them on SQLite ([`guaranteed`]).

mod guaranteed;

use super::{DbFloor, Plan, SLOTS, THREADS, Unit, parts, seed};
use crate::procstat;
use anyhow::Context as _;
use std::time::{Duration, Instant};

/// The scripts' statements with sqlx parameters, for SQLite (pgbench's `:vars` become binds;
/// ids come from the client, as SQLite has no `gen_random_uuid`).
const SQLITE_BOOKING: [&str; 2] = [
    "UPDATE booking_slots SET status = 2, hold_id = NULL, hold_patient = NULL, hold_expires_at = NULL \
     WHERE slot_id = $1 AND status = 1",
    "INSERT INTO booking_appointments (appointment_id, slot_id, gp_uid, patient_nin, status, reason, booked_at) \
     SELECT $2, slot_id, gp_uid, $3, 1, '', 0 FROM booking_slots WHERE slot_id = $1 AND status = 2 \
     ON CONFLICT DO NOTHING",
];
const SQLITE_MESSAGE: [&str; 2] = [
    "UPDATE consultation_threads SET last_seq = last_seq + 1, updated_at = 0 WHERE thread_id = $1 RETURNING last_seq",
    "INSERT INTO consultation_messages (message_id, thread_id, seq, author, author_hpr, body, sent_at) \
     VALUES ($1, $2, $3, 1, '', 'Hei, jeg har hatt vondt i halsen i fem dager og lurer på om jeg bør komme inn.', 0)",
];
const SQLITE_READ: &str = "SELECT slot_id, start_at, end_at, modality FROM booking_slots \
     WHERE gp_uid = 'pgb-gp' AND start_at >= $1 AND status = 1 ORDER BY start_at LIMIT 20";

#[derive(Clone, Copy)]
enum Kind {
    Booking,
    Message,
    Read,
    /// A booking pair as the product commits it ([`guaranteed::booking_pair`]).
    BookingGuaranteed,
    /// A message write as the product commits it ([`guaranteed::message_write`]).
    MessageGuaranteed,
}

/// One transaction of `kind` with random parameters.
async fn sqlite_once(
    write: &sqlx::AnyPool,
    read: &sqlx::AnyPool,
    relay: &guaranteed::SharedRelay,
    kind: Kind,
    (slots, threads): (i64, i64),
) -> anyhow::Result<()> {
    use rand::Rng as _;
    use sqlx::Row as _;
    let (n, patient) = {
        let mut rng = rand::thread_rng();
        (rng.gen_range(1..=slots), rng.gen_range(1..=threads))
    };
    match kind {
        Kind::Booking => {
            let slot = format!("pgb-{n}");
            let mut tx = write.begin().await?;
            sqlx::query(SQLITE_BOOKING[0])
                .bind(&slot)
                .execute(&mut *tx)
                .await?;
            sqlx::query(SQLITE_BOOKING[1])
                .bind(&slot)
                .bind(uuid::Uuid::new_v4().to_string())
                .bind(format!("p{patient}"))
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        }
        Kind::Message => {
            let thread = format!("pgb-t{}", 1 + n % threads);
            let mut tx = write.begin().await?;
            let seq: i64 = sqlx::query(SQLITE_MESSAGE[0])
                .bind(&thread)
                .fetch_one(&mut *tx)
                .await?
                .try_get(0)?;
            sqlx::query(SQLITE_MESSAGE[1])
                .bind(uuid::Uuid::new_v4().to_string())
                .bind(&thread)
                .bind(seq)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        }
        Kind::Read => {
            sqlx::query(SQLITE_READ)
                .bind(4_000_000_000_000 + n * 60_000)
                .fetch_all(read)
                .await?;
        }
        Kind::BookingGuaranteed => {
            guaranteed::booking_pair(write, read, relay, slots, threads).await?;
        }
        Kind::MessageGuaranteed => guaranteed::message_write(write, relay, threads).await?,
    }
    Ok(())
}

/// The SQLite floor: the same statements, `plan.clients` tasks for `plan.seconds` each,
/// `plan.repeats` rounds, in one transaction each on one writing connection with the service's pragmas (WAL,
/// `synchronous = FULL`) and a pool of readers, on a scratch file migrated with the real schema.
/// The cost is the CPU of this process's SQLite threads (`sqlx-sqlite-worker-*`).
pub async fn sqlite(plan: Plan) -> anyhow::Result<DbFloor> {
    let Plan {
        seconds,
        repeats,
        clients,
    } = plan;
    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}", dir.path().join("floor.db").display());
    {
        let db = econsult_runtime::db::Db::connect(&url).await?;
        db.migrate().await?;
        eprintln!("econsult-load: floor: seeding {SLOTS} slots and {THREADS} threads");
        seed(db.writer(), SLOTS, THREADS).await?;
        db.close().await;
    }
    let (write, read) = pools(&url, clients).await?;
    let relay = guaranteed::SharedRelay::default();
    let mut runs: Vec<Vec<Unit>> = vec![Vec::new(); 5];
    for round in 1..=repeats.max(1) {
        for (i, (name, kind)) in [
            ("booking write", Kind::Booking),
            ("message write", Kind::Message),
            ("read", Kind::Read),
            ("booking pair, guaranteed", Kind::BookingGuaranteed),
            ("message write, guaranteed", Kind::MessageGuaranteed),
        ]
        .into_iter()
        .enumerate()
        {
            eprintln!(
                "econsult-load: floor: SQLite {name} for {seconds} s (round {round} of {repeats})"
            );
            let before = procstat::threads_cpu_s("sqlx-sqlite").context("no /proc")?;
            let started = Instant::now();
            let deadline = started + Duration::from_secs(seconds);
            let mut tasks = Vec::new();
            for _ in 0..clients.max(1) {
                let (write, read, relay) = (write.clone(), read.clone(), relay.clone());
                tasks.push(tokio::spawn(async move {
                    let mut done = 0u64;
                    while Instant::now() < deadline {
                        sqlite_once(&write, &read, &relay, kind, (SLOTS, THREADS)).await?;
                        done += 1;
                    }
                    anyhow::Ok(done)
                }));
            }
            let mut transactions = 0;
            for t in tasks {
                transactions += t.await??;
            }
            let wall = started.elapsed().as_secs_f64();
            let cpu = procstat::threads_cpu_s("sqlx-sqlite").context("no /proc")? - before;
            anyhow::ensure!(transactions > 0, "SQLite {name} ran no transaction");
            let what = match kind {
                Kind::BookingGuaranteed | Kind::MessageGuaranteed => {
                    "the product's SQLite statements (load-tests/src/floor/sqlite/guaranteed.rs)"
                }
                _ => "one transaction each",
            };
            runs[i].push(Unit {
                name: name.into(),
                transactions,
                per_second: transactions as f64 / wall,
                cpu_ms: 1000.0 * cpu / transactions as f64,
                cpu_ms_runs: Vec::new(),
                command: format!(
                    "in-process: {clients} tasks, {what} on one writer (WAL, synchronous = FULL), {seconds} s (median of {repeats})"
                ),
            });
        }
    }
    write.close().await;
    read.close().await;
    parts("sqlite", runs)
}

/// The floor's connections to the SQLite file at `url`: one writer with the service's pragmas
/// and `readers` read-only connections.
async fn pools(url: &str, readers: u32) -> anyhow::Result<(sqlx::AnyPool, sqlx::AnyPool)> {
    use sqlx::Executor as _;
    use std::str::FromStr as _;
    let write = sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .after_connect(|conn, _| {
            Box::pin(async move {
                conn.execute(econsult_runtime::db::SQLITE_WRITER_PRAGMAS)
                    .await?;
                Ok(())
            })
        })
        .connect_with(sqlx::any::AnyConnectOptions::from_str(&format!(
            "{url}?mode=rw"
        ))?)
        .await?;
    let read = sqlx::any::AnyPoolOptions::new()
        .max_connections(readers.max(1))
        .connect_with(sqlx::any::AnyConnectOptions::from_str(&format!(
            "{url}?mode=ro"
        ))?)
        .await?;
    Ok((write, read))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::Row as _;

    /// The guaranteed writes replay against the real SQLite schema (a migration that renames
    /// what they write fails them here, not in a night's sweep), and write what the product's
    /// transactions write: each message write its message, events and stored answer; each
    /// booking pair its episode, access-log rows, event and answers; the relay's passes
    /// gap-free seqs, each marking what the pass before it gave.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_guaranteed_writes_replay_against_the_real_schema() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("floor.db").display());
        let db = econsult_runtime::db::Db::connect(&url).await.expect("open");
        db.migrate().await.expect("migrate");
        seed(db.writer(), 2_000, 500).await.expect("seed");
        db.close().await;
        let (write, read) = pools(&url, 2).await.expect("pools");
        let relay = guaranteed::SharedRelay::default();
        for _ in 0..120 {
            sqlite_once(&write, &read, &relay, Kind::MessageGuaranteed, (2_000, 500))
                .await
                .expect("message write");
            sqlite_once(&write, &read, &relay, Kind::BookingGuaranteed, (2_000, 500))
                .await
                .expect("booking pair");
        }
        // Two last passes: sequence what is left, then mark it.
        guaranteed::relay_pass(&write, &relay).await.expect("pass");
        guaranteed::relay_pass(&write, &relay).await.expect("pass");
        let count = async |sql: &str| -> i64 {
            sqlx::query(sql)
                .fetch_one(&read)
                .await
                .expect(sql)
                .try_get(0)
                .expect("a count")
        };
        crate::floor::tests::replayed_rows_are_the_products(&read)
            .await
            .expect("the replay's rows");
        // A message's seq follows its thread's last: no thread has a gap or a repeat.
        assert_eq!(
            count(
                "SELECT COUNT(*) FROM consultation_threads t WHERE last_seq <> \
                 (SELECT COUNT(*) FROM consultation_messages m WHERE m.thread_id = t.thread_id) \
                 AND EXISTS (SELECT 1 FROM consultation_messages m WHERE m.thread_id = t.thread_id)"
            )
            .await,
            0
        );
        // And after the two last passes: every event sequenced, and none left unmarked.
        let events = count("SELECT COUNT(*) FROM outbox").await;
        assert_eq!(count("SELECT COUNT(seq) FROM outbox").await, events);
        assert_eq!(count("SELECT MAX(seq) FROM outbox").await, events);
        assert_eq!(
            count("SELECT COUNT(*) FROM outbox WHERE published_at IS NULL").await,
            0
        );
        write.close().await;
        read.close().await;
    }
}
