"""Outcome rows: what happened when a decision was executed (one row per answered call)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.db import transaction

from feedback.models import Outcome
from routing.engine.types import ModelSpec

_COST_PLACES = Decimal("0.00000001")


@dataclass(frozen=True, slots=True)
class TokenCount:
    input_tokens: int
    output_tokens: int
    estimated: bool  # True when the upstream reported no usage and SCOPE counted them itself


def outcome_cost_usd(*, model: ModelSpec | None, tokens: TokenCount) -> Decimal:
    """Cost at the catalog's list prices (USD per million tokens)."""
    if model is None:
        return Decimal(0)
    cost = Decimal(str(model.cost_usd(tokens.input_tokens, tokens.output_tokens)))
    return cost.quantize(_COST_PLACES)


def outcome_record(
    *,
    decision_id: uuid.UUID | str,
    model: ModelSpec | None,
    model_name: str,
    status: str,
    tokens: TokenCount,
    latency_ms: float | None,
    ttft_ms: float | None = None,
    error_class: str = "",
    attempts: Sequence[Mapping[str, Any]] = (),
    total_ms: float | None = None,
) -> Outcome:
    """Write the outcome of one decision. Failed or refused calls cost nothing; partial ones what streamed."""
    if status not in Outcome.Status.values:
        raise ValueError(f"unknown outcome status {status!r}")
    unbilled = status in (Outcome.Status.ERROR, Outcome.Status.REFUSED)
    cost = Decimal(0) if unbilled else outcome_cost_usd(model=model, tokens=tokens)
    row = Outcome(
        decision_id=decision_id,
        model_name=model_name,
        status=status,
        input_tokens=max(tokens.input_tokens, 0),
        output_tokens=max(tokens.output_tokens, 0),
        tokens_estimated=tokens.estimated,
        latency_ms=None if latency_ms is None else round(latency_ms, 3),
        ttft_ms=None if ttft_ms is None else round(ttft_ms, 3),
        total_ms=None if total_ms is None else round(total_ms, 3),
        cost_usd=cost,
        error_class=error_class[:100],
        attempts=[dict(a) for a in attempts],
    )
    with transaction.atomic(durable=True):
        row.save(force_insert=True)
    return row
