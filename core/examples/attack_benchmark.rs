//! Attack speed on the case that matters: a trained ResNet-18 at an eps where a good share of the
//! points survive, so that every AutoAttack component does its work. `scripts/bench-attacks.sh`
//! runs it beside `tests/python/bench_attacks.py` (torchattacks and plain PyTorch) on the same
//! weights and the same points and prints the ratios; see `docs/attacks.md` ("Speed").
//!
//! Subcommands:
//! - `synth --out DIR [--train-per-class N] [--test-per-class N] [--seed S]`: writes the learnable
//!   synthetic CIFAR-10 files the model is trained on (`rfb_core::data::synthetic`).
//! - `run --weights FILE.pt --data DIR --eps E [--per-class K] [--autoattack-per-class K]
//!   [--attacks pgd20,cw30,autoattack] [--precision fp32] [--batch-size B] [--seed S]
//!   [--no-dropping] --json OUT`:
//!   times each attack on the first K test images of every class and writes, per attack and per
//!   AutoAttack component, wall and CPU seconds, points attacked and robust points per class,
//!   with the process's peak resident memory, the CPU model and the thread count.
//!   `--no-dropping` keeps broken points in APGD and FAB to the end of their iterations (as
//!   before they were dropped), for the before/after profile.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use rfb_core::attacks::{self, Apgd, Attack, AutoAttack, CarliniWagnerLinf, Fab, Interrupt, Pgd, Square};
use rfb_core::checkpoint;
use rfb_core::data::{self, DatasetKind, Split};
use rfb_core::models::{ModelSpec, Precision, PreparedNetwork};
use serde_json::json;
use tch::Device;

fn value<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).map(String::as_str)
}

fn number<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> Result<T> {
    match value(args, name) {
        Some(text) => text.parse().map_err(|_| anyhow::anyhow!("{name}: cannot read {text:?}")),
        None => Ok(default),
    }
}

/// Seconds of CPU this process has used (user + system), from `/proc/self/stat` (in the
/// kernel's USER_HZ of 100 ticks per second).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(f64::NAN);
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

/// Peak resident memory of this process in bytes (`VmHWM`).
fn peak_memory_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn cpu_model() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    info.lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, m)| m.trim().to_string()))
        .unwrap_or_else(|| "unknown".into())
}

fn synth(args: &[String]) -> Result<()> {
    let out = PathBuf::from(value(args, "--out").context("synth needs --out DIR")?);
    let train = number(args, "--train-per-class", 200usize)?;
    let test = number(args, "--test-per-class", 50usize)?;
    let seed = number(args, "--seed", 0u64)?;
    data::synthetic::write_cifar10(&out, train, test, seed)?;
    println!("wrote synthetic CIFAR-10 ({train} train and {test} test images per class) to {}", out.display());
    Ok(())
}

fn run(args: &[String]) -> Result<()> {
    let weights = PathBuf::from(value(args, "--weights").context("run needs --weights FILE.pt")?);
    let data_dir = PathBuf::from(value(args, "--data").context("run needs --data DIR")?);
    let json_path = PathBuf::from(value(args, "--json").context("run needs --json OUT")?);
    let eps: f64 = number(args, "--eps", 8.0 / 255.0)?;
    let per_class: i64 = number(args, "--per-class", 10)?;
    let autoattack_per_class: i64 = number(args, "--autoattack-per-class", 2)?;
    let batch_size: i64 = number(args, "--batch-size", 256)?;
    let seed: u64 = number(args, "--seed", 0)?;
    let precision: Precision = value(args, "--precision").unwrap_or("fp32").parse()?;
    let dropping = !args.iter().any(|a| a == "--no-dropping");
    let attack_names: Vec<String> = value(args, "--attacks").unwrap_or("pgd20,cw30,autoattack").split(',').map(str::to_string).collect();

    let device = Device::cuda_if_available();
    let spec = ModelSpec::new("resnet18", 10, [3, 32, 32]);
    let mut network = checkpoint::import_pytorch(&weights, &spec, device)?;
    network.set_trainable(false);
    let model = PreparedNetwork::new(&network, precision)?;
    let test = data::load_compact(DatasetKind::Cifar10, Split::Test, Some(&data_dir))?;

    let mut entries = Vec::new();
    for name in &attack_names {
        // PGD and CW-inf take steps of eps/4 (torchattacks' 2/255 at 8/255).
        let (attack, points): (Box<dyn Attack>, i64) = match name.as_str() {
            "pgd20" => (Box::new(Pgd { step_size: eps / 4.0, ..Pgd::pgd20(eps, seed) }), per_class),
            "cw30" => (Box::new(CarliniWagnerLinf::new(eps, eps / 4.0, 30, 50.0, seed)?), per_class),
            "autoattack" if dropping => (Box::new(AutoAttack::standard(eps, seed)), autoattack_per_class),
            "autoattack" => {
                // The same ensemble with broken points kept in APGD and FAB to the end, as before
                // they were dropped (for the before/after profile).
                let keeping: Vec<Box<dyn Attack>> = vec![
                    Box::new(Apgd { drop_broken: false, ..Apgd::ce(eps, seed) }),
                    Box::new(Apgd { drop_broken: false, ..Apgd::targeted(eps, 9, seed) }),
                    Box::new(Fab { drop_broken: false, ..Fab::targeted(eps, 9, seed) }),
                    Box::new(Square::new(eps, 5000, 0.8, seed)),
                ];
                let mut ensemble = AutoAttack::custom(eps, seed, keeping);
                ensemble.version = "standard".into();
                (Box::new(ensemble), autoattack_per_class)
            }
            other => bail!("unknown attack {other} (pgd20, cw30, autoattack)"),
        };
        let dataset = test.class_balanced_subset(points)?;
        // One untimed pass (oneDNN primitive creation, allocator warm-up, CUDA context).
        let _ = tch::no_grad(|| attacks::Classifier::logits(&model, &dataset.images.narrow(0, 0, 1).to_device(device)));
        let mut component_cpu: Vec<f64> = Vec::new();
        let started_cpu = cpu_seconds();
        let started = Instant::now();
        let mut on_progress = |p: &attacks::Progress| {
            if p.done == 0 && component_cpu.len() == p.component_index {
                component_cpu.push(cpu_seconds());
            }
        };
        let never = || false;
        let result = attacks::evaluate(attack.as_ref(), &model, &dataset, batch_size, Interrupt::new(&never), &mut on_progress)?;
        let seconds = started.elapsed().as_secs_f64();
        let ended_cpu = cpu_seconds();
        component_cpu.push(ended_cpu);
        let components: Vec<serde_json::Value> = result
            .components
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let cpu = match (component_cpu.get(i), component_cpu.get(i + 1)) {
                    (Some(a), Some(b)) => b - a,
                    _ => f64::NAN,
                };
                json!({
                    "name": c.name,
                    "seconds": c.seconds,
                    "cpu_seconds": cpu,
                    "attacked": c.attacked,
                    "robust_after": c.robust_after.correct,
                })
            })
            .collect();
        let robust: i64 = result.counts.correct.iter().sum();
        println!(
            "ours {precision} {:<12} {:>4} points  {:>8.1} s  {:>8.1} s CPU  robust {robust}",
            attack.name(),
            dataset.len(),
            seconds,
            ended_cpu - started_cpu
        );
        for c in &components {
            println!(
                "     {:<12} {:>4} attacked  {:>8.1} s  {:>8.1} s CPU  robust after {}",
                c["name"].as_str().unwrap_or(""),
                c["attacked"],
                c["seconds"].as_f64().unwrap_or(f64::NAN),
                c["cpu_seconds"].as_f64().unwrap_or(f64::NAN),
                c["robust_after"].as_array().map_or(0, |a| a.iter().filter_map(|v| v.as_i64()).sum::<i64>())
            );
        }
        entries.push(json!({
            "attack": name,
            "name": attack.name(),
            "points": dataset.len(),
            "seconds": seconds,
            "cpu_seconds": ended_cpu - started_cpu,
            "robust_per_class": result.counts.correct,
            "components": components,
        }));
    }
    let report = json!({
        "side": "ours",
        "precision": if dropping { precision.to_string() } else { format!("{precision}, no dropping") },
        "device": if device.is_cuda() { "cuda" } else { "cpu" },
        "cpu_model": cpu_model(),
        "threads": tch::get_num_threads(),
        "libtorch": checkpoint::libtorch_version(),
        "code_version": checkpoint::code_version(),
        "eps": eps,
        "batch_size": batch_size,
        "seed": seed,
        "peak_memory_bytes": peak_memory_bytes(),
        "attacks": entries,
    });
    checkpoint::write_atomic(&json_path, serde_json::to_string_pretty(&report)?.as_bytes())?;
    Ok(())
}

fn main() -> Result<()> {
    rfb_core::allocator::keep_freed_memory_for_reuse();
    let args: Vec<String> = std::env::args().skip(1).collect();
    // The same thread count on both sides (the Python side reads it too).
    if let Some(threads) = std::env::var("RFB_THREADS").ok().and_then(|t| t.parse::<i32>().ok()) {
        tch::set_num_threads(threads);
    }
    match args.first().map(String::as_str) {
        Some("synth") => synth(&args[1..]),
        Some("run") => run(&args[1..]),
        _ => bail!("usage: attack_benchmark synth --out DIR | run --weights FILE.pt --data DIR --eps E --json OUT (see the file's docs)"),
    }
}
