//! Read-only lookups of GPs and list membership for the other services (consultation,
//! signalling). All services share one database (tables prefixed per service), so this is a
//! plain query; if booking ever moves to a database of its own, this becomes a gRPC call.
//!
//! Every lookup reads through the connection it is given: a command passes its own transaction
//! (`&mut **tx`), so it never waits for a second pooled connection while it holds one (with
//! more such callers than pooled connections, each would hold one and wait for another until
//! the pool's acquire timeout: issue 30); a query without a transaction passes a connection of
//! the read pool (`&mut *db.read().acquire().await?`).

use crate::domain::ListStatus;
pub use crate::domain::{AppointmentStatus, Modality};
use sqlx::AnyConnection;
use sqlx::Row as _;

/// A stored code that names no variant of its enum (a row written by a newer version).
fn decode_error(column: &str) -> sqlx::Error {
    sqlx::Error::ColumnDecode {
        index: column.to_owned(),
        source: format!("unknown {column} code").into(),
    }
}

/// A GP as other services need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpRef {
    /// The EHR's id of the GP.
    pub gp_id: String,
    /// HPR number.
    pub hpr_number: String,
    /// Display name.
    pub display_name: String,
    /// Practice organisation number.
    pub org_number: String,
    /// Municipality number of the list.
    pub municipality_number: String,
    /// Whether the list is vacant (no GP).
    pub vacant: bool,
}

fn gp_ref(r: &sqlx::any::AnyRow) -> Result<GpRef, sqlx::Error> {
    Ok(GpRef {
        gp_id: r.try_get("gp_id")?,
        hpr_number: r.try_get("hpr_number")?,
        display_name: r.try_get("display_name")?,
        org_number: r.try_get("org_number")?,
        municipality_number: r.try_get("municipality_number")?,
        vacant: ListStatus::from_code(r.try_get("list_status")?) == Some(ListStatus::Vacant),
    })
}

/// The regular GP of a patient (by identity number), if the patient is on a list.
pub async fn patient_gp(conn: &mut AnyConnection, nin: &str) -> Result<Option<GpRef>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT g.gp_id, g.hpr_number, g.display_name, g.org_number, g.municipality_number, g.list_status \
         FROM booking_list_members l JOIN booking_gps g ON g.gp_uid = l.gp_uid WHERE l.patient_nin = $1",
    )
    .bind(nin)
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(gp_ref).transpose()
}

/// A GP of an organisation.
pub async fn gp(
    conn: &mut AnyConnection,
    org_number: &str,
    gp_id: &str,
) -> Result<Option<GpRef>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT g.gp_id, g.hpr_number, g.display_name, g.org_number, g.municipality_number, g.list_status \
         FROM booking_gps g WHERE g.org_number = $1 AND g.gp_id = $2",
    )
    .bind(org_number)
    .bind(gp_id)
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(gp_ref).transpose()
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
    let rows = sqlx::query(
        "SELECT s.slot_id, s.start_at, s.end_at FROM booking_slots s JOIN booking_gps g ON g.gp_uid = s.gp_uid \
         WHERE g.org_number = $1 AND g.gp_id = $2 AND s.start_at > $3 AND s.acute_reserve = 0 \
         AND (s.status = 1 OR (s.status = 3 AND s.hold_expires_at <= $3)) ORDER BY s.start_at, s.slot_id LIMIT $4",
    )
    .bind(org_number)
    .bind(gp_id)
    .bind(from_ms)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(FreeSlot {
                slot_id: r.try_get("slot_id")?,
                start_ms: r.try_get("start_at")?,
                end_ms: r.try_get("end_at")?,
            })
        })
        .collect()
}

/// Closure days of a practice (ISO dates), as set through booking's SetClosures.
pub async fn closures(
    conn: &mut AnyConnection,
    org_number: &str,
) -> Result<Vec<chrono::NaiveDate>, sqlx::Error> {
    let rows = sqlx::query("SELECT closed_on FROM booking_closures WHERE org_number = $1")
        .bind(org_number)
        .fetch_all(conn)
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let s: String = r.try_get("closed_on")?;
        if let Ok(d) = chrono::NaiveDate::parse_from_str(&s, "%Y-%m-%d") {
            out.push(d);
        }
    }
    Ok(out)
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
            .finish()
    }
}

/// One appointment by id, with its slot and GP.
pub async fn appointment(
    conn: &mut AnyConnection,
    appointment_id: &str,
) -> Result<Option<AppointmentRef>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT a.appointment_id, a.patient_nin, a.status, s.start_at, s.end_at, s.modality, \
         g.gp_id, g.hpr_number, g.org_number, g.municipality_number \
         FROM booking_appointments a JOIN booking_slots s ON s.slot_id = a.slot_id \
         JOIN booking_gps g ON g.gp_uid = s.gp_uid WHERE a.appointment_id = $1",
    )
    .bind(appointment_id)
    .fetch_optional(conn)
    .await?;
    row.map(|r| {
        Ok(AppointmentRef {
            appointment_id: r.try_get("appointment_id")?,
            patient_nin: r.try_get("patient_nin")?,
            gp_id: r.try_get("gp_id")?,
            gp_hpr_number: r.try_get("hpr_number")?,
            org_number: r.try_get("org_number")?,
            municipality_number: r.try_get("municipality_number")?,
            start_ms: r.try_get("start_at")?,
            end_ms: r.try_get("end_at")?,
            modality: Modality::from_code(r.try_get("modality")?)
                .ok_or_else(|| decode_error("modality"))?,
            status: AppointmentStatus::from_code(r.try_get("status")?)
                .ok_or_else(|| decode_error("status"))?,
        })
    })
    .transpose()
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
    let phone: Option<String> =
        sqlx::query_scalar("SELECT phone FROM booking_practice_phones WHERE org_number = $1")
            .bind(org_number)
            .fetch_optional(&mut *conn)
            .await?;
    let rows = sqlx::query(
        "SELECT weekday, opens_minute, closes_minute FROM booking_opening_hours WHERE org_number = $1 \
         ORDER BY weekday, opens_minute",
    )
    .bind(org_number)
    .fetch_all(&mut *conn)
    .await?;
    let mut periods = Vec::with_capacity(rows.len());
    for r in rows {
        let field = |c: &str| -> Result<u32, sqlx::Error> {
            let v: i64 = r.try_get(c)?;
            u32::try_from(v).map_err(|e| sqlx::Error::Decode(Box::new(e)))
        };
        periods.push((
            field("weekday")?,
            field("opens_minute")?,
            field("closes_minute")?,
        ));
    }
    Ok(OpeningHours { phone, periods })
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
    let lists = sqlx::query(
        "SELECT COUNT(*) AS lists, CAST(COALESCE(SUM(CASE WHEN g.list_status = 2 THEN 1 ELSE 0 END), 0) AS BIGINT) AS vacant \
         FROM booking_gps g WHERE ($1 = '' OR g.org_number = $1) AND ($2 = '' OR g.municipality_number = $2)",
    )
    .bind(org)
    .bind(municipality)
    .fetch_one(&mut *conn)
    .await?;
    let persons: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM booking_list_members l JOIN booking_gps g ON g.gp_uid = l.gp_uid \
         WHERE g.list_status = 2 AND ($1 = '' OR g.org_number = $1) AND ($2 = '' OR g.municipality_number = $2)",
    )
    .bind(org)
    .bind(municipality)
    .fetch_one(&mut *conn)
    .await?;
    let waitlist: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM booking_waitlist w JOIN booking_gps g ON g.gp_uid = w.gp_uid \
         WHERE w.active = 1 AND ($1 = '' OR g.org_number = $1) AND ($2 = '' OR g.municipality_number = $2)",
    )
    .bind(org)
    .bind(municipality)
    .fetch_one(&mut *conn)
    .await?;
    Ok(ListFigures {
        lists: lists.try_get::<i64, _>("lists")? as u64,
        lists_without_gp: lists.try_get::<i64, _>("vacant")? as u64,
        persons_on_lists_without_gp: persons as u64,
        waitlist_active: waitlist as u64,
    })
}
