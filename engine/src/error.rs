//! Errors the server maps to responses: a bad request parameter (HTTP 400), a cancelled
//! generation, or anything else (an internal failure: missing file, mis-shaped tensor, ...).
//!
//! Engine functions return `anyhow::Result`; the typed cases below travel inside the
//! `anyhow::Error` and are recovered with [`ErrorKind::of`].

/// A typed engine error.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A request parameter is out of range or unknown. `param` is the field name of
    /// [`super::GenerateParams`] (`scheduler`, `width`, `strength`, ...); `message` says what
    /// is accepted.
    #[error("invalid `{param}`: {message}")]
    InvalidParam {
        param: &'static str,
        message: String,
    },
    /// `on_step` returned false.
    #[error("generation cancelled")]
    Cancelled,
}

impl EngineError {
    pub fn invalid(param: &'static str, message: impl Into<String>) -> anyhow::Error {
        anyhow::Error::new(EngineError::InvalidParam {
            param,
            message: message.into(),
        })
    }
}

/// How an engine error should be reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request was wrong (HTTP 400).
    InvalidParam,
    /// The caller cancelled the generation.
    Cancelled,
    /// Anything else (HTTP 500).
    Internal,
}

impl ErrorKind {
    pub fn of(err: &anyhow::Error) -> ErrorKind {
        match err.downcast_ref::<EngineError>() {
            Some(EngineError::InvalidParam { .. }) => ErrorKind::InvalidParam,
            Some(EngineError::Cancelled) => ErrorKind::Cancelled,
            None => ErrorKind::Internal,
        }
    }
}
