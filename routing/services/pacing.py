"""Budget pacing: keep a policy's spend on its target by publishing new α versions.

A policy opts in with `options.spend_target`, e.g. {"usd": 50, "period": "day"} (period: day or
month, UTC). The controller (a periodic Celery task) measures the period's spend so far, the
recent request rate and the recent decisions' logged candidates, replays those decisions at other
α values (routing.pacing) and publishes the highest α whose projected end-of-period spend fits
the target. Every change is a PolicyAdjustment row with its reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from feedback.models import Outcome
from routing.models import DecisionLog, PolicyAdjustment, PolicyVersion, RoutingPolicy
from routing.pacing import PacingChoice, choose_alpha, logged_choice
from routing.services.policies import VERSIONED_FIELDS, policy_publish
from scope_site.errors import InvalidRequest, NotFound

PERIODS = ("day", "month")
SYSTEM_ACTOR = "system:pacing"


@dataclass(frozen=True, slots=True)
class SpendTarget:
    usd: float
    period: str
    min_alpha: float = 0.0
    max_alpha: float = 1.0
    max_step: float = 0.2


@dataclass(frozen=True, slots=True)
class PacingResult:
    policy: str
    action: str  # adjusted | unchanged | skipped
    reason: str
    adjustment: PolicyAdjustment | None = None


def spend_target_parse(options: Any) -> SpendTarget | None:
    """The policy's spend target, or None; a malformed one is an InvalidRequest naming the field."""
    raw = (options or {}).get("spend_target") if isinstance(options, dict) else None
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise InvalidRequest("options.spend_target: must be an object like {usd: 50, period: day}")
    usd, period = raw.get("usd"), raw.get("period", "day")
    if isinstance(usd, bool) or not isinstance(usd, int | float) or not 0 < usd < math.inf:
        raise InvalidRequest("options.spend_target.usd: must be a positive number")
    if period not in PERIODS:
        raise InvalidRequest("options.spend_target.period: must be 'day' or 'month'")
    bounds = {k: raw.get(k, d) for k, d in (("min_alpha", 0.0), ("max_alpha", 1.0), ("max_step", 0.2))}
    for key, value in bounds.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
            raise InvalidRequest(f"options.spend_target.{key}: must be a number in [0, 1]")
    if bounds["min_alpha"] > bounds["max_alpha"]:
        raise InvalidRequest("options.spend_target: min_alpha must not exceed max_alpha")
    return SpendTarget(usd=float(usd), period=period, **{k: float(v) for k, v in bounds.items()})


def period_bounds(period: str, now: datetime) -> tuple[datetime, datetime]:
    start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "month":
        start = start.replace(day=1)
        end = (start + timedelta(days=32)).replace(day=1)
    else:
        end = start + timedelta(days=1)
    return start, end


def policy_spend_usd(*, slug: str, since: datetime) -> float:
    """Actual cost of executed decisions plus the predicted cost of decisions executed elsewhere."""
    executed = Outcome.objects.filter(decision__policy_slug=slug, decision__created_at__gte=since).aggregate(
        s=Sum("cost_usd")
    )["s"] or Decimal(0)
    route_only = (
        DecisionLog.objects.filter(policy_slug=slug, created_at__gte=since, outcomes__isnull=True).aggregate(
            s=Sum("predicted_cost_usd")
        )["s"]
        or 0.0
    )
    return float(executed) + float(route_only)


def _cost_scale(slug: str, since: datetime) -> float:
    """Actual ÷ predicted cost on recent executed decisions, so projections correct the predictor's bias."""
    executed = Outcome.objects.filter(decision__policy_slug=slug, decision__created_at__gte=since)
    rows = executed.exclude(status=Outcome.Status.REFUSED).aggregate(
        actual=Sum("cost_usd"), predicted=Sum("decision__predicted_cost_usd")
    )
    actual, predicted = float(rows["actual"] or 0), float(rows["predicted"] or 0)
    if actual <= 0 or predicted <= 0:
        return 1.0
    return min(4.0, max(0.25, actual / predicted))


def pacing_adjust(*, policy_id: int, now: datetime | None = None) -> PacingResult:
    """One controller step for one policy; safe to run twice (a second run within the interval skips)."""
    now = now or timezone.now()
    lookback = timedelta(seconds=settings.SCOPE_PACING_LOOKBACK_SECONDS)
    min_interval = timedelta(seconds=settings.SCOPE_PACING_MIN_INTERVAL_SECONDS)
    with transaction.atomic():
        # lock the policy: two controller runs must not both publish a version from the same state
        policy = (
            RoutingPolicy.objects.select_for_update(of=("self",))
            .select_related("current")
            .filter(pk=policy_id)
            .first()
        )
        if policy is None:
            raise NotFound(f"Unknown policy {policy_id}", code="unknown_policy")
        current = policy.current
        try:
            target = spend_target_parse(current.options) if current else None
        except InvalidRequest as exc:  # a malformed target must not fail the periodic task forever
            return PacingResult(policy.slug, "skipped", f"malformed spend target: {exc.message}")
        if current is None or target is None:
            return PacingResult(policy.slug, "skipped", "no spend target")
        last = policy.adjustments.order_by("-created_at").first()
        if last is not None and now - last.created_at < min_interval:
            return PacingResult(
                policy.slug, "skipped", f"adjusted {int((now - last.created_at).total_seconds())} s ago"
            )
        start, end = period_bounds(target.period, now)
        spent = policy_spend_usd(slug=policy.slug, since=start)
        window_start = now - lookback  # the recent rate and mix of requests the projection assumes
        recent = list(
            DecisionLog.objects.filter(
                policy_slug=policy.slug, created_at__gte=window_start, created_at__lte=now
            )
            .order_by("-created_at")
            .values_list("candidates", flat=True)[: settings.SCOPE_PACING_MAX_DECISIONS]
        )
        aversion = float(current.options.get("risk_aversion", 0.5))
        choices = [c for c in (logged_choice(cands, aversion) for cands in recent) if c is not None]
        window_s = max((now - window_start).total_seconds(), 1.0)
        rate = len(recent) / window_s  # decisions per second (capped sample: a lower bound at scale)
        choice = choose_alpha(
            choices=choices,
            current_alpha=current.alpha,
            spent_usd=spent,
            target_usd=target.usd,
            expected_requests=rate * max((end - now).total_seconds(), 0.0),
            cost_scale=_cost_scale(policy.slug, window_start),
            min_alpha=target.min_alpha,
            max_alpha=target.max_alpha,
            max_step=target.max_step,
        )
        if abs(choice.alpha - current.alpha) < 0.01:
            return PacingResult(policy.slug, "unchanged", f"α stays {current.alpha:.3f}: {choice.reason}")
        return _publish(policy, current, choice, spent=spent, target=target)


def _publish(
    policy: RoutingPolicy, current: PolicyVersion, choice: PacingChoice, *, spent: float, target: SpendTarget
) -> PacingResult:
    values = {f: getattr(current, f) for f in VERSIONED_FIELDS}
    values["alpha"] = choice.alpha
    reason = f"{'lowered' if choice.alpha < current.alpha else 'raised'} α {current.alpha:.3f} → {choice.alpha:.3f}: {choice.reason}"
    version = policy_publish(slug=policy.slug, created_by=SYSTEM_ACTOR, note=reason[:300], **values)
    adjustment = PolicyAdjustment.objects.create(
        policy=policy,
        from_version=current.version,
        to_version=version.version,
        old_alpha=current.alpha,
        new_alpha=choice.alpha,
        spend_usd=spent,
        target_usd=target.usd,
        reason=reason,
    )
    return PacingResult(policy.slug, "adjusted", reason, adjustment)


def paced_policies() -> list[int]:
    """Policies whose current version sets a spend target (the controller's work list)."""
    return [
        p.pk
        for p in RoutingPolicy.objects.select_related("current").exclude(current=None)
        if p.current is not None
        and isinstance(p.current.options, dict)
        and p.current.options.get("spend_target")
    ]
