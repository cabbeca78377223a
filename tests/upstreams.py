"""Fake upstream LLM servers on 127.0.0.1 with fault injection, for provider and endpoint tests.

    with FakeUpstream(style="openai") as up:          # or style="anthropic"
        up.script(Fail(500), Fail(429, retry_after="0.2"), Reply("hi"))
        ... up.base_url ...                             # http://127.0.0.1:<port>/v1
        up.requests                                     # what SCOPE sent (path, headers, json)

Each request takes the next scripted action; when the script is empty, `default` answers.
The openai style answers `logprobs: true` requests with per-token logprobs (`token_logprobs`),
whole or per chunk, and sends `system_fingerprint` when the action has one.
Actions: Reply (JSON answer or, for stream requests, a clean stream), Fail (status + headers),
Hang (no answer for a while: timeouts), Stream (delays between chunks, cut midway, stall).
The anthropic style can answer with tool calls (`Reply(tool_uses=(ToolUse(...),))`, streamed as
content_block_start + input_json_delta fragments) and checks each request the way the Messages
API does (`anthropic_request_problem`): a body it would refuse gets Anthropic's 400 error and
leaves the script untouched.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class ToolUse:
    """One tool call in an answer (anthropic style): a `tool_use` content block."""

    name: str
    input: dict[str, Any] = field(default_factory=dict)
    id: str = "toolu_01"


@dataclass(frozen=True)
class Reply:
    text: str = "Hello from the fake upstream."
    usage: bool = True  # report usage (else SCOPE must estimate)
    prompt_tokens: int = 11
    completion_tokens: int = 7
    tool_uses: tuple[ToolUse, ...] = ()  # anthropic style only; stop_reason becomes "tool_use"
    system_fingerprint: str | None = None  # openai style only


@dataclass(frozen=True)
class Fail:
    status: int = 500
    message: str = "injected failure"
    retry_after: str | None = None
    param: str | None = None  # OpenAI's error `param` (the request field at fault)


@dataclass(frozen=True)
class Hang:
    seconds: float = 2.0


@dataclass(frozen=True)
class Stream:
    pieces: tuple[str, ...] = ("Hel", "lo ", "wor", "ld.")
    delay: float = 0.0  # seconds between chunks (slow stream)
    first_delay: float = 0.0  # seconds before the first chunk
    cut_after: int | None = None  # close the connection after this many content chunks
    stall_after: int | None = None  # stop sending (but keep the connection) after this many
    stall_seconds: float = 2.0
    usage: bool = True
    tool_uses: tuple[ToolUse, ...] = ()  # anthropic style only: streamed after the text
    system_fingerprint: str | None = None  # openai style only: on every chunk


Action = Reply | Fail | Hang | Stream


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class FakeUpstream:
    style: str = "openai"  # openai | anthropic
    default: Action = field(default_factory=Reply)
    requests: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._script: deque[Action] = deque()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}" + ("/v1" if self.style == "openai" else "")

    def script(self, *actions: Action) -> None:
        with self._lock:
            self._script.extend(actions)

    def next_action(self) -> Action:
        with self._lock:
            return self._script.popleft() if self._script else self.default

    def __enter__(self) -> FakeUpstream:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(upstream: FakeUpstream) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # the connection closes after each answer: a cut is just a close

        def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
            pass

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            upstream.requests.append(
                Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
            )
            problem = anthropic_request_problem(body) if upstream.style == "anthropic" else None
            if problem is not None:
                self._refuse(problem)
                return
            action = upstream.next_action()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # SCOPE gave up on us: fine
                self._serve(action, body)

        def _refuse(self, message: str) -> None:
            payload = json.dumps(
                {"type": "error", "error": {"type": "invalid_request_error", "message": message}}
            ).encode()
            self.send_response(400)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def _serve(self, action: Action, body: dict[str, Any]) -> None:
            if isinstance(action, Hang):
                time.sleep(action.seconds)
                action = Reply()
            if isinstance(action, Fail):
                error = {"message": action.message, "type": "injected", "param": action.param}
                payload = json.dumps({"error": error}).encode()
                self.send_response(action.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                if action.retry_after is not None:
                    self.send_header("Retry-After", action.retry_after)
                self.end_headers()
                self.wfile.write(payload)
                return
            if body.get("stream"):
                stream = (
                    action
                    if isinstance(action, Stream)
                    else Stream(
                        pieces=_split(action.text) if action.text else (),
                        usage=action.usage,
                        tool_uses=action.tool_uses,
                        system_fingerprint=action.system_fingerprint,
                    )
                )
                self._stream(stream, body)
                return
            assert isinstance(action, Reply)
            payload = json.dumps(_answer(upstream.style, action, body)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def _event(self, data: dict[str, Any] | str, event: str | None = None) -> None:
            text = data if isinstance(data, str) else json.dumps(data)
            prefix = f"event: {event}\n" if event else ""
            self.wfile.write(f"{prefix}data: {text}\n\n".encode())
            self.wfile.flush()

        def _stream(self, stream: Stream, body: dict[str, Any]) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            time.sleep(stream.first_delay)
            anthropic = upstream.style == "anthropic"
            if anthropic:
                self._event(
                    {"type": "message_start", "message": {"usage": {"input_tokens": 11, "output_tokens": 1}}},
                    "message_start",
                )
            else:
                self._event(_chunk(body, stream, {"role": "assistant", "content": ""}))
            if anthropic and stream.pieces:
                self._event(
                    {
                        "type": "content_block_start",
                        "index": 0,
                        "content_block": {"type": "text", "text": ""},
                    },
                    "content_block_start",
                )
            for i, piece in enumerate(stream.pieces):
                if stream.cut_after is not None and i >= stream.cut_after:
                    return  # connection closes: no [DONE] / message_stop
                if stream.stall_after is not None and i >= stream.stall_after:
                    time.sleep(stream.stall_seconds)
                    return
                if i:
                    time.sleep(stream.delay)
                if anthropic:
                    self._event(
                        {
                            "type": "content_block_delta",
                            "index": 0,
                            "delta": {"type": "text_delta", "text": piece},
                        },
                        "content_block_delta",
                    )
                else:
                    self._event(_chunk(body, stream, {"content": piece}))
            if anthropic:
                if stream.pieces:
                    self._event({"type": "content_block_stop", "index": 0}, "content_block_stop")
                for index, use in enumerate(stream.tool_uses, start=1 if stream.pieces else 0):
                    self._tool_use_events(index, use)
                usage = {"output_tokens": len(stream.pieces)} if stream.usage else {}
                stop_reason = "tool_use" if stream.tool_uses else "end_turn"
                self._event(
                    {"type": "message_delta", "delta": {"stop_reason": stop_reason}, "usage": usage},
                    "message_delta",
                )
                self._event({"type": "message_stop"}, "message_stop")
                return
            self._event(_chunk(body, stream, {}, finish_reason="stop"))
            if stream.usage and (body.get("stream_options") or {}).get("include_usage"):
                self._event(
                    {
                        "id": "up-1",
                        "object": "chat.completion.chunk",
                        "model": body.get("model"),
                        "choices": [],
                        "usage": {
                            "prompt_tokens": 11,
                            "completion_tokens": len(stream.pieces),
                            "total_tokens": 11 + len(stream.pieces),
                        },
                    }
                )
            self._event("[DONE]")

        def _tool_use_events(self, index: int, use: ToolUse) -> None:
            """As the Messages API streams a tool_use block: empty input first, then JSON fragments."""
            block = {"type": "tool_use", "id": use.id, "name": use.name, "input": {}}
            self._event(
                {"type": "content_block_start", "index": index, "content_block": block}, "content_block_start"
            )
            arguments = json.dumps(use.input) if use.input else ""
            third = max(1, len(arguments) // 3)
            fragments = [arguments[i : i + third] for i in range(0, len(arguments), third)] or [""]
            for fragment in fragments:
                self._event(
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": fragment},
                    },
                    "content_block_delta",
                )
            self._event({"type": "content_block_stop", "index": index}, "content_block_stop")

        def do_GET(self) -> None:
            self.send_response(404)
            self.end_headers()

    return Handler


def _split(text: str) -> tuple[str, ...]:
    words = text.split(" ")
    return tuple(w if i == len(words) - 1 else w + " " for i, w in enumerate(words))


def token_logprobs(text: str, body: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's choices[].logprobs for `text` (one token per word), with top_logprobs if asked."""
    top = body.get("top_logprobs") or 0
    content = [
        {
            "token": token,
            "logprob": -0.25,
            "bytes": list(token.encode()),
            "top_logprobs": [
                {"token": f"{token}{i}", "logprob": -0.25 * (i + 1), "bytes": None} for i in range(top)
            ],
        }
        for token in _split(text)
        if token
    ]
    return {"content": content, "refusal": None}


def _chunk(
    body: dict[str, Any], stream: Stream, delta: dict[str, Any], finish_reason: str | None = None
) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish_reason}
    if body.get("logprobs") and delta.get("content"):
        choice["logprobs"] = token_logprobs(delta["content"], body)
    chunk = {
        "id": "up-1",
        "object": "chat.completion.chunk",
        "model": body.get("model"),
        "choices": [choice],
    }
    if stream.system_fingerprint:
        chunk["system_fingerprint"] = stream.system_fingerprint
    return chunk


def _answer(style: str, reply: Reply, body: dict[str, Any]) -> dict[str, Any]:
    if style == "anthropic":
        content: list[dict[str, Any]] = [{"type": "text", "text": reply.text}] if reply.text else []
        content += [
            {"type": "tool_use", "id": u.id, "name": u.name, "input": u.input} for u in reply.tool_uses
        ]
        answer: dict[str, Any] = {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": body.get("model"),
            "content": content,
            "stop_reason": "tool_use" if reply.tool_uses else "end_turn",
        }
        if reply.usage:
            answer["usage"] = {"input_tokens": reply.prompt_tokens, "output_tokens": reply.completion_tokens}
        return answer
    assert not reply.tool_uses, "tool calls are scripted for the anthropic style only"
    choice: dict[str, Any] = {
        "index": 0,
        "message": {"role": "assistant", "content": reply.text},
        "finish_reason": "stop",
    }
    if body.get("logprobs"):
        choice["logprobs"] = token_logprobs(reply.text, body)
    answer = {
        "id": "up-1",
        "object": "chat.completion",
        "model": body.get("model"),
        "choices": [choice],
    }
    if reply.system_fingerprint:
        answer["system_fingerprint"] = reply.system_fingerprint
    if reply.usage:
        answer["usage"] = {
            "prompt_tokens": reply.prompt_tokens,
            "completion_tokens": reply.completion_tokens,
            "total_tokens": reply.prompt_tokens + reply.completion_tokens,
        }
    return answer


_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_TOOL_KEYS = {"name", "description", "input_schema", "cache_control"}
_BLOCKS = {"user": {"text", "image", "tool_result"}, "assistant": {"text", "tool_use"}}


def anthropic_request_problem(body: dict[str, Any]) -> str | None:
    """Why the Messages API would refuse `body` with a 400 (the rules SCOPE's mapping must meet), or None."""
    if not isinstance(body.get("model"), str) or not isinstance(body.get("max_tokens"), int):
        return "model and max_tokens are required"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    tools = body.get("tools")
    names: set[str] = set()
    if tools is not None:
        if not isinstance(tools, list):
            return "tools: must be a list"
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict) or set(tool) - _TOOL_KEYS:
                return f"tools.{i}: Extra inputs are not permitted"
            if not _TOOL_NAME.match(str(tool.get("name", ""))):
                return f"tools.{i}.name: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'"
            schema = tool.get("input_schema")
            if not isinstance(schema, dict) or schema.get("type") != "object":
                return f"tools.{i}.input_schema: Input should be an object schema (type: object)"
            names.add(tool["name"])
    choice = body.get("tool_choice")
    if choice is not None:
        if tools is None:
            return "tool_choice may only be specified while providing tools"
        if not isinstance(choice, dict) or choice.get("type") not in {"auto", "any", "tool", "none"}:
            return "tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'"
        if choice["type"] == "tool" and choice.get("name") not in names:
            return f"tool_choice.name: no tool named {choice.get('name')!r}"
        if "disable_parallel_tool_use" in choice and choice["type"] == "none":
            return "tool_choice.disable_parallel_tool_use: not permitted with type 'none'"
    pending: set[str] = set()  # tool_use ids of the previous assistant turn, still unanswered
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or set(message) - {"role", "content"}:
            return f"messages.{i}: Extra inputs are not permitted"
        role, content = message.get("role"), message.get("content")
        if role not in _BLOCKS:
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if not isinstance(blocks, list):
            return f"messages.{i}.content: Input should be a string or a list of blocks"
        results: list[str] = []
        seen_other = False
        for j, block in enumerate(blocks):
            kind = block.get("type") if isinstance(block, dict) else None
            if kind not in _BLOCKS[role]:
                return f"messages.{i}.content.{j}: a {role} message cannot hold a {kind!r} block"
            if kind in {"tool_use", "tool_result"} and tools is None:
                return "Requests which include `tool_use` or `tool_result` blocks must define tools."
            if kind == "text" and not block.get("text"):
                return f"messages.{i}.content.{j}: text content blocks must be non-empty"
            if kind == "tool_use":
                if not block.get("id") or not block.get("name") or not isinstance(block.get("input"), dict):
                    return f"messages.{i}.content.{j}: tool_use needs an id, a name and an input object"
            elif kind == "tool_result":
                if seen_other:
                    return f"messages.{i}: tool_result blocks must come before any other content"
                results.append(str(block.get("tool_use_id")))
            else:
                seen_other = True
        unexpected = [r for r in results if r not in pending]
        if unexpected:
            return f"messages.{i}: unexpected tool_use_id found in tool_result blocks: {unexpected[0]}"
        if pending and set(results) != pending:
            missing = sorted(pending - set(results))
            return (
                f"messages.{i}: tool_use ids were found without tool_result blocks immediately after: "
                f"{', '.join(missing)}"
            )
        pending = (
            {str(b["id"]) for b in blocks if b.get("type") == "tool_use"} if role == "assistant" else set()
        )
    return None
