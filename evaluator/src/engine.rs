//! The evaluation engine: the "compute" step of a request's way (see [`crate::request`]). An
//! [`Engine`] runs one prepared evaluation on the device, attack after attack, with progress,
//! cancellation (looked at between attack iterations, restarts, targets and components) and
//! the result cache.
//!
//! An [`Engine`] owns the loaded models and data sets (tensors are not `Sync`), so it lives on
//! one thread: the server's worker thread, or the main thread of `evaluator eval`. Data splits
//! are kept as bytes ([`CompactDataset`]); each job gets `f32` copies of the examples it needs.
//!
//! Loaded models are keyed on their directory and the model's function hash
//! ([`crate::request::model_sha256`]: the weights and every manifest field that changes what
//! the model computes), so a checkpoint imported again under the same name (other
//! `--mean/--std`, classes, architecture) is loaded again, never served from memory. A model or
//! split whose files changed between the request's checks and its loading fails the request
//! (FAILED_PRECONDITION) instead of being computed under the other one's cache key.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use rfb_core::attacks::{self, AttackError, Confusion};
use rfb_core::checkpoint;
use rfb_core::data::{self, CompactDataset, Dataset, DatasetKind, Split};
use rfb_core::models::{LoadedModel, Precision as ModelPrecision};
use rfb_proto::v1::{evaluate_event::Event, Progress};
use tch::Device;

use crate::cache::StoredResult;
use crate::catalog::{split_sha256_of, Catalog};
use crate::request::{attack_result, build_attack, is_autoattack, model_sha256, PreparedAttack, PreparedEvaluation};

pub use crate::request::EngineError;

/// Asked between attack iterations (and between batches): `Some(reason)` stops the job with
/// that error (the client left, the deadline passed, the server is shutting down).
pub type StopCheck<'a> = &'a (dyn Fn() -> Option<EngineError> + Sync);

/// The evaluation runner. Owns the loaded models and data sets (a few of each, least recently
/// used first out); lives on one thread.
pub struct Engine {
    catalog: Arc<Catalog>,
    device: Device,
    /// (checkpoint directory, model function sha256) and the model (one of our networks or a
    /// TorchScript module), most recently used last.
    models: Vec<((std::path::PathBuf, String), LoadedModel)>,
    /// Loaded splits, as bytes, with the sha256 of their contents, most recently used last.
    datasets: Vec<((DatasetKind, Split), String, CompactDataset)>,
    /// A TorchScript module's bytes read by [`Engine::read_ahead`], loaded (its code run) only
    /// when the model is first used: keyed like `models`.
    read_ahead: Option<((std::path::PathBuf, String), checkpoint::Manifest, Vec<u8>)>,
}

/// What [`Engine::run_steps`] reports: progress, and each attack's result (in request order)
/// with whether it came from the cache.
pub enum Step {
    Progress(Progress),
    Result { index: usize, stored: StoredResult, cached: bool },
}

const KEPT_MODELS: usize = 2;
const KEPT_DATASETS: usize = 2;

impl Engine {
    pub fn new(catalog: Arc<Catalog>) -> Self {
        let device = catalog.device();
        Engine { catalog, device, models: Vec::new(), datasets: Vec::new(), read_ahead: None }
    }

    /// The catalog this engine was made with.
    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    /// Drops every loaded model and data set (after a panic, or to free memory).
    pub fn reset(&mut self) {
        self.models.clear();
        self.datasets.clear();
        self.read_ahead = None;
    }

    /// Reads every file `job` needs now: the data split (as bytes), our own networks (loaded),
    /// a TorchScript module's bytes (checked against the job's sha256, but not loaded: loading
    /// runs its code). A sandboxed worker calls this before it confines itself, so that the
    /// confined process needs no file.
    pub fn read_ahead(&mut self, job: &PreparedEvaluation) -> Result<(), EngineError> {
        self.dataset(job)?;
        if job.manifest.is_torchscript() {
            let key = (job.model_dir.clone(), job.model_sha256.clone());
            if !self.models.iter().any(|(k, _)| *k == key) {
                let manifest = checkpoint::read_manifest(&job.model_dir).map_err(|e| EngineError::from_checkpoint(&job.model, e))?;
                let bytes =
                    checkpoint::read_torchscript(&job.model_dir, &manifest).map_err(|e| EngineError::from_checkpoint(&job.model, e))?;
                self.read_ahead = Some((key, manifest, bytes));
            }
        } else {
            self.model(job)?;
        }
        Ok(())
    }

    fn model(&mut self, job: &PreparedEvaluation) -> Result<&LoadedModel, EngineError> {
        let key = (job.model_dir.clone(), job.model_sha256.clone());
        if let Some(position) = self.models.iter().position(|(k, _)| *k == key) {
            let entry = self.models.remove(position);
            self.models.push(entry);
        } else {
            tracing::info!(model = %job.model, device = %crate::device_name(self.device), "loading checkpoint");
            let read = match self.read_ahead.take() {
                Some((read_key, manifest, bytes)) if read_key == key => Some((manifest, bytes)),
                _ => None,
            };
            let loaded = match read {
                Some((manifest, bytes)) => {
                    checkpoint::torchscript_from_bytes(&job.model_dir, bytes, &manifest, self.device).map(|m| (m, manifest))
                }
                None => checkpoint::load_model(&job.model_dir, self.device),
            };
            let (mut network, manifest) = loaded.map_err(|e| EngineError::from_checkpoint(&job.model, e))?;
            if manifest.weights_sha256 != job.weights_sha256 {
                return Err(EngineError::FailedPrecondition(format!(
                    "checkpoint {:?} changed while the request waited (weights sha256 {} instead of {})",
                    job.model, manifest.weights_sha256, job.weights_sha256
                )));
            }
            // The same weights with another manifest (normalisation, classes, ...) are another
            // model: refuse rather than compute it under this request's key.
            if model_sha256(&manifest) != job.model_sha256 {
                return Err(EngineError::FailedPrecondition(format!(
                    "checkpoint {:?} changed while the request waited (its manifest was replaced); send the request again",
                    job.model
                )));
            }
            network.freeze();
            if self.models.len() >= KEPT_MODELS {
                self.models.remove(0);
            }
            self.models.push((key, network));
        }
        match self.models.last() {
            Some((_, model)) => Ok(model),
            None => Err(EngineError::Internal("the model just loaded is gone".into())),
        }
    }

    fn dataset(&mut self, job: &PreparedEvaluation) -> Result<Dataset, EngineError> {
        let key = (job.dataset, job.split);
        if let Some(position) = self.datasets.iter().position(|(k, _, _)| *k == key) {
            let entry = self.datasets.remove(position);
            self.datasets.push(entry);
        } else {
            // The split the catalog loaded for its hash, else read it now.
            let (sha, loaded) = match self.catalog.take_loaded(job.dataset, job.split) {
                Some(taken) => taken,
                None => {
                    tracing::info!(dataset = %job.dataset, split = %job.split, "loading data set");
                    let loaded = data::load_compact(job.dataset, job.split, self.catalog.data_dir())
                        .map_err(|e| EngineError::from_data(job.dataset.name(), e))?;
                    (split_sha256_of(&loaded, job.dataset)?, loaded)
                }
            };
            self.catalog.remember_split(job.dataset, job.split, &sha, loaded.class_counts());
            if self.datasets.len() >= KEPT_DATASETS {
                self.datasets.remove(0);
            }
            self.datasets.push((key, sha, loaded));
        }
        let Some((_, sha, full)) = self.datasets.last() else {
            return Err(EngineError::Internal("the data set just loaded is gone".into()));
        };
        if *sha != job.data_sha256 {
            return Err(EngineError::FailedPrecondition(format!(
                "data set {} ({}) changed on the server while the request waited (contents sha256 {} instead of {}); send the request again",
                job.dataset,
                job.split,
                &sha[..12.min(sha.len())],
                &job.data_sha256[..12.min(job.data_sha256.len())],
            )));
        }
        let manifest = &job.manifest;
        if full.num_classes() != manifest.model.num_classes || full.input_shape() != manifest.model.input_shape {
            return Err(EngineError::FailedPrecondition(format!(
                "model {:?} takes {:?} inputs in {} classes but data set {} ({}) has {:?} inputs in {} classes",
                job.model,
                manifest.model.input_shape,
                manifest.model.num_classes,
                job.dataset,
                job.split,
                full.input_shape(),
                full.num_classes()
            )));
        }
        // Only the examples the job needs become f32, for the job's duration.
        let subset = if job.examples_per_class > 0 {
            full.class_balanced_subset(job.examples_per_class).map_err(|e| EngineError::from_data(job.dataset.name(), e))?
        } else {
            full.to_dataset()
        };
        // A shard keeps every count-th example of the subset; each keeps its id (its index in
        // the split), from which attacks draw its random stream.
        Ok(match job.shard {
            Some(shard) => subset.select(&shard.positions(subset.len())),
            None => subset,
        })
    }

    /// Runs every attack of `job` in order. `emit` receives progress and one result per
    /// attack; an error it returns stops the run within one batch and is returned. Cached
    /// results are emitted without touching the device; computed ones are stored in the cache.
    pub fn run(&mut self, job: &PreparedEvaluation, emit: &mut dyn FnMut(Event) -> Result<(), EngineError>) -> Result<(), EngineError> {
        self.run_until(job, &|| None, emit)
    }

    /// [`Engine::run`], also stopping when `stop` gives a reason: it is asked between attack
    /// iterations, restarts, targets and components, and between batches, so a cancelled or
    /// expired job stops within one iteration, and that reason is returned.
    pub fn run_until(
        &mut self,
        job: &PreparedEvaluation,
        stop: StopCheck,
        emit: &mut dyn FnMut(Event) -> Result<(), EngineError>,
    ) -> Result<(), EngineError> {
        let catalog = self.catalog.clone();
        self.run_steps(job, stop, &mut |step| match step {
            Step::Progress(progress) => emit(Event::Progress(progress)),
            Step::Result { index, stored, cached } => {
                let attack = &job.attacks[index];
                if !cached {
                    catalog.store(attack, &stored);
                }
                emit(Event::Result(attack_result(job, attack, &stored, cached)))
            }
        })
    }

    /// Runs every attack of `job` in order, reporting progress and each result in its stored
    /// form; stores nothing (a sandboxed worker sends its results to the server, which stores
    /// them). Cached results (when the catalog has a cache) are reported without touching the
    /// device.
    pub fn run_steps(
        &mut self,
        job: &PreparedEvaluation,
        stop: StopCheck,
        emit: &mut dyn FnMut(Step) -> Result<(), EngineError>,
    ) -> Result<(), EngineError> {
        let mut subset: Option<Dataset> = None;
        for (index, attack) in job.attacks.iter().enumerate() {
            if let Some(stored) = self.catalog.cached(attack) {
                emit(Step::Result { index, stored, cached: true })?;
                continue;
            }
            if subset.is_none() {
                subset = Some(self.dataset(job)?);
            }
            if let Some(reason) = stop() {
                return Err(reason);
            }
            let Some(subset) = subset.as_ref() else { continue };
            let stored = self.compute(job, index, attack, subset, stop, &mut |progress| emit(Step::Progress(progress)))?;
            emit(Step::Result { index, stored, cached: false })?;
        }
        Ok(())
    }

    fn compute(
        &mut self,
        job: &PreparedEvaluation,
        index: usize,
        attack: &PreparedAttack,
        subset: &Dataset,
        stop: StopCheck,
        emit: &mut dyn FnMut(Progress) -> Result<(), EngineError>,
    ) -> Result<StoredResult, EngineError> {
        let device = self.device;
        let batch_size = job.batch_size;
        let total = subset.len();
        let built = build_attack(&attack.spec, job.manifest.model.num_classes)?;
        let model = self.model(job)?;
        // Attacks run on a prepared copy (as it is at fp32; batch norm folded and channels-last
        // at fp32-fast, also cast at bf16); images, loss and projection stay fp32, and the
        // network itself judges.
        let precision = match job.precision {
            rfb_proto::v1::Precision::Bf16 => ModelPrecision::Bf16,
            rfb_proto::v1::Precision::Fp32Fast => ModelPrecision::Fp32Fast,
            _ => ModelPrecision::Fp32,
        };
        let prepared =
            model.prepare(precision).map_err(|e| EngineError::FailedPrecondition(format!("{}: {precision} copy: {e}", job.model)))?;
        let network: &dyn attacks::Classifier = &prepared;
        let failed = |e: AttackError| EngineError::from_attack_run(&attack.name, &job.model, &precision.to_string(), e);
        let progress = |component: &str, component_index: usize, components: usize, done: i64, of: i64| Progress {
            attack: attack.name.clone(),
            attack_index: index as i64,
            examples_done: done,
            examples_total: of,
            component: component.to_string(),
            component_index: component_index as i64,
            components: components as i64,
        };
        let started = Instant::now();
        let mut emitted: Option<EngineError> = None;
        let mut sanity = None;
        let mut components = Vec::new();
        let confusion = match &built {
            None => {
                // Clean accuracy, a batch at a time so that progress and cancellation work.
                emit(progress(&attack.name, 0, 1, 0, total))?;
                let mut confusion = Confusion::new(subset.num_classes() as usize);
                let mut start = 0;
                while start < total {
                    if let Some(reason) = stop() {
                        return Err(reason);
                    }
                    let length = batch_size.min(total - start);
                    let batch = subset.narrow(start, length);
                    let part = attacks::clean_confusion(network, &batch, batch_size).map_err(failed)?;
                    confusion.add(&part).map_err(failed)?;
                    start += length;
                    emit(progress(&attack.name, 0, 1, start, total))?;
                }
                confusion
            }
            Some(built) => {
                if is_autoattack(attack.spec.kind) && total > 0 {
                    // A fixed number of points, whatever the batch size (which fp32 and bf16
                    // result keys leave out): the flags are the same for every batch size.
                    let length = attacks::SANITY_POINTS.min(total);
                    let images = subset.images.narrow(0, 0, length).to_device(device);
                    let labels = subset.labels.narrow(0, 0, length).to_device(device);
                    let (requested, used) = crate::request::autoattack_targets(&attack.spec, subset.num_classes());
                    sanity = Some(
                        attacks::sanity_flags_in_chunks(network, &images, &labels, batch_size)
                            .map_err(failed)?
                            .with_targets(requested, used),
                    );
                }
                // Attacks ask between iterations: the caller's reason to stop, or an error of
                // the progress stream.
                let stream_failed = AtomicBool::new(false);
                let should_stop = || stream_failed.load(Ordering::Relaxed) || stop().is_some();
                let mut on_progress = |p: &attacks::Progress| {
                    if emitted.is_none() {
                        if let Err(e) = emit(progress(p.component, p.component_index, p.components, p.done, p.total)) {
                            emitted = Some(e);
                            stream_failed.store(true, Ordering::Relaxed);
                        }
                    }
                };
                let result =
                    attacks::evaluate(built.as_ref(), network, subset, batch_size, attacks::Interrupt::new(&should_stop), &mut on_progress);
                match result {
                    Ok(evaluation) => {
                        // The checks the reference makes during and after the run.
                        sanity = sanity.map(|flags| flags.with_run(&evaluation.components, total));
                        components = evaluation.components;
                        evaluation.confusion
                    }
                    Err(AttackError::Cancelled) => {
                        return Err(emitted.or_else(stop).unwrap_or(EngineError::Cancelled));
                    }
                    Err(e) => return Err(failed(e)),
                }
            }
        };
        // The counts are the confusion's diagonal and row sums (for an attack, the same as the
        // evaluation's counts: each point is robust exactly where it is predicted as its class).
        let counts = confusion.class_counts();
        let elapsed = started.elapsed().as_secs_f64();
        tracing::info!(
            model = %job.model,
            attack = %attack.name,
            accuracy = counts.overall_accuracy(),
            seconds = elapsed,
            "attack finished"
        );
        Ok(StoredResult {
            attack_name: attack.name.clone(),
            class_names: subset.class_names.clone(),
            correct: counts.correct,
            total: counts.total,
            confusion: confusion.into_rows(),
            sanity,
            components,
            device: crate::device_name(device),
            elapsed_seconds: elapsed,
            evaluator_version: crate::evaluator_version(),
            created_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        })
    }
}
