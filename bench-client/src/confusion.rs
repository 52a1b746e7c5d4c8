//! Adversarial confusions: into which classes an attack pushes each class's points, from
//! `AttackRun::confusion` (rows the true class, columns the class predicted after the attack).
//!
//! Per model and attack the counts are averaged over the seeds whose evaluation has a matrix
//! consistent with its counts (square, one row per class, rows adding up to `total`, diagonal
//! equal to `correct`); a flow's share is its mean count over the source class's mean number of
//! points, and a class's main target is the off-diagonal column with the most mean points (the
//! first in class order on a tie), its share taken of the class's mean broken points.

use serde::Serialize;

use crate::results::{AttackRun, Results};

/// Whether a run's confusion matrix is there and agrees with its counts.
pub fn consistent(run: &AttackRun) -> bool {
    let c = run.class_names.len();
    run.confusion.len() == c
        && run.confusion.iter().enumerate().all(|(k, row)| {
            row.len() == c
                && row.iter().all(|&v| v >= 0)
                && row.iter().sum::<i64>() == run.total.get(k).copied().unwrap_or(-1)
                && row.get(k) == run.correct.get(k)
        })
}

/// One model's confusions under one attack, mean over seeds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MeanConfusion {
    pub model: String,
    pub attack: String,
    pub class_names: Vec<String>,
    /// `[true][predicted]` mean counts.
    pub counts: Vec<Vec<f64>>,
    /// Mean points per class (the rows' sums).
    pub totals: Vec<f64>,
    /// Seeds averaged.
    pub seeds: usize,
    /// Seeds whose evaluation has no matrix, or one that disagrees with its counts.
    pub left_out: usize,
}

impl MeanConfusion {
    /// Row `k` in percent of the class's points (NaN for an empty class).
    pub fn row_percent(&self, k: usize) -> Vec<f64> {
        let total = self.totals[k];
        self.counts[k].iter().map(|&v| if total > 0.0 { 100.0 * v / total } else { f64::NAN }).collect()
    }
}

/// Mean counts over seeds; None when no seed of `model` has a consistent matrix for `attack`.
pub fn mean_confusion(results: &Results, model: &str, attack: &str) -> Option<MeanConfusion> {
    let m = results.models.iter().find(|m| m.label == model)?;
    let runs: Vec<&AttackRun> = m.runs.iter().filter_map(|r| r.attack(attack)).collect();
    let good: Vec<&AttackRun> = runs.iter().copied().filter(|r| consistent(r)).collect();
    let first: &AttackRun = good.first()?;
    let c = first.class_names.len();
    let good: Vec<&AttackRun> = good.iter().copied().filter(|r| r.class_names == first.class_names).collect();
    let mut counts = vec![vec![0.0; c]; c];
    for run in &good {
        for (into, row) in counts.iter_mut().zip(&run.confusion) {
            for (a, &b) in into.iter_mut().zip(row) {
                *a += b as f64;
            }
        }
    }
    let n = good.len() as f64;
    counts.iter_mut().flatten().for_each(|v| *v /= n);
    let totals = counts.iter().map(|row| row.iter().sum()).collect();
    Some(MeanConfusion {
        model: model.to_string(),
        attack: attack.to_string(),
        class_names: first.class_names.clone(),
        counts,
        totals,
        seeds: good.len(),
        left_out: runs.len() - good.len(),
    })
}

/// Every model x attack with confusions, in model and attack order.
pub fn mean_confusions(results: &Results) -> Vec<MeanConfusion> {
    let attacks = results.attack_labels();
    results.models.iter().flat_map(|m| attacks.iter().filter_map(|a| mean_confusion(results, &m.label, a))).collect()
}

/// Evaluations that have a confusion matrix (consistent or not): none means results made
/// before confusions were recorded.
pub fn any_recorded(results: &Results) -> bool {
    results.models.iter().flat_map(|m| &m.runs).flat_map(|r| &r.attacks).any(|a| !a.confusion.is_empty())
}

/// A source -> target flow: points of `source` predicted as `target` after the attack.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Flow {
    pub source: usize,
    pub target: usize,
    pub mean_count: f64,
    /// Of the source class's points, percent.
    pub share_of_source: f64,
}

/// The `n` largest off-diagonal mean counts, largest first (ties: source, then target order);
/// flows of no point are left out.
pub fn top_flows(confusion: &MeanConfusion, n: usize) -> Vec<Flow> {
    let mut flows: Vec<Flow> = Vec::new();
    for (source, row) in confusion.counts.iter().enumerate() {
        for (target, &count) in row.iter().enumerate() {
            if source != target && count > 0.0 {
                let total = confusion.totals[source];
                flows.push(Flow {
                    source,
                    target,
                    mean_count: count,
                    share_of_source: if total > 0.0 { 100.0 * count / total } else { f64::NAN },
                });
            }
        }
    }
    // Stable sort: equal counts keep source-then-target order.
    flows.sort_by(|a, b| b.mean_count.total_cmp(&a.mean_count));
    flows.truncate(n);
    flows
}

/// Where a class's broken points go.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MainTarget {
    pub class: usize,
    /// Mean points of the class the attack broke (off the diagonal).
    pub broken: f64,
    /// The most frequent wrong class; None when nothing was broken.
    pub target: Option<usize>,
    /// Of the broken points, percent going to `target`.
    pub share_of_broken: f64,
}

/// Per class, the most frequent target of its broken points and its share of them.
pub fn main_targets(confusion: &MeanConfusion) -> Vec<MainTarget> {
    confusion
        .counts
        .iter()
        .enumerate()
        .map(|(class, row)| {
            let broken: f64 = row.iter().enumerate().filter(|&(t, _)| t != class).map(|(_, v)| v).sum();
            let mut target: Option<(usize, f64)> = None;
            for (t, &v) in row.iter().enumerate() {
                if t != class && v > 0.0 && target.is_none_or(|(_, best)| v > best) {
                    target = Some((t, v));
                }
            }
            match target {
                Some((t, v)) => MainTarget { class, broken, target: Some(t), share_of_broken: 100.0 * v / broken },
                None => MainTarget { class, broken, target: None, share_of_broken: f64::NAN },
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hand() -> MeanConfusion {
        // cat (0): 6 of 10 survive, 3 -> dog, 1 -> frog; dog (1): 8 of 10, 2 -> cat; frog (2):
        // all 5 survive.
        MeanConfusion {
            model: "m".into(),
            attack: "PGD".into(),
            class_names: vec!["cat".into(), "dog".into(), "frog".into()],
            counts: vec![vec![6.0, 3.0, 1.0], vec![2.0, 8.0, 0.0], vec![0.0, 0.0, 5.0]],
            totals: vec![10.0, 10.0, 5.0],
            seeds: 1,
            left_out: 0,
        }
    }

    #[test]
    fn flows_by_hand() {
        let flows = top_flows(&hand(), 5);
        let got: Vec<(usize, usize, f64, f64)> = flows.iter().map(|f| (f.source, f.target, f.mean_count, f.share_of_source)).collect();
        assert_eq!(got, vec![(0, 1, 3.0, 30.0), (1, 0, 2.0, 20.0), (0, 2, 1.0, 10.0)]);
        assert_eq!(top_flows(&hand(), 1).len(), 1);
    }

    #[test]
    fn main_targets_by_hand() {
        let t = main_targets(&hand());
        assert_eq!((t[0].broken, t[0].target, t[0].share_of_broken), (4.0, Some(1), 75.0));
        assert_eq!((t[1].broken, t[1].target, t[1].share_of_broken), (2.0, Some(0), 100.0));
        assert_eq!((t[2].broken, t[2].target), (0.0, None));
        assert!(t[2].share_of_broken.is_nan());
    }
}
