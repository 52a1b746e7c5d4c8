//! Numeric precision of a network under attack.
//!
//! `fp32` is the reference numerics. `bf16` runs a copy of the network with bf16 weights in
//! channels-last memory layout (oneDNN's fast path on CPUs with AVX512-BF16, and tensor cores
//! on CUDA) while everything the attacks compute — the images, the perturbation, the loss and
//! the projection — stays in fp32: inputs are cast on the way in and logits cast back on the
//! way out, so gradients flow to the fp32 input through the casts. libtorch's C++ autocast
//! is CUDA-only through tch, so explicit bf16 weights serve both devices.
//!
//! Correctness is judged by the fp32 weights (`Classifier::judge_logits`): the bf16 copy finds
//! the adversarial points, the fp32 network decides which are misclassified. Judging with the
//! bf16 copy measured the rounded network instead, which was up to 0.8 points less robust
//! under AutoAttack on trained digits models.

use std::fmt;
use std::str::FromStr;

use tch::{Device, Kind, Tensor};

use super::{build, ModelError, Network};
use crate::attacks::Classifier;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    #[default]
    Fp32,
    Bf16,
}

impl FromStr for Precision {
    type Err = ModelError;
    fn from_str(name: &str) -> Result<Self, ModelError> {
        match name.trim().to_ascii_lowercase().as_str() {
            "fp32" | "float32" | "f32" => Ok(Precision::Fp32),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            other => Err(ModelError::InvalidConfig(format!("unknown precision '{other}' (fp32 or bf16)"))),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
        })
    }
}

/// Returns `tensor` with the same shape in channels-last (NHWC) memory layout if it is 4-D.
/// tch has no memory-format argument; permuting, making contiguous and permuting back gives
/// the NHWC strides that libtorch's convolutions recognise.
pub fn channels_last(tensor: &Tensor) -> Tensor {
    if tensor.dim() == 4 {
        tensor.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
    } else {
        tensor.shallow_clone()
    }
}

/// A network prepared for attacks at a precision; a [`Classifier`] with fp32 inputs and logits.
pub struct PreparedNetwork {
    network: Network,
    precision: Precision,
    /// For bf16: a frozen fp32 copy that judges correctness (see [`Classifier::judge_logits`]).
    reference: Option<Network>,
}

impl PreparedNetwork {
    /// Copies `source` (left untouched) into a frozen network at `precision`.
    pub fn new(source: &Network, precision: Precision) -> Result<Self, ModelError> {
        let frozen_copy = || -> Result<Network, ModelError> {
            let mut copy = build(&source.spec, source.device())?;
            copy.var_store.copy(&source.var_store)?;
            copy.set_trainable(false);
            Ok(copy)
        };
        let mut network = frozen_copy()?;
        let reference = match precision {
            Precision::Bf16 => Some(frozen_copy()?),
            Precision::Fp32 => None,
        };
        if precision == Precision::Bf16 {
            network.var_store.bfloat16();
            tch::no_grad(|| {
                for (_, mut variable) in network.var_store.variables() {
                    if variable.dim() == 4 {
                        let relaid = channels_last(&variable);
                        variable.set_data(&relaid);
                    }
                }
            });
        }
        network.set_trainable(false);
        Ok(PreparedNetwork { network, precision, reference })
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    pub fn network(&self) -> &Network {
        &self.network
    }
}

impl Classifier for PreparedNetwork {
    fn logits(&self, images: &Tensor) -> Tensor {
        match self.precision {
            Precision::Fp32 => self.network.forward_t(images, false),
            Precision::Bf16 => {
                let input = channels_last(&images.to_kind(Kind::BFloat16));
                self.network.forward_t(&input, false).to_kind(Kind::Float)
            }
        }
    }

    fn device(&self) -> Device {
        self.network.device()
    }

    fn judge_logits(&self, images: &Tensor) -> Tensor {
        match &self.reference {
            Some(reference) => reference.forward_t(images, false),
            None => self.logits(images),
        }
    }

    fn has_separate_judge(&self) -> bool {
        self.reference.is_some()
    }
}
