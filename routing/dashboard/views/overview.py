from __future__ import annotations

from datetime import datetime, timedelta

from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.views.decorators.http import require_GET

from routing.dashboard.overview import RANGES, overview_data
from routing.dashboard.roles import DASHBOARDS, role_required
from routing.dashboard.views.common import page


def _range(request: HttpRequest) -> tuple[str, datetime, datetime]:
    now = timezone.now()
    name = request.GET.get("range", "24h")
    if name == "custom":
        start = parse_datetime(request.GET.get("start", "") or "")
        end = parse_datetime(request.GET.get("end", "") or "")
        if start and end:
            start = start if timezone.is_aware(start) else timezone.make_aware(start)
            end = end if timezone.is_aware(end) else timezone.make_aware(end)
            if start < end and end - start <= timedelta(days=400):
                return name, start, end
        name = "24h"
    if name not in RANGES:
        name = "24h"
    return name, now - RANGES[name], now


@require_GET
@role_required(DASHBOARDS)
def overview(request: HttpRequest) -> HttpResponse:
    name, start, end = _range(request)
    data = overview_data(start=start, end=end)
    template = (
        "dashboard/overview.html#content" if getattr(request, "htmx", False) else "dashboard/overview.html"
    )
    return page(
        request, template, {"data": data, "range": name, "ranges": list(RANGES), "active": "overview"}
    )
