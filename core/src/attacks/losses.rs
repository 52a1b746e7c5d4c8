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

/// Carlini-Wagner margin: max_{j != y} z_j - z_y, floored at -kappa (higher = closer to a
/// mistake). Maximising it pushes the best wrong class above the true one by up to kappa.
pub fn cw_margin(logits: &Tensor, labels: &Tensor, kappa: f64) -> Tensor {
    let true_logit = logits.gather(1, &labels.unsqueeze(1), false).squeeze_dim(1);
    let masked = logits.scatter_value(1, &labels.unsqueeze(1), f64::NEG_INFINITY);
    let best_other = masked.amax(&[1i64][..], false);
    (best_other - true_logit).clamp_min(-kappa)
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
