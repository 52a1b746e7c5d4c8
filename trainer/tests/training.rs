//! Short real runs on digits for every method, the direction of ABSLD's temperature update,
//! and resume equivalence after a real kill.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rfb_core::checkpoint::{self, Expectation};
use rfb_core::data::{DatasetKind, Split};
use rfb_trainer::presets::Preset;
use rfb_trainer::run::{self, RunConfig, TeacherSource};
use tch::Device;

fn quick_preset(epochs: i64) -> Preset {
    let mut preset = Preset::for_dataset(DatasetKind::Digits);
    preset.epochs = epochs;
    preset.lr_milestones = vec![epochs - 1];
    preset.eval_every = epochs;
    preset.selection_pgd_steps = 5;
    preset.attack.steps = 3;
    preset
}

fn config(method: &str, out: &Path, preset: Preset, teacher: Option<&Path>, seed: u64) -> RunConfig {
    RunConfig {
        method: method.parse().unwrap(),
        dataset: DatasetKind::Digits,
        data_dir: None,
        teacher: teacher.map(|path| TeacherSource { path: path.to_path_buf(), architecture: "digits-cnn-wide".into() }),
        init: None,
        seed,
        out: out.to_path_buf(),
        preset,
        select_on: Split::Validation,
        device: Device::Cpu,
        resume: false,
        progress: false,
        stop_after: None,
        stop_after_batches: None,
    }
}

/// A TRADES teacher trained once for all tests of this file.
fn teacher() -> &'static Path {
    static TEACHER: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &TEACHER
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let mut preset = quick_preset(3);
            preset.architecture = "digits-cnn-wide".into();
            run::run(&config("trades", dir.path(), preset, None, 7)).unwrap();
            let best = dir.path().join("best");
            (dir, best)
        })
        .1
}

fn log_lines(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("log.jsonl")).unwrap_or_default().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn every_method_trains_and_writes_loadable_checkpoints_and_logs() {
    for method in ["natural", "sat", "trades", "rslad", "absld"] {
        let dir = tempfile::tempdir().unwrap();
        let teacher = matches!(method, "rslad" | "absld").then(teacher);
        let summary = run::run(&config(method, dir.path(), quick_preset(3), teacher, 1)).unwrap();
        assert_eq!(summary.epochs_done, 3, "{method}");
        for checkpoint_dir in ["best", "last"] {
            let (_, manifest) = checkpoint::load(&dir.path().join(checkpoint_dir), Device::Cpu, &Expectation::default())
                .unwrap_or_else(|e| panic!("{method}: {e}"));
            assert_eq!(manifest.method, method);
            assert_eq!(manifest.dataset, "digits");
            assert_eq!(manifest.seed, Some(1));
        }
        let lines = log_lines(dir.path());
        assert_eq!(lines.len(), 3, "{method}");
        let last = &lines[2];
        assert_eq!(last["risk_clean"].as_array().unwrap().len(), 10);
        assert_eq!(last["evaluation"]["pgd_class_accuracy"].as_array().unwrap().len(), 10);
        let adversarial = !last["risk_adversarial"].is_null();
        assert_eq!(adversarial, method != "natural", "{method}");
        assert_eq!(!last["temperatures"].is_null(), method == "absld", "{method}");
        let clean = summary.test_clean.unwrap().overall_accuracy();
        assert!(clean > 30.0, "{method} learned nothing in 3 epochs: {clean}");
    }
}

#[test]
fn every_baseline_trains_and_writes_loadable_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    // FRL fine-tunes a robust model: a short TRADES run of the student's architecture.
    let start = dir.path().join("trades");
    run::run(&config("trades", &start, quick_preset(2), None, 2)).unwrap();
    for method in ["ard", "adaad", "fair-ard", "frl", "bat", "cfa"] {
        let out = dir.path().join(method);
        let teacher = matches!(method, "ard" | "adaad" | "fair-ard").then(teacher);
        let mut run_config = config(method, &out, quick_preset(3), teacher, 1);
        if method == "frl" {
            run_config.init = Some(start.join("best"));
        }
        let summary = run::run(&run_config).unwrap_or_else(|e| panic!("{method}: {e}"));
        assert_eq!(summary.epochs_done, 3, "{method}");
        for checkpoint_dir in ["best", "last"] {
            let (_, manifest) = checkpoint::load(&out.join(checkpoint_dir), Device::Cpu, &Expectation::default())
                .unwrap_or_else(|e| panic!("{method}: {e}"));
            assert_eq!(manifest.method, method);
        }
        let lines = log_lines(&out);
        assert_eq!(lines.len(), 3, "{method}");
        assert!(!lines[1]["risk_adversarial"].is_null(), "{method}");
        let clean = summary.test_clean.unwrap().overall_accuracy();
        // Above chance (10%): ARD's soft labels at t = 30 from the weak test teacher are nearly
        // flat, so three epochs teach it less than the others.
        assert!(clean > 20.0, "{method} learned nothing in 3 epochs: {clean}");
        let state = &lines[0]["method_state"];
        match method {
            // One epoch of attacks has set class weights that differ from one another.
            "fair-ard" => {
                let weights: Vec<f64> = serde_json::from_value(state["weights"].clone()).unwrap();
                assert!(weights.iter().any(|w| (w - weights[0]).abs() > 1e-9), "{weights:?}");
                assert!(weights.iter().all(|w| (5.0 / 6.0 - 1e-12..=2.5 + 1e-12).contains(w)), "{weights:?}");
            }
            // The multipliers moved from zero after the first epoch's validation.
            "frl" => {
                let margin: Vec<f64> = serde_json::from_value(state["margin"].clone()).unwrap();
                assert!(margin.iter().any(|m| m.abs() > 1e-9), "{margin:?}");
            }
            // The previous epoch's class-wise train robust accuracy is recorded for CCM/CCR.
            "cfa" => {
                let t: Vec<f64> = serde_json::from_value(state["train_robust_accuracy"].clone()).unwrap();
                assert_eq!(t.len(), 10);
                assert!(t.iter().all(|a| (0.0..=1.0).contains(a)), "{t:?}");
            }
            _ => {}
        }
    }
    // `--init` loads the weights: one FRL epoch at learning rate 0 leaves the TRADES
    // convolution weights exactly as they were (only batch-norm statistics move).
    let frozen = dir.path().join("frl-lr0");
    let mut preset = quick_preset(1);
    preset.learning_rate = 0.0;
    let mut run_config = config("frl", &frozen, preset, None, 1);
    run_config.init = Some(start.join("best"));
    run::run(&run_config).unwrap();
    let weights = |path: &Path| {
        let (network, _) = checkpoint::load(path, Device::Cpu, &Expectation::default()).unwrap();
        network.var_store.variables()["conv1.weight"].copy()
    };
    assert!(weights(&frozen.join("last")).equal(&weights(&start.join("best"))));
}

#[test]
fn absld_temperatures_move_as_eq_10_says() {
    // Three epochs, the learning rate dropping after the second: the first update uses beta,
    // the second beta / 10 (the authors' script divides beta before that epoch's update).
    let dir = tempfile::tempdir().unwrap();
    let mut preset = quick_preset(3);
    preset.lr_milestones = vec![2];
    run::run(&config("absld", dir.path(), preset, Some(teacher()), 3)).unwrap();
    let lines = log_lines(dir.path());
    let vector = |line: &serde_json::Value, key: &str| -> Vec<f64> { serde_json::from_value(line[key].clone()).unwrap() };
    let tau = |line: &serde_json::Value, kind: &str| -> Vec<f64> { serde_json::from_value(line["temperatures"][kind].clone()).unwrap() };
    let argmax = |v: &[f64]| (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap();
    let argmin = |v: &[f64]| (0..v.len()).min_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap();
    // After one update from 1 (Eq. 10): the class furthest from the mean risk moves by
    // exactly beta, down if it is hard, up if it is easy; the hardest class gets the lowest
    // temperature, the easiest the highest.
    let first = &lines[0];
    for kind in ["adversarial", "clean"] {
        let risks = vector(first, &format!("risk_{kind}"));
        let tau0 = tau(first, kind);
        let mean = risks.iter().sum::<f64>() / risks.len() as f64;
        let gaps: Vec<f64> = risks.iter().map(|r| (r - mean).abs()).collect();
        let furthest = argmax(&gaps);
        let expected = if risks[furthest] > mean { 0.9 } else { 1.1 };
        assert!((tau0[furthest] - expected).abs() < 1e-9, "{kind}: {tau0:?} for risks {risks:?}");
        assert_eq!(argmin(&tau0), argmax(&risks), "{kind}: {tau0:?} for risks {risks:?}");
        assert_eq!(argmax(&tau0), argmin(&risks), "{kind}: {tau0:?} for risks {risks:?}");
        assert!(tau0[argmax(&risks)] < 1.0 && tau0[argmin(&risks)] > 1.0, "{kind}: {tau0:?}");
    }
    // Second epoch, before the drop: the class furthest from the mean moves by beta / 10.
    let second = &lines[1];
    let risks = vector(second, "risk_adversarial");
    let mean = risks.iter().sum::<f64>() / risks.len() as f64;
    let furthest = argmax(&risks.iter().map(|r| (r - mean).abs()).collect::<Vec<_>>());
    let moved = (tau(second, "adversarial")[furthest] - tau(first, "adversarial")[furthest]).abs();
    assert!((moved - 0.01).abs() < 1e-9, "moved {moved}");
}

fn weights(dir: &Path) -> Vec<(String, tch::Tensor)> {
    let (network, _) = checkpoint::load(dir, Device::Cpu, &Expectation::default()).unwrap();
    let mut variables: Vec<_> = network.var_store.variables().into_iter().collect();
    variables.sort_by(|a, b| a.0.cmp(&b.0));
    variables
}

fn trainer(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_trainer"));
    command.args(args);
    command
}

#[test]
fn resume_after_a_kill_gives_identical_weights() {
    let teacher = teacher().display().to_string();
    let common = |out: &str| -> Vec<String> {
        [
            "train",
            "--method",
            "absld",
            "--dataset",
            "digits",
            "--teacher",
            &teacher,
            "--seed",
            "5",
            "--epochs",
            "3",
            "--eval-every",
            "3",
            "--attack-steps",
            "3",
            "--device",
            "cpu",
            "--quiet",
            "--out",
            out,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let dir = tempfile::tempdir().unwrap();
    let straight = dir.path().join("straight").display().to_string();
    let args = common(&straight);
    let status = trainer(&args.iter().map(String::as_str).collect::<Vec<_>>()).status().unwrap();
    assert!(status.success());

    // Kill a second run for real once it has finished at least one epoch, then resume it.
    let killed = dir.path().join("killed");
    let killed_arg = killed.display().to_string();
    let args = common(&killed_arg);
    let mut child = trainer(&args.iter().map(String::as_str).collect::<Vec<_>>()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    while log_lines(&killed).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let done_before_kill = log_lines(&killed).len();
    assert!(done_before_kill >= 1);
    let mut args = common(&killed_arg);
    args.push("--resume".into());
    let output = trainer(&args.iter().map(String::as_str).collect::<Vec<_>>()).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(log_lines(&killed).len(), 3);

    let a = weights(&Path::new(&straight).join("last"));
    let b = weights(&killed.join("last"));
    assert_eq!(a.len(), b.len());
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        assert!(x.equal(y), "{name} differs after resume (killed after {done_before_kill} epochs)");
    }
    // Same temperatures in the logs, epoch by epoch.
    let straight_log = log_lines(Path::new(&straight));
    let killed_log = log_lines(&killed);
    for (x, y) in straight_log.iter().zip(&killed_log) {
        assert_eq!(x["temperatures"], y["temperatures"]);
        assert_eq!(x["loss"], y["loss"]);
    }
}

#[test]
fn a_log_gets_epoch_lines_and_plain_progress_lines() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run").display().to_string();
    let args = [
        "train",
        "--method",
        "natural",
        "--dataset",
        "digits",
        "--seed",
        "3",
        "--epochs",
        "2",
        "--eval-every",
        "1",
        "--attack-steps",
        "1",
        "--device",
        "cpu",
        "--out",
        &out,
    ];
    // stderr is a pipe here, as in a log: no bar, plain lines.
    let output = trainer(&args).env_remove("RFB_PROGRESS").env("RFB_PROGRESS_SECONDS", "0.05").output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    for epoch in 1..=2 {
        assert!(stderr.lines().any(|l| l.starts_with(&format!("natural seed 3, epoch {epoch:>3}: loss "))), "epoch {epoch}: {stderr}");
    }
    let done = stderr.lines().find(|l| l.starts_with("natural seed 3: done, ")).unwrap_or_else(|| panic!("{stderr}"));
    assert!(done.contains(" batches, epoch 2/2 loss ") && done.contains(", in "), "{done}");
    assert!(!stderr.contains('\r') && !stderr.contains('\x1b'), "no bar redrawing in a log: {stderr:?}");

    // --quiet: none of it.
    let quiet_out = dir.path().join("quiet").display().to_string();
    let mut quiet_args: Vec<&str> = args.to_vec();
    *quiet_args.last_mut().unwrap() = &quiet_out;
    quiet_args.push("--quiet");
    let output = trainer(&quiet_args).output().unwrap();
    assert!(output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("epoch") && !stderr.contains("natural seed 3"), "{stderr}");
}

#[test]
fn a_run_directory_is_not_overwritten_without_resume() {
    let dir = tempfile::tempdir().unwrap();
    run::run(&config("natural", dir.path(), quick_preset(1), None, 1)).unwrap();
    let error = run::run(&config("natural", dir.path(), quick_preset(1), None, 1)).unwrap_err();
    assert!(error.to_string().contains("--resume"), "{error}");
}

#[test]
fn distillation_without_a_teacher_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let error = run::run(&config("absld", dir.path(), quick_preset(1), None, 1)).unwrap_err();
    assert!(error.to_string().contains("--teacher"), "{error}");
    let error = "fancy".parse::<rfb_trainer::methods::Method>().unwrap_err();
    assert!(error.to_string().contains("unknown method"), "{error}");
}

#[test]
fn same_seed_same_weights_on_cpu() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    run::run(&config("sat", a.path(), quick_preset(1), None, 9)).unwrap();
    run::run(&config("sat", b.path(), quick_preset(1), None, 9)).unwrap();
    for ((name, x), (_, y)) in weights(&a.path().join("last")).iter().zip(&weights(&b.path().join("last"))) {
        assert!(x.equal(y), "{name} differs between two runs with the same seed");
    }
}

#[test]
fn the_preset_command_prints_each_recipe_with_the_source_of_every_value() {
    let print = |args: &[&str]| -> serde_json::Value {
        let mut all = vec!["preset"];
        all.extend_from_slice(args);
        let output = trainer(&all).output().unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        serde_json::from_slice(&output.stdout).unwrap()
    };
    let every_value_sourced = |printed: &serde_json::Value| {
        let settings = printed["settings"].as_object().unwrap();
        assert!(settings.len() > 15);
        for (path, entry) in settings {
            let source = entry["source"].as_str().unwrap_or_default();
            assert!(!source.trim().is_empty(), "{path} has no source");
        }
    };
    let cfa = print(&["--method", "cfa", "--dataset", "cifar100"]);
    every_value_sourced(&cfa);
    let threshold = &cfa["settings"]["methods.cfa.average_threshold"];
    assert_eq!(threshold["value"], 0.02);
    assert!(threshold["source"].as_str().unwrap().contains("A.3"));
    assert_eq!(cfa["settings"]["epochs"]["value"], 200);
    assert_eq!(cfa["settings"]["weight_decay"]["value"], 5e-4);
    // Fair-ARD: the paper's form on CIFAR-10 is the ARD one; the other form brings its schedule.
    let fair = print(&["--method", "fair-ard", "--dataset", "cifar10"]);
    every_value_sourced(&fair);
    assert_eq!(fair["settings"]["methods.fair_ard.variant"]["value"], "ard");
    assert_eq!(fair["settings"]["epochs"]["value"], 200);
    let rslad_form = print(&["--method", "fair-ard", "--dataset", "cifar10", "--fair-ard-variant", "rslad"]);
    assert_eq!(rslad_form["settings"]["methods.fair_ard.variant"]["value"], "rslad");
    assert_eq!(rslad_form["settings"]["epochs"]["value"], 300);
    // Tiny-ImageNet: 100 epochs and the PreActResNet-34 teacher.
    let tiny = print(&["--method", "absld", "--dataset", "tiny-imagenet"]);
    every_value_sourced(&tiny);
    assert_eq!(tiny["settings"]["teacher_architecture"]["value"], "preact-resnet34");
    assert_eq!(tiny["settings"]["epochs"]["value"], 100);
    let unknown = trainer(&["preset", "--method", "fancy", "--dataset", "cifar10"]).output().unwrap();
    assert!(!unknown.status.success());
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(stderr.contains("invalid value 'fancy' for '--method <METHOD>'"), "{stderr}");
    assert!(stderr.contains("possible values: natural, sat, trades, rslad, absld"), "{stderr}");
}

/// A stop on request (SIGTERM/SIGUSR1 in the binary) saves the state after the batch it
/// finished, within the epoch; resuming from there ends with the weights, the log and the
/// method's state of an uninterrupted run. ABSLD (temperatures from the epoch's class-wise
/// sums) and CFA (a weight average and class-wise state) are the methods whose state is most
/// spread over an epoch.
#[test]
fn a_stop_within_an_epoch_resumes_from_that_batch_to_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    for method in ["absld", "cfa"] {
        let teacher = (method == "absld").then(teacher);
        let mut preset = quick_preset(2);
        preset.eval_every = 1;
        let straight = dir.path().join(format!("{method}-straight"));
        run::run(&config(method, &straight, preset.clone(), teacher, 4)).unwrap();

        let stopped = dir.path().join(format!("{method}-stopped"));
        let batches_per_epoch = (rfb_core::data::DIGITS_TRAIN_SIZE as usize).div_ceil(preset.batch_size as usize);
        // 5 batches into the first epoch, then 1 epoch and 7 batches later: both stops fall
        // within an epoch.
        for (stop_after_batches, epochs_done) in [(5, 0), (batches_per_epoch + 2, 1)] {
            let mut stopping = config(method, &stopped, preset.clone(), teacher, 4);
            stopping.resume = true;
            stopping.stop_after_batches = Some(stop_after_batches);
            match run::run(&stopping) {
                Err(run::TrainError::StopRequested { epochs_done: done, batches_done, .. }) => {
                    assert_eq!(done, epochs_done, "{method}");
                    assert!(batches_done > 0, "{method}: stopped within the epoch");
                }
                other => panic!("{method}: expected a stop, got {other:?}"),
            }
            let pointer = std::fs::read_to_string(stopped.join("resume.json")).unwrap();
            assert!(pointer.contains("-b0"), "{method}: the resume state is within the epoch: {pointer}");
        }
        let mut resuming = config(method, &stopped, preset.clone(), teacher, 4);
        resuming.resume = true;
        let summary = run::run(&resuming).unwrap();
        assert_eq!(summary.epochs_done, 2);

        let a = weights(&straight.join("last"));
        let b = weights(&stopped.join("last"));
        assert_eq!(a.len(), b.len());
        for ((name, x), (_, y)) in a.iter().zip(&b) {
            assert!(x.equal(y), "{method}: {name} differs after two stops within epochs");
        }
        let (x, y) = (log_lines(&straight), log_lines(&stopped));
        assert_eq!(x.len(), y.len());
        for (x, y) in x.iter().zip(&y) {
            for key in ["loss", "risk_clean", "risk_adversarial", "method_state", "temperatures", "evaluation"] {
                assert_eq!(x[key], y[key], "{method}: {key} of epoch {}", x["epoch"]);
            }
        }
    }
}
