//! Every SQL statement of the booking crate, each a complete literal (PostgreSQL and SQLite
//! variants side by side where they differ), with the functions that run them and turn rows into
//! domain types: the service's commands and queries here and in `appointments` and `slots`, the
//! booking requests of [`crate::episodes`] in [`episodes`], the lookups of [`crate::directory`]
//! in [`directory`]. Nothing here knows prost or tonic.
//!
//! A slot is *takeable* at `now` when it is free, or held by a hold that has lapsed:
//! `((s.status = 1 OR s.status = 3) AND (s.status = 1 OR (s.status = 3 AND s.hold_expires_at <=
//! now)))`. The first term is implied by the second; it is stated so both engines use the
//! partial index `booking_slots_open`. Status codes are [`SlotStatus::code`]'s, list statuses
//! [`ListStatus::code`]'s, appointment statuses [`AppointmentStatus::code`]'s.

mod appointments;
pub(crate) mod directory;
pub(crate) mod episodes;
pub(crate) mod guarantee;
mod slots;

pub(crate) use appointments::*;
pub(crate) use slots::*;

use crate::domain::*;
use crate::episodes::ListedAt;
use crate::error::BookingError;
use chrono::NaiveDate;
use econsult_calendar::Calendar;
use econsult_runtime::clock::from_ms;
use econsult_runtime::db::is_unique_violation;
use sqlx::AnyConnection;
use sqlx::Row as _;
use sqlx::any::AnyRow;

/// A GP of an organisation, with the size of the GP's list: `$1` organisation, `$2` GP id.
const GP_IN_ORG: &str = "SELECT g.gp_uid, g.gp_id, g.hpr_number, g.display_name, g.practice_name, g.org_number, g.municipality_number, \
     g.list_capacity, g.list_status, (SELECT COUNT(*) FROM booking_list_members m WHERE m.gp_uid = g.gp_uid) AS list_size \
     FROM booking_gps g WHERE g.org_number = $1 AND g.gp_id = $2";

/// The GP of the list of patient `$1`, with the practice's closure days ([`ListGp::from_row`]).
const LIST_GP: &str = "SELECT g.gp_uid AS list_gp_uid, g.gp_id AS list_gp_id, g.org_number AS list_org_number, \
     g.municipality_number AS list_municipality_number, g.list_status, \
     (SELECT string_agg(c.closed_on, ',') FROM booking_closures c WHERE c.org_number = g.org_number) AS closures \
     FROM booking_list_members l JOIN booking_gps g ON g.gp_uid = l.gp_uid WHERE l.patient_nin = $1";

/// The GP whose list a patient is on, as the patient's calls need it.
pub(crate) struct ListGp {
    /// Internal key.
    pub gp_uid: String,
    /// The EHR's id.
    pub gp_id: String,
    /// Practice.
    pub org_number: String,
    /// Municipality.
    pub municipality_number: String,
    /// Staffing.
    pub list_status: ListStatus,
}

impl ListGp {
    /// Where a booking request of this list is counted.
    pub fn listed(&self) -> ListedAt {
        ListedAt {
            gp_uid: self.gp_uid.clone(),
            gp_id: self.gp_id.clone(),
            org_number: self.org_number.clone(),
            municipality_number: self.municipality_number.clone(),
            vacant: self.list_status == ListStatus::Vacant,
        }
    }

    fn from_row(row: &AnyRow) -> Result<Self, BookingError> {
        Ok(ListGp {
            gp_uid: row.try_get("list_gp_uid")?,
            gp_id: row.try_get("list_gp_id")?,
            org_number: row.try_get("list_org_number")?,
            municipality_number: row.try_get("list_municipality_number")?,
            list_status: list_status_from_row(row)?,
        })
    }
}

/// The `list_status` column of a GP row.
fn list_status_from_row(r: &AnyRow) -> Result<ListStatus, BookingError> {
    Ok(ListStatus::from_code(r.try_get("list_status")?)
        .ok_or_else(|| anyhow::anyhow!("bad list_status"))?)
}

fn gp_from_row(r: &AnyRow) -> Result<Gp, BookingError> {
    Ok(Gp {
        gp_uid: r.try_get("gp_uid")?,
        gp_id: r.try_get("gp_id")?,
        hpr_number: r.try_get("hpr_number")?,
        display_name: r.try_get("display_name")?,
        org_number: r.try_get("org_number")?,
        municipality_number: r.try_get("municipality_number")?,
        list_capacity: r.try_get::<i64, _>("list_capacity")? as u32,
        list_status: list_status_from_row(r)?,
        list_size: r.try_get::<i64, _>("list_size")? as u32,
        practice_name: r.try_get("practice_name")?,
    })
}

/// The working-day calendar of a row with a `closures` column (comma-separated closure days).
fn calendar_from_row(r: &AnyRow) -> Result<Calendar, BookingError> {
    let closures: Option<String> = r.try_get("closures")?;
    Ok(Calendar::with_closures(crate::directory::closure_days(
        closures.as_deref(),
    )))
}

/// A slot of a row with the columns `slot_id, start_at, end_at, modality, acute_reserve,
/// slot_status, hold_expires_at, gp_id`, as it stands at `now_ms`.
fn slot_from_row(r: &AnyRow, now_ms: i64) -> Result<Slot, BookingError> {
    Ok(Slot {
        slot_id: r.try_get("slot_id")?,
        gp_id: r.try_get("gp_id")?,
        start: from_ms(r.try_get("start_at")?),
        end: from_ms(r.try_get("end_at")?),
        modality: Modality::from_code(r.try_get("modality")?)
            .ok_or_else(|| anyhow::anyhow!("bad modality"))?,
        status: SlotStatus::from_row(
            r.try_get("slot_status")?,
            r.try_get("hold_expires_at")?,
            now_ms,
        ),
        acute_reserve: r.try_get::<i64, _>("acute_reserve")? != 0,
    })
}

/// A GP of `org`, or NOT_FOUND.
pub(crate) async fn gp_in_org(
    conn: &mut AnyConnection,
    org: &str,
    gp_id: &str,
) -> Result<Gp, BookingError> {
    let row = sqlx::query(GP_IN_ORG)
        .bind(org)
        .bind(gp_id)
        .fetch_optional(conn)
        .await?
        .ok_or_else(|| BookingError::NotFound(format!("gp {gp_id}")))?;
    gp_from_row(&row)
}

/// Creates or updates the GP `input` of `org` (`gp_uid` is the new row's key).
pub(crate) async fn upsert_gp(
    conn: &mut AnyConnection,
    gp_uid: &str,
    org: &str,
    input: &GpInput,
    now_ms: i64,
) -> Result<(), BookingError> {
    sqlx::query(
        "INSERT INTO booking_gps (gp_uid, org_number, gp_id, hpr_number, display_name, municipality_number, list_capacity, list_status, updated_at, practice_name) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
         ON CONFLICT (org_number, gp_id) DO UPDATE SET hpr_number = excluded.hpr_number, display_name = excluded.display_name, \
         municipality_number = excluded.municipality_number, list_capacity = excluded.list_capacity, \
         list_status = excluded.list_status, updated_at = excluded.updated_at, practice_name = excluded.practice_name",
    )
    .bind(gp_uid)
    .bind(org)
    .bind(&input.gp_id)
    .bind(&input.hpr_number)
    .bind(&input.display_name)
    .bind(&input.municipality_number)
    .bind(i64::from(input.list_capacity))
    .bind(input.list_status.code())
    .bind(now_ms)
    .bind(&input.practice_name)
    .execute(conn)
    .await?;
    Ok(())
}

/// The GP of the patient's list and the working days of the GP's practice; `None` when the
/// patient is on no list.
pub(crate) async fn list_gp(
    conn: &mut AnyConnection,
    nin: &str,
) -> Result<Option<(ListGp, Calendar)>, BookingError> {
    let Some(row) = sqlx::query(LIST_GP).bind(nin).fetch_optional(conn).await? else {
        return Ok(None);
    };
    Ok(Some((ListGp::from_row(&row)?, calendar_from_row(&row)?)))
}

/// PostgreSQL: [`list_gp`] and the first `w.limit` free slots of that GP (none when the list
/// has no GP), in one read: the slots in a `LATERAL` subquery that walks `booking_slots_open` of
/// the one GP in start order. `None` when the patient is on no list.
pub(crate) async fn list_gp_and_slots(
    conn: &mut AnyConnection,
    nin: &str,
    w: &Search<'_>,
) -> Result<Option<(ListGp, Calendar, Vec<(Slot, String)>)>, BookingError> {
    let rows = sqlx::query(
        "SELECT me.*, x.* FROM (SELECT g.gp_uid AS list_gp_uid, g.gp_id AS list_gp_id, g.org_number AS list_org_number, \
         g.municipality_number AS list_municipality_number, g.list_status, \
         (SELECT string_agg(c.closed_on, ',') FROM booking_closures c WHERE c.org_number = g.org_number) AS closures \
         FROM booking_list_members l JOIN booking_gps g ON g.gp_uid = l.gp_uid WHERE l.patient_nin = $1) me \
         LEFT JOIN LATERAL (SELECT s.slot_id, s.start_at, s.end_at, s.modality, s.acute_reserve, s.status AS slot_status, \
         s.hold_expires_at, s.hold_request_id, g.gp_id, g.display_name FROM booking_slots s JOIN booking_gps g ON g.gp_uid = s.gp_uid \
         WHERE s.gp_uid = me.list_gp_uid AND me.list_status <> 2 AND s.start_at >= $2 AND s.start_at < $3 \
         AND s.acute_reserve = 0 AND ((s.status = 1 OR s.status = 3) AND (s.status = 1 OR (s.status = 3 AND s.hold_expires_at <= $4))) \
         AND ($5 = 0 OR s.modality = $5) ORDER BY s.start_at LIMIT $6) x ON true ORDER BY x.start_at",
    )
    .bind(nin)
    .bind(w.from)
    .bind(w.to)
    .bind(w.now)
    .bind(w.modality.map_or(0, Modality::code))
    .bind(w.limit)
    .fetch_all(conn)
    .await?;
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let mut own = Vec::new();
    for r in &rows {
        if r.try_get::<Option<String>, _>("slot_id")?.is_some() {
            own.push((slot_from_row(r, w.now)?, r.try_get("display_name")?));
        }
    }
    Ok(Some((
        ListGp::from_row(first)?,
        calendar_from_row(first)?,
        own,
    )))
}

/// The organisation of the list patient `nin` is on, if any.
pub(crate) async fn list_org(
    conn: &mut AnyConnection,
    nin: &str,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query(
        "SELECT g.org_number FROM booking_list_members l JOIN booking_gps g ON g.gp_uid = l.gp_uid WHERE l.patient_nin = $1",
    )
    .bind(nin)
    .fetch_optional(conn)
    .await?
    .map(|r| r.try_get("org_number"))
    .transpose()
}

/// The list (GP key, GP id, organisation) patient `nin` is on, if any.
pub(crate) async fn listing(
    conn: &mut AnyConnection,
    nin: &str,
) -> Result<Option<(String, String, String)>, BookingError> {
    let Some(r) = sqlx::query(
        "SELECT l.gp_uid, g.gp_id, g.org_number FROM booking_list_members l JOIN booking_gps g ON g.gp_uid = l.gp_uid \
         WHERE l.patient_nin = $1",
    )
    .bind(nin)
    .fetch_optional(conn)
    .await?
    else {
        return Ok(None);
    };
    Ok(Some((
        r.try_get("gp_uid")?,
        r.try_get("gp_id")?,
        r.try_get("org_number")?,
    )))
}

/// Takes patient `nin` off the list of `gp_uid`.
pub(crate) async fn remove_from_list(
    conn: &mut AnyConnection,
    nin: &str,
    gp_uid: &str,
) -> Result<(), BookingError> {
    sqlx::query("DELETE FROM booking_list_members WHERE patient_nin = $1 AND gp_uid = $2")
        .bind(nin)
        .bind(gp_uid)
        .execute(conn)
        .await?;
    Ok(())
}

/// Puts patient `nin` on the list of `gp_uid` of `org`: a patient on a list of this practice
/// moves within it; one listed with another organisation stays there (false: nothing written).
pub(crate) async fn add_to_list(
    conn: &mut AnyConnection,
    nin: &str,
    gp_uid: &str,
    org: &str,
    now_ms: i64,
) -> Result<bool, BookingError> {
    let n = sqlx::query(
        "INSERT INTO booking_list_members (patient_nin, gp_uid, added_at) VALUES ($1, $2, $3) \
         ON CONFLICT (patient_nin) DO UPDATE SET gp_uid = excluded.gp_uid, added_at = excluded.added_at \
         WHERE (SELECT g.org_number FROM booking_gps g WHERE g.gp_uid = booking_list_members.gp_uid) = $4",
    )
    .bind(nin)
    .bind(gp_uid)
    .bind(now_ms)
    .bind(org)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(n > 0)
}

/// Moves patient `nin` from the list of `from_uid` to that of `to_uid` (false when the patient
/// is no longer on `from_uid`'s list).
pub(crate) async fn move_on_lists(
    conn: &mut AnyConnection,
    nin: &str,
    from_uid: &str,
    to_uid: &str,
    now_ms: i64,
) -> Result<bool, BookingError> {
    let n = sqlx::query(
        "UPDATE booking_list_members SET gp_uid = $1, added_at = $2 WHERE patient_nin = $3 AND gp_uid = $4",
    )
    .bind(to_uid)
    .bind(now_ms)
    .bind(nin)
    .bind(from_uid)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(n > 0)
}

/// Persons on the list of `gp_uid`.
pub(crate) async fn list_size(conn: &mut AnyConnection, gp_uid: &str) -> Result<i64, BookingError> {
    Ok(
        sqlx::query("SELECT COUNT(*) AS n FROM booking_list_members WHERE gp_uid = $1")
            .bind(gp_uid)
            .fetch_one(conn)
            .await?
            .try_get("n")?,
    )
}

/// Records the move `m` (its GP keys `from_uid` and `to_uid`) by `moved_by`.
pub(crate) async fn insert_list_move(
    conn: &mut AnyConnection,
    m: &ListMove,
    from_uid: &str,
    to_uid: &str,
    moved_by: &str,
) -> Result<(), BookingError> {
    sqlx::query(
        "INSERT INTO booking_list_moves (move_id, patient_nin, from_gp_uid, to_gp_uid, registry_reference, moved_at, moved_by) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&m.move_id)
    .bind(m.patient_nin.as_str())
    .bind(from_uid)
    .bind(to_uid)
    .bind(&m.registry_reference)
    .bind(m.moved_at_ms)
    .bind(moved_by)
    .execute(conn)
    .await?;
    Ok(())
}

/// The closure days of `org`.
pub(crate) async fn calendar(
    conn: &mut AnyConnection,
    org: &str,
) -> Result<Calendar, BookingError> {
    let rows = sqlx::query("SELECT closed_on FROM booking_closures WHERE org_number = $1")
        .bind(org)
        .fetch_all(conn)
        .await?;
    let mut days = Vec::with_capacity(rows.len());
    for r in rows {
        let s: String = r.try_get("closed_on")?;
        if let Ok(d) = NaiveDate::parse_from_str(&s, "%Y-%m-%d") {
            days.push(d);
        }
    }
    Ok(Calendar::with_closures(days))
}

/// Replaces the closure days of `org`.
pub(crate) async fn set_closures(
    conn: &mut AnyConnection,
    org: &str,
    dates: &[NaiveDate],
) -> Result<(), BookingError> {
    sqlx::query("DELETE FROM booking_closures WHERE org_number = $1")
        .bind(org)
        .execute(&mut *conn)
        .await?;
    for d in dates {
        sqlx::query("INSERT INTO booking_closures (org_number, closed_on) VALUES ($1, $2)")
            .bind(org)
            .bind(d.format("%Y-%m-%d").to_string())
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Replaces the phone number and opening hours of `org` (periods as in
/// [`crate::directory::OpeningHours`]).
pub(crate) async fn set_opening_hours(
    conn: &mut AnyConnection,
    org: &str,
    phone: &str,
    periods: &[(u32, u32, u32)],
    now_ms: i64,
) -> Result<(), BookingError> {
    sqlx::query(
        "INSERT INTO booking_practice_phones (org_number, phone, updated_at) VALUES ($1, $2, $3) \
         ON CONFLICT (org_number) DO UPDATE SET phone = excluded.phone, updated_at = excluded.updated_at",
    )
    .bind(org)
    .bind(phone)
    .bind(now_ms)
    .execute(&mut *conn)
    .await?;
    sqlx::query("DELETE FROM booking_opening_hours WHERE org_number = $1")
        .bind(org)
        .execute(&mut *conn)
        .await?;
    for &(weekday, opens, closes) in periods {
        sqlx::query(
            "INSERT INTO booking_opening_hours (org_number, weekday, opens_minute, closes_minute) VALUES ($1, $2, $3, $4)",
        )
        .bind(org)
        .bind(i64::from(weekday))
        .bind(i64::from(opens))
        .bind(i64::from(closes))
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// The HPR number of GP `gp_id` of `org`.
pub(crate) async fn hpr_number(
    conn: &mut AnyConnection,
    org: &str,
    gp_id: &str,
) -> Result<String, BookingError> {
    Ok(
        sqlx::query("SELECT hpr_number FROM booking_gps WHERE org_number = $1 AND gp_id = $2")
            .bind(org)
            .bind(gp_id)
            .fetch_one(conn)
            .await?
            .try_get("hpr_number")?,
    )
}

/// True when `e` is the refusal of a second live appointment for a slot (the unique index
/// `booking_appointments_one_per_slot`).
pub(crate) fn violates_one_per_slot(e: &sqlx::Error) -> bool {
    is_unique_violation(e)
        && e.as_database_error().is_some_and(|d| {
            d.constraint() == Some("booking_appointments_one_per_slot")
                || d.message().contains("booking_appointments.slot_id")
        })
}
