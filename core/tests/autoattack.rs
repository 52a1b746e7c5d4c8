//! Exploration (temporary).

mod common;

use rfb_core::attacks::{self, Apgd, Attack, AutoAttack, Fgsm, Pgd};
use rfb_core::data::{self, DatasetKind, Split};
use std::time::Instant;

#[test]
#[ignore]
fn explore() {
    let t = Instant::now();
    let network = common::train_digits_model("digits-cnn", 5, 11);
    println!("train {:?}", t.elapsed());
    let test = data::load(DatasetKind::Digits, Split::Test, None).unwrap();
    let sub = test.class_balanced_subset(20).unwrap();
    let clean = attacks::clean_accuracy(&network, &test, 128).overall_accuracy();
    println!("clean {clean}");
    for eps in [0.05, 0.075, 0.1] {
        let run = |a: &dyn Attack, d: &data::Dataset| {
            let t = Instant::now();
            let acc = attacks::robust_accuracy(a, &network, d, 400, |_, _| true).unwrap().overall_accuracy();
            println!("eps {eps} {} {acc:.2} ({:?})", a.name(), t.elapsed());
        };
        run(&Fgsm { eps }, &test);
        run(&Pgd::pgd20(eps, 1), &test);
        run(&Apgd::ce(eps, 1), &test);
        run(&Apgd::dlr(eps, 1), &test);
        run(&Apgd::targeted(eps, 9, 1), &test);
        let aa = AutoAttack::standard(eps, 1);
        let t = Instant::now();
        let (images, labels) = sub.batches(400).next().unwrap();
        tch::manual_seed(1);
        let out = aa.run(&network, &images, &labels).unwrap();
        println!("eps {eps} AA on 200: clean {} {:?} ({:?})", out.clean_correct, out.robust_after, t.elapsed());
    }
}
