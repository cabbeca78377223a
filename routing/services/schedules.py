"""The periodic tasks of SCOPE's control loops, as django-celery-beat rows the admin can edit.

`schedules_ensure` creates a missing entry and leaves an existing one alone, so an operator's
edits in the admin (interval, crontab, enabled, arguments) survive every deploy and re-seed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import transaction
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask

from routing.models import ControlAction
from routing.services.control_events import control_event_record


@dataclass(frozen=True, slots=True)
class Schedule:
    name: str
    task: str
    description: str
    every_seconds: int | None = None
    crontab: dict[str, str] = field(default_factory=dict)  # minute, hour, day_of_week, …


SCHEDULES = (
    Schedule("scope: experiment statistics", "routing.experiments_refresh_all",
             "Per-arm statistics with 95% intervals and tests for running experiments", every_seconds=300),
    Schedule("scope: budget pacing", "routing.pacing_run_all",
             "Adjust α of policies with a spend target", every_seconds=600),
    Schedule("scope: predictor retraining", "feedback.retraining_scheduled",
             "Train a challenger on feedback + imported data; promote it only if better",
             crontab={"minute": "0", "hour": "3"}),
    Schedule("scope: shadow comparison", "feedback.shadow_summary_refresh",
             "Compare the shadow predictor with the champion on decisions with feedback", every_seconds=900),
    Schedule("scope: exploration graduation", "feedback.calibration_graduate",
             "Lift the exploration cap of new models with enough live outcomes", every_seconds=900),
    Schedule("scope: audit seal", "routing.audit_seal",
             "Seal new decision rows into the audit hash chain", every_seconds=settings.SCOPE_AUDIT_SEAL_S),
    Schedule("scope: dashboard rollup", "routing.rollup_catch_up",
             "Fold new decisions, outcomes and feedback into the overview's hourly rollup",
             every_seconds=settings.SCOPE_ROLLUP_S),
    Schedule("scope: requeue stale jobs", "routing.jobs_requeue_stale",
             "Enqueue again async jobs whose message was lost or whose worker died", every_seconds=60),
)  # fmt: skip


def _schedule_fields(schedule: Schedule) -> dict[str, Any]:
    if schedule.every_seconds is not None:
        interval, _ = IntervalSchedule.objects.get_or_create(
            every=schedule.every_seconds, period=IntervalSchedule.SECONDS
        )
        return {"interval": interval}
    crontab, _ = CrontabSchedule.objects.get_or_create(
        minute=schedule.crontab.get("minute", "*"),
        hour=schedule.crontab.get("hour", "*"),
        day_of_week=schedule.crontab.get("day_of_week", "*"),
        day_of_month=schedule.crontab.get("day_of_month", "*"),
        month_of_year=schedule.crontab.get("month_of_year", "*"),
        timezone="UTC",
    )
    return {"crontab": crontab}


def schedules_ensure(*, actor: str) -> list[str]:
    """Create the missing periodic tasks; returns the names created."""
    created: list[str] = []
    with transaction.atomic():
        for schedule in SCHEDULES:
            if PeriodicTask.objects.filter(name=schedule.name).exists():
                continue
            fields = _schedule_fields(schedule)
            PeriodicTask.objects.create(
                name=schedule.name,
                task=schedule.task,
                description=schedule.description,
                kwargs=json.dumps({}),
                **fields,
            )
            created.append(schedule.name)
            control_event_record(
                actor=actor,
                action=ControlAction.SCHEDULE_CREATE,
                target=f"schedule:{schedule.name}",
                detail={"task": schedule.task, **{k: str(v) for k, v in fields.items()}},
            )
    return created
