//! A model as the evaluator serves it: one of our networks or a TorchScript module, each a
//! [`Classifier`] (the only thing attacks see), and either one prepared at a precision.

use tch::{Device, TchError, Tensor};

use super::{ModelError, ModelSpec, Network, Precision, PreparedNetwork, TorchScriptBf16, TorchScriptModel};
use crate::classifier::Classifier;

/// A loaded checkpoint: a network of the registry, or a TorchScript module.
#[derive(Debug)]
pub enum LoadedModel {
    Native(Network),
    TorchScript(TorchScriptModel),
}

impl LoadedModel {
    pub fn spec(&self) -> &ModelSpec {
        match self {
            LoadedModel::Native(network) => &network.spec,
            LoadedModel::TorchScript(module) => module.spec(),
        }
    }

    pub fn parameter_count(&self) -> i64 {
        match self {
            LoadedModel::Native(network) => network.parameter_count(),
            LoadedModel::TorchScript(module) => module.parameter_count(),
        }
    }

    /// Stops gradients from reaching the parameters (TorchScript modules are always frozen).
    pub fn freeze(&mut self) {
        if let LoadedModel::Native(network) = self {
            network.set_trainable(false);
        }
    }

    /// The model at `precision`: fp32 is the model itself; fp32-fast is, for our networks, a
    /// copy with batch norm folded and channels-last, judged by the model ([`PreparedNetwork`]),
    /// and for a TorchScript module the module itself (its layers are opaque to us); bf16 is a
    /// bf16 copy judged by the fp32 weights ([`PreparedNetwork`], [`TorchScriptModel::bf16`]).
    /// Copying, folding and casting run through [`crate::guard::guarded`]: a libtorch failure
    /// there (a device without bf16, memory) is an error, not a panic.
    pub fn prepare(&self, precision: Precision) -> Result<PreparedModel<'_>, ModelError> {
        crate::guard::guarded(|| self.prepare_unguarded(precision))?
    }

    fn prepare_unguarded(&self, precision: Precision) -> Result<PreparedModel<'_>, ModelError> {
        Ok(match (precision, self) {
            (Precision::Fp32, _) | (Precision::Fp32Fast, LoadedModel::TorchScript(_)) => PreparedModel::Fp32(self),
            (Precision::Fp32Fast, LoadedModel::Native(network)) => {
                PreparedModel::Native(PreparedNetwork::new(network, Precision::Fp32Fast)?)
            }
            (Precision::Bf16, LoadedModel::Native(network)) => PreparedModel::Native(PreparedNetwork::new(network, Precision::Bf16)?),
            (Precision::Bf16, LoadedModel::TorchScript(module)) => PreparedModel::TorchScriptBf16(module.bf16()?),
        })
    }
}

impl Classifier for LoadedModel {
    fn logits(&self, images: &Tensor) -> Result<Tensor, TchError> {
        match self {
            LoadedModel::Native(network) => network.logits(images),
            LoadedModel::TorchScript(module) => module.logits(images),
        }
    }

    fn device(&self) -> Device {
        match self {
            LoadedModel::Native(network) => Classifier::device(network),
            LoadedModel::TorchScript(module) => Classifier::device(module),
        }
    }

    fn computes_gradients_in_forward(&self) -> bool {
        match self {
            LoadedModel::Native(_) => false,
            LoadedModel::TorchScript(module) => module.computes_gradients_in_forward(),
        }
    }
}

/// A [`LoadedModel`] at a precision, ready for attacks.
// One per evaluation, borrowed by every attack: its size does not matter, and boxing the
// prepared network would add an indirection to every forward pass.
#[allow(clippy::large_enum_variant)]
pub enum PreparedModel<'a> {
    Fp32(&'a LoadedModel),
    Native(PreparedNetwork),
    TorchScriptBf16(TorchScriptBf16<'a>),
}

impl PreparedModel<'_> {
    fn inner(&self) -> &dyn Classifier {
        match self {
            PreparedModel::Fp32(model) => *model,
            PreparedModel::Native(network) => network,
            PreparedModel::TorchScriptBf16(module) => module,
        }
    }
}

impl Classifier for PreparedModel<'_> {
    fn logits(&self, images: &Tensor) -> Result<Tensor, TchError> {
        self.inner().logits(images)
    }

    fn device(&self) -> Device {
        self.inner().device()
    }

    fn judge_logits(&self, images: &Tensor) -> Result<Tensor, TchError> {
        self.inner().judge_logits(images)
    }

    fn has_separate_judge(&self) -> bool {
        self.inner().has_separate_judge()
    }

    fn exact(&self) -> Option<&dyn Classifier> {
        self.inner().exact()
    }

    fn computes_gradients_in_forward(&self) -> bool {
        self.inner().computes_gradients_in_forward()
    }
}
