//! Limits of the gRPC server: per-caller rate limits, message size, concurrent streams per
//! connection.

mod common;

use common::*;
use econsult_proto::booking::v1 as bpb;
use econsult_proto::consultation::v1 as cpb;
use econsult_runtime::ratelimit::{Limit, RateLimits};
use std::sync::Arc;
use std::time::Duration;
use tonic::Code;

#[tokio::test]
async fn a_patient_over_the_rate_limit_gets_resource_exhausted_with_a_retry_hint() {
    let tweak: Tweak = Arc::new(|c| {
        c.rate_limits = RateLimits {
            patient: Limit {
                per_second: 2.0,
                burst: 3.0,
            },
            ..RateLimits::unlimited()
        };
    });
    let app = TestApp::start_configured(Env::sqlite().await, monday_0800(), Some(tweak)).await;
    let nins = seed_gp(&app, ORG_A, "gp-1", 71, 2).await;
    let mut c = app.booking().await;
    let list = |nin: &str| {
        authed(
            bpb::ListMyBookingsRequest::default(),
            &app.patient_token(nin),
        )
    };
    for _ in 0..3 {
        c.list_my_bookings(list(&nins[0]))
            .await
            .expect("within the burst");
    }
    let err = c.list_my_bookings(list(&nins[0])).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    let wait: u64 = err
        .metadata()
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("retry-after-ms");
    assert!((1..=500).contains(&wait), "{wait}");
    assert!(err.message().contains("retry after"), "{}", err.message());
    // Another patient is not affected; the first one may go on after the hint.
    c.list_my_bookings(list(&nins[1]))
        .await
        .expect("another caller");
    tokio::time::sleep(Duration::from_millis(wait)).await;
    c.list_my_bookings(list(&nins[0]))
        .await
        .expect("after waiting");
    app.shutdown().await;
}

#[tokio::test]
async fn oversized_messages_are_refused() {
    let app = TestApp::start(Env::sqlite().await).await;
    let mut c = app.booking().await;
    let err = c
        .upsert_gp(authed(
            bpb::UpsertGpRequest {
                gp: Some(bpb::Gp {
                    gp_id: "gp-x".into(),
                    display_name: "x".repeat(5 * 1024 * 1024),
                    ..Default::default()
                }),
            },
            &app.ehr_token(ORG_A),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    // The consultation service takes attachments, but not without bound either.
    let nins = seed_gp(&app, ORG_A, "gp-1", 72, 1).await;
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.resize(6 * 1024 * 1024, 0);
    let attachment = cpb::NewAttachment {
        file_name: "x.png".into(),
        content_type: "image/png".into(),
        content: png,
    };
    // A client that would send anything: the server's limit (16 MiB) refuses it.
    let err = cpb::consultation_service_client::ConsultationServiceClient::new(app.channel().await)
        .max_encoding_message_size(64 * 1024 * 1024)
        .start_consultation(authed(
            cpb::StartConsultationRequest {
                category: cpb::Category::EConsultation as i32,
                subject: "s".into(),
                body: "b".into(),
                attachments: vec![attachment.clone(), attachment.clone(), attachment],
                idempotency_key: key(),
                ..Default::default()
            },
            &app.patient_token(&nins[0]),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    app.shutdown().await;
}

#[tokio::test]
async fn streams_per_connection_are_capped() {
    let tweak: Tweak = Arc::new(|c| c.max_streams_per_connection = 2);
    let app = TestApp::start_configured(Env::sqlite().await, monday_0800(), Some(tweak)).await;
    let nins = seed_gp(&app, ORG_A, "gp-1", 73, 1).await;
    let token = Arc::new(app.patient_token(&nins[0]));
    let mut c = app.consultation().await; // one connection
    let sub = move || authed(cpb::SubscribeRequest { after_cursor: 0 }, &token);
    let first = c.subscribe(sub()).await.expect("first stream");
    let _second = c.subscribe(sub()).await.expect("second stream");
    // A third stream on the same connection waits for a free one.
    let mut c3 = c.clone();
    let third = tokio::spawn(async move { c3.subscribe(sub()).await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        !third.is_finished(),
        "the third stream must wait while two are open"
    );
    drop(first);
    let opened = tokio::time::timeout(Duration::from_secs(10), third)
        .await
        .expect("third stream opens once one closed")
        .expect("join");
    assert!(opened.is_ok(), "{opened:?}");
    app.shutdown().await;
}

/// A client deadline cancels the server's database work: the call waits on the thread's lock
/// (held here from another connection), the deadline passes, and the half-done send never
/// commits, even after the lock is released. A retry with the same key then stores it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    no_test_backends,
    ignore = "needs TEST_DATABASE_URL and TEST_REDIS_URL"
)]
async fn a_client_deadline_cancels_the_database_work() {
    let Some(env) = Env::postgres().await else {
        return;
    };
    let url = env.database_url.clone().expect("database url");
    let app = TestApp::start(env).await;
    let nins = seed_gp(&app, ORG_A, "gp-1", 74, 1).await;
    let token = app.patient_token(&nins[0]);
    let mut c = app.consultation().await;
    let thread = c
        .start_consultation(authed(
            cpb::StartConsultationRequest {
                category: cpb::Category::EConsultation as i32,
                subject: "s".into(),
                body: "first".into(),
                idempotency_key: key(),
                ..Default::default()
            },
            &token,
        ))
        .await
        .expect("start")
        .into_inner()
        .thread
        .expect("thread")
        .thread_id;

    let mut holder = <sqlx::AnyConnection as sqlx::Connection>::connect(&url)
        .await
        .expect("connect");
    let lock =
        format!("SELECT pg_advisory_lock(hashtextextended('consultation:{thread}', 0))::text");
    sqlx::Executor::execute(&mut holder, lock.as_str())
        .await
        .expect("hold the thread's lock");
    let send = cpb::SendMessageRequest {
        thread_id: thread.clone(),
        body: "second".into(),
        attachments: vec![],
        idempotency_key: key(),
    };
    let mut req = authed(send.clone(), &token);
    req.set_timeout(Duration::from_millis(500));
    let err = c.send_message(req).await.unwrap_err();
    assert!(
        matches!(err.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{err:?}"
    );
    // Keep the lock a little longer than the deadline, then let go.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let unlock =
        format!("SELECT pg_advisory_unlock(hashtextextended('consultation:{thread}', 0))::text");
    sqlx::Executor::execute(&mut holder, unlock.as_str())
        .await
        .expect("release");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let stored: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM consultation_messages WHERE thread_id = $1")
            .bind(&thread)
            .fetch_one(app.platform().db.read())
            .await
            .expect("count");
    assert_eq!(stored, 1, "the cancelled send did not commit");
    let m = c
        .send_message(authed(send, &token))
        .await
        .expect("retry")
        .into_inner()
        .message
        .expect("message");
    assert_eq!(m.seq, 2);
    app.shutdown().await;
}
