"""autoresearch-mcp through the Python MCP SDK: the handshake, the tool surface, cheap tool calls,
refusals and malformed calls. No experiment is run here (slow; the Rust tests cover runs).
"""

from __future__ import annotations

import pytest
from mcp import MCPError, types

pytestmark = pytest.mark.anyio

SIX_TOOLS = ["append_scratchpad", "commit", "edit_train", "read_metrics", "revert", "run_experiment"]


def text(result: types.CallToolResult) -> str:
    """The text blocks of a tool result, joined."""
    return "\n".join(block.text for block in result.content if block.type == "text")


async def test_initialize_reports_the_server_and_program_md_as_instructions(server):
    assert server.init.server_info.name == "autoresearch-mcp"
    assert server.init.capabilities.tools is not None
    program = (server.workspace / "program.md").read_text()
    assert program.strip(), "program.md is not empty"
    assert program.strip() in (server.init.instructions or ""), "the instructions are program.md"


async def test_tools_list_is_exactly_the_six_tools_with_schemas(server):
    tools = {t.name: t for t in (await server.session.list_tools()).tools}
    assert sorted(tools) == SIX_TOOLS
    for t in tools.values():
        assert t.description and len(t.description) > 40, f"{t.name} needs a description"
        assert t.input_schema.get("type") == "object", t.name

    props = tools["edit_train"].input_schema["properties"]
    for p in ["command", "path", "view_range", "old_str", "new_str", "insert_line"]:
        assert p in props, f"edit_train schema lacks {p}"
        assert "description" in str(props[p]), f"edit_train.{p} has no description"

    # What is valid is what the schema says: 1 to 5 seeds; commit's reason is optional.
    seeds = tools["run_experiment"].input_schema["properties"]["seeds"]
    assert (seeds.get("minimum"), seeds.get("maximum")) == (1, 5), seeds
    commit = tools["commit"].input_schema
    assert "reason" in commit["properties"] and commit.get("required") == ["description"], commit

    out = tools["read_metrics"].output_schema
    assert out and out.get("type") == "object", "read_metrics declares an output schema"
    assert {"runs", "total_runs"} <= set(out.get("required", [])), out.get("required")


async def test_view_with_view_range_returns_numbered_lines(server):
    lines = server.train_rs.read_text().splitlines()
    r = await server.call("edit_train", {"command": "view", "view_range": [3, 7]})
    assert not r.is_error, text(r)
    assert text(r).splitlines() == [f"{n:>5}\t{lines[n - 1]}" for n in range(3, 8)]

    r = await server.call("edit_train", {"command": "view", "view_range": [len(lines) - 1, -1]})
    assert text(r).splitlines() == [f"{n:>5}\t{lines[n - 1]}" for n in (len(lines) - 1, len(lines))]


async def test_str_replace_then_revert_restores_train_rs_byte_for_byte(server):
    original = server.train_rs.read_bytes()
    line = next(ln for ln in original.decode().splitlines() if "const LEARNING_RATE" in ln)

    r = await server.call("edit_train", {"command": "str_replace", "old_str": line, "new_str": f"{line} // tuned"})
    assert not r.is_error, text(r)
    assert "+" in text(r) and "// tuned" in text(r), f"the diff is shown: {text(r)}"
    assert server.train_rs.read_bytes() != original

    r = await server.call("revert", {"reason": "python client test"})
    assert not r.is_error, text(r)
    assert server.train_rs.read_bytes() == original

    r = await server.call("revert", {})
    assert not r.is_error and "nothing to revert" in text(r), text(r)


REFUSALS = [
    pytest.param(
        "edit_train",
        {"command": "str_replace", "path": "trainer/src/lib.rs", "old_str": "a", "new_str": "b"},
        "only trainer/src/train.rs",
        id="other-path",
    ),
    pytest.param(
        "edit_train",
        {"command": "str_replace", "old_str": "this text is not in train.rs", "new_str": "x"},
        "not found",
        id="missing-match",
    ),
    pytest.param(
        "edit_train", {"command": "str_replace", "old_str": "let", "new_str": "let"}, "matches", id="non-unique-match"
    ),
    pytest.param(
        "append_scratchpad", {"entry": "hi \x1b[31mred"}, "control character", id="scratchpad-control-character"
    ),
]


@pytest.mark.parametrize(("tool", "arguments", "reason"), REFUSALS)
async def test_refusals_are_error_results_with_text_and_change_nothing(server, tool, arguments, reason):
    train, scratchpad = server.train_rs.read_bytes(), (server.workspace / "scratchpad.md").read_bytes()
    r = await server.call(tool, arguments)
    assert r.is_error, f"{tool} should refuse: {text(r)}"
    assert text(r).startswith("refused:") and reason in text(r), text(r)
    assert server.train_rs.read_bytes() == train
    assert (server.workspace / "scratchpad.md").read_bytes() == scratchpad


async def test_commit_of_an_unevaluated_train_rs_is_refused(server):
    r = await server.call("edit_train", {"command": "insert", "insert_line": 0, "new_str": "// unevaluated"})
    assert not r.is_error, text(r)
    r = await server.call("commit", {"description": "sneak it in"})
    assert r.is_error and "run_experiment first" in text(r), text(r)
    r = await server.call("read_metrics")
    assert r.structured_content["total_runs"] == 0


async def test_read_metrics_structured_content_matches_its_output_schema(server):
    tools = {t.name: t for t in (await server.session.list_tools()).tools}
    schema = tools["read_metrics"].output_schema
    r = await server.call("read_metrics", {"last": 5})
    assert not r.is_error, text(r)
    view = r.structured_content
    assert view["total_runs"] == 0 and view["runs"] == []
    assert view.get("best_kept") is None and view["kept"] is None and view["baseline"] is None
    assert view["in_flight"] is None
    try:
        import jsonschema
    except ImportError:
        assert set(schema.get("required", [])) <= set(view), (schema.get("required"), sorted(view))
    else:
        jsonschema.validate(view, schema)
    assert "0 of 0 runs" in text(r), text(r)


@pytest.mark.parametrize(
    ("tool", "arguments"),
    [
        pytest.param("edit_train", {"command": "explode"}, id="unknown-enum-value"),
        pytest.param("edit_train", {"command": "view", "view_range": "all"}, id="wrong-type"),
        pytest.param("commit", {}, id="missing-required-argument"),
        pytest.param("rm_rf", {}, id="unknown-tool"),
    ],
)
async def test_invalid_calls_fail_and_the_server_keeps_answering(server, tool, arguments):
    train = server.train_rs.read_bytes()
    try:
        r = await server.call(tool, arguments)
    except MCPError as e:  # a protocol error (invalid params, unknown tool)
        assert e.error.message, e
    else:
        assert r.is_error, f"invalid arguments must not succeed: {text(r)}"
    assert server.train_rs.read_bytes() == train

    r = await server.call("read_metrics", {"last": 3})
    assert not r.is_error and r.structured_content["total_runs"] == 0, "the server is still healthy"
