//! The checkpoint format (docs/checkpoints.md): a directory with `model.safetensors` (every
//! variable of the network, batch-norm running statistics included) and `manifest.json`
//! (what the network is, how it was trained, the sha256 of the weights file, versions).
//!
//! Writes are atomic per file (temporary file, fsync, rename) and the manifest is written
//! last: a crash mid-save leaves either the previous checkpoint or one whose checksum does not
//! match, which loading reports instead of trusting. PyTorch `state_dict` files of the reference
//! implementations import through [`import_pytorch`]; any PyTorch classifier, as a state dict
//! of a known architecture or as a TorchScript module, becomes a checkpoint directory through
//! [`import::import_model`], and [`load_model`] loads either kind of checkpoint.

pub mod import;
mod torch_file;
mod torchscript;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::{Device, Kind, Tensor};

use crate::models::{self, ModelError, ModelSpec, Network};

pub use torch_file::{Limit, LimitExceeded, TorchFileLimits};
pub use torchscript::{load_model, read_torchscript, torchscript_from_bytes, TORCHSCRIPT_FILE};

pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const MANIFEST_FILE: &str = "manifest.json";
/// The newest manifest format this build reads; bumped when the manifest changes
/// incompatibly. 1: checkpoints with `model.safetensors` (what [`save`] writes; an optional
/// `source` records imported weights, which older readers ignore). 2: TorchScript checkpoints
/// (architecture `torchscript`, weights in `model.pt`), which older builds cannot serve.
pub const FORMAT_VERSION: u32 = 2;
/// The version [`save`] writes.
const SAFETENSORS_FORMAT_VERSION: u32 = 1;

/// Why a checkpoint could not be written, read or imported.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint directory {0} does not exist")]
    NotFound(PathBuf),
    #[error("{path} is missing: a checkpoint needs {what}")]
    MissingFile { path: PathBuf, what: &'static str },
    #[error("{path}: invalid manifest: {message}")]
    BadManifest { path: PathBuf, message: String },
    #[error("{path}: manifest format version {found} is newer than this build understands ({supported})")]
    UnsupportedVersion { path: PathBuf, found: u32, supported: u32 },
    #[error("{path}: checkpoint is a {found} but {expected} was expected")]
    ArchitectureMismatch { path: PathBuf, expected: String, found: String },
    #[error("{path}: checkpoint has {found} classes but {expected} were expected")]
    ClassCountMismatch { path: PathBuf, expected: i64, found: i64 },
    #[error("{path}: sha256 of the weights is {found} but the manifest records {expected}; the file is corrupt or was changed")]
    ChecksumMismatch { path: PathBuf, expected: String, found: String },
    #[error("{path}: weights do not fit the {architecture}: {}", describe_mismatch(.missing, .unexpected, .wrong_shape))]
    ShapeMismatch {
        path: PathBuf,
        architecture: String,
        missing: Vec<String>,
        unexpected: Vec<String>,
        /// (name, expected shape, found shape)
        wrong_shape: Vec<(String, Vec<i64>, Vec<i64>)>,
    },
    #[error("{path}: non-finite values (NaN or infinity) in {}", .names.join(", "))]
    NonFinite { path: PathBuf, names: Vec<String> },
    #[error("{path}: cannot read weights: {message}")]
    BadWeights { path: PathBuf, message: String },
    #[error("{path}: refused: the pickle asks for the Python global `{global}`, and only tensors in plain containers (dicts, lists, tuples, numbers, strings) are read; nothing from the file is executed. {}", unsafe_pickle_hint(.global))]
    UnsafePickle { path: PathBuf, global: String },
    #[error("{path}: refused: {limit}; the file is damaged or crafted (limits: rfb_core::checkpoint::TorchFileLimits)")]
    OverLimit { path: PathBuf, limit: LimitExceeded },
    #[error("{path} is neither a PyTorch state dict nor a TorchScript module: {reason}")]
    NotAModelFile { path: PathBuf, reason: String },
    #[error("{path}: {problem}")]
    TorchScript { path: PathBuf, problem: crate::models::TorchScriptError },
    #[error("{path} holds a TorchScript module, which only the evaluator serves (checkpoint::load_model); it cannot be trained on or used as a teacher")]
    TorchScriptNotNative { path: PathBuf },
    #[error("{0}")]
    InvalidImport(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

fn unsafe_pickle_hint(global: &str) -> &'static str {
    let name = global.rsplit('.').next().unwrap_or("");
    if global.starts_with("torch.nn.") || global.starts_with("__main__.") || name.starts_with(|c: char| c.is_ascii_uppercase()) {
        "It looks like a whole model (or another Python object) saved with torch.save: save model.state_dict() instead, or export the model with torch.jit.script/trace and .save()."
    } else {
        "Save model.state_dict() (optionally in a dict of plain values), or export the model with torch.jit.script/trace and .save()."
    }
}

fn describe_mismatch(missing: &[String], unexpected: &[String], wrong_shape: &[(String, Vec<i64>, Vec<i64>)]) -> String {
    const SHOWN: usize = 8;
    let list = |names: &[String]| {
        let mut text = names.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
        if names.len() > SHOWN {
            text.push_str(&format!(" and {} more", names.len() - SHOWN));
        }
        text
    };
    let mut parts = Vec::new();
    if !wrong_shape.is_empty() {
        let shapes: Vec<String> = wrong_shape.iter().map(|(n, e, f)| format!("{n} (expected {e:?}, found {f:?})")).collect();
        parts.push(format!("wrong shape: {}", list(&shapes)));
    }
    if !missing.is_empty() {
        parts.push(format!("missing: {}", list(missing)));
    }
    if !unexpected.is_empty() {
        parts.push(format!("unexpected: {}", list(unexpected)));
    }
    parts.join("; ")
}

/// How the checkpoint was chosen among the epochs of a run (paper A.3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Selection {
    /// e.g. `last`, or `avg+worst pgd accuracy on validation`.
    pub rule: String,
    pub value: Option<f64>,
}

/// The self-description stored beside the weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    #[serde(flatten)]
    pub model: ModelSpec,
    pub class_names: Vec<String>,
    pub dataset: String,
    pub method: String,
    #[serde(default)]
    pub hyperparameters: serde_json::Value,
    pub seed: Option<u64>,
    pub epoch: Option<i64>,
    pub selection: Option<Selection>,
    /// sha256 of `model.safetensors`, hex.
    pub weights_sha256: String,
    pub parameter_count: i64,
    pub code_version: String,
    pub libtorch_version: String,
    /// RFC 3339, UTC.
    pub created_at: String,
    /// Where imported weights came from; absent for checkpoints our trainer wrote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,
}

impl Manifest {
    /// Whether the checkpoint holds a TorchScript module (`model.pt`) rather than weights of
    /// one of our architectures (`model.safetensors`).
    pub fn is_torchscript(&self) -> bool {
        self.model.architecture == crate::models::TORCHSCRIPT_ARCHITECTURE
    }

    /// The file whose sha256 is `weights_sha256`: `model.pt` or `model.safetensors`.
    pub fn weights_file(&self) -> &'static str {
        if self.is_torchscript() {
            TORCHSCRIPT_FILE
        } else {
            WEIGHTS_FILE
        }
    }
}

/// Provenance of imported weights (`evaluator import`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Source {
    /// The imported file's name (without its directory).
    pub file: String,
    /// sha256 of the imported file, hex.
    pub sha256: String,
    /// `state_dict` or `torchscript`.
    pub format: String,
}

/// What the caller knows about a checkpoint it is about to write; the rest is filled in.
#[derive(Debug, Clone, Default)]
pub struct CheckpointInfo {
    pub class_names: Vec<String>,
    pub dataset: String,
    pub method: String,
    pub hyperparameters: serde_json::Value,
    pub seed: Option<u64>,
    pub epoch: Option<i64>,
    pub selection: Option<Selection>,
}

/// Version of this crate, recorded in every artifact.
pub fn code_version() -> String {
    format!("rfb-core {}", env!("CARGO_PKG_VERSION"))
}

/// The libtorch version we bind, from the same constant `torch-sys` checks at build time.
pub fn libtorch_version() -> String {
    "2.13.0".to_string()
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io { path: path.to_path_buf(), source }
}

/// Writes `bytes` to `path` atomically: a sibling temporary file, fsync, rename. The temporary
/// file's name is unique to this process and call, so that any number of writers (threads, or
/// processes sharing the directory, e.g. evaluator replicas sharing a result cache) can write
/// the same `path` at once: each rename is atomic, and the last one wins whole.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let write = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let temporary = dir.join(format!(".{file_name}.tmp-{}-{write}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)?;
        if let Ok(dir_handle) = std::fs::File::open(dir) {
            let _ = dir_handle.sync_all();
        }
        Ok(())
    })();
    result.map_err(|source| {
        let _ = std::fs::remove_file(&temporary);
        CheckpointError::Io { path: path.to_path_buf(), source }
    })
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn safetensors_dtype(kind: Kind) -> Option<safetensors::Dtype> {
    use safetensors::Dtype;
    Some(match kind {
        Kind::Float => Dtype::F32,
        Kind::Double => Dtype::F64,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Int64 => Dtype::I64,
        Kind::Int => Dtype::I32,
        Kind::Uint8 => Dtype::U8,
        Kind::Bool => Dtype::BOOL,
        _ => return None,
    })
}

fn kind_of(dtype: safetensors::Dtype) -> Option<Kind> {
    use safetensors::Dtype;
    Some(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::F64 => Kind::Double,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::U8 => Kind::Uint8,
        Dtype::BOOL => Kind::Bool,
        _ => return None,
    })
}

/// Serialises named tensors as safetensors bytes, sorted by name so that the bytes (and their
/// sha256) depend only on the values.
#[allow(clippy::disallowed_methods)] // checkpoint I/O: copies the weights out once per save, outside any iteration
pub fn tensors_to_safetensors(tensors: &[(String, Tensor)], metadata: Option<HashMap<String, String>>) -> Result<Vec<u8>, CheckpointError> {
    let mut sorted: Vec<&(String, Tensor)> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut views = Vec::with_capacity(sorted.len());
    for (name, tensor) in sorted {
        let cpu = tensor.detach().to_device(Device::Cpu).contiguous();
        let dtype = safetensors_dtype(cpu.kind()).ok_or_else(|| CheckpointError::BadWeights {
            path: PathBuf::from(name),
            message: format!("cannot store tensors of kind {:?}", cpu.kind()),
        })?;
        let shape: Vec<usize> = cpu.size().iter().map(|&d| d as usize).collect();
        let mut data = vec![0u8; cpu.numel() * cpu.kind().elt_size_in_bytes()];
        cpu.f_copy_data_u8(&mut data, cpu.numel())?;
        views.push((name.clone(), dtype, shape, data));
    }
    let tensors: Vec<(String, safetensors::tensor::TensorView)> = views
        .iter()
        .map(|(name, dtype, shape, data)| {
            safetensors::tensor::TensorView::new(*dtype, shape.clone(), data)
                .map(|view| (name.clone(), view))
                .map_err(|e| CheckpointError::BadWeights { path: PathBuf::from(name), message: e.to_string() })
        })
        .collect::<Result<_, _>>()?;
    safetensors::serialize(tensors, &metadata).map_err(|e| CheckpointError::BadWeights { path: PathBuf::new(), message: e.to_string() })
}

/// Parses safetensors bytes (read from `path`, named in errors) into CPU tensors.
pub fn tensors_from_safetensors(bytes: &[u8], path: &Path) -> Result<HashMap<String, Tensor>, CheckpointError> {
    let tensors = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| CheckpointError::BadWeights { path: path.to_path_buf(), message: e.to_string() })?;
    let mut named = HashMap::new();
    for (name, view) in tensors.tensors() {
        let kind = kind_of(view.dtype()).ok_or_else(|| CheckpointError::BadWeights {
            path: path.to_path_buf(),
            message: format!("tensor {name} has unsupported dtype {:?}", view.dtype()),
        })?;
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        named.insert(name, Tensor::f_from_data_size(view.data(), &shape, kind)?);
    }
    Ok(named)
}

/// Writes named tensors to a safetensors file atomically (used for optimiser state too).
pub fn save_tensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<(), CheckpointError> {
    write_atomic(path, &tensors_to_safetensors(tensors, None)?)
}

/// Reads a safetensors file written by [`save_tensors`].
pub fn load_tensors(path: &Path) -> Result<HashMap<String, Tensor>, CheckpointError> {
    if !path.is_file() {
        return Err(CheckpointError::MissingFile { path: path.to_path_buf(), what: "a safetensors file" });
    }
    let bytes = std::fs::read(path).map_err(io_error(path))?;
    tensors_from_safetensors(&bytes, path)
}

/// Saves `network` as a checkpoint directory `dir` (created if needed) and returns its manifest.
pub fn save(dir: &Path, network: &Network, info: CheckpointInfo) -> Result<Manifest, CheckpointError> {
    save_with_source(dir, network, info, None)
}

/// [`save`], recording where imported weights came from.
pub(crate) fn save_with_source(
    dir: &Path,
    network: &Network,
    info: CheckpointInfo,
    source: Option<Source>,
) -> Result<Manifest, CheckpointError> {
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    // One metadata key only: the safetensors crate writes its metadata map in hash order, so two
    // keys would make the bytes (and the checksum) of identical weights differ between saves.
    let model = serde_json::json!({
        "architecture": network.spec.architecture,
        "num_classes": network.spec.num_classes,
    });
    let metadata = HashMap::from([("rfb_model".to_string(), model.to_string())]);
    let variables: Vec<(String, Tensor)> = network.var_store.variables().into_iter().collect();
    let bytes = tensors_to_safetensors(&variables, Some(metadata))?;
    let manifest = Manifest {
        format_version: SAFETENSORS_FORMAT_VERSION,
        model: network.spec.clone(),
        class_names: info.class_names,
        dataset: info.dataset,
        method: info.method,
        hyperparameters: info.hyperparameters,
        seed: info.seed,
        epoch: info.epoch,
        selection: info.selection,
        weights_sha256: sha256_hex(&bytes),
        parameter_count: network.parameter_count(),
        code_version: code_version(),
        libtorch_version: libtorch_version(),
        created_at: now_rfc3339(),
        source,
    };
    write_atomic(&dir.join(WEIGHTS_FILE), &bytes)?;
    write_manifest(dir, &manifest)?;
    Ok(manifest)
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// Writes `manifest.json` atomically (after the weights).
fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<(), CheckpointError> {
    let json = serde_json::to_vec_pretty(manifest)
        .map_err(|e| CheckpointError::BadManifest { path: dir.join(MANIFEST_FILE), message: e.to_string() })?;
    write_atomic(&dir.join(MANIFEST_FILE), &json)
}

/// Reads and validates `manifest.json` without touching the weights (cheap: for listings).
pub fn read_manifest(dir: &Path) -> Result<Manifest, CheckpointError> {
    if !dir.is_dir() {
        return Err(CheckpointError::NotFound(dir.to_path_buf()));
    }
    let path = dir.join(MANIFEST_FILE);
    if !path.is_file() {
        return Err(CheckpointError::MissingFile { path, what: "manifest.json describing the model" });
    }
    let text = std::fs::read(&path).map_err(io_error(&path))?;
    let manifest: Manifest =
        serde_json::from_slice(&text).map_err(|e| CheckpointError::BadManifest { path: path.clone(), message: e.to_string() })?;
    if manifest.format_version > FORMAT_VERSION {
        return Err(CheckpointError::UnsupportedVersion { path, found: manifest.format_version, supported: FORMAT_VERSION });
    }
    if manifest.class_names.len() as i64 != manifest.model.num_classes {
        return Err(CheckpointError::BadManifest {
            path,
            message: format!("{} class names for {} classes", manifest.class_names.len(), manifest.model.num_classes),
        });
    }
    Ok(manifest)
}

/// What the caller requires of a checkpoint; `None` fields accept anything.
#[derive(Debug, Clone, Default)]
pub struct Expectation {
    pub architecture: Option<String>,
    pub num_classes: Option<i64>,
}

/// Loads a checkpoint directory onto `device`, checking the expectation, the checksum, every
/// name and shape, and that all weights are finite.
pub fn load(dir: &Path, device: Device, expect: &Expectation) -> Result<(Network, Manifest), CheckpointError> {
    let manifest = read_manifest(dir)?;
    let manifest_path = dir.join(MANIFEST_FILE);
    if manifest.is_torchscript() {
        return Err(CheckpointError::TorchScriptNotNative { path: dir.to_path_buf() });
    }
    if let Some(expected) = &expect.architecture {
        let wanted: models::Architecture = expected.parse()?;
        let found: models::Architecture = manifest.model.architecture.parse()?;
        if wanted != found {
            return Err(CheckpointError::ArchitectureMismatch {
                path: manifest_path,
                expected: expected.clone(),
                found: manifest.model.architecture.clone(),
            });
        }
    }
    if let Some(expected) = expect.num_classes {
        if expected != manifest.model.num_classes {
            return Err(CheckpointError::ClassCountMismatch { path: manifest_path, expected, found: manifest.model.num_classes });
        }
    }
    let weights_path = dir.join(WEIGHTS_FILE);
    if !weights_path.is_file() {
        return Err(CheckpointError::MissingFile { path: weights_path, what: "model.safetensors with the weights" });
    }
    let bytes = std::fs::read(&weights_path).map_err(io_error(&weights_path))?;
    let found = sha256_hex(&bytes);
    if found != manifest.weights_sha256 {
        return Err(CheckpointError::ChecksumMismatch { path: weights_path, expected: manifest.weights_sha256.clone(), found });
    }
    let named = tensors_from_safetensors(&bytes, &weights_path)?;
    let mut network = models::build(&manifest.model, device)?;
    assign_weights(&mut network, named, &weights_path, &[])?;
    Ok((network, manifest))
}

/// Copies `named` tensors into the network's variables after checking that the names and
/// shapes match exactly (names in `ignored_suffixes` may be present in the file without a
/// variable) and that every value is finite. Used by both the native and the PyTorch loader.
fn assign_weights(
    network: &mut Network,
    mut named: HashMap<String, Tensor>,
    path: &Path,
    ignored_suffixes: &[&str],
) -> Result<(), CheckpointError> {
    let variables = network.var_store.variables();
    let mut missing = Vec::new();
    let mut wrong_shape = Vec::new();
    for (name, variable) in &variables {
        match named.get(name) {
            None => missing.push(name.clone()),
            Some(tensor) if tensor.size() != variable.size() => wrong_shape.push((name.clone(), variable.size(), tensor.size())),
            Some(_) => {}
        }
    }
    named.retain(|name, _| variables.contains_key(name) || !ignored_suffixes.iter().any(|s| name.ends_with(s)));
    let mut unexpected: Vec<String> = named.keys().filter(|n| !variables.contains_key(*n)).cloned().collect();
    missing.sort();
    unexpected.sort();
    wrong_shape.sort();
    if !missing.is_empty() || !unexpected.is_empty() || !wrong_shape.is_empty() {
        return Err(CheckpointError::ShapeMismatch {
            path: path.to_path_buf(),
            architecture: network.spec.architecture.clone(),
            missing,
            unexpected,
            wrong_shape,
        });
    }
    let mut non_finite: Vec<String> = named
        .iter()
        .filter(|(_, t)| t.is_floating_point() && !bool::try_from(t.isfinite().all()).unwrap_or(false))
        .map(|(n, _)| n.clone())
        .collect();
    if !non_finite.is_empty() {
        non_finite.sort();
        return Err(CheckpointError::NonFinite { path: path.to_path_buf(), names: non_finite });
    }
    tch::no_grad(|| -> Result<(), CheckpointError> {
        for (name, mut variable) in variables {
            let source = &named[&name];
            variable.f_copy_(&source.to_kind(variable.kind()).to_device(variable.device()))?;
        }
        Ok(())
    })
}

/// Imports a PyTorch `state_dict` saved with `torch.save` (plain, wrapped as `{'model': ...}`,
/// `{'state_dict': ...}` or `{'model_state_dict': ...}`, names optionally prefixed `module.`
/// by DataParallel) into a fresh network built from `spec`.
pub fn import_pytorch(path: &Path, spec: &ModelSpec, device: Device) -> Result<Network, CheckpointError> {
    if !path.is_file() {
        return Err(CheckpointError::MissingFile { path: path.to_path_buf(), what: "a PyTorch state_dict (.pt/.pth)" });
    }
    let tensors = read_pytorch_tensors(path)?;
    network_from_pytorch_tensors(tensors, spec, device, path)
}

/// The second half of [`import_pytorch`]: the tensors read from `path` into a network.
pub(crate) fn network_from_pytorch_tensors(
    tensors: Vec<(String, Tensor)>,
    spec: &ModelSpec,
    device: Device,
    path: &Path,
) -> Result<Network, CheckpointError> {
    let named = state_dict_entries(tensors);
    let mut network = models::build(spec, device)?;
    assign_weights(&mut network, named, path, &["num_batches_tracked"])?;
    Ok(network)
}

/// Reads every tensor of a `torch.save` file (the zip format or the legacy one), named by its
/// dotted path in nested dicts, within [`TorchFileLimits::DEFAULT`].
pub fn read_pytorch_tensors(path: &Path) -> Result<Vec<(String, Tensor)>, CheckpointError> {
    read_pytorch_tensors_with_limits(path, &TorchFileLimits::DEFAULT)
}

/// [`read_pytorch_tensors`] within other limits (tests use smaller ones).
pub fn read_pytorch_tensors_with_limits(path: &Path, limits: &TorchFileLimits) -> Result<Vec<(String, Tensor)>, CheckpointError> {
    let path = path.to_path_buf();
    torch_file::read_tensors(&path, limits).map_err(|error| match error {
        torch_file::ReadError::Refused(global) => CheckpointError::UnsafePickle { path, global },
        torch_file::ReadError::OverLimit(limit) => CheckpointError::OverLimit { path, limit },
        torch_file::ReadError::Malformed(message) => CheckpointError::BadWeights { path, message },
    })
}

/// Picks the state dict out of the tensors found in a pickled object and normalises names.
fn state_dict_entries(tensors: Vec<(String, Tensor)>) -> HashMap<String, Tensor> {
    const WRAPPERS: [&str; 4] = ["state_dict.", "model_state_dict.", "model.", "net."];
    let wrapper = WRAPPERS.iter().find(|w| !tensors.is_empty() && tensors.iter().all(|(n, _)| n.starts_with(*w)));
    let wrapper = wrapper.or_else(|| {
        // A wrapper dict may also carry optimiser state next to the weights.
        WRAPPERS.iter().find(|w| tensors.iter().any(|(n, _)| n.starts_with(*w)))
    });
    tensors
        .into_iter()
        .filter_map(|(name, tensor)| {
            let name = match wrapper {
                Some(w) => name.strip_prefix(*w)?.to_string(),
                None => name,
            };
            let name = name.strip_prefix("module.").map(str::to_string).unwrap_or(name);
            Some((name, tensor))
        })
        .collect()
}
