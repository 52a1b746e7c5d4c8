//! Auto-PGD under L-inf (Croce and Hein, "Reliable evaluation of adversarial robustness with an
//! ensemble of diverse parameter-free attacks", ICML 2020, Algorithm 1), the gradient-based
//! half of AutoAttack (DESIGN.md section 6).
//!
//! APGD is PGD with momentum whose step size is not a parameter: it starts at 2 eps and is
//! halved, per example, at checkpoints w_j = ceil(p_j N) (p_0 = 0, p_1 = 0.22,
//! p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)) when either
//! 1. the loss increased in fewer than rho (w_j - w_{j-1}) of the steps since the last
//!    checkpoint (the iterate oscillates), or
//! 2. the step size was not reduced at the last checkpoint and the best loss has not improved
//!    since then (the iterate is stuck);
//!
//! and whenever it is halved the iterate restarts from the best point found so far (with that
//! point's gradient). The update is z = P(x_k + eta sign(grad)),
//! x_{k+1} = P(x_k + alpha (z - x_k) + (1 - alpha)(x_k - x_{k-1})) with alpha = 0.75 (1 on the
//! first step), P the projection onto the ball and [0, 1].
//!
//! Details the paper leaves open follow the authors' code (fra31/auto-attack,
//! `autopgd_base.py`): the start is uniform in [-1, 1]^d rescaled so that its largest
//! coordinate is eps (a corner-ish point of the ball), the per-run result is the most recent
//! iterate that fooled the model, across restarts and targets a point keeps the first run that
//! fooled it, each run attacks only the points still robust, and APGD-T's k-th target is the
//! k+1-th largest clean logit of the point. Where the paper is explicit and the authors' code
//! differs at the edges (the first checkpoint compares with the start's loss and may apply
//! condition 2; the oscillation test is a strict `<`), this follows the paper.

use tch::{Device, Kind, Tensor};

use super::{check_eps, check_steps, input_gradient, losses, project_linf, Attack, AttackError, Classifier};

/// Loss that APGD maximises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApgdLoss {
    /// Cross-entropy (APGD-CE).
    CrossEntropy,
    /// Difference of Logits Ratio (APGD-DLR): shift- and scale-invariant in the logits, so it
    /// does not suffer from the vanishing CE gradient of over-confident models.
    Dlr,
    /// Targeted DLR (APGD-T), one run per target: the 2nd, 3rd, ... `n_targets + 1`-th largest
    /// clean logit.
    DlrTargeted { n_targets: i64 },
}

/// Auto-PGD, L-inf.
#[derive(Debug, Clone)]
pub struct Apgd {
    pub eps: f64,
    /// Iterations per run (N_iter in the paper; 100 in AutoAttack).
    pub steps: i64,
    /// Random restarts per run (per target for APGD-T).
    pub restarts: i64,
    pub loss: ApgdLoss,
    /// Forward/backward passes averaged per gradient (expectation over transformation), for
    /// randomised models; 1 for deterministic ones.
    pub eot_iter: i64,
    /// Fraction of increasing steps under which the step size is halved (0.75 in the paper).
    pub rho: f64,
    pub seed: u64,
}

impl Apgd {
    /// APGD-CE as in AutoAttack standard: 100 iterations, 1 restart.
    pub fn ce(eps: f64, seed: u64) -> Self {
        Apgd { eps, steps: 100, restarts: 1, loss: ApgdLoss::CrossEntropy, eot_iter: 1, rho: 0.75, seed }
    }

    /// APGD-DLR: 100 iterations, 1 restart.
    pub fn dlr(eps: f64, seed: u64) -> Self {
        Apgd { loss: ApgdLoss::Dlr, ..Apgd::ce(eps, seed) }
    }

    /// APGD-T as in AutoAttack standard: targeted DLR, `n_targets` targets (9 there), 100
    /// iterations, 1 restart per target.
    pub fn targeted(eps: f64, n_targets: i64, seed: u64) -> Self {
        Apgd { loss: ApgdLoss::DlrTargeted { n_targets }, ..Apgd::ce(eps, seed) }
    }

    /// The same attack with the gradient averaged over `eot_iter` passes.
    pub fn with_eot(self, eot_iter: i64) -> Self {
        Apgd { eot_iter, ..self }
    }

    pub fn validate(&self) -> Result<(), AttackError> {
        check_eps(self.eps)?;
        check_steps(self.steps)?;
        if !(1..=100).contains(&self.restarts) {
            return Err(AttackError::InvalidParameter(format!("restarts must be in 1..=100, got {}", self.restarts)));
        }
        if !(1..=1000).contains(&self.eot_iter) {
            return Err(AttackError::InvalidParameter(format!("eot_iter must be in 1..=1000, got {}", self.eot_iter)));
        }
        if !(self.rho.is_finite() && self.rho > 0.0 && self.rho <= 1.0) {
            return Err(AttackError::InvalidParameter(format!("rho must be in (0, 1], got {}", self.rho)));
        }
        if let ApgdLoss::DlrTargeted { n_targets } = self.loss {
            if n_targets < 1 {
                return Err(AttackError::InvalidParameter(format!("n_targets must be positive, got {n_targets}")));
            }
        }
        Ok(())
    }
}

/// The checkpoints w_1 < w_2 < ... of Algorithm 1 for `steps` iterations: the step-size
/// decision is taken after iteration w_j. Computed in hundredths so that p_j is exact
/// (0.22 + 0.19 in floating point is not 0.41, and ceil would then be off by one).
pub fn checkpoints(steps: i64) -> Vec<i64> {
    let (mut previous, mut current) = (0i64, 22i64);
    let mut result: Vec<i64> = Vec::new();
    while current <= 100 {
        let w = (current * steps + 99) / 100;
        if w > result.last().copied().unwrap_or(0) {
            result.push(w);
        }
        let next = current + (current - previous - 3).max(6);
        previous = current;
        current = next;
    }
    result
}

/// Largest |.| per example, shaped [N, 1, ..., 1] to broadcast against the images.
fn per_example_linf(t: &Tensor) -> Tensor {
    let n = t.size()[0];
    let mut shape = vec![1i64; t.dim().max(1)];
    shape[0] = n;
    t.abs().view([n, -1]).amax(&[1i64][..], false).view(shape.as_slice())
}

/// Broadcasts a per-example [N] mask against [N, ...] images.
fn expand_mask(mask: &Tensor, like: &Tensor) -> Tensor {
    let mut shape = vec![1i64; like.dim().max(1)];
    shape[0] = -1;
    mask.view(shape.as_slice())
}

/// Per-example loss of one run.
#[derive(Clone, Copy)]
enum RunLoss<'a> {
    CrossEntropy,
    Dlr,
    DlrTargeted(&'a Tensor),
}

impl RunLoss<'_> {
    fn eval(&self, logits: &Tensor, labels: &Tensor) -> Tensor {
        match self {
            RunLoss::CrossEntropy => losses::cross_entropy(logits, labels),
            RunLoss::Dlr => losses::dlr(logits, labels),
            RunLoss::DlrTargeted(targets) => losses::dlr_targeted(logits, labels, targets),
        }
    }
}

/// Gradient averaged over `eot_iter` passes, with the logits and per-example loss of the last
/// pass (as the reference does: for a randomised model they are one draw).
fn eot_gradient(model: &dyn Classifier, x: &Tensor, labels: &Tensor, loss: RunLoss, eot_iter: i64) -> (Tensor, Tensor, Tensor) {
    let mut total: Option<Tensor> = None;
    let mut last_logits = Tensor::new();
    for _ in 0..eot_iter {
        let (gradient, logits) = input_gradient(model, x, |z| loss.eval(z, labels));
        total = Some(match total {
            None => gradient,
            Some(sum) => sum + gradient,
        });
        last_logits = logits;
    }
    let gradient = match total {
        Some(sum) if eot_iter > 1 => sum / eot_iter as f64,
        Some(sum) => sum,
        None => x.zeros_like(),
    };
    let values = tch::no_grad(|| loss.eval(&last_logits, labels));
    (gradient, last_logits, values)
}

/// Result of one run on a set of points.
struct RunResult {
    /// Bool [N]: still classified correctly at every iterate.
    robust: Tensor,
    /// The most recent iterate that fooled the model (the start point where none did).
    adversarial: Tensor,
}

impl Apgd {
    /// One run of Algorithm 1 from a random start on `images` (all assumed still robust).
    fn single_run(&self, model: &dyn Classifier, images: &Tensor, labels: &Tensor, loss: RunLoss) -> RunResult {
        let eps = self.eps;
        let x = images.detach();
        let n = x.size()[0];
        let device = x.device();

        // Start: uniform direction scaled so that its largest coordinate is eps.
        let t = x.rand_like() * 2.0 - 1.0;
        let direction = &t / (per_example_linf(&t) + 1e-12);
        let mut x_adv = project_linf(&(&x + direction * eps), &x, eps);

        let (mut grad, logits, loss_now) = eot_gradient(model, &x_adv, labels, loss, self.eot_iter);
        let mut robust = logits.argmax(-1, false).eq_tensor(labels);
        let mut x_best_adv = x_adv.shallow_clone();
        let mut x_best = x_adv.shallow_clone();
        let mut grad_best = grad.shallow_clone();
        let mut loss_best = loss_now.shallow_clone();
        let mut loss_previous = loss_now;

        let mut step_size = Tensor::full([n], 2.0 * eps, (Kind::Float, device));
        let mut x_previous = x_adv.shallow_clone();
        let marks = checkpoints(self.steps);
        let mut next_mark = 0usize;
        let mut last_mark = 0i64;
        let mut increases = Tensor::zeros([n], (Kind::Float, device));
        let mut loss_best_at_mark = loss_best.shallow_clone();
        let mut reduced_at_mark = Tensor::zeros([n], (Kind::Bool, device));

        for iteration in 0..self.steps {
            tch::no_grad(|| {
                let momentum_term = &x_adv - &x_previous;
                x_previous = x_adv.shallow_clone();
                let alpha = if iteration > 0 { 0.75 } else { 1.0 };
                let step = expand_mask(&step_size, &x);
                let z = project_linf(&(&x_adv + grad.sign() * &step), &x, eps);
                let moved = &x_adv + (z - &x_adv) * alpha + momentum_term * (1.0 - alpha);
                x_adv = project_linf(&moved, &x, eps);
            });

            let (new_grad, logits, loss_now) = eot_gradient(model, &x_adv, labels, loss, self.eot_iter);
            grad = new_grad;
            tch::no_grad(|| {
                let correct = logits.argmax(-1, false).eq_tensor(labels);
                robust = robust.logical_and(&correct);
                x_best_adv = x_best_adv.where_self(&expand_mask(&correct, &x), &x_adv);

                let improved = loss_now.gt_tensor(&loss_best);
                let improved_4d = expand_mask(&improved, &x);
                x_best = x_adv.where_self(&improved_4d, &x_best);
                grad_best = grad.where_self(&improved_4d, &grad_best);
                loss_best = loss_now.where_self(&improved, &loss_best);
                increases = &increases + loss_now.gt_tensor(&loss_previous).to_kind(Kind::Float);
                loss_previous = loss_now.shallow_clone();

                let done = iteration + 1;
                if next_mark < marks.len() && done == marks[next_mark] {
                    let window = (done - last_mark) as f64;
                    let oscillating = increases.lt(self.rho * window);
                    let stuck = reduced_at_mark.logical_not().logical_and(&loss_best_at_mark.ge_tensor(&loss_best));
                    let reduce = oscillating.logical_or(&stuck);
                    step_size = (&step_size * 0.5).where_self(&reduce, &step_size);
                    let reduce_4d = expand_mask(&reduce, &x);
                    x_adv = x_best.where_self(&reduce_4d, &x_adv);
                    grad = grad_best.where_self(&reduce_4d, &grad);
                    reduced_at_mark = reduce;
                    loss_best_at_mark = loss_best.shallow_clone();
                    increases = increases.zeros_like();
                    last_mark = done;
                    next_mark += 1;
                }
            });
        }
        RunResult { robust, adversarial: x_best_adv.detach() }
    }

    /// One run per restart (per target and restart for APGD-T), each only on the points still
    /// robust, so that a point keeps the first run that fooled it and later runs cost less.
    fn perturb_checked(&self, model: &dyn Classifier, images: &Tensor, labels: &Tensor) -> Result<Tensor, AttackError> {
        self.validate()?;
        let images = images.detach();
        let n = images.size().first().copied().unwrap_or(0);
        if n == 0 {
            return Ok(images.copy());
        }
        let labels = labels.to_device(images.device()).to_kind(Kind::Int64);
        let clean_logits = tch::no_grad(|| model.logits(&images));
        let classes = clean_logits.size().last().copied().unwrap_or(0);
        let needed = match self.loss {
            ApgdLoss::CrossEntropy => 2,
            ApgdLoss::Dlr => 3,
            ApgdLoss::DlrTargeted { .. } => 4,
        };
        if classes < needed {
            return Err(AttackError::InvalidParameter(format!(
                "{} needs at least {needed} classes, the model has {classes}",
                self.name()
            )));
        }
        let mut robust = clean_logits.argmax(-1, false).eq_tensor(&labels);
        let mut adversarial = images.copy();

        let targets: Vec<Option<i64>> = match self.loss {
            // The k-th target is the (k+1)-th largest logit; at most classes - 1 of them.
            ApgdLoss::DlrTargeted { n_targets } => (1..=n_targets.min(classes - 1)).map(Some).collect(),
            _ => vec![None],
        };
        for target_rank in targets {
            for _ in 0..self.restarts {
                let index = robust.nonzero().view([-1]);
                if index.numel() == 0 {
                    return Ok(adversarial);
                }
                let x = images.index_select(0, &index);
                let y = labels.index_select(0, &index);
                let target_tensor;
                let loss = match target_rank {
                    None => match self.loss {
                        ApgdLoss::Dlr => RunLoss::Dlr,
                        _ => RunLoss::CrossEntropy,
                    },
                    Some(rank) => {
                        // Ranked on the clean logits of the points being attacked (recomputed as
                        // the reference does, which matters only for randomised models).
                        let order = tch::no_grad(|| model.logits(&x).argsort(-1, true));
                        target_tensor = order.select(1, rank);
                        RunLoss::DlrTargeted(&target_tensor)
                    }
                };
                let run = self.single_run(model, &x, &y, loss);
                let fooled = run.robust.logical_not();
                let merged = run.adversarial.where_self(&expand_mask(&fooled, &x), &x);
                adversarial = adversarial.index_copy(0, &index, &merged);
                robust = robust.index_copy(0, &index, &run.robust);
            }
        }
        Ok(adversarial)
    }
}

impl Attack for Apgd {
    fn name(&self) -> String {
        match self.loss {
            ApgdLoss::CrossEntropy => "APGD-CE".into(),
            ApgdLoss::Dlr => "APGD-DLR".into(),
            ApgdLoss::DlrTargeted { .. } => "APGD-T".into(),
        }
    }

    fn eps(&self) -> f64 {
        self.eps
    }

    fn seed(&self) -> u64 {
        self.seed
    }

    fn perturb(&self, model: &dyn Classifier, images: &Tensor, labels: &Tensor) -> Result<Tensor, AttackError> {
        let device: Device = model.device();
        let images = images.to_device(device);
        self.perturb_checked(model, &images, labels)
    }
}

