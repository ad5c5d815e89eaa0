//! Authentication and the audit trail through the real server.

mod common;

use chrono::Utc;
use common::*;
use econsult_proto::audit::v1 as apb;
use econsult_proto::booking::v1 as pb;
use econsult_proto::consultation::v1 as cpb;
use econsult_runtime::auth::{DevKeys, REQUIRED_ACR, TokenSpec};
use std::sync::{Arc, Mutex};
use tonic::Code;

async fn find(app: &TestApp, req: tonic::Request<pb::FindSlotsRequest>) -> tonic::Status {
    app.booking().await.find_slots(req).await.unwrap_err()
}

async fn tokens_are_checked_for_presence_level_expiry_and_signature(env: Env) {
    let app = TestApp::start(env).await;
    let nins = seed_gp(&app, ORG_A, "gp-1", 31, 1).await;
    let spec = TokenSpec::Patient {
        nin: nins[0].clone(),
        acr: REQUIRED_ACR.into(),
    };

    let err = find(&app, tonic::Request::new(pb::FindSlotsRequest::default())).await;
    assert_eq!(err.code(), Code::Unauthenticated, "no token");

    let low = app.token(TokenSpec::Patient {
        nin: nins[0].clone(),
        acr: "idporten-loa-substantial".into(),
    });
    let err = find(&app, authed(pb::FindSlotsRequest::default(), &low)).await;
    assert_eq!(err.code(), Code::Unauthenticated, "lower acr");
    assert!(err.message().contains(REQUIRED_ACR));

    let expired = app
        .keys
        .mint(&spec, Utc::now().timestamp() - 7200, 600)
        .expect("mint");
    let err = find(&app, authed(pb::FindSlotsRequest::default(), &expired)).await;
    assert_eq!(
        (err.code(), err.message()),
        (Code::Unauthenticated, "token expired")
    );

    let other_dir = tempfile::tempdir().expect("tempdir");
    let forged = DevKeys::load_or_create(other_dir.path())
        .expect("keys")
        .mint(&spec, Utc::now().timestamp(), 600)
        .expect("mint");
    let err = find(&app, authed(pb::FindSlotsRequest::default(), &forged)).await;
    assert_eq!(err.code(), Code::Unauthenticated, "signed by another key");

    let mut claims = spec.claims(Utc::now().timestamp(), 600);
    claims.aud = "another-api".into();
    let wrong_aud = app.keys.sign(&claims).expect("sign");
    assert_eq!(
        find(&app, authed(pb::FindSlotsRequest::default(), &wrong_aud))
            .await
            .code(),
        Code::Unauthenticated
    );

    let mut bad = tonic::Request::new(pb::FindSlotsRequest::default());
    bad.metadata_mut().insert(
        "authorization",
        "Basic dXNlcjpwYXNz".parse().expect("header"),
    );
    assert_eq!(
        find(&app, bad).await.code(),
        Code::Unauthenticated,
        "not a bearer token"
    );

    // The valid token works.
    let ok = app
        .booking()
        .await
        .find_slots(authed(pb::FindSlotsRequest::default(), &app.token(spec)))
        .await;
    assert!(ok.is_ok(), "{ok:?}");
    app.shutdown().await;
}

async fn reads_of_patient_data_are_audited_and_visible_to_ops_and_the_patient(env: Env) {
    let app = TestApp::start(env).await;
    let nins = seed_gp(&app, ORG_A, "gp-1", 32, 2).await;
    let mut c = app.booking().await;
    c.list_my_bookings(authed(
        pb::ListMyBookingsRequest::default(),
        &app.patient_token(&nins[0]),
    ))
    .await
    .expect("read");

    let mut audit = apb::audit_service_client::AuditServiceClient::new(app.channel().await);
    let ops = app.ops_token();
    let all = audit
        .list_access_log(authed(
            apb::ListAccessLogRequest {
                patient_nin: nins[0].clone(),
                ..Default::default()
            },
            &ops,
        ))
        .await
        .expect("ops reads the log")
        .into_inner();
    let read = all
        .entries
        .iter()
        .find(|e| e.action.ends_with("/ListMyBookings"))
        .expect("the read is logged");
    assert_eq!(read.role, apb::CallerRole::Patient as i32);
    assert!(
        all.entries
            .iter()
            .any(|e| e.action.ends_with("/UpdateList") && e.role == apb::CallerRole::Ehr as i32),
        "the EHR's list change is logged"
    );
    assert!(all.entries.iter().all(|e| e.patient_nin == nins[0]));

    // The other patient's log holds nothing of the first one; a patient cannot use the ops call.
    let theirs = audit
        .list_my_access_log(authed(
            apb::ListMyAccessLogRequest::default(),
            &app.patient_token(&nins[1]),
        ))
        .await
        .expect("own log")
        .into_inner();
    assert!(theirs.entries.iter().all(|e| e.patient_nin == nins[1]));
    let err = audit
        .list_access_log(authed(
            apb::ListAccessLogRequest::default(),
            &app.patient_token(&nins[1]),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = audit
        .list_access_log(authed(
            apb::ListAccessLogRequest::default(),
            &app.ehr_token(ORG_A),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    app.shutdown().await;
}

/// Serves whatever JWKS document `doc` holds at http://127.0.0.1:<port>/jwks.json.
async fn jwks_server(doc: Arc<Mutex<String>>) -> String {
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            let doc = doc.clone();
            async move { doc.lock().expect("lock").clone() }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/jwks.json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_from_a_jwks_url_are_used_and_rotated() {
    let idp_a = tempfile::tempdir().expect("tempdir");
    let idp_b = tempfile::tempdir().expect("tempdir");
    let key_a = DevKeys::load_or_create(idp_a.path()).expect("key a");
    let key_b = DevKeys::load_or_create(idp_b.path()).expect("key b");
    let doc = Arc::new(Mutex::new(key_a.jwks().to_owned()));
    let url = jwks_server(doc.clone()).await;
    let tweak: Tweak = Arc::new(move |c: &mut econsult::Config| {
        c.jwks_url = Some(url.clone());
        c.jwks_refresh = std::time::Duration::from_millis(300);
        c.issuers = vec![econsult_runtime::auth::DEV_ISSUER.into()];
    });
    let app = TestApp::start_configured(Env::sqlite().await, monday_0800(), Some(tweak)).await;
    let ops = TokenSpec::Ops {
        subject: "ops".into(),
    };
    let now = Utc::now().timestamp();
    let call = async |token: String| {
        let mut audit = apb::audit_service_client::AuditServiceClient::new(app.channel().await);
        audit
            .list_access_log(authed(apb::ListAccessLogRequest::default(), &token))
            .await
            .map(|_| ())
    };
    call(key_a.mint(&ops, now, 600).expect("mint"))
        .await
        .expect("key A is trusted");
    let err = call(app.keys.mint(&ops, now, 600).expect("mint"))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::Unauthenticated,
        "the local dev key is not trusted with a JWKS URL"
    );

    // The identity provider rotates to key B: after a refresh, B is trusted and A is not.
    *doc.lock().expect("lock") = key_b.jwks().to_owned();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while call(key_b.mint(&ops, now, 600).expect("mint"))
        .await
        .is_err()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "rotated key never trusted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        call(key_a.mint(&ops, now, 600).expect("mint"))
            .await
            .is_err()
    );
    app.shutdown().await;
}

/// The first error of `stream` within 15 s (changes before it are skipped).
async fn ends_with<T>(stream: &mut tonic::Streaming<T>, what: &str) -> tonic::Status {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        match tokio::time::timeout_at(deadline, stream.message()).await {
            Ok(Ok(Some(_))) => continue,
            Ok(Ok(None)) => panic!("{what}: ended without a status"),
            Ok(Err(status)) => return status,
            Err(_) => panic!("{what}: outlived its token by more than 15 s"),
        }
    }
}

/// Change streams (WatchBookings, Subscribe) end with UNAUTHENTICATED when their token runs out;
/// a stream opened with a token that is still good stays open.
async fn change_streams_end_when_their_token_expires(env: Env) {
    let app = TestApp::start(env).await;
    let nins = seed_gp(&app, ORG_A, "gp-1", 31, 1).await;
    // Accepted for about two more seconds: exp lies 28 s back, the leeway is 30 s.
    let fading = |spec: TokenSpec| {
        app.keys
            .mint(&spec, Utc::now().timestamp() - 628, 600)
            .expect("mint")
    };
    let ehr = fading(TokenSpec::Ehr {
        client_id: "epj-fading".into(),
        org_number: ORG_A.into(),
        scopes: vec!["econsult:booking.read".into()],
    });
    let patient = fading(TokenSpec::Patient {
        nin: nins[0].clone(),
        acr: REQUIRED_ACR.into(),
    });
    let mut bookings = app
        .booking()
        .await
        .watch_bookings(authed(pb::WatchBookingsRequest { after_cursor: 0 }, &ehr))
        .await
        .expect("watch bookings")
        .into_inner();
    let mut threads = app
        .consultation()
        .await
        .subscribe(authed(cpb::SubscribeRequest { after_cursor: 0 }, &patient))
        .await
        .expect("subscribe")
        .into_inner();
    let mut lasting = app
        .booking()
        .await
        .watch_bookings(authed(
            pb::WatchBookingsRequest { after_cursor: 0 },
            &app.ehr_token(ORG_A),
        ))
        .await
        .expect("watch bookings")
        .into_inner();

    for (what, status) in [
        (
            "WatchBookings",
            ends_with(&mut bookings, "WatchBookings").await,
        ),
        ("Subscribe", ends_with(&mut threads, "Subscribe").await),
    ] {
        assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
        assert!(status.message().contains("expired"), "{what}: {status:?}");
    }
    // The stream with a good token is still open: it only ever yields changes.
    loop {
        match tokio::time::timeout(std::time::Duration::from_secs(1), lasting.message()).await {
            Ok(Ok(Some(_))) => continue,
            Ok(other) => panic!("a stream with a good token ended: {other:?}"),
            Err(_) => break,
        }
    }
    app.shutdown().await;
}

on_both_backends!(
    tokens_are_checked_for_presence_level_expiry_and_signature,
    change_streams_end_when_their_token_expires,
    reads_of_patient_data_are_audited_and_visible_to_ops_and_the_patient,
);
