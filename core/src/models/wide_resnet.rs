//! WideResNet as defined in the TRADES code (Zhang et al. 2019), the teacher architecture of
//! RSLAD and ABSLD: `conv1`, three stages `blockN.layer.M.{bn1,conv1,bn2,conv2,convShortcut}`,
//! `bn1`, `fc`. The reference definition also builds an unused `sub_block1`, which is in its
//! `state_dict` and its parameter count (48,262,586 for WRN-34-10), so we build it too; it never
//! runs in `forward`.

use tch::nn::{self, ModuleT};
use tch::Tensor;

use super::conv_bn::ConvBn;
use super::{batch_norm, conv, conv3x3, Body};

#[derive(Debug)]
struct WideBlock {
    bn1: nn::BatchNorm,
    /// `conv1` and `bn2`: the block's one convolution directly followed by batch norm.
    conv1: ConvBn,
    conv2: nn::Conv2D,
    /// Present when input and output widths differ (first block of a stage).
    conv_shortcut: Option<nn::Conv2D>,
}

impl WideBlock {
    fn new(path: nn::Path, c_in: i64, c_out: i64, stride: i64) -> Self {
        let conv_shortcut = (c_in != c_out).then(|| conv(&path / "convShortcut", c_in, c_out, 1, stride, 0, 1));
        WideBlock {
            bn1: batch_norm(&path / "bn1", c_in),
            conv1: ConvBn::conv3x3(&path / "conv1", &path / "bn2", c_in, c_out, stride),
            conv2: conv3x3(&path / "conv2", c_out, c_out, 1),
            conv_shortcut,
        }
    }
}

impl ModuleT for WideBlock {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let pre = x.apply_t(&self.bn1, train).relu();
        let out = self.conv1.forward_t(&pre, train).relu().apply(&self.conv2);
        match &self.conv_shortcut {
            // In the reference, a width-changing block projects the pre-activated input.
            Some(conv) => out + pre.apply(conv),
            None => out + x,
        }
    }
}

fn stage(path: nn::Path, blocks: i64, c_in: i64, c_out: i64, stride: i64) -> Vec<WideBlock> {
    let layer = &path / "layer";
    (0..blocks)
        .map(|i| {
            let (c, s) = if i == 0 { (c_in, stride) } else { (c_out, 1) };
            WideBlock::new(&layer / i, c, c_out, s)
        })
        .collect()
}

#[derive(Debug)]
pub struct WideResNet {
    conv1: nn::Conv2D,
    blocks: Vec<WideBlock>,
    /// Built only so that the parameters match the reference; never used in `forward`.
    _sub_block1: Vec<WideBlock>,
    bn1: nn::BatchNorm,
    fc: nn::Linear,
}

impl WideResNet {
    /// `depth` must be 6n + 4 (checked by the registry).
    pub fn new(root: &nn::Path, in_channels: i64, num_classes: i64, depth: i64, width: i64) -> Self {
        let n = (depth - 4) / 6;
        let widths = [16, 16 * width, 32 * width, 64 * width];
        let mut blocks = stage(root / "block1", n, widths[0], widths[1], 1);
        let sub_block1 = stage(root / "sub_block1", n, widths[0], widths[1], 1);
        blocks.extend(stage(root / "block2", n, widths[1], widths[2], 2));
        blocks.extend(stage(root / "block3", n, widths[2], widths[3], 2));
        WideResNet {
            conv1: conv3x3(root / "conv1", in_channels, widths[0], 1),
            blocks,
            _sub_block1: sub_block1,
            bn1: batch_norm(root / "bn1", widths[3]),
            fc: nn::linear(root / "fc", widths[3], num_classes, Default::default()),
        }
    }
}

impl ModuleT for WideResNet {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let mut out = x.apply(&self.conv1);
        for block in &self.blocks {
            out = block.forward_t(&out, train);
        }
        out.apply_t(&self.bn1, train).relu().adaptive_avg_pool2d([1, 1]).flatten(1, -1).apply(&self.fc)
    }
}

impl Body for WideResNet {
    fn conv_bn_layers(&mut self) -> Vec<&mut ConvBn> {
        self.blocks.iter_mut().map(|block| &mut block.conv1).collect()
    }
}
