//! The statements of [`crate::directory`], the read-only lookups other services make: GPs and
//! list membership, free slots, closures, appointments, opening hours and list figures. Each
//! statement is the same on PostgreSQL and SQLite; rows come back as the directory's types.

use crate::directory::{
    AppointmentRef, AppointmentStatus, FreeSlot, GpRef, ListFigures, Modality, OpeningHours,
};
use crate::domain::ListStatus;
use sqlx::AnyConnection;
use sqlx::Row as _;
use sqlx::any::AnyRow;

/// The GP of the list of patient `$1` ([`gp_ref`]'s columns).
const PATIENT_GP: &str = "SELECT g.gp_id, g.hpr_number, g.display_name, g.practice_name, g.org_number, g.municipality_number, g.list_status \
     FROM booking_list_members l JOIN booking_gps g ON g.gp_uid = l.gp_uid WHERE l.patient_nin = $1";

/// [`PATIENT_GP`] with the closure days of the GP's practice, comma-separated, as `closures`.
const PATIENT_GP_WITH_CLOSURES: &str = "SELECT g.gp_id, g.hpr_number, g.display_name, g.practice_name, g.org_number, g.municipality_number, g.list_status, \
     (SELECT string_agg(c.closed_on, ',') FROM booking_closures c WHERE c.org_number = g.org_number) AS closures \
     FROM booking_list_members l JOIN booking_gps g ON g.gp_uid = l.gp_uid WHERE l.patient_nin = $1";

/// GP `$2` of organisation `$1` ([`gp_ref`]'s columns).
const GP: &str = "SELECT g.gp_id, g.hpr_number, g.display_name, g.practice_name, g.org_number, g.municipality_number, g.list_status \
     FROM booking_gps g WHERE g.org_number = $1 AND g.gp_id = $2";

/// The first `$4` free (or lapsed-hold) non-acute slots of GP `$2` of organisation `$1` starting
/// after `$3`.
const FREE_SLOTS: &str = "SELECT s.slot_id, s.start_at, s.end_at FROM booking_slots s JOIN booking_gps g ON g.gp_uid = s.gp_uid \
     WHERE g.org_number = $1 AND g.gp_id = $2 AND s.start_at > $3 AND s.acute_reserve = 0 \
     AND (s.status = 1 OR (s.status = 3 AND s.hold_expires_at <= $3)) ORDER BY s.start_at, s.slot_id LIMIT $4";

/// The closure days of organisation `$1`.
const CLOSURES: &str = "SELECT closed_on FROM booking_closures WHERE org_number = $1";

/// The end of the target window of patient `$2`'s open booking request `$1`.
const REQUEST_WINDOW_END: &str = "SELECT deadline_end FROM booking_episodes WHERE request_id = $1 AND patient_nin = $2 AND closed_at IS NULL";

/// Appointment `$1` with its slot and GP.
const APPOINTMENT: &str = "SELECT a.appointment_id, a.patient_nin, a.status, s.start_at, s.end_at, s.modality, \
     g.gp_id, g.hpr_number, g.org_number, g.municipality_number, g.display_name, g.practice_name \
     FROM booking_appointments a JOIN booking_slots s ON s.slot_id = a.slot_id \
     JOIN booking_gps g ON g.gp_uid = s.gp_uid WHERE a.appointment_id = $1";

/// The patient of waitlist entry `$1` (the waitlist or the priority waitlist).
const WAITLIST_PATIENT: &str = "SELECT patient_nin FROM booking_waitlist WHERE entry_id = $1 \
     UNION ALL SELECT patient_nin FROM booking_priority_waitlist WHERE entry_id = $1";

/// The patients' phone number of organisation `$1`.
const PRACTICE_PHONE: &str = "SELECT phone FROM booking_practice_phones WHERE org_number = $1";

/// The opening hours of organisation `$1`, in order.
const OPENING_HOURS: &str = "SELECT weekday, opens_minute, closes_minute FROM booking_opening_hours WHERE org_number = $1 \
     ORDER BY weekday, opens_minute";

/// GP lists and vacant ones of organisation `$1` and municipality `$2` ('' = all).
const LISTS: &str = "SELECT COUNT(*) AS lists, CAST(COALESCE(SUM(CASE WHEN g.list_status = 2 THEN 1 ELSE 0 END), 0) AS BIGINT) AS vacant \
     FROM booking_gps g WHERE ($1 = '' OR g.org_number = $1) AND ($2 = '' OR g.municipality_number = $2)";

/// Persons on vacant lists of organisation `$1` and municipality `$2` ('' = all).
const PERSONS_WITHOUT_GP: &str = "SELECT COUNT(*) FROM booking_list_members l JOIN booking_gps g ON g.gp_uid = l.gp_uid \
     WHERE g.list_status = 2 AND ($1 = '' OR g.org_number = $1) AND ($2 = '' OR g.municipality_number = $2)";

/// Active waitlist entries of organisation `$1` and municipality `$2` ('' = all).
const WAITLIST_ACTIVE: &str = "SELECT COUNT(*) FROM booking_waitlist w JOIN booking_gps g ON g.gp_uid = w.gp_uid \
     WHERE w.active = 1 AND ($1 = '' OR g.org_number = $1) AND ($2 = '' OR g.municipality_number = $2)";

/// [`LISTS`], [`PERSONS_WITHOUT_GP`] and [`WAITLIST_ACTIVE`] per organisation and municipality.
const LISTS_BY_PLACE: &str = "SELECT g.org_number, g.municipality_number, COUNT(*) AS n, CAST(COALESCE(SUM(CASE WHEN g.list_status = 2 THEN 1 ELSE 0 END), 0) AS BIGINT) AS vacant \
     FROM booking_gps g WHERE ($1 = '' OR g.org_number = $1) AND ($2 = '' OR g.municipality_number = $2) \
     GROUP BY g.org_number, g.municipality_number";
const PERSONS_WITHOUT_GP_BY_PLACE: &str = "SELECT g.org_number, g.municipality_number, COUNT(*) AS n FROM booking_list_members l JOIN booking_gps g ON g.gp_uid = l.gp_uid \
     WHERE g.list_status = 2 AND ($1 = '' OR g.org_number = $1) AND ($2 = '' OR g.municipality_number = $2) \
     GROUP BY g.org_number, g.municipality_number";
const WAITLIST_ACTIVE_BY_PLACE: &str = "SELECT g.org_number, g.municipality_number, COUNT(*) AS n FROM booking_waitlist w JOIN booking_gps g ON g.gp_uid = w.gp_uid \
     WHERE w.active = 1 AND ($1 = '' OR g.org_number = $1) AND ($2 = '' OR g.municipality_number = $2) \
     GROUP BY g.org_number, g.municipality_number";

/// Persons on GP lists (staffed or vacant) per municipality of the list.
const PERSONS_BY_MUNICIPALITY: &str = "SELECT g.municipality_number, COUNT(*) AS persons \
     FROM booking_list_members l JOIN booking_gps g ON g.gp_uid = l.gp_uid GROUP BY g.municipality_number";

/// A stored code that names no variant of its enum (a row written by a newer version).
fn decode_error(column: &str) -> sqlx::Error {
    sqlx::Error::ColumnDecode {
        index: column.to_owned(),
        source: format!("unknown {column} code").into(),
    }
}

fn gp_ref(r: &AnyRow) -> Result<GpRef, sqlx::Error> {
    Ok(GpRef {
        gp_id: r.try_get("gp_id")?,
        hpr_number: r.try_get("hpr_number")?,
        display_name: r.try_get("display_name")?,
        practice_name: r.try_get("practice_name")?,
        org_number: r.try_get("org_number")?,
        municipality_number: r.try_get("municipality_number")?,
        vacant: ListStatus::from_code(r.try_get("list_status")?) == Some(ListStatus::Vacant),
    })
}

/// The GP of the list of patient `nin`, if any.
pub(crate) async fn patient_gp(
    conn: &mut AnyConnection,
    nin: &str,
) -> Result<Option<GpRef>, sqlx::Error> {
    let row = sqlx::query(PATIENT_GP)
        .bind(nin)
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(gp_ref).transpose()
}

/// [`patient_gp`] and the closure days of the GP's practice (as [`closures`] reads them), in
/// one statement.
pub(crate) async fn patient_gp_with_closures(
    conn: &mut AnyConnection,
    nin: &str,
) -> Result<Option<(GpRef, Vec<chrono::NaiveDate>)>, sqlx::Error> {
    let Some(row) = sqlx::query(PATIENT_GP_WITH_CLOSURES)
        .bind(nin)
        .fetch_optional(conn)
        .await?
    else {
        return Ok(None);
    };
    let days =
        crate::directory::closure_days(row.try_get::<Option<String>, _>("closures")?.as_deref());
    Ok(Some((gp_ref(&row)?, days)))
}

/// GP `gp_id` of organisation `org_number`, if any.
pub(crate) async fn gp(
    conn: &mut AnyConnection,
    org_number: &str,
    gp_id: &str,
) -> Result<Option<GpRef>, sqlx::Error> {
    let row = sqlx::query(GP)
        .bind(org_number)
        .bind(gp_id)
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(gp_ref).transpose()
}

/// [`FREE_SLOTS`].
pub(crate) async fn free_slots(
    conn: &mut AnyConnection,
    org_number: &str,
    gp_id: &str,
    from_ms: i64,
    limit: i64,
) -> Result<Vec<FreeSlot>, sqlx::Error> {
    let rows = sqlx::query(FREE_SLOTS)
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

/// When the target window of `nin`'s open booking request `request_id` ends (ms), if stored.
pub(crate) async fn request_window_end(
    conn: &mut AnyConnection,
    request_id: &str,
    nin: &str,
) -> Result<Option<i64>, sqlx::Error> {
    let row = sqlx::query(REQUEST_WINDOW_END)
        .bind(request_id)
        .bind(nin)
        .fetch_optional(conn)
        .await?;
    Ok(match row {
        Some(r) => r.try_get("deadline_end")?,
        None => None,
    })
}

/// The patient (identity number) of waitlist entry `entry_id`, if stored.
pub(crate) async fn waitlist_patient(
    conn: &mut AnyConnection,
    entry_id: &str,
) -> Result<Option<String>, sqlx::Error> {
    let row = sqlx::query(WAITLIST_PATIENT)
        .bind(entry_id)
        .fetch_optional(conn)
        .await?;
    row.map(|r| r.try_get("patient_nin")).transpose()
}

/// The closure days of organisation `org_number`; a stored day that is no ISO date is skipped.
pub(crate) async fn closures(
    conn: &mut AnyConnection,
    org_number: &str,
) -> Result<Vec<chrono::NaiveDate>, sqlx::Error> {
    let rows = sqlx::query(CLOSURES)
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

/// Appointment `appointment_id` with its slot and GP, if any.
pub(crate) async fn appointment(
    conn: &mut AnyConnection,
    appointment_id: &str,
) -> Result<Option<AppointmentRef>, sqlx::Error> {
    let row = sqlx::query(APPOINTMENT)
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
            gp_display_name: r.try_get("display_name")?,
            practice_name: r.try_get("practice_name")?,
        })
    })
    .transpose()
}

/// The phone number and opening hours of organisation `org_number`.
pub(crate) async fn opening_hours(
    conn: &mut AnyConnection,
    org_number: &str,
) -> Result<OpeningHours, sqlx::Error> {
    let phone: Option<String> = sqlx::query_scalar(PRACTICE_PHONE)
        .bind(org_number)
        .fetch_optional(&mut *conn)
        .await?;
    let rows = sqlx::query(OPENING_HOURS)
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

/// The [`ListFigures`] of organisation `org` and municipality `municipality` ('' = all).
pub(crate) async fn list_figures(
    conn: &mut AnyConnection,
    org: &str,
    municipality: &str,
) -> Result<ListFigures, sqlx::Error> {
    let lists = sqlx::query(LISTS)
        .bind(org)
        .bind(municipality)
        .fetch_one(&mut *conn)
        .await?;
    let persons: i64 = sqlx::query_scalar(PERSONS_WITHOUT_GP)
        .bind(org)
        .bind(municipality)
        .fetch_one(&mut *conn)
        .await?;
    let waitlist: i64 = sqlx::query_scalar(WAITLIST_ACTIVE)
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

/// Persons on GP lists per municipality number (municipalities without any left out).
pub(crate) async fn persons_by_municipality(
    conn: &mut AnyConnection,
) -> Result<Vec<(String, u64)>, sqlx::Error> {
    let rows = sqlx::query(PERSONS_BY_MUNICIPALITY).fetch_all(conn).await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get("municipality_number")?,
                r.try_get::<i64, _>("persons")? as u64,
            ))
        })
        .collect()
}

/// The [`ListFigures`] of organisation `org` and municipality `municipality` ('' = all) per
/// (organisation, municipality).
pub(crate) async fn list_figures_by_place(
    conn: &mut AnyConnection,
    org: &str,
    municipality: &str,
) -> Result<Vec<((String, String), ListFigures)>, sqlx::Error> {
    let mut out: std::collections::BTreeMap<(String, String), ListFigures> = Default::default();
    let place = |r: &AnyRow| -> Result<(String, String), sqlx::Error> {
        Ok((r.try_get("org_number")?, r.try_get("municipality_number")?))
    };
    for sql in [
        LISTS_BY_PLACE,
        PERSONS_WITHOUT_GP_BY_PLACE,
        WAITLIST_ACTIVE_BY_PLACE,
    ] {
        let rows = sqlx::query(sql)
            .bind(org)
            .bind(municipality)
            .fetch_all(&mut *conn)
            .await?;
        for r in &rows {
            let f = out.entry(place(r)?).or_default();
            let n = r.try_get::<i64, _>("n")? as u64;
            match sql {
                LISTS_BY_PLACE => {
                    f.lists = n;
                    f.lists_without_gp = r.try_get::<i64, _>("vacant")? as u64;
                }
                PERSONS_WITHOUT_GP_BY_PLACE => f.persons_on_lists_without_gp = n,
                _ => f.waitlist_active = n,
            }
        }
    }
    Ok(out.into_iter().collect())
}
