//! The worker's side (`evaluator sandboxed-worker`, started by the server, never by hand):
//! read the task, read every file it needs, confine ([`crate::sandbox::confine`]), run the
//! model, report on a private copy of stdout. Stdout itself then points at stderr, so that
//! whatever the model prints lands in the server's log and cannot pass for a message.
//!
//! The worker holds libtorch to one thread until it is confined: the OpenMP threads libtorch
//! starts later are then started by the confined thread and inherit its Landlock domain (below
//! ABI 8 Landlock confines only the calling thread and the threads it starts; seccomp covers
//! every thread anyway).

use std::io::{BufRead, Read, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rfb_core::checkpoint::CheckpointError;

use super::protocol::{decode_request, Expected, Message, Task, WorkerSetup, MAX_MESSAGE_BYTES};
use crate::catalog::{parse_device, Catalog, EngineConfig};
use crate::engine::{Engine, Step};
use crate::request::EngineError;
use crate::sandbox::{self, Confinement};

/// How often a running worker tells the server it is alive between attack iterations (the
/// server's health sees a stuck job by the lack of them).
const ALIVE_EVERY: Duration = Duration::from_secs(1);

/// The message pipe.
struct Channel {
    out: std::fs::File,
}

impl Channel {
    fn send(&mut self, message: &Message) -> Result<(), EngineError> {
        let mut line = serde_json::to_vec(message).map_err(|e| EngineError::Internal(format!("encoding a message: {e}")))?;
        line.push(b'\n');
        // The server is gone: stop.
        self.out.write_all(&line).map_err(|_| EngineError::Cancelled)
    }
}

/// The file descriptor the worker keeps its message pipe on (its stdout before that points at
/// stderr).
pub const MESSAGE_FD: i32 = 3;

/// Closes every file descriptor from `first` up: `close_range(2)`, else (kernels before 5.9)
/// one by one as /proc/self/fd lists them.
fn close_from(first: i32) -> Result<(), String> {
    // SAFETY: close_range takes no pointer; nothing in this process uses those descriptors yet.
    if unsafe { libc::syscall(libc::SYS_close_range, first as libc::c_uint, libc::c_uint::MAX, 0 as libc::c_uint) } == 0 {
        return Ok(());
    }
    let open: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map_err(|e| format!("close_range failed and /proc/self/fd cannot be listed: {e}"))?
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
        .collect();
    for fd in open.into_iter().filter(|&fd| fd >= first) {
        // SAFETY: as above (the directory's own descriptor is closed already: EBADF).
        unsafe { libc::close(fd) };
    }
    Ok(())
}

/// Makes the process what the server expects before anything is read: dies with its parent,
/// and exits if that parent is already gone; holds no file descriptor but stdin, stdout,
/// stderr and the message pipe; is the OOM killer's first choice. Returns the message pipe.
fn set_up() -> Result<std::fs::File, String> {
    // The server dies: so does its worker. Its pid was given, so that a server that died
    // before this line is seen (the worker was reparented).
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).map_err(|e| format!("PR_SET_PDEATHSIG: {e}"))?;
    if let Some(expected) = std::env::var(super::PARENT_PID_VARIABLE).ok().and_then(|p| p.parse::<i32>().ok()) {
        if nix::unistd::getppid().as_raw() != expected {
            return Err("the server that started this worker is gone".into());
        }
    }
    // Whatever the server inherited (a shell's `exec 7<secret`) or leaked is closed before any
    // model code could find it: Landlock and the uid only restrict opening files.
    close_from(MESSAGE_FD).map_err(|e| format!("closing inherited file descriptors: {e}"))?;
    // SAFETY: F_DUPFD_CLOEXEC takes no pointer; the lowest free descriptor >= 3 is 3 now.
    let fd = unsafe { libc::fcntl(libc::STDOUT_FILENO, libc::F_DUPFD_CLOEXEC, MESSAGE_FD) };
    if fd != MESSAGE_FD {
        return Err(format!("cannot keep the message pipe on descriptor {MESSAGE_FD} (got {fd}): {}", std::io::Error::last_os_error()));
    }
    // SAFETY: fd is a new descriptor this process owns.
    let out = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    nix::unistd::dup2_stdout(std::io::stderr()).map_err(|e| format!("cannot point stdout at stderr: {e}"))?;
    // Memory: the OOM killer takes a worker before the server (a process may raise its own).
    std::fs::write("/proc/self/oom_score_adj", "1000").map_err(|e| format!("setting oom_score_adj: {e}"))?;
    Ok(out)
}

/// The worker's main: exits (`_exit`, without running libtorch's destructors) right after its
/// last message.
pub fn main() -> ! {
    let out = match set_up() {
        Ok(out) => out,
        Err(e) => {
            eprintln!("sandboxed-worker: {e}");
            exit(2)
        }
    };
    let mut channel = Channel { out };
    let outcome =
        catch_unwind(AssertUnwindSafe(|| run(&mut channel))).unwrap_or_else(|payload| Err(EngineError::from_panic(payload.as_ref())));
    let status = match outcome {
        Ok(()) => match channel.send(&Message::Done) {
            Ok(()) => 0,
            Err(_) => 1,
        },
        Err(error) => {
            let _ = channel.send(&Message::error(&error));
            1
        }
    };
    exit(status)
}

/// Flushes what the model printed and ends the process at once.
fn exit(status: i32) -> ! {
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: _exit ends the process; nothing after it runs.
    unsafe { libc::_exit(status) }
}

fn run(channel: &mut Channel) -> Result<(), EngineError> {
    let mut stdin = std::io::stdin().lock();
    let mut line = Vec::new();
    (&mut stdin)
        .take(MAX_MESSAGE_BYTES as u64)
        .read_until(b'\n', &mut line)
        .map_err(|e| EngineError::Internal(format!("reading the task: {e}")))?;
    let task: Task = serde_json::from_slice(&line).map_err(|e| EngineError::Internal(format!("the task is not one: {e}")))?;
    match task {
        Task::Probe { confinement } => probe(channel, &confinement),
        Task::Evaluate { setup, request, expected, confinement } => evaluate(channel, &setup, &request, &expected, &confinement),
        Task::CheckTorchScript { spec, bytes, confinement } => {
            let mut module = Vec::new();
            (&mut stdin).take(bytes).read_to_end(&mut module).map_err(|e| EngineError::Internal(format!("reading the module: {e}")))?;
            if module.len() as u64 != bytes {
                return Err(EngineError::Internal(format!("the module has {} bytes, not {bytes}", module.len())));
            }
            drop(stdin);
            check_torchscript(channel, module, &spec, &confinement)
        }
    }
}

/// Confines this process; FAILED_PRECONDITION when the job needs the whole sandbox and the
/// kernel lacks part of it.
fn confine(channel: &mut Channel, confinement: &Confinement) -> Result<(), EngineError> {
    let threads = std::fs::read_dir("/proc/self/task").map(|d| d.count()).unwrap_or(0);
    let enforced =
        sandbox::confine(confinement).map_err(|e| EngineError::Internal(format!("the worker process could not confine itself: {e}")))?;
    tracing::debug!(?enforced, threads, "worker confined");
    if confinement.require_full && !enforced.full() {
        return Err(EngineError::FailedPrecondition(format!(
            "TorchScript models are refused: the worker process could not sandbox their code ({}); an operator who trusts \
             the models can pass --trust-torchscript",
            enforced.missing.join(", ")
        )));
    }
    channel.send(&Message::Confined { enforced })
}

fn probe(channel: &mut Channel, confinement: &Confinement) -> Result<(), EngineError> {
    confine(channel, confinement)?;
    let file_refused = std::fs::read_dir("/").is_err();
    let network_refused = std::net::TcpListener::bind("127.0.0.1:0").is_err();
    let seccomp_refused = sandbox::seccomp_refuses(confinement.cuda);
    channel.send(&Message::Probed { file_refused, network_refused, seccomp_refused })
}

/// Holds libtorch to one thread while files are read (see the module documentation); the
/// previous number is restored once confined.
struct OneThread(i32);

impl OneThread {
    fn hold() -> Self {
        let threads = tch::get_num_threads();
        tch::set_num_threads(1);
        OneThread(threads)
    }

    fn release(self) {
        tch::set_num_threads(self.0);
    }
}

fn evaluate(
    channel: &mut Channel,
    setup: &WorkerSetup,
    request: &str,
    expected: &Expected,
    confinement: &Confinement,
) -> Result<(), EngineError> {
    let request = decode_request(request).map_err(|e| EngineError::Internal(format!("the worker's request: {e}")))?;
    let device = parse_device(&setup.device).map_err(EngineError::FailedPrecondition)?;
    let threads = OneThread::hold();
    let config = EngineConfig {
        models_dir: setup.models_dir.clone(),
        data_dir: setup.data_dir.clone(),
        cache_dir: None,
        use_cache: false,
        device,
        default_batch_size: setup.default_batch_size,
        // The worker is where the model runs: its engine takes the split its catalog loads.
        sandbox: crate::sandbox::SandboxConfig { in_process: true, ..Default::default() },
    };
    let catalog = Arc::new(Catalog::new(&config).map_err(EngineError::FailedPrecondition)?);
    let job = catalog.prepare(&request)?;
    let changed = |what: &str| {
        EngineError::FailedPrecondition(format!(
            "the {what} of {:?} changed on the server while the request waited (the worker process found other contents than the server did); send the request again",
            job.model
        ))
    };
    if job.model_sha256 != expected.model_sha256 {
        return Err(changed("model"));
    }
    if job.data_sha256 != expected.data_sha256 {
        return Err(changed("data"));
    }
    let keys: Vec<&String> = job.attacks.iter().map(|a| &a.cache_key).collect();
    if keys.len() != expected.cache_keys.len() || keys.iter().zip(&expected.cache_keys).any(|(a, b)| *a != b) {
        return Err(EngineError::FailedPrecondition(
            "the worker process prepared the attacks differently from the server (another build of the evaluator?)".into(),
        ));
    }
    let mut engine = Engine::new(catalog);
    engine.read_ahead(&job)?;
    if device.is_cuda() {
        // The CUDA context is made now, while the driver's files can still be opened.
        let _ = tch::Tensor::zeros([1], (tch::Kind::Float, device)).f_sum(tch::Kind::Float);
    }
    confine(channel, confinement)?;
    threads.release();

    let shared = Mutex::new((&mut *channel, Instant::now()));
    // Between iterations: a sign of life now and then (nothing stops a worker from inside: the
    // server kills it).
    let alive = || {
        let mut guard = shared.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if guard.1.elapsed() >= ALIVE_EVERY {
            guard.1 = Instant::now();
            if guard.0.send(&Message::Alive).is_err() {
                return Some(EngineError::Cancelled);
            }
        }
        None
    };
    engine.run_steps(&job, &alive, &mut |step| {
        let message = match step {
            Step::Progress(p) => Message::Progress {
                attack_index: p.attack_index,
                attack: p.attack,
                component: p.component,
                component_index: p.component_index,
                components: p.components,
                done: p.examples_done,
                total: p.examples_total,
            },
            Step::Result { index, stored, .. } => Message::Result { index, stored },
        };
        let mut guard = shared.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        guard.1 = Instant::now();
        guard.0.send(&message)
    })
}

fn check_torchscript(
    channel: &mut Channel,
    bytes: Vec<u8>,
    spec: &rfb_core::models::ModelSpec,
    confinement: &Confinement,
) -> Result<(), EngineError> {
    let threads = OneThread::hold();
    confine(channel, confinement)?;
    threads.release();
    let from = std::path::Path::new("the module");
    match rfb_core::checkpoint::import::check_torchscript(bytes, spec, from) {
        Ok(checked) => channel.send(&Message::Checked { checked }),
        Err(CheckpointError::TorchScript { problem, .. }) => channel.send(&Message::Refused { problem }),
        Err(CheckpointError::Model(e)) => Err(EngineError::InvalidArgument(e.to_string())),
        Err(other) => Err(EngineError::Internal(other.to_string())),
    }
}
