//! `bench-client report --from results.json` rebuilds tables and plots without a server, and
//! `bench-client plot-logs` plots training logs.

mod common;

use std::process::Command;

use rfb_bench_client::report;
use rfb_bench_client::results::Results;
use rfb_bench_client::summary::summarize;

fn bench_client() -> Command {
    Command::new(env!("CARGO_BIN_EXE_bench-client"))
}

#[test]
fn report_rebuilds_from_json() {
    let tmp = tempfile::tempdir().unwrap();
    let results = common::cifar_like(&["rslad", "absld"], &[0, 1], 100);
    let json = tmp.path().join("results.json");
    results.save(&json).unwrap();
    // The file round-trips exactly.
    assert_eq!(Results::load(&json).unwrap(), results);

    let out = tmp.path().join("rebuilt");
    let output = bench_client().args(["report", "--from"]).arg(&json).arg("--out").arg(&out).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    for name in
        ["table.md", "report.md", "summary.csv", "comparison.csv", "per_seed.csv", "classwise.png", "classwise-pgd-20.png", "metrics.png"]
    {
        assert!(out.join(name).is_file(), "{name} missing");
    }
    let summary = summarize(&results);
    assert_eq!(std::fs::read_to_string(out.join("table.md")).unwrap(), report::table_file(&results, &summary));
    assert_eq!(std::fs::read_to_string(out.join("summary.csv")).unwrap(), report::summary_csv(&summary));
    // The table is printed too.
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("| rslad | 0, 1 |"), "{stdout}");
    // Every per-seed count made it into the per-seed CSV: 2 models x 2 seeds x 5 attacks.
    let per_seed = std::fs::read_to_string(out.join("per_seed.csv")).unwrap();
    assert_eq!(per_seed.lines().count(), 1 + 2 * 2 * 5);
}

#[test]
fn report_refuses_broken_files() {
    let tmp = tempfile::tempdir().unwrap();
    let mut results = common::cifar_like(&["a"], &[0], 10);
    results.models[0].runs[0].attacks[0].correct.pop();
    let json = tmp.path().join("results.json");
    results.save(&json).unwrap();
    let output = bench_client().args(["report", "--from"]).arg(&json).arg("--out").arg(tmp.path().join("o")).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("9 correct counts"), "{stderr}");

    std::fs::write(&json, "{\"format\": \"something-else\"}").unwrap();
    let output = bench_client().args(["report", "--from"]).arg(&json).arg("--out").arg(tmp.path().join("o")).output().unwrap();
    assert!(!output.status.success());
}

#[test]
fn plot_logs_subcommand() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("runs/absld-s3");
    std::fs::create_dir_all(&run).unwrap();
    let mut text = String::new();
    for e in 0..5 {
        let r: Vec<f64> = (0..3).map(|k| 1.0 + (k * e) as f64 * 0.1).collect();
        text.push_str(&format!(
            "{{\"epoch\":{e},\"risk_clean\":{r:?},\"risk_adversarial\":{r:?},\"temperatures\":{{\"clean\":[1.0,1.1,0.9],\"adversarial\":[1.0,1.2,0.8]}},\"evaluation\":null}}\n"
        ));
    }
    std::fs::write(run.join("log.jsonl"), text).unwrap();
    let out = tmp.path().join("plots");
    let output = bench_client().args(["plot-logs", "--runs"]).arg(tmp.path().join("runs")).arg("--out").arg(&out).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(out.join("risk-sd.png").is_file());
    assert!(out.join("temperatures-absld-s3.png").is_file());
    let csv = std::fs::read_to_string(out.join("risk-sd.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 5);
    // Epoch 1 (index 0): equal risks, no spread.
    assert!(csv.lines().nth(1).unwrap().starts_with("absld-s3,absld,3,1,0,0,sum"), "{csv}");

    let output = bench_client().args(["plot-logs", "--runs"]).arg(tmp.path()).arg("--out").arg(&out).output().unwrap();
    assert!(!output.status.success(), "a folder without runs is an error");
}
