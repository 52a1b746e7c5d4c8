//! Every method on CIFAR-format files the test writes itself (tiny: 4 training and 2 test
//! images per class), with its CIFAR recipe (KL scales, Fair-ARD's form, Nesterov, FRL's
//! fine-tuning, CFA's thresholds) and only the cost cut down: the small digits CNN, 2 epochs,
//! 2 attack steps. Also the data each mode trains on: the paper's mode (selection on the test
//! split) trains on every training image, and FRL's and CFA's adaptation reads the validation
//! hold-out whatever the selection split; and the worst-10% selection on 100 classes.

use std::path::{Path, PathBuf};

use rfb_core::checkpoint::{self, Expectation};
use rfb_core::data::{DatasetKind, Split};
use rfb_trainer::presets::{Preset, Recipe, RecipeOptions};
use rfb_trainer::run::{self, RunConfig, TeacherSource};
use tch::Device;

const TRAIN_PER_CLASS: usize = 4;
const TEST_PER_CLASS: usize = 2;

/// A deterministic 32x32x3 image of class `label`: a class-dependent colour and stripe
/// pattern plus pseudo-random noise, so that the classes are learnable.
fn image(label: usize, index: usize) -> Vec<u8> {
    let mut state = (index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ label as u64;
    let mut noise = || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 58) as i64
    };
    let mut pixels = Vec::with_capacity(3072);
    for channel in 0..3usize {
        for row in 0..32usize {
            for column in 0..32usize {
                let stripe = if ((row + column * (label % 3)) / (2 + label % 4)).is_multiple_of(2) { 60 } else { 0 };
                let colour = (40 + 19 * ((label * 7 + channel * 3) % 11)) as i64;
                pixels.push((colour + stripe + noise()).clamp(0, 255) as u8);
            }
        }
    }
    pixels
}

/// CIFAR-10 binary files: `data_batch_1..5.bin` holding `TRAIN_PER_CLASS` images of each
/// class (classes interleaved) and `test_batch.bin` with `TEST_PER_CLASS`.
fn write_cifar10(dir: &Path) {
    let records = |per_class: usize, offset: usize| -> Vec<Vec<u8>> {
        (0..per_class * 10)
            .map(|i| {
                let label = i % 10;
                let mut record = vec![label as u8];
                record.extend(image(label, offset + i));
                record
            })
            .collect()
    };
    let train = records(TRAIN_PER_CLASS, 0);
    let per_file = train.len() / 5;
    for (b, chunk) in train.chunks(per_file).enumerate() {
        std::fs::write(dir.join(format!("data_batch_{}.bin", b + 1)), chunk.concat()).unwrap();
    }
    std::fs::write(dir.join("test_batch.bin"), records(TEST_PER_CLASS, 10_000).concat()).unwrap();
}

/// CIFAR-100 binary files (coarse label, fine label, pixels): 2 training images of each of the
/// 100 classes (one of them held out for validation) and 1 test image each.
fn write_cifar100(dir: &Path) {
    let records = |per_class: usize, offset: usize| -> Vec<u8> {
        (0..per_class * 100)
            .flat_map(|i| {
                let label = i % 100;
                let mut record = vec![(label / 5) as u8, label as u8];
                record.extend(image(label, offset + i));
                record
            })
            .collect()
    };
    std::fs::write(dir.join("train.bin"), records(2, 0)).unwrap();
    std::fs::write(dir.join("test.bin"), records(1, 10_000)).unwrap();
}

/// The method's CIFAR recipe with only the cost cut: small networks, 2 epochs (the drop
/// after the first, evaluation after each), 2 attack and selection steps.
fn cheap(method: &str, kind: DatasetKind) -> Preset {
    let mut preset = Recipe::new(method.parse().unwrap(), kind, &RecipeOptions::default()).preset;
    preset.architecture = "digits-cnn".into();
    preset.teacher_architecture = "digits-cnn-wide".into();
    preset.epochs = 2;
    preset.lr_milestones = vec![1];
    preset.batch_size = 16;
    preset.eval_every = 1;
    preset.checkpoint_every = 0;
    preset.attack.steps = 2;
    preset.selection_pgd_steps = 2;
    preset
}

fn config(method: &str, kind: DatasetKind, data: &Path, out: PathBuf, preset: Preset) -> RunConfig {
    RunConfig {
        method: method.parse().unwrap(),
        dataset: kind,
        data_dir: Some(data.to_path_buf()),
        teacher: None,
        init: None,
        seed: 4,
        out,
        preset,
        select_on: Split::Validation,
        device: Device::Cpu,
        resume: false,
        progress: false,
        stop_after: None,
        stop_after_batches: None,
    }
}

/// One libtorch thread: the test processes share two cores with each other, and libtorch's
/// OpenMP workers spin while they wait, so on an oversubscribed machine two threads per test
/// run several times slower than one (measured: 10 s against 2 s for the paper-mode test).
fn one_thread() {
    tch::set_num_threads(1);
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

fn log_lines(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("log.jsonl")).unwrap().lines().map(|line| serde_json::from_str(line).unwrap()).collect()
}

#[test]
fn every_method_trains_selects_and_writes_its_checkpoint_on_cifar_format_files() {
    one_thread();
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("cifar-10-batches-bin");
    std::fs::create_dir_all(&data).unwrap();
    write_cifar10(&data);
    let kind = DatasetKind::Cifar10;
    // The teacher of the distillation methods: a TRADES run of the wider network.
    let teacher = root.path().join("teacher");
    let mut preset = cheap("trades", kind);
    preset.architecture = "digits-cnn-wide".into();
    run::run(&config("trades", kind, root.path(), teacher.clone(), preset)).unwrap();

    for method in rfb_trainer::methods::Method::ALL.map(|m| m.as_str()) {
        let out = root.path().join(method);
        let preset = cheap(method, kind);
        let mut run_config = config(method, kind, root.path(), out.clone(), preset.clone());
        run_config.teacher = Some(TeacherSource { path: teacher.join("best"), architecture: "digits-cnn-wide".into() });
        if method == "frl" {
            // FRL fine-tunes a robust model: without one it refuses to start.
            let error = run::run(&run_config).unwrap_err().to_string();
            assert!(error.contains("--init"), "{error}");
            run_config.init = Some(root.path().join("trades").join("best"));
        }
        let summary = run::run(&run_config).unwrap_or_else(|e| panic!("{method}: {e}"));
        assert_eq!(summary.epochs_done, 2, "{method}");
        assert!(summary.best_epoch.is_some(), "{method}");
        for checkpoint_dir in ["best", "last"] {
            let (_, manifest) = checkpoint::load(&out.join(checkpoint_dir), Device::Cpu, &Expectation::default())
                .unwrap_or_else(|e| panic!("{method}: {e}"));
            assert_eq!((manifest.method.as_str(), manifest.dataset.as_str()), (method, "cifar10"));
        }
        let (_, best) = checkpoint::load(&out.join("best"), Device::Cpu, &Expectation::default()).unwrap();
        let selection = best.selection.unwrap();
        assert_eq!(selection.rule, "max avg + worst class PGD-2 accuracy on val", "{method}");
        // The recipe the run followed is recorded, with only its own hyper-parameters.
        let record = read_json(&out.join("run.json"));
        assert_eq!(record["preset"]["nesterov"], serde_json::json!(method == "fair-ard"), "{method}");
        assert_eq!(record["preset"]["weight_decay"], serde_json::json!(preset.weight_decay), "{method}");
        // Selection on the validation hold-out: 3 of each class's 4 images train.
        assert_eq!(record["train_examples"], 30, "{method}");
        let lines = log_lines(&out);
        assert_eq!(lines.len(), 2, "{method}");
        for line in &lines {
            assert!(line["loss"].as_f64().unwrap().is_finite(), "{method}");
            assert_eq!(line["evaluation"]["pgd_class_accuracy"].as_array().unwrap().len(), 10, "{method}");
        }
    }
    // The recipes' own settings reached the methods.
    let manifest = |method: &str| checkpoint::load(&root.path().join(method).join("last"), Device::Cpu, &Expectation::default()).unwrap().1;
    let hyperparameters = |method: &str| manifest(method).hyperparameters["method"].clone();
    assert_eq!(hyperparameters("absld")["kl_scale"], 0.1);
    assert_eq!(hyperparameters("fair-ard")["variant"], "Fair-ARD");
    assert_eq!(hyperparameters("fair-ard")["temperature"], 30.0);
    assert_eq!(hyperparameters("ard")["kl_scale"], 0.1);
    assert_eq!(hyperparameters("cfa")["average_threshold"], 0.2);
}

#[test]
fn the_papers_mode_trains_on_every_image_and_adaptation_never_reads_the_test_split() {
    one_thread();
    let root = tempfile::tempdir().unwrap();
    write_cifar10(root.path());
    let kind = DatasetKind::Cifar10;
    // Paper mode: selection on the test split, training on all 40 training images.
    let natural = root.path().join("natural-test");
    let mut paper = config("natural", kind, root.path(), natural.clone(), cheap("natural", kind));
    paper.select_on = Split::Test;
    run::run(&paper).unwrap();
    let record = read_json(&natural.join("run.json"));
    assert_eq!((record["train_examples"].as_i64(), record["train_splits"].as_str()), (Some(40), Some("train+val")));
    let (_, best) = checkpoint::load(&natural.join("best"), Device::Cpu, &Expectation::default()).unwrap();
    assert!(best.selection.unwrap().rule.ends_with("on test"));

    // FRL fine-tunes the natural run; selected on the validation split or on the test split,
    // its multipliers move the same way (they come from the validation hold-out) and the
    // weights are the same; only what is selected and evaluated for selection differs.
    let mut runs = Vec::new();
    for select_on in [Split::Validation, Split::Test] {
        let out = root.path().join(format!("frl-{}", select_on.as_str()));
        let mut frl = config("frl", kind, root.path(), out.clone(), cheap("frl", kind));
        frl.init = Some(natural.join("last"));
        frl.select_on = select_on;
        run::run(&frl).unwrap();
        let record = read_json(&out.join("run.json"));
        assert_eq!(record["train_examples"], 30, "FRL keeps the hold-out out of training");
        assert_eq!(record["adaptation_split"], "val");
        runs.push(out);
    }
    let (validation, test) = (log_lines(&runs[0]), log_lines(&runs[1]));
    for (a, b) in validation.iter().zip(&test) {
        assert_eq!(a["method_state"], b["method_state"]);
        assert_eq!(a["loss"], b["loss"]);
        assert_eq!(a["evaluation"]["split"], "val");
        assert_eq!(b["evaluation"]["split"], "test");
    }
    let margin: Vec<f64> = serde_json::from_value(validation[0]["method_state"]["margin"].clone()).unwrap();
    assert!(margin.iter().any(|m| m.abs() > 1e-12), "the multipliers moved: {margin:?}");
    let weights = |dir: &Path| {
        let (network, _) = checkpoint::load(&dir.join("last"), Device::Cpu, &Expectation::default()).unwrap();
        network.var_store.variables()["conv1.weight"].copy()
    };
    assert!(weights(&runs[0]).equal(&weights(&runs[1])));
}

#[test]
fn on_cifar_100_selection_scores_the_worst_ten_percent() {
    one_thread();
    let root = tempfile::tempdir().unwrap();
    write_cifar100(root.path());
    let kind = DatasetKind::Cifar100;
    let out = root.path().join("natural");
    let mut preset = cheap("natural", kind);
    preset.batch_size = 64;
    run::run(&config("natural", kind, root.path(), out.clone(), preset)).unwrap();
    let (_, best) = checkpoint::load(&out.join("best"), Device::Cpu, &Expectation::default()).unwrap();
    let selection = best.selection.unwrap();
    assert_eq!(selection.rule, "max avg + worst 10% PGD-2 accuracy on val");
    // The score is the class mean plus the mean of the 10 lowest of the 100 class accuracies.
    let lines = log_lines(&out);
    let evaluation = &lines[best.epoch.unwrap() as usize]["evaluation"];
    let mut accuracy: Vec<f64> = serde_json::from_value(evaluation["pgd_class_accuracy"].clone()).unwrap();
    assert_eq!(accuracy.len(), 100);
    let average = accuracy.iter().sum::<f64>() / 100.0;
    accuracy.sort_by(f64::total_cmp);
    let worst_tenth = accuracy[..10].iter().sum::<f64>() / 10.0;
    assert!((evaluation["pgd_worst_accuracy"].as_f64().unwrap() - worst_tenth).abs() < 1e-9);
    assert!((selection.value.unwrap() - (average + worst_tenth)).abs() < 1e-9);
    assert_eq!(read_json(&out.join("run.json"))["train_examples"], 100);
}
