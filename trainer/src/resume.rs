//! The resumable state of a run: `resume.json` points at the directory of the last saved
//! state (`resume-NNNN/` after NNNN epochs, `resume-NNNN-bMMMMM/` MMMMM batches into the next),
//! which holds the student, the optimiser's momentum, the method's state and, within an epoch,
//! the class-wise sums of its finished batches.

use std::path::{Path, PathBuf};

use rfb_core::checkpoint;
use serde::{Deserialize, Serialize};

/// Why a saved state cannot be resumed.
#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    #[error("{path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Parse { path: PathBuf, source: serde_json::Error },
    #[error("{path} is missing: the resume state stopped {batches} batches into an epoch but lacks its class-wise sums")]
    MissingRisks { path: PathBuf, batches: usize },
    #[error("the saved class-wise sums lack {0}")]
    RiskMissing(&'static str),
    #[error("the saved class-wise sums {0} have the wrong shape")]
    RiskShape(&'static str),
    /// The optimiser's saved momentum does not fit the student.
    #[error("{0}")]
    Momentum(String),
    /// The method refused its saved state.
    #[error("{0}")]
    MethodState(String),
}

/// What `state.json` of a resume directory holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct ResumeState {
    pub(crate) epochs_done: i64,
    pub(crate) best_score: Option<f64>,
    pub(crate) best_epoch: Option<i64>,
    pub(crate) method_state: serde_json::Value,
    /// The unfinished epoch a stop on request left (none at an epoch's end).
    #[serde(default)]
    pub(crate) partial: PartialEpoch,
}

impl ResumeState {
    /// `resume-0005` after five epochs; `resume-0005-b00042` 42 batches into the sixth.
    pub(crate) fn dir_name(&self) -> String {
        match self.partial.batches {
            0 => format!("resume-{:04}", self.epochs_done),
            batches => format!("resume-{:04}-b{batches:05}", self.epochs_done),
        }
    }
}

/// How far into epoch `epochs_done` a stopped run got: the batches done and their loss sum
/// (the class-wise sums are in the resume directory's `risks.safetensors`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct PartialEpoch {
    pub(crate) batches: usize,
    pub(crate) loss_sum: f64,
}

/// `resume.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ResumePointer {
    dir: String,
}

/// The saved state `resume.json` points at, read once when a run resumes.
pub(crate) struct ResumePoint {
    pub(crate) dir: PathBuf,
    pub(crate) state: ResumeState,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ResumeError> {
    let bytes = std::fs::read(path).map_err(|source| ResumeError::Read { path: path.to_path_buf(), source })?;
    serde_json::from_slice(&bytes).map_err(|source| ResumeError::Parse { path: path.to_path_buf(), source })
}

impl ResumePoint {
    /// The state `out/resume.json` points at.
    pub(crate) fn read(out: &Path) -> Result<ResumePoint, ResumeError> {
        let pointer: ResumePointer = read_json(&out.join("resume.json"))?;
        let dir = out.join(pointer.dir);
        let state = read_json(&dir.join("state.json"))?;
        Ok(ResumePoint { dir, state })
    }

    /// Where the class-wise sums of the unfinished epoch a stop on request left are saved.
    pub(crate) fn partial_risks_path(&self) -> Result<PathBuf, ResumeError> {
        let path = self.dir.join("risks.safetensors");
        match path.is_file() {
            true => Ok(path),
            false => Err(ResumeError::MissingRisks { path, batches: self.state.partial.batches }),
        }
    }
}

/// Points `out/resume.json` at the state directory `name` and removes the older ones.
pub(crate) fn move_pointer(out: &Path, name: &str) -> Result<(), checkpoint::CheckpointError> {
    checkpoint::write_atomic(
        &out.join("resume.json"),
        serde_json::to_string(&ResumePointer { dir: name.to_string() }).unwrap_or_default().as_bytes(),
    )?;
    remove_old_dirs(out, name);
    Ok(())
}

fn remove_old_dirs(out: &Path, keep: &str) {
    if let Ok(entries) = std::fs::read_dir(out) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("resume-") && name != keep {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

/// Keeps only the log lines of epochs before `epochs_done` (a killed run may have logged an
/// epoch whose state it never saved).
pub(crate) fn truncate_log(path: &Path, epochs_done: i64) -> Result<(), checkpoint::CheckpointError> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: String = text
        .lines()
        .filter(|line| {
            serde_json::from_str::<serde_json::Value>(line).ok().and_then(|v| v["epoch"].as_i64()).is_some_and(|epoch| epoch < epochs_done)
        })
        .map(|line| format!("{line}\n"))
        .collect();
    checkpoint::write_atomic(path, kept.as_bytes())
}
