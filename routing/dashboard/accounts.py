"""Web UI accounts: a user with exactly one role group."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.db import transaction

from routing.dashboard.roles import ROLE_ORDER, Role
from routing.models import ControlAction
from routing.services.control_events import control_event_record
from scope_site.errors import InvalidRequest


def user_create_or_update(
    *, username: str, role: Role, password: str, email: str = "", actor: str
) -> tuple[Any, bool]:
    """Create the user or reset its password and role; the user ends up in exactly one role group."""
    if not username.strip():
        raise InvalidRequest("username: required")
    User = get_user_model()
    candidate = User(username=username, email=email)
    try:
        validate_password(password, candidate)
    except ValidationError as exc:
        raise InvalidRequest("password: " + " ".join(exc.messages)) from None
    with transaction.atomic():
        user, created = User.objects.get_or_create(username=username, defaults={"email": email})
        user.set_password(password)
        if email:
            user.email = email
        user.is_active = True
        user.save()
        group, _ = Group.objects.get_or_create(name=role.value)
        user.groups.remove(*Group.objects.filter(name__in=[r.value for r in ROLE_ORDER]).exclude(pk=group.pk))
        user.groups.add(group)
        # the password is never recorded, only that it was set
        control_event_record(
            actor=actor,
            action=ControlAction.USER_SAVE,
            target=f"user:{username}",
            detail={"created": created, "role": role.value, "password_set": True},
        )
    return user, created
