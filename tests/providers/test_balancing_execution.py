"""Deployments and per-key limits through POST /v1/chat/completions, against fake upstreams."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.utils import timezone

from feedback.models import Outcome
from providers import circuit
from providers.circuit import circuit_record_failure, circuit_status
from providers.deployments import deployment_upsert
from providers.services import provider_upsert
from routing.dashboard.decisions import DecisionFilters, decisions_page
from routing.dashboard.selectors import catalog_rows
from routing.models import SpendLedger
from routing.services.rollup import Buckets, aggregate_outcomes, rollup_catch_up
from tests.factories import make_api_key, make_policy
from tests.providers.conftest import UPSTREAM_KEY_ENV, upstream_model
from tests.upstreams import Fail, FakeUpstream, Reply, Stream

Api = Callable[..., Any]
HELLO = [{"role": "user", "content": "Say hello to the test suite"}]


@pytest.fixture
def upstreams(api: Api) -> Iterator[tuple[FakeUpstream, FakeUpstream, FakeUpstream]]:
    """`first` ranks above `second` in policy `pair`; `first` can also be served at `extra`."""
    with FakeUpstream() as first, FakeUpstream() as second, FakeUpstream() as extra:
        upstream_model("first", first, tier=5)
        upstream_model("second", second, tier=3)
        provider_upsert(
            actor="test",
            name="extra",
            kind="openai_compatible",
            base_url=extra.base_url,
            api_key_env=UPSTREAM_KEY_ENV,
        )
        make_policy("pair", strategy="hybrid", alpha=0.5, allowed_models=["first", "second"])
        yield first, second, extra


def chat(api: Api, key: str | None = None, **extra: Any) -> Any:
    body = {"model": "scope/pair", "messages": HELLO, **extra}
    return api("/v1/chat/completions", body) if key is None else api("/v1/chat/completions", body, key=key)


def test_calls_are_spread_over_the_model_deployments(api: Api, upstreams: Any) -> None:
    first, _, extra = upstreams
    deployment_upsert(actor="test", model="first", name="home", provider="up-first", weight=1)
    deployment_upsert(
        actor="test", model="first", name="extra", provider="extra", upstream_name="first-at-extra", weight=1
    )
    for _ in range(12):
        response = chat(api)
        assert response.status_code == 200 and response["X-Scope-Model"] == "first"
    assert first.requests and extra.requests
    assert len(first.requests) + len(extra.requests) == 12
    assert {r.body["model"] for r in extra.requests} == {"first-at-extra"}


def test_a_deployment_at_its_rpm_limit_falls_back_like_an_open_circuit(api: Api, upstreams: Any) -> None:
    first, second, _ = upstreams
    deployment_upsert(actor="test", model="first", name="only", provider="up-first", rpm_limit=1)
    assert chat(api)["X-Scope-Model"] == "first"
    response = chat(api)
    assert response.status_code == 200
    assert response["X-Scope-Model"] == "second"
    assert response["X-Scope-Fallbacks"].startswith("first (deployment_limit)")
    assert len(first.requests) == 1 and len(second.requests) == 1
    attempts = Outcome.objects.get(decision_id=response["X-Scope-Decision-Id"]).attempts
    assert "at its limit of 1 requests/min" in attempts[0]["message"]


def test_a_deployment_with_an_open_circuit_gives_way_to_the_healthy_one(api: Api, upstreams: Any) -> None:
    first, _, extra = upstreams
    deployment_upsert(actor="test", model="first", name="home", provider="up-first", weight=1000)
    deployment_upsert(actor="test", model="first", name="extra", provider="extra", weight=1)
    first.default = Fail(503)
    for _ in range(3):  # SCOPE_CIRCUIT_FAILURES in these tests
        circuit_record_failure("first@home", error_class="server_error")
    response = chat(api)
    assert response["X-Scope-Model"] == "first" and "X-Scope-Fallbacks" not in response
    assert len(extra.requests) == 1 and not first.requests


def test_a_key_over_its_daily_budget_gets_a_429_and_spend_is_recorded(api: Api, upstreams: Any) -> None:
    first, _, _ = upstreams
    first.default = Reply(prompt_tokens=100_000, completion_tokens=100_000)  # $0.30 at $1/$2 per Mtok
    _, key = make_api_key("budgeted", daily_budget_usd=Decimal("0.50"))
    assert chat(api, key=key).status_code == 200
    day = SpendLedger.objects.get(api_key__name="budgeted", period="day")
    assert (day.spent_usd, day.reserved_usd) == (Decimal("0.3"), Decimal(0))
    assert chat(api, key=key).status_code == 200  # predicted far less than it really cost
    response = chat(api, key=key)
    assert response.status_code == 429
    assert int(response["Retry-After"]) > 0
    error = response.json()["error"]
    assert error["code"] == "budget_exceeded" and "daily budget of $0.50" in error["message"]
    # the refused call was routed first: the answer names its decision, whose outcome says it was
    # refused, cost nothing, and stays out of the model's outcome and error counts
    assert error["decision_id"] == response["X-Scope-Decision-Id"]
    refused = Outcome.objects.get(decision_id=error["decision_id"])
    assert (refused.status, refused.error_class, refused.cost_usd) == ("refused", "budget_exceeded", 0)
    assert refused.model_name == "first" and refused.latency_ms is None
    buckets: Buckets = {}
    assert aggregate_outcomes(None, timezone.now(), buckets) == 2
    assert sum(b.outcomes for b in buckets.values()) == 2
    assert sum(b.outcome_errors for b in buckets.values()) == 0
    assert len(first.requests) == 2
    # auditors find it with the explorer's outcome filter (and the decisions API's)
    rows, _ = decisions_page(filters=DecisionFilters(outcome="refused"))
    assert [str(r.id) for r in rows] == [error["decision_id"]]


def test_a_failed_attempt_counts_as_an_error_call_of_its_own_model(api: Api, upstreams: Any) -> None:
    first, _, _ = upstreams
    first.default = Fail(503)
    response = chat(api)
    assert response.status_code == 200 and response["X-Scope-Model"] == "second"
    buckets: Buckets = {}
    aggregate_outcomes(None, timezone.now(), buckets)
    by_model = {model: b for (_, model), b in buckets.items()}
    # the outcome is second's, but the call that failed was first's: the providers page says so
    tries = len(first.requests)  # the same model is retried once on a 503 before falling back
    assert (by_model["first"].calls, by_model["first"].call_errors, by_model["first"].outcomes) == (
        tries,
        tries,
        0,
    )
    assert (by_model["second"].calls, by_model["second"].call_errors, by_model["second"].outcomes) == (
        1,
        0,
        1,
    )
    # the outcome's latency is the answering call's; its total is what the client waited for all of them
    outcome = Outcome.objects.get(decision_id=response["X-Scope-Decision-Id"])
    spent = sum(a["latency_ms"] or 0 for a in outcome.attempts if a.get("latency_ms") is not None)
    assert outcome.total_ms is not None and outcome.latency_ms is not None
    assert outcome.total_ms >= spent >= outcome.latency_ms and outcome.total_ms > outcome.latency_ms
    rollup_catch_up(now=timezone.now() + timedelta(minutes=5))
    rows = {r.model.name: r for r in catalog_rows()}
    assert rows["first"].error_rate == 1.0 and rows["second"].error_rate == 0.0


def test_a_key_over_its_rpm_limit_gets_a_429_from_chat_completions(api: Api, upstreams: Any) -> None:
    _, key = make_api_key("rpm", rpm_limit=2)
    assert [chat(api, key=key).status_code for _ in range(3)] == [200, 200, 429]


def test_a_failing_deployment_does_not_open_the_model_while_a_sibling_serves(
    api: Api, upstreams: Any
) -> None:
    first, second, extra = upstreams
    deployment_upsert(actor="test", model="first", name="home", provider="up-first", weight=1000)
    deployment_upsert(actor="test", model="first", name="extra", provider="extra", weight=1)
    first.default = Fail(503)
    models = [chat(api)["X-Scope-Model"] for _ in range(6)]
    # until home's circuit opens (3 failures) its failed calls fall back to the next model; then
    # `first` is served by its healthy sibling, and the model's own circuit never opened
    assert models[:2] == ["second", "second"] and models[2:] == ["first"] * 4
    assert circuit_status("first").state == "closed"
    assert circuit_status("first@home").state == "open"
    assert len(extra.requests) == 4


def test_a_retry_does_not_go_back_to_a_deployment_its_failure_just_opened(
    api: Api, upstreams: Any, settings: Any
) -> None:
    first, second, _ = upstreams
    settings.SCOPE_CIRCUIT_FAILURES = 1  # one failure opens a circuit
    deployment_upsert(actor="test", model="first", name="home", provider="up-first", weight=1000)
    deployment_upsert(actor="test", model="first", name="extra", provider="extra", weight=1)
    first.default = Fail(503)
    response = chat(api)
    assert response.status_code == 200 and response["X-Scope-Model"] == "second"
    assert len(first.requests) == 1  # a 503 is retried once, but not into home's now open circuit
    assert circuit_status("first@home").state == "open"


def test_streams_cut_midway_count_against_their_deployment_not_the_model(api: Api, upstreams: Any) -> None:
    first, _, _ = upstreams
    deployment_upsert(actor="test", model="first", name="home", provider="up-first", weight=1000)
    # weight 0: a last resort only, so all three streams go to home (no 1-in-1,000 random pick)
    deployment_upsert(actor="test", model="first", name="extra", provider="extra", weight=0)
    first.default = Stream(cut_after=1)
    for _ in range(3):
        response = chat(api, stream=True)
        assert response["X-Scope-Model"] == "first"
        b"".join(response.streaming_content)  # the answer breaks off after its first chunk
    # like failed attempts: home's circuit opened, the model's did not (its sibling can serve)
    assert circuit_status("first@home").state == "open"
    assert circuit_status("first").state == "closed"


@pytest.fixture
def half_open(monkeypatch: pytest.MonkeyPatch) -> None:
    """`first` and both its deployments (home first, extra second) failed 3 times; the cool-down is over."""
    clock = [1_000_000.0]
    monkeypatch.setattr(circuit, "now", lambda: clock[0])
    deployment_upsert(actor="test", model="first", name="home", provider="up-first", weight=1_000_000)
    deployment_upsert(actor="test", model="first", name="extra", provider="extra", weight=1)
    for name in ("first@home", "first@extra", "first"):
        for _ in range(3):
            circuit_record_failure(name, error_class="server_error")
    clock[0] += 31
    assert circuit_status("first").state == "half_open"


def test_a_half_open_model_probe_tries_its_other_deployment_and_closes_the_circuit(
    api: Api, upstreams: Any, half_open: None
) -> None:
    first, second, extra = upstreams
    first.default = Fail(503)
    response = chat(api)
    assert response.status_code == 200 and response["X-Scope-Model"] == "first"
    assert (len(first.requests), len(extra.requests), len(second.requests)) == (1, 1, 0)
    assert circuit_status("first").state == "closed"
    assert circuit_status("first@home").state == "open"
    assert [chat(api)["X-Scope-Model"] for _ in range(2)] == ["first", "first"]
    assert len(extra.requests) == 3


def test_a_half_open_model_whose_deployments_all_fail_opens_again_instead_of_staying_half_open(
    api: Api, upstreams: Any, half_open: None
) -> None:
    first, second, extra = upstreams
    first.default = extra.default = Fail(503)
    response = chat(api)
    assert response["X-Scope-Model"] == "second"
    assert (len(first.requests), len(extra.requests)) == (1, 1)
    assert circuit_status("first").state == "open"
    # open, not half-open with a probe nobody runs: the next decision leaves it out with the reason
    response = chat(api)
    assert response["X-Scope-Model"] == "second" and (len(first.requests), len(extra.requests)) == (1, 1)
    decision = api("/api/v1/route", {"policy": "pair", "messages": HELLO}).json()
    reason = {c["model"]: c["excluded_reason"] for c in decision["candidates"]}["first"]
    assert reason.startswith("circuit open")


def test_a_probe_that_ends_without_a_verdict_lets_the_next_call_probe(
    api: Api, upstreams: Any, half_open: None
) -> None:
    first, second, extra = upstreams
    first.script(Fail(400))  # the upstream refused the request itself: nothing learnt about its health
    assert chat(api).status_code == 400
    assert circuit_status("first").state == "half_open"
    response = chat(api)
    assert response.status_code == 200 and response["X-Scope-Model"] == "first"
    assert circuit_status("first").state == "closed" and len(second.requests) == 0


def test_a_pricier_fallback_must_fit_the_budget_before_it_is_called(api: Api) -> None:
    with FakeUpstream() as cheap_up, FakeUpstream() as pricey_up:
        upstream_model("cheap", cheap_up, tier=5, price="1")
        upstream_model("pricey", pricey_up, tier=3, price="1000")
        make_policy("budgeted", strategy="hybrid", alpha=0.5, allowed_models=["cheap", "pricey"])
        cheap_up.default = Fail(503)
        _, key = make_api_key("thrifty", daily_budget_usd=Decimal("0.01"))
        body = {"model": "scope/budgeted", "messages": HELLO}
        response = api("/v1/chat/completions", body, key=key)
        # admission reserved cheap's few micro-dollars; pricey's ~$0.1 would overshoot the $0.01
        assert response.status_code == 503 and not pricey_up.requests
        attempts = Outcome.objects.get(decision_id=response["X-Scope-Decision-Id"]).attempts
        skipped = [a for a in attempts if a["model"] == "pricey"]
        assert skipped and skipped[0]["error_class"] == "budget_exceeded"
        day = SpendLedger.objects.get(api_key__name="thrifty", period="day")
        assert (day.spent_usd, day.reserved_usd) == (Decimal(0), Decimal(0))  # nothing billed, all released
        # with room in the budget the same fallback is called, its reservation raised first
        _, rich = make_api_key("rich", daily_budget_usd=Decimal("10"))
        answered = api("/v1/chat/completions", body, key=rich)
        assert answered.status_code == 200 and answered["X-Scope-Model"] == "pricey"
        day = SpendLedger.objects.get(api_key__name="rich", period="day")
        assert day.reserved_usd == 0 and day.spent_usd > Decimal("0.000001")
