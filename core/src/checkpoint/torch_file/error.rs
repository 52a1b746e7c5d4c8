//! Why a `torch.save` file could not be read; [`super::super::CheckpointError`] adds the path.

use super::limits::LimitExceeded;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ReadError {
    /// The pickle asks for a Python global outside the allow-list (`module.name`).
    #[error("the pickle asks for the Python global `{0}`")]
    Refused(String),
    /// The file asks for more than [`super::TorchFileLimits`] allow.
    #[error("refused: {0}")]
    OverLimit(LimitExceeded),
    /// Anything else: not a torch.save file, a malformed pickle, a storage of the wrong size.
    #[error("{0}")]
    Malformed(String),
}

impl From<LimitExceeded> for ReadError {
    fn from(limit: LimitExceeded) -> Self {
        ReadError::OverLimit(limit)
    }
}

impl From<String> for ReadError {
    fn from(message: String) -> Self {
        ReadError::Malformed(message)
    }
}

impl From<&str> for ReadError {
    fn from(message: &str) -> Self {
        ReadError::Malformed(message.to_string())
    }
}

/// Shorthand for a [`ReadError::Malformed`] with a formatted message.
macro_rules! malformed {
    ($($arg:tt)*) => { $crate::checkpoint::torch_file::error::ReadError::Malformed(format!($($arg)*)) };
}
pub(super) use malformed;
