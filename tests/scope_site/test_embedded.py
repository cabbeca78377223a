"""The embedded default (`make run`): periodic tasks run in a thread of the server process."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from routing.models import AuditCheckpoint
from routing.services.route import route_decide
from routing.services.schedules import schedules_ensure
from scope_site.celery import app
from scope_site.embedded import periodic_tasks_start
from tests.conftest import USER_MESSAGE


@pytest.fixture
def eager() -> Iterator[None]:
    """What the embedded default has (no REDIS_URL): tasks run in the caller."""
    before = app.conf.task_always_eager
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = before


@pytest.mark.django_db(transaction=True)
def test_the_embedded_server_seals_the_audit_log_on_its_own(catalog: Any, eager: None) -> None:
    schedules_ensure(actor="test")
    every_second, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.SECONDS)
    PeriodicTask.objects.filter(name="scope: audit seal").update(interval=every_second)
    for i in range(3):
        route_decide(messages=USER_MESSAGE(f"question {i}"), api_key=None)
    thread = periodic_tasks_start()
    assert thread is not None
    # rows are sealed once older than SEAL_LAG: on a loaded host the three decisions can be written
    # seconds apart and land in more than one checkpoint, so wait for all of them, not the first
    try:
        deadline = time.monotonic() + 30
        while _sealed_rows() < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        thread.stop()
    assert not thread.is_alive()
    assert _sealed_rows() == 3


def _sealed_rows() -> int:
    return sum(AuditCheckpoint.objects.values_list("row_count", flat=True))


def test_with_a_broker_the_server_leaves_periodic_tasks_to_beat() -> None:
    before = app.conf.task_always_eager
    app.conf.task_always_eager = False
    try:
        assert periodic_tasks_start() is None
    finally:
        app.conf.task_always_eager = before
