//! Authentication and the audit trail through the real server.

mod common;

use chrono::Utc;
use common::*;
use econsult_proto::audit::v1 as apb;
use econsult_proto::booking::v1 as pb;
use econsult_proto::consultation::v1 as cpb;
use econsult_runtime::auth::{Claims, DevKeys, REQUIRED_ACR, TokenSpec};
use std::sync::atomic::{AtomicUsize, Ordering};
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
    jwks_server_counting(doc).await.0
}

/// [`jwks_server`], with the number of documents served so far.
async fn jwks_server_counting(doc: Arc<Mutex<String>>) -> (String, Arc<AtomicUsize>) {
    let served = Arc::new(AtomicUsize::new(0));
    let count = served.clone();
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            let doc = doc.clone();
            count.fetch_add(1, Ordering::SeqCst);
            async move { doc.lock().expect("lock").clone() }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/jwks.json"), served)
}

/// One JWKS document with the keys of all `docs`.
fn merged_jwks(docs: &[&str]) -> String {
    let keys: Vec<serde_json::Value> = docs
        .iter()
        .flat_map(|d| {
            let v: serde_json::Value = serde_json::from_str(d).expect("jwks");
            v["keys"].as_array().expect("keys").clone()
        })
        .collect();
    serde_json::json!({ "keys": keys }).to_string()
}

const IDPORTEN: &str = "https://idporten.test";
const HELSEID: &str = "https://helseid.test";
const OPS_ISSUER: &str = "https://ops-idp.test";

/// Three identity providers, each with its own key: ID-porten for patients, HelseID for EHR
/// systems and clinicians, one for operations.
struct Idps {
    _dir: tempfile::TempDir,
    idporten: DevKeys,
    helseid: DevKeys,
    ops: DevKeys,
    issuers: Vec<econsult_runtime::auth::IssuerConfig>,
}

impl Idps {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = |name: &str| {
            let d = dir.path().join(name);
            let k = DevKeys::load_or_create(&d)
                .expect("key")
                .with_kid(&format!("{name}-1"))
                .expect("kid");
            let file = dir.path().join(format!("{name}.json"));
            std::fs::write(&file, k.jwks()).expect("write jwks");
            (k, file)
        };
        let (idporten, f1) = key("idporten");
        let (helseid, f2) = key("helseid");
        let (ops, f3) = key("ops");
        let issuers = [
            format!("iss={IDPORTEN},jwks={},roles=patient", f1.display()),
            format!("iss={HELSEID},jwks={},roles=ehr+clinician", f2.display()),
            format!("iss={OPS_ISSUER},jwks={},roles=ops", f3.display()),
        ]
        .iter()
        .map(|s| s.parse().expect("issuer"))
        .collect();
        Self {
            _dir: dir,
            idporten,
            helseid,
            ops,
            issuers,
        }
    }
}

/// A token for `spec` with `iss`, signed by `key`, after `edit`.
fn sign(key: &DevKeys, spec: &TokenSpec, iss: &str, edit: impl FnOnce(&mut Claims)) -> String {
    let mut claims = spec.claims(Utc::now().timestamp(), 600);
    claims.iss = iss.into();
    edit(&mut claims);
    key.sign(&claims).expect("sign")
}

async fn access_log(app: &TestApp, token: &str) -> Result<(), tonic::Status> {
    apb::audit_service_client::AuditServiceClient::new(app.channel().await)
        .list_access_log(authed(apb::ListAccessLogRequest::default(), token))
        .await
        .map(|_| ())
}

async fn my_access_log(app: &TestApp, token: &str) -> Result<(), tonic::Status> {
    apb::audit_service_client::AuditServiceClient::new(app.channel().await)
        .list_my_access_log(authed(apb::ListMyAccessLogRequest::default(), token))
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_signs_only_for_its_issuer_and_a_role_only_comes_from_its_issuers() {
    let idps = Arc::new(Idps::new());
    let cfg = idps.clone();
    let tweak: Tweak = Arc::new(move |c: &mut econsult::Config| {
        c.trusted_issuers = cfg.issuers.clone();
        c.allow_synthetic_nins = true;
    });
    let app = TestApp::start_configured(Env::sqlite().await, monday_0800(), Some(tweak)).await;
    let nin = econsult_runtime::nin::synthetic(7);
    let patient = TokenSpec::Patient {
        nin: nin.as_str().into(),
        acr: REQUIRED_ACR.into(),
    };
    let ehr = TokenSpec::Ehr {
        client_id: "epj-1".into(),
        org_number: ORG_A.into(),
        scopes: vec!["econsult:booking.read".into(), "econsult:ops".into()],
    };
    let ops = TokenSpec::Ops {
        subject: "ops-1".into(),
    };

    my_access_log(&app, &sign(&idps.idporten, &patient, IDPORTEN, |_| {}))
        .await
        .expect("ID-porten's patient");
    access_log(&app, &sign(&idps.ops, &ops, OPS_ISSUER, |_| {}))
        .await
        .expect("the ops issuer's ops");

    // One issuer's key with another trusted issuer's `iss`: refused.
    for (what, token) in [
        (
            "HelseID key, ID-porten iss",
            sign(&idps.helseid, &patient, IDPORTEN, |_| {}),
        ),
        (
            "ID-porten key, HelseID iss",
            sign(&idps.idporten, &ehr, HELSEID, |_| {}),
        ),
        (
            "HelseID key, ops iss",
            sign(&idps.helseid, &ops, OPS_ISSUER, |_| {}),
        ),
    ] {
        let err = access_log(&app, &token).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{what}: {err:?}");
        let err = my_access_log(&app, &token).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{what}: {err:?}");
    }

    // An EHR token whose scope includes econsult:ops is an EHR, never ops.
    let err = access_log(&app, &sign(&idps.helseid, &ehr, HELSEID, |_| {}))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err = access_log(
        &app,
        &sign(&idps.helseid, &ops, HELSEID, |c| {
            c.org_number = Some(ORG_A.into());
        }),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    // A patient's claims from HelseID are no patient; an ops token from ID-porten is no ops.
    let err = my_access_log(&app, &sign(&idps.helseid, &patient, HELSEID, |_| {}))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err = access_log(&app, &sign(&idps.idporten, &ops, IDPORTEN, |_| {}))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    app.shutdown().await;
}

/// An ordinary (not synthetic) identity number that cannot be anyone's: born on 1 January 2039
/// (two-digit year 39 with an individual number of 500 or more).
fn nobodys_number(nth: usize) -> String {
    (500..1000)
        .filter_map(|i: u32| {
            let digits: Vec<u32> = format!("010139{i}")
                .bytes()
                .map(|b| u32::from(b - b'0'))
                .collect();
            let nine: [u32; 9] = digits.try_into().ok()?;
            let (k1, k2) = econsult_runtime::nin::check_digits(&nine)?;
            Some(format!("010139{i}{k1}{k2}"))
        })
        .nth(nth)
        .expect("a number")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_an_identity_provider_refuses_synthetic_numbers_unless_allowed() {
    let idps = Arc::new(Idps::new());
    let allow = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (cfg, flag) = (idps.clone(), allow.clone());
    let tweak: Tweak = Arc::new(move |c: &mut econsult::Config| {
        c.trusted_issuers = cfg.issuers.clone();
        c.allow_synthetic_nins = flag.load(Ordering::SeqCst);
    });
    let mut app = TestApp::start_configured(Env::sqlite().await, monday_0800(), Some(tweak)).await;
    let synthetic = econsult_runtime::nin::synthetic(7);
    let ordinary = nobodys_number(0);
    let patient = |nin: &str| {
        sign(
            &idps.idporten,
            &TokenSpec::Patient {
                nin: nin.into(),
                acr: REQUIRED_ACR.into(),
            },
            IDPORTEN,
            |_| {},
        )
    };
    let ehr = sign(
        &idps.helseid,
        &TokenSpec::Ehr {
            client_id: "epj-1".into(),
            org_number: ORG_A.into(),
            scopes: vec!["econsult:booking.write".into()],
        },
        HELSEID,
        |_| {},
    );
    let update_list = async |app: &TestApp, nin: &str| {
        pb::booking_service_client::BookingServiceClient::new(app.channel().await)
            .update_list(authed(
                pb::UpdateListRequest {
                    gp_id: "gp-1".into(),
                    add: vec![nin.into()],
                    remove: vec![],
                    idempotency_key: key(),
                },
                &ehr,
            ))
            .await
    };

    // Production: an ordinary number is served, a synthetic one refused wherever it enters.
    my_access_log(&app, &patient(&ordinary))
        .await
        .expect("an ordinary number");
    let err = my_access_log(&app, &patient(synthetic.as_str()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{}", err.message());
    assert!(err.message().contains("synthetic"), "{}", err.message());
    let mut on_behalf = authed(apb::ListMyAccessLogRequest::default(), &patient(&ordinary));
    on_behalf.metadata_mut().insert(
        "x-on-behalf-of",
        synthetic.as_str().parse().expect("header"),
    );
    let err = apb::audit_service_client::AuditServiceClient::new(app.channel().await)
        .list_my_access_log(on_behalf)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert!(
        err.message().starts_with("x-on-behalf-of is a synthetic"),
        "{}",
        err.message()
    );
    let err = update_list(&app, synthetic.as_str()).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert!(
        err.message().starts_with("add[0] is a synthetic"),
        "{}",
        err.message()
    );

    // A test environment allows them.
    allow.store(true, Ordering::SeqCst);
    app.restart().await;
    my_access_log(&app, &patient(synthetic.as_str()))
        .await
        .expect("a synthetic number in a test environment");
    let err = update_list(&app, synthetic.as_str()).await.unwrap_err();
    assert_eq!(
        err.code(),
        Code::NotFound,
        "past the number, to the unknown GP: {err:?}"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbf_and_iat_are_checked_with_the_leeway_and_aud_may_be_an_array() {
    let app = TestApp::start(Env::sqlite().await).await;
    let ops = TokenSpec::Ops {
        subject: "ops-1".into(),
    };
    let now = Utc::now().timestamp();
    let token = |edit: &dyn Fn(&mut Claims)| {
        let mut claims = ops.claims(now, 600);
        edit(&mut claims);
        app.keys.sign(&claims).expect("sign")
    };
    let refused = async |what: &str, t: String| {
        let err = access_log(&app, &t).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{what}: {err:?}");
    };
    refused("nbf in 2 min", token(&|c| c.nbf = Some(now + 120))).await;
    refused("iat in 2 min", token(&|c| c.iat = now + 120)).await;
    refused(
        "aud array without ours",
        token(&|c| c.aud = vec!["other".to_owned(), "another".to_owned()].into()),
    )
    .await;
    access_log(&app, &token(&|c| c.nbf = Some(now + 10)))
        .await
        .expect("nbf within the leeway");
    access_log(&app, &token(&|c| c.iat = now + 10))
        .await
        .expect("iat within the leeway");
    access_log(
        &app,
        &token(&|c| c.aud = vec!["other".to_owned(), "econsult".to_owned()].into()),
    )
    .await
    .expect("aud array with ours");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_kid_fetches_the_jwks_once_within_the_rate_limit() {
    let idp = tempfile::tempdir().expect("tempdir");
    let key = |name: &str| {
        DevKeys::load_or_create(&idp.path().join(name))
            .expect("key")
            .with_kid(&format!("{name}-1"))
            .expect("kid")
    };
    let (key_a, key_b, key_c) = (key("a"), key("b"), key("c"));
    let doc = Arc::new(Mutex::new(key_a.jwks().to_owned()));
    let (url, served) = jwks_server_counting(doc.clone()).await;
    let tweak: Tweak = Arc::new(move |c: &mut econsult::Config| {
        c.jwks_url = Some(url.clone());
        c.jwks_refresh = std::time::Duration::from_secs(3600);
        c.issuers = vec![econsult_runtime::auth::DEV_ISSUER.into()];
    });
    let app = TestApp::start_configured(Env::sqlite().await, monday_0800(), Some(tweak)).await;
    let ops = TokenSpec::Ops {
        subject: "ops".into(),
    };
    let now = Utc::now().timestamp();
    assert_eq!(served.load(Ordering::SeqCst), 1, "fetched at start");
    access_log(&app, &key_a.mint(&ops, now, 600).expect("mint"))
        .await
        .expect("key A");
    assert_eq!(
        served.load(Ordering::SeqCst),
        1,
        "a known kid fetches nothing"
    );

    // The identity provider adds key B and signs with it before our periodic refresh.
    *doc.lock().expect("lock") = merged_jwks(&[key_a.jwks(), key_b.jwks()]);
    access_log(&app, &key_b.mint(&ops, now, 600).expect("mint"))
        .await
        .expect("key B after one fetch");
    assert_eq!(served.load(Ordering::SeqCst), 2);

    // Another unknown kid within the rate limit: refused without a fetch.
    *doc.lock().expect("lock") = merged_jwks(&[key_a.jwks(), key_b.jwks(), key_c.jwks()]);
    let err = access_log(&app, &key_c.mint(&ops, now, 600).expect("mint"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert_eq!(served.load(Ordering::SeqCst), 2, "rate-limited");
    app.shutdown().await;
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
