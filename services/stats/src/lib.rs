//! Statistics service: consumes the events of the other services from the bus (consumer group
//! `stats`, acknowledged after the aggregates commit; every event applied once) and answers the
//! contact-statistics and five-working-day queries ops and EHRs ask.
//!
//! The shape of every service crate: `grpc` (adapter: caller check, proto ⇄ domain, the one
//! `From<StatsError> for Status`), `service` (queries on domain types) and `aggregate` (the
//! event consumer), `store` (every SQL statement), `domain`, `error`.

pub mod aggregate;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod levels;
pub mod service;
pub mod store;
pub mod suppress;

pub use aggregate::{Aggregator, CATCH_UP_EVERY, CONSUMER_GROUP};
pub use error::StatsError;
pub use grpc::StatsGrpc;
pub use service::{Stats, run_gauges};

use econsult_runtime::platform::{Mount, Platform};
use std::time::Duration;

/// How often the SLA gauges are published (and a second after new events).
pub const GAUGES_EVERY: Duration = Duration::from_secs(15);

/// Mounts the statistics service: its gRPC server, the SLA gauges, the bus consumer (this
/// instance's consumer of the group) and the catch-up from the outbox, which applies what the
/// bus lost (a Redis restart, an instance killed with entries it took) within two periods.
pub fn mount(p: &Platform, m: &mut Mount<'_>) {
    m.spawn(run_gauges(p.clone(), GAUGES_EVERY));
    m.spawn(Aggregator::new(p.db.clone()).run(p.clone(), p.instance_id.clone()));
    m.spawn(Aggregator::new(p.db.clone()).run_catch_up(p.clone(), CATCH_UP_EVERY));
    m.serve(StatsGrpc::new(Stats::new(p.db.clone())).into_server());
}
