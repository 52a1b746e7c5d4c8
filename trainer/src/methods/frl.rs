//! FRL, Reweight + Remargin (Xu, Liu, Li, Jain and Tang, "To be Robust or to be Fair: Towards
//! Fairness in Adversarial Training", ICML 2021), with the fairness threshold tau = 0.05 that
//! the ABSLD paper uses (its A.3).
//!
//! A TRADES loss whose two terms are weighted per class, the weights set by Lagrange
//! multipliers of the constraints "a class's clean (boundary) error exceeds the average by at
//! most tau"; a third multiplier enlarges the training radius of classes whose boundary error
//! is too high. After each epoch, on the selection split (validation by default), with
//! e_nat_k = 1 - clean accuracy_k and e_bndy_k = clean accuracy_k - PGD accuracy_k:
//!   phi_nat  <- N(phi_nat  + r1 (e_nat_k  - e_nat  - tau))
//!   phi_bndy <- N(phi_bndy + 2 r1 (e_bndy_k - e_bndy - tau))
//!   phi_rm   <- phi_rm + r2 (e_bndy_k - e_bndy - tau)
//! with N clamping at 0 and rescaling to sum at most `limit`; class weights
//! w_k = 1/C + phi_k - mean(phi) (they sum to 1), radius eps_k = eps * clamp(exp(2 phi_rm_k),
//! 0.98, 3). Loss: sum_i w_nat[y_i] CE_i / sum_i w_nat[y_i] + beta sum_i w_bndy[y_i] KL_i /
//! sum_i w_bndy[y_i], KL_i = KL(f(x_i) || f(x'_i)) as in TRADES.
//!
//! Defaults, from the authors' public code (hannxu123/fair_robust, `frlrmrw.py` and
//! `utils_frl2.py`): r1 = 0.05 (halved at every 40th epoch), r2 = 0.2, limit 0.5, beta = 1.5,
//! the inner step the largest radius of the batch over 4 (our recipes' step is eps / 4, scaled
//! the same way). FRL fine-tunes a robust model: the code loads `hot_start.pt` and trains 40
//! epochs at lr 0.001 with weight decay 5e-4 (its recipe; `--init` gives the model). The
//! multipliers are fitted on a validation hold-out of the training set, never on the test set
//! (the loop guarantees it). Our choices: the multipliers move after each epoch (the code moves
//! them before each, from the starting model, which is the same sequence shifted by one epoch;
//! the halving of r1 is aligned with the code's, before its 40th update), the hold-out's PGD is
//! the loop's selection PGD (20 steps of 2/255, as the code's validation attack), and 1/C
//! replaces the code's hard-coded 1/10.

use serde::{Deserialize, Serialize};
use serde_json::json;
use tch::{Kind, Tensor};

use rfb_core::attacks::losses;

use super::trades::trades_adversarial;

use crate::method::{EpochEnd, StepContext, StepOutput, TrainingMethod};

/// FRL's settings (module docs).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FrlSettings {
    /// Fairness threshold of the constraints (0.05 in the ABSLD paper's A.3).
    pub tau: f64,
    /// Step of the reweighting multipliers (r1); the boundary ones move at twice it.
    pub rate: f64,
    /// Step of the remargin multipliers (r2).
    pub margin_rate: f64,
    /// Largest sum of each reweighting multiplier vector.
    pub limit: f64,
    /// Weight of the boundary term, as TRADES' beta.
    pub beta: f64,
    /// r1 is halved at every this many epochs.
    pub rate_halving_every: i64,
    pub margin_min: f64,
    pub margin_max: f64,
}

pub struct Frl {
    pub tau: f64,
    pub rate: f64,
    pub margin_rate: f64,
    pub limit: f64,
    pub beta: f64,
    pub margin_bounds: (f64, f64),
    rate_halving_every: i64,
    natural_multipliers: Vec<f64>,
    boundary_multipliers: Vec<f64>,
    margin_multipliers: Vec<f64>,
}

impl Frl {
    pub fn new(num_classes: usize, settings: FrlSettings) -> Self {
        Frl {
            tau: settings.tau,
            rate: settings.rate,
            margin_rate: settings.margin_rate,
            limit: settings.limit,
            beta: settings.beta,
            margin_bounds: (settings.margin_min, settings.margin_max),
            rate_halving_every: settings.rate_halving_every,
            natural_multipliers: vec![0.0; num_classes],
            boundary_multipliers: vec![0.0; num_classes],
            margin_multipliers: vec![0.0; num_classes],
        }
    }

    /// Class weights of the clean and the boundary term.
    pub fn class_weights(&self) -> (Vec<f64>, Vec<f64>) {
        (weights_from_multipliers(&self.natural_multipliers), weights_from_multipliers(&self.boundary_multipliers))
    }

    /// Factors of the training radius per class.
    pub fn margin_factors(&self) -> Vec<f64> {
        self.margin_multipliers.iter().map(|m| (2.0 * m).exp().clamp(self.margin_bounds.0, self.margin_bounds.1)).collect()
    }

    /// One multiplier update from class-wise clean and boundary errors (fractions) and the
    /// overall ones.
    pub fn update(&mut self, natural_errors: &[f64], natural_error: f64, boundary_errors: &[f64], boundary_error: f64) {
        let violations = |errors: &[f64], overall: f64| -> Vec<f64> { errors.iter().map(|e| e - overall - self.tau).collect() };
        let natural = violations(natural_errors, natural_error);
        let boundary = violations(boundary_errors, boundary_error);
        let step = |multipliers: &[f64], violations: &[f64], rate: f64| -> Vec<f64> {
            multipliers.iter().zip(violations).map(|(m, v)| m + rate * v).collect()
        };
        self.natural_multipliers = normalise_multipliers(&step(&self.natural_multipliers, &natural, self.rate), self.limit);
        self.boundary_multipliers = normalise_multipliers(&step(&self.boundary_multipliers, &boundary, 2.0 * self.rate), self.limit);
        self.margin_multipliers = step(&self.margin_multipliers, &boundary, self.margin_rate);
    }
}

/// Clamps at 0, then rescales so that the sum is at most `limit`.
pub fn normalise_multipliers(multipliers: &[f64], limit: f64) -> Vec<f64> {
    let clamped: Vec<f64> = multipliers.iter().map(|m| m.max(0.0)).collect();
    let total: f64 = clamped.iter().sum();
    if total > limit {
        clamped.iter().map(|m| limit * m / total).collect()
    } else {
        clamped
    }
}

/// w_k = 1/C + phi_k - mean(phi).
pub fn weights_from_multipliers(multipliers: &[f64]) -> Vec<f64> {
    let classes = multipliers.len() as f64;
    let mean = multipliers.iter().sum::<f64>() / classes;
    multipliers.iter().map(|m| 1.0 / classes + m - mean).collect()
}

/// sum_i w[y_i] value_i / sum_i w[y_i].
fn class_weighted_mean(values: &Tensor, class_weights: &Tensor, labels: &Tensor) -> Tensor {
    let weights = class_weights.index_select(0, labels);
    (values * &weights).sum(Kind::Float) / weights.sum(Kind::Float)
}

impl TrainingMethod for Frl {
    fn name(&self) -> &'static str {
        "frl"
    }

    fn needs_validation(&self) -> bool {
        true
    }

    fn step(&mut self, context: &StepContext, images: &Tensor, labels: &Tensor) -> StepOutput {
        let device = images.device();
        let as_tensor = |v: &[f64]| Tensor::from_slice(v).to_kind(Kind::Float).to_device(device);
        let factors = self.margin_factors();
        let largest = factors.iter().cloned().fold(0.0, f64::max);
        let attack = context.attack;
        let radius = as_tensor(&factors).index_select(0, labels) * attack.eps;
        let step = Tensor::full([labels.size()[0]], attack.step_size * largest, (Kind::Float, device));
        let adversarial = trades_adversarial(context, images, &radius, &step, |_, _, _| {});
        let clean_logits = context.student.forward_t(images, true);
        let adversarial_logits = context.student.forward_t(&adversarial, true);
        let (natural_weights, boundary_weights) = self.class_weights();
        let natural = class_weighted_mean(&losses::cross_entropy(&clean_logits, labels), &as_tensor(&natural_weights), labels);
        let boundary = class_weighted_mean(
            &losses::kl_to_soft_labels(&adversarial_logits, &clean_logits.softmax(-1, Kind::Float)),
            &as_tensor(&boundary_weights),
            labels,
        );
        let loss = natural + boundary * self.beta;
        StepOutput { loss, clean_logits: clean_logits.detach(), adversarial_logits: Some(adversarial_logits.detach()) }
    }

    fn end_epoch(&mut self, end: &EpochEnd) {
        // The code halves r1 before its n-th update when n is a multiple of 40 (1-based);
        // our update after epoch e (0-based) is its update n = e + 2.
        if self.rate_halving_every > 0 && (end.epoch + 2) % self.rate_halving_every == 0 {
            self.rate /= 2.0;
        }
        if let Some((clean, robust)) = end.validation {
            let fraction = |v: Vec<f64>| -> Vec<f64> { v.into_iter().map(|a| if a.is_nan() { 0.0 } else { a / 100.0 }).collect() };
            let clean_accuracy = fraction(clean.class_accuracy());
            let robust_accuracy = fraction(robust.class_accuracy());
            let natural_errors: Vec<f64> = clean_accuracy.iter().map(|a| 1.0 - a).collect();
            let boundary_errors: Vec<f64> = clean_accuracy.iter().zip(&robust_accuracy).map(|(c, r)| c - r).collect();
            let overall_clean = clean.overall_accuracy() / 100.0;
            let overall_robust = robust.overall_accuracy() / 100.0;
            self.update(&natural_errors, 1.0 - overall_clean, &boundary_errors, overall_clean - overall_robust);
        }
    }

    fn state(&self) -> serde_json::Value {
        json!({
            "natural": self.natural_multipliers,
            "boundary": self.boundary_multipliers,
            "margin": self.margin_multipliers,
            "rate": self.rate,
        })
    }

    fn restore(&mut self, state: &serde_json::Value) -> Result<(), String> {
        let classes = self.natural_multipliers.len();
        let vector = |key: &str| -> Result<Vec<f64>, String> {
            let v: Vec<f64> = serde_json::from_value(state[key].clone()).map_err(|e| format!("FRL state '{key}': {e}"))?;
            if v.len() != classes {
                return Err("FRL state has the wrong number of classes".into());
            }
            Ok(v)
        };
        self.natural_multipliers = vector("natural")?;
        self.boundary_multipliers = vector("boundary")?;
        self.margin_multipliers = vector("margin")?;
        self.rate = state["rate"].as_f64().ok_or("FRL state lacks rate")?;
        Ok(())
    }

    fn hyperparameters(&self) -> serde_json::Value {
        json!({
            "tau": self.tau, "rate": self.rate, "margin_rate": self.margin_rate, "limit": self.limit,
            "beta": self.beta, "margin_min": self.margin_bounds.0, "margin_max": self.margin_bounds.1,
            "rate_halving_every": self.rate_halving_every, "variant": "reweight+remargin",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(found: &[f64], expected: &[f64]) {
        for (f, e) in found.iter().zip(expected) {
            assert!((f - e).abs() < 1e-5, "{found:?} vs {expected:?}");
        }
    }

    pub(crate) fn defaults() -> FrlSettings {
        FrlSettings {
            tau: 0.05,
            rate: 0.05,
            margin_rate: 0.2,
            limit: 0.5,
            beta: 1.5,
            rate_halving_every: 40,
            margin_min: 0.98,
            margin_max: 3.0,
        }
    }

    #[test]
    fn multipliers_weights_and_margins_follow_the_constraints() {
        let mut frl = Frl::new(3, defaults());
        // Clean errors (0.10, 0.20, 0.45), overall 0.25: violations (-0.20, -0.10, 0.15);
        // phi_nat = clamp(0.05 v, 0) = (0, 0, 0.0075); w = 1/3 + phi - mean(phi).
        // Boundary errors (0.2, 0.3, 0.4), overall 0.3: violations (-0.15, -0.05, 0.05);
        // phi_bndy = clamp(0.1 v, 0) = (0, 0, 0.005); phi_rm = 0.2 v = (-0.03, -0.01, 0.01).
        frl.update(&[0.10, 0.20, 0.45], 0.25, &[0.2, 0.3, 0.4], 0.30);
        let (natural, boundary) = frl.class_weights();
        close(&natural, &[0.330833, 0.330833, 0.338333]);
        close(&boundary, &[0.331667, 0.331667, 0.336667]);
        assert!((natural.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        // Radius factors exp(2 phi_rm): exp(-0.06) = 0.9418 is raised to the bound 0.98.
        close(&frl.margin_factors(), &[0.98, 0.980199, 1.020201]);
        // The worst class keeps gaining weight and radius while it violates the constraint.
        frl.update(&[0.10, 0.20, 0.45], 0.25, &[0.2, 0.3, 0.4], 0.30);
        assert!(frl.class_weights().0[2] > natural[2]);
        assert!(frl.margin_factors()[2] > 1.020201);
    }

    #[test]
    fn normalisation_clamps_at_zero_and_caps_the_sum() {
        close(&normalise_multipliers(&[0.4, 0.3, -0.2], 0.5), &[0.285714, 0.214286, 0.0]);
        close(&normalise_multipliers(&[0.1, 0.2, -0.2], 0.5), &[0.1, 0.2, 0.0]);
        close(&weights_from_multipliers(&[0.285714, 0.214286, 0.0]), &[0.452381, 0.380952, 0.166667]);
    }

    #[test]
    fn the_rate_halves_before_the_codes_fortieth_update() {
        // The code halves r1 at its (1-based) epoch 40, before that epoch's update; that update
        // is ours after epoch 38 (0-based), so the rate is halved from then on.
        let student = rfb_core::models::build(&rfb_core::models::ModelSpec::new("digits-cnn", 3, [1, 8, 8]), tch::Device::Cpu).unwrap();
        let risks = crate::method::EpochRisks { clean: vec![1.0; 3], adversarial: None };
        let mut frl = Frl::new(3, defaults());
        let mut rates = Vec::new();
        for epoch in 0..80 {
            frl.end_epoch(&EpochEnd {
                epoch,
                epochs: 80,
                risks: &risks,
                train_clean_accuracy: &[0.5; 3],
                train_adversarial_accuracy: None,
                validation: None,
                lr_decayed: false,
                student: &student,
            });
            rates.push(frl.rate);
        }
        assert_eq!(rates[37], 0.05);
        assert_eq!(rates[38], 0.025);
        assert_eq!(rates[77], 0.025);
        assert_eq!(rates[78], 0.0125);
    }
}
