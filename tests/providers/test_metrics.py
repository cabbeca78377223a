"""/metrics: Prometheus text with requests, decisions, fallbacks, circuits, latency histograms and spend."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.test import Client
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from providers.circuit import circuit_record_failure
from scope_site.metrics import metrics_render
from tests.factories import make_policy
from tests.providers.conftest import upstream_model

Api = Callable[..., Any]
HELLO = [{"role": "user", "content": "Hello metrics"}]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_metrics_count_requests_decisions_fallbacks_spend_and_latency(api: Api) -> None:
    upstream_model("down", None, tier=5, sim_profile={"failure_rate": 1.0, "fail_status": 500})
    upstream_model("up", None, tier=3)
    make_policy("metered", strategy="hybrid", alpha=0.5, allowed_models=["down", "up"])
    before = {
        "requests": value("scope_requests_total", endpoint="chat", policy="metered", model="up", status="ok"),
        "decisions": value(
            "scope_decisions_total", kind="chat", policy="metered", model="down", strategy="hybrid"
        ),
        "fallbacks": value("scope_fallbacks_total", policy="metered", model="down", reason="upstream_error"),
        "spend": value("scope_spend_usd_total", policy="metered", model="up"),
        "route": value("scope_route_decision_seconds_count", policy="metered"),
        "upstream": value("scope_upstream_seconds_count", model="up", provider="sim"),
    }
    response = api("/v1/chat/completions", {"model": "scope/metered", "messages": HELLO})
    assert response.status_code == 200 and response["X-Scope-Model"] == "up"

    text = Client().get("/metrics").content.decode()
    got = samples(text)
    assert (
        got[
            (
                "scope_requests_total",
                (("endpoint", "chat"), ("model", "up"), ("policy", "metered"), ("status", "ok")),
            )
        ]
        == before["requests"] + 1
    )
    assert (
        value("scope_decisions_total", kind="chat", policy="metered", model="down", strategy="hybrid")
        == before["decisions"] + 1
    )
    assert (
        value("scope_fallbacks_total", policy="metered", model="down", reason="upstream_error")
        == before["fallbacks"] + 1
    )
    assert value("scope_spend_usd_total", policy="metered", model="up") > before["spend"]
    assert value("scope_route_decision_seconds_count", policy="metered") == before["route"] + 1
    assert value("scope_upstream_seconds_count", model="up", provider="sim") == before["upstream"] + 1
    assert "scope_upstream_seconds_bucket" in text and "scope_route_decision_seconds_bucket" in text
    assert got[("scope_circuit_state", (("model", "up"), ("state", "closed")))] == 1.0


def test_circuit_states_come_from_the_shared_cache(catalog: Any) -> None:
    for _ in range(5):
        circuit_record_failure("small", error_class="timeout")
    got = samples(metrics_render().decode())
    assert got[("scope_circuit_state", (("model", "small"), ("state", "open")))] == 1.0
    assert got[("scope_circuit_state", (("model", "small"), ("state", "closed")))] == 0.0
    assert got[("scope_circuit_state", (("model", "medium"), ("state", "closed")))] == 1.0


_WORKER = """
from scope_site import metrics
metrics.REQUESTS.labels("chat", "default", "small", "ok").inc(3)
metrics.ROUTE_SECONDS.labels("default").observe(0.004)
"""


def test_counters_from_several_worker_processes_add_up(db: Any, tmp_path: Path) -> None:
    """What gunicorn workers do under scope_site/gunicorn_conf.py: one file per process, summed at scrape."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for _ in range(2):
        subprocess.run(
            [sys.executable, "-c", _WORKER], env=env, check=True, cwd=Path(__file__).resolve().parents[2]
        )
    got = samples(metrics_render(multiproc_dir=str(tmp_path)).decode())
    key = (
        "scope_requests_total",
        (("endpoint", "chat"), ("model", "small"), ("policy", "default"), ("status", "ok")),
    )
    assert got[key] == 6.0
    assert got[("scope_route_decision_seconds_count", (("policy", "default"),))] == 2.0


def test_metrics_can_require_a_token(db: Any, settings: Any) -> None:
    settings.SCOPE_METRICS_TOKEN = "scrape-secret"
    assert Client().get("/metrics").status_code == 401
    ok = Client().get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-secret")
    assert ok.status_code == 200 and ok["Content-Type"].startswith("text/plain")


def test_route_only_decisions_are_counted_too(api: Api) -> None:
    before = value("scope_decisions_total", kind="route", policy="default", model="small", strategy="hybrid")
    response = api("/api/v1/route", {"messages": HELLO, "alpha": 0.0})
    assert response.status_code == 200 and response.json()["model"] == "small"
    after = value("scope_decisions_total", kind="route", policy="default", model="small", strategy="hybrid")
    assert after == before + 1
