//! Attack names on the command line and their proto specs: the grammar is
//! [`rfb_proto::attacks`], shared with `evaluator eval`; here a parsed attack becomes the column
//! setting that results.json records. Unset parameters take the paper's defaults on the server
//! (eps 8/255, step eps/4, CW kappa 50); the client sends eps explicitly, and results record
//! the spec the server reports having run (every default filled in).

use anyhow::Context;
use rfb_proto::attacks::{AttackDefaults, NamedAttack};
use rfb_proto::v1::{AttackKind, AttackSpec};

use crate::results::AttackSetting;

pub use rfb_proto::attacks::DEFAULT_ATTACKS;

/// Parses an eps such as `8/255`, `0.1` or `2e-2` (a finite number in [0, 1]).
pub fn parse_eps(text: &str) -> anyhow::Result<f64> {
    Ok(rfb_proto::attacks::parse_eps(text)?)
}

/// Parameters shared by every attack of a comparison.
#[derive(Debug, Clone, Copy)]
pub struct Common {
    pub eps: f64,
    pub step_size: Option<f64>,
    pub seed: u64,
}

impl Common {
    fn defaults(&self) -> AttackDefaults {
        AttackDefaults { eps: Some(self.eps), step_size: self.step_size, steps: None, seed: self.seed }
    }
}

fn setting(attack: NamedAttack) -> AttackSetting {
    setting_of_spec(&attack.label, attack.spec)
}

/// A proto spec as a column setting labelled `label` (also how results record the spec the
/// server reports having run).
pub fn setting_of_spec(label: &str, spec: AttackSpec) -> AttackSetting {
    AttackSetting {
        label: label.to_string(),
        kind: AttackKind::try_from(spec.kind).map(|k| k.as_str_name()).unwrap_or("ATTACK_KIND_UNSPECIFIED").to_string(),
        eps: spec.eps,
        steps: spec.steps,
        step_size: spec.step_size,
        restarts: spec.restarts,
        kappa: spec.kappa,
        seed: spec.seed,
        components: spec.components,
    }
}

/// Parses one attack name into its column setting.
pub fn parse_attack(name: &str, common: &Common) -> anyhow::Result<AttackSetting> {
    Ok(setting(rfb_proto::attacks::parse_attack(name, &common.defaults())?))
}

/// Parses a comma-separated attack list; labels must be distinct.
pub fn parse_attacks(list: &str, common: &Common) -> anyhow::Result<Vec<AttackSetting>> {
    Ok(rfb_proto::attacks::parse_attacks(&[list], &common.defaults())?.into_iter().map(setting).collect())
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
    fn settings_carry_the_shared_grammar_to_the_contract() {
        // The grammar itself is tested in rfb_proto::attacks; here, that a column setting gives
        // back the spec the grammar made.
        let common = Common { eps: 0.1, step_size: Some(0.01), seed: 3 };
        let defaults = common.defaults();
        for name in ["clean", "fgsm", "pgd-7", "cw", "aa", "aa-rand@4", "aa:apgd-ce+square@2"] {
            let setting = parse_attack(name, &common).unwrap();
            let named = rfb_proto::attacks::parse_attack(name, &defaults).unwrap();
            assert_eq!(setting.label, named.label);
            assert_eq!(to_spec(&setting).unwrap(), named.spec, "{name}");
        }
        assert!(parse_attacks("pgd,pgd-20", &common).is_err());
        assert!(parse_eps("-1").is_err());
    }
}
