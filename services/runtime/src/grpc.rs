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

/// Maps an error that may wrap a database or Redis error (the outbox, presence, helpers returning
/// `anyhow`): a transient database error becomes `UNAVAILABLE` like in [`db_status`], so does a
/// Redis connection failure; anything else `INTERNAL`.
pub fn anyhow_status(context: &str, err: anyhow::Error) -> Status {
    let err = match err.downcast::<sqlx::Error>() {
        Ok(db) => return db_status(context, db),
        Err(other) => other,
    };
    if let Some(r) = err.downcast_ref::<redis::RedisError>()
        && (r.is_io_error()
            || r.is_connection_dropped()
            || r.is_connection_refusal()
            || r.is_timeout())
    {
        tracing::warn!(error = %r, "{context}: redis unavailable");
        return Status::unavailable("event bus temporarily unavailable, retry");
    }
    internal(context, format!("{err:#}"))
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
    // google.protobuf.Timestamp's range: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z. An
    // instant outside it cannot be sent back in a Timestamp either.
    const TIMESTAMP_SECONDS: std::ops::RangeInclusive<i64> = -62_135_596_800..=253_402_300_799;
    match t {
        None => Ok(None),
        Some(t) if !TIMESTAMP_SECONDS.contains(&t.seconds) => Err(Status::invalid_argument(
            format!("{field} is out of range (years 1 to 9999)"),
        )),
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

/// Refuses a string holding a NUL character (`\0`) with `INVALID_ARGUMENT` naming `field`. A
/// NUL is never meaningful in an id or a text, PostgreSQL cannot store it, and silently
/// dropping it would store something other than what the client sent.
pub fn no_nul(value: &str, field: &str) -> Result<(), Status> {
    if value.contains('\0') {
        Err(Status::invalid_argument(format!(
            "{field} must not contain a NUL character"
        )))
    } else {
        if field.ends_with("_id") {
            crate::telemetry::record_id(field, value);
        }
        Ok(())
    }
}

/// [`no_nul`] for several fields at once, as (value, field name) pairs.
pub fn no_nuls(fields: &[(&str, &str)]) -> Result<(), Status> {
    fields.iter().try_for_each(|(v, f)| no_nul(v, f))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_nul_is_refused_naming_the_field() {
        assert!(super::no_nul("tab\tand ümlaut", "body").is_ok());
        let err = super::no_nuls(&[("ok", "subject"), ("a\0b", "body")]).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert_eq!(err.message(), "body must not contain a NUL character");
    }

    #[test]
    fn a_wrapped_transient_database_error_is_unavailable_and_the_rest_internal() {
        let io = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        let wrapped = anyhow::Error::from(io).context("outbox insert");
        assert_eq!(
            super::anyhow_status("outbox", wrapped).code(),
            tonic::Code::Unavailable
        );
        let other = anyhow::anyhow!("payload does not serialise");
        assert_eq!(
            super::anyhow_status("outbox", other).code(),
            tonic::Code::Internal
        );
    }
}
