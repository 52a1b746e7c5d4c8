//! Pre-activation ResNet-34 (He et al. 2016) in the same CIFAR form as
//! [`super::PreActResNet18`] (Rice et al.'s robust-overfitting code, `PreActResNet34` =
//! `PreActResNet(PreActBlock, [3, 4, 6, 3])`): 3, 4, 6 and 3 pre-activation blocks in the four
//! stages, parameter names `conv1`, `layerN.M.{bn1,conv1,bn2,conv2,shortcut.0}`, `bn`, `linear`,
//! so that a PyTorch `state_dict` of that definition loads as it is; 21,280,330 parameters for
//! 10 classes, 21,377,800 for 200. The ABSLD paper's Tiny-ImageNet teacher, trained by TRADES
//! (A.5, A.7).

use tch::nn::{self, ModuleT};
use tch::Tensor;

use super::preact_resnet18::PreActBlock;
use super::resnet18::STAGES;
use super::{batch_norm, conv3x3};

/// Blocks per stage.
const BLOCKS: [usize; 4] = [3, 4, 6, 3];

#[derive(Debug)]
pub struct PreActResNet34 {
    conv1: nn::Conv2D,
    blocks: Vec<PreActBlock>,
    bn: nn::BatchNorm,
    linear: nn::Linear,
}

impl PreActResNet34 {
    pub fn new(root: &nn::Path, in_channels: i64, num_classes: i64) -> Self {
        let mut blocks = Vec::new();
        let mut c_in = 64;
        for (stage, ((c_out, stride), count)) in STAGES.iter().zip(BLOCKS).enumerate() {
            let layer = root / format!("layer{}", stage + 1);
            for index in 0..count {
                let stride = if index == 0 { *stride } else { 1 };
                blocks.push(PreActBlock::new(&layer / index, c_in, *c_out, stride));
                c_in = *c_out;
            }
        }
        PreActResNet34 {
            conv1: conv3x3(root / "conv1", in_channels, 64, 1),
            blocks,
            bn: batch_norm(root / "bn", 512),
            linear: nn::linear(root / "linear", 512, num_classes, Default::default()),
        }
    }
}

impl ModuleT for PreActResNet34 {
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

impl super::Body for PreActResNet34 {
    fn conv_bn_layers(&mut self) -> Vec<&mut super::conv_bn::ConvBn> {
        self.blocks.iter_mut().map(|block| &mut block.conv1).collect()
    }
}
