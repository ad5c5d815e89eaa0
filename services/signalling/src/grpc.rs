//! gRPC adapter: `econsult.signalling.v1.SignallingService`. Authorisation on every call (the
//! caller comes from the bearer token, checked by the interceptor), and the `Signal` stream.

use crate::service::{Pending, Signalling, StreamCtx, StreamEnd};
use econsult_proto::signalling::v1 as pb;
use econsult_runtime::auth::{Caller, Role};
use econsult_runtime::grpc::timestamp;
use pb::server_event::Body as Ev;
use std::pin::Pin;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

/// How long the server waits for the Hello of a new stream.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// The tonic service.
pub struct SignallingGrpc {
    svc: Signalling,
}

impl SignallingGrpc {
    /// Wraps the logic.
    pub fn new(svc: Signalling) -> Self {
        Self { svc }
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> pb::signalling_service_server::SignallingServiceServer<Self> {
        pb::signalling_service_server::SignallingServiceServer::new(self)
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::ServerEvent, Status>> + Send>>;

fn now_ts(svc: &Signalling) -> Option<prost_types::Timestamp> {
    Some(timestamp(svc.platform().clock.now()))
}

/// Role gate before anything in the request is looked at: the two sides of a video
/// consultation are the patient and clinicians; EHR systems and operations take no part.
fn participant(caller: &Caller) -> Result<(), Status> {
    match caller.role {
        Role::Patient | Role::Clinician => Ok(()),
        _ => Err(Status::permission_denied(
            "video sessions are for the booked patient and the practice's clinicians",
        )),
    }
}

/// Role gate of the practice-side calls (Admit, EndSession).
fn clinician(caller: &Caller) -> Result<(), Status> {
    match caller.role {
        Role::Clinician => Ok(()),
        _ => Err(Status::permission_denied(
            "only a clinician of the practice may do this",
        )),
    }
}

#[tonic::async_trait]
impl pb::signalling_service_server::SignallingService for SignallingGrpc {
    async fn join_session(
        &self,
        req: Request<pb::JoinSessionRequest>,
    ) -> Result<Response<pb::JoinSessionResponse>, Status> {
        let caller = Caller::from_request(&req)?.clone();
        participant(&caller)?;
        let r = req.into_inner();
        Ok(Response::new(
            self.svc.join(&caller, &r.appointment_id).await?,
        ))
    }

    type SignalStream = EventStream;

    async fn signal(
        &self,
        req: Request<Streaming<pb::ClientSignal>>,
    ) -> Result<Response<Self::SignalStream>, Status> {
        let caller = Caller::from_request(&req)?.clone();
        participant(&caller)?;
        let mut inbound = req.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no hello within 10 seconds"))??
            .ok_or_else(|| Status::invalid_argument("the stream ended before the hello"))?;
        let Some(pb::client_signal::Body::Hello(hello)) = first.body else {
            return Err(Status::invalid_argument(
                "the first message of a signal stream must be a hello",
            ));
        };
        let ctx = self.svc.open_stream(&caller, &hello).await?;
        let expires_at = caller.expires_at;
        let (tx, rx) = mpsc::channel::<Result<pb::ServerEvent, Status>>(256);
        let svc = self.svc.clone();
        tokio::spawn(run_stream(
            svc,
            ctx,
            hello.resume_after_seq,
            first.client_msg_id,
            inbound,
            tx,
        ));
        Ok(Response::new(econsult_runtime::auth::end_at_token_expiry(
            tokio_stream::wrappers::ReceiverStream::new(rx),
            expires_at,
        )))
    }

    async fn admit(
        &self,
        req: Request<pb::AdmitRequest>,
    ) -> Result<Response<pb::AdmitResponse>, Status> {
        let caller = Caller::from_request(&req)?.clone();
        clinician(&caller)?;
        let r = req.into_inner();
        Ok(Response::new(
            self.svc
                .admit(&caller, &r.appointment_id, r.clinician_hpr_number.trim())
                .await?,
        ))
    }

    async fn get_ice_servers(
        &self,
        req: Request<pb::GetIceServersRequest>,
    ) -> Result<Response<pb::GetIceServersResponse>, Status> {
        let caller = Caller::from_request(&req)?.clone();
        participant(&caller)?;
        let r = req.into_inner();
        Ok(Response::new(
            self.svc.get_ice_servers(&caller, &r.appointment_id).await?,
        ))
    }

    async fn end_session(
        &self,
        req: Request<pb::EndSessionRequest>,
    ) -> Result<Response<pb::EndSessionResponse>, Status> {
        let caller = Caller::from_request(&req)?.clone();
        clinician(&caller)?;
        let r = req.into_inner();
        let session = self
            .svc
            .end_by_practice(&caller, &r.appointment_id, r.held)
            .await?;
        Ok(Response::new(pb::EndSessionResponse {
            session: Some(session),
        }))
    }

    async fn get_session(
        &self,
        req: Request<pb::GetSessionRequest>,
    ) -> Result<Response<pb::VideoSession>, Status> {
        let caller = Caller::from_request(&req)?.clone();
        participant(&caller)?;
        let r = req.into_inner();
        Ok(Response::new(
            self.svc.get_session(&caller, &r.appointment_id).await?,
        ))
    }
}

/// Why the stream loop stopped.
enum Exit {
    /// The client went away (or the network did): the participant may resume.
    Dropped,
    /// The participant hung up.
    HangUp,
    /// The session ended (SessionEnded was delivered).
    Ended,
    /// A newer stream of the same participant took over.
    Superseded,
    /// The participant was marked disconnected meanwhile (presence lost).
    Lost,
    /// The server is shutting down.
    Shutdown,
    /// Storage failed.
    Failed(Status),
}

async fn run_stream(
    svc: Signalling,
    ctx: StreamCtx,
    resume_after: u64,
    hello_id: u64,
    mut inbound: Streaming<pb::ClientSignal>,
    tx: mpsc::Sender<Result<pb::ServerEvent, Status>>,
) {
    let mut cursor = resume_after;
    let mut wakes = svc.hub().subscribe(&ctx.session_id);
    let mut stop = svc.platform().shutdown.clone();
    let mut poll = tokio::time::interval(svc.cfg().poll_interval);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut presence =
        tokio::time::interval((svc.cfg().presence_ttl / 3).max(Duration::from_millis(100)));
    presence.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let welcome = pb::ServerEvent {
        seq: 0,
        at: now_ts(&svc),
        body: Some(Ev::Welcome(ctx.welcome.clone())),
    };
    let ack = |id: u64| pb::ServerEvent {
        seq: 0,
        at: now_ts(&svc),
        body: Some(Ev::Ack(pb::Ack { client_msg_id: id })),
    };
    let _ = tx.send(Ok(welcome)).await;
    let _ = tx.send(Ok(ack(hello_id))).await;
    let mut budget = StreamBudget::new(svc.cfg().stream_messages);

    let exit = 'outer: loop {
        // Deliver what is queued.
        match svc.deliverable(&ctx, cursor).await {
            Ok(Pending::Events(events)) => {
                let more = events.len() == 200;
                for ev in events {
                    cursor = ev.seq;
                    let ended = matches!(ev.body, Some(Ev::SessionEnded(_)));
                    if tx.send(Ok(ev)).await.is_err() {
                        break 'outer Exit::Dropped;
                    }
                    if ended {
                        break 'outer Exit::Ended;
                    }
                }
                if more {
                    continue;
                }
            }
            Ok(Pending::Superseded) => break Exit::Superseded,
            Ok(Pending::Lost) => break Exit::Lost,
            Err(e) => break Exit::Failed(e),
        }
        // Wait for something to happen.
        let mut deliver = false;
        while !deliver {
            tokio::select! {
                m = inbound.message() => match m {
                    Ok(Some(msg)) => {
                        let id = msg.client_msg_id;
                        let hang_up = matches!(msg.body, Some(pb::client_signal::Body::HangUp(_)));
                        // A hang-up always goes through: it ends the stream.
                        if !hang_up && !budget.take(std::time::Instant::now()) {
                            let s = Status::resource_exhausted(format!(
                                "too many signals on this stream: at most {} per second (burst {}); slow down",
                                svc.cfg().stream_messages.per_second,
                                svc.cfg().stream_messages.burst
                            ));
                            if tx.send(Ok(rejected(&svc, id, &s))).await.is_err() {
                                break 'outer Exit::Dropped;
                            }
                            continue;
                        }
                        match svc.relay(&ctx, &msg).await {
                            Ok(()) => {
                                if tx.send(Ok(ack(id))).await.is_err() {
                                    break 'outer Exit::Dropped;
                                }
                                if hang_up {
                                    break 'outer Exit::HangUp;
                                }
                            }
                            Err(s) if s.code() == tonic::Code::Aborted => {
                                deliver = true;
                                let _ = tx.send(Ok(rejected(&svc, id, &s))).await;
                            }
                            Err(s) if matches!(s.code(), tonic::Code::Internal | tonic::Code::Unavailable) => {
                                break 'outer Exit::Failed(s);
                            }
                            Err(s) => {
                                if tx.send(Ok(rejected(&svc, id, &s))).await.is_err() {
                                    break 'outer Exit::Dropped;
                                }
                            }
                        }
                    }
                    Ok(None) | Err(_) => break 'outer Exit::Dropped,
                },
                w = wakes.recv() => match w {
                    Ok(w) => {
                        deliver = (w.session_id.is_empty() || *w.session_id == *ctx.session_id)
                            && (w.side == 0 || w.side == ctx.side);
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => deliver = true,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break 'outer Exit::Shutdown,
                },
                _ = poll.tick() => deliver = true,
                _ = presence.tick() => {
                    if let Err(e) = svc.hub().refresh_presence(&ctx.session_id, ctx.side).await {
                        tracing::warn!(error = %e, "refresh presence");
                    }
                }
                _ = crate::hub::stopped(&mut stop) => break 'outer Exit::Shutdown,
                _ = tx.closed() => break 'outer Exit::Dropped,
            }
        }
    };
    match exit {
        Exit::Dropped | Exit::Shutdown | Exit::Failed(_) => {
            if let Err(e) = svc.close_stream(&ctx, StreamEnd::Dropped).await {
                tracing::warn!(error = %e, "record dropped stream");
            }
            let status = match exit {
                Exit::Shutdown => Some(Status::unavailable(
                    "server shutting down: open a new stream and resume from the last seq",
                )),
                Exit::Failed(s) => Some(s),
                _ => None,
            };
            if let Some(s) = status {
                let _ = tx.send(Err(s)).await;
            }
        }
        Exit::HangUp => {
            if let Err(e) = svc.close_stream(&ctx, StreamEnd::HangUp).await {
                tracing::warn!(error = %e, "record hang-up");
            }
        }
        Exit::Ended => {}
        Exit::Superseded => {
            let _ = tx
                .send(Err(Status::aborted(
                    "a newer stream of this participant took over",
                )))
                .await;
        }
        Exit::Lost => {
            let _ = tx
                .send(Err(Status::unavailable(
                    "connection considered lost: open a new stream and resume from the last seq",
                )))
                .await;
        }
    }
}

/// The token bucket of one Signal stream's client messages (each is a write transaction).
struct StreamBudget {
    limit: econsult_runtime::ratelimit::Limit,
    tokens: f64,
    at: std::time::Instant,
}

impl StreamBudget {
    fn new(limit: econsult_runtime::ratelimit::Limit) -> Self {
        Self {
            limit,
            tokens: limit.burst,
            at: std::time::Instant::now(),
        }
    }

    /// Takes a token at `now`; `false` when none is left (a rate of 0 is unlimited).
    fn take(&mut self, now: std::time::Instant) -> bool {
        if self.limit.per_second <= 0.0 {
            return true;
        }
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * self.limit.per_second;
        self.tokens = (self.tokens + refill).min(self.limit.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

fn rejected(svc: &Signalling, id: u64, s: &Status) -> pb::ServerEvent {
    pb::ServerEvent {
        seq: 0,
        at: now_ts(svc),
        body: Some(Ev::Rejected(pb::Rejected {
            client_msg_id: id,
            code: s.code() as i32,
            message: s.message().to_owned(),
        })),
    }
}
