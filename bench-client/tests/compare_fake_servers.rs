//! `compare` against in-process evaluators that speak the real rfb.v1 contract: the work is
//! shared between servers with one evaluation in flight on each, every per-class count lands in
//! results.json, a failed evaluation is reported while the rest goes on, and bearer tokens are
//! sent. The binary is driven the way a researcher would run it. Adversarial confusions are
//! kept (and added up over shards); a server answering a malformed one is refused clearly.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rfb_bench_client::attacks::{parse_attacks, Common};
use rfb_bench_client::client::{compare, CompareConfig};
use rfb_bench_client::results::{Results, Settings};
use rfb_bench_client::selection::parse_models;
use rfb_proto::v1::evaluate_event::Event;
use rfb_proto::v1::evaluator_server::{Evaluator, EvaluatorServer};
use rfb_proto::v1::{
    AttackResult, ClassResult, DescribeModelRequest, Done, EvaluateEvent, EvaluateRequest, ListModelsRequest, ListModelsResponse,
    ModelInfo, Progress, QueuePosition, Versions,
};
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

const CLASSES: [&str; 3] = ["zero", "one", "two"];
const TOTAL: i64 = 20;

/// The fake's answer: correct count for a model, attack index and class.
fn correct_for(model: &str, attack: usize, class: usize) -> i64 {
    let h = model.bytes().fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
    ((h as usize + 3 * attack + 5 * class) % (TOTAL as usize + 1)) as i64
}

/// The adversarial confusion row the fake sends for a class: its correct points on the
/// diagonal, the rest predicted as the next class.
fn confusion_row(correct: i64, class: usize) -> Vec<i64> {
    let mut row = vec![0; CLASSES.len()];
    row[class] = correct;
    row[(class + 1) % CLASSES.len()] += TOTAL - correct;
    row
}

/// How the fake answers the confusions: as it should, not at all (a server older than them), or
/// malformed in one way (in class 0's row).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Confusions {
    Right,
    Absent,
    ShortRow,
    RowSumWrong,
    DiagonalWrong,
    Negative,
}

fn confusion_rows(kind: Confusions, correct: &[i64]) -> Vec<Vec<i64>> {
    let mut rows: Vec<Vec<i64>> = correct.iter().enumerate().map(|(k, &c)| confusion_row(c, k)).collect();
    match kind {
        Confusions::Right => {}
        Confusions::Absent => rows.iter_mut().for_each(Vec::clear),
        Confusions::ShortRow => {
            rows[0].pop();
        }
        Confusions::RowSumWrong => rows[0][2] += 1,
        Confusions::DiagonalWrong => {
            let d = if rows[0][0] > 0 { -1 } else { 1 };
            rows[0][0] += d;
            rows[0][1] -= d;
        }
        Confusions::Negative => rows[0] = vec![correct[0], TOTAL - correct[0] + 1, -1],
    }
    rows
}

#[derive(Default)]
struct Stats {
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    served: Mutex<Vec<String>>,
}

struct Fake {
    name: String,
    models: Vec<ModelInfo>,
    token: Option<String>,
    fail: Option<String>,
    confusions: Confusions,
    stats: Arc<Stats>,
}

impl Fake {
    fn check(&self, metadata: &tonic::metadata::MetadataMap) -> Result<(), Status> {
        match &self.token {
            None => Ok(()),
            Some(t) => {
                let got = metadata.get("authorization").and_then(|v| v.to_str().ok());
                if got == Some(format!("Bearer {t}").as_str()) {
                    Ok(())
                } else {
                    Err(Status::unauthenticated("missing or wrong bearer token"))
                }
            }
        }
    }
}

#[tonic::async_trait]
impl Evaluator for Fake {
    async fn list_models(&self, request: Request<ListModelsRequest>) -> Result<Response<ListModelsResponse>, Status> {
        self.check(request.metadata())?;
        Ok(Response::new(ListModelsResponse { models: self.models.clone(), problems: vec!["broken-s9/best: no manifest.json".into()] }))
    }

    async fn describe_model(&self, request: Request<DescribeModelRequest>) -> Result<Response<ModelInfo>, Status> {
        self.check(request.metadata())?;
        let name = request.into_inner().model;
        self.models.iter().find(|m| m.name == name).cloned().map(Response::new).ok_or_else(|| Status::not_found(name))
    }

    type EvaluateStream = ReceiverStream<Result<EvaluateEvent, Status>>;

    async fn upload_model(
        &self,
        _request: Request<tonic::Streaming<rfb_proto::v1::UploadModelRequest>>,
    ) -> Result<Response<ModelInfo>, Status> {
        Err(Status::unimplemented("the fake server takes no uploads"))
    }

    async fn delete_model(
        &self,
        _request: Request<rfb_proto::v1::DeleteModelRequest>,
    ) -> Result<Response<rfb_proto::v1::DeleteModelResponse>, Status> {
        Err(Status::unimplemented("the fake server takes no uploads"))
    }

    async fn server_info(
        &self,
        _request: Request<rfb_proto::v1::ServerInfoRequest>,
    ) -> Result<Response<rfb_proto::v1::ServerInfoResponse>, Status> {
        Err(Status::unimplemented("the fake server has no info"))
    }

    async fn evaluate(&self, request: Request<EvaluateRequest>) -> Result<Response<Self::EvaluateStream>, Status> {
        self.check(request.metadata())?;
        let request = request.into_inner();
        if !self.models.iter().any(|m| m.name == request.model) {
            return Err(Status::not_found(request.model));
        }
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let stats = self.stats.clone();
        let now = stats.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        stats.max_in_flight.fetch_max(now, Ordering::SeqCst);
        stats.served.lock().unwrap().push(request.model.clone());
        let fail = self.fail.as_deref() == Some(request.model.as_str());
        let server = self.name.clone();
        let confusions = self.confusions;
        tokio::spawn(async move {
            let send = |e: Event| EvaluateEvent { event: Some(e) };
            let _ = tx.send(Ok(send(Event::Queued(QueuePosition { ahead: 0 })))).await;
            for (i, spec) in request.attacks.iter().enumerate() {
                let _ = tx
                    .send(Ok(send(Event::Progress(Progress {
                        attack: format!("attack {i}"),
                        attack_index: i as i64,
                        examples_done: 30,
                        examples_total: 60,
                        ..Default::default()
                    }))))
                    .await;
                tokio::time::sleep(Duration::from_millis(40)).await;
                if fail && i == 1 {
                    stats.in_flight.fetch_sub(1, Ordering::SeqCst);
                    let _ = tx.send(Err(Status::internal("simulated CUDA out of memory"))).await;
                    return;
                }
                let correct: Vec<i64> = (0..CLASSES.len()).map(|k| correct_for(&request.model, i, k)).collect();
                let rows = confusion_rows(confusions, &correct);
                let classes = CLASSES
                    .iter()
                    .zip(correct.iter().zip(rows))
                    .map(|(c, (&correct, predicted_as))| ClassResult { class_name: c.to_string(), correct, total: TOTAL, predicted_as })
                    .collect();
                let result = AttackResult {
                    attack: Some(spec.clone()),
                    attack_name: format!("fake-{}", spec.kind),
                    classes,
                    device: "fake".into(),
                    versions: Some(Versions { evaluator: format!("fake {server}"), libtorch: "none".into(), proto: "rfb.v1".into() }),
                    model: request.model.clone(),
                    weights_sha256: "ab".repeat(32),
                    dataset: "digits".into(),
                    // Sharded requests (compare shards over several servers by default) are
                    // answered as shards; each shard reports the same counts.
                    shard: request.shard,
                    ..Default::default()
                };
                let _ = tx.send(Ok(send(Event::Result(result)))).await;
            }
            stats.in_flight.fetch_sub(1, Ordering::SeqCst);
            let _ = tx.send(Ok(send(Event::Done(Done { elapsed_seconds: 0.1 })))).await;
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

fn model(name: &str, method: &str, seed: u64) -> ModelInfo {
    ModelInfo {
        name: name.into(),
        architecture: "digits-cnn".into(),
        num_classes: 3,
        class_names: CLASSES.iter().map(|c| c.to_string()).collect(),
        dataset: "digits".into(),
        method: method.into(),
        seed: Some(seed),
        ..Default::default()
    }
}

fn catalogue() -> Vec<ModelInfo> {
    vec![
        model("rslad-s0/best", "rslad", 0),
        model("rslad-s1/best", "rslad", 1),
        model("rslad-s2/best", "rslad", 2),
        model("rslad-s0/last", "rslad", 0),
        model("absld-s0/best", "absld", 0),
        model("absld-s1/best", "absld", 1),
        model("absld-s2/best", "absld", 2),
        model("teacher/best", "trades", 0),
    ]
}

async fn start(name: &str, token: Option<&str>, fail: Option<&str>) -> (SocketAddr, Arc<Stats>) {
    start_answering(name, token, fail, Confusions::Right).await
}

async fn start_answering(name: &str, token: Option<&str>, fail: Option<&str>, confusions: Confusions) -> (SocketAddr, Arc<Stats>) {
    let stats = Arc::new(Stats::default());
    let fake = Fake {
        name: name.into(),
        models: catalogue(),
        token: token.map(str::to_string),
        fail: fail.map(str::to_string),
        confusions,
        stats: stats.clone(),
    };
    let incoming = tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = incoming.local_addr().unwrap();
    tokio::spawn(tonic::transport::Server::builder().add_service(EvaluatorServer::new(fake)).serve_with_incoming(incoming));
    (addr, stats)
}

fn settings() -> Settings {
    Settings {
        dataset: String::new(),
        split: rfb_bench_client::split::Split::Test,
        examples_per_class: 20,
        batch_size: 0,
        precision: rfb_bench_client::precision::Precision::Fp32,
        attacks: parse_attacks("clean,fgsm,pgd", &Common { eps: 0.1, step_size: None, seed: 0 }).unwrap(),
        confidence: 0.95,
        uncertainty: Default::default(),
        sweep: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_is_shared_counts_are_kept_failures_are_reported() {
    let (a, stats_a) = start("a", Some("sekret"), Some("absld-s1/best")).await;
    let (b, stats_b) = start("b", Some("sekret"), Some("absld-s1/best")).await;
    let config = CompareConfig {
        servers: vec![a.to_string(), format!("http://{b}")],
        token: Some("sekret".into()),
        requests: parse_models("rslad,ABSLD=absld").unwrap(),
        seeds: None,
        checkpoint: "best".into(),
        settings: settings(),
        progress: false,
        command: "test".into(),
        connect_timeout: Duration::from_secs(5),
        deadline: Some(Duration::from_secs(60)),
        shards: 1,
    };
    let (results, selections) = compare(&config).await.unwrap();
    assert_eq!(selections.len(), 2);

    // One in flight per server, and both took part.
    assert_eq!(stats_a.max_in_flight.load(Ordering::SeqCst), 1);
    assert_eq!(stats_b.max_in_flight.load(Ordering::SeqCst), 1);
    let served_a = stats_a.served.lock().unwrap().clone();
    let served_b = stats_b.served.lock().unwrap().clone();
    assert!(!served_a.is_empty() && !served_b.is_empty(), "a: {served_a:?}, b: {served_b:?}");
    // Each of the six checkpoints once, and the one that fails (an internal error, a reason of
    // the server's) once more on the other server.
    assert_eq!(served_a.len() + served_b.len(), 7, "a: {served_a:?}, b: {served_b:?}");
    assert_eq!(served_a.iter().chain(&served_b).filter(|m| *m == "absld-s1/best").count(), 2);

    // The failure is recorded, the rest is there with every count.
    assert_eq!(results.failures.len(), 1, "{:?}", results.failures);
    let f = &results.failures[0];
    assert_eq!((f.label.as_str(), f.model.as_str(), f.seed), ("ABSLD", "absld-s1/best", Some(1)));
    assert!(f.error.contains("simulated CUDA out of memory"), "{}", f.error);
    let labels: Vec<&str> = results.models.iter().map(|m| m.label.as_str()).collect();
    assert_eq!(labels, ["rslad", "ABSLD"]);
    let seeds: Vec<Vec<u64>> = results.models.iter().map(|m| m.runs.iter().map(|r| r.seed).collect()).collect();
    assert_eq!(seeds, [vec![0, 1, 2], vec![0, 2]]);
    for m in &results.models {
        assert_eq!(m.class_names, CLASSES);
        for run in &m.runs {
            assert!(run.server == format!("http://{a}") || run.server == format!("http://{b}"), "{}", run.server);
            let attacks: Vec<&str> = run.attacks.iter().map(|x| x.attack.as_str()).collect();
            assert_eq!(attacks, ["Clean", "FGSM", "PGD-20"]);
            for (i, attack) in run.attacks.iter().enumerate() {
                let expected: Vec<i64> = (0..3).map(|k| correct_for(&run.model, i, k)).collect();
                assert_eq!(attack.correct, expected, "{} {}", run.model, attack.attack);
                assert_eq!(attack.total, vec![TOTAL; 3]);
                assert_eq!(attack.attack_name, format!("fake-{}", [1, 2, 3][i]));
                assert_eq!(attack.confusion, confusion_rows(Confusions::Right, &expected), "{} {}", run.model, attack.attack);
            }
        }
    }
    let versions: HashMap<String, String> = results.servers.iter().map(|s| (s.endpoint.clone(), s.evaluator_version.clone())).collect();
    assert_eq!(versions[&format!("http://{a}")], "fake a");
    assert_eq!(versions[&format!("http://{b}")], "fake b");
    results.validate().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_token_and_unknown_models_are_clear_errors() {
    let (a, _) = start("a", Some("sekret"), None).await;
    let mut config = CompareConfig {
        servers: vec![a.to_string()],
        token: Some("wrong".into()),
        requests: parse_models("rslad").unwrap(),
        seeds: Some(vec![1]),
        checkpoint: "best".into(),
        settings: settings(),
        progress: false,
        command: String::new(),
        connect_timeout: Duration::from_secs(5),
        deadline: None,
        shards: 1,
    };
    let err = compare(&config).await.unwrap_err().to_string();
    assert!(err.contains("Unauthenticated") && err.contains("--token-file"), "{err}");

    config.token = Some("sekret".into());
    config.requests = parse_models("fgsm-at").unwrap();
    let err = compare(&config).await.unwrap_err().to_string();
    assert!(err.contains("matches no checkpoint") && err.contains("rslad-s0/best"), "{err}");

    // A server that is not there is skipped when another one works.
    config.requests = parse_models("rslad").unwrap();
    config.servers = vec!["127.0.0.1:1".into(), a.to_string()];
    let (results, _) = compare(&config).await.unwrap();
    assert_eq!(results.models[0].runs.len(), 1, "--seeds 1 keeps one seed");
    assert_eq!(results.models[0].runs[0].model, "rslad-s1/best");
    assert!(results.servers[0].error.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_writes_the_whole_report() {
    let (a, _) = start("a", Some("tok"), None).await;
    let (b, _) = start("b", Some("tok"), None).await;
    let tmp = tempfile::tempdir().unwrap();
    let token = tmp.path().join("token");
    std::fs::write(&token, "tok\n").unwrap();
    let out = tmp.path().join("out");
    let args: Vec<String> = vec![
        "compare".into(),
        "--server".into(),
        format!("{a},{b}"),
        "--models".into(),
        "rslad,absld".into(),
        "--attacks".into(),
        "clean,fgsm,pgd".into(),
        "--eps".into(),
        "0.1".into(),
        "--token-file".into(),
        token.display().to_string(),
        "--out".into(),
        out.display().to_string(),
        "--eps-sweep".into(),
        "0:0.1:3".into(),
        "--sweep-attack".into(),
        "pgd-7".into(),
    ];
    // stderr is a pipe here, as in a log: plain progress lines, no bars (RFB_PROGRESS unset).
    // Two servers: each of the 6 evaluations is split into 2 shards.
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_bench-client"))
            .args(&args)
            .env_remove("RFB_PROGRESS")
            .env("RFB_PROGRESS_SECONDS", "0.05")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.lines().any(|l| l.starts_with("compare: done, 12 shards, in ")), "{stderr}");
    for server in [a, b] {
        assert!(stderr.lines().any(|l| l.starts_with(&format!("http://{server}: done, "))), "{stderr}");
    }
    assert!(!stderr.contains('\r') && !stderr.contains('\x1b'), "no bar redrawing in a log: {stderr:?}");
    let results = Results::load(&out.join("results.json")).unwrap();
    assert_eq!(results.models.iter().map(|m| m.runs.len()).sum::<usize>(), 6);
    assert!(results.command.contains("--models rslad,absld"), "{}", results.command);
    assert_eq!(results.settings.attacks[1].eps, Some(0.1));
    // The robustness curve: PGD-7 at 0.05 and 0.1, clean at radius 0, in every run.
    let sweep = results.settings.sweep.as_ref().expect("the sweep is recorded");
    assert_eq!((sweep.attack.label.as_str(), sweep.attack.eps, sweep.attack.steps), ("PGD-7", None, Some(7)));
    assert_eq!(sweep.radii, [0.0, 0.05, 0.1]);
    for run in results.models.iter().flat_map(|m| &m.runs) {
        assert_eq!(run.sweep.iter().map(|p| p.eps).collect::<Vec<_>>(), sweep.radii);
        let kinds: Vec<&str> = run.sweep.iter().map(|p| p.run.ran.as_ref().unwrap().kind.as_str()).collect();
        assert_eq!(kinds, ["CLEAN", "PGD", "PGD"]);
        assert_eq!(run.sweep[2].run.ran.as_ref().unwrap().eps, Some(0.1));
    }
    // The table's numbers are the counts': rslad Clean Avg over seeds 0, 1, 2.
    let avg: Vec<f64> = (0..3)
        .map(|s| {
            let name = format!("rslad-s{s}/best");
            (0..3).map(|k| 100.0 * correct_for(&name, 0, k) as f64 / TOTAL as f64).sum::<f64>() / 3.0
        })
        .collect();
    let mean = avg.iter().sum::<f64>() / 3.0;
    let sd = (avg.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 2.0).sqrt();
    let table = std::fs::read_to_string(out.join("table.md")).unwrap();
    let row = table.lines().find(|l| l.starts_with("| rslad |")).unwrap();
    assert!(row.starts_with(&format!("| rslad | 0, 1, 2 | {mean:.2} ± {sd:.2} |")), "{row}");
    for name in ["report.md", "summary.csv", "comparison.csv", "per_seed.csv", "classwise.png", "metrics.png", "index.html"] {
        assert!(out.join(name).is_file(), "{name}");
    }
    let page = std::fs::read_to_string(out.join("index.html")).unwrap();
    assert!(page.contains(&format!("{mean:.2}")), "the page shows rslad's Clean Avg");
    // Two shards, each answering the same confusion: the merged one is their sum, cell by cell.
    let run = &results.models[0].runs[0];
    let expected: Vec<i64> = (0..3).map(|k| correct_for(&run.model, 2, k)).collect();
    let doubled: Vec<Vec<i64>> = confusion_rows(Confusions::Right, &expected).iter().map(|r| r.iter().map(|c| 2 * c).collect()).collect();
    assert_eq!(run.attacks[2].confusion, doubled);
    assert_eq!(run.attacks[2].correct, expected.iter().map(|c| 2 * c).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_confusion_is_refused_clearly_and_an_absent_one_is_left_empty() {
    for (kind, says) in [
        (Confusions::ShortRow, "is not 3 x 3"),
        (Confusions::RowSumWrong, "adds up to 21, not its 20 points"),
        (Confusions::DiagonalWrong, "diagonal for class 0 (zero)"),
        (Confusions::Negative, "negative count"),
        (Confusions::Absent, ""),
    ] {
        let (a, _) = start_answering("a", None, None, kind).await;
        let config = CompareConfig {
            servers: vec![a.to_string()],
            token: None,
            requests: parse_models("rslad").unwrap(),
            seeds: Some(vec![0]),
            checkpoint: "best".into(),
            settings: settings(),
            progress: false,
            command: String::new(),
            connect_timeout: Duration::from_secs(5),
            deadline: Some(Duration::from_secs(60)),
            shards: 1,
        };
        let (results, _) = compare(&config).await.unwrap();
        if kind == Confusions::Absent {
            assert!(results.failures.is_empty(), "{:?}", results.failures);
            assert!(results.models[0].runs[0].attacks.iter().all(|a| a.confusion.is_empty()));
            continue;
        }
        assert_eq!(results.failures.len(), 1, "{kind:?}: {:?}", results.failures);
        let error = &results.failures[0].error;
        assert!(error.contains("inconsistent") && error.contains("adversarial confusion") && error.contains(says), "{kind:?}: {error}");
        assert!(results.models[0].runs.is_empty(), "{kind:?}: a malformed answer was kept");
    }
}
