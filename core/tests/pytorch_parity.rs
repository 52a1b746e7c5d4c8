//! For every architecture: the PyTorch reference definition (tests/python/reference_models.py)
//! writes a state_dict with random weights, we import it, and both give the same eval-mode
//! logits on the same input. Also checks the reference parameter counts of docs/checkpoints.md.

mod common;

use rfb_core::checkpoint::{self, CheckpointError};
use rfb_core::models::{self, ModelSpec};
use tch::{Device, Tensor};

fn tensor_named(tensors: &[(String, Tensor)], name: &str) -> Tensor {
    tensors.iter().find(|(n, _)| n == name).map(|(_, t)| t.shallow_clone()).unwrap_or_else(|| panic!("no tensor named {name}"))
}

/// Imports the reference weights for `arch` and returns the largest logit difference.
fn parity(arch: &str, classes: i64, shape: [i64; 3], wrap: &str) -> (f64, i64, i64) {
    let dir = tempfile::tempdir().unwrap();
    let mut args: Vec<String> = vec![arch.into(), classes.to_string()];
    args.extend(shape.iter().map(|d| d.to_string()));
    args.push(dir.path().display().to_string());
    args.push(format!("--wrap={wrap}"));
    let reference_count: i64 = common::run_python_script("write_reference.py", &args).trim().parse().unwrap();

    let spec = ModelSpec::new(arch, classes, shape);
    let network = checkpoint::import_pytorch(&dir.path().join("weights.pt"), &spec, Device::Cpu)
        .unwrap_or_else(|e| panic!("{arch}: import failed: {e}"));
    let io = checkpoint::read_pytorch_tensors(&dir.path().join("io.pt")).unwrap();
    let images = tensor_named(&io, "images");
    let expected = tensor_named(&io, "logits");
    let logits = tch::no_grad(|| network.forward_t(&images, false));
    assert_eq!(logits.size(), expected.size());
    let difference = f64::try_from((logits - expected).abs().max()).unwrap();
    (difference, network.parameter_count(), reference_count)
}

fn check(arch: &str, classes: i64, shape: [i64; 3], design_count: Option<i64>) {
    let (difference, ours, reference) = parity(arch, classes, shape, "none");
    println!("{arch}: max |logit difference| = {difference:.3e}, parameters {ours}");
    assert!(difference < 1e-4, "{arch}: logits differ by {difference}");
    assert_eq!(ours, reference, "{arch}: parameter count differs from the PyTorch definition");
    if let Some(count) = design_count {
        assert_eq!(ours, count, "{arch}: parameter count differs from the reference count");
    }
}

#[test]
fn resnet18_matches_pytorch() {
    check("resnet18", 10, [3, 32, 32], Some(11_173_962));
}

#[test]
fn preact_resnet18_matches_pytorch() {
    check("preact-resnet18", 10, [3, 32, 32], None);
}

/// The Tiny-ImageNet teacher (ABSLD paper A.5): checked at the Tiny-ImageNet shape, 200
/// classes. 21,377,800 parameters, counted by hand from the block structure: conv1 1,728;
/// stages of 3, 4, 6, 3 blocks 221,952 + 1,116,032 + 6,821,632 + 13,112,832; final batch norm
/// 1,024; linear 102,600.
#[test]
fn preact_resnet34_on_tiny_imagenet_shape_matches_pytorch() {
    check("preact-resnet34", 200, [3, 64, 64], Some(21_377_800));
}

#[test]
fn mobilenet_v2_matches_pytorch() {
    check("mobilenet-v2", 10, [3, 32, 32], Some(2_296_922));
}

#[test]
fn wrn_34_10_matches_pytorch() {
    check("wrn-34-10", 10, [3, 32, 32], Some(48_262_586));
}

#[test]
fn wrn_70_16_matches_pytorch() {
    check("wrn-70-16", 10, [3, 32, 32], None);
}

#[test]
fn small_wide_resnet_on_cifar100_shape_matches_pytorch() {
    check("wrn-16-2", 100, [3, 32, 32], None);
}

#[test]
fn digits_models_match_pytorch() {
    check("digits-cnn", 10, [1, 8, 8], None);
    check("digits-cnn-wide", 10, [1, 8, 8], None);
}

#[test]
fn resnet18_on_tiny_imagenet_shape_matches_pytorch() {
    check("resnet18", 200, [3, 64, 64], None);
}

#[test]
fn wrapped_and_prefixed_state_dicts_import() {
    for wrap in ["model", "state_dict", "module"] {
        let (difference, _, _) = parity("digits-cnn", 10, [1, 8, 8], wrap);
        assert!(difference < 1e-4, "wrap {wrap}: logits differ by {difference}");
    }
}

#[test]
fn importing_into_the_wrong_architecture_names_the_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let args: Vec<String> =
        ["digits-cnn", "10", "1", "8", "8"].iter().map(|s| s.to_string()).chain([dir.path().display().to_string()]).collect();
    common::run_python_script("write_reference.py", &args);
    let spec = ModelSpec::new("digits-cnn-wide", 10, [1, 8, 8]);
    match checkpoint::import_pytorch(&dir.path().join("weights.pt"), &spec, Device::Cpu) {
        Err(CheckpointError::ShapeMismatch { wrong_shape, .. }) => {
            assert!(wrong_shape.iter().any(|(name, _, _)| name == "conv1.weight"));
        }
        other => panic!("expected a shape mismatch, got {:?}", other.map(|_| ())),
    }
    let spec = ModelSpec::new("resnet18", 10, [1, 8, 8]);
    match checkpoint::import_pytorch(&dir.path().join("weights.pt"), &spec, Device::Cpu) {
        Err(CheckpointError::ShapeMismatch { missing, unexpected, .. }) => {
            assert!(missing.iter().any(|n| n == "layer1.0.conv1.weight"));
            assert!(unexpected.iter().any(|n| n == "conv3.weight"));
        }
        other => panic!("expected missing parameters, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn a_file_that_is_not_a_torch_checkpoint_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weights.pt");
    std::fs::write(&path, b"definitely not a zip").unwrap();
    let spec = ModelSpec::new("digits-cnn", 10, [1, 8, 8]);
    let error = checkpoint::import_pytorch(&path, &spec, Device::Cpu).map(|_| ()).unwrap_err();
    assert!(matches!(error, CheckpointError::BadWeights { .. }), "{error}");
    assert!(error.to_string().contains("weights.pt"));
    let _ = models::ARCHITECTURE_NAMES;
}
