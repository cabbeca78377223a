"""Celery tasks for experiment bookkeeping and budget pacing (registered via CELERY_IMPORTS).

Each task takes ids, calls one service and is safe to run twice: the services lock their row
and skip work that is already done.
"""

from __future__ import annotations

from typing import Any

from celery import shared_task
from django.db import OperationalError

from routing.services.experiment_stats import experiment_stats_refresh, experiments_to_refresh
from routing.services.pacing import paced_policies, pacing_adjust

RETRY = {
    "autoretry_for": (OperationalError,),  # database hiccups; domain errors are not retried
    "retry_backoff": 5,
    "retry_backoff_max": 300,
    "retry_jitter": True,
    "max_retries": 3,
}


@shared_task(name="routing.experiment_stats_refresh", soft_time_limit=240, time_limit=300, **RETRY)
def experiment_stats_refresh_task(experiment_id: int) -> dict[str, Any]:
    result = experiment_stats_refresh(experiment_id=experiment_id)
    return {"experiment_id": result.experiment_id, "updated": result.updated}


@shared_task(name="routing.experiments_refresh_all", soft_time_limit=50, time_limit=60, **RETRY)
def experiments_refresh_all_task() -> int:
    """Periodic fan-out: one stats task per running (or recently ended) experiment."""
    ids = experiments_to_refresh()
    for experiment_id in ids:
        experiment_stats_refresh_task.delay(experiment_id)
    return len(ids)


@shared_task(name="routing.pacing_adjust", soft_time_limit=110, time_limit=120, **RETRY)
def pacing_adjust_task(policy_id: int) -> dict[str, Any]:
    result = pacing_adjust(policy_id=policy_id)
    return {"policy": result.policy, "action": result.action, "reason": result.reason}


@shared_task(name="routing.pacing_run_all", soft_time_limit=50, time_limit=60, **RETRY)
def pacing_run_all_task() -> int:
    """Periodic fan-out: one controller step per policy with a spend target."""
    ids = paced_policies()
    for policy_id in ids:
        pacing_adjust_task.delay(policy_id)
    return len(ids)
