//! Text e-consultations through the real gRPC server, on SQLite and on PostgreSQL + Redis.

mod common;

use chrono::{DateTime, Duration, TimeZone as _, Utc};
use common::*;
use econsult_proto::booking::v1 as bpb;
use econsult_proto::consultation::v1 as pb;
use sha2::Digest as _;
use std::collections::BTreeMap;
use tokio_stream::StreamExt as _;
use tonic::Code;

const WAIT: std::time::Duration = std::time::Duration::from_secs(20);

fn oslo(y: i32, m: u32, d: u32, h: u32, min: u32) -> DateTime<Utc> {
    chrono_tz::Europe::Oslo
        .with_ymd_and_hms(y, m, d, h, min, 0)
        .single()
        .expect("valid Oslo time")
        .with_timezone(&Utc)
}

fn start_req(body: &str) -> pb::StartConsultationRequest {
    pb::StartConsultationRequest {
        category: pb::Category::EConsultation as i32,
        subject: "Rash".into(),
        body: body.into(),
        attachments: vec![],
        urgent: false,
        language: String::new(),
        idempotency_key: key(),
        booking_request_id: String::new(),
    }
}

async fn start(app: &TestApp, nin: &str, body: &str) -> pb::StartConsultationResponse {
    app.consultation()
        .await
        .start_consultation(authed(start_req(body), &app.patient_token(nin)))
        .await
        .expect("start consultation")
        .into_inner()
}

async fn send(
    app: &TestApp,
    nin: &str,
    thread: &str,
    body: &str,
) -> Result<pb::Message, tonic::Status> {
    app.consultation()
        .await
        .send_message(authed(
            pb::SendMessageRequest {
                thread_id: thread.into(),
                body: body.into(),
                attachments: vec![],
                idempotency_key: key(),
            },
            &app.patient_token(nin),
        ))
        .await
        .map(|r| r.into_inner().message.expect("message"))
}

async fn reply(
    app: &TestApp,
    org: &str,
    thread: &str,
    body: &str,
    ask: bool,
) -> Result<pb::SendMessageResponse, tonic::Status> {
    app.consultation()
        .await
        .reply(authed(
            pb::ReplyRequest {
                thread_id: thread.into(),
                body: body.into(),
                attachments: vec![],
                ask_patient: ask,
                clinician_hpr_number: "1000001".into(),
                idempotency_key: key(),
            },
            &app.ehr_token(org),
        ))
        .await
        .map(|r| r.into_inner())
}

async fn get(
    app: &TestApp,
    token: &str,
    thread: &str,
) -> Result<pb::GetThreadResponse, tonic::Status> {
    app.consultation()
        .await
        .get_thread(authed(
            pb::GetThreadRequest {
                thread_id: thread.into(),
                after_seq: 0,
                page_size: 200,
            },
            token,
        ))
        .await
        .map(|r| r.into_inner())
}

fn state(t: &Option<pb::Thread>) -> i32 {
    t.as_ref().expect("thread").state
}

async fn a_consultation_goes_from_question_to_closed_answer(env: Env) {
    let app = TestApp::start(env).await;
    let nins = seed_gp(&app, ORG_A, "gp-1", 1, 1).await;
    let ehr = app.ehr_token(ORG_A);
    let mut c = app.consultation().await;

    let started = start(&app, &nins[0], "I have had a rash for a week").await;
    let thread = started.thread.clone().expect("thread");
    assert_eq!(thread.state, pb::ThreadState::Submitted as i32);
    assert_eq!(thread.gp_id, "gp-1");
    assert_eq!(
        thread.patient_nin, "",
        "patients do not get their own number echoed"
    );
    assert_eq!(started.message.as_ref().map(|m| m.seq), Some(1));
    let id = thread.thread_id.clone();

    // Closing before anything was answered is not a valid transition.
    let err = c
        .close_consultation(authed(
            pb::CloseConsultationRequest {
                thread_id: id.clone(),
                outcome: "answered".into(),
                tariff_code: String::new(),
                idempotency_key: key(),
            },
            &ehr,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("submitted"), "{}", err.message());

    let inbox = c
        .list_inbox(authed(pb::ListInboxRequest::default(), &ehr))
        .await
        .expect("inbox")
        .into_inner();
    assert_eq!(inbox.threads.len(), 1);
    assert_eq!(inbox.threads[0].patient_nin, nins[0]);

    let claimed = c
        .claim_thread(authed(
            pb::ClaimThreadRequest {
                thread_id: id.clone(),
                clinician_hpr_number: "1000001".into(),
                idempotency_key: key(),
            },
            &ehr,
        ))
        .await
        .expect("claim")
        .into_inner();
    assert_eq!(state(&claimed.thread), pb::ThreadState::InReview as i32);
    assert_eq!(
        claimed
            .thread
            .as_ref()
            .map(|t| t.assigned_hpr_number.as_str()),
        Some("1000001")
    );

    let asked = reply(&app, ORG_A, &id, "Does it itch?", true)
        .await
        .expect("ask");
    assert_eq!(
        state(&asked.thread),
        pb::ThreadState::AwaitingPatient as i32
    );
    assert!(
        asked
            .thread
            .as_ref()
            .and_then(|t| t.first_response_at)
            .is_some()
    );
    let m = send(&app, &nins[0], &id, "Yes, at night")
        .await
        .expect("patient answers");
    assert_eq!(m.seq, 3);
    let answered = reply(&app, ORG_A, &id, "Use the cream twice a day", false)
        .await
        .expect("answer");
    assert_eq!(state(&answered.thread), pb::ThreadState::Answered as i32);
    // An answered thread takes no further patient messages.
    let err = send(&app, &nins[0], &id, "thanks").await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    let read = c
        .mark_read(authed(
            pb::MarkReadRequest {
                thread_id: id.clone(),
                up_to_seq: 4,
            },
            &app.patient_token(&nins[0]),
        ))
        .await
        .expect("read")
        .into_inner();
    assert_eq!(read.thread.as_ref().map(|t| t.patient_read_seq), Some(4));

    let closed = c
        .close_consultation(authed(
            pb::CloseConsultationRequest {
                thread_id: id.clone(),
                outcome: "answered".into(),
                tariff_code: String::new(),
                idempotency_key: key(),
            },
            &ehr,
        ))
        .await
        .expect("close")
        .into_inner();
    let t = closed.thread.expect("thread");
    assert_eq!(t.state, pb::ThreadState::Closed as i32);
    assert_eq!(t.tariff_code, "2ae");

    // Kept after closing, readable, and staff reads are in the access log.
    let full = get(&app, &ehr, &id).await.expect("practice reads");
    let seqs: Vec<i64> = full.messages.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4]);
    let db = &app.platform().db;
    let logged: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM audit_log WHERE action = '/econsult.consultation.v1.ConsultationService/GetThread' AND patient_nin = $1",
    )
    .bind(&nins[0])
    .fetch_one(db.read())
    .await
    .expect("audit count");
    assert_eq!(logged, 1);
    // The closing event for stats carries category, tariff and response time.
    let payload: String =
        sqlx::query_scalar("SELECT payload FROM outbox WHERE topic = 'consultation.closed'")
            .fetch_one(db.read())
            .await
            .expect("closed event");
    let v: serde_json::Value = serde_json::from_str(&payload).expect("json");
    assert_eq!(v["tariff_code"], "2ae");
    assert_eq!(v["category"], "e_consultation");
    assert_eq!(v["response_working_days"], 0);
    // Threads are never deleted, not even by hand.
    assert!(
        sqlx::query("DELETE FROM consultation_threads")
            .execute(db.read())
            .await
            .is_err()
    );
    app.shutdown().await;
}

async fn concurrent_replies_keep_a_gap_free_order(env: Env) {
    let app = TestApp::start(env).await;
    let nins = seed_gp(&app, ORG_A, "gp-1", 2, 1).await;
    let id = start(&app, &nins[0], "first")
        .await
        .thread
        .expect("thread")
        .thread_id;
    // Practice replies asking for more and patient messages, all at once.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..12 {
        let addr = app.addr;
        let (id, ehr, pat) = (
            id.clone(),
            app.ehr_token(ORG_A),
            app.patient_token(&nins[0]),
        );
        tasks.spawn(async move {
            let mut c = pb::consultation_service_client::ConsultationServiceClient::new(
                channel_to(addr).await,
            );
            if i % 2 == 0 {
                c.reply(authed(
                    pb::ReplyRequest {
                        thread_id: id,
                        body: format!("practice {i}"),
                        attachments: vec![],
                        ask_patient: true,
                        clinician_hpr_number: "1000002".into(),
                        idempotency_key: key(),
                    },
                    &ehr,
                ))
                .await
                .map(|r| r.into_inner().message.expect("m").seq)
            } else {
                c.send_message(authed(
                    pb::SendMessageRequest {
                        thread_id: id,
                        body: format!("patient {i}"),
                        attachments: vec![],
                        idempotency_key: key(),
                    },
                    &pat,
                ))
                .await
                .map(|r| r.into_inner().message.expect("m").seq)
            }
        });
    }
    let mut seqs = Vec::new();
    while let Some(r) = tasks.join_next().await {
        seqs.push(r.expect("join").expect("every send succeeds"));
    }
    seqs.sort();
    assert_eq!(
        seqs,
        (2..=13).collect::<Vec<i64>>(),
        "each send got its own seq"
    );
    let full = get(&app, &app.patient_token(&nins[0]), &id)
        .await
        .expect("get");
    let stored: Vec<i64> = full.messages.iter().map(|m| m.seq).collect();
    assert_eq!(
        stored,
        (1..=13).collect::<Vec<i64>>(),
        "gap-free, no duplicates"
    );
    assert_eq!(full.thread.expect("thread").message_count, 13);
    app.shutdown().await;
}

async fn a_retried_send_returns_the_same_message(env: Env) {
    let app = TestApp::start(env).await;
    let nins = seed_gp(&app, ORG_A, "gp-1", 3, 1).await;
    let token = app.patient_token(&nins[0]);
    let mut c = app.consultation().await;
    let mut req = start_req("question");
    let first = c
        .start_consultation(authed(req.clone(), &token))
        .await
        .expect("start")
        .into_inner();
    let again = c
        .start_consultation(authed(req.clone(), &token))
        .await
        .expect("retry")
        .into_inner();
    assert_eq!(
        first.thread.as_ref().map(|t| &t.thread_id),
        again.thread.as_ref().map(|t| &t.thread_id)
    );
    let id = first.thread.expect("thread").thread_id;

    let send = pb::SendMessageRequest {
        thread_id: id.clone(),
        body: "more detail".into(),
        attachments: vec![],
        idempotency_key: key(),
    };
    let a = c
        .send_message(authed(send.clone(), &token))
        .await
        .expect("send")
        .into_inner();
    let b = c
        .send_message(authed(send.clone(), &token))
        .await
        .expect("retry")
        .into_inner();
    assert_eq!(a.message, b.message, "a retry returns the first message");
    let threads = c
        .list_threads(authed(pb::ListThreadsRequest::default(), &token))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(
        threads.threads.len(),
        1,
        "one thread despite the retried start"
    );
    assert_eq!(
        threads.threads[0].message_count, 2,
        "one message despite the retried send"
    );
    // Same key, different content: refused.
    let mut other = send.clone();
    other.body = "something else".into();
    let err = c.send_message(authed(other, &token)).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    req.idempotency_key = String::new();
    let err = c.start_consultation(authed(req, &token)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    app.shutdown().await;
}

async fn replays_return_the_first_answer_after_the_thread_changed(env: Env) {
    let app = TestApp::start(env).await;
    let nins = seed_gp(&app, ORG_A, "gp-1", 3, 1).await;
    let token = app.patient_token(&nins[0]);
    let ehr = app.ehr_token(ORG_A);
    let mut c = app.consultation().await;

    let start = start_req("question");
    let started = c
        .start_consultation(authed(start.clone(), &token))
        .await
        .expect("start")
        .into_inner();
    let id = started.thread.clone().expect("thread").thread_id;

    let send = pb::SendMessageRequest {
        thread_id: id.clone(),
        body: "more detail".into(),
        attachments: vec![],
        idempotency_key: key(),
    };
    let sent = c
        .send_message(authed(send.clone(), &token))
        .await
        .expect("send")
        .into_inner();

    let reply_req = pb::ReplyRequest {
        thread_id: id.clone(),
        body: "please send a photo".into(),
        attachments: vec![],
        ask_patient: true,
        clinician_hpr_number: "1000001".into(),
        idempotency_key: key(),
    };
    let replied = c
        .reply(authed(reply_req.clone(), &ehr))
        .await
        .expect("reply")
        .into_inner();

    // The thread moves on: the patient answers, the practice answers and closes it.
    send_ok(&app, &nins[0], &id, "here it is").await;
    reply(&app, ORG_A, &id, "looks harmless", false)
        .await
        .expect("second reply");
    c.close_consultation(authed(
        pb::CloseConsultationRequest {
            thread_id: id.clone(),
            outcome: "answered".into(),
            tariff_code: String::new(),
            idempotency_key: key(),
        },
        &ehr,
    ))
    .await
    .expect("close");

    let started_again = c
        .start_consultation(authed(start, &token))
        .await
        .expect("retried start")
        .into_inner();
    assert_eq!(
        started_again, started,
        "a retried start returns the first answer"
    );
    let sent_again = c
        .send_message(authed(send, &token))
        .await
        .expect("retried send")
        .into_inner();
    assert_eq!(sent_again, sent, "a retried send returns the first answer");
    let replied_again = c
        .reply(authed(reply_req, &ehr))
        .await
        .expect("retried reply")
        .into_inner();
    assert_eq!(
        replied_again, replied,
        "a retried reply returns the first answer"
    );
    app.shutdown().await;
}

async fn send_ok(app: &TestApp, nin: &str, thread: &str, body: &str) {
    send(app, nin, thread, body).await.expect("send");
}

async fn next_change(s: &mut tonic::Streaming<pb::ThreadChange>) -> pb::ThreadChange {
    tokio::time::timeout(WAIT, s.next())
        .await
        .expect("change within the deadline")
        .expect("stream open")
        .expect("change")
}

async fn a_subscriber_resumes_from_its_cursor_and_sees_every_message_once(env: Env) {
    let app = TestApp::start(env).await;
    let nins = seed_gp(&app, ORG_A, "gp-1", 4, 2).await;
    let token = app.patient_token(&nins[0]);
    let mut c = app.consultation().await;
    let id = start(&app, &nins[0], "m1")
        .await
        .thread
        .expect("thread")
        .thread_id;
    // Another patient's thread must never show up.
    start(&app, &nins[1], "not yours").await;

    let mut seen: BTreeMap<i64, usize> = BTreeMap::new();
    let mut stream = c
        .subscribe(authed(pb::SubscribeRequest { after_cursor: 0 }, &token))
        .await
        .expect("subscribe")
        .into_inner();
    let mut cursor = 0;
    // STARTED and MESSAGE(1) so far.
    while seen.is_empty() {
        let ch = next_change(&mut stream).await;
        assert_eq!(
            ch.thread.as_ref().map(|t| t.thread_id.as_str()),
            Some(id.as_str())
        );
        assert!(ch.cursor > cursor, "cursors increase");
        cursor = ch.cursor;
        if let Some(m) = ch.message {
            *seen.entry(m.seq).or_default() += 1;
        }
    }
    reply(&app, ORG_A, &id, "m2 from the GP", true)
        .await
        .expect("reply");
    while !seen.contains_key(&2) {
        let ch = next_change(&mut stream).await;
        cursor = ch.cursor;
        if let Some(m) = ch.message {
            *seen.entry(m.seq).or_default() += 1;
        }
    }
    drop(stream);
    // While disconnected: three more messages.
    send(&app, &nins[0], &id, "m3").await.expect("m3");
    reply(&app, ORG_A, &id, "m4", true).await.expect("m4");
    send(&app, &nins[0], &id, "m5").await.expect("m5");
    let mut stream = c
        .subscribe(authed(
            pb::SubscribeRequest {
                after_cursor: cursor,
            },
            &token,
        ))
        .await
        .expect("resubscribe")
        .into_inner();
    while seen.len() < 5 {
        let ch = next_change(&mut stream).await;
        assert!(ch.cursor > cursor, "nothing before the cursor is repeated");
        cursor = ch.cursor;
        if let Some(m) = ch.message {
            *seen.entry(m.seq).or_default() += 1;
        }
    }
    // Nothing more arrives (no duplicates after the last message).
    let extra = tokio::time::timeout(std::time::Duration::from_millis(1500), stream.next()).await;
    if let Ok(Some(Ok(ch))) = extra {
        assert!(ch.message.is_none(), "unexpected extra message {ch:?}");
    }
    assert_eq!(
        seen,
        (1..=5).map(|s| (s, 1)).collect::<BTreeMap<i64, usize>>()
    );
    app.shutdown().await;
}

/// A stream catching up reads a page of events at once (one read of the threads, one of the
/// messages with their attachments): each change still carries its own thread, message and
/// attachments, in cursor order, on the patient's Subscribe and the practice's WatchInbox.
async fn a_catch_up_page_gives_each_change_its_own_thread_message_and_attachments(env: Env) {
    let app = TestApp::start(env).await;
    let nins = seed_gp(&app, ORG_A, "gp-1", 6, 1).await;
    let token = app.patient_token(&nins[0]);
    let mut c = app.consultation().await;
    let file = |name: &str| pb::NewAttachment {
        file_name: name.into(),
        content_type: "image/png".into(),
        content: png(100),
    };
    let mut first = start_req("first in A");
    first.attachments = vec![file("a1.png")];
    let a = c
        .start_consultation(authed(first, &token))
        .await
        .expect("start A")
        .into_inner();
    let b = start(&app, &nins[0], "first in B").await;
    let (a_id, b_id) = (
        a.thread.expect("thread").thread_id,
        b.thread.expect("thread").thread_id,
    );
    let second = c
        .send_message(authed(
            pb::SendMessageRequest {
                thread_id: a_id.clone(),
                body: "second in A".into(),
                attachments: vec![file("a2.png"), file("a3.png")],
                idempotency_key: key(),
            },
            &token,
        ))
        .await
        .expect("send A")
        .into_inner()
        .message
        .expect("message");
    let third = send(&app, &nins[0], &b_id, "second in B")
        .await
        .expect("send B");
    // message id → (thread, body, attachment names), as answered when sent.
    let expected: BTreeMap<String, (String, String, Vec<String>)> = [
        a.message.expect("message"),
        b.message.expect("message"),
        second,
        third,
    ]
    .into_iter()
    .map(|m| {
        let names = m.attachments.iter().map(|x| x.file_name.clone()).collect();
        (m.message_id, (m.thread_id, m.body, names))
    })
    .collect();
    assert_eq!(expected.len(), 4);
    let check = |ch: &pb::ThreadChange,
                 got: &mut BTreeMap<String, (String, String, Vec<String>)>| {
        let thread = ch.thread.as_ref().expect("every change has its thread");
        if let Some(m) = &ch.message {
            assert_eq!(
                m.thread_id, thread.thread_id,
                "the change's thread is its message's"
            );
            let names = m.attachments.iter().map(|x| x.file_name.clone()).collect();
            assert!(
                got.insert(
                    m.message_id.clone(),
                    (m.thread_id.clone(), m.body.clone(), names)
                )
                .is_none(),
                "message {} twice",
                m.message_id
            );
        }
    };
    let mut patient = c
        .subscribe(authed(pb::SubscribeRequest { after_cursor: 0 }, &token))
        .await
        .expect("subscribe")
        .into_inner();
    let mut practice = c
        .watch_inbox(authed(
            pb::WatchInboxRequest { after_cursor: 0 },
            &app.ehr_token(ORG_A),
        ))
        .await
        .expect("watch inbox")
        .into_inner();
    for (who, stream) in [("Subscribe", &mut patient), ("WatchInbox", &mut practice)] {
        let (mut got, mut cursor) = (BTreeMap::new(), 0);
        while got.len() < expected.len() {
            let ch = next_change(stream).await;
            assert!(ch.cursor > cursor, "{who}: cursors increase");
            cursor = ch.cursor;
            check(&ch, &mut got);
        }
        assert_eq!(got, expected, "{who}");
    }
    app.shutdown().await;
}

/// A change stream whose client stops reading falls behind the process's event feed (here: more
/// than one batch, the feed's capacity in this test) and catches up from the database: when the
/// client reads again it gets every message once, in order, none missing.
async fn a_stream_that_fell_behind_the_feed_catches_up_without_gaps(env: Env) {
    let tweak: Tweak = std::sync::Arc::new(|c| {
        c.rate_limits = econsult_runtime::ratelimit::RateLimits::unlimited();
        c.consultation_feed_capacity = 1;
    });
    let app = TestApp::start_configured(env, monday_0800(), Some(tweak)).await;
    let nins = seed_gp(&app, ORG_A, "gp-1", 5, 1).await;
    let token = app.patient_token(&nins[0]);
    let id = start(&app, &nins[0], "m1")
        .await
        .thread
        .expect("thread")
        .thread_id;
    // A connection with a 1 KiB flow-control window: the server can send only a few changes
    // ahead of a client that does not read, so the stream's task blocks soon.
    let narrow = tonic::transport::Endpoint::from_shared(format!("http://{}", app.addr))
        .expect("endpoint")
        .initial_stream_window_size(Some(1024))
        .initial_connection_window_size(Some(1024))
        .connect()
        .await
        .expect("connect");
    let mut stream = pb::consultation_service_client::ConsultationServiceClient::new(narrow)
        .subscribe(authed(pb::SubscribeRequest { after_cursor: 0 }, &token))
        .await
        .expect("subscribe")
        .into_inner();
    let mut seen: Vec<i64> = Vec::new();
    let mut cursor = 0;
    while seen.is_empty() {
        let ch = next_change(&mut stream).await;
        assert!(ch.cursor > cursor, "cursors increase");
        cursor = ch.cursor;
        seen.extend(ch.message.map(|m| m.seq));
    }
    // Not reading: 150 messages, each its own commit and (mostly) its own feed batch.
    const MORE: i64 = 150;
    for n in 2..=MORE + 1 {
        send(&app, &nins[0], &id, &format!("message {n}"))
            .await
            .expect("send");
    }
    while seen.len() < (MORE + 1) as usize {
        let ch = next_change(&mut stream).await;
        assert!(ch.cursor > cursor, "cursors increase, nothing repeated");
        cursor = ch.cursor;
        seen.extend(ch.message.map(|m| m.seq));
    }
    assert_eq!(
        seen,
        (1..=MORE + 1).collect::<Vec<i64>>(),
        "every message once, in order"
    );
    let feed = app
        .app
        .as_ref()
        .and_then(|a| a.consultation_feed())
        .expect("the consultation service runs here");
    assert!(
        feed.catch_ups() > 0,
        "the stream never fell behind the feed: the test did not reach the catch-up path"
    );
    app.shutdown().await;
}

async fn patients_and_practices_see_only_their_own_threads(env: Env) {
    let app = TestApp::start(env).await;
    let nins = seed_gp(&app, ORG_A, "gp-1", 5, 2).await;
    seed_gp(&app, ORG_B, "gp-b", 6, 0).await;
    let id = start(&app, &nins[0], "private")
        .await
        .thread
        .expect("thread")
        .thread_id;
    let mut c = app.consultation().await;

    // Another patient's thread answers exactly as a thread that does not exist.
    let other = app.patient_token(&nins[1]);
    let foreign = get(&app, &other, &id).await.unwrap_err();
    assert_eq!(foreign.code(), Code::NotFound);
    let unknown_id = "01900000-0000-7000-8000-000000000000";
    let unknown = get(&app, &other, unknown_id).await.unwrap_err();
    assert_eq!(
        (unknown.code(), unknown.message().replace(unknown_id, "ID")),
        (foreign.code(), foreign.message().replace(&id, "ID")),
        "no existence oracle"
    );
    assert_eq!(
        send(&app, &nins[1], &id, "hi").await.unwrap_err().code(),
        Code::NotFound
    );
    let mine = c
        .list_threads(authed(pb::ListThreadsRequest::default(), &other))
        .await
        .expect("list")
        .into_inner();
    assert!(mine.threads.is_empty());

    let ehr_b = app.ehr_token(ORG_B);
    assert_eq!(
        get(&app, &ehr_b, &id).await.unwrap_err().code(),
        Code::NotFound
    );
    let inbox_b = c
        .list_inbox(authed(
            pb::ListInboxRequest {
                include_done: true,
                ..Default::default()
            },
            &ehr_b,
        ))
        .await
        .expect("inbox b")
        .into_inner();
    assert!(
        inbox_b.threads.is_empty(),
        "organisation B sees none of A's threads"
    );
    let err = reply(&app, ORG_B, &id, "hijack", false).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // A token without the consultation scopes, and a patient calling a practice RPC.
    let no_scope = app.token(econsult_runtime::auth::TokenSpec::Ehr {
        client_id: "epj".into(),
        org_number: ORG_A.into(),
        scopes: vec!["econsult:booking.read".into()],
    });
    let err = c
        .list_inbox(authed(pb::ListInboxRequest::default(), &no_scope))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("econsult:consultation.read"));
    let err = c
        .list_inbox(authed(
            pb::ListInboxRequest::default(),
            &app.patient_token(&nins[0]),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = c
        .list_inbox(tonic::Request::new(pb::ListInboxRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    app.shutdown().await;
}

async fn due_times_skip_weekends_and_holidays_and_overdue_comes_first(env: Env) {
    // Maundy Thursday 2026 at 10:00 Oslo.
    let app = TestApp::start_at(env, oslo(2026, 4, 2, 10, 0)).await;
    let nins = seed_gp(&app, ORG_A, "gp-1", 7, 3).await;
    let easter = start(&app, &nins[0], "before easter")
        .await
        .thread
        .expect("thread");
    // Thu 2 (holiday), Fri 3 (Good Friday), Mon 6 (Easter Monday): 5 working days are
    // Tue 7, Wed 8, Thu 9, Fri 10, Mon 13.
    assert_eq!(easter.due_at, Some(ts(oslo(2026, 4, 13, 10, 0))));

    // A practice with a 2-day SLA, later submission: due earlier than the Easter one.
    let mut c = app.consultation().await;
    let ehr = app.ehr_token(ORG_A);
    let set = c
        .set_response_days(authed(pb::SetResponseDaysRequest { working_days: 2 }, &ehr))
        .await
        .expect("set days")
        .into_inner();
    assert_eq!(set.working_days, 2);
    app.clock.set(oslo(2026, 4, 9, 9, 0));
    let later = start(&app, &nins[1], "after easter")
        .await
        .thread
        .expect("thread");
    assert_eq!(
        later.due_at,
        Some(ts(oslo(2026, 4, 13, 9, 0))),
        "Thu 9 + 2 working days = Mon 13"
    );
    let answered_one = start(&app, &nins[2], "answered quickly")
        .await
        .thread
        .expect("thread");
    reply(&app, ORG_A, &answered_one.thread_id, "Answer", true)
        .await
        .expect("reply");
    for days in [0, 21] {
        let err = c
            .set_response_days(authed(
                pb::SetResponseDaysRequest { working_days: days },
                &ehr,
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{days} working days");
        assert!(err.message().contains("working_days"), "{err:?}");
    }

    // Tuesday 14 April: the two unanswered ones are overdue and come first, earliest due first.
    app.clock.set(oslo(2026, 4, 14, 12, 0));
    let inbox = c
        .list_inbox(authed(pb::ListInboxRequest::default(), &ehr))
        .await
        .expect("inbox")
        .into_inner();
    assert_eq!(inbox.overdue_count, 2);
    let order: Vec<(&str, bool)> = inbox
        .threads
        .iter()
        .map(|t| (t.thread_id.as_str(), t.overdue))
        .collect();
    assert_eq!(
        order,
        vec![
            (later.thread_id.as_str(), true),
            (easter.thread_id.as_str(), true),
            (answered_one.thread_id.as_str(), false),
        ]
    );

    // A closure day of the practice (SetClosures) is no working day either: started Wed 15
    // April, 2 working days skip the closed Thu 16 and end Mon 20.
    app.booking()
        .await
        .set_closures(authed(
            bpb::SetClosuresRequest {
                dates: vec!["2026-04-16".into()],
                idempotency_key: key(),
            },
            &ehr,
        ))
        .await
        .expect("closures");
    app.clock.set(oslo(2026, 4, 15, 10, 0));
    let closed = start(&app, &nins[0], "before a closure day")
        .await
        .thread
        .expect("thread");
    assert_eq!(
        closed.due_at,
        Some(ts(oslo(2026, 4, 20, 10, 0))),
        "Wed 15 + 2 working days, Thu 16 closed = Mon 20"
    );
    app.shutdown().await;
}

fn png(extra: usize) -> Vec<u8> {
    econsult_consultation::structure::samples::png(extra)
}

async fn content_rules_urgency_and_attachments(env: Env) {
    let app = TestApp::start(env).await;
    let nins = seed_gp(&app, ORG_A, "gp-1", 8, 1).await;
    let token = app.patient_token(&nins[0]);
    let mut c = app.consultation().await;

    let mut urgent = start_req("chest pain");
    urgent.urgent = true;
    let err = c
        .start_consultation(authed(urgent, &token))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("113") && err.message().contains("116 117"),
        "{}",
        err.message()
    );

    let err = c
        .start_consultation(authed(start_req(" \u{7} "), &token))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("body"), "{}", err.message());
    let err = c
        .start_consultation(authed(start_req(&"a".repeat(5001)), &token))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("5000"), "{}", err.message());
    let mut no_cat = start_req("x");
    no_cat.category = 0;
    let err = c
        .start_consultation(authed(no_cat, &token))
        .await
        .unwrap_err();
    assert!(err.message().contains("category"), "{}", err.message());

    let image = png(200_000);
    let mut with_file = start_req("<img src=x onerror=alert(1)>\u{7}look at this");
    with_file.attachments = vec![pb::NewAttachment {
        file_name: "rash.png".into(),
        content_type: "image/png".into(),
        content: image.clone(),
    }];
    let started = c
        .start_consultation(authed(with_file, &token))
        .await
        .expect("start")
        .into_inner();
    let m = started.message.expect("message");
    assert_eq!(m.body, "&lt;img src=x onerror=alert(1)&gt;look at this");
    let meta = m.attachments.first().expect("attachment").clone();
    assert_eq!(meta.size_bytes, image.len() as i64);
    let hex: String = sha2::Sha256::digest(&image)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(meta.sha256, hex);
    // The practice gets the bytes back intact.
    let got = c
        .get_attachment(authed(
            pb::GetAttachmentRequest {
                attachment_id: meta.attachment_id.clone(),
            },
            &app.ehr_token(ORG_A),
        ))
        .await
        .expect("attachment")
        .into_inner();
    assert_eq!(got.content, image);
    assert_eq!(
        got.attachment.map(|a| a.content_type),
        Some("image/png".to_string())
    );
    let err = c
        .get_attachment(authed(
            pb::GetAttachmentRequest {
                attachment_id: meta.attachment_id.clone(),
            },
            &app.ehr_token(ORG_B),
        ))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::NotFound,
        "another organisation's attachment"
    );

    let id = started.thread.expect("thread").thread_id;
    let bad = |content: Vec<u8>, ctype: &str| pb::SendMessageRequest {
        thread_id: id.clone(),
        body: "file".into(),
        attachments: vec![pb::NewAttachment {
            file_name: "f.png".into(),
            content_type: ctype.into(),
            content,
        }],
        idempotency_key: key(),
    };
    let err = c
        .send_message(authed(
            bad(b"<html>not a png".to_vec(), "image/png"),
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("attachments[0]"),
        "{}",
        err.message()
    );
    let err = c
        .send_message(authed(bad(png(5 * 1024 * 1024), "image/png"), &token))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("5 MiB"), "{}", err.message());
    let err = c
        .send_message(authed(bad(b"%PDF-1.7".to_vec(), "image/png"), &token))
        .await
        .unwrap_err();
    assert!(
        err.message().contains("application/pdf"),
        "{}",
        err.message()
    );
    // The first bytes are not enough: a PDF, PNG or JPEG prefix before a web page is refused
    // (all three were accepted before the structure check), a whole file of each passes.
    let page = b"<html><script>alert(1)</script></html>";
    for (kind, prefix) in [
        ("application/pdf", b"%PDF-".to_vec()),
        ("image/png", b"\x89PNG\r\n\x1a\n".to_vec()),
        ("image/jpeg", vec![0xFF, 0xD8, 0xFF, 0xE0]),
    ] {
        let mut polyglot = prefix;
        polyglot.extend_from_slice(page);
        let err = c
            .send_message(authed(bad(polyglot, kind), &token))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{kind}: {err:?}");
        assert!(
            err.message().starts_with("attachments[0].content is not a"),
            "{kind}: {}",
            err.message()
        );
    }
    use econsult_consultation::structure::samples;
    for (kind, whole) in [
        ("application/pdf", samples::pdf(100)),
        ("image/png", samples::png(100)),
        ("image/jpeg", samples::jpeg(100)),
    ] {
        c.send_message(authed(bad(whole, kind), &token))
            .await
            .unwrap_or_else(|e| panic!("a whole {kind} is accepted: {e:?}"));
    }
    app.shutdown().await;
}

async fn converting_to_a_booking_offers_the_gps_free_slots(env: Env) {
    let app = TestApp::start(env).await;
    let nins = seed_gp(&app, ORG_A, "gp-1", 9, 1).await;
    let now = econsult_runtime::clock::Clock::now(&app.clock);
    let slots = publish(
        &app,
        ORG_A,
        "gp-1",
        &[
            now + Duration::hours(26),
            now + Duration::hours(2),
            now + Duration::hours(3),
        ],
        bpb::Modality::InPerson,
    )
    .await;
    app.clock.advance(Duration::minutes(150));
    let id = start(&app, &nins[0], "my knee")
        .await
        .thread
        .expect("thread")
        .thread_id;
    let mut c = app.consultation().await;
    let conv = c
        .convert_to_booking(authed(
            pb::ConvertToBookingRequest {
                thread_id: id.clone(),
                body: "I need to examine the knee.".into(),
                offer_count: 5,
                idempotency_key: key(),
            },
            &app.ehr_token(ORG_A),
        ))
        .await
        .expect("convert")
        .into_inner();
    assert_eq!(
        state(&conv.thread),
        pb::ThreadState::ConvertedToBooking as i32
    );
    let offered: Vec<&str> = conv
        .offered_slots
        .iter()
        .map(|s| s.slot_id.as_str())
        .collect();
    // Only slots that have not started, earliest first.
    assert_eq!(
        offered,
        vec![slots[2].slot_id.as_str(), slots[0].slot_id.as_str()]
    );
    assert!(
        conv.message
            .expect("message")
            .body
            .contains(&slots[2].slot_id)
    );
    // The patient can book an offered slot with the booking service.
    let booked = app
        .booking()
        .await
        .book(authed(
            bpb::BookRequest {
                target: Some(bpb::book_request::Target::SlotId(offered[0].into())),
                reason: "knee".into(),
                request_id: conv.request_id.clone(),
                idempotency_key: key(),
            },
            &app.patient_token(&nins[0]),
        ))
        .await;
    assert!(booked.is_ok(), "{booked:?}");
    // The conversion opened a booking request of its own channel, met by the booking; the
    // patient's own searches did not come into it.
    assert!(!conv.request_id.is_empty());
    let day =
        econsult_calendar::oslo_date(econsult_runtime::clock::Clock::now(&app.clock)).to_string();
    let figures = app
        .stats()
        .await
        .get_booking_accessibility(authed(
            econsult_proto::stats::v1::GetBookingAccessibilityRequest {
                filter: Some(econsult_proto::stats::v1::Filter {
                    from_date: day.clone(),
                    to_date: day,
                    ..Default::default()
                }),
            },
            // The practice's own figures are exact (ops get small cells suppressed).
            &app.ehr_token(ORG_A),
        ))
        .await
        .expect("figures")
        .into_inner();
    let by_channel: Vec<(&str, u64, u64)> = figures
        .by_channel
        .iter()
        .map(|c| (c.channel.as_str(), c.requests, c.within_target))
        .collect();
    assert_eq!(by_channel, vec![("e_consultation", 1, 1)]);
    // Converted threads can no longer be withdrawn.
    let err = c
        .withdraw_consultation(authed(
            pb::WithdrawConsultationRequest {
                thread_id: id,
                idempotency_key: key(),
            },
            &app.patient_token(&nins[0]),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    app.shutdown().await;
}

/// Replies and closes `thread` with `outcome` and `tariff`.
async fn close_with(
    app: &TestApp,
    org: &str,
    thread: &str,
    tariff: &str,
) -> Result<pb::CloseConsultationResponse, tonic::Status> {
    app.consultation()
        .await
        .close_consultation(authed(
            pb::CloseConsultationRequest {
                thread_id: thread.into(),
                outcome: "answered".into(),
                tariff_code: tariff.into(),
                idempotency_key: key(),
            },
            &app.ehr_token(org),
        ))
        .await
        .map(|r| r.into_inner())
}

async fn a_tariff_code_is_checked_against_the_tariff_of_the_contacts_date(env: Env) {
    // Tuesday 10 January 2023: 1be was valid a year before (until 30 June 2022, then folded
    // into 1bd), not on the contact's date.
    let app = TestApp::start_at(env, oslo(2023, 1, 10, 10, 0)).await;
    let nins = seed_gp(&app, ORG_A, "gp-1", 41, 1).await;
    let id = start(&app, &nins[0], "Renew my prescription")
        .await
        .thread
        .expect("thread")
        .thread_id;
    reply(&app, ORG_A, &id, "Renewed", false)
        .await
        .expect("reply");

    let err = close_with(&app, ORG_A, &id, "1be").await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("1be") && err.message().contains("2023-01-10"),
        "{}",
        err.message()
    );
    // A code that needs the patient present is not for a written thread.
    let err = close_with(&app, ORG_A, &id, "1ad").await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("1ad"), "{}", err.message());
    let err = close_with(&app, ORG_A, &id, "9zz").await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("9zz"), "{}", err.message());

    let closed = close_with(&app, ORG_A, &id, "1bd").await.expect("close");
    assert_eq!(closed.thread.expect("thread").tariff_code, "1bd");
    app.shutdown().await;
}

/// StartConsultation with `urgent` in `language` at `at`: the refusal's message.
async fn urgent_answer(app: &TestApp, nin: &str, at: DateTime<Utc>, language: &str) -> String {
    app.clock.set(at);
    let mut req = start_req("chest pain");
    req.urgent = true;
    req.language = language.into();
    let err = app
        .consultation()
        .await
        .start_consultation(authed(req, &app.patient_token(nin)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("113"), "{}", err.message());
    err.message().to_owned()
}

async fn an_urgent_request_goes_to_the_office_while_open_and_to_legevakt_otherwise(env: Env) {
    let app = TestApp::start(env).await;
    let nins = seed_gp(&app, ORG_A, "gp-1", 42, 1).await;
    let mut b = app.booking().await;
    let ehr = app.ehr_token(ORG_A);
    let hours = (1..=5)
        .map(|d| bpb::OpeningHours {
            weekday: d,
            opens: "08:00".into(),
            closes: "15:30".into(),
        })
        .collect::<Vec<_>>();
    let set = b
        .set_opening_hours(authed(
            bpb::SetOpeningHoursRequest {
                hours,
                phone: "+47 22 12 34 56".into(),
                idempotency_key: key(),
            },
            &ehr,
        ))
        .await
        .expect("set opening hours")
        .into_inner();
    assert_eq!(set.hours.len(), 5);
    assert_eq!(set.phone, "+47 22 12 34 56");
    b.set_closures(authed(
        bpb::SetClosuresRequest {
            dates: vec!["2026-03-11".into()],
            idempotency_key: key(),
        },
        &ehr,
    ))
    .await
    .expect("closures");
    let nin = &nins[0];

    // Tuesday 10 March 2026 10:00: open, phone the office today (bokmål by default).
    let open = urgent_answer(&app, nin, oslo(2026, 3, 10, 10, 0), "").await;
    assert!(open.contains("+47 22 12 34 56"), "{open}");
    assert!(
        open.contains("legekontoret") && open.contains("i dag"),
        "{open}"
    );
    assert!(!open.contains("116 117"), "{open}");
    let nynorsk = urgent_answer(&app, nin, oslo(2026, 3, 10, 10, 0), "nn").await;
    assert!(
        nynorsk.contains("+47 22 12 34 56") && nynorsk.contains("ikkje"),
        "{nynorsk}"
    );
    let english = urgent_answer(&app, nin, oslo(2026, 3, 10, 10, 0), "en").await;
    assert!(
        english.contains("+47 22 12 34 56") && english.contains("today"),
        "{english}"
    );

    // The same day at 20:00, Ascension Day (Thursday 14 May 2026) at 10:00, a Saturday at
    // 10:00 and the practice's closure day at 10:00: legevakt.
    for at in [
        oslo(2026, 3, 10, 20, 0),
        oslo(2026, 5, 14, 10, 0),
        oslo(2026, 3, 14, 10, 0),
        oslo(2026, 3, 11, 10, 0),
        oslo(2026, 3, 10, 15, 30),
    ] {
        let closed = urgent_answer(&app, nin, at, "nb").await;
        assert!(
            closed.contains("116 117") && closed.contains("legevakt"),
            "{at}: {closed}"
        );
        assert!(!closed.contains("22 12 34 56"), "{at}: {closed}");
    }
    let english = urgent_answer(&app, nin, oslo(2026, 3, 10, 20, 0), "en").await;
    assert!(
        english.contains("116 117") && english.contains("closed"),
        "{english}"
    );

    // Invalid hours are refused naming the field.
    let err = b
        .set_opening_hours(authed(
            bpb::SetOpeningHoursRequest {
                hours: vec![bpb::OpeningHours {
                    weekday: 8,
                    opens: "08:00".into(),
                    closes: "16:00".into(),
                }],
                phone: "22123456".into(),
                idempotency_key: key(),
            },
            &ehr,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("hours[0].weekday"),
        "{}",
        err.message()
    );
    app.shutdown().await;
}

/// What the protos promise is checked: the idempotency key is 1-128 printable ASCII characters,
/// and an attachment declares its type (which must match its content).
async fn keys_and_attachment_types_are_checked_as_the_protos_say(env: Env) {
    let app = TestApp::start(env).await;
    let nins = seed_gp(&app, ORG_A, "gp-1", 12, 1).await;
    let mut c = app.consultation().await;
    let token = app.patient_token(&nins[0]);
    for bad in [
        "tab\tkey",
        "line\nbreak",
        "nul\0",
        "del\x7f",
        "nøkkel",
        "with space",
        "",
    ] {
        let err = c
            .start_consultation(authed(
                pb::StartConsultationRequest {
                    idempotency_key: bad.into(),
                    ..start_req("a question")
                },
                &token,
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad:?}");
        assert!(err.message().contains("idempotency_key"), "{err:?}");
    }
    let id = start(&app, &nins[0], "with a picture")
        .await
        .thread
        .expect("thread")
        .thread_id;
    let with = |content_type: &str| pb::SendMessageRequest {
        thread_id: id.clone(),
        body: "see the picture".into(),
        attachments: vec![pb::NewAttachment {
            file_name: "rash.png".into(),
            content_type: content_type.into(),
            content: png(10),
        }],
        idempotency_key: key(),
    };
    let err = c.send_message(authed(with(""), &token)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("attachments[0].content_type"),
        "{err:?}"
    );
    c.send_message(authed(with("image/png"), &token))
        .await
        .expect("declared and matching");
    app.shutdown().await;
}

/// A patient can keep only so many threads open and send only so many attachment bytes a day
/// (a flood of 6 threads × 15 MiB once went through in 0.9 s): past a quota the call is
/// RESOURCE_EXHAUSTED, stores nothing, and works again once a thread is withdrawn or a day passed.
async fn a_patient_stays_within_the_storage_quotas(env: Env) {
    let tweak: Tweak = std::sync::Arc::new(|c: &mut econsult::Config| {
        c.consultation_quotas = econsult_consultation::Quotas {
            open_threads: 2,
            attachment_bytes_per_day: 1_000,
        };
    });
    let app = TestApp::start_configured(env, oslo(2026, 3, 2, 9, 0), Some(tweak)).await;
    let nins = seed_gp(&app, ORG_A, "gp-1", 13, 1).await;
    let mut c = app.consultation().await;
    let token = app.patient_token(&nins[0]);
    let first = start(&app, &nins[0], "one")
        .await
        .thread
        .expect("thread")
        .thread_id;
    start(&app, &nins[0], "two").await;
    let err = c
        .start_consultation(authed(start_req("three"), &token))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("open e-consultations"), "{err:?}");
    c.withdraw_consultation(authed(
        pb::WithdrawConsultationRequest {
            thread_id: first.clone(),
            idempotency_key: key(),
        },
        &token,
    ))
    .await
    .expect("withdraw");
    let third = start(&app, &nins[0], "three")
        .await
        .thread
        .expect("thread")
        .thread_id;
    let with_file = |bytes: usize| pb::SendMessageRequest {
        thread_id: third.clone(),
        body: "a picture".into(),
        attachments: vec![pb::NewAttachment {
            file_name: "p.png".into(),
            content_type: "image/png".into(),
            content: png(bytes),
        }],
        idempotency_key: key(),
    };
    c.send_message(authed(with_file(500), &token))
        .await
        .expect("within the day's bytes");
    let err = c
        .send_message(authed(with_file(500), &token))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("attachments"), "{err:?}");
    let stored: i64 = sqlx::Row::try_get(
        &sqlx::query("SELECT COUNT(*) AS n FROM consultation_attachments")
            .fetch_one(app.platform().db.read())
            .await
            .expect("count"),
        "n",
    )
    .expect("n");
    assert_eq!(stored, 1, "the refused message stored nothing");
    app.clock.advance(chrono::Duration::hours(25));
    c.send_message(authed(with_file(500), &token))
        .await
        .expect("a day later");
    app.shutdown().await;
}

/// A NUL byte in a stored or echoed string is refused, naming the field (PostgreSQL cannot
/// store it: before, it answered INTERNAL there and stored it on SQLite).
async fn a_nul_byte_in_a_string_field_is_refused(env: Env) {
    let app = TestApp::start(env).await;
    let nins = seed_gp(&app, ORG_A, "gp-1", 12, 1).await;
    let mut c = app.consultation().await;
    let token = app.patient_token(&nins[0]);
    let file = |name: &str| pb::NewAttachment {
        file_name: name.into(),
        content_type: "image/png".into(),
        content: png(10),
    };
    for (field, req) in [
        (
            "subject",
            pb::StartConsultationRequest {
                subject: "Ra\0sh".into(),
                ..start_req("a question")
            },
        ),
        ("body", start_req("a que\0stion")),
        (
            "attachments[0].file_name",
            pb::StartConsultationRequest {
                attachments: vec![file("rash\0.png")],
                ..start_req("a question")
            },
        ),
    ] {
        let err = c.start_consultation(authed(req, &token)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        assert!(err.message().contains(field), "{field}: {err:?}");
    }
    let err = c
        .send_message(authed(
            pb::SendMessageRequest {
                thread_id: "t\0".into(),
                body: "more".into(),
                attachments: vec![],
                idempotency_key: key(),
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("thread_id"), "{err:?}");
    let stored: i64 = sqlx::Row::try_get(
        &sqlx::query("SELECT COUNT(*) AS n FROM consultation_threads")
            .fetch_one(app.platform().db.read())
            .await
            .expect("count"),
        "n",
    )
    .expect("n");
    assert_eq!(stored, 0, "nothing was stored");
    app.shutdown().await;
}

on_both_backends!(
    a_catch_up_page_gives_each_change_its_own_thread_message_and_attachments,
    a_nul_byte_in_a_string_field_is_refused,
    a_patient_stays_within_the_storage_quotas,
    keys_and_attachment_types_are_checked_as_the_protos_say,
    a_tariff_code_is_checked_against_the_tariff_of_the_contacts_date,
    an_urgent_request_goes_to_the_office_while_open_and_to_legevakt_otherwise,
    a_consultation_goes_from_question_to_closed_answer,
    concurrent_replies_keep_a_gap_free_order,
    a_retried_send_returns_the_same_message,
    replays_return_the_first_answer_after_the_thread_changed,
    a_subscriber_resumes_from_its_cursor_and_sees_every_message_once,
    a_stream_that_fell_behind_the_feed_catches_up_without_gaps,
    patients_and_practices_see_only_their_own_threads,
    due_times_skip_weekends_and_holidays_and_overdue_comes_first,
    content_rules_urgency_and_attachments,
    converting_to_a_booking_offers_the_gps_free_slots,
);
