//! Everything tensor-side that the robust-fairness benchmark shares: model architectures,
//! data sets and checkpoints. Built on `tch` (libtorch 2.13).

pub mod attacks;
pub mod checkpoint;
pub mod data;
pub mod models;

pub use tch;
