//! Adversarial confusions on real computation (a digits CNN trained for the test): for clean,
//! FGSM, PGD and AutoAttack, rows add up to the class totals, the diagonal is the robust count,
//! the batch size changes nothing, and each point's predicted class is what the judge says of
//! the point the attack returned (for AutoAttack: of the first component's output that broke it).

mod common;

use rfb_core::attacks::{self, Apgd, Attack, AutoAttack, Batch, Classifier, Confusion, Fab, Fgsm, Pgd, Square};
use rfb_core::data::{self, Dataset, DatasetKind, Split};
use rfb_core::models::{Network, Precision, PreparedNetwork};
use tch::Kind;

const EPS: f64 = 0.1;

fn quick_autoattack(seed: u64) -> AutoAttack {
    let mut autoattack = AutoAttack::standard(EPS, seed);
    let (mut apgd_ce, mut apgd_t) = (Apgd::ce(EPS, seed), Apgd::targeted(EPS, 9, seed));
    (apgd_ce.steps, apgd_t.steps) = (10, 10);
    let mut fab = Fab::targeted(EPS, 9, seed);
    fab.steps = 10;
    autoattack.attacks = vec![Box::new(apgd_ce), Box::new(apgd_t), Box::new(fab), Box::new(Square::new(EPS, 300, 0.8, seed))];
    autoattack
}

fn check_consistent(name: &str, confusion: &Confusion, counts: &attacks::ClassCounts) {
    assert_eq!(confusion.classes(), counts.total.len(), "{name}: shape");
    for (k, row) in confusion.rows().iter().enumerate() {
        assert_eq!(row.len(), counts.total.len(), "{name}: row {k} length");
        assert_eq!(row.iter().sum::<i64>(), counts.total[k], "{name}: row {k} does not add up to the class total");
        assert_eq!(row[k], counts.correct[k], "{name}: diagonal {k} is not the robust count");
    }
    assert_eq!(confusion.class_counts(), *counts, "{name}");
}

#[test]
fn confusions_add_up_to_the_counts_for_every_attack_and_batch_size() {
    tch::set_num_threads(1);
    let network = common::train_digits_model("digits-cnn", 3, 12);
    let subset = data::load(DatasetKind::Digits, Split::Test, None).unwrap().class_balanced_subset(10).unwrap();

    let clean = attacks::clean_accuracy(&network, &subset, 64).unwrap();
    for batch in [7, 64] {
        let confusion = attacks::clean_confusion(&network, &subset, batch).unwrap();
        check_consistent(&format!("clean at batch {batch}"), &confusion, &clean);
    }

    let list: Vec<Box<dyn Attack>> = vec![Box::new(Fgsm { eps: EPS }), Box::new(Pgd::pgd20(EPS, 3)), Box::new(quick_autoattack(3))];
    check_attacks(&network, &network, &subset, &list, true);
}

/// The same at fp32-fast (an attack copy; where the copy and the judge disagree the judge
/// attacks again, and the predicted class is the judge's on the point kept) and bf16.
#[test]
fn confusions_fit_the_counts_on_prepared_copies() {
    tch::set_num_threads(1);
    let network = common::train_digits_model("digits-cnn", 3, 12);
    let subset = data::load(DatasetKind::Digits, Split::Test, None).unwrap().class_balanced_subset(6).unwrap();
    let list: Vec<Box<dyn Attack>> = vec![Box::new(Pgd::pgd20(EPS, 3)), Box::new(quick_autoattack(3))];
    for precision in [Precision::Fp32Fast, Precision::Bf16] {
        let prepared = PreparedNetwork::new(&network, precision).unwrap();
        // fp32-fast rounds differently per batch; bf16 does not depend on the batch.
        check_attacks(&prepared, &network, &subset, &list, precision == Precision::Bf16);
    }
}

/// Runs every attack of `list` on `model` at batch sizes 7 and 64 and checks the confusions
/// against the counts and, point by point, against `judge` on the returned points.
fn check_attacks(model: &dyn Classifier, judge: &Network, subset: &Dataset, list: &[Box<dyn Attack>], batch_free: bool) {
    for attack in list {
        let run = |batch: i64| attacks::evaluate(attack.as_ref(), model, subset, batch, attacks::Interrupt::NEVER, &mut |_| {}).unwrap();
        let (small, large) = (run(7), run(64));
        check_consistent(&format!("{} at batch 7", attack.name()), &small.confusion, &small.counts);
        check_consistent(&format!("{} at batch 64", attack.name()), &large.confusion, &large.counts);
        if batch_free {
            assert_eq!(small.counts, large.counts, "{}: the batch size changed the counts", attack.name());
            assert_eq!(small.confusion, large.confusion, "{}: the batch size changed the confusion", attack.name());
        }
        let broken: i64 = small.counts.total.iter().sum::<i64>() - small.counts.correct.iter().sum::<i64>();
        println!("{}: {broken} broken, confusion {:?}", attack.name(), small.confusion.rows());
        assert!(broken > 0, "{} broke nothing: the off-diagonal check is empty", attack.name());

        // Point by point: the predicted class is the judge's on the returned point (for an
        // ensemble, the first example that fooled it, or the clean point when clean was wrong).
        let points = Batch::from_dataset(subset, attack.seed());
        let detail = attacks::run_points(attack.as_ref(), model, &points, 16, attacks::Interrupt::NEVER, true, &mut |_| {}).unwrap();
        let returned = detail.adversarial.unwrap();
        let judged = tch::no_grad(|| judge.forward_t(&returned, false).argmax(-1, false));
        let disagree = i64::try_from(judged.ne_tensor(&detail.predicted).sum(Kind::Int64)).unwrap();
        assert_eq!(disagree, 0, "{}: predicted classes differ from the judge's on the returned points", attack.name());
        let robust_again = detail.predicted.eq_tensor(&points.labels);
        assert!(robust_again.equal(&detail.robust), "{}: robust is not 'predicted == label'", attack.name());
        if batch_free {
            let recount = Confusion::from_predictions(subset.num_classes() as usize, &points.labels, &detail.predicted).unwrap();
            assert_eq!(recount, small.confusion, "{}", attack.name());
        }
    }
}

#[test]
fn a_predicted_class_outside_the_classes_is_an_error_not_another_cell() {
    let labels = tch::Tensor::from_slice(&[0i64, 1, 2]);
    let ok = Confusion::from_predictions(3, &labels, &tch::Tensor::from_slice(&[0i64, 2, 2])).unwrap();
    assert_eq!(ok.rows(), &[vec![1, 0, 0], vec![0, 0, 1], vec![0, 0, 1]]);
    assert!(Confusion::from_predictions(3, &labels, &tch::Tensor::from_slice(&[0i64, 3, 2])).is_err());
    assert!(Confusion::from_predictions(3, &labels, &tch::Tensor::from_slice(&[0i64, 1])).is_err());
    assert!(Confusion::from_rows(vec![vec![1, 2], vec![3]]).is_none());
    assert!(Confusion::from_rows(vec![vec![1, -2], vec![3, 0]]).is_none());
}
