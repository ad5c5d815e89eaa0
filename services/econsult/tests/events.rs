//! Events carry no identity numbers (issue 21, "personal data beyond the protected tables"):
//! after a booking, a waitlist offer, an e-consultation, a video session and a fullmakt, no
//! outbox row (payload or `route_key`) and no entry of the Redis stream holds any identity
//! number of the test; the consumers that need the person still find them (the EHR's
//! WatchBookings with the number filled in from the booking tables, notify's queued messages,
//! the patient's own consultation stream). On SQLite and on PostgreSQL + Redis.

mod common;

use chrono::{DateTime, Utc};
use common::*;
use econsult_proto::booking::v1 as bpb;
use econsult_proto::consultation::v1 as cpb;
use econsult_proto::proxy::v1 as ppb;
use econsult_proto::proxy::v1::proxy_service_client::ProxyServiceClient;
use econsult_proto::signalling::v1 as spb;
use econsult_proto::signalling::v1::signalling_service_client::SignallingServiceClient;
use std::time::{Duration, Instant};
use tokio_stream::StreamExt as _;

const WAIT: Duration = Duration::from_secs(20);
const GP_SEED: u64 = 21;

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("time")
        .with_timezone(&Utc)
}

/// Waits (real time, up to [`WAIT`]) until `f` gives `Some`.
async fn until<T, F: Future<Output = Option<T>>>(what: &str, mut f: impl FnMut() -> F) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn book(app: &TestApp, nin: &str, slot_id: &str) -> bpb::Appointment {
    app.booking()
        .await
        .book(authed(
            bpb::BookRequest {
                target: Some(bpb::book_request::Target::SlotId(slot_id.into())),
                reason: "vondt i halsen".into(),
                request_id: String::new(),
                idempotency_key: key(),
            },
            &app.patient_token(nin),
        ))
        .await
        .expect("book")
        .into_inner()
}

/// Every string of the test's Redis namespace: stream entries (ids, fields and values) and
/// plain values; the number of stream entries.
async fn redis_strings(redis_url: &str, namespace: &str) -> (Vec<String>, usize) {
    let client = redis::Client::open(redis_url).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{namespace}:*"))
        .query_async(&mut conn)
        .await
        .expect("keys");
    let (mut out, mut entries) = (Vec::new(), 0);
    for k in keys {
        let kind: String = redis::cmd("TYPE")
            .arg(&k)
            .query_async(&mut conn)
            .await
            .expect("type");
        out.push(k.clone());
        match kind.as_str() {
            "stream" => {
                let range: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
                    .arg(&k)
                    .arg("-")
                    .arg("+")
                    .query_async(&mut conn)
                    .await
                    .expect("xrange");
                entries += range.len();
                for (id, fields) in range {
                    out.push(id);
                    out.extend(fields);
                }
            }
            "string" => {
                let v: String = redis::cmd("GET")
                    .arg(&k)
                    .query_async(&mut conn)
                    .await
                    .expect("get");
                out.push(v);
            }
            "hash" => {
                let v: Vec<String> = redis::cmd("HGETALL")
                    .arg(&k)
                    .query_async(&mut conn)
                    .await
                    .expect("hgetall");
                out.extend(v);
            }
            _ => {}
        }
    }
    (out, entries)
}

async fn events_carry_no_identity_numbers_and_consumers_still_find_the_patient(env: Env) {
    let app = TestApp::start(env).await;
    let db = app.platform().db.clone();
    let nins = seed_gp(&app, ORG_A, "gp-events", GP_SEED, 3).await;
    let giver = econsult_runtime::nin::synthetic_born(1970, 5, 5, 1).expect("giver");
    let holder = econsult_runtime::nin::synthetic_born(1975, 6, 6, 2).expect("holder");
    let mut all_nins = nins.clone();
    all_nins.push(giver.as_str().to_owned());
    all_nins.push(holder.as_str().to_owned());
    for n in &all_nins {
        assert_eq!(n.len(), 11, "{n}");
    }
    let video_start = at("2026-03-03T09:00:00Z");
    let slots = publish(
        &app,
        ORG_A,
        "gp-events",
        &[video_start],
        bpb::Modality::Video,
    )
    .await;
    let in_person = publish(
        &app,
        ORG_A,
        "gp-events",
        &[at("2026-03-04T09:00:00Z")],
        bpb::Modality::InPerson,
    )
    .await;

    // A booking (video, for the session below).
    let video = book(&app, &nins[0], &slots[0].slot_id).await;
    // A waitlist offer: nins[1] cancels, nins[2] is first in line.
    let first = book(&app, &nins[1], &in_person[0].slot_id).await;
    let mut booking = app.booking().await;
    booking
        .join_waitlist(authed(
            bpb::JoinWaitlistRequest {
                latest_date: "2026-03-10".into(),
                modality: 0,
                idempotency_key: key(),
                request_id: String::new(),
            },
            &app.patient_token(&nins[2]),
        ))
        .await
        .expect("join waitlist");
    booking
        .cancel(authed(
            bpb::CancelRequest {
                appointment_id: first.appointment_id.clone(),
                idempotency_key: key(),
            },
            &app.patient_token(&nins[1]),
        ))
        .await
        .expect("cancel");
    // An e-consultation, answered by the practice.
    let mut consultation = app.consultation().await;
    let thread = consultation
        .start_consultation(authed(
            cpb::StartConsultationRequest {
                category: cpb::Category::EConsultation as i32,
                subject: "Utslett".into(),
                body: "Utslett på armen i en uke".into(),
                attachments: vec![],
                urgent: false,
                language: String::new(),
                idempotency_key: key(),
                booking_request_id: String::new(),
            },
            &app.patient_token(&nins[0]),
        ))
        .await
        .expect("start consultation")
        .into_inner()
        .thread
        .expect("thread")
        .thread_id;
    consultation
        .reply(authed(
            cpb::ReplyRequest {
                thread_id: thread.clone(),
                body: "Smør med krem to ganger daglig".into(),
                attachments: vec![],
                ask_patient: false,
                clinician_hpr_number: format!("{}", 1_000_000 + GP_SEED),
                idempotency_key: key(),
            },
            &app.ehr_token(ORG_A),
        ))
        .await
        .expect("reply");
    // A fullmakt.
    ProxyServiceClient::new(app.channel().await)
        .grant_fullmakt(authed(
            ppb::GrantFullmaktRequest {
                holder_nin: holder.as_str().into(),
                scope: ppb::FullmaktScope::Both as i32,
                end_date: "2027-01-01".into(),
                idempotency_key: key(),
            },
            &app.patient_token(giver.as_str()),
        ))
        .await
        .expect("grant fullmakt");
    // Notify finds the patients by appointment, waitlist entry and thread (before the clock
    // moves a day on: notify passes over events older than a day).
    for (nin, kind) in [
        (&nins[0], "booked"),
        (&nins[2], "waitlist_offer"),
        (&nins[0], "consultation_reply"),
    ] {
        until(&format!("a {kind} message to the patient"), || {
            let db = db.clone();
            async move {
                let n: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM notify_messages WHERE patient_nin = $1 AND kind = $2",
                )
                .bind(nin)
                .bind(kind)
                .fetch_one(db.read())
                .await
                .expect("messages");
                (n > 0).then_some(())
            }
        })
        .await;
    }

    // A video session: the patient joins, the GP ends it.
    app.clock.set(video_start - chrono::Duration::minutes(5));
    let mut signalling = SignallingServiceClient::new(app.channel().await);
    signalling
        .join_session(authed(
            spb::JoinSessionRequest {
                appointment_id: video.appointment_id.clone(),
            },
            &app.patient_token(&nins[0]),
        ))
        .await
        .expect("patient joins");
    signalling
        .end_session(authed(
            spb::EndSessionRequest {
                appointment_id: video.appointment_id.clone(),
                held: true,
            },
            &app.clinician_token(&format!("{}", 1_000_000 + GP_SEED), ORG_A),
        ))
        .await
        .expect("end session");

    // Everything relayed (copied to Redis on that backend).
    until("the relay to publish every event", || {
        let db = db.clone();
        async move {
            let left: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE published_at IS NULL")
                    .fetch_one(db.read())
                    .await
                    .expect("count");
            (left == 0).then_some(())
        }
    })
    .await;

    // No identity number in any outbox row.
    let rows: Vec<(String, String, String)> =
        sqlx::query_as("SELECT topic, route_key, payload FROM outbox ORDER BY id")
            .fetch_all(db.read())
            .await
            .expect("outbox");
    let topics: Vec<&str> = rows.iter().map(|(t, _, _)| t.as_str()).collect();
    for want in [
        "booking.created",
        "booking.cancelled",
        "booking.waitlist_offered",
        "consultation.started",
        "consultation.answered",
        "proxy.fullmakt_granted",
        "signalling.session_ended",
    ] {
        assert!(topics.contains(&want), "no {want} event in {topics:?}");
    }
    for (topic, route_key, payload) in &rows {
        for n in &all_nins {
            assert!(
                !route_key.contains(n.as_str()) && !payload.contains(n.as_str()),
                "{topic} holds an identity number: route_key {route_key}, payload {payload}"
            );
        }
    }
    // The patient's events are routed by their pseudonymous key.
    let routed = |nin: &str| {
        let key = app.platform().pseudonyms.key_for(nin);
        rows.iter()
            .filter(|(_, r, _)| *r == key)
            .map(|(t, _, _)| t.clone())
            .collect::<Vec<_>>()
    };
    let of_patient = routed(&nins[0]);
    for want in [
        "booking.created",
        "consultation.answered",
        "signalling.session_ended",
    ] {
        assert!(of_patient.iter().any(|t| t == want), "{of_patient:?}");
    }
    assert!(
        routed(&nins[2])
            .iter()
            .any(|t| t == "booking.waitlist_offered")
    );
    assert!(
        routed(giver.as_str())
            .iter()
            .any(|t| t == "proxy.fullmakt_granted")
    );

    // Nor in Redis (PostgreSQL + Redis).
    if let Some(url) = app.env.redis_url.clone() {
        let (strings, entries) = redis_strings(&url, &app.namespace).await;
        assert!(entries >= rows.len(), "{entries} stream entries");
        for s in &strings {
            for n in &all_nins {
                assert!(
                    !s.contains(n.as_str()),
                    "Redis holds an identity number: {s}"
                );
            }
        }
    }

    // The EHR's WatchBookings gets the patient's number, filled in from the booking tables.
    let mut watch = app
        .booking()
        .await
        .watch_bookings(authed(
            bpb::WatchBookingsRequest { after_cursor: 0 },
            &app.ehr_token(ORG_A),
        ))
        .await
        .expect("watch")
        .into_inner();
    let mut seen: Vec<(String, String)> = Vec::new();
    while seen.len() < 3 {
        let change = tokio::time::timeout(WAIT, watch.next())
            .await
            .expect("a change in time")
            .expect("stream open")
            .expect("change");
        if let Some(a) = change.appointment {
            assert_eq!(a.reason, "vondt i halsen");
            seen.push((a.appointment_id, a.patient_nin));
        }
    }
    assert!(
        seen.contains(&(video.appointment_id.clone(), nins[0].clone())),
        "{seen:?}"
    );
    assert!(
        seen.contains(&(first.appointment_id.clone(), nins[1].clone())),
        "{seen:?}"
    );

    // The patient's own consultation stream (routed by the pseudonymous key) has the thread;
    // another patient's has nothing.
    let mut mine = app
        .consultation()
        .await
        .subscribe(authed(
            cpb::SubscribeRequest { after_cursor: 0 },
            &app.patient_token(&nins[0]),
        ))
        .await
        .expect("subscribe")
        .into_inner();
    let change = tokio::time::timeout(WAIT, mine.next())
        .await
        .expect("a change in time")
        .expect("stream open")
        .expect("change");
    assert_eq!(change.thread.expect("thread").thread_id, thread);
    let mut theirs = app
        .consultation()
        .await
        .subscribe(authed(
            cpb::SubscribeRequest { after_cursor: 0 },
            &app.patient_token(&nins[1]),
        ))
        .await
        .expect("subscribe")
        .into_inner();
    assert!(
        tokio::time::timeout(Duration::from_millis(800), theirs.next())
            .await
            .is_err(),
        "another patient's stream stays empty"
    );
    app.shutdown().await;
}

on_both_backends!(events_carry_no_identity_numbers_and_consumers_still_find_the_patient);
