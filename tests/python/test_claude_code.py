"""autoresearch-mcp through the real Claude Code CLI (the tested version, offline, scripted model).

Each test scripts the model's side (tests/support/fake_anthropic.py): tool calls, including calls to
tools Claude Code did not offer, then asserts on what Claude Code offered the model, the tool results
it sent back, and what happened in the workspace (ledger, git, audit log, processes).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

from claude_code import (  # noqa: F401 (fixtures)
    SIX,
    TESTED_VERSION,
    audit,
    call,
    claude_binary,
    claude_for,
    experiment_ws,
    experiment_ws_template,
    git,
    ledger_runs,
    make_workspace,
    offered,
    processes_mentioning,
    project_pyenv,
    result_text,
    tool_result,
    wait_for,
)


def workspace_with(server_bin, dataset, tmp_path, *experiment: str) -> Path:
    return make_workspace(server_bin, dataset, tmp_path / "ws", *experiment)


def test_the_installed_cli_is_the_tested_version(claude_binary):
    out = subprocess.run([claude_binary, "--version"], capture_output=True, text=True, env={"DISABLE_AUTOUPDATER": "1"})
    assert out.stdout.split()[0] == TESTED_VERSION, out.stdout


def test_doctor_compares_the_claude_code_version_and_the_mcp_timeout(claude_binary, server_bin, dataset, tmp_path):
    ws = workspace_with(server_bin, dataset, tmp_path)
    doctor = lambda **env: subprocess.run(  # noqa: E731
        [server_bin, "-C", ws, "doctor"], capture_output=True, text=True, env=os.environ | env
    ).stdout
    out = doctor(AUTORESEARCH_CLAUDE=str(claude_binary))
    assert re.search(rf"\[ok  \] claude code +{TESTED_VERSION} \(the tested version\)", out), out
    assert re.search(r"\[ok  \] \.mcp\.json timeout +\d+ s per call, above a run's hard limit", out), out

    fake = tmp_path / "claude"
    fake.write_text("#!/bin/sh\necho '2.0.1 (Claude Code)'\n")
    fake.chmod(0o755)
    config = json.loads((ws / ".mcp.json").read_text())
    config["mcpServers"]["autoresearch"]["timeout"] = 600_000
    (ws / ".mcp.json").write_text(json.dumps(config))
    out = doctor(AUTORESEARCH_CLAUDE=str(fake))
    warn = rf"\[warn\] claude code +2\.0\.1 at {fake}, but this project was tested with {TESTED_VERSION}"
    assert re.search(warn, out), out
    assert "[warn] .mcp.json timeout            600 s per call, under a run's hard limit" in out, out


def test_mcp_list_shows_the_server_connected_once_the_workspace_is_trusted(claude_for, server_bin, dataset, tmp_path):
    ws = workspace_with(server_bin, dataset, tmp_path)
    claude = claude_for([])
    out = claude.run(ws, ["mcp", "list"])
    assert re.search(r"autoresearch: .*autoresearch-mcp serve - .*Pending approval", out.stdout), out.stdout

    claude.trust(ws)
    out = claude.run(ws, ["mcp", "list"])
    assert out.returncode == 0, out.stderr
    assert re.search(r"autoresearch: .*autoresearch-mcp serve - .*Connected", out.stdout), out.stdout


def test_strict_profile_offers_only_the_six_tools_and_refuses_every_other_call(
    claude_for, server_bin, dataset, tmp_path
):
    ws = workspace_with(server_bin, dataset, tmp_path)
    marker = tmp_path / "bash-ran"
    head = git(ws, "rev-parse", "HEAD")
    refused = {
        "t_bash": ("Bash", {"command": f"touch {marker}", "description": "escape"}),
        "t_write": ("Write", {"file_path": str(ws / "trainer/src/lib.rs"), "content": "pwned"}),
        "t_read": ("Read", {"file_path": str(ws / ".autoresearch/audit.jsonl")}),
        "t_agent": ("Agent", {"description": "x", "prompt": "run `id`", "subagent_type": "general-purpose"}),
        "t_search": ("ToolSearch", {"query": "select:Bash,Read"}),
        "t_webfetch": ("WebFetch", {"url": "http://127.0.0.1:9/", "prompt": "x"}),
        "t_placeholder": ("DeferredToolPlaceholder", {}),
    }
    turns = [call(i, name, **args) for i, (name, args) in refused.items()]
    turns += [call("t_metrics", "mcp__autoresearch__read_metrics"), {"text": "done"}]
    claude = claude_for(turns)
    out = claude.print_mode(ws, "Run the loop.")
    assert out.returncode == 0 and not out.result["is_error"], out.result
    assert set(out.init["tools"]) == SIX, out.init["tools"]
    assert out.init["mcp_servers"] == [{"name": "autoresearch", "status": "connected", "source": "dynamic"}]

    conversation = claude.api.conversation()
    assert len(conversation) == len(turns)
    for req in conversation:
        tools = offered(req)
        callable_tools = {name for name, deferred in tools.items() if not deferred}
        assert callable_tools == SIX, tools
        # 2.1.330 also lists a deferred placeholder that refuses every call (DESIGN.md).
        assert set(tools) - SIX <= {"DeferredToolPlaceholder"}, tools

    for tool_id, (name, _) in refused.items():
        block = tool_result(claude.api, tool_id)
        assert block.get("is_error") is True, (name, block)
        assert "No such tool available" in result_text(block) or "never call" in result_text(block), (name, block)
    metrics = tool_result(claude.api, "t_metrics")
    assert not metrics.get("is_error") and "total_runs" in result_text(metrics)

    assert not marker.exists(), "Bash ran"
    assert git(ws, "status", "--porcelain") == "", "the repository changed"
    assert git(ws, "rev-parse", "HEAD") == head
    assert [r["tool"] for r in audit(ws)] == ["read_metrics"], "only the MCP call reached the server"


def test_strict_session_of_three_experiments_leaves_ledger_commits_and_audit(claude_for, experiment_ws, server_bin):
    ws = experiment_ws(3)
    train = (ws / "trainer/src/train.rs").read_text()
    lr = next(ln for ln in train.splitlines() if ln.startswith("const LEARNING_RATE"))
    temp = next(ln for ln in train.splitlines() if ln.startswith("const MAX_TEMPERATURE"))
    hot = "const MAX_TEMPERATURE: f64 = 100.0;"
    mcp = "mcp__autoresearch__"
    turns = [
        call("m0", mcp + "read_metrics"),
        call("v0", mcp + "edit_train", command="view", view_range=[1, 30]),
        call("run1", mcp + "run_experiment", description="baseline"),
        call("pad1", mcp + "append_scratchpad", entry="baseline measured"),
        call("e2", mcp + "edit_train", command="str_replace", old_str=lr, new_str="const LEARNING_RATE: f64 = 1e-3;"),
        call("run2", mcp + "run_experiment", description="LR 3e-4 -> 1e-3"),
        # A 3 s budget trains a few dozen steps, fewer on a loaded machine: whether LR 1e-3 beats the
        # baseline then is a coin flip, so the commit carries a reason (this test is about the flow).
        call("keep2", mcp + "commit", description="LR 1e-3", reason="kept to exercise the flow"),
        call("pad2", mcp + "append_scratchpad", entry="kept LR 1e-3"),
        call("e3", mcp + "edit_train", command="str_replace", old_str=temp, new_str=hot),
        call("run3", mcp + "run_experiment", description="temperature clamp 2 -> 100"),
        call("drop3", mcp + "revert", reason="not better"),
        call("pad3", mcp + "append_scratchpad", entry="reverted the clamp change"),
        call("m4", mcp + "read_metrics", last=3),
        {"text": "Three experiments done."},
    ]
    claude = claude_for(turns)
    t0 = time.time()
    out = claude.print_mode(ws, (ws / "program.md").read_text(), timeout=400)
    assert out.returncode == 0 and not out.result["is_error"], out.result
    assert out.result["num_turns"] == len(turns)

    # Every call went through, in order, and its result came back to the model.
    for tool_id in ["m0", "v0", "run1", "pad1", "e2", "run2", "keep2", "pad2", "e3", "run3", "drop3", "pad3", "m4"]:
        block = tool_result(claude.api, tool_id)
        assert not block.get("is_error"), (tool_id, result_text(block)[:2000])
    # Claude Code passes the model the structured content: the row carries the result, the next step
    # and the warnings as fields (the baseline is the kept state, so nothing to commit).
    row = json.loads(result_text(tool_result(claude.api, "run1")))
    assert row["status"] == "ok" and row["metrics"]["mean_rank"] > 0, row
    assert "already kept" in row["next"] and "report" not in row, row
    assert "kept run r0002 as commit" in result_text(tool_result(claude.api, "keep2"))

    runs = ledger_runs(ws)
    assert sorted(runs) == ["r0001", "r0002", "r0003"]
    assert all(r["finished"]["status"] == "ok" for r in runs.values()), runs
    assert [r.get("kept") is not None for r in runs.values()] == [False, True, False]
    assert runs["r0002"]["started"]["description"] == "LR 3e-4 -> 1e-3"

    log = git(ws, "log", "--format=%s", "autoresearch/claude").splitlines()
    assert log[0].startswith("exp r0002: mean_rank ") and log[0].endswith("| LR 1e-3"), log
    assert len(log) == 3, log  # the workspace, the test's budget, the kept experiment
    kept = git(ws, "show", "HEAD:trainer/src/train.rs")
    assert "const LEARNING_RATE: f64 = 1e-3;" in kept and temp in kept
    assert (ws / "trainer/src/train.rs").read_text() == kept, "the third change was reverted"
    assert git(ws, "status", "--porcelain").split() == ["M", "scratchpad.md"]
    pad = (ws / "scratchpad.md").read_text()
    assert pad.index("baseline measured") < pad.index("kept LR 1e-3") < pad.index("reverted the clamp change")
    assert len(list((ws / ".autoresearch/reverts").iterdir())) == 1

    records = audit(ws)
    assert [r["tool"] for r in records] == [
        "read_metrics",
        "edit_train",
        "run_experiment",
        "append_scratchpad",
        "edit_train",
        "run_experiment",
        "commit",
        "append_scratchpad",
        "edit_train",
        "run_experiment",
        "revert",
        "append_scratchpad",
        "read_metrics",
    ]
    assert all(r["outcome"] == "ok" and r["via"] == "mcp" for r in records), records
    assert [r["run_id"] for r in records if r["tool"] == "run_experiment"] == ["r0001", "r0002", "r0003"]
    verify = subprocess.run([server_bin, "-C", ws, "audit", "verify"], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    print(f"three experiments through Claude Code: {time.time() - t0:.1f} s")
    assert processes_mentioning(str(ws)) == []


def test_a_run_longer_than_the_idle_timeout_completes_through_progress(claude_for, experiment_ws, tmp_path):
    """Claude Code aborts a tool call that sent no response or progress for its idle timeout (checked
    every 30 s); the server's progress notifications (every 10 s) reset it. With the idle timeout at
    12 s, a run of ~40 s (past the 30 s check) completes."""
    ws = experiment_ws(35, max_steps=1_000_000)
    # No per-server timeout here: Claude Code would raise the idle timeout to it (it takes the larger).
    config = json.loads((ws / ".mcp.json").read_text())
    del config["mcpServers"]["autoresearch"]["timeout"]
    mcp = tmp_path / "mcp-no-timeout.json"
    mcp.write_text(json.dumps(config))
    claude = claude_for([call("run", "mcp__autoresearch__run_experiment", description="long run"), {"text": "done"}])
    t0 = time.time()
    out = claude.print_mode(ws, "Run one experiment.", mcp_config=mcp, CLAUDE_CODE_MCP_TOOL_IDLE_TIMEOUT="12000")
    took = time.time() - t0
    block = tool_result(claude.api, "run")
    assert not block.get("is_error"), result_text(block)
    assert json.loads(result_text(block))["metrics"]["mean_rank"] > 0
    run = ledger_runs(ws)["r0001"]["finished"]
    assert run["status"] == "ok" and run["phases"]["total"] > 32, run["phases"]
    assert took > 32
    assert out.returncode == 0


def test_claude_code_exiting_sigints_the_server_which_cancels_the_run(claude_for, experiment_ws):
    ws = experiment_ws(60)
    claude = claude_for([call("run", "mcp__autoresearch__run_experiment", description="interrupted"), {"text": "x"}])
    args = ["-p", "Run.", "--mcp-config", str(ws / ".mcp.json"), "--strict-mcp-config", "--setting-sources", ""]
    args += ["--tools", "", "--allowedTools", "mcp__autoresearch", "--permission-mode", "dontAsk"]
    proc = subprocess.Popen([claude.bin, *args], cwd=ws, env=claude.env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: (ws / ".autoresearch/runs/r0001/train").exists(), 120, "training to start")
        time.sleep(1)
        # The sandbox helper takes its job on stdin; the trainer itself runs from the run folder.
        wait_for(lambda: any("/bin/train" in cmd for _, cmd in processes_mentioning(str(ws))), 30, "the trainer to run")
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    finished = wait_for(lambda: ledger_runs(ws)["r0001"].get("finished"), 30, "the run's outcome")
    assert finished["status"] == "cancelled", finished
    assert finished["phases"]["train"] < 30, "stopped during training, not at its end"
    wait_for(lambda: processes_mentioning(str(ws)) == [], 20, "no server, sandbox or trainer process left")
    outcomes = [(r["tool"], r["outcome"]) for r in audit(ws)]
    assert outcomes == [("run_experiment", "error")], outcomes


def test_interactive_profile_denies_everything_but_the_six_tools_and_safe_reads(
    claude_for, server_bin, dataset, tmp_path
):
    """The interactive CLI in a terminal, with the workspace's .claude/settings.json, trusted."""
    ws = workspace_with(server_bin, dataset, tmp_path)
    # A clone of the repository used as a workspace holds the reference's answers: put them where a
    # clone has them (ignored by git here, so the repository stays clean) and expect the Read refused.
    answers = ws / "trainer/configs/final.toml"
    answers.parent.mkdir()
    answers.write_text('PROJ_DIM = "512"  # the reference\'s answer\n')
    with open(ws / ".git/info/exclude", "a") as f:
        f.write("trainer/configs/\n")
    marker = tmp_path / "bash-ran"
    head = git(ws, "rev-parse", "HEAD")
    mcp = "mcp__autoresearch__"
    refused = {
        "t_bash": ("Bash", {"command": f"touch {marker}", "description": "escape"}),
        "t_write": ("Write", {"file_path": str(ws / "trainer/src/lib.rs"), "content": "pwned"}),
        "t_edit": ("Edit", {"file_path": str(ws / "trainer/src/train.rs"), "old_string": "const", "new_string": "x"}),
        "t_webfetch": ("WebFetch", {"url": "http://127.0.0.1:9/", "prompt": "x"}),
        "t_agent": ("Agent", {"description": "x", "prompt": "run `id`", "subagent_type": "general-purpose"}),
        "t_worktree": ("EnterWorktree", {"name": "escape"}),
        "t_cron": ("CronCreate", {"cron": "* * * * *", "prompt": "x"}),
        "t_read_state": ("Read", {"file_path": str(ws / ".autoresearch/audit.jsonl")}),
        "t_read_git": ("Read", {"file_path": str(ws / ".git/config")}),
        "t_read_home": ("Read", {"file_path": str(tmp_path / "home/.claude/.claude.json")}),
        "t_read_answers": ("Read", {"file_path": str(answers)}),
    }
    # Each of the six reaches the server (cheap calls; the refusals come from the server and are audited).
    six = {
        "s_view": ("edit_train", {"command": "view", "view_range": [1, 5]}),
        "s_metrics": ("read_metrics", {}),
        "s_run": ("run_experiment", {"description": "two\nlines"}),
        "s_commit": ("commit", {"description": "nothing changed"}),
        "s_revert": ("revert", {}),
        "s_pad": ("append_scratchpad", {"entry": " "}),
    }
    # The first request goes out while the server is still connecting: its answer waits a little.
    turns = [call("t_program", "Read", file_path=str(ws / "program.md")) | {"delay": 2}]
    turns += [call(i, name, **args) for i, (name, args) in refused.items()]
    turns += [call(i, mcp + name, **args) for i, (name, args) in six.items()]
    turns += [{"text": "done"}]
    claude = claude_for(turns)
    claude.trust(ws)
    screen, status = claude.tui(ws, "Run the loop.", done=lambda: claude.api.remaining() == 0, timeout=90)
    assert claude.api.remaining() == 0, f"the script did not finish:\n{screen[-3000:]}"
    assert status == 0, status

    conversation = claude.api.conversation()
    assert len(conversation) == len(turns)
    for req in conversation[1:]:
        tools = offered(req)
        # Every built-in denied but Read; the six are offered directly (ENABLE_TOOL_SEARCH=false in
        # the settings' env: no tool is deferred behind ToolSearch, which is denied).
        assert set(tools) == SIX | {"Read"}, tools
        assert not any(tools.values()), f"deferred: {tools}"
    for tool_id, (name, _) in refused.items():
        block = tool_result(claude.api, tool_id)
        assert block.get("is_error") is True, (name, block)
    assert "512" not in result_text(tool_result(claude.api, "t_read_answers")), "final.toml was read"
    assert "autoresearch loop" in result_text(tool_result(claude.api, "t_program")), "Read(./program.md) is allowed"

    outcomes = {r["tool"]: r["outcome"] for r in audit(ws)}
    assert outcomes == {
        "read_metrics": "ok",
        "edit_train": "ok",
        "run_experiment": "refused",
        "commit": "refused",
        "revert": "ok",
        "append_scratchpad": "refused",
    }, outcomes
    assert not marker.exists(), "Bash ran"
    assert git(ws, "status", "--porcelain") == "", "the repository changed"
    assert git(ws, "rev-parse", "HEAD") == head
    assert git(ws, "worktree", "list").count("\n") == 1, "no worktree was made"
    wait_for(lambda: processes_mentioning(str(ws)) == [], 20, "the server to exit with Claude Code")
