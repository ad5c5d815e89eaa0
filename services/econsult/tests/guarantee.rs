//! The guarantee engine end to end (issue 31): a practice whose patient's own GP has no slot
//! within five working days. Monday 2 March 2026 08:00 Oslo is day 0; the target date is Monday
//! 9 March. Each test runs on SQLite and on PostgreSQL + Redis, against the real server.

mod common;
#[path = "common/fake_gateways.rs"]
#[allow(dead_code)]
mod fake_gateways;

use chrono::{DateTime, Utc};
use common::*;
use econsult_proto::booking::v1 as pb;
use econsult_proto::booking::v1::book_request::Target as BookTarget;
use econsult_proto::consultation::v1 as cpb;
use econsult_proto::notify::v1 as npb;
use econsult_proto::notify::v1::notify_service_client::NotifyServiceClient;
use econsult_proto::stats::v1 as spb;
use fake_gateways::{SmsGateway, SmtpServer};
use pb::GuaranteeStep as S;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_stream::StreamExt as _;
use tonic::Code;

const TARGET: &str = "2026-03-09";
const OWN: &str = "your GP has no free appointment within five working days";

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("time")
        .with_timezone(&Utc)
}

async fn find(app: &TestApp, nin: &str) -> pb::FindSlotsResponse {
    app.booking()
        .await
        .find_slots(authed(
            pb::FindSlotsRequest::default(),
            &app.patient_token(nin),
        ))
        .await
        .expect("find")
        .into_inner()
}

async fn book(app: &TestApp, nin: &str, target: BookTarget) -> pb::Appointment {
    app.booking()
        .await
        .book(authed(
            pb::BookRequest {
                target: Some(target),
                reason: String::new(),
                request_id: String::new(),
                idempotency_key: key(),
            },
            &app.patient_token(nin),
        ))
        .await
        .expect("book")
        .into_inner()
}

async fn cancel(app: &TestApp, nin: &str, id: &str) -> Result<pb::Appointment, tonic::Status> {
    app.booking()
        .await
        .cancel(authed(
            pb::CancelRequest {
                appointment_id: id.into(),
                idempotency_key: key(),
            },
            &app.patient_token(nin),
        ))
        .await
        .map(|r| r.into_inner())
}

async fn join_priority(
    app: &TestApp,
    nin: &str,
    request_id: &str,
) -> Result<pb::WaitlistEntry, tonic::Status> {
    app.booking()
        .await
        .join_waitlist(authed(
            pb::JoinWaitlistRequest {
                latest_date: String::new(),
                modality: 0,
                idempotency_key: key(),
                request_id: request_id.into(),
            },
            &app.patient_token(nin),
        ))
        .await
        .map(|r| r.into_inner())
}

async fn mine(app: &TestApp, nin: &str) -> pb::ListMyBookingsResponse {
    app.booking()
        .await
        .list_my_bookings(authed(
            pb::ListMyBookingsRequest {
                include_past: false,
            },
            &app.patient_token(nin),
        ))
        .await
        .expect("mine")
        .into_inner()
}

async fn set_policy(
    app: &TestApp,
    org: &str,
    steps: &[i32],
    threshold: u32,
) -> Result<pb::GuaranteePolicy, tonic::Status> {
    app.booking()
        .await
        .set_guarantee_policy(authed(
            pb::SetGuaranteePolicyRequest {
                steps: steps.to_vec(),
                unmet_alert_threshold: threshold,
                idempotency_key: key(),
            },
            &app.ehr_token(org),
        ))
        .await
        .map(|r| r.into_inner())
}

async fn get_policy(app: &TestApp, token: &str) -> Result<pb::GuaranteePolicy, tonic::Status> {
    app.booking()
        .await
        .get_guarantee_policy(authed(pb::GetGuaranteePolicyRequest {}, token))
        .await
        .map(|r| r.into_inner())
}

/// The § 22 figures of `org` (as its EHR reads them) for day 0 2 March, once `want(figures)`
/// holds (the searches' requests are written within a second).
async fn figures(
    app: &TestApp,
    org: &str,
    want: impl Fn(&spb::GetBookingAccessibilityResponse) -> bool,
) -> spb::GetBookingAccessibilityResponse {
    accessibility_when(app, org, "2026-03-02", "2026-03-02", want).await
}

fn steps(g: &[pb::GuaranteeOffer]) -> Vec<i32> {
    g.iter().map(|o| o.step).collect()
}

fn all_steps() -> Vec<i32> {
    [
        S::Colleague,
        S::VideoOrPhone,
        S::EConsultation,
        S::PriorityWaitlist,
        S::TellPractice,
    ]
    .iter()
    .map(|s| *s as i32)
    .collect()
}

/// The policy is the default until set, is per practice, and an unknown or repeated step or a
/// threshold out of range is refused naming it, leaving the stored policy as it was.
async fn the_policy_is_the_default_until_set_and_bad_input_is_named(env: Env) {
    let app = TestApp::start(env).await;
    let nins = seed_gp(&app, ORG_A, "gp-1", 1, 1).await;
    let ehr = app.ehr_token(ORG_A);
    let p = get_policy(&app, &ehr).await.expect("default");
    assert_eq!(p.steps, all_steps());
    assert_eq!((p.unmet_alert_threshold, p.is_default), (3, true));

    let set = set_policy(
        &app,
        ORG_A,
        &[S::PriorityWaitlist as i32, S::Colleague as i32],
        5,
    )
    .await
    .expect("set");
    let want = vec![S::PriorityWaitlist as i32, S::Colleague as i32];
    assert_eq!(
        (set.steps.clone(), set.unmet_alert_threshold),
        (want.clone(), 5)
    );
    assert!(!set.is_default);
    assert_eq!(get_policy(&app, &ehr).await.expect("get"), set);
    // Another practice still has the default.
    let other = get_policy(&app, &app.ehr_token(ORG_B)).await.expect("b");
    assert!(other.is_default);

    for (steps, threshold, field) in [
        (vec![1, 9], 3, "steps[1]"),
        (vec![0], 3, "steps[0]"),
        (vec![2, 3, 2], 3, "steps[2]"),
        (vec![1], 0, "unmet_alert_threshold"),
        (vec![1], 1001, "unmet_alert_threshold"),
    ] {
        let err = set_policy(&app, ORG_A, &steps, threshold)
            .await
            .expect_err("refused");
        assert_eq!(err.code(), Code::InvalidArgument, "{steps:?}: {err:?}");
        assert!(err.message().contains(field), "{field}: {err:?}");
    }
    assert_eq!(get_policy(&app, &ehr).await.expect("get").steps, want);
    // A patient may not read or set it.
    let patient = app.patient_token(&nins[0]);
    assert_eq!(
        get_policy(&app, &patient)
            .await
            .expect_err("patient")
            .code(),
        Code::PermissionDenied
    );
    app.shutdown().await;
}

/// Own GP: nothing in time. A colleague's in-person slot and another's video slot in time are the
/// engine's first offers, with their reasons, then the e-consultation and the priority waitlist;
/// the request is met by the colleague. The practice's policy decides which and in what order.
/// A practice whose only slot in time is by video offers it, saying so.
async fn colleague_and_video_slots_are_offered_in_policy_order_with_their_reasons(env: Env) {
    let app = TestApp::start(env).await;
    let nins = seed_gp(&app, ORG_A, "gp-1", 1, 2).await;
    seed_gp(&app, ORG_A, "gp-2", 2, 0).await;
    seed_gp(&app, ORG_A, "gp-3", 3, 0).await;
    publish(
        &app,
        ORG_A,
        "gp-1",
        &[at("2026-03-16T09:00:00Z")],
        pb::Modality::InPerson,
    )
    .await;
    let video = publish(
        &app,
        ORG_A,
        "gp-2",
        &[at("2026-03-04T09:00:00Z")],
        pb::Modality::Video,
    )
    .await
    .remove(0);
    let colleague = publish(
        &app,
        ORG_A,
        "gp-3",
        &[at("2026-03-05T09:00:00Z")],
        pb::Modality::InPerson,
    )
    .await
    .remove(0);

    let r = find(&app, &nins[0]).await;
    assert!(!r.met_by_own_gp);
    assert!(r.within_five_working_days);
    assert_eq!(r.met_by_step, S::Colleague as i32);
    assert_eq!(
        steps(&r.guarantee),
        [
            S::Colleague,
            S::VideoOrPhone,
            S::EConsultation,
            S::PriorityWaitlist
        ]
        .map(|s| s as i32)
    );
    let g = &r.guarantee;
    let slot_of = |o: &pb::GuaranteeOffer| {
        o.slot
            .as_ref()
            .expect("slot")
            .slot
            .as_ref()
            .expect("s")
            .slot_id
            .clone()
    };
    assert_eq!(slot_of(&g[0]), colleague.slot_id);
    assert_eq!(
        g[0].reason,
        format!("{OWN}: Dr gp-3 of your practice can see you on 2026-03-05")
    );
    assert_eq!(slot_of(&g[1]), video.slot_id);
    assert_eq!(
        g[1].reason,
        format!("{OWN} at the office: Dr gp-2 can talk with you by video on 2026-03-04")
    );
    assert!(g[2].slot.is_none() && g[3].slot.is_none());
    assert_eq!(
        g[2].reason,
        format!("{OWN}: write to your GP now; an answer by {TARGET} meets your request")
    );
    assert!(g.iter().all(|o| o.target_date == TARGET));

    // The practice prefers video, then the e-consultation, and nothing else.
    set_policy(
        &app,
        ORG_A,
        &[S::VideoOrPhone as i32, S::EConsultation as i32],
        3,
    )
    .await
    .expect("policy");
    let r = find(&app, &nins[1]).await;
    assert_eq!(
        steps(&r.guarantee),
        [S::VideoOrPhone as i32, S::EConsultation as i32]
    );
    assert_eq!(slot_of(&r.guarantee[0]), video.slot_id);

    // Another practice: the only slot in time is a colleague's by video.
    let b = seed_gp(&app, ORG_B, "gp-1", 4, 1).await;
    seed_gp(&app, ORG_B, "gp-2", 5, 0).await;
    let only = publish(
        &app,
        ORG_B,
        "gp-2",
        &[at("2026-03-03T10:00:00Z")],
        pb::Modality::Video,
    )
    .await
    .remove(0);
    let r = find(&app, &b[0]).await;
    assert!(r.within_five_working_days);
    assert_eq!(r.met_by_step, S::VideoOrPhone as i32);
    assert_eq!(
        steps(&r.guarantee),
        [S::VideoOrPhone, S::EConsultation, S::PriorityWaitlist].map(|s| s as i32)
    );
    assert_eq!(slot_of(&r.guarantee[0]), only.slot_id);
    assert_eq!(
        r.guarantee[0].reason,
        format!("{OWN} at the office: Dr gp-2 can talk with you by video on 2026-03-03")
    );
    // The statistics say which step met each request.
    let a = figures(&app, ORG_A, |a| a.requests == 2).await;
    assert_eq!((a.met_by_colleague, a.met_by_video_or_phone), (2, 0));
    assert_eq!((a.within_target, a.unmet, a.met_by_own_gp), (2, 0, 0));
    let a = figures(&app, ORG_B, |a| a.requests == 1).await;
    assert_eq!((a.met_by_colleague, a.met_by_video_or_phone), (0, 1));
    app.shutdown().await;
}

/// Nothing in time at all: the request is unmet (the practice is told once on WatchBookings);
/// the e-consultation started from it, answered by the practice, closes it as met by
/// e-consultation.
async fn an_e_consultation_started_from_the_request_and_answered_meets_it(env: Env) {
    let app = TestApp::start(env).await;
    let nins = seed_gp(&app, ORG_A, "gp-1", 1, 1).await;
    publish(
        &app,
        ORG_A,
        "gp-1",
        &[at("2026-03-16T09:00:00Z")],
        pb::Modality::InPerson,
    )
    .await;
    let ehr = app.ehr_token(ORG_A);
    let mut watch = app
        .booking()
        .await
        .watch_bookings(authed(pb::WatchBookingsRequest { after_cursor: 0 }, &ehr))
        .await
        .expect("watch")
        .into_inner();
    let r = find(&app, &nins[0]).await;
    assert!(!r.within_five_working_days);
    assert_eq!(r.breach_reason, pb::BreachReason::NoSlots as i32);
    assert_eq!(
        steps(&r.guarantee),
        [S::EConsultation as i32, S::PriorityWaitlist as i32]
    );
    assert_eq!(r.met_by_step, S::Unspecified as i32);
    let a = figures(&app, ORG_A, |a| a.requests == 1).await;
    assert_eq!((a.unmet, a.within_target), (1, 0));

    // The practice is told, once.
    let change = tokio::time::timeout(Duration::from_secs(20), watch.next())
        .await
        .expect("told in time")
        .expect("open")
        .expect("ok");
    assert_eq!(change.kind, "booking.request_unmet");
    let u = change.unmet_request.expect("unmet");
    assert_eq!(
        (
            u.request_id.as_str(),
            u.patient_nin.as_str(),
            u.gp_id.as_str()
        ),
        (r.request_id.as_str(), nins[0].as_str(), "gp-1")
    );
    assert_eq!(u.target_date, TARGET);

    // The practice answers in 20 working days, but this one is due by the target date.
    app.consultation()
        .await
        .set_response_days(authed(
            cpb::SetResponseDaysRequest { working_days: 20 },
            &ehr,
        ))
        .await
        .expect("response days");
    let t = app
        .consultation()
        .await
        .start_consultation(authed(
            cpb::StartConsultationRequest {
                category: cpb::Category::EConsultation as i32,
                subject: "Cough".into(),
                body: "Three weeks of cough".into(),
                attachments: vec![],
                urgent: false,
                language: String::new(),
                idempotency_key: key(),
                booking_request_id: r.request_id.clone(),
            },
            &app.patient_token(&nins[0]),
        ))
        .await
        .expect("start")
        .into_inner()
        .thread
        .expect("thread");
    // The end of Monday 9 March, Oslo.
    assert_eq!(
        t.due_at.as_ref().map(|d| d.seconds),
        Some(at("2026-03-09T23:00:00Z").timestamp())
    );
    // Not met by starting it: by the practice's answer.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let a = figures(&app, ORG_A, |a| a.requests == 1).await;
    assert_eq!(a.met_by_e_consultation, 0);
    app.clock.advance(chrono::Duration::hours(3));
    app.consultation()
        .await
        .reply(authed(
            cpb::ReplyRequest {
                thread_id: t.thread_id,
                body: "Come by the lab tomorrow".into(),
                attachments: vec![],
                ask_patient: false,
                clinician_hpr_number: "1000001".into(),
                idempotency_key: key(),
            },
            &ehr,
        ))
        .await
        .expect("reply");
    let a = figures(&app, ORG_A, |a| a.met_by_e_consultation == 1).await;
    assert_eq!((a.requests, a.within_target, a.unmet), (1, 1, 0));
    // The request is closed: the next search is a new one.
    let again = find(&app, &nins[0]).await;
    assert_ne!(again.request_id, r.request_id);
    // Told once: nothing more for the met request.
    let more = tokio::time::timeout(Duration::from_secs(7), watch.next()).await;
    match more {
        Err(_) => {}
        Ok(Some(Ok(c))) => assert_ne!(
            c.unmet_request.map(|u| u.request_id),
            Some(r.request_id.clone()),
            "told twice"
        ),
        Ok(other) => panic!("stream ended: {other:?}"),
    }
    app.shutdown().await;
}

struct Rig {
    app: TestApp,
    sms: SmsGateway,
    _smtp: SmtpServer,
}

async fn rig(env: Env) -> Rig {
    let smtp = SmtpServer::start().await;
    let sms = SmsGateway::start().await;
    let (smtp_port, sms_url) = (smtp.port, sms.url.clone());
    let tweak: Tweak = Arc::new(move |c: &mut econsult::Config| {
        c.notify.smtp = Some(econsult_notify::SmtpConfig {
            host: "127.0.0.1".into(),
            port: smtp_port,
            security: econsult_notify::SmtpSecurity::None,
            credentials: None,
            from: "Legekontoret <ikke-svar@legekontor.test>".into(),
            ca_pem: None,
            timeout: Duration::from_secs(5),
        });
        c.notify.sms = Some(econsult_notify::SmsConfig {
            url: sms_url.clone(),
            secret: "gateway-secret".into(),
            sender: "Legekontor".into(),
            timeout: Duration::from_secs(5),
        });
        c.notify.poll = Duration::from_millis(100);
        c.notify.login_link = "https://econsult.test/logg-inn".into();
        c.booking.waitlist_hold_ttl = chrono::Duration::minutes(30);
    });
    let app = TestApp::start_configured(env, monday_0800(), Some(tweak)).await;
    Rig {
        app,
        sms,
        _smtp: smtp,
    }
}

fn phone(i: usize) -> String {
    format!("+479{:07}", 2_000_000 + i)
}

async fn set_phone(app: &TestApp, nin: &str, i: usize) {
    NotifyServiceClient::new(app.channel().await)
        .set_preferences(authed(
            npb::SetPreferencesRequest {
                preferences: Some(npb::Preferences {
                    phone: phone(i),
                    ..Default::default()
                }),
            },
            &app.patient_token(nin),
        ))
        .await
        .expect("preferences");
}

/// The hold offers texted to the `i`th patient.
fn offers(sms: &SmsGateway, i: usize) -> usize {
    sms.texts_to(&phone(i))
        .iter()
        .filter(|t| t.contains("?hold="))
        .count()
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Two requests on the priority waitlist (the later one joined first). A cancellation outside
/// the window goes to the ordinary waitlist; one inside it is held for the earlier request,
/// notified once; when that hold lapses the slot goes to the second, notified once; the second
/// books it. Both requests count as met by the priority waitlist.
async fn a_freed_slot_in_the_window_is_held_for_the_earliest_request_then_the_next(env: Env) {
    let rig = rig(env).await;
    let app = &rig.app;
    let p = seed_gp(app, ORG_A, "gp-1", 1, 5).await;
    for (i, n) in p.iter().enumerate() {
        set_phone(app, n, i).await;
    }
    let slots = publish(
        app,
        ORG_A,
        "gp-1",
        &[at("2026-03-04T09:00:00Z"), at("2026-03-17T09:00:00Z")],
        pb::Modality::InPerson,
    )
    .await;
    let (inside, outside) = (&slots[0], &slots[1]);
    let a_in = book(app, &p[0], BookTarget::SlotId(inside.slot_id.clone())).await;
    let a_out = book(app, &p[0], BookTarget::SlotId(outside.slot_id.clone())).await;
    // p[4] waits on the GP's ordinary waitlist for anything this month.
    app.booking()
        .await
        .join_waitlist(authed(
            pb::JoinWaitlistRequest {
                latest_date: "2026-03-31".into(),
                modality: 0,
                idempotency_key: key(),
                request_id: String::new(),
            },
            &app.patient_token(&p[4]),
        ))
        .await
        .expect("ordinary waitlist");
    let r1 = find(app, &p[1]).await;
    app.clock.advance(chrono::Duration::minutes(1));
    let r2 = find(app, &p[2]).await;
    assert!(!r1.within_five_working_days && !r2.within_five_working_days);
    app.clock.advance(chrono::Duration::minutes(1));
    let e2 = join_priority(app, &p[2], &r2.request_id)
        .await
        .expect("join 2");
    assert_eq!(
        (e2.request_id.as_str(), e2.latest_date.as_str(), e2.active),
        (r2.request_id.as_str(), TARGET, true)
    );
    app.clock.advance(chrono::Duration::minutes(1));
    let e1 = join_priority(app, &p[1], &r1.request_id)
        .await
        .expect("join 1");
    // Once per request; only the patient's own open request.
    assert_eq!(
        join_priority(app, &p[1], &r1.request_id)
            .await
            .expect_err("twice")
            .code(),
        Code::AlreadyExists
    );
    assert_eq!(
        join_priority(app, &p[3], &r1.request_id)
            .await
            .expect_err("not theirs")
            .code(),
        Code::NotFound
    );
    // p[3] joins with an own request and leaves again: no longer served.
    let r3 = find(app, &p[3]).await;
    let e3 = join_priority(app, &p[3], &r3.request_id)
        .await
        .expect("join 3");
    let left = app
        .booking()
        .await
        .leave_waitlist(authed(
            pb::LeaveWaitlistRequest {
                entry_id: e3.entry_id.clone(),
            },
            &app.patient_token(&p[3]),
        ))
        .await
        .expect("leave")
        .into_inner();
    assert_eq!(
        (left.request_id.as_str(), left.active),
        (r3.request_id.as_str(), false)
    );
    assert!(mine(app, &p[3]).await.waitlist.is_empty());

    // Outside the window: the ordinary waitlist's.
    cancel(app, &p[0], &a_out.appointment_id)
        .await
        .expect("cancel outside");
    until("the ordinary offer", || offers(&rig.sms, 4) == 1).await;
    let held = mine(app, &p[4]).await.holds;
    assert_eq!(held.len(), 1);
    assert_eq!(
        held[0].slot.as_ref().expect("slot").slot_id,
        outside.slot_id
    );
    assert!(mine(app, &p[1]).await.holds.is_empty());

    // Inside: the earlier request's, though it joined later.
    app.clock.advance(chrono::Duration::minutes(1));
    cancel(app, &p[0], &a_in.appointment_id)
        .await
        .expect("cancel inside");
    until("the offer to the first", || offers(&rig.sms, 1) == 1).await;
    let m1 = mine(app, &p[1]).await;
    assert_eq!(m1.holds.len(), 1);
    assert_eq!(
        m1.holds[0].slot.as_ref().expect("slot").slot_id,
        inside.slot_id
    );
    assert!(m1.holds[0].from_waitlist);
    assert!(
        m1.waitlist.is_empty(),
        "the entry was used: {:?}",
        m1.waitlist
    );
    let m2 = mine(app, &p[2]).await;
    assert!(m2.holds.is_empty());
    assert_eq!(m2.waitlist.len(), 1);
    assert_eq!(m2.waitlist[0].entry_id, e2.entry_id);
    assert_ne!(e1.entry_id, e2.entry_id);

    // The hold (30 minutes) lapses: the sweeper gives the slot to the second.
    app.clock.advance(chrono::Duration::minutes(31));
    until("the offer to the second", || offers(&rig.sms, 2) == 1).await;
    let m2 = mine(app, &p[2]).await;
    assert_eq!(m2.holds.len(), 1);
    let a = book(app, &p[2], BookTarget::HoldId(m2.holds[0].hold_id.clone())).await;
    assert_eq!(a.slot.expect("slot").slot_id, inside.slot_id);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(offers(&rig.sms, 1), 1, "the first: one offer");
    assert_eq!(offers(&rig.sms, 2), 1, "the second: one offer");
    assert_eq!(offers(&rig.sms, 4), 1, "the ordinary waiter: one offer");
    assert_eq!(offers(&rig.sms, 3), 0, "nobody else");
    let f = figures(app, ORG_A, |a| a.met_by_priority_waitlist == 2).await;
    // p[3]'s request, which left the list, is unmet.
    assert_eq!((f.requests, f.within_target, f.unmet), (3, 2, 1));
    rig.app.shutdown().await;
}

/// Concurrent cancellations (and joins): every request on the priority waitlist gets at most one
/// slot, no slot is held twice, and the earliest requests are served.
async fn concurrent_cancellations_and_joins_give_each_request_at_most_one_slot(env: Env) {
    let app = Arc::new(TestApp::start(env).await);
    let p = seed_gp(&app, ORG_A, "gp-1", 1, 7).await;
    let starts: Vec<_> = (0..7)
        .map(|i| at("2026-03-03T08:00:00Z") + chrono::Duration::hours(i))
        .collect();
    let slots = publish(&app, ORG_A, "gp-1", &starts, pb::Modality::InPerson).await;
    let mut appts = Vec::new();
    for s in &slots {
        appts.push(book(&app, &p[0], BookTarget::SlotId(s.slot_id.clone())).await);
    }
    let mut requests = Vec::new();
    for n in &p[1..] {
        app.clock.advance(chrono::Duration::seconds(10));
        let r = find(&app, n).await;
        assert!(!r.within_five_working_days);
        requests.push(r.request_id);
    }
    // Round 1: three waiting, four slots freed at once.
    for i in 0..3 {
        join_priority(&app, &p[i + 1], &requests[i])
            .await
            .expect("join");
    }
    let mut tasks = Vec::new();
    for a in &appts[..4] {
        let (app, nin, id) = (app.clone(), p[0].clone(), a.appointment_id.clone());
        tasks.push(tokio::spawn(async move { cancel(&app, &nin, &id).await }));
    }
    for t in tasks {
        t.await.expect("task").expect("cancel");
    }
    let mut held = Vec::new();
    for n in &p[1..4] {
        let m = mine(&app, n).await;
        assert_eq!(m.holds.len(), 1, "one slot each");
        assert!(m.waitlist.is_empty());
        held.push(m.holds[0].slot.clone().expect("slot").slot_id);
    }
    held.sort();
    held.dedup();
    assert_eq!(held.len(), 3, "three different slots");

    // Round 2: three joins and three cancellations at once.
    let mut tasks = Vec::new();
    for i in 3..6 {
        let (app, nin, r) = (app.clone(), p[i + 1].clone(), requests[i].clone());
        tasks.push(tokio::spawn(async move {
            join_priority(&app, &nin, &r).await.map(|_| ())
        }));
    }
    for a in &appts[4..] {
        let (app, nin, id) = (app.clone(), p[0].clone(), a.appointment_id.clone());
        tasks.push(tokio::spawn(async move {
            cancel(&app, &nin, &id).await.map(|_| ())
        }));
    }
    for t in tasks {
        t.await.expect("task").expect("call");
    }
    let mut all = held;
    for n in &p[4..7] {
        let m = mine(&app, n).await;
        assert!(m.holds.len() <= 1, "at most one slot each");
        assert_eq!(
            m.holds.len() + m.waitlist.len(),
            1,
            "each request is held once or still waits: {m:?}"
        );
        all.extend(
            m.holds
                .iter()
                .map(|h| h.slot.clone().expect("slot").slot_id),
        );
    }
    let n = all.len();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), n, "no slot held twice");
    let app = Arc::try_unwrap(app).unwrap_or_else(|_| panic!("app still shared"));
    app.shutdown().await;
}

on_both_backends!(
    the_policy_is_the_default_until_set_and_bad_input_is_named,
    colleague_and_video_slots_are_offered_in_policy_order_with_their_reasons,
    an_e_consultation_started_from_the_request_and_answered_meets_it,
    a_freed_slot_in_the_window_is_held_for_the_earliest_request_then_the_next,
    concurrent_cancellations_and_joins_give_each_request_at_most_one_slot,
);
