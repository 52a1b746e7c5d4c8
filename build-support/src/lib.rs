//! Build-script helper shared by every crate that links libtorch, the hash of the sources that
//! decide the benchmark's results ([`sources`]), and the shell quoting of the command lines we
//! record and generate ([`shell`]).
//!
//! `torch-sys` declares `links = "tch"` and publishes the libtorch library directory as
//! `DEP_TCH_LIBTORCH_LIB` to the crates that depend on it directly. Baking that directory into
//! our binaries and test executables as an rpath means nobody has to export
//! `LD_LIBRARY_PATH` to run them (README, "Two commands").

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
