"""Driving the real Claude Code CLI against a workspace, offline.

The CLI is the one `scripts/python-env.sh` installs (the `claude-agent-sdk` wheel's bundled binary, or
$AUTORESEARCH_CLAUDE). Every run gets a private HOME and CLAUDE_CONFIG_DIR, DISABLE_AUTOUPDATER,
DISABLE_TELEMETRY and CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC, a fake API key, and ANTHROPIC_BASE_URL
pointing at the scripted stand-in (tests/support/fake_anthropic.py) running on a thread of the test.
Nothing reaches the network; the model side is the script.

Helpers, not tests: the fixtures here are imported by test_claude_code.py and test_saturday.py.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests/support"))

from fake_anthropic import FakeAnthropic  # noqa: E402

TESTED_VERSION = "2.1.330"
SIX = {
    "mcp__autoresearch__append_scratchpad",
    "mcp__autoresearch__commit",
    "mcp__autoresearch__edit_train",
    "mcp__autoresearch__read_metrics",
    "mcp__autoresearch__revert",
    "mcp__autoresearch__run_experiment",
}
API_KEY = "sk-ant-api03-fake-key-for-offline-tests-0000"
STRICT = [
    "--strict-mcp-config",
    "--setting-sources",
    "",
    "--tools",
    "",
    "--allowedTools",
    "mcp__autoresearch",
    "--permission-mode",
    "dontAsk",
]


def claude_bin() -> Path:
    if os.environ.get("AUTORESEARCH_CLAUDE"):
        return Path(os.environ["AUTORESEARCH_CLAUDE"])
    import claude_agent_sdk

    return Path(claude_agent_sdk.__file__).parent / "_bundled" / "claude"


def pyenv_dir() -> str:
    out = subprocess.run(["bash", REPO / "scripts/python-env.sh"], capture_output=True, text=True, check=True)
    return out.stdout.strip()


@dataclass
class Claude:
    """Claude Code with a private home, pointed at a stand-in API."""

    bin: Path
    home: Path
    api: FakeAnthropic
    pyenv: str
    extra_env: dict = field(default_factory=dict)

    @property
    def config_dir(self) -> Path:
        return self.home / ".claude"

    def env(self, **extra: str) -> dict:
        real_home = Path.home()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "HOME": str(self.home),
            "CLAUDE_CONFIG_DIR": str(self.config_dir),
            # The server Claude Code starts builds and runs the trainer: it needs the real toolchain and
            # Python environment, which a private HOME would hide.
            "CARGO_HOME": os.environ.get("CARGO_HOME", str(real_home / ".cargo")),
            "RUSTUP_HOME": os.environ.get("RUSTUP_HOME", str(real_home / ".rustup")),
            "AUTORESEARCH_PYENV": self.pyenv,
            "RUST_LOG": "warn",
            "DISABLE_AUTOUPDATER": "1",
            "DISABLE_TELEMETRY": "1",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "ANTHROPIC_BASE_URL": self.api.url,
            "ANTHROPIC_API_KEY": API_KEY,
        }
        return env | self.extra_env | extra

    def trust(self, workspace: Path) -> None:
        """What accepting the trust dialog writes: projects[<dir>].hasTrustDialogAccepted in the
        config file, plus a finished onboarding and the approved API key (the interactive CLI would
        otherwise ask)."""
        path = self.config_dir / ".claude.json"
        self.config_dir.mkdir(parents=True, exist_ok=True)
        config = json.loads(path.read_text()) if path.exists() else {}
        config["hasCompletedOnboarding"] = True
        config["customApiKeyResponses"] = {"approved": [API_KEY[-20:]], "rejected": []}
        config.setdefault("projects", {})[str(workspace)] = {"hasTrustDialogAccepted": True}
        path.write_text(json.dumps(config, indent=2))

    def run(self, workspace: Path, args: list[str], timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(self.bin), *args],
            cwd=workspace,
            env=self.env(**env),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def print_mode(
        self, workspace: Path, prompt: str, mcp_config: Path | None = None, timeout: float = 180, **env: str
    ) -> "Printed":
        """`claude -p` in the strict headless profile, stream-json output."""
        args = ["-p", prompt, "--mcp-config", str(mcp_config or workspace / ".mcp.json"), *STRICT]
        out = self.run(workspace, [*args, "--output-format", "stream-json", "--verbose"], timeout=timeout, **env)
        return Printed(out)

    def tui(self, workspace: Path, prompt: str, done, timeout: float = 60) -> tuple[str, int]:
        """The interactive CLI in a pseudo-terminal, started with `prompt`; types /exit once `done()`
        holds. Returns the screen output (ANSI included) and the exit status."""
        pid, fd = pty.fork()
        if pid == 0:  # the child: exec at once (the parent has threads)
            try:
                os.chdir(workspace)
                os.execve(str(self.bin), [str(self.bin), prompt], self.env(TERM="xterm-256color"))
            finally:
                os._exit(127)
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
        out = bytearray()

        def pump(seconds: float) -> None:
            r, _, _ = select.select([fd], [], [], seconds)
            if r:
                try:
                    out.extend(os.read(fd, 65536))
                except OSError:
                    pass

        deadline = time.time() + timeout
        while time.time() < deadline and not done():
            pump(0.2)
        for keys in (b"/exit", b"\r"):
            os.write(fd, keys)
            pump(0.4)
        status = None
        end = time.time() + 20
        while time.time() < end:
            wpid, st = os.waitpid(pid, os.WNOHANG)
            if wpid:
                status = st
                break
            pump(0.2)
        if status is None:
            os.kill(pid, signal.SIGKILL)
            status = os.waitpid(pid, 0)[1]
        os.close(fd)
        return out.decode(errors="replace"), status


class Printed:
    """The result of a `claude -p --output-format stream-json` run."""

    def __init__(self, out: subprocess.CompletedProcess):
        self.returncode = out.returncode
        self.stderr = out.stderr
        self.lines = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]

    @property
    def result(self) -> dict:
        results = [x for x in self.lines if x.get("type") == "result"]
        assert results, f"no result line; stderr:\n{self.stderr[-3000:]}"
        return results[-1]

    @property
    def init(self) -> dict:
        return next(x for x in self.lines if x.get("type") == "system" and x.get("subtype") == "init")


def offered(request: dict) -> dict[str, bool]:
    """The tools a conversation request offered the model: name -> deferred (defer_loading)."""
    return {t["name"]: bool(t.get("defer_loading")) for t in request["body"].get("tools", [])}


def tool_result(api: FakeAnthropic, tool_use_id: str) -> dict:
    """The tool_result block Claude Code sent back for a scripted tool call."""
    for req in reversed(api.requests()):
        body = req.get("body")
        if not isinstance(body, dict):
            continue
        for m in body.get("messages", []):
            if isinstance(m.get("content"), list):
                for b in m["content"]:
                    if b.get("type") == "tool_result" and b.get("tool_use_id") == tool_use_id:
                        return b
    raise AssertionError(f"no tool_result for {tool_use_id}")


def result_text(block: dict) -> str:
    c = block.get("content")
    if isinstance(c, list):
        return "\n".join(x.get("text", "") for x in c if isinstance(x, dict))
    return str(c or "")


def call(tool_id: str, tool: str, /, **input) -> dict:
    """One scripted turn: a single tool call."""
    return {"tool_use": [{"id": tool_id, "name": tool, "input": input}]}


def make_workspace(server_bin: Path, dataset: Path, into: Path, *experiment: str) -> Path:
    args = [server_bin, "-C", REPO, "new-workspace", into, "--profile", "tests", "--tag", "claude"]
    args += ["--dataset", dataset]
    for line in experiment:
        args += ["--experiment", line]
    out = subprocess.run(args, capture_output=True, text=True)
    assert out.returncode == 0, f"new-workspace failed:\n{out.stderr}"
    return Path(out.stdout.strip())


def git(workspace: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=workspace, capture_output=True, text=True, check=True).stdout


def audit(workspace: Path) -> list[dict]:
    path = workspace / ".autoresearch/audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def ledger_runs(workspace: Path) -> dict[str, dict]:
    """Run id -> {started, finished, kept} events folded."""
    runs: dict[str, dict] = {}
    path = workspace / ".autoresearch/runs.jsonl"
    for line in path.read_text().splitlines() if path.exists() else []:
        ev = json.loads(line)
        if "run_id" in ev:
            runs.setdefault(ev["run_id"], {})[ev["event"]] = ev
    return runs


def processes_mentioning(needle: str) -> list[tuple[int, str]]:
    """Live processes whose command line or environment mentions `needle` (this one excluded)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            stat = (entry / "stat").read_text()
            if stat.rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                continue
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            env = (entry / "environ").read_bytes().decode(errors="replace")
        except (OSError, IndexError):
            continue
        if needle in cmd or needle in env:
            found.append((int(entry.name), cmd))
    return found


def wait_for(predicate, timeout: float, what: str, every: float = 0.2):
    end = time.time() + timeout
    while time.time() < end:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


# ------------------------------------------------------------------------------------------------
# Fixtures
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def claude_binary() -> Path:
    path = claude_bin()
    if not os.access(path, os.X_OK):
        pytest.fail(f"Claude Code is not installed at {path}: run scripts/python-env.sh")
    return path


@pytest.fixture(scope="session")
def project_pyenv() -> str:
    return pyenv_dir()


@pytest.fixture(scope="session")
def experiment_ws_template(tmp_path_factory, server_bin: Path, dataset: Path):
    """A workspace whose trainer is compiled and whose data is prepared, for tests that run
    experiments. Every test gets a copy at the same path with the same file times: cargo's
    fingerprints of the trainer package (path and mtimes) then still match, and the harness is not
    recompiled per test (minutes on two busy cores). Returns (path, template). Built once per test
    session, whichever module asks first (each module that imports a fixture gets its own copy of it)."""
    global _TEMPLATE
    if _TEMPLATE is None:
        _TEMPLATE = _warm_template(tmp_path_factory.mktemp("claude-experiments"), server_bin, dataset)
    return _TEMPLATE


_TEMPLATE: tuple[Path, Path] | None = None


def _warm_template(base: Path, server_bin: Path, dataset: Path) -> tuple[Path, Path]:
    path, template = base / "ws", base / "template"
    make_workspace(server_bin, dataset, path, "budget_seconds = 2")
    warm = subprocess.run([server_bin, "-C", path, "run", "-m", "warm-up"], capture_output=True, text=True)
    assert warm.returncode == 0, warm.stdout + warm.stderr[-3000:]
    state = path / ".autoresearch"
    for name in ["runs.jsonl", "audit.jsonl", "audit.head"]:
        (state / name).unlink(missing_ok=True)
    shutil.rmtree(state / "runs", ignore_errors=True)
    shutil.copytree(path, template, symlinks=True)
    return path, template


@pytest.fixture
def experiment_ws(experiment_ws_template):
    """`experiment_ws(budget_seconds, max_steps=None)`: a fresh copy of the warm workspace (empty
    ledger and audit log, baseline train.rs) with that training budget (and step cap) committed on
    its branch."""
    path, template = experiment_ws_template

    def make(budget_seconds: int, max_steps: int | None = None) -> Path:
        shutil.rmtree(path, ignore_errors=True)
        shutil.copytree(template, path, symlinks=True)
        config = path / "autoresearch.toml"
        config.write_text(re.sub(r"budget_seconds = \d+", f"budget_seconds = {budget_seconds}", config.read_text()))
        if max_steps is not None:
            # A fast machine finishes the baseline's steps before a long budget runs out; a test that
            # needs the run to last the budget raises the step cap (one small incremental rebuild).
            train = path / "trainer" / "src" / "train.rs"
            text, n = re.subn(r"const MAX_STEPS: u64 = \d+;", f"const MAX_STEPS: u64 = {max_steps};", train.read_text())
            assert n == 1, "train.rs has no MAX_STEPS constant"
            train.write_text(text)
        who = ["-c", "user.name=test", "-c", "user.email=test@localhost"]
        git(path, *who, "commit", "-qam", "test budget", "--allow-empty")
        return path

    yield make
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def claude_for(tmp_path: Path, claude_binary: Path, project_pyenv: str):
    """`claude_for(turns)`: a stand-in API replaying `turns` and a Claude Code with a private home
    pointed at it. Checks at teardown that no process of the test's is left."""
    stack = []

    def make(turns: list[dict]) -> Claude:
        api = FakeAnthropic(turns, tmp_path / f"api-{len(stack)}").__enter__()
        stack.append(api)
        home = tmp_path / "home"
        home.mkdir(exist_ok=True)
        return Claude(claude_binary, home, api, project_pyenv)

    yield make
    for api in stack:
        api.__exit__(None, None, None)
