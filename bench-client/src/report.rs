//! Tables (Markdown in the paper's Table 1 layout, CSV) and the whole report directory.
//!
//! Files written by [`write_report`] into the output directory:
//! - `table.md`: rows models, column groups attacks, each Avg / Worst / NSD as mean ± sd;
//! - `report.md`: that table, Worst-10%, intervals, comparisons, per-seed values, settings;
//! - `summary.csv`: model, attack, metric, mean, sd, ci_low, ci_high, n; after the four metrics'
//!   rows, the within-one-evaluation quantities of `crate::uncertainty` described across seeds
//!   (metric `class_clopper_pearson_width`, `<metric>_bootstrap_width`, `p_worst_class_is_worst`);
//! - `comparison.csv`: every model against the first, Welch's test per attack and metric;
//! - `per_seed.csv`: every metric of every seed;
//! - `uncertainty.csv`, and with confusions or a sweep in the results `confusion.csv` and
//!   `curves.csv` ([`crate::insight_tables`]);
//! - the PNG plots of [`crate::plots`] and [`crate::insight_plots`].

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::results::Results;
use crate::summary::{self, Metric, Summary};

/// `mean ± sd` with the metric's decimals; the mean alone for one seed; `–` when undefined.
pub fn mean_sd(description: &crate::stats::Description, decimals: usize) -> String {
    if !description.mean.is_finite() {
        return "–".into();
    }
    if description.n < 2 || !description.sd.is_finite() {
        return format!("{:.*}", decimals, description.mean);
    }
    format!("{:.*} ± {:.*}", decimals, description.mean, decimals, description.sd)
}

pub(crate) fn interval(low: f64, high: f64, decimals: usize) -> String {
    if low.is_finite() && high.is_finite() {
        format!("[{low:.decimals$}, {high:.decimals$}]")
    } else {
        "–".into()
    }
}

pub(crate) fn number(value: f64, decimals: usize) -> String {
    if value.is_finite() {
        format!("{value:.decimals$}")
    } else {
        "–".into()
    }
}

pub(crate) fn p_value(p: f64) -> String {
    if !p.is_finite() {
        "–".into()
    } else if p < 0.001 {
        format!("{p:.1e}")
    } else {
        format!("{p:.3}")
    }
}

fn seeds_text(summary: &Summary, model: &str) -> String {
    let seeds = summary.seeds(model);
    if seeds.is_empty() {
        "none".into()
    } else {
        seeds.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
    }
}

pub(crate) fn markdown_cell(text: &str) -> String {
    text.replace('|', "\\|")
}

/// The paper's Table 1 layout: one row per model, for each attack Avg / Worst / NSD.
pub fn table1_markdown(summary: &Summary) -> String {
    let mut out = String::new();
    let metrics = [Metric::Avg, Metric::Worst, Metric::Nsd];
    out.push_str("| Model | Seeds |");
    for attack in &summary.attacks {
        for metric in metrics {
            let arrow = if metric.higher_is_better() { "↑" } else { "↓" };
            let _ = write!(out, " {} {} {} |", markdown_cell(attack), metric.title(), arrow);
        }
    }
    out.push_str("\n| --- | --- |");
    for _ in &summary.attacks {
        out.push_str(" ---: | ---: | ---: |");
    }
    out.push('\n');
    for model in &summary.models {
        let _ = write!(out, "| {} | {} |", markdown_cell(model), seeds_text(summary, model));
        for attack in &summary.attacks {
            for metric in metrics {
                let text =
                    summary.cell(model, attack, metric).map(|c| mean_sd(&c.description, metric.decimals())).unwrap_or_else(|| "–".into());
                let _ = write!(out, " {text} |");
            }
        }
        out.push('\n');
    }
    out
}

pub(crate) fn caption(summary: &Summary) -> String {
    format!(
        "Avg and Worst: class-wise accuracy (%) averaged over classes and of the worst class; NSD = SD / Avg with SD the \
         population standard deviation of the class-wise accuracies (lower is fairer). Each cell is the mean ± sample \
         standard deviation (n − 1) over seeds; {}% Student-t intervals are in `report.md` and `summary.csv`.",
        fmt_confidence(summary.confidence)
    )
}

pub(crate) fn fmt_confidence(c: f64) -> String {
    let pct = c * 100.0;
    if (pct - pct.round()).abs() < 1e-9 {
        format!("{}", pct.round() as i64)
    } else {
        format!("{pct}")
    }
}

/// `table.md`: the Table 1 layout with its caption.
pub fn table_file(results: &Results, summary: &Summary) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Robust fairness across seeds{}\n", describe_dataset(results));
    out.push_str(&table1_markdown(summary));
    let _ = writeln!(out, "\n{}", caption(summary));
    out.push_str(&sanity_markdown(results));
    out
}

/// AutoAttack's warnings (the evaluator's sanity flags): every one raised, or a line saying
/// none was; nothing when no AutoAttack ran.
pub fn sanity_markdown(results: &Results) -> String {
    let Some(none_raised) = results.no_sanity_warning_sentence() else {
        return String::new();
    };
    let warnings = results.sanity_warnings();
    if warnings.is_empty() {
        return format!("\n{none_raised}\n");
    }
    let mut out = String::from("\n**AutoAttack's warnings** (its robust accuracy may be too high for these):\n\n");
    for (model, seed, attack, sentences) in warnings {
        let _ = writeln!(out, "- {} seed {seed}, {}: {}", markdown_cell(&model), markdown_cell(&attack), sentences.join("; "));
    }
    out
}

pub(crate) fn describe_dataset(results: &Results) -> String {
    let mut datasets: Vec<String> =
        results.models.iter().flat_map(|m| m.runs.iter().map(|r| r.dataset.clone())).filter(|d| !d.is_empty()).collect();
    if !results.settings.dataset.is_empty() {
        datasets = vec![results.settings.dataset.clone()];
    }
    datasets.sort();
    datasets.dedup();
    if datasets.is_empty() {
        String::new()
    } else {
        format!(" ({} {})", datasets.join(", "), results.settings.split)
    }
}

/// The whole Markdown report.
pub fn report_markdown(results: &Results, summary: &Summary) -> String {
    let mut out = String::new();
    let c = fmt_confidence(summary.confidence);
    let _ = writeln!(out, "# Robust fairness across seeds{}\n", describe_dataset(results));
    out.push_str(&table1_markdown(summary));
    let _ = writeln!(out, "\n{}\n", caption(summary));

    out.push_str("## Worst-10%\n\nMean of the lowest ceil(0.1 · C) class-wise accuracies (%), mean ± sd over seeds.\n\n| Model |");
    for attack in &summary.attacks {
        let _ = write!(out, " {} |", markdown_cell(attack));
    }
    out.push_str("\n| --- |");
    for _ in &summary.attacks {
        out.push_str(" ---: |");
    }
    out.push('\n');
    for model in &summary.models {
        let _ = write!(out, "| {} |", markdown_cell(model));
        for attack in &summary.attacks {
            let text = summary.cell(model, attack, Metric::Worst10).map(|c| mean_sd(&c.description, 2)).unwrap_or_else(|| "–".into());
            let _ = write!(out, " {text} |");
        }
        out.push('\n');
    }

    let _ = writeln!(out, "\n## {c}% confidence intervals\n\nStudent-t intervals of the mean over seeds (n − 1 degrees of freedom; none for a single seed).\n");
    out.push_str("| Model | Attack | n | Avg | Worst | Worst-10% | NSD |\n| --- | --- | ---: | --- | --- | --- | --- |\n");
    for model in &summary.models {
        for attack in &summary.attacks {
            let n = summary.cell(model, attack, Metric::Avg).map(|c| c.description.n).unwrap_or(0);
            let _ = write!(out, "| {} | {} | {n} |", markdown_cell(model), markdown_cell(attack));
            for metric in Metric::ALL {
                let text = summary
                    .cell(model, attack, metric)
                    .map(|c| interval(c.description.ci_low, c.description.ci_high, metric.decimals()))
                    .unwrap_or_else(|| "–".into());
                let _ = write!(out, " {text} |");
            }
            out.push('\n');
        }
    }

    out.push_str(&crate::insight_tables::uncertainty_markdown(results, summary));

    if !summary.comparisons.is_empty() {
        let _ = writeln!(
            out,
            "\n## Differences against {}\n\nDifference of means (model − baseline), its {c}% interval, and Welch's two-sided t-test \
             (unequal variances, Welch–Satterthwaite degrees of freedom). For NSD a negative difference is fairer. \
             `–`: fewer than two seeds on a side, or no spread in either.\n",
            markdown_cell(&summary.comparisons[0].baseline)
        );
        out.push_str(
            "| Model | Attack | Metric | Difference | Interval | t | df | p |\n| --- | --- | --- | ---: | --- | ---: | ---: | ---: |\n",
        );
        for cmp in &summary.comparisons {
            let d = cmp.metric.decimals();
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                markdown_cell(&cmp.model),
                markdown_cell(&cmp.attack),
                cmp.metric.title(),
                if cmp.welch.difference.is_finite() { format!("{:+.*}", d, cmp.welch.difference) } else { "–".into() },
                interval(cmp.welch.ci_low, cmp.welch.ci_high, d),
                number(cmp.welch.t, 3),
                number(cmp.welch.df, 2),
                p_value(cmp.welch.p_value)
            );
        }
    }

    out.push_str("\n## Per seed\n\n| Model | Seed | Checkpoint | Attack | Avg | Worst | Worst-10% | NSD |\n| --- | ---: | --- | --- | ---: | ---: | ---: | ---: |\n");
    for model in &results.models {
        for run in &model.runs {
            for attack in &run.attacks {
                let s = rfb_proto::metrics::summarize(&attack.class_accuracy());
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {} | {} | {} |",
                    markdown_cell(&model.label),
                    run.seed,
                    markdown_cell(&run.model),
                    markdown_cell(&attack.attack),
                    number(s.average, 2),
                    number(s.worst, 2),
                    number(s.worst_10_percent, 2),
                    number(s.nsd, 3)
                );
            }
        }
    }

    out.push_str(&crate::insight_tables::confusions_markdown(results));
    out.push_str(&crate::insight_tables::curves_markdown(results));

    let sanity = sanity_markdown(results);
    if !sanity.is_empty() {
        let _ = write!(out, "\n## AutoAttack's checks\n{sanity}");
    }

    if !results.failures.is_empty() {
        out.push_str("\n## Failed evaluations\n\nThese are missing from every statistic above.\n\n| Model | Checkpoint | Seed | Server | Error |\n| --- | --- | ---: | --- | --- |\n");
        for f in &results.failures {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} |",
                markdown_cell(&f.label),
                markdown_cell(&f.model),
                f.seed.map(|s| s.to_string()).unwrap_or_else(|| "–".into()),
                markdown_cell(&f.server),
                markdown_cell(&f.error.replace('\n', " "))
            );
        }
    }

    out.push_str("\n## Settings\n\n");
    let s = &results.settings;
    let _ = writeln!(out, "- data set: {}; split: {}", if s.dataset.is_empty() { "each model's own" } else { &s.dataset }, s.split);
    let _ = writeln!(
        out,
        "- examples per class: {}; batch size: {}; precision: {}",
        if s.examples_per_class == 0 { "all".to_string() } else { s.examples_per_class.to_string() },
        if s.batch_size == 0 { "server default".to_string() } else { s.batch_size.to_string() },
        s.precision
    );
    for a in &s.attacks {
        let _ = writeln!(out, "- {}: {}", a.label, attack_parameters(&results.attack_as_run(a)));
    }
    out.push_str("- parameters as the evaluator ran them; any not listed take the evaluator's defaults (PGD and CW step eps/4, the paper's 2/255 at 8/255; CW-inf 30 steps, kappa 50)\n");
    for server in &results.servers {
        let mut line = format!("- server {}", server.endpoint);
        let versions: Vec<String> =
            [("evaluator", &server.evaluator_version), ("libtorch", &server.libtorch_version), ("proto", &server.proto_version)]
                .iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
        if !versions.is_empty() {
            let _ = write!(line, ": {}", versions.join(", "));
        }
        if let Some(e) = &server.error {
            let _ = write!(line, " (not used: {e})");
        } else if server.evaluations_done + server.evaluations_failed > 0 {
            let _ = write!(
                line,
                "; answered {}, failed {}, {} examples, {:.1} s of computation",
                server.evaluations_done, server.evaluations_failed, server.examples, server.compute_seconds
            );
        }
        let _ = writeln!(out, "{line}");
    }
    if !results.command.is_empty() {
        let _ = writeln!(out, "\nMade by:\n\n```sh\n{}\n```", results.command);
    }
    out
}

/// An attack's settings in words: `kind PGD, eps 0.100000 (25.50/255), 20 steps, seed 0`.
pub fn attack_parameters(a: &crate::results::AttackSetting) -> String {
    let mut parts = vec![format!("kind {}", a.kind)];
    if let Some(eps) = a.eps {
        parts.push(format!("eps {eps:.6} ({:.2}/255)", eps * 255.0));
    }
    if let Some(steps) = a.steps {
        parts.push(format!("{steps} steps"));
    }
    if let Some(step) = a.step_size {
        parts.push(format!("step {step:.6}"));
    }
    if !a.components.is_empty() {
        parts.push(format!("components {}", a.components.join("+")));
    }
    if a.kind != "CLEAN" {
        parts.push(format!("seed {}", a.seed));
    }
    parts.join(", ")
}

/// Who did what: per server, the evaluations (or shards) it answered and failed, the examples
/// and the seconds of computation; then every shard that was redone on another server.
pub fn work_by_server(results: &Results) -> String {
    let mut out = String::from("Work by server:\n");
    for server in &results.servers {
        if let Some(e) = &server.error {
            let _ = writeln!(out, "- {}: not used ({e})", server.endpoint);
            continue;
        }
        let _ = writeln!(
            out,
            "- {}: {} answered, {} failed, {} examples, {:.1} s of computation",
            server.endpoint, server.evaluations_done, server.evaluations_failed, server.examples, server.compute_seconds
        );
    }
    for model in &results.models {
        for run in &model.runs {
            for shard in &run.shards {
                for failure in &shard.failed_on {
                    let _ = writeln!(
                        out,
                        "- {} seed {} shard {}/{}: failed on {} ({}), redone on {}",
                        model.label,
                        run.seed,
                        shard.index + 1,
                        shard.count,
                        failure.server,
                        failure.error,
                        shard.server
                    );
                }
            }
        }
    }
    out
}

pub(crate) fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

pub(crate) fn csv_number(value: f64) -> String {
    if value.is_finite() {
        format!("{value}")
    } else if value.is_infinite() {
        if value > 0.0 {
            "inf".into()
        } else {
            "-inf".into()
        }
    } else {
        String::new()
    }
}

/// `summary.csv`: one row per model x attack x metric, then per model x attack the
/// within-one-evaluation quantities across seeds (mean, sd, interval of the per-seed values).
pub fn summary_csv(summary: &Summary) -> String {
    let mut out = String::from("model,attack,metric,mean,sd,ci_low,ci_high,n\n");
    for c in &summary.cells {
        let d = &c.description;
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{}",
            csv_field(&c.model),
            csv_field(&c.attack),
            c.metric.key(),
            csv_number(d.mean),
            csv_number(d.sd),
            csv_number(d.ci_low),
            csv_number(d.ci_high),
            d.n
        );
    }
    for w in &summary.within_seed {
        let d = &w.description;
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{}",
            csv_field(&w.model),
            csv_field(&w.attack),
            w.key,
            csv_number(d.mean),
            csv_number(d.sd),
            csv_number(d.ci_low),
            csv_number(d.ci_high),
            d.n
        );
    }
    out
}

/// `comparison.csv`: every model against the baseline.
pub fn comparison_csv(summary: &Summary) -> String {
    let mut out = String::from("model,baseline,attack,metric,difference,ci_low,ci_high,se,t,df,p_value,n_model,n_baseline\n");
    for c in &summary.comparisons {
        let w = &c.welch;
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{},{},{},{},{},{}",
            csv_field(&c.model),
            csv_field(&c.baseline),
            csv_field(&c.attack),
            c.metric.key(),
            csv_number(w.difference),
            csv_number(w.ci_low),
            csv_number(w.ci_high),
            csv_number(w.se),
            csv_number(w.t),
            csv_number(w.df),
            csv_number(w.p_value),
            c.n_model,
            c.n_baseline
        );
    }
    out
}

/// `per_seed.csv`: every metric of every seed.
pub fn per_seed_csv(results: &Results) -> String {
    let mut out = String::from("model,seed,checkpoint,attack,avg,worst,worst_10_percent,nsd\n");
    for model in &results.models {
        for run in &model.runs {
            for attack in &run.attacks {
                let s = rfb_proto::metrics::summarize(&attack.class_accuracy());
                let _ = writeln!(
                    out,
                    "{},{},{},{},{},{},{},{}",
                    csv_field(&model.label),
                    run.seed,
                    csv_field(&run.model),
                    csv_field(&attack.attack),
                    csv_number(s.average),
                    csv_number(s.worst),
                    csv_number(s.worst_10_percent),
                    csv_number(s.nsd)
                );
            }
        }
    }
    out
}

/// Writes tables, CSV files and plots for a results file into `out`; returns the files written.
pub fn write_report(results: &Results, out: &Path) -> anyhow::Result<Vec<PathBuf>> {
    write_report_with(results, &summary::summarize(results), out)
}

/// [`write_report`] with the summary already computed (its bootstrap is the costly part of a
/// report, so a caller that also builds the page summarises once).
pub fn write_report_with(results: &Results, summary: &Summary, out: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut written = Vec::new();
    let mut write = |name: &str, text: String| -> anyhow::Result<()> {
        let path = out.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
        Ok(())
    };
    write("table.md", table_file(results, summary))?;
    write("report.md", report_markdown(results, summary))?;
    write("summary.csv", summary_csv(summary))?;
    write("comparison.csv", comparison_csv(summary))?;
    write("per_seed.csv", per_seed_csv(results))?;
    write("uncertainty.csv", crate::insight_tables::uncertainty_csv(results, summary))?;
    if let Some(text) = crate::insight_tables::confusion_csv(results) {
        write("confusion.csv", text)?;
    }
    if let Some(text) = crate::insight_tables::curves_csv(results) {
        write("curves.csv", text)?;
    }
    written.extend(crate::plots::plot_results(summary, out)?);
    written.extend(crate::insight_plots::plot_insights(results, out)?);
    Ok(written)
}
