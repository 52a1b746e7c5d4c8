//! Models sent over gRPC (UploadModel, DeleteModel, ServerInfo), end to end with the real
//! binary:
//!
//! * the trained digits model's state dict, uploaded in several chunks, gives per class and
//!   per attack (clean, FGSM, PGD-3, asked for by their command-line names) exactly the counts
//!   of the same file imported with `evaluator import`; the same upload again answers the same
//!   model; a TorchScript module uploads too; a client deletes its own model;
//! * every bad upload gets its status and leaves the models directory as it was (staging
//!   included): wrong sha256, a stream shorter or longer than declared, a client that goes
//!   away mid-way, over the file and per-client limits, a taken name, bytes that are no model,
//!   a pickle that calls os.system (which does not run), bad headers and streams, no token;
//!   a client may not delete another's model;
//! * uploads are off unless `--allow-uploads`, and staging leftovers are removed at start,
//!   but not the staging of another server running on the same models directory;
//! * an upload cancelled by its deadline while a (never-ending) TorchScript check runs is not
//!   published and its check worker is killed; with `--max-concurrent-imports 1` another
//!   upload waits for its turn meanwhile; without a deadline, serve's `--check-timeout` stops
//!   the checks (FAILED_PRECONDITION); DeleteModel on a server without uploads is
//!   FAILED_PRECONDITION whatever the name.

mod common;
use common::python;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{correct, events, Server};
use rfb_proto::v1::evaluator_client::EvaluatorClient;
use rfb_proto::v1::{
    upload_model_request::Part, AttackKind, AttackSpec, DeleteModelRequest, DescribeModelRequest, EvaluateRequest, ListModelsRequest,
    ModelFormat, ModelInfo, ServerInfoRequest, UploadHeader, UploadModelRequest,
};
use sha2::{Digest, Sha256};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

/// `tests/python/upload_files.py`'s files for the trained digits model (state_dict.pt,
/// torchscript.pt, evil.pt), made once per trained run and shared by the test processes.
fn model_files() -> PathBuf {
    let trained = common::trained_run();
    let root = trained.parent().unwrap();
    let done = root.join(format!("upload-files-{}", trained.file_name().unwrap().to_string_lossy()));
    if done.join("evil.pt").is_file() {
        return done;
    }
    let scratch = root.join(format!("upload-files-scratch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/python/upload_files.py");
    let output = Command::new(python())
        .arg(script)
        .arg(trained.join("best"))
        .arg(&scratch)
        .env("OMP_NUM_THREADS", "1")
        .output()
        .expect("start python");
    assert!(output.status.success(), "upload_files.py: {}", String::from_utf8_lossy(&output.stderr));
    // Another process may have made them meanwhile: either copy will do.
    if std::fs::rename(&scratch, &done).is_err() {
        let _ = std::fs::remove_dir_all(&scratch);
    }
    assert!(done.join("evil.pt").is_file());
    done
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn header(name: &str, bytes: &[u8], format: ModelFormat, architecture: &str) -> UploadHeader {
    UploadHeader {
        name: name.into(),
        dataset: "digits".into(),
        format: format as i32,
        architecture: architecture.into(),
        size: bytes.len() as u64,
        sha256: sha256_hex(bytes),
        file_name: "model.pt".into(),
        ..Default::default()
    }
}

fn state_dict_header(name: &str, bytes: &[u8]) -> UploadHeader {
    header(name, bytes, ModelFormat::StateDict, "digits-cnn")
}

/// The header, then `bytes` in chunks of `chunk` bytes.
fn messages(header: UploadHeader, bytes: &[u8], chunk: usize) -> Vec<UploadModelRequest> {
    let mut messages = vec![UploadModelRequest { part: Some(Part::Header(header)) }];
    messages.extend(bytes.chunks(chunk).map(|c| UploadModelRequest { part: Some(Part::Chunk(c.to_vec())) }));
    messages
}

fn with_token<T>(token: Option<&str>, body: T) -> Request<T> {
    let mut request = Request::new(body);
    if let Some(token) = token {
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    request
}

async fn upload(
    client: &mut EvaluatorClient<Channel>,
    token: Option<&str>,
    messages: Vec<UploadModelRequest>,
) -> Result<ModelInfo, Status> {
    client.upload_model(with_token(token, tokio_stream::iter(messages))).await.map(|r| r.into_inner())
}

/// Every path below `dir` (staging and cache included, the server's log left out), with each
/// file's size.
fn listing(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap().filter_map(Result::ok) {
            let path = entry.path();
            let name = path.strip_prefix(root).unwrap().display().to_string();
            if name.ends_with(".server.log") {
                continue;
            }
            let metadata = path.symlink_metadata().unwrap();
            if metadata.is_dir() {
                out.push(format!("{name}/"));
                walk(root, &path, out);
            } else {
                out.push(format!("{name} {}", metadata.len()));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// The files staged under `.rfb-staging` (every server's), lock files left out, with their
/// total bytes.
fn staged_files(models: &Path) -> (usize, u64) {
    let staging = models.join(".rfb-staging");
    listing(&staging)
        .iter()
        .filter(|p| !p.ends_with('/'))
        .filter_map(|p| p.rsplit_once(' '))
        .filter(|(path, _)| !path.ends_with(".lock"))
        .fold((0, 0), |(count, bytes), (_, size)| (count + 1, bytes + size.parse::<u64>().unwrap()))
}

/// The server's worker processes (model code, import checks) now running.
fn workers_of(server: &Server) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // pid (comm) state ppid ...: the comm may hold spaces, so split after its ')'.
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        let mut fields = rest.split_whitespace();
        let (state, ppid) = (fields.next().unwrap_or(""), fields.next().and_then(|p| p.parse::<u32>().ok()));
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if ppid == Some(server.pid()) && state != "Z" && String::from_utf8_lossy(&cmdline).contains("sandboxed-worker") {
            found.push(pid);
        }
    }
    found
}

/// Per attack, its name and per-class correct counts.
async fn counts(client: &mut EvaluatorClient<Channel>, token: Option<&str>, request: EvaluateRequest) -> Vec<(String, Vec<i64>)> {
    let mut stream = client.evaluate(with_token(token, request)).await.unwrap().into_inner();
    let mut found = Vec::new();
    while let Some(event) = stream.message().await.unwrap() {
        if let Some(rfb_proto::v1::evaluate_event::Event::Result(result)) = event.event {
            assert_eq!(result.classes.iter().map(|c| c.total).collect::<Vec<_>>(), vec![5; 10]);
            found.push((result.attack_name.clone(), correct(&result)));
        }
    }
    found
}

fn spec(kind: AttackKind, steps: Option<i64>) -> AttackSpec {
    AttackSpec { kind: kind as i32, steps, ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uploaded_state_dict_counts_as_its_cli_import() {
    let files = model_files();
    let models = common::models_dir();
    let state_dict = std::fs::read(files.join("state_dict.pt")).unwrap();
    let imported = common::evaluator_cli(&[
        "import",
        "--from",
        files.join("state_dict.pt").to_str().unwrap(),
        "--out",
        models.path().join("cli").to_str().unwrap(),
        "--arch",
        "digits-cnn",
        "--dataset",
        "digits",
    ]);
    assert!(imported.status.success(), "{}", String::from_utf8_lossy(&imported.stderr));
    // No cache: both models are computed, not one answered from the other's results.
    let server = Server::start(models.path(), &["--allow-uploads", "--no-cache"]);
    let mut client = server.client().await;

    let info = client.server_info(ServerInfoRequest {}).await.unwrap().into_inner();
    assert!(info.uploads_enabled);
    assert_eq!(info.your_upload_prefix, "uploads/local");
    assert_eq!(info.max_upload_bytes, rfb_evaluator::uploads::DEFAULT_MAX_UPLOAD_BYTES);
    assert_eq!(info.max_uploads_per_client, rfb_evaluator::uploads::DEFAULT_MAX_UPLOADS_PER_CLIENT);
    assert_eq!(info.device, "cpu");
    // What it says is the sandbox test's; here only that the server says it.
    assert!(!info.model_code_protection.is_empty(), "{info:?}");
    assert!(info.versions.unwrap().evaluator.starts_with("rfb-evaluator"));

    // In several chunks (the state dict is about 100 KB).
    let chunk = state_dict.len() / 5 + 1;
    let started = Instant::now();
    let uploaded = upload(&mut client, None, messages(state_dict_header("digits/sd", &state_dict), &state_dict, chunk)).await.unwrap();
    eprintln!("uploaded {} bytes in {:.3} s", state_dict.len(), started.elapsed().as_secs_f64());
    assert_eq!(uploaded.name, "uploads/local/digits/sd");
    assert_eq!((uploaded.architecture.as_str(), uploaded.dataset.as_str(), uploaded.method.as_str()), ("digits-cnn", "digits", "imported"));
    let cli = client.describe_model(DescribeModelRequest { model: "cli".into() }).await.unwrap().into_inner();
    assert_eq!(uploaded.weights_sha256, cli.weights_sha256, "the same weights as the CLI's import");
    let manifest: serde_json::Value = serde_json::from_str(&uploaded.manifest_json).unwrap();
    assert_eq!(manifest["source"]["sha256"], sha256_hex(&state_dict));
    assert_eq!(manifest["source"]["file"], "model.pt");
    let names: Vec<String> =
        client.list_models(ListModelsRequest {}).await.unwrap().into_inner().models.into_iter().map(|m| m.name).collect();
    assert!(names.contains(&uploaded.name), "{names:?}");
    assert!(!names.iter().any(|n| n.contains("staging")), "{names:?}");

    // The same counts per class and attack: the uploaded model asked for by attack names, the
    // imported one by specs.
    let by_names = EvaluateRequest {
        model: uploaded.name.clone(),
        examples_per_class: 5,
        attack_names: "clean, fgsm,pgd-3".into(),
        ..Default::default()
    };
    let by_specs = EvaluateRequest {
        model: "cli".into(),
        examples_per_class: 5,
        attacks: vec![spec(AttackKind::Clean, None), spec(AttackKind::Fgsm, None), spec(AttackKind::Pgd, Some(3))],
        ..Default::default()
    };
    let uploaded_counts = counts(&mut client, None, by_names).await;
    let cli_counts = counts(&mut client, None, by_specs).await;
    eprintln!("{uploaded_counts:?}");
    assert_eq!(uploaded_counts.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["Clean", "FGSM", "PGD-3"]);
    assert!(uploaded_counts[0].1.iter().sum::<i64>() > 25, "a trained model: {uploaded_counts:?}");
    assert_eq!(uploaded_counts, cli_counts);
    // Both ways of naming attacks at once are refused.
    let both = EvaluateRequest {
        model: uploaded.name.clone(),
        examples_per_class: 5,
        attacks: vec![spec(AttackKind::Clean, None)],
        attack_names: "clean".into(),
        ..Default::default()
    };
    let refused = events(&mut client, both).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");

    // The same upload again answers the same model and changes nothing.
    let before = listing(models.path());
    let again = upload(&mut client, None, messages(state_dict_header("digits/sd", &state_dict), &state_dict, 4096)).await.unwrap();
    assert_eq!((again.name.as_str(), again.weights_sha256.as_str()), (uploaded.name.as_str(), uploaded.weights_sha256.as_str()));
    assert_eq!(listing(models.path()), before);

    // A TorchScript module, told from its contents (format left unspecified), in one chunk.
    let torchscript = std::fs::read(files.join("torchscript.pt")).unwrap();
    let scripted = upload(
        &mut client,
        None,
        messages(header("scripted", &torchscript, ModelFormat::Unspecified, ""), &torchscript, torchscript.len()),
    )
    .await
    .unwrap();
    assert_eq!((scripted.name.as_str(), scripted.architecture.as_str()), ("uploads/local/scripted", "torchscript"));
    assert_eq!(scripted.weights_sha256, sha256_hex(&torchscript), "kept as sent");
    let clean = |model: &str| EvaluateRequest {
        model: model.into(),
        examples_per_class: 5,
        attacks: vec![spec(AttackKind::Clean, None)],
        ..Default::default()
    };
    let scripted_counts = counts(&mut client, None, clean(&scripted.name)).await;
    assert_eq!(scripted_counts[0].1, uploaded_counts[0].1, "the traced network is the same function");

    // Two uploads of one name at once, with other bytes: exactly one wins; with the same
    // bytes and header, both get the one model.
    for (other, other_format) in [(&torchscript, ModelFormat::Torchscript), (&state_dict, ModelFormat::StateDict)] {
        let name = format!("race-{}", other_format.as_str_name().to_lowercase());
        let (mut a, mut b) = (client.clone(), client.clone());
        let first = messages(state_dict_header(&name, &state_dict), &state_dict, 20_000);
        let arch = if other_format == ModelFormat::StateDict { "digits-cnn" } else { "" };
        let second = messages(header(&name, other, other_format, arch), other, 20_000);
        let (first, second) = tokio::join!(upload(&mut a, None, first), upload(&mut b, None, second));
        let outcomes = [&first, &second].map(|r| r.as_ref().map(|m| m.weights_sha256.clone()).map_err(|s| s.code()));
        eprintln!("{name}: {outcomes:?}");
        if other_format == ModelFormat::StateDict {
            assert!(outcomes[0].is_ok() && outcomes[0] == outcomes[1], "{outcomes:?}");
        } else {
            assert_eq!(outcomes.iter().filter(|o| o.is_ok()).count(), 1, "{outcomes:?}");
            assert!(outcomes.contains(&Err(Code::AlreadyExists)), "{outcomes:?}");
        }
    }

    // Deleting: only one's own, and then it is gone.
    let denied = client.delete_model(DeleteModelRequest { model: "natural-s0/best".into() }).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    let missing = client.delete_model(DeleteModelRequest { model: "uploads/local/nothing".into() }).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
    let dir_bytes: u64 = walkdir_bytes(&models.path().join("uploads/local/digits/sd"));
    let freed = client.delete_model(DeleteModelRequest { model: uploaded.name.clone() }).await.unwrap().into_inner();
    assert_eq!(freed.bytes, dir_bytes);
    assert!(!models.path().join("uploads/local/digits").exists(), "the empty directory the name made is gone too");
    let gone = client.describe_model(DescribeModelRequest { model: uploaded.name.clone() }).await.unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    assert_eq!(staged_files(models.path()), (0, 0), "nothing left in staging");
    assert!(server.log().contains("model uploaded"), "uploads are logged");
}

fn walkdir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| {
            let m = e.path().symlink_metadata().unwrap();
            if m.is_dir() {
                walkdir_bytes(&e.path())
            } else {
                m.len()
            }
        })
        .sum()
}

/// What is wrong, the token, the stream, the status and a phrase of its message.
type BadUpload<'a> = (&'a str, Option<&'a str>, Vec<UploadModelRequest>, Code, &'a str);

/// Waits until the models directory lists as `expected` (a handler's clean-up runs after the
/// client has its answer).
fn settles_to(models: &Path, expected: &[String]) -> bool {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        if listing(models) == expected {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_uploads_get_their_status_and_leave_nothing() {
    let files = model_files();
    let models = common::models_dir();
    let tokens = models.path().join(".tokens");
    std::fs::write(&tokens, "alice alice-s3cret\nbob bob-s3cret\n").unwrap();
    let max_file = 5 << 20;
    let server = Server::start(
        models.path(),
        &[
            "--allow-uploads",
            "--token-file",
            tokens.to_str().unwrap(),
            "--max-uploads-per-client",
            "1",
            "--max-upload-bytes",
            &max_file.to_string(),
        ],
    );
    let mut client = server.client().await;
    let (alice, bob) = (Some("alice-s3cret"), Some("bob-s3cret"));
    let state_dict = std::fs::read(files.join("state_dict.pt")).unwrap();
    let torchscript = std::fs::read(files.join("torchscript.pt")).unwrap();

    let info = client.server_info(with_token(bob, ServerInfoRequest {})).await.unwrap().into_inner();
    assert_eq!((info.your_upload_prefix.as_str(), info.max_uploads_per_client, info.max_upload_bytes), ("uploads/bob", 1, max_file));
    // Alice takes her one model.
    let kept = upload(&mut client, alice, messages(state_dict_header("m", &state_dict), &state_dict, 30_000)).await.unwrap();
    assert_eq!(kept.name, "uploads/alice/m");

    let before = listing(models.path());
    assert!(before.iter().any(|p| p.starts_with(".rfb-staging/")), "{before:?}");
    let random: Vec<u8> = (0..(4 << 20) + 10u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let evil = std::fs::read(files.join("evil.pt")).unwrap();
    let mut wrong_sha = state_dict_header("wrong-sha", &state_dict);
    wrong_sha.sha256 = sha256_hex(b"other bytes");
    let mut short = state_dict_header("short", &state_dict);
    short.size += 100;
    let mut long = state_dict_header("long", &state_dict);
    long.size -= 100;
    let mut too_big = header("big", &random, ModelFormat::Unspecified, "");
    too_big.size = max_file + 1;
    let dotdot = state_dict_header("a/../b", &state_dict);
    let mut two_headers = messages(state_dict_header("two", &state_dict), &state_dict, 50_000);
    two_headers.insert(2, two_headers[0].clone());
    let mut chunk_first = messages(state_dict_header("first", &state_dict), &state_dict, 50_000);
    chunk_first.swap(0, 1);
    let mut no_arch = state_dict_header("no-arch", &state_dict);
    no_arch.architecture.clear();
    let cases: Vec<BadUpload> = vec![
        ("wrong sha256", bob, messages(wrong_sha, &state_dict, 30_000), Code::InvalidArgument, "sha256 mismatch"),
        ("declared larger than sent", bob, messages(short, &state_dict, 30_000), Code::InvalidArgument, "stream ended after"),
        ("sent more than declared", bob, messages(long, &state_dict, 30_000), Code::InvalidArgument, "more bytes than"),
        ("over the file limit", bob, messages(too_big, &random, 1 << 20), Code::ResourceExhausted, "--max-upload-bytes"),
        (
            "over the per-client count",
            alice,
            messages(state_dict_header("second", &state_dict), &state_dict, 30_000),
            Code::ResourceExhausted,
            "--max-uploads-per-client",
        ),
        (
            "a taken name, other bytes",
            alice,
            messages(header("m", &torchscript, ModelFormat::Torchscript, ""), &torchscript, 30_000),
            Code::AlreadyExists,
            "another header or other bytes",
        ),
        // 4 MiB chunks pass the transport's limit; the bytes are no model.
        (
            "not a model",
            bob,
            messages(header("random", &random, ModelFormat::Unspecified, ""), &random, 4 << 20),
            Code::InvalidArgument,
            "neither a PyTorch state dict nor a TorchScript module",
        ),
        (
            "a pickle that calls os.system",
            bob,
            messages(header("evil", &evil, ModelFormat::Unspecified, "digits-cnn"), &evil, 30_000),
            Code::InvalidArgument,
            "system",
        ),
        ("a state dict without its architecture", bob, messages(no_arch, &state_dict, 30_000), Code::InvalidArgument, "architecture"),
        ("a name with ..", bob, messages(dotdot, &state_dict, 30_000), Code::InvalidArgument, "'..'"),
        ("two headers", bob, two_headers, Code::InvalidArgument, "second UploadHeader"),
        ("a chunk first", bob, chunk_first, Code::InvalidArgument, "first message must be the UploadHeader"),
        ("nothing", bob, vec![], Code::InvalidArgument, "no UploadHeader"),
        ("no token", None, messages(state_dict_header("anon", &state_dict), &state_dict, 30_000), Code::Unauthenticated, ""),
        ("a wrong token", Some("guess"), messages(state_dict_header("anon", &state_dict), &state_dict, 30_000), Code::Unauthenticated, ""),
    ];
    let models_path = models.path().canonicalize().unwrap().display().to_string();
    for (what, token, stream, code, says) in cases {
        let refused = upload(&mut client, token, stream).await.unwrap_err();
        eprintln!("{what}: {:?}: {}", refused.code(), refused.message());
        assert_eq!(refused.code(), code, "{what}: {refused:?}");
        assert!(refused.message().contains(says), "{what}: {refused:?}");
        assert!(!refused.message().contains(&models_path) && !refused.message().contains("rfb-staging"), "{what}: {refused:?}");
        assert!(settles_to(models.path(), &before), "{what} left something:\n{:?}\nwas\n{before:?}", listing(models.path()));
    }
    assert!(!files.join("pwned").exists(), "the pickle's command ran");

    // A chunk above 4 MiB is refused by the service, and one above its message limit (4 MiB
    // and 64 KiB) by the transport.
    for (extra, code) in [(1, Code::InvalidArgument), (128 << 10, Code::OutOfRange)] {
        let big_chunk: Vec<u8> = vec![7; (4 << 20) + extra];
        let stream = messages(header("big-chunk", &big_chunk, ModelFormat::Unspecified, ""), &big_chunk, big_chunk.len());
        let refused = upload(&mut client, bob, stream).await.unwrap_err();
        eprintln!("a chunk of 4 MiB + {extra}: {:?}: {}", refused.code(), refused.message());
        assert_eq!(refused.code(), code, "{refused:?}");
        assert!(settles_to(models.path(), &before), "a too big chunk left something");
    }

    // A client that goes away mid-way: header and one chunk sent, the call dropped.
    let (sender, receiver) = tokio::sync::mpsc::channel(4);
    let mut dropping = client.clone();
    let call =
        tokio::spawn(async move { dropping.upload_model(with_token(bob, tokio_stream::wrappers::ReceiverStream::new(receiver))).await });
    for message in messages(state_dict_header("dropped", &state_dict), &state_dict, 30_000).into_iter().take(2) {
        sender.send(message).await.unwrap();
    }
    let started = Instant::now();
    while staged_files(models.path()).1 == 0 {
        assert!(started.elapsed() < Duration::from_secs(10), "the first chunk never reached staging");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    call.abort();
    drop(sender);
    assert!(settles_to(models.path(), &before), "a dropped upload left something:\n{:?}", listing(models.path()));

    // Deleting: not another client's model; one's own frees its place.
    let denied = client.delete_model(with_token(bob, DeleteModelRequest { model: kept.name.clone() })).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert_eq!(listing(models.path()), before);
    let freed = client.delete_model(with_token(alice, DeleteModelRequest { model: kept.name.clone() })).await.unwrap().into_inner();
    assert!(freed.bytes > state_dict.len() as u64 / 2, "{freed:?}");
    let second = upload(&mut client, alice, messages(state_dict_header("second", &state_dict), &state_dict, 30_000)).await.unwrap();
    assert_eq!(second.name, "uploads/alice/second", "the deleted model no longer counts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_are_off_unless_allowed_and_staging_leftovers_go() {
    let models = common::models_dir();
    let bytes = b"some bytes".to_vec();
    let server = Server::start(models.path(), &[]);
    let mut client = server.client().await;
    let info = client.server_info(ServerInfoRequest {}).await.unwrap().into_inner();
    assert!(!info.uploads_enabled);
    assert_eq!((info.max_upload_bytes, info.max_uploads_per_client, info.max_upload_bytes_per_client), (0, 0, 0));
    let refused = upload(&mut client, None, messages(header("m", &bytes, ModelFormat::Unspecified, ""), &bytes, 4)).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("--allow-uploads"), "{refused:?}");
    for model in ["uploads/local/m", "../not/a name"] {
        let refused = client.delete_model(DeleteModelRequest { model: model.into() }).await.unwrap_err();
        assert_eq!(refused.code(), Code::FailedPrecondition, "{model}: uploads are off, whatever the name: {refused:?}");
    }
    assert!(!models.path().join(".rfb-staging").exists() && !models.path().join("uploads").exists());
    drop(server);

    // What a killed server left in staging is removed at start.
    let leftover = models.path().join(".rfb-staging/server-1-killed");
    std::fs::create_dir_all(&leftover).unwrap();
    std::fs::write(leftover.join("model.pt"), b"half a file").unwrap();
    let first = Server::start(models.path(), &["--allow-uploads"]);
    let staging = models.path().join(".rfb-staging");
    assert!(!leftover.exists());
    assert_eq!(staged_files(models.path()), (0, 0));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&staging).unwrap().permissions().mode() & 0o777, 0o700);

    // A second server on the same models directory leaves the first one's upload in progress
    // alone, and that upload then completes.
    let files = model_files();
    let state_dict = std::fs::read(files.join("state_dict.pt")).unwrap();
    let (sender, receiver) = tokio::sync::mpsc::channel(4);
    let mut uploading = first.client().await;
    let call = tokio::spawn(async move { uploading.upload_model(tokio_stream::wrappers::ReceiverStream::new(receiver)).await });
    let mut parts = messages(state_dict_header("shared", &state_dict), &state_dict, 30_000).into_iter();
    for message in parts.by_ref().take(2) {
        sender.send(message).await.unwrap();
    }
    let started = Instant::now();
    while staged_files(models.path()).1 == 0 {
        assert!(started.elapsed() < Duration::from_secs(10), "the first chunk never reached staging");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let staged = staged_files(models.path());
    let second = Server::start_logging_to(models.path(), &["--allow-uploads"], &models.path().join("second.server.log"), &[]);
    assert_eq!(staged_files(models.path()), staged, "the second server's start kept the first one's upload");
    for message in parts {
        sender.send(message).await.unwrap();
    }
    drop(sender);
    let uploaded = call.await.unwrap().unwrap().into_inner();
    assert_eq!(uploaded.name, "uploads/local/shared");
    let mut other = second.client().await;
    let seen = other.describe_model(DescribeModelRequest { model: uploaded.name.clone() }).await.unwrap().into_inner();
    assert_eq!(seen.weights_sha256, uploaded.weights_sha256);
}

/// `tests/python/hostile_models.py`'s modules (loops_always.pt: a forward that never ends).
fn hostile_modules() -> tempfile::TempDir {
    let out = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/python/hostile_models.py");
    let nowhere = out.path().join("nowhere").display().to_string();
    let output = Command::new(python())
        .arg(script)
        .arg(out.path())
        .arg(&nowhere)
        .arg(&nowhere)
        .env("OMP_NUM_THREADS", "1")
        .output()
        .expect("start python");
    assert!(output.status.success(), "hostile_models.py: {}", String::from_utf8_lossy(&output.stderr));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_upload_is_not_published_and_its_check_worker_stops() {
    let files = model_files();
    let hostile = hostile_modules();
    let models = common::models_dir();
    // Trusted, so that the module's checks start on any machine (in a worker process either way).
    let server =
        Server::start(models.path(), &["--allow-uploads", "--trust-torchscript", "--max-concurrent-imports", "1", "--check-timeout", "8s"]);
    let mut client = server.client().await;
    let state_dict = std::fs::read(files.join("state_dict.pt")).unwrap();
    let looping = std::fs::read(hostile.path().join("loops_always.pt")).unwrap();
    let before = listing(models.path());

    // A module whose checks never end (the check timeout is 10 minutes), sent with a deadline.
    let mut slow = client.clone();
    let mut request =
        Request::new(tokio_stream::iter(messages(header("loops", &looping, ModelFormat::Torchscript, ""), &looping, looping.len())));
    request.set_timeout(Duration::from_secs(5));
    let call = tokio::spawn(async move { slow.upload_model(request).await });
    let started = Instant::now();
    while workers_of(&server).is_empty() {
        assert!(started.elapsed() < Duration::from_secs(5), "the module's check worker never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Meanwhile the one import permit is taken: a state dict (imported in well under a second)
    // waits for its turn, and its deadline passes while it waits.
    let mut waiting = Request::new(tokio_stream::iter(messages(state_dict_header("waits", &state_dict), &state_dict, 30_000)));
    waiting.set_timeout(Duration::from_millis(1500));
    let sent = Instant::now();
    let refused = client.upload_model(waiting).await.unwrap_err();
    // tonic's own timeout answers CANCELLED ("Timeout expired"), the server DEADLINE_EXCEEDED.
    assert!(matches!(refused.code(), Code::DeadlineExceeded | Code::Cancelled), "{refused:?}");
    assert!(sent.elapsed() >= Duration::from_millis(1400), "it waited for the deadline: {refused:?}");

    let ended = call.await.unwrap().unwrap_err();
    eprintln!("the looping module's upload: {:?}: {}", ended.code(), ended.message());
    assert!(matches!(ended.code(), Code::DeadlineExceeded | Code::Cancelled), "{ended:?}");
    // Nothing published or staged, and the check worker is gone, soon after the deadline (well
    // before the check timeout, 3 s later, would have stopped it).
    let cancelled = Instant::now();
    while !(workers_of(&server).is_empty() && listing(models.path()) == before) {
        assert!(
            cancelled.elapsed() < Duration::from_secs(2),
            "after the deadline: workers {:?}, models dir\n{:?}\nwas\n{before:?}",
            workers_of(&server),
            listing(models.path())
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(workers_of(&server).is_empty() && listing(models.path()) == before, "nothing came back");
    assert!(common::wait_for_log(&server, "upload cancelled", Duration::from_secs(5)), "the cancellation is logged");

    // The permit was returned: the next upload is imported at once.
    let uploaded = upload(&mut client, None, messages(state_dict_header("after", &state_dict), &state_dict, 30_000)).await.unwrap();
    assert_eq!(uploaded.name, "uploads/local/after");

    // Without a deadline, the module's checks stop at serve's --check-timeout.
    let before = listing(models.path());
    let sent = Instant::now();
    let timed_out = upload(&mut client, None, messages(header("loops", &looping, ModelFormat::Torchscript, ""), &looping, looping.len()))
        .await
        .unwrap_err();
    assert_eq!(timed_out.code(), Code::FailedPrecondition, "{timed_out:?}");
    assert!(timed_out.message().contains("within 8s"), "{timed_out:?}");
    assert!(sent.elapsed() >= Duration::from_secs(8), "{:?}", sent.elapsed());
    assert!(settles_to(models.path(), &before) && workers_of(&server).is_empty());
}
