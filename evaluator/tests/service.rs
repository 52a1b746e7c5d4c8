//! The evaluator binary on loopback, against a small digits model trained here: listing,
//! description, every attack kind, progress, the cache, cancellation and deadlines, eight
//! concurrent clients, bad input, authentication, path escapes, TLS, health, the `eval`
//! command, and a Python client that generates its stubs from the .proto and uses reflection.

mod common;
use common::python;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{copy_checkpoint, correct, events, models_dir, request, results, spec, total_correct, trained_run, Server, MODEL};
use rfb_proto::v1::evaluator_client::EvaluatorClient;
use rfb_proto::v1::{evaluate_event::Event, AttackKind, AttackSpec, DescribeModelRequest, EvaluateRequest, ListModelsRequest, Precision};
use tonic::transport::Channel;
use tonic::{Code, Status};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_and_describes_models_and_reports_problems() {
    let models = models_dir();
    std::fs::create_dir_all(models.path().join("broken/best")).unwrap();
    std::fs::write(models.path().join("broken/best/manifest.json"), "{ not json").unwrap();
    let server = Server::start(models.path(), &[]);
    let mut client = server.client().await;

    let listing = client.list_models(ListModelsRequest {}).await.unwrap().into_inner();
    let names: Vec<&str> = listing.models.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["natural-s0/best", "natural-s0/last"]);
    assert_eq!(listing.problems.len(), 1, "{:?}", listing.problems);
    assert!(listing.problems[0].starts_with("broken/best"), "{:?}", listing.problems);

    let info = client.describe_model(DescribeModelRequest { model: MODEL.into() }).await.unwrap().into_inner();
    let manifest: serde_json::Value = serde_json::from_str(&info.manifest_json).unwrap();
    assert_eq!(info.name, MODEL);
    assert_eq!(info.architecture, "digits-cnn");
    assert_eq!(info.num_classes, 10);
    assert_eq!(info.input_shape, [1, 8, 8]);
    assert_eq!(info.class_names.len(), 10);
    assert_eq!(info.dataset, "digits");
    assert_eq!(info.method, "natural");
    assert_eq!(info.seed, Some(0));
    assert!(info.parameter_count > 0);
    assert_eq!(info.weights_sha256, manifest["weights_sha256"].as_str().unwrap());

    let missing = client.describe_model(DescribeModelRequest { model: "natural-s0/nope".into() }).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
    let broken = client.describe_model(DescribeModelRequest { model: "broken/best".into() }).await.unwrap_err();
    assert_eq!(broken.code(), Code::FailedPrecondition, "{broken:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_attack_kind_on_a_small_subset_with_progress() {
    let models = models_dir();
    let server = Server::start(models.path(), &[]);
    let mut client = server.client().await;
    let per_class = 3;
    let eps = Some(0.2);
    let attacks = vec![
        spec(AttackKind::Clean),
        AttackSpec { eps, ..spec(AttackKind::Fgsm) },
        AttackSpec { eps, seed: 1, ..spec(AttackKind::Pgd) },
        AttackSpec { eps, seed: 1, ..spec(AttackKind::CwInf) },
        AttackSpec {
            eps,
            seed: 1,
            steps: Some(20),
            components: vec!["apgd-ce".into(), "apgd-dlr".into(), "fab-t".into(), "square".into()],
            ..spec(AttackKind::AutoattackCustom)
        },
    ];
    let started = Instant::now();
    let all = events(&mut client, EvaluateRequest { batch_size: 16, ..request(per_class, attacks.clone()) }).await.unwrap();
    eprintln!("five attacks on 30 examples: {:.1} s", started.elapsed().as_secs_f64());
    assert!(matches!(all.last(), Some(Event::Done(_))), "the stream ends with Done");
    let found = results(&all);
    let names: Vec<&str> = found.iter().map(|r| r.attack_name.as_str()).collect();
    assert_eq!(
        names,
        ["Clean", "FGSM", "PGD-20", "CW-inf-30", "AutoAttack(APGD-CE+APGD-DLR+FAB-T+Square)@20"],
        "fewer iterations than the reference's are named so"
    );
    // Progress: for every attack and each of its components, from 0 to the points the component
    // runs on, non-decreasing. A single attack runs on all 30 examples; AutoAttack's components
    // run on the points still robust.
    for (index, result) in found.iter().enumerate() {
        let progress: Vec<&rfb_proto::v1::Progress> = all
            .iter()
            .filter_map(|e| match e {
                Event::Progress(p) if p.attack_index == index as i64 => Some(p),
                _ => None,
            })
            .collect();
        let components = progress.iter().map(|p| p.component_index).max().unwrap() + 1;
        for component in 0..components {
            let steps: Vec<(i64, i64)> =
                progress.iter().filter(|p| p.component_index == component).map(|p| (p.examples_done, p.examples_total)).collect();
            let total = steps[0].1;
            assert_eq!(steps.first().map(|s| s.0), Some(0), "{}: {steps:?}", result.attack_name);
            assert_eq!(steps.last().map(|s| s.0), Some(total), "{}: {steps:?}", result.attack_name);
            assert!(steps.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 == w[1].1), "{steps:?}");
            if component == 0 && !result.attack_name.starts_with("AutoAttack") {
                assert_eq!(total, 30, "{}", result.attack_name);
                assert!(steps.len() >= 3, "30 examples in batches of 16: {steps:?}");
            }
        }
        // The result reports what each component did, in the order they ran.
        let reported: Vec<&str> = result.components.iter().map(|c| c.name.as_str()).collect();
        if result.attack_name.starts_with("AutoAttack") {
            assert_eq!(reported, ["APGD-CE", "APGD-DLR", "FAB-T", "Square"][..reported.len()], "{reported:?}");
            assert_eq!(reported.len() as i64, components);
            let last: i64 = result.components.last().unwrap().robust_after.iter().sum();
            assert_eq!(last, total_correct(result), "the last component's survivors are the robust points");
        }
    }
    let clean = total_correct(&found[0]);
    assert!(clean > 15, "a trained model gets most clean digits right: {clean}");
    for (result, requested) in found.iter().zip(&attacks) {
        assert_eq!(result.classes.len(), 10);
        assert!(result.classes.iter().all(|c| c.total == per_class), "{result:?}");
        assert_eq!(result.classes.iter().map(|c| c.total).sum::<i64>(), 30);
        assert_eq!(result.classes[3].class_name, "3");
        assert!(total_correct(result) <= clean, "{}: {} > clean {clean}", result.attack_name, total_correct(result));
        let metrics = result.metrics.unwrap();
        assert!((metrics.average - 100.0 * total_correct(result) as f64 / 30.0).abs() < 1e-9);
        let accuracies: Vec<f64> = result.classes.iter().map(|c| 100.0 * c.correct as f64 / 3.0).collect();
        assert_eq!(metrics.worst, accuracies.iter().cloned().fold(f64::INFINITY, f64::min));
        assert!(!result.cached);
        assert_eq!(result.device, "cpu");
        assert_eq!(result.model, MODEL);
        assert_eq!(result.dataset, "digits");
        assert_eq!(result.examples_per_class, 3);
        assert_eq!(result.precision, Precision::Fp32 as i32);
        let versions = result.versions.clone().unwrap();
        assert_eq!(versions.libtorch, "2.13.0");
        assert_eq!(versions.proto, "rfb.v1");
        assert!(versions.evaluator.starts_with("rfb-evaluator "));
        let spec = result.attack.clone().unwrap();
        assert_eq!(spec.kind, requested.kind);
        assert_eq!(result.sanity.is_some(), requested.kind >= AttackKind::AutoattackStandard as i32, "{}", result.attack_name);
        if let Some(sanity) = result.sanity {
            assert!(!sanity.randomised && !sanity.probabilities_not_logits, "{sanity:?}");
        }
    }
    // Defaults are filled in and reported.
    let pgd = found[2].attack.clone().unwrap();
    // The step follows the radius: eps/4 (the paper's 2/255 at 8/255).
    assert_eq!((pgd.steps, pgd.step_size, pgd.restarts), (Some(20), Some(pgd.eps.unwrap() / 4.0), Some(1)));
    assert_eq!(found[3].attack.clone().unwrap().kappa, Some(50.0));
    assert!(total_correct(&found[4]) <= total_correct(&found[2]) + 3, "AutoAttack (custom) about as strong as PGD");

    // AutoAttack standard, in one batch; the clean result comes from the cache.
    let started = Instant::now();
    let standard = AttackSpec { eps, seed: 1, ..spec(AttackKind::AutoattackStandard) };
    let both = results(
        &events(&mut client, EvaluateRequest { batch_size: 32, ..request(per_class, vec![spec(AttackKind::Clean), standard]) })
            .await
            .unwrap(),
    );
    eprintln!("AutoAttack on 30 examples: {:.1} s", started.elapsed().as_secs_f64());
    assert!(both[0].cached && !both[1].cached);
    assert_eq!(both[1].attack_name, "AutoAttack");
    assert_eq!(both[1].classes.iter().map(|c| c.total).sum::<i64>(), 30);
    assert!(both[1].sanity.is_some());
    // AutoAttack's points are a subset of the clean ones, per class; eps 0.2 breaks nearly all.
    for class in 0..10 {
        assert!(both[1].classes[class].correct <= both[0].classes[class].correct);
    }
    assert!(total_correct(&both[1]) <= total_correct(&found[2]), "AutoAttack is at least as strong as PGD here");
    assert!(total_correct(&both[1]) < clean / 2);

    // AutoAttack-rand (APGD with 20 EOT passes per step) is costly on a CPU: one per class.
    let started = Instant::now();
    let rand = AttackSpec { eps, seed: 1, ..spec(AttackKind::AutoattackRand) };
    let found = results(&events(&mut client, request(1, vec![spec(AttackKind::Clean), rand])).await.unwrap());
    eprintln!("AutoAttack-rand on 10 examples: {:.1} s", started.elapsed().as_secs_f64());
    assert_eq!(found[1].attack_name, "AutoAttack-rand");
    assert_eq!(found[1].classes.iter().map(|c| c.total).sum::<i64>(), 10);
    assert!(found[1].sanity.is_some());
    for class in 0..10 {
        assert!(found[1].classes[class].correct <= found[0].classes[class].correct);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_requests_come_from_the_cache_and_corrupt_entries_are_recomputed() {
    let models = models_dir();
    let server = Server::start(models.path(), &[]);
    let mut client = server.client().await;
    let attacks = vec![spec(AttackKind::Clean), AttackSpec { eps: Some(0.1), seed: 5, ..spec(AttackKind::Pgd) }];
    let first = results(&events(&mut client, request(5, attacks.clone())).await.unwrap());
    assert!(first.iter().all(|r| !r.cached));

    let started = Instant::now();
    let second_events = events(&mut client, EvaluateRequest { batch_size: 7, ..request(5, attacks.clone()) }).await.unwrap();
    let repeat_seconds = started.elapsed().as_secs_f64();
    eprintln!("cached repeat: {repeat_seconds:.3} s");
    assert!(repeat_seconds < 2.0, "a cached answer is immediate: {repeat_seconds} s");
    assert!(!second_events.iter().any(|e| matches!(e, Event::Queued(_) | Event::Progress(_))), "not queued, not run");
    let second = results(&second_events);
    assert!(second.iter().all(|r| r.cached), "a different batch size uses the same entries");
    for (a, b) in first.iter().zip(&second) {
        assert_eq!(correct(a), correct(b));
        assert_eq!(a.elapsed_seconds, b.elapsed_seconds, "the stored computation time");
    }

    // Another seed is another result.
    let other = AttackSpec { eps: Some(0.1), seed: 6, ..spec(AttackKind::Pgd) };
    let third = results(&events(&mut client, request(5, vec![spec(AttackKind::Clean), other])).await.unwrap());
    assert!(third[0].cached && !third[1].cached);

    // Corrupt every entry: the results are recomputed (not trusted), equal, and stored again.
    let cache = models.path().join(".rfb-cache");
    // Read every entry before touching any, so that the outcome does not depend on the order in
    // which the file system lists them.
    let mut entries: Vec<(PathBuf, String)> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            (p, text)
        })
        .collect();
    entries.sort();
    assert_eq!(entries.len(), 3, "{entries:?}");
    let seed_five = entries.iter().position(|(_, t)| t.contains("\"seed\": 5")).expect("the seed-5 entry");
    let seed_six = entries.iter().position(|(_, t)| t.contains("\"seed\": 6")).expect("the seed-6 entry");
    for (position, (path, text)) in entries.iter().enumerate() {
        if position == seed_five {
            // A valid entry of another request under this name: its embedded key does not match.
            std::fs::write(path, &entries[seed_six].1).unwrap();
        } else {
            std::fs::write(path, &text[..text.len() / 3]).unwrap();
        }
    }
    let recomputed = results(&events(&mut client, request(5, attacks.clone())).await.unwrap());
    assert!(recomputed.iter().all(|r| !r.cached), "corrupt entries are not trusted");
    for (a, b) in first.iter().zip(&recomputed) {
        assert_eq!(correct(a), correct(b), "{}: same seed on the CPU, same counts", a.attack_name);
    }
    let again = results(&events(&mut client, request(5, attacks)).await.unwrap());
    assert!(again.iter().all(|r| r.cached), "rewritten after recomputation");
    assert!(server.log().contains("corrupt cache entry"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bf16_precision_runs_and_stays_close_to_fp32() {
    let models = models_dir();
    let server = Server::start(models.path(), &[]);
    let mut client = server.client().await;
    let attacks = vec![spec(AttackKind::Clean), AttackSpec { eps: Some(0.1), seed: 3, ..spec(AttackKind::Pgd) }];
    let fp32 = results(&events(&mut client, request(10, attacks.clone())).await.unwrap());
    let bf16_request = EvaluateRequest { precision: Precision::Bf16 as i32, ..request(10, attacks) };
    let bf16 = results(&events(&mut client, bf16_request).await.unwrap());
    for (a, b) in fp32.iter().zip(&bf16) {
        assert_eq!(b.precision, Precision::Bf16 as i32);
        assert!(!b.cached, "bf16 results are not fp32's cache entries");
        let (x, y) = (total_correct(a), total_correct(b));
        eprintln!("{}: fp32 {x} / 100, bf16 {y} / 100", a.attack_name);
        // 100 points: bf16 gradients may find a few borderline points differently, not more.
        assert!((x - y).abs() <= 4, "{}: fp32 {x} vs bf16 {y} correct", a.attack_name);
    }
    // Correctness is judged by the fp32 weights, so clean accuracy is exactly fp32's, class by
    // class.
    assert_eq!(correct(&fp32[0]), correct(&bf16[0]), "clean accuracy under bf16 must be the fp32 model's");
}

/// A PGD job of 100 batches that takes far longer than any test should wait.
fn long_job(seed: u64) -> EvaluateRequest {
    EvaluateRequest { batch_size: 1, ..request(10, vec![AttackSpec { eps: Some(0.1), steps: Some(300), seed, ..spec(AttackKind::Pgd) }]) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_and_expired_requests_stop_and_the_next_one_is_served() {
    let models = models_dir();
    let mut server = Server::start(models.path(), &[]);
    let mut client = server.client().await;

    // Cancel: drop the stream after the first batch's progress.
    let started = Instant::now();
    let mut stream = client.evaluate(long_job(1)).await.unwrap().into_inner();
    let mut per_batch = None;
    while let Some(event) = stream.message().await.unwrap() {
        if let Some(Event::Progress(p)) = event.event {
            if p.examples_done >= 1 {
                per_batch = Some(started.elapsed());
                assert_eq!(p.examples_total, 100);
                break;
            }
        }
    }
    let per_batch = per_batch.expect("progress arrived").as_secs_f64();
    drop(stream);
    eprintln!("one batch of the long job: {per_batch:.2} s (the whole job would take about {:.0} s)", per_batch * 100.0);
    let next_started = Instant::now();
    let clean = events(&mut client, request(2, vec![spec(AttackKind::Clean)])).await.unwrap();
    let waited = next_started.elapsed().as_secs_f64();
    eprintln!("next request after cancelling: {waited:.2} s");
    assert!(matches!(clean.last(), Some(Event::Done(_))));
    assert!(waited < 3.0 * per_batch + 5.0, "served {waited} s after the cancellation");
    assert!(server.log().contains("cancelled by the client"), "the worker stopped the job");

    // Deadline: the server stops the job when the request's deadline passes.
    let mut expiring = tonic::Request::new(long_job(2));
    expiring.set_timeout(Duration::from_secs(2));
    let started = Instant::now();
    let outcome = async {
        let mut stream = client.evaluate(expiring).await?.into_inner();
        while stream.message().await?.is_some() {}
        Ok::<_, Status>(())
    }
    .await;
    let status = outcome.expect_err("the job cannot finish in 2 s");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    let next_started = Instant::now();
    let clean = events(&mut client, request(2, vec![spec(AttackKind::Clean)])).await.unwrap();
    eprintln!(
        "deadline status after {:.2} s; next request {:.2} s",
        next_started.duration_since(started).as_secs_f64(),
        next_started.elapsed().as_secs_f64()
    );
    assert!(matches!(clean.last(), Some(Event::Done(_))));
    assert!(next_started.elapsed().as_secs_f64() < 3.0 * per_batch + 5.0);
    assert!(server.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_concurrent_clients_are_queued_in_order_and_all_served() {
    let models = models_dir();
    let server = Server::start(models.path(), &[]);
    let url = server.url();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for seed in 0..8u64 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = EvaluatorClient::connect(url).await.unwrap();
            let attack = AttackSpec { eps: Some(0.1), seed, ..spec(AttackKind::Pgd) };
            events(&mut client, request(2, vec![attack])).await
        }));
    }
    let mut positions_seen = Vec::new();
    for task in tasks {
        let events = task.await.unwrap().unwrap();
        let positions: Vec<i64> = events.iter().filter_map(|e| if let Event::Queued(q) = e { Some(q.ahead) } else { None }).collect();
        assert!(positions.windows(2).all(|w| w[0] > w[1]), "positions only go down: {positions:?}");
        assert_eq!(positions.last(), Some(&0), "told when it starts: {positions:?}");
        let found = results(&events);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].classes.iter().map(|c| c.total).sum::<i64>(), 20);
        assert!(matches!(events.last(), Some(Event::Done(_))));
        positions_seen.push(positions);
    }
    eprintln!("eight clients served in {:.1} s; positions {positions_seen:?}", started.elapsed().as_secs_f64());
    let most_ahead = positions_seen.iter().flatten().max().copied().unwrap_or(0);
    assert!(most_ahead >= 2, "some client waited behind others: {positions_seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_its_status_and_the_server_stays_up() {
    let models = models_dir();
    let best = trained_run().join("best");
    // Weights that do not match the manifest's sha256.
    copy_checkpoint(&best, &models.path().join("corrupt/best"));
    let weights = models.path().join("corrupt/best/model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    std::fs::write(&weights, bytes).unwrap();
    // A manifest that claims another architecture (checksum fine): found only when loading.
    copy_checkpoint(&best, &models.path().join("mislabelled/best"));
    let manifest_path = models.path().join("mislabelled/best/manifest.json");
    let manifest = std::fs::read_to_string(&manifest_path).unwrap();
    std::fs::write(&manifest_path, manifest.replace("\"digits-cnn\"", "\"digits-cnn-wide\"")).unwrap();
    // A manifest that does not parse.
    std::fs::create_dir_all(models.path().join("unreadable/best")).unwrap();
    std::fs::write(models.path().join("unreadable/best/manifest.json"), "[]").unwrap();

    let mut server = Server::start(models.path(), &[]);
    let mut client = server.client().await;
    let pgd = |change: fn(&mut AttackSpec)| {
        let mut attack = spec(AttackKind::Pgd);
        change(&mut attack);
        request(2, vec![attack])
    };
    let with = |change: fn(&mut EvaluateRequest)| {
        let mut r = request(2, vec![spec(AttackKind::Clean)]);
        change(&mut r);
        r
    };
    let cases: Vec<(&str, EvaluateRequest, Code, &str)> = vec![
        ("unknown model", with(|r| r.model = "nope/best".into()), Code::NotFound, "nope/best"),
        ("unknown data set", with(|r| r.dataset = "mnist".into()), Code::NotFound, "mnist"),
        ("data set of another shape", with(|r| r.dataset = "cifar10".into()), Code::FailedPrecondition, "cifar10"),
        ("negative eps", pgd(|a| a.eps = Some(-0.1)), Code::InvalidArgument, "eps"),
        ("eps above 1", pgd(|a| a.eps = Some(1.5)), Code::InvalidArgument, "eps"),
        ("zero steps", pgd(|a| a.steps = Some(0)), Code::InvalidArgument, "steps"),
        ("absurd steps", pgd(|a| a.steps = Some(20_000)), Code::InvalidArgument, "steps"),
        ("zero restarts", pgd(|a| a.restarts = Some(0)), Code::InvalidArgument, "restarts"),
        ("negative step size", pgd(|a| a.step_size = Some(-1.0)), Code::InvalidArgument, "step_size"),
        ("negative batch size", with(|r| r.batch_size = -1), Code::InvalidArgument, "batch_size"),
        ("absurd batch size", with(|r| r.batch_size = 100_000), Code::InvalidArgument, "batch_size"),
        ("negative examples per class", with(|r| r.examples_per_class = -3), Code::InvalidArgument, "examples_per_class"),
        ("more examples than a class has", with(|r| r.examples_per_class = 1000), Code::InvalidArgument, "examples_per_class"),
        (
            "unknown AutoAttack component",
            with(|r| {
                r.attacks = vec![AttackSpec { components: vec!["apgd-ce".into(), "bogus".into()], ..spec(AttackKind::AutoattackCustom) }]
            }),
            Code::InvalidArgument,
            "bogus",
        ),
        ("unspecified attack", with(|r| r.attacks = vec![spec(AttackKind::Unspecified)]), Code::InvalidArgument, "unspecified"),
        ("unknown attack kind", with(|r| r.attacks = vec![AttackSpec { kind: 99, ..Default::default() }]), Code::InvalidArgument, "99"),
        ("no attacks", with(|r| r.attacks.clear()), Code::InvalidArgument, "no attacks"),
        ("unknown split", with(|r| r.split = 9), Code::InvalidArgument, "split"),
        ("unknown precision", with(|r| r.precision = 9), Code::InvalidArgument, "precision"),
        ("corrupt weights", with(|r| r.model = "corrupt/best".into()), Code::FailedPrecondition, "sha256"),
        ("mislabelled architecture", with(|r| r.model = "mislabelled/best".into()), Code::FailedPrecondition, "digits-cnn-wide"),
        ("unreadable manifest", with(|r| r.model = "unreadable/best".into()), Code::FailedPrecondition, "manifest"),
        ("empty model name", with(|r| r.model = String::new()), Code::InvalidArgument, "model"),
    ];
    for (what, request, code, word) in cases {
        let status = events(&mut client, request).await.expect_err(what);
        assert_eq!(status.code(), code, "{what}: {status:?}");
        assert!(status.message().contains(word), "{what}: the message {:?} should name {word:?}", status.message());
    }
    assert!(server.alive());
    let good = events(&mut client, request(2, vec![spec(AttackKind::Clean), spec(AttackKind::Fgsm)])).await.unwrap();
    assert_eq!(results(&good).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_token_is_required_and_health_stays_open() {
    let models = models_dir();
    let token_file = models.path().join(".token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let server = Server::start(models.path(), &["--token-file", token_file.to_str().unwrap()]);
    let mut client = server.client().await;

    let refused = client.list_models(ListModelsRequest {}).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    let refused = client.evaluate(request(1, vec![spec(AttackKind::Clean)])).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);

    fn with_token<T>(token: &str, body: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(body);
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
        request
    }
    let wrong = client.list_models(with_token("guess", ListModelsRequest {})).await.unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated);
    let listing = client.list_models(with_token("s3cret-token", ListModelsRequest {})).await.unwrap().into_inner();
    assert_eq!(listing.models.len(), 2);
    let mut stream = client.evaluate(with_token("s3cret-token", request(1, vec![spec(AttackKind::Clean)]))).await.unwrap().into_inner();
    let mut done = false;
    while let Some(event) = stream.message().await.unwrap() {
        done |= matches!(event.event, Some(Event::Done(_)));
    }
    assert!(done);

    let channel = Channel::from_shared(server.url()).unwrap().connect().await.unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    for service in ["", "rfb.v1.Evaluator"] {
        let status = health.check(tonic_health::pb::HealthCheckRequest { service: service.into() }).await.unwrap().into_inner();
        assert_eq!(status.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_names_that_escape_the_models_directory_are_refused() {
    let root = tempfile::tempdir().unwrap();
    let models = root.path().join("models");
    copy_checkpoint(&trained_run().join("best"), &models.join("natural-s0/best"));
    // A real checkpoint outside the models directory, reachable by `..` and by a link.
    copy_checkpoint(&trained_run().join("best"), &root.path().join("secret/best"));
    std::os::unix::fs::symlink(root.path().join("secret"), models.join("linked")).unwrap();
    // A link that stays inside is fine.
    std::os::unix::fs::symlink(models.join("natural-s0"), models.join("alias")).unwrap();
    let server = Server::start(&models, &[]);
    let mut client = server.client().await;

    let outside = root.path().join("secret/best").display().to_string();
    for name in ["../secret/best", "natural-s0/../../secret/best", outside.as_str(), "linked/best"] {
        let status = client.describe_model(DescribeModelRequest { model: name.into() }).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{name}: {status:?}");
        let mut evaluate = request(1, vec![spec(AttackKind::Clean)]);
        evaluate.model = name.into();
        let status = events(&mut client, evaluate).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{name}: {status:?}");
        assert!(!status.message().contains(models.to_str().unwrap()), "no server paths in {:?}", status.message());
    }
    let listing = client.list_models(ListModelsRequest {}).await.unwrap().into_inner();
    let names: Vec<&str> = listing.models.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["alias/best", "natural-s0/best"]);
    assert!(listing.problems.iter().any(|p| p.starts_with("linked") && p.contains("outside")), "{:?}", listing.problems);
    let alias = client.describe_model(DescribeModelRequest { model: "alias/best".into() }).await.unwrap().into_inner();
    assert_eq!(alias.architecture, "digits-cnn");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_self_signed_certificate() {
    let models = models_dir();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let certificate = certified.cert.pem();
    let cert_file = models.path().join(".cert.pem");
    let key_file = models.path().join(".key.pem");
    std::fs::write(&cert_file, &certificate).unwrap();
    std::fs::write(&key_file, certified.signing_key.serialize_pem()).unwrap();
    let server = Server::start(models.path(), &["--tls-cert", cert_file.to_str().unwrap(), "--tls-key", key_file.to_str().unwrap()]);
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&certificate))
        .domain_name("localhost");
    let channel = Channel::from_shared(format!("https://{}", server.address)).unwrap().tls_config(tls).unwrap().connect().await.unwrap();
    let mut client = EvaluatorClient::new(channel);
    let listing = client.list_models(ListModelsRequest {}).await.unwrap().into_inner();
    assert_eq!(listing.models.len(), 2);

    // Plain text to the TLS port fails.
    let mut plain = server.client().await;
    assert!(plain.list_models(ListModelsRequest {}).await.is_err());
}

#[test]
fn eval_writes_plain_progress_lines_when_stderr_is_a_log() {
    let models = models_dir();
    let output = Command::new(env!("CARGO_BIN_EXE_evaluator"))
        .args(["eval", "--device", "cpu", "--model", MODEL, "--per-class", "4"])
        .args(["--attacks", "clean,pgd", "--eps", "8/255", "--models-dir"])
        .arg(models.path())
        .env_remove("RFB_PROGRESS")
        .env("RFB_PROGRESS_SECONDS", "0.05")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    // Each attack's result, and the task's last line: what, how many, the last step, how long.
    assert!(stderr.lines().any(|l| l.starts_with("Clean: ") && l.ends_with("% average")), "{stderr}");
    assert!(stderr.lines().any(|l| l.starts_with("PGD-20: ") && l.ends_with("% average")), "{stderr}");
    let done =
        stderr.lines().find(|l| l.starts_with(&format!("eval {MODEL}: done, 40 examples, PGD-20"))).unwrap_or_else(|| panic!("{stderr}"));
    assert!(done.contains("attack 2 of 2, in "), "{done}");
    assert!(!stderr.contains('\r') && !stderr.contains('\x1b'), "no bar redrawing in a log: {stderr:?}");

    // --quiet: nothing but the table on stdout.
    let quiet = Command::new(env!("CARGO_BIN_EXE_evaluator"))
        .args(["eval", "--device", "cpu", "--quiet", "--model", MODEL, "--per-class", "4"])
        .args(["--attacks", "clean", "--models-dir"])
        .arg(models.path())
        .output()
        .unwrap();
    assert!(quiet.status.success());
    assert!(!String::from_utf8_lossy(&quiet.stderr).contains("eval "), "{}", String::from_utf8_lossy(&quiet.stderr));
}

#[test]
fn eval_prints_the_per_class_table() {
    let models = models_dir();
    let output = Command::new(env!("CARGO_BIN_EXE_evaluator"))
        .args(["eval", "--device", "cpu", "--quiet", "--model", MODEL, "--per-class", "4"])
        .args(["--attacks", "clean,fgsm,pgd", "--eps", "8/255", "--models-dir"])
        .arg(models.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let header = stdout.lines().find(|l| l.starts_with("class")).expect(&stdout);
    for column in ["Clean", "FGSM", "PGD-20"] {
        assert!(header.contains(column), "{header}");
    }
    for row in ["0 ", "9 ", "Avg", "Worst ", "Worst-10%", "NSD"] {
        assert!(stdout.lines().any(|l| l.starts_with(row)), "no row {row:?} in\n{stdout}");
    }
    // The same engine as the server: the second run comes from the cache.
    let again = Command::new(env!("CARGO_BIN_EXE_evaluator"))
        .args(["eval", "--device", "cpu", "--quiet", "--model", MODEL, "--per-class", "4"])
        .args(["--attacks", "clean,fgsm,pgd", "--eps", "8/255", "--models-dir"])
        .arg(models.path())
        .output()
        .unwrap();
    let again = String::from_utf8_lossy(&again.stdout);
    assert!(again.contains("PGD-20*") && again.contains("from the cache"), "{again}");
    let rows = |text: &str| text.lines().filter(|l| l.starts_with(|c: char| c.is_ascii_digit())).map(str::to_string).collect::<Vec<_>>();
    assert_eq!(rows(&stdout), rows(&again));

    let bad = Command::new(env!("CARGO_BIN_EXE_evaluator"))
        .args(["eval", "--device", "cpu", "--model", "../x", "--models-dir"])
        .arg(models.path())
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains(".."));
}

#[test]
fn python_client_generates_stubs_lists_evaluates_and_discovers_by_reflection() {
    let models = models_dir();
    let server = Server::start(models.path(), &[]);
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let python = python();
    assert!(python.exists(), "no Python at {} (run scripts/setup-env.sh or set RFB_PYTHON)", python.display());
    let output = Command::new(&python)
        .arg(workspace.join("tests/python/evaluator_client.py"))
        .args(["--address", &server.address, "--model", MODEL, "--proto-dir"])
        .arg(workspace.join("proto/proto"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let summary: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(summary["models"], serde_json::json!(["natural-s0/best", "natural-s0/last"]));
    assert_eq!(summary["attacks"], serde_json::json!(["Clean", "FGSM"]));
    assert_eq!(summary["examples"], serde_json::json!([20, 20]));
    assert!(summary["reflection_services"].as_array().unwrap().contains(&serde_json::json!("rfb.v1.Evaluator")));
    assert_eq!(
        summary["reflection_methods"],
        serde_json::json!(["ListModels", "DescribeModel", "Evaluate", "UploadModel", "DeleteModel", "ServerInfo"])
    );
    assert_eq!(summary["dynamic_models"], summary["models"]);
    assert_eq!(summary["health"], "SERVING");
}
