#!/usr/bin/env bash
# The cost of the TorchScript path: PGD-20 on the same ResNet-18 weights built from our registry
# and loaded as TorchScript (scripted and traced), same points, same machine, one run.
# Options: BATCH (default 32), REPEATS (default 3), DEVICE (cpu or cuda; default cpu).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup-env.sh
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
"$RFB_PYTHON" tests/python/byo_model.py resnet18 "$dir"
cargo run --locked -q -p rfb-core --example torchscript_cost -- --dir "$dir" \
    --batch "${BATCH:-32}" --repeats "${REPEATS:-3}" --device "${DEVICE:-cpu}"
