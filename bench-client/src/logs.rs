//! The trainer's per-epoch logs (`<run>/log.jsonl`): class-wise error risks and ABSLD's
//! class-wise temperatures, as in the paper's Figures 5 and 6.
//!
//! Each line has `epoch` (0-based), `risk_clean` and `risk_adversarial` (per-class mean
//! cross-entropy, `null` when the method has none), `temperatures` (`{clean, adversarial}` for
//! ABSLD, else `null`). The spread of the class-wise risks is summarised per epoch as the
//! population standard deviation of the normalised risks R_k / sum_j R_j (or, with
//! [`Normalisation::Mean`], R_k / mean_j R_j, which is C times larger).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Deserialize;

use crate::selection::split_seed;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Normalisation {
    /// R_k / sum_j R_j (the risks sum to one).
    #[default]
    Sum,
    /// R_k / mean_j R_j (the risks average to one).
    Mean,
}

impl Normalisation {
    /// For titles: what each class's risk is divided by.
    pub fn describe(self) -> &'static str {
        match self {
            Normalisation::Sum => "risk / sum of the class risks",
            Normalisation::Mean => "risk / mean of the class risks",
        }
    }

    /// For axis labels.
    pub fn short(self) -> &'static str {
        match self {
            Normalisation::Sum => "risk / sum of risks",
            Normalisation::Mean => "risk / mean risk",
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Temperatures {
    pub clean: Vec<f64>,
    pub adversarial: Vec<f64>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct EpochLog {
    pub epoch: i64,
    #[serde(default)]
    pub risk_clean: Option<Vec<f64>>,
    #[serde(default)]
    pub risk_adversarial: Option<Vec<f64>>,
    #[serde(default)]
    pub temperatures: Option<Temperatures>,
}

/// One training run's log.
#[derive(Debug, Clone, PartialEq)]
pub struct RunLog {
    pub dir: PathBuf,
    /// The run directory's name, e.g. `absld-s1`.
    pub name: String,
    /// Lines of the same group share a colour: the name without `-s<seed>` unless set.
    pub group: String,
    pub method: Option<String>,
    pub seed: Option<u64>,
    pub class_names: Option<Vec<String>>,
    pub epochs: Vec<EpochLog>,
}

/// Population SD of the normalised class-wise risks; NaN when they cannot be normalised.
pub fn normalised_risk_sd(risks: &[f64], normalisation: Normalisation) -> f64 {
    if risks.is_empty() || risks.iter().any(|r| !r.is_finite()) {
        return f64::NAN;
    }
    let sum: f64 = risks.iter().sum();
    let denominator = match normalisation {
        Normalisation::Sum => sum,
        Normalisation::Mean => sum / risks.len() as f64,
    };
    if denominator.is_nan() || denominator <= 0.0 {
        return f64::NAN;
    }
    let normalised: Vec<f64> = risks.iter().map(|r| r / denominator).collect();
    rfb_proto::metrics::population_sd(&normalised)
}

/// Reads `log.jsonl` (and, when present, `run.json` and a checkpoint manifest for the method,
/// seed and class names) from a run directory.
pub fn read_run(dir: &Path) -> anyhow::Result<RunLog> {
    let log_path = dir.join("log.jsonl");
    let text = std::fs::read_to_string(&log_path).with_context(|| format!("reading {}", log_path.display()))?;
    let mut epochs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let entry: EpochLog = serde_json::from_str(line).with_context(|| format!("{} line {}", log_path.display(), i + 1))?;
        epochs.push(entry);
    }
    if epochs.is_empty() {
        bail!("{} has no epochs", log_path.display());
    }
    epochs.sort_by_key(|e| e.epoch);
    let name = dir
        .canonicalize()
        .unwrap_or_else(|_| dir.to_path_buf())
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| dir.display().to_string());
    let run_json: Option<serde_json::Value> =
        std::fs::read_to_string(dir.join("run.json")).ok().and_then(|t| serde_json::from_str(&t).ok());
    let manifest: Option<serde_json::Value> = ["best", "last"]
        .iter()
        .find_map(|c| std::fs::read_to_string(dir.join(c).join("manifest.json")).ok())
        .and_then(|t| serde_json::from_str(&t).ok());
    let field = |key: &str| run_json.as_ref().and_then(|v| v.get(key)).or_else(|| manifest.as_ref().and_then(|v| v.get(key))).cloned();
    let method = field("method").and_then(|v| v.as_str().map(str::to_string));
    let (group, name_seed) = split_seed(&name);
    let seed = field("seed").and_then(|v| v.as_u64()).or(name_seed);
    let class_names =
        manifest.as_ref().and_then(|m| m.get("class_names")).and_then(|v| serde_json::from_value::<Vec<String>>(v.clone()).ok());
    Ok(RunLog { dir: dir.to_path_buf(), name, group, method, seed, class_names, epochs })
}

/// Run directories under each given path: the path itself when it has `log.jsonl`, else its
/// immediate subdirectories that have one (sorted by name).
pub fn find_runs(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut runs = Vec::new();
    for path in paths {
        if path.join("log.jsonl").is_file() {
            runs.push(path.clone());
            continue;
        }
        let entries = std::fs::read_dir(path).with_context(|| format!("{} has no log.jsonl and cannot be listed", path.display()))?;
        let mut found: Vec<PathBuf> = entries.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.join("log.jsonl").is_file()).collect();
        if found.is_empty() {
            bail!("{} has no log.jsonl, nor any subdirectory with one", path.display());
        }
        found.sort();
        runs.extend(found);
    }
    Ok(runs)
}

/// Per-epoch series of one run: (epoch + 1, value).
pub fn risk_sd_series(run: &RunLog, adversarial: bool, normalisation: Normalisation) -> Vec<(f64, f64)> {
    run.epochs
        .iter()
        .filter_map(|e| {
            let risks = if adversarial { e.risk_adversarial.as_ref() } else { e.risk_clean.as_ref() }?;
            let v = normalised_risk_sd(risks, normalisation);
            v.is_finite().then_some(((e.epoch + 1) as f64, v))
        })
        .collect()
}

/// `risk-sd.csv`: run, group, epoch (1-based), clean and adversarial SD of normalised risks.
pub fn risk_sd_csv(runs: &[RunLog], normalisation: Normalisation) -> String {
    let mut out = String::from("run,group,seed,epoch,clean_sd,adversarial_sd,normalisation\n");
    for run in runs {
        for e in &run.epochs {
            let sd = |r: &Option<Vec<f64>>| {
                r.as_ref()
                    .map(|r| normalised_risk_sd(r, normalisation))
                    .filter(|v| v.is_finite())
                    .map(|v| v.to_string())
                    .unwrap_or_default()
            };
            out.push_str(&format!(
                "{},{},{},{},{},{},{}\n",
                run.name,
                run.group,
                run.seed.map(|s| s.to_string()).unwrap_or_default(),
                e.epoch + 1,
                sd(&e.risk_clean),
                sd(&e.risk_adversarial),
                match normalisation {
                    Normalisation::Sum => "sum",
                    Normalisation::Mean => "mean",
                }
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalised_sd_by_hand() {
        // Risks 1, 1, 2: normalised by the sum 0.25, 0.25, 0.5; mean 1/3; deviations
        // -1/12, -1/12, 1/6; squares 1/144 + 1/144 + 4/144 = 6/144; / 3 = 1/72.
        let sd = normalised_risk_sd(&[1.0, 1.0, 2.0], Normalisation::Sum);
        assert!((sd - (1.0f64 / 72.0).sqrt()).abs() < 1e-12, "{sd}");
        // By the mean (4/3): three times as large.
        let sd_mean = normalised_risk_sd(&[1.0, 1.0, 2.0], Normalisation::Mean);
        assert!((sd_mean - 3.0 * (1.0f64 / 72.0).sqrt()).abs() < 1e-12);
        // Scale-free, equal risks have no spread, zero risks cannot be normalised.
        assert!((normalised_risk_sd(&[10.0, 10.0, 20.0], Normalisation::Sum) - sd).abs() < 1e-12);
        assert_eq!(normalised_risk_sd(&[0.7; 10], Normalisation::Sum), 0.0);
        assert!(normalised_risk_sd(&[0.0, 0.0], Normalisation::Sum).is_nan());
    }
}
