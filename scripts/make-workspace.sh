#!/usr/bin/env bash
# Makes a fresh experiment workspace: a new git repo holding a copy of this repository's trainer,
# scripts and agent files, configured for PROFILE and DATASET, then `init`ed on branch autoresearch/demo.
#
#   scripts/make-workspace.sh DIR PROFILE DATASET
#
#   DIR      where to create it: must not exist or be empty, unless an earlier run of this script made
#            it (it holds a .autoresearch-demo marker), in which case it is deleted and recreated
#   PROFILE  tests | cpu | gpu
#   DATASET  an ODVG dataset folder (e.g. from `autoresearch-mcp synth --out DIR --size demo`)
#
# The workspace shares this repository's trainer/target (compiled dependencies build once) and its
# .mcp.json starts this repository's target/release/autoresearch-mcp, which must already be built
# (`cargo build --release`; set AUTORESEARCH_BIN to use another binary). Prints the workspace's
# absolute path on stdout; progress goes to stderr.
set -euo pipefail

MARKER=.autoresearch-demo
TAG=demo

die() {
  echo "make-workspace: $*" >&2
  exit 1
}

[ $# -eq 3 ] || die "usage: $0 DIR PROFILE DATASET"
DIR=$1 PROFILE=$2 DATASET=$3

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${AUTORESEARCH_BIN:-$REPO/target/release/autoresearch-mcp}

case "$PROFILE" in
  tests | cpu | gpu) ;;
  *) die "profile '$PROFILE': use tests, cpu or gpu" ;;
esac
[ -x "$BIN" ] || die "$BIN is not built; run 'cargo build --release' in $REPO first"
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
[ -d "$DATASET" ] || die "dataset folder '$DATASET' does not exist (make one with '$BIN synth --out $DATASET --size demo')"
DATASET=$(cd "$DATASET" && pwd)
for p in "$REPO" "$DATASET" "$BIN"; do
  case "$p" in *[\"\\]*) die "paths containing '\"' or '\\' are not supported: $p" ;; esac
done

# The target folder: empty, absent, or one this script made before.
if [ -e "$DIR" ] && [ -n "$(ls -A "$DIR" 2>/dev/null)" ]; then
  [ -f "$DIR/$MARKER" ] || die "$DIR exists and is not empty (and has no $MARKER marker); refusing to touch it"
  echo "make-workspace: replacing the earlier workspace in $DIR" >&2
  rm -rf -- "$DIR"
fi
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)

# Copy what the agent and the server need; build output stays in the repository.
items=()
for item in trainer scripts program.md scratchpad.md .mcp.json .claude .gitignore; do
  [ -e "$REPO/$item" ] && items+=("$item")
done
tar -C "$REPO" --exclude=./trainer/target --exclude=__pycache__ -cf - "${items[@]/#/./}" | tar -C "$DIR" -xf -

cat >"$DIR/autoresearch.toml" <<EOF
# Made by scripts/make-workspace.sh from $REPO
[experiment]
profile = "$PROFILE"

[data]
dataset = "$DATASET"

[sandbox]
trainer_target_dir = "$REPO/trainer/target"
EOF

# .mcp.json starts the repository's server binary, wherever the workspace is.
if [ -f "$DIR/.mcp.json" ]; then
  bin_sed=$(printf '%s' "$BIN" | sed 's/[&#]/\\&/g')
  sed -i -E "s#(\"command\"[[:space:]]*:[[:space:]]*)\"[^\"]*\"#\1\"$bin_sed\"#" "$DIR/.mcp.json"
else
  cat >"$DIR/.mcp.json" <<EOF
{
  "mcpServers": {
    "autoresearch": {
      "type": "stdio",
      "command": "$BIN",
      "args": ["serve"],
      "timeout": 3600000
    }
  }
}
EOF
fi

# The marker lets a later run replace this workspace; git ignores it.
if [ -s "$DIR/.gitignore" ] && [ -n "$(tail -c1 "$DIR/.gitignore")" ]; then echo >>"$DIR/.gitignore"; fi
echo "/$MARKER" >>"$DIR/.gitignore"
touch "$DIR/$MARKER"

git -C "$DIR" init -q
git -C "$DIR" config user.name "autoresearch-mcp"
git -C "$DIR" config user.email "autoresearch-mcp@localhost"
git -C "$DIR" config commit.gpgsign false
git -C "$DIR" add -A
git -C "$DIR" commit -q -m "experiment workspace"

"$BIN" -C "$DIR" init --tag "$TAG" >&2
echo "$DIR"
