//! The one error type of the notify service; `grpc.rs` decides its gRPC code.

/// Why a notify call failed.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// Bad input; names the field.
    #[error("{field} {message}")]
    Invalid {
        /// The request field, e.g. `preferences.phone`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// Storage failed.
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    /// The call lacks what its access-log row needs (INVALID_ARGUMENT naming the header).
    #[error(transparent)]
    Unaccounted(#[from] econsult_runtime::audit::Unaccounted),
    /// Anything else (sealing, an event that does not decode).
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl NotifyError {
    /// A validation error for `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        NotifyError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl From<econsult_runtime::audit::RecordError> for NotifyError {
    fn from(e: econsult_runtime::audit::RecordError) -> Self {
        match e {
            econsult_runtime::audit::RecordError::Unaccounted(u) => Self::Unaccounted(u),
            econsult_runtime::audit::RecordError::Db(d) => Self::Db(d),
        }
    }
}
