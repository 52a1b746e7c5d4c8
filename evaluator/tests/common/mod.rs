//! Helpers shared by the evaluator's integration tests: a small digits model trained once per
//! target directory, fresh models directories, and the real `evaluator` binary on loopback.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rfb_proto::v1::evaluator_client::EvaluatorClient;
use rfb_proto::v1::{evaluate_event::Event, AttackKind, AttackResult, AttackSpec, EvaluateRequest};
use rfb_trainer::presets::Preset;
use rfb_trainer::run::{self, RunConfig};
use tonic::transport::Channel;
use tonic::Status;

pub const MODEL: &str = "natural-s0/best";

/// A natural digits-cnn (2 quick epochs), trained once and kept under Cargo's target tmp dir so
/// that test processes (nextest runs one per test) share it ([`trained_once`]).
/// The project's Python, with torch and grpcio (`RFB_PYTHON`, else the workspace's `.venv`).
pub fn python() -> PathBuf {
    match std::env::var_os("RFB_PYTHON") {
        Some(path) => PathBuf::from(path),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python"),
    }
}

pub fn trained_run() -> &'static Path {
    static RUN: OnceLock<PathBuf> = OnceLock::new();
    RUN.get_or_init(|| trained_once("natural-digits", "digits-cnn", 2, None))
}

/// A natural `architecture` trained on digits for `epochs` epochs (at `learning_rate`, else the
/// digits preset's), trained once per code version and kept under Cargo's target tmp dir as
/// `LABEL-VERSION` so that test processes share it. A lock file keeps two processes from
/// training at once; a kept run that no longer loads (the format changed) is retrained.
pub fn trained_once(label: &str, architecture: &str, epochs: i64, learning_rate: Option<f64>) -> PathBuf {
    trained_once_by("natural", label, architecture, epochs, learning_rate)
}

/// [`trained_once`] with another training method (e.g. "sat" for a robust model).
pub fn trained_once_by(method: &str, label: &str, architecture: &str, epochs: i64, learning_rate: Option<f64>) -> PathBuf {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("rfb-evaluator-tests");
    let version: String = rfb_core::checkpoint::code_version().chars().filter(char::is_ascii_alphanumeric).collect();
    let done = root.join(format!("{label}-{version}"));
    let usable = |dir: &Path| {
        ["best", "last"].iter().all(|which| rfb_core::checkpoint::load(&dir.join(which), tch::Device::Cpu, &Default::default()).is_ok())
    };
    std::fs::create_dir_all(&root).unwrap();
    let lock = root.join(format!("{label}.lock"));
    let waiting_since = Instant::now();
    loop {
        if done.exists() && usable(&done) {
            return done;
        }
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&lock) {
            Ok(_) => break,
            Err(_) => {
                let stale = std::fs::metadata(&lock)
                    .and_then(|m| m.modified())
                    .map(|t| t.elapsed().unwrap_or_default() > Duration::from_secs(300))
                    .unwrap_or(true);
                if stale || waiting_since.elapsed() > Duration::from_secs(600) {
                    let _ = std::fs::remove_file(&lock);
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    let _ = std::fs::remove_dir_all(&done);
    let scratch = root.join(format!("training-{label}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    let mut preset = Preset::for_dataset(rfb_core::data::DatasetKind::Digits);
    preset.architecture = architecture.to_string();
    preset.epochs = epochs;
    preset.lr_milestones = vec![(epochs - 1).max(1)];
    if let Some(learning_rate) = learning_rate {
        preset.learning_rate = learning_rate;
    }
    preset.eval_every = epochs;
    preset.selection_pgd_steps = 3;
    preset.attack.steps = 3;
    let config = RunConfig {
        method: method.parse().expect("a training method"),
        dataset: rfb_core::data::DatasetKind::Digits,
        data_dir: None,
        teacher: None,
        init: None,
        seed: 0,
        out: scratch.clone(),
        preset,
        select_on: rfb_core::data::Split::Validation,
        device: tch::Device::Cpu,
        resume: false,
        progress: false,
        stop_after: None,
        stop_after_batches: None,
    };
    let trained = run::run(&config);
    let moved = trained.as_ref().ok().map(|_| std::fs::rename(&scratch, &done));
    let _ = std::fs::remove_file(&lock);
    trained.unwrap();
    moved.unwrap().unwrap();
    done
}

pub fn copy_checkpoint(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for file in ["manifest.json", "model.safetensors"] {
        std::fs::copy(from.join(file), to.join(file)).unwrap();
    }
}

/// A fresh models directory holding `natural-s0/best` and `natural-s0/last`.
pub fn models_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for which in ["best", "last"] {
        copy_checkpoint(&trained_run().join(which), &dir.path().join("natural-s0").join(which));
    }
    dir
}

/// The evaluator binary serving on a free loopback port; killed on drop (its log printed if
/// the test failed).
pub struct Server {
    pub child: Child,
    pub address: String,
    pub log: PathBuf,
    _stdout: BufReader<ChildStdout>,
}

impl Server {
    pub fn start(models: &Path, extra: &[&str]) -> Server {
        Server::start_logging_to(models, extra, &models.join(".server.log"), &[])
    }

    /// [`Server::start`] with its own log file and environment (several servers on one models
    /// directory).
    pub fn start_logging_to(models: &Path, extra: &[&str], log: &Path, env: &[(&str, &str)]) -> Server {
        Server::start_customized(models, extra, log, env, &mut |_| {})
    }

    /// [`Server::start_logging_to`], the command first given to `customize` (e.g. a pre_exec
    /// that leaves the server an extra file descriptor).
    pub fn start_customized(
        models: &Path,
        extra: &[&str],
        log: &Path,
        env: &[(&str, &str)],
        customize: &mut dyn FnMut(&mut Command),
    ) -> Server {
        let log = log.to_path_buf();
        let mut command = Command::new(env!("CARGO_BIN_EXE_evaluator"));
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--device", "cpu", "--models-dir"])
            .arg(models)
            .args(extra)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap());
        customize(&mut command);
        let mut child = command.spawn().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let address = line.trim().to_string();
        if address.is_empty() {
            let _ = child.kill();
            panic!("the server did not start:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
        }
        assert!(address.starts_with("127.0.0.1:"), "bound to {address}");
        Server { child, address, log, _stdout: stdout }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    pub async fn client(&self) -> EvaluatorClient<Channel> {
        EvaluatorClient::connect(self.url()).await.unwrap()
    }

    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- server log ---\n{}", self.log());
        }
    }
}

pub fn spec(kind: AttackKind) -> AttackSpec {
    AttackSpec { kind: kind as i32, ..Default::default() }
}

pub fn request(per_class: i64, attacks: Vec<AttackSpec>) -> EvaluateRequest {
    EvaluateRequest { model: MODEL.into(), examples_per_class: per_class, attacks, ..Default::default() }
}

pub async fn events(client: &mut EvaluatorClient<Channel>, request: EvaluateRequest) -> Result<Vec<Event>, Status> {
    let mut stream = client.evaluate(request).await?.into_inner();
    let mut events = Vec::new();
    while let Some(event) = stream.message().await? {
        events.push(event.event.expect("every event has a payload"));
    }
    Ok(events)
}

pub fn results(events: &[Event]) -> Vec<AttackResult> {
    events.iter().filter_map(|e| if let Event::Result(r) = e { Some(r.clone()) } else { None }).collect()
}

pub fn correct(result: &AttackResult) -> Vec<i64> {
    result.classes.iter().map(|c| c.correct).collect()
}

pub fn total_correct(result: &AttackResult) -> i64 {
    correct(result).iter().sum()
}

impl Server {
    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident and peak resident memory of the server, in KiB (from /proc).
    pub fn memory_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        let field = |name: &str| {
            status.lines().find(|l| l.starts_with(name)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()).unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

/// Waits until the server's log contains `text` (the worker logs after the client's status).
pub fn wait_for_log(server: &Server, text: &str, within: Duration) -> bool {
    let started = Instant::now();
    while started.elapsed() < within {
        if server.log().contains(text) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// `evaluator ARGS` as a user runs it (one libtorch thread, no backtraces, no log filter).
pub fn evaluator_cli(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_evaluator"))
        .args(args)
        .env("OMP_NUM_THREADS", "1")
        .env("RUST_BACKTRACE", "0")
        .env("RUST_LIB_BACKTRACE", "0")
        .env_remove("RUST_LOG")
        .output()
        .expect("start the evaluator")
}

/// CIFAR-10 binary files of `per_class_train` training images per class (spread over the five
/// batches) and 3 test images per class, and an untrained `digits-cnn` for 3x32x32 inputs.
pub fn cifar_fixture(root: &Path, per_class_train: usize) -> (PathBuf, PathBuf) {
    let data = root.join("data/cifar-10-batches-bin");
    std::fs::create_dir_all(&data).unwrap();
    let record = |k: usize, label: u8| {
        let mut bytes = vec![label];
        bytes.extend((0..3072).map(|i| ((k * 31 + i * 7) % 256) as u8));
        bytes
    };
    let train = per_class_train * 10;
    for batch in 0..5 {
        let mut bytes = Vec::new();
        for k in (batch * train / 5)..((batch + 1) * train / 5) {
            bytes.extend(record(k, (k % 10) as u8));
        }
        std::fs::write(data.join(format!("data_batch_{}.bin", batch + 1)), bytes).unwrap();
    }
    let test: Vec<u8> = (0..30).flat_map(|k| record(1000 + k, (k % 10) as u8)).collect();
    std::fs::write(data.join("test_batch.bin"), test).unwrap();
    let models = root.join("models");
    let spec = rfb_core::models::ModelSpec::new("digits-cnn", 10, [3, 32, 32]);
    let network = rfb_core::models::build(&spec, tch::Device::Cpu).unwrap();
    let info = rfb_core::checkpoint::CheckpointInfo {
        class_names: rfb_core::data::CIFAR10_CLASS_NAMES.iter().map(|s| s.to_string()).collect(),
        dataset: "cifar10".into(),
        method: "untrained".into(),
        ..Default::default()
    };
    rfb_core::checkpoint::save(&models.join("cifar/best"), &network, info).unwrap();
    (models, root.join("data"))
}
