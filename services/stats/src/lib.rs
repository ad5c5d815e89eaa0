//! Statistics service: consumes the events of the other services from the bus (consumer group
//! `stats`, acknowledged after the aggregates commit; every event applied once) and answers the
//! contact-statistics and five-working-day queries ops and EHRs ask.

pub mod aggregate;
pub mod grpc;

pub use aggregate::{Aggregator, CATCH_UP_EVERY, CONSUMER_GROUP};
pub use grpc::StatsGrpc;

use econsult_runtime::platform::Platform;
use opentelemetry::KeyValue;
use std::time::Duration;

/// Publishes the SLA gauges every `every` (and a second after new events) until shutdown, from the aggregates of the current
/// Oslo day and the last 30 days:
/// - `econsult_booking_within_target_share{municipality_number}`: share of the booking requests
///   opened today (Oslo day 0) for which the practice offered a slot within five working days,
///   as `econsult_booking::episodes` defines it;
/// - `econsult_consultation_within_sla_share{municipality_number}`: share of first responses in
///   the last 30 days that came before the due time.
pub async fn run_gauges(p: Platform, every: Duration) {
    let meter = opentelemetry::global::meter("econsult.stats");
    let booking = meter
        .f64_gauge("econsult_booking_within_target_share")
        .with_description(
            "Share of today's booking requests with an offer within five working days",
        )
        .build();
    let consultation = meter
        .f64_gauge("econsult_consultation_within_sla_share")
        .with_description(
            "Share of e-consultation first responses in the last 30 days within the SLA",
        )
        .build();
    let mut ticker = p.ticker(every);
    loop {
        let today = econsult_calendar::oslo_date(p.clock.now());
        let month_ago = today - chrono::Duration::days(30);
        let day = |d: chrono::NaiveDate| d.format("%Y-%m-%d").to_string();
        // Today's booking requests, as GetBookingAccessibility counts them.
        let scope = econsult_booking::episodes::Scope {
            from: day(today),
            to: day(today),
            ..Default::default()
        };
        let q1: Result<Vec<(String, i64, i64)>, sqlx::Error> =
            econsult_booking::episodes::accessibility_by_municipality(&p.db, &scope)
                .await
                .map(|m| {
                    m.into_iter()
                        .map(|(k, a)| (k, a.requests as i64, a.within_target as i64))
                        .collect()
                });
        let q2: Result<Vec<(String, i64, i64)>, sqlx::Error> = sqlx::query_as(
            "SELECT municipality_number, CAST(SUM(n) AS BIGINT), CAST(SUM(CASE WHEN within_sla = 1 THEN n ELSE 0 END) AS BIGINT) \
             FROM stats_consultation_responses WHERE day > $1 AND day <= $2 GROUP BY municipality_number",
        )
        .bind(day(month_ago))
        .bind(day(today))
        .fetch_all(p.db.read())
        .await;
        for (rows, gauge) in [(q1, &booking), (q2, &consultation)] {
            match rows {
                Ok(rows) => {
                    for (m, n, ok) in rows {
                        if n > 0 {
                            gauge.record(
                                ok as f64 / n as f64,
                                &[KeyValue::new("municipality_number", m)],
                            );
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "SLA gauge query failed"),
            }
        }
        if !ticker.tick().await {
            return;
        }
    }
}
