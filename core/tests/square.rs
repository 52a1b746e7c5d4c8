//! Square attack on real computation: a naturally trained (non-robust) digits CNN queried
//! through a wrapper that refuses gradients and counts queries per image, the p schedule and
//! window side against the reference's formulas, and determinism for a seed on CPU.

mod common;

use std::cell::RefCell;

use rfb_core::attacks::{self, Attack, Classifier, Square};
use rfb_core::data::{self, DatasetKind, Split};
use rfb_core::models::Network;
use tch::{Device, Kind, Tensor};

const EPS: f64 = 0.1;

/// A network behind [`Classifier`] that panics if the attack could differentiate through it
/// (input requiring grad, or grad mode on: with frozen parameters, these are the only ways the
/// logits could carry a graph) and records which original image each queried row belongs to.
struct Guarded<'a> {
    network: &'a Network,
    /// The clean images, flattened [N, D], pairwise more than 2 eps apart in L-inf, so the
    /// only original within eps of a queried row is its own.
    originals: Tensor,
    queries: RefCell<Vec<i64>>,
    calls: RefCell<i64>,
}

impl<'a> Guarded<'a> {
    fn new(network: &'a Network, images: &Tensor) -> Self {
        let n = images.size()[0] as usize;
        Guarded { network, originals: images.flatten(1, -1), queries: RefCell::new(vec![0; n]), calls: RefCell::new(0) }
    }
}

impl Classifier for Guarded<'_> {
    fn logits(&self, images: &Tensor) -> Result<Tensor, tch::TchError> {
        Ok({
            assert!(!images.requires_grad(), "Square passed an input that requires grad");
            let probe = Tensor::ones([1], (Kind::Float, Device::Cpu)).set_requires_grad(true);
            assert!(!(&probe * 2.0).requires_grad(), "Square queried the model with grad mode on");
            let distances = (images.flatten(1, -1).unsqueeze(1) - self.originals.unsqueeze(0)).abs().amax([2i64].as_slice(), false);
            let (nearest, owner) = distances.min_dim(1, false);
            let farthest = f64::try_from(nearest.max()).unwrap();
            assert!(farthest <= EPS + 1e-6, "a queried row is {farthest} from every original");
            let mut queries = self.queries.borrow_mut();
            for index in Vec::<i64>::try_from(owner).unwrap() {
                queries[index as usize] += 1;
            }
            *self.calls.borrow_mut() += 1;
            let logits = self.network.forward_t(images, false);
            assert!(!logits.requires_grad());
            logits
        })
    }
    fn device(&self) -> Device {
        Device::Cpu
    }
}

/// The digits test images (20 per class), minus any within 2 eps of an earlier kept one, so
/// that [`Guarded`] can attribute queries to images.
fn separated_test_images() -> (Tensor, Tensor) {
    let test = data::load(DatasetKind::Digits, Split::Test, None).unwrap().class_balanced_subset(20).unwrap();
    let flat = test.images.flatten(1, -1);
    let mut kept: Vec<i64> = Vec::new();
    for i in 0..flat.size()[0] {
        let far = kept.iter().all(|&j| f64::try_from((flat.get(i) - flat.get(j)).abs().max()).unwrap() > 2.0 * EPS + 1e-6);
        if far {
            kept.push(i);
        }
    }
    let index = Tensor::from_slice(&kept);
    (test.images.index_select(0, &index), test.labels.index_select(0, &index))
}

fn correct(network: &Network, images: &Tensor, labels: &Tensor) -> Tensor {
    tch::no_grad(|| network.forward_t(images, false).argmax(-1, false).eq_tensor(labels))
}

fn count(mask: &Tensor) -> i64 {
    i64::try_from(mask.to_kind(Kind::Int64).sum(Kind::Int64)).unwrap()
}

#[test]
fn square_breaks_a_non_robust_digits_model_without_gradients_within_budget() {
    let network = common::train_digits_model("digits-cnn", 5, 11);
    let started = std::time::Instant::now();
    let (images, labels) = separated_test_images();
    let n = images.size()[0];
    assert!(n >= 150, "only {n} test images are 2 eps apart");
    let budget = 300;
    // A short budget: the schedule rescaled to it, as the standalone reference does by default
    // (AutoAttack's unrescaled schedule is made for 5000 queries).
    let square = Square { rescale_schedule: true, ..Square::new(EPS, budget, 0.8, 5) };
    assert_eq!(square.name(), "Square");
    let model = Guarded::new(&network, &images);
    let adversarial = attacks::perturb_batch(&square, &model, &images, &labels).unwrap();
    attacks::verify_adversarial("Square", &images, &adversarial, EPS).unwrap();

    let clean_correct = correct(&network, &images, &labels);
    let adv_correct = correct(&network, &adversarial, &labels);
    let clean = 100.0 * count(&clean_correct) as f64 / n as f64;
    let robust = 100.0 * count(&adv_correct) as f64 / n as f64;
    let queries = model.queries.borrow().clone();
    let calls = *model.calls.borrow();
    let broken: Vec<bool> = Vec::<bool>::try_from(&adv_correct.logical_not()).unwrap();
    let broken_queries: Vec<i64> = queries.iter().zip(&broken).filter(|(_, &b)| b).map(|(&q, _)| q).collect();
    let mean_broken = broken_queries.iter().sum::<i64>() as f64 / broken_queries.len().max(1) as f64;
    println!(
        "{n} images, eps {EPS}, {budget} queries: clean {clean:.1}% -> Square {robust:.1}%; \
         {calls} forward calls; mean queries per broken image {mean_broken:.1}; attack {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(clean > 90.0, "the model did not learn: {clean}");
    assert!(robust < clean - 40.0, "Square barely hurts a non-robust model: {clean} -> {robust}");

    // One forward pass per iteration for the whole batch, plus the clean check and the start.
    assert!(calls <= budget + 2, "{calls} forward calls for {budget} iterations");
    for (i, (&q, &b)) in queries.iter().zip(&broken).enumerate() {
        assert!(q >= 1 && q <= budget + 2, "image {i} was queried {q} times");
        // A point the search never broke stays active for every iteration.
        if !b {
            assert_eq!(q, budget + 2, "unbroken image {i} was queried {q} times");
        }
    }
    // Broken points stop being queried: otherwise every image would use the full budget.
    assert!(mean_broken < 0.5 * budget as f64, "broken images used {mean_broken:.1} queries on average");

    // Every pixel sits at a vertex of the ball (x +- eps, clipped to [0, 1]): the stripes
    // start and every window put it there, and nothing else moves it.
    let up = (&images + EPS).clamp_max(1.0);
    let down = (&images - EPS).clamp_min(0.0);
    let at_vertex = adversarial.eq_tensor(&up).logical_or(&adversarial.eq_tensor(&down));
    // Points misclassified from the start are returned untouched instead.
    let clean_wrong = correct(&network, &images, &labels).logical_not();
    let untouched = adversarial.eq_tensor(&images).flatten(1, -1).all_dim(1, false);
    let at_vertex = at_vertex.flatten(1, -1).all_dim(1, false);
    assert!(bool::try_from(at_vertex.logical_or(&clean_wrong.logical_and(&untouched)).all()).unwrap(), "some pixels are not at x +- eps");
    assert!(bool::try_from(clean_wrong.logical_and(&untouched).eq_tensor(&clean_wrong).all()).unwrap(), "a misclassified point was moved");
}

#[test]
fn p_schedule_and_square_side_match_the_reference() {
    // AutoAttack runs Square with resc_schedule=False: `p_selection` of the reference
    // (fra31/auto-attack, square.py) gives p_init for it <= 10, p_init / 2 for 10 < it <= 50,
    // / 4 up to 200, / 8 up to 500, / 16 up to 1000, / 32 up to 2000, / 64 up to 4000, / 128 up
    // to 6000, / 256 up to 8000 and / 512 beyond, whatever the query budget.
    let standard = [
        (0, 0.8),
        (10, 0.8),
        (11, 0.4),
        (50, 0.4),
        (51, 0.2),
        (200, 0.2),
        (201, 0.1),
        (500, 0.1),
        (501, 0.05),
        (1000, 0.05),
        (1001, 0.025),
        (2000, 0.025),
        (2001, 0.0125),
        (4000, 0.0125),
        (4001, 0.00625),
        (4999, 0.00625),
    ];
    let square = Square::new(8.0 / 255.0, 5000, 0.8, 0);
    assert!(!square.rescale_schedule, "AutoAttack's Square does not rescale its schedule");
    for (iteration, p) in standard {
        assert_eq!(square.p_schedule(iteration), p, "5000 queries, iteration {iteration}");
    }
    // A smaller budget (AUTOATTACK_CUSTOM with steps 100) keeps the same breaks.
    let hundred = Square::new(0.1, 100, 0.8, 0);
    for (iteration, p) in [(0, 0.8), (10, 0.8), (11, 0.4), (50, 0.4), (51, 0.2), (99, 0.2)] {
        assert_eq!(hundred.p_schedule(iteration), p, "100 queries, iteration {iteration}");
    }
    let long = Square::new(0.1, 10_000, 0.8, 0);
    for (iteration, p) in [(6000, 0.00625), (6001, 0.003125), (8000, 0.003125), (8001, 0.0015625), (9999, 0.0015625)] {
        assert_eq!(long.p_schedule(iteration), p, "10 000 queries, iteration {iteration}");
    }

    // The standalone reference's default, resc_schedule=True: it = int(it / n_queries * 10000)
    // first. 5000 queries: 2i; 300 queries: int(i / 300 * 10000) = 33, 66, 200, 233 for
    // i = 1, 2, 6, 7.
    let rescaled = Square { rescale_schedule: true, ..Square::new(8.0 / 255.0, 5000, 0.8, 0) };
    for (iteration, p) in [(5, 0.8), (6, 0.4), (25, 0.4), (26, 0.2), (100, 0.2), (101, 0.1), (2000, 0.0125), (4001, 0.0015625)] {
        assert_eq!(rescaled.p_schedule(iteration), p, "5000 queries rescaled, iteration {iteration}");
    }
    let short = Square { rescale_schedule: true, ..Square::new(0.1, 300, 0.5, 0) };
    for (iteration, p) in [(0, 0.5), (1, 0.25), (2, 0.125), (6, 0.125), (7, 0.0625), (120, 0.5 / 64.0), (241, 0.5 / 512.0)] {
        assert_eq!(short.p_schedule(iteration), p, "300 queries rescaled, iteration {iteration}");
    }

    // CIFAR [3, 32, 32]: side = round(sqrt(p * 1024)).
    let cifar = [3, 32, 32];
    for (p, side) in
        [(0.8, 29), (0.4, 20), (0.2, 14), (0.1, 10), (0.05, 7), (0.025, 5), (0.0125, 4), (0.00625, 3), (0.003125, 2), (0.0015625, 1)]
    {
        assert_eq!(Square::square_side(p, cifar), side, "CIFAR, p = {p}");
    }
    // Digits [1, 8, 8]: sqrt(0.8 * 64) = 7.16 -> 7; sqrt(25/256 * 64) = 2.5 rounds to even (2),
    // as Python's round does; tiny p floors at 1; the side never exceeds min(h, w).
    assert_eq!(Square::square_side(0.8, [1, 8, 8]), 7);
    assert_eq!(Square::square_side(25.0 / 256.0, [1, 8, 8]), 2);
    assert_eq!(Square::square_side(0.001, [1, 8, 8]), 1);
    assert_eq!(Square::square_side(1.0, [1, 8, 6]), 6);
}

#[test]
fn square_is_deterministic_for_a_seed_on_cpu_and_rejects_bad_parameters() {
    let network = common::train_digits_model("digits-cnn", 2, 3);
    let test = data::load(DatasetKind::Digits, Split::Test, None).unwrap().class_balanced_subset(6).unwrap();
    let square = Square::new(EPS, 60, 0.8, 9);
    let run = |seed: u64| attacks::perturb_batch(&Square { seed, ..square.clone() }, &network, &test.images, &test.labels).unwrap();
    let first = run(7);
    let again = run(7);
    let other = run(8);
    attacks::verify_adversarial("Square", &test.images, &first, EPS).unwrap();
    assert!(first.equal(&again), "two runs with the same seed differ");
    assert!(!first.equal(&other), "the seed has no effect");

    // A second restart only revisits unbroken points and keeps the bounds.
    let twice = attacks::perturb_batch(&Square { restarts: 2, ..square.clone() }, &network, &test.images, &test.labels).unwrap();
    attacks::verify_adversarial("Square", &test.images, &twice, EPS).unwrap();

    for bad in [
        Square::new(EPS, 0, 0.8, 0),
        Square::new(EPS, 10, 0.0, 0),
        Square::new(-0.1, 10, 0.8, 0),
        Square { restarts: 0, ..Square::new(EPS, 10, 0.8, 0) },
    ] {
        assert!(attacks::perturb_batch(&bad, &network, &test.images, &test.labels).is_err(), "{bad:?} was accepted");
    }
}
