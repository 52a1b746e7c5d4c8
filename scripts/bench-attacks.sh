#!/usr/bin/env bash
# Attack speed, ours beside torchattacks / plain PyTorch, on the case that matters: a ResNet-18
# trained briefly on synthetic CIFAR-10 files, at the radius where about a third of the points
# survive, so that every AutoAttack component does its work. The same
# weights and the same points on both sides, one run after the other, each in its own process.
#
# The data, the weights and the chosen radius are cached in target/bench-cache/ (delete it to
# start over). Settings (environment):
#   PER_CLASS=10            PGD-20 and CW-inf points per class
#   AA_PER_CLASS=2          AutoAttack points per class
#   EPS=<x/255>             radius (default: calibrated once, PGD-20 survivors closest to 35%)
#   VARIANTS=fp32,fp32-fast     ours to time: a precision (fp32, fp32-fast, bf16 where the CPU or
#                               GPU has it), with "/no-dropping" to keep broken points in APGD
#                               and FAB (as before they were dropped; e.g. fp32/no-dropping)
#   ATTACKS=pgd20,cw30,autoattack
#   RFB_THREADS=N           intra-op threads on both sides (default: libtorch's, one per core)
#   OUT=results/perf/<cpu>.md   where the table goes
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup-env.sh

per_class=${PER_CLASS:-10}
aa_per_class=${AA_PER_CLASS:-2}
variants=${VARIANTS:-fp32,fp32-fast}
attacks=${ATTACKS:-pgd20,cw30,autoattack}
cache=target/bench-cache
mkdir -p "$cache" results/perf

cargo build --release --locked -p rfb-core --example attack_benchmark
bench=target/release/examples/attack_benchmark

if [ ! -f "$cache/data/test_batch.bin" ]; then
    "$bench" synth --out "$cache/data" --train-per-class 200 --test-per-class 50 --seed 0
fi
if [ ! -f "$cache/resnet18.pt" ]; then
    echo "== training the benchmark's ResNet-18 (once; cached in $cache)"
    "$RFB_PYTHON" tests/python/bench_attacks.py train "$cache/data" "$cache/resnet18.pt.tmp" --epochs 2
    mv "$cache/resnet18.pt.tmp" "$cache/resnet18.pt"
fi
if [ -n "${EPS:-}" ]; then
    eps_255=$EPS
elif [ -f "$cache/eps" ]; then
    eps_255=$(cat "$cache/eps")
else
    echo "== choosing the radius (once)"
    eps_255=$("$RFB_PYTHON" tests/python/bench_attacks.py calibrate "$cache/data" "$cache/resnet18.pt" | tee /dev/stderr | sed -n 's|^chosen eps \(.*\)/255$|\1|p')
    echo "$eps_255" > "$cache/eps"
fi
eps=$("$RFB_PYTHON" -c "print($eps_255 / 255)")
echo "== eps $eps_255/255, $per_class points per class ($aa_per_class for AutoAttack), attacks $attacks"

jsons=()
for variant in ${variants//,/ }; do
    echo "== ours, $variant"
    precision=${variant%%/*}
    flags=()
    [ "$variant" != "${variant%/no-dropping}" ] && flags+=(--no-dropping)
    json="$cache/ours-${variant//\//-}.json"
    "$bench" run --weights "$cache/resnet18.pt" --data "$cache/data" --eps "$eps" --per-class "$per_class" \
        --autoattack-per-class "$aa_per_class" --attacks "$attacks" --precision "$precision" "${flags[@]}" \
        --json "$json"
    jsons+=("$json")
done
echo "== torchattacks / PyTorch, fp32"
"$RFB_PYTHON" tests/python/bench_attacks.py run "$cache/data" "$cache/resnet18.pt" --eps "$eps" \
    --per-class "$per_class" --autoattack-per-class "$aa_per_class" --attacks "$attacks" --json "$cache/theirs.json"

cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1 | tr -c 'A-Za-z0-9\n' '-' | tr -s '-')
out=${OUT:-results/perf/${cpu:-cpu}-$(nproc)-cores${RFB_THREADS:+-$RFB_THREADS-threads}.md}
{
    echo "# Attack speed: ours beside torchattacks"
    echo
    echo "\`bash scripts/bench-attacks.sh\` at $(git rev-parse --short HEAD) on $(date -u +%Y-%m-%d); times in seconds (CPU seconds in parentheses); \"faster by\" is their time over ours."
    echo
} > "$out.tmp"
"$RFB_PYTHON" tests/python/bench_attacks.py compare "${jsons[@]}" "$cache/theirs.json" --markdown "$out.table"
cat "$out.table" >> "$out.tmp" && rm -f "$out.table"
mv "$out.tmp" "$out"
echo "== written to $out"
