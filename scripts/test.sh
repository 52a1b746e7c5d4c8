#!/usr/bin/env bash
# The whole test suite: sets up the Python environment (libtorch), installs Chromium for the
# report page's browser test (Debian's package, once, where apt-get may be used), builds every
# target with the main job's profile and features (so a build left by digits-benchmark.sh is
# reused), runs every test, then checks the formatting (cargo fmt) and the lints (cargo clippy).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Chromium, in the background while the build runs. Skipped quietly where it is installed, and
# where apt-get is missing or not allowed (the browser test then says it was skipped and why).
chromium_bin() {
    command -v chromium || command -v chromium-browser || true
}
install_chromium() {
    [ -n "$(chromium_bin)" ] && return 0
    command -v apt-get >/dev/null 2>&1 || { echo "no apt-get on this machine"; return 1; }
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo=(sudo -n); else echo "not root and no password-less sudo"; return 1; fi
    fi
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get -o DPkg::Lock::Timeout=600 -qq update \
        && "${sudo[@]}" apt-get -o DPkg::Lock::Timeout=600 -qq install -y --no-install-recommends chromium
}
mkdir -p target
chromium_log=target/chromium-install.log
if [ -z "$(chromium_bin)" ]; then
    echo "== installing Chromium (Debian's package) for the browser test, in the background (log: $chromium_log)"
fi
install_chromium >"$chromium_log" 2>&1 &
chromium_pid=$!

source scripts/build.sh
rfb_build --workspace --all-targets

if wait "$chromium_pid" && [ -n "$(chromium_bin)" ]; then
    # Installed: the browser test must run, not skip.
    export RFB_REQUIRE_BROWSER=1
else
    echo "== note: Chromium could not be installed ($(tail -n 1 "$chromium_log" 2>/dev/null)); the browser test of the report page will be skipped"
fi

echo "== test"
tests_status=0
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --locked --no-fail-fast --failure-output final || tests_status=$?
else
    cargo test --workspace --locked --no-fail-fast || tests_status=$?
fi

# The habits of the field: one formatting (rustfmt.toml) and no clippy warning (clippy.toml and
# the few allows written where they apply). After the tests, so that a formatting slip still
# shows every test's outcome; either failing fails the suite.
echo "== format and lints"
if command -v rustup >/dev/null 2>&1; then
    rustup component add rustfmt clippy >/dev/null 2>&1 || echo "   note: rustup could not add rustfmt and clippy"
fi
lint_status=0
cargo fmt --all --check || { lint_status=1; echo "== cargo fmt --check failed: run cargo fmt --all"; }
cargo clippy --workspace --all-targets --locked -- -D warnings || { lint_status=1; echo "== cargo clippy found warnings"; }
if [ "$tests_status" -ne 0 ]; then
    exit "$tests_status"
fi
exit "$lint_status"
