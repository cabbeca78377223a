# ruff: noqa: F811  (pytest injects the imported celery_worker fixture by parameter name)
"""Retraining and experiment bookkeeping on a real Celery worker (Redis broker, PostgreSQL), not eager."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import transaction

from feedback.learning_tasks import retraining_execute_task
from feedback.models import PredictorVersion, TrainingRun, TrainingRunStatus
from feedback.services.retraining import retraining_request
from routing.models import Experiment
from routing.periodic_tasks import experiment_stats_refresh_task, experiments_refresh_all_task
from routing.services.experiments import experiment_upsert
from routing.services.route import route_decide
from tests.celery_worker import CeleryWorker, celery_worker  # noqa: F401 - the fixture
from tests.conftest import USER_MESSAGE
from tests.factories import make_api_key, make_policy
from tests.feedback.learning import FAST_FIT, make_eval_data

pytestmark = pytest.mark.celery_worker


def _succeeded(worker: CeleryWorker, task: str) -> int:
    return sum(1 for line in worker.output if task in line and "succeeded" in line)


def test_a_worker_runs_the_queued_retraining_once_even_when_delivered_twice(
    catalog: Any, celery_worker: CeleryWorker
) -> None:
    make_eval_data(12)
    with transaction.atomic():
        run = retraining_request(actor="test", trigger="test", params={"fit": FAST_FIT})
    celery_worker.wait_for(
        lambda: TrainingRun.objects.get(pk=run.pk).status not in {"queued", "running"}, timeout=120
    )
    run.refresh_from_db()
    assert run.status == TrainingRunStatus.PROMOTED, run.error
    assert run.challenger is not None and PredictorVersion.objects.get(is_active=True) == run.challenger
    retraining_execute_task.delay(run.pk)  # a duplicate delivery of the same message
    celery_worker.wait_for(lambda: _succeeded(celery_worker, "feedback.retraining_execute") >= 2)
    assert PredictorVersion.objects.count() == 1
    assert TrainingRun.objects.get(pk=run.pk).finished_at == run.finished_at


def test_a_worker_aggregates_experiment_stats_and_a_repeat_changes_nothing(
    catalog: Any, celery_worker: CeleryWorker
) -> None:
    make_policy("cheap", strategy="pre_inference", alpha=0.05)
    experiment = experiment_upsert(
        actor="test", name="alpha-test", policy="default", arms=[{"policy": "default"}, {"policy": "cheap"}]
    )
    key, _ = make_api_key("app")
    for i in range(20):
        route_decide(messages=USER_MESSAGE(f"question {i}"), api_key=key, user=f"user-{i}")
    experiments_refresh_all_task.delay()
    celery_worker.wait_for(lambda: Experiment.objects.get(pk=experiment.pk).stats_updated_at is not None)
    experiment.refresh_from_db()
    assert experiment.stats["total_requests"] == 20
    assert sum(arm["requests"] for arm in experiment.stats["arms"].values()) == 20
    stamp = experiment.stats_updated_at
    experiment_stats_refresh_task.delay(experiment.pk)
    celery_worker.wait_for(lambda: _succeeded(celery_worker, "routing.experiment_stats_refresh") >= 2)
    experiment.refresh_from_db()
    assert experiment.stats_updated_at == stamp  # nothing new to count: the work was not redone
