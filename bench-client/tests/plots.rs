//! The PNG plots decode, have the expected size, and show something: many colours, enough
//! non-background pixels, the models' colours, and text (dark pixels in the title strip, so the
//! embedded font renders).
//!
//! Set BENCH_CLIENT_KEEP_PLOTS=DIR to keep the pictures for looking at.

mod common;

use std::path::{Path, PathBuf};

use image::RgbImage;
use rfb_bench_client::logs::Normalisation;
use rfb_bench_client::plots::{self, model_colour, LabelledRun};
use rfb_bench_client::{logs, report};

fn out_dir(name: &str) -> (Option<tempfile::TempDir>, PathBuf) {
    match std::env::var_os("BENCH_CLIENT_KEEP_PLOTS") {
        Some(dir) => {
            let path = PathBuf::from(dir).join(name);
            std::fs::create_dir_all(&path).unwrap();
            (None, path)
        }
        None => {
            let tmp = tempfile::tempdir().unwrap();
            let path = tmp.path().to_path_buf();
            (Some(tmp), path)
        }
    }
}

fn load(path: &Path) -> RgbImage {
    image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).to_rgb8()
}

fn distinct_colours(img: &RgbImage) -> usize {
    let mut seen = std::collections::HashSet::new();
    for p in img.pixels() {
        seen.insert(p.0);
    }
    seen.len()
}

fn non_background_fraction(img: &RgbImage) -> f64 {
    let non_white = img.pixels().filter(|p| p.0 != [255, 255, 255]).count();
    non_white as f64 / (img.width() * img.height()) as f64
}

fn count_near(img: &RgbImage, colour: [u8; 3], tolerance: i32) -> usize {
    img.pixels().filter(|p| p.0.iter().zip(colour).all(|(&a, b)| (a as i32 - b as i32).abs() <= tolerance)).count()
}

/// Dark (text) pixels in the top `rows` rows.
fn dark_pixels_in_top(img: &RgbImage, rows: u32) -> usize {
    let mut n = 0;
    for y in 0..rows.min(img.height()) {
        for x in 0..img.width() {
            let p = img.get_pixel(x, y).0;
            if p.iter().all(|&c| c < 90) {
                n += 1;
            }
        }
    }
    n
}

fn assert_not_blank(path: &Path, min_width: u32, min_height: u32) -> RgbImage {
    let img = load(path);
    assert!(img.width() >= min_width && img.height() >= min_height, "{}: {}x{}", path.display(), img.width(), img.height());
    let colours = distinct_colours(&img);
    assert!(colours >= 50, "{}: only {colours} distinct colours", path.display());
    let fraction = non_background_fraction(&img);
    assert!(fraction > 0.03 && fraction < 0.9, "{}: {:.1}% non-background pixels", path.display(), 100.0 * fraction);
    img
}

#[test]
fn results_plots_show_every_model_and_text() {
    let results = common::cifar_like(&["rslad", "absld"], &[0, 1, 2], 100);
    let (_tmp, dir) = out_dir("results");
    let files = report::write_report(&results, &dir).unwrap();
    let pngs: Vec<&PathBuf> = files.iter().filter(|f| f.extension().is_some_and(|e| e == "png")).collect();
    // The grid, one per attack, and the metrics bars.
    assert_eq!(pngs.len(), 1 + 5 + 1, "{files:?}");
    for name in ["classwise.png", "classwise-clean.png", "classwise-pgd-20.png", "classwise-cw-inf.png", "classwise-aa.png", "metrics.png"]
    {
        let path = dir.join(name);
        let img = assert_not_blank(&path, 1000, 600);
        for m in 0..2 {
            let c = model_colour(m);
            let n = count_near(&img, [c.0, c.1, c.2], 10);
            assert!(n > 300, "{name}: model {m}'s colour appears on only {n} pixels");
        }
        let text = dark_pixels_in_top(&img, 60);
        assert!(text > 200, "{name}: no title/legend text drawn ({text} dark pixels)");
    }
    let grid = load(&dir.join("classwise.png"));
    assert_eq!((grid.width(), grid.height()), (3 * 900, 2 * 540 + 110));
}

#[test]
fn single_seed_and_many_classes_still_plot() {
    // One seed (no bands, no whiskers) and 100 classes (index labels).
    let mut results = common::cifar_like(&["sat"], &[4], 50);
    for model in &mut results.models {
        model.class_names = (0..100).map(|k| format!("c{k}")).collect();
        for run in &mut model.runs {
            for a in &mut run.attacks {
                a.class_names = (0..100).map(|k| format!("c{k}")).collect();
                a.correct = (0..100).map(|k| (k as i64 * 37 % 50).max(1)).collect();
                a.total = vec![50; 100];
            }
        }
    }
    let (_tmp, dir) = out_dir("single");
    report::write_report(&results, &dir).unwrap();
    assert_not_blank(&dir.join("classwise-pgd-20.png"), 1000, 600);
    assert_not_blank(&dir.join("metrics.png"), 1000, 600);
}

fn write_log(dir: &Path, method: &str, seed: u64, epochs: usize, absld: bool) {
    std::fs::create_dir_all(dir).unwrap();
    let mut text = String::new();
    for e in 0..epochs {
        let progress = e as f64 / epochs as f64;
        // Hard classes (3, 5) keep a higher risk; ABSLD narrows the gap over training.
        let gap = if absld { 1.0 - 0.7 * progress } else { 1.0 + 0.8 * progress };
        let risk = |k: usize, scale: f64| -> f64 {
            let hard = if k == 3 || k == 5 { 1.0 } else { 0.2 * (k % 3) as f64 };
            scale * (2.0 - 1.5 * progress) * (1.0 + gap * hard) + 0.02 * common::noise(seed, e as u64, k as u64, 1)
        };
        let clean: Vec<f64> = (0..10).map(|k| risk(k, 0.5)).collect();
        let adversarial: Vec<f64> = (0..10).map(|k| risk(k, 1.0)).collect();
        let temperatures = if absld {
            let t =
                |k: usize, base: f64| base + progress * (0.25 * k as f64 / 9.0 - if k == 3 || k == 5 { 0.4 + 0.1 * k as f64 } else { 0.0 });
            serde_json::json!({"clean": (0..10).map(|k| t(k, 1.0)).collect::<Vec<_>>(), "adversarial": (0..10).map(|k| t(k, 1.5)).collect::<Vec<_>>()})
        } else {
            serde_json::Value::Null
        };
        let line = serde_json::json!({
            "epoch": e, "learning_rate": 0.1, "loss": 1.0, "seconds": 1.0,
            "risk_clean": clean, "risk_adversarial": adversarial, "temperatures": temperatures, "evaluation": null,
        });
        text.push_str(&line.to_string());
        text.push('\n');
    }
    std::fs::write(dir.join("log.jsonl"), text).unwrap();
    std::fs::write(dir.join("run.json"), serde_json::json!({"method": method, "seed": seed}).to_string()).unwrap();
    std::fs::create_dir_all(dir.join("best")).unwrap();
    std::fs::write(
        dir.join("best/manifest.json"),
        serde_json::json!({"method": method, "seed": seed, "class_names": common::CIFAR10}).to_string(),
    )
    .unwrap();
}

#[test]
fn log_plots_show_risk_spread_and_temperatures() {
    let runs_tmp = tempfile::tempdir().unwrap();
    for seed in [0, 1] {
        write_log(&runs_tmp.path().join(format!("rslad-s{seed}")), "rslad", seed, 30, false);
        write_log(&runs_tmp.path().join(format!("absld-s{seed}")), "absld", seed, 30, true);
    }
    // A natural run: clean risks only, no temperatures.
    let natural = runs_tmp.path().join("natural-s0");
    std::fs::create_dir_all(&natural).unwrap();
    std::fs::write(natural.join("log.jsonl"), "{\"epoch\":0,\"risk_clean\":[1.0,2.0],\"risk_adversarial\":null,\"temperatures\":null}\n{\"epoch\":1,\"risk_clean\":[0.5,1.5],\"risk_adversarial\":null,\"temperatures\":null}\n").unwrap();

    let found = logs::find_runs(&[runs_tmp.path().to_path_buf()]).unwrap();
    assert_eq!(found.len(), 5);
    let runs: Vec<LabelledRun> = found
        .iter()
        .map(|d| {
            let run = logs::read_run(d).unwrap();
            LabelledRun { group: run.group.clone(), run }
        })
        .collect();
    let absld = runs.iter().find(|r| r.run.name == "absld-s1").unwrap();
    assert_eq!((absld.group.as_str(), absld.run.seed, absld.run.method.as_deref()), ("absld", Some(1), Some("absld")));
    assert_eq!(absld.run.class_names.as_ref().unwrap()[3], "cat");

    let (_tmp, dir) = out_dir("logs");
    let files = plots::plot_logs(&runs, Normalisation::Sum, &dir).unwrap();
    let names: Vec<String> = files.iter().map(|f| f.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert!(names.contains(&"risk-sd.png".to_string()), "{names:?}");
    assert!(names.contains(&"temperatures-absld-s0.png".to_string()), "{names:?}");
    assert!(names.contains(&"temperatures-absld-s1.png".to_string()), "{names:?}");
    assert!(!names.iter().any(|n| n.contains("rslad") || n.contains("natural")), "only ABSLD logs temperatures: {names:?}");

    let risk = assert_not_blank(&dir.join("risk-sd.png"), 1600, 600);
    for g in 0..3 {
        let c = model_colour(g);
        assert!(count_near(&risk, [c.0, c.1, c.2], 10) > 200, "group {g} missing from risk-sd.png");
    }
    assert!(dark_pixels_in_top(&risk, 60) > 200);
    let temps = assert_not_blank(&dir.join("temperatures-absld-s0.png"), 1600, 600);
    assert!(distinct_colours(&temps) > 100);

    // The CSV holds the same numbers as the library.
    let csv = std::fs::read_to_string(dir.join("risk-sd.csv")).unwrap();
    let first = absld.run.epochs[0].risk_clean.as_ref().unwrap();
    let expected = logs::normalised_risk_sd(first, Normalisation::Sum);
    let row = csv.lines().find(|l| l.starts_with("absld-s1,absld,1,1,")).unwrap();
    let value: f64 = row.split(',').nth(4).unwrap().parse().unwrap();
    assert!((value - expected).abs() < 1e-12);
    // The natural run has clean values and an empty adversarial column.
    let row = csv.lines().find(|l| l.starts_with("natural-s0,natural,0,2,")).unwrap();
    let cols: Vec<&str> = row.split(',').collect();
    assert!(!cols[4].is_empty() && cols[5].is_empty(), "{row}");
}
