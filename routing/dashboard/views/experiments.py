from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.views.decorators.http import require_GET, require_POST

from routing.dashboard.roles import DASHBOARDS, WRITE, role_required
from routing.dashboard.selectors import experiment_stats, experiments_with_stats, stored_analysis
from routing.dashboard.views.common import error_response, page
from routing.models import Experiment
from routing.services.experiments import experiment_promote, experiment_stop
from scope_site.errors import ApplicationError


@require_GET
@role_required(DASHBOARDS)
def experiment_list(request: HttpRequest) -> HttpResponse:
    context = {"experiments": experiments_with_stats(), "active": "experiments"}
    template = (
        "dashboard/experiments.html#list" if getattr(request, "htmx", False) else "dashboard/experiments.html"
    )
    return page(request, template, context)


def _after_change(request: HttpRequest, experiment_id: int) -> HttpResponse:
    if not getattr(request, "htmx", False):
        return redirect("dashboard:experiments")
    experiment = Experiment.objects.select_related("policy").get(pk=experiment_id)
    return page(
        request,
        "dashboard/experiments.html#experiment",
        {"e": experiment, "arms": experiment_stats(experiment), "report": stored_analysis(experiment)},
    )


@require_POST
@role_required(WRITE)
def experiment_stop_view(request: HttpRequest, experiment_id: int) -> HttpResponse:
    try:
        experiment_stop(experiment_id=experiment_id, actor=request.user.get_username())
    except ApplicationError as exc:
        return error_response(request, exc)
    return _after_change(request, experiment_id)


@require_POST
@role_required(WRITE)
def experiment_promote_view(request: HttpRequest, experiment_id: int) -> HttpResponse:
    try:
        experiment_promote(
            experiment_id=experiment_id,
            arm=request.POST.get("arm", ""),
            actor=request.user.get_username(),
        )
    except ApplicationError as exc:
        return error_response(request, exc)
    return _after_change(request, experiment_id)
