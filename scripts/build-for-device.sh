#!/usr/bin/env bash
# Builds the binaries (evaluator, trainer) against the libtorch of an already-installed PyTorch
# and puts stripped copies in an output folder, small enough to travel to another machine.
#
#   scripts/build-for-device.sh --python PYTHON | --libtorch DIR
#       [--runtime-libtorch DIR]...   where libtorch lies on the machine that will run them
#       [--target-dir DIR]            cargo's target folder (default target/device-<version>)
#       [--out DIR]                   where the stripped binaries go (default gpu-bin)
#       [--reuse-target DIR]          seed a fresh target folder from DIR (e.g. target/debug):
#                                     the crates that do not link libtorch are not compiled again
#
# --python names the Python whose `torch` package provides libtorch (torch-sys asks it for the
# version, ABI and directories: LIBTORCH_USE_PYTORCH); --libtorch names an unpacked libtorch
# (LIBTORCH). tch 0.26 is written against PyTorch 2.13's C++ API; other versions are accepted
# (LIBTORCH_BYPASS_VERSION_CHECK) where the C++ functions tch's wrapper calls still exist
# there: docs/gpu.md lists the versions built and run. The binaries carry an rpath to every
# --runtime-libtorch folder first and to the build's own libtorch last, so they run there and
# here without LD_LIBRARY_PATH; where the libtorch has CUDA they load libtorch_cuda.so
# (build-support).
#
# The device machine's PyTorch: --runtime-libtorch /opt/torch/.venv/lib/python3.12/site-packages/torch/lib
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python= libtorch= target= out="$root/gpu-bin" reuse=
runtime=()
while [ $# -gt 0 ]; do
    case "$1" in
        --python) python="$2"; shift 2 ;;
        --libtorch) libtorch="$2"; shift 2 ;;
        --runtime-libtorch) runtime+=("$2"); shift 2 ;;
        --target-dir) target="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        --reuse-target) reuse="$2"; shift 2 ;;
        -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
        *) echo "build-for-device: unknown argument $1" >&2; exit 2 ;;
    esac
done
if { [ -n "$python" ] && [ -n "$libtorch" ]; } || { [ -z "$python" ] && [ -z "$libtorch" ]; }; then
    echo "build-for-device: name exactly one of --python or --libtorch" >&2
    exit 2
fi

unset LIBTORCH LIBTORCH_LIB LIBTORCH_INCLUDE LIBTORCH_USE_PYTORCH VIRTUAL_ENV
if [ -n "$python" ]; then
    version="$("$python" -c 'import torch; print(torch.__version__)')"
    # torch-sys runs `python` from PATH when VIRTUAL_ENV is set: a folder whose `python` is
    # the one named, first on PATH.
    shim="$root/target/python-shim"
    mkdir -p "$shim"
    python="$(cd "$(dirname "$(command -v "$python")")" && pwd)/$(basename "$python")"
    printf '#!/bin/sh\nexec "%s" "$@"\n' "$python" >"$shim/python"
    chmod +x "$shim/python"
    export PATH="$shim:$PATH" VIRTUAL_ENV="$shim" LIBTORCH_USE_PYTORCH=1
else
    version="$(cat "$libtorch/build-version" 2>/dev/null || echo unknown)"
    export LIBTORCH="$libtorch"
fi
export LIBTORCH_BYPASS_VERSION_CHECK=1
runtime_dirs="$(IFS=:; echo "${runtime[*]:-}")"
export RFB_LIBTORCH_RUNTIME_DIRS="$runtime_dirs"
target="${target:-$root/target/device-${version%%+*}}"
if [ -n "$reuse" ] && [ ! -d "$target/debug" ]; then
    mkdir -p "$target"
    echo "== seeding $target/debug from $reuse"
    cp -a "$reuse" "$target/debug"
    rm -rf "$target/debug/incremental"
fi
lock_version="$(grep -A1 '^name = "torch-sys"' "$root/Cargo.lock" | sed -n 's/^version = "\(.*\)"/\1/p')"
workspace="$root"
patch=()
if [ "${version%%+*}" != "2.13.0" ]; then
    # tch's C++ wrapper is generated for PyTorch 2.13: a copy whose wrappers of operators this
    # libtorch lacks throw instead (torch-sys-for-libtorch.py), used through a [patch] of a
    # copy of the workspace (so that this checkout's Cargo.lock stays as it is).
    if [ -n "$python" ]; then
        include="$("$python" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "include"))')"
    else
        include="$libtorch/include"
    fi
    patched="$target/torch-sys-$lock_version-for-${version%%+*}"
    echo "== torch-sys $lock_version for this libtorch (compiling its wrapper once to find what differs)"
    python3 "$root/scripts/torch-sys-for-libtorch.py" \
        "${CARGO_HOME:-$HOME/.cargo}/registry/src/"*"/torch-sys-$lock_version" "$patched" \
        "$include" "$include/torch/csrc/api/include"
    workspace="$target/workspace"
    mkdir -p "$workspace"
    (cd "$root" && git ls-files -co --exclude-standard -z | grep -zv '^results/' | xargs -0 tar -cf - 2>/dev/null) | tar -xf - -C "$workspace"
    patch=(--config "patch.crates-io.torch-sys.path=\"$patched\"")
fi
echo "== building against PyTorch $version (runtime libtorch: ${runtime_dirs:-none beyond the build libtorch})"
started=$SECONDS
(cd "$workspace" && CARGO_TARGET_DIR="$target" cargo build "${patch[@]}" -p rfb-evaluator -p rfb-trainer --bins)
echo "   built in $((SECONDS - started)) s"
mkdir -p "$out"
for bin in evaluator trainer; do
    strip -o "$out/$bin" "$target/debug/$bin"
done
echo "$version" >"$out/PYTORCH_VERSION"
# torchattacks (pure Python) for gpu-check.sh's reference side, where the machine lacks it.
mkdir -p "$out/wheels"
python3 -m pip download -q --no-deps --only-binary=:all: -d "$out/wheels" torchattacks==3.5.1 \
    || echo "build-for-device: could not download torchattacks; gpu-check.sh then times PyTorch's plain PGD loop" >&2
ls -l "$out"
du -ch "$out"/evaluator "$out"/trainer | tail -1
