//! AutoAttack's warnings through `evaluator eval --json`, the path users take: a model built to
//! raise a flag raises it, the same function without the trait does not. The flags that need
//! hand-made classifiers (zero DLR gradients, Square after the gradient attacks) are seen in
//! `core/tests/autoattack.rs`; the targets flag in the evaluator's unit tests.

mod common;
use common::python;

use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// The sanity flags of the one AutoAttack result of `evaluator eval --json` on `model`.
fn autoattack_flags(models: &Path, model: &str) -> Value {
    let json = models.join(format!("{model}.json"));
    let output = common::evaluator_cli(&[
        "eval",
        "--models-dir",
        models.to_str().unwrap(),
        "--model",
        model,
        "--attacks",
        "aa@3",
        "--eps",
        "0.05",
        "--per-class",
        "2",
        "--device",
        "cpu",
        "--no-cache",
        "--quiet",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "evaluator eval {model}: {}", String::from_utf8_lossy(&output.stderr));
    let results: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    results["results"][0]["sanity"].clone()
}

#[test]
fn a_model_that_takes_gradients_in_its_forward_is_flagged_dynamic() {
    let work = tempfile::tempdir().unwrap();
    let files = work.path().join("files");
    let models = work.path().join("models");
    let checkpoint = common::trained_run().join("best");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/python/product_matrix.py");
    let output = Command::new(python())
        .arg(script)
        .args(["dynamic", checkpoint.to_str().unwrap(), "digits-cnn", files.to_str().unwrap()])
        .env("OMP_NUM_THREADS", "1")
        .output()
        .expect("start python");
    assert!(output.status.success(), "product_matrix.py dynamic: {}", String::from_utf8_lossy(&output.stderr));
    for name in ["plain", "dynamic"] {
        let from = files.join(format!("{name}.pt"));
        let output = common::evaluator_cli(&[
            "import",
            "--from",
            from.to_str().unwrap(),
            "--dataset",
            "digits",
            "--out",
            models.join(name).to_str().unwrap(),
        ]);
        assert!(output.status.success(), "import {name}: {}", String::from_utf8_lossy(&output.stderr));
    }
    let plain = autoattack_flags(&models, "plain");
    let dynamic = autoattack_flags(&models, "dynamic");
    assert_eq!(plain["dynamic"], Value::Bool(false), "{plain}");
    assert_eq!(plain["warnings"], serde_json::json!([]), "an ordinary model raises no warning: {plain}");
    assert_eq!(dynamic["dynamic"], Value::Bool(true), "{dynamic}");
    let warnings = dynamic["warnings"].as_array().unwrap();
    assert!(warnings.iter().any(|w| w.as_str().unwrap().contains("dynamic defence")), "{dynamic}");
    // Digits have ten classes: AutoAttack's nine targets are all used.
    assert_eq!((plain["targets_requested"].as_i64(), plain["targets_used"].as_i64()), (Some(9), Some(9)));
}
