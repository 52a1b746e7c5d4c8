//! Seconds per training step (method step + SGD update) of every method, on random data of a
//! given shape, so that the cost per epoch on a data set can be read off (steps per epoch x
//! seconds per step), and ABSLD's overhead over RSLAD measured directly.
//!
//! `cargo run --release -p rfb-trainer --example step_benchmark -- resnet18 3 32 32 32`
//! (architecture, channels, height, width, batch size; the teacher has the same architecture).

use std::time::Instant;

use rfb_core::data::DatasetKind;
use rfb_core::models::{self, ModelSpec};
use rfb_trainer::method::{StepContext, TrainingAttack};
use rfb_trainer::methods::Method;
use rfb_trainer::presets::Preset;
use rfb_trainer::sgd::Sgd;
use tch::{Device, Kind, Tensor};

fn main() {
    rfb_core::allocator::keep_freed_memory_for_reuse();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arch = args.first().cloned().unwrap_or_else(|| "resnet18".into());
    let number = |i: usize, default: i64| args.get(i).and_then(|v| v.parse().ok()).unwrap_or(default);
    let (channels, height, width, batch) = (number(1, 3), number(2, 32), number(3, 32), number(4, 32));
    let repeats = number(5, 3) as usize;
    let device = Device::cuda_if_available();
    let spec = ModelSpec::new(&arch, 10, [channels, height, width]);
    tch::manual_seed(0);
    let mut teacher = models::build(&spec, device).expect("teacher builds");
    teacher.set_trainable(false);
    let images = Tensor::rand([batch, channels, height, width], (Kind::Float, device));
    let labels = Tensor::randint(10, [batch], (Kind::Int64, device));
    let attack = TrainingAttack { eps: 8.0 / 255.0, step_size: 2.0 / 255.0, steps: 10 };
    // Every method's CIFAR-10 hyper-parameters.
    let settings = Preset::for_dataset(DatasetKind::Cifar10).methods;
    println!("{arch} input {channels}x{height}x{width}, batch {batch}, device {device:?}, threads {}", tch::get_num_threads());
    println!("{:<8} {:>14} {:>12}", "method", "seconds/step", "images/s");
    let mut seconds = std::collections::BTreeMap::new();
    for name in Method::ALL {
        let student = models::build(&spec, device).expect("student builds");
        let mut method = name.build(10, &settings);
        let mut optimizer = Sgd::new(&student, 0.9, 2e-4);
        let mut best = f64::INFINITY;
        for repeat in 0..=repeats {
            let started = Instant::now();
            let context = StepContext { student: &student, teacher: Some(&teacher), attack };
            let output = method.step(&context, &images, &labels);
            optimizer.step(&output.loss, 0.1);
            let _ = f64::try_from(&output.loss);
            if repeat > 0 {
                best = best.min(started.elapsed().as_secs_f64());
            }
        }
        seconds.insert(name.as_str(), best);
        println!("{:<8} {:>14.3} {:>12.1}", name, best, batch as f64 / best);
    }
    println!("ABSLD / RSLAD per step: {:.3}", seconds["absld"] / seconds["rslad"]);
}
