//! The evaluation engine: attack specifications with their defaults filled in, attack
//! construction, and the run of one prepared evaluation on the device, attack after attack,
//! with progress, cancellation and the result cache.
//!
//! An [`Engine`] owns the loaded models and data sets (tensors are not `Sync`), so it lives on
//! one thread: the server's worker thread, or the main thread of `evaluator eval`.

use std::sync::Arc;
use std::time::Instant;

use rfb_core::attacks::{
    self, AttackError, Apgd, Attack, AutoAttack, CarliniWagnerLinf, ClassCounts, Fab, Fgsm, Pgd, PgdLoss, Square,
};
use rfb_core::checkpoint::{self, CheckpointError};
use rfb_core::data::{self, DataError, Dataset, DatasetKind, Split};
use rfb_core::models::{LoadedModel, Precision as ModelPrecision};
use rfb_proto::v1::{
    evaluate_event::Event, AttackKind, AttackResult, AttackSpec, ClassResult, ComponentResult, Metrics, Progress,
    SanityFlags,
};
use tch::Device;

use crate::cache::StoredResult;
use crate::catalog::{Catalog, PreparedAttack, PreparedEvaluation};

/// eps of the paper's evaluation (8/255), used when a spec leaves it unset.
pub const DEFAULT_EPS: f64 = 8.0 / 255.0;
/// Step size of PGD and CW-inf when unset (2/255).
pub const DEFAULT_STEP_SIZE: f64 = 2.0 / 255.0;
pub const DEFAULT_PGD_STEPS: i64 = 20;
pub const DEFAULT_CW_STEPS: i64 = 30;
pub const DEFAULT_CW_KAPPA: f64 = 50.0;
/// Largest number of steps (iterations, or Square queries) a request may ask for.
pub const MAX_STEPS: i64 = 10_000;
pub const MAX_RESTARTS: i64 = 100;
pub const MAX_KAPPA: f64 = 10_000.0;
/// Largest batch size a request may ask for.
pub const MAX_BATCH_SIZE: i64 = 4096;
/// Largest number of attacks in one request.
pub const MAX_ATTACKS: usize = 64;
/// Components an AUTOATTACK_CUSTOM spec may list.
pub const AUTOATTACK_COMPONENTS: [&str; 5] = ["apgd-ce", "apgd-t", "apgd-dlr", "fab-t", "square"];
/// Targets of APGD-T and FAB-T (AutoAttack standard; fewer when the model has fewer classes).
pub const AUTOATTACK_TARGETS: i64 = 9;

/// Why an evaluation could not be done. Each variant is one gRPC status code; the message names
/// the problem.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Unknown model or data set, or data files that are not there (NOT_FOUND).
    #[error("{0}")]
    NotFound(String),
    /// Bad request parameters (INVALID_ARGUMENT).
    #[error("{0}")]
    InvalidArgument(String),
    /// A corrupt or mismatched checkpoint or data set (FAILED_PRECONDITION).
    #[error("{0}")]
    FailedPrecondition(String),
    /// Out of memory on the device or host (RESOURCE_EXHAUSTED).
    #[error("{0}")]
    ResourceExhausted(String),
    /// The client went away (CANCELLED).
    #[error("the evaluation was cancelled by the client")]
    Cancelled,
    /// The request's deadline passed (DEADLINE_EXCEEDED).
    #[error("the request's deadline passed before the evaluation finished")]
    DeadlineExceeded,
    /// Anything else (INTERNAL), e.g. an attack that broke its own invariants.
    #[error("{0}")]
    Internal(String),
}

/// Whether a libtorch error message reports an allocation failure.
pub fn is_out_of_memory(message: &str) -> bool {
    let lower = message.to_ascii_lowercase();
    lower.contains("out of memory")
        || lower.contains("failed to allocate")
        || lower.contains("cudaerrormemoryallocation")
        || lower.contains("std::bad_alloc")
        || lower.contains("defaultcpuallocator: can't allocate memory")
}

impl EngineError {
    /// A libtorch error or panic message: RESOURCE_EXHAUSTED when it is an allocation
    /// failure, INTERNAL otherwise.
    pub fn from_torch_message(context: &str, message: &str) -> Self {
        let first_line = message.lines().next().unwrap_or(message).trim();
        if is_out_of_memory(message) {
            EngineError::ResourceExhausted(format!(
                "{context}: out of memory ({first_line}); try a smaller batch_size"
            ))
        } else {
            EngineError::Internal(format!("{context}: {first_line}"))
        }
    }

    /// A panic caught on the worker thread.
    pub fn from_panic(payload: &(dyn std::any::Any + Send)) -> Self {
        let message = payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".to_string());
        Self::from_torch_message("the evaluation failed", &message)
    }

    pub fn from_checkpoint(model: &str, error: CheckpointError) -> Self {
        match error {
            CheckpointError::NotFound(_) => EngineError::NotFound(format!("unknown model {model:?}")),
            CheckpointError::Torch(e) => Self::from_torch_message(&format!("loading model {model:?}"), &e.to_string()),
            other => EngineError::FailedPrecondition(format!("checkpoint {model:?} cannot be used: {other}")),
        }
    }

    pub fn from_data(dataset: &str, error: DataError) -> Self {
        match error {
            DataError::UnknownDataset(_) => EngineError::NotFound(error.to_string()),
            DataError::MissingFile { .. } | DataError::NoDataDir { .. } => {
                EngineError::NotFound(format!("data set {dataset} is not available: {error}"))
            }
            DataError::TooFewExamples { .. } | DataError::InvalidArgument(_) | DataError::UnknownSplit(_) => {
                EngineError::InvalidArgument(format!("data set {dataset}: {error}"))
            }
            DataError::Torch(e) => Self::from_torch_message(&format!("loading data set {dataset}"), &e.to_string()),
            other => EngineError::FailedPrecondition(format!("data set {dataset} cannot be read: {other}")),
        }
    }

    pub fn from_attack(attack: &str, error: AttackError) -> Self {
        match error {
            AttackError::InvalidParameter(message) => {
                EngineError::InvalidArgument(format!("{attack}: invalid parameter: {message}"))
            }
            AttackError::Cancelled => EngineError::Cancelled,
            AttackError::Torch(e) => Self::from_torch_message(attack, &e.to_string()),
            other => EngineError::Internal(format!("{attack}: {other}")),
        }
    }

    /// The gRPC status code of this error.
    pub fn code(&self) -> tonic::Code {
        match self {
            EngineError::NotFound(_) => tonic::Code::NotFound,
            EngineError::InvalidArgument(_) => tonic::Code::InvalidArgument,
            EngineError::FailedPrecondition(_) => tonic::Code::FailedPrecondition,
            EngineError::ResourceExhausted(_) => tonic::Code::ResourceExhausted,
            EngineError::Cancelled => tonic::Code::Cancelled,
            EngineError::DeadlineExceeded => tonic::Code::DeadlineExceeded,
            EngineError::Internal(_) => tonic::Code::Internal,
        }
    }
}

impl From<EngineError> for tonic::Status {
    fn from(error: EngineError) -> Self {
        tonic::Status::new(error.code(), error.to_string())
    }
}

/// Checks a spec and returns it with every default filled in: the canonical form that results
/// report and that the cache key is computed from. Fields an attack does not use are refused,
/// except `eps` and `seed`, which CLEAN ignores, and `seed`, which FGSM ignores (both are
/// deterministic; they are zeroed in the canonical form).
pub fn canonical_spec(spec: &AttackSpec) -> Result<AttackSpec, EngineError> {
    let kind = AttackKind::try_from(spec.kind)
        .map_err(|_| EngineError::InvalidArgument(format!("unknown attack kind {}", spec.kind)))?;
    let name = kind.as_str_name();
    let invalid = |message: String| EngineError::InvalidArgument(format!("{name}: {message}"));
    let refuse = |field: &str, present: bool| -> Result<(), EngineError> {
        if present {
            Err(invalid(format!("{field} does not apply to this attack; leave it unset")))
        } else {
            Ok(())
        }
    };
    if let Some(eps) = spec.eps {
        if !(eps.is_finite() && (0.0..=1.0).contains(&eps)) {
            return Err(invalid(format!("eps must be in [0, 1] (pixel scale), got {eps}")));
        }
    }
    if let Some(steps) = spec.steps {
        if !(1..=MAX_STEPS).contains(&steps) {
            return Err(invalid(format!("steps must be in 1..={MAX_STEPS}, got {steps}")));
        }
    }
    if let Some(step_size) = spec.step_size {
        if !(step_size.is_finite() && step_size > 0.0 && step_size <= 1.0) {
            return Err(invalid(format!("step_size must be in (0, 1], got {step_size}")));
        }
    }
    if let Some(restarts) = spec.restarts {
        if !(1..=MAX_RESTARTS).contains(&restarts) {
            return Err(invalid(format!("restarts must be in 1..={MAX_RESTARTS}, got {restarts}")));
        }
    }
    if let Some(kappa) = spec.kappa {
        if !(kappa.is_finite() && (0.0..=MAX_KAPPA).contains(&kappa)) {
            return Err(invalid(format!("kappa must be in [0, {MAX_KAPPA}], got {kappa}")));
        }
    }
    if kind != AttackKind::AutoattackCustom {
        refuse("components", !spec.components.is_empty())?;
    }
    let eps = Some(spec.eps.unwrap_or(DEFAULT_EPS));
    let mut canonical = AttackSpec { kind: spec.kind, seed: spec.seed, ..Default::default() };
    match kind {
        AttackKind::Unspecified => {
            return Err(EngineError::InvalidArgument(
                "attack kind is unspecified; choose CLEAN, FGSM, PGD, CW_INF or an AUTOATTACK kind".into(),
            ))
        }
        AttackKind::Clean | AttackKind::Fgsm => {
            refuse("steps", spec.steps.is_some())?;
            refuse("step_size", spec.step_size.is_some())?;
            refuse("restarts", spec.restarts.is_some())?;
            refuse("kappa", spec.kappa.is_some())?;
            canonical.seed = 0;
            if kind == AttackKind::Fgsm {
                canonical.eps = eps;
            }
        }
        AttackKind::Pgd => {
            refuse("kappa", spec.kappa.is_some())?;
            canonical.eps = eps;
            canonical.steps = Some(spec.steps.unwrap_or(DEFAULT_PGD_STEPS));
            canonical.step_size = Some(spec.step_size.unwrap_or(DEFAULT_STEP_SIZE));
            canonical.restarts = Some(spec.restarts.unwrap_or(1));
        }
        AttackKind::CwInf => {
            if spec.restarts.is_some_and(|r| r != 1) {
                return Err(invalid("CW-inf runs one restart; leave restarts unset".into()));
            }
            canonical.eps = eps;
            canonical.steps = Some(spec.steps.unwrap_or(DEFAULT_CW_STEPS));
            canonical.step_size = Some(spec.step_size.unwrap_or(DEFAULT_STEP_SIZE));
            canonical.kappa = Some(spec.kappa.unwrap_or(DEFAULT_CW_KAPPA));
        }
        AttackKind::AutoattackStandard | AttackKind::AutoattackRand => {
            refuse("steps", spec.steps.is_some())?;
            refuse("step_size", spec.step_size.is_some())?;
            refuse("restarts", spec.restarts.is_some())?;
            refuse("kappa", spec.kappa.is_some())?;
            canonical.eps = eps;
        }
        AttackKind::AutoattackCustom => {
            refuse("step_size", spec.step_size.is_some())?;
            refuse("kappa", spec.kappa.is_some())?;
            if spec.components.is_empty() {
                return Err(invalid(format!(
                    "components is empty; list any of {}",
                    AUTOATTACK_COMPONENTS.join(", ")
                )));
            }
            let mut components = Vec::with_capacity(spec.components.len());
            for component in &spec.components {
                let normalised = component.trim().to_ascii_lowercase();
                if !AUTOATTACK_COMPONENTS.contains(&normalised.as_str()) {
                    return Err(invalid(format!(
                        "unknown AutoAttack component {component:?} (known: {})",
                        AUTOATTACK_COMPONENTS.join(", ")
                    )));
                }
                components.push(normalised);
            }
            canonical.eps = eps;
            canonical.steps = spec.steps;
            canonical.restarts = Some(spec.restarts.unwrap_or(1));
            canonical.components = components;
        }
    }
    Ok(canonical)
}

/// Builds the attack a canonical spec describes (`None` for CLEAN) for a model with
/// `num_classes` classes. For AUTOATTACK_CUSTOM, `steps` sets the iterations of the APGD and
/// FAB components and the queries of Square (unset: 100 and 5000, as in the standard version),
/// and `restarts` the restarts of each component.
pub fn build_attack(spec: &AttackSpec, num_classes: i64) -> Result<Option<Box<dyn Attack>>, EngineError> {
    let kind = AttackKind::try_from(spec.kind)
        .map_err(|_| EngineError::InvalidArgument(format!("unknown attack kind {}", spec.kind)))?;
    let eps = spec.eps.unwrap_or(DEFAULT_EPS);
    let seed = spec.seed;
    let name = kind.as_str_name();
    let targets = AUTOATTACK_TARGETS.min(num_classes - 1).max(1);
    let checked = |result: Result<(), AttackError>| result.map_err(|e| EngineError::from_attack(name, e));
    let attack: Box<dyn Attack> = match kind {
        AttackKind::Clean => return Ok(None),
        AttackKind::Unspecified => return Err(EngineError::InvalidArgument("attack kind is unspecified".into())),
        AttackKind::Fgsm => Box::new(Fgsm { eps }),
        AttackKind::Pgd => {
            let pgd = Pgd {
                eps,
                step_size: spec.step_size.unwrap_or(DEFAULT_STEP_SIZE),
                steps: spec.steps.unwrap_or(DEFAULT_PGD_STEPS),
                restarts: spec.restarts.unwrap_or(1),
                random_start: true,
                loss: PgdLoss::CrossEntropy,
                seed,
            };
            checked(pgd.validate())?;
            Box::new(pgd)
        }
        AttackKind::CwInf => Box::new(
            CarliniWagnerLinf::new(
                eps,
                spec.step_size.unwrap_or(DEFAULT_STEP_SIZE),
                spec.steps.unwrap_or(DEFAULT_CW_STEPS),
                spec.kappa.unwrap_or(DEFAULT_CW_KAPPA),
                seed,
            )
            .map_err(|e| EngineError::from_attack(name, e))?,
        ),
        AttackKind::AutoattackStandard => {
            let mut autoattack = AutoAttack::standard(eps, seed);
            if num_classes - 1 < AUTOATTACK_TARGETS {
                autoattack.attacks = vec![
                    Box::new(Apgd::ce(eps, seed)),
                    Box::new(Apgd::targeted(eps, targets, seed)),
                    Box::new(Fab::targeted(eps, targets, seed)),
                    Box::new(Square::new(eps, 5000, 0.8, seed)),
                ];
            }
            Box::new(autoattack)
        }
        AttackKind::AutoattackRand => Box::new(AutoAttack::rand(eps, seed)),
        AttackKind::AutoattackCustom => {
            let restarts = spec.restarts.unwrap_or(1);
            let mut components: Vec<Box<dyn Attack>> = Vec::with_capacity(spec.components.len());
            for component in &spec.components {
                let apgd = |mut apgd: Apgd| -> Result<Box<dyn Attack>, EngineError> {
                    if let Some(steps) = spec.steps {
                        apgd.steps = steps;
                    }
                    apgd.restarts = restarts;
                    checked(apgd.validate())?;
                    Ok(Box::new(apgd))
                };
                components.push(match component.as_str() {
                    "apgd-ce" => apgd(Apgd::ce(eps, seed))?,
                    "apgd-dlr" => apgd(Apgd::dlr(eps, seed))?,
                    "apgd-t" => apgd(Apgd::targeted(eps, targets, seed))?,
                    "fab-t" => {
                        let mut fab = Fab::targeted(eps, targets, seed);
                        if let Some(steps) = spec.steps {
                            fab.steps = steps;
                        }
                        fab.restarts = restarts;
                        checked(fab.validate())?;
                        Box::new(fab)
                    }
                    "square" => {
                        let mut square = Square::new(eps, spec.steps.unwrap_or(5000), 0.8, seed);
                        square.restarts = restarts;
                        checked(square.validate())?;
                        Box::new(square)
                    }
                    other => {
                        return Err(EngineError::InvalidArgument(format!(
                            "{name}: unknown AutoAttack component {other:?} (known: {})",
                            AUTOATTACK_COMPONENTS.join(", ")
                        )))
                    }
                });
            }
            Box::new(AutoAttack::custom(eps, seed, components))
        }
    };
    Ok(Some(attack))
}

/// Display name of a canonical spec, e.g. `PGD-20` or `AutoAttack`.
pub fn attack_display_name(spec: &AttackSpec, num_classes: i64) -> Result<String, EngineError> {
    Ok(match build_attack(spec, num_classes)? {
        None => "Clean".to_string(),
        Some(attack) => attack.name(),
    })
}

/// Whether the kind is one of the AutoAttack versions (which report sanity flags).
pub fn is_autoattack(kind: i32) -> bool {
    matches!(
        AttackKind::try_from(kind),
        Ok(AttackKind::AutoattackStandard | AttackKind::AutoattackRand | AttackKind::AutoattackCustom)
    )
}

/// Assembles the wire result of one attack from its stored form.
pub fn attack_result(job: &PreparedEvaluation, attack: &PreparedAttack, stored: &StoredResult, cached: bool) -> AttackResult {
    let accuracy = rfb_proto::metrics::class_accuracy(&stored.correct, &stored.total);
    let summary = rfb_proto::metrics::summarize(&accuracy);
    AttackResult {
        attack: Some(attack.spec.clone()),
        attack_name: stored.attack_name.clone(),
        classes: stored
            .class_names
            .iter()
            .zip(stored.correct.iter().zip(&stored.total))
            .map(|(name, (&correct, &total))| ClassResult { class_name: name.clone(), correct, total })
            .collect(),
        metrics: Some(Metrics {
            average: summary.average,
            worst: summary.worst,
            worst_10_percent: summary.worst_10_percent,
            nsd: summary.nsd,
        }),
        sanity: stored.sanity.map(|s| SanityFlags {
            randomised: s.randomised,
            probabilities_not_logits: s.probabilities_not_logits,
            zero_gradient_fraction: s.zero_gradient_fraction,
            possible_gradient_masking: s.possible_gradient_masking,
        }),
        device: stored.device.clone(),
        elapsed_seconds: stored.elapsed_seconds,
        cached,
        versions: Some(crate::versions()),
        model: job.model.clone(),
        weights_sha256: job.weights_sha256.clone(),
        dataset: job.dataset.name().to_string(),
        split: crate::catalog::split_to_proto(job.split) as i32,
        examples_per_class: job.examples_per_class,
        precision: job.precision as i32,
        components: stored
            .components
            .iter()
            .map(|c| ComponentResult {
                name: c.name.clone(),
                seconds: c.seconds,
                attacked: c.attacked,
                robust_after: c.robust_after.correct.clone(),
            })
            .collect(),
    }
}

/// The evaluation runner. Owns the loaded models and data sets (a few of each, least recently
/// used first out); lives on one thread.
pub struct Engine {
    catalog: Arc<Catalog>,
    device: Device,
    /// (checkpoint directory, weights sha256) and the model (one of our networks or a
    /// TorchScript module), most recently used last.
    models: Vec<((std::path::PathBuf, String), LoadedModel)>,
    /// Loaded splits, most recently used last.
    datasets: Vec<((DatasetKind, Split), Dataset)>,
}

const KEPT_MODELS: usize = 2;
const KEPT_DATASETS: usize = 2;

impl Engine {
    pub fn new(catalog: Arc<Catalog>) -> Self {
        let device = catalog.device();
        Engine { catalog, device, models: Vec::new(), datasets: Vec::new() }
    }

    /// Drops every loaded model and data set (after a panic, or to free memory).
    pub fn reset(&mut self) {
        self.models.clear();
        self.datasets.clear();
    }

    fn model(&mut self, job: &PreparedEvaluation) -> Result<&LoadedModel, EngineError> {
        let key = (job.model_dir.clone(), job.weights_sha256.clone());
        if let Some(position) = self.models.iter().position(|(k, _)| *k == key) {
            let entry = self.models.remove(position);
            self.models.push(entry);
        } else {
            tracing::info!(model = %job.model, device = %crate::device_name(self.device), "loading checkpoint");
            let (mut network, manifest) = checkpoint::load_model(&job.model_dir, self.device)
                .map_err(|e| EngineError::from_checkpoint(&job.model, e))?;
            if manifest.weights_sha256 != job.weights_sha256 {
                return Err(EngineError::FailedPrecondition(format!(
                    "checkpoint {:?} changed while the request waited (weights sha256 {} instead of {})",
                    job.model, manifest.weights_sha256, job.weights_sha256
                )));
            }
            network.freeze();
            if self.models.len() >= KEPT_MODELS {
                self.models.remove(0);
            }
            self.models.push((key, network));
        }
        Ok(&self.models.last().expect("just pushed").1)
    }

    fn dataset(&mut self, job: &PreparedEvaluation) -> Result<Dataset, EngineError> {
        let key = (job.dataset, job.split);
        if let Some(position) = self.datasets.iter().position(|(k, _)| *k == key) {
            let entry = self.datasets.remove(position);
            self.datasets.push(entry);
        } else {
            tracing::info!(dataset = %job.dataset, split = %job.split, "loading data set");
            let loaded = data::load(job.dataset, job.split, self.catalog.data_dir())
                .map_err(|e| EngineError::from_data(job.dataset.name(), e))?;
            self.catalog.remember_class_counts(job.dataset, job.split, loaded.class_counts());
            if self.datasets.len() >= KEPT_DATASETS {
                self.datasets.remove(0);
            }
            self.datasets.push((key, loaded));
        }
        let full = &self.datasets.last().expect("just pushed").1;
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
        if job.examples_per_class > 0 {
            full.class_balanced_subset(job.examples_per_class)
                .map_err(|e| EngineError::from_data(job.dataset.name(), e))
        } else {
            Ok(full.shallow_clone())
        }
    }

    /// Runs every attack of `job` in order. `emit` receives progress and one result per
    /// attack; an error it returns (the client went away, the deadline passed) stops the run
    /// within one batch and is returned. Cached results are emitted without touching the
    /// device; computed ones are stored in the cache.
    pub fn run(
        &mut self,
        job: &PreparedEvaluation,
        emit: &mut dyn FnMut(Event) -> Result<(), EngineError>,
    ) -> Result<(), EngineError> {
        let mut subset: Option<Dataset> = None;
        for (index, attack) in job.attacks.iter().enumerate() {
            if let Some(stored) = self.catalog.cached(attack) {
                emit(Event::Result(attack_result(job, attack, &stored, true)))?;
                continue;
            }
            if subset.is_none() {
                subset = Some(self.dataset(job)?);
            }
            let subset = subset.as_ref().expect("set above");
            let stored = self.compute(job, index, attack, subset, emit)?;
            self.catalog.store(attack, &stored);
            emit(Event::Result(attack_result(job, attack, &stored, false)))?;
        }
        Ok(())
    }

    fn compute(
        &mut self,
        job: &PreparedEvaluation,
        index: usize,
        attack: &PreparedAttack,
        subset: &Dataset,
        emit: &mut dyn FnMut(Event) -> Result<(), EngineError>,
    ) -> Result<StoredResult, EngineError> {
        let device = self.device;
        let batch_size = job.batch_size;
        let total = subset.len();
        let built = build_attack(&attack.spec, job.manifest.model.num_classes)?;
        let model = self.model(job)?;
        // bf16 runs a bf16 copy judged by the fp32 weights; images, loss and projection stay fp32.
        let precision = match job.precision {
            rfb_proto::v1::Precision::Bf16 => ModelPrecision::Bf16,
            _ => ModelPrecision::Fp32,
        };
        let prepared = model
            .prepare(precision)
            .map_err(|e| EngineError::FailedPrecondition(format!("{}: {precision} copy: {e}", job.model)))?;
        let network: &dyn attacks::Classifier = &prepared;
        let progress = |component: &str, component_index: usize, components: usize, done: i64, of: i64| {
            Event::Progress(Progress {
                attack: attack.name.clone(),
                attack_index: index as i64,
                examples_done: done,
                examples_total: of,
                component: component.to_string(),
                component_index: component_index as i64,
                components: components as i64,
            })
        };
        emit(progress(&attack.name, 0, 1, 0, total))?;
        let started = Instant::now();
        let mut stop: Option<EngineError> = None;
        let mut sanity = None;
        let mut components = Vec::new();
        let counts = match &built {
            None => {
                // Clean accuracy, a batch at a time so that progress and cancellation work.
                let mut counts = ClassCounts::new(subset.num_classes() as usize);
                let mut start = 0;
                while start < total {
                    let length = batch_size.min(total - start);
                    let batch = subset.narrow(start, length);
                    let part = attacks::clean_accuracy(network, &batch, batch_size);
                    for k in 0..counts.total.len() {
                        counts.correct[k] += part.correct[k];
                        counts.total[k] += part.total[k];
                    }
                    start += length;
                    emit(progress(&attack.name, 0, 1, start, total))?;
                }
                counts
            }
            Some(built) => {
                if is_autoattack(attack.spec.kind) && total > 0 {
                    let length = batch_size.min(total);
                    let images = subset.images.narrow(0, 0, length).to_device(device);
                    let labels = subset.labels.narrow(0, 0, length).to_device(device);
                    sanity = Some(attacks::sanity_flags(network, &images, &labels));
                }
                let stop_requested = std::sync::atomic::AtomicBool::new(false);
                let should_stop = || stop_requested.load(std::sync::atomic::Ordering::Relaxed);
                let mut on_progress = |p: &attacks::Progress| {
                    if stop.is_none() {
                        if let Err(e) = emit(progress(p.component, p.component_index, p.components, p.done, p.total)) {
                            stop = Some(e);
                            stop_requested.store(true, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                };
                let result = attacks::evaluate(
                    built.as_ref(),
                    network,
                    subset,
                    batch_size,
                    attacks::Interrupt::new(&should_stop),
                    &mut on_progress,
                );
                match result {
                    Ok(evaluation) => {
                        components = evaluation.components;
                        evaluation.counts
                    }
                    Err(AttackError::Cancelled) => {
                        return Err(stop.unwrap_or(EngineError::Cancelled));
                    }
                    Err(e) => return Err(EngineError::from_attack(&attack.name, e)),
                }
            }
        };
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
            sanity,
            components,
            device: crate::device_name(device),
            elapsed_seconds: elapsed,
            evaluator_version: crate::evaluator_version(),
            created_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: AttackKind) -> AttackSpec {
        AttackSpec { kind: kind as i32, ..Default::default() }
    }

    #[test]
    fn defaults_are_filled_in() {
        let pgd = canonical_spec(&AttackSpec { seed: 3, ..spec(AttackKind::Pgd) }).unwrap();
        assert_eq!(pgd.eps, Some(8.0 / 255.0));
        assert_eq!(pgd.steps, Some(20));
        assert_eq!(pgd.step_size, Some(2.0 / 255.0));
        assert_eq!(pgd.restarts, Some(1));
        assert_eq!(pgd.seed, 3);
        let cw = canonical_spec(&spec(AttackKind::CwInf)).unwrap();
        assert_eq!((cw.steps, cw.kappa), (Some(30), Some(50.0)));
        let clean = canonical_spec(&AttackSpec { eps: Some(0.1), seed: 9, ..spec(AttackKind::Clean) }).unwrap();
        assert_eq!(clean, spec(AttackKind::Clean));
        assert_eq!(attack_display_name(&pgd, 10).unwrap(), "PGD-20");
        assert_eq!(attack_display_name(&clean, 10).unwrap(), "Clean");
    }

    #[test]
    fn bad_parameters_are_refused_with_their_name() {
        let cases = [
            (AttackSpec { eps: Some(-0.1), ..spec(AttackKind::Pgd) }, "eps"),
            (AttackSpec { eps: Some(1.5), ..spec(AttackKind::Fgsm) }, "eps"),
            (AttackSpec { steps: Some(0), ..spec(AttackKind::Pgd) }, "steps"),
            (AttackSpec { steps: Some(10_001), ..spec(AttackKind::CwInf) }, "steps"),
            (AttackSpec { kappa: Some(1.0), ..spec(AttackKind::Pgd) }, "kappa"),
            (AttackSpec { components: vec!["fab".into()], ..spec(AttackKind::AutoattackCustom) }, "component"),
            (spec(AttackKind::AutoattackCustom), "components"),
            (spec(AttackKind::Unspecified), "unspecified"),
            (AttackSpec { kind: 42, ..Default::default() }, "kind"),
        ];
        for (spec, word) in cases {
            let error = canonical_spec(&spec).unwrap_err();
            assert_eq!(error.code(), tonic::Code::InvalidArgument, "{spec:?}");
            assert!(error.to_string().contains(word), "{error} should name {word}");
        }
    }

    #[test]
    fn custom_components_build_in_order() {
        let custom = canonical_spec(&AttackSpec {
            components: vec!["APGD-CE".into(), "square".into()],
            steps: Some(10),
            ..spec(AttackKind::AutoattackCustom)
        })
        .unwrap();
        assert_eq!(custom.components, vec!["apgd-ce", "square"]);
        assert_eq!(attack_display_name(&custom, 10).unwrap(), "AutoAttack(APGD-CE+Square)");
    }

    #[test]
    fn out_of_memory_messages_are_recognised() {
        let oom = EngineError::from_torch_message("PGD-20", "CUDA out of memory. Tried to allocate 2.00 GiB");
        assert_eq!(oom.code(), tonic::Code::ResourceExhausted);
        let cpu = EngineError::from_torch_message("x", "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory");
        assert_eq!(cpu.code(), tonic::Code::ResourceExhausted);
        assert_eq!(EngineError::from_torch_message("x", "shape mismatch").code(), tonic::Code::Internal);
    }
}
