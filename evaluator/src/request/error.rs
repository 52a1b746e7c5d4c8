//! The errors of a request, one variant per gRPC status code, and their mapping from the
//! errors of checkpoints, data sets, attacks and libtorch.

use rfb_core::attacks::AttackError;
use rfb_core::checkpoint::CheckpointError;
use rfb_core::data::DataError;

/// Why an evaluation could not be done. Each variant is one gRPC status code; the message names
/// the problem.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Unknown model or data set, or data files that are not there (NOT_FOUND).
    #[error("{0}")]
    NotFound(String),
    /// Bad request parameters (INVALID_ARGUMENT).
    #[error("{0}")]
    InvalidArgument(String),
    /// A corrupt or mismatched checkpoint or data set (FAILED_PRECONDITION).
    #[error("{0}")]
    FailedPrecondition(String),
    /// Out of memory on the device or host, a job above the cost limit, a full queue
    /// (RESOURCE_EXHAUSTED).
    #[error("{0}")]
    ResourceExhausted(String),
    /// The client went away (CANCELLED).
    #[error("the evaluation was cancelled by the client")]
    Cancelled,
    /// The request's deadline passed (DEADLINE_EXCEEDED).
    #[error("the request's deadline passed before the evaluation finished")]
    DeadlineExceeded,
    /// The server is shutting down, or its worker is gone (UNAVAILABLE).
    #[error("{0}")]
    Unavailable(String),
    /// Anything else (INTERNAL), e.g. an attack that broke its own invariants.
    #[error("{0}")]
    Internal(String),
}

/// Whether a libtorch error message reports an allocation failure.
pub fn is_out_of_memory(message: &str) -> bool {
    let lower = message.to_ascii_lowercase();
    lower.contains("out of memory")
        || lower.contains("failed to allocate")
        || lower.contains("cudaerrormemoryallocation")
        || lower.contains("std::bad_alloc")
        || lower.contains("defaultcpuallocator: can't allocate memory")
}

impl EngineError {
    /// A libtorch error or panic message: RESOURCE_EXHAUSTED when it is an allocation
    /// failure, INTERNAL otherwise.
    pub fn from_torch_message(context: &str, message: &str) -> Self {
        let first_line = message.lines().next().unwrap_or(message).trim();
        if is_out_of_memory(message) {
            EngineError::ResourceExhausted(format!(
                "{context}: out of memory ({first_line}); try a smaller batch_size"
            ))
        } else {
            EngineError::Internal(format!("{context}: {first_line}"))
        }
    }

    /// A panic caught on the worker thread.
    pub fn from_panic(payload: &(dyn std::any::Any + Send)) -> Self {
        Self::from_torch_message("the evaluation failed", &rfb_core::guard::panic_message(payload))
    }

    pub fn from_checkpoint(model: &str, error: CheckpointError) -> Self {
        match error {
            CheckpointError::NotFound(_) => EngineError::NotFound(format!("unknown model {model:?}")),
            CheckpointError::Torch(e) => Self::from_torch_message(&format!("loading model {model:?}"), &e.to_string()),
            other => EngineError::FailedPrecondition(format!("checkpoint {model:?} cannot be used: {other}")),
        }
    }

    pub fn from_data(dataset: &str, error: DataError) -> Self {
        match error {
            DataError::UnknownDataset(_) => EngineError::NotFound(error.to_string()),
            DataError::MissingFile { .. } | DataError::NoDataDir { .. } => {
                EngineError::NotFound(format!("data set {dataset} is not available: {error}"))
            }
            DataError::TooFewExamples { .. } | DataError::InvalidArgument(_) | DataError::UnknownSplit(_) => {
                EngineError::InvalidArgument(format!("data set {dataset}: {error}"))
            }
            DataError::Torch(e) => Self::from_torch_message(&format!("loading data set {dataset}"), &e.to_string()),
            other => EngineError::FailedPrecondition(format!("data set {dataset} cannot be read: {other}")),
        }
    }

    pub fn from_attack(attack: &str, error: AttackError) -> Self {
        match error {
            AttackError::InvalidParameter(message) => {
                EngineError::InvalidArgument(format!("{attack}: invalid parameter: {message}"))
            }
            AttackError::Cancelled => EngineError::Cancelled,
            AttackError::Torch(e) => Self::from_torch_message(attack, &e.to_string()),
            other => EngineError::Internal(format!("{attack}: {other}")),
        }
    }

    /// An error of an attack run on a model at a precision: the message names all three (and
    /// the component of AutoAttack that failed), e.g. `AutoAttack (APGD-T) on model "mine" at
    /// precision fp32-fast: libtorch failed: ...`.
    pub fn from_attack_run(attack: &str, model: &str, precision: &str, error: AttackError) -> Self {
        match error {
            AttackError::Libtorch { component, message } => {
                let what = if component == attack { attack.to_string() } else { format!("{attack} ({component})") };
                Self::from_torch_message(&format!("{what} on model {model:?} at precision {precision}: libtorch failed"), &message)
            }
            AttackError::Torch(e) => Self::from_torch_message(
                &format!("{attack} on model {model:?} at precision {precision}: libtorch failed"),
                &rfb_core::guard::torch_message(&e.to_string()),
            ),
            AttackError::InvalidParameter(message) => {
                EngineError::InvalidArgument(format!("{attack} on model {model:?}: invalid parameter: {message}"))
            }
            AttackError::Cancelled => EngineError::Cancelled,
            other => EngineError::Internal(format!("{attack} on model {model:?} at precision {precision}: {other}")),
        }
    }

    /// The gRPC status code of this error.
    pub fn code(&self) -> tonic::Code {
        match self {
            EngineError::NotFound(_) => tonic::Code::NotFound,
            EngineError::InvalidArgument(_) => tonic::Code::InvalidArgument,
            EngineError::FailedPrecondition(_) => tonic::Code::FailedPrecondition,
            EngineError::ResourceExhausted(_) => tonic::Code::ResourceExhausted,
            EngineError::Cancelled => tonic::Code::Cancelled,
            EngineError::DeadlineExceeded => tonic::Code::DeadlineExceeded,
            EngineError::Unavailable(_) => tonic::Code::Unavailable,
            EngineError::Internal(_) => tonic::Code::Internal,
        }
    }
}

impl From<EngineError> for tonic::Status {
    fn from(error: EngineError) -> Self {
        tonic::Status::new(error.code(), error.to_string())
    }
}
