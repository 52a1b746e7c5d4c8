//! Auto-PGD and AutoAttack on real computation: a naturally trained digits CNN, compared with
//! PGD-20 and FGSM, and the reference checks. The point-by-point comparison with the torchattacks
//! port of the reference AutoAttack is in `fidelity.rs`.

mod common;

use rfb_core::attacks::{self, apgd_checkpoints, sanity_flags, Apgd, Attack, AutoAttack, Classifier, Fgsm, Pgd, Square};
use rfb_core::data::{self, Dataset, DatasetKind, Split};
use rfb_core::models::Network;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use tch::{Device, Kind, Tensor};

const EPS: f64 = 0.1;

/// The tests of this file run in parallel threads of one process and share libtorch's global
/// generator, so a test that needs a reproducible random stream (seeded runs compared with each
/// other or with the reference) holds this lock for writing while it draws; every other test
/// holds it for reading while it attacks.
static GENERATOR: RwLock<()> = RwLock::new(());

fn exclusive_generator() -> RwLockWriteGuard<'static, ()> {
    GENERATOR.write().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn shared_generator() -> RwLockReadGuard<'static, ()> {
    GENERATOR.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A model trained for these tests (the same weights on every run), with libtorch on one
/// thread: the tests run two at a time on a 2-core machine, and for batches this small one
/// thread per test wastes the least CPU.
fn trained_model(epochs: i64, seed: u64) -> Network {
    tch::set_num_threads(1);
    let _generator = exclusive_generator();
    common::train_digits_model("digits-cnn", epochs, seed)
}

fn digits_test() -> Dataset {
    data::load(DatasetKind::Digits, Split::Test, None).unwrap()
}

fn accuracy(attack: &dyn Attack, model: &dyn Classifier, dataset: &Dataset) -> f64 {
    attacks::robust_accuracy(attack, model, dataset, 200, |_, _| true).unwrap().overall_accuracy()
}

fn count_true(mask: &Tensor) -> i64 {
    i64::try_from(mask.sum(Kind::Int64)).unwrap()
}

/// The network behind a softmax: what a model that returns probabilities looks like.
struct Softmax<'a>(&'a Network);

impl Classifier for Softmax<'_> {
    fn logits(&self, images: &Tensor) -> Result<Tensor, tch::TchError> {
        Ok(self.0.forward_t(images, false).softmax(-1, Kind::Float))
    }
    fn device(&self) -> Device {
        self.0.device()
    }
}

/// Gaussian noise on the input at every forward pass: a randomised defence.
struct Noisy<'a> {
    network: &'a Network,
    sigma: f64,
}

impl Classifier for Noisy<'_> {
    fn logits(&self, images: &Tensor) -> Result<Tensor, tch::TchError> {
        Ok(self.network.forward_t(&(images + images.randn_like() * self.sigma), false))
    }
    fn device(&self) -> Device {
        self.network.device()
    }
}

/// Inputs rounded to 16 grey levels first: the input gradient is zero almost everywhere, the
/// textbook case of gradient masking.
struct Quantised<'a>(&'a Network);

impl Classifier for Quantised<'_> {
    fn logits(&self, images: &Tensor) -> Result<Tensor, tch::TchError> {
        Ok(self.0.forward_t(&((images * 16.0).round() / 16.0), false))
    }
    fn device(&self) -> Device {
        self.0.device()
    }
}

#[test]
fn checkpoint_schedule_is_the_papers() {
    // p = 0, 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99 times 100 iterations.
    assert_eq!(apgd_checkpoints(100), vec![22, 41, 57, 70, 80, 87, 93, 99]);
    assert_eq!(apgd_checkpoints(1000)[..3], [220, 410, 570]);
}

#[test]
fn apgd_ce_is_at_least_as_strong_as_pgd20_and_apgd_t_lowers_accuracy() {
    let network = trained_model(3, 11);
    let _generator = shared_generator();
    let test = digits_test();
    let clean = attacks::clean_accuracy(&network, &test, 200).unwrap().overall_accuracy();
    let pgd = accuracy(&Pgd::pgd20(EPS, 7), &network, &test);
    let apgd_ce = accuracy(&Apgd::ce(EPS, 7), &network, &test);
    println!("test split, eps {EPS}: clean {clean:.2} PGD-20 {pgd:.2} APGD-CE {apgd_ce:.2}");
    assert!(clean > 90.0, "the model did not learn: {clean}");
    assert!(apgd_ce <= pgd, "APGD-CE ({apgd_ce}) is weaker than PGD-20 ({pgd})");

    // APGD-T runs 9 x 100 iterations: on a class-balanced subset.
    let subset = test.class_balanced_subset(10).unwrap();
    let clean = attacks::clean_accuracy(&network, &subset, 200).unwrap().overall_accuracy();
    let pgd = accuracy(&Pgd::pgd20(EPS, 7), &network, &subset);
    let apgd_t = accuracy(&Apgd::targeted(EPS, 9, 7), &network, &subset);
    let apgd_dlr = accuracy(&Apgd::dlr(EPS, 7), &network, &subset);
    println!("subset: clean {clean:.2} PGD-20 {pgd:.2} APGD-T {apgd_t:.2} APGD-DLR {apgd_dlr:.2}");
    assert!(apgd_t < clean - 20.0, "APGD-T barely hurts a non-robust model: {clean} -> {apgd_t}");
    assert!(apgd_t <= pgd, "APGD-T ({apgd_t}) is weaker than PGD-20 ({pgd})");
    assert!(apgd_dlr < clean - 20.0, "APGD-DLR barely hurts a non-robust model: {clean} -> {apgd_dlr}");
}

#[test]
fn ordering_clean_fgsm_pgd20_autoattack() {
    let network = trained_model(3, 12);
    let _generator = shared_generator();
    let subset = digits_test().class_balanced_subset(10).unwrap();
    let clean = attacks::clean_accuracy(&network, &subset, 200).unwrap().overall_accuracy();
    let fgsm = accuracy(&Fgsm { eps: EPS }, &network, &subset);
    let pgd = accuracy(&Pgd::pgd20(EPS, 3), &network, &subset);
    let autoattack = AutoAttack::standard(EPS, 3);
    let counts = attacks::robust_accuracy(&autoattack, &network, &subset, 200, |_, _| true).unwrap();
    let aa = counts.overall_accuracy();
    println!("clean {clean:.2} FGSM {fgsm:.2} PGD-20 {pgd:.2} AutoAttack {aa:.2} per class {:?}", counts.correct);
    assert!(clean >= fgsm && fgsm >= pgd && pgd >= aa, "ordering broken: {clean} {fgsm} {pgd} {aa}");
    assert!(aa < pgd || pgd == 0.0, "AutoAttack found nothing beyond PGD-20: {pgd} -> {aa}");

    // The per-component bookkeeping agrees with the final count and with a fresh evaluation of
    // the returned batch.
    let evaluation = attacks::evaluate(&autoattack, &network, &subset, 64, attacks::Interrupt::NEVER, &mut |_| {}).unwrap();
    assert_eq!(evaluation.counts, counts, "the batch size changed the result");
    let names: Vec<&str> = evaluation.components.iter().map(|c| c.name.as_str()).collect();
    let left: Vec<i64> = evaluation.components.iter().map(|c| c.robust_after.correct.iter().sum()).collect();
    println!("components {names:?}, robust after each {left:?}");
    assert_eq!(names[0], "APGD-CE");
    assert!(left.windows(2).all(|w| w[1] <= w[0]), "a component increased the robust count: {left:?}");
    assert_eq!(*left.last().unwrap(), counts.correct.iter().sum::<i64>());
    assert_eq!(evaluation.components.last().unwrap().robust_after, counts);
    let (images, labels) = subset.batches(200).next().unwrap();
    let adversarial = attacks::perturb_batch(&autoattack, &network, &images, &labels).unwrap();
    attacks::verify_adversarial("AutoAttack", &images, &adversarial, EPS).unwrap();
    let correct = tch::no_grad(|| network.forward_t(&adversarial, false).argmax(-1, false).eq_tensor(&labels));
    assert_eq!(count_true(&correct), counts.correct.iter().sum::<i64>(), "the returned batch disagrees with the counts");
}

#[test]
fn every_returned_batch_stays_in_the_ball_and_breaks_points() {
    let network = trained_model(3, 13);
    let _generator = shared_generator();
    let subset = digits_test().class_balanced_subset(3).unwrap();
    let (images, labels) = subset.batches(100).next().unwrap();
    let noisy = Noisy { network: &network, sigma: 0.05 };
    let cases: Vec<(Box<dyn Attack>, &dyn Classifier)> = vec![
        (Box::new(Apgd::ce(EPS, 1)), &network),
        (Box::new(Apgd::dlr(EPS, 1)), &network),
        (Box::new(Apgd { restarts: 2, ..Apgd::targeted(EPS, 3, 1) }), &network),
        (Box::new(Apgd { steps: 20, ..Apgd::ce(EPS, 1).with_eot(5) }), &noisy),
        (Box::new(AutoAttack::custom(EPS, 1, vec![Box::new(Apgd::ce(EPS, 1)), Box::new(Square::new(EPS, 100, 0.8, 1))])), &network),
    ];
    let correct_on =
        |model: &dyn Classifier, x: &Tensor| count_true(&tch::no_grad(|| model.logits(x).unwrap().argmax(-1, false).eq_tensor(&labels)));
    for (attack, model) in cases {
        let adversarial = attacks::perturb_batch(attack.as_ref(), model, &images, &labels).unwrap();
        attacks::verify_adversarial(&attack.name(), &images, &adversarial, EPS).unwrap();
        // And it did break points: the check above is not passed by returning the clean batch.
        let (clean, attacked) = (correct_on(model, &images), correct_on(model, &adversarial));
        println!("{}: {clean} -> {attacked} correct of {}", attack.name(), images.size()[0]);
        assert!(3 * attacked <= 2 * clean, "{} broke too few points: {clean} -> {attacked}", attack.name());
    }
    // A component searching beyond AutoAttack's eps is refused.
    let too_wide = AutoAttack::custom(EPS, 1, vec![Box::new(Apgd::ce(2.0 * EPS, 1))]);
    assert!(attacks::perturb_batch(&too_wide, &network, &images, &labels).is_err());
    assert!(attacks::perturb_batch(&Apgd { eot_iter: 0, ..Apgd::ce(EPS, 1) }, &network, &images, &labels).is_err());
    assert!(attacks::perturb_batch(&Apgd::targeted(EPS, 0, 1), &network, &images, &labels).is_err());
    assert!(attacks::perturb_batch(&Apgd { rho: 1.5, ..Apgd::ce(EPS, 1) }, &network, &images, &labels).is_err());
}

#[test]
fn autoattack_is_deterministic_for_a_seed_on_cpu() {
    let network = trained_model(2, 14);
    let _generator = exclusive_generator();
    let subset = digits_test().class_balanced_subset(5).unwrap();
    let make = |seed| {
        AutoAttack::custom(
            EPS,
            seed,
            vec![
                Box::new(Apgd { steps: 20, ..Apgd::ce(EPS, seed) }),
                Box::new(Apgd { steps: 20, ..Apgd::targeted(EPS, 3, seed) }),
                Box::new(Square::new(EPS, 200, 0.8, seed)),
            ],
        )
    };
    let a = attacks::robust_accuracy(&make(42), &network, &subset, 16, |_, _| true).unwrap();
    let b = attacks::robust_accuracy(&make(42), &network, &subset, 16, |_, _| true).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.total, vec![5; 10]);

    let (images, labels) = subset.batches(50).next().unwrap();
    let run = |seed: u64| attacks::perturb_batch(&Apgd::ce(EPS, seed), &network, &images, &labels).unwrap();
    let (first, second, other) = (run(1), run(1), run(2));
    assert!(first.equal(&second), "APGD-CE differs between two runs with the same seed");
    assert!(!first.equal(&other), "APGD-CE ignores the random start");
}

#[test]
fn sanity_flags_fire_on_softmax_and_randomised_models_only() {
    let network = trained_model(2, 15);
    let _generator = shared_generator();
    let (images, labels) = digits_test().class_balanced_subset(10).unwrap().batches(100).next().unwrap();

    let plain = sanity_flags(&network, &images, &labels).unwrap();
    println!("plain {plain:?}");
    assert!(!plain.randomised && !plain.probabilities_not_logits && !plain.possible_gradient_masking);
    assert_eq!(plain.zero_gradient_fraction, 0.0);

    let softmax = sanity_flags(&Softmax(&network), &images, &labels).unwrap();
    println!("softmax {softmax:?}");
    assert!(softmax.probabilities_not_logits && !softmax.randomised);

    let noisy = sanity_flags(&Noisy { network: &network, sigma: 0.05 }, &images, &labels).unwrap();
    println!("noisy {noisy:?}");
    assert!(noisy.randomised && !noisy.probabilities_not_logits);

    let quantised = sanity_flags(&Quantised(&network), &images, &labels).unwrap();
    println!("quantised {quantised:?}");
    assert!(quantised.possible_gradient_masking && !quantised.randomised);
    assert_eq!(quantised.zero_gradient_fraction, 1.0);
}

#[test]
fn rand_version_breaks_a_randomised_model() {
    let network = trained_model(3, 16);
    let _generator = shared_generator();
    let noisy = Noisy { network: &network, sigma: 0.05 };
    let subset = digits_test().class_balanced_subset(3).unwrap();
    let clean = attacks::clean_accuracy(&noisy, &subset, 100).unwrap().overall_accuracy();
    let rand = accuracy(&AutoAttack::rand(EPS, 4), &noisy, &subset);
    println!("noisy model: clean {clean:.2} AutoAttack-rand {rand:.2}");
    assert!(rand < clean - 30.0, "AutoAttack-rand barely hurts a non-robust model: {clean} -> {rand}");
}

/// Four classes whose logits are constants above every other (10, 9, 8, 7), the other six
/// squashed below them: everything is class 0, the CE gradient is small but not zero, and the
/// targeted DLR loss towards classes 1 to 3 does not depend on the input at all (its numerator
/// and its denominator are those constants): APGD-T's zero-gradient check must see it.
struct ConstantTop<'a>(&'a Network);

impl Classifier for ConstantTop<'_> {
    fn logits(&self, images: &Tensor) -> Result<Tensor, tch::TchError> {
        let free = self.0.forward_t(images, false).narrow(1, 4, 6).tanh();
        let n = free.size()[0];
        let constants = Tensor::from_slice(&[10.0f32, 9.0, 8.0, 7.0]).to_device(free.device()).reshape([1, 4]).expand([n, 4], false);
        Ok(Tensor::cat(&[constants, free], 1))
    }
    fn device(&self) -> Device {
        self.0.device()
    }
}

/// AutoAttack at a few iterations and queries (enough for the checks, cheap enough for a test).
fn quick_autoattack(seed: u64) -> AutoAttack {
    let mut autoattack = AutoAttack::standard(EPS, seed);
    let (mut apgd_ce, mut apgd_t) = (Apgd::ce(EPS, seed), Apgd::targeted(EPS, 9, seed));
    (apgd_ce.steps, apgd_t.steps) = (10, 10);
    let mut fab = rfb_core::attacks::Fab::targeted(EPS, 9, seed);
    fab.steps = 10;
    autoattack.attacks = vec![Box::new(apgd_ce), Box::new(apgd_t), Box::new(fab), Box::new(Square::new(EPS, 300, 0.8, seed))];
    autoattack
}

fn flags_after_run(model: &dyn Classifier, dataset: &Dataset) -> rfb_core::attacks::SanityFlags {
    let (images, labels) = dataset.batches(dataset.len()).next().unwrap();
    let before = sanity_flags(model, &images, &labels).unwrap();
    let evaluation = attacks::evaluate(&quick_autoattack(5), model, dataset, 100, attacks::Interrupt::NEVER, &mut |_| {}).unwrap();
    before.with_run(&evaluation.components, dataset.len())
}

#[test]
fn the_checks_during_and_after_the_run_fire_on_models_built_for_them_only() {
    let network = trained_model(2, 15);
    let _generator = shared_generator();
    let subset = digits_test().class_balanced_subset(10).unwrap();

    let plain = flags_after_run(&network, &subset);
    println!("plain {plain:?}");
    assert_eq!(plain.dlr_zero_gradient_points, 0);
    assert!(!plain.square_lowered_robust_accuracy && !plain.any(), "{plain:?}");

    // Zero gradients at 16 grey levels: the gradient attacks cannot move a point, Square can.
    let quantised = flags_after_run(&Quantised(&network), &subset);
    println!("quantised {quantised:?}");
    assert!(quantised.square_lowered_robust_accuracy && quantised.square_robust_accuracy_drop > 0.002, "{quantised:?}");
    assert!(quantised.dlr_zero_gradient_points > 0, "{quantised:?}");

    // The targeted DLR loss is flat towards three targets, while the CE gradient is not zero.
    let constant = flags_after_run(&ConstantTop(&network), &subset);
    println!("constant top {constant:?}");
    assert!(!constant.possible_gradient_masking, "{constant:?}");
    assert!(constant.dlr_zero_gradient_points > 0, "{constant:?}");
    assert!(constant.any(), "{constant:?}");
}

#[test]
fn fewer_classes_than_targets_is_a_warning() {
    let network = trained_model(2, 15);
    let _generator = shared_generator();
    let (images, labels) = digits_test().class_balanced_subset(2).unwrap().batches(20).next().unwrap();
    let flags = sanity_flags(&network, &images, &labels).unwrap();
    assert!(!flags.with_targets(9, 9).fewer_classes_than_targets());
    let clamped = flags.with_targets(9, 4);
    assert!(clamped.fewer_classes_than_targets() && clamped.any());
}

#[test]
fn the_checks_before_the_run_do_not_depend_on_the_batch_size() {
    let network = trained_model(2, 15);
    let _generator = shared_generator();
    let (images, labels) = digits_test().class_balanced_subset(30).unwrap().batches(300).next().unwrap();
    // Zero gradients for the darker images only: a batch of a few points may see none of them.
    let model = PartlyQuantised(&network);
    let whole = attacks::sanity_flags_in_chunks(&model, &images, &labels, 300).unwrap();
    assert!(whole.zero_gradient_fraction > 0.05 && whole.zero_gradient_fraction < 0.95, "{whole:?}");
    for chunk in [1, 7, 64] {
        let chunked = attacks::sanity_flags_in_chunks(&model, &images, &labels, chunk).unwrap();
        assert_eq!(chunked, whole, "chunks of {chunk}");
    }
    // The first 250 points only, as the reference checks its first batch of 250.
    let first = attacks::sanity_flags(&model, &images.narrow(0, 0, 250), &labels.narrow(0, 0, 250)).unwrap();
    assert_eq!(first.zero_gradient_fraction, whole.zero_gradient_fraction);
}

/// Inputs quantised where the image is darker than average: a zero gradient for some points.
struct PartlyQuantised<'a>(&'a Network);

impl Classifier for PartlyQuantised<'_> {
    fn logits(&self, images: &Tensor) -> Result<Tensor, tch::TchError> {
        let n = images.size()[0];
        let dark = images.detach().reshape([n, -1]).mean_dim(1, true, Kind::Float).lt(0.3).reshape([n, 1, 1, 1]);
        let quantised = (images * 16.0).round() / 16.0;
        Ok(self.0.forward_t(&quantised.where_self(&dark, images), false))
    }
    fn device(&self) -> Device {
        self.0.device()
    }
}
