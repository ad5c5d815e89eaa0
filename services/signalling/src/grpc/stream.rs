//! The bidirectional `Signal` stream and its browser form (`SignalEvents` for the events,
//! `SendSignal` for each client message; one stream logic behind both): the Hello, client
//! messages to domain [`ClientSignal`]s, and what the logic sends ([`Outgoing`]) to
//! `ServerEvent`s, Ack/Rejected and the stream's end status.

use super::{pb, side_pb};
use crate::domain::{
    Candidate, ClientSignal, Description, Hello, MediaState, SdpKind, Signal, StreamClose, Welcome,
};
use crate::error::SignallingError;
use crate::service::{Outgoing, Signalling};
use econsult_runtime::auth::Caller;
use econsult_runtime::grpc::{internal, no_nul, no_nuls, timestamp};
use futures::StreamExt as _;
use pb::client_signal::Body as In;
use pb::server_event::Body as Ev;
use prost::Message as _;
use std::pin::Pin;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::{Response, Status, Streaming};

/// How long the server waits for the Hello of a new stream.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// The server side of a Signal stream.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<pb::ServerEvent, Status>> + Send>>;

/// Opens the Signal stream of `caller`: reads the Hello, takes over the participant's stream
/// slot, and runs the stream in a task of its own.
pub(super) async fn open(
    svc: &Signalling,
    caller: Caller,
    mut inbound: Streaming<pb::ClientSignal>,
) -> Result<Response<EventStream>, Status> {
    let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
        .await
        .map_err(|_| Status::deadline_exceeded("no hello within 10 seconds"))??
        .ok_or_else(|| Status::invalid_argument("the stream ended before the hello"))?;
    let Some(In::Hello(hello)) = first.body else {
        return Err(Status::invalid_argument(
            "the first message of a signal stream must be a hello",
        ));
    };
    // The client's messages until it closes the stream or the connection fails.
    let messages = tokio_stream::StreamExt::map_while(inbound, |m| m.ok().map(client_signal));
    serve(svc, caller, hello, first.client_msg_id, messages).await
}

/// Opens a `SignalEvents` stream of `caller`: the server half of a Signal stream, whose client
/// messages come by [`send`].
pub(super) async fn open_events(
    svc: &Signalling,
    caller: Caller,
    req: pb::SignalEventsRequest,
) -> Result<Response<EventStream>, Status> {
    let hello = req
        .hello
        .ok_or_else(|| Status::invalid_argument("hello is required"))?;
    serve(
        svc,
        caller,
        hello,
        req.client_msg_id,
        futures::stream::pending(),
    )
    .await
}

/// Takes over the participant's stream slot with `hello` and runs the stream in a task of its
/// own, its client messages coming from `messages`.
async fn serve(
    svc: &Signalling,
    caller: Caller,
    hello: pb::Hello,
    hello_id: u64,
    messages: impl futures::Stream<Item = ClientSignal> + Unpin + Send + 'static,
) -> Result<Response<EventStream>, Status> {
    no_nul(&hello.appointment_id, "hello.appointment_id")?;
    let hello = Hello::from(hello);
    let (ctx, welcome) = svc.open_stream(&caller, &hello).await?;
    let (tx, rx) = mpsc::channel::<Outgoing>(256);
    tokio::spawn(svc.clone().run_stream(
        ctx,
        welcome,
        hello.resume_after_seq,
        hello_id,
        messages,
        tx,
    ));
    let clock = svc.platform().clock.clone();
    let events = tokio_stream::wrappers::ReceiverStream::new(rx)
        .map(move |o| server_event(o, Some(timestamp(clock.now()))));
    Ok(Response::new(econsult_runtime::auth::end_at_token_expiry(
        events,
        caller.expires_at,
    )))
}

/// One client message for a `SignalEvents` stream: answered as Signal would answer it.
pub(super) async fn send(
    svc: &Signalling,
    caller: Caller,
    req: pb::SendSignalRequest,
) -> Result<pb::SendSignalResponse, Status> {
    no_nuls(&[
        (&req.appointment_id, "appointment_id"),
        (&req.stream_id, "stream_id"),
    ])?;
    let signal = req
        .signal
        .ok_or_else(|| Status::invalid_argument("signal is required"))?;
    let msg = client_signal(signal);
    let client_msg_id = msg.client_msg_id;
    let answer = svc
        .send_signal(&caller, &req.appointment_id, &req.stream_id, msg)
        .await?;
    Ok(pb::SendSignalResponse {
        result: Some(match answer {
            Ok(()) => pb::send_signal_response::Result::Ack(pb::Ack { client_msg_id }),
            Err(error) => {
                pb::send_signal_response::Result::Rejected(rejected(client_msg_id, error))
            }
        }),
    })
}

fn rejected(client_msg_id: u64, error: SignallingError) -> pb::Rejected {
    let s = Status::from(error);
    pb::Rejected {
        client_msg_id,
        code: s.code() as i32,
        message: s.message().to_owned(),
    }
}

impl From<pb::Hello> for Hello {
    fn from(h: pb::Hello) -> Self {
        Hello {
            appointment_id: h.appointment_id,
            resume_after_seq: h.resume_after_seq,
        }
    }
}

impl TryFrom<pb::IceCandidate> for Candidate {
    type Error = SignallingError;

    /// Refuses a NUL in the strings relayed to the peer (see [`no_nul`]).
    fn try_from(c: pb::IceCandidate) -> Result<Self, SignallingError> {
        for (value, field) in [
            (&c.candidate, "candidate.candidate"),
            (&c.sdp_mid, "candidate.sdp_mid"),
            (&c.username_fragment, "candidate.username_fragment"),
        ] {
            no_nul(value, field).map_err(|s| SignallingError::Invalid(s.message().into()))?;
        }
        Ok(Candidate {
            candidate: c.candidate,
            sdp_mid: c.sdp_mid,
            sdp_mline_index: c.sdp_mline_index,
            username_fragment: c.username_fragment,
        })
    }
}

impl From<pb::MediaState> for MediaState {
    fn from(m: pb::MediaState) -> Self {
        MediaState {
            audio_muted: m.audio_muted,
            video_muted: m.video_muted,
        }
    }
}

impl TryFrom<pb::SessionDescription> for Description {
    type Error = SignallingError;

    fn try_from(d: pb::SessionDescription) -> Result<Self, SignallingError> {
        let kind = match pb::SdpType::try_from(d.r#type) {
            Ok(pb::SdpType::Offer) => SdpKind::Offer,
            Ok(pb::SdpType::Answer) => SdpKind::Answer,
            _ => {
                return Err(SignallingError::Invalid(
                    "description.type must be OFFER or ANSWER".into(),
                ));
            }
        };
        if d.ice_restart && kind != SdpKind::Offer {
            return Err(SignallingError::Invalid(
                "description.ice_restart is only for offers".into(),
            ));
        }
        no_nul(&d.sdp, "description.sdp")
            .map_err(|s| SignallingError::Invalid(s.message().into()))?;
        Ok(Description {
            kind,
            sdp: d.sdp,
            ice_restart: d.ice_restart,
        })
    }
}

impl TryFrom<Option<In>> for Signal {
    type Error = SignallingError;

    fn try_from(body: Option<In>) -> Result<Self, SignallingError> {
        Ok(
            match body.ok_or_else(|| SignallingError::Invalid("body is required".into()))? {
                In::Hello(h) => Signal::Hello(h.into()),
                In::Description(d) => Signal::Description(d.try_into()?),
                In::Candidate(c) => Signal::Candidate(c.try_into()?),
                In::EndOfCandidates(_) => Signal::EndOfCandidates,
                In::IceRestart(_) => Signal::IceRestart,
                In::MediaState(m) => Signal::MediaState(m.into()),
                In::Connection(c) => Signal::Connection {
                    connected: c.connected,
                },
                In::HangUp(_) => Signal::HangUp,
            },
        )
    }
}

/// A client message as the logic sees it: its size as encoded, and its body or why it is not
/// one (rejected after the size check).
fn client_signal(m: pb::ClientSignal) -> ClientSignal {
    ClientSignal {
        client_msg_id: m.client_msg_id,
        size: m.encoded_len(),
        body: Signal::try_from(m.body),
    }
}

impl From<Welcome> for pb::Welcome {
    fn from(w: Welcome) -> Self {
        pb::Welcome {
            session_id: w.session_id,
            side: side_pb(w.side) as i32,
            waiting: w.waiting,
            peer_online: w.peer_online,
            resumed: w.resumed,
            peer_waiting: w.peer_waiting,
            stream_id: w.stream_id,
        }
    }
}

/// What the client receives for `o`, sent `at`.
fn server_event(
    o: Outgoing,
    at: Option<prost_types::Timestamp>,
) -> Result<pb::ServerEvent, Status> {
    let body = match o {
        Outgoing::Event(ev) => {
            return ev.into_wire::<pb::ServerEvent>().map_err(|ev| {
                internal(
                    "signal stream",
                    format!("event {} is no ServerEvent", ev.seq()),
                )
            });
        }
        Outgoing::Welcome(w) => {
            // Polled inside the call's span, which lasts as long as the stream: its events
            // tell a resume and a takeover apart in the trace.
            tracing::info!(resumed = w.resumed, "signal stream welcomed");
            Ev::Welcome(w.into())
        }
        Outgoing::Ack(id) => Ev::Ack(pb::Ack { client_msg_id: id }),
        Outgoing::Rejected {
            client_msg_id,
            error,
        } => Ev::Rejected(rejected(client_msg_id, error)),
        Outgoing::Close(close) => {
            if matches!(close, StreamClose::Superseded) {
                tracing::info!("signal stream taken over by a newer stream");
            }
            return Err(close_status(close));
        }
    };
    Ok(pb::ServerEvent {
        seq: 0,
        at,
        body: Some(body),
    })
}

/// The status a stream ends with.
fn close_status(close: StreamClose) -> Status {
    match close {
        StreamClose::Shutdown => Status::unavailable(
            "server shutting down: open a new stream and resume from the last seq",
        ),
        StreamClose::Failed(e) => e.into(),
        StreamClose::Superseded => Status::aborted("a newer stream of this participant took over"),
        StreamClose::Lost => Status::unavailable(
            "connection considered lost: open a new stream and resume from the last seq",
        ),
    }
}
