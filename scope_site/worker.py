"""The Celery worker's entry point: `celery -A scope_site.worker worker` (what `make worker` runs).

A prefork worker runs its tasks in child processes, so their Prometheus series are kept in
per-process files: PROMETHEUS_MULTIPROC_DIR, chosen here before anything imports prometheus_client
(default: var/prometheus-worker-<pid>, removed when the worker stops). The worker's main process
serves their sum at http://SCOPE_WORKER_METRICS_ADDR:SCOPE_WORKER_METRICS_PORT/metrics (default
127.0.0.1:9540; port 0 serves nothing). The web's /metrics does not include them: scrape each
worker host too. `celery -A scope_site worker` still works, without these metrics.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

_OWN_DIR = "PROMETHEUS_MULTIPROC_DIR" not in os.environ
if _OWN_DIR:
    _var = Path(os.environ.get("SCOPE_VAR_DIR", "").strip() or Path(__file__).resolve().parent.parent / "var")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(_var / f"prometheus-worker-{os.getpid()}")
Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]).mkdir(parents=True, exist_ok=True)

from celery.signals import worker_init, worker_ready, worker_shutdown  # noqa: E402

from scope_site.celery import app  # noqa: E402

__all__ = ["app"]
logger = logging.getLogger("scope.worker")


@worker_init.connect
def _refuse_without_a_broker(**_: Any) -> None:
    """Without REDIS_URL the broker is in-memory: a worker would wait forever for tasks that the web
    processes (eager, in process) never send it. Say so instead of starting."""
    from django.conf import settings

    if not settings.REDIS_URL:
        raise SystemExit(
            "a Celery worker needs REDIS_URL (its broker); without it tasks run inside the web "
            "process (make run) and this worker would never receive one"
        )


@worker_ready.connect
def _serve_metrics(**_: Any) -> None:
    from django.conf import settings
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    port, addr = int(settings.SCOPE_WORKER_METRICS_PORT), settings.SCOPE_WORKER_METRICS_ADDR
    if not port:
        return
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=os.environ["PROMETHEUS_MULTIPROC_DIR"])
    try:
        start_http_server(port, addr=addr, registry=registry)
    except OSError as exc:  # another worker on this host has the port: work on, say so
        logger.warning("worker metrics not served on %s:%s: %s", addr, port, exc)
        return
    logger.info("worker metrics at http://%s:%s/metrics", addr, port)


@worker_shutdown.connect
def _drop_metric_files(**_: Any) -> None:
    if _OWN_DIR:
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
