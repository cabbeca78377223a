"""Anthropic's Messages API, mapped to and from the chat-completions format.

Mapped: system/developer messages → `system`; text and image parts; `max_tokens` (required by
Anthropic, defaulted), temperature (clamped to Anthropic's 0–1), top_p, stop → stop_sequences,
user → metadata.user_id; stop_reason → finish_reason; usage; the streaming event sequence.
Tools both ways: OpenAI `tools` / `tool_choice` / `parallel_tool_calls` → Anthropic `tools`
(`input_schema`) / `tool_choice` (`disable_parallel_tool_use`); assistant `tool_calls` →
`tool_use` blocks and `role: tool` messages → `tool_result` blocks (first in their user turn, as
Anthropic requires); answers' `tool_use` blocks → `tool_calls` with finish_reason `tool_calls`,
streamed as OpenAI tool-call deltas (`index`, then `id`/`name`, then argument fragments).
`response_format` json_object / json_schema → an instruction appended to `system` (Anthropic has
no JSON mode; the schema is quoted, not enforced).
Not mapped: tool types other than `function` (refused as unsupported, naming `tools[i].type`: another
model in the decision can take the request, and when none can the client gets a 400).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

from providers.adapters.base import (
    ChatRequest,
    Completion,
    StreamEvent,
    Target,
    Usage,
    bad_body,
    join_url,
    usage_from,
)
from providers.http import ProviderError, http_post, iter_sse

API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096
_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def _url(target: Target) -> str:
    base = target.base_url.rstrip("/")
    return join_url(base, "messages" if base.endswith("/v1") else "v1/messages")


def _headers(target: Target) -> dict[str, str]:
    headers = {"anthropic-version": API_VERSION}
    key = target.api_key()
    if key:
        headers["x-api-key"] = key
    return headers


def _part(part: Mapping[str, Any]) -> dict[str, Any] | None:
    kind = part.get("type")
    if kind == "text":  # Anthropic refuses empty text blocks
        text = str(part.get("text", ""))
        return {"type": "text", "text": text} if text else None
    if kind == "image_url":
        image = part.get("image_url")
        url = image.get("url", "") if isinstance(image, Mapping) else str(image or "")
        if url.startswith("data:") and ";base64," in url:
            media_type, _, data = url[5:].partition(";base64,")
            return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
        return {"type": "image", "source": {"type": "url", "url": url}}
    return None


def _blocks(content: Any) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks = [_part(p) for p in content if isinstance(p, Mapping)]
    return [b for b in blocks if b is not None]


def _text(content: Any) -> str:
    return "\n".join(b["text"] for b in _blocks(content) if b["type"] == "text")


def _bad_request(message: str) -> ProviderError:
    """The caller's request cannot be expressed for any model (400 to the client, no fallback)."""
    return ProviderError(message, permanent=True, error_class="bad_request", status=400)


def _tools(raw: Any) -> list[dict[str, Any]]:
    if not isinstance(raw, list):
        raise _bad_request("tools must be an array")
    tools = []
    for i, tool in enumerate(raw):
        if not isinstance(tool, Mapping) or tool.get("type", "function") != "function":
            kind = tool.get("type") if isinstance(tool, Mapping) else type(tool).__name__
            raise ProviderError(
                f"tools[{i}].type {kind!r} is not supported by anthropic models (only 'function' tools)",
                permanent=True,
                error_class="unsupported",
                param=f"tools[{i}].type",
            )
        function = tool.get("function")
        if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
            raise _bad_request(f"tools[{i}].function.name is required")
        schema = function.get("parameters")
        if schema is not None and not isinstance(schema, Mapping):
            raise _bad_request(f"tools[{i}].function.parameters must be a JSON Schema object")
        mapped: dict[str, Any] = {
            "name": function["name"],
            # Anthropic requires a schema; OpenAI lets a function without parameters take none
            "input_schema": dict(schema) if schema else {"type": "object", "properties": {}},
        }
        if function.get("description"):
            mapped["description"] = str(function["description"])
        tools.append(mapped)
    return tools


def _tool_choice(raw: Any, *, parallel: Any) -> dict[str, Any] | None:
    choice: dict[str, Any] | None
    if raw is None:
        choice = None
    elif raw == "auto":
        choice = {"type": "auto"}
    elif raw == "required":
        choice = {"type": "any"}
    elif raw == "none":
        choice = {"type": "none"}
    elif (
        isinstance(raw, Mapping)
        and raw.get("type") == "function"
        and isinstance(raw.get("function"), Mapping)
        and isinstance(raw["function"].get("name"), str)
    ):
        choice = {"type": "tool", "name": raw["function"]["name"]}
    else:
        raise _bad_request(
            "tool_choice must be 'auto', 'required', 'none' or {'type': 'function', 'function': {'name': …}}"
        )
    if parallel is False and (choice is None or choice["type"] != "none"):
        choice = {**(choice or {"type": "auto"}), "disable_parallel_tool_use": True}
    return choice


def _tool_use(call: Any, where: str) -> dict[str, Any]:
    function = call.get("function") if isinstance(call, Mapping) else None
    if not isinstance(function, Mapping) or not isinstance(function.get("name"), str) or not call.get("id"):
        raise _bad_request(f"{where} needs an id and function.name")
    arguments = function.get("arguments") or "{}"
    try:
        parsed = json.loads(arguments) if isinstance(arguments, str) else arguments
    except ValueError:
        raise _bad_request(f"{where}.function.arguments is not valid JSON") from None
    if not isinstance(parsed, dict):
        raise _bad_request(f"{where}.function.arguments must be a JSON object")
    return {"type": "tool_use", "id": str(call["id"]), "name": function["name"], "input": parsed}


def _tool_result(message: Mapping[str, Any], where: str) -> dict[str, Any]:
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str) or not call_id:
        raise _bad_request(f"{where}.tool_call_id is required for a tool message")
    result: dict[str, Any] = {"type": "tool_result", "tool_use_id": call_id}
    content = message.get("content")
    if isinstance(content, str):
        if content:
            result["content"] = content
    elif content:
        result["content"] = _blocks(content)
    return result


def _turn(message: Mapping[str, Any], where: str) -> tuple[str, list[dict[str, Any]]]:
    """One chat message as an Anthropic (role, content blocks)."""
    role = message.get("role")
    if role == "tool":
        return "user", [_tool_result(message, where)]
    if role == "assistant":
        calls = message.get("tool_calls") or []
        if not isinstance(calls, list):
            raise _bad_request(f"{where}.tool_calls must be an array")
        uses = [_tool_use(call, f"{where}.tool_calls[{j}]") for j, call in enumerate(calls)]
        return "assistant", _blocks(message.get("content")) + uses
    return "user", _blocks(message.get("content"))


def to_messages_body(target: Target, request: ChatRequest, *, stream: bool) -> dict[str, Any]:
    system: list[str] = []
    messages: list[dict[str, Any]] = []
    for i, message in enumerate(request.messages):
        if message.get("role") in {"system", "developer"}:
            system.append(_text(message.get("content")))
            continue
        role, blocks = _turn(message, f"messages[{i}]")
        if not blocks:
            continue
        if messages and messages[-1]["role"] == role:  # Anthropic wants turns to alternate
            messages[-1]["content"].extend(blocks)
        else:
            messages.append({"role": role, "content": blocks})
    for turn in messages:  # in a user turn, Anthropic wants every tool_result before any other block
        if turn["role"] == "user":
            turn["content"].sort(key=lambda b: b["type"] != "tool_result")
    body: dict[str, Any] = {
        "model": target.upstream_model,
        "messages": messages,
        "max_tokens": request.max_tokens or DEFAULT_MAX_TOKENS,
    }
    params = request.params
    json_mode = _json_instruction(params.get("response_format"))
    if json_mode:  # Anthropic has no response_format: the instruction goes in the system prompt
        system.append(json_mode)
    if system:
        body["system"] = "\n\n".join(s for s in system if s)
    if params.get("tools"):
        body["tools"] = _tools(params["tools"])
        choice = _tool_choice(params.get("tool_choice"), parallel=params.get("parallel_tool_calls"))
        if choice is not None:
            body["tool_choice"] = choice
    if request.temperature is not None:
        body["temperature"] = max(0.0, min(1.0, request.temperature))
    if isinstance(params.get("top_p"), int | float):
        body["top_p"] = params["top_p"]
    stop = params.get("stop")
    if stop:
        body["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if isinstance(params.get("user"), str) and params["user"]:
        body["metadata"] = {"user_id": params["user"]}
    if stream:
        body["stream"] = True
    return body


def _json_instruction(response_format: Any) -> str:
    """OpenAI's JSON modes as an instruction ("" for text or none): Anthropic follows it, unenforced."""
    kind = response_format.get("type") if isinstance(response_format, Mapping) else None
    if kind == "json_object":
        return "Answer with one JSON object and nothing else: no prose, no code fences."
    if kind == "json_schema":
        spec = response_format.get("json_schema") if isinstance(response_format, Mapping) else None
        schema = spec.get("schema") if isinstance(spec, Mapping) else None
        return (
            "Answer with one JSON object and nothing else (no prose, no code fences) that conforms to "
            f"this JSON Schema: {json.dumps(schema, sort_keys=True)}"
        )
    return ""


def from_message_content(content: list[Any]) -> dict[str, Any]:
    """An Anthropic answer's content blocks as an OpenAI assistant message (text and tool_calls)."""
    text = "".join(str(b.get("text", "")) for b in content if isinstance(b, dict) and b.get("type") == "text")
    calls = [
        {
            "id": str(b.get("id", "")),
            "type": "function",
            "function": {"name": str(b.get("name", "")), "arguments": json.dumps(b.get("input") or {})},
        }
        for b in content
        if isinstance(b, dict) and b.get("type") == "tool_use"
    ]
    if not calls:
        return {"role": "assistant", "content": text}
    # OpenAI's shape: content is null when the assistant only calls tools
    return {"role": "assistant", "content": text or None, "tool_calls": calls}


class _StreamedToolCalls:
    """Anthropic's tool_use content blocks (numbered among all blocks) as OpenAI tool-call deltas
    (numbered among the tool calls): the first delta carries id, type and name, later ones append
    to `function.arguments`."""

    def __init__(self) -> None:
        self._by_block: dict[Any, int] = {}
        self._with_arguments: set[int] = set()

    def start(self, block: Any, content_block: Mapping[str, Any]) -> dict[str, Any] | None:
        if content_block.get("type") != "tool_use":
            return None
        index = self._by_block[block] = len(self._by_block)
        given = content_block.get("input")
        arguments = json.dumps(given) if given else ""  # the API streams the input; {} means "to follow"
        if arguments:
            self._with_arguments.add(index)
        call = {
            "index": index,
            "id": str(content_block.get("id", "")),
            "type": "function",
            "function": {"name": str(content_block.get("name", "")), "arguments": arguments},
        }
        return {"tool_calls": [call]}

    def arguments(self, block: Any, fragment: str) -> dict[str, Any] | None:
        index = self._by_block.get(block)
        if index is None or not fragment:
            return None
        self._with_arguments.add(index)
        return {"tool_calls": [{"index": index, "function": {"arguments": fragment}}]}

    def stop(self, block: Any) -> dict[str, Any] | None:
        """A tool without parameters streams no input at all: its arguments are still a JSON object."""
        index = self._by_block.get(block)
        if index is None or index in self._with_arguments:
            return None
        self._with_arguments.add(index)
        return {"tool_calls": [{"index": index, "function": {"arguments": "{}"}}]}


class AnthropicAdapter:
    kind = "anthropic"
    simulated = False

    def complete(self, target: Target, request: ChatRequest) -> Completion:
        response = http_post(
            _url(target),
            payload=to_messages_body(target, request, stream=False),
            headers=_headers(target),
            connect_timeout_s=target.connect_timeout_s,
            read_timeout_s=target.read_timeout_s,
        )
        try:
            body = response.json()
        except ValueError:
            raise bad_body("not JSON") from None
        if not isinstance(body, dict) or not isinstance(body.get("content"), list):
            raise bad_body("no content list")
        usage = body.get("usage") or {}
        return Completion(
            message=from_message_content(body["content"]),
            finish_reason=_FINISH.get(str(body.get("stop_reason")), "stop"),
            usage=usage_from(usage.get("input_tokens"), usage.get("output_tokens")),
        )

    def stream(self, target: Target, request: ChatRequest) -> Iterator[StreamEvent]:
        response = http_post(
            _url(target),
            payload=to_messages_body(target, request, stream=True),
            headers=_headers(target),
            connect_timeout_s=target.connect_timeout_s,
            read_timeout_s=target.read_timeout_s,
            stream=True,
        )
        return self._events(response)

    def _events(self, response: Any) -> Iterator[StreamEvent]:
        input_tokens: int | None = None
        calls = _StreamedToolCalls()
        for event, data in iter_sse(response):
            try:
                payload = json.loads(data)
            except ValueError:
                raise bad_body("a stream event that is not JSON") from None
            kind = payload.get("type", event) if isinstance(payload, dict) else event
            if kind == "message_start":
                usage = (payload.get("message") or {}).get("usage") or {}
                if isinstance(usage.get("input_tokens"), int):
                    input_tokens = usage["input_tokens"]
                yield StreamEvent(delta={"role": "assistant", "content": ""})
            elif kind == "content_block_start":
                started = calls.start(payload.get("index"), payload.get("content_block") or {})
                if started:
                    yield StreamEvent(delta=started)
            elif kind == "content_block_delta":
                delta = payload.get("delta") or {}
                if delta.get("type") == "text_delta":
                    yield StreamEvent(delta={"content": str(delta.get("text", ""))})
                elif delta.get("type") == "input_json_delta":
                    fragment = calls.arguments(payload.get("index"), str(delta.get("partial_json", "")))
                    if fragment:
                        yield StreamEvent(delta=fragment)
            elif kind == "content_block_stop":
                closing = calls.stop(payload.get("index"))
                if closing:
                    yield StreamEvent(delta=closing)
            elif kind == "message_delta":
                usage = payload.get("usage") or {}
                output_tokens = usage.get("output_tokens")
                stop_reason = (payload.get("delta") or {}).get("stop_reason")
                yield StreamEvent(
                    finish_reason=_FINISH.get(str(stop_reason), "stop") if stop_reason else None,
                    usage=Usage(input_tokens, output_tokens)
                    if isinstance(input_tokens, int) and isinstance(output_tokens, int)
                    else None,
                )
            elif kind == "message_stop":
                return
            elif kind == "error":
                err = payload.get("error") or {}
                raise ProviderError(
                    f"upstream stream error: {err.get('type', 'error')}: {err.get('message', '')}",
                    permanent=False,
                    error_class="stream_error",
                )
        raise ProviderError(
            "upstream closed the stream before message_stop", permanent=False, error_class="stream_cut"
        )
