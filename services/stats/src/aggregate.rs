//! Applies events to the aggregate tables, exactly once per event id.

use crate::store::{
    self, APPOINTMENTS, BOOKING_REQUESTS, CONSULTATION_RESPONSES, CONTACTS, Table, VIDEO_SESSIONS,
};
use econsult_calendar::oslo_date;
use econsult_runtime::bus::{Delivery, Event};
use econsult_runtime::clock::from_ms;
use econsult_runtime::db::{Db, Tx, Value};
use econsult_runtime::events::{
    AppointmentChanged, BookingRequested, ConsultationChanged, VideoSessionEnded, topics,
};
use econsult_runtime::platform::Platform;
use opentelemetry::KeyValue;
use opentelemetry::metrics::Counter;
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;
use tracing::Instrument as _;

/// Where a contact is counted.
struct Contact<'a> {
    org: &'a str,
    municipality: &'a str,
    gp: &'a str,
    ctype: &'static str,
    tariff: &'a str,
}

/// Consumer group of the statistics service on the bus.
pub const CONSUMER_GROUP: &str = "stats";

/// Events the consumer fetches and applies per transaction at most.
const BATCH: usize = 256;

/// How long the consumer waits after a batch that was not full before it fetches the next:
/// statistics trail the bus by this much more, and a transaction (about five statements
/// whatever its size) carries all the events of that time (at 300 booking flows/s on PostgreSQL
/// batches were of one to four events: ~5 statements per flow for the statistics alone).
const BATCH_LINGER: Duration = Duration::from_millis(50);

/// Period of the statistics catch-up from the outbox ([`Aggregator::run_catch_up`]): an event
/// the bus did not deliver (a Redis restart, an instance killed with entries it had taken) is
/// applied within two periods.
pub const CATCH_UP_EVERY: Duration = Duration::from_secs(2);

/// Watermark of the statistics catch-up from the outbox (in `bus_offsets`).
pub const CATCH_UP_GROUP: &str = "stats-catch-up";

/// Contact type and Normaltariffen code of a held consultation of a modality.
///
/// In person: 2ad (day). Video: 2ae (e-consultation, text or video). Phone: 1bd (simple contact
/// by phone), as the project's tariff table (shared/DOMAIN.md) lists it.
pub fn contact_of_modality(modality: &str) -> Option<(&'static str, &'static str)> {
    match modality {
        "in_person" => Some(("in_person", "2ad")),
        "video" => Some(("video", "2ae")),
        "phone" => Some(("phone", "1bd")),
        _ => None,
    }
}

/// Contact type and default tariff code of a closed text consultation of a category (the tariff
/// code the practice billed wins when the event carries one). An administrative e-contact
/// ("Kontakt legekontoret") answered by the reception is a `reception_message` that bills
/// nothing: KPR administrative work, not a consultation (its KPR category follows from the
/// empty code, `econsult_runtime::tariff::category_name`).
pub fn contact_of_category(category: &str) -> Option<(&'static str, &'static str)> {
    match category {
        "e_consultation" => Some(("text_econsultation", "2ae")),
        "prescription_renewal" => Some(("prescription_renewal", "1bd")),
        "administrative" => Some(("reception_message", "")),
        _ => None,
    }
}

/// Outcomes of a closed thread that are no contact at all: the patient withdrew it, or never
/// answered the practice's question (`no_answer`).
pub const NOT_A_CONTACT: [&str; 2] = ["withdrawn", "no_answer"];

/// Metric increments of one transaction, added to the counters only once it committed: an
/// event whose transaction rolls back is delivered again and must not count twice.
#[derive(Default)]
struct Tally(Vec<(Counter<u64>, Vec<KeyValue>)>);

impl Tally {
    fn add(&mut self, counter: &Counter<u64>, attributes: Vec<KeyValue>) {
        self.0.push((counter.clone(), attributes));
    }

    /// Call after the commit.
    fn publish(self) {
        for (counter, attributes) in self.0 {
            counter.add(1, &attributes);
        }
    }
}

/// The counts of one transaction, summed per aggregate row and written at the end as one
/// multi-row upsert per table. Summing first is what lets one statement carry them (an upsert
/// may touch a row only once); the rows go in key order and the tables in name order, so
/// concurrent consumers lock rows in the same order.
#[derive(Default)]
struct Increments(BTreeMap<&'static str, (&'static Table, Rows)>);

/// Aggregate rows of one table: key values → sums.
type Rows = BTreeMap<Vec<Value>, Vec<i64>>;

impl Increments {
    /// Adds `sums` (one per sum column of `table`) to the row of `key` (one value per key column).
    fn add(&mut self, table: &'static Table, key: Vec<Value>, sums: &[i64]) {
        debug_assert_eq!(key.len(), table.keys.len(), "{}", table.name);
        debug_assert_eq!(sums.len(), table.sums.len(), "{}", table.name);
        let (_, rows) = self
            .0
            .entry(table.name)
            .or_insert_with(|| (table, BTreeMap::new()));
        let row = rows.entry(key).or_insert_with(|| vec![0; sums.len()]);
        for (total, s) in row.iter_mut().zip(sums) {
            *total += s;
        }
    }

    async fn write(self, tx: &mut Tx) -> Result<(), sqlx::Error> {
        for (table, rows) in self.0.into_values() {
            let rows: Vec<(Vec<Value>, Vec<i64>)> = rows.into_iter().collect();
            store::upsert(tx, table, &rows).await?;
        }
        Ok(())
    }
}

/// Marks `events` processed by this consumer (in event id order, so that concurrent consumers
/// lock in the same order) and returns the ids that were not marked before.
async fn mark_processed(tx: &mut Tx, events: &[&Event]) -> Result<HashSet<String>, sqlx::Error> {
    let mut sorted = events.to_vec();
    sorted.sort_unstable_by(|a, b| a.event_id.cmp(&b.event_id));
    Ok(store::mark_processed(tx, CONSUMER_GROUP, &sorted)
        .await?
        .into_iter()
        .collect())
}

/// The Oslo day of an instant, as the aggregate tables key it.
fn day_of(at_ms: i64) -> String {
    oslo_date(from_ms(at_ms)).format("%Y-%m-%d").to_string()
}

/// Counts an appointment of `kind` on the Oslo day of `at_ms`.
fn count_appointment(inc: &mut Increments, a: &AppointmentChanged, at_ms: i64, kind: &str) {
    inc.add(
        &APPOINTMENTS,
        vec![
            day_of(at_ms).into(),
            a.org_number.as_str().into(),
            a.municipality_number.as_str().into(),
            a.gp_id.as_str().into(),
            kind.into(),
        ],
        &[1],
    );
}

/// Consumes events and keeps the aggregates.
pub struct Aggregator {
    db: Db,
    contacts: Counter<u64>,
    video: Counter<u64>,
}

impl Aggregator {
    /// An aggregator writing to `db`.
    pub fn new(db: Db) -> Self {
        let meter = opentelemetry::global::meter("econsult.stats");
        Self {
            db,
            contacts: meter.u64_counter("econsult_contacts").with_description("Held contacts, by contact type").build(),
            video: meter
                .u64_counter("econsult_video_sessions")
                .with_description("Ended video sessions, by whether the peers connected (connected=false: a connect failure), held and end reason")
                .build(),
        }
    }

    /// Applies `events` in `tx`, each at most once (`processed_events`; an event twice in
    /// `events` counts once); their metric increments go to `tally`. Returns how many were new.
    ///
    /// The marks go in as one multi-row insert and the counts as one upsert per table (see
    /// [`Increments`]): a batch costs a handful of statements however many events it holds.
    async fn apply_all<'e>(
        &self,
        tx: &mut Tx,
        events: impl IntoIterator<Item = &'e Event>,
        tally: &mut Tally,
    ) -> anyhow::Result<usize> {
        let mut seen = HashSet::new();
        let events: Vec<&Event> = events
            .into_iter()
            .filter(|e| seen.insert(e.event_id.as_str()))
            .collect();
        let mut fresh = mark_processed(tx, &events).await?;
        let mut inc = Increments::default();
        let mut n = 0;
        for e in events {
            if fresh.remove(&e.event_id) {
                self.apply(tx, e, tally, &mut inc).await?;
                n += 1;
            }
        }
        inc.write(tx).await?;
        Ok(n)
    }

    /// Applies one event not applied before: its counts go to `inc`, its metric increments to
    /// `tally`.
    async fn apply(
        &self,
        tx: &mut Tx,
        e: &Event,
        tally: &mut Tally,
        inc: &mut Increments,
    ) -> anyhow::Result<()> {
        match e.topic.as_str() {
            // Written before booking requests were episodes (one per search); kept so a rebuild
            // gives the same table. The figures come from econsult_booking::episodes now, and
            // the request counters from the booking service.
            topics::BOOKING_REQUESTED => {
                let b: BookingRequested = serde_json::from_str(&e.payload)?;
                let wd = b
                    .earliest_offer_working_days
                    .map_or(-1, |d| i64::from(d.min(15)));
                inc.add(
                    &BOOKING_REQUESTS,
                    vec![
                        b.date.into(),
                        b.org_number.into(),
                        b.municipality_number.into(),
                        b.gp_id.into(),
                        wd.into(),
                        i64::from(b.within_target).into(),
                        b.breach_reason.clone().unwrap_or_default().into(),
                    ],
                    &[1],
                );
            }
            topics::BOOKING_ATTENDED => {
                let a: AppointmentChanged = serde_json::from_str(&e.payload)?;
                if let Some((ctype, tariff)) = contact_of_modality(&a.modality) {
                    let contact = Contact {
                        org: &a.org_number,
                        municipality: &a.municipality_number,
                        gp: &a.gp_id,
                        ctype,
                        tariff,
                    };
                    self.count_contact(
                        tx,
                        tally,
                        inc,
                        Some(&a.appointment_id),
                        a.start_ms,
                        contact,
                    )
                    .await?;
                }
            }
            topics::VIDEO_SESSION_ENDED => {
                let v: VideoSessionEnded = serde_json::from_str(&e.payload)?;
                tally.add(
                    &self.video,
                    vec![
                        KeyValue::new("connected", v.connected.to_string()),
                        KeyValue::new("held", v.held.to_string()),
                        KeyValue::new("end_reason", v.end_reason.clone()),
                    ],
                );
                inc.add(
                    &VIDEO_SESSIONS,
                    vec![
                        day_of(v.started_at_ms).into(),
                        v.org_number.as_str().into(),
                        v.municipality_number.as_str().into(),
                        v.gp_id.as_str().into(),
                        i64::from(v.connected).into(),
                        i64::from(v.held).into(),
                    ],
                    &[1, v.connected_ms.max(0)],
                );
                if v.held {
                    let contact = Contact {
                        org: &v.org_number,
                        municipality: &v.municipality_number,
                        gp: &v.gp_id,
                        ctype: "video",
                        tariff: "2ae",
                    };
                    self.count_contact(
                        tx,
                        tally,
                        inc,
                        Some(&v.appointment_id),
                        v.started_at_ms,
                        contact,
                    )
                    .await?;
                }
            }
            topics::CONSULTATION_FIRST_RESPONSE => {
                let c: ConsultationChanged = serde_json::from_str(&e.payload)?;
                if let Some(first) = c.first_response_at_ms {
                    let wd = c.response_working_days.map_or(15, |d| i64::from(d.min(15)));
                    inc.add(
                        &CONSULTATION_RESPONSES,
                        vec![
                            day_of(c.submitted_at_ms).into(),
                            c.org_number.into(),
                            c.municipality_number.into(),
                            c.gp_id.into(),
                            c.category.into(),
                            wd.into(),
                            i64::from(first <= c.due_at_ms).into(),
                        ],
                        &[1],
                    );
                }
            }
            topics::CONSULTATION_CLOSED => {
                let c: ConsultationChanged = serde_json::from_str(&e.payload)?;
                let no_contact = c
                    .outcome
                    .as_deref()
                    .is_some_and(|o| NOT_A_CONTACT.contains(&o));
                if let (false, Some((ctype, default_tariff))) =
                    (no_contact, contact_of_category(&c.category))
                {
                    // Events carry the code billed (empty: none, e.g. a reception's answer);
                    // events from before every close carried one fall back to the default.
                    let tariff = c.tariff_code.as_deref().unwrap_or(default_tariff);
                    let contact = Contact {
                        org: &c.org_number,
                        municipality: &c.municipality_number,
                        gp: &c.gp_id,
                        ctype,
                        tariff,
                    };
                    self.count_contact(
                        tx,
                        tally,
                        inc,
                        None,
                        c.closed_at_ms.unwrap_or(e.created_at),
                        contact,
                    )
                    .await?;
                }
            }
            topics::BOOKING_CREATED | topics::BOOKING_RESCHEDULED => {
                let a: AppointmentChanged = serde_json::from_str(&e.payload)?;
                count_appointment(inc, &a, a.booked_at_ms, "booked");
            }
            topics::BOOKING_CANCELLED => {
                let a: AppointmentChanged = serde_json::from_str(&e.payload)?;
                let at = a.cancelled_at_ms.unwrap_or(e.created_at);
                count_appointment(inc, &a, at, "cancelled");
                if a.late_cancellation {
                    count_appointment(inc, &a, at, "late_cancellation");
                }
            }
            topics::BOOKING_NOSHOW => {
                let a: AppointmentChanged = serde_json::from_str(&e.payload)?;
                count_appointment(inc, &a, a.start_ms, "noshow");
            }
            _ => {}
        }
        Ok(())
    }

    /// Counts one contact on the Oslo day of `at_ms`; with an appointment id, at most once per
    /// appointment whatever reports it.
    async fn count_contact(
        &self,
        tx: &mut Tx,
        tally: &mut Tally,
        inc: &mut Increments,
        appointment_id: Option<&str>,
        at_ms: i64,
        c: Contact<'_>,
    ) -> anyhow::Result<()> {
        if let Some(id) = appointment_id
            && !store::count_appointment_once(tx, id).await?
        {
            return Ok(());
        }
        inc.add(
            &CONTACTS,
            vec![
                day_of(at_ms).into(),
                c.org.into(),
                c.municipality.into(),
                c.gp.into(),
                c.ctype.into(),
                c.tariff.into(),
            ],
            &[1],
        );
        tally.add(&self.contacts, vec![KeyValue::new("contact_type", c.ctype)]);
        Ok(())
    }

    /// Applies a batch in one transaction. Returns how many were new.
    pub async fn apply_batch(&self, deliveries: &[Delivery]) -> anyhow::Result<usize> {
        let span = econsult_runtime::telemetry::event_batch_span(
            "stats consumer",
            "consumer",
            deliveries.iter().map(|d| d.event.trace_parent.as_str()),
        );
        self.apply_batch_traced(deliveries).instrument(span).await
    }

    async fn apply_batch_traced(&self, deliveries: &[Delivery]) -> anyhow::Result<usize> {
        let mut tx = self.db.begin().await?;
        let mut tally = Tally::default();
        let fresh = self
            .apply_all(&mut tx, deliveries.iter().map(|d| &d.event), &mut tally)
            .await?;
        tx.commit().await?;
        tally.publish();
        Ok(fresh)
    }

    /// Applies sequenced outbox events after this consumer's catch-up watermark (kept in
    /// `bus_offsets` under `stats-catch-up`) up to seq `through`, in `seq` order, each at most
    /// once (`processed_events`). The outbox is the durable log and Redis only the fast path:
    /// events a Redis restart lost from the stream (it keeps nothing on disk), or a killed
    /// instance took from it and never applied, are applied here. Returns how many were new.
    pub async fn catch_up(&self, through: i64, limit: i64) -> anyhow::Result<usize> {
        let mut tx = self.db.begin().await?;
        let after = store::watermark(&mut tx, CATCH_UP_GROUP).await?;
        let mut tally = Tally::default();
        let (fresh, last) = self
            .apply_outbox_after(&mut tx, after, through, limit, &mut tally)
            .await?;
        if last > after {
            store::advance_watermark(&mut tx, CATCH_UP_GROUP, last).await?;
        }
        tx.commit().await?;
        tally.publish();
        if fresh > 0 {
            tracing::warn!(
                fresh,
                "stats applied events the bus did not deliver (catch-up from the outbox)"
            );
        }
        Ok(fresh)
    }

    /// Runs [`Aggregator::catch_up`] every `every` until shutdown, each pass through the last
    /// seq the previous pass saw sequenced: an event is applied by the catch-up only when the
    /// bus has not delivered it for at least `every` (it does not race the live consumer over
    /// the events of the last moments, nor warn about them). A missed event is applied within
    /// two periods.
    pub async fn run_catch_up(self, platform: Platform, every: Duration) {
        let mut stop = platform.shutdown.clone();
        let mut horizon = 0i64;
        // The watermark exists from the start (at 0 until the first pass): retention keeps
        // every event this consumer has not applied yet.
        let registered = async {
            let mut tx = self.db.begin().await?;
            store::advance_watermark(&mut tx, CATCH_UP_GROUP, 0).await?;
            tx.commit().await
        };
        if let Err(e) = registered.await {
            tracing::warn!(error = %e, "registering the statistics catch-up failed");
        }
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.changed() => return,
            }
            let sequenced = async {
                let mut conn = self.db.read().acquire().await?;
                store::last_sequenced(&mut conn).await
            }
            .await;
            let next = match sequenced {
                Ok(max) => max.unwrap_or(0),
                Err(e) => {
                    tracing::warn!(error = %e, "stats catch-up failed");
                    continue;
                }
            };
            loop {
                match self.catch_up(horizon, 1000).await {
                    Ok(n) if n > 0 => continue,
                    Ok(_) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "stats catch-up failed");
                        break;
                    }
                }
            }
            horizon = next;
        }
    }

    /// Consumes from the bus until shutdown: fetch, apply and commit, then acknowledge.
    pub async fn run(self, platform: Platform, consumer: String) {
        let mut stop = platform.shutdown.clone();
        loop {
            let result: anyhow::Result<()> = async {
                let mut sub = platform.bus.subscribe(CONSUMER_GROUP, &consumer).await?;
                loop {
                    if *stop.borrow() {
                        return Ok(());
                    }
                    let batch = tokio::select! {
                        b = sub.fetch(BATCH, Duration::from_millis(500)) => b?,
                        _ = stop.changed() => return Ok(()),
                    };
                    if batch.is_empty() {
                        continue;
                    }
                    self.apply_batch(&batch).await?;
                    sub.ack(&batch).await?;
                    if batch.len() < BATCH {
                        // Let the next batch fill: under load one transaction then carries many
                        // events instead of one or two.
                        tokio::select! {
                            _ = tokio::time::sleep(BATCH_LINGER) => {}
                            _ = stop.changed() => return Ok(()),
                        }
                    }
                }
            }
            .await;
            match result {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "stats consumer failed, resubscribing");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = stop.changed() => return,
                    }
                }
            }
        }
    }

    /// Recomputes all aggregates from the outbox (the durable event log): clears the tables and
    /// this consumer's processed-event marks, then applies every event in `seq` order (only the
    /// events within the outbox's retention window are left to apply). The
    /// Prometheus counters are left alone (they count events as first applied; re-applying
    /// would count them twice).
    pub async fn rebuild(&self) -> anyhow::Result<usize> {
        let mut tx = self.db.begin().await?;
        store::clear(&mut tx, CONSUMER_GROUP).await?;
        let (mut after, mut n) = (0i64, 0);
        let mut not_counted = Tally::default();
        loop {
            let (fresh, last) = self
                .apply_outbox_after(&mut tx, after, i64::MAX, 1000, &mut not_counted)
                .await?;
            if last == after {
                break;
            }
            (after, n) = (last, n + fresh);
        }
        tx.commit().await?;
        Ok(n)
    }

    /// Applies the next `limit` sequenced outbox events after `after` (up to seq `through`) in
    /// `seq` order inside `tx`, reading only those not yet applied (one statement, not an insert
    /// attempt per event the bus already delivered); returns how many were new and the last seq
    /// of the range (`after` when there were none).
    async fn apply_outbox_after(
        &self,
        tx: &mut Tx,
        after: i64,
        through: i64,
        limit: i64,
        tally: &mut Tally,
    ) -> anyhow::Result<(usize, i64)> {
        let Some(last) = store::range_end(tx, after, through, limit).await? else {
            return Ok((0, after));
        };
        let events = store::unprocessed_events(tx, CONSUMER_GROUP, after, last).await?;
        let fresh = self.apply_all(tx, &events, tally).await?;
        Ok((fresh, last))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebuild_clears_every_stats_table_of_both_schemas() {
        for sql in [
            include_str!("../../runtime/migrations/sqlite/0003_stats.sql"),
            include_str!("../../runtime/migrations/postgres/0003_stats.sql"),
        ] {
            let mut tables: Vec<&str> = sql
                .lines()
                .filter_map(|l| l.strip_prefix("CREATE TABLE "))
                .filter_map(|l| l.split_whitespace().next())
                .collect();
            tables.sort_unstable();
            let mut listed: Vec<&str> = store::AGGREGATE_TABLES.iter().map(|(t, _)| *t).collect();
            listed.sort_unstable();
            assert_eq!(tables, listed);
        }
    }

    #[test]
    fn each_upserted_table_keys_rows_by_its_primary_key_in_both_schemas() {
        for sql in [
            include_str!("../../runtime/migrations/sqlite/0003_stats.sql"),
            include_str!("../../runtime/migrations/postgres/0003_stats.sql"),
        ] {
            for t in [
                &CONTACTS,
                &BOOKING_REQUESTS,
                &APPOINTMENTS,
                &VIDEO_SESSIONS,
                &CONSULTATION_RESPONSES,
            ] {
                let create = sql
                    .split(&format!("CREATE TABLE {} (", t.name))
                    .nth(1)
                    .unwrap_or_else(|| panic!("{} in the schema", t.name));
                let create = &create[..create.find(");").expect("end of CREATE TABLE")];
                let key = create
                    .split("PRIMARY KEY (")
                    .nth(1)
                    .and_then(|k| k.split(')').next())
                    .expect("primary key");
                assert_eq!(key.split(", ").collect::<Vec<_>>(), t.keys, "{}", t.name);
                for c in t.sums {
                    assert!(create.contains(&format!("    {c} ")), "{}.{c}", t.name);
                }
            }
        }
    }

    #[test]
    fn an_upsert_numbers_the_placeholders_of_every_row_and_adds_every_sum() {
        assert_eq!(
            VIDEO_SESSIONS.upsert.sql(2),
            "INSERT INTO stats_video_sessions (day, org_number, municipality_number, gp_id, connected, held, n, connected_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8), ($9, $10, $11, $12, $13, $14, $15, $16) \
             ON CONFLICT (day, org_number, municipality_number, gp_id, connected, held) \
             DO UPDATE SET n = stats_video_sessions.n + excluded.n, connected_ms = stats_video_sessions.connected_ms + excluded.connected_ms"
        );
    }

    #[test]
    fn each_upsert_literal_names_its_tables_key_and_sum_columns() {
        for t in [
            &CONTACTS,
            &BOOKING_REQUESTS,
            &APPOINTMENTS,
            &VIDEO_SESSIONS,
            &CONSULTATION_RESPONSES,
        ] {
            let columns: Vec<&str> = t.keys.iter().chain(t.sums).copied().collect();
            assert_eq!(
                t.upsert.head,
                format!("INSERT INTO {} ({}) VALUES", t.name, columns.join(", "))
            );
            assert_eq!(t.upsert.columns, columns.len(), "{}", t.name);
            let set: Vec<String> = t
                .sums
                .iter()
                .map(|c| format!("{c} = {t}.{c} + excluded.{c}", t = t.name))
                .collect();
            assert_eq!(
                t.upsert.tail,
                format!(
                    "ON CONFLICT ({}) DO UPDATE SET {}",
                    t.keys.join(", "),
                    set.join(", ")
                ),
                "{}",
                t.name
            );
        }
    }

    #[test]
    fn every_modality_and_category_has_a_tariff_code() {
        assert_eq!(contact_of_modality("in_person"), Some(("in_person", "2ad")));
        assert_eq!(contact_of_modality("video"), Some(("video", "2ae")));
        assert_eq!(
            contact_of_category("e_consultation"),
            Some(("text_econsultation", "2ae"))
        );
        assert_eq!(
            contact_of_category("prescription_renewal"),
            Some(("prescription_renewal", "1bd"))
        );
        assert_eq!(
            contact_of_category("administrative"),
            Some(("reception_message", ""))
        );
        assert_eq!(contact_of_modality("carrier pigeon"), None);
    }
}
