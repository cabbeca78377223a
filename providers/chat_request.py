"""Parse and validate an OpenAI chat-completions body (pure; errors name the offending param)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from providers.adapters.base import ChatRequest
from routing.capabilities import request_capabilities
from routing.field_names import unknown_fields, unknown_fields_message
from scope_site.errors import InvalidRequest

AUTO_MODEL = "scope/auto"
POLICY_PREFIX = "scope/"
ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
# OpenAI options forwarded to the upstream as they are (adapters map what their API differs on)
FORWARDED = (
    "temperature",
    "top_p",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "seed",
    "response_format",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "user",
    "reasoning_effort",
)
_MAX_MESSAGES = 2000
SCOPE_OPTIONS = ("alpha", "max_cost_usd", "max_latency_ms", "models")


@dataclass(frozen=True, slots=True)
class ParsedChat:
    model: str  # as sent: scope/auto, scope/<policy>, or a concrete model name
    policy: str | None  # the policy slug when `model` names one ("" for scope/auto: the key's default)
    request: ChatRequest
    stream: bool = False
    include_usage: bool = False
    user: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)
    alpha: float | None = None
    max_cost_usd: float | None = None
    max_latency_ms: float | None = None
    models: tuple[str, ...] = ()
    required_capabilities: tuple[str, ...] = ()  # what routing must find in a model (tools, vision, json)

    @property
    def passthrough(self) -> bool:
        return self.policy is None

    def routing_metadata(self) -> dict[str, Any]:
        """Caller metadata plus the request options the analyzer reads (max_tokens, temperature, format)."""
        out = dict(self.metadata)
        if self.request.max_tokens is not None:
            out["max_tokens"] = self.request.max_tokens
        if self.request.temperature is not None:
            out["temperature"] = self.request.temperature
        if "response_format" in self.request.params:
            out["response_format"] = self.request.params["response_format"]
        return out


def _fail(param: str, message: str, code: str = "invalid_value") -> InvalidRequest:
    return InvalidRequest(message, code=code, extra={"param": param or None})


def _number(
    body: Mapping[str, Any], name: str, low: float, high: float | None = None, *, prefix: str = ""
) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    param = f"{prefix}{name}"  # scope.alpha, not alpha: OpenAI's own body has no alpha
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(param, f"{param} must be a number")
    if value < low or (high is not None and value > high):
        bounds = f"between {low:g} and {high:g}" if high is not None else f"at least {low:g}"
        raise _fail(param, f"{param} must be {bounds} (got {value})")
    return float(value)


def _positive_int(body: Mapping[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _fail(name, f"{name} must be a positive integer")
    return value


def _content_ok(content: Any) -> bool:
    if content is None or isinstance(content, str):
        return True
    return isinstance(content, list) and all(
        isinstance(p, dict) and isinstance(p.get("type"), str) for p in content
    )


def _messages(raw: Any) -> tuple[Mapping[str, Any], ...]:
    if not isinstance(raw, list) or not raw:
        raise _fail("messages", "messages must be a non-empty array of message objects", "invalid_type")
    if len(raw) > _MAX_MESSAGES:
        raise _fail("messages", f"at most {_MAX_MESSAGES} messages per request")
    for i, message in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _fail(where, f"{where} must be an object", "invalid_type")
        if message.get("role") not in ROLES:
            raise _fail(f"{where}.role", f"{where}.role must be one of {', '.join(sorted(ROLES))}")
        if not _content_ok(message.get("content")):
            raise _fail(f"{where}.content", f"{where}.content must be a string or an array of content parts")
    if not any(m.get("role") in {"user", "system", "developer"} and m.get("content") for m in raw):
        raise _fail("messages", "messages need at least one user or system message with content")
    return tuple(raw)


def _tools(body: Mapping[str, Any]) -> None:
    """`tools`: an array of objects, each with its `type`."""
    value = body.get("tools")
    if value is None:
        return
    if not isinstance(value, list) or not all(
        isinstance(item, dict) and isinstance(item.get("type"), str) for item in value
    ):
        raise _fail("tools", "tools must be an array of tool objects with a type", "invalid_type")


def _legacy_functions(body: Mapping[str, Any]) -> None:
    """OpenAI's deprecated `functions` / `function_call` are refused, never dropped: no adapter
    forwards them (Anthropic has no such field, and which provider answers is routing's choice),
    and an answer given as if no functions existed would look like a model that chose not to call."""
    for name, instead in (("functions", "tools"), ("function_call", "tool_choice")):
        if body.get(name) is not None:
            raise _fail(
                name,
                f"{name} (OpenAI's deprecated function calling) is not supported: send `{instead}` "
                f"instead (e.g. tools: [{{'type': 'function', 'function': {{...}}}}])",
                "unsupported_parameter",
            )


def _choice_and_format(body: Mapping[str, Any]) -> None:
    tool_choice = body.get("tool_choice")
    if tool_choice is not None and not isinstance(tool_choice, str | dict):
        raise _fail("tool_choice", "tool_choice must be a string or an object", "invalid_type")
    response_format = body.get("response_format")
    if response_format is not None and not (
        isinstance(response_format, dict) and isinstance(response_format.get("type"), str)
    ):
        raise _fail("response_format", "response_format must be an object with a type", "invalid_type")


def _scope_options(raw: Any) -> dict[str, Any]:
    """SCOPE's own knobs, sent as `scope: {...}` (the openai client's `extra_body`)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise _fail("scope", "scope must be an object")
    unknown = unknown_fields(raw, SCOPE_OPTIONS)
    if unknown:  # SCOPE's own object: a misspelt limit must not be silently ignored
        raise _fail(f"scope.{unknown[0]}", unknown_fields_message(unknown, SCOPE_OPTIONS, where="scope"))
    models = raw.get("models", [])
    if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
        raise _fail("scope.models", "scope.models must be an array of model names")
    if "models" in raw and not models:  # an empty list must not read as "no restriction"
        raise _fail(
            "scope.models", "scope.models must name at least one model (leave it out to allow every model)"
        )
    return {
        "alpha": _number(raw, "alpha", 0.0, 1.0, prefix="scope."),
        "max_cost_usd": _number(raw, "max_cost_usd", 0.0, prefix="scope."),
        "max_latency_ms": _number(raw, "max_latency_ms", 0.0, prefix="scope."),
        "models": tuple(models),
    }


def chat_body_parse(body: Any) -> ParsedChat:
    if not isinstance(body, dict):
        raise _fail("", "the request body must be a JSON object", "invalid_type")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise _fail(
            "model", "model must be a string: scope/auto, scope/<policy>, or a model name", "invalid_type"
        )
    if not model or not model.strip():
        raise _fail(
            "model", "model is required: scope/auto, scope/<policy>, or a model name", "missing_required"
        )
    model = model.strip()
    if model == AUTO_MODEL:
        policy: str | None = ""
    elif model.startswith(POLICY_PREFIX):
        policy = model[len(POLICY_PREFIX) :]
        if not policy:
            raise _fail("model", "scope/ needs a policy: scope/<policy>, or scope/auto for the key's default")
    else:
        policy = None
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise _fail("stream", "stream must be a boolean")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise _fail("stream_options", "stream_options must be an object")
    include_usage = bool((options or {}).get("include_usage", False))
    n = body.get("n")
    if n is not None and n != 1:
        raise _fail("n", "SCOPE returns one choice per request: n must be 1")
    # max_completion_tokens (OpenAI's current name) wins when both are sent
    max_tokens_param = (
        "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    )
    max_tokens = _positive_int(body, "max_completion_tokens") or _positive_int(body, "max_tokens")
    _number(body, "temperature", 0.0, 2.0)
    _number(body, "top_p", 0.0, 1.0)
    stop = body.get("stop")
    if (
        stop is not None
        and not isinstance(stop, str)
        and not (isinstance(stop, list) and all(isinstance(s, str) for s in stop))
    ):
        raise _fail("stop", "stop must be a string or an array of strings")
    user = body.get("user", "")
    if not isinstance(user, str) or len(user) > 200:
        raise _fail("user", "user must be a string of at most 200 characters")
    metadata = body.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise _fail("metadata", "metadata must be an object")
    scope = _scope_options(body.get("scope"))
    given = next((name for name in SCOPE_OPTIONS if scope.get(name) not in (None, ())), None)
    if policy is None and given is not None:
        # a concrete model is passed through without routing: limits it would ignore are refused
        raise _fail(
            f"scope.{given}",
            f"scope.{given} is a routing option: it applies to scope/auto and scope/<policy> models, "
            f"not to the concrete model {model!r}; leave out `scope` or route with scope/<policy>",
        )
    _legacy_functions(body)
    _tools(body)
    _choice_and_format(body)
    params = {name: body[name] for name in FORWARDED if body.get(name) is not None}
    messages = _messages(body.get("messages"))
    return ParsedChat(
        model=model,
        policy=policy,
        request=ChatRequest(
            messages=messages, params=params, max_tokens=max_tokens, max_tokens_param=max_tokens_param
        ),
        required_capabilities=request_capabilities(messages=messages, options=body),
        stream=bool(stream),
        include_usage=include_usage,
        user=user,
        metadata=metadata,
        **scope,
    )
