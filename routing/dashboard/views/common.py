"""What every dashboard view shares: the typed request, the page context, error rendering."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django_htmx.http import reswap
from django_htmx.middleware import HtmxDetails

from routing.dashboard.roles import DASHBOARDS, READ_ALL, WRITE, Role, user_role
from scope_site.errors import ApplicationError

NAV = (
    ("overview", "Overview", DASHBOARDS),
    ("providers", "Providers & models", DASHBOARDS),
    ("policies", "Policies", READ_ALL),
    ("experiments", "Experiments", DASHBOARDS),
    ("predictor", "Predictor", DASHBOARDS),
    ("decisions", "Decisions", READ_ALL),
    ("audit", "Audit", READ_ALL),
    ("activity", "Activity", READ_ALL),
)


class HtmxHttpRequest(HttpRequest):
    htmx: HtmxDetails


def page(request: HttpRequest, template: str, context: dict[str, Any], *, status: int = 200) -> HttpResponse:
    role = user_role(request.user)
    context = {
        "role": role,
        "can_write": role in WRITE,
        "can_read_all": role in READ_ALL,
        "nav": [(name, label) for name, label, roles in NAV if role in roles],
        **context,
    }
    return render(request, template, context, status=status)


def error_response(request: HttpRequest, exc: ApplicationError) -> HttpResponse:
    """A domain error as a small HTML fragment (HTMX swaps it in) with the error's status."""
    response = render(request, "dashboard/error.html", {"error": exc}, status=exc.http_status)
    return reswap(response, "innerHTML") if getattr(request, "htmx", False) else response


def operator(role: Role | None) -> bool:
    return role is Role.OPERATOR
