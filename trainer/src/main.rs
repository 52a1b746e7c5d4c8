//! `trainer`: trains ABSLD, its baselines and teachers, and writes checkpoints and logs.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use rfb_core::data::{DatasetKind, Split};
use rfb_trainer::presets::Preset;
use rfb_trainer::run::{self, RunConfig, TeacherSource};

#[derive(Parser)]
#[command(
    name = "trainer",
    version,
    about = "Train robust students (ABSLD and baselines) and teachers"
)]
struct Cli {
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
    /// The test split, as the paper does (A.3).
    Test,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once
enum Command {
    /// Train one model and write checkpoints (last/, best/), log.jsonl and summary.json to --out.
    ///
    /// Settings come from the data set's preset (the paper's for CIFAR-10/100 and
    /// Tiny-ImageNet; a small one for digits); any option below overrides its field.
    Train {
        /// Training method: natural, sat, trades, rslad, absld.
        #[arg(long)]
        method: String,
        /// Data set: digits (embedded), cifar10, cifar100, tiny-imagenet.
        #[arg(long, default_value = "digits")]
        dataset: String,
        /// Directory with the CIFAR binary files or the Tiny-ImageNet folder.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Architecture (default: the preset's), e.g. resnet18, mobilenet-v2, wrn-34-10, digits-cnn.
        #[arg(long)]
        arch: Option<String>,
        /// Teacher for rslad/absld: one of our checkpoint directories or a PyTorch state dict (.pt/.pth).
        #[arg(long)]
        teacher: Option<PathBuf>,
        /// Architecture of a PyTorch teacher state dict (default: the preset's, wrn-34-10 on CIFAR).
        #[arg(long)]
        teacher_arch: Option<String>,
        /// Start from the weights of this checkpoint directory (same architecture) instead of a
        /// random initialisation; FRL fine-tunes a robust model, e.g. a TRADES run's `best`.
        #[arg(long)]
        init: Option<PathBuf>,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Output directory of the run.
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        epochs: Option<i64>,
        #[arg(long)]
        batch_size: Option<i64>,
        #[arg(long)]
        lr: Option<f64>,
        /// L-inf radius of the training attack (digits preset: 0.1; CIFAR: 8/255).
        #[arg(long)]
        eps: Option<f64>,
        /// Steps of the training attack (the inner maximisation; 10 in the paper).
        #[arg(long)]
        attack_steps: Option<i64>,
        /// ABSLD temperature learning rate beta (0.1).
        #[arg(long)]
        temperature_beta: Option<f64>,
        /// ABSLD lower temperature bound.
        #[arg(long)]
        temperature_min: Option<f64>,
        /// ABSLD upper temperature bound.
        #[arg(long)]
        temperature_max: Option<f64>,
        /// Split for checkpoint selection (avg + worst-class PGD accuracy).
        #[arg(long, value_enum, default_value_t = SelectOn::Val)]
        select_on: SelectOn,
        /// Evaluate every N epochs (and at the last).
        #[arg(long)]
        eval_every: Option<i64>,
        #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
        device: DeviceChoice,
        /// Continue the run in --out from its last saved epoch.
        #[arg(long)]
        resume: bool,
        /// Hide the progress bar.
        #[arg(long)]
        quiet: bool,
        /// Stop after this many epochs of this invocation (as if killed; for testing --resume).
        #[arg(long, hide = true)]
        stop_after: Option<i64>,
    },
    /// Print the preset of a data set as JSON.
    Preset {
        #[arg(long, default_value = "digits")]
        dataset: String,
    },
}

fn main() -> Result<()> {
    rfb_core::allocator::keep_freed_memory_for_reuse();
    match Cli::parse().command {
        Command::Preset { dataset } => {
            let kind: DatasetKind = dataset
                .parse()
                .with_context(|| format!("data set '{dataset}'"))?;
            println!(
                "{}",
                serde_json::to_string_pretty(&Preset::for_dataset(kind))?
            );
            Ok(())
        }
        Command::Train {
            method,
            dataset,
            data_dir,
            arch,
            teacher,
            teacher_arch,
            init,
            seed,
            out,
            epochs,
            batch_size,
            lr,
            eps,
            attack_steps,
            temperature_beta,
            temperature_min,
            temperature_max,
            select_on,
            eval_every,
            device,
            resume,
            quiet,
            stop_after,
        } => {
            let kind: DatasetKind = dataset
                .parse()
                .with_context(|| format!("data set '{dataset}'"))?;
            let mut preset = Preset::for_dataset(kind);
            if let Some(arch) = arch {
                preset.architecture = arch;
            }
            if let Some(teacher_arch) = teacher_arch {
                preset.teacher_architecture = teacher_arch;
            }
            if let Some(epochs) = epochs {
                if epochs < 1 {
                    bail!("--epochs must be at least 1");
                }
                // Keep the learning-rate drops at the same fractions of the run.
                let old = preset.epochs as f64;
                preset.lr_milestones = preset
                    .lr_milestones
                    .iter()
                    .map(|m| ((*m as f64) * epochs as f64 / old).round() as i64)
                    .collect();
                preset.epochs = epochs;
            }
            if let Some(batch_size) = batch_size {
                preset.batch_size = batch_size;
            }
            if let Some(lr) = lr {
                preset.learning_rate = lr;
            }
            if let Some(eps) = eps {
                if !(0.0..=1.0).contains(&eps) {
                    bail!("--eps must be in [0, 1], got {eps}");
                }
                preset.attack.step_size *= eps / preset.attack.eps.max(f64::MIN_POSITIVE);
                preset.attack.eps = eps;
            }
            if let Some(steps) = attack_steps {
                if !(1..=1000).contains(&steps) {
                    bail!("--attack-steps must be in 1..=1000, got {steps}");
                }
                preset.attack.steps = steps;
            }
            if let Some(beta) = temperature_beta {
                preset.temperature.beta = beta;
            }
            if let Some(min) = temperature_min {
                preset.temperature.min = min;
            }
            if let Some(max) = temperature_max {
                preset.temperature.max = max;
            }
            if preset.temperature.min <= 0.0 || preset.temperature.min > preset.temperature.max {
                bail!("temperature bounds must satisfy 0 < min <= max");
            }
            if let Some(every) = eval_every {
                preset.eval_every = every.max(1);
            }
            let device = match device {
                DeviceChoice::Auto => tch::Device::cuda_if_available(),
                DeviceChoice::Cpu => tch::Device::Cpu,
                DeviceChoice::Cuda => {
                    if !tch::Cuda::is_available() {
                        bail!("--device cuda but no CUDA device is visible");
                    }
                    tch::Device::Cuda(0)
                }
            };
            let teacher = teacher.map(|path| TeacherSource {
                path,
                architecture: preset.teacher_architecture.clone(),
            });
            let config = RunConfig {
                method,
                dataset: kind,
                data_dir,
                teacher,
                init,
                seed,
                out: out.clone(),
                preset,
                select_on: match select_on {
                    SelectOn::Val => Split::Validation,
                    SelectOn::Test => Split::Test,
                },
                device,
                resume,
                progress: !quiet,
                stop_after,
            };
            let summary = run::run(&config)?;
            if let (Some(clean), Some(pgd)) = (&summary.test_clean, &summary.test_pgd) {
                println!(
                    "selected epoch {} of {}; test split, class-wise accuracy (%):",
                    summary.best_epoch.map_or(0, |e| e + 1),
                    summary.epochs_done
                );
                println!("{:<12} {:>8} {:>8}", "class", "clean", "PGD-20");
                for (k, name) in summary.class_names.iter().enumerate() {
                    println!(
                        "{:<12} {:>8.2} {:>8.2}",
                        name,
                        clean.class_accuracy()[k],
                        pgd.class_accuracy()[k]
                    );
                }
                let worst = |v: Vec<f64>| v.into_iter().fold(f64::INFINITY, f64::min);
                println!(
                    "{:<12} {:>8.2} {:>8.2}",
                    "average",
                    clean.overall_accuracy(),
                    pgd.overall_accuracy()
                );
                println!(
                    "{:<12} {:>8.2} {:>8.2}",
                    "worst",
                    worst(clean.class_accuracy()),
                    worst(pgd.class_accuracy())
                );
                println!("checkpoint: {}", out.join("best").display());
            } else {
                println!(
                    "stopped after {} epochs; continue with --resume",
                    summary.epochs_done
                );
            }
            Ok(())
        }
    }
}
