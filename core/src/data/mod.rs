//! Data sets: the embedded UCI digits, CIFAR-10/100 (binary version) and Tiny-ImageNet.
//!
//! Every loader returns a [`Dataset`]: `images` is an `f32` tensor `[N, C, H, W]` with values in
//! `[0, 1]` on the CPU, `labels` an `i64` tensor `[N]`. Nothing is normalised beyond the scaling
//! to `[0, 1]`; models are expected to work on `[0, 1]` inputs (the attacks' eps is in that
//! scale). [`load_compact`] returns the same split as its bytes ([`CompactDataset`], a quarter
//! of the memory), for holders of whole splits that only need `f32` subsets at a time, and
//! [`class_counts`] the examples per class of a split from its labels alone (to check a
//! request against the data before anything is loaded).
//!
//! # Where the files come from
//!
//! * [`DatasetKind::Digits`] is compiled in (smartcore's copy of the UCI handwritten digits,
//!   1797 grey 8x8 images, values 0..16 scaled by 1/16). `data_dir` is ignored.
//! * [`DatasetKind::Cifar10`]: `DIR` or `DIR/cifar-10-batches-bin` holding `data_batch_1.bin` ..
//!   `data_batch_5.bin` (train) and `test_batch.bin` (test), optional `batches.meta.txt`.
//! * [`DatasetKind::Cifar100`]: `DIR` or `DIR/cifar-100-binary` holding `train.bin` and
//!   `test.bin`, optional `fine_label_names.txt`. Fine labels (100 classes) are used.
//! * [`DatasetKind::TinyImageNet`]: `DIR` or `DIR/tiny-imagenet-200` holding `wnids.txt`,
//!   optional `words.txt`, `train/<wnid>/images/*.JPEG`, `val/images/*.JPEG` and
//!   `val/val_annotations.txt`. [`Split::Test`] is the official `val` folder (the test labels of
//!   Tiny-ImageNet were never published; the paper evaluates on `val`).
//!
//! # Splits
//!
//! * Digits: a fixed stratified split. For each class, in data-set order, the first
//!   `count * 3 / 5` images (integer division) are train, the images up to `count * 4 / 5` are
//!   validation, the rest test. With the class counts of the embedded set
//!   (178, 182, 177, 183, 181, 182, 181, 179, 174, 180) that gives **1074 train, 359 validation
//!   and 364 test** images.
//! * CIFAR-10/100 and Tiny-ImageNet: [`Split::Test`] is the official test (or `val`) set.
//!   [`Split::Validation`] is a deterministic stratified hold-out of the official training
//!   files: for each class, the last `max(1, count * 2 / 100)` examples in file order (2 %,
//!   at least one). [`Split::Train`] is the official training files without those examples.
//!   For the full CIFAR-10 that is 49 000 train / 1 000 validation, for CIFAR-100 49 000 /
//!   1 000, for Tiny-ImageNet 98 000 / 2 000.
//!
//! # Determinism
//!
//! [`Dataset::shuffled_batches`] and [`augment_crop_flip`] take explicit seeds and draw from a
//! local ChaCha8 generator on the host; they never touch libtorch's global generator, so their
//! results do not depend on what other code did with it.

mod augment;
mod cifar;
mod digits;
mod subset;
pub mod synthetic;
mod tiny_imagenet;

pub use augment::{augment_crop_flip, random_crop_flip};
pub use cifar::{CIFAR10_CLASS_NAMES, CIFAR_IMAGE_BYTES};
pub use digits::{DIGITS_TEST_SIZE, DIGITS_TOTAL, DIGITS_TRAIN_SIZE, DIGITS_VAL_SIZE};
pub use subset::{holdout_counts, holdout_indices, VALIDATION_PERCENT};

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tch::{Kind, Tensor};

/// Which part of a data set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Split {
    Train,
    Validation,
    Test,
}

impl Split {
    /// The canonical short name: `train`, `val` or `test`.
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Validation => "val",
            Split::Test => "test",
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Split {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "train" => Ok(Split::Train),
            "val" | "valid" | "validation" => Ok(Split::Validation),
            "test" => Ok(Split::Test),
            other => Err(DataError::UnknownSplit(other.to_string())),
        }
    }
}

/// The data sets the suite knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DatasetKind {
    /// UCI handwritten digits, embedded (1797 grey 8x8 images, 10 classes).
    Digits,
    /// CIFAR-10, binary version (32x32 RGB, 10 classes).
    Cifar10,
    /// CIFAR-100, binary version, fine labels (32x32 RGB, 100 classes).
    Cifar100,
    /// Tiny-ImageNet-200 (64x64 RGB, 200 classes).
    TinyImageNet,
}

impl DatasetKind {
    /// All kinds, in a fixed order.
    pub const ALL: [DatasetKind; 4] = [DatasetKind::Digits, DatasetKind::Cifar10, DatasetKind::Cifar100, DatasetKind::TinyImageNet];

    /// Number of classes of the full data set. (A Tiny-ImageNet directory with fewer ids in
    /// `wnids.txt` loads with fewer; use [`Dataset::num_classes`] for a loaded set.)
    pub fn num_classes(self) -> i64 {
        match self {
            DatasetKind::Digits | DatasetKind::Cifar10 => 10,
            DatasetKind::Cifar100 => 100,
            DatasetKind::TinyImageNet => 200,
        }
    }

    /// `[C, H, W]` of one image.
    pub fn input_shape(self) -> [i64; 3] {
        match self {
            DatasetKind::Digits => [1, 8, 8],
            DatasetKind::Cifar10 | DatasetKind::Cifar100 => [3, 32, 32],
            DatasetKind::TinyImageNet => [3, 64, 64],
        }
    }

    /// The name used on the command line, in checkpoints and in [`Dataset::name`].
    pub fn name(self) -> &'static str {
        match self {
            DatasetKind::Digits => "digits",
            DatasetKind::Cifar10 => "cifar10",
            DatasetKind::Cifar100 => "cifar100",
            DatasetKind::TinyImageNet => "tiny-imagenet",
        }
    }
}

impl fmt::Display for DatasetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DatasetKind {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let norm: String = s.trim().to_ascii_lowercase().chars().filter(|c| *c != '-' && *c != '_').collect();
        match norm.as_str() {
            "digits" => Ok(DatasetKind::Digits),
            "cifar10" => Ok(DatasetKind::Cifar10),
            "cifar100" => Ok(DatasetKind::Cifar100),
            "tinyimagenet" | "tinyimagenet200" => Ok(DatasetKind::TinyImageNet),
            _ => Err(DataError::UnknownDataset(s.to_string())),
        }
    }
}

/// Everything that can go wrong while loading or slicing a data set. File errors name the file.
#[derive(thiserror::Error, Debug)]
pub enum DataError {
    #[error("missing file {path}: expected {expected}")]
    MissingFile { path: PathBuf, expected: String },
    #[error("{path} is truncated or malformed: expected {expected_bytes} bytes (a whole number of records), found {found_bytes}")]
    Truncated { path: PathBuf, expected_bytes: u64, found_bytes: u64 },
    #[error("{path}: record {record} has label {label}, but the data set has {num_classes} classes")]
    BadLabel { path: PathBuf, record: u64, label: i64, num_classes: i64 },
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
    #[error("data set {dataset} needs a data directory (none was given)")]
    NoDataDir { dataset: String },
    #[error("class {class} has {available} examples, {wanted} were asked for")]
    TooFewExamples { class: i64, wanted: i64, available: i64 },
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot decode image {path}: {source}")]
    Image {
        path: PathBuf,
        #[source]
        source: image::ImageError,
    },
    #[error("unknown data set {0:?} (known: digits, cifar10, cifar100, tiny-imagenet)")]
    UnknownDataset(String),
    #[error("unknown split {0:?} (known: train, val, test)")]
    UnknownSplit(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

impl DataError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        if source.kind() == std::io::ErrorKind::NotFound {
            DataError::MissingFile { path: path.to_path_buf(), expected: "the file to exist".to_string() }
        } else {
            DataError::Io { path: path.to_path_buf(), source }
        }
    }

    pub(crate) fn format(path: &Path, message: impl Into<String>) -> Self {
        DataError::Format { path: path.to_path_buf(), message: message.into() }
    }
}

/// A labelled image set held in memory.
pub struct Dataset {
    /// `f32 [N, C, H, W]` in `[0, 1]`, on the CPU.
    pub images: Tensor,
    /// `i64 [N]`, values in `0..num_classes`.
    pub labels: Tensor,
    /// `i64 [N]`: each example's index in its split as loaded (0, 1, ... for a whole split; kept
    /// through [`Dataset::select`] and subsets). Attacks key their per-example random streams
    /// on it, so a point's result does not depend on which subset, batch or shard it is in.
    pub ids: Tensor,
    /// One name per class; its length is the number of classes.
    pub class_names: Vec<String>,
    /// The data set's name, e.g. `"cifar10"` (see [`DatasetKind::name`]).
    pub name: String,
    pub split: Split,
}

impl fmt::Debug for Dataset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dataset")
            .field("name", &self.name)
            .field("split", &self.split)
            .field("images", &self.images.size())
            .field("labels", &self.labels.size())
            .field("num_classes", &self.class_names.len())
            .finish()
    }
}

/// Load one split of a data set. `data_dir` is required for everything except
/// [`DatasetKind::Digits`]; see the module docs for the expected layouts and splits.
pub fn load(kind: DatasetKind, split: Split, data_dir: Option<&Path>) -> Result<Dataset, DataError> {
    Ok(load_compact(kind, split, data_dir)?.into_dataset())
}

/// Load one split as the bytes it is stored in ([`CompactDataset`]: a quarter of the memory of
/// [`load`]'s `f32` images); [`CompactDataset::to_dataset`] and its subsets give the same
/// tensors as [`load`].
pub fn load_compact(kind: DatasetKind, split: Split, data_dir: Option<&Path>) -> Result<CompactDataset, DataError> {
    if kind == DatasetKind::Digits {
        return digits::load_digits(split);
    }
    let dir = data_dir_of(kind, data_dir)?;
    match kind {
        DatasetKind::Cifar10 => cifar::load_cifar10(dir, split),
        DatasetKind::Cifar100 => cifar::load_cifar100(dir, split),
        DatasetKind::TinyImageNet => tiny_imagenet::load_tiny_imagenet(dir, split),
        DatasetKind::Digits => unreachable!("handled above"),
    }
}

/// The number of examples of each class in one split, from the labels alone (no pixel is
/// decoded or kept): what [`Dataset::class_counts`] of the loaded split would say, for checking
/// a request against the data before loading it. Reads the CIFAR files' label bytes, or lists
/// the Tiny-ImageNet folders and annotations; the files are checked as the loaders check them
/// (sizes, labels), except that Tiny-ImageNet images are not decoded.
pub fn class_counts(kind: DatasetKind, split: Split, data_dir: Option<&Path>) -> Result<Vec<i64>, DataError> {
    if kind == DatasetKind::Digits {
        return Ok(digits::load_digits(split)?.class_counts());
    }
    let dir = data_dir_of(kind, data_dir)?;
    match kind {
        DatasetKind::Cifar10 => cifar::cifar10_class_counts(dir, split),
        DatasetKind::Cifar100 => cifar::cifar100_class_counts(dir, split),
        DatasetKind::TinyImageNet => tiny_imagenet::tiny_imagenet_class_counts(dir, split),
        DatasetKind::Digits => unreachable!("handled above"),
    }
}

fn data_dir_of(kind: DatasetKind, data_dir: Option<&Path>) -> Result<&Path, DataError> {
    let dir = data_dir.ok_or_else(|| DataError::NoDataDir { dataset: kind.name().to_string() })?;
    if !dir.is_dir() {
        return Err(DataError::MissingFile { path: dir.to_path_buf(), expected: format!("a directory holding the {} files", kind.name()) });
    }
    Ok(dir)
}

/// Per-class counts of `labels` over `num_classes` classes (labels outside are not counted).
pub(crate) fn count_labels(labels: &[i64], num_classes: usize) -> Vec<i64> {
    let mut counts = vec![0i64; num_classes];
    for &l in labels {
        if l >= 0 && (l as usize) < num_classes {
            counts[l as usize] += 1;
        }
    }
    counts
}

/// Class counts of a split of a training set whose whole-set counts are `full` (the hold-out
/// of [`holdout_indices`]); the test split is the set itself.
pub(crate) fn split_counts(full: Vec<i64>, split: Split) -> Vec<i64> {
    match split {
        Split::Test => full,
        Split::Train => subset::holdout_counts(&full).0,
        Split::Validation => subset::holdout_counts(&full).1,
    }
}

/// `dir/sub` when that is a directory, else `dir`.
pub(crate) fn resolve_subdir(dir: &Path, sub: &str) -> PathBuf {
    let nested = dir.join(sub);
    if nested.is_dir() {
        nested
    } else {
        dir.to_path_buf()
    }
}

/// Read a whole file, mapping "not found" to [`DataError::MissingFile`] with `expected`.
pub(crate) fn read_file(path: &Path, expected: &str) -> Result<Vec<u8>, DataError> {
    std::fs::read(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            DataError::MissingFile { path: path.to_path_buf(), expected: expected.to_string() }
        } else {
            DataError::Io { path: path.to_path_buf(), source: e }
        }
    })
}

/// Read an optional text file: `Ok(None)` when it does not exist.
pub(crate) fn read_optional_text(path: &Path) -> Result<Option<String>, DataError> {
    match std::fs::read(path) {
        Ok(bytes) => String::from_utf8(bytes).map(Some).map_err(|_| DataError::format(path, "not valid UTF-8 text")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(DataError::io(path, e)),
    }
}

/// Build a compact split from `u8` pixels laid out `[N, C, H, W]` (pixel value = byte / 255)
/// and labels. Takes the buffer by value so that it is freed once it is in the tensor.
pub(crate) fn dataset_from_u8(
    pixels: Vec<u8>,
    shape: [i64; 3],
    labels: &[i64],
    class_names: Vec<String>,
    name: &str,
    split: Split,
) -> CompactDataset {
    let n = labels.len() as i64;
    let [c, h, w] = shape;
    debug_assert_eq!(pixels.len() as i64, n * c * h * w);
    let bytes = Tensor::from_slice(&pixels).view([n, c, h, w]);
    drop(pixels);
    CompactDataset {
        pixels: bytes,
        divisor: 255.0,
        labels: Tensor::from_slice(labels),
        ids: Tensor::arange(n, (Kind::Int64, tch::Device::Cpu)),
        class_names,
        name: name.to_string(),
        split,
    }
}

/// A split held as the bytes it is stored in (every data set here is 8-bit): `u8` pixels, a
/// quarter of the memory of [`Dataset`]'s `f32` images. Long-lived holders of whole splits
/// (the evaluator's data cache) keep this and make `f32` [`Dataset`]s of the examples a job
/// needs ([`CompactDataset::class_balanced_subset`], [`CompactDataset::select`],
/// [`CompactDataset::to_dataset`]); those are exactly the tensors [`load`] returns.
pub struct CompactDataset {
    /// `u8 [N, C, H, W]` on the CPU; a pixel's value in `[0, 1]` is its byte / `divisor`.
    pub pixels: Tensor,
    /// 255 for the image files, 16 for the digits (values 0..16).
    pub divisor: f64,
    /// `i64 [N]`, values in `0..num_classes`.
    pub labels: Tensor,
    /// `i64 [N]`: each example's index in its split (see [`Dataset::ids`]).
    pub ids: Tensor,
    pub class_names: Vec<String>,
    pub name: String,
    pub split: Split,
}

impl fmt::Debug for CompactDataset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompactDataset")
            .field("name", &self.name)
            .field("split", &self.split)
            .field("pixels", &self.pixels.size())
            .field("num_classes", &self.class_names.len())
            .finish()
    }
}

impl CompactDataset {
    /// Number of examples.
    pub fn len(&self) -> i64 {
        self.labels.size().first().copied().unwrap_or(0)
    }

    /// True when the split has no examples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn num_classes(&self) -> i64 {
        self.class_names.len() as i64
    }

    /// `[C, H, W]` of one image.
    pub fn input_shape(&self) -> [i64; 3] {
        let s = self.pixels.size();
        [s[1], s[2], s[3]]
    }

    /// Bytes of pixel memory held.
    pub fn pixel_bytes(&self) -> i64 {
        self.pixels.numel() as i64
    }

    /// The labels as a host vector.
    #[allow(clippy::disallowed_methods)] // data on the host, read when a job sets up (no iteration)
    pub fn labels_vec(&self) -> Vec<i64> {
        let n = self.len() as usize;
        let mut v = vec![0i64; n];
        self.labels.to_kind(Kind::Int64).contiguous().copy_data(&mut v, n);
        v
    }

    /// Number of examples of each class, indexed by class.
    pub fn class_counts(&self) -> Vec<i64> {
        count_labels(&self.labels_vec(), self.class_names.len())
    }

    fn with_images(&self, images: Tensor, labels: Tensor, ids: Tensor) -> Dataset {
        Dataset { images, labels, ids, class_names: self.class_names.clone(), name: self.name.clone(), split: self.split }
    }

    fn to_f32(&self, pixels: &Tensor) -> Tensor {
        pixels.to_kind(Kind::Float) / self.divisor
    }

    /// The whole split with `f32` images (a new copy).
    pub fn to_dataset(&self) -> Dataset {
        self.with_images(self.to_f32(&self.pixels), self.labels.copy(), self.ids.copy())
    }

    /// The whole split with `f32` images, freeing the bytes.
    pub fn into_dataset(self) -> Dataset {
        let images = self.to_f32(&self.pixels);
        let CompactDataset { labels, ids, class_names, name, split, .. } = self;
        Dataset { images, labels, ids, class_names, name, split }
    }

    /// The examples at `indices`, in that order, with `f32` images (only those are converted).
    /// Panics if an index is out of range (the indices come from the caller, not a file).
    pub fn select(&self, indices: &[i64]) -> Dataset {
        let idx = Tensor::from_slice(indices);
        self.with_images(self.to_f32(&self.pixels.index_select(0, &idx)), self.labels.index_select(0, &idx), self.ids.index_select(0, &idx))
    }

    /// The first `per_class` examples of every class (in file order), as
    /// [`Dataset::class_balanced_subset`] takes them; only those are converted to `f32`.
    pub fn class_balanced_subset(&self, per_class: i64) -> Result<Dataset, DataError> {
        let indices = subset::first_per_class(&self.labels_vec(), self.num_classes(), per_class)?;
        Ok(self.select(&indices))
    }
}

impl Dataset {
    /// Number of examples.
    pub fn len(&self) -> i64 {
        self.labels.size().first().copied().unwrap_or(0)
    }

    /// True when the set has no examples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of classes (the length of `class_names`).
    pub fn num_classes(&self) -> i64 {
        self.class_names.len() as i64
    }

    /// `[C, H, W]` of one image.
    pub fn input_shape(&self) -> [i64; 3] {
        let s = self.images.size();
        [s[1], s[2], s[3]]
    }

    /// The labels as a host vector.
    #[allow(clippy::disallowed_methods)] // data on the host, read when a job sets up (no iteration)
    pub fn labels_vec(&self) -> Vec<i64> {
        let mut v = vec![0i64; self.len() as usize];
        self.labels.to_kind(Kind::Int64).contiguous().copy_data(&mut v, self.len() as usize);
        v
    }

    /// Number of examples of each class, indexed by class.
    pub fn class_counts(&self) -> Vec<i64> {
        count_labels(&self.labels_vec(), self.class_names.len())
    }

    /// A data set sharing nothing with `self` that holds the examples at `indices`, in that
    /// order. Panics if an index is out of range (the indices come from the caller, not a file).
    pub fn select(&self, indices: &[i64]) -> Dataset {
        let idx = Tensor::from_slice(indices);
        self.with_examples(self.images.index_select(0, &idx), self.labels.index_select(0, &idx), self.ids.index_select(0, &idx))
    }

    /// Other examples under this set's metadata (class names, name, split): the one place a
    /// derived set copies them.
    pub fn with_examples(&self, images: Tensor, labels: Tensor, ids: Tensor) -> Dataset {
        Dataset { images, labels, ids, class_names: self.class_names.clone(), name: self.name.clone(), split: self.split }
    }

    /// A view of the same tensors under the same metadata (no pixel copy).
    pub fn shallow_clone(&self) -> Dataset {
        self.with_examples(self.images.shallow_clone(), self.labels.shallow_clone(), self.ids.shallow_clone())
    }

    /// The first `per_class` examples of every class (in file order), kept in file order.
    /// Fails with [`DataError::TooFewExamples`] naming the first class that has fewer.
    pub fn class_balanced_subset(&self, per_class: i64) -> Result<Dataset, DataError> {
        let labels = self.labels_vec();
        let indices = subset::first_per_class(&labels, self.num_classes(), per_class)?;
        Ok(self.select(&indices))
    }

    /// Examples `start..start + length` as a data set of views (no pixel copy).
    pub fn narrow(&self, start: i64, length: i64) -> Dataset {
        let narrow = |tensor: &Tensor| tensor.narrow(0, start, length);
        self.with_examples(narrow(&self.images), narrow(&self.labels), narrow(&self.ids))
    }

    /// Consecutive batches `(images, labels)` in data-set order; the last one may be smaller.
    /// The batches are views into the data set's tensors. Panics if `batch_size < 1`.
    pub fn batches(&self, batch_size: i64) -> impl Iterator<Item = (Tensor, Tensor)> + '_ {
        assert!(batch_size >= 1, "batch_size must be at least 1, got {batch_size}");
        let n = self.len();
        (0..n).step_by(batch_size as usize).map(move |start| {
            let len = batch_size.min(n - start);
            (self.images.narrow(0, start, len), self.labels.narrow(0, start, len))
        })
    }

    /// A permutation of `0..len` drawn from a ChaCha8 generator seeded with `seed`.
    pub fn permutation(&self, seed: u64) -> Vec<i64> {
        let mut order: Vec<i64> = (0..self.len()).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        order.shuffle(&mut rng);
        order
    }

    /// Batches in the order of [`Dataset::permutation`]`(seed)`: the same seed gives the same
    /// batches. Each batch is a fresh copy. Panics if `batch_size < 1`.
    pub fn shuffled_batches(&self, batch_size: i64, seed: u64) -> impl Iterator<Item = (Tensor, Tensor)> + '_ {
        assert!(batch_size >= 1, "batch_size must be at least 1, got {batch_size}");
        let order = self.permutation(seed);
        let n = order.len();
        (0..n).step_by(batch_size as usize).map(move |start| {
            let end = (start + batch_size as usize).min(n);
            let idx = Tensor::from_slice(&order[start..end]);
            (self.images.index_select(0, &idx), self.labels.index_select(0, &idx))
        })
    }
}
