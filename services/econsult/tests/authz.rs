//! The authorization matrix: every RPC of every econsult service (read from the compiled
//! descriptor set, so a new RPC without a row here fails) called by every kind of caller, with
//! the exact outcome checked. Requests are empty messages sent through a raw codec: the caller
//! is checked before the request is looked at, so an empty request shows the access decision
//! (UNAUTHENTICATED / PERMISSION_DENIED, or anything else = let through to validation).
//! Ownership (patient A vs B, organisation A vs B) with real resources is checked in the
//! second test and in the per-service suites.

mod common;

use common::*;
use econsult_runtime::auth::{REQUIRED_ACR, TokenSpec};
use prost::Message as _;
use std::collections::BTreeMap;
use std::str::FromStr as _;
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

/// Sends and receives raw protobuf bytes.
#[derive(Clone, Default)]
struct Raw;

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Self::Error> {
        let n = bytes::Buf::remaining(src);
        Ok(Some(bytes::Buf::copy_to_bytes(src, n).to_vec()))
    }
}

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

/// Who an RPC is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Audience {
    /// Patients only.
    Patient,
    /// EHR systems and clinicians of an organisation holding the scope.
    Practice(&'static str),
    /// Patients, or the practice with the scope.
    PatientOrPractice(&'static str),
    /// Patients, or clinicians (the two participants of a video consultation).
    PatientOrClinician,
    /// Clinicians only (the GP in a video consultation).
    Clinician,
    /// Operations, or an EHR / clinician with the scope (own organisation).
    OpsOrPractice(&'static str),
    /// Operations only.
    Ops,
}

use Audience::*;

const BOOKING_R: &str = "econsult:booking.read";
const BOOKING_W: &str = "econsult:booking.write";
const CONSULT_R: &str = "econsult:consultation.read";
const CONSULT_W: &str = "econsult:consultation.write";
const STATS_R: &str = "econsult:stats.read";

fn table() -> BTreeMap<&'static str, Audience> {
    BTreeMap::from([
        ("econsult.audit.v1.AuditService/ListAccessLog", Ops),
        ("econsult.audit.v1.AuditService/ListMyAccessLog", Patient),
        (
            "econsult.booking.v1.BookingService/UpsertGp",
            Practice(BOOKING_W),
        ),
        (
            "econsult.booking.v1.BookingService/GetGp",
            Practice(BOOKING_R),
        ),
        (
            "econsult.booking.v1.BookingService/UpdateList",
            Practice(BOOKING_W),
        ),
        (
            "econsult.booking.v1.BookingService/SetClosures",
            Practice(BOOKING_W),
        ),
        (
            "econsult.booking.v1.BookingService/SetOpeningHours",
            Practice(BOOKING_W),
        ),
        (
            "econsult.booking.v1.BookingService/PublishSlots",
            Practice(BOOKING_W),
        ),
        (
            "econsult.booking.v1.BookingService/WithdrawSlots",
            Practice(BOOKING_W),
        ),
        (
            "econsult.booking.v1.BookingService/BookForPatient",
            Practice(BOOKING_W),
        ),
        (
            "econsult.booking.v1.BookingService/MarkAppointment",
            Practice(BOOKING_W),
        ),
        (
            "econsult.booking.v1.BookingService/CancelByPractice",
            Practice(BOOKING_W),
        ),
        (
            "econsult.booking.v1.BookingService/WatchBookings",
            Practice(BOOKING_R),
        ),
        (
            "econsult.booking.v1.BookingService/SetGuaranteePolicy",
            Practice(BOOKING_W),
        ),
        (
            "econsult.booking.v1.BookingService/GetGuaranteePolicy",
            Practice(BOOKING_R),
        ),
        ("econsult.booking.v1.BookingService/FindSlots", Patient),
        ("econsult.booking.v1.BookingService/HoldSlot", Patient),
        ("econsult.booking.v1.BookingService/Book", Patient),
        ("econsult.booking.v1.BookingService/Cancel", Patient),
        ("econsult.booking.v1.BookingService/Reschedule", Patient),
        ("econsult.booking.v1.BookingService/ListMyBookings", Patient),
        ("econsult.booking.v1.BookingService/JoinWaitlist", Patient),
        ("econsult.booking.v1.BookingService/LeaveWaitlist", Patient),
        ("econsult.booking.v1.BookingService/MoveListing", Ops),
        ("econsult.proxy.v1.ProxyService/GrantFullmakt", Patient),
        (
            "econsult.proxy.v1.ProxyService/ListGivenFullmakter",
            Patient,
        ),
        ("econsult.proxy.v1.ProxyService/RevokeFullmakt", Patient),
        ("econsult.proxy.v1.ProxyService/ListRepresented", Patient),
        (
            "econsult.consultation.v1.ConsultationService/StartConsultation",
            Patient,
        ),
        (
            "econsult.consultation.v1.ConsultationService/SendMessage",
            Patient,
        ),
        (
            "econsult.consultation.v1.ConsultationService/ListThreads",
            Patient,
        ),
        (
            "econsult.consultation.v1.ConsultationService/GetThread",
            PatientOrPractice(CONSULT_R),
        ),
        (
            "econsult.consultation.v1.ConsultationService/GetAttachment",
            PatientOrPractice(CONSULT_R),
        ),
        (
            "econsult.consultation.v1.ConsultationService/MarkRead",
            PatientOrPractice(CONSULT_R),
        ),
        (
            "econsult.consultation.v1.ConsultationService/WithdrawConsultation",
            Patient,
        ),
        (
            "econsult.consultation.v1.ConsultationService/Subscribe",
            Patient,
        ),
        (
            "econsult.consultation.v1.ConsultationService/ListInbox",
            Practice(CONSULT_R),
        ),
        (
            "econsult.consultation.v1.ConsultationService/ClaimThread",
            Practice(CONSULT_W),
        ),
        (
            "econsult.consultation.v1.ConsultationService/SetThreadConfidential",
            Practice(CONSULT_W),
        ),
        (
            "econsult.consultation.v1.ConsultationService/Reply",
            Practice(CONSULT_W),
        ),
        (
            "econsult.consultation.v1.ConsultationService/ConvertToBooking",
            Practice(CONSULT_W),
        ),
        (
            "econsult.consultation.v1.ConsultationService/CloseConsultation",
            Practice(CONSULT_W),
        ),
        (
            "econsult.consultation.v1.ConsultationService/WatchInbox",
            Practice(CONSULT_R),
        ),
        (
            "econsult.consultation.v1.ConsultationService/SetResponseDays",
            Practice(CONSULT_W),
        ),
        (
            "econsult.signalling.v1.SignallingService/JoinSession",
            PatientOrClinician,
        ),
        (
            "econsult.signalling.v1.SignallingService/Signal",
            PatientOrClinician,
        ),
        (
            "econsult.signalling.v1.SignallingService/SignalEvents",
            PatientOrClinician,
        ),
        (
            "econsult.signalling.v1.SignallingService/SendSignal",
            PatientOrClinician,
        ),
        ("econsult.signalling.v1.SignallingService/Admit", Clinician),
        (
            "econsult.signalling.v1.SignallingService/GetIceServers",
            PatientOrClinician,
        ),
        (
            "econsult.signalling.v1.SignallingService/EndSession",
            Clinician,
        ),
        (
            "econsult.signalling.v1.SignallingService/GetSession",
            PatientOrClinician,
        ),
        (
            "econsult.stats.v1.StatsService/GetContactCounts",
            OpsOrPractice(STATS_R),
        ),
        (
            "econsult.stats.v1.StatsService/GetBookingAccessibility",
            OpsOrPractice(STATS_R),
        ),
        (
            "econsult.stats.v1.StatsService/GetConsultationResponseTimes",
            OpsOrPractice(STATS_R),
        ),
        (
            "econsult.stats.v1.StatsService/GetVideoSessions",
            OpsOrPractice(STATS_R),
        ),
        (
            "econsult.stats.v1.StatsService/GetListFigures",
            OpsOrPractice(STATS_R),
        ),
        (
            "econsult.stats.v1.StatsService/ExportContacts",
            OpsOrPractice(STATS_R),
        ),
        ("econsult.notify.v1.NotifyService/GetPreferences", Patient),
        ("econsult.notify.v1.NotifyService/SetPreferences", Patient),
        ("econsult.notify.v1.NotifyService/ListDeadLetters", Ops),
    ])
}

/// Kinds of caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Who {
    NoToken,
    Expired,
    WrongAudience,
    LowAssurancePatient,
    PatientA,
    PatientB,
    ClinicianOwnOrg,
    ClinicianOtherOrg,
    EhrOwnOrg,
    EhrOtherOrg,
    EhrNoScopes,
    Ops,
}

const EVERYONE: [Who; 12] = [
    Who::NoToken,
    Who::Expired,
    Who::WrongAudience,
    Who::LowAssurancePatient,
    Who::PatientA,
    Who::PatientB,
    Who::ClinicianOwnOrg,
    Who::ClinicianOtherOrg,
    Who::EhrOwnOrg,
    Who::EhrOtherOrg,
    Who::EhrNoScopes,
    Who::Ops,
];

/// Whether `who` may call an RPC for `aud` (the access decision, before any ownership check).
fn allowed(aud: Audience, who: Who) -> bool {
    let patient = matches!(who, Who::PatientA | Who::PatientB);
    let clinician = matches!(who, Who::ClinicianOwnOrg | Who::ClinicianOtherOrg);
    let practice_with_scopes = clinician || matches!(who, Who::EhrOwnOrg | Who::EhrOtherOrg);
    match aud {
        Patient => patient,
        Practice(_) => practice_with_scopes,
        PatientOrPractice(_) => patient || practice_with_scopes,
        PatientOrClinician => patient || clinician,
        Clinician => clinician,
        OpsOrPractice(_) => who == Who::Ops || practice_with_scopes,
        Ops => who == Who::Ops,
    }
}

fn expected(aud: Audience, who: Who) -> &'static str {
    match who {
        Who::NoToken | Who::Expired | Who::WrongAudience | Who::LowAssurancePatient => {
            "UNAUTHENTICATED"
        }
        _ if allowed(aud, who) => "let through",
        _ => "PERMISSION_DENIED",
    }
}

const ALL_SCOPES: [&str; 5] = [BOOKING_R, BOOKING_W, CONSULT_R, CONSULT_W, STATS_R];

fn token(app: &TestApp, who: Who, nins: &[String]) -> Option<String> {
    let now = chrono::Utc::now().timestamp();
    let scopes = || ALL_SCOPES.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let spec = match who {
        Who::NoToken => return None,
        Who::Expired => {
            let spec = TokenSpec::Patient {
                nin: nins[0].clone(),
                acr: REQUIRED_ACR.into(),
            };
            return Some(app.keys.mint(&spec, now - 7200, 600).expect("mint"));
        }
        Who::WrongAudience => {
            let mut claims = TokenSpec::Ops {
                subject: "ops".into(),
            }
            .claims(now, 600);
            claims.aud = "another-service".into();
            return Some(app.keys.sign(&claims).expect("sign"));
        }
        Who::LowAssurancePatient => TokenSpec::Patient {
            nin: nins[0].clone(),
            acr: "idporten-loa-substantial".into(),
        },
        Who::PatientA => TokenSpec::Patient {
            nin: nins[0].clone(),
            acr: REQUIRED_ACR.into(),
        },
        Who::PatientB => TokenSpec::Patient {
            nin: nins[1].clone(),
            acr: REQUIRED_ACR.into(),
        },
        Who::ClinicianOwnOrg => TokenSpec::Clinician {
            hpr_number: "1000041".into(),
            org_number: ORG_A.into(),
            scopes: scopes(),
        },
        Who::ClinicianOtherOrg => TokenSpec::Clinician {
            hpr_number: "2000042".into(),
            org_number: ORG_B.into(),
            scopes: scopes(),
        },
        Who::EhrOwnOrg => TokenSpec::Ehr {
            client_id: "epj-a".into(),
            org_number: ORG_A.into(),
            scopes: scopes(),
        },
        Who::EhrOtherOrg => TokenSpec::Ehr {
            client_id: "epj-b".into(),
            org_number: ORG_B.into(),
            scopes: scopes(),
        },
        Who::EhrNoScopes => TokenSpec::Ehr {
            client_id: "epj-none".into(),
            org_number: ORG_A.into(),
            scopes: vec![],
        },
        Who::Ops => TokenSpec::Ops {
            subject: "ops-1".into(),
        },
    };
    Some(app.token(spec))
}

/// Calls `path` with an empty request; returns the status code of the call (streams: of the
/// call itself, then of the first item).
async fn call(
    ch: tonic::transport::Channel,
    path: &str,
    client_streaming: bool,
    server_streaming: bool,
    token: Option<&str>,
) -> Code {
    let mut grpc = tonic::client::Grpc::new(ch);
    grpc.ready().await.expect("ready");
    let path = http::uri::PathAndQuery::from_str(&format!("/{path}")).expect("path");
    fn with_token<T>(mut req: tonic::Request<T>, token: Option<&str>) -> tonic::Request<T> {
        if let Some(t) = token {
            req.metadata_mut().insert(
                "authorization",
                format!("Bearer {t}").parse().expect("header"),
            );
        }
        req.set_timeout(std::time::Duration::from_secs(10));
        req
    }
    let first_item = |r: Result<tonic::Response<tonic::Streaming<Vec<u8>>>, tonic::Status>| async move {
        match r {
            Err(s) => s.code(),
            Ok(resp) => {
                let mut s = resp.into_inner();
                // An accepted stream either sends something, fails validation on its first
                // message, or waits: all count as let through.
                match tokio::time::timeout(std::time::Duration::from_millis(300), s.message()).await
                {
                    Ok(Err(status)) => status.code(),
                    _ => Code::Ok,
                }
            }
        }
    };
    if client_streaming {
        let req = with_token(
            tonic::Request::new(tokio_stream::iter(vec![Vec::new()])),
            token,
        );
        first_item(grpc.streaming(req, path, Raw).await).await
    } else if server_streaming {
        let req = with_token(tonic::Request::new(Vec::new()), token);
        first_item(grpc.server_streaming(req, path, Raw).await).await
    } else {
        let req = with_token(tonic::Request::new(Vec::new()), token);
        match grpc.unary(req, path, Raw).await {
            Ok(_) => Code::Ok,
            Err(s) => s.code(),
        }
    }
}

fn outcome(code: Code) -> &'static str {
    match code {
        Code::Unauthenticated => "UNAUTHENTICATED",
        Code::PermissionDenied => "PERMISSION_DENIED",
        _ => "let through",
    }
}

async fn every_rpc_times_every_caller_gets_the_expected_access_decision(env: Env) {
    let app = unlimited(env).await;
    let nins = seed_gp(&app, ORG_A, "gp-1", 61, 2).await;
    let fds = prost_types::FileDescriptorSet::decode(econsult_proto::FILE_DESCRIPTOR_SET)
        .expect("descriptor set");
    let table = table();
    let mut seen = Vec::new();
    let mut wrong = Vec::new();
    let ch = app.channel().await;
    for file in &fds.file {
        let package = file.package();
        if !package.starts_with("econsult.") {
            continue;
        }
        for service in &file.service {
            for method in &service.method {
                let path = format!("{package}.{}/{}", service.name(), method.name());
                let aud = *table
                    .get(path.as_str())
                    .unwrap_or_else(|| panic!("{path} has no row in the authorization matrix"));
                seen.push(path.clone());
                for who in EVERYONE {
                    let t = token(&app, who, &nins);
                    let code = call(
                        ch.clone(),
                        &path,
                        method.client_streaming(),
                        method.server_streaming(),
                        t.as_deref(),
                    )
                    .await;
                    let want = expected(aud, who);
                    if outcome(code) != want {
                        wrong.push(format!("{path} as {who:?}: got {code:?}, expected {want}"));
                    }
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} wrong decisions:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    let stale: Vec<&&str> = table
        .keys()
        .filter(|k| !seen.iter().any(|s| s == **k))
        .collect();
    assert!(
        stale.is_empty(),
        "rows for RPCs that no longer exist: {stale:?}"
    );
    assert_eq!(seen.len(), table.len(), "one row per RPC, no more");
    app.shutdown().await;
}

/// Ownership with real resources: patient A's thread and appointment against patient B and
/// organisation B, and the access log each allowed practice read leaves for patient A.
async fn other_patients_and_organisations_cannot_reach_a_patients_data(env: Env) {
    use econsult_proto::audit::v1 as apb;
    use econsult_proto::booking::v1 as bpb;
    use econsult_proto::consultation::v1 as cpb;
    let app = unlimited(env).await;
    let nins = seed_gp(&app, ORG_A, "gp-1", 62, 2).await;
    seed_gp(&app, ORG_B, "gp-b", 63, 0).await;
    let tok = |who| token(&app, who, &nins).expect("token");
    let thread = app
        .consultation()
        .await
        .start_consultation(tonic_req(
            cpb::StartConsultationRequest {
                category: cpb::Category::EConsultation as i32,
                subject: "Private".into(),
                body: "Private matter".into(),
                idempotency_key: key(),
                ..Default::default()
            },
            &tok(Who::PatientA),
        ))
        .await
        .expect("start")
        .into_inner()
        .thread
        .expect("thread")
        .thread_id;
    let now = econsult_runtime::clock::Clock::now(&app.clock);
    let slot = publish(
        &app,
        ORG_A,
        "gp-1",
        &[now + chrono::Duration::days(1)],
        bpb::Modality::InPerson,
    )
    .await;
    let mut booking = app.booking().await;
    let appointment = booking
        .book(tonic_req(
            bpb::BookRequest {
                target: Some(bpb::book_request::Target::SlotId(slot[0].slot_id.clone())),
                reason: "check".into(),
                request_id: String::new(),
                idempotency_key: key(),
            },
            &tok(Who::PatientA),
        ))
        .await
        .expect("book")
        .into_inner()
        .appointment_id;

    let mut c = app.consultation().await;
    let get = |who| {
        tonic_req(
            cpb::GetThreadRequest {
                thread_id: thread.clone(),
                ..Default::default()
            },
            &tok(who),
        )
    };
    let mut got = Vec::new();
    for who in [
        Who::PatientA,
        Who::PatientB,
        Who::EhrOwnOrg,
        Who::EhrOtherOrg,
        Who::ClinicianOwnOrg,
        Who::ClinicianOtherOrg,
    ] {
        got.push((who, code(c.get_thread(get(who)).await)));
    }
    assert_eq!(
        got,
        vec![
            (Who::PatientA, Code::Ok),
            (Who::PatientB, Code::NotFound),
            (Who::EhrOwnOrg, Code::Ok),
            (Who::EhrOtherOrg, Code::NotFound),
            (Who::ClinicianOwnOrg, Code::Ok),
            (Who::ClinicianOtherOrg, Code::NotFound),
        ]
    );
    // Booking hides other people's appointments entirely (NOT_FOUND, no hint it exists).
    let cancel = booking
        .cancel(tonic_req(
            bpb::CancelRequest {
                appointment_id: appointment.clone(),
                idempotency_key: key(),
            },
            &tok(Who::PatientB),
        ))
        .await;
    assert_eq!(code(cancel), Code::NotFound);
    let mark = booking
        .mark_appointment(tonic_req(
            bpb::MarkAppointmentRequest {
                appointment_id: appointment.clone(),
                status: bpb::AppointmentStatus::Arrived as i32,
                idempotency_key: key(),
            },
            &tok(Who::EhrOtherOrg),
        ))
        .await;
    assert_eq!(code(mark), Code::NotFound);
    let mine = booking
        .list_my_bookings(tonic_req(
            bpb::ListMyBookingsRequest::default(),
            &tok(Who::PatientB),
        ))
        .await
        .expect("list")
        .into_inner();
    assert!(mine.appointments.is_empty());

    // Patient A sees the practice reads of the thread in the own access log; B sees none of them.
    let mut audit = econsult_proto::audit::v1::audit_service_client::AuditServiceClient::new(
        app.channel().await,
    );
    let log = |who| tonic_req(apb::ListMyAccessLogRequest::default(), &tok(who));
    let a_log = audit
        .list_my_access_log(log(Who::PatientA))
        .await
        .expect("log a")
        .into_inner()
        .entries;
    let reads: Vec<(String, String)> = a_log
        .iter()
        .filter(|e| e.action.ends_with("/GetThread"))
        .map(|e| (e.org_number.clone(), e.resource.clone()))
        .collect();
    assert_eq!(
        reads,
        vec![(ORG_A.to_string(), format!("consultation:{thread}")); 2],
        "the EHR read and the clinician read, nothing from the refused ones"
    );
    let b_log = audit
        .list_my_access_log(log(Who::PatientB))
        .await
        .expect("log b")
        .into_inner()
        .entries;
    assert!(b_log.iter().all(|e| !e.resource.contains(&thread)));
    app.shutdown().await;
}

/// The matrix makes many calls per caller quickly: rate limits (tests/limits.rs) are off here so
/// that every outcome is the access decision.
async fn unlimited(env: Env) -> TestApp {
    let tweak: Tweak = std::sync::Arc::new(|c| {
        c.rate_limits = econsult_runtime::ratelimit::RateLimits::unlimited();
    });
    TestApp::start_configured(env, monday_0800(), Some(tweak)).await
}

fn code<T>(r: Result<T, tonic::Status>) -> Code {
    r.map(|_| Code::Ok).unwrap_or_else(|s| s.code())
}

fn tonic_req<T>(msg: T, token: &str) -> tonic::Request<T> {
    authed(msg, token)
}

on_both_backends!(
    every_rpc_times_every_caller_gets_the_expected_access_decision,
    other_patients_and_organisations_cannot_reach_a_patients_data,
);
