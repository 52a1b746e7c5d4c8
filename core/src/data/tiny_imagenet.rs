//! Tiny-ImageNet-200: 64x64 RGB JPEGs in the layout of the official zip.
//!
//! * `wnids.txt`: one WordNet id a line; the line order is the class index.
//! * `words.txt` (optional): `wnid \t name, other name, ...`; the class name is the first name.
//!   Without it (or without a line for an id) the class name is the id.
//! * `train/<wnid>/images/*.JPEG`: training images, taken in sorted file-name order per class,
//!   classes in `wnids.txt` order.
//! * `val/images/*.JPEG` with `val/val_annotations.txt` (`file \t wnid \t x0 \t y0 \t x1 \t y1`):
//!   the split loaded as [`Split::Test`], in annotation-file order.
//!
//! Greyscale (and any other colour type) images are converted to RGB; images that are not 64x64
//! are an error.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::{
    count_labels, dataset_from_u8, holdout_indices, read_file, read_optional_text, resolve_subdir, split_counts, CompactDataset, DataError,
    DatasetKind, Split,
};

const SIDE: u32 = 64;
const IMAGE_BYTES: usize = 3 * (SIDE as usize) * (SIDE as usize);

fn read_text(path: &Path, expected: &str) -> Result<String, DataError> {
    let bytes = read_file(path, expected)?;
    String::from_utf8(bytes).map_err(|_| DataError::format(path, "not valid UTF-8 text"))
}

fn read_wnids(dir: &Path) -> Result<Vec<String>, DataError> {
    let path = dir.join("wnids.txt");
    let text = read_text(&path, "the list of class ids (one WordNet id a line)")?;
    let wnids: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect();
    if wnids.is_empty() {
        return Err(DataError::format(&path, "no class ids"));
    }
    let mut seen = HashMap::new();
    for (i, w) in wnids.iter().enumerate() {
        if let Some(prev) = seen.insert(w.as_str(), i) {
            return Err(DataError::format(&path, format!("class id {w} appears on lines {} and {}", prev + 1, i + 1)));
        }
    }
    Ok(wnids)
}

fn class_names(dir: &Path, wnids: &[String]) -> Result<Vec<String>, DataError> {
    let path = dir.join("words.txt");
    let Some(text) = read_optional_text(&path)? else {
        return Ok(wnids.to_vec());
    };
    let mut words: HashMap<&str, &str> = HashMap::new();
    for line in text.lines() {
        if let Some((id, names)) = line.split_once('\t') {
            let first = names.split(',').next().unwrap_or("").trim();
            if !first.is_empty() {
                words.insert(id.trim(), first);
            }
        }
    }
    Ok(wnids.iter().map(|w| words.get(w.as_str()).map_or_else(|| w.clone(), |s| s.to_string())).collect())
}

fn is_image_file(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .map(|e| {
            let e = e.to_ascii_lowercase();
            e == "jpeg" || e == "jpg" || e == "png"
        })
        .unwrap_or(false)
}

/// Image files of one training class, sorted by file name.
fn list_class_images(dir: &Path, wnid: &str) -> Result<Vec<PathBuf>, DataError> {
    let images_dir = dir.join("train").join(wnid).join("images");
    let entries = std::fs::read_dir(&images_dir).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            DataError::MissingFile { path: images_dir.clone(), expected: format!("a directory with the training images of class {wnid}") }
        } else {
            DataError::Io { path: images_dir.clone(), source: e }
        }
    })?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| DataError::Io { path: images_dir.clone(), source: e })?;
        let p = entry.path();
        if p.is_file() && is_image_file(&p) {
            files.push(p);
        }
    }
    files.sort();
    Ok(files)
}

/// Decode one image into `out` (`[3, 64, 64]` bytes).
fn decode_into(path: &Path, out: &mut [u8]) -> Result<(), DataError> {
    let bytes = read_file(path, "a 64x64 image")?;
    let img = image::load_from_memory(&bytes).map_err(|e| DataError::Image { path: path.to_path_buf(), source: e })?;
    let rgb = img.to_rgb8();
    if rgb.width() != SIDE || rgb.height() != SIDE {
        return Err(DataError::format(path, format!("image is {}x{}, expected {SIDE}x{SIDE}", rgb.width(), rgb.height())));
    }
    let plane = (SIDE * SIDE) as usize;
    for (i, px) in rgb.pixels().enumerate() {
        out[i] = px[0];
        out[plane + i] = px[1];
        out[2 * plane + i] = px[2];
    }
    Ok(())
}

/// Decode all `paths` into one `[N, 3, 64, 64]` byte buffer, on all cores.
fn decode_all(paths: &[PathBuf]) -> Result<Vec<u8>, DataError> {
    let mut pixels = vec![0u8; paths.len() * IMAGE_BYTES];
    if paths.is_empty() {
        return Ok(pixels);
    }
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(paths.len());
    let per_thread = paths.len().div_ceil(threads);
    let results: Vec<Result<(), DataError>> = std::thread::scope(|s| {
        let handles: Vec<_> = pixels
            .chunks_mut(per_thread * IMAGE_BYTES)
            .zip(paths.chunks(per_thread))
            .map(|(buf, ps)| {
                s.spawn(move || {
                    for (out, p) in buf.chunks_exact_mut(IMAGE_BYTES).zip(ps) {
                        decode_into(p, out)?;
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| match h.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            })
            .collect()
    });
    for r in results {
        r?;
    }
    Ok(pixels)
}

/// The validation folder: `(paths, labels)` in annotation-file order.
fn val_files(dir: &Path, wnids: &[String]) -> Result<(Vec<PathBuf>, Vec<i64>), DataError> {
    let ann_path = dir.join("val").join("val_annotations.txt");
    let text = read_text(&ann_path, "the labels of the val images (file name, wnid and 4 box coordinates, tab separated)")?;
    let index: HashMap<&str, i64> = wnids.iter().enumerate().map(|(i, w)| (w.as_str(), i as i64)).collect();
    let images_dir = dir.join("val").join("images");
    let mut paths = Vec::new();
    let mut labels = Vec::new();
    for (lineno, line) in text.lines().enumerate() {
        let mut fields = line.split_whitespace();
        let Some(file) = fields.next() else {
            continue;
        };
        let Some(wnid) = fields.next() else {
            return Err(DataError::format(&ann_path, format!("line {}: expected `file \\t wnid ...`, found {line:?}", lineno + 1)));
        };
        let Some(&label) = index.get(wnid) else {
            return Err(DataError::format(&ann_path, format!("line {}: class id {wnid} is not in wnids.txt", lineno + 1)));
        };
        if file.contains('/') || file.contains('\\') {
            return Err(DataError::format(&ann_path, format!("line {}: file name {file:?} must not contain a path", lineno + 1)));
        }
        paths.push(images_dir.join(file));
        labels.push(label);
    }
    Ok((paths, labels))
}

/// Examples per class of a split, from `wnids.txt`, the training folders' listings and the
/// validation annotations (no image is decoded).
pub(crate) fn tiny_imagenet_class_counts(dir: &Path, split: Split) -> Result<Vec<i64>, DataError> {
    let dir = resolve_subdir(dir, "tiny-imagenet-200");
    let wnids = read_wnids(&dir)?;
    match split {
        Split::Test => {
            let (_, labels) = val_files(&dir, &wnids)?;
            Ok(count_labels(&labels, wnids.len()))
        }
        Split::Train | Split::Validation => {
            let mut full = Vec::with_capacity(wnids.len());
            for w in &wnids {
                full.push(list_class_images(&dir, w)?.len() as i64);
            }
            Ok(split_counts(full, split))
        }
    }
}

/// Load Tiny-ImageNet from `dir` or `dir/tiny-imagenet-200`.
pub(crate) fn load_tiny_imagenet(dir: &Path, split: Split) -> Result<CompactDataset, DataError> {
    let dir = resolve_subdir(dir, "tiny-imagenet-200");
    let wnids = read_wnids(&dir)?;
    let names = class_names(&dir, &wnids)?;
    let (paths, labels) = match split {
        Split::Test => val_files(&dir, &wnids)?,
        Split::Train | Split::Validation => {
            let mut paths = Vec::new();
            let mut labels = Vec::new();
            for (c, w) in wnids.iter().enumerate() {
                let files = list_class_images(&dir, w)?;
                labels.resize(labels.len() + files.len(), c as i64);
                paths.extend(files);
            }
            let (train, val) = holdout_indices(&labels, wnids.len() as i64);
            let keep = if split == Split::Train { train } else { val };
            let paths = keep.iter().map(|&i| paths[i as usize].clone()).collect();
            let labels = keep.iter().map(|&i| labels[i as usize]).collect();
            (paths, labels)
        }
    };
    let pixels = decode_all(&paths)?;
    Ok(dataset_from_u8(pixels, [3, SIDE as i64, SIDE as i64], &labels, names, DatasetKind::TinyImageNet.name(), split))
}
