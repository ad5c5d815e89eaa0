//! The `signalling` scenario: N live video sessions (booked video appointments, both sides
//! joined, one Signal stream each, the patient admitted), and one flow = one MediaState signal
//! sent by one side and relayed to the other. The flow's latency runs from its intended start
//! until the peer's stream delivers the relayed `PeerMediaState`, so it is the signalling relay
//! latency under load (each relay is a database transaction: the event is stored with its
//! sequence number before it is pushed).
//!
//! Matching: the signals of one direction of one session are sent in order on one stream and
//! relayed in order, so each direction keeps a FIFO of the flows waiting for delivery; a
//! `Rejected` answer removes its flow by `client_msg_id`.

use crate::engine::{Outcome, RpcTimes, Scenario, code_name, timed};
use crate::scenarios::{Auth, Check, SeedInfo, key, req, upsert_gp_with_list};
use crate::target::Target;
use anyhow::Context as _;
use chrono::{Duration as CDuration, Utc};
use econsult_proto::booking::v1 as bpb;
use econsult_proto::signalling::v1 as spb;
use futures::future::BoxFuture;
use futures::{StreamExt as _, TryStreamExt as _};
use spb::client_signal::Body as Out;
use spb::server_event::Body as Ev;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tonic::transport::Channel;

type Waiter = (u64, oneshot::Sender<Result<(), String>>);

/// One side's stream of one session.
struct Side {
    tx: mpsc::Sender<spb::ClientSignal>,
    /// Flows whose signal this side sent and the peer has not received yet.
    pending: Mutex<VecDeque<Waiter>>,
    /// Serialises "queue the waiter, then send", so the FIFO matches the stream order.
    send_lock: tokio::sync::Mutex<()>,
    next_id: AtomicU64,
}

struct Session {
    sides: [Arc<Side>; 2],
}

/// Live sessions and their counters.
pub struct Signalling {
    sessions: Vec<Session>,
    times: Arc<RpcTimes>,
    sent: AtomicU64,
    delivered: Arc<AtomicU64>,
    unexpected: Arc<AtomicU64>,
    rejected: Arc<AtomicU64>,
    stream_errors: Arc<AtomicU64>,
    last_error: Arc<Mutex<Option<String>>>,
    readers: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    _channels: Vec<Channel>,
    pub seed: SeedInfo,
}

struct Booked {
    appointment_id: String,
    patient: Auth,
    clinician: Auth,
}

impl Signalling {
    /// Books `sessions` video appointments starting in a few minutes, joins both sides, opens
    /// the streams and admits the patients. Streams are spread over their own connections
    /// (at most 200 streams each, below the server's per-connection stream limit).
    pub async fn seed(
        target: &Target,
        channels: &[Channel],
        times: Arc<RpcTimes>,
        sessions: usize,
    ) -> anyhow::Result<Arc<Self>> {
        let t0 = std::time::Instant::now();
        let sessions = sessions.max(1);
        let per_gp = 10usize;
        let gps = sessions.div_ceil(per_gp);
        let per_practice = 10usize;
        let practices = gps.div_ceil(per_practice);
        let tag = &key()[..8];
        // Slots of one minute from two minutes ahead: all inside the join window (15 minutes
        // before the start until 30 minutes after the end).
        let first = Utc::now() + CDuration::minutes(2);
        let orgs: Vec<String> = (0..practices)
            .map(|p| format!("{:09}", 950_000_000 + p as u64))
            .collect();
        let jobs = (0..gps).map(|g| {
            let org = orgs[g % practices].clone();
            let ehr = target.ehr(&org);
            let ch = channels[g % channels.len()].clone();
            let gp_id = format!("load-{tag}-vgp{g}");
            let hpr = format!("{}", 8_000_000 + g as u64);
            let n = per_gp.min(sessions - g * per_gp);
            let nins: Vec<String> = (0..n)
                .map(|j| {
                    econsult_runtime::nin::synthetic(15_000_000 + (g * per_gp + j) as u64)
                        .as_str()
                        .to_owned()
                })
                .collect();
            let patients: anyhow::Result<Vec<Auth>> =
                nins.iter().map(|n| target.patient(n)).collect();
            let clinician = target.clinician(&hpr, &org);
            async move {
                let ehr = ehr?;
                let patients = patients?;
                let clinician = clinician?;
                let mut c = bpb::booking_service_client::BookingServiceClient::new(ch);
                upsert_gp_with_list(&mut c, &gp_id, &hpr, format!("Dr Video {g}"), &nins, &ehr)
                    .await?;
                let slots = c
                    .publish_slots(req(
                        bpb::PublishSlotsRequest {
                            gp_id: gp_id.clone(),
                            slots: (0..n as i64)
                                .map(|j| bpb::NewSlot {
                                    start: Some(prost_types::Timestamp {
                                        seconds: (first + CDuration::minutes(j)).timestamp(),
                                        nanos: 0,
                                    }),
                                    duration_minutes: 1,
                                    modality: bpb::Modality::Video as i32,
                                    acute_reserve: false,
                                })
                                .collect(),
                            idempotency_key: key(),
                        },
                        &ehr,
                    ))
                    .await
                    .context("PublishSlots")?
                    .into_inner()
                    .slots;
                let mut out = Vec::new();
                for ((slot, nin), patient) in slots.iter().zip(&nins).zip(patients) {
                    let appt = c
                        .book_for_patient(req(
                            bpb::BookForPatientRequest {
                                slot_id: slot.slot_id.clone(),
                                patient_nin: nin.clone(),
                                reason: "video consultation (load test)".into(),
                                idempotency_key: key(),
                                requested_at: None,
                            },
                            &ehr,
                        ))
                        .await
                        .context("BookForPatient")?
                        .into_inner();
                    out.push(Booked {
                        appointment_id: appt.appointment_id,
                        patient,
                        clinician: clinician.clone(),
                    });
                }
                anyhow::Ok(out)
            }
        });
        let booked: Vec<Booked> = futures::stream::iter(jobs)
            .buffered(4)
            .try_collect::<Vec<Vec<Booked>>>()
            .await?
            .into_iter()
            .flatten()
            .collect();

        // Streams get their own connections, at most 200 streams each.
        let n_conn = (2 * booked.len()).div_ceil(200).max(1);
        let stream_channels = target.channels(n_conn).await?;
        let delivered = Arc::new(AtomicU64::new(0));
        let unexpected = Arc::new(AtomicU64::new(0));
        let rejected = Arc::new(AtomicU64::new(0));
        let stream_errors = Arc::new(AtomicU64::new(0));
        let last_error = Arc::new(Mutex::new(None));
        let mut readers = Vec::new();
        let setups = booked.into_iter().enumerate().map(|(i, b)| {
            let ch = stream_channels[i % stream_channels.len()].clone();
            let rpc = channels[i % channels.len()].clone();
            let times = times.clone();
            async move {
                let mut sc = spb::signalling_service_client::SignallingServiceClient::new(rpc);
                let pj = timed(
                    &times,
                    "signalling.JoinSession",
                    sc.join_session(req(
                        spb::JoinSessionRequest {
                            appointment_id: b.appointment_id.clone(),
                        },
                        &b.patient,
                    )),
                )
                .await
                .context("JoinSession (patient)")?;
                let gj = timed(
                    &times,
                    "signalling.JoinSession",
                    sc.join_session(req(
                        spb::JoinSessionRequest {
                            appointment_id: b.appointment_id.clone(),
                        },
                        &b.clinician,
                    )),
                )
                .await
                .context("JoinSession (practice)")?;
                let (ptx, prx) = open(
                    ch.clone(),
                    &b.patient,
                    &b.appointment_id,
                    pj.resume_after_seq,
                )
                .await?;
                let (gtx, grx) =
                    open(ch, &b.clinician, &b.appointment_id, gj.resume_after_seq).await?;
                timed(
                    &times,
                    "signalling.Admit",
                    sc.admit(req(
                        spb::AdmitRequest {
                            appointment_id: b.appointment_id.clone(),
                            clinician_hpr_number: String::new(),
                        },
                        &b.clinician,
                    )),
                )
                .await
                .context("Admit")?;
                anyhow::Ok(((ptx, prx), (gtx, grx)))
            }
        });
        let opened: Vec<_> = futures::stream::iter(setups)
            .buffered(8)
            .try_collect()
            .await?;
        let mut list = Vec::new();
        for ((ptx, prx), (gtx, grx)) in opened {
            let side = |tx| {
                Arc::new(Side {
                    tx,
                    pending: Mutex::new(VecDeque::new()),
                    send_lock: tokio::sync::Mutex::new(()),
                    next_id: AtomicU64::new(2),
                })
            };
            let (p, g) = (side(ptx), side(gtx));
            for (me, peer, rx) in [(p.clone(), g.clone(), prx), (g.clone(), p.clone(), grx)] {
                readers.push(tokio::spawn(read_events(
                    rx,
                    me,
                    peer,
                    delivered.clone(),
                    unexpected.clone(),
                    rejected.clone(),
                    stream_errors.clone(),
                    last_error.clone(),
                )));
            }
            list.push(Session { sides: [p, g] });
        }
        let seed = SeedInfo {
            practices,
            gps,
            patients: list.len(),
            slots: list.len(),
            subscribers: 2 * list.len(),
            seconds: t0.elapsed().as_secs_f64(),
        };
        Ok(Arc::new(Self {
            sessions: list,
            times,
            sent: AtomicU64::new(0),
            delivered,
            unexpected,
            rejected,
            stream_errors,
            last_error,
            readers: Mutex::new(readers),
            _channels: stream_channels,
            seed,
        }))
    }

    async fn run(&self, n: u64) -> Outcome {
        let s = &self.sessions[(n / 2) as usize % self.sessions.len()];
        let side = &s.sides[(n % 2) as usize];
        let (done_tx, done_rx) = oneshot::channel();
        {
            let _g = side.send_lock.lock().await;
            let id = side.next_id.fetch_add(1, Ordering::Relaxed);
            side.pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push_back((id, done_tx));
            let msg = spb::ClientSignal {
                client_msg_id: id,
                body: Some(Out::MediaState(spb::MediaState {
                    audio_muted: n % 4 < 2,
                    video_muted: false,
                })),
            };
            if side.tx.send(msg).await.is_err() {
                return Outcome::Error(
                    "STREAM_CLOSED".into(),
                    "the Signal stream is closed".into(),
                );
            }
        }
        self.sent.fetch_add(1, Ordering::Relaxed);
        let t0 = std::time::Instant::now();
        match done_rx.await {
            Ok(Ok(())) => {
                self.times
                    .record("signalling.relay(MediaState)", t0.elapsed());
                Outcome::Ok
            }
            Ok(Err(e)) => Outcome::Error("REJECTED".into(), e),
            Err(_) => Outcome::Error("STREAM_CLOSED".into(), "the peer's stream ended".into()),
        }
    }

    /// Closes the streams (a HangUp-free close: the participants just drop).
    pub async fn close(&self) {
        for s in &self.sessions {
            for side in &s.sides {
                side.pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clear();
            }
        }
        let readers = std::mem::take(&mut *self.readers.lock().unwrap_or_else(|e| e.into_inner()));
        for r in readers {
            r.abort();
        }
    }

    /// Counters of the run.
    pub fn counters(&self) -> BTreeMap<String, u64> {
        BTreeMap::from([
            ("sessions".into(), self.sessions.len() as u64),
            ("signals_sent".into(), self.sent.load(Ordering::Relaxed)),
            (
                "signals_delivered".into(),
                self.delivered.load(Ordering::Relaxed),
            ),
            (
                "signals_rejected".into(),
                self.rejected.load(Ordering::Relaxed),
            ),
            (
                "stream_errors".into(),
                self.stream_errors.load(Ordering::Relaxed),
            ),
        ])
    }

    /// Every signal sent was delivered to the peer once; nothing arrived that was not sent.
    pub fn checks(&self) -> Vec<Check> {
        let sent = self.sent.load(Ordering::Relaxed);
        let delivered = self.delivered.load(Ordering::Relaxed);
        let rejected = self.rejected.load(Ordering::Relaxed);
        let unexpected = self.unexpected.load(Ordering::Relaxed);
        let errors = self.stream_errors.load(Ordering::Relaxed);
        vec![Check {
            name: "every relayed signal reached the peer exactly once".into(),
            passed: delivered + rejected == sent && unexpected == 0 && errors == 0,
            detail: format!(
                "{sent} sent, {delivered} delivered, {rejected} rejected, {unexpected} unexpected deliveries, {errors} stream errors{}",
                self.last_error
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .as_ref()
                    .map(|e| format!(" (last: {e})"))
                    .unwrap_or_default()
            ),
        }]
    }
}

async fn open(
    channel: Channel,
    auth: &Auth,
    appointment_id: &str,
    resume_after_seq: u64,
) -> anyhow::Result<(
    mpsc::Sender<spb::ClientSignal>,
    tonic::Streaming<spb::ServerEvent>,
)> {
    let (tx, rx) = mpsc::channel(256);
    tx.send(spb::ClientSignal {
        client_msg_id: 1,
        body: Some(Out::Hello(spb::Hello {
            appointment_id: appointment_id.into(),
            resume_after_seq,
        })),
    })
    .await
    .map_err(|_| anyhow::anyhow!("queue hello"))?;
    let mut stream = spb::signalling_service_client::SignallingServiceClient::new(channel)
        .signal(req(tokio_stream::wrappers::ReceiverStream::new(rx), auth))
        .await
        .context("Signal")?
        .into_inner();
    // Wait for the Welcome, so the stream is live before the load starts.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let ev = tokio::time::timeout_at(deadline, stream.message())
            .await
            .context("no Welcome in time")??
            .context("stream ended before Welcome")?;
        if matches!(ev.body, Some(Ev::Welcome(_))) {
            break;
        }
    }
    Ok((tx, stream))
}

#[allow(clippy::too_many_arguments)]
async fn read_events(
    mut rx: tonic::Streaming<spb::ServerEvent>,
    me: Arc<Side>,
    peer: Arc<Side>,
    delivered: Arc<AtomicU64>,
    unexpected: Arc<AtomicU64>,
    rejected: Arc<AtomicU64>,
    stream_errors: Arc<AtomicU64>,
    last_error: Arc<Mutex<Option<String>>>,
) {
    loop {
        match rx.message().await {
            Ok(Some(ev)) => match ev.body {
                Some(Ev::PeerMediaState(_)) => {
                    let waiter = peer
                        .pending
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .pop_front();
                    match waiter {
                        Some((_, done)) => {
                            delivered.fetch_add(1, Ordering::Relaxed);
                            let _ = done.send(Ok(()));
                        }
                        None => {
                            unexpected.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                Some(Ev::Rejected(r)) => {
                    rejected.fetch_add(1, Ordering::Relaxed);
                    let mut q = me.pending.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(pos) = q.iter().position(|(id, _)| *id == r.client_msg_id)
                        && let Some((_, done)) = q.remove(pos)
                    {
                        let _ = done.send(Err(format!("rejected ({}): {}", r.code, r.message)));
                    }
                }
                _ => {}
            },
            Ok(None) => return,
            Err(s) => {
                stream_errors.fetch_add(1, Ordering::Relaxed);
                *last_error.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(format!("{}: {}", code_name(s.code()), s.message()));
                return;
            }
        }
    }
}

impl Scenario for Signalling {
    fn flow(self: Arc<Self>, n: u64, _channel: Channel) -> BoxFuture<'static, Outcome> {
        Box::pin(async move { self.run(n).await })
    }
}
