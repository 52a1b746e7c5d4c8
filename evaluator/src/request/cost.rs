//! The cost model: how many forward+backward passes an evaluation asks of the device, counted
//! before it is queued so that a server can refuse what it will not compute.
//!
//! Per example and attack, from the canonical spec (an upper bound: attacks that stop early,
//! and AutoAttack components that only see the points still robust, cost less):
//!
//! | attack | passes per example |
//! | --- | --- |
//! | CLEAN | 1 |
//! | FGSM | 1 |
//! | PGD | steps × restarts + 1 (the final judgement) |
//! | CW-inf | steps + 1 |
//! | APGD-CE, APGD-DLR | steps × restarts (× EOT passes: 20 in AutoAttack-rand) |
//! | APGD-T | steps × restarts × targets |
//! | FAB-T | steps × restarts × targets × 2 (gradient and judgement) |
//! | Square | queries × restarts |
//! | AutoAttack | the sum of its components |
//!
//! with targets = min(9, classes - 1). A job costs the sum over its attacks that are not
//! already cached, times its examples. The paper's full evaluation (AutoAttack standard,
//! PGD-20, CW-inf-30, FGSM and clean on the 10 000 CIFAR-10 test images) is
//! (7800 + 21 + 31 + 1 + 1) × 10 000 = 78 540 000 passes.

use rfb_proto::v1::{AttackKind, AttackSpec};

use super::spec::{AUTOATTACK_RAND_EOT, AUTOATTACK_STEPS, AUTOATTACK_TARGETS, SQUARE_QUERIES};
use super::{EngineError, PreparedAttack, PreparedEvaluation};

/// Default of `--max-job-cost`: room for the paper's full evaluation (78.5 million passes)
/// and AutoAttack-rand besides, with margin.
pub const DEFAULT_MAX_JOB_COST: u64 = 200_000_000;

fn passes_of_component(component: &str, steps: Option<i64>, restarts: i64, targets: u64) -> u64 {
    let restarts = restarts.max(1) as u64;
    match component {
        "apgd-ce" | "apgd-dlr" => steps.unwrap_or(AUTOATTACK_STEPS) as u64 * restarts,
        "apgd-t" => steps.unwrap_or(AUTOATTACK_STEPS) as u64 * restarts * targets,
        "fab-t" => steps.unwrap_or(AUTOATTACK_STEPS) as u64 * restarts * targets * 2,
        "square" => steps.unwrap_or(SQUARE_QUERIES) as u64 * restarts,
        // Unknown components never pass canonical_spec.
        _ => 0,
    }
}

/// Forward+backward passes per example of one canonical spec on a model with `num_classes`
/// classes (see the module docs).
pub fn passes_per_example(spec: &AttackSpec, num_classes: i64) -> u64 {
    let targets = AUTOATTACK_TARGETS.min(num_classes - 1).max(1) as u64;
    let steps = |default: i64| spec.steps.unwrap_or(default).max(1) as u64;
    let restarts = spec.restarts.unwrap_or(1).max(1) as u64;
    match AttackKind::try_from(spec.kind) {
        Ok(AttackKind::Clean | AttackKind::Fgsm) => 1,
        Ok(AttackKind::Pgd) => steps(super::DEFAULT_PGD_STEPS) * restarts + 1,
        Ok(AttackKind::CwInf) => steps(super::DEFAULT_CW_STEPS) + 1,
        Ok(AttackKind::AutoattackStandard) => {
            rfb_proto::attacks::AUTOATTACK_STANDARD_COMPONENTS.iter().map(|c| passes_of_component(c, spec.steps, 1, targets)).sum()
        }
        Ok(AttackKind::AutoattackRand) => 2 * steps(AUTOATTACK_STEPS) * AUTOATTACK_RAND_EOT as u64,
        Ok(AttackKind::AutoattackCustom) => spec
            .components
            .iter()
            .map(|c| passes_of_component(c, spec.steps, spec.restarts.unwrap_or(1), targets))
            .fold(0u64, u64::saturating_add),
        Ok(AttackKind::Unspecified) | Err(_) => 0,
    }
}

/// What a job will cost, attack by attack.
#[derive(Debug, Clone, PartialEq)]
pub struct CostEstimate {
    /// Examples the job evaluates.
    pub examples: u64,
    /// (attack name, passes per example) of every attack counted.
    pub attacks: Vec<(String, u64)>,
    /// Examples × the sum of the passes per example.
    pub total: u64,
}

impl CostEstimate {
    /// The cost of `attacks` of `job` (normally those not answered from the cache).
    pub fn of<'a>(job: &PreparedEvaluation, attacks: impl IntoIterator<Item = &'a PreparedAttack>) -> Self {
        let examples = job.examples().max(0) as u64;
        let classes = job.manifest.model.num_classes;
        let attacks: Vec<(String, u64)> = attacks.into_iter().map(|a| (a.name.clone(), passes_per_example(&a.spec, classes))).collect();
        let per_example = attacks.iter().map(|(_, p)| *p).fold(0u64, u64::saturating_add);
        CostEstimate { examples, total: per_example.saturating_mul(examples), attacks }
    }

    /// RESOURCE_EXHAUSTED, with the estimate and the limit, when the job costs more than
    /// `limit` passes.
    pub fn check(&self, limit: u64) -> Result<(), EngineError> {
        if self.total <= limit {
            return Ok(());
        }
        let parts: Vec<String> = self.attacks.iter().map(|(name, passes)| format!("{name} {passes}")).collect();
        Err(EngineError::ResourceExhausted(format!(
            "the job's estimated cost is {} forward+backward passes ({} examples x {} passes per example: {}), \
             above this server's limit of {limit} (--max-job-cost); ask for fewer examples per class, steps, restarts or attacks, \
             or split the request",
            self.total,
            self.examples,
            self.attacks.iter().map(|(_, p)| *p).fold(0u64, u64::saturating_add),
            parts.join(", ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: AttackKind) -> AttackSpec {
        super::super::canonical_spec(&AttackSpec { kind: kind as i32, ..Default::default() }).unwrap()
    }

    #[test]
    fn the_papers_full_evaluation_fits_under_the_default_limit() {
        let per_example: u64 = [AttackKind::AutoattackStandard, AttackKind::Pgd, AttackKind::CwInf, AttackKind::Fgsm, AttackKind::Clean]
            .into_iter()
            .map(|k| passes_per_example(&spec(k), 10))
            .sum();
        assert_eq!(passes_per_example(&spec(AttackKind::AutoattackStandard), 10), 100 + 900 + 1800 + 5000);
        assert_eq!(passes_per_example(&spec(AttackKind::Pgd), 10), 21);
        assert_eq!(passes_per_example(&spec(AttackKind::CwInf), 10), 31);
        assert_eq!(per_example, 7854);
        assert!(per_example * 10_000 <= DEFAULT_MAX_JOB_COST);
        // CIFAR-100 and Tiny-ImageNet (10 000 test images, 9 targets as well) fit too.
        assert_eq!(passes_per_example(&spec(AttackKind::AutoattackStandard), 200), 7800);
        // Fewer classes, fewer targets.
        assert_eq!(passes_per_example(&spec(AttackKind::AutoattackStandard), 3), 100 + 200 + 400 + 5000);
    }

    #[test]
    fn custom_and_restarts_count() {
        let custom = super::super::canonical_spec(&AttackSpec {
            kind: AttackKind::AutoattackCustom as i32,
            components: vec!["apgd-ce".into(), "apgd-t".into(), "fab-t".into(), "square".into()],
            steps: Some(10),
            restarts: Some(2),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(passes_per_example(&custom, 10), 20 + 180 + 360 + 20);
        let pgd = super::super::canonical_spec(&AttackSpec {
            kind: AttackKind::Pgd as i32,
            steps: Some(10_000),
            restarts: Some(100),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(passes_per_example(&pgd, 10), 1_000_001);
        assert_eq!(passes_per_example(&spec(AttackKind::AutoattackRand), 10), 4000);
    }
}
