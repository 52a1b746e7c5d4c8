//! The PNG plots of where the robustness goes (same backend and font as `plots`):
//! - `confusion-<model>-<attack>.png`: the adversarial confusion heatmap of one model under one
//!   attack, mean over seeds, each row in percent of the true class's points, the diagonal (the
//!   points that survived) outlined;
//! - `curves-<model>.png`: class-wise accuracy against the radius of the sweep, one line per
//!   class, the worst class (lowest mean accuracy over the swept range) drawn thick and black.

use std::path::{Path, PathBuf};

use anyhow::Context;
use plotters::prelude::*;

use crate::confusion::MeanConfusion;
use crate::curves::ModelCurves;
use crate::plots::{class_colour, class_ticks, ensure_fonts, err, legend_strip, slug, TickedAxis, FONT};
use crate::results::Results;

/// White to dark blue for 0 to 100 percent, and a text colour that reads on it.
pub fn blues(percent: f64) -> (RGBColor, RGBColor) {
    let t = (percent / 100.0).clamp(0.0, 1.0).powf(0.7);
    let mix = |a: f64, b: f64| (a + t * (b - a)).round() as u8;
    let colour = RGBColor(mix(255.0, 8.0), mix(255.0, 48.0), mix(255.0, 107.0));
    (colour, if t > 0.55 { WHITE } else { BLACK })
}

/// The file a model x attack heatmap goes to.
pub fn confusion_file(model: &str, attack: &str) -> String {
    format!("confusion-{}-{}.png", slug(model), slug(attack))
}

/// The file a model's robustness curves go to.
pub fn curves_file(model: &str) -> String {
    format!("curves-{}.png", slug(model))
}

/// The confusion heatmap of one model under one attack.
pub fn plot_confusion(confusion: &MeanConfusion, path: &Path) -> anyhow::Result<()> {
    ensure_fonts();
    let c = confusion.class_names.len().max(1);
    let cell = (760 / c as u32).clamp(12, 72);
    let longest = confusion.class_names.iter().map(|n| n.chars().count()).max().unwrap_or(1) as u32;
    let label = 16u32;
    let side = (longest * 10 + 40).clamp(60, 200);
    let (width, height) = (side + cell * c as u32 + 30, 80 + cell * c as u32 + side);
    let root = BitMapBackend::new(path, (width.max(520), height)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let seeds = if confusion.seeds == 1 { "1 seed".to_string() } else { format!("mean of {} seeds", confusion.seeds) };
    let (ticks, named) = class_ticks(&confusion.class_names);
    let ticks_x = ticks.clone();
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{}, {}: predicted class after the attack (% of the true class; {seeds})", confusion.model, confusion.attack),
            (FONT, 17),
        )
        .margin(10)
        .x_label_area_size(side)
        .y_label_area_size(side)
        .build_cartesian_2d(
            TickedAxis { range: -0.5..(c as f64 - 0.5), ticks: ticks_x.clone() },
            TickedAxis { range: (c as f64 - 0.5)..-0.5, ticks },
        )
        .map_err(err)?;
    let name_of = |x: &f64| {
        let k = x.round();
        if (x - k).abs() > 1e-6 || k < 0.0 {
            return String::new();
        }
        if named {
            confusion.class_names.get(k as usize).cloned().unwrap_or_default()
        } else {
            (k as usize).to_string()
        }
    };
    chart
        .configure_mesh()
        .disable_mesh()
        // The column names are drawn below, turned to read downwards.
        .x_label_formatter(&|_| String::new())
        .y_label_formatter(&name_of)
        .x_desc("predicted after the attack")
        .y_desc("true class")
        .y_label_style((FONT, label))
        .axis_desc_style((FONT, label))
        .draw()
        .map_err(err)?;
    let turned = TextStyle::from((FONT, label).into_font()).transform(FontTransform::Rotate90);
    for &x in &ticks_x {
        let (px, py) = chart.backend_coord(&(x, c as f64 - 0.5));
        let text = name_of(&x);
        root.draw(&Text::new(text, (px + label as i32 / 2, py + 8), turned.clone())).map_err(err)?;
    }
    let annotate = c <= 15;
    for k in 0..confusion.class_names.len() {
        for (j, percent) in confusion.row_percent(k).into_iter().enumerate() {
            let (x, y) = (j as f64, k as f64);
            let (fill, ink) = if percent.is_finite() { blues(percent) } else { (RGBColor(230, 230, 230), BLACK) };
            chart.draw_series(std::iter::once(Rectangle::new([(x - 0.5, y - 0.5), (x + 0.5, y + 0.5)], fill.filled()))).map_err(err)?;
            if j == k {
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(x - 0.47, y - 0.47), (x + 0.47, y + 0.47)],
                        RGBColor(228, 87, 46).stroke_width(3),
                    )))
                    .map_err(err)?;
            }
            if annotate && percent.is_finite() && (percent >= 0.5 || j == k) {
                let size = (cell / 3).clamp(10, 18);
                chart
                    .draw_series(std::iter::once(Text::new(format!("{percent:.0}"), (x, y), crate::plots::centred(size).color(&ink))))
                    .map_err(err)?;
            }
        }
    }
    root.present().map_err(err).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// One model's class-wise robustness curves.
pub fn plot_curves(curves: &ModelCurves, path: &Path) -> anyhow::Result<()> {
    ensure_fonts();
    let classes = curves.class_names.len();
    let worst = curves.worst_class();
    let root = BitMapBackend::new(path, (1300, 720)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let show_legend = classes <= 20;
    let (legend, body) = root.split_vertically(if show_legend { 50 } else { 0 });
    if show_legend {
        let numeric = curves.class_names.iter().all(|n| n.chars().all(|c| c.is_ascii_digit()));
        let entries: Vec<(String, RGBColor)> = curves
            .class_names
            .iter()
            .enumerate()
            .map(|(k, n)| {
                let name = if numeric { format!("class {n}") } else { n.clone() };
                if Some(k) == worst {
                    (format!("{name} (worst)"), BLACK)
                } else {
                    (name, class_colour(k, classes))
                }
            })
            .collect();
        legend_strip(&legend, &entries, true, false, 17)?;
    }
    let x_hi = curves.radii.last().copied().unwrap_or(1.0).max(1e-9) * 255.0;
    let seeds = if curves.seeds == 1 { "1 seed".to_string() } else { format!("mean of {} seeds", curves.seeds) };
    let mut chart = ChartBuilder::on(&body)
        .caption(
            format!(
                "{}: class-wise accuracy against the radius of {} ({seeds}; thick black: the worst class by mean over the range)",
                curves.model, curves.attack
            ),
            (FONT, 20),
        )
        .margin(14)
        .x_label_area_size(55)
        .y_label_area_size(75)
        .build_cartesian_2d(0f64..x_hi, 0f64..100f64)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("radius eps (×1/255)")
        .y_desc("accuracy (%)")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .label_style((FONT, 17))
        .axis_desc_style((FONT, 18))
        .max_light_lines(2)
        .light_line_style(RGBColor(240, 240, 240))
        .bold_line_style(RGBColor(200, 200, 200))
        .draw()
        .map_err(err)?;
    let order: Vec<usize> = (0..classes).filter(|&k| Some(k) != worst).chain(worst).collect();
    for k in order {
        let points: Vec<(f64, f64)> =
            curves.radii.iter().zip(&curves.accuracy[k]).filter(|(_, a)| a.is_finite()).map(|(&r, &a)| (r * 255.0, a)).collect();
        let (colour, width) = if Some(k) == worst { (BLACK, 5) } else { (class_colour(k, classes), 2) };
        chart.draw_series(LineSeries::new(points.clone(), colour.stroke_width(width))).map_err(err)?;
        chart.draw_series(points.iter().map(|&p| Circle::new(p, if Some(k) == worst { 5 } else { 3 }, colour.filled()))).map_err(err)?;
    }
    root.present().map_err(err).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Every confusion heatmap and robustness-curve plot the results allow, into `out`.
pub fn plot_insights(results: &Results, out: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for confusion in crate::confusion::mean_confusions(results) {
        let path = out.join(confusion_file(&confusion.model, &confusion.attack));
        plot_confusion(&confusion, &path)?;
        files.push(path);
    }
    for curves in crate::curves::model_curves(results) {
        let path = out.join(curves_file(&curves.model));
        plot_curves(&curves, &path)?;
        files.push(path);
    }
    Ok(files)
}
