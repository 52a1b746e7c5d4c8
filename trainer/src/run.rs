//! The training loop: epochs of a method over shuffled (and augmented) batches, the
//! class-wise error risks of Eq. 10, evaluation and checkpoint selection (paper A.3), logs,
//! checkpoints and resumable state.
//!
//! Output directory layout:
//! - `run.json`: the configuration, seed and versions of the run;
//! - `log.jsonl`: one JSON object per finished epoch;
//! - `last/`, `best/` (the selected checkpoint), `epoch-NNNN/` (periodic): checkpoints;
//! - `resume.json` pointing at `resume-NNNN/` (after NNNN epochs) or `resume-NNNN-bMMMMM/`
//!   (MMMMM batches into the next, where a stop on request left it): everything `--resume`
//!   needs.
//!
//! Randomness is derived from the seed, the epoch and the batch index (shuffling,
//! augmentation, libtorch's generator for attack starts), so a resumed run draws exactly what
//! an uninterrupted one would have.
//!
//! Data: with selection on the validation hold-out (the default) the model trains on the rest
//! of the training files. With selection on the test split (the paper's mode, A.3) no hold-out
//! is needed for selection, so the model trains on every training image, as the authors did
//! (all 50 000 on CIFAR). Methods that adapt to class-wise accuracies measured after every
//! epoch (FRL, CFA: [`TrainingMethod::needs_validation`]) always measure them on the
//! validation hold-out, which they then never train on: the test split never feeds training.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rfb_core::attacks::{self, ClassCounts, Pgd};
use rfb_core::checkpoint::{self, CheckpointInfo, Expectation, Selection};
use rfb_core::data::{self, Dataset, DatasetKind, Split};
use rfb_core::models::{self, ModelSpec, Network};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tch::{Device, Tensor};

use crate::method::{EpochEnd, EpochRisks, StepContext, TrainingMethod};
use crate::methods::Method;
use crate::presets::Preset;
use crate::resume::{self, PartialEpoch, ResumeError, ResumePoint, ResumeState};
use crate::risks::RiskAccumulator;
use crate::selection::selection_score;
use crate::sgd::Sgd;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Data(#[from] data::DataError),
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::CheckpointError),
    #[error(transparent)]
    Model(#[from] models::ModelError),
    #[error(transparent)]
    Attack(#[from] attacks::AttackError),
    #[error("the loss became {value} at epoch {epoch}, batch {batch}; stopped. The last good checkpoint is kept in {out}")]
    NonFiniteLoss { epoch: i64, batch: usize, value: f64, out: PathBuf },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Torch(#[from] tch::TchError),
    #[error(transparent)]
    Resume(#[from] ResumeError),
    /// [`request_stop`] was called (SIGTERM/SIGUSR1 in the binary): the run stopped after its
    /// current batch and saved its state there; `--resume` continues from that batch and ends
    /// with the same weights as an uninterrupted run.
    #[error("stopped on request after {epochs_done} finished epochs and {batches_done} batches of the next; the resume state in {out} continues it")]
    StopRequested { epochs_done: i64, batches_done: usize, out: PathBuf },
}

static STOP_REQUESTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Asks every running [`run`] to stop after its current batch (async-signal-safe: one atomic
/// store, so a signal handler may call it).
pub fn request_stop() {
    STOP_REQUESTED.store(true, std::sync::atomic::Ordering::SeqCst);
}

fn stop_requested() -> bool {
    STOP_REQUESTED.load(std::sync::atomic::Ordering::SeqCst)
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io { path: path.to_path_buf(), source }
}

/// Where the teacher comes from: one of our checkpoint directories, or a PyTorch state dict
/// of a reference architecture.
#[derive(Debug, Clone)]
pub struct TeacherSource {
    pub path: PathBuf,
    /// Architecture of a PyTorch state dict (ignored for our checkpoints).
    pub architecture: String,
}

#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The built-in method to train ([`Trainer::new`]), whose recipe the preset is; a
    /// [`Trainer::with_method`] run trains its own method instead and does not read this.
    pub method: Method,
    pub dataset: DatasetKind,
    pub data_dir: Option<PathBuf>,
    pub teacher: Option<TeacherSource>,
    /// Start from these weights (one of our checkpoint directories of the same architecture)
    /// instead of a random initialisation; FRL fine-tunes a robust model this way.
    pub init: Option<PathBuf>,
    pub seed: u64,
    pub out: PathBuf,
    pub preset: Preset,
    /// Split on which checkpoints are selected: validation (default) or test (the paper's;
    /// then training uses the validation hold-out too, see the module docs).
    pub select_on: Split,
    pub device: Device,
    pub resume: bool,
    pub progress: bool,
    /// Stop (as if killed) after this many epochs of this invocation; for tests of resume.
    pub stop_after: Option<i64>,
    /// Stop as on SIGTERM after this many batches of this invocation; for tests of resume.
    pub stop_after_batches: Option<usize>,
}

/// What `run` reports at the end.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunSummary {
    pub best_epoch: Option<i64>,
    pub best_score: Option<f64>,
    pub epochs_done: i64,
    /// Class-wise clean and PGD accuracy of the selected checkpoint on the test split.
    pub test_clean: Option<ClassCounts>,
    pub test_pgd: Option<ClassCounts>,
    pub class_names: Vec<String>,
}

/// Seeds for the parts of a run, derived so that none depends on what ran before it.
fn derived_seed(seed: u64, epoch: i64, batch: usize, stream: u64) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (epoch as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F)
        ^ (batch as u64).wrapping_mul(0x1656_67B1_9E37_79F9)
        ^ stream.wrapping_mul(0x27D4_EB2F_1656_67C5)
}

fn load_teacher(source: &TeacherSource, spec: &ModelSpec, device: Device) -> Result<Network, TrainError> {
    let mut teacher = if source.path.is_dir() {
        let expect = Expectation { architecture: None, num_classes: Some(spec.num_classes) };
        checkpoint::load(&source.path, device, &expect)?.0
    } else {
        let teacher_spec = ModelSpec { architecture: source.architecture.clone(), ..spec.clone() };
        checkpoint::import_pytorch(&source.path, &teacher_spec, device)?
    };
    teacher.set_trainable(false);
    Ok(teacher)
}

/// Clean and PGD class-wise accuracy of `network` on `dataset`, and the selection score of
/// A.3: average + worst classes' PGD accuracy (the worst class, or the worst 10% of classes on
/// CIFAR-100 and Tiny-ImageNet, as the preset says).
fn evaluate(network: &Network, dataset: &Dataset, preset: &Preset, seed: u64) -> Result<Evaluation, TrainError> {
    let clean = attacks::clean_accuracy(network, dataset, 256)?;
    let pgd = Pgd { steps: preset.selection_pgd_steps, ..Pgd::pgd20(preset.attack.eps, seed) };
    let robust = attacks::robust_accuracy(&pgd, network, dataset, 256, |_, _| true)?;
    let score = selection_score(&robust.class_accuracy(), preset.selection_worst);
    Ok((clean, robust, score))
}

/// Clean and PGD class-wise counts and the selection score.
type Evaluation = (ClassCounts, ClassCounts, f64);

fn append_log(path: &Path, line: &serde_json::Value) -> Result<(), TrainError> {
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(io_error(path))?;
    writeln!(file, "{line}").and_then(|_| file.sync_data()).map_err(io_error(path))
}

/// Trains as `config` says and returns the summary; see the module docs for what it writes.
/// The same as `Trainer::new(config.clone())?.run()`.
pub fn run(config: &RunConfig) -> Result<RunSummary, TrainError> {
    Trainer::new(config.clone())?.run()
}

/// Stage: settings that cannot work, refused before anything is read or written.
pub fn check_config(config: &RunConfig) -> Result<(), TrainError> {
    let preset = &config.preset;
    if preset.epochs < 1 || preset.batch_size < 1 {
        return Err(TrainError::Config("epochs and batch size must be positive".into()));
    }
    if config.out.join("resume.json").exists() && !config.resume {
        return Err(TrainError::Config(format!(
            "{} already holds a run; pass --resume to continue it or choose another --out",
            config.out.display()
        )));
    }
    if config.select_on == Split::Train {
        return Err(TrainError::Config("checkpoints are selected on the validation or the test split, not on the training split".into()));
    }
    Ok(())
}

fn resuming(config: &RunConfig) -> bool {
    config.resume && config.out.join("resume.json").exists()
}

/// The splits of a run (module docs): what trains, what the method adapts on, what selects.
pub struct RunData {
    pub train: Dataset,
    /// "train" or "train+val" (the paper's mode), for the run record.
    pub train_splits: &'static str,
    pub adaptation_split: Option<Dataset>,
    pub selection_split: Dataset,
    pub class_names: Vec<String>,
    pub classes: i64,
    holdout: Option<Dataset>,
}

/// Stage: the training files and the hold-out; [`RunData::choose_splits`] then decides which
/// images train, adapt and select once the method is known.
pub fn prepare_data(config: &RunConfig) -> Result<RunData, TrainError> {
    let load = |split| data::load(config.dataset, split, config.data_dir.as_deref());
    let train = load(Split::Train)?;
    let holdout = load(Split::Validation)?;
    Ok(RunData {
        class_names: train.class_names.clone(),
        classes: train.num_classes(),
        selection_split: holdout.shallow_clone(),
        train,
        train_splits: "train",
        adaptation_split: None,
        holdout: Some(holdout),
    })
}

impl RunData {
    fn batches_per_epoch(&self, preset: &Preset) -> usize {
        ((self.train.len() + preset.batch_size - 1) / preset.batch_size).max(0) as usize
    }

    /// Methods that adapt on the validation hold-out never train on it; selection on the test
    /// split trains on every training image otherwise (the training split and the hold-out
    /// together, the paper's mode).
    pub fn choose_splits(&mut self, config: &RunConfig, method: &dyn TrainingMethod) -> Result<(), TrainError> {
        let Some(holdout) = self.holdout.take() else {
            return Ok(());
        };
        self.adaptation_split = method.needs_validation().then(|| holdout.shallow_clone());
        if let (Split::Test, None) = (config.select_on, &self.adaptation_split) {
            let labels = Tensor::cat(&[&self.train.labels, &holdout.labels], 0);
            let ids = Tensor::arange(labels.size()[0], (tch::Kind::Int64, labels.device()));
            self.train = self.train.with_examples(Tensor::cat(&[&self.train.images, &holdout.images], 0), labels, ids);
            self.train_splits = "train+val";
        }
        if config.select_on == Split::Test {
            self.selection_split = data::load(config.dataset, Split::Test, config.data_dir.as_deref())?;
        }
        Ok(())
    }
}

/// The networks and the optimiser of a run.
pub struct RunModels {
    pub spec: ModelSpec,
    pub student: Network,
    pub teacher: Option<Network>,
    optimizer: Sgd,
}

/// Stage: the student (seeded initialisation, or `--init`'s weights), the teacher a
/// distillation method needs, and the optimiser.
pub fn prepare_models(config: &RunConfig, data: &RunData, method: &dyn TrainingMethod) -> Result<RunModels, TrainError> {
    let preset = &config.preset;
    let spec = ModelSpec::new(&preset.architecture, data.classes, data.train.input_shape());
    tch::manual_seed(derived_seed(config.seed, -1, 0, 0) as i64);
    let student = models::build(&spec, config.device)?;
    let teacher = match (&config.teacher, method.needs_teacher()) {
        (Some(source), true) => Some(load_teacher(source, &spec, config.device)?),
        (None, true) => return Err(TrainError::Config(format!("method {} needs --teacher", method.name()))),
        (_, false) => None,
    };
    if let (Some(init), false) = (&config.init, resuming(config)) {
        let expect = Expectation { architecture: Some(spec.architecture.clone()), num_classes: Some(data.classes) };
        let (initial, _) = checkpoint::load(init, config.device, &expect)?;
        copy_weights(&student, &initial.var_store.variables().into_iter().collect::<Vec<_>>())?;
    }
    let optimizer = Sgd::new(&student, preset.momentum, preset.weight_decay).with_nesterov(preset.nesterov);
    Ok(RunModels { spec, student, teacher, optimizer })
}

/// How the run's records (run.json, checkpoint manifests) give its method.
struct MethodRecord {
    /// `method` of run.json.
    name: String,
    /// The preset as recorded: only the method's own hyper-parameters, or none for a method
    /// defined outside this crate.
    preset: serde_json::Value,
}

/// What an epoch's batches leave for its end.
struct TrainedEpoch {
    started: Instant,
    lr: f64,
    loss_sum: f64,
    batches: usize,
    risks: RiskAccumulator,
}

impl TrainedEpoch {
    fn mean_loss(&self) -> f64 {
        self.loss_sum / self.batches.max(1) as f64
    }
}

/// The progress display of a run: a bar on a terminal; in a log, a plain line every few seconds
/// (rfb_progress).
struct Display {
    progress: rfb_progress::Progress,
    bar: rfb_progress::Task,
}

/// One training run, prepared: data, networks, method and state. [`Trainer::run`] trains it.
///
/// The stages: [`check_config`], [`prepare_data`], the method, [`RunData::choose_splits`],
/// [`prepare_models`], the state of a new run or the one `--resume` restores, `run.json`; then
/// per epoch its batches and its end (adaptation, evaluation and selection, checkpoints, resume
/// state, log line), and at the end the selected checkpoint on the test split.
pub struct Trainer {
    config: RunConfig,
    data: RunData,
    models: RunModels,
    method: Box<dyn TrainingMethod>,
    record: MethodRecord,
    state: ResumeState,
    /// The saved state this run resumed from, if it did.
    resumed_from: Option<ResumePoint>,
    batches_this_run: usize,
}

impl Trainer {
    /// Prepares a run of the built-in method `config.method`.
    pub fn new(config: RunConfig) -> Result<Trainer, TrainError> {
        let data = Trainer::load_data(&config)?;
        let method = config.method.build(data.classes as usize, &config.preset.methods);
        let record = MethodRecord { name: config.method.to_string(), preset: config.preset.record(config.method) };
        Trainer::prepare(config, data, method, record)
    }

    /// Prepares a run of a method defined by the caller (`config.method` is not read); the
    /// records name it by [`TrainingMethod::name`] and keep no method's recipe settings.
    pub fn with_method(config: RunConfig, method: Box<dyn TrainingMethod>) -> Result<Trainer, TrainError> {
        let data = Trainer::load_data(&config)?;
        let record = MethodRecord { name: method.name().to_string(), preset: config.preset.record_without_method_settings() };
        Trainer::prepare(config, data, method, record)
    }

    fn load_data(config: &RunConfig) -> Result<RunData, TrainError> {
        check_config(config)?;
        std::fs::create_dir_all(&config.out).map_err(io_error(&config.out))?;
        prepare_data(config)
    }

    fn prepare(config: RunConfig, mut data: RunData, method: Box<dyn TrainingMethod>, record: MethodRecord) -> Result<Trainer, TrainError> {
        if config.preset.init_required && config.init.is_none() && !resuming(&config) {
            return Err(TrainError::Config(format!(
                "{} fine-tunes a robust model ({} epochs at lr {}): pass --init with one of our checkpoint \
                 directories of the same architecture, e.g. a TRADES run's best/",
                record.name, config.preset.epochs, config.preset.learning_rate
            )));
        }
        data.choose_splits(&config, method.as_ref())?;
        let models = prepare_models(&config, &data, method.as_ref())?;
        let mut trainer =
            Trainer { config, data, models, method, record, state: ResumeState::default(), resumed_from: None, batches_this_run: 0 };
        trainer.restore_or_start()?;
        trainer.write_run_record()?;
        Ok(trainer)
    }

    /// The class names of the data set.
    pub fn class_names(&self) -> &[String] {
        &self.data.class_names
    }

    /// Stage: the state of a new run, or the saved one of `--resume` (weights, momentum, the
    /// method's state, and the part of an epoch a stop on request left unfinished).
    fn restore_or_start(&mut self) -> Result<(), TrainError> {
        let log_path = self.config.out.join("log.jsonl");
        if !resuming(&self.config) {
            let _ = std::fs::remove_file(&log_path);
            return Ok(());
        }
        let point = ResumePoint::read(&self.config.out)?;
        let expect = Expectation { architecture: Some(self.models.spec.architecture.clone()), num_classes: Some(self.data.classes) };
        let (saved, _) = checkpoint::load(&point.dir.join("model"), self.config.device, &expect)?;
        copy_weights(&self.models.student, &saved.var_store.variables().into_iter().collect::<Vec<_>>())?;
        let momentum = checkpoint::load_tensors(&point.dir.join("momentum.safetensors"))?;
        self.models.optimizer.restore(momentum).map_err(ResumeError::Momentum)?;
        self.method.restore(&point.state.method_state).map_err(ResumeError::MethodState)?;
        let method_tensors = point.dir.join("method.safetensors");
        if method_tensors.is_file() {
            self.method.restore_tensors(checkpoint::load_tensors(&method_tensors)?).map_err(ResumeError::MethodState)?;
        }
        resume::truncate_log(&log_path, point.state.epochs_done)?;
        self.state = point.state.clone();
        self.resumed_from = Some(point);
        Ok(())
    }

    /// Stage: `run.json`, the configuration, seed and versions of the run.
    fn write_run_record(&self) -> Result<(), TrainError> {
        let config = &self.config;
        let data = &self.data;
        let run_record = json!({
            "method": self.record.name,
            "dataset": config.dataset.name(),
            "seed": config.seed,
            "preset": self.record.preset,
            "select_on": config.select_on.as_str(),
            "train_splits": data.train_splits,
            "train_examples": data.train.len(),
            "adaptation_split": data.adaptation_split.as_ref().map(|split| split.split.as_str()),
            "teacher": config.teacher.as_ref().map(|t| t.path.display().to_string()),
            "init": config.init.as_ref().map(|p| p.display().to_string()),
            "device": format!("{:?}", config.device),
            "code_version": checkpoint::code_version(),
            "libtorch_version": checkpoint::libtorch_version(),
        });
        checkpoint::write_atomic(&config.out.join("run.json"), serde_json::to_string_pretty(&run_record).unwrap_or_default().as_bytes())?;
        Ok(())
    }

    /// Trains the remaining epochs, then measures the selected checkpoint on the test split.
    pub fn run(mut self) -> Result<RunSummary, TrainError> {
        let display = self.display();
        for (epochs_this_run, epoch) in (self.state.epochs_done..self.config.preset.epochs).enumerate() {
            let trained = match self.train_epoch(epoch, &display.bar) {
                Ok(trained) => trained,
                Err(error) => {
                    display.bar.abandon();
                    return Err(error);
                }
            };
            self.finish_epoch(epoch, trained, &display)?;
            if let Some(stopped) = self.stop_after_epoch(epoch, epochs_this_run) {
                display.bar.abandon();
                if stopped.is_ok() {
                    display.progress.println(format!("stopped after {} epochs as asked", epochs_this_run + 1));
                }
                return stopped;
            }
        }
        display.bar.finish();
        self.test_selected()
    }

    fn display(&self) -> Display {
        let preset = &self.config.preset;
        let remaining =
            (preset.epochs - self.state.epochs_done).max(0) as usize * self.data.batches_per_epoch(preset) - self.state.partial.batches;
        let progress = rfb_progress::Progress::new(rfb_progress::Mode::detect(!self.config.progress));
        let bar = progress.task(format!("{} seed {}", self.method.name(), self.config.seed), remaining as u64, "batches");
        Display { progress, bar }
    }

    /// A stop asked for during the epoch's last batch or its end (the state just saved is that
    /// of the finished epoch), or the end of `stop_after`'s epochs.
    fn stop_after_epoch(&self, epoch: i64, epochs_this_run: usize) -> Option<Result<RunSummary, TrainError>> {
        if epoch + 1 == self.config.preset.epochs {
            return None;
        }
        if stop_requested() {
            let out = self.config.out.clone();
            return Some(Err(TrainError::StopRequested { epochs_done: self.state.epochs_done, batches_done: 0, out }));
        }
        if self.config.stop_after.is_some_and(|n| epochs_this_run as i64 + 1 >= n) {
            return Some(Ok(RunSummary {
                best_epoch: self.state.best_epoch,
                best_score: self.state.best_score,
                epochs_done: self.state.epochs_done,
                test_clean: None,
                test_pgd: None,
                class_names: self.data.class_names.clone(),
            }));
        }
        None
    }

    /// The start of `epoch`: fresh sums, or those of the batches a stop on request left.
    fn start_epoch(&mut self, epoch: i64) -> Result<TrainedEpoch, TrainError> {
        let partial = std::mem::take(&mut self.state.partial);
        let mut trained = TrainedEpoch {
            started: Instant::now(),
            lr: self.config.preset.learning_rate_at(epoch),
            loss_sum: partial.loss_sum,
            batches: partial.batches,
            risks: RiskAccumulator::new(self.data.classes, self.config.device),
        };
        if partial.batches > 0 {
            let path = match &self.resumed_from {
                Some(point) => point.partial_risks_path()?,
                None => {
                    let path = self.config.out.join("risks.safetensors");
                    return Err(ResumeError::MissingRisks { path, batches: partial.batches }.into());
                }
            };
            trained.risks.restore(checkpoint::load_tensors(&path)?, self.config.device)?;
        }
        Ok(trained)
    }

    /// Stage: one epoch's batches (from where a stop left it). On a stop request it saves the
    /// state after the batch it finished, so that `--resume` continues from that batch.
    fn train_epoch(&mut self, epoch: i64, bar: &rfb_progress::Task) -> Result<TrainedEpoch, TrainError> {
        let skip = self.state.partial.batches;
        let mut trained = self.start_epoch(epoch)?;
        let batches_per_epoch = self.data.batches_per_epoch(&self.config.preset);
        // A view, so that the batches do not borrow the trainer that trains on them.
        let train = self.data.train.shallow_clone();
        let batches = train.shuffled_batches(self.config.preset.batch_size, derived_seed(self.config.seed, epoch, 0, 1));
        for (batch, (images, labels)) in batches.enumerate().skip(skip) {
            let loss_value = self.train_batch(epoch, batch, images, labels, &mut trained)?;
            bar.set_message(format!("epoch {}/{} loss {:.4}", epoch + 1, self.config.preset.epochs, loss_value));
            bar.inc(1);
            let stop_for_test = self.config.stop_after_batches.is_some_and(|n| self.batches_this_run >= n);
            if (stop_requested() || stop_for_test) && batch + 1 < batches_per_epoch {
                bar.set_message("stopped on request");
                return Err(self.stop_within_epoch(epoch, batch + 1, &trained));
            }
        }
        Ok(trained)
    }

    /// One batch: augmentation, the method's loss, the optimiser's step and the class-wise
    /// sums; returns the batch's loss.
    fn train_batch(
        &mut self,
        epoch: i64,
        batch: usize,
        images: Tensor,
        labels: Tensor,
        trained: &mut TrainedEpoch,
    ) -> Result<f64, TrainError> {
        let config = &self.config;
        let preset = &config.preset;
        let images = if preset.crop_padding > 0 {
            data::augment_crop_flip(&images, preset.crop_padding, derived_seed(config.seed, epoch, batch, 2))
        } else {
            images
        };
        let images = images.to_device(config.device);
        let labels = labels.to_device(config.device);
        tch::manual_seed((derived_seed(config.seed, epoch, batch, 3) >> 1) as i64);
        let models = &mut self.models;
        let context = StepContext { student: &models.student, teacher: models.teacher.as_ref(), attack: preset.attack };
        let output = self.method.step(&context, &images, &labels);
        // The one read of a step: a non-finite loss must stop the run before the optimiser applies it.
        let loss_value = rfb_core::host_read::scalar_f64(&output.loss, "training step: loss (non-finite check and log)");
        if !loss_value.is_finite() {
            return Err(TrainError::NonFiniteLoss { epoch, batch, value: loss_value, out: config.out.clone() });
        }
        models.optimizer.step(&output.loss, trained.lr);
        trained.risks.add(&labels, &output.clean_logits, output.adversarial_logits.as_ref());
        trained.loss_sum += loss_value;
        trained.batches += 1;
        self.batches_this_run += 1;
        Ok(loss_value)
    }

    /// Saves the state `batches` batches into `epoch` and points `resume.json` at it; the
    /// error to return (the stop, or why saving failed).
    fn stop_within_epoch(&mut self, epoch: i64, batches: usize, trained: &TrainedEpoch) -> TrainError {
        self.state.partial = PartialEpoch { batches, loss_sum: trained.loss_sum };
        let name = self.state.dir_name();
        let saved =
            self.write_resume_dir(&name, epoch, Some(&trained.risks)).and_then(|()| Ok(resume::move_pointer(&self.config.out, &name)?));
        match saved {
            Ok(()) => {
                TrainError::StopRequested { epochs_done: self.state.epochs_done, batches_done: batches, out: self.config.out.clone() }
            }
            Err(error) => error,
        }
    }

    /// Stage: the end of an epoch: the method's class-wise adaptation, evaluation and selection
    /// (A.3), the checkpoints, the resume state and the log line.
    fn finish_epoch(&mut self, epoch: i64, trained: TrainedEpoch, display: &Display) -> Result<(), TrainError> {
        let (epoch_risks, student_evaluation) = self.adapt(epoch, &trained, &display.bar)?;
        // What is evaluated and saved: the student, or the method's weight average (CFA).
        let averaged = match self.method.averaged_weights() {
            Some(weights) => Some(network_with_weights(&self.models.spec, self.config.device, weights)?),
            None => None,
        };
        let evaluation = match self.config.preset.evaluates_after(epoch) {
            true => self.select(epoch, trained.mean_loss(), student_evaluation, averaged.as_ref(), display)?,
            false => serde_json::Value::Null,
        };
        self.save_checkpoints(epoch, averaged.as_ref())?;
        self.state.epochs_done = epoch + 1;
        let log_line = json!({
            "epoch": epoch,
            "learning_rate": trained.lr,
            "loss": trained.mean_loss(),
            "seconds": trained.started.elapsed().as_secs_f64(),
            "risk_clean": epoch_risks.clean,
            "risk_adversarial": epoch_risks.adversarial,
            "temperatures": self.method.temperatures(),
            "method_state": self.method.state(),
            "weight_average": self.method.averaged_weights().is_some(),
            "evaluation": evaluation,
        });
        // The resume state first, then the log line, then the pointer: a crash before the pointer
        // moves resumes from the previous state (and drops the log line of this epoch).
        let name = self.state.dir_name();
        self.write_resume_dir(&name, epoch, None)?;
        append_log(&self.config.out.join("log.jsonl"), &log_line)?;
        Ok(resume::move_pointer(&self.config.out, &name)?)
    }

    /// The method's class-wise adaptation after `epoch`: FRL's and CFA's on the validation
    /// hold-out (measured here, and returned for reuse by the selection), every method's from
    /// the epoch's class-wise risks.
    fn adapt(
        &mut self,
        epoch: i64,
        trained: &TrainedEpoch,
        bar: &rfb_progress::Task,
    ) -> Result<(EpochRisks, Option<Evaluation>), TrainError> {
        let preset = &self.config.preset;
        let student = &mut self.models.student;
        let epoch_risks = trained.risks.risks();
        let (train_clean_accuracy, train_adversarial_accuracy) = trained.risks.accuracies();
        let student_evaluation = match &self.data.adaptation_split {
            Some(split) => {
                bar.set_message(format!("epoch {}/{}: measuring the classes on the validation split", epoch + 1, preset.epochs));
                student.set_trainable(false);
                let evaluation = evaluate(student, split, preset, self.config.seed)?;
                student.set_trainable(true);
                Some(evaluation)
            }
            None => None,
        };
        self.method.end_epoch(&EpochEnd {
            epoch,
            epochs: preset.epochs,
            risks: &epoch_risks,
            train_clean_accuracy: &train_clean_accuracy,
            train_adversarial_accuracy: train_adversarial_accuracy.as_deref(),
            validation: student_evaluation.as_ref().map(|(clean, robust, _)| (clean, robust)),
            lr_decayed: preset.lr_drops_after(epoch),
            student,
        });
        Ok((epoch_risks, student_evaluation))
    }

    /// Evaluation on the selection split after `epoch` and selection (A.3): a better score
    /// saves `best/`. Returns the log line's `evaluation`.
    fn select(
        &mut self,
        epoch: i64,
        mean_loss: f64,
        student_evaluation: Option<Evaluation>,
        averaged: Option<&Network>,
        display: &Display,
    ) -> Result<serde_json::Value, TrainError> {
        let (clean, robust, score) = self.selection_evaluation(epoch, student_evaluation, averaged, &display.bar)?;
        let config = &self.config;
        let preset = &config.preset;
        let evaluation = json!({
            "split": config.select_on.as_str(),
            "clean_class_accuracy": clean.class_accuracy(),
            "pgd_class_accuracy": robust.class_accuracy(),
            "clean_accuracy": clean.overall_accuracy(),
            "pgd_accuracy": robust.overall_accuracy(),
            "pgd_worst_accuracy": preset.selection_worst.accuracy(&robust.class_accuracy()),
            "score": score,
        });
        if self.state.best_score.is_none_or(|best| score > best) {
            self.state.best_score = Some(score);
            self.state.best_epoch = Some(epoch);
            let rule = format!(
                "max avg + {} PGD-{} accuracy on {}",
                preset.selection_worst.describe(),
                preset.selection_pgd_steps,
                config.select_on.as_str()
            );
            let info = self.info(epoch, Selection { rule, value: Some(score) });
            checkpoint::save(&config.out.join("best"), averaged.unwrap_or(&self.models.student), info)?;
        }
        display.bar.set_message(format!("epoch {}/{} loss {:.4}", epoch + 1, preset.epochs, mean_loss));
        // Named, so that the lines of runs side by side in one log can be told apart.
        display.progress.println(format!(
            "{} seed {}, epoch {:>3}: loss {:.4}  {} clean {:.2}%  PGD {:.2}%  selection score {:.2}",
            self.method.name(),
            config.seed,
            epoch + 1,
            mean_loss,
            config.select_on.as_str(),
            clean.overall_accuracy(),
            robust.overall_accuracy(),
            score
        ));
        Ok(evaluation)
    }

    /// The selection's measurement: the adaptation's, when both are of the student on the
    /// validation hold-out, else a new one on the selection split.
    fn selection_evaluation(
        &mut self,
        epoch: i64,
        student_evaluation: Option<Evaluation>,
        averaged: Option<&Network>,
        bar: &rfb_progress::Task,
    ) -> Result<Evaluation, TrainError> {
        let config = &self.config;
        let reusable = averaged.is_none() && config.select_on == Split::Validation;
        if let (true, Some(done)) = (reusable, student_evaluation) {
            return Ok(done);
        }
        // In a log the progress line says so instead of repeating 100% for as long as the
        // evaluation (PGD on the selection split) takes.
        bar.set_message(format!(
            "epoch {}/{}: evaluating on the {} split (clean and PGD)",
            epoch + 1,
            config.preset.epochs,
            config.select_on.as_str()
        ));
        let student = &mut self.models.student;
        student.set_trainable(false);
        let result = evaluate(averaged.unwrap_or(student), &self.data.selection_split, &config.preset, config.seed);
        student.set_trainable(true);
        result
    }

    /// `last/`, and `epoch-NNNN/` every `checkpoint_every` epochs.
    fn save_checkpoints(&self, epoch: i64, averaged: Option<&Network>) -> Result<(), TrainError> {
        let evaluated = averaged.unwrap_or(&self.models.student);
        let out = &self.config.out;
        let every = self.config.preset.checkpoint_every;
        let last_info = self.info(epoch, Selection { rule: "last".into(), value: None });
        checkpoint::save(&out.join("last"), evaluated, last_info.clone())?;
        if every > 0 && (epoch + 1) % every == 0 {
            checkpoint::save(&out.join(format!("epoch-{:04}", epoch + 1)), evaluated, last_info)?;
        }
        Ok(())
    }

    /// The manifest of a checkpoint of this run after `epoch`.
    fn info(&self, epoch: i64, selection: Selection) -> CheckpointInfo {
        let config = &self.config;
        CheckpointInfo {
            class_names: self.data.class_names.clone(),
            dataset: config.dataset.name().to_string(),
            method: self.method.name().to_string(),
            hyperparameters: json!({
                "method": self.method.hyperparameters(),
                "preset": self.record.preset,
                "teacher": config.teacher.as_ref().map(|t| t.path.display().to_string()),
                "select_on": config.select_on.as_str(),
            }),
            seed: Some(config.seed),
            epoch: Some(epoch),
            selection: Some(selection),
        }
    }

    /// The resume directory `name`: the student, momentum, the method's state and, within an
    /// epoch, the class-wise sums so far.
    fn write_resume_dir(&mut self, name: &str, epoch: i64, risks: Option<&RiskAccumulator>) -> Result<(), TrainError> {
        self.state.method_state = self.method.state();
        let dir = self.config.out.join(name);
        let info = self.info(epoch, Selection { rule: "resume".into(), value: None });
        checkpoint::save(&dir.join("model"), &self.models.student, info)?;
        checkpoint::save_tensors(&dir.join("momentum.safetensors"), &self.models.optimizer.state())?;
        checkpoint::save_tensors(&dir.join("method.safetensors"), &self.method.tensor_state())?;
        if let Some(risks) = risks {
            checkpoint::save_tensors(&dir.join("risks.safetensors"), &risks.state())?;
        }
        let state = serde_json::to_string(&self.state).unwrap_or_default();
        checkpoint::write_atomic(&dir.join("state.json"), state.as_bytes())?;
        Ok(())
    }

    /// Stage: the selected checkpoint measured on the test split, written to `summary.json`.
    fn test_selected(self) -> Result<RunSummary, TrainError> {
        let config = &self.config;
        let (mut selected, _) = checkpoint::load(&config.out.join("best"), config.device, &Expectation::default())?;
        selected.set_trainable(false);
        let test = data::load(config.dataset, Split::Test, config.data_dir.as_deref())?;
        let (clean, robust, _) = evaluate(&selected, &test, &config.preset, config.seed)?;
        let summary = RunSummary {
            best_epoch: self.state.best_epoch,
            best_score: self.state.best_score,
            epochs_done: self.state.epochs_done,
            test_clean: Some(clean),
            test_pgd: Some(robust),
            class_names: self.data.class_names,
        };
        checkpoint::write_atomic(&config.out.join("summary.json"), serde_json::to_string_pretty(&summary).unwrap_or_default().as_bytes())?;
        Ok(summary)
    }
}

/// Copies named weights into `network`'s variables (every variable must be present).
fn copy_weights(network: &Network, weights: &[(String, Tensor)]) -> Result<(), TrainError> {
    let by_name: std::collections::HashMap<&str, &Tensor> = weights.iter().map(|(name, tensor)| (name.as_str(), tensor)).collect();
    tch::no_grad(|| -> Result<(), TrainError> {
        for (name, mut variable) in network.var_store.variables() {
            let source =
                by_name.get(name.as_str()).ok_or_else(|| TrainError::Config(format!("the weights to copy lack the variable {name}")))?;
            variable.f_copy_(source)?;
        }
        Ok(())
    })
}

/// A fresh network of `spec` holding `weights` (for evaluating and saving a weight average).
fn network_with_weights(spec: &ModelSpec, device: Device, weights: &[(String, Tensor)]) -> Result<Network, TrainError> {
    let mut network = models::build(spec, device)?;
    copy_weights(&network, weights)?;
    network.set_trainable(false);
    Ok(network)
}
