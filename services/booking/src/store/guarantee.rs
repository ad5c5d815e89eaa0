//! The statements of the guarantee engine ([`crate::guarantee`]): the practice's policy, the
//! priority waitlist, the episodes it meets and the count of unmet requests. Each is the same on
//! PostgreSQL and SQLite.

use crate::domain::WaitlistEntry;
use crate::error::BookingError;
use crate::guarantee::{MetBy, Policy};
use chrono::NaiveDate;
use econsult_calendar::oslo_date;
use econsult_runtime::clock::from_ms;
use econsult_runtime::db::is_unique_violation;
use sqlx::AnyConnection;
use sqlx::Row as _;

/// The policy of practice `$1`.
const POLICY: &str =
    "SELECT steps, unmet_threshold FROM booking_guarantee_policies WHERE org_number = $1";

/// Replaces the policy of practice `$1`: steps `$2`, threshold `$3`, at `$4`.
const SET_POLICY: &str = "INSERT INTO booking_guarantee_policies (org_number, steps, unmet_threshold, updated_at) \
     VALUES ($1, $2, $3, $4) ON CONFLICT (org_number) DO UPDATE SET steps = excluded.steps, \
     unmet_threshold = excluded.unmet_threshold, updated_at = excluded.updated_at";

/// The policy of `org`, or the default.
pub(crate) async fn policy(conn: &mut AnyConnection, org: &str) -> Result<Policy, BookingError> {
    let row = sqlx::query(POLICY).bind(org).fetch_optional(conn).await?;
    Ok(match row {
        Some(r) => Policy::from_stored(
            &r.try_get::<String, _>("steps")?,
            r.try_get("unmet_threshold")?,
        ),
        None => Policy::default(),
    })
}

/// Stores `p` as the policy of `org`.
pub(crate) async fn set_policy(
    conn: &mut AnyConnection,
    org: &str,
    p: &Policy,
    now_ms: i64,
) -> Result<(), BookingError> {
    sqlx::query(SET_POLICY)
        .bind(org)
        .bind(p.steps_code())
        .bind(i64::from(p.unmet_threshold))
        .bind(now_ms)
        .execute(conn)
        .await?;
    Ok(())
}

/// A new entry of the priority waitlist.
pub(crate) struct NewPriorityEntry<'a> {
    pub entry_id: &'a str,
    pub request_id: &'a str,
    pub org_number: &'a str,
    pub gp_uid: &'a str,
    pub nin: &'a str,
    pub requested_at: i64,
    pub deadline_end: i64,
    pub joined_at: i64,
}

/// Puts `e` on the priority waitlist; false when its request is on it already.
pub(crate) async fn join_priority(
    conn: &mut AnyConnection,
    e: &NewPriorityEntry<'_>,
) -> Result<bool, BookingError> {
    let inserted = sqlx::query(
        "INSERT INTO booking_priority_waitlist (entry_id, request_id, org_number, gp_uid, patient_nin, requested_at, deadline_end, joined_at, active) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 1)",
    )
    .bind(e.entry_id)
    .bind(e.request_id)
    .bind(e.org_number)
    .bind(e.gp_uid)
    .bind(e.nin)
    .bind(e.requested_at)
    .bind(e.deadline_end)
    .bind(e.joined_at)
    .execute(conn)
    .await;
    match inserted {
        Err(err) if is_unique_violation(&err) => Ok(false),
        Err(err) => Err(err.into()),
        Ok(_) => Ok(true),
    }
}

fn priority_from_row(r: &sqlx::any::AnyRow) -> Result<WaitlistEntry, BookingError> {
    let deadline_end: i64 = r.try_get("deadline_end")?;
    Ok(WaitlistEntry {
        entry_id: r.try_get("entry_id")?,
        gp_id: r.try_get("gp_id")?,
        latest_date: target_date(deadline_end),
        modality: None,
        joined_at: from_ms(r.try_get("joined_at")?),
        active: r.try_get::<i64, _>("active")? != 0,
        request_id: Some(r.try_get("request_id")?),
    })
}

/// The last day of a window that ends (exclusive) at `deadline_end` ms.
fn target_date(deadline_end: i64) -> NaiveDate {
    oslo_date(from_ms(deadline_end - 1))
}

/// Priority entry `entry_id` of patient `nin`.
pub(crate) async fn priority_entry(
    conn: &mut AnyConnection,
    entry_id: &str,
    nin: &str,
) -> Result<Option<WaitlistEntry>, BookingError> {
    let row = sqlx::query(
        "SELECT w.entry_id, w.request_id, g.gp_id, w.deadline_end, w.joined_at, w.active \
         FROM booking_priority_waitlist w JOIN booking_gps g ON g.gp_uid = w.gp_uid \
         WHERE w.entry_id = $1 AND w.patient_nin = $2",
    )
    .bind(entry_id)
    .bind(nin)
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(priority_from_row).transpose()
}

/// The patient's active priority entries, by joining time.
pub(crate) async fn priority_of_patient(
    conn: &mut AnyConnection,
    nin: &str,
) -> Result<Vec<WaitlistEntry>, BookingError> {
    let rows = sqlx::query(
        "SELECT w.entry_id, w.request_id, g.gp_id, w.deadline_end, w.joined_at, w.active \
         FROM booking_priority_waitlist w JOIN booking_gps g ON g.gp_uid = w.gp_uid \
         WHERE w.patient_nin = $1 AND w.active = 1 ORDER BY w.joined_at",
    )
    .bind(nin)
    .fetch_all(conn)
    .await?;
    rows.iter().map(priority_from_row).collect()
}

/// Takes the patient's priority entry off the list; false when it is not theirs.
pub(crate) async fn leave_priority(
    conn: &mut AnyConnection,
    entry_id: &str,
    nin: &str,
) -> Result<bool, BookingError> {
    let r = sqlx::query(
        "UPDATE booking_priority_waitlist SET active = 0 WHERE entry_id = $1 AND patient_nin = $2",
    )
    .bind(entry_id)
    .bind(nin)
    .execute(conn)
    .await?;
    Ok(r.rows_affected() > 0)
}

/// True when a request of practice `org` waits on the priority waitlist for a window that ends
/// after `now_ms`.
pub(crate) async fn has_priority_waiting(
    conn: &mut AnyConnection,
    org: &str,
    now_ms: i64,
) -> Result<bool, BookingError> {
    Ok(sqlx::query(
        "SELECT 1 AS x FROM booking_priority_waitlist WHERE org_number = $1 AND active = 1 AND deadline_end > $2 LIMIT 1",
    )
    .bind(org)
    .bind(now_ms)
    .fetch_optional(conn)
    .await?
    .is_some())
}

/// The earliest request of practice `$1` waiting for a window that a slot starting at `$2` is
/// in: (entry, request, patient, requested at).
pub(crate) async fn first_priority(
    conn: &mut AnyConnection,
    org: &str,
    start_ms: i64,
) -> Result<Option<(String, String, String, i64)>, BookingError> {
    let Some(r) = sqlx::query(
        "SELECT entry_id, request_id, patient_nin, requested_at FROM booking_priority_waitlist \
         WHERE org_number = $1 AND active = 1 AND deadline_end > $2 ORDER BY requested_at, joined_at, entry_id LIMIT 1",
    )
    .bind(org)
    .bind(start_ms)
    .fetch_optional(conn)
    .await?
    else {
        return Ok(None);
    };
    Ok(Some((
        r.try_get("entry_id")?,
        r.try_get("request_id")?,
        r.try_get("patient_nin")?,
        r.try_get("requested_at")?,
    )))
}

/// Claims priority entry `$2` for hold `$1`: false when it is no longer waiting (a concurrent
/// offer took it; on PostgreSQL the update waits for that one's commit and then finds it
/// inactive).
pub(crate) async fn claim_priority(
    conn: &mut AnyConnection,
    entry_id: &str,
    hold_id: &str,
) -> Result<bool, BookingError> {
    let r = sqlx::query(
        "UPDATE booking_priority_waitlist SET active = 0, offered_hold_id = $1 WHERE entry_id = $2 AND active = 1",
    )
    .bind(hold_id)
    .bind(entry_id)
    .execute(conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Puts a claimed entry back (its slot was taken meanwhile).
pub(crate) async fn unclaim_priority(
    conn: &mut AnyConnection,
    entry_id: &str,
) -> Result<(), BookingError> {
    sqlx::query(
        "UPDATE booking_priority_waitlist SET active = 1, offered_hold_id = NULL WHERE entry_id = $1",
    )
    .bind(entry_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Holds slot `$4` for `$2` (hold `$1`, until `$3`, for request `$5`) if it is still takeable at
/// `$6`: false when a concurrent writer took it.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn hold_for_request(
    conn: &mut AnyConnection,
    slot_id: &str,
    patient: &str,
    hold_id: &str,
    expires: i64,
    request_id: &str,
    now_ms: i64,
) -> Result<bool, BookingError> {
    let r = sqlx::query(
        "UPDATE booking_slots SET status = 3, hold_id = $1, hold_patient = $2, hold_expires_at = $3, hold_from_waitlist = 1, hold_request_id = $5 \
         WHERE slot_id = $4 AND start_at > $6 AND acute_reserve = 0 \
         AND ((status = 1 OR status = 3) AND (status = 1 OR (status = 3 AND hold_expires_at <= $6)))",
    )
    .bind(hold_id)
    .bind(patient)
    .bind(expires)
    .bind(slot_id)
    .bind(request_id)
    .bind(now_ms)
    .execute(conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Records that step `by` met request `request_id` at `now_ms` with an offer starting at
/// `offer_ms` (if a slot): the first step that met it stays; the earliest offer only gets
/// earlier. `close` closes the open request with outcome `5` (answered). Only a request of
/// patient `nin` whose window is still open at `now_ms`.
pub(crate) async fn record_met(
    conn: &mut AnyConnection,
    request_id: &str,
    nin: &str,
    by: MetBy,
    now_ms: i64,
    offer: Option<(i64, i64)>,
    close: bool,
) -> Result<bool, BookingError> {
    let (offer_ms, offer_wd) = offer.unzip();
    let r = sqlx::query(
        "UPDATE booking_episodes SET \
         met_at = CASE WHEN met_by = 0 THEN $1 ELSE met_at END, \
         met_by = CASE WHEN met_by = 0 THEN $2 ELSE met_by END, \
         earliest_offer_working_days = CASE WHEN $3 IS NOT NULL AND (earliest_offer_at IS NULL OR $3 < earliest_offer_at) \
             THEN $4 ELSE earliest_offer_working_days END, \
         earliest_offer_at = CASE WHEN $3 IS NOT NULL AND (earliest_offer_at IS NULL OR $3 < earliest_offer_at) \
             THEN $3 ELSE earliest_offer_at END, \
         last_activity_at = CASE WHEN last_activity_at < $1 THEN $1 ELSE last_activity_at END, \
         outcome = CASE WHEN $5 = 1 AND closed_at IS NULL THEN 5 ELSE outcome END, \
         closed_at = CASE WHEN $5 = 1 THEN COALESCE(closed_at, $1) ELSE closed_at END \
         WHERE request_id = $6 AND patient_nin = $7 AND deadline_end > $1 AND outcome <> 4",
    )
    .bind(now_ms)
    .bind(by.code())
    .bind(offer_ms)
    .bind(offer_wd)
    .bind(i64::from(close))
    .bind(request_id)
    .bind(nin)
    .execute(conn)
    .await?;
    Ok(r.rows_affected() > 0)
}

/// Open requests not met in time whose window is still open at `$1`, per GP of the list:
/// (organisation, GP id, count). A request is unmet when nothing in time was offered and no step
/// met it.
pub(crate) async fn unmet_by_gp(
    conn: &mut AnyConnection,
    now_ms: i64,
) -> Result<Vec<(String, String, u64)>, BookingError> {
    let rows = sqlx::query(
        "SELECT org_number, gp_id, COUNT(*) AS n FROM booking_episodes \
         WHERE outcome = 0 AND deadline_end > $1 AND met_by = 0 \
         AND (earliest_offer_at IS NULL OR earliest_offer_at >= deadline_end) \
         GROUP BY org_number, gp_id",
    )
    .bind(now_ms)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get("org_number")?,
                r.try_get("gp_id")?,
                r.try_get::<i64, _>("n")?.max(0) as u64,
            ))
        })
        .collect()
}

/// A request newly found unmet.
pub(crate) struct Unmet {
    pub request_id: String,
    pub patient_nin: String,
    pub gp_id: String,
    pub org_number: String,
    pub requested_at: i64,
    pub deadline_end: i64,
}

/// Marks the requests unmet at `$1` that the practice was not told of yet as told, and returns
/// them (one statement: of two replicas, one gets each). Unmet: open, its window still open,
/// nothing offered in time and no step of the engine met it.
pub(crate) async fn take_untold_unmet(
    conn: &mut AnyConnection,
    now_ms: i64,
) -> Result<Vec<Unmet>, BookingError> {
    let rows = sqlx::query(
        "UPDATE booking_episodes SET unmet_told_at = $1 \
         WHERE unmet_told_at IS NULL AND outcome = 0 AND deadline_end > $1 AND met_by = 0 \
         AND (earliest_offer_at IS NULL OR earliest_offer_at >= deadline_end) \
         RETURNING request_id, patient_nin, gp_id, org_number, requested_at, deadline_end",
    )
    .bind(now_ms)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Unmet {
                request_id: r.try_get("request_id")?,
                patient_nin: r.try_get("patient_nin")?,
                gp_id: r.try_get("gp_id")?,
                org_number: r.try_get("org_number")?,
                requested_at: r.try_get("requested_at")?,
                deadline_end: r.try_get("deadline_end")?,
            })
        })
        .collect()
}

/// The last day of a window that ends (exclusive) at `deadline_end` ms, as events carry it.
pub(crate) fn target_day(deadline_end: i64) -> NaiveDate {
    target_date(deadline_end)
}
