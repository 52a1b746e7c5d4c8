//! `trainer`: trains ABSLD, its baselines and teachers, and writes checkpoints and logs.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use rfb_core::data::{DatasetKind, Split};
use rfb_trainer::grid::{self, GridError, Outcome, Plan};
use rfb_trainer::methods::fair_ard::FairArdVariant;
use rfb_trainer::methods::Method;
use rfb_trainer::overrides::Overrides;
use rfb_trainer::presets::{Recipe, RecipeOptions};
use rfb_trainer::run::{self, RunConfig, RunSummary, TeacherSource};
use rfb_trainer::selection::WorstClasses;

#[derive(Parser)]
#[command(name = "trainer", version, about = "Train robust students (ABSLD and baselines) and teachers")]
struct Cli {
    /// Let cuBLAS and cuDNN compute fp32 work in TF32 on GPUs that have it (faster; changes
    /// results, so off by default: docs/gpu.md). Also RFB_ALLOW_TF32=1.
    #[arg(long, global = true)]
    allow_tf32: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum DeviceChoice {
    /// CUDA when a GPU is visible, else CPU.
    Auto,
    Cpu,
    Cuda,
}

#[derive(Clone, Copy, ValueEnum)]
enum SelectOn {
    /// A stratified hold-out of the training set (default; keeps the test set unseen).
    Val,
    /// The test split, as the paper does (A.3); training then uses every training image
    /// (FRL and CFA still adapt on, and so never train on, the validation hold-out).
    Test,
}

#[derive(Subcommand)]
enum Command {
    /// Train one model and write checkpoints (last/, best/), log.jsonl and summary.json to --out.
    ///
    /// Settings come from the method's recipe on the data set (`trainer preset --method M
    /// --dataset D` prints it with the source of every value: the paper's for ABSLD, each
    /// baseline's own paper or code on CIFAR-10/100 and Tiny-ImageNet; one small preset shared
    /// by every method on digits); any option below overrides its field.
    Train(TrainArgs),
    /// Grids of runs as data (a TOML file: data sets, architectures, methods, seeds, overrides;
    /// see docs/scale-out.md): plan them, run one by index, emit cluster job scripts.
    Grid {
        #[command(subcommand)]
        command: GridCommand,
    },
    /// Print a method's recipe on a data set as JSON: every setting with its source (paper
    /// section or the authors' code), and the preset as a run records it.
    Preset(PresetArgs),
}

/// Which recipe: data set, student architecture and Fair-ARD form (train and preset).
#[derive(Args)]
struct RecipeArgs {
    /// Data set: digits (embedded), cifar10, cifar100, tiny-imagenet.
    #[arg(long, default_value = "digits", value_parser = parse_dataset)]
    dataset: DatasetKind,
    /// Student architecture (default: the recipe's), e.g. resnet18, mobilenet-v2, wrn-34-10,
    /// digits-cnn; ABSLD's CIFAR-100 temperature bounds depend on it.
    #[arg(long)]
    arch: Option<String>,
    /// Fair-ARD's form (default: the paper's choice, ard on CIFAR-10, rslad on CIFAR-100,
    /// Tiny-ImageNet and digits); it brings its own schedule.
    #[arg(long, value_enum)]
    fair_ard_variant: Option<FairArdVariant>,
}

fn parse_dataset(name: &str) -> Result<DatasetKind, String> {
    name.parse().map_err(|e| format!("{e}"))
}

/// Settings over the recipe's ([`Overrides`], which a grid file's `[overrides]` also fills).
#[derive(Args)]
struct OverrideArgs {
    /// Architecture of a PyTorch teacher state dict (default: the recipe's, wrn-34-10 on
    /// CIFAR-10, wrn-70-16 on CIFAR-100, preact-resnet34 on Tiny-ImageNet).
    #[arg(long)]
    teacher_arch: Option<String>,
    /// Epochs (the learning-rate drops move to the same fractions of the run).
    #[arg(long)]
    epochs: Option<i64>,
    /// Batch size (the recipe's by default).
    #[arg(long)]
    batch_size: Option<i64>,
    /// Initial learning rate.
    #[arg(long)]
    lr: Option<f64>,
    /// SGD weight decay (the recipe's by default).
    #[arg(long)]
    weight_decay: Option<f64>,
    /// L-inf radius of the training attack (digits preset: 0.1; CIFAR: 8/255).
    #[arg(long)]
    eps: Option<f64>,
    /// Steps of the training attack (the inner maximisation; 10 in the paper).
    #[arg(long)]
    attack_steps: Option<i64>,
    /// Scale of the distillation KL (rslad, absld, fair-ard, ard, adaad): the factor on the
    /// class-summed KL's batch mean (default the recipe's, the authors' scripts' scale, e.g.
    /// 0.1 for RSLAD and ABSLD; see docs/absld.md).
    #[arg(long)]
    kl_scale: Option<f64>,
    /// ABSLD temperature learning rate beta (0.1).
    #[arg(long)]
    temperature_beta: Option<f64>,
    /// ABSLD lower temperature bound.
    #[arg(long)]
    temperature_min: Option<f64>,
    /// ABSLD upper temperature bound.
    #[arg(long)]
    temperature_max: Option<f64>,
    /// Evaluate every N epochs, at the last, and (as the recipes say) every epoch from the
    /// first learning-rate drop.
    #[arg(long)]
    eval_every: Option<i64>,
}

impl OverrideArgs {
    fn overrides(self, recipe: &RecipeArgs) -> Overrides {
        Overrides {
            arch: recipe.arch.clone(),
            teacher_arch: self.teacher_arch,
            fair_ard_variant: recipe.fair_ard_variant,
            epochs: self.epochs,
            batch_size: self.batch_size,
            lr: self.lr,
            weight_decay: self.weight_decay,
            eps: self.eps,
            attack_steps: self.attack_steps,
            kl_scale: self.kl_scale,
            temperature_beta: self.temperature_beta,
            temperature_min: self.temperature_min,
            temperature_max: self.temperature_max,
            eval_every: self.eval_every,
        }
    }
}

/// Where a run computes and how it reports (train and grid run).
#[derive(Args)]
struct RuntimeArgs {
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    device: DeviceChoice,
    /// No progress: neither the bar (terminal) nor the epoch lines and the plain progress
    /// line written every 15 s when stderr is a log or a pipe (RFB_PROGRESS_SECONDS sets
    /// that pace, RFB_PROGRESS=bars|lines|off chooses).
    #[arg(long)]
    quiet: bool,
}

#[derive(Args)]
struct TrainArgs {
    /// Training method.
    #[arg(long, value_enum)]
    method: Method,
    #[command(flatten)]
    recipe: RecipeArgs,
    /// Directory with the CIFAR binary files or the Tiny-ImageNet folder.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Teacher of the distillation methods (rslad, absld, ard, adaad, fair-ard): one of our
    /// checkpoint directories or a PyTorch state dict (.pt/.pth).
    #[arg(long)]
    teacher: Option<PathBuf>,
    /// Start from the weights of this checkpoint directory (same architecture) instead of a
    /// random initialisation. FRL needs it: its recipe fine-tunes a robust model (e.g. a
    /// TRADES run's `best`) for 40 epochs at lr 0.001.
    #[arg(long)]
    init: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output directory of the run.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    overrides: OverrideArgs,
    /// Split for checkpoint selection (avg + worst-class PGD accuracy; worst 10% of classes
    /// on CIFAR-100 and Tiny-ImageNet).
    #[arg(long, value_enum, default_value_t = SelectOn::Val)]
    select_on: SelectOn,
    #[command(flatten)]
    runtime: RuntimeArgs,
    /// Continue the run in --out from its last saved epoch.
    #[arg(long)]
    resume: bool,
    /// Stop after this many epochs of this invocation (as if killed; for testing --resume).
    #[arg(long, hide = true)]
    stop_after: Option<i64>,
}

#[derive(Args)]
struct PresetArgs {
    /// Training method (see `train --help`).
    #[arg(long, value_enum, default_value_t = Method::Absld)]
    method: Method,
    #[command(flatten)]
    recipe: RecipeArgs,
}

/// A grid file and where its runs go.
#[derive(Args)]
struct GridArgs {
    grid: PathBuf,
    /// Output directory of the runs (default: the grid's `out`, else its directory).
    #[arg(long)]
    out: Option<PathBuf>,
}

impl GridArgs {
    fn plan(&self) -> Result<Plan> {
        Ok(Plan::load(&self.grid, self.out.as_deref())?)
    }
}

#[derive(Subcommand)]
enum GridCommand {
    /// Print every run of the grid (index, directory, method, data set, architecture, seed, the
    /// runs it needs first, status).
    Plan(GridPlanArgs),
    /// Run one run of the grid idempotently: skip it when finished, resume it when interrupted,
    /// start it when new. SIGTERM or SIGUSR1 stops it after the current batch and exits with
    /// code 75 (requeue); running the same index again continues it.
    Run(GridRunArgs),
    /// Write cluster job files for the grid: a Slurm job-array script and its submit script
    /// (`--slurm`), or a Kubernetes Indexed Job manifest (`--kubernetes`). Runs that need others
    /// (students of a teacher) go in a later array or Job that waits for the earlier ones.
    Emit(GridEmitArgs),
}

#[derive(Args)]
struct GridPlanArgs {
    #[command(flatten)]
    grid: GridArgs,
    /// Print only the number of runs.
    #[arg(long)]
    count: bool,
    /// Print the run indices level by level, one line per level: a level's runs need only
    /// runs of earlier lines, so each line may run all at once.
    #[arg(long, conflicts_with = "count")]
    levels: bool,
}

#[derive(Args)]
struct GridRunArgs {
    #[command(flatten)]
    grid: GridArgs,
    /// Which run (see `grid plan`); default: $RFB_GRID_INDEX, $SLURM_ARRAY_TASK_ID or
    /// $JOB_COMPLETION_INDEX (Kubernetes indexed jobs), the first one set.
    #[arg(long)]
    index: Option<usize>,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

#[derive(Args)]
struct GridEmitArgs {
    #[command(flatten)]
    grid: GridArgs,
    /// Directory the files are written to.
    #[arg(long)]
    to: PathBuf,
    #[arg(long, required_unless_present = "kubernetes")]
    slurm: bool,
    #[arg(long)]
    kubernetes: bool,
    #[command(flatten)]
    slurm_options: SlurmArgs,
    /// Kubernetes: container image with the trainer (see docs/scale-out.md).
    #[arg(long, default_value = "rfb-trainer:latest")]
    image: String,
    /// Path of the trainer binary the jobs run (default: this one).
    #[arg(long)]
    trainer: Option<PathBuf>,
}

/// What a Slurm job array asks for ([`grid::SlurmOptions`]).
#[derive(Args)]
struct SlurmArgs {
    /// Slurm: wall-clock limit of one task (requeued tasks continue where they stopped).
    #[arg(long, default_value = "24:00:00")]
    time: String,
    /// Slurm: partition.
    #[arg(long)]
    partition: Option<String>,
    /// Slurm: GPUs per task (0: none).
    #[arg(long, default_value_t = 1)]
    gpus: u32,
    /// Seconds before the time limit at which Slurm sends USR1 (the trainer stops after its
    /// batch, and the task is requeued).
    #[arg(long, default_value_t = 120)]
    signal_before_s: u32,
}

/// Exit code of a run stopped by SIGTERM/SIGUSR1 with its resume state saved: run it again.
const REQUEUE_EXIT_CODE: i32 = 75;

extern "C" fn on_stop_signal(_: libc::c_int) {
    run::request_stop();
}

/// SIGTERM and SIGUSR1 ask the run to stop after its current batch.
fn install_stop_signals() {
    for signal in [libc::SIGTERM, libc::SIGUSR1] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(signal, on_stop_signal as *const () as libc::sighandler_t);
        }
    }
}

fn device_of(choice: DeviceChoice) -> Result<tch::Device> {
    Ok(match choice {
        DeviceChoice::Auto => tch::Device::cuda_if_available(),
        DeviceChoice::Cpu => tch::Device::Cpu,
        DeviceChoice::Cuda => {
            if !tch::Cuda::is_available() {
                bail!("--device cuda but no CUDA device is visible");
            }
            tch::Device::Cuda(0)
        }
    })
}

/// A run stopped on request exits with [`REQUEUE_EXIT_CODE`].
fn exit_if_stopped<T>(result: Result<T, run::TrainError>) -> Result<T> {
    match result {
        Err(e @ run::TrainError::StopRequested { .. }) => {
            eprintln!("trainer: {e}");
            std::process::exit(REQUEUE_EXIT_CODE);
        }
        other => Ok(other?),
    }
}

fn run_grid(command: GridCommand) -> Result<()> {
    match command {
        GridCommand::Plan(args) => run_grid_plan(args),
        GridCommand::Run(args) => run_grid_run(args),
        GridCommand::Emit(args) => run_grid_emit(args),
    }
}

fn run_grid_plan(args: GridPlanArgs) -> Result<()> {
    let plan = args.grid.plan()?;
    if args.count {
        println!("{}", plan.runs.len());
    } else if args.levels {
        for level in plan.levels() {
            println!("{}", level.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(" "));
        }
    } else {
        print!("{}", plan.render());
    }
    Ok(())
}

/// `--index`, else the first of the job schedulers' index variables that is set.
fn grid_index(index: Option<usize>) -> Result<usize> {
    if let Some(index) = index {
        return Ok(index);
    }
    ["RFB_GRID_INDEX", "SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX"]
        .iter()
        .find_map(|v| std::env::var(v).ok().map(|value| (v, value)))
        .map(|(v, value)| value.trim().parse::<usize>().with_context(|| format!("${v} is {value:?}, not an index")))
        .transpose()?
        .context("give --index (or set RFB_GRID_INDEX, SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX)")
}

fn run_grid_run(args: GridRunArgs) -> Result<()> {
    let index = grid_index(args.index)?;
    let plan = args.grid.plan()?;
    let device = device_of(args.runtime.device)?;
    let run = plan.run(index)?.clone();
    install_stop_signals();
    let outcome = grid::run_one(&plan, index, |config| {
        config.device = device;
        config.progress = !args.runtime.quiet;
    });
    let outcome = match outcome {
        Err(GridError::Train(e)) => Err(e),
        Err(other) => return Err(other.into()),
        Ok(outcome) => Ok(outcome),
    };
    match exit_if_stopped(outcome)? {
        Outcome::Skipped => println!("run {index} ({}) finished before: skipped", run.name),
        Outcome::Trained { resumed, .. } => println!(
            "run {index} ({}) {}: {}",
            run.name,
            if resumed { "resumed and finished" } else { "finished" },
            plan.dir(&run).join("best").display()
        ),
        Outcome::Stopped { summary } => println!("run {index} ({}) stopped after {} epochs", run.name, summary.epochs_done),
    }
    Ok(())
}

fn run_grid_emit(args: GridEmitArgs) -> Result<()> {
    let plan = args.grid.plan()?;
    let trainer = match args.trainer {
        Some(t) => t,
        None => std::env::current_exe().context("finding the trainer binary")?,
    };
    let grid_path = std::path::absolute(&args.grid.grid).context("the grid file's path")?;
    let to = &args.to;
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    let mut written = Vec::new();
    if args.slurm {
        let SlurmArgs { time, partition, gpus, signal_before_s } = args.slurm_options;
        let options = grid::SlurmOptions { time, partition, gpus, signal_before_s };
        for (name, text, executable) in grid::slurm_files(&plan, &grid_path, &trainer, &options)? {
            let path = to.join(name);
            rfb_core::checkpoint::write_atomic(&path, text.as_bytes())?;
            if executable {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
            }
            written.push(path);
        }
    }
    if args.kubernetes {
        let path = to.join("grid-jobs.yaml");
        rfb_core::checkpoint::write_atomic(&path, grid::kubernetes_manifest(&plan, &grid_path, &args.image).as_bytes())?;
        written.push(path);
    }
    for path in written {
        println!("wrote {}", path.display());
    }
    Ok(())
}

fn run_preset(args: PresetArgs) -> Result<()> {
    let options = RecipeOptions { architecture: args.recipe.arch, fair_ard_variant: args.recipe.fair_ard_variant };
    let recipe = Recipe::new(args.method, args.recipe.dataset, &options);
    println!("{}", serde_json::to_string_pretty(&recipe.to_json())?);
    Ok(())
}

fn run_train(args: TrainArgs) -> Result<()> {
    let preset = args.overrides.overrides(&args.recipe).preset(args.method, args.recipe.dataset)?;
    let device = device_of(args.runtime.device)?;
    let teacher = args.teacher.map(|path| TeacherSource { path, architecture: preset.teacher_architecture.clone() });
    let worst_classes = preset.selection_worst;
    let config = RunConfig {
        method: args.method,
        dataset: args.recipe.dataset,
        data_dir: args.data_dir,
        teacher,
        init: args.init,
        seed: args.seed,
        out: args.out,
        preset,
        select_on: match args.select_on {
            SelectOn::Val => Split::Validation,
            SelectOn::Test => Split::Test,
        },
        device,
        resume: args.resume,
        progress: !args.runtime.quiet,
        stop_after: args.stop_after,
        stop_after_batches: None,
    };
    install_stop_signals();
    let summary = exit_if_stopped(run::run(&config))?;
    print_summary(&summary, worst_classes, &config.out);
    Ok(())
}

/// The selected checkpoint's class-wise test accuracy, or where a stopped run stands.
fn print_summary(summary: &RunSummary, worst_classes: WorstClasses, out: &Path) {
    let (Some(clean), Some(pgd)) = (&summary.test_clean, &summary.test_pgd) else {
        println!("stopped after {} epochs; continue with --resume", summary.epochs_done);
        return;
    };
    println!("selected epoch {} of {}; test split, class-wise accuracy (%):", summary.best_epoch.map_or(0, |e| e + 1), summary.epochs_done);
    println!("{:<12} {:>8} {:>8}", "class", "clean", "PGD-20");
    for (k, name) in summary.class_names.iter().enumerate() {
        println!("{:<12} {:>8.2} {:>8.2}", name, clean.class_accuracy()[k], pgd.class_accuracy()[k]);
    }
    let worst = |v: Vec<f64>| worst_classes.accuracy(&v);
    println!("{:<12} {:>8.2} {:>8.2}", "average", clean.overall_accuracy(), pgd.overall_accuracy());
    println!("{:<12} {:>8.2} {:>8.2}", worst_classes.describe(), worst(clean.class_accuracy()), worst(pgd.class_accuracy()));
    println!("checkpoint: {}", out.join("best").display());
}

fn main() -> Result<()> {
    rfb_core::allocator::keep_freed_memory_for_reuse();
    let cli = Cli::parse();
    rfb_core::device_settings::DeviceSettings::for_training(cli.allow_tf32).apply();
    match cli.command {
        Command::Train(args) => run_train(args),
        Command::Grid { command } => run_grid(command),
        Command::Preset(args) => run_preset(args),
    }
}
