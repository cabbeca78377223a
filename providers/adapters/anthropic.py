"""Anthropic's Messages API, mapped to and from the chat-completions format.

Mapped: system/developer messages → `system`; text and image parts; `max_tokens` (required by
Anthropic, defaulted), temperature (clamped to Anthropic's 0–1), top_p, stop → stop_sequences,
user → metadata.user_id; stop_reason → finish_reason; usage; the streaming event sequence.
Not mapped: tools / tool calls (a request with tools is refused here, so it falls back to a
model that takes it).
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
_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls"}


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
    if kind == "text":
        return {"type": "text", "text": str(part.get("text", ""))}
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


def to_messages_body(target: Target, request: ChatRequest, *, stream: bool) -> dict[str, Any]:
    if request.params.get("tools") or any(
        m.get("tool_calls") or m.get("role") == "tool" for m in request.messages
    ):
        raise ProviderError(
            "the anthropic adapter does not map tools yet", permanent=True, error_class="unsupported"
        )
    system: list[str] = []
    messages: list[dict[str, Any]] = []
    for message in request.messages:
        role = message.get("role")
        if role in {"system", "developer"}:
            system.append(_text(message.get("content")))
            continue
        role = "assistant" if role == "assistant" else "user"
        blocks = _blocks(message.get("content"))
        if not blocks:
            continue
        if messages and messages[-1]["role"] == role:  # Anthropic wants turns to alternate
            messages[-1]["content"].extend(blocks)
        else:
            messages.append({"role": role, "content": blocks})
    body: dict[str, Any] = {
        "model": target.upstream_model,
        "messages": messages,
        "max_tokens": request.max_tokens or DEFAULT_MAX_TOKENS,
    }
    if system:
        body["system"] = "\n\n".join(s for s in system if s)
    params = request.params
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
        text = "".join(
            str(b.get("text", "")) for b in body["content"] if isinstance(b, dict) and b.get("type") == "text"
        )
        usage = body.get("usage") or {}
        return Completion(
            message={"role": "assistant", "content": text},
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
            elif kind == "content_block_delta":
                delta = payload.get("delta") or {}
                if delta.get("type") == "text_delta":
                    yield StreamEvent(delta={"content": str(delta.get("text", ""))})
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
