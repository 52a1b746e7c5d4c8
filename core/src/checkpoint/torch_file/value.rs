//! The values of the pickle machine.
//!
//! Containers are shared, as Python's objects are: the memo holds the same list or dict that
//! the stack does, so a GET costs a reference count (a deep copy per GET let a 250-byte pickle
//! double itself 32 times), and a dict changed after it was memoised reads changed wherever it
//! was used, as `torch.load` gives it. Every container the machine makes is also kept in its
//! [`Arena`], which empties them all when the machine is done: dropping a value then never
//! recurses (a chain of a million nested lists would otherwise overflow the stack when
//! dropped), and reference cycles, which a pickle can make, are broken instead of leaked.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use super::storage::{StorageRef, TensorRef};

/// A value on the machine's stack, in its memo or in a container.
#[derive(Debug, Clone)]
pub(super) enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer beyond 64 bits (PyTorch's magic number is one), as its shortest
    /// little-endian two's complement bytes.
    BigInt(Rc<[u8]>),
    Float(f64),
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
    Tuple(Rc<Sequence>),
    List(Rc<Sequence>),
    Set(Rc<Sequence>),
    Dict(Rc<Dict>),
    Global(Rc<Global>),
    Storage(Rc<StorageRef>),
    Tensor(Rc<TensorRef>),
    /// An object we do not model (made by an allowed class or call); kept so that the machine
    /// can go on.
    Opaque,
}

/// `module.name`, checked against the allow-list before it was pushed.
#[derive(Debug)]
pub(super) struct Global {
    pub module: String,
    pub name: String,
}

/// The items of a tuple, list or set, and how deep it nests.
#[derive(Debug, Default)]
pub(super) struct Sequence {
    pub items: RefCell<Vec<Value>>,
    depth: Cell<u64>,
}

/// A dict in insertion order, keys compared as Python compares them.
#[derive(Debug, Default)]
pub(super) struct Dict {
    entries: RefCell<Vec<(Value, Value)>>,
    index: RefCell<HashMap<DictKey, usize>>,
    depth: Cell<u64>,
}

/// The keys a dict can tell equal (Python's `1 == 1.0 == True`); others (tuples, tensors)
/// are kept as separate entries, which no state dict needs otherwise. So are strings, bytes
/// and integers longer than [`LONGEST_COMPARED_KEY`]: hashing a megabyte-long key again at
/// every use of it through the memo would cost its length each time.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum DictKey {
    None,
    Int(i64),
    Float(u64),
    BigInt(Rc<[u8]>),
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
}

/// Bytes of the longest key compared by value.
const LONGEST_COMPARED_KEY: usize = 4096;

impl DictKey {
    /// `Ok(None)`: a key compared by identity; `Err`: a key Python refuses (unhashable).
    fn of(value: &Value) -> Result<Option<DictKey>, String> {
        Ok(Some(match value {
            Value::None => DictKey::None,
            Value::Bool(b) => DictKey::Int(i64::from(*b)),
            Value::Int(i) => DictKey::Int(*i),
            Value::Float(f) if f.is_nan() => return Ok(None),
            Value::Float(f) if f.fract() == 0.0 && f.abs() < 9.0e18 => DictKey::Int(*f as i64),
            Value::Float(f) => DictKey::Float(f.to_bits()),
            Value::BigInt(b) if b.len() <= LONGEST_COMPARED_KEY => DictKey::BigInt(b.clone()),
            Value::Str(s) if s.len() <= LONGEST_COMPARED_KEY => DictKey::Str(s.clone()),
            Value::Bytes(b) if b.len() <= LONGEST_COMPARED_KEY => DictKey::Bytes(b.clone()),
            Value::BigInt(_) | Value::Str(_) | Value::Bytes(_) => return Ok(None),
            Value::List(_) | Value::Dict(_) | Value::Set(_) => {
                return Err(format!("a pickled dict has an unhashable key ({})", value.type_name()))
            }
            Value::Tuple(_) | Value::Global(_) | Value::Storage(_) | Value::Tensor(_) | Value::Opaque => return Ok(None),
        }))
    }
}

impl Dict {
    /// `dict[key] = value`: a key already present keeps its place and takes the new value.
    pub fn set(&self, key: Value, value: Value) -> Result<(), String> {
        let mut entries = self.entries.borrow_mut();
        match DictKey::of(&key)? {
            Some(k) => {
                let mut index = self.index.borrow_mut();
                match index.get(&k) {
                    Some(&at) => {
                        if let Some(entry) = entries.get_mut(at) {
                            entry.1 = value;
                        }
                    }
                    None => {
                        index.insert(k, entries.len());
                        entries.push((key, value));
                    }
                }
            }
            None => entries.push((key, value)),
        }
        Ok(())
    }

    /// The `at`-th entry in insertion order (shared values, so cheap).
    pub fn entry(&self, at: usize) -> Option<(Value, Value)> {
        self.entries.borrow().get(at).cloned()
    }

    #[cfg(test)]
    fn entries(&self) -> Vec<(Value, Value)> {
        self.entries.borrow().clone()
    }
}

impl Value {
    /// How deep the value nests: 0 for scalars, 1 for an empty container.
    pub fn depth(&self) -> u64 {
        match self {
            Value::Tuple(s) | Value::List(s) | Value::Set(s) => s.depth.get(),
            Value::Dict(d) => d.depth.get(),
            _ => 0,
        }
    }

    /// Python's name for the value's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) | Value::BigInt(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Set(_) => "set",
            Value::Dict(_) => "dict",
            Value::Global(_) => "global",
            Value::Storage(_) => "storage",
            Value::Tensor(_) => "tensor",
            Value::Opaque => "object",
        }
    }

    /// The items of a tuple or list of at most `max` items (a snapshot of shared values), or
    /// `None`. The bound keeps a pickle that uses one huge tuple again and again through the
    /// memo from costing its length at every use.
    pub fn items_up_to(&self, max: usize) -> Option<Vec<Value>> {
        match self {
            Value::Tuple(s) | Value::List(s) if s.items.borrow().len() <= max => Some(s.items.borrow().clone()),
            _ => None,
        }
    }

    /// [`Value::items_up_to`] for tuples only.
    pub fn tuple_up_to(&self, max: usize) -> Option<Vec<Value>> {
        match self {
            Value::Tuple(_) => self.items_up_to(max),
            _ => None,
        }
    }
}

/// Every container of one machine, so that they can all be emptied at the end (see the
/// module documentation).
#[derive(Debug, Default)]
pub(super) struct Arena {
    sequences: Vec<Rc<Sequence>>,
    dicts: Vec<Rc<Dict>>,
    max_depth: u64,
}

/// A container would nest deeper than the limit.
#[derive(Debug)]
pub(super) struct TooDeep;

impl Arena {
    pub fn new(max_depth: u64) -> Self {
        Arena { sequences: Vec::new(), dicts: Vec::new(), max_depth }
    }

    /// A new tuple, list or set holding `items`.
    pub fn sequence(&mut self, items: Vec<Value>) -> Result<Rc<Sequence>, TooDeep> {
        let depth = items.iter().map(Value::depth).max().unwrap_or(0) + 1;
        if depth > self.max_depth {
            return Err(TooDeep);
        }
        let sequence = Rc::new(Sequence { items: RefCell::new(items), depth: Cell::new(depth) });
        self.sequences.push(sequence.clone());
        Ok(sequence)
    }

    pub fn dict(&mut self) -> Rc<Dict> {
        let dict = Rc::new(Dict { depth: Cell::new(1), ..Dict::default() });
        self.dicts.push(dict.clone());
        dict
    }

    /// Records that `container` now holds `item`. Depth is tracked where items go in, which
    /// sees every nesting a pickler writes; a container filled after it was put in another
    /// can end up deeper than recorded, which is harmless because nothing here recurses.
    pub fn holds(&self, container: &Value, item: &Value) -> Result<(), TooDeep> {
        let depth = item.depth() + 1;
        if depth > self.max_depth {
            return Err(TooDeep);
        }
        let cell = match container {
            Value::Tuple(s) | Value::List(s) | Value::Set(s) => &s.depth,
            Value::Dict(d) => &d.depth,
            _ => return Ok(()),
        };
        cell.set(cell.get().max(depth));
        Ok(())
    }

    /// Empties every container. Each item dropped here is either a scalar or a container
    /// the arena still holds, so no drop recurses; the containers then drop empty.
    pub fn clear(&mut self) {
        for sequence in &self.sequences {
            let items = std::mem::take(&mut *sequence.items.borrow_mut());
            drop(items);
        }
        for dict in &self.dicts {
            let entries = std::mem::take(&mut *dict.entries.borrow_mut());
            drop(entries);
            dict.index.borrow_mut().clear();
        }
        self.sequences.clear();
        self.dicts.clear();
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dict_keys_compare_as_in_python() {
        let mut arena = Arena::new(10);
        let dict = arena.dict();
        dict.set(Value::Int(1), Value::Str("a".into())).unwrap();
        dict.set(Value::Bool(true), Value::Str("b".into())).unwrap();
        dict.set(Value::Float(1.0), Value::Str("c".into())).unwrap();
        dict.set(Value::Str("1".into()), Value::Str("d".into())).unwrap();
        let entries = dict.entries();
        assert_eq!(entries.len(), 2);
        assert!(matches!((&entries[0].0, &entries[0].1), (Value::Int(1), Value::Str(s)) if &**s == "c"));
        let list = Value::List(arena.sequence(Vec::new()).unwrap());
        assert!(dict.set(list, Value::None).is_err(), "lists are unhashable");
    }

    #[test]
    fn a_deep_chain_drops_without_recursion() {
        let mut arena = Arena::new(u64::MAX);
        let mut value = Value::None;
        for _ in 0..1_000_000 {
            value = Value::List(arena.sequence(vec![value]).unwrap());
        }
        assert_eq!(value.depth(), 1_000_000);
        drop(arena);
        drop(value);
    }

    #[test]
    fn a_cycle_is_broken_when_the_arena_goes() {
        let mut arena = Arena::new(10);
        let list = arena.sequence(Vec::new()).unwrap();
        list.items.borrow_mut().push(Value::List(list.clone()));
        let weak = Rc::downgrade(&list);
        drop(list);
        drop(arena);
        assert!(weak.upgrade().is_none());
    }

    #[test]
    fn depth_is_limited_where_items_go_in() {
        let mut arena = Arena::new(3);
        let inner = Value::Tuple(arena.sequence(vec![]).unwrap());
        let middle = Value::Tuple(arena.sequence(vec![inner]).unwrap());
        let outer = Value::List(arena.sequence(vec![]).unwrap());
        assert!(arena.holds(&outer, &middle).is_ok());
        assert!(arena.sequence(vec![outer]).is_err());
    }
}
