//! Issue 26, every file and request treated as hostile, through the product (the `evaluator`
//! binary serving on loopback, `evaluator eval` and `evaluator import`):
//!
//! * a checkpoint imported again under the same name with another `--mean/--std` while a
//!   server runs is served as the new model, not from the server's memory nor from the cache
//!   entries of the old one;
//! * processes writing the same cache key at once (two `evaluator eval`, each PID 1 in its own
//!   PID namespace as replicas in containers are, and a stress of writer processes) leave one
//!   valid entry and no temporary file;
//! * the cache key tells fp32-fast results at different batch sizes apart (not fp32 ones), and
//!   results on different contents of "the same" split;
//! * errors about missing or broken models and data reach clients without server paths (the
//!   server's log keeps them);
//! * the container image does not serve unauthenticated by default.

mod common;
use common::python;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::{copy_checkpoint, events, results, spec, trained_run, Server};
use rfb_evaluator::cache::{cache_key, Lookup, ResultCache, StoredResult};
use rfb_proto::v1::{AttackKind, AttackResult, AttackSpec, DescribeModelRequest, EvaluateRequest, ListModelsRequest};
use tonic::Code;

/// `evaluator ARGS` as a user runs it.
fn evaluator(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_evaluator"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .env_remove("RUST_LOG")
        .output()
        .expect("start the evaluator")
}

fn succeeded(output: &Output, what: &str) -> String {
    assert!(
        output.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn path(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

fn counts(result: &AttackResult) -> Vec<i64> {
    result.classes.iter().map(|c| c.correct).collect()
}

// ------------------------------------------------------------------------------------------
// (a) Re-import while serving

/// The trained digits-cnn's weights as the PyTorch state dict a user would import.
fn trained_state_dict(out: &Path) {
    let weights = trained_run().join("best/model.safetensors");
    let script = "import sys, torch\nfrom safetensors.torch import load_file\ntorch.save(load_file(sys.argv[1]), sys.argv[2])\n";
    let output = Command::new(python()).args(["-c", script]).arg(&weights).arg(out).output().expect("start python");
    assert!(output.status.success(), "writing the state dict failed: {}", String::from_utf8_lossy(&output.stderr));
}

fn import(from: &Path, out: &Path, extra: &[&str]) {
    let mut args = vec!["import", "--from", path(from), "--out", path(out), "--dataset", "digits", "--arch", "digits-cnn"];
    args.extend_from_slice(extra);
    succeeded(&evaluator(&args), &format!("import {extra:?}"));
}

fn imported_request() -> EvaluateRequest {
    EvaluateRequest {
        model: "mine".into(),
        examples_per_class: 10,
        attacks: vec![spec(AttackKind::Clean), AttackSpec { eps: Some(0.1), ..spec(AttackKind::Fgsm) }],
        ..Default::default()
    }
}

/// Finding 1: the engine kept loaded models keyed on (directory, weights sha256), so the same
/// weights imported again with another normalisation were served as the old model by a running
/// server, and its results stored under the new model's cache key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_imported_again_under_its_name_is_served_as_the_new_model() {
    let work = tempfile::tempdir().unwrap();
    let state_dict = work.path().join("weights.pt");
    trained_state_dict(&state_dict);
    let models = work.path().join("models");
    let mine = models.join("mine");
    import(&state_dict, &mine, &[]);

    let server = Server::start(&models, &[]);
    let mut client = server.client().await;
    let first = results(&events(&mut client, imported_request()).await.unwrap());
    assert!(first.iter().all(|r| !r.cached));

    // The same weights, imported again under the same name with a normalisation.
    let normalised = ["--mean", "0.6", "--std", "0.15", "--force"];
    import(&state_dict, &mine, &normalised);
    let second = results(&events(&mut client, imported_request()).await.unwrap());
    assert_eq!(second[0].weights_sha256, first[0].weights_sha256, "the same weights file");
    assert!(second.iter().all(|r| !r.cached), "the new model's first results are computed, not the old model's from the cache");
    assert_ne!(
        counts(&second[0]),
        counts(&first[0]),
        "the normalisation changes the clean predictions (else this test could not see the bug)"
    );

    // Equal to a fresh server's results for the new import (its own cache).
    let fresh_cache = work.path().join("fresh-cache");
    let fresh = Server::start_logging_to(&models, &["--cache-dir", path(&fresh_cache)], &work.path().join("fresh.log"), &[]);
    let mut fresh_client = fresh.client().await;
    let reference = results(&events(&mut fresh_client, imported_request()).await.unwrap());
    assert!(reference.iter().all(|r| !r.cached));
    for (served, expected) in second.iter().zip(&reference) {
        assert_eq!(counts(served), counts(expected), "{}", served.attack_name);
    }

    // Asked again: from the cache, the new model's counts. Imported back without the
    // normalisation: the first model again, its results from the cache.
    let again = results(&events(&mut client, imported_request()).await.unwrap());
    assert!(again.iter().all(|r| r.cached));
    assert_eq!(again.iter().map(counts).collect::<Vec<_>>(), second.iter().map(counts).collect::<Vec<_>>());
    import(&state_dict, &mine, &["--force"]);
    let back = results(&events(&mut client, imported_request()).await.unwrap());
    assert!(back.iter().all(|r| r.cached), "the same function as the first import: its entries");
    assert_eq!(back.iter().map(counts).collect::<Vec<_>>(), first.iter().map(counts).collect::<Vec<_>>());
}

// ------------------------------------------------------------------------------------------
// (b) Processes writing one cache key at once

/// How to run a command as PID 1 of a new PID namespace (as every replica in a container
/// is), if this machine allows it.
fn as_pid_1() -> Option<Vec<&'static str>> {
    for prefix in [vec!["unshare", "--pid", "--fork"], vec!["unshare", "--user", "--map-root-user", "--pid", "--fork"]] {
        let probe = Command::new(prefix[0]).args(&prefix[1..]).args(["sh", "-c", "test $$ -eq 1"]).stderr(Stdio::null()).status();
        if probe.is_ok_and(|s| s.success()) {
            return Some(prefix);
        }
    }
    eprintln!("note: no PID namespaces here; the writers run with their own process ids");
    None
}

fn command_maybe_as_pid_1(pid_1: &Option<Vec<&'static str>>, program: &Path) -> Command {
    match pid_1 {
        Some(prefix) => {
            let mut command = Command::new(prefix[0]);
            command.args(&prefix[1..]).arg(program);
            command
        }
        None => Command::new(program),
    }
}

/// Files of a cache directory that are not entries (`<64 hex>.json`).
fn stray_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| !(name.len() == 69 && name.ends_with(".json") && name[..64].bytes().all(|b| b.is_ascii_hexdigit())))
        .collect()
}

/// Finding 1 (temporary files): two `evaluator eval` with the same request and the same
/// shared `--cache-dir` at once, each PID 1 in its own namespace: both succeed with the same
/// counts, each entry is one valid result (a third run is answered from the cache with those
/// counts), and no temporary file is left.
#[test]
fn two_evaluations_writing_the_same_entries_at_once_leave_valid_entries() {
    let models = common::models_dir();
    let cache = models.path().join("shared-cache");
    let pid_1 = as_pid_1();
    let json = |k: usize| models.path().join(format!("run-{k}.json"));
    let run = |k: usize| {
        command_maybe_as_pid_1(&pid_1, Path::new(env!("CARGO_BIN_EXE_evaluator")))
            .args(["eval", "--device", "cpu", "--quiet", "--model", common::MODEL, "--per-class", "5"])
            .args(["--attacks", "clean,fgsm,pgd-3,cw-3", "--eps", "0.1", "--models-dir", path(models.path())])
            .args(["--cache-dir", path(&cache), "--json", path(&json(k))])
            .env("OMP_NUM_THREADS", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (run(0), run(1));
    for (k, child) in [a, b].into_iter().enumerate() {
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "writer {k}: {}", String::from_utf8_lossy(&output.stderr));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!stderr.contains("could not write a cache entry"), "writer {k}: {stderr}");
    }
    let document = |k: usize| -> serde_json::Value { serde_json::from_slice(&std::fs::read(json(k)).unwrap()).unwrap() };
    let classes = |doc: &serde_json::Value| -> Vec<Vec<i64>> {
        doc["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["classes"].as_array().unwrap().iter().map(|c| c["correct"].as_i64().unwrap()).collect())
            .collect()
    };
    let (first, second) = (document(0), document(1));
    assert_eq!(classes(&first), classes(&second));
    assert_eq!(stray_files(&cache), Vec::<String>::new(), "no temporary file is left");
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 4, "one entry per attack");

    let third = json(2);
    succeeded(
        &evaluator(&[
            "eval",
            "--device",
            "cpu",
            "--quiet",
            "--model",
            common::MODEL,
            "--per-class",
            "5",
            "--attacks",
            "clean,fgsm,pgd-3,cw-3",
            "--eps",
            "0.1",
            "--models-dir",
            path(models.path()),
            "--cache-dir",
            path(&cache),
            "--json",
            path(&third),
        ]),
        "the third run",
    );
    let third = document(2);
    assert!(third["results"].as_array().unwrap().iter().all(|r| r["cached"] == true), "{third}");
    assert_eq!(classes(&third), classes(&first));
}

const WRITER_DIR: &str = "RFB_TEST_CACHE_WRITER_DIR";
const WRITER_SYNC: &str = "RFB_TEST_CACHE_WRITER_SYNC";
const WRITER_ROUNDS: usize = 400;

fn writer_result(writer: usize, round: usize) -> StoredResult {
    StoredResult {
        attack_name: "PGD-20".into(),
        class_names: vec!["a".into(), "b".into()],
        correct: vec![writer as i64, round as i64],
        total: vec![1000, 1000],
        confusion: vec![vec![writer as i64, 1000 - writer as i64], vec![1000 - round as i64, round as i64]],
        sanity: None,
        components: Vec::new(),
        device: "cpu".into(),
        elapsed_seconds: 0.0,
        evaluator_version: "test".into(),
        // Entries of different lengths, so that a torn write shows.
        created_at: "x".repeat(1 + (writer * 997 + round * 131) % 6000),
    }
}

fn writer_material() -> serde_json::Value {
    serde_json::json!({"attack": "pgd", "shared": true})
}

/// Not a test of its own: the body of the writer processes of
/// [`writer_processes_sharing_a_cache_leave_one_valid_entry`] (it does nothing unless that
/// test started it).
#[test]
fn helper_cache_writer_process() {
    let Some(dir) = std::env::var_os(WRITER_DIR) else { return };
    let writer: usize = std::env::var("RFB_TEST_CACHE_WRITER").unwrap().parse().unwrap();
    let cache = ResultCache::open(Path::new(&dir)).unwrap();
    let material = writer_material();
    let key = cache_key(&material);
    // All writers start together (each says it is ready, then waits for the go).
    let sync = PathBuf::from(std::env::var_os(WRITER_SYNC).unwrap());
    std::fs::write(sync.join(format!("ready-{writer}")), "").unwrap();
    let waiting = std::time::Instant::now();
    while !sync.join("go").exists() {
        assert!(waiting.elapsed() < std::time::Duration::from_secs(120), "no go");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    for round in 0..WRITER_ROUNDS {
        cache.store(&key, &material, &writer_result(writer, round)).unwrap();
        match cache.load(&key, &material) {
            Lookup::Hit(found) => {
                let (w, r) = (found.correct[0] as usize, found.correct[1] as usize);
                assert_eq!(found, writer_result(w, r), "a whole entry of one writer and round");
            }
            other => panic!("writer {writer} round {round}: {other:?}"),
        }
    }
}

/// Finding 1 (temporary files), under stress: four processes, each PID 1 in its own PID
/// namespace where the machine allows, start together and store and read back one cache key
/// 400 times each in one directory. Every store succeeds, every read is a whole entry of one
/// writer, the final entry is valid, and nothing else is left in the directory. With temporary
/// names made from the process id and a counter, these writers shared their temporary files
/// (a rename then found its file gone, or a reader a torn entry).
#[test]
fn writer_processes_sharing_a_cache_leave_one_valid_entry() {
    let dir = tempfile::tempdir().unwrap();
    let sync = tempfile::tempdir().unwrap();
    let pid_1 = as_pid_1();
    let me = std::env::current_exe().unwrap();
    let writers = 4;
    let children: Vec<_> = (0..writers)
        .map(|writer| {
            command_maybe_as_pid_1(&pid_1, &me)
                .args(["helper_cache_writer_process", "--exact", "--nocapture", "--test-threads", "1"])
                .env(WRITER_DIR, dir.path())
                .env(WRITER_SYNC, sync.path())
                .env("RFB_TEST_CACHE_WRITER", writer.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let waiting = std::time::Instant::now();
    while (0..writers).any(|w| !sync.path().join(format!("ready-{w}")).exists()) && waiting.elapsed() < std::time::Duration::from_secs(120)
    {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    std::fs::write(sync.path().join("go"), "").unwrap();
    for (writer, child) in children.into_iter().enumerate() {
        let output = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "writer {writer}:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
        assert!(stdout.contains("1 passed"), "the writer ran: {stdout}");
    }
    let cache = ResultCache::open(dir.path()).unwrap();
    let material = writer_material();
    let key = cache_key(&material);
    match cache.load(&key, &material) {
        Lookup::Hit(found) => {
            assert_eq!(found.correct[1] as usize, WRITER_ROUNDS - 1, "the last round of some writer");
            assert_eq!(found, writer_result(found.correct[0] as usize, WRITER_ROUNDS - 1));
        }
        other => panic!("{other:?}"),
    }
    let names: Vec<String> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names, [format!("{key}.json")], "one entry and no temporary file");
}

// ------------------------------------------------------------------------------------------
// (f) What the cache key sees

/// `evaluator eval` of the trained digits model with a given batch size and precision (and
/// data, for CIFAR), its `--json` results.
fn eval_json(args: &[&str], out: &Path) -> Vec<serde_json::Value> {
    let mut all = vec!["eval", "--device", "cpu", "--quiet", "--json", path(out)];
    all.extend_from_slice(args);
    succeeded(&evaluator(&all), &format!("eval {args:?}"));
    let document: serde_json::Value = serde_json::from_slice(&std::fs::read(out).unwrap()).unwrap();
    document["results"].as_array().unwrap().clone()
}

fn all_cached(results: &[serde_json::Value]) -> bool {
    results.iter().all(|r| r["cached"] == true)
}

fn none_cached(results: &[serde_json::Value]) -> bool {
    results.iter().all(|r| r["cached"] == false)
}

/// Finding 1 (cache key): fp32-fast results depend on the batch size (the folded copy rounds
/// per batch), so another batch size is computed, not served from the cache; fp32 results do
/// not, so they are.
#[test]
fn fp32_fast_results_are_cached_per_batch_size_and_fp32_results_are_not() {
    let models = common::models_dir();
    let out = models.path().join("out.json");
    let run = |precision: &str, batch: &str| {
        eval_json(
            &[
                "--model",
                common::MODEL,
                "--per-class",
                "4",
                "--attacks",
                "clean,fgsm,pgd-3",
                "--eps",
                "0.1",
                "--precision",
                precision,
                "--batch-size",
                batch,
                "--models-dir",
                path(models.path()),
            ],
            &out,
        )
    };
    assert!(none_cached(&run("fp32-fast", "7")));
    assert!(none_cached(&run("fp32-fast", "13")), "another batch size at fp32-fast is computed");
    assert!(all_cached(&run("fp32-fast", "13")));
    assert!(all_cached(&run("fp32-fast", "7")));
    let fp32 = run("fp32", "7");
    assert!(none_cached(&fp32));
    let other_batch = run("fp32", "13");
    assert!(all_cached(&other_batch), "fp32 results do not depend on the batch size");
    let correct = |results: &[serde_json::Value]| -> Vec<serde_json::Value> { results.iter().map(|r| r["classes"].clone()).collect() };
    assert_eq!(correct(&fp32), correct(&other_batch));
}

/// Finding 1 (cache key): two data directories whose test splits differ in one pixel are two
/// splits: the second is computed, not served the first one's results; the first is still
/// answered from the cache.
#[test]
fn another_copy_of_a_split_with_other_contents_gets_other_cache_entries() {
    let root = tempfile::tempdir().unwrap();
    let (models, data) = common::cifar_fixture(root.path(), 10);
    let changed = root.path().join("changed-data/cifar-10-batches-bin");
    std::fs::create_dir_all(&changed).unwrap();
    for entry in std::fs::read_dir(data.join("cifar-10-batches-bin")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), changed.join(entry.file_name())).unwrap();
    }
    let test_batch = changed.join("test_batch.bin");
    let mut bytes = std::fs::read(&test_batch).unwrap();
    bytes[1 + 100] ^= 0x80; // one pixel of the first test image
    std::fs::write(&test_batch, bytes).unwrap();
    let cache = root.path().join("cache");
    let out = root.path().join("out.json");
    let run = |data_dir: &Path| {
        eval_json(
            &[
                "--model",
                "cifar/best",
                "--per-class",
                "2",
                "--attacks",
                "clean,fgsm",
                "--eps",
                "0.05",
                "--models-dir",
                path(&models),
                "--data-dir",
                path(data_dir),
                "--cache-dir",
                path(&cache),
            ],
            &out,
        )
    };
    assert!(none_cached(&run(&data)));
    assert!(all_cached(&run(&data)), "the same contents: the same entries");
    assert!(none_cached(&run(&root.path().join("changed-data"))), "other contents under the same data set name are computed");
    assert!(all_cached(&run(&data)));
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 4);
}

// ------------------------------------------------------------------------------------------
// (e) No server paths in what clients are told

/// Absolute paths in `text`: a `/` at the start or after a space, quote or bracket, followed
/// by a name.
fn absolute_paths(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        let boundary = i == 0 || matches!(chars[i - 1], ' ' | '"' | '\'' | '(' | '[' | '=' | ',' | ':' | '`' | '\n');
        if c == '/' && boundary && chars.get(i + 1).is_some_and(|n| n.is_alphanumeric() || matches!(n, '.' | '_' | '-')) {
            found.push(chars[i..].iter().take_while(|c| !c.is_whitespace()).collect());
        }
    }
    found
}

/// Finding 2: errors about missing or broken models and data named the server's files by
/// their absolute paths (the models directory, the data directory). Clients now get the
/// model's name and paths relative to the models directory; the log keeps the full paths.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_about_broken_models_and_data_name_no_server_path() {
    let root = tempfile::tempdir().unwrap();
    let (models, _) = common::cifar_fixture(root.path(), 10);
    let best = trained_run().join("best");
    // A manifest that does not parse (found when preparing, by describe and by the listing).
    std::fs::create_dir_all(models.join("broken/best")).unwrap();
    std::fs::write(models.join("broken/best/manifest.json"), "{ not json").unwrap();
    // A manifest that claims another architecture (found by the worker when loading).
    copy_checkpoint(&best, &models.join("mislabelled/best"));
    let manifest_path = models.join("mislabelled/best/manifest.json");
    let manifest = std::fs::read_to_string(&manifest_path).unwrap();
    std::fs::write(&manifest_path, manifest.replace("\"digits-cnn\"", "\"digits-cnn-wide\"")).unwrap();
    // A distilled model whose manifest records its teacher by an absolute path (as the trainer
    // does): descriptions show the manifest without it.
    copy_checkpoint(&best, &models.join("distilled/best"));
    let manifest_path = models.join("distilled/best/manifest.json");
    let mut manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    manifest["hyperparameters"]["teacher"] = serde_json::json!("/home/alice/secret-project/teacher-s0/best");
    std::fs::write(&manifest_path, serde_json::to_vec_pretty(&manifest).unwrap()).unwrap();
    // Weights gone.
    copy_checkpoint(&best, &models.join("gone/best"));
    std::fs::remove_file(models.join("gone/best/model.safetensors")).unwrap();
    // A data directory without the CIFAR files.
    let empty_data = root.path().join("no-cifar-here");
    std::fs::create_dir_all(&empty_data).unwrap();

    let server = Server::start(&models, &["--data-dir", path(&empty_data)]);
    let mut client = server.client().await;
    let request = |model: &str| EvaluateRequest {
        model: model.into(),
        examples_per_class: 2,
        attacks: vec![spec(AttackKind::Clean)],
        ..Default::default()
    };
    let server_dirs = [root.path().to_str().unwrap().to_string(), models.canonicalize().unwrap().display().to_string()];
    let check = |what: &str, message: &str| {
        for dir in &server_dirs {
            assert!(!message.contains(dir.as_str()), "{what}: {message:?} names the server directory {dir}");
        }
        assert!(absolute_paths(message).is_empty(), "{what}: {message:?} holds absolute paths {:?}", absolute_paths(message));
    };
    let cases = [
        ("broken/best", Code::FailedPrecondition, "broken/best/manifest.json"),
        ("mislabelled/best", Code::FailedPrecondition, "mislabelled/best/model.safetensors"),
        ("gone/best", Code::FailedPrecondition, "model.safetensors"),
        ("cifar/best", Code::NotFound, "<data-dir>/test_batch.bin"),
        ("nope/best", Code::NotFound, "nope/best"),
    ];
    for (model, code, names) in cases {
        let status = events(&mut client, request(model)).await.expect_err(model);
        assert_eq!(status.code(), code, "{model}: {status:?}");
        assert!(status.message().contains(names), "{model}: {:?} should name {names:?}", status.message());
        check(model, status.message());
    }
    let described = client.describe_model(DescribeModelRequest { model: "broken/best".into() }).await.unwrap_err();
    assert_eq!(described.code(), Code::FailedPrecondition);
    check("describe", described.message());
    let listing = client.list_models(ListModelsRequest {}).await.unwrap().into_inner();
    assert!(listing.problems.iter().any(|p| p.starts_with("broken/best")), "{:?}", listing.problems);
    for problem in &listing.problems {
        check("listing", problem);
    }
    let distilled = client.describe_model(DescribeModelRequest { model: "distilled/best".into() }).await.unwrap().into_inner();
    let shown: serde_json::Value = serde_json::from_str(&distilled.manifest_json).expect("the redacted manifest is JSON");
    assert!(shown["hyperparameters"]["teacher"].is_string(), "{shown}");
    for (what, manifest) in std::iter::once(("describe distilled", &distilled.manifest_json))
        .chain(listing.models.iter().map(|m| ("listed manifest", &m.manifest_json)))
    {
        assert!(!manifest.contains("secret-project"), "{what}: {manifest}");
        check(what, manifest);
    }
    // The server's log keeps the full paths for its operator.
    let log = server.log();
    let full = models.canonicalize().unwrap().join("broken/best/manifest.json");
    assert!(log.contains(full.to_str().unwrap()), "the log names {}:\n{log}", full.display());
    assert!(log.contains(empty_data.to_str().unwrap()), "the log names the data directory:\n{log}");
}

/// Field checks on every RPC: DescribeModel's name too, before any file is touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_model_checks_its_field() {
    let models = common::models_dir();
    let server = Server::start(models.path(), &[]);
    let mut client = server.client().await;
    for (name, word) in [("m".repeat(5000), "model:"), ("natural-s0/\u{0}best".to_string(), "model:"), (String::new(), "model")] {
        let status = client.describe_model(DescribeModelRequest { model: name.clone() }).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(word) && status.message().len() < 300, "{:?}", status.message());
    }
    let status = events(&mut client, EvaluateRequest { model: "a\nb".into(), ..common::request(1, vec![spec(AttackKind::Clean)]) })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("model:"), "{:?}", status.message());
}

// ------------------------------------------------------------------------------------------
// Secure by default

/// The container's command line, from `deploy/Dockerfile`: ENTRYPOINT then CMD.
fn dockerfile_command() -> (Vec<String>, Vec<String>) {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/Dockerfile")).unwrap();
    let json_of = |directive: &str| -> Vec<String> {
        let line = text.lines().find(|l| l.starts_with(directive)).unwrap_or("");
        let list = line.strip_prefix(directive).unwrap_or("[]").trim();
        serde_json::from_str(list).unwrap_or_else(|e| panic!("{directive} {list}: {e}"))
    };
    (json_of("ENTRYPOINT "), json_of("CMD "))
}

/// Finding 2: the image served with `--insecure` on all interfaces by default. Run as the
/// image runs it without arguments, the evaluator now refuses to start and names both ways
/// out; with `--insecure` given, it starts.
#[test]
fn the_container_refuses_to_serve_without_a_choice_of_authentication() {
    let (entrypoint, cmd) = dockerfile_command();
    assert_eq!(&entrypoint[..2], ["evaluator", "serve"]);
    assert!(cmd.is_empty(), "no default arguments, so none that turn authentication off: {cmd:?}");
    let models = common::models_dir();
    let cache = models.path().join("cache");
    // The image's arguments, with this machine's directories and a free port.
    let args: Vec<String> = entrypoint[1..]
        .iter()
        .map(|a| match a.as_str() {
            "/models" => path(models.path()).to_string(),
            "/cache" => path(&cache).to_string(),
            other if other.starts_with("0.0.0.0:") => "0.0.0.0:0".to_string(),
            other => other.to_string(),
        })
        .chain(cmd)
        .collect();
    assert!(args.iter().any(|a| a == "0.0.0.0:0"), "the image listens on all interfaces: {args:?}");
    let output = Command::new(env!("CARGO_BIN_EXE_evaluator")).args(&args).args(["--device", "cpu"]).stdin(Stdio::null()).output().unwrap();
    assert!(!output.status.success(), "it must not serve");
    assert!(output.stdout.is_empty(), "it never listened");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--token-file") && stderr.contains("--insecure"), "{stderr}");

    // The operator's explicit choice starts it.
    let mut child = Command::new(env!("CARGO_BIN_EXE_evaluator"))
        .args(&args)
        .args(["--device", "cpu", "--insecure"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.starts_with("0.0.0.0:"), "{line:?}");

    // The Kubernetes example passes a token file.
    let k8s = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/evaluator-k8s.yaml")).unwrap();
    let args_line = k8s.lines().find(|l| l.trim_start().starts_with("args:")).unwrap();
    assert!(args_line.contains("--token-file") && !args_line.contains("--insecure"), "{args_line}");
}
