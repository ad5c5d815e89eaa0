//! Booking service: the EHR publishes GP schedules; patients find, hold, book, cancel and
//! reschedule; waitlist; and the five-working-day measurement of fastlegeforskriften § 22.
//!
//! - [`domain`]: types, no transport.
//! - [`error`]: [`BookingError`], the cases a caller must tell apart.
//! - [`service`]: the logic over the shared storage, by use case (one transaction per mutation,
//!   with its outbox events, audit rows and idempotency record).
//! - `store`: every SQL statement of the service's commands and queries.
//! - [`grpc`]: the tonic adapter (authorisation and validation).

pub mod directory;
pub mod domain;
pub mod episodes;
pub mod error;
pub mod grpc;
pub mod service;
mod store;

pub use error::BookingError;
pub use grpc::BookingGrpc;
pub use service::{Booking, BookingConfig};
