//! The errors of a request, one variant per gRPC status code, their mapping from the errors of
//! checkpoints, data sets, attacks and libtorch, and [`PathRedactor`], which takes the server's
//! paths out of what clients are told (the server's log keeps them).

use std::path::Path;

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
            EngineError::ResourceExhausted(format!("{context}: out of memory ({first_line}); try a smaller batch_size"))
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
            AttackError::InvalidParameter(message) => EngineError::InvalidArgument(format!("{attack}: invalid parameter: {message}")),
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
            // The model answered more classes than it declares (a module whose output changed).
            wrong @ AttackError::ClassOutOfRange { .. } => {
                EngineError::FailedPrecondition(format!("{attack} on model {model:?} at precision {precision}: {wrong}"))
            }
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

/// Takes the server's paths out of messages meant for clients: the models directory becomes
/// nothing (what is left is the model's relative name), the data and cache directories become
/// `<data-dir>` and `<cache-dir>`, and any other absolute path its last component. Errors of
/// checkpoints and data files name files by their paths; clients should learn which model or
/// file is wrong, not where the server keeps it.
#[derive(Debug, Clone, Default)]
pub struct PathRedactor {
    /// (directory, what it becomes), longest directory first.
    known: Vec<(String, &'static str)>,
}

impl PathRedactor {
    /// `dirs`: each directory with its replacement (`""` for the models directory). Give a
    /// directory both as configured and canonical when they differ.
    pub fn new(dirs: &[(&Path, &'static str)]) -> Self {
        let mut known: Vec<(String, &'static str)> = dirs
            .iter()
            .map(|(dir, shown)| (dir.display().to_string().trim_end_matches('/').to_string(), *shown))
            .filter(|(dir, _)| dir.len() > 1)
            .collect();
        known.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        known.dedup_by(|a, b| a.0 == b.0);
        PathRedactor { known }
    }

    /// `message` without server paths.
    pub fn redact(&self, message: &str) -> String {
        let mut text = message.to_string();
        for (dir, shown) in &self.known {
            let within = if shown.is_empty() { String::new() } else { format!("{shown}/") };
            text = text.replace(&format!("{dir}/"), &within);
            text = text.replace(dir.as_str(), if shown.is_empty() { "<models-dir>" } else { shown });
        }
        redact_absolute_paths(&text)
    }

    /// The status a client gets for `error`: its code, and its message without server paths.
    pub fn status(&self, error: &EngineError) -> tonic::Status {
        tonic::Status::new(error.code(), self.redact(&error.to_string()))
    }
}

/// Replaces every absolute path in `text` (a `/` at the start or after a space, quote or
/// bracket, followed by a name) by its last component.
fn redact_absolute_paths(text: &str) -> String {
    let starts_token = |c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '`' | '(' | '[' | '{' | '=' | ',' | ':');
    let ends_token = |c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '`' | ')' | ']' | '}' | ',' | ':' | ';');
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut previous: Option<char> = None;
    while let Some(c) = rest.chars().next() {
        let after = &rest[c.len_utf8()..];
        let is_path = c == '/'
            && !matches!(previous, Some(p) if !starts_token(p))
            && after.chars().next().is_some_and(|n| n.is_alphanumeric() || matches!(n, '.' | '_' | '-' | '~'));
        if is_path {
            let end = rest.find(ends_token).unwrap_or(rest.len());
            let path = &rest[..end];
            let last = path.trim_end_matches('/').rsplit('/').next().unwrap_or_default();
            out.push_str(last);
            previous = path.chars().last();
            rest = &rest[end..];
        } else {
            out.push(c);
            previous = Some(c);
            rest = after;
        }
    }
    out
}

impl From<EngineError> for tonic::Status {
    fn from(error: EngineError) -> Self {
        tonic::Status::new(error.code(), error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_paths_are_taken_out_of_client_messages() {
        let redactor = PathRedactor::new(&[
            (Path::new("/srv/models"), ""),
            (Path::new("/srv/models/.rfb-cache"), "<cache-dir>"),
            (Path::new("/data/cifar/"), "<data-dir>"),
        ]);
        let cases = [
            (
                "checkpoint \"m/best\" cannot be used: /srv/models/m/best/manifest.json: invalid manifest: EOF",
                "checkpoint \"m/best\" cannot be used: m/best/manifest.json: invalid manifest: EOF",
            ),
            (
                "missing file /data/cifar/test_batch.bin: expected the test batch",
                "missing file <data-dir>/test_batch.bin: expected the test batch",
            ),
            ("cannot write /srv/models/.rfb-cache/ab.json", "cannot write <cache-dir>/ab.json"),
            ("the models directory /srv/models is empty", "the models directory <models-dir> is empty"),
            ("loading (/opt/venv/lib/torch/libtorch.so) failed", "loading (libtorch.so) failed"),
            ("\"/home/someone/secret/best\" is an absolute path", "\"best\" is an absolute path"),
            ("/tmp/x/y: no such file", "y: no such file"),
            // Not paths: fractions, shapes, names.
            ("eps 8/255, step eps/4, [N, C, H, W], a/b/c", "eps 8/255, step eps/4, [N, C, H, W], a/b/c"),
        ];
        for (message, expected) in cases {
            assert_eq!(redactor.redact(message), expected, "{message}");
        }
        let status = redactor.status(&EngineError::NotFound("data set cifar10 is not available: missing file /data/cifar/x".into()));
        assert_eq!(status.code(), tonic::Code::NotFound);
        assert!(!status.message().contains("/data"), "{}", status.message());
    }
}
