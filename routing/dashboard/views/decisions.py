from __future__ import annotations

from urllib.parse import urlencode

from django.http import Http404, HttpRequest, HttpResponse
from django.views.decorators.http import require_GET

from routing.dashboard.decisions import DecisionFilters, decision_detail, decisions_page
from routing.dashboard.forms import ExplorerForm
from routing.dashboard.roles import READ_ALL, role_required
from routing.dashboard.views.common import error_response, page
from scope_site.errors import ApplicationError, NotFound


@require_GET
@role_required(READ_ALL)
def explorer(request: HttpRequest) -> HttpResponse:
    form = ExplorerForm(request.GET or None)
    if request.GET and not form.is_valid():
        return page(
            request, "dashboard/decisions.html", {"form": form, "rows": [], "active": "decisions"}, status=400
        )
    filters = form.filters() if form.is_bound else DecisionFilters()
    query = filters.as_query()
    after = form.cleaned_data.get("after", "") if form.is_bound else ""
    try:
        rows, next_cursor = decisions_page(filters=filters, after=after)
    except ApplicationError as exc:
        return error_response(request, exc)
    context = {
        "form": form,
        "rows": rows,
        "next_cursor": next_cursor,
        "query": query,
        # the export takes every row the filters match, not this page's position (`after`)
        "export_query": urlencode(query),
        "first_page": not after,
        "active": "decisions",
    }
    template = (
        "dashboard/decisions.html#results" if getattr(request, "htmx", False) else "dashboard/decisions.html"
    )
    return page(request, template, context)


@require_GET
@role_required(READ_ALL)
def decision(request: HttpRequest, decision_id: str) -> HttpResponse:
    try:
        detail = decision_detail(decision_id=decision_id)
    except NotFound:
        raise Http404(decision_id) from None
    return page(request, "dashboard/decision.html", {"d": detail, "active": "decisions"})
