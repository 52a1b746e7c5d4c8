//! The report.md sections and CSV files of where the robustness goes: the uncertainty of one
//! evaluation, the adversarial confusions and the robustness curves.
//!
//! Files (written by `report::write_report`):
//! - `uncertainty.csv`: per model, seed and attack, every class's Clopper-Pearson interval and
//!   each metric's bootstrap interval, and the probability that the worst class is the worst;
//! - `confusion.csv`: per model and attack, every true -> predicted mean count over seeds and
//!   its share of the true class (only when the results have confusions);
//! - `curves.csv`: per model, class and radius the mean accuracy, with each class's mean over
//!   the range and halving radius (only when the results have a sweep).

use std::fmt::Write as _;

use crate::confusion::{self, MeanConfusion};
use crate::curves::{self, Halving, ModelCurves};
use crate::insight_plots;
use crate::report::{csv_field, csv_number, fmt_confidence, interval, markdown_cell, mean_sd, number};
use crate::results::Results;
use crate::summary::{Metric, Summary};
use crate::uncertainty::{bootstrap_width_key, Evaluation};

/// How many flows the tables list per model and attack.
pub const TOP_FLOWS: usize = 5;

/// Section titles, shared by report.md and the page.
pub const UNCERTAINTY_TITLE: &str = "Uncertainty of one evaluation";
pub const CONFUSIONS_TITLE: &str = "Adversarial confusions";
pub const CURVES_TITLE: &str = "Robustness curves";

/// What the within-one-evaluation intervals mean, in words.
pub fn uncertainty_explanation(summary: &Summary, results: &Results) -> String {
    let c = fmt_confidence(summary.confidence);
    let u = &results.settings.uncertainty;
    format!(
        "The intervals above are across seeds: how much training varies. These are within one evaluation (one model, seed \
         and attack): how much its numbers could move had the test set held other points of the same classes. \
         Class accuracy: the exact binomial (Clopper-Pearson) {c}% interval of k correct of n points. Avg, Worst, \
         Worst-10% and NSD: the {c}% percentile interval of a class-stratified bootstrap over the test points ({} \
         resamples, seed {}: in each, every class draws its n points with replacement from its own points). P(worst): \
         the share of resamples in which the reported worst class (lowest measured accuracy, the first in class order \
         on a tie) has the lowest accuracy, a tie of m classes counting 1/m each. Widths are in percentage points \
         (NSD: in NSD units); the summary gives their mean ± sd over seeds.",
        u.bootstrap_resamples, u.bootstrap_seed
    )
}

fn evaluations_of<'a>(summary: &'a Summary, model: &'a str, attack: &'a str) -> impl Iterator<Item = &'a Evaluation> + 'a {
    summary.evaluations.iter().filter(move |e| e.model == model && e.attack == attack)
}

fn metric_interval(e: &Evaluation, metric: Metric) -> String {
    match e.bootstrap.interval(metric) {
        Some(i) => format!("{} {}", number(i.estimate, metric.decimals()), interval(i.low, i.high, metric.decimals())),
        None => "–".into(),
    }
}

/// `## Uncertainty of one evaluation`: across-seed summary, per seed, per class.
pub fn uncertainty_markdown(results: &Results, summary: &Summary) -> String {
    let mut out = format!("\n## {UNCERTAINTY_TITLE}\n\n{}\n", uncertainty_explanation(summary, results));
    if summary.evaluations.is_empty() {
        out.push_str("\nNo evaluations.\n");
        return out;
    }
    out.push_str("\n### Within-seed interval widths, mean ± sd over seeds\n\n");
    out.push_str("| Model | Attack | Seeds | Class accuracy (Clopper-Pearson) | Avg (bootstrap) | Worst (bootstrap) | Worst-10% (bootstrap) | NSD (bootstrap) | P(worst) |\n");
    out.push_str("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    for model in &summary.models {
        for attack in &summary.attacks {
            let find = |key: &str| summary.within_seed.iter().find(|w| &w.model == model && &w.attack == attack && w.key == key);
            let Some(first) = find("class_clopper_pearson_width") else { continue };
            let _ = write!(
                out,
                "| {} | {} | {} | {} |",
                markdown_cell(model),
                markdown_cell(attack),
                first.description.n,
                mean_sd(&first.description, 2)
            );
            for metric in Metric::ALL {
                let text =
                    find(bootstrap_width_key(metric)).map(|w| mean_sd(&w.description, metric.decimals())).unwrap_or_else(|| "–".into());
                let _ = write!(out, " {text} |");
            }
            let p = find("p_worst_class_is_worst").map(|w| mean_sd(&w.description, 2)).unwrap_or_else(|| "–".into());
            let _ = writeln!(out, " {p} |");
        }
    }
    out.push_str("\n### Per seed: measured value [bootstrap interval]\n\n");
    out.push_str("| Model | Seed | Attack | Worst class | Worst | Worst-10% | NSD | P(worst) | Mean class interval width |\n");
    out.push_str("| --- | ---: | --- | --- | --- | --- | --- | ---: | ---: |\n");
    for e in &summary.evaluations {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            markdown_cell(&e.model),
            e.seed,
            markdown_cell(&e.attack),
            markdown_cell(e.worst_class_name().unwrap_or("–")),
            metric_interval(e, Metric::Worst),
            metric_interval(e, Metric::Worst10),
            metric_interval(e, Metric::Nsd),
            number(e.bootstrap.p_worst_is_worst(), 2),
            number(e.mean_class_width(), 2)
        );
    }
    let c = fmt_confidence(summary.confidence);
    let _ = writeln!(out, "\n### Per class: accuracy (%) and its {c}% Clopper-Pearson interval, per seed\n");
    out.push_str(&class_interval_table(summary, markdown_cell, "| ", " | ", " |\n"));
    out
}

/// The per-class interval table (model, attack, class; one column per seed), in Markdown.
fn class_interval_table(summary: &Summary, cell: impl Fn(&str) -> String, open: &str, sep: &str, close: &str) -> String {
    let mut seeds: Vec<u64> = summary.evaluations.iter().map(|e| e.seed).collect();
    seeds.sort_unstable();
    seeds.dedup();
    let mut out = String::new();
    let mut head = vec!["Model".to_string(), "Attack".into(), "Class".into()];
    head.extend(seeds.iter().map(|s| format!("seed {s}")));
    let _ = write!(out, "{open}{}{close}", head.join(sep));
    let rule: Vec<&str> = (0..head.len()).map(|i| if i < 3 { "---" } else { "---:" }).collect();
    let _ = write!(out, "{open}{}{close}", rule.join(sep));
    for model in &summary.models {
        for attack in &summary.attacks {
            let runs: Vec<&Evaluation> = evaluations_of(summary, model, attack).collect();
            let Some(first) = runs.first() else { continue };
            for (k, class) in first.class_names.iter().enumerate() {
                let mut row = vec![cell(model), cell(attack), cell(class)];
                for seed in &seeds {
                    row.push(match runs.iter().find(|e| e.seed == *seed).and_then(|e| e.classes.get(k)) {
                        Some(ci) => format!("{}/{}: {} {}", ci.correct, ci.total, number(ci.accuracy, 1), interval(ci.low, ci.high, 1)),
                        None => "–".into(),
                    });
                }
                let _ = write!(out, "{open}{}{close}", row.join(sep));
            }
        }
    }
    out
}

/// What the confusion section says when it has nothing to show (None when it has).
pub fn confusions_missing(results: &Results) -> Option<&'static str> {
    if !confusion::any_recorded(results) {
        Some("These results have no confusion matrices (made before bench-client recorded the class each point is predicted as after the attack).")
    } else if confusion::mean_confusions(results).is_empty() {
        Some("Every confusion matrix in these results disagrees with its counts (rows must add up to the class totals, the diagonal equal the robust counts); none is shown.")
    } else {
        None
    }
}

/// What the confusion numbers mean, in words.
pub const CONFUSIONS_EXPLANATION: &str = "For every attack, the class each point is predicted as after it (for AutoAttack, the \
     output of the component that broke the point; a point that survived counts as its own class), mean count over seeds. \
     A flow source -> target: the mean number of source points predicted as target, and its share of the source class's \
     points. Main target: per class, the wrong class its broken points go to most often (first in class order on a tie) \
     and its share of them (ratio of means over seeds).";

/// `## Adversarial confusions`: top flows and every class's main target.
pub fn confusions_markdown(results: &Results) -> String {
    let mut out = format!("\n## {CONFUSIONS_TITLE}\n\n");
    if let Some(missing) = confusions_missing(results) {
        let _ = writeln!(out, "{missing}");
        return out;
    }
    let _ = writeln!(out, "{CONFUSIONS_EXPLANATION}\n");
    let all = confusion::mean_confusions(results);
    let left_out: usize = all.iter().map(|c| c.left_out).sum();
    if left_out > 0 {
        let _ = writeln!(out, "{left_out} evaluation(s) without a matrix consistent with their counts are left out of the means.\n");
    }
    let _ = writeln!(out, "### Top {TOP_FLOWS} flows (source -> target)\n");
    out.push_str("| Model | Attack | Seeds | Rank | Flow | Mean points | % of source |\n| --- | --- | ---: | ---: | --- | ---: | ---: |\n");
    for c in &all {
        let flows = confusion::top_flows(c, TOP_FLOWS);
        if flows.is_empty() {
            let _ =
                writeln!(out, "| {} | {} | {} | – | no point broken | – | – |", markdown_cell(&c.model), markdown_cell(&c.attack), c.seeds);
        }
        for (rank, f) in flows.iter().enumerate() {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} -> {} | {} | {} |",
                markdown_cell(&c.model),
                markdown_cell(&c.attack),
                c.seeds,
                rank + 1,
                markdown_cell(&c.class_names[f.source]),
                markdown_cell(&c.class_names[f.target]),
                number(f.mean_count, 2),
                number(f.share_of_source, 1)
            );
        }
    }
    out.push_str("\n### Where each class's broken points go\n\n| Model | Attack | Class | Broken (mean points) | Main target | % of broken |\n| --- | --- | --- | ---: | --- | ---: |\n");
    for row in main_target_rows(&all) {
        let _ = writeln!(out, "| {} |", row.map(|cell| markdown_cell(&cell)).join(" | "));
    }
    out.push_str("\nHeatmaps (rows: true class, in % of its points; outlined: the diagonal): ");
    let files: Vec<String> = all.iter().map(|c| format!("`{}`", insight_plots::confusion_file(&c.model, &c.attack))).collect();
    let _ = writeln!(out, "{}.", files.join(", "));
    out
}

/// The rows of "where each class's broken points go" as plain text (model, attack, class, broken
/// points, main target, % of broken), for report.md and the page alike.
pub fn main_target_rows(all: &[MeanConfusion]) -> Vec<[String; 6]> {
    all.iter()
        .flat_map(|c| {
            confusion::main_targets(c).into_iter().map(move |t| {
                [
                    c.model.clone(),
                    c.attack.clone(),
                    c.class_names[t.class].clone(),
                    number(t.broken, 2),
                    t.target.map_or_else(|| "–".to_string(), |k| c.class_names[k].clone()),
                    number(t.share_of_broken, 1),
                ]
            })
        })
        .collect()
}

/// A halving radius in words.
pub fn halving_text(h: Halving) -> String {
    match h {
        Halving::At(r) => curves::radius_text(r),
        Halving::NotReached => "not reached".into(),
        Halving::Undefined => "undefined".into(),
    }
}

/// What the curves mean, in words.
pub fn curves_explanation(curves: &[ModelCurves]) -> String {
    let attack = curves.first().map(|c| c.attack.as_str()).unwrap_or("the attack");
    format!(
        "Class-wise accuracy (%) under {attack} at each radius of the sweep, mean over seeds. Halving radius: where the \
         class's mean curve first falls to half of its accuracy at radius 0, linearly interpolated between the swept \
         radii around it (\"not reached\" when it stays above half within the sweep; \"undefined\" without radius 0 or \
         with accuracy 0 there). Worst class: the lowest mean accuracy over the swept range (area under the curve divided \
         by the range, trapezoidal), which does not tie when several classes reach 0 at the largest radius."
    )
}

/// `## Robustness curves`: per model the mean curve of every class and its halving radius.
pub fn curves_markdown(results: &Results) -> String {
    let mut out = format!("\n## {CURVES_TITLE}\n\n");
    let all = curves::model_curves(results);
    if all.is_empty() {
        out.push_str("These results have no robustness curve (an evaluation over a list of radii, `--eps-sweep`).\n");
        return out;
    }
    let _ = writeln!(out, "{}", curves_explanation(&all));
    for c in &all {
        let worst = c.worst_class();
        let _ = write!(out, "\n### {} ({} seed{})\n\n| Class |", markdown_cell(&c.model), c.seeds, if c.seeds == 1 { "" } else { "s" });
        for r in &c.radii {
            let _ = write!(out, " {} |", curves::radius_text(*r));
        }
        out.push_str(" Mean over range | Halving radius |\n| --- |");
        for _ in &c.radii {
            out.push_str(" ---: |");
        }
        out.push_str(" ---: | ---: |\n");
        for (k, name) in c.class_names.iter().enumerate() {
            let label = if Some(k) == worst { format!("**{} (worst)**", markdown_cell(name)) } else { markdown_cell(name) };
            let _ = write!(out, "| {label} |");
            for a in &c.accuracy[k] {
                let _ = write!(out, " {} |", number(*a, 1));
            }
            let _ = writeln!(out, " {} | {} |", number(c.area(k), 1), halving_text(c.halving(k)));
        }
        let _ = writeln!(out, "\nPlot: `{}`.", insight_plots::curves_file(&c.model));
    }
    out
}

/// `uncertainty.csv`: every within-one-evaluation interval.
pub fn uncertainty_csv(results: &Results, summary: &Summary) -> String {
    let u = &results.settings.uncertainty;
    let mut out = String::from("model,seed,attack,quantity,class,estimate,low,high,method,resamples,bootstrap_seed,confidence\n");
    for e in &summary.evaluations {
        let head = format!("{},{},{}", csv_field(&e.model), e.seed, csv_field(&e.attack));
        for (k, ci) in e.classes.iter().enumerate() {
            let _ = writeln!(
                out,
                "{head},class_accuracy,{},{},{},{},clopper-pearson,,,{}",
                csv_field(&e.class_names[k]),
                csv_number(ci.accuracy),
                csv_number(ci.low),
                csv_number(ci.high),
                summary.confidence
            );
        }
        for i in &e.bootstrap.intervals {
            let _ = writeln!(
                out,
                "{head},{},,{},{},{},bootstrap-percentile,{},{},{}",
                i.metric.key(),
                csv_number(i.estimate),
                csv_number(i.low),
                csv_number(i.high),
                u.bootstrap_resamples,
                u.bootstrap_seed,
                summary.confidence
            );
        }
        let _ = writeln!(
            out,
            "{head},p_worst_class_is_worst,{},{},,,bootstrap-share,{},{},",
            csv_field(e.worst_class_name().unwrap_or("")),
            csv_number(e.bootstrap.p_worst_is_worst()),
            u.bootstrap_resamples,
            u.bootstrap_seed
        );
    }
    out
}

/// `confusion.csv` (None without confusions).
pub fn confusion_csv(results: &Results) -> Option<String> {
    let all: Vec<MeanConfusion> = confusion::mean_confusions(results);
    if all.is_empty() {
        return None;
    }
    let mut out = String::from("model,attack,seeds,true_class,predicted_class,mean_count,percent_of_true_class\n");
    for c in &all {
        for (k, row) in c.counts.iter().enumerate() {
            let percent = c.row_percent(k);
            for (j, v) in row.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "{},{},{},{},{},{},{}",
                    csv_field(&c.model),
                    csv_field(&c.attack),
                    c.seeds,
                    csv_field(&c.class_names[k]),
                    csv_field(&c.class_names[j]),
                    csv_number(*v),
                    csv_number(percent[j])
                );
            }
        }
    }
    Some(out)
}

/// `curves.csv` (None without a sweep): one row per model, class and radius; the class's mean
/// over the range, halving radius (empty when not reached or undefined) and worst flag repeat.
pub fn curves_csv(results: &Results) -> Option<String> {
    let all = curves::model_curves(results);
    if all.is_empty() {
        return None;
    }
    let mut out = String::from("model,attack,seeds,class,eps,mean_accuracy,mean_over_range,halving_radius,halving,worst_class\n");
    for c in &all {
        let worst = c.worst_class();
        for (k, name) in c.class_names.iter().enumerate() {
            let h = c.halving(k);
            let (radius, word) = match h {
                Halving::At(r) => (csv_number(r), "reached"),
                Halving::NotReached => (String::new(), "not reached"),
                Halving::Undefined => (String::new(), "undefined"),
            };
            for (r, a) in c.radii.iter().zip(&c.accuracy[k]) {
                let _ = writeln!(
                    out,
                    "{},{},{},{},{},{},{},{radius},{word},{}",
                    csv_field(&c.model),
                    csv_field(&c.attack),
                    c.seeds,
                    csv_field(name),
                    csv_number(*r),
                    csv_number(*a),
                    csv_number(c.area(k)),
                    Some(k) == worst
                );
            }
        }
    }
    Some(out)
}
