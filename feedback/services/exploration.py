"""Exploration caps on the route path: a calibrated new model is a candidate in at most X% of requests.

Capping eligibility (rather than counting traffic) needs no shared counter: a model that is a
candidate in a random `cap` share of requests can be chosen in at most that share. The caps come
from ModelCalibration rows in status `exploring`, read into a per-process snapshot refreshed every
SCOPE_CATALOG_TTL_SECONDS.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Sequence

from django.conf import settings

from feedback.models import CalibrationStatus, ModelCalibration
from routing.engine.types import ModelSpec

_caps: dict[str, float] = {}
_loaded_at = -1e9


def exploration_caps() -> dict[str, float]:
    global _caps, _loaded_at
    ttl = float(settings.SCOPE_CATALOG_TTL_SECONDS)
    if ttl <= 0 or time.monotonic() - _loaded_at > ttl:
        _caps = dict(
            ModelCalibration.objects.filter(status=CalibrationStatus.EXPLORING).values_list(
                "model_name", "exploration_cap"
            )
        )
        _loaded_at = time.monotonic()
    return _caps


def exploration_invalidate() -> None:
    global _loaded_at
    _loaded_at = -1e9


def exploration_gate(
    specs: Sequence[ModelSpec], *, requested: Sequence[str] = (), draw: float | None = None
) -> tuple[ModelSpec, ...]:
    """Mark capped models unavailable for this request unless it falls in their share (or names them)."""
    caps = exploration_caps()
    if not caps:
        return tuple(specs)
    u = random.random() if draw is None else draw  # noqa: S311 - a traffic split, not a secret
    gated = []
    for spec in specs:
        cap = caps.get(spec.name)
        if cap is not None and u >= cap and spec.name not in requested and not spec.unavailable_reason:
            spec = dataclasses.replace(
                spec,
                unavailable_reason=f"exploring: a candidate in {cap:.0%} of requests until calibrated by live outcomes",
            )
        gated.append(spec)
    return tuple(gated)
