//! Index arithmetic for subsets: class-balanced subsets and the stratified validation hold-out.

use super::DataError;

/// Share of each class's training examples held out as the validation split (CIFAR and
/// Tiny-ImageNet), in percent; at least one example per class is held out.
pub const VALIDATION_PERCENT: usize = 2;

/// Split `labels` (in file order) into `(train, validation)` index lists: per class, the last
/// `max(1, count * VALIDATION_PERCENT / 100)` examples in file order are validation. Both lists
/// are in increasing order. Labels outside `0..num_classes` are ignored by the count but kept in
/// train (callers validate labels before).
pub fn holdout_indices(labels: &[i64], num_classes: i64) -> (Vec<i64>, Vec<i64>) {
    let k = num_classes.max(0) as usize;
    let mut counts = vec![0usize; k];
    for &l in labels {
        if l >= 0 && (l as usize) < k {
            counts[l as usize] += 1;
        }
    }
    // Number of examples of each class that go to train (the first ones seen).
    let keep: Vec<usize> = counts.iter().map(|&c| if c == 0 { 0 } else { c - (c * VALIDATION_PERCENT / 100).max(1) }).collect();
    let mut seen = vec![0usize; k];
    let mut train = Vec::with_capacity(labels.len());
    let mut val = Vec::new();
    for (i, &l) in labels.iter().enumerate() {
        if l >= 0 && (l as usize) < k {
            let c = l as usize;
            if seen[c] < keep[c] {
                train.push(i as i64);
            } else {
                val.push(i as i64);
            }
            seen[c] += 1;
        } else {
            train.push(i as i64);
        }
    }
    (train, val)
}

/// Per-class sizes of the `(train, validation)` halves that [`holdout_indices`] makes from a
/// training set with `counts[k]` examples of class `k`: the same arithmetic, without the labels.
pub fn holdout_counts(counts: &[i64]) -> (Vec<i64>, Vec<i64>) {
    let validation: Vec<i64> =
        counts.iter().map(|&c| if c <= 0 { 0 } else { ((c as usize * VALIDATION_PERCENT / 100).max(1)) as i64 }).collect();
    let train = counts.iter().zip(&validation).map(|(&c, &v)| c.max(0) - v).collect();
    (train, validation)
}

/// Indices of the first `per_class` examples of every class, in increasing order.
pub(crate) fn first_per_class(labels: &[i64], num_classes: i64, per_class: i64) -> Result<Vec<i64>, DataError> {
    if per_class < 0 {
        return Err(DataError::InvalidArgument(format!("per_class must not be negative, got {per_class}")));
    }
    let k = num_classes.max(0) as usize;
    let mut taken = vec![0i64; k];
    // Never sized by the request alone: `per_class` may be absurd (it is checked below, after
    // counting), and a capacity overflow would abort the process.
    let mut out = Vec::with_capacity((per_class as usize).saturating_mul(k).min(labels.len()));
    for (i, &l) in labels.iter().enumerate() {
        if l >= 0 && (l as usize) < k && taken[l as usize] < per_class {
            taken[l as usize] += 1;
            out.push(i as i64);
        }
    }
    if let Some((class, &available)) = taken.iter().enumerate().find(|(_, &t)| t < per_class) {
        return Err(DataError::TooFewExamples { class: class as i64, wanted: per_class, available });
    }
    Ok(out)
}
