//! The floor of `--efficiency`: what the least possible implementation of a scenario's flow
//! costs in CPU on this machine now, measured minutes before the product in the same run.
//!
//! The floor of a flow is the sum of its parts, each measured now:
//! - a write transaction: the scenario's equivalent SQL (`pgbench/booking.sql`,
//!   `pgbench/message.sql`) as pgbench transactions against a scratch database with the real
//!   schema (PostgreSQL), or the same statements in one transaction each on a plain SQLite
//!   connection with the service's pragmas (SQLite);
//! - a read: `pgbench/read.sql` (a select of free slots by the service's index), likewise;
//! - an RPC: an empty gRPC call (the health Check) on the same server, at the RPC rate the
//!   product ran at.
//!
//! Beside the floor, the writes as the product commits them, with the guarantees' rows: a rush
//! flow's HoldSlot and Book (`pgbench/booking-guaranteed.sql`) and a message write
//! (`pgbench/message-guaranteed.sql`): the claimed key and stored answer, the locks, the booking
//! episode, the outbox events and the relay's sequencing, the access-log rows. On SQLite the
//! same writes are the product's SQLite statements, in-process (`floor/sqlite/guaranteed.rs`).
//! The floor with those parts in place of the least writes, less the floor, is what the
//! guarantees cost the database; the product less it is the cost of everything else.
//!
//! Each part's cost is the CPU of the database alone (PostgreSQL + Redis processes, or this
//! process's SQLite threads) and, for the empty call, of the server's threads alone: the
//! clients (pgbench, the generator) are left out on both sides, as the product's figure leaves
//! out the generator.

mod sqlite;

pub use sqlite::sqlite;

use crate::procstat;
use crate::target::require_loopback;
use anyhow::Context as _;
use serde::Serialize;
use std::time::{Duration, Instant};

pub const BOOKING_SQL: &str = include_str!("../pgbench/booking.sql");
pub const MESSAGE_SQL: &str = include_str!("../pgbench/message.sql");
pub const READ_SQL: &str = include_str!("../pgbench/read.sql");
pub const BOOKING_GUARANTEED_SQL: &str = include_str!("../pgbench/booking-guaranteed.sql");
pub const MESSAGE_GUARANTEED_SQL: &str = include_str!("../pgbench/message-guaranteed.sql");

/// Slots and threads seeded for the floor's transactions.
const SLOTS: i64 = 1_000_000;
const THREADS: i64 = 100_000;

/// One measured part of the floor.
#[derive(Debug, Clone, Serialize)]
pub struct Unit {
    /// `booking write`, `message write`, `read`, `empty RPC`.
    pub name: String,
    pub transactions: u64,
    pub per_second: f64,
    /// CPU of the database (or the server, for the empty RPC) per transaction, in ms: the
    /// median of `cpu_ms_runs`.
    pub cpu_ms: f64,
    /// Every measurement of the part, in the order taken (`--floor-repeats`).
    pub cpu_ms_runs: Vec<f64>,
    pub command: String,
}

/// The median measurement of a part (the middle one by CPU per transaction; of an even
/// number, the upper middle), carrying every measurement's CPU. One measurement on this
/// machine moved ±15–30 % within half an hour; the median of several is what the ratio uses.
pub fn median(mut runs: Vec<Unit>) -> anyhow::Result<Unit> {
    anyhow::ensure!(!runs.is_empty(), "a floor part was not measured");
    let all: Vec<f64> = runs.iter().map(|u| u.cpu_ms).collect();
    runs.sort_by(|a, b| a.cpu_ms.total_cmp(&b.cpu_ms));
    let mut m = runs.swap_remove(runs.len() / 2);
    m.cpu_ms_runs = all;
    Ok(m)
}

/// The parts from their measurements, in the order booking, message, read, and then the
/// guaranteed booking pair and message write where they were measured.
fn parts(backend: &str, runs: Vec<Vec<Unit>>) -> anyhow::Result<DbFloor> {
    let mut runs = runs.into_iter();
    let mut next = || median(runs.next().unwrap_or_default());
    Ok(DbFloor {
        backend: backend.into(),
        booking_write: next()?,
        message_write: next()?,
        read: next()?,
        booking_guaranteed: next().ok(),
        message_guaranteed: next().ok(),
    })
}

/// The database parts of the floor (the empty RPC is measured per scenario, at its rate).
#[derive(Debug, Clone, Serialize)]
pub struct DbFloor {
    pub backend: String,
    pub booking_write: Unit,
    pub message_write: Unit,
    pub read: Unit,
    /// A rush flow's HoldSlot and Book with the guarantees' rows, as the product commits them
    /// (`pgbench/booking-guaranteed.sql`; on SQLite `floor/sqlite/guaranteed.rs`).
    pub booking_guaranteed: Option<Unit>,
    /// A message write with the guarantees' rows, as the product commits it
    /// (`pgbench/message-guaranteed.sql`; on SQLite `floor/sqlite/guaranteed.rs`).
    pub message_guaranteed: Option<Unit>,
}

/// What one flow of a scenario consists of, in floor parts.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct FlowParts {
    pub booking_writes: f64,
    /// Of the booking writes, the HoldSlot-and-Book pairs (two each).
    pub booking_pairs: f64,
    pub message_writes: f64,
    pub reads: f64,
    pub rpcs: f64,
}

impl FlowParts {
    /// The parts of one rush flow: FindSlots (a read: a search records nothing until it
    /// books), HoldSlot and Book (a write each), and the share that cancels (a write).
    pub fn rush(cancel_ratio: f64) -> Self {
        Self {
            booking_writes: 2.0 + cancel_ratio,
            booking_pairs: 1.0,
            message_writes: 0.0,
            reads: 1.0,
            rpcs: 3.0 + cancel_ratio,
        }
    }

    /// The parts of one messaging flow: StartConsultation, SendMessage and Reply (a message
    /// write each; the thread's own INSERT is left out, so this floor is if anything low), and
    /// the retried share (a read of the stored answer). Delivery on the streams is not a part:
    /// its least cost was not measured, so it counts as product cost.
    pub fn messaging(retry_ratio: f64) -> Self {
        Self {
            booking_writes: 0.0,
            booking_pairs: 0.0,
            message_writes: 3.0,
            reads: retry_ratio,
            rpcs: 3.0 + retry_ratio,
        }
    }

    /// One signal relayed: one RPC, no database.
    pub fn signalling() -> Self {
        Self {
            booking_writes: 0.0,
            booking_pairs: 0.0,
            message_writes: 0.0,
            reads: 0.0,
            rpcs: 1.0,
        }
    }

    /// `share` of `a` and the rest of `b`.
    pub fn mix(a: Self, share: f64, b: Self) -> Self {
        let w = |x: f64, y: f64| share * x + (1.0 - share) * y;
        Self {
            booking_writes: w(a.booking_writes, b.booking_writes),
            booking_pairs: w(a.booking_pairs, b.booking_pairs),
            message_writes: w(a.message_writes, b.message_writes),
            reads: w(a.reads, b.reads),
            rpcs: w(a.rpcs, b.rpcs),
        }
    }

    /// CPU ms of the floor of one flow.
    pub fn floor_ms(&self, db: &DbFloor, rpc_ms: f64) -> f64 {
        self.booking_writes * db.booking_write.cpu_ms
            + self.message_writes * db.message_write.cpu_ms
            + self.reads * db.read.cpu_ms
            + self.rpcs * rpc_ms
    }

    /// CPU ms of the floor of one flow with its booking pairs and message writes priced as the
    /// product commits them, with the guarantees' rows (`None` where a part the flow has was
    /// not measured).
    pub fn guaranteed_ms(&self, db: &DbFloor, rpc_ms: f64) -> Option<f64> {
        let anew = |n: f64, unit: &Option<Unit>, least: f64| match unit {
            _ if n == 0.0 => Some(0.0),
            Some(g) => Some(n * (g.cpu_ms - least)),
            None => None,
        };
        Some(
            self.floor_ms(db, rpc_ms)
                + anew(
                    self.booking_pairs,
                    &db.booking_guaranteed,
                    2.0 * db.booking_write.cpu_ms,
                )?
                + anew(
                    self.message_writes,
                    &db.message_guaranteed,
                    db.message_write.cpu_ms,
                )?,
        )
    }
}

/// Seeds the floor's rows into a freshly migrated database: one GP with `slots` free slots a
/// minute apart, and `threads` open threads, one for each of as many patients on its list.
async fn seed(pool: &sqlx::AnyPool, slots: i64, threads: i64) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO booking_gps (gp_uid, org_number, gp_id, hpr_number, display_name, municipality_number, list_capacity, list_status, updated_at) \
         VALUES ('pgb-gp', '999999999', 'pgb', '1', 'pgbench', '0301', 2500, 1, 0)",
    )
    .execute(pool)
    .await?;
    sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT CAST(1 AS BIGINT) UNION ALL SELECT i + 1 FROM n WHERE i < $1) \
         INSERT INTO booking_slots (slot_id, gp_uid, start_at, end_at, modality, acute_reserve, status, created_at) \
         SELECT 'pgb-' || i, 'pgb-gp', 4000000000000 + i * 60000, 4000000000000 + i * 60000 + 60000, 1, 0, 1, 0 FROM n",
    )
    .bind(slots)
    .execute(pool)
    .await?;
    sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT CAST(1 AS BIGINT) UNION ALL SELECT i + 1 FROM n WHERE i < $1) \
         INSERT INTO consultation_threads (thread_id, patient_nin, gp_id, gp_display_name, org_number, municipality_number, \
         category, subject, state, submitted_at, due_at, updated_at) \
         SELECT 'pgb-t' || i, 'p' || i, 'pgb', 'pgbench', '999999999', '0301', 1, 'Sår hals', 1, 0, 0, 0 FROM n",
    )
    .bind(threads)
    .execute(pool)
    .await?;
    // The threads' patients, on the GP's list: the commands of the guaranteed scripts read
    // the patient's GP through the list, as the product's do.
    sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT CAST(1 AS BIGINT) UNION ALL SELECT i + 1 FROM n WHERE i < $1) \
         INSERT INTO booking_list_members (patient_nin, gp_uid, added_at) SELECT 'p' || i, 'pgb-gp', 0 FROM n",
    )
    .bind(threads)
    .execute(pool)
    .await?;
    sqlx::query("ANALYZE").execute(pool).await?;
    Ok(())
}

/// CPU seconds of the PostgreSQL and Redis processes between `snap` and now.
fn db_cpu_s(snap: &procstat::Snapshot) -> f64 {
    let u = snap.usage_until_now();
    u.db_cpu_percent.unwrap_or(0.0) / 100.0 * u.wall_s
}

/// How long and how often the floor's parts are measured.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Seconds of one measurement of one part.
    pub seconds: u64,
    /// Measurements of each part, taken in rounds (booking, message, read, booking, …) so
    /// that a drift of the machine reaches every part alike.
    pub repeats: u32,
    /// Concurrent clients.
    pub clients: u32,
}

/// The PostgreSQL floor: the three scripts by pgbench, `plan.seconds` each, `plan.repeats`
/// rounds, against a scratch database next to `admin_url`'s (dropped afterwards).
pub async fn postgres(admin_url: &str, plan: Plan) -> anyhow::Result<DbFloor> {
    let Plan {
        seconds,
        repeats,
        clients,
    } = plan;
    require_loopback("--database-url", admin_url)?;
    let pgbench = crate::pgbench::find_pgbench().context(
        "pgbench is not installed (Debian: apt-get install postgresql-contrib or postgresql-client)",
    )?;
    let name = format!(
        "econsult_floor_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let url = econsult_runtime::db::create_database(admin_url, &name)
        .await
        .context("create the floor's database")?;
    let outcome = async {
        let db = econsult_runtime::db::Db::connect(&url).await?;
        db.migrate().await?;
        eprintln!("econsult-load: floor: seeding {SLOTS} slots and {THREADS} threads");
        seed(db.read(), SLOTS, THREADS).await?;
        db.close().await;
        let scripts = [
            ("booking write", "booking.sql", BOOKING_SQL),
            ("message write", "message.sql", MESSAGE_SQL),
            ("read", "read.sql", READ_SQL),
            (
                "booking pair, guaranteed",
                "booking-guaranteed.sql",
                BOOKING_GUARANTEED_SQL,
            ),
            (
                "message write, guaranteed",
                "message-guaranteed.sql",
                MESSAGE_GUARANTEED_SQL,
            ),
        ];
        let mut runs: Vec<Vec<Unit>> = vec![Vec::new(); scripts.len()];
        for round in 1..=repeats.max(1) {
        for (i, (unit, file, script)) in scripts.into_iter().enumerate() {
            let mut run = crate::pgbench::command(
                &pgbench,
                script,
                admin_url,
                &name,
                &[
                    format!("-c{clients}"),
                    "-j2".into(),
                    format!("-T{seconds}"),
                    format!("-Dnslots={SLOTS}"),
                    format!("-Dnthreads={THREADS}"),
                ],
            )?;
            eprintln!("econsult-load: floor: pgbench {file} for {seconds} s (round {round} of {repeats})");
            let snap = procstat::Snapshot::take().context("no /proc")?;
            let out = tokio::time::timeout(
                Duration::from_secs(seconds + 60),
                run.cmd.kill_on_drop(true).output(),
            )
            .await
            .context("pgbench did not finish")??;
            // pgbench's backends end as it does; their time reaches the postmaster's cutime
            // once it has reaped them. A snapshot in between would miss a backend whose
            // process was gone while its parent had not yet collected it.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let cpu = db_cpu_s(&snap);
            drop(run);
            let stdout = String::from_utf8_lossy(&out.stdout);
            if !out.status.success() {
                anyhow::bail!(
                    "pgbench {file} failed: {stdout}{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let (tps, transactions) = crate::pgbench::parse_output(&stdout);
            let transactions = transactions.context("pgbench printed no transaction count")?;
            anyhow::ensure!(transactions > 0, "pgbench {file} ran no transaction");
            runs[i].push(Unit {
                name: unit.into(),
                transactions,
                per_second: tps.unwrap_or(0.0),
                cpu_ms: 1000.0 * cpu / transactions as f64,
                cpu_ms_runs: Vec::new(),
                command: format!(
                    "pgbench -n -M prepared -c {clients} -j 2 -T {seconds} -D nslots={SLOTS} -D nthreads={THREADS} -f load-tests/pgbench/{file} (median of {repeats})"
                ),
            });
        }
        }
        parts("postgres", runs)
    }
    .await;
    econsult_runtime::db::drop_database(admin_url, &name).await;
    outcome
}

/// The CPU of one round trip to PostgreSQL on both ends, at a given rate: the product's client
/// stack (the service's pool, sqlx, tokio, on the server's runtime) sending `SELECT 1`, each
/// task on a connection it holds, so that nothing but the statement crosses the wire.
#[derive(Debug, Clone, Serialize)]
pub struct RoundTrip {
    /// Round trips asked for per second, and done.
    pub offered_per_second: f64,
    pub per_second: f64,
    pub round_trips: u64,
    /// Requests the wire carried per round trip (1.0 when each is one segment).
    pub wire_per_round_trip: Option<f64>,
    /// CPU ms per round trip of the server's runtime threads (the client side) and of
    /// PostgreSQL + Redis.
    pub client_cpu_ms: f64,
    pub db_cpu_ms: f64,
    pub command: String,
}

/// Measures [`RoundTrip`] for `seconds` at `rate` round trips a second from `clients` tasks on
/// `runtime` (the server's: its threads are the ones the snapshot counts as the server).
pub async fn round_trip(
    url: &str,
    runtime: &tokio::runtime::Handle,
    rate: f64,
    seconds: u64,
    clients: u32,
) -> anyhow::Result<RoundTrip> {
    require_loopback("--database-url", url)?;
    let clients = clients.max(1);
    let url = url.to_owned();
    // Connected on the server's runtime, so that its threads do the sockets' I/O too.
    let (round_trips, usage) = runtime
        .spawn(async move {
            let db = econsult_runtime::db::Db::connect_with(&url, clients).await?;
            let period = Duration::from_secs_f64(f64::from(clients) / rate.max(1.0));
            let mut conns = Vec::new();
            for _ in 0..clients {
                conns.push(db.read().acquire().await?);
            }
            let snap = procstat::Snapshot::take().context("no /proc")?;
            let deadline = Instant::now() + Duration::from_secs(seconds);
            let mut tasks = Vec::new();
            for (i, mut conn) in conns.into_iter().enumerate() {
                let first =
                    tokio::time::Instant::now() + period.mul_f64(i as f64 / f64::from(clients));
                tasks.push(tokio::spawn(async move {
                    let mut tick = tokio::time::interval_at(first, period);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                    let mut done = 0u64;
                    while Instant::now() < deadline {
                        tick.tick().await;
                        sqlx::query("SELECT 1").execute(&mut *conn).await?;
                        done += 1;
                    }
                    anyhow::Ok((done, conn))
                }));
            }
            let mut round_trips = 0;
            let mut held = Vec::new();
            for t in tasks {
                let (done, conn) = t.await??;
                round_trips += done;
                held.push(conn);
            }
            let usage = snap.usage_until_now();
            drop(held);
            db.close().await;
            anyhow::Ok((round_trips, usage))
        })
        .await??;
    anyhow::ensure!(round_trips > 0, "no round trip was made");
    let n = round_trips as f64;
    Ok(RoundTrip {
        offered_per_second: rate,
        per_second: n / usage.wall_s.max(1e-3),
        round_trips,
        wire_per_round_trip: usage.requests_to("postgres").map(|r| r as f64 / n),
        client_cpu_ms: 1000.0 * usage.server_cpu_s.unwrap_or(0.0) / n,
        db_cpu_ms: 10.0 * usage.db_cpu_percent.unwrap_or(0.0) * usage.wall_s / n,
        command: format!(
            "SELECT 1 from {clients} tasks, each on a connection it holds, {rate:.0}/s for {seconds} s"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(cpu_ms: f64, transactions: u64) -> Unit {
        Unit {
            name: "read".into(),
            transactions,
            per_second: transactions as f64 / 8.0,
            cpu_ms,
            cpu_ms_runs: Vec::new(),
            command: String::new(),
        }
    }

    #[test]
    fn a_part_is_its_median_measurement_with_every_measurement_kept() {
        let m = median(vec![unit(0.30, 1), unit(0.10, 2), unit(0.20, 3)]).expect("median");
        assert_eq!((m.cpu_ms, m.transactions), (0.20, 3));
        assert_eq!(m.cpu_ms_runs, vec![0.30, 0.10, 0.20]);
        let m = median(vec![unit(0.40, 1), unit(0.10, 2)]).expect("median");
        assert_eq!(m.cpu_ms, 0.40, "of two, the upper middle");
        assert!(median(Vec::new()).is_err());
    }

    #[test]
    fn the_guaranteed_floor_prices_the_pairs_and_message_writes_anew() {
        let mut db = DbFloor {
            backend: "postgres".into(),
            booking_write: unit(0.30, 1),
            message_write: unit(0.20, 1),
            read: unit(0.05, 1),
            booking_guaranteed: None,
            message_guaranteed: None,
        };
        let messaging = FlowParts::messaging(0.1);
        let floor = messaging.floor_ms(&db, 0.1);
        assert!((floor - (3.0 * 0.20 + 0.1 * 0.05 + 3.1 * 0.1)).abs() < 1e-9);
        assert_eq!(messaging.guaranteed_ms(&db, 0.1), None, "not measured");
        db.message_guaranteed = Some(unit(0.50, 1));
        let with = messaging.guaranteed_ms(&db, 0.1).expect("measured");
        assert!((with - floor - 3.0 * 0.30).abs() < 1e-9);
        let rush = FlowParts::rush(0.1);
        assert_eq!(rush.guaranteed_ms(&db, 0.1), None, "the pair not measured");
        db.booking_guaranteed = Some(unit(1.00, 1));
        let with = rush.guaranteed_ms(&db, 0.1).expect("measured");
        assert!(
            (with - rush.floor_ms(&db, 0.1) - (1.00 - 2.0 * 0.30)).abs() < 1e-9,
            "one pair in place of two least booking writes; the cancel stays least"
        );
        let mixed = FlowParts::mix(rush, 0.25, messaging);
        let with = mixed.guaranteed_ms(&db, 0.1).expect("measured");
        let anew = 0.25 * (1.00 - 0.60) + 0.75 * 3.0 * 0.30;
        assert!((with - mixed.floor_ms(&db, 0.1) - anew).abs() < 1e-9);
    }

    /// The guaranteed scripts replay against the real schema (a migration that renames what
    /// they write fails them here, not in a night's sweep), and write what the product's
    /// transactions write: each message write its message, events and stored answer; each
    /// booking pair its appointment, episode, access-log rows and event; the relay's passes
    /// gap-free seqs.
    #[tokio::test]
    #[cfg_attr(no_test_database, ignore = "needs TEST_DATABASE_URL")]
    async fn the_guaranteed_scripts_replay_against_the_real_schema() {
        let admin = std::env::var("TEST_DATABASE_URL").expect("TEST_DATABASE_URL");
        let pgbench = crate::pgbench::find_pgbench().expect("pgbench on PATH");
        let name = format!(
            "econsult_floor_test_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let url = econsult_runtime::db::create_database(&admin, &name)
            .await
            .expect("create");
        let outcome = async {
            let db = econsult_runtime::db::Db::connect(&url).await?;
            db.migrate().await?;
            seed(db.read(), 2_000, 500).await?;
            for (file, script) in [
                ("message-guaranteed.sql", MESSAGE_GUARANTEED_SQL),
                ("booking-guaranteed.sql", BOOKING_GUARANTEED_SQL),
            ] {
                let options = ["-c2", "-j2", "-t60", "-Dnslots=2000", "-Dnthreads=500"];
                let options = options.map(String::from);
                let mut run = crate::pgbench::command(&pgbench, script, &admin, &name, &options)?;
                let out = run.cmd.output().await?;
                let stdout = String::from_utf8_lossy(&out.stdout);
                anyhow::ensure!(
                    out.status.success(),
                    "pgbench {file}: {stdout}{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let (_, done) = crate::pgbench::parse_output(&stdout);
                anyhow::ensure!(done == Some(120), "pgbench {file} ran {done:?} of 120");
            }
            replayed_rows_are_the_products(db.read()).await?;
            db.close().await;
            anyhow::Ok(())
        }
        .await;
        econsult_runtime::db::drop_database(&admin, &name).await;
        outcome.expect("the replay");
    }

    /// What a replay of 120 message writes and 120 booking pairs must have written, on either
    /// backend (the SQLite replay's test checks it too): each message write its message,
    /// events and stored answer; each booking pair its episode, access-log rows, event and
    /// answers; the relay's passes gap-free seqs, and marks of what an earlier pass gave.
    pub(super) async fn replayed_rows_are_the_products(pool: &sqlx::AnyPool) -> anyhow::Result<()> {
        use sqlx::Row as _;
        let count = async |sql: &str| -> anyhow::Result<i64> {
            Ok(sqlx::query(sql).fetch_one(pool).await?.try_get(0)?)
        };
        let expect = async |sql: &str, want: i64| -> anyhow::Result<()> {
            let got = count(sql).await?;
            anyhow::ensure!(got == want, "{sql}: {got}, not {want}");
            Ok(())
        };
        // 120 message writes, a third each: a start writes its thread's first message and
        // two events, a send one event, a reply three.
        expect("SELECT COUNT(*) FROM consultation_messages", 120).await?;
        let starts =
            count("SELECT COUNT(*) FROM consultation_threads WHERE thread_id LIKE 'pgb-n%'")
                .await?;
        let replies = count("SELECT COUNT(*) FROM audit_log WHERE action LIKE '%/Reply'").await?;
        anyhow::ensure!(
            starts > 0 && replies > 0 && starts + replies < 120,
            "{starts} starts, {replies} replies"
        );
        let sends = 120 - starts - replies;
        expect(
            "SELECT COUNT(*) FROM outbox WHERE topic LIKE 'consultation.%'",
            2 * starts + sends + 3 * replies,
        )
        .await?;
        // 120 booking pairs: a few may lose their slot's race to another pair's.
        let appointments = count("SELECT COUNT(*) FROM booking_appointments").await?;
        anyhow::ensure!(
            appointments > 100,
            "{appointments} appointments of 120 pairs"
        );
        expect(
            "SELECT COUNT(*) FROM booking_episodes WHERE outcome = 1",
            120,
        )
        .await?;
        expect(
            "SELECT COUNT(*) FROM audit_log WHERE action LIKE '%/Book'",
            120,
        )
        .await?;
        expect(
            "SELECT COUNT(*) FROM audit_log WHERE action LIKE '%/FindSlots'",
            120,
        )
        .await?;
        expect(
            "SELECT COUNT(*) FROM outbox WHERE topic = 'booking.created'",
            120,
        )
        .await?;
        // Every call's key claimed, and its answer stored.
        expect(
            "SELECT COUNT(*) FROM idempotency WHERE length(response) > 300",
            360,
        )
        .await?;
        // The relay's passes gave gap-free seqs and marked what an earlier pass gave.
        let sequenced = count("SELECT COUNT(seq) FROM outbox").await?;
        anyhow::ensure!(sequenced > 0, "no pass of the relay ran");
        expect("SELECT COALESCE(MAX(seq), 0) FROM outbox", sequenced).await?;
        let published = count("SELECT COUNT(*) FROM outbox WHERE published_at IS NOT NULL");
        anyhow::ensure!(
            published.await? > 0,
            "no pass marked its predecessor's events"
        );
        Ok(())
    }
}
