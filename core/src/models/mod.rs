//! Model architectures, built by name from a registry.
//!
//! Every network takes images in [0, 1]; a per-channel normalisation, when a checkpoint asks
//! for one, is applied inside the model so that attacks always work in pixel space
//! (docs/attacks.md). Parameter names follow the common PyTorch CIFAR definitions
//! (docs/checkpoints.md) so that reference `state_dict`s load without renaming.

mod conv_bn;
mod digits_cnn;
mod loaded;
mod mobilenet_v2;
mod preact_resnet;
mod precision;
mod resnet18;
mod torchscript;
mod wide_resnet;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tch::nn::{self, ModuleT};
use tch::{Device, Kind, TchError, Tensor};

use crate::classifier::Classifier;

pub use digits_cnn::DigitsCnn;
pub use loaded::{LoadedModel, PreparedModel};
pub use mobilenet_v2::MobileNetV2;
pub use preact_resnet::{PreActResNet, PREACT_RESNET18_BLOCKS, PREACT_RESNET34_BLOCKS};
pub use precision::{channels_last, Precision, PreparedNetwork};
pub use resnet18::ResNet18;
pub use torchscript::{TorchScriptBf16, TorchScriptError, TorchScriptModel, TORCHSCRIPT_ARCHITECTURE};
pub use wide_resnet::WideResNet;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_once_and_small() {
        let names: Vec<String> = architecture_families().iter().map(ToString::to_string).collect();
        assert_eq!(names, ["resnet18", "preact-resnet18", "mobilenet-v2", "wrn-10-1", "digits-cnn"]);
    }
}

/// Errors raised when a model cannot be built as asked.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("unknown architecture '{name}'; known: {known}")]
    UnknownArchitecture { name: String, known: String },
    #[error("invalid model configuration: {0}")]
    InvalidConfig(String),
    #[error("TorchScript module: {0}")]
    TorchScript(#[from] TorchScriptError),
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

/// Which network, with its shape parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    ResNet18,
    PreActResNet18,
    /// The Tiny-ImageNet teacher of the ABSLD paper (A.5, A.7).
    PreActResNet34,
    MobileNetV2,
    /// The TRADES WideResNet definition; `depth` = 6n + 4.
    WideResNet {
        depth: i64,
        width: i64,
    },
    /// Small CNN student for the 8x8 digits.
    DigitsCnn,
    /// The same CNN at twice the width: the digits teacher.
    DigitsCnnWide,
}

/// Names the registry accepts, for help texts and error messages.
pub const ARCHITECTURE_NAMES: &[&str] = &[
    "resnet18",
    "preact-resnet18",
    "preact-resnet34",
    "mobilenet-v2",
    "wrn-34-10",
    "wrn-70-16",
    "wide-resnet-<depth>-<width>",
    "digits-cnn",
    "digits-cnn-wide",
];

impl FromStr for Architecture {
    type Err = ModelError;
    fn from_str(name: &str) -> Result<Self, ModelError> {
        let lower = name.trim().to_ascii_lowercase();
        let unknown = || ModelError::UnknownArchitecture { name: name.to_string(), known: ARCHITECTURE_NAMES.join(", ") };
        Ok(match lower.as_str() {
            "resnet18" | "resnet-18" => Architecture::ResNet18,
            "preact-resnet18" | "preactresnet18" | "preact-resnet-18" => Architecture::PreActResNet18,
            "preact-resnet34" | "preactresnet34" | "preact-resnet-34" => Architecture::PreActResNet34,
            "mobilenet-v2" | "mobilenetv2" => Architecture::MobileNetV2,
            "digits-cnn" => Architecture::DigitsCnn,
            "digits-cnn-wide" => Architecture::DigitsCnnWide,
            other => {
                let rest = other.strip_prefix("wrn-").or_else(|| other.strip_prefix("wide-resnet-")).ok_or_else(unknown)?;
                let (depth, width) = rest.split_once('-').ok_or_else(unknown)?;
                let depth: i64 = depth.parse().map_err(|_| unknown())?;
                let width: i64 = width.parse().map_err(|_| unknown())?;
                if depth < 10 || (depth - 4) % 6 != 0 || width < 1 {
                    return Err(ModelError::InvalidConfig(format!(
                        "wide-resnet depth must be 6n+4 with n >= 1 and width >= 1, got depth {depth}, width {width}"
                    )));
                }
                Architecture::WideResNet { depth, width }
            }
        })
    }
}

impl Architecture {
    /// The smallest network of this one's family (the same definition at other depths or
    /// widths): what a test of every family builds. A new architecture must say here which
    /// family it joins.
    pub fn smallest_in_family(self) -> Architecture {
        match self {
            Architecture::ResNet18 => Architecture::ResNet18,
            Architecture::PreActResNet18 | Architecture::PreActResNet34 => Architecture::PreActResNet18,
            Architecture::MobileNetV2 => Architecture::MobileNetV2,
            Architecture::WideResNet { .. } => Architecture::WideResNet { depth: 10, width: 1 },
            Architecture::DigitsCnn | Architecture::DigitsCnnWide => Architecture::DigitsCnn,
        }
    }
}

/// One architecture per family of the registry ([`ARCHITECTURE_NAMES`]), the smallest of each,
/// in the registry's order: an architecture added to the registry joins every list made from
/// this.
pub fn architecture_families() -> Vec<Architecture> {
    let mut families: Vec<Architecture> = Vec::new();
    for name in ARCHITECTURE_NAMES {
        let parsed = match name.parse::<Architecture>() {
            Ok(architecture) => architecture,
            // The wide-resnet template names the family without a size.
            Err(_) if name.starts_with("wide-resnet-") => Architecture::WideResNet { depth: 10, width: 1 },
            Err(_) => continue,
        };
        let smallest = parsed.smallest_in_family();
        if !families.contains(&smallest) {
            families.push(smallest);
        }
    }
    families
}

impl fmt::Display for Architecture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Architecture::ResNet18 => write!(f, "resnet18"),
            Architecture::PreActResNet18 => write!(f, "preact-resnet18"),
            Architecture::PreActResNet34 => write!(f, "preact-resnet34"),
            Architecture::MobileNetV2 => write!(f, "mobilenet-v2"),
            Architecture::WideResNet { depth, width } => write!(f, "wrn-{depth}-{width}"),
            Architecture::DigitsCnn => write!(f, "digits-cnn"),
            Architecture::DigitsCnnWide => write!(f, "digits-cnn-wide"),
        }
    }
}

/// Per-channel normalisation applied inside the model: (x - mean) / std.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Normalisation {
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
}

/// Everything needed to build a network: it is what a checkpoint manifest records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// Registry name, e.g. `resnet18` or `wrn-34-10`.
    pub architecture: String,
    pub num_classes: i64,
    /// [channels, height, width] of the input images.
    pub input_shape: [i64; 3],
    /// `None`: the network sees pixels in [0, 1] as they are. (Spelled as the manifests' key,
    /// `normalization`, which existing checkpoints carry.)
    #[serde(default)]
    pub normalization: Option<Normalisation>,
}

impl ModelSpec {
    pub fn new(architecture: &str, num_classes: i64, input_shape: [i64; 3]) -> Self {
        ModelSpec { architecture: architecture.to_string(), num_classes, input_shape, normalization: None }
    }
}

/// A built network with its weights.
pub struct Network {
    pub var_store: nn::VarStore,
    pub spec: ModelSpec,
    pub architecture: Architecture,
    body: Box<dyn Body>,
    /// Mean and 1/std as [1, C, 1, 1] tensors on the model's device.
    normalisation: Option<(Tensor, Tensor)>,
}

impl fmt::Debug for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Network").field("spec", &self.spec).field("device", &self.var_store.device()).finish()
    }
}

impl Network {
    /// Logits for a batch of images in [0, 1]; `train` selects batch-norm statistics mode.
    pub fn forward_t(&self, images: &Tensor, train: bool) -> Tensor {
        match &self.normalisation {
            Some((mean, inv_std)) => {
                let kind = images.kind();
                let normalised = (images - mean.to_kind(kind)) * inv_std.to_kind(kind);
                self.body.forward_t(&normalised, train)
            }
            None => self.body.forward_t(images, train),
        }
    }

    pub fn device(&self) -> Device {
        self.var_store.device()
    }

    /// Number of trainable parameters (what `sum(p.numel() for p in model.parameters())` gives).
    pub fn parameter_count(&self) -> i64 {
        self.var_store.trainable_variables().iter().map(Tensor::numel).sum::<usize>() as i64
    }

    /// Folds every convolution that is directly followed by batch norm into one convolution
    /// with a bias, for eval-mode passes only, and passes the folded weights and biases through
    /// `prepare` (a cast, a memory layout; see `conv_bn.rs`). For a frozen copy that attacks
    /// query: after folding, changes to the weights are not seen by eval-mode passes until the
    /// next fold. Returns the number of layers folded.
    pub fn fold_batch_norm(&mut self, prepare: &dyn Fn(&Tensor) -> Tensor) -> usize {
        let layers = self.body.conv_bn_layers();
        let count = layers.len();
        for layer in layers {
            layer.fold();
            layer.prepare_folded(prepare);
        }
        count
    }

    /// Turns gradient tracking of every parameter on or off (attacks switch it off).
    pub fn set_trainable(&mut self, trainable: bool) {
        if trainable {
            self.var_store.unfreeze();
        } else {
            self.var_store.freeze();
        }
    }
}

impl Classifier for Network {
    fn logits(&self, images: &Tensor) -> Result<Tensor, TchError> {
        crate::guard::guarded(|| self.forward_t(images, false))
    }
    fn device(&self) -> Device {
        Network::device(self)
    }
}

/// What every architecture is: a module that can list its foldable conv-then-batch-norm
/// layers ([`Network::fold_batch_norm`]).
pub(crate) trait Body: ModuleT + Send {
    fn conv_bn_layers(&mut self) -> Vec<&mut conv_bn::ConvBn>;
}

/// Builds the network `spec` names on `device`, with freshly initialised weights.
pub fn build(spec: &ModelSpec, device: Device) -> Result<Network, ModelError> {
    let architecture: Architecture = spec.architecture.parse()?;
    if spec.num_classes < 2 {
        return Err(ModelError::InvalidConfig(format!("num_classes must be at least 2, got {}", spec.num_classes)));
    }
    let [channels, height, width] = spec.input_shape;
    if channels < 1 || height < 1 || width < 1 {
        return Err(ModelError::InvalidConfig(format!("input shape must be positive, got {:?}", spec.input_shape)));
    }
    let var_store = nn::VarStore::new(device);
    let root = var_store.root();
    let classes = spec.num_classes;
    let body: Box<dyn Body> = match architecture {
        Architecture::ResNet18 => Box::new(ResNet18::new(&root, channels, classes)),
        Architecture::PreActResNet18 => Box::new(PreActResNet::new(&root, channels, classes, PREACT_RESNET18_BLOCKS)),
        Architecture::PreActResNet34 => Box::new(PreActResNet::new(&root, channels, classes, PREACT_RESNET34_BLOCKS)),
        Architecture::MobileNetV2 => Box::new(MobileNetV2::new(&root, channels, classes)),
        Architecture::WideResNet { depth, width } => Box::new(WideResNet::new(&root, channels, classes, depth, width)),
        Architecture::DigitsCnn => Box::new(DigitsCnn::new(&root, channels, classes, 1)),
        Architecture::DigitsCnnWide => Box::new(DigitsCnn::new(&root, channels, classes, 2)),
    };
    let normalisation = normalisation_tensors(spec, device)?;
    Ok(Network { var_store, spec: spec.clone(), architecture, body, normalisation })
}

/// The normalisation of `spec` as mean and 1/std `[1, C, 1, 1]` tensors on `device`, after
/// checking it (one mean and one positive, finite std per input channel).
pub(crate) fn normalisation_tensors(spec: &ModelSpec, device: Device) -> Result<Option<(Tensor, Tensor)>, ModelError> {
    let Some(norm) = &spec.normalization else {
        return Ok(None);
    };
    let channels = spec.input_shape[0];
    if norm.mean.len() != channels as usize || norm.std.len() != channels as usize {
        return Err(ModelError::InvalidConfig(format!(
            "normalisation has {} means and {} stds for {channels} channels",
            norm.mean.len(),
            norm.std.len()
        )));
    }
    if norm.std.iter().any(|s| !(*s > 0.0) || !s.is_finite()) || norm.mean.iter().any(|m| !m.is_finite()) {
        return Err(ModelError::InvalidConfig("normalisation mean must be finite and std positive and finite".into()));
    }
    let mean = Tensor::from_slice(&norm.mean).to_kind(Kind::Float).reshape([1, channels, 1, 1]).to_device(device);
    let inv_std = Tensor::from_slice(&norm.std).to_kind(Kind::Float).reciprocal().reshape([1, channels, 1, 1]).to_device(device);
    Ok(Some((mean, inv_std)))
}

/// 3x3 convolution without bias, padding 1: the building brick of every CIFAR network here.
pub(crate) fn conv3x3(path: nn::Path, c_in: i64, c_out: i64, stride: i64) -> nn::Conv2D {
    conv(path, c_in, c_out, 3, stride, 1, 1)
}

/// Bias-free convolution with PyTorch's default initialisation.
pub(crate) fn conv(path: nn::Path, c_in: i64, c_out: i64, kernel: i64, stride: i64, padding: i64, groups: i64) -> nn::Conv2D {
    let config = nn::ConvConfig { stride, padding, groups, bias: false, ..Default::default() };
    nn::conv2d(path, c_in, c_out, kernel, config)
}

/// Batch norm with PyTorch's defaults (eps 1e-5, momentum 0.1).
pub(crate) fn batch_norm(path: nn::Path, channels: i64) -> nn::BatchNorm {
    nn::batch_norm2d(path, channels, Default::default())
}
