//! The evaluation driver: runs an attack over a set of points in batches, checks every returned
//! batch, and counts per class the points the judge still classifies correctly.
//!
//! A single attack runs on every point, in order, and a point counts as robust when the judge
//! classifies the attack's output correctly (as the robust-fairness papers' PGD and CW
//! evaluations count). An ensemble (AutoAttack) first judges the clean points; each component
//! then runs only on the points still robust after the previous ones, and those survivors are
//! regrouped into full batches, as the reference `run_standard_evaluation` does: late
//! components, which see few points per batch, then run on full batches. Since every attack
//! keeps its state per point and draws its random numbers from the point's own stream, how the
//! points are grouped does not change any point's result.

use std::time::Instant;

use tch::{Kind, Tensor};

use super::{
    counted_correct, guarded_in, judged_classes, perturb_guarded, perturb_guarded_noting, verify_adversarial, Attack, AttackError,
    AttackNotes, Batch, ClassCounts, Classifier, Confusion, Interrupt, BOUND_TOLERANCE,
};
use crate::data::Dataset;
use crate::host_read;

/// What one component of an ensemble did (a single attack is its own only component).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ComponentReport {
    pub name: String,
    /// Wall-clock seconds the component took, its checks and judging included.
    pub seconds: f64,
    /// Points it was run on.
    pub attacked: i64,
    /// Points still robust after it, per class.
    pub robust_after: ClassCounts,
    /// Points whose DLR-loss gradient was exactly zero at a run's start (APGD-DLR, APGD-T;
    /// [`AttackNotes`]).
    #[serde(default)]
    pub zero_gradient_points: i64,
}

/// The result of [`evaluate`].
#[derive(Debug, Clone)]
pub struct Evaluation {
    /// Points still correctly classified after the attack, per class.
    pub counts: ClassCounts,
    /// Points of each class by the class predicted after the attack: rows add up to
    /// `counts.total`, the diagonal is `counts.correct`.
    pub confusion: Confusion,
    /// One entry per component that ran (ensembles stop early once no point is left).
    pub components: Vec<ComponentReport>,
}

/// Where a running evaluation is, for progress reports.
#[derive(Debug, Clone, Copy)]
pub struct Progress<'a> {
    /// Name of the component running (the attack's own name for a single attack).
    pub component: &'a str,
    pub component_index: usize,
    pub components: usize,
    /// Points of this component done, out of `total`.
    pub done: i64,
    pub total: i64,
}

/// Runs `attack` over `dataset` in batches of `batch_size` on the model's device, verifies
/// every returned batch, and counts per class the points the judge classifies correctly.
/// `on_progress` is called when a component starts and after every batch; `interrupt` is
/// checked between batches and, inside the attacks, between iterations.
pub fn evaluate(
    attack: &dyn Attack,
    model: &dyn Classifier,
    dataset: &Dataset,
    batch_size: i64,
    interrupt: Interrupt,
    on_progress: &mut dyn FnMut(&Progress),
) -> Result<Evaluation, AttackError> {
    // The points go to the model's device once, for the whole run: each batch is then picked on
    // the device and nothing comes back to the host until the counts (docs/gpu.md).
    let points = Batch::from_dataset(dataset, attack.seed()).to_device(model.device());
    let run = run_points(attack, model, &points, batch_size, interrupt, false, on_progress)?;
    let classes = dataset.num_classes() as usize;
    let counts = class_counts(classes, &points.labels, &run.robust);
    let confusion = Confusion::from_predictions(classes, &points.labels, &run.predicted)?;
    let components = run
        .components
        .into_iter()
        .map(|c| ComponentReport {
            name: c.name,
            seconds: c.seconds,
            attacked: c.attacked,
            robust_after: class_counts(classes, &points.labels, &c.robust_after),
            zero_gradient_points: c.zero_gradient_points,
        })
        .collect();
    Ok(Evaluation { counts, confusion, components })
}

/// [`evaluate`] without interruption that reports `(done, total)` of the current component to
/// `on_batch`; `on_batch` returning false cancels the run.
pub fn robust_accuracy(
    attack: &dyn Attack,
    model: &dyn Classifier,
    dataset: &Dataset,
    batch_size: i64,
    mut on_batch: impl FnMut(i64, i64) -> bool,
) -> Result<ClassCounts, AttackError> {
    let stop = std::sync::atomic::AtomicBool::new(false);
    let should_stop = || stop.load(std::sync::atomic::Ordering::Relaxed);
    let mut progress = |p: &Progress| {
        if p.done > 0 && !on_batch(p.done, p.total) {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    };
    Ok(evaluate(attack, model, dataset, batch_size, Interrupt::new(&should_stop), &mut progress)?.counts)
}

/// Clean accuracy per class (no attack), judged as attacks judge. A failure of the model's
/// forward pass comes back as [`AttackError::Libtorch`] naming `Clean`.
pub fn clean_accuracy(model: &dyn Classifier, dataset: &Dataset, batch_size: i64) -> Result<ClassCounts, AttackError> {
    if batch_size < 1 {
        return Err(AttackError::InvalidParameter(format!("batch size must be positive, got {batch_size}")));
    }
    let mut counts = ClassCounts::new(dataset.num_classes() as usize);
    for (images, labels) in dataset.batches(batch_size) {
        let images = images.to_device(model.device());
        let labels = labels.to_device(model.device());
        let correct = guarded_in(|| "Clean".into(), || counted_correct(model, &images, &labels))?;
        counts.add(&labels, &correct);
    }
    Ok(counts)
}

/// Clean predictions counted per true class ([`Confusion`]; its diagonal is [`clean_accuracy`]'s
/// correct counts), judged as attacks judge, with one read of the predictions per batch.
pub fn clean_confusion(model: &dyn Classifier, dataset: &Dataset, batch_size: i64) -> Result<Confusion, AttackError> {
    if batch_size < 1 {
        return Err(AttackError::InvalidParameter(format!("batch size must be positive, got {batch_size}")));
    }
    let classes = dataset.num_classes() as usize;
    let mut confusion = Confusion::new(classes);
    for (images, labels) in dataset.batches(batch_size) {
        let images = images.to_device(model.device());
        let predicted = guarded_in(|| "Clean".into(), || judged_classes(model, &images))?;
        confusion.add(&Confusion::from_predictions(classes, &labels, &predicted)?)?;
    }
    Ok(confusion)
}

/// Per-class counts of `robust` (bool [N]) over `labels`.
fn class_counts(classes: usize, labels: &Tensor, robust: &Tensor) -> ClassCounts {
    let mut counts = ClassCounts::new(classes);
    counts.add(labels, robust);
    counts
}

/// One component's run, with the robust mask after it (on the points' device).
#[derive(Debug)]
pub struct ComponentRun {
    pub name: String,
    pub seconds: f64,
    pub attacked: i64,
    pub robust_after: Tensor,
    /// [`ComponentReport::zero_gradient_points`].
    pub zero_gradient_points: i64,
}

/// What [`run_points`] found, point by point.
#[derive(Debug)]
pub struct PointsRun {
    /// Bool [N] on the points' device: still correctly classified after the attack.
    pub robust: Tensor,
    /// I64 [N] on the points' device: the class the judge predicts after the attack (for an
    /// ensemble, on the output of the component that broke the point, or on the clean point
    /// when it was misclassified clean); equal to the true class exactly where `robust`.
    pub predicted: Tensor,
    /// The returned points (the first adversarial example found for an ensemble, else the
    /// clean point), when asked for.
    pub adversarial: Option<Tensor>,
    pub components: Vec<ComponentRun>,
}

/// Runs `attack` on `points` (any device) in batches of `batch_size` on the model's device and
/// reports, point by point, what survived each component ([`evaluate`] counts the same per
/// class). `keep_adversarial` also returns the points found.
pub fn run_points(
    attack: &dyn Attack,
    model: &dyn Classifier,
    points: &Batch,
    batch_size: i64,
    interrupt: Interrupt,
    keep_adversarial: bool,
    on_progress: &mut dyn FnMut(&Progress),
) -> Result<PointsRun, AttackError> {
    if batch_size < 1 {
        return Err(AttackError::InvalidParameter(format!("batch size must be positive, got {batch_size}")));
    }
    let home = points.device();
    let device = model.device();
    let n = points.len();
    let mut adversarial = keep_adversarial.then(|| points.images.copy());
    let single: [&dyn Attack; 1] = [attack];
    let (components, ensemble): (Vec<&dyn Attack>, bool) = match attack.components() {
        Some(list) => (list.iter().map(|c| c.as_ref()).collect(), true),
        None => (single.to_vec(), false),
    };
    for component in &components {
        if !(component.eps() <= attack.eps() + BOUND_TOLERANCE) {
            return Err(AttackError::InvalidParameter(format!(
                "{} searches eps = {}, beyond {}'s eps = {}",
                component.name(),
                component.eps(),
                attack.name(),
                attack.eps()
            )));
        }
    }
    // What the judge predicts, point by point; a point is robust exactly where it predicts the
    // true class.
    let (mut robust, mut predicted) = if ensemble {
        // Points misclassified clean are never attacked and never robust.
        let mut clean = Vec::new();
        for start in (0..n).step_by(batch_size as usize) {
            interrupt.check()?;
            let length = batch_size.min(n - start);
            let images = points.images.narrow(0, start, length).to_device(device);
            let classes = guarded_in(|| format!("{} (clean pass)", attack.name()), || judged_classes(model, &images))?;
            clean.push(host_read::to_home(&classes, home, "evaluation: clean pass of a batch"));
        }
        let predicted = if clean.is_empty() { Tensor::zeros([0], (Kind::Int64, home)) } else { Tensor::cat(&clean, 0) };
        (predicted.eq_tensor(&points.labels), predicted)
    } else {
        (Tensor::ones([n], (Kind::Bool, home)), points.labels.copy())
    };

    let mut reports = Vec::with_capacity(components.len());
    for (component_index, component) in components.iter().enumerate() {
        let started = Instant::now();
        let name = component.name();
        let targets = if ensemble {
            host_read::nonzero(&robust, "evaluation: points still robust before a component")
        } else {
            Tensor::arange(n, (Kind::Int64, home))
        };
        let total = targets.size()[0];
        if ensemble && total == 0 {
            break;
        }
        let report = |done: i64| Progress { component: &name, component_index, components: components.len(), done, total };
        on_progress(&report(0));
        let mut done = 0;
        let mut notes = AttackNotes::default();
        while done < total {
            interrupt.check()?;
            let length = batch_size.min(total - done);
            let index = targets.narrow(0, done, length);
            let batch = points.select(&index).to_device(device);
            let mut candidate = perturb_guarded_noting(*component, model, &batch, interrupt, &mut notes)?.detach().to_device(device);
            verify_adversarial(&name, &batch.images, &candidate, component.eps())?;
            let judging = || format!("{name} (judging its output)");
            let mut classes = guarded_in(judging, || judged_classes(model, &candidate))?;
            let mut correct = classes.eq_tensor(&batch.labels);
            if let Some(exact) = model.exact() {
                // The attack network is a copy of the judge: where it took a point for broken and
                // the judge does not, attack that point again with the judge itself.
                let copy_broken =
                    guarded_in(judging, || tch::no_grad(|| model.logits(&candidate)?.f_argmax(-1, false)?.f_ne_tensor(&batch.labels)))?;
                let disputed =
                    host_read::nonzero(&copy_broken.logical_and(&correct), "evaluation: points the bf16 copy broke and the judge did not");
                if disputed.numel() > 0 {
                    let again = batch.select(&disputed);
                    let retried = perturb_guarded(*component, exact, &again, interrupt)?.detach().to_device(device);
                    verify_adversarial(&name, &again.images, &retried, component.eps())?;
                    let retried_classes = guarded_in(judging, || judged_classes(model, &retried))?;
                    candidate = candidate.index_copy(0, &disputed, &retried);
                    classes = classes.index_copy(0, &disputed, &retried_classes);
                    correct = classes.eq_tensor(&batch.labels);
                }
            }
            let broken = correct.logical_not();
            if let Some(adversarial) = adversarial.as_mut() {
                // A single attack returns its output for every point; an ensemble keeps, per
                // point, the first component's example that fooled the judge.
                let kept = if ensemble { candidate.where_self(&expand_mask(&broken, &candidate), &batch.images) } else { candidate };
                *adversarial =
                    adversarial.index_copy(0, &index, &host_read::to_home(&kept, home, "evaluation: adversarial points of a batch"));
            }
            // One read per batch: the predictions; robustness follows from them on the points' device.
            let classes = host_read::to_home(&classes, home, "evaluation: predictions of a batch");
            robust = robust.index_copy(0, &index, &classes.eq_tensor(&points.labels.index_select(0, &index)));
            predicted = predicted.index_copy(0, &index, &classes);
            done += length;
            on_progress(&report(done));
        }
        reports.push(ComponentRun {
            name: name.clone(),
            seconds: started.elapsed().as_secs_f64(),
            attacked: total,
            robust_after: robust.shallow_clone(),
            zero_gradient_points: notes.zero_gradient_points(),
        });
    }
    Ok(PointsRun { robust, predicted, adversarial, components: reports })
}

/// Broadcasts a per-point [N] mask against [N, ...] images.
pub(crate) fn expand_mask(mask: &Tensor, like: &Tensor) -> Tensor {
    let mut shape = vec![1i64; like.dim().max(1)];
    shape[0] = -1;
    mask.reshape(shape.as_slice())
}
