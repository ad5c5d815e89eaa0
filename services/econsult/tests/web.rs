//! The browser's view of the server: CORS preflights and gRPC-Web answers for allowed and
//! other origins, over real HTTP/1.1 requests to the server on a port.

mod common;

use common::*;
use std::sync::Arc;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const PORTAL: &str = "http://127.0.0.1:18080";
const OTHER: &str = "http://127.0.0.1:18081";

/// One HTTP/1.1 exchange: the status and the headers (names lowercased) of the answer.
async fn http(addr: std::net::SocketAddr, head: &str, body: &[u8]) -> (u16, Vec<(String, String)>) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "{head}\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    s.write_all(body).await.expect("write body");
    let mut buf = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("answer in time")
        .expect("read");
    let text = String::from_utf8_lossy(&buf);
    let head = text.split("\r\n\r\n").next().expect("head");
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

async fn preflight(addr: std::net::SocketAddr, origin: &str) -> (u16, Vec<(String, String)>) {
    http(
        addr,
        &format!(
            "OPTIONS /econsult.booking.v1.BookingService/FindSlots HTTP/1.1\r\nOrigin: {origin}\r\n\
             Access-Control-Request-Method: POST\r\n\
             Access-Control-Request-Headers: authorization,content-type,x-grpc-web,x-user-agent"
        ),
        b"",
    )
    .await
}

/// A gRPC-Web health check (an empty request message in one frame) from `origin`.
async fn grpc_web_call(addr: std::net::SocketAddr, origin: &str) -> (u16, Vec<(String, String)>) {
    http(
        addr,
        &format!(
            "POST /grpc.health.v1.Health/Check HTTP/1.1\r\nOrigin: {origin}\r\n\
             Content-Type: application/grpc-web+proto\r\nX-Grpc-Web: 1"
        ),
        &[0, 0, 0, 0, 0],
    )
    .await
}

fn with_origins(origins: &[&str]) -> Tweak {
    let origins: Vec<String> = origins.iter().map(|s| s.to_string()).collect();
    Arc::new(move |c: &mut econsult::Config| c.cors_origins = origins.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_origin_gets_cors_answers_and_another_origin_none() {
    let app = TestApp::start_configured(
        Env::sqlite().await,
        monday_0800(),
        Some(with_origins(&[PORTAL])),
    )
    .await;
    let (status, h) = preflight(app.addr, PORTAL).await;
    assert_eq!(status, 204, "{h:?}");
    assert_eq!(header(&h, "access-control-allow-origin"), Some(PORTAL));
    let allowed = header(&h, "access-control-allow-headers").expect("allow-headers");
    for needed in [
        "authorization",
        "content-type",
        "x-grpc-web",
        "x-user-agent",
    ] {
        assert!(allowed.contains(needed), "{needed} in {allowed}");
    }
    assert!(
        header(&h, "access-control-allow-methods")
            .expect("methods")
            .contains("POST")
    );
    assert_eq!(header(&h, "vary"), Some("origin"));

    let (status, h) = grpc_web_call(app.addr, PORTAL).await;
    assert_eq!(status, 200, "{h:?}");
    assert_eq!(header(&h, "access-control-allow-origin"), Some(PORTAL));
    let exposed = header(&h, "access-control-expose-headers").expect("expose-headers");
    for needed in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
        assert!(exposed.contains(needed), "{needed} in {exposed}");
    }

    // Another origin: no Allow-Origin, so a browser refuses both.
    let (status, h) = preflight(app.addr, OTHER).await;
    assert_eq!(status, 403, "{h:?}");
    assert_eq!(header(&h, "access-control-allow-origin"), None);
    let (_, h) = grpc_web_call(app.addr, OTHER).await;
    assert_eq!(header(&h, "access-control-allow-origin"), None, "{h:?}");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_allow_list_cross_origin_calls_get_no_cors_headers() {
    let app = TestApp::start(Env::sqlite().await).await;
    let (status, h) = preflight(app.addr, PORTAL).await;
    assert_ne!(
        status / 100,
        2,
        "a preflight is not answered with success: {h:?}"
    );
    assert_eq!(header(&h, "access-control-allow-origin"), None);
    let (status, h) = grpc_web_call(app.addr, PORTAL).await;
    assert_eq!(status, 200, "same-origin style call still works: {h:?}");
    assert_eq!(header(&h, "access-control-allow-origin"), None);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wildcard_origin_is_refused_at_start_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = econsult::Config::embedded(dir.path().to_path_buf());
    config.listen = "127.0.0.1:0".parse().expect("addr");
    config.cors_origins = vec![PORTAL.into(), "*".into()];
    let err = econsult::Application::start(config)
        .await
        .err()
        .expect("refused");
    assert!(format!("{err:#}").contains("wildcard"), "{err:#}");
}

/// The body of a GET (HTTP/1.1, read to the end).
async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("answer in time")
        .expect("read");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status");
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_client_is_served_at_the_root_and_dev_tokens_work_in_dev_mode() {
    let app = TestApp::start(Env::sqlite().await).await;
    let (status, body) = get(app.addr, "/").await;
    assert_eq!(status, 200);
    assert!(
        body.contains("<html lang=\"nb\">") && body.contains("app.js"),
        "{body}"
    );
    let (status, body) = get(app.addr, "/app.js").await;
    assert_eq!(status, 200);
    assert!(
        body.contains("signalEvents") && body.contains("grpc-web"),
        "the client speaks the browser transport"
    );
    let nins = seed_gp(&app, ORG_A, "gp-web", 3, 1).await;
    let (status, body) = get(
        app.addr,
        &format!("/dev/token?role=patient&nin={}", nins[0]),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let token = serde_json::from_str::<serde_json::Value>(body.trim()).expect("json")["token"]
        .as_str()
        .expect("token")
        .to_owned();
    // The token works: the patient lists their bookings.
    app.booking()
        .await
        .list_my_bookings(authed(
            econsult_proto::booking::v1::ListMyBookingsRequest {
                include_past: false,
            },
            &token,
        ))
        .await
        .expect("the dev token is accepted");
    let (status, _) = get(app.addr, "/dev/token?role=patient&nin=123").await;
    assert_eq!(status, 400);
    app.shutdown().await;
}
