//! Video-consultation signalling through the real gRPC server: two real webrtc-rs peers that
//! only talk to the gRPC API connect over loopback and exchange data, on one instance and on two
//! replicas sharing Redis and PostgreSQL; access, join window, waiting room, validation,
//! resume after a dropped stream or an expired token, and TURN credentials.

mod common;

use chrono::{DateTime, Utc};
use common::sig::{Sig, Transport};
use common::*;
use econsult::Config;
use econsult_proto::booking::v1 as bpb;
use econsult_proto::signalling::v1 as pb;
use econsult_runtime::auth::{REQUIRED_ACR, TokenSpec};
use pb::client_signal::Body as Out;
use pb::server_event::Body as Ev;
use pb::signalling_service_client::SignallingServiceClient;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tonic::Code;
use tonic::transport::Channel;
use webrtc::data_channel::{DataChannel, DataChannelEvent};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCIceCandidateInit,
    RTCIceGatheringState, RTCPeerConnectionIceEvent, RTCSessionDescription,
};

/// Upper bound of every wait.
const WAIT: Duration = Duration::from_secs(20);
const GP_SEED: u64 = 7;
const MESSAGE: &[u8] = b"hei fra pasienten";

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("time")
        .with_timezone(&Utc)
}

/// The booked video slot: Tuesday 09:00–09:15 UTC.
fn slot_start() -> DateTime<Utc> {
    at("2026-03-03T09:00:00Z")
}

fn gp_hpr() -> String {
    format!("{}", 1_000_000 + GP_SEED)
}

/// A started system with a booked video appointment; the clock stands 5 minutes before start.
struct Video {
    app: TestApp,
    appointment_id: String,
    nins: Vec<String>,
    /// The patient side acts for `nins[0]` with this token and `x-on-behalf-of` (a parent).
    acting: Option<(String, String)>,
}

impl Video {
    fn patient(&self) -> String {
        match &self.acting {
            Some((token, _)) => token.clone(),
            None => self.app.patient_token(&self.nins[0]),
        }
    }
    fn on_behalf(&self) -> Option<&str> {
        self.acting.as_ref().map(|(_, nin)| nin.as_str())
    }
    fn gp(&self) -> String {
        self.app.clinician_token(&gp_hpr(), ORG_A)
    }
    async fn client(&self) -> SignallingServiceClient<Channel> {
        SignallingServiceClient::new(self.app.channel().await)
    }
}

async fn book(app: &TestApp, nin: &str, slot_id: &str) -> String {
    let mut c = app.booking().await;
    c.book(authed(
        bpb::BookRequest {
            target: Some(bpb::book_request::Target::SlotId(slot_id.into())),
            reason: "video, please".into(),
            request_id: String::new(),
            idempotency_key: key(),
        },
        &app.patient_token(nin),
    ))
    .await
    .expect("book")
    .into_inner()
    .appointment_id
}

async fn video_appointment(env: Env, tweak: Option<Tweak>) -> Video {
    let app = TestApp::start_configured(env, monday_0800(), tweak).await;
    let nins = seed_gp(&app, ORG_A, "gp-video", GP_SEED, 3).await;
    let slots = publish(
        &app,
        ORG_A,
        "gp-video",
        &[slot_start()],
        bpb::Modality::Video,
    )
    .await;
    let appointment_id = book(&app, &nins[0], &slots[0].slot_id).await;
    app.clock.set(slot_start() - chrono::Duration::minutes(5));
    Video {
        app,
        appointment_id,
        nins,
        acting: None,
    }
}

/// A request acting for `on_behalf_of` when given.
fn as_for<T>(msg: T, token: &str, on_behalf_of: Option<&str>) -> tonic::Request<T> {
    let mut r = authed(msg, token);
    if let Some(nin) = on_behalf_of {
        r.metadata_mut().insert(
            econsult_runtime::auth::ON_BEHALF_OF_HEADER,
            nin.parse().expect("header"),
        );
    }
    r
}

async fn join(
    channel: Channel,
    token: &str,
    appointment_id: &str,
) -> Result<pb::JoinSessionResponse, tonic::Status> {
    SignallingServiceClient::new(channel)
        .join_session(authed(
            pb::JoinSessionRequest {
                appointment_id: appointment_id.into(),
            },
            token,
        ))
        .await
        .map(|r| r.into_inner())
}

async fn admit(channel: Channel, token: &str, appointment_id: &str, hpr: &str) {
    SignallingServiceClient::new(channel)
        .admit(authed(
            pb::AdmitRequest {
                appointment_id: appointment_id.into(),
                clinician_hpr_number: hpr.into(),
            },
            token,
        ))
        .await
        .expect("admit");
}

fn offer(sdp: &str) -> Out {
    Out::Description(pb::SessionDescription {
        r#type: pb::SdpType::Offer as i32,
        sdp: sdp.into(),
        ice_restart: false,
    })
}

fn candidate(c: &str) -> Out {
    Out::Candidate(pb::IceCandidate {
        candidate: c.into(),
        sdp_mid: "0".into(),
        sdp_mline_index: Some(0),
        username_fragment: String::new(),
    })
}

// ── webrtc-rs peers ────────────────────────────────────────────────────────────────────────────

struct Handler {
    candidates: mpsc::UnboundedSender<Option<RTCIceCandidateInit>>,
    channels: mpsc::UnboundedSender<Arc<dyn DataChannel>>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        if let Ok(init) = event.candidate.to_json() {
            let _ = self.candidates.send(Some(init));
        }
    }
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            let _ = self.candidates.send(None);
        }
    }
    async fn on_data_channel(&self, dc: Arc<dyn DataChannel>) {
        let _ = self.channels.send(dc);
    }
}

struct Peer {
    pc: Arc<dyn PeerConnection>,
    candidates: mpsc::UnboundedReceiver<Option<RTCIceCandidateInit>>,
    channels: mpsc::UnboundedReceiver<Arc<dyn DataChannel>>,
}

/// A peer with loopback host candidates only (no STUN/TURN).
async fn peer() -> Peer {
    let (ctx, crx) = mpsc::unbounded_channel();
    let (dtx, drx) = mpsc::unbounded_channel();
    let pc = PeerConnectionBuilder::new()
        .with_handler(Arc::new(Handler {
            candidates: ctx,
            channels: dtx,
        }))
        .with_udp_addrs(vec!["127.0.0.1:0".to_string()])
        .build()
        .await
        .expect("peer connection");
    Peer {
        pc: Arc::new(pc),
        candidates: crx,
        channels: drx,
    }
}

/// A real WebRTC offer (data channel) to test validation with.
async fn real_offer_sdp() -> (Peer, String) {
    let p = peer().await;
    p.pc.create_data_channel("probe", None)
        .await
        .expect("data channel");
    let offer = p.pc.create_offer(None).await.expect("offer");
    (p, offer.sdp)
}

/// Relays the peer's local candidates to the service and applies what the other side sends,
/// until `stop`; returns the stream for further use.
async fn pump(
    mut sig: Sig,
    pc: Arc<dyn PeerConnection>,
    mut candidates: mpsc::UnboundedReceiver<Option<RTCIceCandidateInit>>,
    mut stop: watch::Receiver<bool>,
) -> Sig {
    let mut candidates_open = true;
    loop {
        tokio::select! {
            c = candidates.recv(), if candidates_open => match c {
                Some(Some(init)) => {
                    sig.send(Out::Candidate(pb::IceCandidate {
                        candidate: init.candidate,
                        sdp_mid: init.sdp_mid.unwrap_or_default(),
                        sdp_mline_index: init.sdp_mline_index.map(u32::from),
                        username_fragment: init.username_fragment.unwrap_or_default(),
                    }))
                    .await;
                }
                Some(None) => {
                    sig.send(Out::EndOfCandidates(pb::EndOfCandidates {})).await;
                }
                None => candidates_open = false,
            },
            ev = sig.recv() => {
                let ev = ev.expect("signal stream healthy").expect("signal stream open");
                if ev.seq > 0 {
                    sig.last_seq = ev.seq;
                }
                match ev.body {
                    Some(Ev::Description(d)) if d.r#type == pb::SdpType::Offer as i32 => {
                        pc.set_remote_description(RTCSessionDescription::offer(d.sdp).expect("offer"))
                            .await
                            .expect("set remote offer");
                        let answer = pc.create_answer(None).await.expect("answer");
                        pc.set_local_description(answer.clone()).await.expect("set local answer");
                        sig.send(Out::Description(pb::SessionDescription {
                            r#type: pb::SdpType::Answer as i32,
                            sdp: answer.sdp,
                            ice_restart: false,
                        }))
                        .await;
                    }
                    Some(Ev::Description(d)) => {
                        pc.set_remote_description(RTCSessionDescription::answer(d.sdp).expect("answer"))
                            .await
                            .expect("set remote answer");
                    }
                    Some(Ev::Candidate(c)) => {
                        let init = RTCIceCandidateInit {
                            candidate: c.candidate,
                            sdp_mid: Some(c.sdp_mid).filter(|m| !m.is_empty()),
                            sdp_mline_index: c.sdp_mline_index.map(|i| i as u16),
                            username_fragment: Some(c.username_fragment).filter(|u| !u.is_empty()),
                            ..Default::default()
                        };
                        pc.add_ice_candidate(init).await.expect("add remote candidate");
                    }
                    Some(Ev::Rejected(r)) => panic!("the service refused a signal: {r:?}"),
                    _ => {}
                }
            }
            _ = async { let _ = stop.wait_for(|s| *s).await; } => return sig,
        }
        if let Some(r) = sig.rejection() {
            panic!("the service refused a signal: {r:?}");
        }
    }
}

/// Joins both sides (each through its own channel, possibly to different replicas), admits the
/// patient, lets the patient's peer offer and the GP's peer answer with trickled candidates
/// through the service, and checks that a data-channel message arrives. Returns both streams.
async fn connect_two_peers(
    v: &Video,
    patient_channel: Channel,
    gp_channel: Channel,
) -> (Sig, Sig, Peer, Peer) {
    connect_two_peers_via(v, Transport::Bidi, patient_channel, gp_channel).await
}

/// [`connect_two_peers`] with the patient's signals over `patient_transport`.
async fn connect_two_peers_via(
    v: &Video,
    patient_transport: Transport,
    patient_channel: Channel,
    gp_channel: Channel,
) -> (Sig, Sig, Peer, Peer) {
    let id = v.appointment_id.as_str();
    let joined = SignallingServiceClient::new(patient_channel.clone())
        .join_session(as_for(
            pb::JoinSessionRequest {
                appointment_id: id.into(),
            },
            &v.patient(),
            v.on_behalf(),
        ))
        .await
        .expect("patient joins")
        .into_inner();
    assert!(joined.waiting, "the patient starts in the waiting room");
    assert_eq!(joined.side, pb::Side::Patient as i32);
    let gp_joined = join(gp_channel.clone(), &v.gp(), id)
        .await
        .expect("GP joins");
    assert_eq!(gp_joined.side, pb::Side::Practice as i32);
    assert_eq!(gp_joined.session_id, joined.session_id);

    let mut patient = Sig::open_via(
        patient_transport,
        patient_channel.clone(),
        &v.patient(),
        v.on_behalf(),
        id,
        joined.resume_after_seq,
    )
    .await
    .expect("patient stream");
    assert!(patient.welcome().await.waiting);
    let mut gp = Sig::open(gp_channel.clone(), &v.gp(), id, gp_joined.resume_after_seq)
        .await
        .expect("GP stream");
    let w = gp.welcome().await;
    assert!(w.peer_online && w.peer_waiting, "{w:?}");
    // The practice sees who is there for the patient: a parent, or the patient themselves.
    let want = if v.acting.is_some() {
        pb::PatientRelation::Parent
    } else {
        pb::PatientRelation::Self_
    };
    match gp
        .expect(|e| matches!(e, Ev::PeerJoined(p) if p.side == pb::Side::Patient as i32))
        .await
    {
        Ev::PeerJoined(p) => assert_eq!(p.relation, want as i32, "{p:?}"),
        _ => unreachable!(),
    }
    assert!(
        !patient
            .arrives_within(Duration::from_millis(300), |e| matches!(e, Ev::Admitted(_)))
            .await
    );
    admit(gp_channel.clone(), &v.gp(), id, "").await;
    patient.expect(|e| matches!(e, Ev::Admitted(_))).await;
    patient
        .expect(|e| matches!(e, Ev::PeerJoined(p) if p.side == pb::Side::Practice as i32))
        .await;

    let mut patient_peer = peer().await;
    let mut gp_peer = peer().await;
    let dc = patient_peer
        .pc
        .create_data_channel("consultation", None)
        .await
        .expect("data channel");
    let (open_tx, mut open_rx) = mpsc::unbounded_channel::<()>();
    {
        let dc = dc.clone();
        tokio::spawn(async move {
            while let Some(ev) = dc.poll().await {
                if matches!(ev, DataChannelEvent::OnOpen) {
                    let _ = open_tx.send(());
                }
            }
        });
    }
    let offer_desc = patient_peer.pc.create_offer(None).await.expect("offer");
    patient_peer
        .pc
        .set_local_description(offer_desc.clone())
        .await
        .expect("set local offer");
    patient
        .call(offer(&offer_desc.sdp))
        .await
        .expect("offer relayed");

    let (stop_tx, stop_rx) = watch::channel(false);
    let patient_candidates =
        std::mem::replace(&mut patient_peer.candidates, mpsc::unbounded_channel().1);
    let gp_candidates = std::mem::replace(&mut gp_peer.candidates, mpsc::unbounded_channel().1);
    let patient_pump = tokio::spawn(pump(
        patient,
        patient_peer.pc.clone(),
        patient_candidates,
        stop_rx.clone(),
    ));
    let gp_pump = tokio::spawn(pump(gp, gp_peer.pc.clone(), gp_candidates, stop_rx));

    // The GP's peer receives the patient's data channel and its first message.
    let remote = tokio::time::timeout(WAIT, gp_peer.channels.recv())
        .await
        .expect("data channel reaches the GP in time (ICE over loopback)")
        .expect("data channel");
    let (msg_tx, mut msg_rx) = mpsc::unbounded_channel::<Vec<u8>>();
    tokio::spawn(async move {
        while let Some(ev) = remote.poll().await {
            if let DataChannelEvent::OnMessage(m) = ev {
                let _ = msg_tx.send(m.data.to_vec());
            }
        }
    });
    tokio::time::timeout(WAIT, open_rx.recv())
        .await
        .expect("data channel opens in time");
    dc.send_text(std::str::from_utf8(MESSAGE).expect("utf-8"))
        .await
        .expect("send");
    let got = tokio::time::timeout(WAIT, msg_rx.recv())
        .await
        .expect("message arrives in time")
        .expect("message");
    assert_eq!(got, MESSAGE);

    stop_tx.send(true).expect("stop pumps");
    let patient = patient_pump.await.expect("patient pump");
    let gp = gp_pump.await.expect("GP pump");
    (patient, gp, patient_peer, gp_peer)
}

async fn end_and_check(v: &Video, gp_channel: Channel, patient: &mut Sig, gp: &mut Sig) {
    patient
        .call(Out::Connection(pb::ConnectionReport { connected: true }))
        .await
        .expect("report");
    gp.call(Out::Connection(pb::ConnectionReport { connected: true }))
        .await
        .expect("report");
    v.app.clock.advance(chrono::Duration::minutes(10));
    let ended = SignallingServiceClient::new(gp_channel)
        .end_session(authed(
            pb::EndSessionRequest {
                appointment_id: v.appointment_id.clone(),
                held: true,
            },
            &v.gp(),
        ))
        .await
        .expect("end session")
        .into_inner()
        .session
        .expect("session");
    assert!(ended.held);
    assert!(ended.connected_at.is_some());
    assert_eq!(ended.connected_ms, 10 * 60 * 1000);
    assert_eq!(ended.end_reason, pb::EndReason::EndedByPractice as i32);
    for sig in [patient, gp] {
        match sig.expect(|e| matches!(e, Ev::SessionEnded(_))).await {
            Ev::SessionEnded(e) => assert!(e.held),
            _ => unreachable!(),
        }
    }
    // The statistics get exactly one held video session.
    let rows = sqlx::query("SELECT payload FROM outbox WHERE topic = 'signalling.session_ended'")
        .fetch_all(v.app.platform().db.read())
        .await
        .expect("outbox");
    assert_eq!(rows.len(), 1);
    let payload: String = sqlx::Row::try_get(&rows[0], "payload").expect("payload");
    let ev: econsult_runtime::events::VideoSessionEnded =
        serde_json::from_str(&payload).expect("event");
    assert_eq!(ev.appointment_id, v.appointment_id);
    assert!(ev.held && ev.connected);
    assert_eq!(ev.connected_ms, 10 * 60 * 1000);
    assert_eq!(ev.org_number, ORG_A);
    // The statistics service counts it as a held video consultation (tariff 2ae).
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let n: i64 = sqlx::Row::try_get(
            &sqlx::query(
                "SELECT CAST(COALESCE(SUM(n), 0) AS BIGINT) AS n FROM stats_contacts WHERE contact_type = 'video' AND tariff_code = '2ae' AND gp_id = 'gp-video'",
            )
            .fetch_one(v.app.platform().db.read())
            .await
            .expect("stats"),
            "n",
        )
        .expect("n");
        if n == 1 {
            break;
        }
        assert_eq!(n, 0, "counted once");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the statistics did not count the video consultation"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The stats API reports it to the practice: one session, held, connected for ten minutes
    // (ops get a GP's day of fewer than five sessions suppressed).
    let video = v
        .app
        .stats()
        .await
        .get_video_sessions(authed(
            econsult_proto::stats::v1::GetVideoSessionsRequest {
                filter: Some(econsult_proto::stats::v1::Filter {
                    from_date: "2026-01-01".into(),
                    to_date: "2026-12-31".into(),
                    ..Default::default()
                }),
            },
            &v.app.ehr_token(ORG_A),
        ))
        .await
        .expect("video sessions")
        .into_inner();
    assert_eq!(
        (video.sessions, video.held, video.failed_to_connect),
        (1, 1, 0)
    );
    assert!((video.average_connected_seconds - 600.0).abs() < 1e-9);
    // Both joins are in the access log of the patient's data.
    let n: i64 = sqlx::Row::try_get(
        &sqlx::query(
            "SELECT COUNT(*) AS n FROM audit_log WHERE action = '/econsult.signalling.v1.SignallingService/JoinSession' AND patient_nin = $1",
        )
        .bind(&v.nins[0])
        .fetch_one(v.app.platform().db.read())
        .await
        .expect("audit"),
        "n",
    )
    .expect("n");
    assert_eq!(n, 2);
}

// ── tests ──────────────────────────────────────────────────────────────────────────────────────

async fn two_webrtc_peers_connect_through_the_service_and_exchange_data(env: Env) {
    let v = video_appointment(env, None).await;
    let (mut patient, mut gp, p1, p2) =
        connect_two_peers(&v, v.app.channel().await, v.app.channel().await).await;
    end_and_check(&v, v.app.channel().await, &mut patient, &mut gp).await;
    let _ = p1.pc.close().await;
    let _ = p2.pc.close().await;
    v.app.shutdown().await;
}

/// The two peers talk to two instances sharing PostgreSQL and Redis. Database polling is
/// slowed to two minutes, so events must reach the other instance through Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    no_test_backends,
    ignore = "needs TEST_DATABASE_URL and TEST_REDIS_URL"
)]
async fn peers_on_two_replicas_sharing_redis_reach_each_other() {
    let Some(env) = Env::postgres().await else {
        return;
    };
    let tweak: Tweak = Arc::new(|c: &mut Config| {
        c.signalling.poll_interval = Duration::from_secs(120);
    });
    let v = video_appointment(env, Some(tweak)).await;
    let replica = v.app.start_replica().await;
    let replica_channel = channel_to(replica.local_addr()).await;
    let (mut patient, mut gp, p1, p2) =
        connect_two_peers(&v, v.app.channel().await, replica_channel.clone()).await;
    end_and_check(&v, replica_channel, &mut patient, &mut gp).await;
    let _ = p1.pc.close().await;
    let _ = p2.pc.close().await;
    drop((patient, gp));
    replica.stop().await.expect("stop replica");
    v.app.shutdown().await;
}

/// A parent books a video appointment for a child of 10 and joins it as the patient side with a
/// real webrtc-rs peer; the child's access log then lists the parent's actions.
async fn a_parent_books_for_a_child_of_10_and_joins_the_video_as_the_patient_side(env: Env) {
    use econsult_proto::audit::v1 as apb;
    let app = TestApp::start(env).await;
    seed_gp(&app, ORG_A, "gp-video", GP_SEED, 0).await;
    let child = econsult_runtime::nin::synthetic_born(2015, 6, 1, 3)
        .expect("born 2015: 10 on 2026-03-02")
        .as_str()
        .to_owned();
    let parent = econsult_runtime::nin::synthetic_born(1985, 4, 4, 5)
        .expect("born 1985")
        .as_str()
        .to_owned();
    app.booking()
        .await
        .update_list(authed(
            bpb::UpdateListRequest {
                gp_id: "gp-video".into(),
                add: vec![child.clone()],
                remove: vec![],
                idempotency_key: key(),
            },
            &app.ehr_token(ORG_A),
        ))
        .await
        .expect("child on the list");
    let slots = publish(
        &app,
        ORG_A,
        "gp-video",
        &[slot_start()],
        bpb::Modality::Video,
    )
    .await;
    let token = app.token(TokenSpec::PatientWithRelations {
        nin: parent.clone(),
        acr: REQUIRED_ACR.into(),
        represents: vec![econsult_runtime::auth::RepresentsClaim {
            pid: child.clone(),
            relation: "parent".into(),
            protected_address: false,
            name: Some("Ola Nordmann".into()),
        }],
        protected_address: false,
        name: Some("Kari Nordmann".into()),
    });
    let booked = app
        .booking()
        .await
        .book(as_for(
            bpb::BookRequest {
                target: Some(bpb::book_request::Target::SlotId(slots[0].slot_id.clone())),
                reason: "video for my son".into(),
                request_id: String::new(),
                idempotency_key: key(),
            },
            &token,
            Some(&child),
        ))
        .await
        .expect("the parent books for the child")
        .into_inner();
    assert_eq!(booked.patient_nin, child);
    app.clock.set(slot_start() - chrono::Duration::minutes(5));
    let v = Video {
        app,
        appointment_id: booked.appointment_id.clone(),
        nins: vec![child.clone()],
        acting: Some((token.clone(), child.clone())),
    };
    let (mut patient, mut gp, p1, p2) =
        connect_two_peers(&v, v.app.channel().await, v.app.channel().await).await;
    // The practice's PeerJoined said a parent is present (connect_two_peers); it carries the
    // parent's name, and so does the session, never a number.
    let session = v
        .client()
        .await
        .get_session(authed(
            pb::GetSessionRequest {
                appointment_id: booked.appointment_id.clone(),
            },
            &v.gp(),
        ))
        .await
        .expect("the practice's view")
        .into_inner();
    assert_eq!(
        (
            session.patient_relation,
            session.patient_represented_by_name.as_str()
        ),
        (pb::PatientRelation::Parent as i32, "Kari Nordmann")
    );
    end_and_check(&v, v.app.channel().await, &mut patient, &mut gp).await;
    let _ = p1.pc.close().await;
    let _ = p2.pc.close().await;
    // The appointment says the parent booked it, by name, to the child and to the parent.
    for (t, for_child) in [
        (v.app.patient_token(&child), None),
        (token.clone(), Some(child.as_str())),
    ] {
        let mine = v
            .app
            .booking()
            .await
            .list_my_bookings(as_for(
                bpb::ListMyBookingsRequest { include_past: true },
                &t,
                for_child,
            ))
            .await
            .expect("the child's bookings")
            .into_inner()
            .appointments;
        let a = mine
            .iter()
            .find(|a| a.appointment_id == booked.appointment_id)
            .expect("listed");
        let by = a.booked_by.clone().expect("booked_by");
        assert_eq!(
            (by.relation, by.name.as_str()),
            (bpb::BookerRelation::Parent as i32, "Kari Nordmann")
        );
    }
    assert_eq!(
        booked.booked_by.map(|b| b.relation),
        Some(bpb::BookerRelation::Parent as i32)
    );
    // The child's log (read by the child, and by the parent for the child) lists the parent's
    // booking and join, each with the parent as actor, by name.
    for (t, for_child) in [
        (v.app.patient_token(&child), None),
        (token.clone(), Some(child.as_str())),
    ] {
        let log = econsult_proto::audit::v1::audit_service_client::AuditServiceClient::new(
            v.app.channel().await,
        )
        .list_my_access_log(as_for(
            apb::ListMyAccessLogRequest::default(),
            &t,
            for_child,
        ))
        .await
        .expect("the child's access log")
        .into_inner()
        .entries;
        let by_parent: Vec<&str> = log
            .iter()
            .filter(|e| e.actor_nin == parent && e.acted_as == apb::ActedAs::Parent as i32)
            .map(|e| e.action.rsplit('/').next().unwrap_or_default())
            .collect();
        for action in ["Book", "JoinSession"] {
            assert!(by_parent.contains(&action), "{action} in {by_parent:?}");
        }
        assert!(log.iter().all(|e| e.patient_nin == child));
        let booking = log
            .iter()
            .find(|e| e.action.ends_with("/Book"))
            .expect("the booking");
        assert_eq!(booking.actor_name, "Kari Nordmann");
        assert!(
            booking
                .description
                .starts_with("your parent Kari Nordmann booked an appointment on "),
            "{booking:?}"
        );
    }
    v.app.shutdown().await;
}

async fn only_the_booked_patient_and_the_practice_may_join(env: Env) {
    let v = video_appointment(env, None).await;
    let id = v.appointment_id.as_str();
    let ch = v.app.channel().await;
    let other_patient = v.app.patient_token(&v.nins[1]);
    let err = join(ch.clone(), &other_patient, id).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err = Sig::open(ch.clone(), &other_patient, id, 0)
        .await
        .err()
        .expect("refused");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let colleague = v.app.clinician_token("9999999", ORG_A);
    let err = join(ch.clone(), &colleague, id).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let gp_of_other_org = v.app.clinician_token(&gp_hpr(), ORG_B);
    let err = join(ch.clone(), &gp_of_other_org, id).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err = join(ch.clone(), &v.app.ehr_token(ORG_A), id)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let mut c = v.client().await;
    let err = c
        .join_session(pb::JoinSessionRequest {
            appointment_id: id.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    // The patient cannot admit or end.
    join(ch.clone(), &v.patient(), id)
        .await
        .expect("patient joins");
    let err = c
        .admit(authed(
            pb::AdmitRequest {
                appointment_id: id.into(),
                clinician_hpr_number: String::new(),
            },
            &v.patient(),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = c
        .end_session(authed(
            pb::EndSessionRequest {
                appointment_id: id.into(),
                held: true,
            },
            &v.patient(),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    // A colleague the GP admits may join as the practice side.
    admit(ch.clone(), &v.gp(), id, "9999999").await;
    let joined = join(ch.clone(), &colleague, id)
        .await
        .expect("colleague joins");
    assert_eq!(joined.side, pb::Side::Practice as i32);
    let err = join(ch.clone(), &v.app.patient_token(&v.nins[2]), "")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    v.app.shutdown().await;
}

async fn joining_needs_the_window_a_video_appointment_and_no_cancellation(env: Env) {
    let v = video_appointment(env, None).await;
    let id = v.appointment_id.as_str();
    let ch = v.app.channel().await;
    v.app
        .clock
        .set(slot_start() - chrono::Duration::minutes(16));
    for token in [v.patient(), v.gp()] {
        let err = join(ch.clone(), &token, id).await.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
        assert!(
            err.message().contains("2026-03-03T08:45:00+00:00")
                && err.message().contains("2026-03-03T09:45:00+00:00"),
            "the window is in the message: {}",
            err.message()
        );
    }
    v.app
        .clock
        .set(slot_start() - chrono::Duration::minutes(15));
    join(ch.clone(), &v.patient(), id)
        .await
        .expect("15 minutes before start is inside");
    v.app.clock.set(at("2026-03-03T09:45:01Z"));
    let err = join(ch.clone(), &v.patient(), id).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("join window"), "{}", err.message());

    // An in-person appointment and a cancelled video appointment.
    v.app.clock.set(monday_0800());
    let slots = publish(
        &v.app,
        ORG_A,
        "gp-video",
        &[at("2026-03-04T09:00:00Z")],
        bpb::Modality::InPerson,
    )
    .await;
    let in_person = book(&v.app, &v.nins[1], &slots[0].slot_id).await;
    let slots = publish(
        &v.app,
        ORG_A,
        "gp-video",
        &[at("2026-03-05T09:00:00Z")],
        bpb::Modality::Video,
    )
    .await;
    let cancelled = book(&v.app, &v.nins[2], &slots[0].slot_id).await;
    v.app
        .booking()
        .await
        .cancel(authed(
            bpb::CancelRequest {
                appointment_id: cancelled.clone(),
                idempotency_key: key(),
            },
            &v.app.patient_token(&v.nins[2]),
        ))
        .await
        .expect("cancel");
    v.app.clock.set(at("2026-03-04T08:55:00Z"));
    let err = join(ch.clone(), &v.app.patient_token(&v.nins[1]), &in_person)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("not a video"), "{}", err.message());
    v.app.clock.set(at("2026-03-05T08:55:00Z"));
    let err = join(ch.clone(), &v.app.patient_token(&v.nins[2]), &cancelled)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("cancelled"), "{}", err.message());
    v.app.shutdown().await;
}

async fn the_patient_waits_until_the_gp_admits(env: Env) {
    let v = video_appointment(env, None).await;
    let id = v.appointment_id.as_str();
    let ch = v.app.channel().await;
    let joined = join(ch.clone(), &v.patient(), id).await.expect("join");
    assert!(joined.waiting);
    let mut patient = Sig::open(ch.clone(), &v.patient(), id, joined.resume_after_seq)
        .await
        .expect("stream");
    let w = patient.welcome().await;
    assert!(w.waiting && !w.peer_online, "{w:?}");
    let (_probe, sdp) = real_offer_sdp().await;
    let (code, msg) = patient.call(offer(&sdp)).await.unwrap_err();
    assert_eq!(code, Code::FailedPrecondition);
    assert!(msg.contains("waiting room"), "{msg}");
    // Nor is a connection report recorded from the waiting room (no media can flow yet).
    let (code, msg) = patient
        .call(Out::Connection(pb::ConnectionReport { connected: true }))
        .await
        .unwrap_err();
    assert_eq!(code, Code::FailedPrecondition);
    assert!(msg.contains("waiting room"), "{msg}");

    let gp_joined = join(ch.clone(), &v.gp(), id).await.expect("GP joins");
    assert!(!gp_joined.waiting);
    let mut gp = Sig::open(ch.clone(), &v.gp(), id, gp_joined.resume_after_seq)
        .await
        .expect("GP stream");
    let w = gp.welcome().await;
    assert!(w.peer_online && w.peer_waiting, "{w:?}");
    // Nothing reaches the patient before admission, and the GP cannot signal yet either.
    patient
        .expect(|e| matches!(e, Ev::PeerJoined(p) if p.side == pb::Side::Practice as i32))
        .await;
    let (code, _) = gp.call(offer(&sdp)).await.unwrap_err();
    assert_eq!(code, Code::FailedPrecondition);
    assert!(
        !patient
            .arrives_within(Duration::from_secs(1), |e| matches!(e, Ev::Admitted(_)))
            .await,
        "not admitted before the GP admits"
    );
    admit(ch.clone(), &v.gp(), id, "").await;
    patient.expect(|e| matches!(e, Ev::Admitted(_))).await;
    patient
        .call(offer(&sdp))
        .await
        .expect("offer after admission");
    match gp.expect(|e| matches!(e, Ev::Description(_))).await {
        Ev::Description(d) => assert_eq!(d.sdp, sdp),
        _ => unreachable!(),
    }
    let again = join(ch.clone(), &v.patient(), id)
        .await
        .expect("join again");
    assert!(!again.waiting);
    let s = v
        .client()
        .await
        .get_session(authed(
            pb::GetSessionRequest {
                appointment_id: id.into(),
            },
            &v.patient(),
        ))
        .await
        .expect("session")
        .into_inner();
    assert!(s.admitted_at.is_some() && s.patient_online && s.practice_online);
    v.app.shutdown().await;
}

async fn malformed_oversized_and_out_of_order_signals_are_refused(env: Env) {
    let v = video_appointment(env, None).await;
    let id = v.appointment_id.as_str();
    let ch = v.app.channel().await;
    let pj = join(ch.clone(), &v.patient(), id).await.expect("join");
    let gj = join(ch.clone(), &v.gp(), id).await.expect("join");
    let mut patient = Sig::open(ch.clone(), &v.patient(), id, pj.resume_after_seq)
        .await
        .expect("stream");
    let mut gp = Sig::open(ch.clone(), &v.gp(), id, gj.resume_after_seq)
        .await
        .expect("stream");
    admit(ch.clone(), &v.gp(), id, "").await;
    patient.expect(|e| matches!(e, Ev::Admitted(_))).await;
    let (_probe, sdp) = real_offer_sdp().await;

    let (code, msg) = patient.call(offer("this is not sdp")).await.unwrap_err();
    assert_eq!(code, Code::InvalidArgument);
    assert!(msg.contains("malformed"), "{msg}");
    let (code, msg) = patient
        .call(offer(&sdp.replace("a=ice-ufrag", "a=x-ufrag")))
        .await
        .unwrap_err();
    assert_eq!(code, Code::InvalidArgument, "{msg}");
    let huge = format!("{sdp}{}", "a=x-padding:0123456789abcdef\r\n".repeat(2500));
    let (code, msg) = patient.call(offer(&huge)).await.unwrap_err();
    assert_eq!(code, Code::InvalidArgument);
    assert!(msg.contains("65536"), "{msg}");
    let (code, msg) = gp
        .call(Out::Description(pb::SessionDescription {
            r#type: pb::SdpType::Answer as i32,
            sdp: sdp.clone(),
            ice_restart: false,
        }))
        .await
        .unwrap_err();
    assert_eq!(code, Code::FailedPrecondition);
    assert!(msg.contains("answer before offer"), "{msg}");
    let (code, _) = patient
        .call(candidate(
            "candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host",
        ))
        .await
        .unwrap_err();
    assert_eq!(code, Code::FailedPrecondition, "candidate before offer");
    let (code, _) = patient
        .call(Out::Description(pb::SessionDescription::default()))
        .await
        .unwrap_err();
    assert_eq!(code, Code::InvalidArgument);

    // The first thing the GP receives is the valid offer: nothing refused was relayed.
    patient.call(offer(&sdp)).await.expect("valid offer");
    let (code, _) = patient
        .call(candidate("candidate:1 1 udp x 127.0.0.1 1 typ host"))
        .await
        .unwrap_err();
    assert_eq!(code, Code::InvalidArgument);
    for i in 0..50 {
        patient
            .call(candidate(&format!(
                "candidate:{i} 1 udp 2130706431 127.0.0.1 {} typ host",
                40000 + i
            )))
            .await
            .expect("within the limit");
    }
    let (code, msg) = patient
        .call(candidate(
            "candidate:51 1 udp 2130706431 127.0.0.1 50051 typ host",
        ))
        .await
        .unwrap_err();
    assert_eq!(code, Code::FailedPrecondition);
    assert!(msg.contains("too many"), "{msg}");
    let mut relayed = Vec::new();
    while relayed.len() < 51 {
        let ev = gp
            .expect(|e| matches!(e, Ev::Description(_) | Ev::Candidate(_)))
            .await;
        relayed.push(ev);
    }
    match &relayed[0] {
        Ev::Description(d) => assert_eq!(d.sdp, sdp),
        other => panic!("first relayed event is the offer, got {other:?}"),
    }
    assert!(relayed[1..].iter().all(|e| matches!(e, Ev::Candidate(_))));
    assert!(
        !gp.arrives_within(Duration::from_millis(500), |e| matches!(
            e,
            Ev::Description(_) | Ev::Candidate(_)
        ))
        .await
    );
    v.app.shutdown().await;
}

async fn a_dropped_stream_resumes_and_gets_what_was_sent_meanwhile(env: Env) {
    dropped_stream_resumes(env, Transport::Bidi).await;
}

/// The browser transport resumes and is taken over like a Signal stream; a message for a
/// stream that was taken over is rejected with ABORTED.
async fn a_dropped_browser_stream_resumes_and_a_newer_one_takes_over(env: Env) {
    dropped_stream_resumes(env, Transport::Browser).await;
}

/// The GP's side signals over `t`.
async fn dropped_stream_resumes(env: Env, t: Transport) {
    let v = video_appointment(env, None).await;
    let id = v.appointment_id.as_str();
    let ch = v.app.channel().await;
    let pj = join(ch.clone(), &v.patient(), id).await.expect("join");
    let gj = join(ch.clone(), &v.gp(), id).await.expect("join");
    let mut patient = Sig::open(ch.clone(), &v.patient(), id, pj.resume_after_seq)
        .await
        .expect("stream");
    let mut gp = Sig::open_via(t, ch.clone(), &v.gp(), None, id, gj.resume_after_seq)
        .await
        .expect("stream");
    admit(ch.clone(), &v.gp(), id, "").await;
    patient.expect(|e| matches!(e, Ev::Admitted(_))).await;
    let (_probe, sdp) = real_offer_sdp().await;
    patient.call(offer(&sdp)).await.expect("offer");
    gp.expect(|e| matches!(e, Ev::Description(_))).await;
    let seen = gp.last_seq;

    // The GP's stream drops; the patient is told and keeps signalling.
    drop(gp);
    match patient.expect(|e| matches!(e, Ev::PeerLeft(_))).await {
        Ev::PeerLeft(l) => {
            assert_eq!(l.reason, pb::LeaveReason::Disconnected as i32);
            assert!(l.rejoin_deadline.is_some());
        }
        _ => unreachable!(),
    }
    let sent_meanwhile = "candidate:7 1 udp 2130706431 127.0.0.1 45678 typ host";
    patient
        .call(candidate(sent_meanwhile))
        .await
        .expect("queued for the GP");
    patient
        .call(Out::MediaState(pb::MediaState {
            audio_muted: true,
            video_muted: false,
        }))
        .await
        .expect("queued for the GP");

    // The GP comes back and resumes after the last event it saw.
    let mut gp = Sig::open_via(t, ch.clone(), &v.gp(), None, id, seen)
        .await
        .expect("resume");
    let w = gp.welcome().await;
    assert!(w.resumed && w.peer_online, "{w:?}");
    match gp.expect(|e| matches!(e, Ev::Candidate(_))).await {
        Ev::Candidate(c) => assert_eq!(c.candidate, sent_meanwhile),
        _ => unreachable!(),
    }
    match gp.expect(|e| matches!(e, Ev::PeerMediaState(_))).await {
        Ev::PeerMediaState(m) => assert!(m.audio_muted && !m.video_muted),
        _ => unreachable!(),
    }
    assert!(
        !gp.buf
            .iter()
            .any(|e| matches!(e.body, Some(Ev::Description(_)))),
        "what was seen before is not delivered again"
    );
    // First the GP's first join, then its return.
    match patient.expect(|e| matches!(e, Ev::PeerJoined(_))).await {
        Ev::PeerJoined(j) => assert!(!j.rejoined, "{j:?}"),
        _ => unreachable!(),
    }
    match patient.expect(|e| matches!(e, Ev::PeerJoined(_))).await {
        Ev::PeerJoined(j) => assert!(j.rejoined && j.side == pb::Side::Practice as i32, "{j:?}"),
        _ => unreachable!(),
    }

    // A second stream of the same participant takes over the first.
    let mut gp2 = Sig::open_via(t, ch.clone(), &v.gp(), None, id, gp.last_seq)
        .await
        .expect("takeover");
    gp2.welcome().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let status = loop {
        match gp
            .next_event(deadline)
            .await
            .expect("old stream ends in time")
        {
            Ok(_) => continue,
            Err(s) => break s,
        }
    };
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    if t == Transport::Browser {
        let (code, msg) = gp
            .call(Out::MediaState(pb::MediaState::default()))
            .await
            .expect_err("the old stream's message is refused");
        assert_eq!(code, Code::Aborted, "{msg}");
        assert!(
            !patient
                .arrives_within(Duration::from_millis(300), |e| matches!(
                    e,
                    Ev::PeerMediaState(_)
                ))
                .await,
            "nothing relayed from a stream that was taken over"
        );
        gp2.call(Out::MediaState(pb::MediaState::default()))
            .await
            .expect("the live stream's message is relayed");
        patient.expect(|e| matches!(e, Ev::PeerMediaState(_))).await;
    }

    // Not back within the grace period: the patient is told the GP is gone.
    drop(gp2);
    patient
        .expect(
            |e| matches!(e, Ev::PeerLeft(l) if l.reason == pb::LeaveReason::Disconnected as i32),
        )
        .await;
    v.app.clock.advance(chrono::Duration::minutes(2));
    patient
        .expect(|e| matches!(e, Ev::PeerLeft(l) if l.reason == pb::LeaveReason::Gone as i32))
        .await;
    let err = Sig::open_via(t, ch.clone(), &v.gp(), None, id, 0)
        .await
        .err()
        .expect("refused");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    join(ch.clone(), &v.gp(), id).await.expect("join again");
    let mut gp = Sig::open_via(t, ch.clone(), &v.gp(), None, id, 0)
        .await
        .expect("stream");
    gp.welcome().await;
    v.app.shutdown().await;
}

/// A token that runs out during a Signal stream ends the stream (UNAUTHENTICATED) like a dropped
/// connection: the peer is told the participant left (disconnected, may rejoin), and a stream
/// opened with a fresh token resumes the session.
async fn a_signal_stream_ends_when_its_token_expires_and_resumes_with_a_fresh_one(env: Env) {
    let v = video_appointment(env, None).await;
    let id = v.appointment_id.as_str();
    let ch = v.app.channel().await;
    // Accepted for about two more seconds: exp lies 28 s back, the leeway is 30 s.
    let spec = TokenSpec::Patient {
        nin: v.nins[0].clone(),
        acr: REQUIRED_ACR.into(),
    };
    let fading = v
        .app
        .keys
        .mint(&spec, Utc::now().timestamp() - 628, 600)
        .expect("mint");
    let pj = join(ch.clone(), &fading, id).await.expect("join");
    let gj = join(ch.clone(), &v.gp(), id).await.expect("join");
    let mut patient = Sig::open(ch.clone(), &fading, id, pj.resume_after_seq)
        .await
        .expect("stream");
    let mut gp = Sig::open(ch.clone(), &v.gp(), id, gj.resume_after_seq)
        .await
        .expect("stream");
    patient.welcome().await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let status = loop {
        match patient.next_event(deadline).await {
            Some(Ok(_)) => continue,
            Some(Err(s)) => break s,
            None => panic!("the stream outlived its token by more than 15 s"),
        }
    };
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("expired"), "{status:?}");
    match gp.expect(|e| matches!(e, Ev::PeerLeft(_))).await {
        Ev::PeerLeft(l) => assert_eq!(l.reason, pb::LeaveReason::Disconnected as i32),
        _ => unreachable!(),
    }

    let err = Sig::open(ch.clone(), &fading, id, patient.last_seq)
        .await
        .err()
        .expect("the expired token opens no stream");
    assert_eq!(err.code(), Code::Unauthenticated);
    let mut patient = Sig::open(ch.clone(), &v.patient(), id, patient.last_seq)
        .await
        .expect("a fresh token resumes");
    assert!(patient.welcome().await.resumed);
    assert!(
        gp.arrives_within(Duration::from_secs(10), |e| matches!(e, Ev::PeerJoined(_)))
            .await,
        "the GP sees the patient back"
    );
    v.app.shutdown().await;
}

/// TURN credentials the way coturn (`use-auth-secret`) checks them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn turn_credentials_follow_the_coturn_rest_scheme() {
    use base64::Engine as _;
    use hmac::Mac as _;
    let tweak: Tweak = Arc::new(|c: &mut Config| {
        c.signalling.stun_urls = vec!["stun:stun.example.org:3478".into()];
        c.signalling.turn_urls = vec!["turn:turn.example.org:3478?transport=udp".into()];
        c.signalling.turn_secret = Some("coturn-static-auth-secret".into());
        c.signalling.turn_ttl = Duration::from_secs(600);
    });
    let v = video_appointment(Env::sqlite().await, Some(tweak)).await;
    let now = v.app.clock.now_unix();
    let resp = v
        .client()
        .await
        .get_ice_servers(authed(
            pb::GetIceServersRequest {
                appointment_id: v.appointment_id.clone(),
            },
            &v.patient(),
        ))
        .await
        .expect("ice servers")
        .into_inner();
    assert_eq!(resp.ice_servers.len(), 2);
    let stun = &resp.ice_servers[0];
    assert_eq!(stun.urls, vec!["stun:stun.example.org:3478".to_string()]);
    assert!(stun.username.is_empty() && stun.credential.is_empty());
    let turn = &resp.ice_servers[1];
    assert_eq!(
        turn.urls,
        vec!["turn:turn.example.org:3478?transport=udp".to_string()]
    );
    let (expiry, subject) = turn.username.split_once(':').expect("expiry:subject");
    let expiry: i64 = expiry.parse().expect("unix time");
    assert_eq!(expiry, now + 600, "expires after the TTL");
    assert_eq!(resp.expires_at.as_ref().map(|t| t.seconds), Some(expiry));
    assert!(
        !subject.is_empty() && !subject.contains(&v.nins[0]),
        "pseudonymous subject"
    );
    let mut mac =
        hmac::Hmac::<sha1::Sha1>::new_from_slice(b"coturn-static-auth-secret").expect("key");
    mac.update(turn.username.as_bytes());
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    assert_eq!(
        turn.credential, expected,
        "coturn recomputes the same password"
    );
    // The GP's credentials differ, and so does the subject.
    let gp = v
        .client()
        .await
        .get_ice_servers(authed(
            pb::GetIceServersRequest {
                appointment_id: v.appointment_id.clone(),
            },
            &v.gp(),
        ))
        .await
        .expect("ice servers")
        .into_inner();
    assert_ne!(gp.ice_servers[1].username, turn.username);
    // JoinSession hands them out too; other callers get nothing.
    let joined = join(v.app.channel().await, &v.patient(), &v.appointment_id)
        .await
        .expect("join");
    assert_eq!(joined.ice_servers.len(), 2);
    let err = v
        .client()
        .await
        .get_ice_servers(authed(
            pb::GetIceServersRequest {
                appointment_id: v.appointment_id.clone(),
            },
            &v.app.patient_token(&v.nins[1]),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    v.app.shutdown().await;
}

trait ClockExt {
    fn now_unix(&self) -> i64;
}

impl ClockExt for econsult_runtime::clock::ManualClock {
    fn now_unix(&self) -> i64 {
        use econsult_runtime::clock::Clock as _;
        self.now().timestamp()
    }
}

/// Every client message is a write transaction: a stream that floods is answered
/// Rejected(RESOURCE_EXHAUSTED) past its budget (burst 100, then 10 a second), nothing refused is
/// relayed, and the stream lives on.
async fn a_flooding_stream_is_rejected_past_its_budget_and_lives_on(env: Env) {
    let v = video_appointment(env, None).await;
    let id = v.appointment_id.as_str();
    let ch = v.app.channel().await;
    let pj = join(ch.clone(), &v.patient(), id).await.expect("join");
    let gj = join(ch.clone(), &v.gp(), id).await.expect("join");
    let mut patient = Sig::open(ch.clone(), &v.patient(), id, pj.resume_after_seq)
        .await
        .expect("stream");
    let mut gp = Sig::open(ch.clone(), &v.gp(), id, gj.resume_after_seq)
        .await
        .expect("stream");
    admit(ch.clone(), &v.gp(), id, "").await;
    patient.expect(|e| matches!(e, Ev::Admitted(_))).await;
    let state = |i: u32| {
        Out::MediaState(pb::MediaState {
            audio_muted: i.is_multiple_of(2),
            video_muted: false,
        })
    };
    let mut ids = Vec::new();
    for i in 0..150 {
        ids.push(patient.send(state(i)).await);
    }
    let (mut acked, mut refused) = (0, 0);
    for id in ids {
        match patient
            .expect(|e| match e {
                Ev::Ack(a) => a.client_msg_id == id,
                Ev::Rejected(r) => r.client_msg_id == id,
                _ => false,
            })
            .await
        {
            Ev::Ack(_) => acked += 1,
            Ev::Rejected(r) => {
                assert_eq!(r.code, Code::ResourceExhausted as i32, "{r:?}");
                refused += 1;
            }
            _ => unreachable!(),
        }
    }
    assert!(refused > 0, "the flood was refused in part: {acked} acked");
    assert!(acked >= 100, "the burst went through: {acked} acked");
    for _ in 0..acked {
        gp.expect(|e| matches!(e, Ev::PeerMediaState(_))).await;
    }
    assert!(
        !gp.arrives_within(Duration::from_millis(500), |e| matches!(
            e,
            Ev::PeerMediaState(_)
        ))
        .await,
        "nothing refused was relayed"
    );
    // The stream lives on: after a pause a message goes through.
    tokio::time::sleep(Duration::from_millis(300)).await;
    patient.call(state(1)).await.expect("after a pause");
    v.app.shutdown().await;
}

/// A NUL byte in an id or in a string relayed to the peer is refused, naming the field.
async fn a_nul_byte_in_a_signal_or_an_id_is_refused(env: Env) {
    let v = video_appointment(env, None).await;
    let id = v.appointment_id.as_str();
    let ch = v.app.channel().await;
    let err = join(ch.clone(), &v.patient(), &format!("{id}\0"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("appointment_id"), "{err:?}");
    let pj = join(ch.clone(), &v.patient(), id).await.expect("join");
    let mut patient = Sig::open(ch.clone(), &v.patient(), id, pj.resume_after_seq)
        .await
        .expect("stream");
    admit(ch.clone(), &v.gp(), id, "").await;
    patient.expect(|e| matches!(e, Ev::Admitted(_))).await;
    let (_probe, sdp) = real_offer_sdp().await;
    patient.call(offer(&sdp)).await.expect("valid offer");
    let (code, msg) = patient
        .call(Out::Candidate(pb::IceCandidate {
            candidate: "candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host".into(),
            sdp_mid: "0\0".into(),
            sdp_mline_index: Some(0),
            username_fragment: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(code, Code::InvalidArgument, "{msg}");
    assert!(msg.contains("candidate.sdp_mid"), "{msg}");
    v.app.shutdown().await;
}

/// A browser patient (SignalEvents + SendSignal) and an app GP (Signal) connect two real
/// webrtc-rs peers; the session is recorded and counted as with two apps.
async fn a_browser_peer_and_an_app_peer_connect_through_the_service(env: Env) {
    let v = video_appointment(env, None).await;
    let (mut patient, mut gp, p1, p2) = connect_two_peers_via(
        &v,
        Transport::Browser,
        v.app.channel().await,
        v.app.channel().await,
    )
    .await;
    assert!(patient.stream_id().is_some());
    end_and_check(&v, v.app.channel().await, &mut patient, &mut gp).await;
    // The session ended: the browser's events stream ends with OK.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match patient.next_event(deadline).await.expect("ends in time") {
            Ok(_) => continue,
            Err(s) => {
                assert_eq!(s.code(), Code::Cancelled, "ended with OK: {s:?}");
                break;
            }
        }
    }
    let _ = p1.pc.close().await;
    let _ = p2.pc.close().await;
    v.app.shutdown().await;
}

/// A hang-up by SendSignal ends the SignalEvents stream with OK and tells the peer; a message
/// for a stream id that is not the participant's live stream is refused.
async fn a_browser_hang_up_ends_its_events_stream_and_tells_the_peer(env: Env) {
    let v = video_appointment(env, None).await;
    let id = v.appointment_id.as_str();
    let ch = v.app.channel().await;
    let pj = join(ch.clone(), &v.patient(), id).await.expect("join");
    let gj = join(ch.clone(), &v.gp(), id).await.expect("join");
    let mut patient = Sig::open_browser(ch.clone(), &v.patient(), id, pj.resume_after_seq)
        .await
        .expect("stream");
    let w = patient.welcome().await;
    assert!(w.waiting, "{w:?}");
    patient
        .expect(|e| matches!(e, Ev::Ack(a) if a.client_msg_id == 1))
        .await;
    let mut gp = Sig::open(ch.clone(), &v.gp(), id, gj.resume_after_seq)
        .await
        .expect("stream");
    assert!(gp.welcome().await.peer_waiting);
    // In the waiting room, as on Signal: only a hang-up goes through.
    let (code, _) = patient
        .call(Out::MediaState(pb::MediaState::default()))
        .await
        .expect_err("refused before admission");
    assert_eq!(code, Code::FailedPrecondition);
    // A forged or stale stream id.
    let answer = SignallingServiceClient::new(ch.clone())
        .send_signal(authed(
            pb::SendSignalRequest {
                appointment_id: id.into(),
                stream_id: "999".into(),
                signal: Some(pb::ClientSignal {
                    client_msg_id: 42,
                    body: Some(Out::HangUp(pb::HangUp {})),
                }),
            },
            &v.patient(),
        ))
        .await
        .expect("answered")
        .into_inner();
    match answer.result {
        Some(pb::send_signal_response::Result::Rejected(r)) => {
            assert_eq!(
                (r.client_msg_id, Code::from(r.code)),
                (42, Code::Aborted),
                "{r:?}"
            )
        }
        other => panic!("expected a rejection: {other:?}"),
    }
    // Another patient may not send on this session.
    let err = SignallingServiceClient::new(ch.clone())
        .send_signal(authed(
            pb::SendSignalRequest {
                appointment_id: id.into(),
                stream_id: patient.stream_id().expect("browser").into(),
                signal: Some(pb::ClientSignal {
                    client_msg_id: 43,
                    body: Some(Out::HangUp(pb::HangUp {})),
                }),
            },
            &v.app.patient_token(&v.nins[1]),
        ))
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    patient
        .call(Out::HangUp(pb::HangUp {}))
        .await
        .expect("hang-up accepted");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match patient.next_event(deadline).await.expect("ends in time") {
            Ok(_) => continue,
            Err(s) => {
                assert_eq!(s.code(), Code::Cancelled, "ended with OK: {s:?}");
                break;
            }
        }
    }
    gp.expect(|e| matches!(e, Ev::PeerLeft(l) if l.reason == pb::LeaveReason::HangUp as i32))
        .await;
    v.app.shutdown().await;
}

/// A signalling blip does not cut the recorded call time: the patient's browser stream drops
/// for 30 s while media stays up, resumes, and the session goes on counting; the GP's stream
/// then drops for good, and its side counts as connected until the drop.
async fn a_resumed_stream_keeps_counting_connected_time(env: Env) {
    let v = video_appointment(env, None).await;
    let id = v.appointment_id.as_str();
    let ch = v.app.channel().await;
    let pj = join(ch.clone(), &v.patient(), id).await.expect("join");
    let gj = join(ch.clone(), &v.gp(), id).await.expect("join");
    let mut patient = Sig::open_browser(ch.clone(), &v.patient(), id, pj.resume_after_seq)
        .await
        .expect("stream");
    let mut gp = Sig::open(ch.clone(), &v.gp(), id, gj.resume_after_seq)
        .await
        .expect("stream");
    admit(ch.clone(), &v.gp(), id, "").await;
    patient.expect(|e| matches!(e, Ev::Admitted(_))).await;
    for sig in [&mut patient, &mut gp] {
        sig.call(Out::Connection(pb::ConnectionReport { connected: true }))
            .await
            .expect("report");
    }
    v.app.clock.advance(chrono::Duration::seconds(60));
    // The browser's network blips: its events stream drops; media goes on.
    let seen = patient.last_seq;
    drop(patient);
    gp.expect(|e| matches!(e, Ev::PeerLeft(l) if l.reason == pb::LeaveReason::Disconnected as i32))
        .await;
    v.app.clock.advance(chrono::Duration::seconds(30));
    let mut patient = Sig::open_browser(ch.clone(), &v.patient(), id, seen)
        .await
        .expect("resume");
    assert!(patient.welcome().await.resumed);
    gp.expect(|e| matches!(e, Ev::PeerJoined(j) if j.rejoined))
        .await;
    v.app.clock.advance(chrono::Duration::seconds(60));
    // The GP's stream drops and does not come back within the grace period.
    drop(gp);
    patient
        .expect(
            |e| matches!(e, Ev::PeerLeft(l) if l.reason == pb::LeaveReason::Disconnected as i32),
        )
        .await;
    v.app.clock.advance(chrono::Duration::minutes(2));
    patient
        .expect(|e| matches!(e, Ev::PeerLeft(l) if l.reason == pb::LeaveReason::Gone as i32))
        .await;
    let ended = SignallingServiceClient::new(ch.clone())
        .end_session(authed(
            pb::EndSessionRequest {
                appointment_id: id.into(),
                held: true,
            },
            &v.gp(),
        ))
        .await
        .expect("end session")
        .into_inner()
        .session
        .expect("session");
    // 60 s + 30 s of blip + 60 s until the GP's stream dropped.
    assert_eq!(ended.connected_ms, 150_000, "{ended:?}");
    v.app.shutdown().await;
}

on_both_backends!(
    a_resumed_stream_keeps_counting_connected_time,
    a_browser_peer_and_an_app_peer_connect_through_the_service,
    a_browser_hang_up_ends_its_events_stream_and_tells_the_peer,
    a_dropped_browser_stream_resumes_and_a_newer_one_takes_over,
    a_nul_byte_in_a_signal_or_an_id_is_refused,
    a_flooding_stream_is_rejected_past_its_budget_and_lives_on,
    two_webrtc_peers_connect_through_the_service_and_exchange_data,
    a_parent_books_for_a_child_of_10_and_joins_the_video_as_the_patient_side,
    only_the_booked_patient_and_the_practice_may_join,
    joining_needs_the_window_a_video_appointment_and_no_cancellation,
    the_patient_waits_until_the_gp_admits,
    malformed_oversized_and_out_of_order_signals_are_refused,
    a_dropped_stream_resumes_and_gets_what_was_sent_meanwhile,
    a_signal_stream_ends_when_its_token_expires_and_resumes_with_a_fresh_one,
);

/// A wake-up reaches each replica's streams of the session once: the publishing replica's at
/// once, the other's through Redis, and the publisher's own message coming back from Redis is
/// not forwarded again (it used to be, and each signal then cost the peer's stream two reads).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    no_test_backends,
    ignore = "needs TEST_DATABASE_URL and TEST_REDIS_URL"
)]
async fn a_wake_up_reaches_each_replica_once() {
    use econsult_signalling::domain::Side;
    use econsult_signalling::hub::Hub;
    let redis = std::env::var("TEST_REDIS_URL").expect("TEST_REDIS_URL");
    let ns = format!("wake-{}", uuid::Uuid::new_v4().simple());
    let ttl = Duration::from_secs(5);
    let (stop_tx, stop) = watch::channel(false);
    let a = Hub::redis(&redis, &ns, ttl).await.expect("hub a");
    let b = Hub::redis(&redis, &ns, ttl).await.expect("hub b");
    for hub in [&a, &b] {
        let listener = hub.listener(stop.clone()).await.expect("subscribe");
        tokio::spawn(listener.expect("a Redis hub listens"));
    }
    let mut on_a = a.subscribe("s1");
    let mut on_b = b.subscribe("s1");
    a.wake("s1", Some(Side::Practice)).await;
    for (name, wakes) in [("a", &mut on_a), ("b", &mut on_b)] {
        let w = tokio::time::timeout(WAIT, wakes.recv())
            .await
            .unwrap_or_else(|_| panic!("replica {name} got no wake-up"))
            .expect("wake-up");
        assert_eq!(&*w.session_id, "s1", "replica {name}");
        assert_eq!(w.side, Some(Side::Practice), "replica {name}");
    }
    // b's copy came through Redis; a's own would have come the same way by now.
    b.wake("s1", None).await;
    let w = tokio::time::timeout(WAIT, on_a.recv())
        .await
        .expect("replica a got b's wake-up")
        .expect("wake-up");
    assert_eq!(
        w.side, None,
        "replica a's next wake-up is b's, not its own echoed: {w:?}"
    );
    let echo = tokio::time::timeout(Duration::from_millis(300), on_b.recv()).await;
    let w = echo.expect("b's own wake-up reaches b").expect("wake-up");
    assert_eq!(w.side, None);
    let again = tokio::time::timeout(Duration::from_millis(300), on_b.recv()).await;
    assert!(again.is_err(), "b got its own wake-up twice: {again:?}");
    let _ = stop_tx.send(true);
    delete_redis_namespace(&redis, &ns);
}
