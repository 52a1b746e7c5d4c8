//! Robustness curves per class: class-wise accuracy against the attack's radius, from
//! `SeedRun::sweep` (one attack at each radius of `Settings::sweep`).
//!
//! Per model the accuracy of each class at each radius is the mean over the seeds that have
//! that radius. The worst class is the one with the lowest area under its curve (the mean
//! accuracy over the swept range, trapezoidal rule; the first in class order on a tie), which
//! unlike the accuracy at the largest radius does not tie when several classes reach 0. A
//! class's halving radius is where its mean curve first falls to half of its accuracy at
//! radius 0, linearly interpolated between the two swept radii around it; it is not reached when
//! the curve stays above half, and undefined without a radius 0 or with accuracy 0 there.

use serde::Serialize;

use crate::results::Results;

/// One model's curves.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelCurves {
    pub model: String,
    pub attack: String,
    pub class_names: Vec<String>,
    /// Radii, increasing.
    pub radii: Vec<f64>,
    /// `[class][radius]` mean accuracy (percent) over seeds.
    pub accuracy: Vec<Vec<f64>>,
    /// Seeds with a sweep.
    pub seeds: usize,
}

/// Where a class's curve halves.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum Halving {
    At(f64),
    NotReached,
    /// No radius 0 in the sweep, or accuracy 0 (or undefined) there.
    Undefined,
}

/// The radius at which `accuracy` (over increasing `radii`) first falls to half of its value at
/// radius 0.
pub fn halving_radius(radii: &[f64], accuracy: &[f64]) -> Halving {
    let Some(start) = radii.iter().position(|&r| r == 0.0) else { return Halving::Undefined };
    let a0 = accuracy.get(start).copied().unwrap_or(f64::NAN);
    if a0.is_nan() || a0 <= 0.0 {
        return Halving::Undefined;
    }
    let half = a0 / 2.0;
    for i in start + 1..radii.len().min(accuracy.len()) {
        let (a, b) = (accuracy[i - 1], accuracy[i]);
        if !a.is_finite() || !b.is_finite() {
            // A radius no seed has: where the curve crosses half is unknown.
            return Halving::Undefined;
        }
        if b <= half {
            // a > half here (else the previous step had stopped); interpolate a -> b.
            let t = if a == b { 0.0 } else { (a - half) / (a - b) };
            return Halving::At(radii[i - 1] + t * (radii[i] - radii[i - 1]));
        }
    }
    Halving::NotReached
}

/// Area under a curve divided by its range (the mean accuracy over the radii, trapezoidal);
/// the single value for a one-radius sweep; NaN when a value is missing.
pub fn mean_over_range(radii: &[f64], accuracy: &[f64]) -> f64 {
    let n = radii.len().min(accuracy.len());
    if n == 0 || accuracy[..n].iter().any(|v| !v.is_finite()) {
        return f64::NAN;
    }
    let span = radii[n - 1] - radii[0];
    if n == 1 || span <= 0.0 {
        return accuracy[..n].iter().sum::<f64>() / n as f64;
    }
    (1..n).map(|i| (radii[i] - radii[i - 1]) * (accuracy[i] + accuracy[i - 1]) / 2.0).sum::<f64>() / span
}

impl ModelCurves {
    pub fn halving(&self, class: usize) -> Halving {
        halving_radius(&self.radii, &self.accuracy[class])
    }

    pub fn area(&self, class: usize) -> f64 {
        mean_over_range(&self.radii, &self.accuracy[class])
    }

    /// The class with the lowest mean accuracy over the swept range.
    pub fn worst_class(&self) -> Option<usize> {
        let mut worst: Option<(usize, f64)> = None;
        for k in 0..self.accuracy.len() {
            let a = self.area(k);
            if a.is_finite() && worst.is_none_or(|(_, w)| a < w) {
                worst = Some((k, a));
            }
        }
        worst.map(|(k, _)| k)
    }
}

/// The sweep's attack label (Settings::sweep, else the first sweep point's attack).
pub fn sweep_attack(results: &Results) -> Option<String> {
    if let Some(s) = &results.settings.sweep {
        return Some(s.attack.label.clone());
    }
    results.models.iter().flat_map(|m| &m.runs).flat_map(|r| &r.sweep).map(|p| p.run.attack.clone()).next()
}

/// Every model's curves (models without a sweep left out).
pub fn model_curves(results: &Results) -> Vec<ModelCurves> {
    let attack = sweep_attack(results).unwrap_or_default();
    let mut out = Vec::new();
    for model in &results.models {
        let runs: Vec<_> = model.runs.iter().filter(|r| !r.sweep.is_empty()).collect();
        let Some(first) = runs.first() else { continue };
        let class_names = first.sweep[0].run.class_names.clone();
        let mut radii: Vec<f64> = runs.iter().flat_map(|r| r.sweep.iter().map(|p| p.eps)).collect();
        radii.sort_by(f64::total_cmp);
        radii.dedup();
        let accuracy = (0..class_names.len())
            .map(|k| {
                radii
                    .iter()
                    .map(|&eps| {
                        let values: Vec<f64> = runs
                            .iter()
                            .filter_map(|r| r.sweep.iter().find(|p| p.eps == eps))
                            .filter(|p| p.run.class_names == class_names)
                            .filter_map(|p| p.run.class_accuracy().get(k).copied())
                            .collect();
                        crate::stats::mean(&values)
                    })
                    .collect()
            })
            .collect();
        out.push(ModelCurves { model: model.label.clone(), attack: attack.clone(), class_names, radii, accuracy, seeds: runs.len() });
    }
    out
}

/// A radius in the unit the field uses: `8/255` style with two decimals, and the raw value.
pub fn radius_text(eps: f64) -> String {
    format!("{:.2}/255", eps * 255.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halving_by_hand() {
        let radii = [0.0, 2.0, 4.0, 8.0];
        // 80 -> 60 -> 30: half (40) is 2/3 of the way from 2 to 4.
        match halving_radius(&radii, &[80.0, 60.0, 30.0, 10.0]) {
            Halving::At(r) => assert!((r - (2.0 + 2.0 * 20.0 / 30.0)).abs() < 1e-12, "{r}"),
            other => panic!("{other:?}"),
        }
        // Exactly half at a swept radius.
        assert_eq!(halving_radius(&radii, &[80.0, 40.0, 30.0, 10.0]), Halving::At(2.0));
        assert_eq!(halving_radius(&radii, &[80.0, 70.0, 60.0, 41.0]), Halving::NotReached);
        assert_eq!(halving_radius(&radii, &[0.0, 0.0, 0.0, 0.0]), Halving::Undefined);
        assert_eq!(halving_radius(&[1.0, 2.0], &[80.0, 10.0]), Halving::Undefined);
        // A radius no seed has (NaN mean) before the crossing: unknown, never At(NaN).
        assert_eq!(halving_radius(&radii, &[80.0, f64::NAN, 30.0, 10.0]), Halving::Undefined);
        // A flat stretch before the drop: 50 -> 50 -> 20, half 25 reached between 2 and 4.
        match halving_radius(&[0.0, 2.0, 4.0], &[50.0, 50.0, 20.0]) {
            Halving::At(r) => assert!((r - (2.0 + 2.0 * 25.0 / 30.0)).abs() < 1e-12),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn area_by_hand() {
        // Trapezoids: (2·(80+60)/2 + 2·(60+30)/2 + 4·(30+10)/2) / 8 = (140 + 90 + 80) / 8.
        assert!((mean_over_range(&[0.0, 2.0, 4.0, 8.0], &[80.0, 60.0, 30.0, 10.0]) - 310.0 / 8.0).abs() < 1e-12);
        assert_eq!(mean_over_range(&[0.0], &[42.0]), 42.0);
    }
}
