"""Before/after, in process, of each change made to the route path's cost (CPU per operation).

Each pair runs the old way and the new way alternately for several rounds on the same database
and prints medians of client CPU (and PostgreSQL backend CPU for the write):

  write   ORM save() in atomic(durable=True)  vs  one prepared INSERT in autocommit
  input   RouteInputSerializer.is_valid()     vs  route_input_validate() (fast path)
  auth    DB lookup per request               vs  key row remembered per process (TTL)
  cache   Django's RedisCache get()           vs  scope_site.cache.RedisCache get()

    DATABASE_URL=postgres://… REDIS_URL=redis://… .venv/bin/python bench/route_path_ab.py
"""

from __future__ import annotations

import copy
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import DEFAULT_DATABASE_URL, DEFAULT_REDIS_URL, _proc_stat, chat_body, say  # noqa: E402


def backend_cpu(pid: int | None) -> float:
    stat = _proc_stat(pid) if pid else None
    return stat[1] if stat else 0.0


def cpu_per_op(fn: Callable[[], Any], runs: int, backend_pid: int | None = None) -> tuple[float, float]:
    for _ in range(20):
        fn()
    backend = backend_cpu(backend_pid)
    started = time.process_time()
    for _ in range(runs):
        fn()
    client = (time.process_time() - started) / runs * 1000
    server = (backend_cpu(backend_pid) - backend) / runs * 1000
    return client, server


def compare(
    name: str,
    old: Callable[[], Any],
    new: Callable[[], Any],
    *,
    runs: int,
    rounds: int = 5,
    backend_pid: int | None = None,
) -> None:
    results: dict[str, list[tuple[float, float]]] = {"before": [], "after": []}
    for _ in range(rounds):
        results["before"].append(cpu_per_op(old, runs, backend_pid))
        results["after"].append(cpu_per_op(new, runs, backend_pid))
    parts = []
    for label, samples in results.items():
        client = statistics.median(s[0] for s in samples)
        text = f"{label} {client:.3f} ms"
        if backend_pid:
            text += f" (+ PostgreSQL {statistics.median(s[1] for s in samples):.3f} ms)"
        parts.append(text)
    say(f"{name:<6} " + "  →  ".join(parts))


def main() -> int:
    os.environ.setdefault("DATABASE_URL", DEFAULT_DATABASE_URL)
    os.environ.setdefault("REDIS_URL", DEFAULT_REDIS_URL)
    os.environ["DJANGO_SETTINGS_MODULE"] = "scope_site.settings"
    import django

    django.setup()
    from django.core.cache.backends.redis import RedisCache as DjangoRedisCache
    from django.db import connection, transaction
    from django.test import override_settings
    from rest_framework.request import Request
    from rest_framework.test import APIRequestFactory

    from routing.auth import BearerApiKeyAuthentication, api_key_cache_clear
    from routing.route_input import route_input_validate
    from routing.serializers import RouteInputSerializer
    from routing.services.api_keys import api_key_create
    from routing.services.decision_copy import decision_copy_line
    from routing.services.decision_log import _insert_durably, time_ordered_uuid
    from routing.services.route import route_decide
    from scope_site.cache import RedisCache

    say(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; client CPU per operation, medians")
    api_key, key = api_key_create(actor="cli:bench", name=f"bench-ab-{int(time.time())}")
    body = json.loads(chat_body())
    template = route_decide(messages=body["messages"], api_key=api_key, user="bench-ab").row
    connection.ensure_connection()
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        backend_pid = int(cursor.fetchone()[0])

    def fresh_row() -> Any:
        row = copy.copy(template)
        row.id = time_ordered_uuid()
        return row

    def own_write() -> None:
        row = fresh_row()
        _insert_durably(row, lambda: decision_copy_line(row))

    def orm_write() -> None:
        with transaction.atomic(durable=True):
            fresh_row().save(force_insert=True)

    compare("write", orm_write, own_write, runs=300, backend_pid=backend_pid)

    def serializer() -> None:
        RouteInputSerializer(data=body).is_valid(raise_exception=True)

    compare("input", serializer, lambda: route_input_validate(body), runs=1000)

    request = APIRequestFactory().post("/api/v1/route", HTTP_AUTHORIZATION=f"Bearer {key}")
    auth = BearerApiKeyAuthentication()
    with override_settings(SCOPE_API_KEY_CACHE_SECONDS=0):
        api_key_cache_clear()
        uncached = cpu_per_op(lambda: auth.authenticate(Request(request)), 1000, backend_pid)
    cached = cpu_per_op(lambda: auth.authenticate(Request(request)), 1000, backend_pid)
    say(
        f"auth   before {uncached[0]:.3f} ms (+ PostgreSQL {uncached[1]:.3f} ms)  →  after {cached[0]:.3f} ms "
        f"(+ PostgreSQL {cached[1]:.3f} ms)"
    )

    url = os.environ["REDIS_URL"]
    stock, reusing = DjangoRedisCache(url, {}), RedisCache(url, {})
    stock.set("bench-ab", 1, 60)
    compare("cache", lambda: stock.get("bench-ab"), lambda: reusing.get("bench-ab"), runs=2000)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
