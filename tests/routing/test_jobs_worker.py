"""Async jobs on a real Celery worker with the Redis broker (not eager), including a worker crash."""

from __future__ import annotations

from typing import Any

import pytest

from providers.models import LLMModel
from routing.models import DecisionLog, Job
from tests import celery_worker as worker_fixtures
from tests.celery_worker import CeleryWorker, run_celery_worker
from tests.conftest import USER_MESSAGE

celery_worker = worker_fixtures.celery_worker  # the real-worker fixture
pytestmark = [pytest.mark.celery_worker, pytest.mark.django_db(transaction=True)]
BODY = {"model": "scope/auto", "messages": USER_MESSAGE("Name three prime numbers.")}


def _status(job_id: str) -> str:
    return Job.objects.get(pk=job_id).status


def test_jobs_run_on_a_real_worker_and_a_repeated_key_runs_once(
    api: Any, celery_worker: CeleryWorker
) -> None:
    first = api("/api/v1/jobs", BODY, HTTP_IDEMPOTENCY_KEY="batch-7").json()["id"]
    repeat = api("/api/v1/jobs", BODY, HTTP_IDEMPOTENCY_KEY="batch-7").json()["id"]
    other = api("/api/v1/jobs", BODY).json()["id"]
    assert first == repeat
    celery_worker.wait_for(lambda: _status(first) == "succeeded" and _status(other) == "succeeded")
    job = Job.objects.get(pk=first)
    assert job.attempts == 1 and job.result is not None and job.result["object"] == "chat.completion"
    assert job.claimed_by.startswith("scope-test-")
    assert DecisionLog.objects.filter(kind="job").count() == 2


def test_a_job_survives_its_worker_being_killed_mid_call(api: Any) -> None:
    # the first worker runs the simulation in real time: the call takes 30 s, so it is mid-call
    LLMModel.objects.update(sim_profile={"latency_ms": 30_000, "tokens_per_s": 1000})
    fast_recovery = {
        "SCOPE_BROKER_VISIBILITY_TIMEOUT_S": "2",  # the unacked message comes back after 2 s
        "SCOPE_BROKER_RESTORE_INTERVAL_S": "1",
        "SCOPE_JOB_STALE_AFTER_S": "2",  # and the running job may be claimed again
    }
    with run_celery_worker(env={**fast_recovery, "SCOPE_SIMULATED_SPEEDUP": "1"}) as doomed:
        job_id = api("/api/v1/jobs", BODY).json()["id"]
        doomed.wait_for(lambda: _status(job_id) == "running")
        doomed.kill()  # kill -9: no ack, no cleanup, the job row says "running"
    assert _status(job_id) == "running"
    with run_celery_worker(env={**fast_recovery, "SCOPE_SIMULATED_SPEEDUP": "1000"}) as survivor:
        survivor.wait_for(lambda: _status(job_id) == "succeeded", timeout=45)
    job = Job.objects.get(pk=job_id)
    assert job.attempts == 2 and job.result is not None
    # the answer is the survivor's; the killed attempt may or may not have logged its decision yet
    assert job.decision_id is not None
    assert DecisionLog.objects.filter(kind="job", pk=job.decision_id).exists()
    assert DecisionLog.objects.filter(kind="job").count() in {1, 2}
