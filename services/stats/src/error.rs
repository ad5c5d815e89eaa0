//! The one error type of the statistics service; `grpc.rs` decides its gRPC code.

/// Why a statistics query or the consumer failed.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    /// Bad input; names the field.
    #[error("{field} {message}")]
    Invalid {
        /// The request field, e.g. `filter.to_date`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// The caller may not read what it asked for.
    #[error("{0}")]
    PermissionDenied(String),
    /// Storage failed.
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    /// Anything else (an event that does not decode, the bus).
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl StatsError {
    /// A validation error for `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        StatsError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
}
