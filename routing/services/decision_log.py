"""The only writer of DecisionLog rows (append-only)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from routing.audit import HASHED_FIELDS, decision_row_hash
from routing.engine.types import Decision, PolicySpec
from routing.features import RequestFeatures
from routing.models import ApiKey, DecisionKind, DecisionLog


def decision_log_write(
    *,
    decision: Decision,
    features: RequestFeatures,
    policy: PolicySpec,
    api_key: ApiKey | None,
    user: str = "",
    metadata: Mapping[str, Any] | None = None,
    kind: str = DecisionKind.ROUTE,
    experiment: str = "",
    arm: str = "",
    cache_hit: bool = False,
) -> DecisionLog:
    chosen = decision.chosen
    prediction = chosen.prediction if chosen else None
    row = DecisionLog(
        created_at=timezone.now(),
        kind=kind,
        api_key=api_key,
        api_key_name=api_key.name if api_key else "",
        policy_slug=policy.slug,
        policy_version=policy.version,
        strategy=decision.strategy,
        predictor_version=decision.predictor_version,
        alpha=decision.alpha,
        chosen_model=decision.model.name if decision.model else "",
        chosen_provider=decision.model.provider if decision.model else "",
        fallbacks=list(decision.fallbacks),
        candidates=[c.as_dict() for c in decision.candidates],
        explanation=dict(decision.explanation),
        features=features.as_dict(),
        feature_schema=features.schema_version,
        prompt="" if settings.SCOPE_PROMPT_STORAGE == "redacted" else features.text,
        prompt_sha256=hashlib.sha256(features.text.encode()).hexdigest(),
        user=user,
        metadata=dict(metadata or {}),
        experiment=experiment,
        arm=arm,
        cache_hit=cache_hit,
        predicted_cost_usd=chosen.cost_usd if chosen else None,
        predicted_quality=prediction.quality if prediction else None,
    )
    row.row_hash = decision_row_hash({name: getattr(row, name) for name in HASHED_FIELDS})
    # durable: the row is committed before the caller answers the request
    with transaction.atomic(durable=True):
        row.save(force_insert=True)
    return row

