"""Django admin edits of users and groups go into the activity log (imported by routing.admin).

A user's groups are its dashboard role (routing.dashboard.roles) and is_staff / is_superuser open
this admin: who changed them is what a reviewer asks first. Passwords are never recorded, only
that one was set (the add form, or the admin's change-password page).
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import GroupAdmin, UserAdmin
from django.contrib.auth.models import Group
from django.db import transaction
from django.http import HttpRequest, HttpResponse

from routing.admin_activity import ControlEventAdmin
from routing.models import ControlAction
from routing.services.control_events import control_event_record

User = get_user_model()
_PASSWORD_FIELDS = {"password", "password1", "password2", "usable_password"}


class ScopeUserAdmin(ControlEventAdmin, UserAdmin):  # type: ignore[misc]  # both are ModelAdmins
    control_entity = "user"

    def control_name(self, obj: Any) -> str:
        return str(obj.get_username())

    def control_fields(self, form: Any, change: bool) -> list[str]:
        return [f for f in super().control_fields(form, change) if f not in _PASSWORD_FIELDS]

    def user_change_password(self, request: HttpRequest, id: str, form_url: str = "") -> HttpResponse:
        # Django's view has no transaction of its own: the new password and its record commit together
        with transaction.atomic():
            request._control_password_view = True  # type: ignore[attr-defined]
            return super().user_change_password(request, id, form_url)

    def log_change(self, request: HttpRequest, obj: Any, message: Any) -> Any:
        if getattr(request, "_control_password_view", False):
            control_event_record(
                actor=request.user.get_username(),
                action=ControlAction.USER_UPDATE,
                target=f"user:{obj.get_username()}",
                detail={"password_set": True, "via": "admin"},
            )
        return super().log_change(request, obj, message)


class ScopeGroupAdmin(ControlEventAdmin, GroupAdmin):  # type: ignore[misc]
    control_entity = "group"


for model, model_admin in ((User, ScopeUserAdmin), (Group, ScopeGroupAdmin)):
    if admin.site.is_registered(model):
        admin.site.unregister(model)
    admin.site.register(model, model_admin)
