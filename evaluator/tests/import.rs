//! Bring your own model (`evaluator import`), end to end with the real binary:
//!
//! * an architecture our registry does not have (a small ConvNeXt, `tests/python/byo_model.py`)
//!   trained in PyTorch on CIFAR-format files the test writes, scripted with TorchScript,
//!   imported with an input normalisation and evaluated by the service: clean and FGSM counts
//!   per class equal PyTorch's on the same points, PGD-20 within 2 points of torchattacks;
//! * a PyTorch state dict of one of our architectures (`digits-cnn`) imported the same way
//!   gives PyTorch's per-class counts, and the same counts as its weights loaded through the
//!   trainer's teacher path (`checkpoint::import_pytorch`);
//! * a state dict saved in PyTorch's legacy format (`_use_new_zipfile_serialization=False`)
//!   imports to the same weights as the zip file of the same weights, and `evaluator eval`
//!   gives both, and the checkpoint they were exported from, the same per-class counts;
//! * every bad input gets a one-line error from the CLI, and the right gRPC status from the
//!   service, which goes on to answer the next good request.
//!
//! PyTorch and the evaluator both run with OMP_NUM_THREADS=1 so that they compute alike.

mod common;
use common::python;

use std::path::Path;
use std::process::{Command, Output};

use common::{correct, events, results, spec, Server};

use rfb_core::attacks::{self, Fgsm, Interrupt};
use rfb_core::checkpoint;
use rfb_core::data::{self, DatasetKind, Split};
use rfb_core::models::{ModelSpec, Normalisation};
use rfb_proto::v1::evaluator_client::EvaluatorClient;
use rfb_proto::v1::{AttackKind, AttackResult, AttackSpec, DescribeModelRequest, EvaluateRequest, ListModelsRequest, Precision};
use sha2::{Digest, Sha256};
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Runs `tests/python/byo_model.py` with `args`; its stdout.
fn byo_model(args: &[&str]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/python/byo_model.py");
    let output = Command::new(python()).arg(script).args(args).env("OMP_NUM_THREADS", "1").output().expect("start python");
    assert!(output.status.success(), "byo_model.py {args:?} failed:\n{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `evaluator ARGS` as a user runs it.
fn evaluator(args: &[&str]) -> Output {
    common::evaluator_cli(args)
}

fn import(from: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["import", "--from", from.to_str().unwrap(), "--out", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    evaluator(&args)
}

fn import_ok(from: &Path, out: &Path, extra: &[&str]) -> String {
    let output = import(from, out, extra);
    assert!(output.status.success(), "import of {} failed: {}", from.display(), String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn sha256_file(path: &Path) -> String {
    Sha256::digest(std::fs::read(path).unwrap()).iter().map(|b| format!("{b:02x}")).collect()
}

/// `evaluator serve` with one libtorch thread, as PyTorch runs here.
fn start_server(models: &Path, extra: &[&str]) -> Server {
    Server::start_logging_to(models, extra, &models.join(".server.log"), &[("OMP_NUM_THREADS", "1")])
}

async fn evaluate(client: &mut EvaluatorClient<Channel>, request: EvaluateRequest) -> Result<Vec<AttackResult>, Status> {
    Ok(results(&events(client, request).await?))
}

fn counts(reference: &serde_json::Value, model: &str, attack: &str) -> Vec<i64> {
    reference[model][attack].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect()
}

fn floats(value: &serde_json::Value) -> Vec<f64> {
    value.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect()
}

fn percent(counts: &[i64], total: i64) -> f64 {
    100.0 * counts.iter().sum::<i64>() as f64 / total as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torchscript_convnext_and_a_state_dict_evaluate_as_in_pytorch() {
    let work = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    byo_model(&["prepare", work.path().to_str().unwrap()]);
    eprintln!("PyTorch: data, training and references in {:.0} s", started.elapsed().as_secs_f64());
    let reference: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(work.path().join("reference.json")).unwrap()).unwrap();
    let eps = reference["eps"].as_f64().unwrap();
    let per_class = reference["per_class"].as_i64().unwrap();
    let (mean, std) = (floats(&reference["mean"]), floats(&reference["std"]));
    let join = |v: &[f64]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(",");
    let (mean_arg, std_arg) = (join(&mean), join(&std));
    let data_dir = work.path().join("data");
    let models = work.path().join("models");

    // Import: the TorchScript module (no --arch) and the state dict (--arch), both normalised.
    let convnext = work.path().join("convnext.pt");
    let printed = import_ok(
        &convnext,
        &models.join("mine"),
        &["--dataset", "cifar10", "--mean", &mean_arg, "--std", &std_arg, "--method", "convnext-adam"],
    );
    assert!(printed.contains("torchscript") && printed.contains("evaluator eval"), "{printed}");
    let state_dict = work.path().join("cnn_state_dict.pt");
    import_ok(&state_dict, &models.join("cnn"), &["--arch", "digits-cnn", "--dataset", "cifar10", "--mean", &mean_arg, "--std", &std_arg]);
    let manifest = checkpoint::read_manifest(&models.join("mine")).unwrap();
    assert_eq!(manifest.model.architecture, "torchscript");
    assert_eq!(manifest.weights_sha256, sha256_file(&convnext), "the cache keys on the file's own sha256");
    assert_eq!(sha256_file(&models.join("mine/model.pt")), sha256_file(&convnext), "the module is kept as it is");
    let source = manifest.source.clone().unwrap();
    assert_eq!((source.file.as_str(), source.format.as_str()), ("convnext.pt", "torchscript"));
    assert_eq!(manifest.class_names[0], "airplane");
    assert_eq!(manifest.model.normalization, Some(Normalisation { mean: mean.clone(), std: std.clone() }));
    let cnn_manifest = checkpoint::read_manifest(&models.join("cnn")).unwrap();
    assert_eq!((cnn_manifest.model.architecture.as_str(), cnn_manifest.method.as_str()), ("digits-cnn", "imported"));
    assert_eq!(cnn_manifest.source.as_ref().unwrap().sha256, sha256_file(&state_dict));

    let mut server = start_server(&models, &["--data-dir", data_dir.to_str().unwrap()]);
    let mut client = server.client().await;

    // Listing and description show imported models with their provenance.
    let listing = client.list_models(ListModelsRequest {}).await.unwrap().into_inner();
    let names: Vec<&str> = listing.models.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["cnn", "mine"], "{:?}", listing.problems);
    let mine = client.describe_model(DescribeModelRequest { model: "mine".into() }).await.unwrap().into_inner();
    assert_eq!((mine.architecture.as_str(), mine.method.as_str(), mine.seed), ("torchscript", "convnext-adam", None));
    assert_eq!(mine.weights_sha256, sha256_file(&convnext));
    let described: serde_json::Value = serde_json::from_str(&mine.manifest_json).unwrap();
    assert_eq!(described["source"]["file"], "convnext.pt");
    assert!(mine.parameter_count > 50_000, "{}", mine.parameter_count);

    // The TorchScript ConvNeXt: clean and FGSM equal PyTorch's per class; PGD-20 near torchattacks.
    let attacks = vec![
        spec(AttackKind::Clean),
        AttackSpec { eps: Some(eps), ..spec(AttackKind::Fgsm) },
        AttackSpec { eps: Some(eps), seed: 0, ..spec(AttackKind::Pgd) },
    ];
    let request = |model: &str, attacks: Vec<AttackSpec>| EvaluateRequest {
        model: model.into(),
        examples_per_class: per_class,
        batch_size: 100,
        attacks,
        ..Default::default()
    };
    let started = std::time::Instant::now();
    let found = evaluate(&mut client, request("mine", attacks.clone())).await.unwrap();
    eprintln!("evaluator: clean, FGSM, PGD-20 on the ConvNeXt in {:.0} s", started.elapsed().as_secs_f64());
    let total = per_class * 10;
    assert_eq!(correct(&found[0]), counts(&reference, "convnext", "clean"), "clean, per class");
    assert_eq!(correct(&found[1]), counts(&reference, "convnext", "fgsm"), "FGSM, per class");
    let ours = percent(&correct(&found[2]), total);
    let theirs = percent(&counts(&reference, "convnext", "pgd20_torchattacks"), total);
    eprintln!(
        "ConvNeXt, eps {eps:.4}: clean {:.1}%, FGSM {:.1}%, PGD-20 ours {ours:.1}% vs torchattacks {theirs:.1}% (per class {:?} vs {:?})",
        percent(&correct(&found[0]), total),
        percent(&correct(&found[1]), total),
        correct(&found[2]),
        counts(&reference, "convnext", "pgd20_torchattacks")
    );
    assert!((ours - theirs).abs() <= 2.0, "PGD-20: {ours}% vs torchattacks {theirs}%");
    assert!(ours < percent(&correct(&found[1]), total), "PGD-20 is stronger than FGSM here");
    assert!(found.iter().all(|r| r.weights_sha256 == sha256_file(&convnext) && !r.cached));

    // The state dict: PyTorch's counts, and the teacher path's.
    let cnn = evaluate(&mut client, request("cnn", attacks[..2].to_vec())).await.unwrap();
    assert_eq!(correct(&cnn[0]), counts(&reference, "cnn", "clean"), "state dict, clean");
    assert_eq!(correct(&cnn[1]), counts(&reference, "cnn", "fgsm"), "state dict, FGSM");
    tch::set_num_threads(1);
    let teacher_spec = ModelSpec {
        normalization: Some(Normalisation { mean: mean.clone(), std: std.clone() }),
        ..ModelSpec::new("digits-cnn", 10, [3, 32, 32])
    };
    let mut teacher = checkpoint::import_pytorch(&state_dict, &teacher_spec, tch::Device::Cpu).unwrap();
    teacher.set_trainable(false);
    let subset = data::load(DatasetKind::Cifar10, Split::Test, Some(&data_dir)).unwrap().class_balanced_subset(per_class).unwrap();
    let teacher_clean = attacks::clean_accuracy(&teacher, &subset, 100).unwrap();
    let teacher_fgsm = attacks::evaluate(&Fgsm { eps }, &teacher, &subset, 100, Interrupt::NEVER, &mut |_| {}).unwrap().counts;
    assert_eq!(teacher_clean.correct, correct(&cnn[0]), "teacher path, clean");
    assert_eq!(teacher_fgsm.correct, correct(&cnn[1]), "teacher path, FGSM");

    // bf16 on the TorchScript module: judged by the fp32 module, so clean is fp32's exactly.
    let bf16 = evaluate(&mut client, EvaluateRequest { precision: Precision::Bf16 as i32, ..request("mine", attacks[..2].to_vec()) })
        .await
        .unwrap();
    assert_eq!(correct(&bf16[0]), correct(&found[0]), "bf16 clean is judged by the fp32 module");
    let (fp32_fgsm, bf16_fgsm) = (percent(&correct(&found[1]), total), percent(&correct(&bf16[1]), total));
    eprintln!("FGSM fp32 {fp32_fgsm:.1}% vs bf16 {bf16_fgsm:.1}%");
    assert!((fp32_fgsm - bf16_fgsm).abs() <= 3.0, "bf16 FGSM {bf16_fgsm}% vs fp32 {fp32_fgsm}%");

    // The cache answers a repeat at once.
    let again = evaluate(&mut client, request("mine", attacks)).await.unwrap();
    assert!(again.iter().all(|r| r.cached));
    assert_eq!(correct(&again[2]), correct(&found[2]));
    assert!(server.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_get_their_errors_from_the_cli_and_the_service() {
    let work = tempfile::tempdir().unwrap();
    let bad = work.path().join("bad");
    byo_model(&["bad", bad.to_str().unwrap()]);
    let file = |name: &str| bad.join(name);
    let models = work.path().join("models");
    std::fs::create_dir_all(&models).unwrap();
    // The tar format of the first PyTorch releases (a tar header: `ustar` at byte 257).
    let mut tar = vec![0u8; 1024];
    tar[..7].copy_from_slice(b"storage");
    tar[257..263].copy_from_slice(b"ustar\0");
    std::fs::write(file("old_tar.pt"), tar).unwrap();

    // The CLI: each bad file gets one line naming its problem, and nothing is written.
    let digits = ["--dataset", "digits"];
    let arch = ["--dataset", "digits", "--arch", "digits-cnn"];
    let cases: Vec<(&str, &[&str], &str)> = vec![
        ("evil.pt", &arch, "refused: the pickle asks for the Python global `posix.system`"),
        ("evil.pt", &digits, "`posix.system`"),
        ("whole_model.pt", &arch, "whole model"),
        ("old_tar.pt", &arch, "neither a PyTorch state dict nor a TorchScript module: it is a torch.save file in the tar format"),
        ("notes.txt", &digits, "neither a PyTorch state dict nor a TorchScript module: it is not a zip archive"),
        ("sd_wide.pt", &arch, "wrong shape: bn1.bias (expected [16], found [32])"),
        ("sd_mixed.pt", &arch, "wrong shape: conv1.weight (expected [16, 1, 3, 3], found [16, 1, 5, 5]); missing: bn3.running_var, linear.weight; unexpected: fc.weight"),
        ("sd_good.pt", &digits, "is a state dict: name its architecture with --arch"),
        ("sd_good.pt", &["--dataset", "digits", "--arch", "torchscript"], "not a TorchScript module"),
        ("sd_good.pt", &["--dataset", "digits", "--arch", "resnet-50"], "unknown architecture 'resnet-50'"),
        ("ts_good.pt", &arch, "is a TorchScript module, which carries its own architecture"),
        ("ts_good.pt", &["--dataset", "mnist"], "mnist"),
        ("ts_good.pt", &["--dataset", "digits", "--mean", "0.5,0.5", "--std", "0.2,0.2"], "2 means and 2 stds for 1 channels"),
        ("ts_good.pt", &["--dataset", "digits", "--class-names", "a,b"], "2 class names given, but digits has 10 classes"),
        ("ts_wrong_classes.pt", &digits, "maps a [2, 1, 8, 8] batch to a [2, 5] tensor"),
        ("ts_tuple.pt", &digits, "returns a tuple of 2 values, not one tensor of logits"),
        ("ts_nan.pt", &digits, "non-finite logits"),
        ("ts_detached.pt", &digits, "gradients do not reach the input"),
        ("ts_rounded.pt", &digits, "input gradient is zero everywhere"),
        ("ts_mixes_batch.pt", &digits, "change with the other examples of its batch"),
        ("ts_fixed_batch.pt", &digits, "forward fails on a [3, 1, 8, 8] batch"),
        ("missing.pt", &digits, "missing.pt is missing"),
    ];
    for (name, args, phrase) in &cases {
        let out = models.join("refused");
        let output = import(&file(name), &out, args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{name} {args:?} was imported");
        assert_eq!(stderr.trim().lines().count(), 1, "{name} {args:?}: one line expected, got:\n{stderr}");
        assert!(stderr.starts_with("Error: ") && stderr.contains(phrase), "{name} {args:?}: {stderr:?} should say {phrase:?}");
        assert!(!out.exists(), "{name}: nothing is written");
    }
    assert!(!bad.join("pwned").exists(), "the malicious pickle never ran");

    // What does import.
    import_ok(&file("ts_good.pt"), &models.join("good"), &digits);
    let fp32_only = import_ok(&file("ts_fp32_only.pt"), &models.join("fp32-only"), &digits);
    assert!(fp32_only.contains("fp32 only") && fp32_only.contains("bf16"), "{fp32_only}");
    import_ok(&file("sd_good.pt"), &models.join("state-dict"), &arch);
    // The same state dict saved in the legacy format imports to the same weights.
    let legacy = work.path().join("legacy-import");
    import_ok(&file("legacy.pt"), &legacy, &arch);
    assert_eq!(
        sha256_file(&legacy.join("model.safetensors")),
        sha256_file(&models.join("state-dict/model.safetensors")),
        "legacy.pt and sd_good.pt hold the same weights"
    );
    let again = import(&file("ts_good.pt"), &models.join("good"), &digits);
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"), "an existing checkpoint is not replaced silently");
    import_ok(&file("ts_good.pt"), &models.join("good"), &["--dataset", "digits", "--force"]);

    // Checkpoints the service must refuse: hand-made TorchScript checkpoints around bad files
    // (checksums right), and a module changed after import.
    let good_manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(models.join("good/manifest.json")).unwrap()).unwrap();
    let hand_made = [
        ("wrong-classes", "ts_wrong_classes.pt", "[2, 5]"),
        ("tuple", "ts_tuple.pt", "tuple"),
        ("nan", "ts_nan.pt", "non-finite"),
        ("detached", "ts_detached.pt", "gradients do not reach the input"),
        ("mixes-batch", "ts_mixes_batch.pt", "other examples of its batch"),
        ("fixed-batch", "ts_fixed_batch.pt", "[3, 1, 8, 8]"),
        ("state-dict-as-module", "sd_good.pt", "cannot load it as a TorchScript module"),
    ];
    for (name, source, _) in &hand_made {
        let dir = models.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(file(source), dir.join("model.pt")).unwrap();
        let mut manifest = good_manifest.clone();
        manifest["weights_sha256"] = serde_json::json!(sha256_file(&file(source)));
        std::fs::write(dir.join("manifest.json"), serde_json::to_vec_pretty(&manifest).unwrap()).unwrap();
    }
    std::fs::create_dir_all(models.join("tampered")).unwrap();
    std::fs::copy(models.join("good/manifest.json"), models.join("tampered/manifest.json")).unwrap();
    std::fs::copy(file("ts_fp32_only.pt"), models.join("tampered/model.pt")).unwrap();

    let mut server = start_server(&models, &[]);
    let mut client = server.client().await;
    let clean = |model: &str, precision: Precision| EvaluateRequest {
        model: model.into(),
        examples_per_class: 2,
        precision: precision as i32,
        attacks: vec![spec(AttackKind::Clean), AttackSpec { eps: Some(0.1), ..spec(AttackKind::Fgsm) }],
        ..Default::default()
    };
    let mut refused: Vec<(String, Precision, Code, String)> = hand_made
        .iter()
        .map(|(name, _, phrase)| (name.to_string(), Precision::Fp32, Code::FailedPrecondition, phrase.to_string()))
        .collect();
    refused.push(("tampered".into(), Precision::Fp32, Code::FailedPrecondition, "sha256 of model.pt".into()));
    refused.push(("fp32-only".into(), Precision::Bf16, Code::FailedPrecondition, "does not run in bf16".into()));
    refused.push(("nope".into(), Precision::Fp32, Code::NotFound, "nope".into()));
    for (model, precision, code, phrase) in refused {
        let status = evaluate(&mut client, clean(&model, precision)).await.expect_err(&model);
        assert_eq!(status.code(), code, "{model}: {status:?}");
        assert!(status.message().contains(&phrase), "{model}: {:?} should say {phrase:?}", status.message());
        // The next good request is answered.
        let good = evaluate(&mut client, clean("good", Precision::Fp32)).await.unwrap();
        assert_eq!(good.len(), 2, "after {model}");
    }
    assert!(server.alive());
    // The fp32-only module evaluates in fp32; the imported state dict in both precisions;
    // the TorchScript module in bf16 too.
    for (model, precision) in [("fp32-only", Precision::Fp32), ("state-dict", Precision::Bf16), ("good", Precision::Bf16)] {
        let results = evaluate(&mut client, clean(model, precision)).await.unwrap();
        assert_eq!(results.iter().map(|r| r.classes.iter().map(|c| c.total).sum::<i64>()).collect::<Vec<_>>(), [20, 20], "{model}");
    }
    // The listing reads every manifest (the problems show when loading, not before).
    let listing = client.list_models(ListModelsRequest {}).await.unwrap().into_inner();
    assert_eq!(listing.models.len(), 3 + hand_made.len() + 1, "{:?}", listing.problems);
    let state_dict = listing.models.iter().find(|m| m.name == "state-dict").unwrap();
    let manifest: serde_json::Value = serde_json::from_str(&state_dict.manifest_json).unwrap();
    assert_eq!(manifest["source"]["format"], "state_dict");
    assert_eq!(manifest["source"]["sha256"], sha256_file(&file("sd_good.pt")).as_str());
}

/// `evaluator eval --json` of `model` under `models`: per attack, its name and per-class
/// correct counts.
fn eval_counts(models: &Path, model: &str, attacks: &str) -> Vec<(String, Vec<i64>)> {
    let json = models.join(format!("{model}.json"));
    let output = evaluator(&[
        "eval",
        "--models-dir",
        models.to_str().unwrap(),
        "--model",
        model,
        "--device",
        "cpu",
        "--no-cache",
        "--quiet",
        "--per-class",
        "3",
        "--attacks",
        attacks,
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "eval {model}: {}", String::from_utf8_lossy(&output.stderr));
    let document: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    document["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let counts = r["classes"].as_array().unwrap().iter().map(|c| c["correct"].as_i64().unwrap()).collect();
            (r["attack_name"].as_str().unwrap().to_string(), counts)
        })
        .collect()
}

#[test]
fn a_legacy_state_dict_evaluates_as_its_zip_twin_and_the_trained_checkpoint() {
    let trained = common::trained_run().join("best");
    let work = tempfile::tempdir().unwrap();
    let models = work.path().join("models");
    common::copy_checkpoint(&trained, &models.join("trained"));
    // The trained weights as a model owner saves them, in both torch.save formats.
    let exported = work.path().join("exported");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/python/torch_files.py");
    let output = Command::new(python())
        .arg(script)
        .args(["export", trained.to_str().unwrap(), "digits-cnn", exported.to_str().unwrap()])
        .output()
        .expect("start python");
    assert!(output.status.success(), "torch_files.py export: {}", String::from_utf8_lossy(&output.stderr));
    let legacy_bytes = std::fs::read(exported.join("legacy.pt")).unwrap();
    assert!(!legacy_bytes.starts_with(b"PK"), "legacy.pt is not a zip archive");
    for (name, file) in [("zip", "zip.pt"), ("legacy", "legacy.pt")] {
        let printed = import_ok(&exported.join(file), &models.join(name), &["--arch", "digits-cnn", "--dataset", "digits"]);
        assert!(printed.contains("state_dict: digits-cnn"), "{printed}");
    }
    assert_eq!(
        sha256_file(&models.join("legacy/model.safetensors")),
        sha256_file(&models.join("zip/model.safetensors")),
        "both formats import to the same weights"
    );
    let attacks = "clean,pgd-5";
    let legacy = eval_counts(&models, "legacy", attacks);
    eprintln!("legacy: {legacy:?}");
    assert_eq!(legacy.len(), 2);
    assert_eq!(legacy.iter().map(|(_, c)| c.len()).collect::<Vec<_>>(), [10, 10]);
    assert_eq!(legacy, eval_counts(&models, "zip", attacks), "legacy against zip");
    assert_eq!(legacy, eval_counts(&models, "trained", attacks), "legacy against the trained checkpoint");
}
