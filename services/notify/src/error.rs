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
