"""Roles of the web UI, enforced on the server by a decorator on every view.

operator: reads and changes everything. auditor: reads everything, exports, verifies the audit
chain; never writes. viewer: the dashboards only (overview, providers, experiments, predictor).
A superuser counts as an operator. Users without one of these groups see nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from functools import wraps
from typing import Any, TypeVar

from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest
from django.http.response import HttpResponseBase
from django_htmx.http import HttpResponseClientRedirect

from scope_site.errors import handler403


class Role(StrEnum):
    OPERATOR = "operator"
    AUDITOR = "auditor"
    VIEWER = "viewer"


ROLE_ORDER = (Role.OPERATOR, Role.AUDITOR, Role.VIEWER)
DASHBOARDS = frozenset(ROLE_ORDER)  # overview, providers, experiments, predictor
READ_ALL = frozenset({Role.OPERATOR, Role.AUDITOR})  # policies, decisions, audit, export, replay
WRITE = frozenset({Role.OPERATOR})  # every change

_CACHE_ATTR = "_scope_role"


def user_role(user: Any) -> Role | None:
    if user is None or not user.is_authenticated or not user.is_active:
        return None
    if hasattr(user, _CACHE_ATTR):
        cached: Role | None = getattr(user, _CACHE_ATTR)
        return cached
    role: Role | None
    if user.is_superuser:
        role = Role.OPERATOR
    else:
        names = set(user.groups.values_list("name", flat=True))
        role = next((r for r in ROLE_ORDER if r.value in names), None)
    setattr(user, _CACHE_ATTR, role)
    return role


F = TypeVar("F", bound=Callable[..., HttpResponseBase])


def role_required(allowed: frozenset[Role]) -> Callable[[F], F]:
    """Anonymous → login page (an HTMX request gets a client redirect); wrong role → 403."""

    def decorator(view: F) -> F:
        @wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
            if not request.user.is_authenticated:
                if getattr(request, "htmx", False):
                    return HttpResponseClientRedirect(f"/login/?next={request.get_full_path()}")
                return redirect_to_login(request.get_full_path())
            role = user_role(request.user)
            if role not in allowed:
                # answered here, not raised: Django logs a raised PermissionDenied with a traceback
                denied = PermissionDenied(f"your role ({role or 'none'!s}) may not use this page")
                return handler403(request, denied)
            return view(request, *args, **kwargs)

        wrapper.scope_roles = allowed  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorator
