fn main() {
    rfb_build_support::emit_libtorch_rpath();
}
