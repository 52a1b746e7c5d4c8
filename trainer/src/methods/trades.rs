//! TRADES (Zhang et al., ICML 2019): CE(f(x), y) + beta * KL(f(x) || f(x_adv)), with x_adv
//! maximising that KL from x + 0.001 N(0, 1). beta = 6 as in the paper's CIFAR setting; the
//! teachers of RSLAD and ABSLD are trained this way. The KL is summed over classes and averaged
//! over the batch (yaodongyu/TRADES `trades.py`: `KLDivLoss(size_average=False)` divided by the
//! batch size); the schedule of `train_trades_cifar10.py` (76 epochs, one drop at 75) is in the
//! recipes.

use rfb_core::attacks::{self, losses, Start};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tch::{Kind, Tensor};

use crate::method::{StepContext, StepOutput, TrainingMethod};

/// TRADES' inner maximisation, shared by the methods built on it (FRL, CFA, BAT): ascend
/// KL(f(x) || f(x')) from x + 0.001 N(0, 1) with a radius and a step per example ([N] tensors),
/// `observe` seeing every iterate (see [`attacks::maximize_per_example`]).
pub fn trades_adversarial(
    context: &StepContext,
    images: &Tensor,
    radius: &Tensor,
    step_size: &Tensor,
    observe: impl FnMut(i64, &Tensor, &Tensor),
) -> Tensor {
    let clean_probabilities = tch::no_grad(|| context.student.forward_t(images, false).softmax(-1, Kind::Float));
    attacks::maximize_per_example(
        context.student,
        images,
        radius,
        step_size,
        context.attack.steps,
        Start::Gaussian(0.001),
        |logits| losses::kl_to_soft_labels(logits, &clean_probabilities),
        observe,
    )
    .unwrap_or_else(crate::method::inner_maximisation_failed)
}

/// The same radius and step for every example of the batch, as [N] tensors.
pub fn uniform_per_example(images: &Tensor, value: f64) -> Tensor {
    Tensor::full([images.size()[0]], value, (Kind::Float, images.device()))
}

/// TRADES' settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TradesSettings {
    /// Weight of the robust (KL) term.
    pub beta: f64,
}

pub struct Trades {
    pub beta: f64,
}

impl TrainingMethod for Trades {
    fn name(&self) -> &'static str {
        "trades"
    }

    fn step(&mut self, context: &StepContext, images: &Tensor, labels: &Tensor) -> StepOutput {
        let attack = context.attack;
        let adversarial = trades_adversarial(
            context,
            images,
            &uniform_per_example(images, attack.eps),
            &uniform_per_example(images, attack.step_size),
            |_, _, _| {},
        );
        let clean_logits = context.student.forward_t(images, true);
        let adversarial_logits = context.student.forward_t(&adversarial, true);
        let natural_loss = clean_logits.cross_entropy_for_logits(labels);
        // KL(f(x) || f(x_adv)) with gradients through both sides, summed over classes and
        // averaged over the batch (PyTorch's 'batchmean').
        let robust_loss = losses::kl_to_soft_labels(&adversarial_logits, &clean_logits.softmax(-1, Kind::Float)).mean(Kind::Float);
        let loss = natural_loss + robust_loss * self.beta;
        StepOutput { loss, clean_logits: clean_logits.detach(), adversarial_logits: Some(adversarial_logits.detach()) }
    }

    fn hyperparameters(&self) -> serde_json::Value {
        json!({"beta": self.beta, "start": "gaussian 0.001"})
    }
}
