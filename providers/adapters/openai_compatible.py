"""OpenAI chat completions and everything that speaks it (vLLM, Ollama, llama.cpp, OpenRouter, …)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from providers.adapters.base import (
    ChatRequest,
    Completion,
    StreamEvent,
    Target,
    bad_body,
    join_url,
    usage_from,
)
from providers.http import ProviderError, http_post, iter_sse


def _headers(target: Target) -> dict[str, str]:
    key = target.api_key()
    return {"Authorization": f"Bearer {key}"} if key else {}


def _payload(target: Target, request: ChatRequest, *, stream: bool) -> dict[str, Any]:
    payload: dict[str, Any] = {
        **request.params,
        "model": target.upstream_model,
        "messages": list(request.messages),
    }
    if request.max_tokens is not None:
        payload[request.max_tokens_param] = request.max_tokens
    if stream:
        payload["stream"] = True
        # ask for the usage chunk so outcomes carry real token counts
        payload["stream_options"] = {"include_usage": True}
    return payload


def _fingerprint(body: dict[str, Any]) -> str | None:
    value = body.get("system_fingerprint")
    return value if isinstance(value, str) else None


class OpenAICompatibleAdapter:
    kind = "openai_compatible"
    simulated = False

    def complete(self, target: Target, request: ChatRequest) -> Completion:
        response = http_post(
            join_url(target.base_url, "chat/completions"),
            payload=_payload(target, request, stream=False),
            headers=_headers(target),
            connect_timeout_s=target.connect_timeout_s,
            read_timeout_s=target.read_timeout_s,
        )
        try:
            body = response.json()
        except ValueError:
            raise bad_body("not JSON") from None
        choices = body.get("choices") if isinstance(body, dict) else None
        if not choices or not isinstance(choices[0], dict) or not isinstance(choices[0].get("message"), dict):
            raise bad_body("no choices[0].message")
        usage = body.get("usage") or {}
        return Completion(
            message=choices[0]["message"],
            finish_reason=str(choices[0].get("finish_reason") or "stop"),
            usage=usage_from(usage.get("prompt_tokens"), usage.get("completion_tokens")),
            logprobs=choices[0].get("logprobs"),
            system_fingerprint=_fingerprint(body),
        )

    def stream(self, target: Target, request: ChatRequest) -> Iterator[StreamEvent]:
        response = http_post(
            join_url(target.base_url, "chat/completions"),
            payload=_payload(target, request, stream=True),
            headers=_headers(target),
            connect_timeout_s=target.connect_timeout_s,
            read_timeout_s=target.read_timeout_s,
            stream=True,
        )
        return self._events(response)

    def _events(self, response: Any) -> Iterator[StreamEvent]:
        for _event, data in iter_sse(response):
            if data.strip() == "[DONE]":
                return
            try:
                chunk = json.loads(data)
            except ValueError:
                raise bad_body("a stream chunk that is not JSON") from None
            if not isinstance(chunk, dict):
                raise bad_body("a stream chunk that is not an object")
            if "error" in chunk:
                err = chunk["error"]
                message = err.get("message") if isinstance(err, dict) else str(err)
                raise ProviderError(
                    f"upstream stream error: {message}", permanent=False, error_class="stream_error"
                )
            usage = chunk.get("usage") or {}
            choices = chunk.get("choices") or []
            choice = choices[0] if choices and isinstance(choices[0], dict) else {}
            raw_delta = choice.get("delta")
            delta: dict[str, Any] = raw_delta if isinstance(raw_delta, dict) else {}
            yield StreamEvent(
                delta=delta,
                finish_reason=choice.get("finish_reason"),
                usage=usage_from(usage.get("prompt_tokens"), usage.get("completion_tokens")),
                logprobs=choice.get("logprobs"),
                system_fingerprint=_fingerprint(chunk),
            )
        raise ProviderError(
            "upstream closed the stream before [DONE]", permanent=False, error_class="stream_cut"
        )
