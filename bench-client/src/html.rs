//! `index.html`: the whole report as one self-contained page, for a browser on a laptop or a
//! phone, without a network: the paper-style table, a class-by-model heatmap of accuracy per
//! attack, the statistics against the baseline, the uncertainty of one evaluation, the
//! adversarial confusions and the robustness curves (`insight_html`), the plots (PNG files embedded as data URIs),
//! and the provenance of every number (checkpoints and their weight hashes, servers and
//! versions, settings, the command, and the run record given with `--run-info`).
//!
//! The page has inline CSS only, no script, no external font or image, and depends only on
//! `results.json` and the plots: `bench-client report --from results.json` makes the same page.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::plots::slug;
use crate::report;
use crate::results::Results;
use crate::summary::{Metric, Summary};

#[derive(Debug, thiserror::Error)]
pub enum HtmlError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
}

/// A plot to embed.
#[derive(Debug, Clone)]
pub struct Figure {
    pub title: String,
    pub caption: String,
    /// The file name it came from (shown, and the anchor).
    pub file: String,
    pub png: Vec<u8>,
}

/// Escapes text for HTML content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// Standard base64 with padding (RFC 4648), for data URIs.
pub fn base64(bytes: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(TABLE[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `2026-11-25 04:31 UTC` from seconds since the Unix epoch.
pub fn utc_time(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let seconds = unix % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02} UTC", seconds / 3600, (seconds % 3600) / 60)
}

/// A colour for an accuracy in percent: viridis from 0 (dark violet) to 100 (yellow), and the
/// text colour that reads on it.
pub fn heat_colour(percent: f64) -> ((u8, u8, u8), &'static str) {
    const STOPS: [(f64, [f64; 3]); 5] = [
        (0.0, [68.0, 1.0, 84.0]),
        (0.25, [59.0, 82.0, 139.0]),
        (0.5, [33.0, 145.0, 140.0]),
        (0.75, [94.0, 201.0, 98.0]),
        (1.0, [253.0, 231.0, 37.0]),
    ];
    let x = (percent / 100.0).clamp(0.0, 1.0);
    let i = STOPS.iter().rposition(|(at, _)| *at <= x).unwrap_or(0).min(STOPS.len() - 2);
    let (a, ca) = STOPS[i];
    let (b, cb) = STOPS[i + 1];
    let t = (x - a) / (b - a);
    let c: Vec<u8> = (0..3).map(|k| (ca[k] + t * (cb[k] - ca[k])).round() as u8).collect();
    let luminance = (0.2126 * f64::from(c[0]) + 0.7152 * f64::from(c[1]) + 0.0722 * f64::from(c[2])) / 255.0;
    ((c[0], c[1], c[2]), if luminance < 0.5 { "#fff" } else { "#111" })
}

const STYLE: &str = r#"
:root{--ink:#1b1f24;--muted:#5b6470;--line:#d8dde3;--soft:#f4f6f8;--accent:#0b5cad;--good:#0a7d38;--bad:#b3261e}
*{box-sizing:border-box}
html{-webkit-text-size-adjust:100%}
body{margin:0;font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:var(--ink);background:#fff}
main{max-width:1320px;margin:0 auto;padding:12px 16px 48px}
header{margin-bottom:4px}
h1{font-size:1.5rem;line-height:1.25;margin:.4rem 0}
h2{font-size:1.2rem;margin:2rem 0 .4rem;padding-top:.4rem;border-top:1px solid var(--line)}
h3{font-size:1rem;margin:.2rem 0 .4rem}
p{margin:.4rem 0}
.lead{color:var(--muted);margin:.2rem 0}
nav{display:flex;flex-wrap:wrap;gap:4px 14px;font-size:.95rem;margin:.5rem 0}
nav a{color:var(--accent);text-decoration:none;padding:4px 0}
.note{color:var(--muted);font-size:.9rem;max-width:75ch}
.warning{border-left:4px solid #c0392b;padding:.2rem .8rem;margin:.8rem 0;max-width:75ch}
.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch;border:1px solid var(--line);border-radius:6px;width:fit-content;max-width:100%}
.heat .scroll{width:auto}
.hint{display:none;color:var(--muted);font-size:.85rem;margin:.2rem 0}
table{border-collapse:collapse;font-variant-numeric:tabular-nums}
th,td{padding:5px 9px;border-bottom:1px solid var(--line);text-align:right;white-space:nowrap}
th{background:var(--soft);font-weight:600}
th:first-child,td:first-child{text-align:left;position:sticky;left:0;background:#fff;z-index:1}
thead th:first-child{background:var(--soft)}
tbody tr:last-child td{border-bottom:0}
.group{text-align:center;border-left:2px solid var(--line)}
.first{border-left:2px solid var(--line)}
.sd{display:block;color:var(--muted);font-size:.8em;line-height:1.1}
.t1 td{vertical-align:top}
.best{font-weight:700}
.star{color:var(--accent);font-size:.75em;margin-right:2px}
.t1{font-size:.93rem}
.t1 th,.t1 td{padding:4px 5px}
.heatmaps{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(100%,330px),1fr));gap:14px}
figure{margin:0}
.heat table{width:100%}
.heat th,.heat td{padding:3px 5px;text-align:center;border-bottom:1px solid #fff}
.heat td:first-child,.heat th:first-child{text-align:left}
.heat td.cell{min-width:3.1em;border-left:1px solid #fff}
.heat td.worst{outline:2px solid #e4572e;outline-offset:-2px;font-weight:700;text-decoration:underline}
.legend{display:flex;align-items:center;gap:8px;font-size:.85rem;color:var(--muted);margin:.4rem 0}
.ramp{height:12px;width:180px;border-radius:3px;background:linear-gradient(90deg,#440154,#3b528b,#21918c,#5ec962,#fde725)}
.mark{display:inline-block;width:14px;height:12px;outline:2px solid #e4572e;outline-offset:-2px;vertical-align:-1px}
.pos{color:var(--good)}.neg{color:var(--bad)}
.sig{font-weight:700}
.plots{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(100%,520px),1fr));gap:18px}
.plots img{width:100%;height:auto;border:1px solid var(--line);border-radius:6px;background:#fff}
figcaption{font-size:.9rem;color:var(--muted);margin-top:.3rem}
code,pre,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.85em}
pre{background:var(--soft);padding:8px 10px;border-radius:6px;white-space:pre-wrap;word-break:break-all;margin:.4rem 0}
dl.kv{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;margin:.4rem 0}
dl.kv dt{color:var(--muted)}
dl.kv dd{margin:0;word-break:break-all}
.failures td{white-space:normal}
table.text th,table.text td{text-align:left}
td.hash{white-space:normal;word-break:break-all;min-width:16em;font-size:.75em}
figure.wide{grid-column:1/-1}
footer{margin-top:2.5rem;color:var(--muted);font-size:.85rem}
@media (max-width:1100px){.hint{display:block}}
@media (max-width:640px){body{font-size:14px}main{padding:8px 10px 40px}h1{font-size:1.25rem}th,td{padding:4px 6px}dl.kv{grid-template-columns:1fr}dl.kv dt{margin-top:6px}}
"#;

/// Title, caption and anchor of a plot written by this crate, from its file name.
pub fn describe_plot(file: &str, summary: &Summary) -> Option<(String, String)> {
    let stem = file.strip_suffix(".png")?;
    if stem == "classwise" {
        return None; // the per-attack pictures show the same, larger
    }
    if stem == "metrics" {
        return Some((
            "Avg, Worst and NSD per attack".into(),
            format!("Bars: mean over seeds; whiskers: {}% Student-t intervals.", report::fmt_confidence(summary.confidence)),
        ));
    }
    if stem == "risk-sd" {
        return Some((
            "Class-wise error risks during training".into(),
            "Per epoch, the SD of the normalised class-wise error risks on clean and adversarial training examples (lower: more even); line: mean over seeds, band: range.".into(),
        ));
    }
    if let Some(run) = stem.strip_prefix("temperatures-") {
        return Some((
            format!("ABSLD temperatures, {run}"),
            "The teacher's class-wise temperatures per epoch, for clean and adversarial soft labels.".into(),
        ));
    }
    if let Some(name) = stem.strip_prefix("confusion-") {
        return Some((
            format!("Adversarial confusions, {name}"),
            "Rows: true class; columns: the class predicted after the attack; % of the true class's points, mean over seeds; outlined: the diagonal (points that survived).".into(),
        ));
    }
    if let Some(model) = stem.strip_prefix("curves-") {
        return Some((
            format!("Robustness curves, {model}"),
            "Class-wise accuracy against the radius, mean over seeds; thick black: the worst class (lowest mean accuracy over the range)."
                .into(),
        ));
    }
    if let Some(attack_slug) = stem.strip_prefix("classwise-") {
        let attack = summary.attacks.iter().find(|a| slug(a) == attack_slug).cloned().unwrap_or_else(|| attack_slug.to_string());
        return Some((format!("Class-wise accuracy, {attack}"), "Line: mean over seeds; band: lowest to highest seed.".into()));
    }
    Some((stem.to_string(), String::new()))
}

/// Reads the PNG plots among `files` (in order) as figures for the page.
pub fn figures(files: &[PathBuf], summary: &Summary) -> Result<Vec<Figure>, HtmlError> {
    let mut figures = Vec::new();
    for path in files.iter().filter(|p| p.extension().is_some_and(|e| e == "png")) {
        let file = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let Some((title, caption)) = describe_plot(&file, summary) else { continue };
        let png = std::fs::read(path).map_err(|source| HtmlError::Io { path: path.clone(), source })?;
        figures.push(Figure { title, caption, file, png });
    }
    Ok(figures)
}

/// Writes `index.html` into `out` from the results and the plots among `files`.
pub fn write_index(results: &Results, summary: &Summary, files: &[PathBuf], out: &Path) -> Result<PathBuf, HtmlError> {
    let page = render(results, summary, &figures(files, summary)?);
    let path = out.join("index.html");
    let tmp = out.join("index.html.tmp");
    std::fs::write(&tmp, page).map_err(|source| HtmlError::Io { path: tmp.clone(), source })?;
    std::fs::rename(&tmp, &path).map_err(|source| HtmlError::Io { path: path.clone(), source })?;
    Ok(path)
}

fn best_values(summary: &Summary, attack: &str, metric: Metric) -> Option<f64> {
    let means = summary.models.iter().filter_map(|m| summary.cell(m, attack, metric)).map(|c| c.description.mean).filter(|v| v.is_finite());
    if metric.higher_is_better() {
        means.fold(None, |best: Option<f64>, v| Some(best.map_or(v, |b| b.max(v))))
    } else {
        means.fold(None, |best: Option<f64>, v| Some(best.map_or(v, |b| b.min(v))))
    }
}

fn table_one(out: &mut String, summary: &Summary) {
    let metrics = [Metric::Avg, Metric::Worst, Metric::Nsd];
    out.push_str("<div class=\"scroll\"><table class=\"t1\"><thead><tr><th rowspan=\"2\">Model</th>");
    for attack in &summary.attacks {
        let _ = write!(out, "<th class=\"group\" colspan=\"3\">{}</th>", escape(attack));
    }
    out.push_str("</tr><tr>");
    for _ in &summary.attacks {
        for (i, metric) in metrics.iter().enumerate() {
            let arrow = if metric.higher_is_better() { "↑" } else { "↓" };
            let class = if i == 0 { " class=\"first\"" } else { "" };
            let _ = write!(out, "<th{class}>{} {arrow}</th>", metric.title());
        }
    }
    out.push_str("</tr></thead><tbody>");
    let best: Vec<Vec<Option<f64>>> =
        summary.attacks.iter().map(|a| metrics.iter().map(|&m| best_values(summary, a, m)).collect()).collect();
    let most_seeds = summary.models.iter().map(|m| summary.seeds(m).len()).max().unwrap_or(0);
    for model in &summary.models {
        let seeds = summary.seeds(model).len();
        // Only a model with fewer seeds than the others says how many it has.
        let fewer = if seeds < most_seeds {
            format!(" <span class=\"sd\">{seeds} seed{}</span>", if seeds == 1 { "" } else { "s" })
        } else {
            String::new()
        };
        let _ = write!(out, "<tr><td>{}{fewer}</td>", escape(model));
        for (ai, attack) in summary.attacks.iter().enumerate() {
            for (mi, &metric) in metrics.iter().enumerate() {
                let first = if mi == 0 { " first" } else { "" };
                match summary.cell(model, attack, metric) {
                    Some(c) if c.description.mean.is_finite() => {
                        let d = &c.description;
                        let decimals = metric.decimals();
                        let is_best = summary.models.len() > 1 && best[ai][mi].is_some_and(|b| (b - d.mean).abs() < 1e-9);
                        let sd = if d.n >= 2 && d.sd.is_finite() {
                            format!("<span class=\"sd\">± {:.*}</span>", decimals, d.sd)
                        } else {
                            String::new()
                        };
                        let values: Vec<String> = c.values.iter().map(|(s, v)| format!("seed {s}: {v:.decimals$}")).collect();
                        let _ = write!(
                            out,
                            "<td class=\"{}{first}\" title=\"{}\">{}{:.*}{sd}</td>",
                            if is_best { "best" } else { "" },
                            escape(&values.join(", ")),
                            if is_best { "<span class=\"star\">★</span>" } else { "" },
                            decimals,
                            d.mean
                        );
                    }
                    _ => {
                        let _ = write!(out, "<td class=\"{first}\">–</td>");
                    }
                }
            }
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table></div>");
}

/// AutoAttack's warnings under Table 1: every raised flag, or a line that none was.
fn sanity_warnings(out: &mut String, results: &Results) {
    let Some(none_raised) = results.no_sanity_warning_sentence() else {
        return;
    };
    let warnings = results.sanity_warnings();
    if warnings.is_empty() {
        let _ = write!(out, "<p class=\"note\">{}</p>", escape(&none_raised));
        return;
    }
    out.push_str("<div class=\"warning\"><p><b>AutoAttack's warnings</b>: its robust accuracy may be too high for these.</p><ul>");
    for (model, seed, attack, sentences) in warnings {
        let _ = write!(out, "<li>{} seed {seed}, {}: {}</li>", escape(&model), escape(&attack), escape(&sentences.join("; ")));
    }
    out.push_str("</ul></div>");
}

fn heatmaps(out: &mut String, summary: &Summary) {
    out.push_str("<div class=\"heatmaps\">");
    for attack in &summary.attacks {
        let bands: Vec<_> = summary.models.iter().filter_map(|m| summary.band(m, attack)).collect();
        let Some(first) = bands.first() else { continue };
        let _ = write!(out, "<figure class=\"heat\"><h3>{}</h3><div class=\"scroll\"><table><thead><tr><th>Class</th>", escape(attack));
        for band in &bands {
            let _ = write!(out, "<th>{}</th>", escape(&band.model));
        }
        out.push_str("</tr></thead><tbody>");
        // Every class at the model's lowest mean (ties included).
        let worst: Vec<f64> =
            bands.iter().map(|b| b.mean.iter().copied().filter(|v| v.is_finite()).fold(f64::INFINITY, f64::min)).collect();
        for (k, class) in first.class_names.iter().enumerate() {
            let _ = write!(out, "<tr><td>{}</td>", escape(class));
            for (b, band) in bands.iter().enumerate() {
                match band.mean.get(k).copied().filter(|v| v.is_finite()) {
                    Some(mean) => {
                        let ((r, g, bl), ink) = heat_colour(mean);
                        let range = match (band.low.get(k), band.high.get(k)) {
                            (Some(lo), Some(hi)) if band.seeds > 1 => format!(", seeds {lo:.0} to {hi:.0}"),
                            _ => String::new(),
                        };
                        let is_worst = (mean - worst[b]).abs() < 1e-9;
                        let _ = write!(
                            out,
                            "<td class=\"cell{}\" style=\"background:rgb({r},{g},{bl});color:{ink}\" title=\"{}\">{mean:.0}</td>",
                            if is_worst { " worst" } else { "" },
                            escape(&format!("{}, class {class}, {attack}: {mean:.1}% mean over {} seed(s){range}", band.model, band.seeds))
                        );
                    }
                    None => out.push_str("<td class=\"cell\">–</td>"),
                }
            }
            out.push_str("</tr>");
        }
        out.push_str("</tbody></table></div></figure>");
    }
    out.push_str("</div>");
    out.push_str(
        "<div class=\"legend\"><span>0%</span><span class=\"ramp\"></span><span>100%</span>\
         <span><span class=\"mark\"></span> outlined, underlined: each model's worst class (its Worst; ties all marked)</span></div>",
    );
}

fn differences(out: &mut String, summary: &Summary) {
    let Some(baseline) = summary.comparisons.first().map(|c| c.baseline.clone()) else {
        out.push_str("<p class=\"note\">One model only: nothing to compare.</p>");
        return;
    };
    let c = report::fmt_confidence(summary.confidence);
    let _ = write!(
        out,
        "<p class=\"note\">Each model against <b>{}</b>: difference of the means over seeds, its {c}% interval and Welch's \
         two-sided p (unequal variances). Green: better than the baseline (higher Avg and Worst, lower NSD), red: worse; \
         bold: p &lt; 0.05. With few seeds a large difference can still have a large p. A dash instead of an interval \
         and p: neither model's seeds vary (nothing to test the difference against), or a model has one seed.</p>",
        escape(&baseline)
    );
    let metrics = [Metric::Avg, Metric::Worst, Metric::Nsd];
    out.push_str("<div class=\"scroll\"><table><thead><tr><th>Model</th><th>Attack</th>");
    for m in metrics {
        let _ = write!(out, "<th class=\"first\">Δ {}</th><th>{c}% interval</th><th>p</th>", m.title());
    }
    out.push_str("</tr></thead><tbody>");
    let models: Vec<&String> = summary.models.iter().filter(|m| **m != baseline).collect();
    for model in models {
        for attack in &summary.attacks {
            let _ = write!(out, "<tr><td>{}</td><td>{}</td>", escape(model), escape(attack));
            for metric in metrics {
                let found = summary.comparisons.iter().find(|x| &x.model == model && &x.attack == attack && x.metric == metric);
                match found.map(|x| &x.welch).filter(|w| w.difference.is_finite()) {
                    Some(w) => {
                        let d = metric.decimals();
                        let better = if metric.higher_is_better() { w.difference > 0.0 } else { w.difference < 0.0 };
                        let tone = if w.difference == 0.0 {
                            ""
                        } else if better {
                            "pos"
                        } else {
                            "neg"
                        };
                        let sig = if w.p_value.is_finite() && w.p_value < 0.05 { " sig" } else { "" };
                        let interval = if w.ci_low.is_finite() && w.ci_high.is_finite() {
                            format!("[{:+.*}, {:+.*}]", d, w.ci_low, d, w.ci_high)
                        } else {
                            "–".into()
                        };
                        let _ = write!(
                            out,
                            "<td class=\"first {tone}{sig}\">{:+.*}</td><td>{interval}</td><td class=\"{sig}\">{}</td>",
                            d,
                            w.difference,
                            report::p_value(w.p_value)
                        );
                    }
                    None => out.push_str("<td class=\"first\">–</td><td>–</td><td>–</td>"),
                }
            }
            out.push_str("</tr>");
        }
    }
    out.push_str("</tbody></table></div>");
}

/// Width and height of a PNG, from its header.
pub fn png_size(png: &[u8]) -> Option<(u32, u32)> {
    if png.len() < 24 || &png[..8] != b"\x89PNG\r\n\x1a\n" || &png[12..16] != b"IHDR" {
        return None;
    }
    let number = |at: usize| u32::from_be_bytes([png[at], png[at + 1], png[at + 2], png[at + 3]]);
    Some((number(16), number(20)))
}

fn provenance(out: &mut String, results: &Results) {
    if !results.command.is_empty() {
        let _ = write!(out, "<h3>Command</h3><pre>{}</pre>", escape(&results.command));
    }
    let mut facts: Vec<(String, String)> = Vec::new();
    if results.created_unix > 0 {
        facts.push(("finished".into(), escape(&utc_time(results.created_unix))));
    }
    facts.push(("client".into(), escape(&results.client_version)));
    facts.push(("proto".into(), escape(&results.proto_version)));
    for (key, value) in &results.run {
        facts.push((escape(&run_key(key)), run_value(key, value)));
    }
    out.push_str("<h3>Run</h3><dl class=\"kv\">");
    for (k, v) in facts {
        let _ = write!(out, "<dt>{k}</dt><dd>{v}</dd>");
    }
    out.push_str("</dl>");

    out.push_str("<h3>Servers</h3><div class=\"scroll\"><table class=\"text\"><thead><tr><th>Endpoint</th><th>Evaluator</th><th>libtorch</th><th>Proto</th><th>Note</th></tr></thead><tbody>");
    for s in &results.servers {
        let _ = write!(
            out,
            "<tr><td class=\"mono\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&s.endpoint),
            escape(&s.evaluator_version),
            escape(&s.libtorch_version),
            escape(&s.proto_version),
            escape(s.error.as_deref().unwrap_or(""))
        );
    }
    out.push_str("</tbody></table></div>");

    let s = &results.settings;
    out.push_str("<h3>Settings</h3><dl class=\"kv\">");
    let _ = write!(
        out,
        "<dt>data</dt><dd>{}, {} split</dd>",
        escape(if s.dataset.is_empty() { "each model's own data set" } else { &s.dataset }),
        s.split
    );
    let _ = write!(
        out,
        "<dt>examples</dt><dd>{} per class; batch {}; precision {}</dd>",
        if s.examples_per_class == 0 { "all".to_string() } else { s.examples_per_class.to_string() },
        if s.batch_size == 0 { "server default".to_string() } else { s.batch_size.to_string() },
        s.precision
    );
    for a in &s.attacks {
        let _ = write!(out, "<dt>{}</dt><dd>{}</dd>", escape(&a.label), escape(&report::attack_parameters(&results.attack_as_run(a))));
    }
    out.push_str("</dl><p class=\"note\">Attack parameters not listed take the evaluator's defaults (PGD and CW step eps/4, the paper's 2/255 at 8/255; CW-inf 30 steps, kappa 50).</p>");

    out.push_str(
        "<h3>Checkpoints</h3><p class=\"note\">Every number above comes from these weights (sha256 of the weights file, as the evaluator checked it).</p>\
         <div class=\"scroll\"><table class=\"text\"><thead><tr><th>Model</th><th>Seed</th><th>Checkpoint</th><th>Method</th><th>Architecture</th>\
         <th>Weights sha256</th><th>Server</th><th>Device</th><th>Attack time</th><th>Cached</th></tr></thead><tbody>",
    );
    for model in &results.models {
        for run in &model.runs {
            let seconds: f64 = run.attacks.iter().map(|a| a.elapsed_seconds).sum();
            let cached = run.attacks.iter().filter(|a| a.cached).count();
            let device = run.attacks.iter().map(|a| a.device.as_str()).find(|d| !d.is_empty()).unwrap_or("");
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td><td class=\"mono\">{}</td><td>{}</td><td>{}</td><td class=\"mono hash\">{}</td><td class=\"mono\">{}</td><td>{}</td><td>{seconds:.1} s</td><td>{cached} of {}</td></tr>",
                escape(&model.label),
                run.seed,
                escape(&run.model),
                escape(&run.method),
                escape(&run.architecture),
                if run.weights_sha256.is_empty() { "–".to_string() } else { escape(&run.weights_sha256) },
                escape(&run.server),
                escape(device),
                run.attacks.len()
            );
        }
    }
    out.push_str("</tbody></table></div>");
    if !results.failures.is_empty() {
        out.push_str(
            "<h3>Failed evaluations</h3><p class=\"note\">Missing from every statistic on this page.</p><div class=\"scroll\"><table class=\"text failures\">\
             <thead><tr><th>Model</th><th>Checkpoint</th><th>Seed</th><th>Server</th><th>Error</th></tr></thead><tbody>",
        );
        for f in &results.failures {
            let _ = write!(
                out,
                "<tr><td>{}</td><td class=\"mono\">{}</td><td>{}</td><td class=\"mono\">{}</td><td>{}</td></tr>",
                escape(&f.label),
                escape(&f.model),
                f.seed.map(|s| s.to_string()).unwrap_or_else(|| "–".into()),
                escape(&f.server),
                escape(&f.error)
            );
        }
        out.push_str("</tbody></table></div>");
    }
}

/// How a key of the run record (`--run-info`) reads on the page.
fn run_key(key: &str) -> String {
    match key {
        "code" => "commit".into(),
        "job" => "job".into(),
        "sources_sha256" => "sources sha256".into(),
        "sources" => "sources (sha256 per path)".into(),
        other => other.replace('_', " "),
    }
}

/// A value of the run record as HTML: text as is, an object as one `key: value` line per entry
/// (the per-path hashes), hashes and commands in a fixed-width font.
fn run_value(key: &str, value: &serde_json::Value) -> String {
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mono = key.contains("sha256") || key == "sources" || key == "code" || key == "job";
    let shown = match value {
        serde_json::Value::Object(entries) => {
            entries.iter().map(|(k, v)| format!("{}: {}", escape(k), escape(&text(v)))).collect::<Vec<_>>().join("<br>")
        }
        other => escape(&text(other)),
    };
    if mono {
        format!("<span class=\"mono\">{shown}</span>")
    } else {
        shown
    }
}

/// The whole page.
pub fn render(results: &Results, summary: &Summary, figures: &[Figure]) -> String {
    let mut out = String::with_capacity(64 * 1024 + figures.iter().map(|f| f.png.len() * 4 / 3 + 512).sum::<usize>());
    let title = format!("Robust fairness across seeds{}", report::describe_dataset(results));
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"generator\" content=\"{}\"><title>{}</title><style>{STYLE}{}</style></head><body><main>",
        escape(&results.client_version),
        escape(&title),
        crate::insight_html::STYLE
    );
    let seeds: Vec<u64> = {
        let mut all: Vec<u64> = summary.models.iter().flat_map(|m| summary.seeds(m)).collect();
        all.sort_unstable();
        all.dedup();
        all
    };
    let evaluated: usize = results.models.iter().map(|m| m.runs.len()).sum();
    let per_class = if results.settings.examples_per_class > 0 {
        format!("{} test examples per class", results.settings.examples_per_class)
    } else {
        format!("every example of the {} split", results.settings.split)
    };
    let _ = write!(
        out,
        "<header><h1>{}</h1><p class=\"lead\">{} models × {} seeds ({}), {} attacks, {per_class}; {evaluated} evaluations{}.</p>",
        escape(&title),
        summary.models.len(),
        seeds.len(),
        seeds.iter().map(u64::to_string).collect::<Vec<_>>().join(", "),
        summary.attacks.len(),
        if results.failures.is_empty() { String::new() } else { format!(", <b>{} failed</b> (see Provenance)", results.failures.len()) }
    );
    if let Some(serde_json::Value::String(code)) = results.run.get("code") {
        let made = match results.run.get("cpu") {
            Some(serde_json::Value::String(cpu)) => format!(" on {}", escape(cpu)),
            _ => String::new(),
        };
        // Under the title: which code made these numbers (check-results compares it).
        let _ = write!(out, "<p class=\"lead\">Made by commit <span class=\"mono\">{}</span>{made}; details under <a href=\"#provenance\">Provenance</a>.</p>", escape(code));
    }
    out.push_str(
        "<nav><a href=\"#table\">Table</a><a href=\"#heatmaps\">Class heatmaps</a><a href=\"#differences\">Against the baseline</a>\
         <a href=\"#uncertainty\">Uncertainty</a><a href=\"#confusions\">Confusions</a><a href=\"#curves\">Robustness curves</a>\
         <a href=\"#plots\">Plots</a><a href=\"#provenance\">Provenance</a></nav></header>",
    );

    out.push_str("<section id=\"table\"><h2>Robust fairness (the paper's Table 1)</h2>");
    if summary.attacks.len() >= 3 {
        // Shown on narrow screens only (CSS), where the table scrolls inside its box.
        out.push_str("<p class=\"hint\">On a narrow screen the table scrolls sideways: swipe it for every attack.</p>");
    }
    table_one(&mut out, summary);
    let _ = write!(
        out,
        "<p class=\"note\">{} ★: the best mean in its column. Hover or long-press a cell for every seed's value.</p>",
        escape(&report::caption(summary)).replace("`report.md`", "report.md").replace("`summary.csv`", "summary.csv")
    );
    sanity_warnings(&mut out, results);
    out.push_str("</section>");

    out.push_str(
        "<section id=\"heatmaps\"><h2>Class by model: accuracy per attack</h2><p class=\"note\">Accuracy (%) of every class, \
         mean over seeds. A fair model has an even column; outlined and underlined: the model's worst class.</p>",
    );
    heatmaps(&mut out, summary);
    out.push_str("</section>");

    out.push_str("<section id=\"differences\"><h2>Against the baseline</h2>");
    differences(&mut out, summary);
    out.push_str("</section>");

    crate::insight_html::uncertainty_section(&mut out, results, summary);
    crate::insight_html::confusions_section(&mut out, results, figures);
    crate::insight_html::curves_section(&mut out, results, figures);
    let figures: Vec<&Figure> = figures.iter().filter(|f| !crate::insight_html::is_insight_figure(f)).collect();

    out.push_str("<section id=\"plots\"><h2>Plots</h2>");
    if figures.is_empty() {
        out.push_str("<p class=\"note\">No plots.</p>");
    } else {
        out.push_str("<div class=\"plots\">");
        for f in figures {
            let _ = write!(
                out,
                "<figure id=\"{}\"{}><h3>{}</h3><img alt=\"{}\" src=\"data:image/png;base64,{}\"><figcaption>{} ({})</figcaption></figure>",
                escape(&slug(&f.file)),
                // Wide pictures (metrics: three panels) take the whole row.
                if png_size(&f.png).is_some_and(|(w, h)| w > 2 * h) { " class=\"wide\"" } else { "" },
                escape(&f.title),
                escape(&f.title),
                base64(&f.png),
                escape(&f.caption),
                escape(&f.file)
            );
        }
        out.push_str("</div>");
    }
    out.push_str("</section>");

    out.push_str("<section id=\"provenance\"><h2>Provenance</h2>");
    provenance(&mut out, results);
    out.push_str("</section>");
    let _ = writeln!(
        out,
        "<footer>Made by {} from results.json; `bench-client report --from results.json` rebuilds it. The same numbers: \
         table.md, report.md, summary.csv, comparison.csv, per_seed.csv, uncertainty.csv (and confusion.csv, curves.csv when \
         the results have them).</footer></main></body></html>",
        escape(&results.client_version)
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_rfc_examples() {
        for (plain, encoded) in
            [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("fooba", "Zm9vYmE="), ("foobar", "Zm9vYmFy")]
        {
            assert_eq!(base64(plain.as_bytes()), encoded, "{plain}");
        }
        assert_eq!(base64(&[0xff, 0xfe, 0x00]), "//4A");
    }

    #[test]
    fn escaping_and_dates() {
        assert_eq!(escape("<a href=\"x\">&'</a>"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;");
        assert_eq!(utc_time(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc_time(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(utc_time(1_795_314_690), "2026-11-22 02:31 UTC");
    }

    #[test]
    fn png_sizes_come_from_the_header() {
        let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
        png.extend_from_slice(&1600u32.to_be_bytes());
        png.extend_from_slice(&500u32.to_be_bytes());
        assert_eq!(png_size(&png), Some((1600, 500)));
        assert_eq!(png_size(b"GIF89a and more bytes than that"), None);
    }

    #[test]
    fn heat_colours_run_from_violet_to_yellow_with_readable_text() {
        assert_eq!(heat_colour(0.0), ((68, 1, 84), "#fff"));
        assert_eq!(heat_colour(100.0), ((253, 231, 37), "#111"));
        assert_eq!(heat_colour(50.0).0, (33, 145, 140));
        assert_eq!(heat_colour(-5.0), heat_colour(0.0));
        assert_eq!(heat_colour(f64::INFINITY), heat_colour(100.0));
    }
}
