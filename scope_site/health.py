from __future__ import annotations

import time

from django.core.cache import cache
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET


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


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    database = _check_database()
    cache_state = _check_cache()
    status = "ok" if database["ok"] and cache_state["ok"] else ("degraded" if database["ok"] else "down")
    return JsonResponse(
        {"status": status, "checks": {"database": database, "cache": cache_state}},
        status=200 if database["ok"] else 503,
    )
