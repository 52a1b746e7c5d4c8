#!/usr/bin/env bash
# The main job on the embedded digits data set: the paper's comparison, end to end.
#
# 1. sets up the Python environment (libtorch) and builds the binaries;
# 2. trains a TRADES teacher (digits-cnn-wide), then Natural, SAT, TRADES, RSLAD and ABSLD
#    students (digits-cnn) for every seed, as a grid (work/grid.toml, run with `trainer grid
#    run`, JOBS runs side by side, level by level); finished runs are reused, killed ones
#    resumed;
# 3. starts JOBS `evaluator serve` on loopback (one shared cache), runs `bench-client compare`
#    (the servers take whole evaluations in turn) with Clean, FGSM,
#    PGD-20, CW-inf and AutoAttack (each with its adversarial confusions) and a robustness
#    curve of PGD-20 at a few radii (SWEEP), and writes tables, plots and index.html to
#    results/digits/ (with a screenshot of the page, index.png, when Chromium is installed);
# 4. stops the servers, also on failure or Ctrl-C;
# 5. writes run.json: settings, the time of every phase, host and versions, the commit, and the
#    hash of the sources that decide the results (`bench-client check-results` compares it with
#    the checkout; the tests do too).
#
# Trained runs are reused only while the training code is unchanged (the hash of
# core/src, trainer/src, this script and python/requirements.txt in WORK/training-sources);
# after a change they are moved to WORK/stale/ and trained again.
#
# Settings (environment): SEEDS (default 0,1,2), METHODS (natural,sat,trades,rslad,absld; `all`
# adds the other baselines ard,adaad,fair-ard,frl,bat,cfa), PER_CLASS (test examples per class,
# default 10), EPS (0.1), ATTACKS (clean,fgsm,pgd,cw,aa), SWEEP (the radii of the PGD-20
# robustness curve, default 0,0.05,0.1,0.15,0.2; radius 0 and EPS come from the cache of the
# Clean and PGD-20 columns; `none` for no curve), OUT (where tables and plots go,
# results/digits), WORK (trained models, evaluator cache and log, results/digits/work; shared
# between outputs, so `METHODS=all OUT=results/digits-all` reuses the default run's models),
# JOBS (processes side by side: training runs and evaluation servers; default the number of
# cores, at most 4), each with (cores / JOBS) libtorch threads: the small digits networks keep
# one thread per process busier than one process keeps two (16 runs: about 1.5x the throughput
# on 2 cores). The results are bit for bit the same only for the same JOBS and cores.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
started=$(date +%s)

seeds=${SEEDS:-0,1,2}
methods=${METHODS:-natural,sat,trades,rslad,absld}
[ "$methods" = all ] && methods=natural,sat,trades,rslad,absld,ard,adaad,fair-ard,frl,bat,cfa
per_class=${PER_CLASS:-10}
eps=${EPS:-0.1}
attacks=${ATTACKS:-clean,fgsm,pgd,cw,aa}
sweep=${SWEEP:-0,0.05,0.1,0.15,0.2}
sweep_args=()
[ "$sweep" = none ] || sweep_args=(--eps-sweep-list "$sweep" --sweep-attack pgd)
out=${OUT:-results/digits}
work=${WORK:-results/digits/work}
cores=$(nproc)
jobs=${JOBS:-$((cores < 4 ? cores : 4))}
[ "$jobs" -ge 1 ] 2>/dev/null || { echo "JOBS must be a positive whole number, not '$jobs'" >&2; exit 2; }
threads=$((cores / jobs > 0 ? cores / jobs : 1))
command="bash scripts/digits-benchmark.sh"
for setting in SEEDS METHODS PER_CLASS EPS ATTACKS SWEEP OUT WORK JOBS; do
    [ -n "${!setting:-}" ] && command="$setting=${!setting} $command"
done
models=$work/models
# The binaries, where Cargo puts them (CARGO_TARGET_DIR, if set, moves them).
bin=${CARGO_TARGET_DIR:-target}/debug

# The environment and the build (the crates without libtorch compile while libtorch downloads).
source scripts/build.sh
rfb_build --bins
built=$(date +%s)

# Finished runs are reused only if the code that trained them is the code checked out now.
training_sources=$("$bin"/bench-client sources --training --hash-only)
if [ -d "$models" ] || [ -d "$work/teacher" ]; then
    if [ "$(cat "$work/training-sources" 2>/dev/null)" != "$training_sources" ]; then
        echo "== the training code changed since the runs in $work were trained: training again (old runs in $work/stale/)"
        rm -rf "$work/stale"
        mkdir -p "$work/stale"
        for old in "$models" "$work/teacher"; do
            if [ -d "$old" ]; then mv "$old" "$work/stale/"; fi
        done
    fi
fi
mkdir -p "$models"
echo "$training_sources" >"$work/training-sources"

# The training runs are a grid (docs/scale-out.md): written from SEEDS and METHODS, planned,
# and run index by index with `trainer grid run`, which skips finished runs and resumes
# interrupted ones (the same command a Slurm array task or a Kubernetes pod runs).
grid=$work/grid.toml
quoted_methods=$(printf '"%s", ' ${methods//,/ })
cat >"$grid.tmp" <<TOML
# Written by scripts/digits-benchmark.sh from its settings (SEEDS, METHODS); see grids/digits.toml.
datasets = ["digits"]
methods = [${quoted_methods%, }]
seeds = [$seeds]

[teacher]
method = "trades"
arch = "digits-cnn-wide"
seed = 0

# FRL fine-tunes a robust model (its paper's setting): the same seed's TRADES student, for half
# the epochs at a tenth of the learning rate.
[method.frl]
init-from = "trades"
overrides = { epochs = 10, lr = 0.01 }
TOML
mv "$grid.tmp" "$grid"
echo "== training grid $grid ($jobs runs side by side, $threads libtorch thread(s) each)"
"$bin"/trainer grid plan "$grid" --out "$work"
"$bin"/trainer grid plan "$grid" --out "$work" --levels >"$work/grid-levels"
# Level by level (a level's runs need only earlier levels: the teacher before the distilled
# students), the runs of a level side by side; each line of $outcomes is one run's outcome.
outcomes=$work/grid-outcomes
: >"$outcomes"
while read -r level; do
    printf '%s\n' $level | OMP_NUM_THREADS=$threads xargs -P "$jobs" -I{} \
        sh -c '"$1" grid run "$2" --out "$3" --index "$4" --device auto >>"$5"' _ \
        "$bin/trainer" "$grid" "$work" {} "$outcomes"
done <"$work/grid-levels"
sed 's/^/   /' "$outcomes"
reused=$(grep -c skipped "$outcomes" || true)
trained=$(($(wc -l <"$outcomes") - reused))

# The teacher beside the students (one checkpoint, seed 0), so that it is evaluated on the same
# points: the paper's setting needs a teacher at least as robust as the best student baseline.
if [ -f "$work/teacher/best/model.safetensors" ]; then
    rm -rf "$models/teacher-s0/best.tmp"
    mkdir -p "$models/teacher-s0/best.tmp"
    cp "$work/teacher/best/manifest.json" "$work/teacher/best/model.safetensors" "$models/teacher-s0/best.tmp/"
    rm -rf "$models/teacher-s0/best"
    mv "$models/teacher-s0/best.tmp" "$models/teacher-s0/best"
fi

trained_at=$(date +%s)
echo "== evaluate"
# $jobs servers side by side, sharing the result cache, each taking whole evaluations in turn
# (--shards 1). Sharding would not help here: on a small model at these batch sizes an attack
# iteration costs about the same for half the points, so two shards on two servers took as long
# as the whole evaluation on one (measured: results/digits/README.md).
servers=()
stop_servers() {
    for server in "${servers[@]}"; do kill "$server" 2>/dev/null || true; done
    for server in "${servers[@]}"; do wait "$server" 2>/dev/null || true; done
}
trap stop_servers EXIT
trap 'stop_servers; exit 130' INT TERM
server_args=()
for i in $(seq 1 "$jobs"); do
    rm -f "$work/server-$i.addr"
    OMP_NUM_THREADS=$threads "$bin"/evaluator serve --listen 127.0.0.1:0 --models-dir "$models" \
        --cache-dir "$work/cache" >"$work/server-$i.addr" 2>"$work/server-$i.log" &
    servers+=($!)
done
for i in $(seq 1 "$jobs"); do
    server=${servers[$((i - 1))]}
    for _ in $(seq 1 300); do
        [ -s "$work/server-$i.addr" ] && break
        kill -0 "$server" 2>/dev/null || { cat "$work/server-$i.log" >&2; echo "evaluator $i did not start" >&2; exit 1; }
        sleep 0.1
    done
    addr=$(head -n 1 "$work/server-$i.addr" | grep -oE '[0-9.]+:[0-9]+' | head -n 1)
    [ -n "$addr" ] || { echo "evaluator $i printed no address" >&2; exit 1; }
    echo "   evaluator $i at $addr (log: $work/server-$i.log)"
    server_args+=(--server "$addr")
done

# What the page and run.json say about how these numbers came about.
mkdir -p "$out"
code_version=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
# The commit, marked -dirty when code (anything outside results/) differs from it.
git diff --quiet HEAD -- . ':(exclude)results' 2>/dev/null || code_version="$code_version-dirty"
run_info=$work/run-info.json
RFB_THREADS_PER_PROCESS=$threads RFB_JOBS=$jobs "$RFB_PYTHON" - "$run_info" "$command" "$code_version" "$(rustc --version)" \
    "$("$bin"/bench-client sources)" <<'PY'
import json, os, platform, sys
import torch
path, command, code, rustc, sources = sys.argv[1:6]
cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), platform.processor())
info = {
    "job": command,
    "code": code,
    **json.loads(sources),
    "host": f"{platform.system()} {platform.release()} {platform.machine()}, {os.cpu_count()} cores",
    "cpu": cpu,
    "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    "torch_threads": int(os.environ["RFB_THREADS_PER_PROCESS"]),
    "processes_side_by_side": int(os.environ["RFB_JOBS"]),
    "rustc": rustc,
    "torch": torch.__version__,
}
json.dump(info, open(path, "w"), indent=2)
PY

step_size=$("$RFB_PYTHON" -c "print($eps / 4)")
"$bin"/bench-client compare "${server_args[@]}" --shards 1 --models "$methods" --seeds "$seeds" \
    --attacks "$attacks" --eps "$eps" --step-size "$step_size" "${sweep_args[@]}" \
    --examples-per-class "$per_class" --out "$out" --models-dir "$models" --run-info "$run_info"
case ",$methods," in
    ,rslad,absld,) ;; # already RSLAD against ABSLD
    *,rslad,*absld,* | *,absld,*rslad,*)
        echo "== ABSLD against RSLAD (from the evaluator's cache)"
        "$bin"/bench-client compare "${server_args[@]}" --shards 1 --models rslad,absld --seeds "$seeds" \
            --attacks "$attacks" --eps "$eps" --step-size "$step_size" "${sweep_args[@]}" \
            --examples-per-class "$per_class" --out "$out/rslad-vs-absld" --models-dir "$models" \
            --run-info "$run_info"
        ;;
esac

if [ -d "$models/teacher-s0/best" ]; then
    echo "== the teacher on the same points"
    "$bin"/bench-client compare "${server_args[@]}" --shards 1 --models teacher --seeds 0 \
        --attacks "$attacks" --eps "$eps" --step-size "$step_size" \
        --examples-per-class "$per_class" --out "$out/teacher" --models-dir "$models" \
        --run-info "$run_info"
fi

stop_servers
trap - EXIT INT TERM
evaluated_at=$(date +%s)

# A screenshot of the report page, when Chromium is installed (scripts/test.sh installs it).
chromium_bin=$(command -v chromium || command -v chromium-browser || true)
if [ -n "$chromium_bin" ]; then
    profile=$(mktemp -d)
    timeout 120 "$chromium_bin" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
        --disable-background-networking --disable-component-update --disable-sync --hide-scrollbars \
        --user-data-dir="$profile" --window-size=1280,2000 --screenshot="$out/index.png" \
        "file://$(cd "$out" && pwd)/index.html" >/dev/null 2>&1 || echo "   (no screenshot: Chromium failed)"
    rm -rf "$profile"
else
    echo "   (no screenshot of index.html: Chromium is not installed)"
fi

elapsed=$(($(date +%s) - started))
RFB_THREADS_PER_PROCESS=$threads RFB_JOBS=$jobs "$RFB_PYTHON" - "$run_info" "$out/run.json" <<PY
import json, sys
info = json.load(open(sys.argv[1]))
record = {
    "command": info.pop("job"),
    "settings": {"seeds": "$seeds", "methods": "$methods", "examples_per_class": $per_class, "eps": $eps, "attacks": "$attacks", "sweep": "$sweep", "jobs": $jobs, "threads_per_process": $threads},
    "wall_seconds": $elapsed,
    "phase_seconds": {"environment_and_build": $((built - started)), "training": $((trained_at - built)), "evaluation": $((evaluated_at - trained_at))},
    "runs_trained": $trained,
    "runs_reused": $reused,
    "finished_at": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
    **info,
}
# The teacher's robustness against the best student baseline's (class-average accuracy under the
# strongest attack evaluated, mean over seeds), from the summaries written above.
import csv, os
def averages(path):
    if not os.path.exists(path):
        return {}
    return {(r["model"], r["attack"]): float(r["mean"]) for r in csv.DictReader(open(path)) if r["metric"] == "avg"}
students, teacher = averages("$out/summary.csv"), averages("$out/teacher/summary.csv")
attack = next((a for a in ("AA", "CW-inf", "PGD-20", "FGSM") if ("teacher", a) in teacher), None)
if attack:
    baselines = {m: v for (m, a), v in students.items() if a == attack and m not in ("natural", "absld")}
    best = max(baselines, key=baselines.get) if baselines else None
    record["teacher"] = {
        "method": "trades", "architecture": "digits-cnn-wide", "attack": attack,
        "average": teacher[("teacher", attack)],
        "best_student_baseline": best, "best_student_baseline_average": baselines.get(best),
    }
    verdict = "at least as robust as" if best is None or teacher[("teacher", attack)] >= baselines[best] else "LESS robust than"
    print(f"== the teacher ({attack} avg {teacher[('teacher', attack)]:.2f}) is {verdict} the best student baseline ({best}: {baselines.get(best)})")
with open(sys.argv[2], "w") as f:
    json.dump(record, f, indent=2)
    f.write("\n")
PY
echo "== done in ${elapsed}s: see $out/index.html, $out/table.md and $out/*.png"
