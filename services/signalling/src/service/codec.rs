//! The stored form of queued events, as the logic sees it: an [`EventCodec`] the adapter
//! provides when the service is built. A participant's queue (`signalling_messages.body`) keeps
//! each event as it goes on the wire, so a resumed stream is sent the very bytes that were
//! stored and rows written by one replica are read by any other; the logic hands the codec
//! domain [`Event`]s and passes what it reads back ([`Delivered`]) through unopened but for its
//! sequence number and whether it ends the session.

use crate::domain::Event;
use std::any::Any;

/// Encodes domain events to their stored form and reads stored events back for delivery.
pub trait EventCodec: Send + Sync + 'static {
    /// The stored form of `event`, queued at `at_ms` (ms since the epoch).
    fn encode(&self, event: &Event, at_ms: i64) -> String;

    /// Reads a stored event back; `seq` is its sequence number in the queue.
    fn decode(&self, body: &str, seq: u64) -> anyhow::Result<Delivered>;
}

/// A queued event read back for delivery: its sequence number, whether it ends the session,
/// and its wire form, which only the codec that made it (and the adapter sending it) knows.
pub struct Delivered {
    seq: u64,
    ends_session: bool,
    wire: Box<dyn Any + Send>,
}

impl Delivered {
    /// The event `seq` of a queue, in its wire form `wire`; `ends_session` when it is the
    /// SessionEnded event.
    pub fn new(seq: u64, ends_session: bool, wire: impl Any + Send) -> Self {
        Self {
            seq,
            ends_session,
            wire: Box::new(wire),
        }
    }

    /// The event's sequence number.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Whether this is the SessionEnded event (the stream ends after it).
    pub fn ends_session(&self) -> bool {
        self.ends_session
    }

    /// The wire form, if it is a `W`.
    pub fn wire<W: Any>(&self) -> Option<&W> {
        self.wire.downcast_ref()
    }

    /// The wire form, if it is a `W` (else the event unchanged).
    pub fn into_wire<W: Any>(self) -> Result<W, Self> {
        match self.wire.downcast::<W>() {
            Ok(w) => Ok(*w),
            Err(wire) => Err(Self { wire, ..self }),
        }
    }
}

impl std::fmt::Debug for Delivered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivered")
            .field("seq", &self.seq)
            .field("ends_session", &self.ends_session)
            .finish_non_exhaustive()
    }
}
