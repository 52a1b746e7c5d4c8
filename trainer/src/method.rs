//! The interface every training method implements, one method per file in `methods/`.

use rfb_core::attacks::ClassCounts;
use rfb_core::models::Network;
use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::temperature::TemperatureSchedule;

/// The inner maximisation's threat model and steps (docs/absld.md: eps 8/255, 10 steps
/// of 2/255 on CIFAR).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TrainingAttack {
    pub eps: f64,
    pub step_size: f64,
    pub steps: i64,
}

/// What a method sees at each step.
pub struct StepContext<'a> {
    pub student: &'a Network,
    pub teacher: Option<&'a Network>,
    pub attack: TrainingAttack,
}

/// Ends the training process when libtorch fails inside the inner maximisation. Training runs
/// our own networks on checked data, where every other forward and backward pass of the loop
/// panics on a libtorch error in tch's infallible forms too; the run then continues from its
/// last saved state with `--resume` (the evaluator, which runs other people's models, returns
/// such failures as errors instead).
pub fn inner_maximisation_failed(error: rfb_core::attacks::AttackError) -> Tensor {
    panic!("the inner maximisation failed: {error}")
}

/// A step's loss (to back-propagate) and the detached student logits the loop turns into the
/// class-wise error risks R of Eq. 10.
pub struct StepOutput {
    pub loss: Tensor,
    pub clean_logits: Tensor,
    pub adversarial_logits: Option<Tensor>,
}

/// Per-class mean cross-entropy over an epoch (the error risk R_k of Eq. 10).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EpochRisks {
    pub clean: Vec<f64>,
    pub adversarial: Option<Vec<f64>>,
}

/// Clean and adversarial temperature vectors (ABSLD).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Temperatures {
    pub clean: Vec<f64>,
    pub adversarial: Vec<f64>,
}

/// What a method sees after each epoch.
pub struct EpochEnd<'a> {
    /// 0-based epoch that just finished, and the run's number of epochs.
    pub epoch: i64,
    pub epochs: i64,
    /// Class-wise mean cross-entropy of the epoch's training batches (R_k of Eq. 10).
    pub risks: &'a EpochRisks,
    /// Class-wise accuracy of the logits the steps returned (clean, and adversarial where the
    /// method attacks): CFA calibrates its margins and regularisation from these.
    pub train_clean_accuracy: &'a [f64],
    pub train_adversarial_accuracy: Option<&'a [f64]>,
    /// Class-wise clean and PGD counts of the student on the validation hold-out (never the
    /// test split, whatever the selection split), measured after this epoch when
    /// [`TrainingMethod::needs_validation`] asks for them (FRL, CFA).
    pub validation: Option<(&'a ClassCounts, &'a ClassCounts)>,
    /// Whether the learning rate drops before the next epoch.
    pub lr_decayed: bool,
    pub student: &'a Network,
}

/// A training method: the per-batch loss, and whatever it adapts between epochs.
pub trait TrainingMethod {
    fn name(&self) -> &'static str;

    /// Distillation methods need a frozen teacher.
    fn needs_teacher(&self) -> bool {
        false
    }

    /// Loss for one batch; the student is in train mode for the loss and eval mode while it is
    /// attacked. Randomness comes from libtorch's generator, seeded by the loop per batch.
    fn step(&mut self, context: &StepContext, images: &Tensor, labels: &Tensor) -> StepOutput;

    /// Called after each epoch with that epoch's class-wise statistics.
    fn end_epoch(&mut self, _end: &EpochEnd) {}

    /// Whether `end_epoch` needs class-wise accuracies on the validation hold-out every epoch
    /// (the loop then keeps the hold-out out of training, also when selecting on the test split).
    fn needs_validation(&self) -> bool {
        false
    }

    /// Weights to evaluate and save instead of the student's (CFA's fairness-aware weight
    /// average), by variable name; `None` while there are none.
    fn averaged_weights(&self) -> Option<&[(String, Tensor)]> {
        None
    }

    /// Tensors to save for `--resume` beside [`TrainingMethod::state`].
    fn tensor_state(&self) -> Vec<(String, Tensor)> {
        Vec::new()
    }

    fn restore_tensors(&mut self, _tensors: std::collections::HashMap<String, Tensor>) -> Result<(), String> {
        Ok(())
    }

    fn temperatures(&self) -> Option<Temperatures> {
        None
    }

    fn temperature_schedule(&self) -> Option<TemperatureSchedule> {
        None
    }

    /// State to save for `--resume` (beyond weights and optimiser).
    fn state(&self) -> serde_json::Value {
        serde_json::Value::Null
    }

    fn restore(&mut self, _state: &serde_json::Value) -> Result<(), String> {
        Ok(())
    }

    /// Method-specific hyper-parameters, recorded in manifests and logs.
    fn hyperparameters(&self) -> serde_json::Value;
}
