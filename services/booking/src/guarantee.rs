//! The guarantee engine: what the practice does when a booking request (see [`crate::episodes`])
//! cannot be met within five working days by the patient's own GP, in the order of the
//! practice's [`Policy`]:
//!
//! 1. [`Step::Colleague`]: the earliest in-target in-person slot of a colleague or the locum;
//! 2. [`Step::VideoOrPhone`]: the earliest in-target video or phone slot, saying why;
//! 3. [`Step::EConsultation`]: start an e-consultation from the request; the practice's first
//!    reply within the target meets it (the episode closes, met by `e_consultation`);
//! 4. [`Step::PriorityWaitlist`]: the patient waits for the target window; a slot of the practice
//!    that frees up inside it is held for the earliest request first, before the GPs' ordinary
//!    waitlists (`service::guarantee`);
//! 5. [`Step::TellPractice`]: the request counts in the practice's gauge of unmet requests per GP
//!    (alerted above [`Policy::unmet_threshold`]).
//!
//! A request met by a step counts as within the target, by that step ([`MetBy`]); the first step
//! that met it stays. The patient may refuse every offer and choose later (a preference).

use chrono::NaiveDate;

/// One step of the engine (stored codes are those of `econsult.booking.v1.GuaranteeStep`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Step {
    /// A colleague's or the locum's in-target in-person slot.
    Colleague,
    /// An in-target video or phone slot.
    VideoOrPhone,
    /// An e-consultation started from the request.
    EConsultation,
    /// The priority waitlist for the target window.
    PriorityWaitlist,
    /// The practice is told (change event, gauge, alert).
    TellPractice,
}

impl Step {
    /// Every step, in the default order.
    pub const ALL: [Step; 5] = [
        Step::Colleague,
        Step::VideoOrPhone,
        Step::EConsultation,
        Step::PriorityWaitlist,
        Step::TellPractice,
    ];

    /// Storage code.
    pub fn code(self) -> i64 {
        match self {
            Step::Colleague => 1,
            Step::VideoOrPhone => 2,
            Step::EConsultation => 3,
            Step::PriorityWaitlist => 4,
            Step::TellPractice => 5,
        }
    }

    /// From a storage code.
    pub fn from_code(c: i64) -> Option<Self> {
        Step::ALL.into_iter().find(|s| s.code() == c)
    }

    /// Name in figures.
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Colleague => "colleague",
            Step::VideoOrPhone => "video_or_phone",
            Step::EConsultation => "e_consultation",
            Step::PriorityWaitlist => "priority_waitlist",
            Step::TellPractice => "tell_practice",
        }
    }
}

/// The default number of unmet requests of one GP in the target window above which the practice
/// is alerted (also the threshold of the Prometheus rule `EconsultUnmetBookingRequests`).
pub const DEFAULT_UNMET_THRESHOLD: u32 = 3;

/// The largest threshold a practice may set.
pub const MAX_UNMET_THRESHOLD: u32 = 1000;

/// A practice's guarantee policy.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Policy {
    /// The steps the engine takes, in order (none: the engine offers nothing).
    pub steps: Vec<Step>,
    /// Alert when a GP has more unmet requests in the target window than this.
    pub unmet_threshold: u32,
    /// No policy stored: this is the default.
    pub is_default: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            steps: Step::ALL.to_vec(),
            unmet_threshold: DEFAULT_UNMET_THRESHOLD,
            is_default: true,
        }
    }
}

impl Policy {
    /// Whether the policy takes `step`.
    pub fn has(&self, step: Step) -> bool {
        self.steps.contains(&step)
    }

    /// The stored form of the steps ("1,2,3").
    pub(crate) fn steps_code(&self) -> String {
        self.steps
            .iter()
            .map(|s| s.code().to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// From the stored form (unknown codes, which no writer stores, are skipped).
    pub(crate) fn from_stored(steps: &str, threshold: i64) -> Self {
        Self {
            steps: steps
                .split(',')
                .filter_map(|c| c.trim().parse().ok().and_then(Step::from_code))
                .collect(),
            unmet_threshold: u32::try_from(threshold).unwrap_or(DEFAULT_UNMET_THRESHOLD),
            is_default: false,
        }
    }
}

/// Which step met a booking request (`booking_episodes.met_by`; the own GP is told by
/// `own_offer_at`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetBy {
    /// A colleague's or the locum's in-person slot in time.
    Colleague,
    /// A video or phone slot in time.
    VideoOrPhone,
    /// The practice replied in time to an e-consultation started from the request.
    EConsultation,
    /// A slot in time was held for the request from the priority waitlist.
    PriorityWaitlist,
}

impl MetBy {
    /// Storage code (0: not met by the engine).
    pub fn code(self) -> i64 {
        match self {
            MetBy::Colleague => 1,
            MetBy::VideoOrPhone => 2,
            MetBy::EConsultation => 3,
            MetBy::PriorityWaitlist => 4,
        }
    }

    /// From a storage code.
    pub fn from_code(c: i64) -> Option<Self> {
        match c {
            1 => Some(MetBy::Colleague),
            2 => Some(MetBy::VideoOrPhone),
            3 => Some(MetBy::EConsultation),
            4 => Some(MetBy::PriorityWaitlist),
            _ => None,
        }
    }
}

/// One offer of the engine to the patient, in policy order.
#[derive(Debug, Clone, PartialEq)]
pub struct GuaranteeOffer {
    /// The step.
    pub step: Step,
    /// Why it is offered, for the patient.
    pub reason: String,
    /// The slot offered (colleague, video or phone).
    pub slot: Option<crate::domain::Offer>,
    /// The last day of the request's target window.
    pub target_date: NaiveDate,
}
