#!/usr/bin/env bash
# The prepared GPU check: on a CUDA machine with prebuilt binaries (no cargo there), in one
# command of under 10 minutes, writes OUTDIR/report.md (tests/python/gpu_check.py says what it
# checks and how; docs/gpu.md how a session with a GPU runs it).
#
#   scripts/gpu-check.sh OUTDIR [--small] [--bin DIR] [--python PYTHON] [--work DIR]
#
#   --small    CPU mode: tiny sizes, the CPU as the device, the binaries of target/debug and the
#              project's .venv; run by the suite (evaluator/tests/gpu_check.rs) so that the
#              script cannot rot
#   --bin      the folder of `evaluator` and `trainer` (default: gpu-bin/ where it exists,
#              else target/debug)
#   --python   the Python with PyTorch for the reference side (default: /opt/torch/.venv's on
#              the device machine, else the project's .venv)
#   --work     scratch folder (default: OUTDIR/work)
#
# Python packages missing on the machine (torchattacks on the device machine) are installed
# from the wheels in gpu-bin/wheels/ where there are any, into a folder of OUTDIR's work dir.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[ $# -ge 1 ] || { sed -n '2,17p' "$0"; exit 2; }
out="$1"
shift
small= bin= python= work=
while [ $# -gt 0 ]; do
    case "$1" in
        --small) small=--small; shift ;;
        --bin) bin="$2"; shift 2 ;;
        --python) python="$2"; shift 2 ;;
        --work) work="$2"; shift 2 ;;
        *) echo "gpu-check: unknown argument $1" >&2; exit 2 ;;
    esac
done
if [ -z "$bin" ]; then
    if [ -z "$small" ] && [ -x "$root/gpu-bin/evaluator" ]; then bin="$root/gpu-bin"; else bin="$root/target/debug"; fi
fi
if [ -z "$python" ]; then
    if [ -z "$small" ] && [ -x /opt/torch/.venv/bin/python3 ]; then python=/opt/torch/.venv/bin/python3; else python="$root/.venv/bin/python"; fi
fi
work="${work:-$out/work}"
mkdir -p "$out" "$work"
if ls "$root"/gpu-bin/wheels/*.whl >/dev/null 2>&1 && ! "$python" -c 'import torchattacks' 2>/dev/null; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --target "$work/site" "$root"/gpu-bin/wheels/*.whl
    export PYTHONPATH="$work/site${PYTHONPATH:+:$PYTHONPATH}"
fi
[ -x "$bin/evaluator" ] && [ -x "$bin/trainer" ] || { echo "gpu-check: no evaluator and trainer in $bin" >&2; exit 2; }
export PYTHONUNBUFFERED=1
# TF32 off from the start, for our binaries and the PyTorch reference alike (the binaries also set
# it themselves, but a variable in the environment at launch is what NVIDIA documents).
if [ "${RFB_ALLOW_TF32:-}" != 1 ]; then export NVIDIA_TF32_OVERRIDE=0; fi
exec "$python" "$root/tests/python/gpu_check.py" --bin "$bin" --work "$work" --out "$out" $small
