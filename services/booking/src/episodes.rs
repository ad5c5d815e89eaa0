//! Booking requests as the authorities count them (fastlegeforskriften § 22 (2)): a request is
//! an **episode**, one patient's one need for an appointment.
//!
//! - Opened by the patient's first search ([`Channel::Online`]), by the practice booking after
//!   the patient phoned ([`Channel::Practice`], day 0 = when the patient contacted the practice),
//!   or by an e-consultation converted to a booking ([`Channel::EConsultation`]).
//! - Further searches update the open episode; it closes with a booking, or after
//!   [`EPISODE_INACTIVITY_DAYS`] without activity (the next search then opens a new one).
//! - Day 0 is the Oslo date of the request; the deadline is the fifth **national** working day
//!   after it (weekends and public holidays; a practice's closures never move it).
//! - **Within target**: the practice offered a slot starting on or before the deadline day (the
//!   own GP first, colleagues and locum when the own GP had none in time; any modality; acute
//!   reserve excluded), whatever the patient's filters and whatever the patient chose; or a step
//!   of the guarantee engine met it ([`crate::guarantee::MetBy`], the first step stays).
//! - **Patient preference**: within target, but the patient chose a slot after the deadline, or
//!   (having chosen nothing) the patient's latest search was narrowed so it showed none in time.
//! - **Breach reasons**: `list_without_gp` (the list had no GP), `practice_closed` (the practice
//!   was closed on a working day of the window), else `no_slots`.
//!
//! Storage (`booking_episodes`) keeps facts, and the figure is computed from them at query
//! time ([`accessibility`]), so every write is a merge ([`Episode::write`]): earliest offers
//! only get earlier, activity only later, a closed episode stays closed. Writers may therefore
//! race and repeat (the search buffer's flush, HoldSlot, Book, BookForPatient, ConvertToBooking)
//! without reading the row first.
//!
//! FindSlots writes nothing: its episodes wait in the [`Pending`] buffer, which a background
//! task writes every [`Pending`] flush interval as one transaction (one statement on
//! PostgreSQL); HoldSlot and Book write the episode in their own transaction. A crash loses at
//! most the search-only episodes of the last flush interval, never one that was held or booked.

use crate::domain::BreachReason;
use crate::guarantee::MetBy;
use crate::store::episodes as store;
use chrono::{DateTime, NaiveDate, Utc};
use econsult_calendar::{Calendar, oslo_date, oslo_day_start};
use econsult_runtime::audit;
use econsult_runtime::db::{Db, Defer, Value};
use opentelemetry::KeyValue;
use opentelemetry::metrics::Counter;
use sqlx::any::AnyRow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// The five-working-day target of fastlegeforskriften § 22 (2).
pub const TARGET_WORKING_DAYS: u32 = 5;

/// An episode without activity for this many calendar days is over; the patient's next search
/// opens a new one.
pub const EPISODE_INACTIVITY_DAYS: i64 = 7;

/// How far back the practice may date a request it books for (BookForPatient's `requested_at`).
pub const MAX_REQUEST_AGE_DAYS: i64 = 30;

/// How a request reached the practice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    /// The patient searched online.
    Online,
    /// The patient contacted the practice (phone, desk); the EHR booked.
    Practice,
    /// An e-consultation converted to a booking.
    EConsultation,
}

impl Channel {
    /// Storage code.
    pub fn code(self) -> i64 {
        match self {
            Channel::Online => 1,
            Channel::Practice => 2,
            Channel::EConsultation => 3,
        }
    }
    /// From a storage code.
    pub fn from_code(c: i64) -> Option<Self> {
        match c {
            1 => Some(Channel::Online),
            2 => Some(Channel::Practice),
            3 => Some(Channel::EConsultation),
            _ => None,
        }
    }
    /// Name in figures and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Online => "online",
            Channel::Practice => "practice",
            Channel::EConsultation => "e_consultation",
        }
    }
}

/// How an episode ended (`outcome` column; 0 while open).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Booked.
    Booked,
    /// Closed by inactivity (written when the next one opens).
    Expired,
    /// Closed by the practice's reply to an e-consultation started from it.
    Answered,
}

impl Outcome {
    /// Storage code.
    pub(crate) fn code(self) -> i64 {
        match self {
            Outcome::Booked => 1,
            Outcome::Expired => 3,
            Outcome::Answered => 5,
        }
    }
}

/// The list GP an episode is counted for.
#[derive(Debug, Clone)]
pub struct ListedAt {
    /// Internal GP key.
    pub gp_uid: String,
    /// The EHR's GP id.
    pub gp_id: String,
    /// Practice.
    pub org_number: String,
    /// Municipality of the list.
    pub municipality_number: String,
    /// The list has no GP.
    pub vacant: bool,
}

/// One booking request (see the module docs). `Debug` leaves the patient out.
#[derive(Clone, PartialEq)]
pub struct Episode {
    /// Id, returned to the patient as FindSlots' `request_id`.
    pub request_id: String,
    /// The patient.
    pub patient_nin: String,
    pub(crate) gp_uid: String,
    pub(crate) gp_id: String,
    pub(crate) org_number: String,
    pub(crate) municipality_number: String,
    /// Channel.
    pub channel: Channel,
    pub(crate) requested_at_ms: i64,
    /// Day 0 (Oslo date of the request).
    pub day: NaiveDate,
    /// The fifth national working day after day 0.
    pub deadline: NaiveDate,
    pub(crate) deadline_end_ms: i64,
    pub(crate) vacant: bool,
    pub(crate) closed_in_window: bool,
    pub(crate) earliest_offer_ms: Option<i64>,
    pub(crate) earliest_offer_wd: Option<u32>,
    pub(crate) own_offer_ms: Option<i64>,
    pub(crate) narrowed: bool,
    pub(crate) chosen: Option<(String, i64)>,
    pub(crate) last_activity_ms: i64,
    pub(crate) closed: Option<(i64, Outcome)>,
    /// The step of the guarantee engine that met the request, and when (the first stays).
    pub(crate) met: Option<(MetBy, i64)>,
    /// Opened by this process (not read back): its writes also end the patient's older open
    /// episodes, which a new one supersedes.
    pub(crate) fresh: bool,
}

impl std::fmt::Debug for Episode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Episode")
            .field("request_id", &self.request_id)
            .field("gp_id", &self.gp_id)
            .field("org_number", &self.org_number)
            .field("channel", &self.channel)
            .field("day", &self.day)
            .field("deadline", &self.deadline)
            .field("earliest_offer_ms", &self.earliest_offer_ms)
            .field("chosen", &self.chosen)
            .field("last_activity_ms", &self.last_activity_ms)
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

impl Episode {
    /// A new episode of `nin` on `gp`'s list, requested at `at`. `practice` is the practice's
    /// calendar (its closures decide `practice_closed`, never the deadline).
    pub fn open(
        nin: &str,
        gp: &ListedAt,
        channel: Channel,
        at: DateTime<Utc>,
        practice: &Calendar,
    ) -> Self {
        let national = Calendar::norwegian();
        let day = oslo_date(at);
        let deadline = national.add_working_days(day, TARGET_WORKING_DAYS);
        let closed_in_window = practice
            .closures()
            .any(|d| d >= day && d <= deadline && national.is_working_day(d));
        let deadline_end_ms = deadline
            .succ_opt()
            .map_or(i64::MAX, |d| oslo_day_start(d).timestamp_millis());
        Episode {
            request_id: uuid::Uuid::now_v7().to_string(),
            patient_nin: nin.to_owned(),
            gp_uid: gp.gp_uid.clone(),
            gp_id: gp.gp_id.clone(),
            org_number: gp.org_number.clone(),
            municipality_number: gp.municipality_number.clone(),
            channel,
            requested_at_ms: at.timestamp_millis(),
            day,
            deadline,
            deadline_end_ms,
            vacant: gp.vacant,
            closed_in_window,
            earliest_offer_ms: None,
            earliest_offer_wd: None,
            own_offer_ms: None,
            narrowed: false,
            chosen: None,
            last_activity_ms: at.timestamp_millis(),
            closed: None,
            met: None,
            fresh: true,
        }
    }

    /// National working days from day 0 to the Oslo date of `t` (0 = day 0).
    pub fn working_days_to(&self, t: DateTime<Utc>) -> u32 {
        Calendar::norwegian()
            .working_days_between(self.day, oslo_date(t))
            .max(0) as u32
    }

    /// Start (ms) of the Oslo day after the deadline: a slot starting before it is in time.
    pub fn deadline_end_ms(&self) -> i64 {
        self.deadline_end_ms
    }

    /// True when a slot starting at `t` is within the target.
    pub fn in_time(&self, t: DateTime<Utc>) -> bool {
        t.timestamp_millis() < self.deadline_end_ms
    }

    /// Records what the practice could offer at one moment: the own GP's earliest slot and the
    /// earliest of the colleagues (asked only when the own GP had none in time). By today's
    /// rule the offer is the own GP's when in time, else the earlier of the two.
    pub fn offered(&mut self, own: Option<DateTime<Utc>>, others: Option<DateTime<Utc>>) {
        let offer = match own {
            Some(o) if self.in_time(o) => Some(o),
            _ => match (own, others) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
        };
        if let Some(o) = own {
            let ms = o.timestamp_millis();
            if self.own_offer_ms.is_none_or(|x| ms < x) {
                self.own_offer_ms = Some(ms);
            }
        }
        if let Some(o) = offer {
            let ms = o.timestamp_millis();
            if self.earliest_offer_ms.is_none_or(|x| ms < x) {
                self.earliest_offer_ms = Some(ms);
                self.earliest_offer_wd = Some(self.working_days_to(o));
            }
        }
    }

    /// A search at `now`: `shown_in_time` tells whether it showed the patient a slot in time.
    pub fn searched(&mut self, now: DateTime<Utc>, shown_in_time: bool) {
        self.narrowed = self.within_target() && !shown_in_time;
        self.touch(now);
    }

    /// The patient (or the practice) held or booked `slot_id` starting at `start`.
    pub fn chose(&mut self, slot_id: &str, start: DateTime<Utc>, now: DateTime<Utc>) {
        if self.closed.is_none() {
            self.chosen = Some((slot_id.to_owned(), start.timestamp_millis()));
        }
        self.touch(now);
    }

    /// The episode ended with a booking.
    pub fn booked(&mut self, now: DateTime<Utc>) {
        if self.closed.is_none() {
            self.closed = Some((now.timestamp_millis(), Outcome::Booked));
        }
    }

    fn touch(&mut self, now: DateTime<Utc>) {
        self.last_activity_ms = self.last_activity_ms.max(now.timestamp_millis());
    }

    /// Still open at `now`: not booked, and active within [`EPISODE_INACTIVITY_DAYS`].
    pub fn is_open(&self, now: DateTime<Utc>) -> bool {
        self.closed.is_none() && self.last_activity_ms > inactivity_cutoff(now)
    }

    /// Earliest offer (own GP first), if any.
    pub fn earliest_offer(&self) -> Option<DateTime<Utc>> {
        self.earliest_offer_ms
            .and_then(DateTime::<Utc>::from_timestamp_millis)
    }

    /// Working days from day 0 to the earliest offer.
    pub fn earliest_offer_working_days(&self) -> Option<u32> {
        self.earliest_offer_wd
    }

    /// The practice offered a slot in time.
    pub fn within_target(&self) -> bool {
        self.earliest_offer_ms
            .is_some_and(|t| t < self.deadline_end_ms)
            || self.met.is_some()
    }

    /// The step of the guarantee engine that met the request, if one did.
    pub fn met_by(&self) -> Option<MetBy> {
        self.met.map(|(m, _)| m)
    }

    /// The engine's step `by` met the request at `now` (the first step that met it stays).
    pub fn met_by_step(&mut self, by: MetBy, now: DateTime<Utc>) {
        if self.met.is_none() && !self.met_by_own_gp() {
            self.met = Some((by, now.timestamp_millis()));
        }
    }

    /// The own GP offered a slot in time.
    pub fn met_by_own_gp(&self) -> bool {
        self.own_offer_ms.is_some_and(|t| t < self.deadline_end_ms)
    }

    /// Why not within target.
    pub fn breach(&self) -> Option<BreachReason> {
        match (self.within_target(), self.vacant, self.closed_in_window) {
            (true, _, _) => None,
            (false, true, _) => Some(BreachReason::ListWithoutGp),
            (false, false, true) => Some(BreachReason::PracticeClosed),
            (false, false, false) => Some(BreachReason::NoSlots),
        }
    }

    /// Within target, but the patient chose later or narrowed the search.
    pub fn patient_preference(&self) -> bool {
        self.within_target()
            && match &self.chosen {
                Some((_, start)) => *start >= self.deadline_end_ms,
                None => self.narrowed,
            }
    }

    /// Writes (merges) the episode in `tx` (the merge rules are the module's); on PostgreSQL
    /// it joins the commit's one statement. A new episode also ends the patient's older open
    /// ones (expired by inactivity, or superseded by this new one), never a newer one: a copy
    /// may be written late, after the patient's next request was opened.
    pub fn write(&self, tx: &mut impl Defer) {
        if self.fresh {
            store::expire_others(tx, self);
        }
        store::upsert(tx, self);
    }

    /// An episode read back with the columns of the store's read of the patient's open
    /// episode ([`open_of_patient`]).
    pub fn from_row(r: &AnyRow) -> Result<Self, sqlx::Error> {
        store::episode_from_row(r)
    }
}

/// Activity at or before this instant is too old for an open episode at `now`.
pub fn inactivity_cutoff(now: DateTime<Utc>) -> i64 {
    now.timestamp_millis() - EPISODE_INACTIVITY_DAYS * 24 * 3_600_000
}

/// The values of the store's choice statement, which records a hold (`booked` false) or a
/// booking (the episode closes now) of `slot_id` starting at `start` on the patient's episode
/// `request_id` if known (else their open one) without reading it first: [`Episode::write`]'s
/// merge for an episode this process does not hold.
pub fn choose_values(
    request_id: Option<&str>,
    nin: &str,
    slot_id: &str,
    start: DateTime<Utc>,
    now: DateTime<Utc>,
    booked: bool,
) -> Vec<Value> {
    let now_ms = now.timestamp_millis();
    vec![
        slot_id.into(),
        start.timestamp_millis().into(),
        now_ms.into(),
        if booked { Outcome::Booked.code() } else { 0 }.into(),
        if booked { Some(now_ms) } else { None }.into(),
        request_id.into(),
        nin.into(),
        inactivity_cutoff(now).into(),
    ]
}

/// The patient's open episode as stored, if any.
pub async fn open_of_patient(
    conn: &mut sqlx::AnyConnection,
    nin: &str,
    now: DateTime<Utc>,
) -> Result<Option<Episode>, sqlx::Error> {
    store::open_of_patient(conn, nin, inactivity_cutoff(now)).await
}

/// Search-only episodes not written yet, by patient, and those being written by a flush.
#[derive(Clone, Default)]
pub struct Pending {
    inner: Arc<Mutex<Buffers>>,
}

#[derive(Default)]
struct Buffers {
    waiting: HashMap<String, Episode>,
    flushing: HashMap<String, Episode>,
    /// The searches' access-log rows, written with the episodes.
    audit: Vec<audit::Row>,
}

/// Most episodes or access-log rows the buffer holds: past it (the database has been failing
/// for a while) searches are refused rather than kept unlogged in memory.
pub const MAX_PENDING: usize = 100_000;

/// Episodes per statement of a flush (23 values each, far below PostgreSQL's 65 535).
const FLUSH_CHUNK: usize = 1_000;

impl Pending {
    fn lock(&self) -> MutexGuard<'_, Buffers> {
        // A panic while holding the lock leaves plain maps behind: still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The patient's open episode held here (waiting or being flushed), if any.
    pub fn get(&self, nin: &str, now: DateTime<Utc>) -> Option<Episode> {
        let b = self.lock();
        b.waiting
            .get(nin)
            .or_else(|| b.flushing.get(nin))
            .filter(|e| e.is_open(now))
            .cloned()
    }

    /// Keeps `e` and the search's access-log row for the next flush (replacing the patient's
    /// earlier version of `e`); `false` (nothing kept) when the buffer is full.
    pub fn put(&self, e: Episode, row: audit::Row) -> bool {
        let mut b = self.lock();
        if b.audit.len() >= MAX_PENDING || b.waiting.len() >= MAX_PENDING {
            return false;
        }
        b.audit.push(row);
        b.waiting.insert(e.patient_nin.clone(), e);
        true
    }

    /// Takes the patient's episode out: the caller writes it, and puts it back ([`restore`])
    /// only if that write fails. One being flushed is taken out of the flush's keeping too:
    /// the flush still writes its copy (writes merge), but once the caller has written the
    /// episode on (chosen, perhaps booked and closed) no later search may find that older,
    /// still open copy here, nor may a failed flush put it back. A search that did would add
    /// the patient's next booking to the closed episode, and the next request would never be
    /// counted.
    ///
    /// [`restore`]: Pending::restore
    pub fn take(&self, nin: &str) -> Option<Episode> {
        let mut b = self.lock();
        let flushed = b.flushing.remove(nin);
        b.waiting.remove(nin).or(flushed)
    }

    /// Puts back an episode whose write failed, unless a newer version is waiting.
    pub fn restore(&self, e: Episode) {
        self.lock()
            .waiting
            .entry(e.patient_nin.clone())
            .or_insert(e);
    }

    /// Number of episodes waiting.
    pub fn len(&self) -> usize {
        self.lock().waiting.len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes every waiting episode and access-log row, [`FLUSH_CHUNK`] episodes per
    /// transaction (one statement each on PostgreSQL). What a failed transaction held waits
    /// again for the next flush. Returns how many episodes were written.
    pub async fn flush(&self, db: &Db) -> Result<usize, sqlx::Error> {
        let (batch, mut rows) = self.lock().begin_flush();
        let mut written = 0;
        let mut result = Ok(());
        let chunks = batch.len().div_ceil(FLUSH_CHUNK).max(1);
        let rows_per_chunk = rows.len().div_ceil(chunks).max(1);
        for chunk in batch
            .chunks(FLUSH_CHUNK)
            .chain(batch.is_empty().then_some(&[][..]))
        {
            if chunk.is_empty() && rows.is_empty() {
                break;
            }
            let these: Vec<audit::Row> = rows.drain(..rows_per_chunk.min(rows.len())).collect();
            let mut w = db.writes();
            for e in chunk {
                e.write(&mut w);
            }
            for r in these.iter().cloned() {
                r.write(&mut w);
            }
            match w.commit().await {
                Ok(()) => {
                    written += chunk.len();
                    let mut b = self.lock();
                    for e in chunk {
                        b.flushing.remove(&e.patient_nin);
                    }
                }
                Err(e) => {
                    let mut b = self.lock();
                    b.audit.extend(these);
                    result = Err(e);
                }
            }
        }
        self.lock().end_flush(rows);
        result.map(|()| written)
    }
}

impl Buffers {
    /// A flush begins: what waits is now being flushed; returns copies of the episodes to
    /// write and the access-log rows.
    fn begin_flush(&mut self) -> (Vec<Episode>, Vec<audit::Row>) {
        let waiting = std::mem::take(&mut self.waiting);
        self.flushing.extend(waiting);
        let batch = self.flushing.values().cloned().collect();
        (batch, std::mem::take(&mut self.audit))
    }

    /// A flush ends: the access-log `rows` and the episodes it did not write (still being
    /// flushed, not taken meanwhile) wait again, behind any newer version.
    fn end_flush(&mut self, rows: Vec<audit::Row>) {
        self.audit.extend(rows);
        for (nin, e) in std::mem::take(&mut self.flushing) {
            self.waiting.entry(nin).or_insert(e);
        }
    }
}

/// Counters of new episodes, by their classification when first seen.
#[derive(Clone)]
pub struct EpisodeMetrics {
    requests: Counter<u64>,
    breaches: Counter<u64>,
}

impl Default for EpisodeMetrics {
    fn default() -> Self {
        let meter = opentelemetry::global::meter("econsult.booking");
        Self {
            requests: meter
                .u64_counter("econsult_booking_requests")
                .with_description("Booking requests (episodes) opened, by channel and whether the practice offered a slot within five working days when first seen")
                .build(),
            breaches: meter
                .u64_counter("econsult_booking_breaches")
                .with_description("Booking requests opened without an offer within five working days, by reason")
                .build(),
        }
    }
}

impl EpisodeMetrics {
    /// Counts a new episode.
    pub fn opened(&self, e: &Episode) {
        self.requests.add(
            1,
            &[
                KeyValue::new("within_target", e.within_target()),
                KeyValue::new("channel", e.channel.as_str()),
            ],
        );
        if let Some(b) = e.breach() {
            self.breaches.add(1, &[KeyValue::new("reason", b.as_str())]);
        }
    }
}

/// Which episodes a figure covers (days are Oslo dates, ISO; '' = all).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    /// First day 0 included.
    pub from: String,
    /// Last day 0 included.
    pub to: String,
    /// Organisation.
    pub org: String,
    /// Municipality.
    pub municipality: String,
    /// GP.
    pub gp: String,
}

/// The § 22 figures of a set of episodes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Accessibility {
    /// Requests (episodes).
    pub requests: u64,
    /// With an offer within the target.
    pub within_target: u64,
    /// With an offer of the own GP within the target.
    pub met_by_own_gp: u64,
    /// Within target, but the patient chose later or narrowed the search.
    pub patient_preferences: u64,
    /// Breaches by reason.
    pub breaches: HashMap<BreachReason, u64>,
    /// Index i = earliest offer i working days after day 0; 15 = fifteen or more, or none.
    pub working_days_histogram: [u64; 16],
    /// Requests and within-target counts by channel.
    pub by_channel: HashMap<Channel, (u64, u64)>,
    /// Requests met by a step of the guarantee engine (the own GP had none in time), by step.
    pub met_by: HashMap<MetBy, u64>,
}

/// The § 22 figures of the episodes in `scope`, and per municipality (for the gauge) when
/// `by_municipality`; the definition is the module's. Migrated episodes (counted by the old
/// definition) are left out.
pub async fn accessibility(db: &Db, scope: &Scope) -> Result<Accessibility, sqlx::Error> {
    Ok(accessibility_by_municipality(db, scope)
        .await?
        .into_values()
        .fold(Accessibility::default(), |mut a, b| {
            a.add(&b);
            a
        }))
}

/// [`accessibility`] per municipality.
pub async fn accessibility_by_municipality(
    db: &Db,
    scope: &Scope,
) -> Result<HashMap<String, Accessibility>, sqlx::Error> {
    let mut conn = db.read().acquire().await?;
    let mut out: HashMap<String, Accessibility> = HashMap::new();
    for g in store::accessibility_counts(&mut conn, scope).await? {
        out.entry(g.municipality_number.clone())
            .or_default()
            .count(&g);
    }
    Ok(out)
}

/// [`accessibility`] without the requests of every base cell (one GP's requests of one day 0)
/// whose number of requests `hidden` says is too small to publish (statistics' small-cell
/// suppression); the figures of a cell that is kept are counted whole. Returns the figures and
/// whether a cell was left out.
pub async fn accessibility_without(
    db: &Db,
    scope: &Scope,
    hidden: impl Fn(u64) -> bool,
) -> Result<(Accessibility, bool), sqlx::Error> {
    let mut conn = db.read().acquire().await?;
    let rows = store::accessibility_counts(&mut conn, scope).await?;
    let cell = |g: &store::Counted| {
        (
            g.day.clone(),
            g.org_number.clone(),
            g.municipality_number.clone(),
            g.gp_id.clone(),
        )
    };
    let mut totals: HashMap<_, u64> = HashMap::new();
    for g in &rows {
        *totals.entry(cell(g)).or_default() += g.n;
    }
    let mut out = Accessibility::default();
    let mut left_out = false;
    for g in &rows {
        if hidden(totals.get(&cell(g)).copied().unwrap_or_default()) {
            left_out = true;
        } else {
            out.count(g);
        }
    }
    Ok((out, left_out))
}

impl Accessibility {
    /// Adds the `n` episodes of group `g`.
    fn count(&mut self, g: &store::Counted) {
        let n = g.n;
        self.requests += n;
        let c = self.by_channel.entry(g.channel).or_default();
        c.0 += n;
        if g.within {
            self.within_target += n;
            c.1 += n;
            if g.later {
                self.patient_preferences += n;
            }
        } else {
            let reason = if g.vacant {
                BreachReason::ListWithoutGp
            } else if g.closed_in_window {
                BreachReason::PracticeClosed
            } else {
                BreachReason::NoSlots
            };
            *self.breaches.entry(reason).or_default() += n;
        }
        if g.own {
            self.met_by_own_gp += n;
        } else if let Some(m) = g.met_by {
            *self.met_by.entry(m).or_default() += n;
        }
        let wd = g.working_days;
        let bucket = if (0..15).contains(&wd) {
            wd as usize
        } else {
            15
        };
        self.working_days_histogram[bucket] += n;
    }

    /// Adds `b`'s counts.
    pub fn add(&mut self, b: &Accessibility) {
        self.requests += b.requests;
        self.within_target += b.within_target;
        self.met_by_own_gp += b.met_by_own_gp;
        self.patient_preferences += b.patient_preferences;
        for (k, v) in &b.breaches {
            *self.breaches.entry(*k).or_default() += v;
        }
        for (i, v) in b.working_days_histogram.iter().enumerate() {
            self.working_days_histogram[i] += v;
        }
        for (k, (n, w)) in &b.by_channel {
            let c = self.by_channel.entry(*k).or_default();
            c.0 += n;
            c.1 += w;
        }
        for (k, v) in &b.met_by {
            *self.met_by.entry(*k).or_default() += v;
        }
    }

    /// `within_target / requests` (0 without requests).
    pub fn within_target_share(&self) -> f64 {
        share(self.within_target, self.requests)
    }

    /// `met_by_own_gp / requests` (0 without requests).
    pub fn met_by_own_gp_share(&self) -> f64 {
        share(self.met_by_own_gp, self.requests)
    }
}

fn share(n: u64, of: u64) -> f64 {
    if of == 0 { 0.0 } else { n as f64 / of as f64 }
}

#[cfg(test)]
mod tests;
