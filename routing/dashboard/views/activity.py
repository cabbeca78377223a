from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET

from routing.activity import ActivityFilters, activity_page
from routing.dashboard.activity_form import ActivityForm
from routing.dashboard.roles import READ_ALL, role_required
from routing.dashboard.views.common import error_response, page
from scope_site.errors import ApplicationError


@require_GET
@role_required(READ_ALL)
def activity(request: HttpRequest) -> HttpResponse:
    """Who changed the control plane: newest first, filtered, keyset-paginated."""
    form = ActivityForm(request.GET or None)
    if request.GET and not form.is_valid():
        return page(
            request, "dashboard/activity.html", {"form": form, "rows": [], "active": "activity"}, status=400
        )
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
