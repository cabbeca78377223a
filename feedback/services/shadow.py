"""Shadow scoring: a challenger predictor scores live traffic beside the champion without routing it.

At most one PredictorVersion is the shadow (`metadata["shadow"]`). On the route path,
`shadow_explanation()` costs one clock check when no shadow is set; with one it is one batched
prediction for the request's candidates, logged in the decision's explanation under "shadow"
(the predictions and the model the shadow would have picked). `shadow_summary()` compares the two
predictors on decisions that later got feedback.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from django.core.cache import cache
from django.db import transaction
from django.utils import timezone

from feedback.models import Feedback, PredictorVersion
from routing.engine.decide import with_prior_for_unknown
from routing.engine.types import Decision, ModelSpec
from routing.features import RequestFeatures
from routing.models import ControlAction, DecisionLog
from routing.predictor.artifact import ArtifactError, unpack
from routing.predictor.model import ScopePredictor
from routing.services.control_events import control_event_record
from scope_site.errors import InvalidRequest, NotFound

log = logging.getLogger(__name__)
CACHE_KEY = "scope:predictor:shadow-id"
CHECK_SECONDS = 5.0
CACHE_SECONDS = 30  # other processes without a shared cache (embedded mode) notice a change within it


@dataclass
class _State:
    checked_at: float = -1e9
    version_id: int | None = None
    predictor: ScopePredictor | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


_state = _State()


def _shadow_id() -> int | None:
    cached = cache.get(CACHE_KEY)
    if cached is not None:
        return int(cached) or None
    row = PredictorVersion.objects.filter(metadata__shadow__isnull=False).values_list("pk", flat=True).first()
    cache.set(CACHE_KEY, row or 0, timeout=CACHE_SECONDS)  # locmem (embedded) caches are per process
    return row


def shadow_predictor() -> ScopePredictor | None:
    now = time.monotonic()
    if now - _state.checked_at < CHECK_SECONDS:
        return _state.predictor
    with _state.lock:
        _state.checked_at = now
        try:
            wanted = _shadow_id()
            if wanted != _state.version_id:
                row = (
                    PredictorVersion.objects.filter(pk=wanted).only("name", "artifact").first()
                    if wanted
                    else None
                )
                _state.predictor = unpack(bytes(row.artifact), version=row.name) if row else None
                _state.version_id = wanted
        except (ArtifactError, Exception):  # noqa: BLE001 - shadow scoring must never break routing
            log.exception("shadow predictor unavailable; live routing is unaffected")
            _state.version_id, _state.predictor = None, None
        return _state.predictor


def shadow_reset() -> None:
    _state.checked_at = -1e9


def shadow_explanation(
    *, features: RequestFeatures, models: Sequence[ModelSpec], decision: Decision, risk_aversion: float = 0.5
) -> dict[str, Any] | None:
    """The shadow's predictions for this request and the model it would have ranked first."""
    predictor = shadow_predictor()
    if predictor is None:
        return None
    eligible = {c.model.name for c in decision.candidates if c.eligible}
    models = [m for m in models if m.name in eligible]  # only what could have been chosen
    if not models:
        return None
    try:
        # as live routing does: models the shadow has no data for get the tier prior, not its 0.5
        predictions = with_prior_for_unknown(features, models, predictor.predict(features, models))
    except Exception:  # noqa: BLE001 - never let the shadow fail a live request
        log.exception("shadow prediction failed")
        return None
    scored = {}
    for spec, p in zip(models, predictions, strict=True):
        cost = spec.cost_usd(features.input_tokens, p.output_tokens)
        scored[spec.name] = (p.quality, p.uncertainty, cost, p.known)
    options = [(name, v) for name, v in scored.items() if name in eligible]
    max_cost = max((v[2] for _, v in options), default=0.0) or 1.0
    alpha = decision.alpha
    would = max(
        options,
        key=lambda o: (
            alpha * (o[1][0] - risk_aversion * o[1][1]) - (1 - alpha) * o[1][2] / max_cost,
            -o[1][2],
        ),
        default=None,
    )
    return {
        "version": predictor.version,
        "would_choose": would[0] if would else None,
        "quality": {name: round(v[0], 4) for name, v in scored.items() if v[3]},
    }


def shadow_start(*, version_id: int, actor: str) -> PredictorVersion:
    """Make `version_id` the (only) shadow predictor."""
    with transaction.atomic():
        version = PredictorVersion.objects.select_for_update().filter(pk=version_id).first()
        if version is None:
            raise NotFound(f"predictor version {version_id} does not exist")
        if version.is_active:
            raise InvalidRequest(
                f"predictor version {version.name} is the champion; it cannot also be the shadow"
            )
        replaced = []
        for other in PredictorVersion.objects.select_for_update().filter(metadata__shadow__isnull=False):
            other.metadata.pop("shadow", None)
            other.save(update_fields=["metadata"])
            replaced.append(other.name)
        version.metadata = {**version.metadata, "shadow": {"since": timezone.now().isoformat()}}
        version.save(update_fields=["metadata"])
        control_event_record(
            actor=actor,
            action=ControlAction.SHADOW_START,
            target=f"predictor:{version.name}",
            detail={"replaced": [n for n in replaced if n != version.name]},
        )
        transaction.on_commit(lambda: _announce(version.pk))
    return version


def shadow_stop(*, actor: str) -> None:
    with transaction.atomic():
        for other in PredictorVersion.objects.select_for_update().filter(metadata__shadow__isnull=False):
            other.metadata.pop("shadow", None)
            other.save(update_fields=["metadata"])
            control_event_record(
                actor=actor, action=ControlAction.SHADOW_STOP, target=f"predictor:{other.name}"
            )
        transaction.on_commit(lambda: _announce(None))


def _announce(version_id: int | None) -> None:
    cache.set(CACHE_KEY, version_id or 0, timeout=CACHE_SECONDS)
    shadow_reset()


def shadow_summary(*, version_id: int) -> dict[str, Any]:
    """Champion vs shadow on decisions the shadow scored that have feedback (latest score counts)."""
    version = PredictorVersion.objects.filter(pk=version_id).first()
    if version is None:
        raise NotFound(f"predictor version {version_id} does not exist")
    rows = DecisionLog.objects.filter(explanation__shadow__version=version.name)
    since = (version.metadata.get("shadow") or {}).get("since")
    if since:
        rows = rows.filter(created_at__gte=since)
    scored = {
        r[0]: r[1:]
        for r in rows.values_list("id", "chosen_model", "candidates", "explanation").iterator(chunk_size=2000)
    }
    latest: dict[Any, float] = {}
    for decision_id, score in (
        Feedback.objects.filter(decision_id__in=list(scored))
        .order_by("decision_id", "-created_at", "-id")
        .values_list("decision_id", "score")
    ):
        latest.setdefault(decision_id, score)
    agree = 0
    champion_err: list[float] = []
    shadow_err: list[float] = []
    for decision_id, (chosen, candidates, explanation) in scored.items():
        shadow = explanation.get("shadow") or {}
        agree += shadow.get("would_choose") == chosen
        if decision_id not in latest:
            continue
        champ = next((c.get("predictions") for c in candidates if c.get("model") == chosen), None)
        mine = (shadow.get("quality") or {}).get(chosen)
        if champ and mine is not None:
            champion_err.append((float(champ["quality"]) - latest[decision_id]) ** 2)
            shadow_err.append((float(mine) - latest[decision_id]) ** 2)
    n = len(champion_err)
    return {
        "version": version.name,
        "decisions_scored": len(scored),
        "agreement": agree / len(scored) if scored else None,
        "with_feedback": n,
        "champion_brier": sum(champion_err) / n if n else None,
        "shadow_brier": sum(shadow_err) / n if n else None,
        "shadow_better": (sum(shadow_err) < sum(champion_err)) if n else None,
        "computed_at": timezone.now().isoformat(),
        "note": None if n else "no feedback yet on decisions the shadow scored",
    }


def shadow_summary_refresh() -> dict[str, Any] | None:
    """Store the current shadow's summary in its metadata (what the UI shows); None without a shadow."""
    version = PredictorVersion.objects.filter(metadata__shadow__isnull=False).first()
    if version is None:
        return None
    summary = shadow_summary(version_id=version.pk)
    with transaction.atomic():
        locked = PredictorVersion.objects.select_for_update().get(pk=version.pk)
        shadow = dict(locked.metadata.get("shadow") or {})
        shadow["summary"] = {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in summary.items()
        }
        locked.metadata = {**locked.metadata, "shadow": shadow}
        locked.save(update_fields=["metadata"])
    return summary
