#!/usr/bin/env bash
# Runs the Claude Code CLI this project was tested with (2.1.330, bundled in the claude-agent-sdk wheel
# that scripts/python-env.sh installs; $AUTORESEARCH_CLAUDE overrides it), with self-update, telemetry
# and non-essential traffic off. Arguments pass through, e.g. in a workspace:
#   scripts/claude.sh              # the interactive profile (.claude/settings.json, .mcp.json)
#   scripts/claude.sh mcp list     # autoresearch: ... - ✔ Connected (once the folder is trusted)
set -euo pipefail
if [ -z "${AUTORESEARCH_CLAUDE:-}" ]; then
  ENV=$("$(dirname "$0")/python-env.sh")
  AUTORESEARCH_CLAUDE=$(echo "$ENV"/lib/python3*/site-packages/claude_agent_sdk/_bundled/claude)
fi
export DISABLE_AUTOUPDATER=1 DISABLE_TELEMETRY=1 CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1
exec "$AUTORESEARCH_CLAUDE" "$@"
