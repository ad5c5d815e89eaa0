//! Appointments and the waitlist.

use super::*;
use econsult_runtime::auth::Relation;
use econsult_runtime::db::Defer;

/// An appointment row read back: the appointment, and its practice and municipality (for
/// events).
pub(crate) struct StoredAppointment {
    /// The appointment as it stands.
    pub appointment: Appointment,
    /// Practice.
    pub org_number: String,
    /// Municipality.
    pub municipality_number: String,
}

fn appt_from_row(r: &AnyRow, now_ms: i64) -> Result<StoredAppointment, BookingError> {
    let appointment = Appointment {
        appointment_id: r.try_get("appointment_id")?,
        slot: slot_from_row(r, now_ms)?,
        status: AppointmentStatus::from_code(r.try_get("status")?)
            .ok_or_else(|| anyhow::anyhow!("bad status"))?,
        patient_nin: r.try_get("patient_nin")?,
        gp_id: r.try_get("gp_id")?,
        reason: r.try_get("reason")?,
        booked_at: from_ms(r.try_get("booked_at")?),
        cancelled_at: r.try_get::<Option<i64>, _>("cancelled_at")?.map(from_ms),
        cancelled_by: r
            .try_get::<Option<i64>, _>("cancelled_by")?
            .and_then(CancelledBy::from_code),
        late_cancellation: r.try_get::<i64, _>("late_cancellation")? != 0,
        rescheduled_from: r.try_get("rescheduled_from")?,
        booked_by: Relation::from_code(r.try_get("booked_by_relation")?).map(|relation| Booker {
            relation,
            name: r.try_get("booked_by_name").unwrap_or_default(),
        }),
    };
    Ok(StoredAppointment {
        appointment,
        org_number: r.try_get("org_number")?,
        municipality_number: r.try_get("municipality_number")?,
    })
}

/// The patient (identity number) and reason of visit `id` (WatchBookings: events carry
/// neither).
pub(crate) async fn appointment_patient_reason(
    conn: &mut AnyConnection,
    id: &str,
) -> Result<Option<(String, String)>, BookingError> {
    let row = sqlx::query(
        "SELECT patient_nin, reason FROM booking_appointments WHERE appointment_id = $1",
    )
    .bind(id)
    .fetch_optional(conn)
    .await?;
    Ok(row
        .map(|r| Ok::<_, sqlx::Error>((r.try_get("patient_nin")?, r.try_get("reason")?)))
        .transpose()?)
}

/// The patient (identity number) of list move `move_id`, if stored.
pub(crate) async fn list_move_patient(
    conn: &mut AnyConnection,
    move_id: &str,
) -> Result<Option<String>, BookingError> {
    let row = sqlx::query("SELECT patient_nin FROM booking_list_moves WHERE move_id = $1")
        .bind(move_id)
        .fetch_optional(conn)
        .await?;
    Ok(row.map(|r| r.try_get("patient_nin")).transpose()?)
}

/// The patient (identity number) of booking request `request_id` (its episode), if stored.
pub(crate) async fn request_patient(
    conn: &mut AnyConnection,
    request_id: &str,
) -> Result<Option<String>, BookingError> {
    let row = sqlx::query("SELECT patient_nin FROM booking_episodes WHERE request_id = $1")
        .bind(request_id)
        .fetch_optional(conn)
        .await?;
    Ok(row.map(|r| r.try_get("patient_nin")).transpose()?)
}

/// Appointment `id` of organisation `org`, as it stands at `now_ms`.
pub(crate) async fn appointment_in_org(
    conn: &mut AnyConnection,
    org: &str,
    id: &str,
    now_ms: i64,
) -> Result<Option<StoredAppointment>, BookingError> {
    let row = sqlx::query(
        "SELECT a.appointment_id, a.status, a.patient_nin, a.reason, a.booked_at, a.cancelled_at, \
         a.cancelled_by, a.late_cancellation, a.rescheduled_from, a.booked_by_relation, a.booked_by_name, s.slot_id, s.start_at, s.end_at, s.modality, \
         s.acute_reserve, s.status AS slot_status, s.hold_expires_at, g.gp_id, g.org_number, g.municipality_number \
         FROM booking_appointments a JOIN booking_slots s ON s.slot_id = a.slot_id JOIN booking_gps g ON g.gp_uid = a.gp_uid \
         WHERE a.appointment_id = $1 AND g.org_number = $2",
    )
    .bind(id)
    .bind(org)
    .fetch_optional(conn)
    .await?;
    row.map(|r| appt_from_row(&r, now_ms)).transpose()
}

/// Appointment `id` of patient `nin`, as it stands at `now_ms`.
pub(crate) async fn appointment_of_patient(
    conn: &mut AnyConnection,
    nin: &str,
    id: &str,
    now_ms: i64,
) -> Result<Option<StoredAppointment>, BookingError> {
    let row = sqlx::query(
        "SELECT a.appointment_id, a.status, a.patient_nin, a.reason, a.booked_at, a.cancelled_at, \
         a.cancelled_by, a.late_cancellation, a.rescheduled_from, a.booked_by_relation, a.booked_by_name, s.slot_id, s.start_at, s.end_at, s.modality, \
         s.acute_reserve, s.status AS slot_status, s.hold_expires_at, g.gp_id, g.org_number, g.municipality_number \
         FROM booking_appointments a JOIN booking_slots s ON s.slot_id = a.slot_id JOIN booking_gps g ON g.gp_uid = a.gp_uid \
         WHERE a.appointment_id = $1 AND a.patient_nin = $2",
    )
    .bind(id)
    .bind(nin)
    .fetch_optional(conn)
    .await?;
    row.map(|r| appt_from_row(&r, now_ms)).transpose()
}

/// The patient's appointments (past ones too when `include_past`), by start.
pub(crate) async fn appointments_of_patient(
    conn: &mut AnyConnection,
    nin: &str,
    include_past: bool,
    now_ms: i64,
) -> Result<Vec<Appointment>, BookingError> {
    let rows = sqlx::query(
        "SELECT a.appointment_id, a.status, a.patient_nin, a.reason, a.booked_at, a.cancelled_at, \
         a.cancelled_by, a.late_cancellation, a.rescheduled_from, a.booked_by_relation, a.booked_by_name, s.slot_id, s.start_at, s.end_at, s.modality, \
         s.acute_reserve, s.status AS slot_status, s.hold_expires_at, g.gp_id, g.org_number, g.municipality_number \
         FROM booking_appointments a JOIN booking_slots s ON s.slot_id = a.slot_id JOIN booking_gps g ON g.gp_uid = a.gp_uid \
         WHERE a.patient_nin = $1 AND ($2 = 1 OR s.end_at > $3) ORDER BY s.start_at",
    )
    .bind(nin)
    .bind(i64::from(include_past))
    .bind(now_ms)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| Ok(appt_from_row(r, now_ms)?.appointment))
        .collect()
}

/// The GP key of appointment `id`.
pub(crate) async fn appointment_gp(
    conn: &mut AnyConnection,
    id: &str,
) -> Result<String, BookingError> {
    Ok(
        sqlx::query("SELECT gp_uid FROM booking_appointments WHERE appointment_id = $1")
            .bind(id)
            .fetch_one(conn)
            .await?
            .try_get("gp_uid")?,
    )
}

/// Inserts the booked appointment `a` of slot `gp_uid`'s slot, deferred to the commit (nothing
/// in the call reads it back): on PostgreSQL it goes in one statement with the event, the audit
/// row and the stored answer, and the unique index `booking_appointments_one_per_slot` refuses a
/// second live appointment for the slot there ([`violates_one_per_slot`]).
pub(crate) fn insert_appointment(
    tx: &mut impl Defer,
    a: &Appointment,
    gp_uid: &str,
    request_id: Option<&str>,
    (actor_nin, acted_as, actor_name): (&str, i64, &str),
) {
    tx.defer(
        "INSERT INTO booking_appointments (appointment_id, slot_id, gp_uid, patient_nin, status, reason, booked_at, rescheduled_from, request_id, booked_by_nin, booked_by_relation, booked_by_name) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        vec![
            a.appointment_id.as_str().into(),
            a.slot.slot_id.as_str().into(),
            gp_uid.into(),
            a.patient_nin.as_str().into(),
            a.status.code().into(),
            a.reason.as_str().into(),
            a.booked_at.timestamp_millis().into(),
            a.rescheduled_from.as_deref().into(),
            request_id.into(),
            actor_nin.into(),
            acted_as.into(),
            actor_name.into(),
        ],
    );
}

/// Sets appointment `id`'s status from `from` to `to`; false when it was no longer `from`.
pub(crate) async fn set_appointment_status(
    conn: &mut AnyConnection,
    id: &str,
    from: AppointmentStatus,
    to: AppointmentStatus,
) -> Result<bool, BookingError> {
    let n = sqlx::query(
        "UPDATE booking_appointments SET status = $1 WHERE appointment_id = $2 AND status = $3",
    )
    .bind(to.code())
    .bind(id)
    .bind(from.code())
    .execute(conn)
    .await?
    .rows_affected();
    Ok(n > 0)
}

/// Cancels booked appointment `id` at `now_ms` by `by` (`late`: less than 24 hours before);
/// false when it was no longer booked.
pub(crate) async fn cancel_appointment(
    conn: &mut AnyConnection,
    id: &str,
    by: CancelledBy,
    late: bool,
    now_ms: i64,
) -> Result<bool, BookingError> {
    let n = sqlx::query(
        "UPDATE booking_appointments SET status = $1, cancelled_at = $2, cancelled_by = $3, late_cancellation = $4 \
         WHERE appointment_id = $5 AND status = $6",
    )
    .bind(AppointmentStatus::Cancelled.code())
    .bind(now_ms)
    .bind(by.code())
    .bind(i64::from(late))
    .bind(id)
    .bind(AppointmentStatus::Booked.code())
    .execute(conn)
    .await?
    .rows_affected();
    Ok(n > 0)
}

fn waitlist_from_row(r: &AnyRow) -> Result<WaitlistEntry, BookingError> {
    let latest: String = r.try_get("latest_date")?;
    Ok(WaitlistEntry {
        entry_id: r.try_get("entry_id")?,
        gp_id: r.try_get("gp_id")?,
        latest_date: NaiveDate::parse_from_str(&latest, "%Y-%m-%d").map_err(anyhow::Error::from)?,
        modality: Modality::from_code(r.try_get("modality")?),
        joined_at: from_ms(r.try_get("joined_at")?),
        active: r.try_get::<i64, _>("active")? != 0,
        request_id: None,
    })
}

/// A new waitlist entry.
pub(crate) struct NewEntry<'a> {
    /// Id.
    pub entry_id: &'a str,
    /// The GP's key.
    pub gp_uid: &'a str,
    /// The patient.
    pub nin: &'a str,
    /// Latest acceptable date.
    pub latest: NaiveDate,
    /// Wanted modality (`None`: any).
    pub modality: Option<Modality>,
    /// First in line (cancelled by the practice).
    pub first_in_line: bool,
    /// Now (ms).
    pub joined_at: i64,
}

/// Puts `e` on the waitlist; false when the patient is on this GP's waitlist already.
pub(crate) async fn join_waitlist(
    conn: &mut AnyConnection,
    e: &NewEntry<'_>,
) -> Result<bool, BookingError> {
    let inserted = sqlx::query(
        "INSERT INTO booking_waitlist (entry_id, gp_uid, patient_nin, latest_date, modality, priority, joined_at, active) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, 1)",
    )
    .bind(e.entry_id)
    .bind(e.gp_uid)
    .bind(e.nin)
    .bind(e.latest.format("%Y-%m-%d").to_string())
    .bind(e.modality.map_or(0, Modality::code))
    .bind(i64::from(e.first_in_line))
    .bind(e.joined_at)
    .execute(conn)
    .await;
    match inserted {
        Err(err) if is_unique_violation(&err) => Ok(false),
        Err(err) => Err(err.into()),
        Ok(_) => Ok(true),
    }
}

/// Puts `e` first in line on its GP's waitlist (a new entry, or the patient's active one moved
/// to the front).
pub(crate) async fn put_first_in_line(
    conn: &mut AnyConnection,
    e: &NewEntry<'_>,
) -> Result<(), BookingError> {
    sqlx::query(
        "INSERT INTO booking_waitlist (entry_id, gp_uid, patient_nin, latest_date, modality, priority, joined_at, active) \
         VALUES ($1, $2, $3, $4, 0, 1, $5, 1) \
         ON CONFLICT (gp_uid, patient_nin) WHERE active = 1 DO UPDATE SET priority = 1",
    )
    .bind(e.entry_id)
    .bind(e.gp_uid)
    .bind(e.nin)
    .bind(e.latest.format("%Y-%m-%d").to_string())
    .bind(e.joined_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Waitlist entry `entry_id` (of patient `nin`, when given).
pub(crate) async fn waitlist_entry(
    conn: &mut AnyConnection,
    entry_id: &str,
    nin: Option<&str>,
) -> Result<Option<WaitlistEntry>, BookingError> {
    let row = match nin {
        None => sqlx::query(
            "SELECT w.entry_id, g.gp_id, w.latest_date, w.modality, w.joined_at, w.active FROM booking_waitlist w \
             JOIN booking_gps g ON g.gp_uid = w.gp_uid WHERE w.entry_id = $1",
        )
        .bind(entry_id)
        .fetch_optional(conn)
        .await?,
        Some(nin) => sqlx::query(
            "SELECT w.entry_id, g.gp_id, w.latest_date, w.modality, w.joined_at, w.active FROM booking_waitlist w \
             JOIN booking_gps g ON g.gp_uid = w.gp_uid WHERE w.entry_id = $1 AND w.patient_nin = $2",
        )
        .bind(entry_id)
        .bind(nin)
        .fetch_optional(conn)
        .await?,
    };
    row.as_ref().map(waitlist_from_row).transpose()
}

/// The patient's active waitlist entries, by joining time.
pub(crate) async fn waitlist_of_patient(
    conn: &mut AnyConnection,
    nin: &str,
) -> Result<Vec<WaitlistEntry>, BookingError> {
    let rows = sqlx::query(
        "SELECT w.entry_id, g.gp_id, w.latest_date, w.modality, w.joined_at, w.active FROM booking_waitlist w \
         JOIN booking_gps g ON g.gp_uid = w.gp_uid WHERE w.patient_nin = $1 AND w.active = 1 ORDER BY w.joined_at",
    )
    .bind(nin)
    .fetch_all(conn)
    .await?;
    rows.iter().map(waitlist_from_row).collect()
}

/// Takes the patient's entry `entry_id` off the waitlist (nothing when it is not theirs).
pub(crate) async fn leave_waitlist(
    conn: &mut AnyConnection,
    entry_id: &str,
    nin: &str,
) -> Result<(), BookingError> {
    sqlx::query("UPDATE booking_waitlist SET active = 0 WHERE entry_id = $1 AND patient_nin = $2")
        .bind(entry_id)
        .bind(nin)
        .execute(conn)
        .await?;
    Ok(())
}

/// True when someone waits on the waitlist of `gp_uid`.
pub(crate) async fn has_waiting(
    conn: &mut AnyConnection,
    gp_uid: &str,
) -> Result<bool, BookingError> {
    Ok(
        sqlx::query("SELECT 1 AS x FROM booking_waitlist WHERE gp_uid = $1 AND active = 1 LIMIT 1")
            .bind(gp_uid)
            .fetch_optional(conn)
            .await?
            .is_some(),
    )
}

/// Up to 20 slots of `gp_uid` takeable at `now_ms`, not started, not of the acute reserve, of
/// `modality` (any: `None`), by start.
pub(crate) async fn takeable_slots_of_gp(
    conn: &mut AnyConnection,
    gp_uid: &str,
    modality: Option<Modality>,
    now_ms: i64,
) -> Result<Vec<String>, BookingError> {
    let rows = sqlx::query(
        "SELECT s.slot_id FROM booking_slots s WHERE s.gp_uid = $1 AND s.start_at > $2 AND s.acute_reserve = 0 \
         AND ((s.status = 1 OR s.status = 3) AND (s.status = 1 OR (s.status = 3 AND s.hold_expires_at <= $2))) \
         AND ($3 = 0 OR s.modality = $3) ORDER BY s.start_at LIMIT 20",
    )
    .bind(gp_uid)
    .bind(now_ms)
    .bind(modality.map_or(0, Modality::code))
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| Ok(r.try_get::<String, _>("slot_id")?))
        .collect()
}

/// A slot a waiting patient may be offered.
pub(crate) struct Offerable {
    /// The GP's key.
    pub gp_uid: String,
    /// Start (ms).
    pub start_at: i64,
    /// Modality code, as the waitlist stores it.
    pub modality: Option<Modality>,
    /// Practice.
    pub org_number: String,
    /// The EHR's id of the GP (for the offer's event).
    pub gp_id: String,
    /// Slot end (ms).
    pub end_at: i64,
}

/// Slot `slot_id` when takeable at `now_ms`, not started and not of the acute reserve.
pub(crate) async fn offerable_slot(
    conn: &mut AnyConnection,
    slot_id: &str,
    now_ms: i64,
) -> Result<Option<Offerable>, BookingError> {
    let Some(s) = sqlx::query(
        "SELECT s.gp_uid, s.start_at, s.end_at, s.modality, g.org_number, g.gp_id FROM booking_slots s JOIN booking_gps g ON g.gp_uid = s.gp_uid \
         WHERE s.slot_id = $1 AND s.start_at > $2 AND s.acute_reserve = 0 \
         AND ((s.status = 1 OR s.status = 3) AND (s.status = 1 OR (s.status = 3 AND s.hold_expires_at <= $2)))",
    )
    .bind(slot_id)
    .bind(now_ms)
    .fetch_optional(conn)
    .await?
    else {
        return Ok(None);
    };
    Ok(Some(Offerable {
        gp_uid: s.try_get("gp_uid")?,
        start_at: s.try_get("start_at")?,
        modality: Modality::from_code(s.try_get("modality")?),
        org_number: s.try_get("org_number")?,
        gp_id: s.try_get("gp_id")?,
        end_at: s.try_get("end_at")?,
    }))
}

/// The first in line on the waitlist of `gp_uid` who takes a slot on `date` of `modality`:
/// (entry id, patient).
pub(crate) async fn first_waiting(
    conn: &mut AnyConnection,
    gp_uid: &str,
    date: NaiveDate,
    modality: Option<Modality>,
) -> Result<Option<(String, String)>, BookingError> {
    let Some(w) = sqlx::query(
        "SELECT entry_id, patient_nin FROM booking_waitlist WHERE gp_uid = $1 AND active = 1 AND latest_date >= $2 \
         AND (modality = 0 OR modality = $3) ORDER BY priority DESC, joined_at LIMIT 1",
    )
    .bind(gp_uid)
    .bind(date.format("%Y-%m-%d").to_string())
    .bind(modality.map_or(0, Modality::code))
    .fetch_optional(conn)
    .await?
    else {
        return Ok(None);
    };
    Ok(Some((w.try_get("entry_id")?, w.try_get("patient_nin")?)))
}

/// Offers slot `slot_id` to waitlist entry `entry_id` of `patient` as hold `hold_id` until
/// `expires`, if the slot is still takeable at `now_ms` (false: a concurrent writer took it, and
/// the entry keeps waiting).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn offer_hold(
    conn: &mut AnyConnection,
    slot_id: &str,
    entry_id: &str,
    patient: &str,
    hold_id: &str,
    expires: i64,
    now_ms: i64,
) -> Result<bool, BookingError> {
    let held = sqlx::query(
        "UPDATE booking_slots SET status = 3, hold_id = $1, hold_patient = $2, hold_expires_at = $3, hold_from_waitlist = 1, hold_request_id = NULL \
         WHERE slot_id = $4 AND start_at > $5 AND acute_reserve = 0 \
         AND ((status = 1 OR status = 3) AND (status = 1 OR (status = 3 AND hold_expires_at <= $5)))",
    )
    .bind(hold_id)
    .bind(patient)
    .bind(expires)
    .bind(slot_id)
    .bind(now_ms)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if held == 0 {
        return Ok(false);
    }
    sqlx::query("UPDATE booking_waitlist SET active = 0, offered_hold_id = $1 WHERE entry_id = $2")
        .bind(hold_id)
        .bind(entry_id)
        .execute(&mut *conn)
        .await?;
    Ok(true)
}
