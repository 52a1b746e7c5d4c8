//! Everything tensor-side that the robust-fairness benchmark shares: model architectures,
//! data sets and checkpoints. Built on `tch` (libtorch 2.13).

// `!(x <= bound)` is deliberate throughout: a NaN must fail every check.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

pub mod allocator;
pub mod attacks;
pub mod checkpoint;
pub mod classifier;
pub mod data;
pub mod device_settings;
pub mod guard;
pub mod host_read;
pub mod models;

pub use tch;
