//! Fair-ARD in its Fair-RSLAD form (Yue, Mou, Wang and Zhao, "Revisiting Adversarial Robustness
//! Distillation from the Perspective of Robust Fairness", NeurIPS 2023).
//!
//! RSLAD's loss (soft labels from the teacher's clean prediction, alpha = 5/6) with every
//! example weighted by its class's weight, the weights favouring the classes that are easiest
//! to attack. A class's vulnerability is measured on the student during its own training
//! attack: kappa_i counts the iterates of the inner maximisation (start included, final
//! iterate not) at which example i is still classified correctly, so 0..=steps; the class mean
//! of kappa over an epoch sets the next epoch's weights (the first epoch uses ones):
//!   r_k = (1 / (mean kappa_k + 1e-5))^beta,  w_k = clamp(C r_k / sum_j r_j, 5/6, 5/2).
//!
//! Defaults, from the authors' public code (NISP-official/Fair-ARD, `Fair-RSLAD.py`, whose
//! README runs every experiment with beta = 2): beta = 2, bounds [5/6, 5/2] with no
//! re-normalisation after clamping; the inner maximisation is RSLAD's and is not re-weighted.
//! Our choices: the class means divide by each class's count in the epoch (the code divides by
//! N/C, the same on balanced data), the weighted KL terms are batch means, and the 1e-5 guard
//! of the Fair-ARD script is kept so that a class never correct gets a finite weight.

use serde_json::json;
use tch::{Device, Kind, Tensor};

use super::distillation::weighted_distillation_step;
use crate::method::{EpochEnd, StepContext, StepOutput, TrainingMethod};

pub struct FairArd {
    alpha: f64,
    pub beta: f64,
    pub weight_bounds: (f64, f64),
    weights: Vec<f64>,
    /// Per-class sums of kappa and example counts over the current epoch (on the device).
    kappa_sums: Option<(Tensor, Tensor)>,
}

impl FairArd {
    pub fn new(num_classes: usize, alpha: f64) -> Self {
        FairArd { alpha, beta: 2.0, weight_bounds: (5.0 / 6.0, 2.5), weights: vec![1.0; num_classes], kappa_sums: None }
    }

    pub fn weights(&self) -> &[f64] {
        &self.weights
    }
}

/// Class weights from the class means of kappa (module docs).
pub fn weights_from_vulnerability(mean_kappa: &[f64], beta: f64, bounds: (f64, f64)) -> Vec<f64> {
    let raw: Vec<f64> = mean_kappa.iter().map(|&k| (1.0 / (k + 1e-5)).powf(beta)).collect();
    let total: f64 = raw.iter().sum();
    let classes = raw.len() as f64;
    raw.iter().map(|r| (classes * r / total).clamp(bounds.0, bounds.1)).collect()
}

impl TrainingMethod for FairArd {
    fn name(&self) -> &'static str {
        "fair-ard"
    }

    fn needs_teacher(&self) -> bool {
        true
    }

    fn step(&mut self, context: &StepContext, images: &Tensor, labels: &Tensor) -> StepOutput {
        let device = images.device();
        let classes = self.weights.len() as i64;
        let (kappa, counts) = self.kappa_sums.get_or_insert_with(|| {
            let zeros = || Tensor::zeros([classes], (Kind::Double, device));
            (zeros(), zeros())
        });
        let ones = Tensor::ones([classes], (Kind::Float, device));
        let class_weights = Tensor::from_slice(&self.weights).to_kind(Kind::Float).to_device(device);
        let example_weights = class_weights.index_select(0, labels);
        let mut correct_iterates = Tensor::zeros([labels.size()[0]], (Kind::Double, device));
        let output = weighted_distillation_step(
            context,
            images,
            labels,
            &ones,
            &ones,
            self.alpha,
            Some(&example_weights),
            |_, _, logits| {
                correct_iterates += logits.argmax(-1, false).eq_tensor(labels).to_kind(Kind::Double);
            },
        );
        let _ = kappa.index_add_(0, labels, &correct_iterates);
        let _ = counts.index_add_(0, labels, &Tensor::ones_like(&correct_iterates));
        output
    }

    fn end_epoch(&mut self, _end: &EpochEnd) {
        if let Some((kappa, counts)) = self.kappa_sums.take() {
            let means: Vec<f64> = Vec::try_from((kappa / counts.clamp_min(1.0)).to_device(Device::Cpu)).unwrap_or_default();
            if means.len() == self.weights.len() {
                self.weights = weights_from_vulnerability(&means, self.beta, self.weight_bounds);
            }
        }
    }

    fn state(&self) -> serde_json::Value {
        json!({"weights": self.weights})
    }

    fn restore(&mut self, state: &serde_json::Value) -> Result<(), String> {
        let weights: Vec<f64> = serde_json::from_value(state["weights"].clone()).map_err(|e| format!("Fair-ARD state: {e}"))?;
        if weights.len() != self.weights.len() {
            return Err("Fair-ARD state has the wrong number of classes".into());
        }
        self.weights = weights;
        Ok(())
    }

    fn hyperparameters(&self) -> serde_json::Value {
        json!({"alpha": self.alpha, "beta": self.beta, "weight_min": self.weight_bounds.0, "weight_max": self.weight_bounds.1, "variant": "Fair-RSLAD"})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vulnerable_classes_get_more_weight_within_the_bounds() {
        // kappa means (6, 5, 4), beta 2: r = (1/36, 1/25, 1/16), normalised to sum 3:
        // (0.639660, 0.921109, 1.439232); the first is raised to the lower bound 5/6.
        let weights = weights_from_vulnerability(&[6.0, 5.0, 4.0], 2.0, (5.0 / 6.0, 2.5));
        for (w, expected) in weights.iter().zip([0.833333, 0.921109, 1.439232]) {
            assert!((w - expected).abs() < 1e-5, "{weights:?}");
        }
        // (8, 4, 2): (0.142858, 0.571431, 2.285711) -> both easy classes at 5/6; no
        // re-normalisation after clamping.
        let weights = weights_from_vulnerability(&[8.0, 4.0, 2.0], 2.0, (5.0 / 6.0, 2.5));
        for (w, expected) in weights.iter().zip([0.833333, 0.833333, 2.285711]) {
            assert!((w - expected).abs() < 1e-5, "{weights:?}");
        }
        // A class never classified correctly during the attack gets the upper bound, finitely.
        let weights = weights_from_vulnerability(&[0.0, 5.0, 5.0], 2.0, (5.0 / 6.0, 2.5));
        assert_eq!(weights[0], 2.5);
        assert!(weights.iter().all(|w| w.is_finite()));
    }
}
