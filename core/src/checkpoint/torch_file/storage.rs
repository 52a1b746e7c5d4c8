//! Storages, named by the pickle's persistent ids, and the tensors that view them.
//!
//! Every size is checked here with overflow-checked arithmetic, against the storage it views
//! and against [`TorchFileLimits`], before anything is allocated for it: a stride-0 view of
//! one element as a 10^6 x 10^6 tensor, or a storage of 2^62 elements, is refused while it is
//! still a few numbers in the pickle.

use std::collections::HashMap;
use std::rc::Rc;

use tch::{Kind, Tensor};

use super::error::{malformed, ReadError};
use super::limits::{Limit, LimitExceeded, TorchFileLimits};
use super::value::Value;

/// The element type of a storage class (`torch.FloatStorage`).
pub(super) fn storage_kind(name: &str) -> Option<Kind> {
    Some(match name {
        "FloatStorage" => Kind::Float,
        "DoubleStorage" => Kind::Double,
        "HalfStorage" => Kind::Half,
        "BFloat16Storage" => Kind::BFloat16,
        "LongStorage" => Kind::Int64,
        "IntStorage" => Kind::Int,
        "ShortStorage" => Kind::Int16,
        "CharStorage" => Kind::Int8,
        "ByteStorage" => Kind::Uint8,
        "BoolStorage" => Kind::Bool,
        _ => return None,
    })
}

/// How the file names its storages in persistent ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PersistentIds {
    /// `('storage', type, key, location, numel)` (the zip format).
    Zip,
    /// `('storage', type, root_key, location, numel, view)` (the legacy format), `view` being
    /// `None` or `(view_key, offset, size)` for the storage views of early PyTorch.
    Legacy,
    /// A pickle that must not have any (the legacy format's small pickles).
    Refused,
}

/// A storage as a tensor sees it: `len` elements from `start` of the storage `key` of
/// `numel` elements (the whole storage, except for a legacy storage view).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct StorageRef {
    pub key: Rc<str>,
    pub kind: Kind,
    pub numel: u64,
    pub start: u64,
    pub len: u64,
}

impl StorageRef {
    /// Bytes of the whole storage (checked when the reference was made).
    pub fn bytes(&self) -> u64 {
        self.numel.saturating_mul(element_size(self.kind))
    }
}

/// A tensor as a strided view of a storage, checked to lie inside it.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct TensorRef {
    pub storage: Rc<StorageRef>,
    /// Offset in elements from the start of the whole storage.
    pub offset: u64,
    pub size: Vec<i64>,
    pub stride: Vec<i64>,
    /// Bytes of the tensor once made contiguous.
    pub bytes: u64,
}

pub(super) fn element_size(kind: Kind) -> u64 {
    kind.elt_size_in_bytes() as u64
}

/// Storage keys are file names in the zip format and numbers in the legacy one; anything else
/// (`../x`, a megabyte of text) is refused.
pub(super) fn check_key(key: &str) -> Result<(), ReadError> {
    let plain = !key.is_empty() && key.len() <= 64 && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if plain {
        Ok(())
    } else {
        Err(malformed!("storage key {:?} is not a plain name", truncated(key)))
    }
}

fn truncated(text: &str) -> String {
    text.chars().take(40).collect()
}

fn non_negative(value: i64, what: &str) -> Result<u64, ReadError> {
    u64::try_from(value).map_err(|_| malformed!("{what} is negative ({value})"))
}

/// The storages the persistent ids of one file declared, which must agree with each other.
#[derive(Debug, Default)]
pub(super) struct Storages {
    roots: HashMap<Rc<str>, (Kind, u64)>,
    /// Root keys in the order they were first named.
    pub order: Vec<Rc<str>>,
    views: HashMap<Rc<str>, Rc<StorageRef>>,
}

impl Storages {
    /// The kind and element count declared for the storage `key`.
    pub fn declared(&self, key: &str) -> Option<(Kind, u64)> {
        self.roots.get(key).copied()
    }

    /// Interprets a persistent id (the machine's BINPERSID).
    pub fn load(&mut self, pid: &Value, ids: PersistentIds, limits: &TorchFileLimits) -> Result<Rc<StorageRef>, ReadError> {
        let arity = match ids {
            PersistentIds::Zip => 5,
            PersistentIds::Legacy => 6,
            PersistentIds::Refused => return Err("a persistent id where no storage may be".into()),
        };
        let items = pid.tuple_up_to(arity).ok_or_else(|| {
            malformed!("unrecognised persistent id (a {} that is not a {arity}-tuple naming a tensor storage)", pid.type_name())
        })?;
        let (kind, key, numel) = match items.as_slice() {
            [Value::Str(tag), Value::Global(class), Value::Str(key), _location, Value::Int(numel), ..]
                if &**tag == "storage" && items.len() == arity =>
            {
                let kind =
                    storage_kind(&class.name).ok_or_else(|| malformed!("unsupported storage type {}.{}", class.module, class.name))?;
                (kind, key.clone(), *numel)
            }
            _ => return Err(format!("unrecognised persistent id (not a {arity}-tuple naming a tensor storage)").into()),
        };
        check_key(&key)?;
        let numel = non_negative(numel, "a storage's element count")?;
        let bytes = numel.checked_mul(element_size(kind));
        if bytes.is_none_or(|b| b > limits.max_tensor_bytes) {
            return Err(LimitExceeded::new(Limit::TensorBytes, limits.max_tensor_bytes, bytes).into());
        }
        match self.roots.get(&key) {
            Some(&(known_kind, known_numel)) if (known_kind, known_numel) != (kind, numel) => {
                return Err(malformed!("storage {key} is declared as {numel} elements of {kind:?} and as {known_numel} of {known_kind:?}"))
            }
            Some(_) => {}
            None => {
                self.roots.insert(key.clone(), (kind, numel));
                self.order.push(key.clone());
            }
        }
        let whole = StorageRef { key: key.clone(), kind, numel, start: 0, len: numel };
        let view = match items.get(5) {
            None | Some(Value::None) => return Ok(Rc::new(whole)),
            Some(view) => view,
        };
        let (view_key, start, len) = match view.tuple_up_to(3).as_deref() {
            Some([Value::Str(view_key), Value::Int(start), Value::Int(len)]) => (view_key.clone(), *start, *len),
            _ => return Err("a storage view is not (key, offset, size)".into()),
        };
        check_key(&view_key)?;
        let start = non_negative(start, "a storage view's offset")?;
        let len = non_negative(len, "a storage view's size")?;
        if start.checked_add(len).is_none_or(|end| end > numel) {
            return Err(malformed!("storage view {view_key} ({len} elements from {start}) lies outside storage {key} of {numel}"));
        }
        let storage = Rc::new(StorageRef { start, len, ..whole });
        match self.views.get(&view_key) {
            Some(known) if **known != *storage => Err(malformed!("storage view {view_key} is declared twice, differently")),
            Some(known) => Ok(known.clone()),
            None => {
                self.views.insert(view_key, storage.clone());
                Ok(storage)
            }
        }
    }
}

/// Checks `size`, `stride` and `offset` (in elements of the storage as the tensor sees it)
/// against the storage and the limits: the tensor's every element lies inside the storage.
pub(super) fn tensor_ref(
    storage: Rc<StorageRef>,
    offset: i64,
    size: Vec<i64>,
    stride: Vec<i64>,
    limits: &TorchFileLimits,
) -> Result<TensorRef, ReadError> {
    if size.len() as u64 > limits.max_dimensions {
        return Err(LimitExceeded::new(Limit::Dimensions, limits.max_dimensions, Some(size.len() as u64)).into());
    }
    if size.len() != stride.len() {
        return Err(malformed!("a tensor has {} sizes but {} strides", size.len(), stride.len()));
    }
    let offset = non_negative(offset, "a tensor's storage offset")?;
    let mut numel: u64 = 1;
    let mut last: u64 = 0;
    for (&n, &s) in size.iter().zip(&stride) {
        let n = non_negative(n, "a tensor's size")?;
        let s = non_negative(s, "a tensor's stride")?;
        numel = numel.saturating_mul(n);
        last = n.saturating_sub(1).checked_mul(s).and_then(|step| last.checked_add(step)).unwrap_or(u64::MAX);
    }
    let bytes = numel.checked_mul(element_size(storage.kind)).filter(|&b| b <= limits.max_tensor_bytes);
    let bytes = bytes
        .ok_or_else(|| LimitExceeded::new(Limit::TensorBytes, limits.max_tensor_bytes, numel.checked_mul(element_size(storage.kind))))?;
    // The first element past the tensor's last one; an empty tensor only needs its offset.
    let end = if numel == 0 { Some(offset) } else { offset.checked_add(last).and_then(|e| e.checked_add(1)) };
    if end.is_none_or(|end| end > storage.len) {
        return Err(malformed!(
            "a tensor of size {size:?} and stride {stride:?} from offset {offset} reaches past the end of storage {} ({} elements)",
            storage.key,
            storage.len
        ));
    }
    let offset = storage.start.checked_add(offset).ok_or("a tensor's storage offset overflows")?;
    Ok(TensorRef { storage, offset, size, stride, bytes })
}

/// The tensor of a whole storage from its raw little-endian bytes.
pub(super) fn storage_tensor(key: &str, kind: Kind, bytes: &[u8]) -> Result<Tensor, ReadError> {
    if kind == Kind::Bool && bytes.iter().any(|&b| b > 1) {
        return Err(malformed!("storage {key} of booleans holds a byte other than 0 and 1"));
    }
    let numel = (bytes.len() as u64 / element_size(kind)) as i64;
    Tensor::f_from_data_size(bytes, &[numel], kind).map_err(|e| malformed!("storage {key}: {e}"))
}

/// The contiguous tensor `tensor` describes, made from its storage's tensor.
pub(super) fn make_tensor(storage: &Tensor, tensor: &TensorRef, name: &str) -> Result<Tensor, ReadError> {
    let offset = i64::try_from(tensor.offset).map_err(|_| malformed!("tensor '{name}': offset too large"))?;
    storage
        .f_as_strided(tensor.size.as_slice(), tensor.stride.as_slice(), offset)
        .and_then(|view| view.f_contiguous())
        .map_err(|e| malformed!("tensor '{name}': {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storage(numel: u64) -> Rc<StorageRef> {
        Rc::new(StorageRef { key: "0".into(), kind: Kind::Float, numel, start: 0, len: numel })
    }

    fn check(numel: u64, offset: i64, size: &[i64], stride: &[i64]) -> Result<TensorRef, ReadError> {
        tensor_ref(storage(numel), offset, size.to_vec(), stride.to_vec(), &TorchFileLimits::DEFAULT)
    }

    #[test]
    fn views_inside_their_storage_pass() {
        assert_eq!(check(6, 0, &[2, 3], &[3, 1]).unwrap().bytes, 24);
        assert!(check(6, 1, &[2], &[3]).is_ok());
        assert!(check(6, 5, &[], &[]).is_ok(), "a scalar at the last element");
        assert!(check(6, 6, &[0, 4], &[4, 1]).is_ok(), "an empty tensor at the end");
        assert!(check(1, 0, &[3, 2], &[0, 0]).is_ok(), "an expanded scalar of 6 elements");
    }

    #[test]
    fn views_outside_their_storage_or_the_limits_are_refused() {
        assert!(check(6, 0, &[2, 4], &[4, 1]).is_err(), "one past the end");
        assert!(check(6, 6, &[], &[]).is_err(), "a scalar past the end");
        assert!(check(6, 7, &[0], &[1]).is_err(), "an empty tensor past the end");
        assert!(check(6, -1, &[1], &[1]).is_err(), "negative offset");
        assert!(check(6, 0, &[2], &[-1]).is_err(), "negative stride");
        assert!(check(6, 0, &[-2], &[1]).is_err(), "negative size");
        assert!(check(6, 0, &[2], &[1, 1]).is_err(), "sizes and strides disagree");
        assert!(check(6, 0, &[i64::MAX, i64::MAX], &[i64::MAX, 1]).is_err(), "overflowing extent");
        let huge = check(1, 0, &[1_000_000, 1_000_000], &[0, 0]).unwrap_err();
        assert!(matches!(huge, ReadError::OverLimit(LimitExceeded { limit: Limit::TensorBytes, .. })), "{huge:?}");
        let many = check(1, 0, &[1; 65], &[0; 65]).unwrap_err();
        assert!(matches!(many, ReadError::OverLimit(LimitExceeded { limit: Limit::Dimensions, .. })), "{many:?}");
    }

    #[test]
    fn storage_keys_are_plain_names() {
        assert!(check_key("0").is_ok() && check_key("94663277406400").is_ok());
        for bad in ["", "../0", "a/b", "x.y", &"7".repeat(65)] {
            assert!(check_key(bad).is_err(), "{bad}");
        }
    }
}
