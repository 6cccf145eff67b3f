#!/usr/bin/env bash
# The whole GPU path in one command, on a machine with Python + torch 2.11, root and a GPU (no Rust, no
# network needed there): a SANDBOXED experiment with a trainer built elsewhere (local backend: own
# namespaces, a cgroup, only the job's paths and /dev/nvidia* nodes, Landlock, seccomp), printing the
# score, steps/s and the overhead split, then the throughput benchmark (the Rust trainer vs the PyTorch
# reference). Under 8 minutes on one GPU; on a machine without one, the same checks at the tests profile.
#
#   scripts/gpu-check.sh [BUNDLE]    BUNDLE: a folder from scripts/gpu-bundle.sh (default
#                                    target/gpu-bundle; built first when missing and cargo is here)
#   BUNDLE/check.sh                  the same, from a bundle copied to the GPU machine
#
# Extra arguments after `--` go to the bundle's run.sh (e.g. -- --budget 60 --repeat 2).
# Figures land in BUNDLE-work/last-experiment.json and last-bench.json.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
die() { echo "gpu-check: $*" >&2; exit 1; }

if [[ -x "$HERE/run.sh" && -x "$HERE/bin/train" ]]; then
    BUNDLE=$HERE # copied into a bundle as check.sh
    [[ "${1:-}" == "--" ]] && shift
else
    REPO=$(cd "$HERE/.." && pwd)
    BUNDLE=${1:-$REPO/target/gpu-bundle}
    [[ $# -gt 0 && "$1" != "--" ]] && shift
    [[ "${1:-}" == "--" ]] && shift
    if ! [[ -x "$BUNDLE/run.sh" && -x "$BUNDLE/bin/train" ]]; then
        command -v cargo >/dev/null || die "no bundle at $BUNDLE and no cargo here to build one: run scripts/gpu-bundle.sh on a machine with Rust and copy the folder"
        echo "gpu-check: no bundle at $BUNDLE: building it (scripts/gpu-bundle.sh)" >&2
        "$REPO/scripts/gpu-bundle.sh" "$BUNDLE" >&2
    fi
fi
[[ $(id -u) == 0 ]] || die "the sandboxed experiment needs root (namespaces, cgroups), as the server does: run it as root"
command -v nvidia-smi >/dev/null && nvidia-smi -L >&2 || echo "gpu-check: no NVIDIA GPU visible: checking on the CPU (tests profile)" >&2
exec "$BUNDLE/run.sh" --check "$@"
