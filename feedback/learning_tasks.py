"""Celery tasks of the learning loop (registered via CELERY_IMPORTS): retraining and shadow summaries.

Tasks take ids and call one service; the services make a second delivery a no-op.
"""

from __future__ import annotations

from typing import Any

from celery import shared_task
from django.db import OperationalError

from feedback.services.calibration import calibration_graduate
from feedback.services.retraining import retraining_execute, retraining_request
from feedback.services.shadow import shadow_summary_refresh

RETRY = {
    "autoretry_for": (OperationalError,),
    "retry_backoff": 10,
    "retry_backoff_max": 600,
    "retry_jitter": True,
    "max_retries": 3,
}


@shared_task(
    name="feedback.retraining_execute", soft_time_limit=3300, time_limit=3600, acks_late=True, **RETRY
)
def retraining_execute_task(run_id: int) -> dict[str, Any]:
    run = retraining_execute(run_id=run_id)
    return {"run_id": run_id, "status": run.status if run is not None else "missing"}


@shared_task(name="feedback.retraining_scheduled", soft_time_limit=50, time_limit=60, **RETRY)
def retraining_scheduled_task(**params: Any) -> int:
    """The beat entry: queue a run (its task is enqueued on commit) unless one is already open."""
    return retraining_request(trigger="schedule", params=params, actor="system:retraining").pk


@shared_task(name="feedback.shadow_summary_refresh", soft_time_limit=240, time_limit=300, **RETRY)
def shadow_summary_refresh_task() -> dict[str, Any] | None:
    return shadow_summary_refresh()


@shared_task(name="feedback.calibration_graduate", soft_time_limit=110, time_limit=120, **RETRY)
def calibration_graduate_task() -> list[str]:
    """Periodic: lift the exploration cap of new models that have enough live outcomes (idempotent)."""
    return calibration_graduate(actor="system:exploration")
