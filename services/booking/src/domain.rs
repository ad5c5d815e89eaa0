//! Booking domain types. Nothing here knows prost, tonic or sqlx rows.

use chrono::{DateTime, Utc};
use econsult_runtime::nin::NationalId;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A [`NationalId`] in JSON (stored answers, request hashes): its 11 digits as a string.
mod nin_serde {
    use econsult_runtime::nin::NationalId;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(n: &NationalId, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(n.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<NationalId, D::Error> {
        let s = String::deserialize(d)?;
        NationalId::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The first six digits of an identity number (the birth date), as [`NationalId`]'s `Debug`
/// shows them.
fn masked(nin: &str) -> String {
    format!("{}*****", nin.get(..6).unwrap_or(""))
}

/// How a consultation takes place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Modality {
    /// At the office.
    InPerson,
    /// Video.
    Video,
    /// Phone.
    Phone,
}

impl Modality {
    /// Storage code (same numbers as the proto enum).
    pub fn code(self) -> i64 {
        match self {
            Modality::InPerson => 1,
            Modality::Video => 2,
            Modality::Phone => 3,
        }
    }
    /// Inverse of [`Modality::code`].
    pub fn from_code(c: i64) -> Option<Self> {
        match c {
            1 => Some(Modality::InPerson),
            2 => Some(Modality::Video),
            3 => Some(Modality::Phone),
            _ => None,
        }
    }
    /// Name used in events and statistics.
    pub fn as_str(self) -> &'static str {
        match self {
            Modality::InPerson => "in_person",
            Modality::Video => "video",
            Modality::Phone => "phone",
        }
    }
}

/// FHIR Slot.status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SlotStatus {
    /// Bookable.
    Free,
    /// Booked.
    Busy,
    /// Held.
    BusyTentative,
    /// Withdrawn.
    BusyUnavailable,
}

impl SlotStatus {
    /// Storage code.
    pub fn code(self) -> i64 {
        match self {
            SlotStatus::Free => 1,
            SlotStatus::Busy => 2,
            SlotStatus::BusyTentative => 3,
            SlotStatus::BusyUnavailable => 4,
        }
    }
    /// Status of a stored slot at `now_ms` (a lapsed hold is free).
    pub fn from_row(code: i64, hold_expires_at: Option<i64>, now_ms: i64) -> Self {
        match code {
            1 => SlotStatus::Free,
            2 => SlotStatus::Busy,
            3 if hold_expires_at.is_some_and(|t| t > now_ms) => SlotStatus::BusyTentative,
            3 => SlotStatus::Free,
            _ => SlotStatus::BusyUnavailable,
        }
    }
}

/// FHIR Appointment.status (subset).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AppointmentStatus {
    /// Booked.
    Booked,
    /// Arrived.
    Arrived,
    /// Held.
    Fulfilled,
    /// Cancelled.
    Cancelled,
    /// Did not come.
    NoShow,
}

impl AppointmentStatus {
    /// Storage code.
    pub fn code(self) -> i64 {
        match self {
            AppointmentStatus::Booked => 1,
            AppointmentStatus::Arrived => 2,
            AppointmentStatus::Fulfilled => 3,
            AppointmentStatus::Cancelled => 4,
            AppointmentStatus::NoShow => 5,
        }
    }
    /// Inverse of [`AppointmentStatus::code`].
    pub fn from_code(c: i64) -> Option<Self> {
        Some(match c {
            1 => AppointmentStatus::Booked,
            2 => AppointmentStatus::Arrived,
            3 => AppointmentStatus::Fulfilled,
            4 => AppointmentStatus::Cancelled,
            5 => AppointmentStatus::NoShow,
            _ => return None,
        })
    }
    /// FHIR code.
    pub fn fhir(self) -> &'static str {
        match self {
            AppointmentStatus::Booked => "booked",
            AppointmentStatus::Arrived => "arrived",
            AppointmentStatus::Fulfilled => "fulfilled",
            AppointmentStatus::Cancelled => "cancelled",
            AppointmentStatus::NoShow => "noshow",
        }
    }
    /// Inverse of [`AppointmentStatus::fhir`].
    pub fn from_fhir(s: &str) -> Option<Self> {
        [
            Self::Booked,
            Self::Arrived,
            Self::Fulfilled,
            Self::Cancelled,
            Self::NoShow,
        ]
        .into_iter()
        .find(|x| x.fhir() == s)
    }
}

/// Whether a list has its own GP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ListStatus {
    /// Own GP.
    Staffed,
    /// No GP.
    Vacant,
    /// Served by a locum.
    Locum,
}

impl ListStatus {
    /// Storage code.
    pub fn code(self) -> i64 {
        match self {
            ListStatus::Staffed => 1,
            ListStatus::Vacant => 2,
            ListStatus::Locum => 3,
        }
    }
    /// Inverse of [`ListStatus::code`].
    pub fn from_code(c: i64) -> Option<Self> {
        Some(match c {
            1 => ListStatus::Staffed,
            2 => ListStatus::Vacant,
            3 => ListStatus::Locum,
            _ => return None,
        })
    }
}

/// Who cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CancelledBy {
    /// The patient.
    Patient,
    /// The practice.
    Practice,
}

impl CancelledBy {
    /// Storage code.
    pub fn code(self) -> i64 {
        match self {
            CancelledBy::Patient => 1,
            CancelledBy::Practice => 2,
        }
    }
    /// Inverse of [`CancelledBy::code`].
    pub fn from_code(c: i64) -> Option<Self> {
        match c {
            1 => Some(CancelledBy::Patient),
            2 => Some(CancelledBy::Practice),
            _ => None,
        }
    }
    /// Name used in events.
    pub fn as_str(self) -> &'static str {
        match self {
            CancelledBy::Patient => "patient",
            CancelledBy::Practice => "practice",
        }
    }
}

/// A GP and the GP's list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gp {
    /// Internal key.
    pub gp_uid: String,
    /// The EHR's id.
    pub gp_id: String,
    /// HPR number.
    pub hpr_number: String,
    /// Display name.
    pub display_name: String,
    /// Practice organisation.
    pub org_number: String,
    /// Municipality.
    pub municipality_number: String,
    /// Capacity.
    pub list_capacity: u32,
    /// Staffing.
    pub list_status: ListStatus,
    /// Current list size.
    pub list_size: u32,
    /// The practice's name for its patients ("" when not set).
    pub practice_name: String,
}

/// Validated input of UpsertGp.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpInput {
    /// The EHR's id.
    pub gp_id: String,
    /// HPR number.
    pub hpr_number: String,
    /// Display name.
    pub display_name: String,
    /// Municipality.
    pub municipality_number: String,
    /// Capacity.
    pub list_capacity: u32,
    /// Staffing.
    pub list_status: ListStatus,
    /// The practice's name for its patients ("" when not set).
    #[serde(default)]
    pub practice_name: String,
}

/// Validated input of MoveListing (operations): a move Fastlegeregisteret recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveListingInput {
    /// The patient.
    #[serde(with = "nin_serde")]
    pub patient_nin: NationalId,
    /// The practice the patient moves to.
    pub to_org_number: String,
    /// Its GP whose list the patient joins.
    pub to_gp_id: String,
    /// The registry's reference of the move.
    pub registry_reference: String,
}

/// A recorded move of a patient between lists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListMove {
    /// Id.
    pub move_id: String,
    /// Patient.
    #[serde(with = "nin_serde")]
    pub patient_nin: NationalId,
    /// Previous practice.
    pub from_org_number: String,
    /// Previous GP.
    pub from_gp_id: String,
    /// New practice.
    pub to_org_number: String,
    /// New GP.
    pub to_gp_id: String,
    /// Registry reference.
    pub registry_reference: String,
    /// When (ms since the epoch).
    pub moved_at_ms: i64,
    /// Persons on the new GP's list after the move.
    pub to_list_size: u32,
}

/// A slot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Slot {
    /// Id.
    pub slot_id: String,
    /// GP.
    pub gp_id: String,
    /// Start.
    pub start: DateTime<Utc>,
    /// End.
    pub end: DateTime<Utc>,
    /// Modality.
    pub modality: Modality,
    /// Status.
    pub status: SlotStatus,
    /// Reserved for same-day emergency help.
    pub acute_reserve: bool,
}

/// Validated slot to publish.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewSlot {
    /// Start.
    pub start: DateTime<Utc>,
    /// Minutes.
    pub duration_minutes: u32,
    /// Modality.
    pub modality: Modality,
    /// Acute reserve.
    pub acute_reserve: bool,
}

/// An appointment. Its patient is the number as stored (`Debug` masks it).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Appointment {
    /// Id.
    pub appointment_id: String,
    /// The slot.
    pub slot: Slot,
    /// Status.
    pub status: AppointmentStatus,
    /// Patient.
    pub patient_nin: String,
    /// GP.
    pub gp_id: String,
    /// Reason.
    pub reason: String,
    /// Booked at.
    pub booked_at: DateTime<Utc>,
    /// Cancelled at.
    pub cancelled_at: Option<DateTime<Utc>>,
    /// Who cancelled.
    pub cancelled_by: Option<CancelledBy>,
    /// Late cancellation by the patient.
    pub late_cancellation: bool,
    /// Replaced appointment.
    pub rescheduled_from: Option<String>,
    /// Who booked it when someone acted for the patient (a parent, a fullmakt holder); `None`
    /// when the patient or the practice booked it.
    #[serde(default)]
    pub booked_by: Option<Booker>,
}

/// Someone who booked for the patient: how they are related, and their display name when
/// their token gave one (their identity number stays in the store and the access log).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Booker {
    /// The relation.
    pub relation: econsult_runtime::auth::Relation,
    /// Display name, or "" when unknown.
    pub name: String,
}

impl fmt::Debug for Appointment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Appointment")
            .field("appointment_id", &self.appointment_id)
            .field("slot", &self.slot)
            .field("status", &self.status)
            .field("patient_nin", &masked(&self.patient_nin))
            .field("gp_id", &self.gp_id)
            .field("booked_at", &self.booked_at)
            .field("cancelled_at", &self.cancelled_at)
            .field("cancelled_by", &self.cancelled_by)
            .field("late_cancellation", &self.late_cancellation)
            .field("rescheduled_from", &self.rescheduled_from)
            .field("booked_by", &self.booked_by)
            .finish_non_exhaustive()
    }
}

/// A hold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hold {
    /// Id.
    pub hold_id: String,
    /// The slot.
    pub slot: Slot,
    /// Expiry.
    pub expires_at: DateTime<Utc>,
    /// Offered from the waitlist.
    pub from_waitlist: bool,
}

/// A waitlist entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WaitlistEntry {
    /// Id.
    pub entry_id: String,
    /// GP.
    pub gp_id: String,
    /// Latest acceptable date.
    pub latest_date: chrono::NaiveDate,
    /// Wanted modality.
    pub modality: Option<Modality>,
    /// Joined at.
    pub joined_at: DateTime<Utc>,
    /// Still waiting.
    pub active: bool,
    /// On the priority waitlist: the booking request waited for (`latest_date` is its target
    /// date).
    #[serde(default)]
    pub request_id: Option<String>,
}

/// Why the earliest offer is not within five working days.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BreachReason {
    /// Nobody has a free slot in time.
    NoSlots,
    /// The list has no GP.
    ListWithoutGp,
    /// The practice was closed on a working day of the five (and had no slot in time).
    PracticeClosed,
}

impl BreachReason {
    /// Storage code.
    pub fn code(self) -> i64 {
        match self {
            BreachReason::NoSlots => 1,
            BreachReason::ListWithoutGp => 2,
            BreachReason::PracticeClosed => 3,
        }
    }
    /// Name used in events.
    pub fn as_str(self) -> &'static str {
        match self {
            BreachReason::NoSlots => "no_slots",
            BreachReason::ListWithoutGp => "list_without_gp",
            BreachReason::PracticeClosed => "practice_closed",
        }
    }
}

/// A slot offered by FindSlots.
#[derive(Debug, Clone, PartialEq)]
pub struct Offer {
    /// The slot.
    pub slot: Slot,
    /// GP name.
    pub gp_display_name: String,
    /// Own GP.
    pub own_gp: bool,
    /// Why another GP is offered.
    pub alternative_reason: String,
    /// National working days from the request's day 0.
    pub working_days: u32,
}

/// Result of FindSlots.
#[derive(Debug, Clone, PartialEq)]
pub struct Offers {
    /// Offered slots.
    pub slots: Vec<Offer>,
    /// The request's earliest offer (whatever the search's filters).
    pub earliest: Option<DateTime<Utc>>,
    /// National working days from day 0 to it.
    pub earliest_working_days: Option<u32>,
    /// The practice offered a slot within five working days.
    pub within_target: bool,
    /// The own GP did.
    pub met_by_own_gp: bool,
    /// Within target, but this search showed none in time (the patient's filters) or the
    /// patient chose later.
    pub patient_preference: bool,
    /// Why not within target.
    pub breach: Option<BreachReason>,
    /// The request (episode) this search belongs to.
    pub request_id: String,
    /// The guarantee engine's offers, in policy order (when the own GP has none in time).
    pub guarantee: Vec<crate::guarantee::GuaranteeOffer>,
    /// The engine's step that met the request.
    pub met_by: Option<crate::guarantee::MetBy>,
}

/// A booking the practice makes for a patient (BookForPatient).
#[derive(Debug, Clone, Copy)]
pub struct PracticeBooking<'a> {
    /// The practice.
    pub org: &'a str,
    /// The patient, on one of the practice's lists.
    pub nin: &'a NationalId,
    /// The slot.
    pub slot_id: &'a str,
    /// Reason for the visit.
    pub reason: &'a str,
    /// When the patient contacted the practice (day 0 of a new booking request).
    pub requested_at: Option<DateTime<Utc>>,
}

/// Target of Book and Reschedule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Target {
    /// An own hold.
    Hold(String),
    /// A free slot.
    Slot(String),
}

/// Strips control characters (keeps newlines and tabs) and trims.
pub fn clean_text(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control() || *c == '\n' || *c == '\t')
        .collect::<String>()
        .trim()
        .to_owned()
}
