#!/usr/bin/env bash
# The whole test suite: sets up the Python environment (libtorch), builds, runs every test.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup-env.sh

echo "== build"
cargo build --workspace --all-targets --locked
echo "== test"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --locked --no-fail-fast --failure-output final
else
    cargo test --workspace --locked --no-fail-fast
fi
