//! Read-only lookups of GPs and list membership for the other services (consultation,
//! signalling). All services share one database (tables prefixed per service), so this is a
//! plain query (its statements are in the store); if booking ever moves to a database of its
//! own, this becomes a gRPC call.
//!
//! Every lookup reads through the connection it is given: a command passes its own transaction
//! (`&mut **tx`), so it never waits for a second pooled connection while it holds one (with
//! more such callers than pooled connections, each would hold one and wait for another until
//! the pool's acquire timeout: issue 30); a query without a transaction passes a connection of
//! the read pool (`&mut *db.read().acquire().await?`).

pub use crate::domain::{AppointmentStatus, Modality};
use crate::store::directory as store;
use sqlx::AnyConnection;

/// A GP as other services need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpRef {
    /// The EHR's id of the GP.
    pub gp_id: String,
    /// HPR number.
    pub hpr_number: String,
    /// Display name.
    pub display_name: String,
    /// The practice's name for its patients ("" when the EHR set none).
    pub practice_name: String,
    /// Practice organisation number.
    pub org_number: String,
    /// Municipality number of the list.
    pub municipality_number: String,
    /// Whether the list is vacant (no GP).
    pub vacant: bool,
}

impl GpRef {
    /// The practice as the patient knows it: the name the EHR set (UpsertGp's
    /// `practice_name`), else the GP's display name.
    pub fn practice_as_known(&self) -> &str {
        known_as(&self.practice_name, &self.display_name)
    }
}

fn known_as<'a>(practice_name: &'a str, gp_display_name: &'a str) -> &'a str {
    if practice_name.is_empty() {
        gp_display_name
    } else {
        practice_name
    }
}

/// The regular GP of a patient (by identity number), if the patient is on a list.
pub async fn patient_gp(conn: &mut AnyConnection, nin: &str) -> Result<Option<GpRef>, sqlx::Error> {
    store::patient_gp(conn, nin).await
}

/// The closure days of a `closures` column aggregated as `string_agg(closed_on, ',')` (NULL
/// when there are none); a day that is no ISO date is skipped, as [`closures`] skips it.
pub fn closure_days(aggregated: Option<&str>) -> Vec<chrono::NaiveDate> {
    aggregated
        .into_iter()
        .flat_map(|c| c.split(','))
        .filter_map(|d| chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
        .collect()
}

/// [`patient_gp`] and the closure days of the GP's practice (as [`closures`] gives them), read
/// by one statement.
pub async fn patient_gp_with_closures(
    conn: &mut AnyConnection,
    nin: &str,
) -> Result<Option<(GpRef, Vec<chrono::NaiveDate>)>, sqlx::Error> {
    store::patient_gp_with_closures(conn, nin).await
}

/// A GP of an organisation.
pub async fn gp(
    conn: &mut AnyConnection,
    org_number: &str,
    gp_id: &str,
) -> Result<Option<GpRef>, sqlx::Error> {
    store::gp(conn, org_number, gp_id).await
}

/// A free slot as other services offer it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FreeSlot {
    /// Slot id (book it with HoldSlot and Book).
    pub slot_id: String,
    /// Start, ms since the epoch.
    pub start_ms: i64,
    /// End, ms since the epoch.
    pub end_ms: i64,
}

/// The earliest free (or lapsed-hold) non-acute slots of a GP starting after `from_ms`.
pub async fn free_slots(
    conn: &mut AnyConnection,
    org_number: &str,
    gp_id: &str,
    from_ms: i64,
    limit: i64,
) -> Result<Vec<FreeSlot>, sqlx::Error> {
    store::free_slots(conn, org_number, gp_id, from_ms, limit).await
}

/// When the target window of the patient's open booking request ends (ms since the epoch: the
/// start of the Oslo day after its fifth working day), if the request is stored (a search's is
/// within a second) and open.
pub async fn request_window_end(
    conn: &mut AnyConnection,
    request_id: &str,
    nin: &str,
) -> Result<Option<i64>, sqlx::Error> {
    store::request_window_end(conn, request_id, nin).await
}

/// The patient (identity number) offered a slot from waitlist entry `entry_id`
/// (`booking.waitlist_offered` names the entry, not the patient), if the entry is stored.
pub async fn waitlist_patient(
    conn: &mut AnyConnection,
    entry_id: &str,
) -> Result<Option<String>, sqlx::Error> {
    store::waitlist_patient(conn, entry_id).await
}

/// Closure days of a practice (ISO dates), as set through booking's SetClosures.
pub async fn closures(
    conn: &mut AnyConnection,
    org_number: &str,
) -> Result<Vec<chrono::NaiveDate>, sqlx::Error> {
    store::closures(conn, org_number).await
}

/// A booked appointment as the signalling service needs it (who may join, when, how). `Debug`
/// masks the patient.
#[derive(Clone, PartialEq, Eq)]
pub struct AppointmentRef {
    /// The appointment.
    pub appointment_id: String,
    /// The booked patient's identity number.
    pub patient_nin: String,
    /// The EHR's id of the slot's GP.
    pub gp_id: String,
    /// HPR number of the slot's GP.
    pub gp_hpr_number: String,
    /// Practice organisation number.
    pub org_number: String,
    /// Municipality number of the GP's list.
    pub municipality_number: String,
    /// Slot start, ms since the epoch.
    pub start_ms: i64,
    /// Slot end, ms since the epoch.
    pub end_ms: i64,
    /// How the consultation is held.
    pub modality: Modality,
    /// Where the appointment stands.
    pub status: AppointmentStatus,
    /// Display name of the slot's GP.
    pub gp_display_name: String,
    /// The practice's name for its patients ("" when the EHR set none).
    pub practice_name: String,
}

impl AppointmentRef {
    /// The practice as the patient knows it: the name the EHR set (UpsertGp's
    /// `practice_name`), else the GP's display name.
    pub fn practice_as_known(&self) -> &str {
        known_as(&self.practice_name, &self.gp_display_name)
    }
}

impl std::fmt::Debug for AppointmentRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppointmentRef")
            .field("appointment_id", &self.appointment_id)
            .field(
                "patient_nin",
                &format_args!("{}*****", self.patient_nin.get(..6).unwrap_or("")),
            )
            .field("gp_id", &self.gp_id)
            .field("gp_hpr_number", &self.gp_hpr_number)
            .field("org_number", &self.org_number)
            .field("municipality_number", &self.municipality_number)
            .field("start_ms", &self.start_ms)
            .field("end_ms", &self.end_ms)
            .field("modality", &self.modality)
            .field("status", &self.status)
            .field("gp_display_name", &self.gp_display_name)
            .field("practice_name", &self.practice_name)
            .finish()
    }
}

/// One appointment by id, with its slot, its GP and the practice's name, in one read.
pub async fn appointment(
    conn: &mut AnyConnection,
    appointment_id: &str,
) -> Result<Option<AppointmentRef>, sqlx::Error> {
    store::appointment(conn, appointment_id).await
}

/// A practice's phone number and opening hours (BookingService.SetOpeningHours).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpeningHours {
    /// The office's phone number for patients; `None` when the practice never set its hours.
    pub phone: Option<String>,
    /// Open periods: (ISO weekday 1 = Monday … 7, opens, closes) in minutes after midnight on
    /// the Europe/Oslo wall clock, closes exclusive; sorted.
    pub periods: Vec<(u32, u32, u32)>,
}

impl OpeningHours {
    /// Whether the hours say open at `minute` after midnight of ISO `weekday` (holidays and
    /// closure days are the caller's to check with the calendar).
    pub fn open_at(&self, weekday: u32, minute: u32) -> bool {
        self.periods
            .iter()
            .any(|&(d, opens, closes)| d == weekday && opens <= minute && minute < closes)
    }
}

/// The phone number and opening hours of organisation `org_number`.
pub async fn opening_hours(
    conn: &mut AnyConnection,
    org_number: &str,
) -> Result<OpeningHours, sqlx::Error> {
    store::opening_hours(conn, org_number).await
}

/// GP lists now, for statistics (`StatsService.GetListFigures`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ListFigures {
    /// GP lists.
    pub lists: u64,
    /// Lists without a GP (vacant).
    pub lists_without_gp: u64,
    /// Persons on those lists.
    pub persons_on_lists_without_gp: u64,
    /// Active waitlist entries.
    pub waitlist_active: u64,
}

/// [`ListFigures`] of organisation `org` and municipality `municipality` ("" = all).
pub async fn list_figures(
    conn: &mut AnyConnection,
    org: &str,
    municipality: &str,
) -> Result<ListFigures, sqlx::Error> {
    store::list_figures(conn, org, municipality).await
}

/// [`list_figures`] per (organisation, municipality), for statistics that suppress small
/// figures of a practice in a municipality.
pub async fn list_figures_by_place(
    conn: &mut AnyConnection,
    org: &str,
    municipality: &str,
) -> Result<Vec<((String, String), ListFigures)>, sqlx::Error> {
    store::list_figures_by_place(conn, org, municipality).await
}

/// Persons on GP lists (staffed or vacant) per municipality number, for statistics by
/// municipality size; municipalities without listed persons are left out.
pub async fn persons_by_municipality(
    conn: &mut AnyConnection,
) -> Result<Vec<(String, u64)>, sqlx::Error> {
    store::persons_by_municipality(conn).await
}
