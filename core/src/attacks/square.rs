//! Square Attack (Andriushchenko, Croce, Flammarion and Hein, ECCV 2020) under L-inf: a random
//! search that only reads logits, so it still works where gradients are masked. It is the last
//! attack of AutoAttack standard (5000 queries, p_init 0.8, one restart), set up as in the
//! reference `autoattack/square.py` of fra31/auto-attack:
//! - start at vertical stripes: every column of every channel moved by +eps or -eps;
//! - each iteration changes one square window per image (position and signs drawn per image
//!   from its own stream; the reference draws one window and one sign vector for the whole
//!   batch, which makes a point's result depend on its batch), setting each channel of the
//!   window to x +- eps with a random sign, so the point stays a vertex of the ball, clipped to
//!   [0, 1];
//! - the window covers a fraction p of the pixels, p halving after iterations 10, 50, 200,
//!   500, 1000, 2000, 4000, 6000 and 8000 ([`Square::p_schedule`]); AutoAttack runs Square with
//!   this schedule as it is (`resc_schedule=False`), the standalone reference rescales it to
//!   the query budget (`rescale_schedule`); side from [`Square::square_side`];
//! - a candidate is kept only if it lowers the margin z_y - max_{j != y} z_j;
//! - points whose margin is already <= 0 (misclassified) are not queried again.
//!
//! Queries per image and restart: one for the start plus at most one per iteration, so at most
//! `queries + 1`. All model calls run under `no_grad` on detached inputs; nothing is
//! differentiated. Square only reads logits, and the margin it minimises decides when a point
//! is broken, so with a separate judge (bf16) it queries the judge: under bf16 it runs on the
//! fp32 weights.

use crate::host_read;
use tch::{Kind, TchError, Tensor};

use super::{check_eps, draw_label, losses, Attack, AttackError, Batch, Classifier, Interrupt};

/// Iteration counts after which the reference halves p (`p_selection` of `square.py`).
const SCHEDULE_BREAKS: [i64; 9] = [10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000];

/// Budget the schedule's breaks refer to when it is rescaled to the query budget.
const SCHEDULE_BUDGET: f64 = 10_000.0;

/// Salt of Square's draw labels.
const SQUARE_DRAWS: u64 = 0x5351_5241;

/// Score-based L-inf Square Attack, untargeted, on the margin loss.
#[derive(Debug, Clone)]
pub struct Square {
    pub eps: f64,
    /// Iterations per restart (each costs at most one query per image).
    pub queries: i64,
    /// Fraction of pixels the first windows change.
    pub p_init: f64,
    pub restarts: i64,
    /// Rescale the p-schedule to `queries` (the standalone reference's default). AutoAttack
    /// runs Square without rescaling, which [`Square::new`] sets.
    pub rescale_schedule: bool,
    pub seed: u64,
}

impl Square {
    /// One restart, the schedule not rescaled, as in AutoAttack standard
    /// (`Square::new(eps, 5000, 0.8, seed)`).
    pub fn new(eps: f64, queries: i64, p_init: f64, seed: u64) -> Square {
        Square { eps, queries, p_init, restarts: 1, rescale_schedule: false, seed }
    }

    pub fn validate(&self) -> Result<(), AttackError> {
        check_eps(self.eps)?;
        if !(1..=1_000_000).contains(&self.queries) {
            return Err(AttackError::InvalidParameter(format!("queries must be in 1..=1000000, got {}", self.queries)));
        }
        if !(self.p_init > 0.0 && self.p_init <= 1.0) {
            return Err(AttackError::InvalidParameter(format!("p_init must be in (0, 1], got {}", self.p_init)));
        }
        if !(1..=100).contains(&self.restarts) {
            return Err(AttackError::InvalidParameter(format!("restarts must be in 1..=100, got {}", self.restarts)));
        }
        Ok(())
    }

    /// Fraction of pixels changed at `iteration` (0-based): p_init, halved once for every break
    /// of [`SCHEDULE_BREAKS`] that the iteration lies strictly beyond; with
    /// `rescale_schedule`, the iteration is first mapped to a 10 000-query budget and truncated,
    /// as the reference's `int(it / n_queries * 10000)`.
    pub fn p_schedule(&self, iteration: i64) -> f64 {
        let position = if self.rescale_schedule { (iteration as f64 / self.queries as f64 * SCHEDULE_BUDGET) as i64 } else { iteration };
        let halvings = SCHEDULE_BREAKS.iter().filter(|&&b| position > b).count();
        self.p_init / f64::powi(2.0, halvings as i32)
    }

    /// Side of the square window for fraction `p` on images of `shape` = [c, h, w]:
    /// round(sqrt(p * c*h*w / c)) with Python's round-half-to-even, at least 1 (the L-inf
    /// reference has no floor of 3; that is its L2 version) and at most min(h, w).
    pub fn square_side(p: f64, shape: [i64; 3]) -> i64 {
        let [c, h, w] = shape;
        let features = (c * h * w) as f64;
        let side = (p * features / c as f64).sqrt().round_ties_even() as i64;
        side.max(1).min(h.min(w))
    }

    /// One run (`restart`) from the stripes start. Returns the best points and their margins
    /// (<= 0 where the point is misclassified).
    fn single_run(
        &self,
        model: &dyn Classifier,
        batch: &Batch,
        restart: i64,
        interrupt: Interrupt,
    ) -> Result<(Tensor, Tensor), AttackError> {
        let (images, labels) = (&batch.images, &batch.labels);
        let size = images.size();
        let (c, h, w) = (size[1], size[2], size[3]);
        let label = |iteration: i64, purpose: u64| draw_label(&[SQUARE_DRAWS, restart as u64, iteration as u64, purpose]);
        let stripes = batch.streams.signs(label(-1, 0), &[c, 1, w]);
        let mut best = (images + stripes * self.eps).clamp(0.0, 1.0);
        let mut margin = margin_loss(model, &best, labels)?;
        for iteration in 0..self.queries {
            interrupt.check()?;
            let active = host_read::nonzero(&margin.gt(0.0), "Square: points still searching");
            let count = active.size()[0];
            if count == 0 {
                break;
            }
            let points = batch.select(&active);
            let current = best.index_select(0, &active);
            let current_margin = margin.index_select(0, &active);
            let side = Self::square_side(self.p_schedule(iteration), [c, h, w]);
            let window = random_windows(&points, side, h, w, label(iteration, 1), label(iteration, 2));
            // Setting the window to x +- eps is what the reference's "+ 2 eps sign, then
            // project" amounts to, since the current point is already a vertex of the ball.
            let signs = points.streams.signs(label(iteration, 3), &[c, 1, 1]);
            let vertex = (&points.images + signs * self.eps).clamp(0.0, 1.0);
            let candidate = vertex.where_self(&window, &current);
            let candidate_margin = margin_loss(model, &candidate, &points.labels)?;
            // Active points have margin > 0, so "improves" already covers "misclassified".
            let improved = candidate_margin.lt_tensor(&current_margin);
            let kept = candidate.where_self(&improved.reshape([-1, 1, 1, 1]), &current);
            let kept_margin = candidate_margin.where_self(&improved, &current_margin);
            best = best.index_copy(0, &active, &kept);
            margin = margin.index_copy(0, &active, &kept_margin);
        }
        Ok((best, margin))
    }
}

/// Margin z_y - max_{j != y} z_j per example (the reference's untargeted margin loss), on the
/// logits that decide ([`super::decision_logits`]).
fn margin_loss(model: &dyn Classifier, images: &Tensor, labels: &Tensor) -> Result<Tensor, TchError> {
    Ok(losses::margin(&super::decision_logits(model, images)?, labels))
}

/// Boolean masks [count, 1, h, w], each a `side` x `side` square at a position drawn from its
/// point's stream. Corners are drawn from 0..h-side (the reference's `random_int(0, h - s)`
/// never picks the last position h - side itself, except when side == h).
fn random_windows(points: &Batch, side: i64, h: i64, w: i64, row_label: u32, column_label: u32) -> Tensor {
    let count = points.len();
    let device = points.device();
    let inside = |extent: i64, label: u32| {
        let start = points.streams.below(label, &[1], (extent - side).max(1));
        let positions = Tensor::arange(extent, (Kind::Int64, device)).reshape([1, extent]);
        positions.ge_tensor(&start).logical_and(&positions.lt_tensor(&(start + side)))
    };
    let rows = inside(h, row_label).reshape([count, 1, h, 1]);
    let cols = inside(w, column_label).reshape([count, 1, 1, w]);
    rows.logical_and(&cols)
}

impl Attack for Square {
    fn name(&self) -> String {
        "Square".to_string()
    }

    fn eps(&self) -> f64 {
        self.eps
    }

    fn seed(&self) -> u64 {
        self.seed
    }

    /// Returns, per point, the first restart's point that fools the model, else the point with
    /// the lowest margin found. There is no separate query on the clean images (the reference
    /// makes one): callers pass points they still count as correct, and it keeps the budget at
    /// `queries + 1` per image and restart.
    fn perturb(&self, model: &dyn Classifier, batch: &Batch, interrupt: Interrupt) -> Result<Tensor, AttackError> {
        self.validate()?;
        let all_images = &batch.images;
        if all_images.dim() != 4 {
            return Err(AttackError::InvalidParameter(format!("Square needs images of shape [N, C, H, W], got {:?}", all_images.size())));
        }
        if batch.is_empty() {
            return Ok(all_images.copy());
        }
        tch::no_grad(|| {
            // Points the judge already gets wrong are returned as they are: starting from the
            // stripes could land on a correctly classified point, which must not count as robust.
            let clean_correct = super::judged_correct(model, all_images, &batch.labels, None)?;
            let attacked = host_read::nonzero(&clean_correct, "Square: points to attack");
            if attacked.size()[0] == 0 {
                return Ok(all_images.copy());
            }
            let points = batch.select(&attacked);
            let (mut best, mut margin) = self.single_run(model, &points, 0, interrupt)?;
            for restart in 1..self.restarts {
                interrupt.check()?;
                let unbroken = host_read::nonzero(&margin.gt(0.0), "Square: points still robust before a restart");
                if unbroken.size()[0] == 0 {
                    break;
                }
                let (found, margins) = self.single_run(model, &points.select(&unbroken), restart, interrupt)?;
                let previous = margin.index_select(0, &unbroken);
                let better = margins.lt_tensor(&previous);
                let kept = found.where_self(&better.reshape([-1, 1, 1, 1]), &best.index_select(0, &unbroken));
                best = best.index_copy(0, &unbroken, &kept);
                margin = margin.index_copy(0, &unbroken, &margins.where_self(&better, &previous));
            }
            Ok(all_images.index_copy(0, &attacked, &best))
        })
    }
}
