//! Reader for PyTorch's `torch.save` zip format, enough to import `state_dict`s.
//!
//! A `.pt`/`.pth` file written by PyTorch >= 1.6 is a zip archive holding `<name>/data.pkl`
//! (a pickle whose tensors refer to storages by key through persistent ids) and one raw
//! little-endian file per storage under `<name>/data/<key>`. We run the small subset of the
//! pickle machine that state dicts use and build tensors from the storages; anything else in
//! the pickle (optimiser state, numbers, strings) is kept as plain values and ignored.
//! libtorch's C++ API cannot read these files, hence this module.
//!
//! Nothing in the file is ever executed: the machine only builds values. Beyond that, a pickle
//! that asks for any Python global other than the few a state dict needs (`OrderedDict`,
//! torch's tensor and storage rebuilders, the storage types, `_codecs.encode` for bytes, and
//! a handful of harmless builtins) is refused with [`ReadError::Refused`] naming the global,
//! before the reader goes on: a `torch.save(model)` of a whole module (`__main__.Net`,
//! `torch.nn.modules...`) or a crafted pickle (`posix.system`) never gets further than that.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use tch::{Kind, Tensor};

/// A value of the pickle machine. Scalars we never inspect are still modelled, so that the
/// machine keeps a faithful stack.
#[derive(Debug, Clone)]
#[allow(dead_code)]
pub(crate) enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Global { module: String, name: String },
    Storage { key: String, kind: Kind, numel: i64 },
    Tensor(TensorRef),
    /// Result of calling something we do not model; kept so the machine can go on.
    Opaque,
    Mark,
}

/// A tensor as a view of a storage.
#[derive(Debug, Clone)]
pub(crate) struct TensorRef {
    pub key: String,
    pub kind: Kind,
    pub storage_numel: i64,
    pub offset: i64,
    pub size: Vec<i64>,
    pub stride: Vec<i64>,
}

fn storage_kind(name: &str) -> Option<Kind> {
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

/// Why a `torch.save` file could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ReadError {
    /// The pickle asks for a Python global outside the allow-list (`module.name`).
    Refused(String),
    /// Anything else: not a zip, a malformed pickle, a storage of the wrong size, ...
    Malformed(String),
}

impl From<String> for ReadError {
    fn from(message: String) -> Self {
        ReadError::Malformed(message)
    }
}

impl From<&str> for ReadError {
    fn from(message: &str) -> Self {
        ReadError::Malformed(message.to_string())
    }
}

/// Whether a state dict may ask for the global `module.name`: containers, tensor and storage
/// rebuilders, storage types, and constructors of plain values. Everything else is refused.
pub(crate) fn allowed_global(module: &str, name: &str) -> bool {
    match module {
        "collections" => name == "OrderedDict",
        "torch._utils" => matches!(
            name,
            "_rebuild_tensor" | "_rebuild_tensor_v2" | "_rebuild_parameter" | "_rebuild_parameter_with_state"
        ),
        "torch" => storage_kind(name).is_some() || name == "Size",
        "_codecs" => name == "encode",
        "builtins" | "__builtin__" => {
            matches!(name, "dict" | "list" | "tuple" | "set" | "frozenset" | "bytearray" | "int" | "float" | "bool" | "str")
        }
        _ => false,
    }
}

/// Reads every tensor reachable from the pickled object, keyed by its dotted path in nested
/// dicts (`model.conv1.weight` for `{'model': {'conv1.weight': ...}}`).
pub(crate) fn read_tensors(path: &Path) -> Result<Vec<(String, Tensor)>, ReadError> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let mut archive = zip::ZipArchive::new(file).map_err(|e| {
        format!("not a PyTorch zip checkpoint (torch.save of PyTorch >= 1.6 expected): {e}")
    })?;
    if archive.file_names().any(|name| name.ends_with("constants.pkl") || name.contains("/code/")) {
        return Err(ReadError::Malformed(
            "this is a TorchScript module (torch.jit.save), not a state dict".into(),
        ));
    }
    let pickle_name = (0..archive.len())
        .filter_map(|i| archive.name_for_index(i).map(str::to_string))
        .find(|name| name.ends_with("data.pkl"))
        .ok_or("the archive has no data.pkl: not a torch.save file")?;
    let prefix = pickle_name.trim_end_matches("data.pkl").to_string();
    let mut pickle = Vec::new();
    archive
        .by_name(&pickle_name)
        .and_then(|mut entry| entry.read_to_end(&mut pickle).map_err(Into::into))
        .map_err(|e| format!("cannot read {pickle_name}: {e}"))?;
    let root = Machine::new(&pickle).run()?;

    let mut found = Vec::new();
    collect_tensors(&root, String::new(), &mut found);
    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    let mut tensors = Vec::with_capacity(found.len());
    for (name, tensor) in found {
        if !storages.contains_key(&tensor.key) {
            let entry_name = format!("{prefix}data/{}", tensor.key);
            let mut bytes = Vec::new();
            archive
                .by_name(&entry_name)
                .and_then(|mut entry| entry.read_to_end(&mut bytes).map_err(Into::into))
                .map_err(|e| format!("cannot read storage {entry_name}: {e}"))?;
            storages.insert(tensor.key.clone(), bytes);
        }
        let bytes = &storages[&tensor.key];
        let element_size = tensor.kind.elt_size_in_bytes() as i64;
        if bytes.len() as i64 != tensor.storage_numel * element_size {
            return Err(ReadError::Malformed(format!(
                "storage {} of '{name}' has {} bytes, expected {} elements of {element_size} bytes",
                tensor.key,
                bytes.len(),
                tensor.storage_numel
            )));
        }
        let needed = tensor.offset
            + tensor.size.iter().zip(&tensor.stride).map(|(n, s)| (n - 1).max(0) * s).sum::<i64>()
            + 1;
        if !tensor.size.contains(&0) && needed > tensor.storage_numel {
            return Err(ReadError::Malformed(format!("tensor '{name}' reaches past the end of its storage")));
        }
        let storage = Tensor::f_from_data_size(bytes, &[tensor.storage_numel], tensor.kind)
            .map_err(|e| format!("tensor '{name}': {e}"))?;
        let view = storage
            .f_as_strided(tensor.size.as_slice(), tensor.stride.as_slice(), tensor.offset)
            .and_then(|t| t.f_contiguous())
            .map_err(|e| format!("tensor '{name}': {e}"))?;
        tensors.push((name, view));
    }
    Ok(tensors)
}

fn collect_tensors(value: &Value, prefix: String, out: &mut Vec<(String, TensorRef)>) {
    match value {
        Value::Tensor(t) => out.push((prefix, t.clone())),
        Value::Dict(items) => {
            for (key, item) in items {
                let key = match key {
                    Value::Str(s) => s.clone(),
                    Value::Int(i) => i.to_string(),
                    _ => continue,
                };
                let name = if prefix.is_empty() { key } else { format!("{prefix}.{key}") };
                collect_tensors(item, name, out);
            }
        }
        _ => {}
    }
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    memo: HashMap<u32, Value>,
}

impl<'a> Machine<'a> {
    fn new(data: &'a [u8]) -> Self {
        Machine { data, pos: 0, stack: Vec::new(), memo: HashMap::new() }
    }

    /// Pushes a global after checking it against the allow-list.
    fn push_global(&mut self, module: String, name: String) -> Result<(), ReadError> {
        if !allowed_global(&module, &name) {
            return Err(ReadError::Refused(format!("{module}.{name}")));
        }
        self.stack.push(Value::Global { module, name });
        Ok(())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        let end = end.ok_or("pickle ends early")?;
        let bytes = &self.data[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn line(&mut self) -> Result<String, String> {
        let rest = &self.data[self.pos..];
        let end = rest.iter().position(|&b| b == b'\n').ok_or("pickle ends inside a line")?;
        let text = String::from_utf8_lossy(&rest[..end]).into_owned();
        self.pos += end + 1;
        Ok(text)
    }

    fn string(&mut self, n: usize) -> Result<Value, String> {
        let bytes = self.take(n)?;
        Ok(Value::Str(String::from_utf8_lossy(bytes).into_owned()))
    }

    fn pop(&mut self) -> Result<Value, String> {
        self.stack.pop().ok_or_else(|| "pickle stack underflow".to_string())
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>, String> {
        let mark = self
            .stack
            .iter()
            .rposition(|v| matches!(v, Value::Mark))
            .ok_or("pickle MARK missing")?;
        let items = self.stack.split_off(mark + 1);
        self.stack.pop();
        Ok(items)
    }

    fn top_mut(&mut self) -> Result<&mut Value, String> {
        self.stack.last_mut().ok_or_else(|| "pickle stack underflow".to_string())
    }

    fn memo_put(&mut self, index: u32) -> Result<(), String> {
        let top = self.stack.last().ok_or("pickle stack underflow")?.clone();
        self.memo.insert(index, top);
        Ok(())
    }

    fn memo_get(&mut self, index: u32) -> Result<(), String> {
        let value = self.memo.get(&index).cloned().ok_or("pickle memo key missing")?;
        self.stack.push(value);
        Ok(())
    }

    fn run(mut self) -> Result<Value, ReadError> {
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    self.u8()?; // PROTO
                }
                0x95 => {
                    self.take(8)?; // FRAME
                }
                b'.' => return Ok(self.pop()?),
                b'(' => self.stack.push(Value::Mark),
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'J' => {
                    let v = self.u32()? as i32;
                    self.stack.push(Value::Int(v as i64));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.stack.push(Value::Int(v as i64));
                }
                b'M' => {
                    let b = self.take(2)?;
                    self.stack.push(Value::Int(u16::from_le_bytes([b[0], b[1]]) as i64));
                }
                0x8a => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?;
                    if n > 8 {
                        return Err("pickle integer too large".into());
                    }
                    let mut buf = if b.last().is_some_and(|&x| x & 0x80 != 0) { [0xffu8; 8] } else { [0u8; 8] };
                    buf[..n].copy_from_slice(b);
                    self.stack.push(Value::Int(i64::from_le_bytes(buf)));
                }
                b'G' => {
                    let b = self.take(8)?;
                    let mut buf = [0u8; 8];
                    buf.copy_from_slice(b);
                    self.stack.push(Value::Float(f64::from_be_bytes(buf)));
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let v = self.string(n)?;
                    self.stack.push(v);
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let v = self.string(n)?;
                    self.stack.push(v);
                }
                b'B' => {
                    let n = self.u32()? as usize;
                    let v = self.take(n)?.to_vec();
                    self.stack.push(Value::Bytes(v));
                }
                b'C' => {
                    let n = self.u8()? as usize;
                    let v = self.take(n)?.to_vec();
                    self.stack.push(Value::Bytes(v));
                }
                b')' => self.stack.push(Value::Tuple(Vec::new())),
                b']' => self.stack.push(Value::List(Vec::new())),
                b'}' => self.stack.push(Value::Dict(Vec::new())),
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Tuple(items));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return Err("pickle stack underflow".into());
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.stack.push(Value::Tuple(items));
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::List(items));
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    let pairs = pairs(items)?;
                    self.stack.push(Value::Dict(pairs));
                }
                b'a' => {
                    let item = self.pop()?;
                    if let Value::List(list) = self.top_mut()? {
                        list.push(item);
                    }
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    if let Value::List(list) = self.top_mut()? {
                        list.extend(items);
                    }
                }
                b's' => {
                    let value = self.pop()?;
                    let key = self.pop()?;
                    if let Value::Dict(dict) = self.top_mut()? {
                        dict.push((key, value));
                    }
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let new_pairs = pairs(items)?;
                    if let Value::Dict(dict) = self.top_mut()? {
                        dict.extend(new_pairs);
                    }
                }
                b'q' => {
                    let i = self.u8()? as u32;
                    self.memo_put(i)?;
                }
                b'r' => {
                    let i = self.u32()?;
                    self.memo_put(i)?;
                }
                0x94 => {
                    let i = self.memo.len() as u32;
                    self.memo_put(i)?;
                }
                b'h' => {
                    let i = self.u8()? as u32;
                    self.memo_get(i)?;
                }
                b'j' => {
                    let i = self.u32()?;
                    self.memo_get(i)?;
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.push_global(module, name)?;
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(module), Value::Str(name)) => self.push_global(module, name)?,
                        _ => return Err("STACK_GLOBAL without names".into()),
                    }
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let storage = persistent_storage(pid)?;
                    self.stack.push(storage);
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let result = reduce(callable, args)?;
                    self.stack.push(result);
                }
                0x81 => {
                    self.pop()?; // NEWOBJ: args
                    self.pop()?; // class
                    self.stack.push(Value::Opaque);
                }
                b'b' => {
                    // BUILD sets state on an object; state dicts carry only `_metadata` there.
                    self.pop()?;
                }
                other => {
                    return Err(ReadError::Malformed(format!(
                        "unsupported pickle opcode 0x{other:02x} at byte {}",
                        self.pos - 1
                    )))
                }
            }
        }
    }
}

fn pairs(items: Vec<Value>) -> Result<Vec<(Value, Value)>, String> {
    if !items.len().is_multiple_of(2) {
        return Err("odd number of items in a pickled dict".into());
    }
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut iter = items.into_iter();
    while let (Some(k), Some(v)) = (iter.next(), iter.next()) {
        out.push((k, v));
    }
    Ok(out)
}

/// `('storage', torch.FloatStorage, key, location, numel)`: the persistent id of a storage.
fn persistent_storage(pid: Value) -> Result<Value, String> {
    let Value::Tuple(items) = pid else {
        return Err("persistent id is not a tuple".into());
    };
    match items.as_slice() {
        [Value::Str(tag), Value::Global { name, .. }, Value::Str(key), _location, Value::Int(numel)]
            if tag == "storage" =>
        {
            let kind = storage_kind(name).ok_or_else(|| format!("unsupported storage type {name}"))?;
            Ok(Value::Storage { key: key.clone(), kind, numel: *numel })
        }
        _ => Err("unrecognised persistent id (not a tensor storage)".into()),
    }
}

fn int_list(value: &Value) -> Option<Vec<i64>> {
    match value {
        Value::Tuple(items) | Value::List(items) => items
            .iter()
            .map(|v| if let Value::Int(i) = v { Some(*i) } else { None })
            .collect(),
        _ => None,
    }
}

fn reduce(callable: Value, args: Value) -> Result<Value, String> {
    let Value::Global { module, name } = &callable else {
        return Ok(Value::Opaque);
    };
    let args = match args {
        Value::Tuple(items) => items,
        _ => return Ok(Value::Opaque),
    };
    match (module.as_str(), name.as_str()) {
        ("collections", "OrderedDict") | ("builtins", "dict") => Ok(Value::Dict(Vec::new())),
        ("torch._utils", "_rebuild_tensor_v2") | ("torch._utils", "_rebuild_tensor") => {
            let (storage, offset, size, stride) = match args.as_slice() {
                [s, Value::Int(o), size, stride, ..] => (s, *o, size, stride),
                _ => return Err("malformed _rebuild_tensor arguments".into()),
            };
            let Value::Storage { key, kind, numel } = storage else {
                return Err("tensor without a storage".into());
            };
            let size = int_list(size).ok_or("tensor size is not a tuple of ints")?;
            let stride = int_list(stride).ok_or("tensor stride is not a tuple of ints")?;
            if size.len() != stride.len() || size.iter().any(|&n| n < 0) || offset < 0 {
                return Err("tensor size and stride disagree".into());
            }
            Ok(Value::Tensor(TensorRef {
                key: key.clone(),
                kind: *kind,
                storage_numel: *numel,
                offset,
                size,
                stride,
            }))
        }
        ("torch._utils", "_rebuild_parameter") | ("torch._utils", "_rebuild_parameter_with_state") => {
            Ok(args.into_iter().next().unwrap_or(Value::Opaque))
        }
        _ => Ok(Value::Opaque),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    /// A `torch.save`-shaped zip archive whose `data.pkl` is `pickle`.
    fn archive(pickle: &[u8]) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        let mut zip = zip::ZipWriter::new(file.reopen().unwrap());
        zip.start_file("archive/data.pkl", zip::write::SimpleFileOptions::default()).unwrap();
        zip.write_all(pickle).unwrap();
        zip.start_file("archive/version", zip::write::SimpleFileOptions::default()).unwrap();
        zip.write_all(b"3\n").unwrap();
        zip.finish().unwrap();
        file
    }

    #[test]
    fn globals_outside_the_allow_list_are_refused_before_anything_is_built() {
        // pickle.dumps(os.system-calling object, protocol=2): GLOBAL, then the call.
        let protocol2 = b"\x80\x02cposix\nsystem\nq\x00X\x04\x00\x00\x00trueq\x01\x85q\x02Rq\x03.";
        // The same with protocol 4's STACK_GLOBAL.
        let protocol4 = b"\x80\x04\x95\x00\x00\x00\x00\x00\x00\x00\x00\x8c\x05posix\x94\x8c\x06system\x94\x93\x94\x8c\x04true\x94\x85\x94R\x94.";
        // A whole model: torch.nn classes.
        let module = b"\x80\x02ctorch.nn.modules.linear\nLinear\nq\x00)\x81q\x01.";
        for (pickle, global) in [
            (&protocol2[..], "posix.system"),
            (&protocol4[..], "posix.system"),
            (&module[..], "torch.nn.modules.linear.Linear"),
        ] {
            let file = archive(pickle);
            assert_eq!(read_tensors(file.path()).map(|_| ()), Err(ReadError::Refused(global.to_string())));
        }
    }

    #[test]
    fn plain_containers_of_numbers_and_strings_read_as_no_tensors() {
        // {'epoch': 3, 'name': 'x', 'lrs': [0.1, 0.01], 'flags': (True, None)}, protocol 2.
        let pickle = b"\x80\x02}q\x00(X\x05\x00\x00\x00epochq\x01K\x03X\x04\x00\x00\x00nameq\x02X\x01\x00\x00\x00xq\x03X\x03\x00\x00\x00lrsq\x04]q\x05(G?\xb9\x99\x99\x99\x99\x99\x9aG?\x84z\xe1G\xae\x14{eX\x05\x00\x00\x00flagsq\x06\x88N\x86q\x07u.";
        let file = archive(pickle);
        assert_eq!(read_tensors(file.path()).unwrap().len(), 0);
    }

    #[test]
    fn the_allow_list_is_what_state_dicts_need() {
        for (module, name) in [
            ("collections", "OrderedDict"),
            ("torch._utils", "_rebuild_tensor_v2"),
            ("torch._utils", "_rebuild_parameter"),
            ("torch", "FloatStorage"),
            ("torch", "BFloat16Storage"),
            ("_codecs", "encode"),
            ("builtins", "set"),
        ] {
            assert!(allowed_global(module, name), "{module}.{name}");
        }
        for (module, name) in [
            ("posix", "system"),
            ("os", "system"),
            ("builtins", "eval"),
            ("builtins", "getattr"),
            ("builtins", "__import__"),
            ("torch", "load"),
            ("torch._tensor", "_rebuild_from_type_v2"),
            ("numpy.core.multiarray", "scalar"),
            ("__main__", "Net"),
            ("argparse", "Namespace"),
        ] {
            assert!(!allowed_global(module, name), "{module}.{name}");
        }
    }
}
