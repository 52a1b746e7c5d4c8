#!/usr/bin/env bash
# The opt-in Slurm test (RFB_SLURM_TEST=1; needs root, slurm-wlm and munge):
#   RFB_SLURM_TEST=1 bash tests/slurm/grid-requeue-test.sh
# Starts a one-node cluster (tests/slurm/one-node-cluster.sh), emits a digits grid of short runs
# as a Slurm job array (`trainer grid emit --slurm`), submits it, preempts the first task with
# `scontrol requeue` once it has finished an epoch, waits for every task, and checks that every
# run finished with the same weights (sha256) as the same run trained without interruption.
set -euo pipefail
[ "${RFB_SLURM_TEST:-}" = 1 ] || { echo "skipped: set RFB_SLURM_TEST=1 (needs root, slurm-wlm, munge)"; exit 0; }
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
source scripts/setup-env.sh >/dev/null
trainer=$PWD/target/debug/trainer
[ -x "$trainer" ] || cargo build --bin trainer
bash tests/slurm/one-node-cluster.sh start
work=$(mktemp -d /tmp/rfb-slurm-grid.XXXXXX)
cat >"$work/grid.toml" <<'TOML'
datasets = ["digits"]
methods = ["natural"]
seeds = [0, 1]
[overrides]
epochs = 3
eval-every = 3
TOML
runs=$("$trainer" grid plan "$work/grid.toml" --out "$work/slurm-runs" --count)

echo "== reference: every run without interruption"
for index in $(seq 0 $((runs - 1))); do
    "$trainer" grid run "$work/grid.toml" --out "$work/reference" --index "$index" --device cpu --quiet
done

echo "== the grid on Slurm"
"$trainer" grid emit "$work/grid.toml" --out "$work/slurm-runs" --slurm --gpus 0 --time 00:30:00 --to "$work/slurm"
sed -i 's/--quiet/--quiet --device cpu/' "$work/slurm/grid.sbatch"
bash "$work/slurm/submit.sh" | tee "$work/submitted"
job=$(awk '/array job/ {print $NF}' "$work/submitted" | head -n 1)
first=$("$trainer" grid plan "$work/grid.toml" --out "$work/slurm-runs" | awk '$1 == 0 {print $2}')
log="$work/slurm-runs/$first/log.jsonl"
for _ in $(seq 1 900); do
    [ -s "$log" ] && break
    sleep 1
done
[ -s "$log" ] || { echo "task 0 finished no epoch"; squeue; exit 1; }
echo "== preempting ${job}_0 after $(wc -l <"$log") epoch(s)"
scontrol requeue "${job}_0"
for _ in $(seq 1 1800); do
    [ -z "$(squeue -h -j "$job" 2>/dev/null)" ] && break
    sleep 2
done
[ -z "$(squeue -h -j "$job" 2>/dev/null)" ] || { echo "the jobs did not finish"; squeue; exit 1; }
sacct -j "$job" 2>/dev/null || true
restarts=$(scontrol show job "${job}_0" 2>/dev/null | grep -o 'Restarts=[0-9]*' || true)
echo "task 0: ${restarts:-Restarts unknown}"
cat "$work"/slurm-runs/slurm-logs/* 2>/dev/null || true

status=0
for index in $(seq 0 $((runs - 1))); do
    name=$("$trainer" grid plan "$work/grid.toml" --out "$work/slurm-runs" | awk -v i="$index" '$1 == i {print $2}')
    a=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['weights_sha256'])" "$work/reference/$name/last/manifest.json")
    b=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['weights_sha256'])" "$work/slurm-runs/$name/last/manifest.json" 2>/dev/null || echo missing)
    if [ -f "$work/slurm-runs/$name/summary.json" ] && [ "$a" = "$b" ]; then
        echo "ok: $name finished with the reference weights ($a)"
    else
        echo "FAIL: $name: reference $a, Slurm $b"
        status=1
    fi
done
[ "$status" = 0 ] && echo "the Slurm grid test passed ($work)"
exit $status
