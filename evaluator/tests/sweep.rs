//! Robustness curves and adversarial confusions through the command lines, on a small natural
//! digits model: `evaluator eval --eps-sweep` gives at eps 0.1 exactly the class-wise counts
//! (and confusion) of the single-radius evaluation with the same attack and seed, at radius 0
//! the clean counts; every radius is cached on its own (a second identical sweep is all
//! cached); and `bench-client compare --eps-sweep` against a caching server records the curve
//! in results.json, with a second identical comparison served from the cache.

mod common;

use std::time::Duration;

use common::Server;
use rfb_bench_client::client::{compare, CompareConfig};
use rfb_bench_client::results::{AttackSetting, Settings, SweepSetting};
use rfb_bench_client::selection::parse_models;
use serde_json::Value;

fn eval_json(models: &std::path::Path, cache: Option<&std::path::Path>, extra: &[&str]) -> Value {
    let json = models.join(format!(".eval-{}.json", std::process::id()));
    let mut args = vec![
        "eval",
        "--models-dir",
        models.to_str().unwrap(),
        "--model",
        "natural-s0/best",
        "--per-class",
        "6",
        "--seed",
        "3",
        "--batch-size",
        "16",
        "--device",
        "cpu",
        "--quiet",
        "--json",
        json.to_str().unwrap(),
    ];
    let cache_arg;
    match cache {
        Some(dir) => {
            cache_arg = dir.to_str().unwrap().to_string();
            args.extend(["--cache-dir", cache_arg.as_str()]);
        }
        None => args.push("--no-cache"),
    }
    args.extend(extra);
    let output = common::evaluator_cli(&args);
    assert!(output.status.success(), "evaluator {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap()
}

/// (correct, total, confusion rows) of one result of `eval --json`, the confusion checked
/// against the counts.
fn counts(result: &Value) -> (Vec<i64>, Vec<i64>, Vec<Vec<i64>>) {
    let classes = result["classes"].as_array().unwrap();
    let field = |name: &str| classes.iter().map(|c| c[name].as_i64().unwrap()).collect::<Vec<_>>();
    let (correct, total) = (field("correct"), field("total"));
    let confusion: Vec<Vec<i64>> =
        classes.iter().map(|c| c["predicted_as"].as_array().unwrap().iter().map(|n| n.as_i64().unwrap()).collect()).collect();
    for (k, row) in confusion.iter().enumerate() {
        assert_eq!(row.len(), classes.len(), "{}: row {k}", result["attack_name"]);
        assert_eq!(row.iter().sum::<i64>(), total[k], "{}: row {k} adds up to the total", result["attack_name"]);
        assert_eq!(row[k], correct[k], "{}: diagonal {k} is the robust count", result["attack_name"]);
    }
    (correct, total, confusion)
}

#[test]
fn an_eval_sweep_equals_single_radius_evaluations_and_each_radius_is_cached() {
    let models = common::models_dir();
    let single = eval_json(models.path(), None, &["--attacks", "clean,pgd-5", "--eps", "0.1"]);
    let (clean, pgd) = (counts(&single["results"][0]), counts(&single["results"][1]));
    assert!(pgd.0.iter().sum::<i64>() < clean.0.iter().sum::<i64>(), "PGD-5 broke nothing: {pgd:?}");

    let cache = tempfile::tempdir().unwrap();
    let sweep_args = ["--attacks", "clean", "--eps-sweep", "0:0.2:5", "--sweep-attack", "pgd-5"];
    let first = eval_json(models.path(), Some(cache.path()), &sweep_args);
    let curve = first["sweep"].as_array().unwrap();
    let radii: Vec<f64> = curve.iter().map(|p| p["eps"].as_f64().unwrap()).collect();
    assert_eq!(radii, [0.0, 0.05, 0.1, 0.15, 0.2]);
    assert_eq!(counts(&curve[0]["result"]), clean, "radius 0 is clean accuracy");
    assert_eq!(curve[0]["result"]["attack"]["kind"], "CLEAN");
    assert_eq!(counts(&curve[2]["result"]), pgd, "the curve at 0.1 differs from PGD-5 at 0.1");
    let robust: Vec<i64> = curve.iter().map(|p| counts(&p["result"]).0.iter().sum()).collect();
    println!("robust points along the curve: {robust:?}");
    assert!(robust[4] < robust[0], "the curve does not fall: {robust:?}");
    // A fresh cache: every attacked radius is computed (radius 0 may share the clean column's entry).
    assert!(curve[1..].iter().all(|p| p["result"]["cached"] == false), "first sweep: computed");

    let again = eval_json(models.path(), Some(cache.path()), &sweep_args);
    let curve_again = again["sweep"].as_array().unwrap();
    assert!(curve_again.iter().all(|p| p["result"]["cached"] == true), "second sweep: all cached");
    for (a, b) in curve.iter().zip(curve_again) {
        assert_eq!(counts(&a["result"]), counts(&b["result"]));
    }
    // One more radius: only it is computed.
    let longer = eval_json(
        models.path(),
        Some(cache.path()),
        &["--attacks", "clean", "--eps-sweep-list", "0.05,0.1,0.12", "--sweep-attack", "pgd-5"],
    );
    let cached: Vec<bool> = longer["sweep"].as_array().unwrap().iter().map(|p| p["result"]["cached"].as_bool().unwrap()).collect();
    assert_eq!(cached, [true, true, false]);
}

fn settings() -> Settings {
    let pgd = AttackSetting {
        label: "PGD-5".into(),
        kind: "PGD".into(),
        eps: Some(0.1),
        steps: Some(5),
        step_size: None,
        restarts: None,
        kappa: None,
        seed: 3,
        components: Vec::new(),
    };
    let clean = AttackSetting { label: "Clean".into(), kind: "CLEAN".into(), eps: None, steps: None, seed: 0, ..pgd.clone() };
    Settings {
        dataset: String::new(),
        split: rfb_bench_client::split::Split::Test,
        examples_per_class: 6,
        batch_size: 16,
        precision: rfb_bench_client::precision::Precision::Fp32,
        attacks: vec![clean, pgd.clone()],
        confidence: 0.95,
        uncertainty: Default::default(),
        sweep: Some(SweepSetting { attack: AttackSetting { eps: None, ..pgd }, radii: vec![0.0, 0.05, 0.1] }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compare_sweep_records_the_curve_and_is_cached_the_second_time() {
    let models = common::models_dir();
    let server = Server::start(models.path(), &[]);
    let config = CompareConfig {
        servers: vec![server.url()],
        token: None,
        requests: parse_models("natural").unwrap(),
        seeds: None,
        checkpoint: "best".into(),
        settings: settings(),
        progress: false,
        command: "test".into(),
        connect_timeout: Duration::from_secs(10),
        deadline: Some(Duration::from_secs(600)),
        shards: 1,
    };
    let first = compare(&config).await.unwrap().0;
    assert!(first.failures.is_empty(), "{:?}", first.failures);
    first.validate().unwrap();
    let run = &first.models[0].runs[0];
    assert_eq!(run.sweep.iter().map(|p| p.eps).collect::<Vec<_>>(), [0.0, 0.05, 0.1]);
    let (clean, pgd) = (run.attack("Clean").unwrap(), run.attack("PGD-5").unwrap());
    for attack in run.attacks.iter().chain(run.sweep.iter().map(|p| &p.run)) {
        assert_eq!(attack.confusion.len(), 10, "{}: a confusion per attack", attack.attack);
        attack.check_confusion().unwrap();
    }
    assert_eq!((&run.sweep[0].run.correct, &run.sweep[0].run.confusion), (&clean.correct, &clean.confusion), "radius 0 is clean");
    assert_eq!(
        (&run.sweep[2].run.correct, &run.sweep[2].run.confusion),
        (&pgd.correct, &pgd.confusion),
        "the curve at 0.1 is PGD-5 at 0.1"
    );
    assert!(run.sweep.iter().all(|p| p.run.attack == "PGD-5"));
    // Same request again: every attack and every radius from the cache, the same counts.
    let second = compare(&config).await.unwrap().0;
    let again = &second.models[0].runs[0];
    assert!(again.attacks.iter().chain(again.sweep.iter().map(|p| &p.run)).all(|a| a.cached), "second comparison: all cached");
    assert_eq!(
        again.sweep,
        run.sweep
            .iter()
            .map(|p| {
                let mut p = p.clone();
                p.run.cached = true;
                p
            })
            .collect::<Vec<_>>()
    );
    drop(server);
}
