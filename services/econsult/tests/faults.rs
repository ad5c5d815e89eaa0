//! Fault injection while load runs: a private PostgreSQL and a private Redis (own ports, own
//! data directories, so nothing else on the machine is disturbed) are stopped and started under
//! a running system while patients book and write. Clients may see UNAVAILABLE during an
//! outage, never INTERNAL; after each fault the system recovers by itself, nothing committed is
//! lost or duplicated, the outbox drains and the statistics match the ground truth.
//!
//! Needs PostgreSQL's server binaries (initdb, pg_ctl) and redis-server; skipped when missing,
//! unless CI=true.

mod common;

use common::*;
use econsult::{Application, Config};
use econsult_proto::booking::v1 as bpb;
use econsult_proto::consultation::v1 as cpb;
use econsult_runtime::clock::Clock;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::Code;

fn pg_bin() -> Option<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("pg_ctl").exists())
        .collect();
    versions.sort();
    versions.pop()
}

/// A PostgreSQL cluster of its own, run as the `postgres` user (initdb refuses root).
struct PrivatePg {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
}

impl PrivatePg {
    fn as_postgres(&self, prog: &str, args: &[&str]) {
        let status = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join(prog))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run as postgres");
        assert!(status.success(), "{prog} {args:?} failed");
    }

    fn init(bin: PathBuf, base: &Path) -> Self {
        let dir = base.join("pg");
        std::fs::create_dir_all(&dir).expect("pg dir");
        let chown = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(base)
            .status()
            .expect("chown");
        assert!(chown.success());
        let pg = Self {
            bin,
            dir,
            port: free_port(),
        };
        let d = pg.dir.to_string_lossy().to_string();
        pg.as_postgres(
            "initdb",
            &["-D", &d, "-U", "postgres", "--auth=trust", "-E", "UTF8"],
        );
        pg.start();
        pg
    }

    fn start(&self) {
        let d = self.dir.to_string_lossy().to_string();
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {d} -c fsync=off",
            self.port
        );
        let log = format!("{d}/log");
        self.as_postgres(
            "pg_ctl",
            &["-D", &d, "-l", &log, "-o", &opts, "-w", "start"],
        );
    }

    fn stop(&self) {
        let d = self.dir.to_string_lossy().to_string();
        self.as_postgres("pg_ctl", &["-D", &d, "-m", "fast", "-w", "stop"]);
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let d = self.dir.to_string_lossy().to_string();
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args(["-D", &d, "-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A Redis of its own (nothing on disk).
struct PrivateRedis {
    port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    fn start_on(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            port,
            child: Some(child),
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What the clients saw.
#[derive(Default)]
struct Seen {
    codes: BTreeMap<String, usize>,
    booked: BTreeMap<String, String>,
    messages: Vec<(String, i64)>,
}

/// Retries `f` on UNAVAILABLE (the same request, so the same idempotency key) until `deadline`;
/// records every code.
async fn retrying<T, F, Fut>(
    seen: &Mutex<Seen>,
    deadline: Instant,
    mut f: F,
) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    loop {
        let r = f().await;
        let code = match &r {
            Ok(_) => Code::Ok,
            Err(s) => s.code(),
        };
        *seen
            .lock()
            .expect("seen")
            .codes
            .entry(format!("{code:?}"))
            .or_default() += 1;
        match r {
            Err(s)
                if matches!(s.code(), Code::Unavailable | Code::Unknown)
                    && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            other => return other,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_system_recovers_from_database_and_redis_restarts_without_losing_anything() {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let Some(bin) = pg_bin() else {
        assert!(!ci, "PostgreSQL server binaries are needed in CI");
        eprintln!("skipped: no PostgreSQL server binaries");
        return;
    };
    if Command::new("redis-server")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(!ci, "redis-server is needed in CI");
        eprintln!("skipped: no redis-server");
        return;
    }
    let base = tempfile::Builder::new()
        .prefix("econsult-faults")
        .tempdir_in("/tmp")
        .expect("tmp");
    let pg = PrivatePg::init(bin, base.path());
    let redis_port = free_port();
    let mut redis = PrivateRedis::start_on(redis_port);

    let data = tempfile::tempdir().expect("data");
    let mut config = Config::embedded(data.path().to_path_buf());
    config.database_url = Some(pg.url());
    config.redis_url = Some(redis.url());
    config.redis_namespace = "faults".into();
    config.rate_limits = econsult_runtime::ratelimit::RateLimits::unlimited();
    config.shutdown_grace = Duration::from_secs(5);
    let app = Application::start(config).await.expect("start");
    let addr = app.local_addr();
    let keys = econsult_runtime::auth::DevKeys::load_or_create(data.path()).expect("keys");
    let mint = |spec: econsult_runtime::auth::TokenSpec| {
        keys.mint(&spec, chrono::Utc::now().timestamp(), 3600)
            .expect("mint")
    };
    let ehr = mint(econsult_runtime::auth::TokenSpec::Ehr {
        client_id: "epj".into(),
        org_number: ORG_A.into(),
        scopes: vec![
            "econsult:booking.write".into(),
            "econsult:booking.read".into(),
            "econsult:consultation.write".into(),
        ],
    });

    // Seed: one GP, 40 patients, 60 slots tomorrow.
    let ch = channel_to(addr).await;
    let mut booking = bpb::booking_service_client::BookingServiceClient::new(ch.clone());
    booking
        .upsert_gp(authed(
            bpb::UpsertGpRequest {
                gp: Some(bpb::Gp {
                    gp_id: "gp-1".into(),
                    hpr_number: "1000001".into(),
                    display_name: "Dr A".into(),
                    municipality_number: "0301".into(),
                    list_capacity: 1000,
                    list_status: bpb::ListStatus::Staffed as i32,
                    ..Default::default()
                }),
            },
            &ehr,
        ))
        .await
        .expect("gp");
    let nins: Vec<String> = (0..40)
        .map(|i| {
            econsult_runtime::nin::synthetic(9_000_000 + i)
                .as_str()
                .to_owned()
        })
        .collect();
    booking
        .update_list(authed(
            bpb::UpdateListRequest {
                gp_id: "gp-1".into(),
                add: nins.clone(),
                remove: vec![],
                idempotency_key: key(),
            },
            &ehr,
        ))
        .await
        .expect("list");
    let tomorrow = econsult_runtime::clock::SystemClock.now() + chrono::Duration::days(1);
    let slots = booking
        .publish_slots(authed(
            bpb::PublishSlotsRequest {
                gp_id: "gp-1".into(),
                slots: (0..60)
                    .map(|i| bpb::NewSlot {
                        start: Some(ts(tomorrow + chrono::Duration::minutes(15 * i))),
                        duration_minutes: 15,
                        modality: bpb::Modality::InPerson as i32,
                        acute_reserve: false,
                    })
                    .collect(),
                idempotency_key: key(),
            },
            &ehr,
        ))
        .await
        .expect("slots")
        .into_inner()
        .slots;

    // Load: each patient books a slot (contending for the same ones) and writes two messages,
    // retrying the same request through outages, while the faults happen.
    let seen = Arc::new(Mutex::new(Seen::default()));
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut tasks = tokio::task::JoinSet::new();
    for (i, nin) in nins.iter().enumerate() {
        let token = mint(econsult_runtime::auth::TokenSpec::Patient {
            nin: nin.clone(),
            acr: econsult_runtime::auth::REQUIRED_ACR.into(),
        });
        let seen = seen.clone();
        let slot_ids: Vec<String> = slots.iter().map(|s| s.slot_id.clone()).collect();
        let nin = nin.clone();
        tasks.spawn(async move {
            // Spread the patients over the fault windows.
            tokio::time::sleep(Duration::from_millis(150 * i as u64)).await;
            let ch = channel_to(addr).await;
            let b = bpb::booking_service_client::BookingServiceClient::new(ch.clone());
            let c = cpb::consultation_service_client::ConsultationServiceClient::new(ch);
            for offset in 0..slot_ids.len() {
                let slot = slot_ids[(i * 7 + offset) % slot_ids.len()].clone();
                let req = bpb::BookRequest {
                    target: Some(bpb::book_request::Target::SlotId(slot.clone())),
                    reason: "check".into(),
                    request_id: String::new(),
                    idempotency_key: key(),
                };
                let r = retrying(&seen, deadline, || {
                    let (mut b, req, token) = (b.clone(), req.clone(), token.clone());
                    async move { b.book(authed(req, &token)).await }
                })
                .await;
                match r {
                    Ok(a) => {
                        seen.lock()
                            .expect("seen")
                            .booked
                            .insert(nin.clone(), a.into_inner().appointment_id);
                        break;
                    }
                    Err(s) if s.code() == Code::FailedPrecondition => continue,
                    Err(s) => panic!("booking failed for good: {s:?}"),
                }
            }
            let start = cpb::StartConsultationRequest {
                category: cpb::Category::EConsultation as i32,
                subject: "s".into(),
                body: "first".into(),
                idempotency_key: key(),
                ..Default::default()
            };
            let thread = retrying(&seen, deadline, || {
                let (mut c, req, token) = (c.clone(), start.clone(), token.clone());
                async move { c.start_consultation(authed(req, &token)).await }
            })
            .await
            .expect("start consultation")
            .into_inner()
            .thread
            .expect("thread")
            .thread_id;
            let send = cpb::SendMessageRequest {
                thread_id: thread.clone(),
                body: "second".into(),
                attachments: vec![],
                idempotency_key: key(),
            };
            let m = retrying(&seen, deadline, || {
                let (mut c, req, token) = (c.clone(), send.clone(), token.clone());
                async move { c.send_message(authed(req, &token)).await }
            })
            .await
            .expect("send")
            .into_inner()
            .message
            .expect("message");
            seen.lock().expect("seen").messages.push((thread, m.seq));
        });
    }

    // Faults: PostgreSQL down for 2 s, then Redis down for 2 s.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    pg.stop();
    tokio::time::sleep(Duration::from_secs(2)).await;
    pg.start();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    redis.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _redis = PrivateRedis::start_on(redis_port);

    while let Some(r) = tasks.join_next().await {
        r.expect("client task");
    }
    let seen = Arc::try_unwrap(seen)
        .ok()
        .expect("tasks done")
        .into_inner()
        .expect("seen");
    eprintln!("codes seen by clients: {:?}", seen.codes);
    for bad in ["Internal", "DataLoss", "Unknown"] {
        assert!(
            !seen.codes.contains_key(bad),
            "clients saw {bad}: {:?}",
            seen.codes
        );
    }

    // Ground truth from the database: each acknowledged booking exists once, no slot twice.
    let db = app.platform().db.clone();
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT patient_nin, appointment_id FROM booking_appointments WHERE status <> 4",
    )
    .fetch_all(db.read())
    .await
    .expect("appointments");
    let stored: BTreeMap<String, String> = rows.iter().cloned().collect();
    assert_eq!(rows.len(), stored.len(), "one appointment per patient");
    assert_eq!(stored, seen.booked, "exactly the acknowledged bookings");
    let doubles: Vec<(String, i64)> = sqlx::query_as(
        "SELECT slot_id, COUNT(*) FROM booking_appointments WHERE status <> 4 GROUP BY slot_id HAVING COUNT(*) > 1",
    )
    .fetch_all(db.read())
    .await
    .expect("doubles");
    assert!(doubles.is_empty(), "double bookings: {doubles:?}");
    // Messages: every acknowledged one stored once, each thread has exactly 2.
    let per_thread: Vec<(String, i64)> =
        sqlx::query_as("SELECT thread_id, COUNT(*) FROM consultation_messages GROUP BY thread_id")
            .fetch_all(db.read())
            .await
            .expect("messages");
    assert_eq!(per_thread.len(), nins.len());
    assert!(per_thread.iter().all(|(_, n)| *n == 2), "{per_thread:?}");
    assert!(seen.messages.iter().all(|(_, seq)| *seq == 2));

    // The outbox drains and the statistics reach the ground truth.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let unpublished: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE published_at IS NULL")
                .fetch_one(db.read())
                .await
                .expect("outbox");
        let counted: i64 = sqlx::query_scalar(
            "SELECT CAST(COALESCE(SUM(n), 0) AS BIGINT) FROM stats_appointments WHERE kind = 'booked'",
        )
        .fetch_one(db.read())
        .await
        .expect("stats");
        if unpublished == 0 && counted == stored.len() as i64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not recovered: {unpublished} unpublished events, {counted} bookings counted of {}",
            stored.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    app.stop().await.expect("stop");
}
