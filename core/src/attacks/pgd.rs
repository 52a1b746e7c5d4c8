//! Projected gradient descent (Madry et al. 2018) under L-inf: signed-gradient ascent steps on
//! a loss, each followed by projection onto the eps-ball and [0, 1]. The evaluation preset is
//! the paper's PGD-20 (uniform random start, 20 steps of eps/4 on cross-entropy, which is
//! its 2/255 at 8/255, final iterate), with the start drawn from each point's own random stream; [`maximize`] is the same
//! loop with any loss and start, which the trainer uses for the inner maximisation of SAT,
//! TRADES, RSLAD and ABSLD (paper Eq. 12) with libtorch's generator.

use tch::Tensor;

use super::{
    check_eps, check_steps, draw_label, input_gradient, judged_correct, losses, project_linf, Attack, AttackError, Batch, Classifier,
    Interrupt,
};

/// Salt of PGD's draw labels.
const PGD_DRAWS: u64 = 0x5047_4400;

/// Where the iteration starts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Start {
    /// At the clean input.
    Clean,
    /// Uniform in the eps-ball (Madry et al.).
    Uniform,
    /// Clean input plus `sigma` times standard normal noise (TRADES uses sigma = 0.001).
    Gaussian(f64),
}

/// Which loss the evaluation attack ascends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PgdLoss {
    CrossEntropy,
    /// Carlini-Wagner loss with confidence kappa ([`losses::cw_loss`], see
    /// [`super::CarliniWagnerLinf`]).
    CarliniWagner {
        kappa: f64,
    },
}

/// The step of PGD and CW-inf when none is given: eps/4. At the paper's eps 8/255 this is its
/// 2/255; at any other radius a fixed 2/255 is wrong (too short to cross a large ball in 20
/// steps, too coarse for a small one), so the step follows the radius as it does there. At
/// eps 0 no step moves a point; 2/255 is kept there so that the attack stays valid (an eps
/// sweep may start at 0).
pub fn default_step_size(eps: f64) -> f64 {
    if eps > 0.0 {
        eps / 4.0
    } else {
        2.0 / 255.0
    }
}

/// Runs `steps` signed-gradient steps of size `step_size` on `loss(logits)` (per-example,
/// maximised) from `start`, projecting after each step. Returns the final iterate, detached.
pub fn maximize(
    model: &dyn Classifier,
    images: &Tensor,
    eps: f64,
    step_size: f64,
    steps: i64,
    start: Start,
    loss: impl Fn(&Tensor) -> Tensor,
) -> Result<Tensor, AttackError> {
    let images = images.detach();
    let first = match start {
        Start::Clean => images.shallow_clone(),
        Start::Uniform => &images + images.rand_like() * (2.0 * eps) - eps,
        Start::Gaussian(sigma) => &images + images.randn_like() * sigma,
    };
    ascend(model, &images, first, eps, step_size, steps, loss, Interrupt::NEVER)
}

/// `steps` signed-gradient steps from `start` (projected first), looking at `interrupt` before
/// each step.
#[allow(clippy::too_many_arguments)]
fn ascend(
    model: &dyn Classifier,
    images: &Tensor,
    start: Tensor,
    eps: f64,
    step_size: f64,
    steps: i64,
    loss: impl Fn(&Tensor) -> Tensor,
    interrupt: Interrupt,
) -> Result<Tensor, AttackError> {
    let mut current = project_linf(&start, images, eps);
    for _ in 0..steps {
        interrupt.check()?;
        let (gradient, _) = input_gradient(model, &current, &loss)?;
        current = project_linf(&(current + gradient.sign() * step_size), images, eps);
    }
    Ok(current.detach())
}

/// [`maximize`] with a radius and a step size per example (`radius` and `step_size` are [N]
/// tensors on the images' device), as the class-wise margins of FRL and CFA need. `observe`
/// sees every iterate before its step (the start included, the final iterate not) with its
/// detached logits: Fair-ARD counts the steps a point stays correct, BAT keeps the points just
/// before and after the boundary.
#[allow(clippy::too_many_arguments)]
pub fn maximize_per_example(
    model: &dyn Classifier,
    images: &Tensor,
    radius: &Tensor,
    step_size: &Tensor,
    steps: i64,
    start: Start,
    loss: impl Fn(&Tensor) -> Tensor,
    mut observe: impl FnMut(i64, &Tensor, &Tensor),
) -> Result<Tensor, AttackError> {
    let images = images.detach();
    let mut shape = vec![-1i64];
    shape.extend(std::iter::repeat_n(1, images.dim().saturating_sub(1)));
    let radius = radius.to_kind(images.kind()).reshape(&shape);
    let step_size = step_size.to_kind(images.kind()).reshape(&shape);
    let lower = (&images - &radius).clamp_min(0.0);
    let upper = (&images + &radius).clamp_max(1.0);
    let mut current = match start {
        Start::Clean => images.shallow_clone(),
        Start::Uniform => &images + (images.rand_like() * 2.0 - 1.0) * &radius,
        Start::Gaussian(sigma) => &images + images.randn_like() * sigma,
    };
    current = current.maximum(&lower).minimum(&upper);
    for step in 0..steps {
        let (gradient, logits) = input_gradient(model, &current, &loss)?;
        observe(step, &current, &logits);
        current = (current + gradient.sign() * &step_size).maximum(&lower).minimum(&upper);
    }
    Ok(current.detach())
}

/// PGD with restarts; a point keeps the first restart's result that fools the model.
#[derive(Debug, Clone)]
pub struct Pgd {
    pub eps: f64,
    pub step_size: f64,
    pub steps: i64,
    pub restarts: i64,
    pub random_start: bool,
    pub loss: PgdLoss,
    pub seed: u64,
}

impl Pgd {
    /// The paper's PGD-20: 20 steps of [`default_step_size`] (2/255 at the paper's 8/255),
    /// uniform random start.
    pub fn pgd20(eps: f64, seed: u64) -> Self {
        Pgd { eps, step_size: default_step_size(eps), steps: 20, restarts: 1, random_start: true, loss: PgdLoss::CrossEntropy, seed }
    }

    pub fn validate(&self) -> Result<(), AttackError> {
        check_eps(self.eps)?;
        check_steps(self.steps)?;
        if !(self.step_size.is_finite() && self.step_size > 0.0) {
            return Err(AttackError::InvalidParameter(format!("step size must be positive, got {}", self.step_size)));
        }
        if !(1..=100).contains(&self.restarts) {
            return Err(AttackError::InvalidParameter(format!("restarts must be in 1..=100, got {}", self.restarts)));
        }
        Ok(())
    }
}

impl Attack for Pgd {
    fn name(&self) -> String {
        let base = match self.loss {
            PgdLoss::CrossEntropy => "PGD",
            PgdLoss::CarliniWagner { .. } => "CW-inf",
        };
        if self.restarts > 1 {
            format!("{base}-{}x{}", self.steps, self.restarts)
        } else {
            format!("{base}-{}", self.steps)
        }
    }

    fn eps(&self) -> f64 {
        self.eps
    }

    fn seed(&self) -> u64 {
        self.seed
    }

    fn perturb(&self, model: &dyn Classifier, batch: &Batch, interrupt: Interrupt) -> Result<Tensor, AttackError> {
        self.validate()?;
        let (images, labels) = (&batch.images, &batch.labels);
        let loss = |logits: &Tensor| match self.loss {
            PgdLoss::CrossEntropy => losses::cross_entropy(logits, labels),
            PgdLoss::CarliniWagner { kappa } => losses::cw_loss(logits, labels, kappa),
        };
        let shape = &images.size()[1..];
        let start = |restart: i64| {
            if self.random_start {
                // Uniform in the ball, as torchattacks' PGD draws it: x + U(-eps, eps).
                let uniform = batch.streams.uniform(draw_label(&[PGD_DRAWS, restart as u64]), shape);
                images + (uniform * 2.0 - 1.0) * self.eps
            } else {
                images.shallow_clone()
            }
        };
        let mut best = ascend(model, images, start(0), self.eps, self.step_size, self.steps, loss, interrupt)?;
        for restart in 1..self.restarts {
            // A point keeps the first restart whose result the judge misclassifies.
            let still_correct = judged_correct(model, &best, labels, None)?;
            let candidate = ascend(model, images, start(restart), self.eps, self.step_size, self.steps, loss, interrupt)?;
            best = candidate.where_self(&still_correct.reshape([-1, 1, 1, 1]), &best);
        }
        Ok(best)
    }
}
