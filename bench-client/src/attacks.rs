//! Attack names on the command line and their proto specs.
//!
//! `clean`, `fgsm`, `pgd` (PGD-20) or `pgd-N`, `cw` (CW-inf, 30 steps) or `cw-N`, `aa`
//! (AutoAttack standard: APGD-CE, APGD-T, FAB-T, Square), `aa-rand`, and
//! `aa:apgd-ce+apgd-t` for a custom AutoAttack. Unset parameters take the paper's defaults on
//! the server (eps 8/255, step 2/255, CW kappa 50); the client sends eps explicitly.

use anyhow::{bail, Context};
use rfb_proto::v1::{AttackKind, AttackSpec};

use crate::results::AttackSetting;

/// The paper's attacks, in Table 1's column order.
pub const DEFAULT_ATTACKS: &str = "clean,fgsm,pgd,cw,aa";

/// Parses an eps such as `8/255`, `0.1` or `2e-2`.
pub fn parse_eps(text: &str) -> anyhow::Result<f64> {
    let value = if let Some((num, den)) = text.split_once('/') {
        let num: f64 = num.trim().parse().with_context(|| format!("eps '{text}': bad numerator"))?;
        let den: f64 = den.trim().parse().with_context(|| format!("eps '{text}': bad denominator"))?;
        num / den
    } else {
        text.trim().parse().with_context(|| format!("eps '{text}' is not a number or a fraction like 8/255"))?
    };
    if !value.is_finite() || value < 0.0 {
        bail!("eps must be a finite non-negative number, got '{text}'");
    }
    Ok(value)
}

/// Parameters shared by every attack of a comparison.
#[derive(Debug, Clone, Copy)]
pub struct Common {
    pub eps: f64,
    pub step_size: Option<f64>,
    pub seed: u64,
}

/// Parses one attack name into its column setting.
pub fn parse_attack(name: &str, common: &Common) -> anyhow::Result<AttackSetting> {
    let lower = name.trim().to_ascii_lowercase();
    let mut setting = AttackSetting {
        label: String::new(),
        kind: String::new(),
        eps: Some(common.eps),
        steps: None,
        step_size: None,
        restarts: None,
        kappa: None,
        seed: common.seed,
        components: Vec::new(),
    };
    let steps_of = |rest: &str| -> anyhow::Result<i64> {
        let steps: i64 = rest.parse().with_context(|| format!("attack '{name}': '{rest}' is not a number of steps"))?;
        if !(1..=10_000).contains(&steps) {
            bail!("attack '{name}': steps must be in 1..=10000");
        }
        Ok(steps)
    };
    match lower.as_str() {
        "clean" | "natural" | "none" => {
            setting.label = "Clean".into();
            setting.kind = "CLEAN".into();
            setting.eps = None;
            setting.seed = 0;
        }
        "fgsm" => {
            setting.label = "FGSM".into();
            setting.kind = "FGSM".into();
        }
        "aa" | "autoattack" => {
            setting.label = "AA".into();
            setting.kind = "AUTOATTACK_STANDARD".into();
        }
        "aa-rand" | "autoattack-rand" => {
            setting.label = "AA-rand".into();
            setting.kind = "AUTOATTACK_RAND".into();
        }
        _ => {
            if let Some(rest) = lower.strip_prefix("pgd") {
                let steps = if rest.is_empty() { 20 } else { steps_of(rest.trim_start_matches('-'))? };
                setting.label = format!("PGD-{steps}");
                setting.kind = "PGD".into();
                setting.steps = Some(steps);
                setting.step_size = common.step_size;
            } else if let Some(rest) = lower.strip_prefix("cw") {
                let rest = rest.trim_start_matches('-');
                let rest = rest.strip_prefix("inf").unwrap_or(rest).trim_start_matches('-');
                setting.label = "CW-inf".into();
                setting.kind = "CW_INF".into();
                if !rest.is_empty() {
                    let steps = steps_of(rest)?;
                    setting.label = format!("CW-inf-{steps}");
                    setting.steps = Some(steps);
                }
                setting.step_size = common.step_size;
            } else if let Some(rest) = lower.strip_prefix("aa:") {
                let components: Vec<String> = rest.split('+').map(|c| c.trim().to_string()).filter(|c| !c.is_empty()).collect();
                const KNOWN: [&str; 5] = ["apgd-ce", "apgd-t", "apgd-dlr", "fab-t", "square"];
                if components.is_empty() {
                    bail!("attack '{name}': list AutoAttack components after 'aa:', e.g. aa:apgd-ce+apgd-t");
                }
                if let Some(bad) = components.iter().find(|c| !KNOWN.contains(&c.as_str())) {
                    bail!("attack '{name}': unknown AutoAttack component '{bad}' (known: {})", KNOWN.join(", "));
                }
                setting.label = format!("AA({})", components.join("+"));
                setting.kind = "AUTOATTACK_CUSTOM".into();
                setting.components = components;
            } else {
                bail!("unknown attack '{name}' (known: clean, fgsm, pgd, pgd-N, cw, cw-N, aa, aa-rand, aa:COMPONENT+...)");
            }
        }
    }
    Ok(setting)
}

/// Parses a comma-separated attack list; labels must be distinct.
pub fn parse_attacks(list: &str, common: &Common) -> anyhow::Result<Vec<AttackSetting>> {
    let mut attacks: Vec<AttackSetting> = Vec::new();
    for name in list.split(',').filter(|n| !n.trim().is_empty()) {
        let attack = parse_attack(name, common)?;
        if attacks.iter().any(|a| a.label == attack.label) {
            bail!("attack '{}' is listed twice", attack.label);
        }
        attacks.push(attack);
    }
    if attacks.is_empty() {
        bail!("no attacks given");
    }
    Ok(attacks)
}

/// The proto message for a column setting.
pub fn to_spec(setting: &AttackSetting) -> anyhow::Result<AttackSpec> {
    let kind = AttackKind::from_str_name(&setting.kind).with_context(|| format!("unknown attack kind '{}'", setting.kind))?;
    Ok(AttackSpec {
        kind: kind as i32,
        eps: setting.eps,
        steps: setting.steps,
        step_size: setting.step_size,
        restarts: setting.restarts,
        kappa: setting.kappa,
        seed: setting.seed,
        components: setting.components.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eps_and_names() {
        assert!((parse_eps("8/255").unwrap() - 8.0 / 255.0).abs() < 1e-15);
        assert_eq!(parse_eps("0.1").unwrap(), 0.1);
        assert!(parse_eps("-1").is_err());
        assert!(parse_eps("x/2").is_err());
        let common = Common { eps: 0.1, step_size: None, seed: 3 };
        let attacks = parse_attacks(DEFAULT_ATTACKS, &common).unwrap();
        let labels: Vec<&str> = attacks.iter().map(|a| a.label.as_str()).collect();
        assert_eq!(labels, ["Clean", "FGSM", "PGD-20", "CW-inf", "AA"]);
        assert_eq!(attacks[0].eps, None);
        assert_eq!(attacks[2].eps, Some(0.1));
        assert_eq!(attacks[2].steps, Some(20));
        assert_eq!(parse_attack("pgd-7", &common).unwrap().label, "PGD-7");
        assert_eq!(parse_attack("cw-inf", &common).unwrap().label, "CW-inf");
        assert_eq!(parse_attack("aa:apgd-ce+apgd-t", &common).unwrap().components, ["apgd-ce", "apgd-t"]);
        assert!(parse_attack("aa:apgd-x", &common).is_err());
        assert!(parse_attack("deepfool", &common).is_err());
        assert!(parse_attacks("pgd,pgd-20", &common).is_err());
        let spec = to_spec(&attacks[4]).unwrap();
        assert_eq!(spec.kind, AttackKind::AutoattackStandard as i32);
        assert_eq!(spec.seed, 3);
    }
}
