//! Statistics service: consumes the events of the other services from the bus (consumer group
//! `stats`, acknowledged after the aggregates commit; every event applied once) and answers the
//! contact-statistics and five-working-day queries ops and EHRs ask.

pub mod aggregate;
pub mod grpc;

pub use aggregate::{Aggregator, CONSUMER_GROUP};
pub use grpc::StatsGrpc;
