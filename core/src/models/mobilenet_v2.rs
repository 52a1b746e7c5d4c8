//! MobileNetV2 in its CIFAR variant (stride-1 stem, second stage at stride 1): inverted
//! residual blocks `layers.N.{conv1,bn1,conv2,bn2,conv3,bn3,shortcut.0,shortcut.1}`, then
//! `conv2`, `bn2`, `linear`. 2,296,922 parameters for 10 classes.

use tch::nn::{self, ModuleT};
use tch::Tensor;

use super::conv_bn::ConvBn;
use super::Body;

/// (expansion, output channels, blocks, stride of the first block) per stage.
const STAGES: [(i64, i64, i64, i64); 7] =
    [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)];

#[derive(Debug)]
struct InvertedResidual {
    conv1: ConvBn,
    conv2: ConvBn,
    conv3: ConvBn,
    stride: i64,
    /// Projection used when the block keeps the resolution but changes the width.
    shortcut: Option<ConvBn>,
}

impl InvertedResidual {
    fn new(path: nn::Path, c_in: i64, c_out: i64, expansion: i64, stride: i64) -> Self {
        let hidden = expansion * c_in;
        let shortcut =
            (stride == 1 && c_in != c_out).then(|| ConvBn::new(&path / "shortcut" / 0, &path / "shortcut" / 1, c_in, c_out, 1, 1, 0, 1));
        InvertedResidual {
            conv1: ConvBn::new(&path / "conv1", &path / "bn1", c_in, hidden, 1, 1, 0, 1),
            conv2: ConvBn::new(&path / "conv2", &path / "bn2", hidden, hidden, 3, stride, 1, hidden),
            conv3: ConvBn::new(&path / "conv3", &path / "bn3", hidden, c_out, 1, 1, 0, 1),
            stride,
            shortcut,
        }
    }
}

impl ModuleT for InvertedResidual {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let out = self.conv1.forward_t(x, train).relu();
        let out = self.conv2.forward_t(&out, train).relu();
        let out = self.conv3.forward_t(&out, train);
        if self.stride != 1 {
            return out;
        }
        match &self.shortcut {
            Some(projection) => out + projection.forward_t(x, train),
            None => out + x,
        }
    }
}

#[derive(Debug)]
pub struct MobileNetV2 {
    conv1: ConvBn,
    layers: Vec<InvertedResidual>,
    conv2: ConvBn,
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
            conv1: ConvBn::new(root / "conv1", root / "bn1", in_channels, 32, 3, 1, 1, 1),
            layers,
            conv2: ConvBn::new(root / "conv2", root / "bn2", 320, 1280, 1, 1, 0, 1),
            linear: nn::linear(root / "linear", 1280, num_classes, Default::default()),
        }
    }
}

impl ModuleT for MobileNetV2 {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let mut out = self.conv1.forward_t(x, train).relu();
        for layer in &self.layers {
            out = layer.forward_t(&out, train);
        }
        self.conv2.forward_t(&out, train).relu().adaptive_avg_pool2d([1, 1]).flatten(1, -1).apply(&self.linear)
    }
}

impl Body for MobileNetV2 {
    fn conv_bn_layers(&mut self) -> Vec<&mut ConvBn> {
        let mut layers = vec![&mut self.conv1, &mut self.conv2];
        for layer in &mut self.layers {
            layers.push(&mut layer.conv1);
            layers.push(&mut layer.conv2);
            layers.push(&mut layer.conv3);
            layers.extend(layer.shortcut.as_mut());
        }
        layers
    }
}
