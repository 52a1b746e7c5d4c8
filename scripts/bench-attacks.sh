#!/usr/bin/env bash
# Attack speed of what users run, beside torchattacks and fra31's AutoAttack: `evaluator eval`
# as a whole process (one per attack, the model imported with `evaluator import` as a user
# imports a state dict) on a ResNet-18 trained briefly on synthetic CIFAR-10 files, at the
# radius where about a third of the points survive, so that every AutoAttack component does its
# work. The same weights and the same points on every side, one run after the other, each in
# its own process: torchattacks (PGD-20, a plain PyTorch CW-inf loop, AutoAttack at the
# reference's 100 iterations) and fra31's AutoAttack (`pyautoattack`, the authors' code).
# `core/examples/attack_benchmark.rs` stays for per-component profiles of the attacks alone.
#
# The data, the weights, the imported model and the chosen radius are cached in
# target/bench-cache/ (delete it to start over). Settings (environment):
#   PER_CLASS=10            PGD-20 and CW-inf points per class
#   AA_PER_CLASS=2          AutoAttack points per class
#   EPS=<x/255>             radius (default: calibrated once, PGD-20 survivors closest to 35%)
#   VARIANTS=fp32,fp32-fast,bf16   our precisions to time (`evaluator eval --precision`)
#   ATTACKS=pgd20,cw30,autoattack
#   SIDES=torchattacks,fra31       the references to time (fra31 runs AutoAttack only)
#   ARCHS=resnet18,preact-resnet18,mobilenet-v2,wrn-16-4,digits-cnn
#                           architectures of the per-precision table (PGD-20 through evaluator
#                           eval at fp32, fp32-fast and bf16, seeded random weights); empty: none
#   RFB_THREADS=N           intra-op threads on every side (default: libtorch's, one per core)
#   OUT=results/perf/<cpu>.md   where the table goes
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/build.sh
rfb_build --workspace --all-targets

per_class=${PER_CLASS:-10}
aa_per_class=${AA_PER_CLASS:-2}
variants=${VARIANTS:-fp32,fp32-fast,bf16}
attacks=${ATTACKS:-pgd20,cw30,autoattack}
sides=${SIDES:-torchattacks,fra31}
cache=target/bench-cache
mkdir -p "$cache" results/perf
target_dir=${CARGO_TARGET_DIR:-target}
evaluator="$target_dir/debug/evaluator"
examples="$target_dir/debug/examples/attack_benchmark"

if [ ! -f "$cache/data/test_batch.bin" ]; then
    "$examples" synth --out "$cache/data" --train-per-class 200 --test-per-class 50 --seed 0
fi
if [ ! -f "$cache/resnet18.pt" ]; then
    echo "== training the benchmark's ResNet-18 (once; cached in $cache)"
    "$RFB_PYTHON" tests/python/bench_attacks.py train "$cache/data" "$cache/resnet18.pt.tmp" --epochs 2
    mv "$cache/resnet18.pt.tmp" "$cache/resnet18.pt"
fi
if [ ! -f "$cache/models/resnet18/manifest.json" ]; then
    "$evaluator" import --from "$cache/resnet18.pt" --arch resnet18 --dataset cifar10 \
        --out "$cache/models/resnet18" --force
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
for side in ${sides//,/ }; do
    case "$side" in
        torchattacks)
            echo "== torchattacks / PyTorch, fp32"
            "$RFB_PYTHON" tests/python/bench_attacks.py run "$cache/data" "$cache/resnet18.pt" --eps "$eps" \
                --per-class "$per_class" --autoattack-per-class "$aa_per_class" --attacks "$attacks" --json "$cache/torchattacks.json"
            jsons+=("$cache/torchattacks.json") ;;
        fra31)
            if [[ ",$attacks," == *",autoattack,"* ]]; then
                echo "== fra31's AutoAttack (pyautoattack), fp32"
                "$RFB_PYTHON" tests/python/bench_attacks.py fra31 "$cache/data" "$cache/resnet18.pt" --eps "$eps" \
                    --autoattack-per-class "$aa_per_class" --json "$cache/fra31.json"
                jsons+=("$cache/fra31.json")
            fi ;;
        *) echo "unknown side $side (torchattacks, fra31)" >&2; exit 2 ;;
    esac
done
for precision in ${variants//,/ }; do
    echo "== ours: evaluator eval --precision $precision"
    json="$cache/ours-$precision.json"
    "$RFB_PYTHON" tests/python/bench_attacks.py ours "$cache/data" "$cache/models" --model resnet18 --evaluator "$evaluator" \
        --precision "$precision" --eps "$eps" --per-class "$per_class" --autoattack-per-class "$aa_per_class" \
        --attacks "$attacks" --json "$json"
    jsons+=("$json")
done

archs=${ARCHS-resnet18,preact-resnet18,mobilenet-v2,wrn-16-4,digits-cnn}
if [ -n "$archs" ]; then
    echo "== every precision on every architecture: PGD-20 through evaluator eval"
    "$RFB_PYTHON" tests/python/bench_attacks.py precisions "$cache/data" "$cache/precisions" --evaluator "$evaluator" \
        --archs "$archs" --eps "$eps" --json "$cache/precisions.json"
fi

cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1 | tr -c 'A-Za-z0-9\n' '-' | tr -s '-')
out=${OUT:-results/perf/${cpu:-cpu}-$(nproc)-cores${RFB_THREADS:+-$RFB_THREADS-threads}.md}
{
    echo "# Attack speed: evaluator eval beside torchattacks and fra31's AutoAttack"
    echo
    echo "\`bash scripts/bench-attacks.sh\` at $(git rev-parse --short HEAD) on $(date -u +%Y-%m-%d): each side a process of its own on the same weights and points; ours is \`evaluator eval\` as users run it, timed as a whole process (model loading and checks included)."
    echo
} > "$out.tmp"
"$RFB_PYTHON" tests/python/bench_attacks.py compare "${jsons[@]}" --markdown "$out.table"
cat "$out.table" >> "$out.tmp" && rm -f "$out.table"
if [ -n "$archs" ]; then
    { echo; echo "## Every precision on every architecture"; echo
      "$RFB_PYTHON" -c "import json, sys; print(json.load(open(sys.argv[1]))['markdown'])" "$cache/precisions.json"; } >> "$out.tmp"
fi
mv "$out.tmp" "$out"
echo "== written to $out"
