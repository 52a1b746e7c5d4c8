//! ABSLD's class-wise teacher temperatures and their update (paper Eq. 10, Algorithm 1).

use serde::{Deserialize, Serialize};

/// Bounds and step of the temperature update.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TemperatureSchedule {
    /// Learning rate of the temperatures (the paper's beta), 0.1 by default.
    pub beta: f64,
    pub min: f64,
    pub max: f64,
}

/// One step of Eq. 10 on one temperature vector:
/// gap_k = R_k - mean(R); tau_k <- clamp(tau_k - beta * gap_k / max_j |gap_j|, min, max).
///
/// A class whose error risk is above the mean (a hard class) gets a lower temperature, i.e.
/// sharper soft labels; an easy class gets smoother ones. When every gap is zero (all classes
/// equally hard) the normalisation is undefined and the temperatures stay as they are.
pub fn update_temperatures(temperatures: &mut [f64], risks: &[f64], schedule: &TemperatureSchedule) {
    assert_eq!(temperatures.len(), risks.len(), "one risk per class");
    if risks.is_empty() {
        return;
    }
    let mean = risks.iter().sum::<f64>() / risks.len() as f64;
    let largest_gap = risks.iter().map(|r| (r - mean).abs()).fold(0.0, f64::max);
    if !(largest_gap > f64::EPSILON * mean.abs().max(1.0)) {
        return;
    }
    for (tau, risk) in temperatures.iter_mut().zip(risks) {
        let step = schedule.beta * (risk - mean) / largest_gap;
        *tau = (*tau - step).clamp(schedule.min, schedule.max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEDULE: TemperatureSchedule = TemperatureSchedule { beta: 0.1, min: 0.5, max: 5.0 };

    fn close(a: &[f64], b: &[f64]) -> bool {
        a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-12)
    }

    #[test]
    fn worked_example_from_eq_10() {
        // R = (1, 2, 3, 6): mean 3, gaps (-2, -1, 0, 3), max |gap| = 3.
        // tau = 1 - 0.1 * gap / 3 = (1.0666.., 1.0333.., 1, 0.9)
        let mut tau = vec![1.0; 4];
        update_temperatures(&mut tau, &[1.0, 2.0, 3.0, 6.0], &SCHEDULE);
        assert!(close(&tau, &[1.0 + 0.2 / 3.0, 1.0 + 0.1 / 3.0, 1.0, 0.9]), "{tau:?}");
    }

    #[test]
    fn clamps_at_both_bounds() {
        let schedule = TemperatureSchedule { beta: 0.1, min: 0.95, max: 1.02 };
        let mut tau = vec![1.0, 1.0, 1.0];
        // gaps (-1, 0, 1): the easy class would go to 1.1, the hard one to 0.9.
        update_temperatures(&mut tau, &[0.0, 1.0, 2.0], &schedule);
        assert!(close(&tau, &[1.02, 1.0, 0.95]), "{tau:?}");
    }

    #[test]
    fn beta_divided_by_ten_moves_ten_times_less() {
        let mut tau = vec![2.0, 2.0];
        let schedule = TemperatureSchedule { beta: 0.01, ..SCHEDULE };
        update_temperatures(&mut tau, &[1.0, 3.0], &schedule);
        assert!(close(&tau, &[2.01, 1.99]), "{tau:?}");
    }

    #[test]
    fn all_gaps_equal_leaves_temperatures_unchanged() {
        let mut tau = vec![1.3, 0.7, 2.0];
        update_temperatures(&mut tau, &[0.5, 0.5, 0.5], &SCHEDULE);
        assert_eq!(tau, vec![1.3, 0.7, 2.0]);
        assert!(tau.iter().all(|t| t.is_finite()));
    }
}
