//! FGSM, PGD and CW-inf on real computation: a linear model where the worst case is known in
//! closed form, and a small trained digits model.

mod common;

use rfb_core::attacks::{self, CarliniWagnerLinf, Classifier, Fgsm, Pgd, PgdLoss};
use rfb_core::data::{self, DatasetKind, Split};
use tch::{Device, Kind, Tensor};

/// logits = x.flatten() W^T + b: the input gradient is constant, so one signed step of size eps
/// (FGSM) reaches the exact worst case of any loss that is monotone in one logit difference.
struct Linear {
    weight: Tensor,
    bias: Tensor,
}

impl Classifier for Linear {
    fn logits(&self, images: &Tensor) -> Result<Tensor, tch::TchError> {
        Ok(images.flatten(1, -1).matmul(&self.weight.tr()) + &self.bias)
    }
    fn device(&self) -> Device {
        Device::Cpu
    }
}

fn linear_two_class(seed: i64) -> (Linear, Tensor, Tensor) {
    tch::manual_seed(seed);
    let weight = Tensor::randn([2, 16], (Kind::Float, Device::Cpu));
    let bias = Tensor::zeros([2], (Kind::Float, Device::Cpu));
    // Images well inside [0, 1] so that the box never cuts the ball.
    let images = Tensor::rand([64, 1, 4, 4], (Kind::Float, Device::Cpu)) * 0.5 + 0.25;
    let model = Linear { weight, bias };
    let labels = tch::no_grad(|| model.logits(&images).unwrap().argmax(-1, false));
    (model, images, labels)
}

#[test]
fn fgsm_reaches_the_analytic_worst_case_of_a_linear_model() {
    let (model, images, labels) = linear_two_class(0);
    let eps = 0.1;
    let adversarial = attacks::perturb_batch(&Fgsm { eps }, &model, &images, &labels).unwrap();
    attacks::verify_adversarial("FGSM", &images, &adversarial, eps).unwrap();
    // For two classes the margin z_y - z_other changes by at most eps * ||w_y - w_other||_1.
    let w = &model.weight;
    let direction = (w.get(0) - w.get(1)).abs().sum(Kind::Float);
    let margin = |x: &Tensor| {
        let z = model.logits(x).unwrap();
        let sign = labels.to_kind(Kind::Float) * -2.0 + 1.0; // +1 for class 0, -1 for class 1
        (z.select(1, 0) - z.select(1, 1)) * sign
    };
    let expected = margin(&images) - direction * eps;
    let reached = margin(&adversarial);
    let gap = f64::try_from((reached - expected).abs().max()).unwrap();
    assert!(gap < 1e-4, "FGSM missed the worst case by {gap}");
    // And PGD cannot do better than that optimum.
    let pgd = Pgd { eps, step_size: 0.02, steps: 20, restarts: 1, random_start: true, loss: PgdLoss::CrossEntropy, seed: 1 };
    let pgd_margin = margin(&attacks::perturb_batch(&pgd, &model, &images, &labels).unwrap());
    let fgsm_margin = margin(&adversarial);
    assert!(f64::try_from((pgd_margin - fgsm_margin).min()).unwrap() > -1e-4);
}

#[test]
fn ordering_on_a_trained_digits_model_and_bounds_hold() {
    let network = common::train_digits_model("digits-cnn", 5, 11);
    let test = data::load(DatasetKind::Digits, Split::Test, None).unwrap();
    let eps = 0.1;
    let clean = attacks::clean_accuracy(&network, &test, 128).unwrap().overall_accuracy();
    let fgsm = attacks::robust_accuracy(&Fgsm { eps }, &network, &test, 128, |_, _| true).unwrap();
    let pgd = attacks::robust_accuracy(&Pgd::pgd20(eps, 3), &network, &test, 128, |_, _| true).unwrap();
    let cw = attacks::robust_accuracy(&CarliniWagnerLinf::cw30(eps, 3), &network, &test, 128, |_, _| true).unwrap();
    let (fgsm, pgd, cw) = (fgsm.overall_accuracy(), pgd.overall_accuracy(), cw.overall_accuracy());
    println!("clean {clean:.2} FGSM {fgsm:.2} PGD-20 {pgd:.2} CW-30 {cw:.2}");
    assert!(clean > 90.0, "the model did not learn: {clean}");
    assert!(fgsm <= clean && pgd <= fgsm, "ordering broken: {clean} {fgsm} {pgd}");
    assert!(pgd < clean - 20.0, "PGD-20 barely hurts a non-robust model: {clean} -> {pgd}");
    assert!(cw < clean - 20.0, "CW-inf barely hurts a non-robust model: {clean} -> {cw}");
}

#[test]
fn pgd_is_deterministic_for_a_seed_and_stays_in_bounds() {
    let network = common::train_digits_model("digits-cnn", 2, 5);
    let test = data::load(DatasetKind::Digits, Split::Test, None).unwrap().class_balanced_subset(5).unwrap();
    let attack = Pgd::pgd20(0.1, 42);
    let a = attacks::robust_accuracy(&attack, &network, &test, 16, |_, _| true).unwrap();
    let b = attacks::robust_accuracy(&attack, &network, &test, 16, |_, _| true).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.total, vec![5; 10]);
    let (images, labels) = test.batches(50).next().unwrap();
    let adversarial = attacks::perturb_batch(&attack, &network, &images, &labels).unwrap();
    attacks::verify_adversarial("PGD", &images, &adversarial, 0.1).unwrap();
    assert!(attacks::verify_adversarial("PGD", &images, &adversarial, 0.01).is_err());
}

#[test]
fn invalid_parameters_are_refused() {
    let network = common::train_digits_model("digits-cnn", 1, 5);
    let (images, labels) = data::load(DatasetKind::Digits, Split::Test, None).unwrap().batches(8).next().unwrap();
    let mut pgd = Pgd::pgd20(-0.1, 0);
    assert!(attacks::perturb_batch(&pgd, &network, &images, &labels).is_err());
    pgd.eps = 0.1;
    pgd.steps = 0;
    assert!(attacks::perturb_batch(&pgd, &network, &images, &labels).is_err());
    assert!(CarliniWagnerLinf::new(0.1, 0.01, 30, -1.0, 0).is_err());
}
