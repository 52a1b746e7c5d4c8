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
//! the adversarial points, the fp32 network decides which are misclassified, at every decision
//! an attack takes. Judging with the bf16 copy measured the rounded network instead, which was
//! up to 0.8 points less robust under AutoAttack on trained digits models.

use std::fmt;
use std::str::FromStr;

use tch::{Device, Kind, TchError, Tensor};

use super::{build, ModelError, Network};
use crate::classifier::Classifier;
use crate::guard::guarded;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// The network as it is.
    #[default]
    Fp32,
    /// An fp32 copy with batch norm folded and channels-last weights: the same function up to
    /// rounding, faster, but its rounding depends on the batch.
    Fp32Fast,
    /// A bf16 channels-last copy (batch norm folded), judged by the fp32 network at every
    /// decision.
    Bf16,
}

impl FromStr for Precision {
    type Err = ModelError;
    fn from_str(name: &str) -> Result<Self, ModelError> {
        match name.trim().to_ascii_lowercase().as_str() {
            "fp32" | "float32" | "f32" => Ok(Precision::Fp32),
            "fp32-fast" | "fast" => Ok(Precision::Fp32Fast),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            other => Err(ModelError::InvalidConfig(format!("unknown precision '{other}' (fp32, fp32-fast or bf16)"))),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::Fp32 => "fp32",
            Precision::Fp32Fast => "fp32-fast",
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
///
/// At `fp32` the attack network is a frozen copy of the source as it is. At `fp32-fast` and
/// `bf16` it is a copy with every conv-then-batch-norm pair folded into one convolution and every
/// 4-D weight in channels-last layout (oneDNN's and cuDNN's preferred layout), at `bf16` also
/// cast; the source, unchanged, then judges ([`Classifier::judge_logits`],
/// [`Classifier::exact`]). The `fp32-fast` copy computes the same function up to rounding
/// (tested in `core/tests/prepared.rs`), so attacks take their decisions with it and only the
/// count is the judge's; the bf16 copy can differ by more, so attacks ask the judge at every
/// decision ([`Classifier::has_separate_judge`]).
pub struct PreparedNetwork {
    network: Network,
    precision: Precision,
    /// For `fp32-fast` and `bf16`: a frozen fp32 copy of the source that judges correctness.
    reference: Option<Network>,
}

impl PreparedNetwork {
    /// Copies `source` (left untouched) into a frozen attack network at `precision` (and, for
    /// `fp32-fast` and `bf16`, a frozen judge).
    pub fn new(source: &Network, precision: Precision) -> Result<Self, ModelError> {
        let frozen_copy = || -> Result<Network, ModelError> {
            let mut copy = build(&source.spec, source.device())?;
            copy.var_store.copy(&source.var_store)?;
            copy.set_trainable(false);
            Ok(copy)
        };
        let mut network = frozen_copy()?;
        if precision == Precision::Fp32 {
            return Ok(PreparedNetwork { network, precision, reference: None });
        }
        let reference = Some(frozen_copy()?);
        let kind = Self::kind_of(precision);
        // Fold in fp32, then cast and lay out the folded tensors.
        network.fold_batch_norm(&|t: &Tensor| channels_last(&t.to_kind(kind)));
        if precision == Precision::Bf16 {
            network.var_store.bfloat16();
        }
        tch::no_grad(|| {
            for (_, mut variable) in network.var_store.variables() {
                if variable.dim() == 4 {
                    let relaid = channels_last(&variable);
                    variable.set_data(&relaid);
                }
            }
        });
        network.set_trainable(false);
        Ok(PreparedNetwork { network, precision, reference })
    }

    fn kind_of(precision: Precision) -> Kind {
        match precision {
            Precision::Fp32 | Precision::Fp32Fast => Kind::Float,
            Precision::Bf16 => Kind::BFloat16,
        }
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The attack network.
    pub fn network(&self) -> &Network {
        &self.network
    }
}

impl Classifier for PreparedNetwork {
    fn logits(&self, images: &Tensor) -> Result<Tensor, TchError> {
        guarded(|| match self.precision {
            Precision::Fp32 => self.network.forward_t(images, false),
            precision => {
                let input = channels_last(&images.to_kind(Self::kind_of(precision)));
                self.network.forward_t(&input, false).to_kind(Kind::Float)
            }
        })
    }

    fn device(&self) -> Device {
        self.network.device()
    }

    fn judge_logits(&self, images: &Tensor) -> Result<Tensor, TchError> {
        guarded(|| match &self.reference {
            Some(reference) => reference.forward_t(images, false),
            None => self.network.forward_t(images, false),
        })
    }

    fn has_separate_judge(&self) -> bool {
        self.precision == Precision::Bf16
    }

    fn exact(&self) -> Option<&dyn Classifier> {
        self.reference.as_ref().map(|r| r as &dyn Classifier)
    }
}
