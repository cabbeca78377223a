from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery
from celery.signals import task_postrun, task_prerun

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "scope_site.settings")

app = Celery("scope")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
app.autodiscover_tasks(["routing.dashboard"])  # routing.dashboard.tasks (audit seal, rollups)

_started: dict[str, float] = {}  # task id → monotonic start, in the process running the task


@task_prerun.connect
def _task_started(task_id: str | None = None, **_: Any) -> None:
    if task_id:
        _started[task_id] = time.monotonic()


@task_postrun.connect
def _task_finished(task_id: str | None = None, task: Any = None, state: str | None = None, **_: Any) -> None:
    """scope_celery_tasks{task,state} and scope_celery_task_seconds{task}: on workers (served by
    scope_site.worker) and for tasks run in process (the web's /metrics)."""
    from scope_site import metrics

    began = _started.pop(task_id, None) if task_id else None
    name = getattr(task, "name", None) or "unknown"
    metrics.CELERY_TASKS.labels(name, state or "UNKNOWN").inc()
    if began is not None:
        metrics.CELERY_TASK_SECONDS.labels(name).observe(time.monotonic() - began)
