//! `trainer`: trains ABSLD, its baselines and teachers, and writes checkpoints and logs.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use rfb_core::data::{DatasetKind, Split};
use rfb_trainer::methods::fair_ard::FairArdVariant;
use rfb_trainer::presets::{Recipe, RecipeOptions};
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
    /// The test split, as the paper does (A.3); training then uses every training image
    /// (FRL and CFA still adapt on, and so never train on, the validation hold-out).
    Test,
}

#[derive(Clone, Copy, ValueEnum)]
enum VariantChoice {
    /// Fair-ARD.py: ARD re-weighted (temperature 30, cross-entropy inner attack).
    Ard,
    /// Fair-RSLAD.py: RSLAD re-weighted.
    Rslad,
}

impl From<VariantChoice> for FairArdVariant {
    fn from(choice: VariantChoice) -> Self {
        match choice {
            VariantChoice::Ard => FairArdVariant::Ard,
            VariantChoice::Rslad => FairArdVariant::Rslad,
        }
    }
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once
enum Command {
    /// Train one model and write checkpoints (last/, best/), log.jsonl and summary.json to --out.
    ///
    /// Settings come from the method's recipe on the data set (`trainer preset --method M
    /// --dataset D` prints it with the source of every value: the paper's for ABSLD, each
    /// baseline's own paper or code on CIFAR-10/100 and Tiny-ImageNet; one small preset shared
    /// by every method on digits); any option below overrides its field.
    Train {
        /// Training method: natural, sat, trades, rslad, absld, ard, adaad, fair-ard, frl, bat, cfa.
        #[arg(long)]
        method: String,
        /// Fair-ARD's form (default: the paper's choice, ard on CIFAR-10, rslad on CIFAR-100,
        /// Tiny-ImageNet and digits); it brings its own schedule.
        #[arg(long, value_enum)]
        fair_ard_variant: Option<VariantChoice>,
        /// Data set: digits (embedded), cifar10, cifar100, tiny-imagenet.
        #[arg(long, default_value = "digits")]
        dataset: String,
        /// Directory with the CIFAR binary files or the Tiny-ImageNet folder.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Student architecture (default: the recipe's), e.g. resnet18, mobilenet-v2, wrn-34-10, digits-cnn.
        #[arg(long)]
        arch: Option<String>,
        /// Teacher of the distillation methods (rslad, absld, ard, adaad, fair-ard): one of our
        /// checkpoint directories or a PyTorch state dict (.pt/.pth).
        #[arg(long)]
        teacher: Option<PathBuf>,
        /// Architecture of a PyTorch teacher state dict (default: the recipe's, wrn-34-10 on
        /// CIFAR-10, wrn-70-16 on CIFAR-100, preact-resnet34 on Tiny-ImageNet).
        #[arg(long)]
        teacher_arch: Option<String>,
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
        /// Split for checkpoint selection (avg + worst-class PGD accuracy; worst 10% of classes
        /// on CIFAR-100 and Tiny-ImageNet).
        #[arg(long, value_enum, default_value_t = SelectOn::Val)]
        select_on: SelectOn,
        /// Evaluate every N epochs, at the last, and (as the recipes say) every epoch from the
        /// first learning-rate drop.
        #[arg(long)]
        eval_every: Option<i64>,
        #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
        device: DeviceChoice,
        /// Continue the run in --out from its last saved epoch.
        #[arg(long)]
        resume: bool,
        /// No progress: neither the bar (terminal) nor the epoch lines and the plain progress
        /// line written every 15 s when stderr is a log or a pipe (RFB_PROGRESS_SECONDS sets
        /// that pace, RFB_PROGRESS=bars|lines|off chooses).
        #[arg(long)]
        quiet: bool,
        /// Stop after this many epochs of this invocation (as if killed; for testing --resume).
        #[arg(long, hide = true)]
        stop_after: Option<i64>,
    },
    /// Print a method's recipe on a data set as JSON: every setting with its source (paper
    /// section or the authors' code), and the preset as a run records it.
    Preset {
        /// Training method (see `train --help`).
        #[arg(long, default_value = "absld")]
        method: String,
        #[arg(long, default_value = "digits")]
        dataset: String,
        /// Student architecture, when not the recipe's (ABSLD's CIFAR-100 temperature bounds depend on it).
        #[arg(long)]
        arch: Option<String>,
        /// Fair-ARD's form (default: the paper's choice for the data set).
        #[arg(long, value_enum)]
        fair_ard_variant: Option<VariantChoice>,
    },
}

fn main() -> Result<()> {
    rfb_core::allocator::keep_freed_memory_for_reuse();
    match Cli::parse().command {
        Command::Preset { method, dataset, arch, fair_ard_variant } => {
            let kind: DatasetKind = dataset
                .parse()
                .with_context(|| format!("data set '{dataset}'"))?;
            let options = RecipeOptions { architecture: arch, fair_ard_variant: fair_ard_variant.map(Into::into) };
            let recipe = Recipe::new(&method, kind, &options)?;
            println!("{}", serde_json::to_string_pretty(&recipe.to_json())?);
            Ok(())
        }
        Command::Train {
            method,
            fair_ard_variant,
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
            weight_decay,
            eps,
            attack_steps,
            kl_scale,
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
            let options = RecipeOptions { architecture: arch, fair_ard_variant: fair_ard_variant.map(Into::into) };
            let mut preset = Recipe::new(&method, kind, &options)?.preset;
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
            if let Some(weight_decay) = weight_decay {
                if !(weight_decay >= 0.0 && weight_decay.is_finite()) {
                    bail!("--weight-decay must be a finite number >= 0, got {weight_decay}");
                }
                preset.weight_decay = weight_decay;
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
            if let Some(scale) = kl_scale {
                if !(scale > 0.0 && scale.is_finite()) {
                    bail!("--kl-scale must be a positive number, got {scale}");
                }
                let methods = &mut preset.methods;
                match method.as_str() {
                    "rslad" => methods.rslad.kl_scale = scale,
                    "absld" => methods.absld.kl_scale = scale,
                    "fair-ard" => methods.fair_ard.kl_scale = scale,
                    "ard" => methods.ard.kl_scale = scale,
                    "adaad" => methods.adaad.kl_scale = scale,
                    other => bail!("--kl-scale applies to the distillation methods (rslad, absld, fair-ard, ard, adaad), not {other}"),
                }
            }
            let temperature = &mut preset.methods.absld.temperature;
            if let Some(beta) = temperature_beta {
                temperature.beta = beta;
            }
            if let Some(min) = temperature_min {
                temperature.min = min;
            }
            if let Some(max) = temperature_max {
                temperature.max = max;
            }
            if temperature.min <= 0.0 || temperature.min > temperature.max {
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
            let worst_classes = preset.selection_worst;
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
                let worst = |v: Vec<f64>| worst_classes.accuracy(&v);
                println!(
                    "{:<12} {:>8.2} {:>8.2}",
                    "average",
                    clean.overall_accuracy(),
                    pgd.overall_accuracy()
                );
                println!(
                    "{:<12} {:>8.2} {:>8.2}",
                    worst_classes.describe(),
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
