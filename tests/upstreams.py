"""Fake upstream LLM servers on 127.0.0.1 with fault injection, for provider and endpoint tests.

    with FakeUpstream(style="openai") as up:          # or style="anthropic"
        up.script(Fail(500), Fail(429, retry_after="0.2"), Reply("hi"))
        ... up.base_url ...                             # http://127.0.0.1:<port>/v1
        up.requests                                     # what SCOPE sent (path, headers, json)

Each request takes the next scripted action; when the script is empty, `default` answers.
Actions: Reply (JSON answer or, for stream requests, a clean stream), Fail (status + headers),
Hang (no answer for a while: timeouts), Stream (delays between chunks, cut midway, stall).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Reply:
    text: str = "Hello from the fake upstream."
    usage: bool = True  # report usage (else SCOPE must estimate)
    prompt_tokens: int = 11
    completion_tokens: int = 7


@dataclass(frozen=True)
class Fail:
    status: int = 500
    message: str = "injected failure"
    retry_after: str | None = None


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
            action = upstream.next_action()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # SCOPE gave up on us: fine
                self._serve(action, body)

        def _serve(self, action: Action, body: dict[str, Any]) -> None:
            if isinstance(action, Hang):
                time.sleep(action.seconds)
                action = Reply()
            if isinstance(action, Fail):
                payload = json.dumps({"error": {"message": action.message, "type": "injected"}}).encode()
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
                    else Stream(pieces=_split(action.text), usage=action.usage)
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
                self._event(_chunk(body, {"role": "assistant", "content": ""}))
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
                    self._event(_chunk(body, {"content": piece}))
            if anthropic:
                usage = {"output_tokens": len(stream.pieces)} if stream.usage else {}
                self._event(
                    {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": usage},
                    "message_delta",
                )
                self._event({"type": "message_stop"}, "message_stop")
                return
            self._event(_chunk(body, {}, finish_reason="stop"))
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

        def do_GET(self) -> None:
            self.send_response(404)
            self.end_headers()

    return Handler


def _split(text: str) -> tuple[str, ...]:
    words = text.split(" ")
    return tuple(w if i == len(words) - 1 else w + " " for i, w in enumerate(words))


def _chunk(body: dict[str, Any], delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    return {
        "id": "up-1",
        "object": "chat.completion.chunk",
        "model": body.get("model"),
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }


def _answer(style: str, reply: Reply, body: dict[str, Any]) -> dict[str, Any]:
    if style == "anthropic":
        answer: dict[str, Any] = {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": body.get("model"),
            "content": [{"type": "text", "text": reply.text}],
            "stop_reason": "end_turn",
        }
        if reply.usage:
            answer["usage"] = {"input_tokens": reply.prompt_tokens, "output_tokens": reply.completion_tokens}
        return answer
    answer = {
        "id": "up-1",
        "object": "chat.completion",
        "model": body.get("model"),
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": reply.text}, "finish_reason": "stop"}
        ],
    }
    if reply.usage:
        answer["usage"] = {
            "prompt_tokens": reply.prompt_tokens,
            "completion_tokens": reply.completion_tokens,
            "total_tokens": reply.prompt_tokens + reply.completion_tokens,
        }
    return answer
