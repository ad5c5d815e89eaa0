//! The stored form of queued events: a participant's queue (`signalling_messages.body`) keeps
//! each event as it goes on the wire, base64 of the encoded `ServerEvent` (seq 0, the time it
//! was queued), so a resumed stream is sent the very bytes that were stored, and rows written
//! by one replica are read by any other. [`WireCodec`] is the logic's [`EventCodec`]: the
//! logic hands it domain [`Event`]s to [`encode`] and passes the [`Delivered`] events of
//! [`decode`] (a `ServerEvent` inside) through unopened but for [`Delivered::ends_session`].

use super::{end_reason_pb, leave_reason_pb, patient_relation_pb, side_pb};
use crate::domain::{Candidate, Description, Event, MediaState, SdpKind};
use crate::service::{Delivered, EventCodec};
use base64::Engine as _;
use econsult_proto::signalling::v1 as pb;
use econsult_runtime::clock::from_ms;
use econsult_runtime::grpc::timestamp;
use pb::server_event::Body as Ev;
use prost::Message as _;

impl From<&Description> for pb::SessionDescription {
    fn from(d: &Description) -> Self {
        pb::SessionDescription {
            r#type: match d.kind {
                SdpKind::Offer => pb::SdpType::Offer,
                SdpKind::Answer => pb::SdpType::Answer,
            } as i32,
            sdp: d.sdp.clone(),
            ice_restart: d.ice_restart,
        }
    }
}

impl From<&Candidate> for pb::IceCandidate {
    fn from(c: &Candidate) -> Self {
        pb::IceCandidate {
            candidate: c.candidate.clone(),
            sdp_mid: c.sdp_mid.clone(),
            sdp_mline_index: c.sdp_mline_index,
            username_fragment: c.username_fragment.clone(),
        }
    }
}

impl From<MediaState> for pb::MediaState {
    fn from(m: MediaState) -> Self {
        pb::MediaState {
            audio_muted: m.audio_muted,
            video_muted: m.video_muted,
        }
    }
}

impl From<&Event> for Ev {
    fn from(e: &Event) -> Self {
        match e {
            Event::PeerJoined {
                side,
                rejoined,
                waiting,
                patient,
            } => Ev::PeerJoined(pb::PeerJoined {
                side: side_pb(*side) as i32,
                rejoined: *rejoined,
                waiting: *waiting,
                relation: patient_relation_pb(patient.as_ref()) as i32,
                represented_by_name: patient.as_ref().map(|p| p.name.clone()).unwrap_or_default(),
            }),
            Event::PeerLeft {
                side,
                reason,
                rejoin_deadline_ms,
            } => Ev::PeerLeft(pb::PeerLeft {
                side: side_pb(*side) as i32,
                reason: leave_reason_pb(*reason) as i32,
                rejoin_deadline: rejoin_deadline_ms.map(|ms| timestamp(from_ms(ms))),
            }),
            Event::Admitted => Ev::Admitted(pb::Admitted {}),
            Event::Description(d) => Ev::Description(d.into()),
            Event::Candidate(c) => Ev::Candidate(c.into()),
            Event::EndOfCandidates => Ev::EndOfCandidates(pb::EndOfCandidates {}),
            Event::IceRestartRequested => Ev::IceRestartRequested(pb::IceRestartRequest {}),
            Event::PeerMediaState(m) => Ev::PeerMediaState((*m).into()),
            Event::SessionEnded { reason, held } => Ev::SessionEnded(pb::SessionEnded {
                reason: end_reason_pb(Some(*reason)) as i32,
                held: *held,
            }),
        }
    }
}

/// The stored form of `event`, queued at `at_ms`.
pub(crate) fn encode(event: &Event, at_ms: i64) -> String {
    let event = pb::ServerEvent {
        seq: 0,
        at: Some(timestamp(from_ms(at_ms))),
        body: Some(event.into()),
    };
    base64::engine::general_purpose::STANDARD.encode(event.encode_to_vec())
}

/// Reads a stored event back; `seq` is its sequence number in the queue. The [`Delivered`]
/// carries the `ServerEvent` to send.
pub(crate) fn decode(body: &str, seq: u64) -> anyhow::Result<Delivered> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(body)?;
    let mut ev = pb::ServerEvent::decode(bytes.as_slice())?;
    ev.seq = seq;
    let ends_session = matches!(ev.body, Some(Ev::SessionEnded(_)));
    Ok(Delivered::new(seq, ends_session, ev))
}

/// The stored form of queued events ([`encode`], [`decode`]), for the logic.
#[derive(Debug, Clone, Copy, Default)]
pub struct WireCodec;

impl EventCodec for WireCodec {
    fn encode(&self, event: &Event, at_ms: i64) -> String {
        encode(event, at_ms)
    }

    fn decode(&self, body: &str, seq: u64) -> anyhow::Result<Delivered> {
        decode(body, seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{EndReason, LeaveReason, Side};

    #[test]
    fn a_stored_event_reads_back_as_the_server_event_it_was() {
        let events = [
            Event::PeerJoined {
                side: Side::Patient,
                rejoined: true,
                waiting: true,
                patient: Some(crate::domain::PatientSide {
                    relation: Some(econsult_runtime::auth::Relation::Parent),
                    name: "Kari Nordmann".into(),
                }),
            },
            Event::PeerLeft {
                side: Side::Practice,
                reason: LeaveReason::Disconnected,
                rejoin_deadline_ms: Some(1_700_000_000_123),
            },
            Event::Admitted,
            Event::Description(Description {
                kind: SdpKind::Offer,
                sdp: "v=0".into(),
                ice_restart: true,
            }),
            Event::Candidate(Candidate {
                candidate: "candidate:1 1 udp 1 127.0.0.1 9 typ host".into(),
                sdp_mid: "0".into(),
                sdp_mline_index: Some(0),
                username_fragment: "abcd".into(),
            }),
            Event::EndOfCandidates,
            Event::IceRestartRequested,
            Event::PeerMediaState(MediaState {
                audio_muted: true,
                video_muted: false,
            }),
            Event::SessionEnded {
                reason: EndReason::Timeout,
                held: true,
            },
        ];
        for (i, e) in events.iter().enumerate() {
            let back = decode(&encode(e, 1_700_000_000_456), i as u64 + 1).expect("decodes");
            let wire = back.wire::<pb::ServerEvent>().expect("a ServerEvent");
            assert_eq!(back.seq(), i as u64 + 1);
            assert_eq!(wire.body, Some(Ev::from(e)), "{e:?}");
            assert_eq!(wire.at, Some(timestamp(from_ms(1_700_000_000_456))));
            assert_eq!(back.ends_session(), matches!(e, Event::SessionEnded { .. }));
        }
        assert!(decode("not base64!", 1).is_err());
    }
}
