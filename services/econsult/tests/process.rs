//! Tests of the real `econsult` binary as a process: crash safety of the outbox (kill -9 in the
//! window between commit and publish), clean shutdown on SIGTERM, the Prometheus endpoint,
//! gRPC-Web, health and reflection.

mod common;

use chrono::Utc;
use common::process::Proc;
use common::{ORG_A, authed, key, ts};
use econsult_proto::booking::v1 as pb;
use econsult_runtime::auth::{DevKeys, REQUIRED_ACR, TokenSpec};
use std::os::unix::process::ExitStatusExt as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

fn tokens(dir: &Path) -> (String, String, String, String) {
    let keys = DevKeys::load_or_create(dir).expect("keys");
    let now = Utc::now().timestamp();
    let nin = econsult_runtime::nin::synthetic(4242).as_str().to_owned();
    let ehr = keys
        .mint(
            &TokenSpec::Ehr {
                client_id: "epj".into(),
                org_number: ORG_A.into(),
                scopes: vec![
                    "econsult:booking.write".into(),
                    "econsult:booking.read".into(),
                    "econsult:stats.read".into(),
                ],
            },
            now,
            600,
        )
        .expect("mint");
    let patient = keys
        .mint(
            &TokenSpec::Patient {
                nin: nin.clone(),
                acr: REQUIRED_ACR.into(),
            },
            now,
            600,
        )
        .expect("mint");
    let ops = keys
        .mint(
            &TokenSpec::Ops {
                subject: "ops".into(),
            },
            now,
            600,
        )
        .expect("mint");
    (ehr, patient, ops, nin)
}

async fn seed(ch: Channel, ehr: &str, nin: &str) {
    seed_list(ch.clone(), ehr, nin).await;
    let mut c = pb::booking_service_client::BookingServiceClient::new(ch);
    let start = Utc::now() + chrono::Duration::days(1);
    c.publish_slots(authed(
        pb::PublishSlotsRequest {
            gp_id: "gp-1".into(),
            slots: vec![pb::NewSlot {
                start: Some(ts(start)),
                duration_minutes: 15,
                modality: 1,
                acute_reserve: false,
            }],
            idempotency_key: key(),
        },
        ehr,
    ))
    .await
    .expect("slots");
}

/// GP "gp-1" of ORG_A with `nin` on the list, and no slots.
async fn seed_list(ch: Channel, ehr: &str, nin: &str) {
    let mut c = pb::booking_service_client::BookingServiceClient::new(ch);
    c.upsert_gp(authed(
        pb::UpsertGpRequest {
            gp: Some(pb::Gp {
                gp_id: "gp-1".into(),
                hpr_number: "1234567".into(),
                display_name: "Dr A".into(),
                municipality_number: "0301".into(),
                list_capacity: 100,
                list_status: 1,
                ..Default::default()
            }),
        },
        ehr,
    ))
    .await
    .expect("gp");
    c.update_list(authed(
        pb::UpdateListRequest {
            gp_id: "gp-1".into(),
            add: vec![nin.into()],
            remove: vec![],
            idempotency_key: key(),
        },
        ehr,
    ))
    .await
    .expect("list");
}

/// Requests and bookings of the practice as it reads them itself (exact; ops get cells under 5
/// suppressed).
async fn requests_counted(ch: Channel, ehr: &str) -> (u64, u64) {
    let today = Utc::now().date_naive();
    let filter = econsult_proto::stats::v1::Filter {
        from_date: (today - chrono::Duration::days(1)).to_string(),
        to_date: (today + chrono::Duration::days(1)).to_string(),
        ..Default::default()
    };
    let mut s = econsult_proto::stats::v1::stats_service_client::StatsServiceClient::new(ch);
    let figures = s
        .get_booking_accessibility(authed(
            econsult_proto::stats::v1::GetBookingAccessibilityRequest {
                filter: Some(filter),
            },
            ehr,
        ))
        .await
        .expect("stats")
        .into_inner();
    (figures.requests, figures.bookings)
}

async fn count(db: &econsult_runtime::db::Db, sql: &str) -> i64 {
    sqlx::Row::try_get(
        &sqlx::query(sql).fetch_one(db.read()).await.expect("query"),
        "n",
    )
    .expect("n")
}

/// Kills the server with the equivalent of `kill -9` right after the relay committed the
/// sequencing of an event and before it published it; after a restart the event reaches the
/// statistics consumer exactly once. The booking was the first write after the patient's
/// search: the search's booking request (written with the booking) survives too.
async fn kill_9_between_commit_and_publish_loses_no_event(env: common::Env) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut extra = Vec::new();
    let db_url = env
        .database_url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", dir.path().join("econsult.db").display()));
    extra.extend(["--database-url".to_owned(), db_url.clone()]);
    if let Some(r) = &env.redis_url {
        extra.extend([
            "--redis-url".to_owned(),
            r.clone(),
            "--redis-namespace".to_owned(),
            format!("crash-{}", uuid::Uuid::new_v4().simple()),
        ]);
    }
    let mut server = Proc::spawn(dir.path(), &extra, Some("relay-after-sequence"));
    let ch = server.channel().await;
    let (ehr, patient, _ops, nin) = tokens(dir.path());
    seed(ch.clone(), &ehr, &nin).await;
    // FindSlots writes nothing; Book commits the booking, its request and a booking.created
    // event; the relay sequences it and the process dies.
    let mut c = pb::booking_service_client::BookingServiceClient::new(ch);
    let found = c
        .find_slots(authed(pb::FindSlotsRequest::default(), &patient))
        .await
        .expect("find")
        .into_inner();
    let _ = c
        .book(authed(
            pb::BookRequest {
                target: Some(pb::book_request::Target::SlotId(
                    found.slots[0].slot.as_ref().expect("slot").slot_id.clone(),
                )),
                idempotency_key: key(),
                ..Default::default()
            },
            &patient,
        ))
        .await;
    let status = server.wait_exit(Duration::from_secs(20));
    assert_eq!(
        status.signal(),
        Some(6),
        "the failpoint aborts the process: {status:?}"
    );

    let db = econsult_runtime::db::Db::connect(&db_url)
        .await
        .expect("db");
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) AS n FROM outbox WHERE seq IS NOT NULL AND published_at IS NULL"
        )
        .await,
        1,
        "sequenced, not published"
    );
    db.close().await;

    let server = Proc::spawn(dir.path(), &extra, None);
    let ch = server.channel().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while requests_counted(ch.clone(), &ehr).await.1 == 0 {
        assert!(
            Instant::now() < deadline,
            "the event never reached the statistics"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        requests_counted(ch, &ehr).await,
        (1, 1),
        "the request kept, the booking counted exactly once"
    );
    let db = econsult_runtime::db::Db::connect(&db_url)
        .await
        .expect("db");
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) AS n FROM outbox WHERE published_at IS NULL"
        )
        .await,
        0,
        "the outbox drained"
    );
    db.close().await;
}

fn patient_token(dir: &Path, nin: &str) -> String {
    DevKeys::load_or_create(dir)
        .expect("keys")
        .mint(
            &TokenSpec::Patient {
                nin: nin.into(),
                acr: REQUIRED_ACR.into(),
            },
            Utc::now().timestamp(),
            600,
        )
        .expect("mint")
}

/// FindSlots writes nothing; its booking requests are written every second (the flush), a held
/// one with the hold. Killed with SIGKILL right after a search and a hold, the server loses at
/// most the search-only requests of the last second: an older search's request and the held
/// one are stored.
async fn kill_9_loses_at_most_the_last_second_of_search_only_requests(env: common::Env) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db_url = env
        .database_url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", dir.path().join("econsult.db").display()));
    let mut extra = vec!["--database-url".to_owned(), db_url.clone()];
    if let Some(r) = &env.redis_url {
        extra.extend([
            "--redis-url".to_owned(),
            r.clone(),
            "--redis-namespace".to_owned(),
            format!("crash-{}", uuid::Uuid::new_v4().simple()),
        ]);
    }
    let mut server = Proc::spawn(dir.path(), &extra, None);
    let ch = server.channel().await;
    let (ehr, _, _, nin) = tokens(dir.path());
    seed(ch.clone(), &ehr, &nin).await;
    let (early, late) = (
        econsult_runtime::nin::synthetic(4243).as_str().to_owned(),
        econsult_runtime::nin::synthetic(4244).as_str().to_owned(),
    );
    let mut c = pb::booking_service_client::BookingServiceClient::new(ch);
    c.update_list(authed(
        pb::UpdateListRequest {
            gp_id: "gp-1".into(),
            add: vec![early.clone(), late.clone()],
            remove: vec![],
            idempotency_key: key(),
        },
        &ehr,
    ))
    .await
    .expect("list");
    c.find_slots(authed(
        pb::FindSlotsRequest::default(),
        &patient_token(dir.path(), &early),
    ))
    .await
    .expect("find");
    // Past the flush interval (1 s) with room to spare.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    c.find_slots(authed(
        pb::FindSlotsRequest::default(),
        &patient_token(dir.path(), &late),
    ))
    .await
    .expect("find");
    let holder = patient_token(dir.path(), &nin);
    let found = c
        .find_slots(authed(pb::FindSlotsRequest::default(), &holder))
        .await
        .expect("find")
        .into_inner();
    c.hold_slot(authed(
        pb::HoldSlotRequest {
            slot_id: found.slots[0].slot.as_ref().expect("slot").slot_id.clone(),
            request_id: found.request_id.clone(),
            idempotency_key: key(),
        },
        &holder,
    ))
    .await
    .expect("hold");
    server.child.kill().expect("SIGKILL");
    server.wait_exit(Duration::from_secs(10));

    let db = econsult_runtime::db::Db::connect(&db_url)
        .await
        .expect("db");
    let stored = |nin: &str| {
        format!(
            "SELECT COUNT(*) AS n FROM booking_episodes WHERE patient_nin = '{nin}' AND outcome = 0"
        )
    };
    assert_eq!(
        count(&db, &stored(&early)).await,
        1,
        "flushed before the kill"
    );
    assert_eq!(
        count(
            &db,
            &format!(
                "SELECT COUNT(*) AS n FROM booking_episodes WHERE patient_nin = '{nin}' \
                 AND request_id = '{}' AND chosen_slot_id IS NOT NULL",
                found.request_id
            )
        )
        .await,
        1,
        "written with the hold"
    );
    let late_n = count(&db, &stored(&late)).await;
    assert!(late_n <= 1, "at most one request per need: {late_n}");
    db.close().await;
}

on_both_backends!(
    kill_9_between_commit_and_publish_loses_no_event,
    kill_9_loses_at_most_the_last_second_of_search_only_requests
);

#[tokio::test]
async fn sigterm_ends_open_streams_and_exits_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Proc::spawn(dir.path(), &[], None);
    let ch = server.channel().await;
    let (ehr, _, _, nin) = tokens(dir.path());
    seed(ch.clone(), &ehr, &nin).await;
    let mut watch = pb::booking_service_client::BookingServiceClient::new(ch)
        .watch_bookings(authed(pb::WatchBookingsRequest { after_cursor: 0 }, &ehr))
        .await
        .expect("watch")
        .into_inner();
    let killed = Command::new("kill")
        .arg("-TERM")
        .arg(server.child.id().to_string())
        .status()
        .expect("kill");
    assert!(killed.success());
    // The open stream is ended by the server (UNAVAILABLE: resume later), not cut.
    let end = tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .expect("stream ends in time");
    match end {
        Err(s) => assert_eq!(s.code(), tonic::Code::Unavailable),
        Ok(None) => {}
        Ok(Some(m)) => panic!("unexpected message {m:?}"),
    }
    let status = server.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "clean exit: {status:?}");
}

#[tokio::test]
async fn metrics_grpc_web_health_and_both_reflection_versions_are_served() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Proc::spawn(dir.path(), &[], None);
    let ch = server.channel().await;
    // An RPC without a token is refused, and counted.
    let err = pb::booking_service_client::BookingServiceClient::new(ch.clone())
        .find_slots(pb::FindSlotsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);

    // Prometheus endpoint with RED metrics by method and status code.
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", server.metrics_port))
        .await
        .expect("metrics");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut body = String::new();
    s.read_to_string(&mut body).await.expect("read");
    assert!(body.contains("rpc_server_requests_total"), "{body}");
    assert!(
        body.lines()
            .any(|l| l.starts_with("econsult_auth_failures_total")
                && l.contains("reason=\"missing\"")),
        "the refused call is counted by reason: {body}"
    );
    assert!(
        body.contains("rpc_method=\"/econsult.booking.v1.BookingService/FindSlots\""),
        "{body}"
    );
    assert!(
        body.contains("rpc_grpc_status_code=\"16\""),
        "UNAUTHENTICATED counted: {body}"
    );
    assert!(body.contains("rpc_server_duration_seconds_bucket"));

    // gRPC-Web over HTTP/1.1: a health check framed as grpc-web.
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", server.port))
        .await
        .expect("grpc-web");
    let req = b"POST /grpc.health.v1.Health/Check HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/grpc-web+proto\r\nX-Grpc-Web: 1\r\nContent-Length: 5\r\nConnection: close\r\n\r\n\x00\x00\x00\x00\x00";
    s.write_all(req).await.expect("write");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.expect("read");
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("application/grpc-web"), "{text}");
    assert!(
        text.contains("grpc-status:0"),
        "trailer frame with OK status: {text}"
    );

    // Server reflection, v1 and v1alpha alike, lists the econsult services, health and
    // reflection, and gives the health service's descriptor, so a tool that knows nothing but
    // reflection can call grpc.health.v1.Health/Check.
    let v1 = reflect_v1(ch.clone()).await;
    let v1alpha = reflect_v1alpha(ch).await;
    for (version, (listed, health_file)) in [("v1", v1), ("v1alpha", v1alpha)] {
        for service in [
            "econsult.booking.v1.BookingService",
            "econsult.consultation.v1.ConsultationService",
            "econsult.signalling.v1.SignallingService",
            "econsult.stats.v1.StatsService",
            "econsult.audit.v1.AuditService",
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ] {
            assert!(
                listed.iter().any(|s| s == service),
                "{version} lists {service}: {listed:?}"
            );
        }
        use prost::Message as _;
        let file = health_file
            .iter()
            .map(|bytes| prost_types::FileDescriptorProto::decode(bytes.as_slice()).expect("file"))
            .find(|f| f.package() == "grpc.health.v1")
            .unwrap_or_else(|| panic!("{version}: the health descriptor"));
        let health = file
            .service
            .iter()
            .find(|s| s.name() == "Health")
            .expect("service Health");
        assert!(
            health.method.iter().any(|m| m.name() == "Check"),
            "{version}"
        );
    }
}

/// Lists services and fetches the file defining grpc.health.v1.Health over reflection v1.
async fn reflect_v1(ch: Channel) -> (Vec<String>, Vec<Vec<u8>>) {
    use tokio_stream::StreamExt as _;
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let reqs = [
        MessageRequest::ListServices(String::new()),
        MessageRequest::FileContainingSymbol("grpc.health.v1.Health".into()),
    ]
    .map(|m| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(m),
    });
    let mut stream = ServerReflectionClient::new(ch)
        .server_reflection_info(tokio_stream::iter(reqs))
        .await
        .expect("reflection v1")
        .into_inner();
    let (mut listed, mut files) = (Vec::new(), Vec::new());
    while let Some(resp) = stream.next().await {
        match resp.expect("ok").message_response {
            Some(MessageResponse::ListServicesResponse(l)) => {
                listed = l.service.into_iter().map(|s| s.name).collect();
            }
            Some(MessageResponse::FileDescriptorResponse(f)) => files = f.file_descriptor_proto,
            other => panic!("unexpected v1 answer {other:?}"),
        }
    }
    (listed, files)
}

/// The same over reflection v1alpha.
async fn reflect_v1alpha(ch: Channel) -> (Vec<String>, Vec<Vec<u8>>) {
    use tokio_stream::StreamExt as _;
    use tonic_reflection::pb::v1alpha::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let reqs = [
        MessageRequest::ListServices(String::new()),
        MessageRequest::FileContainingSymbol("grpc.health.v1.Health".into()),
    ]
    .map(|m| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(m),
    });
    let mut stream = ServerReflectionClient::new(ch)
        .server_reflection_info(tokio_stream::iter(reqs))
        .await
        .expect("reflection v1alpha")
        .into_inner();
    let (mut listed, mut files) = (Vec::new(), Vec::new());
    while let Some(resp) = stream.next().await {
        match resp.expect("ok").message_response {
            Some(MessageResponse::ListServicesResponse(l)) => {
                listed = l.service.into_iter().map(|s| s.name).collect();
            }
            Some(MessageResponse::FileDescriptorResponse(f)) => files = f.file_descriptor_proto,
            other => panic!("unexpected v1alpha answer {other:?}"),
        }
    }
    (listed, files)
}

/// The server's log so far, once it holds a line containing `wanted`.
async fn log_with(dir: &Path, wanted: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
        if log.contains(wanted) {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "no {wanted:?} in the log:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_log_starts_with_a_line_in_words_and_has_one_json_line_per_call() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Proc::spawn(dir.path(), &[], None);
    let ch = server.channel().await;
    let (_, patient, _, nin) = tokens(dir.path());
    let mut booking = pb::booking_service_client::BookingServiceClient::new(ch);
    booking
        .list_my_bookings(authed(pb::ListMyBookingsRequest::default(), &patient))
        .await
        .expect("patient call");
    let refused = booking
        .find_slots(pb::FindSlotsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let log = log_with(dir.path(), "BookingService/FindSlots").await;

    // Not a terminal: JSON, one object a line.
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let start = lines
        .iter()
        .filter_map(|l| l["message"].as_str())
        .find(|m| m.contains(" serving "))
        .expect("a start line");
    for words in [
        format!(
            "serving booking, consultation, signalling, stats, notify on 127.0.0.1:{}",
            server.port
        ),
        format!(
            "metrics at http://127.0.0.1:{}/metrics",
            server.metrics_port
        ),
        "database: SQLite file".to_owned(),
        "event bus: in-process".to_owned(),
        "development key".to_owned(),
    ] {
        assert!(start.contains(&words), "{words:?} in {start}");
    }
    assert!(!log.contains("Some("), "no Rust Option in the log: {log}");

    let request = |method: &str| {
        lines
            .iter()
            .find(|l| {
                l["target"] == "econsult::request"
                    && l["method"].as_str().is_some_and(|m| m.ends_with(method))
            })
            .unwrap_or_else(|| panic!("a request line for {method}: {log}"))
    };
    let mine = request("/ListMyBookings");
    assert_eq!(mine["status"], "OK", "{mine}");
    assert_eq!(mine["code"], "0", "{mine}");
    assert_eq!(mine["caller"], "patient", "{mine}");
    assert!(mine["duration_ms"].as_f64().is_some(), "{mine}");
    assert_eq!(mine["trace_id"].as_str().map(str::len), Some(32), "{mine}");
    let refused = request("/FindSlots");
    assert_eq!(refused["status"], "UNAUTHENTICATED", "{refused}");
    assert_eq!(refused["caller"], "none", "{refused}");
    assert_eq!(
        lines
            .iter()
            .filter(|l| l["target"] == "econsult::request"
                && l["method"]
                    .as_str()
                    .is_some_and(|m| m.ends_with("/ListMyBookings")))
            .count(),
        1,
        "one line per call"
    );
    assert!(!log.contains(&nin), "no identity number in the log");
}

#[tokio::test]
async fn pretty_logs_into_a_file_carry_no_colour_codes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Proc::spawn(dir.path(), &["--log-format".into(), "pretty".into()], None);
    let _ = server.channel().await;
    let log = log_with(dir.path(), "grpc.health.v1.Health/Check").await;
    assert!(log.contains(" serving booking"), "{log}");
    assert!(!log.contains('\u{1b}'), "no escape codes: {log:?}");
    assert!(!log.trim_start().starts_with('{'), "not JSON: {log}");
}

/// Runs the binary with `args` and returns (success, stdout, stderr).
fn run_cli(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_econsult"))
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run econsult");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn dev_nin_prints_the_asked_number_of_valid_distinct_numbers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ok, out, err) = run_cli(dir.path(), &["dev-nin", "--count", "20", "--age", "40"]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 20, "{out}");
    let distinct: std::collections::HashSet<&str> = lines.iter().copied().collect();
    assert!(distinct.len() > 15, "mostly distinct: {out}");
    for line in lines {
        let id = econsult_runtime::nin::NationalId::parse(line).expect("a valid number");
        assert!(
            id.as_str()[2..4].parse::<u32>().expect("month") > 80,
            "synthetic: {line}"
        );
    }
}

#[test]
fn dev_token_refuses_an_invalid_identity_number_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    // 30 February, otherwise well formed; and the README's old placeholder.
    for nin in ["30028512345", "12345678901"] {
        let (ok, out, err) = run_cli(
            dir.path(),
            &["dev-token", "--role", "patient", "--nin", nin],
        );
        assert!(!ok, "refused: {out}");
        assert!(out.is_empty(), "no token printed: {out}");
        assert!(err.contains("is not a valid identity number"), "{err}");
        assert!(err.contains("econsult dev-nin"), "points to the fix: {err}");
    }
}

#[test]
fn dev_token_puts_a_patients_name_beside_the_parent_relation() {
    use base64::Engine as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let (ok, parent, err) = run_cli(dir.path(), &["dev-nin", "--age", "40"]);
    assert!(ok, "{err}");
    let (ok, child, err) = run_cli(dir.path(), &["dev-nin", "--age", "10"]);
    assert!(ok, "{err}");
    let (ok, token, err) = run_cli(
        dir.path(),
        &[
            "dev-token",
            "--role",
            "patient",
            "--nin",
            parent.trim(),
            "--on-behalf-of",
            child.trim(),
            "--relation",
            "parent",
            "--name",
            "Kari Nordmann",
        ],
    );
    assert!(ok, "{err}");
    let payload = token.trim().split('.').nth(1).expect("a JWT");
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .expect("base64url"),
    )
    .expect("JSON claims");
    assert_eq!(claims["name"], "Kari Nordmann", "{claims}");
    assert_eq!(claims["pid"], parent.trim());
    assert_eq!(claims["represents"][0]["pid"], child.trim());
    let (ok, _, err) = run_cli(dir.path(), &["dev-token", "--role", "ops", "--name", "Ops"]);
    assert!(!ok && err.contains("--name is for"), "{err}");
}

#[tokio::test]
async fn a_patient_token_without_nin_gets_a_fresh_number_the_server_accepts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ok, token, err) = run_cli(dir.path(), &["dev-token", "--role", "patient"]);
    assert!(ok, "{err}");
    let token = token.trim().to_owned();
    assert_eq!(token.lines().count(), 1, "stdout is the token alone");
    let nin = err
        .lines()
        .find_map(|l| l.strip_prefix("patient identity number (synthetic): "))
        .expect("the number is printed on stderr");
    econsult_runtime::nin::NationalId::parse(nin).expect("valid");

    let (ok, given, err) = run_cli(dir.path(), &["dev-nin"]);
    assert!(ok, "{err}");
    let (ok, token_for_given, err) = run_cli(
        dir.path(),
        &["dev-token", "--role", "patient", "--nin", given.trim()],
    );
    assert!(ok, "{err}");

    let server = Proc::spawn(dir.path(), &[], None);
    let ch = server.channel().await;
    for t in [token, token_for_given.trim().to_owned()] {
        let mine = pb::booking_service_client::BookingServiceClient::new(ch.clone())
            .list_my_bookings(authed(pb::ListMyBookingsRequest::default(), &t))
            .await
            .expect("the server accepts the token")
            .into_inner();
        assert!(mine.appointments.is_empty());
    }
}

/// The walk-through's output with what changes from run to run (digits, day and month names,
/// ids) replaced, so that the README's recorded run can be compared with a new one.
fn shape_of(text: &str) -> Vec<String> {
    const NAMES: [&str; 19] = [
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    text.lines()
        .map(|line| {
            line.split(' ')
                .map(|word| {
                    let bare = word.trim_end_matches(',');
                    if bare.len() == 36 && bare.chars().all(|c| c == '-' || c.is_ascii_hexdigit()) {
                        word.replace(bare, "<id>")
                    } else if NAMES.contains(&bare) {
                        word.replace(bare, "<name>")
                    } else {
                        word.replace(|c: char| c.is_ascii_digit(), "0")
                    }
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

#[tokio::test]
async fn the_readme_shows_what_book_a_slot_prints() {
    let readme = include_str!("../../../README.md");
    let start = readme
        .find("```\nEHR: ")
        .expect("README shows book_a_slot's output")
        + 4;
    let shown = &readme[start..start + readme[start..].find("```").expect("end of block")];
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Proc::spawn(dir.path(), &[], None);
    let _ = server.channel().await;
    let mut printed = Vec::new();
    econsult::walkthrough::book_a_slot(
        format!("http://127.0.0.1:{}", server.port),
        dir.path(),
        &mut printed,
    )
    .await
    .expect("the walk-through runs");
    let printed = String::from_utf8(printed).expect("utf-8");
    assert_eq!(shape_of(&printed), shape_of(shown), "printed:\n{printed}");
    // Slots on the next working day of the national calendar, whatever day it is today.
    let next = econsult_calendar::Calendar::norwegian()
        .add_working_days(econsult_calendar::oslo_date(Utc::now()), 1);
    let words = next.format("%A %-d %B %Y at 08:00").to_string();
    assert!(printed.contains(&words), "{words}: {printed}");
    assert!(!printed.contains("Some("), "no Rust formatting: {printed}");
}

async fn scrape(port: u16) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("metrics");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut body = String::new();
    s.read_to_string(&mut body).await.expect("read");
    body
}

#[tokio::test]
async fn sla_metrics_reach_the_prometheus_endpoint() {
    use econsult_proto::consultation::v1 as cpb;
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Proc::spawn(dir.path(), &[], None);
    let ch = server.channel().await;
    let (ehr, patient, _ops, nin) = tokens(dir.path());
    seed(ch.clone(), &ehr, &nin).await;
    // A booking request within five working days, and an e-consultation.
    pb::booking_service_client::BookingServiceClient::new(ch.clone())
        .find_slots(authed(pb::FindSlotsRequest::default(), &patient))
        .await
        .expect("find");
    cpb::consultation_service_client::ConsultationServiceClient::new(ch)
        .start_consultation(authed(
            cpb::StartConsultationRequest {
                category: cpb::Category::EConsultation as i32,
                subject: "Question".into(),
                body: "Is this normal?".into(),
                attachments: vec![],
                urgent: false,
                language: String::new(),
                idempotency_key: key(),
                booking_request_id: String::new(),
            },
            &patient,
        ))
        .await
        .expect("start");
    let wanted = [
        "econsult_booking_requests_total{",
        "econsult_booking_within_target_share{",
        "econsult_consultations_overdue{",
    ];
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let body = scrape(server.metrics_port).await;
        let missing: Vec<&&str> = wanted.iter().filter(|m| !body.contains(**m)).collect();
        if missing.is_empty() {
            assert!(
                body.lines()
                    .any(|l| l.starts_with("econsult_booking_within_target_share{")
                        && l.contains("municipality_number=\"0301\"")
                        && l.ends_with(" 1")),
                "one request, within target: {body}"
            );
            assert!(
                body.lines()
                    .any(|l| l.starts_with("econsult_consultations_overdue{")
                        && l.contains(&format!("org_number=\"{ORG_A}\""))
                        && l.ends_with(" 0")),
                "nothing overdue yet: {body}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "metrics {missing:?} missing from: {body}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The guarantee engine's gauges at the real binary's /metrics: a booking request that nothing
/// meets within five working days counts for its GP, next to the practice's alert threshold
/// (the default policy's 3), as the rule UnmetBookingRequests reads them.
#[tokio::test]
async fn unmet_requests_per_gp_reach_the_prometheus_endpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Proc::spawn(dir.path(), &[], None);
    let ch = server.channel().await;
    let (ehr, patient, _ops, nin) = tokens(dir.path());
    seed_list(ch.clone(), &ehr, &nin).await;
    let r = pb::booking_service_client::BookingServiceClient::new(ch)
        .find_slots(authed(pb::FindSlotsRequest::default(), &patient))
        .await
        .expect("find")
        .into_inner();
    assert!(!r.within_five_working_days, "no slots at all");
    let deadline = Instant::now() + Duration::from_secs(40);
    let line = |body: &str, name: &str, value: &str| {
        body.lines().any(|l| {
            l.starts_with(&format!("{name}{{"))
                && l.contains(&format!("org_number=\"{ORG_A}\""))
                && (name != "econsult_booking_unmet_requests" || l.contains("gp_id=\"gp-1\""))
                && l.ends_with(&format!(" {value}"))
        })
    };
    loop {
        let body = scrape(server.metrics_port).await;
        if line(&body, "econsult_booking_unmet_requests", "1")
            && line(&body, "econsult_booking_unmet_alert_threshold", "3")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "unmet gauges missing from: {body}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A port in use is the error the server reports, before anything starts: not a background task
/// cancelled on the way out (issue 27: "outbox relay failed … task was cancelled").
#[test]
fn a_busy_port_is_reported_as_such_and_nothing_starts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let addr = taken.local_addr().expect("addr").to_string();
    let (ok, _, err) = run_cli(
        dir.path(),
        &["serve", "--listen", &addr, "--log-format", "json"],
    );
    assert!(!ok, "must not start on a busy port: {err}");
    assert!(
        err.contains(&format!("bind {addr}")),
        "names the port: {err}"
    );
    assert!(err.contains("another server"), "says what to check: {err}");
    assert!(!err.contains("relay"), "no misleading relay error: {err}");
    assert!(
        !dir.path().join("econsult.db").exists(),
        "nothing was started (no database created)"
    );
    drop(taken);
}

/// The sealer logs the chain's head; `econsult audit verify --anchors <log>` accepts the
/// untouched database and refuses one whose chain was recomputed after a change, which the
/// walk alone passes.
#[tokio::test]
async fn audit_verify_checks_the_chain_against_the_heads_in_the_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Proc::spawn(dir.path(), &[], None);
    let ch = server.channel().await;
    let (ehr, _, _, nin) = tokens(dir.path());
    seed(ch, &ehr, &nin).await;
    log_with(dir.path(), "audit chain head").await;
    let killed = Command::new("kill")
        .arg("-TERM")
        .arg(server.child.id().to_string())
        .status()
        .expect("kill");
    assert!(killed.success());
    assert!(server.wait_exit(Duration::from_secs(15)).success());

    let log = dir.path().join("server.log");
    let verify = |anchors: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_econsult"));
        cmd.arg("--data-dir")
            .arg(dir.path())
            .args(["audit", "verify"]);
        if anchors {
            cmd.arg("--anchors").arg(&log);
        }
        let out = cmd.output().expect("run audit verify");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = verify(true);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("logged heads agree"), "{out}");

    let db = econsult_runtime::db::Db::connect(&format!(
        "sqlite://{}",
        dir.path().join("econsult.db").display()
    ))
    .await
    .expect("db");
    let first: i64 = sqlx::query_scalar("SELECT MIN(id) FROM audit_log")
        .fetch_one(db.read())
        .await
        .expect("a row");
    common::rewrite_and_rechain(&db, first).await;
    db.close().await;
    let (code, out) = verify(false);
    assert_eq!(
        code,
        Some(0),
        "the walk alone passes a recomputed chain: {out}"
    );
    let (code, out) = verify(true);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("rewritten"), "{out}");
}
