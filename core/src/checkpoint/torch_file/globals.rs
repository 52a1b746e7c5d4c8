//! The Python globals a state dict may name, and what calling them builds.
//!
//! Nothing is ever called: an allowed global is a name the machine knows how to turn into a
//! value (a dict, a tensor reference), and every other one is refused by the machine before
//! it is even pushed.

use super::error::{malformed, ReadError};
use super::limits::{Limit, LimitExceeded, TorchFileLimits};
use super::storage::{storage_kind, tensor_ref};
use super::value::{Arena, Global, Value};

/// Whether a state dict may ask for the global `module.name`: containers, tensor and storage
/// rebuilders, storage types, and constructors of plain values. Everything else is refused.
pub(crate) fn allowed_global(module: &str, name: &str) -> bool {
    match module {
        "collections" => name == "OrderedDict",
        "torch._utils" => matches!(name, "_rebuild_tensor" | "_rebuild_tensor_v2" | "_rebuild_parameter" | "_rebuild_parameter_with_state"),
        "torch" => storage_kind(name).is_some() || name == "Size",
        "_codecs" => name == "encode",
        "builtins" | "__builtin__" => {
            matches!(name, "dict" | "list" | "tuple" | "set" | "frozenset" | "bytearray" | "int" | "float" | "bool" | "str")
        }
        _ => false,
    }
}

/// The most arguments an allowed call takes (`_rebuild_tensor_v2` has 7); a longer tuple is
/// not copied.
const MOST_ARGUMENTS: usize = 8;

fn is_tensor_rebuild(global: &Global) -> bool {
    global.module == "torch._utils" && matches!(global.name.as_str(), "_rebuild_tensor_v2" | "_rebuild_tensor")
}

/// A tensor's size or stride: a tuple (or list) of at most `max_dimensions` ints.
fn int_list(value: &Value, limits: &TorchFileLimits) -> Result<Vec<i64>, ReadError> {
    let max = usize::try_from(limits.max_dimensions).unwrap_or(usize::MAX);
    let Some(items) = value.items_up_to(max) else {
        return Err(match value {
            Value::Tuple(_) | Value::List(_) => LimitExceeded::new(Limit::Dimensions, limits.max_dimensions, None).into(),
            other => malformed!("a tensor's size or stride is a {}, not a tuple", other.type_name()),
        });
    };
    items
        .iter()
        .map(|v| if let Value::Int(i) = v { Some(*i) } else { None })
        .collect::<Option<Vec<i64>>>()
        .ok_or_else(|| "a tensor's size or stride is not a tuple of ints".into())
}

/// What REDUCE (`callable(*args)`) builds for an allowed `callable`: dicts, tensor references
/// and `torch.Size`; every other call (a set, a list, bytes) gives [`Value::Opaque`], which a
/// state dict's tensors never need.
pub(super) fn reduce(callable: &Global, args: &Value, arena: &mut Arena, limits: &TorchFileLimits) -> Result<Value, ReadError> {
    if !matches!(args, Value::Tuple(_)) {
        return Err(malformed!("the arguments of {}.{} are a {}, not a tuple", callable.module, callable.name, args.type_name()));
    }
    let Some(args) = args.tuple_up_to(MOST_ARGUMENTS) else {
        return if is_tensor_rebuild(callable) { Err("too many arguments to _rebuild_tensor".into()) } else { Ok(Value::Opaque) };
    };
    match (callable.module.as_str(), callable.name.as_str()) {
        ("collections", "OrderedDict") | ("builtins" | "__builtin__", "dict") if args.is_empty() => Ok(Value::Dict(arena.dict())),
        ("torch", "Size") => {
            let max = usize::try_from(limits.max_dimensions).unwrap_or(usize::MAX);
            match args.first().and_then(|a| a.items_up_to(max)) {
                Some(items) => {
                    let tuple = arena.sequence(items).map_err(|_| LimitExceeded::new(Limit::Depth, limits.max_depth, None))?;
                    Ok(Value::Tuple(tuple))
                }
                None => Ok(Value::Opaque),
            }
        }
        ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") => {
            let (storage, offset, size, stride) = match args.as_slice() {
                [Value::Storage(s), Value::Int(o), size, stride, ..] => (s.clone(), *o, size, stride),
                _ => return Err("malformed _rebuild_tensor arguments (storage, offset, size, stride)".into()),
            };
            let size = int_list(size, limits)?;
            let stride = int_list(stride, limits)?;
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
