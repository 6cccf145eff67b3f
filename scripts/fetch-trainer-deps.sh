#!/usr/bin/env bash
# Pre-fetches the trainer's crates into CARGO_HOME: the sandboxed build runs with no network
# (`cargo build --offline --locked`), so every dependency must already be on disk.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fetch --locked --manifest-path trainer/Cargo.toml >&2
