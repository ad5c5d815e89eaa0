//! Small helpers shared by the gRPC adapters: status mapping and time conversion.

use chrono::{DateTime, Utc};
use tonic::Status;

/// Logs an unexpected error with the trace id and returns a bare `INTERNAL` (details never reach
/// the client).
pub fn internal(context: &str, err: impl std::fmt::Display) -> Status {
    tracing::error!(error = %err, trace_id = %crate::telemetry::current_trace_id(), "{context}");
    Status::internal(format!(
        "internal error (trace {})",
        crate::telemetry::current_trace_id()
    ))
}

/// Maps a database error: transient ones become `UNAVAILABLE` (retry), the rest `INTERNAL`.
pub fn db_status(context: &str, err: sqlx::Error) -> Status {
    if crate::db::is_transient(&err) {
        tracing::warn!(error = %err, "{context}: database unavailable");
        Status::unavailable("database temporarily unavailable, retry")
    } else {
        internal(context, err)
    }
}

/// A protobuf timestamp for an instant.
pub fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

/// An instant from a required protobuf timestamp; `INVALID_ARGUMENT` naming `field` otherwise.
pub fn required_time(
    t: Option<&prost_types::Timestamp>,
    field: &str,
) -> Result<DateTime<Utc>, Status> {
    let t = t.ok_or_else(|| Status::invalid_argument(format!("{field} is required")))?;
    optional_time(Some(t), field)?
        .ok_or_else(|| Status::invalid_argument(format!("{field} is required")))
}

/// An instant from an optional protobuf timestamp; `INVALID_ARGUMENT` naming `field` if out of
/// range.
pub fn optional_time(
    t: Option<&prost_types::Timestamp>,
    field: &str,
) -> Result<Option<DateTime<Utc>>, Status> {
    match t {
        None => Ok(None),
        Some(t) if (0..1_000_000_000).contains(&t.nanos) => {
            DateTime::from_timestamp(t.seconds, t.nanos as u32)
                .map(Some)
                .ok_or_else(|| Status::invalid_argument(format!("{field} is out of range")))
        }
        Some(_) => Err(Status::invalid_argument(format!(
            "{field} has invalid nanos"
        ))),
    }
}

/// A calendar date in ISO form; `INVALID_ARGUMENT` naming `field` otherwise.
pub fn parse_date(s: &str, field: &str) -> Result<chrono::NaiveDate, Status> {
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|_| {
        Status::invalid_argument(format!("{field} must be an ISO date like 2026-04-02"))
    })
}
