"""Load balancing across a model's deployments, within each deployment's RPM/TPM limits.

A model with Deployment rows is served by them; a model without any is served by its own
provider (the default deployment, no limits of its own). For each call:

  1. deployments whose circuit is open are left out (a per-deployment circuit, keyed
     "<model>@<deployment>" in providers.circuit, so one failing endpoint does not take the
     others down with it);
  2. the rest are ordered by the model's `load_balancing`: `weighted` (random, proportional to
     weight), `least_busy` (fewest calls in flight) or `latency` (lowest EWMA of call latency;
     a deployment without measurements goes first so it gets measured);
  3. the first one with room in its current minute for one more request (RPM) and for the
     request's estimated tokens (TPM) is taken. Room is taken with an atomic increment that is
     rolled back if it went over the limit, so processes sharing Redis never exceed a limit.

When every deployment is at its limit (or open) `DeploymentsUnavailable` says why for each;
the executor treats that like an open circuit and falls back to the next model.

In-flight counts, latency EWMAs and the minute windows live in the cache. If the cache is down,
limits and least-busy/latency data are unavailable: the balancer falls back to weighted choice
without limits and logs a warning, rather than failing the call.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Collection
from dataclasses import dataclass

from django.conf import settings
from django.core.cache import cache

from providers.adapters.base import Target
from providers.circuit import (
    CircuitState,
    circuit_enter,
    circuit_probe_release,
    circuit_record_failure,
    circuit_record_success,
    circuit_states,
)
from providers.models import Deployment, LLMModel, LoadBalancing
from routing.services.counters import CACHE_ERRORS, counter_add, counter_get, counter_take, warn_degraded

logger = logging.getLogger(__name__)
_WINDOW_S = 60
_EWMA_ALPHA = 0.3
_INFLIGHT_TTL_S = 3600  # an in-flight count nobody touched for an hour is stale (crashed workers)
_random = random.Random()


@dataclass(frozen=True, slots=True)
class DeploymentSpec:
    model: str
    name: str
    provider: str
    kind: str
    base_url: str
    api_key_env: str
    connect_timeout_s: float
    read_timeout_s: float
    upstream_model: str
    weight: int
    rpm_limit: int | None
    tpm_limit: int | None

    @property
    def key(self) -> str:
        """The deployment's name in the cache and in its circuit: "<model>@<deployment>"."""
        return f"{self.model}@{self.name}"


class DeploymentsUnavailable(Exception):
    """Every deployment of the model is at its limit or open; `reason` names each one's state."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# --- the deployments of each model (a per-process snapshot, refreshed like the catalog) -------


@dataclass
class _Snapshot:
    loaded_at: float = 0.0
    by_model: dict[str, tuple[DeploymentSpec, ...]] | None = None


_snapshot = _Snapshot()
_snapshot_lock = threading.Lock()


def _load() -> dict[str, tuple[DeploymentSpec, ...]]:
    by_model: dict[str, list[DeploymentSpec]] = {}
    rows = (
        Deployment.objects.select_related("model", "provider")
        .filter(enabled=True, provider__enabled=True)
        .order_by("model__name", "name")
    )
    for row in rows:
        by_model.setdefault(row.model.name, []).append(
            DeploymentSpec(
                model=row.model.name,
                name=row.name,
                provider=row.provider.name,
                kind=row.provider.kind,
                base_url=row.provider.base_url,
                api_key_env=row.provider.api_key_env,
                connect_timeout_s=row.provider.connect_timeout_s,
                read_timeout_s=row.provider.read_timeout_s,
                upstream_model=row.upstream_name or row.model.upstream_name or row.model.name,
                weight=row.weight,
                rpm_limit=row.rpm_limit,
                tpm_limit=row.tpm_limit,
            )
        )
    return {model: tuple(specs) for model, specs in by_model.items()}


def model_deployments(model: str) -> tuple[DeploymentSpec, ...]:
    """The model's enabled deployments (empty: the model's own provider serves it)."""
    global _snapshot
    ttl = float(settings.SCOPE_CATALOG_TTL_SECONDS)
    with _snapshot_lock:
        if _snapshot.by_model is None or ttl <= 0 or time.monotonic() - _snapshot.loaded_at > ttl:
            _snapshot = _Snapshot(loaded_at=time.monotonic(), by_model=_load())
        return (_snapshot.by_model or {}).get(model, ())


def deployments_invalidate() -> None:
    global _snapshot
    with _snapshot_lock:
        _snapshot = _Snapshot()


# --- per-call leases ---------------------------------------------------------------------------


@dataclass(slots=True)
class _Lease:
    key: str
    window: int
    tokens: int
    at: float
    counts_tokens: bool
    probe: bool = False  # this call holds the deployment's half-open probe


# What acquire took, by the id of the Target it returned, until the call is released. Bounded:
# a lease never released (a crashed call) falls out and its in-flight count expires in the cache.
_leases: OrderedDict[int, _Lease] = OrderedDict()
_leases_lock = threading.Lock()
_MAX_LEASES = 10_000


def _remember(target: Target, lease: _Lease) -> None:
    with _leases_lock:
        _leases[id(target)] = lease
        while len(_leases) > _MAX_LEASES:
            _leases.popitem(last=False)


def _forget(target: Target) -> _Lease | None:
    with _leases_lock:
        return _leases.pop(id(target), None)


def _now() -> float:
    """Wall clock for the minute windows (shared by all processes); tests move it."""
    return time.time()


def _k(key: str, part: str) -> str:
    return f"deploy:{'_'.join(key.split())}:{part}"


# --- choosing ----------------------------------------------------------------------------------


def _weighted_order(specs: list[DeploymentSpec]) -> list[DeploymentSpec]:
    """A random order where each next pick is proportional to weight (weight 0: only as a last resort)."""
    pool = list(specs)
    order: list[DeploymentSpec] = []
    while pool:
        total = sum(s.weight for s in pool)
        if total <= 0:
            _random.shuffle(pool)
            order.extend(pool)
            break
        point = _random.uniform(0, total)
        for index, spec in enumerate(pool):
            point -= spec.weight
            if point <= 0 or index == len(pool) - 1:
                order.append(pool.pop(index))
                break
    return order


def _ordered(strategy: str, specs: list[DeploymentSpec]) -> list[DeploymentSpec]:
    order = _weighted_order(specs)  # also the tie-break for the other strategies
    if strategy == LoadBalancing.LEAST_BUSY:
        busy = cache.get_many([_k(s.key, "inflight") for s in order])
        return sorted(order, key=lambda s: max(0, int(busy.get(_k(s.key, "inflight")) or 0)))
    if strategy == LoadBalancing.LATENCY:
        ewma = cache.get_many([_k(s.key, "latency") for s in order])
        return sorted(order, key=lambda s: float(ewma.get(_k(s.key, "latency")) or 0.0))
    return order


def _take(spec: DeploymentSpec, window: int, tokens: int) -> str:
    """Take one request and `tokens` in this minute; "" on success, else why not.

    Only limited dimensions are counted (an unlimited one costs no cache round trip).
    """
    ttl = 2 * _WINDOW_S + 5
    rpm_key = _k(spec.key, f"rpm:{window}")
    if spec.rpm_limit is not None:
        taken, used = counter_take(rpm_key, 1, limit=spec.rpm_limit, ttl_s=ttl)
        if not taken:
            return f"{spec.name}: at its limit of {spec.rpm_limit} requests/min"
    if spec.tpm_limit is not None:
        taken, used = counter_take(_k(spec.key, f"tpm:{window}"), tokens, limit=spec.tpm_limit, ttl_s=ttl)
        if not taken:
            if spec.rpm_limit is not None:
                counter_add(rpm_key, -1, ttl_s=ttl)
            return f"{spec.name}: at its limit of {spec.tpm_limit} tokens/min ({used} used, {tokens} needed)"
    return ""


def _target(spec: DeploymentSpec, row: LLMModel) -> Target:
    return Target(
        model=spec.model,
        upstream_model=spec.upstream_model,
        provider=spec.provider,
        kind=spec.kind,
        base_url=spec.base_url,
        api_key_env=spec.api_key_env,
        connect_timeout_s=spec.connect_timeout_s,
        read_timeout_s=spec.read_timeout_s,
        sim_profile=dict(row.sim_profile or {}),
        deployment=spec.name,
    )


def default_target(row: LLMModel) -> Target:
    """The model served by its own provider (no Deployment rows)."""
    provider = row.provider
    return Target(
        model=row.name,
        upstream_model=row.upstream_name or row.name,
        provider=provider.name,
        kind=provider.kind,
        base_url=provider.base_url,
        api_key_env=provider.api_key_env,
        connect_timeout_s=provider.connect_timeout_s,
        read_timeout_s=provider.read_timeout_s,
        sim_profile=dict(row.sim_profile or {}),
    )


def deployment_acquire(row: LLMModel, *, estimated_tokens: int, exclude: Collection[str] = ()) -> Target:
    """Pick where the next call to `row` goes and take its room; DeploymentsUnavailable if none has any.

    `exclude` names deployments the call already tried (and that failed).
    """
    specs = model_deployments(row.name)
    if not specs:
        return default_target(row)
    if exclude:
        specs = tuple(s for s in specs if s.name not in exclude)
    tokens = max(0, int(estimated_tokens))
    states = circuit_states(s.key for s in specs)
    why_not = [f"{s.name}: {states[s.key].reason}" for s in specs if states[s.key].state is CircuitState.OPEN]
    healthy = [s for s in specs if states[s.key].state is not CircuitState.OPEN]
    window = int(_now() // _WINDOW_S)
    try:
        order = _ordered(row.load_balancing, healthy)
        for spec in order:
            probe = False
            if states[spec.key].state is CircuitState.HALF_OPEN:
                entry = circuit_enter(spec.key)
                if entry.blocked is not None:
                    why_not.append(f"{spec.name}: circuit half-open, another request is probing")
                    continue
                probe = entry.probe
            refusal = _take(spec, window, tokens)
            if refusal:
                if probe:  # no call goes there after all: let the next one probe it
                    circuit_probe_release(spec.key)
                why_not.append(refusal)
                continue
            counter_add(_k(spec.key, "inflight"), 1, ttl_s=_INFLIGHT_TTL_S)
            target = _target(spec, row)
            _remember(
                target,
                _Lease(
                    key=spec.key,
                    window=window,
                    tokens=tokens,
                    at=time.monotonic(),
                    counts_tokens=spec.tpm_limit is not None,
                    probe=probe,
                ),
            )
            return target
    except CACHE_ERRORS as exc:
        warn_degraded("deployment limits and load data", exc)
        if healthy:
            return _target(_weighted_order(healthy)[0], row)
    why_not.extend(f"{name}: already failed in this call" for name in sorted(exclude))
    raise DeploymentsUnavailable(f"every deployment of {row.name} is unavailable: " + "; ".join(why_not))


def deployment_release(target: Target, *, ok: bool, tokens: int, latency_s: float) -> None:
    """The call to `target` ended: free its in-flight slot, true up its tokens, learn its latency.

    Failures are counted separately (`deployment_record_failure`, before the release), where the
    error is known.

    Safe to call more than once for one acquire (a retried attempt reuses its target): only the
    first release frees the slot; later ones count their tokens and latency.
    """
    if not target.deployment:
        return
    key = f"{target.model}@{target.deployment}"
    lease = _forget(target)
    try:
        if lease is not None:
            inflight = counter_add(_k(key, "inflight"), -1, ttl_s=_INFLIGHT_TTL_S)
            if inflight < 0:  # the count expired while the call ran: do not go below zero
                counter_add(_k(key, "inflight"), -inflight, ttl_s=_INFLIGHT_TTL_S)
        window = lease.window if lease is not None else int(_now() // _WINDOW_S)
        # the estimate was taken at admission; count what the call really used instead
        delta = max(0, int(tokens)) - (lease.tokens if lease is not None else 0)
        if delta and (lease is None or lease.counts_tokens):
            counter_add(_k(key, f"tpm:{window}"), delta, ttl_s=2 * _WINDOW_S + 5)
        if ok and latency_s > 0:
            latency_key = _k(key, "latency")
            previous = cache.get(latency_key)
            value = (
                latency_s * 1000
                if previous is None
                else (_EWMA_ALPHA * latency_s * 1000 + (1 - _EWMA_ALPHA) * float(previous))
            )
            cache.set(latency_key, value, timeout=24 * 3600)
    except CACHE_ERRORS as exc:
        warn_degraded("deployment limits and load data", exc)
    if ok:
        circuit_record_success(key)  # also closes a half-open deployment circuit after its probe
    elif lease is not None and lease.probe:
        # a failure that counts was recorded before the release (and re-opened the circuit); one
        # that does not (a bad request, an interrupted call) says nothing about the deployment
        circuit_probe_release(key)


def deployment_record_failure(target: Target, *, error_class: str) -> bool:
    """Count an upstream failure against the deployment's circuit (not for requests that were bad).

    Returns whether the failure should also count against the model's circuit: yes for a model
    served by its own provider, and for a deployment whose siblings are all open too (the model
    then really has nowhere left to go); no while a healthy sibling can still serve it.
    """
    if not target.deployment:
        return True
    key = f"{target.model}@{target.deployment}"
    circuit_record_failure(key, error_class=error_class)
    siblings = [s.key for s in model_deployments(target.model) if s.key != key]
    states = circuit_states(siblings)
    return all(states[name].state is CircuitState.OPEN for name in siblings)


@dataclass(frozen=True, slots=True)
class DeploymentLoad:
    name: str
    provider: str
    weight: int
    in_flight: int
    latency_ewma_ms: float | None
    rpm_used: int
    rpm_limit: int | None
    tpm_used: int
    tpm_limit: int | None
    circuit: str


def deployment_loads(model: str) -> list[DeploymentLoad]:
    """What the balancer sees for each deployment of `model` right now (for the UI and tests)."""
    specs = model_deployments(model)
    window = int(_now() // _WINDOW_S)
    states = circuit_states(s.key for s in specs)
    out = []
    for spec in specs:
        latency = cache.get(_k(spec.key, "latency"))
        out.append(
            DeploymentLoad(
                name=spec.name,
                provider=spec.provider,
                weight=spec.weight,
                in_flight=max(0, counter_get(_k(spec.key, "inflight"))),
                latency_ewma_ms=None if latency is None else round(float(latency), 2),
                rpm_used=counter_get(_k(spec.key, f"rpm:{window}")),
                rpm_limit=spec.rpm_limit,
                tpm_used=counter_get(_k(spec.key, f"tpm:{window}")),
                tpm_limit=spec.tpm_limit,
                circuit=str(states[spec.key].state),
            )
        )
    return out
