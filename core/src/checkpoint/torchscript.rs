//! Checkpoints holding a TorchScript module, and loading any checkpoint as a [`LoadedModel`].
//!
//! A TorchScript checkpoint is a directory with `model.pt` (the module exactly as PyTorch
//! saved it) and `manifest.json` (architecture `torchscript`, classes, input shape, optional
//! normalisation applied before the module, and `weights_sha256` = the sha256 of `model.pt`).

use std::path::Path;

use tch::Device;

use super::{io_error, load, read_manifest, sha256_hex, CheckpointError, Expectation, Manifest};
use crate::models::{LoadedModel, ModelError, TorchScriptModel};

/// The module file of a TorchScript checkpoint.
pub const TORCHSCRIPT_FILE: &str = "model.pt";

/// Loads a checkpoint directory of either kind onto `device`: our architectures through
/// [`load`] (every check it makes), TorchScript modules after checking the file's sha256
/// against the manifest and the module against the manifest's classes and input shape (see
/// [`TorchScriptModel::from_bytes`]). The module is loaded from the bytes that were hashed.
pub fn load_model(dir: &Path, device: Device) -> Result<(LoadedModel, Manifest), CheckpointError> {
    let manifest = read_manifest(dir)?;
    if !manifest.is_torchscript() {
        let (network, manifest) = load(dir, device, &Expectation::default())?;
        return Ok((LoadedModel::Native(network), manifest));
    }
    let bytes = read_torchscript(dir, &manifest)?;
    let module = torchscript_from_bytes(dir, bytes, &manifest, device)?;
    Ok((module, manifest))
}

/// The bytes of a TorchScript checkpoint's `model.pt`, checked against the manifest's sha256.
/// Reading is separate from loading so that a sandboxed worker can read the file first and
/// load (run) the module only once it is confined.
pub fn read_torchscript(dir: &Path, manifest: &Manifest) -> Result<Vec<u8>, CheckpointError> {
    let path = dir.join(TORCHSCRIPT_FILE);
    if !path.is_file() {
        return Err(CheckpointError::MissingFile { path, what: "model.pt with the TorchScript module" });
    }
    let bytes = std::fs::read(&path).map_err(io_error(&path))?;
    let found = sha256_hex(&bytes);
    if found != manifest.weights_sha256 {
        return Err(CheckpointError::ChecksumMismatch { path, expected: manifest.weights_sha256.clone(), found });
    }
    Ok(bytes)
}

/// Loads the TorchScript module of checkpoint `dir` from `bytes` (read by
/// [`read_torchscript`]); the module's code runs here (libtorch's loader and the checks of
/// [`TorchScriptModel::from_bytes`]). No file is opened.
pub fn torchscript_from_bytes(dir: &Path, bytes: Vec<u8>, manifest: &Manifest, device: Device) -> Result<LoadedModel, CheckpointError> {
    let module = TorchScriptModel::from_bytes(bytes, &manifest.model, device).map_err(|e| match e {
        ModelError::TorchScript(problem) => CheckpointError::TorchScript { path: dir.join(TORCHSCRIPT_FILE), problem },
        other => CheckpointError::Model(other),
    })?;
    Ok(LoadedModel::TorchScript(module))
}
