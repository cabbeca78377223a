"""A no-op API endpoint for the overhead benchmark: the route path's stack without the routing.

Same middleware, same API-key authentication, same JSON parsing and rendering as
POST /api/v1/route, but no features, no predictor, no decision and no database write. Mounted
only when SCOPE_ENABLE_NOOP_ENDPOINT is true (bench/overhead.py sets it); never in production.

POST /api/v1/noop-insert is the no-op plus one durable INSERT of a small row (a table of its own,
created on its first call): the single-INSERT floor of the benchmark's issue, measured on the
machine at hand. Its INSERT is one statement on Django's connection in autocommit mode, committed
(WAL flushed) before the answer; the ORM's Model.objects.create would add its own Python on top,
so this floor is if anything the higher one.
"""

from __future__ import annotations

import os

from django.db import connection
from django.urls import URLPattern, path
from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView


class NoopApi(APIView):
    """Authenticate, parse the JSON body, answer a small JSON document."""

    @extend_schema(exclude=True)
    def post(self, request: Request) -> Response:
        body = request.data
        messages = body.get("messages") if isinstance(body, dict) else None
        return Response({"ok": True, "messages": len(messages) if isinstance(messages, list) else 0})


FLOOR_TABLE = "scope_bench_noop_insert"


def _floor_table_sql() -> str:
    ident = "id bigserial PRIMARY KEY" if connection.vendor == "postgresql" else "id integer PRIMARY KEY"
    return (
        f"CREATE TABLE IF NOT EXISTS {FLOOR_TABLE} "
        f"({ident}, created_at timestamp with time zone NOT NULL, messages integer NOT NULL)"
    )


_floor_table_in: int = 0  # the pid of the process that created (or found) the table


class NoopInsertApi(NoopApi):
    """The no-op, plus one committed INSERT of a small row before it answers."""

    @extend_schema(exclude=True)
    def post(self, request: Request) -> Response:
        global _floor_table_in
        response = super().post(request)
        with connection.cursor() as cursor:
            if _floor_table_in != os.getpid():
                cursor.execute(_floor_table_sql())
                _floor_table_in = os.getpid()
            cursor.execute(
                f"INSERT INTO {FLOOR_TABLE} (created_at, messages) VALUES (%s, %s)",
                [timezone.now(), response.data["messages"]],
            )
        return response


def noop_urlpatterns() -> list[URLPattern]:
    """The benchmark's endpoints, for scope_site.urls to mount when SCOPE_ENABLE_NOOP_ENDPOINT is true."""
    return [
        path("api/v1/noop", NoopApi.as_view(), name="noop"),
        path("api/v1/noop-insert", NoopInsertApi.as_view(), name="noop-insert"),
    ]
