//! The one place where a libtorch failure inside tch's infallible calls becomes an error value.
//!
//! tch offers two forms of most operations: `f_name`, which returns `Result<Tensor, TchError>`,
//! and `name`, which panics on the same error. Layers (`nn::Conv2D`, `ModuleT::forward_t`) and
//! the arithmetic operators exist only in the panicking form, and a user's model or request can
//! make them fail (a TorchScript module that raises, a memory layout an operation does not
//! accept, an allocation beyond the device). [`guarded`] runs such work and turns a panic into
//! `TchError::Torch(message)`, so that callers — the attacks' [`crate::classifier::Classifier`]
//! implementations and the evaluation driver — return a typed error naming what failed instead
//! of unwinding through the evaluator. While guarded work runs, the panic is not printed: it
//! becomes the error the caller reports.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Once;

use tch::TchError;

thread_local! {
    /// How many [`guarded`] calls are running on this thread (they may nest).
    static GUARDED_DEPTH: Cell<usize> = const { Cell::new(0) };
}

static QUIET_HOOK: Once = Once::new();

/// Installs, once per process, a panic hook that stays silent for panics inside [`guarded`]
/// (they are returned as errors) and hands every other panic to the hook that was there before.
fn install_quiet_hook() {
    QUIET_HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if GUARDED_DEPTH.with(Cell::get) == 0 {
                previous(info);
            }
        }));
    });
}

/// Leaves the guarded depth as it was, also when the work unwinds.
struct DepthGuard;

impl DepthGuard {
    fn enter() -> Self {
        GUARDED_DEPTH.with(|depth| depth.set(depth.get() + 1));
        DepthGuard
    }
}

impl Drop for DepthGuard {
    fn drop(&mut self) {
        GUARDED_DEPTH.with(|depth| depth.set(depth.get().saturating_sub(1)));
    }
}

/// Runs `work`; a panic inside it (libtorch's errors through tch's infallible calls) comes back
/// as `Err(TchError::Torch(message))` with libtorch's message, its C++ backtrace left out.
pub fn guarded<T>(work: impl FnOnce() -> T) -> Result<T, TchError> {
    install_quiet_hook();
    let depth = DepthGuard::enter();
    let outcome = catch_unwind(AssertUnwindSafe(work));
    drop(depth);
    outcome.map_err(|payload| TchError::Torch(panic_message(payload.as_ref())))
}

/// [`guarded`] for work that already returns a tch result: both kinds of failure as one error.
pub fn guarded_result<T>(work: impl FnOnce() -> Result<T, TchError>) -> Result<T, TchError> {
    guarded(work).and_then(|result| result)
}

/// The readable part of a panic's payload: for tch's `unwrap` of a `TchError`, libtorch's own
/// first line (without the `called Result::unwrap()` wrapper and the C++ backtrace).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let raw = payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown failure".to_string());
    torch_message(&raw)
}

/// The useful line of a libtorch error, without tch's wrapping (`called Result::unwrap() on an
/// Err value: Torch("...")`) and without the C++ backtrace: TorchScript errors put the
/// Python-style exception (`RuntimeError: ...`) after a traceback, others start with it.
pub fn torch_message(raw: &str) -> String {
    let mut text = raw.trim();
    if let Some(rest) = text.strip_prefix("called `Result::unwrap()` on an `Err` value: ") {
        text = rest.trim();
    }
    for wrapper in ["Torch(\"", "Shape(\"", "Kind(\"", "Convert(\""] {
        if let Some(inner) = text.strip_prefix(wrapper) {
            text = inner.strip_suffix("\")").unwrap_or(inner);
            break;
        }
    }
    let unescaped = text.replace("\\n", "\n").replace("\\\"", "\"").replace("\\'", "'");
    let lines: Vec<&str> = unescaped.lines().map(str::trim).filter(|line| !line.is_empty()).collect();
    let chosen = lines
        .iter()
        .rev()
        .find(|line| {
            let head = line.split(':').next().unwrap_or("");
            head.ends_with("Error") && !head.contains(' ')
        })
        .or(lines.first())
        .copied()
        .unwrap_or("unknown libtorch failure");
    if chosen.chars().count() > 400 {
        chosen.chars().take(400).collect::<String>() + "..."
    } else {
        chosen.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Kind, Tensor};

    #[test]
    fn a_libtorch_failure_becomes_an_error_with_its_message() {
        // A view of a channels-last tensor: the failure this helper exists for.
        let channels_last =
            Tensor::zeros([2, 3, 4, 4], (Kind::Float, tch::Device::Cpu)).permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2]);
        let error = guarded(|| channels_last.view([2, -1])).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("view size is not compatible"), "{error}");
        assert!(!error.contains("called `Result::unwrap()`") && !error.contains('\n'), "{error}");
        let fine = guarded(|| channels_last.reshape([2, -1]).size());
        assert_eq!(fine.ok(), Some(vec![2, 48]));
    }

    #[test]
    fn nested_guards_and_plain_panics() {
        let inner = guarded(|| guarded(|| -> i32 { panic!("inner") }).is_err());
        assert_eq!(inner.ok(), Some(true));
        let message = guarded(|| -> i32 { panic!("plain message") }).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains("plain message"), "{message}");
        assert_eq!(GUARDED_DEPTH.with(Cell::get), 0);
    }
}
