//! Where an evaluation's model code runs: in a sandboxed worker process (the default, see
//! [`crate::model_process`] and [`crate::sandbox`]) or in this process (`evaluator eval
//! --in-process`, for measuring what a worker costs). Either way cached results are answered
//! from the server's cache without a worker, computed ones are stored by this process, and the
//! results reach `emit` in request order.

use std::sync::Arc;
use std::time::Instant;

use rfb_proto::v1::{evaluate_event::Event, EvaluateRequest};

use crate::cache::StoredResult;
use crate::catalog::Catalog;
use crate::engine::{Engine, StopCheck};
use crate::model_process::protocol::{encode_request, Expected, Message, Task, WorkerSetup};
use crate::model_process::{self, WorkerProcess};
use crate::request::{attack_result, split_to_proto, EngineError, PreparedEvaluation};
use crate::sandbox::{Protection, SandboxConfig};

/// Runs prepared evaluations, on one thread (an in-process engine holds tensors).
pub struct Runner {
    catalog: Arc<Catalog>,
    config: SandboxConfig,
    protection: Protection,
    /// The in-process engine (`--in-process` only).
    engine: Option<Engine>,
}

impl Runner {
    /// `protection`: what [`model_process::probe`] found under `config`.
    pub fn new(catalog: Arc<Catalog>, config: SandboxConfig, protection: Protection) -> Self {
        let engine = config.in_process.then(|| Engine::new(catalog.clone()));
        Runner { catalog, config, protection, engine }
    }

    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    pub fn protection(&self) -> &Protection {
        &self.protection
    }

    /// Whether models run in this process.
    pub fn in_process(&self) -> bool {
        self.engine.is_some()
    }

    /// Drops what an in-process engine holds (after a panic).
    pub fn reset(&mut self) {
        if let Some(engine) = &mut self.engine {
            engine.reset();
        }
    }

    /// Runs every attack of `job`: progress and one result per attack, in order, to `emit`
    /// (an error it returns stops the run). `stop` is asked between attack iterations
    /// in-process, and every [`model_process::POLL`] while a worker runs (then a reason kills
    /// the worker); `alive` hears a worker's signs of life. `deadline` caps a worker's CPU time.
    pub fn run(
        &mut self,
        job: &PreparedEvaluation,
        deadline: Option<Instant>,
        stop: StopCheck,
        alive: &dyn Fn(),
        emit: &mut dyn FnMut(Event) -> Result<(), EngineError>,
    ) -> Result<(), EngineError> {
        let cached: Vec<Option<StoredResult>> = job.attacks.iter().map(|attack| self.catalog.cached(attack)).collect();
        let to_compute: Vec<usize> = cached.iter().enumerate().filter(|(_, c)| c.is_none()).map(|(i, _)| i).collect();
        if !to_compute.is_empty() && job.manifest.is_torchscript() {
            self.protection.check_torchscript()?;
        }
        if let Some(engine) = &mut self.engine {
            return engine.run_until(job, stop, emit);
        }
        let mut results: Vec<Option<(StoredResult, bool)>> = cached.into_iter().map(|c| c.map(|s| (s, true))).collect();
        let mut next = 0;
        let mut flush = |results: &mut Vec<Option<(StoredResult, bool)>>, emit: &mut dyn FnMut(Event) -> Result<(), EngineError>| {
            while next < results.len() {
                let Some((stored, cached)) = results[next].take() else { break };
                emit(Event::Result(attack_result(job, &job.attacks[next], &stored, cached)))?;
                next += 1;
            }
            Ok::<(), EngineError>(())
        };
        flush(&mut results, emit)?;
        if to_compute.is_empty() {
            return Ok(());
        }
        let mut worker = self.start_worker(job, &to_compute, deadline)?;
        let mut computed = 0;
        loop {
            let message = match worker.next(stop)? {
                Some(message) => message,
                None => return Err(worker.ended_early()),
            };
            match message {
                Message::Confined { enforced } => {
                    tracing::debug!(model = %job.model, pid = worker.id(), ?enforced, "worker process confined");
                }
                Message::Alive => alive(),
                Message::Progress { attack_index, attack, component, component_index, components, done, total } => {
                    let Some(&index) = usize::try_from(attack_index).ok().and_then(|i| to_compute.get(i)) else {
                        return Err(EngineError::Internal(
                            "the model's worker process reported progress of an attack it was not given".into(),
                        ));
                    };
                    emit(Event::Progress(rfb_proto::v1::Progress {
                        attack,
                        attack_index: index as i64,
                        examples_done: done,
                        examples_total: total,
                        component,
                        component_index,
                        components,
                    }))?;
                }
                Message::Result { index, stored } => {
                    let Some(&index) = to_compute.get(index) else {
                        return Err(EngineError::Internal("the model's worker process sent a result of an attack it was not given".into()));
                    };
                    check_result(job, &stored)?;
                    let attack = &job.attacks[index];
                    if results[index].is_some() || stored.attack_name != attack.name {
                        return Err(EngineError::Internal(format!(
                            "the model's worker process sent a result of {:?} where {:?} was expected",
                            stored.attack_name, attack.name
                        )));
                    }
                    self.catalog.store(attack, &stored);
                    results[index] = Some((stored, false));
                    computed += 1;
                    flush(&mut results, emit)?;
                }
                Message::Done if computed == to_compute.len() => {
                    worker.finish();
                    return Ok(());
                }
                Message::Error { error: kind, message } => return Err(kind.error(message)),
                other => {
                    return Err(EngineError::Internal(format!("the model's worker process sent an unexpected message ({other:?})")));
                }
            }
        }
    }

    fn start_worker(
        &self,
        job: &PreparedEvaluation,
        to_compute: &[usize],
        deadline: Option<Instant>,
    ) -> Result<WorkerProcess, EngineError> {
        let request = EvaluateRequest {
            model: job.model.clone(),
            dataset: job.dataset.name().to_string(),
            split: split_to_proto(job.split) as i32,
            examples_per_class: job.examples_per_class,
            attacks: to_compute.iter().map(|&i| job.attacks[i].spec.clone()).collect(),
            batch_size: job.batch_size,
            precision: job.precision as i32,
            shard: job.shard.map(|s| s.to_proto()),
            ..Default::default()
        };
        let expected = Expected {
            model_sha256: job.model_sha256.clone(),
            data_sha256: job.data_sha256.clone(),
            cache_keys: to_compute.iter().map(|&i| job.attacks[i].cache_key.clone()).collect(),
        };
        let device = self.catalog.device();
        let setup = WorkerSetup {
            models_dir: self.catalog.models_dir().to_path_buf(),
            data_dir: self.catalog.data_dir().map(|p| p.to_path_buf()),
            device: crate::device_name(device),
            default_batch_size: job.batch_size,
        };
        // CPU time: every core busy until the deadline (the server kills the worker at the
        // deadline; this is the kernel's backstop), else the configured cap.
        let from_deadline = deadline.map(|d| {
            d.saturating_duration_since(Instant::now())
                .as_secs()
                .saturating_add(1)
                .saturating_mul(model_process::cores())
                .saturating_add(10)
        });
        let cpu_seconds = match (from_deadline, self.config.cpu_seconds) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let require_full = job.manifest.is_torchscript() && !self.config.trust_torchscript;
        let mut confinement = model_process::confinement(&self.config, device.is_cuda(), cpu_seconds, require_full);
        // No CUDA rule may open the models (other users' uploads) or the cache.
        confinement.forbidden.push(self.catalog.models_dir().to_path_buf());
        confinement.forbidden.extend(self.catalog.cache_dir().map(|p| p.to_path_buf()));
        let task = Task::Evaluate { setup, request: encode_request(&request), expected, confinement };
        let program = self.config.program()?;
        let worker = WorkerProcess::start(&program, &task, None)?;
        tracing::debug!(model = %job.model, pid = worker.id(), attacks = to_compute.len(), "worker process started");
        Ok(worker)
    }
}

/// A worker's result must fit its job: one count per class, as many examples as the job has.
fn check_result(job: &PreparedEvaluation, stored: &StoredResult) -> Result<(), EngineError> {
    let classes = job.class_counts.len();
    let examples: i64 = stored.total.iter().sum();
    if stored.correct.len() != classes
        || stored.total.len() != classes
        || stored.class_names.len() != classes
        || examples != job.examples()
        || stored.correct.iter().zip(&stored.total).any(|(c, t)| *c < 0 || c > t)
        || !crate::cache::confusion_fits(&stored.confusion, &stored.correct, &stored.total)
    {
        return Err(EngineError::Internal(format!(
            "the model's worker process sent a result that does not fit the job ({} classes, {} examples)",
            classes,
            job.examples()
        )));
    }
    Ok(())
}
