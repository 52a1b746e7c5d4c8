//! CW-inf: PGD on the Carlini-Wagner margin loss (Carlini and Wagner 2017) in the L-inf ball,
//! as the robust-fairness papers evaluate it: uniform random start, 30 steps of eps/4 (2/255 at
//! 8/255), kappa (confidence) 50 by default, on the reference evaluation code's loss
//! -max(z_y - max_{j != y} z_j + kappa, 0) ([`super::losses::cw_loss`]).

use tch::Tensor;

use super::pgd::{Pgd, PgdLoss};
use super::{Attack, AttackError, Batch, Classifier, Interrupt};

#[derive(Debug, Clone)]
pub struct CarliniWagnerLinf {
    pgd: Pgd,
}

impl CarliniWagnerLinf {
    pub fn new(eps: f64, step_size: f64, steps: i64, kappa: f64, seed: u64) -> Result<Self, AttackError> {
        if !(kappa.is_finite() && kappa >= 0.0) {
            return Err(AttackError::InvalidParameter(format!("kappa must be non-negative, got {kappa}")));
        }
        let pgd = Pgd { eps, step_size, steps, restarts: 1, random_start: true, loss: PgdLoss::CarliniWagner { kappa }, seed };
        pgd.validate()?;
        Ok(CarliniWagnerLinf { pgd })
    }

    /// The preset of the paper's evaluation: 30 steps of eps/4 (2/255 at 8/255), kappa 50.
    pub fn cw30(eps: f64, seed: u64) -> Self {
        CarliniWagnerLinf {
            pgd: Pgd {
                eps,
                step_size: super::pgd::default_step_size(eps),
                steps: 30,
                restarts: 1,
                random_start: true,
                loss: PgdLoss::CarliniWagner { kappa: 50.0 },
                seed,
            },
        }
    }
}

impl Attack for CarliniWagnerLinf {
    fn name(&self) -> String {
        self.pgd.name()
    }
    fn eps(&self) -> f64 {
        self.pgd.eps
    }
    fn seed(&self) -> u64 {
        self.pgd.seed
    }
    fn perturb(&self, model: &dyn Classifier, batch: &Batch, interrupt: Interrupt) -> Result<Tensor, AttackError> {
        self.pgd.perturb(model, batch, interrupt)
    }
}
