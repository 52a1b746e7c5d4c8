//! The clients users install, against the real `evaluator serve --allow-uploads`:
//!
//! * the Python package `python/rfb-client`, pip-installed (no network: `--no-deps
//!   --no-build-isolation --no-index` into a temporary `--target`) from a copy of its directory:
//!   its offline tests (the checked-in stubs equal freshly generated ones, results parsed from
//!   hand-made messages, a fake evaluator), then `tests/test_against_server.py`: the one-call
//!   `benchmark` on an nn.Module, a state dict file sent from Python giving per attack and per
//!   class the counts of the same file imported with `evaluator import` and run by `evaluator
//!   eval`, and a ~45 MB ResNet-18 CIFAR-10 state dict sent in chunks, timed, described,
//!   evaluated and deleted;
//! * the Node.js example `examples/node-client`, `npm ci` in a copy of it, sending the same file
//!   and evaluating it: the same counts again.
//!
//! The server runs with --no-cache, so that every count is computed, and with one libtorch
//! thread like the CLI, so that both compute alike. Set RFB_SKIP_NODE=1 to leave out the Node
//! part where Node.js or the npm registry (or its cache) is missing.

mod common;
use common::python;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use common::{evaluator_cli, models_dir, trained_run, Server};

const ATTACKS: &str = "clean,fgsm,pgd-5";
const EPS: &str = "0.1";
const PER_CLASS: &str = "3";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn ok(what: &str, output: Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{what} failed ({}):\n{stdout}\n{}", output.status, String::from_utf8_lossy(&output.stderr));
    stdout
}

/// Copies a directory tree, leaving out build outputs.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if ["build", "node_modules", "__pycache__"].contains(&name.as_ref()) || name.ends_with(".egg-info") {
            continue;
        }
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// `{attack name: correct per class}` of an `evaluator eval --json` document or of the Node
/// client's result (both list results with `classes[].correct`).
fn counts(results: &serde_json::Value, name_key: &str) -> Vec<(String, Vec<i64>)> {
    results
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let correct = r["classes"].as_array().unwrap().iter().map(|c| c["correct"].as_i64().unwrap()).collect();
            (r[name_key].as_str().unwrap().to_string(), correct)
        })
        .collect()
}

#[test]
fn python_package_and_node_client_send_evaluate_and_agree_with_the_cli() {
    let started = Instant::now();
    let work = tempfile::tempdir().unwrap();
    let python = python();
    assert!(python.exists(), "no Python at {} (run scripts/setup-env.sh or set RFB_PYTHON)", python.display());

    // A digits-cnn state dict as a model owner saves it: the trained checkpoint's weights in the
    // PyTorch reference definition. Imported with the CLI and evaluated there: the reference.
    let checkpoint = trained_run().join("best");
    let models = models_dir();
    let exported = work.path().join("exported");
    ok(
        "torch_files.py export",
        Command::new(&python)
            .arg(workspace().join("tests/python/torch_files.py"))
            .args(["export", checkpoint.to_str().unwrap(), "digits-cnn", exported.to_str().unwrap()])
            .output()
            .unwrap(),
    );
    let model_file = exported.join("zip.pt");
    let models_arg = models.path().to_str().unwrap();
    ok(
        "evaluator import",
        evaluator_cli(&[
            "import",
            "--from",
            model_file.to_str().unwrap(),
            "--out",
            models.path().join("cli/digits").to_str().unwrap(),
            "--arch",
            "digits-cnn",
            "--dataset",
            "digits",
        ]),
    );
    let cli_json = work.path().join("cli.json");
    ok(
        "evaluator eval",
        evaluator_cli(&[
            "eval",
            "--models-dir",
            models_arg,
            "--model",
            "cli/digits",
            "--device",
            "cpu",
            "--no-cache",
            "--quiet",
            "--per-class",
            PER_CLASS,
            "--attacks",
            ATTACKS,
            "--eps",
            EPS,
            "--json",
            cli_json.to_str().unwrap(),
        ]),
    );
    let cli: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cli_json).unwrap()).unwrap();
    let reference = counts(&cli["results"], "attack_name");
    assert_eq!(reference.iter().map(|(name, _)| name.as_str()).collect::<Vec<_>>(), ["Clean", "FGSM", "PGD-5"]);
    eprintln!("reference (evaluator import + eval): {reference:?} [{:.0} s]", started.elapsed().as_secs_f64());

    // CIFAR-10 files for the ResNet-18 (3 test images per class).
    let (_, data_dir) = common::cifar_fixture(&work.path().join("cifar"), 1);
    let server = Server::start_logging_to(
        models.path(),
        &["--allow-uploads", "--no-cache", "--data-dir", data_dir.to_str().unwrap()],
        &work.path().join("server.log"),
        &[("OMP_NUM_THREADS", "1")],
    );

    // The Python package, installed as a user would, without the network.
    let package = work.path().join("rfb-client");
    copy_tree(&workspace().join("python/rfb-client"), &package);
    let site = work.path().join("site");
    let pip_started = Instant::now();
    ok(
        "pip install",
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-deps",
                "--no-build-isolation",
                "--no-index",
                "--disable-pip-version-check",
                "--target",
            ])
            .arg(&site)
            .arg(&package)
            .output()
            .unwrap(),
    );
    assert!(site.join("rfb_client/_generated/evaluator_pb2_grpc.py").exists());
    assert!(!site.join("rfb").exists(), "no top-level rfb package is installed");
    eprintln!("pip install: {:.1} s", pip_started.elapsed().as_secs_f64());
    let python_with_package = || {
        let mut command = Command::new(&python);
        command.env("PYTHONPATH", &site).env("OMP_NUM_THREADS", "1").current_dir(work.path());
        command
    };

    let offline = python_with_package().arg(workspace().join("python/rfb-client/tests/test_offline.py")).output().unwrap();
    assert!(offline.status.success(), "test_offline.py:\n{}", String::from_utf8_lossy(&offline.stderr));

    let against = ok(
        "test_against_server.py",
        python_with_package()
            .arg(workspace().join("python/rfb-client/tests/test_against_server.py"))
            .args(["--address", &server.address, "--checkpoint", checkpoint.to_str().unwrap()])
            .args(["--model-file", model_file.to_str().unwrap(), "--cli-json", cli_json.to_str().unwrap()])
            .args(["--attacks", ATTACKS, "--eps", EPS, "--per-class", PER_CLASS, "--resnet-dir", work.path().to_str().unwrap()])
            .output()
            .unwrap(),
    );
    let summary: serde_json::Value = serde_json::from_str(against.lines().last().unwrap()).unwrap();
    eprintln!("test_against_server.py: {}", serde_json::to_string_pretty(&summary).unwrap());
    assert!(
        summary["rfb_client"].as_str().unwrap().starts_with(site.to_str().unwrap()),
        "the installed package was tested: {}",
        summary["rfb_client"]
    );
    eprintln!(
        "ResNet-18 ({} bytes): upload {} s, evaluation (clean, PGD-5, 2 per class) {} s",
        summary["resnet18_bytes"], summary["resnet18_upload_seconds"], summary["resnet18_evaluate_seconds"]
    );

    // The Node.js example, from a copy of its directory, as its README says.
    if std::env::var_os("RFB_SKIP_NODE").is_some() {
        eprintln!("RFB_SKIP_NODE is set: the Node.js client was not run");
    } else {
        let node_dir = work.path().join("node-client");
        copy_tree(&workspace().join("examples/node-client"), &node_dir);
        let npm_started = Instant::now();
        ok(
            "npm ci (set RFB_SKIP_NODE=1 where Node.js or the npm registry is missing)",
            Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund", "--prefer-offline", "--loglevel=error"])
                .current_dir(&node_dir)
                .output()
                .expect("run npm (set RFB_SKIP_NODE=1 where Node.js is missing)"),
        );
        eprintln!("npm ci: {:.1} s", npm_started.elapsed().as_secs_f64());
        let printed = ok(
            "node client.js",
            Command::new("node")
                .arg("client.js")
                .args(["--address", &server.address, "--proto-dir"])
                .arg(workspace().join("proto/proto"))
                .args(["run", model_file.to_str().unwrap(), "--name", "digits-from-node", "--dataset", "digits", "--arch", "digits-cnn"])
                .args(["--attacks", ATTACKS, "--eps", EPS, "--per-class", PER_CLASS])
                .current_dir(&node_dir)
                .output()
                .unwrap(),
        );
        let node: serde_json::Value = serde_json::from_str(printed.lines().last().unwrap()).unwrap();
        let before: Vec<&str> = node["models_before"].as_array().unwrap().iter().map(|m| m.as_str().unwrap()).collect();
        assert!(before.contains(&"cli/digits") && before.contains(&"natural-s0/best"), "{before:?}");
        assert_eq!(node["uploaded"]["name"], "uploads/local/digits-from-node");
        assert_eq!(node["uploaded"]["architecture"], "digits-cnn");
        assert_eq!(counts(&node["result"]["attacks"], "attack"), reference, "the Node client's counts against the CLI's");
        eprintln!("node client: uploaded and evaluated; counts equal the CLI's");

        let node_client = |args: &[&str]| {
            Command::new("node")
                .arg("client.js")
                .args(["--address", &server.address, "--proto-dir"])
                .arg(workspace().join("proto/proto"))
                .args(args)
                .current_dir(&node_dir)
                .output()
                .unwrap()
        };
        // The file's name made safe as the Python client makes it.
        let odd = work.path().join(".my model(1).pt");
        std::fs::copy(&model_file, &odd).unwrap();
        let printed = ok(
            "node client.js send (an odd file name)",
            node_client(&["send", odd.to_str().unwrap(), "--name", "odd-name", "--dataset", "digits", "--arch", "digits-cnn"]),
        );
        let sent: serde_json::Value = serde_json::from_str(printed.lines().last().unwrap()).unwrap();
        let manifest: serde_json::Value = serde_json::from_str(sent["manifest_json"].as_str().unwrap()).unwrap();
        assert_eq!(manifest["source"]["file"], "my_model_1_.pt", "{manifest}");
        // A refusal after the header ends the call at once (the rest is not sent).
        let big = work.path().join("big.pt");
        std::fs::write(&big, vec![7u8; 24 << 20]).unwrap();
        let refused = node_client(&["send", big.to_str().unwrap(), "--name", "a/../b", "--dataset", "digits"]);
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success() && stderr.contains("INVALID_ARGUMENT") && stderr.contains("'..'"), "{stderr}");
        // A flag without its value is an error, not `undefined`.
        let missing = node_client(&["list", "--token"]);
        let stderr = String::from_utf8_lossy(&missing.stderr);
        assert!(!missing.status.success() && stderr.contains("--token needs a value"), "{stderr}");
    }
    let elapsed = started.elapsed().as_secs_f64();
    eprintln!("clients test: {elapsed:.0} s");
}
