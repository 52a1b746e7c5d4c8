//! Fast Gradient Sign Method (Goodfellow et al. 2015): one step of size eps along the sign of
//! the cross-entropy gradient, no random start (docs/attacks.md). Optimal for a linear model.

use tch::Tensor;

use super::{check_eps, input_gradient, losses, project_linf, Attack, AttackError, Batch, Classifier, Interrupt};

#[derive(Debug, Clone)]
pub struct Fgsm {
    pub eps: f64,
}

impl Attack for Fgsm {
    fn name(&self) -> String {
        "FGSM".into()
    }

    fn eps(&self) -> f64 {
        self.eps
    }

    fn seed(&self) -> u64 {
        0
    }

    fn perturb(&self, model: &dyn Classifier, batch: &Batch, interrupt: Interrupt) -> Result<Tensor, AttackError> {
        check_eps(self.eps)?;
        interrupt.check()?;
        let images = &batch.images;
        let (gradient, _) = input_gradient(model, images, |logits| losses::cross_entropy(logits, &batch.labels))?;
        Ok(project_linf(&(images + gradient.sign() * self.eps), images, self.eps).detach())
    }
}
