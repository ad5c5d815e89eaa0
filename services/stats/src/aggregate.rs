//! Applies events to the aggregate tables, exactly once per event id.

use econsult_calendar::oslo_date;
use econsult_runtime::bus::{Delivery, Event};
use econsult_runtime::clock::from_ms;
use econsult_runtime::db::{Db, Tx};
use econsult_runtime::events::{
    AppointmentChanged, BookingRequested, ConsultationChanged, VideoSessionEnded, topics,
};
use econsult_runtime::platform::Platform;
use opentelemetry::KeyValue;
use opentelemetry::metrics::Counter;
use std::time::Duration;

/// Where a contact is counted.
struct Contact<'a> {
    org: &'a str,
    municipality: &'a str,
    gp: &'a str,
    ctype: &'static str,
    tariff: &'a str,
}

/// Every table the aggregator writes (migrations 0003_stats.sql); a rebuild clears them all.
pub const AGGREGATE_TABLES: [&str; 6] = [
    "stats_contacts",
    "stats_booking_requests",
    "stats_appointments",
    "stats_counted_appointments",
    "stats_video_sessions",
    "stats_consultation_responses",
];

/// Consumer group of the statistics service on the bus.
pub const CONSUMER_GROUP: &str = "stats";

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

/// Contact type and tariff code of a closed text consultation of a category (the tariff code
/// the practice billed wins when the event carries one).
pub fn contact_of_category(category: &str) -> Option<(&'static str, &'static str)> {
    match category {
        "e_consultation" => Some(("text_econsultation", "2ae")),
        "prescription_renewal" => Some(("prescription_renewal", "1bd")),
        "administrative" => Some(("administrative", "1bd")),
        _ => None,
    }
}

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

/// Consumes events and keeps the aggregates.
pub struct Aggregator {
    db: Db,
    requests: Counter<u64>,
    breaches: Counter<u64>,
    contacts: Counter<u64>,
    video: Counter<u64>,
}

impl Aggregator {
    /// An aggregator writing to `db`.
    pub fn new(db: Db) -> Self {
        let meter = opentelemetry::global::meter("econsult.stats");
        Self {
            db,
            requests: meter
                .u64_counter("econsult_booking_requests")
                .with_description("Booking requests (FindSlots by patients), by whether the earliest offer was within five working days")
                .build(),
            breaches: meter
                .u64_counter("econsult_booking_breaches")
                .with_description("Booking requests whose earliest offer was not within five working days, by reason")
                .build(),
            contacts: meter.u64_counter("econsult_contacts").with_description("Held contacts, by contact type").build(),
            video: meter
                .u64_counter("econsult_video_sessions")
                .with_description("Ended video sessions, by whether the peers connected (connected=false: a connect failure), held and end reason")
                .build(),
        }
    }

    /// Applies one event in `tx` unless it was applied before; its metric increments go to
    /// `tally`. Returns whether it was new.
    async fn apply(&self, tx: &mut Tx, e: &Event, tally: &mut Tally) -> anyhow::Result<bool> {
        let fresh = sqlx::query(
            "INSERT INTO processed_events (consumer, event_id, processed_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(CONSUMER_GROUP)
        .bind(&e.event_id)
        .bind(e.created_at)
        .execute(&mut **tx)
        .await?
        .rows_affected()
            == 1;
        if !fresh {
            return Ok(false);
        }
        match e.topic.as_str() {
            topics::BOOKING_REQUESTED => {
                let b: BookingRequested = serde_json::from_str(&e.payload)?;
                let wd = b
                    .earliest_offer_working_days
                    .map_or(-1, |d| i64::from(d.min(15)));
                sqlx::query(
                    "INSERT INTO stats_booking_requests (day, org_number, municipality_number, gp_id, working_days, within_target, breach_reason, n) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, 1) ON CONFLICT (day, org_number, municipality_number, gp_id, working_days, within_target, breach_reason) \
                     DO UPDATE SET n = stats_booking_requests.n + 1",
                )
                .bind(&b.date)
                .bind(&b.org_number)
                .bind(&b.municipality_number)
                .bind(&b.gp_id)
                .bind(wd)
                .bind(i64::from(b.within_target))
                .bind(b.breach_reason.as_deref().unwrap_or(""))
                .execute(&mut **tx)
                .await?;
                tally.add(
                    &self.requests,
                    vec![KeyValue::new("within_target", b.within_target)],
                );
                if let Some(r) = &b.breach_reason {
                    tally.add(&self.breaches, vec![KeyValue::new("reason", r.clone())]);
                }
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
                    self.count_contact(tx, tally, Some(&a.appointment_id), a.start_ms, contact)
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
                let day = oslo_date(from_ms(v.started_at_ms))
                    .format("%Y-%m-%d")
                    .to_string();
                sqlx::query(
                    "INSERT INTO stats_video_sessions (day, org_number, municipality_number, gp_id, connected, held, n, connected_ms) \
                     VALUES ($1, $2, $3, $4, $5, $6, 1, $7) ON CONFLICT (day, org_number, municipality_number, gp_id, connected, held) \
                     DO UPDATE SET n = stats_video_sessions.n + 1, connected_ms = stats_video_sessions.connected_ms + excluded.connected_ms",
                )
                .bind(day)
                .bind(&v.org_number)
                .bind(&v.municipality_number)
                .bind(&v.gp_id)
                .bind(i64::from(v.connected))
                .bind(i64::from(v.held))
                .bind(v.connected_ms.max(0))
                .execute(&mut **tx)
                .await?;
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
                    let day = oslo_date(from_ms(c.submitted_at_ms))
                        .format("%Y-%m-%d")
                        .to_string();
                    let wd = c.response_working_days.map_or(15, |d| i64::from(d.min(15)));
                    sqlx::query(
                        "INSERT INTO stats_consultation_responses (day, org_number, municipality_number, gp_id, category, working_days, within_sla, n) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, 1) ON CONFLICT (day, org_number, municipality_number, gp_id, category, working_days, within_sla) \
                         DO UPDATE SET n = stats_consultation_responses.n + 1",
                    )
                    .bind(day)
                    .bind(&c.org_number)
                    .bind(&c.municipality_number)
                    .bind(&c.gp_id)
                    .bind(&c.category)
                    .bind(wd)
                    .bind(i64::from(first <= c.due_at_ms))
                    .execute(&mut **tx)
                    .await?;
                }
            }
            topics::CONSULTATION_CLOSED => {
                let c: ConsultationChanged = serde_json::from_str(&e.payload)?;
                let withdrawn = c.outcome.as_deref() == Some("withdrawn");
                if let (false, Some((ctype, default_tariff))) =
                    (withdrawn, contact_of_category(&c.category))
                {
                    let tariff = c
                        .tariff_code
                        .as_deref()
                        .filter(|t| !t.is_empty())
                        .unwrap_or(default_tariff);
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
                        None,
                        c.closed_at_ms.unwrap_or(e.created_at),
                        contact,
                    )
                    .await?;
                }
            }
            topics::BOOKING_CREATED | topics::BOOKING_RESCHEDULED => {
                let a: AppointmentChanged = serde_json::from_str(&e.payload)?;
                self.count_appointment(tx, &a, a.booked_at_ms, "booked")
                    .await?;
            }
            topics::BOOKING_CANCELLED => {
                let a: AppointmentChanged = serde_json::from_str(&e.payload)?;
                let at = a.cancelled_at_ms.unwrap_or(e.created_at);
                self.count_appointment(tx, &a, at, "cancelled").await?;
                if a.late_cancellation {
                    self.count_appointment(tx, &a, at, "late_cancellation")
                        .await?;
                }
            }
            topics::BOOKING_NOSHOW => {
                let a: AppointmentChanged = serde_json::from_str(&e.payload)?;
                self.count_appointment(tx, &a, a.start_ms, "noshow").await?;
            }
            _ => {}
        }
        Ok(true)
    }

    /// Counts one contact on the Oslo day of `at_ms`; with an appointment id, at most once per
    /// appointment whatever reports it.
    async fn count_contact(
        &self,
        tx: &mut Tx,
        tally: &mut Tally,
        appointment_id: Option<&str>,
        at_ms: i64,
        c: Contact<'_>,
    ) -> anyhow::Result<()> {
        if let Some(id) = appointment_id {
            let first = sqlx::query("INSERT INTO stats_counted_appointments (appointment_id) VALUES ($1) ON CONFLICT DO NOTHING")
                .bind(id)
                .execute(&mut **tx)
                .await?
                .rows_affected()
                == 1;
            if !first {
                return Ok(());
            }
        }
        let day = oslo_date(from_ms(at_ms)).format("%Y-%m-%d").to_string();
        sqlx::query(
            "INSERT INTO stats_contacts (day, org_number, municipality_number, gp_id, contact_type, tariff_code, n) \
             VALUES ($1, $2, $3, $4, $5, $6, 1) ON CONFLICT (day, org_number, municipality_number, gp_id, contact_type, tariff_code) \
             DO UPDATE SET n = stats_contacts.n + 1",
        )
        .bind(day)
        .bind(c.org)
        .bind(c.municipality)
        .bind(c.gp)
        .bind(c.ctype)
        .bind(c.tariff)
        .execute(&mut **tx)
        .await?;
        tally.add(&self.contacts, vec![KeyValue::new("contact_type", c.ctype)]);
        Ok(())
    }

    async fn count_appointment(
        &self,
        tx: &mut Tx,
        a: &AppointmentChanged,
        at_ms: i64,
        kind: &str,
    ) -> anyhow::Result<()> {
        let day = oslo_date(from_ms(at_ms)).format("%Y-%m-%d").to_string();
        sqlx::query(
            "INSERT INTO stats_appointments (day, org_number, municipality_number, gp_id, kind, n) VALUES ($1, $2, $3, $4, $5, 1) \
             ON CONFLICT (day, org_number, municipality_number, gp_id, kind) DO UPDATE SET n = stats_appointments.n + 1",
        )
        .bind(day)
        .bind(&a.org_number)
        .bind(&a.municipality_number)
        .bind(&a.gp_id)
        .bind(kind)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Applies a batch in one transaction. Returns how many were new.
    pub async fn apply_batch(&self, deliveries: &[Delivery]) -> anyhow::Result<usize> {
        let mut tx = self.db.begin().await?;
        let mut tally = Tally::default();
        let mut fresh = 0;
        for d in deliveries {
            if self.apply(&mut tx, &d.event, &mut tally).await? {
                fresh += 1;
            }
        }
        tx.commit().await?;
        tally.publish();
        Ok(fresh)
    }

    /// Applies sequenced outbox events after this consumer's catch-up watermark (kept in
    /// `bus_offsets` under `stats-catch-up`), in `seq` order, each at most once
    /// (`processed_events`). The outbox is the durable log and Redis only the fast path: events
    /// a Redis restart lost from the stream (it keeps nothing on disk) are applied here.
    /// Returns how many were new.
    pub async fn catch_up(&self, limit: i64) -> anyhow::Result<usize> {
        let mut tx = self.db.begin().await?;
        let after: i64 = sqlx::query_scalar(
            "SELECT COALESCE(MAX(seq), 0) FROM bus_offsets WHERE consumer_group = $1",
        )
        .bind(CATCH_UP_GROUP)
        .fetch_one(&mut *tx)
        .await?;
        let mut tally = Tally::default();
        let (fresh, last) = self
            .apply_outbox_after(&mut tx, after, limit, &mut tally)
            .await?;
        if last > after {
            sqlx::query(
                "INSERT INTO bus_offsets (consumer_group, seq) VALUES ($1, $2) \
                 ON CONFLICT (consumer_group) DO UPDATE SET seq = CASE WHEN excluded.seq > bus_offsets.seq THEN excluded.seq ELSE bus_offsets.seq END",
            )
            .bind(CATCH_UP_GROUP)
            .bind(last)
            .execute(&mut *tx)
            .await?;
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

    /// Runs [`Aggregator::catch_up`] every `every` until shutdown. Events the bus delivers are
    /// usually applied long before, so a pass mostly finds them done; the watermark trails the
    /// bus by `every`.
    pub async fn run_catch_up(self, platform: Platform, every: Duration) {
        let mut stop = platform.shutdown.clone();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.changed() => return,
            }
            loop {
                match self.catch_up(1000).await {
                    Ok(n) if n > 0 => continue,
                    Ok(_) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "stats catch-up failed");
                        break;
                    }
                }
            }
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
                        b = sub.fetch(256, Duration::from_millis(500)) => b?,
                        _ = stop.changed() => return Ok(()),
                    };
                    if batch.is_empty() {
                        continue;
                    }
                    self.apply_batch(&batch).await?;
                    sub.ack(&batch).await?;
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
    /// this consumer's processed-event marks, then applies every event in `seq` order. The
    /// Prometheus counters are left alone (they count events as first applied; re-applying
    /// would count them twice).
    pub async fn rebuild(&self) -> anyhow::Result<usize> {
        let mut tx = self.db.begin().await?;
        for t in AGGREGATE_TABLES {
            sqlx::query(&format!("DELETE FROM {t}"))
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("DELETE FROM processed_events WHERE consumer = $1")
            .bind(CONSUMER_GROUP)
            .execute(&mut *tx)
            .await?;
        let (mut after, mut n) = (0i64, 0);
        let mut not_counted = Tally::default();
        loop {
            let (fresh, last) = self
                .apply_outbox_after(&mut tx, after, 1000, &mut not_counted)
                .await?;
            if last == after {
                break;
            }
            (after, n) = (last, n + fresh);
        }
        tx.commit().await?;
        Ok(n)
    }

    /// Applies the next `limit` sequenced outbox events after `after` in `seq` order inside `tx`,
    /// reading only those not yet applied (one statement, not an insert attempt per event the
    /// bus already delivered); returns how many were new and the last seq of the range (`after`
    /// when there were none).
    async fn apply_outbox_after(
        &self,
        tx: &mut Tx,
        after: i64,
        limit: i64,
        tally: &mut Tally,
    ) -> anyhow::Result<(usize, i64)> {
        let last: Option<i64> = sqlx::query_scalar(
            "SELECT MAX(seq) FROM (SELECT seq FROM outbox WHERE seq > $1 ORDER BY seq LIMIT $2) AS r",
        )
        .bind(after)
        .bind(limit)
        .fetch_one(&mut **tx)
        .await?;
        let Some(last) = last else {
            return Ok((0, after));
        };
        let rows = sqlx::query(
            "SELECT o.seq, o.event_id, o.topic, o.org_number, o.payload, o.created_at FROM outbox o \
             WHERE o.seq > $1 AND o.seq <= $2 \
             AND NOT EXISTS (SELECT 1 FROM processed_events p WHERE p.consumer = $3 AND p.event_id = o.event_id) \
             ORDER BY o.seq",
        )
        .bind(after)
        .bind(last)
        .bind(CONSUMER_GROUP)
        .fetch_all(&mut **tx)
        .await?;
        let mut fresh = 0;
        for r in &rows {
            let e = econsult_runtime::outbox::event_from_row(r)?;
            if self.apply(tx, &e, tally).await? {
                fresh += 1;
            }
        }
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
            let mut listed = AGGREGATE_TABLES.to_vec();
            listed.sort_unstable();
            assert_eq!(tables, listed);
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
            Some(("administrative", "1bd"))
        );
        assert_eq!(contact_of_modality("carrier pigeon"), None);
    }
}
