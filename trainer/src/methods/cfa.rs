//! CFA in its TRADES + CFA form (Wei, Wang, Guo and Wang, "CFA: Class-wise Calibrated Fair
//! Adversarial Training", CVPR 2023).
//!
//! Three class-wise parts, all driven by t_k, class k's robust accuracy on the training
//! adversarial examples of the previous epoch (the first epoch uses the plain settings):
//! - calibrated margin (CCM, Eq. 6): the training radius of class k is eps_k = (lambda1 + t_k) eps;
//! - calibrated regularisation (CCR, Eqs. 7-8): beta_k = (lambda2 + t_k) beta, and the loss per
//!   example is (CE(f(x), y) + beta_y KL(f(x) || f(x'))) / (1 + beta_y);
//! - fairness-aware weight averaging (FAWA, section 4.3): after each epoch from `average_from`
//!   on, if the worst class's PGD accuracy on the validation split is at least delta, the
//!   average absorbs the weights, theta_avg <- d theta_avg + (1 - d) theta (the first accepted
//!   epoch copies them); otherwise the epoch is skipped. The average (batch-norm statistics
//!   included) is what is evaluated, selected and saved.
//!
//! Defaults, from the paper's section 5.1 for TRADES + CFA: lambda1 = 0.3, lambda2 = 0.5,
//! beta = 6, d = 0.85, delta = 0.2, averaging from epoch 50 of 200 (we start at the same
//! fraction, a quarter of the run). The inner step stays the preset's (not scaled with
//! eps_k), as in the authors' code (PKU-ML/CFA, `attack.py`). Our choices: t_k uses the
//! adversarial logits of the training steps (the code's statistic, per-class accuracy on
//! unbalanced data too), and FAWA's check uses the loop's selection PGD (20 steps; the code's
//! is PGD-10).

use serde_json::json;
use tch::{Kind, Tensor};

use rfb_core::attacks::losses;

use super::trades::trades_adversarial;

use crate::method::{EpochEnd, StepContext, StepOutput, TrainingMethod};

pub struct Cfa {
    pub margin_lambda: f64,
    pub regularisation_lambda: f64,
    pub beta: f64,
    pub average_decay: f64,
    pub average_threshold: f64,
    /// Fraction of the run after which averaging may start.
    pub average_from_fraction: f64,
    /// t_k from the previous epoch (fractions); `None` in the first epoch.
    train_robust_accuracy: Option<Vec<f64>>,
    averaged: Option<Vec<(String, Tensor)>>,
}

impl Cfa {
    pub fn new() -> Self {
        Cfa {
            margin_lambda: 0.3,
            regularisation_lambda: 0.5,
            beta: 6.0,
            average_decay: 0.85,
            average_threshold: 0.2,
            average_from_fraction: 0.25,
            train_robust_accuracy: None,
            averaged: None,
        }
    }

    /// eps_k and beta_k for every class (Eqs. 6 and 7), or the plain ones before any epoch.
    pub fn calibrated(&self, eps: f64, num_classes: usize) -> (Vec<f64>, Vec<f64>) {
        match &self.train_robust_accuracy {
            Some(t) => calibrate(t, eps, self.beta, self.margin_lambda, self.regularisation_lambda),
            None => (vec![eps; num_classes], vec![self.beta; num_classes]),
        }
    }
}

impl Default for Cfa {
    fn default() -> Self {
        Cfa::new()
    }
}

/// eps_k = (lambda1 + t_k) eps and beta_k = (lambda2 + t_k) beta.
pub fn calibrate(train_robust_accuracy: &[f64], eps: f64, beta: f64, lambda1: f64, lambda2: f64) -> (Vec<f64>, Vec<f64>) {
    let radii = train_robust_accuracy.iter().map(|t| (lambda1 + t) * eps).collect();
    let betas = train_robust_accuracy.iter().map(|t| (lambda2 + t) * beta).collect();
    (radii, betas)
}

/// FAWA's rule: absorbs `weights` into `average` when `worst_class_accuracy` (a fraction) is at
/// least `threshold`, copying them when there is no average yet. Returns whether it absorbed.
pub fn fairness_aware_average(
    average: &mut Option<Vec<(String, Tensor)>>,
    weights: &[(String, Tensor)],
    worst_class_accuracy: f64,
    threshold: f64,
    decay: f64,
) -> bool {
    if worst_class_accuracy < threshold {
        return false;
    }
    tch::no_grad(|| match average {
        None => *average = Some(weights.iter().map(|(n, t)| (n.clone(), t.detach().copy())).collect()),
        Some(current) => {
            for ((name, averaged), (other, value)) in current.iter_mut().zip(weights) {
                debug_assert_eq!(name, other);
                *averaged = averaged.to_device(value.device()) * decay + value.detach() * (1.0 - decay);
            }
        }
    });
    true
}

impl TrainingMethod for Cfa {
    fn name(&self) -> &'static str {
        "cfa"
    }

    fn needs_validation(&self) -> bool {
        true
    }

    fn step(&mut self, context: &StepContext, images: &Tensor, labels: &Tensor) -> StepOutput {
        let device = images.device();
        let attack = context.attack;
        let (radii, betas) = self.calibrated(attack.eps, context.student.spec.num_classes as usize);
        let per_example = |v: &[f64]| Tensor::from_slice(v).to_kind(Kind::Float).to_device(device).index_select(0, labels);
        let radius = per_example(&radii);
        let beta = per_example(&betas);
        let step = Tensor::full([labels.size()[0]], attack.step_size, (Kind::Float, device));
        let adversarial = trades_adversarial(context, images, &radius, &step, |_, _, _| {});
        let clean_logits = context.student.forward_t(images, true);
        let adversarial_logits = context.student.forward_t(&adversarial, true);
        let cross_entropy = losses::cross_entropy(&clean_logits, labels);
        let robust = losses::kl_to_soft_labels(&adversarial_logits, &clean_logits.softmax(-1, Kind::Float));
        let loss = ((cross_entropy + &beta * robust) / (&beta + 1.0)).mean(Kind::Float);
        StepOutput { loss, clean_logits: clean_logits.detach(), adversarial_logits: Some(adversarial_logits.detach()) }
    }

    fn end_epoch(&mut self, end: &EpochEnd) {
        if let Some(accuracy) = end.train_adversarial_accuracy {
            self.train_robust_accuracy = Some(accuracy.to_vec());
        }
        let start = (self.average_from_fraction * end.epochs as f64).floor() as i64;
        if let (Some((_, robust)), true) = (end.validation, end.epoch >= start) {
            let worst = robust.class_accuracy().into_iter().filter(|a| !a.is_nan()).fold(f64::INFINITY, f64::min) / 100.0;
            let weights: Vec<(String, Tensor)> = end.student.var_store.variables().into_iter().collect();
            let mut sorted = weights;
            sorted.sort_by(|a, b| a.0.cmp(&b.0));
            fairness_aware_average(&mut self.averaged, &sorted, worst, self.average_threshold, self.average_decay);
        }
    }

    fn averaged_weights(&self) -> Option<&[(String, Tensor)]> {
        self.averaged.as_deref()
    }

    fn state(&self) -> serde_json::Value {
        json!({"train_robust_accuracy": self.train_robust_accuracy})
    }

    fn restore(&mut self, state: &serde_json::Value) -> Result<(), String> {
        self.train_robust_accuracy =
            serde_json::from_value(state["train_robust_accuracy"].clone()).map_err(|e| format!("CFA state: {e}"))?;
        Ok(())
    }

    fn tensor_state(&self) -> Vec<(String, Tensor)> {
        self.averaged.iter().flatten().map(|(name, tensor)| (format!("average.{name}"), tensor.shallow_clone())).collect()
    }

    fn restore_tensors(&mut self, tensors: std::collections::HashMap<String, Tensor>) -> Result<(), String> {
        let mut averaged: Vec<(String, Tensor)> = tensors
            .into_iter()
            .filter_map(|(name, tensor)| name.strip_prefix("average.").map(|n| (n.to_string(), tensor)))
            .collect();
        averaged.sort_by(|a, b| a.0.cmp(&b.0));
        self.averaged = (!averaged.is_empty()).then_some(averaged);
        Ok(())
    }

    fn hyperparameters(&self) -> serde_json::Value {
        json!({
            "margin_lambda": self.margin_lambda, "regularisation_lambda": self.regularisation_lambda, "beta": self.beta,
            "average_decay": self.average_decay, "average_threshold": self.average_threshold,
            "average_from_fraction": self.average_from_fraction,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn margins_and_regularisation_are_calibrated_per_class() {
        // t = (0.2, 0.5, 0.8), lambda1 = 0.3, lambda2 = 0.5, eps = 8/255, beta = 6:
        // eps_k = (0.5, 0.8, 1.1) * 8/255 = (4.0, 6.4, 8.8)/255; beta_k = (4.2, 6.0, 7.8).
        let (radii, betas) = calibrate(&[0.2, 0.5, 0.8], 8.0 / 255.0, 6.0, 0.3, 0.5);
        for (r, e) in radii.iter().zip([4.0, 6.4, 8.8]) {
            assert!((r * 255.0 - e).abs() < 1e-9, "{radii:?}");
        }
        for (b, e) in betas.iter().zip([4.2, 6.0, 7.8]) {
            assert!((b - e).abs() < 1e-9, "{betas:?}");
        }
        // Before any epoch: the plain radius and beta for every class.
        let (radii, betas) = Cfa::new().calibrated(0.1, 3);
        assert_eq!(radii, vec![0.1; 3]);
        assert_eq!(betas, vec![6.0; 3]);
    }

    #[test]
    fn weight_average_absorbs_only_fair_enough_epochs() {
        let weights = |v: f32| vec![("w".to_string(), Tensor::from_slice(&[v]))];
        let value = |average: &Option<Vec<(String, Tensor)>>| f64::try_from(&average.as_ref().unwrap()[0].1.get(0)).unwrap();
        let mut average = None;
        // Worst class at 0.18 < 0.2: skipped, nothing averaged yet.
        assert!(!fairness_aware_average(&mut average, &weights(5.0), 0.18, 0.2, 0.85));
        assert!(average.is_none());
        // The first accepted epoch copies the weights.
        assert!(fairness_aware_average(&mut average, &weights(1.0), 0.25, 0.2, 0.85));
        assert!((value(&average) - 1.0).abs() < 1e-7);
        // 0.85 * 1.0 + 0.15 * 2.0 = 1.15 when accepted; unchanged when not.
        assert!(!fairness_aware_average(&mut average, &weights(2.0), 0.18, 0.2, 0.85));
        assert!((value(&average) - 1.0).abs() < 1e-7);
        assert!(fairness_aware_average(&mut average, &weights(2.0), 0.22, 0.2, 0.85));
        assert!((value(&average) - 1.15).abs() < 1e-6);
    }
}
