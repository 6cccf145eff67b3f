#!/usr/bin/env python3
"""A scripted stand-in for the Anthropic Messages API, for testing the real Claude Code CLI offline.

Standard library only. Listens on 127.0.0.1 and replays a script: every conversation request
(POST /v1/messages whose body offers tools or continues a conversation) takes the next turn of the
script; the model side of the test is therefore fully scripted. Every request the CLI sends is
recorded as a JSON file, so tests can assert which tools were offered and what tool results came back.

Usage, as a program:
    fake_anthropic.py --script SCRIPT.json --record DIR [--port 0]
It prints `listening on http://127.0.0.1:PORT` on stdout once it accepts connections.
From Python (the tests): `with FakeAnthropic(turns, record_dir) as api: ... api.url, api.conversation()`.

A script is a JSON list of turns; each turn is one of
    {"text": "..."}                                   an answer that ends the turn (stop_reason end_turn)
    {"tool_use": [{"name": "...", "input": {...}}], "text": "optional preamble"}
                                                      tool calls (stop_reason tool_use); names may be
                                                      tools the CLI did not offer
    {"error": 529} / {"error": 401} / {"error": 500}  an API error with the API's JSON error body
Optional keys on any turn: "delay" (seconds to wait before answering).
When the script is exhausted every conversation request gets {"text": "(script finished)"}.

Requests that are not conversation turns (title or topic generation, quota probes, count_tokens,
anything else) get harmless answers and consume no turn.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

SECRET_HEADERS = ("authorization", "x-api-key")
ERRORS = {
    400: ("invalid_request_error", "scripted invalid request"),
    401: ("authentication_error", "invalid x-api-key"),
    403: ("permission_error", "scripted permission error"),
    429: ("rate_limit_error", "scripted rate limit"),
    500: ("api_error", "scripted internal server error"),
    529: ("overloaded_error", "Overloaded"),
}


class Script:
    def __init__(self, turns: list[dict], record: Path):
        self.turns = list(turns)
        self.record = record
        self.lock = threading.Lock()
        self.seq = itertools.count(1)
        self.tool_ids = itertools.count(1)
        record.mkdir(parents=True, exist_ok=True)

        self.entries: list[dict] = []

    def next_turn(self) -> dict:
        with self.lock:
            return self.turns.pop(0) if self.turns else {"text": "(script finished)"}

    def save(self, entry: dict) -> None:
        with self.lock:
            n = next(self.seq)
            entry["seq"] = n
            entry["time"] = time.time()
            self.entries.append(entry)
        path = self.record / f"{n:05d}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(entry, indent=1))
        tmp.rename(path)


def is_conversation(body: dict) -> bool:
    """A main-loop request: it offers tools, or carries tool results. Side requests (titles, quota
    probes, summaries) offer no tools."""
    if body.get("tools"):
        return True
    for m in body.get("messages", []):
        content = m.get("content")
        if isinstance(content, list) and any(isinstance(b, dict) and b.get("type") == "tool_result" for b in content):
            return True
    return False


def sse(events: list[tuple[str, dict]]) -> bytes:
    return b"".join(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in events)


def message_events(turn: dict, model: str, tool_ids) -> tuple[list[tuple[str, dict]], str]:
    msg_id = f"msg_fake_{next(tool_ids):06d}"
    events: list[tuple[str, dict]] = [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": msg_id,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {
                        "input_tokens": 100,
                        "output_tokens": 1,
                        "cache_creation_input_tokens": 0,
                        "cache_read_input_tokens": 0,
                    },
                },
            },
        ),
        ("ping", {"type": "ping"}),
    ]
    blocks = []
    if turn.get("text"):
        blocks.append(("text", turn["text"]))
    for call in turn.get("tool_use", []):
        blocks.append(("tool_use", call))
    for index, (kind, value) in enumerate(blocks):
        if kind == "text":
            events.append(
                (
                    "content_block_start",
                    {"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}},
                )
            )
            events.append(
                (
                    "content_block_delta",
                    {"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": value}},
                )
            )
        else:
            tool_id = value.get("id") or f"toolu_fake_{next(tool_ids):06d}"
            start = {"type": "tool_use", "id": tool_id, "name": value["name"], "input": {}}
            begin = {"type": "content_block_start", "index": index, "content_block": start}
            events.append(("content_block_start", begin))
            raw = json.dumps(value.get("input", {}))
            # Two fragments, as the real API splits its input JSON.
            for part in (raw[: len(raw) // 2], raw[len(raw) // 2 :]):
                delta = {"type": "input_json_delta", "partial_json": part}
                events.append(("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}))
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    stop = "tool_use" if turn.get("tool_use") else "end_turn"
    events.append(
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop, "stop_sequence": None},
                "usage": {"output_tokens": 20},
            },
        )
    )
    events.append(("message_stop", {"type": "message_stop"}))
    return events, stop


def make_handler(script: Script):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # quiet: the record directory is the log
            pass

        def reply(self, status: int, body: bytes, content_type: str = "application/json", extra=()) -> None:
            self.send_response(status)
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(body)))
            self.send_header("request-id", "req_fake")
            for k, v in extra:
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def read_body(self) -> bytes:
            n = int(self.headers.get("content-length") or 0)
            return self.rfile.read(n) if n else b""

        def record(self, body, answer: dict) -> None:
            script.save(
                {
                    "method": self.command,
                    "path": self.path,
                    "headers": {k.lower(): v for k, v in self.headers.items() if k.lower() not in SECRET_HEADERS},
                    "has_api_key": bool(self.headers.get("x-api-key") or self.headers.get("authorization")),
                    "body": body,
                    "answer": answer,
                }
            )

        def do_GET(self):
            self.read_body()
            self.record(None, {"kind": "other"})
            self.reply(200, b"{}")

        def do_HEAD(self):
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def do_POST(self):
            raw = self.read_body()
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw.decode(errors="replace")
            path = self.path.split("?")[0]
            if path.endswith("/count_tokens"):
                self.record(body, {"kind": "count_tokens"})
                return self.reply(200, json.dumps({"input_tokens": 100}).encode())
            if not path.endswith("/v1/messages") or not isinstance(body, dict):
                self.record(body, {"kind": "other"})
                return self.reply(200, b"{}")
            model = body.get("model", "claude-fake")
            if not is_conversation(body):
                self.record(body, {"kind": "side"})
                return self.send_message(body, {"text": "ok"}, model)
            turn = script.next_turn()
            # Recorded on arrival: a delayed answer (a model still "thinking") is already visible.
            if "error" in turn:
                self.record(body, {"kind": "error", "status": int(turn["error"])})
            else:
                self.record(body, {"kind": "turn", "turn": turn})
            if turn.get("delay"):
                time.sleep(float(turn["delay"]))
            if "error" in turn:
                status = int(turn["error"])
                kind, message = ERRORS.get(status, ("api_error", "scripted error"))
                payload = {"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_fake"}
                retry = [("x-should-retry", "false")] if status == 401 else []
                return self.reply(status, json.dumps(payload).encode(), extra=retry)
            try:
                self.send_message(body, turn, model)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client went away while the answer was delayed

        def send_message(self, body: dict, turn: dict, model: str) -> None:
            events, stop = message_events(turn, model, script.tool_ids)
            if body.get("stream"):
                return self.reply(200, sse(events), "text/event-stream", [("cache-control", "no-cache")])
            content = []
            if turn.get("text"):
                content.append({"type": "text", "text": turn["text"]})
            for ev, data in events:
                if ev == "content_block_start" and data["content_block"]["type"] == "tool_use":
                    content.append(data["content_block"])
            for c, call in zip([c for c in content if c["type"] == "tool_use"], turn.get("tool_use", [])):
                c["input"] = call.get("input", {})
            message = events[0][1]["message"] | {"content": content, "stop_reason": stop}
            self.reply(200, json.dumps(message).encode())

    return Handler


class FakeAnthropic:
    """The stand-in on a thread of this process: `url` for ANTHROPIC_BASE_URL, the recorded requests."""

    def __init__(self, turns: list[dict], record: Path):
        self.script = Script(turns, Path(record))
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(self.script))
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeAnthropic":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def requests(self) -> list[dict]:
        """Every request recorded so far, in arrival order."""
        with self.script.lock:
            return list(self.script.entries)

    def conversation(self) -> list[dict]:
        """The conversation requests (each took a turn of the script, or got a scripted error)."""
        return [e for e in self.requests() if e["answer"]["kind"] in ("turn", "error")]

    def remaining(self) -> int:
        with self.script.lock:
            return len(self.script.turns)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--script", type=Path, required=True)
    ap.add_argument("--record", type=Path, required=True)
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    turns = json.loads(args.script.read_text())
    script = Script(turns, args.record)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(script))
    server.daemon_threads = True
    print(f"listening on http://127.0.0.1:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
