//! Natural (standard) training: cross-entropy on clean inputs. The non-robust baseline.

use serde_json::json;
use tch::Tensor;

use crate::method::{StepContext, StepOutput, TrainingMethod};

pub struct Natural;

impl TrainingMethod for Natural {
    fn name(&self) -> &'static str {
        "natural"
    }

    fn step(&mut self, context: &StepContext, images: &Tensor, labels: &Tensor) -> StepOutput {
        let logits = context.student.forward_t(images, true);
        let loss = logits.cross_entropy_for_logits(labels);
        StepOutput { loss, clean_logits: logits.detach(), adversarial_logits: None }
    }

    fn hyperparameters(&self) -> serde_json::Value {
        json!({})
    }
}
