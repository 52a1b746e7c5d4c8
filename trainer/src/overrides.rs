//! Settings that override a method's recipe: what `trainer train` takes as options and a grid
//! file takes as `[overrides]` tables. One place turns them into a [`Preset`], so that a run
//! from the command line and the same run from a grid train identically.

use rfb_core::data::DatasetKind;
use serde::{Deserialize, Serialize};

use crate::methods::fair_ard::FairArdVariant;
use crate::methods::Method;
use crate::presets::{Preset, Recipe, RecipeOptions};

#[derive(Debug, thiserror::Error)]
pub enum OverrideError {
    #[error("{0}")]
    Invalid(String),
}

/// Every field is optional; unset fields keep the recipe's value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Overrides {
    /// Student architecture.
    pub arch: Option<String>,
    /// Architecture of a PyTorch teacher state dict.
    pub teacher_arch: Option<String>,
    /// Fair-ARD's form: "ard" or "rslad".
    pub fair_ard_variant: Option<FairArdVariant>,
    /// Epochs (the learning-rate drops move to the same fractions of the run).
    pub epochs: Option<i64>,
    pub batch_size: Option<i64>,
    pub lr: Option<f64>,
    pub weight_decay: Option<f64>,
    /// L-inf radius of the training attack (its step size scales with it).
    pub eps: Option<f64>,
    pub attack_steps: Option<i64>,
    pub kl_scale: Option<f64>,
    pub temperature_beta: Option<f64>,
    pub temperature_min: Option<f64>,
    pub temperature_max: Option<f64>,
    pub eval_every: Option<i64>,
}

impl Overrides {
    /// `other`'s set fields over this one's.
    pub fn then(&self, other: &Overrides) -> Overrides {
        macro_rules! pick {
            ($($field:ident),*) => { Overrides { $($field: other.$field.clone().or_else(|| self.$field.clone()),)* } };
        }
        pick!(
            arch,
            teacher_arch,
            fair_ard_variant,
            epochs,
            batch_size,
            lr,
            weight_decay,
            eps,
            attack_steps,
            kl_scale,
            temperature_beta,
            temperature_min,
            temperature_max,
            eval_every
        )
    }

    /// The method's recipe on `dataset` with these overrides applied and checked.
    pub fn preset(&self, method: Method, dataset: DatasetKind) -> Result<Preset, OverrideError> {
        let options = RecipeOptions { architecture: self.arch.clone(), fair_ard_variant: self.fair_ard_variant };
        let mut preset = Recipe::new(method, dataset, &options).preset;
        if let Some(teacher_arch) = &self.teacher_arch {
            preset.teacher_architecture = teacher_arch.clone();
        }
        self.apply_schedule(&mut preset)?;
        self.apply_attack(&mut preset)?;
        self.apply_method_settings(method, &mut preset)?;
        if let Some(every) = self.eval_every {
            preset.eval_every = every.max(1);
        }
        Ok(preset)
    }

    /// Epochs, batch size, learning rate and weight decay.
    fn apply_schedule(&self, preset: &mut Preset) -> Result<(), OverrideError> {
        if let Some(epochs) = self.epochs {
            if epochs < 1 {
                return invalid("epochs must be at least 1".into());
            }
            // Keep the learning-rate drops at the same fractions of the run.
            let old = preset.epochs as f64;
            preset.lr_milestones = preset.lr_milestones.iter().map(|m| ((*m as f64) * epochs as f64 / old).round() as i64).collect();
            preset.epochs = epochs;
        }
        if let Some(batch_size) = self.batch_size {
            if batch_size < 1 {
                return invalid(format!("batch size must be positive, got {batch_size}"));
            }
            preset.batch_size = batch_size;
        }
        if let Some(lr) = self.lr {
            if !(lr > 0.0 && lr.is_finite()) {
                return invalid(format!("the learning rate must be a positive number, got {lr}"));
            }
            preset.learning_rate = lr;
        }
        if let Some(weight_decay) = self.weight_decay {
            if !(weight_decay >= 0.0 && weight_decay.is_finite()) {
                return invalid(format!("weight decay must be a finite number >= 0, got {weight_decay}"));
            }
            preset.weight_decay = weight_decay;
        }
        Ok(())
    }

    /// The training attack's radius (its step size scales with it) and steps.
    fn apply_attack(&self, preset: &mut Preset) -> Result<(), OverrideError> {
        if let Some(eps) = self.eps {
            if !(0.0..=1.0).contains(&eps) {
                return invalid(format!("eps must be in [0, 1], got {eps}"));
            }
            preset.attack.step_size *= eps / preset.attack.eps.max(f64::MIN_POSITIVE);
            preset.attack.eps = eps;
        }
        if let Some(steps) = self.attack_steps {
            if !(1..=1000).contains(&steps) {
                return invalid(format!("attack steps must be in 1..=1000, got {steps}"));
            }
            preset.attack.steps = steps;
        }
        Ok(())
    }

    /// The distillation KL's scale and ABSLD's temperature schedule.
    fn apply_method_settings(&self, method: Method, preset: &mut Preset) -> Result<(), OverrideError> {
        if let Some(scale) = self.kl_scale {
            if !(scale > 0.0 && scale.is_finite()) {
                return invalid(format!("the KL scale must be a positive number, got {scale}"));
            }
            match preset.methods.kl_scale_mut(method) {
                Some(kl_scale) => *kl_scale = scale,
                None => {
                    let distillation: Vec<&str> = Method::ALL.into_iter().filter(|m| m.is_distillation()).map(Method::as_str).collect();
                    return invalid(format!(
                        "the KL scale applies to the distillation methods ({}), not {method}",
                        distillation.join(", ")
                    ));
                }
            }
        }
        let temperature = &mut preset.methods.absld.temperature;
        if let Some(beta) = self.temperature_beta {
            temperature.beta = beta;
        }
        if let Some(min) = self.temperature_min {
            temperature.min = min;
        }
        if let Some(max) = self.temperature_max {
            temperature.max = max;
        }
        if !(temperature.min > 0.0 && temperature.min <= temperature.max) {
            return invalid("temperature bounds must satisfy 0 < min <= max".into());
        }
        Ok(())
    }
}

fn invalid<T>(message: String) -> Result<T, OverrideError> {
    Err(OverrideError::Invalid(message))
}
