//! ARD (Goldblum, Fowl, Feizi and Goldstein, "Adversarially Robust Distillation", AAAI 2020).
//!
//! The student is attacked on its own cross-entropy against the true labels (PGD from a uniform
//! start, no teacher involved), then trained to match the teacher's clean prediction at
//! temperature t on that adversarial point, plus a clean cross-entropy term:
//!   alpha * t^2 * KL(softmax(T(x)/t) || softmax(S(x_adv)/t)) + (1 - alpha) * CE(S(x), y).
//!
//! Defaults, from the authors' public code (goldblum/AdversariallyRobustDistillation,
//! `main.py`): t = 30, alpha = 1 (the clean term is off), PGD-10 of 2/255 within 8/255 on
//! CIFAR, and the KL at the code's scale: `nn.KLDivLoss()` averages over the batch *and* the
//! classes, so the class-summed KL's batch mean is multiplied by `kl_scale` = 1/C (the recipe
//! sets it per data set). Our choice where the code differs: the student is in eval mode while
//! attacked, as in every method here (the code leaves batch norm in train mode during the
//! attack).

use rfb_core::attacks::losses;

use super::sat::madry_adversarial;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tch::{Kind, Tensor};

use crate::method::{StepContext, StepOutput, TrainingMethod};

/// ARD's temperature, loss weight and KL scale.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ArdSettings {
    pub temperature: f64,
    pub alpha: f64,
    /// Factor on the batch mean of the class-summed KL (1/C: `nn.KLDivLoss()`'s mean).
    pub kl_scale: f64,
}

pub struct Ard {
    pub settings: ArdSettings,
}

impl Ard {
    pub fn new(settings: ArdSettings) -> Self {
        Ard { settings }
    }
}

/// ARD's loss: alpha * t^2 * kl_scale * mean_i KL(softmax(teacher_i/t) ||
/// softmax(student_adversarial_i/t)) + (1 - alpha) * mean_i CE(student_clean_i, y_i).
pub fn ard_loss(
    student_adversarial_logits: &Tensor,
    student_clean_logits: &Tensor,
    teacher_clean_logits: &Tensor,
    labels: &Tensor,
    settings: ArdSettings,
) -> Tensor {
    let ArdSettings { temperature, alpha, kl_scale } = settings;
    let teacher_soft = (teacher_clean_logits / temperature).softmax(-1, Kind::Float);
    let distillation = losses::kl_to_soft_labels(&(student_adversarial_logits / temperature), &teacher_soft).mean(Kind::Float);
    let clean = losses::cross_entropy(student_clean_logits, labels).mean(Kind::Float);
    distillation * (alpha * temperature * temperature * kl_scale) + clean * (1.0 - alpha)
}

impl TrainingMethod for Ard {
    fn name(&self) -> &'static str {
        "ard"
    }

    fn needs_teacher(&self) -> bool {
        true
    }

    fn step(&mut self, context: &StepContext, images: &Tensor, labels: &Tensor) -> StepOutput {
        let teacher = context.teacher.expect("ARD needs a teacher; the loop checks this");
        let teacher_logits = tch::no_grad(|| teacher.forward_t(images, false));
        let adversarial = madry_adversarial(context, images, labels);
        let adversarial_logits = context.student.forward_t(&adversarial, true);
        let clean_logits = context.student.forward_t(images, true);
        let loss = ard_loss(&adversarial_logits, &clean_logits, &teacher_logits, labels, self.settings);
        StepOutput { loss, clean_logits: clean_logits.detach(), adversarial_logits: Some(adversarial_logits.detach()) }
    }

    fn hyperparameters(&self) -> serde_json::Value {
        json!({
            "temperature": self.settings.temperature, "alpha": self.settings.alpha, "kl_scale": self.settings.kl_scale,
            "start": "uniform", "inner_loss": "student CE",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temperature_scaled_loss_matches_a_hand_computation() {
        // t = 2, alpha = 0.9, one example of class 0. Teacher softmax([1, 0] / 2) =
        // (0.622459, 0.377541); student softmax([2, 0] / 2) = (0.731059, 0.268941);
        // KL = 0.027955, times t^2 = 0.111820; CE of clean logits (0.5, -0.5) = 0.313262;
        // 0.9 * 0.111820 + 0.1 * 0.313262 = 0.131964.
        let student_adversarial = Tensor::from_slice(&[2.0f32, 0.0]).view([1, 2]);
        let student_clean = Tensor::from_slice(&[0.5f32, -0.5]).view([1, 2]);
        let teacher = Tensor::from_slice(&[1.0f32, 0.0]).view([1, 2]);
        let labels = Tensor::from_slice(&[0i64]);
        let settings = |temperature: f64, alpha: f64, kl_scale: f64| ArdSettings { temperature, alpha, kl_scale };
        let loss = f64::try_from(ard_loss(&student_adversarial, &student_clean, &teacher, &labels, settings(2.0, 0.9, 1.0))).unwrap();
        assert!((loss - 0.131964).abs() < 1e-5, "{loss}");
        // With alpha = 1 (the default) only the distillation term is left: t^2 KL, and at the
        // code's scale (1/C, here C = 2) half of it.
        let loss = f64::try_from(ard_loss(&student_adversarial, &student_clean, &teacher, &labels, settings(2.0, 1.0, 1.0))).unwrap();
        assert!((loss - 0.111820).abs() < 1e-5, "{loss}");
        let loss = f64::try_from(ard_loss(&student_adversarial, &student_clean, &teacher, &labels, settings(2.0, 1.0, 0.5))).unwrap();
        assert!((loss - 0.055910).abs() < 1e-5, "{loss}");
        // A student that matches the teacher has no distillation loss (up to float rounding,
        // which t^2 = 900 magnifies).
        let loss = f64::try_from(ard_loss(&teacher, &student_clean, &teacher, &labels, settings(30.0, 1.0, 1.0))).unwrap();
        assert!(loss.abs() < 1e-3, "{loss}");
    }
}
