//! `evaluator`: serves class-wise robustness evaluations over gRPC (`serve`), or runs one from
//! the command line (`eval`). The engine lives in the library; this file only parses arguments.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use rfb_evaluator::catalog::{parse_device, EngineConfig, DEFAULT_BATCH_SIZE};
use rfb_evaluator::request::{DEFAULT_MAX_JOB_COST, DEFAULT_MAX_QUEUE, DEFAULT_MAX_QUEUE_PER_CLIENT};
use rfb_evaluator::runner::Runner;
use rfb_evaluator::sandbox::SandboxConfig;
use rfb_evaluator::service::{Keepalive, ServeOptions, TlsFiles};
use rfb_evaluator::{Catalog, Limits};
use rfb_proto::v1::{evaluate_event::Event, EvaluateRequest};

#[derive(Parser)]
#[command(
    name = "evaluator",
    version,
    about = "Class-wise adversarial robustness of robust-fairness checkpoints (FGSM, PGD, CW-inf, AutoAttack)",
    long_about = "Measures, for each attack, how many test examples of each class a checkpoint still classifies \
correctly, and the fairness metrics over classes (Avg, Worst, Worst-10%, NSD). `serve` answers gRPC clients \
(contract rfb.v1, proto/proto/rfb/v1/evaluator.proto); `eval` runs the same engine once and prints a table. \
Results are cached on disk, keyed by the weights' sha256, the data, the attack with its defaults and seed, \
and the code version; logs go to stderr (RUST_LOG sets the level)."
)]
struct Cli {
    /// Let cuBLAS and cuDNN compute fp32 work in TF32 on GPUs that have it (faster; changes
    /// results, so off by default: docs/gpu.md). Also RFB_ALLOW_TF32=1.
    #[arg(long, global = true)]
    allow_tf32: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the rfb.v1.Evaluator gRPC service (plus health and reflection). Prints the bound
    /// address (host:port) on stdout, one line, once it listens. SIGTERM or Ctrl-C shuts it
    /// down gracefully (waiting jobs and the running one end with UNAVAILABLE, exit status 0);
    /// a second Ctrl-C exits at once.
    Serve(ServeArgs),
    /// Evaluate one checkpoint from the command line and print the per-class table.
    Eval(EvalArgs),
    /// Turn any PyTorch classifier into a checkpoint directory: a state dict of one of our
    /// architectures (`--arch`), or a TorchScript module of any architecture.
    #[command(long_about = IMPORT_ABOUT)]
    Import(ImportArgs),
    /// A worker process that runs model code in the sandbox (started by serve, eval and
    /// import; never by hand): reads its task on stdin.
    #[command(name = "sandboxed-worker", hide = true)]
    SandboxedWorker,
}

const IMPORT_ABOUT: &str = "Turn any PyTorch classifier into a checkpoint directory that `eval`, `serve` and bench-client \
treat like the trainer's own.

A state dict (torch.save(model.state_dict()), also wrapped as {'model': ...}, {'state_dict': ...}, \
{'model_state_dict': ...} or {'net': ...}, with or without DataParallel's `module.` prefixes) of one of our \
architectures needs --arch; its names and shapes are checked and it is stored as model.safetensors. A TorchScript \
module (torch.jit.script or torch.jit.trace, then .save) of any architecture is stored unchanged as model.pt, after \
checking that libtorch loads it, that it maps [N, C, H, W] images in [0, 1] to [N, classes] finite logits, and that \
gradients reach the input. The file's kind is told from its contents.

Nothing in a state dict is executed: a pickle that asks for anything but tensors in plain containers (a whole \
pickled model, any other Python object) is refused. A TorchScript module is code: its checks run in a sandboxed \
worker process (no files, no network, capped memory and time; docs/sandbox.md), and where this machine cannot \
sandbox it, it is refused unless you pass --trust-torchscript.

The manifest records the file's name and sha256, --method, the data set's classes and input shape, and --mean/--std, \
a per-channel normalisation the evaluator applies in front of the model (attack radii stay in pixel units).

Example:
  evaluator import --from my_model.pt --dataset cifar10 --mean 0.4914,0.4822,0.4465 --std 0.2471,0.2435,0.2616 --out runs/models/mine
  evaluator eval --models-dir runs/models --model mine --data-dir /data/cifar --attacks clean,pgd";

#[derive(Args)]
struct ImportArgs {
    /// The .pt/.pth file: a state dict or a TorchScript module.
    #[arg(long = "from", value_name = "FILE")]
    from: PathBuf,
    /// Checkpoint directory to write (e.g. runs/models/mine; its path under --models-dir is
    /// the model's name).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Data set the model classifies (digits, cifar10, cifar100, tiny-imagenet): its classes
    /// and input shape.
    #[arg(long)]
    dataset: String,
    /// Architecture of a state dict (resnet18, preact-resnet18, mobilenet-v2, wrn-34-10,
    /// wrn-70-16, wrn-D-W, digits-cnn, digits-cnn-wide); leave out (or `torchscript`) for a
    /// TorchScript module.
    #[arg(long)]
    arch: Option<String>,
    /// How the model was trained, as recorded in the manifest (bench-client matches on it).
    #[arg(long, default_value = "imported")]
    method: String,
    /// Per-channel mean of an input normalisation applied in front of the model,
    /// comma-separated (one per channel; with --std).
    #[arg(long, value_delimiter = ',', requires = "std", allow_hyphen_values = true)]
    mean: Option<Vec<f64>>,
    /// Per-channel standard deviation of the normalisation (with --mean).
    #[arg(long, value_delimiter = ',', requires = "mean")]
    std: Option<Vec<f64>>,
    /// Class names, comma-separated, or @FILE with one a line [default: the data set's].
    #[arg(long)]
    class_names: Option<String>,
    /// Directory of the data set's files, to take its class names from.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Replace a checkpoint already in --out.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    model_code: ModelCodeArgs,
    /// Longest the checks of a TorchScript module may run (they run its code); then it is
    /// refused.
    #[arg(long, value_name = "DURATION", default_value = "10m")]
    check_timeout: humantime::Duration,
}

/// How model code runs (docs/sandbox.md).
#[derive(Args)]
struct ModelCodeArgs {
    /// Run TorchScript modules even where this machine cannot sandbox their code (no Landlock
    /// or no seccomp): their code then runs with only what protection there is (a worker
    /// process, its rlimits), or with the evaluator's rights in-process. Only for models you
    /// trust as you trust this program.
    #[arg(long)]
    trust_torchscript: bool,
    /// Address-space limit of a worker process running model code: auto (the machine's
    /// memory), off, or a size such as 16GiB. Not applied on CUDA (its driver reserves far more
    /// address space than it uses).
    #[arg(long, value_name = "SIZE", default_value = "auto")]
    worker_memory: rfb_evaluator::sandbox::MemoryLimit,
    /// CPU-time limit (RLIMIT_CPU, in seconds of CPU, all cores together) of a worker process
    /// running model code. Without it only a request's deadline sets one.
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    worker_cpu_seconds: Option<u64>,
}

impl ModelCodeArgs {
    fn config(&self, in_process: bool) -> SandboxConfig {
        SandboxConfig {
            memory: self.worker_memory,
            cpu_seconds: self.worker_cpu_seconds,
            trust_torchscript: self.trust_torchscript,
            in_process,
            ..SandboxConfig::default()
        }
    }
}

#[derive(Args)]
struct EngineArgs {
    /// Directory of checkpoints; model names are paths relative to it (e.g. `absld-s1/best`).
    #[arg(long, value_name = "DIR")]
    models_dir: PathBuf,
    /// Directory of the CIFAR-10/100 or Tiny-ImageNet files (digits is embedded).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Where results are cached, one JSON file per attack result [default: MODELS_DIR/.rfb-cache].
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Neither read nor write cached results.
    #[arg(long)]
    no_cache: bool,
    /// auto (CUDA when available), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    #[command(flatten)]
    model_code: ModelCodeArgs,
}

impl EngineArgs {
    fn config(&self, default_batch_size: i64, in_process: bool) -> Result<EngineConfig> {
        let device = parse_device(&self.device).map_err(anyhow::Error::msg)?;
        Ok(EngineConfig {
            models_dir: self.models_dir.clone(),
            data_dir: self.data_dir.clone(),
            cache_dir: self.cache_dir.clone(),
            use_cache: !self.no_cache,
            device,
            default_batch_size,
            sandbox: self.model_code.config(in_process),
        })
    }
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on; loopback by default. Port 0 picks a free port (printed on stdout).
    /// A non-loopback address needs --token-file (or --insecure).
    #[arg(long, default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    #[command(flatten)]
    engine: EngineArgs,
    /// Require `authorization: Bearer <token>` on Evaluator calls, the token being one of this
    /// file's: a line is `TOKEN`, or `NAME TOKEN` to name the client (letters, digits, '-', '_';
    /// its uploads go under uploads/NAME, an unnamed token's under uploads/token-<12 hex digits
    /// of its sha256>). The queue takes turns between clients (a name, or each unnamed token).
    /// Health and reflection stay open.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// PEM certificate chain for TLS (with --tls-key).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for TLS (with --tls-cert).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Listen on a non-loopback address without --token-file: anyone who reaches it can run jobs.
    #[arg(long)]
    insecure: bool,
    /// Batch size for requests that leave batch_size at 0.
    #[arg(long, default_value_t = DEFAULT_BATCH_SIZE)]
    batch_size: i64,
    /// Refuse (RESOURCE_EXHAUSTED) a job whose estimated cost, in forward+backward passes
    /// (examples x passes per example of its attacks not in the cache), is above this. The
    /// default admits the paper's full evaluation of CIFAR-10 (78.5 million).
    #[arg(long, value_name = "PASSES", default_value_t = DEFAULT_MAX_JOB_COST)]
    max_job_cost: u64,
    /// Jobs that may wait (the running one not counted); more are refused with RESOURCE_EXHAUSTED.
    #[arg(long, value_name = "JOBS", default_value_t = DEFAULT_MAX_QUEUE)]
    max_queue: usize,
    /// Jobs one client (a token, else a peer address) may have waiting.
    #[arg(long, value_name = "JOBS", default_value_t = DEFAULT_MAX_QUEUE_PER_CLIENT)]
    max_queue_per_client: usize,
    /// Interval of HTTP/2 keepalive pings; the jobs of a client that stops answering are cancelled.
    #[arg(long, value_name = "DURATION", default_value = "30s")]
    keepalive: humantime::Duration,
    /// How long a keepalive ping may go unanswered before the connection is closed.
    #[arg(long, value_name = "DURATION", default_value = "20s")]
    keepalive_timeout: humantime::Duration,
    /// Health reports NOT_SERVING when the running job has shown no sign of life (one attack
    /// iteration) for this long.
    #[arg(long, value_name = "DURATION", default_value = "10m")]
    stuck_after: humantime::Duration,
    /// Let clients send models (UploadModel) and delete their own (DeleteModel). Each is
    /// checked as `evaluator import` checks a file and stored as MODELS_DIR/uploads/<client>/<name>
    /// (<client>: the token's name, token-<hex> for an unnamed token, `local` without tokens);
    /// files are staged in MODELS_DIR/.rfb-staging. See docs/uploads.md.
    #[arg(long)]
    allow_uploads: bool,
    /// Largest model file a client may upload (bytes).
    #[arg(long, value_name = "BYTES", default_value_t = rfb_evaluator::uploads::DEFAULT_MAX_UPLOAD_BYTES)]
    max_upload_bytes: u64,
    /// Models one client may keep uploaded (uploads in progress included).
    #[arg(long, value_name = "MODELS", default_value_t = rfb_evaluator::uploads::DEFAULT_MAX_UPLOADS_PER_CLIENT)]
    max_uploads_per_client: u64,
    /// Bytes one client's uploaded checkpoints may take on disk, all together (uploads in
    /// progress included at their declared size).
    #[arg(long, value_name = "BYTES", default_value_t = rfb_evaluator::uploads::DEFAULT_MAX_UPLOAD_BYTES_PER_CLIENT)]
    max_upload_bytes_per_client: u64,
    /// Uploads imported (checked and written) at once, across all clients; further uploads
    /// wait for their turn (within their deadline).
    #[arg(long, value_name = "UPLOADS", default_value_t = rfb_evaluator::uploads::DEFAULT_MAX_CONCURRENT_IMPORTS)]
    max_concurrent_imports: usize,
    /// Longest the checks of an uploaded TorchScript module may run (they run its code); then
    /// it is refused (FAILED_PRECONDITION).
    #[arg(long, value_name = "DURATION", default_value = "10m")]
    check_timeout: humantime::Duration,
}

#[derive(Args)]
struct EvalArgs {
    #[command(flatten)]
    engine: EngineArgs,
    /// Checkpoint directory relative to --models-dir.
    #[arg(long)]
    model: String,
    /// digits, cifar10, cifar100 or tiny-imagenet [default: the model's own].
    #[arg(long)]
    dataset: Option<String>,
    /// test, val or train.
    #[arg(long, default_value = "test")]
    split: String,
    /// Examples per class (the first N of each class); 0 evaluates the whole split.
    #[arg(long, default_value_t = 0)]
    per_class: i64,
    /// Comma-separated attacks: clean, fgsm, pgd (PGD-20) or pgd-N, cw (CW-inf, 30 steps, kappa
    /// 50) or cw-N, aa (AutoAttack standard: APGD-CE, APGD-T, FAB-T, Square), aa-rand, and
    /// aa:COMPONENT+... for any of apgd-ce, apgd-t, apgd-dlr, fab-t, square. Any AutoAttack name
    /// may end in @N for N iterations (and Square queries) instead of 100 (and 5000), for quick
    /// checks; such a result is named AutoAttack@N. The same names as `bench-client compare`.
    #[arg(long, default_value = rfb_proto::attacks::DEFAULT_ATTACKS, value_delimiter = ',')]
    attacks: Vec<String>,
    /// L-inf radius in pixel scale [0, 1], as a number or a fraction such as 8/255 [default: 8/255].
    #[arg(long)]
    eps: Option<String>,
    /// Steps of PGD and CW-inf where the attack's name gives none (pgd-N, cw-N) [default: 20
    /// and 30].
    #[arg(long)]
    steps: Option<i64>,
    /// Step size of PGD and CW-inf, as a number or a fraction such as 2/255 [default: eps/4, the paper's 2/255 at 8/255].
    #[arg(long)]
    step_size: Option<String>,
    /// Seed of the randomised attacks.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Robustness curve: also run --sweep-attack at START:END:COUNT evenly spaced radii (e.g.
    /// 0:16/255:17), each radius its own attack and cache entry, evaluated independently
    /// (docs/attacks.md); radius 0 is clean accuracy. Its step size is eps/4 at each radius
    /// (--step-size does not apply to it).
    #[arg(long, value_name = "START:END:COUNT", conflicts_with = "eps_sweep_list")]
    eps_sweep: Option<String>,
    /// Robustness curve at these radii (comma-separated, increasing), e.g. 1/255,2/255,4/255.
    #[arg(long, value_name = "EPS,EPS,...")]
    eps_sweep_list: Option<String>,
    /// The attack of the robustness curve (one name of --attacks' grammar).
    #[arg(long, default_value = "pgd")]
    sweep_attack: String,
    #[arg(long, default_value_t = DEFAULT_BATCH_SIZE)]
    batch_size: i64,
    /// fp32: the network as it is (results independent of the batch size); fp32-fast: an fp32
    /// copy with batch norm folded and channels-last weights attacks, the network counts (the
    /// same function up to rounding, faster; rounding then depends on the batch); bf16: a
    /// channels-last bf16 copy attacks, the fp32 network takes every decision (the attack
    /// arithmetic stays fp32).
    #[arg(long, default_value = "fp32", value_parser = ["fp32", "fp32-fast", "bf16"])]
    precision: String,
    /// Evaluate only shard I of N (I/N, 0 <= I < N): every N-th example of the class-balanced
    /// subset, starting from the I-th. The per-class counts of all N shards add up to the
    /// unsharded result.
    #[arg(long, value_parser = parse_shard)]
    shard: Option<rfb_proto::v1::Shard>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// Run the model in this process instead of a sandboxed worker process: no sandbox (a
    /// TorchScript module then needs --trust-torchscript). For measuring what the worker costs;
    /// the results are the same.
    #[arg(long)]
    in_process: bool,
    /// Also write the results as JSON to FILE (written atomically): per attack its name, spec,
    /// precision, per-class counts, metrics, AutoAttack's components and sanity flags, and
    /// the model, data, device and versions they were computed with.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

fn parse_shard(text: &str) -> Result<rfb_proto::v1::Shard> {
    let (index, count) = text.split_once('/').context("expected I/N, e.g. 0/3")?;
    Ok(rfb_proto::v1::Shard { index: index.trim().parse().context("shard index")?, count: count.trim().parse().context("shard count")? })
}

fn init_logging(default_level: &str) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    tracing_subscriber::fmt().with_writer(std::io::stderr).with_env_filter(filter).init();
}

fn split_proto(text: &str) -> Result<rfb_proto::v1::Split> {
    let split: rfb_core::data::Split = text.parse()?;
    Ok(rfb_evaluator::catalog::split_to_proto(split))
}

async fn serve(args: ServeArgs) -> Result<()> {
    let tokens = match &args.token_file {
        Some(path) => rfb_evaluator::auth::read_token_file(path)?,
        None => rfb_evaluator::auth::TokenSet::default(),
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles {
            certificate_pem: std::fs::read(cert).with_context(|| format!("reading {}", cert.display()))?,
            key_pem: std::fs::read(key).with_context(|| format!("reading {}", key.display()))?,
        }),
        _ => None,
    };
    let options = ServeOptions {
        tokens,
        tls,
        limits: Limits { max_job_cost: args.max_job_cost, max_queue: args.max_queue, max_queue_per_client: args.max_queue_per_client },
        insecure: args.insecure,
        keepalive: Keepalive { interval: args.keepalive.into(), timeout: args.keepalive_timeout.into() },
        stuck_after: args.stuck_after.into(),
        uploads: rfb_evaluator::uploads::UploadLimits {
            enabled: args.allow_uploads,
            max_upload_bytes: args.max_upload_bytes,
            max_uploads_per_client: args.max_uploads_per_client,
            max_upload_bytes_per_client: args.max_upload_bytes_per_client,
            max_concurrent_imports: args.max_concurrent_imports,
        },
        ..ServeOptions::new(args.listen, {
            let mut engine = args.engine.config(args.batch_size, false)?;
            // No worker's Landlock rule may open them.
            engine.sandbox.secret_paths.extend([&args.token_file, &args.tls_cert, &args.tls_key].into_iter().flatten().cloned());
            engine
        })
    };
    let mut options = options;
    options.engine.sandbox.check_timeout = args.check_timeout.into();
    // SIGTERM or Ctrl-C: graceful shutdown; a second one: exit at once.
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let shutdown = async move {
        let which = tokio::select! {
            _ = tokio::signal::ctrl_c() => "Ctrl-C",
            _ = terminate.recv() => "SIGTERM",
        };
        tracing::info!("{which}: shutting down gracefully (Ctrl-C again exits at once)");
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
            eprintln!("interrupted again: exiting at once");
            std::process::exit(130);
        });
    };
    rfb_evaluator::service::serve(
        options,
        |address| {
            let mut stdout = std::io::stdout().lock();
            let _ = writeln!(stdout, "{address}");
            let _ = stdout.flush();
        },
        shutdown,
    )
    .await?;
    tracing::info!("stopped");
    Ok(())
}

fn eval(args: EvalArgs) -> Result<()> {
    let eps = args.eps.as_deref().map(rfb_proto::attacks::parse_eps).transpose().context("--eps")?;
    let step_size = args.step_size.as_deref().map(rfb_proto::attacks::parse_eps).transpose().context("--step-size")?;
    let defaults = rfb_proto::attacks::AttackDefaults { eps, step_size, steps: args.steps, seed: args.seed };
    let attacks: Vec<_> =
        rfb_proto::attacks::parse_attacks(&args.attacks, &defaults).context("--attacks")?.into_iter().map(|attack| attack.spec).collect();
    // The robustness curve: one more attack per radius (clean accuracy at radius 0).
    let radii = rfb_proto::eps_sweep::sweep_radii(args.eps_sweep.as_deref(), args.eps_sweep_list.as_deref())?;
    let compared = attacks.len();
    let mut attacks = attacks;
    if !radii.is_empty() {
        let at_each_radius = rfb_proto::attacks::AttackDefaults { step_size: None, ..defaults };
        let swept = rfb_proto::attacks::parse_attack(&args.sweep_attack, &at_each_radius).context("--sweep-attack")?.spec;
        if swept.kind == rfb_proto::v1::AttackKind::Clean as i32 {
            anyhow::bail!("--sweep-attack: clean accuracy does not depend on the radius; name an attack");
        }
        attacks.extend(radii.iter().map(|&eps| {
            if eps == 0.0 {
                rfb_proto::v1::AttackSpec { kind: rfb_proto::v1::AttackKind::Clean as i32, ..Default::default() }
            } else {
                rfb_proto::v1::AttackSpec { eps: Some(eps), ..swept.clone() }
            }
        }));
    }
    let request = EvaluateRequest {
        model: args.model.clone(),
        dataset: args.dataset.clone().unwrap_or_default(),
        split: split_proto(&args.split)? as i32,
        examples_per_class: args.per_class,
        attacks,
        batch_size: args.batch_size,
        precision: match args.precision.as_str() {
            "bf16" => rfb_proto::v1::Precision::Bf16,
            "fp32-fast" => rfb_proto::v1::Precision::Fp32Fast,
            _ => rfb_proto::v1::Precision::Fp32,
        } as i32,
        shard: args.shard,
        ..Default::default()
    };
    let config = args.engine.config(args.batch_size, args.in_process)?;
    let catalog = Arc::new(Catalog::new(&config).map_err(anyhow::Error::msg)?);
    let job = catalog.prepare(&request)?;
    let protection = rfb_evaluator::model_process::probe(&config.sandbox, config.device)?;
    tracing::info!("model code runs in: {protection}");
    let mut runner = Runner::new(catalog.clone(), config.sandbox.clone(), protection);
    // A bar on a terminal; in a log, a plain line every few seconds (rfb_progress).
    let progress = rfb_progress::Progress::new(rfb_progress::Mode::detect(args.quiet));
    let bar = progress.task(format!("eval {}", job.model), 0, "examples");
    let attacks = job.attacks.len();
    let mut results = Vec::new();
    runner.run(&job, None, &|| None, &|| {}, &mut |event| {
        match event {
            Event::Progress(p) => {
                let component = if p.components > 1 && !p.component.is_empty() {
                    format!(": {} ({} of {})", p.component, p.component_index + 1, p.components)
                } else {
                    String::new()
                };
                bar.set_message(format!("{}{component}, attack {} of {attacks}", p.attack, p.attack_index + 1));
                bar.set_total(p.examples_total.max(0) as u64);
                bar.set_position(p.examples_done.max(0) as u64);
            }
            Event::Result(result) => {
                progress.println(format!(
                    "{}: {:.2}% average{}",
                    result.attack_name,
                    result.metrics.as_ref().map(|m| m.average).unwrap_or(f64::NAN),
                    if result.cached { " (cached)" } else { "" }
                ));
                results.push(result);
            }
            _ => {}
        }
        Ok(())
    })?;
    bar.finish();
    let curve = results.split_off(compared.min(results.len()));
    let first = results.first().or(curve.first()).context("the evaluation returned no result")?;
    println!(
        "model {} ({}), {} {} split, {} examples per class, device {}",
        job.model,
        &job.weights_sha256[..12],
        job.dataset,
        job.split,
        if job.examples_per_class > 0 { job.examples_per_class.to_string() } else { "all".into() },
        first.device
    );
    if let Some(shard) = job.shard {
        println!("shard {} of {} ({} of {} examples)", shard.index, shard.count, job.examples(), job.all_examples());
    }
    for result in &results {
        let spec = result.attack.clone().unwrap_or_default();
        if let Some(eps) = spec.eps {
            println!("  {}: eps {eps:.5}, seed {}", result.attack_name, spec.seed);
        }
        if let Some(sanity) = &result.sanity {
            for warning in rfb_evaluator::table::sanity_warnings(sanity) {
                println!("  {}: warning: {warning}", result.attack_name);
            }
        }
    }
    println!();
    print!("{}", rfb_evaluator::table::render(&results));
    if !curve.is_empty() {
        // One column per radius.
        let columns: Vec<_> = curve
            .iter()
            .zip(&radii)
            .map(|(result, eps)| rfb_proto::v1::AttackResult { attack_name: format!("eps {eps:.4}"), ..result.clone() })
            .collect();
        let name = curve.iter().find(|r| r.attack_name != "Clean").map_or(args.sweep_attack.as_str(), |r| r.attack_name.as_str());
        println!("\nRobustness curve: {name} at each radius (radius 0: clean accuracy)");
        print!("{}", rfb_evaluator::table::render(&columns));
    }
    if results.iter().chain(&curve).any(|r| r.cached) {
        println!("* from the cache ({})", catalog.cache_dir().map(|p| p.display().to_string()).unwrap_or_default());
    }
    println!("class-wise accuracy in percent; NSD = population SD / Avg");
    if let Some(path) = &args.json {
        let document = serde_json::json!({
            "model": job.model,
            "weights_sha256": job.weights_sha256,
            "results": results
                .iter()
                .map(|result| {
                    let mut json = rfb_evaluator::table::result_json(result);
                    // Whether the result came from the cache (its elapsed seconds and device are then the original computation's).
                    json["cached"] = serde_json::json!(result.cached);
                    json
                })
                .collect::<Vec<_>>(),
            "sweep": curve
                .iter()
                .zip(&radii)
                .map(|(result, eps)| serde_json::json!({"eps": eps, "result": rfb_evaluator::table::result_json(result)}))
                .collect::<Vec<_>>(),
        });
        let text = serde_json::to_string_pretty(&document)?;
        rfb_evaluator::cache::write_atomic(path, text.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn import(args: ImportArgs) -> Result<()> {
    let dataset: rfb_core::data::DatasetKind = args.dataset.parse().map_err(anyhow::Error::msg)?;
    let class_names = match args.class_names.as_deref() {
        None => None,
        Some(text) => {
            let list = match text.strip_prefix('@') {
                Some(file) => std::fs::read_to_string(file)
                    .with_context(|| format!("reading class names from {file}"))?
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(str::to_string)
                    .collect::<Vec<_>>(),
                None => text.split(',').map(|n| n.trim().to_string()).collect(),
            };
            if list.iter().any(String::is_empty) {
                bail!("--class-names has an empty name");
            }
            Some(list)
        }
    };
    let normalisation = match (args.mean, args.std) {
        (Some(mean), Some(std)) => Some(rfb_core::models::Normalisation { mean, std }),
        _ => None,
    };
    let options = rfb_core::checkpoint::import::ImportOptions {
        from: args.from,
        out: args.out.clone(),
        dataset,
        architecture: args.arch,
        method: args.method,
        normalisation,
        class_names,
        data_dir: args.data_dir,
        overwrite: args.force,
    };
    let sandbox = SandboxConfig { check_timeout: args.check_timeout.into(), ..args.model_code.config(false) };
    let imported = rfb_evaluator::import::import_model(&options, &sandbox, None)?;
    let manifest = &imported.manifest;
    let source = manifest.source.as_ref().map(|s| format!("{} (sha256 {})", s.file, s.sha256)).unwrap_or_default();
    println!("imported {source} as {}", args.out.display());
    println!(
        "  {}: {} on {} ({} classes, input {:?}), {} parameters, method {:?}{}",
        imported.kind.name(),
        manifest.model.architecture,
        manifest.dataset,
        manifest.model.num_classes,
        manifest.model.input_shape,
        manifest.parameter_count,
        manifest.method,
        match &manifest.model.normalization {
            Some(n) => format!(", normalised with mean {:?} std {:?}", n.mean, n.std),
            None => String::new(),
        }
    );
    match &imported.bf16 {
        Some(Ok(())) => println!("  runs in fp32 and bf16"),
        Some(Err(why)) => println!("  runs in fp32 only: {why}"),
        None => {}
    }
    let name = args.out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let parent = args.out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    println!(
        "evaluate it with: evaluator eval --models-dir {} --model {name}{}",
        parent.display(),
        if manifest.dataset == "digits" { "" } else { " --data-dir DIR" }
    );
    Ok(())
}

fn main() -> Result<()> {
    rfb_core::allocator::keep_freed_memory_for_reuse();
    let cli = Cli::parse();
    rfb_core::device_settings::DeviceSettings::for_evaluation(cli.allow_tf32).apply();
    match cli.command {
        Command::Serve(args) => {
            init_logging("info");
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            let result = runtime.block_on(serve(args));
            // Do not wait for request handlers still hashing a file on the blocking pool.
            runtime.shutdown_timeout(std::time::Duration::from_secs(1));
            result
        }
        Command::Eval(args) => {
            init_logging("warn");
            eval(args)
        }
        Command::Import(args) => {
            init_logging("warn");
            import(args)
        }
        Command::SandboxedWorker => {
            init_logging("warn");
            rfb_evaluator::model_process::child::main()
        }
    }
}
