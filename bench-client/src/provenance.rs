//! Whether committed results match the code.
//!
//! Every results directory that `scripts/digits-benchmark.sh` writes holds a `run.json` that
//! records the hash of the sources deciding the numbers when they were made (`sources_sha256`,
//! and per path in `sources`; the paths are [`RESULT_SOURCES`]). [`check_all`] compares those
//! with the sources checked out now: a results directory made from other sources is stale, and
//! so is one whose `run.json` records no hash, or a `results.json` with no `run.json` beside or
//! above it. `bench-client check-results` and the test `tests/results_current.rs` use it.
//!
//! A results directory kept for the record although newer code would give other numbers says
//! so in its `run.json` (`"archived": "why"`): it is reported as archived, with the commit that
//! made it, and does not fail the check. The main results (`results/digits`) may not be
//! archived; the test requires them current.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rfb_build_support::sources::{hash_sources, SourceHashes, SourcesError, RESULT_SOURCES};
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ProvenanceError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: not a run record: {source}", path.display())]
    Json { path: PathBuf, source: serde_json::Error },
    #[error(transparent)]
    Sources(#[from] SourcesError),
}

/// What `run.json` says about how a results directory was made (the fields this check reads).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RunRecord {
    /// The command that made it (to make it again).
    #[serde(default)]
    pub command: String,
    /// The commit it was made at (`-dirty` when code differed from it).
    #[serde(default)]
    pub code: String,
    /// sha256 of [`RESULT_SOURCES`] when it was made.
    #[serde(default)]
    pub sources_sha256: Option<String>,
    /// The same per path.
    #[serde(default)]
    pub sources: BTreeMap<String, String>,
    /// Set (to the reason) on results kept for the record that the current code would not
    /// reproduce; such a directory is not checked against the sources.
    #[serde(default)]
    pub archived: Option<String>,
}

impl RunRecord {
    pub fn load(path: &Path) -> Result<RunRecord, ProvenanceError> {
        let text = std::fs::read_to_string(path).map_err(|source| ProvenanceError::Io { path: path.to_path_buf(), source })?;
        serde_json::from_str(&text).map_err(|source| ProvenanceError::Json { path: path.to_path_buf(), source })
    }
}

/// How one results directory stands against the sources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Made from exactly the sources checked out now.
    Current,
    /// Made from other sources; the paths whose hash differs (every path when the record has
    /// no per-path hashes).
    Stale { changed: Vec<String> },
    /// `run.json` records no sources hash: made before hashes were recorded.
    Unrecorded,
    /// A `results.json` with no `run.json` in its directory or above it (below `results/`).
    NoRunRecord,
    /// Kept for the record (`run.json` says `"archived"` and why); not tied to this code.
    Archived { reason: String },
}

#[derive(Debug, Clone)]
pub struct DirReport {
    pub dir: PathBuf,
    pub record: Option<RunRecord>,
    pub status: Status,
}

impl DirReport {
    pub fn is_current(&self) -> bool {
        self.status == Status::Current
    }

    /// Current, or declared archived: what `check-results` accepts.
    pub fn passes(&self) -> bool {
        matches!(self.status, Status::Current | Status::Archived { .. })
    }

    /// One line for people: what is wrong and the command that regenerates it.
    pub fn describe(&self, root: &Path) -> String {
        let dir = self.dir.strip_prefix(root).unwrap_or(&self.dir).display().to_string();
        let made = self.record.as_ref().filter(|r| !r.code.is_empty()).map(|r| format!(" (made at {})", r.code)).unwrap_or_default();
        let again = self
            .record
            .as_ref()
            .filter(|r| !r.command.is_empty())
            .map(|r| format!("; regenerate it on a clean checkout with `{}`", r.command))
            .unwrap_or_default();
        match &self.status {
            Status::Current => format!("{dir}: current"),
            Status::Stale { changed } => format!("{dir}: stale{made}: {} changed since{again}", changed.join(", ")),
            Status::Unrecorded => format!("{dir}: its run.json records no sources hash{made}, so it cannot be tied to this code{again}"),
            Status::NoRunRecord => format!("{dir}: results.json without a run.json that says how it was made"),
            Status::Archived { reason } => format!("{dir}: archived{made}, not tied to this code: {reason}"),
        }
    }
}

/// Compares a run record with the current hashes.
pub fn status_of(record: &RunRecord, current: &SourceHashes) -> Status {
    if let Some(reason) = &record.archived {
        return Status::Archived { reason: reason.clone() };
    }
    match &record.sources_sha256 {
        None => Status::Unrecorded,
        Some(total) if *total == current.total => Status::Current,
        Some(_) => {
            let mut changed: Vec<String> = current
                .per_path
                .iter()
                .filter(|(path, hash)| record.sources.get(*path) != Some(*hash))
                .map(|(path, _)| path.clone())
                .collect();
            if changed.is_empty() {
                // Same parts, other total: the list of paths itself changed.
                changed.push("the list of result-deciding sources".into());
            }
            Status::Stale { changed }
        }
    }
}

fn walk(dir: &Path, inherited: bool, out: &mut Vec<(PathBuf, bool, bool)>) -> Result<(), ProvenanceError> {
    let has_run = dir.join("run.json").is_file();
    let has_results = dir.join("results.json").is_file();
    out.push((dir.to_path_buf(), has_run, has_results && !has_run && !inherited));
    let mut children: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|source| ProvenanceError::Io { path: dir.to_path_buf(), source })?
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()) && !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| e.path())
        .collect();
    children.sort();
    for child in children {
        // Work directories (trained models, caches) are not results.
        if child.file_name().is_some_and(|n| n == "work") {
            continue;
        }
        walk(&child, inherited || has_run, out)?;
    }
    Ok(())
}

/// Every results directory under `results` (each with a `run.json`, and each `results.json`
/// not covered by one), checked against the sources under `root`, in path order.
pub fn check_all(root: &Path, results: &Path) -> Result<Vec<DirReport>, ProvenanceError> {
    let current = hash_sources(root, RESULT_SOURCES)?;
    let mut found = Vec::new();
    walk(results, false, &mut found)?;
    let mut reports = Vec::new();
    for (dir, has_run, orphan) in found {
        if has_run {
            let record = RunRecord::load(&dir.join("run.json"))?;
            let status = status_of(&record, &current);
            reports.push(DirReport { dir, record: Some(record), status });
        } else if orphan {
            reports.push(DirReport { dir, record: None, status: Status::NoRunRecord });
        }
    }
    Ok(reports)
}

/// The sources hash as `run.json` records it: `{"sources_sha256": ..., "sources": {...}}`.
pub fn sources_json(hashes: &SourceHashes) -> serde_json::Value {
    serde_json::json!({ "sources_sha256": hashes.total, "sources": hashes.per_path })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hashes(total: &str, parts: &[(&str, &str)]) -> SourceHashes {
        SourceHashes { total: total.into(), per_path: parts.iter().map(|(p, h)| (p.to_string(), h.to_string())).collect() }
    }

    #[test]
    fn a_record_is_current_stale_or_unrecorded() {
        let now = hashes("t2", &[("core/src", "a"), ("trainer/src", "b2")]);
        let record = |total: Option<&str>, parts: &[(&str, &str)]| RunRecord {
            sources_sha256: total.map(String::from),
            sources: parts.iter().map(|(p, h)| (p.to_string(), h.to_string())).collect(),
            ..Default::default()
        };
        assert_eq!(status_of(&record(Some("t2"), &[]), &now), Status::Current);
        assert_eq!(
            status_of(&record(Some("t1"), &[("core/src", "a"), ("trainer/src", "b1")]), &now),
            Status::Stale { changed: vec!["trainer/src".into()] }
        );
        assert_eq!(status_of(&record(Some("t1"), &[]), &now), Status::Stale { changed: vec!["core/src".into(), "trainer/src".into()] });
        assert_eq!(status_of(&record(None, &[]), &now), Status::Unrecorded);
        let archived = RunRecord { archived: Some("older attacks".into()), ..record(Some("t2"), &[]) };
        assert_eq!(status_of(&archived, &now), Status::Archived { reason: "older attacks".into() });
    }
}
