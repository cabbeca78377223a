from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import redirect
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from routing.dashboard.decisions import EXPORT_FIELDS, decisions_export_rows
from routing.dashboard.forms import ExplorerForm
from routing.dashboard.roles import READ_ALL, WRITE, role_required
from routing.dashboard.views.common import page
from routing.models import AuditCheckpoint
from routing.services.audit import audit_seal, audit_status, audit_verify_step


@require_GET
@role_required(READ_ALL)
def audit(request: HttpRequest, extra: dict[str, Any] | None = None) -> HttpResponse:
    checkpoints = AuditCheckpoint.objects.order_by("-sequence")[:20]
    today = timezone.now().date()
    context = {
        "status": audit_status(),
        "checkpoints": checkpoints,
        "today": today,
        "active": "audit",
        **(extra or {}),
    }
    return page(request, "dashboard/audit.html", context)


@require_GET
@role_required(READ_ALL)
def audit_verify(request: HttpRequest) -> HttpResponse:
    """One bounded verification step; the partial asks for the next one until done or a mismatch."""
    after = request.GET.get("after", "0")
    rows_so_far = request.GET.get("rows", "0")
    after_seq = int(after) if after.isdigit() else 0
    done_rows = int(rows_so_far) if rows_so_far.isdigit() else 0
    step = audit_verify_step(after_sequence=after_seq)
    context = {"step": step, "rows_total": done_rows + step.rows_checked, "after": step.next_sequence}
    if not getattr(request, "htmx", False):  # without JavaScript: the page, one step further each click
        return audit(request, extra=context)
    return page(request, "dashboard/audit.html#verify", context)


@require_POST
@role_required(WRITE)
def audit_seal_view(request: HttpRequest) -> HttpResponse:
    audit_seal()
    return redirect("dashboard:audit")


EXPORT_FORMATS = ("csv", "jsonl")


class _Echo:
    def write(self, value: str) -> str:
        return value


def _plain(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    return str(value) if not isinstance(value, int | float | str | bool | list | dict | type(None)) else value


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: Any) -> Any:
    """A CSV cell. Text a spreadsheet would run as a formula (a user or metadata value of "=1+2")
    starts with an apostrophe, which spreadsheets show as text (OWASP's CSV injection advice)."""
    if isinstance(value, list | dict):
        return json.dumps(value)
    if value is None:
        return ""
    value = _plain(value)
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def _csv_lines(rows: Iterator[dict[str, Any]]) -> Iterator[str]:
    writer = csv.writer(_Echo())
    yield writer.writerow(EXPORT_FIELDS)
    for row in rows:
        yield writer.writerow([_cell(v) for v in row.values()])


def _jsonl_lines(rows: Iterator[dict[str, Any]]) -> Iterator[str]:
    """One JSON object per row, every hashed field as its hash encoded it (created_at as str() of
    the datetime), so routing.audit.decision_row_hash of a line's hashed fields, in the line's
    hash_format, gives its row_hash."""
    for row in rows:
        line = {k: (str(v) if k == "created_at" else _plain(v)) for k, v in row.items()}
        yield json.dumps(line, ensure_ascii=False) + "\n"


@require_GET
@role_required(READ_ALL)
def export(request: HttpRequest, fmt: str) -> HttpResponseBase:
    if fmt not in EXPORT_FORMATS:
        raise Http404(f"no export format {fmt!r} (csv or jsonl)")
    form = ExplorerForm(request.GET)
    if not form.is_valid():
        said = [
            (f"{field}: " if field != "__all__" else "") + error["message"]
            for field, errors in form.errors.get_json_data().items()
            for error in errors
        ]  # plain text: as_text() would HTML-escape the quotes
        return HttpResponse("invalid filters: " + "; ".join(said), status=400, content_type="text/plain")
    if "after" in request.GET:  # silently exporting every row instead would mislead
        return HttpResponse(
            "the export takes filters only: `after` is a page cursor of the explorer; drop it",
            status=400,
            content_type="text/plain",
        )
    rows = decisions_export_rows(form.filters())
    stamp = timezone.now().strftime("%Y%m%dT%H%M%SZ")
    if fmt == "csv":
        response = StreamingHttpResponse(_csv_lines(rows), content_type="text/csv; charset=utf-8")
    else:
        response = StreamingHttpResponse(_jsonl_lines(rows), content_type="application/x-ndjson")
    response["Content-Disposition"] = f'attachment; filename="scope-decisions-{stamp}.{fmt}"'
    return response
