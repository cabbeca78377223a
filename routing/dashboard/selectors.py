"""Reads for the providers, experiments and predictor pages (each bounded by an index or a rollup)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache
from typing import Any

from django.db.models import Avg, Count, OuterRef, Q, QuerySet, StdDev, Subquery, Sum
from django.utils import timezone

from feedback.models import Feedback, Outcome, PredictorVersion, TrainingRun
from providers.models import LLMModel
from routing.dashboard.experiment_report import ExperimentReport, experiment_report
from routing.models import DecisionLog, DecisionRollup, Experiment
from routing.stats import t_interval, wilson_interval


@dataclass(frozen=True, slots=True)
class ModelRow:
    model: LLMModel
    circuit: str
    circuit_reason: str
    requests_24h: int
    calls_24h: int  # upstream calls, fallback attempts included
    errors_24h: int

    @property
    def error_rate(self) -> float | None:
        return self.errors_24h / self.calls_24h if self.calls_24h else None


def _circuits(names: list[str]) -> dict[str, Any]:
    try:
        from providers.circuit import circuit_states
    except ImportError:  # the breaker module is optional in this layer
        return {}
    try:
        return dict(circuit_states(names))
    except Exception:  # a cache outage must not take the page down; the state shows as unknown
        return {}


def catalog_rows() -> list[ModelRow]:
    models = list(LLMModel.objects.select_related("provider").order_by("provider__name", "name"))
    since = timezone.now().replace(minute=0, second=0, microsecond=0) - timedelta(hours=23)
    health = {
        r["model"]: r
        for r in DecisionRollup.objects.filter(hour__gte=since)
        .values("model")
        .annotate(requests=Sum("requests"), calls=Sum("calls"), errors=Sum("call_errors"))
    }
    circuits = _circuits([m.name for m in models])
    rows = []
    for m in models:
        h: Mapping[str, Any] = health.get(m.name, {})
        status = circuits.get(m.name)
        rows.append(
            ModelRow(
                model=m,
                circuit=str(getattr(status, "state", "unknown")) if status is not None else "unknown",
                circuit_reason=str(getattr(status, "reason", "")) if status is not None else "",
                requests_24h=int(h.get("requests") or 0),
                calls_24h=int(h.get("calls") or 0),
                errors_24h=int(h.get("errors") or 0),
            )
        )
    return rows


def latest_feedback() -> QuerySet[Feedback]:
    """Each decision's latest rating. Every rating is kept, but only the latest per decision counts
    (as in the scheduled analysis and in training): a re-rated decision must not weigh twice."""
    newest = Feedback.objects.filter(decision=OuterRef("decision")).order_by("-created_at", "-id")
    return Feedback.objects.filter(pk=Subquery(newest.values("pk")[:1]))  # the feedback_latest index


@dataclass(frozen=True, slots=True)
class ArmStats:
    name: str
    policy: str
    weight: int
    decisions: int
    cost_per_1k: float | None
    quality: float | None
    feedback_n: int
    feedback: float | None
    feedback_ci: tuple[float, float] | None
    outcomes: int
    error_rate: float | None
    error_ci: tuple[float, float] | None


def experiment_stats(experiment: Experiment) -> list[ArmStats]:
    """Live per-arm statistics from the decision log (served by the decision_experiment_time index)."""
    decisions = {
        r["arm"]: r
        for r in DecisionLog.objects.filter(experiment=experiment.name)
        .values("arm")
        .annotate(n=Count("id"), cost=Avg("predicted_cost_usd"), quality=Avg("predicted_quality"))
    }
    feedback = {
        r["decision__arm"]: r
        for r in latest_feedback()
        .filter(decision__experiment=experiment.name)
        .values("decision__arm")
        .annotate(n=Count("id"), mean=Avg("score"), std=StdDev("score", sample=True))
    }
    outcomes = {
        r["decision__arm"]: r
        for r in Outcome.objects.filter(decision__experiment=experiment.name)
        .exclude(status=Outcome.Status.REFUSED)
        .values("decision__arm")
        .annotate(n=Count("id"), errors=Count("id", filter=Q(status=Outcome.Status.ERROR)))
    }
    stats = []
    for arm in experiment.arms.select_related("policy").all():
        d: Mapping[str, Any] = decisions.get(arm.name, {})
        f: Mapping[str, Any] = feedback.get(arm.name, {})
        o: Mapping[str, Any] = outcomes.get(arm.name, {})
        fn, on = int(f.get("n") or 0), int(o.get("n") or 0)
        stats.append(
            ArmStats(
                name=arm.name,
                policy=arm.policy.slug,
                weight=arm.weight,
                decisions=int(d.get("n") or 0),
                cost_per_1k=1000 * d["cost"] if d.get("cost") is not None else None,
                quality=d.get("quality"),
                feedback_n=fn,
                feedback=f.get("mean"),
                feedback_ci=t_interval(f.get("mean"), f.get("std"), fn, bounds=(0.0, 1.0)),
                outcomes=on,
                error_rate=(o["errors"] / on) if on else None,
                error_ci=wilson_interval(int(o.get("errors") or 0), on),
            )
        )
    return stats


def stored_analysis(experiment: Experiment) -> ExperimentReport | None:
    """The last scheduled significance analysis, in words and chart data (None before the first run)."""
    return experiment_report(experiment.stats, chart_prefix=f"experiment-{experiment.pk}")


def experiments_with_stats() -> list[tuple[Experiment, list[ArmStats], ExperimentReport | None]]:
    experiments = Experiment.objects.select_related("policy").order_by("status", "-created_at")[:50]
    return [(e, experiment_stats(e), stored_analysis(e)) for e in experiments]


# --- predictor ---------------------------------------------------------------------------------


def _numbers(metrics: Mapping[str, Any], prefix: str = "") -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            out.append((name, float(value)))
        elif isinstance(value, Mapping) and len(out) < 60:
            out.extend(_numbers(value, f"{name}."))
    return out[:60]


def _calibration(metrics: Mapping[str, Any]) -> list[dict[str, float]]:
    """Calibration bins as [{predicted, observed, count}], from whichever shape the trainer stored."""
    raw = metrics.get("calibration")
    if isinstance(raw, Mapping):
        raw = raw.get("bins") or raw.get("quality")
    bins = []
    for item in raw if isinstance(raw, list) else []:
        if isinstance(item, Mapping):
            predicted = item.get("predicted", item.get("mean_predicted", item.get("p")))
            observed = item.get("observed", item.get("mean_observed", item.get("actual")))
            count = item.get("count", item.get("n", 0))
        elif isinstance(item, list | tuple) and len(item) >= 2:
            predicted, observed, count = item[0], item[1], item[2] if len(item) > 2 else 0
        else:
            continue
        if isinstance(predicted, int | float) and isinstance(observed, int | float):
            bins.append(
                {"predicted": float(predicted), "observed": float(observed), "count": float(count or 0)}
            )
    return bins


@lru_cache(maxsize=8)
def _artifact_importance(name: str) -> tuple[tuple[str, float], ...]:
    """Total gain per design feature over the quality boosters (cached per version: artifacts are immutable)."""
    try:
        import xgboost as xgb

        from routing.predictor.artifact import unpack

        row = PredictorVersion.objects.filter(name=name).only("artifact").first()
        if row is None:
            return ()
        predictor = unpack(bytes(row.artifact), version=name)
        totals: dict[str, float] = {}
        for role, raw in zip(predictor.roles, predictor.boosters, strict=False):
            if role != "quality":
                continue
            booster = xgb.Booster()
            booster.load_model(bytearray(raw))
            for key, gain in booster.get_score(importance_type="total_gain").items():
                index = int(key[1:]) if key[:1] == "f" and key[1:].isdigit() else -1
                label = predictor.names[index] if 0 <= index < len(predictor.names) else key
                totals[label] = totals.get(label, 0.0) + float(gain)  # type: ignore[arg-type]
    except Exception:  # an unreadable artifact must not take the page down; the chart is just empty
        return ()
    total = sum(totals.values()) or 1.0
    return tuple(sorted(((k, v / total) for k, v in totals.items()), key=lambda p: -p[1])[:20])


def live_calibration(version: str, *, limit: int = 20_000, bins: int = 10) -> list[dict[str, float]]:
    """Predicted quality of the chosen model vs. the feedback it got (its latest rating), for the
    latest `limit` rated decisions."""
    pairs = (
        latest_feedback()
        .filter(decision__predictor_version=version, decision__predicted_quality__isnull=False)
        .order_by("-id")
        .values_list("decision__predicted_quality", "score")[:limit]
    )
    sums = [[0.0, 0.0, 0] for _ in range(bins)]
    for predicted, observed in pairs:
        if predicted is None:
            continue
        b = sums[min(bins - 1, max(0, int(predicted * bins)))]
        b[0] += predicted
        b[1] += observed
        b[2] += 1
    return [{"predicted": p / n, "observed": o / n, "count": float(n)} for p, o, n in sums if n]


def _importance(version: PredictorVersion) -> list[tuple[str, float]]:
    raw: Any = None
    for source in (version.metadata or {}, version.metrics or {}):
        raw = source.get("feature_importance") or source.get("importance")
        if raw:
            break
    pairs: list[tuple[str, float]] = []
    if isinstance(raw, Mapping):
        if raw and all(isinstance(v, Mapping) for v in raw.values()):  # per target: take the quality head
            raw = raw.get("quality") or next(iter(raw.values()))
        pairs = [(str(k), float(v)) for k, v in raw.items() if isinstance(v, int | float)]
    elif isinstance(raw, list):
        for item in raw:
            if isinstance(item, Mapping) and isinstance(
                item.get("importance", item.get("gain")), int | float
            ):
                pairs.append((str(item.get("feature")), float(item.get("importance", item.get("gain")))))
            elif isinstance(item, list | tuple) and len(item) == 2 and isinstance(item[1], int | float):
                pairs.append((str(item[0]), float(item[1])))
    return sorted(pairs, key=lambda p: -p[1])[:20] or list(_artifact_importance(version.name))


@dataclass(frozen=True, slots=True)
class PredictorPage:
    versions: list[PredictorVersion]
    shown: PredictorVersion | None
    metrics: list[tuple[str, float]]
    calibration: list[dict[str, float]]
    calibration_source: str
    importance: list[tuple[str, float]]
    runs: list[TrainingRun]
    shadow: PredictorVersion | None = None  # the version scoring live traffic beside the active one

    @property
    def shadow_summary(self) -> dict[str, Any]:
        return (
            dict(((self.shadow.metadata or {}).get("shadow") or {}).get("summary") or {})
            if self.shadow
            else {}
        )


def predictor_page(*, version_name: str = "") -> PredictorPage:
    versions = list(PredictorVersion.objects.defer("artifact").order_by("-created_at")[:30])
    shown = next((v for v in versions if v.name == version_name), None) if version_name else None
    shown = shown or next((v for v in versions if v.is_active), None) or (versions[0] if versions else None)
    stored = _calibration(shown.metrics or {}) if shown else []
    calibration = stored or (live_calibration(shown.name) if shown else [])
    return PredictorPage(
        versions=versions,
        shown=shown,
        metrics=_numbers(shown.metrics or {}) if shown else [],
        calibration=calibration,
        calibration_source="held-out evaluation" if stored else "live feedback on this version's decisions",
        importance=_importance(shown) if shown else [],
        runs=list(TrainingRun.objects.order_by("-created_at")[:10]),
        shadow=PredictorVersion.objects.defer("artifact").filter(metadata__shadow__isnull=False).first(),
    )
