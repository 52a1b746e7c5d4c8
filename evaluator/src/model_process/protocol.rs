//! What the server and a worker process say to each other: one [`Task`] as a JSON line on the
//! worker's stdin (an import check's module bytes follow it, raw), and [`Message`]s as JSON
//! lines on a pipe the worker keeps for itself (its stdout before it points stdout at stderr,
//! so that whatever the model prints cannot pass for a message).

use rfb_core::checkpoint::import::TorchScriptChecked;
use rfb_core::models::{ModelSpec, TorchScriptError};
use serde::{Deserialize, Serialize};

use crate::cache::StoredResult;
use crate::request::EngineError;
use crate::sandbox::{Confinement, Enforced};

/// Longest message line the server reads from a worker (a result of Tiny-ImageNet's 200
/// classes with AutoAttack's components is well under 1 MiB).
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// What the worker does.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "task", rename_all = "snake_case")]
pub enum Task {
    /// Confine, check that a file cannot be read nor a socket opened, report.
    Probe { confinement: Confinement },
    /// Prepare `request` as the server did (with its own catalog, without cache), check that
    /// it finds the same model, data and cache keys, read them, confine, compute every attack.
    Evaluate { setup: WorkerSetup, request: String, expected: Expected, confinement: Confinement },
    /// Load the module of the `bytes` bytes that follow and run the import checks.
    CheckTorchScript { spec: ModelSpec, bytes: u64, confinement: Confinement },
}

/// The engine configuration a worker rebuilds its catalog from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerSetup {
    pub models_dir: std::path::PathBuf,
    pub data_dir: Option<std::path::PathBuf>,
    /// `cpu` or `cuda:N`.
    pub device: String,
    pub default_batch_size: i64,
}

/// What the server's preparation found, which the worker's must find too.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Expected {
    pub model_sha256: String,
    pub data_sha256: String,
    /// The cache key of each attack of the request, in order.
    pub cache_keys: Vec<String>,
}

/// What a worker reports.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Message {
    /// Confined: what is in force.
    Confined {
        enforced: Enforced,
    },
    /// The probe's checks: whether listing a directory and binding a TCP socket were refused,
    /// and whether what only seccomp refuses was (a UDP socket, on CPU an AF_UNIX one,
    /// `pidfd_open`, an x32 system call).
    Probed {
        file_refused: bool,
        network_refused: bool,
        seccomp_refused: bool,
    },
    Progress {
        attack_index: i64,
        attack: String,
        component: String,
        component_index: i64,
        components: i64,
        done: i64,
        total: i64,
    },
    /// A sign of life between attack iterations (the server's health sees a stuck job by it).
    Alive,
    /// Attack `index` of the request, computed.
    Result {
        index: usize,
        stored: StoredResult,
    },
    /// The import checks passed.
    Checked {
        checked: TorchScriptChecked,
    },
    /// The import checks failed (the module's fault).
    Refused {
        problem: TorchScriptError,
    },
    /// Anything else that went wrong.
    Error {
        error: ErrorKind,
        message: String,
    },
    /// The task is finished.
    Done,
}

/// An [`EngineError`]'s variant, to send it across.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    NotFound,
    InvalidArgument,
    FailedPrecondition,
    ResourceExhausted,
    Cancelled,
    DeadlineExceeded,
    Unavailable,
    Internal,
}

impl Message {
    pub fn error(error: &EngineError) -> Self {
        let kind = match error {
            EngineError::NotFound(_) => ErrorKind::NotFound,
            EngineError::InvalidArgument(_) => ErrorKind::InvalidArgument,
            EngineError::FailedPrecondition(_) => ErrorKind::FailedPrecondition,
            EngineError::ResourceExhausted(_) => ErrorKind::ResourceExhausted,
            EngineError::Cancelled => ErrorKind::Cancelled,
            EngineError::DeadlineExceeded => ErrorKind::DeadlineExceeded,
            EngineError::Unavailable(_) => ErrorKind::Unavailable,
            EngineError::Internal(_) => ErrorKind::Internal,
        };
        Message::Error { error: kind, message: error.to_string() }
    }
}

impl ErrorKind {
    /// The error again, on the server's side.
    pub fn error(self, message: String) -> EngineError {
        match self {
            ErrorKind::NotFound => EngineError::NotFound(message),
            ErrorKind::InvalidArgument => EngineError::InvalidArgument(message),
            ErrorKind::FailedPrecondition => EngineError::FailedPrecondition(message),
            ErrorKind::ResourceExhausted => EngineError::ResourceExhausted(message),
            ErrorKind::Cancelled => EngineError::Cancelled,
            ErrorKind::DeadlineExceeded => EngineError::DeadlineExceeded,
            ErrorKind::Unavailable => EngineError::Unavailable(message),
            ErrorKind::Internal => EngineError::Internal(message),
        }
    }
}

/// The request as protobuf bytes in hex (prost types have no serde).
pub fn encode_request(request: &rfb_proto::v1::EvaluateRequest) -> String {
    use prost::Message as _;
    request.encode_to_vec().iter().map(|b| format!("{b:02x}")).collect()
}

pub fn decode_request(hex: &str) -> Result<rfb_proto::v1::EvaluateRequest, String> {
    use prost::Message as _;
    if !hex.len().is_multiple_of(2) {
        return Err("odd number of hex digits".into());
    }
    let bytes: Result<Vec<u8>, _> = (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16)).collect();
    let bytes = bytes.map_err(|e| e.to_string())?;
    rfb_proto::v1::EvaluateRequest::decode(bytes.as_slice()).map_err(|e| e.to_string())
}
