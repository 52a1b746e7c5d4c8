//! Grids as data: the plan of a grid file (runs, order, dependencies), cluster files emitted
//! from it, idempotent runs by index (a finished run is skipped, an interrupted one resumed),
//! and SIGUSR1 handled for real: the trainer stops after its batch, exits with 75, and the same
//! index run again ends with the same weights as an uninterrupted run.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use rfb_trainer::grid::{self, Outcome, Plan, RunStatus};

const TINY: &str = r#"
datasets = ["digits"]
methods = ["natural"]
seeds = [3]
[overrides]
epochs = 2
eval-every = 2
attack-steps = 2
"#;

fn write_grid(dir: &Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("grid.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn last_weights(run: &Path) -> String {
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(run.join("last/manifest.json")).unwrap()).unwrap();
    manifest["weights_sha256"].as_str().unwrap().to_string()
}

fn log_lines(run: &Path) -> usize {
    std::fs::read_to_string(run.join("log.jsonl")).unwrap_or_default().lines().count()
}

#[test]
fn the_plan_lists_runs_with_their_teacher_and_init_and_emits_cluster_files() {
    let dir = tempfile::tempdir().unwrap();
    let grid = write_grid(
        dir.path(),
        r#"
datasets = ["digits"]
methods = ["natural", "absld", "frl"]
seeds = [0, 1]
out = "runs"
[teacher]
arch = "digits-cnn-wide"
[overrides]
epochs = 4
[method.frl]
init-from = "trades"
overrides = { epochs = 2, lr = 0.01 }
[method.absld]
overrides = { kl-scale = 0.5 }
"#,
    );
    let plan = Plan::load(&grid, None).unwrap();
    assert_eq!(plan.out, dir.path().join("runs"));
    let names: Vec<&str> = plan.runs.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "teacher",
            "models/trades-s0",
            "models/trades-s1",
            "models/natural-s0",
            "models/natural-s1",
            "models/absld-s0",
            "models/absld-s1",
            "models/frl-s0",
            "models/frl-s1"
        ]
    );
    let teacher = &plan.runs[0];
    assert_eq!((teacher.method.as_str(), teacher.seed, teacher.overrides.arch.as_deref()), ("trades", 0, Some("digits-cnn-wide")));
    assert_eq!(teacher.overrides.epochs, Some(4), "the grid's overrides apply to the teacher too");
    for run in &plan.runs {
        let expected_teacher = (run.method.as_str() == "absld").then_some(0);
        assert_eq!(run.teacher, expected_teacher, "{}", run.name);
        let expected_init = (run.method.as_str() == "frl").then_some(if run.seed == 0 { 1 } else { 2 });
        assert_eq!(run.init, expected_init, "{}", run.name);
    }
    let frl = plan.runs.iter().find(|r| r.name == "models/frl-s1").unwrap();
    assert_eq!((frl.overrides.epochs, frl.overrides.lr), (Some(2), Some(0.01)), "per-method overrides win");
    let config = plan.config(7, tch::Device::Cpu, false).unwrap();
    assert_eq!(config.init.as_deref(), Some(dir.path().join("runs/models/trades-s0/best").as_path()));
    assert_eq!(config.preset.epochs, 2);
    let absld = plan.config(5, tch::Device::Cpu, false).unwrap();
    assert_eq!(absld.teacher.unwrap().path, dir.path().join("runs/teacher/best"));
    assert_eq!(absld.preset.methods.absld.kl_scale, 0.5);
    assert!(plan.config(9, tch::Device::Cpu, false).is_err(), "index out of range");

    let text = plan.render();
    assert!(text.starts_with("9 runs under"), "{text}");
    let absld_line = text.lines().find(|l| l.contains("models/absld-s1")).unwrap();
    assert!(absld_line.contains("teacher teacher (#0)") && absld_line.trim_end().ends_with("new"), "{absld_line}");
    let frl_line = text.lines().find(|l| l.contains("models/frl-s0")).unwrap();
    assert!(frl_line.contains("init models/trades-s0 (#1)"), "{frl_line}");

    // Levels: what needs nothing, then what needs those.
    assert_eq!(plan.levels(), vec![vec![0, 1, 2, 3, 4], vec![5, 6, 7, 8]]);
    // The same for scripts (the main job runs each line's runs side by side).
    let levels = Command::new(env!("CARGO_BIN_EXE_trainer")).args(["grid", "plan", "--levels"]).arg(&grid).output().unwrap();
    assert!(levels.status.success());
    assert_eq!(String::from_utf8_lossy(&levels.stdout), "0 1 2 3 4\n5 6 7 8\n");
    assert_eq!(grid::array_spec(&[0, 1, 2, 4, 6, 7]), "0-2,4,6-7");
    let options = grid::SlurmOptions { time: "02:00:00".into(), partition: Some("gpu".into()), gpus: 1, signal_before_s: 120 };
    let files = grid::slurm_files(&plan, &grid, Path::new("/opt/rfb/trainer"), &options).unwrap();
    let sbatch = &files.iter().find(|f| f.0 == "grid.sbatch").unwrap().1;
    for line in
        ["#SBATCH --requeue", "#SBATCH --signal=B:USR1@120", "#SBATCH --time=02:00:00", "#SBATCH --partition=gpu", "#SBATCH --gres=gpu:1"]
    {
        assert!(sbatch.lines().any(|l| l == line), "{line} missing:\n{sbatch}");
    }
    assert!(sbatch.contains("grid run") && sbatch.contains("$SLURM_ARRAY_TASK_ID") && sbatch.contains("scontrol requeue"), "{sbatch}");
    let submit = &files.iter().find(|f| f.0 == "submit.sh").unwrap().1;
    assert!(submit.contains("--array=0-4 \"${dependency[@]}\""), "{submit}");
    assert!(submit.contains("--array=5-8") && submit.contains("--dependency=afterok:"), "{submit}");
    let manifest = grid::kubernetes_manifest(&plan, &grid, "rfb:1");
    assert_eq!(manifest.matches("completionMode: Indexed").count(), 2, "{manifest}");
    assert!(manifest.contains("set -- 5 6 7 8;") && manifest.contains("values: [75]"), "{manifest}");

    // Errors a grid file can have.
    let bad = write_grid(dir.path(), "datasets = [\"digits\"]\nmethods = [\"absld\"]\nseeds = [0]\n");
    assert!(Plan::load(&bad, None).unwrap_err().to_string().contains("[teacher]"));
    let bad = write_grid(dir.path(), "datasets = [\"digits\"]\nmethods = [\"natural\"]\nseeds = [0]\n[overrides]\nepoch = 3\n");
    assert!(Plan::load(&bad, None).unwrap_err().to_string().contains("epoch"), "an unknown setting is an error");
    let bad = write_grid(dir.path(), "datasets = [\"digits\"]\nmethods = [\"natural\", \"fancy\"]\nseeds = [0]\n");
    let error = format!("{:?}", Plan::load(&bad, None).unwrap_err());
    assert!(error.contains("unknown variant `fancy`") && error.contains("`fair-ard`"), "an unknown method is an error: {error}");
}

#[test]
fn runs_are_idempotent_and_resume_to_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    let grid = write_grid(dir.path(), TINY);

    // Uninterrupted.
    let straight = Plan::load(&grid, Some(&dir.path().join("straight"))).unwrap();
    assert!(matches!(grid::run_one(&straight, 0, |_| {}).unwrap(), Outcome::Trained { resumed: false, .. }));
    let reference = last_weights(&straight.dir(&straight.runs[0]));
    // Run again: skipped, nothing touched.
    let summary = std::fs::read(straight.dir(&straight.runs[0]).join("summary.json")).unwrap();
    assert!(matches!(grid::run_one(&straight, 0, |_| {}).unwrap(), Outcome::Skipped));
    assert_eq!(std::fs::read(straight.dir(&straight.runs[0]).join("summary.json")).unwrap(), summary);

    // SIGUSR1 to the real binary once an epoch has finished: it stops after its batch with 75.
    let signalled = dir.path().join("signalled");
    let trainer = |_: ()| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_trainer"));
        c.args(["grid", "run"]).arg(&grid).arg("--out").arg(&signalled).args(["--device", "cpu", "--quiet"]).env("RFB_GRID_INDEX", "0");
        c
    };
    let mut child = trainer(()).stdout(std::process::Stdio::null()).spawn().unwrap();
    let run_dir = signalled.join("models/natural-s3");
    let deadline = Instant::now() + Duration::from_secs(900);
    while log_lines(&run_dir) < 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let status = Command::new("kill").args(["-USR1", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let code = child.wait().unwrap().code();
    assert_eq!(code, Some(75), "stopped on SIGUSR1 with the requeue code");
    assert_eq!(RunStatus::of(&run_dir), RunStatus::Interrupted);
    assert_eq!(log_lines(&run_dir), 1, "it stopped before the end");
    let plan = Plan::load(&grid, Some(&signalled)).unwrap();
    assert!(plan.render().lines().last().unwrap().trim_end().ends_with("interrupted"), "{}", plan.render());
    let output = trainer(()).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).contains("resumed and finished"), "{}", String::from_utf8_lossy(&output.stdout));
    assert_eq!(last_weights(&run_dir), reference, "the run stopped by SIGUSR1 and rerun differs from the uninterrupted one");
    assert_eq!(log_lines(&run_dir), 2);
    let output = trainer(()).output().unwrap();
    assert!(String::from_utf8_lossy(&output.stdout).contains("skipped"), "{}", String::from_utf8_lossy(&output.stdout));
}
