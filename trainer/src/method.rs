//! The interface every training method implements, one method per file in `methods/`.

use rfb_core::models::Network;
use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::temperature::TemperatureSchedule;

/// The inner maximisation's threat model and steps (DESIGN.md section 4: eps 8/255, 10 steps
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

    /// Called after each epoch with that epoch's class-wise risks; `lr_decayed` says whether the
    /// learning rate drops before the next epoch.
    fn end_epoch(&mut self, _risks: &EpochRisks, _lr_decayed: bool) {}

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
