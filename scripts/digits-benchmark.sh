#!/usr/bin/env bash
# The main job on the embedded digits data set. Sets up the Python environment (libtorch),
# builds, trains, and reports class-wise accuracy. Re-running reuses what is already trained.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup-env.sh

echo "== build"
cargo build --locked -p rfb-trainer --bin trainer
trainer=target/debug/trainer

work=results/digits/work
mkdir -p "$work"
seed=${SEED:-0}
run="$work/natural-s$seed"
if [ -f "$run/summary.json" ]; then
    echo "== $run is already trained; reusing it (delete it to retrain)"
    "$trainer" train --method natural --dataset digits --seed "$seed" --out "$run" --resume --quiet
else
    echo "== train a natural digits-cnn (seed $seed)"
    resume=()
    [ -f "$run/resume.json" ] && resume=(--resume)
    "$trainer" train --method natural --dataset digits --seed "$seed" --out "$run" "${resume[@]}"
fi
