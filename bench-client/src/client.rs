//! Talking to evaluators: connecting (with an optional bearer token), listing checkpoints, and
//! running one evaluation per model and seed, spread over every server with one request in
//! flight per server (each evaluator owns one accelerator).
//!
//! With several servers each evaluation is split into shards (by default one per server; see
//! the proto's `Shard`): every server takes the next shard from a common queue, and the
//! shards' per-class counts are added up into the evaluation's result
//! ([`results::merge_shards`]), which equals the unsharded one exactly at fp32 and bf16.
//!
//! A failed evaluation is recorded in `Results::failures` and the rest goes on. A shard that
//! fails for a reason of the server's (unreachable, shut down, out of memory, an internal
//! error) is redone on another server that has not failed it yet; a server that becomes
//! unreachable stops taking work. `Results::servers` and each run's `shards` record who did
//! what.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use rfb_progress::{Mode, Progress, Task};
use rfb_proto::v1::evaluate_event::Event;
use rfb_proto::v1::evaluator_client::EvaluatorClient;
use rfb_proto::v1::{AttackKind, AttackResult, EvaluateRequest, ListModelsRequest, ModelInfo, Precision, Shard, Split};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

use crate::attacks;
use crate::results::{self, AttackRun, Failure, ModelResults, Results, Sanity, SeedRun, ServerInfo, Settings, ShardFailure, ShardRun};
use crate::selection::{self, ModelRequest, Selection};

/// Adds `authorization: Bearer <token>` to every call when a token is set.
#[derive(Clone, Default)]
pub struct Auth(Option<MetadataValue<Ascii>>);

impl Auth {
    pub fn new(token: Option<&str>) -> anyhow::Result<Auth> {
        match token {
            None => Ok(Auth(None)),
            Some(t) => {
                let value: MetadataValue<Ascii> =
                    format!("Bearer {}", t.trim()).parse().context("the token has characters not allowed in a header")?;
                Ok(Auth(Some(value)))
            }
        }
    }
}

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

pub type Client = EvaluatorClient<InterceptedService<Channel, Auth>>;

/// `host:port` -> `http://host:port`; URLs with a scheme are kept.
pub fn normalise_endpoint(server: &str) -> String {
    let server = server.trim().trim_end_matches('/');
    if server.contains("://") {
        server.to_string()
    } else {
        format!("http://{server}")
    }
}

/// Reads a bearer token from a file (surrounding whitespace removed).
pub fn read_token(path: &std::path::Path) -> anyhow::Result<String> {
    let token = std::fs::read_to_string(path).with_context(|| format!("reading the token file {}", path.display()))?;
    let token = token.trim().to_string();
    if token.is_empty() {
        bail!("the token file {} is empty", path.display());
    }
    Ok(token)
}

pub async fn connect(server: &str, auth: &Auth, timeout: Duration) -> anyhow::Result<Client> {
    let url = normalise_endpoint(server);
    let endpoint = Endpoint::from_shared(url.clone()).with_context(|| format!("bad server address '{server}'"))?.connect_timeout(timeout);
    let channel = endpoint.connect().await.with_context(|| format!("cannot connect to {url}"))?;
    Ok(EvaluatorClient::with_interceptor(channel, auth.clone()))
}

/// A gRPC status as one line.
pub fn status_text(status: &Status) -> String {
    let hint = match status.code() {
        Code::Unauthenticated | Code::PermissionDenied => " (check --token-file)",
        _ => "",
    };
    format!("{:?}: {}{hint}", status.code(), status.message())
}

pub async fn list_models(client: &mut Client) -> anyhow::Result<(Vec<ModelInfo>, Vec<String>)> {
    let response =
        client.list_models(ListModelsRequest {}).await.map_err(|s| anyhow::anyhow!("ListModels failed: {}", status_text(&s)))?.into_inner();
    Ok((response.models, response.problems))
}

/// Everything `compare` needs.
#[derive(Debug, Clone)]
pub struct CompareConfig {
    pub servers: Vec<String>,
    pub token: Option<String>,
    pub requests: Vec<ModelRequest>,
    pub seeds: Option<Vec<u64>>,
    pub checkpoint: String,
    pub settings: Settings,
    pub progress: bool,
    pub command: String,
    pub connect_timeout: Duration,
    /// Deadline of one request (all its attacks; one shard's when sharded), if any.
    pub deadline: Option<Duration>,
    /// Shards per evaluation: 0 = one per reachable server (no sharding with one server);
    /// 1 = no sharding.
    pub shards: usize,
}

/// One request to make: an evaluation (one model and seed), or one shard of it.
#[derive(Debug, Clone)]
struct Job {
    /// Which evaluation (index into the list of evaluations).
    evaluation: usize,
    model_index: usize,
    seed: u64,
    info: ModelInfo,
    /// `(index, count)` when the evaluation is sharded.
    shard: Option<(i64, i64)>,
    /// Servers it failed on, with the error.
    failed_on: Vec<ShardFailure>,
}

enum Outcome {
    Done {
        job: Job,
        run: SeedRun,
        server: String,
    },
    Failed {
        job: Job,
        server: String,
        error: String,
    },
    /// Failed on `server` for a reason of the server's, and queued again for another.
    Requeued {
        server: String,
    },
}

/// The work queue shared by the servers' workers. A worker leaves only when no job it could
/// take is queued and no job is running anywhere (a running one may come back to be redone).
struct WorkQueue {
    jobs: Mutex<VecDeque<Job>>,
    running: AtomicUsize,
}

/// Errors that say nothing about the server (the request itself is wrong, or the checkpoint
/// is): redoing the job elsewhere would fail the same way.
fn is_request_error(code: Code) -> bool {
    matches!(
        code,
        Code::InvalidArgument
            | Code::NotFound
            | Code::FailedPrecondition
            | Code::Unauthenticated
            | Code::PermissionDenied
            | Code::Unimplemented
            | Code::OutOfRange
            | Code::AlreadyExists
            | Code::DeadlineExceeded
    )
}

/// Errors after which the server is taken for gone (the connection failed or broke).
fn server_is_gone(code: Code) -> bool {
    matches!(code, Code::Unavailable | Code::Unknown)
}

struct Server {
    endpoint: String,
    client: Client,
    models: HashSet<String>,
}

/// The attack of each radius of the robustness curve: `sweep.attack` at that eps, and clean
/// accuracy at radius 0 (no perturbation at all: what any attack at eps 0 must leave, and
/// cached once with the compared attacks' clean column).
pub fn sweep_settings(sweep: &results::SweepSetting) -> Vec<results::AttackSetting> {
    sweep
        .radii
        .iter()
        .map(|&eps| {
            if eps == 0.0 {
                attacks::setting_of_spec(
                    &sweep.attack.label,
                    rfb_proto::v1::AttackSpec { kind: AttackKind::Clean as i32, ..Default::default() },
                )
            } else {
                results::AttackSetting { eps: Some(eps), ..sweep.attack.clone() }
            }
        })
        .collect()
}

/// Every attack of a request: the compared attacks, then one per radius of the robustness
/// curve (each radius its own attack, so the evaluator computes and caches it on its own).
fn requested_attacks(settings: &Settings) -> Vec<results::AttackSetting> {
    let curve = settings.sweep.as_ref().map(sweep_settings).unwrap_or_default();
    settings.attacks.iter().cloned().chain(curve).collect()
}

fn attack_run(setting: &results::AttackSetting, result: AttackResult) -> anyhow::Result<AttackRun> {
    if let Some(spec) = &result.attack {
        let expected = AttackKind::from_str_name(&setting.kind).map(|k| k as i32);
        if expected.is_some_and(|k| k != spec.kind) {
            bail!("the server answered attack kind {} where {} was asked for", spec.kind, setting.kind);
        }
    }
    let ran = result.attack.clone().map(|spec| crate::attacks::setting_of_spec(&setting.label, spec));
    let class_names = result.classes.iter().map(|c| c.class_name.clone()).collect();
    let correct = result.classes.iter().map(|c| c.correct).collect();
    let total = result.classes.iter().map(|c| c.total).collect();
    // Empty from a server older than the field; else one row per class, checked below.
    let confusion = if result.classes.iter().all(|c| c.predicted_as.is_empty()) {
        Vec::new()
    } else {
        result.classes.iter().map(|c| c.predicted_as.clone()).collect()
    };
    let server_metrics = result.metrics.map(|m| {
        [("average", m.average), ("worst", m.worst), ("worst_10_percent", m.worst_10_percent), ("nsd", m.nsd)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect()
    });
    let run = AttackRun {
        attack: setting.label.clone(),
        attack_name: result.attack_name,
        class_names,
        correct,
        total,
        device: result.device,
        elapsed_seconds: result.elapsed_seconds,
        cached: result.cached,
        sanity: result.sanity.map(|s| Sanity {
            randomised: s.randomised,
            probabilities_not_logits: s.probabilities_not_logits,
            zero_gradient_fraction: s.zero_gradient_fraction,
            possible_gradient_masking: s.possible_gradient_masking,
            dynamic: s.dynamic,
            dlr_zero_gradient_points: s.dlr_zero_gradient_points,
            square_robust_accuracy_drop: s.square_robust_accuracy_drop,
            square_lowered_robust_accuracy: s.square_lowered_robust_accuracy,
            targets_requested: s.targets_requested,
            targets_used: s.targets_used,
        }),
        ran,
        evaluator_version: result.versions.as_ref().map(|v| v.evaluator.clone()).unwrap_or_default(),
        server_metrics,
        components: result
            .components
            .into_iter()
            .map(|c| results::ComponentRun { name: c.name, seconds: c.seconds, attacked: c.attacked, robust_after: c.robust_after })
            .collect(),
        confusion,
    };
    run.check_confusion().context("the server's answer is inconsistent")?;
    Ok(run)
}

/// Runs one evaluation; Err(status) for gRPC failures, Ok(Err(text)) for wrong answers.
async fn evaluate_one(
    client: &mut Client,
    job: &Job,
    settings: &Settings,
    deadline: Option<Duration>,
    bar: &Task,
    label: &str,
    versions: &Mutex<ServerInfo>,
) -> Result<Result<SeedRun, String>, Status> {
    let request = match evaluate_request(job, settings, deadline) {
        Ok(request) => request,
        Err(e) => return Ok(Err(e)),
    };
    let label = match job.shard {
        Some((index, count)) => format!("{label} [shard {}/{count}]", index + 1),
        None => label.to_string(),
    };
    bar.set_message(format!("{label} seed {}: starting", job.seed));
    let stream = client.evaluate(request).await?.into_inner();
    let answers = receive_answers(stream, job, requested_attacks(settings).len(), bar, &label).await?;
    Ok(seed_run(job, settings, answers, versions))
}

/// The request for `job`, with the deadline as its gRPC timeout.
fn evaluate_request(job: &Job, settings: &Settings, deadline: Option<Duration>) -> Result<Request<EvaluateRequest>, String> {
    let specs = requested_attacks(settings).iter().map(attacks::to_spec).collect::<anyhow::Result<Vec<_>>>().map_err(|e| e.to_string())?;
    let mut request = Request::new(EvaluateRequest {
        model: job.info.name.clone(),
        dataset: settings.dataset.clone(),
        split: Split::from(settings.split) as i32,
        examples_per_class: settings.examples_per_class,
        attacks: specs,
        batch_size: settings.batch_size,
        precision: Precision::from(settings.precision) as i32,
        shard: job.shard.map(|(index, count)| Shard { index, count }),
        ..Default::default()
    });
    if let Some(d) = deadline {
        request.set_timeout(d);
    }
    Ok(request)
}

/// The attack results of an evaluation's event stream, showing its progress on `bar` meanwhile.
async fn receive_answers(
    mut stream: tonic::Streaming<rfb_proto::v1::EvaluateEvent>,
    job: &Job,
    attacks: usize,
    bar: &Task,
    label: &str,
) -> Result<Vec<AttackResult>, Status> {
    let mut answers: Vec<AttackResult> = Vec::new();
    while let Some(event) = stream.message().await? {
        match event.event {
            Some(Event::Queued(q)) => bar.set_message(format!("{label} seed {}: queued, {} ahead", job.seed, q.ahead)),
            Some(Event::Progress(p)) => {
                bar.set_total(p.examples_total.max(1) as u64);
                bar.set_position(p.examples_done.max(0) as u64);
                let component = if p.components > 1 && !p.component.is_empty() { format!(" {}", p.component) } else { String::new() };
                bar.set_message(format!("{label} seed {}: {}{component} ({}/{attacks})", job.seed, p.attack, p.attack_index + 1));
            }
            Some(Event::Result(r)) => answers.push(r),
            Some(Event::Done(_)) => break,
            None => {}
        }
    }
    Ok(answers)
}

/// The seed's run from the server's answers, after checking that they answer what was asked;
/// records the versions the server reported.
fn seed_run(job: &Job, settings: &Settings, answers: Vec<AttackResult>, versions: &Mutex<ServerInfo>) -> Result<SeedRun, String> {
    let requested = requested_attacks(settings);
    let n = requested.len();
    if answers.len() != n {
        return Err(format!("the server sent {} attack results for {n} attacks", answers.len()));
    }
    let asked = job.shard.map(|(index, count)| Shard { index, count });
    if let Some(wrong) = answers.iter().find(|a| a.shard != asked) {
        return Err(format!("asked for shard {asked:?}, the server answered for {:?}", wrong.shard));
    }
    if let Some(v) = answers.iter().find_map(|a| a.versions.clone()) {
        let mut info = versions.lock().unwrap_or_else(|e| e.into_inner());
        info.evaluator_version = v.evaluator;
        info.libtorch_version = v.libtorch;
        info.proto_version = v.proto;
    }
    let weights =
        answers.iter().map(|a| a.weights_sha256.clone()).find(|w| !w.is_empty()).unwrap_or_else(|| job.info.weights_sha256.clone());
    let dataset = answers.iter().map(|a| a.dataset.clone()).find(|d| !d.is_empty()).unwrap_or_else(|| job.info.dataset.clone());
    let mut runs = Vec::new();
    for (setting, answer) in requested.iter().zip(answers) {
        runs.push(attack_run(setting, answer).map_err(|e| format!("{}: {e:#}", setting.label))?);
    }
    let radii = settings.sweep.as_ref().map(|s| s.radii.clone()).unwrap_or_default();
    let sweep = radii.into_iter().zip(runs.split_off(settings.attacks.len())).map(|(eps, run)| results::SweepPoint { eps, run }).collect();
    Ok(SeedRun {
        seed: job.seed,
        model: job.info.name.clone(),
        method: job.info.method.clone(),
        architecture: job.info.architecture.clone(),
        dataset,
        weights_sha256: weights,
        server: String::new(),
        attacks: runs,
        shards: Vec::new(),
        sweep,
    })
}

/// The next job `server` can do (it lists the model and has not failed the job yet), counted
/// as running.
fn take_job(queue: &WorkQueue, server: &Server) -> Option<Job> {
    let mut jobs = queue.jobs.lock().unwrap_or_else(|e| e.into_inner());
    let pos = jobs.iter().position(|j| server.models.contains(&j.info.name) && !j.failed_on.iter().any(|f| f.server == server.endpoint))?;
    queue.running.fetch_add(1, Ordering::SeqCst);
    jobs.remove(pos)
}

/// Waits for a job `server` can do; `None` once there is none and none is running.
async fn next_job(queue: &WorkQueue, server: &Server) -> Option<Job> {
    loop {
        if let Some(job) = take_job(queue, server) {
            return Some(job);
        }
        if queue.running.load(Ordering::SeqCst) == 0 {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What the servers' workers share.
struct Shared {
    queue: WorkQueue,
    settings: Settings,
    /// The compared models' row labels.
    labels: Vec<String>,
    /// Deadline of one request, if any.
    deadline: Option<Duration>,
    progress: Progress,
    /// Jobs finished (or failed for good), over every server.
    overall: Task,
}

/// Takes jobs `server` can do from the shared queue until none is left, one request at a time.
async fn worker(mut server: Server, shared: Arc<Shared>, versions: Arc<Mutex<ServerInfo>>) -> Vec<Outcome> {
    let Shared { queue, settings, labels, deadline, progress, overall } = &*shared;
    let bar = progress.task(server.endpoint.clone(), 1, "examples");
    let mut outcomes = Vec::new();
    while let Some(job) = next_job(queue, &server).await {
        let label = labels[job.model_index].clone();
        let what = match job.shard {
            Some((index, count)) => format!("{label} seed {} shard {}/{count} ({})", job.seed, index + 1, job.info.name),
            None => format!("{label} seed {} ({})", job.seed, job.info.name),
        };
        bar.set_position(0);
        let answer = evaluate_one(&mut server.client, &job, settings, *deadline, &bar, &label, &versions).await;
        let mut gone = false;
        match answer {
            Ok(Ok(run)) => {
                overall.inc(1);
                outcomes.push(Outcome::Done { job, run, server: server.endpoint.clone() });
            }
            Ok(Err(error)) => {
                progress.eprintln(format!("bench-client: {what} on {}: {error}", server.endpoint));
                overall.inc(1);
                outcomes.push(Outcome::Failed { job, server: server.endpoint.clone(), error });
            }
            Err(status) if !is_request_error(status.code()) => {
                // The server's trouble, not the request's: another server redoes the job (it
                // stays queued until every server that lists the model has failed it).
                let error = status_text(&status);
                gone = server_is_gone(status.code());
                progress.eprintln(format!(
                    "bench-client: {what} failed on {} ({error}){}; another server will redo it",
                    server.endpoint,
                    if gone { ", which stops taking work" } else { "" }
                ));
                outcomes.push(Outcome::Requeued { server: server.endpoint.clone() });
                let mut job = job;
                job.failed_on.push(ShardFailure { server: server.endpoint.clone(), error });
                queue.jobs.lock().unwrap_or_else(|e| e.into_inner()).push_front(job);
            }
            Err(status) => {
                let error = status_text(&status);
                progress.eprintln(format!("bench-client: {what} on {}: {error}", server.endpoint));
                overall.inc(1);
                outcomes.push(Outcome::Failed { job, server: server.endpoint.clone(), error });
            }
        }
        queue.running.fetch_sub(1, Ordering::SeqCst);
        if gone {
            break;
        }
    }
    bar.finish();
    outcomes
}

/// The servers that answered, with a record for every server asked, and every checkpoint
/// listed (once, in the order first seen).
struct Reached {
    servers: Vec<Server>,
    infos: Vec<ServerInfo>,
    available: Vec<ModelInfo>,
}

/// Connects to every server and lists its checkpoints; a server that cannot be reached is
/// recorded with its error and left out.
async fn reach_servers(config: &CompareConfig, auth: &Auth) -> Reached {
    let mut reached = Reached { servers: Vec::new(), infos: Vec::new(), available: Vec::new() };
    for address in &config.servers {
        let endpoint = normalise_endpoint(address);
        let listed = async {
            let mut client = connect(address, auth, config.connect_timeout).await?;
            let (models, problems) = list_models(&mut client).await?;
            anyhow::Ok((client, models, problems))
        }
        .await;
        match listed {
            Ok((client, models, problems)) => {
                for p in problems {
                    eprintln!("bench-client: {endpoint} could not read a checkpoint: {p}");
                }
                for m in &models {
                    if !reached.available.iter().any(|a| a.name == m.name) {
                        reached.available.push(m.clone());
                    }
                }
                let names = models.iter().map(|m| m.name.clone()).collect();
                reached.servers.push(Server { endpoint: endpoint.clone(), client, models: names });
                reached.infos.push(ServerInfo { endpoint, ..Default::default() });
            }
            Err(e) => {
                eprintln!("bench-client: not using {endpoint}: {e:#}");
                reached.infos.push(ServerInfo { endpoint, error: Some(format!("{e:#}")), ..Default::default() });
            }
        }
    }
    reached
}

/// One evaluation to make: a compared model's checkpoint of one seed.
struct Evaluation {
    model_index: usize,
    seed: u64,
    info: ModelInfo,
}

/// One evaluation per model and seed, and the jobs that make them: the evaluation itself, or
/// each of its `shard_count` shards when there are more than one.
fn plan(selections: &[Selection], shard_count: i64) -> (Vec<Evaluation>, VecDeque<Job>) {
    let mut evaluations = Vec::new();
    let mut jobs = VecDeque::new();
    for (model_index, selection) in selections.iter().enumerate() {
        for run in &selection.runs {
            let evaluation = evaluations.len();
            evaluations.push(Evaluation { model_index, seed: run.seed, info: run.info.clone() });
            let job = |shard| Job { evaluation, model_index, seed: run.seed, info: run.info.clone(), shard, failed_on: Vec::new() };
            if shard_count > 1 {
                jobs.extend((0..shard_count).map(|index| job(Some((index, shard_count)))));
            } else {
                jobs.push_back(job(None));
            }
        }
    }
    (evaluations, jobs)
}

/// What the workers left: every outcome, the jobs no server could do, and the versions each
/// server reported.
struct Worked {
    outcomes: Vec<Outcome>,
    left_over: Vec<Job>,
    versions: Vec<ServerInfo>,
}

/// Runs `jobs` on `servers`, one worker per server, with progress on stderr.
async fn run_jobs(
    servers: Vec<Server>,
    jobs: VecDeque<Job>,
    labels: Vec<String>,
    shard_count: i64,
    config: &CompareConfig,
) -> anyhow::Result<Worked> {
    let total_jobs = jobs.len();
    // Bars on a terminal; in a log, a plain line per server and one for the whole every few
    // seconds (rfb_progress).
    let progress = Progress::new(Mode::detect(!config.progress));
    // Sharded, the work comes back shard by shard, and that is what the count follows.
    let unit = if shard_count > 1 { "shards" } else { "evaluations" };
    let overall = progress.task("compare", total_jobs as u64, unit);
    let shared = Arc::new(Shared {
        queue: WorkQueue { jobs: Mutex::new(jobs), running: AtomicUsize::new(0) },
        settings: config.settings.clone(),
        labels,
        deadline: config.deadline,
        progress,
        overall,
    });
    let mut handles = Vec::new();
    let mut version_slots = Vec::new();
    for server in servers {
        let slot = Arc::new(Mutex::new(ServerInfo { endpoint: server.endpoint.clone(), ..Default::default() }));
        version_slots.push(slot.clone());
        handles.push(tokio::spawn(worker(server, shared.clone(), slot)));
    }
    let mut outcomes = Vec::new();
    for handle in handles {
        outcomes.extend(handle.await.context("an evaluation worker panicked")?);
    }
    // Jobs still queued: every server that lists the model failed them (or none does).
    let left_over = shared.queue.jobs.lock().unwrap_or_else(|e| e.into_inner()).drain(..).collect();
    if let Ok(shared) = Arc::try_unwrap(shared) {
        shared.overall.finish();
    }
    let versions = version_slots.iter().map(|slot| slot.lock().unwrap_or_else(|e| e.into_inner()).clone()).collect();
    Ok(Worked { outcomes, left_over, versions })
}

/// Copies the versions the servers reported into their records.
fn record_versions(infos: &mut [ServerInfo], versions: Vec<ServerInfo>) {
    for info in versions {
        if let Some(existing) = infos.iter_mut().find(|s| s.endpoint == info.endpoint) {
            existing.evaluator_version = info.evaluator_version;
            existing.libtorch_version = info.libtorch_version;
            existing.proto_version = info.proto_version;
        }
    }
}

/// Per evaluation: the parts done (with their shard records) and the first failure (server,
/// error).
struct Gathered {
    parts: Vec<Vec<(SeedRun, ShardRun)>>,
    failed: Vec<Option<(String, String)>>,
}

/// Sorts the outcomes by evaluation, and counts each server's work in its record.
fn gather(worked: Worked, evaluations: usize, infos: &mut [ServerInfo]) -> Gathered {
    let mut gathered = Gathered { parts: vec![Vec::new(); evaluations], failed: vec![None; evaluations] };
    let mut count_for = |server: &str, f: &mut dyn FnMut(&mut ServerInfo)| {
        if let Some(info) = infos.iter_mut().find(|s| s.endpoint == server) {
            f(info);
        }
    };
    for outcome in worked.outcomes {
        match outcome {
            Outcome::Done { job, mut run, server } => {
                let examples = run.examples();
                let seconds: f64 =
                    run.attacks.iter().chain(run.sweep.iter().map(|p| &p.run)).filter(|a| !a.cached).map(|a| a.elapsed_seconds).sum();
                count_for(&server, &mut |info| {
                    info.evaluations_done += 1;
                    info.examples += examples;
                    info.compute_seconds += seconds;
                });
                run.server = server.clone();
                let (index, count) = job.shard.unwrap_or((0, 1));
                let record = ShardRun { index, count, server, examples, compute_seconds: seconds, failed_on: job.failed_on };
                gathered.parts[job.evaluation].push((run, record));
            }
            Outcome::Failed { job, server, error } => {
                count_for(&server, &mut |info| info.evaluations_failed += 1);
                gathered.failed[job.evaluation].get_or_insert((server, error));
            }
            Outcome::Requeued { server } => count_for(&server, &mut |info| info.evaluations_failed += 1),
        }
    }
    for job in worked.left_over {
        let error = match job.failed_on.last() {
            Some(last) => (
                last.server.clone(),
                format!(
                    "failed on every server that lists the checkpoint: {}",
                    job.failed_on.iter().map(|f| format!("{}: {}", f.server, f.error)).collect::<Vec<_>>().join("; ")
                ),
            ),
            None => (String::new(), "no reachable server lists this checkpoint".into()),
        };
        gathered.failed[job.evaluation].get_or_insert(error);
    }
    gathered
}

/// An evaluation's result from the parts that came back: the one run, or its shards merged
/// ([`results::merge_shards`]); Err says why there is none.
fn evaluation_result(mut done: Vec<(SeedRun, ShardRun)>, shard_count: i64) -> Result<SeedRun, String> {
    if shard_count > 1 {
        done.sort_by_key(|(_, record)| record.index);
        if done.len() as i64 != shard_count {
            return Err(format!("{} of {shard_count} shards came back", done.len()));
        }
        let (runs, records): (Vec<SeedRun>, Vec<ShardRun>) = done.into_iter().unzip();
        results::merge_shards(&runs, records).map_err(|e| format!("{e:#}"))
    } else {
        done.into_iter().next().map(|(run, _)| run).ok_or_else(|| "no result came back".to_string())
    }
}

/// Every model's runs in seed order, and the failures sorted by label and seed.
fn assemble(
    selections: &[Selection],
    evaluations: &[Evaluation],
    mut gathered: Gathered,
    shard_count: i64,
) -> (Vec<ModelResults>, Vec<Failure>) {
    let mut models: Vec<ModelResults> = selections
        .iter()
        .map(|s| ModelResults {
            label: s.request.label.clone(),
            class_names: s.runs.first().map(|r| r.info.class_names.clone()).unwrap_or_default(),
            runs: Vec::new(),
        })
        .collect();
    let mut failures = Vec::new();
    for (index, evaluation) in evaluations.iter().enumerate() {
        let done = std::mem::take(&mut gathered.parts[index]);
        let failure = |server: String, error: String| Failure {
            label: selections[evaluation.model_index].request.label.clone(),
            model: evaluation.info.name.clone(),
            seed: Some(evaluation.seed),
            server,
            error,
        };
        if let Some((server, error)) = gathered.failed[index].take() {
            failures.push(failure(server, error));
            continue;
        }
        match evaluation_result(done, shard_count) {
            Ok(run) => models[evaluation.model_index].runs.push(run),
            Err(error) => failures.push(failure(String::new(), error)),
        }
    }
    for model in &mut models {
        settle_class_names(model);
    }
    failures.sort_by(|a, b| (a.label.as_str(), a.seed).cmp(&(b.label.as_str(), b.seed)));
    (models, failures)
}

/// Puts a model's runs in seed order and takes its class names from what the server reported
/// (warning when the seeds disagree).
fn settle_class_names(model: &mut ModelResults) {
    model.runs.sort_by_key(|r| r.seed);
    if let Some(names) = model.runs.iter().flat_map(|r| r.attacks.iter()).map(|a| a.class_names.clone()).find(|n| !n.is_empty()) {
        if model.runs.iter().flat_map(|r| r.attacks.iter()).any(|a| a.class_names != names) {
            eprintln!("bench-client: warning: the seeds of '{}' report different class names", model.label);
        }
        model.class_names = names;
    }
}

/// Connects to every server, resolves the models, runs every evaluation and gathers results.
pub async fn compare(config: &CompareConfig) -> anyhow::Result<(Results, Vec<Selection>)> {
    if config.servers.is_empty() {
        bail!("give at least one --server");
    }
    let auth = Auth::new(config.token.as_deref())?;
    let Reached { servers, infos: mut server_infos, available } = reach_servers(config, &auth).await;
    if servers.is_empty() {
        bail!("no server could be reached: {}", server_infos.iter().filter_map(|s| s.error.clone()).collect::<Vec<_>>().join("; "));
    }
    let selections = selection::select(&config.requests, &available, config.seeds.as_deref(), &config.checkpoint)?;
    // With several servers, each evaluation is split into shards that the servers take in turn.
    let shard_count = match config.shards {
        0 => servers.len(),
        n => n,
    } as i64;
    let (evaluations, jobs) = plan(&selections, shard_count);
    let labels = selections.iter().map(|s| s.request.label.clone()).collect();
    let mut worked = run_jobs(servers, jobs, labels, shard_count, config).await?;
    record_versions(&mut server_infos, std::mem::take(&mut worked.versions));
    let gathered = gather(worked, evaluations.len(), &mut server_infos);
    let (models, failures) = assemble(&selections, &evaluations, gathered, shard_count);
    let results = Results {
        format: results::FORMAT.into(),
        format_version: results::FORMAT_VERSION,
        created_unix: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        command: config.command.clone(),
        client_version: format!("rfb-bench-client {}", env!("CARGO_PKG_VERSION")),
        proto_version: rfb_proto::PROTO_VERSION.into(),
        settings: config.settings.clone(),
        servers: server_infos,
        models,
        failures,
        run: Default::default(),
    };
    Ok((results, selections))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_and_tokens() {
        assert_eq!(normalise_endpoint("127.0.0.1:50051"), "http://127.0.0.1:50051");
        assert_eq!(normalise_endpoint("http://gpu1:7000/"), "http://gpu1:7000");
        let mut auth = Auth::new(Some("abc\n")).unwrap();
        let request = tonic::service::Interceptor::call(&mut auth, Request::new(())).unwrap();
        assert_eq!(request.metadata().get("authorization").unwrap(), "Bearer abc");
        let mut none = Auth::new(None).unwrap();
        assert!(tonic::service::Interceptor::call(&mut none, Request::new(())).unwrap().metadata().get("authorization").is_none());
        assert!(Auth::new(Some("bad\u{7}token")).is_err());
    }
}
