//! The distillation losses at the scale of the authors' scripts: for every distillation method
//! and the data sets its recipe covers, our loss (with the KL scale the recipe gives) against
//! a PyTorch computation of the authors' formula (`tests/python/reference_distillation_losses.py`),
//! value and gradient with respect to the student's logits. A KL scale off by the number of
//! classes (the reason for these tests) moves both by a factor of 10 or 100.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use rfb_core::data::DatasetKind;
use rfb_trainer::methods::adaad::{adaad_loss, AdaAdSettings};
use rfb_trainer::methods::ard::{ard_loss, ArdSettings};
use rfb_trainer::methods::distillation::{distillation_loss, soft_labels_at, DistillationSettings};
use rfb_trainer::methods::fair_ard::{fair_ard_loss, FairArdSettings, FairArdVariant};
use rfb_trainer::presets::{Preset, Recipe, RecipeOptions};
use serde_json::{json, Value};
use tch::{Kind, Tensor};

fn python() -> PathBuf {
    if let Ok(path) = std::env::var("RFB_PYTHON") {
        return PathBuf::from(path);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    assert!(venv.exists(), "no Python environment at {}: run scripts/setup-env.sh", venv.display());
    venv
}

/// Runs the reference script on every input (one Python start) and returns its answers.
fn references(inputs: &[Value]) -> Vec<Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/python/reference_distillation_losses.py");
    let mut child = Command::new(python())
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start python");
    child.stdin.take().unwrap().write_all(Value::from(inputs.to_vec()).to_string().as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "reference failed: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Deterministic logits of `batch` x `classes` that differ from row to row and between calls
/// with different `phase`.
fn logits(batch: usize, classes: usize, phase: f64, spread: f64) -> Vec<Vec<f64>> {
    (0..batch).map(|i| (0..classes).map(|j| spread * (1.3 * i as f64 + 0.7 * j as f64 + phase).sin()).collect()).collect()
}

fn tensor(rows: &[Vec<f64>]) -> Tensor {
    let flat: Vec<f32> = rows.iter().flatten().map(|&v| v as f32).collect();
    Tensor::from_slice(&flat).view([rows.len() as i64, -1])
}

fn vector(values: &[f64]) -> Tensor {
    Tensor::from_slice(&values.iter().map(|&v| v as f32).collect::<Vec<_>>())
}

struct Case {
    batch: usize,
    classes: usize,
    student_adv: Vec<Vec<f64>>,
    student_clean: Vec<Vec<f64>>,
    teacher: Vec<Vec<f64>>,
    teacher_adv: Vec<Vec<f64>>,
    labels: Vec<i64>,
    tau_adv: Vec<f64>,
    tau_nat: Vec<f64>,
    weights: Vec<f64>,
}

impl Case {
    fn new(batch: usize, classes: usize) -> Case {
        Case {
            batch,
            classes,
            student_adv: logits(batch, classes, 0.0, 2.0),
            student_clean: logits(batch, classes, 1.1, 2.5),
            teacher: logits(batch, classes, 2.3, 4.0),
            teacher_adv: logits(batch, classes, 3.7, 3.0),
            labels: (0..batch).map(|i| ((7 * i + 3) % classes) as i64).collect(),
            // Temperatures and weights away from 1, different per class.
            tau_adv: (0..classes).map(|k| 0.6 + 0.9 * ((k * 37) % 11) as f64 / 10.0).collect(),
            tau_nat: (0..classes).map(|k| 0.7 + 1.7 * ((k * 53) % 13) as f64 / 12.0).collect(),
            weights: (0..classes).map(|k| 5.0 / 6.0 + 1.6 * ((k * 29) % 7) as f64 / 6.0).collect(),
        }
    }

    fn input(&self, formula: &str, temperature: f64, alpha: f64) -> Value {
        json!({
            "formula": formula,
            "student_adv": self.student_adv, "student_clean": self.student_clean,
            "teacher": self.teacher, "teacher_adv": self.teacher_adv, "labels": self.labels,
            "tau_adv": self.tau_adv, "tau_nat": self.tau_nat, "weights": self.weights,
            "temperature": temperature, "alpha": alpha,
        })
    }

    /// Our loss (built by `loss` from the student's adversarial and clean logits, with
    /// gradient) against the reference `formula`.
    fn check(&self, what: &str, reference: &Value, loss: &dyn Fn(&Tensor, &Tensor) -> Tensor) {
        let adv = tensor(&self.student_adv).set_requires_grad(true);
        let clean = tensor(&self.student_clean).set_requires_grad(true);
        let value = loss(&adv, &clean);
        let found = f64::try_from(&value).unwrap();
        let expected = reference["loss"].as_f64().unwrap();
        // The scripts' +1e-5 inside the teacher's log changes the value by at most 1e-5 per
        // class-mean element (times the script's factor), never the gradient.
        assert!((found - expected).abs() < 2e-4 + 1e-4 * expected.abs(), "{what}: loss {found} vs reference {expected}");
        let gradients = Tensor::run_backward(&[value], &[&adv, &clean], false, false);
        for (gradient, key) in gradients.iter().zip(["grad_adv", "grad_clean"]) {
            let reference: Vec<Vec<f64>> = serde_json::from_value(reference[key].clone()).unwrap();
            let reference = tensor(&reference);
            let scale = f64::try_from(reference.abs().max()).unwrap();
            let difference = f64::try_from((gradient - &reference).abs().max()).unwrap();
            assert!(difference <= 1e-4 * scale + 1e-9, "{what}: {key} differs by {difference} (largest reference entry {scale})");
        }
        assert_eq!(self.batch, self.student_adv.len());
        assert_eq!(self.classes, self.student_adv[0].len());
    }
}

/// Our loss from the student's adversarial and clean logits.
type Loss = Box<dyn Fn(&Tensor, &Tensor) -> Tensor>;

/// One comparison: a case, the reference formula's input, and our loss.
struct Check {
    what: String,
    case: Case,
    input: Value,
    loss: Loss,
}

/// Runs every check against one call of the reference script.
fn run_checks(checks: Vec<Check>) {
    let inputs: Vec<Value> = checks.iter().map(|check| check.input.clone()).collect();
    let answers = references(&inputs);
    assert_eq!(answers.len(), checks.len());
    for (check, answer) in checks.iter().zip(&answers) {
        check.case.check(&check.what, answer, &check.loss);
    }
}

fn preset(method: &str, kind: DatasetKind) -> Preset {
    Recipe::new(method.parse().unwrap(), kind, &RecipeOptions::default()).preset
}

#[test]
fn rslad_and_absld_losses_match_the_authors_scripts_on_10_and_100_classes() {
    let mut checks = Vec::new();
    for (kind, classes, formula) in [(DatasetKind::Cifar10, 10, "absld_script"), (DatasetKind::Cifar100, 100, "rslad_cifar100_script")] {
        // ABSLD with its class temperatures.
        let case = Case::new(6, classes);
        let labels = Tensor::from_slice(&case.labels);
        let teacher = tensor(&case.teacher);
        let absld = preset("absld", kind).methods.absld;
        let adversarial_targets = soft_labels_at(&teacher, &labels, &vector(&case.tau_adv));
        let clean_targets = soft_labels_at(&teacher, &labels, &vector(&case.tau_nat));
        let settings = DistillationSettings { alpha: absld.alpha, kl_scale: absld.kl_scale };
        checks.push(Check {
            what: format!("absld {kind:?}"),
            input: case.input(formula, 1.0, absld.alpha),
            case,
            loss: Box::new(move |adv, clean| distillation_loss(adv, clean, &adversarial_targets, &clean_targets, settings, None)),
        });
        // RSLAD: every temperature 1.
        let rslad = preset("rslad", kind).methods.rslad;
        let mut case = Case::new(6, classes);
        case.tau_adv = vec![1.0; classes];
        case.tau_nat = vec![1.0; classes];
        let targets = tensor(&case.teacher).softmax(-1, Kind::Float);
        let rslad_formula = if classes == 10 { "rslad_cifar10_script" } else { formula };
        checks.push(Check {
            what: format!("rslad {kind:?}"),
            input: case.input(rslad_formula, 1.0, rslad.alpha),
            case,
            loss: Box::new(move |adv, clean| distillation_loss(adv, clean, &targets, &targets, rslad, None)),
        });
    }
    run_checks(checks);
}

#[test]
fn ard_and_adaad_losses_match_the_authors_scripts() {
    let mut checks = Vec::new();
    for (kind, classes) in [(DatasetKind::Cifar10, 10), (DatasetKind::Cifar100, 100)] {
        // alpha below 1 so that the weight of the second term is checked too.
        let case = Case::new(5, classes);
        let labels = Tensor::from_slice(&case.labels);
        let teacher = tensor(&case.teacher);
        let ard = ArdSettings { alpha: 0.9, ..preset("ard", kind).methods.ard };
        checks.push(Check {
            what: format!("ard {kind:?}"),
            input: case.input("ard_script", ard.temperature, ard.alpha),
            case,
            loss: Box::new(move |adv, clean| ard_loss(adv, clean, &teacher, &labels, ard)),
        });

        let case = Case::new(5, classes);
        let teacher = tensor(&case.teacher);
        let teacher_adv = tensor(&case.teacher_adv);
        let adaad = AdaAdSettings { alpha: 0.75, ..preset("adaad", kind).methods.adaad };
        let formula = if classes == 10 { "adaad_script_cifar10" } else { "adaad_script_cifar100" };
        checks.push(Check {
            what: format!("adaad {kind:?}"),
            input: case.input(formula, 1.0, adaad.alpha),
            case,
            loss: Box::new(move |adv, clean| adaad_loss(adv, clean, &teacher_adv, &teacher, adaad)),
        });
    }
    run_checks(checks);
}

#[test]
fn fair_ard_losses_match_the_authors_scripts_in_both_forms() {
    let mut checks = Vec::new();
    // The paper's forms: Fair-ARD on CIFAR-10, Fair-RSLAD on CIFAR-100 (A.3).
    let case = Case::new(6, 10);
    let labels = Tensor::from_slice(&case.labels);
    let teacher = tensor(&case.teacher);
    let example_weights = vector(&case.weights).index_select(0, &labels);
    let fair = preset("fair-ard", DatasetKind::Cifar10).methods.fair_ard;
    assert_eq!(fair.variant, FairArdVariant::Ard);
    let fair = FairArdSettings { alpha: 0.8, ..fair };
    checks.push(Check {
        what: "fair-ard Cifar10".into(),
        input: case.input("fair_ard_script", fair.temperature, fair.alpha),
        case,
        loss: Box::new(move |adv, clean| fair_ard_loss(adv, clean, &teacher, &labels, &example_weights, fair)),
    });
    for (kind, classes) in [(DatasetKind::Cifar10, 10), (DatasetKind::Cifar100, 100)] {
        let case = Case::new(6, classes);
        let labels = Tensor::from_slice(&case.labels);
        let targets = tensor(&case.teacher).softmax(-1, Kind::Float);
        let example_weights = vector(&case.weights).index_select(0, &labels);
        let options = RecipeOptions { fair_ard_variant: Some(FairArdVariant::Rslad), ..Default::default() };
        let fair = Recipe::new(rfb_trainer::methods::Method::FairArd, kind, &options).preset.methods.fair_ard;
        let settings = DistillationSettings { alpha: fair.alpha, kl_scale: fair.kl_scale };
        checks.push(Check {
            what: format!("fair-rslad {kind:?}"),
            input: case.input("fair_rslad_script", 1.0, fair.alpha),
            case,
            loss: Box::new(move |adv, clean| distillation_loss(adv, clean, &targets, &targets, settings, Some(&example_weights))),
        });
    }
    run_checks(checks);
}
