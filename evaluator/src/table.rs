//! The text table `evaluator eval` prints: one row per class, one column per attack, class-wise
//! accuracy in percent, then the Avg / Worst / Worst-10% / NSD rows (NSD = population SD / Avg).

use rfb_proto::v1::AttackResult;

/// Renders the results of one evaluation (all on the same classes).
pub fn render(results: &[AttackResult]) -> String {
    let mut out = String::new();
    if results.is_empty() {
        return out;
    }
    let class_names: Vec<&str> = results[0].classes.iter().map(|c| c.class_name.as_str()).collect();
    let headers: Vec<String> =
        results.iter().map(|r| if r.cached { format!("{}*", r.attack_name) } else { r.attack_name.clone() }).collect();
    let first_width = class_names.iter().map(|n| n.len()).chain([9, 5]).max().unwrap_or(9);
    let widths: Vec<usize> = headers.iter().map(|h| h.len().max(7)).collect();
    let row = |label: &str, cells: Vec<String>| {
        let mut line = format!("{label:<first_width$}");
        for (cell, width) in cells.iter().zip(&widths) {
            line.push_str(&format!("  {cell:>width$}"));
        }
        line.push('\n');
        line
    };
    out.push_str(&row("class", headers.clone()));
    let rule_length = first_width + widths.iter().map(|w| w + 2).sum::<usize>();
    out.push_str(&format!("{}\n", "-".repeat(rule_length)));
    for (index, name) in class_names.iter().enumerate() {
        let cells = results
            .iter()
            .map(|r| match r.classes.get(index) {
                Some(c) if c.total > 0 => format!("{:.2}", 100.0 * c.correct as f64 / c.total as f64),
                _ => "-".to_string(),
            })
            .collect();
        out.push_str(&row(name, cells));
    }
    out.push_str(&format!("{}\n", "-".repeat(rule_length)));
    let metric = |label: &str, pick: fn(&rfb_proto::v1::Metrics) -> f64, decimals: usize| {
        let cells = results.iter().map(|r| r.metrics.as_ref().map(|m| format!("{:.*}", decimals, pick(m))).unwrap_or_default()).collect();
        row(label, cells)
    };
    out.push_str(&metric("Avg", |m| m.average, 2));
    out.push_str(&metric("Worst", |m| m.worst, 2));
    out.push_str(&metric("Worst-10%", |m| m.worst_10_percent, 2));
    out.push_str(&metric("NSD", |m| m.nsd, 3));
    let flows: Vec<String> = results
        .iter()
        .filter_map(|r| {
            let top = largest_flows(r, FLOWS_SHOWN);
            (!top.is_empty()).then(|| format!("  {}: {}", r.attack_name, top.join(", ")))
        })
        .collect();
    if !flows.is_empty() {
        out.push_str(&format!("\nLargest adversarial confusions (true -> predicted after the attack: points):\n{}\n", flows.join("\n")));
    }
    out
}

/// Flows listed per attack under the table.
const FLOWS_SHOWN: usize = 3;

/// The `count` largest off-diagonal cells of a result's confusion, as `true -> predicted: n`
/// (largest first, ties in class order); empty when the result has no confusion.
pub fn largest_flows(result: &AttackResult, count: usize) -> Vec<String> {
    let mut cells: Vec<(i64, usize, usize)> = Vec::new();
    for (from, class) in result.classes.iter().enumerate() {
        for (to, &n) in class.predicted_as.iter().enumerate() {
            if to != from && n > 0 {
                cells.push((n, from, to));
            }
        }
    }
    cells.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let name = |k: usize| result.classes.get(k).map(|c| c.class_name.clone()).unwrap_or_else(|| k.to_string());
    cells.into_iter().take(count).map(|(n, from, to)| format!("{} -> {}: {n}", name(from), name(to))).collect()
}

/// One result as JSON, for `evaluator eval --json`: what a script needs to read the counts
/// without parsing the table (the contract's field names).
pub fn result_json(result: &AttackResult) -> serde_json::Value {
    let spec = result.attack.clone().unwrap_or_default();
    let name_of = |value: i32, name: fn(i32) -> Option<&'static str>| name(value).unwrap_or("UNKNOWN");
    serde_json::json!({
        "attack_name": result.attack_name,
        "attack": {
            "kind": name_of(spec.kind, |k| rfb_proto::v1::AttackKind::try_from(k).ok().map(|k| k.as_str_name())),
            "eps": spec.eps,
            "steps": spec.steps,
            "step_size": spec.step_size,
            "restarts": spec.restarts,
            "kappa": spec.kappa,
            "seed": spec.seed,
            "components": spec.components,
        },
        "precision": name_of(result.precision, |p| rfb_proto::v1::Precision::try_from(p).ok().map(|p| p.as_str_name())),
        "classes": result.classes.iter().map(|c| serde_json::json!({"class_name": c.class_name, "correct": c.correct, "total": c.total, "predicted_as": c.predicted_as})).collect::<Vec<_>>(),
        "metrics": result.metrics.as_ref().map(|m| serde_json::json!({
            "average": m.average, "worst": m.worst, "worst_10_percent": m.worst_10_percent, "nsd": m.nsd,
        })),
        "components": result.components.iter().map(|c| serde_json::json!({
            "name": c.name, "seconds": c.seconds, "attacked": c.attacked, "robust_after": c.robust_after,
        })).collect::<Vec<_>>(),
        "sanity": result.sanity.as_ref().map(|s| serde_json::json!({
            "randomised": s.randomised,
            "probabilities_not_logits": s.probabilities_not_logits,
            "zero_gradient_fraction": s.zero_gradient_fraction,
            "possible_gradient_masking": s.possible_gradient_masking,
            "dynamic": s.dynamic,
            "dlr_zero_gradient_points": s.dlr_zero_gradient_points,
            "square_robust_accuracy_drop": s.square_robust_accuracy_drop,
            "square_lowered_robust_accuracy": s.square_lowered_robust_accuracy,
            "targets_requested": s.targets_requested,
            "targets_used": s.targets_used,
            "warnings": sanity_warnings(s),
        })),
        "dataset": result.dataset,
        "split": name_of(result.split, |s| rfb_proto::v1::Split::try_from(s).ok().map(|s| s.as_str_name())),
        "examples_per_class": result.examples_per_class,
        "device": result.device,
        "elapsed_seconds": result.elapsed_seconds,
        "cached": result.cached,
        "versions": result.versions.as_ref().map(|v| serde_json::json!({"evaluator": v.evaluator, "libtorch": v.libtorch, "proto": v.proto})),
    })
}

/// AutoAttack's raised warnings in words.
pub fn sanity_warnings(flags: &rfb_proto::v1::SanityFlags) -> Vec<String> {
    rfb_proto::sanity::warnings(flags)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rfb_proto::v1::{ClassResult, Metrics};

    #[test]
    fn rows_and_columns() {
        let result = |name: &str, correct: [i64; 2]| AttackResult {
            attack_name: name.into(),
            classes: vec![
                ClassResult { class_name: "cat".into(), correct: correct[0], total: 4, predicted_as: vec![correct[0], 4 - correct[0]] },
                ClassResult { class_name: "dog".into(), correct: correct[1], total: 4, predicted_as: vec![4 - correct[1], correct[1]] },
            ],
            metrics: Some(Metrics { average: 50.0, worst: 25.0, worst_10_percent: 25.0, nsd: 0.5 }),
            ..Default::default()
        };
        let text = render(&[result("Clean", [4, 3]), result("PGD-20", [1, 2])]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].contains("Clean") && lines[0].contains("PGD-20"));
        assert!(lines[2].starts_with("cat") && lines[2].contains("100.00") && lines[2].contains("25.00"));
        assert!(lines[3].starts_with("dog") && lines[3].contains("75.00") && lines[3].contains("50.00"));
        assert!(text.contains("Worst-10%") && text.contains("NSD") && text.contains("0.500"));
        // The largest confusions, largest first; Clean's one off-diagonal point too.
        assert!(text.contains("  PGD-20: cat -> dog: 3, dog -> cat: 2"), "{text}");
        assert!(text.contains("  Clean: dog -> cat: 1"), "{text}");
    }
}
