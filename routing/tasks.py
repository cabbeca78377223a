"""Celery tasks for async jobs. Each takes an id and calls one service; running twice is harmless."""

from __future__ import annotations

import os
import uuid
from typing import Any

from celery import shared_task
from django.conf import settings
from django.db import OperationalError

from routing.services.jobs import job_run, jobs_requeue_stale

# A job's provider calls are bounded by SCOPE_EXECUTION_BUDGET_S; the task gets a minute more.
_SOFT_LIMIT = int(settings.SCOPE_EXECUTION_BUDGET_S) + 60


@shared_task(
    bind=True,
    name="routing.job_execute",
    acks_late=True,  # a worker that dies mid-job leaves the message to be delivered again
    soft_time_limit=_SOFT_LIMIT,
    time_limit=_SOFT_LIMIT + 30,
    autoretry_for=(OperationalError,),  # the database blinked before the claim: try again later
    retry_backoff=5,
    retry_backoff_max=120,
    max_retries=5,
)
def job_execute(self: Any, job_id: str) -> str:
    # a fresh claimant name per run: a redelivered message must not pass for the run that died
    worker = f"{self.request.hostname or 'eager'}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
    run = job_run(job_id=job_id, worker=worker)
    if run.retry_in_s is not None:
        job_execute.apply_async(args=[job_id], countdown=run.retry_in_s)
    return run.status


@shared_task(name="routing.jobs_requeue_stale", soft_time_limit=50, time_limit=60)
def jobs_requeue_stale_task() -> int:
    """Periodic: enqueue again jobs whose message was lost or whose worker died."""
    return jobs_requeue_stale()
