//! Tests that can see a deviation from the reference implementations: losses and gradients on
//! hand-made logits, schedules written as the numbers the reference code gives, the judge's
//! say over every robustness decision, results that do not depend on the batch size, and point
//! by point agreement with torchattacks (its port of the reference AutoAttack) and with an
//! independent PyTorch PGD on the reference CW loss, on the same weights, points and random
//! starts.

mod common;

use std::path::{Path, PathBuf};

use rfb_core::attacks::{
    self, losses, Apgd, Attack, AutoAttack, Batch, CarliniWagnerLinf, Classifier, ExampleStreams, Fab, Interrupt, Pgd, Square,
};
use rfb_core::checkpoint::{self, CheckpointInfo};
use rfb_core::data::{self, Dataset, DatasetKind, Split};
use rfb_core::models::{Network, Precision, PreparedNetwork};
use serde_json::Value;
use tch::{Device, Kind, Tensor};

fn digits_test() -> Dataset {
    data::load(DatasetKind::Digits, Split::Test, None).unwrap()
}

fn save_model(dir: &Path, network: &Network) -> PathBuf {
    let path = dir.join("checkpoint");
    let info = CheckpointInfo {
        class_names: (0..10).map(|d| d.to_string()).collect(),
        dataset: "digits".into(),
        method: "natural".into(),
        ..Default::default()
    };
    checkpoint::save(&path, network, info).unwrap();
    path
}

fn save_points(dir: &Path, dataset: &Dataset) -> PathBuf {
    let path = dir.join("points.safetensors");
    Tensor::write_safetensors(&[("images", &dataset.images), ("labels", &dataset.labels), ("ids", &dataset.ids)], &path).unwrap();
    path
}

fn flags(mask: &Tensor) -> Vec<i64> {
    Vec::<bool>::try_from(&mask.to_device(Device::Cpu)).unwrap().into_iter().map(i64::from).collect()
}

fn json_flags(value: &Value) -> Vec<i64> {
    value.as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect()
}

fn differing(a: &[i64], b: &[i64]) -> Vec<usize> {
    (0..a.len()).filter(|&i| a[i] != b[i]).collect()
}

#[test]
fn python_streams_draw_the_numbers_ours_draw() {
    let ids = [0i64, 5, 363, 1 << 33];
    let parts = [0x4150_4744u64, 2, 3, 0];
    let output = common::run_python_script(
        "example_streams.py",
        &["7".into(), "0,5,363,8589934592".into(), "1095780164,2,3,0".into(), "2,3".into()],
    );
    let reference: Value = serde_json::from_str(output.trim()).unwrap();
    let label = attacks::draw_label(&parts);
    assert_eq!(reference["label"].as_u64().unwrap(), u64::from(label), "draw labels differ");
    let ours = ExampleStreams::new(7, &Tensor::from_slice(&ids)).uniform(label, &[2, 3]);
    let ours = Vec::<f32>::try_from(ours.flatten(0, -1)).unwrap();
    let theirs: Vec<f32> = reference["uniform"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
    assert_eq!(ours, theirs);
}

#[test]
fn cw_loss_and_its_gradient_on_hand_made_logits() {
    // Rows: the true logit leads by 60 (more than kappa); by 10; the point is misclassified by
    // 20 (less than kappa); misclassified by 70 (more than kappa).
    let logits =
        Tensor::from_slice(&[60.0f32, 0.0, 5.0, 10.0, 0.0, -3.0, 0.0, 20.0, 1.0, 0.0, 70.0, 2.0]).view([4, 3]).set_requires_grad(true);
    let labels = Tensor::from_slice(&[0i64, 0, 0, 0]);
    let kappa = 50.0;
    let loss = losses::cw_loss(&logits, &labels, kappa);
    // -max(z_y - max_{j != y} z_j + kappa, 0)
    assert_eq!(Vec::<f32>::try_from(&loss).unwrap(), vec![-105.0, -60.0, -30.0, 0.0]);
    let gradient = Tensor::run_backward(&[loss.sum(Kind::Float)], &[&logits], false, false).pop().unwrap();
    // Row 0 still moves although its true logit leads by more than kappa (a loss floored at
    // -kappa from the other side has a zero gradient there); only row 3, misclassified by more
    // than kappa, stops.
    let expected = [-1.0f32, 0.0, 1.0, -1.0, 1.0, 0.0, -1.0, 1.0, 0.0, 0.0, 0.0, 0.0];
    assert_eq!(Vec::<f32>::try_from(gradient.flatten(0, -1)).unwrap(), expected);
    let margin = losses::margin(&logits, &labels);
    assert_eq!(Vec::<f32>::try_from(&margin).unwrap(), vec![55.0, 10.0, -20.0, -70.0]);
}

#[test]
fn apgd_checkpoints_are_the_references_for_any_budget() {
    // autopgd_base.py: n_iter_2 = max(int(0.22 n), 1), size_decr = max(int(0.03 n), 1),
    // n_iter_min = max(int(0.06 n), 1); the first check after n_iter_2 iterations, each next
    // window k = max(k - size_decr, n_iter_min) iterations later.
    let cases: [(i64, &[i64]); 10] = [
        (1, &[1]),
        (2, &[1, 2]),
        (5, &[1, 2, 3, 4, 5]),
        (10, &[2, 3, 4, 5, 6, 7, 8, 9, 10]),
        (20, &[4, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20]),
        (30, &[6, 11, 15, 18, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30]),
        (50, &[11, 21, 30, 38, 45]),
        (100, &[22, 41, 57, 70, 80, 87, 93, 99]),
        (250, &[55, 103, 144, 178, 205, 225, 240]),
        (1000, &[220, 410, 570, 700, 800, 870, 930, 990]),
    ];
    for (steps, expected) in cases {
        assert_eq!(attacks::apgd_checkpoints(steps), expected.to_vec(), "{steps} iterations");
    }
}

/// A linear judge and an attack network whose logits are the judge's plus `bias`: where the
/// bias favours a wrong class, the attack network misclassifies points the judge classifies
/// correctly, as a bf16 copy can at borderline points.
struct SplitJudge {
    weight: Tensor,
    bias: Tensor,
}

impl SplitJudge {
    fn judge(&self, images: &Tensor) -> Tensor {
        images.flatten(1, -1).matmul(&self.weight.tr())
    }
}

impl Classifier for SplitJudge {
    fn logits(&self, images: &Tensor) -> Result<Tensor, tch::TchError> {
        Ok(self.judge(images) + &self.bias)
    }
    fn device(&self) -> Device {
        Device::Cpu
    }
    fn judge_logits(&self, images: &Tensor) -> Result<Tensor, tch::TchError> {
        Ok(self.judge(images))
    }
    fn has_separate_judge(&self) -> bool {
        true
    }
}

/// The same linear judge alone.
struct JudgeOnly<'a>(&'a SplitJudge);

impl Classifier for JudgeOnly<'_> {
    fn logits(&self, images: &Tensor) -> Result<Tensor, tch::TchError> {
        Ok(self.0.judge(images))
    }
    fn device(&self) -> Device {
        Device::Cpu
    }
}

#[test]
fn the_judge_decides_every_robustness_question() {
    tch::manual_seed(3);
    let weight = Tensor::randn([4, 16], (Kind::Float, Device::Cpu));
    let images = Tensor::rand([40, 1, 4, 4], (Kind::Float, Device::Cpu)) * 0.5 + 0.25;
    let judge_only = SplitJudge { weight: weight.shallow_clone(), bias: Tensor::zeros([4], (Kind::Float, Device::Cpu)) };
    let labels = tch::no_grad(|| judge_only.judge(&images).argmax(-1, false));
    // The attack network sees the judge's rarest class everywhere at first: for the judge every
    // point is classified correctly (the labels are its predictions), for the attack network
    // only the points of that class are.
    #[allow(clippy::disallowed_methods)] // a test on CPU tensors: nothing waits for a device
    let counts = Vec::<i64>::try_from(labels.bincount::<Tensor>(None, 4)).unwrap();
    let rare = (0..4).min_by_key(|&k| counts[k]).unwrap();
    let bias = Tensor::zeros([4], (Kind::Float, Device::Cpu)).index_fill(0, &Tensor::from_slice(&[rare as i64]), 1000.0);
    let model = SplitJudge { weight, bias };
    let of_rare_class = counts[rare];
    assert!(of_rare_class < 30, "too few points the two networks disagree on: {counts:?}");
    let dataset = Dataset {
        images: images.shallow_clone(),
        labels: labels.shallow_clone(),
        ids: Tensor::arange(40, (Kind::Int64, Device::Cpu)),
        class_names: (0..4).map(|c| c.to_string()).collect(),
        name: "linear".into(),
        split: Split::Test,
    };
    let eps = 0.5;
    let cases: Vec<Box<dyn Attack>> = vec![
        Box::new(Apgd { steps: 20, ..Apgd::ce(eps, 1) }),
        Box::new(Apgd { steps: 20, ..Apgd::targeted(eps, 3, 1) }),
        Box::new(Fab { steps: 20, ..Fab::targeted(eps, 3, 1) }),
        Box::new(Square::new(eps, 200, 0.8, 1)),
        Box::new(Pgd { restarts: 2, step_size: 0.05, ..Pgd::pgd20(eps, 1) }),
        Box::new(AutoAttack::standard(eps, 1)),
    ];
    let clean = attacks::clean_accuracy(&model, &dataset, 16).unwrap();
    assert_eq!(clean.correct.iter().sum::<i64>(), 40, "clean accuracy is the judge's");
    for attack in cases {
        let robust =
            |m: &dyn Classifier| attacks::evaluate(attack.as_ref(), m, &dataset, 16, Interrupt::NEVER, &mut |_| {}).unwrap().counts;
        let alone = robust(&JudgeOnly(&model)).correct.iter().sum::<i64>();
        let split = robust(&model).correct.iter().sum::<i64>();
        println!("{}: robust with the judge alone {alone}, with the split judge {split} of 40", attack.name());
        // Points the attack network gets wrong from the start are attacked all the same: none
        // is left unattacked and counted robust by the judge. (Square only queries the judge,
        // so its two runs are the same run.)
        assert!(split <= alone, "{} left points robust that only the attack network misclassified", attack.name());
        if attack.name() != "Square" {
            assert_eq!(alone, 0, "{} cannot break the linear model at eps {eps}", attack.name());
        }
    }
}

/// The digits model the comparisons use, trained for these tests (same weights every run).
fn comparison_model() -> Network {
    tch::set_num_threads(1);
    common::train_digits_model("digits-cnn", 3, 17)
}

#[test]
fn randomised_attacks_give_the_same_result_at_batch_sizes_1_7_and_256() {
    let network = comparison_model();
    let subset = digits_test().class_balanced_subset(5).unwrap();
    let eps = 0.1;
    let attacks_under_test: Vec<Box<dyn Attack>> = vec![
        Box::new(Pgd::pgd20(eps, 3)),
        Box::new(CarliniWagnerLinf::cw30(eps, 3)),
        Box::new(Apgd { steps: 20, ..Apgd::ce(eps, 3) }),
        Box::new(Apgd { steps: 20, restarts: 2, ..Apgd::dlr(eps, 3) }),
        Box::new(Apgd { steps: 10, ..Apgd::targeted(eps, 3, 3) }),
        Box::new(Fab { steps: 20, restarts: 2, ..Fab::targeted(eps, 3, 3) }),
        Box::new(Square::new(eps, 100, 0.8, 3)),
        Box::new(AutoAttack::custom(
            eps,
            3,
            vec![
                Box::new(Apgd { steps: 10, ..Apgd::ce(eps, 3) }),
                Box::new(Apgd { steps: 10, ..Apgd::targeted(eps, 2, 3) }),
                Box::new(Square::new(eps, 100, 0.8, 3)),
            ],
        )),
    ];
    // The network itself, and the copy the evaluator attacks with at fp32 (the network as it
    // is). (The fp32-fast copy is only the same up to rounding, which depends on the batch.)
    let prepared = PreparedNetwork::new(&network, Precision::Fp32).unwrap();
    let models: [(&str, &dyn Classifier); 2] = [("network", &network), ("prepared", &prepared)];
    for (attack, (model_name, model)) in attacks_under_test.iter().flat_map(|a| models.iter().map(move |m| (a, *m))) {
        let points = Batch::from_dataset(&subset, attack.seed());
        let per_point = |batch_size: i64| {
            let run = attacks::run_points(attack.as_ref(), model, &points, batch_size, Interrupt::NEVER, true, &mut |_| {}).unwrap();
            (flags(&run.robust), run.adversarial.unwrap())
        };
        let (one, one_points) = per_point(1);
        let (seven, seven_points) = per_point(7);
        let (all, all_points) = per_point(256);
        println!("{}, {model_name}: {} of {} robust", attack.name(), one.iter().sum::<i64>(), one.len());
        assert_eq!(one, seven, "{}: batch size 1 and 7 disagree at points {:?}", attack.name(), differing(&one, &seven));
        assert_eq!(one, all, "{}: batch size 1 and 256 disagree at points {:?}", attack.name(), differing(&one, &all));
        let gap = |a: &Tensor, b: &Tensor| f64::try_from((a - b).abs().max()).unwrap();
        assert!(
            gap(&one_points, &seven_points) < 1e-5 && gap(&one_points, &all_points) < 1e-5,
            "{}: the points found differ",
            attack.name()
        );
    }
}

/// Dropping a point from APGD and FAB as soon as it is broken (on by default) leaves every
/// point's verdict as it is: the state is per point.
#[test]
fn dropping_broken_points_changes_no_verdict() {
    let network = comparison_model();
    let subset = digits_test().class_balanced_subset(10).unwrap();
    let eps = 0.06;
    let cases: Vec<(Box<dyn Attack>, Box<dyn Attack>)> = vec![
        (Box::new(Apgd { steps: 50, ..Apgd::ce(eps, 2) }), Box::new(Apgd { steps: 50, drop_broken: false, ..Apgd::ce(eps, 2) })),
        (
            Box::new(Apgd { steps: 20, restarts: 2, ..Apgd::targeted(eps, 3, 2) }),
            Box::new(Apgd { steps: 20, restarts: 2, drop_broken: false, ..Apgd::targeted(eps, 3, 2) }),
        ),
        (
            Box::new(Fab { steps: 30, restarts: 2, ..Fab::targeted(eps, 3, 2) }),
            Box::new(Fab { steps: 30, restarts: 2, drop_broken: false, ..Fab::targeted(eps, 3, 2) }),
        ),
    ];
    for (dropping, keeping) in cases {
        let verdicts = |attack: &dyn Attack| {
            let run =
                attacks::run_points(attack, &network, &Batch::from_dataset(&subset, 2), 256, Interrupt::NEVER, false, &mut |_| {}).unwrap();
            (flags(&run.robust), run.components[0].seconds)
        };
        let ((dropped, fast), (kept, slow)) = (verdicts(dropping.as_ref()), verdicts(keeping.as_ref()));
        println!(
            "{}: {} of 100 robust either way; {fast:.1} s dropping broken points, {slow:.1} s keeping them",
            dropping.name(),
            dropped.iter().sum::<i64>()
        );
        assert_eq!(dropped, kept, "{}: points {:?} changed verdict", dropping.name(), differing(&dropped, &kept));
        assert!(dropped.iter().sum::<i64>() < 90, "{}: too few points broken for the test to see anything", dropping.name());
    }
}

/// Our AutoAttack components and torchattacks' (the port of the reference), on the same weights,
/// the same 100 digits test points and, for APGD-CE and APGD-T, the same random starts (the
/// script draws them from our streams). APGD and FAB-T then compute the same thing in the same
/// order, so the points robust after each of them must be the same ones: chained as AutoAttack
/// runs them, and each alone on every point (where APGD-T and FAB-T have work to do, which in
/// the chain APGD-CE mostly leaves them none of), at 100 iterations and at 20 (a schedule the
/// reference computes differently from the paper's rounded formula). Square draws its windows
/// per batch in the reference and per point here: its differences must all be points whose fate
/// depends on the draws (they change with the seed on one side or the other).
#[test]
fn autoattack_components_agree_point_by_point_with_torchattacks() {
    let network = comparison_model();
    let subset = digits_test().class_balanced_subset(10).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = save_model(dir.path(), &network);
    let points_file = save_points(dir.path(), &subset);
    let reference = |components: &str, eps: f64, steps: i64, seed: u64| -> Value {
        let output = common::run_python_script(
            "reference_autoattack.py",
            &[
                checkpoint.display().to_string(),
                points_file.display().to_string(),
                format!("--eps={eps}"),
                format!("--seed={seed}"),
                format!("--steps={steps}"),
                format!("--queries={steps}"),
                format!("--components={components}"),
                "--shared-starts".into(),
            ],
        );
        serde_json::from_str(output.trim()).unwrap()
    };
    let ours = |components: Vec<Box<dyn Attack>>, eps: f64, seed: u64| {
        let ensemble = AutoAttack::custom(eps, seed, components);
        attacks::run_points(&ensemble, &network, &Batch::from_dataset(&subset, seed), 256, Interrupt::NEVER, false, &mut |_| {}).unwrap()
    };
    let compare = |label: &str, run: &attacks::PointsRun, theirs: &Value| {
        let components = theirs["components"].as_array().unwrap();
        assert_eq!(run.components.len(), components.len(), "{label}: components run");
        for (k, component) in run.components.iter().enumerate() {
            let our_flags = flags(&component.robust_after);
            let their_flags = json_flags(&components[k]["robust_flags"]);
            println!(
                "{label}, after {}: ours {} robust of 100 ({:.1} s), torchattacks {} ({:.1} s)",
                component.name,
                our_flags.iter().sum::<i64>(),
                component.seconds,
                their_flags.iter().sum::<i64>(),
                components[k]["seconds"].as_f64().unwrap()
            );
            assert_eq!(
                our_flags,
                their_flags,
                "{label}, after {}: points {:?} differ",
                component.name,
                differing(&our_flags, &their_flags)
            );
        }
    };

    const CHAIN_EPS: f64 = 0.125;
    const ALONE_EPS: f64 = 0.06;
    for steps in [100, 20] {
        let chain = ours(
            vec![
                Box::new(Apgd { steps, ..Apgd::ce(CHAIN_EPS, 0) }),
                Box::new(Apgd { steps, ..Apgd::targeted(CHAIN_EPS, 9, 0) }),
                Box::new(Fab { steps, ..Fab::targeted(CHAIN_EPS, 9, 0) }),
            ],
            CHAIN_EPS,
            0,
        );
        compare(&format!("chain, eps {CHAIN_EPS}, {steps} iterations"), &chain, &reference("apgd-ce,apgd-t,fab-t", CHAIN_EPS, steps, 0));
        let apgd_t = ours(vec![Box::new(Apgd { steps, ..Apgd::targeted(ALONE_EPS, 9, 0) })], ALONE_EPS, 0);
        compare(&format!("APGD-T alone, eps {ALONE_EPS}, {steps} iterations"), &apgd_t, &reference("apgd-t", ALONE_EPS, steps, 0));
        let fab = ours(vec![Box::new(Fab { steps, ..Fab::targeted(ALONE_EPS, 9, 0) })], ALONE_EPS, 0);
        compare(&format!("FAB-T alone, eps {ALONE_EPS}, {steps} iterations"), &fab, &reference("fab-t", ALONE_EPS, steps, 0));
    }

    // Single runs: the best loss of every point is a function of its whole trajectory, so it
    // shows any difference in the step-size schedule, its conditions or the update.
    let clean_points = {
        let correct = attacks::run_points(
            &AutoAttack::custom(ALONE_EPS, 0, vec![]),
            &network,
            &Batch::from_dataset(&subset, 0),
            256,
            Interrupt::NEVER,
            false,
            &mut |_| {},
        )
        .unwrap()
        .robust;
        let index: Vec<i64> = flags(&correct).iter().enumerate().filter(|(_, &f)| f == 1).map(|(i, _)| i as i64).collect();
        subset.select(&index)
    };
    for (steps, which, rank) in [(100, "ce", 0), (20, "ce", 0), (37, "ce", 0), (100, "t:1", 1), (20, "t:2", 2)] {
        let theirs = {
            let output = common::run_python_script(
                "reference_autoattack.py",
                &[
                    checkpoint.display().to_string(),
                    points_file.display().to_string(),
                    format!("--eps={ALONE_EPS}"),
                    format!("--steps={steps}"),
                    format!("--single-run={which}"),
                    "--shared-starts".into(),
                ],
            );
            serde_json::from_str::<Value>(output.trim()).unwrap()
        };
        let attack =
            if which == "ce" { Apgd { steps, ..Apgd::ce(ALONE_EPS, 0) } } else { Apgd { steps, ..Apgd::targeted(ALONE_EPS, 9, 0) } };
        let run = attack.run_once(&network, &Batch::from_dataset(&clean_points, 0), rank, 0).unwrap();
        let our_loss = Vec::<f32>::try_from(&run.best_loss).unwrap();
        let their_loss: Vec<f32> = theirs["best_loss"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        assert_eq!(our_loss.len(), their_loss.len());
        let worst = our_loss.iter().zip(&their_loss).map(|(a, b)| (a - b).abs() / b.abs().max(1.0)).fold(0.0f32, f32::max);
        println!(
            "APGD single run {which}, {steps} iterations, {} points: largest relative difference of the best loss {worst:.2e}",
            our_loss.len()
        );
        assert!(worst < 1e-4, "APGD {which} at {steps} iterations: best losses differ by up to {worst}");
        assert_eq!(flags(&run.robust), json_flags(&theirs["robust_flags"]), "APGD {which} at {steps} iterations: robust flags differ");
    }

    // Square alone, 300 queries, three seeds on each side.
    const QUERIES: i64 = 300;
    let seeds = [0u64, 1, 2];
    let our_square: Vec<Vec<i64>> = seeds
        .iter()
        .map(|&seed| flags(&ours(vec![Box::new(Square::new(ALONE_EPS, QUERIES, 0.8, seed))], ALONE_EPS, seed).robust))
        .collect();
    let their_square: Vec<Vec<i64>> =
        seeds.iter().map(|&seed| json_flags(&reference("square", ALONE_EPS, QUERIES, seed)["robust_flags"])).collect();
    let varies = |runs: &Vec<Vec<i64>>, i: usize| runs.iter().any(|r| r[i] != runs[0][i]);
    let differences = differing(&our_square[0], &their_square[0]);
    let unexplained: Vec<usize> = differences.iter().copied().filter(|&i| !varies(&our_square, i) && !varies(&their_square, i)).collect();
    let totals = |runs: &Vec<Vec<i64>>| runs.iter().map(|r| r.iter().sum::<i64>()).collect::<Vec<_>>();
    println!(
        "Square alone, eps {ALONE_EPS}, {QUERIES} queries: robust per seed ours {:?}, torchattacks {:?}; \
         points differing at seed 0 {differences:?}, of which unexplained by the seed {unexplained:?}",
        totals(&our_square),
        totals(&their_square)
    );
    let clean = attacks::clean_accuracy(&network, &subset, 256).unwrap().correct.iter().sum::<i64>();
    assert!(our_square[0].iter().sum::<i64>() < clean, "Square broke nothing: the comparison is blind");
    assert!(unexplained.is_empty(), "Square differs at points {unexplained:?} whose outcome no seed changes");
}

/// CW-inf (kappa 50, 30 steps) against an independent PyTorch PGD on the reference evaluation
/// code's CW loss, on a model whose logits are large (the trained model's last layer scaled by
/// 100, which puts the median clean margin far above kappa, as the ResNet-18 scaled by
/// 20 had), from the same random starts: the points robust must be the same ones (within one).
/// The loss this project used before, max(other - true, -kappa), is run beside it to show the
/// deviation the comparison guards against.
#[test]
fn cw_inf_agrees_with_the_reference_loss_on_a_model_with_large_logits() {
    const EPS: f64 = 0.15;
    let network = comparison_model();
    tch::no_grad(|| {
        for (name, mut variable) in network.var_store.variables() {
            if name.starts_with("linear.") {
                let scaled = &variable * 100.0;
                variable.copy_(&scaled);
            }
        }
    });
    let subset = digits_test().class_balanced_subset(10).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = save_model(dir.path(), &network);
    let points_file = save_points(dir.path(), &subset);
    let output = common::run_python_script(
        "reference_pgd.py",
        &[
            checkpoint.display().to_string(),
            points_file.display().to_string(),
            format!("--eps={EPS}"),
            "--loss=cw".into(),
            "--kappa=50".into(),
            "--steps=30".into(),
            // Our CW-inf steps by eps/4 (the paper's 2/255 at 8/255); the reference is told.
            format!("--step-size={}", EPS / 4.0),
            "--seed=4".into(),
            "--shared-starts".into(),
        ],
    );
    let theirs: Value = serde_json::from_str(output.trim()).unwrap();
    let ours = attacks::run_points(
        &CarliniWagnerLinf::cw30(EPS, 4),
        &network,
        &Batch::from_dataset(&subset, 4),
        256,
        Interrupt::NEVER,
        false,
        &mut |_| {},
    )
    .unwrap();
    let (our_flags, their_flags) = (flags(&ours.robust), json_flags(&theirs["robust_flags"]));
    let clean = attacks::clean_accuracy(&network, &subset, 256).unwrap().correct.iter().sum::<i64>();
    // The earlier loss, floored at -kappa: zero gradient wherever the true logit leads by more
    // than kappa.
    tch::manual_seed(4);
    let (images, labels) = (&subset.images, &subset.labels);
    let floored = |logits: &Tensor| (-losses::margin(logits, labels)).clamp_min(-50.0);
    let old = attacks::maximize(&network, images, EPS, EPS / 4.0, 30, attacks::Start::Uniform, floored).unwrap();
    let old_robust =
        i64::try_from(tch::no_grad(|| network.forward_t(&old, false).argmax(-1, false).eq_tensor(labels)).sum(Kind::Int64)).unwrap();
    let ours_robust = our_flags.iter().sum::<i64>();
    println!(
        "median clean margin {:.0}; clean {clean} / 100; CW-inf robust: ours {ours_robust}, reference loss {}, \
         the earlier floored loss {old_robust}; differing points {:?}",
        theirs["median_clean_margin"].as_f64().unwrap(),
        theirs["robust_correct"],
        differing(&our_flags, &their_flags)
    );
    assert!(theirs["median_clean_margin"].as_f64().unwrap() > 100.0, "the logits are not large: the test cannot see the old loss's flaw");
    assert!(ours_robust < clean, "CW-inf moved nothing");
    assert!(
        old_robust >= ours_robust + 10,
        "the floored loss is not visibly weaker here ({old_robust} vs {ours_robust}): the test is blind to it"
    );
    assert!(differing(&our_flags, &their_flags).len() <= 1, "CW-inf and the reference loss disagree on more than one point");
}
