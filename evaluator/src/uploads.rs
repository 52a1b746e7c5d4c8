//! Models sent over gRPC (`UploadModel`, `DeleteModel`): the header's checks, the per-client
//! limits, the staging of the bytes, and the atomic publication of the imported checkpoint as
//! `MODELS_DIR/uploads/<client>/<name>`.
//!
//! An upload is written to a private directory inside this server's own staging directory,
//! `MODELS_DIR/.rfb-staging/server-<pid>-<random>` (created 0700; hidden, so listings skip it),
//! imported there with [`crate::import::import_model_until`] (the checks of `evaluator
//! import`), and renamed into place. The staging directory of one upload is a
//! [`tempfile::TempDir`]: whatever ends an upload early (a refusal, a client that goes away, a
//! dropped handler future, a panic) drops it and takes its files with it, so a refused upload
//! leaves nothing. A cancelled upload (the client went away or its deadline passed while the
//! file was being imported) stops its import, kills its check worker, and is not published.
//!
//! Each server holds an exclusive `flock` on the lock file of its own staging directory for as
//! long as it runs. At start, a server removes the staging directories whose lock is not held
//! (those of servers that were killed), never another running server's; the scan and the
//! making of a server's directory are serialised by a lock on `.rfb-staging/.lock`.
//!
//! At most `max_concurrent_imports` uploads are imported (checked and written) at once, across
//! all clients ([`Uploads::imports`]); the others wait for their turn, their deadline respected.
//! An upload whose file could not fit on the disk is refused before any byte is taken.
//!
//! Renaming a directory onto a non-empty directory fails, so a published checkpoint is never
//! replaced, even by another server process on the same models directory; within a process a
//! lock makes "is the name free, then rename" one step, so that of two concurrent uploads of
//! one name exactly one wins and the other is answered as a repeat (same header and bytes) or
//! refused (ALREADY_EXISTS).

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use rfb_core::checkpoint::import::ImportOptions;
use rfb_core::checkpoint::{CheckpointError, MANIFEST_FILE};
use rfb_core::data::DatasetKind;
use rfb_proto::v1::{ModelFormat, UploadHeader};

use crate::import::ImportError;
use crate::sandbox::{Protection, SandboxConfig};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Largest chunk of an upload (the contract's 4 MiB).
pub const MAX_CHUNK_BYTES: usize = 4 << 20;
/// The hidden directory inside the models directory where uploads are written and deleted
/// models are removed.
pub const STAGING_DIR: &str = ".rfb-staging";
/// The directory inside the models directory that holds every client's uploads.
pub const UPLOADS_DIR: &str = "uploads";
/// The header an upload was made with, kept beside its manifest to tell a repeat from a clash.
pub const UPLOAD_RECORD_FILE: &str = "upload.json";
/// Default of `--max-upload-bytes`: a WRN-70-16 state dict (1.07 GB in fp32) fits.
pub const DEFAULT_MAX_UPLOAD_BYTES: u64 = 2 << 30;
/// Default of `--max-uploads-per-client`.
pub const DEFAULT_MAX_UPLOADS_PER_CLIENT: u64 = 16;
/// Default of `--max-upload-bytes-per-client`.
pub const DEFAULT_MAX_UPLOAD_BYTES_PER_CLIENT: u64 = 8 << 30;
/// Default of `--max-concurrent-imports`.
pub const DEFAULT_MAX_CONCURRENT_IMPORTS: usize = 2;
/// The disk room an upload needs, in multiples of its size: the staged file, and the
/// checkpoint (up to twice the file: a state dict saved in fp16 is stored in fp32).
pub const DISK_ROOM_FACTOR: u64 = 3;
/// The lock file of a server's staging directory, and of the staging root.
const LOCK_FILE: &str = ".lock";
/// The prefix of a server's own staging directory.
const SERVER_STAGING_PREFIX: &str = "server-";
/// Longest upload name, in characters.
pub const MAX_NAME_CHARS: usize = 128;
/// Most components of an upload name: with `uploads/<client>/` in front, listings (which look
/// 8 directories deep) still show it.
pub const MAX_NAME_COMPONENTS: usize = 6;
/// Longest file name, method, architecture and class name of a header, in bytes.
const MAX_TEXT_BYTES: usize = 128;
/// Most class names of a header (Tiny-ImageNet has 200).
const MAX_CLASS_NAMES: usize = 1000;

/// What `evaluator serve` allows: off unless `--allow-uploads`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadLimits {
    pub enabled: bool,
    /// Largest file.
    pub max_upload_bytes: u64,
    /// Models one client may keep (its uploads in progress included).
    pub max_uploads_per_client: u64,
    /// Bytes one client may keep, all its checkpoints (and uploads in progress) together, each
    /// counted at the size of the file the client sent (its upload record's `size`).
    pub max_upload_bytes_per_client: u64,
    /// Uploads imported (checked and written) at once, across all clients.
    pub max_concurrent_imports: usize,
}

impl Default for UploadLimits {
    fn default() -> Self {
        UploadLimits {
            enabled: false,
            max_upload_bytes: DEFAULT_MAX_UPLOAD_BYTES,
            max_uploads_per_client: DEFAULT_MAX_UPLOADS_PER_CLIENT,
            max_upload_bytes_per_client: DEFAULT_MAX_UPLOAD_BYTES_PER_CLIENT,
            max_concurrent_imports: DEFAULT_MAX_CONCURRENT_IMPORTS,
        }
    }
}

/// Why an upload or a deletion was refused or failed; each variant is one gRPC status code.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// FAILED_PRECONDITION.
    #[error("uploads are off on this server (it was started without --allow-uploads)")]
    Disabled,
    /// A bad header, a stream out of order, bytes that differ from the header, a file that is
    /// not a model (INVALID_ARGUMENT).
    #[error("{0}")]
    InvalidArgument(String),
    /// Over a limit (RESOURCE_EXHAUSTED).
    #[error("{0}")]
    ResourceExhausted(String),
    /// The name holds another model (ALREADY_EXISTS).
    #[error("{0}")]
    AlreadyExists(String),
    /// NOT_FOUND.
    #[error("{0}")]
    NotFound(String),
    /// Not the caller's model (PERMISSION_DENIED).
    #[error("{0}")]
    PermissionDenied(String),
    /// The server cannot do it as configured (FAILED_PRECONDITION).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The server's disk failed it (INTERNAL).
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    /// Anything else that failed on the server (INTERNAL).
    #[error("{0}")]
    Internal(String),
    /// The client went away or its deadline passed before the model was published (CANCELLED):
    /// nothing was kept.
    #[error("the upload was cancelled (the client went away or its deadline passed); nothing was kept")]
    Cancelled,
    /// A TorchScript module's checks could not run or finish: refused on a server without a
    /// sandbox that does not trust TorchScript (FAILED_PRECONDITION), its worker over its
    /// memory (RESOURCE_EXHAUSTED), out of time or dead: the worker's own status.
    #[error("{message}")]
    ModelCode { code: tonic::Code, message: String },
}

impl UploadError {
    pub fn code(&self) -> tonic::Code {
        match self {
            UploadError::Disabled | UploadError::FailedPrecondition(_) => tonic::Code::FailedPrecondition,
            UploadError::InvalidArgument(_) => tonic::Code::InvalidArgument,
            UploadError::ResourceExhausted(_) => tonic::Code::ResourceExhausted,
            UploadError::AlreadyExists(_) => tonic::Code::AlreadyExists,
            UploadError::NotFound(_) => tonic::Code::NotFound,
            UploadError::PermissionDenied(_) => tonic::Code::PermissionDenied,
            UploadError::Io { .. } | UploadError::Internal(_) => tonic::Code::Internal,
            UploadError::Cancelled => tonic::Code::Cancelled,
            UploadError::ModelCode { code, .. } => *code,
        }
    }

    fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> UploadError {
        let context = context.into();
        move |source| UploadError::Io { context, source }
    }
}

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The header as checked and normalised (defaults filled in, the sha256 in lower case): what
/// is recorded in [`UPLOAD_RECORD_FILE`], and what "the same header" compares.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UploadRecord {
    pub name: String,
    pub dataset: String,
    pub format: String,
    pub architecture: String,
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
    pub class_names: Vec<String>,
    pub method: String,
    pub size: u64,
    pub sha256: String,
    pub file_name: String,
}

/// Checks an upload name: 1 to [`MAX_NAME_CHARS`] characters of letters, digits, `-`, `_`,
/// `.` and `/`, at most [`MAX_NAME_COMPONENTS`] components, none empty or starting with `.`
/// (so no `.` or `..`, and nothing the listings would hide).
pub fn check_upload_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
        return Err(format!("name: 1 to {MAX_NAME_CHARS} characters, got {}", name.chars().count()));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))) {
        return Err(format!("name {name:?}: {c:?} is not allowed (letters, digits, '-', '_', '.' and '/')"));
    }
    let components: Vec<&str> = name.split('/').collect();
    if components.iter().any(|c| c.is_empty() || c.starts_with('.')) {
        return Err(format!("name {name:?}: no component may be empty, '.', '..' or start with '.'"));
    }
    if components.len() > MAX_NAME_COMPONENTS {
        return Err(format!("name {name:?}: at most {MAX_NAME_COMPONENTS} components"));
    }
    Ok(())
}

fn check_text(field: &str, text: &str) -> Result<(), String> {
    if text.len() > MAX_TEXT_BYTES {
        return Err(format!("{field}: at most {MAX_TEXT_BYTES} bytes, got {}", text.len()));
    }
    if text.chars().any(char::is_control) {
        return Err(format!("{field}: contains a control character"));
    }
    Ok(())
}

/// Checks and normalises a header (everything but the limits).
pub fn check_header(header: &UploadHeader) -> Result<UploadRecord, String> {
    check_upload_name(&header.name)?;
    check_text("dataset", &header.dataset)?;
    let dataset: DatasetKind = header
        .dataset
        .trim()
        .parse()
        .map_err(|_| format!("dataset: unknown data set {:?} (digits, cifar10, cifar100, tiny-imagenet)", header.dataset))?;
    check_text("architecture", &header.architecture)?;
    let architecture = header.architecture.trim();
    let torchscript = rfb_core::models::TORCHSCRIPT_ARCHITECTURE;
    let format = match ModelFormat::try_from(header.format) {
        Ok(ModelFormat::Unspecified) => "unspecified",
        Ok(ModelFormat::StateDict) => {
            if architecture.is_empty() || architecture.eq_ignore_ascii_case(torchscript) {
                return Err("architecture: a STATE_DICT upload names its architecture (e.g. resnet18, digits-cnn)".into());
            }
            "state_dict"
        }
        Ok(ModelFormat::Torchscript) => {
            if !(architecture.is_empty() || architecture.eq_ignore_ascii_case(torchscript)) {
                return Err(format!(
                    "architecture: a TORCHSCRIPT upload carries its own architecture; leave it empty (got {architecture:?})"
                ));
            }
            "torchscript"
        }
        Err(_) => return Err(format!("format: unknown value {}", header.format)),
    };
    if !architecture.is_empty() && !architecture.eq_ignore_ascii_case(torchscript) {
        architecture.parse::<rfb_core::models::Architecture>().map_err(|e| format!("architecture: {e}"))?;
    }
    let channels = dataset.input_shape()[0] as usize;
    match (header.mean.len(), header.std.len()) {
        (0, 0) => {}
        (m, s) if m == channels && s == channels => {
            if !header.mean.iter().all(|v| v.is_finite()) || !header.std.iter().all(|v| v.is_finite() && *v > 0.0) {
                return Err("mean and std: finite numbers, std above 0".into());
            }
        }
        (m, s) => return Err(format!("mean and std: both or neither, one per channel ({channels} for {dataset}); got {m} and {s}")),
    }
    if header.class_names.len() > MAX_CLASS_NAMES {
        return Err(format!("class_names: at most {MAX_CLASS_NAMES}"));
    }
    let classes = header.class_names.len() as i64;
    let fits = if dataset == DatasetKind::TinyImageNet { classes <= dataset.num_classes() } else { classes == dataset.num_classes() };
    if classes > 0 && !fits {
        return Err(format!("class_names: {classes} given, but {dataset} has {} classes", dataset.num_classes()));
    }
    for class in &header.class_names {
        check_text("class_names", class)?;
        if class.trim().is_empty() {
            return Err("class_names: an empty name".into());
        }
    }
    check_text("method", &header.method)?;
    let method = if header.method.trim().is_empty() { "imported" } else { header.method.trim() };
    if header.size == 0 {
        return Err("size: the file's size in bytes, above 0".into());
    }
    if header.sha256.len() != 64 || !header.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("sha256: 64 hexadecimal digits".into());
    }
    let file_name = if header.file_name.is_empty() { "upload" } else { header.file_name.as_str() };
    check_text("file_name", file_name)?;
    if file_name.starts_with('.') || !file_name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '+')) {
        return Err(format!("file_name {file_name:?}: letters, digits, '-', '_', '+' and '.', not starting with '.'"));
    }
    Ok(UploadRecord {
        name: header.name.clone(),
        dataset: dataset.name().to_string(),
        format: format.to_string(),
        architecture: architecture.to_string(),
        mean: header.mean.clone(),
        std: header.std.clone(),
        class_names: header.class_names.clone(),
        method: method.to_string(),
        size: header.size,
        sha256: header.sha256.to_ascii_lowercase(),
        file_name: file_name.to_string(),
    })
}

/// The size of the file the client sent for the uploaded checkpoint `dir` (its record's
/// `size`), if `dir` is one.
fn recorded_size(dir: &Path) -> Option<u64> {
    if !dir.join(MANIFEST_FILE).is_file() {
        return None;
    }
    let text = std::fs::read_to_string(dir.join(UPLOAD_RECORD_FILE)).ok()?;
    serde_json::from_str::<UploadRecord>(&text).ok().map(|record| record.size)
}

/// Checkpoints and bytes below `dir` (links not followed; absent: none), the limits' measure:
/// an uploaded checkpoint counts the bytes the client sent (its record's `size`: a state dict
/// sent in fp16 is stored in fp32, twice as large on disk), anything else its bytes on disk.
fn usage(dir: &Path) -> (u64, u64) {
    fn walk(dir: &Path, depth: usize, totals: &mut (u64, u64)) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.filter_map(Result::ok) {
            let Ok(metadata) = entry.path().symlink_metadata() else { continue };
            if metadata.is_dir() {
                if let Some(size) = recorded_size(&entry.path()) {
                    totals.0 += 1;
                    totals.1 += size;
                } else if depth < 64 {
                    walk(&entry.path(), depth + 1, totals);
                }
            } else if metadata.is_file() {
                totals.1 += metadata.len();
                if entry.file_name() == MANIFEST_FILE {
                    totals.0 += 1;
                }
            }
        }
    }
    let mut totals = (0, 0);
    walk(dir, 0, &mut totals);
    totals
}

/// What uploads in progress hold of each client's limits, returned when they end.
type Reservations = Arc<Mutex<HashMap<String, (u64, u64)>>>;

struct Reservation {
    table: Reservations,
    client: String,
    count: u64,
    bytes: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut table = locked(&self.table);
        if let Some(held) = table.get_mut(&self.client) {
            held.0 = held.0.saturating_sub(self.count);
            held.1 = held.1.saturating_sub(self.bytes);
            if *held == (0, 0) {
                table.remove(&self.client);
            }
        }
    }
}

/// Takes an exclusive `flock` on `file`: `Ok(false)` when another open file holds it and
/// `wait` is false.
fn flock(file: &std::fs::File, wait: bool) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    let operation = if wait { libc::LOCK_EX } else { libc::LOCK_EX | libc::LOCK_NB };
    loop {
        // SAFETY: flock on a descriptor this File owns.
        if unsafe { libc::flock(file.as_raw_fd(), operation) } == 0 {
            return Ok(true);
        }
        let error = std::io::Error::last_os_error();
        match error.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) if !wait => return Ok(false),
            _ => return Err(error),
        }
    }
}

fn open_lock_file(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o600).open(path)
}

/// Makes `staging` (0700) if needed, removes what servers that are no longer running left in
/// it (their lock not held; stray files), and makes this server's own directory, locked.
/// Answers the directory and its held lock file.
fn claim_staging(staging: &Path) -> Result<(PathBuf, std::fs::File), UploadError> {
    match staging.symlink_metadata() {
        Ok(metadata) if metadata.is_dir() => {
            std::fs::set_permissions(staging, std::fs::Permissions::from_mode(0o700))
                .map_err(UploadError::io(format!("securing {}", staging.display())))?;
        }
        Ok(_) => return Err(UploadError::FailedPrecondition(format!("{} exists and is not a directory", staging.display()))),
        Err(_) => match std::fs::DirBuilder::new().mode(0o700).create(staging) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(UploadError::Io { context: format!("creating {}", staging.display()), source: e }),
        },
    }
    // One server at a time scans and claims, so that no server sees another's directory
    // between its making and its locking.
    let root_lock_path = staging.join(LOCK_FILE);
    let root_lock = open_lock_file(&root_lock_path).map_err(UploadError::io(format!("opening {}", root_lock_path.display())))?;
    flock(&root_lock, true).map_err(UploadError::io(format!("locking {}", root_lock_path.display())))?;
    let entries = std::fs::read_dir(staging).map_err(UploadError::io(format!("reading {}", staging.display())))?;
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        if entry.file_name() == LOCK_FILE {
            continue;
        }
        let removed = match path.symlink_metadata() {
            Ok(m) if m.is_dir() => {
                // A directory whose lock another process holds belongs to a running server.
                match std::fs::File::open(path.join(LOCK_FILE)) {
                    Ok(lock) if !flock(&lock, false).unwrap_or(false) => {
                        tracing::debug!(path = %path.display(), "the staging directory of a running server: kept");
                        continue;
                    }
                    _ => std::fs::remove_dir_all(&path),
                }
            }
            _ => std::fs::remove_file(&path),
        };
        match removed {
            Ok(()) => tracing::info!(path = %path.display(), "removed a staging leftover"),
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot remove a staging leftover"),
        }
    }
    let own = tempfile::Builder::new()
        .prefix(&format!("{SERVER_STAGING_PREFIX}{}-", std::process::id()))
        .tempdir_in(staging)
        .map_err(UploadError::io(format!("creating a staging directory in {}", staging.display())))?
        .keep();
    let lock_path = own.join(LOCK_FILE);
    let lock = open_lock_file(&lock_path).map_err(UploadError::io(format!("creating {}", lock_path.display())))?;
    flock(&lock, true).map_err(UploadError::io(format!("locking {}", lock_path.display())))?;
    drop(root_lock);
    Ok((own, lock))
}

/// Bytes free for this process on the file system of `dir`.
fn available_bytes(dir: &Path) -> Option<u64> {
    let stats = nix::sys::statvfs::statvfs(dir).ok()?;
    Some((stats.blocks_available() as u64).saturating_mul(stats.fragment_size() as u64))
}

/// Whether an upload of `size` bytes fits on a disk with `available` bytes free while uploads
/// of `in_progress` bytes (declared sizes) are under way: each needs [`DISK_ROOM_FACTOR`]
/// times its size.
fn check_room(available: u64, size: u64, in_progress: u64) -> Result<(), UploadError> {
    let needed = (size as u128 + in_progress as u128) * DISK_ROOM_FACTOR as u128;
    if needed > available as u128 {
        return Err(UploadError::ResourceExhausted(format!(
            "the server's disk has {available} bytes free; this upload of {size} bytes needs {DISK_ROOM_FACTOR} times its size \
             (the file and its checkpoint), as do the {in_progress} bytes of the uploads in progress: try again later"
        )));
    }
    Ok(())
}

/// The uploads of one models directory.
#[derive(Debug)]
pub struct Uploads {
    models_dir: PathBuf,
    /// This server's own staging directory (inside [`STAGING_DIR`]).
    staging: PathBuf,
    /// The held lock of `staging` (uploads on): `staging` is removed on drop.
    staging_lock: Option<std::fs::File>,
    /// Permits to import (check and write) an upload: [`UploadLimits::max_concurrent_imports`].
    imports: Arc<tokio::sync::Semaphore>,
    data_dir: Option<PathBuf>,
    limits: UploadLimits,
    reserved: Reservations,
    /// How a TorchScript module's import checks run (a sandboxed worker) and what the machine
    /// allows, as `evaluator import` does it.
    sandbox: SandboxConfig,
    protection: Option<Protection>,
    /// Held while a name is checked and a checkpoint renamed into or out of place.
    publish: Mutex<()>,
}

/// The model name of `name` under `client`'s prefix.
pub fn upload_prefix(client: &str) -> String {
    format!("{UPLOADS_DIR}/{client}")
}

impl Uploads {
    /// Uploads into `models_dir` (canonical). With uploads on, makes the staging directory
    /// (0700), removes what killed servers left in it (never a running server's directory), and
    /// makes and locks this server's own directory in it; with them off, touches nothing.
    /// TorchScript modules are checked under `sandbox`, refused where `protection` says the
    /// machine cannot confine them and the operator does not trust them.
    pub fn open(
        models_dir: &Path,
        data_dir: Option<&Path>,
        limits: UploadLimits,
        sandbox: SandboxConfig,
        protection: Option<Protection>,
    ) -> Result<Self, UploadError> {
        let mut staging = models_dir.join(STAGING_DIR);
        let mut staging_lock = None;
        if limits.enabled {
            if limits.max_upload_bytes == 0
                || limits.max_uploads_per_client == 0
                || limits.max_upload_bytes_per_client == 0
                || limits.max_concurrent_imports == 0
            {
                return Err(UploadError::FailedPrecondition(
                    "--max-upload-bytes, --max-uploads-per-client, --max-upload-bytes-per-client and --max-concurrent-imports must be positive".into(),
                ));
            }
            let (own, lock) = claim_staging(&staging)?;
            staging = own;
            staging_lock = Some(lock);
        }
        Ok(Uploads {
            models_dir: models_dir.to_path_buf(),
            staging,
            staging_lock,
            imports: Arc::new(tokio::sync::Semaphore::new(limits.max_concurrent_imports.max(1))),
            data_dir: data_dir.map(Path::to_path_buf),
            limits,
            reserved: Arc::default(),
            sandbox,
            protection,
            publish: Mutex::new(()),
        })
    }

    pub fn limits(&self) -> UploadLimits {
        self.limits
    }

    /// The permits to import an upload ([`UploadLimits::max_concurrent_imports`]): hold one
    /// while [`Upload::finish_until`] runs.
    pub fn imports(&self) -> Arc<tokio::sync::Semaphore> {
        self.imports.clone()
    }

    /// This server's own staging directory.
    pub fn staging_dir(&self) -> &Path {
        &self.staging
    }

    fn client_dir(&self, client: &str) -> PathBuf {
        self.models_dir.join(UPLOADS_DIR).join(client)
    }

    /// The stored record of the checkpoint at `target`, if there is one there.
    fn existing(&self, name: &str, target: &Path) -> Result<Option<UploadRecord>, UploadError> {
        let taken = || UploadError::AlreadyExists(format!("{name:?} is taken by a model that was not uploaded"));
        match target.symlink_metadata() {
            Err(_) => Ok(None),
            Ok(m) if m.is_dir() && target.join(MANIFEST_FILE).is_file() => {
                let text = std::fs::read_to_string(target.join(UPLOAD_RECORD_FILE)).map_err(|_| taken())?;
                serde_json::from_str(&text).map(Some).map_err(|_| taken())
            }
            Ok(_) => Err(UploadError::AlreadyExists(format!("{name:?} is a directory of other models, not a model"))),
        }
    }

    /// Refuses a name that lies inside another model (listings would not see it), the
    /// client's own or one the operator put at `uploads` or `uploads/<client>`.
    fn check_not_nested(&self, client: &str, record: &UploadRecord) -> Result<(), UploadError> {
        let model = format!("{}/{}", upload_prefix(client), record.name);
        let components: Vec<&str> = model.split('/').collect();
        let mut dir = self.models_dir.clone();
        for (depth, component) in components.iter().enumerate().take(components.len() - 1) {
            dir.push(component);
            if dir.join(MANIFEST_FILE).exists() {
                return Err(UploadError::AlreadyExists(format!(
                    "{model:?} would lie inside the model {:?}",
                    components[..=depth].join("/")
                )));
            }
        }
        Ok(())
    }

    /// Starts an upload for `client` (the prefix's last component): checks the header and the
    /// limits before any byte is taken, and opens its staging file.
    pub fn begin(self: &Arc<Self>, client: &str, header: &UploadHeader) -> Result<Upload, UploadError> {
        if !self.limits.enabled {
            return Err(UploadError::Disabled);
        }
        let record = check_header(header).map_err(UploadError::InvalidArgument)?;
        let limits = self.limits;
        if record.size > limits.max_upload_bytes {
            return Err(UploadError::ResourceExhausted(format!(
                "the file is {} bytes; this server takes files of at most {} bytes (--max-upload-bytes)",
                record.size, limits.max_upload_bytes
            )));
        }
        let model = format!("{}/{}", upload_prefix(client), record.name);
        let target = self.client_dir(client).join(&record.name);
        let repeat = {
            let _publishing = locked(&self.publish);
            self.check_not_nested(client, &record)?;
            match self.existing(&model, &target)? {
                Some(existing) if existing == record => true,
                Some(_) => {
                    return Err(UploadError::AlreadyExists(format!(
                        "{model:?} holds a model uploaded with another header or other bytes; delete it first or choose another name"
                    )))
                }
                None => false,
            }
        };
        // A repeat adds nothing to the client's holdings; anything else must fit its limits.
        let (count, bytes) = if repeat { (0, 0) } else { (1, record.size) };
        let reservation = {
            let (stored_count, stored_bytes) = usage(&self.client_dir(client));
            let mut table = locked(&self.reserved);
            let held = table.entry(client.to_string()).or_default();
            let (after_count, after_bytes) = (stored_count + held.0 + count, stored_bytes + held.1 + bytes);
            if after_count > limits.max_uploads_per_client {
                return Err(UploadError::ResourceExhausted(format!(
                    "models under {}: {} (uploads in progress counted); at most {} per client (--max-uploads-per-client): delete one first",
                    upload_prefix(client),
                    after_count - count,
                    limits.max_uploads_per_client
                )));
            }
            if after_bytes > limits.max_upload_bytes_per_client {
                return Err(UploadError::ResourceExhausted(format!(
                    "{} bytes are under {} (uploads in progress counted); with these {} it would be {after_bytes}, above the {} per client (--max-upload-bytes-per-client)",
                    after_bytes - bytes,
                    upload_prefix(client),
                    bytes,
                    limits.max_upload_bytes_per_client
                )));
            }
            // The disk: room for this file and its checkpoint, and for the uploads in progress.
            let in_progress: u64 = table.values().map(|held| held.1).sum();
            if let Some(available) = available_bytes(&self.staging) {
                check_room(available, record.size, in_progress)?;
            }
            let held = table.entry(client.to_string()).or_default();
            held.0 += count;
            held.1 += bytes;
            Reservation { table: self.reserved.clone(), client: client.to_string(), count, bytes }
        };
        let dir = tempfile::Builder::new()
            .prefix("upload-")
            .tempdir_in(&self.staging)
            .map_err(UploadError::io(format!("creating a staging directory in {}", self.staging.display())))?;
        let path = dir.path().join(&record.file_name);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(UploadError::io(format!("creating {}", path.display())))?;
        Ok(Upload {
            uploads: self.clone(),
            client: client.to_string(),
            model,
            target,
            record,
            file,
            path,
            hasher: Sha256::new(),
            written: 0,
            started: Instant::now(),
            _reservation: reservation,
            dir,
        })
    }

    /// Removes `client`'s model `model` (its full name, `uploads/<client>/...`): renamed into
    /// the staging directory (atomic), then deleted. Answers the bytes freed.
    pub fn delete(&self, client: &str, model: &str) -> Result<u64, UploadError> {
        if !self.limits.enabled {
            return Err(UploadError::Disabled);
        }
        let prefix = format!("{}/", upload_prefix(client));
        let Some(name) = model.strip_prefix(&prefix).filter(|name| check_upload_name(name).is_ok()) else {
            return Err(UploadError::PermissionDenied(format!(
                "{model:?} is not one of your uploads: you may delete only models under {prefix}"
            )));
        };
        let target = self.client_dir(client).join(name);
        let _publishing = locked(&self.publish);
        match target.symlink_metadata() {
            Ok(m) if m.is_dir() && target.join(MANIFEST_FILE).is_file() => {}
            _ => return Err(UploadError::NotFound(format!("no model {model:?}"))),
        }
        let (_, bytes) = usage(&target);
        let bin = tempfile::Builder::new()
            .prefix("delete-")
            .tempdir_in(&self.staging)
            .map_err(UploadError::io(format!("creating a staging directory in {}", self.staging.display())))?;
        std::fs::rename(&target, bin.path().join("model")).map_err(UploadError::io(format!("moving {} out", target.display())))?;
        // Empty directories the name made (never the client's own).
        let client_dir = self.client_dir(client);
        let mut parent = target.parent();
        while let Some(dir) = parent.filter(|d| d.starts_with(&client_dir) && *d != client_dir) {
            if std::fs::remove_dir(dir).is_err() {
                break;
            }
            parent = dir.parent();
        }
        bin.close().map_err(UploadError::io(format!("removing the deleted {model:?}")))?;
        tracing::info!(client, model, bytes, "model deleted");
        Ok(bytes)
    }
}

impl Drop for Uploads {
    fn drop(&mut self) {
        if self.staging_lock.is_some() {
            let _ = std::fs::remove_dir_all(&self.staging);
        }
    }
}

/// One upload in progress. Dropping it (refused, cancelled, failed) removes its staging
/// directory and returns its share of the client's limits.
pub struct Upload {
    uploads: Arc<Uploads>,
    client: String,
    /// The full model name, `uploads/<client>/<name>`.
    model: String,
    target: PathBuf,
    record: UploadRecord,
    file: std::fs::File,
    path: PathBuf,
    hasher: Sha256,
    written: u64,
    started: Instant,
    _reservation: Reservation,
    /// Last, so that it is removed after the file is closed.
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for Upload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upload").field("model", &self.model).field("written", &self.written).field("size", &self.record.size).finish()
    }
}

impl Upload {
    /// The model's name once uploaded.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// Appends a chunk: at most [`MAX_CHUNK_BYTES`], never past the declared size. Blocking.
    pub fn write(&mut self, chunk: &[u8]) -> Result<(), UploadError> {
        if chunk.len() > MAX_CHUNK_BYTES {
            return Err(UploadError::InvalidArgument(format!("a chunk of {} bytes; at most {MAX_CHUNK_BYTES} each", chunk.len())));
        }
        let after = self.written + chunk.len() as u64;
        if after > self.record.size {
            return Err(UploadError::InvalidArgument(format!("more bytes than the {} the header declares (size)", self.record.size)));
        }
        self.file.write_all(chunk).map_err(UploadError::io(format!("writing {}", self.path.display())))?;
        self.hasher.update(chunk);
        self.written = after;
        Ok(())
    }

    /// Verifies the size and sha256, imports the file and publishes the checkpoint (or finds
    /// the same upload already there). Answers the model's name. Blocking (the import checks
    /// and converts the model).
    pub fn finish(self) -> Result<String, UploadError> {
        self.finish_until(&|| false)
    }

    /// [`Upload::finish`], stopped (CANCELLED, nothing kept, the check worker killed) once
    /// `cancelled` answers true: it is asked while a TorchScript module's checks run, before
    /// and after the import, and last under the publication lock just before the rename.
    pub fn finish_until(self, cancelled: &dyn Fn() -> bool) -> Result<String, UploadError> {
        let (client, model, started) = (self.client.clone(), self.model.clone(), self.started);
        let finished = self.import_and_publish(cancelled);
        if let Err(UploadError::Cancelled) = finished {
            // Its client is gone: the log is the one place this is told.
            tracing::info!(
                client = %client,
                model = %model,
                seconds = started.elapsed().as_secs_f64(),
                "upload cancelled (the client went away or its deadline passed) while it was imported; nothing kept"
            );
        }
        finished
    }

    fn import_and_publish(self, cancelled: &dyn Fn() -> bool) -> Result<String, UploadError> {
        if cancelled() {
            return Err(UploadError::Cancelled);
        }
        if self.written != self.record.size {
            return Err(UploadError::InvalidArgument(format!(
                "the stream ended after {} of the {} bytes the header declares",
                self.written, self.record.size
            )));
        }
        let got: String = self.hasher.clone().finalize().iter().map(|b| format!("{b:02x}")).collect();
        if got != self.record.sha256 {
            return Err(UploadError::InvalidArgument(format!(
                "sha256 mismatch: the header declares {}, the bytes sent have {got}",
                self.record.sha256
            )));
        }
        let uploads = self.uploads.clone();
        {
            let _publishing = locked(&uploads.publish);
            if let Some(existing) = uploads.existing(&self.model, &self.target)? {
                return self.repeat_of(existing);
            }
        }
        let out = self.dir.path().join("checkpoint");
        let record = &self.record;
        let options = ImportOptions {
            from: self.path.clone(),
            out: out.clone(),
            dataset: record.dataset.parse().map_err(|e: rfb_core::data::DataError| UploadError::InvalidArgument(e.to_string()))?,
            architecture: (!record.architecture.is_empty()).then(|| record.architecture.clone()),
            method: record.method.clone(),
            normalisation: (!record.mean.is_empty())
                .then(|| rfb_core::models::Normalisation { mean: record.mean.clone(), std: record.std.clone() }),
            class_names: (!record.class_names.is_empty()).then(|| record.class_names.clone()),
            data_dir: uploads.data_dir.clone(),
            overwrite: false,
        };
        let imported = crate::import::import_model_until(&options, &uploads.sandbox, uploads.protection.as_ref(), cancelled)
            .map_err(|e| self.import_error(e))?;
        if cancelled() {
            return Err(UploadError::Cancelled);
        }
        if record.format != "unspecified" && record.format != imported.kind.name() {
            return Err(UploadError::InvalidArgument(format!(
                "the header says {}, but the file is a {}",
                record.format,
                imported.kind.name()
            )));
        }
        let text = serde_json::to_string_pretty(record).map_err(|e| UploadError::Internal(e.to_string()))?;
        rfb_core::checkpoint::write_atomic(&out.join(UPLOAD_RECORD_FILE), text.as_bytes())
            .map_err(|e| UploadError::Internal(e.to_string()))?;
        let _publishing = locked(&uploads.publish);
        // Last look before the model becomes visible: a cancelled upload is not published.
        if cancelled() {
            return Err(UploadError::Cancelled);
        }
        uploads.check_not_nested(&self.client, record)?;
        if let Some(existing) = uploads.existing(&self.model, &self.target)? {
            // Another upload of this name won the race.
            return self.repeat_of(existing);
        }
        if let Some(parent) = self.target.parent() {
            std::fs::create_dir_all(parent).map_err(UploadError::io(format!("creating {}", parent.display())))?;
        }
        // A rename onto a non-empty directory fails: a published checkpoint is never replaced.
        std::fs::rename(&out, &self.target).map_err(|e| match e.kind() {
            std::io::ErrorKind::DirectoryNotEmpty | std::io::ErrorKind::AlreadyExists => {
                UploadError::AlreadyExists(format!("{:?} was taken while this upload ran", self.model))
            }
            _ => UploadError::Io { context: format!("moving the checkpoint to {}", self.target.display()), source: e },
        })?;
        if let Ok(dir) = std::fs::File::open(self.target.parent().unwrap_or(&uploads.models_dir)) {
            let _ = dir.sync_all();
        }
        tracing::info!(
            client = %self.client,
            model = %self.model,
            bytes = record.size,
            kind = imported.kind.name(),
            seconds = self.started.elapsed().as_secs_f64(),
            "model uploaded"
        );
        Ok(self.model.clone())
    }

    /// A message without this upload's staging paths (the client named the file and the
    /// model, the server's directories are its own).
    fn without_paths(&self, message: &str) -> String {
        message
            .replace(&self.path.display().to_string(), &self.record.file_name)
            .replace(&self.dir.path().join("checkpoint").display().to_string(), &self.model)
            .replace(&self.dir.path().display().to_string(), "<upload>")
    }

    fn repeat_of(&self, existing: UploadRecord) -> Result<String, UploadError> {
        if existing == self.record {
            tracing::info!(client = %self.client, model = %self.model, "the same upload again: the existing model answered");
            Ok(self.model.clone())
        } else {
            Err(UploadError::AlreadyExists(format!(
                "{:?} holds a model uploaded with another header or other bytes; delete it first or choose another name",
                self.model
            )))
        }
    }

    /// The import's refusal, naming the file as the client did and the model by its name.
    fn import_error(&self, error: ImportError) -> UploadError {
        let code = error.code();
        let error = match error {
            ImportError::Checkpoint(error) => error,
            ImportError::ModelCode(crate::request::EngineError::Cancelled) => return UploadError::Cancelled,
            ImportError::ModelCode(error) => return UploadError::ModelCode { code, message: self.without_paths(&error.to_string()) },
        };
        let message = error
            .to_string()
            .replace(&self.path.display().to_string(), &self.record.file_name)
            .replace(&self.dir.path().join("checkpoint").display().to_string(), &self.model)
            .replace(&self.dir.path().display().to_string(), "<upload>");
        let message = self.without_paths(&message);
        match error {
            CheckpointError::Io { .. } => UploadError::Internal(message),
            CheckpointError::Torch(_) if crate::request::is_out_of_memory(&message) => UploadError::ResourceExhausted(message),
            _ => UploadError::InvalidArgument(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good_header() -> UploadHeader {
        UploadHeader {
            name: "team/resnet18-trades.v2".into(),
            dataset: "cifar10".into(),
            format: ModelFormat::StateDict as i32,
            architecture: "resnet18".into(),
            mean: vec![0.5; 3],
            std: vec![0.25; 3],
            size: 10,
            sha256: "AB".repeat(32),
            ..Default::default()
        }
    }

    #[test]
    fn headers_are_checked_field_by_field() {
        let record = check_header(&good_header()).unwrap();
        assert_eq!((record.method.as_str(), record.file_name.as_str()), ("imported", "upload"), "defaults filled in");
        assert_eq!(record.sha256, "ab".repeat(32), "one spelling of a digest");
        let cases: Vec<(UploadHeader, &str)> = vec![
            (UploadHeader { name: String::new(), ..good_header() }, "name: 1 to 128"),
            (UploadHeader { name: "x".repeat(129), ..good_header() }, "name: 1 to 128"),
            (UploadHeader { name: "a/../b".into(), ..good_header() }, "'..'"),
            (UploadHeader { name: "./a".into(), ..good_header() }, "'.'"),
            (UploadHeader { name: "a//b".into(), ..good_header() }, "empty"),
            (UploadHeader { name: "/abs".into(), ..good_header() }, "empty"),
            (UploadHeader { name: ".hidden".into(), ..good_header() }, "start with '.'"),
            (UploadHeader { name: "a b".into(), ..good_header() }, "' ' is not allowed"),
            (UploadHeader { name: "a/b/c/d/e/f/g".into(), ..good_header() }, "at most 6 components"),
            (UploadHeader { dataset: "imagenet".into(), ..good_header() }, "unknown data set"),
            (UploadHeader { architecture: String::new(), ..good_header() }, "names its architecture"),
            (UploadHeader { architecture: "resnet9000".into(), ..good_header() }, "architecture:"),
            (UploadHeader { format: ModelFormat::Torchscript as i32, ..good_header() }, "leave it empty"),
            (UploadHeader { format: 7, ..good_header() }, "format: unknown value 7"),
            (UploadHeader { mean: vec![0.5; 1], ..good_header() }, "both or neither"),
            (UploadHeader { std: vec![], ..good_header() }, "both or neither"),
            (UploadHeader { std: vec![0.0; 3], ..good_header() }, "std above 0"),
            (UploadHeader { class_names: vec!["a".into(); 9], ..good_header() }, "9 given"),
            (UploadHeader { method: "x".repeat(200), ..good_header() }, "method: at most"),
            (UploadHeader { size: 0, ..good_header() }, "size"),
            (UploadHeader { sha256: "ab".into(), ..good_header() }, "64 hexadecimal"),
            (UploadHeader { sha256: "zz".repeat(32), ..good_header() }, "64 hexadecimal"),
            (UploadHeader { file_name: "../x.pt".into(), ..good_header() }, "file_name"),
            (UploadHeader { file_name: "a/b.pt".into(), ..good_header() }, "file_name"),
        ];
        for (header, says) in cases {
            match check_header(&header) {
                Err(message) => assert!(message.contains(says), "{says}: {message}"),
                Ok(record) => panic!("{says}: accepted {record:?}"),
            }
        }
        let torchscript = UploadHeader { format: ModelFormat::Torchscript as i32, architecture: String::new(), ..good_header() };
        assert_eq!(check_header(&torchscript).unwrap().format, "torchscript");
    }

    fn uploads(models: &Path, limits: UploadLimits) -> Arc<Uploads> {
        Arc::new(Uploads::open(models, None, UploadLimits { enabled: true, ..limits }, SandboxConfig::default(), None).unwrap())
    }

    /// What this server has staged (its lock file left out).
    fn staged(uploads: &Uploads) -> usize {
        std::fs::read_dir(uploads.staging_dir()).unwrap().filter_map(Result::ok).filter(|e| e.file_name() != LOCK_FILE).count()
    }

    fn sized(name: &str, size: u64) -> UploadHeader {
        UploadHeader { name: name.into(), size, ..good_header() }
    }

    /// Uploads in progress count toward the client's limits (count and declared bytes) until
    /// they end; other clients are not affected; the staging directory goes with the upload.
    #[test]
    fn uploads_in_progress_hold_their_share_of_the_limits() {
        let models = tempfile::tempdir().unwrap();
        let limits = UploadLimits { max_uploads_per_client: 2, max_upload_bytes_per_client: 100, ..Default::default() };
        let uploads = uploads(models.path(), limits);
        let first = uploads.begin("alice", &sized("a", 60)).unwrap();
        let over_bytes = uploads.begin("alice", &sized("b", 41)).unwrap_err();
        assert_eq!(over_bytes.code(), tonic::Code::ResourceExhausted, "{over_bytes}");
        assert!(over_bytes.to_string().contains("--max-upload-bytes-per-client"), "{over_bytes}");
        let second = uploads.begin("alice", &sized("b", 40)).unwrap();
        let over_count = uploads.begin("alice", &sized("c", 1)).unwrap_err();
        assert!(over_count.to_string().contains("--max-uploads-per-client"), "{over_count}");
        assert!(uploads.begin("bob", &sized("a", 100)).is_ok(), "limits are per client");
        assert_eq!(staged(&uploads), 2, "bob's dropped upload took its directory with it");
        drop((first, second));
        assert_eq!(staged(&uploads), 0);
        assert!(locked(&uploads.reserved).is_empty());
        assert!(uploads.begin("alice", &sized("c", 100)).is_ok(), "their share is returned");
    }

    /// The bytes a client sends are bounded by its header, and the digest is checked.
    #[test]
    fn the_bytes_must_be_those_declared() {
        let models = tempfile::tempdir().unwrap();
        let uploads = uploads(models.path(), UploadLimits::default());
        let bytes = b"0123456789";
        let header = UploadHeader { sha256: Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect(), ..sized("a", 10) };
        let mut upload = uploads.begin("alice", &header).unwrap();
        upload.write(&bytes[..4]).unwrap();
        assert!(upload.write(&[0; 7]).unwrap_err().to_string().contains("more bytes than the 10"));
        upload.write(&bytes[4..]).unwrap();
        // The right bytes, but no model: refused by the import, and nothing kept.
        let refused = upload.finish().unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused}");
        assert!(refused.to_string().starts_with("upload is neither"), "the file by its name, no staging path: {refused}");
        let mut wrong = uploads.begin("alice", &UploadHeader { sha256: "0".repeat(64), ..header.clone() }).unwrap();
        wrong.write(bytes).unwrap();
        assert!(wrong.finish().unwrap_err().to_string().contains("sha256 mismatch"));
        assert_eq!(staged(&uploads), 0);
        assert!(!models.path().join(UPLOADS_DIR).exists());
    }

    /// A name inside another model, or above other models, is taken.
    #[test]
    fn names_inside_or_above_models_are_taken() {
        let models = tempfile::tempdir().unwrap();
        let uploads = uploads(models.path(), UploadLimits::default());
        let model = models.path().join("uploads/alice/a");
        std::fs::create_dir_all(&model).unwrap();
        std::fs::write(model.join(MANIFEST_FILE), b"{}").unwrap();
        for name in ["a/b", "a/b/c"] {
            let refused = uploads.begin("alice", &sized(name, 1)).unwrap_err();
            assert!(refused.to_string().contains("inside the model \"uploads/alice/a\""), "{refused}");
        }
        let refused = uploads.begin("alice", &sized("a", 1)).unwrap_err();
        assert!(refused.to_string().contains("not uploaded"), "a model without upload.json: {refused}");
        std::fs::create_dir_all(models.path().join("uploads/alice/d/e")).unwrap();
        std::fs::write(models.path().join("uploads/alice/d/e").join(MANIFEST_FILE), b"{}").unwrap();
        let refused = uploads.begin("alice", &sized("d", 1)).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::AlreadyExists, "{refused}");
        assert!(uploads.begin("alice", &sized("d/f", 1)).is_ok() && uploads.begin("bob", &sized("a/b", 1)).is_ok());
    }

    #[test]
    fn only_ones_own_uploads_are_deleted() {
        let models = tempfile::tempdir().unwrap();
        let uploads = uploads(models.path(), UploadLimits::default());
        let model = models.path().join("uploads/alice/x/m");
        std::fs::create_dir_all(&model).unwrap();
        std::fs::write(model.join(MANIFEST_FILE), b"{}").unwrap();
        std::fs::write(model.join("model.safetensors"), [0u8; 98]).unwrap();
        for (client, name, code) in [
            ("bob", "uploads/alice/x/m", tonic::Code::PermissionDenied),
            ("alice", "uploads/alice/../bob/m", tonic::Code::PermissionDenied),
            ("alice", "natural/best", tonic::Code::PermissionDenied),
            ("alice", "uploads/alice/x", tonic::Code::NotFound),
            ("alice", "uploads/alice/y", tonic::Code::NotFound),
        ] {
            assert_eq!(uploads.delete(client, name).unwrap_err().code(), code, "{client} {name}");
        }
        assert_eq!(uploads.delete("alice", "uploads/alice/x/m").unwrap(), 100);
        assert!(!models.path().join("uploads/alice/x").exists() && models.path().join("uploads/alice").is_dir());
        assert_eq!(staged(&uploads), 0);
    }

    /// A model that another running server's uploads are staged in survives a second server's
    /// start on the same models directory; once that server is gone, its leftovers go.
    #[test]
    fn a_server_removes_only_the_staging_of_servers_that_are_gone() {
        let models = tempfile::tempdir().unwrap();
        let first = uploads(models.path(), UploadLimits::default());
        let mut upload = first.begin("alice", &sized("a", 10)).unwrap();
        upload.write(b"01234").unwrap();
        let staged_file = upload.path.clone();
        assert!(staged_file.starts_with(first.staging_dir()) && staged_file.is_file());
        std::fs::write(models.path().join(STAGING_DIR).join("stray-file"), b"x").unwrap();
        std::fs::create_dir_all(models.path().join(STAGING_DIR).join("upload-of-an-old-server")).unwrap();
        let second = uploads(models.path(), UploadLimits::default());
        assert_ne!(first.staging_dir(), second.staging_dir());
        assert!(staged_file.is_file(), "the first server's upload in progress survived the second's start");
        assert!(!models.path().join(STAGING_DIR).join("stray-file").exists());
        assert!(!models.path().join(STAGING_DIR).join("upload-of-an-old-server").exists());
        upload.write(b"56789").unwrap();
        // A server killed: its directory stays, its lock is released (the file closed).
        let killed = first.staging_dir().to_path_buf();
        drop(upload);
        let mut first = Arc::try_unwrap(first).unwrap();
        first.staging_lock.take();
        std::mem::forget(first);
        std::fs::write(killed.join("half-a-file"), b"x").unwrap();
        let third = uploads(models.path(), UploadLimits::default());
        assert!(!killed.exists(), "a gone server's staging is removed");
        assert!(second.staging_dir().is_dir() && third.staging_dir().is_dir());
        let servers = std::fs::read_dir(models.path().join(STAGING_DIR)).unwrap().filter_map(Result::ok).count();
        assert_eq!(servers, 3, "the root lock and two servers' directories");
        let kept = second.staging_dir().to_path_buf();
        drop(second);
        assert!(!kept.exists(), "a server that stops removes its own directory");
    }

    /// An upload is refused up front when its file and checkpoint could not fit on the disk.
    #[test]
    fn an_upload_that_cannot_fit_on_the_disk_is_refused() {
        assert!(check_room(300, 100, 0).is_ok());
        let refused = check_room(299, 100, 0).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused}");
        assert!(check_room(600, 100, 100).is_ok() && check_room(599, 100, 100).is_err(), "uploads in progress count");
        assert!(check_room(u64::MAX, u64::MAX, u64::MAX).is_err());
        let models = tempfile::tempdir().unwrap();
        let uploads = uploads(
            models.path(),
            UploadLimits { max_upload_bytes: u64::MAX / 4, max_upload_bytes_per_client: u64::MAX, ..Default::default() },
        );
        let refused = uploads.begin("alice", &sized("huge", u64::MAX / 8)).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused}");
        assert!(refused.to_string().contains("disk has"), "{refused}");
        assert_eq!(staged(&uploads), 0);
    }

    /// The per-client limits count an uploaded checkpoint at the size of the file sent, not
    /// what it takes on disk (a state dict sent in fp16 is stored in fp32).
    #[test]
    fn the_limits_count_what_the_client_sent() {
        let models = tempfile::tempdir().unwrap();
        let model = models.path().join("uploads/alice/x/m");
        std::fs::create_dir_all(&model).unwrap();
        std::fs::write(model.join(MANIFEST_FILE), b"{}").unwrap();
        std::fs::write(model.join("model.safetensors"), [0u8; 2000]).unwrap();
        let record = check_header(&sized("x/m", 1000)).unwrap();
        std::fs::write(model.join(UPLOAD_RECORD_FILE), serde_json::to_string(&record).unwrap()).unwrap();
        let other = models.path().join("uploads/alice/other");
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(other.join(MANIFEST_FILE), b"{}").unwrap();
        assert_eq!(usage(&models.path().join("uploads/alice")), (2, 1002), "the record's size; the rest on disk");
        let limits = UploadLimits { max_upload_bytes_per_client: 1502, ..Default::default() };
        let uploads = uploads(models.path(), limits);
        assert!(uploads.begin("alice", &sized("b", 500)).is_ok());
        assert!(uploads.begin("alice", &sized("b", 501)).is_err());
    }

    /// A cancelled upload is not imported, and leaves nothing.
    #[test]
    fn a_cancelled_upload_is_not_published() {
        let models = tempfile::tempdir().unwrap();
        let uploads = uploads(models.path(), UploadLimits::default());
        let bytes = b"0123456789";
        let header = UploadHeader { sha256: Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect(), ..sized("a", 10) };
        let mut upload = uploads.begin("alice", &header).unwrap();
        upload.write(bytes).unwrap();
        let refused = upload.finish_until(&|| true).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Cancelled, "{refused}");
        assert_eq!(staged(&uploads), 0);
        assert!(!models.path().join(UPLOADS_DIR).exists());
    }
}
