//! The sandbox of model code (docs/sandbox.md), end to end with the real binary and hostile
//! TorchScript modules (`tests/python/hostile_models.py`): one that reads files
//! (`torch.from_file` on /etc/hostname and a secret beside the models directory), one that
//! writes files (`torch.save`), one that loops forever, one that allocates 100 GB. Each comes
//! misbehaving on every batch (the import checks, which run in a sandboxed worker, must refuse
//! it or contain it) and only on batches of more than 3 images (it imports, and misbehaves at
//! evaluation). After each, the server answers the next requests. Where this machine cannot
//! sandbox model code (the probe says so), each test says so and checks the refusal instead;
//! `RFB_SANDBOX_PRETEND_NO_LANDLOCK=1` tests that path everywhere.

mod common;
use common::python;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{events, results, spec, Server};
use rfb_proto::v1::evaluator_client::EvaluatorClient;
use rfb_proto::v1::{AttackKind, EvaluateRequest, ListModelsRequest, ServerInfoRequest};
use tonic::transport::Channel;
use tonic::Code;

/// A work directory: `models/` (the trained digits model), `secret.txt` beside it, and the
/// hostile modules in `files/`.
struct Work {
    dir: tempfile::TempDir,
}

impl Work {
    fn new() -> Work {
        let dir = tempfile::tempdir().unwrap();
        let models = dir.path().join("models");
        for which in ["best", "last"] {
            common::copy_checkpoint(&common::trained_run().join(which), &models.join("natural-s0").join(which));
        }
        std::fs::write(dir.path().join("secret.txt"), "the-secret-is-42\n").unwrap();
        let files = dir.path().join("files");
        std::fs::create_dir_all(&files).unwrap();
        let mut reads = vec![dir.path().join("secret.txt").display().to_string()];
        if Path::new("/etc/hostname").is_file() {
            reads.insert(0, "/etc/hostname".into());
        }
        let writes = [self_written(dir.path()), models.join("pwned.pt")].map(|p| p.display().to_string());
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/python/hostile_models.py");
        let output = Command::new(python())
            .arg(script)
            .args([files.to_str().unwrap(), &reads.join(","), &writes.join(",")])
            .env("OMP_NUM_THREADS", "1")
            .output()
            .expect("start python");
        assert!(output.status.success(), "hostile_models.py: {}", String::from_utf8_lossy(&output.stderr));
        Work { dir }
    }

    fn models(&self) -> PathBuf {
        self.dir.path().join("models")
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join("files").join(name)
    }

    /// The files the writing module aims at.
    fn targets(&self) -> [PathBuf; 2] {
        [self_written(self.dir.path()), self.models().join("pwned.pt")]
    }
}

fn self_written(dir: &Path) -> PathBuf {
    dir.join("written.pt")
}

/// `evaluator ARGS` with extra environment.
fn evaluator(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_evaluator"))
        .args(args)
        .env("OMP_NUM_THREADS", "1")
        .env("RUST_BACKTRACE", "0")
        .env_remove("RUST_LOG")
        .envs(env.iter().copied())
        .output()
        .expect("start the evaluator")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn import(work: &Work, file: &str, name: &str, extra: &[&str]) -> Output {
    let from = work.file(file);
    let out = work.models().join(name);
    let mut args = vec!["import", "--from", from.to_str().unwrap(), "--dataset", "digits", "--out", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    evaluator(&args, &[])
}

/// Imports a module that misbehaves only on large batches (its checks pass); with
/// `--trust-torchscript` where the sandbox is missing, so that the server's refusal is tested.
fn import_large(work: &Work, file: &str, name: &str, sandboxed: bool) {
    let extra: &[&str] = if sandboxed { &[] } else { &["--trust-torchscript"] };
    let output = import(work, file, name, extra);
    assert!(output.status.success(), "import {file}: {}", stderr(&output));
}

/// Whether the server sandboxes model code (else it refuses TorchScript), as ServerInfo says.
async fn sandboxed(client: &mut EvaluatorClient<Channel>) -> bool {
    let info = client.server_info(ServerInfoRequest {}).await.unwrap().into_inner();
    let protection = info.model_code_protection;
    assert!(protection.starts_with("worker processes: "), "{protection}");
    if protection.contains("TorchScript refused") {
        eprintln!("this machine cannot sandbox model code ({protection}): checking the refusal instead");
        false
    } else {
        true
    }
}

fn request(model: &str, per_class: i64, kind: AttackKind) -> EvaluateRequest {
    EvaluateRequest { model: model.into(), examples_per_class: per_class, attacks: vec![spec(kind)], ..Default::default() }
}

/// The server still answers: ListModels, and a normal evaluation of the benign model.
async fn still_serves(server: &mut Server, client: &mut EvaluatorClient<Channel>) {
    assert!(server.alive(), "the server died");
    let listed = client.list_models(ListModelsRequest {}).await.unwrap().into_inner();
    assert!(listed.models.iter().any(|m| m.name == common::MODEL), "{:?}", listed.models);
    let events = events(client, request(common::MODEL, 2, AttackKind::Pgd)).await.unwrap();
    let results = results(&events);
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].classes.iter().map(|c| c.total).sum::<i64>(), 20);
}

/// The server's child processes (its workers), from /proc.
fn children(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // pid (comm) state ppid ...: comm may hold spaces, so split after its ')'.
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else { continue };
        let fields: Vec<&str> = after.split_whitespace().collect();
        if fields.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(pid) {
            found.push(child);
        }
    }
    found
}

fn wait_for_no_children(pid: u32, within: Duration) -> Vec<u32> {
    let started = Instant::now();
    loop {
        let left = children(pid);
        if left.is_empty() || started.elapsed() > within {
            return left;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_info_names_the_protection_of_model_code() {
    let work = Work::new();
    let mut server = Server::start(&work.models(), &[]);
    let mut client = server.client().await;
    let info = client.server_info(ServerInfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.device, "cpu");
    assert!(info.versions.as_ref().is_some_and(|v| v.evaluator.starts_with("rfb-evaluator")), "{info:?}");
    assert!(!info.uploads_enabled);
    if sandboxed(&mut client).await {
        let protection = &info.model_code_protection;
        assert!(
            protection.contains("Landlock ABI") && protection.contains("seccomp") && protection.contains("rlimits (memory"),
            "{protection}"
        );
    }
    assert!(server.log().contains("model code runs in: worker processes"), "{}", server.log());
    still_serves(&mut server, &mut client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_that_reads_files_reads_nothing() {
    let work = Work::new();
    let mut server = Server::start(&work.models(), &[]);
    let mut client = server.client().await;
    let full = sandboxed(&mut client).await;

    // The import checks run it: it cannot read, so it fails them (or is refused outright).
    let refused = import(&work, "reads_always.pt", "reads-always", &[]);
    assert!(!refused.status.success());
    let message = stderr(&refused);
    if full {
        assert!(message.contains("its forward fails") && message.contains("Permission denied"), "{message}");
    } else {
        assert!(message.contains("TorchScript models are refused") && message.contains("--trust-torchscript"), "{message}");
    }
    assert!(!message.contains("the-secret-is-42"), "{message}");
    assert!(!work.models().join("reads-always").join("manifest.json").exists());

    import_large(&work, "reads_large.pt", "reads", full);
    let status = events(&mut client, request("reads", 2, AttackKind::Clean)).await.unwrap_err();
    if full {
        assert_eq!(status.code(), Code::Internal, "{status:?}");
        assert!(status.message().contains("Permission denied") && status.message().contains("unable to open file"), "{status:?}");
    } else {
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        assert!(status.message().contains("--trust-torchscript"), "{status:?}");
    }
    assert!(!status.message().contains("the-secret-is-42"));
    still_serves(&mut server, &mut client).await;

    // The control: unconfined (in-process, trusted) the same module does read the files.
    let models = work.models();
    let output = evaluator(
        &[
            "eval",
            "--models-dir",
            models.to_str().unwrap(),
            "--model",
            "reads",
            "--attacks",
            "clean",
            "--per-class",
            "1",
            "--device",
            "cpu",
            "--no-cache",
            "--quiet",
            "--in-process",
            "--trust-torchscript",
        ],
        &[],
    );
    assert!(output.status.success(), "unconfined, the module reads the files: {}", stderr(&output));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_that_writes_files_writes_nothing() {
    let work = Work::new();
    let mut server = Server::start(&work.models(), &[]);
    let mut client = server.client().await;
    let full = sandboxed(&mut client).await;
    let nothing_written = |when: &str| {
        for target in work.targets() {
            assert!(!target.exists(), "{when}: {} was written", target.display());
        }
    };

    // torch.save fails silently when it cannot open the file: the checks may pass, but nothing
    // is written.
    let output = import(&work, "writes_always.pt", "writes-always", &[]);
    if !full {
        assert!(stderr(&output).contains("TorchScript models are refused"), "{}", stderr(&output));
    }
    nothing_written("import");

    import_large(&work, "writes_large.pt", "writes", full);
    let outcome = events(&mut client, request("writes", 2, AttackKind::Pgd)).await;
    match (&outcome, full) {
        (_, true) => {}
        (Err(status), false) => assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}"),
        (Ok(_), false) => panic!("TorchScript ran without a sandbox"),
    }
    nothing_written("evaluation");
    still_serves(&mut server, &mut client).await;

    // The control: unconfined the same module does write them.
    let models = work.models();
    let output = evaluator(
        &[
            "eval",
            "--models-dir",
            models.to_str().unwrap(),
            "--model",
            "writes",
            "--attacks",
            "clean",
            "--per-class",
            "1",
            "--device",
            "cpu",
            "--no-cache",
            "--quiet",
            "--in-process",
            "--trust-torchscript",
        ],
        &[],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(work.targets().iter().all(|t| t.exists()), "unconfined, the module writes its files");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_that_loops_forever_is_stopped() {
    let work = Work::new();
    let mut server = Server::start(&work.models(), &[]);
    let mut client = server.client().await;
    let full = sandboxed(&mut client).await;

    let started = Instant::now();
    let output = import(&work, "loops_always.pt", "loops-always", &["--check-timeout", "3s"]);
    assert!(!output.status.success());
    if full {
        assert!(stderr(&output).contains("did not finish within 3s"), "{}", stderr(&output));
        assert!(started.elapsed() < Duration::from_secs(60), "{:?}", started.elapsed());
    }
    assert!(!work.models().join("loops-always").join("manifest.json").exists());

    import_large(&work, "loops_large.pt", "loops", full);
    // The request's deadline ends it, and its worker process.
    let started = Instant::now();
    let mut timed = tonic::Request::new(request("loops", 2, AttackKind::Clean));
    timed.set_timeout(Duration::from_secs(4));
    let status = match client.evaluate(timed).await {
        Ok(stream) => {
            let mut stream = stream.into_inner();
            loop {
                match stream.message().await {
                    Ok(Some(_)) => {}
                    Ok(None) => panic!("the looping module finished"),
                    Err(status) => break status,
                }
            }
        }
        Err(status) => status,
    };
    if full {
        assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
        assert!(started.elapsed() < Duration::from_secs(30), "{:?}", started.elapsed());
        assert!(common::wait_for_log(&server, "its deadline passed", Duration::from_secs(10)), "{}", server.log());
    } else {
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    }
    let left = wait_for_no_children(server.pid(), Duration::from_secs(10));
    assert!(left.is_empty(), "worker processes left: {left:?}");
    still_serves(&mut server, &mut client).await;

    if full {
        // A client that goes away: its worker is killed too.
        let mut stream = client.evaluate(request("loops", 2, AttackKind::Pgd)).await.unwrap().into_inner();
        let seen = Instant::now();
        while children(server.pid()).is_empty() && seen.elapsed() < Duration::from_secs(30) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(!children(server.pid()).is_empty(), "no worker process was started");
        let _ = tokio::time::timeout(Duration::from_millis(200), stream.message()).await;
        drop(stream);
        let left = wait_for_no_children(server.pid(), Duration::from_secs(10));
        assert!(left.is_empty(), "worker processes left after the client went away: {left:?}");
        still_serves(&mut server, &mut client).await;
    }

    // Without a deadline, --worker-cpu-seconds caps the worker's CPU time (RLIMIT_CPU).
    let models = work.models();
    let started = Instant::now();
    let output = evaluator(
        &[
            "eval",
            "--models-dir",
            models.to_str().unwrap(),
            "--model",
            "loops",
            "--attacks",
            "clean",
            "--per-class",
            "2",
            "--device",
            "cpu",
            "--no-cache",
            "--quiet",
            "--trust-torchscript",
            "--worker-cpu-seconds",
            "2",
        ],
        &[],
    );
    assert!(!output.status.success());
    assert!(stderr(&output).contains("used up its CPU-time limit"), "{}", stderr(&output));
    assert!(started.elapsed() < Duration::from_secs(60), "{:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_that_allocates_100_gb_fails_alone() {
    let work = Work::new();
    let mut server = Server::start(&work.models(), &[]);
    let mut client = server.client().await;
    let full = sandboxed(&mut client).await;

    let output = import(&work, "allocates_always.pt", "allocates-always", &[]);
    assert!(!output.status.success());
    if full {
        assert!(stderr(&output).contains("can't allocate memory"), "{}", stderr(&output));
    }
    assert!(!work.models().join("allocates-always").join("manifest.json").exists());

    import_large(&work, "allocates_large.pt", "allocates", full);
    let status = events(&mut client, request("allocates", 2, AttackKind::Clean)).await.unwrap_err();
    if full {
        // The worker's memory limit refuses the allocation (or the worker dies of it).
        assert!(matches!(status.code(), Code::ResourceExhausted | Code::Internal), "{status:?}");
        assert!(status.message().contains("memory"), "{status:?}");
    } else {
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    }
    still_serves(&mut server, &mut client).await;
    let (resident_kib, _) = server.memory_kib();
    assert!(resident_kib < 8 << 20, "the server itself holds {resident_kib} KiB");
}

/// Without Landlock (pretended), TorchScript is refused by the server, by import and by eval
/// unless the operator trusts it; our own networks still run in workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_sandbox_torchscript_is_refused_unless_trusted() {
    let work = Work::new();
    import_large(&work, "reads_large.pt", "benign-at-small-batches", false);
    // Batches of 2: the module behaves.
    let small = EvaluateRequest { batch_size: 2, ..request("benign-at-small-batches", 1, AttackKind::Clean) };
    for variable in ["RFB_SANDBOX_PRETEND_NO_LANDLOCK", "RFB_SANDBOX_PRETEND_NO_SECCOMP"] {
        let env = [(variable, "1")];
        let log = work.models().join(format!(".{variable}.log"));
        // No cache: each server must run the module, not answer an earlier server's result.
        let mut server = Server::start_logging_to(&work.models(), &["--no-cache"], &log, &env);
        let mut client = server.client().await;
        let info = client.server_info(ServerInfoRequest {}).await.unwrap().into_inner();
        assert!(info.model_code_protection.contains("TorchScript refused"), "{}", info.model_code_protection);
        assert!(info.model_code_protection.contains(variable), "{}", info.model_code_protection);
        let status = events(&mut client, small.clone()).await.unwrap_err();
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        let mechanism = if variable.ends_with("LANDLOCK") { "Landlock" } else { "seccomp" };
        assert!(status.message().contains(mechanism) && status.message().contains("--trust-torchscript"), "{status:?}");
        still_serves(&mut server, &mut client).await;
        drop(server);

        let trusted_log = work.models().join(format!(".{variable}-trusted.log"));
        let mut trusted = Server::start_logging_to(&work.models(), &["--trust-torchscript", "--no-cache"], &trusted_log, &env);
        let mut client = trusted.client().await;
        let info = client.server_info(ServerInfoRequest {}).await.unwrap().into_inner();
        assert!(info.model_code_protection.contains("TorchScript trusted (--trust-torchscript)"), "{}", info.model_code_protection);
        let events = events(&mut client, small.clone()).await.unwrap();
        assert_eq!(results(&events).len(), 1);
        assert!(!results(&events)[0].cached);
        still_serves(&mut trusted, &mut client).await;

        let out = work.models().join("refused");
        let from = work.file("reads_large.pt");
        let args = ["import", "--from", from.to_str().unwrap(), "--dataset", "digits", "--out", out.to_str().unwrap()];
        let refused = evaluator(&args, &env);
        assert!(!refused.status.success());
        assert!(
            stderr(&refused).contains("TorchScript models are refused") && stderr(&refused).contains(mechanism),
            "{}",
            stderr(&refused)
        );
        assert!(!out.exists());
        let models = work.models();
        let eval = [
            "eval",
            "--models-dir",
            models.to_str().unwrap(),
            "--model",
            "benign-at-small-batches",
            "--attacks",
            "clean",
            "--per-class",
            "1",
            "--batch-size",
            "2",
            "--device",
            "cpu",
            "--no-cache",
            "--quiet",
        ];
        let refused = evaluator(&eval, &env);
        assert!(!refused.status.success() && stderr(&refused).contains("--trust-torchscript"), "{}", stderr(&refused));
    }
}

/// A worker computes what the server computed in-process: the same counts, bit for bit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_compute_what_in_process_computes() {
    let work = Work::new();
    let models = work.models();
    let run = |extra: &[&str]| {
        let json = models.join(format!("{}.json", extra.len()));
        let mut args = vec![
            "eval",
            "--models-dir",
            models.to_str().unwrap(),
            "--model",
            common::MODEL,
            "--attacks",
            "clean,fgsm,pgd,aa@2",
            "--per-class",
            "3",
            "--device",
            "cpu",
            "--no-cache",
            "--quiet",
            "--json",
            json.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let output = evaluator(&args, &[]);
        assert!(output.status.success(), "{}", stderr(&output));
        let mut document: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
        for result in document["results"].as_array_mut().unwrap() {
            for volatile in ["elapsed_seconds", "components"] {
                if let Some(object) = result.as_object_mut() {
                    if volatile == "components" {
                        for component in object.get_mut("components").and_then(|c| c.as_array_mut()).into_iter().flatten() {
                            component.as_object_mut().map(|c| c.remove("seconds"));
                        }
                    } else {
                        object.remove(volatile);
                    }
                }
            }
        }
        document
    };
    assert_eq!(run(&[]), run(&["--in-process"]));
}

/// A worker that dies (here: SIGKILL from outside, as the OOM killer sends it) fails only its
/// job, with a status naming the signal; the server goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_dies_fails_only_its_job() {
    let work = Work::new();
    let mut server = Server::start(&work.models(), &["--trust-torchscript"]);
    let mut client = server.client().await;
    import_large(&work, "loops_large.pt", "loops", false);
    let mut stream = client.evaluate(request("loops", 2, AttackKind::Clean)).await.unwrap().into_inner();
    let started = Instant::now();
    let worker = loop {
        if let Some(&pid) = children(server.pid()).first() {
            break pid;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no worker process was started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Killed once it runs the model (it has loaded it when it reports progress).
    let mut progressed = false;
    while !progressed {
        match tokio::time::timeout(Duration::from_secs(30), stream.message()).await {
            Ok(Ok(Some(event))) => progressed = matches!(event.event, Some(rfb_proto::v1::evaluate_event::Event::Progress(_))),
            other => panic!("no progress before the kill: {other:?}"),
        }
    }
    let killed = Command::new("kill").args(["-KILL", &worker.to_string()]).status().unwrap();
    assert!(killed.success());
    let status = loop {
        match stream.message().await {
            Ok(Some(_)) => {}
            Ok(None) => panic!("the job finished although its worker was killed"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("killed by signal 9 (SIGKILL: out of memory"), "{status:?}");
    let left = wait_for_no_children(server.pid(), Duration::from_secs(10));
    assert!(left.is_empty(), "{left:?}");
    still_serves(&mut server, &mut client).await;
}

/// A worker holds nothing the server was started with: of the file descriptors only stdin,
/// stdout, stderr and its message pipe (not a file the server inherited, as from a shell's
/// `exec 7<secret`), of the environment only what libtorch needs (not a secret variable); and
/// it is the OOM killer's first choice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_inherits_no_descriptor_and_no_secret_variable() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let work = Work::new();
    let secret = work.dir.path().join("secret.txt");
    let inherited = std::fs::File::open(&secret).unwrap();
    let raw = inherited.as_raw_fd();
    let log = work.models().join(".server.log");
    let mut server = Server::start_customized(
        &work.models(),
        &["--trust-torchscript"],
        &log,
        &[("RFB_TEST_SECRET", "the-env-secret-42")],
        &mut |command| {
            // SAFETY: dup2 only; the new descriptor 7 has no CLOEXEC, as a shell's would not.
            unsafe {
                command.pre_exec(move || if libc::dup2(raw, 7) == 7 { Ok(()) } else { Err(std::io::Error::last_os_error()) });
            }
        },
    );
    drop(inherited);
    // The control: the server does hold it.
    let server_fd7 = std::fs::read_link(format!("/proc/{}/fd/7", server.pid())).unwrap();
    assert_eq!(server_fd7, std::fs::canonicalize(&secret).unwrap());
    let server_environ = std::fs::read(format!("/proc/{}/environ", server.pid())).unwrap();
    assert!(String::from_utf8_lossy(&server_environ).contains("RFB_TEST_SECRET=the-env-secret-42"));

    let mut client = server.client().await;
    import_large(&work, "loops_large.pt", "loops", false);
    let mut stream = client.evaluate(request("loops", 2, AttackKind::Clean)).await.unwrap().into_inner();
    // Looked at once it runs the model (it reports progress once it has loaded it).
    let mut progressed = false;
    while !progressed {
        match tokio::time::timeout(Duration::from_secs(60), stream.message()).await {
            Ok(Ok(Some(event))) => progressed = matches!(event.event, Some(rfb_proto::v1::evaluate_event::Event::Progress(_))),
            other => panic!("no progress: {other:?}"),
        }
    }
    let workers = children(server.pid());
    assert_eq!(workers.len(), 1, "{workers:?}");
    let worker = workers[0];

    let mut fds: Vec<u32> = std::fs::read_dir(format!("/proc/{worker}/fd"))
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
        .collect();
    fds.sort();
    let targets: Vec<String> = fds
        .iter()
        .map(|fd| std::fs::read_link(format!("/proc/{worker}/fd/{fd}")).map(|p| p.display().to_string()).unwrap_or_default())
        .collect();
    assert_eq!(fds, [0, 1, 2, 3], "the worker's descriptors: {targets:?}");
    assert!(targets.iter().all(|t| t.starts_with("pipe:")), "{targets:?}");

    let environ = String::from_utf8_lossy(&std::fs::read(format!("/proc/{worker}/environ")).unwrap()).into_owned();
    assert!(!environ.contains("RFB_TEST_SECRET") && !environ.contains("the-env-secret-42"), "{environ}");
    assert!(environ.contains(&format!("RFB_WORKER_PARENT_PID={}", server.pid())), "{environ}");

    let oom = std::fs::read_to_string(format!("/proc/{worker}/oom_score_adj")).unwrap();
    assert_eq!(oom.trim(), "1000");

    drop(stream);
    let left = wait_for_no_children(server.pid(), Duration::from_secs(10));
    assert!(left.is_empty(), "{left:?}");
    still_serves(&mut server, &mut client).await;
}
