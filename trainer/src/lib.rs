//! Training of robust students (ABSLD and its baselines) and of their teachers.
//!
//! One method per file in [`methods`] behind [`method::TrainingMethod`], named by
//! [`methods::Method`]; the loop, logs and checkpoints in [`run`] ([`run::Trainer`], which also
//! trains a method defined outside this crate), the resumable state in [`resume`]; checkpoint
//! selection (A.3) in [`selection`]; per-method and per-data-set recipes, with the source of
//! every value, in [`presets`]; settings that override a recipe in [`overrides`]; grids of
//! runs (the paper's comparison as data) in [`grid`].

// `!(x > bound)` is deliberate: a NaN must fail the check.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

pub mod grid;
pub mod method;
pub mod methods;
pub mod overrides;
pub mod presets;
pub mod resume;
mod risks;
pub mod run;
pub mod selection;
pub mod sgd;
pub mod temperature;
