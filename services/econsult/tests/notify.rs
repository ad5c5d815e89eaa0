//! The notify service end to end: a real server, a real SMTP server and an SMS gateway (both
//! started here on loopback, `fake_gateways.rs`), the injectable clock for reminders, holds and
//! quiet hours (no test sleeps through a lead time: it moves the clock and waits for the
//! sender's next pass). Each test runs on SQLite and on PostgreSQL + Redis.

mod common;
#[path = "common/fake_gateways.rs"]
mod fake_gateways;

use chrono::{DateTime, Utc};
use common::*;
use econsult_proto::booking::v1 as pb;
use econsult_proto::booking::v1::book_request::Target as BookTarget;
use econsult_proto::notify::v1 as npb;
use econsult_proto::notify::v1::notify_service_client::NotifyServiceClient;
use fake_gateways::{SmsGateway, SmtpServer};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SECRET: &str = "gateway-secret";
/// Health information the patient gives when booking: it must never reach a message.
const REASON: &str = "brystsmerter SENSITIV-7731";

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("time")
        .with_timezone(&Utc)
}

struct Rig {
    app: TestApp,
    smtp: SmtpServer,
    sms: SmsGateway,
}

async fn rig(env: Env, now: DateTime<Utc>) -> Rig {
    let smtp = SmtpServer::start().await;
    let sms = SmsGateway::start().await;
    let (smtp_port, sms_url) = (smtp.port, sms.url.clone());
    let tweak: Tweak = Arc::new(move |c: &mut econsult::Config| {
        c.notify.smtp = Some(econsult_notify::SmtpConfig {
            host: "127.0.0.1".into(),
            port: smtp_port,
            security: econsult_notify::SmtpSecurity::None,
            credentials: Some(("econsult".into(), "smtp-password".into())),
            from: "Legekontoret <ikke-svar@legekontor.test>".into(),
            ca_pem: None,
            timeout: Duration::from_secs(5),
        });
        c.notify.sms = Some(econsult_notify::SmsConfig {
            url: sms_url.clone(),
            secret: SECRET.into(),
            sender: "Legekontor".into(),
            timeout: Duration::from_secs(5),
        });
        c.notify.poll = Duration::from_millis(100);
        c.notify.retry_base = Duration::from_secs(60);
        c.notify.max_attempts = 3;
        c.notify.login_link = "https://econsult.test/logg-inn".into();
        c.booking.waitlist_hold_ttl = chrono::Duration::minutes(30);
    });
    let app = TestApp::start_configured(env, now, Some(tweak)).await;
    Rig { app, smtp, sms }
}

async fn notify(app: &TestApp) -> NotifyServiceClient<tonic::transport::Channel> {
    NotifyServiceClient::new(app.channel().await)
}

/// Phone of the `i`th test patient (a Norwegian mobile).
fn phone(i: usize) -> String {
    format!("+479{:07}", 1_000_000 + i)
}

fn email(i: usize) -> String {
    format!("pasient{i}@example.test")
}

async fn set_contact(app: &TestApp, nin: &str, i: usize) {
    notify(app)
        .await
        .set_preferences(authed(
            npb::SetPreferencesRequest {
                preferences: Some(npb::Preferences {
                    email: email(i),
                    phone: phone(i),
                    ..Default::default()
                }),
            },
            &app.patient_token(nin),
        ))
        .await
        .expect("set preferences");
}

async fn book(app: &TestApp, nin: &str, slot_id: &str) -> pb::Appointment {
    app.booking()
        .await
        .book(authed(
            pb::BookRequest {
                target: Some(BookTarget::SlotId(slot_id.into())),
                reason: REASON.into(),
                request_id: String::new(),
                idempotency_key: key(),
            },
            &app.patient_token(nin),
        ))
        .await
        .expect("book")
        .into_inner()
}

/// Waits (real time, up to 20 s) until `f` holds.
async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Lets the sender make several passes (it polls every 100 ms) and the catch-up one.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(2500)).await;
}

/// Moves the clock and lets the sender look.
async fn move_clock(app: &TestApp, to: DateTime<Utc>) {
    app.clock.set(to);
    tokio::time::sleep(Duration::from_millis(400)).await;
}

fn signature_ok(r: &fake_gateways::GatewayRequest) -> bool {
    r.headers.get("x-econsult-signature").map(String::as_str)
        == Some(econsult_notify::transport::sign(SECRET, r.body.as_bytes()).as_str())
}

/// Booking yields one confirmation on each channel, signed, in bokmål, with the time, the
/// modality, the practice and the link, and nothing of the reason for the visit; the reminder
/// fires once at the lead time (24 h before) and not before it.
async fn a_booking_yields_one_confirmation_and_one_reminder_at_the_lead_time(env: Env) {
    let rig = rig(env, monday_0800()).await;
    let app = &rig.app;
    let nins = seed_gp(app, ORG_A, "gp-1", 1, 1).await;
    set_contact(app, &nins[0], 0).await;
    // Tuesday 3 March 10:00 Oslo.
    let slots = publish(
        app,
        ORG_A,
        "gp-1",
        &[at("2026-03-03T09:00:00Z")],
        pb::Modality::InPerson,
    )
    .await;
    book(app, &nins[0], &slots[0].slot_id).await;

    until("the confirmation by SMS and e-mail", || {
        rig.sms.requests().len() == 1 && rig.smtp.mails().len() == 1
    })
    .await;
    settle().await;
    let sms = rig.sms.requests();
    assert_eq!(sms.len(), 1, "one SMS: {sms:?}");
    assert!(signature_ok(&sms[0]), "HMAC-SHA256 of the body");
    let j = sms[0].json();
    assert_eq!(j["to"], phone(0));
    let text = j["text"].as_str().expect("text");
    assert!(text.contains("tirsdag 3. mars kl. 10:00"), "{text}");
    assert!(text.contains("time på legekontoret"), "{text}");
    assert!(text.contains("Dr gp-1"), "{text}");
    assert!(text.contains("https://econsult.test/logg-inn"), "{text}");
    assert!(
        !text.contains("SENSITIV") && !text.contains("bryst"),
        "{text}"
    );
    assert_eq!(
        sms[0].headers.get("idempotency-key").map(String::as_str),
        j["message_id"].as_str()
    );
    let mails = rig.smtp.mails();
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0].to, vec![email(0)]);
    assert!(
        mails[0].data.contains("Subject: Timen din er bestilt"),
        "{}",
        mails[0].data
    );
    assert!(!mails[0].data.contains("SENSITIV"), "{}", mails[0].data);
    assert_eq!(
        rig.smtp
            .auths
            .lock()
            .expect("auths")
            .first()
            .map(String::as_str),
        Some("\0econsult\0smtp-password"),
        "the client authenticated"
    );

    // One minute before the lead time: nothing.
    move_clock(app, at("2026-03-02T08:59:00Z")).await;
    settle().await;
    assert_eq!(rig.sms.requests().len(), 1, "no reminder before its time");
    // At the lead time: the reminder, once.
    move_clock(app, at("2026-03-02T09:00:00Z")).await;
    until("the reminder", || rig.sms.requests().len() == 2).await;
    move_clock(app, at("2026-03-02T12:00:00Z")).await;
    settle().await;
    let texts = rig.sms.texts_to(&phone(0));
    assert_eq!(texts.len(), 2, "{texts:?}");
    assert!(texts[1].starts_with("Påminnelse"), "{}", texts[1]);
    assert_eq!(
        rig.smtp.mails().len(),
        2,
        "the reminder by e-mail too, once"
    );
    rig.app.shutdown().await;
}

/// A practice cancellation is notified at once (the next sender pass after the relay's), and
/// the appointment's reminder is never sent.
async fn a_practice_cancellation_is_notified_and_cancels_the_reminder(env: Env) {
    let rig = rig(env, monday_0800()).await;
    let app = &rig.app;
    let nins = seed_gp(app, ORG_A, "gp-1", 2, 1).await;
    set_contact(app, &nins[0], 0).await;
    let slots = publish(
        app,
        ORG_A,
        "gp-1",
        &[at("2026-03-03T09:00:00Z")],
        pb::Modality::InPerson,
    )
    .await;
    let appt = book(app, &nins[0], &slots[0].slot_id).await;
    until("the confirmation", || rig.sms.requests().len() == 1).await;
    app.booking()
        .await
        .cancel_by_practice(authed(
            pb::CancelByPracticeRequest {
                appointment_id: appt.appointment_id.clone(),
                reason: "legen er syk".into(),
                idempotency_key: key(),
            },
            &app.ehr_token(ORG_A),
        ))
        .await
        .expect("practice cancels");
    let t0 = Instant::now();
    until("the cancellation", || rig.sms.requests().len() == 2).await;
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "took {:?}",
        t0.elapsed()
    );
    let texts = rig.sms.texts_to(&phone(0));
    assert!(
        texts[1].contains("har avlyst timen din tirsdag 3. mars kl. 10:00"),
        "{}",
        texts[1]
    );
    assert!(
        !texts[1].contains("syk"),
        "the practice's reason is not sent: {}",
        texts[1]
    );
    // Past the lead time: no reminder of a cancelled appointment.
    move_clock(app, at("2026-03-02T10:00:00Z")).await;
    settle().await;
    assert_eq!(
        rig.sms.requests().len(),
        2,
        "{:?}",
        rig.sms.texts_to(&phone(0))
    );
    rig.app.shutdown().await;
}

/// A freed slot goes to the first on the waitlist as a hold, and the offer says until when;
/// when the hold lapses unused, the second in line gets the slot and its own offer.
async fn a_waitlist_offer_goes_to_the_first_then_after_its_window_to_the_second(env: Env) {
    let rig = rig(env, monday_0800()).await;
    let app = &rig.app;
    let nins = seed_gp(app, ORG_A, "gp-1", 3, 3).await;
    for (i, n) in nins.iter().enumerate() {
        set_contact(app, n, i).await;
    }
    let slots = publish(
        app,
        ORG_A,
        "gp-1",
        &[at("2026-03-04T09:00:00Z")],
        pb::Modality::Video,
    )
    .await;
    let appt = book(app, &nins[0], &slots[0].slot_id).await;
    let mut c = app.booking().await;
    for n in &nins[1..] {
        // One after the other (the line is ordered by when each joined).
        app.clock.advance(chrono::Duration::minutes(1));
        c.join_waitlist(authed(
            pb::JoinWaitlistRequest {
                latest_date: "2026-03-10".into(),
                modality: 0,
                idempotency_key: key(),
                request_id: String::new(),
            },
            &app.patient_token(n),
        ))
        .await
        .expect("join");
    }
    c.cancel(authed(
        pb::CancelRequest {
            appointment_id: appt.appointment_id,
            idempotency_key: key(),
        },
        &app.patient_token(&nins[0]),
    ))
    .await
    .expect("cancel");
    until("the offer to the first in line", || {
        rig.sms.texts_to(&phone(1)).len() == 1
    })
    .await;
    let offer = &rig.sms.texts_to(&phone(1))[0];
    // Held for 30 minutes from 08:02 Oslo.
    assert!(offer.contains("til mandag 2. mars kl. 08:32"), "{offer}");
    assert!(offer.contains("onsdag 4. mars kl. 10:00"), "{offer}");
    assert!(offer.contains("?hold="), "{offer}");
    assert!(rig.sms.texts_to(&phone(2)).is_empty());
    assert_eq!(
        rig.sms.texts_to(&phone(0)).len(),
        1,
        "the patient's own cancellation is not notified"
    );

    // The window lapses; the sweeper (every 5 s) gives the slot to the second in line.
    app.clock.set(at("2026-03-02T07:33:00Z"));
    until("the offer to the second in line", || {
        rig.sms.texts_to(&phone(2)).len() == 1
    })
    .await;
    let offer = &rig.sms.texts_to(&phone(2))[0];
    assert!(offer.contains("til mandag 2. mars kl. 09:03"), "{offer}");
    assert_eq!(
        rig.sms.texts_to(&phone(1)).len(),
        1,
        "the first got one offer"
    );
    rig.app.shutdown().await;
}

/// An SMS due in the quiet hours (21:00–08:00 Oslo) waits until 08:00, while the e-mail goes
/// at once; a same-day change is sent at once.
async fn quiet_hours_hold_an_sms_until_eight_but_not_a_same_day_change(env: Env) {
    // Monday 22:30 Oslo.
    let rig = rig(env, at("2026-03-02T21:30:00Z")).await;
    let app = &rig.app;
    let nins = seed_gp(app, ORG_A, "gp-1", 4, 2).await;
    set_contact(app, &nins[0], 0).await;
    set_contact(app, &nins[1], 1).await;
    let slots = publish(
        app,
        ORG_A,
        "gp-1",
        &[at("2026-03-04T09:00:00Z"), at("2026-03-02T22:30:00Z")],
        pb::Modality::InPerson,
    )
    .await;
    book(app, &nins[0], &slots[0].slot_id).await;
    until("the e-mail", || rig.smtp.mails().len() == 1).await;
    // Tonight 23:30: a same-day booking, confirmed by SMS at once.
    book(app, &nins[1], &slots[1].slot_id).await;
    until("the same-day SMS", || {
        rig.sms.texts_to(&phone(1)).len() == 1
    })
    .await;
    settle().await;
    assert!(rig.sms.texts_to(&phone(0)).is_empty(), "no SMS at 22:30");
    move_clock(app, at("2026-03-03T06:59:00Z")).await;
    settle().await;
    assert!(rig.sms.texts_to(&phone(0)).is_empty(), "none at 07:59");
    move_clock(app, at("2026-03-03T07:00:00Z")).await;
    until("the SMS at 08:00", || {
        rig.sms.texts_to(&phone(0)).len() == 1
    })
    .await;
    rig.app.shutdown().await;
}

/// A gateway answering 5xx is retried (after the backoff, same message id) until it takes the
/// message; one answering 4xx fails the message at once with its reason, listed for ops as a
/// dead letter, and is not asked again.
async fn a_5xx_is_retried_and_a_4xx_fails_with_its_reason_as_a_dead_letter(env: Env) {
    let rig = rig(env, monday_0800()).await;
    let app = &rig.app;
    let nins = seed_gp(app, ORG_A, "gp-1", 5, 2).await;
    set_contact(app, &nins[0], 0).await;
    let slots = publish(
        app,
        ORG_A,
        "gp-1",
        &[at("2026-03-05T09:00:00Z"), at("2026-03-05T10:00:00Z")],
        pb::Modality::Phone,
    )
    .await;
    rig.sms.answer(503, "busy");
    book(app, &nins[0], &slots[0].slot_id).await;
    until("the first attempt", || rig.sms.requests().len() == 1).await;
    settle().await;
    assert_eq!(rig.sms.requests().len(), 1, "no retry before the backoff");
    move_clock(app, at("2026-03-02T07:01:01Z")).await;
    until("the retry", || rig.sms.requests().len() == 2).await;
    let r = rig.sms.requests();
    assert_eq!(
        r[0].json()["message_id"],
        r[1].json()["message_id"],
        "the same message"
    );

    // A 4xx: failed with the gateway's reason, no retry.
    notify(app)
        .await
        .set_preferences(authed(
            npb::SetPreferencesRequest {
                preferences: Some(npb::Preferences {
                    phone: "+4741234567".into(),
                    channels: vec![npb::Channel::Sms as i32],
                    ..Default::default()
                }),
            },
            &app.patient_token(&nins[1]),
        ))
        .await
        .expect("prefs");
    rig.sms.answer(400, "unknown number");
    book(app, &nins[1], &slots[1].slot_id).await;
    until("the refused attempt", || {
        rig.sms.texts_to("+4741234567").len() == 1
    })
    .await;
    move_clock(app, at("2026-03-02T09:00:00Z")).await;
    settle().await;
    assert_eq!(
        rig.sms.texts_to("+4741234567").len(),
        1,
        "no retry of a 4xx"
    );
    let dead = notify(app)
        .await
        .list_dead_letters(authed(
            npb::ListDeadLettersRequest::default(),
            &app.ops_token(),
        ))
        .await
        .expect("dead letters")
        .into_inner()
        .dead_letters;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].status, "failed");
    assert_eq!(dead[0].channel, "sms");
    assert_eq!(dead[0].kind, "booked");
    assert_eq!(dead[0].reason, "gateway answered 400: unknown number");
    rig.app.shutdown().await;
}

/// Preferences: a bad e-mail or phone is INVALID_ARGUMENT naming the field; what is stored
/// comes back normalised, contact details are not stored in the clear, and reading them is in
/// the patient's access log.
async fn preferences_are_validated_sealed_and_their_reads_logged(env: Env) {
    let rig = rig(env, monday_0800()).await;
    let app = &rig.app;
    let nins = seed_gp(app, ORG_A, "gp-1", 6, 1).await;
    let token = app.patient_token(&nins[0]);
    let mut n = notify(app).await;
    for (p, field) in [
        (
            npb::Preferences {
                email: "not-an-address".into(),
                ..Default::default()
            },
            "preferences.email",
        ),
        (
            npb::Preferences {
                phone: "+47 22 33 44 55".into(),
                ..Default::default()
            },
            "preferences.phone",
        ),
        (
            npb::Preferences {
                phone: "12345".into(),
                ..Default::default()
            },
            "preferences.phone",
        ),
        (
            npb::Preferences {
                reminder_lead_minutes: vec![5],
                ..Default::default()
            },
            "preferences.reminder_lead_minutes",
        ),
    ] {
        let e = n
            .set_preferences(authed(
                npb::SetPreferencesRequest {
                    preferences: Some(p),
                },
                &token,
            ))
            .await
            .expect_err(field);
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().starts_with(field), "{}", e.message());
    }
    let set = n
        .set_preferences(authed(
            npb::SetPreferencesRequest {
                preferences: Some(npb::Preferences {
                    email: "kari@example.test".into(),
                    phone: "912 34 567".into(),
                    reminder_lead_minutes: vec![7 * 24 * 60, 120],
                    language: npb::Language::Nn as i32,
                    ..Default::default()
                }),
            },
            &token,
        ))
        .await
        .expect("set")
        .into_inner();
    assert_eq!(set.phone, "+4791234567");
    let got = n
        .get_preferences(authed(npb::GetPreferencesRequest {}, &token))
        .await
        .expect("get")
        .into_inner();
    assert_eq!(got, set);
    // Preferences are the person's own: acting for someone else is refused, never applied to
    // the caller's own preferences.
    let mut for_other = authed(npb::GetPreferencesRequest {}, &token);
    for_other.metadata_mut().insert(
        econsult_runtime::auth::ON_BEHALF_OF_HEADER,
        econsult_runtime::nin::synthetic(6_600_001)
            .as_str()
            .parse()
            .expect("header"),
    );
    let refused = n.get_preferences(for_other).await.expect_err("on behalf");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    let db = &app.platform().db;
    let stored: (Option<String>, Option<String>) =
        sqlx::query_as("SELECT email_sealed, phone_sealed FROM notify_preferences")
            .fetch_one(db.read())
            .await
            .expect("row");
    let (e, p) = (stored.0.expect("email"), stored.1.expect("phone"));
    assert!(
        !e.contains("kari") && !p.contains("9123"),
        "sealed: {e} {p}"
    );
    let logged: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM audit_log WHERE action LIKE '/econsult.notify.v1.NotifyService/%'",
    )
    .fetch_one(db.read())
    .await
    .expect("audit");
    assert!(logged >= 2, "set and get are in the access log: {logged}");
    rig.app.shutdown().await;
}

/// Kills the server (abort, like `kill -9`) right after the relay sequenced the booking's
/// event and before anything consumed it; after a restart the patient gets exactly one
/// confirmation.
async fn kill_9_between_the_event_and_the_send_gives_exactly_one_message(env: Env) {
    use std::process::{Command, Stdio};
    // E-mail: no quiet hours, so the test means the same at any hour.
    let smtp = SmtpServer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let db_url = env
        .database_url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", dir.path().join("econsult.db").display()));
    let mut extra = vec![
        "--database-url".to_owned(),
        db_url,
        "--notify-smtp-host".to_owned(),
        "127.0.0.1".to_owned(),
        "--notify-smtp-port".to_owned(),
        smtp.port.to_string(),
        "--notify-smtp-security".to_owned(),
        "none".to_owned(),
    ];
    if let Some(r) = &env.redis_url {
        extra.extend([
            "--redis-url".to_owned(),
            r.clone(),
            "--redis-namespace".to_owned(),
            format!("notify-crash-{}", uuid::Uuid::new_v4().simple()),
        ]);
    }
    let spawn = |failpoint: Option<&str>| {
        let port = free_port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_econsult"));
        cmd.arg("--data-dir")
            .arg(dir.path())
            .arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--metrics-listen")
            .arg(format!("127.0.0.1:{}", free_port()))
            .args(&extra)
            .env_remove("ECONSULT_FAILPOINT")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(fp) = failpoint {
            cmd.env("ECONSULT_FAILPOINT", fp);
        }
        (cmd.spawn().expect("spawn econsult"), port)
    };
    let connect = |port: u16| async move {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(ch) =
                tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{port}"))
                    .expect("uri")
                    .connect()
                    .await
            {
                return ch;
            }
            assert!(Instant::now() < deadline, "server did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let keys = econsult_runtime::auth::DevKeys::load_or_create(dir.path()).expect("keys");
    let now = Utc::now().timestamp();
    let nin = econsult_runtime::nin::synthetic(777).as_str().to_owned();
    let mint = |spec| keys.mint(&spec, now, 600).expect("mint");
    let ehr = mint(econsult_runtime::auth::TokenSpec::Ehr {
        client_id: "epj".into(),
        org_number: ORG_A.into(),
        scopes: vec![
            "econsult:booking.write".into(),
            "econsult:booking.read".into(),
        ],
    });
    let patient = mint(econsult_runtime::auth::TokenSpec::Patient {
        nin: nin.clone(),
        acr: econsult_runtime::auth::REQUIRED_ACR.into(),
    });

    let (mut child, port) = spawn(Some("relay-after-sequence"));
    let ch = connect(port).await;
    let mut b = pb::booking_service_client::BookingServiceClient::new(ch.clone());
    b.upsert_gp(authed(
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
        &ehr,
    ))
    .await
    .expect("gp");
    b.update_list(authed(
        pb::UpdateListRequest {
            gp_id: "gp-1".into(),
            add: vec![nin.clone()],
            remove: vec![],
            idempotency_key: key(),
        },
        &ehr,
    ))
    .await
    .expect("list");
    let start = Utc::now() + chrono::Duration::days(2);
    let slots = b
        .publish_slots(authed(
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
            &ehr,
        ))
        .await
        .expect("slots")
        .into_inner()
        .slots;
    NotifyServiceClient::new(ch.clone())
        .set_preferences(authed(
            npb::SetPreferencesRequest {
                preferences: Some(npb::Preferences {
                    email: email(9),
                    ..Default::default()
                }),
            },
            &patient,
        ))
        .await
        .expect("prefs");
    let _ = b
        .book(authed(
            pb::BookRequest {
                target: Some(BookTarget::SlotId(slots[0].slot_id.clone())),
                reason: REASON.into(),
                request_id: String::new(),
                idempotency_key: key(),
            },
            &patient,
        ))
        .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "the failpoint did not fire");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!status.success(), "aborted: {status:?}");
    assert!(smtp.mails().is_empty(), "nothing sent before the crash");

    let (mut child, _port) = spawn(None);
    until("the confirmation after the restart", || {
        !smtp.mails().is_empty()
    })
    .await;
    // Catch-up passes and redeliveries: still one.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(smtp.mails().len(), 1, "{:?}", smtp.mails());
    let _ = child.kill();
    let _ = child.wait();
    let db = econsult_runtime::db::Db::connect(
        &env.database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", dir.path().join("econsult.db").display())),
    )
    .await
    .expect("db");
    let queued: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM notify_messages WHERE kind = 'booked'")
            .fetch_one(db.read())
            .await
            .expect("count");
    assert_eq!(queued, 1, "one confirmation queued for the one event");
    db.close().await;
}

on_both_backends!(
    kill_9_between_the_event_and_the_send_gives_exactly_one_message,
    a_booking_yields_one_confirmation_and_one_reminder_at_the_lead_time,
    a_practice_cancellation_is_notified_and_cancels_the_reminder,
    a_waitlist_offer_goes_to_the_first_then_after_its_window_to_the_second,
    quiet_hours_hold_an_sms_until_eight_but_not_a_same_day_change,
    a_5xx_is_retried_and_a_4xx_fails_with_its_reason_as_a_dead_letter,
    preferences_are_validated_sealed_and_their_reads_logged,
);
