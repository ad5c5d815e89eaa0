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

/// Three patients' reminders fall due at the same moment, so one sender pass takes them all
/// (one read of their preferences, one mark of the sent): each reaches its own patient's
/// phone and e-mail once, every message ends marked sent after one attempt, and later passes
/// send nothing again.
async fn reminders_due_together_reach_each_patient_once_and_are_marked_sent(env: Env) {
    let rig = rig(env, monday_0800()).await;
    let app = &rig.app;
    let nins = seed_gp(app, ORG_A, "gp-1", 1, 3).await;
    // Tuesday 3 March 10:00, 10:15 and 10:30 Oslo: reminders at 09:00, 09:15 and 09:30 UTC
    // on Monday (24 h before).
    let slots = publish(
        app,
        ORG_A,
        "gp-1",
        &[
            at("2026-03-03T09:00:00Z"),
            at("2026-03-03T09:15:00Z"),
            at("2026-03-03T09:30:00Z"),
        ],
        pb::Modality::InPerson,
    )
    .await;
    for (i, nin) in nins.iter().enumerate() {
        set_contact(app, nin, i).await;
        book(app, nin, &slots[i].slot_id).await;
    }
    until("three confirmations by SMS and e-mail", || {
        rig.sms.requests().len() == 3 && rig.smtp.mails().len() == 3
    })
    .await;
    move_clock(app, at("2026-03-02T09:30:00Z")).await;
    until("three reminders by SMS and e-mail", || {
        rig.sms.requests().len() == 6 && rig.smtp.mails().len() == 6
    })
    .await;
    settle().await;
    move_clock(app, at("2026-03-02T12:00:00Z")).await;
    settle().await;
    for i in 0..3 {
        let texts = rig.sms.texts_to(&phone(i));
        assert_eq!(texts.len(), 2, "patient {i}: {texts:?}");
        assert!(texts[1].starts_with("Påminnelse"), "{}", texts[1]);
        let mails = rig.smtp.mails();
        let to_me = mails.iter().filter(|m| m.to == vec![email(i)]).count();
        assert_eq!(
            to_me, 2,
            "patient {i}: a confirmation and a reminder by e-mail"
        );
    }
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT kind, status, attempts FROM notify_messages ORDER BY kind, message_id",
    )
    .fetch_all(app.platform().db.read())
    .await
    .expect("messages");
    assert_eq!(rows.len(), 12, "{rows:?}");
    assert!(
        rows.iter()
            .all(|(_, status, attempts)| (*status, *attempts) == (1, 1)),
        "every message sent after one attempt: {rows:?}"
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
    // Acting for someone no relation lets the caller act for is refused, never applied to the
    // caller's own preferences.
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

/// Someone `age` on 2026-03-02 (the test clock's day), born on `month`/`day` of their year.
fn born(age: u32, month: u32, day: u32, nth: u64) -> String {
    econsult_runtime::nin::synthetic_born(2026 - age, month, day, nth)
        .expect("a number")
        .as_str()
        .to_owned()
}

/// `msg` with `x-on-behalf-of: subject`.
fn on_behalf<T>(msg: T, token: &str, subject: &str) -> tonic::Request<T> {
    let mut r = authed(msg, token);
    r.metadata_mut().insert(
        econsult_runtime::auth::ON_BEHALF_OF_HEADER,
        subject.parse().expect("header"),
    );
    r
}

/// A token of `parent` whose `represents` claim names `children`.
fn parent_token(app: &TestApp, parent: &str, children: &[&str]) -> String {
    app.token(econsult_runtime::auth::TokenSpec::PatientWithRelations {
        nin: parent.into(),
        acr: econsult_runtime::auth::REQUIRED_ACR.into(),
        represents: children
            .iter()
            .map(|c| econsult_runtime::auth::RepresentsClaim {
                pid: (*c).into(),
                relation: "parent".into(),
                protected_address: false,
                name: None,
            })
            .collect(),
        protected_address: false,
        name: None,
    })
}

/// Puts `nins` on the list of `gp_id` of ORG_A.
async fn list(app: &TestApp, gp_id: &str, nins: &[&str]) {
    app.booking()
        .await
        .update_list(authed(
            pb::UpdateListRequest {
                gp_id: gp_id.into(),
                add: nins.iter().map(|n| (*n).to_owned()).collect(),
                remove: vec![],
                idempotency_key: key(),
            },
            &app.ehr_token(ORG_A),
        ))
        .await
        .expect("list");
}

/// How many messages were queued for `recipient` about `appointment_id` (any status).
async fn queued_for(app: &TestApp, recipient: &str, appointment_id: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM notify_messages WHERE patient_nin = $1 AND appointment_id = $2",
    )
    .bind(recipient)
    .bind(appointment_id)
    .fetch_one(app.platform().db.read())
    .await
    .expect("count")
}

/// SetPreferences with phone number `i` (SMS only), as `token`, for `subject` when given.
async fn set_phone(
    app: &TestApp,
    token: &str,
    subject: Option<&str>,
    i: usize,
) -> Result<npb::Preferences, tonic::Status> {
    let msg = npb::SetPreferencesRequest {
        preferences: Some(npb::Preferences {
            phone: phone(i),
            channels: vec![npb::Channel::Sms as i32],
            ..Default::default()
        }),
    };
    let req = match subject {
        Some(s) => on_behalf(msg, token, s),
        None => authed(msg, token),
    };
    notify(app)
        .await
        .set_preferences(req)
        .await
        .map(|r| r.into_inner())
}

/// A parent sets their own preferences for each child (stored apart from the parent's own and
/// the child's): the parent of a child of 10 gets the child's confirmation and reminder; the
/// parent of a child who turns 16 before the reminder gets the confirmation but not the
/// reminder (checked again at send time), nothing of a booking made after the birthday
/// (checked at queue time), and can no longer set preferences for that child.
async fn a_parent_hears_about_a_child_under_16_and_not_after(env: Env) {
    let rig = rig(env, monday_0800()).await;
    let app = &rig.app;
    seed_gp(app, ORG_A, "gp-1", 8, 1).await;
    let parent = born(40, 5, 5, 0);
    let young = born(10, 1, 15, 0);
    // 15 today, 16 on Wednesday 4 March.
    let turning = econsult_runtime::nin::synthetic_born(2010, 3, 4, 0)
        .expect("a number")
        .as_str()
        .to_owned();
    list(app, "gp-1", &[&parent, &young, &turning]).await;
    let token = parent_token(app, &parent, &[&young, &turning]);
    set_phone(app, &token, Some(&young), 20)
        .await
        .expect("for the child of 10");
    set_phone(app, &token, Some(&turning), 21)
        .await
        .expect("for the child of 15");
    // The parent's own preferences are untouched; theirs for the child read back.
    let own = notify(app)
        .await
        .get_preferences(authed(npb::GetPreferencesRequest {}, &token))
        .await
        .expect("own")
        .into_inner();
    assert_eq!(own.phone, "", "{own:?}");
    let for_child = notify(app)
        .await
        .get_preferences(on_behalf(npb::GetPreferencesRequest {}, &token, &young))
        .await
        .expect("for the child")
        .into_inner();
    assert_eq!(for_child.phone, phone(20));
    let slots = publish(
        app,
        ORG_A,
        "gp-1",
        &[
            // Thursday 5 March 10:00 and 11:00 Oslo, Friday 6 March 10:00.
            at("2026-03-05T09:00:00Z"),
            at("2026-03-05T10:00:00Z"),
            at("2026-03-06T09:00:00Z"),
        ],
        pb::Modality::InPerson,
    )
    .await;
    // The parent books for the child of 10; the child of 15 books for themselves.
    app.booking()
        .await
        .book(on_behalf(
            pb::BookRequest {
                target: Some(BookTarget::SlotId(slots[0].slot_id.clone())),
                reason: REASON.into(),
                request_id: String::new(),
                idempotency_key: key(),
            },
            &token,
            &young,
        ))
        .await
        .expect("the parent books for the child");
    book(app, &turning, &slots[1].slot_id).await;
    until("both confirmations to the parent", || {
        rig.sms.texts_to(&phone(20)).len() == 1 && rig.sms.texts_to(&phone(21)).len() == 1
    })
    .await;
    let text = &rig.sms.texts_to(&phone(20))[0];
    assert!(text.contains("torsdag 5. mars kl. 10:00"), "{text}");
    assert!(!text.contains("SENSITIV"), "{text}");
    assert!(
        rig.sms.texts_to(&phone(21))[0].contains("torsdag 5. mars kl. 11:00"),
        "{:?}",
        rig.sms.texts_to(&phone(21))
    );

    // Wednesday: the second child is 16. Both reminders (24 h before) fall due.
    move_clock(app, at("2026-03-04T10:00:00Z")).await;
    until("the reminder to the parent of the child of 10", || {
        rig.sms.texts_to(&phone(20)).len() == 2
    })
    .await;
    assert!(rig.sms.texts_to(&phone(20))[1].starts_with("Påminnelse"));
    // A booking after the birthday is not queued for the parent either.
    let later = book(app, &turning, &slots[2].slot_id).await;
    settle().await;
    assert_eq!(
        rig.sms.texts_to(&phone(21)).len(),
        1,
        "nothing to the parent of a 16-year-old: {:?}",
        rig.sms.texts_to(&phone(21))
    );
    assert_eq!(
        queued_for(app, &parent, &later.appointment_id).await,
        0,
        "not even queued"
    );
    assert!(queued_for(app, &turning, &later.appointment_id).await > 0);
    let refused = set_phone(app, &token, Some(&turning), 21)
        .await
        .expect_err("a parent's access ends at 16");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    assert_eq!(
        refused.message(),
        econsult_runtime::proxy::rule::PARENT_ENDS_AT_16
    );
    rig.app.shutdown().await;
}

/// How a fullmakt holder's hearing about the giver ends.
enum Ending {
    /// The giver revokes the fullmakt.
    Revoked,
    /// The giver calls with a token saying their address is now strictly confidential, which
    /// ends every representation (the fullmakt itself stays in the store, in force).
    ProtectedAddress,
}

/// A fullmakt holder (booking) who set preferences for the giver gets the giver's
/// confirmation; once the giver revokes the fullmakt, neither a new booking's confirmation nor
/// the first appointment's reminder goes to the holder, while the giver still gets theirs.
async fn a_fullmakt_holder_hears_about_the_giver_until_it_is_revoked(env: Env) {
    a_fullmakt_holder_hears_about_the_giver_until(env, Ending::Revoked).await
}

/// As above, ended by the giver's protected address instead: the sender applies the rule the
/// calls apply.
async fn a_fullmakt_holder_hears_nothing_once_the_givers_address_is_protected(env: Env) {
    a_fullmakt_holder_hears_about_the_giver_until(env, Ending::ProtectedAddress).await
}

async fn a_fullmakt_holder_hears_about_the_giver_until(env: Env, ending: Ending) {
    use econsult_proto::proxy::v1 as ppb;
    use econsult_proto::proxy::v1::proxy_service_client::ProxyServiceClient;
    let rig = rig(env, monday_0800()).await;
    let app = &rig.app;
    seed_gp(app, ORG_A, "gp-1", 9, 1).await;
    let giver = born(30, 2, 2, 0);
    let holder = born(45, 3, 3, 0);
    list(app, "gp-1", &[&giver]).await;
    let giver_token = app.patient_token(&giver);
    let holder_token = app.patient_token(&holder);
    set_phone(app, &giver_token, None, 30)
        .await
        .expect("giver's own");
    // Without a fullmakt: refused.
    let refused = set_phone(app, &holder_token, Some(&giver), 31)
        .await
        .expect_err("no relation yet");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    let mut proxy = ProxyServiceClient::new(app.channel().await);
    let f = proxy
        .grant_fullmakt(authed(
            ppb::GrantFullmaktRequest {
                holder_nin: holder.clone(),
                scope: ppb::FullmaktScope::Booking as i32,
                end_date: "2026-12-31".into(),
                idempotency_key: key(),
            },
            &giver_token,
        ))
        .await
        .expect("grant")
        .into_inner();
    set_phone(app, &holder_token, Some(&giver), 31)
        .await
        .expect("holder for the giver");
    let slots = publish(
        app,
        ORG_A,
        "gp-1",
        &[at("2026-03-05T09:00:00Z"), at("2026-03-06T09:00:00Z")],
        pb::Modality::InPerson,
    )
    .await;
    book(app, &giver, &slots[0].slot_id).await;
    until("the confirmation to the giver and the holder", || {
        rig.sms.texts_to(&phone(30)).len() == 1 && rig.sms.texts_to(&phone(31)).len() == 1
    })
    .await;
    match ending {
        Ending::Revoked => {
            proxy
                .revoke_fullmakt(authed(
                    ppb::RevokeFullmaktRequest {
                        fullmakt_id: f.id,
                        idempotency_key: key(),
                    },
                    &giver_token,
                ))
                .await
                .expect("revoke");
        }
        Ending::ProtectedAddress => {
            let protected = app.token(econsult_runtime::auth::TokenSpec::PatientWithRelations {
                nin: giver.clone(),
                acr: econsult_runtime::auth::REQUIRED_ACR.into(),
                represents: vec![],
                protected_address: true,
                name: None,
            });
            set_phone(app, &protected, None, 30)
                .await
                .expect("the giver's own call, with the protected address");
            let refused = set_phone(app, &holder_token, Some(&giver), 31)
                .await
                .expect_err("the holder's own calls are refused at once");
            assert_eq!(
                refused.message(),
                econsult_runtime::proxy::rule::PROTECTED_ADDRESS
            );
        }
    }
    let later = book(app, &giver, &slots[1].slot_id).await;
    until("the second confirmation to the giver", || {
        rig.sms.texts_to(&phone(30)).len() == 2
    })
    .await;
    assert_eq!(
        queued_for(app, &holder, &later.appointment_id).await,
        0,
        "nothing queued for the holder after the end"
    );
    move_clock(app, at("2026-03-04T09:00:00Z")).await;
    until("the giver's reminder", || {
        rig.sms.texts_to(&phone(30)).len() == 3
    })
    .await;
    settle().await;
    assert_eq!(
        rig.sms.texts_to(&phone(31)).len(),
        1,
        "nothing to the holder after the end: {:?}",
        rig.sms.texts_to(&phone(31))
    );
    rig.app.shutdown().await;
}

/// The sender's read of the contact details is in the patient's access log: one row per send
/// by the system "econsult-notify", for operations, saying what it read and why.
async fn the_senders_read_of_a_phone_number_is_in_the_patients_access_log(env: Env) {
    use econsult_proto::audit::v1 as apb;
    use econsult_proto::audit::v1::audit_service_client::AuditServiceClient;
    let rig = rig(env, monday_0800()).await;
    let app = &rig.app;
    let nins = seed_gp(app, ORG_A, "gp-1", 10, 1).await;
    let token = app.patient_token(&nins[0]);
    set_phone(app, &token, None, 40).await.expect("prefs");
    let slots = publish(
        app,
        ORG_A,
        "gp-1",
        &[at("2026-03-05T09:00:00Z")],
        pb::Modality::InPerson,
    )
    .await;
    book(app, &nins[0], &slots[0].slot_id).await;
    until("the confirmation", || {
        rig.sms.texts_to(&phone(40)).len() == 1
    })
    .await;
    let log = AuditServiceClient::new(app.channel().await)
        .list_my_access_log(authed(apb::ListMyAccessLogRequest::default(), &token))
        .await
        .expect("access log")
        .into_inner()
        .entries;
    let sender: Vec<_> = log
        .iter()
        .filter(|e| e.system == econsult_notify::service::SYSTEM_NAME)
        .collect();
    assert_eq!(sender.len(), 1, "one row for the one SMS: {log:?}");
    let e = sender[0];
    assert_eq!(e.role, apb::CallerRole::Ops as i32);
    assert_eq!(e.purpose, apb::Purpose::Operations as i32);
    assert_eq!(e.patient_nin, nins[0]);
    assert_eq!(
        e.description,
        "read your phone number to send a booking confirmation"
    );
    rig.app.shutdown().await;
}

/// The practice's name as the EHR set it (UpsertGp's `practice_name`, validated, read back by
/// GetGp) is what the confirmation names, not the GP.
async fn the_confirmation_names_the_practice_the_ehr_set(env: Env) {
    let rig = rig(env, monday_0800()).await;
    let app = &rig.app;
    let nins = seed_gp(app, ORG_A, "gp-1", 11, 1).await;
    let ehr = app.ehr_token(ORG_A);
    let mut b = app.booking().await;
    let gp = |practice_name: String| pb::UpsertGpRequest {
        gp: Some(pb::Gp {
            gp_id: "gp-1".into(),
            hpr_number: "1000011".into(),
            display_name: "Dr gp-1".into(),
            municipality_number: "0301".into(),
            list_capacity: 2500,
            list_status: pb::ListStatus::Staffed as i32,
            practice_name,
            ..Default::default()
        }),
    };
    let e = b
        .upsert_gp(authed(gp("x".repeat(201)), &ehr))
        .await
        .expect_err("too long");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(
        e.message().starts_with("gp.practice_name"),
        "{}",
        e.message()
    );
    let set = b
        .upsert_gp(authed(gp("  Storgata legesenter ".into()), &ehr))
        .await
        .expect("upsert")
        .into_inner();
    assert_eq!(set.practice_name, "Storgata legesenter");
    set_contact(app, &nins[0], 50).await;
    let slots = publish(
        app,
        ORG_A,
        "gp-1",
        &[at("2026-03-05T09:00:00Z")],
        pb::Modality::InPerson,
    )
    .await;
    book(app, &nins[0], &slots[0].slot_id).await;
    until("the confirmation", || {
        rig.sms.texts_to(&phone(50)).len() == 1
    })
    .await;
    let text = &rig.sms.texts_to(&phone(50))[0];
    assert!(text.contains("Storgata legesenter"), "{text}");
    assert!(!text.contains("Dr gp-1"), "{text}");
    rig.app.shutdown().await;
}

/// A practice's reply to an e-consultation yields one message per channel, naming the
/// practice and the link and nothing of the subject, the patient's text or the reply.
async fn a_reply_to_an_e_consultation_yields_one_message_without_its_text(env: Env) {
    use econsult_proto::consultation::v1 as cpb;
    let rig = rig(env, monday_0800()).await;
    let app = &rig.app;
    let nins = seed_gp(app, ORG_A, "gp-1", 12, 1).await;
    set_contact(app, &nins[0], 60).await;
    let mut c = app.consultation().await;
    let thread = c
        .start_consultation(authed(
            cpb::StartConsultationRequest {
                category: cpb::Category::EConsultation as i32,
                subject: "Utslett SENSITIV-subject".into(),
                body: "Jeg har utslett SENSITIV-body".into(),
                idempotency_key: key(),
                ..Default::default()
            },
            &app.patient_token(&nins[0]),
        ))
        .await
        .expect("start")
        .into_inner()
        .thread
        .expect("thread");
    c.reply(authed(
        cpb::ReplyRequest {
            thread_id: thread.thread_id,
            body: "Bruk kremen SENSITIV-reply".into(),
            ask_patient: false,
            clinician_hpr_number: "1000012".into(),
            idempotency_key: key(),
            ..Default::default()
        },
        &app.ehr_token(ORG_A),
    ))
    .await
    .expect("reply");
    until("the notice of the reply", || {
        rig.sms.texts_to(&phone(60)).len() == 1 && rig.smtp.mails().len() == 1
    })
    .await;
    settle().await;
    let texts = rig.sms.texts_to(&phone(60));
    assert_eq!(texts.len(), 1, "one SMS: {texts:?}");
    assert!(
        texts[0].starts_with("Du har fått svar fra Dr gp-1"),
        "{}",
        texts[0]
    );
    assert!(
        texts[0].contains("https://econsult.test/logg-inn"),
        "{}",
        texts[0]
    );
    let mails = rig.smtp.mails();
    assert_eq!(mails.len(), 1, "one e-mail");
    for text in [&texts[0], &mails[0].data] {
        for secret in ["SENSITIV", "Utslett", "utslett", "kremen"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
    }
    rig.app.shutdown().await;
}

/// A video appointment's waiting room opening is notified 15 minutes before the start, on the
/// injectable clock: not a minute before.
async fn a_video_appointment_yields_the_opening_message_at_its_time(env: Env) {
    let rig = rig(env, monday_0800()).await;
    let app = &rig.app;
    let nins = seed_gp(app, ORG_A, "gp-1", 13, 1).await;
    set_phone(app, &app.patient_token(&nins[0]), None, 70)
        .await
        .expect("prefs");
    // Today 14:00 Oslo: the opening at 13:45, no reminder (the lead time has passed).
    let slots = publish(
        app,
        ORG_A,
        "gp-1",
        &[at("2026-03-02T13:00:00Z")],
        pb::Modality::Video,
    )
    .await;
    book(app, &nins[0], &slots[0].slot_id).await;
    until("the confirmation", || {
        rig.sms.texts_to(&phone(70)).len() == 1
    })
    .await;
    move_clock(app, at("2026-03-02T12:44:00Z")).await;
    settle().await;
    assert_eq!(rig.sms.texts_to(&phone(70)).len(), 1, "not before 13:45");
    move_clock(app, at("2026-03-02T12:45:00Z")).await;
    until("the opening", || rig.sms.texts_to(&phone(70)).len() == 2).await;
    let text = &rig.sms.texts_to(&phone(70))[1];
    assert!(
        text.starts_with("Venterommet for videokonsultasjonen din hos Dr gp-1"),
        "{text}"
    );
    assert!(text.contains("kl. 14:00"), "{text}");
    move_clock(app, at("2026-03-02T13:30:00Z")).await;
    settle().await;
    assert_eq!(rig.sms.texts_to(&phone(70)).len(), 2, "once");
    rig.app.shutdown().await;
}

/// E-mail over STARTTLS: the sender, required to upgrade and trusting the test's own CA
/// (`ca_pem`), delivers over the upgraded connection and authenticates only after it; a
/// server that offers no STARTTLS gets neither the credentials nor the mail (no plaintext
/// fallback).
async fn e_mail_requires_starttls_and_never_falls_back_to_plaintext(env: Env) {
    let pki = fake_gateways::TestPki::generate();
    let tls_server = SmtpServer::start_tls(pki.server.clone()).await;
    let smtp_cfg = |port: u16| econsult_notify::SmtpConfig {
        host: "127.0.0.1".into(),
        port,
        security: econsult_notify::SmtpSecurity::StartTls,
        credentials: Some(("econsult".into(), "smtp-password".into())),
        from: "Legekontoret <ikke-svar@legekontor.test>".into(),
        ca_pem: Some(pki.ca_pem.clone().into_bytes()),
        timeout: Duration::from_secs(5),
    };
    let cfg = smtp_cfg(tls_server.port);
    let tweak: Tweak = Arc::new(move |c: &mut econsult::Config| {
        c.notify.smtp = Some(cfg.clone());
        c.notify.poll = Duration::from_millis(100);
    });
    let app = TestApp::start_configured(env, monday_0800(), Some(tweak)).await;
    let nins = seed_gp(&app, ORG_A, "gp-1", 14, 1).await;
    notify(&app)
        .await
        .set_preferences(authed(
            npb::SetPreferencesRequest {
                preferences: Some(npb::Preferences {
                    email: email(80),
                    ..Default::default()
                }),
            },
            &app.patient_token(&nins[0]),
        ))
        .await
        .expect("prefs");
    let slots = publish(
        &app,
        ORG_A,
        "gp-1",
        &[at("2026-03-05T09:00:00Z")],
        pb::Modality::InPerson,
    )
    .await;
    book(&app, &nins[0], &slots[0].slot_id).await;
    until("the e-mail over TLS", || !tls_server.mails().is_empty()).await;
    let mails = tls_server.mails();
    assert_eq!(mails.len(), 1);
    assert!(mails[0].tls, "received over the upgraded connection");
    assert_eq!(mails[0].to, vec![email(80)]);
    assert_eq!(
        tls_server.auths.lock().expect("auths").len(),
        1,
        "authenticated (after the upgrade: AUTH is only read in the TLS session here)"
    );
    app.shutdown().await;

    // A server without STARTTLS: refused, nothing sent in the clear.
    use econsult_notify::transport::{Outgoing, SendError, SmtpTransport, Transport as _};
    let plain = SmtpServer::start().await;
    let t = SmtpTransport::new(&smtp_cfg(plain.port)).expect("transport");
    let r = t
        .send(&Outgoing {
            message_id: "m-1".into(),
            to: email(81),
            subject: "Timen din er bestilt".into(),
            body: "tekst".into(),
            kind: "booked",
        })
        .await;
    let Err(SendError::Temporary(reason) | SendError::Permanent(reason)) = r else {
        panic!("sent without STARTTLS");
    };
    assert!(reason.to_lowercase().contains("starttls"), "{reason}");
    assert!(plain.mails().is_empty(), "no mail in plaintext");
    assert!(
        plain.auths.lock().expect("auths").is_empty(),
        "no credentials in plaintext"
    );
}

on_both_backends!(
    kill_9_between_the_event_and_the_send_gives_exactly_one_message,
    a_booking_yields_one_confirmation_and_one_reminder_at_the_lead_time,
    reminders_due_together_reach_each_patient_once_and_are_marked_sent,
    a_practice_cancellation_is_notified_and_cancels_the_reminder,
    a_waitlist_offer_goes_to_the_first_then_after_its_window_to_the_second,
    quiet_hours_hold_an_sms_until_eight_but_not_a_same_day_change,
    a_5xx_is_retried_and_a_4xx_fails_with_its_reason_as_a_dead_letter,
    preferences_are_validated_sealed_and_their_reads_logged,
    a_parent_hears_about_a_child_under_16_and_not_after,
    a_fullmakt_holder_hears_about_the_giver_until_it_is_revoked,
    a_fullmakt_holder_hears_nothing_once_the_givers_address_is_protected,
    the_senders_read_of_a_phone_number_is_in_the_patients_access_log,
    the_confirmation_names_the_practice_the_ehr_set,
    a_reply_to_an_e_consultation_yields_one_message_without_its_text,
    a_video_appointment_yields_the_opening_message_at_its_time,
    e_mail_requires_starttls_and_never_falls_back_to_plaintext,
);
