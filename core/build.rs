fn main() {
    rfb_build_support::emit_libtorch_rpath();
    // The code that decides attack results: caches key on it (rfb_core::attacks::SOURCE_HASH).
    let sources = ["src/attacks", "src/classifier.rs", "src/models", "src/data"];
    rfb_build_support::emit_source_hash("RFB_RESULT_SOURCE_HASH", &sources);
}
