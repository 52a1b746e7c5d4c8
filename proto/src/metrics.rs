//! Class-wise fairness metrics (Avg, Worst, Worst-10%, NSD), defined once here for server and clients.
//! Inputs are class-wise accuracies in percent.

/// Avg: the mean of the class-wise accuracies (the overall accuracy on a class-balanced set).
pub fn average(class_accuracy: &[f64]) -> f64 {
    if class_accuracy.is_empty() {
        return f64::NAN;
    }
    class_accuracy.iter().sum::<f64>() / class_accuracy.len() as f64
}

/// Worst: the lowest class-wise accuracy.
pub fn worst(class_accuracy: &[f64]) -> f64 {
    class_accuracy.iter().cloned().fold(f64::NAN, f64::min)
}

/// Worst-k%: mean of the lowest ceil(fraction * C) class-wise accuracies (at least one).
pub fn worst_fraction(class_accuracy: &[f64], fraction: f64) -> f64 {
    if class_accuracy.is_empty() {
        return f64::NAN;
    }
    let mut sorted = class_accuracy.to_vec();
    sorted.sort_by(f64::total_cmp);
    let count = ((fraction * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[..count].iter().sum::<f64>() / count as f64
}

/// Population standard deviation of the class-wise accuracies (divides by C).
pub fn population_sd(class_accuracy: &[f64]) -> f64 {
    let mean = average(class_accuracy);
    let variance = class_accuracy.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / class_accuracy.len() as f64;
    variance.sqrt()
}

/// NSD = SD / Avg with SD the population standard deviation; lower is fairer. Infinite when
/// Avg is zero and SD is not, zero when both are.
pub fn nsd(class_accuracy: &[f64]) -> f64 {
    let mean = average(class_accuracy);
    let sd = population_sd(class_accuracy);
    if mean == 0.0 {
        return if sd == 0.0 { 0.0 } else { f64::INFINITY };
    }
    sd / mean
}

/// Class-wise accuracy in percent from correct and total counts (NaN for an empty class).
pub fn class_accuracy(correct: &[i64], total: &[i64]) -> Vec<f64> {
    correct.iter().zip(total).map(|(&c, &t)| if t == 0 { f64::NAN } else { 100.0 * c as f64 / t as f64 }).collect()
}

/// All four summary metrics at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub average: f64,
    pub worst: f64,
    pub worst_10_percent: f64,
    pub nsd: f64,
}

pub fn summarize(class_accuracy: &[f64]) -> Summary {
    Summary {
        average: average(class_accuracy),
        worst: worst(class_accuracy),
        worst_10_percent: worst_fraction(class_accuracy, 0.1),
        nsd: nsd(class_accuracy),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worked_by_hand() {
        // Accuracies 50, 70, 90, 100: mean 77.5; deviations -27.5, -7.5, 12.5, 22.5;
        // squares 756.25 + 56.25 + 156.25 + 506.25 = 1475; / 4 = 368.75; sqrt = 19.2029...
        let a = [50.0, 70.0, 90.0, 100.0];
        assert_eq!(average(&a), 77.5);
        assert_eq!(worst(&a), 50.0);
        assert!((population_sd(&a) - 368.75f64.sqrt()).abs() < 1e-12);
        assert!((nsd(&a) - 368.75f64.sqrt() / 77.5).abs() < 1e-12);
        // ceil(0.1 * 4) = 1 class; ceil(0.5 * 4) = 2 classes.
        assert_eq!(worst_fraction(&a, 0.1), 50.0);
        assert_eq!(worst_fraction(&a, 0.5), 60.0);
    }

    #[test]
    fn ten_and_hundred_classes() {
        let ten: Vec<f64> = (0..10).map(|k| 10.0 * k as f64).collect();
        assert_eq!(worst_fraction(&ten, 0.1), 0.0);
        let hundred: Vec<f64> = (0..100).map(|k| k as f64).collect();
        // The lowest 10 of 0..99: mean of 0..9 = 4.5.
        assert_eq!(worst_fraction(&hundred, 0.1), 4.5);
    }

    #[test]
    fn equal_accuracies_are_perfectly_fair() {
        let a = [60.0; 10];
        assert_eq!(nsd(&a), 0.0);
        assert_eq!(nsd(&[0.0, 0.0]), 0.0);
        assert!(nsd(&[0.0, 0.0]).is_finite());
        assert_eq!(class_accuracy(&[3, 0], &[4, 0])[0], 75.0);
        assert!(class_accuracy(&[3, 0], &[4, 0])[1].is_nan());
    }
}
