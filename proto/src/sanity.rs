//! AutoAttack's warnings in words: one sentence per raised flag of a [`SanityFlags`], the same
//! for `evaluator eval`, its `--json` and every report `bench-client` writes.

use crate::v1::SanityFlags;

/// One sentence per raised flag, in the contract's order.
pub fn warnings(flags: &SanityFlags) -> Vec<String> {
    let mut out = Vec::new();
    if flags.randomised {
        out.push("outputs differ across passes of the same input: a randomised model; use AutoAttack-rand".to_string());
    }
    if flags.probabilities_not_logits {
        out.push("the outputs are probabilities, not logits".to_string());
    }
    if flags.possible_gradient_masking {
        out.push(format!(
            "{:.1}% of the points have a zero cross-entropy gradient: possible gradient masking",
            100.0 * flags.zero_gradient_fraction
        ));
    }
    if flags.dynamic {
        out.push("the model computes gradients in its forward pass: a dynamic defence, AutoAttack may be insufficient".to_string());
    }
    if flags.dlr_zero_gradient_points > 0 {
        out.push(format!("{} point(s) had a zero DLR gradient at APGD's start: possible gradient masking", flags.dlr_zero_gradient_points));
    }
    if flags.square_lowered_robust_accuracy {
        out.push(format!(
            "Square lowered the robust accuracy by {:.2} points after the gradient attacks: the evaluation may be unreliable",
            100.0 * flags.square_robust_accuracy_drop
        ));
    }
    if flags.targets_used < flags.targets_requested {
        out.push(format!(
            "{} targets asked for, the model has only {} other classes: the targeted attacks ran with {}",
            flags.targets_requested, flags.targets_used, flags.targets_used
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_sentence_per_raised_flag() {
        assert!(warnings(&SanityFlags { targets_requested: 9, targets_used: 9, ..Default::default() }).is_empty());
        let all = SanityFlags {
            randomised: true,
            probabilities_not_logits: true,
            zero_gradient_fraction: 0.25,
            possible_gradient_masking: true,
            dynamic: true,
            dlr_zero_gradient_points: 3,
            square_robust_accuracy_drop: 0.05,
            square_lowered_robust_accuracy: true,
            targets_requested: 9,
            targets_used: 4,
        };
        let sentences = warnings(&all);
        assert_eq!(sentences.len(), 7, "{sentences:?}");
        assert!(sentences[2].starts_with("25.0% of the points"));
        assert!(sentences[5].contains("by 5.00 points"));
        assert!(sentences[6].starts_with("9 targets asked for, the model has only 4"));
    }
}
