//! Pre-activation ResNets (He et al. 2016) in the CIFAR form used by the adversarial-training
//! literature (Rice et al.'s robust-overfitting code, `PreActResNet(PreActBlock, blocks)`):
//! blocks `layerN.M.{bn1,conv1,bn2,conv2,shortcut.0}`, a final `bn` + ReLU before pooling, and
//! `linear`, so that a PyTorch `state_dict` of that definition loads as it is.
//!
//! - ResNet-18: 2, 2, 2, 2 blocks per stage; 11,172,170 parameters for 10 classes.
//! - ResNet-34: 3, 4, 6, 3; 21,280,330 parameters for 10 classes, 21,377,800 for 200. The ABSLD
//!   paper's Tiny-ImageNet teacher, trained by TRADES (A.5, A.7).

use tch::nn::{self, ModuleT};
use tch::Tensor;

use super::conv_bn::ConvBn;
use super::resnet18::STAGES;
use super::{batch_norm, conv, conv3x3, Body};

/// Blocks per stage of pre-activation ResNet-18.
pub const PREACT_RESNET18_BLOCKS: [usize; 4] = [2, 2, 2, 2];
/// Blocks per stage of pre-activation ResNet-34.
pub const PREACT_RESNET34_BLOCKS: [usize; 4] = [3, 4, 6, 3];

/// One pre-activation basic block.
#[derive(Debug)]
struct PreActBlock {
    bn1: nn::BatchNorm,
    /// `conv1` and `bn2`: the block's one convolution directly followed by batch norm.
    conv1: ConvBn,
    conv2: nn::Conv2D,
    shortcut: Option<nn::Conv2D>,
}

impl PreActBlock {
    fn new(path: nn::Path, c_in: i64, c_out: i64, stride: i64) -> Self {
        let shortcut = (stride != 1 || c_in != c_out).then(|| conv(&path / "shortcut" / 0, c_in, c_out, 1, stride, 0, 1));
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
pub struct PreActResNet {
    conv1: nn::Conv2D,
    blocks: Vec<PreActBlock>,
    bn: nn::BatchNorm,
    linear: nn::Linear,
}

impl PreActResNet {
    /// `blocks`: per stage, e.g. [`PREACT_RESNET18_BLOCKS`]; the first block of a stage
    /// carries its stride.
    pub fn new(root: &nn::Path, in_channels: i64, num_classes: i64, blocks_per_stage: [usize; 4]) -> Self {
        let mut blocks = Vec::new();
        let mut c_in = 64;
        for (stage, ((c_out, stride), count)) in STAGES.iter().zip(blocks_per_stage).enumerate() {
            let layer = root / format!("layer{}", stage + 1);
            for index in 0..count {
                let stride = if index == 0 { *stride } else { 1 };
                blocks.push(PreActBlock::new(&layer / index, c_in, *c_out, stride));
                c_in = *c_out;
            }
        }
        PreActResNet {
            conv1: conv3x3(root / "conv1", in_channels, 64, 1),
            blocks,
            bn: batch_norm(root / "bn", 512),
            linear: nn::linear(root / "linear", 512, num_classes, Default::default()),
        }
    }
}

impl ModuleT for PreActResNet {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let mut out = x.apply(&self.conv1);
        for block in &self.blocks {
            out = block.forward_t(&out, train);
        }
        out.apply_t(&self.bn, train).relu().adaptive_avg_pool2d([1, 1]).flatten(1, -1).apply(&self.linear)
    }
}

impl Body for PreActResNet {
    fn conv_bn_layers(&mut self) -> Vec<&mut ConvBn> {
        self.blocks.iter_mut().map(|block| &mut block.conv1).collect()
    }
}
