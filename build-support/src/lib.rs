//! Build-script helper shared by every crate that links libtorch.
//!
//! `torch-sys` declares `links = "tch"` and publishes the libtorch library directory as
//! `DEP_TCH_LIBTORCH_LIB` to the crates that depend on it directly. Baking that directory into
//! our binaries and test executables as an rpath means nobody has to export
//! `LD_LIBRARY_PATH` to run them (DESIGN.md section 3).

/// Emits the linker arguments that put the libtorch directory on the runtime search path.
/// Call it from `build.rs` of a crate that depends on `torch-sys` directly.
pub fn emit_libtorch_rpath() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    match std::env::var("DEP_TCH_LIBTORCH_LIB") {
        Ok(dir) if !dir.is_empty() => {
            // Both spellings: new dtags (RUNPATH) are not followed for indirect dependencies
            // of libtorch on some loaders, so ask for the old RPATH as well.
            println!("cargo:rustc-link-arg=-Wl,--disable-new-dtags");
            println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
        }
        _ => println!(
            "cargo:warning=DEP_TCH_LIBTORCH_LIB is not set: binaries will need LD_LIBRARY_PATH to find libtorch"
        ),
    }
}
