//! The legacy format of `torch.save`: what PyTorch wrote before 1.6, and still writes with
//! `_use_new_zipfile_serialization=False` (fra31's AutoAttack ResNet-18 and many robust
//! checkpoints of 2019-2020 are such files).
//!
//! The file is a sequence of pickles and then raw data: PyTorch's magic number (the integer
//! 0x1950a86a20f9469cfc6c), the protocol version 1001, a `sys_info` dict (which `torch.load`
//! ignores, as we do: storages are little-endian in the file whatever it says), the object,
//! whose persistent ids are `('storage', type, root_key, location, numel, view)`, the list of
//! storage keys, and then for each key in that order an 8-byte little-endian element count
//! followed by the storage's raw little-endian bytes.
//!
//! The pickles carry no lengths, so each is run on a window of the file cut at its limit.
//! Every key must be listed once and be used by a persistent id, every storage the object
//! uses must be listed (else `torch.load` would hand out uninitialised memory), and every
//! count must equal the element count its persistent ids declare, which the limits and the
//! bytes left in the file bound before anything is allocated; nothing may follow the last
//! storage.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use tch::Tensor;

use super::collect::named_tensors;
use super::error::{malformed, ReadError};
use super::limits::{Budget, TorchFileLimits};
use super::machine::Machine;
use super::storage::{check_key, element_size, storage_tensor, PersistentIds};
use super::value::Value;

/// 0x1950a86a20f9469cfc6c, little-endian: the first pickle of every legacy file.
const MAGIC_NUMBER: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
const PROTOCOL_VERSION: i64 = 1001;
/// The magic number, protocol version and sys_info pickles are tens of bytes each.
const SMALL_PICKLE_BYTES: u64 = 64 * 1024;

fn read_at(file: &mut File, offset: u64, len: u64) -> Result<Vec<u8>, ReadError> {
    let mut bytes = Vec::new();
    file.seek(SeekFrom::Start(offset))
        .and_then(|_| file.by_ref().take(len).read_to_end(&mut bytes))
        .map_err(|e| malformed!("cannot read: {e}"))?;
    if (bytes.len() as u64) < len {
        return Err("the file ends early".into());
    }
    Ok(bytes)
}

fn small_limits(limits: &TorchFileLimits) -> TorchFileLimits {
    TorchFileLimits { max_pickle_bytes: SMALL_PICKLE_BYTES.min(limits.max_pickle_bytes), ..limits.clone() }
}

/// Whether `head` (the first bytes of a file) starts with the pickle of PyTorch's magic number.
pub(super) fn starts_with_magic(head: &[u8]) -> bool {
    let limits = small_limits(&TorchFileLimits::DEFAULT);
    let machine = Machine::on_prefix(head, &limits, PersistentIds::Refused);
    matches!(machine.run(), Ok(done) if matches!(&done.root, Value::BigInt(b) if **b == MAGIC_NUMBER))
}

pub(super) fn read(path: &Path, file_len: u64, limits: &TorchFileLimits) -> Result<Vec<(String, Tensor)>, ReadError> {
    let mut file = File::open(path).map_err(|e| malformed!("cannot open: {e}"))?;
    let small = small_limits(limits);
    let head = read_at(&mut file, 0, file_len.min((3 * SMALL_PICKLE_BYTES).saturating_add(limits.max_pickle_bytes).saturating_add(1)))?;
    let mut pos = 0usize;
    let mut next_small = |what: &str| -> Result<Value, ReadError> {
        let done = Machine::on_prefix(&head[pos..], &small, PersistentIds::Refused)
            .run()
            .map_err(|e| malformed!("not a legacy torch.save file: its {what} does not read: {e}"))?;
        pos += done.len;
        Ok(done.root.clone())
    };
    match next_small("magic number")? {
        Value::BigInt(b) if *b == MAGIC_NUMBER => {}
        _ => return Err("not a torch.save file: the first pickle is not PyTorch's magic number".into()),
    }
    match next_small("protocol version")? {
        Value::Int(PROTOCOL_VERSION) => {}
        Value::Int(other) => return Err(malformed!("legacy torch.save protocol {other}, where 1001 was expected")),
        other => return Err(malformed!("legacy torch.save protocol is a {}", other.type_name())),
    }
    next_small("sys_info")?;

    let object = Machine::on_prefix(&head[pos..], limits, PersistentIds::Legacy).run()?;
    let keys_at = (pos + object.len) as u64;
    let window = file_len.saturating_sub(keys_at).min(limits.max_pickle_bytes.saturating_add(1));
    let keys_bytes = read_at(&mut file, keys_at, window)?;
    let keys = Machine::on_prefix(&keys_bytes, limits, PersistentIds::Refused).run()?;
    let Value::List(list) = &keys.root else {
        return Err(malformed!("the storage key list is a {}", keys.root.type_name()));
    };
    let mut listed = Vec::new();
    let mut seen = HashSet::new();
    for key in list.items.borrow().iter() {
        let Value::Str(key) = key else {
            return Err(malformed!("a storage key is a {}", key.type_name()));
        };
        check_key(key)?;
        let (kind, numel) =
            object.storages.declared(key).ok_or_else(|| malformed!("the storage key list names {key}, which no tensor uses"))?;
        if !seen.insert(key.clone()) {
            return Err(malformed!("the storage key list names {key} twice"));
        }
        listed.push((key.clone(), kind, numel));
    }
    if let Some(missing) = object.storages.order.iter().find(|key| !seen.contains(*key)) {
        return Err(malformed!("storage {missing} is used but its data is not in the file"));
    }

    let found = named_tensors(&object.root, limits)?;
    let wanted: HashSet<&str> = found.iter().map(|(_, t)| &*t.storage.key).collect();
    let mut budget = Budget::new(limits, file_len);
    let mut storages: HashMap<&str, Tensor> = HashMap::new();
    let mut at = keys_at + keys.len as u64;
    for (key, kind, numel) in &listed {
        let count = read_at(&mut file, at, 8).map_err(|_| malformed!("the file ends before storage {key}"))?;
        let count = count.try_into().map(i64::from_le_bytes).map_err(|_| "short storage header")?;
        if u64::try_from(count).ok() != Some(*numel) {
            return Err(malformed!("storage {key} holds {count} elements in the file, but its tensors declare {numel}"));
        }
        // Checked against the limits when the persistent id was read.
        let bytes = numel.saturating_mul(element_size(*kind));
        let start = at + 8;
        at = start
            .checked_add(bytes)
            .filter(|&end| end <= file_len)
            .ok_or_else(|| malformed!("storage {key} of {bytes} bytes runs past the end of the file"))?;
        if let Some(&key) = wanted.get(&**key) {
            budget.storage(bytes)?;
            let data = read_at(&mut file, start, bytes)?;
            storages.insert(key, storage_tensor(key, *kind, &data)?);
        }
    }
    if at != file_len {
        return Err(malformed!("{} bytes follow the last storage", file_len - at));
    }
    super::assemble(&found, &storages, &mut budget)
}
