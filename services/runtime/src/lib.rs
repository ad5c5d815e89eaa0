//! Shared runtime of the econsult services: authentication and audit, storage, transactional
//! outbox and event bus, telemetry, and the platform handles every service is built on.

pub mod audit;
pub mod auth;
pub mod bus;
pub mod clock;
pub mod command;
pub mod consumer;
pub mod db;
pub mod events;
pub mod group_commit;
pub mod grpc;
pub mod idempotency;
pub mod nin;
pub mod outbox;
pub mod platform;
mod private_file;
pub mod proxy;
pub mod pseudonym;
pub mod ratelimit;
pub mod retention;
pub mod streams;
pub mod tariff;
pub mod telemetry;

/// Crash-test hook: when the environment variable `ECONSULT_FAILPOINT` names this point, the
/// process aborts here at once, like `kill -9`. Used by tests that prove nothing is lost when the
/// process dies between two steps; costs one cached comparison otherwise.
pub fn failpoint(name: &str) {
    static ARMED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    if ARMED
        .get_or_init(|| std::env::var("ECONSULT_FAILPOINT").ok())
        .as_deref()
        == Some(name)
    {
        eprintln!("failpoint {name}: aborting");
        std::process::abort();
    }
}
