"""Reads of the decisions explorer, the decision page and the export.

Pagination is by keyset on (created_at, id), newest first: each page is one index range scan
(decision_time_id, or the model/policy/key/experiment indexes when filtered) that stops after
`limit` rows, so page 1 and page 20,000 cost the same. Nothing ever counts the whole table.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.db import connections
from django.db.models import Exists, OuterRef, QuerySet
from django.utils.dateparse import parse_datetime

from feedback.models import Feedback, Outcome
from routing.models import DecisionLog
from scope_site.errors import InvalidRequest, NotFound

PAGE_SIZE = 50
LIST_FIELDS = (
    "id",
    "created_at",
    "kind",
    "api_key_name",
    "policy_slug",
    "policy_version",
    "strategy",
    "chosen_model",
    "experiment",
    "arm",
    "predicted_cost_usd",
    "predicted_quality",
    "predictor_version",
)
OUTCOME_CHOICES = ("", "ok", "error", "partial", "refused", "none")


@dataclass(frozen=True, slots=True)
class DecisionFilters:
    start: datetime | None = None
    end: datetime | None = None
    key: str = ""
    model: str = ""
    policy: str = ""
    experiment: str = ""
    outcome: str = ""
    api_key_id: str | None = None  # the decisions one API key made (GET /api/v1/decisions)

    def as_query(self) -> dict[str, str]:
        out = {
            "start": self.start.isoformat() if self.start else "",
            "end": self.end.isoformat() if self.end else "",
            "key": self.key,
            "model": self.model,
            "policy": self.policy,
            "experiment": self.experiment,
            "outcome": self.outcome,
        }
        return {k: v for k, v in out.items() if v}


def decisions_filtered(filters: DecisionFilters) -> QuerySet[DecisionLog]:
    qs = DecisionLog.objects.all()
    if filters.start:
        qs = qs.filter(created_at__gte=filters.start)
    if filters.end:
        qs = qs.filter(created_at__lt=filters.end)
    if filters.key:
        qs = qs.filter(api_key_name=filters.key)
    if filters.api_key_id is not None:
        qs = qs.filter(api_key_id=filters.api_key_id)
    if filters.model:
        qs = qs.filter(chosen_model=filters.model)
    if filters.policy:
        qs = qs.filter(policy_slug=filters.policy)
    if filters.experiment:
        qs = qs.filter(experiment=filters.experiment)
    if filters.outcome == "none":
        qs = qs.filter(~Exists(Outcome.objects.filter(decision=OuterRef("pk"))))
    elif filters.outcome == Outcome.Status.OK:
        qs = qs.filter(Exists(Outcome.objects.filter(decision=OuterRef("pk"), status=filters.outcome)))
    elif filters.outcome:
        # errors and partial streams are rare: hash their decision ids once (a hashed sub-plan)
        # instead of probing the outcome table for every decision the time-ordered scan passes
        qs = qs.filter(id__in=Outcome.objects.filter(status=filters.outcome).values("decision_id"))
    return qs


def encode_cursor(created_at: datetime, row_id: uuid.UUID) -> str:
    """`<UTC time>Z_<id>`: nothing in it needs URL-encoding (a "+00:00" offset did: "+" reads as a space)."""
    stamp = created_at.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return f"{stamp}_{row_id}"


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    stamp, _, raw_id = cursor.rpartition("_")
    try:
        when = parse_datetime(stamp)
        row_id = uuid.UUID(raw_id)
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise InvalidRequest("after: not a cursor from this page")
    return when, row_id


def _before(qs: QuerySet[DecisionLog], cursor: tuple[datetime, uuid.UUID]) -> QuerySet[DecisionLog]:
    # a row-value comparison, so the (created_at, id) index serves it as one range
    connection = connections[qs.db]
    table = DecisionLog._meta.db_table
    return qs.extra(
        where=[f'("{table}"."created_at", "{table}"."id") < (%s, %s)'],
        params=[
            connection.ops.adapt_datetimefield_value(cursor[0]),
            DecisionLog._meta.pk.get_db_prep_value(cursor[1], connection),  # type: ignore[union-attr]
        ],
    )


def decisions_page(
    *, filters: DecisionFilters, after: str = "", limit: int = PAGE_SIZE, full_rows: bool = False
) -> tuple[list[DecisionLog], str]:
    """One page, newest first, and the cursor of the next page ("" when this is the last)."""
    qs = decisions_filtered(filters)
    if after:
        qs = _before(qs, decode_cursor(after))
    if not full_rows:
        qs = qs.only(*LIST_FIELDS)
    rows = list(qs.order_by("-created_at", "-id")[: limit + 1])
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, encode_cursor(rows[-1].created_at, rows[-1].id) if more and rows else ""


@dataclass(frozen=True, slots=True)
class DecisionDetail:
    row: DecisionLog
    candidates: list[dict[str, Any]]
    contributions: list[dict[str, Any]]
    outcomes: list[Outcome]
    feedback: list[Feedback]


def decision_detail(*, decision_id: str) -> DecisionDetail:
    try:
        key = uuid.UUID(decision_id)
    except ValueError:
        raise NotFound(f"no decision {decision_id}") from None
    row = DecisionLog.objects.filter(id=key).first()
    if row is None:
        raise NotFound(f"no decision {decision_id}")
    candidates = sorted(
        row.candidates or [],
        key=lambda c: (c.get("rank") is None, c.get("rank") or 0, not c.get("eligible"), c.get("model", "")),
    )
    return DecisionDetail(
        row=row,
        candidates=candidates,
        contributions=list((row.explanation or {}).get("contributions") or []),
        outcomes=list(Outcome.objects.filter(decision=row).order_by("created_at")),
        feedback=list(Feedback.objects.filter(decision=row).order_by("-created_at")),
    )


EXPORT_FIELDS = (
    "id",
    "created_at",
    "kind",
    "api_key_name",
    "policy_slug",
    "policy_version",
    "strategy",
    "predictor_version",
    "alpha",
    "chosen_model",
    "chosen_provider",
    "fallbacks",
    "experiment",
    "arm",
    "predicted_cost_usd",
    "predicted_quality",
    "prompt_sha256",
    "user",
    "cache_hit",
    "row_hash",
    "hash_format",
    "checkpoint__sequence",
    "explanation",
    "candidates",
    "features",
    "metadata",
    "feature_schema",
)


def decisions_export_rows(filters: DecisionFilters, *, chunk_size: int = 2000) -> Iterator[dict[str, Any]]:
    """Every matching row, oldest first, streamed from a server-side cursor (constant memory)."""
    qs = decisions_filtered(filters).order_by("created_at", "id").values(*EXPORT_FIELDS)
    return qs.iterator(chunk_size=chunk_size)
