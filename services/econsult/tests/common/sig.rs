//! A client of the signalling service's bidirectional `Signal` stream for tests: sends
//! signals with ids, waits for their Ack / Rejected, and waits for server events (keeping the
//! ones it was not waiting for), checking that event seqs only go up.
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

/// One participant's Signal stream.
pub struct Sig {
    pub tx: mpsc::Sender<pb::ClientSignal>,
    pub rx: tonic::Streaming<pb::ServerEvent>,
    pub buf: VecDeque<pb::ServerEvent>,
    next_id: u64,
    pub last_seq: u64,
}

impl Sig {
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
            tx,
            rx: resp.into_inner(),
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
        self.tx
            .send(pb::ClientSignal {
                client_msg_id: id,
                body: Some(body),
            })
            .await
            .expect("stream open");
        id
    }

    pub async fn next_event(
        &mut self,
        deadline: tokio::time::Instant,
    ) -> Option<Result<pb::ServerEvent, tonic::Status>> {
        let ev = tokio::time::timeout_at(deadline, self.rx.message())
            .await
            .ok()?;
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
