//! Generates the Rust code of `proto/rfb/v1/evaluator.proto` with a vendored `protoc`, so that
//! building needs no system protobuf compiler. Also writes the file descriptor set that the
//! server's reflection service publishes.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; prost-build reads PROTOC from the environment.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("rfb_v1_descriptor.bin"))
        .compile_protos(&["proto/rfb/v1/evaluator.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto/rfb/v1/evaluator.proto");
    Ok(())
}
