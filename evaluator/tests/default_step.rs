//! The default step of PGD and CW-inf follows the radius (eps/4): a fixed 2/255 made PGD-20 at
//! large radii weaker than a single FGSM step. Checked through `evaluator eval --json`, the path
//! users take, on a robustly trained digits model (FGSM leaves many points robust there, so a
//! PGD that cannot cross its ball shows).

mod common;

use std::path::Path;

use serde_json::Value;

/// Per-class correct counts of the attack named `name` in an `evaluator eval --json` file, and
/// its canonical spec.
fn counts_and_spec(results: &Value, name_prefix: &str) -> (Vec<i64>, Value) {
    let result = results["results"]
        .as_array()
        .expect("results array")
        .iter()
        .find(|r| r["attack_name"].as_str().is_some_and(|n| n.starts_with(name_prefix)))
        .unwrap_or_else(|| panic!("no {name_prefix} result in {results}"));
    let counts = result["classes"].as_array().unwrap().iter().map(|c| c["correct"].as_i64().unwrap()).collect();
    (counts, result["attack"].clone())
}

fn evaluate(models: &Path, eps: &str, json: &Path) -> Value {
    let output = common::evaluator_cli(&[
        "eval",
        "--models-dir",
        models.to_str().unwrap(),
        "--model",
        "sat-s0/best",
        "--attacks",
        "fgsm,pgd,cw",
        "--eps",
        eps,
        "--per-class",
        "20",
        "--device",
        "cpu",
        "--no-cache",
        "--quiet",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "evaluator eval at eps {eps}: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&std::fs::read(json).unwrap()).unwrap()
}

#[test]
fn pgd_at_large_radii_is_never_weaker_than_fgsm_and_results_carry_the_step() {
    let run = common::trained_once_by("sat", "sat-digits", "digits-cnn", 6, None);
    let models = tempfile::tempdir().unwrap();
    common::copy_checkpoint(&run.join("best"), &models.path().join("sat-s0/best"));
    for (eps_text, eps) in [("0.1", 0.1), ("32/255", 32.0 / 255.0)] {
        let json = models.path().join("out.json");
        let results = evaluate(models.path(), eps_text, &json);
        let (fgsm, _) = counts_and_spec(&results, "FGSM");
        let (pgd, pgd_spec) = counts_and_spec(&results, "PGD-20");
        let (_, cw_spec) = counts_and_spec(&results, "CW");
        assert!(fgsm.iter().sum::<i64>() > 20, "eps {eps_text}: FGSM leaves points robust on a robust model: {fgsm:?}");
        for (class, (p, f)) in pgd.iter().zip(&fgsm).enumerate() {
            assert!(p <= f, "eps {eps_text}, class {class}: PGD-20 leaves {p} robust, FGSM {f} (PGD {pgd:?}, FGSM {fgsm:?})");
        }
        for (name, spec) in [("PGD-20", &pgd_spec), ("CW-inf", &cw_spec)] {
            let step = spec["step_size"].as_f64().unwrap_or_else(|| panic!("{name} at eps {eps_text}: no step_size in {spec}"));
            assert!((step - eps / 4.0).abs() < 1e-12, "{name} at eps {eps_text}: step {step}, expected eps/4 = {}", eps / 4.0);
        }
    }
}
