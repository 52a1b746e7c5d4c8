//! The cost of the TorchScript path: PGD-20 against the same ResNet-18 weights built from our
//! registry (a state dict imported with `checkpoint::import_pytorch`) and loaded as TorchScript
//! modules (scripted and traced), on the same points, in one run on one machine.
//!
//! The weights come from `tests/python/byo_model.py resnet18 DIR` (the reference CIFAR
//! ResNet-18, seeded random weights); the labels are the network's own clean predictions, so
//! every point starts correctly classified and PGD runs its full 20 steps. Each model is timed
//! `--repeats` times, interleaved, after one warm-up attack; the best and median times are
//! printed, with the points each left robust (the same per-example random starts for all).
//!
//! `bash scripts/bench-torchscript.sh` runs both steps; or
//! `cargo run -p rfb-core --example torchscript_cost -- --dir DIR [--batch 32] [--repeats 3] [--device cpu|cuda]`.

use std::path::PathBuf;
use std::time::Instant;

use rfb_core::attacks::{self, Classifier, Pgd, PgdLoss};
use rfb_core::checkpoint;
use rfb_core::models::{LoadedModel, ModelSpec, TorchScriptModel, TORCHSCRIPT_ARCHITECTURE};
use tch::{Device, Kind, Tensor};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).cloned();
    let dir = PathBuf::from(value("--dir").ok_or("--dir DIR (written by tests/python/byo_model.py resnet18 DIR) is required")?);
    let batch: i64 = value("--batch").map(|v| v.parse()).transpose()?.unwrap_or(32);
    let repeats: usize = value("--repeats").map(|v| v.parse()).transpose()?.unwrap_or(3);
    let device = match value("--device").as_deref() {
        None | Some("cpu") => Device::Cpu,
        Some("cuda") => Device::Cuda(0),
        Some(other) => return Err(format!("unknown device {other}").into()),
    };

    let spec = ModelSpec::new("resnet18", 10, [3, 32, 32]);
    let mut registry = checkpoint::import_pytorch(&dir.join("resnet18_state_dict.pt"), &spec, device)?;
    registry.set_trainable(false);
    let mut models: Vec<(&str, LoadedModel)> = vec![("registry", LoadedModel::Native(registry))];
    let ts_spec = ModelSpec::new(TORCHSCRIPT_ARCHITECTURE, 10, [3, 32, 32]);
    for (name, file) in [("torchscript (script)", "resnet18_scripted.pt"), ("torchscript (trace)", "resnet18_traced.pt")] {
        let bytes = std::fs::read(dir.join(file))?;
        models.push((name, LoadedModel::TorchScript(TorchScriptModel::from_bytes(bytes, &ts_spec, device)?)));
    }

    tch::manual_seed(0);
    let images = Tensor::rand([batch, 3, 32, 32], (Kind::Float, Device::Cpu)).to_device(device);
    let reference = tch::no_grad(|| models[0].1.logits(&images).unwrap());
    let labels = reference.argmax(-1, false);
    for (name, model) in &models[1..] {
        let difference = f64::try_from((tch::no_grad(|| model.logits(&images).unwrap()) - &reference).abs().max())?;
        println!("{name}: logits differ from the registry network's by at most {difference:.2e}");
    }
    let pgd =
        Pgd { eps: 8.0 / 255.0, step_size: 2.0 / 255.0, steps: 20, restarts: 1, random_start: true, loss: PgdLoss::CrossEntropy, seed: 0 };
    let attack = |model: &LoadedModel| -> Result<(f64, i64), Box<dyn std::error::Error>> {
        let started = Instant::now();
        let adversarial = attacks::perturb_batch(&pgd, model, &images, &labels)?;
        let robust = tch::no_grad(|| model.logits(&adversarial).unwrap()).argmax(-1, false).eq_tensor(&labels);
        let robust = i64::try_from(robust.sum(Kind::Int64))?;
        if device.is_cuda() {
            tch::Cuda::synchronize(0);
        }
        Ok((started.elapsed().as_secs_f64(), robust))
    };
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); models.len()];
    let mut robust = vec![0; models.len()];
    for (_, model) in &models {
        attack(model)?; // warm-up: allocator, oneDNN primitives, TorchScript's profiling runs
    }
    for _ in 0..repeats {
        for (i, (_, model)) in models.iter().enumerate() {
            let (seconds, left) = attack(model)?;
            times[i].push(seconds);
            robust[i] = left;
        }
    }
    println!(
        "PGD-20 (eps 8/255, step 2/255), ResNet-18, batch of {batch} 32x32 images, {} threads, device {device:?}, {repeats} timed runs each:",
        tch::get_num_threads()
    );
    let best = |t: &[f64]| t.iter().cloned().fold(f64::INFINITY, f64::min);
    let median = |t: &[f64]| {
        let mut sorted = t.to_vec();
        sorted.sort_by(|a, b| a.total_cmp(b));
        sorted[sorted.len() / 2]
    };
    let registry_best = best(&times[0]);
    for (i, (name, _)) in models.iter().enumerate() {
        println!(
            "  {name:<22} best {:7.2} s  median {:7.2} s  {:7.1} images/s  x{:.2} of the registry's time  robust {}/{batch}",
            best(&times[i]),
            median(&times[i]),
            batch as f64 / best(&times[i]),
            best(&times[i]) / registry_best,
            robust[i]
        );
    }
    Ok(())
}
