//! Checkpoint selection (ABSLD paper A.3, following CFA): the epoch with the highest average
//! class-wise PGD accuracy plus the accuracy of the worst classes, where "the worst classes"
//! is the single worst class on CIFAR-10 and the worst 10% of the classes on CIFAR-100 (and
//! Tiny-ImageNet, whose other settings follow CIFAR-100, A.5). With 100 classes and 10
//! validation images per class, the single worst class is almost always at 0%, which would
//! reduce the rule to the average.

use serde::{Deserialize, Serialize};

/// Which classes count as "the worst" in a selection score or a fairness threshold.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorstClasses {
    /// The single worst class.
    Class,
    /// The mean of the lowest ceil(fraction * C) class accuracies (`rfb_proto::metrics`).
    Fraction(f64),
}

impl WorstClasses {
    /// The accuracy of the worst classes; classes without examples (NaN) are left out, and an
    /// empty list gives 0.
    pub fn accuracy(self, class_accuracy: &[f64]) -> f64 {
        let mut present: Vec<f64> = class_accuracy.iter().copied().filter(|a| !a.is_nan()).collect();
        if present.is_empty() {
            return 0.0;
        }
        present.sort_by(f64::total_cmp);
        let count = match self {
            WorstClasses::Class => 1,
            WorstClasses::Fraction(fraction) => ((fraction * present.len() as f64).ceil() as usize).clamp(1, present.len()),
        };
        present[..count].iter().sum::<f64>() / count as f64
    }

    /// "worst class" or "worst 10%", for logs and manifests.
    pub fn describe(self) -> String {
        match self {
            WorstClasses::Class => "worst class".into(),
            WorstClasses::Fraction(fraction) => format!("worst {}%", fraction * 100.0),
        }
    }
}

/// The selection score of A.3: mean class accuracy plus the worst classes' accuracy (both in
/// the unit of the input, percent in the loop).
pub fn selection_score(class_accuracy: &[f64], worst: WorstClasses) -> f64 {
    let present: Vec<f64> = class_accuracy.iter().copied().filter(|a| !a.is_nan()).collect();
    let average = present.iter().sum::<f64>() / present.len().max(1) as f64;
    average + worst.accuracy(class_accuracy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worst_ten_percent_is_the_mean_of_the_lowest_tenth() {
        // 20 classes at 5, 10, ..., 100: the worst 10% are the lowest ceil(2) = 2: (5 + 10) / 2.
        let accuracy: Vec<f64> = (1..=20).map(|k| 5.0 * k as f64).collect();
        assert_eq!(WorstClasses::Fraction(0.1).accuracy(&accuracy), 7.5);
        assert_eq!(WorstClasses::Class.accuracy(&accuracy), 5.0);
        // Order does not matter; 15 classes -> ceil(1.5) = 2 of them.
        let shuffled = [60.0, 0.0, 90.0, 30.0, 10.0, 70.0, 80.0, 40.0, 20.0, 50.0, 95.0, 85.0, 75.0, 65.0, 55.0];
        assert_eq!(WorstClasses::Fraction(0.1).accuracy(&shuffled), 5.0);
        // On 10 classes the worst 10% is the worst class (ceil(1) = 1).
        let ten = [50.0, 20.0, 90.0, 30.0, 60.0, 70.0, 80.0, 40.0, 100.0, 10.0];
        assert_eq!(WorstClasses::Fraction(0.1).accuracy(&ten), WorstClasses::Class.accuracy(&ten));
        // Classes without examples are left out, not counted as 0.
        assert_eq!(WorstClasses::Class.accuracy(&[f64::NAN, 40.0, 30.0]), 30.0);
        assert_eq!(WorstClasses::Class.accuracy(&[]), 0.0);
    }

    #[test]
    fn on_a_hundred_classes_the_worst_tenth_still_ranks_checkpoints_that_the_minimum_ties() {
        // Two checkpoints with the same average (50) and a class at 0 each: the worst class
        // scores them alike, the worst 10% prefers the one whose other weak classes are better.
        let mut a = vec![50.0; 100];
        let mut b = vec![50.0; 100];
        a[0] = 0.0;
        a[1] = 100.0;
        b[0] = 0.0;
        b[1] = 100.0;
        for k in 2..10 {
            a[k] = 10.0;
            a[k + 10] = 90.0;
            b[k] = 30.0;
            b[k + 10] = 70.0;
        }
        assert_eq!(selection_score(&a, WorstClasses::Class), selection_score(&b, WorstClasses::Class));
        // a: (0 + 8 * 10 + 50) / 10 = 13; b: (0 + 8 * 30 + 50) / 10 = 29.
        assert!((selection_score(&a, WorstClasses::Fraction(0.1)) - 63.0).abs() < 1e-9);
        assert!((selection_score(&b, WorstClasses::Fraction(0.1)) - 79.0).abs() < 1e-9);
        assert_eq!(WorstClasses::Fraction(0.1).describe(), "worst 10%");
    }
}
