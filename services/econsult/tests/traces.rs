//! Traces as an on-call engineer reads them: the real `econsult` binary exports OTLP to a
//! receiver this test runs on loopback, configured only by the standard variables
//! (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `OTEL_SERVICE_NAME`) and with `RUST_LOG=warn`.

mod common;

use chrono::{Duration as ChronoDuration, DurationRound as _, Utc};
use common::process::Proc;
use common::{Env, ORG_A, authed, key, ts};
use econsult_proto::booking::v1 as bpb;
use econsult_proto::booking::v1::booking_service_client::BookingServiceClient;
use econsult_proto::consultation::v1 as cpb;
use econsult_proto::consultation::v1::consultation_service_client::ConsultationServiceClient;
use econsult_proto::signalling::v1 as spb;
use econsult_runtime::auth::{DevKeys, REQUIRED_ACR, TokenSpec};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_stream::StreamExt as _;

/// Everything the server exported.
#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<ExportTraceServiceRequest>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.lock().expect("receiver").push(req.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// One exported span, flattened.
#[derive(Debug, Clone)]
struct Span {
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent: Vec<u8>,
    name: String,
    /// OTLP kind: 1 internal, 2 server, 3 client, 4 producer, 5 consumer.
    kind: i32,
    start: u64,
    end: u64,
    attrs: BTreeMap<String, AnyValue>,
    /// OTLP status code: 0 unset, 1 ok, 2 error.
    status: i32,
    links: Vec<(Vec<u8>, Vec<u8>)>,
    events: Vec<String>,
    resource: BTreeMap<String, AnyValue>,
}

impl Span {
    fn duration(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }
    fn attr(&self, k: &str) -> Option<&AnyValue> {
        self.attrs.get(k)
    }
    fn str_attr(&self, k: &str) -> Option<&str> {
        match self.attr(k) {
            Some(AnyValue::StringValue(s)) => Some(s),
            _ => None,
        }
    }
}

fn map(kvs: &[KeyValue]) -> BTreeMap<String, AnyValue> {
    kvs.iter()
        .filter_map(|kv| {
            let v = kv.value.as_ref()?.value.clone()?;
            Some((kv.key.clone(), v))
        })
        .collect()
}

impl Receiver {
    fn spans(&self) -> Vec<Span> {
        let got = self.0.lock().expect("receiver");
        let mut out = Vec::new();
        for req in got.iter() {
            for rs in &req.resource_spans {
                let resource = rs
                    .resource
                    .as_ref()
                    .map(|r| map(&r.attributes))
                    .unwrap_or_default();
                for ss in &rs.scope_spans {
                    for s in &ss.spans {
                        out.push(Span {
                            trace_id: s.trace_id.clone(),
                            span_id: s.span_id.clone(),
                            parent: s.parent_span_id.clone(),
                            name: s.name.clone(),
                            kind: s.kind,
                            start: s.start_time_unix_nano,
                            end: s.end_time_unix_nano,
                            attrs: map(&s.attributes),
                            status: s.status.as_ref().map(|st| st.code).unwrap_or(0),
                            links: s
                                .links
                                .iter()
                                .map(|l| (l.trace_id.clone(), l.span_id.clone()))
                                .collect(),
                            events: s.events.iter().map(|e| e.name.clone()).collect(),
                            resource: resource.clone(),
                        });
                    }
                }
            }
        }
        out
    }

    /// Waits until `pred` holds for the spans received.
    async fn wait_for(&self, what: &str, pred: impl Fn(&[Span]) -> bool) -> Vec<Span> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let spans = self.spans();
            if pred(&spans) {
                return spans;
            }
            assert!(Instant::now() < deadline, "no {what} in the exported spans");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The part of `[start, end)` that the union of `children` covers, in nanoseconds.
fn covered(start: u64, end: u64, children: &[&Span]) -> u64 {
    let mut iv: Vec<(u64, u64)> = children
        .iter()
        .map(|c| (c.start.max(start), c.end.min(end)))
        .filter(|(a, b)| a < b)
        .collect();
    iv.sort_unstable();
    let (mut total, mut cur): (u64, Option<(u64, u64)>) = (0, None);
    for (a, b) in iv {
        cur = match cur {
            Some((ca, cb)) if a <= cb => Some((ca, cb.max(b))),
            Some((ca, cb)) => {
                total += cb - ca;
                Some((a, b))
            }
            None => Some((a, b)),
        };
    }
    total + cur.map(|(a, b)| b - a).unwrap_or(0)
}

/// The span tree under `root`, one line per span, for the README and for a failing test.
fn tree(spans: &[Span], root: &Span) -> String {
    let mut by_parent: HashMap<&[u8], Vec<&Span>> = HashMap::new();
    for s in spans.iter().filter(|s| s.trace_id == root.trace_id) {
        by_parent.entry(s.parent.as_slice()).or_default().push(s);
    }
    let mut out = String::new();
    fn walk(
        s: &Span,
        t0: u64,
        depth: usize,
        by_parent: &HashMap<&[u8], Vec<&Span>>,
        out: &mut String,
    ) {
        out.push_str(&format!(
            "{:>8.3} ms +{:>7.3} ms {}{}\n",
            (s.start - t0) as f64 / 1e6,
            s.duration() as f64 / 1e6,
            "  ".repeat(depth),
            s.name
        ));
        let mut kids = by_parent
            .get(s.span_id.as_slice())
            .cloned()
            .unwrap_or_default();
        kids.sort_by_key(|k| k.start);
        for k in kids {
            walk(k, t0, depth + 1, by_parent, out);
        }
    }
    walk(root, root.start, 0, &by_parent, &mut out);
    out
}

struct Tokens {
    keys: DevKeys,
}

impl Tokens {
    fn mint(&self, spec: TokenSpec) -> String {
        self.keys
            .mint(&spec, Utc::now().timestamp(), 600)
            .expect("mint")
    }
    fn ehr(&self) -> String {
        self.mint(TokenSpec::Ehr {
            client_id: "epj".into(),
            org_number: ORG_A.into(),
            scopes: vec![
                "econsult:booking.write".into(),
                "econsult:booking.read".into(),
            ],
        })
    }
    fn patient(&self, nin: &str) -> String {
        self.mint(TokenSpec::Patient {
            nin: nin.into(),
            acr: REQUIRED_ACR.into(),
        })
    }
}

const PATIENTS: usize = 24;
const REASON: &str = "traced reason text";
const MESSAGE: &str = "traced message body text";

on_both_backends!(traces_show_what_a_call_waited_on_and_follow_its_events);

async fn traces_show_what_a_call_waited_on_and_follow_its_events(env: Env) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind receiver");
    let otlp = listener.local_addr().expect("addr");
    let receiver = Receiver::default();
    let server = TraceServiceServer::new(receiver.clone());
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(server)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await
    });

    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = Tokens {
        keys: DevKeys::load_or_create(dir.path()).expect("keys"),
    };
    let endpoint = format!("http://{otlp}");
    let mut extra: Vec<String> = Vec::new();
    if let (Some(db), Some(redis)) = (&env.database_url, &env.redis_url) {
        extra.extend([
            "--database-url".into(),
            db.clone(),
            "--redis-url".into(),
            redis.clone(),
            "--redis-namespace".into(),
            format!("traces-{}", uuid::Uuid::new_v4().simple()),
        ]);
    }
    let db_system = if env.database_url.is_some() {
        "postgresql"
    } else {
        "sqlite"
    };
    let mut server = Proc::spawn_with_env(
        dir.path(),
        &extra,
        None,
        &[
            // The signal's own endpoint only, as a collector sidecar's settings often are.
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", endpoint.as_str()),
            ("OTEL_SERVICE_NAME", "econsult-booking"),
            ("RUST_LOG", "warn"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "65536"),
        ],
    );
    let channel = server.channel().await;
    let mut booking = BookingServiceClient::new(channel.clone());

    // A GP with 24 patients, 24 in-person slots and one video slot about to start.
    let ehr = tokens.ehr();
    booking
        .upsert_gp(authed(
            bpb::UpsertGpRequest {
                gp: Some(bpb::Gp {
                    gp_id: "gp-traced".into(),
                    hpr_number: "1000777".into(),
                    display_name: "Dr Traced".into(),
                    org_number: String::new(),
                    municipality_number: "0301".into(),
                    list_capacity: 2500,
                    list_status: bpb::ListStatus::Staffed as i32,
                    list_size: 0,
                    practice_name: String::new(),
                }),
            },
            &ehr,
        ))
        .await
        .expect("upsert gp");
    let nins: Vec<String> = (0..PATIENTS as u64)
        .map(|i| {
            econsult_runtime::nin::synthetic(7_700_000 + i)
                .as_str()
                .to_owned()
        })
        .collect();
    booking
        .update_list(authed(
            bpb::UpdateListRequest {
                gp_id: "gp-traced".into(),
                add: nins.clone(),
                remove: vec![],
                idempotency_key: key(),
            },
            &ehr,
        ))
        .await
        .expect("update list");
    let base = Utc::now()
        .duration_trunc(ChronoDuration::minutes(1))
        .expect("trunc")
        + ChronoDuration::minutes(5);
    let mut new_slots = vec![bpb::NewSlot {
        start: Some(ts(base)),
        duration_minutes: 15,
        modality: bpb::Modality::Video as i32,
        acute_reserve: false,
    }];
    new_slots.extend((0..PATIENTS as i64).map(|i| bpb::NewSlot {
        start: Some(ts(base + ChronoDuration::minutes(30 + 15 * i))),
        duration_minutes: 15,
        modality: bpb::Modality::InPerson as i32,
        acute_reserve: false,
    }));
    let slots = booking
        .publish_slots(authed(
            bpb::PublishSlotsRequest {
                gp_id: "gp-traced".into(),
                slots: new_slots,
                idempotency_key: key(),
            },
            &ehr,
        ))
        .await
        .expect("publish")
        .into_inner()
        .slots;
    assert_eq!(slots.len(), PATIENTS + 1);

    // 24 patients book at once.
    let mut calls = Vec::new();
    for (i, nin) in nins.iter().enumerate() {
        let mut c = BookingServiceClient::new(channel.clone());
        let token = tokens.patient(nin);
        let slot_id = slots[i + 1].slot_id.clone();
        calls.push(tokio::spawn(async move {
            c.book(authed(
                bpb::BookRequest {
                    target: Some(bpb::book_request::Target::SlotId(slot_id)),
                    reason: REASON.into(),
                    request_id: String::new(),
                    idempotency_key: key(),
                },
                &token,
            ))
            .await
            .map(|r| r.into_inner().appointment_id)
        }));
    }
    for c in calls {
        c.await.expect("join").expect("book");
    }

    // The first patient books the video slot too and starts an e-consultation.
    let patient = tokens.patient(&nins[0]);
    let video = booking
        .book(authed(
            bpb::BookRequest {
                target: Some(bpb::book_request::Target::SlotId(slots[0].slot_id.clone())),
                reason: REASON.into(),
                request_id: String::new(),
                idempotency_key: key(),
            },
            &patient,
        ))
        .await
        .expect("book video")
        .into_inner()
        .appointment_id;
    let mut consultation = ConsultationServiceClient::new(channel.clone());
    let started = consultation
        .start_consultation(authed(
            cpb::StartConsultationRequest {
                category: cpb::Category::EConsultation as i32,
                subject: "traced subject".into(),
                body: MESSAGE.into(),
                idempotency_key: key(),
                ..Default::default()
            },
            &patient,
        ))
        .await
        .expect("start consultation")
        .into_inner();
    let thread_id = started.thread.map(|t| t.thread_id).unwrap_or_default();

    // A Signal stream that lives ~1.5 s, until the server shuts down under it (UNAVAILABLE).
    let mut signalling =
        spb::signalling_service_client::SignallingServiceClient::new(channel.clone());
    signalling
        .join_session(authed(
            spb::JoinSessionRequest {
                appointment_id: video.clone(),
            },
            &patient,
        ))
        .await
        .expect("join");
    let mut sig = common::sig::Sig::open(channel.clone(), &patient, &video, 0)
        .await
        .expect("open signal stream");
    sig.welcome().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let sigterm = std::process::Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(sigterm.success());
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(20), sig.rx.next()).await {
            Ok(Some(Ok(_))) => continue,
            Ok(None) => panic!("the stream ended without a status"),
            Ok(Some(Err(status))) => break status,
            Err(_) => panic!("the stream did not end on shutdown"),
        }
    };
    assert_eq!(ended.code(), tonic::Code::Unavailable, "{ended:?}");
    assert!(server.wait_exit(Duration::from_secs(30)).success());

    let spans = receiver
        .wait_for("Signal span", |s| {
            s.iter()
                .any(|s| s.name == "econsult.signalling.v1.SignallingService/Signal")
        })
        .await;

    // The resource: the service name from OTEL_SERVICE_NAME, a version and an instance id.
    let any = spans.first().expect("spans");
    assert_eq!(
        any.resource.get("service.name"),
        Some(&AnyValue::StringValue("econsult-booking".into()))
    );
    assert!(any.resource.contains_key("service.version"));
    assert!(any.resource.contains_key("service.instance.id"));

    // Server spans per the RPC conventions.
    let books: Vec<&Span> = spans
        .iter()
        .filter(|s| s.name == "econsult.booking.v1.BookingService/Book")
        .collect();
    assert_eq!(books.len(), PATIENTS + 1, "one span per Book call");
    for b in &books {
        assert_eq!(b.kind, 2, "SERVER");
        assert_eq!(b.str_attr("rpc.system"), Some("grpc"));
        assert_eq!(
            b.str_attr("rpc.service"),
            Some("econsult.booking.v1.BookingService")
        );
        assert_eq!(b.str_attr("rpc.method"), Some("Book"));
        assert_eq!(b.attr("rpc.grpc.status_code"), Some(&AnyValue::IntValue(0)));
        assert_ne!(b.status, 2);
        assert!(b.str_attr("econsult.appointment_id").is_some(), "{b:?}");
        assert!(b.str_attr("econsult.slot_id").is_some(), "{b:?}");
    }

    // The slowest Book: its direct children account for >= 80 % of it, and name the waits.
    let slowest = books
        .iter()
        .filter(|b| b.str_attr("econsult.slot_id") != Some(slots[0].slot_id.as_str()))
        .max_by_key(|b| b.duration())
        .expect("a Book");
    let children: Vec<&Span> = spans
        .iter()
        .filter(|s| s.parent == slowest.span_id && s.trace_id == slowest.trace_id)
        .collect();
    let share = covered(slowest.start, slowest.end, &children) as f64 / slowest.duration() as f64;
    let printed = tree(&spans, slowest);
    println!("slowest of {PATIENTS} concurrent Book calls:\n{printed}");
    assert!(
        share >= 0.8,
        "children cover {:.0} % of the slowest Book:\n{printed}",
        share * 100.0
    );
    let names: Vec<&str> = children.iter().map(|c| c.name.as_str()).collect();
    let db_wait = children
        .iter()
        .find(|c| c.name.contains("writer") || c.name.contains("acquire"))
        .unwrap_or_else(|| panic!("the wait for the database is named: {names:?}"));
    // The wait for the request message ends before the handler asks for the database.
    let receive = children
        .iter()
        .find(|c| c.name == "receive request")
        .unwrap_or_else(|| panic!("the wait for the request is named: {names:?}"));
    assert!(receive.end <= db_wait.start, "{printed}");
    assert!(
        names
            .iter()
            .any(|n| n.contains("commit") || n.contains("COMMIT")),
        "the commit is named: {names:?}"
    );
    let in_trace = |s: &&Span| s.trace_id == slowest.trace_id;
    let statements: Vec<&Span> = spans
        .iter()
        .filter(in_trace)
        .filter(|s| s.kind == 3)
        .collect();
    assert!(
        statements
            .iter()
            .any(|s| s.str_attr("db.system.name") == Some(db_system)
                && s.str_attr("db.query.summary")
                    .is_some_and(|q| q.contains("UPDATE booking_slots"))),
        "statement spans name their table: {:?}",
        statements.iter().map(|s| &s.name).collect::<Vec<_>>()
    );

    // StartConsultation's trace is linked from the relay and the stats consumer.
    let start = spans
        .iter()
        .find(|s| s.name == "econsult.consultation.v1.ConsultationService/StartConsultation")
        .expect("StartConsultation span");
    assert_eq!(
        start.str_attr("econsult.thread_id"),
        Some(thread_id.as_str())
    );
    let linked = |name: &str| {
        spans
            .iter()
            .any(|s| s.name == name && s.links.iter().any(|(t, _)| *t == start.trace_id))
    };
    assert!(linked("outbox relay"), "the relay's span links to the call");
    assert!(
        linked("stats consumer"),
        "the stats consumer's span links to the call"
    );

    // The Signal stream's span covers its life and ends in Error (UNAVAILABLE).
    let signal = spans
        .iter()
        .find(|s| s.name == "econsult.signalling.v1.SignallingService/Signal")
        .expect("Signal span");
    assert!(
        signal.duration() >= 1_400_000_000,
        "the stream lived 1.5 s, its span {} ms",
        signal.duration() / 1_000_000
    );
    assert_eq!(
        signal.attr("rpc.grpc.status_code"),
        Some(&AnyValue::IntValue(14))
    );
    assert_eq!(signal.status, 2, "UNAVAILABLE is an error of the server");
    assert!(
        signal.events.iter().any(|e| e.contains("welcomed")),
        "{:?}",
        signal.events
    );

    // Nothing personal leaves: no identity number, no free text, in any attribute.
    let forbidden: Vec<&str> = nins
        .iter()
        .map(String::as_str)
        .chain([REASON, MESSAGE, "traced subject"])
        .collect();
    for s in &spans {
        for (k, v) in s.attrs.iter().chain(s.resource.iter()) {
            let AnyValue::StringValue(text) = v else {
                continue;
            };
            for f in &forbidden {
                assert!(!text.contains(f), "{} carries {f} in {k}", s.name);
            }
            // Any run of exactly 11 digits that is a valid identity number (a hex id may hold
            // 11 digits in a row by chance; a valid checksum by chance is rare and still fails).
            let runs = text
                .split(|c: char| !c.is_ascii_digit())
                .filter(|run| run.len() == 11);
            for run in runs {
                assert!(
                    econsult_runtime::nin::NationalId::parse(run).is_err(),
                    "{} has an identity number in {k}: {text}",
                    s.name
                );
            }
        }
    }
}
