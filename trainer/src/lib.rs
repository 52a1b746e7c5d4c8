//! Training of robust students (ABSLD and its baselines) and of their teachers.
//!
//! One method per file in [`methods`] behind [`method::TrainingMethod`]; the loop, logs,
//! selection and resume in [`run`]; per-data-set settings in [`presets`].

pub mod method;
pub mod methods;
pub mod presets;
pub mod run;
pub mod sgd;
pub mod temperature;
