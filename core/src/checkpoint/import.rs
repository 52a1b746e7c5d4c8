//! Bring your own model: a PyTorch classifier becomes a checkpoint directory the evaluator
//! serves like the ones our trainer writes (`evaluator import`).
//!
//! Two kinds of file are accepted, told apart by their contents:
//! - a `torch.save`d **state dict** of one of our architectures (every wrapping
//!   [`super::import_pytorch`] accepts), in the zip format of PyTorch >= 1.6 or the legacy
//!   format before it. It is read by our own pickle reader, which executes nothing, refuses
//!   any pickle that asks for more than tensors in plain containers and bounds everything a
//!   file asks for ([`super::TorchFileLimits`]); its
//!   names and shapes are checked against the architecture, and the checkpoint gets
//!   `model.safetensors` as the trainer writes it;
//! - a **TorchScript** module (`torch.jit.script`/`torch.jit.trace`, then `.save`), loaded by
//!   libtorch's TorchScript loader and checked as [`TorchScriptModel::from_bytes`] describes.
//!   The checkpoint holds the file unchanged as `model.pt`, and its sha256 is the manifest's
//!   `weights_sha256`, on which the evaluator's result cache keys.
//!
//! Either way the manifest records the source (file name, sha256, format), the method as the
//! user names it (default `imported`), the data set, classes and input shape, and an optional
//! per-channel normalisation that the evaluator applies in front of the model, so that attack
//! radii stay in pixel units.

use std::path::{Path, PathBuf};

use tch::Device;

use super::{
    code_version, libtorch_version, now_rfc3339, save_with_source, sha256_hex, write_atomic, write_manifest, CheckpointError,
    CheckpointInfo, Manifest, Source, MANIFEST_FILE, TORCHSCRIPT_FILE, WEIGHTS_FILE,
};
use crate::data::{self, DatasetKind, Split};
use crate::models::{ModelError, ModelSpec, Normalisation, TorchScriptModel, TORCHSCRIPT_ARCHITECTURE};

/// The format version of TorchScript manifests (see [`super::FORMAT_VERSION`]).
const TORCHSCRIPT_FORMAT_VERSION: u32 = 2;

/// What a model file is, judged from its contents (never from its name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelFileKind {
    /// A `torch.save` file: a zip archive (`data.pkl` and storages), or the legacy format of
    /// PyTorch < 1.6 (`_use_new_zipfile_serialization=False`).
    StateDict,
    /// A `torch.jit.save` zip archive (`code/`, `constants.pkl`).
    TorchScript,
}

impl ModelFileKind {
    pub fn name(self) -> &'static str {
        match self {
            ModelFileKind::StateDict => "state_dict",
            ModelFileKind::TorchScript => "torchscript",
        }
    }
}

/// Tells a state dict (either `torch.save` format) from a TorchScript module by the file's
/// first bytes and a zip archive's entries; anything else is a
/// [`CheckpointError::NotAModelFile`] with a one-line reason.
pub fn model_file_kind(path: &Path) -> Result<ModelFileKind, CheckpointError> {
    let not_a_model = |reason: &str| CheckpointError::NotAModelFile { path: path.to_path_buf(), reason: reason.to_string() };
    if !path.is_file() {
        return Err(CheckpointError::MissingFile {
            path: path.to_path_buf(),
            what: "a PyTorch state dict (.pt/.pth) or a TorchScript module (.pt)",
        });
    }
    match super::torch_file::sniff(path) {
        Ok(super::torch_file::Format::Zip) => {}
        Ok(super::torch_file::Format::Legacy) => return Ok(ModelFileKind::StateDict),
        Ok(super::torch_file::Format::Tar) => return Err(not_a_model(super::torch_file::TAR_FORMAT)),
        Err(reason) => return Err(not_a_model(&reason.to_string())),
    }
    let file = std::fs::File::open(path).map_err(|source| CheckpointError::Io { path: path.to_path_buf(), source })?;
    let archive = zip::ZipArchive::new(file).map_err(|e| not_a_model(&format!("it is not a readable zip archive: {e}")))?;
    let names: Vec<&str> = archive.file_names().collect();
    if names.iter().any(|n| n.ends_with("constants.pkl") || n.contains("/code/")) {
        Ok(ModelFileKind::TorchScript)
    } else if names.iter().any(|n| n.ends_with("data.pkl")) {
        Ok(ModelFileKind::StateDict)
    } else {
        Err(not_a_model("it is a zip archive without data.pkl or TorchScript code"))
    }
}

/// What `evaluator import` asks for.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// The `.pt`/`.pth` file.
    pub from: PathBuf,
    /// The checkpoint directory to write.
    pub out: PathBuf,
    /// The data set the model classifies: classes, input shape, default class names.
    pub dataset: DatasetKind,
    /// Registry name for a state dict; `None` or `torchscript` for a TorchScript module.
    pub architecture: Option<String>,
    /// Recorded as the manifest's method (how the model was trained, as its owner names it).
    pub method: String,
    /// Per-channel normalisation applied in front of the model.
    pub normalisation: Option<Normalisation>,
    /// Class names; `None`: from the data set's files under `data_dir`, else the standard ones.
    pub class_names: Option<Vec<String>>,
    pub data_dir: Option<PathBuf>,
    /// Replace a checkpoint already in `out`.
    pub overwrite: bool,
}

/// The written checkpoint.
#[derive(Debug)]
pub struct Imported {
    pub kind: ModelFileKind,
    pub manifest: Manifest,
    /// TorchScript only: whether the module also runs in bf16 (`Err` says why not).
    pub bf16: Option<Result<(), String>>,
}

/// Class names used when neither the user nor the data files give them.
pub fn default_class_names(dataset: DatasetKind) -> Vec<String> {
    match dataset {
        DatasetKind::Digits => (0..10).map(|d| d.to_string()).collect(),
        DatasetKind::Cifar10 => data::CIFAR10_CLASS_NAMES.iter().map(|s| s.to_string()).collect(),
        other => (0..other.num_classes()).map(|k| format!("class_{k}")).collect(),
    }
}

fn class_names(options: &ImportOptions) -> Result<Vec<String>, CheckpointError> {
    if let Some(names) = &options.class_names {
        return Ok(names.clone());
    }
    match (&options.data_dir, options.dataset) {
        (Some(dir), kind) if kind != DatasetKind::Digits => data::load(kind, Split::Test, Some(dir))
            .map(|d| d.class_names)
            .map_err(|e| CheckpointError::InvalidImport(format!("reading the class names of {kind} under {}: {e}", dir.display()))),
        _ => Ok(default_class_names(options.dataset)),
    }
}

/// Imports `options.from` into the checkpoint directory `options.out` (see the module
/// documentation). Nothing is written unless every check passes. A TorchScript module is
/// loaded and run in this process ([`check_torchscript`]); the evaluator runs that step in a
/// sandboxed worker instead, through [`plan_import`] and [`ImportPlan::write`].
pub fn import_model(options: &ImportOptions) -> Result<Imported, CheckpointError> {
    let plan = plan_import(options)?;
    let checked = match plan.torchscript() {
        Some((bytes, spec)) => Some(check_torchscript(bytes.to_vec(), spec, &options.from)?),
        None => None,
    };
    plan.write(checked)
}

/// An import with every check made except running a TorchScript module: the file's kind, the
/// options, the destination, and for a state dict the network itself (read by our own pickle
/// reader, which runs nothing).
pub struct ImportPlan {
    kind: ModelFileKind,
    out: PathBuf,
    from: PathBuf,
    bytes: Vec<u8>,
    source: Source,
    spec: ModelSpec,
    info: CheckpointInfo,
    /// A state dict's network, checked against its architecture.
    network: Option<crate::models::Network>,
}

impl std::fmt::Debug for ImportPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImportPlan").field("kind", &self.kind).field("from", &self.from).field("out", &self.out).finish()
    }
}

/// What running a TorchScript module's checks found ([`check_torchscript`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TorchScriptChecked {
    pub parameter_count: i64,
    /// Whether the module also runs in bf16 (`Err` says why not).
    pub bf16: Result<(), String>,
}

/// Loads a TorchScript module from `bytes` on the CPU and runs the checks of
/// [`TorchScriptModel::from_bytes`] and the bf16 one. The module's code runs here: call it
/// where that is safe (the evaluator: in a sandboxed worker). `from` names the file in errors.
pub fn check_torchscript(bytes: Vec<u8>, spec: &ModelSpec, from: &Path) -> Result<TorchScriptChecked, CheckpointError> {
    let module = TorchScriptModel::from_bytes(bytes, spec, Device::Cpu).map_err(|e| match e {
        ModelError::TorchScript(problem) => CheckpointError::TorchScript { path: from.to_path_buf(), problem },
        other => CheckpointError::Model(other),
    })?;
    let bf16 = module.bf16().map(|_| ()).map_err(|e| e.to_string());
    Ok(TorchScriptChecked { parameter_count: module.parameter_count(), bf16 })
}

impl ImportPlan {
    pub fn kind(&self) -> ModelFileKind {
        self.kind
    }

    /// A TorchScript module's bytes and the spec to check it against (for
    /// [`check_torchscript`]); `None` for a state dict.
    pub fn torchscript(&self) -> Option<(&[u8], &ModelSpec)> {
        match self.kind {
            ModelFileKind::TorchScript => Some((&self.bytes, &self.spec)),
            ModelFileKind::StateDict => None,
        }
    }

    /// Writes the checkpoint (files atomically, the manifest last). A TorchScript module needs
    /// the outcome of its checks, `checked`; a state dict none.
    pub fn write(self, checked: Option<TorchScriptChecked>) -> Result<Imported, CheckpointError> {
        let ImportPlan { kind, out, from, bytes, source, spec, info, network } = self;
        match (kind, network, checked) {
            (ModelFileKind::StateDict, Some(network), _) => {
                std::fs::create_dir_all(&out).map_err(|source| CheckpointError::Io { path: out.clone(), source })?;
                // A TorchScript file of an earlier import would otherwise be left beside the weights.
                let _ = std::fs::remove_file(out.join(TORCHSCRIPT_FILE));
                let manifest = save_with_source(&out, &network, info, Some(source))?;
                Ok(Imported { kind, manifest, bf16: None })
            }
            (ModelFileKind::TorchScript, _, Some(checked)) => {
                let manifest = Manifest {
                    format_version: TORCHSCRIPT_FORMAT_VERSION,
                    model: spec,
                    class_names: info.class_names,
                    dataset: info.dataset,
                    method: info.method,
                    hyperparameters: info.hyperparameters,
                    seed: None,
                    epoch: None,
                    selection: None,
                    weights_sha256: source.sha256.clone(),
                    parameter_count: checked.parameter_count,
                    code_version: code_version(),
                    libtorch_version: libtorch_version(),
                    created_at: now_rfc3339(),
                    source: Some(source),
                };
                std::fs::create_dir_all(&out).map_err(|source| CheckpointError::Io { path: out.clone(), source })?;
                let _ = std::fs::remove_file(out.join(WEIGHTS_FILE));
                write_atomic(&out.join(TORCHSCRIPT_FILE), &bytes)?;
                write_manifest(&out, &manifest)?;
                Ok(Imported { kind, manifest, bf16: Some(checked.bf16) })
            }
            _ => Err(CheckpointError::InvalidImport(format!("internal error: {} was not checked before writing", from.display()))),
        }
    }
}

/// Every check of an import that runs no model code (see [`ImportPlan`]).
pub fn plan_import(options: &ImportOptions) -> Result<ImportPlan, CheckpointError> {
    let kind = model_file_kind(&options.from)?;
    let architecture = options.architecture.as_deref().map(str::trim).filter(|a| !a.is_empty());
    let wants_torchscript = architecture.is_some_and(|a| a.eq_ignore_ascii_case(TORCHSCRIPT_ARCHITECTURE));
    // A state dict is read (safely) first, so that a pickle that is not a state dict is
    // reported as such before anything else.
    let tensors = match kind {
        ModelFileKind::StateDict => Some(super::read_pytorch_tensors(&options.from)?),
        ModelFileKind::TorchScript => None,
    };
    match (kind, architecture) {
        (ModelFileKind::StateDict, None) => {
            return Err(CheckpointError::InvalidImport(format!(
                "{} is a state dict: name its architecture with --arch ({}), or export the model with TorchScript",
                options.from.display(),
                crate::models::ARCHITECTURE_NAMES.join(", ")
            )))
        }
        (ModelFileKind::StateDict, Some(_)) if wants_torchscript => {
            return Err(CheckpointError::InvalidImport(format!(
                "{} is a state dict, not a TorchScript module: name its architecture with --arch, or export the model with torch.jit.script/trace and .save()",
                options.from.display()
            )))
        }
        (ModelFileKind::TorchScript, Some(other)) if !wants_torchscript => {
            return Err(CheckpointError::InvalidImport(format!(
                "{} is a TorchScript module, which carries its own architecture: leave out --arch {other} (or give --arch torchscript)",
                options.from.display()
            )))
        }
        _ => {}
    }
    let class_names = class_names(options)?;
    let num_classes = class_names.len() as i64;
    if options.class_names.is_some() && options.dataset != DatasetKind::TinyImageNet && num_classes != options.dataset.num_classes() {
        return Err(CheckpointError::InvalidImport(format!(
            "{} class names given, but {} has {} classes",
            num_classes,
            options.dataset,
            options.dataset.num_classes()
        )));
    }
    let method = options.method.trim();
    if method.is_empty() {
        return Err(CheckpointError::InvalidImport("the method name must not be empty".into()));
    }
    let manifest_path = options.out.join(MANIFEST_FILE);
    if options.out.exists() && !options.out.is_dir() {
        return Err(CheckpointError::InvalidImport(format!("{} exists and is not a directory", options.out.display())));
    }
    if manifest_path.exists() && !options.overwrite {
        return Err(CheckpointError::InvalidImport(format!(
            "{} already holds a checkpoint; choose another --out or pass --force to replace it",
            options.out.display()
        )));
    }

    let bytes = std::fs::read(&options.from).map_err(|source| CheckpointError::Io { path: options.from.clone(), source })?;
    let source = Source {
        file: options.from.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        sha256: sha256_hex(&bytes),
        format: kind.name().to_string(),
    };
    let spec = |architecture: &str| ModelSpec {
        architecture: architecture.to_string(),
        num_classes,
        input_shape: options.dataset.input_shape(),
        normalization: options.normalisation.clone(),
    };
    let info = CheckpointInfo {
        class_names,
        dataset: options.dataset.name().to_string(),
        method: method.to_string(),
        hyperparameters: serde_json::json!({}),
        seed: None,
        epoch: None,
        selection: None,
    };
    let network = match kind {
        ModelFileKind::StateDict => {
            let architecture = architecture.unwrap_or_default();
            // Parses the name first, so that an unknown one is reported as such.
            let canonical = architecture.parse::<crate::models::Architecture>()?.to_string();
            Some(super::network_from_pytorch_tensors(tensors.unwrap_or_default(), &spec(&canonical), Device::Cpu, &options.from)?)
        }
        ModelFileKind::TorchScript => None,
    };
    let spec = match &network {
        Some(network) => network.spec.clone(),
        None => spec(TORCHSCRIPT_ARCHITECTURE),
    };
    Ok(ImportPlan { kind, out: options.out.clone(), from: options.from.clone(), bytes, source, spec, info, network })
}
