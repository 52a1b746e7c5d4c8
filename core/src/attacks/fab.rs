//! FAB, the Fast Adaptive Boundary attack (Croce and Hein, ICML 2020), L-inf, in the targeted
//! form AutoAttack's standard version runs ("FAB-T"): for each of the `n_targets` classes with
//! the highest clean logits after the top one, FAB towards that class is run on the points that
//! are still robust.
//!
//! One FAB iteration at the current point x^(i) with clean point x_orig and target t:
//! - linearise the decision boundary f_t - f_y = 0 around x^(i), giving the hyperplane
//!   pi = { z : <w, z> = b } with w = grad(f_t - f_y)(x^(i)) and b = <w, x^(i)> - (f_t - f_y)(x^(i));
//! - project both x^(i) and x_orig onto pi intersected with the box [0, 1]^d under L-inf
//!   (paper Eq. 7; [`Fab::project_to_hyperplane`]), giving the steps delta^(i) and delta_orig;
//! - take the biased step (paper Eq. 10)
//!   x^(i+1) = clip_[0,1]((1 - alpha)(x^(i) + eta delta^(i)) + alpha (x_orig + eta delta_orig)),
//!   alpha = min(||delta^(i)|| / (||delta^(i)|| + ||delta_orig||), alpha_max),
//!   which overshoots the linearised boundary by eta and is pulled towards x_orig so that the
//!   iterates stay close to it (the attack minimises the distance);
//! - if x^(i+1) is misclassified, keep it when it is the closest found so far and step back
//!   towards x_orig: x^(i+1) <- x_orig + beta (x^(i+1) - x_orig) (paper Eq. 11).
//!
//! FAB minimises the distance rather than working inside the ball, so `eps` enters only at the
//! end: a point's result is kept only if it is misclassified and within eps (as in AutoAttack),
//! otherwise the clean input is returned. `eps` also sets the radius of the random starts of the
//! restarts after the first one (eps/2 in L-inf around x_orig, as in the reference), drawn from
//! each point's own random stream. Whether an iterate fools the model is decided by the judge.

use crate::host_read;
use tch::{Kind, Tensor};

use super::{check_eps, check_steps, draw_label, input_gradient, judged_correct, Attack, AttackError, Batch, Classifier, Interrupt};

/// Salt of FAB's draw labels.
const FAB_DRAWS: u64 = 0x4641_4254;

/// Distance recorded for points for which no adversarial point has been found yet.
const NOT_FOUND: f64 = 1e10;

/// FAB (L-inf), targeted at the top non-true classes; see the module docs.
#[derive(Debug, Clone)]
pub struct Fab {
    /// Radius of the threat model: results farther than this are discarded.
    pub eps: f64,
    /// FAB iterations per run.
    pub steps: i64,
    /// Runs per target class; the first starts at the clean point, later ones at random points.
    pub restarts: i64,
    /// How many target classes (by decreasing clean logit, the top one excluded) are tried; at
    /// most `num_classes - 1` are used.
    pub n_targets: i64,
    /// Upper bound on the weight of the step from the clean point (paper Eq. 10).
    pub alpha_max: f64,
    /// Overshoot factor of the projection step (eta >= 1 lands beyond the linearised boundary).
    pub eta: f64,
    /// Backward step towards the clean point after a success (paper Eq. 11).
    pub beta: f64,
    /// Stop searching for a point once it has a misclassified point within eps (its robustness
    /// is decided; the reference searches on for a closer one). On by default; which points are
    /// robust is the same either way.
    pub drop_broken: bool,
    pub seed: u64,
}

impl Fab {
    /// FAB-T as AutoAttack's standard version configures it: 100 iterations, 1 run per target,
    /// alpha_max 0.1, eta 1.05, beta 0.9. With a single run per target the attack starts at the
    /// clean point and draws no random numbers.
    pub fn targeted(eps: f64, n_targets: i64, seed: u64) -> Fab {
        Fab { eps, steps: 100, restarts: 1, n_targets, alpha_max: 0.1, eta: 1.05, beta: 0.9, drop_broken: true, seed }
    }

    pub fn validate(&self) -> Result<(), AttackError> {
        check_eps(self.eps)?;
        check_steps(self.steps)?;
        let invalid = |what: String| Err(AttackError::InvalidParameter(what));
        if !(1..=100).contains(&self.restarts) {
            return invalid(format!("restarts must be in 1..=100, got {}", self.restarts));
        }
        if self.n_targets < 1 {
            return invalid(format!("n_targets must be at least 1, got {}", self.n_targets));
        }
        if !(self.alpha_max >= 0.0 && self.alpha_max <= 1.0) {
            return invalid(format!("alpha_max must be in [0, 1], got {}", self.alpha_max));
        }
        if !(self.eta.is_finite() && self.eta > 0.0) {
            return invalid(format!("eta must be positive, got {}", self.eta));
        }
        if !(self.beta > 0.0 && self.beta <= 1.0) {
            return invalid(format!("beta must be in (0, 1], got {}", self.beta));
        }
        Ok(())
    }

    /// Minimal L-inf step onto a hyperplane within the box, for a batch of problems.
    ///
    /// Row r of `points` `[n, d]` (in [0, 1]), `w` `[n, d]` and `b` `[n]` defines
    /// `min ||delta||_inf  s.t.  <w, p + delta> = b,  0 <= p + delta <= 1` (paper Eq. 7).
    /// Orienting w so that the point lies on the positive side, every coordinate moves against
    /// sign(w_i) by min(lambda, room_i), room_i being its distance to the box edge in that
    /// direction; the reachable change of <w, .> is then piecewise linear and monotone in lambda,
    /// with breakpoints at the rooms. Sorting the rooms (decreasing) and taking cumulative sums
    /// gives the change at every breakpoint, a bisection over them finds the segment holding the
    /// optimal lambda, and lambda is solved in closed form on it. Rows whose hyperplane cannot
    /// be reached within the box get the step to the box corner closest to it. Coordinates with
    /// w_i = 0 do not move. Returns delta `[n, d]`.
    pub fn project_to_hyperplane(points: &Tensor, w: &Tensor, b: &Tensor) -> Tensor {
        let kind = points.kind();
        let dim = points.size()[1];
        // Orient each row so that <w, p> - b >= 0: the step has to decrease <w, .>.
        let side = ((w * points).sum_dim_intlist(1, false, kind) - b).ge(0.0).to_kind(kind) * 2.0 - 1.0;
        let w = w * side.unsqueeze(1);
        let b = b * &side;
        let moves_up = w.lt(0.0).to_kind(kind); // coordinates that must increase go to 1
        let active = w.ne(0.0).to_kind(kind);
        let full = (&moves_up - points) * &active; // the whole room, signed
        let room = &moves_up - points * (&moves_up * 2.0 - 1.0); // |full| (for active coordinates)
        let needed = &b - (&w * points).sum_dim_intlist(1, false, kind); // change of <w, .> required (<= 0)
        let all_moved = (&w * &full).sum_dim_intlist(1, false, kind); // change with every room used

        // With coordinates in order of decreasing room and the first k+1 capped at lambda, the
        // change is capped_rest[k] - lambda * capped_weight[k]; at lambda = room_desc[k] it is
        // the change at the k-th breakpoint, increasing in k.
        let (room_desc, order) = room.sort(1, true);
        let w_desc = w.gather(1, &order, false);
        let capped_weight = w_desc.abs().cumsum(1, kind);
        let capped_rest = (-(&w_desc * full.gather(1, &order, false))).cumsum(1, kind) + all_moved.unsqueeze(1);
        let change_at = |k: &Tensor| capped_rest.gather(1, k, false) - capped_weight.gather(1, k, false) * room_desc.gather(1, k, false);

        // lambda below the smallest room: every active coordinate moves by lambda.
        let last = Tensor::full([points.size()[0], 1], dim - 1, (Kind::Int64, points.device()));
        let below_all = needed.gt_tensor(&change_at(&last).squeeze_dim(1));
        // The box holds a solution and lambda is not below the smallest room.
        let reachable = needed.gt_tensor(&all_moved);
        let interior = reachable.logical_and(&below_all.logical_not());

        // Bisection for the last breakpoint k at which the change still overshoots: lambda lies
        // between room_desc[k + 1] and room_desc[k] (the change at k = 0 is all_moved).
        let mut lower = Tensor::zeros_like(&needed);
        let mut upper = Tensor::full_like(&needed, (dim - 1) as f64);
        let iterations = (dim as f64).log2().ceil() as i64;
        for _ in 0..iterations {
            let middle = ((&lower + &upper) / 2.0).floor();
            let overshoots = needed.gt_tensor(&change_at(&middle.to_kind(Kind::Int64).unsqueeze(1)).squeeze_dim(1));
            lower = middle.where_self(&overshoots, &lower);
            upper = upper.where_self(&overshoots, &middle);
        }
        let k = lower.to_kind(Kind::Int64).unsqueeze(1);
        let solve = |rest: &Tensor, weight: &Tensor| {
            let weight_safe = weight.where_scalarother(&weight.gt(0.0), 1.0);
            ((&needed - rest) / -weight_safe).clamp_min(0.0).where_scalarother(&weight.gt(0.0), 0.0).unsqueeze(1)
        };
        let lambda_interior = solve(&capped_rest.gather(1, &k, false).squeeze_dim(1), &capped_weight.gather(1, &k, false).squeeze_dim(1));
        let lambda_small = solve(&capped_rest.select(1, dim - 1), &capped_weight.select(1, dim - 1));

        let step_interior: Tensor = full.minimum(&lambda_interior) * &moves_up + full.maximum(&-&lambda_interior) * (1.0 - &moves_up);
        let step_small = (&moves_up * 2.0 - 1.0) * lambda_small;
        let step = step_small.where_self(&below_all.unsqueeze(1), &step_interior.where_self(&interior.unsqueeze(1), &full));
        step * active
    }

    /// One FAB run towards `targets` for every row of `images` (all correctly classified).
    /// Returns, per row, the closest misclassified point found, or the clean point if none was.
    /// With `drop_done`, a row leaves the run once it has a misclassified point within eps (the
    /// reference keeps searching for a closer one; either way the point is broken, and the
    /// other rows' iterates are untouched since all state is per row).
    fn single_run(
        &self,
        model: &dyn Classifier,
        batch: &Batch,
        targets: &Tensor,
        random_start: Option<u32>,
        drop_done: bool,
        interrupt: Interrupt,
    ) -> Result<Tensor, AttackError> {
        let shape = batch.images.size();
        let n = shape[0];
        let all_origins = batch.images.detach().reshape([n, -1]);
        let mut origin = all_origins.shallow_clone();
        let mut current = origin.copy();
        if let Some(label) = random_start {
            // A random direction scaled to L-inf norm eps/2 (the reference's restart radius).
            let direction = batch.streams.uniform(label, &[origin.size()[1]]) * 2.0 - 1.0;
            let norm = direction.abs().amax(&[1i64][..], true).clamp_min(1e-12);
            current = (&origin + direction / norm * (0.5 * self.eps)).clamp(0.0, 1.0);
        }
        let mut best = origin.copy();
        let mut best_distance = Tensor::full([n], NOT_FOUND, (origin.kind(), origin.device()));
        let mut labels = batch.labels.shallow_clone();
        let mut targets = targets.shallow_clone();
        // Rows still searching, and the results of the rows that left.
        let mut positions = Tensor::arange(n, (Kind::Int64, origin.device()));
        let mut result = all_origins.copy();
        let mut row_shape = shape.clone();
        for _ in 0..self.steps {
            interrupt.check()?;
            let rows = positions.size()[0];
            if rows == 0 {
                break;
            }
            row_shape[0] = rows;
            let (target_index, label_index) = (targets.unsqueeze(1), labels.unsqueeze(1));
            // f_t - f_y: positive once the point is on the target's side of the boundary.
            let difference =
                |logits: &Tensor| (logits.gather(1, &target_index, false) - logits.gather(1, &label_index, false)).squeeze_dim(1);
            let (gradient, logits) = input_gradient(model, &current.reshape(row_shape.as_slice()), difference)?;
            let value = difference(&logits);
            let w = gradient.reshape([rows, -1]);
            let b = (&w * &current).sum_dim_intlist(1, false, w.kind()) - value;
            // Both projections in one batched call, as they share the hyperplane.
            let steps =
                Fab::project_to_hyperplane(&Tensor::cat(&[&current, &origin], 0), &Tensor::cat(&[&w, &w], 0), &Tensor::cat(&[&b, &b], 0));
            let norms = steps.abs().amax(&[1i64][..], true).clamp_min(1e-8);
            let (from_current, from_origin) = (steps.narrow(0, 0, rows), steps.narrow(0, rows, rows));
            let (norm_current, norm_origin) = (norms.narrow(0, 0, rows), norms.narrow(0, rows, rows));
            let alpha = (&norm_current / (&norm_current + &norm_origin)).clamp(0.0, self.alpha_max);
            let stepped: Tensor = (&current + from_current * self.eta) * (1.0 - &alpha) + (&origin + from_origin * self.eta) * &alpha;
            current = stepped.clamp(0.0, 1.0);

            let fooled = judged_correct(model, &current.reshape(row_shape.as_slice()), &labels, None)?.logical_not();
            let distance = (&current - &origin).abs().amax(&[1i64][..], false);
            let closer = fooled.logical_and(&distance.lt_tensor(&best_distance));
            best = current.where_self(&closer.unsqueeze(1), &best);
            best_distance = distance.where_self(&closer, &best_distance);
            let backward = &origin + (&current - &origin) * self.beta;
            current = backward.where_self(&fooled.unsqueeze(1), &current);

            if drop_done {
                // One read per iteration: which rows keep searching. The rows that are done
                // leave with their best point; the others' results are copied onto themselves
                // (still the origins), so no second read finds the finished rows.
                let done = best_distance.le(self.eps);
                let keep = host_read::nonzero(&done.logical_not(), "FAB: rows still searching (compaction)");
                if keep.numel() < rows as usize {
                    let previous = result.index_select(0, &positions);
                    result = result.index_copy(0, &positions, &best.where_self(&done.unsqueeze(1), &previous));
                    let pick = |t: &Tensor| t.index_select(0, &keep);
                    (positions, origin, current, best, best_distance) =
                        (pick(&positions), pick(&origin), pick(&current), pick(&best), pick(&best_distance));
                    (labels, targets) = (pick(&labels), pick(&targets));
                }
            }
        }
        let found = best_distance.lt(NOT_FOUND).unsqueeze(1);
        let remaining = best.where_self(&found, &origin);
        result = result.index_copy(0, &positions, &remaining);
        Ok(result.reshape(shape.as_slice()))
    }
}

impl Attack for Fab {
    fn name(&self) -> String {
        "FAB-T".into()
    }

    fn eps(&self) -> f64 {
        self.eps
    }

    fn seed(&self) -> u64 {
        self.seed
    }

    fn perturb(&self, model: &dyn Classifier, batch: &Batch, interrupt: Interrupt) -> Result<Tensor, AttackError> {
        self.validate()?;
        let (images, labels) = (&batch.images, &batch.labels);
        let mut result = images.copy();
        if batch.is_empty() {
            return Ok(result);
        }
        let clean_logits = tch::no_grad(|| model.logits(images))?;
        let classes = clean_logits.size()[1];
        // Targets ranked by clean logit; rank 0 is the prediction (the true class for the
        // points attacked, which are the correctly classified ones).
        let ranking = clean_logits.argsort(1, true);
        let mut robust = judged_correct(model, images, labels, Some(&clean_logits))?;
        for rank in 1..=self.n_targets.min(classes - 1) {
            for restart in 0..self.restarts {
                interrupt.check()?;
                let index = host_read::nonzero(&robust, "FAB: points still robust before a run");
                if index.numel() == 0 {
                    return Ok(result);
                }
                let points = batch.select(&index);
                let targets = ranking.index_select(0, &index).select(1, rank);
                let start = (restart > 0).then(|| draw_label(&[FAB_DRAWS, rank as u64, restart as u64]));
                let candidate = self.single_run(model, &points, &targets, start, self.drop_broken, interrupt)?;
                // Keep only what the judge misclassifies and what lies inside the threat model.
                let fooled = judged_correct(model, &candidate, &points.labels, None)?.logical_not();
                let distance = (&candidate - &points.images).flatten(1, -1).abs().amax(&[1i64][..], false);
                let broken = fooled.logical_and(&distance.le(self.eps));
                let broken_rows = host_read::nonzero(&broken, "FAB: points broken by a run");
                if broken_rows.numel() > 0 {
                    let broken_index = index.index_select(0, &broken_rows);
                    let kept = candidate.index_select(0, &broken_rows);
                    result = result.index_copy(0, &broken_index, &kept);
                    robust = robust.index_fill(0, &broken_index, 0);
                }
            }
        }
        Ok(result)
    }
}
