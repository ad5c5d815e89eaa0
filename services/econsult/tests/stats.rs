//! Statistics end to end: booking flows through the gRPC API, then exact counts from the stats
//! API, and the same numbers after a rebuild from the event log. Both backends.

mod common;

use chrono::{DateTime, Utc};
use common::*;
use econsult_proto::booking::v1 as pb;
use econsult_proto::consultation::v1 as cpb;
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

/// Contact counts (day, contact type, tariff, count) as `token` reads them: exact for an EHR's
/// own organisation, with small cells suppressed for ops.
async fn contacts(app: &TestApp, token: &str) -> Vec<(String, String, String, u64)> {
    let mut s = app.stats().await;
    let rows = s
        .get_contact_counts(authed(
            spb::GetContactCountsRequest {
                filter: filter(""),
                ..Default::default()
            },
            token,
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
        let a = accessibility(&app, &ehr, "").await.expect("stats");
        if a.requests == 2
            && a.bookings == 4
            && a.no_shows == 1
            && a.late_cancellations == 1
            && contacts(&app, &ehr).await == expected_contacts
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "statistics did not converge: {a:?} {:?}",
            contacts(&app, &ehr).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let a = accessibility(&app, &ehr, "").await.expect("stats");
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
    // Ops get every cell of this flow suppressed: each is under 5 (one GP's requests of a
    // day 0, appointments of a kind on a day, contacts of a type on a day).
    let o = accessibility(&app, &ops, "").await.expect("stats");
    assert_eq!(
        (
            o.requests,
            o.bookings,
            o.no_shows,
            o.late_cancellations,
            o.suppressed
        ),
        (0, 0, 0, 0, true)
    );
    assert!(
        !accessibility(&app, &ehr, "")
            .await
            .expect("stats")
            .suppressed
    );
    assert_eq!(
        contacts(&app, &ops).await,
        vec![
            (
                "2026-03-03".to_owned(),
                "in_person".to_owned(),
                "2ad".to_owned(),
                0
            ),
            (
                "2026-03-03".to_owned(),
                "video".to_owned(),
                "2ae".to_owned(),
                0
            ),
        ]
    );
    let before = (
        accessibility(&app, &ehr, "").await.expect("stats"),
        contacts(&app, &ehr).await,
    );
    let applied = econsult_stats::Aggregator::new(app.platform().db.clone())
        .rebuild()
        .await
        .expect("rebuild");
    // Booking requests are no events any more (the figures read them where booking keeps
    // them): the rest of the flow's events are re-applied.
    assert!(applied >= 8, "every event re-applied ({applied})");
    let after = (
        accessibility(&app, &ehr, "").await.expect("stats"),
        contacts(&app, &ehr).await,
    );
    assert_eq!(before, after);
    app.shutdown().await;
}

async fn consult(app: &TestApp, nin: &str, category: cpb::Category) -> String {
    app.consultation()
        .await
        .start_consultation(authed(
            cpb::StartConsultationRequest {
                category: category as i32,
                subject: "Question".into(),
                body: "Body".into(),
                attachments: vec![],
                urgent: false,
                language: String::new(),
                idempotency_key: key(),
                booking_request_id: String::new(),
            },
            &app.patient_token(nin),
        ))
        .await
        .expect("start")
        .into_inner()
        .thread
        .expect("thread")
        .thread_id
}

async fn answer_and_close(app: &TestApp, org: &str, id: &str) {
    let mut c = app.consultation().await;
    let ehr = app.ehr_token(org);
    c.reply(authed(
        cpb::ReplyRequest {
            thread_id: id.into(),
            body: "Answer".into(),
            clinician_hpr_number: "1000001".into(),
            idempotency_key: key(),
            ..Default::default()
        },
        &ehr,
    ))
    .await
    .expect("reply");
    c.close_consultation(authed(
        cpb::CloseConsultationRequest {
            thread_id: id.into(),
            outcome: "answered".into(),
            tariff_code: String::new(),
            idempotency_key: key(),
        },
        &ehr,
    ))
    .await
    .expect("close");
}

/// Consultations through the API, then response-time figures, week and month series,
/// breakdowns, CSV exports with small-cell suppression, and list figures.
async fn consultation_statistics_series_and_exports(env: Env) {
    // Monday 2 March 2026 08:00 Oslo (ISO week 10).
    let app = TestApp::start(env).await;
    let a = seed_gp(&app, ORG_A, "gp-1", 31, 7).await;
    let b = seed_gp(&app, ORG_B, "gp-b", 32, 2).await;
    seed_gp_with(&app, ORG_B, "gp-vacant", 33, 3, pb::ListStatus::Vacant).await;
    let mut threads = Vec::new();
    for nin in &a[..6] {
        threads.push((
            ORG_A,
            consult(&app, nin, cpb::Category::EConsultation).await,
        ));
    }
    threads.push((
        ORG_A,
        consult(&app, &a[6], cpb::Category::PrescriptionRenewal).await,
    ));
    for nin in &b {
        threads.push((
            ORG_B,
            consult(&app, nin, cpb::Category::EConsultation).await,
        ));
    }
    // Six answered the same day; the last two (ORG_B) only on Tuesday 10 March: 6 working days
    // after submission, past the five-day SLA.
    for (org, id) in &threads[..7] {
        answer_and_close(&app, org, id).await;
    }
    app.clock.set(at("2026-03-10T09:00:00Z"));
    for (org, id) in &threads[7..] {
        answer_and_close(&app, org, id).await;
    }

    let ops = app.ops_token();
    let mut s = app.stats().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let response_times = |token: String| {
        let mut s = s.clone();
        async move {
            s.get_consultation_response_times(authed(
                spb::GetConsultationResponseTimesRequest { filter: filter("") },
                &token,
            ))
            .await
            .expect("response times")
            .into_inner()
        }
    };
    // Each practice reads its own figures exactly.
    let (a_times, b_times) = loop {
        let a_times = response_times(app.ehr_token(ORG_A)).await;
        let b_times = response_times(app.ehr_token(ORG_B)).await;
        let own = async |org: &str| {
            contacts(&app, &app.ehr_token(org))
                .await
                .iter()
                .map(|c| c.3)
                .sum::<u64>()
        };
        let contacts = (own(ORG_A).await, own(ORG_B).await);
        if a_times.responded + b_times.responded == 9 && contacts == (7, 2) {
            break (a_times, b_times);
        }
        assert!(
            Instant::now() < deadline,
            "not converged: {a_times:?} {b_times:?} {contacts:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        (a_times.within_sla, a_times.working_days_histogram[0]),
        (7, 7)
    );
    assert_eq!(
        (b_times.within_sla, b_times.working_days_histogram[6]),
        (0, 2)
    );
    assert!(!a_times.suppressed && !b_times.suppressed);
    // Ops: gp-b's two threads of 2 March (a base cell under 5) are left out of every figure.
    let times = response_times(ops.clone()).await;
    assert_eq!((times.responded, times.within_sla), (7, 7));
    assert!((times.within_sla_share - 1.0).abs() < 1e-9);
    assert_eq!(times.working_days_histogram[0], 7);
    assert_eq!(times.working_days_histogram[6], 0);
    assert!(times.suppressed);

    // Weekly series by contact type: week 10 has the 7 same-day closings, week 11 the 2 late.
    // Ops see the cells of fewer than 5 contacts (gp-1's one prescription renewal, gp-b's two
    // late answers) suppressed: left out of the count and marked.
    let weekly = s
        .get_contact_counts(authed(
            spb::GetContactCountsRequest {
                filter: filter(""),
                granularity: spb::Granularity::IsoWeek as i32,
                group_by: vec![spb::Dimension::ContactType as i32],
            },
            &ops,
        ))
        .await
        .expect("weekly")
        .into_inner()
        .rows;
    let weekly: Vec<(String, String, String, u64, bool)> = weekly
        .into_iter()
        .map(|r| (r.date, r.contact_type, r.org_number, r.count, r.suppressed))
        .collect();
    assert_eq!(
        weekly,
        vec![
            (
                "2026-W10".into(),
                "prescription_renewal".into(),
                String::new(),
                0,
                true
            ),
            (
                "2026-W10".into(),
                "text_econsultation".into(),
                String::new(),
                6,
                false
            ),
            (
                "2026-W11".into(),
                "text_econsultation".into(),
                String::new(),
                0,
                true
            ),
        ]
    );
    let monthly = s
        .get_contact_counts(authed(
            spb::GetContactCountsRequest {
                filter: filter(""),
                granularity: spb::Granularity::Month as i32,
                group_by: vec![
                    spb::Dimension::Org as i32,
                    spb::Dimension::TariffCode as i32,
                ],
            },
            &ops,
        ))
        .await
        .expect("monthly")
        .into_inner()
        .rows;
    let monthly: Vec<(String, String, String, u64, bool)> = monthly
        .into_iter()
        .map(|r| (r.date, r.org_number, r.tariff_code, r.count, r.suppressed))
        .collect();
    assert_eq!(
        monthly,
        vec![
            ("2026-03".into(), ORG_A.into(), "1bd".into(), 0, true),
            ("2026-03".into(), ORG_A.into(), "2ae".into(), 6, false),
            ("2026-03".into(), ORG_B.into(), "2ae".into(), 0, true),
        ]
    );

    // Municipality-level export: organisations summed; gp-b's 2 answers (a day's cell under 5)
    // are left out of the month's 2ae count, which says so, and gp-1's one renewal shows
    // nothing.
    let export = s
        .export_contacts(authed(
            spb::ExportContactsRequest {
                filter: filter(""),
                granularity: spb::Granularity::Month as i32,
                level: spb::ExportLevel::Municipality as i32,
            },
            &ops,
        ))
        .await
        .expect("export")
        .into_inner();
    assert_eq!(
        export.csv,
        "period,org_number,municipality_number,gp_id,contact_type,tariff_code,count,suppressed\r\n\
         2026-03,,0301,,prescription_renewal,1bd,,true\r\n\
         2026-03,,0301,,text_econsultation,2ae,6,true\r\n"
    );
    assert_eq!((export.rows, export.suppressed_rows), (2, 2));
    // An EHR exports its own organisation at GP level, unsuppressed.
    let own = s
        .export_contacts(authed(
            spb::ExportContactsRequest {
                filter: filter(""),
                granularity: spb::Granularity::Day as i32,
                level: spb::ExportLevel::Gp as i32,
            },
            &app.ehr_token(ORG_B),
        ))
        .await
        .expect("own export")
        .into_inner();
    assert_eq!(
        own.csv,
        format!(
            "period,org_number,municipality_number,gp_id,contact_type,tariff_code,count,suppressed\r\n\
             2026-03-10,{ORG_B},0301,gp-b,text_econsultation,2ae,2,false\r\n"
        )
    );

    let lists = s
        .get_list_figures(authed(
            spb::GetListFiguresRequest { filter: filter("") },
            &ops,
        ))
        .await
        .expect("lists")
        .into_inner();
    // Ops: the 3 persons on ORG_B's vacant list (a practice's figure in a municipality under
    // 5) are left out; the lists are counted.
    assert_eq!(
        (
            lists.lists,
            lists.lists_without_gp,
            lists.persons_on_lists_without_gp,
            lists.suppressed
        ),
        (3, 1, 0, true)
    );
    let own_lists = s
        .get_list_figures(authed(
            spb::GetListFiguresRequest {
                filter: filter(ORG_B),
            },
            &app.ehr_token(ORG_B),
        ))
        .await
        .expect("own lists")
        .into_inner();
    assert_eq!(
        (
            own_lists.lists,
            own_lists.lists_without_gp,
            own_lists.persons_on_lists_without_gp,
            own_lists.suppressed
        ),
        (2, 1, 3, false)
    );
    let err = s
        .get_list_figures(authed(
            spb::GetListFiguresRequest {
                filter: filter(ORG_A),
            },
            &app.ehr_token(ORG_B),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);

    // A rebuild gives the same figures.
    econsult_stats::Aggregator::new(app.platform().db.clone())
        .rebuild()
        .await
        .expect("rebuild");
    let again = s
        .get_consultation_response_times(authed(
            spb::GetConsultationResponseTimesRequest { filter: filter("") },
            &ops,
        ))
        .await
        .expect("again")
        .into_inner();
    assert_eq!(again, times);
    app.shutdown().await;
}

/// A `booking.requested` event of gp-1 (org A, municipality 0301) on `date`.
fn requested(date: &str, within: bool) -> econsult_runtime::bus::Delivery {
    let body = econsult_runtime::events::BookingRequested {
        request_id: key(),
        gp_id: "gp-1".into(),
        org_number: ORG_A.into(),
        municipality_number: "0301".into(),
        requested_at_ms: 0,
        date: date.into(),
        earliest_offer_working_days: Some(if within { 2 } else { 9 }),
        within_target: within,
        breach_reason: (!within).then(|| "no_slots".to_owned()),
    };
    delivery(
        econsult_runtime::events::topics::BOOKING_REQUESTED,
        serde_json::to_string(&body),
    )
}

fn delivery(topic: &str, payload: serde_json::Result<String>) -> econsult_runtime::bus::Delivery {
    econsult_runtime::bus::Delivery {
        event: econsult_runtime::bus::Event {
            seq: 0,
            event_id: key(),
            topic: topic.into(),
            org_number: ORG_A.into(),
            payload: payload.expect("json"),
            created_at: 0,
            trace_parent: String::new(),
        },
        receipt: String::new(),
    }
}

/// Rows of `stats_booking_requests` and `stats_appointments` of gp-1:
/// (table, day, key column, n).
async fn gp1_rows(app: &TestApp) -> Vec<(String, String, String, i64)> {
    use sqlx::Row as _;
    let rows = sqlx::query(
        "SELECT 'requests' AS t, day, CAST(working_days AS TEXT) AS k, n FROM stats_booking_requests WHERE gp_id = 'gp-1' \
         UNION ALL SELECT 'appointments' AS t, day, kind AS k, n FROM stats_appointments WHERE gp_id = 'gp-1' ORDER BY t, day, k",
    )
    .fetch_all(app.platform().db.read())
    .await
    .expect("rows");
    rows.iter()
        .map(|r| (r.get("t"), r.get("day"), r.get("k"), r.get("n")))
        .collect()
}

/// The consumer applies a batch with a handful of statements (marks and counts summed per row);
/// this checks that it still counts each event once: an event twice in a batch, an event
/// delivered again in a later batch, several events on one row, and one event on two rows.
async fn a_batch_counts_each_event_once_and_sums_events_of_a_row(env: Env) {
    let app = TestApp::start(env).await;
    let agg = econsult_stats::Aggregator::new(app.platform().db.clone());
    let cancelled = econsult_runtime::events::AppointmentChanged {
        appointment_id: key(),
        slot_id: key(),
        gp_id: "gp-1".into(),
        org_number: ORG_A.into(),
        municipality_number: "0301".into(),
        modality: "in_person".into(),
        start_ms: at("2026-03-04T07:00:00Z").timestamp_millis(),
        end_ms: at("2026-03-04T07:15:00Z").timestamp_millis(),
        status: "cancelled".into(),
        booked_at_ms: 0,
        cancelled_at_ms: Some(at("2026-03-03T08:00:00Z").timestamp_millis()),
        cancelled_by: Some("patient".into()),
        late_cancellation: true,
        rescheduled_from: None,
        gp_hpr_number: String::new(),
    };
    let first = vec![
        requested("2026-03-02", true),
        requested("2026-03-02", true),
        requested("2026-03-02", false),
        requested("2026-03-03", true),
        delivery(
            econsult_runtime::events::topics::BOOKING_CANCELLED,
            serde_json::to_string(&cancelled),
        ),
    ];
    let mut batch = first.clone();
    batch.push(first[1].clone());
    assert_eq!(agg.apply_batch(&batch).await.expect("first batch"), 5);
    let again = vec![
        first[0].clone(),
        requested("2026-03-02", true),
        first[4].clone(),
    ];
    assert_eq!(agg.apply_batch(&again).await.expect("second batch"), 1);
    let row = |t: &str, day: &str, k: &str, n: i64| (t.to_owned(), day.to_owned(), k.to_owned(), n);
    assert_eq!(
        gp1_rows(&app).await,
        vec![
            row("appointments", "2026-03-03", "cancelled", 1),
            row("appointments", "2026-03-03", "late_cancellation", 1),
            row("requests", "2026-03-02", "2", 3),
            row("requests", "2026-03-02", "9", 1),
            row("requests", "2026-03-03", "2", 1),
        ]
    );
    app.shutdown().await;
}

/// KPR counts closed threads: `no_answer` is no contact, a reception's answer to an
/// administrative e-contact bills nothing and is administrative work, not a consultation.
async fn closed_threads_count_by_kpr_category(env: Env) {
    let app = TestApp::start(env).await;
    let a = seed_gp(&app, ORG_A, "gp-1", 34, 3).await;
    let ehr = app.ehr_token(ORG_A);
    let mut c = app.consultation().await;

    // The practice asked the patient, who never answered.
    let silent = consult(&app, &a[0], cpb::Category::EConsultation).await;
    c.reply(authed(
        cpb::ReplyRequest {
            thread_id: silent.clone(),
            body: "How long have you had it?".into(),
            clinician_hpr_number: "1000001".into(),
            ask_patient: true,
            idempotency_key: key(),
            ..Default::default()
        },
        &ehr,
    ))
    .await
    .expect("ask");
    c.close_consultation(authed(
        cpb::CloseConsultationRequest {
            thread_id: silent,
            outcome: "no_answer".into(),
            tariff_code: String::new(),
            idempotency_key: key(),
        },
        &ehr,
    ))
    .await
    .expect("close no_answer");
    // "Kontakt legekontoret", answered by the reception.
    let reception = consult(&app, &a[1], cpb::Category::Administrative).await;
    answer_and_close(&app, ORG_A, &reception).await;
    // Closed last: once it is counted, the two before it were applied.
    let answered = consult(&app, &a[2], cpb::Category::EConsultation).await;
    answer_and_close(&app, ORG_A, &answered).await;

    let deadline = Instant::now() + Duration::from_secs(20);
    let rows = loop {
        let rows = contacts(&app, &ehr).await;
        if rows.iter().any(|r| r.1 == "text_econsultation") {
            break rows;
        }
        assert!(Instant::now() < deadline, "not converged: {rows:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        rows,
        vec![
            (
                "2026-03-02".to_owned(),
                "reception_message".to_owned(),
                String::new(),
                1
            ),
            (
                "2026-03-02".to_owned(),
                "text_econsultation".to_owned(),
                "2ae".to_owned(),
                1
            ),
        ]
    );
    let by_kpr: Vec<(String, u64)> = app
        .stats()
        .await
        .get_contact_counts(authed(
            spb::GetContactCountsRequest {
                filter: filter(""),
                group_by: vec![spb::Dimension::KprCategory as i32],
                ..Default::default()
            },
            &ehr,
        ))
        .await
        .expect("by kpr category")
        .into_inner()
        .rows
        .into_iter()
        .map(|r| (r.kpr_category, r.count))
        .collect();
    assert_eq!(
        by_kpr,
        vec![
            ("administrative".to_owned(), 1),
            ("e_consultation".to_owned(), 1)
        ],
        "one administrative contact, one consultation (the answered one), none for no_answer"
    );
    app.shutdown().await;
}

/// A NUL byte in a filter id is refused naming the field (PostgreSQL answered INTERNAL).
async fn a_nul_byte_in_a_filter_is_refused(env: Env) {
    let app = TestApp::start(env).await;
    let mut s = app.stats().await;
    for field in ["gp_id", "municipality_number"] {
        let mut f = filter("").expect("filter");
        match field {
            "gp_id" => f.gp_id = "gp-1\0".into(),
            _ => f.municipality_number = "0301\0".into(),
        }
        let err = s
            .get_contact_counts(authed(
                spb::GetContactCountsRequest {
                    filter: Some(f),
                    ..Default::default()
                },
                &app.ops_token(),
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{field}: {err:?}");
        assert!(
            err.message().contains(&format!("filter.{field}")),
            "{err:?}"
        );
    }
    app.shutdown().await;
}

on_both_backends!(
    a_nul_byte_in_a_filter_is_refused,
    closed_threads_count_by_kpr_category,
    booking_flows_give_exact_statistics_and_a_rebuild_gives_the_same,
    a_batch_counts_each_event_once_and_sums_events_of_a_row,
    consultation_statistics_series_and_exports,
);
