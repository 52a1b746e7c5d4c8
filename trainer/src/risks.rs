//! Per-class sums of an epoch's training batches: the class-wise error risks R of Eq. 10 and
//! the class-wise accuracies of the logits the method's steps returned.

use std::collections::HashMap;

use rfb_core::attacks;
use tch::{Device, Kind, Tensor};

use crate::method::EpochRisks;
use crate::resume::ResumeError;

/// Per-class sums of per-sample cross-entropy and correctness, kept on the device during an
/// epoch.
pub(crate) struct RiskAccumulator {
    clean: Tensor,
    adversarial: Tensor,
    clean_correct: Tensor,
    adversarial_correct: Tensor,
    counts: Tensor,
    has_adversarial: bool,
}

impl RiskAccumulator {
    pub(crate) fn new(classes: i64, device: Device) -> Self {
        let zeros = || Tensor::zeros([classes], (Kind::Double, device));
        RiskAccumulator {
            clean: zeros(),
            adversarial: zeros(),
            clean_correct: zeros(),
            adversarial_correct: zeros(),
            counts: zeros(),
            has_adversarial: false,
        }
    }

    pub(crate) fn add(&mut self, labels: &Tensor, clean_logits: &Tensor, adversarial_logits: Option<&Tensor>) {
        let per_sample = |logits: &Tensor| attacks::losses::cross_entropy(logits, labels).to_kind(Kind::Double);
        let correct = |logits: &Tensor| logits.argmax(-1, false).eq_tensor(labels).to_kind(Kind::Double);
        let _ = self.clean.index_add_(0, labels, &per_sample(clean_logits));
        let _ = self.clean_correct.index_add_(0, labels, &correct(clean_logits));
        let _ = self.counts.index_add_(0, labels, &Tensor::ones_like(&labels.to_kind(Kind::Double)));
        if let Some(logits) = adversarial_logits {
            self.has_adversarial = true;
            let _ = self.adversarial.index_add_(0, labels, &per_sample(logits));
            let _ = self.adversarial_correct.index_add_(0, labels, &correct(logits));
        }
    }

    /// The sums, for a resume state saved within an epoch.
    pub(crate) fn state(&self) -> Vec<(String, Tensor)> {
        let mut named = vec![
            ("clean".to_string(), self.clean.shallow_clone()),
            ("clean_correct".to_string(), self.clean_correct.shallow_clone()),
            ("counts".to_string(), self.counts.shallow_clone()),
        ];
        if self.has_adversarial {
            named.push(("adversarial".to_string(), self.adversarial.shallow_clone()));
            named.push(("adversarial_correct".to_string(), self.adversarial_correct.shallow_clone()));
        }
        named
    }

    /// Restores sums saved by [`RiskAccumulator::state`].
    pub(crate) fn restore(&mut self, mut saved: HashMap<String, Tensor>, device: Device) -> Result<(), ResumeError> {
        let mut take = |name: &'static str, into: &mut Tensor| -> Result<bool, ResumeError> {
            match saved.remove(name) {
                Some(tensor) if tensor.size() == into.size() => {
                    *into = tensor.to_kind(Kind::Double).to_device(device);
                    Ok(true)
                }
                Some(_) => Err(ResumeError::RiskShape(name)),
                None => Ok(false),
            }
        };
        for (name, into) in [("clean", &mut self.clean), ("clean_correct", &mut self.clean_correct), ("counts", &mut self.counts)] {
            if !take(name, into)? {
                return Err(ResumeError::RiskMissing(name));
            }
        }
        self.has_adversarial = take("adversarial", &mut self.adversarial)?;
        take("adversarial_correct", &mut self.adversarial_correct)?;
        Ok(())
    }

    /// Class-wise means of `sums` over the epoch's examples.
    fn class_means(&self, sums: &Tensor) -> Vec<f64> {
        rfb_core::host_read::vec_f64(&(sums / self.counts.clamp_min(1.0)), "training epoch: class-wise means")
    }

    /// Class-wise accuracy of the clean and (where there were any) adversarial logits.
    pub(crate) fn accuracies(&self) -> (Vec<f64>, Option<Vec<f64>>) {
        (self.class_means(&self.clean_correct), self.has_adversarial.then(|| self.class_means(&self.adversarial_correct)))
    }

    pub(crate) fn risks(&self) -> EpochRisks {
        EpochRisks { clean: self.class_means(&self.clean), adversarial: self.has_adversarial.then(|| self.class_means(&self.adversarial)) }
    }
}
