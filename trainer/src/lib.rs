//! Training of robust students (ABSLD and its baselines) and of their teachers.
//!
//! One method per file in [`methods`] behind [`method::TrainingMethod`]; the loop, logs,
//! resume in [`run`]; checkpoint selection (A.3) in [`selection`]; per-method and per-data-set
//! recipes, with the source of every value, in [`presets`].

// `!(x > bound)` is deliberate: a NaN must fail the check.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

pub mod method;
pub mod methods;
pub mod presets;
pub mod run;
pub mod selection;
pub mod sgd;
pub mod temperature;
