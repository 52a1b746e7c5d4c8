//! Per-example losses that attacks maximise. Each returns a [N] tensor.

use tch::{Kind, Reduction, Tensor};

/// Cross-entropy of `logits` against the true `labels`.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Tensor {
    logits.cross_entropy_loss::<Tensor>(labels, None, Reduction::None, -100, 0.0)
}

/// KL(p || softmax(logits)) per example, with `p` the given soft labels: the inner
/// maximisation of TRADES, RSLAD and ABSLD (paper Eq. 12).
pub fn kl_to_soft_labels(logits: &Tensor, soft_labels: &Tensor) -> Tensor {
    let log_q = logits.log_softmax(-1, Kind::Float);
    // p log p - p log q, with 0 log 0 = 0.
    let log_p = soft_labels.clamp_min(1e-12).log();
    (soft_labels * (log_p - log_q)).sum_dim_intlist(-1, false, Kind::Float)
}

/// Margin z_y - max_{j != y} z_j per example: positive while the point is classified
/// correctly. Square Attack minimises it.
pub fn margin(logits: &Tensor, labels: &Tensor) -> Tensor {
    let true_logit = logits.gather(1, &labels.unsqueeze(1), false).squeeze_dim(1);
    let masked = logits.scatter_value(1, &labels.unsqueeze(1), f64::NEG_INFINITY);
    // max_dim, not amax: on ties the gradient goes to one index, as the references' max(1)[0].
    let (best_other, _) = masked.max_dim(1, false);
    true_logit - best_other
}

/// Carlini-Wagner loss with confidence kappa as the robust-fairness papers' evaluation code
/// maximises it (Carlini and Wagner 2017, the L-inf variant of RSLAD's and ABSLD's `cwloss`):
/// -max(z_y - max_{j != y} z_j + kappa, 0). Its gradient vanishes only once the point is
/// misclassified by kappa, so points whose true logit leads by far still move. (A loss floored
/// at -kappa from the other side, max(other - true, -kappa), has a zero gradient exactly at
/// those points and overstated the robustness of models with large logits.) The reference
/// masks the true class with -10000 rather than -inf; the two differ only for logits below
/// -10000.
pub fn cw_loss(logits: &Tensor, labels: &Tensor, kappa: f64) -> Tensor {
    -(margin(logits, labels) + kappa).clamp_min(0.0)
}

/// Difference of Logits Ratio (Croce and Hein 2020), untargeted, per example:
/// -(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3 + 1e-12), with z sorted decreasingly as pi.
pub fn dlr(logits: &Tensor, labels: &Tensor) -> Tensor {
    let (sorted, indices) = logits.sort(1, false);
    let true_logit = logits.gather(1, &labels.unsqueeze(1), false).squeeze_dim(1);
    let top = sorted.select(1, -1);
    let second = sorted.select(1, -2);
    let third = sorted.select(1, -3);
    let top_is_true = indices.select(1, -1).eq_tensor(labels).to_kind(Kind::Float);
    let best_other = &second * &top_is_true + &top * (1.0 - &top_is_true);
    let margin: Tensor = true_logit - best_other;
    -margin / (top - third + 1e-12)
}

/// Targeted DLR: -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12).
pub fn dlr_targeted(logits: &Tensor, labels: &Tensor, targets: &Tensor) -> Tensor {
    let (sorted, _) = logits.sort(1, false);
    let true_logit = logits.gather(1, &labels.unsqueeze(1), false).squeeze_dim(1);
    let target_logit = logits.gather(1, &targets.unsqueeze(1), false).squeeze_dim(1);
    let denominator = sorted.select(1, -1) - (sorted.select(1, -3) + sorted.select(1, -4)) * 0.5 + 1e-12;
    let margin: Tensor = true_logit - target_logit;
    -margin / denominator
}
