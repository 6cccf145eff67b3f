"""Fixtures for testing autoresearch-mcp through the Python MCP SDK: the real server binary, a fresh
workspace per test (`autoresearch-mcp new-workspace`), and a connected, initialised client session.

Run with the project's Python environment:
    ENV=$(scripts/python-env.sh); $ENV/bin/python -m pytest -q tests/python
The server must be built first (`cargo build --release`), or point AUTORESEARCH_BIN at a binary.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from mcp import ClientSession, StdioServerParameters, types
from mcp.client.stdio import get_default_environment, stdio_client

REPO = Path(__file__).resolve().parents[2]
SERVER_BIN = Path(os.environ.get("AUTORESEARCH_BIN", REPO / "target/release/autoresearch-mcp")).resolve()
DATASET = REPO / "target/test-data/synthetic-tests"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def server_bin() -> Path:
    if not os.access(SERVER_BIN, os.X_OK):
        pytest.fail(f"{SERVER_BIN} is not built: run `cargo build --release` (or set AUTORESEARCH_BIN)")
    return SERVER_BIN


@pytest.fixture(scope="session")
def dataset(server_bin: Path) -> Path:
    """The small synthetic dataset, generated once (a no-op when it is already there)."""
    subprocess.run(
        [server_bin, "synth", "--size", "tests", "--out", DATASET], check=True, capture_output=True, cwd=REPO
    )
    return DATASET


@pytest.fixture
def workspace(tmp_path: Path, server_bin: Path, dataset: Path) -> Path:
    """A fresh workspace in the tests profile, initialised on branch autoresearch/demo."""
    out = subprocess.run(
        [server_bin, "-C", REPO, "new-workspace", tmp_path / "ws", "--profile", "tests", "--dataset", dataset],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, f"new-workspace failed:\n{out.stderr}"
    return Path(out.stdout.strip())


@dataclass
class Connected:
    session: ClientSession
    init: types.InitializeResult
    workspace: Path

    @property
    def train_rs(self) -> Path:
        return self.workspace / "trainer/src/train.rs"

    async def call(self, tool: str, arguments: dict | None = None) -> types.CallToolResult:
        return await self.session.call_tool(tool, arguments or {}, read_timeout_seconds=30)


@pytest.fixture
async def server(workspace: Path, server_bin: Path, tmp_path: Path):
    """`autoresearch-mcp serve` on the workspace, with an initialised client session.

    The server's stderr goes to tmp_path/server.log (pytest's captured stderr has no file descriptor).
    """
    env = get_default_environment() | {"RUST_LOG": "warn"}
    env |= {k: os.environ[k] for k in ("AUTORESEARCH_PYENV", "XDG_CACHE_HOME") if k in os.environ}
    params = StdioServerParameters(command=str(server_bin), args=["-C", str(workspace), "serve"], env=env)
    with open(tmp_path / "server.log", "w") as log:
        async with stdio_client(params, errlog=log) as (read, write), ClientSession(read, write) as session:
            init = await session.initialize()
            yield Connected(session, init, workspace)

