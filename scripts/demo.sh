#!/usr/bin/env bash
# The demo loop on the built-in synthetic dataset: installs what is missing (Python env with
# libtorch from the torch==2.11.0 wheel, the trainer's crates), builds the server, writes the
# synthetic data, makes a fresh experiment workspace under target/, and runs a short scripted loop
# (baseline, then two hypotheses kept or reverted) through the six MCP tools with the Python MCP
# client, then writes the report (chart, tables, HTML). CPU unless a GPU is visible.
# Environment: AUTORESEARCH_PROFILE=tests|cpu|gpu to override the profile.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf '\n== %s\n' "$*" >&2; }

say "Python environment (torch 2.11.0 = libtorch, MCP client, MiniLM tokenizer)"
ENV=$(scripts/python-env.sh)
say "building the server (release)"
cargo build --release --locked
scripts/fetch-trainer-deps.sh
BIN=$PWD/target/release/autoresearch-mcp

if [ -n "${AUTORESEARCH_PROFILE:-}" ]; then PROFILE=$AUTORESEARCH_PROFILE
elif [ -e /dev/nvidia0 ]; then PROFILE=gpu
else PROFILE=cpu; fi

say "synthetic grounded dataset (data/synthetic)"
"$BIN" synth --size demo --out data/synthetic

say "fresh experiment workspace (profile $PROFILE)"
rm -rf target/demo-workspace
WS=$("$BIN" -C . new-workspace target/demo-workspace --profile "$PROFILE" --dataset data/synthetic --tag demo)
echo "$WS" >&2

say "the loop through the MCP tools: baseline + 2 hypotheses (the first run also builds the trainer: a few minutes)"
"$ENV/bin/python" scripts/demo_client.py --server "$BIN" --workspace "$WS"

say "report ($BIN -C $WS report): chart, tables, diffs, report.html"
"$BIN" -C "$WS" report
say "audit log ($BIN -C $WS audit verify)"
"$BIN" -C "$WS" audit verify
