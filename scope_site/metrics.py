"""Prometheus metrics and the /metrics view (text exposition format).

Several gunicorn workers: `make serve` runs gunicorn with scope_site/gunicorn_conf.py, which sets
PROMETHEUS_MULTIPROC_DIR before any worker starts (and empties it at start). prometheus_client
then keeps every counter and histogram in per-process files there and /metrics sums them over all
workers, so any worker can answer a scrape correctly. Without that variable (the embedded dev
server, tests) the metrics live in the process. Circuit states are not counters: they are read
from the shared cache at scrape time, so they are the same whichever process answers.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Iterator

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

disable_created_metrics()  # no *_created series: they double the scrape for nothing we use

REQUESTS = Counter(
    "scope_requests",
    "Chat completion requests by endpoint, policy, answering model and result",
    ["endpoint", "policy", "model", "status"],
)
DECISIONS = Counter(
    "scope_decisions",
    "Routing decisions by kind, policy, chosen model and strategy",
    ["kind", "policy", "model", "strategy"],
)
FALLBACKS = Counter(
    "scope_fallbacks",
    "Models passed over during execution (failed or unavailable) before the next one was tried",
    ["policy", "model", "reason"],
)
UPSTREAM_CALLS = Counter(
    "scope_upstream_calls",
    "Upstream provider calls by model, provider and result",
    ["model", "provider", "result"],
)
ROUTE_SECONDS = Histogram(
    "scope_route_decision_seconds",
    "Time to decide (features, policy, predict, rank, log) per policy",
    ["policy"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)
UPSTREAM_SECONDS = Histogram(
    "scope_upstream_seconds",
    "Duration of upstream calls (whole answer) per model",
    ["model", "provider"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0),
)
UPSTREAM_TTFT_SECONDS = Histogram(
    "scope_upstream_ttft_seconds",
    "Time to first token of streamed answers per model",
    ["model", "provider"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
CELERY_TASKS = Counter(
    "scope_celery_tasks",
    "Celery tasks finished, by task and final state (SUCCESS, FAILURE, RETRY, ...)",
    ["task", "state"],
)
CELERY_TASK_SECONDS = Histogram(
    "scope_celery_task_seconds",
    "Run time of Celery tasks per task",
    ["task"],
    buckets=(0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0),
)
SPEND = Counter("scope_spend_usd", "Spend at catalog prices per policy and model", ["policy", "model"])
TOKENS = Counter("scope_tokens", "Tokens per model and direction (input/output)", ["model", "direction"])


def decision_observed(*, kind: str, policy: str, model: str, strategy: str, seconds: float) -> None:
    """One logged decision (route-only, chat or job) and how long deciding took."""
    ROUTE_SECONDS.labels(policy).observe(seconds)
    DECISIONS.labels(kind, policy, model, strategy).inc()


_CIRCUIT_STATES = ("closed", "half_open", "open")


class _CircuitCollector(Collector):
    """scope_circuit_state{model,state}: 1 for the model's current state, read from the shared cache."""

    def collect(self) -> Iterator[Metric]:
        from providers.circuit import circuit_states
        from routing.selectors import model_specs

        family = GaugeMetricFamily(
            "scope_circuit_state",
            "Circuit breaker state per model (1 = current state)",
            labels=["model", "state"],
        )
        try:
            names = [m.name for m in model_specs()]
        except Exception:  # no database: say nothing rather than fail the scrape
            names = []
        for model, status in circuit_states(names).items():
            for state in _CIRCUIT_STATES:
                family.add_metric([model, state], 1.0 if status.state.value == state else 0.0)
        yield family


class _ProcessRegistry(Collector):
    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()


def metrics_render(*, multiproc_dir: str | None = None) -> bytes:
    """The exposition text: every worker's series when in multiprocess mode, else this process's."""
    directory = multiproc_dir if multiproc_dir is not None else os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
    registry = CollectorRegistry()
    if directory:
        MultiProcessCollector(registry, path=directory)
    else:
        registry.register(_ProcessRegistry())
    registry.register(_CircuitCollector())
    return generate_latest(registry)


@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    from scope_site.errors import json_error  # imported here so worker processes can import metrics early

    token = settings.SCOPE_METRICS_TOKEN
    if token:
        scheme, _, given = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            return json_error(
                401, "unauthenticated", "/metrics needs 'Authorization: Bearer <SCOPE_METRICS_TOKEN>'"
            )
    return HttpResponse(metrics_render(), content_type=CONTENT_TYPE_LATEST)
