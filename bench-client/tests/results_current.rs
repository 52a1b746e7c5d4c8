//! Committed results match the code that is checked out.
//!
//! Every results directory under `results/` records in its `run.json` the hash of the sources
//! that decide the numbers when it was made (rfb_build_support::sources::RESULT_SOURCES). These
//! tests fail when a commit changes any of those sources without regenerating the results (the
//! commands are in results/digits/README.md, "Regenerating"), and when a committed table is not
//! what `bench-client report` makes from the committed results.json.

use std::path::{Path, PathBuf};
use std::process::Command;

use rfb_bench_client::provenance::{self, Status};
use rfb_bench_client::report;
use rfb_bench_client::results::Results;
use rfb_build_support::sources::{hash_sources, RESULT_SOURCES};

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

#[test]
fn committed_results_were_made_from_the_checked_out_sources() {
    let root = repository();
    let reports = provenance::check_all(&root, &root.join("results")).unwrap();
    let main = reports.iter().find(|r| r.dir.ends_with("results/digits")).expect("results/digits has a run.json");
    // The main results must match the code; only other directories may be kept as archives.
    let stale: Vec<String> =
        reports.iter().filter(|r| !r.passes() || (r.dir == main.dir && !r.is_current())).map(|r| r.describe(&root)).collect();
    assert!(
        stale.is_empty(),
        "committed results do not match the code:\n  {}\nRegenerate them with the commands in results/digits/README.md (\"Regenerating\"), \
         then commit the results on their own; `target/debug/bench-client check-results` repeats this check.",
        stale.join("\n  ")
    );
}

/// Every results.json under `dir`, recursively (not in work directories).
fn results_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() && !path.ends_with("work") {
            results_files(&path, out);
        } else if path.file_name().is_some_and(|n| n == "results.json") {
            out.push(path);
        }
    }
}

#[test]
fn committed_tables_are_what_report_makes_from_the_committed_results_json() {
    let mut files = Vec::new();
    results_files(&repository().join("results"), &mut files);
    assert!(!files.is_empty());
    let mut differing = Vec::new();
    for json in &files {
        let dir = json.parent().unwrap();
        let results = Results::load(json).unwrap();
        let summary = rfb_bench_client::summary::summarize(&results);
        let expected = [
            ("table.md", report::table_file(&results, &summary)),
            ("report.md", report::report_markdown(&results, &summary)),
            ("summary.csv", report::summary_csv(&summary)),
            ("comparison.csv", report::comparison_csv(&summary)),
            ("per_seed.csv", report::per_seed_csv(&results)),
        ];
        for (name, text) in expected {
            if std::fs::read_to_string(dir.join(name)).ok().as_deref() != Some(text.as_str()) {
                differing.push(dir.join(name).display().to_string());
            }
        }
    }
    assert!(
        differing.is_empty(),
        "not what bench-client report makes from results.json (regenerate the results):\n  {}",
        differing.join("\n  ")
    );

    // The main results come with their report page and its screenshot (the main job's last step).
    let digits = repository().join("results/digits");
    let page = std::fs::read_to_string(digits.join("index.html")).expect("results/digits/index.html");
    let results = Results::load(&digits.join("results.json")).unwrap();
    for model in &results.models {
        assert!(page.contains(&format!("<td>{}", model.label)), "the page lists {}", model.label);
    }
    let png = std::fs::read(digits.join("index.png")).expect("results/digits/index.png, the page's screenshot");
    assert_eq!(rfb_bench_client::html::png_size(&png).map(|(w, _)| w), Some(1280), "a 1280-pixel-wide screenshot");
}

/// The main job's teacher is at least as robust as the best student baseline on the same points
/// (the paper's setting: a stronger teacher), as the committed results measure it: the
/// teacher's evaluation in results/digits/teacher against every baseline in results/digits.
#[test]
fn the_main_jobs_teacher_is_at_least_as_robust_as_the_best_student_baseline() {
    let digits = repository().join("results/digits");
    let average = |dir: &Path, model: &str| -> Option<f64> {
        let results = Results::load(&dir.join("results.json")).unwrap();
        let summary = rfb_bench_client::summary::summarize(&results);
        let cell = summary.cell(model, "AA", rfb_bench_client::summary::Metric::Avg)?;
        Some(cell.samples().iter().sum::<f64>() / cell.samples().len() as f64)
    };
    let teacher = average(&digits.join("teacher"), "teacher").expect("results/digits/teacher has the teacher under AA");
    let students = Results::load(&digits.join("results.json")).unwrap();
    let mut compared = 0;
    for model in students.models.iter().map(|m| m.label.as_str()).filter(|m| !matches!(*m, "natural" | "absld")) {
        let student = average(&digits, model).expect("every baseline under AA");
        assert!(teacher >= student, "the teacher's AutoAttack average {teacher:.2} is below {model}'s {student:.2}");
        compared += 1;
    }
    assert!(compared >= 2, "SAT, TRADES and RSLAD are in the main results");
    // run.json records the same comparison.
    let run: serde_json::Value = serde_json::from_slice(&std::fs::read(digits.join("run.json")).unwrap()).unwrap();
    assert_eq!(run["teacher"]["average"].as_f64(), Some(teacher), "{}", run["teacher"]);
}

/// A repository in miniature: one file under each result-deciding path.
fn miniature() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    for path in RESULT_SOURCES {
        let file = if path.contains('.') { root.path().join(path) } else { root.path().join(path).join("lib.rs") };
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, format!("// {path}\n")).unwrap();
    }
    root
}

/// Writes `results/<name>/run.json` recording the sources as they are now, and a results.json.
fn regenerate(root: &Path, name: &str) {
    let dir = root.join("results").join(name);
    std::fs::create_dir_all(dir.join("rslad-vs-absld")).unwrap();
    let hashes = hash_sources(root, RESULT_SOURCES).unwrap();
    let mut record = provenance::sources_json(&hashes);
    record["command"] = "bash scripts/digits-benchmark.sh".into();
    record["code"] = "abc1234".into();
    std::fs::write(dir.join("run.json"), serde_json::to_string_pretty(&record).unwrap()).unwrap();
    std::fs::write(dir.join("results.json"), "{}").unwrap();
    // A comparison made by the same run, below it, is covered by its run.json.
    std::fs::write(dir.join("rslad-vs-absld/results.json"), "{}").unwrap();
}

fn check_cli(root: &Path) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_bench-client")).args(["check-results", "--root"]).arg(root).output().unwrap();
    (output.status.success(), format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr)))
}

#[test]
fn the_check_fails_on_stale_results_and_passes_once_they_are_regenerated() {
    let repo = miniature();
    let root = repo.path();
    regenerate(root, "digits");
    let reports = provenance::check_all(root, &root.join("results")).unwrap();
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(reports[0].status, Status::Current);
    let (ok, text) = check_cli(root);
    assert!(ok, "{text}");
    assert!(text.contains("results/digits: current"), "{text}");

    // A commit changes the training code and leaves the results alone: stale, and the message
    // says what changed and how to make them again.
    std::fs::write(root.join("trainer/src/lib.rs"), "// a new learning-rate schedule\n").unwrap();
    let reports = provenance::check_all(root, &root.join("results")).unwrap();
    assert_eq!(reports[0].status, Status::Stale { changed: vec!["trainer/src".into()] });
    let (ok, text) = check_cli(root);
    assert!(!ok, "{text}");
    assert!(
        text.contains("results/digits: stale (made at abc1234): trainer/src changed since; regenerate it on a clean checkout with `bash scripts/digits-benchmark.sh`"),
        "{text}"
    );

    // Editing only results, docs or tests outside the declared sources changes nothing.
    std::fs::create_dir_all(root.join("docs")).unwrap();
    std::fs::write(root.join("docs/notes.md"), "more words").unwrap();
    regenerate(root, "digits");
    std::fs::write(root.join("results/digits/README.md"), "a new reading").unwrap();
    assert!(check_cli(root).0);

    // Results from before hashes were recorded, and results with no run.json at all, are not
    // tied to any code either.
    std::fs::create_dir_all(root.join("results/old")).unwrap();
    std::fs::write(root.join("results/old/run.json"), r#"{"command": "bash scripts/digits-benchmark.sh", "code": "70f62cb"}"#).unwrap();
    std::fs::create_dir_all(root.join("results/loose")).unwrap();
    std::fs::write(root.join("results/loose/results.json"), "{}").unwrap();
    let reports = provenance::check_all(root, &root.join("results")).unwrap();
    let statuses: Vec<(String, Status)> =
        reports.iter().map(|r| (r.dir.strip_prefix(root).unwrap().display().to_string(), r.status.clone())).collect();
    assert_eq!(
        statuses,
        [
            ("results/digits".to_string(), Status::Current),
            ("results/loose".to_string(), Status::NoRunRecord),
            ("results/old".to_string(), Status::Unrecorded),
        ]
    );
    let (ok, text) = check_cli(root);
    assert!(!ok && text.contains("results/old: its run.json records no sources hash (made at 70f62cb)"), "{text}");

    // Declared archives pass, saying so; the rest must still be current.
    std::fs::remove_dir_all(root.join("results/loose")).unwrap();
    std::fs::write(
        root.join("results/old/run.json"),
        r#"{"command": "bash scripts/digits-benchmark.sh", "code": "70f62cb", "archived": "made with the old attacks"}"#,
    )
    .unwrap();
    let (ok, text) = check_cli(root);
    assert!(ok, "{text}");
    assert!(text.contains("results/old: archived (made at 70f62cb), not tied to this code: made with the old attacks"), "{text}");
    std::fs::write(root.join("core/src/lib.rs"), "// other models\n").unwrap();
    let (ok, text) = check_cli(root);
    assert!(!ok && text.contains("results/digits: stale (made at abc1234): core/src changed since"), "{text}");
}
