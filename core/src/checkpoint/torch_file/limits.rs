//! How much a `torch.save` file may make the reader build, in one place.
//!
//! Every file is treated as hostile: a few hundred bytes can describe a pickle that doubles
//! itself through its memo, nests a million containers, or a tensor that views one element
//! as terabytes. Each such request is checked against these limits, with overflow-checked
//! arithmetic, before anything is allocated for it. The defaults are far above what real
//! checkpoints need (a WRN-70-16 state dict: about 1.1 GB of storages, a few hundred tensors,
//! a pickle of some 100 KB that builds some 10 000 values and nests 3 deep).

use std::fmt;

/// The limits of one read. [`TorchFileLimits::DEFAULT`] is what importing uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TorchFileLimits {
    /// Bytes of the main pickle (`data.pkl`, or the legacy format's object pickle), and of
    /// the legacy format's list of storage keys.
    pub max_pickle_bytes: u64,
    /// Values the pickle machine may push (every opcode that pushes counts one, a memo GET
    /// included; a memo PUT counts one more), and steps of the walk that names the tensors
    /// (shared dicts are walked once per path to them). Bounds the machine's memory to about
    /// 100 bytes per value.
    pub max_values: u64,
    /// How deep containers may nest (a state dict nests 1 to 3 deep).
    pub max_depth: u64,
    /// Tensors a file may hold.
    pub max_tensors: u64,
    /// Dimensions of one tensor.
    pub max_dimensions: u64,
    /// Bytes of one tensor's dotted name (`model.layer1.0.conv1.weight`).
    pub max_name_bytes: u64,
    /// Bytes of all the tensors' names together (a WRN-70-16's are about 20 KB): long keys
    /// reached along many paths cannot add up to hundreds of MB of names.
    pub max_total_name_bytes: u64,
    /// Entries of a zip archive.
    pub max_zip_entries: u64,
    /// Bytes of the storages read, and separately of the tensors made from them, whatever the
    /// file's size.
    pub max_tensor_bytes: u64,
    /// ... and at most this many times the file's size (but always at least
    /// [`TorchFileLimits::min_tensor_bytes`]): storages are raw bytes in the file, so only
    /// a compressed zip entry or tensors that view a storage more than once can need more,
    /// and a real file never needs much more.
    pub max_bytes_per_file_byte: u64,
    /// The floor of the previous limit, so that small files of compressible weights read.
    pub min_tensor_bytes: u64,
}

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

impl TorchFileLimits {
    pub const DEFAULT: TorchFileLimits = TorchFileLimits {
        max_pickle_bytes: 64 * MIB,
        max_values: 1_000_000,
        max_depth: 256,
        max_tensors: 100_000,
        max_dimensions: 64,
        max_name_bytes: 4096,
        max_total_name_bytes: 16 * MIB,
        max_zip_entries: 200_000,
        max_tensor_bytes: 4 * GIB,
        max_bytes_per_file_byte: 16,
        min_tensor_bytes: 64 * MIB,
    };

    /// The byte budget for the storages (and, separately, the tensors) of a file of
    /// `file_bytes` bytes.
    pub fn tensor_bytes_for(&self, file_bytes: u64) -> u64 {
        let plausible = file_bytes.saturating_mul(self.max_bytes_per_file_byte).max(self.min_tensor_bytes);
        plausible.min(self.max_tensor_bytes)
    }
}

impl Default for TorchFileLimits {
    fn default() -> Self {
        TorchFileLimits::DEFAULT
    }
}

/// Which of [`TorchFileLimits`] a file ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    PickleBytes,
    Values,
    Depth,
    Tensors,
    Dimensions,
    NameBytes,
    TotalNameBytes,
    ZipEntries,
    /// The storages, or the tensors made from them, need more bytes than the file's budget
    /// ([`TorchFileLimits::tensor_bytes_for`]).
    TensorBytes,
}

/// A request of the file over one of the limits; nothing was allocated for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitExceeded {
    pub limit: Limit,
    /// The limit in force.
    pub maximum: u64,
    /// What the file asked for, where one number says it (`None`: only that it is more).
    pub requested: Option<u64>,
}

impl LimitExceeded {
    pub(crate) fn new(limit: Limit, maximum: u64, requested: Option<u64>) -> Self {
        LimitExceeded { limit, maximum, requested }
    }
}

impl fmt::Display for LimitExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let maximum = self.maximum;
        let what = match self.limit {
            Limit::PickleBytes => format!("a pickle is longer than {maximum} bytes"),
            Limit::Values => format!("the pickle builds more than {maximum} values"),
            Limit::Depth => format!("containers nest more than {maximum} deep"),
            Limit::Tensors => format!("it holds more than {maximum} tensors"),
            Limit::Dimensions => format!("a tensor has more than {maximum} dimensions"),
            Limit::NameBytes => format!("a tensor's name is longer than {maximum} bytes"),
            Limit::TotalNameBytes => format!("the tensors' names add up to more than {maximum} bytes"),
            Limit::ZipEntries => format!("the zip archive has more than {maximum} entries"),
            Limit::TensorBytes => format!("its tensors need more than the {maximum} bytes allowed for a file of its size"),
        };
        f.write_str(&what)?;
        if let Some(requested) = self.requested {
            write!(f, " ({requested} asked for)")?;
        }
        Ok(())
    }
}

/// Bytes still allowed for storages and for the tensors made from them.
#[derive(Debug)]
pub(super) struct Budget {
    maximum: u64,
    storages: u64,
    tensors: u64,
}

impl Budget {
    pub(super) fn new(limits: &TorchFileLimits, file_bytes: u64) -> Self {
        Budget { maximum: limits.tensor_bytes_for(file_bytes), storages: 0, tensors: 0 }
    }

    fn charge(maximum: u64, used: &mut u64, bytes: u64) -> Result<(), LimitExceeded> {
        let total = used.checked_add(bytes).filter(|&t| t <= maximum);
        let total = total.ok_or(LimitExceeded::new(Limit::TensorBytes, maximum, Some(used.saturating_add(bytes))))?;
        *used = total;
        Ok(())
    }

    /// Accounts for `bytes` more of storage, before they are read.
    pub(super) fn storage(&mut self, bytes: u64) -> Result<(), LimitExceeded> {
        Self::charge(self.maximum, &mut self.storages, bytes)
    }

    /// Accounts for a tensor of `bytes` bytes, before it is made.
    pub(super) fn tensor(&mut self, bytes: u64) -> Result<(), LimitExceeded> {
        Self::charge(self.maximum, &mut self.tensors, bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_follows_the_file_size_between_a_floor_and_a_ceiling() {
        let limits = TorchFileLimits::DEFAULT;
        assert_eq!(limits.tensor_bytes_for(1_000), 64 * MIB);
        assert_eq!(limits.tensor_bytes_for(100 * MIB), 1600 * MIB);
        assert_eq!(limits.tensor_bytes_for(1100 * MIB), 4 * GIB);
        assert_eq!(limits.tensor_bytes_for(u64::MAX), 4 * GIB);
    }

    #[test]
    fn charges_add_up_and_never_overflow() {
        let mut budget = Budget { maximum: 100, storages: 0, tensors: 0 };
        assert!(budget.storage(60).is_ok());
        assert!(budget.storage(40).is_ok());
        let error = budget.storage(1).unwrap_err();
        assert_eq!((error.limit, error.maximum, error.requested), (Limit::TensorBytes, 100, Some(101)));
        assert!(budget.tensor(u64::MAX).is_err());
        assert!(budget.tensor(100).is_ok());
    }
}
