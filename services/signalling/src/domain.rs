//! The signalling service's domain types: the two sides, the stored state codes, the messages a
//! participant sends on its Signal stream and the events it receives, and the answers of the
//! unary calls. No prost, no tonic: the adapter (`grpc`) converts.

use crate::error::SignallingError;

/// Which side of the consultation a participant is on (`side`, `pending_offer_side`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The booked patient.
    Patient,
    /// The practice: the appointment's GP or an admitted colleague.
    Practice,
}

impl Side {
    /// Both sides, the patient first.
    pub const BOTH: [Side; 2] = [Side::Patient, Side::Practice];

    /// The stored code.
    pub fn code(self) -> i64 {
        match self {
            Side::Patient => 1,
            Side::Practice => 2,
        }
    }

    /// Inverse of [`Side::code`].
    pub fn from_code(code: i64) -> Option<Self> {
        match code {
            1 => Some(Side::Patient),
            2 => Some(Side::Practice),
            _ => None,
        }
    }

    /// The other side.
    pub fn other(self) -> Self {
        match self {
            Side::Patient => Side::Practice,
            Side::Practice => Side::Patient,
        }
    }

    /// `patient` or `practice` (TURN usernames).
    pub fn name(self) -> &'static str {
        match self {
            Side::Patient => "patient",
            Side::Practice => "practice",
        }
    }
}

/// Where a participant stands (`signalling_participants.state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParticipantState {
    /// Joined, no stream yet.
    Joined,
    /// A live stream.
    Online,
    /// The stream dropped; may resume within the grace period.
    Disconnected,
    /// Hung up or did not come back in time.
    Left,
}

impl ParticipantState {
    /// The stored code (the statements of `store` name them as literals too).
    pub fn code(self) -> i64 {
        match self {
            ParticipantState::Joined => 1,
            ParticipantState::Online => 2,
            ParticipantState::Disconnected => 3,
            ParticipantState::Left => 4,
        }
    }

    /// Inverse of [`ParticipantState::code`].
    pub fn from_code(code: i64) -> Option<Self> {
        match code {
            1 => Some(ParticipantState::Joined),
            2 => Some(ParticipantState::Online),
            3 => Some(ParticipantState::Disconnected),
            4 => Some(ParticipantState::Left),
            _ => None,
        }
    }
}

/// Why a participant left (`signalling_participants.left_reason`; the proto's `LeaveReason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaveReason {
    /// The stream dropped; the participant may come back within the reconnect grace period.
    Disconnected,
    /// The participant hung up.
    HangUp,
    /// The participant did not come back within the reconnect grace period.
    Gone,
}

impl LeaveReason {
    /// The stored code.
    pub fn code(self) -> i64 {
        match self {
            LeaveReason::Disconnected => 1,
            LeaveReason::HangUp => 2,
            LeaveReason::Gone => 3,
        }
    }
}

/// Why a session ended (`signalling_sessions.end_reason`; the proto's `EndReason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// The practice ended it with EndSession.
    EndedByPractice,
    /// The join window closed while the session was open and the two sides had connected.
    Timeout,
    /// The join window closed and the two sides never connected.
    FailedToConnect,
}

impl EndReason {
    /// The stored code.
    pub fn code(self) -> i64 {
        match self {
            EndReason::EndedByPractice => 1,
            EndReason::Timeout => 2,
            EndReason::FailedToConnect => 3,
        }
    }

    /// Inverse of [`EndReason::code`].
    pub fn from_code(code: i64) -> Option<Self> {
        match code {
            1 => Some(EndReason::EndedByPractice),
            2 => Some(EndReason::Timeout),
            3 => Some(EndReason::FailedToConnect),
            _ => None,
        }
    }

    /// The reason's name in the `signalling.session_ended` event.
    pub fn event_name(self) -> &'static str {
        match self {
            EndReason::EndedByPractice => "hang_up",
            EndReason::Timeout => "timeout",
            EndReason::FailedToConnect => "failed_to_connect",
        }
    }
}

/// Offer or answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SdpKind {
    /// An offer (the patient makes the first one; either side may re-offer later).
    Offer,
    /// The answer to the peer's pending offer.
    Answer,
}

/// The first message of a Signal stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The appointment whose session to signal in.
    pub appointment_id: String,
    /// Events with a sequence number above this are delivered; 0 delivers all.
    pub resume_after_seq: u64,
}

/// A session description, relayed as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Description {
    /// Offer or answer.
    pub kind: SdpKind,
    /// The SDP text.
    pub sdp: String,
    /// An offer that restarts ICE.
    pub ice_restart: bool,
}

/// A trickled ICE candidate (the fields of RTCIceCandidateInit), relayed as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The candidate attribute.
    pub candidate: String,
    /// The media stream identification of the m= section, if known.
    pub sdp_mid: String,
    /// The index of the m= section, if known.
    pub sdp_mline_index: Option<u32>,
    /// The ICE username fragment, if known.
    pub username_fragment: String,
}

/// Microphone and camera state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaState {
    /// Microphone muted.
    pub audio_muted: bool,
    /// Camera off.
    pub video_muted: bool,
}

/// What a participant sends on its Signal stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    /// Only accepted as the first message.
    Hello(Hello),
    /// An offer or answer for the peer.
    Description(Description),
    /// An ICE candidate for the peer.
    Candidate(Candidate),
    /// No more candidates in this ICE generation.
    EndOfCandidates,
    /// Ask the peer to restart ICE.
    IceRestart,
    /// Mute/unmute state, relayed to the peer.
    MediaState(MediaState),
    /// The participant's media connection state (recorded, not relayed).
    Connection {
        /// Connected, or dropped/failed.
        connected: bool,
    },
    /// Leave the session.
    HangUp,
}

/// One client message of a Signal stream.
#[derive(Debug)]
pub struct ClientSignal {
    /// Chosen by the client; echoed in the answer.
    pub client_msg_id: u64,
    /// Its encoded size in bytes (checked against the limit first).
    pub size: usize,
    /// The message, or why it is not one (answered with a rejection after the size check).
    pub body: Result<Signal, SignallingError>,
}

impl ClientSignal {
    /// Whether this is a hang-up (always accepted, whatever the stream's budget).
    pub fn is_hang_up(&self) -> bool {
        matches!(self.body, Ok(Signal::HangUp))
    }
}

/// An event stored in a participant's queue (and delivered again on resume).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The peer joined (first stream) or came back after a dropped stream.
    PeerJoined {
        /// The peer's side.
        side: Side,
        /// The peer came back within the reconnect grace period.
        rejoined: bool,
        /// The peer is the patient and still waits in the waiting room.
        waiting: bool,
        /// For the patient side: who is there for the patient.
        patient: Option<PatientSide>,
    },
    /// The peer's stream ended.
    PeerLeft {
        /// The peer's side.
        side: Side,
        /// Why.
        reason: LeaveReason,
        /// For a dropped stream: the peer may rejoin until then (ms since the epoch).
        rejoin_deadline_ms: Option<i64>,
    },
    /// The practice admitted the patient.
    Admitted,
    /// The peer's offer or answer.
    Description(Description),
    /// The peer's ICE candidate.
    Candidate(Candidate),
    /// The peer trickled all its candidates.
    EndOfCandidates,
    /// The peer asks for an ICE restart.
    IceRestartRequested,
    /// The peer's mute/unmute state.
    PeerMediaState(MediaState),
    /// The session ended.
    SessionEnded {
        /// Why.
        reason: EndReason,
        /// Whether the practice marked the consultation as held.
        held: bool,
    },
}

/// The first event of an established stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// The session.
    pub session_id: String,
    /// The caller's side.
    pub side: Side,
    /// The patient waits for admission.
    pub waiting: bool,
    /// The peer has a live stream.
    pub peer_online: bool,
    /// This stream resumed after a dropped one.
    pub resumed: bool,
    /// The peer is the patient and waits in the waiting room.
    pub peer_waiting: bool,
    /// The stream's id (its epoch), named by the unary transport's messages.
    pub stream_id: String,
}

/// Why a Signal stream ends with an error status (it ends with OK after a hang-up or when the
/// session ended, and silently when the client went away).
#[derive(Debug)]
pub enum StreamClose {
    /// The server is shutting down: resume on another instance.
    Shutdown,
    /// Storage (or presence) failed.
    Failed(SignallingError),
    /// A newer stream of the same participant took over.
    Superseded,
    /// The participant was marked disconnected meanwhile (presence lost).
    Lost,
}

/// One STUN or TURN server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IceServer {
    /// `stun:…`, `turn:…` or `turns:…` URLs.
    pub urls: Vec<String>,
    /// TURN username; empty for STUN.
    pub username: String,
    /// TURN password; empty for STUN.
    pub credential: String,
}

/// The servers of a participant and when their TURN credentials expire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IceServers {
    /// The servers.
    pub servers: Vec<IceServer>,
    /// Expiry of the TURN credentials, seconds since the epoch.
    pub expires_at: i64,
}

/// JoinSession's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    /// The session.
    pub session_id: String,
    /// The caller's side.
    pub side: Side,
    /// The patient waits in the waiting room.
    pub waiting: bool,
    /// Where the Signal stream's Hello should resume.
    pub resume_after_seq: u64,
    /// Start of the join window, ms since the epoch.
    pub window_start_ms: i64,
    /// End of the join window, ms since the epoch.
    pub window_end_ms: i64,
    /// STUN/TURN servers with fresh credentials.
    pub ice_servers: Vec<IceServer>,
}

/// Who is on the patient side of a session: the patient, or a parent or fullmakt holder
/// acting for them (as they joined). Never their identity numbers: the practice sees the
/// relation and the name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PatientSide {
    /// `None`: the patient themselves.
    pub relation: Option<econsult_runtime::auth::Relation>,
    /// The acting person's display name when their token gave one, else "".
    pub name: String,
}

/// The lifecycle record of a session (GetSession, EndSession).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoSession {
    /// The session.
    pub session_id: String,
    /// The appointment.
    pub appointment_id: String,
    /// First join, ms since the epoch.
    pub started_at_ms: i64,
    /// When the patient was admitted.
    pub admitted_at_ms: Option<i64>,
    /// When both sides first reported a media connection.
    pub connected_at_ms: Option<i64>,
    /// Milliseconds both sides were connected.
    pub connected_ms: i64,
    /// When the session ended.
    pub ended_at_ms: Option<i64>,
    /// Why it ended.
    pub end_reason: Option<EndReason>,
    /// Whether the practice marked the consultation as held.
    pub held: bool,
    /// The patient has a live stream.
    pub patient_online: bool,
    /// The practice has a live stream.
    pub practice_online: bool,
    /// Who is on the patient side, once it has joined.
    pub patient_side: Option<PatientSide>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_codes_read_back_as_what_was_stored() {
        for s in Side::BOTH {
            assert_eq!(Side::from_code(s.code()), Some(s));
            assert_eq!(s.other().other(), s);
        }
        assert_eq!(Side::from_code(0), None);
        for s in [
            ParticipantState::Joined,
            ParticipantState::Online,
            ParticipantState::Disconnected,
            ParticipantState::Left,
        ] {
            assert_eq!(ParticipantState::from_code(s.code()), Some(s));
        }
        for r in [
            EndReason::EndedByPractice,
            EndReason::Timeout,
            EndReason::FailedToConnect,
        ] {
            assert_eq!(EndReason::from_code(r.code()), Some(r));
        }
    }
}
