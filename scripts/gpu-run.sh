#!/usr/bin/env bash
# run.sh of the bundle that scripts/gpu-bundle.sh writes (this file is copied there). Runs on any Linux
# x86-64 machine with Python 3 and torch 2.11 (pip install torch==2.11.0); no Rust, no network.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)

usage() {
  cat <<'EOF'
usage: run.sh [--bench|--check] [--sandboxed] [--profile gpu|cpu|tests] [--device auto|cpu|cuda] [--dataset DIR]
              [--image-tower F] [--text-tower DIR] [--bf16|--fp32] [--budget S] [--work DIR]
              [--repeat N] [--peak-tflops T]

Default: one whole experiment (prepare -> train -> embed images -> embed texts -> score) with the
bundled trainer, UNSANDBOXED (plain child processes), printing mean rank vs random, R@1/5/10, the steps/s
and peak memory train reported, and the phase times.
--sandboxed: the experiment's phases run in the local sandbox (own network/PID/mount/IPC/UTS/cgroup
namespaces, a cgroup, Landlock, seccomp; only the job's paths and the GPU's /dev/nvidia* nodes), as the
server runs them. Needs root and cgroups.
--check: the whole GPU path in one go (what scripts/gpu-check.sh runs): a sandboxed experiment (budget
120 s on a GPU; on a CPU the tests profile, 20 s), then --bench. Under 8 minutes on one GPU.
--bench: the throughput benchmark instead: the Rust trainer and the PyTorch port of the reference on the
same prepared data, device, profile, batch, steps and precision; prints steps/s of each, their ratio,
peak memory and MFU (needs transformers, timm and safetensors besides torch).

--profile   gpu (full size: ViT-S/16 at 224 px, DistilBERT-size text, batch 48) when torch sees CUDA, else
            cpu for an experiment and tests for --bench (so it finishes in minutes on a CPU)
--device    auto (default: cuda when torch sees CUDA, else cpu), cpu or cuda
--dataset   an ODVG folder; default: the synthetic dataset, regenerated here by the bundled generator and
            checked against the hash recorded when the bundle was built (demo size; tests size for --profile tests)
--image-tower, --text-tower   pretrained towers (timm ViT model.safetensors or folder; Hugging Face folder)
--bf16/--fp32  must match how train.rs was built (BF16_AUTOCAST, in manifest.json): train.rs autocasts to
            bf16 on CUDA only; these flags only guard against comparing different precisions
--budget    training budget in seconds (experiment; default the profile's: tests 60, cpu/gpu 300)
--work      where data, logs, checkpoints go (default: <this folder>-work, beside it)
--repeat    benchmark runs of each side, alternating (default 1)
--peak-tflops  the device's peak for the MFU (default: spec sheet of a known GPU; none on CPU)
Environment: PYTHON (default python3) is the Python whose torch is used.
EOF
}

die() { echo "run.sh: $*" >&2; exit 1; }
MODE=experiment SANDBOXED=false PROFILE="" DEVICE=auto DATASET="" IMAGE_TOWER="" TEXT_TOWER="" PRECISION="" BUDGET=""
# Outside the bundle, so that the bundle stays small enough to copy (the demo data alone is 71 MB).
WORK="$HERE-work" REPEAT=1 PEAK=""
while [ $# -gt 0 ]; do
  case "$1" in
    --bench) MODE=bench ;;
    --check) MODE=check ;;
    --sandboxed) SANDBOXED=true ;;
    --profile) PROFILE=${2:?--profile needs a value}; shift ;;
    --device) DEVICE=${2:?}; shift ;;
    --dataset) DATASET=$(cd "${2:?}" && pwd) || die "--dataset $2 does not exist"; shift ;;
    --image-tower) IMAGE_TOWER=$(realpath "${2:?}") || die "--image-tower $2 does not exist"; shift ;;
    --text-tower) TEXT_TOWER=$(realpath "${2:?}") || die "--text-tower $2 does not exist"; shift ;;
    --bf16) PRECISION=bf16 ;;
    --fp32) PRECISION=fp32 ;;
    --budget) BUDGET=${2:?}; shift ;;
    --work) WORK=${2:?}; shift ;;
    --repeat) REPEAT=${2:?}; shift ;;
    --peak-tflops) PEAK=${2:?}; shift ;;
    --steps) die "--steps: the step count is train.rs's MAX_STEPS (the agent's to decide); a run is cut by --budget (seconds) instead" ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument $1" ;;
  esac
  shift
done
case "$DEVICE" in auto|cpu|cuda) ;; *) die "--device $DEVICE: use auto, cpu or cuda" ;; esac

# torch: its lib/ is the libtorch the binaries load.
PY=${PYTHON:-python3}
command -v "$PY" >/dev/null || die "no $PY on PATH: install Python 3 with torch 2.11 (pip install torch==2.11.0), or set PYTHON"
INFO=$("$PY" -c 'import os, torch; print(os.path.dirname(torch.__file__)); print(torch.__version__); print(int(torch.cuda.is_available())); print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")' 2>&1) \
  || die "$PY cannot import torch: $(echo "$INFO" | tail -n 1). Install it: $PY -m pip install torch==2.11.0 (or set PYTHON)"
TORCH_DIR=$(echo "$INFO" | sed -n 1p) TORCH_VERSION=$(echo "$INFO" | sed -n 2p)
CUDA=$(echo "$INFO" | sed -n 3p) GPU_NAME=$(echo "$INFO" | sed -n 4p)
case "$TORCH_VERSION" in
  2.11.*) ;;
  *) die "torch $TORCH_VERSION at $TORCH_DIR: the trainer is built against libtorch 2.11 (tch 0.24) and loads no other version. Install it: $PY -m pip install torch==2.11.0 (or set PYTHON to a Python that has it)" ;;
esac
[ -f "$TORCH_DIR/lib/libtorch_cuda.so" ] || die "$TORCH_DIR/lib has no libtorch_cuda.so (a CPU-only torch build?): the binaries link it; install the default wheel: $PY -m pip install torch==2.11.0"
export LD_LIBRARY_PATH="$TORCH_DIR/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export TORCH_CPP_LOG_LEVEL=ERROR

if [ "$DEVICE" = auto ]; then
  if [ "$CUDA" = 1 ]; then DEVICE=cuda; else DEVICE=cpu; fi
fi
if [ "$DEVICE" = cuda ] && [ "$CUDA" != 1 ]; then
  if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
    die "--device cuda: nvidia-smi sees a GPU but torch $TORCH_VERSION does not (driver too old for its CUDA 13 runtime? check: $PY -c 'import torch; torch.cuda.init()')"
  fi
  die "--device cuda: no CUDA device (nvidia-smi finds none, torch.cuda.is_available() is false). Use --device cpu"
fi
if [ -z "$PROFILE" ]; then
  if [ "$DEVICE" = cuda ]; then PROFILE=gpu; elif [ "$MODE" = experiment ]; then PROFILE=cpu; else PROFILE=tests; fi
fi
if [ "$MODE" = check ]; then
  SANDBOXED=true
  if [ -z "$BUDGET" ]; then
    if [ "$DEVICE" = cuda ]; then BUDGET=120; else BUDGET=20; fi
  fi
fi
case "$PROFILE" in tests|cpu|gpu) ;; *) die "--profile $PROFILE: use gpu, cpu or tests" ;; esac

# manifest KEY[.KEY]: a value of manifest.json (booleans as true/false).
manifest() {
  "$PY" -c 'import json, sys
v = json.load(open(sys.argv[1]))
for k in sys.argv[2].split("."): v = v[k]
print(json.dumps(v) if isinstance(v, bool) else v)' "$HERE/manifest.json" "$1"
}
BUILT_BF16=$(manifest bf16_autocast)
# The precision train.rs runs at here: bf16 autocast only where it was built with it and on CUDA.
if [ "$DEVICE" = cuda ] && [ "$BUILT_BF16" = true ]; then RUN_PRECISION=bf16; else RUN_PRECISION=fp32; fi
if [ "$PRECISION" = bf16 ] && [ "$DEVICE" = cpu ]; then
  die "--bf16: train.rs autocasts to bf16 on CUDA only; on the CPU both sides run fp32 (drop --bf16)"
fi
if [ -n "$PRECISION" ] && [ "$PRECISION" != "$RUN_PRECISION" ]; then
  die "--$PRECISION: the bundled train.rs runs $RUN_PRECISION on $DEVICE (BF16_AUTOCAST = $BUILT_BF16 in train.rs; bf16 is CUDA-only). Rebuild the bundle with BF16_AUTOCAST changed to compare another precision"
fi

mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
if [ -z "$DATASET" ]; then
  SIZE=demo
  [ "$PROFILE" = tests ] && SIZE=tests
  DATASET="$WORK/data/synthetic-$SIZE"
  "$HERE/bin/autoresearch-mcp" -C "$HERE" synth --size "$SIZE" --out "$DATASET"
  GOT=$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["hash"])' "$DATASET/synth.json")
  WANT=$(manifest "synth_hash.$SIZE")
  [ "$GOT" = "$WANT" ] || die "the regenerated $SIZE dataset has hash $GOT, the bundle recorded $WANT"
  echo "synthetic $SIZE dataset: $DATASET (hash ${GOT:0:12}, identical to the build machine's)" >&2
fi
# The data's token ids must be the text tower's: a pretrained tower brings its own tokenizer.json.
TOKENIZER="$HERE/tokenizer/tokenizer.json"
if [ -n "$TEXT_TOWER" ]; then
  TOKENIZER="$TEXT_TOWER/tokenizer.json"
  [ -f "$TOKENIZER" ] || die "--text-tower $TEXT_TOWER has no tokenizer.json (the prepared data must use the tower's vocabulary)"
fi

echo "== $MODE | profile $PROFILE | device $DEVICE ($GPU_NAME) | $RUN_PRECISION | torch $TORCH_VERSION at $TORCH_DIR | bundle $(manifest commit | cut -c1-10)" >&2
TOWERS=()
[ -n "$IMAGE_TOWER" ] && TOWERS+=(--image-tower "$IMAGE_TOWER")
[ -n "$TEXT_TOWER" ] && TOWERS+=(--text-tower "$TEXT_TOWER")

bench() {
  "$PY" -c 'import transformers, timm, safetensors' 2>/dev/null \
    || die "the PyTorch port needs transformers, timm and safetensors: $PY -m pip install 'transformers>=4.50,<6' timm==1.0.31 safetensors"
  local extra=()
  [ "$RUN_PRECISION" = bf16 ] && extra+=(--bf16)
  [ -n "$PEAK" ] && extra+=(--peak-tflops "$PEAK")
  "$PY" "$HERE/benches/throughput.py" --bin "$HERE/bin" --reference "$HERE/reference" --dataset "$DATASET" \
    --tokenizer "$TOKENIZER" --torch-lib "$TORCH_DIR/lib" --profile "$PROFILE" --device "$DEVICE" --work "$WORK" \
    --repeat "$REPEAT" --json "$WORK/last-bench.json" "${extra[@]}" "${TOWERS[@]}"
}

experiment() {
  local command=unsandboxed-experiment
  [ "$SANDBOXED" = true ] && command=sandboxed-experiment
  local args=(--trainer-bin "$HERE/bin" --dataset "$DATASET" --profile "$PROFILE" --tokenizer "$TOKENIZER"
              --device "$DEVICE" --torch-lib "$TORCH_DIR/lib" --work "$WORK" --json "$WORK/last-experiment.json")
  [ -n "$BUDGET" ] && args+=(--budget "$BUDGET")
  "$HERE/bin/autoresearch-mcp" -C "$HERE" "$command" "${args[@]}" "${TOWERS[@]}"
}

case "$MODE" in
  bench) bench ;;
  experiment) experiment ;;
  check)
    START=$SECONDS
    echo "== check 1/2: a sandboxed experiment (budget $BUDGET s)" >&2
    experiment
    echo "== check 2/2: throughput, the Rust trainer vs the PyTorch reference" >&2
    bench
    echo "== check done in $((SECONDS - START)) s: sandboxed experiment $WORK/last-experiment.json, throughput $WORK/last-bench.json" >&2
    ;;
esac
