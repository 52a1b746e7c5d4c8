//! Adversarial attacks under the L-inf threat model, one attack per file behind [`Attack`]
//! (DESIGN.md section 6), and per-class robust accuracy for any of them.
//!
//! Conventions every attack follows:
//! - images are in pixel space [0, 1]; any normalisation lives inside the model;
//! - the model is queried through [`Classifier`] in eval mode, and parameters need no gradient
//!   (input gradients come from `Tensor::run_backward` on the input only);
//! - randomness comes from libtorch's generator, which [`robust_accuracy`] seeds per batch from
//!   the attack's seed, so a run on CPU is deterministic for a given seed;
//! - attacks may return whatever they found; [`verify_adversarial`] checks the eps-ball and
//!   [0, 1], and a point counts as broken only if the model misclassifies the returned input.

mod apgd;
mod autoattack;
mod cw;
mod fab; pub use fab::Fab;
mod fgsm;
pub mod losses;
mod pgd;
mod square; pub use square::Square;

use tch::{Device, Kind, Tensor};

use crate::data::Dataset;
use crate::models::Network;

pub use apgd::{checkpoints as apgd_checkpoints, Apgd, ApgdLoss};
pub use autoattack::{sanity_flags, AutoAttack, AutoAttackOutcome, SanityFlags};
pub use cw::CarliniWagnerLinf;
pub use fgsm::Fgsm;
pub use pgd::{maximize, maximize_per_example, Pgd, PgdLoss, Start};

/// Slack allowed by [`verify_adversarial`] for float rounding at the ball's boundary.
pub const BOUND_TOLERANCE: f64 = 1e-6;

/// Errors raised by attacks and by the checks on their results.
#[derive(Debug, thiserror::Error)]
pub enum AttackError {
    #[error("invalid attack parameter: {0}")]
    InvalidParameter(String),
    #[error("{attack} returned a point outside the eps-ball: |x_adv - x|_inf = {distance} > eps = {eps}")]
    OutsideBall { attack: String, distance: f64, eps: f64 },
    #[error("{attack} returned a point outside [0, 1]: values from {min} to {max}")]
    OutsideImageRange { attack: String, min: f64, max: f64 },
    #[error("{attack} returned shape {found:?} for input shape {expected:?}")]
    WrongShape { attack: String, expected: Vec<i64>, found: Vec<i64> },
    #[error("the attack was cancelled")]
    Cancelled,
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

/// What attacks query: logits of a batch of images in [0, 1], in eval mode.
pub trait Classifier {
    fn logits(&self, images: &Tensor) -> Tensor;
    fn device(&self) -> Device;

    /// Logits that decide whether a point is classified correctly: clean accuracy, the points
    /// AutoAttack passes on, and the final count. The same as [`Classifier::logits`] except
    /// for a bf16 [`crate::models::PreparedNetwork`], which attacks with its bf16 copy but
    /// judges with the fp32 weights, so that bf16 numbers are the fp32 model's robustness.
    fn judge_logits(&self, images: &Tensor) -> Tensor {
        self.logits(images)
    }
}

impl Classifier for Network {
    fn logits(&self, images: &Tensor) -> Tensor {
        self.forward_t(images, false)
    }
    fn device(&self) -> Device {
        Network::device(self)
    }
}

/// An L-inf attack on a batch.
pub trait Attack: Send + Sync {
    /// Name for reports, e.g. `PGD-20`.
    fn name(&self) -> String;
    /// Radius of the L-inf ball the attack searches in.
    fn eps(&self) -> f64;
    /// Seed from which [`robust_accuracy`] derives the per-batch seeds.
    fn seed(&self) -> u64;
    /// Adversarial versions of `images` (same shape); `labels` are the true classes.
    fn perturb(&self, model: &dyn Classifier, images: &Tensor, labels: &Tensor) -> Result<Tensor, AttackError>;
}

/// Projects `candidate` onto the intersection of the L-inf ball of radius `eps` around
/// `images` and the box [0, 1].
pub fn project_linf(candidate: &Tensor, images: &Tensor, eps: f64) -> Tensor {
    let lower = (images - eps).clamp_min(0.0);
    let upper = (images + eps).clamp_max(1.0);
    candidate.maximum(&lower).minimum(&upper)
}

/// Gradient of `loss(logits)` summed over the batch, with respect to the input only.
/// Also returns the (detached) logits, which most attacks need anyway.
pub fn input_gradient(
    model: &dyn Classifier,
    images: &Tensor,
    loss: impl Fn(&Tensor) -> Tensor,
) -> (Tensor, Tensor) {
    let input = images.detach().set_requires_grad(true);
    let logits = model.logits(&input);
    let total = loss(&logits).sum(Kind::Float);
    let gradient = Tensor::run_backward(&[total], &[&input], false, false)
        .pop()
        .expect("run_backward returns one gradient per input");
    (gradient, logits.detach())
}

/// Largest |x_adv - x| over the batch, as a host number (one sync; used by the checks).
fn max_distance(adversarial: &Tensor, images: &Tensor) -> f64 {
    f64::try_from((adversarial - images).abs().max()).unwrap_or(f64::INFINITY)
}

/// Checks the invariants every attack must satisfy for its result to be trusted.
pub fn verify_adversarial(attack: &str, images: &Tensor, adversarial: &Tensor, eps: f64) -> Result<(), AttackError> {
    if adversarial.size() != images.size() {
        return Err(AttackError::WrongShape {
            attack: attack.to_string(),
            expected: images.size(),
            found: adversarial.size(),
        });
    }
    if adversarial.numel() == 0 {
        return Ok(());
    }
    let distance = max_distance(adversarial, images);
    if !(distance <= eps + BOUND_TOLERANCE) {
        return Err(AttackError::OutsideBall { attack: attack.to_string(), distance, eps });
    }
    let min = f64::try_from(adversarial.min()).unwrap_or(f64::NAN);
    let max = f64::try_from(adversarial.max()).unwrap_or(f64::NAN);
    if !(min >= 0.0 && max <= 1.0) {
        return Err(AttackError::OutsideImageRange { attack: attack.to_string(), min, max });
    }
    Ok(())
}

/// Correct and total counts per class.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct ClassCounts {
    pub correct: Vec<i64>,
    pub total: Vec<i64>,
}

impl ClassCounts {
    pub fn new(num_classes: usize) -> Self {
        ClassCounts { correct: vec![0; num_classes], total: vec![0; num_classes] }
    }

    /// Adds a batch: `is_correct` (bool [N]) for examples of classes `labels` ([N]).
    pub fn add(&mut self, labels: &Tensor, is_correct: &Tensor) {
        let classes = self.total.len() as i64;
        let labels = labels.to_device(Device::Cpu).to_kind(Kind::Int64);
        let total = labels.bincount::<Tensor>(None, classes);
        let correct = labels.masked_select(&is_correct.to_device(Device::Cpu)).bincount::<Tensor>(None, classes);
        for (k, (t, c)) in Vec::<i64>::try_from(total)
            .unwrap_or_default()
            .into_iter()
            .zip(Vec::<i64>::try_from(correct).unwrap_or_default())
            .enumerate()
        {
            self.total[k] += t;
            self.correct[k] += c;
        }
    }

    /// Class-wise accuracy in percent (NaN for a class with no examples).
    pub fn class_accuracy(&self) -> Vec<f64> {
        self.correct
            .iter()
            .zip(&self.total)
            .map(|(&c, &t)| if t == 0 { f64::NAN } else { 100.0 * c as f64 / t as f64 })
            .collect()
    }

    /// Overall accuracy in percent.
    pub fn overall_accuracy(&self) -> f64 {
        let total: i64 = self.total.iter().sum();
        100.0 * self.correct.iter().sum::<i64>() as f64 / total.max(1) as f64
    }
}

/// Clean accuracy per class (no attack).
pub fn clean_accuracy(model: &dyn Classifier, dataset: &Dataset, batch_size: i64) -> ClassCounts {
    let mut counts = ClassCounts::new(dataset.num_classes() as usize);
    tch::no_grad(|| {
        for (images, labels) in dataset.batches(batch_size) {
            let images = images.to_device(model.device());
            let labels = labels.to_device(model.device());
            let correct = model.judge_logits(&images).argmax(-1, false).eq_tensor(&labels);
            counts.add(&labels, &correct);
        }
    });
    counts
}

/// Seed for batch `index` of an attack seeded with `seed`.
pub fn batch_seed(seed: u64, index: usize) -> i64 {
    (seed.wrapping_mul(1_000_003).wrapping_add(index as u64) & (i64::MAX as u64)) as i64
}

/// Runs `attack` over `dataset` in batches, verifies every returned batch, and counts per
/// class the points the model still classifies correctly on the returned input.
/// `on_batch(done, total)` is called after each batch and may return `false` to cancel.
pub fn robust_accuracy(
    attack: &dyn Attack,
    model: &dyn Classifier,
    dataset: &Dataset,
    batch_size: i64,
    mut on_batch: impl FnMut(i64, i64) -> bool,
) -> Result<ClassCounts, AttackError> {
    if batch_size < 1 {
        return Err(AttackError::InvalidParameter(format!("batch size must be positive, got {batch_size}")));
    }
    let mut counts = ClassCounts::new(dataset.num_classes() as usize);
    let total = dataset.len();
    let mut done = 0;
    for (index, (images, labels)) in dataset.batches(batch_size).enumerate() {
        let images = images.to_device(model.device());
        let labels = labels.to_device(model.device());
        tch::manual_seed(batch_seed(attack.seed(), index));
        let adversarial = attack.perturb(model, &images, &labels)?;
        verify_adversarial(&attack.name(), &images, &adversarial, attack.eps())?;
        let correct = tch::no_grad(|| model.judge_logits(&adversarial).argmax(-1, false).eq_tensor(&labels));
        counts.add(&labels, &correct);
        done += images.size()[0];
        if !on_batch(done, total) {
            return Err(AttackError::Cancelled);
        }
    }
    Ok(counts)
}

pub(crate) fn check_eps(eps: f64) -> Result<(), AttackError> {
    if !(eps.is_finite() && eps >= 0.0 && eps <= 1.0) {
        return Err(AttackError::InvalidParameter(format!("eps must be in [0, 1], got {eps}")));
    }
    Ok(())
}

pub(crate) fn check_steps(steps: i64) -> Result<(), AttackError> {
    if !(1..=100_000).contains(&steps) {
        return Err(AttackError::InvalidParameter(format!("steps must be in 1..=100000, got {steps}")));
    }
    Ok(())
}
