//! CFA in its TRADES + CFA form (Wei, Wang, Guo and Wang, "CFA: Class-wise Calibrated Fair
//! Adversarial Training", CVPR 2023).
//!
//! Three class-wise parts, all driven by t_k, class k's robust accuracy on the training
//! adversarial examples of the previous epoch (plain settings until the calibration starts):
//! - calibrated margin (CCM, Eq. 6): the training radius of class k is eps_k = (lambda1 + t_k) eps;
//! - calibrated regularisation (CCR, Eqs. 7-8): beta_k = (lambda2 + t_k) beta, and the loss per
//!   example is (CE(f(x), y) + beta_y KL(f(x) || f(x'))) / (1 + beta_y);
//! - fairness-aware weight averaging (FAWA, section 4.3): after each epoch from `average_from`
//!   on, if the worst classes' PGD accuracy on the validation hold-out is at least delta, the
//!   average absorbs the weights, theta_avg <- d theta_avg + (1 - d) theta (the first accepted
//!   epoch copies them); otherwise the epoch is skipped. The average (batch-norm statistics
//!   included) is what is evaluated, selected and saved. "The worst classes" is the single
//!   worst class on CIFAR-10; on CIFAR-100 the ABSLD paper (A.3) uses the worst 10% with
//!   delta = 0.02.
//!
//! Defaults, from the CFA paper's section 5.1 for TRADES + CFA (as first read for this file):
//! lambda1 = 0.3, lambda2 = 0.5, beta = 6, d = 0.85, delta = 0.2, averaging from epoch 50 of
//! 200 (we start at the same fraction, a quarter of the run). From the authors' code
//! (PKU-ML/CFA, `train.py`, `attack.py`): CCM and CCR start at epoch 10 of 200 (`--begin 10`;
//! we start at the same fraction, 5% of the run), the inner step stays the recipe's (not scaled
//! with eps_k), the KL is summed over classes and averaged over the batch, and the schedule
//! (200 epochs, lr 0.1 divided by 10 at 50% and 75%, weight decay 5e-4) is in the recipes. The
//! code's own defaults differ from the paper's (`--lambda-1 0.5`, `--decay-rate 0.88`,
//! `--threshold 0.24`, averaging from epoch 0); we follow the paper. Our choices: t_k uses the
//! adversarial logits of the training steps (the code's statistic, per-class accuracy on
//! unbalanced data too), FAWA's check uses the loop's selection PGD (20 steps; the code's is
//! PGD-10) on the validation hold-out, which the loop uses whatever the selection split.

use serde_json::json;
use tch::{Kind, Tensor};

use rfb_core::attacks::losses;
#[cfg(test)]
use rfb_core::attacks::ClassCounts;

use super::trades::trades_adversarial;
use serde::{Deserialize, Serialize};

use crate::method::{EpochEnd, StepContext, StepOutput, TrainingMethod};
use crate::selection::WorstClasses;

/// CFA's settings (module docs).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CfaSettings {
    /// lambda1 of CCM.
    pub margin_lambda: f64,
    /// lambda2 of CCR.
    pub regularisation_lambda: f64,
    /// TRADES' beta, calibrated per class by CCR.
    pub beta: f64,
    /// Fraction of the run after which CCM and CCR are used (the first epochs are plain).
    pub calibration_from_fraction: f64,
    /// FAWA's decay d.
    pub average_decay: f64,
    /// FAWA's threshold delta on the worst classes' validation PGD accuracy (a fraction).
    pub average_threshold: f64,
    /// Which classes the threshold looks at.
    pub average_worst: WorstClasses,
    /// Fraction of the run after which averaging may start.
    pub average_from_fraction: f64,
}

pub struct Cfa {
    pub margin_lambda: f64,
    pub regularisation_lambda: f64,
    pub beta: f64,
    pub calibration_from_fraction: f64,
    pub average_decay: f64,
    pub average_threshold: f64,
    pub average_worst: WorstClasses,
    /// Fraction of the run after which averaging may start.
    pub average_from_fraction: f64,
    /// t_k from the previous epoch (fractions); `None` until the calibration starts.
    train_robust_accuracy: Option<Vec<f64>>,
    averaged: Option<Vec<(String, Tensor)>>,
}

impl Cfa {
    pub fn new(settings: CfaSettings) -> Self {
        Cfa {
            margin_lambda: settings.margin_lambda,
            regularisation_lambda: settings.regularisation_lambda,
            beta: settings.beta,
            calibration_from_fraction: settings.calibration_from_fraction,
            average_decay: settings.average_decay,
            average_threshold: settings.average_threshold,
            average_worst: settings.average_worst,
            average_from_fraction: settings.average_from_fraction,
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
        // The next epoch calibrates from this one's statistics once it is past the start
        // (the code: `epoch >= begin` uses the previous epoch's train robust accuracy).
        let calibration_start = (self.calibration_from_fraction * end.epochs as f64).round() as i64;
        if let (Some(accuracy), true) = (end.train_adversarial_accuracy, end.epoch + 1 >= calibration_start) {
            self.train_robust_accuracy = Some(accuracy.to_vec());
        }
        let start = (self.average_from_fraction * end.epochs as f64).floor() as i64;
        if let (Some((_, robust)), true) = (end.validation, end.epoch >= start) {
            let worst = self.average_worst.accuracy(&robust.class_accuracy()) / 100.0;
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
        let mut averaged: Vec<(String, Tensor)> =
            tensors.into_iter().filter_map(|(name, tensor)| name.strip_prefix("average.").map(|n| (n.to_string(), tensor))).collect();
        averaged.sort_by(|a, b| a.0.cmp(&b.0));
        self.averaged = (!averaged.is_empty()).then_some(averaged);
        Ok(())
    }

    fn hyperparameters(&self) -> serde_json::Value {
        json!({
            "margin_lambda": self.margin_lambda, "regularisation_lambda": self.regularisation_lambda, "beta": self.beta,
            "calibration_from_fraction": self.calibration_from_fraction,
            "average_decay": self.average_decay, "average_threshold": self.average_threshold,
            "average_worst": self.average_worst, "average_from_fraction": self.average_from_fraction,
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
        let settings = CfaSettings {
            margin_lambda: 0.3,
            regularisation_lambda: 0.5,
            beta: 6.0,
            calibration_from_fraction: 0.05,
            average_decay: 0.85,
            average_threshold: 0.2,
            average_worst: WorstClasses::Class,
            average_from_fraction: 0.25,
        };
        let (radii, betas) = Cfa::new(settings).calibrated(0.1, 3);
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

    fn settings(average_worst: WorstClasses, average_threshold: f64) -> CfaSettings {
        CfaSettings {
            margin_lambda: 0.3,
            regularisation_lambda: 0.5,
            beta: 6.0,
            calibration_from_fraction: 0.05,
            average_decay: 0.85,
            average_threshold,
            average_worst,
            average_from_fraction: 0.0,
        }
    }

    #[test]
    fn the_averaging_threshold_reads_the_worst_tenth_where_the_recipe_says_and_calibration_waits() {
        let classes = 20;
        let student =
            rfb_core::models::build(&rfb_core::models::ModelSpec::new("digits-cnn", classes, [1, 8, 8]), tch::Device::Cpu).unwrap();
        let risks = crate::method::EpochRisks { clean: vec![1.0; classes as usize], adversarial: None };
        // Validation PGD: class 0 at 0/10, class 1 at 1/10, the rest at 10/10. Worst class 0,
        // worst 10% (2 classes) 0.05.
        let mut robust = ClassCounts::new(classes as usize);
        robust.total = vec![10; classes as usize];
        robust.correct = vec![10; classes as usize];
        robust.correct[0] = 0;
        robust.correct[1] = 1;
        let clean = robust.clone();
        let train = vec![0.25; classes as usize];
        let end = |epoch: i64| EpochEnd {
            epoch,
            epochs: 200,
            risks: &risks,
            train_clean_accuracy: &train,
            train_adversarial_accuracy: Some(&train),
            validation: Some((&clean, &robust)),
            lr_decayed: false,
            student: &student,
        };
        // CIFAR-100's rule (A.3): 0.05 >= 0.02 on the worst 10%, the average starts.
        let mut cfa = Cfa::new(settings(WorstClasses::Fraction(0.1), 0.02));
        cfa.end_epoch(&end(0));
        assert!(cfa.averaged_weights().is_some());
        // The worst class alone (0) is below the same threshold: no average.
        let mut cfa = Cfa::new(settings(WorstClasses::Class, 0.02));
        cfa.end_epoch(&end(0));
        assert!(cfa.averaged_weights().is_none());
        // CCM and CCR start at epoch 10 of 200 (the code's --begin 10): epoch 9 (0-based) is
        // the last plain one, so its statistics are the first used.
        let mut cfa = Cfa::new(settings(WorstClasses::Class, 0.2));
        cfa.end_epoch(&end(7));
        assert_eq!(cfa.calibrated(0.1, 20).1, vec![6.0; 20]);
        cfa.end_epoch(&end(8));
        assert_eq!(cfa.calibrated(0.1, 20).1, vec![6.0; 20]);
        cfa.end_epoch(&end(9));
        // t_k = 0.25: beta_k = (0.5 + 0.25) * 6 = 4.5, eps_k = (0.3 + 0.25) * 0.1 = 0.055.
        let (radii, betas) = cfa.calibrated(0.1, 20);
        assert!(betas.iter().all(|b| (b - 4.5).abs() < 1e-12), "{betas:?}");
        assert!(radii.iter().all(|r| (r - 0.055).abs() < 1e-12), "{radii:?}");
    }
}
