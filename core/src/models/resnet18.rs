//! ResNet-18 for 32x32 inputs, the CIFAR variant (3x3 stem, no max-pool) with parameter names
//! `conv1`, `bn1`, `layerN.M.{conv1,bn1,conv2,bn2,shortcut.0,shortcut.1}`, `linear`.
//! 11,173,962 parameters for 10 classes.

use tch::nn::{self, ModuleT};
use tch::Tensor;

use super::conv_bn::ConvBn;
use super::Body;

#[derive(Debug)]
struct BasicBlock {
    conv1: ConvBn,
    conv2: ConvBn,
    shortcut: Option<ConvBn>,
}

impl BasicBlock {
    fn new(path: nn::Path, c_in: i64, c_out: i64, stride: i64) -> Self {
        let shortcut = (stride != 1 || c_in != c_out)
            .then(|| ConvBn::new(&path / "shortcut" / 0, &path / "shortcut" / 1, c_in, c_out, 1, stride, 0, 1));
        BasicBlock {
            conv1: ConvBn::conv3x3(&path / "conv1", &path / "bn1", c_in, c_out, stride),
            conv2: ConvBn::conv3x3(&path / "conv2", &path / "bn2", c_out, c_out, 1),
            shortcut,
        }
    }
}

impl ModuleT for BasicBlock {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let out = self.conv1.forward_t(x, train).relu();
        let out = self.conv2.forward_t(&out, train);
        let skip = match &self.shortcut {
            Some(projection) => projection.forward_t(x, train),
            None => x.shallow_clone(),
        };
        (out + skip).relu()
    }
}

/// The four stages of two blocks each shared by ResNet-18 and its pre-activation variant.
pub(crate) const STAGES: [(i64, i64); 4] = [(64, 1), (128, 2), (256, 2), (512, 2)];

#[derive(Debug)]
pub struct ResNet18 {
    conv1: ConvBn,
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
            conv1: ConvBn::conv3x3(root / "conv1", root / "bn1", in_channels, 64, 1),
            blocks,
            linear: nn::linear(root / "linear", 512, num_classes, Default::default()),
        }
    }
}

impl ModuleT for ResNet18 {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let mut out = self.conv1.forward_t(x, train).relu();
        for block in &self.blocks {
            out = block.forward_t(&out, train);
        }
        // Global average pooling equals the reference avg_pool2d(4) on 32x32 inputs and keeps
        // other input sizes (8x8 digits, 64x64 Tiny-ImageNet) working.
        out.adaptive_avg_pool2d([1, 1]).flatten(1, -1).apply(&self.linear)
    }
}

impl Body for ResNet18 {
    fn conv_bn_layers(&mut self) -> Vec<&mut ConvBn> {
        let mut layers = vec![&mut self.conv1];
        for block in &mut self.blocks {
            layers.push(&mut block.conv1);
            layers.push(&mut block.conv2);
            layers.extend(block.shortcut.as_mut());
        }
        layers
    }
}
