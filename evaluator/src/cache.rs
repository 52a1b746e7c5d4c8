//! The result cache: one JSON file per attack result, `<dir>/<key>.json`.
//!
//! The key is the sha256 of the canonical JSON of everything that determines a result (see
//! [`crate::request::key_material`]): the weights' sha256 and a hash of every manifest field
//! that changes the function the model computes (architecture, classes, input shape,
//! normalisation, ...), the data set, split, examples per class and the sha256 of the split's
//! contents as loaded, the attack spec with its defaults filled in (seed included), the
//! precision, the kind of device, the code versions and the hash of the sources that decide
//! attack results. The batch size is part of it at fp32-fast only: fp32 and bf16 results do not
//! depend on it, but fp32-fast's folded copy rounds differently per batch. Each file embeds its
//! key and the material it was computed from; an entry that does not parse, whose key or
//! material does not hash to the file's name, that is a symbolic link, or whose counts are
//! inconsistent is reported as corrupt and recomputed, never trusted.
//!
//! Writes are atomic and safe for replicas sharing the directory (every replica in a container
//! is PID 1, so names made from a process id collide): the entry goes to a temporary file with an
//! unpredictable name, created exclusively (`O_EXCL`: an existing file or a planted symbolic
//! link at that name makes the creation fail instead of being followed), is fsynced, and is
//! renamed over `<key>.json` (the last writer wins whole; a reader sees one whole entry or none).

use std::path::{Path, PathBuf};

use rfb_core::attacks::{ComponentReport, SanityFlags};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Bumped when the stored form or the meaning of a result changes (it is part of every key).
/// 2: bf16 results are judged by the fp32 weights.
/// 3: per-example random streams, the reference's CW loss, APGD schedule and Square schedule;
///    per-component reports.
/// 4: keys carry the model's function hash (manifest fields, not only the weights), the data
///    split's content hash, and at fp32-fast the batch size.
/// 5: results carry the adversarial confusion (a schema-4 entry has none, so it is not reused).
pub const CACHE_SCHEMA: u32 = 5;

/// One attack's result as the cache stores it (the wire result is assembled from it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredResult {
    pub attack_name: String,
    pub class_names: Vec<String>,
    pub correct: Vec<i64>,
    pub total: Vec<i64>,
    /// `confusion[true_class][predicted_class]` after the attack ([`rfb_core::attacks::Confusion`]):
    /// rows add up to `total`, the diagonal is `correct`.
    pub confusion: Vec<Vec<i64>>,
    pub sanity: Option<SanityFlags>,
    /// What each component did (seconds, points attacked, robust per class after it).
    #[serde(default)]
    pub components: Vec<ComponentReport>,
    /// Device the result was computed on.
    pub device: String,
    /// Seconds the computation took (not the cache look-up).
    pub elapsed_seconds: f64,
    pub evaluator_version: String,
    pub created_at: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    key: String,
    material: serde_json::Value,
    result: StoredResult,
}

/// What a look-up found (short-lived: the size of a whole result in the Hit variant is fine).
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Lookup {
    Hit(StoredResult),
    Miss,
    /// The file exists but cannot be trusted; the reason says why.
    Corrupt(String),
}

/// sha256 (hex) of the canonical JSON of `material`.
pub fn cache_key(material: &serde_json::Value) -> String {
    let bytes = serde_json::to_vec(material).expect("JSON values always serialise");
    Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Largest cache entry read (a result with 200 classes and its components is tens of KB).
const MAX_ENTRY_BYTES: u64 = 16 << 20;

/// An entry's bytes: opened without following a link (the check before the open could be
/// raced: O_NOFOLLOW makes the open itself refuse one), a regular file by its open handle, and
/// at most [`MAX_ENTRY_BYTES`] of it.
fn read_entry_file(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK);
    }
    let file = options.open(path)?;
    let metadata = file.metadata()?;
    if !metadata.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    if metadata.len() > MAX_ENTRY_BYTES {
        return Err(std::io::Error::other(format!("{} bytes, more than an entry can be", metadata.len())));
    }
    let mut bytes = Vec::with_capacity(metadata.len() as usize);
    file.take(MAX_ENTRY_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_ENTRY_BYTES {
        return Err(std::io::Error::other("grew past the size an entry can be while it was read"));
    }
    Ok(bytes)
}

/// A directory of cached results.
#[derive(Debug, Clone)]
pub struct ResultCache {
    dir: PathBuf,
}

impl ResultCache {
    /// Uses (and creates) `dir`.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(ResultCache { dir: dir.to_path_buf() })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// File that holds the result with `key`.
    pub fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.json"))
    }

    pub fn load(&self, key: &str, material: &serde_json::Value) -> Lookup {
        let path = self.path(key);
        // A link planted in a shared directory is not followed (it could point anywhere).
        match std::fs::symlink_metadata(&path) {
            Ok(metadata) if !metadata.file_type().is_file() => return Lookup::Corrupt(format!("{} is not a regular file", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Lookup::Miss,
            _ => {}
        }
        let bytes = match read_entry_file(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Lookup::Miss,
            Err(e) => return Lookup::Corrupt(format!("cannot read {}: {e}", path.display())),
        };
        let entry: Entry = match serde_json::from_slice(&bytes) {
            Ok(entry) => entry,
            Err(e) => return Lookup::Corrupt(format!("{} does not parse: {e}", path.display())),
        };
        if entry.key != key || cache_key(&entry.material) != key || entry.material != *material {
            return Lookup::Corrupt(format!("{}: the embedded key does not match the request", path.display()));
        }
        let result = entry.result;
        let classes = result.class_names.len();
        if classes == 0
            || result.correct.len() != classes
            || result.total.len() != classes
            || result.correct.iter().zip(&result.total).any(|(&c, &t)| c < 0 || c > t)
            || !confusion_fits(&result.confusion, &result.correct, &result.total)
        {
            return Lookup::Corrupt(format!("{}: inconsistent class counts", path.display()));
        }
        Lookup::Hit(result)
    }

    pub fn store(&self, key: &str, material: &serde_json::Value, result: &StoredResult) -> Result<(), String> {
        let entry = Entry { key: key.to_string(), material: material.clone(), result: result.clone() };
        let bytes = serde_json::to_vec_pretty(&entry).map_err(|e| e.to_string())?;
        let path = self.path(key);
        write_atomic(&path, &bytes).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// Whether `confusion` is `classes x classes`, non-negative, with rows adding up to `total` and
/// the diagonal equal to `correct` (what a stored or a worker's result must satisfy).
pub fn confusion_fits(confusion: &[Vec<i64>], correct: &[i64], total: &[i64]) -> bool {
    let classes = total.len();
    confusion.len() == classes
        && correct.len() == classes
        && confusion.iter().enumerate().all(|(k, row)| {
            row.len() == classes
                && row.iter().all(|&c| c >= 0)
                && row.iter().try_fold(0i64, |sum, &c| sum.checked_add(c)) == Some(total[k])
                && row[k] == correct[k]
        })
}

/// Temporary files: hidden (`.` first, so listings skip them), 16 random characters, and
/// readable by the other replicas (tempfile's default is 0600).
fn temporary_names() -> tempfile::Builder<'static, 'static> {
    use std::os::unix::fs::PermissionsExt;
    let mut builder = tempfile::Builder::new();
    builder.prefix(".").suffix(".tmp").rand_bytes(16).permissions(std::fs::Permissions::from_mode(0o644));
    builder
}

/// Writes `bytes` to `path` atomically and safely in a directory others write to: a sibling
/// temporary file with an unpredictable name, created exclusively (never through a symbolic
/// link), fsynced, then renamed over `path` (which replaces a link there, never follows it);
/// the directory is fsynced after. On failure the temporary file is removed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic_with(path, bytes, &temporary_names())
}

fn write_atomic_with(path: &Path, bytes: &[u8], names: &tempfile::Builder) -> std::io::Result<()> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    // O_CREAT | O_EXCL (and mode 0600): fails on any existing name, links included.
    let mut file = names.tempfile_in(dir)?;
    file.write_all(bytes)?;
    file.as_file().sync_all()?;
    // Dropping the NamedTempFile on an error removes it.
    file.persist(path).map_err(|e| e.error)?;
    if let Ok(dir_handle) = std::fs::File::open(dir) {
        let _ = dir_handle.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result() -> StoredResult {
        StoredResult {
            attack_name: "PGD-20".into(),
            class_names: vec!["a".into(), "b".into()],
            correct: vec![1, 2],
            total: vec![3, 3],
            confusion: vec![vec![1, 2], vec![1, 2]],
            sanity: None,
            components: Vec::new(),
            device: "cpu".into(),
            elapsed_seconds: 0.5,
            evaluator_version: "test".into(),
            created_at: "now".into(),
        }
    }

    #[test]
    fn round_trip_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ResultCache::open(dir.path()).unwrap();
        let material = serde_json::json!({"attack": "pgd", "seed": 1});
        let key = cache_key(&material);
        assert!(matches!(cache.load(&key, &material), Lookup::Miss));
        cache.store(&key, &material, &result()).unwrap();
        match cache.load(&key, &material) {
            Lookup::Hit(found) => assert_eq!(found, result()),
            other => panic!("{other:?}"),
        }
        // Another request's material under this key: refused.
        let other = serde_json::json!({"attack": "pgd", "seed": 2});
        assert!(matches!(cache.load(&key, &other), Lookup::Corrupt(_)));
        // Truncated file: refused.
        let bytes = std::fs::read(cache.path(&key)).unwrap();
        std::fs::write(cache.path(&key), &bytes[..bytes.len() / 2]).unwrap();
        assert!(matches!(cache.load(&key, &material), Lookup::Corrupt(_)));
        // Counts that cannot be: refused.
        let mut bad = result();
        bad.correct = vec![4, 0];
        cache.store(&key, &material, &bad).unwrap();
        assert!(matches!(cache.load(&key, &material), Lookup::Corrupt(_)));
        // A confusion whose diagonal, rows or shape disagree with the counts: refused.
        for confusion in [vec![vec![2, 1], vec![1, 2]], vec![vec![1, 1], vec![1, 2]], vec![vec![1, 2]], vec![vec![1, 2, 0], vec![1, 2, 0]]]
        {
            let bad = StoredResult { confusion, ..result() };
            cache.store(&key, &material, &bad).unwrap();
            assert!(matches!(cache.load(&key, &material), Lookup::Corrupt(_)), "{:?}", bad.confusion);
        }
    }

    /// An entry written by the code before confusions (schema 4, no `confusion`) is never served:
    /// its key was made with the old schema number, and under the current key it would not parse.
    #[test]
    fn an_old_schema_entry_is_not_reused() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ResultCache::open(dir.path()).unwrap();
        let material = |schema: u32| serde_json::json!({"schema": schema, "attack": "pgd", "seed": 1});
        let mut old_result = serde_json::to_value(result()).unwrap();
        old_result.as_object_mut().unwrap().remove("confusion");
        let old_key = cache_key(&material(4));
        let old = serde_json::json!({"key": old_key, "material": material(4), "result": old_result});
        std::fs::write(cache.path(&old_key), serde_json::to_vec(&old).unwrap()).unwrap();
        let key = cache_key(&material(CACHE_SCHEMA));
        assert_ne!(key, old_key);
        assert!(matches!(cache.load(&key, &material(CACHE_SCHEMA)), Lookup::Miss));
        // The old entry copied under the current key (material rewritten to match): refused.
        let moved = serde_json::json!({"key": key, "material": material(CACHE_SCHEMA), "result": old["result"]});
        std::fs::write(cache.path(&key), serde_json::to_vec(&moved).unwrap()).unwrap();
        assert!(matches!(cache.load(&key, &material(CACHE_SCHEMA)), Lookup::Corrupt(_)));
    }

    /// Replicas sharing one cache directory: many writers store the same key (and others)
    /// while readers look them up. A reader finds a whole entry or none, never a torn or mixed
    /// one, and no temporary file is left behind.
    #[test]
    fn concurrent_writers_and_readers_share_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let material = serde_json::json!({"attack": "pgd", "seed": 1});
        let key = cache_key(&material);
        let writers = 6;
        let rounds = 40;
        std::thread::scope(|scope| {
            for w in 0..writers {
                let (dir, material, key) = (dir.path(), &material, &key);
                scope.spawn(move || {
                    // Each writer opens the directory as a replica would.
                    let cache = ResultCache::open(dir).unwrap();
                    for round in 0..rounds {
                        let mut stored = result();
                        stored.elapsed_seconds = (w * rounds + round) as f64;
                        stored.created_at = "x".repeat(1 + (w * 997 + round * 131) % 4000);
                        cache.store(key, material, &stored).unwrap();
                        let own = serde_json::json!({"writer": w, "round": round});
                        cache.store(&cache_key(&own), &own, &stored).unwrap();
                    }
                });
            }
            for _ in 0..2 {
                let (dir, material, key) = (dir.path(), &material, &key);
                scope.spawn(move || {
                    let cache = ResultCache::open(dir).unwrap();
                    for _ in 0..writers * rounds {
                        match cache.load(key, material) {
                            Lookup::Miss => {}
                            Lookup::Hit(found) => {
                                // Whole: the padding matches the writer and round it came from.
                                let n = found.elapsed_seconds as usize;
                                let (w, round) = (n / rounds, n % rounds);
                                assert_eq!(found.created_at.len(), 1 + (w * 997 + round * 131) % 4000);
                            }
                            Lookup::Corrupt(why) => panic!("a reader saw a torn entry: {why}"),
                        }
                    }
                });
            }
        });
        let cache = ResultCache::open(dir.path()).unwrap();
        assert!(matches!(cache.load(&key, &material), Lookup::Hit(_)));
        let names: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(names.len(), 1 + writers * rounds, "one file per key and nothing else: {names:?}");
        assert!(names.iter().all(|n| n.ends_with(".json") && !n.starts_with('.')), "{names:?}");
    }

    /// A symbolic link planted where the writer creates its temporary file (by someone who
    /// shares the directory and guessed the name) is never written through: the exclusive
    /// creation fails and the link's target stays as it was. Links at the names the former
    /// writer used (`.<key>.json.tmp-<pid>-<n>`, the same in every container's PID 1) are left
    /// alone, and a link at an entry's own name is neither trusted nor written through.
    /// An entry too large to be a result is not read into memory, whatever it holds.
    #[test]
    fn an_oversized_entry_is_corrupt_and_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ResultCache::open(dir.path()).unwrap();
        let material = serde_json::json!({"a": 1});
        let key = cache_key(&material);
        let file = std::fs::File::create(cache.path(&key)).unwrap();
        file.set_len(MAX_ENTRY_BYTES + 1).unwrap();
        match cache.load(&key, &material) {
            Lookup::Corrupt(reason) => assert!(reason.contains("more than an entry can be"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn planted_symbolic_links_are_not_followed() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();

        // The temporary name known in advance (no random part): creation fails, nothing is
        // written through the link, to an existing target or to a dangling one.
        let dangling = outside.path().join("created-through-the-link");
        for (name, target) in [(".planted", &victim), (".dangling", &dangling)] {
            symlink(target, dir.path().join(format!("{name}.tmp"))).unwrap();
            let mut names = tempfile::Builder::new();
            names.prefix(name).suffix(".tmp").rand_bytes(0);
            let error = write_atomic_with(&dir.path().join("entry.json"), b"attacker's choice", &names).unwrap_err();
            assert_eq!(error.kind(), std::io::ErrorKind::AlreadyExists, "{name}: {error}");
        }
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert!(!dangling.exists(), "nothing was created through the dangling link");
        assert!(!dir.path().join("entry.json").exists());

        // The cache's own writes, with links at every name a process-id scheme would use.
        let cache = ResultCache::open(dir.path()).unwrap();
        let material = serde_json::json!({"attack": "pgd", "seed": 1});
        let key = cache_key(&material);
        for pid in [1, std::process::id()] {
            for n in 0..4 {
                symlink(&victim, dir.path().join(format!(".{key}.json.tmp-{pid}-{n}"))).unwrap();
            }
        }
        cache.store(&key, &material, &result()).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert!(matches!(cache.load(&key, &material), Lookup::Hit(_)));

        // An entry that is a link (to a valid entry elsewhere) is not trusted; storing replaces
        // the link itself and leaves its target alone.
        let elsewhere = outside.path().join("entry.json");
        std::fs::copy(cache.path(&key), &elsewhere).unwrap();
        std::fs::remove_file(cache.path(&key)).unwrap();
        symlink(&elsewhere, cache.path(&key)).unwrap();
        assert!(matches!(cache.load(&key, &material), Lookup::Corrupt(_)));
        let before = std::fs::read(&elsewhere).unwrap();
        let mut changed = result();
        changed.elapsed_seconds = 9.0;
        cache.store(&key, &material, &changed).unwrap();
        assert!(std::fs::symlink_metadata(cache.path(&key)).unwrap().file_type().is_file());
        assert_eq!(std::fs::read(&elsewhere).unwrap(), before);
        match cache.load(&key, &material) {
            Lookup::Hit(found) => assert_eq!(found, changed),
            other => panic!("{other:?}"),
        }
        // Temporary files are hidden, unpredictable and gone after the writes.
        let temporary: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert_eq!(temporary.len(), 2, "only the two planted links: {temporary:?}");
    }
}
