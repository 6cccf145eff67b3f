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

say "Python environment"
ENV=$(scripts/python-env.sh)
TORCH_LIB=$("$ENV/bin/python" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
scripts/fetch-trainer-deps.sh

say "format and lints"
cargo fmt --check
(cd trainer && cargo fmt --check)
cargo clippy --locked --all-targets -- -D warnings

say "trainer tests (libtorch, CPU)"
(cd trainer && PATH="$ENV/bin:$PATH" LIBTORCH_USE_PYTORCH=1 LD_LIBRARY_PATH="$TORCH_LIB" cargo test --release --locked)
# Those builds share trainer/target with experiment workspaces: drop the server's record of the harness
# it last built there, so that its next build recompiles the workspace's own (see Runner::build).
rm -f trainer/target/.autoresearch-harness

say "Docker engine and the offline sandbox test image (for the docker backend's tests)"
scripts/docker-engine.sh

say "Chromium (the report test renders report.html in it, headless)"
if ! [[ -x "${CHROMIUM:-/usr/bin/chromium}" ]]; then
    say "chromium missing: installing Debian's chromium"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq chromium >&2
fi

say "server tests (unit + integration through rmcp's client)"
cargo test --locked

say "Python tests: the MCP client; Claude Code itself (the pinned CLI, scripted model); the saturday supervisor"
cargo build --locked
AUTORESEARCH_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/autoresearch-mcp" "$ENV/bin/python" -m pytest -q tests/python

say "benchmark: cheap tool latency"
cargo bench --locked --bench cheap_tools

say "benchmark: audit list/summary/verify on a 100k-line log"
cargo bench --locked --bench audit_scale

say "benchmark: experiment overhead after a one-line train.rs edit (tests profile)"
cargo bench --locked --bench experiment_overhead

say "done"
