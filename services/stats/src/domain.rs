//! What the statistics service answers, in its own terms (no proto).

pub use crate::levels::SizeBand;
pub use crate::suppress::Disclosure;
pub use econsult_booking::episodes::Accessibility as BookingRequests;

/// A validated filter of a statistics query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    /// First day (ISO); "" for figures of now.
    pub from: String,
    /// Last day (ISO); "" for figures of now.
    pub to: String,
    /// Organisation ("" = all).
    pub org: String,
    /// Municipality ("" = all).
    pub municipality: String,
    /// GP ("" = all).
    pub gp: String,
    /// County code, two digits ("" = all; contact queries only).
    pub county: String,
    /// Municipality-size band (`None` = all; contact queries only).
    pub size_band: Option<SizeBand>,
}

/// The period rows are summed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Granularity {
    /// One row per day.
    #[default]
    Day,
    /// One row per ISO week (`2026-W14`).
    IsoWeek,
    /// One row per month (`2026-04`).
    Month,
}

/// Which dimensions of a contact count to keep (the others are summed over).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dimensions {
    /// Organisation number.
    pub org: bool,
    /// Municipality number.
    pub municipality: bool,
    /// GP.
    pub gp: bool,
    /// Contact type.
    pub contact_type: bool,
    /// Tariff code.
    pub tariff_code: bool,
    /// KPR category.
    pub kpr_category: bool,
    /// County (from the municipality).
    pub county: bool,
    /// Municipality-size band (from the municipality).
    pub size_band: bool,
}

impl Dimensions {
    /// Every dimension kept.
    pub const ALL: Dimensions = Dimensions {
        org: true,
        municipality: true,
        gp: true,
        contact_type: true,
        tariff_code: true,
        kpr_category: true,
        county: true,
        size_band: true,
    };
    /// Nothing kept: the caller adds what it asks for.
    pub const NONE: Dimensions = Dimensions {
        org: false,
        municipality: false,
        gp: false,
        contact_type: false,
        tariff_code: false,
        kpr_category: false,
        county: false,
        size_band: false,
    };
}

/// The level of a contact export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExportLevel {
    /// Per GP: every dimension.
    #[default]
    Gp,
    /// Per municipality: summed over organisation and GP.
    Municipality,
}

/// Held contacts of one period and combination of the kept dimensions ("" where not kept).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ContactCount {
    /// The day, ISO week or month.
    pub period: String,
    /// Organisation number.
    pub org_number: String,
    /// Municipality number.
    pub municipality_number: String,
    /// GP.
    pub gp_id: String,
    /// Contact type (`in_person`, `video`, `text_econsultation`, …).
    pub contact_type: String,
    /// Normaltariffen code billed ("" for none).
    pub tariff_code: String,
    /// KPR's category of the code.
    pub kpr_category: String,
    /// County code (first two digits of the municipality number).
    pub county_number: String,
    /// County name ("" for a code not in [`crate::levels::COUNTIES`]).
    pub county_name: String,
    /// Municipality-size band label ([`SizeBand::as_str`]).
    pub size_band: String,
    /// How many (of the base cells shown: see [`crate::suppress`]).
    pub count: u64,
    /// Base cells below the threshold were left out of `count`.
    pub suppressed: bool,
}

/// A CSV export of contact counts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Export {
    /// The CSV text (header [`crate::service::CSV_HEADER`], CRLF line ends).
    pub csv: String,
    /// Data rows.
    pub rows: u64,
    /// Rows with hidden base cells left out of their count.
    pub suppressed_rows: u64,
}

/// First responses of text consultations.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ResponseTimes {
    /// Threads with a first response.
    pub responded: u64,
    /// Of those, within the SLA.
    pub within_sla: u64,
    /// `within_sla / responded` (0 when none).
    pub within_sla_share: f64,
    /// Index i = answered after i working days; 15 = fifteen or more.
    pub working_days_histogram: Vec<u64>,
    /// Small base cells were left out ([`crate::suppress`]).
    pub suppressed: bool,
}

/// Ended video sessions.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct VideoSessions {
    /// Sessions.
    pub sessions: u64,
    /// Held as consultations.
    pub held: u64,
    /// Whose peers never connected.
    pub failed_to_connect: u64,
    /// Mean connected time of those that connected.
    pub average_connected_seconds: f64,
    /// Small base cells were left out ([`crate::suppress`]).
    pub suppressed: bool,
}

/// Appointment counts beside the booking-request figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AppointmentCounts {
    /// Booked (and rebooked).
    pub bookings: u64,
    /// Cancelled late.
    pub late_cancellations: u64,
    /// Did not come.
    pub no_shows: u64,
}

/// Lists now, as `econsult_booking::directory::list_figures` counts them.
pub use econsult_booking::directory::ListFigures;
