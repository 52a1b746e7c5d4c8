//! One evaluation spread over several servers: `bench-client compare` with three real
//! `evaluator serve` processes on a small digits model splits the evaluation into shards, and
//! the merged per-class counts equal the single-server result exactly, for every attack
//! (AutoAttack's four components included, per component), also when one server is killed
//! while it computes its shard (the shard is redone on another server).

mod common;

use std::path::Path;
use std::time::Duration;

use common::Server;
use rfb_bench_client::client::{compare, CompareConfig};
use rfb_bench_client::results::{AttackSetting, Results, Settings, SweepSetting};
use rfb_bench_client::selection::parse_models;

fn setting(label: &str, kind: &str, steps: Option<i64>, components: &[&str]) -> AttackSetting {
    AttackSetting {
        label: label.into(),
        kind: kind.into(),
        eps: if kind == "CLEAN" { None } else { Some(0.1) },
        steps,
        step_size: None,
        restarts: None,
        kappa: None,
        seed: 7,
        components: components.iter().map(|c| c.to_string()).collect(),
    }
}

/// Every attack kind the benchmark reports; AutoAttack's standard components with few steps
/// (the standard's 100 steps and 5000 Square queries take minutes on a CPU).
fn settings() -> Settings {
    Settings {
        dataset: String::new(),
        split: rfb_bench_client::split::Split::Test,
        examples_per_class: 4,
        batch_size: 8,
        precision: rfb_bench_client::precision::Precision::Fp32,
        attacks: vec![
            setting("Clean", "CLEAN", None, &[]),
            setting("FGSM", "FGSM", None, &[]),
            setting("PGD-5", "PGD", Some(5), &[]),
            setting("CW-inf-5", "CW_INF", Some(5), &[]),
            setting("AA", "AUTOATTACK_CUSTOM", Some(8), &["apgd-ce", "apgd-t", "fab-t", "square"]),
        ],
        confidence: 0.95,
        uncertainty: Default::default(),
        // A short robustness curve of PGD-5: radius 0 (clean) and 0.1 (PGD-5's own radius).
        sweep: Some(SweepSetting {
            attack: AttackSetting { eps: None, ..setting("PGD-5", "PGD", Some(5), &[]) },
            radii: vec![0.0, 0.05, 0.1],
        }),
    }
}

fn config(servers: Vec<String>, shards: usize) -> CompareConfig {
    CompareConfig {
        servers,
        token: None,
        requests: parse_models("natural").unwrap(),
        seeds: None,
        checkpoint: "best".into(),
        settings: settings(),
        progress: false,
        command: "test".into(),
        connect_timeout: Duration::from_secs(10),
        deadline: Some(Duration::from_secs(600)),
        shards,
    }
}

/// Three servers without a result cache (each request is computed), one thread each.
fn three_servers(models: &Path, tag: &str) -> Vec<Server> {
    (0..3)
        .map(|i| {
            let log = models.join(format!(".{tag}-{i}.log"));
            Server::start_logging_to(models, &["--no-cache"], &log, &[("OMP_NUM_THREADS", "1")])
        })
        .collect()
}

/// The one evaluation's attacks, then its robustness curve's radii: (label, correct, total,
/// per-component robust counts, adversarial confusion).
type Counts = Vec<(String, Vec<i64>, Vec<i64>, Vec<(String, i64, Vec<i64>)>, Vec<Vec<i64>>)>;

fn counts(results: &Results) -> Counts {
    assert!(results.failures.is_empty(), "{:?}", results.failures);
    assert_eq!(results.models.len(), 1);
    assert_eq!(results.models[0].runs.len(), 1);
    let run = &results.models[0].runs[0];
    assert_eq!(run.sweep.iter().map(|p| p.eps).collect::<Vec<_>>(), [0.0, 0.05, 0.1]);
    run.attacks
        .iter()
        .chain(run.sweep.iter().map(|p| &p.run))
        .map(|a| {
            // Every attack's confusion fits its counts: rows add up to the class totals, the
            // diagonal is the robust count (AutoAttack's included).
            assert_eq!(a.confusion.len(), a.total.len(), "{}: no confusion", a.attack);
            a.check_confusion().unwrap();
            let components = a.components.iter().map(|c| (c.name.clone(), c.attacked, c.robust_after.clone())).collect();
            (a.attack.clone(), a.correct.clone(), a.total.clone(), components, a.confusion.clone())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_evaluation_over_three_servers_equals_one_server_also_when_one_dies() {
    let models = common::models_dir();

    // The reference: one server, the whole evaluation.
    let servers = three_servers(models.path(), "first");
    let urls: Vec<String> = servers.iter().map(Server::url).collect();
    let single = compare(&config(vec![urls[0].clone()], 1)).await.unwrap().0;
    let reference = counts(&single);
    assert!(single.models[0].runs[0].shards.is_empty(), "one server, no shards");
    assert_eq!(reference[0].2, vec![4; 10], "4 examples per class");
    // The attacks do something: the comparison would be empty if every count were 0 or 4.
    let aa = &reference[4];
    assert!(aa.1.iter().sum::<i64>() > 0 && aa.1.iter().sum::<i64>() < reference[0].1.iter().sum::<i64>(), "{aa:?}");
    assert_eq!(aa.3.iter().map(|c| c.0.as_str()).collect::<Vec<_>>(), ["APGD-CE", "APGD-T", "FAB-T", "Square"], "{aa:?}");
    // The curve: radius 0 is the clean column, radius 0.1 the PGD-5 column (counts and confusions).
    let (clean, pgd, curve) = (&reference[0], &reference[2], &reference[5..]);
    assert_eq!((&curve[0].1, &curve[0].4), (&clean.1, &clean.4));
    assert_eq!((&curve[2].1, &curve[2].4), (&pgd.1, &pgd.4));

    // Three servers, one shard each.
    let sharded = compare(&config(urls.clone(), 0)).await.unwrap().0;
    assert_eq!(counts(&sharded), reference, "merged shards differ from the single server's result");
    let run = &sharded.models[0].runs[0];
    assert_eq!(run.shards.iter().map(|s| (s.index, s.count)).collect::<Vec<_>>(), [(0, 3), (1, 3), (2, 3)]);
    assert_eq!(run.shards.iter().map(|s| s.examples).sum::<i64>(), 40);
    assert!(run.shards.iter().all(|s| s.failed_on.is_empty()));
    assert_eq!(sharded.servers.iter().map(|s| s.evaluations_done).sum::<u64>(), 3);
    assert_eq!(sharded.servers.iter().map(|s| s.examples).sum::<i64>(), 40);
    drop(servers);

    // Three fresh servers; the third is killed once it has started computing its shard.
    let mut servers = three_servers(models.path(), "second");
    let urls: Vec<String> = servers.iter().map(Server::url).collect();
    let victim_log = servers[2].log.clone();
    let victim_pid = servers[2].pid();
    let killer = std::thread::spawn(move || {
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_secs(120) {
            // At once: its shard may take only a tenth of a second once the checkpoint is in.
            if std::fs::read_to_string(&victim_log).unwrap_or_default().contains("loading checkpoint") {
                // SAFETY: kill(2) on the child's pid; no memory is involved.
                unsafe { libc::kill(victim_pid as i32, libc::SIGKILL) };
                return true;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        false
    });
    let survived = compare(&config(urls.clone(), 0)).await.unwrap().0;
    assert!(killer.join().unwrap(), "the third server never started computing");
    assert!(!servers[2].alive(), "the third server was killed");
    assert_eq!(counts(&survived), reference, "merged shards after a server died differ from the single server's result");
    let run = &survived.models[0].runs[0];
    let redone: Vec<_> = run.shards.iter().filter(|s| !s.failed_on.is_empty()).collect();
    assert!(!redone.is_empty(), "a shard was redone: {:?}", run.shards);
    for shard in &redone {
        assert_eq!(shard.failed_on[0].server, urls[2]);
        assert_ne!(shard.server, urls[2]);
    }
    let victim = survived.servers.iter().find(|s| s.endpoint == urls[2]).unwrap();
    assert!(victim.evaluations_failed >= 1, "{victim:?}");
    let report = rfb_bench_client::report::work_by_server(&survived);
    assert!(report.contains(&format!("failed on {}", urls[2])), "{report}");
}
