"""The control-plane activity log: who changed what, when (the only writer of ControlEvent).

Every service that changes the control plane calls `control_event_record()` inside its own
transaction, so the change and its record commit (or roll back) together and no entry point (UI,
API, admin, command, worker) can make the change without it. Callers pass the actor: the signed-in
user's username, `system:<component>` for workers and schedules, `cli:<command>` for commands.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from django.db import transaction

from routing.models import ControlAction, ControlEvent

# Never stored, at any depth, whatever a caller passes: key material and anything named like it.
# (`api_key_env` is the *name* of an environment variable, not its value, and is kept.)
SECRET_NAMES = frozenset(
    {"key", "api_key", "hashed_key", "prefix", "password", "secret", "token", "authorization"}
)
REDACTED = "[redacted]"
_MAX_TEXT = 500  # long values (rules, notes) are cut: the detail is a summary, the row is the record


def _is_secret(name: str) -> bool:
    lowered = name.lower()
    return lowered in SECRET_NAMES or lowered.endswith(("_secret", "_token", "_password", "hashed_key"))


def _clean(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): REDACTED if _is_secret(str(k)) else _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_clean(v) for v in value]
    if isinstance(value, Decimal):  # 0.020000 (a stored price) and 0.02 (a file's) are one value
        return format(value.normalize(), "f")
    if value is None or isinstance(value, bool | int | float):
        return value
    text = str(value)
    return text if len(text) <= _MAX_TEXT else text[: _MAX_TEXT - 1] + "…"


def changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, list[Any]]:
    """{field: [old, new]} for the fields whose value differs (the usual `detail["changes"]`)."""
    return {
        name: [_clean(old.get(name)), _clean(value)]
        for name, value in new.items()
        if _clean(old.get(name)) != _clean(value)
    }


def control_event_record(
    *, actor: str, action: ControlAction | str, target: str, detail: Mapping[str, Any] | None = None
) -> ControlEvent:
    """Append one event. Must run inside the transaction of the change it records."""
    if not actor:
        raise ValueError("a control event needs an actor")  # a caller bug, not a user error
    if action not in ControlAction.values:
        raise ValueError(f"unknown control action {action!r}")
    # savepoint=False: one INSERT in the caller's transaction, which owns commit and rollback
    with transaction.atomic(savepoint=False):
        return ControlEvent.objects.create(
            actor=actor[:150], action=str(action), target=target[:300], detail=_clean(dict(detail or {}))
        )


def control_upsert_record(
    *, actor: str, entity: str, name: str, before: Mapping[str, Any] | None, after: Mapping[str, Any]
) -> ControlEvent | None:
    """`<entity>.create` with the values, or `<entity>.update` with what changed; None when nothing did."""
    if before is None:
        return control_event_record(
            actor=actor, action=f"{entity}.create", target=f"{entity}:{name}", detail={"values": dict(after)}
        )
    diff = changes(before, after)
    if not diff:
        return None
    return control_event_record(
        actor=actor, action=f"{entity}.update", target=f"{entity}:{name}", detail={"changes": diff}
    )
