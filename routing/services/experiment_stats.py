"""Per-arm experiment statistics, recomputed from the decision log, outcomes and feedback.

`experiment_stats_refresh` is what the periodic Celery task calls. It is safe to run twice: it
locks the experiment row and skips the work when nothing it reads has changed since the stored
statistics (their `watermark`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.db.models import Count, Max, Q
from django.utils import timezone
from scipy import stats as sps

from feedback.models import Feedback, Outcome
from routing.models import DecisionLog, Experiment, ExperimentStatus
from routing.services.experiments import assignment_unit
from routing.stats import (
    clustered,
    clustered_welch_t,
    json_safe,
    mann_whitney,
    mean_interval,
    needed_per_arm_means,
    needed_per_arm_proportions,
    proportion,
    quantile_interval,
    significant,
    two_proportion_z,
    unit_values,
)
from scope_site.errors import NotFound


@dataclass(frozen=True, slots=True)
class StatsRefresh:
    experiment_id: int
    updated: bool
    stats: dict[str, Any]


def _watermark(name: str) -> dict[str, Any]:
    decisions = DecisionLog.objects.filter(experiment=name).aggregate(n=Count("id"), last=Max("created_at"))
    outcomes = Outcome.objects.filter(decision__experiment=name).aggregate(n=Count("id"), last=Max("id"))
    feedback = Feedback.objects.filter(decision__experiment=name).aggregate(n=Count("id"), last=Max("id"))
    return {
        "decisions": decisions["n"],
        "last_decision": decisions["last"].isoformat() if decisions["last"] else None,
        "outcomes": outcomes["n"],
        "last_outcome": outcomes["last"],
        "feedback": feedback["n"],
        "last_feedback": feedback["last"],
    }


Series = dict[str, dict[str, list[float]]]  # arm → metric → samples
Units = dict[str, dict[str, list[str]]]  # arm → metric → the assignment unit of each sample


def _collect(name: str) -> tuple[Series, Units]:
    """Per arm and metric: the samples, and the assignment unit (user, else API key) of each."""
    data: Series = defaultdict(lambda: defaultdict(list))
    units: Units = defaultdict(lambda: defaultdict(list))

    def add(arm: str, series: str, value: float, unit: str) -> None:
        data[arm][series].append(value)
        units[arm][series].append(unit)

    for arm, predicted, user, api_key_id in DecisionLog.objects.filter(experiment=name).values_list(
        "arm", "predicted_cost_usd", "user", "api_key_id"
    ):
        unit = assignment_unit(user=user, api_key_id=api_key_id)
        add(arm, "requests", 1.0, unit)
        if predicted is not None:
            add(arm, "predicted_cost", float(predicted), unit)
    cost_by_decision: dict[Any, float] = defaultdict(float)
    of_decision: dict[Any, tuple[str, str]] = {}
    outcomes = (
        Outcome.objects.filter(decision__experiment=name)
        .exclude(status=Outcome.Status.REFUSED)
        .values_list(
            "decision_id",
            "decision__arm",
            "decision__user",
            "decision__api_key_id",
            "status",
            "latency_ms",
            "cost_usd",
            "total_ms",
        )
    )
    for decision_id, arm, user, api_key_id, status, attempt_ms, cost_usd, total_ms in outcomes:
        unit = assignment_unit(user=user, api_key_id=api_key_id)
        latency_ms = total_ms if total_ms is not None else attempt_ms  # what users waited, fallbacks included
        add(arm, "error", 1.0 if status == Outcome.Status.ERROR else 0.0, unit)
        if latency_ms is not None and status != Outcome.Status.ERROR:
            add(arm, "latency", float(latency_ms), unit)
        cost_by_decision[decision_id] += float(cost_usd)
        of_decision[decision_id] = (arm, unit)
    for decision_id, cost in cost_by_decision.items():
        arm, unit = of_decision[decision_id]
        add(arm, "cost", cost, unit)
    seen: set[Any] = set()
    latest = (
        Feedback.objects.filter(decision__experiment=name)
        .order_by("decision_id", "-created_at", "-id")
        .values_list("decision_id", "decision__arm", "decision__user", "decision__api_key_id", "score")
    )
    for decision_id, arm, user, api_key_id, score in latest:
        if decision_id not in seen:  # the latest feedback per decision counts
            seen.add(decision_id)
            add(arm, "feedback", float(score), assignment_unit(user=user, api_key_id=api_key_id))
    return data, units


def _arm_summary(values: dict[str, list[float]], total: int, units: int) -> dict[str, Any]:
    requests = len(values.get("requests", []))
    errors = values.get("error", [])
    return {
        "requests": requests,
        "units": units,
        "share": proportion(requests, total),
        "spend_usd": round(sum(values.get("cost", [])), 8),
        "cost_per_request_usd": mean_interval(values.get("cost", [])),
        "predicted_cost_per_request_usd": mean_interval(values.get("predicted_cost", [])),
        "feedback_score": mean_interval(values.get("feedback", []), bounds=(0.0, 1.0)),
        "latency_ms": mean_interval(values.get("latency", [])),
        "latency_p50_ms": quantile_interval(values.get("latency", []), 0.5),
        "latency_p95_ms": quantile_interval(values.get("latency", []), 0.95),
        "error_rate": proportion(int(sum(errors)), len(errors)),
    }


# compared metric → (collected series, test, one value per unit for a rank test when clustered);
# each test also says how many samples per arm would detect the observed difference (means: from
# the spread; the error rate: from the proportions), times the design effect when clustered
_MEAN_TESTS = {
    "feedback_score": ("feedback", "welch"),
    "feedback_score_ranks": ("feedback", "mean"),
    "cost_per_request_usd": ("cost", "welch"),
    "latency_ms": ("latency", "median"),
}


def _compare(a: dict[str, list[float]], b: dict[str, list[float]], ua: Any, ub: Any) -> dict[str, Any]:
    tests: dict[str, Any] = {}
    for name, (series, kind) in _MEAN_TESTS.items():
        xs, ys, us, vs = a.get(series, []), b.get(series, []), ua.get(series, []), ub.get(series, [])
        grouped = clustered(us) or clustered(vs)
        if kind == "welch":
            test = clustered_welch_t(xs, us, ys, vs)
        elif grouped:  # the rank test needs independent samples: one value per unit
            test = mann_whitney(unit_values(xs, us, kind), unit_values(ys, vs, kind))
            if test is not None:
                test["over"] = "units"
        else:
            test = mann_whitney(xs, ys)
        tests[name] = _with_needed(test, _needed(needed_per_arm_means(xs, ys), test))
    errors_a, errors_b = a.get("error", []), b.get("error", [])
    units_a, units_b = ua.get("error", []), ub.get("error", [])
    counts = (int(sum(errors_a)), len(errors_a), int(sum(errors_b)), len(errors_b))
    if clustered(units_a) or clustered(units_b):
        error_test = clustered_welch_t(errors_a, units_a, errors_b, units_b)
    else:
        error_test = two_proportion_z(*counts)
    tests["error_rate"] = _with_needed(error_test, _needed(needed_per_arm_proportions(*counts), error_test))
    return {"tests": tests, "significant": sorted(k for k, t in tests.items() if significant(t))}


def _needed(independent: int | None, test: dict[str, Any] | None) -> int | None:
    """Samples per arm to detect the difference, inflated by the test's design effect (clustering)."""
    effect = (test or {}).get("design_effect")
    if independent is None or not isinstance(effect, float) or effect <= 1.0:
        return independent
    return math.ceil(independent * effect)


def _with_needed(test: dict[str, Any] | None, needed: Any) -> dict[str, Any] | None:
    if test is not None:
        test["needed_per_arm"] = needed  # to detect the observed difference at power 0.8
    return test


def experiment_stats_compute(experiment: Experiment) -> dict[str, Any]:
    arms = list(experiment.arms.select_related("policy").order_by("name"))
    data, units = _collect(experiment.name)
    total = sum(len(data[a.name].get("requests", [])) for a in arms)
    control = next((a for a in arms if a.policy_id == experiment.policy_id), arms[0] if arms else None)
    summaries = {
        a.name: {
            "policy": a.policy.slug,
            "weight": a.weight,
            **_arm_summary(data[a.name], total, len(set(units[a.name]["requests"]))),
        }
        for a in arms
    }
    comparisons = [
        {
            "arm": a.name,
            "against": control.name,
            **_compare(data[control.name], data[a.name], units[control.name], units[a.name]),
        }
        for a in arms
        if control is not None and a.name != control.name
    ]
    # sample-ratio mismatch: are the assignment units split as the weights say? (a low p-value
    # means a bug). Units, not requests: each user (else API key) is one draw, and all its requests
    # follow it, so one busy user would make a sound split of requests look broken.
    split_check = None
    weights = [a.weight for a in arms]
    observed = [summaries[a.name]["units"] for a in arms]
    if sum(observed) > 0 and len(arms) >= 2 and sum(weights) > 0:
        expected = [sum(observed) * w / sum(weights) for w in weights]
        kept = [(o, e) for o, e in zip(observed, expected, strict=True) if e > 0]
        chi = sps.chisquare([o for o, _ in kept], [e for _, e in kept])
        split_check = {
            "test": "chi_square_srm",
            "over": "units",
            "units": sum(observed),
            "statistic": float(chi.statistic),
            "p_value": float(chi.pvalue),
        }
    return {
        "confidence": 0.95,
        "control": control.name if control else None,
        "total_requests": total,
        "arms": summaries,
        "comparisons": comparisons,
        "split_check": split_check,
    }


def experiment_stats_refresh(*, experiment_id: int, force: bool = False) -> StatsRefresh:
    with transaction.atomic():
        # the lock serialises two runs of the same task: the second waits, then sees the new watermark
        experiment = Experiment.objects.select_for_update().filter(pk=experiment_id).first()
        if experiment is None:
            raise NotFound(f"Unknown experiment {experiment_id}", code="unknown_experiment")
        watermark = _watermark(experiment.name)
        if not force and experiment.stats.get("watermark") == watermark:
            return StatsRefresh(experiment_id=experiment.pk, updated=False, stats=experiment.stats)
        stats = {
            **experiment_stats_compute(experiment),
            "watermark": watermark,
            "computed_at": timezone.now().isoformat(),
        }
        stats = json_safe(stats)
        experiment.stats = stats
        experiment.stats_updated_at = timezone.now()
        experiment.save(update_fields=["stats", "stats_updated_at"])
    return StatsRefresh(experiment_id=experiment.pk, updated=True, stats=stats)


def experiments_to_refresh(*, ended_within_days: int = 7) -> list[int]:
    """Running experiments, and recently ended ones whose late outcomes/feedback may still move the numbers."""
    since = timezone.now() - timedelta(days=ended_within_days)
    return list(
        Experiment.objects.filter(Q(status=ExperimentStatus.RUNNING) | Q(ended_at__gte=since))
        .order_by("pk")
        .values_list("pk", flat=True)
    )
