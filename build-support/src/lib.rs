//! Build-script helper shared by every crate that links libtorch, the hash of the sources that
//! decide the benchmark's results ([`sources`]), and the shell quoting of the command lines we
//! record and generate ([`shell`]).
//!
//! `torch-sys` declares `links = "tch"` and publishes the libtorch library directory as
//! `DEP_TCH_LIBTORCH_LIB` to the crates that depend on it directly. Baking that directory into
//! our binaries and test executables as an rpath means nobody has to export
//! `LD_LIBRARY_PATH` to run them (README, "Two commands").

/// Emits the linker arguments that put the libtorch directory on the runtime search path and
/// keep libtorch's CUDA library loaded. Call it from `build.rs` of a crate that depends on
/// `torch-sys` directly.
///
/// - `RFB_LIBTORCH_RUNTIME_DIRS` (colon-separated) puts further directories first on that
///   path: a build made here for another machine names where libtorch lies there (for the GPU
///   machine, its `/opt/torch/.venv` PyTorch; `scripts/build-for-device.sh`), and the binaries
///   still find the build's own libtorch here.
/// - Where the libtorch directory holds `libtorch_cuda.so`, the binaries list it as needed
///   (`--no-as-needed`): nothing of ours calls into it by name, so the linker's default
///   `--as-needed` dropped it, and without it loaded libtorch registers no CUDA backend and
///   `tch::Cuda::is_available()` is false on a GPU machine (docs/gpu.md).
pub fn emit_libtorch_rpath() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=RFB_LIBTORCH_RUNTIME_DIRS");
    let runtime_dirs: Vec<String> = std::env::var("RFB_LIBTORCH_RUNTIME_DIRS")
        .unwrap_or_default()
        .split(':')
        .filter(|dir| !dir.is_empty())
        .map(str::to_string)
        .collect();
    match std::env::var("DEP_TCH_LIBTORCH_LIB") {
        Ok(dir) if !dir.is_empty() => {
            // Both spellings: new dtags (RUNPATH) are not followed for indirect dependencies
            // of libtorch on some loaders, so ask for the old RPATH as well.
            println!("cargo:rustc-link-arg=-Wl,--disable-new-dtags");
            for runtime in &runtime_dirs {
                println!("cargo:rustc-link-arg=-Wl,-rpath,{runtime}");
            }
            println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
            let lib = std::path::Path::new(&dir);
            for cuda in ["torch_cuda", "c10_cuda"] {
                if lib.join(format!("lib{cuda}.so")).exists() {
                    println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-L{dir},-l{cuda},--as-needed");
                }
            }
        }
        _ => println!("cargo:warning=DEP_TCH_LIBTORCH_LIB is not set: binaries will need LD_LIBRARY_PATH to find libtorch"),
    }
}

/// Hashes (sha256) every file under `dirs` (directories or single files, relative to the crate's
/// manifest directory, walked in sorted order, paths included) and exposes the first 16 hex
/// digits to the crate as the environment variable `name`. Cargo re-runs the build script when
/// any of those files changes, so the value always describes the sources the crate was built from.
pub fn emit_source_hash(name: &str, dirs: &[&str]) {
    use sha2::{Digest, Sha256};
    let root = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in dirs {
        println!("cargo:rerun-if-changed={dir}");
        collect_files(&root.join(dir), &mut files);
    }
    files.sort();
    let mut hasher = Sha256::new();
    for file in &files {
        let relative = file.strip_prefix(&root).unwrap_or(file);
        hasher.update(relative.to_string_lossy().as_bytes());
        hasher.update([0u8]);
        let contents = std::fs::read(file).unwrap_or_default();
        hasher.update((contents.len() as u64).to_le_bytes());
        hasher.update(&contents);
    }
    let digest = hasher.finalize();
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    println!("cargo:rustc-env={name}={hex}");
}

fn collect_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    if dir.is_file() {
        out.push(dir.to_path_buf());
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_files(&path, out);
        } else {
            out.push(path);
        }
    }
}

pub mod shell;
pub mod sources;
