//! ResNet-18 for 32x32 inputs, the CIFAR variant (3x3 stem, no max-pool) with parameter names
//! `conv1`, `bn1`, `layerN.M.{conv1,bn1,conv2,bn2,shortcut.0,shortcut.1}`, `linear`.
//! 11,173,962 parameters for 10 classes.

use tch::nn::{self, ModuleT};
use tch::Tensor;

use super::{batch_norm, conv, conv3x3};

#[derive(Debug)]
struct BasicBlock {
    conv1: nn::Conv2D,
    bn1: nn::BatchNorm,
    conv2: nn::Conv2D,
    bn2: nn::BatchNorm,
    shortcut: Option<(nn::Conv2D, nn::BatchNorm)>,
}

impl BasicBlock {
    fn new(path: nn::Path, c_in: i64, c_out: i64, stride: i64) -> Self {
        let shortcut = (stride != 1 || c_in != c_out).then(|| {
            (conv(&path / "shortcut" / 0, c_in, c_out, 1, stride, 0, 1), batch_norm(&path / "shortcut" / 1, c_out))
        });
        BasicBlock {
            conv1: conv3x3(&path / "conv1", c_in, c_out, stride),
            bn1: batch_norm(&path / "bn1", c_out),
            conv2: conv3x3(&path / "conv2", c_out, c_out, 1),
            bn2: batch_norm(&path / "bn2", c_out),
            shortcut,
        }
    }
}

impl ModuleT for BasicBlock {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let out = x.apply(&self.conv1).apply_t(&self.bn1, train).relu();
        let out = out.apply(&self.conv2).apply_t(&self.bn2, train);
        let skip = match &self.shortcut {
            Some((conv, bn)) => x.apply(conv).apply_t(bn, train),
            None => x.shallow_clone(),
        };
        (out + skip).relu()
    }
}

/// The four stages of two blocks each shared by ResNet-18 and its pre-activation variant.
pub(crate) const STAGES: [(i64, i64); 4] = [(64, 1), (128, 2), (256, 2), (512, 2)];

#[derive(Debug)]
pub struct ResNet18 {
    conv1: nn::Conv2D,
    bn1: nn::BatchNorm,
    blocks: Vec<BasicBlock>,
    linear: nn::Linear,
}

impl ResNet18 {
    pub fn new(root: &nn::Path, in_channels: i64, num_classes: i64) -> Self {
        let mut blocks = Vec::new();
        let mut c_in = 64;
        for (stage, (c_out, stride)) in STAGES.iter().enumerate() {
            let layer = root / format!("layer{}", stage + 1);
            blocks.push(BasicBlock::new(&layer / 0, c_in, *c_out, *stride));
            blocks.push(BasicBlock::new(&layer / 1, *c_out, *c_out, 1));
            c_in = *c_out;
        }
        ResNet18 {
            conv1: conv3x3(root / "conv1", in_channels, 64, 1),
            bn1: batch_norm(root / "bn1", 64),
            blocks,
            linear: nn::linear(root / "linear", 512, num_classes, Default::default()),
        }
    }
}

impl ModuleT for ResNet18 {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let mut out = x.apply(&self.conv1).apply_t(&self.bn1, train).relu();
        for block in &self.blocks {
            out = block.forward_t(&out, train);
        }
        // Global average pooling equals the reference avg_pool2d(4) on 32x32 inputs and keeps
        // other input sizes (8x8 digits, 64x64 Tiny-ImageNet) working.
        out.adaptive_avg_pool2d([1, 1]).flatten(1, -1).apply(&self.linear)
    }
}
