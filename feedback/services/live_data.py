"""Training examples from live traffic, joined with imported evaluation data.

A live example is one decision's *logged* feature vector (never recomputed from the prompt),
the model that actually answered (the outcome's model, which may be a fallback; else the chosen
model when the app executed the call itself), the decision's latest feedback score, and the
outcome's output tokens and latency. A decision without feedback carries no quality label and is
not an example. Each source has a weight (settings.SCOPE_TRAINING_SOURCE_WEIGHTS, overridable
per call): `feedback` for live examples, `eval` for imported outcome data.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime

from django.conf import settings

from feedback.models import Feedback, Outcome
from feedback.services.training import TrainingExample, examples_from_eval_outcomes, model_infos
from routing.features import FeatureLogError, request_features_from_log
from routing.models import DecisionLog
from routing.predictor.model import ModelInfo
from routing.selectors import model_specs


@dataclass
class LiveExample:
    example: TrainingExample
    created_at: datetime


@dataclass
class TrainingData:
    live: list[LiveExample] = field(default_factory=list)  # oldest first
    imported: list[TrainingExample] = field(default_factory=list)
    models: list[ModelInfo] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


def source_weights(overrides: Mapping[str, float] | None = None) -> dict[str, float]:
    weights = {"feedback": 1.0, "eval": 1.0, **settings.SCOPE_TRAINING_SOURCE_WEIGHTS}
    weights.update(overrides or {})
    return weights


def live_examples(
    *, since: datetime | None = None, weight: float = 1.0
) -> tuple[list[LiveExample], dict[str, int]]:
    """One example per decision with feedback (its latest score), oldest decision first."""
    latest: dict[object, float] = {}
    rows = Feedback.objects.order_by("decision_id", "-created_at", "-id")
    if since is not None:
        rows = rows.filter(decision__created_at__gte=since)
    for decision_id, score in rows.values_list("decision_id", "score").iterator(chunk_size=5000):
        latest.setdefault(decision_id, score)
    answered: dict[object, tuple[str, int | None, float | None]] = {}
    outcomes = (
        Outcome.objects.filter(
            decision_id__in=list(latest), status__in=[Outcome.Status.OK, Outcome.Status.PARTIAL]
        )
        .order_by("decision_id", "-created_at")
        .values_list("decision_id", "model_name", "output_tokens", "latency_ms")
    )
    for decision_id, model_name, output_tokens, latency_ms in outcomes:
        answered.setdefault(decision_id, (model_name, output_tokens, latency_ms))
    counts = {
        "live_feedback_decisions": len(latest),
        "live_examples": 0,
        "live_skipped_schema": 0,
        "live_no_model": 0,
    }
    examples: list[LiveExample] = []
    decisions = (
        DecisionLog.objects.filter(pk__in=list(latest))
        .order_by("created_at", "id")
        .values_list("id", "created_at", "features", "feature_schema", "prompt", "chosen_model")
    )
    for decision_id, created_at, features_json, schema, prompt, chosen in decisions.iterator(chunk_size=2000):
        try:
            features = request_features_from_log(features_json, schema, prompt)
        except FeatureLogError:
            counts["live_skipped_schema"] += 1  # logged under another feature schema
            continue
        answered_by, tokens, latency = answered.get(decision_id, (chosen, None, None))
        if not answered_by:
            counts["live_no_model"] += 1
            continue
        examples.append(
            LiveExample(
                example=TrainingExample(
                    prompt_key=f"decision:{decision_id}",
                    features=features,
                    model=answered_by,
                    score=float(latest[decision_id]),
                    output_tokens=float(tokens) if tokens else None,
                    latency_ms=latency,
                    weight=weight,
                    source="feedback",
                ),
                created_at=created_at,
            )
        )
    counts["live_examples"] = len(examples)
    return examples, counts


def training_data(
    *,
    since: datetime | None = None,
    eval_source: str | None = None,
    weights: Mapping[str, float] | None = None,
    include_imported: bool = True,
) -> TrainingData:
    """Live examples plus imported evaluation outcomes, each weighted by its source."""
    w = source_weights(weights)
    live, counts = live_examples(since=since, weight=w["feedback"])
    imported: list[TrainingExample] = []
    models: list[ModelInfo] = []
    if include_imported:
        raw, models = examples_from_eval_outcomes(source=eval_source)
        imported = [
            replace(e, weight=w.get(f"eval:{e.source}", w["eval"]), source=f"eval:{e.source}") for e in raw
        ]
    else:
        models = model_infos(model_specs())
    counts["imported_examples"] = len(imported)
    return TrainingData(live=live, imported=imported, models=models, counts=counts)
