"""A small, safe condition language for IF-THEN rules (JSON, never `eval`).

A leaf compares a request feature or a metadata value, e.g. `{"feature": "code_signal", "op":
">=", "value": 1}` or `{"metadata": "team", "op": "in", "value": ["legal", "risk"]}`; leaves
combine with `{"all": [...]}`, `{"any": [...]}` and `{"not": {...}}`.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from typing import Any

from routing.features import FEATURE_NAMES

_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "in": lambda a, b: a in b,
    "not_in": lambda a, b: a not in b,
    "contains": lambda a, b: isinstance(a, str | list | tuple) and b in a,
    "exists": lambda a, b: (a is not None) == bool(b),
}
OPERATORS = frozenset(_OPS)


class ConditionError(ValueError):
    """The condition is malformed; the message names what is wrong and where."""


def validate_condition(cond: Any, path: str = "when") -> None:
    if not isinstance(cond, Mapping) or not cond:
        raise ConditionError(f"{path}: a condition must be a non-empty object")
    if "all" in cond or "any" in cond:
        key = "all" if "all" in cond else "any"
        items = cond[key]
        if not isinstance(items, list) or not items:
            raise ConditionError(f"{path}.{key}: must be a non-empty list of conditions")
        for index, item in enumerate(items):
            validate_condition(item, f"{path}.{key}[{index}]")
        return
    if "not" in cond:
        validate_condition(cond["not"], f"{path}.not")
        return
    if "feature" in cond:
        if cond["feature"] not in FEATURE_NAMES:
            raise ConditionError(f"{path}.feature: unknown feature {cond['feature']!r}")
    elif "metadata" in cond:
        if not isinstance(cond["metadata"], str) or not cond["metadata"]:
            raise ConditionError(f"{path}.metadata: must name a metadata key")
    else:
        raise ConditionError(f"{path}: needs one of feature, metadata, all, any, not")
    op = cond.get("op", "==")
    if op not in _OPS:
        raise ConditionError(f"{path}.op: unknown operator {op!r} (use one of {', '.join(sorted(_OPS))})")
    if op in {"in", "not_in"} and not isinstance(cond.get("value"), list):
        raise ConditionError(f"{path}.value: operator {op!r} needs a list")
    if "value" not in cond and op != "exists":
        raise ConditionError(f"{path}.value: missing")


def evaluate(cond: Mapping[str, Any], features: Mapping[str, float], metadata: Mapping[str, Any]) -> bool:
    if "all" in cond:
        return all(evaluate(c, features, metadata) for c in cond["all"])
    if "any" in cond:
        return any(evaluate(c, features, metadata) for c in cond["any"])
    if "not" in cond:
        return not evaluate(cond["not"], features, metadata)
    left = features.get(cond["feature"]) if "feature" in cond else metadata.get(cond["metadata"])
    op = cond.get("op", "==")
    if left is None and op != "exists":
        return False
    try:
        return bool(_OPS[op](left, cond.get("value")))
    except TypeError:
        return False  # e.g. comparing a string to a number: the rule simply does not match
