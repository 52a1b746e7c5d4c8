#!/usr/bin/env bash
# Attack throughput: ours (fp32 and bf16) beside torchattacks, same model, batch and machine.
# Options go to both sides, e.g. BATCHES=32,128 ATTACKS=pgd20 bash scripts/bench-attacks.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup-env.sh
batches=${BATCHES:-32,128}
attacks=${ATTACKS:-pgd20,autoattack}
export_dir=$(mktemp -d)
trap 'rm -rf "$export_dir"' EXIT
cargo build --release --locked -p rfb-core --example attack_benchmark
echo "== ours"
target/release/examples/attack_benchmark --batches "$batches" --attacks "$attacks" --export "$export_dir"
echo "== PyTorch (torchattacks)"
"$RFB_PYTHON" tests/python/bench_attacks.py "$export_dir" --batches "$batches" --attacks "$attacks" --device cpu
