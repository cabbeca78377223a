"""Hourly rollup of decisions, outcomes and feedback per chosen model (the overview's data).

`rollup_catch_up` aggregates the rows that arrived since each source's watermark into
DecisionRollup rows, one time window per transaction, holding the source's RollupState row lock
(so two runners never count a row twice). The route path is not involved: it only inserts rows.
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from feedback.models import Feedback, Outcome
from routing.models import DecisionLog, DecisionRollup, RollupState

# Rows younger than this may belong to transactions that have not committed yet.
ROLLUP_LAG = timedelta(seconds=5)
WINDOW = timedelta(hours=6)
# Log-spaced latency histogram edges: 10 ms × 1.25^i up to ~6 minutes (≤ 12 % percentile error).
LATENCY_EDGES_MS: tuple[float, ...] = tuple(10.0 * 1.25**i for i in range(48))


def latency_bucket(ms: float) -> int:
    return bisect.bisect_right(LATENCY_EDGES_MS, ms)


def hist_add(into: list[int], other: Sequence[int]) -> list[int]:
    size = len(LATENCY_EDGES_MS) + 1
    if len(into) < size:
        into.extend([0] * (size - len(into)))
    for i, n in enumerate(other[:size]):
        into[i] += int(n)
    return into


def hist_percentile(hist: Sequence[int], q: float) -> float | None:
    """The q-quantile (0–1) of a merged histogram: geometric middle of the bucket holding it."""
    total = sum(hist)
    if total == 0:
        return None
    target = q * total
    seen = 0
    for i, n in enumerate(hist):
        seen += n
        if seen >= target and n:
            low = LATENCY_EDGES_MS[i - 1] if i > 0 else LATENCY_EDGES_MS[0] / 1.25
            high = LATENCY_EDGES_MS[i] if i < len(LATENCY_EDGES_MS) else LATENCY_EDGES_MS[-1] * 1.25
            return math.sqrt(low * high)
    return None


def baseline_cost(candidates: Iterable[Mapping[str, Any]]) -> float | None:
    """Predicted cost of sending this request to the best model: the highest predicted quality
    among all candidates (excluded ones too), the cheapest of those on a tie (conservative)."""
    best: tuple[float, float] | None = None
    for c in candidates:
        p = c.get("predictions") if isinstance(c, Mapping) else None
        if not p or p.get("cost_usd") is None or p.get("quality") is None:
            continue
        key = (float(p["quality"]), -float(p["cost_usd"]))
        if best is None or key > best:
            best = key
    return None if best is None else -best[1]


def _chosen_latency(candidates: Iterable[Mapping[str, Any]], chosen: str) -> float | None:
    for c in candidates:
        if isinstance(c, Mapping) and c.get("model") == chosen:
            p = c.get("predictions") or {}
            return p.get("latency_ms")
    return None


@dataclass
class Bucket:
    requests: int = 0
    predicted_cost_usd: float = 0.0
    baseline_cost_usd: float = 0.0
    savings_sq: float = 0.0
    predicted_quality_sum: float = 0.0
    predicted_quality_n: int = 0
    predicted_latency_hist: list[int] = field(default_factory=list)
    outcomes: int = 0
    outcome_errors: int = 0
    outcome_cost_usd: float = 0.0
    calls: int = 0
    call_errors: int = 0
    latency_hist: list[int] = field(default_factory=list)
    feedback_n: int = 0
    feedback_sum: float = 0.0

    def add_decision(
        self, *, candidates: Any, chosen: str, cost: float | None, quality: float | None
    ) -> None:
        self.requests += 1
        if cost is not None:
            base = baseline_cost(candidates or ())
            base = cost if base is None else base  # nothing to compare with: no saving claimed
            self.predicted_cost_usd += cost
            self.baseline_cost_usd += base
            self.savings_sq += (base - cost) ** 2
        if quality is not None:
            self.predicted_quality_sum += quality
            self.predicted_quality_n += 1
        latency = _chosen_latency(candidates or (), chosen)
        if latency is not None:
            hist_add(self.predicted_latency_hist, ())
            self.predicted_latency_hist[latency_bucket(latency)] += 1

    def merge(self, other: Bucket | DecisionRollup) -> None:
        for name in (
            "requests",
            "predicted_cost_usd",
            "baseline_cost_usd",
            "savings_sq",
            "predicted_quality_sum",
            "predicted_quality_n",
            "outcomes",
            "outcome_errors",
            "outcome_cost_usd",
            "calls",
            "call_errors",
            "feedback_n",
            "feedback_sum",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        hist_add(self.predicted_latency_hist, other.predicted_latency_hist or ())
        hist_add(self.latency_hist, other.latency_hist or ())


def _hour(dt: datetime) -> datetime:
    return dt.replace(minute=0, second=0, microsecond=0)


Buckets = dict[tuple[datetime, str], Bucket]


def aggregate_decisions(
    rows: Iterable[tuple[datetime, str, Any, float | None, float | None]], into: Buckets
) -> int:
    n = 0
    for created_at, model, candidates, cost, quality in rows:
        into.setdefault((_hour(created_at), model), Bucket()).add_decision(
            candidates=candidates, chosen=model, cost=cost, quality=quality
        )
        n += 1
    return n


# PostgreSQL does the per-row JSON work in C: the baseline (best predicted quality, cheapest on a
# tie) and the chosen model's predicted latency come out of `candidates` inside the query, and the
# rows come back already grouped by (hour, model, latency bucket). Same numbers as the Python path.
_PG_DECISIONS = """
WITH r AS (
  SELECT date_trunc('hour', d.created_at) AS hour, d.chosen_model AS model,
         d.predicted_cost_usd AS cost, d.predicted_quality AS quality,
         (SELECT (c->'predictions'->>'cost_usd')::float8 FROM jsonb_array_elements(d.candidates) c
           WHERE jsonb_typeof(c->'predictions') = 'object'
             AND c->'predictions'->>'cost_usd' IS NOT NULL AND c->'predictions'->>'quality' IS NOT NULL
           ORDER BY (c->'predictions'->>'quality')::float8 DESC, (c->'predictions'->>'cost_usd')::float8 ASC
           LIMIT 1) AS base,
         (SELECT (c->'predictions'->>'latency_ms')::float8 FROM jsonb_array_elements(d.candidates) c
           WHERE c->>'model' = d.chosen_model LIMIT 1) AS latency
  FROM routing_decisionlog d
  WHERE d.created_at > %s AND d.created_at <= %s
)
SELECT hour, model,
       CASE WHEN latency IS NULL THEN -1 WHEN latency < 10 THEN 0
            ELSE least(48, floor(ln(latency / 10.0) / ln(1.25))::int + 1) END AS bucket,
       count(*), coalesce(sum(cost), 0), coalesce(sum(coalesce(base, cost)), 0),
       coalesce(sum(power(coalesce(base, cost) - cost, 2)), 0), coalesce(sum(quality), 0), count(quality)
FROM r GROUP BY 1, 2, 3
"""


def aggregate_decision_window(start: datetime | None, end: datetime, into: Buckets) -> int:
    """Aggregate the decisions with start < created_at <= end into `into`; returns the row count."""
    if connection.vendor != "postgresql":
        return aggregate_decisions(decision_rows(start, end).iterator(chunk_size=5000), into)
    n = 0
    with connection.cursor() as cursor:
        cursor.execute(_PG_DECISIONS, [start or datetime(1970, 1, 1, tzinfo=UTC), end])
        for hour, model, bucket, count, cost, base, sq, quality, quality_n in cursor.fetchall():
            b = into.setdefault((hour.astimezone(UTC), model), Bucket())
            b.requests += count
            b.predicted_cost_usd += cost
            b.baseline_cost_usd += base
            b.savings_sq += sq
            b.predicted_quality_sum += quality
            b.predicted_quality_n += quality_n
            if bucket >= 0:
                hist_add(b.predicted_latency_hist, ())
                b.predicted_latency_hist[bucket] += count
            n += count
    return n


def decision_rows(start: datetime | None, end: datetime) -> Any:
    qs = DecisionLog.objects.filter(created_at__lte=end)
    if start is not None:
        qs = qs.filter(created_at__gt=start)
    return qs.values_list(
        "created_at", "chosen_model", "candidates", "predicted_cost_usd", "predicted_quality"
    )


def aggregate_outcomes(start: datetime | None, end: datetime, into: Buckets) -> int:
    # a call refused by a budget was never made: it is neither an outcome of its model nor an error
    qs = Outcome.objects.filter(created_at__lte=end).exclude(status=Outcome.Status.REFUSED)
    if start is not None:
        qs = qs.filter(created_at__gt=start)
    n = 0
    for created_at, model, status, cost, latency, attempts in qs.values_list(
        "created_at", "model_name", "status", "cost_usd", "latency_ms", "attempts"
    ).iterator(chunk_size=5000):
        hour = _hour(created_at)
        b = into.setdefault((hour, model), Bucket())
        b.outcomes += 1
        b.outcome_errors += status == Outcome.Status.ERROR
        b.outcome_cost_usd += float(cost or 0)
        # every upstream call counts for the model it went to: a fallback's failed attempts too
        for attempt in attempts or ():
            called = attempt.get("model") if isinstance(attempt, dict) else None
            if called:
                c = into.setdefault((hour, called), Bucket())
                c.calls += 1
                c.call_errors += attempt.get("result") == "error"
        if latency is not None:
            hist_add(b.latency_hist, ())
            b.latency_hist[latency_bucket(latency)] += 1
        n += 1
    return n


def aggregate_feedback(after_id: int, end: datetime, into: Buckets) -> tuple[int, int]:
    qs = Feedback.objects.filter(id__gt=after_id, created_at__lte=end).order_by("id")
    n, last = 0, after_id
    for fid, created_at, model, score in qs.values_list(
        "id", "created_at", "decision__chosen_model", "score"
    ).iterator(chunk_size=5000):
        b = into.setdefault((_hour(created_at), model or ""), Bucket())
        b.feedback_n += 1
        b.feedback_sum += score
        n, last = n + 1, fid
    return n, last


def _store(buckets: Buckets) -> None:
    if not buckets:
        return
    hours = {h for h, _ in buckets}
    existing = {
        (r.hour, r.model): r
        for r in DecisionRollup.objects.filter(hour__in=hours, model__in={m for _, m in buckets})
    }
    new, touched = [], []
    for (hour, model), bucket in buckets.items():
        row = existing.get((hour, model))
        if row is None:
            row = DecisionRollup(hour=hour, model=model, predicted_latency_hist=[], latency_hist=[])
            new.append(row)
        else:
            touched.append(row)
        acc = Bucket()
        acc.merge(row)
        acc.merge(bucket)
        for name, value in acc.__dict__.items():
            setattr(row, name, value)
    DecisionRollup.objects.bulk_create(new, batch_size=500)
    if touched:
        DecisionRollup.objects.bulk_update(touched, [f for f in Bucket.__dataclass_fields__], batch_size=500)


def _state(source: str) -> RollupState:
    # the row lock makes this runner the only one advancing `source` (others skip, see callers)
    RollupState.objects.get_or_create(source=source)
    state = RollupState.objects.select_for_update(skip_locked=True).filter(source=source).first()
    if state is None:
        raise _Busy
    return state


class _Busy(Exception):
    pass


def _first_decision_time() -> datetime | None:
    first = DecisionLog.objects.order_by("created_at").values_list("created_at", flat=True).first()
    return None if first is None else first - timedelta(microseconds=1)


def rollup_catch_up(
    *, now: datetime | None = None, budget_s: float | None = None, lag: timedelta = ROLLUP_LAG
) -> int:
    """Aggregate what arrived since the watermarks, up to now - lag. Returns rows aggregated.

    With `budget_s` it stops after the window that exceeds it (the next call continues)."""
    cutoff = (now or timezone.now()) - lag
    started = time.monotonic()
    total = 0
    try:
        while True:
            with transaction.atomic(durable=True):
                state = _state("decisions")
                start = state.watermark or _first_decision_time()
                if start is None or start >= cutoff:
                    break
                end = min(start + WINDOW, cutoff)
                buckets: Buckets = {}
                total += aggregate_decision_window(start, end, buckets)
                _store(buckets)
                state.watermark = end
                state.save(update_fields=["watermark", "updated_at"])
            if budget_s is not None and time.monotonic() - started > budget_s:
                return total
        with transaction.atomic(durable=True):
            state = _state("outcomes")
            buckets = {}
            total += aggregate_outcomes(state.watermark, cutoff, buckets)
            _store(buckets)
            state.watermark = cutoff
            state.save(update_fields=["watermark", "updated_at"])
        with transaction.atomic(durable=True):
            state = _state("feedback")
            buckets = {}
            n, state.last_id = aggregate_feedback(state.last_id, cutoff, buckets)
            total += n
            _store(buckets)
            state.watermark = cutoff
            state.save(update_fields=["watermark", "last_id", "updated_at"])
    except _Busy:
        pass  # another runner holds the lock and is doing this work
    return total


def rollup_watermarks() -> dict[str, datetime | None]:
    return {s.source: s.watermark for s in RollupState.objects.all()}


def rollup_rebuild() -> int:
    """Drop and recompute every rollup (after a manual data repair); normal runs are incremental."""
    with transaction.atomic():
        DecisionRollup.objects.all().delete()
        RollupState.objects.all().delete()
    return rollup_catch_up()
