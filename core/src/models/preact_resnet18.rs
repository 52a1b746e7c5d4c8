//! Pre-activation ResNet-18 (He et al. 2016) in the CIFAR form used by the adversarial-training
//! literature (Rice et al.'s robust-overfitting code): blocks `layerN.M.{bn1,conv1,bn2,conv2,
//! shortcut.0}`, a final `bn` + ReLU before pooling, and `linear`. 11,172,170 parameters for
//! 10 classes.

use tch::nn::{self, ModuleT};
use tch::Tensor;

use super::resnet18::STAGES;
use super::conv_bn::ConvBn;
use super::{batch_norm, conv, conv3x3, Body};

/// One pre-activation basic block (also the brick of [`super::PreActResNet34`]).
#[derive(Debug)]
pub(super) struct PreActBlock {
    bn1: nn::BatchNorm,
    /// `conv1` and `bn2`: the block's one convolution directly followed by batch norm.
    pub(super) conv1: ConvBn,
    conv2: nn::Conv2D,
    shortcut: Option<nn::Conv2D>,
}

impl PreActBlock {
    pub(super) fn new(path: nn::Path, c_in: i64, c_out: i64, stride: i64) -> Self {
        let shortcut = (stride != 1 || c_in != c_out)
            .then(|| conv(&path / "shortcut" / 0, c_in, c_out, 1, stride, 0, 1));
        PreActBlock {
            bn1: batch_norm(&path / "bn1", c_in),
            conv1: ConvBn::conv3x3(&path / "conv1", &path / "bn2", c_in, c_out, stride),
            conv2: conv3x3(&path / "conv2", c_out, c_out, 1),
            shortcut,
        }
    }
}

impl ModuleT for PreActBlock {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let pre = x.apply_t(&self.bn1, train).relu();
        // The shortcut branches off after the first pre-activation when it has a projection.
        let skip = match &self.shortcut {
            Some(conv) => pre.apply(conv),
            None => x.shallow_clone(),
        };
        let out = self.conv1.forward_t(&pre, train).relu().apply(&self.conv2);
        out + skip
    }
}

#[derive(Debug)]
pub struct PreActResNet18 {
    conv1: nn::Conv2D,
    blocks: Vec<PreActBlock>,
    bn: nn::BatchNorm,
    linear: nn::Linear,
}

impl PreActResNet18 {
    pub fn new(root: &nn::Path, in_channels: i64, num_classes: i64) -> Self {
        let mut blocks = Vec::new();
        let mut c_in = 64;
        for (stage, (c_out, stride)) in STAGES.iter().enumerate() {
            let layer = root / format!("layer{}", stage + 1);
            blocks.push(PreActBlock::new(&layer / 0, c_in, *c_out, *stride));
            blocks.push(PreActBlock::new(&layer / 1, *c_out, *c_out, 1));
            c_in = *c_out;
        }
        PreActResNet18 {
            conv1: conv3x3(root / "conv1", in_channels, 64, 1),
            blocks,
            bn: batch_norm(root / "bn", 512),
            linear: nn::linear(root / "linear", 512, num_classes, Default::default()),
        }
    }
}

impl ModuleT for PreActResNet18 {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let mut out = x.apply(&self.conv1);
        for block in &self.blocks {
            out = block.forward_t(&out, train);
        }
        out.apply_t(&self.bn, train)
            .relu()
            .adaptive_avg_pool2d([1, 1])
            .flatten(1, -1)
            .apply(&self.linear)
    }
}

impl Body for PreActResNet18 {
    fn conv_bn_layers(&mut self) -> Vec<&mut ConvBn> {
        self.blocks.iter_mut().map(|block| &mut block.conv1).collect()
    }
}
