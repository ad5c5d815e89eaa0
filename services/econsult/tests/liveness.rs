//! Liveness under concurrency: four times as many concurrent callers of every mutating RPC of
//! booking and consultation as the server has pooled database connections, each with a
//! generous deadline, and not one UNAVAILABLE or DEADLINE_EXCEEDED.
//!
//! A call that held one pooled connection in its transaction while it waited for a second one
//! (issue 30: StartConsultation read the patient's GP and the practice's calendar through the
//! pool inside its idempotency transaction) stalls as soon as the callers outnumber the
//! connections: every connection is then in a transaction waiting for another, until the pool's
//! acquire timeout fails them all with UNAVAILABLE. A liveness check, not a benchmark: speed is
//! measured in `load-tests/`.

mod common;

use chrono::{DateTime, Duration, Utc};
use common::*;
use econsult_proto::booking::v1 as bpb;
use econsult_proto::consultation::v1 as cpb;
use econsult_runtime::ratelimit::RateLimits;
use std::future::Future;
use std::sync::Arc;
use tonic::Status;

/// Pooled database connections of the server under test (PostgreSQL: the pool; SQLite: the
/// read pool beside the one writer).
const POOL: u32 = 4;
/// Concurrent callers of each RPC.
const CALLERS: usize = 4 * POOL as usize;
/// Deadline of each call.
const DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// A request with a bearer token and the call's deadline.
fn call<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut req = authed(msg, token);
    req.set_timeout(DEADLINE);
    req
}

/// Runs `n` calls of `rpc` at once, each bounded by [`DEADLINE`] on the client side too, and
/// returns their answers in caller order; fails the test naming every call that did not
/// succeed, with its code.
async fn burst<T, F, Fut>(rpc: &str, n: usize, each: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, Status>> + Send + 'static,
{
    let started = std::time::Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let fut = each(i);
            tokio::spawn(async move {
                match tokio::time::timeout(DEADLINE, fut).await {
                    Ok(r) => r.map(tonic::Response::into_inner),
                    Err(_) => Err(Status::deadline_exceeded("no answer within the deadline")),
                }
            })
        })
        .collect();
    let mut answers = Vec::with_capacity(n);
    let mut failed = Vec::new();
    for (i, task) in tasks.into_iter().enumerate() {
        match task.await.expect("caller task") {
            Ok(a) => answers.push(a),
            Err(s) => failed.push(format!("{rpc} caller {i}: {:?} {}", s.code(), s.message())),
        }
    }
    let stalled = failed
        .iter()
        .filter(|f| f.contains("Unavailable") || f.contains("DeadlineExceeded"))
        .count();
    assert!(
        failed.is_empty(),
        "{rpc}: {} of {n} concurrent calls failed ({stalled} UNAVAILABLE or DEADLINE_EXCEEDED) \
         in {:?} with {POOL} pooled connections:\n{}",
        failed.len(),
        started.elapsed(),
        failed.join("\n")
    );
    answers
}

fn at(i: usize) -> DateTime<Utc> {
    // Tuesday 08:00 Oslo onwards, a slot every 15 minutes.
    monday_0800() + Duration::days(1) + Duration::minutes(15 * i as i64)
}

fn new_slot(start: DateTime<Utc>) -> bpb::NewSlot {
    bpb::NewSlot {
        start: Some(ts(start)),
        duration_minutes: 15,
        modality: bpb::Modality::InPerson as i32,
        acute_reserve: false,
    }
}

async fn start_small_pool(env: Env) -> TestApp {
    let tweak: Tweak = Arc::new(|c| {
        c.db_max_connections = POOL;
        c.rate_limits = RateLimits::unlimited();
    });
    TestApp::start_configured(env, monday_0800(), Some(tweak)).await
}

async fn every_mutating_booking_rpc_stays_live_with_four_times_the_pool_in_concurrent_callers(
    env: Env,
) {
    let app = start_small_pool(env).await;
    let n = CALLERS;
    let nins = seed_gp(&app, ORG_A, "gp-1", 31, 4 * n).await;
    let ehr = app.ehr_token(ORG_A);
    let slots = publish(
        &app,
        ORG_A,
        "gp-1",
        &(0..4 * n).map(at).collect::<Vec<_>>(),
        bpb::Modality::InPerson,
    )
    .await;
    let slot = |i: usize| slots[i].slot_id.clone();
    let patient: Vec<String> = nins.iter().map(|p| app.patient_token(p)).collect();
    let c = app.booking().await;

    // EHR side: GPs, lists, closures, slots.
    let load_gp = |i: usize| format!("load-gp-{i}");
    burst("UpsertGp", n, |i| {
        let (mut c, t, gp) = (c.clone(), ehr.clone(), load_gp(i));
        async move {
            c.upsert_gp(call(
                bpb::UpsertGpRequest {
                    gp: Some(bpb::Gp {
                        gp_id: gp,
                        hpr_number: format!("{}", 2_000_000 + i),
                        display_name: format!("Dr Load {i}"),
                        org_number: String::new(),
                        municipality_number: "0301".into(),
                        list_capacity: 2500,
                        list_status: bpb::ListStatus::Staffed as i32,
                        list_size: 0,
                        practice_name: String::new(),
                    }),
                },
                &t,
            ))
            .await
        }
    })
    .await;
    burst("UpdateList", n, |i| {
        let (mut c, t, gp) = (c.clone(), ehr.clone(), load_gp(i));
        let nin = econsult_runtime::nin::synthetic(9_900_000 + i as u64)
            .as_str()
            .to_owned();
        async move {
            c.update_list(call(
                bpb::UpdateListRequest {
                    gp_id: gp,
                    add: vec![nin],
                    remove: vec![],
                    idempotency_key: key(),
                },
                &t,
            ))
            .await
        }
    })
    .await;
    burst("SetClosures", n, |i| {
        let (mut c, t) = (c.clone(), app.ehr_token(&format!("93{i:07}")));
        async move {
            c.set_closures(call(
                bpb::SetClosuresRequest {
                    dates: vec!["2026-12-24".into(), "2026-12-31".into()],
                    idempotency_key: key(),
                },
                &t,
            ))
            .await
        }
    })
    .await;
    let published = burst("PublishSlots", n, |i| {
        let (mut c, t, gp) = (c.clone(), ehr.clone(), load_gp(i));
        async move {
            c.publish_slots(call(
                bpb::PublishSlotsRequest {
                    gp_id: gp,
                    slots: vec![new_slot(at(i))],
                    idempotency_key: key(),
                },
                &t,
            ))
            .await
        }
    })
    .await;
    burst("WithdrawSlots", n, |i| {
        let (mut c, t) = (c.clone(), ehr.clone());
        let ids = published[i]
            .slots
            .iter()
            .map(|s| s.slot_id.clone())
            .collect();
        async move {
            c.withdraw_slots(call(
                bpb::WithdrawSlotsRequest {
                    slot_ids: ids,
                    idempotency_key: key(),
                },
                &t,
            ))
            .await
        }
    })
    .await;

    // Patients 0..n: hold, book the hold, reschedule, then the practice marks them arrived.
    let holds = burst("HoldSlot", n, |i| {
        let (mut c, t, s) = (c.clone(), patient[i].clone(), slot(i));
        async move {
            c.hold_slot(call(
                bpb::HoldSlotRequest {
                    slot_id: s,
                    request_id: String::new(),
                    idempotency_key: key(),
                },
                &t,
            ))
            .await
        }
    })
    .await;
    let booked = burst("Book", n, |i| {
        let (mut c, t, h) = (c.clone(), patient[i].clone(), holds[i].hold_id.clone());
        async move {
            c.book(call(
                bpb::BookRequest {
                    target: Some(bpb::book_request::Target::HoldId(h)),
                    reason: "check-up".into(),
                    request_id: String::new(),
                    idempotency_key: key(),
                },
                &t,
            ))
            .await
        }
    })
    .await;
    let moved = burst("Reschedule", n, |i| {
        let (mut c, t) = (c.clone(), patient[i].clone());
        let (id, s) = (booked[i].appointment_id.clone(), slot(n + i));
        async move {
            c.reschedule(call(
                bpb::RescheduleRequest {
                    appointment_id: id,
                    target: Some(bpb::reschedule_request::Target::SlotId(s)),
                    idempotency_key: key(),
                },
                &t,
            ))
            .await
        }
    })
    .await;
    burst("MarkAppointment", n, |i| {
        let (mut c, t, id) = (c.clone(), ehr.clone(), moved[i].appointment_id.clone());
        async move {
            c.mark_appointment(call(
                bpb::MarkAppointmentRequest {
                    appointment_id: id,
                    status: bpb::AppointmentStatus::Arrived as i32,
                    idempotency_key: key(),
                },
                &t,
            ))
            .await
        }
    })
    .await;

    // Patients n..2n: book a slot directly, then cancel it.
    let direct = burst("Book", n, |i| {
        let (mut c, t, s) = (c.clone(), patient[n + i].clone(), slot(2 * n + i));
        async move {
            c.book(call(
                bpb::BookRequest {
                    target: Some(bpb::book_request::Target::SlotId(s)),
                    reason: "check-up".into(),
                    request_id: String::new(),
                    idempotency_key: key(),
                },
                &t,
            ))
            .await
        }
    })
    .await;
    burst("Cancel", n, |i| {
        let (mut c, t) = (c.clone(), patient[n + i].clone());
        let id = direct[i].appointment_id.clone();
        async move {
            c.cancel(call(
                bpb::CancelRequest {
                    appointment_id: id,
                    idempotency_key: key(),
                },
                &t,
            ))
            .await
        }
    })
    .await;

    // Patients 2n..3n: the practice books for them, then cancels.
    let for_patient = burst("BookForPatient", n, |i| {
        let (mut c, t) = (c.clone(), ehr.clone());
        let (nin, s) = (nins[2 * n + i].clone(), slot(3 * n + i));
        async move {
            c.book_for_patient(call(
                bpb::BookForPatientRequest {
                    slot_id: s,
                    patient_nin: nin,
                    reason: "follow-up".into(),
                    idempotency_key: key(),
                    requested_at: None,
                },
                &t,
            ))
            .await
        }
    })
    .await;
    burst("CancelByPractice", n, |i| {
        let (mut c, t) = (c.clone(), ehr.clone());
        let id = for_patient[i].appointment_id.clone();
        async move {
            c.cancel_by_practice(call(
                bpb::CancelByPracticeRequest {
                    appointment_id: id,
                    reason: "the GP is ill".into(),
                    idempotency_key: key(),
                },
                &t,
            ))
            .await
        }
    })
    .await;

    // Patients 3n..4n: join the waitlist (free slots are offered at once), then leave it.
    let entries = burst("JoinWaitlist", n, |i| {
        let (mut c, t) = (c.clone(), patient[3 * n + i].clone());
        async move {
            c.join_waitlist(call(
                bpb::JoinWaitlistRequest {
                    latest_date: "2026-06-30".into(),
                    modality: bpb::Modality::Unspecified as i32,
                    idempotency_key: key(),
                    request_id: String::new(),
                },
                &t,
            ))
            .await
        }
    })
    .await;
    burst("LeaveWaitlist", n, |i| {
        let (mut c, t) = (c.clone(), patient[3 * n + i].clone());
        let id = entries[i].entry_id.clone();
        async move {
            c.leave_waitlist(call(bpb::LeaveWaitlistRequest { entry_id: id }, &t))
                .await
        }
    })
    .await;
    app.shutdown().await;
}

async fn every_mutating_consultation_rpc_stays_live_with_four_times_the_pool_in_concurrent_callers(
    env: Env,
) {
    let app = start_small_pool(env).await;
    let n = CALLERS;
    let nins = seed_gp(&app, ORG_A, "gp-1", 32, 3 * n).await;
    publish(
        &app,
        ORG_A,
        "gp-1",
        &(0..4).map(at).collect::<Vec<_>>(),
        bpb::Modality::InPerson,
    )
    .await;
    let ehr = app.ehr_token(ORG_A);
    let patient: Vec<String> = nins.iter().map(|p| app.patient_token(p)).collect();
    let c = app.consultation().await;
    const HPR: &str = "1000001";

    burst("SetResponseDays", n, |i| {
        let (mut c, t) = (c.clone(), ehr.clone());
        async move {
            c.set_response_days(call(
                cpb::SetResponseDaysRequest {
                    working_days: 3 + (i % 3) as i32,
                },
                &t,
            ))
            .await
        }
    })
    .await;
    // The case: StartConsultation, here from 3 × CALLERS patients at once.
    let started = burst("StartConsultation", 3 * n, |i| {
        let (mut c, t) = (c.clone(), patient[i].clone());
        async move {
            c.start_consultation(call(
                cpb::StartConsultationRequest {
                    category: cpb::Category::EConsultation as i32,
                    subject: "Rash".into(),
                    body: format!("question {i}"),
                    attachments: vec![],
                    urgent: false,
                    language: String::new(),
                    idempotency_key: key(),
                    booking_request_id: String::new(),
                },
                &t,
            ))
            .await
        }
    })
    .await;
    let thread = |i: usize| {
        started[i]
            .thread
            .as_ref()
            .map(|t| t.thread_id.clone())
            .expect("thread of a started consultation")
    };

    // Threads 0..n: a message, claimed, read, answered, closed.
    burst("SendMessage", n, |i| {
        let (mut c, t, id) = (c.clone(), patient[i].clone(), thread(i));
        async move {
            c.send_message(call(
                cpb::SendMessageRequest {
                    thread_id: id,
                    body: "it got worse".into(),
                    attachments: vec![],
                    idempotency_key: key(),
                },
                &t,
            ))
            .await
        }
    })
    .await;
    burst("ClaimThread", n, |i| {
        let (mut c, t, id) = (c.clone(), ehr.clone(), thread(i));
        async move {
            c.claim_thread(call(
                cpb::ClaimThreadRequest {
                    thread_id: id,
                    clinician_hpr_number: HPR.into(),
                    idempotency_key: key(),
                },
                &t,
            ))
            .await
        }
    })
    .await;
    burst("MarkRead", n, |i| {
        let (mut c, t, id) = (c.clone(), ehr.clone(), thread(i));
        async move {
            c.mark_read(call(
                cpb::MarkReadRequest {
                    thread_id: id,
                    up_to_seq: 2,
                },
                &t,
            ))
            .await
        }
    })
    .await;
    burst("Reply", n, |i| {
        let (mut c, t, id) = (c.clone(), ehr.clone(), thread(i));
        async move {
            c.reply(call(
                cpb::ReplyRequest {
                    thread_id: id,
                    body: "see a pharmacist".into(),
                    attachments: vec![],
                    ask_patient: false,
                    clinician_hpr_number: HPR.into(),
                    idempotency_key: key(),
                },
                &t,
            ))
            .await
        }
    })
    .await;
    burst("CloseConsultation", n, |i| {
        let (mut c, t, id) = (c.clone(), ehr.clone(), thread(i));
        async move {
            c.close_consultation(call(
                cpb::CloseConsultationRequest {
                    thread_id: id,
                    outcome: "answered".into(),
                    tariff_code: String::new(),
                    idempotency_key: key(),
                },
                &t,
            ))
            .await
        }
    })
    .await;

    // Threads n..2n: converted to a booking (reads free slots and the calendar).
    burst("ConvertToBooking", n, |i| {
        let (mut c, t, id) = (c.clone(), ehr.clone(), thread(n + i));
        async move {
            c.convert_to_booking(call(
                cpb::ConvertToBookingRequest {
                    thread_id: id,
                    body: "please come in".into(),
                    offer_count: 3,
                    idempotency_key: key(),
                },
                &t,
            ))
            .await
        }
    })
    .await;

    // One thread, n callers at once: patient messages and practice replies queue on the
    // thread's lock, each holding its connection while it waits; the holder of the lock must
    // get through without a second one.
    let busy = thread(2 * n);
    burst("SendMessage and Reply on one thread", n, |i| {
        let (mut c, id) = (c.clone(), busy.clone());
        let (patient_token, ehr) = (patient[2 * n].clone(), ehr.clone());
        async move {
            if i % 2 == 0 {
                c.send_message(call(
                    cpb::SendMessageRequest {
                        thread_id: id,
                        body: format!("more {i}"),
                        attachments: vec![],
                        idempotency_key: key(),
                    },
                    &patient_token,
                ))
                .await
            } else {
                c.reply(call(
                    cpb::ReplyRequest {
                        thread_id: id,
                        body: format!("tell me more {i}"),
                        attachments: vec![],
                        ask_patient: true,
                        clinician_hpr_number: HPR.into(),
                        idempotency_key: key(),
                    },
                    &ehr,
                ))
                .await
            }
        }
    })
    .await;

    // Threads 2n..3n: withdrawn by the patient.
    burst("WithdrawConsultation", n, |i| {
        let (mut c, t, id) = (c.clone(), patient[2 * n + i].clone(), thread(2 * n + i));
        async move {
            c.withdraw_consultation(call(
                cpb::WithdrawConsultationRequest {
                    thread_id: id,
                    idempotency_key: key(),
                },
                &t,
            ))
            .await
        }
    })
    .await;
    app.shutdown().await;
}

/// Nothing holds a pooled connection for long: with a pool of one connection (PostgreSQL: the
/// pool; SQLite: the read pool) calls go through and the outbox relay sequences their events.
/// The relay's leader lock used to take a pooled connection for as long as it led: with a pool
/// of one, no call got a connection.
async fn a_pool_of_one_connection_serves_calls_and_relays_their_events(env: Env) {
    let tweak: Tweak = Arc::new(|c| {
        c.db_max_connections = 1;
        c.rate_limits = RateLimits::unlimited();
    });
    let app = TestApp::start_configured(env, monday_0800(), Some(tweak)).await;
    let nins = seed_gp(&app, ORG_A, "gp-1", 33, 4).await;
    let c = app.consultation().await;
    burst("StartConsultation", nins.len(), |i| {
        let (mut c, t) = (c.clone(), app.patient_token(&nins[i]));
        async move {
            c.start_consultation(call(
                cpb::StartConsultationRequest {
                    category: cpb::Category::Administrative as i32,
                    subject: "Sick note".into(),
                    body: "for last week".into(),
                    attachments: vec![],
                    urgent: false,
                    language: String::new(),
                    idempotency_key: key(),
                    booking_request_id: String::new(),
                },
                &t,
            ))
            .await
        }
    })
    .await;
    let mut sequenced = app.platform().sequenced.clone();
    tokio::time::timeout(DEADLINE, sequenced.wait_for(|seq| *seq > 0))
        .await
        .expect("the relay sequences the calls' events within the deadline")
        .expect("relay running");
    app.shutdown().await;
}

on_both_backends!(
    every_mutating_booking_rpc_stays_live_with_four_times_the_pool_in_concurrent_callers,
    every_mutating_consultation_rpc_stays_live_with_four_times_the_pool_in_concurrent_callers,
    a_pool_of_one_connection_serves_calls_and_relays_their_events,
);
