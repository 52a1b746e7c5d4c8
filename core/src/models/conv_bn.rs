//! A convolution directly followed by batch norm, which attack passes can fold into one
//! convolution with a bias.
//!
//! In eval mode batch norm is a fixed per-channel affine map, y = (x - mean) / sqrt(var + eps) *
//! gamma + beta, so conv-then-BN equals one convolution with weights w * s and bias
//! beta - mean * s (+ the conv's own bias times s), s = gamma / sqrt(var + eps). Folding saves
//! one memory pass over every activation in the forward pass and one in the backward pass (about
//! a tenth of a ResNet-18 attack step on a CPU). The parameters keep their names (`conv1.weight`,
//! `bn1.running_mean`, ...), so state dicts and checkpoints are unchanged; the folded tensors
//! exist only in memory, are used only in eval mode, and must be recomputed with
//! [`ConvBn::fold`] after the weights change (the attacks fold a private copy).

use tch::nn::{self, ModuleT};
use tch::Tensor;

use super::{batch_norm, conv};

/// Batch norm's eps as [`batch_norm`] builds it (PyTorch's default).
const BN_EPS: f64 = 1e-5;

#[derive(Debug)]
pub(crate) struct ConvBn {
    pub conv: nn::Conv2D,
    pub bn: nn::BatchNorm,
    stride: i64,
    padding: i64,
    groups: i64,
    /// Folded weight and bias, once [`ConvBn::fold`] ran.
    folded: Option<(Tensor, Tensor)>,
}

impl ConvBn {
    /// A bias-free convolution at `conv_path` followed by batch norm at `bn_path`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(conv_path: nn::Path, bn_path: nn::Path, c_in: i64, c_out: i64, kernel: i64, stride: i64, padding: i64, groups: i64) -> Self {
        ConvBn {
            conv: conv(conv_path, c_in, c_out, kernel, stride, padding, groups),
            bn: batch_norm(bn_path, c_out),
            stride,
            padding,
            groups,
            folded: None,
        }
    }

    /// A 3x3, padding-1 convolution followed by batch norm.
    pub fn conv3x3(conv_path: nn::Path, bn_path: nn::Path, c_in: i64, c_out: i64, stride: i64) -> Self {
        Self::new(conv_path, bn_path, c_in, c_out, 3, stride, 1, 1)
    }

    /// Computes the folded weight and bias from the current parameters and running statistics,
    /// with the weight laid out like the conv's (callers may re-lay it out afterwards).
    pub fn fold(&mut self) {
        let folded = tch::no_grad(|| {
            let scale = match &self.bn.ws {
                Some(gamma) => gamma / (&self.bn.running_var + BN_EPS).sqrt(),
                None => (&self.bn.running_var + BN_EPS).rsqrt(),
            };
            let weight = &self.conv.ws * scale.reshape([-1, 1, 1, 1]);
            let mut bias = -(&self.bn.running_mean * &scale);
            if let Some(beta) = &self.bn.bs {
                bias += beta;
            }
            if let Some(conv_bias) = &self.conv.bs {
                bias += conv_bias * &scale;
            }
            (weight.detach(), bias.detach())
        });
        self.folded = Some(folded);
    }

    /// Applies `prepare` (a cast, a channels-last layout) to the folded weight and bias.
    pub fn prepare_folded(&mut self, prepare: &dyn Fn(&Tensor) -> Tensor) {
        if let Some((weight, bias)) = self.folded.take() {
            self.folded = Some((prepare(&weight), prepare(&bias)));
        }
    }
}

impl ModuleT for ConvBn {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        match (&self.folded, train) {
            (Some((weight, bias)), false) => x.conv2d(weight, Some(bias), [self.stride; 2], [self.padding; 2], [1, 1], self.groups),
            _ => x.apply(&self.conv).apply_t(&self.bn, train),
        }
    }
}
