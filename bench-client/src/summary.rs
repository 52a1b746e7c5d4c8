//! From per-class counts to statistics across seeds: per model, attack and metric the values
//! of every seed, their mean, sample SD and Student-t interval; and Welch's test of every model
//! against the baseline (the first model).

use rfb_proto::metrics;
use serde::Serialize;

use crate::results::Results;
use crate::stats::{self, Description, Welch};

/// The four metrics of `rfb_proto::metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Metric {
    Avg,
    Worst,
    Worst10,
    Nsd,
}

impl Metric {
    pub const ALL: [Metric; 4] = [Metric::Avg, Metric::Worst, Metric::Worst10, Metric::Nsd];

    /// Name in CSV files.
    pub fn key(self) -> &'static str {
        match self {
            Metric::Avg => "avg",
            Metric::Worst => "worst",
            Metric::Worst10 => "worst_10_percent",
            Metric::Nsd => "nsd",
        }
    }

    /// Name in tables and plots.
    pub fn title(self) -> &'static str {
        match self {
            Metric::Avg => "Avg",
            Metric::Worst => "Worst",
            Metric::Worst10 => "Worst-10%",
            Metric::Nsd => "NSD",
        }
    }

    /// Decimals shown: percentages 2, NSD 3 (as in the paper).
    pub fn decimals(self) -> usize {
        match self {
            Metric::Nsd => 3,
            _ => 2,
        }
    }

    pub fn of(self, s: &metrics::Summary) -> f64 {
        match self {
            Metric::Avg => s.average,
            Metric::Worst => s.worst,
            Metric::Worst10 => s.worst_10_percent,
            Metric::Nsd => s.nsd,
        }
    }

    /// Whether larger is better (all but NSD).
    pub fn higher_is_better(self) -> bool {
        self != Metric::Nsd
    }
}

/// One model x attack x metric.
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    pub model: String,
    pub attack: String,
    pub metric: Metric,
    /// (seed, value) for every seed that has this attack.
    pub values: Vec<(u64, f64)>,
    pub description: Description,
}

impl Cell {
    pub fn samples(&self) -> Vec<f64> {
        self.values.iter().map(|&(_, v)| v).collect()
    }
}

/// A model against the baseline for one attack and metric.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub model: String,
    pub baseline: String,
    pub attack: String,
    pub metric: Metric,
    pub n_model: usize,
    pub n_baseline: usize,
    pub welch: Welch,
}

/// Class-wise accuracy of one model under one attack across seeds.
#[derive(Debug, Clone, Serialize)]
pub struct ClassBand {
    pub model: String,
    pub attack: String,
    pub class_names: Vec<String>,
    /// Per class: mean, lowest and highest accuracy (percent) over seeds.
    pub mean: Vec<f64>,
    pub low: Vec<f64>,
    pub high: Vec<f64>,
    pub seeds: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub models: Vec<String>,
    pub attacks: Vec<String>,
    pub confidence: f64,
    pub cells: Vec<Cell>,
    pub comparisons: Vec<Comparison>,
    pub bands: Vec<ClassBand>,
    /// The uncertainty of every single evaluation (model, seed, attack): per-class
    /// Clopper-Pearson intervals and the class-stratified bootstrap (`crate::uncertainty`).
    pub evaluations: Vec<crate::uncertainty::Evaluation>,
    /// Those within-seed quantities described across seeds (rows of summary.csv).
    pub within_seed: Vec<crate::uncertainty::AcrossSeeds>,
}

impl Summary {
    pub fn cell(&self, model: &str, attack: &str, metric: Metric) -> Option<&Cell> {
        self.cells.iter().find(|c| c.model == model && c.attack == attack && c.metric == metric)
    }

    pub fn band(&self, model: &str, attack: &str) -> Option<&ClassBand> {
        self.bands.iter().find(|b| b.model == model && b.attack == attack)
    }

    /// Seeds of a model that have at least one attack result.
    pub fn seeds(&self, model: &str) -> Vec<u64> {
        let mut seeds: Vec<u64> = self.cells.iter().filter(|c| c.model == model).flat_map(|c| c.values.iter().map(|&(s, _)| s)).collect();
        seeds.sort_unstable();
        seeds.dedup();
        seeds
    }
}

/// Summarises a results file.
pub fn summarize(results: &Results) -> Summary {
    let attacks = results.attack_labels();
    let confidence =
        if results.settings.confidence > 0.0 && results.settings.confidence < 1.0 { results.settings.confidence } else { 0.95 };
    let mut cells = Vec::new();
    let mut bands = Vec::new();
    for model in &results.models {
        for attack in &attacks {
            let mut per_seed: Vec<(u64, metrics::Summary)> = Vec::new();
            let mut accuracies: Vec<Vec<f64>> = Vec::new();
            for run in &model.runs {
                if let Some(a) = run.attack(attack) {
                    let accuracy = a.class_accuracy();
                    per_seed.push((run.seed, metrics::summarize(&accuracy)));
                    accuracies.push(accuracy);
                }
            }
            for metric in Metric::ALL {
                let values: Vec<(u64, f64)> = per_seed.iter().map(|(s, m)| (*s, metric.of(m))).collect();
                let samples: Vec<f64> = values.iter().map(|&(_, v)| v).collect();
                cells.push(Cell {
                    model: model.label.clone(),
                    attack: attack.clone(),
                    metric,
                    values,
                    description: stats::describe(&samples, confidence),
                });
            }
            if !accuracies.is_empty() {
                let classes = accuracies.iter().map(Vec::len).max().unwrap_or(0);
                let column = |k: usize| accuracies.iter().filter_map(move |a| a.get(k).copied()).filter(|v| v.is_finite());
                let class_names = model
                    .runs
                    .iter()
                    .find_map(|r| r.attack(attack).map(|a| a.class_names.clone()))
                    .filter(|n| n.len() == classes)
                    .unwrap_or_else(|| (0..classes).map(|k| k.to_string()).collect());
                bands.push(ClassBand {
                    model: model.label.clone(),
                    attack: attack.clone(),
                    class_names,
                    mean: (0..classes).map(|k| stats::mean(&column(k).collect::<Vec<_>>())).collect(),
                    low: (0..classes).map(|k| column(k).fold(f64::NAN, f64::min)).collect(),
                    high: (0..classes).map(|k| column(k).fold(f64::NAN, f64::max)).collect(),
                    seeds: accuracies.len(),
                });
            }
        }
    }
    let mut comparisons = Vec::new();
    if let Some(baseline) = results.models.first() {
        for model in results.models.iter().skip(1) {
            for attack in &attacks {
                for metric in Metric::ALL {
                    let find = |label: &str| {
                        cells
                            .iter()
                            .find(|c: &&Cell| c.model == label && &c.attack == attack && c.metric == metric)
                            .map(Cell::samples)
                            .unwrap_or_default()
                    };
                    let a = find(&model.label);
                    let b = find(&baseline.label);
                    comparisons.push(Comparison {
                        model: model.label.clone(),
                        baseline: baseline.label.clone(),
                        attack: attack.clone(),
                        metric,
                        n_model: a.len(),
                        n_baseline: b.len(),
                        welch: stats::welch(&a, &b, confidence),
                    });
                }
            }
        }
    }
    let evaluations = crate::uncertainty::evaluations(results);
    let within_seed = crate::uncertainty::across_seeds(results, &evaluations);
    Summary {
        models: results.models.iter().map(|m| m.label.clone()).collect(),
        attacks,
        confidence,
        cells,
        comparisons,
        bands,
        evaluations,
        within_seed,
    }
}
