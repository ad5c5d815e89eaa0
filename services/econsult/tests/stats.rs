//! Statistics end to end: booking flows through the gRPC API, then exact counts from the stats
//! API, and the same numbers after a rebuild from the event log. Both backends.

mod common;

use chrono::{DateTime, Utc};
use common::*;
use econsult_proto::booking::v1 as pb;
use econsult_proto::stats::v1 as spb;
use pb::book_request::Target as BookTarget;
use std::time::{Duration, Instant};

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("time")
        .with_timezone(&Utc)
}

fn filter(org: &str) -> Option<spb::Filter> {
    Some(spb::Filter {
        from_date: "2026-03-01".into(),
        to_date: "2026-03-31".into(),
        org_number: org.into(),
        ..Default::default()
    })
}

async fn accessibility(
    app: &TestApp,
    token: &str,
    org: &str,
) -> Result<spb::GetBookingAccessibilityResponse, tonic::Status> {
    let mut s = app.stats().await;
    s.get_booking_accessibility(authed(
        spb::GetBookingAccessibilityRequest {
            filter: filter(org),
        },
        token,
    ))
    .await
    .map(|r| r.into_inner())
}

async fn contacts(app: &TestApp) -> Vec<(String, String, String, u64)> {
    let mut s = app.stats().await;
    let rows = s
        .get_contact_counts(authed(
            spb::GetContactCountsRequest { filter: filter("") },
            &app.ops_token(),
        ))
        .await
        .expect("contacts")
        .into_inner()
        .rows;
    rows.into_iter()
        .map(|r| (r.date, r.contact_type, r.tariff_code, r.count))
        .collect()
}

async fn booking_flows_give_exact_statistics_and_a_rebuild_gives_the_same(env: Env) {
    let app = TestApp::start(env).await;
    let nins = seed_gp(&app, ORG_A, "gp-1", 21, 4).await;
    let vacant = seed_gp_with(&app, ORG_A, "gp-vacant", 22, 1, pb::ListStatus::Vacant).await;
    let starts = [
        at("2026-03-03T07:00:00Z"),
        at("2026-03-03T07:15:00Z"),
        at("2026-03-03T07:30:00Z"),
        at("2026-03-04T07:00:00Z"),
    ];
    let mods = [
        pb::Modality::InPerson,
        pb::Modality::Video,
        pb::Modality::Phone,
        pb::Modality::InPerson,
    ];
    let mut slots = Vec::new();
    for (s, m) in starts.iter().zip(mods) {
        slots.extend(publish(&app, ORG_A, "gp-1", &[*s], m).await);
    }
    let mut c = app.booking().await;
    let found = c
        .find_slots(authed(
            pb::FindSlotsRequest::default(),
            &app.patient_token(&nins[0]),
        ))
        .await
        .expect("find")
        .into_inner();
    assert!(found.within_five_working_days);
    let mut appts = Vec::new();
    for (nin, slot) in nins.iter().zip(&slots) {
        let a = c
            .book(authed(
                pb::BookRequest {
                    target: Some(BookTarget::SlotId(slot.slot_id.clone())),
                    reason: String::new(),
                    request_id: String::new(),
                    idempotency_key: key(),
                },
                &app.patient_token(nin),
            ))
            .await
            .expect("book")
            .into_inner();
        appts.push(a);
    }
    // Everything is booked: the vacant list's patient gets nothing at all.
    let r = c
        .find_slots(authed(
            pb::FindSlotsRequest::default(),
            &app.patient_token(&vacant[0]),
        ))
        .await
        .expect("find")
        .into_inner();
    assert_eq!(r.breach_reason, pb::BreachReason::ListWithoutGp as i32);

    let ehr = app.ehr_token(ORG_A);
    let mark = |id: &str, s: pb::AppointmentStatus| pb::MarkAppointmentRequest {
        appointment_id: id.into(),
        status: s as i32,
        idempotency_key: key(),
    };
    app.clock.set(at("2026-03-03T07:50:00Z"));
    c.mark_appointment(authed(
        mark(&appts[0].appointment_id, pb::AppointmentStatus::Fulfilled),
        &ehr,
    ))
    .await
    .expect("fulfilled");
    c.mark_appointment(authed(
        mark(&appts[1].appointment_id, pb::AppointmentStatus::Fulfilled),
        &ehr,
    ))
    .await
    .expect("fulfilled");
    // Marking the same appointment again is refused and counts nothing twice.
    assert!(
        c.mark_appointment(authed(
            mark(&appts[1].appointment_id, pb::AppointmentStatus::Fulfilled),
            &ehr
        ))
        .await
        .is_err()
    );
    c.mark_appointment(authed(
        mark(&appts[2].appointment_id, pb::AppointmentStatus::Noshow),
        &ehr,
    ))
    .await
    .expect("noshow");
    // 23 hours before Wednesday 08:00: a late cancellation.
    app.clock.set(at("2026-03-03T08:00:00Z"));
    c.cancel(authed(
        pb::CancelRequest {
            appointment_id: appts[3].appointment_id.clone(),
            idempotency_key: key(),
        },
        &app.patient_token(&nins[3]),
    ))
    .await
    .expect("cancel");

    let ops = app.ops_token();
    let deadline = Instant::now() + Duration::from_secs(20);
    let expected_contacts = vec![
        (
            "2026-03-03".to_owned(),
            "in_person".to_owned(),
            "2ad".to_owned(),
            1,
        ),
        (
            "2026-03-03".to_owned(),
            "video".to_owned(),
            "2ae".to_owned(),
            1,
        ),
    ];
    loop {
        let a = accessibility(&app, &ops, "").await.expect("stats");
        if a.requests == 2
            && a.bookings == 4
            && a.no_shows == 1
            && a.late_cancellations == 1
            && contacts(&app).await == expected_contacts
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "statistics did not converge: {a:?} {:?}",
            contacts(&app).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let a = accessibility(&app, &ops, "").await.expect("stats");
    assert_eq!(
        (
            a.requests,
            a.within_target,
            a.breaches_no_slots,
            a.breaches_list_without_gp
        ),
        (2, 1, 0, 1)
    );
    assert!((a.within_target_share - 0.5).abs() < 1e-9);
    assert_eq!(
        a.working_days_histogram[1], 1,
        "one request with the earliest offer one working day away"
    );
    assert_eq!(
        a.working_days_histogram[15], 1,
        "one request with nothing offered"
    );

    // An EHR sees its own organisation only; a patient sees no statistics.
    assert!(accessibility(&app, &ehr, ORG_A).await.is_ok());
    assert_eq!(
        accessibility(&app, &app.ehr_token(ORG_B), ORG_A)
            .await
            .unwrap_err()
            .code(),
        tonic::Code::PermissionDenied
    );
    assert_eq!(
        accessibility(&app, &app.patient_token(&nins[0]), "")
            .await
            .unwrap_err()
            .code(),
        tonic::Code::PermissionDenied
    );

    // A rebuild from the outbox gives the same numbers.
    let before = (
        accessibility(&app, &ops, "").await.expect("stats"),
        contacts(&app).await,
    );
    let applied = econsult_stats::Aggregator::new(app.platform().db.clone())
        .rebuild()
        .await
        .expect("rebuild");
    assert!(applied >= 9, "every event re-applied ({applied})");
    let after = (
        accessibility(&app, &ops, "").await.expect("stats"),
        contacts(&app).await,
    );
    assert_eq!(before, after);
    app.shutdown().await;
}

on_both_backends!(booking_flows_give_exact_statistics_and_a_rebuild_gives_the_same);
