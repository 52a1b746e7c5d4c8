//! RSLAD (Zi et al., ICCV 2021): robust soft label adversarial distillation. ABSLD with every
//! teacher temperature fixed at 1 (docs/absld.md); alpha = 5/6, the loss at the scale of
//! the authors' scripts (zibojia/RSLAD `resnet18_rslad_cifar10.py` and
//! `resnet18_rslad_cifar100.py`: the class-summed KL's batch mean divided by 10 on both; see
//! `distillation.rs`).

use serde_json::json;
use tch::{Kind, Tensor};

use super::distillation::{distillation_step, DistillationSettings};
use crate::method::{StepContext, StepOutput, TrainingMethod};

pub struct Rslad {
    settings: DistillationSettings,
}

impl Rslad {
    pub fn new(settings: DistillationSettings) -> Self {
        Rslad { settings }
    }
}

impl TrainingMethod for Rslad {
    fn name(&self) -> &'static str {
        "rslad"
    }

    fn needs_teacher(&self) -> bool {
        true
    }

    fn step(&mut self, context: &StepContext, images: &Tensor, labels: &Tensor) -> StepOutput {
        let classes = context.student.spec.num_classes;
        let ones = Tensor::ones([classes], (Kind::Float, images.device()));
        distillation_step(context, images, labels, &ones, &ones, self.settings)
    }

    fn hyperparameters(&self) -> serde_json::Value {
        json!({"alpha": self.settings.alpha, "kl_scale": self.settings.kl_scale, "temperature": 1.0})
    }
}
