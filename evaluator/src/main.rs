//! `evaluator`: serves class-wise robustness evaluations over gRPC (`serve`), or runs one from
//! the command line (`eval`). The engine lives in the library; this file only parses arguments.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use rfb_evaluator::catalog::{parse_device, EngineConfig, DEFAULT_BATCH_SIZE};
use rfb_evaluator::service::{ServeOptions, TlsFiles};
use rfb_evaluator::{Catalog, Engine};
use rfb_proto::v1::{evaluate_event::Event, AttackKind, AttackSpec, EvaluateRequest};

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
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the rfb.v1.Evaluator gRPC service (plus health and reflection). Prints the bound
    /// address (host:port) on stdout, one line, once it listens.
    Serve(ServeArgs),
    /// Evaluate one checkpoint from the command line and print the per-class table.
    Eval(EvalArgs),
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
}

impl EngineArgs {
    fn config(&self, default_batch_size: i64) -> Result<EngineConfig> {
        let device = parse_device(&self.device).map_err(anyhow::Error::msg)?;
        Ok(EngineConfig {
            models_dir: self.models_dir.clone(),
            data_dir: self.data_dir.clone(),
            cache_dir: self.cache_dir.clone(),
            use_cache: !self.no_cache,
            device,
            default_batch_size,
        })
    }
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on; loopback by default. Port 0 picks a free port (printed on stdout).
    #[arg(long, default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    #[command(flatten)]
    engine: EngineArgs,
    /// Require `authorization: Bearer <token>` on Evaluator calls, the token being this file's
    /// content (surrounding white space removed). Health and reflection stay open.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// PEM certificate chain for TLS (with --tls-key).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for TLS (with --tls-cert).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Batch size for requests that leave batch_size at 0.
    #[arg(long, default_value_t = DEFAULT_BATCH_SIZE)]
    batch_size: i64,
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
    /// Comma-separated attacks: clean, fgsm, pgd (PGD-20), cw (CW-inf, 30 steps, kappa 50), aa
    /// (AutoAttack standard), aa-rand.
    #[arg(long, default_value = "clean,fgsm,pgd,cw,aa", value_delimiter = ',')]
    attacks: Vec<String>,
    /// L-inf radius in pixel scale [0, 1], as a number or a fraction such as 8/255 [default: 8/255].
    #[arg(long)]
    eps: Option<String>,
    /// Steps of PGD and CW-inf [default: 20 and 30].
    #[arg(long)]
    steps: Option<i64>,
    /// Seed of the randomised attacks.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = DEFAULT_BATCH_SIZE)]
    batch_size: i64,
    /// fp32 (the reference numerics) or bf16 (a channels-last bf16 copy of the network; the
    /// attack arithmetic stays fp32).
    #[arg(long, default_value = "fp32", value_parser = ["fp32", "bf16"])]
    precision: String,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

fn init_logging(default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    tracing_subscriber::fmt().with_writer(std::io::stderr).with_env_filter(filter).init();
}

fn parse_eps(text: &str) -> Result<f64> {
    let value = match text.split_once('/') {
        Some((a, b)) => a.trim().parse::<f64>()? / b.trim().parse::<f64>()?,
        None => text.trim().parse::<f64>()?,
    };
    Ok(value)
}

fn attack_spec(name: &str, eps: Option<f64>, steps: Option<i64>, seed: u64) -> Result<AttackSpec> {
    let kind = match name.trim().to_ascii_lowercase().as_str() {
        "clean" => AttackKind::Clean,
        "fgsm" => AttackKind::Fgsm,
        "pgd" | "pgd20" | "pgd-20" => AttackKind::Pgd,
        "cw" | "cw-inf" | "cwinf" => AttackKind::CwInf,
        "aa" | "autoattack" => AttackKind::AutoattackStandard,
        "aa-rand" => AttackKind::AutoattackRand,
        other => bail!("unknown attack {other:?} (clean, fgsm, pgd, cw, aa, aa-rand)"),
    };
    let eps = if kind == AttackKind::Clean { None } else { eps };
    let steps = if matches!(kind, AttackKind::Pgd | AttackKind::CwInf) { steps } else { None };
    Ok(AttackSpec { kind: kind as i32, eps, steps, seed, ..Default::default() })
}

fn split_proto(text: &str) -> Result<rfb_proto::v1::Split> {
    let split: rfb_core::data::Split = text.parse()?;
    Ok(rfb_evaluator::catalog::split_to_proto(split))
}

async fn serve(args: ServeArgs) -> Result<()> {
    let token = match &args.token_file {
        Some(path) => Some(rfb_evaluator::auth::read_token_file(path)?),
        None => None,
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles {
            certificate_pem: std::fs::read(cert).with_context(|| format!("reading {}", cert.display()))?,
            key_pem: std::fs::read(key).with_context(|| format!("reading {}", key.display()))?,
        }),
        _ => None,
    };
    let options = ServeOptions { listen: args.listen, engine: args.engine.config(args.batch_size)?, token, tls };
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("interrupted; shutting down");
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
    Ok(())
}

fn eval(args: EvalArgs) -> Result<()> {
    let eps = args.eps.as_deref().map(parse_eps).transpose().context("--eps")?;
    let attacks = args.attacks.iter().map(|a| attack_spec(a, eps, args.steps, args.seed)).collect::<Result<Vec<_>>>()?;
    let request = EvaluateRequest {
        model: args.model.clone(),
        dataset: args.dataset.clone().unwrap_or_default(),
        split: split_proto(&args.split)? as i32,
        examples_per_class: args.per_class,
        attacks,
        batch_size: args.batch_size,
        precision: match args.precision.as_str() {
            "bf16" => rfb_proto::v1::Precision::Bf16,
            _ => rfb_proto::v1::Precision::Fp32,
        } as i32,
    };
    let catalog = Arc::new(Catalog::new(&args.engine.config(args.batch_size)?).map_err(anyhow::Error::msg)?);
    let job = catalog.prepare(&request)?;
    let mut engine = Engine::new(catalog.clone());
    // A bar on a terminal; in a log, a plain line every few seconds (rfb_progress).
    let progress = rfb_progress::Progress::new(rfb_progress::Mode::detect(args.quiet));
    let bar = progress.task(format!("eval {}", job.model), 0, "examples");
    let attacks = job.attacks.len();
    let mut results = Vec::new();
    engine.run(&job, &mut |event| {
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
    let first = &results[0];
    println!(
        "model {} ({}), {} {} split, {} examples per class, device {}",
        job.model,
        &job.weights_sha256[..12],
        job.dataset,
        job.split,
        if job.examples_per_class > 0 { job.examples_per_class.to_string() } else { "all".into() },
        first.device
    );
    for result in &results {
        let spec = result.attack.clone().unwrap_or_default();
        if let Some(eps) = spec.eps {
            println!("  {}: eps {eps:.5}, seed {}", result.attack_name, spec.seed);
        }
        if let Some(sanity) = &result.sanity {
            if sanity.randomised || sanity.probabilities_not_logits || sanity.possible_gradient_masking {
                println!("  {}: sanity warning: {sanity:?}", result.attack_name);
            }
        }
    }
    println!();
    print!("{}", rfb_evaluator::table::render(&results));
    if results.iter().any(|r| r.cached) {
        println!("* from the cache ({})", catalog.cache_dir().map(|p| p.display().to_string()).unwrap_or_default());
    }
    println!("class-wise accuracy in percent; NSD = population SD / Avg");
    Ok(())
}

fn main() -> Result<()> {
    rfb_core::allocator::keep_freed_memory_for_reuse();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            init_logging("info");
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(serve(args))
        }
        Command::Eval(args) => {
            init_logging("warn");
            eval(args)
        }
    }
}
