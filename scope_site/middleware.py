from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse

from scope_site.errors import error_for_path


class BodySizeLimitMiddleware:
    """Refuse bodies over SCOPE_MAX_BODY_BYTES with a JSON 413 before anything reads them."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response
        self.limit = int(settings.SCOPE_MAX_BODY_BYTES)

    def __call__(self, request: HttpRequest) -> HttpResponse:
        raw = request.META.get("CONTENT_LENGTH") or "0"
        try:
            length = int(raw)
        except ValueError:
            return error_for_path(request, 400, "invalid_request", "Content-Length is not a number")
        if length > self.limit:
            return error_for_path(
                request,
                413,
                "payload_too_large",
                f"Request body is {length} bytes; the limit is {self.limit} bytes",
            )
        return self.get_response(request)
