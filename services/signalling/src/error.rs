//! The one error type of the signalling service. Each variant is a case a caller must tell
//! apart; the gRPC code of each is decided in one place, the adapter's
//! `From<SignallingError> for tonic::Status`.

/// What went wrong in a signalling call (or with one message of a Signal stream).
#[derive(Debug, thiserror::Error)]
pub enum SignallingError {
    /// Bad input; the message names the field.
    #[error("{0}")]
    Invalid(String),
    /// Unknown appointment or session.
    #[error("{0}")]
    NotFound(String),
    /// The caller may not take part, or not do this.
    #[error("{0}")]
    PermissionDenied(String),
    /// The state of the session does not allow it (outside the window, out of sequence, …).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The message came on a stream that is no longer the participant's live one.
    #[error("{0}")]
    Aborted(String),
    /// The stream sent faster than its budget allows.
    #[error("{0}")]
    ResourceExhausted(String),
    /// An invariant of the stored session does not hold (`context` goes to the log only).
    #[error("{context}: {message}")]
    Internal {
        /// Where it was noticed.
        context: &'static str,
        /// What was wrong.
        message: String,
    },
    /// Database failure.
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    /// The call lacks what its access-log row needs (INVALID_ARGUMENT naming the header).
    #[error(transparent)]
    Unaccounted(#[from] econsult_runtime::audit::Unaccounted),
    /// Anything else unexpected (the outbox, presence in Redis).
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl SignallingError {
    /// A broken invariant noticed at `context`.
    pub(crate) fn internal(context: &'static str, message: impl std::fmt::Display) -> Self {
        SignallingError::Internal {
            context,
            message: message.to_string(),
        }
    }

    /// Whether the server, not the message, is at fault (storage, presence, a broken
    /// invariant): a Signal stream ends then instead of rejecting the message.
    pub(crate) fn is_server_fault(&self) -> bool {
        matches!(
            self,
            SignallingError::Internal { .. } | SignallingError::Db(_) | SignallingError::Other(_)
        )
    }
}

impl From<econsult_runtime::audit::RecordError> for SignallingError {
    fn from(e: econsult_runtime::audit::RecordError) -> Self {
        match e {
            econsult_runtime::audit::RecordError::Unaccounted(u) => Self::Unaccounted(u),
            econsult_runtime::audit::RecordError::Db(d) => Self::Db(d),
        }
    }
}
