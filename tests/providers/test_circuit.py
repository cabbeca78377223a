"""Circuit breaker: opens after N failures in a window, shows in decisions, half-opens after the cool-down."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from providers import circuit
from providers.circuit import (
    CircuitState,
    circuit_allow,
    circuit_enter,
    circuit_probe_release,
    circuit_record_failure,
    circuit_record_success,
    circuit_reset,
    circuit_states_recent,
    circuit_status,
    with_circuit_health,
)
from routing.models import DecisionLog
from routing.selectors import model_specs
from tests.conftest import requires_redis
from tests.factories import make_policy
from tests.providers.conftest import upstream_model
from tests.upstreams import Fail, FakeUpstream, Reply

Api = Callable[..., Any]
HELLO = [{"role": "user", "content": "Say hello"}]


class Clock:
    def __init__(self, start: float = 1_000_000.0):
        self.t = start

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(circuit, "now", fake)
    return fake


def test_failures_that_straddle_a_window_boundary_still_open_it(clock: Clock) -> None:
    clock.t = 60.0 * 20_000 - 0.5  # half a second before a 60 s boundary
    for _ in range(2):
        circuit_record_failure("m", error_class="timeout")
    clock.t += 1.0  # the third failure lands just after it
    circuit_record_failure("m", error_class="timeout")
    assert circuit_status("m").state is CircuitState.OPEN


def test_failures_further_apart_than_the_window_do_not_add_up(clock: Clock) -> None:
    clock.t = 60.0 * 20_000 + 0.5  # early in a window
    for _ in range(2):
        circuit_record_failure("m", error_class="timeout")
    clock.t += 119.0  # the end of the next window: the first two are almost a window old and more
    circuit_record_failure("m", error_class="timeout")
    assert circuit_status("m").state is CircuitState.CLOSED


def test_it_opens_after_n_failures_within_the_window(clock: Clock) -> None:
    for _ in range(2):
        circuit_record_failure("m", error_class="timeout")
    assert circuit_status("m").state is CircuitState.CLOSED
    circuit_record_failure("m", error_class="timeout")
    status = circuit_status("m")
    assert status.state is CircuitState.OPEN and "3 failures" in status.reason and "timeout" in status.reason
    assert circuit_allow("m") is not None


def test_failures_in_different_windows_do_not_add_up(clock: Clock) -> None:
    circuit_record_failure("m", error_class="upstream_error")
    circuit_record_failure("m", error_class="upstream_error")
    clock.t += 61  # the next 60 s window
    circuit_record_failure("m", error_class="upstream_error")
    assert circuit_status("m").state is CircuitState.CLOSED


def test_after_the_cool_down_exactly_one_probe_goes_through(clock: Clock) -> None:
    for _ in range(3):
        circuit_record_failure("m", error_class="upstream_error")
    clock.t += 29
    assert circuit_status("m").state is CircuitState.OPEN
    clock.t += 2  # cool-down of 30 s is over
    assert circuit_status("m").state is CircuitState.HALF_OPEN
    assert circuit_allow("m") is None  # the probe
    refused = circuit_allow("m")
    assert refused is not None and "probing" in refused.reason


def test_a_successful_probe_closes_the_circuit(clock: Clock) -> None:
    for _ in range(3):
        circuit_record_failure("m", error_class="upstream_error")
    clock.t += 31
    assert circuit_allow("m") is None
    circuit_record_success("m")
    assert circuit_status("m").state is CircuitState.CLOSED
    assert circuit_allow("m") is None and circuit_allow("m") is None


def test_a_failed_probe_opens_it_for_another_cool_down(clock: Clock) -> None:
    for _ in range(3):
        circuit_record_failure("m", error_class="upstream_error")
    clock.t += 31
    assert circuit_allow("m") is None
    circuit_record_failure("m", error_class="timeout")
    assert circuit_status("m").state is CircuitState.OPEN
    clock.t += 29
    assert circuit_status("m").state is CircuitState.OPEN
    clock.t += 2
    assert circuit_status("m").state is CircuitState.HALF_OPEN


@pytest.fixture
def pair(api: Api) -> Iterator[tuple[FakeUpstream, FakeUpstream]]:
    with FakeUpstream() as first, FakeUpstream() as second:
        upstream_model("first", first, tier=5)
        upstream_model("second", second, tier=3)
        make_policy("pair", strategy="hybrid", alpha=0.5, allowed_models=["first", "second"])
        yield first, second


def test_an_open_circuit_excludes_the_model_in_the_decision_with_its_reason(
    api: Api, pair: tuple[FakeUpstream, FakeUpstream], clock: Clock
) -> None:
    first, second = pair
    first.default = Fail(500)
    body = {"model": "scope/pair", "messages": HELLO}
    for _ in range(2):  # 2 attempts each (one retry): the circuit opens during the second request
        assert api("/v1/chat/completions", body)["X-Scope-Model"] == "second"
    calls_before = len(first.requests)
    assert calls_before == 3  # the third failure opened it; no retry into an open circuit
    response = api("/v1/chat/completions", body)
    assert response.status_code == 200 and response["X-Scope-Model"] == "second"
    assert "X-Scope-Fallbacks" not in response  # the decision itself already passed `first` over
    row = DecisionLog.objects.get(pk=response["X-Scope-Decision-Id"])
    excluded = {c["model"]: c["excluded_reason"] for c in row.candidates}
    assert excluded["first"].startswith("circuit open") and row.chosen_model == "second"
    assert len(first.requests) == calls_before

    # cool-down over: `first` is routed to again as the probe; it has recovered, so the circuit closes
    clock.t += 31
    first.default = Reply("recovered")
    response = api("/v1/chat/completions", body)
    assert response["X-Scope-Model"] == "first"
    assert circuit_status("first").state is CircuitState.CLOSED


def test_with_circuit_health_leaves_closed_models_alone(catalog: Any, clock: Clock) -> None:
    for _ in range(3):
        circuit_record_failure("small", error_class="timeout")
    specs = {s.name: s for s in with_circuit_health(model_specs())}
    assert specs["small"].unavailable_reason.startswith("circuit open")
    assert specs["medium"].unavailable_reason == "" and specs["large"].unavailable_reason == ""


_OTHER_PROCESS = """
import django
django.setup()
from providers.circuit import circuit_record_failure
for _ in range(3):
    circuit_record_failure("shared-model", error_class="timeout")
"""


@requires_redis
def test_a_circuit_opened_in_another_process_is_open_here(db: Any) -> None:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "scope_site.settings", "SCOPE_CIRCUIT_FAILURES": "3"}
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", _OTHER_PROCESS], env=env, cwd=root, check=True, timeout=120)
    assert circuit_status("shared-model").state is CircuitState.OPEN


def test_the_route_api_also_excludes_models_with_an_open_circuit(api: Api, clock: Clock) -> None:
    for _ in range(3):
        circuit_record_failure("small", error_class="upstream_error")
    response = api("/api/v1/route", {"messages": HELLO, "alpha": 0.0})  # alpha 0 would pick the cheapest
    assert response.status_code == 200
    body = response.json()
    excluded = {c["model"]: c["excluded_reason"] for c in body["candidates"]}
    assert excluded["small"].startswith("circuit open") and body["model"] != "small"


@requires_redis
def test_routing_reuses_its_circuit_read_briefly_but_sees_another_process_open_one_after_it(
    db: Any, settings: Any
) -> None:
    settings.SCOPE_CIRCUIT_SNAPSHOT_SECONDS = 60
    assert circuit_states_recent(["snap-model"])["snap-model"].state is CircuitState.CLOSED
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "scope_site.settings", "SCOPE_CIRCUIT_FAILURES": "3"}
    root = Path(__file__).resolve().parents[2]
    script = _OTHER_PROCESS.replace("shared-model", "snap-model")
    subprocess.run([sys.executable, "-c", script], env=env, cwd=root, check=True, timeout=120)
    # within the snapshot's age the earlier read is reused; the call path re-reads at once
    assert circuit_states_recent(["snap-model"])["snap-model"].state is CircuitState.CLOSED
    assert circuit_allow("snap-model") is not None
    settings.SCOPE_CIRCUIT_SNAPSHOT_SECONDS = 0.001  # now older than its allowed age: read again
    assert circuit_states_recent(["snap-model"])["snap-model"].state is CircuitState.OPEN


def test_a_circuit_this_process_opens_drops_its_snapshot_at_once(
    catalog: Any, settings: Any, clock: Clock
) -> None:
    settings.SCOPE_CIRCUIT_SNAPSHOT_SECONDS = 60
    assert circuit_states_recent(["small"])["small"].state is CircuitState.CLOSED
    for _ in range(3):
        circuit_record_failure("small", error_class="timeout")
    assert circuit_states_recent(["small"])["small"].state is CircuitState.OPEN
    circuit_reset("small")
    assert circuit_states_recent(["small"])["small"].state is CircuitState.CLOSED


def test_a_probe_released_without_a_verdict_stays_half_open_and_lets_the_next_call_probe(
    clock: Clock,
) -> None:
    for _ in range(3):
        circuit_record_failure("m", error_class="upstream_error")
    clock.t += 31
    entry = circuit_enter("m")
    assert entry.blocked is None and entry.probe
    assert circuit_enter("m").blocked is not None
    circuit_probe_release("m")
    assert circuit_status("m").state is CircuitState.HALF_OPEN
    assert circuit_enter("m").probe
    assert circuit_enter(" closed ") == circuit.CircuitPass()  # a closed circuit: no probe to end


def test_a_probe_claim_outlasts_the_longest_call(
    clock: Clock, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.SCOPE_CIRCUIT_COOLDOWN_S = 30
    settings.SCOPE_EXECUTION_BUDGET_S = 90
    for _ in range(3):
        circuit_record_failure("m", error_class="server_error")
    clock.t += 31
    claims: list[float] = []
    real_add = circuit.cache.add

    def add(key: str, value: Any, timeout: float) -> bool:
        claims.append(timeout)
        return bool(real_add(key, value, timeout=timeout))

    monkeypatch.setattr(circuit.cache, "add", add)
    assert circuit_enter("m").probe
    # a probe may run as long as any call (90 s): its claim must not lapse at the 30 s cool-down,
    # or a second probe could start and the first one's release would drop the second's claim
    assert claims == [90]
