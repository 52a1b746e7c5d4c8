//! RSLAD (Zi et al., ICCV 2021): robust soft label adversarial distillation. ABSLD with every
//! teacher temperature fixed at 1 (DESIGN.md section 4); alpha = 5/6.

use serde_json::json;
use tch::{Kind, Tensor};

use super::distillation::distillation_step;
use crate::method::{StepContext, StepOutput, TrainingMethod};

pub struct Rslad {
    alpha: f64,
}

impl Rslad {
    pub fn new(alpha: f64) -> Self {
        Rslad { alpha }
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
        distillation_step(context, images, labels, &ones, &ones, self.alpha)
    }

    fn hyperparameters(&self) -> serde_json::Value {
        json!({"alpha": self.alpha, "temperature": 1.0})
    }
}
