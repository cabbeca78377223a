from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from routing.services.schedules import SCHEDULES, schedules_ensure
from scope_site.celery import app

pytestmark = pytest.mark.django_db


def test_every_schedule_names_a_registered_task() -> None:
    app.loader.import_default_modules()
    for schedule in SCHEDULES:
        assert schedule.task in app.tasks, schedule.task


def test_ensure_creates_the_periodic_tasks_once_and_keeps_an_operators_edits() -> None:
    assert len(schedules_ensure(actor="test")) == len(SCHEDULES)
    retrain = PeriodicTask.objects.get(task="feedback.retraining_scheduled")
    assert retrain.crontab is not None and retrain.crontab.hour == "3"
    stats = PeriodicTask.objects.get(task="routing.experiments_refresh_all")
    stats.interval, _ = IntervalSchedule.objects.get_or_create(every=60, period=IntervalSchedule.SECONDS)
    stats.enabled = False
    stats.save()
    out = StringIO()
    call_command("ensure_schedules", stdout=out)
    assert "0 created" in out.getvalue()
    stats.refresh_from_db()
    assert stats.interval is not None and stats.interval.every == 60 and not stats.enabled
    assert PeriodicTask.objects.filter(name__startswith="scope: ").count() == len(SCHEDULES)
