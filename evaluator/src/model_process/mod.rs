//! Worker processes: where model code runs. The server (or `evaluator eval`, or `evaluator
//! import`) starts its own executable with the hidden subcommand `sandboxed-worker`, sends it
//! one [`protocol::Task`] on stdin, and reads its [`protocol::Message`]s on a thread, so that it
//! can look every [`POLL`] whether the client left, the deadline passed or the server is
//! shutting down, and then kill the worker (SIGKILL). The worker ([`child`]) reads what it
//! needs, confines itself ([`crate::sandbox`]) and runs the same engine code as the server ran
//! in-process before, so results are bit-identical; it writes nothing: the server stores the
//! results in its cache. A worker that dies (a signal, an abort, out of memory) fails only its
//! job, with a status naming what happened.

pub mod child;
pub mod protocol;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

use crate::request::EngineError;
use crate::sandbox::{Confinement, Enforced, Protection, SandboxConfig};
use protocol::{Message, Task, MAX_MESSAGE_BYTES};

/// How often the server looks at a stop reason while a worker runs.
pub const POLL: Duration = Duration::from_millis(50);

/// The hidden subcommand that makes the evaluator binary a worker.
pub const WORKER_SUBCOMMAND: &str = "sandboxed-worker";

/// The environment variable that tells a worker its parent's process id: it checks, once its
/// parent-death signal is set, that its parent is still that process (else the parent died
/// before: it exits).
pub const PARENT_PID_VARIABLE: &str = "RFB_WORKER_PARENT_PID";

/// Variables a worker keeps from the server's environment (all others are cleared: the
/// server's may hold secrets): the dynamic linker's and libtorch's, OpenMP's, MKL's, CUDA's,
/// the log filter, and the sandbox's test switches.
/// `RFB_ALLOW_TF32` carries `serve --allow-tf32` to the workers, which compute every evaluation
/// (without it a worker would turn TF32 off again: `rfb_core::device_settings`).
const KEPT_VARIABLES: [&str; 7] =
    ["PATH", "HOME", "LD_LIBRARY_PATH", "RUST_LOG", "RUST_BACKTRACE", "RUST_LIB_BACKTRACE", rfb_core::device_settings::ALLOW_TF32_VARIABLE];
const KEPT_PREFIXES: [&str; 11] =
    ["LIBTORCH", "TORCH_", "PYTORCH_", "OMP_", "GOMP_", "KMP_", "MKL_", "CUDA_", "NVIDIA_", "CUBLAS_", "RFB_SANDBOX_PRETEND_"];

/// A worker's environment, from the server's: only [`KEPT_VARIABLES`] and names starting with
/// one of [`KEPT_PREFIXES`], then `NO_COLOR` (its log is relayed with control characters
/// escaped) and [`PARENT_PID_VARIABLE`].
pub fn worker_environment(
    server: impl IntoIterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
    parent: u32,
) -> Vec<(std::ffi::OsString, std::ffi::OsString)> {
    let mut kept: Vec<_> = server
        .into_iter()
        .filter(|(name, _)| {
            name.to_str().is_some_and(|name| KEPT_VARIABLES.contains(&name) || KEPT_PREFIXES.iter().any(|p| name.starts_with(p)))
        })
        .collect();
    kept.push(("NO_COLOR".into(), "1".into()));
    kept.push((PARENT_PID_VARIABLE.into(), parent.to_string().into()));
    kept
}

/// How long [`WorkerProcess::finish`] waits for a worker that sent its last message to exit
/// (it exits at once) before it kills it.
const FINISH_WAIT: Duration = Duration::from_secs(5);

/// Most of a worker's stderr (its log, whatever the model prints) copied to the server's
/// stderr per task; the rest is dropped, so a chatty model cannot fill the server's log.
const MAX_RELAYED_LOG_BYTES: usize = 1 << 20;

/// A running worker process. Dropping it kills the process.
pub struct WorkerProcess {
    child: Child,
    messages: Receiver<Result<Message, String>>,
    killed: bool,
}

impl WorkerProcess {
    /// Starts `program sandboxed-worker` and sends it `task`, then `payload` (raw bytes).
    pub fn start(program: &Path, task: &Task, payload: Option<Vec<u8>>) -> Result<Self, EngineError> {
        let mut line = serde_json::to_vec(task).map_err(|e| EngineError::Internal(format!("encoding the worker's task: {e}")))?;
        line.push(b'\n');
        let mut child = Command::new(program)
            .arg(WORKER_SUBCOMMAND)
            .env_clear()
            .envs(worker_environment(std::env::vars_os(), std::process::id()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| EngineError::Unavailable(format!("cannot start a worker process ({}): {e}", program.display())))?;
        let (Some(mut stdin), Some(stdout), Some(stderr)) = (child.stdin.take(), child.stdout.take(), child.stderr.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(EngineError::Internal("the worker process has no pipes".into()));
        };
        // Written on a thread: a large payload would otherwise block until the worker reads it.
        std::thread::Builder::new()
            .name("worker-stdin".into())
            .spawn(move || {
                let _ = stdin.write_all(&line);
                if let Some(payload) = payload {
                    let _ = stdin.write_all(&payload);
                }
            })
            .map_err(|e| EngineError::Internal(format!("cannot start a thread: {e}")))?;
        let pid = child.id();
        std::thread::Builder::new()
            .name("worker-log".into())
            .spawn(move || relay_log(pid, stderr))
            .map_err(|e| EngineError::Internal(format!("cannot start a thread: {e}")))?;
        let (sender, messages) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("worker-messages".into())
            .spawn(move || {
                let mut reader = BufReader::new(stdout);
                loop {
                    let mut line = Vec::new();
                    match (&mut reader).take(MAX_MESSAGE_BYTES as u64 + 1).read_until(b'\n', &mut line) {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    let parsed = if line.len() > MAX_MESSAGE_BYTES {
                        Err(format!("a message longer than {MAX_MESSAGE_BYTES} bytes"))
                    } else {
                        serde_json::from_slice::<Message>(&line).map_err(|e| format!("a message that is not one: {e}"))
                    };
                    let bad = parsed.is_err();
                    if sender.send(parsed).is_err() || bad {
                        return;
                    }
                }
            })
            .map_err(|e| EngineError::Internal(format!("cannot start a thread: {e}")))?;
        Ok(WorkerProcess { child, messages, killed: false })
    }

    /// The worker's process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The next message; `Ok(None)` once the worker closed its end. While waiting, `stop` is
    /// asked every [`POLL`]; a reason kills the worker and is returned.
    pub fn next(&mut self, stop: &dyn Fn() -> Option<EngineError>) -> Result<Option<Message>, EngineError> {
        loop {
            if let Some(reason) = stop() {
                self.kill();
                return Err(reason);
            }
            match self.messages.recv_timeout(POLL) {
                Ok(Ok(message)) => return Ok(Some(message)),
                Ok(Err(problem)) => {
                    self.kill();
                    return Err(EngineError::Internal(format!("the model's worker process sent {problem}; it was stopped")));
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Ok(None),
            }
        }
    }

    /// Kills the worker (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if !self.killed {
            self.killed = true;
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// After the worker closed its end without finishing: how it ended, as the job's error. A
    /// worker that closed its end but goes on running is killed after a few seconds.
    pub fn ended_early(mut self) -> EngineError {
        let waited = std::time::Instant::now();
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    self.killed = true;
                    return died(status);
                }
                Ok(None) if waited.elapsed() < Duration::from_secs(5) => std::thread::sleep(POLL),
                Ok(None) => {
                    self.kill();
                    return EngineError::Internal("the model's worker process stopped answering; it was killed".into());
                }
                Err(e) => return EngineError::Internal(format!("the model's worker process could not be waited for: {e}")),
            }
        }
    }

    /// Waits for a worker that finished its task (it exits at once); one still running after
    /// [`FINISH_WAIT`] is killed.
    pub fn finish(mut self) {
        let waited = std::time::Instant::now();
        loop {
            match self.child.try_wait() {
                Ok(None) if waited.elapsed() < FINISH_WAIT => std::thread::sleep(Duration::from_millis(5)),
                Ok(None) => {
                    tracing::warn!(pid = self.id(), "a worker process did not exit after its last message; killed");
                    break;
                }
                Ok(Some(_)) | Err(_) => {
                    self.killed = true;
                    break;
                }
            }
        }
        self.kill();
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One line of a worker's output as the server's log shows it: `worker PID: ` and the line,
/// its control characters escaped (`\x1b`, `\r`, ...; a tab stays), so that a model cannot
/// forge a line of the server's log, nor erase one with terminal escapes.
pub fn relayed_line(pid: u32, line: &[u8]) -> String {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let mut out = format!("worker {pid}: ");
    for c in String::from_utf8_lossy(line).chars() {
        match c {
            '\t' => out.push(c),
            '\r' => out.push_str("\\r"),
            '\n' => out.push_str("\\n"),
            // C0, DEL, C1, and the line and paragraph separators, bidirectional overrides.
            c if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}') => {
                out.extend(c.escape_unicode())
            }
            c => out.push(c),
        }
    }
    out.push('\n');
    out
}

/// Copies a worker's stderr to ours ([`relayed_line`]), up to [`MAX_RELAYED_LOG_BYTES`].
fn relay_log(pid: u32, stderr: std::process::ChildStderr) {
    let mut reader = BufReader::new(stderr);
    let mut relayed = 0usize;
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut reader).take(64 << 10).read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if relayed < MAX_RELAYED_LOG_BYTES {
                    relayed += n;
                    let mut err = std::io::stderr().lock();
                    let _ = err.write_all(relayed_line(pid, &line).as_bytes());
                    if relayed >= MAX_RELAYED_LOG_BYTES {
                        let _ = writeln!(err, "worker {pid}: (the worker process's further output is dropped)");
                    }
                }
            }
        }
    }
}

/// A worker's end that the server did not cause, as the job's error.
pub fn died(status: ExitStatus) -> EngineError {
    if let Some(signal) = status.signal() {
        let name = nix::sys::signal::Signal::try_from(signal).map(|s| s.as_str()).unwrap_or("an unknown signal");
        return match signal {
            libc::SIGKILL => EngineError::ResourceExhausted(format!(
                "the model's worker process was killed by signal {signal} ({name}: out of memory or over its memory limit?)"
            )),
            libc::SIGXCPU => EngineError::ResourceExhausted(format!(
                "the model's worker process was killed by signal {signal} ({name}): it used up its CPU-time limit"
            )),
            libc::SIGXFSZ => EngineError::FailedPrecondition(format!(
                "the model's worker process was killed by signal {signal} ({name}): it tried to write a file, which the sandbox forbids"
            )),
            libc::SIGSYS => EngineError::FailedPrecondition(format!(
                "the model's worker process was killed by signal {signal} ({name}): it made a system call the sandbox forbids"
            )),
            libc::SIGABRT => EngineError::Internal(format!(
                "the model's worker process aborted (signal {signal}, {name}: an allocation over its memory limit, or an assertion in libtorch)"
            )),
            _ => EngineError::Internal(format!("the model's worker process was killed by signal {signal} ({name})")),
        };
    }
    match status.code() {
        Some(code) => EngineError::Internal(format!("the model's worker process exited with status {code} before finishing its task")),
        None => EngineError::Internal("the model's worker process ended before finishing its task".into()),
    }
}

/// CPU cores this process may use.
pub fn cores() -> u64 {
    std::thread::available_parallelism().map(|n| n.get() as u64).unwrap_or(1)
}

/// What confinement a worker gets under `config` (`cuda`: the model runs on a GPU).
pub fn confinement(config: &SandboxConfig, cuda: bool, cpu_seconds: Option<u64>, require_full: bool) -> Confinement {
    Confinement { memory_bytes: config.memory.bytes(), cpu_seconds, cuda, require_full, forbidden: config.secret_paths.clone() }
}

/// Starts a worker that confines itself and checks that it can no longer list a directory or
/// open a socket: what this machine can do for model code. An error when no worker can be
/// started at all (the evaluator cannot compute anything then).
pub fn probe(config: &SandboxConfig, device: tch::Device) -> Result<Protection, EngineError> {
    if config.in_process {
        return Ok(Protection::in_process(config.trust_torchscript));
    }
    let program = config.program()?;
    let task = Task::Probe { confinement: confinement(config, device.is_cuda(), None, false) };
    let mut worker = WorkerProcess::start(&program, &task, None)?;
    let mut enforced: Option<Enforced> = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let stop =
        || (std::time::Instant::now() > deadline).then(|| EngineError::Unavailable("the probe worker did not answer within 60 s".into()));
    loop {
        match worker.next(&stop)? {
            Some(Message::Confined { enforced: found }) => enforced = Some(found),
            Some(Message::Probed { file_refused, network_refused, seccomp_refused }) => {
                let Some(mut found) = enforced.take() else {
                    return Err(EngineError::Internal("the probe worker checked before confining itself".into()));
                };
                // What the kernel claims is only trusted as far as the checks confirm it.
                if found.landlock_abi.is_some() && !file_refused {
                    found.landlock_abi = None;
                    found.missing.push("Landlock does not refuse reading files here".into());
                }
                // Landlock refuses TCP too: only what Landlock cannot refuse tests seccomp.
                if found.seccomp && !(network_refused && seccomp_refused) {
                    found.seccomp = false;
                    found.missing.push("the seccomp filter does not refuse what it must here".into());
                }
                worker.finish();
                return Ok(Protection { workers: Some(found), trust_torchscript: config.trust_torchscript, cuda: device.is_cuda() });
            }
            Some(Message::Error { error: kind, message }) => return Err(kind.error(format!("the probe worker failed: {message}"))),
            Some(_) => {}
            None => return Err(worker.ended_early()),
        }
    }
}

/// Runs a TorchScript module's import checks in a worker: `Ok(Ok(..))` when they pass,
/// `Ok(Err(problem))` when the module fails one, `Err` when the worker could not do them.
/// `stop` is asked every [`POLL`]: a reason kills the worker and is returned.
pub fn check_torchscript(
    config: &SandboxConfig,
    protection: &Protection,
    bytes: Vec<u8>,
    spec: &rfb_core::models::ModelSpec,
    stop: &dyn Fn() -> Option<EngineError>,
) -> Result<Result<rfb_core::checkpoint::import::TorchScriptChecked, rfb_core::models::TorchScriptError>, EngineError> {
    protection.check_torchscript()?;
    let program = config.program()?;
    let require_full = !config.trust_torchscript;
    let timeout = config.check_timeout;
    // CPU time for every core for the whole timeout: the wall clock below stops it first.
    let cpu_seconds = timeout.as_secs().saturating_mul(cores()).saturating_add(10);
    let cpu_seconds = config.cpu_seconds.map_or(cpu_seconds, |cap| cap.min(cpu_seconds));
    let task = Task::CheckTorchScript {
        spec: spec.clone(),
        bytes: bytes.len() as u64,
        confinement: confinement(config, false, Some(cpu_seconds), require_full),
    };
    let mut worker = WorkerProcess::start(&program, &task, Some(bytes))?;
    let deadline = std::time::Instant::now() + timeout;
    let stop = || stop().or_else(|| (std::time::Instant::now() >= deadline).then_some(EngineError::DeadlineExceeded));
    loop {
        match worker.next(&stop).map_err(|e| match e {
            EngineError::DeadlineExceeded => EngineError::FailedPrecondition(format!(
                "the module's checks did not finish within {} (the check timeout); it was stopped",
                humantime::format_duration(timeout)
            )),
            other => other,
        })? {
            Some(Message::Checked { checked }) => {
                worker.finish();
                return Ok(Ok(checked));
            }
            Some(Message::Refused { problem }) => {
                worker.finish();
                return Ok(Err(problem));
            }
            Some(Message::Error { error: kind, message }) => return Err(kind.error(message)),
            Some(Message::Confined { enforced }) => {
                tracing::debug!(?enforced, pid = worker.id(), "import check worker confined");
            }
            Some(_) => {}
            None => return Err(worker.ended_early()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relayed_lines_name_the_worker_and_cannot_forge_a_line() {
        assert_eq!(relayed_line(42, b"loss 0.5\n"), "worker 42: loss 0.5\n");
        assert_eq!(relayed_line(42, b"no newline"), "worker 42: no newline\n");
        let forged = relayed_line(7, b"x\r2026-01-01T00:00:00Z  INFO rfb: all is well\x1b[2K\x07\xff\xe2\x80\xae\n");
        assert_eq!(forged.matches('\n').count(), 1, "{forged:?}");
        assert!(forged.starts_with("worker 7: x\\r2026"), "{forged:?}");
        assert!(!forged.chars().any(|c| c.is_control() && c != '\n'), "{forged:?}");
        assert!(forged.contains("\\u{1b}[2K\\u{7}\u{fffd}\\u{202e}"), "{forged:?}");
    }

    #[test]
    fn workers_keep_only_the_allowed_environment() {
        let server = [
            ("PATH", "/usr/bin"),
            ("LD_LIBRARY_PATH", "/opt/torch/lib"),
            ("OMP_NUM_THREADS", "2"),
            ("CUDA_VISIBLE_DEVICES", "0"),
            ("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True"),
            ("RUST_LOG", "debug"),
            ("RFB_SANDBOX_PRETEND_NO_LANDLOCK", "1"),
            ("RFB_ALLOW_TF32", "1"),
            ("NVIDIA_TF32_OVERRIDE", "0"),
            ("AWS_SECRET_ACCESS_KEY", "hunter2"),
            ("RFB_TOKEN", "secret"),
            ("SSH_AUTH_SOCK", "/tmp/agent"),
            ("LD_PRELOAD", "/tmp/evil.so"),
            (PARENT_PID_VARIABLE, "1"),
        ]
        .map(|(k, v)| (k.into(), v.into()));
        let kept = worker_environment(server, 99);
        let names: Vec<String> = kept.iter().map(|(k, _)| k.to_string_lossy().into_owned()).collect();
        assert_eq!(
            names,
            [
                "PATH",
                "LD_LIBRARY_PATH",
                "OMP_NUM_THREADS",
                "CUDA_VISIBLE_DEVICES",
                "PYTORCH_CUDA_ALLOC_CONF",
                "RUST_LOG",
                "RFB_SANDBOX_PRETEND_NO_LANDLOCK",
                "RFB_ALLOW_TF32",
                "NVIDIA_TF32_OVERRIDE",
                "NO_COLOR",
                PARENT_PID_VARIABLE
            ]
        );
        assert_eq!(kept.last().unwrap().1, "99");
    }
}
