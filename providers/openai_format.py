"""OpenAI wire shapes: chat.completion, chat.completion.chunk, SSE frames, errors, the model list."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from feedback.services.outcomes import TokenCount
from providers.adapters.base import Completion
from providers.adapters.simulated import SIMULATED_FINGERPRINT

if TYPE_CHECKING:
    from providers.execution import Plan

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def completion_id(decision_id: str) -> str:
    return "chatcmpl-" + decision_id.replace("-", "")


def usage_body(tokens: TokenCount) -> dict[str, Any]:
    return {
        "prompt_tokens": tokens.input_tokens,
        "completion_tokens": tokens.output_tokens,
        "total_tokens": tokens.input_tokens + tokens.output_tokens,
    }


def scope_block(plan: Plan, *, fallbacks: Sequence[str], simulated: bool, **extra: Any) -> dict[str, Any]:
    return {
        "decision_id": plan.decision_id,
        "policy": plan.policy_slug,
        "strategy": plan.strategy,
        "fallbacks": list(fallbacks),
        "simulated": simulated,
        **extra,
    }


def completion_body(
    *,
    plan: Plan,
    model: str,
    completion: Completion,
    tokens: TokenCount,
    simulated: bool,
    cost_usd: float,
    fallbacks: Sequence[str],
) -> dict[str, Any]:
    message = {"role": "assistant", "content": None, **completion.message}
    body: dict[str, Any] = {
        "id": completion_id(plan.decision_id),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": completion.finish_reason,
                "logprobs": completion.logprobs,
            }
        ],
        "usage": usage_body(tokens),
        "system_fingerprint": SIMULATED_FINGERPRINT if simulated else completion.system_fingerprint,
        "scope": scope_block(
            plan,
            fallbacks=fallbacks,
            simulated=simulated,
            tokens_estimated=tokens.estimated,
            cost_usd=cost_usd,
        ),
    }
    if simulated:
        body["scope_simulated"] = True
    return body


def chunk(
    *,
    decision_id: str,
    model: str,
    created: int,
    delta: Mapping[str, Any] | None = None,
    finish_reason: str | None = None,
    usage: TokenCount | None = None,
    simulated: bool = False,
    logprobs: Any = None,
    system_fingerprint: str | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": completion_id(decision_id),
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": SIMULATED_FINGERPRINT if simulated else system_fingerprint,
        "choices": []
        if usage is not None
        else [{"index": 0, "delta": dict(delta or {}), "finish_reason": finish_reason, "logprobs": logprobs}],
    }
    if usage is not None:
        body["usage"] = usage_body(usage)
    if simulated:
        body["scope_simulated"] = True
    return body


def sse(data: Mapping[str, Any] | str) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {text}\n\n".encode()


def error_type(status: int) -> str:
    return _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def error_body(
    *, status: int, message: str, code: str | None, param: str | None = None, **extra: Any
) -> dict[str, Any]:
    """OpenAI's error shape: {"error": {"message", "type", "param", "code"}} (plus SCOPE's extras)."""
    return {"error": {"message": message, "type": error_type(status), "param": param, "code": code, **extra}}


def model_entry(model_id: str, *, owned_by: str, created: int = 0, **extra: Any) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": owned_by, **extra}
