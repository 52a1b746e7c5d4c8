//! The Python globals a state dict may name, and what calling them builds.
//!
//! Nothing is ever called: an allowed global is a name the machine knows how to turn into a
//! value (a dict, a tensor reference), and every other one is refused by the machine before
//! it is even pushed.

use super::error::ReadError;
use super::limits::TorchFileLimits;
use super::storage::{storage_kind, tensor_ref};
use super::value::{Arena, Global, TooDeep, Value};

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

fn int_list(value: &Value) -> Option<Vec<i64>> {
    value
        .sequence_items()?
        .iter()
        .map(|v| if let Value::Int(i) = v { Some(*i) } else { None })
        .collect()
}

fn too_deep(limits: &TorchFileLimits) -> impl Fn(TooDeep) -> ReadError + '_ {
    move |_| super::limits::LimitExceeded::new(super::limits::Limit::Depth, limits.max_depth, None).into()
}

/// What REDUCE (`callable(*args)`) builds for an allowed `callable`; calls we do not model
/// give [`Value::Opaque`].
pub(super) fn reduce(callable: &Global, args: &Value, arena: &mut Arena, limits: &TorchFileLimits) -> Result<Value, ReadError> {
    let Some(args) = args.sequence_items().filter(|_| matches!(args, Value::Tuple(_))) else {
        return Err(format!("the arguments of {}.{} are not a tuple", callable.module, callable.name).into());
    };
    let copy = |arena: &mut Arena, make: fn(std::rc::Rc<super::value::Sequence>) -> Value| -> Result<Value, ReadError> {
        let items = match args.first() {
            None => Vec::new(),
            Some(Value::Set(s)) => s.items.borrow().clone(),
            Some(other) => other.sequence_items().unwrap_or_default(),
        };
        Ok(make(arena.sequence(items).map_err(too_deep(limits))?))
    };
    match (callable.module.as_str(), callable.name.as_str()) {
        ("collections", "OrderedDict") | ("builtins", "dict") | ("__builtin__", "dict") if args.is_empty() => {
            Ok(Value::Dict(arena.dict()))
        }
        ("builtins", "list") | ("__builtin__", "list") => copy(arena, Value::List),
        ("builtins", "tuple") | ("__builtin__", "tuple") | ("torch", "Size") => copy(arena, Value::Tuple),
        ("builtins", "set" | "frozenset") | ("__builtin__", "set" | "frozenset") => copy(arena, Value::Set),
        ("_codecs", "encode") => match args.as_slice() {
            // How protocol 2 writes bytes: the text of their latin-1 decoding.
            [Value::Str(text), Value::Str(encoding)] if &**encoding == "latin1" || &**encoding == "latin-1" => {
                let bytes: Option<Vec<u8>> = text.chars().map(|c| u8::try_from(u32::from(c)).ok()).collect();
                Ok(bytes.map(|b| Value::Bytes(b.into())).unwrap_or(Value::Opaque))
            }
            _ => Ok(Value::Opaque),
        },
        ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") => {
            let (storage, offset, size, stride) = match args.as_slice() {
                [Value::Storage(s), Value::Int(o), size, stride, ..] => (s.clone(), *o, size, stride),
                _ => return Err("malformed _rebuild_tensor arguments (storage, offset, size, stride)".into()),
            };
            let size = int_list(size).ok_or("a tensor's size is not a tuple of ints")?;
            let stride = int_list(stride).ok_or("a tensor's stride is not a tuple of ints")?;
            Ok(Value::Tensor(tensor_ref(storage, offset, size, stride, limits)?.into()))
        }
        ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => match args.first() {
            Some(tensor @ Value::Tensor(_)) => Ok(tensor.clone()),
            _ => Ok(Value::Opaque),
        },
        _ => Ok(Value::Opaque),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            ("torch", "UntypedStorage"),
            ("torch._tensor", "_rebuild_from_type_v2"),
            ("numpy.core.multiarray", "scalar"),
            ("__main__", "Net"),
            ("argparse", "Namespace"),
        ] {
            assert!(!allowed_global(module, name), "{module}.{name}");
        }
    }
}
