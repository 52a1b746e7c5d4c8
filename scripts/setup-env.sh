#!/usr/bin/env bash
# Makes (or checks) the project's Python environment in .venv, which provides libtorch for the
# Rust build, and exports what the build needs. Idempotent: when python/requirements.txt has not
# changed since the last install it only checks and returns (well under a second).
#
# Use it sourced (`source scripts/setup-env.sh`) to get the environment in your shell, or run it
# (`bash scripts/setup-env.sh`) just to install; `bash scripts/setup-env.sh --check` only says
# (exit status) whether the environment is ready.
RFB_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RFB_VENV="$RFB_ROOT/.venv"
requirements="$RFB_ROOT/python/requirements.txt"
stamp="$RFB_VENV/.requirements.sha256"

if [ "${1:-}" = "--check" ]; then
    rfb_ready=1
    [ -x "$RFB_VENV/bin/python" ] && "$RFB_VENV/bin/python" -c 'import sys' 2>/dev/null \
        && [ "$(cat "$stamp" 2>/dev/null)" = "$(sha256sum "$requirements" | cut -d' ' -f1)" ] && rfb_ready=0
    return $rfb_ready 2>/dev/null || exit $rfb_ready
fi

rfb_install() (
set -euo pipefail
fail() {
    echo "setup-env: $*" >&2
    exit 1
}

python_bin="${RFB_SYSTEM_PYTHON:-python3}"
command -v "$python_bin" >/dev/null || fail "no $python_bin on PATH: install Python 3.9 or newer"
"$python_bin" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 9) else 1)' \
    || fail "$python_bin is older than 3.9"

if [ ! -x "$RFB_VENV/bin/python" ] || ! "$RFB_VENV/bin/python" -c 'import sys' 2>/dev/null; then
    echo "setup-env: creating the Python environment in $RFB_VENV"
    rm -rf "$RFB_VENV"
    "$python_bin" -m venv "$RFB_VENV" || fail "could not create a virtual environment (is the venv module installed?)"
fi

wanted="$(sha256sum "$requirements" | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
    echo "setup-env: installing python/requirements.txt (torch 2.13.0 is ~4.7 GB the first time)"
    log="$RFB_VENV/pip-install.log"
    : >"$log"
    # uv (from PyPI, into the environment) downloads in parallel and unpacks in Rust: the
    # 4.7 GB install takes well under a minute where pip takes about seven, and leaves the CPU
    # to the build running beside it. pip installs the same pinned list where uv cannot be had.
    installed=
    if "$RFB_VENV/bin/python" -m pip install --disable-pip-version-check -q uv >>"$log" 2>&1; then
        # uv reads its own variables: carry over pip's certificate and index settings.
        if (export SSL_CERT_FILE="${SSL_CERT_FILE:-${PIP_CERT:-}}" UV_INDEX_URL="${UV_INDEX_URL:-${PIP_INDEX_URL:-}}" \
            UV_EXTRA_INDEX_URL="${UV_EXTRA_INDEX_URL:-${PIP_EXTRA_INDEX_URL:-}}"
            [ -n "$SSL_CERT_FILE" ] || unset SSL_CERT_FILE
            [ -n "$UV_INDEX_URL" ] || unset UV_INDEX_URL
            [ -n "$UV_EXTRA_INDEX_URL" ] || unset UV_EXTRA_INDEX_URL
            "$RFB_VENV/bin/uv" pip install --python "$RFB_VENV/bin/python" --no-progress -q -r "$requirements") >>"$log" 2>&1; then
            installed=uv
        else
            echo "setup-env: uv could not install the list; trying pip (log: $log)"
        fi
    fi
    if [ -z "$installed" ] && ! "$RFB_VENV/bin/python" -m pip install --disable-pip-version-check --no-compile -q -r "$requirements" >>"$log" 2>&1; then
        tail -n 20 "$log" >&2
        if grep -qiE "connection|resolve|network|timed out|proxy|No matching distribution" "$log"; then
            fail "could not reach the Python package registry to install torch==2.13.0 and the test tools; check the network or a pip mirror (PIP_INDEX_URL), then run again. Full log: $log"
        fi
        fail "pip could not install python/requirements.txt; full log: $log"
    fi
    echo "$wanted" >"$stamp"
fi
)
# Installing runs in a subshell so that sourcing this file leaves the caller's shell options alone.
rfb_install || { return 1 2>/dev/null || exit 1; }

# The build finds libtorch through the venv's torch package; the binaries carry an rpath to it.
export VIRTUAL_ENV="$RFB_VENV"
case ":$PATH:" in
    *":$RFB_VENV/bin:"*) ;;
    *) export PATH="$RFB_VENV/bin:$PATH" ;;
esac
export LIBTORCH_USE_PYTORCH=1
unset LIBTORCH LIBTORCH_LIB LIBTORCH_INCLUDE
export RFB_PYTHON="$RFB_VENV/bin/python"
