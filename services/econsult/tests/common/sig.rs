//! A client of the signalling service's signal streams for tests, over either transport: the
//! bidirectional `Signal` stream, or the browser's `SignalEvents` + `SendSignal`. Sends signals
//! with ids, waits for their Ack / Rejected, and waits for server events (keeping the ones it
//! was not waiting for), checking that event seqs only go up.
#![allow(dead_code)]

use super::authed;
use econsult_proto::signalling::v1 as pb;
use pb::client_signal::Body as Out;
use pb::server_event::Body as Ev;
use pb::signalling_service_client::SignallingServiceClient;
use std::collections::VecDeque;
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::Code;
use tonic::transport::Channel;

/// Upper bound of every wait.
const WAIT: Duration = Duration::from_secs(20);

/// How a participant's client messages reach the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// The bidirectional `Signal` stream (apps).
    Bidi,
    /// `SignalEvents` for the events, one `SendSignal` per message (browsers, gRPC-Web).
    Browser,
}

enum Sender {
    Bidi(mpsc::Sender<pb::ClientSignal>),
    Browser(Box<BrowserSender>),
}

struct BrowserSender {
    client: SignallingServiceClient<Channel>,
    token: String,
    appointment_id: String,
    stream_id: String,
}

type Events =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::ServerEvent, tonic::Status>> + Send>>;

/// One participant's signal stream.
pub struct Sig {
    sender: Sender,
    pub rx: Events,
    pub buf: VecDeque<pb::ServerEvent>,
    next_id: u64,
    pub last_seq: u64,
}

impl Sig {
    /// Opens a stream over `transport`.
    pub async fn open_via(
        transport: Transport,
        channel: Channel,
        token: &str,
        on_behalf_of: Option<&str>,
        appointment_id: &str,
        resume_after_seq: u64,
    ) -> Result<Sig, tonic::Status> {
        match transport {
            Transport::Bidi => {
                Self::open_as(
                    channel,
                    token,
                    on_behalf_of,
                    appointment_id,
                    resume_after_seq,
                )
                .await
            }
            Transport::Browser => {
                assert!(
                    on_behalf_of.is_none(),
                    "the browser transport's test client does not act for others"
                );
                Self::open_browser(channel, token, appointment_id, resume_after_seq).await
            }
        }
    }

    /// Opens a `SignalEvents` stream; its messages go by `SendSignal`.
    pub async fn open_browser(
        channel: Channel,
        token: &str,
        appointment_id: &str,
        resume_after_seq: u64,
    ) -> Result<Sig, tonic::Status> {
        let mut client = SignallingServiceClient::new(channel);
        let resp = tokio::time::timeout(
            WAIT,
            client.signal_events(authed(
                pb::SignalEventsRequest {
                    client_msg_id: 1,
                    hello: Some(pb::Hello {
                        appointment_id: appointment_id.into(),
                        resume_after_seq,
                    }),
                },
                token,
            )),
        )
        .await
        .expect("signal events answered in time")?;
        let mut rx: Events = Box::pin(resp.into_inner());
        let first = tokio::time::timeout(WAIT, futures::StreamExt::next(&mut rx))
            .await
            .expect("welcome in time")
            .ok_or_else(|| tonic::Status::cancelled("stream ended before the welcome"))??;
        let Some(Ev::Welcome(w)) = &first.body else {
            panic!("the first event is a welcome: {first:?}");
        };
        assert!(!w.stream_id.is_empty(), "a welcome names its stream: {w:?}");
        let stream_id = w.stream_id.clone();
        Ok(Sig {
            sender: Sender::Browser(Box::new(BrowserSender {
                client,
                token: token.into(),
                appointment_id: appointment_id.into(),
                stream_id,
            })),
            rx,
            buf: VecDeque::from([first]),
            next_id: 2,
            last_seq: resume_after_seq,
        })
    }

    pub async fn open(
        channel: Channel,
        token: &str,
        appointment_id: &str,
        resume_after_seq: u64,
    ) -> Result<Sig, tonic::Status> {
        Self::open_as(channel, token, None, appointment_id, resume_after_seq).await
    }

    /// [`Sig::open`] acting for `on_behalf_of` (the `x-on-behalf-of` header), when given.
    pub async fn open_as(
        channel: Channel,
        token: &str,
        on_behalf_of: Option<&str>,
        appointment_id: &str,
        resume_after_seq: u64,
    ) -> Result<Sig, tonic::Status> {
        let (tx, rx) = mpsc::channel(256);
        tx.send(pb::ClientSignal {
            client_msg_id: 1,
            body: Some(Out::Hello(pb::Hello {
                appointment_id: appointment_id.into(),
                resume_after_seq,
            })),
        })
        .await
        .expect("queue hello");
        let resp = tokio::time::timeout(
            WAIT,
            SignallingServiceClient::new(channel).signal({
                let mut r = authed(tokio_stream::wrappers::ReceiverStream::new(rx), token);
                if let Some(nin) = on_behalf_of {
                    r.metadata_mut().insert(
                        econsult_runtime::auth::ON_BEHALF_OF_HEADER,
                        nin.parse().expect("header"),
                    );
                }
                r
            }),
        )
        .await
        .expect("signal answered in time")?;
        Ok(Sig {
            sender: Sender::Bidi(tx),
            rx: Box::pin(resp.into_inner()),
            buf: VecDeque::new(),
            next_id: 2,
            last_seq: resume_after_seq,
        })
    }

    pub async fn welcome(&mut self) -> pb::Welcome {
        match self.expect(|e| matches!(e, Ev::Welcome(_))).await {
            Ev::Welcome(w) => w,
            _ => unreachable!(),
        }
    }

    pub async fn send(&mut self, body: Out) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let signal = pb::ClientSignal {
            client_msg_id: id,
            body: Some(body),
        };
        match &mut self.sender {
            Sender::Bidi(tx) => tx.send(signal).await.expect("stream open"),
            Sender::Browser(b) => {
                let BrowserSender {
                    client,
                    token,
                    appointment_id,
                    stream_id,
                } = &mut **b;
                let answer = tokio::time::timeout(
                    WAIT,
                    client.send_signal(authed(
                        pb::SendSignalRequest {
                            appointment_id: appointment_id.clone(),
                            stream_id: stream_id.clone(),
                            signal: Some(signal),
                        },
                        token,
                    )),
                )
                .await
                .expect("send signal answered in time")
                .expect("send signal")
                .into_inner();
                let body = match answer.result.expect("ack or rejected") {
                    pb::send_signal_response::Result::Ack(a) => Ev::Ack(a),
                    pb::send_signal_response::Result::Rejected(r) => Ev::Rejected(r),
                };
                // Where Signal would have put the answer: among the events.
                self.buf.push_back(pb::ServerEvent {
                    seq: 0,
                    at: None,
                    body: Some(body),
                });
            }
        }
        id
    }

    /// The stream id of the browser transport.
    pub fn stream_id(&self) -> Option<&str> {
        match &self.sender {
            Sender::Bidi(_) => None,
            Sender::Browser(b) => Some(&b.stream_id),
        }
    }

    /// The next message of the events stream as it comes (`Ok(None)`: it ended).
    pub async fn recv(&mut self) -> Result<Option<pb::ServerEvent>, tonic::Status> {
        futures::StreamExt::next(&mut self.rx).await.transpose()
    }

    /// A rejection the server sent, if any is buffered.
    pub fn rejection(&self) -> Option<&pb::Rejected> {
        self.buf.iter().find_map(|e| match &e.body {
            Some(Ev::Rejected(r)) => Some(r),
            _ => None,
        })
    }

    pub async fn next_event(
        &mut self,
        deadline: tokio::time::Instant,
    ) -> Option<Result<pb::ServerEvent, tonic::Status>> {
        let ev = tokio::time::timeout_at(deadline, self.recv()).await.ok()?;
        Some(match ev {
            Ok(Some(ev)) => {
                if ev.seq > 0 {
                    assert!(ev.seq > self.last_seq, "seq goes up: {ev:?}");
                    self.last_seq = ev.seq;
                }
                Ok(ev)
            }
            Ok(None) => Err(tonic::Status::cancelled("stream ended")),
            Err(s) => Err(s),
        })
    }

    /// The next event whose body matches `want`; other events are kept for later.
    pub async fn expect(&mut self, want: impl Fn(&Ev) -> bool) -> Ev {
        if let Some(i) = self
            .buf
            .iter()
            .position(|e| e.body.as_ref().is_some_and(&want))
        {
            return self.buf.remove(i).and_then(|e| e.body).expect("body");
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let ev = self
                .next_event(deadline)
                .await
                .unwrap_or_else(|| panic!("expected event not received; seen {:?}", self.buf))
                .expect("stream healthy");
            if ev.body.as_ref().is_some_and(&want) {
                return ev.body.expect("body");
            }
            self.buf.push_back(ev);
        }
    }

    /// True when an event matching `want` arrives within `d`.
    pub async fn arrives_within(&mut self, d: Duration, want: impl Fn(&Ev) -> bool) -> bool {
        if self.buf.iter().any(|e| e.body.as_ref().is_some_and(&want)) {
            return true;
        }
        let deadline = tokio::time::Instant::now() + d;
        while let Some(ev) = self.next_event(deadline).await {
            let ev = ev.expect("stream healthy");
            let hit = ev.body.as_ref().is_some_and(&want);
            self.buf.push_back(ev);
            if hit {
                return true;
            }
        }
        false
    }

    /// Sends `body` and waits for its Ack (`Ok`) or Rejected (`Err((code, message))`).
    pub async fn call(&mut self, body: Out) -> Result<(), (Code, String)> {
        let id = self.send(body).await;
        match self
            .expect(|e| match e {
                Ev::Ack(a) => a.client_msg_id == id,
                Ev::Rejected(r) => r.client_msg_id == id,
                _ => false,
            })
            .await
        {
            Ev::Ack(_) => Ok(()),
            Ev::Rejected(r) => Err((Code::from(r.code), r.message)),
            _ => unreachable!(),
        }
    }
}
