//! The checkpoint directory format: bit-exact round trip and one clear error per kind of damage.

use std::path::Path;

use rfb_core::checkpoint::{self, CheckpointError, CheckpointInfo, Expectation, Selection};
use rfb_core::models::{self, ModelSpec, Network};
use tch::{Device, Kind, Tensor};

fn digits_network(seed: i64) -> Network {
    tch::manual_seed(seed);
    let mut network = models::build(&ModelSpec::new("digits-cnn", 10, [1, 8, 8]), Device::Cpu).unwrap();
    // Non-trivial batch-norm statistics so that they are checked too.
    tch::no_grad(|| {
        for (name, mut variable) in network.var_store.variables() {
            if name.ends_with("running_mean") {
                variable.copy_(&(Tensor::rand_like(&variable) - 0.5));
            }
        }
    });
    network.set_trainable(true);
    network
}

fn info() -> CheckpointInfo {
    CheckpointInfo {
        class_names: (0..10).map(|i| i.to_string()).collect(),
        dataset: "digits".into(),
        method: "natural".into(),
        hyperparameters: serde_json::json!({"lr": 0.1}),
        seed: Some(3),
        epoch: Some(5),
        selection: Some(Selection { rule: "last".into(), value: None }),
    }
}

fn save(dir: &Path, network: &Network) {
    checkpoint::save(dir, network, info()).unwrap();
}

#[test]
fn round_trip_is_bit_exact_and_records_the_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let network = digits_network(1);
    let manifest = checkpoint::save(dir.path(), &network, info()).unwrap();
    assert_eq!(manifest.parameter_count, network.parameter_count());
    assert_eq!(manifest.weights_sha256.len(), 64);

    let (loaded, read_back) = checkpoint::load(dir.path(), Device::Cpu, &Expectation::default()).unwrap();
    assert_eq!(read_back, manifest);
    let original = network.var_store.variables();
    let restored = loaded.var_store.variables();
    assert_eq!(original.len(), restored.len());
    for (name, tensor) in &original {
        let other = &restored[name];
        assert_eq!(tensor.kind(), other.kind(), "{name}");
        assert!(tensor.equal(other), "{name} changed in the round trip");
    }
    let images = Tensor::rand([3, 1, 8, 8], (Kind::Float, Device::Cpu));
    let a = tch::no_grad(|| network.forward_t(&images, false));
    let b = tch::no_grad(|| loaded.forward_t(&images, false));
    assert!(a.equal(&b));

    // Saving the same weights again gives the same bytes, hence the same checksum.
    // Several saves, since a map written in hash order would match by chance now and then.
    for _ in 0..6 {
        let again = checkpoint::save(dir.path(), &network, info()).unwrap();
        assert_eq!(again.weights_sha256, manifest.weights_sha256);
    }
    // No temporary files are left behind.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn missing_directory_and_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    assert!(matches!(checkpoint::load(&missing, Device::Cpu, &Expectation::default()), Err(CheckpointError::NotFound(_))));

    save(dir.path(), &digits_network(2));
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let error = checkpoint::load(dir.path(), Device::Cpu, &Expectation::default()).map(|_| ()).unwrap_err();
    assert!(matches!(error, CheckpointError::MissingFile { .. }), "{error}");
    assert!(error.to_string().contains("model.safetensors"));

    save(dir.path(), &digits_network(2));
    std::fs::remove_file(dir.path().join("manifest.json")).unwrap();
    let error = checkpoint::load(dir.path(), Device::Cpu, &Expectation::default()).map(|_| ()).unwrap_err();
    assert!(error.to_string().contains("manifest.json"), "{error}");
}

#[test]
fn a_manifest_for_another_architecture_or_class_count_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    save(dir.path(), &digits_network(3));
    let expect = Expectation { architecture: Some("resnet18".into()), num_classes: None };
    let error = checkpoint::load(dir.path(), Device::Cpu, &expect).map(|_| ()).unwrap_err();
    assert!(matches!(error, CheckpointError::ArchitectureMismatch { .. }), "{error}");
    let expect = Expectation { architecture: Some("digits-cnn".into()), num_classes: Some(100) };
    let error = checkpoint::load(dir.path(), Device::Cpu, &expect).map(|_| ()).unwrap_err();
    assert!(matches!(error, CheckpointError::ClassCountMismatch { expected: 100, found: 10, .. }), "{error}");
}

#[test]
fn a_changed_weights_file_fails_the_checksum() {
    let dir = tempfile::tempdir().unwrap();
    save(dir.path(), &digits_network(4));
    let path = dir.path().join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    std::fs::write(&path, bytes).unwrap();
    let error = checkpoint::load(dir.path(), Device::Cpu, &Expectation::default()).map(|_| ()).unwrap_err();
    assert!(matches!(error, CheckpointError::ChecksumMismatch { .. }), "{error}");
}

/// Rewrites the manifest so that it describes other weights (as a hand-edited or mixed-up
/// checkpoint would), keeping the checksum consistent so that the shape check is what fires.
fn swap_weights(dir: &Path, other: &Network) {
    let scratch = tempfile::tempdir().unwrap();
    let other_manifest = checkpoint::save(scratch.path(), other, info()).unwrap();
    std::fs::copy(scratch.path().join("model.safetensors"), dir.join("model.safetensors")).unwrap();
    let path = dir.join("manifest.json");
    let mut manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    manifest["weights_sha256"] = serde_json::Value::String(other_manifest.weights_sha256);
    std::fs::write(&path, serde_json::to_vec(&manifest).unwrap()).unwrap();
}

#[test]
fn shape_mismatches_name_the_parameters() {
    let dir = tempfile::tempdir().unwrap();
    save(dir.path(), &digits_network(5));
    let wide = models::build(&ModelSpec::new("digits-cnn-wide", 10, [1, 8, 8]), Device::Cpu).unwrap();
    swap_weights(dir.path(), &wide);
    match checkpoint::load(dir.path(), Device::Cpu, &Expectation::default()) {
        Err(error @ CheckpointError::ShapeMismatch { .. }) => {
            let text = error.to_string();
            assert!(text.contains("bn1.bias (expected [16], found [32])"), "{text}");
            let CheckpointError::ShapeMismatch { wrong_shape, missing, unexpected, .. } = error else { unreachable!() };
            assert!(missing.is_empty() && unexpected.is_empty());
            assert!(wrong_shape.contains(&("conv1.weight".to_string(), vec![16, 1, 3, 3], vec![32, 1, 3, 3])));
            assert_eq!(wrong_shape.len(), 16);
        }
        other => panic!("expected a shape mismatch, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn non_finite_weights_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let network = digits_network(6);
    tch::no_grad(|| {
        let variables = network.var_store.variables();
        let weight = variables["linear.weight"].shallow_clone();
        let _ = weight.get(0).get(0).fill_(f64::NAN);
    });
    save(dir.path(), &network);
    match checkpoint::load(dir.path(), Device::Cpu, &Expectation::default()) {
        Err(CheckpointError::NonFinite { names, .. }) => assert_eq!(names, vec!["linear.weight".to_string()]),
        other => panic!("expected non-finite weights, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn a_garbled_manifest_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    save(dir.path(), &digits_network(7));
    std::fs::write(dir.path().join("manifest.json"), b"{ \"format_version\": 1, ").unwrap();
    let error = checkpoint::load(dir.path(), Device::Cpu, &Expectation::default()).map(|_| ()).unwrap_err();
    assert!(matches!(error, CheckpointError::BadManifest { .. }), "{error}");
}

#[test]
fn unknown_architecture_names_list_the_known_ones() {
    let error = models::build(&ModelSpec::new("resnet-9000", 10, [3, 32, 32]), Device::Cpu).unwrap_err();
    let text = error.to_string();
    assert!(text.contains("resnet-9000") && text.contains("wrn-34-10"), "{text}");
    assert!(models::build(&ModelSpec::new("wrn-33-10", 10, [3, 32, 32]), Device::Cpu).is_err());
    let spec = ModelSpec::new("wrn-16-2", 10, [3, 32, 32]);
    assert_eq!(models::build(&spec, Device::Cpu).unwrap().spec.architecture, "wrn-16-2");
}
