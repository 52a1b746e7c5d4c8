//! The UCI handwritten digits embedded in smartcore: 1797 grey 8x8 images, values 0..16.
//!
//! Images are scaled by 1/16 to `[0, 1]` (held as bytes until then) and shaped `[N, 1, 8, 8]`.
//! The split is fixed and stratified: per class, in data-set order, the first `count * 3 / 5`
//! are train, up to `count * 4 / 5` validation, the rest test (integer division), which gives
//! [`DIGITS_TRAIN_SIZE`] / [`DIGITS_VAL_SIZE`] / [`DIGITS_TEST_SIZE`] = 1074 / 359 / 364.

use tch::{Kind, Tensor};

use super::{CompactDataset, DataError, DatasetKind, Split};

/// Number of images in the embedded set.
pub const DIGITS_TOTAL: i64 = 1797;
/// Size of the digits train split.
pub const DIGITS_TRAIN_SIZE: i64 = 1074;
/// Size of the digits validation split.
pub const DIGITS_VAL_SIZE: i64 = 359;
/// Size of the digits test split.
pub const DIGITS_TEST_SIZE: i64 = 364;

/// Which split each example belongs to, by the per-class 60/20/20 rule.
fn split_of_each(labels: &[i64], num_classes: usize) -> Vec<Split> {
    let mut counts = vec![0usize; num_classes];
    for &l in labels {
        counts[l as usize] += 1;
    }
    let mut seen = vec![0usize; num_classes];
    labels
        .iter()
        .map(|&l| {
            let c = l as usize;
            let pos = seen[c];
            seen[c] += 1;
            if pos < counts[c] * 3 / 5 {
                Split::Train
            } else if pos < counts[c] * 4 / 5 {
                Split::Validation
            } else {
                Split::Test
            }
        })
        .collect()
}

pub(crate) fn load_digits(split: Split) -> Result<CompactDataset, DataError> {
    let ds = smartcore::dataset::digits::load_dataset();
    let n = ds.num_samples;
    let f = ds.num_features;
    let origin = std::path::Path::new("<smartcore embedded digits>");
    if f != 64 || ds.data.len() != n * f || ds.target.len() != n {
        return Err(DataError::format(
            origin,
            format!(
                "expected 64 features per sample, got {f} features, {} values, {} targets for {n} samples",
                ds.data.len(),
                ds.target.len()
            ),
        ));
    }
    let mut labels = Vec::with_capacity(n);
    for (i, &t) in ds.target.iter().enumerate() {
        let l = t.round() as i64;
        if !(0..10).contains(&l) || (t - l as f32).abs() > 1e-6 {
            return Err(DataError::BadLabel { path: origin.to_path_buf(), record: i as u64, label: l, num_classes: 10 });
        }
        labels.push(l);
    }
    let which = split_of_each(&labels, 10);
    let mut pixels: Vec<u8> = Vec::new();
    let mut kept = Vec::new();
    for (i, s) in which.iter().enumerate() {
        if *s == split {
            for (j, &v) in ds.data[i * f..(i + 1) * f].iter().enumerate() {
                // The values are the counts 0..16 of the original 4x4 blocks.
                if !(0.0..=16.0).contains(&v) || v.fract() != 0.0 {
                    return Err(DataError::format(origin, format!("sample {i}, feature {j}: value {v} is not an integer in 0..=16")));
                }
                pixels.push(v as u8);
            }
            kept.push(labels[i]);
        }
    }
    let m = kept.len() as i64;
    Ok(CompactDataset {
        pixels: Tensor::from_slice(&pixels).view([m, 1, 8, 8]),
        divisor: 16.0,
        labels: Tensor::from_slice(&kept),
        ids: Tensor::arange(m, (Kind::Int64, tch::Device::Cpu)),
        class_names: (0..10).map(|d| d.to_string()).collect(),
        name: DatasetKind::Digits.name().to_string(),
        split,
    })
}
