//! `results.json`: everything a comparison measured, enough to rebuild every table and plot
//! without a server (`bench-client report --from results.json`).
//!
//! The raw data are per-class counts (correct, total) per model, seed and attack; every summary
//! metric is recomputed from them with `rfb_proto::metrics`.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::precision::Precision;
use crate::split::Split;

pub const FORMAT: &str = "rfb-bench-results";
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Results {
    pub format: String,
    pub format_version: u32,
    /// Seconds since the Unix epoch when the comparison finished.
    #[serde(default)]
    pub created_unix: u64,
    /// The command line that made the file.
    #[serde(default)]
    pub command: String,
    #[serde(default)]
    pub client_version: String,
    #[serde(default)]
    pub proto_version: String,
    pub settings: Settings,
    /// Every evaluator asked, with the versions it reported.
    #[serde(default)]
    pub servers: Vec<ServerInfo>,
    /// The compared models in the order asked for; the first is the baseline of comparisons.
    pub models: Vec<ModelResults>,
    /// Evaluations that failed (the rest of the comparison went on without them).
    #[serde(default)]
    pub failures: Vec<Failure>,
    /// How the models and the run came about, as the caller told it (`--run-info`): for the
    /// main job the commit, the hash of the result-deciding sources, host, CPU, rustc, torch.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub run: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Settings {
    /// Empty: each model's own data set.
    #[serde(default)]
    pub dataset: String,
    pub split: Split,
    /// 0: the whole split.
    pub examples_per_class: i64,
    /// 0: the server's default.
    #[serde(default)]
    pub batch_size: i64,
    /// fp32 where a file made before the field existed has none.
    #[serde(default)]
    pub precision: Precision,
    /// Attacks in column order.
    pub attacks: Vec<AttackSetting>,
    /// Confidence level of the intervals (0.95).
    pub confidence: f64,
    /// How the uncertainty of one evaluation is estimated (per-class Clopper-Pearson intervals
    /// at `confidence`; a class-stratified bootstrap over the test points for Worst, Worst-10%
    /// and NSD). Recorded so that a report rebuilt from this file draws the same resamples.
    #[serde(default)]
    pub uncertainty: UncertaintySettings,
    /// The robustness curve asked for (`--eps-sweep`): one attack over a list of radii, each
    /// radius evaluated (and cached) on its own; the counts are in `SeedRun::sweep`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sweep: Option<SweepSetting>,
}

/// Settings of the within-one-evaluation uncertainty.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UncertaintySettings {
    /// Resamples of the class-stratified bootstrap.
    pub bootstrap_resamples: u32,
    /// Seed of the bootstrap's random draws.
    pub bootstrap_seed: u64,
}

impl Default for UncertaintySettings {
    fn default() -> Self {
        UncertaintySettings { bootstrap_resamples: 2000, bootstrap_seed: 0 }
    }
}

/// A robustness curve: `attack` (its `eps` unset) run at each of `radii`, in increasing order.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SweepSetting {
    pub attack: AttackSetting,
    pub radii: Vec<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AttackSetting {
    /// Column label, e.g. "PGD-20"; the key of `AttackRun::attack`.
    pub label: String,
    /// The proto's AttackKind name, e.g. "PGD".
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eps: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_size: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarts: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kappa: Option<f64>,
    #[serde(default)]
    pub seed: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub components: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct ServerInfo {
    pub endpoint: String,
    #[serde(default)]
    pub evaluator_version: String,
    #[serde(default)]
    pub libtorch_version: String,
    #[serde(default)]
    pub proto_version: String,
    /// Why the server could not be used, when it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Evaluations (or shards of one) this server answered.
    #[serde(default)]
    pub evaluations_done: u64,
    /// Evaluations (or shards) that failed on it; a shard that failed for a reason of the
    /// server's (unreachable, out of memory, shut down) was redone on another server.
    #[serde(default)]
    pub evaluations_failed: u64,
    /// Examples it evaluated (each counted once per evaluation, not per attack).
    #[serde(default)]
    pub examples: i64,
    /// Seconds of computation it reported (cached results count 0).
    #[serde(default)]
    pub compute_seconds: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelResults {
    /// The name asked for on the command line (the row label).
    pub label: String,
    /// Class names (the same for every seed).
    pub class_names: Vec<String>,
    /// One entry per seed, in seed order.
    pub runs: Vec<SeedRun>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SeedRun {
    pub seed: u64,
    /// The checkpoint's name on the server, e.g. "absld-s1/best".
    pub model: String,
    #[serde(default)]
    pub method: String,
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub dataset: String,
    #[serde(default)]
    pub weights_sha256: String,
    /// Endpoint of the evaluator that ran it (of every one that ran a shard of it,
    /// comma-separated, when it was sharded).
    #[serde(default)]
    pub server: String,
    pub attacks: Vec<AttackRun>,
    /// When the evaluation was split over servers: who did each shard (the attacks' counts are
    /// the sums over the shards).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shards: Vec<ShardRun>,
    /// The robustness curve (`Settings::sweep`): one entry per radius, in the order of
    /// `SweepSetting::radii`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sweep: Vec<SweepPoint>,
}

/// One radius of a robustness curve and what the attack left at it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SweepPoint {
    pub eps: f64,
    pub run: AttackRun,
}

/// One shard of a sharded evaluation: shard `index` of `count` (the examples at positions
/// `index`, `index + count`, ... of the class-balanced subset).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ShardRun {
    pub index: i64,
    pub count: i64,
    /// The server that answered it.
    pub server: String,
    /// Examples in the shard.
    pub examples: i64,
    /// Seconds of computation the server reported for it, all attacks together.
    pub compute_seconds: f64,
    /// Servers it failed on before, with the error (it was then redone on `server`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_on: Vec<ShardFailure>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ShardFailure {
    pub server: String,
    pub error: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AttackRun {
    /// The column label from `Settings::attacks`.
    pub attack: String,
    /// The server's display name for it.
    #[serde(default)]
    pub attack_name: String,
    pub class_names: Vec<String>,
    pub correct: Vec<i64>,
    pub total: Vec<i64>,
    #[serde(default)]
    pub device: String,
    #[serde(default)]
    pub elapsed_seconds: f64,
    #[serde(default)]
    pub cached: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sanity: Option<Sanity>,
    /// The attack as the server ran it: its canonical spec, every default filled in (the step
    /// size above all, which defaults to eps/4), so that a result says what made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ran: Option<AttackSetting>,
    #[serde(default)]
    pub evaluator_version: String,
    /// What the server reported (percent; NSD a ratio), kept for reference: the report
    /// recomputes every metric from the counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_metrics: Option<BTreeMap<String, f64>>,
    /// What each component did (AutoAttack: one entry per component that ran): where the time
    /// went and how many points of each class survived it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub components: Vec<ComponentRun>,
    /// Adversarial confusions: `confusion[true_class][predicted_class]` counts the points of
    /// each class by the class predicted after the attack (for AutoAttack, by the output of the
    /// component that broke the point; a point that survived counts on the diagonal). Each row
    /// adds up to `total`, the diagonal equals `correct`. Empty for results made before it existed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub confusion: Vec<Vec<i64>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ComponentRun {
    pub name: String,
    pub seconds: f64,
    pub attacked: i64,
    /// Points of each class still robust after it.
    pub robust_after: Vec<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Sanity {
    pub randomised: bool,
    pub probabilities_not_logits: bool,
    pub zero_gradient_fraction: f64,
    pub possible_gradient_masking: bool,
    #[serde(default)]
    pub dynamic: bool,
    #[serde(default)]
    pub dlr_zero_gradient_points: i64,
    #[serde(default)]
    pub square_robust_accuracy_drop: f64,
    #[serde(default)]
    pub square_lowered_robust_accuracy: bool,
    #[serde(default)]
    pub targets_requested: i64,
    #[serde(default)]
    pub targets_used: i64,
}

impl Sanity {
    /// One sentence per raised flag (the contract's wording, `rfb_proto::sanity`).
    pub fn warnings(&self) -> Vec<String> {
        rfb_proto::sanity::warnings(&rfb_proto::v1::SanityFlags {
            randomised: self.randomised,
            probabilities_not_logits: self.probabilities_not_logits,
            zero_gradient_fraction: self.zero_gradient_fraction,
            possible_gradient_masking: self.possible_gradient_masking,
            dynamic: self.dynamic,
            dlr_zero_gradient_points: self.dlr_zero_gradient_points,
            square_robust_accuracy_drop: self.square_robust_accuracy_drop,
            square_lowered_robust_accuracy: self.square_lowered_robust_accuracy,
            targets_requested: self.targets_requested,
            targets_used: self.targets_used,
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Failure {
    pub label: String,
    pub model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[serde(default)]
    pub server: String,
    pub error: String,
}

impl AttackRun {
    /// Class-wise accuracy in percent.
    pub fn class_accuracy(&self) -> Vec<f64> {
        rfb_proto::metrics::class_accuracy(&self.correct, &self.total)
    }
}

impl Results {
    /// What to say when AutoAttack ran and raised no warning (`None` when it did not run):
    /// results made before the checks during and after the run existed (no targets recorded)
    /// say which checks they had.
    pub fn no_sanity_warning_sentence(&self) -> Option<String> {
        let flags: Vec<&Sanity> =
            self.models.iter().flat_map(|m| &m.runs).flat_map(|r| &r.attacks).filter_map(|a| a.sanity.as_ref()).collect();
        if flags.is_empty() {
            return None;
        }
        let complete = flags.iter().any(|f| f.targets_requested > 0 || f.dynamic || f.dlr_zero_gradient_points > 0);
        Some(if complete {
            "AutoAttack's checks (randomness, probabilities, zero gradients, dynamic model, zero DLR gradients, Square after the gradient attacks, targets): no warning raised.".to_string()
        } else {
            "AutoAttack's first checks (randomness, probabilities, zero gradients): no warning raised; these results predate its other checks.".to_string()
        })
    }

    /// Every AutoAttack warning raised, as (model label, seed, attack label, sentences), in
    /// model, seed and attack order.
    pub fn sanity_warnings(&self) -> Vec<(String, u64, String, Vec<String>)> {
        let mut out = Vec::new();
        for model in &self.models {
            for run in &model.runs {
                for attack in &run.attacks {
                    let warnings = attack.sanity.as_ref().map(Sanity::warnings).unwrap_or_default();
                    if !warnings.is_empty() {
                        out.push((model.label.clone(), run.seed, attack.attack.clone(), warnings));
                    }
                }
            }
        }
        out
    }

    /// The attack `label` as the servers ran it (the first run's canonical spec), when the
    /// results record it; else the setting asked for.
    pub fn attack_as_run(&self, setting: &AttackSetting) -> AttackSetting {
        self.models
            .iter()
            .flat_map(|m| &m.runs)
            .flat_map(|r| &r.attacks)
            .filter(|a| a.attack == setting.label)
            .find_map(|a| a.ran.clone())
            .map(|ran| AttackSetting { label: setting.label.clone(), ..ran })
            .unwrap_or_else(|| setting.clone())
    }
}

impl SeedRun {
    pub fn attack(&self, label: &str) -> Option<&AttackRun> {
        self.attacks.iter().find(|a| a.attack == label)
    }

    /// Examples evaluated (those of its first attack).
    pub fn examples(&self) -> i64 {
        self.attacks.first().map(|a| a.total.iter().sum()).unwrap_or(0)
    }
}

/// Adds the per-class counts of the shards of one evaluation into the unsharded result: per
/// attack, correct and total per class add up, and so do AutoAttack's per-component counts (a
/// component missing from a shard did not run there because no point of it was left, which
/// counts as attacked 0, robust 0). Seconds add up (computation, not wall-clock); the result is
/// cached only when every shard's was; a sanity flag is raised when any shard raised it (each
/// shard checks its own first batch), the zero-gradient fraction is the largest. The parts must
/// be of the same model and attacks; `shards` records who did what.
pub fn merge_shards(parts: &[SeedRun], shards: Vec<ShardRun>) -> anyhow::Result<SeedRun> {
    let Some(first) = parts.first() else { bail!("no shards to merge") };
    let mut merged = first.clone();
    for part in &parts[1..] {
        if part.model != first.model || part.weights_sha256 != first.weights_sha256 || part.attacks.len() != first.attacks.len() {
            bail!("shards of {} disagree on the model, its weights or the attacks", first.model);
        }
        for (into, from) in merged.attacks.iter_mut().zip(&part.attacks) {
            merge_attack_run(&first.model, into, from)?;
        }
        if part.sweep.len() != first.sweep.len() {
            bail!("shards of {} disagree on the robustness curve's radii", first.model);
        }
        for (into, from) in merged.sweep.iter_mut().zip(&part.sweep) {
            if into.eps != from.eps {
                bail!("shards of {} disagree on the robustness curve's radii ({} and {})", first.model, into.eps, from.eps);
            }
            merge_attack_run(&first.model, &mut into.run, &from.run)?;
        }
    }
    if parts.len() > 1 {
        // The servers' metrics were of their shards; the report recomputes them from the counts.
        for attack in merged.attacks.iter_mut().chain(merged.sweep.iter_mut().map(|p| &mut p.run)) {
            attack.server_metrics = None;
        }
    }
    let mut servers: Vec<&str> = Vec::new();
    for shard in &shards {
        if !servers.contains(&shard.server.as_str()) {
            servers.push(&shard.server);
        }
    }
    merged.server = servers.join(",");
    merged.shards = shards;
    Ok(merged)
}

impl AttackRun {
    /// Checks the adversarial confusion against the counts (an empty one, from a server or a
    /// file older than it, passes): `classes x classes`, non-negative, each row adding up to
    /// the class's total, the diagonal equal to the correct counts.
    pub fn check_confusion(&self) -> anyhow::Result<()> {
        if self.confusion.is_empty() {
            return Ok(());
        }
        let classes = self.total.len();
        if self.confusion.len() != classes || self.confusion.iter().any(|row| row.len() != classes) {
            let shape: Vec<usize> = self.confusion.iter().map(|row| row.len()).collect();
            bail!("the adversarial confusion is not {classes} x {classes} (row lengths {shape:?})");
        }
        for (k, row) in self.confusion.iter().enumerate() {
            let name = self.class_names.get(k).map(String::as_str).unwrap_or("?");
            if row.iter().any(|&c| c < 0) {
                bail!("the adversarial confusion's row of class {k} ({name}) has a negative count");
            }
            let sum = row.iter().try_fold(0i64, |sum, &c| sum.checked_add(c));
            if sum != Some(self.total[k]) {
                let sum = sum.map_or_else(|| "more than an i64 holds".to_string(), |s| s.to_string());
                bail!("the adversarial confusion's row of class {k} ({name}) adds up to {sum}, not its {} points", self.total[k]);
            }
            if self.correct.get(k) != Some(&row[k]) {
                bail!(
                    "the adversarial confusion's diagonal for class {k} ({name}) is {}, not its {:?} robust points",
                    row[k],
                    self.correct.get(k)
                );
            }
        }
        Ok(())
    }
}

/// Adds shard `from`'s counts of one attack to `into` (counts, confusions and components cell
/// by cell; a confusion is kept only when every shard has one).
fn merge_attack_run(model: &str, into: &mut AttackRun, from: &AttackRun) -> anyhow::Result<()> {
    if into.attack != from.attack || into.class_names != from.class_names {
        bail!("shards of {} disagree on attack {} or its classes", model, into.attack);
    }
    // Each shard was checked on receipt; their sums are checked too (a hostile server's huge
    // counts must not wrap around).
    let overflow = || anyhow::anyhow!("shards of {model} sent counts too large to add up for attack {}", into.attack);
    for k in 0..into.correct.len() {
        into.correct[k] = into.correct[k].checked_add(from.correct[k]).ok_or_else(overflow)?;
        into.total[k] = into.total[k].checked_add(from.total[k]).ok_or_else(overflow)?;
    }
    if into.confusion.is_empty() || from.confusion.is_empty() {
        into.confusion.clear();
    } else {
        if into.confusion.len() != from.confusion.len() || into.confusion.iter().zip(&from.confusion).any(|(a, b)| a.len() != b.len()) {
            bail!("shards of {model} sent confusions of different shapes for attack {}", into.attack);
        }
        for (a, b) in into.confusion.iter_mut().zip(&from.confusion) {
            for (x, y) in a.iter_mut().zip(b) {
                *x = x.checked_add(*y).ok_or_else(overflow)?;
            }
        }
    }
    into.elapsed_seconds += from.elapsed_seconds;
    into.cached &= from.cached;
    into.sanity = match (into.sanity.take(), &from.sanity) {
        (Some(a), Some(b)) => Some(Sanity {
            randomised: a.randomised || b.randomised,
            probabilities_not_logits: a.probabilities_not_logits || b.probabilities_not_logits,
            zero_gradient_fraction: a.zero_gradient_fraction.max(b.zero_gradient_fraction),
            possible_gradient_masking: a.possible_gradient_masking || b.possible_gradient_masking,
            dynamic: a.dynamic || b.dynamic,
            dlr_zero_gradient_points: a.dlr_zero_gradient_points + b.dlr_zero_gradient_points,
            square_robust_accuracy_drop: a.square_robust_accuracy_drop.max(b.square_robust_accuracy_drop),
            square_lowered_robust_accuracy: a.square_lowered_robust_accuracy || b.square_lowered_robust_accuracy,
            targets_requested: a.targets_requested.max(b.targets_requested),
            targets_used: a.targets_used.min(b.targets_used),
        }),
        (a, b) => a.or_else(|| b.clone()),
    };
    for (position, component) in from.components.iter().enumerate() {
        match into.components.get_mut(position) {
            Some(existing) if existing.name == component.name => {
                existing.seconds += component.seconds;
                existing.attacked += component.attacked;
                for (a, b) in existing.robust_after.iter_mut().zip(&component.robust_after) {
                    *a += b;
                }
            }
            Some(existing) => {
                bail!("shards of {} ran AutoAttack components in different orders ({} and {})", model, existing.name, component.name)
            }
            None => into.components.push(component.clone()),
        }
    }
    Ok(())
}

impl Results {
    pub fn attack_labels(&self) -> Vec<String> {
        self.settings.attacks.iter().map(|a| a.label.clone()).collect()
    }

    pub fn load(path: &Path) -> anyhow::Result<Results> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let results: Results = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        results.validate().with_context(|| format!("checking {}", path.display()))?;
        Ok(results)
    }

    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    /// Checks what the report relies on: the format, matching count vectors, known attacks.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.format != FORMAT {
            bail!("not a bench-client results file (format '{}', expected '{FORMAT}')", self.format);
        }
        if self.format_version > FORMAT_VERSION {
            bail!("results format version {} is newer than this client understands ({FORMAT_VERSION})", self.format_version);
        }
        let labels = self.attack_labels();
        for model in &self.models {
            for run in &model.runs {
                for attack in &run.attacks {
                    if !labels.contains(&attack.attack) {
                        bail!("model '{}' seed {}: attack '{}' is not in settings.attacks", model.label, run.seed, attack.attack);
                    }
                    let c = attack.class_names.len();
                    if attack.correct.len() != c || attack.total.len() != c {
                        bail!(
                            "model '{}' seed {} attack '{}': {} class names, {} correct counts, {} totals",
                            model.label,
                            run.seed,
                            attack.attack,
                            c,
                            attack.correct.len(),
                            attack.total.len()
                        );
                    }
                    if attack.correct.iter().zip(&attack.total).any(|(&k, &t)| k < 0 || k > t) {
                        bail!(
                            "model '{}' seed {} attack '{}': a correct count is negative or above its total",
                            model.label,
                            run.seed,
                            attack.attack
                        );
                    }
                    attack
                        .check_confusion()
                        .with_context(|| format!("model '{}' seed {} attack '{}'", model.label, run.seed, attack.attack))?;
                }
                for point in &run.sweep {
                    let c = point.run.class_names.len();
                    if point.run.correct.len() != c
                        || point.run.total.len() != c
                        || point.run.correct.iter().zip(&point.run.total).any(|(&k, &t)| k < 0 || k > t)
                    {
                        bail!(
                            "model '{}' seed {}: the robustness curve's counts at eps {} do not fit its classes",
                            model.label,
                            run.seed,
                            point.eps
                        );
                    }
                    point
                        .run
                        .check_confusion()
                        .with_context(|| format!("model '{}' seed {} curve at eps {}", model.label, run.seed, point.eps))?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(correct: i64, cell: i64) -> SeedRun {
        serde_json::from_value(serde_json::json!({
            "seed": 0,
            "model": "m/best",
            "attacks": [{
                "attack": "PGD-20",
                "class_names": ["a", "b"],
                "correct": [correct, 1],
                "total": [correct, 2],
                "confusion": [[cell, 0], [1, 1]],
            }],
        }))
        .unwrap()
    }

    #[test]
    fn shards_add_up_exactly_and_refuse_counts_that_would_wrap() {
        let merged = merge_shards(&[shard(3, 3), shard(4, 4)], Vec::new()).unwrap();
        assert_eq!(merged.attacks[0].correct, vec![7, 2]);
        assert_eq!(merged.attacks[0].total, vec![7, 4]);
        assert_eq!(merged.attacks[0].confusion, vec![vec![7, 0], vec![2, 2]]);
        let error = merge_shards(&[shard(i64::MAX, 1), shard(1, 1)], Vec::new()).unwrap_err();
        assert!(error.to_string().contains("too large to add up"), "{error}");
        let error = merge_shards(&[shard(1, i64::MAX), shard(1, 1)], Vec::new()).unwrap_err();
        assert!(error.to_string().contains("too large to add up"), "{error}");
    }
}
