//! AdaAD (Huang, Chen, Wang, Lu, Cheng and Wang, "Boosting Accuracy and Robustness of Student
//! Models via Adaptive Adversarial Distillation", CVPR 2023).
//!
//! What sets it apart: the inner maximisation looks for the point where student and teacher
//! disagree most, KL(T(x') || S(x')) with *both* networks evaluated at x' and the gradient
//! flowing through both; the student is then trained to match the teacher there:
//!   alpha * KL(T(x') || S(x')) + (1 - alpha) * KL(T(x) || S(x)).
//!
//! Defaults, from the authors' public code (boyellow/AdaAD, `AT_helper.py`, `main.py` and the
//! README's CIFAR-10 command): alpha = 1, temperature 1, start x + 0.001 N(0, 1), 10 steps of
//! 2/255 within 8/255, student and teacher in eval mode while attacking. The KL is at the
//! code's scale, which differs by data set: its CIFAR-10 path uses `nn.KLDivLoss()` (the mean
//! over batch and classes: `kl_scale` = 1/10), its CIFAR-100 path sums over classes and divides
//! by the batch (`kl_scale` = 1).

use rfb_core::attacks::{self, losses, Classifier, Start};
use rfb_core::models::Network;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tch::{Device, Kind, TchError, Tensor};

use crate::method::{StepContext, StepOutput, TrainingMethod};

/// AdaAD's loss weight and KL scale.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdaAdSettings {
    pub alpha: f64,
    /// Factor on the batch mean of the class-summed KL.
    pub kl_scale: f64,
}

pub struct AdaAd {
    pub settings: AdaAdSettings,
}

impl AdaAd {
    pub fn new(settings: AdaAdSettings) -> Self {
        AdaAd { settings }
    }
}

/// AdaAD's outer loss: kl_scale * (alpha * mean KL(T(x') || S(x')) + (1 - alpha) * mean
/// KL(T(x) || S(x))), the teacher's logits given without gradient.
pub fn adaad_loss(
    student_adversarial: &Tensor,
    student_clean: &Tensor,
    teacher_adversarial: &Tensor,
    teacher_clean: &Tensor,
    settings: AdaAdSettings,
) -> Tensor {
    let adversarial = disagreement(student_adversarial, teacher_adversarial).mean(Kind::Float);
    let clean = disagreement(student_clean, teacher_clean).mean(Kind::Float);
    (adversarial * settings.alpha + clean * (1.0 - settings.alpha)) * settings.kl_scale
}

/// The inner objective per example, KL(softmax(teacher) || softmax(student)); differentiable
/// in both arguments.
pub fn disagreement(student_logits: &Tensor, teacher_logits: &Tensor) -> Tensor {
    losses::kl_to_soft_labels(student_logits, &teacher_logits.softmax(-1, Kind::Float))
}

/// Student and teacher side by side, so that one attack differentiates through both: the
/// "logits" are the two networks' logits concatenated along the class axis.
struct StudentAndTeacher<'a> {
    student: &'a Network,
    teacher: &'a Network,
}

impl Classifier for StudentAndTeacher<'_> {
    fn logits(&self, images: &Tensor) -> Result<Tensor, TchError> {
        rfb_core::guard::guarded(|| Tensor::cat(&[self.student.forward_t(images, false), self.teacher.forward_t(images, false)], 1))
    }
    fn device(&self) -> Device {
        self.student.device()
    }
}

impl TrainingMethod for AdaAd {
    fn name(&self) -> &'static str {
        "adaad"
    }

    fn needs_teacher(&self) -> bool {
        true
    }

    fn step(&mut self, context: &StepContext, images: &Tensor, labels: &Tensor) -> StepOutput {
        let _ = labels;
        let teacher = context.teacher.expect("AdaAD needs a teacher; the loop checks this");
        let classes = context.student.spec.num_classes;
        let pair = StudentAndTeacher { student: context.student, teacher };
        let attack = context.attack;
        let adversarial = attacks::maximize(&pair, images, attack.eps, attack.step_size, attack.steps, Start::Gaussian(0.001), |both| {
            disagreement(&both.narrow(1, 0, classes), &both.narrow(1, classes, classes))
        })
        .unwrap_or_else(crate::method::inner_maximisation_failed);
        let (teacher_adversarial, teacher_clean) =
            tch::no_grad(|| (teacher.forward_t(&adversarial, false), teacher.forward_t(images, false)));
        let adversarial_logits = context.student.forward_t(&adversarial, true);
        let clean_logits = context.student.forward_t(images, true);
        let loss = adaad_loss(&adversarial_logits, &clean_logits, &teacher_adversarial, &teacher_clean, self.settings);
        StepOutput { loss, clean_logits: clean_logits.detach(), adversarial_logits: Some(adversarial_logits.detach()) }
    }

    fn hyperparameters(&self) -> serde_json::Value {
        json!({
            "alpha": self.settings.alpha, "kl_scale": self.settings.kl_scale, "temperature": 1.0,
            "start": "gaussian 0.001", "inner_loss": "KL(teacher(x') || student(x'))",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inner_objective_is_the_kl_from_the_teacher_at_the_same_point_and_moves_both() {
        // softmax(0, 1, 0) = (0.211942, 0.576117, 0.211942), softmax(1, 0, -1) =
        // (0.665241, 0.244728, 0.090031): KL(teacher || student) = 0.432278.
        let student = Tensor::from_slice(&[1.0f32, 0.0, -1.0]).view([1, 3]).set_requires_grad(true);
        let teacher = Tensor::from_slice(&[0.0f32, 1.0, 0.0]).view([1, 3]).set_requires_grad(true);
        let value = disagreement(&student, &teacher);
        assert!((f64::try_from(&value).unwrap() - 0.432278).abs() < 1e-5);
        // The attack climbs through the teacher's prediction too, not only the student's.
        let gradients = Tensor::run_backward(&[value.sum(Kind::Float)], &[&student, &teacher], false, false);
        for gradient in &gradients {
            assert!(f64::try_from(gradient.abs().sum(Kind::Float)).unwrap() > 1e-3);
        }
        // Agreement is zero disagreement.
        assert!(f64::try_from(disagreement(&teacher.detach(), &teacher.detach())).unwrap().abs() < 1e-6);
    }
}
