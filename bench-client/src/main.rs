//! `bench-client`: compare models across seeds through evaluator servers, rebuild reports from
//! `results.json`, and plot training logs. See `bench-client <command> --help`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use rfb_bench_client::attacks::{self, Common, DEFAULT_ATTACKS};
use rfb_bench_client::client::{self, CompareConfig};
use rfb_bench_client::logs::{self, Normalisation};
use rfb_bench_client::plots::{self, LabelledRun};
use rfb_bench_client::precision::Precision;
use rfb_bench_client::results::{self, Results, Settings, SweepSetting};
use rfb_bench_client::selection::{self, name_parts, Selection};
use rfb_bench_client::split::Split;
use rfb_bench_client::{html, provenance, report, summary};
use rfb_build_support::{shell, sources};

#[derive(Parser)]
#[command(
    name = "bench-client",
    version,
    about = "Compare robust models across seeds: class-wise statistics, tables and plots from evaluator servers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Evaluate every seed of every model on the servers and write results.json, tables and plots.
    ///
    /// A model name stands for all its seeds: `absld` matches the checkpoints `absld-s<seed>/best`
    /// listed by the servers (else those whose manifest method is `absld`); `LABEL=NAME` sets the
    /// row label; an exact checkpoint name (`absld-s1/best`) is one seed. The first model is the
    /// baseline of the differences and Welch tests.
    Compare(Box<CompareArgs>),
    /// Rebuild tables, plots and index.html from a results.json, without a server. The page
    /// also shows the training plots (risk-sd.png, temperatures-*.png) found in OUT when no
    /// --logs are given.
    Report(ReportArgs),
    /// Plot training logs: SD of the normalised class-wise error risks per epoch (clean and
    /// adversarial) and ABSLD's class-wise temperatures.
    PlotLogs(PlotLogsArgs),
    /// Print the hash of the sources that decide the results (JSON, as run.json records it).
    Sources(SourcesArgs),
    /// Check that committed results were made from the sources checked out now: every
    /// run.json under the results directories must record their hash (or say "archived" and
    /// why). Exits with failure, naming what changed and the command that regenerates it, when
    /// one does not.
    CheckResults(CheckResultsArgs),
    /// List the checkpoints a server offers, with method and seed.
    List(ListArgs),
}

#[derive(Args)]
struct CompareArgs {
    /// Evaluator address (host:port or http://host:port); repeat or comma-separate to share
    /// the work, one request in flight per server. With several servers each evaluation is
    /// split into shards (see --shards) that the servers take in turn; a shard that fails on
    /// one server (unreachable, out of memory) is redone on another.
    #[arg(long = "server", required = true, value_delimiter = ',')]
    servers: Vec<String>,
    #[command(flatten)]
    selection: SelectionArgs,
    #[command(flatten)]
    evaluation: EvaluationArgs,
    #[command(flatten)]
    token: TokenArgs,
    /// Output directory (results.json, table.md, report.md, CSV files, PNG plots).
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    logs: LogsArgs,
    /// The servers' models directory, when this machine sees it: the compared runs' own
    /// training logs are then plotted too.
    #[arg(long)]
    models_dir: Option<PathBuf>,
    #[command(flatten)]
    normalisation: NormalisationArgs,
    /// Seconds to wait for a server connection.
    #[arg(long, default_value_t = 10)]
    connect_timeout_s: u64,
    /// Deadline of one request in seconds (all its attacks; one shard's when sharded); none
    /// by default.
    #[arg(long)]
    deadline_s: Option<u64>,
    /// Shards per evaluation: 0 = one per reachable server; 1 = no sharding (each server
    /// takes whole evaluations). The shards' per-class counts add up to the unsharded
    /// result exactly at fp32 and bf16.
    #[arg(long, default_value_t = 0)]
    shards: usize,
    /// Exit with failure when any evaluation failed (default: only when all did).
    #[arg(long)]
    strict: bool,
    /// A JSON object describing the run (commit, sources hash, host, versions), kept in
    /// results.json and shown on the report page.
    #[arg(long)]
    run_info: Option<PathBuf>,
    /// No progress: neither bars (terminal) nor the plain lines written every 15 s when
    /// stderr is not a terminal (RFB_PROGRESS_SECONDS sets that pace).
    #[arg(long)]
    quiet: bool,
}

/// Which checkpoints `compare` evaluates.
#[derive(Args)]
struct SelectionArgs {
    /// Models to compare, comma-separated: NAME or LABEL=NAME.
    #[arg(long)]
    models: String,
    /// Only these seeds (comma-separated).
    #[arg(long, value_delimiter = ',')]
    seeds: Option<Vec<u64>>,
    /// Which checkpoint of each run: best, last or epoch-NNNN.
    #[arg(long, default_value = "best")]
    checkpoint: String,
}

/// How `compare` evaluates each checkpoint: the settings recorded in results.json.
#[derive(Args)]
struct EvaluationArgs {
    /// Attacks in column order: clean, fgsm, pgd (PGD-20), pgd-N, cw (CW-inf), cw-N, aa
    /// (AutoAttack standard), aa-rand, aa:apgd-ce+apgd-t+...
    #[arg(long, default_value = DEFAULT_ATTACKS)]
    attacks: String,
    /// L-inf radius of every attack: a number or a fraction such as 8/255.
    #[arg(long, default_value = "8/255")]
    eps: String,
    /// Step size of PGD and CW (a number or fraction); default: the server's, eps/4 (2/255 at 8/255).
    #[arg(long)]
    step_size: Option<String>,
    /// Seed of the attacks' random starts.
    #[arg(long, default_value_t = 0)]
    attack_seed: u64,
    /// Robustness curve: also run --sweep-attack at START:END:COUNT evenly spaced radii
    /// (ends as --eps takes them, e.g. 0:16/255:17), each radius its own attack (and cache
    /// entry), evaluated independently (docs/attacks.md); radius 0 is clean accuracy. Its
    /// step size is the server's eps/4 at each radius (--step-size does not apply). Counts in
    /// results.json's `sweep`.
    #[arg(long, value_name = "START:END:COUNT", conflicts_with = "eps_sweep_list")]
    eps_sweep: Option<String>,
    /// Robustness curve at these radii (comma-separated, increasing), e.g. 1/255,2/255,4/255.
    #[arg(long, value_name = "EPS,EPS,...")]
    eps_sweep_list: Option<String>,
    /// The attack of the robustness curve (one name of --attacks' grammar; its eps is the radius).
    #[arg(long, default_value = "pgd")]
    sweep_attack: String,
    /// Data set to evaluate on; default: each model's own.
    #[arg(long, default_value = "")]
    dataset: String,
    #[arg(long, value_enum, default_value_t = Split::Test)]
    split: Split,
    /// Examples per class (the first n of each class); 0: the whole split.
    #[arg(long, default_value_t = 0)]
    examples_per_class: i64,
    /// Batch size; 0: the server's default.
    #[arg(long, default_value_t = 0)]
    batch_size: i64,
    #[arg(long, value_enum, default_value_t = Precision::Fp32)]
    precision: Precision,
    /// Confidence level of the intervals.
    #[arg(long, default_value_t = 0.95)]
    confidence: f64,
}

/// A bearer token for the servers.
#[derive(Args)]
struct TokenArgs {
    /// File holding a bearer token sent with every call.
    #[arg(long)]
    token_file: Option<PathBuf>,
}

/// Training logs to plot beside the results.
#[derive(Args)]
struct LogsArgs {
    /// Training run directories (or folders of them) whose log.jsonl to plot as well.
    #[arg(long, num_args = 1..)]
    logs: Vec<PathBuf>,
}

/// How the log plots normalise the class-wise risks.
#[derive(Args)]
struct NormalisationArgs {
    /// Normalisation of the class-wise risks in the log plots.
    #[arg(long, value_enum, default_value_t = Normalisation::Sum)]
    normalise: Normalisation,
}

#[derive(Args)]
struct ReportArgs {
    #[arg(long)]
    from: PathBuf,
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    logs: LogsArgs,
    #[command(flatten)]
    normalisation: NormalisationArgs,
}

#[derive(Args)]
struct PlotLogsArgs {
    /// Run directories with log.jsonl, or folders of them. Runs named <group>-s<seed> are
    /// drawn as one line per group with a band over seeds.
    #[arg(long, num_args = 1.., required = true)]
    runs: Vec<PathBuf>,
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    normalisation: NormalisationArgs,
}

/// Where the repository is.
#[derive(Args)]
struct RootArgs {
    /// Repository root; default: found above the current directory.
    #[arg(long)]
    root: Option<PathBuf>,
}

#[derive(Args)]
struct SourcesArgs {
    #[command(flatten)]
    root: RootArgs,
    /// Only the sources that decide trained weights (the main job reuses a trained run only
    /// while these are unchanged).
    #[arg(long)]
    training: bool,
    /// Print the hash alone instead of JSON.
    #[arg(long)]
    hash_only: bool,
}

#[derive(Args)]
struct CheckResultsArgs {
    #[command(flatten)]
    root: RootArgs,
    /// Results directories to check; default: ROOT/results.
    dirs: Vec<PathBuf>,
}

#[derive(Args)]
struct ListArgs {
    #[arg(long = "server", required = true, value_delimiter = ',')]
    servers: Vec<String>,
    #[command(flatten)]
    token: TokenArgs,
}

fn labelled_runs(dirs: &[PathBuf]) -> anyhow::Result<Vec<LabelledRun>> {
    let mut runs = Vec::new();
    for dir in logs::find_runs(dirs)? {
        let run = logs::read_run(&dir)?;
        runs.push(LabelledRun { group: run.group.clone(), run });
    }
    Ok(runs)
}

/// The compared runs' own logs under the models directory, grouped by model label.
fn logs_next_to_checkpoints(models_dir: &Path, selections: &[Selection]) -> Vec<LabelledRun> {
    let mut runs = Vec::new();
    for s in selections {
        for r in &s.runs {
            let dir = models_dir.join(name_parts(&r.info.name).run);
            if dir.join("log.jsonl").is_file() {
                match logs::read_run(&dir) {
                    Ok(run) => runs.push(LabelledRun { group: s.request.label.clone(), run }),
                    Err(e) => eprintln!("bench-client: skipping the log of {}: {e:#}", r.info.name),
                }
            } else {
                eprintln!("bench-client: no log.jsonl at {}", dir.display());
            }
        }
    }
    runs
}

/// The training-log plots (risk-sd.png, temperatures-*.png) already in `dir`, in name order.
fn training_plots_in(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                    name == "risk-sd.png" || (name.starts_with("temperatures-") && name.ends_with(".png"))
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

fn read_run_info(path: &Path) -> anyhow::Result<std::collections::BTreeMap<String, serde_json::Value>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading --run-info {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("--run-info {} must hold a JSON object", path.display()))
}

fn print_files(files: &[PathBuf]) {
    for f in files {
        println!("wrote {}", f.display());
    }
}

impl EvaluationArgs {
    /// The settings these flags ask for, checked.
    fn settings(self) -> anyhow::Result<Settings> {
        if !(self.confidence > 0.0 && self.confidence < 1.0) {
            bail!("--confidence must be between 0 and 1");
        }
        if self.examples_per_class < 0 || self.batch_size < 0 {
            bail!("--examples-per-class and --batch-size must not be negative");
        }
        let common = Common {
            eps: attacks::parse_eps(&self.eps)?,
            step_size: self.step_size.as_deref().map(attacks::parse_eps).transpose().context("--step-size")?,
            seed: self.attack_seed,
        };
        Ok(Settings {
            dataset: self.dataset,
            split: self.split,
            examples_per_class: self.examples_per_class,
            batch_size: self.batch_size,
            precision: self.precision,
            attacks: attacks::parse_attacks(&self.attacks, &common)?,
            confidence: self.confidence,
            uncertainty: Default::default(),
            sweep: sweep_setting(self.eps_sweep.as_deref(), self.eps_sweep_list.as_deref(), &self.sweep_attack, &common)?,
        })
    }
}

/// The robustness curve asked for by `--eps-sweep` / `--eps-sweep-list`, if any.
fn sweep_setting(range: Option<&str>, list: Option<&str>, attack: &str, common: &Common) -> anyhow::Result<Option<SweepSetting>> {
    let radii = rfb_proto::eps_sweep::sweep_radii(range, list)?;
    if radii.is_empty() {
        return Ok(None);
    }
    // The step follows the radius (the server's eps/4), whatever --step-size says for the columns.
    let setting = attacks::parse_attack(attack, &Common { step_size: None, ..*common }).context("--sweep-attack")?;
    if setting.kind == "CLEAN" {
        bail!("--sweep-attack: clean accuracy does not depend on the radius; name an attack");
    }
    Ok(Some(SweepSetting { attack: results::AttackSetting { eps: None, ..setting }, radii }))
}

impl TokenArgs {
    fn read(&self) -> anyhow::Result<Option<String>> {
        self.token_file.as_deref().map(client::read_token).transpose()
    }
}

impl RootArgs {
    /// The given root, else the repository root above the current directory.
    fn resolve(self) -> anyhow::Result<PathBuf> {
        match self.root {
            Some(root) => Ok(root),
            None => {
                let here = std::env::current_dir().context("the current directory")?;
                sources::find_root(&here).with_context(|| format!("no repository root above {} (give --root)", here.display()))
            }
        }
    }
}

fn run_compare(args: CompareArgs) -> anyhow::Result<ExitCode> {
    let settings = args.evaluation.settings()?;
    let run = args.run_info.as_deref().map(read_run_info).transpose()?.unwrap_or_default();
    let config = CompareConfig {
        servers: args.servers,
        token: args.token.read()?,
        requests: selection::parse_models(&args.selection.models)?,
        seeds: args.selection.seeds,
        checkpoint: args.selection.checkpoint,
        settings,
        progress: !args.quiet,
        command: std::env::args().map(|a| shell::quote(&a)).collect::<Vec<_>>().join(" "),
        connect_timeout: Duration::from_secs(args.connect_timeout_s.max(1)),
        deadline: args.deadline_s.map(Duration::from_secs),
        shards: args.shards,
    };
    let out = &args.out;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let (mut results, selections) = runtime.block_on(client::compare(&config))?;
    results.run = run;
    let json = out.join("results.json");
    results.save(&json)?;
    let mut files = vec![json];
    let summary = summary::summarize(&results);
    files.extend(report::write_report_with(&results, &summary, out)?);
    // The results are safe on disk by now: a log that cannot be read is only a warning.
    let log_runs = compared_log_runs(&args.logs.logs, args.models_dir.as_deref(), &selections);
    if !log_runs.is_empty() {
        match plots::plot_logs(&log_runs, args.normalisation.normalise, out) {
            Ok(f) => files.extend(f),
            Err(e) => eprintln!("bench-client: could not plot the training logs: {e:#}"),
        }
    }
    match html::write_index(&results, &summary, &files, out) {
        Ok(page) => files.push(page),
        Err(e) => eprintln!("bench-client: could not write index.html: {e}"),
    }
    println!("{}", report::table1_markdown(&summary));
    print!("{}", report::work_by_server(&results));
    print_files(&files);
    Ok(compare_exit_code(&results, args.strict))
}

/// The training logs to plot after a comparison: those of `--logs` (a warning when they cannot
/// be read), and the compared runs' own under the models directory; a run found both ways is
/// plotted once, under its comparison label.
fn compared_log_runs(log_dirs: &[PathBuf], models_dir: Option<&Path>, selections: &[Selection]) -> Vec<LabelledRun> {
    let mut log_runs = labelled_runs(log_dirs).unwrap_or_else(|e| {
        eprintln!("bench-client: not plotting --logs: {e:#}");
        Vec::new()
    });
    if let Some(dir) = models_dir {
        let next_to_checkpoints = logs_next_to_checkpoints(dir, selections);
        let same_dir = |a: &Path, b: &Path| a.canonicalize().ok().zip(b.canonicalize().ok()).is_some_and(|(a, b)| a == b);
        log_runs.retain(|r| !next_to_checkpoints.iter().any(|n| same_dir(&n.run.dir, &r.run.dir)));
        log_runs.extend(next_to_checkpoints);
    }
    log_runs
}

/// Failure when nothing was evaluated, or (with --strict) when anything failed; says how many
/// evaluations failed.
fn compare_exit_code(results: &Results, strict: bool) -> ExitCode {
    let evaluated: usize = results.models.iter().map(|m| m.runs.len()).sum();
    let failed = results.failures.len();
    if failed > 0 {
        eprintln!("bench-client: {failed} of {} evaluations failed (listed in report.md)", failed + evaluated);
    }
    if evaluated == 0 || (strict && failed > 0) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn run_report(args: ReportArgs) -> anyhow::Result<ExitCode> {
    let out = &args.out;
    let results = Results::load(&args.from)?;
    let summary = summary::summarize(&results);
    let mut files = report::write_report_with(&results, &summary, out)?;
    let log_runs = labelled_runs(&args.logs.logs)?;
    let mut page_files = files.clone();
    if !log_runs.is_empty() {
        let plotted = plots::plot_logs(&log_runs, args.normalisation.normalise, out)?;
        page_files.extend(plotted.iter().cloned());
        files.extend(plotted);
    } else {
        // The training plots a compare run left in OUT still belong on the page.
        page_files.extend(training_plots_in(out));
    }
    files.push(html::write_index(&results, &summary, &page_files, out)?);
    println!("{}", report::table1_markdown(&summary));
    print_files(&files);
    Ok(ExitCode::SUCCESS)
}

fn run_plot_logs(args: PlotLogsArgs) -> anyhow::Result<ExitCode> {
    let log_runs = labelled_runs(&args.runs)?;
    print_files(&plots::plot_logs(&log_runs, args.normalisation.normalise, &args.out)?);
    Ok(ExitCode::SUCCESS)
}

fn run_sources(args: SourcesArgs) -> anyhow::Result<ExitCode> {
    let root = args.root.resolve()?;
    let paths = if args.training { sources::TRAINING_SOURCES } else { sources::RESULT_SOURCES };
    let hashes = sources::hash_sources(&root, paths)?;
    if args.hash_only {
        println!("{}", hashes.total);
    } else {
        println!("{}", serde_json::to_string_pretty(&provenance::sources_json(&hashes))?);
    }
    Ok(ExitCode::SUCCESS)
}

fn run_check_results(args: CheckResultsArgs) -> anyhow::Result<ExitCode> {
    let root = args.root.resolve()?;
    let dirs = if args.dirs.is_empty() { vec![root.join("results")] } else { args.dirs };
    let mut stale = 0;
    for dir in &dirs {
        for report in provenance::check_all(&root, dir)? {
            println!("{}", report.describe(&root));
            stale += usize::from(!report.passes());
        }
    }
    if stale > 0 {
        eprintln!("bench-client: {stale} results directories do not match the checked-out sources (see results/digits/README.md)");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn run_list(args: ListArgs) -> anyhow::Result<ExitCode> {
    let auth = client::Auth::new(args.token.read()?.as_deref())?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        for server in &args.servers {
            let mut c = client::connect(server, &auth, Duration::from_secs(10)).await?;
            let (models, problems) = client::list_models(&mut c).await?;
            println!("{}:", client::normalise_endpoint(server));
            for m in models {
                let seed = m.seed.or(name_parts(&m.name).seed).map(|s| s.to_string()).unwrap_or_else(|| "-".into());
                println!(
                    "  {:<40} method {:<8} seed {:<4} {} {} ({} classes)",
                    m.name, m.method, seed, m.architecture, m.dataset, m.num_classes
                );
                if let Some(source) = imported_from(&m.manifest_json) {
                    println!("  {:<40} imported from {source}", "");
                }
            }
            for p in problems {
                println!("  unreadable: {p}");
            }
        }
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

fn run() -> anyhow::Result<ExitCode> {
    match Cli::parse().command {
        Command::Compare(args) => run_compare(*args),
        Command::Report(args) => run_report(args),
        Command::PlotLogs(args) => run_plot_logs(args),
        Command::Sources(args) => run_sources(args),
        Command::CheckResults(args) => run_check_results(args),
        Command::List(args) => run_list(args),
    }
}

/// `FILE (FORMAT, sha256 PREFIX)` for a checkpoint made by `evaluator import` (its manifest's
/// `source`), `None` for the trainer's own.
fn imported_from(manifest_json: &str) -> Option<String> {
    let manifest: serde_json::Value = serde_json::from_str(manifest_json).ok()?;
    let source = manifest.get("source")?;
    let sha = source.get("sha256")?.as_str()?;
    Some(format!(
        "{} ({}, sha256 {})",
        source.get("file")?.as_str()?,
        source.get("format").and_then(|f| f.as_str()).unwrap_or("?"),
        &sha[..sha.len().min(16)]
    ))
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("bench-client: {e:#}");
            ExitCode::FAILURE
        }
    }
}
