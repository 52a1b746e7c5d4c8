//! How many times each attack reads a tensor's value on the host (each read stalls a GPU until
//! the work before it has run): per iteration and per batch, counted by `rfb_core::host_read` on
//! real attacks of a digits model. The numbers are the table in docs/attacks.md; a change that
//! adds a read to an iteration fails here.
//!
//! The radius is small (2/255 on 8x8 digits) so that some points survive every iteration and each
//! iterative attack runs all its iterations: a compacting attack reads once per iteration only
//! while points remain.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use rfb_core::attacks::{self, perturb_guarded, Apgd, Attack, Batch, CarliniWagnerLinf, Fab, Fgsm, Interrupt, Pgd, Square};
use rfb_core::data::{self, DatasetKind, Split};
use rfb_core::host_read;

const EPS: f64 = 2.0 / 255.0;

/// Reads of one `perturb` of `attack` on 16 test digits, by reason.
fn reads_of(attack: &dyn Attack, network: &rfb_core::models::Network) -> BTreeMap<&'static str, u64> {
    let test = data::load(DatasetKind::Digits, Split::Test, None).unwrap();
    let batch = Batch::with_seed(&test.images.narrow(0, 0, 16), &test.labels.narrow(0, 0, 16), attack.seed());
    let before = host_read::snapshot();
    let adversarial = perturb_guarded(attack, network, &batch, Interrupt::NEVER).unwrap();
    let reads = host_read::snapshot().since(&before);
    // The output check of every batch: one combined read.
    attacks::verify_adversarial(&attack.name(), &batch.images, &adversarial, attack.eps()).unwrap();
    assert_eq!(host_read::snapshot().since(&before).total(), reads.total() + 1, "verify_adversarial reads once");
    reads.by_reason
}

fn expect(pairs: &[(&'static str, u64)]) -> BTreeMap<&'static str, u64> {
    pairs.iter().copied().filter(|(_, n)| *n > 0).collect()
}

#[test]
fn each_attack_reads_the_host_only_where_its_algorithm_decides_something() {
    let network = common::train_digits_model("digits-cnn", 1, 11);

    // Gradient-sign attacks never look at a value: no read at all, whatever the steps.
    assert_eq!(reads_of(&Fgsm { eps: EPS }, &network), expect(&[]));
    assert_eq!(reads_of(&Pgd::pgd20(EPS, 3), &network), expect(&[]));
    assert_eq!(reads_of(&Pgd { restarts: 3, ..Pgd::pgd20(EPS, 3) }, &network), expect(&[]));
    assert_eq!(reads_of(&CarliniWagnerLinf::cw30(EPS, 3), &network), expect(&[]));

    // APGD drops broken points (compaction): per run, one read of the points to attack, one
    // after the random start, and one per iteration (which points stay).
    let steps = 6;
    for apgd in [Apgd::ce(EPS, 3), Apgd::dlr(EPS, 3)] {
        let apgd = Apgd { steps, restarts: 2, ..apgd };
        assert_eq!(
            reads_of(&apgd, &network),
            expect(&[
                ("APGD: points still robust before a run", 2),
                ("APGD: points to attack after the start", 2),
                ("APGD: points still robust (compaction)", 2 * steps as u64),
            ]),
            "{}",
            apgd.name()
        );
    }
    // APGD-T: the same per target.
    let targeted = Apgd { steps, ..Apgd::targeted(EPS, 3, 3) };
    assert_eq!(
        reads_of(&targeted, &network),
        expect(&[
            ("APGD: points still robust before a run", 3),
            ("APGD: points to attack after the start", 3),
            ("APGD: points still robust (compaction)", 3 * steps as u64),
        ])
    );
    // Without compaction an APGD run reads nothing inside its iterations.
    let uncompacted = Apgd { steps, drop_broken: false, ..Apgd::ce(EPS, 3) };
    assert_eq!(reads_of(&uncompacted, &network), expect(&[("APGD: points still robust before a run", 1)]));

    // FAB-T: per target and run, the points to attack, one read per iteration (which rows
    // keep searching) and the points the run broke.
    let fab = Fab { steps, restarts: 2, ..Fab::targeted(EPS, 2, 3) };
    assert_eq!(
        reads_of(&fab, &network),
        expect(&[
            ("FAB: points still robust before a run", 4),
            ("FAB: rows still searching (compaction)", 4 * steps as u64),
            ("FAB: points broken by a run", 4),
        ])
    );

    // Square: the points to attack, one read per query (which points still search), and per
    // further restart the points still robust.
    let queries = 8;
    let square = Square { restarts: 2, ..Square::new(EPS, queries, 0.8, 3) };
    assert_eq!(
        reads_of(&square, &network),
        expect(&[
            ("Square: points to attack", 1),
            ("Square: points still searching", 2 * queries as u64),
            ("Square: points still robust before a restart", 1),
        ])
    );
}

#[test]
fn an_evaluation_reads_once_per_batch_and_once_per_count() {
    let network = common::train_digits_model("digits-cnn", 1, 11);
    let test = data::load(DatasetKind::Digits, Split::Test, None).unwrap().select(&(0..100).collect::<Vec<i64>>());
    let before = host_read::snapshot();
    let evaluation = attacks::evaluate(&Pgd::pgd20(EPS, 3), &network, &test, 32, Interrupt::NEVER, &mut |_| {}).unwrap();
    let reads = host_read::snapshot().since(&before).by_reason;
    assert_eq!(evaluation.counts.total.iter().sum::<i64>(), 100);
    // 100 points in batches of 32: four output checks; the per-class counts of the result and of
    // the one component (PGD notes no zero gradients, so there is nothing to read), and the
    // labels and predictions of the adversarial confusion, once. Nothing comes back per batch:
    // the points live on the model's device for the whole run.
    assert_eq!(
        reads,
        expect(&[
            ("attack output check (eps-ball and [0, 1])", 4),
            ("evaluation: labels and predictions for the confusion", 1),
            ("per-class counts of a batch", 2),
        ])
    );
}

/// The files of attack iterations and training steps read only through `host_read`: tch's
/// conversions (`f64::try_from(&tensor)`, `Vec::<f32>::try_from(tensor)`, ...), which clippy's
/// `disallowed-methods` cannot single out, appear there only in their `#[cfg(test)]` modules.
#[test]
fn iteration_code_converts_no_tensor_outside_host_read() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files: Vec<_> = ["core/src/attacks", "trainer/src/methods"]
        .iter()
        .flat_map(|dir| std::fs::read_dir(root.join(dir)).unwrap().map(|e| e.unwrap().path()))
        .collect();
    files.push(root.join("trainer/src/run.rs"));
    let conversions = ["f64::try_from(", "f32::try_from(", "i64::try_from(", "bool::try_from(", ">::try_from(", "Vec::try_from("];
    let mut found = Vec::new();
    for file in files.iter().filter(|f| f.extension().is_some_and(|e| e == "rs")) {
        let text = std::fs::read_to_string(file).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        for (number, line) in code.lines().enumerate() {
            if !line.trim_start().starts_with("//") && conversions.iter().any(|c| line.contains(c)) {
                found.push(format!("{}:{}: {}", file.display(), number + 1, line.trim()));
            }
        }
    }
    assert!(found.is_empty(), "tensor conversions outside rfb_core::host_read:\n{}", found.join("\n"));
}
