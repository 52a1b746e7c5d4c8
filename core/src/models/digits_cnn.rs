//! A small CNN sized for the 8x8 digits (docs/data.md): three 3x3 conv + batch-norm
//! stages with one 2x2 max-pool, global average pooling and a linear head. The teacher is the
//! same network at twice the width. Parameter names: `conv1..3`, `bn1..3`, `linear`.

use tch::nn::{self, ModuleT};
use tch::Tensor;

use super::conv_bn::ConvBn;
use super::Body;

#[derive(Debug)]
pub struct DigitsCnn {
    conv1: ConvBn,
    conv2: ConvBn,
    conv3: ConvBn,
    linear: nn::Linear,
}

impl DigitsCnn {
    /// `width_multiplier` 1 gives the student (16-32-64 channels), 2 the teacher (32-64-128).
    /// Narrow on purpose: on a 2-core CPU the cost of training and of AutoAttack grows with
    /// the width (16-32-64 is about 2.7 times faster than 32-64-128 per attack step).
    pub fn new(root: &nn::Path, in_channels: i64, num_classes: i64, width_multiplier: i64) -> Self {
        let [c1, c2, c3] = [16, 32, 64].map(|c| c * width_multiplier);
        DigitsCnn {
            conv1: ConvBn::conv3x3(root / "conv1", root / "bn1", in_channels, c1, 1),
            conv2: ConvBn::conv3x3(root / "conv2", root / "bn2", c1, c2, 1),
            conv3: ConvBn::conv3x3(root / "conv3", root / "bn3", c2, c3, 1),
            linear: nn::linear(root / "linear", c3, num_classes, Default::default()),
        }
    }
}

impl ModuleT for DigitsCnn {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let out = self.conv1.forward_t(x, train).relu();
        let out = max_pool_2x2(&self.conv2.forward_t(&out, train).relu());
        self.conv3.forward_t(&out, train).relu().adaptive_avg_pool2d([1, 1]).flatten(1, -1).apply(&self.linear)
    }
}

impl Body for DigitsCnn {
    fn conv_bn_layers(&mut self) -> Vec<&mut ConvBn> {
        vec![&mut self.conv1, &mut self.conv2, &mut self.conv3]
    }
}

/// 2x2 max pooling, stride 2. libtorch's CPU kernel for NCHW tensors is scalar and costs about
/// four times its channels-last kernel on these small maps (a fifth of AutoAttack's time on this
/// network went to it, most in Square's forward-only queries). A pass that needs no gradient
/// therefore pools in channels-last layout and returns NCHW: the same maxima (the maximum is
/// exact), so the same logits bit for bit. Passes with a gradient keep the NCHW kernel, whose
/// backward is the faster one at the batch sizes attacks use.
fn max_pool_2x2(x: &Tensor) -> Tensor {
    if x.requires_grad() || x.device() != tch::Device::Cpu || x.dim() != 4 {
        return x.max_pool2d_default(2);
    }
    let nchw = x.is_contiguous();
    let pooled = super::channels_last(x).max_pool2d_default(2);
    if nchw {
        pooled.contiguous()
    } else {
        pooled
    }
}
