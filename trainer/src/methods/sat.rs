//! SAT: standard adversarial training (Madry et al., ICLR 2018). Cross-entropy on PGD examples
//! (uniform random start, cross-entropy inner maximisation, 10 steps of 2/255 at eps 8/255 on
//! CIFAR). We attack the student in eval mode, as for every method here, so that batch-norm
//! statistics are updated only by the examples it trains on.

use rfb_core::attacks::{self, losses, Start};
use serde_json::json;
use tch::Tensor;

use crate::method::{StepContext, StepOutput, TrainingMethod};

/// Madry et al.'s inner maximisation: PGD on the student's cross-entropy from a uniform start
/// (ARD attacks its student the same way).
pub fn madry_adversarial(context: &StepContext, images: &Tensor, labels: &Tensor) -> Tensor {
    let attack = context.attack;
    attacks::maximize(context.student, images, attack.eps, attack.step_size, attack.steps, Start::Uniform, |logits| {
        losses::cross_entropy(logits, labels)
    })
    .unwrap_or_else(crate::method::inner_maximisation_failed)
}

pub struct Sat;

impl TrainingMethod for Sat {
    fn name(&self) -> &'static str {
        "sat"
    }

    fn step(&mut self, context: &StepContext, images: &Tensor, labels: &Tensor) -> StepOutput {
        let adversarial = madry_adversarial(context, images, labels);
        let adversarial_logits = context.student.forward_t(&adversarial, true);
        let loss = adversarial_logits.cross_entropy_for_logits(labels);
        let clean_logits = tch::no_grad(|| context.student.forward_t(images, false));
        StepOutput { loss, clean_logits, adversarial_logits: Some(adversarial_logits.detach()) }
    }

    fn hyperparameters(&self) -> serde_json::Value {
        json!({"inner_loss": "cross_entropy", "start": "uniform"})
    }
}
