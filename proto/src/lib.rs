//! The gRPC contract of the robust-fairness benchmark (`rfb.v1`) and the metric definitions
//! that the evaluator and every client share. No libtorch here.

pub mod attacks;
pub mod eps_sweep;
pub mod metrics;
pub mod sanity;

/// Generated messages and services of package `rfb.v1`.
pub mod v1 {
    tonic::include_proto!("rfb.v1");

    /// Encoded file descriptor set, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("rfb_v1_descriptor");
}

/// Version of the contract, reported in results.
pub const PROTO_VERSION: &str = "rfb.v1";
