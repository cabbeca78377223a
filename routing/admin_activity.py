"""Django admin edits of control-plane rows go into the activity log like every other change.

The admin writes rows directly (its forms are the interface), so this mixin hands each save and
delete to the activity-log service. Django runs the change and delete views in a transaction;
bulk deletes get one here, so a change and its record always commit together.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib import admin
from django.db import models, transaction
from django.db.models import QuerySet
from django.http import HttpRequest

from routing.services.control_events import changes, control_event_record, control_upsert_record


def _values(obj: models.Model, names: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    many = {f.name for f in obj._meta.many_to_many}
    for name in names:
        if name in many:  # a user's groups, a group's permissions: the names, in order
            out[name] = sorted(str(o) for o in getattr(obj, name).all()) if obj.pk else []
            continue
        value = getattr(obj, name, None)
        out[name] = str(value) if isinstance(value, models.Model) else value
    return out


class ControlEventAdmin(admin.ModelAdmin):
    """Record `<entity>.create|update|delete` (by the signed-in admin user) for each change."""

    control_entity = ""
    # inline rows recorded too: model class → (entity, how to name a row)
    control_inlines: dict[type[models.Model], tuple[str, Callable[[Any], str]]] = {}

    def control_name(self, obj: Any) -> str:
        return str(obj)

    def control_action(self, obj: Any, changed: dict[str, list[Any]]) -> str | None:
        """A more specific action for an update (e.g. a revocation); None: `<entity>.update`."""
        return None

    def control_fields(self, form: Any, change: bool) -> list[str]:
        """The form fields whose values the event records."""
        return list(form.changed_data) if change else list(form.fields)

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        fields = self.control_fields(form, change)
        before = None
        if change:
            stored = type(obj)._default_manager.filter(pk=obj.pk).first()
            before = _values(stored, fields) if stored is not None else None
        super().save_model(request, obj, form, change)
        # recorded in save_related, once many-to-many fields (a user's groups) are saved too
        obj._control_pending = (fields, before)

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        super().save_related(request, form, formsets, change)
        obj = form.instance
        pending = obj.__dict__.pop("_control_pending", None)
        if pending is None:
            return
        fields, before = pending
        after = _values(obj, fields)
        actor = request.user.get_username()
        name = self.control_name(obj)
        if before is not None:
            diff = changes(before, after)
            action = self.control_action(obj, diff)
            if action is not None:
                control_event_record(
                    actor=actor,
                    action=action,
                    target=f"{self.control_entity}:{name}",
                    detail={"changes": diff, "via": "admin"},
                )
                return
        control_upsert_record(actor=actor, entity=self.control_entity, name=name, before=before, after=after)

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        self._record_delete(request, obj)
        super().delete_model(request, obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        with transaction.atomic():  # the admin's bulk delete action has no transaction of its own
            for obj in queryset:
                self._record_delete(request, obj)
            super().delete_queryset(request, queryset)

    def _record_delete(self, request: HttpRequest, obj: Any) -> None:
        control_event_record(
            actor=request.user.get_username(),
            action=f"{self.control_entity}.delete",
            target=f"{self.control_entity}:{self.control_name(obj)}",
            detail={"via": "admin"},
        )

    def save_formset(self, request: HttpRequest, form: Any, formset: Any, change: bool) -> None:
        super().save_formset(request, form, formset, change)
        if formset.model not in self.control_inlines:
            return
        inline, name = self.control_inlines[formset.model]
        actor = request.user.get_username()
        for obj in formset.new_objects:
            fields = [f.name for f in obj._meta.concrete_fields if f.editable and not f.primary_key]
            control_upsert_record(
                actor=actor, entity=inline, name=name(obj), before=None, after=_values(obj, fields)
            )
        for obj, fields in formset.changed_objects:
            control_event_record(
                actor=actor,
                action=f"{inline}.update",
                target=f"{inline}:{name(obj)}",
                detail={"values": _values(obj, list(fields)), "via": "admin"},
            )
        for obj in formset.deleted_objects:
            control_event_record(
                actor=actor,
                action=f"{inline}.delete",
                target=f"{inline}:{name(obj)}",
                detail={"via": "admin"},
            )
