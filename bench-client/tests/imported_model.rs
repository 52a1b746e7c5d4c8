//! An imported model is compared with a trained one as if it were one: a TorchScript digits
//! classifier exported by PyTorch (`tests/python/byo_model.py digits-torchscript`) imported
//! with `evaluator import`, a natural model trained by `trainer`, both served by `evaluator
//! serve`, `bench-client list` showing the import's provenance and `bench-client compare
//! --models mine=my-model,natural` making one row of each.
//!
//! Needs `target/debug/trainer` and `target/debug/evaluator` (`cargo build --workspace`, which
//! `scripts/test.sh` runs before the tests) and the project's Python (`RFB_PYTHON` or `.venv`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use rfb_bench_client::results::Results;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn workspace_binary(name: &str) -> PathBuf {
    let mut candidates = vec![workspace().join("target/debug").join(name)];
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        let dir = PathBuf::from(dir);
        let dir = if dir.is_absolute() { dir } else { workspace().join(dir) };
        candidates.insert(0, dir.join("debug").join(name));
    }
    candidates.into_iter().find(|p| p.is_file()).unwrap_or_else(|| {
        panic!("this test needs the `{name}` binary in target/debug: run `cargo build --workspace` first (scripts/test.sh does)")
    })
}

fn python() -> PathBuf {
    match std::env::var_os("RFB_PYTHON") {
        Some(path) => PathBuf::from(path),
        None => workspace().join(".venv/bin/python"),
    }
}

fn succeed(output: Output, what: &str) -> String {
    assert!(
        output.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn an_imported_torchscript_model_is_compared_like_a_trained_one() {
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models");
    std::fs::create_dir_all(&models).unwrap();

    let training = Command::new(workspace_binary("trainer"))
        .args([
            "train",
            "--method",
            "natural",
            "--dataset",
            "digits",
            "--epochs",
            "1",
            "--seed",
            "0",
            "--quiet",
            "--attack-steps",
            "2",
            "--out",
        ])
        .arg(models.join("natural-s0"))
        .output()
        .unwrap();
    succeed(training, "training");
    let exported = tmp.path().join("mine.pt");
    let script = workspace().join("tests/python/byo_model.py");
    succeed(Command::new(python()).arg(script).arg("digits-torchscript").arg(&exported).output().unwrap(), "exporting");
    let imported = Command::new(workspace_binary("evaluator"))
        .args(["import", "--dataset", "digits", "--from"])
        .arg(&exported)
        .arg("--out")
        .arg(models.join("my-model"))
        .output()
        .unwrap();
    succeed(imported, "evaluator import");

    let mut child = Command::new(workspace_binary("evaluator"))
        .args(["serve", "--listen", "127.0.0.1:0", "--device", "cpu", "--models-dir"])
        .arg(&models)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _server = Server(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let address = rx.recv_timeout(Duration::from_secs(180)).expect("the evaluator printed no address").trim().to_string();
    assert!(!address.is_empty(), "the evaluator exited without printing its address");

    let listing = succeed(
        Command::new(env!("CARGO_BIN_EXE_bench-client")).args(["list", "--server", &address]).output().unwrap(),
        "bench-client list",
    );
    let line = listing.lines().position(|l| l.contains("my-model")).expect("the imported model is listed");
    assert!(listing.lines().nth(line).unwrap().contains("torchscript"), "{listing}");
    assert!(listing.lines().nth(line + 1).unwrap().contains("imported from mine.pt (torchscript, sha256 "), "{listing}");

    let out = tmp.path().join("report");
    let compared = Command::new(env!("CARGO_BIN_EXE_bench-client"))
        .args(["compare", "--server", &address, "--models", "mine=my-model,natural", "--attacks", "clean,fgsm,pgd", "--eps", "0.1"])
        .args(["--examples-per-class", "5", "--quiet", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    succeed(compared, "bench-client compare");
    let results = Results::load(&out.join("results.json")).unwrap();
    assert!(results.failures.is_empty(), "{:?}", results.failures);
    assert_eq!(results.models.iter().map(|m| m.label.as_str()).collect::<Vec<_>>(), ["mine", "natural"]);
    let mine = &results.models[0];
    assert_eq!(mine.runs.len(), 1);
    assert_eq!((mine.runs[0].model.as_str(), mine.runs[0].seed), ("my-model", 0));
    for model in &results.models {
        for attack in ["Clean", "FGSM", "PGD-20"] {
            assert_eq!(model.runs[0].attack(attack).unwrap().total, vec![5; 10], "{} {attack}", model.label);
        }
    }
    let table = std::fs::read_to_string(out.join("table.md")).unwrap();
    assert!(table.lines().any(|l| l.starts_with("| mine |")) && table.lines().any(|l| l.starts_with("| natural |")), "{table}");
}
