//! The event contracts between services (JSON bodies of outbox events). Producers and consumers
//! share these types; add fields with `#[serde(default)]` so old events still parse.
//!
//! Events carry no identity numbers and no free text: the outbox and Redis keep them longer
//! than the service tables would need to. A body names the patient by an id (appointment,
//! thread, waitlist entry, request, list move) that a consumer resolves in the producer's
//! tables (`econsult_booking::directory`, `econsult_consultation::directory`); the outbox
//! `route_key` of an event about a patient is their pseudonymous key
//! ([`crate::pseudonym::Pseudonymizer::key_for`]). Events written before carry `patient_nin`
//! too; the bodies no longer have the field, so it is ignored.

use serde::{Deserialize, Serialize};

/// Topic names.
pub mod topics {
    /// A patient looked for slots: the five-working-day measurement.
    pub const BOOKING_REQUESTED: &str = "booking.requested";
    /// An appointment was booked.
    pub const BOOKING_CREATED: &str = "booking.created";
    /// An appointment was cancelled.
    pub const BOOKING_CANCELLED: &str = "booking.cancelled";
    /// An appointment was moved to another slot (the old one is cancelled in the same event).
    pub const BOOKING_RESCHEDULED: &str = "booking.rescheduled";
    /// The patient arrived.
    pub const BOOKING_ARRIVED: &str = "booking.arrived";
    /// The consultation was held: a contact for the statistics.
    pub const BOOKING_ATTENDED: &str = "booking.attended";
    /// The patient did not come.
    pub const BOOKING_NOSHOW: &str = "booking.noshow";
    /// A freed slot was offered to a waiting patient as a hold.
    pub const BOOKING_WAITLIST_OFFERED: &str = "booking.waitlist_offered";
    /// A patient left a GP's list for another practice's (or GP's) list, as Fastlegeregisteret
    /// recorded it (MoveListing). Routed to the old practice.
    pub const BOOKING_LIST_MOVED: &str = "booking.list_moved";
    /// A booking request could not be met within five working days: nothing in time was offered
    /// and no step of the guarantee engine met it (yet). Routed to the practice, once.
    pub const BOOKING_REQUEST_UNMET: &str = "booking.request_unmet";
    /// A patient started a text consultation.
    pub const CONSULTATION_STARTED: &str = "consultation.started";
    /// The practice answered a consultation for the first time.
    pub const CONSULTATION_FIRST_RESPONSE: &str = "consultation.first_response";
    /// The practice marked the consultation answered.
    pub const CONSULTATION_ANSWERED: &str = "consultation.answered";
    /// The practice closed the consultation with an outcome and tariff code: a contact.
    pub const CONSULTATION_CLOSED: &str = "consultation.closed";
    /// A video session ended (held or not).
    pub const VIDEO_SESSION_ENDED: &str = "signalling.session_ended";
}

/// Body of the consultation topics: the thread after the change. Producer: services/consultation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConsultationChanged {
    /// The thread (its patient: `econsult_consultation::directory::thread_patient`).
    pub thread_id: String,
    /// The patient's GP.
    pub gp_id: String,
    /// Practice organisation number.
    pub org_number: String,
    /// Municipality of the GP's list.
    pub municipality_number: String,
    /// `e_consultation`, `prescription_renewal` or `administrative`.
    pub category: String,
    /// When the patient submitted it (ms since the epoch).
    pub submitted_at_ms: i64,
    /// SLA due time (submission + N working days).
    pub due_at_ms: i64,
    /// First practice response, if any.
    #[serde(default)]
    pub first_response_at_ms: Option<i64>,
    /// Working days from submission to first response.
    #[serde(default)]
    pub response_working_days: Option<u32>,
    /// Working hours (08:00–16:00 Oslo on working days) from submission to first response.
    #[serde(default)]
    pub response_working_hours: Option<f64>,
    /// Closed at (consultation.closed only).
    #[serde(default)]
    pub closed_at_ms: Option<i64>,
    /// Tariff code billed at closing, e.g. `2ae` or `1bd`.
    #[serde(default)]
    pub tariff_code: Option<String>,
    /// Outcome at closing, e.g. `answered`, `converted_to_booking`, `withdrawn`.
    #[serde(default)]
    pub outcome: Option<String>,
}

/// Body of `signalling.session_ended`. Producer: services/signalling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VideoSessionEnded {
    /// The booked appointment the session belongs to.
    pub appointment_id: String,
    /// The GP.
    pub gp_id: String,
    /// Practice organisation number.
    pub org_number: String,
    /// Municipality of the GP's list.
    pub municipality_number: String,
    /// When the session started (first join), ms since the epoch.
    pub started_at_ms: i64,
    /// When it ended.
    pub ended_at_ms: i64,
    /// Whether the two peers connected (ICE completed on both sides as reported).
    pub connected: bool,
    /// Milliseconds both participants were connected.
    pub connected_ms: i64,
    /// `hang_up`, `timeout`, `failed_to_connect`, `server_shutdown`, …
    pub end_reason: String,
    /// The GP marked the consultation as held (a contact, tariff 2ae).
    pub held: bool,
}

/// Body of `booking.requested`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BookingRequested {
    /// The request id returned by FindSlots.
    pub request_id: String,
    /// The patient's own GP.
    pub gp_id: String,
    /// Practice organisation number.
    pub org_number: String,
    /// Municipality of the GP's list.
    pub municipality_number: String,
    /// When the patient asked (ms since the epoch).
    pub requested_at_ms: i64,
    /// The Norwegian date of the request (ISO).
    pub date: String,
    /// Working days to the earliest offer; `None` when nothing was offered.
    pub earliest_offer_working_days: Option<u32>,
    /// Earliest offer within five working days.
    pub within_target: bool,
    /// `no_slots` or `list_without_gp` when not within target.
    pub breach_reason: Option<String>,
}

/// Body of the appointment topics: the appointment after the change. No free text: the
/// patient's reason for the visit stays in the booking tables (WatchBookings reads it there), so
/// the outbox and Redis never hold it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppointmentChanged {
    /// The appointment (its patient: `econsult_booking::directory::appointment`).
    pub appointment_id: String,
    /// Its slot.
    pub slot_id: String,
    /// The GP.
    pub gp_id: String,
    /// Practice organisation number.
    pub org_number: String,
    /// Municipality of the GP's list.
    pub municipality_number: String,
    /// `in_person`, `video` or `phone`.
    pub modality: String,
    /// Slot start and end (ms since the epoch).
    pub start_ms: i64,
    /// Slot end.
    pub end_ms: i64,
    /// FHIR status: `booked`, `arrived`, `fulfilled`, `cancelled`, `noshow`.
    pub status: String,
    /// When booked.
    pub booked_at_ms: i64,
    /// When cancelled.
    pub cancelled_at_ms: Option<i64>,
    /// `patient` or `practice`.
    pub cancelled_by: Option<String>,
    /// Patient cancellation less than 24 hours before start.
    pub late_cancellation: bool,
    /// For a rescheduled appointment, the one it replaced.
    pub rescheduled_from: Option<String>,
    /// HPR number of the slot's GP (who may join a video consultation).
    #[serde(default)]
    pub gp_hpr_number: String,
}

/// Body of `booking.list_moved`: what the old practice learns. Producer: services/booking. The
/// new practice is left out on purpose: the old one needs to know that the patient left, not
/// where to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListMoved {
    /// The recorded move (its patient is in the booking tables; WatchBookings reads it there).
    pub move_id: String,
    /// The practice the patient left (the event's organisation).
    pub from_org_number: String,
    /// The GP whose list the patient left.
    pub from_gp_id: String,
    /// The Fastlegeregisteret reference of the move.
    pub registry_reference: String,
    /// When the move was recorded (ms since the epoch).
    pub moved_at_ms: i64,
}

/// Body of `booking.waitlist_offered`: a freed slot held for the first in line until
/// `expires_at_ms` (Book with `hold_id` takes it; when it lapses, the next in line gets it).
/// Producer: services/booking.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WaitlistOffered {
    /// The waitlist entry (its patient: `econsult_booking::directory::waitlist_patient`).
    pub entry_id: String,
    /// The hold to book with.
    pub hold_id: String,
    /// The slot.
    pub slot_id: String,
    /// Until when the slot is held (ms since the epoch).
    pub expires_at_ms: i64,
    /// The slot's GP.
    #[serde(default)]
    pub gp_id: String,
    /// Slot start (ms since the epoch).
    #[serde(default)]
    pub start_ms: i64,
    /// Slot end.
    #[serde(default)]
    pub end_ms: i64,
    /// `in_person`, `video` or `phone`.
    #[serde(default)]
    pub modality: String,
}

/// Body of `booking.request_unmet`: what the practice learns of a request it has not met (the
/// guarantee engine's "tell the practice"). Producer: services/booking.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestUnmet {
    /// The booking request (its patient is in the booking tables; WatchBookings reads it there).
    pub request_id: String,
    /// The patient's list GP.
    pub gp_id: String,
    /// Practice organisation number.
    pub org_number: String,
    /// When the patient asked (ms since the epoch).
    pub requested_at_ms: i64,
    /// The last day of the target window (ISO date): slots published up to it still help.
    pub target_date: String,
}
