#!/usr/bin/env python3
"""An example MCP client for autoresearch-mcp: a short scripted loop, as an agent would run it.

It runs the unmodified baseline, then two hypotheses from the reference's own run: the temperature
clamp fix (MAX_TEMPERATURE 2.0 -> 100, the reference's biggest win) and a learning rate far too high,
keeping what beats the best kept result and reverting what does not, and writing the scratchpad.
It talks to the server exactly as an agent would, over stdio with the Python MCP SDK (mcp 2.x,
as installed by scripts/python-env.sh):

    ENV=$(scripts/python-env.sh)
    target/release/autoresearch-mcp synth --size tests --out /tmp/demo-data
    target/release/autoresearch-mcp new-workspace /tmp/demo-ws --profile tests --dataset /tmp/demo-data
    $ENV/bin/python scripts/demo_client.py --server target/release/autoresearch-mcp --workspace /tmp/demo-ws

`--baseline-only` stops after the baseline. Exit status: 0 when the baseline run succeeded and beats
random retrieval (and every later run completed), 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import get_default_environment, stdio_client

# A run builds the trainer (the first time: minutes), trains within its budget, then embeds and
# scores; on CPU that can take ~10 minutes. The server reports progress every 10 s meanwhile.
RUN_TIMEOUT_S = 60 * 60

# The SDK starts servers with a minimal environment (HOME, PATH, ...); also pass on the variables
# that locate the project's Python environment (see scripts/python-env.sh). The server logs to
# stderr; warnings only unless RUST_LOG says otherwise.
PASSED_ENV = ("AUTORESEARCH_PYENV", "XDG_CACHE_HOME", "RUST_LOG")


def text_of(result) -> str:
    """The text blocks of a tool result, joined."""
    return "\n".join(block.text for block in result.content if block.type == "text")


def print_runs_table(runs: list[dict]) -> None:
    """One line per run; recalls in percent; times are server-measured (train phase, and all phases)."""
    header = ("run", "status", "mean rank", "median", "i2t R@1/5/10", "t2i R@1/5/10", "train s", "total s", "description")
    rows = [header]
    for run in runs:
        m = run.get("metrics")
        if m:
            i2t = "/".join(f"{m[f'i2t_r{k}']:.1f}" for k in (1, 5, 10))
            t2i = "/".join(f"{m[f't2i_r{k}']:.1f}" for k in (1, 5, 10))
            ranks = (f"{m['mean_rank']:.2f}", f"{m['median_rank']:.1f}", i2t, t2i)
        else:
            ranks = ("-", "-", "-", "-")
        train = run["phases"].get("train")
        train_s = "-" if train is None else f"{train:.0f}"
        rows.append((run["id"], run["status"], *ranks, train_s, f"{run['duration_s']:.0f}", run["description"]))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


# The scripted hypotheses: (description, old text, new text) edits of train.rs.
HYPOTHESES = [
    ("temperature clamp 2.0 -> 100 (the reference's fix)",
     "const MAX_TEMPERATURE: f64 = 2.0;", "const MAX_TEMPERATURE: f64 = 100.0;"),
    ("learning rate 3e-4 -> 3e-2",
     "const LEARNING_RATE: f64 = 3e-4;", "const LEARNING_RATE: f64 = 3e-2;"),
]


async def run(session: ClientSession, description: str):
    """run_experiment with progress on stderr; returns the tool result."""
    start = time.monotonic()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        print(f"  [{time.monotonic() - start:6.1f} s] {message or progress}", file=sys.stderr, flush=True)

    print(f"\nrun_experiment({description!r}) ...", flush=True)
    result = await session.call_tool(
        "run_experiment", {"description": description}, read_timeout_seconds=RUN_TIMEOUT_S, progress_callback=on_progress
    )
    print(f"\n{text_of(result).rstrip()}\n")
    return result


async def hypothesis(session: ClientSession, description: str, old: str, new: str) -> bool:
    """Edit, run, then keep or revert against the kept state (the baseline until something is kept); False on a failed run."""
    edit = await session.call_tool("edit_train", {"command": "str_replace", "old_str": old, "new_str": new})
    if edit.is_error:
        print(f"edit refused: {text_of(edit)}", file=sys.stderr)
        return False
    result = await run(session, description)
    if result.is_error:
        await session.call_tool("revert", {})
        return False
    view = (await session.call_tool("read_metrics", {})).structured_content
    kept = view.get("kept") or view.get("baseline")
    mine = result.structured_content["metrics"]["mean_rank"]
    if kept and mine < kept["mean_rank"]:
        decision = await session.call_tool("commit", {"description": description})
        verdict = f"kept: {mine:.2f} beats {kept['id']} ({kept['mean_rank']:.2f})"
    else:
        decision = await session.call_tool("revert", {})
        verdict = f"reverted: {mine:.2f} does not beat {kept['id']} ({kept['mean_rank']:.2f})"
    print(f"{verdict}\n{text_of(decision).rstrip()}")
    await session.call_tool("append_scratchpad", {"entry": f"{description}: {verdict}"})
    return True


async def main(server: Path, workspace: Path, description: str, baseline_only: bool) -> int:
    env = get_default_environment() | {"RUST_LOG": "warn"}
    env |= {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
    params = StdioServerParameters(command=str(server), args=["-C", str(workspace), "serve"], env=env)
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        init = await session.initialize()
        tools = (await session.list_tools()).tools
        print(f"connected to {init.server_info.name} {init.server_info.version}")
        print(f"tools: {', '.join(t.name for t in tools)}")

        before = await session.call_tool("read_metrics", {})
        print(f"\nread_metrics before: {before.structured_content['total_runs']} runs recorded")

        run_result = await run(session, description)
        if run_result.is_error:
            print("the baseline run failed", file=sys.stderr)
            return 1
        ok = True
        if not baseline_only:
            for hyp in HYPOTHESES:
                ok = await hypothesis(session, *hyp) and ok

        after = await session.call_tool("read_metrics", {"full": True})
        view = after.structured_content
        print_runs_table(view["rows"])

        baseline = view["rows"][0]
        m = baseline.get("metrics")
        if baseline["status"] != "ok" or not m:
            print(f"\nrun {baseline['id']} ended {baseline['status']}: no metrics", file=sys.stderr)
            return 1
        ratio = m["random_mean_rank"] / m["mean_rank"] if m["mean_rank"] > 0 else float("inf")
        print(
            f"\nbaseline mean rank {m['mean_rank']:.1f} vs random-retrieval mean rank "
            f"{m['random_mean_rank']:.1f} (N={m['n']}): {ratio:.1f}x better than random"
        )
        if view.get("kept"):  # null while the baseline is the kept state
            kept = view["kept"]
            print(f"kept: {kept['id']} mean rank {kept['mean_rank']:.1f} ({kept['description']})")
        return 0 if m["mean_rank"] < m["random_mean_rank"] and ok else 1


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--server", required=True, type=Path, help="the autoresearch-mcp binary")
    ap.add_argument("--workspace", required=True, type=Path, help="an initialised workspace (autoresearch-mcp new-workspace)")
    ap.add_argument("--description", default="baseline (unmodified train.rs)", help="the baseline run's description")
    ap.add_argument("--baseline-only", action="store_true", help="stop after the baseline run")
    args = ap.parse_args()
    sys.exit(asyncio.run(main(args.server.resolve(), args.workspace.resolve(), args.description, args.baseline_only)))
