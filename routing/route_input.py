"""Validated input of POST /api/v1/route, with a fast path for well-formed bodies.

RouteInputSerializer is the contract (and the OpenAPI schema). Running it costs more than the
whole rest of a decision bar the database write, mostly because DRF deep-copies every field per
request. Most bodies are already in the serializer's canonical form (right JSON types, nothing to
trim or coerce), and for those its output equals a plain copy of the known keys. So: a body that
passes the strict checks below is taken as is; anything else (bad, or merely needing coercion
such as "0.5" for 0.5 or " name " to trim) goes through the serializer, which then answers
exactly as before. tests/hardening/test_route_input.py checks both paths agree.
"""

from __future__ import annotations

import math
import re
from typing import Any

from routing.serializers import MESSAGE_ROLES, RouteInputSerializer
from routing.storable import unstorable_text

_ROLES = frozenset(MESSAGE_ROLES)
_CONTENT_ROLES = frozenset({"user", "system", "developer"})
_SLUG = re.compile(r"^[-a-zA-Z0-9_]+\Z")
_FLOAT_LIMITS = {"alpha": (0.0, 1.0), "max_cost_usd": (0.0, None), "max_latency_ms": (0.0, None)}
_KNOWN = frozenset(RouteInputSerializer().fields)  # any other key: the serializer refuses it


def route_input_validate(data: Any) -> dict[str, Any]:
    """The validated body, as RouteInputSerializer would give it; raises its ValidationError."""
    fast = _canonical(data)
    if fast is not None:
        return fast
    serializer = RouteInputSerializer(data=data)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


def _plain_text(value: Any, max_length: int, *, blank: bool) -> bool:
    """A str the serializer's CharField keeps unchanged: nothing to trim, within length, no NUL
    character and no lone surrogate (both of which CharField refuses)."""
    return (
        isinstance(value, str)
        and len(value) <= max_length
        and (blank or bool(value))
        and value == value.strip()
        and not unstorable_text(value)
    )


def _message(value: Any) -> dict[str, Any] | None:
    if not isinstance(value, dict) or type(value.get("role")) is not str or value["role"] not in _ROLES:
        return None
    out: dict[str, Any] = {"role": value["role"]}
    if "content" in value:
        content = value["content"]
        if not (
            content is None
            or isinstance(content, str)
            or (isinstance(content, list) and all(isinstance(p, dict) and "type" in p for p in content))
        ):
            return None
        out["content"] = content
    if "name" in value:
        if not _plain_text(value["name"], 200, blank=False):
            return None
        out["name"] = value["name"]
    return out


def _canonical(data: Any) -> dict[str, Any] | None:
    """The validated body when `data` is valid and already canonical, else None (use the serializer)."""
    if not isinstance(data, dict) or not _KNOWN.issuperset(data):
        return None
    raw_messages = data.get("messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        return None
    messages = []
    for raw in raw_messages:
        message = _message(raw)
        if message is None:
            return None
        messages.append(message)
    if not any(m["role"] in _CONTENT_ROLES and m.get("content") for m in messages):
        return None
    out: dict[str, Any] = {"messages": messages}
    if "policy" in data:
        policy = data["policy"]
        if not (_plain_text(policy, 100, blank=False) and _SLUG.match(policy)):
            return None
        out["policy"] = policy
    for name, (low, high) in _FLOAT_LIMITS.items():
        if name in data:
            number = data[name]
            if type(number) is int:
                if abs(number) > 2**53:  # huge integers: leave the edge cases to the serializer
                    return None
            elif type(number) is not float or not math.isfinite(number):
                return None
            if number < low or (high is not None and number > high):
                return None
            out[name] = float(number)
    if "models" in data:
        models = data["models"]
        if not isinstance(models, list) or not models or len(models) > 500:
            return None
        if not all(_plain_text(m, 200, blank=False) for m in models):
            return None
        out["models"] = list(models)
    if "user" in data:
        if not _plain_text(data["user"], 200, blank=True):
            return None
        out["user"] = data["user"]
    if "metadata" in data:
        metadata = data["metadata"]
        if not isinstance(metadata, dict) or not all(type(k) is str for k in metadata):
            return None
        out["metadata"] = dict(metadata)
    return out
