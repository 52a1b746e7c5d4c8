//! Adversarial attacks under the L-inf threat model, one attack per file behind [`Attack`]
//! (docs/attacks.md), and per-class robust accuracy for any of them ([`evaluate`]).
//!
//! Conventions every attack follows:
//! - images are in pixel space [0, 1]; any normalisation lives inside the model;
//! - the model is queried through [`Classifier`] in eval mode, and parameters need no gradient
//!   (input gradients come from `Tensor::run_backward` on the input only);
//! - randomness comes from per-example streams ([`random::ExampleStreams`], keyed by the seed
//!   and each point's index in its split), never from libtorch's global generator, so a point's
//!   result does not depend on its batch, the batch size, a shard or the device's generator;
//! - what is counted is decided by the judge ([`counted_correct`]); with a bf16 copy the judge
//!   also takes every decision on the way ([`judged_correct`]), never the bf16 copy;
//! - attacks look at their [`Interrupt`] between iterations, so a cancelled job stops within
//!   one iteration;
//! - attacks may return whatever they found; [`verify_adversarial`] checks the eps-ball and
//!   [0, 1], and a point counts as broken only if the judge misclassifies the returned input.

mod apgd;
mod autoattack;
mod confusion;
mod cw;
mod evaluation;
mod fab;
mod fgsm;
pub mod losses;
mod notes;
mod pgd;
pub mod random;
mod square;

use tch::{Device, Kind, TchError, Tensor};

/// At its old path too: attacks are where most callers meet it.
pub use crate::classifier::Classifier;

pub use apgd::{checkpoints as apgd_checkpoints, Apgd, ApgdLoss, ApgdRun};
pub use autoattack::{sanity_flags, sanity_flags_in_chunks, AutoAttack, SanityFlags, SANITY_POINTS};
pub use confusion::Confusion;
pub use cw::CarliniWagnerLinf;
pub use evaluation::{
    clean_accuracy, clean_confusion, evaluate, robust_accuracy, run_points, ComponentReport, ComponentRun, Evaluation, PointsRun, Progress,
};
pub use fab::Fab;
pub use fgsm::Fgsm;
pub use notes::AttackNotes;
pub use pgd::{default_step_size, maximize, maximize_per_example, Pgd, PgdLoss, Start};
pub use random::{draw_label, ExampleStreams};
pub use square::Square;

/// Slack allowed by [`verify_adversarial`] for float rounding at the ball's boundary.
pub const BOUND_TOLERANCE: f64 = 1e-6;

/// A hash of the source files that decide attack results (attacks, models, data loading),
/// fixed at build time. Result caches key on it, so that results of older code are never
/// served after a change.
pub const SOURCE_HASH: &str = env!("RFB_RESULT_SOURCE_HASH");

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
    /// A class index outside the data set's classes (a model with more outputs than classes).
    #[error("{what} {class} is outside the data set's {classes} classes")]
    ClassOutOfRange { what: &'static str, class: i64, classes: usize },
    /// libtorch refused an operation of `component` (an attack or one of AutoAttack's
    /// components), or the model's forward pass failed inside it.
    #[error("{component}: libtorch failed: {message}")]
    Libtorch { component: String, message: String },
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

/// Bool [N]: whether `images` are still classified as `labels`, for the decisions an attack takes
/// while it runs (which points to keep attacking, which iterate to keep). `attack_logits` are the
/// attack network's logits on the same images when the caller has them (no extra pass). With a
/// separate judge (bf16) the judge decides.
pub fn judged_correct(
    model: &dyn Classifier,
    images: &Tensor,
    labels: &Tensor,
    attack_logits: Option<&Tensor>,
) -> Result<Tensor, TchError> {
    if model.has_separate_judge() {
        return counted_correct(model, images, labels);
    }
    match attack_logits {
        Some(logits) => logits.f_argmax(-1, false)?.f_eq_tensor(labels),
        None => tch::no_grad(|| model.logits(images)?.f_argmax(-1, false)?.f_eq_tensor(labels)),
    }
}

/// I64 [N]: the class the judge predicts for each of `images` ([`counted_correct`] compares
/// it with the true class; adversarial confusions count it).
pub fn judged_classes(model: &dyn Classifier, images: &Tensor) -> Result<Tensor, TchError> {
    tch::no_grad(|| model.judge_logits(images)?.f_argmax(-1, false))
}

/// Bool [N]: whether the judge classifies `images` as `labels`: what is counted.
pub fn counted_correct(model: &dyn Classifier, images: &Tensor, labels: &Tensor) -> Result<Tensor, TchError> {
    tch::no_grad(|| model.judge_logits(images)?.f_argmax(-1, false)?.f_eq_tensor(labels))
}

/// Logits for decisions without gradients (Square's margin): the judge's with a separate judge,
/// else the attack network's.
pub fn decision_logits(model: &dyn Classifier, images: &Tensor) -> Result<Tensor, TchError> {
    if model.has_separate_judge() {
        model.judge_logits(images)
    } else {
        model.logits(images)
    }
}

/// Points under attack: images in [0, 1] (`[N, C, H, W]`), true classes (`i64 [N]`) and one
/// random stream per point, all on one device.
#[derive(Debug)]
pub struct Batch {
    pub images: Tensor,
    pub labels: Tensor,
    pub streams: ExampleStreams,
}

impl Batch {
    pub fn new(images: &Tensor, labels: &Tensor, streams: ExampleStreams) -> Batch {
        Batch { images: images.detach(), labels: labels.to_kind(Kind::Int64), streams }
    }

    /// Points `0..N` of `images` with their streams under `seed` (for tests and tools that
    /// attack one batch; [`evaluate`] keys the streams on each point's index in its split).
    pub fn with_seed(images: &Tensor, labels: &Tensor, seed: u64) -> Batch {
        let n = images.size().first().copied().unwrap_or(0);
        Batch::new(images, labels, ExampleStreams::for_range(seed, n, images.device()))
    }

    /// Every point of `dataset` (on its device, normally the CPU), with the streams keyed on
    /// the points' indices in their split.
    pub fn from_dataset(dataset: &crate::data::Dataset, seed: u64) -> Batch {
        Batch::new(&dataset.images, &dataset.labels, ExampleStreams::new(seed, &dataset.ids))
    }

    pub fn len(&self) -> i64 {
        self.images.size().first().copied().unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn device(&self) -> Device {
        self.images.device()
    }

    /// The points at `index` (`i64`, on the batch's device).
    pub fn select(&self, index: &Tensor) -> Batch {
        Batch {
            images: self.images.index_select(0, index),
            labels: self.labels.index_select(0, index),
            streams: self.streams.select(index),
        }
    }

    pub fn to_device(&self, device: Device) -> Batch {
        Batch { images: self.images.to_device(device), labels: self.labels.to_device(device), streams: self.streams.to_device(device) }
    }
}

/// Lets the caller stop a running attack: attacks call [`Interrupt::check`] between iterations
/// (and restarts, targets, components), so cancellation and deadlines take effect within one
/// iteration rather than one batch.
#[derive(Clone, Copy)]
pub struct Interrupt<'a> {
    should_stop: Option<&'a (dyn Fn() -> bool + Sync)>,
}

impl<'a> Interrupt<'a> {
    /// Never stops.
    pub const NEVER: Interrupt<'static> = Interrupt { should_stop: None };

    /// Stops once `should_stop` returns true (it is called often: keep it cheap).
    pub fn new(should_stop: &'a (dyn Fn() -> bool + Sync)) -> Self {
        Interrupt { should_stop: Some(should_stop) }
    }

    /// `Err(AttackError::Cancelled)` once the caller asked to stop.
    pub fn check(&self) -> Result<(), AttackError> {
        match self.should_stop {
            Some(should_stop) if should_stop() => Err(AttackError::Cancelled),
            _ => Ok(()),
        }
    }
}

impl std::fmt::Debug for Interrupt<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.should_stop.is_some() { "Interrupt(..)" } else { "Interrupt::NEVER" })
    }
}

/// An L-inf attack on a batch.
pub trait Attack: Send + Sync {
    /// Name for reports, e.g. `PGD-20`.
    fn name(&self) -> String;
    /// Radius of the L-inf ball the attack searches in.
    fn eps(&self) -> f64;
    /// Seed of the per-example random streams.
    fn seed(&self) -> u64;
    /// Adversarial versions of `batch.images` (same shape, same device).
    fn perturb(&self, model: &dyn Classifier, batch: &Batch, interrupt: Interrupt) -> Result<Tensor, AttackError>;
    /// [`Attack::perturb`] that also records in `notes` what makes its result less
    /// trustworthy (APGD on a DLR loss: points with a zero gradient at the start). The driver
    /// ([`run_points`]) calls this one.
    fn perturb_noting(
        &self,
        model: &dyn Classifier,
        batch: &Batch,
        interrupt: Interrupt,
        notes: &mut AttackNotes,
    ) -> Result<Tensor, AttackError> {
        let _ = notes;
        self.perturb(model, batch, interrupt)
    }
    /// An ensemble's components in order (AutoAttack): [`evaluate`] runs each on the points the
    /// previous ones left robust, regrouped into full batches. `None` for a single attack.
    fn components(&self) -> Option<&[Box<dyn Attack>]> {
        None
    }
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
pub fn input_gradient(model: &dyn Classifier, images: &Tensor, loss: impl Fn(&Tensor) -> Tensor) -> Result<(Tensor, Tensor), TchError> {
    let input = images.detach().set_requires_grad(true);
    let logits = model.logits(&input)?;
    let total = crate::guard::guarded(|| loss(&logits).sum(Kind::Float))?;
    let gradient = Tensor::f_run_backward(&[total], &[&input], false, false)?
        .pop()
        .ok_or_else(|| TchError::Torch("libtorch returned no input gradient".into()))?;
    Ok((gradient, logits.detach()))
}

/// Checks the invariants every attack must satisfy for its result to be trusted: the shape, the
/// eps-ball around `images` and the box [0, 1]. The three numbers it checks (largest distance,
/// smallest and largest value) are read back together: one host read per batch.
pub fn verify_adversarial(attack: &str, images: &Tensor, adversarial: &Tensor, eps: f64) -> Result<(), AttackError> {
    if adversarial.size() != images.size() {
        return Err(AttackError::WrongShape { attack: attack.to_string(), expected: images.size(), found: adversarial.size() });
    }
    if adversarial.numel() == 0 {
        return Ok(());
    }
    let bounds = Tensor::stack(&[(adversarial - images).abs().max(), adversarial.min(), adversarial.max()], 0);
    let read = crate::host_read::vec_f64(&bounds, "attack output check (eps-ball and [0, 1])");
    let value = |i: usize, otherwise: f64| read.get(i).copied().unwrap_or(otherwise);
    let distance = value(0, f64::INFINITY);
    if !(distance <= eps + BOUND_TOLERANCE) {
        return Err(AttackError::OutsideBall { attack: attack.to_string(), distance, eps });
    }
    let (min, max) = (value(1, f64::NAN), value(2, f64::NAN));
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

    /// Adds a batch: `is_correct` (bool [N]) for examples of classes `labels` ([N]). Counted on
    /// the tensors' device and read back once (one host read per call).
    pub fn add(&mut self, labels: &Tensor, is_correct: &Tensor) {
        let classes = self.total.len() as i64;
        let labels = labels.to_kind(Kind::Int64);
        let device = labels.device();
        // Row 0 counts every example, row 1 the correct ones: sums of ones, as exact as bincount
        // and without its read of the largest label on a GPU.
        let ones = Tensor::ones_like(&labels);
        let weights = Tensor::stack(&[ones, is_correct.to_device(device).to_kind(Kind::Int64)], 0);
        let counts = Tensor::zeros([2, classes], (Kind::Int64, device)).index_add(1, &labels, &weights);
        let read = crate::host_read::vec_i64(&counts, "per-class counts of a batch");
        if read.len() == 2 * self.total.len() {
            let (total, correct) = read.split_at(self.total.len());
            for k in 0..self.total.len() {
                self.total[k] += total[k];
                self.correct[k] += correct[k];
            }
        }
    }

    /// Class-wise accuracy in percent (NaN for a class with no examples).
    pub fn class_accuracy(&self) -> Vec<f64> {
        self.correct.iter().zip(&self.total).map(|(&c, &t)| if t == 0 { f64::NAN } else { 100.0 * c as f64 / t as f64 }).collect()
    }

    /// Overall accuracy in percent.
    pub fn overall_accuracy(&self) -> f64 {
        let total: i64 = self.total.iter().sum();
        100.0 * self.correct.iter().sum::<i64>() as f64 / total.max(1) as f64
    }
}

pub(crate) fn check_eps(eps: f64) -> Result<(), AttackError> {
    if !(eps.is_finite() && (0.0..=1.0).contains(&eps)) {
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

impl AttackError {
    /// libtorch's failure inside `component`, as [`AttackError::Libtorch`] with libtorch's own
    /// line of the message.
    pub fn libtorch(component: impl Into<String>, error: &TchError) -> Self {
        AttackError::Libtorch { component: component.into(), message: crate::guard::torch_message(&error.to_string()) }
    }
}

/// Libtorch work that belongs to `component` but runs outside its `perturb` (the clean pass,
/// judging its output, AutoAttack's checks): a failure, in tch's fallible or panicking forms,
/// comes back as [`AttackError::Libtorch`] naming `component` (computed only then).
pub(crate) fn guarded_in<T>(component: impl FnOnce() -> String, work: impl FnOnce() -> Result<T, TchError>) -> Result<T, AttackError> {
    crate::guard::guarded_result(work).map_err(|error| AttackError::libtorch(component(), &error))
}

/// `attack.perturb`, with every libtorch failure inside it — the model's forward pass or the
/// attack's own arithmetic, in tch's panicking forms included ([`crate::guard::guarded`]) —
/// returned as [`AttackError::Libtorch`] naming the attack.
pub fn perturb_guarded(attack: &dyn Attack, model: &dyn Classifier, batch: &Batch, interrupt: Interrupt) -> Result<Tensor, AttackError> {
    perturb_guarded_noting(attack, model, batch, interrupt, &mut AttackNotes::default())
}

/// [`perturb_guarded`] through [`Attack::perturb_noting`].
pub fn perturb_guarded_noting(
    attack: &dyn Attack,
    model: &dyn Classifier,
    batch: &Batch,
    interrupt: Interrupt,
    notes: &mut AttackNotes,
) -> Result<Tensor, AttackError> {
    match crate::guard::guarded(|| attack.perturb_noting(model, batch, interrupt, notes)) {
        Ok(Ok(adversarial)) => Ok(adversarial),
        Ok(Err(AttackError::Torch(error))) | Err(error) => Err(AttackError::libtorch(attack.name(), &error)),
        Ok(Err(other)) => Err(other),
    }
}

/// Attacks `images` as the points `0..N` under the attack's own seed, without interruption:
/// for tools and tests that attack one batch ([`evaluate`] keys the streams on each point's
/// index in its split instead).
pub fn perturb_batch(attack: &dyn Attack, model: &dyn Classifier, images: &Tensor, labels: &Tensor) -> Result<Tensor, AttackError> {
    let batch = Batch::with_seed(&images.to_device(model.device()), &labels.to_device(model.device()), attack.seed());
    perturb_guarded(attack, model, &batch, Interrupt::NEVER)
}
