//! The uncertainty of one evaluation against an independent computation in Python
//! (tests/python/uncertainty_reference.py): Clopper-Pearson intervals against scipy's beta
//! quantiles, and the bootstrap statistics recomputed with numpy from the same resamples, which
//! bench-client exports with every drawn position.

use std::path::{Path, PathBuf};
use std::process::Command;

use rfb_bench_client::results::UncertaintySettings;
use rfb_bench_client::uncertainty;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn python() -> PathBuf {
    match std::env::var_os("RFB_PYTHON") {
        Some(path) => PathBuf::from(path),
        None => workspace().join(".venv/bin/python"),
    }
}

#[test]
fn intervals_and_bootstrap_agree_with_scipy_and_numpy_on_the_same_resamples() {
    let default = UncertaintySettings::default();
    // Every count of 10 points (k = 0 to n) and the corners of 36 points; then a small
    // evaluation with a tie at the lowest, a one-point class and the default settings; then the
    // digits-like 10 classes of 36 points at 90% with another seed.
    let mut correct: Vec<i64> = (0..=10).collect();
    let mut total = vec![10; 11];
    correct.extend([0, 1, 5, 17, 18, 30, 35, 36]);
    total.extend([36; 8]);
    let cases = serde_json::json!({
        "counts of 10 and 36": uncertainty::resamples_json(&correct, &total, &UncertaintySettings { bootstrap_resamples: 300, bootstrap_seed: 1 }, 0.95),
        "tie at the lowest": uncertainty::resamples_json(&[3, 3, 10, 36, 1, 7], &[10, 10, 10, 36, 1, 9], &default, 0.95),
        "digits-like at 90%": uncertainty::resamples_json(
            &[30, 24, 33, 29, 31, 20, 35, 32, 22, 27],
            &[36; 10],
            &UncertaintySettings { bootstrap_resamples: 1000, bootstrap_seed: 42 },
            0.90
        ),
    });
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cases.json");
    std::fs::write(&file, cases.to_string()).unwrap();
    let output = Command::new(python())
        .arg(workspace().join("tests/python/uncertainty_reference.py"))
        .arg(&file)
        .output()
        .expect("running the Python reference (.venv/bin/python or RFB_PYTHON)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "the Python reference disagrees:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(stdout.lines().filter(|l| l.contains("agree")).count(), 3, "{stdout}");
    eprintln!("{stdout}");
}

#[test]
fn the_report_draws_the_same_resamples_again() {
    // A function of the counts and the settings only: the exported resamples give the report's
    // intervals, and a rebuilt report gets the same.
    let settings = UncertaintySettings { bootstrap_resamples: 400, bootstrap_seed: 9 };
    let (correct, total) = ([7i64, 9, 2, 10], [10i64, 10, 10, 10]);
    let counts = uncertainty::resampled_counts(&correct, &total, &settings);
    let direct = uncertainty::bootstrap(&correct, &total, &settings, 0.95);
    assert_eq!(uncertainty::bootstrap_from_counts(&correct, &total, &counts, &settings, 0.95), direct);
    assert_eq!(uncertainty::bootstrap(&correct, &total, &settings, 0.95), direct);
    // Class 2 (2 of 10) is the worst, clearly: it stays so in most resamples; shares add up to 1.
    assert_eq!(direct.worst_class, Some(2));
    assert!(direct.p_worst_is_worst() > 0.9, "{}", direct.p_worst_is_worst());
    assert!((direct.worst_share.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    // Measured values inside their intervals.
    for i in &direct.intervals {
        assert!(i.low <= i.estimate && i.estimate <= i.high, "{i:?}");
    }
}
