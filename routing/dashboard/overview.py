"""The overview's numbers: hourly rollups for the range, plus the few rows newer than the rollup.

Cost of a page view: one indexed read of at most (hours × models) rollup rows and an aggregate
of the rows written since the rollup's watermark (seconds to a minute of traffic), whatever the
size of the decision log.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone

from routing.models import DecisionRollup
from routing.services.rollup import (
    Bucket,
    aggregate_decision_window,
    aggregate_outcomes,
    hist_percentile,
    rollup_catch_up,
    rollup_watermarks,
)
from routing.stats import Z95

RANGES: dict[str, timedelta] = {
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
    "90d": timedelta(days=90),
}
# catch up synchronously when the periodic task has not run for this long (embedded mode has no beat)
STALE_AFTER = timedelta(seconds=30)


@dataclass
class Totals:
    requests: int = 0
    spend_usd: float = 0.0
    baseline_usd: float = 0.0
    savings_usd: float = 0.0
    savings_band_usd: float = 0.0
    savings_pct: float | None = None
    actual_spend_usd: float = 0.0
    outcomes: int = 0
    error_rate: float | None = None
    p50_ms: float | None = None
    p95_ms: float | None = None
    latency_source: str = "predicted"
    quality: float | None = None
    feedback: float | None = None
    feedback_n: int = 0


@dataclass
class Overview:
    start: datetime
    end: datetime
    bucket: str
    totals: Totals
    series: dict[str, Any] = field(default_factory=dict)
    mix: list[tuple[str, int]] = field(default_factory=list)


def savings_band(bucket: Bucket) -> float:
    """95 % half-width of the total saving (normal approximation over per-request savings)."""
    n = bucket.requests
    if n < 2:
        return 0.0
    saving = bucket.baseline_cost_usd - bucket.predicted_cost_usd
    var = max(0.0, (bucket.savings_sq - saving * saving / n) / (n - 1))
    return Z95 * math.sqrt(var * n)


def _tail(
    marks: dict[str, datetime | None], start: datetime, end: datetime
) -> dict[tuple[datetime, str], Bucket]:
    """Rows newer than the rollup's watermarks (or the whole range before the first rollup)."""
    buckets: dict[tuple[datetime, str], Bucket] = {}
    since = {source: max(filter(None, (marks.get(source), start))) for source in ("decisions", "outcomes")}
    aggregate_decision_window(since["decisions"], end, buckets)
    aggregate_outcomes(since["outcomes"], end, buckets)
    return buckets


def overview_data(*, start: datetime, end: datetime, now: datetime | None = None) -> Overview:
    now = now or timezone.now()
    marks = rollup_watermarks()
    decided = marks.get("decisions")
    if decided is None or now - decided > STALE_AFTER:
        rollup_catch_up(now=now, budget_s=5.0)
        marks = rollup_watermarks()
    hour0 = start.replace(minute=0, second=0, microsecond=0)
    per_time: dict[datetime, Bucket] = defaultdict(Bucket)
    per_model: dict[str, Bucket] = defaultdict(Bucket)
    span = end - start
    bucket_kind = "hour" if span <= timedelta(days=3) else "day"

    def slot(hour: datetime) -> datetime:
        return hour if bucket_kind == "hour" else hour.replace(hour=0)

    for row in DecisionRollup.objects.filter(hour__gte=hour0, hour__lt=end).iterator(chunk_size=2000):
        per_time[slot(row.hour)].merge(row)
        per_model[row.model].merge(row)
    if end >= now - timedelta(minutes=5):
        for (hour, model), b in _tail(marks, start, end).items():
            if hour >= hour0:
                per_time[slot(hour)].merge(b)
                per_model[model].merge(b)
    total = Bucket()
    for b in per_model.values():
        total.merge(b)
    return Overview(
        start=start,
        end=end,
        bucket=bucket_kind,
        totals=_totals(total),
        series=_series(per_time),
        mix=sorted(
            ((m or "(none)", b.requests) for m, b in per_model.items() if b.requests), key=lambda x: -x[1]
        ),
    )


def _totals(total: Bucket) -> Totals:
    saving = total.baseline_cost_usd - total.predicted_cost_usd
    hist = total.latency_hist if sum(total.latency_hist) else total.predicted_latency_hist
    return Totals(
        requests=total.requests,
        spend_usd=total.predicted_cost_usd,
        baseline_usd=total.baseline_cost_usd,
        savings_usd=saving,
        savings_band_usd=savings_band(total),
        savings_pct=(100 * saving / total.baseline_cost_usd) if total.baseline_cost_usd else None,
        actual_spend_usd=total.outcome_cost_usd,
        outcomes=total.outcomes,
        error_rate=(total.outcome_errors / total.outcomes) if total.outcomes else None,
        p50_ms=hist_percentile(hist, 0.5),
        p95_ms=hist_percentile(hist, 0.95),
        latency_source="measured" if sum(total.latency_hist) else "predicted",
        quality=(total.predicted_quality_sum / total.predicted_quality_n)
        if total.predicted_quality_n
        else None,
        feedback=(total.feedback_sum / total.feedback_n) if total.feedback_n else None,
        feedback_n=total.feedback_n,
    )


def _series(per_time: dict[datetime, Bucket]) -> dict[str, Any]:
    labels, requests, spend, baseline, low, high, p50, p95, feedback = [], [], [], [], [], [], [], [], []
    for t in sorted(per_time):
        b = per_time[t]
        saving = b.baseline_cost_usd - b.predicted_cost_usd
        band = savings_band(b)
        hist = b.latency_hist if sum(b.latency_hist) else b.predicted_latency_hist
        labels.append(t.isoformat())
        requests.append(b.requests)
        spend.append(round(b.predicted_cost_usd, 6))
        baseline.append(round(b.baseline_cost_usd, 6))
        low.append(round(saving - band, 6))
        high.append(round(saving + band, 6))
        p50.append(hist_percentile(hist, 0.5))
        p95.append(hist_percentile(hist, 0.95))
        feedback.append(round(b.feedback_sum / b.feedback_n, 4) if b.feedback_n else None)
    return {
        "labels": labels,
        "requests": requests,
        "spend": spend,
        "baseline": baseline,
        "savings_low": low,
        "savings_high": high,
        "p50": p50,
        "p95": p95,
        "feedback": feedback,
    }
