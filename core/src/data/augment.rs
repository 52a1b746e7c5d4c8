//! The paper's training augmentation: random crop after zero padding, and horizontal flip.
//!
//! Random numbers come from a ChaCha8 generator seeded by the caller, on the host; the crop
//! itself is two `gather`s on the input's device, so there is no per-pixel or per-image loop.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::Tensor;

/// Random crop back to `H x W` after zero-padding `padding` pixels on every side, then a
/// horizontal flip with probability 1/2, independently per image (the CIFAR augmentation of
/// the paper, `RandomCrop(32, padding=4)` + `RandomHorizontalFlip()`).
///
/// `images` is `[N, C, H, W]` of any kind, on any device; the result has the same shape, kind
/// and device. The same `seed` gives the same result.
pub fn augment_crop_flip(images: &Tensor, padding: i64, seed: u64) -> Tensor {
    random_crop_flip(images, padding, true, seed)
}

/// Like [`augment_crop_flip`], with the flip optional. With `padding == 0` and `flip == false`
/// the result equals the input.
///
/// For image `n` the generator draws, in this order, the row offset `dy` in `0..=2*padding`,
/// the column offset `dx` in `0..=2*padding` and (if `flip`) a fair coin; the output is
/// `padded[n, :, dy + i, dx + j]`, or `padded[n, :, dy + i, dx + W - 1 - j]` when flipped.
///
/// Panics if `images` is not 4-D or `padding` is negative.
pub fn random_crop_flip(images: &Tensor, padding: i64, flip: bool, seed: u64) -> Tensor {
    let size = images.size();
    assert_eq!(size.len(), 4, "expected images [N, C, H, W], got shape {size:?}");
    assert!(padding >= 0, "padding must not be negative, got {padding}");
    let (n, c, h, w) = (size[0], size[1], size[2], size[3]);
    if n == 0 || (padding == 0 && !flip) {
        return images.copy();
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let nu = n as usize;
    let mut rows = Vec::with_capacity(nu * h as usize);
    let mut cols = Vec::with_capacity(nu * w as usize);
    for _ in 0..n {
        let dy: i64 = rng.gen_range(0..=2 * padding);
        let dx: i64 = rng.gen_range(0..=2 * padding);
        let flipped = flip && rng.gen_bool(0.5);
        rows.extend((0..h).map(|i| dy + i));
        if flipped {
            cols.extend((0..w).map(|j| dx + w - 1 - j));
        } else {
            cols.extend((0..w).map(|j| dx + j));
        }
    }
    let device = images.device();
    let wp = w + 2 * padding;
    let padded = if padding > 0 { images.constant_pad_nd([padding, padding, padding, padding]) } else { images.shallow_clone() };
    let rows = Tensor::from_slice(&rows).to_device(device).view([n, 1, h, 1]).expand([n, c, h, wp], false);
    let cols = Tensor::from_slice(&cols).to_device(device).view([n, 1, 1, w]).expand([n, c, h, w], false);
    padded.gather(2, &rows, false).gather(3, &cols, false)
}
