#!/usr/bin/env bash
# The whole test suite: formatting and lints, the server's unit and integration tests (real MCP
# client, real git, real sandbox, real libtorch trainer on CPU), the trainer's own tests, the Python
# MCP client tests, the tests through the real Claude Code CLI against a scripted model API (offline),
# and the benchmarks (cheap-tool latency, audit on a 100k-line log, experiment overhead: they print
# figures and assert nothing). Installs Debian's chromium if missing (the report test renders in it).
#
#   scripts/test.sh           the whole suite (what CI runs through .ci/run)
#   scripts/test.sh --quick   the edit loop: formatting, lints, unit tests and the integration tests
#                             that run no experiment (a few minutes once built; no Docker, no Python)
set -euo pipefail
cd "$(dirname "$0")/.."
START=$SECONDS
LAST=$SECONDS
# Each section says how long the previous one took, so a slow CI run shows where its time went.
say() {
    printf '\n== [%4ds, +%ds] %s\n' "$((SECONDS - START))" "$((SECONDS - LAST))" "$*" >&2
    LAST=$SECONDS
}

if [[ "${1:-}" == "--quick" ]]; then
    say "quick: format and lints"
    cargo fmt --check
    (cd trainer && cargo fmt --check)
    cargo clippy --locked --all-targets -- -D warnings
    say "quick: unit tests"
    cargo test --locked --lib
    say "quick: integration tests that run no experiment"
    cargo test --locked --test it -- --skip doctor_runs_a_real_probe_job \
        tools:: refusals:: audit_log:: transport:: faults::a_ faults::commit faults::run_experiment_without \
        faults::the_state faults::commands_on faults::new_workspace faults::an_immutable standings::
    say "quick: done (the full suite: scripts/test.sh)"
    exit 0
elif [[ $# -gt 0 ]]; then
    echo "usage: scripts/test.sh [--quick]" >&2
    exit 2
fi

# Set-up that waits on the network and the disk runs in the background while the CPU compiles: the
# Python environment (~4.6 GB once) and then the trainer's build (it links that environment's
# libtorch), and Debian's packages (the Docker engine, Chromium, a single-node Slurm). Each writes a log under
# target/test-logs/, printed if it fails.
LOGS=target/test-logs
mkdir -p "$LOGS"
# ENV: the Python environment (installed on first use); TORCH_LIB: its torch's lib/, the trainer's libtorch.
python_env() {
    ENV=$(scripts/python-env.sh)
    TORCH_LIB=$("$ENV/bin/python" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
}
trainer_build() {
    python_env
    scripts/fetch-trainer-deps.sh
    cd trainer && PATH="$ENV/bin:$PATH" LIBTORCH_USE_PYTORCH=1 LD_LIBRARY_PATH="$TORCH_LIB" \
        cargo test --release --locked --no-run
}
system_packages() {
    scripts/docker-engine.sh
    if ! [[ -x "${CHROMIUM:-/usr/bin/chromium}" ]]; then
        echo "chromium missing: installing Debian's chromium (the report test renders report.html in it)"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq chromium
    fi
    # After the other installs (one apt at a time). Not fatal: tests/it/slurm.rs says SKIPPED then.
    scripts/slurm.sh || echo "Slurm could not be started here: the slurm backend's tests will be SKIPPED"
}
trainer_build >"$LOGS/trainer-build.log" 2>&1 &
TRAINER_BUILD=$!
system_packages >"$LOGS/system-packages.log" 2>&1 &
SYSTEM_PACKAGES=$!
# A failure in front lets them finish rather than cut an install short.
trap 'wait' EXIT
# Waits for a background step; on failure shows its log and stops the suite.
finish() {
    if ! wait "$2"; then
        echo "FAILED: $1; its log ($LOGS/$1.log):" >&2
        cat "$LOGS/$1.log" >&2
        exit 1
    fi
    say "$1 done (log: $LOGS/$1.log)"
}

say "format and lints (Python environment, trainer build and system packages in the background)"
cargo fmt --check
(cd trainer && cargo fmt --check)
cargo clippy --locked --all-targets -- -D warnings

say "building the server's tests, binary and benchmarks"
cargo test --locked --no-run
cargo build --locked
cargo bench --locked --no-run

say "waiting for the trainer build"
finish trainer-build "$TRAINER_BUILD"
python_env

say "trainer tests (libtorch, CPU)"
(cd trainer && PATH="$ENV/bin:$PATH" LIBTORCH_USE_PYTORCH=1 LD_LIBRARY_PATH="$TORCH_LIB" cargo test --release --locked)
# Those builds share trainer/target with experiment workspaces: drop the server's record of the harness
# it last built there, so that its next build recompiles the workspace's own (see Runner::build).
rm -f trainer/target/.autoresearch-harness

say "waiting for the Docker engine and Chromium"
finish system-packages "$SYSTEM_PACKAGES"

say "server tests (unit + integration through rmcp's client)"
cargo test --locked -- --test-threads=4

say "Python tests: the MCP client; Claude Code itself (the pinned CLI, scripted model); the saturday supervisor"
AUTORESEARCH_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/autoresearch-mcp" "$ENV/bin/python" -m pytest -q tests/python

say "benchmark: cheap tool latency"
cargo bench --locked --bench cheap_tools

say "benchmark: audit list/summary/verify on a 100k-line log"
cargo bench --locked --bench audit_scale

say "benchmark: experiment overhead after a one-line train.rs edit (tests profile)"
cargo bench --locked --bench experiment_overhead

say "done"
