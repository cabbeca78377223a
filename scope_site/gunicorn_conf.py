"""gunicorn settings for `make serve`: Prometheus multiprocess mode across the sync workers.

PROMETHEUS_MULTIPROC_DIR is set here, in the master, before any worker imports prometheus_client,
and emptied at start so counters from an earlier run do not leak into this one.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

_default_dir = (
    Path(os.environ.get("SCOPE_VAR_DIR", Path(__file__).resolve().parent.parent / "var")) / "prometheus"
)
multiproc_dir = os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(_default_dir))


def on_starting(server: Any) -> None:
    shutil.rmtree(multiproc_dir, ignore_errors=True)
    Path(multiproc_dir).mkdir(parents=True, exist_ok=True)


def child_exit(server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
