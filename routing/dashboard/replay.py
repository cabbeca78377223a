"""What-if replay: run an edited (unpublished) policy over the last N logged decisions.

Each decision is re-decided with its logged features, metadata and the request's own limits
(alpha, max cost/latency, model list, output budget; recorded in its explanation), the current catalog and the
active predictor, through the same `decide()` the route path uses; nothing is written. The result
compares predicted cost, quality and model mix with what was logged (and with the actual outcomes
and feedback of those decisions, where they exist).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db.models import Avg, Count, Sum

from feedback.models import Feedback, Outcome
from providers.decisions import PASSTHROUGH
from routing.engine.decide import UnknownStrategy, decide, options_from_log
from routing.engine.types import ModelSpec, PolicySpec
from routing.features import FeatureLogError, request_features_from_log
from routing.models import DecisionLog
from routing.predictor.registry import active_predictor
from routing.selectors import model_specs
from routing.services.route import strategies
from scope_site.errors import InvalidRequest

MAX_REPLAY = 5000


@dataclass
class Side:
    decisions: int = 0
    cost_usd: float = 0.0
    quality_sum: float = 0.0
    quality_n: int = 0
    no_model: int = 0
    mix: Counter[str] = field(default_factory=Counter)

    def add(self, model: str, cost: float | None, quality: float | None) -> None:
        self.decisions += 1
        if not model:
            self.no_model += 1
            return
        self.mix[model] += 1
        self.cost_usd += cost or 0.0
        if quality is not None:
            self.quality_sum += quality
            self.quality_n += 1

    @property
    def quality(self) -> float | None:
        return self.quality_sum / self.quality_n if self.quality_n else None

    @property
    def cost_per_1k(self) -> float:
        return 1000 * self.cost_usd / self.decisions if self.decisions else 0.0


@dataclass
class ReplayResult:
    policy: PolicySpec
    predictor_version: str
    replayed: Side = field(default_factory=Side)
    logged: Side = field(default_factory=Side)
    changed: int = 0
    skipped: int = 0
    skipped_reason: str = ""
    actual_cost_usd: float | None = None
    actual_outcomes: int = 0
    feedback_mean: float | None = None
    feedback_n: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def models(self) -> list[str]:
        return sorted(set(self.replayed.mix) | set(self.logged.mix))


def policy_replay(
    *,
    policy: PolicySpec,
    limit: int,
    source_policy: str | None,
    catalog: Sequence[ModelSpec] | None = None,
) -> ReplayResult:
    """Re-decide the last `limit` decisions (of `source_policy`, or all traffic when None).

    Only decisions a policy made: a call that named its model (strategy "passthrough") was not
    routed, so no policy would have decided it differently.
    """
    if not 1 <= limit <= MAX_REPLAY:
        raise InvalidRequest(f"replay size must be between 1 and {MAX_REPLAY}")
    qs = DecisionLog.objects.exclude(strategy=PASSTHROUGH)
    if source_policy:
        qs = qs.filter(policy_slug=source_policy)
    rows = list(
        qs.order_by("-created_at", "-id").values(
            "id",
            "features",
            "feature_schema",
            "prompt",
            "metadata",
            "explanation",
            "chosen_model",
            "predicted_cost_usd",
            "predicted_quality",
        )[:limit]
    )
    predictor = active_predictor()
    specs = tuple(catalog) if catalog is not None else model_specs()
    known = strategies()
    result = ReplayResult(policy=policy, predictor_version=getattr(predictor, "version", "prior"))
    for row in rows:
        try:
            features = request_features_from_log(row["features"], row["feature_schema"], row["prompt"])
        except FeatureLogError as exc:
            result.skipped += 1
            result.skipped_reason = str(exc)
            continue
        try:
            decision = decide(
                features=features,
                models=specs,
                policy=policy,
                options=options_from_log(row["explanation"], row["metadata"]),
                predictor=predictor,
                strategies=known,
                max_fallbacks=settings.SCOPE_MAX_FALLBACKS,
            )
        except UnknownStrategy as exc:
            raise InvalidRequest(str(exc)) from None
        chosen = decision.chosen
        new_model = decision.model.name if decision.model else ""
        result.predictor_version = decision.predictor_version
        result.replayed.add(
            new_model,
            chosen.cost_usd if chosen else None,
            chosen.prediction.quality if chosen and chosen.prediction else None,
        )
        result.logged.add(row["chosen_model"], row["predicted_cost_usd"], row["predicted_quality"])
        if new_model != row["chosen_model"]:
            result.changed += 1
            if len(result.examples) < 10:
                result.examples.append(
                    {
                        "id": row["id"],
                        "was": row["chosen_model"],
                        "now": new_model,
                        "why": decision.explanation["summary"],
                    }
                )
    ids = [r["id"] for r in rows]
    if ids:
        actual = (
            Outcome.objects.filter(decision_id__in=ids)
            .exclude(status=Outcome.Status.REFUSED)  # never called
            .aggregate(n=Count("id"), cost=Sum("cost_usd"))
        )
        result.actual_outcomes = actual["n"] or 0
        result.actual_cost_usd = float(actual["cost"]) if actual["cost"] is not None else None
        fb = Feedback.objects.filter(decision_id__in=ids).aggregate(n=Count("id"), mean=Avg("score"))
        result.feedback_n, result.feedback_mean = fb["n"] or 0, fb["mean"]
    return result
