//! The extension points are real: a training method and an attack defined here, outside their
//! crates, through the public traits (`rfb_trainer::method::TrainingMethod`,
//! `rfb_core::attacks::Attack`), train a digits model with the public `Trainer` and evaluate it
//! with rfb_core's public evaluation functions.

use rfb_core::attacks::{
    self, clean_accuracy, input_gradient, project_linf, robust_accuracy, Attack, AttackError, Batch, Classifier, Interrupt,
};
use rfb_core::checkpoint::{self, Expectation};
use rfb_core::data::{self, DatasetKind, Split};
use rfb_trainer::method::{StepContext, StepOutput, TrainingMethod};
use rfb_trainer::methods::Method;
use rfb_trainer::presets::Preset;
use rfb_trainer::run::{RunConfig, Trainer};
use serde_json::json;
use tch::{Device, Kind, Tensor};

/// PGD adversarial training written here: the inner maximisation is our own loop of signed
/// gradient steps on the cross-entropy from the clean image, and the loss is the mean of the
/// clean and the adversarial cross-entropy (not a loss of the crate's methods).
struct HalfCleanPgdAt;

impl TrainingMethod for HalfCleanPgdAt {
    fn name(&self) -> &'static str {
        "half-clean-pgd-at"
    }

    fn step(&mut self, context: &StepContext, images: &Tensor, labels: &Tensor) -> StepOutput {
        let attack = context.attack;
        let mut adversarial = images.detach();
        for _ in 0..attack.steps {
            let (gradient, _) = input_gradient(context.student, &adversarial, |logits| attacks::losses::cross_entropy(logits, labels))
                .expect("the student's input gradient");
            adversarial = project_linf(&(&adversarial + gradient.sign() * attack.step_size), images, attack.eps).detach();
        }
        let clean_logits = context.student.forward_t(images, true);
        let adversarial_logits = context.student.forward_t(&adversarial, true);
        let loss = (clean_logits.cross_entropy_for_logits(labels) + adversarial_logits.cross_entropy_for_logits(labels)) * 0.5;
        StepOutput { loss, clean_logits: clean_logits.detach(), adversarial_logits: Some(adversarial_logits.detach()) }
    }

    fn hyperparameters(&self) -> serde_json::Value {
        json!({"loss": "mean of clean and adversarial cross-entropy"})
    }
}

/// One signed gradient step of size eps on the cross-entropy (FGSM written here).
struct OneStepSign {
    eps: f64,
}

impl Attack for OneStepSign {
    fn name(&self) -> String {
        "one-step-sign".into()
    }

    fn eps(&self) -> f64 {
        self.eps
    }

    fn seed(&self) -> u64 {
        0
    }

    fn perturb(&self, model: &dyn Classifier, batch: &Batch, interrupt: Interrupt) -> Result<Tensor, AttackError> {
        interrupt.check()?;
        let images = &batch.images;
        let (gradient, _) = input_gradient(model, images, |logits| attacks::losses::cross_entropy(logits, &batch.labels))
            .map_err(|e| AttackError::libtorch(self.name(), &e))?;
        Ok(project_linf(&(images + gradient.sign() * self.eps), images, self.eps).detach())
    }
}

#[test]
fn a_method_and_an_attack_defined_outside_their_crates_train_and_evaluate_a_digits_model() {
    tch::set_num_threads(1);
    let dir = tempfile::tempdir().unwrap();
    let mut preset = Preset::for_dataset(DatasetKind::Digits);
    preset.epochs = 2;
    preset.lr_milestones = vec![];
    preset.eval_every = 2;
    preset.attack.steps = 3;
    preset.selection_pgd_steps = 3;
    let eps = preset.attack.eps;
    let config = RunConfig {
        // Not read by `with_method`: the method is ours.
        method: Method::Sat,
        dataset: DatasetKind::Digits,
        data_dir: None,
        teacher: None,
        init: None,
        seed: 5,
        out: dir.path().to_path_buf(),
        preset,
        select_on: Split::Validation,
        device: Device::Cpu,
        resume: false,
        progress: false,
        stop_after: None,
        stop_after_batches: None,
    };
    let summary = Trainer::with_method(config, Box::new(HalfCleanPgdAt)).unwrap().run().unwrap();
    assert_eq!(summary.epochs_done, 2);

    // The loss is finite and falls; the run's records name our method and no recipe's settings.
    let log = std::fs::read_to_string(dir.path().join("log.jsonl")).unwrap();
    let losses: Vec<f64> = log.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].as_f64().unwrap()).collect();
    assert_eq!(losses.len(), 2);
    assert!(losses.iter().all(|l| l.is_finite()) && losses[1] < losses[0], "{losses:?}");
    let record: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.path().join("run.json")).unwrap()).unwrap();
    assert_eq!(record["method"], "half-clean-pgd-at");
    assert!(record["preset"].get("methods").is_none(), "{}", record["preset"]);
    let (model, manifest) = checkpoint::load(&dir.path().join("best"), Device::Cpu, &Expectation::default()).unwrap();
    assert_eq!(manifest.method, "half-clean-pgd-at");
    assert_eq!(manifest.hyperparameters["method"]["loss"], "mean of clean and adversarial cross-entropy");

    // Our attack through rfb_core's evaluation: its points stay in the eps-ball and the image
    // range, it lowers the accuracy of a model that learned (well above the 10% of chance).
    let test = data::load(DatasetKind::Digits, Split::Test, None).unwrap();
    let clean = clean_accuracy(&model, &test, 128).unwrap().overall_accuracy();
    let attack = OneStepSign { eps };
    let robust = robust_accuracy(&attack, &model, &test, 128, |_, _| true).unwrap().overall_accuracy();
    assert!(clean > 40.0, "clean accuracy {clean}%");
    assert!(robust < clean, "robust {robust}% against clean {clean}%");
    let batch = Batch::with_seed(&test.images, &test.labels, 0);
    let adversarial = attack.perturb(&model, &batch, Interrupt::NEVER).unwrap();
    let distance = f64::try_from((&adversarial - &test.images).abs().max()).unwrap();
    assert!(distance <= eps + 1e-6 && distance > 0.0, "distance {distance}");
    let (low, high) = (f64::try_from(adversarial.min()).unwrap(), f64::try_from(adversarial.max()).unwrap());
    assert!(low >= 0.0 && high <= 1.0, "{low}..{high}");
    assert_eq!(adversarial.kind(), Kind::Float);
}
