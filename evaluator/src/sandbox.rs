//! The sandbox of model code. A TorchScript module's `forward` is code: TorchScript can read
//! and write files (`torch.from_file`, `torch.save`), loop forever and allocate without bound.
//! So every evaluation (and every import check) runs in a worker process
//! ([`crate::model_process`]) that, once it has read the model and the data into memory,
//! confines itself here before any model code runs:
//!
//! * **rlimits** (process-wide): `RLIMIT_AS` (the memory cap, [`MemoryLimit`]; not on CUDA,
//!   whose driver reserves far more address space than it uses), `RLIMIT_CPU` (from the job's
//!   deadline, or a cap), `RLIMIT_FSIZE` 0 (no file grows), `RLIMIT_CORE` 0.
//! * **no new privileges** (`PR_SET_NO_NEW_PRIVS`), and a worker started as root drops to
//!   `nobody` (no capabilities: it cannot raise its hard limits back).
//! * **Landlock** (the thread that runs the model, and every thread it starts): no file may be
//!   opened, read, written, created or executed, except read-only the CPU's description
//!   (`/proc/cpuinfo`, `/sys/devices/system/cpu`, which PyTorch's CPU detection reads lazily)
//!   and, on CUDA, the shared library files beside those mapped (the driver loads libraries
//!   lazily; [`cuda_rules`], never a secret's directory) and the GPU's device files; no TCP bind
//!   or connect (ABI >= 4); no signals to, or abstract sockets of, other processes (ABI >= 6).
//! * **seccomp** (every thread, `TSYNC`): `socket()` fails with EPERM (on CUDA AF_UNIX stays
//!   open for the driver's daemons), and so do exec, ptrace, pidfds, kcmp, namespaces, mounts,
//!   modules, io_uring, BPF, keyrings, raising rlimits and every x32 system call; libtorch sees
//!   an error, not a dead process.
//!
//! [`Protection`] is what the kernel allows, probed once at start by a worker that confines
//! itself and checks that it can no longer read a file or open a socket, nor do what only
//! seccomp refuses ([`seccomp_refuses`]). Where Landlock or
//! seccomp is missing, TorchScript models are refused unless the operator passes
//! `--trust-torchscript`; our own safetensors networks (no code of the user's) run in workers
//! with what protection there is. For tests, `RFB_SANDBOX_PRETEND_NO_LANDLOCK=1` and
//! `RFB_SANDBOX_PRETEND_NO_SECCOMP=1` make the worker act as if the mechanism were missing.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::request::EngineError;

/// Set to 1 (tests only): workers skip Landlock as if the kernel had none.
pub const PRETEND_NO_LANDLOCK: &str = "RFB_SANDBOX_PRETEND_NO_LANDLOCK";
/// Set to 1 (tests only): workers skip seccomp as if the kernel had none.
pub const PRETEND_NO_SECCOMP: &str = "RFB_SANDBOX_PRETEND_NO_SECCOMP";

/// How much address space a worker may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MemoryLimit {
    /// The machine's physical memory (`MemTotal`): a model cannot take more than there is.
    #[default]
    Auto,
    Bytes(u64),
    Off,
}

impl MemoryLimit {
    /// The limit in bytes, `None` for none.
    pub fn bytes(self) -> Option<u64> {
        match self {
            MemoryLimit::Auto => machine_memory(),
            MemoryLimit::Bytes(bytes) => Some(bytes),
            MemoryLimit::Off => None,
        }
    }
}

impl std::str::FromStr for MemoryLimit {
    type Err = String;

    /// `auto`, `off`, or a size: `16GiB`, `512MiB`, `2G`, `1000000` (bytes).
    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        match text.to_ascii_lowercase().as_str() {
            "auto" => return Ok(MemoryLimit::Auto),
            "off" | "none" | "0" => return Ok(MemoryLimit::Off),
            _ => {}
        }
        let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let number: f64 = number.parse().map_err(|_| format!("{text:?} is not a size (e.g. 16GiB, 512MiB, auto, off)"))?;
        let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" | "kib" => 1 << 10,
            "m" | "mb" | "mib" => 1 << 20,
            "g" | "gb" | "gib" => 1 << 30,
            "t" | "tb" | "tib" => 1 << 40,
            other => return Err(format!("unknown size unit {other:?} (KiB, MiB, GiB, TiB)")),
        };
        let bytes = number * scale as f64;
        if !bytes.is_finite() || bytes < (64u64 << 20) as f64 {
            return Err(format!("{text:?} is too small for a worker (at least 64MiB, or off)"));
        }
        Ok(MemoryLimit::Bytes(bytes as u64))
    }
}

/// The machine's physical memory (`MemTotal` of /proc/meminfo), in bytes.
pub fn machine_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// `16 GiB`, `1.5 GiB`, `512 MiB`.
pub fn format_bytes(bytes: u64) -> String {
    let gib = bytes as f64 / (1u64 << 30) as f64;
    if gib >= 1.0 {
        if (gib - gib.round()).abs() < 0.05 {
            format!("{} GiB", gib.round())
        } else {
            format!("{gib:.1} GiB")
        }
    } else {
        format!("{} MiB", bytes >> 20)
    }
}

/// How model code runs: set by the operator (`--trust-torchscript`, `--worker-memory`,
/// `--in-process`), part of [`crate::EngineConfig`].
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// The program started as a worker, with the hidden subcommand `sandboxed-worker`; `None`:
    /// this executable (`std::env::current_exe`). Library users whose executable is not the
    /// `evaluator` binary point this at it.
    pub worker_program: Option<PathBuf>,
    /// Address-space cap of a worker (ignored on CUDA).
    pub memory: MemoryLimit,
    /// CPU-seconds cap of a worker whose job has no deadline (`None`: only the deadline caps).
    pub cpu_seconds: Option<u64>,
    /// Run TorchScript modules even where the sandbox is incomplete (or absent, in-process).
    pub trust_torchscript: bool,
    /// Run models in this process, without workers or sandbox (`evaluator eval --in-process`,
    /// for measuring the workers' cost); TorchScript then needs `trust_torchscript`.
    pub in_process: bool,
    /// Longest an import's checks of a TorchScript module may take (they run its code).
    pub check_timeout: std::time::Duration,
    /// Files no worker's Landlock rules may grant, nor a directory above them (the token
    /// file, the TLS certificate and key); the models and cache directories are added per job.
    pub secret_paths: Vec<PathBuf>,
}

/// Default of [`SandboxConfig::check_timeout`]: the checks run a few forward and backward
/// passes on 2 or 3 images, seconds even for a wide ResNet on a CPU.
pub const DEFAULT_CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            worker_program: None,
            memory: MemoryLimit::Auto,
            cpu_seconds: None,
            trust_torchscript: false,
            in_process: false,
            check_timeout: DEFAULT_CHECK_TIMEOUT,
            secret_paths: Vec::new(),
        }
    }
}

impl SandboxConfig {
    /// The worker program (see [`SandboxConfig::worker_program`]).
    pub fn program(&self) -> Result<PathBuf, EngineError> {
        match &self.worker_program {
            Some(program) => Ok(program.clone()),
            None => std::env::current_exe()
                .map_err(|e| EngineError::Unavailable(format!("cannot find this program to start a worker process: {e}"))),
        }
    }
}

/// What a worker is asked to apply to itself.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Confinement {
    /// Address-space cap in bytes (`None`: none).
    pub memory_bytes: Option<u64>,
    /// CPU-time cap in seconds (`None`: none).
    pub cpu_seconds: Option<u64>,
    /// The model runs on CUDA: no address-space cap, the driver's libraries and devices stay
    /// readable, AF_UNIX sockets stay open.
    pub cuda: bool,
    /// Fail (FAILED_PRECONDITION) unless Landlock and seccomp are both enforced: the worker
    /// will run a TorchScript module that is not trusted.
    pub require_full: bool,
    /// Paths no Landlock rule may grant, nor a directory above them (CUDA's rules): the models
    /// and cache directories, the token file, the TLS files.
    #[serde(default)]
    pub forbidden: Vec<PathBuf>,
}

/// What a worker did apply.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Enforced {
    /// The Landlock ABI in force (`None`: no Landlock).
    pub landlock_abi: Option<u32>,
    /// Whether Landlock denies TCP bind and connect (ABI >= 4).
    pub landlock_tcp: bool,
    /// Whether the seccomp filter is installed.
    pub seccomp: bool,
    pub no_new_privs: bool,
    pub memory_bytes: Option<u64>,
    pub cpu_seconds: Option<u64>,
    /// The worker dropped root for `nobody`.
    pub dropped_root: bool,
    /// Why a mechanism is missing, in words, e.g. "the kernel has no Landlock".
    pub missing: Vec<String>,
}

impl Enforced {
    pub fn full(&self) -> bool {
        self.landlock_abi.is_some() && self.seccomp
    }
}

/// Why confinement failed.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("setting {what}: {source}")]
    Rlimit { what: &'static str, source: nix::Error },
    #[error("PR_SET_NO_NEW_PRIVS: {0}")]
    NoNewPrivs(nix::Error),
    #[error("Landlock: {0}")]
    Landlock(String),
    #[error("seccomp: {0}")]
    Seccomp(String),
    #[error("dropping root: {0}")]
    User(nix::Error),
}

fn pretending(variable: &str) -> bool {
    std::env::var(variable).is_ok_and(|v| v == "1")
}

/// Confines this process (see the module documentation). Call it once every file the job needs
/// has been read, on the thread that will run the model. Returns what was enforced; a missing
/// kernel mechanism is reported in [`Enforced::missing`], not as an error.
pub fn confine(confinement: &Confinement) -> Result<Enforced, SandboxError> {
    use nix::sys::resource::{setrlimit, Resource};
    let mut enforced = Enforced::default();
    // Read before Landlock closes /proc.
    let seccomp_here = seccomp_available();
    let rlimit = |resource: Resource, what: &'static str, value: u64, hard: u64| {
        setrlimit(resource, value, hard).map_err(|source| SandboxError::Rlimit { what, source })
    };
    rlimit(Resource::RLIMIT_CORE, "RLIMIT_CORE", 0, 0)?;
    rlimit(Resource::RLIMIT_FSIZE, "RLIMIT_FSIZE", 0, 0)?;
    if let Some(bytes) = confinement.memory_bytes.filter(|_| !confinement.cuda) {
        rlimit(Resource::RLIMIT_AS, "RLIMIT_AS", bytes, bytes)?;
        enforced.memory_bytes = Some(bytes);
    }
    if let Some(seconds) = confinement.cpu_seconds {
        // SIGXCPU at the soft limit, SIGKILL a little later.
        rlimit(Resource::RLIMIT_CPU, "RLIMIT_CPU", seconds.max(1), seconds.max(1) + 5)?;
        enforced.cpu_seconds = Some(seconds.max(1));
    }
    nix::sys::prctl::set_no_new_privs().map_err(SandboxError::NoNewPrivs)?;
    enforced.no_new_privs = true;

    if pretending(PRETEND_NO_LANDLOCK) {
        enforced.missing.push(format!("no Landlock ({PRETEND_NO_LANDLOCK}=1)"));
    } else {
        match landlock(confinement)? {
            Some((abi, tcp)) => {
                enforced.landlock_abi = Some(abi);
                enforced.landlock_tcp = tcp;
            }
            None => enforced.missing.push("the kernel has no Landlock".into()),
        }
    }
    if nix::unistd::geteuid().is_root() {
        let nobody = nix::unistd::Gid::from_raw(65534);
        nix::unistd::setgroups(&[]).map_err(SandboxError::User)?;
        nix::unistd::setgid(nobody).map_err(SandboxError::User)?;
        nix::unistd::setuid(nix::unistd::Uid::from_raw(65534)).map_err(SandboxError::User)?;
        enforced.dropped_root = true;
    }
    if pretending(PRETEND_NO_SECCOMP) {
        enforced.missing.push(format!("no seccomp ({PRETEND_NO_SECCOMP}=1)"));
    } else if !seccomp_here {
        enforced.missing.push("the kernel has no seccomp filters".into());
    } else {
        seccomp(confinement)?;
        enforced.seccomp = true;
    }
    Ok(enforced)
}

/// Whether the kernel has seccomp filter mode with the errno action: `prctl(PR_GET_SECCOMP)`
/// answers (a kernel without CONFIG_SECCOMP says EINVAL), and
/// `/proc/sys/kernel/seccomp/actions_avail` lists `errno` (where it cannot be read, the
/// `Seccomp:` line of /proc/self/status stands in). The probe worker then checks that the
/// installed filter does refuse what it must ([`crate::model_process::probe`]).
pub fn seccomp_available() -> bool {
    // SAFETY: PR_GET_SECCOMP takes no pointer.
    if unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) } < 0 {
        return false;
    }
    match std::fs::read_to_string("/proc/sys/kernel/seccomp/actions_avail") {
        Ok(actions) => actions.split_whitespace().any(|a| a == "errno"),
        Err(_) => std::fs::read_to_string("/proc/self/status").is_ok_and(|s| s.lines().any(|l| l.starts_with("Seccomp_filters:"))),
    }
}

/// Landlock: the newest ABI this build was tested with; older kernels get what they have
/// (best effort). Returns the ABI in force and whether TCP is covered, `None` without Landlock.
fn landlock(confinement: &Confinement) -> Result<Option<(u32, bool)>, SandboxError> {
    use landlock::{
        Access, AccessFs, AccessNet, BitFlags, LandlockStatus, PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreatedAttr,
        RulesetStatus, Scope, ABI,
    };
    let abi = ABI::V7;
    let error = |e: landlock::RulesetError| SandboxError::Landlock(e.to_string());
    let mut ruleset = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))
        .map_err(error)?
        .handle_access(AccessNet::from_all(abi))
        .map_err(error)?
        .scope(Scope::from_all(abi))
        .map_err(error)?
        .create()
        .map_err(error)?;
    // PyTorch's CPU detection (cpuinfo) reads these lazily, at the first operation that asks;
    // without them it guesses, and libtorch might pick other kernels than in-process.
    let read: BitFlags<AccessFs> = AccessFs::ReadFile | AccessFs::ReadDir;
    for path in CPU_INFO_PATHS {
        if let Ok(fd) = PathFd::new(path) {
            let access = if std::path::Path::new(path).is_dir() { read } else { BitFlags::from(AccessFs::ReadFile) };
            ruleset = ruleset.add_rule(PathBeneath::new(fd, access)).map_err(error)?;
        }
    }
    if confinement.cuda {
        // The CUDA driver and libtorch's CUDA libraries load further libraries lazily (cuDNN's
        // engines, NVRTC) and talk to the GPU through its device files.
        let rules = cuda_rules_here(&confinement.forbidden);
        for file in &rules.files {
            if let Ok(fd) = PathFd::new(file) {
                ruleset = ruleset.add_rule(PathBeneath::new(fd, BitFlags::from(AccessFs::ReadFile))).map_err(error)?;
            }
        }
        for dir in &rules.dirs {
            if let Ok(fd) = PathFd::new(dir) {
                ruleset = ruleset.add_rule(PathBeneath::new(fd, read)).map_err(error)?;
            }
        }
        let device: BitFlags<AccessFs> = AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::IoctlDev;
        for file in cuda_device_files() {
            if let Ok(fd) = PathFd::new(&file) {
                ruleset = ruleset.add_rule(PathBeneath::new(fd, device)).map_err(error)?;
            }
        }
    }
    let status = ruleset.restrict_self().map_err(error)?;
    if status.ruleset == RulesetStatus::NotEnforced {
        return Ok(None);
    }
    let effective = match status.landlock {
        LandlockStatus::Available { effective_abi, .. } => effective_abi,
        _ => return Ok(None),
    };
    let number: u32 = effective.to_string().parse().unwrap_or(0);
    Ok(Some((number, number >= 4)))
}

/// What a confined worker may read on any device: the CPU's description (not secret).
const CPU_INFO_PATHS: [&str; 2] = ["/proc/cpuinfo", "/sys/devices/system/cpu"];

/// Directories the CUDA driver reads below (its /proc entries, the PCI devices' sysfs files):
/// read-only for CUDA workers, unless one holds a path of [`Confinement::forbidden`].
const CUDA_DRIVER_DIRS: [&str; 3] = ["/proc/driver/nvidia", "/sys/bus/pci", "/sys/devices"];

/// What a CUDA worker may read besides the CPU's description ([`cuda_rules`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CudaRules {
    /// Readable files (`ReadFile` on each, nothing beneath a directory): the shared libraries
    /// this process has mapped, and the other shared libraries beside them (the driver and
    /// cuDNN load further libraries lazily, from the directories of those already loaded).
    pub files: Vec<PathBuf>,
    /// Readable directories (`ReadFile` and `ReadDir` beneath): the driver's.
    pub dirs: Vec<PathBuf>,
}

/// Whether `path` is, or is beneath, or holds one of `forbidden`.
fn touches(path: &std::path::Path, forbidden: &[PathBuf]) -> bool {
    forbidden.iter().any(|f| path.starts_with(f) || f.starts_with(path))
}

/// A shared library's file name: `libx.so`, `libx.so.12`, `libx.so.12.1`.
fn is_shared_library(path: &std::path::Path) -> bool {
    path.file_name().and_then(|n| n.to_str()).is_some_and(|name| name.ends_with(".so") || name.contains(".so."))
}

/// The CUDA worker's read rules from the files it has mapped (`/proc/self/maps`), `listing` of
/// a directory (its entries' paths; only shared libraries among them are taken) and the paths
/// no rule may grant (the models and cache directories, the token and TLS files: neither
/// themselves, nor anything beneath them, nor a directory that holds them). Pure, for tests.
pub fn cuda_rules(
    mapped: &[PathBuf],
    listing: &dyn Fn(&std::path::Path) -> Vec<PathBuf>,
    driver_dirs: &[PathBuf],
    forbidden: &[PathBuf],
) -> CudaRules {
    let mut files: Vec<PathBuf> = mapped.iter().filter(|p| p.is_absolute() && is_shared_library(p)).cloned().collect();
    let mut parents: Vec<PathBuf> = files.iter().filter_map(|p| p.parent().map(|d| d.to_path_buf())).collect();
    parents.sort();
    parents.dedup();
    for parent in parents {
        files.extend(listing(&parent).into_iter().filter(|p| is_shared_library(p)));
    }
    files.retain(|p| !touches(p, forbidden));
    files.sort();
    files.dedup();
    let dirs = driver_dirs.iter().filter(|d| !touches(d, forbidden)).cloned().collect();
    CudaRules { files, dirs }
}

/// [`cuda_rules`] for this process.
fn cuda_rules_here(forbidden: &[PathBuf]) -> CudaRules {
    let mapped: Vec<PathBuf> = std::fs::read_to_string("/proc/self/maps")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .filter(|path| path.starts_with('/'))
        .map(PathBuf::from)
        .collect();
    let listing = |dir: &std::path::Path| -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter(|e| is_shared_library(&e.path()))
                    // A rule holds the file a link points at: judge that one.
                    .filter_map(|e| std::fs::canonicalize(e.path()).ok())
                    .filter(|p| p.is_file())
                    .collect()
            })
            .unwrap_or_default()
    };
    let forbidden: Vec<PathBuf> =
        forbidden.iter().flat_map(|f| [f.clone(), std::fs::canonicalize(f).unwrap_or_else(|_| f.clone())]).collect();
    let driver_dirs = CUDA_DRIVER_DIRS.map(PathBuf::from);
    cuda_rules(&mapped, &listing, &driver_dirs, &forbidden)
}

/// The NVIDIA device files (`/dev/nvidia*`).
fn cuda_device_files() -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir("/dev") else { return Vec::new() };
    entries.filter_map(Result::ok).filter(|e| e.file_name().to_string_lossy().starts_with("nvidia")).map(|e| e.path()).collect()
}

/// The seccomp filters, on every thread of the process (`TSYNC`).
fn seccomp(confinement: &Confinement) -> Result<(), SandboxError> {
    for program in seccomp_programs(confinement)? {
        seccompiler::apply_filter_all_threads(&program).map_err(|e| SandboxError::Seccomp(e.to_string()))?;
    }
    Ok(())
}

/// The system calls every worker is refused (EPERM), whatever their arguments.
pub const DENIED_SYSCALLS: [libc::c_long; 37] = [
    libc::SYS_execve,
    libc::SYS_execveat,
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    // Other processes' file descriptors, memory advice and kernel objects.
    libc::SYS_pidfd_getfd,
    libc::SYS_pidfd_open,
    libc::SYS_pidfd_send_signal,
    libc::SYS_kcmp,
    libc::SYS_process_madvise,
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_reboot,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_userfaultfd,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_fanotify_init,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_setrlimit,
];

/// The BPF programs of the worker's seccomp filters, in the order they are installed (the
/// kernel runs the last installed first; the strictest answer wins).
pub fn seccomp_programs(confinement: &Confinement) -> Result<Vec<seccompiler::BpfProgram>, SandboxError> {
    use seccompiler::{SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule, TargetArch};
    fn error(e: impl fmt::Display) -> SandboxError {
        SandboxError::Seccomp(e.to_string())
    }
    let arch: TargetArch = std::env::consts::ARCH.try_into().map_err(error)?;
    let condition =
        |arg: u8, len: SeccompCmpArgLen, op: SeccompCmpOp, value: u64| SeccompCondition::new(arg, len, op, value).map_err(error);
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for syscall in DENIED_SYSCALLS {
        rules.insert(syscall, Vec::new());
    }
    // Sockets: none on CPU; on CUDA only AF_UNIX (the driver's daemons, MPS).
    rules.insert(
        libc::SYS_socket,
        if confinement.cuda {
            vec![SeccompRule::new(vec![condition(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, libc::AF_UNIX as u64)?]).map_err(error)?]
        } else {
            Vec::new()
        },
    );
    // prlimit64 may read limits (new limit NULL), not set them.
    rules.insert(
        libc::SYS_prlimit64,
        vec![SeccompRule::new(vec![condition(2, SeccompCmpArgLen::Qword, SeccompCmpOp::Ne, 0)?]).map_err(error)?],
    );
    // clone() into new namespaces.
    let namespaces = [
        libc::CLONE_NEWNS,
        libc::CLONE_NEWUTS,
        libc::CLONE_NEWIPC,
        libc::CLONE_NEWUSER,
        libc::CLONE_NEWPID,
        libc::CLONE_NEWNET,
        libc::CLONE_NEWCGROUP,
    ];
    let mut clone_rules = Vec::new();
    for flag in namespaces {
        let flag = flag as u64;
        clone_rules
            .push(SeccompRule::new(vec![condition(0, SeccompCmpArgLen::Qword, SeccompCmpOp::MaskedEq(flag), flag)?]).map_err(error)?);
    }
    rules.insert(libc::SYS_clone, clone_rules);
    let filter = SeccompFilter::new(rules, SeccompAction::Allow, SeccompAction::Errno(libc::EPERM as u32), arch).map_err(error)?;
    let program: seccompiler::BpfProgram = filter.try_into().map_err(error)?;
    // clone3 takes its flags in memory a filter cannot read: ENOSYS makes glibc fall back to
    // clone(), whose flags the first filter sees.
    let mut clone3 = BTreeMap::new();
    clone3.insert(libc::SYS_clone3, Vec::new());
    let clone3 = SeccompFilter::new(clone3, SeccompAction::Allow, SeccompAction::Errno(libc::ENOSYS as u32), arch).map_err(error)?;
    let clone3: seccompiler::BpfProgram = clone3.try_into().map_err(error)?;
    let mut programs = vec![clone3, program];
    programs.extend(x32_filter());
    Ok(programs)
}

/// The x32 ABI's system call numbers have bit 30 set (`__X32_SYSCALL_BIT`) and the same
/// `AUDIT_ARCH_X86_64` as x86-64's: seccompiler's filters, which match exact numbers, would let
/// them through (to a kernel built with x32). seccompiler cannot express a mask on the number,
/// so this small program, written by hand, refuses (EPERM) every number with the bit.
#[cfg(target_arch = "x86_64")]
fn x32_filter() -> Option<seccompiler::BpfProgram> {
    use seccompiler::sock_filter;
    const LD_W_ABS: u16 = 0x20; // BPF_LD (0) | BPF_W (0) | BPF_ABS
    const JMP_JSET_K: u16 = 0x05 | 0x40; // BPF_JMP | BPF_JSET | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    let statement = |code: u16, k: u32| sock_filter { code, jt: 0, jf: 0, k };
    Some(vec![
        // seccomp_data.nr is at offset 0.
        statement(LD_W_ABS, 0),
        sock_filter { code: JMP_JSET_K, jt: 0, jf: 1, k: X32_SYSCALL_BIT as u32 },
        statement(RET_K, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32),
        statement(RET_K, libc::SECCOMP_RET_ALLOW),
    ])
}

#[cfg(not(target_arch = "x86_64"))]
fn x32_filter() -> Option<seccompiler::BpfProgram> {
    None
}

/// Whether this process's seccomp filter refuses (EPERM) what neither Landlock nor the uid can
/// refuse: a UDP socket, on CPU (`cuda` false) an AF_UNIX one, `pidfd_open` of itself, and on
/// x86-64 an x32 system call (`getpid`). The probe worker asks it once confined, so that a
/// filter that was installed but does not work is not reported as working.
pub fn seccomp_refuses(cuda: bool) -> bool {
    fn refused(result: libc::c_long) -> bool {
        if result >= 0 {
            // SAFETY: a descriptor this call just made (getpid's number is no descriptor to
            // close, but x32 getpid answering is a failure anyway).
            unsafe { libc::close(result as i32) };
            return false;
        }
        std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    }
    // SAFETY: socket and pidfd_open take no pointers.
    let mut ok = refused(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) } as libc::c_long);
    if !cuda {
        ok &= refused(unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) } as libc::c_long);
    }
    ok &= refused(unsafe { libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0) });
    if cfg!(target_arch = "x86_64") {
        // SAFETY: getpid takes no argument.
        let x32 = unsafe { libc::syscall(X32_SYSCALL_BIT | libc::SYS_getpid) };
        ok &= x32 < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    }
    ok
}

/// `__X32_SYSCALL_BIT`.
pub const X32_SYSCALL_BIT: libc::c_long = 0x4000_0000;

/// How this evaluator runs model code, as probed at start: shown in the log and answered by
/// the ServerInfo RPC's `model_code_protection`.
#[derive(Debug, Clone, PartialEq)]
pub struct Protection {
    /// `None`: models run in this process (`--in-process`).
    pub workers: Option<Enforced>,
    pub trust_torchscript: bool,
    pub cuda: bool,
}

impl Protection {
    /// In-process: no worker, no sandbox.
    pub fn in_process(trust_torchscript: bool) -> Self {
        Protection { workers: None, trust_torchscript, cuda: false }
    }

    /// Whether a TorchScript model may run, else why not (FAILED_PRECONDITION naming the
    /// missing mechanism and the flag).
    pub fn check_torchscript(&self) -> Result<(), EngineError> {
        if self.trust_torchscript {
            return Ok(());
        }
        match &self.workers {
            None => Err(EngineError::FailedPrecondition(
                "TorchScript models run only in a sandboxed worker process, and this evaluator runs models in-process \
                 (--in-process); pass --trust-torchscript to run the module's code with the evaluator's rights"
                    .into(),
            )),
            Some(enforced) if !enforced.full() => Err(EngineError::FailedPrecondition(format!(
                "TorchScript models are refused: this machine cannot sandbox their code ({}); an operator who trusts \
                 the models can pass --trust-torchscript to run them with what protection there is",
                enforced.missing.join(", ")
            ))),
            Some(_) => Ok(()),
        }
    }
}

impl fmt::Display for Protection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(enforced) = &self.workers else {
            return if self.trust_torchscript {
                write!(f, "in-process, no sandbox; TorchScript trusted (--trust-torchscript)")
            } else {
                write!(f, "in-process, no sandbox; TorchScript refused")
            };
        };
        let mut parts = Vec::new();
        if let Some(abi) = enforced.landlock_abi {
            parts.push(format!("Landlock ABI {abi} ({})", if enforced.landlock_tcp { "files, TCP" } else { "files" }));
        }
        if enforced.seccomp {
            parts.push("seccomp".into());
        }
        parts.push(match (enforced.memory_bytes, self.cuda) {
            (Some(bytes), _) => format!("rlimits (memory {})", format_bytes(bytes)),
            (None, true) => "rlimits (no memory cap on CUDA)".into(),
            (None, false) => "rlimits (no memory cap)".into(),
        });
        write!(f, "worker processes: {}", parts.join(", "))?;
        if !enforced.full() {
            write!(f, "; {}: ", enforced.missing.join(", "))?;
            if self.trust_torchscript {
                write!(f, "TorchScript trusted (--trust-torchscript)")?;
            } else {
                write!(f, "TorchScript refused")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> Enforced {
        Enforced {
            landlock_abi: Some(7),
            landlock_tcp: true,
            seccomp: true,
            no_new_privs: true,
            memory_bytes: Some(16 << 30),
            ..Default::default()
        }
    }

    #[test]
    fn protection_says_what_runs_model_code() {
        let sandboxed = Protection { workers: Some(full()), trust_torchscript: false, cuda: false };
        assert_eq!(sandboxed.to_string(), "worker processes: Landlock ABI 7 (files, TCP), seccomp, rlimits (memory 16 GiB)");
        assert!(sandboxed.check_torchscript().is_ok());

        let no_landlock =
            Enforced { landlock_abi: None, landlock_tcp: false, missing: vec!["the kernel has no Landlock".into()], ..full() };
        let refused = Protection { workers: Some(no_landlock.clone()), trust_torchscript: false, cuda: false };
        assert_eq!(
            refused.to_string(),
            "worker processes: seccomp, rlimits (memory 16 GiB); the kernel has no Landlock: TorchScript refused"
        );
        let error = refused.check_torchscript().unwrap_err();
        assert_eq!(error.code(), tonic::Code::FailedPrecondition);
        assert!(error.to_string().contains("no Landlock") && error.to_string().contains("--trust-torchscript"), "{error}");
        let trusted = Protection { trust_torchscript: true, ..refused };
        assert!(trusted.to_string().ends_with("TorchScript trusted (--trust-torchscript)"));
        assert!(trusted.check_torchscript().is_ok());

        let cuda = Protection { workers: Some(Enforced { memory_bytes: None, ..full() }), trust_torchscript: false, cuda: true };
        assert!(cuda.to_string().contains("no memory cap on CUDA"), "{cuda}");
        assert!(Protection::in_process(false).check_torchscript().is_err());
        assert!(Protection::in_process(true).check_torchscript().is_ok());
    }

    /// Runs `check` in a forked child that installs `programs` first; its exit status 0 is
    /// `true`. (A child: the filter cannot be removed from a process.)
    fn in_filtered_child(programs: &[seccompiler::BpfProgram], check: fn() -> bool) -> bool {
        // SAFETY: the child only makes system calls and leaves with _exit.
        match unsafe { libc::fork() } {
            0 => {
                let mut ok = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } == 0;
                for program in programs {
                    ok &= seccompiler::apply_filter(program).is_ok();
                }
                ok &= check();
                unsafe { libc::_exit(if ok { 0 } else { 1 }) }
            }
            -1 => panic!("fork: {}", std::io::Error::last_os_error()),
            child => {
                let mut status = 0;
                assert_eq!(unsafe { libc::waitpid(child, &mut status, 0) }, child);
                libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0
            }
        }
    }

    #[test]
    fn the_seccomp_filter_refuses_what_only_it_can() {
        if !seccomp_available() {
            eprintln!("no seccomp filters on this kernel: nothing to check");
            return;
        }
        let cpu = seccomp_programs(&Confinement::default()).unwrap();
        assert!(in_filtered_child(&cpu, || seccomp_refuses(false)), "the CPU filter lets through a socket, pidfd_open or x32");
        // Each of the newly denied calls, and what must still work.
        assert!(in_filtered_child(&cpu, || {
            let denied = |nr: libc::c_long| unsafe { libc::syscall(nr, 0, 0, 0, 0, 0) } == -1
                && std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
            [libc::SYS_pidfd_getfd, libc::SYS_pidfd_open, libc::SYS_pidfd_send_signal, libc::SYS_kcmp, libc::SYS_process_madvise]
                .into_iter()
                .all(denied)
                && unsafe { libc::getpid() } > 0
                && std::fs::read_to_string("/proc/self/status").is_ok()
        }));
        if cfg!(target_arch = "x86_64") {
            assert!(in_filtered_child(&cpu, || {
                let x32_getpid = unsafe { libc::syscall(X32_SYSCALL_BIT | libc::SYS_getpid) };
                x32_getpid == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
            }));
        }
        // CUDA keeps AF_UNIX, and refuses the rest.
        let cuda = seccomp_programs(&Confinement { cuda: true, ..Default::default() }).unwrap();
        assert!(in_filtered_child(&cuda, || {
            let unix = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM, 0) };
            seccomp_refuses(true) && unix >= 0
        }));
        // A filter that does not work is seen by the probe's check: here only clone3's.
        assert!(!in_filtered_child(&cpu[..1], || seccomp_refuses(false)), "a broken filter passed the probe's check");
        assert!(!in_filtered_child(&[], || seccomp_refuses(false)));
    }

    #[test]
    fn cuda_rules_grant_library_files_and_never_a_secret() {
        let listing = |dir: &std::path::Path| -> Vec<PathBuf> {
            match dir.to_str().unwrap() {
                "/opt/torch/lib" => ["libcudnn_engines.so.9", "libnvrtc.so.12", "notes.txt", "token"].map(|f| dir.join(f)).to_vec(),
                "/srv" => ["token.txt", "liblocal.so"].map(|f| dir.join(f)).to_vec(),
                _ => Vec::new(),
            }
        };
        let mapped: Vec<PathBuf> = [
            "/opt/torch/lib/libtorch_cuda.so",
            "/usr/lib/x86_64-linux-gnu/libcuda.so.580.1",
            "/srv/models/evil.so",
            "/srv/liblocal.so",
            "/opt/torch/lib/model.pt",
            "[vdso]",
        ]
        .map(PathBuf::from)
        .to_vec();
        let driver = ["/proc/driver/nvidia", "/sys/devices", "/sys/bus/pci", "/srv"].map(PathBuf::from);
        let forbidden = ["/srv/models", "/srv/token.txt", "/var/cache/rfb"].map(PathBuf::from);
        let rules = cuda_rules(&mapped, &listing, &driver, &forbidden);
        let files: Vec<&str> = rules.files.iter().map(|p| p.to_str().unwrap()).collect();
        assert_eq!(
            files,
            [
                "/opt/torch/lib/libcudnn_engines.so.9",
                "/opt/torch/lib/libnvrtc.so.12",
                "/opt/torch/lib/libtorch_cuda.so",
                "/srv/liblocal.so",
                "/usr/lib/x86_64-linux-gnu/libcuda.so.580.1",
            ]
        );
        // Directories only the driver's, never one holding a forbidden path (`/srv`).
        assert_eq!(rules.dirs, ["/proc/driver/nvidia", "/sys/devices", "/sys/bus/pci"].map(PathBuf::from));
        for granted in rules.files.iter().chain(&rules.dirs) {
            for secret in &forbidden {
                assert!(!secret.starts_with(granted) && !granted.starts_with(secret), "{granted:?} reaches {secret:?}");
            }
        }
    }

    #[test]
    fn memory_limits_parse() {
        assert_eq!("16GiB".parse::<MemoryLimit>().unwrap(), MemoryLimit::Bytes(16 << 30));
        assert_eq!("512 MiB".parse::<MemoryLimit>().unwrap(), MemoryLimit::Bytes(512 << 20));
        assert_eq!("auto".parse::<MemoryLimit>().unwrap(), MemoryLimit::Auto);
        assert_eq!("off".parse::<MemoryLimit>().unwrap(), MemoryLimit::Off);
        assert!("12 parsecs".parse::<MemoryLimit>().is_err());
        assert!("1KiB".parse::<MemoryLimit>().is_err());
        assert_eq!(format_bytes(16 << 30), "16 GiB");
        assert_eq!(format_bytes(3 << 29), "1.5 GiB");
        assert_eq!(format_bytes(512 << 20), "512 MiB");
    }
}
