"""`autoresearch-mcp saturday`, the unattended supervisor, driving the real Claude Code CLI against a
scripted model: relaunch with a resume prompt, back-off on API errors, stop on authentication
errors, a clean stop at the deadline with nothing left running; `status`; the server's refusals
past the deadline or the experiment budget.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import get_default_environment, stdio_client

from claude_code import (  # noqa: F401 (fixtures)
    audit,
    call,
    claude_binary,
    claude_for,
    experiment_ws,
    experiment_ws_template,
    ledger_runs,
    make_workspace,
    processes_mentioning,
    project_pyenv,
    wait_for,
)


def start(server_bin, claude, ws: Path, *args: str, **env: str) -> subprocess.Popen:
    """`saturday` on `ws` in the background, with Claude Code's private home and the stand-in API."""
    log = open(ws.parent / "saturday.stderr", "w")
    cmd = [str(server_bin), "-C", str(ws), "saturday", "--claude", str(claude.bin), "--grace", "10", *args]
    return subprocess.Popen(cmd, env=claude.env(**env), stdout=log, stderr=log, stdin=subprocess.DEVNULL)


def state(ws: Path) -> dict:
    return json.loads((ws / ".autoresearch/supervisor.json").read_text())


def status(server_bin, ws: Path) -> str:
    out = subprocess.run([server_bin, "-C", ws, "status"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout


def transcripts(ws: Path) -> list[Path]:
    return sorted((ws / ".autoresearch/sessions").glob("*.jsonl"))


def prompt_of(request: dict) -> str:
    """The text of the first user message of a conversation request (the session's prompt)."""
    first = request["body"]["messages"][0]
    content = first["content"]
    return content if isinstance(content, str) else "\n".join(b.get("text", "") for b in content)


def system_of(request: dict) -> str:
    """The system prompt of a conversation request: its `system` field and its system-role messages
    (Claude Code 2.1.330 puts the MCP servers' instructions in one of those)."""
    text = lambda c: c if isinstance(c, str) else "\n".join(b.get("text", "") for b in c)  # noqa: E731
    body = request["body"]
    return "\n".join([text(body.get("system", ""))] + [text(m["content"]) for m in body["messages"] if m["role"] == "system"])


def nothing_left(ws: Path) -> None:
    wait_for(lambda: processes_mentioning(str(ws)) == [], 20, "no supervisor, Claude Code, server or trainer left")


@pytest.fixture
def ws(server_bin, dataset, tmp_path) -> Path:
    return make_workspace(server_bin, dataset, tmp_path / "ws")


def test_relaunches_with_a_resume_prompt_after_an_early_exit(claude_for, server_bin, ws):
    turns = [
        call("pad", "mcp__autoresearch__append_scratchpad", entry="idea: warm the LR up for longer"),
        {"text": "I stop here."},  # session 1 ends early
        {"text": "Resumed.", "delay": 40},  # session 2 waits on the model until the deadline
    ]
    claude = claude_for(turns)
    proc = start(server_bin, claude, ws, "--for", "10s", "--backoff-initial", "1")
    try:
        wait_for(lambda: len(claude.api.conversation()) == 3, 40, "a second session")
        # While it runs: status shows it, and a second supervisor is refused.
        text = status(server_bin, ws)
        assert "supervisor  running" in text and "session 2" in text and "Claude Code pid" in text, text
        assert "server      serving" in text, text
        second = subprocess.run(
            [server_bin, "-C", ws, "saturday", "--for", "1m", "--claude", claude.bin],
            capture_output=True,
            text=True,
            env=claude.env(),
        )
        assert second.returncode != 0 and "another supervisor" in second.stderr, second.stderr
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    conversation = claude.api.conversation()
    # program.md reaches the model once: as the server's MCP instructions (in the system prompt); the
    # prompt only says to follow them.
    program = (ws / "program.md").read_text().strip()
    for request in (conversation[0], conversation[2]):
        assert system_of(request).count(program) == 1, "program.md is in the system prompt, once"
        assert "## The loop" not in prompt_of(request), "program.md is not repeated in the prompt"
        assert "exactly as its instructions (program.md) describe" in prompt_of(request)
    resume = prompt_of(conversation[2])
    assert "You are resuming the autoresearch loop" in resume and "session 2" in resume, resume
    assert "idea: warm the LR up for longer" in resume, "the scratchpad tail is in the resume prompt"
    assert "no successful run yet" in resume, resume
    session = [r["headers"]["x-claude-code-session-id"] for r in conversation]
    assert session[0] == session[1] != session[2], "two Claude Code sessions"

    files = transcripts(ws)
    assert len(files) == 2, files
    for f in files:
        lines = [json.loads(line) for line in f.read_text().splitlines()]
        assert lines[0]["type"] == "system" and lines[0]["subtype"] == "init"
        assert sorted(lines[0]["tools"]) == sorted(
            "mcp__autoresearch__" + t
            for t in ["append_scratchpad", "commit", "edit_train", "read_metrics", "revert", "run_experiment"]
        ), "strict profile: only the six tools"
    assert json.loads(files[0].read_text().splitlines()[-1])["result"] == "I stop here."
    s = state(ws)
    assert s["phase"] == "stopped" and s["stop_reason"] == "deadline reached" and s["session"] == 2, s
    nothing_left(ws)
    assert "not running: stopped" in status(server_bin, ws)


def test_backs_off_exponentially_after_api_errors(claude_for, server_bin, ws):
    claude = claude_for([{"error": 529}, {"error": 529}, {"text": "Up again.", "delay": 40}])
    t0 = time.time()
    # Claude Code's own retries off: its first 529 ends the session.
    proc = start(server_bin, claude, ws, "--for", "16s", "--backoff-initial", "3", CLAUDE_CODE_MAX_RETRIES="0")
    try:
        wait_for(lambda: len(claude.api.conversation()) == 3, 40, "the third session")
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    times = [r["time"] for r in claude.api.conversation()]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert 3 <= gaps[0] < 3 + 8, gaps
    assert 6 <= gaps[1] < 6 + 8, gaps
    first = [json.loads(line) for line in transcripts(ws)[0].read_text().splitlines()]
    assert first[-1]["api_error_status"] == 529, first[-1]
    log = (ws / ".autoresearch/supervisor.log").read_text()
    assert "session 1: API error: 529 overloaded_error" in log, log
    assert "next session in 3 s" in log and "next session in 6 s" in log, log
    assert state(ws)["stop_reason"] == "deadline reached"
    assert time.time() - t0 < 40
    nothing_left(ws)


def test_stops_on_an_authentication_error_and_notifies(claude_for, server_bin, ws, tmp_path):
    notes = tmp_path / "notes"
    claude = claude_for([{"error": 401}, {"text": "never reached"}])
    notify = f"env | grep ^AUTORESEARCH_ | sort >> {notes}; echo --- >> {notes}"
    proc = start(server_bin, claude, ws, "--for", "10m", "--notify", notify)
    try:
        assert proc.wait(timeout=60) == 2
    finally:
        if proc.poll() is None:
            proc.kill()
    assert len(claude.api.conversation()) == 1, "no retry after 401"
    s = state(ws)
    assert s["stop_reason"].startswith("authentication failed: 401 authentication_error"), s
    text = notes.read_text()
    assert "AUTORESEARCH_EVENT=stop" in text and "AUTORESEARCH_REASON=authentication failed" in text, text
    assert f"AUTORESEARCH_WORKSPACE={ws}" in text
    nothing_left(ws)


def test_at_the_deadline_the_run_in_flight_finishes_then_everything_stops(
    claude_for, server_bin, experiment_ws, tmp_path
):
    ws = experiment_ws(10)
    notes = tmp_path / "notes"
    claude = claude_for(
        [
            call("run", "mcp__autoresearch__run_experiment", description="baseline"),
            {"text": "Thinking about the next change.", "delay": 60},
        ]
    )
    notify = f"echo $AUTORESEARCH_EVENT $AUTORESEARCH_BEST_RUN $AUTORESEARCH_BEST_MEAN_RANK >> {notes}"
    proc = start(server_bin, claude, ws, "--for", "5s", "--notify", notify)
    try:
        wait_for(lambda: (ws / ".autoresearch/runs/r0001/train").exists(), 60, "training to start")
        assert "running     r0001 \"baseline\": training" in status(server_bin, ws)
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    s = state(ws)
    run = ledger_runs(ws)["r0001"]["finished"]
    assert run["status"] == "ok", run
    assert run["at"] > s["deadline"], "the run finished after the deadline, not cut short"
    assert s["stop_reason"] == "deadline reached" and s["phase"] == "stopped", s
    log = (ws / ".autoresearch/supervisor.log").read_text()
    assert "waiting for run r0001 to finish" in log, log
    assert "SIGINT to Claude Code" in log, log
    events = notes.read_text().splitlines()
    assert events[0].startswith("new_best r0001 ") and events[-1].startswith("stop r0001 "), events
    nothing_left(ws)
    text = status(server_bin, ws)
    assert "best        r0001 ok" in text and "not running: stopped" in text and "running     no experiment" in text


def test_stops_when_the_experiment_budget_is_spent(claude_for, server_bin, experiment_ws):
    ws = experiment_ws(2)
    claude = claude_for(
        [
            call("run", "mcp__autoresearch__run_experiment", description="baseline"),
            {"text": "Next idea...", "delay": 60},
        ]
    )
    proc = start(server_bin, claude, ws, "--for", "10m", "--max-experiments", "1")
    try:
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert ledger_runs(ws)["r0001"]["finished"]["status"] == "ok"
    s = state(ws)
    assert s["stop_reason"] == "experiment budget spent (1 experiments)" and s["max_experiments"] == 1, s
    mcp = json.loads((ws / ".autoresearch/sessions/mcp.json").read_text())["mcpServers"]["autoresearch"]
    assert mcp["args"][-2:] == ["--max-runs", "1"] and "--deadline" in mcp["args"], mcp
    assert mcp["timeout"] >= 3_600_000
    nothing_left(ws)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "limits, why",
    [
        (["--deadline", "2001-01-01T00:00:00Z"], "deadline (2001-01-01"),
        (["--max-runs", "0"], "experiment budget is spent (0 runs"),
    ],
)
async def test_the_server_refuses_new_runs_past_its_deadline_or_budget(server_bin, ws, limits, why):
    env = get_default_environment() | {"RUST_LOG": "warn"}
    params = StdioServerParameters(command=str(server_bin), args=["-C", str(ws), "serve", *limits], env=env)
    with open(ws.parent / "server.log", "w") as log:
        async with stdio_client(params, errlog=log) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            r = await session.call_tool("run_experiment", {"description": "one more"}, read_timeout_seconds=30)
            text = "\n".join(b.text for b in r.content if b.type == "text")
            assert r.is_error and text.startswith("refused: the session's ") and why in text, text
            assert "append_scratchpad" in text, "the refusal says what to do"
            r = await session.call_tool("read_metrics", {}, read_timeout_seconds=30)
            assert not r.is_error, "cheap tools still work"
    records = audit(ws)
    assert [(r["tool"], r["outcome"]) for r in records] == [("run_experiment", "refused"), ("read_metrics", "ok")]
    assert why in records[0]["reason"]
    assert not (ws / ".autoresearch/runs.jsonl").exists() or ledger_runs(ws) == {}


def test_a_crashing_claude_code_is_notified_and_relaunched_after_a_back_off(server_bin, ws, tmp_path):
    fake = tmp_path / "claude"
    fake.write_text(
        "#!/bin/sh\n"
        "[ \"$1\" = --version ] && { echo '0.0.1 (Claude Code)'; exit 0; }\n"
        "echo boom >&2; exit 3\n"
    )
    fake.chmod(0o755)
    notes = tmp_path / "notes"
    notify = f"echo \"$AUTORESEARCH_EVENT $AUTORESEARCH_MESSAGE\" >> {notes}"
    cmd = [server_bin, "-C", ws, "saturday", "--for", "5s", "--claude", fake, "--backoff-initial", "2"]
    cmd += ["--notify", notify]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "warning: Claude Code 0.0.1" in out.stderr and "tested with 2.1.330" in out.stderr, out.stderr
    events = notes.read_text().splitlines()
    assert events[0].startswith("crash session 1: Claude Code crashed: exit status: 3"), events
    assert events[-1].startswith("stop "), events
    assert 2 <= len(events) <= 4, events  # crashes 2 s, then 4 s apart, until the deadline
    assert "boom" in transcripts(ws)[0].with_suffix(".stderr.log").read_text(), "Claude Code's stderr is kept"
