//! The Markdown and CSV tables against per-class counts in results files built here: a small
//! one worked by hand, and a larger one checked against an independent computation.

mod common;

use rfb_bench_client::attacks::{parse_attacks, Common};
use rfb_bench_client::report;
use rfb_bench_client::results::{AttackRun, Failure, ModelResults, Results, SeedRun, FORMAT, FORMAT_VERSION};
use rfb_bench_client::summary::summarize;

/// Four classes of ten examples, two models, two seeds, Clean and PGD-20.
fn hand_results() -> Results {
    let mut settings = common::settings(8.0 / 255.0);
    settings.attacks = parse_attacks("clean,pgd", &Common { eps: 8.0 / 255.0, step_size: None, seed: 0 }).unwrap();
    let names: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
    let run = |seed: u64, model: &str, clean: [i64; 4], pgd: [i64; 4]| SeedRun {
        seed,
        model: format!("{model}-s{seed}/best"),
        method: model.into(),
        architecture: "digits-cnn".into(),
        dataset: "digits".into(),
        weights_sha256: String::new(),
        server: "http://127.0.0.1:1".into(),
        attacks: [("Clean", clean), ("PGD-20", pgd)]
            .into_iter()
            .map(|(label, correct)| AttackRun {
                attack: label.into(),
                attack_name: label.into(),
                class_names: names.clone(),
                correct: correct.to_vec(),
                total: vec![10; 4],
                device: "cpu".into(),
                elapsed_seconds: 0.1,
                cached: false,
                sanity: None,
                ran: None,
                evaluator_version: String::new(),
                server_metrics: None,
                components: Vec::new(),
                confusion: Vec::new(),
            })
            .collect(),
        shards: Vec::new(),
        sweep: Vec::new(),
    };
    Results {
        format: FORMAT.into(),
        format_version: FORMAT_VERSION,
        created_unix: 0,
        command: String::new(),
        client_version: String::new(),
        proto_version: String::new(),
        settings,
        servers: Vec::new(),
        models: vec![
            ModelResults {
                label: "rslad".into(),
                class_names: names.clone(),
                runs: vec![run(0, "rslad", [10, 9, 8, 7], [5, 4, 3, 2]), run(1, "rslad", [9, 9, 8, 8], [6, 4, 4, 2])],
            },
            ModelResults {
                label: "absld".into(),
                class_names: names.clone(),
                runs: vec![run(0, "absld", [9, 9, 9, 8], [5, 5, 4, 4]), run(1, "absld", [10, 9, 9, 8], [6, 5, 5, 4])],
            },
        ],
        failures: Vec::new(),
        run: Default::default(),
    }
}

fn row<'a>(table: &'a str, label: &str) -> Vec<&'a str> {
    let line = table.lines().find(|l| l.starts_with(&format!("| {label} |"))).unwrap_or_else(|| panic!("no row for {label} in\n{table}"));
    line.trim_matches('|').split('|').map(str::trim).collect()
}

#[test]
fn table1_worked_by_hand() {
    let results = hand_results();
    let summary = summarize(&results);
    let table = report::table1_markdown(&summary);
    let header = table.lines().next().unwrap();
    assert_eq!(header, "| Model | Seeds | Clean Avg ↑ | Clean Worst ↑ | Clean NSD ↓ | PGD-20 Avg ↑ | PGD-20 Worst ↑ | PGD-20 NSD ↓ |");
    // rslad Clean: seed 0 accuracies 100, 90, 80, 70 (Avg 85, Worst 70, SD √125 = 11.180, NSD 0.13153);
    // seed 1: 90, 90, 80, 80 (Avg 85, Worst 80, SD 5, NSD 0.05882). Worst 75 ± 7.07 (sample SD of
    // 70 and 80); NSD 0.0952 ± 0.0514. PGD: 50, 40, 30, 20 and 60, 40, 40, 20: Avg 35 and 40
    // (37.50 ± 3.54), Worst 20 and 20, NSD 0.3194 and 0.3536 (0.336 ± 0.024).
    assert_eq!(
        row(&table, "rslad"),
        ["rslad", "0, 1", "85.00 ± 0.00", "75.00 ± 7.07", "0.095 ± 0.051", "37.50 ± 3.54", "20.00 ± 0.00", "0.336 ± 0.024"]
    );
    // absld Clean: 90, 90, 90, 80 (Avg 87.5, SD 4.330, NSD 0.04949) and 100, 90, 90, 80 (Avg 90,
    // SD 7.071, NSD 0.07857). PGD: 50, 50, 40, 40 (45; NSD 0.1111) and 60, 50, 50, 40 (50; 0.1414).
    assert_eq!(
        row(&table, "absld"),
        ["absld", "0, 1", "88.75 ± 1.77", "80.00 ± 0.00", "0.064 ± 0.021", "47.50 ± 3.54", "40.00 ± 0.00", "0.126 ± 0.021"]
    );

    // absld against rslad, PGD-20 Avg: 45, 50 vs 35, 40: difference 10, se² = 6.25 + 6.25,
    // t = 10 / √12.5 = 2.828427, df = 12.5² / (6.25² + 6.25²) = 2, p = 1 - t / √(2 + t²) = 0.1055728.
    let csv = report::comparison_csv(&summary);
    let line = csv.lines().find(|l| l.starts_with("absld,rslad,PGD-20,avg,")).unwrap();
    let cols: Vec<f64> = line.split(',').skip(4).map(|v| v.parse().unwrap()).collect();
    let (difference, t, df, p) = (cols[0], cols[4], cols[5], cols[6]);
    assert!((difference - 10.0).abs() < 1e-12);
    assert!((t - 8.0f64.sqrt()).abs() < 1e-9, "{t}");
    assert!((df - 2.0).abs() < 1e-9, "{df}");
    assert!((p - (1.0 - 8.0f64.sqrt() / 10.0f64.sqrt())).abs() < 1e-9, "{p}");
    // Worst under PGD has no spread in either model: no test.
    let line = csv.lines().find(|l| l.starts_with("absld,rslad,PGD-20,worst,")).unwrap();
    assert_eq!(line, "absld,rslad,PGD-20,worst,20,,,,,,,2,2");

    // The report shows the same difference with its p-value.
    let md = report::report_markdown(&results, &summary);
    assert!(md.contains("| absld | PGD-20 | Avg | +10.00 |"), "{md}");
    assert!(md.contains("| 0.106 |"), "{md}");
}

#[test]
fn csv_matches_independent_computation() {
    let results = common::cifar_like(&["rslad", "absld", "sat"], &[0, 1, 2, 3], 100);
    let summary = summarize(&results);
    let csv = report::summary_csv(&summary);
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("model,attack,metric,mean,sd,ci_low,ci_high,n"));
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    // The four metrics per model and attack, then six within-seed rows (uncertainty.rs).
    assert_eq!(rows.len(), 3 * 5 * 4 + 3 * 5 * 6);
    assert!(rows[..3 * 5 * 4].iter().all(|r| ["avg", "worst", "worst_10_percent", "nsd"].contains(&r[2])));
    let t3 = 3.182446305284263; // t_{0.975, 3}
    for model in &results.models {
        for attack in results.attack_labels() {
            let per_seed: Vec<(f64, f64, f64, f64)> = model
                .runs
                .iter()
                .map(|r| {
                    let a = r.attack(&attack).unwrap();
                    common::reference_metrics(&common::accuracies(&a.correct, &a.total))
                })
                .collect();
            for (i, metric) in ["avg", "worst", "worst_10_percent", "nsd"].iter().enumerate() {
                let values: Vec<f64> = per_seed.iter().map(|m| [m.0, m.1, m.2, m.3][i]).collect();
                let (mean, sd) = common::mean_sd(&values);
                let row = rows.iter().find(|r| r[0] == model.label && r[1] == attack && r[2] == *metric).unwrap();
                let got: Vec<f64> = row[3..7].iter().map(|v| v.parse().unwrap()).collect();
                assert!((got[0] - mean).abs() < 1e-9, "{} {attack} {metric}: mean {} vs {mean}", model.label, got[0]);
                assert!((got[1] - sd).abs() < 1e-9);
                assert!((got[2] - (mean - t3 * sd / 2.0)).abs() < 1e-7, "ci_low");
                assert!((got[3] - (mean + t3 * sd / 2.0)).abs() < 1e-7, "ci_high");
                assert_eq!(row[7], "4");
            }
            // The Markdown cells are the same numbers, rounded.
            let table = report::table1_markdown(&summary);
            let cells = row(&table, &model.label);
            let column = 2 + 3 * results.attack_labels().iter().position(|a| *a == attack).unwrap();
            let avg: Vec<f64> = per_seed.iter().map(|m| m.0).collect();
            let (mean, sd) = common::mean_sd(&avg);
            assert_eq!(cells[column], format!("{mean:.2} ± {sd:.2}"));
            let nsd: Vec<f64> = per_seed.iter().map(|m| m.3).collect();
            let (mean, sd) = common::mean_sd(&nsd);
            assert_eq!(cells[column + 2], format!("{mean:.3} ± {sd:.3}"));
        }
    }
}

#[test]
fn single_seed_missing_attack_and_failures() {
    let mut results = hand_results();
    // absld keeps only seed 1, and that without PGD; a failure is recorded.
    results.models[1].runs.remove(0);
    results.models[1].runs[0].attacks.retain(|a| a.attack == "Clean");
    results.failures.push(Failure {
        label: "absld".into(),
        model: "absld-s0/best".into(),
        seed: Some(0),
        server: "http://x:1".into(),
        error: "Internal: out of memory".into(),
    });
    let summary = summarize(&results);
    let table = report::table1_markdown(&summary);
    // One seed: the mean alone, no ± (100, 90, 90, 80 -> 90.00, 80.00, 0.079); no PGD: dashes.
    assert_eq!(row(&table, "absld"), ["absld", "1", "90.00", "80.00", "0.079", "–", "–", "–"]);
    let md = report::report_markdown(&results, &summary);
    assert!(md.contains("## Failed evaluations"));
    assert!(md.contains("Internal: out of memory"));
    let csv = report::summary_csv(&summary);
    assert!(csv.contains("absld,Clean,avg,90,,,,1\n"), "{csv}");
    assert!(csv.contains("absld,PGD-20,avg,,,,,0\n"), "{csv}");
}

#[test]
fn zero_accuracy_nsd_follows_the_shared_definition() {
    // All classes at 0% (a natural model under PGD): Avg 0, Worst 0, NSD 0 by rfb_proto's rule.
    let mut results = hand_results();
    for run in &mut results.models[0].runs {
        run.attacks[1].correct = vec![0; 4];
    }
    let summary = summarize(&results);
    let table = report::table1_markdown(&summary);
    let cells = row(&table, "rslad");
    assert_eq!(&cells[5..], ["0.00 ± 0.00", "0.00 ± 0.00", "0.000 ± 0.000"]);
}

/// AutoAttack's warnings reach table.md, report.md and the page: each raised flag in words,
/// else one sentence saying none was; nothing when AutoAttack did not run.
#[test]
fn autoattack_warnings_are_listed_under_the_table_and_on_the_page() {
    use rfb_bench_client::results::Sanity;
    let mut results = hand_results();
    let page = |results: &Results| rfb_bench_client::html::render(results, &summarize(results), &[]);
    assert!(!report::table_file(&results, &summarize(&results)).contains("AutoAttack"), "no AutoAttack, no line");
    let quiet = Sanity {
        randomised: false,
        probabilities_not_logits: false,
        zero_gradient_fraction: 0.0,
        possible_gradient_masking: false,
        dynamic: false,
        dlr_zero_gradient_points: 0,
        square_robust_accuracy_drop: 0.0,
        square_lowered_robust_accuracy: false,
        targets_requested: 9,
        targets_used: 9,
    };
    for model in &mut results.models {
        for run in &mut model.runs {
            run.attacks[1].sanity = Some(quiet.clone());
        }
    }
    let table = report::table_file(&results, &summarize(&results));
    assert!(table.contains("no warning raised") && table.contains("Square after the gradient attacks"), "{table}");
    results.models[1].runs[1].attacks[1].sanity =
        Some(Sanity { square_robust_accuracy_drop: 0.05, square_lowered_robust_accuracy: true, targets_used: 3, ..quiet.clone() });
    let summary = summarize(&results);
    let table = report::table_file(&results, &summary);
    let markdown = report::report_markdown(&results, &summary);
    let html = page(&results);
    for text in [&table, &markdown, &html] {
        assert!(text.contains("absld seed 1, PGD-20"), "{text}");
        assert!(text.contains("Square lowered the robust accuracy by 5.00 points"), "{text}");
        assert!(text.contains("9 targets asked for, the model has only 3 other classes"), "{text}");
        assert!(!text.contains("no warning raised"));
    }
}
