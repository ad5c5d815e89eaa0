//! A Signal stream: its Hello takes over the participant's stream slot, every client message
//! is checked and relayed to the peer's queue under the session lock, and queued events are
//! delivered in sequence order from where the stream resumes. A stream's messages are metered
//! by a token bucket; its end is recorded and told to the peer.

use super::{Delivered, Signalling};
use crate::domain::{
    ClientSignal, Event, Hello, LeaveReason, ParticipantState, SdpKind, Side, Signal, StreamClose,
    Welcome,
};
use crate::error::SignallingError;
use crate::hub;
use crate::{sdp, store};
use econsult_runtime::auth::Caller;
use econsult_runtime::db::Tx;
use futures::{Stream, StreamExt as _};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// What a stream needs after its Hello.
#[derive(Debug, Clone)]
pub struct StreamCtx {
    /// The session.
    pub session_id: String,
    /// The session's appointment (its lock key).
    pub appointment_id: String,
    /// The participant's side.
    pub side: Side,
    /// The stream's epoch: a newer stream of the participant has a higher one.
    pub epoch: i64,
}

/// What the server sends on a Signal stream, in order.
#[derive(Debug)]
pub enum Outgoing {
    /// The stream is established (first).
    Welcome(Welcome),
    /// A client message was relayed or recorded.
    Ack(u64),
    /// A client message was refused; nothing was relayed.
    Rejected {
        /// The client's id of the message.
        client_msg_id: u64,
        /// Why.
        error: SignallingError,
    },
    /// A queued event.
    Event(Delivered),
    /// The stream ends with an error status (last).
    Close(StreamClose),
}

/// How a stream ended, for the record and the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamEnd {
    /// Dropped (client gone, network, server shutdown): may resume.
    Dropped,
    /// The participant hung up.
    HangUp,
}

/// Outcome of [`Signalling::deliverable`].
enum Pending {
    /// Events to send (may be empty).
    Events(Vec<Delivered>),
    /// A newer stream took over.
    Superseded,
    /// The participant hung up through this stream (its messages came by SendSignal).
    HungUp,
    /// The participant is no longer online (marked disconnected or left meanwhile).
    Lost,
}

/// Why the stream loop stopped.
enum Exit {
    /// The client went away (or the network did): the participant may resume.
    Dropped,
    /// The participant hung up.
    HangUp,
    /// The participant hung up by SendSignal (recorded there).
    HungUp,
    /// The session ended (SessionEnded was delivered).
    Ended,
    /// A newer stream of the same participant took over.
    Superseded,
    /// The participant was marked disconnected meanwhile (presence lost).
    Lost,
    /// The server is shutting down.
    Shutdown,
    /// Storage failed.
    Failed(SignallingError),
}

impl Signalling {
    /// The Hello of a Signal stream: takes over the participant's stream slot. Returns the
    /// stream and its first event.
    pub(crate) async fn open_stream(
        &self,
        caller: &Caller,
        hello: &Hello,
    ) -> Result<(StreamCtx, Welcome), SignallingError> {
        let access = self.authorize(caller, &hello.appointment_id).await?;
        let appointment_id = hello.appointment_id.as_str();
        let now = self.now_ms();
        let not_joined =
            || SignallingError::FailedPrecondition("call JoinSession before signalling".into());
        let mut tx = self.begin_locked(appointment_id).await?;
        let session = store::session_of(&mut tx, appointment_id)
            .await?
            .ok_or_else(not_joined)?;
        if session.ended_at.is_some() {
            return Err(SignallingError::FailedPrecondition(
                "the video session has ended".into(),
            ));
        }
        let me = store::participant_of(&mut tx, &session.session_id, access.side)
            .await?
            .ok_or_else(not_joined)?;
        if me.state == ParticipantState::Left {
            return Err(SignallingError::FailedPrecondition(
                "you left the session (or did not come back within the reconnect grace period): call JoinSession again".into(),
            ));
        }
        if me.subject != caller.subject {
            return Err(SignallingError::FailedPrecondition(
                "another clinician of the practice has joined in your place".into(),
            ));
        }
        // Presence first, so the sweeper never sees an online row without it.
        self.inner
            .hub
            .refresh_presence(&session.session_id, access.side)
            .await?;
        let epoch = me.epoch + 1;
        store::open_stream(
            &mut tx,
            &session.session_id,
            access.side,
            epoch,
            &self.inner.instance_id,
            me.state == ParticipantState::Disconnected,
            now,
        )
        .await?;
        let peer_side = access.side.other();
        let waiting = session.admitted_at.is_none();
        if me.state != ParticipantState::Online {
            self.enqueue(
                &mut tx,
                &session.session_id,
                peer_side,
                &Event::PeerJoined {
                    side: access.side,
                    rejoined: me.state == ParticipantState::Disconnected,
                    waiting: access.side == Side::Patient && waiting,
                    // The practice learns who is there for the patient (as they joined).
                    patient: (access.side == Side::Patient)
                        .then(|| super::session::patient_side(&me)),
                },
                now,
            )
            .await?;
        }
        let peer = store::participant_of(&mut tx, &session.session_id, peer_side).await?;
        tx.commit().await?;
        // The peer learns we are here; an older stream of ours learns it was superseded.
        self.inner.hub.wake(&session.session_id, None).await;
        let peer_online = peer
            .as_ref()
            .is_some_and(|p| p.state == ParticipantState::Online);
        let welcome = Welcome {
            session_id: session.session_id.clone(),
            side: access.side,
            waiting: access.side == Side::Patient && waiting,
            peer_online,
            resumed: matches!(
                me.state,
                ParticipantState::Disconnected | ParticipantState::Online
            ),
            peer_waiting: access.side == Side::Practice
                && waiting
                && peer.is_some_and(|p| p.state != ParticipantState::Left),
            stream_id: epoch.to_string(),
        };
        let ctx = StreamCtx {
            session_id: session.session_id,
            appointment_id: appointment_id.to_owned(),
            side: access.side,
            epoch,
        };
        Ok((ctx, welcome))
    }

    /// Runs an opened stream until it ends: sends `welcome` and the Ack of the Hello
    /// (`hello_id`), then the queued events after `resume_after`, relays what comes `inbound`
    /// and answers each message, and records how the stream ended.
    pub(crate) async fn run_stream(
        self,
        ctx: StreamCtx,
        welcome: Welcome,
        resume_after: u64,
        hello_id: u64,
        mut inbound: impl Stream<Item = ClientSignal> + Unpin,
        tx: mpsc::Sender<Outgoing>,
    ) {
        let svc = self;
        let mut cursor = resume_after;
        let mut wakes = svc.inner.hub.subscribe(&ctx.session_id);
        let mut stop = svc.inner.platform.shutdown.clone();
        let mut poll = tokio::time::interval(svc.cfg().poll_interval);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut presence =
            tokio::time::interval((svc.cfg().presence_ttl / 3).max(Duration::from_millis(100)));
        presence.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let _ = tx.send(Outgoing::Welcome(welcome)).await;
        let _ = tx.send(Outgoing::Ack(hello_id)).await;
        let mut budget = StreamBudget::new(svc.cfg().stream_messages);

        let exit = 'outer: loop {
            // Deliver what is queued.
            match svc.deliverable(&ctx, cursor).await {
                Ok(Pending::Events(events)) => {
                    let more = events.len() == store::QUEUE_PAGE;
                    for ev in events {
                        cursor = ev.seq();
                        let ended = ev.ends_session();
                        if tx.send(Outgoing::Event(ev)).await.is_err() {
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
                Ok(Pending::HungUp) => break Exit::HungUp,
                Ok(Pending::Lost) => break Exit::Lost,
                Err(e) => break Exit::Failed(e),
            }
            // Wait for something to happen.
            let mut deliver = false;
            while !deliver {
                tokio::select! {
                    m = inbound.next() => match m {
                        Some(msg) => {
                            let id = msg.client_msg_id;
                            let hang_up = msg.is_hang_up();
                            // A hang-up always goes through: it ends the stream.
                            if !hang_up && !budget.take(Instant::now()) {
                                let error = svc.flooding();
                                if tx.send(Outgoing::Rejected { client_msg_id: id, error }).await.is_err() {
                                    break 'outer Exit::Dropped;
                                }
                                continue;
                            }
                            match svc.relay(&ctx, msg).await {
                                Ok(()) => {
                                    if tx.send(Outgoing::Ack(id)).await.is_err() {
                                        break 'outer Exit::Dropped;
                                    }
                                    if hang_up {
                                        break 'outer Exit::HangUp;
                                    }
                                }
                                Err(error @ SignallingError::Aborted(_)) => {
                                    deliver = true;
                                    let _ = tx.send(Outgoing::Rejected { client_msg_id: id, error }).await;
                                }
                                Err(e) if e.is_server_fault() => break 'outer Exit::Failed(e),
                                Err(error) => {
                                    if tx.send(Outgoing::Rejected { client_msg_id: id, error }).await.is_err() {
                                        break 'outer Exit::Dropped;
                                    }
                                }
                            }
                        }
                        None => break 'outer Exit::Dropped,
                    },
                    w = wakes.recv() => match w {
                        Ok(w) => deliver = w.concerns(&ctx.session_id, ctx.side),
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => deliver = true,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => break 'outer Exit::Shutdown,
                    },
                    _ = poll.tick() => deliver = true,
                    _ = presence.tick() => {
                        if let Err(e) = svc.inner.hub.refresh_presence(&ctx.session_id, ctx.side).await {
                            tracing::warn!(error = %e, "refresh presence");
                        }
                    }
                    _ = hub::stopped(&mut stop) => break 'outer Exit::Shutdown,
                    _ = tx.closed() => break 'outer Exit::Dropped,
                }
            }
        };
        let close = match exit {
            Exit::Dropped | Exit::Shutdown | Exit::Failed(_) => {
                if let Err(e) = svc.close_stream(&ctx, StreamEnd::Dropped).await {
                    tracing::warn!(error = %e, "record dropped stream");
                }
                match exit {
                    Exit::Shutdown => Some(StreamClose::Shutdown),
                    Exit::Failed(e) => Some(StreamClose::Failed(e)),
                    _ => None,
                }
            }
            Exit::HangUp => {
                if let Err(e) = svc.close_stream(&ctx, StreamEnd::HangUp).await {
                    tracing::warn!(error = %e, "record hang-up");
                }
                None
            }
            Exit::Ended | Exit::HungUp => None,
            Exit::Superseded => Some(StreamClose::Superseded),
            Exit::Lost => Some(StreamClose::Lost),
        };
        if let Some(close) = close {
            let _ = tx.send(Outgoing::Close(close)).await;
        }
    }

    /// One client message of the stream `stream_id` whose events go out by SignalEvents (the
    /// browser transport): the same budget, checks and relay as a message on a Signal stream.
    /// `Ok(Err(_))` is the rejection the client is told; `Err` a server fault.
    pub(crate) async fn send_signal(
        &self,
        caller: &Caller,
        appointment_id: &str,
        stream_id: &str,
        msg: ClientSignal,
    ) -> Result<Result<(), SignallingError>, SignallingError> {
        let access = self.authorize(caller, appointment_id).await?;
        let not_live = || {
            SignallingError::Aborted(
                "this stream is no longer the participant's live stream: open a new one".into(),
            )
        };
        let Ok(epoch) = stream_id.parse::<i64>() else {
            return Ok(Err(SignallingError::Invalid(
                "stream_id is not a stream's id (see Welcome.stream_id)".into(),
            )));
        };
        let session = {
            let mut conn = self.inner.platform.db.read().acquire().await?;
            store::session_of(&mut conn, appointment_id).await?
        };
        let Some(session) = session else {
            return Ok(Err(not_live()));
        };
        let ctx = StreamCtx {
            session_id: session.session_id,
            appointment_id: appointment_id.to_owned(),
            side: access.side,
            epoch,
        };
        let hang_up = msg.is_hang_up();
        if !hang_up && !self.take_budget(&ctx) {
            return Ok(Err(self.flooding()));
        }
        match self.relay(&ctx, msg).await {
            Ok(()) => {
                if hang_up {
                    self.close_stream(&ctx, StreamEnd::HangUp).await?;
                    let key = (ctx.session_id.clone(), ctx.side, ctx.epoch);
                    self.budgets().remove(&key);
                }
                Ok(Ok(()))
            }
            Err(e) if e.is_server_fault() => Err(e),
            Err(e) => Ok(Err(e)),
        }
    }

    fn budgets(&self) -> std::sync::MutexGuard<'_, Budgets> {
        self.inner
            .budgets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes a token of the stream's budget (kept in this process: a browser's calls may reach
    /// several replicas, each then meters its share).
    fn take_budget(&self, ctx: &StreamCtx) -> bool {
        let now = Instant::now();
        let mut budgets = self.budgets();
        if budgets.len() >= 4096 {
            budgets.retain(|_, b| now.saturating_duration_since(b.at) < BUDGET_IDLE);
        }
        budgets
            .entry((ctx.session_id.clone(), ctx.side, ctx.epoch))
            .or_insert_with(|| StreamBudget::new(self.cfg().stream_messages))
            .take(now)
    }

    /// The rejection of a message past the stream's budget.
    fn flooding(&self) -> SignallingError {
        SignallingError::ResourceExhausted(format!(
            "too many signals on this stream: at most {} per second (burst {}); slow down",
            self.cfg().stream_messages.per_second,
            self.cfg().stream_messages.burst
        ))
    }

    /// Events for the stream after `cursor`, or why the stream must end.
    async fn deliverable(&self, ctx: &StreamCtx, cursor: u64) -> Result<Pending, SignallingError> {
        let mut conn = self.inner.platform.db.read().acquire().await?;
        let cursor = i64::try_from(cursor).unwrap_or(i64::MAX);
        let Some((epoch, state, queued)) =
            store::pending(&mut conn, &ctx.session_id, ctx.side, cursor).await?
        else {
            return Ok(Pending::Lost);
        };
        if epoch != ctx.epoch {
            return Ok(Pending::Superseded);
        }
        let events = queued
            .into_iter()
            .map(|q| {
                self.inner
                    .codec
                    .decode(&q.body, q.seq as u64)
                    .map_err(|e| SignallingError::internal("decode signal", e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        // A stream no longer online still gets what was queued before (e.g. SessionEnded).
        if state == ParticipantState::Left && events.is_empty() {
            return Ok(Pending::HungUp);
        }
        if state != ParticipantState::Online && events.is_empty() {
            return Ok(Pending::Lost);
        }
        Ok(Pending::Events(events))
    }

    /// The stream ended: records it and tells the peer (only if this stream was the live one).
    async fn close_stream(&self, ctx: &StreamCtx, how: StreamEnd) -> Result<(), SignallingError> {
        let now = self.now_ms();
        let mut tx = self.begin_locked(&ctx.appointment_id).await?;
        let (new_state, reason) = match how {
            StreamEnd::Dropped => (ParticipantState::Disconnected, LeaveReason::Disconnected),
            StreamEnd::HangUp => (ParticipantState::Left, LeaveReason::HangUp),
        };
        let closed = store::close_stream(
            &mut tx,
            &ctx.session_id,
            ctx.side,
            ctx.epoch,
            new_state,
            reason,
            now,
        )
        .await?;
        if !closed {
            return Ok(());
        }
        // A dropped stream keeps its side's media state: media does not pass through
        // signalling, so a blip of the signalling connection leaves the call up, and a resumed
        // stream goes on counting. A side that does not come back within the grace period is
        // taken to have lost its media when its stream dropped (the sweeper).
        if how == StreamEnd::HangUp {
            Self::set_media_connected(&mut tx, &ctx.session_id, ctx.side, false, now).await?;
        }
        if store::ended_at(&mut tx, &ctx.session_id).await?.is_none() {
            let deadline = now + self.inner.cfg.reconnect_grace.num_milliseconds();
            self.enqueue(
                &mut tx,
                &ctx.session_id,
                ctx.side.other(),
                &Event::PeerLeft {
                    side: ctx.side,
                    reason,
                    rejoin_deadline_ms: (how == StreamEnd::Dropped).then_some(deadline),
                },
                now,
            )
            .await?;
        }
        tx.commit().await?;
        self.inner
            .hub
            .wake(&ctx.session_id, Some(ctx.side.other()))
            .await;
        Ok(())
    }

    /// The live stream of an online participant whose replica stopped refreshing its presence
    /// counts as dropped.
    pub(super) async fn lose_stream(
        &self,
        session_id: String,
        appointment_id: String,
        side: Side,
        epoch: i64,
    ) -> Result<(), SignallingError> {
        let ctx = StreamCtx {
            session_id,
            appointment_id,
            side,
            epoch,
        };
        tracing::info!(session_id = %ctx.session_id, side = side.code(), "participant lost (no presence)");
        self.close_stream(&ctx, StreamEnd::Dropped).await
    }

    /// Records a side's media connection state and the session's connected time.
    pub(super) async fn set_media_connected(
        tx: &mut Tx,
        session_id: &str,
        side: Side,
        connected: bool,
        now: i64,
    ) -> Result<(), SignallingError> {
        store::set_media_connected(tx, session_id, side, connected).await?;
        if store::media_connected_count(tx, session_id).await? >= 2 {
            store::open_connected_interval(tx, session_id, now).await?;
        } else {
            store::close_connected_interval(tx, session_id, now).await?;
        }
        Ok(())
    }

    /// Checks one client message and relays it to the peer's queue. `Err` is reported to the
    /// client as a rejection; nothing is relayed then.
    async fn relay(&self, ctx: &StreamCtx, msg: ClientSignal) -> Result<(), SignallingError> {
        let limit = self.inner.cfg.max_message_bytes;
        let size = msg.size;
        if size > limit {
            return Err(SignallingError::Invalid(format!(
                "message is {size} bytes; at most {limit} are accepted"
            )));
        }
        let body = msg.body?;
        // Input checks that need no state.
        match &body {
            Signal::Hello(_) => {
                return Err(SignallingError::Invalid(
                    "hello is only accepted as the first message".into(),
                ));
            }
            Signal::Description(d) => sdp::validate_description(&d.sdp)?,
            Signal::Candidate(c) => {
                sdp::validate_candidate(&c.candidate)?;
                if c.sdp_mid.len() > 64 || c.username_fragment.len() > 256 {
                    return Err(SignallingError::Invalid(
                        "candidate.sdp_mid or candidate.username_fragment is too long".into(),
                    ));
                }
            }
            _ => {}
        }
        let now = self.now_ms();
        let mut tx = self.begin_locked(&ctx.appointment_id).await?;
        let (session, me) = store::session_and_participant(&mut tx, &ctx.appointment_id, ctx.side)
            .await?
            .ok_or_else(|| SignallingError::internal("relay", "session or participant vanished"))?;
        let refuse = |m: &str| Err(SignallingError::FailedPrecondition(m.to_owned()));
        if session.ended_at.is_some() {
            return refuse("the video session has ended");
        }
        if me.epoch != ctx.epoch || me.state != ParticipantState::Online {
            return Err(SignallingError::Aborted(
                "this stream is no longer the participant's live stream".into(),
            ));
        }
        let peer_side = ctx.side.other();
        // Only a hang-up goes before admission: no media flows in the waiting room, so a
        // connection report there is refused rather than written.
        let needs_admission = !matches!(body, Signal::HangUp);
        if needs_admission && session.admitted_at.is_none() {
            return refuse(if ctx.side == Side::Patient {
                "you are in the waiting room: the practice has not admitted you yet"
            } else {
                "admit the patient before signalling"
            });
        }
        let max_candidates = self.inner.cfg.max_candidates;
        let relayed: Option<Event> = match body {
            Signal::Hello(_) => None,
            Signal::Description(d) if d.kind == SdpKind::Offer => {
                if session.pending_offer_side == Some(peer_side) {
                    return refuse("the peer's offer is waiting for your answer (offer collision)");
                }
                if d.ice_restart && me.ice_restarts >= self.inner.cfg.max_ice_restarts {
                    return Err(SignallingError::FailedPrecondition(format!(
                        "too many ICE restarts (at most {} per session)",
                        self.inner.cfg.max_ice_restarts
                    )));
                }
                store::set_pending_offer(&mut tx, &ctx.session_id, ctx.side).await?;
                if d.ice_restart || !me.described {
                    // A new ICE generation: both sides trickle afresh.
                    store::new_ice_generation(&mut tx, &ctx.session_id, ctx.side, d.ice_restart)
                        .await?;
                }
                store::mark_described(&mut tx, &ctx.session_id, ctx.side).await?;
                Some(Event::Description(d))
            }
            Signal::Description(d) => {
                if session.pending_offer_side != Some(peer_side) {
                    return refuse(
                        "an answer needs a pending offer from the peer (answer before offer)",
                    );
                }
                store::clear_pending_offer(&mut tx, &ctx.session_id).await?;
                store::mark_described(&mut tx, &ctx.session_id, ctx.side).await?;
                Some(Event::Description(d))
            }
            Signal::Candidate(c) => {
                if !me.described {
                    return refuse("ICE candidates come after this side's offer or answer");
                }
                if me.end_of_candidates {
                    return refuse(
                        "end-of-candidates was already signalled for this ICE generation",
                    );
                }
                if me.candidates >= max_candidates {
                    return Err(SignallingError::FailedPrecondition(format!(
                        "too many ICE candidates: at most {max_candidates} per side and ICE generation"
                    )));
                }
                store::count_candidate(&mut tx, &ctx.session_id, ctx.side).await?;
                Some(Event::Candidate(c))
            }
            Signal::EndOfCandidates => {
                if !me.described {
                    return refuse("end-of-candidates comes after this side's offer or answer");
                }
                store::set_end_of_candidates(&mut tx, &ctx.session_id, ctx.side).await?;
                Some(Event::EndOfCandidates)
            }
            Signal::IceRestart => Some(Event::IceRestartRequested),
            Signal::MediaState(m) => Some(Event::PeerMediaState(m)),
            Signal::Connection { connected } => {
                Self::set_media_connected(&mut tx, &ctx.session_id, ctx.side, connected, now)
                    .await?;
                None
            }
            Signal::HangUp => None,
        };
        if let Some(ev) = relayed {
            self.enqueue(&mut tx, &ctx.session_id, peer_side, &ev, now)
                .await?;
        }
        tx.commit().await?;
        self.inner.hub.wake(&ctx.session_id, Some(peer_side)).await;
        Ok(())
    }
}

/// The budgets of the streams fed by SendSignal.
pub(super) type Budgets = std::collections::HashMap<(String, Side, i64), StreamBudget>;

/// A budget unused this long may be forgotten (its stream is gone or idle; a new one is full).
const BUDGET_IDLE: Duration = Duration::from_secs(60);

/// The token bucket of one Signal stream's client messages (each is a write transaction).
pub(super) struct StreamBudget {
    limit: econsult_runtime::ratelimit::Limit,
    tokens: f64,
    at: Instant,
}

impl StreamBudget {
    fn new(limit: econsult_runtime::ratelimit::Limit) -> Self {
        Self {
            limit,
            tokens: limit.burst,
            at: Instant::now(),
        }
    }

    /// Takes a token at `now`; `false` when none is left (a rate of 0 is unlimited).
    fn take(&mut self, now: Instant) -> bool {
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
