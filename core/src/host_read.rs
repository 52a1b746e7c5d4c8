//! The one place where attacks and training steps read a tensor's values on the host.
//!
//! On a GPU every such read waits until all the work queued before it has run (libtorch copies
//! the value back synchronously), so a read inside an attack iteration or a training step
//! stalls the device once per iteration. The code of those loops reads only through the
//! functions here; each read is counted per thread, with the reason the caller gives, so that
//! tests can state how many reads an iteration makes (core/tests/host_reads.rs,
//! docs/attacks.md). The methods that read directly (`double_value`, `copy_data`, `nonzero`,
//! ...) are forbidden elsewhere by clippy's `disallowed-methods` (clippy.toml); tensor to
//! number conversions (`f64::try_from(tensor)`), which clippy cannot single out, are kept out
//! of the loops' files by a test that reads their source.
//!
//! A read that fails (a tensor of the wrong shape) gives the neutral value the caller names
//! (NaN, `None`, a default flag, empty), as the conversions did where they were called before;
//! each read is tch's own conversion (`f64::try_from(&tensor)`, ...), so the values are those.
#![allow(clippy::disallowed_methods)] // the one place these methods are allowed

use std::cell::RefCell;
use std::collections::BTreeMap;

use tch::{Device, Kind, Tensor};

thread_local! {
    /// Reads on this thread, by reason.
    static READS: RefCell<BTreeMap<&'static str, u64>> = const { RefCell::new(BTreeMap::new()) };
}

fn count(why: &'static str) {
    READS.with(|reads| *reads.borrow_mut().entry(why).or_insert(0) += 1);
}

/// The reads counted on this thread so far, by reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostReads {
    pub by_reason: BTreeMap<&'static str, u64>,
}

impl HostReads {
    /// All reads.
    pub fn total(&self) -> u64 {
        self.by_reason.values().sum()
    }

    /// Reads for `why`.
    pub fn of(&self, why: &str) -> u64 {
        self.by_reason.get(why).copied().unwrap_or(0)
    }

    /// Reads counted since `earlier` (a snapshot taken before), by reason.
    pub fn since(&self, earlier: &HostReads) -> HostReads {
        let by_reason = self.by_reason.iter().map(|(why, n)| (*why, n - earlier.of(why))).filter(|(_, n)| *n > 0).collect();
        HostReads { by_reason }
    }
}

/// The reads counted on this thread so far.
pub fn snapshot() -> HostReads {
    READS.with(|reads| HostReads { by_reason: reads.borrow().clone() })
}

/// One number (a one-element tensor), as f64; NaN where it cannot be read.
pub fn scalar_f64(t: &Tensor, why: &'static str) -> f64 {
    count(why);
    f64::try_from(t).unwrap_or(f64::NAN)
}

/// One integer (a one-element tensor); `None` where it cannot be read.
pub fn scalar_i64(t: &Tensor, why: &'static str) -> Option<i64> {
    count(why);
    i64::try_from(t).ok()
}

/// One flag (a one-element bool tensor); `otherwise` where it cannot be read.
pub fn flag(t: &Tensor, why: &'static str, otherwise: bool) -> bool {
    count(why);
    bool::try_from(t).unwrap_or(otherwise)
}

/// Every element, flattened, as f64 (one copy to the host); empty where it cannot be read.
pub fn vec_f64(t: &Tensor, why: &'static str) -> Vec<f64> {
    count(why);
    Vec::<f64>::try_from(t.to_kind(Kind::Double).reshape([-1])).unwrap_or_default()
}

/// Every element, flattened, as i64 (one copy to the host); empty where it cannot be read.
pub fn vec_i64(t: &Tensor, why: &'static str) -> Vec<i64> {
    count(why);
    Vec::<i64>::try_from(t.to_kind(Kind::Int64).reshape([-1])).unwrap_or_default()
}

/// Positions (`i64 [K]`) of the true entries of a one-dimensional mask. The result's length
/// depends on the values, so on a GPU libtorch waits for the mask and reads the count back:
/// a read like the others, and counted as one.
pub fn nonzero(mask: &Tensor, why: &'static str) -> Tensor {
    count(why);
    mask.nonzero().reshape([-1])
}

/// `t` moved to `home`: a read when it comes back from a device to the host (counted), a plain
/// move (not counted) otherwise.
pub fn to_home(t: &Tensor, home: Device, why: &'static str) -> Tensor {
    if home == Device::Cpu && t.device() != Device::Cpu {
        count(why);
    }
    t.to_device(home)
}

/// Every element of an `i64` tensor that already lies on the host, flattened; `None` for a
/// tensor on a device. Not counted: nothing waits for a device (the attacks' random streams
/// hash on the host when they live there, `attacks::random`).
pub fn host_vec_i64(t: &Tensor) -> Option<Vec<i64>> {
    if t.device() != Device::Cpu {
        return None;
    }
    Vec::<i64>::try_from(&t.to_kind(Kind::Int64)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_counted_by_reason_and_give_the_values() {
        let before = snapshot();
        let t = Tensor::from_slice(&[1.5f32, -2.0, 0.0]);
        assert_eq!(vec_f64(&t, "test: vector"), vec![1.5, -2.0, 0.0]);
        assert_eq!(scalar_f64(&t.sum(Kind::Float), "test: scalar"), -0.5);
        assert!(flag(&t.lt(0.0).any(), "test: scalar", false));
        assert_eq!(Vec::<i64>::try_from(nonzero(&t.ne(0.0), "test: nonzero")).unwrap(), vec![0, 1]);
        assert_eq!(host_vec_i64(&Tensor::from_slice(&[3i64])), Some(vec![3]));
        let reads = snapshot().since(&before);
        assert_eq!(reads.of("test: vector"), 1);
        assert_eq!(reads.of("test: scalar"), 2);
        assert_eq!(reads.of("test: nonzero"), 1);
        assert_eq!(reads.total(), 4);
    }
}
