"""A no-op API endpoint for the overhead benchmark: the route path's stack without the routing.

Same middleware, same API-key authentication, same JSON parsing and rendering as
POST /api/v1/route, but no features, no predictor, no decision and no database write. Mounted
only when SCOPE_ENABLE_NOOP_ENDPOINT is true (bench/overhead.py sets it); never in production.
"""

from __future__ import annotations

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
