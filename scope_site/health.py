from __future__ import annotations

import time

from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

from routing.services.decision_writer import writer_reachable


def _check_database() -> dict[str, object]:
    started = time.perf_counter()
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:  # any driver error means "down"; the message says which
        return {"ok": False, "error": exc.__class__.__name__}
    return {"ok": True, "ms": round((time.perf_counter() - started) * 1000, 2)}


def _check_cache() -> dict[str, object]:
    try:
        cache.set("healthz:ping", "1", 5)
        ok = cache.get("healthz:ping") == "1"
    except Exception as exc:  # Redis down: routing goes on, degraded
        return {"ok": False, "degraded": True, "error": exc.__class__.__name__}
    return {"ok": ok}


def _check_decision_writer() -> dict[str, object] | None:
    """The group-commit writer, where one is configured; without it workers write rows themselves."""
    path = settings.SCOPE_DECISION_WRITER_SOCKET
    if not path:
        return None
    error = writer_reachable(path)
    if error is not None:
        return {"ok": False, "degraded": True, "error": error, "fallback": "workers commit their own rows"}
    return {"ok": True}


def _check_default_policy() -> dict[str, object]:
    """SCOPE_DEFAULT_POLICY names a policy: else every request without one (scope/auto) is a 404."""
    from routing.models import RoutingPolicy

    slug = settings.SCOPE_DEFAULT_POLICY
    if RoutingPolicy.objects.filter(slug=slug, current__isnull=False).exists():
        return {"ok": True, "slug": slug}
    return {
        "ok": False,
        "degraded": True,
        "error": f"SCOPE_DEFAULT_POLICY names {slug!r}, which has no published version: "
        "requests that name no policy get a 404 (load_catalog or seed_demo creates it)",
    }


def _acceleration() -> dict[str, list[str]]:
    """Informational, not a check: which parts of routing this process runs compiled (each worker
    answers for itself). A part under `numpy` gives the same results, slower; the log says why."""
    from routing.predictor.registry import acceleration

    parts = acceleration()
    return {
        "compiled": [name for name, on in parts.items() if on],
        "numpy": [name for name, on in parts.items() if not on],
    }


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    database = _check_database()
    checks = {"database": database, "cache": _check_cache()}
    if database["ok"]:
        checks["default_policy"] = _check_default_policy()
    writer = _check_decision_writer()
    if writer is not None:
        checks["decision_writer"] = writer
    healthy = all(check["ok"] for check in checks.values())
    status = "ok" if healthy else ("degraded" if database["ok"] else "down")
    return JsonResponse(
        {"status": status, "checks": checks, "acceleration": _acceleration()},
        status=200 if database["ok"] else 503,
    )
