//! Attacks as people name them on a command line, turned into the contract's [`AttackSpec`]s:
//! the one grammar of `evaluator eval --attacks` and `bench-client compare --attacks`.
//!
//! | name | attack |
//! | --- | --- |
//! | `clean` (`natural`, `none`) | no attack |
//! | `fgsm` | FGSM |
//! | `pgd`, `pgd-N` (`pgdN`) | PGD with N steps (20 when left out) |
//! | `cw`, `cw-inf`, `cw-N`, `cw-inf-N` | CW-inf with N steps (30 when left out) |
//! | `aa` (`autoattack`) | AutoAttack standard: APGD-CE, APGD-T, FAB-T, Square |
//! | `aa-rand` | AutoAttack for randomised models: APGD-CE and APGD-DLR with EOT |
//! | `aa:C+C+...` | AutoAttack with the listed components ([`AUTOATTACK_COMPONENTS`]) |
//!
//! Any AutoAttack name may end in `@N`: N iterations of its APGD and FAB components and N queries
//! of its Square instead of the reference's 100 and 5000, for quick checks (the result is then
//! named `AutoAttack@N`, never plain AutoAttack). Unset parameters take the server's defaults;
//! eps, the step size and the seed come from [`AttackDefaults`].

use crate::v1::{AttackKind, AttackSpec};

/// The components an AUTOATTACK_CUSTOM spec may list, in AutoAttack's order.
pub const AUTOATTACK_COMPONENTS: [&str; 5] = ["apgd-ce", "apgd-t", "apgd-dlr", "fab-t", "square"];

/// The components of AutoAttack's standard version (AUTOATTACK_STANDARD), in the order they run.
pub const AUTOATTACK_STANDARD_COMPONENTS: [&str; 4] = ["apgd-ce", "apgd-t", "fab-t", "square"];

/// The paper's attacks, in Table 1's column order.
pub const DEFAULT_ATTACKS: &str = "clean,fgsm,pgd,cw,aa";

/// The most steps or iterations a name may ask for (the server's own limit may be lower).
pub const MAX_NAMED_STEPS: i64 = 10_000;

/// Why an attack name or a radius was not understood.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AttackNameError {
    #[error("unknown attack {0:?} (known: clean, fgsm, pgd, pgd-N, cw, cw-N, aa, aa-rand, aa:COMPONENT+..., any aa with @N)")]
    Unknown(String),
    #[error("attack {name:?}: {problem}")]
    Invalid { name: String, problem: String },
    #[error("eps {text:?}: {problem}")]
    Eps { text: String, problem: String },
    #[error("attack {0:?} is listed twice")]
    Repeated(String),
    #[error("no attacks given")]
    Empty,
}

/// Parameters every attack of a list shares; `None` leaves the server's default.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct AttackDefaults {
    pub eps: Option<f64>,
    pub step_size: Option<f64>,
    /// Steps of PGD and CW-inf where the name gives none.
    pub steps: Option<i64>,
    pub seed: u64,
}

/// One parsed attack: a short label for table columns (`PGD-20`, `AA`, `AA(apgd-ce)@5`) and its
/// spec.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedAttack {
    pub label: String,
    pub spec: AttackSpec,
}

/// Parses a radius such as `8/255`, `0.1` or `2e-2`: a finite number in [0, 1].
pub fn parse_eps(text: &str) -> Result<f64, AttackNameError> {
    let problem = |problem: &str| AttackNameError::Eps { text: text.to_string(), problem: problem.to_string() };
    let value = match text.split_once('/') {
        Some((numerator, denominator)) => {
            let numerator: f64 = numerator.trim().parse().map_err(|_| problem("bad numerator"))?;
            let denominator: f64 = denominator.trim().parse().map_err(|_| problem("bad denominator"))?;
            numerator / denominator
        }
        None => text.trim().parse().map_err(|_| problem("not a number or a fraction like 8/255"))?,
    };
    if !(value.is_finite() && (0.0..=1.0).contains(&value)) {
        return Err(problem("must be a finite number in [0, 1] (pixel scale)"));
    }
    Ok(value)
}

/// Parses one attack name (see the module docs).
pub fn parse_attack(name: &str, defaults: &AttackDefaults) -> Result<NamedAttack, AttackNameError> {
    let lower = name.trim().to_ascii_lowercase();
    let invalid = |problem: String| AttackNameError::Invalid { name: name.to_string(), problem };
    let count = |text: &str, what: &str| -> Result<i64, AttackNameError> {
        let value: i64 = text.parse().map_err(|_| invalid(format!("{text:?} is not a number of {what}")))?;
        if !(1..=MAX_NAMED_STEPS).contains(&value) {
            return Err(invalid(format!("{what} must be in 1..={MAX_NAMED_STEPS}")));
        }
        Ok(value)
    };
    let spec = |kind: AttackKind| AttackSpec { kind: kind as i32, eps: defaults.eps, seed: defaults.seed, ..Default::default() };

    // AutoAttack, with its optional @N.
    let (base, iterations) = match lower.split_once('@') {
        Some((base, n)) => (base.trim(), Some(count(n.trim(), "iterations")?)),
        None => (lower.as_str(), None),
    };
    let autoattack = match base {
        "aa" | "autoattack" => Some((AttackKind::AutoattackStandard, "AA".to_string(), Vec::new())),
        "aa-rand" | "autoattack-rand" => Some((AttackKind::AutoattackRand, "AA-rand".to_string(), Vec::new())),
        _ => match base.strip_prefix("aa:") {
            Some(rest) => {
                let components: Vec<String> = rest.split('+').map(|c| c.trim().to_string()).filter(|c| !c.is_empty()).collect();
                if components.is_empty() {
                    return Err(invalid("list AutoAttack components after 'aa:', e.g. aa:apgd-ce+apgd-t".into()));
                }
                if let Some(bad) = components.iter().find(|c| !AUTOATTACK_COMPONENTS.contains(&c.as_str())) {
                    return Err(invalid(format!("unknown AutoAttack component {bad:?} (known: {})", AUTOATTACK_COMPONENTS.join(", "))));
                }
                Some((AttackKind::AutoattackCustom, format!("AA({})", components.join("+")), components))
            }
            None => None,
        },
    };
    if let Some((kind, label, components)) = autoattack {
        let label = match iterations {
            Some(n) => format!("{label}@{n}"),
            None => label,
        };
        return Ok(NamedAttack { label, spec: AttackSpec { steps: iterations, components, ..spec(kind) } });
    }
    if iterations.is_some() {
        return Err(invalid("only AutoAttack names take @N; PGD and CW-inf take their steps as pgd-N and cw-N".into()));
    }

    match lower.as_str() {
        "clean" | "natural" | "none" => {
            return Ok(NamedAttack { label: "Clean".into(), spec: AttackSpec { eps: None, seed: 0, ..spec(AttackKind::Clean) } })
        }
        "fgsm" => return Ok(NamedAttack { label: "FGSM".into(), spec: spec(AttackKind::Fgsm) }),
        _ => {}
    }
    if let Some(rest) = lower.strip_prefix("pgd") {
        let rest = rest.trim_start_matches('-');
        let steps = if rest.is_empty() { defaults.steps.unwrap_or(20) } else { count(rest, "steps")? };
        return Ok(NamedAttack {
            label: format!("PGD-{steps}"),
            spec: AttackSpec { steps: Some(steps), step_size: defaults.step_size, ..spec(AttackKind::Pgd) },
        });
    }
    if let Some(rest) = lower.strip_prefix("cw") {
        let rest = rest.trim_start_matches('-');
        let rest = rest.strip_prefix("inf").unwrap_or(rest).trim_start_matches('-');
        let steps = if rest.is_empty() { defaults.steps } else { Some(count(rest, "steps")?) };
        let label = match steps {
            Some(steps) if !rest.is_empty() => format!("CW-inf-{steps}"),
            _ => "CW-inf".to_string(),
        };
        return Ok(NamedAttack { label, spec: AttackSpec { steps, step_size: defaults.step_size, ..spec(AttackKind::CwInf) } });
    }
    Err(AttackNameError::Unknown(name.trim().to_string()))
}

/// Parses attack names (each may also hold several, comma-separated); labels must be distinct.
pub fn parse_attacks<S: AsRef<str>>(names: &[S], defaults: &AttackDefaults) -> Result<Vec<NamedAttack>, AttackNameError> {
    let mut attacks: Vec<NamedAttack> = Vec::new();
    for name in names.iter().flat_map(|n| n.as_ref().split(',')).filter(|n| !n.trim().is_empty()) {
        let attack = parse_attack(name, defaults)?;
        if attacks.iter().any(|a| a.label == attack.label) {
            return Err(AttackNameError::Repeated(attack.label));
        }
        attacks.push(attack);
    }
    if attacks.is_empty() {
        return Err(AttackNameError::Empty);
    }
    Ok(attacks)
}

/// The name that [`parse_attack`] reads back into `spec`'s kind, steps and components (eps,
/// step size and seed travel separately): what a matrix of every attack kind is generated
/// from, and what a user types to repeat a request.
pub fn attack_name(spec: &AttackSpec) -> Option<String> {
    let kind = AttackKind::try_from(spec.kind).ok()?;
    let at = |base: String| match spec.steps {
        Some(n) => format!("{base}@{n}"),
        None => base,
    };
    Some(match kind {
        AttackKind::Unspecified => return None,
        AttackKind::Clean => "clean".into(),
        AttackKind::Fgsm => "fgsm".into(),
        AttackKind::Pgd => format!("pgd-{}", spec.steps.unwrap_or(20)),
        AttackKind::CwInf => spec.steps.map(|n| format!("cw-{n}")).unwrap_or_else(|| "cw".into()),
        AttackKind::AutoattackStandard => at("aa".into()),
        AttackKind::AutoattackRand => at("aa-rand".into()),
        AttackKind::AutoattackCustom => at(format!("aa:{}", spec.components.join("+"))),
    })
}

/// Every attack kind of the contract (AUTOATTACK_CUSTOM once per component), as specs with
/// `steps` steps or iterations where the kind takes any: generated from the contract's enum, so
/// a new kind or component joins every list made from it.
pub fn every_attack_kind(steps: Option<i64>) -> Vec<AttackSpec> {
    let mut specs = Vec::new();
    for value in 1.. {
        let Ok(kind) = AttackKind::try_from(value) else { break };
        let base = AttackSpec { kind: kind as i32, ..Default::default() };
        match kind {
            AttackKind::Unspecified => {}
            AttackKind::Clean | AttackKind::Fgsm => specs.push(base),
            AttackKind::AutoattackCustom => {
                specs.extend(AUTOATTACK_COMPONENTS.iter().map(|c| AttackSpec { steps, components: vec![c.to_string()], ..base.clone() }))
            }
            _ => specs.push(AttackSpec { steps, ..base }),
        }
    }
    specs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_radii_and_labels() {
        assert!((parse_eps("8/255").unwrap() - 8.0 / 255.0).abs() < 1e-15);
        assert_eq!(parse_eps("0.1").unwrap(), 0.1);
        for bad in ["-1", "-1/255", "x/2", "2", "nan", "1/0"] {
            assert!(parse_eps(bad).is_err(), "{bad}");
        }
        let defaults = AttackDefaults { eps: Some(0.1), seed: 3, ..Default::default() };
        let attacks = parse_attacks(&[DEFAULT_ATTACKS], &defaults).unwrap();
        let labels: Vec<&str> = attacks.iter().map(|a| a.label.as_str()).collect();
        assert_eq!(labels, ["Clean", "FGSM", "PGD-20", "CW-inf", "AA"]);
        assert_eq!(attacks[0].spec.eps, None);
        assert_eq!(attacks[2].spec.eps, Some(0.1));
        assert_eq!(attacks[2].spec.steps, Some(20));
        assert_eq!(attacks[4].spec.kind, AttackKind::AutoattackStandard as i32);
        assert_eq!(attacks[4].spec.seed, 3);
        assert_eq!(parse_attack("pgd-7", &defaults).unwrap().label, "PGD-7");
        assert_eq!(parse_attack("pgd7", &defaults).unwrap().spec.steps, Some(7));
        assert_eq!(parse_attack("cw-inf", &defaults).unwrap().label, "CW-inf");
        assert_eq!(parse_attack("cw-30", &defaults).unwrap().spec.steps, Some(30));
        let custom = parse_attack("aa:apgd-ce+apgd-t@5", &defaults).unwrap();
        assert_eq!((custom.label.as_str(), custom.spec.steps), ("AA(apgd-ce+apgd-t)@5", Some(5)));
        assert_eq!(custom.spec.components, ["apgd-ce", "apgd-t"]);
        assert_eq!(parse_attack("aa@10", &defaults).unwrap().spec.steps, Some(10));
        for bad in ["aa:apgd-x", "aa:", "deepfool", "pgd-0", "pgd-x", "pgd@3", "aa@0", "aa@-2"] {
            assert!(parse_attack(bad, &defaults).is_err(), "{bad}");
        }
        assert_eq!(parse_attacks(&["pgd,pgd-20"], &defaults), Err(AttackNameError::Repeated("PGD-20".into())));
        assert_eq!(parse_attacks(&[" , "], &defaults), Err(AttackNameError::Empty));
        // The evaluator's --steps applies to PGD and CW-inf where the name gives none.
        let with_steps = AttackDefaults { steps: Some(5), ..defaults };
        assert_eq!(parse_attack("pgd", &with_steps).unwrap().spec.steps, Some(5));
        assert_eq!(parse_attack("cw", &with_steps).unwrap().spec.steps, Some(5));
    }

    #[test]
    fn every_kind_names_itself_back() {
        let specs = every_attack_kind(Some(3));
        // Clean, FGSM, PGD, CW-inf, standard, rand, and one custom per component.
        assert_eq!(specs.len(), 6 + AUTOATTACK_COMPONENTS.len());
        for spec in &specs {
            let name = attack_name(spec).unwrap();
            let parsed = parse_attack(&name, &AttackDefaults::default()).unwrap();
            assert_eq!((parsed.spec.kind, &parsed.spec.components), (spec.kind, &spec.components), "{name}");
            if !matches!(AttackKind::try_from(spec.kind), Ok(AttackKind::Clean | AttackKind::Fgsm)) {
                assert_eq!(parsed.spec.steps, Some(3), "{name}");
            }
        }
    }
}
