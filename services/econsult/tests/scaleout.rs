//! Scale-out of the real binary: every service runs as two separate `econsult` processes on one
//! PostgreSQL database and one Redis (booking ×2, consultation ×2, signalling ×2, stats ×2), and
//! clients spread their calls over both instances of each. Mid-run one booking, one
//! consultation and one signalling instance die with `kill -9`; clients that see a transport
//! error retry the same request (same idempotency key) on the survivor, and the patient's video
//! stream resumes on the other signalling instance from the last seq it saw.
//!
//! Afterwards: every booking a client saw succeed exists exactly once and no slot has two
//! appointments; every message a client saw succeed is stored exactly once; the video offer and
//! answer crossed between the two signalling processes; the statistics (surviving instances)
//! count exactly the booked appointments and the outbox drained.
//!
//! Delivery across instances: with two instances, messages written through the one that does
//! not lead the outbox relay reach Subscribe streams on both within a generous p99 bound, and a
//! `kill -9` of the leader pauses delivery less than a second; the test prints the measured
//! latencies beside those of writes through the leader (`load-tests/results/HISTORY.md`).
//!
//! Statistics after a kill: two `booking,stats` instances; the one that does not lead the relay
//! is killed with `kill -9` while its stats consumer holds entries it read from Redis and never
//! applied; the survivor's statistics must show the exact figures within seconds (the catch-up
//! from the outbox), and still after the dead consumer's entries are claimed; the test prints
//! how long it took.
//!
//! PostgreSQL + Redis only (`TEST_DATABASE_URL`, `TEST_REDIS_URL`; skipped when unset, except
//! under `CI=true`). Each process logs to `<name>.log` in the run's temporary directory.

mod common;

use chrono::Utc;
use common::sig::Sig;
use common::{ORG_A, authed, key, ts};
use econsult_proto::booking::v1 as bpb;
use econsult_proto::booking::v1::booking_service_client::BookingServiceClient;
use econsult_proto::consultation::v1 as cpb;
use econsult_proto::consultation::v1::consultation_service_client::ConsultationServiceClient;
use econsult_proto::signalling::v1 as spb;
use econsult_proto::signalling::v1::signalling_service_client::SignallingServiceClient;
use econsult_proto::stats::v1 as stpb;
use econsult_proto::stats::v1::stats_service_client::StatsServiceClient;
use econsult_runtime::auth::{DevKeys, REQUIRED_ACR, TokenSpec};
use econsult_runtime::db::Db;
use spb::client_signal::Body as Out;
use spb::server_event::Body as Ev;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

/// Upper bound of every single wait.
const WAIT: Duration = Duration::from_secs(20);
/// Upper bound of the whole scenario once the processes are built (hang guard).
const TOTAL: Duration = Duration::from_secs(60);
/// Patients on the GP's list; all of them try to book.
const PATIENTS: usize = 20;
/// In-person slots published: fewer than patients, so patients race for them.
const IN_PERSON_SLOTS: usize = 14;
/// Patients who start a text consultation.
const CONSULTING: usize = 10;
/// Follow-up messages per consultation (after the first one).
const FOLLOW_UPS: usize = 3;
const GP_ID: &str = "gp-scale";
const GP_HPR: &str = "1700001";
/// Booking successes after which booking-1 is killed.
const KILL_BOOKING_AFTER: usize = 5;
/// Consultation calls after which consultation-1 is killed.
const KILL_CONSULTATION_AFTER: usize = 12;

// ── processes ──────────────────────────────────────────────────────────────────────────────────

fn econsult(dir: &Path, log: &Path) -> Command {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_econsult"));
    cmd.arg("--data-dir")
        .arg(dir)
        .env_remove("ECONSULT_FAILPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        // The log (stdout) and panics (stderr) both go to the log file.
        .stdout(log.try_clone().expect("log file"))
        .stderr(log);
    cmd
}

/// One `econsult serve` process.
struct Proc {
    name: String,
    /// Full gRPC name of the one service this process serves (its health check asks for it).
    grpc_service: &'static str,
    child: Mutex<Child>,
    /// The gRPC port the process bound, read from its start line by `ready`. The kernel picks
    /// it (`--listen 127.0.0.1:0`): a port chosen here and freed before the process binds it
    /// can be taken meanwhile by any outgoing connection on the machine.
    port: OnceLock<u16>,
    log: PathBuf,
    /// Where this process's lines start in `log` (the file is appended to).
    log_from: usize,
}

impl Proc {
    fn spawn(dir: &Path, name: &str, service: &str, db_url: &str, redis: &str, ns: &str) -> Self {
        let log = dir.join(format!("{name}.log"));
        let log_from = std::fs::metadata(&log).map_or(0, |m| m.len() as usize);
        let child = econsult(dir, &log)
            .arg("--database-url")
            .arg(db_url)
            .arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--metrics-listen")
            .arg("127.0.0.1:0")
            .arg("--services")
            .arg(service)
            .arg("--redis-url")
            .arg(redis)
            .arg("--redis-namespace")
            .arg(ns)
            .arg("--instance-id")
            .arg(name)
            .arg("--turn-secret")
            .arg("scaleout-test-turn-secret")
            .arg("--shutdown-grace-seconds")
            .arg("2")
            .spawn()
            .expect("spawn econsult serve");
        // The health check asks for the first of the services (`booking,consultation`).
        let first = service.split(',').next().unwrap_or(service);
        let kind: econsult::ServiceKind = first.parse().expect("service kind");
        Self {
            name: name.to_owned(),
            grpc_service: kind.grpc_name(),
            child: Mutex::new(child),
            port: OnceLock::new(),
            log,
            log_from,
        }
    }

    /// Waits until the process answers health checks with SERVING for its own service (so
    /// another instance on the same port cannot pass for it).
    async fn ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.port.get().is_none()
                && let Some(port) = self.bound_port()
            {
                let _ = self.port.set(port);
            }
            if let Some(port) = self.port.get()
                && let Ok(ch) = Channel::from_shared(format!("http://127.0.0.1:{port}"))
                    .expect("uri")
                    .connect_timeout(Duration::from_secs(1))
                    .connect()
                    .await
            {
                let mut health = tonic_health::pb::health_client::HealthClient::new(ch);
                let serving =
                    tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
                let req = tonic_health::pb::HealthCheckRequest {
                    service: self.grpc_service.to_owned(),
                };
                if let Ok(r) = health.check(req).await
                    && r.into_inner().status == serving
                {
                    return;
                }
            }
            if let Ok(Some(status)) = self.child.lock().expect("child").try_wait() {
                panic!("{} exited early: {status:?}", self.name);
            }
            assert!(
                Instant::now() < deadline,
                "{} did not become ready",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The gRPC port of the process's start line (`"grpc":"127.0.0.1:PORT"`), once logged.
    fn bound_port(&self) -> Option<u16> {
        let log = std::fs::read(&self.log).ok()?;
        let log = String::from_utf8_lossy(log.get(self.log_from..)?);
        let line = log.lines().rev().find(|l| l.contains("\"grpc\":\""))?;
        let line: serde_json::Value = serde_json::from_str(line).ok()?;
        let addr: std::net::SocketAddr = line["grpc"].as_str()?.parse().ok()?;
        Some(addr.port())
    }

    /// The gRPC port; known once `ready` has returned.
    fn port(&self) -> u16 {
        *self
            .port
            .get()
            .expect("the port is known once ready() has returned")
    }

    /// `kill -STOP`: the process stops where it is (its sockets stay open) until killed.
    fn stop(&self) {
        let pid = self.child.lock().expect("child").id();
        let status = Command::new("kill")
            .arg("-STOP")
            .arg(pid.to_string())
            .status()
            .expect("kill -STOP");
        assert!(status.success(), "kill -STOP {pid}: {status:?}");
        eprintln!("stopped {} with SIGSTOP", self.name);
    }

    /// `kill -9`: SIGKILL, no shutdown, no flush.
    fn kill_9(&self) {
        let mut child = self.child.lock().expect("child");
        child.kill().expect("kill -9");
        let status = child.wait().expect("reap");
        eprintln!("killed {} with SIGKILL: {status:?}", self.name);
    }

    /// A channel that (re)connects on use: after the kill every call on it fails fast.
    fn channel(&self) -> Channel {
        Endpoint::from_shared(format!("http://127.0.0.1:{}", self.port()))
            .expect("uri")
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(10))
            .connect_lazy()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(|e| e.into_inner());
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Eight processes: two instances of every service.
struct Cluster {
    procs: Vec<Proc>,
}

impl Cluster {
    fn get(&self, name: &str) -> &Proc {
        self.procs
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no process {name}"))
    }

    fn pair(&self, service: &'static str) -> Pair {
        Pair {
            service,
            channels: [
                self.get(&format!("{service}-1")).channel(),
                self.get(&format!("{service}-2")).channel(),
            ],
            failovers: Arc::default(),
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for p in &self.procs {
                let log = std::fs::read_to_string(&p.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                eprintln!("── last log lines of {} ──", p.name);
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}

// ── clients with failover ──────────────────────────────────────────────────────────────────────

/// Errors after which the same request is sent again to the other instance: the instance is gone
/// (connection refused or reset) or asks for a retry.
fn retryable(s: &Status) -> bool {
    match s.code() {
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded => true,
        Code::Internal => {
            let m = s.message().to_ascii_lowercase();
            m.contains("h2") || m.contains("transport") || m.contains("connection")
        }
        _ => false,
    }
}

/// The two instances of one service, as a client-side load balancer sees them.
#[derive(Clone)]
struct Pair {
    service: &'static str,
    channels: [Channel; 2],
    failovers: Arc<AtomicUsize>,
}

impl Pair {
    /// Sends the request built by `call` to instance `first % 2`; on a transport error or
    /// UNAVAILABLE, sends the same request (same idempotency key) to the other instance.
    async fn call<T, F, Fut>(&self, first: usize, mut call: F) -> Result<T, Status>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let deadline = Instant::now() + WAIT;
        let mut i = first % 2;
        loop {
            match call(self.channels[i].clone()).await {
                Ok(r) => return Ok(r.into_inner()),
                Err(s) if retryable(&s) && Instant::now() < deadline => {
                    eprintln!(
                        "{}-{}: {:?} {:?}; retrying on the other instance",
                        self.service,
                        i + 1,
                        s.code(),
                        s.message()
                    );
                    self.failovers.fetch_add(1, Ordering::SeqCst);
                    i = 1 - i;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(s) => return Err(s),
            }
        }
    }

    fn failovers(&self) -> usize {
        self.failovers.load(Ordering::SeqCst)
    }
}

async fn wait_for(what: &str, counter: &AtomicUsize, at_least: usize) {
    let deadline = Instant::now() + WAIT;
    while counter.load(Ordering::SeqCst) < at_least {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// ── tokens ─────────────────────────────────────────────────────────────────────────────────────

struct Tokens {
    keys: DevKeys,
}

impl Tokens {
    fn mint(&self, spec: TokenSpec) -> String {
        self.keys
            .mint(&spec, Utc::now().timestamp(), 600)
            .expect("mint")
    }
    fn patient(&self, nin: &str) -> String {
        self.mint(TokenSpec::Patient {
            nin: nin.into(),
            acr: REQUIRED_ACR.into(),
        })
    }
    fn ehr(&self) -> String {
        self.mint(TokenSpec::Ehr {
            client_id: "epj-scaleout".into(),
            org_number: ORG_A.into(),
            scopes: vec![
                "econsult:booking.read".into(),
                "econsult:booking.write".into(),
                "econsult:stats.read".into(),
            ],
        })
    }
    fn gp(&self) -> String {
        self.mint(TokenSpec::Clinician {
            hpr_number: GP_HPR.into(),
            org_number: ORG_A.into(),
            scopes: vec![],
        })
    }
}

// ── seeding ────────────────────────────────────────────────────────────────────────────────────

struct Seeded {
    nins: Vec<String>,
    in_person: Vec<String>,
    video_appointment: String,
    /// The request that booked the video slot (served by booking-1, which dies later).
    video_book: bpb::BookRequest,
}

/// The GP `GP_ID` named `display_name` (upserted through instance 1) with `patients` synthetic
/// patients from seed `first` on its list (added through instance 2); returns their numbers.
async fn seed_gp_and_list(
    booking: &Pair,
    tokens: &Tokens,
    display_name: &str,
    first: u64,
    patients: usize,
) -> Vec<String> {
    let ehr = tokens.ehr();
    let gp = bpb::Gp {
        gp_id: GP_ID.into(),
        hpr_number: GP_HPR.into(),
        display_name: display_name.into(),
        municipality_number: "0301".into(),
        list_capacity: 2500,
        list_status: bpb::ListStatus::Staffed as i32,
        ..Default::default()
    };
    booking
        .call(0, |ch| {
            let r = authed(
                bpb::UpsertGpRequest {
                    gp: Some(gp.clone()),
                },
                &ehr,
            );
            async move { BookingServiceClient::new(ch).upsert_gp(r).await }
        })
        .await
        .expect("upsert GP");
    let nins: Vec<String> = (0..patients as u64)
        .map(|i| {
            econsult_runtime::nin::synthetic(first + i)
                .as_str()
                .to_owned()
        })
        .collect();
    let list = bpb::UpdateListRequest {
        gp_id: GP_ID.into(),
        add: nins.clone(),
        remove: vec![],
        idempotency_key: key(),
    };
    booking
        .call(1, |ch| {
            let r = authed(list.clone(), &ehr);
            async move { BookingServiceClient::new(ch).update_list(r).await }
        })
        .await
        .expect("update list");
    nins
}

async fn seed(booking: &Pair, tokens: &Tokens) -> Seeded {
    let ehr = tokens.ehr();
    let nins = seed_gp_and_list(booking, tokens, "Dr Skala", 8_800_000, PATIENTS).await;
    // In-person slots the day after tomorrow; one video slot starting in ten minutes, so that
    // its join window (15 minutes before the start) is open now.
    let day = Utc::now() + chrono::Duration::days(2);
    let mut slots: Vec<bpb::NewSlot> = (0..IN_PERSON_SLOTS as i64)
        .map(|i| bpb::NewSlot {
            start: Some(ts(day + chrono::Duration::minutes(15 * i))),
            duration_minutes: 15,
            modality: bpb::Modality::InPerson as i32,
            acute_reserve: false,
        })
        .collect();
    slots.push(bpb::NewSlot {
        start: Some(ts(Utc::now() + chrono::Duration::minutes(10))),
        duration_minutes: 15,
        modality: bpb::Modality::Video as i32,
        acute_reserve: false,
    });
    let publish = bpb::PublishSlotsRequest {
        gp_id: GP_ID.into(),
        slots,
        idempotency_key: key(),
    };
    let published = booking
        .call(0, |ch| {
            let r = authed(publish.clone(), &ehr);
            async move { BookingServiceClient::new(ch).publish_slots(r).await }
        })
        .await
        .expect("publish slots")
        .slots;
    let (video, in_person): (Vec<_>, Vec<_>) = published
        .into_iter()
        .partition(|s| s.modality == bpb::Modality::Video as i32);
    let book = bpb::BookRequest {
        target: Some(bpb::book_request::Target::SlotId(video[0].slot_id.clone())),
        reason: "video, please".into(),
        request_id: String::new(),
        idempotency_key: key(),
    };
    let patient = tokens.patient(&nins[0]);
    let video_appointment = booking
        .call(0, |ch| {
            let r = authed(book.clone(), &patient);
            async move { BookingServiceClient::new(ch).book(r).await }
        })
        .await
        .expect("book the video slot")
        .appointment_id;
    Seeded {
        nins,
        in_person: in_person.into_iter().map(|s| s.slot_id).collect(),
        video_appointment,
        video_book: book,
    }
}

// ── booking ────────────────────────────────────────────────────────────────────────────────────

/// One patient: FindSlots, then a slot (patient-specific choice, so patients collide): even
/// patients hold and book the hold, odd ones book the slot directly. A slot someone else took
/// (FAILED_PRECONDITION) sends the patient back to FindSlots; no free slot left ends the attempt.
async fn book_one(
    booking: Pair,
    i: usize,
    token: String,
    successes: Arc<AtomicUsize>,
) -> Option<(bpb::Appointment, bpb::BookRequest)> {
    tokio::time::sleep(Duration::from_millis(60 * i as u64)).await;
    for attempt in 0..(IN_PERSON_SLOTS + 5) {
        let find = bpb::FindSlotsRequest {
            modality: bpb::Modality::InPerson as i32,
            ..Default::default()
        };
        let found = booking
            .call(i + attempt, |ch| {
                let r = authed(find, &token);
                async move { BookingServiceClient::new(ch).find_slots(r).await }
            })
            .await
            .expect("find slots");
        let free: Vec<bpb::Slot> = found.slots.into_iter().filter_map(|o| o.slot).collect();
        if free.is_empty() {
            return None;
        }
        let slot_id = free[(i * 7 + attempt) % free.len()].slot_id.clone();
        let target = if i.is_multiple_of(2) {
            let hold = bpb::HoldSlotRequest {
                slot_id,
                request_id: found.request_id.clone(),
                idempotency_key: key(),
            };
            match booking
                .call(i + attempt + 1, |ch| {
                    let r = authed(hold.clone(), &token);
                    async move { BookingServiceClient::new(ch).hold_slot(r).await }
                })
                .await
            {
                Ok(h) => bpb::book_request::Target::HoldId(h.hold_id),
                Err(s) if s.code() == Code::FailedPrecondition => continue,
                Err(s) => panic!("patient {i}: hold: {s:?}"),
            }
        } else {
            bpb::book_request::Target::SlotId(slot_id)
        };
        let book = bpb::BookRequest {
            target: Some(target),
            reason: format!("patient {i}"),
            request_id: found.request_id.clone(),
            idempotency_key: key(),
        };
        match booking
            .call(i + attempt, |ch| {
                let r = authed(book.clone(), &token);
                async move { BookingServiceClient::new(ch).book(r).await }
            })
            .await
        {
            Ok(a) => {
                successes.fetch_add(1, Ordering::SeqCst);
                return Some((a, book));
            }
            Err(s) if s.code() == Code::FailedPrecondition => continue,
            Err(s) => panic!("patient {i}: book: {s:?}"),
        }
    }
    panic!("patient {i}: neither booked nor out of slots");
}

/// All patients book at once (staggered), spread over both booking instances; booking-1 dies
/// after the first few successes. Returns patient → the appointment the patient saw booked and
/// the request that booked it.
async fn booking_phase(
    cluster: &Cluster,
    booking: &Pair,
    tokens: &Tokens,
    nins: &[String],
) -> BTreeMap<usize, (bpb::Appointment, bpb::BookRequest)> {
    let successes = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, nin) in nins.iter().enumerate() {
        let (booking, token, successes) = (booking.clone(), tokens.patient(nin), successes.clone());
        tasks.spawn(async move { (i, book_one(booking, i, token, successes).await) });
    }
    wait_for("bookings before the kill", &successes, KILL_BOOKING_AFTER).await;
    cluster.get("booking-1").kill_9();
    let mut booked = BTreeMap::new();
    while let Some(r) = tasks.join_next().await {
        let (i, a) = r.expect("patient task");
        if let Some(a) = a {
            booked.insert(i, a);
        }
    }
    booked
}

// ── consultation ───────────────────────────────────────────────────────────────────────────────

/// What one patient saw stored: the thread and every message (first one included), and the
/// requests that stored them.
struct Conversation {
    thread_id: String,
    messages: Vec<cpb::Message>,
    start: cpb::StartConsultationRequest,
    sends: Vec<cpb::SendMessageRequest>,
}

async fn consult_one(
    consultation: Pair,
    i: usize,
    token: String,
    calls: Arc<AtomicUsize>,
) -> Conversation {
    tokio::time::sleep(Duration::from_millis(80 * i as u64)).await;
    let start = cpb::StartConsultationRequest {
        category: cpb::Category::EConsultation as i32,
        subject: format!("Spørsmål fra pasient {i}"),
        body: format!("scaleout patient {i} message 0"),
        attachments: vec![],
        urgent: false,
        language: String::new(),
        idempotency_key: key(),
        booking_request_id: String::new(),
    };
    let started = consultation
        .call(i, |ch| {
            let r = authed(start.clone(), &token);
            async move {
                ConsultationServiceClient::new(ch)
                    .start_consultation(r)
                    .await
            }
        })
        .await
        .unwrap_or_else(|s| panic!("patient {i}: start: {s:?}"));
    calls.fetch_add(1, Ordering::SeqCst);
    let thread_id = started.thread.expect("thread").thread_id;
    let mut messages = vec![started.message.expect("first message")];
    let mut sends = Vec::new();
    for j in 1..=FOLLOW_UPS {
        tokio::time::sleep(Duration::from_millis(120)).await;
        let send = cpb::SendMessageRequest {
            thread_id: thread_id.clone(),
            body: format!("scaleout patient {i} message {j}"),
            attachments: vec![],
            idempotency_key: key(),
        };
        let sent = consultation
            .call(i + j, |ch| {
                let r = authed(send.clone(), &token);
                async move { ConsultationServiceClient::new(ch).send_message(r).await }
            })
            .await
            .unwrap_or_else(|s| panic!("patient {i}: message {j}: {s:?}"));
        calls.fetch_add(1, Ordering::SeqCst);
        messages.push(sent.message.expect("message"));
        sends.push(send);
    }
    Conversation {
        thread_id,
        messages,
        start,
        sends,
    }
}

/// Patients start consultations and send follow-ups over both consultation instances;
/// consultation-1 dies part-way.
async fn consultation_phase(
    cluster: &Cluster,
    consultation: &Pair,
    tokens: &Tokens,
    nins: &[String],
) -> BTreeMap<usize, Conversation> {
    let calls = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, nin) in nins.iter().enumerate().take(CONSULTING) {
        let (consultation, token, calls) =
            (consultation.clone(), tokens.patient(nin), calls.clone());
        tasks.spawn(async move { (i, consult_one(consultation, i, token, calls).await) });
    }
    wait_for(
        "consultation calls before the kill",
        &calls,
        KILL_CONSULTATION_AFTER,
    )
    .await;
    cluster.get("consultation-1").kill_9();
    let mut out = BTreeMap::new();
    while let Some(r) = tasks.join_next().await {
        let (i, c) = r.expect("consultation task");
        out.insert(i, c);
    }
    out
}

// ── video ──────────────────────────────────────────────────────────────────────────────────────

struct NoEvents;
impl webrtc::peer_connection::PeerConnectionEventHandler for NoEvents {}

async fn peer() -> Arc<dyn webrtc::peer_connection::PeerConnection> {
    let pc = webrtc::peer_connection::PeerConnectionBuilder::new()
        .with_handler(Arc::new(NoEvents))
        .with_udp_addrs(vec!["127.0.0.1:0".to_string()])
        .build()
        .await
        .expect("peer connection");
    Arc::new(pc)
}

fn description(kind: spb::SdpType, sdp: &str) -> Out {
    Out::Description(spb::SessionDescription {
        r#type: kind as i32,
        sdp: sdp.into(),
        ice_restart: false,
    })
}

async fn join(channel: Channel, token: &str, appointment_id: &str) -> spb::JoinSessionResponse {
    SignallingServiceClient::new(channel)
        .join_session(authed(
            spb::JoinSessionRequest {
                appointment_id: appointment_id.into(),
            },
            token,
        ))
        .await
        .expect("join session")
        .into_inner()
}

/// What the video session showed.
struct VideoOutcome {
    offer_reached_gp: bool,
    answer_reached_patient_after_failover: bool,
}

/// The patient signals through signalling-1 and the GP through signalling-2: admission and the
/// offer cross between the processes; then signalling-1 dies, the patient resumes on
/// signalling-2 with the last seq it saw and receives the GP's answer there.
async fn video_phase(cluster: &Cluster, tokens: &Tokens, nin: &str, id: &str) -> VideoOutcome {
    let sig1 = cluster.get("signalling-1").channel();
    let sig2 = cluster.get("signalling-2").channel();
    let (patient_token, gp_token) = (tokens.patient(nin), tokens.gp());
    let pj = join(sig1.clone(), &patient_token, id).await;
    assert!(pj.waiting, "the patient starts in the waiting room");
    let gj = join(sig2.clone(), &gp_token, id).await;
    assert_eq!(gj.session_id, pj.session_id, "one session across instances");

    let mut patient = Sig::open(sig1.clone(), &patient_token, id, pj.resume_after_seq)
        .await
        .expect("signal stream");
    match patient.expect(|e| matches!(e, Ev::Welcome(_))).await {
        Ev::Welcome(w) => assert!(w.waiting && !w.resumed, "{w:?}"),
        _ => unreachable!(),
    }
    let mut gp = Sig::open(sig2.clone(), &gp_token, id, gj.resume_after_seq)
        .await
        .expect("signal stream");
    gp.expect(|e| matches!(e, Ev::Welcome(_))).await;
    SignallingServiceClient::new(sig2.clone())
        .admit(authed(
            spb::AdmitRequest {
                appointment_id: id.into(),
                clinician_hpr_number: String::new(),
            },
            &gp_token,
        ))
        .await
        .expect("admit");
    patient.expect(|e| matches!(e, Ev::Admitted(_))).await;

    let patient_pc = peer().await;
    patient_pc
        .create_data_channel("consultation", None)
        .await
        .expect("data channel");
    let offer = patient_pc.create_offer(None).await.expect("offer");
    patient
        .call(description(spb::SdpType::Offer, &offer.sdp))
        .await
        .expect("offer accepted");
    let offer_reached_gp = match gp.expect(|e| matches!(e, Ev::Description(_))).await {
        Ev::Description(d) => d.r#type == spb::SdpType::Offer as i32 && d.sdp == offer.sdp,
        _ => unreachable!(),
    };

    // The patient's instance dies; the patient comes back on the survivor from its last seq.
    cluster.get("signalling-1").kill_9();
    let seen = patient.last_seq;
    drop(patient);
    let mut patient = Sig::open(sig2.clone(), &patient_token, id, seen)
        .await
        .expect("signal stream");
    match patient.expect(|e| matches!(e, Ev::Welcome(_))).await {
        Ev::Welcome(w) => assert!(w.resumed && !w.waiting && w.peer_online, "{w:?}"),
        _ => unreachable!(),
    }

    let gp_pc = peer().await;
    gp_pc
        .set_remote_description(
            webrtc::peer_connection::RTCSessionDescription::offer(offer.sdp.clone())
                .expect("offer sdp"),
        )
        .await
        .expect("set remote offer");
    let answer = gp_pc.create_answer(None).await.expect("answer");
    gp.call(description(spb::SdpType::Answer, &answer.sdp))
        .await
        .expect("answer accepted");
    let answer_reached_patient_after_failover =
        match patient.expect(|e| matches!(e, Ev::Description(_))).await {
            Ev::Description(d) => d.r#type == spb::SdpType::Answer as i32 && d.sdp == answer.sdp,
            _ => unreachable!(),
        };
    assert!(
        !patient
            .buf
            .iter()
            .any(|e| matches!(e.body, Some(Ev::Admitted(_)))),
        "what the patient saw before the failover is not delivered again"
    );
    let _ = patient_pc.close().await;
    let _ = gp_pc.close().await;
    VideoOutcome {
        offer_reached_gp,
        answer_reached_patient_after_failover,
    }
}

// ── checks ─────────────────────────────────────────────────────────────────────────────────────

async fn count(db: &Db, sql: &str) -> i64 {
    sqlx::Row::try_get(
        &sqlx::query(sql).fetch_one(db.read()).await.expect(sql),
        "n",
    )
    .expect("n")
}

async fn strings(db: &Db, sql: &str) -> Vec<String> {
    sqlx::query(sql)
        .fetch_all(db.read())
        .await
        .expect(sql)
        .iter()
        .map(|r| sqlx::Row::try_get::<String, _>(r, 0).expect("text"))
        .collect()
}

async fn bookings_counted(stats: &Pair, instance: usize, reader: &str) -> u64 {
    let today = Utc::now().date_naive();
    let req = stpb::GetBookingAccessibilityRequest {
        filter: Some(stpb::Filter {
            from_date: (today - chrono::Duration::days(1)).to_string(),
            to_date: (today + chrono::Duration::days(1)).to_string(),
            ..Default::default()
        }),
    };
    stats
        .call(instance, |ch| {
            let r = authed(req.clone(), reader);
            async move {
                StatsServiceClient::new(ch)
                    .get_booking_accessibility(r)
                    .await
            }
        })
        .await
        .expect("booking accessibility")
        .bookings
}

/// Applies the migrations once, by the CLI.
async fn migrate(dir: &Path, db_url: &str) {
    let mut migrate = econsult(dir, &dir.join("migrate.log"))
        .arg("--database-url")
        .arg(db_url)
        .arg("migrate")
        .spawn()
        .expect("spawn econsult migrate");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = migrate.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "migrate did not finish in time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "econsult migrate: {status:?}");
}

// ── the test ───────────────────────────────────────────────────────────────────────────────────

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    no_test_backends,
    ignore = "needs TEST_DATABASE_URL and TEST_REDIS_URL"
)]
async fn two_instances_of_every_service_survive_kill_9_without_losing_or_doubling_work() {
    let Some(env) = common::Env::postgres().await else {
        return;
    };
    let db_url = env.database_url.clone().expect("database url");
    let redis = env.redis_url.clone().expect("redis url");
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    // The shared dev key exists before any process starts, so all eight trust the same key.
    let tokens = Tokens {
        keys: DevKeys::load_or_create(dir.path()).expect("dev keys"),
    };

    migrate(dir.path(), &db_url).await;

    let ns = format!("scaleout-{}", uuid::Uuid::new_v4().simple());
    let mut procs = Vec::new();
    for service in ["booking", "consultation", "signalling", "stats"] {
        for n in 1..=2 {
            let name = format!("{service}-{n}");
            procs.push(Proc::spawn(
                dir.path(),
                &name,
                service,
                &db_url,
                &redis,
                &ns,
            ));
        }
    }
    let cluster = Cluster { procs };
    futures::future::join_all(cluster.procs.iter().map(Proc::ready)).await;
    eprintln!("8 instances ready after {:?}", started.elapsed());

    let run = async {
        let booking = cluster.pair("booking");
        let consultation = cluster.pair("consultation");
        let stats = cluster.pair("stats");
        let seeded = seed(&booking, &tokens).await;

        // Booking, text consultations and the video session at the same time; booking-1,
        // consultation-1 and signalling-1 die part-way.
        let (booked, conversations, video) = tokio::join!(
            booking_phase(&cluster, &booking, &tokens, &seeded.nins),
            consultation_phase(&cluster, &consultation, &tokens, &seeded.nins),
            video_phase(
                &cluster,
                &tokens,
                &seeded.nins[0],
                &seeded.video_appointment
            ),
        );
        eprintln!(
            "run done after {:?}: {} booked, {} conversations",
            started.elapsed(),
            booked.len(),
            conversations.len()
        );

        // After the kills every patient reads back through its usual instance: half of them
        // hit the dead one and fail over.
        let before = booking.failovers();
        for (i, nin) in seeded.nins.iter().enumerate() {
            let token = tokens.patient(nin);
            let mine = booking
                .call(i, |ch| {
                    let r = authed(bpb::ListMyBookingsRequest::default(), &token);
                    async move { BookingServiceClient::new(ch).list_my_bookings(r).await }
                })
                .await
                .expect("list my bookings");
            let ids: BTreeSet<String> = mine
                .appointments
                .iter()
                .filter(|a| a.status == bpb::AppointmentStatus::Booked as i32)
                .map(|a| a.appointment_id.clone())
                .collect();
            let mut expected: BTreeSet<String> = booked
                .get(&i)
                .map(|(a, _)| a.appointment_id.clone())
                .into_iter()
                .collect();
            if i == 0 {
                expected.insert(seeded.video_appointment.clone());
            }
            assert_eq!(ids, expected, "patient {i} sees exactly what it booked");
        }
        assert!(
            booking.failovers() > before,
            "reads routed to the dead booking instance failed over"
        );
        for (i, c) in &conversations {
            let token = tokens.patient(&seeded.nins[*i]);
            let thread = consultation
                .call(*i, |ch| {
                    let r = authed(
                        cpb::GetThreadRequest {
                            thread_id: c.thread_id.clone(),
                            after_seq: 0,
                            page_size: 50,
                        },
                        &token,
                    );
                    async move { ConsultationServiceClient::new(ch).get_thread(r).await }
                })
                .await
                .expect("get thread");
            let got: Vec<(i64, String)> = thread
                .messages
                .iter()
                .map(|m| (m.seq, m.message_id.clone()))
                .collect();
            let want: Vec<(i64, String)> = c
                .messages
                .iter()
                .map(|m| (m.seq, m.message_id.clone()))
                .collect();
            assert_eq!(
                got, want,
                "patient {i}: the thread holds exactly what was sent"
            );
        }
        eprintln!(
            "failovers: booking {}, consultation {}",
            booking.failovers(),
            consultation.failovers()
        );
        assert!(
            consultation.failovers() > 0,
            "calls routed to the dead consultation instance failed over"
        );

        // Responses lost in transit: every request a client saw succeed is sent again, with its
        // idempotency key, to the surviving instance. Each returns the first result, also when
        // the first call was served by the instance that died; the row counts below show that
        // nothing was stored twice.
        for (i, (a, req)) in &booked {
            let token = tokens.patient(&seeded.nins[*i]);
            let again = booking
                .call(1, |ch| {
                    let r = authed(req.clone(), &token);
                    async move { BookingServiceClient::new(ch).book(r).await }
                })
                .await
                .unwrap_or_else(|s| panic!("patient {i}: book retried: {s:?}"));
            assert_eq!(
                again.appointment_id, a.appointment_id,
                "patient {i}: same booking"
            );
        }
        let token = tokens.patient(&seeded.nins[0]);
        let again = booking
            .call(1, |ch| {
                let r = authed(seeded.video_book.clone(), &token);
                async move { BookingServiceClient::new(ch).book(r).await }
            })
            .await
            .expect("video booking retried on the survivor");
        assert_eq!(
            again.appointment_id, seeded.video_appointment,
            "booking-1 served it before it died; booking-2 returns the same appointment"
        );
        for (i, c) in &conversations {
            let token = tokens.patient(&seeded.nins[*i]);
            let again = consultation
                .call(1, |ch| {
                    let r = authed(c.start.clone(), &token);
                    async move {
                        ConsultationServiceClient::new(ch)
                            .start_consultation(r)
                            .await
                    }
                })
                .await
                .unwrap_or_else(|s| panic!("patient {i}: start retried: {s:?}"));
            assert_eq!(again.thread.expect("thread").thread_id, c.thread_id);
            assert_eq!(
                again.message.expect("message").message_id,
                c.messages[0].message_id
            );
            for (send, first) in c.sends.iter().zip(&c.messages[1..]) {
                let again = consultation
                    .call(1, |ch| {
                        let r = authed(send.clone(), &token);
                        async move { ConsultationServiceClient::new(ch).send_message(r).await }
                    })
                    .await
                    .unwrap_or_else(|s| panic!("patient {i}: message retried: {s:?}"));
                assert_eq!(
                    again.message.expect("message").message_id,
                    first.message_id,
                    "patient {i}: a retried message is the first one"
                );
            }
        }

        // Video: the offer crossed from signalling-1 to signalling-2, the answer reached the
        // patient after it resumed on the survivor.
        assert!(video.offer_reached_gp, "the patient's offer reached the GP");
        assert!(
            video.answer_reached_patient_after_failover,
            "the GP's answer reached the patient after the failover"
        );

        // The database: bookings.
        let db = Db::connect(&db_url).await.expect("db");
        assert_eq!(
            count(
                &db,
                "SELECT COUNT(*) AS n FROM (SELECT slot_id FROM booking_appointments WHERE status <> 4 \
                 GROUP BY slot_id HAVING COUNT(*) > 1) d"
            )
            .await,
            0,
            "no slot has two appointments"
        );
        let stored: BTreeSet<String> = strings(
            &db,
            "SELECT a.appointment_id FROM booking_appointments a JOIN booking_slots s ON s.slot_id = a.slot_id \
             WHERE a.status <> 4 AND s.modality = 1",
        )
        .await
        .into_iter()
        .collect();
        let seen: BTreeSet<String> = booked
            .values()
            .map(|(a, _)| a.appointment_id.clone())
            .collect();
        assert_eq!(seen.len(), booked.len(), "one appointment per patient");
        assert_eq!(
            stored, seen,
            "the stored appointments are exactly those clients saw booked"
        );
        assert_eq!(
            booked.len(),
            IN_PERSON_SLOTS,
            "every slot was booked once ({} patients raced for {IN_PERSON_SLOTS})",
            PATIENTS
        );
        let booked_slots: BTreeSet<&String> = booked
            .values()
            .map(|(a, _)| &a.slot.as_ref().expect("slot").slot_id)
            .collect();
        let published: BTreeSet<&String> = seeded.in_person.iter().collect();
        assert_eq!(
            booked_slots, published,
            "each in-person slot went to one patient"
        );

        // The database: messages.
        let mut bodies: HashMap<String, i64> = HashMap::new();
        for r in sqlx::query("SELECT body, COUNT(*) AS n FROM consultation_messages GROUP BY body")
            .fetch_all(db.read())
            .await
            .expect("messages")
        {
            bodies.insert(
                sqlx::Row::try_get(&r, "body").expect("body"),
                sqlx::Row::try_get(&r, "n").expect("n"),
            );
        }
        let mut sent = 0;
        for (i, c) in &conversations {
            for (j, m) in c.messages.iter().enumerate() {
                let body = format!("scaleout patient {i} message {j}");
                assert_eq!(m.body, body);
                assert_eq!(m.seq, j as i64 + 1, "patient {i}: seqs 1, 2, 3 …");
                assert_eq!(
                    bodies.get(&body),
                    Some(&1),
                    "patient {i} message {j} stored exactly once"
                );
                sent += 1;
            }
        }
        assert_eq!(sent, CONSULTING * (1 + FOLLOW_UPS));
        assert_eq!(
            count(&db, "SELECT COUNT(*) AS n FROM consultation_messages").await,
            sent as i64,
            "no message stored that no client saw"
        );
        assert_eq!(
            count(&db, "SELECT COUNT(*) AS n FROM consultation_threads").await,
            CONSULTING as i64,
            "one thread per patient, however often StartConsultation was retried"
        );

        // Statistics on the surviving stats instances count every booked appointment once, and
        // the outbox drains (the relay leadership moved if the leader was killed).
        let appointments = count(
            &db,
            "SELECT COUNT(*) AS n FROM booking_appointments WHERE status = 1",
        )
        .await as u64;
        assert_eq!(appointments, IN_PERSON_SLOTS as u64 + 1);
        // The practice reads its own figures exactly (ops get cells under 5 suppressed).
        let reader = tokens.ehr();
        let deadline = Instant::now() + WAIT;
        let mut turn = 0;
        loop {
            let n = bookings_counted(&stats, turn, &reader).await;
            assert!(n <= appointments, "counted {n} bookings of {appointments}");
            if n == appointments {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "stats counted {n} of {appointments} bookings"
            );
            turn += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let deadline = Instant::now() + WAIT;
        while count(
            &db,
            "SELECT COUNT(*) AS n FROM outbox WHERE seq IS NULL OR published_at IS NULL",
        )
        .await
            > 0
        {
            assert!(Instant::now() < deadline, "the outbox did not drain");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        for instance in 0..2 {
            assert_eq!(
                bookings_counted(&stats, instance, &reader).await,
                appointments,
                "stats-{}: every booking counted exactly once",
                instance + 1
            );
        }
        db.close().await;
    };
    tokio::time::timeout(TOTAL, run)
        .await
        .expect("the scale-out scenario finished in time");
    eprintln!("scale-out scenario passed after {:?}", started.elapsed());
    drop(cluster);
    if let Ok(client) = redis::Client::open(redis.as_str())
        && let Ok(mut con) = client.get_multiplexed_async_connection().await
    {
        let _: redis::RedisResult<()> = redis::cmd("DEL")
            .arg(format!("{ns}:events"))
            .query_async(&mut con)
            .await;
    }
}

// ── delivery latency across instances ──────────────────────────────────────────────────────────

/// Messages sent through the instance that does not relay, one every [`LATENCY_SEND_EVERY`].
const LATENCY_MESSAGES: usize = 200;
const LATENCY_SEND_EVERY: Duration = Duration::from_millis(40);
/// Patients who send them, in turn (each stays under the patients' rate limit, 10/s).
const LATENCY_PATIENTS: usize = 8;
/// Bound of the median delivery latency through the non-leader. Woken only by the leader's
/// 200 ms poll it was 116–125 ms; woken across instances it is 14–27 ms, as through the leader.
const LATENCY_P50_BOUND: Duration = Duration::from_millis(50);
/// Liveness bound of the p99 (the target is 50 ms). On a machine shared with other builds and
/// test suites the p99 of writes through the leader itself reached 500 ms in one run: a tighter
/// bound would measure the machine, not the path (`load-tests/results/HISTORY.md`, 2026-12-05).
const LATENCY_P99_BOUND: Duration = Duration::from_millis(500);
/// After the leader's kill: messages through the survivor, this often, for this long.
const AFTER_KILL_SEND_EVERY: Duration = Duration::from_millis(20);
const AFTER_KILL_SEND_FOR: Duration = Duration::from_millis(1500);
/// Liveness bound of the pause a leader's kill causes (the target is 0.5 s).
const TAKEOVER_BOUND: Duration = Duration::from_secs(1);

/// When each message arrived on one stream, by message id.
type Arrivals = Arc<Mutex<HashMap<String, Instant>>>;

/// Opens the patient's Subscribe stream on `port` and records each message's arrival until the
/// stream ends. The stream's channel has no request timeout.
async fn record_arrivals(port: u16, token: &str, arrivals: Arrivals) {
    let channel = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .expect("uri")
        .connect_lazy();
    let mut stream = ConsultationServiceClient::new(channel)
        .subscribe(authed(cpb::SubscribeRequest { after_cursor: 0 }, token))
        .await
        .expect("subscribe")
        .into_inner();
    tokio::spawn(async move {
        while let Ok(Some(change)) = stream.message().await {
            if let Some(m) = change.message {
                let now = Instant::now();
                arrivals
                    .lock()
                    .expect("arrivals")
                    .entry(m.message_id)
                    .or_insert(now);
            }
        }
    });
}

/// A message sent: when its SendMessage call began and when its answer came.
struct Sent {
    called: Instant,
    answered: Instant,
    message_id: String,
}

/// Sends a message on `thread_id`.
async fn send_timed(channel: &Channel, token: &str, thread_id: &str, body: String) -> Sent {
    let called = Instant::now();
    let r = ConsultationServiceClient::new(channel.clone())
        .send_message(authed(
            cpb::SendMessageRequest {
                thread_id: thread_id.to_owned(),
                body,
                attachments: vec![],
                idempotency_key: key(),
            },
            token,
        ))
        .await
        .expect("send message")
        .into_inner();
    Sent {
        called,
        answered: Instant::now(),
        message_id: r.message.expect("message").message_id,
    }
}

/// Waits until every message of `sent` arrived on `arrivals`; returns each one's delay from
/// the start of its SendMessage call, sorted.
async fn delays(what: &str, sent: &[Sent], arrivals: &Arrivals) -> Vec<Duration> {
    delays_from(what, sent, arrivals, |s| s.called).await
}

/// [`delays`] from the instant `from` picks (the call's start, or its answer: after the commit).
async fn delays_from(
    what: &str,
    sent: &[Sent],
    arrivals: &Arrivals,
    from: fn(&Sent) -> Instant,
) -> Vec<Duration> {
    let deadline = Instant::now() + WAIT;
    loop {
        let got: Option<Vec<Duration>> = {
            let arrivals = arrivals.lock().expect("arrivals");
            sent.iter()
                .map(|s| {
                    let a = arrivals.get(&s.message_id)?;
                    Some(a.saturating_duration_since(from(s)))
                })
                .collect()
        };
        if let Some(mut d) = got {
            d.sort_unstable();
            return d;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not every message arrived"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn summary(sorted: &[Duration]) -> String {
    format!(
        "n={} p50={:?} p90={:?} p99={:?} max={:?}",
        sorted.len(),
        percentile(sorted, 0.50),
        percentile(sorted, 0.90),
        percentile(sorted, 0.99),
        sorted[sorted.len() - 1]
    )
}

/// The index of the process that leads the outbox relay (it logs when it takes the lock).
async fn relay_leader(procs: &[Proc]) -> usize {
    let deadline = Instant::now() + WAIT;
    loop {
        for (i, p) in procs.iter().enumerate() {
            let log = std::fs::read_to_string(&p.log).unwrap_or_default();
            if log.contains("outbox relay leads") {
                return i;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no instance leads the outbox relay"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_through_the_non_leader_reach_streams_promptly_and_a_leader_kill_pauses_briefly() {
    let Some(env) = common::Env::postgres().await else {
        return;
    };
    let db_url = env.database_url.clone().expect("database url");
    let redis = env.redis_url.clone().expect("redis url");
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = Tokens {
        keys: DevKeys::load_or_create(dir.path()).expect("dev keys"),
    };
    migrate(dir.path(), &db_url).await;
    let ns = format!("latency-{}", uuid::Uuid::new_v4().simple());
    let procs: Vec<Proc> = (1..=2)
        .map(|n| {
            let name = format!("latency-{n}");
            Proc::spawn(
                dir.path(),
                &name,
                "booking,consultation",
                &db_url,
                &redis,
                &ns,
            )
        })
        .collect();
    let cluster = Cluster { procs };
    futures::future::join_all(cluster.procs.iter().map(Proc::ready)).await;
    let leader = relay_leader(&cluster.procs).await;
    let other = 1 - leader;
    eprintln!("{} leads the outbox relay", cluster.procs[leader].name);
    let (leader, other) = (&cluster.procs[leader], &cluster.procs[other]);
    // Everything goes through the non-leader (index 0 of the pair).
    let pair = Pair {
        service: "latency",
        channels: [other.channel(), leader.channel()],
        failovers: Arc::default(),
    };

    let run = async {
        let seeded = seed(&pair, &tokens).await;
        let patients: Vec<(String, String)> = seeded.nins[..LATENCY_PATIENTS]
            .iter()
            .map(|nin| (nin.clone(), tokens.patient(nin)))
            .collect();
        let (on_other, on_leader): (Arrivals, Arrivals) =
            (Arrivals::default(), Arrivals::default());
        let mut threads = Vec::new();
        for (i, (_, token)) in patients.iter().enumerate() {
            record_arrivals(other.port(), token, on_other.clone()).await;
            record_arrivals(leader.port(), token, on_leader.clone()).await;
            let start = cpb::StartConsultationRequest {
                category: cpb::Category::EConsultation as i32,
                subject: format!("Latens {i}"),
                body: format!("latency patient {i} message 0"),
                attachments: vec![],
                urgent: false,
                idempotency_key: key(),
                language: String::new(),
                booking_request_id: String::new(),
            };
            let started = ConsultationServiceClient::new(other.channel())
                .start_consultation(authed(start, token))
                .await
                .expect("start consultation")
                .into_inner();
            threads.push(started.thread.expect("thread").thread_id);
        }

        // The baseline, in the same run: the same rate through the leader, delivered on it.
        let mut ticks = tokio::time::interval(LATENCY_SEND_EVERY);
        let channel = leader.channel();
        let mut sent = Vec::new();
        for j in 0..LATENCY_MESSAGES / 2 {
            ticks.tick().await;
            let i = j % LATENCY_PATIENTS;
            let body = format!("baseline {j}");
            sent.push(send_timed(&channel, &patients[i].1, &threads[i], body).await);
        }
        let baseline = delays("stream on the leader (baseline)", &sent, &on_leader).await;
        eprintln!(
            "baseline: written through the leader, delivered on the leader: {}",
            summary(&baseline)
        );

        // A modest steady rate through the non-leader.
        let channel = other.channel();
        let mut sent = Vec::new();
        for j in 0..LATENCY_MESSAGES {
            ticks.tick().await;
            let i = j % LATENCY_PATIENTS;
            sent.push(
                send_timed(
                    &channel,
                    &patients[i].1,
                    &threads[i],
                    format!("latency {j}"),
                )
                .await,
            );
        }
        let through_other = delays("stream on the non-leader", &sent, &on_other).await;
        let through_leader = delays("stream on the leader", &sent, &on_leader).await;
        eprintln!(
            "written through the non-leader, delivered on the non-leader: {}",
            summary(&through_other)
        );
        eprintln!(
            "written through the non-leader, delivered on the leader: {}",
            summary(&through_leader)
        );
        let mut calls: Vec<Duration> = sent.iter().map(|s| s.answered - s.called).collect();
        calls.sort_unstable();
        let after_answer =
            delays_from("stream on the non-leader", &sent, &on_other, |s| s.answered).await;
        eprintln!(
            "  of which SendMessage (the commit): {}; from its answer to the non-leader's stream: {}",
            summary(&calls),
            summary(&after_answer)
        );

        // kill -9 of the leader while writes go on through the survivor.
        leader.kill_9();
        let killed = Instant::now();
        let mut ticks = tokio::time::interval(AFTER_KILL_SEND_EVERY);
        let mut after_kill = Vec::new();
        let mut j = 0;
        while killed.elapsed() < AFTER_KILL_SEND_FOR {
            ticks.tick().await;
            let i = j % LATENCY_PATIENTS;
            after_kill.push(
                send_timed(
                    &channel,
                    &patients[i].1,
                    &threads[i],
                    format!("after kill {j}"),
                )
                .await,
            );
            j += 1;
        }
        let after = delays(
            "stream on the survivor after the kill",
            &after_kill,
            &on_other,
        )
        .await;
        let resumed = {
            let arrivals = on_other.lock().expect("arrivals");
            after_kill
                .iter()
                .filter_map(|s| arrivals.get(&s.message_id))
                .min()
                .map(|a| a.saturating_duration_since(killed))
                .expect("a message after the kill")
        };
        eprintln!(
            "leader killed: first delivery {resumed:?} after the kill; messages sent after it: {}",
            summary(&after)
        );

        for (on, d) in [("non-leader", &through_other), ("leader", &through_leader)] {
            assert!(
                percentile(d, 0.50) < LATENCY_P50_BOUND,
                "writes through the non-leader reach the {on}'s stream with a median under \
                 {LATENCY_P50_BOUND:?} (the leader is woken, not polling)"
            );
            assert!(
                percentile(d, 0.99) < LATENCY_P99_BOUND,
                "writes through the non-leader reach the {on}'s stream with a p99 under \
                 {LATENCY_P99_BOUND:?}"
            );
        }
        assert!(
            resumed < TAKEOVER_BOUND && after[after.len() - 1] < TAKEOVER_BOUND,
            "delivery resumed within {TAKEOVER_BOUND:?} of the leader's kill"
        );
    };
    tokio::time::timeout(TOTAL, run)
        .await
        .expect("the latency scenario finished in time");
    drop(cluster);
    if let Ok(client) = redis::Client::open(redis.as_str())
        && let Ok(mut con) = client.get_multiplexed_async_connection().await
    {
        let _: redis::RedisResult<()> = redis::cmd("DEL")
            .arg(format!("{ns}:events"))
            .query_async(&mut con)
            .await;
    }
}

// ── statistics after a kill ────────────────────────────────────────────────────────────────────

/// Bookings (one per patient, each of its own slot) written through both instances.
const STATS_BOOKINGS: usize = 40;
/// One booking is started this often, alternating between the instances.
const STATS_BOOK_EVERY: Duration = Duration::from_millis(40);
/// Bookings after which the instance that does not lead the relay is stopped.
const STATS_STOP_AT: usize = 16;
/// Bookings written through the other instance while it is stopped; then it is killed.
const STATS_WHILE_STOPPED: usize = 8;
/// Bound of the wait for the exact figures after the last booking. The catch-up from the
/// outbox runs every 2 s and applies an event the bus did not deliver within two periods; it
/// took 25–35 s before the catch-up and the claim of a dead consumer's entries were that fast.
const STATS_CATCH_UP_BOUND: Duration = Duration::from_secs(15);

/// Entries of group `group` of the bus stream of namespace `ns` pending with each consumer
/// (read and not yet acknowledged).
async fn pending_by_consumer(redis: &str, ns: &str, group: &str) -> BTreeMap<String, usize> {
    let client = redis::Client::open(redis).expect("redis url");
    let mut con = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis connection");
    let reply: redis::streams::StreamPendingReply = redis::cmd("XPENDING")
        .arg(format!("{ns}:events"))
        .arg(group)
        .query_async(&mut con)
        .await
        .expect("XPENDING");
    match reply {
        redis::streams::StreamPendingReply::Data(d) => d
            .consumers
            .into_iter()
            .map(|c| (c.name, c.pending))
            .collect(),
        _ => BTreeMap::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_kill_9_of_one_of_two_instances_the_stats_catch_up_within_seconds() {
    let Some(env) = common::Env::postgres().await else {
        return;
    };
    let db_url = env.database_url.clone().expect("database url");
    let redis = env.redis_url.clone().expect("redis url");
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = Tokens {
        keys: DevKeys::load_or_create(dir.path()).expect("dev keys"),
    };
    migrate(dir.path(), &db_url).await;
    let ns = format!("stats-kill-{}", uuid::Uuid::new_v4().simple());
    // Each instance runs booking (writes, the outbox relay) and stats (a consumer of the
    // group `stats` and the catch-up): the kill takes a consumer with the entries it had read.
    let procs: Vec<Proc> = (1..=2)
        .map(|n| {
            let name = format!("stats-{n}");
            Proc::spawn(dir.path(), &name, "booking,stats", &db_url, &redis, &ns)
        })
        .collect();
    let cluster = Cluster { procs };
    futures::future::join_all(cluster.procs.iter().map(Proc::ready)).await;
    // The victim is the instance that does not lead the relay, so that the outbox goes on
    // reaching the bus while it is stopped.
    let survivor = relay_leader(&cluster.procs).await;
    let victim = 1 - survivor;
    eprintln!(
        "{} leads the outbox relay; {} will be killed",
        cluster.procs[survivor].name, cluster.procs[victim].name
    );
    // Instance 1 of the pair is `procs[0]`, as for `Cluster::pair`.
    let booking = Pair {
        service: "stats",
        channels: [cluster.procs[0].channel(), cluster.procs[1].channel()],
        failovers: Arc::default(),
    };

    let run = async {
        // A GP with a patient and a slot per booking, so that every booking succeeds.
        let ehr = tokens.ehr();
        let nins = seed_gp_and_list(
            &booking,
            &tokens,
            "Dr Statistikk",
            8_900_000,
            STATS_BOOKINGS,
        )
        .await;
        let day = Utc::now() + chrono::Duration::days(2);
        let publish = bpb::PublishSlotsRequest {
            gp_id: GP_ID.into(),
            slots: (0..STATS_BOOKINGS as i64)
                .map(|i| bpb::NewSlot {
                    start: Some(ts(day + chrono::Duration::minutes(15 * i))),
                    duration_minutes: 15,
                    modality: bpb::Modality::InPerson as i32,
                    acute_reserve: false,
                })
                .collect(),
            idempotency_key: key(),
        };
        let slots: Vec<String> = booking
            .call(0, |ch| {
                let r = authed(publish.clone(), &ehr);
                async move { BookingServiceClient::new(ch).publish_slots(r).await }
            })
            .await
            .expect("publish slots")
            .slots
            .into_iter()
            .map(|s| s.slot_id)
            .collect();
        assert_eq!(slots.len(), STATS_BOOKINGS);

        // Bookings through both instances at a steady pace. Part-way, the victim is stopped
        // while idle (its stats consumer's blocking read stays open at Redis, so Redis hands it
        // entries it will never apply), bookings go on through the survivor, then the victim
        // dies with `kill -9` holding those entries, and bookings go on through both (calls to
        // the dead one are retried with the same idempotency key on the survivor).
        let answered = Arc::new(AtomicUsize::new(0));
        let mut killed = None;
        let mut stranded = 0;
        let mut calls = Vec::new();
        let mut ticks = tokio::time::interval(STATS_BOOK_EVERY);
        for (i, (nin, slot_id)) in nins.iter().zip(&slots).enumerate() {
            if i == STATS_STOP_AT {
                wait_for("bookings before the stop", &answered, i).await;
                // Both stats consumers blocked in XREADGROUP, idle.
                tokio::time::sleep(Duration::from_millis(300)).await;
                cluster.procs[victim].stop();
            }
            if i == STATS_STOP_AT + STATS_WHILE_STOPPED {
                wait_for("bookings while stopped", &answered, i).await;
                let name = &cluster.procs[victim].name;
                let deadline = Instant::now() + Duration::from_secs(5);
                loop {
                    let pending = pending_by_consumer(&redis, &ns, "stats").await;
                    stranded = pending.get(name).copied().unwrap_or(0);
                    if stranded > 0 || Instant::now() >= deadline {
                        eprintln!("entries pending per stats consumer at the kill: {pending:?}");
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                cluster.procs[victim].kill_9();
                killed = Some(Instant::now());
            }
            ticks.tick().await;
            let stopped = (STATS_STOP_AT..STATS_STOP_AT + STATS_WHILE_STOPPED).contains(&i);
            let (booking, done) = (booking.clone(), answered.clone());
            let token = tokens.patient(nin);
            let book = bpb::BookRequest {
                target: Some(bpb::book_request::Target::SlotId(slot_id.clone())),
                reason: format!("patient {i}"),
                request_id: String::new(),
                idempotency_key: key(),
            };
            calls.push(tokio::spawn(async move {
                let r = booking
                    .call(if stopped { survivor } else { i }, |ch| {
                        let r = authed(book.clone(), &token);
                        async move { BookingServiceClient::new(ch).book(r).await }
                    })
                    .await;
                done.fetch_add(1, Ordering::SeqCst);
                r
            }));
        }
        for c in calls {
            c.await.expect("booking task").expect("book");
        }
        let written = Instant::now();
        eprintln!(
            "{STATS_BOOKINGS} bookings answered ({} failovers)",
            booking.failovers()
        );
        let db = Db::connect(&db_url).await.expect("db");
        let appointments = count(
            &db,
            "SELECT COUNT(*) AS n FROM booking_appointments WHERE status = 1",
        )
        .await as u64;
        assert_eq!(
            appointments, STATS_BOOKINGS as u64,
            "every booking exactly once"
        );

        // The surviving instance's statistics reach the exact figure promptly.
        // The practice reads its own figures exactly (ops get cells under 5 suppressed).
        let reader = tokens.ehr();
        let killed = killed.expect("the victim was killed");
        assert!(
            stranded > 0,
            "the killed instance held entries it had read and not acknowledged"
        );
        let (caught_up, since_kill) = loop {
            let n = bookings_counted(&booking, survivor, &reader).await;
            assert!(n <= appointments, "counted {n} bookings of {appointments}");
            if n == appointments {
                break (written.elapsed(), killed.elapsed());
            }
            assert!(
                written.elapsed() < STATS_CATCH_UP_BOUND,
                "stats counted {n} of {appointments} bookings {:?} after the last one",
                written.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let log = std::fs::read_to_string(&cluster.procs[survivor].log).unwrap_or_default();
        let catch_ups: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("did not deliver"))
            .collect();
        eprintln!(
            "stats exact ({appointments} bookings) {caught_up:?} after the last booking \
             ({since_kill:?} after the kill, which stranded {stranded} entries); catch-up \
             passes that applied missed events on the survivor: {}",
            catch_ups.len()
        );
        for l in catch_ups {
            eprintln!("  {l}");
        }
        // The entries the dead consumer had taken are claimed by the survivor later (10 s
        // idle): applying them again must not count twice.
        tokio::time::sleep(
            econsult_runtime::bus::CLAIM_IDLE.saturating_sub(written.elapsed())
                + Duration::from_secs(2),
        )
        .await;
        assert_eq!(
            bookings_counted(&booking, survivor, &reader).await,
            appointments,
            "every booking counted exactly once after the dead consumer's entries were claimed"
        );
        db.close().await;
    };
    tokio::time::timeout(TOTAL, run)
        .await
        .expect("the stats catch-up scenario finished in time");
    drop(cluster);
    if let Ok(client) = redis::Client::open(redis.as_str())
        && let Ok(mut con) = client.get_multiplexed_async_connection().await
    {
        let _: redis::RedisResult<()> = redis::cmd("DEL")
            .arg(format!("{ns}:events"))
            .query_async(&mut con)
            .await;
    }
}
