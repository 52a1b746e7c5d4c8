//! The product-path matrix: every attack kind of the contract (AutoAttack custom once per
//! component) x every precision x one network of every architecture family in the registry,
//! plus a PyTorch state dict and a TorchScript module brought in with `evaluator import`, each
//! through a real `evaluator serve` over gRPC and through `evaluator eval` — the two ways users
//! run an evaluation. Nothing here is listed by hand: the families come from the registry
//! (`architecture_families`), the precisions from the contract's `Precision` enum and the
//! attacks from its `AttackKind` enum (`every_attack_kind`), so a new attack, precision or
//! architecture joins the matrix without an edit here.
//!
//! The models are natural digits models trained for a few epochs (so that points sit at every
//! distance from the boundary), 2 test images per class, eps 0.05, and 3 iterations of every
//! iterative attack (AutoAttack's kinds as `@3`); AutoAttack standard runs at its full 100
//! iterations and 5000 Square queries once per precision, on the digits-cnn model. Asserts:
//! * every cell succeeds, names its attack and records the precision it ran at;
//! * gRPC and `evaluator eval` give the same per-class counts in every cell (the same engine on
//!   the same batch, one libtorch thread each);
//! * fp32-fast gives fp32's per-class counts, clean exactly (the same network judges) and under
//!   attack within one point per class and one in total: the folded copy computes the same
//!   function up to rounding (about 1e-6 relative), which can flip the sign of a near-zero
//!   gradient component and so move an iterate that sits on the decision boundary to its
//!   other side (in the runs measured so far every count was equal);
//! * bf16 stays close: clean exactly (the fp32 network judges every decision), under attack
//!   within max(3 points, 10% of the points) in total, since a bf16 copy's gradients differ by
//!   about 1e-2 relative and lead the attack along another path.
//!
//! The table of every cell is printed (`--nocapture`) for the record.

mod common;
use common::python;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use common::{correct, events, results, Server};

use rfb_core::models::architecture_families;
use rfb_proto::attacks::{attack_name, every_attack_kind};
use rfb_proto::v1::{AttackSpec, EvaluateRequest, Precision};

const PER_CLASS: i64 = 2;
const EPS: f64 = 0.05;
const ITERATIONS: i64 = 3;
/// Environment of both paths: one libtorch thread, so that the server and `evaluator eval`
/// compute alike whatever else runs beside them.
const ENVIRONMENT: [(&str, &str); 1] = [("OMP_NUM_THREADS", "1")];

fn run_python(args: &[&str]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/python/product_matrix.py");
    let output = Command::new(python()).arg(script).args(args).env("OMP_NUM_THREADS", "1").output().expect("start python");
    assert!(output.status.success(), "product_matrix.py {args:?}: {}", String::from_utf8_lossy(&output.stderr));
}

fn evaluator(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_evaluator"))
        .args(args)
        .envs(ENVIRONMENT)
        .env("RUST_BACKTRACE", "0")
        .env_remove("RUST_LOG")
        .output()
        .expect("start the evaluator")
}

/// The contract's precisions (not UNSPECIFIED, which means fp32) with their command-line names.
fn precisions() -> Vec<(Precision, String)> {
    (1..)
        .map_while(|value| Precision::try_from(value).ok())
        .map(|p| (p, p.as_str_name().trim_start_matches("PRECISION_").to_ascii_lowercase().replace('_', "-")))
        .collect()
}

/// One cell's outcome: per attack, its name and per-class correct counts.
type Counts = Vec<(String, Vec<i64>)>;

fn from_json(path: &Path, precision: Precision) -> Counts {
    let document: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    document["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|result| {
            assert_eq!(result["precision"], precision.as_str_name(), "evaluator eval --json records the precision");
            let counts = result["classes"].as_array().unwrap().iter().map(|c| c["correct"].as_i64().unwrap()).collect();
            (result["attack_name"].as_str().unwrap().to_string(), counts)
        })
        .collect()
}

fn with_eps(spec: &AttackSpec) -> AttackSpec {
    let clean = spec.kind == rfb_proto::v1::AttackKind::Clean as i32;
    AttackSpec { eps: if clean { None } else { Some(EPS) }, ..spec.clone() }
}

/// The attacks of one cell through gRPC and through `evaluator eval`; both must succeed and
/// agree, and every result must record `precision`.
async fn run_cell(
    server: &Server,
    models: &Path,
    model: &str,
    precision: &(Precision, String),
    attacks: &[AttackSpec],
    scratch: &Path,
) -> Counts {
    let mut client = server.client().await;
    let request = EvaluateRequest {
        model: model.into(),
        examples_per_class: PER_CLASS,
        attacks: attacks.iter().map(with_eps).collect(),
        precision: precision.0 as i32,
        ..Default::default()
    };
    let found = match events(&mut client, request).await {
        Ok(events) => results(&events),
        Err(status) => panic!("gRPC, {model} at {}: {status:?}", precision.1),
    };
    assert_eq!(found.len(), attacks.len(), "{model} at {}", precision.1);
    for result in &found {
        assert_eq!(result.precision, precision.0 as i32, "{model}: {} records its precision", result.attack_name);
        assert!(!result.cached, "the server runs with --no-cache");
    }
    let by_grpc: Counts = found.iter().map(|r| (r.attack_name.clone(), correct(r))).collect();

    let names: Vec<String> = attacks.iter().map(|a| attack_name(a).unwrap()).collect();
    let json = scratch.join(format!("{}-{}.json", model.replace('/', "_"), precision.1));
    let output = evaluator(&[
        "eval",
        "--models-dir",
        models.to_str().unwrap(),
        "--model",
        model,
        "--attacks",
        &names.join(","),
        "--eps",
        &EPS.to_string(),
        "--per-class",
        &PER_CLASS.to_string(),
        "--precision",
        &precision.1,
        "--device",
        "cpu",
        "--no-cache",
        "--quiet",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "evaluator eval, {model} at {}: {}", precision.1, String::from_utf8_lossy(&output.stderr));
    let by_cli = from_json(&json, precision.0);
    assert_eq!(by_cli, by_grpc, "{model} at {}: evaluator eval and gRPC give the same counts", precision.1);
    by_grpc
}

fn total(counts: &[i64]) -> i64 {
    counts.iter().sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_attack_at_every_precision_on_every_architecture_through_grpc_and_the_cli() {
    let work = tempfile::tempdir().unwrap();
    let models = work.path().join("models");
    let scratch = work.path().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();

    // One trained network per family of the registry.
    let mut model_names = Vec::new();
    for architecture in architecture_families() {
        let name = architecture.to_string();
        let run = common::trained_once(&format!("matrix-{name}"), &name, 3, Some(0.05));
        common::copy_checkpoint(&run.join("best"), &models.join(&name));
        model_names.push(name);
    }
    // The digits-cnn's weights as a user brings them: a PyTorch state dict and TorchScript.
    let digits = models.join("digits-cnn");
    let exported = work.path().join("exported");
    run_python(&["export", digits.to_str().unwrap(), "digits-cnn", exported.to_str().unwrap()]);
    for (name, file, extra) in
        [("imported-state-dict", "state_dict.pt", vec!["--arch", "digits-cnn"]), ("imported-torchscript", "scripted.pt", vec![])]
    {
        let mut args = vec!["import", "--from"];
        let from = exported.join(file);
        let out = models.join(name);
        args.extend([from.to_str().unwrap(), "--dataset", "digits", "--out", out.to_str().unwrap()]);
        args.extend(extra);
        let output = evaluator(&args);
        assert!(output.status.success(), "import {file}: {}", String::from_utf8_lossy(&output.stderr));
        model_names.push(name.to_string());
    }

    let server = Server::start_logging_to(&models, &["--no-cache"], &work.path().join("server.log"), &ENVIRONMENT);
    let attacks = every_attack_kind(Some(ITERATIONS));
    let precisions = precisions();
    assert_eq!(precisions.len(), 3, "fp32, fp32-fast and bf16 at least");
    let points = PER_CLASS * 10;

    let mut table: BTreeMap<(String, String), Counts> = BTreeMap::new();
    for model in &model_names {
        for precision in &precisions {
            let started = std::time::Instant::now();
            let counts = run_cell(&server, &models, model, precision, &attacks, &scratch).await;
            eprintln!("{model} at {}: both paths in {:.1} s", precision.1, started.elapsed().as_secs_f64());
            table.insert((model.clone(), precision.1.clone()), counts);
        }
    }

    // AutoAttack standard at its full iterations, once per precision.
    let full =
        every_attack_kind(None).into_iter().filter(|a| a.kind == rfb_proto::v1::AttackKind::AutoattackStandard as i32).collect::<Vec<_>>();
    for precision in &precisions {
        let counts = run_cell(&server, &models, "digits-cnn", precision, &full, &scratch).await;
        assert_eq!(counts[0].0, "AutoAttack", "full iterations are plain AutoAttack");
        table.insert(("digits-cnn (full AutoAttack)".into(), precision.1.clone()), counts);
    }

    // The record: path x precision x attack, robust points of PER_CLASS x 10.
    println!("\nmodel | precision | {}", table.values().next().unwrap().iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(" | "));
    for ((model, precision), counts) in &table {
        let cells: Vec<String> = counts.iter().map(|(_, c)| format!("ok {}", total(c))).collect();
        println!("{model} | {precision} | {}", cells.join(" | "));
    }

    // fp32-fast is fp32 up to rounding; bf16 stays close; clean is always the fp32 judge's.
    let mut bf16_differences = Vec::new();
    for ((model, precision), counts) in &table {
        let reference = &table[&(model.clone(), "fp32".to_string())];
        for ((name, found), (reference_name, expected)) in counts.iter().zip(reference) {
            assert_eq!(name, reference_name);
            if name == "Clean" {
                assert_eq!(found, expected, "{model} at {precision}: clean is judged by the fp32 network");
                continue;
            }
            match precision.as_str() {
                "fp32-fast" => {
                    let per_class = found.iter().zip(expected).map(|(a, b)| (a - b).abs()).max().unwrap_or(0);
                    let overall = (total(found) - total(expected)).abs();
                    assert!(per_class <= 1 && overall <= 1, "{model}, {name}: fp32-fast {found:?} against fp32 {expected:?}");
                }
                "bf16" => {
                    let overall = (total(found) - total(expected)).abs();
                    bf16_differences.push(overall);
                    assert!(overall <= 3.max(points / 10), "{model}, {name}: bf16 {found:?} against fp32 {expected:?}");
                }
                _ => {}
            }
        }
    }
    eprintln!("bf16 against fp32, points of difference per cell: {bf16_differences:?}");
    // The imported state dict is the digits-cnn's own weights: the same counts everywhere.
    for precision in &precisions {
        assert_eq!(
            table[&("imported-state-dict".to_string(), precision.1.clone())],
            table[&("digits-cnn".to_string(), precision.1.clone())],
            "a state dict of our architecture evaluates as our checkpoint at {}",
            precision.1
        );
    }
}

/// A failure inside an evaluation — a user's TorchScript module that raises in its forward, or
/// one whose output the attack's own arithmetic refuses — reaches the gRPC client as INTERNAL
/// with a message naming the attack, the model, the precision and libtorch's reason, and
/// `evaluator eval` as a one-line error without a panic; the server answers the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_inside_an_evaluation_is_a_clear_status_and_the_server_goes_on() {
    let work = tempfile::tempdir().unwrap();
    let models = work.path().join("models");
    let files = work.path().join("files");
    run_python(&["failing", files.to_str().unwrap()]);
    for name in ["raises", "narrow"] {
        let from = files.join(format!("{name}.pt"));
        let out = models.join(name);
        let output = evaluator(&["import", "--from", from.to_str().unwrap(), "--dataset", "digits", "--out", out.to_str().unwrap()]);
        assert!(output.status.success(), "both pass the import checks: {}", String::from_utf8_lossy(&output.stderr));
    }
    common::copy_checkpoint(&common::trained_run().join("best"), &models.join("good"));
    let mut server = Server::start_logging_to(&models, &["--no-cache"], &work.path().join("server.log"), &ENVIRONMENT);
    let mut client = server.client().await;
    let pgd = AttackSpec { steps: Some(2), ..common::spec(rfb_proto::v1::AttackKind::Pgd) };
    let clean = common::spec(rfb_proto::v1::AttackKind::Clean);
    let cases = [
        ("raises", clean.clone(), Precision::Fp32, "Clean", "deliberate failure of this module"),
        ("raises", pgd.clone(), Precision::Bf16, "PGD-2", "deliberate failure of this module"),
        ("narrow", pgd.clone(), Precision::Fp32Fast, "PGD-2", "out of bounds"),
    ];
    for (model, attack, precision, attack_label, reason) in cases {
        let request = EvaluateRequest {
            model: model.into(),
            examples_per_class: 2,
            attacks: vec![attack],
            precision: precision as i32,
            ..Default::default()
        };
        let status = events(&mut client, request).await.expect_err("the evaluation fails");
        assert_eq!(status.code(), tonic::Code::Internal, "{status:?}");
        let message = status.message();
        let precision_name = precisions().into_iter().find(|(p, _)| *p == precision).unwrap().1;
        for part in [attack_label, &format!("model {model:?}"), &format!("precision {precision_name}"), reason] {
            assert!(message.contains(part), "{message:?} should name {part:?}");
        }
        assert!(!message.contains("panicked") && !message.contains('\n'), "{message:?}");
        // The next request is answered.
        let next = events(
            &mut client,
            EvaluateRequest { model: "good".into(), examples_per_class: 2, attacks: vec![pgd.clone()], ..Default::default() },
        )
        .await
        .expect("the server goes on");
        assert_eq!(results(&next).len(), 1);
    }
    assert!(server.alive());
    assert!(!server.log().contains("panicked"), "no panic reached the server's log:\n{}", server.log());

    // The command line: a one-line error, exit status 1, no panic.
    let output = evaluator(&[
        "eval",
        "--models-dir",
        models.to_str().unwrap(),
        "--model",
        "narrow",
        "--attacks",
        "fgsm",
        "--per-class",
        "2",
        "--no-cache",
        "--quiet",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("FGSM on model \"narrow\" at precision fp32: libtorch failed") && stderr.contains("out of bounds"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
