//! Consultation service: asynchronous text e-consultations between a patient and the practice
//! of the patient's regular GP, with a response SLA in Norwegian working days.
//!
//! - [`domain`]: threads, messages, and the state machine; the stored codes as enums.
//! - [`content`]: sanitising text and checking attachments (magic bytes, sizes).
//! - [`sla`]: due times, working days and working hours.
//! - [`urgent`]: the answer to a patient whose matter is urgent.
//! - [`service`]: the commands and queries (quotas, SLA, state changes, read receipts,
//!   closing), each mutating command one transaction with its outbox events, audit rows and
//!   idempotency record.
//! - [`store`]: every SQL statement, over the tables `consultation_*`.
//! - [`directory`]: read-only lookups for the other services (the patient of a thread).
//! - [`feed`]: the process's one reader of consultation events for the change streams.
//! - [`grpc`]: `econsult.consultation.v1.ConsultationService`, the adapter (caller check,
//!   proto ⇄ domain, the status of each [`ConsultationError`]).

pub mod content;
pub mod directory;
pub mod domain;
pub mod error;
pub mod feed;
pub mod grpc;
pub mod service;
pub mod sla;
pub mod store;
pub mod structure;
pub mod urgent;

pub use error::ConsultationError;
pub use grpc::ConsultationGrpc;

use econsult_runtime::platform::Platform;
use opentelemetry::KeyValue;
use std::time::Duration;

/// Response SLA when a practice has not set its own (working days).
pub const DEFAULT_RESPONSE_WORKING_DAYS: u32 = 5;

/// What one patient may store: open threads at a time, and attachment bytes in any 24 hours
/// (a refused call is RESOURCE_EXHAUSTED naming the limit; nothing is stored).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quotas {
    /// Threads submitted, in review or awaiting the patient.
    pub open_threads: i64,
    /// Bytes of attachments the patient sent in the last 24 hours.
    pub attachment_bytes_per_day: i64,
}

impl Default for Quotas {
    /// Ten open questions and 30 MiB a day (six full messages of three 5 MiB files would be
    /// 90 MiB): plenty for a patient, a bound for a script.
    fn default() -> Self {
        Self {
            open_threads: 10,
            attachment_bytes_per_day: 30 * 1024 * 1024,
        }
    }
}

/// Publishes `econsult_consultations_overdue` (open threads without a practice response whose due
/// time has passed, per organisation with open threads; 0 included) every `every` and soon after
/// new events, until shutdown.
pub async fn run_overdue_gauge(p: Platform, every: Duration) {
    let gauge = opentelemetry::global::meter("econsult.consultation")
        .i64_gauge("econsult_consultations_overdue")
        .with_description(
            "Open e-consultations without a practice response past their due time, by organisation",
        )
        .build();
    let mut ticker = p.ticker(every);
    let mut seen: std::collections::BTreeSet<String> = Default::default();
    loop {
        let rows = store::overdue_by_org(p.db.read(), p.clock.now_ms()).await;
        match rows {
            Ok(rows) => {
                let now: std::collections::BTreeSet<String> =
                    rows.iter().map(|(o, _)| o.clone()).collect();
                // Organisations that are no longer overdue go back to 0.
                for org in seen.difference(&now) {
                    gauge.record(0, &[KeyValue::new("org_number", org.clone())]);
                }
                for (org, n) in rows {
                    gauge.record(n, &[KeyValue::new("org_number", org)]);
                }
                seen = now;
            }
            Err(e) => tracing::warn!(error = %e, "overdue gauge query failed"),
        }
        if !ticker.tick().await {
            return;
        }
    }
}

/// How often the overdue gauge is published (and soon after new events).
pub const OVERDUE_GAUGE_EVERY: Duration = Duration::from_secs(30);

/// Mounts the consultation service: its gRPC server (messages up to 16 MiB: three 5 MiB
/// attachments and the text) and the overdue gauge. Returns the process's feed of consultation
/// events (its stream readers; tests watch it).
pub fn mount(
    p: &Platform,
    quotas: Quotas,
    feed_capacity: usize,
    m: &mut econsult_runtime::platform::Mount<'_>,
) -> feed::Feed {
    m.spawn(run_overdue_gauge(p.clone(), OVERDUE_GAUGE_EVERY));
    let service =
        ConsultationGrpc::with_feed_capacity(p.clone(), feed_capacity).with_quotas(quotas);
    let feed = service.feed().clone();
    m.serve(
        service
            .into_server()
            .max_decoding_message_size(16 * 1024 * 1024),
    );
    feed
}
