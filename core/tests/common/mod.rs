//! Helpers shared by the integration tests of `rfb-core`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The project's Python (the virtual environment the set-up script makes), or `RFB_PYTHON`.
pub fn python() -> PathBuf {
    if let Ok(path) = std::env::var("RFB_PYTHON") {
        return PathBuf::from(path);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    assert!(venv.exists(), "no Python environment at {}: run scripts/setup-env.sh (the README's test command does)", venv.display());
    venv
}

/// Runs one of the scripts in `tests/python` and returns its standard output.
pub fn run_python_script(script: &str, args: &[String]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/python").join(script);
    let output = Command::new(python()).arg(&path).args(args).output().expect("cannot start python");
    assert!(output.status.success(), "{script} failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

use rfb_core::data::{self, DatasetKind, Split};
use rfb_core::models::{self, ModelSpec, Network};
use tch::nn::OptimizerConfig;
use tch::{Device, Kind};

/// A digits CNN trained naturally (cross-entropy, Adam) for `epochs` epochs on the digits
/// train split: a real, non-robust model for attack tests (about 97% clean test accuracy
/// after 5 epochs; a few seconds on CPU).
pub fn train_digits_model(arch: &str, epochs: i64, seed: u64) -> Network {
    tch::manual_seed(seed as i64);
    let train = data::load(DatasetKind::Digits, Split::Train, None).expect("digits train split");
    let mut network = models::build(&ModelSpec::new(arch, 10, [1, 8, 8]), Device::Cpu).unwrap();
    let mut optimizer = tch::nn::Adam::default().build(&network.var_store, 3e-3).unwrap();
    for epoch in 0..epochs {
        for (images, labels) in train.shuffled_batches(64, seed * 1000 + epoch as u64) {
            let loss = network.forward_t(&images, true).cross_entropy_for_logits(&labels);
            optimizer.backward_step(&loss);
        }
    }
    network.set_trainable(false);
    network
}

/// Fraction of `images` the model classifies as `labels`.
pub fn accuracy(network: &Network, images: &tch::Tensor, labels: &tch::Tensor) -> f64 {
    tch::no_grad(|| {
        let predictions = network.forward_t(images, false).argmax(-1, false);
        f64::try_from(predictions.eq_tensor(labels).to_kind(Kind::Float).mean(Kind::Float)).unwrap()
    })
}
