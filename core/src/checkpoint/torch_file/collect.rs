//! Names the tensors of a pickled object by their dotted path through nested dicts
//! (`model.conv1.weight` for `{'model': {'conv1.weight': ...}}`); tensors in lists, tuples
//! and other objects are not part of a state dict and are left out.
//!
//! The walk keeps its own stack instead of recursing, and is bounded: a dict shared by many
//! others is walked once per path to it (as the names need), so every step counts against
//! [`TorchFileLimits::max_values`]; a path deeper than `max_depth`, a name longer than
//! `max_name_bytes`, names adding up to more than `max_total_name_bytes` or more than
//! `max_tensors` tensors end it with an error; a dict that
//! contains itself is not entered again on the same path.

use std::rc::Rc;

use super::error::ReadError;
use super::limits::{Limit, LimitExceeded, TorchFileLimits};
use super::storage::TensorRef;
use super::value::{Dict, Value};

struct Frame {
    dict: Rc<Dict>,
    next: usize,
    prefix: String,
}

pub(super) fn named_tensors(root: &Value, limits: &TorchFileLimits) -> Result<Vec<(String, Rc<TensorRef>)>, ReadError> {
    let mut found = Vec::new();
    let root = match root {
        Value::Tensor(t) => return Ok(vec![(String::new(), t.clone())]),
        Value::Dict(d) => d.clone(),
        _ => return Ok(found),
    };
    let over = |limit, maximum| ReadError::from(LimitExceeded::new(limit, maximum, None));
    let mut steps: u64 = 0;
    let mut name_bytes: u64 = 0;
    let mut stack = vec![Frame { dict: root, next: 0, prefix: String::new() }];
    while let Some(frame) = stack.last_mut() {
        let Some((key, value)) = frame.dict.entry(frame.next) else {
            stack.pop();
            continue;
        };
        frame.next += 1;
        steps += 1;
        if steps > limits.max_values {
            return Err(over(Limit::Values, limits.max_values));
        }
        if !matches!(value, Value::Tensor(_) | Value::Dict(_)) {
            continue;
        }
        // The name is checked before it is made: a long key reached along many paths would
        // otherwise cost its length at every step.
        let key = match &key {
            Value::Str(s) => std::borrow::Cow::Borrowed(&**s),
            Value::Int(i) => std::borrow::Cow::Owned(i.to_string()),
            _ => continue,
        };
        let separator = usize::from(!frame.prefix.is_empty());
        if (frame.prefix.len() + separator + key.len()) as u64 > limits.max_name_bytes {
            return Err(over(Limit::NameBytes, limits.max_name_bytes));
        }
        name_bytes += (frame.prefix.len() + separator + key.len()) as u64;
        if name_bytes > limits.max_total_name_bytes {
            return Err(over(Limit::TotalNameBytes, limits.max_total_name_bytes));
        }
        let name = if frame.prefix.is_empty() { key.into_owned() } else { format!("{}.{key}", frame.prefix) };
        match value {
            Value::Tensor(t) => {
                if found.len() as u64 >= limits.max_tensors {
                    return Err(over(Limit::Tensors, limits.max_tensors));
                }
                found.push((name, t));
            }
            Value::Dict(d) => {
                if stack.iter().any(|f| Rc::ptr_eq(&f.dict, &d)) {
                    continue;
                }
                if stack.len() as u64 >= limits.max_depth {
                    return Err(over(Limit::Depth, limits.max_depth));
                }
                stack.push(Frame { dict: d, next: 0, prefix: name });
            }
            _ => {}
        }
    }
    Ok(found)
}
