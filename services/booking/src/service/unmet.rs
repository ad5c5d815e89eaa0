//! The guarantee engine's "tell the practice" ([`crate::guarantee::Step::TellPractice`]): a
//! `booking.request_unmet` event (WatchBookings) once per unmet request, and the gauges the
//! practice's alert is made of.

use super::*;
use crate::guarantee::{Policy, Step};
use crate::store::guarantee as gstore;
use econsult_runtime::events::{RequestUnmet, topics};
use opentelemetry::KeyValue;
use std::collections::{BTreeMap, BTreeSet};

/// How often unmet requests are looked for (and soon after new events).
pub const UNMET_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

impl Booking {
    /// Tells the practices of the requests newly unmet at `now` (an event each, in one
    /// transaction with their marks), when their policy has the step. Returns how many.
    pub async fn tell_unmet(&self) -> Result<usize, BookingError> {
        let now = self.p.clock.now_ms();
        let mut tx = self.p.db.begin().await?;
        let unmet = gstore::take_untold_unmet(&mut tx, now).await?;
        let mut policies: BTreeMap<String, Policy> = BTreeMap::new();
        let mut told = 0;
        for u in &unmet {
            if !policies.contains_key(&u.org_number) {
                let p = gstore::policy(&mut tx, &u.org_number).await?;
                policies.insert(u.org_number.clone(), p);
            }
            if !policies[&u.org_number].has(Step::TellPractice) {
                continue;
            }
            let body = RequestUnmet {
                request_id: u.request_id.clone(),
                gp_id: u.gp_id.clone(),
                org_number: u.org_number.clone(),
                requested_at_ms: u.requested_at,
                target_date: gstore::target_day(u.deadline_end)
                    .format("%Y-%m-%d")
                    .to_string(),
            };
            outbox::write(
                &mut tx,
                NewEvent {
                    topic: topics::BOOKING_REQUEST_UNMET,
                    org_number: &u.org_number,
                    route_key: &self.p.pseudonyms.key_for(&u.patient_nin),
                    payload: &body,
                },
                now,
            )?;
            told += 1;
        }
        tx.commit().await?;
        Ok(told)
    }

    /// Background task: every `every` (and soon after new events) until shutdown, tells the
    /// practices of new unmet requests and publishes
    /// - `econsult_booking_unmet_requests{org_number,gp_id}`: open requests of the GP's list
    ///   whose target window is still open and that nothing met (0 once none are left), for
    ///   practices whose policy tells them;
    /// - `econsult_booking_unmet_alert_threshold{org_number}`: the practice's threshold, for
    ///   the alert rule `UnmetBookingRequests`.
    pub async fn run_unmet_watch(self, every: std::time::Duration) {
        let meter = opentelemetry::global::meter("econsult.booking");
        let unmet = meter
            .u64_gauge("econsult_booking_unmet_requests")
            .with_description("Open booking requests of a GP's list not met within five working days while their target window is open")
            .build();
        let threshold = meter
            .u64_gauge("econsult_booking_unmet_alert_threshold")
            .with_description(
                "The practice's threshold of unmet booking requests per GP (guarantee policy)",
            )
            .build();
        let mut ticker = self.p.ticker(every);
        let mut seen: BTreeSet<(String, String)> = BTreeSet::new();
        loop {
            if let Err(e) = self.tell_unmet().await {
                tracing::warn!(error = %e, "telling practices of unmet requests failed");
            }
            match self.unmet_counts().await {
                Ok((rows, thresholds)) => {
                    let now: BTreeSet<(String, String)> = rows
                        .iter()
                        .map(|(o, g, _)| (o.clone(), g.clone()))
                        .collect();
                    for (org, gp) in seen.difference(&now) {
                        unmet.record(
                            0,
                            &[
                                KeyValue::new("org_number", org.clone()),
                                KeyValue::new("gp_id", gp.clone()),
                            ],
                        );
                    }
                    for (org, gp, n) in rows {
                        unmet.record(
                            n,
                            &[KeyValue::new("org_number", org), KeyValue::new("gp_id", gp)],
                        );
                    }
                    for (org, t) in thresholds {
                        threshold.record(u64::from(t), &[KeyValue::new("org_number", org)]);
                    }
                    seen = now;
                }
                Err(e) => tracing::warn!(error = %e, "unmet requests gauge query failed"),
            }
            if !ticker.tick().await {
                return;
            }
        }
    }

    /// Unmet requests per GP of practices that are told, and those practices' thresholds.
    #[allow(clippy::type_complexity)]
    async fn unmet_counts(
        &self,
    ) -> Result<(Vec<(String, String, u64)>, Vec<(String, u32)>), BookingError> {
        let mut conn = self.p.db.read().acquire().await?;
        let rows = gstore::unmet_by_gp(&mut conn, self.p.clock.now_ms()).await?;
        let mut policies: BTreeMap<String, Policy> = BTreeMap::new();
        for (org, _, _) in &rows {
            if !policies.contains_key(org) {
                let p = gstore::policy(&mut conn, org).await?;
                policies.insert(org.clone(), p);
            }
        }
        let told: Vec<(String, String, u64)> = rows
            .into_iter()
            .filter(|(org, _, _)| policies[org].has(Step::TellPractice))
            .collect();
        let thresholds = policies
            .into_iter()
            .filter(|(_, p)| p.has(Step::TellPractice))
            .map(|(org, p)| (org, p.unmet_threshold))
            .collect();
        Ok((told, thresholds))
    }
}
