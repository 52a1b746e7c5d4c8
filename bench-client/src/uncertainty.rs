//! Uncertainty of one evaluation: how sure one seed's numbers are, given that each class was
//! measured on a finite number of test points (the across-seed statistics in `summary` say how
//! much training varies; these say how much the test sample does).
//!
//! - Per class, an exact binomial (Clopper-Pearson) interval of the accuracy at
//!   `Settings::confidence`: low = B⁻¹(α/2; k, n−k+1), high = B⁻¹(1−α/2; k+1, n−k) with B⁻¹
//!   statrs' inverse CDF of the Beta distribution, low = 0 at k = 0 and high = 1 at k = n.
//! - For Avg, Worst, Worst-10% and NSD, a class-stratified bootstrap over the test points: in
//!   each resample every class draws as many of its own points as it has, uniformly with
//!   replacement (positions `0..n`, of which `0..k` are the correctly classified ones), the
//!   metrics are recomputed with `rfb_proto::metrics`, and the interval is the percentile
//!   interval (numpy's default linear interpolation between order statistics).
//! - The probability that the reported worst class is the worst: the share of resamples in
//!   which that class has the lowest accuracy, a tie of m classes at the lowest counting 1/m
//!   to each (so the shares of all classes add up to 1). The reported worst class is the one
//!   with the lowest measured accuracy, the first in class order on a tie.
//!
//! The draws come from ChaCha8 seeded with `UncertaintySettings::bootstrap_seed` afresh for every
//! evaluation, in the order resample, class, point: the resamples are a function of the class
//! sizes and the settings only (two evaluations with the same class sizes resample the same
//! positions), so a report rebuilt from results.json draws them again exactly.

use rand::distributions::{Distribution, Uniform};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use statrs::distribution::{Beta, ContinuousCDF};

use crate::results::{AttackRun, Results, UncertaintySettings};
use crate::stats::{self, Description};
use crate::summary::Metric;

/// Exact (Clopper-Pearson) interval of a binomial proportion `correct / total`, in percent.
/// NaN for an empty class or a confidence outside (0, 1).
pub fn clopper_pearson(correct: i64, total: i64, confidence: f64) -> (f64, f64) {
    if total <= 0 || correct < 0 || correct > total || !(confidence > 0.0 && confidence < 1.0) {
        return (f64::NAN, f64::NAN);
    }
    let alpha = 1.0 - confidence;
    let (k, n) = (correct as f64, total as f64);
    let low = if correct == 0 { 0.0 } else { Beta::new(k, n - k + 1.0).map(|b| b.inverse_cdf(alpha / 2.0)).unwrap_or(f64::NAN) };
    let high = if correct == total { 1.0 } else { Beta::new(k + 1.0, n - k).map(|b| b.inverse_cdf(1.0 - alpha / 2.0)).unwrap_or(f64::NAN) };
    (100.0 * low, 100.0 * high)
}

/// One class's accuracy with its Clopper-Pearson interval (percent).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ClassInterval {
    pub correct: i64,
    pub total: i64,
    pub accuracy: f64,
    pub low: f64,
    pub high: f64,
}

impl ClassInterval {
    pub fn width(&self) -> f64 {
        self.high - self.low
    }
}

/// Every class's interval for one evaluation.
pub fn class_intervals(correct: &[i64], total: &[i64], confidence: f64) -> Vec<ClassInterval> {
    let accuracy = rfb_proto::metrics::class_accuracy(correct, total);
    correct
        .iter()
        .zip(total)
        .zip(accuracy)
        .map(|((&k, &n), accuracy)| {
            let (low, high) = clopper_pearson(k, n, confidence);
            ClassInterval { correct: k, total: n, accuracy, low, high }
        })
        .collect()
}

/// Draws the class-stratified resamples: calls `visit(resample, class, positions)` with the
/// positions (each in `0..total[class]`) drawn for every class of every resample, in the order
/// the generator draws them.
pub fn draw_resamples(total: &[i64], settings: &UncertaintySettings, mut visit: impl FnMut(usize, usize, &[u32])) {
    let mut rng = ChaCha8Rng::seed_from_u64(settings.bootstrap_seed);
    let mut positions: Vec<u32> = Vec::new();
    // One uniform distribution per class, made once (rand's Uniform: exact, by rejection).
    let classes: Vec<(u32, Option<Uniform<u32>>)> = total
        .iter()
        .map(|&n| {
            let n = u32::try_from(n.max(0)).unwrap_or(u32::MAX);
            (n, (n > 0).then(|| Uniform::new(0, n)))
        })
        .collect();
    for r in 0..settings.bootstrap_resamples as usize {
        for (class, (n, uniform)) in classes.iter().enumerate() {
            positions.clear();
            if let Some(uniform) = uniform {
                positions.extend((0..*n).map(|_| uniform.sample(&mut rng)));
            }
            visit(r, class, &positions);
        }
    }
}

/// The correct counts of every resample (`[resample][class]`): the drawn positions below the
/// class's correct count.
pub fn resampled_counts(correct: &[i64], total: &[i64], settings: &UncertaintySettings) -> Vec<Vec<i64>> {
    let mut counts = vec![vec![0i64; total.len()]; settings.bootstrap_resamples as usize];
    draw_resamples(total, settings, |r, class, positions| {
        let k = correct.get(class).copied().unwrap_or(0);
        counts[r][class] = positions.iter().filter(|&&p| i64::from(p) < k).count() as i64;
    });
    counts
}

/// The `q` quantile of ascending `sorted` values with linear interpolation between order
/// statistics (numpy's default): position (len − 1) · q. NaN when empty or any value is NaN.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() || sorted.iter().any(|v| v.is_nan()) {
        return f64::NAN;
    }
    let h = (sorted.len() - 1) as f64 * q.clamp(0.0, 1.0);
    let lo = h.floor() as usize;
    let hi = (lo + 1).min(sorted.len() - 1);
    sorted[lo] + (h - lo as f64) * (sorted[hi] - sorted[lo])
}

/// A metric as measured, with its bootstrap percentile interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MetricInterval {
    pub metric: Metric,
    pub estimate: f64,
    pub low: f64,
    pub high: f64,
}

impl MetricInterval {
    pub fn width(&self) -> f64 {
        self.high - self.low
    }
}

/// The bootstrap of one evaluation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Bootstrap {
    pub resamples: u32,
    pub seed: u64,
    /// Avg, Worst, Worst-10% and NSD, in `Metric::ALL` order.
    pub intervals: Vec<MetricInterval>,
    /// The reported worst class (lowest measured accuracy, first on a tie); None without classes.
    pub worst_class: Option<usize>,
    /// Per class, the share of resamples in which it has the lowest accuracy (ties shared).
    pub worst_share: Vec<f64>,
}

impl Bootstrap {
    pub fn interval(&self, metric: Metric) -> Option<&MetricInterval> {
        self.intervals.iter().find(|i| i.metric == metric)
    }

    /// Probability that the reported worst class is the worst (NaN without one or without resamples).
    pub fn p_worst_is_worst(&self) -> f64 {
        self.worst_class.and_then(|k| self.worst_share.get(k).copied()).unwrap_or(f64::NAN)
    }
}

/// The classes at the lowest accuracy `correct / total`, compared exactly (k_a · n_b against
/// k_b · n_a); classes without points take no part.
pub fn lowest_classes(correct: &[i64], total: &[i64]) -> Vec<usize> {
    let mut lowest: Vec<usize> = Vec::new();
    for (class, (&k, &n)) in correct.iter().zip(total).enumerate() {
        if n <= 0 {
            continue;
        }
        match lowest.first() {
            None => lowest.push(class),
            Some(&best) => {
                let (kb, nb) = (i128::from(correct[best]), i128::from(total[best]));
                let (lhs, rhs) = (i128::from(k) * nb, kb * i128::from(n));
                if lhs < rhs {
                    lowest.clear();
                    lowest.push(class);
                } else if lhs == rhs {
                    lowest.push(class);
                }
            }
        }
    }
    lowest
}

/// The class-stratified bootstrap of one evaluation's counts.
pub fn bootstrap(correct: &[i64], total: &[i64], settings: &UncertaintySettings, confidence: f64) -> Bootstrap {
    let counts = resampled_counts(correct, total, settings);
    bootstrap_from_counts(correct, total, &counts, settings, confidence)
}

/// The bootstrap statistics from given resampled counts (`[resample][class]`).
pub fn bootstrap_from_counts(
    correct: &[i64],
    total: &[i64],
    counts: &[Vec<i64>],
    settings: &UncertaintySettings,
    confidence: f64,
) -> Bootstrap {
    let measured = rfb_proto::metrics::summarize(&rfb_proto::metrics::class_accuracy(correct, total));
    let mut values: Vec<Vec<f64>> = vec![Vec::with_capacity(counts.len()); Metric::ALL.len()];
    let mut worst_share = vec![0.0; total.len()];
    for resample in counts {
        let s = rfb_proto::metrics::summarize(&rfb_proto::metrics::class_accuracy(resample, total));
        for (m, metric) in Metric::ALL.iter().enumerate() {
            values[m].push(metric.of(&s));
        }
        let lowest = lowest_classes(resample, total);
        for &class in &lowest {
            worst_share[class] += 1.0 / lowest.len() as f64;
        }
    }
    if !counts.is_empty() {
        for share in &mut worst_share {
            *share /= counts.len() as f64;
        }
    } else {
        worst_share.iter_mut().for_each(|s| *s = f64::NAN);
    }
    let confidence = if confidence > 0.0 && confidence < 1.0 { confidence } else { 0.95 };
    let intervals = Metric::ALL
        .iter()
        .zip(values)
        .map(|(&metric, mut v)| {
            v.sort_by(f64::total_cmp);
            MetricInterval {
                metric,
                estimate: metric.of(&measured),
                low: percentile(&v, (1.0 - confidence) / 2.0),
                high: percentile(&v, (1.0 + confidence) / 2.0),
            }
        })
        .collect();
    Bootstrap {
        resamples: settings.bootstrap_resamples,
        seed: settings.bootstrap_seed,
        intervals,
        worst_class: lowest_classes(correct, total).first().copied(),
        worst_share,
    }
}

/// The uncertainty of one evaluation (one model, seed and attack).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evaluation {
    pub model: String,
    pub seed: u64,
    pub attack: String,
    pub class_names: Vec<String>,
    pub classes: Vec<ClassInterval>,
    pub bootstrap: Bootstrap,
}

impl Evaluation {
    /// Mean width of the per-class intervals (percentage points) over the classes with points.
    pub fn mean_class_width(&self) -> f64 {
        stats::mean(&self.classes.iter().map(ClassInterval::width).filter(|w| w.is_finite()).collect::<Vec<_>>())
    }

    pub fn worst_class_name(&self) -> Option<&str> {
        self.bootstrap.worst_class.and_then(|k| self.class_names.get(k)).map(String::as_str)
    }
}

/// The confidence level the report uses (the settings', 0.95 when unset or invalid).
pub fn confidence(results: &Results) -> f64 {
    let c = results.settings.confidence;
    if c > 0.0 && c < 1.0 {
        c
    } else {
        0.95
    }
}

fn evaluation(model: &str, seed: u64, attack: &AttackRun, settings: &UncertaintySettings, confidence: f64) -> Evaluation {
    Evaluation {
        model: model.to_string(),
        seed,
        attack: attack.attack.clone(),
        class_names: attack.class_names.clone(),
        classes: class_intervals(&attack.correct, &attack.total, confidence),
        bootstrap: bootstrap(&attack.correct, &attack.total, settings, confidence),
    }
}

/// Every evaluation's uncertainty, in model, seed and attack (settings) order. Evaluations are
/// independent (each draws from its own generator), so they run on every core; the result is the
/// same whatever the number of threads.
pub fn evaluations(results: &Results) -> Vec<Evaluation> {
    let confidence = confidence(results);
    let settings = &results.settings.uncertainty;
    let labels = results.attack_labels();
    let mut jobs: Vec<(&str, u64, &AttackRun)> = Vec::new();
    for model in &results.models {
        for run in &model.runs {
            for label in &labels {
                if let Some(attack) = run.attack(label) {
                    jobs.push((&model.label, run.seed, attack));
                }
            }
        }
    }
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(jobs.len()).max(1);
    let chunk = jobs.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = jobs
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(|&(m, s, a)| evaluation(m, s, a, settings, confidence)).collect::<Vec<_>>()))
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))).collect()
    })
}

/// A within-seed quantity of one model and attack described across its seeds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AcrossSeeds {
    pub model: String,
    pub attack: String,
    /// Key in summary.csv, e.g. `worst_bootstrap_width`.
    pub key: &'static str,
    pub description: Description,
}

/// The within-seed quantities summarised across seeds, as rows of summary.csv: the mean
/// per-class Clopper-Pearson width, each metric's bootstrap interval width, and the
/// probability that the reported worst class is the worst.
pub fn across_seeds(results: &Results, evaluations: &[Evaluation]) -> Vec<AcrossSeeds> {
    let confidence = confidence(results);
    let mut out = Vec::new();
    for model in &results.models {
        for attack in results.attack_labels() {
            let runs: Vec<&Evaluation> = evaluations.iter().filter(|e| e.model == model.label && e.attack == attack).collect();
            if runs.is_empty() {
                continue;
            }
            let mut push = |key: &'static str, values: Vec<f64>| {
                out.push(AcrossSeeds {
                    model: model.label.clone(),
                    attack: attack.clone(),
                    key,
                    description: stats::describe(&values, confidence),
                });
            };
            push("class_clopper_pearson_width", runs.iter().map(|e| e.mean_class_width()).collect());
            for metric in Metric::ALL {
                let values = runs.iter().map(|e| e.bootstrap.interval(metric).map(MetricInterval::width).unwrap_or(f64::NAN)).collect();
                push(bootstrap_width_key(metric), values);
            }
            push("p_worst_class_is_worst", runs.iter().map(|e| e.bootstrap.p_worst_is_worst()).collect());
        }
    }
    out
}

/// The summary.csv key of a metric's bootstrap interval width.
pub fn bootstrap_width_key(metric: Metric) -> &'static str {
    match metric {
        Metric::Avg => "avg_bootstrap_width",
        Metric::Worst => "worst_bootstrap_width",
        Metric::Worst10 => "worst_10_percent_bootstrap_width",
        Metric::Nsd => "nsd_bootstrap_width",
    }
}

/// One evaluation's counts, its resamples (every drawn position) and what this module makes of
/// them, as JSON: for checking the statistics independently (tests/python/uncertainty_reference.py).
pub fn resamples_json(correct: &[i64], total: &[i64], settings: &UncertaintySettings, confidence: f64) -> serde_json::Value {
    let mut positions: Vec<Vec<Vec<u32>>> = vec![vec![Vec::new(); total.len()]; settings.bootstrap_resamples as usize];
    draw_resamples(total, settings, |r, class, drawn| positions[r][class] = drawn.to_vec());
    let b = bootstrap(correct, total, settings, confidence);
    let finite = |v: f64| if v.is_finite() { serde_json::json!(v) } else { serde_json::Value::Null };
    serde_json::json!({
        "correct": correct,
        "total": total,
        "confidence": confidence,
        "resamples": settings.bootstrap_resamples,
        "seed": settings.bootstrap_seed,
        "positions": positions,
        "clopper_pearson": class_intervals(correct, total, confidence).iter().map(|c| [finite(c.low), finite(c.high)]).collect::<Vec<_>>(),
        "bootstrap": b.intervals.iter().map(|i| (i.metric.key().to_string(), serde_json::json!({
            "estimate": finite(i.estimate), "low": finite(i.low), "high": finite(i.high)
        }))).collect::<serde_json::Map<_, _>>(),
        "worst_class": b.worst_class,
        "worst_share": b.worst_share.iter().map(|&v| finite(v)).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clopper_pearson_by_hand() {
        // k = 0: high = 1 − (α/2)^(1/n); k = n: low = (α/2)^(1/n). n = 10, α = 0.05.
        let (lo, hi) = clopper_pearson(0, 10, 0.95);
        assert_eq!(lo, 0.0);
        assert!((hi - 100.0 * (1.0 - 0.025f64.powf(0.1))).abs() < 1e-9, "{hi}");
        let (lo, hi) = clopper_pearson(10, 10, 0.95);
        assert_eq!(hi, 100.0);
        assert!((lo - 100.0 * 0.025f64.powf(0.1)).abs() < 1e-9, "{lo}");
        // k = 1, n = 1 at 95%: [2.5, 100].
        let (lo, hi) = clopper_pearson(1, 1, 0.95);
        assert!((lo - 2.5).abs() < 1e-9 && hi == 100.0);
        assert!(clopper_pearson(0, 0, 0.95).0.is_nan());
    }

    #[test]
    fn percentiles_interpolate_like_numpy() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&v, 1.0), 4.0);
        assert!((percentile(&v, 0.25) - 1.75).abs() < 1e-12);
        assert!(percentile(&[1.0, f64::NAN], 0.5).is_nan());
    }

    #[test]
    fn ties_at_the_lowest_share_the_credit() {
        assert_eq!(lowest_classes(&[1, 2, 1], &[2, 4, 3]), vec![2]);
        assert_eq!(lowest_classes(&[1, 2, 5], &[2, 4, 6]), vec![0, 1]);
        assert_eq!(lowest_classes(&[0, 3], &[0, 4]), vec![1]);
    }

    #[test]
    fn resamples_are_reproducible_and_stratified() {
        let settings = UncertaintySettings { bootstrap_resamples: 50, bootstrap_seed: 7 };
        let a = resampled_counts(&[3, 9], &[10, 12], &settings);
        assert_eq!(a, resampled_counts(&[3, 9], &[10, 12], &settings));
        assert!(a.iter().all(|r| r[0] <= 10 && r[1] <= 12));
        let other = resampled_counts(&[3, 9], &[10, 12], &UncertaintySettings { bootstrap_seed: 8, ..settings.clone() });
        assert_ne!(a, other);
        // A class that is all right or all wrong stays so in every resample.
        assert!(resampled_counts(&[0, 12], &[10, 12], &settings).iter().all(|r| r == &vec![0, 12]));
    }
}
