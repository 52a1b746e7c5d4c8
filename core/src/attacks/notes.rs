//! What an attack noticed while it ran that makes its result less trustworthy, for the
//! evaluation driver to report beside the counts. Today: points whose DLR-loss input gradient is
//! exactly zero at APGD's random start (the reference AutoAttack's `check_zero_gradients`, run
//! on every batch of APGD-DLR and APGD-T): such a point cannot be moved by the gradient steps,
//! so its "robustness" may only be gradient masking.

use tch::{Kind, Tensor};

/// Observations accumulated over the batches of one attack (on the attack's device, so that
/// noting costs no host read; [`AttackNotes::zero_gradient_points`] reads once).
#[derive(Debug, Default)]
pub struct AttackNotes {
    zero_gradient: Option<Tensor>,
}

impl AttackNotes {
    /// Counts the points of `gradient` (`[N, ...]`) whose gradient is zero in every coordinate.
    pub fn note_zero_gradients(&mut self, gradient: &Tensor) {
        let n = gradient.size().first().copied().unwrap_or(0);
        if n == 0 {
            return;
        }
        let zero = gradient.abs().reshape([n, -1]).sum_dim_intlist(1, false, Kind::Float).eq(0.0).sum(Kind::Int64);
        self.zero_gradient = Some(match self.zero_gradient.take() {
            None => zero,
            Some(sum) => sum + zero,
        });
    }

    /// Points noted with a zero gradient (one count per run that noted them: APGD-T counts a
    /// point once per target it was attacked towards, as the reference warns once per run).
    pub fn zero_gradient_points(&self) -> i64 {
        self.zero_gradient.as_ref().and_then(|t| crate::host_read::scalar_i64(t, "zero-gradient points of an attack")).unwrap_or(0)
    }
}
