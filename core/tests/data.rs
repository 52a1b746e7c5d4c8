//! Tests of the data loaders, subsets, batching and augmentation, on small files written here.
// Tests read values to check them; no iteration runs here.
#![allow(clippy::disallowed_methods)]

use std::fs;
use std::path::Path;

use rfb_core::data::{
    augment_crop_flip, class_counts, load, load_compact, random_crop_flip, DataError, Dataset, DatasetKind, Split, DIGITS_TEST_SIZE,
    DIGITS_TOTAL, DIGITS_TRAIN_SIZE, DIGITS_VAL_SIZE,
};
use tch::{Kind, Tensor};

// ---------------------------------------------------------------------------------------------
// helpers

/// Pixel byte of global record `k`, channel `ch`, row `y`, column `x`: differs between records,
/// channels and positions.
fn pixel(k: usize, ch: usize, y: usize, x: usize) -> u8 {
    ((k * 37 + ch * 101 + y * 7 + x * 3 + (y * x) % 5) % 256) as u8
}

fn cifar_record(header: &[u8], k: usize) -> Vec<u8> {
    let mut rec = header.to_vec();
    for ch in 0..3 {
        for y in 0..32 {
            for x in 0..32 {
                rec.push(pixel(k, ch, y, x));
            }
        }
    }
    rec
}

/// Write a CIFAR-10 file whose records are the global records `ks` with labels `label(k)`.
fn write_cifar10(path: &Path, ks: std::ops::Range<usize>, label: impl Fn(usize) -> u8) {
    let mut bytes = Vec::new();
    for k in ks {
        bytes.extend(cifar_record(&[label(k)], k));
    }
    fs::write(path, bytes).unwrap();
}

/// Five training batches of 20 records (labels k % 10) and a test batch of 7 records
/// (labels (k * 3) % 10), records numbered 0..100 and 1000..1007.
fn write_full_cifar10(dir: &Path) {
    for b in 0..5 {
        write_cifar10(&dir.join(format!("data_batch_{}.bin", b + 1)), b * 20..(b + 1) * 20, |k| (k % 10) as u8);
    }
    write_cifar10(&dir.join("test_batch.bin"), 1000..1007, |k| ((k * 3) % 10) as u8);
}

/// The expected image tensor `[len, 3, 32, 32]` of records `ks`, scaled to [0, 1].
fn expected_images(ks: &[usize]) -> Tensor {
    let mut bytes = Vec::new();
    for &k in ks {
        bytes.extend(cifar_record(&[], k));
    }
    Tensor::from_slice(&bytes).view([ks.len() as i64, 3, 32, 32]).to_kind(Kind::Float) / 255.0
}

fn labels_of(ds: &Dataset) -> Vec<i64> {
    Vec::<i64>::try_from(&ds.labels).unwrap()
}

fn assert_exact(a: &Tensor, b: &Tensor) {
    assert_eq!(a.size(), b.size());
    assert_eq!(a.kind(), b.kind());
    let diff = (a - b).abs().max().double_value(&[]);
    assert_eq!(diff, 0.0, "tensors differ by up to {diff}");
}

// ---------------------------------------------------------------------------------------------
// names and kinds

#[test]
fn split_and_kind_parse_and_print() {
    assert_eq!("train".parse::<Split>().unwrap(), Split::Train);
    assert_eq!("val".parse::<Split>().unwrap(), Split::Validation);
    assert_eq!("validation".parse::<Split>().unwrap(), Split::Validation);
    assert_eq!("test".parse::<Split>().unwrap(), Split::Test);
    assert!("dev".parse::<Split>().is_err());
    assert_eq!(Split::Validation.to_string(), "val");
    for kind in DatasetKind::ALL {
        assert_eq!(kind.name().parse::<DatasetKind>().unwrap(), kind);
        assert_eq!(kind.to_string(), kind.name());
    }
    assert_eq!("tiny-imagenet".parse::<DatasetKind>().unwrap(), DatasetKind::TinyImageNet);
    assert!(matches!(
        "mnist".parse::<DatasetKind>(),
        Err(DataError::UnknownDataset(s)) if s == "mnist"
    ));
    assert_eq!(DatasetKind::Cifar100.num_classes(), 100);
    assert_eq!(DatasetKind::TinyImageNet.input_shape(), [3, 64, 64]);
    assert_eq!(DatasetKind::Digits.input_shape(), [1, 8, 8]);
}

#[test]
fn file_data_sets_need_a_directory() {
    let err = load(DatasetKind::Cifar10, Split::Test, None).unwrap_err();
    assert!(matches!(err, DataError::NoDataDir { ref dataset } if dataset == "cifar10"), "{err}");
    let tmp = tempfile::tempdir().unwrap();
    let err = load(DatasetKind::Cifar10, Split::Test, Some(&tmp.path().join("nope"))).unwrap_err();
    assert!(matches!(err, DataError::MissingFile { .. }), "{err}");
}

// ---------------------------------------------------------------------------------------------
// CIFAR-10

#[test]
fn cifar10_test_split_round_trips_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    write_full_cifar10(tmp.path());
    let ds = load(DatasetKind::Cifar10, Split::Test, Some(tmp.path())).unwrap();
    assert_eq!(ds.name, "cifar10");
    assert_eq!(ds.split, Split::Test);
    assert_eq!(ds.len(), 7);
    assert_eq!(ds.images.size(), vec![7, 3, 32, 32]);
    assert_eq!(ds.images.kind(), Kind::Float);
    assert_eq!(ds.labels.kind(), Kind::Int64);
    assert_eq!(labels_of(&ds), vec![0, 3, 6, 9, 2, 5, 8]);
    let ks: Vec<usize> = (1000..1007).collect();
    assert_exact(&ds.images, &expected_images(&ks));
    // Layout spot checks: record 1002, green plane, row 5, column 9.
    let v = ds.images.double_value(&[2, 1, 5, 9]) * 255.0;
    assert_eq!(v.round() as u8, pixel(1002, 1, 5, 9));
    let v = ds.images.double_value(&[6, 2, 31, 0]) * 255.0;
    assert_eq!(v.round() as u8, pixel(1006, 2, 31, 0));
    // Standard names without batches.meta.txt.
    assert_eq!(ds.num_classes(), 10);
    assert_eq!(ds.class_names[0], "airplane");
    assert_eq!(ds.class_names[9], "truck");
}

#[test]
fn cifar10_train_and_validation_hold_out_the_last_of_each_class() {
    let tmp = tempfile::tempdir().unwrap();
    let nested = tmp.path().join("cifar-10-batches-bin");
    fs::create_dir(&nested).unwrap();
    write_full_cifar10(&nested);
    let names: Vec<String> = (0..10).map(|i| format!("name{i}")).collect();
    fs::write(nested.join("batches.meta.txt"), names.join("\n") + "\n\n").unwrap();

    // 100 records, 10 per class: max(1, 10 * 2 / 100) = 1 held out per class, the last one,
    // which for labels k % 10 are records 90..100.
    let train = load(DatasetKind::Cifar10, Split::Train, Some(tmp.path())).unwrap();
    let val = load(DatasetKind::Cifar10, Split::Validation, Some(tmp.path())).unwrap();
    assert_eq!(train.len(), 90);
    assert_eq!(val.len(), 10);
    assert_eq!(val.split, Split::Validation);
    let train_ks: Vec<usize> = (0..90).collect();
    let val_ks: Vec<usize> = (90..100).collect();
    assert_exact(&train.images, &expected_images(&train_ks));
    assert_exact(&val.images, &expected_images(&val_ks));
    assert_eq!(labels_of(&train), train_ks.iter().map(|k| (k % 10) as i64).collect::<Vec<_>>());
    assert_eq!(labels_of(&val), (0..10).collect::<Vec<i64>>());
    assert_eq!(train.class_counts(), vec![9; 10]);
    assert_eq!(train.class_names, names);
}

#[test]
fn cifar10_truncated_file_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    write_full_cifar10(tmp.path());
    let path = tmp.path().join("test_batch.bin");
    let mut bytes = fs::read(&path).unwrap();
    bytes.truncate(3073 * 2 + 5);
    fs::write(&path, &bytes).unwrap();
    let err = load(DatasetKind::Cifar10, Split::Test, Some(tmp.path())).unwrap_err();
    match &err {
        DataError::Truncated { path: p, expected_bytes, found_bytes } => {
            assert_eq!(p, &path);
            assert_eq!(*found_bytes, 3073 * 2 + 5);
            assert_eq!(*expected_bytes, 3073 * 3);
        }
        other => panic!("expected Truncated, got {other:?}"),
    }
    assert!(err.to_string().contains("test_batch.bin"));
    // An empty training batch is truncated too.
    fs::write(tmp.path().join("data_batch_3.bin"), b"").unwrap();
    let err = load(DatasetKind::Cifar10, Split::Train, Some(tmp.path())).unwrap_err();
    assert!(matches!(&err, DataError::Truncated { path, found_bytes: 0, .. } if path.ends_with("data_batch_3.bin")), "{err:?}");
}

#[test]
fn cifar10_missing_files_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    write_full_cifar10(tmp.path());
    fs::remove_file(tmp.path().join("test_batch.bin")).unwrap();
    let err = load(DatasetKind::Cifar10, Split::Test, Some(tmp.path())).unwrap_err();
    match &err {
        DataError::MissingFile { path, expected } => {
            assert!(path.ends_with("test_batch.bin"), "{path:?}");
            assert!(expected.contains("test"), "{expected}");
        }
        other => panic!("expected MissingFile, got {other:?}"),
    }
    assert!(err.to_string().contains("test_batch.bin"), "{err}");
    // The training split still loads.
    assert!(load(DatasetKind::Cifar10, Split::Train, Some(tmp.path())).is_ok());
    fs::remove_file(tmp.path().join("data_batch_4.bin")).unwrap();
    let err = load(DatasetKind::Cifar10, Split::Train, Some(tmp.path())).unwrap_err();
    assert!(matches!(&err, DataError::MissingFile { path, .. } if path.ends_with("data_batch_4.bin")), "{err:?}");
}

#[test]
fn cifar10_bad_label_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    write_full_cifar10(tmp.path());
    let path = tmp.path().join("test_batch.bin");
    write_cifar10(&path, 0..6, |k| if k == 3 { 10 } else { 1 });
    let err = load(DatasetKind::Cifar10, Split::Test, Some(tmp.path())).unwrap_err();
    match err {
        DataError::BadLabel { path: p, record, label, num_classes } => {
            assert_eq!(p, path);
            assert_eq!((record, label, num_classes), (3, 10, 10));
        }
        other => panic!("expected BadLabel, got {other:?}"),
    }
}

#[test]
fn cifar10_wrong_number_of_class_names_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    write_full_cifar10(tmp.path());
    fs::write(tmp.path().join("batches.meta.txt"), "a\nb\nc\n").unwrap();
    let err = load(DatasetKind::Cifar10, Split::Test, Some(tmp.path())).unwrap_err();
    assert!(matches!(&err, DataError::Format { path, .. } if path.ends_with("batches.meta.txt")), "{err:?}");
}

// ---------------------------------------------------------------------------------------------
// CIFAR-100

fn write_cifar100(path: &Path, ks: std::ops::Range<usize>, fine: impl Fn(usize) -> u8) {
    let mut bytes = Vec::new();
    for k in ks {
        let f = fine(k);
        bytes.extend(cifar_record(&[f / 5, f], k));
    }
    fs::write(path, bytes).unwrap();
}

#[test]
fn cifar100_uses_fine_labels_and_round_trips() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cifar-100-binary");
    fs::create_dir(&dir).unwrap();
    // 300 training records: 3 per fine class, in order (k % 100).
    write_cifar100(&dir.join("train.bin"), 0..300, |k| (k % 100) as u8);
    write_cifar100(&dir.join("test.bin"), 500..505, |k| (99 - (k - 500) * 7) as u8);

    let test = load(DatasetKind::Cifar100, Split::Test, Some(tmp.path())).unwrap();
    assert_eq!(test.name, "cifar100");
    assert_eq!(labels_of(&test), vec![99, 92, 85, 78, 71]);
    assert_exact(&test.images, &expected_images(&(500..505).collect::<Vec<_>>()));
    assert_eq!(test.num_classes(), 100);
    assert_eq!(test.class_names[42], "class_42");

    let train = load(DatasetKind::Cifar100, Split::Train, Some(tmp.path())).unwrap();
    let val = load(DatasetKind::Cifar100, Split::Validation, Some(tmp.path())).unwrap();
    assert_eq!((train.len(), val.len()), (200, 100));
    assert_exact(&train.images, &expected_images(&(0..200).collect::<Vec<_>>()));
    assert_exact(&val.images, &expected_images(&(200..300).collect::<Vec<_>>()));
    assert_eq!(val.class_counts(), vec![1; 100]);

    let names: Vec<String> = (0..100).map(|i| format!("fine{i}")).collect();
    fs::write(dir.join("fine_label_names.txt"), names.join("\n")).unwrap();
    let test = load(DatasetKind::Cifar100, Split::Test, Some(tmp.path())).unwrap();
    assert_eq!(test.class_names, names);
}

#[test]
fn cifar100_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let err = load(DatasetKind::Cifar100, Split::Train, Some(tmp.path())).unwrap_err();
    assert!(matches!(&err, DataError::MissingFile { path, .. } if path.ends_with("train.bin")), "{err:?}");
    write_cifar100(&tmp.path().join("test.bin"), 0..4, |k| if k == 2 { 100 } else { 5 });
    let err = load(DatasetKind::Cifar100, Split::Test, Some(tmp.path())).unwrap_err();
    assert!(matches!(err, DataError::BadLabel { record: 2, label: 100, num_classes: 100, .. }), "{err:?}");
    // A CIFAR-10 sized record is not a whole number of CIFAR-100 records.
    write_cifar10(&tmp.path().join("test.bin"), 0..2, |_| 1);
    let err = load(DatasetKind::Cifar100, Split::Test, Some(tmp.path())).unwrap_err();
    assert!(matches!(err, DataError::Truncated { found_bytes: 6146, expected_bytes: 6148, .. }), "{err:?}");
}

// ---------------------------------------------------------------------------------------------
// Tiny-ImageNet

const WNIDS: [&str; 3] = ["n01443537", "n01629819", "n01641577"];

/// Solid colour of training image `i` of class `c`, and of val image `v`.
fn train_colour(c: usize, i: usize) -> [u8; 3] {
    [(40 + c * 80) as u8, (20 + i * 60) as u8, 200]
}
fn val_colour(v: usize) -> [u8; 3] {
    [(10 + v * 50) as u8, 128, (250 - v * 40) as u8]
}

fn write_jpeg(path: &Path, colour: [u8; 3]) {
    let img = image::RgbImage::from_pixel(64, 64, image::Rgb(colour));
    img.save_with_format(path, image::ImageFormat::Jpeg).unwrap();
}

/// Three classes with three training images each (file names written in reverse order so
/// sorting matters), and four val images labelled by the annotations file.
fn write_tiny(root: &Path) {
    fs::create_dir_all(root).unwrap();
    fs::write(root.join("wnids.txt"), WNIDS.join("\n") + "\n").unwrap();
    fs::write(
        root.join("words.txt"),
        "n01443537\tgoldfish, Carassius auratus\nn01629819\tEuropean fire salamander, Salamandra salamandra\nn09999999\tunused\n",
    )
    .unwrap();
    for (c, w) in WNIDS.iter().enumerate() {
        let dir = root.join("train").join(w).join("images");
        fs::create_dir_all(&dir).unwrap();
        fs::write(root.join("train").join(w).join(format!("{w}_boxes.txt")), "").unwrap();
        for i in (0..3).rev() {
            write_jpeg(&dir.join(format!("{w}_{i}.JPEG")), train_colour(c, i));
        }
        fs::write(dir.join("notes.txt"), "not an image").unwrap();
    }
    let val = root.join("val").join("images");
    fs::create_dir_all(&val).unwrap();
    let val_labels = [2usize, 0, 2, 1];
    let mut ann = String::new();
    for (v, &c) in val_labels.iter().enumerate() {
        let name = format!("val_{}.JPEG", 3 - v);
        write_jpeg(&val.join(&name), val_colour(v));
        ann.push_str(&format!("{name}\t{}\t0\t0\t63\t63\n", WNIDS[c]));
    }
    fs::write(root.join("val").join("val_annotations.txt"), ann).unwrap();
}

/// Mean colour (0..255) of image `n`.
fn mean_colour(ds: &Dataset, n: i64) -> [f64; 3] {
    let m = ds.images.get(n).mean_dim([1i64, 2].as_slice(), false, Kind::Float) * 255.0;
    [m.double_value(&[0]), m.double_value(&[1]), m.double_value(&[2])]
}

fn assert_colour(ds: &Dataset, n: i64, colour: [u8; 3]) {
    let got = mean_colour(ds, n);
    for ch in 0..3 {
        assert!(
            (got[ch] - colour[ch] as f64).abs() < 8.0, // JPEG colour conversion error; colours differ by >= 40
            "image {n}: mean colour {got:?}, expected {colour:?}"
        );
    }
}

#[test]
fn tiny_imagenet_labels_from_folders_and_annotations() {
    let tmp = tempfile::tempdir().unwrap();
    write_tiny(&tmp.path().join("tiny-imagenet-200"));

    let train = load(DatasetKind::TinyImageNet, Split::Train, Some(tmp.path())).unwrap();
    assert_eq!(train.name, "tiny-imagenet");
    assert_eq!(train.images.size(), vec![6, 3, 64, 64]);
    assert_eq!(train.num_classes(), 3);
    assert_eq!(train.class_names, vec!["goldfish", "European fire salamander", "n01641577"]);
    // Sorted file names: _0, _1 train, _2 held out as validation.
    assert_eq!(labels_of(&train), vec![0, 0, 1, 1, 2, 2]);
    for c in 0..3 {
        for i in 0..2 {
            assert_colour(&train, (c * 2 + i) as i64, train_colour(c, i));
        }
    }
    let val = load(DatasetKind::TinyImageNet, Split::Validation, Some(tmp.path())).unwrap();
    assert_eq!(labels_of(&val), vec![0, 1, 2]);
    for c in 0..3 {
        assert_colour(&val, c as i64, train_colour(c, 2));
    }

    let test = load(DatasetKind::TinyImageNet, Split::Test, Some(tmp.path())).unwrap();
    assert_eq!(test.split, Split::Test);
    assert_eq!(labels_of(&test), vec![2, 0, 2, 1]);
    for v in 0..4 {
        assert_colour(&test, v as i64, val_colour(v));
    }
    let max = test.images.max().double_value(&[]);
    let min = test.images.min().double_value(&[]);
    assert!((0.0..=1.0).contains(&min) && max <= 1.0);
}

#[test]
fn tiny_imagenet_greyscale_is_converted_to_rgb() {
    let tmp = tempfile::tempdir().unwrap();
    write_tiny(tmp.path());
    let grey = image::GrayImage::from_pixel(64, 64, image::Luma([77u8]));
    let path = tmp.path().join("val").join("images").join("val_0.JPEG");
    grey.save_with_format(&path, image::ImageFormat::Jpeg).unwrap();
    let test = load(DatasetKind::TinyImageNet, Split::Test, Some(tmp.path())).unwrap();
    // val_0 is the last line of the annotations.
    assert_colour(&test, 3, [77, 77, 77]);
}

#[test]
fn tiny_imagenet_errors_name_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    write_tiny(tmp.path());
    let ann = tmp.path().join("val").join("val_annotations.txt");

    // Unknown class id in the annotations.
    let text = fs::read_to_string(&ann).unwrap();
    fs::write(&ann, text.replace(WNIDS[1], "n00000000")).unwrap();
    let err = load(DatasetKind::TinyImageNet, Split::Test, Some(tmp.path())).unwrap_err();
    assert!(matches!(&err, DataError::Format { path, message } if path == &ann && message.contains("n00000000")), "{err:?}");

    // Missing annotations file.
    fs::remove_file(&ann).unwrap();
    let err = load(DatasetKind::TinyImageNet, Split::Test, Some(tmp.path())).unwrap_err();
    assert!(matches!(&err, DataError::MissingFile { path, .. } if path == &ann), "{err:?}");
    assert!(err.to_string().contains("val_annotations.txt"));

    // An image of the wrong size.
    let bad = tmp.path().join("train").join(WNIDS[2]).join("images").join(format!("{}_1.JPEG", WNIDS[2]));
    image::RgbImage::from_pixel(32, 32, image::Rgb([1, 2, 3])).save_with_format(&bad, image::ImageFormat::Jpeg).unwrap();
    let err = load(DatasetKind::TinyImageNet, Split::Train, Some(tmp.path())).unwrap_err();
    assert!(matches!(&err, DataError::Format { path, .. } if path == &bad), "{err:?}");

    // A file that is not an image.
    fs::write(&bad, b"garbage").unwrap();
    let err = load(DatasetKind::TinyImageNet, Split::Train, Some(tmp.path())).unwrap_err();
    assert!(matches!(&err, DataError::Image { path, .. } if path == &bad), "{err:?}");

    // A class without its training folder.
    fs::remove_dir_all(tmp.path().join("train").join(WNIDS[0])).unwrap();
    let err = load(DatasetKind::TinyImageNet, Split::Train, Some(tmp.path())).unwrap_err();
    assert!(matches!(&err, DataError::MissingFile { path, .. } if path.to_string_lossy().contains(WNIDS[0])), "{err:?}");

    // No wnids.txt.
    fs::remove_file(tmp.path().join("wnids.txt")).unwrap();
    let err = load(DatasetKind::TinyImageNet, Split::Test, Some(tmp.path())).unwrap_err();
    assert!(matches!(&err, DataError::MissingFile { path, .. } if path.ends_with("wnids.txt")), "{err:?}");
}

// ---------------------------------------------------------------------------------------------
// digits

#[test]
fn digits_split_sizes_and_stratification() {
    let splits = [Split::Train, Split::Validation, Split::Test];
    let sets: Vec<Dataset> = splits.iter().map(|&s| load(DatasetKind::Digits, s, None).unwrap()).collect();
    let sizes: Vec<i64> = sets.iter().map(Dataset::len).collect();
    assert_eq!(sizes, vec![DIGITS_TRAIN_SIZE, DIGITS_VAL_SIZE, DIGITS_TEST_SIZE]);
    assert_eq!(sizes, vec![1074, 359, 364]);
    assert_eq!(sizes.iter().sum::<i64>(), DIGITS_TOTAL);

    // Reference: the per-class 60/20/20 rule applied to smartcore's data in order.
    let raw = smartcore::dataset::digits::load_dataset();
    let labels: Vec<usize> = raw.target.iter().map(|&t| t as usize).collect();
    let mut counts = [0usize; 10];
    for &l in &labels {
        counts[l] += 1;
    }
    let mut seen = [0usize; 10];
    let mut members: [Vec<usize>; 3] = Default::default();
    for (i, &l) in labels.iter().enumerate() {
        let pos = seen[l];
        seen[l] += 1;
        let s = if pos < counts[l] * 3 / 5 {
            0
        } else if pos < counts[l] * 4 / 5 {
            1
        } else {
            2
        };
        members[s].push(i);
    }
    // Disjoint and covering: every index is in exactly one list.
    let mut all: Vec<usize> = members.iter().flatten().copied().collect();
    all.sort();
    assert_eq!(all, (0..1797).collect::<Vec<_>>());

    for (ds, idx) in sets.iter().zip(&members) {
        assert_eq!(ds.name, "digits");
        assert_eq!(ds.images.size(), vec![idx.len() as i64, 1, 8, 8]);
        assert_eq!(ds.class_names, (0..10).map(|d| d.to_string()).collect::<Vec<_>>());
        let want_pixels: Vec<f32> = idx.iter().flat_map(|&i| raw.data[i * 64..(i + 1) * 64].iter().map(|v| v / 16.0)).collect();
        let want = Tensor::from_slice(&want_pixels).view([idx.len() as i64, 1, 8, 8]);
        assert_exact(&ds.images, &want);
        let want_labels: Vec<i64> = idx.iter().map(|&i| labels[i] as i64).collect();
        assert_eq!(labels_of(ds), want_labels);
        // Every class in every split, in proportion.
        let counts_here = ds.class_counts();
        for (c, &n) in counts_here.iter().enumerate() {
            assert!(n > 0, "class {c} missing from {}", ds.split);
        }
        assert_eq!(ds.images.min().double_value(&[]), 0.0);
        assert_eq!(ds.images.max().double_value(&[]), 1.0);
    }
    let train_counts = sets[0].class_counts();
    assert!(train_counts.iter().all(|&n| (104..=110).contains(&n)), "{train_counts:?}");
}

// ---------------------------------------------------------------------------------------------
// subsets and batches

/// A small set whose image n is filled with the value n / 100.
fn toy(labels: &[i64], num_classes: usize) -> Dataset {
    let n = labels.len() as i64;
    let images = (Tensor::arange(n, (Kind::Float, tch::Device::Cpu)) / 100.0).view([n, 1, 1, 1]).expand([n, 1, 2, 2], false).contiguous();
    Dataset {
        images,
        labels: Tensor::from_slice(labels),
        ids: Tensor::arange(n, (Kind::Int64, tch::Device::Cpu)),
        class_names: (0..num_classes).map(|c| format!("c{c}")).collect(),
        name: "toy".to_string(),
        split: Split::Train,
    }
}

/// The index n of each image of a toy set.
fn toy_ids(images: &Tensor) -> Vec<i64> {
    let v = Vec::<f32>::try_from(&images.select(1, 0).select(1, 0).select(1, 1)).unwrap();
    v.iter().map(|x| (x * 100.0).round() as i64).collect()
}

#[test]
fn class_balanced_subset_takes_the_first_of_each_class() {
    let ds = toy(&[0, 1, 0, 2, 1, 0, 2, 2, 1, 0], 3);
    assert_eq!(ds.class_counts(), vec![4, 3, 3]);
    let sub = ds.class_balanced_subset(2).unwrap();
    assert_eq!(toy_ids(&sub.images), vec![0, 1, 2, 3, 4, 6]);
    assert_eq!(labels_of(&sub), vec![0, 1, 0, 2, 1, 2]);
    assert_eq!(sub.class_counts(), vec![2, 2, 2]);
    assert_eq!(sub.class_names, ds.class_names);
    let sub3 = ds.class_balanced_subset(3).unwrap();
    assert_eq!(toy_ids(&sub3.images), vec![0, 1, 2, 3, 4, 5, 6, 7, 8]);
    let err = ds.class_balanced_subset(4).unwrap_err();
    assert!(matches!(err, DataError::TooFewExamples { class: 1, wanted: 4, available: 3 }), "{err:?}");
    // A class with no examples at all.
    let ds = toy(&[0, 0, 2], 3);
    let err = ds.class_balanced_subset(1).unwrap_err();
    assert!(matches!(err, DataError::TooFewExamples { class: 1, available: 0, .. }), "{err:?}");
}

#[test]
fn batches_cover_the_set_in_order() {
    let ds = toy(&[0, 1, 2, 0, 1, 2, 0], 3);
    let batches: Vec<(Tensor, Tensor)> = ds.batches(3).collect();
    assert_eq!(batches.len(), 3);
    assert_eq!(batches[2].0.size(), vec![1, 1, 2, 2]);
    let ids: Vec<i64> = batches.iter().flat_map(|(x, _)| toy_ids(x)).collect();
    assert_eq!(ids, (0..7).collect::<Vec<_>>());
    let labels: Vec<i64> = batches.iter().flat_map(|(_, y)| Vec::<i64>::try_from(y).unwrap()).collect();
    assert_eq!(labels, vec![0, 1, 2, 0, 1, 2, 0]);
}

#[test]
fn shuffled_batches_are_seeded_permutations() {
    let labels: Vec<i64> = (0..50).map(|i| i % 5).collect();
    let ds = toy(&labels, 5);
    let run = |seed| -> (Vec<i64>, Vec<i64>) {
        let mut ids = Vec::new();
        let mut ys = Vec::new();
        for (x, y) in ds.shuffled_batches(8, seed) {
            assert!(x.size()[0] <= 8);
            ids.extend(toy_ids(&x));
            ys.extend(Vec::<i64>::try_from(&y).unwrap());
        }
        (ids, ys)
    };
    let (a, ya) = run(7);
    let (b, _) = run(7);
    let (c, _) = run(8);
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert_ne!(a, (0..50).collect::<Vec<_>>());
    // Labels travel with their images.
    assert_eq!(ya, a.iter().map(|i| i % 5).collect::<Vec<_>>());
    let mut sorted = a.clone();
    sorted.sort();
    assert_eq!(sorted, (0..50).collect::<Vec<_>>());
    // Independent of libtorch's global generator.
    tch::manual_seed(1);
    let _ = Tensor::rand([10], (Kind::Float, tch::Device::Cpu));
    assert_eq!(run(7).0, a);
}

// ---------------------------------------------------------------------------------------------
// augmentation

/// Images with distinct values in [0, 1] so that a crop identifies its offset.
fn distinct_images(n: i64, c: i64, h: i64, w: i64) -> Tensor {
    let total = n * c * h * w;
    (Tensor::arange(total, (Kind::Float, tch::Device::Cpu)) + 1.0).view([n, c, h, w]) / total as f64
}

/// All `(dy, dx, flipped)` for which `out` is that crop of the zero-padded `img` ([C, H, W]).
fn matching_crops(img: &Tensor, out: &Tensor, padding: i64) -> Vec<(i64, i64, bool)> {
    let s = img.size();
    let (h, w) = (s[1], s[2]);
    let padded = img.constant_pad_nd([padding, padding, padding, padding]);
    let mut found = Vec::new();
    for dy in 0..=2 * padding {
        for dx in 0..=2 * padding {
            let crop = padded.narrow(1, dy, h).narrow(2, dx, w);
            for flipped in [false, true] {
                let cand = if flipped { crop.flip([2]) } else { crop.shallow_clone() };
                if cand.equal(out) {
                    found.push((dy, dx, flipped));
                }
            }
        }
    }
    found
}

#[test]
fn augmentation_is_seeded() {
    let x = distinct_images(16, 3, 8, 8);
    let a = augment_crop_flip(&x, 2, 11);
    let b = augment_crop_flip(&x, 2, 11);
    let c = augment_crop_flip(&x, 2, 12);
    assert!(a.equal(&b));
    assert!(!a.equal(&c));
    assert_eq!(a.size(), x.size());
    assert_eq!(a.kind(), x.kind());
    // Not affected by the global generator.
    tch::manual_seed(99);
    assert!(augment_crop_flip(&x, 2, 11).equal(&a));
}

#[test]
fn augmentation_without_padding_or_flip_is_identity() {
    let x = distinct_images(5, 3, 6, 7);
    let y = random_crop_flip(&x, 0, false, 3);
    assert!(y.equal(&x));
    // With flips only, every image is itself or its mirror, and both happen.
    let x = distinct_images(40, 2, 4, 5);
    let y = augment_crop_flip(&x, 0, 3);
    assert_eq!(y.size(), x.size());
    let mut flips = 0;
    for n in 0..40 {
        let (xi, yi) = (x.get(n), y.get(n));
        if yi.equal(&xi.flip([2])) {
            flips += 1;
        } else {
            assert!(yi.equal(&xi), "image {n} is neither itself nor its mirror");
        }
    }
    assert!(flips > 5 && flips < 35, "{flips} flips of 40");
}

#[test]
fn augmentation_outputs_exact_crops_of_the_padded_image() {
    let padding = 4;
    let x = distinct_images(64, 3, 12, 10);
    let y = augment_crop_flip(&x, padding, 2024);
    let lo = y.min().double_value(&[]);
    let hi = y.max().double_value(&[]);
    assert!(lo >= 0.0 && hi <= 1.0, "values in [{lo}, {hi}]");
    let mut offsets = std::collections::HashSet::new();
    let mut flips = 0;
    for n in 0..64 {
        let found = matching_crops(&x.get(n), &y.get(n), padding);
        assert_eq!(found.len(), 1, "image {n}: matches {found:?}");
        let (dy, dx, f) = found[0];
        offsets.insert((dy, dx));
        flips += f as i32;
    }
    // 81 possible offsets: 64 draws must hit many of them, and flips about half the time.
    assert!(offsets.len() > 20, "only {} distinct offsets", offsets.len());
    assert!(flips > 16 && flips < 48, "{flips} flips of 64");
    // Values come only from the image or the zero padding.
    let nonzero = y.ne(0.0).sum(Kind::Int64).int64_value(&[]);
    assert!(nonzero < y.numel() as i64);
}

#[test]
fn augmentation_keeps_kind_and_works_on_the_input_device() {
    let device = tch::Device::cuda_if_available();
    let x = (distinct_images(8, 3, 32, 32) * 255.0).to_kind(Kind::Uint8).to_device(device);
    let y = augment_crop_flip(&x, 4, 5);
    assert_eq!(y.device(), device);
    assert_eq!(y.kind(), Kind::Uint8);
    let cpu = augment_crop_flip(&x.to_device(tch::Device::Cpu), 4, 5);
    assert!(y.to_device(tch::Device::Cpu).equal(&cpu));
    let empty = Tensor::zeros([0, 3, 4, 4], (Kind::Float, tch::Device::Cpu));
    assert_eq!(augment_crop_flip(&empty, 2, 0).size(), vec![0, 3, 4, 4]);
}

// ---------------------------------------------------------------------------------------------
// labels-only class counts and the compact (byte) form

#[test]
fn class_counts_from_labels_alone_match_the_loaded_splits() {
    let tmp = tempfile::tempdir().unwrap();
    let cifar10 = tmp.path().join("c10");
    fs::create_dir(&cifar10).unwrap();
    write_full_cifar10(&cifar10);
    let cifar100 = tmp.path().join("c100");
    fs::create_dir(&cifar100).unwrap();
    write_cifar100(&cifar100.join("train.bin"), 0..300, |k| (k % 100) as u8);
    write_cifar100(&cifar100.join("test.bin"), 500..505, |k| (k % 100) as u8);
    let tiny = tmp.path().join("tiny");
    write_tiny(&tiny);
    let cases = [
        (DatasetKind::Digits, None),
        (DatasetKind::Cifar10, Some(cifar10.as_path())),
        (DatasetKind::Cifar100, Some(cifar100.as_path())),
        (DatasetKind::TinyImageNet, Some(tiny.as_path())),
    ];
    for (kind, dir) in cases {
        for split in [Split::Train, Split::Validation, Split::Test] {
            let loaded = load(kind, split, dir).unwrap();
            let counted = class_counts(kind, split, dir).unwrap();
            assert_eq!(counted, loaded.class_counts(), "{kind} {split}");
            // The compact form holds the same split: its f32 form is the loaded tensor.
            let compact = load_compact(kind, split, dir).unwrap();
            assert_eq!(compact.pixels.kind(), Kind::Uint8);
            assert_eq!(compact.class_counts(), counted);
            assert_exact(&compact.to_dataset().images, &loaded.images);
            let per_class = counted.iter().copied().min().unwrap_or(0).min(2);
            if per_class == 0 {
                continue;
            }
            let a = compact.class_balanced_subset(per_class).unwrap();
            let b = loaded.class_balanced_subset(per_class).unwrap();
            assert_exact(&a.images, &b.images);
            assert_eq!(labels_of(&a), labels_of(&b));
            assert_eq!(Vec::<i64>::try_from(&a.ids).unwrap(), Vec::<i64>::try_from(&b.ids).unwrap());
        }
    }
    // The files are checked as the loaders check them.
    fs::write(cifar10.join("data_batch_3.bin"), [1u8; 100]).unwrap();
    let err = class_counts(DatasetKind::Cifar10, Split::Validation, Some(&cifar10)).unwrap_err();
    assert!(matches!(err, DataError::Truncated { .. }), "{err:?}");
    fs::remove_file(cifar10.join("data_batch_3.bin")).unwrap();
    let err = class_counts(DatasetKind::Cifar10, Split::Train, Some(&cifar10)).unwrap_err();
    assert!(matches!(err, DataError::MissingFile { .. }), "{err:?}");
    let err = class_counts(DatasetKind::Cifar10, Split::Test, None).unwrap_err();
    assert!(matches!(err, DataError::NoDataDir { .. }), "{err:?}");
}

#[test]
fn an_absurd_number_per_class_is_an_error_not_an_allocation() {
    let ds = toy(&[0, 1, 0, 1], 2);
    for per_class in [1_000_000_000_000i64, i64::MAX] {
        let err = ds.class_balanced_subset(per_class).unwrap_err();
        assert!(matches!(err, DataError::TooFewExamples { available: 2, .. }), "{err:?}");
    }
    let digits = load_compact(DatasetKind::Digits, Split::Train, None).unwrap();
    assert!(digits.class_balanced_subset(i64::MAX).is_err());
}

/// Resident memory of this process, in KiB.
fn rss_kib() -> i64 {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    status.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// The memory a whole CIFAR-10-sized training split takes held as bytes and as f32, on files of
/// the real size (50 000 + 10 000 records, 184 MB) written here. Run by hand:
/// `cargo nextest run -p rfb-core --test data --run-ignored only -E 'test(memory_of)' --no-capture`.
#[test]
#[ignore = "writes 184 MB of files; a measurement, run by hand"]
fn memory_of_a_cifar_sized_split_as_bytes_and_as_f32() {
    let tmp = tempfile::tempdir().unwrap();
    for b in 0..5 {
        write_cifar10(&tmp.path().join(format!("data_batch_{}.bin", b + 1)), b * 10_000..(b + 1) * 10_000, |k| (k % 10) as u8);
    }
    write_cifar10(&tmp.path().join("test_batch.bin"), 50_000..60_000, |k| (k % 10) as u8);
    let before = rss_kib();
    let compact = load_compact(DatasetKind::Cifar10, Split::Train, Some(tmp.path())).unwrap();
    let held_bytes = rss_kib() - before;
    let subset = compact.class_balanced_subset(100).unwrap();
    assert_eq!(subset.len(), 1000);
    drop(subset);
    let tensor_bytes = compact.pixel_bytes();
    drop(compact);
    let before = rss_kib();
    let full = load(DatasetKind::Cifar10, Split::Train, Some(tmp.path())).unwrap();
    let held_f32 = rss_kib() - before;
    let f32_bytes = full.images.numel() as i64 * 4;
    drop(full);
    eprintln!(
        "CIFAR-10 train split (49 000 images): held as bytes {} MiB of pixels (RSS +{} MiB), as f32 {} MiB (RSS +{} MiB)",
        tensor_bytes >> 20,
        held_bytes >> 10,
        f32_bytes >> 20,
        held_f32 >> 10
    );
    assert_eq!(tensor_bytes * 4, f32_bytes);
    assert!(held_bytes * 3 < held_f32, "bytes {held_bytes} KiB vs f32 {held_f32} KiB");
}
