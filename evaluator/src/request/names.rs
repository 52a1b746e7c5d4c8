//! Attacks asked for by their command-line names (`EvaluateRequest.attack_names`, e.g.
//! "clean,pgd-7,aa"), parsed by the server with the grammar every client shares
//! ([`rfb_proto::attacks`]), so that a client in any language needs no copy of it.

use std::borrow::Cow;

use rfb_proto::attacks::{parse_attacks, AttackDefaults};
use rfb_proto::v1::{AttackSpec, EvaluateRequest};

use super::EngineError;

/// Longest `attack_names`, in bytes (64 attacks of long AutoAttack names fit).
pub const MAX_ATTACK_NAMES_BYTES: usize = 4096;

/// The attack specs a request asks for: `attacks` as given, or, when it is empty, the specs
/// of `attack_names` with `eps`, `step_size` and `seed` applied to each (the names' own steps
/// stay). Refused (INVALID_ARGUMENT, naming the field) when both are set, when `eps`,
/// `step_size` or `seed` come without `attack_names`, and when a name does not parse.
pub fn requested_attacks(request: &EvaluateRequest) -> Result<Cow<'_, [AttackSpec]>, EngineError> {
    let invalid = |message: String| Err(EngineError::InvalidArgument(message));
    let names = request.attack_names.as_str();
    if names.trim().is_empty() {
        if request.eps.is_some() || request.step_size.is_some() || request.seed != 0 {
            return invalid("eps, step_size and seed apply to attack_names only; set them in each AttackSpec".into());
        }
        return Ok(Cow::Borrowed(&request.attacks));
    }
    if !request.attacks.is_empty() {
        return invalid("attacks and attack_names are both set; give one of them".into());
    }
    if names.len() > MAX_ATTACK_NAMES_BYTES {
        return invalid(format!("attack_names: {} bytes; at most {MAX_ATTACK_NAMES_BYTES}", names.len()));
    }
    if names.chars().any(char::is_control) {
        return invalid("attack_names: contains a control character".into());
    }
    if let Some(eps) = request.eps.filter(|e| !(e.is_finite() && (0.0..=1.0).contains(e))) {
        return invalid(format!("eps must be in [0, 1] (pixel scale), got {eps}"));
    }
    if let Some(step) = request.step_size.filter(|s| !(s.is_finite() && *s > 0.0 && *s <= 1.0)) {
        return invalid(format!("step_size must be in (0, 1] (pixel scale), got {step}"));
    }
    let defaults = AttackDefaults { eps: request.eps, step_size: request.step_size, steps: None, seed: request.seed };
    match parse_attacks(&[names], &defaults) {
        Ok(attacks) => Ok(Cow::Owned(attacks.into_iter().map(|a| a.spec).collect())),
        Err(e) => invalid(format!("attack_names: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rfb_proto::v1::AttackKind;

    fn named(names: &str) -> EvaluateRequest {
        EvaluateRequest { attack_names: names.into(), ..Default::default() }
    }

    #[test]
    fn attack_names_become_the_clients_specs() {
        let request = EvaluateRequest { eps: Some(4.0 / 255.0), seed: 7, ..named(" clean, fgsm ,pgd-3,aa@5") };
        let specs = requested_attacks(&request).unwrap();
        let expected =
            parse_attacks(&["clean,fgsm,pgd-3,aa@5"], &AttackDefaults { eps: Some(4.0 / 255.0), step_size: None, steps: None, seed: 7 })
                .unwrap();
        assert_eq!(specs.to_vec(), expected.into_iter().map(|a| a.spec).collect::<Vec<_>>());
        assert_eq!(specs[2].kind, AttackKind::Pgd as i32);
        assert_eq!((specs[2].steps, specs[2].eps, specs[2].seed), (Some(3), Some(4.0 / 255.0), 7));

        let given =
            EvaluateRequest { attacks: vec![AttackSpec { kind: AttackKind::Clean as i32, ..Default::default() }], ..Default::default() };
        assert!(matches!(requested_attacks(&given).unwrap(), Cow::Borrowed(_)));
    }

    #[test]
    fn bad_attack_names_are_refused_naming_the_problem() {
        let both = EvaluateRequest { attacks: vec![AttackSpec::default()], ..named("clean") };
        let cases = [
            (both, "both set"),
            (named("clean,warp"), "unknown attack \"warp\""),
            (named("pgd,pgd"), "listed twice"),
            (named("pgd-0"), "pgd-0"),
            (named(&"clean,".repeat(1000)), "at most 4096"),
            (named("clean\u{0}"), "control character"),
            (EvaluateRequest { eps: Some(2.0), ..named("pgd") }, "eps must be in [0, 1]"),
            (EvaluateRequest { step_size: Some(f64::NAN), ..named("pgd") }, "step_size"),
            (EvaluateRequest { eps: Some(0.1), ..Default::default() }, "apply to attack_names only"),
            (EvaluateRequest { seed: 3, ..Default::default() }, "apply to attack_names only"),
        ];
        for (request, says) in cases {
            match requested_attacks(&request) {
                Err(EngineError::InvalidArgument(message)) => assert!(message.contains(says), "{says}: {message}"),
                other => panic!("{says}: {other:?}"),
            }
        }
    }
}
