//! The one error type of the booking service: the cases a caller must tell apart. The gRPC
//! code of each is decided in the adapter ([`crate::grpc`]).

use econsult_runtime::idempotency::IdempotencyError;

/// Booking errors a caller must tell apart.
#[derive(Debug, thiserror::Error)]
pub enum BookingError {
    /// Bad input; names the field.
    #[error("{field}: {message}")]
    Invalid {
        /// The field.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// Unknown (or not visible to the caller).
    #[error("{0} not found")]
    NotFound(String),
    /// The state does not allow it.
    #[error("{0}")]
    FailedPrecondition(String),
    /// Exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// The idempotency key was used for another request.
    #[error("idempotency_key was already used for a different request")]
    KeyReused,
    /// Temporarily unable; the client should retry.
    #[error("{0}")]
    Unavailable(String),
    /// Database failure.
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    /// The call lacks what its access-log row needs (INVALID_ARGUMENT naming the header).
    #[error(transparent)]
    Unaccounted(#[from] econsult_runtime::audit::Unaccounted),
    /// Anything else unexpected.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl BookingError {
    /// A validation error for `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        BookingError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl From<IdempotencyError> for BookingError {
    fn from(e: IdempotencyError) -> Self {
        use IdempotencyError as E;
        match e {
            E::KeyReused => BookingError::KeyReused,
            E::BadKey => BookingError::invalid("idempotency_key", "must be 1 to 128 characters"),
            E::Db(d) => BookingError::Db(d),
            E::Codec(c) => BookingError::Other(c.into()),
        }
    }
}

impl From<econsult_runtime::audit::RecordError> for BookingError {
    fn from(e: econsult_runtime::audit::RecordError) -> Self {
        match e {
            econsult_runtime::audit::RecordError::Unaccounted(u) => Self::Unaccounted(u),
            econsult_runtime::audit::RecordError::Db(d) => Self::Db(d),
        }
    }
}
