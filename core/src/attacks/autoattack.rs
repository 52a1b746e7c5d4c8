//! AutoAttack (Croce and Hein, ICML 2020): a fixed, parameter-free ensemble whose robust
//! accuracy is the fraction of points that survive every component (docs/attacks.md).
//!
//! The components run in sequence, each only on the points still robust after the previous
//! ones (points misclassified clean are never attacked), so the cost is dominated by the first,
//! cheapest attack and later ones only see the hard points. The evaluation driver
//! ([`super::evaluate`]) regroups each component's points into full batches, as the reference
//! `run_standard_evaluation` does. The returned batch carries, per point, the first adversarial
//! example that fooled the judge, else the clean input. Each component's output is checked with
//! [`super::verify_adversarial`] and its success decided by a fresh forward pass of the judge,
//! as the reference does, so a component cannot claim a point it did not actually break.
//!
//! Randomness: every component draws from the points' own streams under the AutoAttack seed
//! (the reference reseeds libtorch's generator with that seed before each component); each
//! attack salts its draws, so no two components start from the same numbers.
//!
//! [`sanity_flags`] reproduces the reference's checks (`checks.py`) for evaluations that
//! AutoAttack cannot be trusted on: randomised models, models that output probabilities, zero
//! input gradients (gradient masking) and models that take gradients in their forward pass;
//! [`SanityFlags::with_run`] adds those the reference makes during and after the run (zero DLR
//! gradients at APGD's start on every batch, Square lowering the robust accuracy after the
//! gradient attacks) and [`SanityFlags::with_targets`] the one on too few classes.

use tch::{Kind, TchError, Tensor};

use super::evaluation::run_points;
use super::{check_eps, input_gradient, losses, Apgd, Attack, AttackError, Batch, Classifier, Fab, Interrupt, Square};

/// An ordered ensemble of attacks, each run on the points the previous ones left robust.
pub struct AutoAttack {
    pub eps: f64,
    pub seed: u64,
    /// `standard`, `rand` or `custom`: only used in the name.
    pub version: String,
    pub attacks: Vec<Box<dyn Attack>>,
    /// Iterations of the APGD and FAB components and queries of Square when they are not the
    /// reference's (100 and 5000): a quick check, named `AutoAttack@N`, not AutoAttack.
    pub reduced_iterations: Option<i64>,
}

impl std::fmt::Debug for AutoAttack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AutoAttack")
            .field("eps", &self.eps)
            .field("seed", &self.seed)
            .field("version", &self.version)
            .field("attacks", &self.attacks.iter().map(|a| a.name()).collect::<Vec<_>>())
            .field("reduced_iterations", &self.reduced_iterations)
            .finish()
    }
}

impl AutoAttack {
    /// The standard version: APGD-CE (100 iterations, 1 restart), APGD-T (9 targets, 100
    /// iterations), FAB-T (9 targets), Square (5000 queries, p_init 0.8, schedule not
    /// rescaled).
    pub fn standard(eps: f64, seed: u64) -> Self {
        AutoAttack {
            eps,
            seed,
            version: "standard".into(),
            attacks: vec![
                Box::new(Apgd::ce(eps, seed)),
                Box::new(Apgd::targeted(eps, 9, seed)),
                Box::new(Fab::targeted(eps, 9, seed)),
                Box::new(Square::new(eps, 5000, 0.8, seed)),
            ],
            reduced_iterations: None,
        }
    }

    /// The version for randomised models: APGD-CE and APGD-DLR, each with the gradient averaged
    /// over 20 forward passes (expectation over transformation).
    pub fn rand(eps: f64, seed: u64) -> Self {
        AutoAttack {
            eps,
            seed,
            version: "rand".into(),
            attacks: vec![Box::new(Apgd::ce(eps, seed).with_eot(20)), Box::new(Apgd::dlr(eps, seed).with_eot(20))],
            reduced_iterations: None,
        }
    }

    /// Any sequence of attacks, each searching within `eps`.
    pub fn custom(eps: f64, seed: u64, attacks: Vec<Box<dyn Attack>>) -> Self {
        AutoAttack { eps, seed, version: "custom".into(), attacks, reduced_iterations: None }
    }

    fn validate(&self) -> Result<(), AttackError> {
        check_eps(self.eps)
    }
}

impl Attack for AutoAttack {
    fn name(&self) -> String {
        let name = match self.version.as_str() {
            "standard" => "AutoAttack".into(),
            "rand" => "AutoAttack-rand".into(),
            _ => format!("AutoAttack({})", self.attacks.iter().map(|a| a.name()).collect::<Vec<_>>().join("+")),
        };
        match self.reduced_iterations {
            Some(iterations) => format!("{name}@{iterations}"),
            None => name,
        }
    }

    fn eps(&self) -> f64 {
        self.eps
    }

    fn seed(&self) -> u64 {
        self.seed
    }

    /// The whole ensemble on one batch (the driver's [`super::evaluate`] does the same over a
    /// data set, with survivors regrouped across batches).
    fn perturb(&self, model: &dyn Classifier, batch: &Batch, interrupt: Interrupt) -> Result<Tensor, AttackError> {
        self.validate()?;
        let size = batch.len().max(1);
        let outcome = run_points(self, model, batch, size, interrupt, true, &mut |_| {})?;
        Ok(outcome.adversarial.unwrap_or_else(|| batch.images.copy()))
    }

    fn components(&self) -> Option<&[Box<dyn Attack>]> {
        Some(&self.attacks)
    }
}

/// Warnings the reference AutoAttack prints before evaluating (`checks.py`), as data.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SanityFlags {
    /// Outputs (or the number of correct predictions) differ across repeated forward passes of
    /// the same input: the standard version underestimates such a model's robustness; use
    /// [`AutoAttack::rand`].
    pub randomised: bool,
    /// Every output row lies in [0, 1] and sums to 1: the model returns probabilities, on which
    /// CE and DLR gradients are badly scaled.
    pub probabilities_not_logits: bool,
    /// Fraction of points whose cross-entropy input gradient is exactly zero.
    pub zero_gradient_fraction: f64,
    /// Set when any point has a zero gradient, as in the reference, since gradient-based
    /// attacks cannot move such a point and their robust accuracy is then unreliable.
    pub possible_gradient_masking: bool,
    /// The model's own code takes gradients inside its forward pass (a TorchScript module that
    /// calls `torch.autograd.grad` or `backward`): a dynamic, test-time defence, which
    /// AutoAttack may not evaluate well (the reference's `check_dynamic`).
    #[serde(default)]
    pub dynamic: bool,
    /// Points whose DLR-loss input gradient was exactly zero at the random start of an
    /// APGD-DLR or APGD-T run, over every batch and run (the reference's zero-gradient check in
    /// APGD; APGD-T counts a point once per target).
    #[serde(default)]
    pub dlr_zero_gradient_points: i64,
    /// How far (a fraction of the points) Square, which uses no gradient, lowered the robust
    /// accuracy below the lowest reached without it; 0 when it did not.
    #[serde(default)]
    pub square_robust_accuracy_drop: f64,
    /// Set when that drop exceeds the reference's 0.2 points (`check_square_sr`): the
    /// gradient-based components missed what a black-box search found, a sign of masking.
    #[serde(default)]
    pub square_lowered_robust_accuracy: bool,
    /// Targets of APGD-T and FAB-T asked for (AutoAttack's 9), 0 without targeted components.
    #[serde(default)]
    pub targets_requested: i64,
    /// Targets they could use: at most the model's classes minus one.
    #[serde(default)]
    pub targets_used: i64,
}

/// Largest drop of the robust accuracy by Square (a fraction of the points) not taken as a
/// warning (the reference's `alpha` in `check_square_sr`).
const SQUARE_DROP_TOLERANCE: f64 = 0.002;

impl SanityFlags {
    /// The model has fewer classes than the targeted components asked to try (the reference's
    /// `check_n_classes`): they ran with fewer targets, a weaker attack than AutoAttack's.
    pub fn fewer_classes_than_targets(&self) -> bool {
        self.targets_used < self.targets_requested
    }

    /// Whether any check warns (`rfb_proto::sanity::warnings` says each in words).
    pub fn any(&self) -> bool {
        self.randomised
            || self.probabilities_not_logits
            || self.possible_gradient_masking
            || self.dynamic
            || self.dlr_zero_gradient_points > 0
            || self.square_lowered_robust_accuracy
            || self.fewer_classes_than_targets()
    }

    /// Completes the flags with what the run itself showed: zero DLR gradients noted by the
    /// APGD components and what Square found beyond the others (`components` in the order they
    /// ran; the first one's `attacked` are the points classified correctly clean).
    pub fn with_run(mut self, components: &[super::ComponentReport], points: i64) -> Self {
        self.dlr_zero_gradient_points = components.iter().map(|c| c.zero_gradient_points).sum();
        let robust = |c: &super::ComponentReport| c.robust_after.correct.iter().sum::<i64>();
        let square = components.iter().find(|c| c.name == "Square");
        // As the reference: robust accuracy after Square against the lowest of clean and every
        // other component, when at least one other component ran.
        if let (Some(square), true, Some(first)) = (square, components.len() > 1, components.first()) {
            let others = components.iter().filter(|c| c.name != "Square").map(robust).min();
            let lowest = others.map_or(first.attacked, |o| o.min(first.attacked));
            if points > 0 && robust(square) < lowest {
                self.square_robust_accuracy_drop = (lowest - robust(square)) as f64 / points as f64;
            }
            self.square_lowered_robust_accuracy = self.square_robust_accuracy_drop > SQUARE_DROP_TOLERANCE;
        }
        self
    }

    /// Records the targets asked for and those the model's classes allowed.
    pub fn with_targets(mut self, requested: i64, used: i64) -> Self {
        (self.targets_requested, self.targets_used) = (requested, used);
        self
    }
}

/// Forward passes compared by the randomness check (the reference uses 5).
const RANDOMNESS_PASSES: usize = 5;
/// Largest L2 distance between L2-normalised output rows still taken as equal (reference 1e-4).
const RANDOMNESS_TOLERANCE: f64 = 1e-4;
/// Slack on [0, 1] and on the row sums in the probability check (reference 1e-5).
const PROBABILITY_TOLERANCE: f64 = 1e-5;

/// Points the checks of [`sanity_flags_in_chunks`] look at: the first 250 of an evaluation, as
/// the reference checks its first batch at its default batch size of 250.
pub const SANITY_POINTS: i64 = 250;

/// [`sanity_flags`] on the first [`SANITY_POINTS`] of `images`, `chunk` at a time, merged as if
/// checked at once (outputs must be probabilities in every chunk; randomness, zero gradients and
/// the rest in any), so that the flags a result stores do not depend on the batch size it was
/// computed with.
pub fn sanity_flags_in_chunks(model: &dyn Classifier, images: &Tensor, labels: &Tensor, chunk: i64) -> Result<SanityFlags, AttackError> {
    let total = images.size().first().copied().unwrap_or(0).min(SANITY_POINTS);
    let chunk = chunk.max(1);
    // (flags so far, points with a zero gradient so far)
    let mut merged: Option<(SanityFlags, i64)> = None;
    let mut start = 0;
    while start < total {
        let length = chunk.min(total - start);
        let flags = sanity_flags(model, &images.narrow(0, start, length), &labels.narrow(0, start, length))?;
        let zero_points = (flags.zero_gradient_fraction * length as f64).round() as i64;
        merged = Some(match merged {
            None => (flags, zero_points),
            Some((sum, zeros)) => (
                SanityFlags {
                    randomised: sum.randomised || flags.randomised,
                    probabilities_not_logits: sum.probabilities_not_logits && flags.probabilities_not_logits,
                    dynamic: sum.dynamic || flags.dynamic,
                    ..sum
                },
                zeros + zero_points,
            ),
        });
        start += length;
    }
    match merged {
        Some((flags, zeros)) => {
            let fraction = zeros as f64 / total as f64;
            Ok(SanityFlags { zero_gradient_fraction: fraction, possible_gradient_masking: zeros > 0, ..flags })
        }
        None => sanity_flags(model, images, labels),
    }
}

/// Runs the reference's checks on a batch: repeated forward passes, the range of the outputs,
/// and the CE input gradient per point. A failure of the model or of libtorch comes back as
/// [`AttackError::Libtorch`] naming the check.
pub fn sanity_flags(model: &dyn Classifier, images: &Tensor, labels: &Tensor) -> Result<SanityFlags, AttackError> {
    super::guarded_in(|| "AutoAttack's sanity checks".into(), || checks(model, images, labels))
}

fn checks(model: &dyn Classifier, images: &Tensor, labels: &Tensor) -> Result<SanityFlags, TchError> {
    let device = model.device();
    let images = images.detach().to_device(device);
    let labels = labels.to_device(device).to_kind(Kind::Int64);
    // Once per evaluation, before any attack runs: a handful of reads, each kept simple.
    let scalar = |t: Tensor| crate::host_read::scalar_f64(&t, "AutoAttack sanity checks (once per evaluation)");

    let outputs: Vec<Tensor> = tch::no_grad(|| (0..RANDOMNESS_PASSES).map(|_| model.logits(&images)).collect::<Result<Vec<_>, _>>())?;
    let correct: Vec<f64> = outputs.iter().map(|o| scalar(o.argmax(-1, false).eq_tensor(&labels).sum(Kind::Float))).collect();
    let normalised: Vec<Tensor> = outputs.iter().map(|o| o / (o.square().sum_dim_intlist(-1, true, Kind::Float).sqrt() + 1e-10)).collect();
    let mut max_difference: f64 = 0.0;
    for (i, a) in normalised.iter().enumerate() {
        for b in &normalised[i + 1..] {
            let d = scalar((a - b).square().sum_dim_intlist(-1, false, Kind::Float).sqrt().max());
            // NaN outputs cannot be compared: count them as differing.
            max_difference = if d.is_nan() { f64::INFINITY } else { max_difference.max(d) };
        }
    }
    let randomised = correct.iter().any(|&c| c != correct[0]) || max_difference > RANDOMNESS_TOLERANCE;

    let first = &outputs[0];
    let probabilities_not_logits = first.numel() > 0
        && scalar(first.max()) < 1.0 + PROBABILITY_TOLERANCE
        && scalar(first.min()) > -PROBABILITY_TOLERANCE
        && scalar((first.sum_dim_intlist(-1, false, Kind::Float) - 1.0).abs().max()) < PROBABILITY_TOLERANCE;

    let n = images.size().first().copied().unwrap_or(0);
    let zero_gradient_fraction = if n == 0 {
        0.0
    } else {
        let (gradient, _) = input_gradient(model, &images, |logits| losses::cross_entropy(logits, &labels))?;
        // The gradient has the layout the network gave it (channels-last for the fp32-fast and
        // bf16 copies): reshape, which copies where a view cannot be had.
        let per_point = gradient.abs().reshape([n, -1]).sum_dim_intlist(1, false, Kind::Float);
        // A count over the batch size in f64, so that chunks merge exactly.
        scalar(per_point.eq(0.0).sum(Kind::Int64)) / n as f64
    };
    Ok(SanityFlags {
        randomised,
        probabilities_not_logits,
        zero_gradient_fraction,
        possible_gradient_masking: zero_gradient_fraction > 0.0,
        dynamic: model.computes_gradients_in_forward(),
        dlr_zero_gradient_points: 0,
        square_robust_accuracy_drop: 0.0,
        square_lowered_robust_accuracy: false,
        targets_requested: 0,
        targets_used: 0,
    })
}
