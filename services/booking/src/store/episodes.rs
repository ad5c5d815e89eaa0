//! The statements of booking requests (`booking_episodes`; see [`crate::episodes`]): the merge
//! every writer defers, the patient's open episode, the choice recorded without reading it, and
//! the counts the § 22 figures are made of. Each statement is the same on PostgreSQL and SQLite.

use crate::episodes::{Channel, Episode, Outcome, Scope, TARGET_WORKING_DAYS};
use crate::guarantee::MetBy;
use chrono::NaiveDate;
use econsult_calendar::Calendar;
use econsult_runtime::db::{Defer, Value};
use sqlx::AnyConnection;
use sqlx::Row as _;
use sqlx::any::AnyRow;

/// The patient's (`$1`) open episode, active after `$2`.
const OPEN_OF_PATIENT: &str = "SELECT request_id, patient_nin, gp_uid, gp_id, org_number, municipality_number, channel, \
     requested_at, day, deadline_end, vacant, closed_in_window, earliest_offer_at, earliest_offer_working_days, \
     own_offer_at, narrowed, chosen_slot_id, chosen_start_at, last_activity_at, closed_at, outcome, met_by, met_at \
     FROM booking_episodes WHERE patient_nin = $1 AND closed_at IS NULL AND last_activity_at > $2 \
     ORDER BY requested_at DESC LIMIT 1";

/// Insert, or merge into the stored episode: what was set at opening stays; the earliest offers
/// only get earlier; the first step of the guarantee engine that met it stays; `narrowed` follows the latest activity; the choice is kept once closed;
/// activity only gets later; a closed episode stays closed with its outcome.
const UPSERT: &str = "INSERT INTO booking_episodes (request_id, patient_nin, gp_uid, gp_id, org_number, municipality_number, channel, \
     requested_at, day, deadline_end, vacant, closed_in_window, earliest_offer_at, earliest_offer_working_days, \
     own_offer_at, narrowed, chosen_slot_id, chosen_start_at, last_activity_at, closed_at, outcome, met_by, met_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23) \
     ON CONFLICT (request_id) DO UPDATE SET \
     earliest_offer_at = CASE WHEN booking_episodes.earliest_offer_at IS NULL OR excluded.earliest_offer_at < booking_episodes.earliest_offer_at \
         THEN excluded.earliest_offer_at ELSE booking_episodes.earliest_offer_at END, \
     earliest_offer_working_days = CASE WHEN booking_episodes.earliest_offer_at IS NULL OR excluded.earliest_offer_at < booking_episodes.earliest_offer_at \
         THEN excluded.earliest_offer_working_days ELSE booking_episodes.earliest_offer_working_days END, \
     own_offer_at = CASE WHEN booking_episodes.own_offer_at IS NULL OR excluded.own_offer_at < booking_episodes.own_offer_at \
         THEN excluded.own_offer_at ELSE booking_episodes.own_offer_at END, \
     narrowed = CASE WHEN excluded.last_activity_at >= booking_episodes.last_activity_at THEN excluded.narrowed ELSE booking_episodes.narrowed END, \
     chosen_slot_id = CASE WHEN booking_episodes.closed_at IS NULL AND excluded.chosen_slot_id IS NOT NULL \
         THEN excluded.chosen_slot_id ELSE booking_episodes.chosen_slot_id END, \
     chosen_start_at = CASE WHEN booking_episodes.closed_at IS NULL AND excluded.chosen_slot_id IS NOT NULL \
         THEN excluded.chosen_start_at ELSE booking_episodes.chosen_start_at END, \
     last_activity_at = CASE WHEN excluded.last_activity_at > booking_episodes.last_activity_at \
         THEN excluded.last_activity_at ELSE booking_episodes.last_activity_at END, \
     closed_at = COALESCE(booking_episodes.closed_at, excluded.closed_at), \
     outcome = CASE WHEN booking_episodes.closed_at IS NULL THEN excluded.outcome ELSE booking_episodes.outcome END, \
     met_at = CASE WHEN booking_episodes.met_by = 0 THEN excluded.met_at ELSE booking_episodes.met_at END, \
     met_by = CASE WHEN booking_episodes.met_by = 0 THEN excluded.met_by ELSE booking_episodes.met_by END \
     WHERE booking_episodes.patient_nin = excluded.patient_nin";

/// Ends the patient's (`$2`) open episodes requested before `$4` other than `$3` with outcome
/// `$1`, closed at their last activity. A newer one is never ended: a copy of an older episode
/// may be written late (a flush that began before it was booked), after the next was opened.
const EXPIRE_OTHERS: &str = "UPDATE booking_episodes SET closed_at = last_activity_at, outcome = $1 \
     WHERE patient_nin = $2 AND closed_at IS NULL AND request_id <> $3 AND requested_at < $4";

/// Records a hold (`closed` unset) or a booking (`closed` = now) of slot `$1` starting at `$2`
/// for the patient's (`$7`) episode `$6`, or when `$6` is NULL their open episode active after
/// `$8`, without reading it first: [`Episode::write`]'s merge for an episode this process does
/// not hold. `$3` now, `$4` the outcome code, `$5` closed_at.
const CHOOSE: &str = "UPDATE booking_episodes SET \
     chosen_slot_id = CASE WHEN closed_at IS NULL THEN $1 ELSE chosen_slot_id END, \
     chosen_start_at = CASE WHEN closed_at IS NULL THEN $2 ELSE chosen_start_at END, \
     last_activity_at = CASE WHEN last_activity_at < $3 THEN $3 ELSE last_activity_at END, \
     outcome = CASE WHEN closed_at IS NULL THEN $4 ELSE outcome END, \
     closed_at = COALESCE(closed_at, $5) \
     WHERE patient_nin = $7 AND request_id = COALESCE($6, (SELECT o.request_id FROM booking_episodes o \
         WHERE o.patient_nin = $7 AND o.closed_at IS NULL AND o.last_activity_at > $8 ORDER BY o.requested_at DESC LIMIT 1))";

/// The episodes in a [`Scope`] (`$1`…`$5`: first and last day 0, organisation, municipality, GP;
/// '' = all), counted by day 0, practice, municipality, GP, channel and what decides the figures.
/// Migrated episodes (`outcome` 4, counted by the old definition) are left out.
const ACCESSIBILITY: &str = "SELECT day, org_number, municipality_number, gp_id, channel, vacant, closed_in_window, \
     COALESCE(earliest_offer_working_days, -1) AS wd, \
     CASE WHEN earliest_offer_at < deadline_end OR met_by <> 0 THEN 1 ELSE 0 END AS within, met_by, \
     CASE WHEN own_offer_at < deadline_end THEN 1 ELSE 0 END AS own, \
     CASE WHEN chosen_start_at IS NOT NULL THEN (CASE WHEN chosen_start_at >= deadline_end THEN 1 ELSE 0 END) ELSE narrowed END AS later, \
     COUNT(*) AS n FROM booking_episodes \
     WHERE outcome <> 4 AND day >= $1 AND day <= $2 AND ($3 = '' OR org_number = $3) \
     AND ($4 = '' OR municipality_number = $4) AND ($5 = '' OR gp_id = $5) \
     GROUP BY day, org_number, municipality_number, gp_id, channel, vacant, closed_in_window, wd, within, met_by, own, later";

/// Defers the merge of `e` ([`UPSERT`]) to `tx`'s commit.
pub(crate) fn upsert(tx: &mut impl Defer, e: &Episode) {
    tx.defer(UPSERT, upsert_values(e));
}

fn upsert_values(e: &Episode) -> Vec<Value> {
    let (chosen_id, chosen_start) = match &e.chosen {
        Some((id, start)) => (Some(id.as_str()), Some(*start)),
        None => (None, None),
    };
    vec![
        e.request_id.as_str().into(),
        e.patient_nin.as_str().into(),
        e.gp_uid.as_str().into(),
        e.gp_id.as_str().into(),
        e.org_number.as_str().into(),
        e.municipality_number.as_str().into(),
        e.channel.code().into(),
        e.requested_at_ms.into(),
        e.day.format("%Y-%m-%d").to_string().into(),
        e.deadline_end_ms.into(),
        i64::from(e.vacant).into(),
        i64::from(e.closed_in_window).into(),
        e.earliest_offer_ms.into(),
        e.earliest_offer_wd.map(i64::from).into(),
        e.own_offer_ms.into(),
        i64::from(e.narrowed).into(),
        chosen_id.into(),
        chosen_start.into(),
        e.last_activity_ms.into(),
        e.closed.map(|(at, _)| at).into(),
        e.closed.map_or(0, |(_, o)| o.code()).into(),
        e.met.map_or(0, |(m, _)| m.code()).into(),
        e.met.map(|(_, at)| at).into(),
    ]
}

/// Defers the end of the patient's open episodes older than `e` ([`EXPIRE_OTHERS`]: expired by
/// inactivity, or superseded by `e`) to `tx`'s commit.
pub(crate) fn expire_others(tx: &mut impl Defer, e: &Episode) {
    tx.defer(
        EXPIRE_OTHERS,
        vec![
            Outcome::Expired.code().into(),
            e.patient_nin.as_str().into(),
            e.request_id.as_str().into(),
            e.requested_at_ms.into(),
        ],
    );
}

/// Defers [`CHOOSE`] with `values` ([`crate::episodes::choose_values`]) to `tx`'s commit.
pub(crate) fn choose(tx: &mut impl Defer, values: Vec<Value>) {
    tx.defer(CHOOSE, values);
}

/// An episode read back with the columns of [`OPEN_OF_PATIENT`].
pub(crate) fn episode_from_row(r: &AnyRow) -> Result<Episode, sqlx::Error> {
    let bad = |what: &str| sqlx::Error::Decode(format!("booking_episodes: bad {what}").into());
    let day: String = r.try_get("day")?;
    let day = NaiveDate::parse_from_str(&day, "%Y-%m-%d").map_err(|_| bad("day"))?;
    let deadline_end_ms: Option<i64> = r.try_get("deadline_end")?;
    let deadline_end_ms = deadline_end_ms.ok_or_else(|| bad("deadline_end"))?;
    let chosen_id: Option<String> = r.try_get("chosen_slot_id")?;
    let chosen_start: Option<i64> = r.try_get("chosen_start_at")?;
    let closed_at: Option<i64> = r.try_get("closed_at")?;
    let wd: Option<i64> = r.try_get("earliest_offer_working_days")?;
    let met_at: Option<i64> = r.try_get("met_at")?;
    let met = MetBy::from_code(r.try_get("met_by")?).zip(met_at);
    Ok(Episode {
        request_id: r.try_get("request_id")?,
        patient_nin: r.try_get("patient_nin")?,
        gp_uid: r.try_get("gp_uid")?,
        gp_id: r.try_get("gp_id")?,
        org_number: r.try_get("org_number")?,
        municipality_number: r.try_get("municipality_number")?,
        channel: Channel::from_code(r.try_get("channel")?).ok_or_else(|| bad("channel"))?,
        requested_at_ms: r.try_get("requested_at")?,
        day,
        deadline: Calendar::norwegian().add_working_days(day, TARGET_WORKING_DAYS),
        deadline_end_ms,
        vacant: r.try_get::<i64, _>("vacant")? != 0,
        closed_in_window: r.try_get::<i64, _>("closed_in_window")? != 0,
        earliest_offer_ms: r.try_get("earliest_offer_at")?,
        earliest_offer_wd: wd.map(|d| d.max(0) as u32),
        own_offer_ms: r.try_get("own_offer_at")?,
        narrowed: r.try_get::<i64, _>("narrowed")? != 0,
        chosen: chosen_id.zip(chosen_start),
        last_activity_ms: r.try_get("last_activity_at")?,
        closed: closed_at.map(|at| (at, Outcome::Booked)),
        met,
        fresh: false,
    })
}

/// The patient's open episode (active after `cutoff`, ms) as stored, if any.
pub(crate) async fn open_of_patient(
    conn: &mut AnyConnection,
    nin: &str,
    cutoff: i64,
) -> Result<Option<Episode>, sqlx::Error> {
    let row = sqlx::query(OPEN_OF_PATIENT)
        .bind(nin)
        .bind(cutoff)
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(episode_from_row).transpose()
}

/// One group of [`ACCESSIBILITY`]: `n` episodes alike in everything the figures look at.
pub(crate) struct Counted {
    /// Day 0 (Oslo date, ISO).
    pub day: String,
    /// Practice.
    pub org_number: String,
    /// Municipality of the list.
    pub municipality_number: String,
    /// GP.
    pub gp_id: String,
    /// Channel.
    pub channel: Channel,
    /// The list had no GP.
    pub vacant: bool,
    /// The practice was closed on a working day of the window.
    pub closed_in_window: bool,
    /// Working days from day 0 to the earliest offer; -1 without an offer.
    pub working_days: i64,
    /// The earliest offer was in time, or a step of the guarantee engine met the request.
    pub within: bool,
    /// The step of the guarantee engine that met it.
    pub met_by: Option<MetBy>,
    /// The own GP's earliest offer was in time.
    pub own: bool,
    /// The patient chose a slot after the deadline or (having chosen none) narrowed the search.
    pub later: bool,
    /// Episodes.
    pub n: u64,
}

/// The episodes of `scope`, counted ([`ACCESSIBILITY`]).
pub(crate) async fn accessibility_counts(
    conn: &mut AnyConnection,
    scope: &Scope,
) -> Result<Vec<Counted>, sqlx::Error> {
    let rows = sqlx::query(ACCESSIBILITY)
        .bind(&scope.from)
        .bind(&scope.to)
        .bind(&scope.org)
        .bind(&scope.municipality)
        .bind(&scope.gp)
        .fetch_all(conn)
        .await?;
    rows.iter()
        .map(|r| {
            let flag = |c: &str| -> Result<bool, sqlx::Error> { Ok(r.try_get::<i64, _>(c)? != 0) };
            Ok(Counted {
                day: r.try_get("day")?,
                org_number: r.try_get("org_number")?,
                municipality_number: r.try_get("municipality_number")?,
                gp_id: r.try_get("gp_id")?,
                channel: Channel::from_code(r.try_get("channel")?)
                    .ok_or_else(|| sqlx::Error::Decode("booking_episodes: bad channel".into()))?,
                vacant: flag("vacant")?,
                closed_in_window: flag("closed_in_window")?,
                working_days: r.try_get("wd")?,
                within: flag("within")?,
                met_by: MetBy::from_code(r.try_get("met_by")?),
                own: flag("own")?,
                later: flag("later")?,
                n: r.try_get::<i64, _>("n")?.max(0) as u64,
            })
        })
        .collect()
}
