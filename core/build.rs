fn main() {
    rfb_build_support::emit_libtorch_rpath();
    // The code that decides attack results: caches key on it (rfb_core::attacks::SOURCE_HASH).
    rfb_build_support::emit_source_hash("RFB_RESULT_SOURCE_HASH", &["src/attacks", "src/models", "src/data"]);
}
