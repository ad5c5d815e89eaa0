//! The one error type of the consultation service. Its gRPC codes are decided in one place, the
//! `From<ConsultationError> for tonic::Status` of [`crate::grpc`].

use econsult_booking::BookingError;
use econsult_runtime::idempotency::IdempotencyError;

/// Why a consultation command or query failed.
#[derive(Debug, thiserror::Error)]
pub enum ConsultationError {
    /// The request is malformed (INVALID_ARGUMENT); the message names the field.
    #[error("{0}")]
    Invalid(String),
    /// The thread or attachment does not exist, or is not the caller's (NOT_FOUND).
    #[error("{0}")]
    NotFound(String),
    /// The thread's state, or the patient's situation, does not allow it (FAILED_PRECONDITION).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The caller may not do this (PERMISSION_DENIED).
    #[error("{0}")]
    PermissionDenied(String),
    /// A patient's quota would be exceeded (RESOURCE_EXHAUSTED).
    #[error("{0}")]
    ResourceExhausted(String),
    /// The idempotency layer refused the key or failed.
    #[error(transparent)]
    Idempotency(#[from] IdempotencyError),
    /// Booking refused or failed the conversion's booking request.
    #[error(transparent)]
    Booking(#[from] BookingError),
    /// The database failed.
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    /// The call lacks what its access-log row needs (INVALID_ARGUMENT naming the header).
    #[error(transparent)]
    Unaccounted(#[from] econsult_runtime::audit::Unaccounted),
    /// Writing an outbox event failed.
    #[error(transparent)]
    Outbox(#[from] anyhow::Error),
    /// Something that cannot happen did (a stored record or row that does not decode): logged,
    /// INTERNAL without details.
    #[error("{context}: {message}")]
    Internal {
        /// Where.
        context: &'static str,
        /// What.
        message: String,
    },
}

impl ConsultationError {
    /// An [`ConsultationError::Internal`] of `context`.
    pub fn internal(context: &'static str, err: impl std::fmt::Display) -> Self {
        Self::Internal {
            context,
            message: err.to_string(),
        }
    }
}

impl From<econsult_runtime::audit::RecordError> for ConsultationError {
    fn from(e: econsult_runtime::audit::RecordError) -> Self {
        match e {
            econsult_runtime::audit::RecordError::Unaccounted(u) => Self::Unaccounted(u),
            econsult_runtime::audit::RecordError::Db(d) => Self::Db(d),
        }
    }
}
