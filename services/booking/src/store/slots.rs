//! Slots: publishing, withdrawing, searching, holding and taking them.

use super::*;
use econsult_runtime::idempotency::Op;

/// A search of the practice's free slots (times in milliseconds; `modality` `None` for any): of
/// one GP (`only`), or of the others (`except`); acute reserve excluded, lists without GP left
/// out.
#[derive(Clone, Copy)]
pub(crate) struct Search<'a> {
    /// Only this GP (`gp_uid`), or "" for any.
    pub only: &'a str,
    /// Not this GP (`gp_uid`), or "".
    pub except: &'a str,
    /// First start.
    pub from: i64,
    /// Starts before this.
    pub to: i64,
    /// Now (lapsed holds are free).
    pub now: i64,
    /// Wanted modality.
    pub modality: Option<Modality>,
    /// At most this many.
    pub limit: i64,
}

/// [`Search`] of the GPs other than `$3`: `$1` the practice, `$2` '' (one GP: [`SEARCH_ONE`]).
const SEARCH_OTHERS: &str = "SELECT s.slot_id, s.start_at, s.end_at, s.modality, s.acute_reserve, s.status AS slot_status, \
     s.hold_expires_at, g.gp_id, g.display_name, g.gp_uid FROM booking_slots s JOIN booking_gps g ON g.gp_uid = s.gp_uid \
     WHERE g.org_number = $1 AND $2 = '' AND g.gp_uid <> $3 AND g.list_status <> 2 \
     AND s.start_at >= $4 AND s.start_at < $5 AND s.acute_reserve = 0 \
     AND ((s.status = 1 OR s.status = 3) AND (s.status = 1 OR (s.status = 3 AND s.hold_expires_at <= $6))) \
     AND ($7 = 0 OR s.modality = $7) ORDER BY s.start_at LIMIT $8";
/// [`SEARCH_OTHERS`] for one GP: an equality the planner can walk `booking_slots_open` in start
/// order with (it stops after `limit` rows); the OR form would read all the GP's open slots and
/// sort them.
const SEARCH_ONE: &str = "SELECT s.slot_id, s.start_at, s.end_at, s.modality, s.acute_reserve, s.status AS slot_status, \
     s.hold_expires_at, g.gp_id, g.display_name, g.gp_uid FROM booking_slots s JOIN booking_gps g ON g.gp_uid = s.gp_uid \
     WHERE g.org_number = $1 AND s.gp_uid = $2 AND g.gp_uid <> $3 AND g.list_status <> 2 \
     AND s.start_at >= $4 AND s.start_at < $5 AND s.acute_reserve = 0 \
     AND ((s.status = 1 OR s.status = 3) AND (s.status = 1 OR (s.status = 3 AND s.hold_expires_at <= $6))) \
     AND ($7 = 0 OR s.modality = $7) ORDER BY s.start_at LIMIT $8";

/// The slots of practice `org` that `w` finds, each with its GP's display name.
pub(crate) async fn search(
    conn: &mut AnyConnection,
    org: &str,
    w: Search<'_>,
) -> Result<Vec<(Slot, String)>, BookingError> {
    let sql = if w.only.is_empty() {
        SEARCH_OTHERS
    } else {
        SEARCH_ONE
    };
    let rows = sqlx::query(sql)
        .bind(org)
        .bind(w.only)
        .bind(w.except)
        .bind(w.from)
        .bind(w.to)
        .bind(w.now)
        .bind(w.modality.map_or(0, Modality::code))
        .bind(w.limit)
        .fetch_all(conn)
        .await?;
    rows.iter()
        .map(|r| Ok((slot_from_row(r, w.now)?, r.try_get("display_name")?)))
        .collect()
}

/// The GP of a slot, as an appointment row and its event need it.
pub(crate) struct SlotGp {
    /// Internal GP key.
    pub gp_uid: String,
    /// Practice.
    pub org_number: String,
    /// Municipality.
    pub municipality_number: String,
    /// HPR number.
    pub hpr_number: String,
    /// The booking request the slot's hold (if any) was made for.
    pub hold_request_id: Option<String>,
}

impl SlotGp {
    /// (organisation, municipality, HPR number) of the GP's events.
    pub fn routing(&self) -> (&str, &str, &str) {
        (
            &self.org_number,
            &self.municipality_number,
            &self.hpr_number,
        )
    }
}

fn slot_gp_from_row(row: &AnyRow, now_ms: i64) -> Result<(Slot, SlotGp), BookingError> {
    let gp = SlotGp {
        gp_uid: row.try_get("gp_uid")?,
        org_number: row.try_get("org_number")?,
        municipality_number: row.try_get("municipality_number")?,
        hpr_number: row.try_get("hpr_number")?,
        hold_request_id: row.try_get("hold_request_id")?,
    };
    Ok((slot_from_row(row, now_ms)?, gp))
}

/// Whose practice a slot must belong to (slots of other practices are invisible).
#[derive(Clone, Copy)]
pub(crate) enum Practice<'a> {
    /// This organisation's.
    Org(&'a str),
    /// The practice of the list this patient is on.
    OfPatient(&'a str),
}

/// Slot `$1` of organisation `$2` with its GP ([`slot_gp_from_row`]'s columns).
const SLOT_OF_ORG: &str = "SELECT s.slot_id, s.start_at, s.end_at, s.modality, s.acute_reserve, s.status AS slot_status, \
     s.hold_expires_at, s.hold_request_id, g.gp_id, g.gp_uid, g.org_number, g.municipality_number, g.hpr_number \
     FROM booking_slots s JOIN booking_gps g ON g.gp_uid = s.gp_uid WHERE s.slot_id = $1 AND g.org_number = $2";
/// Slot `$1` of the practice of patient `$2`: a row for a patient on a list; its GP columns are
/// NULL when there is no such slot in the patient's practice.
const SLOT_OF_PATIENT: &str = "SELECT s.slot_id, s.start_at, s.end_at, s.modality, s.acute_reserve, s.status AS slot_status, \
     s.hold_expires_at, s.hold_request_id, g.gp_id, g.gp_uid, g.org_number, g.municipality_number, g.hpr_number \
     FROM booking_list_members l JOIN booking_gps lg ON lg.gp_uid = l.gp_uid \
     LEFT JOIN booking_slots s ON s.slot_id = $1 \
     LEFT JOIN booking_gps g ON g.gp_uid = s.gp_uid AND g.org_number = lg.org_number \
     WHERE l.patient_nin = $2";

/// What [`slot_with_gp`] found.
pub(crate) enum Found {
    /// The slot and its GP.
    Slot(Box<(Slot, SlotGp)>),
    /// No such slot in the practice.
    NoSlot,
    /// The patient ([`Practice::OfPatient`]) is on no list.
    NoList,
}

/// A slot of `practice` with its GP, as it stands at `now_ms`.
pub(crate) async fn slot_with_gp(
    conn: &mut AnyConnection,
    practice: Practice<'_>,
    slot_id: &str,
    now_ms: i64,
) -> Result<Found, BookingError> {
    let (sql, scope) = match practice {
        Practice::Org(org) => (SLOT_OF_ORG, org),
        Practice::OfPatient(nin) => (SLOT_OF_PATIENT, nin),
    };
    let row = sqlx::query(sql)
        .bind(slot_id)
        .bind(scope)
        .fetch_optional(conn)
        .await?;
    Ok(match (row, practice) {
        (None, Practice::OfPatient(_)) => Found::NoList,
        (None, Practice::Org(_)) => Found::NoSlot,
        (Some(r), _) if !matches!(r.try_get::<Option<String>, _>("gp_uid"), Ok(Some(_))) => {
            Found::NoSlot
        }
        (Some(r), _) => Found::Slot(Box::new(slot_gp_from_row(&r, now_ms)?)),
    })
}

/// What a take is of: a hold of the patient, or a slot (the acute reserve only for a practice).
#[derive(Clone, Copy)]
pub(crate) enum TakeOf<'a> {
    /// The patient's own hold.
    Hold(&'a str),
    /// A slot that is free or held by the patient, not of the acute reserve.
    Slot(&'a str),
    /// A slot that is free or held by the patient, the acute reserve too (a practice books).
    AnySlot(&'a str),
}

/// Takes hold `$1` of patient `$2`, unless it lapsed by `$3` (started or not: the caller tells).
const TAKE_HOLD: &str = "UPDATE booking_slots AS s SET status = 2, hold_id = NULL, hold_patient = NULL, hold_expires_at = NULL \
     WHERE s.hold_id = $1 AND s.hold_patient = $2 AND s.status = 3 AND s.hold_expires_at > $3 RETURNING slot_id";
/// Takes slot `$1` for patient `$2` before it starts (`$3` now), when takeable or held by the
/// patient, and not of the acute reserve unless `$4` is 1.
const TAKE_SLOT: &str = "UPDATE booking_slots AS s SET status = 2, hold_id = NULL, hold_patient = NULL, hold_expires_at = NULL \
     WHERE s.slot_id = $1 AND s.start_at > $3 AND (s.acute_reserve = 0 OR $4 = 1) \
     AND (((s.status = 1 OR s.status = 3) AND (s.status = 1 OR (s.status = 3 AND s.hold_expires_at <= $3))) \
     OR (s.status = 3 AND s.hold_patient = $2)) RETURNING slot_id";

/// Takes `of` for patient `nin` at `now_ms` (a statement of its own); the slot's id when taken.
pub(crate) async fn take(
    conn: &mut AnyConnection,
    of: TakeOf<'_>,
    nin: &str,
    now_ms: i64,
) -> Result<Option<String>, BookingError> {
    let q = match of {
        TakeOf::Hold(id) => sqlx::query(TAKE_HOLD).bind(id).bind(nin).bind(now_ms),
        TakeOf::Slot(id) | TakeOf::AnySlot(id) => sqlx::query(TAKE_SLOT)
            .bind(id)
            .bind(nin)
            .bind(now_ms)
            .bind(i64::from(matches!(of, TakeOf::AnySlot(_)))),
    };
    let row = q.fetch_optional(conn).await?;
    Ok(row.map(|r| r.try_get("slot_id")).transpose()?)
}

/// True when patient `nin` has a hold `hold_id` (lapsed or not).
pub(crate) async fn hold_known(
    conn: &mut AnyConnection,
    hold_id: &str,
    nin: &str,
) -> Result<bool, BookingError> {
    Ok(
        sqlx::query("SELECT slot_id FROM booking_slots WHERE hold_id = $1 AND hold_patient = $2")
            .bind(hold_id)
            .bind(nin)
            .fetch_optional(conn)
            .await?
            .is_some(),
    )
}

/// The hold patient `nin` has now (unlapsed at `now`), if any: a later HoldSlot replaced any
/// earlier one.
pub(crate) async fn current_hold(
    conn: &mut AnyConnection,
    nin: &str,
    now: i64,
) -> Result<Option<String>, BookingError> {
    let row = sqlx::query(
        "SELECT hold_id FROM booking_slots WHERE hold_patient = $1 AND status = 3 AND hold_expires_at > $2",
    )
    .bind(nin)
    .bind(now)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|r| r.try_get("hold_id")).transpose()?)
}

/// PostgreSQL, claiming the key (`$1`…`$5`, see `idempotency::begin_claiming_first`): takes hold
/// `$6` of patient `$7` at `$8` ([`TAKE_HOLD`]) when the slot has not started and is in the
/// patient's practice, and reads it with its GP.
const TAKE_HOLD_CLAIMING: &str = "WITH claim AS (INSERT INTO idempotency (scope, idem_key, request_hash, response, created_at) \
     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (scope, idem_key) DO NOTHING RETURNING 1 AS one), \
     taken AS (UPDATE booking_slots AS s SET status = 2, hold_id = NULL, hold_patient = NULL, hold_expires_at = NULL \
     WHERE s.hold_id = $6 AND s.hold_patient = $7 AND s.status = 3 AND s.hold_expires_at > $8 AND s.start_at > $8 \
     AND (SELECT g.org_number FROM booking_gps g WHERE g.gp_uid = s.gp_uid) = (SELECT lg.org_number FROM booking_list_members l \
     JOIN booking_gps lg ON lg.gp_uid = l.gp_uid WHERE l.patient_nin = $7) AND EXISTS (SELECT 1 FROM claim) \
     RETURNING s.slot_id, s.start_at, s.end_at, s.modality, s.acute_reserve, s.status, s.hold_expires_at, s.hold_request_id, s.gp_uid) \
     SELECT c.claimed, s.slot_id, s.start_at, s.end_at, s.modality, s.acute_reserve, s.status AS slot_status, s.hold_expires_at, \
     s.hold_request_id, g.gp_id, g.gp_uid, g.org_number, g.municipality_number, g.hpr_number \
     FROM (SELECT count(*) AS claimed FROM claim) c LEFT JOIN (taken s JOIN booking_gps g ON g.gp_uid = s.gp_uid) ON true";
/// [`TAKE_HOLD_CLAIMING`] for slot `$6` ([`TAKE_SLOT`], not of the acute reserve).
const TAKE_SLOT_CLAIMING: &str = "WITH claim AS (INSERT INTO idempotency (scope, idem_key, request_hash, response, created_at) \
     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (scope, idem_key) DO NOTHING RETURNING 1 AS one), \
     taken AS (UPDATE booking_slots AS s SET status = 2, hold_id = NULL, hold_patient = NULL, hold_expires_at = NULL \
     WHERE s.slot_id = $6 AND s.start_at > $8 AND s.acute_reserve = 0 \
     AND (((s.status = 1 OR s.status = 3) AND (s.status = 1 OR (s.status = 3 AND s.hold_expires_at <= $8))) \
     OR (s.status = 3 AND s.hold_patient = $7)) \
     AND (SELECT g.org_number FROM booking_gps g WHERE g.gp_uid = s.gp_uid) = (SELECT lg.org_number FROM booking_list_members l \
     JOIN booking_gps lg ON lg.gp_uid = l.gp_uid WHERE l.patient_nin = $7) AND EXISTS (SELECT 1 FROM claim) \
     RETURNING s.slot_id, s.start_at, s.end_at, s.modality, s.acute_reserve, s.status, s.hold_expires_at, s.hold_request_id, s.gp_uid) \
     SELECT c.claimed, s.slot_id, s.start_at, s.end_at, s.modality, s.acute_reserve, s.status AS slot_status, s.hold_expires_at, \
     s.hold_request_id, g.gp_id, g.gp_uid, g.org_number, g.municipality_number, g.hpr_number \
     FROM (SELECT count(*) AS claimed FROM claim) c LEFT JOIN (taken s JOIN booking_gps g ON g.gp_uid = s.gp_uid) ON true";
/// PostgreSQL, the key claimed already (the claim's five values bound, nothing written): takes
/// slot `$6` of organisation `$9` for patient `$7` at `$8` ([`TAKE_SLOT`], the acute reserve
/// too) and reads it with its GP.
const TAKE_SLOT_OF_ORG_CLAIMED: &str = "WITH claim AS (SELECT 1 AS one FROM (VALUES ($1, $2, $3, $4, $5)) \
     AS v (scope, idem_key, request_hash, response, created_at)), \
     taken AS (UPDATE booking_slots AS s SET status = 2, hold_id = NULL, hold_patient = NULL, hold_expires_at = NULL \
     WHERE s.slot_id = $6 AND s.start_at > $8 \
     AND (((s.status = 1 OR s.status = 3) AND (s.status = 1 OR (s.status = 3 AND s.hold_expires_at <= $8))) \
     OR (s.status = 3 AND s.hold_patient = $7)) \
     AND (SELECT g.org_number FROM booking_gps g WHERE g.gp_uid = s.gp_uid) = $9 AND EXISTS (SELECT 1 FROM claim) \
     RETURNING s.slot_id, s.start_at, s.end_at, s.modality, s.acute_reserve, s.status, s.hold_expires_at, s.hold_request_id, s.gp_uid) \
     SELECT c.claimed, s.slot_id, s.start_at, s.end_at, s.modality, s.acute_reserve, s.status AS slot_status, s.hold_expires_at, \
     s.hold_request_id, g.gp_id, g.gp_uid, g.org_number, g.municipality_number, g.hpr_number \
     FROM (SELECT count(*) AS claimed FROM claim) c LEFT JOIN (taken s JOIN booking_gps g ON g.gp_uid = s.gp_uid) ON true";

/// What a first statement that may claim the call's key returned.
pub(crate) enum Claimed<T> {
    /// The statement's own outcome, with `claimed` to hand to `Op::claimed`.
    Row {
        /// The claim's count.
        claimed: i64,
        /// What the statement did.
        outcome: T,
    },
    /// No one-statement form fits (this practice, this state of the key): take step by step.
    Unfit,
}

/// PostgreSQL: takes `of` of `practice` for patient `nin` at `now_ms` and reads it with its GP
/// in one statement that also claims the call's key when it is still to be claimed; `outcome`
/// is `None` when it took nothing.
pub(crate) async fn take_and_read(
    op: &mut Op,
    practice: Practice<'_>,
    of: TakeOf<'_>,
    nin: &str,
    now_ms: i64,
) -> Result<Claimed<Option<(Slot, SlotGp)>>, BookingError> {
    let claiming = op.claims_in_statement();
    let q = match (practice, of, claiming) {
        (Practice::OfPatient(p), TakeOf::Hold(id), true) if p == nin => {
            op.bind_claim(sqlx::query(TAKE_HOLD_CLAIMING)).bind(id)
        }
        (Practice::OfPatient(p), TakeOf::Slot(id), true) if p == nin => {
            op.bind_claim(sqlx::query(TAKE_SLOT_CLAIMING)).bind(id)
        }
        (Practice::Org(org), TakeOf::AnySlot(id), false) => op
            .bind_claim(sqlx::query(TAKE_SLOT_OF_ORG_CLAIMED))
            .bind(id)
            .bind(nin)
            .bind(now_ms)
            .bind(org),
        _ => return Ok(Claimed::Unfit),
    };
    let q = match practice {
        Practice::OfPatient(_) => q.bind(nin).bind(now_ms),
        Practice::Org(_) => q,
    };
    let row = q.fetch_one(&mut *op.tx).await?;
    let claimed = row.try_get("claimed")?;
    let outcome = match row.try_get::<Option<String>, _>("slot_id")? {
        None => None,
        Some(_) => Some(slot_gp_from_row(&row, now_ms)?),
    };
    Ok(Claimed::Row { claimed, outcome })
}

/// A new hold: `hold_id` of patient `nin` on `slot_id` until `expires`, for booking request
/// `request` (if known), at `now`.
pub(crate) struct NewHold<'a> {
    /// The hold's id.
    pub hold_id: &'a str,
    /// The patient.
    pub nin: &'a str,
    /// Expiry (ms).
    pub expires: i64,
    /// The booking request it answers.
    pub request: Option<&'a str>,
    /// The slot.
    pub slot_id: &'a str,
    /// Now (ms).
    pub now: i64,
}

/// PostgreSQL, claiming the key (`$1`…`$5`): in one round trip the hold (`$6` hold id, `$7`
/// patient, `$8` expiry, `$9` request, `$10` slot, `$11` now; only of a takeable, non-acute slot
/// of the patient's practice that has not started, read back with its GP) and the release of the
/// patient's other own holds (not offered from the waitlist). The two updates never touch the
/// same row, so their shared snapshot changes nothing. A row per released hold, or one with
/// released_id NULL; slot_id NULL when the slot was not held.
const HOLD_CLAIMING: &str = "WITH claim AS (INSERT INTO idempotency (scope, idem_key, request_hash, response, created_at) \
     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (scope, idem_key) DO NOTHING RETURNING 1 AS one), \
     held AS (UPDATE booking_slots AS s SET status = 3, hold_id = $6, hold_patient = $7, hold_expires_at = $8, \
     hold_from_waitlist = 0, hold_request_id = $9 \
     WHERE s.slot_id = $10 AND s.start_at > $11 AND s.acute_reserve = 0 \
     AND ((s.status = 1 OR s.status = 3) AND (s.status = 1 OR (s.status = 3 AND s.hold_expires_at <= $11))) \
     AND (SELECT g.org_number FROM booking_gps g WHERE g.gp_uid = s.gp_uid) = (SELECT lg.org_number FROM booking_list_members l \
     JOIN booking_gps lg ON lg.gp_uid = l.gp_uid WHERE l.patient_nin = $7) AND EXISTS (SELECT 1 FROM claim) \
     RETURNING s.slot_id, s.start_at, s.end_at, s.modality, s.acute_reserve, s.status, s.hold_expires_at, s.hold_request_id, s.gp_uid), \
     released AS (UPDATE booking_slots SET status = 1, hold_id = NULL, hold_patient = NULL, hold_expires_at = NULL, hold_request_id = NULL \
     WHERE hold_patient = $7 AND status = 3 AND hold_from_waitlist = 0 AND slot_id <> $10 AND EXISTS (SELECT 1 FROM claim) \
     RETURNING slot_id) \
     SELECT c.claimed, s.slot_id, s.start_at, s.end_at, s.modality, s.acute_reserve, s.status AS slot_status, \
     s.hold_expires_at, s.hold_request_id, g.gp_id, r.slot_id AS released_id FROM (SELECT count(*) AS claimed FROM claim) c \
     LEFT JOIN (held s JOIN booking_gps g ON g.gp_uid = s.gp_uid LEFT JOIN released r ON true) ON true";

/// PostgreSQL: [`HOLD_CLAIMING`]. `outcome` is the held slot and the released holds' slots,
/// `None` when nothing was held; `Unfit` when the key is claimed already.
pub(crate) async fn hold_claiming(
    op: &mut Op,
    h: &NewHold<'_>,
) -> Result<Claimed<Option<(Slot, Vec<String>)>>, BookingError> {
    if !op.claims_in_statement() {
        return Ok(Claimed::Unfit);
    }
    let rows = op
        .bind_claim(sqlx::query(HOLD_CLAIMING))
        .bind(h.hold_id)
        .bind(h.nin)
        .bind(h.expires)
        .bind(h.request)
        .bind(h.slot_id)
        .bind(h.now)
        .fetch_all(&mut *op.tx)
        .await?;
    let claimed = match rows.first() {
        Some(row) => row.try_get("claimed")?,
        None => 0,
    };
    let outcome = match rows.first() {
        Some(row) if row.try_get::<Option<String>, _>("slot_id")?.is_some() => {
            let mut released = Vec::new();
            for r in &rows {
                released.extend(r.try_get::<Option<String>, _>("released_id")?);
            }
            Some((slot_from_row(row, h.now)?, released))
        }
        _ => None,
    };
    Ok(Claimed::Row { claimed, outcome })
}

/// Releases the patient's own holds (not offered from the waitlist) except on `slot_id`;
/// returns their slots.
pub(crate) async fn release_holds_of(
    conn: &mut AnyConnection,
    nin: &str,
    slot_id: &str,
) -> Result<Vec<String>, BookingError> {
    let rows = sqlx::query(
        "UPDATE booking_slots SET status = 1, hold_id = NULL, hold_patient = NULL, hold_expires_at = NULL, hold_request_id = NULL \
         WHERE hold_patient = $1 AND status = 3 AND hold_from_waitlist = 0 AND slot_id <> $2 RETURNING slot_id",
    )
    .bind(nin)
    .bind(slot_id)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| Ok(r.try_get::<String, _>("slot_id")?))
        .collect()
}

/// Holds `h.slot_id` when takeable, not of the acute reserve and not started; true when held.
pub(crate) async fn hold(conn: &mut AnyConnection, h: &NewHold<'_>) -> Result<bool, BookingError> {
    let row = sqlx::query(
        "UPDATE booking_slots AS s SET status = 3, hold_id = $1, hold_patient = $2, hold_expires_at = $3, \
         hold_from_waitlist = 0, hold_request_id = $4 \
         WHERE s.slot_id = $5 AND s.start_at > $6 AND s.acute_reserve = 0 \
         AND ((s.status = 1 OR s.status = 3) AND (s.status = 1 OR (s.status = 3 AND s.hold_expires_at <= $6))) \
         RETURNING slot_id",
    )
    .bind(h.hold_id)
    .bind(h.nin)
    .bind(h.expires)
    .bind(h.request)
    .bind(h.slot_id)
    .bind(h.now)
    .fetch_optional(conn)
    .await?;
    Ok(row.is_some())
}

/// (start, end) of the slots of `gp_uid` not withdrawn that overlap `[lo, hi)`.
pub(crate) async fn overlapping(
    conn: &mut AnyConnection,
    gp_uid: &str,
    lo: i64,
    hi: i64,
) -> Result<Vec<(i64, i64)>, BookingError> {
    let rows = sqlx::query(
        "SELECT start_at, end_at FROM booking_slots WHERE gp_uid = $1 AND status <> 4 AND start_at < $2 AND end_at > $3",
    )
    .bind(gp_uid)
    .bind(hi)
    .bind(lo)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .iter()
        .map(|r| Ok((r.try_get("start_at")?, r.try_get("end_at")?)))
        .collect::<Result<_, sqlx::Error>>()?)
}

/// Inserts the free slot `slot` of `gp_uid`.
pub(crate) async fn insert_slot(
    conn: &mut AnyConnection,
    gp_uid: &str,
    slot: &Slot,
    created_at: i64,
) -> Result<(), BookingError> {
    sqlx::query(
        "INSERT INTO booking_slots (slot_id, gp_uid, start_at, end_at, modality, acute_reserve, status, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, 1, $7)",
    )
    .bind(&slot.slot_id)
    .bind(gp_uid)
    .bind(slot.start.timestamp_millis())
    .bind(slot.end.timestamp_millis())
    .bind(slot.modality.code())
    .bind(i64::from(slot.acute_reserve))
    .bind(created_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Withdraws slot `slot_id` of `org` when takeable at `now_ms`; true when withdrawn.
pub(crate) async fn withdraw(
    conn: &mut AnyConnection,
    slot_id: &str,
    org: &str,
    now_ms: i64,
) -> Result<bool, BookingError> {
    let n = sqlx::query(
        "UPDATE booking_slots SET status = 4, hold_id = NULL, hold_patient = NULL, hold_expires_at = NULL \
         WHERE slot_id = $1 AND gp_uid IN (SELECT gp_uid FROM booking_gps WHERE org_number = $2) \
         AND ((status = 1 OR status = 3) AND (status = 1 OR (status = 3 AND hold_expires_at <= $3)))",
    )
    .bind(slot_id)
    .bind(org)
    .bind(now_ms)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(n > 0)
}

/// Slot `slot_id` of `org` as it stands at `now_ms`.
pub(crate) async fn slot_in_org(
    conn: &mut AnyConnection,
    slot_id: &str,
    org: &str,
    now_ms: i64,
) -> Result<Option<Slot>, BookingError> {
    let row = sqlx::query(
        "SELECT s.slot_id, s.start_at, s.end_at, s.modality, s.acute_reserve, s.status AS slot_status, \
         s.hold_expires_at, s.hold_request_id, g.gp_id FROM booking_slots s JOIN booking_gps g ON g.gp_uid = s.gp_uid \
         WHERE s.slot_id = $1 AND g.org_number = $2",
    )
    .bind(slot_id)
    .bind(org)
    .fetch_optional(conn)
    .await?;
    row.map(|r| slot_from_row(&r, now_ms)).transpose()
}

/// Sets the status of slot `slot_id` to `to`, when it is `from` (any status: `None`).
pub(crate) async fn set_slot_status(
    conn: &mut AnyConnection,
    slot_id: &str,
    to: SlotStatus,
    from: Option<SlotStatus>,
) -> Result<(), BookingError> {
    match from {
        None => sqlx::query("UPDATE booking_slots SET status = $1 WHERE slot_id = $2")
            .bind(to.code())
            .bind(slot_id),
        Some(from) => {
            sqlx::query("UPDATE booking_slots SET status = $1 WHERE slot_id = $2 AND status = $3")
                .bind(to.code())
                .bind(slot_id)
                .bind(from.code())
        }
    }
    .execute(conn)
    .await?;
    Ok(())
}

/// The patient's live holds at `now_ms`.
pub(crate) async fn holds_of(
    conn: &mut AnyConnection,
    nin: &str,
    now_ms: i64,
) -> Result<Vec<Hold>, BookingError> {
    let rows = sqlx::query(
        "SELECT s.slot_id, s.start_at, s.end_at, s.modality, s.acute_reserve, s.status AS slot_status, \
         s.hold_expires_at, s.hold_request_id, g.gp_id, s.hold_id, s.hold_from_waitlist \
         FROM booking_slots s JOIN booking_gps g ON g.gp_uid = s.gp_uid \
         WHERE s.hold_patient = $1 AND s.status = 3 AND s.hold_expires_at > $2 ORDER BY s.start_at",
    )
    .bind(nin)
    .bind(now_ms)
    .fetch_all(conn)
    .await?;
    let mut holds = Vec::with_capacity(rows.len());
    for r in &rows {
        holds.push(Hold {
            hold_id: r.try_get("hold_id")?,
            slot: slot_from_row(r, now_ms)?,
            expires_at: from_ms(r.try_get("hold_expires_at")?),
            from_waitlist: r.try_get::<i64, _>("hold_from_waitlist")? != 0,
        });
    }
    Ok(holds)
}

/// Frees up to 200 holds lapsed at `now_ms`; returns their slots.
pub(crate) async fn free_lapsed_holds(
    conn: &mut AnyConnection,
    now_ms: i64,
) -> Result<Vec<String>, BookingError> {
    let rows = sqlx::query(
        "UPDATE booking_slots SET status = 1, hold_id = NULL, hold_patient = NULL, hold_expires_at = NULL, hold_request_id = NULL \
         WHERE slot_id IN (SELECT slot_id FROM booking_slots WHERE status = 3 AND hold_expires_at <= $1 LIMIT 200) RETURNING slot_id",
    )
    .bind(now_ms)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| Ok(r.try_get::<String, _>("slot_id")?))
        .collect()
}
