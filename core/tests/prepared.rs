//! The attack network a `PreparedNetwork` builds (batch norm folded into the convolutions,
//! channels-last weights) computes the same function as the network it copies, for every
//! architecture, with batch-norm statistics far from the identity so that folding has something
//! to get wrong. Logits agree within 1e-5. Input gradients agree within 1e-5 image by image,
//! except on an image where the different rounding flips a ReLU whose input lies within
//! rounding of 0, which changes that unit's share of the gradient a little at many input entries
//! (seen on preact-resnet18: up to 1.3e-3 of the largest entry, cosine 1 - 2e-7, with folding
//! alone as with the layout alone; more often on these random networks, whose random batch-norm
//! statistics put many units near 0, than on trained ones). Such images must keep the
//! gradient's direction to a cosine of 1 - 1e-5, and at least half of the images must agree to
//! 1e-5: a wrong fold or a wrong layout in the backward pass would miss both by far.

use rfb_core::attacks::{input_gradient, losses, Classifier};
use rfb_core::models::{self, ModelSpec, Network, Precision, PreparedNetwork};
use tch::{Device, Kind, Tensor};

/// A network with random weights and random, non-trivial batch-norm statistics and affine
/// parameters.
fn network(architecture: &str, input: [i64; 3]) -> Network {
    tch::manual_seed(11);
    let mut network = models::build(&ModelSpec::new(architecture, 10, input), Device::Cpu).unwrap();
    tch::no_grad(|| {
        // In name order: the var store's own order is a hash map's.
        let mut variables: Vec<(String, Tensor)> = network.var_store.variables().into_iter().collect();
        variables.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, mut variable) in variables {
            let shape = variable.size();
            let replacement = if name.ends_with("running_mean") {
                Tensor::randn(&shape, (Kind::Float, Device::Cpu)) * 0.3
            } else if name.ends_with("running_var") {
                Tensor::rand(&shape, (Kind::Float, Device::Cpu)) * 1.5 + 0.5
            } else if name.contains("bn") && name.ends_with("weight") {
                Tensor::rand(&shape, (Kind::Float, Device::Cpu)) + 0.5
            } else if name.contains("bn") && name.ends_with("bias") {
                Tensor::randn(&shape, (Kind::Float, Device::Cpu)) * 0.2
            } else {
                continue;
            };
            variable.copy_(&replacement);
        }
    });
    network.set_trainable(false);
    network
}

fn relative_gap(a: &Tensor, b: &Tensor) -> f64 {
    let scale = f64::try_from(b.abs().max()).unwrap().max(1e-12);
    f64::try_from((a - b).abs().max()).unwrap() / scale
}

#[test]
fn the_folded_channels_last_copy_computes_the_same_logits_and_gradients() {
    let cases: [(&str, [i64; 3]); 6] = [
        ("resnet18", [3, 32, 32]),
        ("preact-resnet18", [3, 32, 32]),
        ("mobilenet-v2", [3, 32, 32]),
        ("wrn-16-2", [3, 32, 32]),
        ("digits-cnn", [1, 8, 8]),
        ("digits-cnn-wide", [1, 8, 8]),
    ];
    for (architecture, input) in cases {
        let source = network(architecture, input);
        let prepared = PreparedNetwork::new(&source, Precision::Fp32Fast).unwrap();
        let mut shape = vec![6i64];
        shape.extend(input);
        let images = Tensor::rand(&shape, (Kind::Float, Device::Cpu));
        let labels = Tensor::from_slice(&[0i64, 1, 2, 3, 4, 5]);
        let loss = |logits: &Tensor| losses::cross_entropy(logits, &labels);
        let (gradient, logits) = input_gradient(&source, &images, loss).unwrap();
        let (fast_gradient, fast_logits) = input_gradient(&prepared, &images, loss).unwrap();
        let mut folded = network(architecture, input);
        assert!(folded.fold_batch_norm(&|t: &Tensor| t.shallow_clone()) > 0);
        let (folded_gradient, folded_logits) = input_gradient(&folded, &images, loss).unwrap();
        for (what, other_logits, other_gradient) in
            [("folded", &folded_logits, &folded_gradient), ("prepared", &fast_logits, &fast_gradient)]
        {
            let logit_gap = relative_gap(other_logits, &logits);
            assert!(logit_gap < 1e-5, "{architecture}, {what}: logits differ by {logit_gap}");
            let mut kinked = 0;
            for i in 0..6 {
                let (a, b) = (other_gradient.get(i), gradient.get(i));
                let gap = relative_gap(&a, &b);
                let cosine = f64::try_from((&a * &b).sum(Kind::Double) / (a.norm() * b.norm()).to_kind(Kind::Double)).unwrap();
                if gap >= 1e-5 {
                    kinked += 1;
                    println!("{architecture}, {what}: image {i} input gradient differs by {gap:.1e}, cosine {cosine:.10}");
                    assert!(cosine > 1.0 - 1e-5, "{architecture}, {what}: image {i}'s input gradient turned (cosine {cosine})");
                }
            }
            println!("{architecture}, {what}: logits within {logit_gap:.1e}; {} of 6 input gradients within 1e-5", 6 - kinked);
            assert!(kinked <= 3, "{architecture}, {what}: {kinked} of 6 input gradients differ by more than 1e-5");
        }
        // The judge is the source itself.
        assert!(prepared.judge_logits(&images).unwrap().equal(&source.forward_t(&images, false)));
        assert!(!prepared.has_separate_judge() && prepared.exact().is_some());
    }
}

#[test]
fn folding_only_changes_eval_mode_and_counts_the_pairs() {
    let mut folded = network("resnet18", [3, 32, 32]);
    let reference = network("resnet18", [3, 32, 32]);
    // The stem, two per block, and the three projections: 1 + 16 + 3.
    assert_eq!(folded.fold_batch_norm(&|t: &Tensor| t.shallow_clone()), 20);
    let images = Tensor::rand([4, 3, 32, 32], (Kind::Float, Device::Cpu));
    let gap = relative_gap(&folded.forward_t(&images, false), &reference.forward_t(&images, false));
    assert!(gap < 1e-5, "eval-mode logits differ by {gap}");
    // Train mode still runs the unfolded layers with batch statistics.
    let train_gap = relative_gap(&folded.forward_t(&images, true), &reference.forward_t(&images, true));
    assert_eq!(train_gap, 0.0);
    let mut preact = network("preact-resnet18", [3, 32, 32]);
    assert_eq!(preact.fold_batch_norm(&|t: &Tensor| t.shallow_clone()), 8, "one pair per pre-activation block");
}

/// digits-cnn pools in channels-last layout when no gradient is asked for (libtorch's NCHW
/// max-pool kernel is the slow one) and in NCHW otherwise: both must give the same logits bit
/// for bit, for the network as it is and for its folded channels-last copy, at any batch size.
#[test]
fn digits_cnn_gives_the_same_logits_with_and_without_a_gradient() {
    tch::set_num_threads(1);
    let source = network("digits-cnn", [1, 8, 8]);
    let fast = PreparedNetwork::new(&source, Precision::Fp32Fast).unwrap();
    let test = rfb_core::data::load(rfb_core::data::DatasetKind::Digits, rfb_core::data::Split::Test, None).unwrap();
    for batch in [1i64, 7, 64] {
        let images = test.images.narrow(0, 0, batch);
        for (name, model) in [("fp32", &source as &dyn Classifier), ("fp32-fast", &fast as &dyn Classifier)] {
            let without = tch::no_grad(|| model.logits(&images).unwrap());
            let with = model.logits(&images.detach().set_requires_grad(true)).unwrap();
            assert!(with.requires_grad(), "{name}: the gradient pass did not record a graph");
            assert!(without.equal(&with.detach()), "{name}, batch {batch}: logits differ by {}", relative_gap(&without, &with.detach()));
        }
    }
}
