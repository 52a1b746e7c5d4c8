//! Attack throughput benchmark: images per second for PGD-20 and AutoAttack (standard) on a
//! ResNet-18 with 32x32 inputs, at fp32 and bf16, on CPU and on CUDA when present.
//!
//! The network has seeded random weights and the labels are its own clean predictions, so every
//! point starts correctly classified and the attacks do their full work until it breaks. The
//! weights and the batch are written to `--export DIR` so that `tests/python/bench_attacks.py`
//! can time the same attacks in PyTorch (torchattacks) on the same model and data.
//!
//! Run it with `bash scripts/bench-attacks.sh` (builds in release, runs both sides), or:
//! `cargo run --release -p rfb-core --example attack_benchmark -- --batches 32,128`.

use std::path::PathBuf;
use std::time::Instant;

use rfb_core::attacks::{self, Attack, AutoAttack, Classifier, Pgd};
use rfb_core::checkpoint::{self, CheckpointInfo};
use rfb_core::models::{self, ModelSpec, Precision, PreparedNetwork};
use tch::{Device, Kind, Tensor};

struct Options {
    batches: Vec<i64>,
    attacks: Vec<String>,
    precisions: Vec<Precision>,
    devices: Vec<Device>,
    export: Option<PathBuf>,
    repeats: usize,
}

fn parse() -> Result<Options, String> {
    let mut options = Options {
        batches: vec![32, 128],
        attacks: vec!["pgd20".into(), "autoattack".into()],
        precisions: vec![Precision::Fp32, Precision::Bf16],
        devices: vec![Device::Cpu],
        export: None,
        repeats: 1,
    };
    if tch::Cuda::is_available() {
        options.devices.push(Device::Cuda(0));
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).cloned().ok_or_else(|| format!("{} needs a value", args[i]))?;
        match args[i].as_str() {
            "--batches" => {
                options.batches = value.split(',').map(|v| v.parse().map_err(|_| format!("bad batch size {v}"))).collect::<Result<_, _>>()?
            }
            "--attacks" => options.attacks = value.split(',').map(str::to_string).collect(),
            "--precisions" => {
                options.precisions = value.split(',').map(|v| v.parse().map_err(|e| format!("{e}"))).collect::<Result<_, _>>()?
            }
            "--devices" => {
                options.devices = value
                    .split(',')
                    .map(|v| match v {
                        "cpu" => Ok(Device::Cpu),
                        "cuda" => Ok(Device::Cuda(0)),
                        other => Err(format!("unknown device {other}")),
                    })
                    .collect::<Result<_, _>>()?
            }
            "--export" => options.export = Some(PathBuf::from(value)),
            "--repeats" => options.repeats = value.parse().map_err(|_| "bad --repeats".to_string())?,
            other => return Err(format!("unknown option {other}")),
        }
        i += 2;
    }
    Ok(options)
}

fn main() {
    rfb_core::allocator::keep_freed_memory_for_reuse();
    let options = match parse() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("attack_benchmark: {message}");
            std::process::exit(2);
        }
    };
    let eps = 8.0 / 255.0;
    let largest = options.batches.iter().copied().max().unwrap_or(32);
    tch::manual_seed(0);
    let spec = ModelSpec::new("resnet18", 10, [3, 32, 32]);
    let mut source = models::build(&spec, Device::Cpu).expect("resnet18 builds");
    source.set_trainable(false);
    let images = Tensor::rand([largest, 3, 32, 32], (Kind::Float, Device::Cpu));
    let labels = tch::no_grad(|| source.forward_t(&images, false).argmax(-1, false));
    if let Some(dir) = &options.export {
        let info = CheckpointInfo { class_names: (0..10).map(|k| k.to_string()).collect(), dataset: "random".into(), method: "random-init".into(), seed: Some(0), ..Default::default() };
        checkpoint::save(&dir.join("model"), &source, info).expect("export model");
        checkpoint::save_tensors(&dir.join("batch.safetensors"), &[("images".into(), images.shallow_clone()), ("labels".into(), labels.shallow_clone())])
            .expect("export batch");
    }
    println!("threads {}, libtorch {}", tch::get_num_threads(), checkpoint::libtorch_version());
    println!("{:<6} {:<6} {:<11} {:>6} {:>10} {:>9} {:>12}", "device", "prec", "attack", "batch", "seconds", "img/s", "robust acc");
    for device in &options.devices {
        let on_device = {
            let mut copy = models::build(&spec, *device).expect("build");
            copy.var_store.copy(&source.var_store).expect("copy weights");
            copy
        };
        for precision in &options.precisions {
            let model = PreparedNetwork::new(&on_device, *precision).expect("prepare");
            for attack_name in &options.attacks {
                let attack: Box<dyn Attack> = match attack_name.as_str() {
                    "pgd20" => Box::new(Pgd::pgd20(eps, 0)),
                    "autoattack" => Box::new(AutoAttack::standard(eps, 0)),
                    other => {
                        eprintln!("unknown attack {other} (pgd20, autoattack)");
                        std::process::exit(2);
                    }
                };
                for &batch in &options.batches {
                    let x = images.narrow(0, 0, batch).to_device(*device);
                    let y = labels.narrow(0, 0, batch).to_device(*device);
                    // One untimed warm-up step (oneDNN primitive creation, CUDA context).
                    let _ = tch::no_grad(|| model.logits(&x));
                    let mut best = f64::INFINITY;
                    let mut robust = 0.0;
                    for _ in 0..options.repeats.max(1) {
                        tch::manual_seed(1);
                        let started = Instant::now();
                        let adversarial = attacks::perturb_batch(attack.as_ref(), &model, &x, &y).expect("attack runs");
                        let correct = tch::no_grad(|| model.judge_logits(&adversarial).argmax(-1, false).eq_tensor(&y));
                        robust = 100.0 * f64::try_from(correct.to_kind(Kind::Float).mean(Kind::Float)).unwrap_or(f64::NAN);
                        best = best.min(started.elapsed().as_secs_f64());
                        attacks::verify_adversarial(&attack.name(), &x, &adversarial, eps).expect("attack result within bounds");
                    }
                    let device_name = if device.is_cuda() { "cuda" } else { "cpu" };
                    println!("{:<6} {:<6} {:<11} {:>6} {:>10.2} {:>9.2} {:>11.1}%", device_name, precision, attack.name(), batch, best, batch as f64 / best, robust);
                }
            }
        }
    }
}
