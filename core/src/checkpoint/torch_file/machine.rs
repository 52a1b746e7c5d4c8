//! The pickle machine: the opcodes of protocols 0 to 5 that pickled state dicts use, run
//! without executing anything and within [`TorchFileLimits`].
//!
//! As in Python, MARK remembers a stack position instead of pushing a value, so no opcode
//! can take a mark for an item, and nothing pops below the innermost mark.

use std::collections::HashMap;

use super::error::{malformed, ReadError};
use super::globals::{allowed_global, reduce};
use super::limits::{Limit, LimitExceeded, TorchFileLimits};
use super::storage::{PersistentIds, Storages};
use super::value::{Arena, Global, TooDeep, Value};

/// What a pickle built: the object, the pickle's length, the storages its persistent ids
/// declared, and the arena that keeps the object's containers (dropping it empties them).
pub(super) struct Unpickled {
    pub root: Value,
    pub len: usize,
    pub storages: Storages,
    /// Declared last, so that it is dropped after `root`.
    _arena: Arena,
}

pub(super) struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    /// Whether `data` was cut at the pickle size limit (running out of it then means the
    /// pickle is too long rather than truncated).
    cut_at_limit: bool,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    values: u64,
    arena: Arena,
    limits: &'a TorchFileLimits,
    ids: PersistentIds,
    storages: Storages,
}

impl<'a> Machine<'a> {
    pub fn new(data: &'a [u8], cut_at_limit: bool, limits: &'a TorchFileLimits, ids: PersistentIds) -> Self {
        Machine {
            data,
            pos: 0,
            cut_at_limit,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            values: 0,
            arena: Arena::new(limits.max_depth),
            limits,
            ids,
            storages: Storages::default(),
        }
    }

    /// Runs `data[..end]` (at most the pickle size limit) from the start to STOP.
    pub fn on_prefix(data: &'a [u8], limits: &'a TorchFileLimits, ids: PersistentIds) -> Self {
        let limit = usize::try_from(limits.max_pickle_bytes).unwrap_or(usize::MAX);
        let cut = data.len() > limit;
        Machine::new(&data[..data.len().min(limit)], cut, limits, ids)
    }

    fn ends_early(&self) -> ReadError {
        if self.cut_at_limit {
            LimitExceeded::new(Limit::PickleBytes, self.limits.max_pickle_bytes, None).into()
        } else {
            "the pickle ends early".into()
        }
    }

    fn too_deep(&self) -> impl Fn(TooDeep) -> ReadError + '_ {
        |_| LimitExceeded::new(Limit::Depth, self.limits.max_depth, None).into()
    }

    fn count(&mut self) -> Result<(), ReadError> {
        self.values += 1;
        if self.values > self.limits.max_values {
            return Err(LimitExceeded::new(Limit::Values, self.limits.max_values, None).into());
        }
        Ok(())
    }

    fn push(&mut self, value: Value) -> Result<(), ReadError> {
        self.count()?;
        self.stack.push(value);
        Ok(())
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], ReadError> {
        let available = (self.data.len() - self.pos) as u64;
        if n > available {
            return Err(self.ends_early());
        }
        let end = self.pos + n as usize;
        let bytes = &self.data[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], ReadError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N as u64)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, ReadError> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, ReadError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, ReadError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A text argument up to the next newline (protocol 0's opcodes, GLOBAL's names).
    fn line(&mut self) -> Result<String, ReadError> {
        let rest = &self.data[self.pos..];
        let end = rest.iter().position(|&b| b == b'\n').ok_or_else(|| self.ends_early())?;
        let text = String::from_utf8_lossy(&rest[..end]).into_owned();
        self.pos += end + 1;
        Ok(text)
    }

    fn text(&mut self, n: u64) -> Result<Value, ReadError> {
        let bytes = self.take(n)?;
        Ok(Value::Str(String::from_utf8_lossy(bytes).into()))
    }

    fn bytes(&mut self, n: u64) -> Result<Value, ReadError> {
        Ok(Value::Bytes(self.take(n)?.into()))
    }

    /// The bottom of the stack that ops may reach: the innermost mark.
    fn floor(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn pop(&mut self) -> Result<Value, ReadError> {
        if self.stack.len() <= self.floor() {
            return Err("pickle stack underflow".into());
        }
        self.stack.pop().ok_or_else(|| "pickle stack underflow".into())
    }

    fn top(&self) -> Result<Value, ReadError> {
        if self.stack.len() <= self.floor() {
            return Err("pickle stack underflow".into());
        }
        self.stack.last().cloned().ok_or_else(|| "pickle stack underflow".into())
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>, ReadError> {
        let mark = self.marks.pop().ok_or("pickle MARK missing")?;
        if mark > self.stack.len() {
            return Err("pickle MARK beyond the stack".into());
        }
        Ok(self.stack.split_off(mark))
    }

    /// Pushes a global after checking it against the allow-list.
    fn push_global(&mut self, module: String, name: String) -> Result<(), ReadError> {
        if !allowed_global(&module, &name) {
            return Err(ReadError::Refused(format!("{module}.{name}")));
        }
        self.push(Value::Global(Global { module, name }.into()))
    }

    fn push_sequence(&mut self, items: Vec<Value>, make: fn(std::rc::Rc<super::value::Sequence>) -> Value) -> Result<(), ReadError> {
        let sequence = self.arena.sequence(items).map_err(self.too_deep())?;
        self.push(make(sequence))
    }

    /// APPEND(S) and ADDITEMS: `items` into the list or set on top of the stack.
    fn extend_top(&mut self, items: Vec<Value>, opcode: &str) -> Result<(), ReadError> {
        let top = self.top()?;
        let target = match &top {
            Value::List(s) | Value::Set(s) => s,
            Value::Opaque => return Ok(()),
            other => return Err(malformed!("{opcode} to a {}", other.type_name())),
        };
        for item in &items {
            self.arena.holds(&top, item).map_err(self.too_deep())?;
        }
        target.items.borrow_mut().extend(items);
        Ok(())
    }

    /// SETITEM(S): `items` (key, value, key, value, ...) into the dict on top of the stack.
    fn set_items_of_top(&mut self, items: Vec<Value>) -> Result<(), ReadError> {
        if !items.len().is_multiple_of(2) {
            return Err("odd number of items for a pickled dict".into());
        }
        let top = self.top()?;
        let dict = match &top {
            Value::Dict(d) => d,
            Value::Opaque => return Ok(()),
            other => return Err(malformed!("SETITEM on a {}", other.type_name())),
        };
        let mut items = items.into_iter();
        while let (Some(key), Some(value)) = (items.next(), items.next()) {
            self.arena.holds(&top, &key).map_err(self.too_deep())?;
            self.arena.holds(&top, &value).map_err(self.too_deep())?;
            dict.set(key, value)?;
        }
        Ok(())
    }

    fn memo_put(&mut self, index: u32) -> Result<(), ReadError> {
        let top = self.top()?;
        self.count()?;
        self.memo.insert(index, top);
        Ok(())
    }

    fn memo_get(&mut self, index: u32) -> Result<(), ReadError> {
        let value = self.memo.get(&index).cloned().ok_or_else(|| malformed!("pickle memo key {index} missing"))?;
        self.push(value)
    }

    fn memo_index(text: &str) -> Result<u32, ReadError> {
        text.trim().parse().map_err(|_| malformed!("bad pickle memo key {:?}", text.chars().take(20).collect::<String>()))
    }

    /// An integer of LONG1/LONG4: `bytes` little-endian two's complement.
    fn long(bytes: &[u8]) -> Value {
        let negative = bytes.last().is_some_and(|&b| b & 0x80 != 0);
        let fill = if negative { 0xff } else { 0 };
        // The shortest form: drop sign-extension bytes whose removal keeps the sign.
        let mut len = bytes.len();
        while len > 1 && bytes[len - 1] == fill && (bytes[len - 2] & 0x80 != 0) == negative {
            len -= 1;
        }
        let bytes = &bytes[..len];
        if bytes.len() <= 8 {
            let mut buf = [fill; 8];
            buf[..bytes.len()].copy_from_slice(bytes);
            Value::Int(i64::from_le_bytes(buf))
        } else {
            Value::BigInt(bytes.into())
        }
    }

    /// Runs to STOP.
    pub fn run(mut self) -> Result<Unpickled, ReadError> {
        let (root, len) = self.run_to_stop()?;
        Ok(Unpickled { root, len, storages: std::mem::take(&mut self.storages), _arena: std::mem::take(&mut self.arena) })
    }

    fn run_to_stop(&mut self) -> Result<(Value, usize), ReadError> {
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    let protocol = self.u8()?;
                    if protocol > 5 {
                        return Err(malformed!("unsupported pickle protocol {protocol}"));
                    }
                }
                0x95 => {
                    self.take(8)?; // FRAME: a length that only helps buffering
                }
                b'.' => {
                    let value = self.pop()?;
                    return Ok((value, self.pos));
                }
                b'(' => {
                    self.count()?;
                    self.marks.push(self.stack.len());
                }
                b'N' => self.push(Value::None)?,
                0x88 => self.push(Value::Bool(true))?,
                0x89 => self.push(Value::Bool(false))?,
                b'J' => {
                    let v = i32::from_le_bytes(self.array()?);
                    self.push(Value::Int(v.into()))?;
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Value::Int(v.into()))?;
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.array()?);
                    self.push(Value::Int(v.into()))?;
                }
                b'I' => {
                    let line = self.line()?;
                    let value = match line.as_str() {
                        "00" => Value::Bool(false),
                        "01" => Value::Bool(true),
                        text => Value::Int(text.trim().parse().map_err(|_| malformed!("bad pickle INT {text:?}"))?),
                    };
                    self.push(value)?;
                }
                b'L' => {
                    let line = self.line()?;
                    let text = line.trim().trim_end_matches('L');
                    let value = text.parse().map_err(|_| malformed!("pickle LONG {text:?} is not a 64-bit integer"))?;
                    self.push(Value::Int(value))?;
                }
                0x8a => {
                    let n = self.u8()?;
                    let value = Self::long(self.take(n.into())?);
                    self.push(value)?;
                }
                0x8b => {
                    let n = self.u32()?;
                    let value = Self::long(self.take(n.into())?);
                    self.push(value)?;
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.array()?);
                    self.push(Value::Float(v))?;
                }
                b'F' => {
                    let line = self.line()?;
                    let v = line.trim().parse().map_err(|_| malformed!("bad pickle FLOAT {line:?}"))?;
                    self.push(Value::Float(v))?;
                }
                b'X' | b'T' => {
                    let n = self.u32()?;
                    let v = self.text(n.into())?;
                    self.push(v)?;
                }
                0x8c | b'U' => {
                    let n = self.u8()?;
                    let v = self.text(n.into())?;
                    self.push(v)?;
                }
                0x8d => {
                    let n = self.u64()?;
                    let v = self.text(n)?;
                    self.push(v)?;
                }
                b'B' => {
                    let n = self.u32()?;
                    let v = self.bytes(n.into())?;
                    self.push(v)?;
                }
                b'C' => {
                    let n = self.u8()?;
                    let v = self.bytes(n.into())?;
                    self.push(v)?;
                }
                0x8e | 0x96 => {
                    let n = self.u64()?;
                    let v = self.bytes(n)?;
                    self.push(v)?;
                }
                b')' => self.push_sequence(Vec::new(), Value::Tuple)?,
                b']' => self.push_sequence(Vec::new(), Value::List)?,
                0x8f => self.push_sequence(Vec::new(), Value::Set)?,
                b'}' => {
                    let dict = self.arena.dict();
                    self.push(Value::Dict(dict))?;
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.push_sequence(items, Value::Tuple)?;
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    if self.stack.len() < self.floor() + n {
                        return Err("pickle stack underflow".into());
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.push_sequence(items, Value::Tuple)?;
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push_sequence(items, Value::List)?;
                }
                0x91 => {
                    let items = self.pop_mark()?;
                    self.push_sequence(items, Value::Set)?;
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    let dict = Value::Dict(self.arena.dict());
                    self.push(dict)?;
                    self.set_items_of_top(items)?;
                }
                b'a' => {
                    let item = self.pop()?;
                    self.extend_top(vec![item], "APPEND")?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.extend_top(items, "APPENDS")?;
                }
                0x90 => {
                    let items = self.pop_mark()?;
                    self.extend_top(items, "ADDITEMS")?;
                }
                b's' => {
                    let value = self.pop()?;
                    let key = self.pop()?;
                    self.set_items_of_top(vec![key, value])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.set_items_of_top(items)?;
                }
                b'0' => {
                    // POP: Python's pops a mark when the stack above it is empty.
                    if self.stack.len() > self.floor() {
                        self.pop()?;
                    } else {
                        self.pop_mark()?;
                    }
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let top = self.top()?;
                    self.push(top)?;
                }
                b'q' => {
                    let i = self.u8()?;
                    self.memo_put(i.into())?;
                }
                b'r' => {
                    let i = self.u32()?;
                    self.memo_put(i)?;
                }
                b'p' => {
                    let line = self.line()?;
                    self.memo_put(Self::memo_index(&line)?)?;
                }
                0x94 => {
                    let i = u32::try_from(self.memo.len()).map_err(|_| "pickle memo too large")?;
                    self.memo_put(i)?;
                }
                b'h' => {
                    let i = self.u8()?;
                    self.memo_get(i.into())?;
                }
                b'j' => {
                    let i = self.u32()?;
                    self.memo_get(i)?;
                }
                b'g' => {
                    let line = self.line()?;
                    self.memo_get(Self::memo_index(&line)?)?;
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
                        // No allowed global has a long name; a long one is not copied.
                        (Value::Str(module), Value::Str(name)) if module.len() + name.len() > 200 => {
                            let shorten = |s: &str| s.chars().take(40).collect::<String>();
                            return Err(ReadError::Refused(format!("{}.{}...", shorten(&module), shorten(&name))));
                        }
                        (Value::Str(module), Value::Str(name)) => self.push_global(module.to_string(), name.to_string())?,
                        _ => return Err("STACK_GLOBAL without names".into()),
                    }
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let storage = self.storages.load(&pid, self.ids, self.limits)?;
                    self.push(Value::Storage(storage))?;
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let Value::Global(callable) = callable else {
                        return Err(malformed!("REDUCE calls a {}, not a global", callable.type_name()));
                    };
                    let result = reduce(&callable, &args, &mut self.arena, self.limits)?;
                    self.push(result)?;
                }
                0x81 | 0x92 => {
                    // NEWOBJ(_EX): cls.__new__(cls, *args[, **kwargs])
                    if op == 0x92 {
                        self.pop()?;
                    }
                    self.pop()?;
                    let class = self.pop()?;
                    let value = match &class {
                        Value::Global(g) if matches!((g.module.as_str(), g.name.as_str()), ("collections", "OrderedDict")) => {
                            Value::Dict(self.arena.dict())
                        }
                        Value::Global(_) => Value::Opaque,
                        other => return Err(malformed!("NEWOBJ of a {}, not a class", other.type_name())),
                    };
                    self.push(value)?;
                }
                b'b' => {
                    // BUILD sets an object's state; a state dict's is its `_metadata`.
                    self.pop()?;
                    self.top()?;
                }
                other => {
                    return Err(malformed!("unsupported pickle opcode 0x{other:02x} at byte {}", self.pos - 1));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(pickle: &[u8]) -> Result<Unpickled, ReadError> {
        Machine::new(pickle, false, &TorchFileLimits::DEFAULT, PersistentIds::Zip).run()
    }

    #[test]
    fn large_integers_keep_their_value() {
        // pickle.dumps(0x1950a86a20f9469cfc6c, protocol=2): PyTorch's magic number.
        let magic = run(b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.").unwrap().root;
        assert!(matches!(magic, Value::BigInt(b) if *b == *b"l\xfc\x9cF\xf9 j\xa8P\x19"));
        // -1 and 2**63 - 1 with redundant sign bytes.
        assert!(matches!(run(b"\x8a\x03\xff\xff\xff.").unwrap().root, Value::Int(-1)));
        assert!(matches!(run(b"\x8a\x09\xff\xff\xff\xff\xff\xff\xff\x7f\x00.").unwrap().root, Value::Int(i64::MAX)));
    }

    #[test]
    fn marks_are_not_values() {
        // MARK then TUPLE1: Python finds the stack above the mark empty.
        assert!(run(b"(\x85.").is_err());
        // MARK, 1, POP_MARK leaves nothing; STOP then underflows.
        assert!(run(b"(K\x011.").is_err());
        assert!(matches!(run(b"K\x07(0.").unwrap().root, Value::Int(7)), "POP of an empty mark pops the mark");
    }

    #[test]
    fn memoised_containers_are_shared() {
        // d = {}; l = [d, d]; d['k'] = 1 after both uses; the list is returned.
        let pickle = b"\x80\x02}q\x00]q\x01(h\x00h\x00eh\x00X\x01\x00\x00\x00kK\x01s0.";
        let done = run(pickle).unwrap();
        let list = done.root.items_up_to(usize::MAX).unwrap();
        for item in list {
            let Value::Dict(d) = item else { panic!("a dict") };
            assert!(matches!(d.entry(0), Some((Value::Str(k), Value::Int(1))) if &*k == "k"));
        }
    }
}
