//! The evaluation engine of the robust-fairness benchmark and its gRPC service (`rfb.v1`).
//!
//! A request flows one way: validate ([`request`]), prepare ([`catalog`]), queue ([`worker`]),
//! compute ([`engine`]), store ([`cache`]).
//!
//! * [`request`]: the limits, the errors (one per gRPC status), attack specs in canonical form
//!   and the attacks they build, the cost model, the prepared forms and result assembly.
//! * [`catalog`]: the models directory (name resolution that refuses escapes, listings), the
//!   class counts of the data splits, and the preparation of requests before they are queued.
//! * [`engine`]: running the attacks of a prepared evaluation per class on a model.
//! * [`runner`]: where that runs: a sandboxed worker process (the default) or this process.
//! * [`model_process`]: the worker processes that run model code: starting, talking to,
//!   killing them, and the worker's own side (`evaluator sandboxed-worker`).
//! * [`sandbox`]: the confinement a worker applies to itself before model code runs (Landlock,
//!   seccomp, rlimits), and the [`sandbox::Protection`] the machine allows.
//! * [`cache`]: one JSON file per attack result, keyed by everything that determines it.
//! * [`worker`]: the bounded, fair queue and the one thread that owns the models and the
//!   device, with its health.
//! * [`service`]: the tonic service, health, reflection, authentication, TLS, keepalive and
//!   graceful shutdown.
//! * [`auth`]: the bearer-token interceptor.
//! * [`import`]: a model file made into a checkpoint directory (`evaluator import`, uploads).
//! * [`uploads`]: models sent over gRPC (UploadModel, DeleteModel): checks, per-client limits,
//!   staging and atomic publication under `uploads/<client>/`.
//! * [`table`]: the per-class text table that `evaluator eval` prints.

pub mod auth;
pub mod cache;
pub mod catalog;
pub mod engine;
pub mod import;
pub mod model_process;
pub mod request;
pub mod runner;
pub mod sandbox;
pub mod service;
pub mod table;
pub mod uploads;
pub mod worker;

pub use catalog::{Catalog, EngineConfig};
pub use engine::Engine;
pub use request::{EngineError, Limits};

/// This crate's version, as reported in results.
pub fn evaluator_version() -> String {
    format!("rfb-evaluator {}", env!("CARGO_PKG_VERSION"))
}

/// Versions reported with every result.
pub fn versions() -> rfb_proto::v1::Versions {
    rfb_proto::v1::Versions {
        evaluator: evaluator_version(),
        libtorch: rfb_core::checkpoint::libtorch_version(),
        proto: rfb_proto::PROTO_VERSION.to_string(),
    }
}

/// Short name of a device for reports: `cpu`, `cuda:0`, ...
pub fn device_name(device: tch::Device) -> String {
    match device {
        tch::Device::Cpu => "cpu".into(),
        tch::Device::Cuda(index) => format!("cuda:{index}"),
        other => format!("{other:?}").to_lowercase(),
    }
}
