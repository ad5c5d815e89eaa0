//! Booking logic over the shared storage. Every mutation runs in one write transaction that
//! also writes its outbox events, its audit rows and its idempotency record; double booking is
//! prevented by conditional updates and the `booking_appointments_one_per_slot` unique index.

use crate::domain::*;
use crate::episodes::{self, Channel, Episode, EpisodeMetrics, ListedAt, Pending};
use crate::error::BookingError;
use chrono::{DateTime, Duration, NaiveDate, Utc};
use econsult_calendar::{Calendar, oslo_date};
use econsult_runtime::audit::{self, Access};
use econsult_runtime::auth::Caller;
use econsult_runtime::clock::from_ms;
use econsult_runtime::db::{Backend, Defer, Tx, is_unique_violation};
use econsult_runtime::events::{AppointmentChanged, ListMoved, topics};
use econsult_runtime::idempotency::{self, Begun, CLAIM_ROW, CLAIMED, IdempotencyError, Op};
use econsult_runtime::outbox::{self, NewEvent};
use econsult_runtime::platform::Platform;
use serde::{Serialize, de::DeserializeOwned};
use sqlx::Row as _;
use sqlx::any::AnyRow;

/// Tunables.
#[derive(Debug, Clone)]
pub struct BookingConfig {
    /// How long a patient's hold lasts.
    pub hold_ttl: Duration,
    /// How long a hold offered from the waitlist lasts.
    pub waitlist_hold_ttl: Duration,
    /// How often the booking requests of searches are written (a crash loses at most this
    /// much of search-only requests, never one that was held or booked).
    pub episode_flush_interval: std::time::Duration,
}

impl Default for BookingConfig {
    fn default() -> Self {
        Self {
            hold_ttl: Duration::minutes(5),
            waitlist_hold_ttl: Duration::hours(2),
            episode_flush_interval: std::time::Duration::from_secs(1),
        }
    }
}

/// The booking service logic.
#[derive(Clone)]
pub struct Booking {
    p: Platform,
    cfg: BookingConfig,
    /// Searches' booking requests not written yet.
    pending: Pending,
    metrics: EpisodeMetrics,
}

pub(crate) mod rpc {
    pub const UPDATE_LIST: &str = "/econsult.booking.v1.BookingService/UpdateList";
    pub const MARK: &str = "/econsult.booking.v1.BookingService/MarkAppointment";
    pub const BOOK_FOR_PATIENT: &str = "/econsult.booking.v1.BookingService/BookForPatient";
    pub const CANCEL_BY_PRACTICE: &str = "/econsult.booking.v1.BookingService/CancelByPractice";
    pub const WATCH: &str = "/econsult.booking.v1.BookingService/WatchBookings";
    pub const FIND: &str = "/econsult.booking.v1.BookingService/FindSlots";
    pub const HOLD: &str = "/econsult.booking.v1.BookingService/HoldSlot";
    pub const BOOK: &str = "/econsult.booking.v1.BookingService/Book";
    pub const CANCEL: &str = "/econsult.booking.v1.BookingService/Cancel";
    pub const RESCHEDULE: &str = "/econsult.booking.v1.BookingService/Reschedule";
    pub const LIST_MINE: &str = "/econsult.booking.v1.BookingService/ListMyBookings";
    pub const JOIN_WAITLIST: &str = "/econsult.booking.v1.BookingService/JoinWaitlist";
    pub const LEAVE_WAITLIST: &str = "/econsult.booking.v1.BookingService/LeaveWaitlist";
    pub const MOVE_LISTING: &str = "/econsult.booking.v1.BookingService/MoveListing";
}

const GP_COLS: &str = "g.gp_uid, g.gp_id, g.hpr_number, g.display_name, g.org_number, g.municipality_number, \
     g.list_capacity, g.list_status, (SELECT COUNT(*) FROM booking_list_members m WHERE m.gp_uid = g.gp_uid) AS list_size";
const SLOT_COLS: &str = "s.slot_id, s.start_at, s.end_at, s.modality, s.acute_reserve, s.status AS slot_status, \
     s.hold_expires_at, s.hold_request_id, g.gp_id";
const APPT_SELECT: &str = "SELECT a.appointment_id, a.status, a.patient_nin, a.reason, a.booked_at, a.cancelled_at, \
     a.cancelled_by, a.late_cancellation, a.rescheduled_from, s.slot_id, s.start_at, s.end_at, s.modality, \
     s.acute_reserve, s.status AS slot_status, s.hold_expires_at, g.gp_id, g.org_number, g.municipality_number \
     FROM booking_appointments a JOIN booking_slots s ON s.slot_id = a.slot_id JOIN booking_gps g ON g.gp_uid = a.gp_uid";
/// A slot that can be taken at `$now`: free, or held by a hold that has lapsed. The first term is
/// implied by the second; it is stated so both engines use the partial index `booking_slots_open`.
const TAKEABLE: &str = "((s.status = 1 OR s.status = 3) AND (s.status = 1 OR (s.status = 3 AND s.hold_expires_at <= $NOW)))";

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
    })
}

/// The working-day calendar of a row with a `closures` column (comma-separated closure days).
fn calendar_from_row(r: &AnyRow) -> Result<Calendar, BookingError> {
    let closures: Option<String> = r.try_get("closures")?;
    Ok(Calendar::with_closures(
        closures
            .iter()
            .flat_map(|c| c.split(','))
            .filter_map(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok()),
    ))
}

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

fn appt_from_row(r: &AnyRow, now_ms: i64) -> Result<Appointment, BookingError> {
    Ok(Appointment {
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
    })
}

/// Organisation and municipality of an appointment row, for events.
fn appt_routing(r: &AnyRow) -> Result<(String, String), BookingError> {
    Ok((r.try_get("org_number")?, r.try_get("municipality_number")?))
}

fn changed(a: &Appointment, org: &str, municipality: &str) -> AppointmentChanged {
    AppointmentChanged {
        appointment_id: a.appointment_id.clone(),
        slot_id: a.slot.slot_id.clone(),
        gp_id: a.gp_id.clone(),
        org_number: org.to_owned(),
        municipality_number: municipality.to_owned(),
        patient_nin: a.patient_nin.clone(),
        modality: a.slot.modality.as_str().to_owned(),
        start_ms: a.slot.start.timestamp_millis(),
        end_ms: a.slot.end.timestamp_millis(),
        status: a.status.fhir().to_owned(),
        reason: a.reason.clone(),
        booked_at_ms: a.booked_at.timestamp_millis(),
        cancelled_at_ms: a.cancelled_at.map(|t| t.timestamp_millis()),
        cancelled_by: a.cancelled_by.map(|c| c.as_str().to_owned()),
        late_cancellation: a.late_cancellation,
        rescheduled_from: a.rescheduled_from.clone(),
        gp_hpr_number: String::new(),
    }
}

/// Rewrites the `$NOW` marker of [`TAKEABLE`] to a numbered placeholder.
fn takeable(now_param: usize) -> String {
    TAKEABLE.replace("$NOW", &format!("${now_param}"))
}

/// Releases the patient's (`$nin`) own holds, those not offered from the waitlist, except on
/// `$slot`: the statement HoldSlot runs before (SQLite) or with (PostgreSQL) the new hold.
fn release_holds_of(nin_param: usize, slot_param: usize) -> String {
    format!(
        "UPDATE booking_slots SET status = 1, hold_id = NULL, hold_patient = NULL, hold_expires_at = NULL, hold_request_id = NULL \
         WHERE hold_patient = ${nin_param} AND status = 3 AND hold_from_waitlist = 0 AND slot_id <> ${slot_param}"
    )
}

/// The update that takes `target` for the patient, and how many placeholders it uses: `$1` the
/// hold or slot id, `$2` the patient, `$3` now, and for a slot `$4` whether the acute reserve may
/// be taken (see [`bind_take`]). A hold is taken whether or not its slot has started (the caller
/// tells that apart); a slot only before it starts, when free or held by the patient. The same
/// update for the one-statement path (PostgreSQL) and for the steps.
fn take_update(target: &Target) -> (String, usize) {
    const SET: &str = "UPDATE booking_slots AS s SET status = 2, hold_id = NULL, hold_patient = NULL, hold_expires_at = NULL";
    match target {
        Target::Hold(_) => (
            format!(
                "{SET} WHERE s.hold_id = $1 AND s.hold_patient = $2 AND s.status = 3 AND s.hold_expires_at > $3"
            ),
            3,
        ),
        Target::Slot(_) => (
            format!(
                "{SET} WHERE s.slot_id = $1 AND s.start_at > $3 AND (s.acute_reserve = 0 OR $4 = 1) \
                 AND ({} OR (s.status = 3 AND s.hold_patient = $2))",
                takeable(3)
            ),
            4,
        ),
    }
}

/// Binds [`take_update`]'s placeholders.
fn bind_take<'q>(
    q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    target: &'q Target,
    nin: &'q str,
    now: i64,
    allow_acute: bool,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    match target {
        Target::Hold(id) => q.bind(id).bind(nin).bind(now),
        Target::Slot(id) => q.bind(id).bind(nin).bind(now).bind(i64::from(allow_acute)),
    }
}

/// What the first statement of a call that claims its key in it found
/// ([`idempotency::begin_claiming_first`]): the first attempt's answer `R`, or what the statement
/// did.
enum Taken<R, T> {
    /// A retry: the first attempt's answer; nothing was written.
    Replay(R),
    /// The key is this call's.
    Slot(T),
}

/// The GP of a slot, as an appointment row and its event need it.
struct SlotGp {
    gp_uid: String,
    org_number: String,
    municipality_number: String,
    hpr_number: String,
    /// The booking request the slot's hold (if any) was made for.
    hold_request_id: Option<String>,
}

/// The GP of a patient's list, as the patient's calls need it.
struct ListGp {
    gp_uid: String,
    gp_id: String,
    org_number: String,
    municipality_number: String,
    list_status: ListStatus,
}

/// The columns [`ListGp::from_row`] reads, with the practice's closure days, and where they
/// come from (`$1` is the patient's identity number).
const LIST_GP_COLS: &str = "g.gp_uid AS list_gp_uid, g.gp_id AS list_gp_id, g.org_number AS list_org_number, \
     g.municipality_number AS list_municipality_number, g.list_status, \
     (SELECT string_agg(c.closed_on, ',') FROM booking_closures c WHERE c.org_number = g.org_number) AS closures";
const LIST_GP_FROM: &str = "FROM booking_list_members l JOIN booking_gps g ON g.gp_uid = l.gp_uid WHERE l.patient_nin = $1";

impl ListGp {
    /// Where a booking request of this list is counted.
    fn listed(&self) -> ListedAt {
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

/// A search of the practice's free slots (times in milliseconds; `modality` 0 for any): of one
/// GP (`only`), or of the others (`except`).
#[derive(Clone, Copy)]
struct Search<'a> {
    only: &'a str,
    except: &'a str,
    from: i64,
    to: i64,
    now: i64,
    modality: i64,
    limit: i64,
}

/// [`Search`]'s statement: `$1` the practice, `$2` the GP (one GP), `$3` the GP left out.
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

impl<'a> Search<'a> {
    fn query(self, org: &'a str) -> sqlx::query::Query<'a, sqlx::Any, sqlx::any::AnyArguments<'a>> {
        let sql = if self.only.is_empty() {
            SEARCH_OTHERS
        } else {
            SEARCH_ONE
        };
        sqlx::query(sql)
            .bind(org)
            .bind(self.only)
            .bind(self.except)
            .bind(self.from)
            .bind(self.to)
            .bind(self.now)
            .bind(self.modality)
            .bind(self.limit)
    }
}

/// Which free slots FindSlots wants (times in milliseconds; `modality` 0 for any).
struct OwnSlots {
    from: i64,
    to: i64,
    now: i64,
    modality: i64,
    limit: i64,
}

/// Whose practice a slot must belong to (slots of other practices are invisible).
#[derive(Clone, Copy)]
enum Practice<'a> {
    /// This organisation's.
    Org(&'a str),
    /// The practice of the list this patient is on.
    OfPatient(&'a str),
}

impl Practice<'_> {
    /// The value bound to [`Practice::condition`]'s placeholder.
    fn scope(&self) -> &str {
        match self {
            Practice::Org(org) | Practice::OfPatient(org) => org,
        }
    }

    /// The condition that slot `s` is in this practice (`$param` is [`Practice::scope`]), for
    /// a statement that finds the slot by its key: correlated scalar subqueries, which the
    /// planner cannot turn into a join that walks the practice's GPs and all their open slots
    /// (it did, with a generic plan: twice the time of the key lookup).
    fn condition(&self, param: usize) -> String {
        let practice = match self {
            Practice::Org(_) => format!("${param}"),
            Practice::OfPatient(_) => format!(
                "(SELECT lg.org_number FROM booking_list_members l JOIN booking_gps lg ON lg.gp_uid = l.gp_uid \
                 WHERE l.patient_nin = ${param})"
            ),
        };
        format!("(SELECT g.org_number FROM booking_gps g WHERE g.gp_uid = s.gp_uid) = {practice}")
    }
}

/// What an UPDATE of slot `s` returns for [`slot_gp_cols`] to read in a statement's outer
/// SELECT (with the CTE named `s` and its GP joined as `g`).
const TAKEN_COLS: &str = "s.slot_id, s.start_at, s.end_at, s.modality, s.acute_reserve, s.status, s.hold_expires_at, s.hold_request_id, s.gp_uid";

/// The columns [`slot_gp_from_row`] reads: the slot `s` with its GP `g` and the practice's
/// closure days.
fn slot_gp_cols() -> String {
    format!("{SLOT_COLS}, g.gp_uid, g.org_number, g.municipality_number, g.hpr_number")
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

/// True when `e` is the refusal of a second live appointment for a slot (the unique index
/// `booking_appointments_one_per_slot`).
fn violates_one_per_slot(e: &sqlx::Error) -> bool {
    is_unique_violation(e)
        && e.as_database_error().is_some_and(|d| {
            d.constraint() == Some("booking_appointments_one_per_slot")
                || d.message().contains("booking_appointments.slot_id")
        })
}

fn already_booked() -> BookingError {
    BookingError::FailedPrecondition("slot is already booked".into())
}

/// Commits a call that inserted an appointment. The insert is deferred to the commit (one
/// round trip on PostgreSQL with the event, the audit row and the stored answer), so the
/// unique index's refusal of a second live appointment for the slot surfaces here.
async fn finish_booked(op: Op, resp: &Appointment) -> Result<(), BookingError> {
    match op.finish(resp).await {
        Err(IdempotencyError::Db(e)) if violates_one_per_slot(&e) => Err(already_booked()),
        r => Ok(r?),
    }
}

impl SlotGp {
    /// (organisation, municipality, HPR number) of the GP's events.
    fn routing(&self) -> (&str, &str, &str) {
        (
            &self.org_number,
            &self.municipality_number,
            &self.hpr_number,
        )
    }
}

/// Refuses a slot that a patient may not hold: reserved for same-day emergency help, or started.
fn holdable(slot: &Slot, now_ms: i64) -> Result<(), BookingError> {
    if slot.acute_reserve {
        return Err(BookingError::FailedPrecondition(
            "slot is reserved for same-day emergency help".into(),
        ));
    }
    if slot.start.timestamp_millis() <= now_ms {
        return Err(BookingError::FailedPrecondition(
            "slot has already started".into(),
        ));
    }
    Ok(())
}

fn not_on_a_list() -> BookingError {
    BookingError::FailedPrecondition("you are not on any GP's list in this service".into())
}

/// The earliest slots the practice could offer for `e` at `now`, whatever a search's filters:
/// the own GP's (none for a list without GP), and the colleagues' and locum's when the own GP has
/// none in time; starting before `until`, acute reserve excluded.
async fn earliest_offers(
    conn: &mut sqlx::AnyConnection,
    gp: &ListGp,
    e: &Episode,
    now: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Result<(Option<DateTime<Utc>>, Option<DateTime<Utc>>), BookingError> {
    let now_ms = now.timestamp_millis();
    let w = Search {
        only: "",
        except: "",
        from: now_ms,
        to: until.timestamp_millis(),
        now: now_ms,
        modality: 0,
        limit: 1,
    };
    let first = async |conn: &mut sqlx::AnyConnection,
                       w: Search<'_>|
           -> Result<Option<DateTime<Utc>>, BookingError> {
        let rows = w.query(&gp.org_number).fetch_all(conn).await?;
        Ok(match rows.first() {
            Some(r) => Some(slot_from_row(r, now_ms)?.start),
            None => None,
        })
    };
    let own = if gp.list_status == ListStatus::Vacant {
        None
    } else {
        first(
            conn,
            Search {
                only: &gp.gp_uid,
                ..w
            },
        )
        .await?
    };
    let others = if own.is_some_and(|t| e.in_time(t)) {
        None
    } else {
        first(
            conn,
            Search {
                except: &gp.gp_uid,
                ..w
            },
        )
        .await?
    };
    Ok((own, others))
}

/// Records that the practice converted an e-consultation of `nin` to a booking, inside the
/// conversion's transaction `tx`: the patient's open booking request, or a new one of channel
/// `e_consultation` from `now` with what the practice can offer now. Returns its id, for the
/// patient's HoldSlot/Book. `None` when the patient is on no list.
pub async fn record_conversion(
    tx: &mut Tx,
    nin: &str,
    now: DateTime<Utc>,
) -> Result<Option<String>, BookingError> {
    let Some(row) = sqlx::query(&format!("SELECT {LIST_GP_COLS} {LIST_GP_FROM}"))
        .bind(nin)
        .fetch_optional(&mut **tx)
        .await?
    else {
        return Ok(None);
    };
    let (gp, cal) = (ListGp::from_row(&row)?, calendar_from_row(&row)?);
    if let Some(mut e) = episodes::open_of_patient(tx, nin, now).await? {
        e.searched(now, true);
        e.write(tx);
        return Ok(Some(e.request_id));
    }
    let mut e = Episode::open(nin, &gp.listed(), Channel::EConsultation, now, &cal);
    let (own, others) = earliest_offers(tx, &gp, &e, now, now + Duration::days(30)).await?;
    e.offered(own, others);
    e.searched(now, true);
    e.write(tx);
    EpisodeMetrics::default().opened(&e);
    Ok(Some(e.request_id))
}

fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

impl Booking {
    /// The service over the platform.
    pub fn new(p: Platform, cfg: BookingConfig) -> Self {
        Self {
            p,
            cfg,
            pending: Pending::default(),
            metrics: EpisodeMetrics::default(),
        }
    }

    fn now(&self) -> DateTime<Utc> {
        self.p.clock.now()
    }

    /// [`Booking::begin_op`] for a call whose first statement claims the key on PostgreSQL
    /// ([`idempotency::begin_claiming_first`]): the one-statement take ([`Booking::take_slot`])
    /// and hold.
    async fn begin_op_claiming_first<Req, Resp>(
        &self,
        caller: &Caller,
        rpc: &str,
        key: &str,
        req: &Req,
    ) -> Result<Begun<Resp>, BookingError>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
    {
        Ok(idempotency::begin_claiming_first(
            &self.p.db,
            &caller.subject,
            rpc,
            key,
            req,
            self.p.clock.now_ms(),
        )
        .await?)
    }

    /// Opens the write transaction of a mutating call, guarded by the idempotency record of
    /// (`caller`, `rpc`, `key`): a retry gets the stored first result instead.
    async fn begin_op<Req, Resp>(
        &self,
        caller: &Caller,
        rpc: &str,
        key: &str,
        req: &Req,
    ) -> Result<Begun<Resp>, BookingError>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
    {
        Ok(idempotency::begin(
            &self.p.db,
            &caller.subject,
            rpc,
            key,
            req,
            self.p.clock.now_ms(),
        )
        .await?)
    }

    async fn calendar(
        &self,
        conn: &mut sqlx::AnyConnection,
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

    async fn gp_in_org(
        &self,
        conn: &mut sqlx::AnyConnection,
        org: &str,
        gp_id: &str,
    ) -> Result<Gp, BookingError> {
        let row = sqlx::query(&format!(
            "SELECT {GP_COLS} FROM booking_gps g WHERE g.org_number = $1 AND g.gp_id = $2"
        ))
        .bind(org)
        .bind(gp_id)
        .fetch_optional(conn)
        .await?
        .ok_or_else(|| BookingError::NotFound(format!("gp {gp_id}")))?;
        gp_from_row(&row)
    }

    /// The GP of the patient's list, and the working days of the GP's practice. Only what the
    /// patient's calls need: not the list's size, a count over the whole list.
    async fn own_gp(
        &self,
        conn: &mut sqlx::AnyConnection,
        nin: &str,
    ) -> Result<(ListGp, Calendar), BookingError> {
        let row = sqlx::query(&format!("SELECT {LIST_GP_COLS} {LIST_GP_FROM}"))
            .bind(nin)
            .fetch_optional(conn)
            .await?
            .ok_or_else(not_on_a_list)?;
        Ok((ListGp::from_row(&row)?, calendar_from_row(&row)?))
    }

    /// PostgreSQL: [`Booking::own_gp`] and the first `limit` free slots of that GP in
    /// [`OwnSlots`] (none when the list has no GP), in one read: the slots in a `LATERAL`
    /// subquery that walks `booking_slots_open` of the one GP in start order.
    async fn own_gp_and_slots(
        &self,
        conn: &mut sqlx::AnyConnection,
        nin: &str,
        w: &OwnSlots,
    ) -> Result<(ListGp, Calendar, Vec<(Slot, String)>), BookingError> {
        let rows = sqlx::query(&format!(
            "SELECT me.*, x.* FROM (SELECT {LIST_GP_COLS} {LIST_GP_FROM}) me LEFT JOIN LATERAL (\
             SELECT {SLOT_COLS}, g.display_name FROM booking_slots s JOIN booking_gps g ON g.gp_uid = s.gp_uid \
             WHERE s.gp_uid = me.list_gp_uid AND me.list_status <> 2 AND s.start_at >= $2 AND s.start_at < $3 \
             AND s.acute_reserve = 0 AND {} AND ($5 = 0 OR s.modality = $5) ORDER BY s.start_at LIMIT $6) x ON true ORDER BY x.start_at",
            takeable(4)
        ))
        .bind(nin)
        .bind(w.from)
        .bind(w.to)
        .bind(w.now)
        .bind(w.modality)
        .bind(w.limit)
        .fetch_all(conn)
        .await?;
        let first = rows.first().ok_or_else(not_on_a_list)?;
        let mut own = Vec::new();
        for r in &rows {
            if r.try_get::<Option<String>, _>("slot_id")?.is_some() {
                own.push((slot_from_row(r, w.now)?, r.try_get("display_name")?));
            }
        }
        Ok((ListGp::from_row(first)?, calendar_from_row(first)?, own))
    }

    // ---------------------------------------------------------------- EHR side

    /// Creates or updates a GP of `org`.
    pub async fn upsert_gp(&self, org: &str, input: GpInput) -> Result<Gp, BookingError> {
        let mut tx = self.p.db.begin().await?;
        let now = self.p.clock.now_ms();
        match self.gp_in_org(&mut tx, org, &input.gp_id).await {
            Ok(existing) if existing.list_size > input.list_capacity => {
                return Err(BookingError::FailedPrecondition(format!(
                    "list_capacity {} is below the current list size {}",
                    input.list_capacity, existing.list_size
                )));
            }
            Ok(_) | Err(BookingError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        sqlx::query(
            "INSERT INTO booking_gps (gp_uid, org_number, gp_id, hpr_number, display_name, municipality_number, list_capacity, list_status, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (org_number, gp_id) DO UPDATE SET hpr_number = excluded.hpr_number, display_name = excluded.display_name, \
             municipality_number = excluded.municipality_number, list_capacity = excluded.list_capacity, \
             list_status = excluded.list_status, updated_at = excluded.updated_at",
        )
        .bind(new_id())
        .bind(org)
        .bind(&input.gp_id)
        .bind(&input.hpr_number)
        .bind(&input.display_name)
        .bind(&input.municipality_number)
        .bind(i64::from(input.list_capacity))
        .bind(input.list_status.code())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let gp = self.gp_in_org(&mut tx, org, &input.gp_id).await?;
        tx.commit().await?;
        Ok(gp)
    }

    /// Reads a GP of `org`.
    pub async fn get_gp(&self, org: &str, gp_id: &str) -> Result<Gp, BookingError> {
        let mut conn = self.p.db.read().acquire().await?;
        self.gp_in_org(&mut conn, org, gp_id).await
    }

    /// Adds and removes list members.
    pub async fn update_list(
        &self,
        caller: &Caller,
        org: &str,
        gp_id: &str,
        add: &[String],
        remove: &[String],
        key: &str,
    ) -> Result<u32, BookingError> {
        let req = (org, gp_id, add, remove);
        let mut op = match self.begin_op(caller, rpc::UPDATE_LIST, key, &req).await? {
            Begun::Replay(r) => return Ok(r),
            Begun::New(op) => op,
        };
        let tx = &mut op.tx;
        let resp: Result<_, BookingError> = async {
            let gp = self.gp_in_org(tx, org, gp_id).await?;
            self.p.db.lock(tx, &format!("list:{}", gp.gp_uid)).await?;
            let now = self.p.clock.now_ms();
            for nin in remove {
                sqlx::query("DELETE FROM booking_list_members WHERE patient_nin = $1 AND gp_uid = $2")
                    .bind(nin)
                    .bind(&gp.gp_uid)
                    .execute(&mut **tx)
                    .await?;
                let access = Access { action: rpc::UPDATE_LIST, resource: format!("gp:{gp_id}"), patient_nin: nin };
                audit::record(tx, caller, &access, now).await?;
            }
            for (i, nin) in add.iter().enumerate() {
                // A patient on a list of this practice moves within it; one listed with another
                // organisation stays there (the update's condition is false: nothing written).
                // A move between practices is a registry fact: MoveListing.
                let n = sqlx::query(
                    "INSERT INTO booking_list_members (patient_nin, gp_uid, added_at) VALUES ($1, $2, $3) \
                     ON CONFLICT (patient_nin) DO UPDATE SET gp_uid = excluded.gp_uid, added_at = excluded.added_at \
                     WHERE (SELECT g.org_number FROM booking_gps g WHERE g.gp_uid = booking_list_members.gp_uid) = $4",
                )
                .bind(nin)
                .bind(&gp.gp_uid)
                .bind(now)
                .bind(org)
                .execute(&mut **tx)
                .await?
                .rows_affected();
                if n == 0 {
                    return Err(self.listed_elsewhere(tx, i, nin).await);
                }
                let access = Access { action: rpc::UPDATE_LIST, resource: format!("gp:{gp_id}"), patient_nin: nin };
                audit::record(tx, caller, &access, now).await?;
            }
            let size: i64 = sqlx::query("SELECT COUNT(*) AS n FROM booking_list_members WHERE gp_uid = $1")
                .bind(&gp.gp_uid)
                .fetch_one(&mut **tx)
                .await?
                .try_get("n")?;
            if size > i64::from(gp.list_capacity) {
                return Err(BookingError::FailedPrecondition(format!(
                    "the list would hold {size} persons, over its capacity of {}",
                    gp.list_capacity
                )));
            }
            Ok(size as u32)
        }
        .await;
        let resp = resp?;
        op.finish(&resp).await?;
        Ok(resp)
    }

    /// The refusal of `add[i]`, a patient listed with another organisation: names that
    /// organisation (not the patient).
    async fn listed_elsewhere(&self, tx: &mut Tx, i: usize, nin: &str) -> BookingError {
        let current = sqlx::query(
            "SELECT g.org_number FROM booking_list_members l JOIN booking_gps g ON g.gp_uid = l.gp_uid WHERE l.patient_nin = $1",
        )
        .bind(nin)
        .fetch_optional(&mut **tx)
        .await
        .map(|r| r.and_then(|r| r.try_get::<String, _>("org_number").ok()));
        match current {
            Ok(Some(org)) => BookingError::FailedPrecondition(format!(
                "add[{i}]: patient is listed with organisation {org}: a move between practices goes through MoveListing"
            )),
            Ok(None) => BookingError::FailedPrecondition(format!(
                "add[{i}]: the patient's listing changed concurrently, retry"
            )),
            Err(e) => e.into(),
        }
    }

    /// Moves a listed patient to a GP of `input.to_org_number`, as Fastlegeregisteret recorded
    /// it (operations only). In one transaction: the list member row, the move with its registry
    /// reference, a `booking.list_moved` event for the old practice and an access-log row for
    /// the patient. The target list's capacity holds (its list lock, as UpdateList takes it).
    pub async fn move_listing(
        &self,
        caller: &Caller,
        input: &MoveListingInput,
        key: &str,
    ) -> Result<ListMove, BookingError> {
        let mut op = match self.begin_op(caller, rpc::MOVE_LISTING, key, input).await? {
            Begun::Replay(r) => return Ok(r),
            Begun::New(op) => op,
        };
        let tx = &mut op.tx;
        let resp: Result<_, BookingError> = async {
            let now = self.p.clock.now_ms();
            let to = match self.gp_in_org(tx, &input.to_org_number, &input.to_gp_id).await {
                Err(BookingError::NotFound(_)) => {
                    return Err(BookingError::NotFound(format!(
                        "to_gp_id {} of organisation {}",
                        input.to_gp_id, input.to_org_number
                    )));
                }
                r => r?,
            };
            self.p.db.lock(tx, &format!("list:{}", to.gp_uid)).await?;
            let from = sqlx::query(
                "SELECT l.gp_uid, g.gp_id, g.org_number FROM booking_list_members l JOIN booking_gps g ON g.gp_uid = l.gp_uid \
                 WHERE l.patient_nin = $1",
            )
            .bind(&input.patient_nin)
            .fetch_optional(&mut **tx)
            .await?
            .ok_or_else(|| {
                BookingError::FailedPrecondition(
                    "patient_nin is on no list in this service: the new practice adds the patient with UpdateList".into(),
                )
            })?;
            let from_uid: String = from.try_get("gp_uid")?;
            let from_gp_id: String = from.try_get("gp_id")?;
            let from_org: String = from.try_get("org_number")?;
            if from_uid == to.gp_uid {
                return Err(BookingError::FailedPrecondition(format!(
                    "the patient is already on the list of {} of organisation {}",
                    input.to_gp_id, input.to_org_number
                )));
            }
            let n = sqlx::query(
                "UPDATE booking_list_members SET gp_uid = $1, added_at = $2 WHERE patient_nin = $3 AND gp_uid = $4",
            )
            .bind(&to.gp_uid)
            .bind(now)
            .bind(&input.patient_nin)
            .bind(&from_uid)
            .execute(&mut **tx)
            .await?
            .rows_affected();
            if n == 0 {
                return Err(BookingError::FailedPrecondition(
                    "the patient's listing changed concurrently, retry".into(),
                ));
            }
            let size: i64 = sqlx::query("SELECT COUNT(*) AS n FROM booking_list_members WHERE gp_uid = $1")
                .bind(&to.gp_uid)
                .fetch_one(&mut **tx)
                .await?
                .try_get("n")?;
            if size > i64::from(to.list_capacity) {
                return Err(BookingError::FailedPrecondition(format!(
                    "the list of {} is full (capacity {})",
                    input.to_gp_id, to.list_capacity
                )));
            }
            let move_id = new_id();
            sqlx::query(
                "INSERT INTO booking_list_moves (move_id, patient_nin, from_gp_uid, to_gp_uid, registry_reference, moved_at, moved_by) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(&move_id)
            .bind(&input.patient_nin)
            .bind(&from_uid)
            .bind(&to.gp_uid)
            .bind(&input.registry_reference)
            .bind(now)
            .bind(&caller.subject)
            .execute(&mut **tx)
            .await?;
            let body = ListMoved {
                move_id: move_id.clone(),
                patient_nin: input.patient_nin.clone(),
                from_org_number: from_org.clone(),
                from_gp_id: from_gp_id.clone(),
                registry_reference: input.registry_reference.clone(),
                moved_at_ms: now,
            };
            outbox::enqueue(
                tx,
                NewEvent {
                    topic: topics::BOOKING_LIST_MOVED,
                    org_number: &from_org,
                    route_key: &input.patient_nin,
                    payload: &body,
                },
                now,
            )
            .await?;
            let access = Access {
                action: rpc::MOVE_LISTING,
                resource: format!("list_move:{move_id}"),
                patient_nin: &input.patient_nin,
            };
            audit::record(tx, caller, &access, now).await?;
            Ok(ListMove {
                move_id,
                patient_nin: input.patient_nin.clone(),
                from_org_number: from_org,
                from_gp_id,
                to_org_number: input.to_org_number.clone(),
                to_gp_id: input.to_gp_id.clone(),
                registry_reference: input.registry_reference.clone(),
                moved_at_ms: now,
                to_list_size: size as u32,
            })
        }
        .await;
        let resp = resp?;
        op.finish(&resp).await?;
        Ok(resp)
    }

    /// Replaces the closure days of `org`.
    pub async fn set_closures(
        &self,
        caller: &Caller,
        org: &str,
        dates: Vec<NaiveDate>,
        key: &str,
    ) -> Result<Vec<NaiveDate>, BookingError> {
        let mut dates = dates;
        dates.sort();
        dates.dedup();
        let req = (org, &dates);
        let mut op = match self.begin_op(caller, "SetClosures", key, &req).await? {
            Begun::Replay(r) => return Ok(r),
            Begun::New(op) => op,
        };
        let tx = &mut op.tx;
        let resp: Result<_, BookingError> = async {
            sqlx::query("DELETE FROM booking_closures WHERE org_number = $1")
                .bind(org)
                .execute(&mut **tx)
                .await?;
            for d in &dates {
                sqlx::query("INSERT INTO booking_closures (org_number, closed_on) VALUES ($1, $2)")
                    .bind(org)
                    .bind(d.format("%Y-%m-%d").to_string())
                    .execute(&mut **tx)
                    .await?;
            }
            Ok(dates.clone())
        }
        .await;
        let resp = resp?;
        op.finish(&resp).await?;
        Ok(resp)
    }

    /// Replaces the phone number and opening hours of `org`: `periods` are (ISO weekday,
    /// opens, closes) in minutes after midnight (Europe/Oslo), validated by the caller.
    pub async fn set_opening_hours(
        &self,
        caller: &Caller,
        org: &str,
        phone: &str,
        periods: Vec<(u32, u32, u32)>,
        key: &str,
    ) -> Result<(Vec<(u32, u32, u32)>, String), BookingError> {
        let mut periods = periods;
        periods.sort_unstable();
        let req = (org, phone, &periods);
        let mut op = match self.begin_op(caller, "SetOpeningHours", key, &req).await? {
            Begun::Replay(r) => return Ok(r),
            Begun::New(op) => op,
        };
        let now = self.now();
        let tx = &mut op.tx;
        let resp: Result<_, BookingError> = async {
            sqlx::query(
                "INSERT INTO booking_practice_phones (org_number, phone, updated_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (org_number) DO UPDATE SET phone = excluded.phone, updated_at = excluded.updated_at",
            )
            .bind(org)
            .bind(phone)
            .bind(now.timestamp_millis())
            .execute(&mut **tx)
            .await?;
            sqlx::query("DELETE FROM booking_opening_hours WHERE org_number = $1")
                .bind(org)
                .execute(&mut **tx)
                .await?;
            for &(weekday, opens, closes) in &periods {
                sqlx::query(
                    "INSERT INTO booking_opening_hours (org_number, weekday, opens_minute, closes_minute) VALUES ($1, $2, $3, $4)",
                )
                .bind(org)
                .bind(i64::from(weekday))
                .bind(i64::from(opens))
                .bind(i64::from(closes))
                .execute(&mut **tx)
                .await?;
            }
            Ok((periods.clone(), phone.to_owned()))
        }
        .await;
        let resp = resp?;
        op.finish(&resp).await?;
        Ok(resp)
    }

    /// Publishes slots for a GP of `org`, all or nothing.
    pub async fn publish_slots(
        &self,
        caller: &Caller,
        org: &str,
        gp_id: &str,
        slots: Vec<NewSlot>,
        key: &str,
    ) -> Result<Vec<Slot>, BookingError> {
        let now = self.now();
        for (i, s) in slots.iter().enumerate() {
            if s.start <= now {
                return Err(BookingError::invalid(
                    format!("slots[{i}].start"),
                    "must be in the future",
                ));
            }
        }
        // Overlaps inside the request.
        let mut order: Vec<usize> = (0..slots.len()).collect();
        order.sort_by_key(|&i| slots[i].start);
        for w in order.windows(2) {
            let (a, b) = (&slots[w[0]], &slots[w[1]]);
            if b.start < a.start + Duration::minutes(i64::from(a.duration_minutes)) {
                return Err(BookingError::invalid(
                    format!("slots[{}].start", w[1]),
                    format!("overlaps slots[{}]", w[0]),
                ));
            }
        }
        let req = (org, gp_id, &slots);
        let mut op = match self.begin_op(caller, "PublishSlots", key, &req).await? {
            Begun::Replay(r) => return Ok(r),
            Begun::New(op) => op,
        };
        let tx = &mut op.tx;
        let resp: Result<_, BookingError> = async {
            let gp = self.gp_in_org(tx, org, gp_id).await?;
            self.p.db.lock(tx, &format!("slots:{}", gp.gp_uid)).await?;
            let (Some(first), Some(last)) = (order.first(), order.last()) else {
                return Ok(Vec::new());
            };
            let lo = slots[*first].start.timestamp_millis();
            let hi = slots[*last].start.timestamp_millis() + i64::from(slots[*last].duration_minutes) * 60_000;
            let existing = sqlx::query(
                "SELECT start_at, end_at FROM booking_slots WHERE gp_uid = $1 AND status <> 4 AND start_at < $2 AND end_at > $3",
            )
            .bind(&gp.gp_uid)
            .bind(hi)
            .bind(lo)
            .fetch_all(&mut **tx)
            .await?;
            let existing: Vec<(i64, i64)> = existing
                .iter()
                .map(|r| Ok((r.try_get("start_at")?, r.try_get("end_at")?)))
                .collect::<Result<_, sqlx::Error>>()?;
            let created_at = now.timestamp_millis();
            let mut out = Vec::with_capacity(slots.len());
            for (i, s) in slots.iter().enumerate() {
                let start = s.start.timestamp_millis();
                let end = start + i64::from(s.duration_minutes) * 60_000;
                if existing.iter().any(|&(a, b)| a < end && b > start) {
                    return Err(BookingError::invalid(format!("slots[{i}].start"), "overlaps an existing slot of the GP"));
                }
                let slot_id = new_id();
                sqlx::query(
                    "INSERT INTO booking_slots (slot_id, gp_uid, start_at, end_at, modality, acute_reserve, status, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, 1, $7)",
                )
                .bind(&slot_id)
                .bind(&gp.gp_uid)
                .bind(start)
                .bind(end)
                .bind(s.modality.code())
                .bind(i64::from(s.acute_reserve))
                .bind(created_at)
                .execute(&mut **tx)
                .await?;
                out.push(Slot {
                    slot_id,
                    gp_id: gp_id.to_owned(),
                    start: s.start,
                    end: from_ms(end),
                    modality: s.modality,
                    status: SlotStatus::Free,
                    acute_reserve: s.acute_reserve,
                });
            }
            if self.has_waiting(tx, &gp.gp_uid).await? {
                for s in &mut out {
                    if !s.acute_reserve && self.offer_to_waitlist(tx, &s.slot_id).await? {
                        s.status = SlotStatus::BusyTentative;
                    }
                }
            }
            Ok(out)
        }
        .await;
        let resp = resp?;
        op.finish(&resp).await?;
        Ok(resp)
    }

    /// Withdraws free slots of `org`.
    pub async fn withdraw_slots(
        &self,
        caller: &Caller,
        org: &str,
        slot_ids: &[String],
        key: &str,
    ) -> Result<Vec<Slot>, BookingError> {
        let req = (org, slot_ids);
        let mut op = match self.begin_op(caller, "WithdrawSlots", key, &req).await? {
            Begun::Replay(r) => return Ok(r),
            Begun::New(op) => op,
        };
        let tx = &mut op.tx;
        let resp: Result<_, BookingError> = async {
            let now = self.p.clock.now_ms();
            let mut out = Vec::new();
            for (i, id) in slot_ids.iter().enumerate() {
                let n = sqlx::query(&format!(
                    "UPDATE booking_slots SET status = 4, hold_id = NULL, hold_patient = NULL, hold_expires_at = NULL \
                     WHERE slot_id = $1 AND gp_uid IN (SELECT gp_uid FROM booking_gps WHERE org_number = $2) AND {}",
                    takeable(3).replace("s.", "")
                ))
                .bind(id)
                .bind(org)
                .bind(now)
                .execute(&mut **tx)
                .await?
                .rows_affected();
                let row = sqlx::query(&format!(
                    "SELECT {SLOT_COLS} FROM booking_slots s JOIN booking_gps g ON g.gp_uid = s.gp_uid WHERE s.slot_id = $1 AND g.org_number = $2"
                ))
                .bind(id)
                .bind(org)
                .fetch_optional(&mut **tx)
                .await?
                .ok_or_else(|| BookingError::NotFound(format!("slot_ids[{i}]")))?;
                if n == 0 {
                    return Err(BookingError::FailedPrecondition(format!(
                        "slot_ids[{i}] is held, booked or already withdrawn: cancel the appointment first"
                    )));
                }
                out.push(slot_from_row(&row, now)?);
            }
            Ok(out)
        }
        .await;
        let resp = resp?;
        op.finish(&resp).await?;
        Ok(resp)
    }

    async fn appointment_in_org(
        &self,
        conn: &mut sqlx::AnyConnection,
        org: &str,
        id: &str,
    ) -> Result<AnyRow, BookingError> {
        sqlx::query(&format!(
            "{APPT_SELECT} WHERE a.appointment_id = $1 AND g.org_number = $2"
        ))
        .bind(id)
        .bind(org)
        .fetch_optional(conn)
        .await?
        .ok_or_else(|| BookingError::NotFound(format!("appointment {id}")))
    }

    /// Records arrival, a held consultation or a no-show.
    pub async fn mark(
        &self,
        caller: &Caller,
        org: &str,
        id: &str,
        to: AppointmentStatus,
        key: &str,
    ) -> Result<Appointment, BookingError> {
        let req = (org, id, to);
        let mut op = match self.begin_op(caller, rpc::MARK, key, &req).await? {
            Begun::Replay(r) => return Ok(r),
            Begun::New(op) => op,
        };
        let tx = &mut op.tx;
        let resp: Result<_, BookingError> = async {
            let now = self.p.clock.now_ms();
            let row = self.appointment_in_org(tx, org, id).await?;
            let before = appt_from_row(&row, now)?;
            let allowed_from: &[AppointmentStatus] = match to {
                AppointmentStatus::Arrived => &[AppointmentStatus::Booked],
                AppointmentStatus::Fulfilled => &[AppointmentStatus::Booked, AppointmentStatus::Arrived],
                AppointmentStatus::NoShow => &[AppointmentStatus::Booked],
                _ => return Err(BookingError::invalid("status", "must be ARRIVED, FULFILLED or NOSHOW")),
            };
            if !allowed_from.contains(&before.status) {
                return Err(BookingError::FailedPrecondition(format!(
                    "appointment is {}, cannot become {}",
                    before.status.fhir(),
                    to.fhir()
                )));
            }
            if matches!(to, AppointmentStatus::Fulfilled | AppointmentStatus::NoShow) && before.slot.start.timestamp_millis() > now {
                return Err(BookingError::FailedPrecondition(format!("the appointment has not started yet, cannot become {}", to.fhir())));
            }
            let n = sqlx::query("UPDATE booking_appointments SET status = $1 WHERE appointment_id = $2 AND status = $3")
                .bind(to.code())
                .bind(id)
                .bind(before.status.code())
                .execute(&mut **tx)
                .await?
                .rows_affected();
            if n == 0 {
                return Err(BookingError::FailedPrecondition("the appointment changed concurrently, retry".into()));
            }
            let after = Appointment { status: to, ..before };
            let (org_n, muni) = appt_routing(&row)?;
            let topic = match to {
                AppointmentStatus::Arrived => topics::BOOKING_ARRIVED,
                AppointmentStatus::Fulfilled => topics::BOOKING_ATTENDED,
                _ => topics::BOOKING_NOSHOW,
            };
            self.emit(tx, topic, &after, &org_n, &muni, now).await?;
            let access = Access { action: rpc::MARK, resource: format!("appointment:{id}"), patient_nin: &after.patient_nin };
            audit::record(tx, caller, &access, now).await?;
            Ok(after)
        }
        .await;
        let resp = resp?;
        op.finish(&resp).await?;
        Ok(resp)
    }

    /// Cancels on behalf of the GP: the slot is withdrawn and the patient goes first in line on
    /// the GP's waitlist.
    pub async fn cancel_by_practice(
        &self,
        caller: &Caller,
        org: &str,
        id: &str,
        reason: &str,
        key: &str,
    ) -> Result<Appointment, BookingError> {
        let req = (org, id, reason);
        let mut op = match self
            .begin_op(caller, rpc::CANCEL_BY_PRACTICE, key, &req)
            .await?
        {
            Begun::Replay(r) => return Ok(r),
            Begun::New(op) => op,
        };
        let tx = &mut op.tx;
        let resp: Result<_, BookingError> = async {
            let now = self.p.clock.now_ms();
            let row = self.appointment_in_org(tx, org, id).await?;
            let before = appt_from_row(&row, now)?;
            if before.status != AppointmentStatus::Booked {
                return Err(BookingError::FailedPrecondition(format!("appointment is {}, only booked ones can be cancelled", before.status.fhir())));
            }
            let n = sqlx::query(
                "UPDATE booking_appointments SET status = 4, cancelled_at = $1, cancelled_by = 2 WHERE appointment_id = $2 AND status = 1",
            )
            .bind(now)
            .bind(id)
            .execute(&mut **tx)
            .await?
            .rows_affected();
            if n == 0 {
                return Err(BookingError::FailedPrecondition("the appointment changed concurrently, retry".into()));
            }
            // The GP cannot take the slot: withdraw it rather than offer it again.
            sqlx::query("UPDATE booking_slots SET status = 4 WHERE slot_id = $1").bind(&before.slot.slot_id).execute(&mut **tx).await?;
            let cal = self.calendar(tx, org).await?;
            let latest = cal.add_working_days(oslo_date(before.slot.start), episodes::TARGET_WORKING_DAYS);
            let gp_uid: String = sqlx::query("SELECT gp_uid FROM booking_appointments WHERE appointment_id = $1")
                .bind(id)
                .fetch_one(&mut **tx)
                .await?
                .try_get("gp_uid")?;
            sqlx::query(
                "INSERT INTO booking_waitlist (entry_id, gp_uid, patient_nin, latest_date, modality, priority, joined_at, active) \
                 VALUES ($1, $2, $3, $4, 0, 1, $5, 1) \
                 ON CONFLICT (gp_uid, patient_nin) WHERE active = 1 DO UPDATE SET priority = 1",
            )
            .bind(new_id())
            .bind(&gp_uid)
            .bind(&before.patient_nin)
            .bind(latest.format("%Y-%m-%d").to_string())
            .bind(now)
            .execute(&mut **tx)
            .await?;
            let after = Appointment {
                status: AppointmentStatus::Cancelled,
                cancelled_at: Some(from_ms(now)),
                cancelled_by: Some(CancelledBy::Practice),
                slot: Slot { status: SlotStatus::BusyUnavailable, ..before.slot.clone() },
                ..before
            };
            let (org_n, muni) = appt_routing(&row)?;
            self.emit(tx, topics::BOOKING_CANCELLED, &after, &org_n, &muni, now).await?;
            let access = Access { action: rpc::CANCEL_BY_PRACTICE, resource: format!("appointment:{id}"), patient_nin: &after.patient_nin };
            audit::record(tx, caller, &access, now).await?;
            Ok(after)
        }
        .await;
        let resp = resp?;
        op.finish(&resp).await?;
        Ok(resp)
    }

    async fn emit(
        &self,
        tx: &mut Tx,
        topic: &str,
        a: &Appointment,
        org: &str,
        muni: &str,
        now: i64,
    ) -> Result<(), BookingError> {
        let hpr: String =
            sqlx::query("SELECT hpr_number FROM booking_gps WHERE org_number = $1 AND gp_id = $2")
                .bind(org)
                .bind(&a.gp_id)
                .fetch_one(&mut **tx)
                .await?
                .try_get("hpr_number")?;
        self.emit_for(tx, topic, a, (org, muni, &hpr), now).await
    }

    /// [`Self::emit`] when the GP's HPR number is already at hand (no lookup): `routing` is
    /// (organisation, municipality, HPR number).
    async fn emit_for(
        &self,
        tx: &mut Tx,
        topic: &str,
        a: &Appointment,
        (org, muni, hpr): (&str, &str, &str),
        now: i64,
    ) -> Result<(), BookingError> {
        let mut body = changed(a, org, muni);
        body.gp_hpr_number = hpr.to_owned();
        outbox::enqueue(
            tx,
            NewEvent {
                topic,
                org_number: org,
                route_key: &a.patient_nin,
                payload: &body,
            },
            now,
        )
        .await?;
        Ok(())
    }

    // ---------------------------------------------------------------- patient side

    /// Offers slots and updates the patient's booking request (see [`crate::episodes`]): the
    /// open one, or a new one. A read: the request waits in [`Pending`] for the next flush.
    pub async fn find_slots(
        &self,
        caller: &Caller,
        nin: &str,
        modality: Option<Modality>,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
        limit: u32,
    ) -> Result<Offers, BookingError> {
        let now = self.now();
        let now_ms = now.timestamp_millis();
        let asked_from = from;
        let from = from.map_or(now, |f| f.max(now));
        let to = to.unwrap_or(from + Duration::days(30));
        if to <= from {
            return Err(BookingError::invalid("to", "must be after from"));
        }
        if to - from > Duration::days(92) {
            return Err(BookingError::invalid("to", "at most 92 days after from"));
        }
        let mut conn = self.p.db.read().acquire().await?;
        let modality_code = modality.map_or(0, Modality::code);
        // PostgreSQL: the list's GP and that GP's slots in one round trip.
        let (gp, cal, own) = if self.p.db.backend() == Backend::Postgres {
            let w = OwnSlots {
                from: from.timestamp_millis(),
                to: to.timestamp_millis(),
                now: now_ms,
                modality: modality_code,
                limit: i64::from(limit),
            };
            let (gp, cal, own) = self.own_gp_and_slots(&mut conn, nin, &w).await?;
            (gp, cal, Some(own))
        } else {
            let (gp, cal) = self.own_gp(&mut conn, nin).await?;
            (gp, cal, None)
        };
        let vacant = gp.list_status == ListStatus::Vacant;
        // The patient's open request: held here, stored, or a new one.
        let open = match self.pending.get(nin, now) {
            Some(e) => Some(e),
            None => episodes::open_of_patient(&mut conn, nin, now).await?,
        };
        let new = open.is_none();
        let mut ep =
            open.unwrap_or_else(|| Episode::open(nin, &gp.listed(), Channel::Online, now, &cal));
        let fetch = async |conn: &mut sqlx::AnyConnection,
                           w: Search<'_>|
               -> Result<Vec<(Slot, String)>, BookingError> {
            let rows = w.query(&gp.org_number).fetch_all(conn).await?;
            rows.iter()
                .map(|r| Ok((slot_from_row(r, now_ms)?, r.try_get("display_name")?)))
                .collect()
        };
        let asked = Search {
            only: "",
            except: "",
            from: from.timestamp_millis(),
            to: to.timestamp_millis(),
            now: now_ms,
            modality: modality_code,
            limit: i64::from(limit),
        };
        let own = match own {
            Some(own) => own,
            None if vacant => Vec::new(),
            None => {
                fetch(
                    &mut conn,
                    Search {
                        only: &gp.gp_uid,
                        ..asked
                    },
                )
                .await?
            }
        };
        let own_in_time = own.first().is_some_and(|(s, _)| ep.in_time(s.start));
        let own_first = own.first().map(|(s, _)| s.start);
        let mut offers: Vec<Offer> = own
            .into_iter()
            .map(|(slot, name)| Offer {
                working_days: ep.working_days_to(slot.start),
                slot,
                gp_display_name: name,
                own_gp: true,
                alternative_reason: String::new(),
            })
            .collect();
        let mut others_first = None;
        if !own_in_time {
            let reason = if vacant {
                "your list has no GP: another GP of the practice"
            } else {
                "your GP has no free slot within five working days: another GP of the practice"
            };
            let others = fetch(
                &mut conn,
                Search {
                    except: &gp.gp_uid,
                    ..asked
                },
            )
            .await?;
            others_first = others.first().map(|(s, _)| s.start);
            offers.extend(others.into_iter().map(|(slot, name)| Offer {
                working_days: ep.working_days_to(slot.start),
                slot,
                gp_display_name: name,
                own_gp: false,
                alternative_reason: reason.to_owned(),
            }));
            offers.sort_by_key(|o| (oslo_date(o.slot.start), !o.own_gp, o.slot.start));
            offers.truncate(limit as usize);
        }
        // What the practice could offer whatever this search's filters: the search's own
        // answer when it asked for everything up to past the deadline, else one slot each.
        let unfiltered = modality.is_none()
            && asked_from.is_none_or(|f| f <= now)
            && to.timestamp_millis() >= ep.deadline_end_ms();
        // Unfiltered, the own GP's first slot is its earliest, and the colleagues were asked
        // exactly when the own GP had none in time.
        let (own_earliest, others_earliest) = if unfiltered {
            (own_first, if own_in_time { None } else { others_first })
        } else {
            let until = (now + Duration::days(30)).max(to);
            earliest_offers(&mut conn, &gp, &ep, now, until).await?
        };
        drop(conn);
        ep.offered(own_earliest, others_earliest);
        ep.searched(now, offers.iter().any(|o| ep.in_time(o.slot.start)));
        let access = Access {
            action: rpc::FIND,
            resource: format!("gp:{}", gp.gp_id),
            patient_nin: nin,
        };
        if !self
            .pending
            .put(ep.clone(), audit::row(caller, &access, now_ms))
        {
            return Err(BookingError::Unavailable(
                "booking requests cannot be recorded right now, retry".into(),
            ));
        }
        if new {
            self.metrics.opened(&ep);
        }
        Ok(Offers {
            slots: offers,
            earliest: ep.earliest_offer(),
            earliest_working_days: ep.earliest_offer_working_days(),
            within_target: ep.within_target(),
            met_by_own_gp: ep.met_by_own_gp(),
            patient_preference: ep.patient_preference(),
            breach: ep.breach(),
            request_id: ep.request_id,
        })
    }

    /// Loads a slot of `practice` with its GP (as an appointment and its event need it), or
    /// NOT_FOUND (slots of other practices are invisible); with [`Practice::OfPatient`], one
    /// statement finds the patient's practice too (FAILED_PRECONDITION when on no list).
    async fn slot_with_gp(
        &self,
        tx: &mut Tx,
        practice: Practice<'_>,
        slot_id: &str,
    ) -> Result<(Slot, SlotGp), BookingError> {
        let cols = slot_gp_cols();
        let (sql, scope) = match practice {
            Practice::Org(org) => (
                format!(
                    "SELECT {cols} FROM booking_slots s JOIN booking_gps g ON g.gp_uid = s.gp_uid \
                     WHERE s.slot_id = $1 AND g.org_number = $2"
                ),
                org,
            ),
            // A row for a patient on a list; its GP columns are NULL when there is no such slot
            // in the patient's practice.
            Practice::OfPatient(nin) => (
                format!(
                    "SELECT {cols} FROM booking_list_members l JOIN booking_gps lg ON lg.gp_uid = l.gp_uid \
                     LEFT JOIN booking_slots s ON s.slot_id = $1 \
                     LEFT JOIN booking_gps g ON g.gp_uid = s.gp_uid AND g.org_number = lg.org_number \
                     WHERE l.patient_nin = $2"
                ),
                nin,
            ),
        };
        let row = sqlx::query(&sql)
            .bind(slot_id)
            .bind(scope)
            .fetch_optional(&mut **tx)
            .await?;
        let row = match (row, practice) {
            (None, Practice::OfPatient(_)) => return Err(not_on_a_list()),
            (row, _) => row
                .filter(|r| matches!(r.try_get::<Option<String>, _>("gp_uid"), Ok(Some(_))))
                .ok_or_else(|| BookingError::NotFound("slot_id".to_owned()))?,
        };
        slot_gp_from_row(&row, self.p.clock.now_ms())
    }

    /// Holds a free slot of the patient's practice; releases the patient's previous hold.
    pub async fn hold(
        &self,
        caller: &Caller,
        nin: &str,
        slot_id: &str,
        request_id: &str,
        key: &str,
    ) -> Result<Hold, BookingError> {
        let req = (nin, slot_id, request_id);
        let mut op = match self
            .begin_op_claiming_first(caller, rpc::HOLD, key, &req)
            .await?
        {
            Begun::Replay(r) => return Ok(r),
            Begun::New(op) => op,
        };
        // The booking request this hold answers, written with the hold: the search's (held here
        // until the flush), else the one named, else the patient's open one.
        let ep = self.pending.take(nin);
        let link = ep
            .as_ref()
            .map(|e| e.request_id.clone())
            .or_else(|| Some(request_id.to_owned()).filter(|r| !r.is_empty()));
        let resp: Result<_, BookingError> = async {
            let now = self.p.clock.now_ms();
            let hold_id = new_id();
            let expires = now + self.cfg.hold_ttl.num_milliseconds();
            let request = link.as_deref();
            let practice = Practice::OfPatient(nin);
            // One hold at a time: an earlier hold of the patient is released (rolled back with
            // the rest if the new hold fails).
            let postgres = self.p.db.backend() == Backend::Postgres;
            // The hold: $1 hold id, $2 patient, $3 expiry, $4 request, $5 slot, $6 now.
            let hold = format!(
                "UPDATE booking_slots AS s SET status = 3, hold_id = $1, hold_patient = $2, hold_expires_at = $3, \
                 hold_from_waitlist = 0, hold_request_id = $4 \
                 WHERE s.slot_id = $5 AND s.start_at > $6 AND s.acute_reserve = 0 AND {}",
                takeable(6)
            );
            // PostgreSQL: one round trip, the claim of the key, the hold (only of a slot of the
            // patient's practice, read back with its GP) and the release. The two updates never
            // touch the same row, so their shared snapshot changes nothing. A row per released
            // hold, or one with released_id NULL; slot_id NULL when the slot was not held.
            // SQLite: the checks and the release first, then the hold.
            let (sql, checked, mut released) = if postgres {
                let sql = format!(
                    "WITH {}, held AS ({hold} AND {} AND {CLAIMED} RETURNING {TAKEN_COLS}), \
                     released AS ({} AND {CLAIMED} RETURNING slot_id) \
                     SELECT c.claimed, {SLOT_COLS}, r.slot_id AS released_id FROM {CLAIM_ROW} \
                     LEFT JOIN (held s JOIN booking_gps g ON g.gp_uid = s.gp_uid LEFT JOIN released r ON true) ON true",
                    op.claim_cte(7),
                    practice.condition(2),
                    release_holds_of(2, 5)
                );
                (sql, None, Vec::new())
            } else {
                let tx = &mut op.tx;
                let (slot, _) = self.slot_with_gp(tx, practice, slot_id).await?;
                holdable(&slot, now)?;
                let mut released = Vec::new();
                for r in sqlx::query(&format!("{} RETURNING slot_id", release_holds_of(1, 2)))
                    .bind(nin)
                    .bind(slot_id)
                    .fetch_all(&mut **tx)
                    .await?
                {
                    released.push(r.try_get::<String, _>("slot_id")?);
                }
                (format!("{hold} RETURNING slot_id"), Some(slot), released)
            };
            let q = sqlx::query(&sql)
                .bind(&hold_id)
                .bind(nin)
                .bind(expires)
                .bind(request)
                .bind(slot_id)
                .bind(now);
            let rows = op.bind_claim(q).fetch_all(&mut *op.tx).await?;
            if postgres {
                let claimed = match rows.first() {
                    Some(row) => row.try_get("claimed")?,
                    None => 0,
                };
                if let Some(first) = op.claimed(claimed).await? {
                    return Ok(Taken::Replay(first));
                }
            }
            // The slot's row, if it was held (PostgreSQL: slot_id is NULL when not).
            let held = rows.first().filter(|row| {
                !postgres || matches!(row.try_get::<Option<String>, _>("slot_id"), Ok(Some(_)))
            });
            let tx = &mut op.tx;
            let taken = match (held, checked) {
                (None, _) => None,
                (Some(_), Some(slot)) => Some((slot, released)),
                (Some(row), None) => {
                    for r in &rows {
                        released.extend(r.try_get::<Option<String>, _>("released_id")?);
                    }
                    Some((slot_from_row(row, now)?, released))
                }
            };
            let Some((slot, released)) = taken else {
                if postgres {
                    // Why not: the same checks in the same order as on SQLite.
                    let (slot, _) = self.slot_with_gp(tx, practice, slot_id).await?;
                    holdable(&slot, now)?;
                }
                return Err(BookingError::FailedPrecondition("slot is no longer free".into()));
            };
            for id in released {
                self.offer_to_waitlist(tx, &id).await?;
            }
            let at = from_ms(now);
            match ep.clone() {
                Some(mut e) => {
                    e.chose(&slot.slot_id, slot.start, at);
                    e.write(tx);
                }
                None => tx.defer(
                    episodes::CHOOSE,
                    episodes::choose_values(request, nin, &slot.slot_id, slot.start, at, false),
                ),
            }
            Ok(Taken::Slot(Hold {
                hold_id,
                slot: Slot { status: SlotStatus::BusyTentative, ..slot },
                expires_at: from_ms(expires),
                from_waitlist: false,
            }))
        }
        .await;
        // The request was written with the hold, or waits again for the flush.
        let mut written = false;
        let done: Result<Hold, BookingError> = async {
            let resp = match resp? {
                Taken::Replay(first) => return Ok(first),
                Taken::Slot(hold) => hold,
            };
            op.finish(&resp).await?;
            written = true;
            Ok(resp)
        }
        .await;
        if let (Some(e), false) = (ep, written) {
            self.pending.restore(e);
        }
        done
    }

    /// PostgreSQL: claims the call's key if it is not claimed yet ([`Op::claim_cte`]), takes
    /// the slot for the patient and reads it with its GP in one statement ([`take_update`] in a
    /// CTE, with the practice's condition and a join of what it returned), only when every
    /// condition of [`Booking::take_slot`] holds. `Slot(None)` when it took nothing (the caller
    /// then finds out why, step by step).
    async fn take_and_read<R: DeserializeOwned>(
        &self,
        op: &mut Op,
        nin: &str,
        practice: Practice<'_>,
        target: &Target,
        allow_acute: bool,
    ) -> Result<Taken<R, Option<(Slot, SlotGp)>>, BookingError> {
        let now = self.p.clock.now_ms();
        let (update, params) = take_update(target);
        let sql = format!(
            "WITH {}, taken AS ({update} AND s.start_at > $3 AND {} AND {CLAIMED} RETURNING {TAKEN_COLS}) \
             SELECT c.claimed, {} FROM {CLAIM_ROW} LEFT JOIN (taken s JOIN booking_gps g ON g.gp_uid = s.gp_uid) ON true",
            op.claim_cte(params + 2),
            practice.condition(params + 1),
            slot_gp_cols()
        );
        let q = bind_take(sqlx::query(&sql), target, nin, now, allow_acute).bind(practice.scope());
        let row = op.bind_claim(q).fetch_one(&mut *op.tx).await?;
        if let Some(first) = op.claimed(row.try_get("claimed")?).await? {
            return Ok(Taken::Replay(first));
        }
        if row.try_get::<Option<String>, _>("slot_id")?.is_none() {
            return Ok(Taken::Slot(None));
        }
        Ok(Taken::Slot(Some(slot_gp_from_row(&row, now)?)))
    }

    /// Takes the slot of `practice` for the patient inside `op`: from an own hold or a takeable
    /// slot. The first statement of the call on PostgreSQL: it claims the key of a call begun
    /// with [`Booking::begin_op_claiming_first`], and `Replay` is the first attempt's answer.
    async fn take_slot<R: DeserializeOwned>(
        &self,
        op: &mut Op,
        nin: &str,
        practice: Practice<'_>,
        target: &Target,
        allow_acute: bool,
    ) -> Result<Taken<R, (Slot, SlotGp)>, BookingError> {
        // PostgreSQL: one statement when it takes the slot; when it took nothing, the steps
        // below tell why (a slot that changed meanwhile may be taken by them after all, which
        // is as good).
        if self.p.db.backend() == Backend::Postgres {
            match self
                .take_and_read(op, nin, practice, target, allow_acute)
                .await?
            {
                Taken::Replay(first) => return Ok(Taken::Replay(first)),
                Taken::Slot(Some(taken)) => return Ok(Taken::Slot(taken)),
                Taken::Slot(None) => {}
            }
        }
        self.take_slot_steps(&mut op.tx, nin, practice, target, allow_acute)
            .await
            .map(Taken::Slot)
    }

    /// [`Booking::take_slot`] step by step: SQLite's way, and PostgreSQL's to tell why the one
    /// statement took nothing.
    async fn take_slot_steps(
        &self,
        tx: &mut Tx,
        nin: &str,
        practice: Practice<'_>,
        target: &Target,
        allow_acute: bool,
    ) -> Result<(Slot, SlotGp), BookingError> {
        let now = self.p.clock.now_ms();
        let take = async |tx: &mut Tx| -> Result<Option<String>, BookingError> {
            let (update, _) = take_update(target);
            let sql = format!("{update} RETURNING slot_id");
            let row = bind_take(sqlx::query(&sql), target, nin, now, allow_acute)
                .fetch_optional(&mut **tx)
                .await?;
            Ok(row.map(|r| r.try_get("slot_id")).transpose()?)
        };
        match target {
            Target::Hold(hold_id) => {
                let Some(slot_id) = take(tx).await? else {
                    // Not taken: tell an unknown hold from an expired one.
                    let known = sqlx::query("SELECT slot_id FROM booking_slots WHERE hold_id = $1 AND hold_patient = $2")
                        .bind(hold_id)
                        .bind(nin)
                        .fetch_optional(&mut **tx)
                        .await?;
                    return Err(match known {
                        None => BookingError::NotFound("hold_id".into()),
                        Some(_) => BookingError::FailedPrecondition("the hold has expired".into()),
                    });
                };
                let (slot, gp) = self.slot_with_gp(tx, practice, &slot_id).await?;
                if slot.start.timestamp_millis() <= now {
                    return Err(BookingError::FailedPrecondition(
                        "slot has already started".into(),
                    ));
                }
                Ok((slot, gp))
            }
            Target::Slot(slot_id) => {
                let (slot, gp) = self.slot_with_gp(tx, practice, slot_id).await?;
                if slot.acute_reserve && !allow_acute {
                    return Err(BookingError::FailedPrecondition(
                        "slot is reserved for same-day emergency help".into(),
                    ));
                }
                // The update takes only a slot that has not started.
                if take(tx).await?.is_none() {
                    return Err(BookingError::FailedPrecondition(
                        "slot is no longer free".into(),
                    ));
                }
                Ok((slot, gp))
            }
        }
    }

    fn insert_appointment(
        &self,
        tx: &mut Tx,
        nin: &str,
        (slot, gp): (&Slot, &SlotGp),
        reason: &str,
        request_id: &str,
        rescheduled_from: Option<&str>,
    ) -> Appointment {
        let now = self.p.clock.now_ms();
        let id = new_id();
        // Deferred to the commit (nothing in the call reads it back): on PostgreSQL it goes in
        // one statement with the event, the audit row and the stored answer. The unique index
        // refuses a second live appointment for the slot there ([`finish_booked`]).
        tx.defer(
            "INSERT INTO booking_appointments (appointment_id, slot_id, gp_uid, patient_nin, status, reason, booked_at, rescheduled_from, request_id) \
             VALUES ($1, $2, $3, $4, 1, $5, $6, $7, $8)",
            vec![
                id.as_str().into(),
                slot.slot_id.as_str().into(),
                gp.gp_uid.as_str().into(),
                nin.into(),
                reason.into(),
                now.into(),
                rescheduled_from.into(),
                Some(request_id).filter(|r| !r.is_empty()).into(),
            ],
        );
        Appointment {
            appointment_id: id,
            slot: Slot {
                status: SlotStatus::Busy,
                ..slot.clone()
            },
            status: AppointmentStatus::Booked,
            patient_nin: nin.to_owned(),
            gp_id: slot.gp_id.clone(),
            reason: reason.to_owned(),
            booked_at: from_ms(now),
            cancelled_at: None,
            cancelled_by: None,
            late_cancellation: false,
            rescheduled_from: rescheduled_from.map(str::to_owned),
        }
    }

    /// Books a hold or a free slot.
    pub async fn book(
        &self,
        caller: &Caller,
        nin: &str,
        target: Target,
        reason: &str,
        request_id: &str,
        key: &str,
    ) -> Result<Appointment, BookingError> {
        let req = (nin, &target, reason, request_id);
        let mut op = match self
            .begin_op_claiming_first(caller, rpc::BOOK, key, &req)
            .await?
        {
            Begun::Replay(r) => return Ok(r),
            Begun::New(op) => op,
        };
        // The booking request this booking closes: the search's (held here until the flush),
        // else the one its hold was made for, else the one named, else the patient's open one.
        let ep = self.pending.take(nin);
        let mut written = false;
        let done = async {
            let (slot, gp) = match self
                .take_slot(&mut op, nin, Practice::OfPatient(nin), &target, false)
                .await?
            {
                Taken::Replay(first) => return Ok(first),
                Taken::Slot(taken) => taken,
            };
            let at = self.now();
            match ep.clone() {
                Some(mut e) => {
                    e.chose(&slot.slot_id, slot.start, at);
                    e.booked(at);
                    e.write(&mut op.tx);
                }
                None => {
                    let link = match &target {
                        Target::Hold(_) => gp.hold_request_id.clone(),
                        Target::Slot(_) => None,
                    }
                    .or_else(|| Some(request_id.to_owned()).filter(|r| !r.is_empty()));
                    op.tx.defer(
                        episodes::CHOOSE,
                        episodes::choose_values(
                            link.as_deref(),
                            nin,
                            &slot.slot_id,
                            slot.start,
                            at,
                            true,
                        ),
                    );
                }
            }
            let a = self
                .book_taken(
                    caller,
                    rpc::BOOK,
                    &mut op.tx,
                    nin,
                    (&slot, &gp),
                    reason,
                    request_id,
                )
                .await?;
            finish_booked(op, &a).await?;
            written = true;
            Ok(a)
        }
        .await;
        if let (Some(e), false) = (ep, written) {
            self.pending.restore(e);
        }
        done
    }

    /// The appointment of a slot taken for the patient in `tx` by `action`, with its event and
    /// audit row.
    #[allow(clippy::too_many_arguments)]
    async fn book_taken(
        &self,
        caller: &Caller,
        action: &str,
        tx: &mut Tx,
        nin: &str,
        (slot, gp): (&Slot, &SlotGp),
        reason: &str,
        request_id: &str,
    ) -> Result<Appointment, BookingError> {
        let now = self.p.clock.now_ms();
        let a = self.insert_appointment(tx, nin, (slot, gp), reason, request_id, None);
        self.emit_for(tx, topics::BOOKING_CREATED, &a, gp.routing(), now)
            .await?;
        let access = Access {
            action,
            resource: format!("appointment:{}", a.appointment_id),
            patient_nin: nin,
        };
        audit::record(tx, caller, &access, now).await?;
        Ok(a)
    }

    /// Books a slot of `org` for a patient on one of the practice's lists (EHR).
    pub async fn book_for_patient(
        &self,
        caller: &Caller,
        b: PracticeBooking<'_>,
        key: &str,
    ) -> Result<Appointment, BookingError> {
        let PracticeBooking {
            org,
            nin,
            slot_id,
            reason,
            requested_at,
        } = b;
        let req = (
            org,
            nin,
            slot_id,
            reason,
            requested_at.map(|t| t.timestamp_millis()),
        );
        let mut op = match self
            .begin_op(caller, rpc::BOOK_FOR_PATIENT, key, &req)
            .await?
        {
            Begun::Replay(r) => return Ok(r),
            Begun::New(op) => op,
        };
        let (list_gp, cal) = match self.own_gp(&mut op.tx, nin).await {
            Ok((gp, cal)) if gp.org_number == org => (gp, cal),
            Ok(_) | Err(BookingError::FailedPrecondition(_)) => {
                return Err(BookingError::FailedPrecondition(
                    "patient_nin is not on a list of this practice".into(),
                ));
            }
            Err(e) => return Err(e),
        };
        let now = self.now();
        // The booking request this booking closes: the patient's open one (the patient searched
        // online, then phoned), else a new one of channel practice from `requested_at`.
        let ep = self.pending.take(nin);
        let open = match ep.clone() {
            Some(e) => Some(e),
            None => episodes::open_of_patient(&mut op.tx, nin, now).await?,
        };
        let new = open.is_none();
        let mut episode = match open {
            Some(e) => e,
            None => {
                let mut e = Episode::open(
                    nin,
                    &list_gp.listed(),
                    Channel::Practice,
                    requested_at.unwrap_or(now),
                    &cal,
                );
                let (own, others) =
                    earliest_offers(&mut op.tx, &list_gp, &e, now, now + Duration::days(30))
                        .await?;
                e.offered(own, others);
                e
            }
        };
        // The key was claimed by begin_op (the list check may fail the call before the take),
        // so the take has no replay to find.
        let mut written = false;
        let done = async {
            let (slot, gp) = match self
                .take_slot(
                    &mut op,
                    nin,
                    Practice::Org(org),
                    &Target::Slot(slot_id.to_owned()),
                    true,
                )
                .await?
            {
                Taken::Replay(first) => return Ok(first),
                Taken::Slot(taken) => taken,
            };
            // The booked slot is an offer too, unless it is the acute reserve.
            if new && !slot.acute_reserve {
                let own = slot.gp_id == list_gp.gp_id;
                episode.offered(own.then_some(slot.start), (!own).then_some(slot.start));
            }
            episode.chose(&slot.slot_id, slot.start, now);
            episode.booked(now);
            episode.write(&mut op.tx);
            let a = self
                .book_taken(
                    caller,
                    rpc::BOOK_FOR_PATIENT,
                    &mut op.tx,
                    nin,
                    (&slot, &gp),
                    reason,
                    &episode.request_id,
                )
                .await?;
            finish_booked(op, &a).await?;
            written = true;
            Ok(a)
        }
        .await;
        if written && new {
            self.metrics.opened(&episode);
        }
        if let (Some(e), false) = (ep, written) {
            self.pending.restore(e);
        }
        done
    }

    /// Cancels a booked appointment of the patient inside `tx`; returns it and its routing.
    async fn cancel_own(
        &self,
        tx: &mut Tx,
        nin: &str,
        id: &str,
    ) -> Result<(Appointment, String, String), BookingError> {
        let now = self.p.clock.now_ms();
        let row = sqlx::query(&format!(
            "{APPT_SELECT} WHERE a.appointment_id = $1 AND a.patient_nin = $2"
        ))
        .bind(id)
        .bind(nin)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(|| BookingError::NotFound("appointment_id".into()))?;
        let before = appt_from_row(&row, now)?;
        if before.status != AppointmentStatus::Booked {
            return Err(BookingError::FailedPrecondition(format!(
                "appointment is {}, only booked ones can be cancelled",
                before.status.fhir()
            )));
        }
        let start = before.slot.start.timestamp_millis();
        if start <= now {
            return Err(BookingError::FailedPrecondition(
                "the appointment has already started".into(),
            ));
        }
        let late = start - now < 24 * 3_600_000;
        let n = sqlx::query(
            "UPDATE booking_appointments SET status = 4, cancelled_at = $1, cancelled_by = 1, late_cancellation = $2 \
             WHERE appointment_id = $3 AND status = 1",
        )
        .bind(now)
        .bind(i64::from(late))
        .bind(id)
        .execute(&mut **tx)
        .await?
        .rows_affected();
        if n == 0 {
            return Err(BookingError::FailedPrecondition(
                "the appointment changed concurrently, retry".into(),
            ));
        }
        sqlx::query("UPDATE booking_slots SET status = 1 WHERE slot_id = $1 AND status = 2")
            .bind(&before.slot.slot_id)
            .execute(&mut **tx)
            .await?;
        let (org, muni) = appt_routing(&row)?;
        let after = Appointment {
            status: AppointmentStatus::Cancelled,
            cancelled_at: Some(from_ms(now)),
            cancelled_by: Some(CancelledBy::Patient),
            late_cancellation: late,
            slot: Slot {
                status: SlotStatus::Free,
                ..before.slot.clone()
            },
            ..before
        };
        Ok((after, org, muni))
    }

    /// Cancels an own appointment; the slot goes to the waitlist or back to free.
    pub async fn cancel(
        &self,
        caller: &Caller,
        nin: &str,
        id: &str,
        key: &str,
    ) -> Result<Appointment, BookingError> {
        let req = (nin, id);
        let mut op = match self.begin_op(caller, rpc::CANCEL, key, &req).await? {
            Begun::Replay(r) => return Ok(r),
            Begun::New(op) => op,
        };
        let tx = &mut op.tx;
        let resp: Result<_, BookingError> = async {
            let now = self.p.clock.now_ms();
            let (a, org, muni) = self.cancel_own(tx, nin, id).await?;
            self.emit(tx, topics::BOOKING_CANCELLED, &a, &org, &muni, now)
                .await?;
            self.offer_to_waitlist(tx, &a.slot.slot_id).await?;
            let access = Access {
                action: rpc::CANCEL,
                resource: format!("appointment:{id}"),
                patient_nin: nin,
            };
            audit::record(tx, caller, &access, now).await?;
            Ok(a)
        }
        .await;
        let resp = resp?;
        op.finish(&resp).await?;
        Ok(resp)
    }

    /// Moves an own appointment to another slot atomically.
    pub async fn reschedule(
        &self,
        caller: &Caller,
        nin: &str,
        id: &str,
        target: Target,
        key: &str,
    ) -> Result<Appointment, BookingError> {
        let req = (nin, id, &target);
        let mut op = match self
            .begin_op_claiming_first(caller, rpc::RESCHEDULE, key, &req)
            .await?
        {
            Begun::Replay(r) => return Ok(r),
            Begun::New(op) => op,
        };
        // Take the new slot first: if it is gone, nothing has changed.
        let (slot, gp) = match self
            .take_slot(&mut op, nin, Practice::OfPatient(nin), &target, false)
            .await?
        {
            Taken::Replay(first) => return Ok(first),
            Taken::Slot(taken) => taken,
        };
        let tx = &mut op.tx;
        let resp: Result<_, BookingError> = async {
            let now = self.p.clock.now_ms();
            let (old, old_org, old_muni) = self.cancel_own(tx, nin, id).await?;
            let new = self.insert_appointment(tx, nin, (&slot, &gp), &old.reason, "", Some(id));
            self.emit(
                tx,
                topics::BOOKING_CANCELLED,
                &old,
                &old_org,
                &old_muni,
                now,
            )
            .await?;
            self.emit_for(tx, topics::BOOKING_RESCHEDULED, &new, gp.routing(), now)
                .await?;
            self.offer_to_waitlist(tx, &old.slot.slot_id).await?;
            let access = Access {
                action: rpc::RESCHEDULE,
                resource: format!("appointment:{}", new.appointment_id),
                patient_nin: nin,
            };
            audit::record(tx, caller, &access, now).await?;
            Ok(new)
        }
        .await;
        let resp = resp?;
        finish_booked(op, &resp).await?;
        Ok(resp)
    }

    /// The patient's appointments, holds and waitlist entries.
    pub async fn list_mine(
        &self,
        caller: &Caller,
        nin: &str,
        include_past: bool,
    ) -> Result<(Vec<Appointment>, Vec<Hold>, Vec<WaitlistEntry>), BookingError> {
        let now = self.p.clock.now_ms();
        let rows = sqlx::query(&format!("{APPT_SELECT} WHERE a.patient_nin = $1 AND ($2 = 1 OR s.end_at > $3) ORDER BY s.start_at"))
            .bind(nin)
            .bind(i64::from(include_past))
            .bind(now)
            .fetch_all(self.p.db.read())
            .await?;
        let appts = rows
            .iter()
            .map(|r| appt_from_row(r, now))
            .collect::<Result<Vec<_>, _>>()?;
        let rows = sqlx::query(&format!(
            "SELECT {SLOT_COLS}, s.hold_id, s.hold_from_waitlist FROM booking_slots s JOIN booking_gps g ON g.gp_uid = s.gp_uid \
             WHERE s.hold_patient = $1 AND s.status = 3 AND s.hold_expires_at > $2 ORDER BY s.start_at"
        ))
        .bind(nin)
        .bind(now)
        .fetch_all(self.p.db.read())
        .await?;
        let mut holds = Vec::with_capacity(rows.len());
        for r in &rows {
            holds.push(Hold {
                hold_id: r.try_get("hold_id")?,
                slot: slot_from_row(r, now)?,
                expires_at: from_ms(r.try_get("hold_expires_at")?),
                from_waitlist: r.try_get::<i64, _>("hold_from_waitlist")? != 0,
            });
        }
        let rows = sqlx::query(
            "SELECT w.entry_id, g.gp_id, w.latest_date, w.modality, w.joined_at, w.active FROM booking_waitlist w \
             JOIN booking_gps g ON g.gp_uid = w.gp_uid WHERE w.patient_nin = $1 AND w.active = 1 ORDER BY w.joined_at",
        )
        .bind(nin)
        .fetch_all(self.p.db.read())
        .await?;
        let waitlist = rows
            .iter()
            .map(waitlist_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let access = Access {
            action: rpc::LIST_MINE,
            resource: "appointments".into(),
            patient_nin: nin,
        };
        audit::record_reads(&self.p.db, caller, &[access], now).await?;
        Ok((appts, holds, waitlist))
    }

    /// Joins the own GP's waitlist; a matching free slot is offered at once.
    pub async fn join_waitlist(
        &self,
        caller: &Caller,
        nin: &str,
        latest: NaiveDate,
        modality: Option<Modality>,
        key: &str,
    ) -> Result<WaitlistEntry, BookingError> {
        let now = self.now();
        if latest < oslo_date(now) {
            return Err(BookingError::invalid(
                "latest_date",
                "must be today or later",
            ));
        }
        let req = (nin, latest, modality);
        let mut op = match self.begin_op(caller, rpc::JOIN_WAITLIST, key, &req).await? {
            Begun::Replay(r) => return Ok(r),
            Begun::New(op) => op,
        };
        let tx = &mut op.tx;
        let resp: Result<_, BookingError> = async {
            let now_ms = now.timestamp_millis();
            let (gp, _) = self.own_gp(tx, nin).await?;
            let entry_id = new_id();
            let inserted = sqlx::query(
                "INSERT INTO booking_waitlist (entry_id, gp_uid, patient_nin, latest_date, modality, priority, joined_at, active) \
                 VALUES ($1, $2, $3, $4, $5, 0, $6, 1)",
            )
            .bind(&entry_id)
            .bind(&gp.gp_uid)
            .bind(nin)
            .bind(latest.format("%Y-%m-%d").to_string())
            .bind(modality.map_or(0, Modality::code))
            .bind(now_ms)
            .execute(&mut **tx)
            .await;
            match inserted {
                Err(e) if is_unique_violation(&e) => return Err(BookingError::AlreadyExists("you are already on this GP's waitlist".into())),
                Err(e) => return Err(e.into()),
                Ok(_) => {}
            }
            // A slot that is free right now goes to the first in line (which may be someone else).
            let free = sqlx::query(&format!(
                "SELECT s.slot_id FROM booking_slots s WHERE s.gp_uid = $1 AND s.start_at > $2 AND s.acute_reserve = 0 AND {} \
                 AND ($3 = 0 OR s.modality = $3) ORDER BY s.start_at LIMIT 20",
                takeable(2)
            ))
            .bind(&gp.gp_uid)
            .bind(now_ms)
            .bind(modality.map_or(0, Modality::code))
            .fetch_all(&mut **tx)
            .await?;
            for r in free {
                let id: String = r.try_get("slot_id")?;
                self.offer_to_waitlist(tx, &id).await?;
            }
            let access = Access { action: rpc::JOIN_WAITLIST, resource: format!("waitlist:{entry_id}"), patient_nin: nin };
            audit::record(tx, caller, &access, now_ms).await?;
            let row = sqlx::query(
                "SELECT w.entry_id, g.gp_id, w.latest_date, w.modality, w.joined_at, w.active FROM booking_waitlist w \
                 JOIN booking_gps g ON g.gp_uid = w.gp_uid WHERE w.entry_id = $1",
            )
            .bind(&entry_id)
            .fetch_one(&mut **tx)
            .await?;
            waitlist_from_row(&row)
        }
        .await;
        let resp = resp?;
        op.finish(&resp).await?;
        Ok(resp)
    }

    /// Leaves the waitlist.
    pub async fn leave_waitlist(
        &self,
        caller: &Caller,
        nin: &str,
        entry_id: &str,
    ) -> Result<WaitlistEntry, BookingError> {
        let mut tx = self.p.db.begin().await?;
        let now = self.p.clock.now_ms();
        sqlx::query(
            "UPDATE booking_waitlist SET active = 0 WHERE entry_id = $1 AND patient_nin = $2",
        )
        .bind(entry_id)
        .bind(nin)
        .execute(&mut *tx)
        .await?;
        let row = sqlx::query(
            "SELECT w.entry_id, g.gp_id, w.latest_date, w.modality, w.joined_at, w.active FROM booking_waitlist w \
             JOIN booking_gps g ON g.gp_uid = w.gp_uid WHERE w.entry_id = $1 AND w.patient_nin = $2",
        )
        .bind(entry_id)
        .bind(nin)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| BookingError::NotFound("entry_id".into()))?;
        let access = Access {
            action: rpc::LEAVE_WAITLIST,
            resource: format!("waitlist:{entry_id}"),
            patient_nin: nin,
        };
        audit::record(&mut tx, caller, &access, now).await?;
        tx.commit().await?;
        waitlist_from_row(&row)
    }

    async fn has_waiting(&self, tx: &mut Tx, gp_uid: &str) -> Result<bool, BookingError> {
        Ok(sqlx::query(
            "SELECT 1 AS x FROM booking_waitlist WHERE gp_uid = $1 AND active = 1 LIMIT 1",
        )
        .bind(gp_uid)
        .fetch_optional(&mut **tx)
        .await?
        .is_some())
    }

    /// Offers a takeable slot to the first matching waiting patient as a hold. Returns whether
    /// it was offered.
    async fn offer_to_waitlist(&self, tx: &mut Tx, slot_id: &str) -> Result<bool, BookingError> {
        let now = self.p.clock.now_ms();
        let Some(s) = sqlx::query(&format!(
            "SELECT s.gp_uid, s.start_at, s.modality, g.org_number FROM booking_slots s JOIN booking_gps g ON g.gp_uid = s.gp_uid \
             WHERE s.slot_id = $1 AND s.start_at > $2 AND s.acute_reserve = 0 AND {}",
            takeable(2)
        ))
        .bind(slot_id)
        .bind(now)
        .fetch_optional(&mut **tx)
        .await?
        else {
            return Ok(false);
        };
        let gp_uid: String = s.try_get("gp_uid")?;
        let org: String = s.try_get("org_number")?;
        let date = oslo_date(from_ms(s.try_get("start_at")?))
            .format("%Y-%m-%d")
            .to_string();
        let Some(w) = sqlx::query(
            "SELECT entry_id, patient_nin FROM booking_waitlist WHERE gp_uid = $1 AND active = 1 AND latest_date >= $2 \
             AND (modality = 0 OR modality = $3) ORDER BY priority DESC, joined_at LIMIT 1",
        )
        .bind(&gp_uid)
        .bind(&date)
        .bind(s.try_get::<i64, _>("modality")?)
        .fetch_optional(&mut **tx)
        .await?
        else {
            return Ok(false);
        };
        let entry_id: String = w.try_get("entry_id")?;
        let patient: String = w.try_get("patient_nin")?;
        let hold_id = new_id();
        let expires = now + self.cfg.waitlist_hold_ttl.num_milliseconds();
        sqlx::query(
            "UPDATE booking_slots SET status = 3, hold_id = $1, hold_patient = $2, hold_expires_at = $3, hold_from_waitlist = 1, hold_request_id = NULL \
             WHERE slot_id = $4",
        )
        .bind(&hold_id)
        .bind(&patient)
        .bind(expires)
        .bind(slot_id)
        .execute(&mut **tx)
        .await?;
        sqlx::query(
            "UPDATE booking_waitlist SET active = 0, offered_hold_id = $1 WHERE entry_id = $2",
        )
        .bind(&hold_id)
        .bind(&entry_id)
        .execute(&mut **tx)
        .await?;
        let body = serde_json::json!({ "entry_id": entry_id, "hold_id": hold_id, "slot_id": slot_id, "patient_nin": patient, "expires_at_ms": expires });
        outbox::enqueue(
            tx,
            NewEvent {
                topic: topics::BOOKING_WAITLIST_OFFERED,
                org_number: &org,
                route_key: &patient,
                payload: &body,
            },
            now,
        )
        .await?;
        Ok(true)
    }

    /// Frees lapsed holds (and offers those slots to the waitlist). Returns how many.
    pub async fn sweep_expired_holds(&self) -> Result<usize, BookingError> {
        let now = self.p.clock.now_ms();
        let mut tx = self.p.db.begin().await?;
        let rows = sqlx::query(
            "UPDATE booking_slots SET status = 1, hold_id = NULL, hold_patient = NULL, hold_expires_at = NULL, hold_request_id = NULL \
             WHERE slot_id IN (SELECT slot_id FROM booking_slots WHERE status = 3 AND hold_expires_at <= $1 LIMIT 200) RETURNING slot_id",
        )
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        for r in &rows {
            let id: String = r.try_get("slot_id")?;
            self.offer_to_waitlist(&mut tx, &id).await?;
        }
        tx.commit().await?;
        Ok(rows.len())
    }

    /// Background task: writes the searches' booking requests and access-log rows every
    /// [`BookingConfig::episode_flush_interval`], and once more at shutdown.
    pub async fn run_episode_flusher(self) {
        let mut stop = self.p.shutdown.clone();
        loop {
            let stopping = tokio::select! {
                _ = tokio::time::sleep(self.cfg.episode_flush_interval) => false,
                _ = stop.changed() => true,
            };
            match self.pending.flush(&self.p.db).await {
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, waiting = self.pending.len(), "booking request flush failed")
                }
            }
            if stopping {
                return;
            }
        }
    }

    /// Writes the searches' booking requests now (tests, shutdown).
    pub async fn flush_episodes(&self) -> Result<usize, BookingError> {
        Ok(self.pending.flush(&self.p.db).await?)
    }

    /// Background task: sweeps lapsed holds every `every` until shutdown.
    pub async fn run_hold_sweeper(self, every: std::time::Duration) {
        let mut stop = self.p.shutdown.clone();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.changed() => return,
            }
            match self.sweep_expired_holds().await {
                Ok(n) if n > 0 => tracing::info!(freed = n, "lapsed holds freed"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "hold sweeper failed"),
            }
        }
    }

    /// Booking changes of `org` after `cursor` up to `upto` (for WatchBookings); audits each
    /// delivered appointment and list move.
    pub async fn changes_after(
        &self,
        caller: &Caller,
        org: &str,
        cursor: u64,
        upto: u64,
    ) -> Result<Vec<(u64, String, Change)>, BookingError> {
        let events = outbox::read_after(
            &self.p.db,
            cursor,
            upto,
            outbox::EventFilter {
                topic_prefix: "booking.",
                org_number: Some(org),
                route_key: None,
            },
            200,
        )
        .await?;
        let mut out = Vec::with_capacity(events.len());
        let mut last_seq = cursor;
        for e in events {
            last_seq = e.seq;
            if matches!(
                e.topic.as_str(),
                topics::BOOKING_REQUESTED | topics::BOOKING_WAITLIST_OFFERED
            ) {
                continue;
            }
            let body = if e.topic == topics::BOOKING_LIST_MOVED {
                Change::ListMoved(serde_json::from_str(&e.payload).map_err(anyhow::Error::from)?)
            } else {
                Change::Appointment(serde_json::from_str(&e.payload).map_err(anyhow::Error::from)?)
            };
            out.push((e.seq, e.topic, body));
        }
        let accesses: Vec<Access<'_>> = out
            .iter()
            .map(|(_, _, b)| match b {
                Change::Appointment(a) => Access {
                    action: rpc::WATCH,
                    resource: format!("appointment:{}", a.appointment_id),
                    patient_nin: &a.patient_nin,
                },
                Change::ListMoved(m) => Access {
                    action: rpc::WATCH,
                    resource: format!("list_move:{}", m.move_id),
                    patient_nin: &m.patient_nin,
                },
            })
            .collect();
        audit::record_reads(&self.p.db, caller, &accesses, self.p.clock.now_ms()).await?;
        if out.is_empty() && last_seq > cursor {
            // Only events the stream does not carry: report progress with an empty marker.
            out.push((
                last_seq,
                String::new(),
                Change::Appointment(Box::new(empty_change())),
            ));
        }
        Ok(out)
    }

    /// The platform (for the gRPC adapter's streams).
    pub fn platform(&self) -> &Platform {
        &self.p
    }
}

/// One entry of an organisation's change stream (WatchBookings).
#[derive(Debug, Clone)]
pub enum Change {
    /// An appointment after its change (boxed: the larger variant by far).
    Appointment(Box<AppointmentChanged>),
    /// A patient left one of the organisation's lists.
    ListMoved(ListMoved),
}

fn empty_change() -> AppointmentChanged {
    AppointmentChanged {
        appointment_id: String::new(),
        slot_id: String::new(),
        gp_id: String::new(),
        org_number: String::new(),
        municipality_number: String::new(),
        patient_nin: String::new(),
        modality: String::new(),
        start_ms: 0,
        end_ms: 0,
        status: String::new(),
        reason: String::new(),
        booked_at_ms: 0,
        cancelled_at_ms: None,
        cancelled_by: None,
        late_cancellation: false,
        rescheduled_from: None,
        gp_hpr_number: String::new(),
    }
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
    })
}
