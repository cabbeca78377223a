"""Per-API-key admission: a requests-per-minute limit and USD budgets per day and per month.

Requests per minute live in the cache (Redis in production): one counter per 5 s over the last
minute, each an atomic INCR, read together in one MGET. When the cache is down the limit is not enforced for a while (logged), because an
unavailable rate-limit store must not take routing down with it.

Budgets are money, so they live in the database (SpendLedger, one row per key and period) and
survive a Redis restart or eviction. Admission locks the key's day and month rows
(select_for_update), checks spent + reserved + this call's predicted cost against each budget and
adds the predicted cost to `reserved` in the same transaction; concurrent requests of the same key
queue on that lock, so together they can never reserve past the budget. After the call
`budget_settle` moves the reservation to `spent` at the actual cost. A call whose process died
before settling keeps its reservation until SCOPE_BUDGET_HOLD_TTL_S, then counts as spent at the
reserved amount (the upstream may have billed it).
"""

from __future__ import annotations

import datetime as dt
import math
import time
import uuid
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from routing.models import ApiKey, BudgetHold, SpendLedger, SpendPeriod
from routing.services.counters import CACHE_ERRORS, counter_take, counters_get, warn_degraded
from scope_site.errors import RateLimited
from scope_site.renderers import api_time

_WINDOW_S = 60
# the RPM window's counters: the finer, the closer Retry-After is to the real time a slot frees,
# and the more counters each limited request reads in its one MGET (1 s buckets, 61 keys, cost
# about 0.7 ms more per request on Redis than the 2 counters this replaced; 5 s buckets about 0.1 ms)
_RPM_BUCKET_S = 5
_RPM_BUCKETS = _WINDOW_S // _RPM_BUCKET_S  # before the current one
_CENT = Decimal("0.01")
_MICRO = Decimal("0.00000001")


def _clock() -> float:
    """Wall-clock seconds; the one place tests move time for the RPM window."""
    return time.time()


def rpm_admit(*, api_key: ApiKey | None) -> None:
    """Count one request against the key's requests-per-minute limit; RateLimited when over it.

    One counter per _RPM_BUCKET_S seconds: a request is admitted when the requests of this bucket
    and of the minute's worth of buckets before it leave room. A request so counts for 60 to
    60 + _RPM_BUCKET_S s, never less, so no 60 s ever admits more than the limit, and Retry-After
    is when the oldest requests leave: at most _RPM_BUCKET_S s after the real time a slot frees.
    (Two one-minute counters read pro rata said up to 90 s after a burst.) A rejected request is
    not counted, so a client that backs off recovers.
    """
    if api_key is None or not api_key.rpm_limit:
        return
    limit = int(api_key.rpm_limit)
    now = _clock()
    bucket = math.floor(now / _RPM_BUCKET_S)
    prefix = f"limits:rpm:{api_key.pk}"
    try:
        before = counters_get([f"{prefix}:{b}" for b in range(bucket - _RPM_BUCKETS, bucket)])
        room = limit - sum(before)
        taken, current = counter_take(
            f"{prefix}:{bucket}", 1, limit=room, ttl_s=(_RPM_BUCKETS + 1) * _RPM_BUCKET_S + 5
        )
    except CACHE_ERRORS as exc:
        warn_degraded("requests-per-minute limit", exc)
        return
    if taken:
        return
    frees = (bucket + _rpm_wait(limit=limit, counts=[*before, current])) * _RPM_BUCKET_S
    retry_after = max(1, math.ceil(frees - now))
    raise RateLimited(
        f"API key {api_key.name!r} is limited to {limit} requests per minute; retry in {retry_after} s.",
        retry_after=retry_after,
        code="rate_limit_exceeded",
    )


def _rpm_wait(*, limit: int, counts: list[int]) -> int:
    """Buckets from this one until one more request fits: `counts` are the requests of the window's
    buckets, oldest first, this one last; k buckets on, the first k of them have left."""
    for k in range(1, len(counts) + 1):
        if sum(counts[k:]) + 1 <= limit:
            return k
    return len(counts)


@dataclass(frozen=True, slots=True)
class BudgetReservation:
    """What admission reserved for one call; hand it back to `budget_settle` after the call."""

    hold_id: uuid.UUID
    api_key_id: str
    amount_usd: Decimal


def _usd(value: float | Decimal) -> Decimal:
    amount = Decimal(str(value)).quantize(_MICRO, rounding=ROUND_HALF_UP)
    return max(amount, Decimal(0))


def _periods(now: dt.datetime) -> tuple[dt.date, dt.date]:
    today = now.astimezone(dt.UTC).date()
    return today, today.replace(day=1)


def _period_end(period: str, start: dt.date) -> dt.datetime:
    if period == SpendPeriod.DAY:
        end = start + dt.timedelta(days=1)
    else:
        end = (start.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
    return dt.datetime.combine(end, dt.time(), tzinfo=dt.UTC)


def period_resets_at(period: str, start: dt.date) -> dt.datetime:
    """When the budget period that began on `start` ends (UTC midnight / the 1st of next month)."""
    return _period_end(period, start)


def _budget(api_key: ApiKey, period: str) -> Decimal | None:
    value = api_key.daily_budget_usd if period == SpendPeriod.DAY else api_key.monthly_budget_usd
    return None if value is None else Decimal(value)


def _period_q(day: dt.date, month: dt.date) -> Q:
    return Q(period=SpendPeriod.DAY, period_start=day) | Q(period=SpendPeriod.MONTH, period_start=month)


def _locked_ledgers(api_key: ApiKey, day: dt.date, month: dt.date) -> dict[str, SpendLedger]:
    SpendLedger.objects.bulk_create(
        [
            SpendLedger(api_key=api_key, period=SpendPeriod.DAY, period_start=day),
            SpendLedger(api_key=api_key, period=SpendPeriod.MONTH, period_start=month),
        ],
        ignore_conflicts=True,
    )
    # Lock both rows in one statement and a fixed order ("day" < "month") so two admissions of
    # the same key cannot deadlock; every other admission of this key waits here.
    rows = (
        SpendLedger.objects.select_for_update()
        .filter(api_key=api_key)
        .filter(_period_q(day, month))
        .order_by("period")
    )
    return {row.period: row for row in rows}


def _expire_stale_holds(api_key: ApiKey, ledgers: dict[str, SpendLedger], now: dt.datetime) -> None:
    """Count holds nobody settled (their process died) as spent at the reserved amount."""
    cutoff = now - dt.timedelta(seconds=settings.SCOPE_BUDGET_HOLD_TTL_S)
    stale = BudgetHold.objects.filter(api_key=api_key, settled_at=None, created_at__lt=cutoff)
    for candidate in stale[:100]:
        # lock order as everywhere: ledger rows first, then the hold (re-read: a late settle may win)
        held = (
            ledgers
            if _same_periods(candidate, ledgers)
            else _locked_ledgers(api_key, candidate.day, candidate.month)
        )
        hold = BudgetHold.objects.select_for_update().filter(pk=candidate.pk, settled_at=None).first()
        if hold is not None:
            _settle_locked(hold, hold.amount_usd, held, now)


def _same_periods(hold: BudgetHold, ledgers: dict[str, SpendLedger]) -> bool:
    return (ledgers[SpendPeriod.DAY].period_start, ledgers[SpendPeriod.MONTH].period_start) == (
        hold.day,
        hold.month,
    )


def _settle_locked(
    hold: BudgetHold, actual: Decimal, ledgers: dict[str, SpendLedger], now: dt.datetime
) -> None:
    # Python arithmetic on the locked rows (not F() expressions): exact Decimal on every backend,
    # where SQLite would compute F("reserved_usd") - amount in floating point.
    for ledger in ledgers.values():
        ledger.reserved_usd = max(Decimal(0), ledger.reserved_usd - hold.amount_usd)
        ledger.spent_usd += actual
        ledger.save(update_fields=["reserved_usd", "spent_usd", "updated_at"])
    hold.settled_at = now
    hold.actual_usd = actual
    hold.save(update_fields=["settled_at", "actual_usd"])


def budget_reserve(*, api_key: ApiKey, predicted_cost_usd: float) -> BudgetReservation:
    """Reserve the call's predicted cost against the key's budgets, or raise RateLimited (429)."""
    amount = _usd(predicted_cost_usd)
    now = timezone.now()
    day, month = _periods(now)
    refusal: RateLimited | None = None
    with transaction.atomic():
        ledgers = _locked_ledgers(api_key, day, month)
        _expire_stale_holds(api_key, ledgers, now)
        for period in (SpendPeriod.DAY, SpendPeriod.MONTH):
            budget = _budget(api_key, period)
            ledger = ledgers[period]
            committed = ledger.spent_usd + ledger.reserved_usd
            # an exhausted budget refuses even calls predicted to be free
            if budget is not None and (committed + amount > budget or committed >= budget):
                refusal = _budget_exceeded(api_key, period, budget, ledger, amount, now)
                break
        else:
            hold = BudgetHold.objects.create(
                api_key=api_key, amount_usd=amount, day=day, month=month, created_at=now
            )
            for ledger in ledgers.values():
                ledger.reserved_usd += amount
                ledger.requests += 1
                ledger.save(update_fields=["reserved_usd", "requests", "updated_at"])
    if refusal is not None:
        raise refusal  # after the commit: expired holds stay settled
    return BudgetReservation(hold_id=hold.id, api_key_id=api_key.pk, amount_usd=amount)


def budget_raise(*, reservation: BudgetReservation, predicted_cost_usd: float) -> BudgetReservation:
    """Raise an unsettled reservation to a pricier fallback's predicted cost, under the same row
    locks as admission, or raise RateLimited when the key's budget cannot take the difference."""
    amount = _usd(predicted_cost_usd)
    if amount <= reservation.amount_usd:
        return reservation
    now = timezone.now()
    refusal: RateLimited | None = None
    with transaction.atomic():
        first = BudgetHold.objects.select_related("api_key").filter(pk=reservation.hold_id).first()
        if first is None or first.settled_at is not None:
            return reservation
        api_key = first.api_key
        ledgers = _locked_ledgers(api_key, first.day, first.month)  # lock order: ledgers, then the hold
        hold = BudgetHold.objects.select_for_update().filter(pk=first.pk, settled_at=None).first()
        if hold is None:
            return reservation
        extra = amount - hold.amount_usd
        for period in (SpendPeriod.DAY, SpendPeriod.MONTH):
            budget = _budget(api_key, period)
            ledger = ledgers[period]
            if budget is not None and ledger.spent_usd + ledger.reserved_usd + extra > budget:
                refusal = _budget_exceeded(api_key, period, budget, ledger, amount, now)
                break
        else:
            hold.amount_usd = amount
            hold.save(update_fields=["amount_usd"])
            for ledger in ledgers.values():
                ledger.reserved_usd += extra
                ledger.save(update_fields=["reserved_usd", "updated_at"])
    if refusal is not None:
        raise refusal
    return BudgetReservation(
        hold_id=reservation.hold_id, api_key_id=reservation.api_key_id, amount_usd=amount
    )


def _money(amount: Decimal) -> str:
    """Cents when that is exact enough, else every significant digit ($0.50, $0.0002)."""
    cents = amount.quantize(_CENT)
    return f"${cents}" if cents == amount or amount >= 1 else f"${amount.normalize():f}"


def _budget_exceeded(
    api_key: ApiKey, period: str, budget: Decimal, ledger: SpendLedger, amount: Decimal, now: dt.datetime
) -> RateLimited:
    word = "daily" if period == SpendPeriod.DAY else "monthly"
    reset = _period_end(period, ledger.period_start)
    if amount > budget:  # no wait makes it fit: say so (an async job then fails instead of retrying)
        return RateLimited(
            f"API key {api_key.name!r}: this request needs about {_money(amount)}, more than its whole "
            f"{word} budget of {_money(budget)}; it cannot run under this budget.",
            retry_after=None,  # the budget resets to the same amount: no wait makes it fit
            code="budget_too_small",
        )
    if ledger.spent_usd + amount <= budget and ledger.reserved_usd > 0:
        # It would fit once calls in flight settle (they often cost less than reserved).
        retry_after = int(settings.SCOPE_BUDGET_INFLIGHT_RETRY_S)
        when = f"calls in flight hold {_money(ledger.reserved_usd)}; retry in {retry_after} s"
    else:
        retry_after = max(1, math.ceil((reset - now).total_seconds()))
        when = f"it resets at {api_time(reset)}"
    return RateLimited(
        f"API key {api_key.name!r} would exceed its {word} budget of {_money(budget)}: "
        f"spent {_money(ledger.spent_usd)}, this request needs about {_money(amount)}; {when}.",
        retry_after=retry_after,
        code="budget_exceeded",
    )


def budget_settle(*, reservation: BudgetReservation, actual_cost_usd: float) -> None:
    """Replace the reservation by the actual cost (0 when the call failed unbilled). Idempotent."""
    actual = _usd(actual_cost_usd)
    now = timezone.now()
    found = BudgetHold.objects.filter(pk=reservation.hold_id).values("day", "month").first()
    if found is None:
        return
    with transaction.atomic():
        # the same lock order as admission (ledger rows, then holds), so the two cannot deadlock
        ledgers = {
            row.period: row
            for row in SpendLedger.objects.select_for_update()
            .filter(api_key_id=reservation.api_key_id)
            .filter(_period_q(found["day"], found["month"]))
            .order_by("period")
        }
        hold = BudgetHold.objects.select_for_update().filter(pk=reservation.hold_id, settled_at=None).first()
        if hold is None:
            return  # already settled (or expired by a later admission)
        _settle_locked(hold, actual, ledgers, now)


@dataclass(frozen=True, slots=True)
class SpendSummary:
    period: str
    period_start: dt.date
    budget_usd: Decimal | None
    spent_usd: Decimal
    reserved_usd: Decimal


def spend_summary(*, api_key: ApiKey) -> list[SpendSummary]:
    """The key's current day and month: budget, settled spend and reservations in flight."""
    day, month = _periods(timezone.now())
    rows = {r.period: r for r in SpendLedger.objects.filter(api_key=api_key).filter(_period_q(day, month))}
    return [
        SpendSummary(
            period=period,
            period_start=start,
            budget_usd=_budget(api_key, period),
            spent_usd=rows[period].spent_usd if period in rows else Decimal(0),
            reserved_usd=rows[period].reserved_usd if period in rows else Decimal(0),
        )
        for period, start in ((SpendPeriod.DAY, day), (SpendPeriod.MONTH, month))
    ]
