"""In-process timing of one route decision, stage by stage, and of the predictor as candidates grow.

Runs inside Django (DJANGO_SETTINGS_MODULE set by the caller) on the configured database. Each
stage is timed on its own, many times, and reported as median and p99 in milliseconds.
"""

from __future__ import annotations

import gc
import io
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True)
class Timing:
    name: str
    p50_ms: float
    p99_ms: float
    runs: int


def time_it(name: str, fn: Callable[[], Any], *, runs: int = 400, warmup: int = 20) -> Timing:
    for _ in range(warmup):
        fn()
    samples = []
    gc.disable()
    try:
        for _ in range(runs):
            started = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - started) * 1000.0)
    finally:
        gc.enable()
    samples.sort()
    return Timing(
        name, statistics.median(samples), samples[min(len(samples) - 1, int(len(samples) * 0.99))], runs
    )


@dataclass
class OneDecision:
    """One request's data through the route path's stages, each callable alone (the breakdown and
    bench/instructions.py time or count them in loops)."""

    messages: Any
    metadata: dict[str, Any]
    api_key: Any
    features: Any
    policy: Any
    specs: Any
    predictor: Any
    strategies: Any
    decision: Any = None

    @classmethod
    def prepare(cls, data: dict[str, Any], api_key: Any) -> OneDecision:
        from routing.engine.prior import PriorPredictor
        from routing.features import extract_features
        from routing.predictor.registry import active_predictor
        from routing.selectors import model_specs
        from routing.services.route import resolve_policy, strategies

        messages, metadata = data["messages"], data.get("metadata") or {}
        one = cls(
            messages=messages,
            metadata=metadata,
            api_key=api_key,
            features=extract_features(messages, metadata),
            policy=resolve_policy(requested=data.get("policy"), api_key=api_key),
            specs=model_specs(),
            predictor=active_predictor() or PriorPredictor(),
            strategies=strategies(),
        )
        one.decision = one.decide()
        return one

    def decide(self) -> Any:
        from django.conf import settings

        from routing.engine.decide import decide
        from routing.engine.types import RouteOptions

        return decide(
            features=self.features,
            models=self.specs,
            policy=self.policy,
            options=RouteOptions(metadata=self.metadata),
            predictor=self.predictor,
            strategies=self.strategies,
            max_fallbacks=settings.SCOPE_MAX_FALLBACKS,
        )

    def write(self) -> Any:
        from routing.services.decision_log import decision_log_write

        return decision_log_write(
            decision=self.decision,
            features=self.features,
            policy=self.policy,
            api_key=self.api_key,
            user="bench-breakdown",
            metadata=self.metadata,
        )


def decision_breakdown(*, body: bytes, key: str, runs: int = 400, writer_socket: str = "") -> list[Timing]:
    """parse, auth, features, predict, decide (without predict), log write, render: one decision."""
    from django.conf import settings
    from rest_framework.renderers import JSONRenderer
    from rest_framework.request import Request
    from rest_framework.test import APIRequestFactory

    from routing.auth import BearerApiKeyAuthentication
    from routing.features import extract_features
    from routing.route_input import route_input_validate
    from routing.services.route import decision_payload
    from scope_site.parsers import JSONParser

    factory = APIRequestFactory()
    auth = BearerApiKeyAuthentication()

    def parse() -> dict[str, Any]:
        return route_input_validate(JSONParser().parse(io.BytesIO(body)))

    def authenticate() -> Any:
        request = Request(
            factory.post(
                "/api/v1/route", body, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {key}"
            )
        )
        result = auth.authenticate(request)
        assert result is not None
        return result[1]

    data = parse()
    api_key = authenticate()
    one = OneDecision.prepare(data, api_key)
    write = one.write
    row = write()
    timings = [
        time_it("parse (JSON + validation)", parse, runs=runs),
        time_it("auth (API key)", authenticate, runs=runs),
        time_it("features", lambda: extract_features(one.messages, one.metadata), runs=runs),
        time_it(
            f"predict ({len(one.specs)} models, {one.predictor.version})",
            lambda: one.predictor.predict(one.features, one.specs),
            runs=runs,
        ),
    ]
    whole = time_it("decide (incl. predict)", one.decide, runs=runs)
    timings.append(
        Timing("decide (without predict)", max(0.0, whole.p50_ms - timings[3].p50_ms), whole.p99_ms, runs)
    )
    timings.append(time_it("log write (durable, own INSERT)", write, runs=max(50, runs // 4), warmup=5))
    if writer_socket:
        from django.conf import settings

        settings.SCOPE_DECISION_WRITER_SOCKET = writer_socket
        try:
            timings.append(
                time_it("log write (durable, group commit)", write, runs=max(50, runs // 4), warmup=5)
            )
        finally:
            settings.SCOPE_DECISION_WRITER_SOCKET = ""
    timings.append(
        time_it("render (payload + JSON)", lambda: JSONRenderer().render(decision_payload(row)), runs=runs)
    )
    return timings


def synthetic_specs(count: int) -> list[Any]:
    """`count` models spread over the demo catalog's shapes (names beyond it are new models)."""
    from routing.selectors import model_specs

    base = list(model_specs())
    specs = []
    for index in range(count):
        template = base[index % len(base)]
        name = template.name if index < len(base) else f"{template.name}-variant-{index}"
        specs.append(
            replace(
                template,
                name=name,
                tier=1 + index % 5,
                input_usd_per_mtok=template.input_usd_per_mtok * (1 + index % 7 / 10),
            )
        )
    return specs


def predictor_scaling(
    *, prompt_messages: list[dict[str, Any]], counts: tuple[int, ...] = (5, 20, 50, 200), runs: int = 400
) -> tuple[str, list[Timing]]:
    from routing.engine.prior import PriorPredictor
    from routing.features import extract_features
    from routing.predictor.registry import active_predictor

    predictor = active_predictor() or PriorPredictor()
    features = extract_features(prompt_messages, {})
    timings = []
    for count in counts:
        specs = synthetic_specs(count)

        def run(specs: list[Any] = specs) -> Any:
            return predictor.predict(features, specs)

        timings.append(time_it(f"{count} candidates", run, runs=runs))
    return predictor.version, timings


def feature_timing(*, runs: int = 2000) -> Timing:
    """extract_features on a 2 KB prompt (one user message)."""
    from routing.features import extract_features

    prompt = (
        "Explain why this loop is slow and rewrite it: for i in range(n): total = total + price[i] * qty[i]. "
        "Then compute 17 * 3.25 with 8% tax, step by step. "
    )
    text = (prompt * (2048 // len(prompt) + 1))[:2048]
    messages = [{"role": "user", "content": text}]
    return time_it("features (2 KB prompt)", lambda: extract_features(messages, {}), runs=runs, warmup=100)


def as_json(timings: list[Timing]) -> str:
    return json.dumps([t.__dict__ for t in timings])


@dataclass(frozen=True)
class RequestCost:
    """CPU per request (thread time, mean ms) of whole requests and of route stages inside them."""

    noop_ms: float
    route_ms: float
    stages_ms: dict[str, float]  # route stage -> mean ms per route request, measured inside it


# route stages as (module, attribute) patched with a CPU-time accumulator while measuring
_STAGES = (
    ("routing.services.route", "extract_features", "features"),
    ("routing.services.route", "decide", "decide (with predict)"),
    ("routing.services.route", "decision_log_write", "log write (row, hash, hand-over)"),
    ("routing.services.decision_log", "decision_row_hash_texts", "  canonical JSON + hash"),
    ("routing.services.decision_log", "decision_copy_values_line", "  COPY line"),
    ("routing.services.decision_writer.WriterClient", "commit", "  writer round trip"),
    ("routing.api", "decision_payload", "answer payload"),
)


def request_breakdown(
    *, body: bytes, key: str, writer_socket: str = "", runs: int = 1000, warmup: int = 50
) -> RequestCost:
    """Whole requests through every middleware (Django's test client, no sockets), no-op and
    route, and what each route stage costs *inside* them.

    Timed alone in a loop (decision_breakdown), a stage keeps its code and data in the CPU caches;
    inside a request every stage runs once and evicts the one before, so it costs more. Needs
    SCOPE_ENABLE_NOOP_ENDPOINT set before Django loads the URLs. With `writer_socket`, rows go
    through that group-commit writer, as under `make serve`.
    """
    from django.test import override_settings

    with override_settings(SCOPE_DECISION_WRITER_SOCKET=writer_socket):
        return _request_breakdown(body=body, key=key, runs=runs, warmup=warmup)


def _request_breakdown(*, body: bytes, key: str, runs: int, warmup: int) -> RequestCost:
    import importlib
    from collections import Counter

    from django.test import Client

    client = Client(HTTP_AUTHORIZATION=f"Bearer {key}")
    spent: Counter[str] = Counter()

    def post(endpoint: str) -> None:
        started = time.thread_time_ns()
        response = client.post(f"/api/v1/{endpoint}", body, content_type="application/json")
        spent[endpoint] += time.thread_time_ns() - started
        if response.status_code != 200:
            raise RuntimeError(f"/api/v1/{endpoint} answered {response.status_code}")

    def timed(fn: Callable[..., Any], label: str) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.thread_time_ns()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[label] += time.thread_time_ns() - started

        return wrapper

    means: dict[str, float] = {}
    for endpoint in ("noop", "route"):
        patched = []
        if endpoint == "route":
            for module_path, attribute, label in _STAGES:
                module_name, _, owner_name = module_path.rpartition(".")
                try:
                    owner: Any = importlib.import_module(module_path)
                except ModuleNotFoundError:  # a class inside a module
                    owner = getattr(importlib.import_module(module_name), owner_name)
                original = getattr(owner, attribute)
                patched.append((owner, attribute, original))
                setattr(owner, attribute, timed(original, label))
        try:
            for _ in range(warmup):
                post(endpoint)
            spent.clear()
            gc.disable()
            try:
                for _ in range(runs):
                    post(endpoint)
            finally:
                gc.enable()
            means.update({label: ns / runs / 1e6 for label, ns in spent.items()})
        finally:
            for owner, attribute, original in patched:
                setattr(owner, attribute, original)
    stages = {label: means.get(label, 0.0) for _, _, label in _STAGES}
    return RequestCost(noop_ms=means["noop"], route_ms=means["route"], stages_ms=stages)
