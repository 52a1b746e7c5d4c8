//! The zip format of `torch.save` (PyTorch >= 1.6): `<name>/data.pkl`, whose persistent ids
//! name storages, and one raw little-endian entry `<name>/data/<key>` per storage.
//!
//! The archive is read as hostile: its central directory is walked once by hand, because the
//! zip crate silently keeps one of several entries of the same name, and such an archive is
//! refused; exactly one `data.pkl` is accepted; every entry's declared size is checked
//! against the limits (and a storage's against its exact size) before it is inflated, and it
//! is read through a reader that stops one byte past the declared size, so a header that
//! lies cannot make it inflate further.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use tch::Tensor;

use super::collect::named_tensors;
use super::error::{malformed, ReadError};
use super::limits::{Budget, Limit, LimitExceeded, TorchFileLimits};
use super::machine::Machine;
use super::storage::{storage_tensor, PersistentIds};

const END_OF_DIRECTORY: [u8; 4] = *b"PK\x05\x06";
const ZIP64_LOCATOR: [u8; 4] = *b"PK\x06\x07";
const ZIP64_END_OF_DIRECTORY: [u8; 4] = *b"PK\x06\x06";
const DIRECTORY_HEADER: [u8; 4] = *b"PK\x01\x02";

fn read_at(file: &mut File, offset: u64, len: u64) -> Result<Vec<u8>, ReadError> {
    let mut bytes = Vec::new();
    file.seek(SeekFrom::Start(offset))
        .and_then(|_| file.by_ref().take(len).read_to_end(&mut bytes))
        .map_err(|e| malformed!("cannot read the zip archive: {e}"))?;
    if (bytes.len() as u64) < len {
        return Err("the zip archive ends early".into());
    }
    Ok(bytes)
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?).into())
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?).into())
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

/// The raw names of the central directory's entries, duplicates refused.
pub(super) fn entry_names(file: &mut File, file_len: u64, limits: &TorchFileLimits) -> Result<Vec<Vec<u8>>, ReadError> {
    let not_zip = || ReadError::from("not a zip archive (no end of central directory)");
    // The end record (22 bytes) is followed by a comment of at most 65535 bytes.
    let tail_len = file_len.min(22 + 65_535);
    let tail_start = file_len - tail_len;
    let tail = read_at(file, tail_start, tail_len)?;
    let at = (0..tail.len().saturating_sub(21))
        .rev()
        .find(|&i| tail[i..i + 4] == END_OF_DIRECTORY && u16_at(&tail, i + 20) == Some((tail.len() - i - 22) as u64))
        .ok_or_else(not_zip)?;
    let end_record = tail_start + at as u64;
    let (mut entries, mut directory_len) = (u16_at(&tail, at + 10).ok_or_else(not_zip)?, u32_at(&tail, at + 12).ok_or_else(not_zip)?);
    let mut directory_end = end_record;
    // A zip64 end record, which PyTorch always writes, ends the directory instead; a locator
    // just before the end record gives where it is.
    let locator = match end_record.checked_sub(20) {
        Some(at) => Some(read_at(file, at, 20)?).filter(|l| l[..4] == ZIP64_LOCATOR),
        None => None,
    };
    let zip64_needed = entries == 0xffff || directory_len == 0xffff_ffff || u32_at(&tail, at + 16) == Some(0xffff_ffff);
    if let Some(locator) = locator {
        let record_at = u64_at(&locator, 8).ok_or("short zip64 locator")?;
        let record = read_at(file, record_at, 56.min(file_len.saturating_sub(record_at)))?;
        if record.get(..4) != Some(&ZIP64_END_OF_DIRECTORY[..]) {
            return Err("a zip64 archive without its end record".into());
        }
        entries = u64_at(&record, 32).ok_or("short zip64 end record")?;
        directory_len = u64_at(&record, 40).ok_or("short zip64 end record")?;
        directory_end = record_at;
    } else if zip64_needed {
        return Err("a zip64 archive without its locator".into());
    }
    if entries > limits.max_zip_entries {
        return Err(LimitExceeded::new(Limit::ZipEntries, limits.max_zip_entries, Some(entries)).into());
    }
    // A directory header is at least 46 bytes, and the directory lies inside the file.
    let directory_start = directory_end.checked_sub(directory_len).ok_or("the zip directory lies outside the file")?;
    if directory_len > entries.saturating_mul(46 + 3 * 65_535) {
        return Err("the zip directory is longer than its entries can be".into());
    }
    let directory = read_at(file, directory_start, directory_len)?;
    let mut names = Vec::new();
    let mut seen = HashSet::new();
    let mut at = 0usize;
    for _ in 0..entries {
        let header = directory.get(at..at + 46).filter(|h| h[..4] == DIRECTORY_HEADER);
        let header = header.ok_or("a zip directory entry is cut short or misplaced")?;
        let (name_len, extra_len, comment_len) = (u16_at(header, 28), u16_at(header, 30), u16_at(header, 32));
        let (Some(name_len), Some(extra_len), Some(comment_len)) = (name_len, extra_len, comment_len) else {
            return Err("a zip directory entry is cut short".into());
        };
        let name = directory.get(at + 46..at + 46 + name_len as usize).ok_or("a zip entry's name is cut short")?;
        if !seen.insert(name) {
            return Err(malformed!(
                "the zip archive has two entries named {:?}: refused, as which one is read would depend on the reader",
                String::from_utf8_lossy(name)
            ));
        }
        names.push(name.to_vec());
        at += 46 + (name_len + extra_len + comment_len) as usize;
    }
    Ok(names)
}

/// Reads entry `name` whole: its declared size must be `exactly` (when given) and at most
/// `maximum`, checked before inflating, and inflating stops one byte past it.
fn read_entry(
    archive: &mut zip::ZipArchive<File>,
    name: &str,
    exactly: Option<u64>,
    maximum: u64,
    limit: Limit,
) -> Result<Vec<u8>, ReadError> {
    let entry = archive.by_name(name).map_err(|e| malformed!("cannot read {name}: {e}"))?;
    let declared = entry.size();
    if let Some(expected) = exactly {
        if declared != expected {
            return Err(malformed!("{name} holds {declared} bytes, but its storage needs exactly {expected}"));
        }
    }
    if declared > maximum {
        return Err(LimitExceeded::new(limit, maximum, Some(declared)).into());
    }
    let mut bytes = Vec::with_capacity(declared as usize);
    entry.take(declared + 1).read_to_end(&mut bytes).map_err(|e| malformed!("cannot read {name}: {e}"))?;
    if bytes.len() as u64 > declared {
        return Err(malformed!("{name} inflates to more than the {declared} bytes its header declares"));
    }
    if (bytes.len() as u64) < declared {
        return Err(malformed!("{name} inflates to {} bytes, not the {declared} its header declares", bytes.len()));
    }
    Ok(bytes)
}

pub(super) fn read(path: &Path, file_len: u64, limits: &TorchFileLimits) -> Result<Vec<(String, Tensor)>, ReadError> {
    let mut file = File::open(path).map_err(|e| malformed!("cannot open: {e}"))?;
    let raw_names = entry_names(&mut file, file_len, limits)?;
    let mut archive =
        zip::ZipArchive::new(file).map_err(|e| malformed!("not a PyTorch zip checkpoint (torch.save of PyTorch >= 1.6 expected): {e}"))?;
    if archive.len() != raw_names.len() {
        return Err(malformed!("the zip archive's directory lists {} entries but {} distinct names", raw_names.len(), archive.len()));
    }
    let names: Vec<String> = archive.file_names().map(str::to_string).collect();
    if names.iter().any(|name| name.ends_with("constants.pkl") || name.contains("/code/")) {
        return Err("this is a TorchScript module (torch.jit.save), not a state dict".into());
    }
    let pickles: Vec<&String> = names.iter().filter(|name| name.rsplit('/').next() == Some("data.pkl")).collect();
    let pickle_name = match pickles.as_slice() {
        [one] => (*one).clone(),
        [] => return Err("the archive has no data.pkl: not a torch.save file".into()),
        several => {
            let list: Vec<&str> = several.iter().take(4).map(|s| s.as_str()).collect();
            return Err(malformed!(
                "the archive has {} data.pkl entries ({}): refused, as a torch.save file has one",
                several.len(),
                list.join(", ")
            ));
        }
    };
    let prefix = pickle_name.trim_end_matches("data.pkl").to_string();
    let byteorder = format!("{prefix}byteorder");
    if names.contains(&byteorder) {
        let order = read_entry(&mut archive, &byteorder, None, 16, Limit::PickleBytes)?;
        if order != b"little" {
            return Err(malformed!(
                "the storages are stored {:?}-endian; only little-endian files are read (save it on a little-endian machine)",
                String::from_utf8_lossy(&order)
            ));
        }
    }
    let pickle = read_entry(&mut archive, &pickle_name, None, limits.max_pickle_bytes, Limit::PickleBytes)?;
    let object = Machine::new(&pickle, false, limits, PersistentIds::Zip).run()?;
    let found = named_tensors(&object.root, limits)?;

    let mut budget = Budget::new(limits, file_len);
    let mut storages: HashMap<&str, Tensor> = HashMap::new();
    for (_, tensor) in &found {
        let key = &*tensor.storage.key;
        if storages.contains_key(key) {
            continue;
        }
        let kind = tensor.storage.kind;
        let bytes = tensor.storage.bytes();
        budget.storage(bytes)?;
        let entry = format!("{prefix}data/{key}");
        let data = read_entry(&mut archive, &entry, Some(bytes), limits.max_tensor_bytes, Limit::TensorBytes)?;
        storages.insert(key, storage_tensor(key, kind, &data)?);
    }
    super::assemble(&found, &storages, &mut budget)
}
