"""Load what the route path needs before a process serves its first request.

A gunicorn worker loads the active predictor lazily, on its first route request: 0.35 s of CPU
for the mmlu-sized artifact (1.1 s while loading imported xgboost), which that request waited
for, and a worker recycled by --max-requests paid again. `make serve` calls `warm_process` from
gunicorn's post_worker_init hook, before the worker accepts connections, so no request waits:
the other workers serve meanwhile.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from django.db import close_old_connections
from django.urls import get_resolver

from routing.predictor.registry import active_scope_predictor
from routing.selectors import catalog_snapshot

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Warmed:
    seconds: float
    predictor_version: str  # "" when no trained predictor is active (the tier prior routes)
    models: int
    error: str = ""  # why warming stopped early; the request path then loads lazily as before


def warm_process() -> Warmed:
    """The URLconf, catalog snapshot, active predictor and the compiled kernels (the features' ones
    even when no predictor is active; each at once if its library is cached, else compiled in the
    background) loaded in this process; never raises."""
    started = time.perf_counter()
    try:
        # Django imports the URLconf, and with it every view module, on a process's first request:
        # about half a second, which a gevent worker would spend with all its connections waiting
        get_resolver().url_patterns  # noqa: B018 - the property's side effect is the point
        models = len(catalog_snapshot().models)
        predictor = active_scope_predictor()
        fast = predictor.plan.fast() if predictor is not None else None
        if fast is not None:
            # the serving kernel's checks against numpy on this predictor (its rows, and its
            # predictions with the compiled trees: about 15 requests' worth of numpy work each) run
            # now rather than in the first request
            fast.check_forest()
    except Exception as exc:  # noqa: BLE001 - a database that is down must not stop a worker booting
        log.warning(
            "warm-up skipped (%s: %s); the first request loads what it needs", type(exc).__name__, exc
        )
        return Warmed(time.perf_counter() - started, "", 0, f"{type(exc).__name__}: {exc}")
    finally:
        close_old_connections()  # as after a request: a broken connection is not kept for the next
    return Warmed(time.perf_counter() - started, predictor.version if predictor else "", models)
