//! Random numbers drawn per example, so that an attack's result on a point depends only on the
//! seed, the point's index in its split and the point itself: not on the batch it was grouped
//! into, the batch size, the order of evaluation, a shard, or the device.
//!
//! Every number is a counter-based hash of (example key, draw label, element index), computed
//! with integer tensor operations on the batch's device. The hash is Wellons' `lowbias32`
//! (xor-shift-multiply, good avalanche, no state), evaluated on 32-bit values held in `i64`
//! tensors. The 32-bit multiplications are split into 16-bit halves so that no intermediate
//! exceeds 2^48: the arithmetic is exact and identical on every device and CPU, so the same
//! draws come out on a laptop, a CI runner and a GPU. Uniform numbers carry 24 bits, which a
//! `f32` holds exactly.
//!
//! A *draw label* names one use of randomness inside an attack (the start of restart 2, the
//! window of Square's iteration 317, ...); [`draw_label`] folds its parts into one number.
//! Different labels give independent-looking numbers for the same example.

use tch::{Device, Kind, Tensor};

const MASK32: i64 = 0xffff_ffff;
/// `lowbias32`'s multipliers (C. Wellons, "Prospecting for hash functions", 2018).
const MULTIPLIER_A: u32 = 0x7feb_352d;
const MULTIPLIER_B: u32 = 0x846c_a68b;
/// Scale of a 24-bit integer to [0, 1).
const UNIT_24: f64 = 1.0 / 16_777_216.0;

/// `lowbias32` on a host value (also the reference the tensor version is tested against).
pub fn mix32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(MULTIPLIER_A);
    x ^= x >> 15;
    x = x.wrapping_mul(MULTIPLIER_B);
    x ^= x >> 16;
    x
}

/// Folds the parts of a draw label (attack, restart, target, iteration, purpose, ...) into one
/// 32-bit label.
pub fn draw_label(parts: &[u64]) -> u32 {
    parts.iter().fold(0x2545_f491u32, |acc, &part| {
        let low = mix32(acc ^ part as u32);
        mix32(low ^ mix32((part >> 32) as u32 ^ 0x68e3_1da4))
    })
}

/// `(x * m) mod 2^32` for `x` in [0, 2^32), exact in `i64`.
fn multiply32(x: &Tensor, m: u32) -> Tensor {
    let low = x * i64::from(m & 0xffff);
    let high = (x * i64::from(m >> 16)).bitwise_and(0xffff).bitwise_left_shift_tensor_scalar(16);
    (low + high).bitwise_and(MASK32)
}

/// `lowbias32` elementwise on an `i64` tensor of values in [0, 2^32).
fn mix_tensor(x: &Tensor) -> Tensor {
    let x = x.bitwise_xor_tensor(&x.bitwise_right_shift_tensor_scalar(16));
    let x = multiply32(&x, MULTIPLIER_A);
    let x = x.bitwise_xor_tensor(&x.bitwise_right_shift_tensor_scalar(15));
    let x = multiply32(&x, MULTIPLIER_B);
    x.bitwise_xor_tensor(&x.bitwise_right_shift_tensor_scalar(16))
}

/// One independent random stream per example.
#[derive(Debug)]
pub struct ExampleStreams {
    /// Two 32-bit keys per example (`i64 [N]`, values in [0, 2^32)), on the batch's device.
    first: Tensor,
    second: Tensor,
}

impl Clone for ExampleStreams {
    fn clone(&self) -> Self {
        ExampleStreams { first: self.first.shallow_clone(), second: self.second.shallow_clone() }
    }
}

impl ExampleStreams {
    /// Streams of the examples `ids` (`i64 [N]`, an example's index in its split) under `seed`,
    /// on the device of `ids`.
    pub fn new(seed: u64, ids: &Tensor) -> Self {
        let ids = ids.to_kind(Kind::Int64);
        let low = ids.bitwise_and(MASK32);
        let high = ids.bitwise_right_shift_tensor_scalar(32).bitwise_and(MASK32);
        let seed_low = i64::from(mix32(seed as u32));
        let seed_high = i64::from(mix32((seed >> 32) as u32 ^ 0x9e37_79b9));
        let first = mix_tensor(&mix_tensor(&low.bitwise_xor(seed_low)).bitwise_xor_tensor(&high));
        let second = mix_tensor(&mix_tensor(&low.bitwise_xor(seed_high)).bitwise_xor_tensor(&high).bitwise_xor(0x5bd1_e995));
        ExampleStreams { first, second }
    }

    /// Streams for examples `0..n` on `device` (tests and single batches).
    pub fn for_range(seed: u64, n: i64, device: Device) -> Self {
        Self::new(seed, &Tensor::arange(n, (Kind::Int64, device)))
    }

    /// Number of examples.
    pub fn len(&self) -> i64 {
        self.first.size().first().copied().unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The streams of the examples at `index` (`i64`, on the streams' device).
    pub fn select(&self, index: &Tensor) -> Self {
        ExampleStreams { first: self.first.index_select(0, index), second: self.second.index_select(0, index) }
    }

    pub fn to_device(&self, device: Device) -> Self {
        ExampleStreams { first: self.first.to_device(device), second: self.second.to_device(device) }
    }

    /// 32-bit hashes `i64 [N, shape...]` for draw `label`: element `e` of example `n` is a
    /// function of (example n's keys, label, e) only.
    fn hashes(&self, label: u32, shape: &[i64]) -> Tensor {
        let n = self.len();
        let per_example: i64 = shape.iter().product();
        let mut full = vec![n];
        full.extend_from_slice(shape);
        if self.first.device() == Device::Cpu {
            if let Some(hashes) = self.host_hashes(label, per_example) {
                return Tensor::from_slice(&hashes).reshape(full.as_slice());
            }
        }
        self.tensor_hashes(label, per_example).reshape(full.as_slice())
    }

    /// [`ExampleStreams::hashes`] as integer tensor operations on the streams' device, `[N, per_example]`.
    fn tensor_hashes(&self, label: u32, per_example: i64) -> Tensor {
        let n = self.len();
        let elements = Tensor::arange(per_example, (Kind::Int64, self.first.device())).reshape([1, per_example]);
        let label = i64::from(mix32(label ^ 0x1b87_3593));
        let h = mix_tensor(&elements.bitwise_xor_tensor(&self.first.reshape([n, 1])));
        let h = mix_tensor(&h.bitwise_xor(label));
        mix_tensor(&h.bitwise_xor_tensor(&self.second.reshape([n, 1])))
    }

    /// The same hashes as the tensor path, computed in a host loop: on the CPU, about fifty
    /// tensor operations per draw cost more than the draw itself where draws are small and
    /// frequent (Square draws three per iteration). `None` if the keys cannot be read.
    fn host_hashes(&self, label: u32, per_example: i64) -> Option<Vec<i64>> {
        let first = crate::host_read::host_vec_i64(&self.first)?;
        let second = crate::host_read::host_vec_i64(&self.second)?;
        let label = mix32(label ^ 0x1b87_3593);
        let mut hashes = Vec::with_capacity(first.len() * per_example.max(0) as usize);
        for (&first, &second) in first.iter().zip(&second) {
            for element in 0..per_example {
                let h = mix32(element as u32 ^ first as u32);
                let h = mix32(h ^ label);
                hashes.push(i64::from(mix32(h ^ second as u32)));
            }
        }
        Some(hashes)
    }

    /// Uniform numbers in [0, 1) (multiples of 2^-24), `f32 [N, shape...]`.
    pub fn uniform(&self, label: u32, shape: &[i64]) -> Tensor {
        self.hashes(label, shape).bitwise_right_shift_tensor_scalar(8).to_kind(Kind::Float) * UNIT_24
    }

    /// Integers `floor(u * high)` in `0..high` for uniform `u` (as the reference's
    /// `random_int` draws them), `i64 [N, shape...]`. `high` must be positive.
    pub fn below(&self, label: u32, shape: &[i64], high: i64) -> Tensor {
        (self.uniform(label, shape).to_kind(Kind::Double) * high as f64).floor().to_kind(Kind::Int64).clamp_max(high - 1)
    }

    /// Independent signs, -1 or +1 with equal probability, `f32 [N, shape...]`.
    pub fn signs(&self, label: u32, shape: &[i64]) -> Tensor {
        self.hashes(label, shape).bitwise_right_shift_tensor_scalar(31).to_kind(Kind::Float) * 2.0 - 1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensor_hash_equals_the_host_hash() {
        let values: Vec<i64> = vec![0, 1, 2, 0xffff, 0x1_0000, 0x7fff_ffff, 0x8000_0000, 0xffff_fffe, 0xffff_ffff, 123_456_789];
        let hashed = Vec::<i64>::try_from(mix_tensor(&Tensor::from_slice(&values))).unwrap();
        for (v, h) in values.iter().zip(hashed) {
            assert_eq!(h, i64::from(mix32(*v as u32)), "mix32({v:#x})");
        }
    }

    #[test]
    fn host_hashes_equal_the_tensor_hashes() {
        let ids = Tensor::from_slice(&[0i64, 1, 2, 99, 0xffff_ffff, 0x1_0000_0000, 0x7fff_ffff_ffff_ffff]);
        for seed in [0u64, 7, u64::MAX] {
            let streams = ExampleStreams::new(seed, &ids);
            for (label, per_example) in [(0u32, 1i64), (draw_label(&[3, 5]), 3), (u32::MAX, 1000)] {
                let host = Tensor::from_slice(&streams.host_hashes(label, per_example).unwrap()).reshape([ids.size()[0], per_example]);
                assert_eq!(host, streams.tensor_hashes(label, per_example), "seed {seed}, label {label:#x}");
            }
        }
    }

    #[test]
    fn an_example_draws_the_same_numbers_in_any_batch() {
        let all = ExampleStreams::for_range(7, 10, Device::Cpu);
        let subset = Tensor::from_slice(&[8i64, 3]);
        let alone = ExampleStreams::new(7, &subset);
        let from_all = all.uniform(5, &[3, 2]).index_select(0, &subset);
        assert_eq!(alone.uniform(5, &[3, 2]), from_all);
        assert_eq!(all.select(&subset).uniform(5, &[3, 2]), from_all);
    }

    #[test]
    fn draws_are_uniform_and_differ_by_seed_label_and_example() {
        let streams = ExampleStreams::for_range(1, 64, Device::Cpu);
        let u = streams.uniform(0, &[1000]);
        let min = f64::try_from(u.min()).unwrap();
        let max = f64::try_from(u.max()).unwrap();
        let mean = f64::try_from(u.mean(Kind::Double)).unwrap();
        assert!(min >= 0.0 && max < 1.0, "[{min}, {max}]");
        assert!((mean - 0.5).abs() < 0.005, "mean {mean}");
        assert_ne!(streams.uniform(0, &[4]), streams.uniform(1, &[4]));
        assert_ne!(streams.uniform(0, &[4]), ExampleStreams::for_range(2, 64, Device::Cpu).uniform(0, &[4]));
        let rows = streams.uniform(0, &[4]);
        assert_ne!(rows.get(0), rows.get(1));
        let signs = streams.signs(3, &[1000]);
        let positive = f64::try_from(signs.eq(1.0).to_kind(Kind::Double).mean(Kind::Double)).unwrap();
        assert!((positive - 0.5).abs() < 0.01, "share of +1: {positive}");
        assert!(bool::try_from(signs.abs().eq(1.0).all()).unwrap());
        let below = streams.below(4, &[1000], 5);
        assert_eq!(i64::try_from(below.min()).unwrap(), 0);
        assert_eq!(i64::try_from(below.max()).unwrap(), 4);
    }

    #[test]
    fn labels_fold_every_part() {
        assert_ne!(draw_label(&[1, 2]), draw_label(&[2, 1]));
        assert_ne!(draw_label(&[1]), draw_label(&[1 << 32]));
        assert_eq!(draw_label(&[3, 4, 5]), draw_label(&[3, 4, 5]));
    }
}
