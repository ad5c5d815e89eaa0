//! Booking service: the EHR publishes GP schedules; patients find, hold, book, cancel and
//! reschedule; waitlist; and the five-working-day measurement of fastlegeforskriften § 22.
//!
//! - [`domain`]: types, no transport.
//! - [`error`]: [`BookingError`], the cases a caller must tell apart.
//! - [`service`]: the logic over the shared storage, by use case (one transaction per mutation,
//!   with its outbox events, audit rows and idempotency record).
//! - `store`: every SQL statement of the crate (the service's, the booking requests' of
//!   [`episodes`] and the lookups' of [`directory`]).
//! - [`grpc`]: the tonic adapter (authorisation and validation).

pub mod directory;
pub mod domain;
pub mod episodes;
pub mod error;
pub mod grpc;
pub mod guarantee;
pub mod service;
mod store;

pub use error::BookingError;
pub use grpc::BookingGrpc;
pub use service::{Booking, BookingConfig};

use econsult_runtime::platform::{Mount, Platform};
use std::time::Duration;

/// How often expired holds are swept.
pub const HOLD_SWEEP_EVERY: Duration = Duration::from_secs(5);

/// Mounts the booking service: its gRPC server, the sweeper of expired holds, the flusher of
/// booking requests (episodes) and the watch of unmet requests (the guarantee engine).
pub fn mount(p: &Platform, cfg: &BookingConfig, m: &mut Mount<'_>) {
    let booking = Booking::new(p.clone(), cfg.clone());
    m.spawn(booking.clone().run_hold_sweeper(HOLD_SWEEP_EVERY));
    m.spawn(booking.clone().run_episode_flusher());
    m.spawn(booking.clone().run_unmet_watch(service::UNMET_EVERY));
    m.serve(
        BookingGrpc::new(booking, p.proxies())
            .into_server()
            .max_decoding_message_size(4 * 1024 * 1024),
    );
}
