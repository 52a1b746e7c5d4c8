//! The soft-label adversarial distillation step shared by RSLAD, ABSLD and Fair-RSLAD (paper
//! Eq. 11-12): soft labels from the teacher's clean logits at per-class temperatures, the inner
//! maximisation of KL(p_adv || f_s(x_adv)) from x + 0.001 N(0, 1) with the student in eval
//! mode, and the loss alpha * KL(p_adv || f_s(x_adv)) + (1 - alpha) * KL(p_nat || f_s(x)).
//!
//! **The KL's scale.** Eq. 11 writes the KL summed over classes; the authors' scripts
//! (zhaoshiji123/ABSLD `resnet18_absld_cifar10.py`, zibojia/RSLAD `resnet18_rslad_cifar10.py`)
//! take `torch.mean` of the element-wise KL over the whole batch-by-class tensor, i.e. the
//! class-summed KL averaged over the batch *and divided by C = 10*; RSLAD's CIFAR-100 script
//! multiplies that mean by 10 "to keep consistent with CIFAR-10", which is again the batch mean
//! divided by 10. Under SGD with weight decay a constant factor on the loss is not neutral (it
//! moves the balance between the loss gradient and the decay, and the effective learning
//! rate), so the loss is `kl_scale` times the batch mean of the class-summed KL, with
//! `kl_scale` from the recipe (0.1 for these methods; see docs/absld.md). The authors' element
//! `-a b + b log(b + 1e-5)` differs from b (log b - a) only in a term constant in the
//! student's logits, so the gradients are the same.

use rfb_core::attacks::{self, losses, Start};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::method::{StepContext, StepOutput};

/// RSLAD's (and ABSLD's) loss weights: alpha on the adversarial term, and the KL's scale.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DistillationSettings {
    /// Weight of the adversarial term of Eq. 11 (5/6).
    pub alpha: f64,
    /// Factor on the batch mean of the class-summed KL (module docs).
    pub kl_scale: f64,
}

/// softmax(z_i / tau_{y_i}) for every sample at once: the temperatures are gathered per
/// sample by label, never looped over.
pub fn soft_labels_at(teacher_logits: &Tensor, labels: &Tensor, temperatures: &Tensor) -> Tensor {
    let per_sample = temperatures.index_select(0, labels).unsqueeze(1);
    (teacher_logits / per_sample).softmax(-1, Kind::Float)
}

/// Eq. 11 at the reference scale: kl_scale * (alpha * mean_i w_i KL(p_adv_i || f_s(x_adv_i)) +
/// (1 - alpha) * mean_i w_i KL(p_nat_i || f_s(x_i))), the KL summed over classes, w_i the
/// example weights (Fair-RSLAD's class weights; 1 without them).
pub fn distillation_loss(
    adversarial_logits: &Tensor,
    clean_logits: &Tensor,
    adversarial_targets: &Tensor,
    clean_targets: &Tensor,
    settings: DistillationSettings,
    example_weights: Option<&Tensor>,
) -> Tensor {
    let reduce = |per_example: Tensor| match example_weights {
        Some(weights) => (per_example * weights).mean(Kind::Float),
        None => per_example.mean(Kind::Float),
    };
    let adversarial = reduce(losses::kl_to_soft_labels(adversarial_logits, adversarial_targets));
    let clean = reduce(losses::kl_to_soft_labels(clean_logits, clean_targets));
    (adversarial * settings.alpha + clean * (1.0 - settings.alpha)) * settings.kl_scale
}

/// One distillation step with the given temperature vectors (on the student's device).
pub fn distillation_step(
    context: &StepContext,
    images: &Tensor,
    labels: &Tensor,
    clean_temperatures: &Tensor,
    adversarial_temperatures: &Tensor,
    settings: DistillationSettings,
) -> StepOutput {
    weighted_distillation_step(
        context,
        images,
        labels,
        SoftLabelTemperatures { clean: clean_temperatures, adversarial: adversarial_temperatures },
        settings,
        None,
        |_, _, _| {},
    )
}

/// The class-wise teacher temperatures of the clean and the adversarial soft labels.
pub struct SoftLabelTemperatures<'a> {
    pub clean: &'a Tensor,
    pub adversarial: &'a Tensor,
}

/// [`distillation_step`] with a weight per example on both KL terms (Fair-RSLAD's class
/// re-weighting; the loss is the weighted batch mean) and an observer of the inner
/// maximisation's iterates (see [`attacks::maximize_per_example`]).
pub fn weighted_distillation_step(
    context: &StepContext,
    images: &Tensor,
    labels: &Tensor,
    temperatures: SoftLabelTemperatures,
    settings: DistillationSettings,
    example_weights: Option<&Tensor>,
    observe: impl FnMut(i64, &Tensor, &Tensor),
) -> StepOutput {
    let teacher = context.teacher.expect("distillation needs a teacher; the loop checks this");
    let teacher_logits = tch::no_grad(|| teacher.forward_t(images, false));
    let adversarial_targets = soft_labels_at(&teacher_logits, labels, temperatures.adversarial);
    let clean_targets = soft_labels_at(&teacher_logits, labels, temperatures.clean);
    let attack = context.attack;
    let batch = images.size()[0];
    let options = (images.kind(), images.device());
    // The inner maximisation's scale does not matter (only the gradient's sign is used).
    let adversarial = attacks::maximize_per_example(
        context.student,
        images,
        &Tensor::full([batch], attack.eps, options),
        &Tensor::full([batch], attack.step_size, options),
        attack.steps,
        Start::Gaussian(0.001),
        |logits| losses::kl_to_soft_labels(logits, &adversarial_targets),
        observe,
    )
    .unwrap_or_else(crate::method::inner_maximisation_failed);
    let adversarial_logits = context.student.forward_t(&adversarial, true);
    let clean_logits = context.student.forward_t(images, true);
    let loss = distillation_loss(&adversarial_logits, &clean_logits, &adversarial_targets, &clean_targets, settings, example_weights);
    StepOutput { loss, clean_logits: clean_logits.detach(), adversarial_logits: Some(adversarial_logits.detach()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_is_the_authors_batch_by_class_mean_worked_by_hand() {
        // Two examples, two classes. Targets p1 = (0.5, 0.5), p2 = (0.8, 0.2); student logits
        // z1 = (ln 3, 0) -> q1 = (0.75, 0.25), z2 = (0, 0) -> q2 = (0.5, 0.5).
        // KL(p1 || q1) = 0.5 ln(0.5/0.75) + 0.5 ln(0.5/0.25) = 0.143841;
        // KL(p2 || q2) = 0.8 ln 1.6 + 0.2 ln 0.4 = 0.192745.
        // The authors' mean over the 2 x 2 elements: (0.143841 + 0.192745) / 4 = 0.084147,
        // which is the class-summed batch mean 0.168293 times 1/C = 1/2.
        let logits = Tensor::from_slice(&[3f32.ln(), 0.0, 0.0, 0.0]).view([2, 2]);
        let targets = Tensor::from_slice(&[0.5f32, 0.5, 0.8, 0.2]).view([2, 2]);
        let at = |alpha: f64, kl_scale: f64| {
            let settings = DistillationSettings { alpha, kl_scale };
            f64::try_from(distillation_loss(&logits, &logits, &targets, &targets, settings, None)).unwrap()
        };
        assert!((at(5.0 / 6.0, 0.5) - 0.084147).abs() < 1e-5, "{}", at(5.0 / 6.0, 0.5));
        assert!((at(5.0 / 6.0, 1.0) - 0.168293).abs() < 1e-5);
        // alpha weighs the two terms: only the adversarial one (here the same logits) at 1.
        assert!((at(1.0, 0.1) - 0.0168293).abs() < 1e-6);
        // Example weights (2, 0) keep the first example only: 2 * 0.143841 / 2.
        let weights = Tensor::from_slice(&[2.0f32, 0.0]);
        let settings = DistillationSettings { alpha: 0.5, kl_scale: 1.0 };
        let weighted = f64::try_from(distillation_loss(&logits, &logits, &targets, &targets, settings, Some(&weights))).unwrap();
        assert!((weighted - 0.143841).abs() < 1e-5, "{weighted}");
    }
}
