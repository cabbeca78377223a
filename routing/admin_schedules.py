"""Django admin edits of the periodic tasks (django-celery-beat) go into the activity log
(imported by routing.admin).

The schedule decides when retraining, audit sealing, pacing and the stale-job sweep run, so
disabling a task or changing its interval is a control-plane change. The library's bulk actions
(enable, disable, toggle) write with one UPDATE; here each changed task is recorded as well, in the
same transaction. Running a task from the admin is not recorded: what the task changes records
itself.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest
from django_celery_beat import admin as beat_admin
from django_celery_beat.models import (
    ClockedSchedule,
    CrontabSchedule,
    IntervalSchedule,
    PeriodicTask,
    SolarSchedule,
)

from routing.admin_activity import ControlEventAdmin
from routing.models import ControlAction
from routing.services.control_events import control_event_record


class ScopePeriodicTaskAdmin(ControlEventAdmin, beat_admin.PeriodicTaskAdmin):  # type: ignore[misc]
    control_entity = "schedule"

    def control_name(self, obj: Any) -> str:
        return str(obj.name)

    def _record_enabled(self, request: HttpRequest, queryset: QuerySet[Any], bulk: Any) -> None:
        with transaction.atomic():
            before = dict(queryset.select_for_update().values_list("pk", "enabled"))
            bulk(request, queryset)
            after = dict(PeriodicTask.objects.filter(pk__in=before).values_list("pk", "enabled"))
            for task in PeriodicTask.objects.filter(pk__in=before).order_by("name"):
                if before[task.pk] != after[task.pk]:
                    control_event_record(
                        actor=request.user.get_username(),
                        action=ControlAction.SCHEDULE_UPDATE,
                        target=f"schedule:{task.name}",
                        detail={"changes": {"enabled": [before[task.pk], after[task.pk]]}, "via": "admin"},
                    )

    @admin.action(description="Enable selected tasks")
    def enable_tasks(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        self._record_enabled(request, queryset, super().enable_tasks)

    @admin.action(description="Disable selected tasks")
    def disable_tasks(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        self._record_enabled(request, queryset, super().disable_tasks)

    @admin.action(description="Toggle activity of selected tasks")
    def toggle_tasks(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        self._record_enabled(request, queryset, super().toggle_tasks)


class ScopeScheduleTimingAdmin(ControlEventAdmin):
    """Intervals, crontabs, solar events and clocked times: one edit reschedules every task using it."""

    control_entity = "schedule_timing"

    def control_name(self, obj: Any) -> str:
        return f"{obj._meta.model_name}:{obj.pk}"


_TIMINGS = (
    (IntervalSchedule, beat_admin.IntervalScheduleAdmin),
    (CrontabSchedule, beat_admin.CrontabScheduleAdmin),
    (SolarSchedule, beat_admin.SolarScheduleAdmin),
    (ClockedSchedule, beat_admin.ClockedScheduleAdmin),
)
admin.site.unregister(PeriodicTask)
admin.site.register(PeriodicTask, ScopePeriodicTaskAdmin)
for model, library_admin in _TIMINGS:
    admin.site.unregister(model)
    admin.site.register(model, type(library_admin.__name__, (ScopeScheduleTimingAdmin, library_admin), {}))
