//! Grids as data: a TOML file lists data sets, architectures, methods, seeds and overrides; the
//! plan is every run they make, teachers (and the runs others start from) first, each with the
//! runs it depends on. `trainer grid plan GRID` prints it, `trainer grid run GRID --index I`
//! runs one of its runs idempotently: a finished run (its `summary.json` exists) is skipped, an
//! interrupted one (`resume.json`) resumed, a new one started. Any number of workers (a shell
//! loop, Slurm array tasks, Kubernetes indexed pods) can so share one grid.
//!
//! ```toml
//! datasets = ["digits"]
//! architectures = ["digits-cnn"]        # optional: each method's recipe's by default
//! methods = ["natural", "sat", "trades", "rslad", "absld", "frl"]
//! seeds = [0, 1, 2]
//! # out = "runs"                        # default: the grid file's directory
//! # data-dir = "/data/cifar"
//! # select-on = "val"                   # or "test" (the paper's)
//!
//! [teacher]                             # for the distillation methods, one per data set
//! method = "trades"
//! arch = "digits-cnn-wide"
//! seed = 0
//! # path = "/models/trades_wrn34.pt"    # an existing teacher instead of training one
//!
//! [overrides]                           # every run (any `trainer train` setting)
//! # epochs = 20
//!
//! [method.frl]                          # one method's runs (ignored when it is not in the grid)
//! init-from = "trades"                  # starts from the same seed's trades run
//! overrides = { epochs = 10, lr = 0.01 }
//! ```
//!
//! Run directories, under `out`: `teacher` and `models/<method>-s<seed>` for a grid of one data
//! set and one architecture (the layout `bench-client compare --models-dir` reads), else
//! `<data set>-<architecture>/teacher` and `<data set>-<architecture>/models/<method>-s<seed>`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use rfb_build_support::shell::quote as shell_quote;
use rfb_core::data::{DatasetKind, Split};
use serde::Deserialize;
use tch::Device;

use crate::methods::Method;
use crate::overrides::{OverrideError, Overrides};
use crate::run::{self, RunConfig, RunSummary, TeacherSource, TrainError};

#[derive(Debug, thiserror::Error)]
pub enum GridError {
    #[error("{path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Parse { path: PathBuf, source: Box<toml::de::Error> },
    #[error("{0}")]
    Invalid(String),
    #[error("run {index} ({name}): {source}")]
    Settings { index: usize, name: String, source: OverrideError },
    #[error("run {index} ({name}) needs {needs} finished first (run its index {needs_index})")]
    NotReady { index: usize, name: String, needs: String, needs_index: usize },
    #[error(transparent)]
    Train(#[from] TrainError),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct GridFile {
    datasets: Vec<String>,
    #[serde(default)]
    architectures: Vec<String>,
    methods: Vec<Method>,
    seeds: Vec<u64>,
    out: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    select_on: Option<String>,
    teacher: Option<TeacherFile>,
    #[serde(default)]
    overrides: Overrides,
    #[serde(default)]
    method: BTreeMap<Method, MethodFile>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct TeacherFile {
    #[serde(default = "default_teacher_method")]
    method: Method,
    arch: Option<String>,
    #[serde(default)]
    seed: u64,
    path: Option<PathBuf>,
    #[serde(default)]
    overrides: Overrides,
}

fn default_teacher_method() -> Method {
    Method::Trades
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct MethodFile {
    init_from: Option<Method>,
    #[serde(default)]
    overrides: Overrides,
}

/// One run of a grid.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedRun {
    pub index: usize,
    /// Its directory relative to the grid's output directory, e.g. `models/absld-s1`.
    pub name: String,
    pub method: Method,
    pub dataset: DatasetKind,
    pub seed: u64,
    /// Every setting over the recipe's (the architecture among them).
    pub overrides: Overrides,
    /// The run whose `best` checkpoint it distils from.
    pub teacher: Option<usize>,
    /// A teacher outside the grid (checkpoint directory or state dict).
    pub external_teacher: Option<PathBuf>,
    /// The run whose `best` checkpoint it starts from.
    pub init: Option<usize>,
}

/// Where a run's directory stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    /// `summary.json` exists.
    Finished,
    /// `resume.json` exists: continued from its last saved state.
    Interrupted,
    New,
}

impl RunStatus {
    pub fn of(dir: &Path) -> RunStatus {
        if dir.join("summary.json").is_file() {
            RunStatus::Finished
        } else if dir.join("resume.json").is_file() {
            RunStatus::Interrupted
        } else {
            RunStatus::New
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Finished => "finished",
            RunStatus::Interrupted => "interrupted",
            RunStatus::New => "new",
        }
    }
}

/// Every run of a grid file, in an order in which each run's dependencies come before it.
#[derive(Debug, Clone)]
pub struct Plan {
    pub out: PathBuf,
    pub data_dir: Option<PathBuf>,
    pub select_on: Split,
    pub runs: Vec<PlannedRun>,
}

impl Plan {
    /// Reads and expands a grid file; `out` (if given) replaces the file's output directory.
    pub fn load(path: &Path, out: Option<&Path>) -> Result<Plan, GridError> {
        let text = std::fs::read_to_string(path).map_err(|source| GridError::Read { path: path.to_path_buf(), source })?;
        let file: GridFile =
            toml::from_str(&text).map_err(|source| GridError::Parse { path: path.to_path_buf(), source: Box::new(source) })?;
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        let out = match (out, &file.out) {
            (Some(out), _) => out.to_path_buf(),
            (None, Some(o)) if o.is_absolute() => o.clone(),
            (None, Some(o)) => base.join(o),
            (None, None) => base.to_path_buf(),
        };
        Plan::expand(file, out)
    }

    /// The selection split and the data sets of a grid file, checked.
    fn checked_axes(file: &GridFile) -> Result<(Split, Vec<DatasetKind>), GridError> {
        let invalid = |m: String| Err(GridError::Invalid(m));
        if file.datasets.is_empty() || file.methods.is_empty() || file.seeds.is_empty() {
            return invalid("a grid needs at least one data set, method and seed".into());
        }
        let select_on = match file.select_on.as_deref() {
            None | Some("val") | Some("validation") => Split::Validation,
            Some("test") => Split::Test,
            Some(other) => return invalid(format!("select-on must be val or test, got {other:?}")),
        };
        let mut datasets = Vec::new();
        for name in &file.datasets {
            let kind: DatasetKind = name.parse().map_err(|_| GridError::Invalid(format!("unknown data set {name:?}")))?;
            datasets.push(kind);
        }
        Ok((select_on, datasets))
    }

    fn expand(file: GridFile, out: PathBuf) -> Result<Plan, GridError> {
        let invalid = |m: String| Err(GridError::Invalid(m));
        let (select_on, datasets) = Plan::checked_axes(&file)?;
        let architectures: Vec<Option<String>> =
            if file.architectures.is_empty() { vec![None] } else { file.architectures.iter().cloned().map(Some).collect() };
        let single = datasets.len() == 1 && architectures.len() == 1;
        let needs_teacher = file.methods.iter().any(|m| m.is_distillation());
        let method_file = |m: Method| file.method.get(&m).cloned().unwrap_or_default();

        // (level, run): teachers 0, runs others start from 1, the rest 2; stable within a level.
        let mut runs: Vec<(u8, PlannedRun)> = Vec::new();
        // (run, the run it starts from), by name; resolved to indices once the order is known.
        let mut init_of: Vec<(String, String)> = Vec::new();
        let add = |runs: &mut Vec<(u8, PlannedRun)>, level: u8, run: PlannedRun| match runs.iter_mut().find(|(_, r)| r.name == run.name) {
            Some((l, _)) => *l = (*l).min(level),
            None => runs.push((level, run)),
        };
        let new_run = |name: String, method: Method, dataset: DatasetKind, seed: u64, overrides: Overrides| PlannedRun {
            index: 0,
            name,
            method,
            dataset,
            seed,
            overrides,
            teacher: None,
            external_teacher: None,
            init: None,
        };
        let teacher_name = |dataset: DatasetKind| {
            if datasets.len() == 1 {
                "teacher".to_string()
            } else {
                format!("{}/teacher", dataset.name())
            }
        };
        if needs_teacher && file.teacher.is_none() {
            return invalid("the grid has distillation methods but no [teacher] table".into());
        }
        for &dataset in &datasets {
            if let (true, Some(teacher)) = (needs_teacher, &file.teacher) {
                if teacher.path.is_none() {
                    let overrides =
                        file.overrides.then(&Overrides { arch: teacher.arch.clone(), ..Default::default() }).then(&teacher.overrides);
                    add(&mut runs, 0, new_run(teacher_name(dataset), teacher.method, dataset, teacher.seed, overrides));
                }
            }
            for architecture in &architectures {
                let prefix =
                    if single { String::new() } else { format!("{}-{}/", dataset.name(), architecture.as_deref().unwrap_or("recipe")) };
                let base = file.overrides.then(&Overrides { arch: architecture.clone(), ..Default::default() });
                for &method in &file.methods {
                    let settings = method_file(method);
                    for &seed in &file.seeds {
                        let name = format!("{prefix}models/{method}-s{seed}");
                        if let Some(source) = settings.init_from {
                            let source_name = format!("{prefix}models/{source}-s{seed}");
                            let overrides = base.then(&method_file(source).overrides);
                            add(&mut runs, 1, new_run(source_name.clone(), source, dataset, seed, overrides));
                            init_of.push((name.clone(), source_name));
                        }
                        add(&mut runs, 2, new_run(name, method, dataset, seed, base.then(&settings.overrides)));
                    }
                }
            }
        }
        runs.sort_by_key(|(level, _)| *level);
        let mut runs: Vec<PlannedRun> = runs.into_iter().map(|(_, r)| r).collect();
        let external_teacher = file.teacher.as_ref().and_then(|t| t.path.clone());
        Plan::link(&mut runs, external_teacher, &init_of, teacher_name);
        Ok(Plan { out, data_dir: file.data_dir, select_on, runs })
    }

    /// Numbers the ordered runs and points each at the runs it needs: its teacher (the grid's
    /// teacher run of its data set, or the external one) and the run it starts from.
    fn link(
        runs: &mut [PlannedRun],
        external_teacher: Option<PathBuf>,
        init_of: &[(String, String)],
        teacher_name: impl Fn(DatasetKind) -> String,
    ) {
        let names: Vec<String> = runs.iter().map(|r| r.name.clone()).collect();
        let index_of = |name: &str| names.iter().position(|n| n == name);
        for (index, run) in runs.iter_mut().enumerate() {
            run.index = index;
            if run.method.is_distillation() {
                match &external_teacher {
                    Some(path) => run.external_teacher = Some(path.clone()),
                    None => run.teacher = index_of(&teacher_name(run.dataset)),
                }
            }
            run.init = init_of.iter().find(|(n, _)| *n == run.name).and_then(|(_, source)| index_of(source));
        }
    }

    pub fn dir(&self, run: &PlannedRun) -> PathBuf {
        self.out.join(&run.name)
    }

    /// The plan as a table: index, run, method, data set, architecture, seed, what it needs,
    /// status.
    pub fn render(&self) -> String {
        let mut text = format!("{} runs under {}\n", self.runs.len(), self.out.display());
        let _ = writeln!(
            text,
            "{:>5}  {:<28} {:<9} {:<8} {:<16} {:>4}  {:<28} status",
            "index", "run", "method", "data", "architecture", "seed", "needs"
        );
        for run in &self.runs {
            let mut needs = Vec::new();
            if let Some(t) = run.teacher {
                needs.push(format!("teacher {} (#{t})", self.runs[t].name));
            }
            if let Some(path) = &run.external_teacher {
                needs.push(format!("teacher {}", path.display()));
            }
            if let Some(i) = run.init {
                needs.push(format!("init {} (#{i})", self.runs[i].name));
            }
            let _ = writeln!(
                text,
                "{:>5}  {:<28} {:<9} {:<8} {:<16} {:>4}  {:<28} {}",
                run.index,
                run.name,
                run.method,
                run.dataset.name(),
                run.overrides.arch.as_deref().unwrap_or("(recipe)"),
                run.seed,
                if needs.is_empty() { "-".to_string() } else { needs.join(", ") },
                RunStatus::of(&self.dir(run)).as_str()
            );
        }
        text
    }

    /// The training configuration of run `index`.
    pub fn config(&self, index: usize, device: Device, progress: bool) -> Result<RunConfig, GridError> {
        let run = self.run(index)?;
        let preset = run.overrides.preset(run.method, run.dataset).map_err(|source| GridError::Settings {
            index,
            name: run.name.clone(),
            source,
        })?;
        let best = |i: usize| self.dir(&self.runs[i]).join("best");
        let teacher = match (run.teacher, &run.external_teacher) {
            (Some(t), _) => Some(best(t)),
            (None, Some(path)) => Some(path.clone()),
            (None, None) => None,
        }
        .map(|path| TeacherSource { path, architecture: preset.teacher_architecture.clone() });
        let dir = self.dir(run);
        Ok(RunConfig {
            method: run.method,
            dataset: run.dataset,
            data_dir: self.data_dir.clone(),
            teacher,
            init: run.init.map(best),
            seed: run.seed,
            resume: RunStatus::of(&dir) == RunStatus::Interrupted,
            out: dir,
            preset,
            select_on: self.select_on,
            device,
            progress,
            stop_after: None,
            stop_after_batches: None,
        })
    }

    pub fn run(&self, index: usize) -> Result<&PlannedRun, GridError> {
        self.runs
            .get(index)
            .ok_or_else(|| GridError::Invalid(format!("the grid has {} runs (0..{}); no index {index}", self.runs.len(), self.runs.len())))
    }
}

/// What [`run_one`] did.
#[derive(Debug)]
pub enum Outcome {
    /// It had finished before; nothing was done.
    Skipped,
    /// Trained to the end (from the start, or resumed after `resumed_from` epochs).
    Trained { resumed: bool, summary: RunSummary },
    /// Stopped early (asked to), its resume state saved.
    Stopped { summary: RunSummary },
}

/// Runs run `index` of the plan idempotently: skipped when finished, resumed when interrupted,
/// started when new. Its dependencies (teacher, init) must have finished.
pub fn run_one(plan: &Plan, index: usize, mut adjust: impl FnMut(&mut RunConfig)) -> Result<Outcome, GridError> {
    let run = plan.run(index)?;
    if RunStatus::of(&plan.dir(run)) == RunStatus::Finished {
        return Ok(Outcome::Skipped);
    }
    for needed in run.teacher.iter().chain(run.init.iter()) {
        let dependency = &plan.runs[*needed];
        if RunStatus::of(&plan.dir(dependency)) != RunStatus::Finished {
            return Err(GridError::NotReady { index, name: run.name.clone(), needs: dependency.name.clone(), needs_index: *needed });
        }
    }
    let mut config = plan.config(index, Device::Cpu, false)?;
    adjust(&mut config);
    let resumed = config.resume;
    let summary = run::run(&config)?;
    if summary.test_clean.is_some() {
        Ok(Outcome::Trained { resumed, summary })
    } else {
        Ok(Outcome::Stopped { summary })
    }
}

impl Plan {
    /// Runs grouped by how deep their dependencies go: level 0 needs nothing, level 1 needs
    /// level-0 runs (a teacher, an init), and so on. Each level can run all at once.
    pub fn levels(&self) -> Vec<Vec<usize>> {
        let mut level = vec![0usize; self.runs.len()];
        // Dependencies come first in the plan, so one pass in order settles every level.
        for run in &self.runs {
            let deepest = run.teacher.iter().chain(run.init.iter()).map(|&d| level[d] + 1).max().unwrap_or(0);
            level[run.index] = deepest;
        }
        let depth = level.iter().copied().max().map_or(0, |m| m + 1);
        (0..depth).map(|l| (0..self.runs.len()).filter(|&i| level[i] == l).collect()).collect()
    }
}

/// `0-3,5,7-9`: an index list as `sbatch --array` takes it.
pub fn array_spec(indices: &[usize]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < indices.len() {
        let start = indices[i];
        let mut end = start;
        while i + 1 < indices.len() && indices[i + 1] == end + 1 {
            i += 1;
            end = indices[i];
        }
        parts.push(if start == end { start.to_string() } else { format!("{start}-{end}") });
        i += 1;
    }
    parts.join(",")
}

/// Settings of the emitted Slurm scripts.
#[derive(Debug, Clone)]
pub struct SlurmOptions {
    /// `--time` of one task, e.g. `24:00:00`.
    pub time: String,
    pub partition: Option<String>,
    /// GPUs per task (0: none).
    pub gpus: u32,
    /// Seconds before the time limit at which the batch shell gets USR1.
    pub signal_before_s: u32,
}

/// The Slurm files for a plan: `grid.sbatch` (one array task per run: `trainer grid run` with
/// the task's index; `--requeue`; USR1 before the time limit, forwarded to the trainer, which
/// stops after its batch and exits 75, upon which the task requeues itself) and `submit.sh`
/// (submits one array per dependency level, each after the previous one succeeded). Returns
/// (file name, contents, executable).
pub fn slurm_files(plan: &Plan, grid: &Path, trainer: &Path, options: &SlurmOptions) -> Result<Vec<(String, String, bool)>, GridError> {
    let logs = plan.out.join("slurm-logs");
    let out = std::path::absolute(&plan.out).unwrap_or_else(|_| plan.out.clone());
    let mut sbatch = String::from("#!/bin/bash\n");
    let _ = writeln!(sbatch, "# Written by `trainer grid emit --slurm` for {}.", grid.display());
    let _ = writeln!(sbatch, "# One array task per run of the grid; submit with submit.sh (it sets --array and the dependencies).");
    let _ = writeln!(sbatch, "#SBATCH --job-name=rfb-grid");
    let _ = writeln!(sbatch, "#SBATCH --time={}", options.time);
    let _ = writeln!(sbatch, "#SBATCH --requeue");
    let _ = writeln!(sbatch, "#SBATCH --signal=B:USR1@{}", options.signal_before_s);
    let _ = writeln!(sbatch, "#SBATCH --ntasks=1");
    if options.gpus > 0 {
        let _ = writeln!(sbatch, "#SBATCH --gres=gpu:{}", options.gpus);
    }
    if let Some(partition) = &options.partition {
        let _ = writeln!(sbatch, "#SBATCH --partition={partition}");
    }
    let _ = writeln!(sbatch, "#SBATCH --output={}/%A_%a.out", std::path::absolute(&logs).unwrap_or(logs.clone()).display());
    sbatch.push_str(&format!(
        r#"set -u
# The trainer stops after its current batch on USR1 (sent before the time limit) and on TERM
# (preemption, scontrol requeue), saves its resume state after that batch and exits
# with 75; the task then requeues itself and, run again, continues where it stopped.
{trainer} grid run {grid} --out {out} --index "$SLURM_ARRAY_TASK_ID" --quiet &
child=$!
trap 'kill -USR1 "$child" 2>/dev/null' USR1
trap 'kill -TERM "$child" 2>/dev/null' TERM
status=0
while true; do
    wait "$child"
    status=$?
    # wait returns early (above 128) when a trapped signal arrives; wait again until the
    # trainer itself has exited.
    kill -0 "$child" 2>/dev/null || break
done
if [ "$status" -eq 75 ]; then
    echo "stopped with its resume state saved; requeueing $SLURM_JOB_ID"
    scontrol requeue "${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}}" || exit 75
    exit 0
fi
exit "$status"
"#,
        trainer = shell_quote(&trainer.display().to_string()),
        grid = shell_quote(&grid.display().to_string()),
        out = shell_quote(&out.display().to_string()),
    ));
    let mut submit = String::from("#!/bin/bash\n");
    let _ = writeln!(
        submit,
        "# Written by `trainer grid emit --slurm`: submits the grid's {} runs, one array per dependency level.",
        plan.runs.len()
    );
    let _ = writeln!(
        submit,
        "set -euo pipefail\ncd \"$(dirname \"${{BASH_SOURCE[0]}}\")\"\nmkdir -p {}",
        shell_quote(&std::path::absolute(&logs).unwrap_or(logs.clone()).display().to_string())
    );
    let _ = writeln!(submit, "dependency=()");
    for (level, indices) in plan.levels().iter().enumerate() {
        let names: Vec<&str> = indices.iter().map(|&i| plan.runs[i].name.as_str()).collect();
        let _ = writeln!(submit, "# level {level}: {}", names.join(" "));
        let _ = writeln!(submit, "job=$(sbatch --parsable --array={} \"${{dependency[@]}}\" grid.sbatch)", array_spec(indices));
        let _ = writeln!(submit, "echo \"level {level}: array job $job\"");
        let _ = writeln!(submit, "dependency=(--dependency=afterok:${{job%%;*}})");
    }
    Ok(vec![("grid.sbatch".into(), sbatch, false), ("submit.sh".into(), submit, true)])
}

/// A Kubernetes manifest for a plan: one Indexed Job per dependency level (indices are the
/// grid's: `trainer grid run` reads $JOB_COMPLETION_INDEX; a level's Job lists only its own runs
/// through an offset), each to be applied after the previous one completed. Exit code 75 (stopped
/// on SIGTERM with its resume state saved, e.g. on node drain) restarts the pod without counting
/// as a failure. The runs directory is a shared volume (`rfb-runs` claim).
pub fn kubernetes_manifest(plan: &Plan, grid: &Path, image: &str) -> String {
    let mut text = String::new();
    let _ = writeln!(text, "# Written by `trainer grid emit --kubernetes` for {}.", grid.display());
    let _ = writeln!(text, "# Apply level by level: kubectl apply -f this.yaml -l rfb-grid-level=0; kubectl wait --for=condition=complete job -l rfb-grid-level=0 --timeout=-1s; then level 1, ...");
    let _ = writeln!(
        text,
        "# The grid file is mounted from the rfb-grid ConfigMap (kubectl create configmap rfb-grid --from-file=grid.toml={}).",
        grid.display()
    );
    for (level, indices) in plan.levels().iter().enumerate() {
        let list: Vec<String> = indices.iter().map(|i| i.to_string()).collect();
        let _ = write!(
            text,
            r#"---
apiVersion: batch/v1
kind: Job
metadata:
  name: rfb-grid-level-{level}
  labels:
    rfb-grid-level: "{level}"
spec:
  completionMode: Indexed
  completions: {count}
  parallelism: {count}
  backoffLimitPerIndex: 3
  maxFailedIndexes: {count}
  podFailurePolicy:
    rules:
      # 75: stopped on SIGTERM with its resume state saved; the pod restarts and continues.
      - action: Ignore
        onExitCodes:
          operator: In
          values: [75]
  template:
    metadata:
      labels:
        rfb-grid-level: "{level}"
    spec:
      restartPolicy: Never
      terminationGracePeriodSeconds: 300
      containers:
        - name: trainer
          image: {image}
          # Runs of this level, by position in the Job: {runs}
          command: ["/bin/sh", "-c"]
          args:
            - set -- {runs_args}; shift "$JOB_COMPLETION_INDEX"; exec trainer grid run /grid/grid.toml --out /runs --index "$1" --quiet
          resources:
            limits:
              nvidia.com/gpu: 1
          volumeMounts:
            - {{ name: grid, mountPath: /grid }}
            - {{ name: runs, mountPath: /runs }}
      volumes:
        - name: grid
          configMap: {{ name: rfb-grid }}
        - name: runs
          persistentVolumeClaim: {{ claimName: rfb-runs }}
"#,
            count = indices.len(),
            runs = list.join(", "),
            runs_args = list.join(" "),
        );
    }
    text
}
