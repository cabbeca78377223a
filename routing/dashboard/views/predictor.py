from __future__ import annotations

import importlib
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST
from django_htmx.http import HttpResponseClientRedirect

from feedback.models import TrainingRun
from feedback.services.registry import predictor_version_activate
from routing.dashboard.roles import DASHBOARDS, WRITE, role_required
from routing.dashboard.selectors import predictor_page
from routing.dashboard.views.common import error_response, page
from scope_site.errors import ApplicationError, ServiceUnavailable


def _retrain_service() -> Any:
    """The retraining service of the feedback app (absent in a build without it)."""
    try:
        retraining = importlib.import_module("feedback.services.retraining")
    except ImportError:
        return None
    return getattr(retraining, "retraining_request", None)


@require_GET
@role_required(DASHBOARDS)
def predictor(request: HttpRequest) -> HttpResponse:
    data = predictor_page(version_name=request.GET.get("version", ""))
    context = {"data": data, "active": "predictor", "retrain_available": _retrain_service() is not None}
    return page(request, "dashboard/predictor.html", context)


@require_POST
@role_required(WRITE)
def retrain(request: HttpRequest) -> HttpResponse:
    start = _retrain_service()
    try:
        if start is None:
            raise ServiceUnavailable(
                "retraining is not available in this build", code="retraining_unavailable"
            )
        run = start(trigger="manual", actor=request.user.get_username())
    except ApplicationError as exc:
        return error_response(request, exc)
    if not getattr(request, "htmx", False):
        return redirect("dashboard:predictor")
    return page(request, "dashboard/predictor.html#run", {"run": run})


@require_POST
@role_required(WRITE)
def activate(request: HttpRequest, version_id: int) -> HttpResponse:
    """Make a stored version the active predictor: promote the shadow, or roll back."""
    try:
        version = predictor_version_activate(version_id=version_id, actor=request.user.get_username())
    except ApplicationError as exc:
        return error_response(request, exc)
    target = f"{reverse('dashboard:predictor')}?version={version.name}"
    return HttpResponseClientRedirect(target) if getattr(request, "htmx", False) else redirect(target)


@require_GET
@role_required(DASHBOARDS)
def training_run(request: HttpRequest, run_id: int) -> HttpResponse:
    run = get_object_or_404(TrainingRun, pk=run_id)
    return page(request, "dashboard/predictor.html#run", {"run": run})
