//! The result cache: one JSON file per attack result, `<dir>/<key>.json`.
//!
//! The key is the sha256 of the canonical JSON of everything that determines a result (see
//! [`crate::catalog::key_material`]): the weights' sha256, the data set, split and examples per
//! class, the attack spec with its defaults filled in (seed included), the precision, the kind
//! of device, the code versions and the hash of the sources that decide attack results. The
//! batch size is deliberately not part of it (it does not change a result). Each file embeds its key and
//! the material it was computed from; an entry that does not parse, whose key or material does
//! not hash to the file's name, or whose counts are inconsistent is reported as corrupt and
//! recomputed, never trusted. Writes are atomic (temporary file, fsync, rename).

use std::path::{Path, PathBuf};

use rfb_core::attacks::{ComponentReport, SanityFlags};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Bumped when the stored form or the meaning of a result changes (it is part of every key).
/// 2: bf16 results are judged by the fp32 weights.
/// 3: per-example random streams, the reference's CW loss, APGD schedule and Square schedule;
///    per-component reports.
pub const CACHE_SCHEMA: u32 = 3;

/// One attack's result as the cache stores it (the wire result is assembled from it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredResult {
    pub attack_name: String,
    pub class_names: Vec<String>,
    pub correct: Vec<i64>,
    pub total: Vec<i64>,
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

/// What a look-up found.
#[derive(Debug)]
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
        let bytes = match std::fs::read(&path) {
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
        {
            return Lookup::Corrupt(format!("{}: inconsistent class counts", path.display()));
        }
        Lookup::Hit(result)
    }

    pub fn store(&self, key: &str, material: &serde_json::Value, result: &StoredResult) -> Result<(), String> {
        let entry = Entry { key: key.to_string(), material: material.clone(), result: result.clone() };
        let bytes = serde_json::to_vec_pretty(&entry).map_err(|e| e.to_string())?;
        rfb_core::checkpoint::write_atomic(&self.path(key), &bytes).map_err(|e| e.to_string())
    }
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
        let names: Vec<String> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(names.len(), 1 + writers * rounds, "one file per key and nothing else: {names:?}");
        assert!(names.iter().all(|n| n.ends_with(".json") && !n.starts_with('.')), "{names:?}");
    }
}
