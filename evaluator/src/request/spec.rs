//! Attack specifications: the defaults, the canonical form (every default filled in, every
//! field checked) that results report and cache keys hash, and the attack a canonical spec
//! builds. Nothing here touches a tensor.

use rfb_core::attacks::{Apgd, Attack, AttackError, AutoAttack, CarliniWagnerLinf, Fab, Fgsm, Pgd, PgdLoss, Square};
use rfb_proto::v1::{AttackKind, AttackSpec};

use super::{EngineError, MAX_COMPONENTS, MAX_FIELD_BYTES, MAX_KAPPA, MAX_RESTARTS, MAX_STEPS};

/// eps of the paper's evaluation (8/255), used when a spec leaves it unset.
pub const DEFAULT_EPS: f64 = 8.0 / 255.0;
/// Step size of PGD and CW-inf when unset: eps/4 ([`rfb_core::attacks::default_step_size`];
/// the paper's 2/255 at 8/255). The canonical spec, which every result reports and every cache
/// key hashes, carries the value used.
pub use rfb_core::attacks::default_step_size;
pub const DEFAULT_PGD_STEPS: i64 = 20;
pub const DEFAULT_CW_STEPS: i64 = 30;
pub const DEFAULT_CW_KAPPA: f64 = 50.0;
/// Iterations of AutoAttack's APGD and FAB components, and queries of its Square, when unset.
pub const AUTOATTACK_STEPS: i64 = 100;
pub const SQUARE_QUERIES: i64 = 5000;
/// Expectation-over-transformation passes of AutoAttack-rand's APGD components.
pub const AUTOATTACK_RAND_EOT: i64 = 20;
/// Components an AUTOATTACK_CUSTOM spec may list (the contract's list, shared with the
/// command-line grammar).
pub use rfb_proto::attacks::AUTOATTACK_COMPONENTS;
/// Targets of APGD-T and FAB-T (AutoAttack standard; fewer when the model has fewer classes,
/// which the results flag: [`autoattack_targets`]).
pub const AUTOATTACK_TARGETS: i64 = 9;

/// Checks a spec and returns it with every default filled in: the canonical form that results
/// report and that the cache key is computed from. Fields an attack does not use are refused,
/// except `eps` and `seed`, which CLEAN ignores, and `seed`, which FGSM ignores (both are
/// deterministic; they are zeroed in the canonical form).
pub fn canonical_spec(spec: &AttackSpec) -> Result<AttackSpec, EngineError> {
    let kind = AttackKind::try_from(spec.kind).map_err(|_| EngineError::InvalidArgument(format!("unknown attack kind {}", spec.kind)))?;
    let name = kind.as_str_name();
    let invalid = |message: String| EngineError::InvalidArgument(format!("{name}: {message}"));
    let refuse = |field: &str, present: bool| -> Result<(), EngineError> {
        if present {
            Err(invalid(format!("{field} does not apply to this attack; leave it unset")))
        } else {
            Ok(())
        }
    };
    if let Some(eps) = spec.eps {
        if !(eps.is_finite() && (0.0..=1.0).contains(&eps)) {
            return Err(invalid(format!("eps must be in [0, 1] (pixel scale), got {eps}")));
        }
    }
    if let Some(steps) = spec.steps {
        if !(1..=MAX_STEPS).contains(&steps) {
            return Err(invalid(format!("steps must be in 1..={MAX_STEPS}, got {steps}")));
        }
    }
    if let Some(step_size) = spec.step_size {
        if !(step_size.is_finite() && step_size > 0.0 && step_size <= 1.0) {
            return Err(invalid(format!("step_size must be in (0, 1], got {step_size}")));
        }
    }
    if let Some(restarts) = spec.restarts {
        if !(1..=MAX_RESTARTS).contains(&restarts) {
            return Err(invalid(format!("restarts must be in 1..={MAX_RESTARTS}, got {restarts}")));
        }
    }
    if let Some(kappa) = spec.kappa {
        if !(kappa.is_finite() && (0.0..=MAX_KAPPA).contains(&kappa)) {
            return Err(invalid(format!("kappa must be in [0, {MAX_KAPPA}], got {kappa}")));
        }
    }
    if kind != AttackKind::AutoattackCustom {
        refuse("components", !spec.components.is_empty())?;
    }
    if spec.components.len() > MAX_COMPONENTS {
        return Err(invalid(format!(
            "{} components listed; at most {MAX_COMPONENTS} (each runs on the points the previous ones left robust, so repeating one adds cost and no strength)",
            spec.components.len()
        )));
    }
    if let Some(long) = spec.components.iter().find(|c| c.len() > MAX_FIELD_BYTES) {
        return Err(invalid(format!("an AutoAttack component name of {} bytes; known: {}", long.len(), AUTOATTACK_COMPONENTS.join(", "))));
    }
    let radius = spec.eps.unwrap_or(DEFAULT_EPS);
    let eps = Some(radius);
    let mut canonical = AttackSpec { kind: spec.kind, seed: spec.seed, ..Default::default() };
    match kind {
        AttackKind::Unspecified => {
            return Err(EngineError::InvalidArgument(
                "attack kind is unspecified; choose CLEAN, FGSM, PGD, CW_INF or an AUTOATTACK kind".into(),
            ))
        }
        AttackKind::Clean | AttackKind::Fgsm => {
            refuse("steps", spec.steps.is_some())?;
            refuse("step_size", spec.step_size.is_some())?;
            refuse("restarts", spec.restarts.is_some())?;
            refuse("kappa", spec.kappa.is_some())?;
            canonical.seed = 0;
            if kind == AttackKind::Fgsm {
                canonical.eps = eps;
            }
        }
        AttackKind::Pgd => {
            refuse("kappa", spec.kappa.is_some())?;
            canonical.eps = eps;
            canonical.steps = Some(spec.steps.unwrap_or(DEFAULT_PGD_STEPS));
            canonical.step_size = Some(spec.step_size.unwrap_or_else(|| default_step_size(radius)));
            canonical.restarts = Some(spec.restarts.unwrap_or(1));
        }
        AttackKind::CwInf => {
            if spec.restarts.is_some_and(|r| r != 1) {
                return Err(invalid("CW-inf runs one restart; leave restarts unset".into()));
            }
            canonical.eps = eps;
            canonical.steps = Some(spec.steps.unwrap_or(DEFAULT_CW_STEPS));
            canonical.step_size = Some(spec.step_size.unwrap_or_else(|| default_step_size(radius)));
            canonical.kappa = Some(spec.kappa.unwrap_or(DEFAULT_CW_KAPPA));
        }
        AttackKind::AutoattackStandard | AttackKind::AutoattackRand => {
            refuse("step_size", spec.step_size.is_some())?;
            refuse("restarts", spec.restarts.is_some())?;
            refuse("kappa", spec.kappa.is_some())?;
            canonical.eps = eps;
            // Set only for a quick check with fewer iterations (named AutoAttack@N).
            canonical.steps = spec.steps;
        }
        AttackKind::AutoattackCustom => {
            refuse("step_size", spec.step_size.is_some())?;
            refuse("kappa", spec.kappa.is_some())?;
            if spec.components.is_empty() {
                return Err(invalid(format!("components is empty; list any of {}", AUTOATTACK_COMPONENTS.join(", "))));
            }
            let mut components = Vec::with_capacity(spec.components.len());
            for component in &spec.components {
                let normalised = component.trim().to_ascii_lowercase();
                if !AUTOATTACK_COMPONENTS.contains(&normalised.as_str()) {
                    return Err(invalid(format!(
                        "unknown AutoAttack component {component:?} (known: {})",
                        AUTOATTACK_COMPONENTS.join(", ")
                    )));
                }
                components.push(normalised);
            }
            canonical.eps = eps;
            canonical.steps = spec.steps;
            canonical.restarts = Some(spec.restarts.unwrap_or(1));
            canonical.components = components;
        }
    }
    Ok(canonical)
}

/// Builds the attack a canonical spec describes (`None` for CLEAN) for a model with
/// `num_classes` classes. For the AutoAttack kinds, `steps` sets the iterations of the APGD and
/// FAB components and the queries of Square (unset: the reference's 100 and 5000; set, the
/// attack is named `AutoAttack@N`); for AUTOATTACK_CUSTOM, `restarts` sets the restarts of each
/// component.
pub fn build_attack(spec: &AttackSpec, num_classes: i64) -> Result<Option<Box<dyn Attack>>, EngineError> {
    let kind = AttackKind::try_from(spec.kind).map_err(|_| EngineError::InvalidArgument(format!("unknown attack kind {}", spec.kind)))?;
    let eps = spec.eps.unwrap_or(DEFAULT_EPS);
    let seed = spec.seed;
    let name = kind.as_str_name();
    let targets = AUTOATTACK_TARGETS.min(num_classes - 1).max(1);
    let checked = |result: Result<(), AttackError>| result.map_err(|e| EngineError::from_attack(name, e));
    let attack: Box<dyn Attack> = match kind {
        AttackKind::Clean => return Ok(None),
        AttackKind::Unspecified => return Err(EngineError::InvalidArgument("attack kind is unspecified".into())),
        AttackKind::Fgsm => Box::new(Fgsm { eps }),
        AttackKind::Pgd => {
            let pgd = Pgd {
                eps,
                step_size: spec.step_size.unwrap_or_else(|| default_step_size(eps)),
                steps: spec.steps.unwrap_or(DEFAULT_PGD_STEPS),
                restarts: spec.restarts.unwrap_or(1),
                random_start: true,
                loss: PgdLoss::CrossEntropy,
                seed,
            };
            checked(pgd.validate())?;
            Box::new(pgd)
        }
        AttackKind::CwInf => Box::new(
            CarliniWagnerLinf::new(
                eps,
                spec.step_size.unwrap_or_else(|| default_step_size(eps)),
                spec.steps.unwrap_or(DEFAULT_CW_STEPS),
                spec.kappa.unwrap_or(DEFAULT_CW_KAPPA),
                seed,
            )
            .map_err(|e| EngineError::from_attack(name, e))?,
        ),
        AttackKind::AutoattackStandard => {
            let mut autoattack = AutoAttack::standard(eps, seed);
            if num_classes - 1 < AUTOATTACK_TARGETS || spec.steps.is_some() {
                let iterations = spec.steps.unwrap_or(AUTOATTACK_STEPS);
                let mut apgd_ce = Apgd::ce(eps, seed);
                let mut apgd_t = Apgd::targeted(eps, targets, seed);
                let mut fab_t = Fab::targeted(eps, targets, seed);
                (apgd_ce.steps, apgd_t.steps, fab_t.steps) = (iterations, iterations, iterations);
                checked(apgd_ce.validate())?;
                checked(apgd_t.validate())?;
                checked(fab_t.validate())?;
                let square = Square::new(eps, spec.steps.unwrap_or(SQUARE_QUERIES), 0.8, seed);
                checked(square.validate())?;
                autoattack.attacks = vec![Box::new(apgd_ce), Box::new(apgd_t), Box::new(fab_t), Box::new(square)];
                autoattack.reduced_iterations = spec.steps;
            }
            Box::new(autoattack)
        }
        AttackKind::AutoattackRand => {
            let mut autoattack = AutoAttack::rand(eps, seed);
            if let Some(iterations) = spec.steps {
                let mut apgd_ce = Apgd::ce(eps, seed).with_eot(AUTOATTACK_RAND_EOT);
                let mut apgd_dlr = Apgd::dlr(eps, seed).with_eot(AUTOATTACK_RAND_EOT);
                (apgd_ce.steps, apgd_dlr.steps) = (iterations, iterations);
                checked(apgd_ce.validate())?;
                checked(apgd_dlr.validate())?;
                autoattack.attacks = vec![Box::new(apgd_ce), Box::new(apgd_dlr)];
                autoattack.reduced_iterations = Some(iterations);
            }
            Box::new(autoattack)
        }
        AttackKind::AutoattackCustom => {
            let restarts = spec.restarts.unwrap_or(1);
            let mut components: Vec<Box<dyn Attack>> = Vec::with_capacity(spec.components.len());
            for component in &spec.components {
                let apgd = |mut apgd: Apgd| -> Result<Box<dyn Attack>, EngineError> {
                    if let Some(steps) = spec.steps {
                        apgd.steps = steps;
                    }
                    apgd.restarts = restarts;
                    checked(apgd.validate())?;
                    Ok(Box::new(apgd))
                };
                components.push(match component.as_str() {
                    "apgd-ce" => apgd(Apgd::ce(eps, seed))?,
                    "apgd-dlr" => apgd(Apgd::dlr(eps, seed))?,
                    "apgd-t" => apgd(Apgd::targeted(eps, targets, seed))?,
                    "fab-t" => {
                        let mut fab = Fab::targeted(eps, targets, seed);
                        if let Some(steps) = spec.steps {
                            fab.steps = steps;
                        }
                        fab.restarts = restarts;
                        checked(fab.validate())?;
                        Box::new(fab)
                    }
                    "square" => {
                        let mut square = Square::new(eps, spec.steps.unwrap_or(SQUARE_QUERIES), 0.8, seed);
                        square.restarts = restarts;
                        checked(square.validate())?;
                        Box::new(square)
                    }
                    other => {
                        return Err(EngineError::InvalidArgument(format!(
                            "{name}: unknown AutoAttack component {other:?} (known: {})",
                            AUTOATTACK_COMPONENTS.join(", ")
                        )))
                    }
                });
            }
            let mut autoattack = AutoAttack::custom(eps, seed, components);
            autoattack.reduced_iterations = spec.steps;
            Box::new(autoattack)
        }
    };
    Ok(Some(attack))
}

/// Display name of a canonical spec, e.g. `PGD-20` or `AutoAttack`.
pub fn attack_display_name(spec: &AttackSpec, num_classes: i64) -> Result<String, EngineError> {
    Ok(match build_attack(spec, num_classes)? {
        None => "Clean".to_string(),
        Some(attack) => attack.name(),
    })
}

/// Targets an AutoAttack spec's targeted components (APGD-T, FAB-T) ask for and those a model
/// with `num_classes` classes lets them use, `(requested, used)`; `(0, 0)` without targeted
/// components. Fewer used than requested is reported ([`SanityFlags::with_targets`]), not
/// silently clamped.
///
/// [`SanityFlags::with_targets`]: rfb_core::attacks::SanityFlags::with_targets
pub fn autoattack_targets(spec: &AttackSpec, num_classes: i64) -> (i64, i64) {
    let targeted = match AttackKind::try_from(spec.kind) {
        Ok(AttackKind::AutoattackStandard) => true,
        Ok(AttackKind::AutoattackCustom) => spec.components.iter().any(|c| c == "apgd-t" || c == "fab-t"),
        _ => false,
    };
    if targeted {
        (AUTOATTACK_TARGETS, AUTOATTACK_TARGETS.min(num_classes - 1).max(1))
    } else {
        (0, 0)
    }
}

/// Whether the kind is one of the AutoAttack versions (which report sanity flags).
pub fn is_autoattack(kind: i32) -> bool {
    matches!(AttackKind::try_from(kind), Ok(AttackKind::AutoattackStandard | AttackKind::AutoattackRand | AttackKind::AutoattackCustom))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(kind: AttackKind) -> AttackSpec {
        AttackSpec { kind: kind as i32, ..Default::default() }
    }

    #[test]
    fn the_default_step_follows_the_radius() {
        for eps in [8.0 / 255.0, 0.1, 32.0 / 255.0] {
            for kind in [AttackKind::Pgd, AttackKind::CwInf] {
                let canonical = canonical_spec(&AttackSpec { eps: Some(eps), ..of(kind) }).unwrap();
                assert_eq!(canonical.step_size, Some(eps / 4.0), "{kind:?} at {eps}");
            }
        }
        // The paper's setting is unchanged: 2/255 at 8/255.
        assert_eq!(canonical_spec(&of(AttackKind::Pgd)).unwrap().step_size, Some(2.0 / 255.0));
        // At eps 0 (an eps sweep's first point) the attack stays valid.
        let zero = canonical_spec(&AttackSpec { eps: Some(0.0), ..of(AttackKind::Pgd) }).unwrap();
        assert!(zero.step_size.is_some_and(|s| s > 0.0));
        assert!(build_attack(&zero, 10).is_ok());
        // A step given is kept.
        let given = canonical_spec(&AttackSpec { eps: Some(0.1), step_size: Some(0.01), ..of(AttackKind::Pgd) }).unwrap();
        assert_eq!(given.step_size, Some(0.01));
    }

    #[test]
    fn targets_asked_and_used_follow_the_classes() {
        assert_eq!(autoattack_targets(&of(AttackKind::AutoattackStandard), 10), (9, 9));
        assert_eq!(autoattack_targets(&of(AttackKind::AutoattackStandard), 5), (9, 4));
        assert_eq!(autoattack_targets(&of(AttackKind::AutoattackRand), 5), (0, 0));
        let custom = |components: &[&str]| AttackSpec {
            components: components.iter().map(|c| c.to_string()).collect(),
            ..of(AttackKind::AutoattackCustom)
        };
        assert_eq!(autoattack_targets(&custom(&["apgd-ce", "square"]), 5), (0, 0));
        assert_eq!(autoattack_targets(&custom(&["apgd-ce", "fab-t"]), 4), (9, 3));
    }
}
