//! The shared evaluation service under requests meant to take it down or monopolise it, on the
//! real binary on loopback: parameters checked against the data before anything is allocated,
//! the cost budget, cancellation and deadlines inside a batch, the bounded and fair queue,
//! clients that vanish, graceful shutdown on SIGTERM, the refusal to serve the network without
//! a token, and a one-minute load test of 32 clients.

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rfb_proto::v1::evaluator_client::EvaluatorClient;
use rfb_proto::v1::{evaluate_event::Event, AttackKind, AttackSpec, EvaluateEvent, EvaluateRequest, Split};
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};

/// A PGD job of 10 000 steps on 10 digits per class in one batch: one batch is far longer
/// than any test waits (minutes on a CPU), so only cancellation inside a batch can stop it.
fn endless(seed: u64) -> EvaluateRequest {
    EvaluateRequest {
        batch_size: 100,
        ..request(10, vec![AttackSpec { eps: Some(0.1), steps: Some(10_000), seed, ..spec(AttackKind::Pgd) }])
    }
}

fn with_token<T>(token: &str, body: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(body);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

/// Reads a stream until `stop` accepts an event (the event is returned with the stream).
async fn until(stream: &mut Streaming<EvaluateEvent>, stop: impl Fn(&Event) -> bool) -> Event {
    loop {
        let event = stream.message().await.expect("no error yet").expect("the stream goes on").event.unwrap();
        if stop(&event) {
            return event;
        }
    }
}

fn is_running(event: &Event) -> bool {
    matches!(event, Event::Progress(_))
}

fn is_queued(event: &Event) -> bool {
    matches!(event, Event::Queued(_))
}

/// The status a stream ends with (OK when it ends normally).
async fn final_status(stream: &mut Streaming<EvaluateEvent>) -> Status {
    loop {
        match stream.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => return Status::ok(""),
            Err(status) => return status,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_requests_are_refused_before_anything_is_allocated() {
    let root = tempfile::tempdir().unwrap();
    let (models, data) = common::cifar_fixture(root.path(), 20);
    let mut server = Server::start(&models, &["--data-dir", data.to_str().unwrap()]);
    let mut client = server.client().await;
    let cifar = |split: Split, per_class: i64| EvaluateRequest {
        model: "cifar/best".into(),
        split: split as i32,
        examples_per_class: per_class,
        attacks: vec![spec(AttackKind::Clean)],
        ..Default::default()
    };
    // 10^12 examples per class of splits no request has loaded: refused from the labels alone.
    for split in [Split::Train, Split::Validation] {
        let status = events(&mut client, cifar(split, 1_000_000_000_000)).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{split:?}: {status:?}");
        assert!(status.message().contains("examples_per_class is 1000000000000"), "{}", status.message());
        assert!(server.alive(), "the server survives a request for 10^12 examples per class ({split:?})");
    }
    // The validation split holds one example per class (2 %, at least one), the train split 19.
    let status = events(&mut client, cifar(Split::Validation, 2)).await.unwrap_err();
    assert!(status.message().contains("has only 1 examples"), "{}", status.message());
    let status = events(&mut client, cifar(Split::Train, 20)).await.unwrap_err();
    assert!(status.message().contains("has only 19 examples"), "{}", status.message());
    // Nothing of those splits was loaded to say so.
    assert!(!server.log().contains("loading data set"), "{}", server.log());
    // What fits is served.
    for (split, per_class) in [(Split::Validation, 1), (Split::Train, 19), (Split::Test, 0)] {
        let found = results(&events(&mut client, cifar(split, per_class)).await.unwrap());
        let examples: i64 = found[0].classes.iter().map(|c| c.total).sum();
        assert_eq!(examples, if per_class == 0 { 30 } else { 10 * per_class }, "{split:?}");
    }

    // The 200 000 AutoAttack components, and the other repeated or free-form fields.
    let components = vec!["apgd-ce".to_string(); 200_000];
    let cases: Vec<(EvaluateRequest, &str)> = vec![
        (request(1, vec![AttackSpec { components, ..spec(AttackKind::AutoattackCustom) }]), "at most 16"),
        (request(1, vec![spec(AttackKind::Clean); 65]), "at most 64"),
        (EvaluateRequest { model: "m".repeat(5000), ..request(1, vec![spec(AttackKind::Clean)]) }, "model name"),
        (EvaluateRequest { dataset: "d".repeat(100), ..request(1, vec![spec(AttackKind::Clean)]) }, "data set name"),
        (request(1, vec![AttackSpec { components: vec!["x".repeat(100)], ..spec(AttackKind::AutoattackCustom) }]), "component name"),
        (request(i64::MAX, vec![spec(AttackKind::Clean)]), "examples_per_class"),
    ];
    for (mut bad, word) in cases {
        if bad.model == MODEL {
            bad.model = "cifar/best".into();
        }
        let started = Instant::now();
        let status = events(&mut client, bad).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(word), "{:?} should name {word:?}", status.message());
        assert!(status.message().len() < 1000, "the message does not echo the request");
        assert!(started.elapsed() < Duration::from_secs(10));
    }
    assert!(server.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_above_the_cost_limit_is_refused_with_its_estimate() {
    let models = models_dir();
    let mut server = Server::start(models.path(), &[]);
    let mut client = server.client().await;
    // PGD 10 000 steps x 100 restarts on the 364 digits test images: 364 x 1 000 001 passes.
    let costly = request(0, vec![AttackSpec { steps: Some(10_000), restarts: Some(100), ..spec(AttackKind::Pgd) }]);
    let status = events(&mut client, costly).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    for figure in ["364000364", "364 examples", "1000001 passes", "200000000", "--max-job-cost"] {
        assert!(status.message().contains(figure), "{:?} should contain {figure:?}", status.message());
    }
    // An operator's own limit: PGD-20 and FGSM on 50 examples are 50 x (21 + 1) passes.
    let server_limit = Server::start(models.path(), &["--max-job-cost", "1000"]);
    let mut small = server_limit.client().await;
    let status = events(&mut small, request(5, vec![spec(AttackKind::Pgd), spec(AttackKind::Fgsm)])).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(status.message().contains("1100 forward+backward passes"), "{}", status.message());
    // Under the limit: served.
    let cheap = results(&events(&mut small, request(5, vec![spec(AttackKind::Clean), spec(AttackKind::Fgsm)])).await.unwrap());
    assert_eq!(cheap.len(), 2);
    assert!(server.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_and_cancellation_stop_a_job_inside_its_batch() {
    let models = models_dir();
    let mut server = Server::start(models.path(), &[]);
    let mut client = server.client().await;

    // A 10 000-step PGD job with a 5 s deadline ends within 10 s.
    let mut expiring = tonic::Request::new(endless(1));
    expiring.set_timeout(Duration::from_secs(5));
    let started = Instant::now();
    let outcome = async {
        let mut stream = client.evaluate(expiring).await?.into_inner();
        while stream.message().await?.is_some() {}
        Ok::<_, Status>(())
    }
    .await;
    let ended = started.elapsed();
    let status = outcome.expect_err("10 000 steps do not finish in 5 s");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(ended < Duration::from_secs(10), "ended after {ended:?}");
    // The worker stopped too: the next request is served at once, not after the batch.
    let next = Instant::now();
    let clean = events(&mut client, request(2, vec![spec(AttackKind::Clean)])).await.unwrap();
    assert!(matches!(clean.last(), Some(Event::Done(_))));
    eprintln!("deadline: client status after {ended:.2?}, next request answered in {:.2?}", next.elapsed());
    assert!(next.elapsed() < Duration::from_secs(10), "the next request waited {:?}", next.elapsed());
    assert!(server.log().contains("its deadline passed"));

    // Cancelled while its first (and only) batch runs.
    let mut stream = client.evaluate(endless(2)).await.unwrap().into_inner();
    until(&mut stream, is_running).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(stream);
    let next = Instant::now();
    let clean = events(&mut client, request(3, vec![spec(AttackKind::Clean)])).await.unwrap();
    assert!(matches!(clean.last(), Some(Event::Done(_))));
    eprintln!("cancel: next request answered in {:.2?}", next.elapsed());
    assert!(next.elapsed() < Duration::from_secs(10));
    assert!(wait_for_log(&server, "cancelled by the client", Duration::from_secs(5)));
    assert!(server.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_is_bounded_and_clients_take_turns() {
    let models = models_dir();
    let tokens = models.path().join(".tokens");
    std::fs::write(&tokens, "alice-token\nbob-token\n").unwrap();
    let server =
        Server::start(models.path(), &["--token-file", tokens.to_str().unwrap(), "--max-queue", "3", "--max-queue-per-client", "2"]);
    let mut client = server.client().await;
    let alice = |r: EvaluateRequest| with_token("alice-token", r);
    let bob = |r: EvaluateRequest| with_token("bob-token", r);

    let mut running = client.evaluate(alice(endless(1))).await.unwrap().into_inner();
    until(&mut running, is_running).await;
    let mut a1 = client.evaluate(alice(endless(2))).await.unwrap().into_inner();
    let mut a2 = client.evaluate(alice(endless(3))).await.unwrap().into_inner();
    assert!(matches!(until(&mut a1, is_queued).await, Event::Queued(q) if q.ahead == 0));
    assert!(matches!(until(&mut a2, is_queued).await, Event::Queued(q) if q.ahead == 1));
    // Alice's share is full.
    let status = client.evaluate(alice(endless(4))).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("--max-queue-per-client 2"), "{}", status.message());
    // Bob's first job goes before Alice's waiting ones: Alice has the worker now.
    let mut b1 = client.evaluate(bob(endless(5))).await.unwrap().into_inner();
    assert!(matches!(until(&mut b1, is_queued).await, Event::Queued(q) if q.ahead == 0));
    assert!(matches!(until(&mut a1, is_queued).await, Event::Queued(q) if q.ahead == 1));
    // The queue is full for everyone.
    let status = client.evaluate(bob(endless(6))).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("the queue is full"), "{}", status.message());
    drop((running, a1, a2));
    // Bob's job starts once Alice's running one is cancelled.
    assert!(matches!(until(&mut b1, is_running).await, Event::Progress(_)));
}

/// Copies `from` to `to` until `frozen`; then holds both ends open forever, forwarding nothing.
async fn pump(mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf, frozen: Arc<AtomicBool>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if frozen.load(Ordering::SeqCst) {
            let _held = (from, to);
            std::future::pending::<()>().await;
            return;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

/// A TCP proxy that can freeze: it stops forwarding in both directions but keeps both sockets
/// open, as a client machine that lost its network (or was suspended) does.
async fn freezing_proxy(target: String) -> (String, Arc<AtomicBool>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let frozen = Arc::new(AtomicBool::new(false));
    let flag = frozen.clone();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let Ok(outbound) = tokio::net::TcpStream::connect(&target).await else { continue };
            let (in_read, in_write) = inbound.into_split();
            let (out_read, out_write) = outbound.into_split();
            tokio::spawn(pump(in_read, out_write, flag.clone()));
            tokio::spawn(pump(out_read, in_write, flag.clone()));
        }
    });
    (address, frozen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_job_of_a_client_that_vanished_is_cancelled() {
    let models = models_dir();
    let mut server = Server::start(models.path(), &["--keepalive", "1s", "--keepalive-timeout", "1s"]);
    let (proxy, frozen) = freezing_proxy(server.address.clone()).await;
    let mut vanishing = EvaluatorClient::connect(format!("http://{proxy}")).await.unwrap();
    let mut stream = vanishing.evaluate(endless(7)).await.unwrap().into_inner();
    until(&mut stream, is_running).await;
    frozen.store(true, Ordering::SeqCst);
    let vanished = Instant::now();
    // Its stream is never read or closed again; the server's pings go unanswered.
    std::mem::forget(stream);
    std::mem::forget(vanishing);
    let mut client = server.client().await;
    let clean = events(&mut client, request(2, vec![spec(AttackKind::Clean)])).await.unwrap();
    assert!(matches!(clean.last(), Some(Event::Done(_))));
    eprintln!("a vanished client's job was cancelled; the next request was answered {:.2?} later", vanished.elapsed());
    assert!(vanished.elapsed() < Duration::from_secs(30), "{:?}", vanished.elapsed());
    assert!(server.log().contains("cancelled by the client"), "{}", server.log());
    assert!(server.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_running_and_queued_jobs_cleanly_and_exits_zero() {
    let models = models_dir();
    let mut server = Server::start(models.path(), &[]);
    let mut client = server.client().await;
    // A result in the cache before, to find it there after.
    let cached = results(&events(&mut client, request(2, vec![spec(AttackKind::Fgsm)])).await.unwrap());
    assert!(!cached[0].cached);
    let mut running = client.evaluate(endless(1)).await.unwrap().into_inner();
    until(&mut running, is_running).await;
    let mut second = server.client().await;
    let mut queued = second.evaluate(endless(2)).await.unwrap().into_inner();
    until(&mut queued, is_queued).await;

    let signalled = Instant::now();
    let kill = Command::new("kill").args(["-TERM", &server.pid().to_string()]).status().unwrap();
    assert!(kill.success());
    let (running_status, queued_status) = tokio::join!(final_status(&mut running), final_status(&mut queued));
    for (which, status) in [("running", running_status), ("queued", queued_status)] {
        assert_eq!(status.code(), Code::Unavailable, "{which}: {status:?}");
        assert!(status.message().contains("shutting down"), "{which}: {}", status.message());
    }
    let exit = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(signalled.elapsed() < Duration::from_secs(10), "still running 10 s after SIGTERM\n{}", server.log());
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!("SIGTERM: clients answered and the process exited ({exit}) in {:.2?}", signalled.elapsed());
    assert_eq!(exit.code(), Some(0), "{}", server.log());
    let log = server.log();
    assert!(log.contains("SIGTERM") && log.contains("worker stopped"), "{log}");
    // The cache survives, and a new server answers from it.
    let again = Server::start(models.path(), &[]);
    let mut client = again.client().await;
    let found = results(&events(&mut client, request(2, vec![spec(AttackKind::Fgsm)])).await.unwrap());
    assert!(found[0].cached);
}

#[test]
fn a_network_address_without_a_token_is_refused_unless_insecure() {
    let models = models_dir();
    let output = Command::new(env!("CARGO_BIN_EXE_evaluator"))
        .args(["serve", "--listen", "0.0.0.0:0", "--device", "cpu", "--models-dir"])
        .arg(models.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("refusing to listen on 0.0.0.0:0") && stderr.contains("--insecure"), "{stderr}");
    assert!(output.stdout.is_empty(), "it never listened");
}

/// What one load-test call ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    Served,
    Cached,
    Refused(i32),
    CancelledByUs,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_test_32_clients_for_a_minute() {
    let seconds: u64 = std::env::var("RFB_LOAD_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    let models = models_dir();
    let mut server = Server::start(models.path(), &["--max-queue", "8", "--max-queue-per-client", "8"]);
    let mut client = server.client().await;
    // The cached request, computed once.
    let cached_request = request(3, vec![spec(AttackKind::Clean), AttackSpec { eps: Some(0.1), seed: 1, ..spec(AttackKind::Pgd) }]);
    events(&mut client, cached_request.clone()).await.unwrap();
    let (rss_start, _) = server.memory_kib();

    let stop_at = Instant::now() + Duration::from_secs(seconds);
    let warm_at = Instant::now() + Duration::from_secs(seconds / 6);
    let mut tasks = Vec::new();
    for id in 0..32u64 {
        let url = server.url();
        let cached_request = cached_request.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = EvaluatorClient::connect(url).await.unwrap();
            let mut outcomes: Vec<(Outcome, f64)> = Vec::new();
            let mut unexpected: Vec<String> = Vec::new();
            let mut n = 0u64;
            while Instant::now() < stop_at {
                n += 1;
                let seed = id * 1_000_000 + n;
                let started = Instant::now();
                let outcome = match (id + n) % 10 {
                    // Cached.
                    0..=3 => answer(&mut client, tonic::Request::new(cached_request.clone()), None).await,
                    // Cheap and new: PGD-2 on 10 digits with a fresh seed.
                    4 | 5 => {
                        let cheap = request(1, vec![AttackSpec { eps: Some(0.1), steps: Some(2), seed, ..spec(AttackKind::Pgd) }]);
                        answer(&mut client, tonic::Request::new(cheap), None).await
                    }
                    // Invalid, in several ways.
                    6 | 7 => {
                        let bad = match n % 4 {
                            0 => request(1, vec![AttackSpec { eps: Some(2.0), ..spec(AttackKind::Pgd) }]),
                            1 => request(1_000_000_000_000, vec![spec(AttackKind::Clean)]),
                            2 => EvaluateRequest { model: "missing/best".into(), ..request(1, vec![spec(AttackKind::Clean)]) },
                            _ => request(0, vec![AttackSpec { steps: Some(10_000), restarts: Some(100), ..spec(AttackKind::Pgd) }]),
                        };
                        answer(&mut client, tonic::Request::new(bad), None).await
                    }
                    // Cancelled by us after a moment, or by a short deadline.
                    8 => answer(&mut client, tonic::Request::new(endless(seed)), Some(Duration::from_millis(100 + n % 400))).await,
                    _ => {
                        let mut short = tonic::Request::new(endless(seed));
                        short.set_timeout(Duration::from_millis(300));
                        answer(&mut client, short, None).await
                    }
                };
                // A client backs off when told the queue is full, and thinks a moment otherwise.
                let pause = match outcome {
                    Ok(Outcome::Refused(code)) if code == Code::ResourceExhausted as i32 => 100,
                    _ => 10,
                };
                match outcome {
                    Ok(outcome) => outcomes.push((outcome, started.elapsed().as_secs_f64())),
                    Err(what) => unexpected.push(what),
                }
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
            (outcomes, unexpected)
        }));
    }
    let mut rss_warm = 0;
    while Instant::now() < stop_at {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if rss_warm == 0 && Instant::now() >= warm_at {
            rss_warm = server.memory_kib().0;
        }
    }
    let mut outcomes = Vec::new();
    let mut unexpected = Vec::new();
    for task in tasks {
        let (o, u) = task.await.unwrap();
        outcomes.extend(o);
        unexpected.extend(u);
    }
    // The last request: answered normally.
    let last = events(&mut client, request(2, vec![spec(AttackKind::Clean), spec(AttackKind::Fgsm)])).await.unwrap();
    assert!(matches!(last.last(), Some(Event::Done(_))), "{last:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (rss_end, rss_peak) = server.memory_kib();

    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for (outcome, _) in &outcomes {
        let name = match outcome {
            Outcome::Refused(code) => format!("{:?}", Code::from(*code)),
            other => format!("{other:?}"),
        };
        *counts.entry(name).or_default() += 1;
    }
    let mut cached_latency: Vec<f64> = outcomes.iter().filter(|(o, _)| *o == Outcome::Cached).map(|(_, s)| s * 1000.0).collect();
    cached_latency.sort_by(f64::total_cmp);
    let report = format!(
        "load test: 32 clients, {seconds} s: {} calls answered {counts:?}; cached answers p50 {:.1} ms, p99 {:.1} ms ({} of them); \
         server RSS {} MiB at start, {} MiB after warm-up, {} MiB at the end, peak {} MiB",
        outcomes.len(),
        percentile(&cached_latency, 0.5),
        percentile(&cached_latency, 0.99),
        cached_latency.len(),
        rss_start / 1024,
        rss_warm / 1024,
        rss_end / 1024,
        rss_peak / 1024,
    );
    eprintln!("{report}");
    assert!(unexpected.is_empty(), "calls without a deliberate status: {unexpected:?}");
    assert!(server.alive());
    for kind in ["Served", "Cached", "InvalidArgument", "CancelledByUs", "DeadlineExceeded"] {
        assert!(counts.get(kind).copied().unwrap_or(0) > 0, "no {kind} among {counts:?}");
    }
    // Flat memory: the end within 50 % (and at least 150 MiB) of the level after warm-up.
    assert!(rss_warm > 0);
    let bound = rss_warm + (rss_warm / 2).max(150 * 1024);
    assert!(rss_end <= bound, "RSS grew from {rss_warm} KiB after warm-up to {rss_end} KiB");
}

/// Runs one call to its end (or drops it after `cancel_after`), and says how it ended; an end
/// that is not a deliberate status is an `Err` describing it.
async fn answer(
    client: &mut EvaluatorClient<Channel>,
    request: tonic::Request<EvaluateRequest>,
    cancel_after: Option<Duration>,
) -> Result<Outcome, String> {
    let call = async {
        let mut stream = client.evaluate(request).await?.into_inner();
        let mut cached = true;
        let mut done = false;
        while let Some(event) = stream.message().await? {
            match event.event {
                Some(Event::Result(r)) => cached &= r.cached,
                Some(Event::Done(_)) => done = true,
                Some(_) => cached = false,
                None => {}
            }
        }
        Ok::<_, Status>((cached, done))
    };
    let outcome = match cancel_after {
        Some(after) => match tokio::time::timeout(after, call).await {
            Ok(outcome) => outcome,
            Err(_) => return Ok(Outcome::CancelledByUs),
        },
        None => call.await,
    };
    match outcome {
        Ok((_, false)) => Err("a stream that ended without Done".into()),
        Ok((true, true)) => Ok(Outcome::Cached),
        Ok((false, true)) => Ok(Outcome::Served),
        Err(status) => match status.code() {
            Code::InvalidArgument | Code::NotFound | Code::ResourceExhausted | Code::DeadlineExceeded => {
                Ok(Outcome::Refused(status.code() as i32))
            }
            _ => Err(format!("{status:?}")),
        },
    }
}
