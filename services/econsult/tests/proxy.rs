//! Acting for others (issue 24) through the real gRPC server, on both backends: the matrix of
//! the represented person's age × the relation × each class of patient RPC, every cell with
//! its exact outcome; the fullmakt RPCs; bad `x-on-behalf-of` values.

mod common;

use chrono::{DateTime, Duration, NaiveDate, Utc};
use common::*;
use econsult_proto::audit::v1 as apb;
use econsult_proto::audit::v1::audit_service_client::AuditServiceClient;
use econsult_proto::booking::v1 as bpb;
use econsult_proto::consultation::v1 as cpb;
use econsult_proto::proxy::v1 as ppb;
use econsult_proto::proxy::v1::proxy_service_client::ProxyServiceClient;
use econsult_proto::signalling::v1 as spb;
use econsult_proto::signalling::v1::signalling_service_client::SignallingServiceClient;
use econsult_runtime::auth::{ON_BEHALF_OF_HEADER, REQUIRED_ACR, RepresentsClaim, TokenSpec};
use econsult_runtime::nin::synthetic_born;
use econsult_runtime::proxy::rule;
use tonic::Code;

const GP: &str = "gp-proxy";
const AGES: [u32; 5] = [11, 12, 15, 16, 17];

/// How the caller in a cell is related to the represented person.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rel {
    Parent,
    Fullmakt,
    None,
    Expired,
    Revoked,
    Protected,
}
const RELS: [Rel; 6] = [
    Rel::Parent,
    Rel::Fullmakt,
    Rel::None,
    Rel::Expired,
    Rel::Revoked,
    Rel::Protected,
];

/// The classes of patient RPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    ReadBookings,
    Book,
    StartConsultation,
    ReadConsultations,
    JoinVideo,
    Cancel,
    ReadAccessLog,
}
const CLASSES: [Class; 7] = [
    Class::ReadBookings,
    Class::Book,
    Class::StartConsultation,
    Class::ReadConsultations,
    Class::JoinVideo,
    Class::Cancel,
    Class::ReadAccessLog,
];

/// The outcome the rules give a cell: `Ok(())` or PERMISSION_DENIED with this rule.
fn expected(age: u32, rel: Rel, class: Class) -> Result<(), &'static str> {
    match rel {
        Rel::Protected => Err(rule::PROTECTED_ADDRESS),
        Rel::None => Err(rule::NO_RELATION),
        Rel::Parent if age >= 16 => Err(rule::PARENT_ENDS_AT_16),
        Rel::Parent => Ok(()),
        // Under 16 no fullmakt can be given: there is no relation.
        Rel::Fullmakt | Rel::Expired | Rel::Revoked if age < 16 => Err(rule::NO_RELATION),
        Rel::Fullmakt if class == Class::ReadAccessLog => Err(rule::NO_ACCESS_LOG),
        Rel::Fullmakt => Ok(()),
        Rel::Expired => Err(rule::EXPIRED),
        Rel::Revoked => Err(rule::REVOKED),
    }
}

/// Someone `age` on 2026-03-02 (the test clock's day): born 15 January.
fn aged(age: u32, nth: u64) -> String {
    synthetic_born(2026 - age, 1, 15, nth)
        .expect("a number")
        .as_str()
        .to_owned()
}

fn on_behalf<T>(msg: T, token: &str, subject: &str) -> tonic::Request<T> {
    let mut r = authed(msg, token);
    r.metadata_mut()
        .insert(ON_BEHALF_OF_HEADER, subject.parse().expect("header"));
    r
}

fn parent_token(app: &TestApp, parent: &str, child: &str, protected: bool) -> String {
    app.token(TokenSpec::PatientWithRelations {
        nin: parent.into(),
        acr: REQUIRED_ACR.into(),
        represents: vec![RepresentsClaim {
            pid: child.into(),
            relation: "parent".into(),
            protected_address: protected,
            name: None,
        }],
        protected_address: false,
        name: None,
    })
}

async fn grant(
    app: &TestApp,
    giver: &str,
    holder: &str,
    scope: ppb::FullmaktScope,
    end: NaiveDate,
) -> Result<ppb::Fullmakt, tonic::Status> {
    ProxyServiceClient::new(app.channel().await)
        .grant_fullmakt(authed(
            ppb::GrantFullmaktRequest {
                holder_nin: holder.into(),
                scope: scope as i32,
                end_date: end.to_string(),
                idempotency_key: key(),
            },
            &app.patient_token(giver),
        ))
        .await
        .map(|r| r.into_inner())
}

async fn book_own(app: &TestApp, nin: &str, slot_id: &str) -> String {
    app.booking()
        .await
        .book(authed(
            bpb::BookRequest {
                target: Some(bpb::book_request::Target::SlotId(slot_id.into())),
                reason: "kontroll".into(),
                request_id: String::new(),
                idempotency_key: key(),
            },
            &app.patient_token(nin),
        ))
        .await
        .expect("own booking")
        .into_inner()
        .appointment_id
}

fn start_req(subject: &str) -> cpb::StartConsultationRequest {
    cpb::StartConsultationRequest {
        category: cpb::Category::EConsultation as i32,
        subject: subject.into(),
        body: "a question".into(),
        attachments: vec![],
        urgent: false,
        language: String::new(),
        idempotency_key: key(),
        booking_request_id: String::new(),
    }
}

/// One cell's fixture.
struct Cell {
    /// Its number (the subject of the thread the cell starts names it).
    n: usize,
    age: u32,
    rel: Rel,
    subject: String,
    actor: String,
    token: String,
    /// The subject's own appointment (video), at `start`.
    own_appointment: String,
    start: DateTime<Utc>,
    /// A free slot to book.
    free_slot: String,
    /// The subject's own thread.
    own_thread: String,
}

fn check(cell: &Cell, class: Class, got: Result<(), tonic::Status>) -> bool {
    let want = expected(cell.age, cell.rel, class);
    match (&want, &got) {
        (Ok(()), Ok(())) => true,
        (Err(rule), Err(s)) if s.code() == Code::PermissionDenied && s.message() == *rule => true,
        _ => {
            eprintln!(
                "cell age {} {:?} {:?}: wanted {want:?}, got {got:?}",
                cell.age, cell.rel, class
            );
            false
        }
    }
}

async fn run_cell(app: &TestApp, cell: &Cell, class: Class) -> Result<(), tonic::Status> {
    let (t, s) = (cell.token.as_str(), cell.subject.as_str());
    match class {
        Class::ReadBookings => {
            let r = app
                .booking()
                .await
                .list_my_bookings(on_behalf(
                    bpb::ListMyBookingsRequest {
                        include_past: false,
                    },
                    t,
                    s,
                ))
                .await?
                .into_inner();
            assert!(
                r.appointments
                    .iter()
                    .any(|a| a.appointment_id == cell.own_appointment),
                "the subject's appointment is listed"
            );
            assert!(r.appointments.iter().all(|a| a.patient_nin == cell.subject));
        }
        Class::Book => {
            let a = app
                .booking()
                .await
                .book(on_behalf(
                    bpb::BookRequest {
                        target: Some(bpb::book_request::Target::SlotId(cell.free_slot.clone())),
                        reason: "booked for them".into(),
                        request_id: String::new(),
                        idempotency_key: key(),
                    },
                    t,
                    s,
                ))
                .await?
                .into_inner();
            assert_eq!(a.patient_nin, cell.subject, "booked for the subject");
        }
        Class::StartConsultation => {
            let r = app
                .consultation()
                .await
                .start_consultation(on_behalf(start_req(&started_in(cell)), t, s))
                .await?
                .into_inner();
            assert!(r.thread.is_some());
        }
        Class::ReadConsultations => {
            let r = app
                .consultation()
                .await
                .list_threads(on_behalf(cpb::ListThreadsRequest::default(), t, s))
                .await?
                .into_inner();
            let own = r.threads.iter().any(|th| th.thread_id == cell.own_thread);
            let limited = cell.rel == Rel::Parent && (12..16).contains(&cell.age);
            assert_eq!(
                own, !limited,
                "the child's own thread is hidden exactly when limited"
            );
            // The thread started for them in this cell is listed.
            let started = r
                .threads
                .iter()
                .find(|th| th.subject == started_in(cell))
                .expect("the thread started in this cell")
                .thread_id
                .clone();
            let got = app
                .consultation()
                .await
                .get_thread(on_behalf(
                    cpb::GetThreadRequest {
                        thread_id: cell.own_thread.clone(),
                        after_seq: 0,
                        page_size: 0,
                    },
                    t,
                    s,
                ))
                .await;
            assert_eq!(got.is_ok(), !limited, "{got:?}");
            if limited {
                assert_eq!(got.unwrap_err().code(), Code::NotFound);
            }
            // The practice marks the thread the parent started confidential to the child: a
            // parent with limited access no longer sees it anywhere; one of a child under 12
            // (and a fullmakt holder) still does.
            mark_confidential(app, &started).await;
            let listed = app
                .consultation()
                .await
                .list_threads(on_behalf(cpb::ListThreadsRequest::default(), t, s))
                .await?
                .into_inner()
                .threads
                .iter()
                .any(|th| th.thread_id == started);
            assert_eq!(listed, !limited, "confidential hidden exactly when limited");
            let got = app
                .consultation()
                .await
                .get_thread(on_behalf(
                    cpb::GetThreadRequest {
                        thread_id: started.clone(),
                        after_seq: 0,
                        page_size: 0,
                    },
                    t,
                    s,
                ))
                .await;
            match got {
                Ok(g) => {
                    assert!(!limited);
                    let th = g.into_inner().thread.expect("thread");
                    assert!(th.confidential_to_patient, "the patient side sees the mark");
                }
                Err(e) => assert!(limited && e.code() == Code::NotFound, "{e:?}"),
            }
        }
        Class::JoinVideo => {
            app.clock.set(cell.start - Duration::minutes(5));
            let j = SignallingServiceClient::new(app.channel().await)
                .join_session(on_behalf(
                    spb::JoinSessionRequest {
                        appointment_id: cell.own_appointment.clone(),
                    },
                    t,
                    s,
                ))
                .await?
                .into_inner();
            assert_eq!(j.side, spb::Side::Patient as i32);
        }
        Class::Cancel => {
            let a = app
                .booking()
                .await
                .cancel(on_behalf(
                    bpb::CancelRequest {
                        appointment_id: cell.own_appointment.clone(),
                        idempotency_key: key(),
                    },
                    t,
                    s,
                ))
                .await?
                .into_inner();
            assert_eq!(a.status, bpb::AppointmentStatus::Cancelled as i32);
        }
        Class::ReadAccessLog => {
            let r = AuditServiceClient::new(app.channel().await)
                .list_my_access_log(on_behalf(apb::ListMyAccessLogRequest::default(), t, s))
                .await?
                .into_inner();
            assert!(r.entries.iter().all(|e| e.patient_nin == cell.subject));
            let by_actor: Vec<_> = r
                .entries
                .iter()
                .filter(|e| e.actor_nin == cell.actor)
                .collect();
            // Every class the actor ran before in this cell is in the subject's log.
            for action in [
                "/ListMyBookings",
                "/Book",
                "/StartConsultation",
                "/ListThreads",
                "/JoinSession",
                "/Cancel",
            ] {
                assert!(
                    by_actor.iter().any(|e| e.action.ends_with(action)),
                    "{action} by the actor is in the subject's log: {by_actor:?}"
                );
            }
            assert!(
                by_actor
                    .iter()
                    .all(|e| e.acted_as == apb::ActedAs::Parent as i32),
                "{by_actor:?}"
            );
        }
    }
    Ok(())
}

/// The subject of the thread cell `cell` starts for its patient.
fn started_in(cell: &Cell) -> String {
    format!("for them, cell {}", cell.n)
}

/// The practice (ORG_A's EHR) marks thread `id` confidential to its patient.
async fn mark_confidential(app: &TestApp, id: &str) {
    let t = app
        .consultation()
        .await
        .set_thread_confidential(authed(
            cpb::SetThreadConfidentialRequest {
                thread_id: id.into(),
                confidential_to_patient: true,
                idempotency_key: key(),
            },
            &app.ehr_token(ORG_A),
        ))
        .await
        .expect("marked confidential")
        .into_inner()
        .thread
        .expect("thread");
    assert!(t.confidential_to_patient);
}

async fn every_cell_of_the_age_relation_rpc_matrix_has_its_exact_outcome(env: Env) {
    let app = TestApp::start(env).await; // Monday 2026-03-02 08:00 Oslo
    let today = NaiveDate::from_ymd_opt(2026, 3, 2).expect("day");
    let subjects: Vec<String> = AGES.iter().map(|a| aged(*a, 1)).collect();
    seed_gp(&app, ORG_A, GP, 41, 0).await;
    app.booking()
        .await
        .update_list(authed(
            bpb::UpdateListRequest {
                gp_id: GP.into(),
                add: subjects.clone(),
                remove: vec![],
                idempotency_key: key(),
            },
            &app.ehr_token(ORG_A),
        ))
        .await
        .expect("list");
    // One video slot per cell for the subject's own appointment (30 minutes apart from
    // Tuesday 07:00 UTC), and one free slot per cell a week later.
    let n = AGES.len() * RELS.len();
    let first = monday_0800() + Duration::days(1);
    let own_starts: Vec<_> = (0..n)
        .map(|i| first + Duration::minutes(30 * i as i64))
        .collect();
    let free_starts: Vec<_> = (0..n)
        .map(|i| first + Duration::days(7) + Duration::minutes(15 * i as i64))
        .collect();
    let own_slots = publish(&app, ORG_A, GP, &own_starts, bpb::Modality::Video).await;
    let free_slots = publish(&app, ORG_A, GP, &free_starts, bpb::Modality::Video).await;

    let mut cells = Vec::new();
    for (ai, age) in AGES.iter().enumerate() {
        let subject = &subjects[ai];
        let own_thread = app
            .consultation()
            .await
            .start_consultation(authed(start_req("my own"), &app.patient_token(subject)))
            .await
            .expect("own thread")
            .into_inner()
            .thread
            .expect("thread")
            .thread_id;
        for (ri, rel) in RELS.iter().enumerate() {
            let i = ai * RELS.len() + ri;
            let actor = aged(40, 10 + i as u64);
            let token = match rel {
                Rel::Parent => parent_token(&app, &actor, subject, false),
                Rel::Protected => parent_token(&app, &actor, subject, true),
                _ => app.patient_token(&actor),
            };
            let end = match rel {
                Rel::Expired => Some(today),
                Rel::Fullmakt | Rel::Revoked => Some(today + Duration::days(30)),
                _ => None,
            };
            if let Some(end) = end {
                let g = grant(&app, subject, &actor, ppb::FullmaktScope::Both, end).await;
                if *age < 16 {
                    let e = g.expect_err("a giver under 16 is refused");
                    assert_eq!(e.code(), Code::PermissionDenied);
                    assert_eq!(e.message(), rule::GIVER_UNDER_16);
                } else {
                    let f = g.expect("granted");
                    assert_eq!(f.state, ppb::FullmaktState::Active as i32);
                    if *rel == Rel::Revoked {
                        let r = ProxyServiceClient::new(app.channel().await)
                            .revoke_fullmakt(authed(
                                ppb::RevokeFullmaktRequest {
                                    fullmakt_id: f.id.clone(),
                                    idempotency_key: key(),
                                },
                                &app.patient_token(subject),
                            ))
                            .await
                            .expect("revoke")
                            .into_inner();
                        assert_eq!(r.state, ppb::FullmaktState::Revoked as i32);
                    }
                }
            }
            cells.push(Cell {
                n: i,
                age: *age,
                rel: *rel,
                subject: subject.clone(),
                actor,
                token,
                own_appointment: book_own(&app, subject, &own_slots[i].slot_id).await,
                start: own_starts[i],
                free_slot: free_slots[i].slot_id.clone(),
                own_thread: own_thread.clone(),
            });
        }
    }
    // The cells run on the day after: the expired fullmakt ended yesterday.
    app.clock.set(first - Duration::hours(1));
    let mut wrong = 0;
    let mut checked = 0;
    for cell in &cells {
        for class in CLASSES {
            let got = run_cell(&app, cell, class).await;
            checked += 1;
            if !check(cell, class, got) {
                wrong += 1;
            }
        }
    }
    assert_eq!(checked, AGES.len() * RELS.len() * CLASSES.len());
    assert_eq!(wrong, 0, "{wrong} of {checked} cells differ from the rules");
    app.shutdown().await;
}

async fn fullmakt_rpcs_grant_list_revoke_and_refuse_by_the_rules(env: Env) {
    let app = TestApp::start(env).await;
    let today = NaiveDate::from_ymd_opt(2026, 3, 2).expect("day");
    let giver = aged(30, 1);
    let holder = aged(45, 2);
    let young_holder = aged(17, 3);
    let mut c = ProxyServiceClient::new(app.channel().await);
    let f = grant(&app, &giver, &holder, ppb::FullmaktScope::Booking, today)
        .await
        .expect("granted");
    assert_eq!(
        (f.giver_nin.as_str(), f.holder_nin.as_str()),
        (giver.as_str(), holder.as_str())
    );
    let e = grant(&app, &giver, &young_holder, ppb::FullmaktScope::Both, today)
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (Code::PermissionDenied, rule::HOLDER_UNDER_18)
    );
    let e = grant(
        &app,
        &giver,
        &holder,
        ppb::FullmaktScope::Both,
        today - Duration::days(1),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    // A giver whose token says their address is strictly confidential gives none (another
    // person: from then on nobody acts for them, see the test below).
    let protected = app.token(TokenSpec::PatientWithRelations {
        nin: aged(31, 4),
        acr: REQUIRED_ACR.into(),
        represents: vec![],
        protected_address: true,
        name: None,
    });
    let e = c
        .grant_fullmakt(authed(
            ppb::GrantFullmaktRequest {
                holder_nin: holder.clone(),
                scope: ppb::FullmaktScope::Both as i32,
                end_date: today.to_string(),
                idempotency_key: key(),
            },
            &protected,
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (Code::PermissionDenied, rule::PROTECTED_ADDRESS)
    );

    // The holder lists whom they may act for; the scope is enforced.
    let mine = c
        .list_represented(authed(
            ppb::ListRepresentedRequest {},
            &app.patient_token(&holder),
        ))
        .await
        .expect("represented")
        .into_inner()
        .represented;
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].nin, giver);
    assert_eq!(mine[0].relation, ppb::Relation::Fullmakt as i32);
    let e = app
        .consultation()
        .await
        .list_threads(on_behalf(
            cpb::ListThreadsRequest::default(),
            &app.patient_token(&holder),
            &giver,
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (Code::PermissionDenied, rule::NOT_CONSULTATION)
    );

    // The giver lists and revokes; another person cannot revoke it.
    let given = c
        .list_given_fullmakter(authed(
            ppb::ListGivenFullmakterRequest {},
            &app.patient_token(&giver),
        ))
        .await
        .expect("given")
        .into_inner()
        .fullmakter;
    assert_eq!(
        given.iter().map(|g| g.id.clone()).collect::<Vec<_>>(),
        vec![f.id.clone()]
    );
    let e = c
        .revoke_fullmakt(authed(
            ppb::RevokeFullmaktRequest {
                fullmakt_id: f.id.clone(),
                idempotency_key: key(),
            },
            &app.patient_token(&holder),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    // Nobody grants for another person.
    let e = c
        .grant_fullmakt(on_behalf(
            ppb::GrantFullmaktRequest {
                holder_nin: holder.clone(),
                scope: ppb::FullmaktScope::Both as i32,
                end_date: today.to_string(),
                idempotency_key: key(),
            },
            &app.patient_token(&holder),
            &giver,
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (Code::PermissionDenied, rule::NOT_ON_BEHALF)
    );
    let r = c
        .revoke_fullmakt(authed(
            ppb::RevokeFullmaktRequest {
                fullmakt_id: f.id.clone(),
                idempotency_key: key(),
            },
            &app.patient_token(&giver),
        ))
        .await
        .expect("revoked")
        .into_inner();
    assert_eq!(r.state, ppb::FullmaktState::Revoked as i32);
    let mine = c
        .list_represented(authed(
            ppb::ListRepresentedRequest {},
            &app.patient_token(&holder),
        ))
        .await
        .expect("represented")
        .into_inner()
        .represented;
    assert!(mine.is_empty());
    // The grant and the revocation are events in the outbox.
    let topics: Vec<String> =
        sqlx::query_scalar("SELECT topic FROM outbox WHERE topic LIKE 'proxy.%' ORDER BY id")
            .fetch_all(app.platform().db.read())
            .await
            .expect("outbox");
    assert_eq!(
        topics,
        vec!["proxy.fullmakt_granted", "proxy.fullmakt_revoked"]
    );
    app.shutdown().await;
}

async fn an_on_behalf_of_that_is_no_identity_number_is_invalid_argument(env: Env) {
    let app = TestApp::start(env).await;
    let me = aged(40, 1);
    for bad in ["12345678901", "abc", ""] {
        let e = app
            .booking()
            .await
            .list_my_bookings(on_behalf(
                bpb::ListMyBookingsRequest {
                    include_past: false,
                },
                &app.patient_token(&me),
                bad,
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{bad:?}: {e:?}");
    }
    // Naming oneself is acting for oneself.
    app.booking()
        .await
        .list_my_bookings(on_behalf(
            bpb::ListMyBookingsRequest {
                include_past: false,
            },
            &app.patient_token(&me),
            &me,
        ))
        .await
        .expect("own bookings");
    app.shutdown().await;
}

/// A patient token stating (or not) its own person's protected address.
fn own_token(app: &TestApp, nin: &str, protected: bool) -> String {
    app.token(TokenSpec::PatientWithRelations {
        nin: nin.into(),
        acr: REQUIRED_ACR.into(),
        represents: vec![],
        protected_address: protected,
        name: None,
    })
}

async fn list_for(app: &TestApp, token: &str, subject: &str) -> Result<(), tonic::Status> {
    app.booking()
        .await
        .list_my_bookings(on_behalf(
            bpb::ListMyBookingsRequest {
                include_past: false,
            },
            token,
            subject,
        ))
        .await
        .map(|_| ())
}

/// A protected address the giver's (or child's) own token states on a later call ends every
/// representation of them from then on: the fullmakt holder's and the parent's calls are
/// refused naming the rule, and the holder's ListRepresented leaves them out; a grant by a
/// token without it forgets it.
async fn a_protected_address_learned_after_the_grant_refuses_every_later_call(env: Env) {
    let app = TestApp::start(env).await;
    let today = NaiveDate::from_ymd_opt(2026, 3, 2).expect("day");
    let giver = aged(30, 1);
    let holder = aged(45, 2);
    let other = aged(50, 3);
    let child = aged(10, 4);
    let parent = aged(40, 5);
    grant(&app, &giver, &holder, ppb::FullmaktScope::Both, today)
        .await
        .expect("granted");
    let holder_token = app.patient_token(&holder);
    let parent_token = parent_token(&app, &parent, &child, false);
    list_for(&app, &holder_token, &giver)
        .await
        .expect("the holder acts for the giver");
    list_for(&app, &parent_token, &child)
        .await
        .expect("the parent acts for the child");

    // The giver and the child call for themselves with tokens saying their addresses are now
    // strictly confidential.
    list_for(&app, &own_token(&app, &giver, true), &giver)
        .await
        .expect("the giver's own call");
    list_for(&app, &own_token(&app, &child, true), &child)
        .await
        .expect("the child's own call");
    let refused = |r: Result<(), tonic::Status>| {
        let e = r.expect_err("refused");
        assert_eq!(
            (e.code(), e.message()),
            (Code::PermissionDenied, rule::PROTECTED_ADDRESS)
        );
    };
    refused(list_for(&app, &holder_token, &giver).await);
    refused(
        app.consultation()
            .await
            .list_threads(on_behalf(
                cpb::ListThreadsRequest::default(),
                &holder_token,
                &giver,
            ))
            .await
            .map(|_| ()),
    );
    // The parent's token still says nothing of it; the stored fact refuses them all the same.
    refused(list_for(&app, &parent_token, &child).await);
    let represented = |token: String| {
        let app = &app;
        async move {
            ProxyServiceClient::new(app.channel().await)
                .list_represented(authed(ppb::ListRepresentedRequest {}, &token))
                .await
                .expect("represented")
                .into_inner()
                .represented
        }
    };
    assert!(represented(holder_token.clone()).await.is_empty());
    assert!(represented(parent_token.clone()).await.is_empty());

    // A grant by the giver's token without a protected address forgets it.
    grant(&app, &giver, &other, ppb::FullmaktScope::Booking, today)
        .await
        .expect("granted again");
    list_for(&app, &holder_token, &giver)
        .await
        .expect("the holder acts for the giver again");
    app.shutdown().await;
}

/// The child's access log rows about e-consultations, as `token` reads them for `child`.
async fn thread_rows(app: &TestApp, token: &str, child: &str) -> (usize, usize) {
    let log = AuditServiceClient::new(app.channel().await)
        .list_my_access_log(on_behalf(
            apb::ListMyAccessLogRequest {
                before_id: 0,
                limit: 500,
            },
            token,
            child,
        ))
        .await
        .expect("the child's log")
        .into_inner()
        .entries;
    let threads = log
        .iter()
        .filter(|e| e.resource.starts_with("consultation"))
        .count();
    (log.len(), threads)
}

/// A parent of a child from 12 to 16 reads the child's access log without the rows about the
/// child's threads (which quote their subjects and show who read them); a parent of a younger
/// child, and the child itself, see them. Before the filter the parent of the 13-year-old saw
/// the row of the practice's read of "private".
async fn a_limited_parent_reads_the_childs_log_without_its_threads(env: Env) {
    let app = TestApp::start(env).await;
    let (teen, small) = (aged(13, 1), aged(10, 2));
    let parent = aged(40, 3);
    seed_gp(&app, ORG_A, GP, 43, 0).await;
    app.booking()
        .await
        .update_list(authed(
            bpb::UpdateListRequest {
                gp_id: GP.into(),
                add: vec![teen.clone(), small.clone()],
                remove: vec![],
                idempotency_key: key(),
            },
            &app.ehr_token(ORG_A),
        ))
        .await
        .expect("list");
    for child in [&teen, &small] {
        let thread = app
            .consultation()
            .await
            .start_consultation(authed(start_req("private"), &app.patient_token(child)))
            .await
            .expect("the child's own thread")
            .into_inner()
            .thread
            .expect("thread")
            .thread_id;
        // The practice reads it: a row in the child's log that names the thread's subject.
        app.consultation()
            .await
            .get_thread(authed(
                cpb::GetThreadRequest {
                    thread_id: thread,
                    after_seq: 0,
                    page_size: 0,
                },
                &app.ehr_token(ORG_A),
            ))
            .await
            .expect("the practice reads the thread");
    }
    let (teen_all, teen_threads) = thread_rows(&app, &app.patient_token(&teen), &teen).await;
    assert!(teen_threads >= 1, "the child sees its thread's rows");
    let (parent_all, parent_threads) =
        thread_rows(&app, &parent_token(&app, &parent, &teen, false), &teen).await;
    assert_eq!(parent_threads, 0, "a limited parent sees no thread rows");
    assert!(
        parent_all >= teen_all - teen_threads,
        "every other row is there: {parent_all} of {teen_all} - {teen_threads}"
    );
    let (_, small_threads) =
        thread_rows(&app, &parent_token(&app, &parent, &small, false), &small).await;
    assert!(small_threads >= 1, "a parent of a child under 12 sees them");
    app.shutdown().await;
}

on_both_backends!(
    a_limited_parent_reads_the_childs_log_without_its_threads,
    a_protected_address_learned_after_the_grant_refuses_every_later_call,
    every_cell_of_the_age_relation_rpc_matrix_has_its_exact_outcome,
    fullmakt_rpcs_grant_list_revoke_and_refuse_by_the_rules,
    an_on_behalf_of_that_is_no_identity_number_is_invalid_argument,
);
