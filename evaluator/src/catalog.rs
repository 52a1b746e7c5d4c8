//! The models directory and the data a request will touch: model names (paths relative to the
//! models directory; anything that resolves outside it is refused), listings, the weights'
//! checksum and the model's function hash, data set compatibility, the split's class counts
//! (read from its labels before anything is loaded), the split's content hash (once every
//! field has been checked: the split is loaded once per process and handed to the engine) and
//! cache look-ups. [`Catalog::prepare`] is the "prepare" step of a request's way (see
//! [`crate::request`]). A [`Catalog`] is shared (`Sync`) between the server's request handlers
//! and the worker thread. Its [`PathRedactor`] takes the server's directories out of errors
//! meant for clients.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use rfb_core::checkpoint::{self, Manifest, MANIFEST_FILE};
use rfb_core::data::{self, CompactDataset, DatasetKind, Split};
use rfb_proto::v1::{AttackResult, EvaluateRequest, ModelInfo};
use sha2::{Digest, Sha256};
use tch::Device;

use crate::cache::{cache_key, Lookup, ResultCache, StoredResult};
use crate::request::{self, key_material, EngineError, PathRedactor, MAX_BATCH_SIZE};

pub use crate::request::{split_from_proto, split_to_proto, PreparedAttack, PreparedEvaluation};

/// A memo's lock: a panic elsewhere while it was held leaves a memo that is still usable (its
/// entries are whole values), so a poisoned lock is taken over, never propagated.
fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Default name of the cache directory inside the models directory (skipped by listings).
pub const DEFAULT_CACHE_DIR: &str = ".rfb-cache";
/// Default batch size when a request leaves it at 0.
pub const DEFAULT_BATCH_SIZE: i64 = 256;
/// How deep listings look for checkpoints below the models directory.
const MAX_LISTING_DEPTH: usize = 8;

/// How an engine is set up.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub models_dir: PathBuf,
    /// Directory of the CIFAR / Tiny-ImageNet files (digits is embedded).
    pub data_dir: Option<PathBuf>,
    /// `None`: `<models_dir>/.rfb-cache`.
    pub cache_dir: Option<PathBuf>,
    /// False turns the result cache off (neither read nor written).
    pub use_cache: bool,
    pub device: Device,
    /// Batch size for requests that leave it at 0.
    pub default_batch_size: i64,
    /// How model code runs: worker processes and their sandbox ([`crate::sandbox`]).
    pub sandbox: crate::sandbox::SandboxConfig,
}

impl EngineConfig {
    pub fn new(models_dir: impl Into<PathBuf>) -> Self {
        EngineConfig {
            models_dir: models_dir.into(),
            data_dir: None,
            cache_dir: None,
            use_cache: true,
            device: Device::Cpu,
            default_batch_size: DEFAULT_BATCH_SIZE,
            sandbox: Default::default(),
        }
    }
}

/// Parses `auto`, `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(text: &str) -> Result<Device, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "auto" => Ok(Device::cuda_if_available()),
        "cpu" => Ok(Device::Cpu),
        "cuda" | "gpu" => {
            if tch::Cuda::is_available() {
                Ok(Device::Cuda(0))
            } else {
                Err("--device cuda was asked for but no CUDA device is available".into())
            }
        }
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(index)) if (index as i64) < tch::Cuda::device_count() => Ok(Device::Cuda(index)),
            Some(Ok(index)) => Err(format!("CUDA device {index} does not exist")),
            _ => Err(format!("unknown device {text:?} (auto, cpu, cuda or cuda:N)")),
        },
    }
}

/// A split loaded for its hash: which one, the hash, the bytes.
type LoadedSplit = ((DatasetKind, Split), String, CompactDataset);

/// The models directory, the data directory, the result cache and a few memos.
pub struct Catalog {
    models_dir: PathBuf,
    data_dir: Option<PathBuf>,
    cache: Option<ResultCache>,
    device: Device,
    default_batch_size: i64,
    /// Weights file -> (length, modification time, sha256), so that unchanged files are not
    /// hashed again for every request.
    hashes: Mutex<HashMap<PathBuf, (u64, SystemTime, String)>>,
    /// Examples per class of the splits loaded so far.
    class_counts: Mutex<HashMap<(DatasetKind, Split), Vec<i64>>>,
    /// sha256 of each split's contents as this process last loaded it.
    split_hashes: Mutex<HashMap<(DatasetKind, Split), String>>,
    /// The split last loaded here for its hash, until the engine takes it: a split is read
    /// once per process, not once for the hash and again for the work.
    loaded: Mutex<Option<LoadedSplit>>,
    /// Held while a split is loaded for its hash, so that concurrent first requests load it once.
    hashing: Mutex<()>,
    /// Whether a split loaded for its hash is kept for this process's engine: not when models
    /// run in worker processes, which load it themselves (a large split would stay in memory
    /// for nothing).
    keep_loaded: bool,
    redactor: PathRedactor,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog")
            .field("models_dir", &self.models_dir)
            .field("data_dir", &self.data_dir)
            .field("cache", &self.cache.as_ref().map(|c| c.dir().to_path_buf()))
            .field("device", &self.device)
            .finish()
    }
}

impl Catalog {
    pub fn new(config: &EngineConfig) -> Result<Self, String> {
        let models_dir = config.models_dir.canonicalize().map_err(|e| format!("models directory {}: {e}", config.models_dir.display()))?;
        if !models_dir.is_dir() {
            return Err(format!("{} is not a directory", models_dir.display()));
        }
        let cache = if config.use_cache {
            let dir = config.cache_dir.clone().unwrap_or_else(|| models_dir.join(DEFAULT_CACHE_DIR));
            Some(ResultCache::open(&dir).map_err(|e| format!("cache directory {}: {e}", dir.display()))?)
        } else {
            None
        };
        if !(1..=MAX_BATCH_SIZE).contains(&config.default_batch_size) {
            return Err(format!("the default batch size must be in 1..={MAX_BATCH_SIZE}"));
        }
        // Each directory as configured, made absolute, and canonical (they differ through links).
        let absolute = |dir: &Path| std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
        let canonical = |dir: &Path| dir.canonicalize().unwrap_or_else(|_| absolute(dir));
        let mut dirs: Vec<(PathBuf, &'static str)> = vec![(absolute(&config.models_dir), ""), (models_dir.clone(), "")];
        if let Some(cache) = &cache {
            dirs.push((absolute(cache.dir()), "<cache-dir>"));
            dirs.push((canonical(cache.dir()), "<cache-dir>"));
        }
        if let Some(data) = &config.data_dir {
            dirs.push((absolute(data), "<data-dir>"));
            dirs.push((canonical(data), "<data-dir>"));
        }
        let redactor = PathRedactor::new(&dirs.iter().map(|(dir, shown)| (dir.as_path(), *shown)).collect::<Vec<_>>());
        Ok(Catalog {
            models_dir,
            data_dir: config.data_dir.clone(),
            cache,
            device: config.device,
            default_batch_size: config.default_batch_size,
            hashes: Mutex::new(HashMap::new()),
            class_counts: Mutex::new(HashMap::new()),
            split_hashes: Mutex::new(HashMap::new()),
            loaded: Mutex::new(None),
            keep_loaded: config.sandbox.in_process,
            hashing: Mutex::new(()),
            redactor,
        })
    }

    /// Takes the server's directories out of messages meant for clients.
    pub fn redactor(&self) -> &PathRedactor {
        &self.redactor
    }

    pub fn models_dir(&self) -> &Path {
        &self.models_dir
    }

    pub fn data_dir(&self) -> Option<&Path> {
        self.data_dir.as_deref()
    }

    pub fn device(&self) -> Device {
        self.device
    }

    pub fn cache_dir(&self) -> Option<&Path> {
        self.cache.as_ref().map(|c| c.dir())
    }

    /// The canonical checkpoint directory of `name`. Absolute names, `..` and anything that
    /// resolves outside the models directory (symbolic links included) are refused.
    pub fn resolve_model(&self, name: &str) -> Result<PathBuf, EngineError> {
        request::check_model_name(name)?;
        if name.trim().is_empty() {
            return Err(EngineError::InvalidArgument(
                "model: no model given: name a checkpoint directory relative to the models directory, e.g. \"absld-s1/best\"".into(),
            ));
        }
        let path = Path::new(name);
        if path.is_absolute() || path.has_root() {
            return Err(EngineError::InvalidArgument(format!(
                "model {name:?} is an absolute path; model names are relative to the models directory"
            )));
        }
        if path.components().any(|c| !matches!(c, Component::Normal(_) | Component::CurDir)) {
            return Err(EngineError::InvalidArgument(format!(
                "model {name:?} contains '..'; model names may not leave the models directory"
            )));
        }
        let joined = self.models_dir.join(path);
        let canonical = match joined.canonicalize() {
            Ok(canonical) => canonical,
            Err(_) => return Err(EngineError::NotFound(format!("unknown model {name:?}: no such directory under the models directory"))),
        };
        if !canonical.starts_with(&self.models_dir) {
            return Err(EngineError::InvalidArgument(format!(
                "model {name:?} resolves outside the models directory (through a symbolic link); refused"
            )));
        }
        if !canonical.is_dir() || !canonical.join(MANIFEST_FILE).is_file() {
            return Err(EngineError::NotFound(format!("unknown model {name:?}: not a checkpoint directory (no {MANIFEST_FILE})")));
        }
        Ok(canonical)
    }

    /// A model's description for clients: its manifest as stored, without server paths (a
    /// trainer records a distillation teacher's path in it).
    fn model_info(&self, name: &str, dir: &Path, manifest: &Manifest) -> ModelInfo {
        ModelInfo {
            name: name.to_string(),
            architecture: manifest.model.architecture.clone(),
            num_classes: manifest.model.num_classes,
            input_shape: manifest.model.input_shape.to_vec(),
            class_names: manifest.class_names.clone(),
            dataset: manifest.dataset.clone(),
            method: manifest.method.clone(),
            seed: manifest.seed,
            epoch: manifest.epoch,
            weights_sha256: manifest.weights_sha256.clone(),
            parameter_count: manifest.parameter_count,
            manifest_json: self.redactor.redact(&std::fs::read_to_string(dir.join(MANIFEST_FILE)).unwrap_or_default()),
        }
    }

    /// One model's manifest.
    pub fn describe(&self, name: &str) -> Result<ModelInfo, EngineError> {
        let dir = self.resolve_model(name)?;
        let manifest = checkpoint::read_manifest(&dir).map_err(|e| EngineError::from_checkpoint(name, e))?;
        Ok(self.model_info(&normalise_name(name), &dir, &manifest))
    }

    /// Every checkpoint directory (one with a manifest.json) below the models directory, by
    /// name, and the problems met on the way (unreadable manifests and directories, links that
    /// point outside). Directories whose name starts with `.` (the cache) are skipped; links
    /// that stay inside are followed (a checkpoint reachable by two names is listed twice),
    /// except links back up the tree.
    pub fn list_models(&self) -> (Vec<ModelInfo>, Vec<String>) {
        let mut models = Vec::new();
        let mut problems = Vec::new();
        let mut ancestors = vec![self.models_dir.clone()];
        self.walk(&self.models_dir, "", 0, &mut ancestors, &mut models, &mut problems);
        models.sort_by(|a, b| a.name.cmp(&b.name));
        problems.sort();
        (models, problems)
    }

    fn walk(
        &self,
        dir: &Path,
        prefix: &str,
        depth: usize,
        ancestors: &mut Vec<PathBuf>,
        models: &mut Vec<ModelInfo>,
        problems: &mut Vec<String>,
    ) {
        let shown = if prefix.is_empty() { "." } else { prefix };
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) => {
                problems.push(format!("{shown}: cannot read the directory: {e}"));
                return;
            }
        };
        let mut children: Vec<_> = entries.filter_map(Result::ok).collect();
        children.sort_by_key(|e| e.file_name());
        for entry in children {
            let file_name = entry.file_name().to_string_lossy().into_owned();
            if file_name.starts_with('.') {
                continue;
            }
            let name = if prefix.is_empty() { file_name.clone() } else { format!("{prefix}/{file_name}") };
            let Ok(file_type) = entry.file_type() else { continue };
            let path = entry.path();
            if file_type.is_symlink() {
                match path.canonicalize() {
                    Ok(target) if !target.starts_with(&self.models_dir) => {
                        if target.is_dir() {
                            problems.push(format!("{name}: symbolic link to a directory outside the models directory; ignored"));
                        }
                        continue;
                    }
                    Ok(target) if target.is_dir() => {}
                    _ => continue,
                }
            } else if !file_type.is_dir() {
                continue;
            }
            let Ok(canonical) = path.canonicalize() else { continue };
            if ancestors.contains(&canonical) {
                // A link back up the tree: following it would loop.
                continue;
            }
            if canonical.join(MANIFEST_FILE).exists() {
                match checkpoint::read_manifest(&canonical) {
                    Ok(manifest) => models.push(self.model_info(&name, &canonical, &manifest)),
                    Err(e) => problems.push(format!("{name}: {e}")),
                }
            } else if depth + 1 < MAX_LISTING_DEPTH {
                ancestors.push(canonical.clone());
                self.walk(&canonical, &name, depth + 1, ancestors, models, problems);
                ancestors.pop();
            }
        }
    }

    /// sha256 of a weights file, memoised by length and modification time.
    fn weights_sha256(&self, path: &Path) -> Result<String, std::io::Error> {
        let metadata = std::fs::metadata(path)?;
        let modified = metadata.modified()?;
        if let Some((length, time, sha)) = locked(&self.hashes).get(path) {
            if *length == metadata.len() && *time == modified {
                return Ok(sha.clone());
            }
        }
        let mut file = std::fs::File::open(path)?;
        let mut hasher = Sha256::new();
        std::io::copy(&mut file, &mut hasher)?;
        let sha: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
        locked(&self.hashes).insert(path.to_path_buf(), (metadata.len(), modified, sha.clone()));
        Ok(sha)
    }

    /// Records the class counts and the content hash of a split just loaded (the counts are
    /// those read from its labels unless the files changed since; then requests are checked
    /// against what was loaded).
    pub fn remember_split(&self, kind: DatasetKind, split: Split, sha256: &str, counts: Vec<i64>) {
        locked(&self.class_counts).insert((kind, split), counts);
        locked(&self.split_hashes).insert((kind, split), sha256.to_string());
    }

    /// sha256 of a split's contents as this process loaded it: remembered, or the split is
    /// loaded now (once per process; the engine then takes it, see [`Catalog::take_loaded`]).
    /// Blocking.
    pub fn data_sha256(&self, kind: DatasetKind, split: Split) -> Result<String, EngineError> {
        if let Some(sha) = locked(&self.split_hashes).get(&(kind, split)) {
            return Ok(sha.clone());
        }
        let _one_at_a_time = locked(&self.hashing);
        if let Some(sha) = locked(&self.split_hashes).get(&(kind, split)) {
            return Ok(sha.clone());
        }
        tracing::info!(dataset = %kind, %split, "loading data set");
        let loaded = data::load_compact(kind, split, self.data_dir.as_deref()).map_err(|e| EngineError::from_data(kind.name(), e))?;
        let sha = split_sha256_of(&loaded, kind)?;
        self.remember_split(kind, split, &sha, loaded.class_counts());
        if self.keep_loaded {
            *locked(&self.loaded) = Some(((kind, split), sha.clone(), loaded));
        }
        Ok(sha)
    }

    /// The split [`Catalog::data_sha256`] loaded, with its hash, if it is `(kind, split)` and
    /// nobody took it yet.
    pub fn take_loaded(&self, kind: DatasetKind, split: Split) -> Option<(String, CompactDataset)> {
        let mut slot = locked(&self.loaded);
        match slot.take() {
            Some((key, sha, loaded)) if key == (kind, split) => Some((sha, loaded)),
            other => {
                *slot = other;
                None
            }
        }
    }

    /// Examples per class of a split, read from its labels alone the first time (no pixel is
    /// loaded) and remembered. Blocking (reads the label bytes or lists the folders).
    pub fn class_counts(&self, kind: DatasetKind, split: Split) -> Result<Vec<i64>, EngineError> {
        if let Some(counts) = locked(&self.class_counts).get(&(kind, split)) {
            return Ok(counts.clone());
        }
        let counts = data::class_counts(kind, split, self.data_dir.as_deref()).map_err(|e| EngineError::from_data(kind.name(), e))?;
        locked(&self.class_counts).insert((kind, split), counts.clone());
        Ok(counts)
    }

    /// Checks a request against the limits, the model and the data it will touch, and fills in
    /// every default: nothing sized by the request is allocated before every field has been
    /// checked, and examples_per_class is checked against the split's class counts (read from
    /// its labels) for every data set and split, loaded or not. Blocking (reads and hashes the
    /// weights file, reads a split's labels the first time): call it off the async runtime.
    pub fn prepare(&self, request: &EvaluateRequest) -> Result<PreparedEvaluation, EngineError> {
        request::check_fields(request)?;
        let model = normalise_name(&request.model);
        let model_dir = self.resolve_model(&request.model)?;
        let manifest = checkpoint::read_manifest(&model_dir).map_err(|e| EngineError::from_checkpoint(&model, e))?;
        // model.safetensors, or model.pt for a TorchScript module.
        let weights_file = manifest.weights_file();
        let weights_path = model_dir.join(weights_file);
        if !weights_path.is_file() {
            return Err(EngineError::FailedPrecondition(format!("checkpoint {model:?} has no {weights_file}")));
        }
        let weights_sha256 = self
            .weights_sha256(&weights_path)
            .map_err(|e| EngineError::FailedPrecondition(format!("checkpoint {model:?}: cannot read {weights_file}: {e}")))?;
        if weights_sha256 != manifest.weights_sha256 {
            return Err(EngineError::FailedPrecondition(format!(
                "checkpoint {model:?}: sha256 of {weights_file} is {weights_sha256} but the manifest records {}; the weights are corrupt or were changed",
                manifest.weights_sha256
            )));
        }

        let dataset_name = if request.dataset.trim().is_empty() { manifest.dataset.as_str() } else { request.dataset.as_str() };
        let dataset: DatasetKind = dataset_name.parse().map_err(|_| {
            EngineError::NotFound(format!("unknown data set {dataset_name:?} (known: digits, cifar10, cifar100, tiny-imagenet)"))
        })?;
        let full_classes = dataset.num_classes();
        let classes_fit = if dataset == DatasetKind::TinyImageNet {
            // A Tiny-ImageNet folder may hold fewer classes; checked against its labels below.
            manifest.model.num_classes <= full_classes
        } else {
            manifest.model.num_classes == full_classes
        };
        if !classes_fit || dataset.input_shape() != manifest.model.input_shape {
            return Err(EngineError::FailedPrecondition(format!(
                "model {model:?} takes {:?} inputs in {} classes but data set {dataset} has {:?} inputs in {full_classes} classes",
                manifest.model.input_shape,
                manifest.model.num_classes,
                dataset.input_shape(),
            )));
        }
        if dataset != DatasetKind::Digits && self.data_dir.is_none() {
            return Err(EngineError::NotFound(format!(
                "data set {dataset} is not available on this server (it was started without --data-dir)"
            )));
        }
        let split = split_from_proto(request.split)?;
        let class_counts = self.class_counts(dataset, split)?;
        if class_counts.len() as i64 != manifest.model.num_classes {
            return Err(EngineError::FailedPrecondition(format!(
                "model {model:?} has {} classes but data set {dataset} ({split}) on this server has {}",
                manifest.model.num_classes,
                class_counts.len()
            )));
        }
        request::check_examples_per_class(request.examples_per_class, &class_counts, dataset, split)?;
        let batch_size = request::batch_size(request.batch_size, self.default_batch_size)?;
        let precision = request::precision_from_proto(request.precision)?;
        let shard = request::shard_from_proto(request.shard.as_ref())?;
        let examples = if request.examples_per_class > 0 {
            request.examples_per_class.saturating_mul(class_counts.len() as i64)
        } else {
            class_counts.iter().sum()
        };
        request::check_shard(shard, examples)?;
        let requested = request::requested_attacks(request)?;
        let mut attacks = Vec::with_capacity(requested.len());
        for (index, spec) in requested.iter().enumerate() {
            let spec = request::checked_spec(index, spec)?;
            let name = request::attack_display_name(&spec, manifest.model.num_classes)?;
            attacks.push((spec, name));
        }
        // Every field is checked: now the split's contents (loaded once per process).
        let data_sha256 = self.data_sha256(dataset, split)?;
        let model_sha256 = request::model_sha256(&manifest);

        let mut job = PreparedEvaluation {
            model,
            model_dir,
            manifest,
            weights_sha256,
            model_sha256,
            dataset,
            split,
            data_sha256,
            class_counts,
            examples_per_class: request.examples_per_class,
            batch_size,
            precision,
            shard,
            attacks: Vec::with_capacity(requested.len()),
        };
        debug_assert_eq!(examples, job.all_examples());
        for (spec, name) in attacks {
            let key_material = key_material(&job, &spec, self.device);
            let cache_key = cache_key(&key_material);
            job.attacks.push(PreparedAttack { spec, name, key_material, cache_key });
        }
        Ok(job)
    }

    /// The cached result of one attack, if there is a trustworthy one.
    pub fn cached(&self, attack: &PreparedAttack) -> Option<StoredResult> {
        let cache = self.cache.as_ref()?;
        match cache.load(&attack.cache_key, &attack.key_material) {
            Lookup::Hit(stored) => Some(stored),
            Lookup::Miss => None,
            Lookup::Corrupt(reason) => {
                tracing::warn!(%reason, "ignoring a corrupt cache entry; the result will be recomputed");
                None
            }
        }
    }

    /// Every result of `job` if all of them are cached.
    pub fn all_cached(&self, job: &PreparedEvaluation) -> Option<Vec<AttackResult>> {
        job.attacks.iter().map(|attack| self.cached(attack).map(|stored| request::attack_result(job, attack, &stored, true))).collect()
    }

    /// Each attack's cached result, where there is a trustworthy one (in request order).
    pub fn cached_results(&self, job: &PreparedEvaluation) -> Vec<Option<AttackResult>> {
        job.attacks.iter().map(|attack| self.cached(attack).map(|stored| request::attack_result(job, attack, &stored, true))).collect()
    }

    /// Stores a computed result (failures are logged: the result is still returned).
    pub fn store(&self, attack: &PreparedAttack, stored: &StoredResult) {
        if let Some(cache) = &self.cache {
            if let Err(e) = cache.store(&attack.cache_key, &attack.key_material, stored) {
                tracing::warn!(error = %e, "could not write a cache entry");
            }
        }
    }
}

/// sha256 (hex) of a split's contents: its name, split, shape, pixel scale, class names,
/// labels, example ids and pixel bytes. Cheap next to loading (the bytes are hashed a few
/// thousand images at a time, without an `f32` copy); done once per load.
#[allow(clippy::disallowed_methods)] // host data hashed once per load, outside any iteration
pub fn split_sha256(split: &CompactDataset) -> Result<String, tch::TchError> {
    let mut hasher = Sha256::new();
    let header = serde_json::json!({
        "name": split.name,
        "split": split.split.as_str(),
        "shape": split.pixels.size(),
        "kind": format!("{:?}", split.pixels.kind()),
        "divisor": split.divisor,
        "class_names": split.class_names,
    });
    hasher.update(header.to_string().as_bytes());
    for value in split.labels_vec() {
        hasher.update(value.to_le_bytes());
    }
    let n = split.len();
    let mut ids = vec![0i64; n as usize];
    split.ids.f_to_kind(tch::Kind::Int64)?.f_contiguous()?.f_copy_data(&mut ids, n as usize)?;
    for value in ids {
        hasher.update(value.to_le_bytes());
    }
    let pixels = split.pixels.f_to_kind(tch::Kind::Uint8)?;
    let per_example = pixels.numel() / (n.max(1) as usize);
    let chunk = 4096i64;
    let mut buffer = Vec::new();
    let mut start = 0;
    while start < n {
        let length = chunk.min(n - start);
        let part = pixels.f_narrow(0, start, length)?.f_contiguous()?;
        let count = length as usize * per_example;
        buffer.resize(count, 0u8);
        part.f_copy_data(&mut buffer, count)?;
        hasher.update(&buffer);
        start += length;
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// [`split_sha256`], a libtorch failure as the request's error.
pub fn split_sha256_of(split: &CompactDataset, kind: DatasetKind) -> Result<String, EngineError> {
    split_sha256(split).map_err(|e| EngineError::from_torch_message(&format!("hashing data set {kind}"), &e.to_string()))
}

/// `a/./b/` -> `a/b`.
fn normalise_name(name: &str) -> String {
    Path::new(name)
        .components()
        .filter_map(|c| match c {
            Component::Normal(part) => Some(part.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("/")
}
