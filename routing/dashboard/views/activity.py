from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET

from routing.activity import PAGE_SIZE, ActivityFilters, activity_page
from routing.dashboard.activity_form import ActivityForm
from routing.dashboard.roles import READ_ALL, role_required
from routing.dashboard.views.common import error_response, page
from scope_site.errors import ApplicationError, json_error
from scope_site.renderers import api_time


@require_GET
@role_required(READ_ALL)
def activity(request: HttpRequest) -> HttpResponse:
    """Who changed the control plane: newest first, filtered, keyset-paginated."""
    form = ActivityForm(request.GET or None)
    if request.GET and not form.is_valid():
        context = {"form": form, "rows": [], "active": "activity"}
        return page(request, "dashboard/activity.html", context, status=400)
    filters = form.filters() if form.is_bound else ActivityFilters()
    after = form.cleaned_data.get("after", "") if form.is_bound else ""
    try:
        rows, next_cursor = activity_page(filters=filters, after=after)
    except ApplicationError as exc:
        return error_response(request, exc)
    context = {
        "form": form,
        "rows": rows,
        "next_cursor": next_cursor,
        "query": filters.as_query(),
        "first_page": not after,
        "active": "activity",
    }
    htmx = getattr(request, "htmx", False)
    return page(request, "dashboard/activity.html#results" if htmx else "dashboard/activity.html", context)


@require_GET
@role_required(READ_ALL)
def activity_json(request: HttpRequest) -> JsonResponse:
    """The same events as JSON for auditors' tools (signed in like the page; API keys are apps')."""
    form = ActivityForm(request.GET)
    if not form.is_valid():
        return json_error(400, "invalid_request", form.error_message())
    data = form.cleaned_data
    try:
        rows, next_cursor = activity_page(
            filters=form.filters(), after=data.get("after") or "", limit=data.get("limit") or PAGE_SIZE
        )
    except ApplicationError as exc:
        return json_error(exc.http_status, exc.code, exc.message)
    results = [
        {
            "id": e.pk,
            "created_at": api_time(e.created_at),
            "actor": e.actor,
            "action": e.action,
            "target": e.target,
            "detail": e.detail,
        }
        for e in rows
    ]
    return JsonResponse({"results": results, "next": next_cursor})
