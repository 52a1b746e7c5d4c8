//! CIFAR-10 and CIFAR-100, binary version.
//!
//! A CIFAR-10 record is 1 label byte followed by 3072 pixel bytes: 1024 red, 1024 green, 1024
//! blue, each a row-major 32x32 plane. A CIFAR-100 record has two label bytes (coarse, fine)
//! before the same 3072 pixel bytes; the fine label is used. The pixel bytes are therefore
//! already in `[C, H, W]` order.

use std::path::Path;

use std::io::Read;

use super::{
    count_labels, dataset_from_u8, holdout_indices, read_file, read_optional_text, resolve_subdir, split_counts, CompactDataset, DataError,
    DatasetKind, Split,
};

/// Pixel bytes of one CIFAR image (3 x 32 x 32).
pub const CIFAR_IMAGE_BYTES: usize = 3 * 32 * 32;

/// The standard CIFAR-10 class names, used when `batches.meta.txt` is absent.
pub const CIFAR10_CLASS_NAMES: [&str; 10] = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];

/// Layout of one binary record.
struct RecordFormat {
    /// Bytes before the pixels.
    header: usize,
    /// Which header byte is the label.
    label_at: usize,
    num_classes: i64,
}

impl RecordFormat {
    fn record_bytes(&self) -> usize {
        self.header + CIFAR_IMAGE_BYTES
    }
}

/// Labels and pixels gathered from one or more files.
#[derive(Default)]
struct Records {
    labels: Vec<i64>,
    pixels: Vec<u8>,
}

/// A file of `len` bytes must hold a positive whole number of `rb`-byte records.
fn check_whole_records(path: &Path, len: usize, rb: usize) -> Result<(), DataError> {
    if len == 0 || !len.is_multiple_of(rb) {
        let whole = len.div_ceil(rb).max(1);
        return Err(DataError::Truncated { path: path.to_path_buf(), expected_bytes: (whole * rb) as u64, found_bytes: len as u64 });
    }
    Ok(())
}

fn read_records(path: &Path, expected: &str, fmt: &RecordFormat, out: &mut Records) -> Result<(), DataError> {
    let bytes = read_file(path, expected)?;
    let rb = fmt.record_bytes();
    let len = bytes.len();
    check_whole_records(path, len, rb)?;
    let n = len / rb;
    out.labels.reserve(n);
    out.pixels.reserve(n * CIFAR_IMAGE_BYTES);
    for (i, rec) in bytes.chunks_exact(rb).enumerate() {
        let label = rec[fmt.label_at] as i64;
        if label >= fmt.num_classes {
            return Err(DataError::BadLabel { path: path.to_path_buf(), record: i as u64, label, num_classes: fmt.num_classes });
        }
        out.labels.push(label);
        out.pixels.extend_from_slice(&rec[fmt.header..]);
    }
    Ok(())
}

/// Keep only the records at `indices` (increasing).
fn keep_records(records: Records, indices: &[i64]) -> Records {
    let mut out = Records { labels: Vec::with_capacity(indices.len()), pixels: Vec::with_capacity(indices.len() * CIFAR_IMAGE_BYTES) };
    for &i in indices {
        let i = i as usize;
        out.labels.push(records.labels[i]);
        out.pixels.extend_from_slice(&records.pixels[i * CIFAR_IMAGE_BYTES..(i + 1) * CIFAR_IMAGE_BYTES]);
    }
    out
}

/// Non-empty trimmed lines of an optional names file; must be exactly `n` of them.
fn class_names_from(path: &Path, n: usize) -> Result<Option<Vec<String>>, DataError> {
    let Some(text) = read_optional_text(path)? else {
        return Ok(None);
    };
    let names: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect();
    if names.len() != n {
        return Err(DataError::format(path, format!("expected {n} class names (one a line), found {}", names.len())));
    }
    Ok(Some(names))
}

fn finish(records: Records, split: Split, fmt: &RecordFormat, class_names: Vec<String>, kind: DatasetKind) -> CompactDataset {
    let records = match split {
        Split::Test => records,
        Split::Train | Split::Validation => {
            let (train, val) = holdout_indices(&records.labels, fmt.num_classes);
            keep_records(records, if split == Split::Train { &train } else { &val })
        }
    };
    dataset_from_u8(records.pixels, [3, 32, 32], &records.labels, class_names, kind.name(), split)
}

const CIFAR10_FORMAT: RecordFormat = RecordFormat { header: 1, label_at: 0, num_classes: 10 };

const CIFAR100_FORMAT: RecordFormat = RecordFormat { header: 2, label_at: 1, num_classes: 100 };

/// The CIFAR-10 files of a split, with what each is expected to be.
fn cifar10_files(dir: &Path, split: Split) -> Vec<(std::path::PathBuf, String)> {
    match split {
        Split::Test => {
            vec![(dir.join("test_batch.bin"), "the CIFAR-10 test batch (records of 1 label byte + 3072 pixel bytes)".to_string())]
        }
        Split::Train | Split::Validation => (1..=5)
            .map(|b| {
                (
                    dir.join(format!("data_batch_{b}.bin")),
                    format!("CIFAR-10 training batch {b} of 5 (records of 1 label byte + 3072 pixel bytes)"),
                )
            })
            .collect(),
    }
}

/// The CIFAR-100 file of a split, with what it is expected to be.
fn cifar100_file(dir: &Path, split: Split) -> (std::path::PathBuf, String) {
    let (file, what) = match split {
        Split::Test => ("test.bin", "the CIFAR-100 test set"),
        Split::Train | Split::Validation => ("train.bin", "the CIFAR-100 training set"),
    };
    (dir.join(file), format!("{what} (records of coarse label, fine label, 3072 pixel bytes)"))
}

/// The labels of a file's records, checked as [`read_records`] checks them (whole records,
/// labels in range), reading one record at a time: no pixel is kept.
fn read_labels(path: &Path, expected: &str, fmt: &RecordFormat, out: &mut Vec<i64>) -> Result<(), DataError> {
    let file = std::fs::File::open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            DataError::MissingFile { path: path.to_path_buf(), expected: expected.to_string() }
        } else {
            DataError::io(path, e)
        }
    })?;
    let len = file.metadata().map_err(|e| DataError::io(path, e))?.len() as usize;
    let rb = fmt.record_bytes();
    check_whole_records(path, len, rb)?;
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    let mut record = vec![0u8; rb];
    for i in 0..len / rb {
        reader.read_exact(&mut record).map_err(|e| DataError::io(path, e))?;
        let label = record[fmt.label_at] as i64;
        if label >= fmt.num_classes {
            return Err(DataError::BadLabel { path: path.to_path_buf(), record: i as u64, label, num_classes: fmt.num_classes });
        }
        out.push(label);
    }
    Ok(())
}

/// Examples per class of a CIFAR-10 split, from the label bytes only.
pub(crate) fn cifar10_class_counts(dir: &Path, split: Split) -> Result<Vec<i64>, DataError> {
    let dir = resolve_subdir(dir, "cifar-10-batches-bin");
    let mut labels = Vec::new();
    for (path, expected) in cifar10_files(&dir, split) {
        read_labels(&path, &expected, &CIFAR10_FORMAT, &mut labels)?;
    }
    Ok(split_counts(count_labels(&labels, 10), split))
}

/// Examples per class of a CIFAR-100 split (fine labels), from the label bytes only.
pub(crate) fn cifar100_class_counts(dir: &Path, split: Split) -> Result<Vec<i64>, DataError> {
    let dir = resolve_subdir(dir, "cifar-100-binary");
    let (path, expected) = cifar100_file(&dir, split);
    let mut labels = Vec::new();
    read_labels(&path, &expected, &CIFAR100_FORMAT, &mut labels)?;
    Ok(split_counts(count_labels(&labels, 100), split))
}

/// Load CIFAR-10 from `dir` or `dir/cifar-10-batches-bin`.
pub(crate) fn load_cifar10(dir: &Path, split: Split) -> Result<CompactDataset, DataError> {
    let dir = resolve_subdir(dir, "cifar-10-batches-bin");
    let fmt = CIFAR10_FORMAT;
    let mut records = Records::default();
    for (path, expected) in cifar10_files(&dir, split) {
        read_records(&path, &expected, &fmt, &mut records)?;
    }
    let names =
        class_names_from(&dir.join("batches.meta.txt"), 10)?.unwrap_or_else(|| CIFAR10_CLASS_NAMES.iter().map(|s| s.to_string()).collect());
    Ok(finish(records, split, &fmt, names, DatasetKind::Cifar10))
}

/// Load CIFAR-100 (fine labels) from `dir` or `dir/cifar-100-binary`.
pub(crate) fn load_cifar100(dir: &Path, split: Split) -> Result<CompactDataset, DataError> {
    let dir = resolve_subdir(dir, "cifar-100-binary");
    let fmt = CIFAR100_FORMAT;
    let (path, expected) = cifar100_file(&dir, split);
    let mut records = Records::default();
    read_records(&path, &expected, &fmt, &mut records)?;
    let names =
        class_names_from(&dir.join("fine_label_names.txt"), 100)?.unwrap_or_else(|| (0..100).map(|i| format!("class_{i}")).collect());
    Ok(finish(records, split, &fmt, names, DatasetKind::Cifar100))
}
