//! Imports a model file into a checkpoint directory: the checks and the writing of `evaluator
//! import`, shared by the command line and uploads over gRPC.

use rfb_core::checkpoint::import::{ImportOptions, Imported};
use rfb_core::checkpoint::CheckpointError;

/// Imports `options.from` into `options.out` (see [`rfb_core::checkpoint::import`]). Nothing
/// is written unless every check passes.
pub fn import_model(options: &ImportOptions) -> Result<Imported, CheckpointError> {
    rfb_core::checkpoint::import::import_model(options)
}
