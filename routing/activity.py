"""Reads of the control-plane activity log (the Activity page and /activity.json).

Newest first, keyset-paginated on the id (rows are append-only and ids only grow, so `id < after`
is a stable cursor: a page never repeats or skips a row when new events arrive meanwhile).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db.models import QuerySet

from routing.models import ControlAction, ControlEvent
from scope_site.errors import InvalidRequest

PAGE_SIZE = 50
MAX_LIMIT = 200


@dataclass(frozen=True, slots=True)
class ActivityFilters:
    action: str = ""  # exact action, or an entity prefix such as "model" (every model.* action)
    actor: str = ""
    target: str = ""  # "model:gpt-4o", or a prefix of it ("model:", "model:gpt")
    start: datetime | None = None
    end: datetime | None = None

    def as_query(self) -> dict[str, str]:
        out = {
            "action": self.action,
            "actor": self.actor,
            "target": self.target,
            "start": self.start.isoformat() if self.start else "",
            "end": self.end.isoformat() if self.end else "",
        }
        return {k: v for k, v in out.items() if v}


ACTION_ENTITIES = sorted({value.split(".", 1)[0] for value in ControlAction.values})


def action_choices() -> list[tuple[str, str]]:
    """Every action, and every entity (all of its actions), for the filter's select."""
    entities = [(entity, f"{entity}.* (all)") for entity in ACTION_ENTITIES]
    return [("", "any"), *entities, *((v, v) for v in sorted(ControlAction.values))]


def _cursor(after: str) -> int | None:
    if not after:
        return None
    if not after.isdigit() or len(after) > 18:
        raise InvalidRequest(f"after: {after!r} is not a cursor from a previous page", code="invalid_cursor")
    return int(after)


def activity_filtered(filters: ActivityFilters) -> QuerySet[ControlEvent]:
    qs = ControlEvent.objects.all()
    if filters.action:
        if filters.action in ControlAction.values:
            qs = qs.filter(action=filters.action)
        elif filters.action in ACTION_ENTITIES:
            qs = qs.filter(action__startswith=f"{filters.action}.")
        else:
            raise InvalidRequest(f"action: unknown action {filters.action!r}", code="invalid_filter")
    if filters.actor:
        qs = qs.filter(actor=filters.actor)
    if filters.target:
        qs = qs.filter(target__startswith=filters.target)
    if filters.start:
        qs = qs.filter(created_at__gte=filters.start)
    if filters.end:
        qs = qs.filter(created_at__lt=filters.end)
    return qs


def activity_page(
    *, filters: ActivityFilters, after: str = "", limit: int = PAGE_SIZE
) -> tuple[list[ControlEvent], str]:
    """One page, newest first, and the cursor of the next one ("" on the last page)."""
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidRequest(f"limit: must be from 1 to {MAX_LIMIT}", code="invalid_filter")
    qs = activity_filtered(filters)
    before = _cursor(after)
    if before is not None:
        qs = qs.filter(id__lt=before)
    rows = list(qs.order_by("-id")[: limit + 1])
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, str(rows[-1].pk) if more and rows else ""
