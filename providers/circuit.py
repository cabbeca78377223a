"""Per-model circuit breaker with its state in the Django cache (Redis in production).

Because the state lives in the shared cache, every web and worker process sees the same circuit:
  closed     calls flow; failures are counted in fixed windows of SCOPE_CIRCUIT_WINDOW_S
  open       SCOPE_CIRCUIT_FAILURES failures within a window opened it; calls are refused (the
             decision shows the model as excluded with the reason) until the cool-down ends
  half-open  the cool-down (SCOPE_CIRCUIT_COOLDOWN_S) is over; exactly one caller, across all
             processes, wins the probe (an atomic cache `add`); its success closes the circuit,
             its failure opens it again for another cool-down
If the cache is down the breaker fails open (calls flow) rather than taking the router down.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from django.conf import settings
from django.core.cache import cache

from routing.engine.types import ModelSpec

logger = logging.getLogger(__name__)
_KEEP_S = 24 * 3600  # cache TTL of the open-state record; the logic reads its own timestamps


def now() -> float:
    """The breaker's clock (wall time, shared by all processes). Tests patch this, not the cache."""
    return time.time()


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class CircuitStatus:
    state: CircuitState
    reason: str = ""
    retry_in_s: float = 0.0


_CLOSED = CircuitStatus(CircuitState.CLOSED)


def _failures() -> int:
    return int(settings.SCOPE_CIRCUIT_FAILURES)


def _window() -> float:
    return float(settings.SCOPE_CIRCUIT_WINDOW_S)


def _cooldown() -> float:
    return float(settings.SCOPE_CIRCUIT_COOLDOWN_S)


def _key(model: str, part: str) -> str:
    return f"circuit:{'_'.join(model.split())}:{part}"


# Failures are counted in slots of a tenth of the window, and the circuit reads the last ten: the
# window slides. With one count per whole window, failures that straddle its boundary (two just
# before, one just after) never reached the threshold together.
_SLOTS = 10


def _slot(at: float) -> int:
    return int(at // (_window() / _SLOTS))


def _bucket_key(model: str, at: float) -> str:
    return _key(model, f"fails:{_slot(at)}")


def _bucket_keys(model: str, at: float) -> list[str]:
    """The failure counts of the last window (its ten most recent slots)."""
    last = _slot(at)
    return [_key(model, f"fails:{slot}") for slot in range(last - _SLOTS + 1, last + 1)]


def _state_keys(model: str, at: float) -> list[str]:
    """Everything that makes the circuit open: its record, its probe claim, its recent failures."""
    return [_key(model, "open"), _key(model, "probe"), *_bucket_keys(model, at)]


def _status(record: Any, at: float) -> CircuitStatus:
    if not isinstance(record, dict):
        return _CLOSED
    until = float(record.get("until", 0.0))
    if at < until:
        return CircuitStatus(
            CircuitState.OPEN,
            reason=f"circuit open: {record.get('failures', '?')} failures in {_window():g}s "
            f"(last: {record.get('error_class', 'error')}); probe in {until - at:.0f}s",
            retry_in_s=until - at,
        )
    return CircuitStatus(CircuitState.HALF_OPEN, reason="circuit half-open: probing")


def circuit_states(models: Iterable[str]) -> dict[str, CircuitStatus]:
    """Every model's circuit in one cache round trip."""
    names = list(models)
    try:
        records = cache.get_many([_key(m, "open") for m in names])
    except Exception:  # cache down: fail open
        logger.warning("circuit state unavailable (cache error); treating circuits as closed", exc_info=True)
        return {m: _CLOSED for m in names}
    at = now()
    return {m: _status(records.get(_key(m, "open")), at) for m in names}


def circuit_status(model: str) -> CircuitStatus:
    return circuit_states([model])[model]


# the route path's view of the circuits, per process: (monotonic time read, names) → states
_recent: dict[tuple[str, ...], tuple[float, dict[str, CircuitStatus]]] = {}


def circuit_states_recent(models: Iterable[str]) -> dict[str, CircuitStatus]:
    """circuit_states(), reused for SCOPE_CIRCUIT_SNAPSHOT_SECONDS within this process.

    Routing reads every circuit on every request; the provider call path (circuit_allow) always
    reads the shared state, so a circuit opened by another process is honoured at call time at
    once and excluded from new decisions within the snapshot age. Changes made by this process
    drop its snapshot immediately.
    """
    names = tuple(models)
    ttl = float(settings.SCOPE_CIRCUIT_SNAPSHOT_SECONDS)
    if ttl <= 0:
        return circuit_states(names)
    at = time.monotonic()
    hit = _recent.get(names)
    if hit is not None and at - hit[0] < ttl:
        return hit[1]
    states = circuit_states(names)
    if len(_recent) > 256:
        _recent.clear()
    _recent[names] = (at, states)
    return states


def with_circuit_health(specs: Sequence[ModelSpec]) -> tuple[ModelSpec, ...]:
    """The catalog as the engine should see it: open circuits become `unavailable_reason`."""
    states = circuit_states_recent(s.name for s in specs)
    return tuple(
        dataclasses.replace(s, unavailable_reason=states[s.name].reason)
        if states[s.name].state is CircuitState.OPEN and not s.unavailable_reason
        else s
        for s in specs
    )


@dataclass(frozen=True, slots=True)
class CircuitPass:
    """Whether one call may go ahead. `blocked` says why not; `probe` means this call won the
    half-open probe and must end it: circuit_record_success, circuit_record_failure, or
    circuit_probe_release when the call ends without telling whether the upstream is healthy."""

    blocked: CircuitStatus | None = None
    probe: bool = False


def circuit_enter(model: str) -> CircuitPass:
    """May a call to `model` go ahead (claiming the half-open probe if due)?"""
    status = circuit_status(model)
    if status.state is CircuitState.CLOSED:
        return CircuitPass()
    if status.state is CircuitState.OPEN:
        return CircuitPass(blocked=status)
    try:
        # one probe for all processes: `add` only succeeds for the first caller
        # held as long as a call may run (the execution budget), so a slow probe's release can never
        # drop a later probe's claim; a probe whose process died blocks the model that long at most
        hold = max(int(_cooldown()), int(settings.SCOPE_EXECUTION_BUDGET_S), 1)
        won = cache.add(_key(model, "probe"), now(), timeout=hold)
    except Exception:
        return CircuitPass()
    if won:
        return CircuitPass(probe=True)
    return CircuitPass(
        blocked=CircuitStatus(CircuitState.HALF_OPEN, reason="circuit half-open: another request is probing")
    )


def circuit_allow(model: str) -> CircuitStatus | None:
    """None when a call to `model` may go ahead (claiming the half-open probe if due), else why not."""
    return circuit_enter(model).blocked


def circuit_probe_release(model: str) -> None:
    """The probe a call held ended without a verdict: the circuit stays half-open, the next call probes.

    Harmless after a verdict (success or failure already dropped the claim, and the circuit is then
    closed or open, so nobody can have claimed a new probe in between).
    """
    try:
        cache.delete(_key(model, "probe"))
    except Exception:
        logger.warning("could not release the circuit probe of %s", model, exc_info=True)


def circuit_record_success(model: str) -> None:
    try:
        if cache.get(_key(model, "open")) is not None:
            _recent.clear()
            cache.delete_many(_state_keys(model, now()))
    except Exception:
        logger.warning("could not record circuit success for %s", model, exc_info=True)


def circuit_record_failure(model: str, *, error_class: str) -> CircuitStatus:
    """Count a failure; open (or re-open) the circuit when it crosses the threshold."""
    at = now()
    try:
        record = cache.get(_key(model, "open"))
        if isinstance(record, dict):
            if _status(record, at).state is CircuitState.HALF_OPEN:  # the probe failed
                return _open(
                    model, at, failures=int(record.get("failures", _failures())), error_class=error_class
                )
            return _status(record, at)
        key = _bucket_key(model, at)
        cache.add(key, 0, timeout=int(_window()) + 1)
        cache.incr(key)
        recent = sum(int(n) for n in cache.get_many(_bucket_keys(model, at)).values())
    except Exception:
        logger.warning("could not record circuit failure for %s", model, exc_info=True)
        return _CLOSED
    if recent >= _failures():
        return _open(model, at, failures=recent, error_class=error_class)
    return _CLOSED


def _open(model: str, at: float, *, failures: int, error_class: str) -> CircuitStatus:
    _recent.clear()
    record = {"until": at + _cooldown(), "opened_at": at, "failures": failures, "error_class": error_class}
    cache.set(_key(model, "open"), record, timeout=_KEEP_S)
    cache.delete(_key(model, "probe"))
    logger.warning("circuit for %s opened after %s failures (%s)", model, failures, error_class)
    return _status(record, at)


def circuit_reset(model: str) -> None:
    """Close a circuit by hand (admin action)."""
    _recent.clear()
    cache.delete_many(_state_keys(model, now()))
