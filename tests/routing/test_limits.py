from __future__ import annotations

import datetime as dt
import random
import threading
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection
from django.test import override_settings
from django.utils import timezone

from routing.models import BudgetHold, SpendLedger
from routing.services import counters, limits
from routing.services.limits import budget_reserve, budget_settle, rpm_admit, spend_summary
from scope_site.errors import RateLimited
from tests.conftest import USER_MESSAGE, requires_postgres
from tests.factories import make_api_key

pytestmark = pytest.mark.django_db


def _route(api: Any, key: str) -> Any:
    return api("/api/v1/route", {"messages": USER_MESSAGE("hello")}, key=key)


def test_route_answers_429_with_retry_after_once_the_rpm_limit_is_used(api: Any, catalog: Any) -> None:
    _, key = make_api_key("rpm", rpm_limit=3)
    statuses = [_route(api, key).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    response = _route(api, key)
    body = response.json()
    assert body["error"]["code"] == "rate_limit_exceeded"
    assert "3 requests per minute" in body["error"]["message"]
    assert 1 <= int(response["Retry-After"]) <= 120


def test_rpm_limit_is_per_key(api: Any, catalog: Any) -> None:
    _, limited = make_api_key("one", rpm_limit=1)
    _, other = make_api_key("two", rpm_limit=1)
    assert _route(api, limited).status_code == 200
    assert _route(api, limited).status_code == 429
    assert _route(api, other).status_code == 200


def test_rpm_window_slides_so_capacity_returns_as_requests_age_out(
    monkeypatch: pytest.MonkeyPatch, catalog: Any
) -> None:
    key, _ = make_api_key("slide", rpm_limit=10)
    now = [600.0]
    monkeypatch.setattr(limits, "_clock", lambda: now[0])
    for _ in range(5):
        rpm_admit(api_key=key)
    now[0] = 620.0
    for _ in range(5):
        rpm_admit(api_key=key)
    now[0] = 640.0
    with pytest.raises(RateLimited) as raised:
        rpm_admit(api_key=key)
    assert raised.value.retry_after == 25  # the 5 of 600 s leave with their 5 s counter at 665 s
    now[0] = 665.0  # they have: 5 slots back, the 5 of 620 s still count
    for _ in range(5):
        rpm_admit(api_key=key)
    with pytest.raises(RateLimited) as raised:
        rpm_admit(api_key=key)
    assert raised.value.retry_after == 20
    now[0] = 730.0  # everything is over a minute old: full capacity again
    for _ in range(10):
        rpm_admit(api_key=key)


@pytest.mark.parametrize(("start", "burst"), [(3000.0, 5), (3030.0, 5), (3059.0, 3), (3000.0, 1)])
def test_retry_after_is_when_the_next_request_fits(
    monkeypatch: pytest.MonkeyPatch, catalog: Any, start: float, burst: int
) -> None:
    key, _ = make_api_key(f"retry-{start}-{burst}", rpm_limit=5)
    now = [start - 60.0]  # a busy previous minute, then `burst` requests in this one
    monkeypatch.setattr(limits, "_clock", lambda: now[0])
    for _ in range(5):
        rpm_admit(api_key=key)
    now[0] = start
    admitted = 0
    with pytest.raises(RateLimited) as raised:
        for _ in range(burst + 5):
            rpm_admit(api_key=key)
            admitted += 1
    wait = raised.value.retry_after
    assert wait is not None
    now[0] = start + wait - 1
    with pytest.raises(RateLimited):
        rpm_admit(api_key=key)
    now[0] = start + wait
    rpm_admit(api_key=key)


def test_after_a_burst_at_the_start_of_a_minute_retry_after_is_when_its_first_request_is_a_minute_old(
    monkeypatch: pytest.MonkeyPatch, catalog: Any
) -> None:
    # the pro-rata estimate of two one-minute counters said 90 s here (the burst counted as if spread
    # over its minute); the 2 requests leave the last minute 60 s after they were made, and the
    # limiter lets them go within one 5 s counter of that
    key, _ = make_api_key("burst", rpm_limit=2)
    now = [600.0]
    monkeypatch.setattr(limits, "_clock", lambda: now[0])
    rpm_admit(api_key=key)
    rpm_admit(api_key=key)
    with pytest.raises(RateLimited) as raised:
        rpm_admit(api_key=key)
    assert raised.value.retry_after == 65
    now[0] = 664.0
    with pytest.raises(RateLimited):
        rpm_admit(api_key=key)
    now[0] = 665.0
    rpm_admit(api_key=key)
    rpm_admit(api_key=key)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_retry_after_is_the_real_time_until_a_slot_frees_and_no_minute_exceeds_the_limit(
    monkeypatch: pytest.MonkeyPatch, catalog: Any, seed: int
) -> None:
    limit = 5
    key, _ = make_api_key(f"real-{seed}", rpm_limit=limit)
    rng = random.Random(seed)
    now = [6000.0]
    monkeypatch.setattr(limits, "_clock", lambda: now[0])
    admitted: list[float] = []
    for _ in range(400):  # bursts and gaps over about 5 minutes
        now[0] += rng.choice([0.0, 0.0, 0.05, 0.3, 0.7, 1.0, 2.5, 9.0])
        try:
            rpm_admit(api_key=key)
        except RateLimited as exc:
            assert exc.retry_after is not None
            # exactly: a slot frees when the limit-th most recent admitted request is 60 s old
            frees_at = sorted(admitted)[-limit] + 60.0
            # the limiter's counters are 5 s wide: never early, at most 5 s (+ rounding up) late
            assert frees_at <= now[0] + exc.retry_after < frees_at + 6.0, (now[0], exc.retry_after, frees_at)
            assert exc.retry_after <= 65
        else:
            admitted.append(now[0])
            in_last_minute = [t for t in admitted if t > now[0] - 60.0]
            assert len(in_last_minute) <= limit
    assert len(admitted) >= 20


def test_rejected_requests_do_not_use_up_the_limit(monkeypatch: pytest.MonkeyPatch, catalog: Any) -> None:
    key, _ = make_api_key("reject", rpm_limit=2)
    now = [1200.0]
    monkeypatch.setattr(limits, "_clock", lambda: now[0])
    rpm_admit(api_key=key)
    now[0] = 1230.0
    rpm_admit(api_key=key)
    now[0] = 1240.0
    for _ in range(5):
        with pytest.raises(RateLimited):
            rpm_admit(api_key=key)
    # once the request of 1200 s has left the window (with its 5 s counter, at 1265 s), one slot
    # is back; had the 5 refusals of 1240 s counted, none would be until 1305 s
    now[0] = 1265.0
    rpm_admit(api_key=key)
    with pytest.raises(RateLimited):
        rpm_admit(api_key=key)


def test_routing_continues_when_the_rate_limit_store_is_down(
    api: Any, catalog: Any, caplog: pytest.LogCaptureFixture
) -> None:
    _, key = make_api_key("redis-down", rpm_limit=1)
    dead_redis = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",
            "OPTIONS": {"socket_connect_timeout": 0.2, "socket_timeout": 0.2},
        }
    }
    with override_settings(CACHES=dead_redis), caplog.at_level("WARNING", logger="scope.counters"):
        counters._last_warning.clear()
        assert [_route(api, key).status_code for _ in range(3)] == [200, 200, 200]
    assert "requests-per-minute limit degraded" in caplog.text


def test_a_budget_admits_reservations_until_it_is_used_then_answers_429(catalog: Any) -> None:
    key, _ = make_api_key("budget", daily_budget_usd=Decimal("1.00"))
    held = [budget_reserve(api_key=key, predicted_cost_usd=0.3) for _ in range(3)]
    with pytest.raises(RateLimited) as raised:
        budget_reserve(api_key=key, predicted_cost_usd=0.3)
    error = raised.value
    assert error.code == "budget_exceeded"
    assert "daily budget of $1.00" in error.message
    # 0.9 is reserved by calls in flight; 0.3 would fit if they settle cheaper: retry soon
    assert error.retry_after == 5
    for reservation in held:
        budget_settle(reservation=reservation, actual_cost_usd=0.1)
    budget_reserve(api_key=key, predicted_cost_usd=0.3)  # 0.3 spent + 0.3 reserved now


def test_settling_records_the_actual_cost_and_frees_the_reservation(catalog: Any) -> None:
    key, _ = make_api_key("settle", daily_budget_usd=Decimal("5"), monthly_budget_usd=Decimal("50"))
    reservation = budget_reserve(api_key=key, predicted_cost_usd=0.25)
    budget_settle(reservation=reservation, actual_cost_usd=0.4)
    budget_settle(reservation=reservation, actual_cost_usd=0.4)  # a second settle changes nothing
    day, month = spend_summary(api_key=key)
    assert (day.period, day.spent_usd, day.reserved_usd) == ("day", Decimal("0.4"), Decimal(0))
    assert (month.period, month.spent_usd, month.reserved_usd) == ("month", Decimal("0.4"), Decimal(0))
    hold = BudgetHold.objects.get(pk=reservation.hold_id)
    assert hold.actual_usd == Decimal("0.4") and hold.settled_at is not None


def test_an_exhausted_budget_refuses_even_free_calls_until_the_day_ends(catalog: Any) -> None:
    key, _ = make_api_key("exhausted", daily_budget_usd=Decimal("0.50"))
    budget_settle(reservation=budget_reserve(api_key=key, predicted_cost_usd=0.5), actual_cost_usd=0.5)
    with pytest.raises(RateLimited) as raised:
        budget_reserve(api_key=key, predicted_cost_usd=0)
    now = timezone.now()
    midnight = dt.datetime.combine(now.date() + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
    assert raised.value.retry_after is not None
    assert abs(raised.value.retry_after - (midnight - now).total_seconds()) <= 2
    assert "resets at" in raised.value.message


def test_the_monthly_budget_is_enforced_across_days(catalog: Any) -> None:
    key, _ = make_api_key("monthly", daily_budget_usd=Decimal("10"), monthly_budget_usd=Decimal("1"))
    budget_settle(reservation=budget_reserve(api_key=key, predicted_cost_usd=0.9), actual_cost_usd=0.9)
    with pytest.raises(RateLimited) as raised:
        budget_reserve(api_key=key, predicted_cost_usd=0.2)
    assert "monthly budget of $1.00" in raised.value.message


def test_a_hold_nobody_settled_counts_as_spent_after_its_ttl(catalog: Any) -> None:
    key, _ = make_api_key("stale", daily_budget_usd=Decimal("1"))
    reservation = budget_reserve(api_key=key, predicted_cost_usd=0.6)
    BudgetHold.objects.filter(pk=reservation.hold_id).update(
        created_at=timezone.now() - dt.timedelta(hours=1)
    )
    with pytest.raises(RateLimited):
        budget_reserve(api_key=key, predicted_cost_usd=0.6)
    day = SpendLedger.objects.get(api_key=key, period="day")
    assert (day.spent_usd, day.reserved_usd) == (Decimal("0.6"), Decimal(0))
    budget_settle(reservation=reservation, actual_cost_usd=0.1)  # too late: already counted
    day.refresh_from_db()
    assert day.spent_usd == Decimal("0.6")


def test_keys_without_budgets_still_record_their_spend(catalog: Any) -> None:
    key, _ = make_api_key("free")
    for _ in range(3):
        budget_settle(reservation=budget_reserve(api_key=key, predicted_cost_usd=100), actual_cost_usd=2)
    assert spend_summary(api_key=key)[0].spent_usd == Decimal(6)


@requires_postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_admissions_never_reserve_past_the_budget(catalog: Any) -> None:
    assert connection.vendor == "postgresql"
    key, _ = make_api_key("race", daily_budget_usd=Decimal("5"))
    start = threading.Barrier(20)
    admitted: list[Any] = []
    refused: list[RateLimited] = []
    lock = threading.Lock()

    def racer() -> None:
        try:
            start.wait()
            reservation = budget_reserve(api_key=key, predicted_cost_usd=1.0)
            with lock:
                admitted.append(reservation)
        except RateLimited as exc:
            with lock:
                refused.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=racer) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(admitted) == 5 and len(refused) == 15
    day = SpendLedger.objects.get(api_key=key, period="day")
    assert day.reserved_usd == Decimal(5) and day.requests == 5

    # settling concurrently keeps the totals exact
    def settle(reservation: Any) -> None:
        budget_settle(reservation=reservation, actual_cost_usd=0.5)
        connection.close()

    settlers = [threading.Thread(target=settle, args=(r,)) for r in admitted]
    for thread in settlers:
        thread.start()
    for thread in settlers:
        thread.join(timeout=30)
    day.refresh_from_db()
    assert (day.spent_usd, day.reserved_usd) == (Decimal("2.5"), Decimal(0))


def test_a_key_reads_its_own_limits_and_spend(catalog: Any) -> None:
    from django.test import Client

    key, plain = make_api_key("usage", daily_budget_usd=Decimal("2"), rpm_limit=30)
    budget_settle(reservation=budget_reserve(api_key=key, predicted_cost_usd=0.5), actual_cost_usd=0.75)
    budget_reserve(api_key=key, predicted_cost_usd=0.25)  # still in flight
    response = Client().get("/api/v1/usage", HTTP_AUTHORIZATION=f"Bearer {plain}")
    assert response.status_code == 200
    body = response.json()
    assert (body["api_key"], body["rpm_limit"]) == ("usage", 30)
    day, month = body["periods"]
    assert (day["period"], day["budget_usd"], day["spent_usd"], day["reserved_usd"]) == (
        "day",
        2.0,
        0.75,
        0.25,
    )
    assert day["remaining_usd"] == 1.0 and day["resets_at"].endswith("T00:00:00Z")
    assert (month["budget_usd"], month["remaining_usd"], month["spent_usd"]) == (None, None, 0.75)
    assert Client().get("/api/v1/usage").status_code == 401
