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
    // The thread's lock is its row's (every change of a thread reads it `FOR NO KEY UPDATE`).
    sqlx::Executor::execute(&mut holder, "BEGIN")
        .await
        .expect("begin");
    let lock = format!(
        "SELECT thread_id FROM consultation_threads WHERE thread_id = '{thread}' FOR NO KEY UPDATE"
    );
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
    sqlx::Executor::execute(&mut holder, "ROLLBACK")
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

/// Reads from a raw connection until the server closes it (EOF or reset); `false` when it is
/// still open after `within`.
async fn closed_by_server(conn: &mut tokio::net::TcpStream, within: Duration) -> bool {
    use tokio::io::AsyncReadExt as _;
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue, // the server's SETTINGS, pings, GOAWAY
        }
    }
}

/// 3 000 TCP connections that never sent a byte once stayed open for good: a connection must
/// send the HTTP/2 preface within the handshake timeout. One that does is served as before.
#[tokio::test]
async fn a_connection_that_never_sends_the_preface_is_closed() {
    let tweak: Tweak = Arc::new(|c| c.handshake_timeout = Duration::from_millis(300));
    let app = TestApp::start_configured(Env::sqlite().await, monday_0800(), Some(tweak)).await;
    let mut silent = tokio::net::TcpStream::connect(app.addr)
        .await
        .expect("connect");
    assert!(
        closed_by_server(&mut silent, Duration::from_secs(5)).await,
        "a silent connection stayed open"
    );
    // Half a preface is not a preface either.
    let mut slow = tokio::net::TcpStream::connect(app.addr)
        .await
        .expect("connect");
    tokio::io::AsyncWriteExt::write_all(&mut slow, b"PRI * HTTP/2.0")
        .await
        .expect("write");
    assert!(
        closed_by_server(&mut slow, Duration::from_secs(5)).await,
        "a connection with half a preface stayed open"
    );
    // A real client, also one idle longer than the handshake timeout after connecting.
    let mut c = app.booking().await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let answer = c
        .get_gp(authed(
            bpb::GetGpRequest {
                gp_id: "gp-none".into(),
            },
            &app.ehr_token(ORG_A),
        ))
        .await;
    assert!(
        matches!(&answer, Err(e) if e.code() == Code::NotFound),
        "a client that speaks is served: {answer:?}"
    );
    app.shutdown().await;
}

/// An HTTP/2 connection that handshakes and then stays idle (answering the server's SETTINGS
/// and pings, as a live client does) is asked to go (GOAWAY) once it reaches its age, and
/// closes, instead of staying open for good.
#[tokio::test]
async fn an_idle_http2_connection_is_closed_at_its_age() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let tweak: Tweak = Arc::new(|c| c.max_connection_age = Duration::from_millis(500));
    let app = TestApp::start_configured(Env::sqlite().await, monday_0800(), Some(tweak)).await;
    let mut conn = tokio::net::TcpStream::connect(app.addr)
        .await
        .expect("connect");
    // The preface and an empty SETTINGS frame, then no request at all.
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    conn.write_all(&hello).await.expect("write");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let (mut goaway, mut closed) = (false, false);
    loop {
        let mut head = [0u8; 9];
        match tokio::time::timeout_at(deadline, conn.read_exact(&mut head)).await {
            Err(_) => break,
            Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(_)) => {}
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        if conn.read_exact(&mut payload).await.is_err() {
            closed = true;
            break;
        }
        match (head[3], head[4] & 1) {
            (4, 0) => conn
                .write_all(&[0, 0, 0, 4, 1, 0, 0, 0, 0])
                .await
                .expect("ack"),
            (6, 0) => {
                let mut pong = vec![0, 0, 8, 6, 1, 0, 0, 0, 0];
                pong.extend_from_slice(&payload);
                conn.write_all(&pong).await.expect("pong");
            }
            (7, _) => goaway = true,
            _ => {}
        }
    }
    assert!(goaway, "no GOAWAY for an idle HTTP/2 connection at its age");
    assert!(closed, "an idle HTTP/2 connection stayed open");
    app.shutdown().await;
}

/// Beyond the connection cap a new connection is closed at once; when one closes, a new one
/// is served again.
#[tokio::test]
async fn connections_beyond_the_cap_are_closed_at_once() {
    let tweak: Tweak = Arc::new(|c| {
        c.max_connections = 3;
        c.handshake_timeout = Duration::from_secs(60);
    });
    let app = TestApp::start_configured(Env::sqlite().await, monday_0800(), Some(tweak)).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(
            tokio::net::TcpStream::connect(app.addr)
                .await
                .expect("connect"),
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await; // the server accepts them
    let mut fourth = tokio::net::TcpStream::connect(app.addr)
        .await
        .expect("the kernel accepts the TCP handshake");
    assert!(
        closed_by_server(&mut fourth, Duration::from_secs(3)).await,
        "a connection beyond the cap stayed open"
    );
    drop(held.pop());
    let token = app.ehr_token(ORG_A);
    let mut served = false;
    for _ in 0..50 {
        let Ok(channel) = tonic::transport::Channel::from_shared(format!("http://{}", app.addr))
            .expect("uri")
            .connect()
            .await
        else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let mut c = bpb::booking_service_client::BookingServiceClient::new(channel);
        let get = bpb::GetGpRequest {
            gp_id: "gp-none".into(),
        };
        if let Err(e) = c.get_gp(authed(get, &token)).await
            && e.code() == Code::NotFound
        {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        served,
        "a place freed by a closed connection is not given again"
    );
    app.shutdown().await;
}

/// One token once held 160 Subscribe streams. A caller has at most `max_streams_per_caller`
/// open; the next gets RESOURCE_EXHAUSTED naming the cap, other callers and unary calls go on,
/// and a place comes back when a stream ends.
#[tokio::test]
async fn a_caller_has_at_most_its_cap_of_open_streams() {
    let tweak: Tweak = Arc::new(|c| c.max_streams_per_caller = 2);
    let app = TestApp::start_configured(Env::sqlite().await, monday_0800(), Some(tweak)).await;
    let nins = seed_gp(&app, ORG_A, "gp-1", 75, 2).await;
    let token = app.patient_token(&nins[0]);
    let sub = |token: &str| authed(cpb::SubscribeRequest { after_cursor: 0 }, token);
    let mut c = app.consultation().await;
    let mut other_connection = app.consultation().await;
    let first = c.subscribe(sub(&token)).await.expect("first stream");
    let _second = other_connection
        .subscribe(sub(&token))
        .await
        .expect("second stream, another connection");
    let err = c.subscribe(sub(&token)).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("2 streams") && err.message().contains("max streams per caller"),
        "{}",
        err.message()
    );
    // Another patient, and the same patient's unary calls, are not affected.
    let _theirs = c
        .subscribe(sub(&app.patient_token(&nins[1])))
        .await
        .expect("another caller's stream");
    c.list_threads(authed(cpb::ListThreadsRequest::default(), &token))
        .await
        .expect("a unary call at the cap");
    drop(first);
    let mut reopened = None;
    for _ in 0..50 {
        match c.subscribe(sub(&token)).await {
            Ok(s) => {
                reopened = Some(s);
                break;
            }
            Err(e) if e.code() == Code::ResourceExhausted => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("{e:?}"),
        }
    }
    assert!(
        reopened.is_some(),
        "the ended stream's place did not come back"
    );
    app.shutdown().await;
}

/// Sends `body` as the encoded request message of `path`, whatever it is.
#[derive(Clone, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = ();
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = ();
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<()>, tonic::Status> {
        let n = bytes::Buf::remaining(src);
        bytes::Buf::advance(src, n);
        Ok(Some(()))
    }
}

async fn raw_call(app: &TestApp, path: &'static str, body: Vec<u8>, token: &str) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(app.channel().await);
    grpc.ready().await.expect("ready");
    grpc.unary(
        authed(body, token),
        http::uri::PathAndQuery::from_static(path),
        RawCodec,
    )
    .await
    .expect_err("a malformed request is refused")
}

/// Invalid UTF-8 in a string field and bytes that are no protobuf at all are the client's
/// mistake: INVALID_ARGUMENT, not INTERNAL (which tonic answers by default).
#[tokio::test]
async fn a_malformed_request_message_is_invalid_argument() {
    let app = TestApp::start(Env::sqlite().await).await;
    let token = app.ehr_token(ORG_A);
    const GET_GP: &str = "/econsult.booking.v1.BookingService/GetGp";
    // Field 1 (gp_id, a string), two bytes that are not UTF-8.
    let bad_utf8 = raw_call(&app, GET_GP, vec![0x0a, 0x02, 0xff, 0xfe], &token).await;
    assert_eq!(bad_utf8.code(), Code::InvalidArgument, "{bad_utf8:?}");
    assert!(
        bad_utf8.message().contains("not a valid"),
        "{}",
        bad_utf8.message()
    );
    let garbage = raw_call(&app, GET_GP, vec![0xff; 12], &token).await;
    assert_eq!(garbage.code(), Code::InvalidArgument, "{garbage:?}");
    // A well-formed message is decoded as before.
    let ok = raw_call(&app, GET_GP, vec![0x0a, 0x02, b'g', b'x'], &token).await;
    assert_eq!(ok.code(), Code::NotFound, "{ok:?}");
    app.shutdown().await;
}

/// Reflection answers without a token: served only where configured (by default only on a
/// loopback address, see `Config::reflection_enabled`).
#[tokio::test]
async fn reflection_is_served_only_where_configured() {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest,
    };
    for enabled in [false, true] {
        let tweak: Tweak = Arc::new(move |c| c.reflection = Some(enabled));
        let app = TestApp::start_configured(Env::sqlite().await, monday_0800(), Some(tweak)).await;
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let answer = ServerReflectionClient::new(app.channel().await)
            .server_reflection_info(tokio_stream::iter([req]))
            .await;
        match (enabled, answer) {
            (true, Ok(_)) => {}
            (false, Err(e)) => assert_eq!(e.code(), Code::Unimplemented, "{e:?}"),
            (enabled, other) => panic!("reflection {enabled}: {other:?}"),
        }
        app.shutdown().await;
    }
}
