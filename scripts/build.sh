#!/usr/bin/env bash
# The build both commands share. Source it, then call `rfb_build [cargo build arguments]`: it
# sets up the Python environment (libtorch, scripts/setup-env.sh), exports what the build needs
# and runs `cargo build --locked` with the arguments.
#
# On a fresh clone the environment's first install (about 4.7 GB to download) and the compilation
# of every crate that does not need libtorch run at the same time: a first `cargo build
# --keep-going` compiles all but torch-sys and what depends on it while the packages install,
# then the second builds the rest against the installed libtorch (when the install ends first,
# the first build is stopped and the second takes over at once). With the environment in place
# it is one plain `cargo build`.
#
# `digits-benchmark.sh` builds the binaries and `test.sh` every target; both use the same
# profile and features, so the tests reuse everything the main job compiled.

rfb_build() {
    local root
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    if bash "$root/scripts/setup-env.sh" --check; then
        source "$root/scripts/setup-env.sh" || return 1
    else
        mkdir -p "$root/target"
        local log="$root/target/setup-env.log"
        local started=$SECONDS
        echo "== Python environment (libtorch), in the background (log: $log); meanwhile the crates that do not need libtorch"
        bash "$root/scripts/setup-env.sh" >"$log" 2>&1 &
        local env_pid=$!
        # torch-sys cannot build before libtorch is there: point it nowhere (and not at the
        # half-installed Python environment: torch-sys asks Python whenever
        # LIBTORCH_USE_PYTORCH is set at all, even empty) so that it fails at once, and let
        # --keep-going build everything else. Errors here are expected; the second build below
        # reports any real one. The early build runs in its own process group so that, when
        # the environment is ready first, it stops (with its compilers) and the full build
        # starts at once: torch-sys's C++ wrapper, the longest unit, then compiles beside the
        # other crates instead of after them.
        (cd "$root" && exec setsid -w env -u LIBTORCH_USE_PYTORCH LIBTORCH=/nonexistent-until-the-environment-is-ready \
            cargo build --locked --keep-going -q "$@" >"$root/target/early-build.log" 2>&1) &
        local early_pid=$!
        while kill -0 "$env_pid" 2>/dev/null && kill -0 "$early_pid" 2>/dev/null; do
            sleep 1
        done
        if kill -0 "$early_pid" 2>/dev/null; then
            echo "   the environment was ready first: the early build stops and the full build takes over"
            kill -TERM -- "-$early_pid" 2>/dev/null || true
            wait "$early_pid" 2>/dev/null || true
        else
            wait "$early_pid" 2>/dev/null || true
            echo "   crates without libtorch compiled after $((SECONDS - started)) s; waiting for the environment"
        fi
        if ! wait "$env_pid"; then
            cat "$log" >&2
            return 1
        fi
        cat "$log"
        echo "   environment ready after $((SECONDS - started)) s"
        source "$root/scripts/setup-env.sh" || return 1
    fi
    (cd "$root" && cargo build --locked "$@")
}
