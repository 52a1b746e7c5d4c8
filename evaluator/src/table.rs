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
    let headers: Vec<String> = results
        .iter()
        .map(|r| if r.cached { format!("{}*", r.attack_name) } else { r.attack_name.clone() })
        .collect();
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
        let cells = results
            .iter()
            .map(|r| r.metrics.as_ref().map(|m| format!("{:.*}", decimals, pick(m))).unwrap_or_default())
            .collect();
        row(label, cells)
    };
    out.push_str(&metric("Avg", |m| m.average, 2));
    out.push_str(&metric("Worst", |m| m.worst, 2));
    out.push_str(&metric("Worst-10%", |m| m.worst_10_percent, 2));
    out.push_str(&metric("NSD", |m| m.nsd, 3));
    out
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
                ClassResult { class_name: "cat".into(), correct: correct[0], total: 4 },
                ClassResult { class_name: "dog".into(), correct: correct[1], total: 4 },
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
    }
}
