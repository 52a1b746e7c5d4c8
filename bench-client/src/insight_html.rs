//! The report page's sections on where the robustness goes (`index.html`, see `html`): the
//! uncertainty of one evaluation (`#uncertainty`), the adversarial confusions (`#confusions`,
//! with the heatmaps) and the robustness curves (`#curves`, with their plots). Same numbers and
//! words as report.md (`insight_tables`).

use std::fmt::Write as _;

use crate::confusion;
use crate::curves;
use crate::html::{base64, escape, Figure};
use crate::insight_plots;
use crate::insight_tables::{self as tables, CONFUSIONS_TITLE, CURVES_TITLE, TOP_FLOWS, UNCERTAINTY_TITLE};
use crate::report::{fmt_confidence, interval, mean_sd, number};
use crate::results::Results;
use crate::summary::{Metric, Summary};

/// Extra CSS of these sections.
pub const STYLE: &str = r#"
details{margin:.6rem 0}
summary{cursor:pointer;color:var(--accent);padding:4px 0}
.flows td{text-align:left}
.flows .share{color:var(--muted);font-size:.85em}
.curvetable td.worst,.curvetable td.worst+td{font-weight:700}
.confusions{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(100%,400px),1fr));gap:14px}
.confusions img,.curves img{width:100%;height:auto;border:1px solid var(--line);border-radius:6px;background:#fff}
"#;

fn figure_html(out: &mut String, f: &Figure) {
    let _ = write!(
        out,
        "<figure id=\"{}\"><img alt=\"{}\" src=\"data:image/png;base64,{}\"><figcaption>{} ({})</figcaption></figure>",
        escape(&crate::plots::slug(&f.file)),
        escape(&f.title),
        base64(&f.png),
        escape(&f.caption),
        escape(&f.file)
    );
}

/// `#uncertainty`: the within-seed widths across seeds, then per seed and per class (folded).
pub fn uncertainty_section(out: &mut String, results: &Results, summary: &Summary) {
    let _ = write!(
        out,
        "<section id=\"uncertainty\"><h2>{UNCERTAINTY_TITLE}</h2><p class=\"note\">{}</p>",
        escape(&tables::uncertainty_explanation(summary, results))
    );
    if summary.evaluations.is_empty() {
        out.push_str("<p class=\"note\">No evaluations.</p></section>");
        return;
    }
    out.push_str(
        "<h3>Within-seed interval widths (mean ± sd over seeds)</h3><div class=\"scroll\"><table class=\"within\"><thead><tr><th>Model</th><th>Attack</th>\
         <th>Class accuracy (Clopper-Pearson)</th><th>Avg (bootstrap)</th><th>Worst (bootstrap)</th><th>Worst-10% (bootstrap)</th><th>NSD (bootstrap)</th>\
         <th>P(worst)</th></tr></thead><tbody>",
    );
    for model in &summary.models {
        for attack in &summary.attacks {
            let find = |key: &str| summary.within_seed.iter().find(|w| &w.model == model && &w.attack == attack && w.key == key);
            let Some(first) = find("class_clopper_pearson_width") else { continue };
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td>",
                escape(model),
                escape(attack),
                escape(&mean_sd(&first.description, 2))
            );
            for metric in Metric::ALL {
                let text = find(crate::uncertainty::bootstrap_width_key(metric))
                    .map(|w| mean_sd(&w.description, metric.decimals()))
                    .unwrap_or_else(|| "–".into());
                let _ = write!(out, "<td>{}</td>", escape(&text));
            }
            let p = find("p_worst_class_is_worst").map(|w| mean_sd(&w.description, 2)).unwrap_or_else(|| "–".into());
            let _ = write!(out, "<td>{}</td></tr>", escape(&p));
        }
    }
    out.push_str("</tbody></table></div>");

    out.push_str(
        "<details><summary>Per seed: measured value [bootstrap interval]</summary><div class=\"scroll\"><table class=\"perseed\"><thead><tr><th>Model</th>\
         <th>Seed</th><th>Attack</th><th>Worst class</th><th>Worst</th><th>Worst-10%</th><th>NSD</th><th>P(worst)</th><th>Mean class interval width</th></tr></thead><tbody>",
    );
    for e in &summary.evaluations {
        let cell = |metric: Metric| match e.bootstrap.interval(metric) {
            Some(i) => format!("{} {}", number(i.estimate, metric.decimals()), interval(i.low, i.high, metric.decimals())),
            None => "–".into(),
        };
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&e.model),
            e.seed,
            escape(&e.attack),
            escape(e.worst_class_name().unwrap_or("–")),
            escape(&cell(Metric::Worst)),
            escape(&cell(Metric::Worst10)),
            escape(&cell(Metric::Nsd)),
            number(e.bootstrap.p_worst_is_worst(), 2),
            number(e.mean_class_width(), 2)
        );
    }
    out.push_str("</tbody></table></div></details>");

    let c = fmt_confidence(summary.confidence);
    let mut seeds: Vec<u64> = summary.evaluations.iter().map(|e| e.seed).collect();
    seeds.sort_unstable();
    seeds.dedup();
    let _ = write!(
        out,
        "<details><summary>Per class: accuracy (%) and its {c}% Clopper-Pearson interval, per seed</summary><div class=\"scroll\"><table class=\"perclass\">\
         <thead><tr><th>Model</th><th>Attack</th><th>Class</th>"
    );
    for s in &seeds {
        let _ = write!(out, "<th>seed {s}</th>");
    }
    out.push_str("</tr></thead><tbody>");
    for model in &summary.models {
        for attack in &summary.attacks {
            let runs: Vec<_> = summary.evaluations.iter().filter(|e| &e.model == model && &e.attack == attack).collect();
            let Some(first) = runs.first() else { continue };
            for (k, class) in first.class_names.iter().enumerate() {
                let _ = write!(out, "<tr><td>{}</td><td>{}</td><td>{}</td>", escape(model), escape(attack), escape(class));
                for seed in &seeds {
                    match runs.iter().find(|e| e.seed == *seed).and_then(|e| e.classes.get(k)) {
                        Some(ci) => {
                            let _ = write!(
                                out,
                                "<td>{}/{}: {} {}</td>",
                                ci.correct,
                                ci.total,
                                number(ci.accuracy, 1),
                                interval(ci.low, ci.high, 1)
                            );
                        }
                        None => out.push_str("<td>–</td>"),
                    }
                }
                out.push_str("</tr>");
            }
        }
    }
    out.push_str("</tbody></table></div></details></section>");
}

/// Whether a figure belongs to these sections (and not to the page's Plots).
pub fn is_insight_figure(f: &Figure) -> bool {
    f.file.starts_with("confusion-") || f.file.starts_with("curves-")
}

/// `#confusions`: the top flows per model and attack, each class's main target (folded) and
/// the heatmaps.
pub fn confusions_section(out: &mut String, results: &Results, figures: &[Figure]) {
    let _ = write!(out, "<section id=\"confusions\"><h2>{CONFUSIONS_TITLE}</h2>");
    if let Some(missing) = tables::confusions_missing(results) {
        let _ = write!(out, "<p class=\"note\">{}</p></section>", escape(missing));
        return;
    }
    let _ = write!(out, "<p class=\"note\">{}</p>", escape(tables::CONFUSIONS_EXPLANATION));
    let all = confusion::mean_confusions(results);
    let left_out: usize = all.iter().map(|c| c.left_out).sum();
    if left_out > 0 {
        let _ = write!(
            out,
            "<p class=\"note\">{left_out} evaluation(s) without a matrix consistent with their counts are left out of the means.</p>"
        );
    }
    let _ = write!(out, "<h3>Top {TOP_FLOWS} flows (source → target, mean points and % of the source class)</h3><div class=\"scroll\"><table class=\"flows\"><thead><tr><th>Model</th><th>Attack</th>");
    for rank in 1..=TOP_FLOWS {
        let _ = write!(out, "<th>#{rank}</th>");
    }
    out.push_str("</tr></thead><tbody>");
    for c in &all {
        let _ = write!(out, "<tr><td>{}</td><td>{}</td>", escape(&c.model), escape(&c.attack));
        let flows = confusion::top_flows(c, TOP_FLOWS);
        for rank in 0..TOP_FLOWS {
            match flows.get(rank) {
                Some(f) => {
                    let _ = write!(
                        out,
                        "<td class=\"flow\">{} → {} {} <span class=\"share\">({}%)</span></td>",
                        escape(&c.class_names[f.source]),
                        escape(&c.class_names[f.target]),
                        number(f.mean_count, 1),
                        number(f.share_of_source, 1)
                    );
                }
                None => out.push_str("<td>–</td>"),
            }
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table></div>");
    out.push_str(
        "<details><summary>Where each class's broken points go</summary><div class=\"scroll\"><table class=\"targets\"><thead><tr><th>Model</th><th>Attack</th>\
         <th>Class</th><th>Broken (mean points)</th><th>Main target</th><th>% of broken</th></tr></thead><tbody>",
    );
    for row in tables::main_target_rows(&all) {
        out.push_str("<tr>");
        for cell in row {
            let _ = write!(out, "<td>{}</td>", escape(&cell));
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table></div></details><h3>Heatmaps</h3><div class=\"confusions\">");
    for c in &all {
        if let Some(f) = figures.iter().find(|f| f.file == insight_plots::confusion_file(&c.model, &c.attack)) {
            figure_html(out, f);
        }
    }
    out.push_str("</div></section>");
}

/// `#curves`: per model the plot and the table of every class's mean curve and halving radius.
pub fn curves_section(out: &mut String, results: &Results, figures: &[Figure]) {
    let _ = write!(out, "<section id=\"curves\"><h2>{CURVES_TITLE}</h2>");
    let all = curves::model_curves(results);
    if all.is_empty() {
        out.push_str("<p class=\"note\">These results have no robustness curve (an evaluation over a list of radii, <code>--eps-sweep</code>).</p></section>");
        return;
    }
    let _ = write!(out, "<p class=\"note\">{}</p>", escape(&tables::curves_explanation(&all)));
    for c in &all {
        let worst = c.worst_class();
        let _ =
            write!(out, "<h3>{} ({} seed{})</h3><div class=\"curves\">", escape(&c.model), c.seeds, if c.seeds == 1 { "" } else { "s" });
        if let Some(f) = figures.iter().find(|f| f.file == insight_plots::curves_file(&c.model)) {
            figure_html(out, f);
        }
        out.push_str("</div><div class=\"scroll\"><table class=\"curvetable\"><thead><tr><th>Class</th>");
        for r in &c.radii {
            let _ = write!(out, "<th>{}</th>", escape(&curves::radius_text(*r)));
        }
        out.push_str("<th>Mean over range</th><th>Halving radius</th></tr></thead><tbody>");
        for (k, name) in c.class_names.iter().enumerate() {
            let is_worst = Some(k) == worst;
            let _ = write!(
                out,
                "<tr><td{}>{}{}</td>",
                if is_worst { " class=\"worst\"" } else { "" },
                escape(name),
                if is_worst { " (worst)" } else { "" }
            );
            for a in &c.accuracy[k] {
                let _ = write!(out, "<td>{}</td>", number(*a, 1));
            }
            let _ = write!(
                out,
                "<td>{}</td><td class=\"halving\">{}</td></tr>",
                number(c.area(k), 1),
                escape(&tables::halving_text(c.halving(k)))
            );
        }
        out.push_str("</tbody></table></div>");
    }
    out.push_str("</section>");
}
