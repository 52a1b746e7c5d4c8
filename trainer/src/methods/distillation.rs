//! The soft-label adversarial distillation step shared by RSLAD and ABSLD (paper Eq. 11-12):
//! soft labels from the teacher's clean logits at per-class temperatures, the inner
//! maximisation of KL(p_adv || f_s(x_adv)) from x + 0.001 N(0, 1) with the student in eval
//! mode, and the loss alpha * KL(p_adv || f_s(x_adv)) + (1 - alpha) * KL(p_nat || f_s(x)).

use rfb_core::attacks::{self, losses, Start};
use tch::{Kind, Tensor};

use crate::method::{StepContext, StepOutput};

/// softmax(z_i / tau_{y_i}) for every sample at once: the temperatures are gathered per
/// sample by label, never looped over.
pub fn soft_labels_at(teacher_logits: &Tensor, labels: &Tensor, temperatures: &Tensor) -> Tensor {
    let per_sample = temperatures.index_select(0, labels).unsqueeze(1);
    (teacher_logits / per_sample).softmax(-1, Kind::Float)
}

/// One distillation step with the given temperature vectors (on the student's device).
pub fn distillation_step(
    context: &StepContext,
    images: &Tensor,
    labels: &Tensor,
    clean_temperatures: &Tensor,
    adversarial_temperatures: &Tensor,
    alpha: f64,
) -> StepOutput {
    weighted_distillation_step(
        context,
        images,
        labels,
        clean_temperatures,
        adversarial_temperatures,
        alpha,
        None,
        |_, _, _| {},
    )
}

/// [`distillation_step`] with a weight per example on both KL terms (Fair-ARD's class
/// re-weighting; the loss is the weighted batch mean) and an observer of the inner
/// maximisation's iterates (see [`attacks::maximize_per_example`]).
#[allow(clippy::too_many_arguments)]
pub fn weighted_distillation_step(
    context: &StepContext,
    images: &Tensor,
    labels: &Tensor,
    clean_temperatures: &Tensor,
    adversarial_temperatures: &Tensor,
    alpha: f64,
    example_weights: Option<&Tensor>,
    observe: impl FnMut(i64, &Tensor, &Tensor),
) -> StepOutput {
    let teacher = context
        .teacher
        .expect("distillation needs a teacher; the loop checks this");
    let teacher_logits = tch::no_grad(|| teacher.forward_t(images, false));
    let adversarial_targets = soft_labels_at(&teacher_logits, labels, adversarial_temperatures);
    let clean_targets = soft_labels_at(&teacher_logits, labels, clean_temperatures);
    let attack = context.attack;
    let batch = images.size()[0];
    let options = (images.kind(), images.device());
    let adversarial = attacks::maximize_per_example(
        context.student,
        images,
        &Tensor::full([batch], attack.eps, options),
        &Tensor::full([batch], attack.step_size, options),
        attack.steps,
        Start::Gaussian(0.001),
        |logits| losses::kl_to_soft_labels(logits, &adversarial_targets),
        observe,
    );
    let adversarial_logits = context.student.forward_t(&adversarial, true);
    let clean_logits = context.student.forward_t(images, true);
    let reduce = |per_example: Tensor| match example_weights {
        Some(weights) => (per_example * weights).mean(Kind::Float),
        None => per_example.mean(Kind::Float),
    };
    let adversarial_loss = reduce(losses::kl_to_soft_labels(&adversarial_logits, &adversarial_targets));
    let clean_loss = reduce(losses::kl_to_soft_labels(&clean_logits, &clean_targets));
    let loss = adversarial_loss * alpha + clean_loss * (1.0 - alpha);
    StepOutput {
        loss,
        clean_logits: clean_logits.detach(),
        adversarial_logits: Some(adversarial_logits.detach()),
    }
}
