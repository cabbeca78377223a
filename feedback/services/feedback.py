"""Feedback on decisions: every score is kept; the latest per decision is the one training uses."""

from __future__ import annotations

import math
import uuid

from django.db import transaction

from feedback.models import Feedback
from routing.models import ApiKey, DecisionLog
from scope_site.errors import InvalidRequest, NotFound

THUMBS = {"up": 1.0, "down": 0.0}


def feedback_score(*, score: float | None, thumbs: str | None) -> float:
    """One score in [0, 1] from either a number or thumbs up/down (exactly one of them)."""
    if (score is None) == (thumbs is None):
        raise InvalidRequest("give exactly one of 'score' (a number in [0, 1]) or 'thumbs' (up|down)")
    if thumbs is not None:
        if thumbs not in THUMBS:
            raise InvalidRequest("thumbs: must be 'up' or 'down'")
        return THUMBS[thumbs]
    assert score is not None
    if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score):
        raise InvalidRequest("score: must be a number in [0, 1]")
    if not 0.0 <= score <= 1.0:
        raise InvalidRequest("score: must be in [0, 1]")
    return float(score)


def feedback_record(
    *,
    decision_id: uuid.UUID | str,
    api_key: ApiKey | None,
    score: float | None = None,
    thumbs: str | None = None,
    label: str = "",
    comment: str = "",
) -> Feedback:
    """Attach a score to a decision made with the same API key (another key's decision is a 404)."""
    value = feedback_score(score=score, thumbs=thumbs)
    decisions = DecisionLog.objects.filter(pk=decision_id)
    # a key only sees its own decisions: a foreign id answers exactly like an unknown one
    decisions = decisions.filter(api_key=api_key) if api_key is not None else decisions.filter(api_key=None)
    decision = decisions.only("id").first()
    if decision is None:
        raise NotFound(f"Unknown decision {decision_id}", code="unknown_decision")
    with transaction.atomic(durable=True):
        return Feedback.objects.create(decision=decision, score=value, label=label, comment=comment)


def feedback_latest_scores(*, decision_ids: list[uuid.UUID]) -> dict[uuid.UUID, float]:
    """decision id → its latest feedback score (ties on time broken by the higher row id)."""
    latest: dict[uuid.UUID, float] = {}
    rows = (
        Feedback.objects.filter(decision_id__in=decision_ids)
        .order_by("decision_id", "-created_at", "-id")
        .values_list("decision_id", "score")
    )
    for decision_id, score in rows:
        latest.setdefault(decision_id, score)
    return latest
