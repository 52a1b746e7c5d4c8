//! Imports a model file into a checkpoint directory: the checks and the writing of `evaluator
//! import`, shared by the command line and uploads over gRPC.
//!
//! A TorchScript module's checks load it and run it (finite logits, gradients reaching the
//! input, bf16): that is its code running, so they run in a sandboxed worker process
//! ([`crate::model_process::check_torchscript`]), and this process writes the checkpoint from
//! the worker's verdict. A state dict is read by our own pickle reader, which runs nothing, in
//! this process.

use rfb_core::checkpoint::import::{plan_import, ImportOptions, Imported};
use rfb_core::checkpoint::CheckpointError;

use crate::request::EngineError;
use crate::sandbox::{Protection, SandboxConfig};

/// Why an import failed.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The file, the options or the module's checks: the user's to fix.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The module's code could not be run: TorchScript is refused on this machine (no sandbox,
    /// not trusted), or its worker process failed (died, timed out, out of memory).
    #[error(transparent)]
    ModelCode(EngineError),
}

impl ImportError {
    /// The gRPC status of this error: a bad file or option is INVALID_ARGUMENT, a checkpoint
    /// that cannot be written INTERNAL; a worker's failure keeps its own code.
    pub fn code(&self) -> tonic::Code {
        match self {
            ImportError::Checkpoint(CheckpointError::Io { .. }) => tonic::Code::Internal,
            ImportError::Checkpoint(_) => tonic::Code::InvalidArgument,
            ImportError::ModelCode(error) => error.code(),
        }
    }
}

/// Imports `options.from` into `options.out` (see [`rfb_core::checkpoint::import`]). Nothing
/// is written unless every check passes. A TorchScript module is checked in a worker process
/// under `sandbox` (in this process when `sandbox.in_process`), and refused
/// (FAILED_PRECONDITION) where `protection` says this machine cannot sandbox it and the
/// operator does not trust it. `protection`: what [`crate::model_process::probe`] found under
/// `sandbox`; `None` probes when a TorchScript module needs it (a state dict needs no worker).
pub fn import_model(options: &ImportOptions, sandbox: &SandboxConfig, protection: Option<&Protection>) -> Result<Imported, ImportError> {
    import_model_until(options, sandbox, protection, &|| false)
}

/// [`import_model`], stopped once `cancelled` answers true: it is asked while a TorchScript
/// module's checks run in a worker (which is then killed) and between the steps; the import
/// then fails with [`EngineError::Cancelled`] (CANCELLED) and writes nothing.
pub fn import_model_until(
    options: &ImportOptions,
    sandbox: &SandboxConfig,
    protection: Option<&Protection>,
    cancelled: &dyn Fn() -> bool,
) -> Result<Imported, ImportError> {
    let stopped = || cancelled().then_some(ImportError::ModelCode(EngineError::Cancelled));
    let plan = plan_import(options)?;
    if let Some(stop) = stopped() {
        return Err(stop);
    }
    let probed;
    let protection = match (protection, plan.torchscript()) {
        (Some(protection), _) => protection,
        (None, None) => return Ok(plan.write(None)?),
        (None, Some(_)) => {
            probed = crate::model_process::probe(sandbox, tch::Device::Cpu).map_err(ImportError::ModelCode)?;
            tracing::info!("model code runs in: {probed}");
            &probed
        }
    };
    let checked = match plan.torchscript() {
        None => None,
        Some((bytes, spec)) if sandbox.in_process => {
            protection.check_torchscript().map_err(ImportError::ModelCode)?;
            Some(rfb_core::checkpoint::import::check_torchscript(bytes.to_vec(), spec, &options.from)?)
        }
        Some((bytes, spec)) => {
            let stop = || cancelled().then_some(EngineError::Cancelled);
            match crate::model_process::check_torchscript(sandbox, protection, bytes.to_vec(), spec, &stop)
                .map_err(ImportError::ModelCode)?
            {
                Ok(checked) => Some(checked),
                Err(problem) => return Err(CheckpointError::TorchScript { path: options.from.clone(), problem }.into()),
            }
        }
    };
    if let Some(stop) = stopped() {
        return Err(stop);
    }
    Ok(plan.write(checked)?)
}
