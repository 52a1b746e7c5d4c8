//! Train -> serve -> compare with the real binaries: two tiny natural digits models ("alpha"
//! and "beta", different learning rates) for two seeds each, served by `evaluator serve` with a
//! bearer token, compared by `bench-client compare`. The table's numbers are checked against
//! the per-class counts in results.json, and those against the evaluator's own metrics.
//!
//! Needs `target/debug/trainer` and `target/debug/evaluator` (`cargo build --workspace`, which
//! `scripts/test.sh` runs before the tests).

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use rfb_bench_client::results::Results;

fn workspace_binary(name: &str) -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let mut candidates = vec![workspace.join("target/debug").join(name)];
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        let dir = PathBuf::from(dir);
        let dir = if dir.is_absolute() { dir } else { workspace.join(dir) };
        candidates.insert(0, dir.join("debug").join(name));
    }
    candidates.into_iter().find(|p| p.is_file()).unwrap_or_else(|| {
        panic!(
            "the end-to-end test needs the `{name}` binary at {}/target/debug/{name}: run `cargo build --workspace` first \
             (scripts/test.sh does)",
            workspace.display()
        )
    })
}

/// Kills the server when the test ends, however it ends.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn train(trainer: &Path, models: &Path, name: &str, seed: u64, lr: &str) -> Child {
    Command::new(trainer)
        .args([
            "train",
            "--method",
            "natural",
            "--dataset",
            "digits",
            "--epochs",
            "2",
            "--seed",
            &seed.to_string(),
            "--lr",
            lr,
            "--quiet",
            "--attack-steps",
            "2",
            "--out",
        ])
        .arg(models.join(format!("{name}-s{seed}")))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start trainer")
}

fn finish(mut child: Child, what: &str) {
    let status = child.wait().unwrap();
    if !status.success() {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        panic!("{what} failed ({status}): {err}");
    }
}

#[test]
fn train_serve_compare() {
    let trainer = workspace_binary("trainer");
    let evaluator = workspace_binary("evaluator");
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models");
    std::fs::create_dir_all(&models).unwrap();

    // Two at a time (the machine has two cores).
    for seed in [0, 1] {
        let a = train(&trainer, &models, "alpha", seed, "0.05");
        let b = train(&trainer, &models, "beta", seed, "0.02");
        finish(a, &format!("training alpha seed {seed}"));
        finish(b, &format!("training beta seed {seed}"));
    }

    let token = tmp.path().join("token");
    std::fs::write(&token, "e2e-secret\n").unwrap();
    let mut child = Command::new(&evaluator)
        .args(["serve", "--listen", "127.0.0.1:0", "--device", "cpu", "--models-dir"])
        .arg(&models)
        .arg("--token-file")
        .arg(&token)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start evaluator");
    let stdout = child.stdout.take().unwrap();
    let server = Server(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let address = rx.recv_timeout(Duration::from_secs(180)).expect("the evaluator printed no address within 3 minutes").trim().to_string();
    assert!(!address.is_empty(), "the evaluator exited without printing its address");

    let out = tmp.path().join("report");
    let output = Command::new(env!("CARGO_BIN_EXE_bench-client"))
        .args([
            "compare",
            "--server",
            &address,
            "--models",
            "alpha,beta",
            "--attacks",
            "clean,fgsm,pgd",
            "--eps",
            "0.1",
            "--examples-per-class",
            "10",
            "--quiet",
        ])
        .arg("--token-file")
        .arg(&token)
        .arg("--models-dir")
        .arg(&models)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    drop(server);
    assert!(
        output.status.success(),
        "compare failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    let results = Results::load(&out.join("results.json")).unwrap();
    assert!(results.failures.is_empty(), "{:?}", results.failures);
    assert_eq!(results.models.iter().map(|m| m.label.as_str()).collect::<Vec<_>>(), ["alpha", "beta"]);
    assert!(!results.servers[0].evaluator_version.is_empty(), "server version recorded");
    let table = std::fs::read_to_string(out.join("table.md")).unwrap();
    for model in &results.models {
        assert_eq!(model.runs.iter().map(|r| r.seed).collect::<Vec<_>>(), [0, 1]);
        assert_eq!(model.class_names.len(), 10);
        let row = table.lines().find(|l| l.starts_with(&format!("| {} |", model.label))).unwrap();
        let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
        assert_eq!(cells[1], "0, 1");
        for (ai, attack) in ["Clean", "FGSM", "PGD-20"].iter().enumerate() {
            let mut per_seed = Vec::new();
            for run in &model.runs {
                assert_eq!(run.model, format!("{}-s{}/best", model.label, run.seed));
                let a = run.attack(attack).unwrap();
                assert_eq!(a.total, vec![10; 10], "10 examples per class");
                let m = common::reference_metrics(&common::accuracies(&a.correct, &a.total));
                // The evaluator's own summary agrees with the counts.
                let server = a.server_metrics.as_ref().expect("server metrics");
                assert!((server["average"] - m.0).abs() < 1e-6 && (server["worst"] - m.1).abs() < 1e-6, "{attack}: {server:?} vs {m:?}");
                per_seed.push(m);
            }
            let avg: Vec<f64> = per_seed.iter().map(|m| m.0).collect();
            let worst: Vec<f64> = per_seed.iter().map(|m| m.1).collect();
            let (am, asd) = common::mean_sd(&avg);
            let (wm, wsd) = common::mean_sd(&worst);
            assert_eq!(cells[2 + 3 * ai], format!("{am:.2} ± {asd:.2}"), "{} {attack} Avg", model.label);
            assert_eq!(cells[3 + 3 * ai], format!("{wm:.2} ± {wsd:.2}"), "{} {attack} Worst", model.label);
            let nsd: Vec<f64> = per_seed.iter().map(|m| m.3).collect();
            if nsd.iter().all(|v| v.is_finite()) {
                let (nm, nsd_sd) = common::mean_sd(&nsd);
                assert_eq!(cells[4 + 3 * ai], format!("{nm:.3} ± {nsd_sd:.3}"), "{} {attack} NSD", model.label);
            }
        }
    }
    for name in ["report.md", "summary.csv", "comparison.csv", "classwise.png", "classwise-pgd-20.png", "metrics.png", "risk-sd.png"] {
        assert!(out.join(name).is_file(), "{name} missing");
    }
    // The training logs next to the checkpoints were found: four runs, two epochs each.
    let csv = std::fs::read_to_string(out.join("risk-sd.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 4 * 2, "{csv}");
}
