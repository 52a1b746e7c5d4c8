#!/usr/bin/env bash
# The main job on the embedded digits data set: the paper's comparison, end to end.
#
# 1. sets up the Python environment (libtorch) and builds the binaries;
# 2. trains a TRADES teacher (digits-cnn-wide), then Natural, SAT, TRADES, RSLAD and ABSLD
#    students (digits-cnn) for every seed, as a grid (work/grid.toml, run with `trainer grid
#    run` index by index); finished runs are reused, killed ones resumed;
# 3. starts `evaluator serve` on loopback, runs `bench-client compare` with Clean, FGSM,
#    PGD-20, CW-inf and AutoAttack, and writes tables and plots to results/digits/;
# 4. stops the server, also on failure or Ctrl-C.
#
# Settings (environment): SEEDS (default 0,1,2), METHODS (natural,sat,trades,rslad,absld; `all`
# adds the other baselines ard,adaad,fair-ard,frl,bat,cfa), PER_CLASS (test examples per class,
# default 10), EPS (0.1), ATTACKS (clean,fgsm,pgd,cw,aa), OUT (where tables and plots go,
# results/digits), WORK (trained models, evaluator cache and log, results/digits/work; shared
# between outputs, so `METHODS=all OUT=results/digits-all` reuses the default run's models).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
started=$(date +%s)
source scripts/setup-env.sh

seeds=${SEEDS:-0,1,2}
methods=${METHODS:-natural,sat,trades,rslad,absld}
[ "$methods" = all ] && methods=natural,sat,trades,rslad,absld,ard,adaad,fair-ard,frl,bat,cfa
per_class=${PER_CLASS:-10}
eps=${EPS:-0.1}
attacks=${ATTACKS:-clean,fgsm,pgd,cw,aa}
out=${OUT:-results/digits}
work=${WORK:-results/digits/work}
command="bash scripts/digits-benchmark.sh"
for setting in SEEDS METHODS PER_CLASS EPS ATTACKS OUT WORK; do
    [ -n "${!setting:-}" ] && command="$setting=${!setting} $command"
done
models=$work/models
mkdir -p "$models"

echo "== build"
cargo build --locked --bins

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
echo "== training grid $grid"
target/debug/trainer grid plan "$grid" --out "$work"
runs=$(target/debug/trainer grid plan "$grid" --out "$work" --count)
trained=0
reused=0
for index in $(seq 0 $((runs - 1))); do
    result=$(target/debug/trainer grid run "$grid" --out "$work" --index "$index" --device auto)
    echo "   $result"
    case $result in
        *skipped*) reused=$((reused + 1)) ;;
        *) trained=$((trained + 1)) ;;
    esac
done

echo "== evaluate"
server_log=$work/server.log
addr_file=$work/server.addr
rm -f "$addr_file"
target/debug/evaluator serve --listen 127.0.0.1:0 --models-dir "$models" --cache-dir "$work/cache" \
    >"$addr_file" 2>"$server_log" &
server=$!
stop_server() {
    kill "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
}
trap stop_server EXIT
trap 'stop_server; exit 130' INT TERM
for _ in $(seq 1 300); do
    [ -s "$addr_file" ] && break
    kill -0 "$server" 2>/dev/null || { cat "$server_log" >&2; echo "the evaluator did not start" >&2; exit 1; }
    sleep 0.1
done
addr=$(head -n 1 "$addr_file" | grep -oE '[0-9.]+:[0-9]+' | head -n 1)
[ -n "$addr" ] || { echo "the evaluator printed no address" >&2; exit 1; }
echo "   evaluator at $addr (log: $server_log)"

target/debug/bench-client compare --server "$addr" --models "$methods" --seeds "$seeds" \
    --attacks "$attacks" --eps "$eps" --step-size "$(python3 -c "print($eps / 4)")" \
    --examples-per-class "$per_class" --out "$out" --models-dir "$models"
case ",$methods," in
    ,rslad,absld,) ;; # already RSLAD against ABSLD
    *,rslad,*absld,* | *,absld,*rslad,*)
        echo "== ABSLD against RSLAD (from the evaluator's cache)"
        target/debug/bench-client compare --server "$addr" --models rslad,absld --seeds "$seeds" \
            --attacks "$attacks" --eps "$eps" --step-size "$(python3 -c "print($eps / 4)")" \
            --examples-per-class "$per_class" --out "$out/rslad-vs-absld" --models-dir "$models"
        ;;
esac

stop_server
trap - EXIT INT TERM
elapsed=$(($(date +%s) - started))
# The commit, marked -dirty when code (anything outside results/) differs from it.
code_version=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD -- . ':(exclude)results' 2>/dev/null || code_version="$code_version-dirty"
cat >"$out/run.json" <<JSON
{
  "command": "$command",
  "settings": {"seeds": "$seeds", "methods": "$methods", "examples_per_class": $per_class, "eps": $eps, "attacks": "$attacks"},
  "wall_seconds": $elapsed,
  "runs_trained": $trained,
  "runs_reused": $reused,
  "finished_at": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
  "host": "$(uname -srm), $(nproc) cores",
  "rustc": "$(rustc --version)",
  "torch": "$("$RFB_PYTHON" -c 'import torch; print(torch.__version__)')",
  "code": "$code_version"
}
JSON
echo "== done in ${elapsed}s: see $out/table.md and $out/*.png"
