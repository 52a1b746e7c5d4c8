//! MobileNetV2 in its CIFAR variant (stride-1 stem, second stage at stride 1): inverted
//! residual blocks `layers.N.{conv1,bn1,conv2,bn2,conv3,bn3,shortcut.0,shortcut.1}`, then
//! `conv2`, `bn2`, `linear`. 2,296,922 parameters for 10 classes.

use tch::nn::{self, ModuleT};
use tch::Tensor;

use super::{batch_norm, conv};

/// (expansion, output channels, blocks, stride of the first block) per stage.
const STAGES: [(i64, i64, i64, i64); 7] = [
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
];

#[derive(Debug)]
struct InvertedResidual {
    conv1: nn::Conv2D,
    bn1: nn::BatchNorm,
    conv2: nn::Conv2D,
    bn2: nn::BatchNorm,
    conv3: nn::Conv2D,
    bn3: nn::BatchNorm,
    stride: i64,
    /// Projection used when the block keeps the resolution but changes the width.
    shortcut: Option<(nn::Conv2D, nn::BatchNorm)>,
}

impl InvertedResidual {
    fn new(path: nn::Path, c_in: i64, c_out: i64, expansion: i64, stride: i64) -> Self {
        let hidden = expansion * c_in;
        let shortcut = (stride == 1 && c_in != c_out).then(|| {
            (conv(&path / "shortcut" / 0, c_in, c_out, 1, 1, 0, 1), batch_norm(&path / "shortcut" / 1, c_out))
        });
        InvertedResidual {
            conv1: conv(&path / "conv1", c_in, hidden, 1, 1, 0, 1),
            bn1: batch_norm(&path / "bn1", hidden),
            conv2: conv(&path / "conv2", hidden, hidden, 3, stride, 1, hidden),
            bn2: batch_norm(&path / "bn2", hidden),
            conv3: conv(&path / "conv3", hidden, c_out, 1, 1, 0, 1),
            bn3: batch_norm(&path / "bn3", c_out),
            stride,
            shortcut,
        }
    }
}

impl ModuleT for InvertedResidual {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let out = x.apply(&self.conv1).apply_t(&self.bn1, train).relu();
        let out = out.apply(&self.conv2).apply_t(&self.bn2, train).relu();
        let out = out.apply(&self.conv3).apply_t(&self.bn3, train);
        if self.stride != 1 {
            return out;
        }
        match &self.shortcut {
            Some((conv, bn)) => out + x.apply(conv).apply_t(bn, train),
            None => out + x,
        }
    }
}

#[derive(Debug)]
pub struct MobileNetV2 {
    conv1: nn::Conv2D,
    bn1: nn::BatchNorm,
    layers: Vec<InvertedResidual>,
    conv2: nn::Conv2D,
    bn2: nn::BatchNorm,
    linear: nn::Linear,
}

impl MobileNetV2 {
    pub fn new(root: &nn::Path, in_channels: i64, num_classes: i64) -> Self {
        let mut layers = Vec::new();
        let mut c_in = 32;
        for (expansion, c_out, blocks, first_stride) in STAGES {
            for block in 0..blocks {
                let stride = if block == 0 { first_stride } else { 1 };
                let path = root / "layers" / layers.len();
                layers.push(InvertedResidual::new(path, c_in, c_out, expansion, stride));
                c_in = c_out;
            }
        }
        MobileNetV2 {
            conv1: conv(root / "conv1", in_channels, 32, 3, 1, 1, 1),
            bn1: batch_norm(root / "bn1", 32),
            layers,
            conv2: conv(root / "conv2", 320, 1280, 1, 1, 0, 1),
            bn2: batch_norm(root / "bn2", 1280),
            linear: nn::linear(root / "linear", 1280, num_classes, Default::default()),
        }
    }
}

impl ModuleT for MobileNetV2 {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let mut out = x.apply(&self.conv1).apply_t(&self.bn1, train).relu();
        for layer in &self.layers {
            out = layer.forward_t(&out, train);
        }
        out.apply(&self.conv2)
            .apply_t(&self.bn2, train)
            .relu()
            .adaptive_avg_pool2d([1, 1])
            .flatten(1, -1)
            .apply(&self.linear)
    }
}
