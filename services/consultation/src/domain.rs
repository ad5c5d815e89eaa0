//! The consultation's domain types: a thread with its state machine, its messages and their
//! attachments, and the codes they are stored with.

use std::fmt;

/// The state of a thread (stored as the numbers of `econsult.consultation.v1.ThreadState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Sent by the patient, nobody at the practice has taken it yet.
    Submitted,
    /// Taken by a clinician, or the patient wrote again.
    InReview,
    /// The practice asked the patient something.
    AwaitingPatient,
    /// The practice answered.
    Answered,
    /// Closed by the practice (with an outcome and a tariff).
    Closed,
    /// Withdrawn by the patient.
    Withdrawn,
    /// Turned into a booking: the practice offered times.
    Converted,
}

impl State {
    /// States in which the thread still needs the practice or the patient.
    pub const OPEN: [State; 3] = [State::Submitted, State::InReview, State::AwaitingPatient];

    /// The stored code (the proto's number).
    pub fn code(self) -> i64 {
        match self {
            State::Submitted => 1,
            State::InReview => 2,
            State::AwaitingPatient => 3,
            State::Answered => 4,
            State::Closed => 5,
            State::Withdrawn => 6,
            State::Converted => 7,
        }
    }

    /// Inverse of [`State::code`].
    pub fn from_code(code: i64) -> Option<Self> {
        Some(match code {
            1 => State::Submitted,
            2 => State::InReview,
            3 => State::AwaitingPatient,
            4 => State::Answered,
            5 => State::Closed,
            6 => State::Withdrawn,
            7 => State::Converted,
            _ => return None,
        })
    }

    /// Lower-case name for messages.
    pub fn name(self) -> &'static str {
        match self {
            State::Submitted => "submitted",
            State::InReview => "in_review",
            State::AwaitingPatient => "awaiting_patient",
            State::Answered => "answered",
            State::Closed => "closed",
            State::Withdrawn => "withdrawn",
            State::Converted => "converted_to_booking",
        }
    }

    /// Whether the thread still needs the practice or the patient.
    pub fn is_open(self) -> bool {
        Self::OPEN.contains(&self)
    }

    /// Whether `self -> to` is a transition of the state machine (see the proto).
    pub fn allows(self, to: State) -> bool {
        use State::*;
        matches!(
            (self, to),
            (
                Submitted,
                InReview | AwaitingPatient | Answered | Converted | Withdrawn
            ) | (
                InReview,
                InReview | AwaitingPatient | Answered | Converted | Withdrawn
            ) | (
                AwaitingPatient,
                InReview | AwaitingPatient | Answered | Converted | Withdrawn | Closed
            ) | (Answered, Closed)
                | (Converted, Closed)
        )
    }
}

/// What a thread is about (stored as the numbers of `econsult.consultation.v1.Category`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Category {
    /// A medical question to the GP.
    EConsultation,
    /// A renewal of a prescription.
    PrescriptionRenewal,
    /// An administrative matter for the reception.
    Administrative,
}

impl Category {
    /// The stored code (the proto's number).
    pub fn code(self) -> i64 {
        match self {
            Category::EConsultation => 1,
            Category::PrescriptionRenewal => 2,
            Category::Administrative => 3,
        }
    }

    /// Inverse of [`Category::code`].
    pub fn from_code(code: i64) -> Option<Self> {
        Some(match code {
            1 => Category::EConsultation,
            2 => Category::PrescriptionRenewal,
            3 => Category::Administrative,
            _ => return None,
        })
    }

    /// The name in events and logs.
    pub fn name(self) -> &'static str {
        match self {
            Category::EConsultation => "e_consultation",
            Category::PrescriptionRenewal => "prescription_renewal",
            Category::Administrative => "administrative",
        }
    }

    /// The tariff code billed by default when the practice names none: 2ae for an
    /// e-consultation, 1bd (simple contact by the doctor) for a prescription renewal, none for
    /// an administrative e-contact (a reception's answer gives no health care and bills
    /// nothing).
    pub fn default_tariff(self) -> &'static str {
        match self {
            Category::EConsultation => "2ae",
            Category::PrescriptionRenewal => "1bd",
            Category::Administrative => "",
        }
    }
}

/// Who wrote a message (stored as the numbers of `econsult.consultation.v1.Author`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Author {
    /// The patient.
    Patient,
    /// Someone at the practice.
    Practice,
    /// The service itself.
    System,
}

impl Author {
    /// The stored code (the proto's number).
    pub fn code(self) -> i64 {
        match self {
            Author::Patient => 1,
            Author::Practice => 2,
            Author::System => 3,
        }
    }

    /// Inverse of [`Author::code`].
    pub fn from_code(code: i64) -> Option<Self> {
        Some(match code {
            1 => Author::Patient,
            2 => Author::Practice,
            3 => Author::System,
            _ => return None,
        })
    }
}

/// What a change of a thread was (the change streams' `ChangeKind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// The thread was started.
    Started,
    /// A message was added.
    Message,
    /// Its state, assignment or closing changed.
    State,
    /// A read receipt moved.
    Read,
}

/// A thread: the patient's question to the practice and where it stands.
#[derive(Clone, PartialEq, Eq)]
pub struct Thread {
    /// Its id.
    pub thread_id: String,
    /// The patient's identity number (masked in `Debug`).
    pub patient_nin: String,
    /// The patient's GP when the thread was started.
    pub gp_id: String,
    /// The GP's name.
    pub gp_display_name: String,
    /// The practice.
    pub org_number: String,
    /// The practice's municipality (for statistics).
    pub municipality_number: String,
    /// What it is about.
    pub category: Category,
    /// The subject line.
    pub subject: String,
    /// Where it stands.
    pub state: State,
    /// When it was started (ms since the epoch).
    pub submitted_at: i64,
    /// When the practice's response is due (ms).
    pub due_at: i64,
    /// The practice's first message (ms).
    pub first_response_at: Option<i64>,
    /// The clinician who took it ("" for none).
    pub assigned_hpr: String,
    /// The seq of its last message (its message count).
    pub last_seq: i64,
    /// The patient's read receipt.
    pub patient_read_seq: i64,
    /// The practice's read receipt.
    pub practice_read_seq: i64,
    /// How it was closed ("" while open).
    pub outcome: String,
    /// The tariff billed when closed ("" for none).
    pub tariff_code: String,
    /// When it was closed or withdrawn (ms).
    pub closed_at: Option<i64>,
    /// Its last change (ms).
    pub updated_at: i64,
    /// Who started it when someone acted for the patient (a parent, a fullmakt holder): their
    /// identity number; "" when the patient did.
    pub started_by_nin: String,
    /// How that person is related to the patient (`econsult_runtime::auth::Relation::code`;
    /// 0 for the patient).
    pub started_by_relation: i64,
    /// That person's display name when their token gave one ("" otherwise).
    pub started_by_name: String,
    /// The practice marked it confidential to the patient: a parent with limited access
    /// (child 12 to 16) does not see it, even one who started it.
    pub confidential: bool,
}

impl Thread {
    /// No practice response yet and the due time has passed, while still open.
    pub fn overdue(&self, now_ms: i64) -> bool {
        self.first_response_at.is_none() && self.due_at < now_ms && self.state.is_open()
    }
}

impl fmt::Debug for Thread {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Thread")
            .field("thread_id", &self.thread_id)
            .field("patient_nin", &mask(&self.patient_nin))
            .field("gp_id", &self.gp_id)
            .field("org_number", &self.org_number)
            .field("category", &self.category)
            .field("state", &self.state)
            .field("submitted_at", &self.submitted_at)
            .field("due_at", &self.due_at)
            .field("first_response_at", &self.first_response_at)
            .field("last_seq", &self.last_seq)
            .field("closed_at", &self.closed_at)
            .field("updated_at", &self.updated_at)
            .finish_non_exhaustive()
    }
}

/// The birth date part of an identity number, the rest masked (as `NationalId` shows it).
fn mask(nin: &str) -> String {
    format!("{}*****", nin.get(..6).unwrap_or_default())
}

/// The metadata of an attachment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// Its id.
    pub attachment_id: String,
    /// The file name (sanitised).
    pub file_name: String,
    /// The content type, as its magic bytes say.
    pub content_type: String,
    /// Its size.
    pub size_bytes: i64,
    /// Hex SHA-256 of the bytes.
    pub sha256: String,
}

/// A message of a thread, with its attachments' metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Its id.
    pub message_id: String,
    /// Its thread.
    pub thread_id: String,
    /// Its place in the thread (1, 2, …).
    pub seq: i64,
    /// Who wrote it.
    pub author: Author,
    /// The clinician who wrote it ("" for none).
    pub author_hpr: String,
    /// The text (sanitised).
    pub body: String,
    /// When it was sent (ms).
    pub sent_at: i64,
    /// Its attachments, in order.
    pub attachments: Vec<Attachment>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for code in 1..=7 {
            assert_eq!(State::from_code(code).map(State::code), Some(code));
        }
        for code in 1..=3 {
            assert_eq!(Category::from_code(code).map(Category::code), Some(code));
            assert_eq!(Author::from_code(code).map(Author::code), Some(code));
        }
        assert_eq!(State::from_code(0), None);
        assert_eq!(Category::from_code(4), None);
    }
}
