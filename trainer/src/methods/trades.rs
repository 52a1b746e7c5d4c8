//! TRADES (Zhang et al., ICML 2019): CE(f(x), y) + beta * KL(f(x) || f(x_adv)), with x_adv
//! maximising that KL from x + 0.001 N(0, 1). beta = 6 as in the paper's CIFAR setting; the
//! teachers of RSLAD and ABSLD are trained this way.

use rfb_core::attacks::{self, losses, Start};
use serde_json::json;
use tch::{Kind, Tensor};

use crate::method::{StepContext, StepOutput, TrainingMethod};

pub struct Trades {
    pub beta: f64,
}

impl TrainingMethod for Trades {
    fn name(&self) -> &'static str {
        "trades"
    }

    fn step(&mut self, context: &StepContext, images: &Tensor, labels: &Tensor) -> StepOutput {
        let attack = context.attack;
        let clean_probabilities = tch::no_grad(|| {
            context
                .student
                .forward_t(images, false)
                .softmax(-1, Kind::Float)
        });
        let adversarial = attacks::maximize(
            context.student,
            images,
            attack.eps,
            attack.step_size,
            attack.steps,
            Start::Gaussian(0.001),
            |logits| losses::kl_to_soft_labels(logits, &clean_probabilities),
        );
        let clean_logits = context.student.forward_t(images, true);
        let adversarial_logits = context.student.forward_t(&adversarial, true);
        let natural_loss = clean_logits.cross_entropy_for_logits(labels);
        // KL(f(x) || f(x_adv)) with gradients through both sides, summed over classes and
        // averaged over the batch (PyTorch's 'batchmean').
        let robust_loss =
            losses::kl_to_soft_labels(&adversarial_logits, &clean_logits.softmax(-1, Kind::Float))
                .mean(Kind::Float);
        let loss = natural_loss + robust_loss * self.beta;
        StepOutput {
            loss,
            clean_logits: clean_logits.detach(),
            adversarial_logits: Some(adversarial_logits.detach()),
        }
    }

    fn hyperparameters(&self) -> serde_json::Value {
        json!({"beta": self.beta, "start": "gaussian 0.001"})
    }
}
