from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.views.decorators.http import require_GET, require_POST

from routing.dashboard.roles import DASHBOARDS, WRITE, role_required
from routing.dashboard.selectors import catalog_rows
from routing.dashboard.services import llm_model_set_enabled
from routing.dashboard.views.common import error_response, page
from scope_site.errors import ApplicationError, InvalidRequest


@require_GET
@role_required(DASHBOARDS)
def providers(request: HttpRequest) -> HttpResponse:
    return page(request, "dashboard/providers.html", {"rows": catalog_rows(), "active": "providers"})


@require_POST
@role_required(WRITE)
def model_toggle(request: HttpRequest, model_id: int) -> HttpResponse:
    wanted = request.POST.get("enabled")
    try:
        if wanted not in ("0", "1"):  # a typo must not disable a model
            raise InvalidRequest("enabled: must be 1 (enable) or 0 (disable)")
        llm_model_set_enabled(model_id=model_id, enabled=wanted == "1", actor=request.user.get_username())
    except ApplicationError as exc:
        return error_response(request, exc)
    if not getattr(request, "htmx", False):
        return redirect("dashboard:providers")
    row = next(r for r in catalog_rows() if r.model.pk == model_id)
    return page(request, "dashboard/providers.html#model-row", {"r": row})
