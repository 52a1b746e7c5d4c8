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
use tch::{Device, Kind, Tensor};

use crate::method::{EpochEnd, EpochRisks, StepContext, TrainingMethod};
use crate::methods;
use crate::presets::Preset;
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
    NonFiniteLoss {
        epoch: i64,
        batch: usize,
        value: f64,
        out: PathBuf,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Torch(#[from] tch::TchError),
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
    move |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    }
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
    pub method: String,
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

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct ResumeState {
    epochs_done: i64,
    best_score: Option<f64>,
    best_epoch: Option<i64>,
    method_state: serde_json::Value,
    /// The unfinished epoch a stop on request left (none at an epoch's end).
    #[serde(default)]
    partial: PartialEpoch,
}

/// How far into epoch `epochs_done` a stopped run got: the batches done and their loss sum
/// (the class-wise sums are in the resume directory's `risks.safetensors`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct PartialEpoch {
    batches: usize,
    loss_sum: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ResumePointer {
    dir: String,
}

/// Seeds for the parts of a run, derived so that none depends on what ran before it.
fn derived_seed(seed: u64, epoch: i64, batch: usize, stream: u64) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (epoch as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F)
        ^ (batch as u64).wrapping_mul(0x1656_67B1_9E37_79F9)
        ^ stream.wrapping_mul(0x27D4_EB2F_1656_67C5)
}

fn load_teacher(
    source: &TeacherSource,
    spec: &ModelSpec,
    device: Device,
) -> Result<Network, TrainError> {
    let mut teacher = if source.path.is_dir() {
        let expect = Expectation {
            architecture: None,
            num_classes: Some(spec.num_classes),
        };
        checkpoint::load(&source.path, device, &expect)?.0
    } else {
        let teacher_spec = ModelSpec {
            architecture: source.architecture.clone(),
            ..spec.clone()
        };
        checkpoint::import_pytorch(&source.path, &teacher_spec, device)?
    };
    teacher.set_trainable(false);
    Ok(teacher)
}

/// Per-class sums of per-sample cross-entropy, kept on the device during an epoch.
struct RiskAccumulator {
    clean: Tensor,
    adversarial: Tensor,
    clean_correct: Tensor,
    adversarial_correct: Tensor,
    counts: Tensor,
    has_adversarial: bool,
}

impl RiskAccumulator {
    fn new(classes: i64, device: Device) -> Self {
        let zeros = || Tensor::zeros([classes], (Kind::Double, device));
        RiskAccumulator {
            clean: zeros(),
            adversarial: zeros(),
            clean_correct: zeros(),
            adversarial_correct: zeros(),
            counts: zeros(),
            has_adversarial: false,
        }
    }

    fn add(&mut self, labels: &Tensor, clean_logits: &Tensor, adversarial_logits: Option<&Tensor>) {
        let per_sample =
            |logits: &Tensor| attacks::losses::cross_entropy(logits, labels).to_kind(Kind::Double);
        let correct = |logits: &Tensor| logits.argmax(-1, false).eq_tensor(labels).to_kind(Kind::Double);
        let _ = self.clean.index_add_(0, labels, &per_sample(clean_logits));
        let _ = self.clean_correct.index_add_(0, labels, &correct(clean_logits));
        let _ =
            self.counts
                .index_add_(0, labels, &Tensor::ones_like(&labels.to_kind(Kind::Double)));
        if let Some(logits) = adversarial_logits {
            self.has_adversarial = true;
            let _ = self.adversarial.index_add_(0, labels, &per_sample(logits));
            let _ = self.adversarial_correct.index_add_(0, labels, &correct(logits));
        }
    }

    /// The sums, for a resume state saved within an epoch.
    fn state(&self) -> Vec<(String, Tensor)> {
        let mut named = vec![
            ("clean".to_string(), self.clean.shallow_clone()),
            ("clean_correct".to_string(), self.clean_correct.shallow_clone()),
            ("counts".to_string(), self.counts.shallow_clone()),
        ];
        if self.has_adversarial {
            named.push(("adversarial".to_string(), self.adversarial.shallow_clone()));
            named.push(("adversarial_correct".to_string(), self.adversarial_correct.shallow_clone()));
        }
        named
    }

    /// Restores sums saved by [`RiskAccumulator::state`].
    fn restore(&mut self, mut saved: std::collections::HashMap<String, Tensor>, device: Device) -> Result<(), String> {
        let mut take = |name: &str, into: &mut Tensor| -> Result<bool, String> {
            match saved.remove(name) {
                Some(tensor) if tensor.size() == into.size() => {
                    *into = tensor.to_kind(Kind::Double).to_device(device);
                    Ok(true)
                }
                Some(_) => Err(format!("the saved class-wise sums {name} have the wrong shape")),
                None => Ok(false),
            }
        };
        for (name, into) in [("clean", &mut self.clean), ("clean_correct", &mut self.clean_correct), ("counts", &mut self.counts)] {
            if !take(name, into)? {
                return Err(format!("the saved class-wise sums lack {name}"));
            }
        }
        self.has_adversarial = take("adversarial", &mut self.adversarial)?;
        take("adversarial_correct", &mut self.adversarial_correct)?;
        Ok(())
    }

    /// Class-wise accuracy of the clean and (where there were any) adversarial logits.
    fn accuracies(&self) -> (Vec<f64>, Option<Vec<f64>>) {
        let mean = |sums: &Tensor| -> Vec<f64> {
            rfb_core::host_read::vec_f64(&(sums / self.counts.clamp_min(1.0)), "training epoch: class-wise accuracy")
        };
        (mean(&self.clean_correct), self.has_adversarial.then(|| mean(&self.adversarial_correct)))
    }

    fn risks(&self) -> EpochRisks {
        let mean = |sums: &Tensor| -> Vec<f64> {
            rfb_core::host_read::vec_f64(&(sums / self.counts.clamp_min(1.0)), "training epoch: class-wise risk")
        };
        EpochRisks {
            clean: mean(&self.clean),
            adversarial: self.has_adversarial.then(|| mean(&self.adversarial)),
        }
    }
}

/// Clean and PGD class-wise accuracy of `network` on `dataset`, and the selection score of
/// A.3: average + worst classes' PGD accuracy (the worst class, or the worst 10% of classes on
/// CIFAR-100 and Tiny-ImageNet, as the preset says).
fn evaluate(
    network: &Network,
    dataset: &Dataset,
    preset: &Preset,
    seed: u64,
) -> Result<(ClassCounts, ClassCounts, f64), TrainError> {
    let clean = attacks::clean_accuracy(network, dataset, 256)?;
    let pgd = Pgd {
        steps: preset.selection_pgd_steps,
        ..Pgd::pgd20(preset.attack.eps, seed)
    };
    let robust = attacks::robust_accuracy(&pgd, network, dataset, 256, |_, _| true)?;
    let score = selection_score(&robust.class_accuracy(), preset.selection_worst);
    Ok((clean, robust, score))
}

/// Every training image: the training split and the validation hold-out together (the paper's
/// mode, where selection uses the test split).
fn all_training_images(train: &Dataset, holdout: &Dataset) -> Dataset {
    let labels = Tensor::cat(&[&train.labels, &holdout.labels], 0);
    Dataset {
        images: Tensor::cat(&[&train.images, &holdout.images], 0),
        ids: Tensor::arange(labels.size()[0], (tch::Kind::Int64, labels.device())),
        labels,
        class_names: train.class_names.clone(),
        name: train.name.clone(),
        split: Split::Train,
    }
}

fn append_log(path: &Path, line: &serde_json::Value) -> Result<(), TrainError> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io_error(path))?;
    writeln!(file, "{line}")
        .and_then(|_| file.sync_data())
        .map_err(io_error(path))
}

/// Keeps only the log lines of epochs before `epochs_done` (a killed run may have logged an
/// epoch whose state it never saved).
fn truncate_log(path: &Path, epochs_done: i64) -> Result<(), TrainError> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: String = text
        .lines()
        .filter(|line| {
            serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v["epoch"].as_i64())
                .is_some_and(|epoch| epoch < epochs_done)
        })
        .map(|line| format!("{line}\n"))
        .collect();
    checkpoint::write_atomic(path, kept.as_bytes())?;
    Ok(())
}

fn info_for(
    config: &RunConfig,
    method: &dyn TrainingMethod,
    class_names: &[String],
    epoch: i64,
    selection: Option<Selection>,
) -> CheckpointInfo {
    CheckpointInfo {
        class_names: class_names.to_vec(),
        dataset: config.dataset.name().to_string(),
        method: method.name().to_string(),
        hyperparameters: json!({
            "method": method.hyperparameters(),
            "preset": config.preset.record(&config.method),
            "teacher": config.teacher.as_ref().map(|t| t.path.display().to_string()),
            "select_on": config.select_on.as_str(),
        }),
        seed: Some(config.seed),
        epoch: Some(epoch),
        selection,
    }
}

/// Trains as `config` says and returns the summary; see the module docs for what it writes.
///
/// The stages, each a function the grid runner and the CLI reach through this one:
/// [`check_config`], [`prepare_data`], [`prepare_models`], [`restore_or_start`],
/// [`write_run_record`], then per epoch [`train_epoch`] and [`finish_epoch`], and at the end
/// [`test_selected`].
pub fn run(config: &RunConfig) -> Result<RunSummary, TrainError> {
    check_config(config)?;
    let out = &config.out;
    std::fs::create_dir_all(out).map_err(io_error(out))?;
    let mut data = prepare_data(config)?;
    let mut method = methods::build(&config.method, data.classes as usize, &config.preset.methods)
        .map_err(TrainError::Config)?;
    if config.preset.init_required && config.init.is_none() && !resuming(config) {
        return Err(TrainError::Config(format!(
            "{} fine-tunes a robust model ({} epochs at lr {}): pass --init with one of our checkpoint \
             directories of the same architecture, e.g. a TRADES run's best/",
            config.method, config.preset.epochs, config.preset.learning_rate
        )));
    }
    data.choose_splits(config, method.as_ref())?;
    let mut models = prepare_models(config, &data, method.as_ref())?;
    let mut state = restore_or_start(config, &data, &mut models, method.as_mut())?;
    write_run_record(config, &data)?;

    let preset = &config.preset;
    let batches_per_epoch = data.batches_per_epoch(preset);
    let remaining = (preset.epochs - state.epochs_done).max(0) as usize * batches_per_epoch - state.partial.batches;
    // A bar on a terminal; in a log, a plain line every few seconds (rfb_progress).
    let progress = rfb_progress::Progress::new(rfb_progress::Mode::detect(!config.progress));
    let bar = progress.task(format!("{} seed {}", method.name(), config.seed), remaining as u64, "batches");
    let mut batches_this_run = 0usize;
    for (epochs_this_run, epoch) in (state.epochs_done..preset.epochs).enumerate() {
        let trained = train_epoch(config, &data, &mut models, method.as_mut(), &mut state, epoch, &bar, &mut batches_this_run);
        let trained = match trained {
            Ok(trained) => trained,
            Err(error) => {
                bar.abandon();
                return Err(error);
            }
        };
        finish_epoch(config, &data, &mut models, method.as_mut(), &mut state, epoch, trained, &bar, &progress)?;
        let is_last = epoch + 1 == preset.epochs;
        // A stop asked for during the epoch's last batch or its end: the state just saved is
        // that of the finished epoch.
        if stop_requested() && !is_last {
            bar.abandon();
            return Err(TrainError::StopRequested { epochs_done: state.epochs_done, batches_done: 0, out: out.clone() });
        }
        if config.stop_after.is_some_and(|n| epochs_this_run as i64 + 1 >= n) && !is_last {
            bar.abandon();
            progress.println(format!("stopped after {} epochs as asked", epochs_this_run + 1));
            return Ok(RunSummary {
                best_epoch: state.best_epoch,
                best_score: state.best_score,
                epochs_done: state.epochs_done,
                test_clean: None,
                test_pgd: None,
                class_names: data.class_names,
            });
        }
    }
    bar.finish();
    test_selected(config, &state, data.class_names)
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
        return Err(TrainError::Config(
            "checkpoints are selected on the validation or the test split, not on the training split".into(),
        ));
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
    /// split trains on every training image otherwise.
    pub fn choose_splits(&mut self, config: &RunConfig, method: &dyn TrainingMethod) -> Result<(), TrainError> {
        let Some(holdout) = self.holdout.take() else {
            return Ok(());
        };
        self.adaptation_split = method.needs_validation().then(|| holdout.shallow_clone());
        if let (Split::Test, None) = (config.select_on, &self.adaptation_split) {
            self.train = all_training_images(&self.train, &holdout);
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

/// Stage: the state of a new run, or the saved one of `--resume` (weights, momentum, the
/// method's state, and the part of an epoch a stop on request left unfinished).
fn restore_or_start(
    config: &RunConfig,
    data: &RunData,
    models: &mut RunModels,
    method: &mut dyn TrainingMethod,
) -> Result<ResumeState, TrainError> {
    let out = &config.out;
    let log_path = out.join("log.jsonl");
    if !resuming(config) {
        let _ = std::fs::remove_file(&log_path);
        return Ok(ResumeState::default());
    }
    let resume_pointer = out.join("resume.json");
    let pointer: ResumePointer =
        serde_json::from_slice(&std::fs::read(&resume_pointer).map_err(io_error(&resume_pointer))?)
            .map_err(|e| TrainError::Config(format!("{}: {e}", resume_pointer.display())))?;
    let dir = out.join(&pointer.dir);
    let state_path = dir.join("state.json");
    let state: ResumeState = serde_json::from_slice(&std::fs::read(&state_path).map_err(io_error(&state_path))?)
        .map_err(|e| TrainError::Config(format!("{}: {e}", state_path.display())))?;
    let expect = Expectation { architecture: Some(models.spec.architecture.clone()), num_classes: Some(data.classes) };
    let (saved, _) = checkpoint::load(&dir.join("model"), config.device, &expect)?;
    copy_weights(&models.student, &saved.var_store.variables().into_iter().collect::<Vec<_>>())?;
    let momentum = checkpoint::load_tensors(&dir.join("momentum.safetensors"))?;
    models.optimizer.restore(momentum).map_err(TrainError::Config)?;
    method.restore(&state.method_state).map_err(TrainError::Config)?;
    let method_tensors = dir.join("method.safetensors");
    if method_tensors.is_file() {
        method.restore_tensors(checkpoint::load_tensors(&method_tensors)?).map_err(TrainError::Config)?;
    }
    truncate_log(&log_path, state.epochs_done)?;
    Ok(state)
}

/// Stage: `run.json`, the configuration, seed and versions of the run.
pub fn write_run_record(config: &RunConfig, data: &RunData) -> Result<(), TrainError> {
    let run_record = json!({
        "method": config.method,
        "dataset": config.dataset.name(),
        "seed": config.seed,
        "preset": config.preset.record(&config.method),
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
    checkpoint::write_atomic(
        &config.out.join("run.json"),
        serde_json::to_string_pretty(&run_record).unwrap_or_default().as_bytes(),
    )?;
    Ok(())
}

/// What an epoch's batches leave for its end.
struct TrainedEpoch {
    started: Instant,
    lr: f64,
    loss_sum: f64,
    batches: usize,
    risks: RiskAccumulator,
}

/// Stage: one epoch's batches (from where a stop left it). On a stop request it saves the
/// state after the batch it finished, so that `--resume` continues from that batch.
#[allow(clippy::too_many_arguments)]
fn train_epoch(
    config: &RunConfig,
    data: &RunData,
    models: &mut RunModels,
    method: &mut dyn TrainingMethod,
    state: &mut ResumeState,
    epoch: i64,
    bar: &rfb_progress::Task,
    batches_this_run: &mut usize,
) -> Result<TrainedEpoch, TrainError> {
    let preset = &config.preset;
    let mut trained = TrainedEpoch {
        started: Instant::now(),
        lr: preset.learning_rate_at(epoch),
        loss_sum: state.partial.loss_sum,
        batches: state.partial.batches,
        risks: RiskAccumulator::new(data.classes, config.device),
    };
    if state.partial.batches > 0 {
        let saved = out_dir_tensors(&config.out, &state.partial)?;
        trained.risks.restore(saved, config.device).map_err(TrainError::Config)?;
    }
    let skip = state.partial.batches;
    state.partial = PartialEpoch::default();
    let batches = data.train.shuffled_batches(preset.batch_size, derived_seed(config.seed, epoch, 0, 1));
    for (batch, (images, labels)) in batches.enumerate().skip(skip) {
        let images = if preset.crop_padding > 0 {
            data::augment_crop_flip(&images, preset.crop_padding, derived_seed(config.seed, epoch, batch, 2))
        } else {
            images
        };
        let images = images.to_device(config.device);
        let labels = labels.to_device(config.device);
        tch::manual_seed((derived_seed(config.seed, epoch, batch, 3) >> 1) as i64);
        let context = StepContext { student: &models.student, teacher: models.teacher.as_ref(), attack: preset.attack };
        let output = method.step(&context, &images, &labels);
        // The one read of a step: a non-finite loss must stop the run before the optimiser applies it.
        let loss_value = rfb_core::host_read::scalar_f64(&output.loss, "training step: loss (non-finite check and log)");
        if !loss_value.is_finite() {
            return Err(TrainError::NonFiniteLoss { epoch, batch, value: loss_value, out: config.out.clone() });
        }
        models.optimizer.step(&output.loss, trained.lr);
        trained.risks.add(&labels, &output.clean_logits, output.adversarial_logits.as_ref());
        trained.loss_sum += loss_value;
        trained.batches += 1;
        *batches_this_run += 1;
        bar.set_message(format!("epoch {}/{} loss {:.4}", epoch + 1, preset.epochs, loss_value));
        bar.inc(1);
        let stop_for_test = config.stop_after_batches.is_some_and(|n| *batches_this_run >= n);
        if (stop_requested() || stop_for_test) && batch + 1 < data.batches_per_epoch(preset) {
            bar.set_message("stopped on request");
            state.partial = PartialEpoch { batches: batch + 1, loss_sum: trained.loss_sum };
            save_resume_state(config, models, method, state, epoch, &data.class_names, Some(&trained.risks))?;
            return Err(TrainError::StopRequested {
                epochs_done: state.epochs_done,
                batches_done: batch + 1,
                out: config.out.clone(),
            });
        }
    }
    Ok(trained)
}

/// Stage: the end of an epoch: the method's class-wise adaptation, evaluation and selection
/// (A.3), the checkpoints, the resume state and the log line.
#[allow(clippy::too_many_arguments)]
fn finish_epoch(
    config: &RunConfig,
    data: &RunData,
    models: &mut RunModels,
    method: &mut dyn TrainingMethod,
    state: &mut ResumeState,
    epoch: i64,
    trained: TrainedEpoch,
    bar: &rfb_progress::Task,
    progress: &rfb_progress::Progress,
) -> Result<(), TrainError> {
    let preset = &config.preset;
    let out = &config.out;
    let student = &mut models.student;
    let mean_loss = trained.loss_sum / trained.batches.max(1) as f64;
    let epoch_risks = trained.risks.risks();
    let (train_clean_accuracy, train_adversarial_accuracy) = trained.risks.accuracies();
    // FRL's and CFA's class-wise adaptation: always on the validation hold-out.
    let student_evaluation = match &data.adaptation_split {
        Some(split) => {
            bar.set_message(format!("epoch {}/{}: measuring the classes on the validation split", epoch + 1, preset.epochs));
            student.set_trainable(false);
            let evaluation = evaluate(student, split, preset, config.seed)?;
            student.set_trainable(true);
            Some(evaluation)
        }
        None => None,
    };
    method.end_epoch(&EpochEnd {
        epoch,
        epochs: preset.epochs,
        risks: &epoch_risks,
        train_clean_accuracy: &train_clean_accuracy,
        train_adversarial_accuracy: train_adversarial_accuracy.as_deref(),
        validation: student_evaluation.as_ref().map(|(clean, robust, _)| (clean, robust)),
        lr_decayed: preset.lr_drops_after(epoch),
        student,
    });
    // What is evaluated and saved: the student, or the method's weight average (CFA).
    let averaged = match method.averaged_weights() {
        Some(weights) => Some(network_with_weights(&models.spec, config.device, weights)?),
        None => None,
    };

    let mut evaluation = serde_json::Value::Null;
    if preset.evaluates_after(epoch) {
        // The adaptation's measurement is the selection's when both are of the student on the
        // validation hold-out.
        let reusable = averaged.is_none() && config.select_on == Split::Validation;
        let (clean, robust, score) = match (reusable, student_evaluation) {
            (true, Some(done)) => done,
            _ => {
                // In a log the progress line says so instead of repeating 100% for as long as
                // the evaluation (PGD on the selection split) takes.
                bar.set_message(format!(
                    "epoch {}/{}: evaluating on the {} split (clean and PGD)",
                    epoch + 1,
                    preset.epochs,
                    config.select_on.as_str()
                ));
                student.set_trainable(false);
                let result = evaluate(averaged.as_ref().unwrap_or(student), &data.selection_split, preset, config.seed);
                student.set_trainable(true);
                result?
            }
        };
        let evaluated = averaged.as_ref().unwrap_or(student);
        evaluation = json!({
            "split": config.select_on.as_str(),
            "clean_class_accuracy": clean.class_accuracy(),
            "pgd_class_accuracy": robust.class_accuracy(),
            "clean_accuracy": clean.overall_accuracy(),
            "pgd_accuracy": robust.overall_accuracy(),
            "pgd_worst_accuracy": preset.selection_worst.accuracy(&robust.class_accuracy()),
            "score": score,
        });
        if state.best_score.is_none_or(|best| score > best) {
            state.best_score = Some(score);
            state.best_epoch = Some(epoch);
            let rule = format!(
                "max avg + {} PGD-{} accuracy on {}",
                preset.selection_worst.describe(),
                preset.selection_pgd_steps,
                config.select_on.as_str()
            );
            let info = info_for(config, method, &data.class_names, epoch, Some(Selection { rule, value: Some(score) }));
            checkpoint::save(&out.join("best"), evaluated, info)?;
        }
        bar.set_message(format!("epoch {}/{} loss {:.4}", epoch + 1, preset.epochs, mean_loss));
        // Named, so that the lines of runs side by side in one log can be told apart.
        progress.println(format!(
            "{} seed {}, epoch {:>3}: loss {:.4}  {} clean {:.2}%  PGD {:.2}%  selection score {:.2}",
            method.name(),
            config.seed,
            epoch + 1,
            mean_loss,
            config.select_on.as_str(),
            clean.overall_accuracy(),
            robust.overall_accuracy(),
            score
        ));
    }
    let evaluated = averaged.as_ref().unwrap_or(student);
    let last_info = info_for(config, method, &data.class_names, epoch, Some(Selection { rule: "last".into(), value: None }));
    checkpoint::save(&out.join("last"), evaluated, last_info.clone())?;
    if preset.checkpoint_every > 0 && (epoch + 1) % preset.checkpoint_every == 0 {
        checkpoint::save(&out.join(format!("epoch-{:04}", epoch + 1)), evaluated, last_info)?;
    }

    state.epochs_done = epoch + 1;
    let resume_dir_name = resume_dir_name(state);
    let log_line = json!({
        "epoch": epoch,
        "learning_rate": trained.lr,
        "loss": mean_loss,
        "seconds": trained.started.elapsed().as_secs_f64(),
        "risk_clean": epoch_risks.clean,
        "risk_adversarial": epoch_risks.adversarial,
        "temperatures": method.temperatures(),
        "method_state": method.state(),
        "weight_average": method.averaged_weights().is_some(),
        "evaluation": evaluation,
    });
    // The resume state first, then the log line, then the pointer: a crash before the pointer
    // moves resumes from the previous state (and drops the log line of this epoch).
    write_resume_dir(config, models, method, state, &resume_dir_name, epoch, &data.class_names, None)?;
    append_log(&out.join("log.jsonl"), &log_line)?;
    move_resume_pointer(out, &resume_dir_name)
}

/// Saves the state of a run stopped within `epoch` and points `resume.json` at it.
fn save_resume_state(
    config: &RunConfig,
    models: &RunModels,
    method: &dyn TrainingMethod,
    state: &mut ResumeState,
    epoch: i64,
    class_names: &[String],
    risks: Option<&RiskAccumulator>,
) -> Result<(), TrainError> {
    let name = resume_dir_name(state);
    write_resume_dir(config, models, method, state, &name, epoch, class_names, risks)?;
    move_resume_pointer(&config.out, &name)
}

/// `resume-0005` after five epochs; `resume-0005-b00042` 42 batches into the sixth.
fn resume_dir_name(state: &ResumeState) -> String {
    match state.partial.batches {
        0 => format!("resume-{:04}", state.epochs_done),
        batches => format!("resume-{:04}-b{batches:05}", state.epochs_done),
    }
}

#[allow(clippy::too_many_arguments)]
fn write_resume_dir(
    config: &RunConfig,
    models: &RunModels,
    method: &dyn TrainingMethod,
    state: &mut ResumeState,
    name: &str,
    epoch: i64,
    class_names: &[String],
    risks: Option<&RiskAccumulator>,
) -> Result<(), TrainError> {
    state.method_state = method.state();
    let dir = config.out.join(name);
    let info = info_for(config, method, class_names, epoch, Some(Selection { rule: "resume".into(), value: None }));
    checkpoint::save(&dir.join("model"), &models.student, info)?;
    checkpoint::save_tensors(&dir.join("momentum.safetensors"), &models.optimizer.state())?;
    checkpoint::save_tensors(&dir.join("method.safetensors"), &method.tensor_state())?;
    if let Some(risks) = risks {
        checkpoint::save_tensors(&dir.join("risks.safetensors"), &risks.state())?;
    }
    checkpoint::write_atomic(&dir.join("state.json"), serde_json::to_string(&state).unwrap_or_default().as_bytes())?;
    Ok(())
}

fn move_resume_pointer(out: &Path, name: &str) -> Result<(), TrainError> {
    checkpoint::write_atomic(
        &out.join("resume.json"),
        serde_json::to_string(&ResumePointer { dir: name.to_string() }).unwrap_or_default().as_bytes(),
    )?;
    remove_old_resume_dirs(out, name);
    Ok(())
}

/// The class-wise sums of the unfinished epoch a stop on request saved.
fn out_dir_tensors(out: &Path, partial: &PartialEpoch) -> Result<std::collections::HashMap<String, Tensor>, TrainError> {
    let pointer = out.join("resume.json");
    let pointer: ResumePointer = serde_json::from_slice(&std::fs::read(&pointer).map_err(io_error(&pointer))?)
        .map_err(|e| TrainError::Config(format!("{}: {e}", pointer.display())))?;
    let path = out.join(pointer.dir).join("risks.safetensors");
    if !path.is_file() {
        return Err(TrainError::Config(format!(
            "{} is missing: the resume state stopped {} batches into an epoch but lacks its class-wise sums",
            path.display(),
            partial.batches
        )));
    }
    Ok(checkpoint::load_tensors(&path)?)
}

/// Stage: the selected checkpoint measured on the test split, written to `summary.json`.
fn test_selected(config: &RunConfig, state: &ResumeState, class_names: Vec<String>) -> Result<RunSummary, TrainError> {
    let (mut selected, _) = checkpoint::load(&config.out.join("best"), config.device, &Expectation::default())?;
    selected.set_trainable(false);
    let test = data::load(config.dataset, Split::Test, config.data_dir.as_deref())?;
    let (clean, robust, _) = evaluate(&selected, &test, &config.preset, config.seed)?;
    let summary = RunSummary {
        best_epoch: state.best_epoch,
        best_score: state.best_score,
        epochs_done: state.epochs_done,
        test_clean: Some(clean),
        test_pgd: Some(robust),
        class_names,
    };
    checkpoint::write_atomic(
        &config.out.join("summary.json"),
        serde_json::to_string_pretty(&summary).unwrap_or_default().as_bytes(),
    )?;
    Ok(summary)
}

/// Copies named weights into `network`'s variables (every variable must be present).
fn copy_weights(network: &Network, weights: &[(String, Tensor)]) -> Result<(), TrainError> {
    let by_name: std::collections::HashMap<&str, &Tensor> =
        weights.iter().map(|(name, tensor)| (name.as_str(), tensor)).collect();
    tch::no_grad(|| -> Result<(), TrainError> {
        for (name, mut variable) in network.var_store.variables() {
            let source = by_name.get(name.as_str()).ok_or_else(|| {
                TrainError::Config(format!("the weights to copy lack the variable {name}"))
            })?;
            variable.f_copy_(source)?;
        }
        Ok(())
    })
}

/// A fresh network of `spec` holding `weights` (for evaluating and saving a weight average).
fn network_with_weights(
    spec: &ModelSpec,
    device: Device,
    weights: &[(String, Tensor)],
) -> Result<Network, TrainError> {
    let mut network = models::build(spec, device)?;
    copy_weights(&network, weights)?;
    network.set_trainable(false);
    Ok(network)
}

fn remove_old_resume_dirs(out: &Path, keep: &str) {
    if let Ok(entries) = std::fs::read_dir(out) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("resume-") && name != keep {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}
