//! A learnable stand-in for CIFAR-10 in its binary format, for tests and benchmarks on machines
//! without the real files (none can be downloaded here).
//!
//! Each class has a template: per channel, a sum of a few random low-frequency waves and a
//! colour offset. An image of class k is its template, moved by a random shift of up to 4
//! pixels, scaled by a random contrast, plus pixel noise, clipped to [0, 255]. A small CNN
//! learns it in a couple of epochs without reaching 100%, and adversarial examples behave as on
//! natural images (small eps breaks a naturally trained network), which is what attack tests and
//! benchmarks need. Everything is drawn from a ChaCha8 generator seeded by the caller, so the
//! same seed writes the same bytes.

use std::io::Write;
use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{DataError, CIFAR_IMAGE_BYTES};

const SIDE: usize = 32;
const CLASSES: usize = 10;
/// Waves per channel of a class template.
const WAVES: usize = 3;

/// A class template: `[3][32][32]` values around 128.
fn template(rng: &mut ChaCha8Rng) -> Vec<f64> {
    let mut values = vec![0.0; CIFAR_IMAGE_BYTES];
    for channel in 0..3 {
        let offset: f64 = rng.gen_range(-40.0..40.0);
        let waves: Vec<(f64, f64, f64, f64)> = (0..WAVES)
            .map(|_| {
                (
                    rng.gen_range(-3.0..3.0),                  // cycles per image, rows
                    rng.gen_range(-3.0..3.0),                  // cycles per image, columns
                    rng.gen_range(0.0..std::f64::consts::TAU), // phase
                    rng.gen_range(15.0..45.0),                 // amplitude
                )
            })
            .collect();
        for row in 0..SIDE {
            for column in 0..SIDE {
                let (r, c) = (row as f64 / SIDE as f64, column as f64 / SIDE as f64);
                let wave: f64 = waves
                    .iter()
                    .map(|(fr, fc, phase, amplitude)| amplitude * (std::f64::consts::TAU * (fr * r + fc * c) + phase).sin())
                    .sum();
                values[channel * SIDE * SIDE + row * SIDE + column] = 128.0 + offset + wave;
            }
        }
    }
    values
}

/// One image of a class: its template shifted, rescaled and noised, as CIFAR pixel bytes.
fn image(template: &[f64], rng: &mut ChaCha8Rng, out: &mut Vec<u8>) {
    let (shift_row, shift_column) = (rng.gen_range(-4i64..=4), rng.gen_range(-4i64..=4));
    let contrast: f64 = rng.gen_range(0.6..1.4);
    let brightness: f64 = rng.gen_range(-25.0..25.0);
    for channel in 0..3 {
        for row in 0..SIDE {
            for column in 0..SIDE {
                let r = (row as i64 + shift_row).rem_euclid(SIDE as i64) as usize;
                let c = (column as i64 + shift_column).rem_euclid(SIDE as i64) as usize;
                let base = template[channel * SIDE * SIDE + r * SIDE + c];
                let noise: f64 = rng.gen_range(-30.0..30.0);
                let value = 128.0 + (base - 128.0) * contrast + brightness + noise;
                out.push(value.round().clamp(0.0, 255.0) as u8);
            }
        }
    }
}

/// Writes CIFAR-10's binary files to `dir`: `data_batch_1.bin` .. `data_batch_5.bin` holding
/// `train_per_class` images of each class between them, and `test_batch.bin` with
/// `test_per_class` of each; classes interleaved. Files are written atomically.
pub fn write_cifar10(dir: &Path, train_per_class: usize, test_per_class: usize, seed: u64) -> Result<(), DataError> {
    if train_per_class == 0 || test_per_class == 0 {
        return Err(DataError::InvalidArgument("a synthetic CIFAR-10 needs at least one image per class and split".into()));
    }
    std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let templates: Vec<Vec<f64>> = (0..CLASSES).map(|_| template(&mut rng)).collect();
    let draw = |per_class: usize, files: usize, rng: &mut ChaCha8Rng| -> Vec<Vec<u8>> {
        let mut out = vec![Vec::new(); files];
        for i in 0..per_class * CLASSES {
            let bytes = &mut out[i % files];
            bytes.push((i % CLASSES) as u8);
            image(&templates[i % CLASSES], rng, bytes);
        }
        out
    };
    let train = draw(train_per_class, 5, &mut rng);
    let test = draw(test_per_class, 1, &mut rng);
    for (index, bytes) in train.iter().enumerate() {
        write_atomically(&dir.join(format!("data_batch_{}.bin", index + 1)), bytes)?;
    }
    write_atomically(&dir.join("test_batch.bin"), &test[0])
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), DataError> {
    let temporary = path.with_extension(format!("tmp-{}", std::process::id()));
    let mut file = std::fs::File::create(&temporary).map_err(|e| DataError::io(&temporary, e))?;
    file.write_all(bytes).map_err(|e| DataError::io(&temporary, e))?;
    file.sync_all().map_err(|e| DataError::io(&temporary, e))?;
    std::fs::rename(&temporary, path).map_err(|e| DataError::io(path, e))
}
