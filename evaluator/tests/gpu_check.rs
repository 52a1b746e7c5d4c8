//! `scripts/gpu-check.sh --small`, the prepared GPU check in its CPU mode (tiny sizes, the CPU
//! as the device), run as the suite runs everything, so that the script a GPU session will run
//! cannot rot: it must write its report with every section computed, and the per-class counts
//! of every attack must agree between its "device" (here the CPU) and the CPU exactly.

mod common;

use std::path::Path;
use std::process::Command;

#[test]
fn the_gpu_check_runs_in_cpu_mode_and_writes_its_report() {
    let evaluator = Path::new(env!("CARGO_BIN_EXE_evaluator"));
    // The trainer binary is built beside the evaluator by the workspace's build (test.sh,
    // `cargo build --bins`); the check trains its models with it as users do.
    let trainer = evaluator.with_file_name("trainer");
    assert!(trainer.exists(), "{} missing: build the binaries first (cargo build --bins)", trainer.display());
    let bin = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(evaluator, bin.path().join("evaluator")).unwrap();
    std::os::unix::fs::symlink(&trainer, bin.path().join("trainer")).unwrap();
    let out = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/gpu-check.sh");
    let run = Command::new("bash")
        .arg(&script)
        .arg(out.path())
        .args(["--small", "--bin"])
        .arg(bin.path())
        .arg("--python")
        .arg(common::python())
        .output()
        .unwrap();
    let report = std::fs::read_to_string(out.path().join("report.md")).unwrap_or_default();
    assert!(
        run.status.success(),
        "gpu-check.sh --small failed:\n{}\n{}\n{report}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(report.contains("failed: 0."), "{report}");
    assert!(!report.contains("**FAILED**"), "{report}");
    assert!(report.contains("ran on: **cpu**"), "{report}");
    // The agreement section compared every attack and every AutoAttack component on both models.
    assert!(report.contains("Agreement: **all within the allowance**"), "{report}");
    for model in ["digits/best", "resnet18"] {
        // AutoAttack's later components run only while points survive; APGD-CE always runs.
        for attack in ["Clean", "FGSM", "PGD-20", "CW-inf-30", "AutoAttack@2", "after APGD-CE"] {
            let row = format!("| {model} | {}", if attack.starts_with("after") { format!("&nbsp;{attack}") } else { attack.to_string() });
            assert!(report.contains(&row), "no row {row}:\n{report}");
        }
    }
    for section in ["3a. PGD-20 speed", "3b. AutoAttack speed", "3c. ABSLD training epoch speed"] {
        assert!(report.contains(section), "{section}:\n{report}");
    }
}
