//! Where the robustness goes, on synthetic results with confusions consistent with the counts
//! and a PGD sweep whose accuracy falls with the radius: the report's new sections, CSV files and
//! plots; results without them (made before) say so and keep every other output.

mod common;

use std::path::Path;

use rfb_bench_client::confusion;
use rfb_bench_client::curves::{self, Halving};
use rfb_bench_client::report;
use rfb_bench_client::results::Results;
use rfb_bench_client::summary;

fn synthetic() -> Results {
    let mut results = common::cifar_like(&["rslad", "absld"], &[0, 1, 2], 100);
    common::add_confusions(&mut results);
    common::add_sweep(&mut results);
    results.validate().unwrap();
    results
}

fn png_size(path: &Path) -> (u32, u32) {
    let image = image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (image.width(), image.height())
}

#[test]
fn the_synthetic_confusions_and_sweep_are_consistent() {
    let results = synthetic();
    for model in &results.models {
        for run in &model.runs {
            for attack in run.attacks.iter().chain(run.sweep.iter().map(|p| &p.run)) {
                assert!(confusion::consistent(attack), "{} {}", model.label, attack.attack);
            }
            // The sweep equals the clean counts at 0 and the PGD-20 counts at 8/255, and falls.
            assert_eq!(run.sweep[0].run.correct, run.attack("Clean").unwrap().correct);
            assert_eq!(run.sweep[3].run.correct, run.attack("PGD-20").unwrap().correct);
            for pair in run.sweep.windows(2) {
                assert!(pair[0].run.correct.iter().zip(&pair[1].run.correct).all(|(a, b)| b <= a));
            }
        }
    }
}

#[test]
fn mean_confusions_flows_and_targets_follow_the_counts() {
    let results = synthetic();
    let pgd = confusion::mean_confusion(&results, "rslad", "PGD-20").unwrap();
    assert_eq!(pgd.seeds, 3);
    // Mean over seeds, by hand.
    let runs: Vec<_> = results.models[0].runs.iter().map(|r| r.attack("PGD-20").unwrap()).collect();
    for k in 0..10 {
        for j in 0..10 {
            let expected = runs.iter().map(|r| r.confusion[k][j] as f64).sum::<f64>() / 3.0;
            assert!((pgd.counts[k][j] - expected).abs() < 1e-12);
        }
        let correct = runs.iter().map(|r| r.correct[k] as f64).sum::<f64>() / 3.0;
        assert!((pgd.counts[k][k] - correct).abs() < 1e-12, "the diagonal is the robust count");
        assert!((pgd.totals[k] - 100.0).abs() < 1e-12);
    }
    // cat's broken points go 60% (rounded down) to dog: dog is its main target with over half.
    let targets = confusion::main_targets(&pgd);
    assert_eq!(targets[3].target, Some(5));
    assert!(targets[3].share_of_broken > 50.0 && targets[3].share_of_broken < 65.0, "{:?}", targets[3]);
    // The largest flow is the partner of the class that loses the most points.
    let flows = confusion::top_flows(&pgd, 5);
    assert_eq!(flows.len(), 5);
    assert!(flows.windows(2).all(|w| w[0].mean_count >= w[1].mean_count));
    let most_broken = (0..10).max_by(|&a, &b| targets[a].broken.total_cmp(&targets[b].broken)).unwrap();
    assert_eq!((flows[0].source, flows[0].target), (most_broken, common::PARTNER[most_broken]));
    assert!((flows[0].share_of_source - flows[0].mean_count).abs() < 1e-9, "100 points per class: share = count");
    // A matrix that disagrees with the counts is left out and counted.
    let mut broken = results.clone();
    broken.models[0].runs[1].attacks[2].confusion[0][0] += 1;
    let c = confusion::mean_confusion(&broken, "rslad", "PGD-20").unwrap();
    assert_eq!((c.seeds, c.left_out), (2, 1));
}

#[test]
fn curves_average_seeds_and_halve_where_the_mean_curve_does() {
    let results = synthetic();
    let all = curves::model_curves(&results);
    assert_eq!(all.len(), 2);
    let c = &all[0];
    assert_eq!(c.radii, common::SWEEP_RADII.to_vec());
    assert_eq!(c.attack, "PGD-20");
    for k in 0..10 {
        let mean_at = |i: usize| results.models[0].runs.iter().map(|r| r.sweep[i].run.correct[k] as f64).sum::<f64>() / 3.0;
        for i in 0..c.radii.len() {
            assert!((c.accuracy[k][i] - mean_at(i)).abs() < 1e-9, "100 points: percent = count");
        }
        // Independent halving: the first radius at or below half, interpolated.
        let half = mean_at(0) / 2.0;
        let expected = (1..c.radii.len()).find(|&i| mean_at(i) <= half).map(|i| {
            let (a, b) = (mean_at(i - 1), mean_at(i));
            c.radii[i - 1] + (a - half) / (a - b) * (c.radii[i] - c.radii[i - 1])
        });
        match (c.halving(k), expected) {
            (Halving::At(r), Some(e)) => assert!((r - e).abs() < 1e-12, "class {k}: {r} vs {e}"),
            (Halving::NotReached, None) => {}
            (got, e) => panic!("class {k}: {got:?} vs {e:?}"),
        }
    }
    // The worst class by area is one of the hard classes (cat has the largest difficulty).
    assert_eq!(c.class_names[c.worst_class().unwrap()], "cat");
}

#[test]
fn the_report_shows_uncertainty_confusions_and_curves() {
    let results = synthetic();
    let dir = tempfile::tempdir().unwrap();
    let files = report::write_report(&results, dir.path()).unwrap();
    let names: Vec<String> = files.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    for expected in [
        "uncertainty.csv",
        "confusion.csv",
        "curves.csv",
        "confusion-rslad-pgd-20.png",
        "confusion-absld-aa.png",
        "curves-rslad.png",
        "curves-absld.png",
    ] {
        assert!(names.iter().any(|n| n == expected), "{expected} in {names:?}");
    }
    assert_eq!(names.iter().filter(|n| n.starts_with("confusion-")).count(), 2 * 5);
    let (w, h) = png_size(&dir.path().join("confusion-rslad-pgd-20.png"));
    assert!(w >= 520 && h >= 400, "{w}x{h}");
    assert_eq!(png_size(&dir.path().join("curves-absld.png")), (1300, 720));

    let md = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    for heading in [
        "## Uncertainty of one evaluation",
        "### Within-seed interval widths, mean ± sd over seeds",
        "### Per seed: measured value [bootstrap interval]",
        "### Per class: accuracy (%) and its 95% Clopper-Pearson interval, per seed",
        "## Adversarial confusions",
        "### Top 5 flows (source -> target)",
        "### Where each class's broken points go",
        "## Robustness curves",
        "### rslad (3 seeds)",
    ] {
        assert!(md.contains(heading), "{heading}");
    }
    // The new sections sit after the across-seed intervals and per-seed values, before Settings.
    let at = |s: &str| md.find(s).unwrap();
    assert!(at("## 95% confidence intervals") < at("## Uncertainty of one evaluation"));
    assert!(at("## Per seed") < at("## Adversarial confusions"));
    assert!(at("## Robustness curves") < at("## Settings"));
    assert!(md.contains("**cat (worst)**"));
    assert!(md.contains("| rslad | PGD-20 | 3 | 1 | "), "ranked flows");

    // summary.csv: the four metrics' rows first, then the within-seed rows.
    let csv = std::fs::read_to_string(dir.path().join("summary.csv")).unwrap();
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows[0], "model,attack,metric,mean,sd,ci_low,ci_high,n");
    assert_eq!(rows.len(), 1 + 2 * 5 * 4 + 2 * 5 * 6);
    assert!(rows.iter().any(|r| r.starts_with("rslad,PGD-20,worst_bootstrap_width,") && r.ends_with(",3")));
    assert!(rows.iter().any(|r| r.starts_with("absld,AA,p_worst_class_is_worst,")));
    let unc = std::fs::read_to_string(dir.path().join("uncertainty.csv")).unwrap();
    // Per evaluation: 10 classes, 4 metrics, one P(worst).
    assert_eq!(unc.lines().count(), 1 + 2 * 3 * 5 * (10 + 4 + 1));
    let curves_csv = std::fs::read_to_string(dir.path().join("curves.csv")).unwrap();
    assert_eq!(curves_csv.lines().count(), 1 + 2 * 10 * 6);
    let confusion_csv = std::fs::read_to_string(dir.path().join("confusion.csv")).unwrap();
    assert_eq!(confusion_csv.lines().count(), 1 + 2 * 5 * 100);
}

#[test]
fn results_without_confusions_or_sweep_say_so_and_keep_every_other_output() {
    let old = common::cifar_like(&["rslad", "absld"], &[0, 1], 50);
    let summary = summary::summarize(&old);
    let md = report::report_markdown(&old, &summary);
    assert!(md.contains("## Adversarial confusions\n\nThese results have no confusion matrices"));
    assert!(md.contains("## Robustness curves\n\nThese results have no robustness curve"));
    let dir = tempfile::tempdir().unwrap();
    let files = report::write_report(&old, dir.path()).unwrap();
    assert!(files.iter().all(|p| {
        let n = p.file_name().unwrap().to_string_lossy();
        !n.starts_with("confusion") && !n.starts_with("curves")
    }));
    // Removing the added sections gives back the report without them: every old line is there,
    // in order.
    let mut sections = md.split("\n## ");
    let kept: Vec<&str> = sections
        .by_ref()
        .filter(|s| !["Uncertainty of one evaluation", "Adversarial confusions", "Robustness curves"].iter().any(|t| s.starts_with(t)))
        .collect();
    let rebuilt = kept.join("\n## ");
    for heading in [
        "# Robust fairness across seeds",
        "## Worst-10%",
        "## 95% confidence intervals",
        "## Differences against rslad",
        "## Per seed",
        "## Settings",
    ] {
        assert!(rebuilt.contains(heading), "{heading}");
    }
    // summary.csv starts with exactly the rows it had: the four metrics of every cell.
    let csv = report::summary_csv(&summary);
    let first: Vec<&str> = csv.lines().skip(1).take(summary.cells.len()).collect();
    for (row, cell) in first.iter().zip(&summary.cells) {
        assert!(row.starts_with(&format!("{},{},{},", cell.model, cell.attack, cell.metric.key())), "{row}");
    }
}
