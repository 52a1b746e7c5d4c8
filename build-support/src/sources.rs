//! The sources that decide the benchmark's numbers, and their hash.
//!
//! `scripts/digits-benchmark.sh` records the hash in every `results/**/run.json` it writes
//! (`sources_sha256`, and one hash per path in `sources`); `bench-client check-results` and the
//! test `bench-client/tests/results_current.rs` compare it with the checked-out sources, so a
//! commit that changes what decides the results without regenerating them fails the tests.
//!
//! The hash covers file contents and paths relative to the repository root (with `/`), in
//! sorted order; hidden files and editor backups (`.name`, `name~`) are left out. It does not
//! depend on git, the file system's listing order or the checkout's location.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// What decides the committed results, relative to the repository root: the models, data,
/// attacks and training (core, trainer), the evaluation engine and service (evaluator), the
/// contract and metric definitions (proto), the statistics, tables and plots (bench-client),
/// the script that runs the job with its settings, and the pinned libtorch
/// (python/requirements.txt). Cargo.lock is not in it: the numerical work is libtorch's, and
/// the Rust dependencies that touch numbers (statrs for intervals and p-values) are pinned there
/// and rarely change; regenerate by hand when one does.
pub const RESULT_SOURCES: &[&str] =
    &["core/src", "trainer/src", "evaluator/src", "proto", "bench-client/src", "scripts/digits-benchmark.sh", "python/requirements.txt"];

/// The part of [`RESULT_SOURCES`] that decides trained weights: the main job retrains instead
/// of reusing a finished run when these changed since it was trained.
pub const TRAINING_SOURCES: &[&str] = &["core/src", "trainer/src", "scripts/digits-benchmark.sh", "python/requirements.txt"];

/// A source path that could not be read.
#[derive(Debug)]
pub struct SourcesError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

impl fmt::Display for SourcesError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot read {}: {}", self.path.display(), self.source)
    }
}

impl std::error::Error for SourcesError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// The hash of a set of source paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceHashes {
    /// sha256 of every file of every path (64 hex digits).
    pub total: String,
    /// Per path as given, the first 16 hex digits of the sha256 of its files: says which part
    /// changed.
    pub per_path: BTreeMap<String, String>,
}

fn skipped(name: &str) -> bool {
    name.starts_with('.') || name.ends_with('~')
}

fn collect(root: &Path, path: &Path, out: &mut Vec<(String, PathBuf)>) -> Result<(), SourcesError> {
    let error = |source| SourcesError { path: path.to_path_buf(), source };
    let metadata = std::fs::metadata(path).map_err(error)?;
    if metadata.is_dir() {
        for entry in std::fs::read_dir(path).map_err(error)? {
            let entry = entry.map_err(error)?;
            if !skipped(&entry.file_name().to_string_lossy()) {
                collect(root, &entry.path(), out)?;
            }
        }
    } else {
        let relative = path.strip_prefix(root).unwrap_or(path);
        let name = relative.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect::<Vec<_>>().join("/");
        out.push((name, path.to_path_buf()));
    }
    Ok(())
}

fn digest(files: &[(String, PathBuf)]) -> Result<Vec<u8>, SourcesError> {
    let mut hasher = Sha256::new();
    for (name, path) in files {
        let contents = std::fs::read(path).map_err(|source| SourcesError { path: path.clone(), source })?;
        hasher.update(name.as_bytes());
        hasher.update([0u8]);
        hasher.update((contents.len() as u64).to_le_bytes());
        hasher.update(&contents);
    }
    Ok(hasher.finalize().to_vec())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hashes `paths` (files or directories, relative to `root`). A path that does not exist is an
/// error: the list is meant to name what is there.
pub fn hash_sources(root: &Path, paths: &[&str]) -> Result<SourceHashes, SourcesError> {
    let mut all = Vec::new();
    let mut per_path = BTreeMap::new();
    for path in paths {
        let mut files = Vec::new();
        collect(root, &root.join(path), &mut files)?;
        files.sort();
        per_path.insert(path.to_string(), hex(&digest(&files)?[..8]));
        all.extend(files);
    }
    all.sort();
    all.dedup();
    Ok(SourceHashes { total: hex(&digest(&all)?), per_path })
}

/// The repository root above `start`: the first directory that holds the workspace's
/// `Cargo.toml` and `scripts/digits-benchmark.sh`.
pub fn find_root(start: &Path) -> Option<PathBuf> {
    let start = start.canonicalize().ok()?;
    start.ancestors().find(|d| d.join("Cargo.toml").is_file() && d.join("scripts/digits-benchmark.sh").is_file()).map(Path::to_path_buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[(&str, &str)]) -> PathBuf {
        let root = std::env::temp_dir().join(format!(
            "rfb-sources-{}-{}",
            std::process::id(),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
        ));
        for (name, text) in files {
            let path = root.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        root
    }

    #[test]
    fn the_hash_follows_contents_and_names_not_listing_order_or_location() {
        let files = [("core/src/a.rs", "fn a() {}"), ("core/src/b/c.rs", "fn c() {}"), ("scripts/run.sh", "echo")];
        let one = tree(&files);
        let mut reversed = files;
        reversed.reverse();
        let two = tree(&reversed);
        let paths = ["core/src", "scripts/run.sh"];
        let a = hash_sources(&one, &paths).unwrap();
        let b = hash_sources(&two, &paths).unwrap();
        assert_eq!(a, b, "created in another order, in another place");
        assert_eq!(a.total.len(), 64);
        assert_eq!(a.per_path.keys().collect::<Vec<_>>(), ["core/src", "scripts/run.sh"]);

        // Editor leftovers and hidden files do not count.
        std::fs::write(two.join("core/src/a.rs~"), "old").unwrap();
        std::fs::write(two.join("core/src/.a.rs.swp"), "swap").unwrap();
        assert_eq!(hash_sources(&two, &paths).unwrap(), a);

        // A changed byte, a renamed file or a new file does.
        std::fs::write(two.join("core/src/a.rs"), "fn a() { }").unwrap();
        let changed = hash_sources(&two, &paths).unwrap();
        assert_ne!(changed.total, a.total);
        assert_ne!(changed.per_path["core/src"], a.per_path["core/src"]);
        assert_eq!(changed.per_path["scripts/run.sh"], a.per_path["scripts/run.sh"], "only the changed part differs");
        std::fs::write(two.join("core/src/a.rs"), "fn a() {}").unwrap();
        std::fs::rename(two.join("core/src/b/c.rs"), two.join("core/src/b/d.rs")).unwrap();
        assert_ne!(hash_sources(&two, &paths).unwrap().total, a.total);

        assert!(hash_sources(&one, &["missing"]).is_err(), "a declared path must exist");
        let _ = std::fs::remove_dir_all(one);
        let _ = std::fs::remove_dir_all(two);
    }

    #[test]
    fn the_declared_sources_exist_in_this_repository() {
        let root = find_root(Path::new(env!("CARGO_MANIFEST_DIR"))).expect("the repository root");
        let hashes = hash_sources(&root, RESULT_SOURCES).unwrap();
        assert_eq!(hashes.per_path.len(), RESULT_SOURCES.len());
        assert!(TRAINING_SOURCES.iter().all(|p| RESULT_SOURCES.contains(p)));
    }
}
