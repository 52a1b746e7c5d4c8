//! PNG plots (plotters' bitmap backend with an embedded DejaVu Sans font, so no system font
//! libraries are needed).
//!
//! From a comparison:
//! - `classwise.png`: one panel per attack, class-wise accuracy per model (line: mean over
//!   seeds, band: lowest to highest seed), like the paper's Figure 3; and
//!   `classwise-<attack>.png` with one attack each;
//! - `metrics.png`: Avg, Worst (Worst-10% with 50 classes or more) and NSD per attack as
//!   grouped bars (mean over seeds) with Student-t interval whiskers.
//!
//! From training logs:
//! - `risk-sd.png`: per epoch, the SD of the normalised class-wise clean and adversarial error
//!   risks, one line per run group (mean over seeds, band: range), like Figures 5 and 6;
//! - `temperatures-<run>.png`: ABSLD's class-wise clean and adversarial temperatures per epoch.

use std::path::{Path, PathBuf};
use std::sync::Once;

use anyhow::{anyhow, Context};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::logs::{self, Normalisation, RunLog};
use crate::summary::{Metric, Summary};

pub(crate) const FONT: &str = "sans-serif";

static FONTS: Once = Once::new();

/// Registers the embedded DejaVu Sans as plotters' sans-serif font (once per process).
pub fn ensure_fonts() {
    FONTS.call_once(|| {
        // The bytes are a valid TrueType font shipped by the `dejavu` crate.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
        let _ = plotters::style::register_font(FONT, FontStyle::Bold, dejavu::sans::bold());
        let _ = plotters::style::register_font(FONT, FontStyle::Italic, dejavu::sans::oblique());
        let _ = plotters::style::register_font(FONT, FontStyle::Oblique, dejavu::sans::oblique());
    });
}

/// Model colours: Okabe–Ito, distinguishable with common colour-vision deficiencies.
const MODEL_COLOURS: [RGBColor; 8] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
    RGBColor(0, 0, 0),
    RGBColor(153, 153, 153),
];

/// Class colours (tab10, then tab20's light shades).
const CLASS_COLOURS: [RGBColor; 20] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
    RGBColor(174, 199, 232),
    RGBColor(255, 187, 120),
    RGBColor(152, 223, 138),
    RGBColor(255, 152, 150),
    RGBColor(197, 176, 213),
    RGBColor(196, 156, 148),
    RGBColor(247, 182, 210),
    RGBColor(199, 199, 199),
    RGBColor(219, 219, 141),
    RGBColor(158, 218, 229),
];

pub fn model_colour(i: usize) -> RGBColor {
    MODEL_COLOURS[i % MODEL_COLOURS.len()]
}

/// A colour for class `k` of `classes`: distinct colours up to 20, a hue ramp beyond.
pub fn class_colour(k: usize, classes: usize) -> RGBColor {
    if classes <= CLASS_COLOURS.len() {
        return CLASS_COLOURS[k % CLASS_COLOURS.len()];
    }
    let hsl = HSLColor(0.8 * k as f64 / classes.max(1) as f64, 0.75, 0.45);
    let (r, g, b) = hsl.rgb();
    RGBColor(r, g, b)
}

/// A file-name-safe form of a label: `PGD-20` -> `pgd-20`, `AA(apgd-ce+apgd-t)` -> `aa-apgd-ce-apgd-t`.
pub fn slug(label: &str) -> String {
    let mut out = String::new();
    for c in label.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches('-').to_string()
}

pub(crate) type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

/// A continuous axis whose labelled ticks are exactly the given values (class or attack
/// positions), with the default value formatting so that a label formatter can name them.
#[derive(Clone)]
pub(crate) struct TickedAxis {
    pub(crate) range: std::ops::Range<f64>,
    pub(crate) ticks: Vec<f64>,
}

impl Ranged for TickedAxis {
    type FormatOption = plotters::coord::ranged1d::DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let span = self.range.end - self.range.start;
        let fraction = if span == 0.0 { 0.5 } else { (value - self.range.start) / span };
        limit.0 + (fraction * (limit.1 - limit.0) as f64).round() as i32
    }

    fn key_points<Hint: plotters::coord::ranged1d::KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        match hint.weight() {
            plotters::coord::ranged1d::KeyPointWeight::Bold => self.ticks.clone(),
            plotters::coord::ranged1d::KeyPointWeight::Any => Vec::new(),
        }
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.range.clone()
    }
}

pub(crate) fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing: {e:?}")
}

/// Draws a horizontal legend (colour swatch and text per entry), centred in `area`.
pub(crate) fn legend_strip(area: &Area, entries: &[(String, RGBColor)], line: bool, band: bool, size: u32) -> anyhow::Result<()> {
    let style: TextStyle = (FONT, size).into();
    let swatch = 28i32;
    let gap = 26i32;
    let widths: Vec<i32> =
        entries.iter().map(|(t, _)| area.estimate_text_size(t, &style).map(|(w, _)| w as i32).unwrap_or(8 * t.len() as i32)).collect();
    let total: i32 = widths.iter().map(|w| w + swatch + 8 + gap).sum::<i32>() - gap;
    let (w, h) = area.dim_in_pixel();
    let mut x = ((w as i32 - total) / 2).max(4);
    let y = h as i32 / 2;
    for ((text, colour), width) in entries.iter().zip(widths) {
        if line {
            if band {
                area.draw(&Rectangle::new([(x, y - 7), (x + swatch, y + 7)], colour.mix(0.2).filled())).map_err(err)?;
            }
            area.draw(&PathElement::new(vec![(x, y), (x + swatch, y)], colour.stroke_width(3))).map_err(err)?;
            area.draw(&Circle::new((x + swatch / 2, y), 4, colour.filled())).map_err(err)?;
        } else {
            area.draw(&Rectangle::new([(x, y - 8), (x + swatch, y + 8)], colour.filled())).map_err(err)?;
        }
        area.draw(&Text::new(text.clone(), (x + swatch + 8, y - size as i32 / 2), style.clone())).map_err(err)?;
        x += swatch + 8 + width + gap;
    }
    Ok(())
}

/// A text style anchored at its centre.
pub(crate) fn centred(size: u32) -> TextStyle<'static> {
    TextStyle::from((FONT, size).into_font())
        .pos(plotters::style::text_anchor::Pos::new(plotters::style::text_anchor::HPos::Center, plotters::style::text_anchor::VPos::Center))
}

/// An epoch axis with whole-number ticks: every epoch up to 20, else a round step.
fn epoch_axis(max_epoch: f64) -> TickedAxis {
    let max = max_epoch.max(1.0).round() as i64;
    if max <= 20 {
        return TickedAxis { range: 0.5..(max as f64 + 0.5), ticks: (1..=max).map(|e| e as f64).collect() };
    }
    let step = [2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000].into_iter().find(|s| max / s <= 15).unwrap_or(max / 10);
    let mut ticks = vec![1.0];
    ticks.extend((1..=max / step).map(|k| (k * step) as f64));
    TickedAxis { range: 1.0..max as f64, ticks }
}

/// A y range with headroom around the values, inside [floor, ceiling].
fn y_range(values: impl Iterator<Item = f64>, floor: f64, ceiling: f64, step: f64) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (floor, if ceiling.is_finite() { ceiling } else { floor + step });
    }
    let mut lo = ((lo - step / 2.0) / step).floor() * step;
    let mut hi = ((hi + step / 2.0) / step).ceil() * step;
    lo = lo.max(floor);
    hi = hi.min(ceiling);
    if hi - lo < 2.0 * step {
        hi = (lo + 2.0 * step).min(ceiling);
        lo = (hi - 2.0 * step).max(floor);
    }
    (lo, hi)
}

/// Which class ticks to label and with what: every class up to 25 classes, else about 20
/// evenly spaced class indices.
pub(crate) fn class_ticks(names: &[String]) -> (Vec<f64>, bool) {
    let c = names.len();
    if c <= 25 {
        ((0..c).map(|k| k as f64).collect(), true)
    } else {
        let every = c.div_ceil(20);
        ((0..c).step_by(every).map(|k| k as f64).collect(), false)
    }
}

/// One class-wise accuracy panel for one attack.
fn classwise_panel(area: &Area, summary: &Summary, attack: &str, title_size: u32, label_size: u32) -> anyhow::Result<()> {
    let bands: Vec<(usize, &crate::summary::ClassBand)> =
        summary.models.iter().enumerate().filter_map(|(i, m)| summary.band(m, attack).map(|b| (i, b))).collect();
    let names: Vec<String> = bands.iter().map(|(_, b)| b.class_names.clone()).max_by_key(Vec::len).unwrap_or_default();
    let classes = names.len().max(1);
    let (y_lo, y_hi) = y_range(bands.iter().flat_map(|(_, b)| b.low.iter().chain(&b.high).chain(&b.mean).copied()), 0.0, 100.0, 10.0);
    let (ticks, named) = class_ticks(&names);
    let (w, _) = area.dim_in_pixel();
    // Fit the longest class name into its slot.
    let slot = (w as f64 - 90.0) / classes as f64 * if named { 1.0 } else { (names.len() as f64 / ticks.len().max(1) as f64).max(1.0) };
    let longest = names.iter().map(|n| n.chars().count()).max().unwrap_or(1).max(1) as f64;
    let x_label_size = ((slot / (0.56 * longest)).floor() as u32).clamp(10, label_size);
    let mut chart = ChartBuilder::on(area)
        .caption(format!("{attack}: class-wise accuracy (line: mean over seeds, band: range)"), (FONT, title_size))
        .margin(12)
        .x_label_area_size(label_size * 3)
        .y_label_area_size(label_size * 4)
        .build_cartesian_2d(TickedAxis { range: -0.5..(classes as f64 - 0.5), ticks }, y_lo..y_hi)
        .map_err(err)?;
    let name_of = |x: &f64| {
        let k = x.round();
        if (x - k).abs() > 1e-6 || k < 0.0 {
            return String::new();
        }
        let k = k as usize;
        if named {
            names.get(k).cloned().unwrap_or_default()
        } else {
            k.to_string()
        }
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_label_formatter(&name_of)
        .y_label_formatter(&|y| format!("{y:.0}"))
        .x_desc(if named { "class" } else { "class index (names in results.json)" })
        .y_desc("accuracy (%)")
        .x_label_style((FONT, x_label_size))
        .y_label_style((FONT, label_size))
        .axis_desc_style((FONT, label_size))
        .max_light_lines(2)
        .light_line_style(RGBColor(240, 240, 240))
        .bold_line_style(RGBColor(200, 200, 200))
        .draw()
        .map_err(err)?;
    if bands.is_empty() {
        chart
            .draw_series(std::iter::once(Text::new("no results", ((classes as f64 - 1.0) / 2.0, (y_lo + y_hi) / 2.0), centred(label_size))))
            .map_err(err)?;
        return Ok(());
    }
    for (i, band) in &bands {
        let colour = model_colour(*i);
        if band.seeds > 1 {
            let mut polygon: Vec<(f64, f64)> =
                band.high.iter().enumerate().filter(|(_, v)| v.is_finite()).map(|(k, &v)| (k as f64, v)).collect();
            polygon.extend(band.low.iter().enumerate().rev().filter(|(_, v)| v.is_finite()).map(|(k, &v)| (k as f64, v)));
            chart.draw_series(std::iter::once(Polygon::new(polygon, colour.mix(0.18).filled()))).map_err(err)?;
        }
        let points: Vec<(f64, f64)> = band.mean.iter().enumerate().filter(|(_, v)| v.is_finite()).map(|(k, &v)| (k as f64, v)).collect();
        chart.draw_series(LineSeries::new(points.clone(), colour.stroke_width(3))).map_err(err)?;
        let radius = if classes <= 25 { 5 } else { 2 };
        chart.draw_series(points.iter().map(|&p| Circle::new(p, radius, colour.filled()))).map_err(err)?;
    }
    Ok(())
}

fn model_legend(summary: &Summary, attack: Option<&str>, band: bool) -> Vec<(String, RGBColor)> {
    summary
        .models
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let n = match attack {
                Some(a) => summary.band(m, a).map(|b| b.seeds).unwrap_or(0),
                None => summary.seeds(m).len(),
            };
            let seeds = if n == 1 { "1 seed".to_string() } else { format!("{n} seeds") };
            // The band's meaning is in the panel title, so that five or more entries fit.
            let _ = band;
            let text = format!("{m} ({seeds})");
            (text, model_colour(i))
        })
        .collect()
}

/// Class-wise accuracy of every model under one attack.
pub fn plot_classwise(summary: &Summary, attack: &str, path: &Path) -> anyhow::Result<()> {
    ensure_fonts();
    let classes = summary.bands.iter().map(|b| b.class_names.len()).max().unwrap_or(10);
    let width = (1100 + 20 * classes.saturating_sub(10) as u32).min(2400);
    let root = BitMapBackend::new(path, (width, 680)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (legend, body) = root.split_vertically(50);
    legend_strip(&legend, &model_legend(summary, Some(attack), true), true, true, 20)?;
    classwise_panel(&body, summary, attack, 28, 20)?;
    root.present().map_err(err).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Every attack's class-wise panel in one figure.
pub fn plot_classwise_grid(summary: &Summary, path: &Path) -> anyhow::Result<()> {
    ensure_fonts();
    let n = summary.attacks.len().max(1);
    let cols = n.min(3);
    let rows = n.div_ceil(cols);
    let (pw, ph) = (900u32, 540u32);
    let root = BitMapBackend::new(path, (pw * cols as u32, ph * rows as u32 + 110)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (head, body) = root.split_vertically(110);
    let (title, legend) = head.split_vertically(60);
    title
        .draw(&Text::new(
            "Class-wise accuracy per attack (line: mean over seeds; band: lowest to highest seed)",
            (20, 16),
            (FONT, 28).into_font(),
        ))
        .map_err(err)?;
    legend_strip(&legend, &model_legend(summary, None, false), true, true, 20)?;
    let panels = body.split_evenly((rows, cols));
    for (attack, panel) in summary.attacks.iter().zip(panels.iter()) {
        classwise_panel(panel, summary, attack, 24, 17)?;
    }
    root.present().map_err(err).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Avg, Worst (or Worst-10%) and NSD per attack as grouped bars with interval whiskers.
pub fn plot_metrics(summary: &Summary, path: &Path) -> anyhow::Result<()> {
    ensure_fonts();
    let classes = summary.bands.iter().map(|b| b.class_names.len()).max().unwrap_or(10);
    let worst = if classes >= 50 { Metric::Worst10 } else { Metric::Worst };
    let metrics = [Metric::Avg, worst, Metric::Nsd];
    let attacks = summary.attacks.len().max(1);
    let models = summary.models.len().max(1);
    let pw = (120 * attacks as u32 + 30 * (attacks * models) as u32).clamp(640, 900);
    let root = BitMapBackend::new(path, (pw * 3, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (head, body) = root.split_vertically(110);
    let (title, legend) = head.split_vertically(60);
    let c = (summary.confidence * 100.0).round();
    title
        .draw(&Text::new(
            format!("Per attack: bar = mean over seeds; whiskers = {c:.0}% Student-t interval (none for one seed)"),
            (20, 16),
            (FONT, 28).into_font(),
        ))
        .map_err(err)?;
    legend_strip(&legend, &model_legend(summary, None, false), false, false, 20)?;
    let panels = body.split_evenly((1, 3));
    for (metric, panel) in metrics.iter().zip(panels.iter()) {
        let cells: Vec<(usize, usize, &crate::summary::Cell)> = summary
            .attacks
            .iter()
            .enumerate()
            .flat_map(|(a, attack)| {
                summary.models.iter().enumerate().filter_map(move |(m, model)| summary.cell(model, attack, *metric).map(|c| (a, m, c)))
            })
            .collect();
        let top = cells
            .iter()
            .flat_map(|(_, _, c)| {
                [c.description.mean, if c.description.ci_high.is_finite() { c.description.ci_high } else { c.description.mean }]
            })
            .filter(|v| v.is_finite())
            .fold(0.0f64, f64::max);
        let (y_hi, y_desc, decimals) = match metric {
            Metric::Nsd => ((top * 1.1).max(0.05), "NSD = SD / Avg (lower is fairer)".to_string(), 2),
            _ => (((top * 1.1) / 10.0).ceil().mul_add(10.0, 0.0).clamp(10.0, 100.0), format!("{} accuracy (%)", metric.title()), 0),
        };
        let caption = match metric {
            Metric::Avg => "Avg (higher is better)".to_string(),
            Metric::Nsd => "NSD (lower is fairer)".to_string(),
            m => format!("{} (higher is fairer)", m.title()),
        };
        let ticks: Vec<f64> = (0..attacks).map(|a| a as f64 + 0.5).collect();
        let mut chart = ChartBuilder::on(panel)
            .caption(caption, (FONT, 26))
            .margin(14)
            .x_label_area_size(50)
            .y_label_area_size(80)
            .build_cartesian_2d(TickedAxis { range: 0.0..attacks as f64, ticks }, 0f64..y_hi)
            .map_err(err)?;
        let attack_names = summary.attacks.clone();
        let label = move |x: &f64| {
            let a = (x - 0.5).round();
            if (x - 0.5 - a).abs() < 1e-6 && a >= 0.0 {
                attack_names.get(a as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        };
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_label_formatter(&label)
            .y_label_formatter(&|y| format!("{y:.decimals$}"))
            .y_desc(y_desc)
            .x_label_style((FONT, 19))
            .y_label_style((FONT, 17))
            .axis_desc_style((FONT, 18))
            .max_light_lines(2)
            .light_line_style(RGBColor(240, 240, 240))
            .bold_line_style(RGBColor(200, 200, 200))
            .draw()
            .map_err(err)?;
        let group = 0.8;
        let width = group / models as f64;
        for (a, m, cell) in &cells {
            let d = &cell.description;
            if !d.mean.is_finite() {
                continue;
            }
            let x0 = *a as f64 + 0.1 + *m as f64 * width;
            let x1 = x0 + width * 0.92;
            let colour = model_colour(*m);
            chart.draw_series(std::iter::once(Rectangle::new([(x0, 0.0), (x1, d.mean.min(y_hi))], colour.filled()))).map_err(err)?;
            if d.ci_low.is_finite() && d.ci_high.is_finite() {
                let xc = (x0 + x1) / 2.0;
                let cap = width * 0.22;
                let style = BLACK.stroke_width(2);
                chart
                    .draw_series([
                        PathElement::new(vec![(xc, d.ci_low), (xc, d.ci_high)], style),
                        PathElement::new(vec![(xc - cap, d.ci_low), (xc + cap, d.ci_low)], style),
                        PathElement::new(vec![(xc - cap, d.ci_high), (xc + cap, d.ci_high)], style),
                    ])
                    .map_err(err)?;
            }
        }
    }
    root.present().map_err(err).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Every results plot into `out`; returns the files.
pub fn plot_results(summary: &Summary, out: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let grid = out.join("classwise.png");
    plot_classwise_grid(summary, &grid)?;
    files.push(grid);
    for attack in &summary.attacks {
        let path = out.join(format!("classwise-{}.png", slug(attack)));
        plot_classwise(summary, attack, &path)?;
        files.push(path);
    }
    let metrics = out.join("metrics.png");
    plot_metrics(summary, &metrics)?;
    files.push(metrics);
    Ok(files)
}

/// A run log with the group that colours it (a model label, or the run's own group).
#[derive(Debug, Clone)]
pub struct LabelledRun {
    pub group: String,
    pub run: RunLog,
}

struct GroupSeries {
    group: String,
    runs: usize,
    mean: Vec<(f64, f64)>,
    low: Vec<(f64, f64)>,
    high: Vec<(f64, f64)>,
}

fn group_series(runs: &[LabelledRun], adversarial: bool, normalisation: Normalisation) -> Vec<GroupSeries> {
    let mut groups: Vec<String> = Vec::new();
    for r in runs {
        if !groups.contains(&r.group) {
            groups.push(r.group.clone());
        }
    }
    let mut out = Vec::new();
    for group in groups {
        let series: Vec<Vec<(f64, f64)>> = runs
            .iter()
            .filter(|r| r.group == group)
            .map(|r| logs::risk_sd_series(&r.run, adversarial, normalisation))
            .filter(|s| !s.is_empty())
            .collect();
        if series.is_empty() {
            continue;
        }
        let mut epochs: Vec<f64> = series.iter().flat_map(|s| s.iter().map(|p| p.0)).collect();
        epochs.sort_by(f64::total_cmp);
        epochs.dedup();
        let (mut mean, mut low, mut high) = (Vec::new(), Vec::new(), Vec::new());
        for e in epochs {
            let values: Vec<f64> = series.iter().filter_map(|s| s.iter().find(|p| p.0 == e).map(|p| p.1)).collect();
            mean.push((e, crate::stats::mean(&values)));
            low.push((e, values.iter().cloned().fold(f64::INFINITY, f64::min)));
            high.push((e, values.iter().cloned().fold(f64::NEG_INFINITY, f64::max)));
        }
        out.push(GroupSeries { group, runs: series.len(), mean, low, high });
    }
    out
}

fn risk_panel(area: &Area, runs: &[LabelledRun], groups: &[String], adversarial: bool, normalisation: Normalisation) -> anyhow::Result<()> {
    let series = group_series(runs, adversarial, normalisation);
    let kind = if adversarial { "adversarial" } else { "clean" };
    let caption = format!("SD of normalised class-wise {kind} error risk");
    let max_epoch = runs.iter().flat_map(|r| r.run.epochs.iter().map(|e| e.epoch + 1)).max().unwrap_or(1).max(2) as f64;
    let top = series.iter().flat_map(|s| s.high.iter().map(|p| p.1)).filter(|v| v.is_finite()).fold(0.0f64, f64::max);
    let y_hi = if top > 0.0 { top * 1.15 } else { 1.0 };
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FONT, 24))
        .margin(14)
        .x_label_area_size(55)
        .y_label_area_size(85)
        .build_cartesian_2d(epoch_axis(max_epoch), 0f64..y_hi)
        .map_err(err)?;
    let y_decimals = if y_hi < 0.05 { 3 } else { 2 };
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc(format!("SD of {}", normalisation.short()))
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.y_decimals$}"))
        .label_style((FONT, 17))
        .axis_desc_style((FONT, 18))
        .max_light_lines(2)
        .light_line_style(RGBColor(240, 240, 240))
        .bold_line_style(RGBColor(200, 200, 200))
        .draw()
        .map_err(err)?;
    if series.is_empty() {
        let text = if adversarial {
            "no adversarial risks in these logs (natural training has none)".to_string()
        } else {
            "no clean risks in these logs".to_string()
        };
        let x = (chart.x_range().start + chart.x_range().end) / 2.0;
        chart.draw_series(std::iter::once(Text::new(text, (x, y_hi / 2.0), centred(20)))).map_err(err)?;
        return Ok(());
    }
    for s in &series {
        let colour = model_colour(groups.iter().position(|g| *g == s.group).unwrap_or(0));
        if s.runs > 1 {
            let mut polygon = s.high.clone();
            polygon.extend(s.low.iter().rev().cloned());
            chart.draw_series(std::iter::once(Polygon::new(polygon, colour.mix(0.18).filled()))).map_err(err)?;
        }
        chart.draw_series(LineSeries::new(s.mean.clone(), colour.stroke_width(3))).map_err(err)?;
        if s.mean.len() <= 60 {
            chart.draw_series(s.mean.iter().map(|&p| Circle::new(p, 4, colour.filled()))).map_err(err)?;
        }
    }
    Ok(())
}

/// Figures 5 and 6: the spread of the normalised class-wise risks per epoch, clean and
/// adversarial side by side.
pub fn plot_risk_sd(runs: &[LabelledRun], normalisation: Normalisation, path: &Path) -> anyhow::Result<()> {
    ensure_fonts();
    let mut groups: Vec<String> = Vec::new();
    for r in runs {
        if !groups.contains(&r.group) {
            groups.push(r.group.clone());
        }
    }
    let root = BitMapBackend::new(path, (1800, 720)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (head, body) = root.split_vertically(110);
    let (title, legend) = head.split_vertically(60);
    title
        .draw(&Text::new(
            format!("Spread of the class-wise error risks during training: population SD over classes of {}", normalisation.describe()),
            (20, 16),
            (FONT, 26).into_font(),
        ))
        .map_err(err)?;
    let entries: Vec<(String, RGBColor)> = groups
        .iter()
        .enumerate()
        .map(|(i, g)| {
            let n = runs.iter().filter(|r| &r.group == g).count();
            let text = if n > 1 { format!("{g} (mean of {n} runs; band: range)") } else { g.clone() };
            (text, model_colour(i))
        })
        .collect();
    legend_strip(&legend, &entries, true, true, 20)?;
    let panels = body.split_evenly((1, 2));
    risk_panel(&panels[0], runs, &groups, false, normalisation)?;
    risk_panel(&panels[1], runs, &groups, true, normalisation)?;
    root.present().map_err(err).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// ABSLD's class-wise temperatures of one run per epoch; None when the run logged none.
pub fn plot_temperatures(run: &RunLog, path: &Path) -> anyhow::Result<Option<PathBuf>> {
    ensure_fonts();
    let epochs: Vec<(f64, &logs::Temperatures)> =
        run.epochs.iter().filter_map(|e| e.temperatures.as_ref().map(|t| ((e.epoch + 1) as f64, t))).collect();
    if epochs.is_empty() {
        return Ok(None);
    }
    let classes = epochs.iter().map(|(_, t)| t.clean.len().max(t.adversarial.len())).max().unwrap_or(0);
    let names: Vec<String> = match &run.class_names {
        Some(n) if n.len() == classes => n.clone(),
        _ => (0..classes).map(|k| k.to_string()).collect(),
    };
    let root = BitMapBackend::new(path, (1800, 760)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let show_legend = classes <= 20;
    let (head, body) = root.split_vertically(if show_legend { 110 } else { 60 });
    let (title, legend) = head.split_vertically(60);
    title
        .draw(&Text::new(
            format!("{}: ABSLD class-wise temperatures per epoch (one line per class)", run.name),
            (20, 16),
            (FONT, 26).into_font(),
        ))
        .map_err(err)?;
    if show_legend {
        let numeric = names.iter().all(|n| n.chars().all(|c| c.is_ascii_digit()));
        let entries: Vec<(String, RGBColor)> = names
            .iter()
            .enumerate()
            .map(|(k, n)| (if numeric { format!("class {n}") } else { n.clone() }, class_colour(k, classes)))
            .collect();
        legend_strip(&legend, &entries, true, false, 18)?;
    }
    let panels = body.split_evenly((1, 2));
    let max_epoch = epochs.last().map(|e| e.0).unwrap_or(1.0).max(2.0);
    for (panel, adversarial) in panels.iter().zip([false, true]) {
        let pick = |t: &logs::Temperatures| if adversarial { t.adversarial.clone() } else { t.clean.clone() };
        let all: Vec<f64> = epochs.iter().flat_map(|(_, t)| pick(t)).filter(|v| v.is_finite()).collect();
        let lo = all.iter().cloned().fold(f64::INFINITY, f64::min);
        let hi = all.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let (lo, hi) = if lo.is_finite() {
            let pad = ((hi - lo) * 0.08).max(0.05);
            ((lo - pad).max(0.0), hi + pad)
        } else {
            (0.0, 1.0)
        };
        let kind = if adversarial { "adversarial" } else { "clean" };
        let mut chart = ChartBuilder::on(panel)
            .caption(format!("teacher temperature for {kind} examples"), (FONT, 24))
            .margin(14)
            .x_label_area_size(55)
            .y_label_area_size(75)
            .build_cartesian_2d(epoch_axis(max_epoch), lo..hi)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            .y_desc("temperature")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y:.2}"))
            .label_style((FONT, 17))
            .axis_desc_style((FONT, 18))
            .max_light_lines(2)
            .light_line_style(RGBColor(240, 240, 240))
            .bold_line_style(RGBColor(200, 200, 200))
            .draw()
            .map_err(err)?;
        for k in 0..classes {
            let colour = class_colour(k, classes);
            let points: Vec<(f64, f64)> =
                epochs.iter().filter_map(|(e, t)| pick(t).get(k).copied().filter(|v| v.is_finite()).map(|v| (*e, v))).collect();
            chart.draw_series(LineSeries::new(points.clone(), colour.stroke_width(if classes <= 20 { 3 } else { 1 }))).map_err(err)?;
            if points.len() <= 40 && classes <= 20 {
                chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, colour.filled()))).map_err(err)?;
            }
        }
    }
    root.present().map_err(err).with_context(|| format!("writing {}", path.display()))?;
    Ok(Some(path.to_path_buf()))
}

/// Every log plot (and `risk-sd.csv`) into `out`; returns the files.
pub fn plot_logs(runs: &[LabelledRun], normalisation: Normalisation, out: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut files = Vec::new();
    let csv = out.join("risk-sd.csv");
    let plain: Vec<RunLog> = runs.iter().map(|r| RunLog { group: r.group.clone(), ..r.run.clone() }).collect();
    std::fs::write(&csv, logs::risk_sd_csv(&plain, normalisation)).with_context(|| format!("writing {}", csv.display()))?;
    files.push(csv);
    let risk = out.join("risk-sd.png");
    plot_risk_sd(runs, normalisation, &risk)?;
    files.push(risk);
    let mut used: Vec<String> = Vec::new();
    for r in runs {
        let mut name = slug(&r.run.name);
        if used.contains(&name) {
            name = format!("{name}-{}", used.len());
        }
        used.push(name.clone());
        if let Some(path) = plot_temperatures(&r.run, &out.join(format!("temperatures-{name}.png")))? {
            files.push(path);
        }
    }
    Ok(files)
}
