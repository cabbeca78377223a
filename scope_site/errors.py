"""One error family for the domain, one JSON shape for clients: {"error": {"code", "message"}}."""

from __future__ import annotations

import logging
import sys
from typing import Any

import redis.exceptions
from django.core.exceptions import PermissionDenied
from django.db import InterfaceError, OperationalError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler


class ApplicationError(Exception):
    """A domain error the client caused or must know about; mapped to an HTTP status."""

    code = "application_error"
    http_status: int = status.HTTP_400_BAD_REQUEST

    def __init__(self, message: str, *, code: str | None = None, extra: dict[str, Any] | None = None):
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        self.extra = extra or {}


class InvalidRequest(ApplicationError):
    code = "invalid_request"


class NotFound(ApplicationError):
    code = "not_found"
    http_status = status.HTTP_404_NOT_FOUND


class Conflict(ApplicationError):
    code = "conflict"
    http_status = status.HTTP_409_CONFLICT


class NoEligibleModel(ApplicationError):
    code = "no_eligible_model"
    http_status = status.HTTP_422_UNPROCESSABLE_ENTITY


class RateLimited(ApplicationError):
    code = "rate_limited"
    http_status = status.HTTP_429_TOO_MANY_REQUESTS

    def __init__(self, message: str, *, retry_after: int | None, code: str | None = None):
        """`retry_after` None: no wait helps (no Retry-After header is sent)."""
        super().__init__(message, code=code)
        self.retry_after = retry_after


class ServiceUnavailable(ApplicationError):
    code = "service_unavailable"
    http_status = status.HTTP_503_SERVICE_UNAVAILABLE


# A backing service is down (PostgreSQL restarting, Redis gone): the client should retry, not give up.
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    OperationalError,
    InterfaceError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)
UNAVAILABLE_RETRY_AFTER_S = 2
logger = logging.getLogger("scope.errors")


def unavailable_error(exc: BaseException) -> ServiceUnavailable:
    """The 503 a client gets when a backing service failed; logged once, without a traceback."""
    service = "cache" if isinstance(exc, redis.exceptions.RedisError) else "database"
    logger.warning("%s unavailable: %s: %s", service, exc.__class__.__name__, str(exc).strip()[:200])
    return ServiceUnavailable(
        f"The {service} is unavailable, so this request could not be completed; retry shortly.",
        extra={"retry_after": UNAVAILABLE_RETRY_AFTER_S},
    )


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, **extra}}


def _flatten(detail: Any, prefix: str = "") -> list[str]:
    if isinstance(detail, dict):
        parts: list[str] = []
        for key, value in detail.items():
            name = key if key != "non_field_errors" else ""
            parts.extend(_flatten(value, f"{prefix}.{name}" if prefix and name else (name or prefix)))
        return parts
    if isinstance(detail, list):
        parts = []
        for index, value in enumerate(detail):
            sub = f"{prefix}[{index}]" if isinstance(value, dict | list) else prefix
            parts.extend(_flatten(value, sub))
        return parts
    return [f"{prefix}: {detail}" if prefix else str(detail)]


_DRF_CODES: dict[type[exceptions.APIException], str] = {
    exceptions.ParseError: "invalid_json",
    exceptions.UnsupportedMediaType: "unsupported_media_type",
    exceptions.NotAuthenticated: "unauthenticated",
    exceptions.AuthenticationFailed: "unauthenticated",
    exceptions.PermissionDenied: "forbidden",
    exceptions.NotFound: "not_found",
    exceptions.MethodNotAllowed: "method_not_allowed",
    exceptions.Throttled: "rate_limited",
    exceptions.ValidationError: "invalid_request",
}


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, UNAVAILABLE_ERRORS):
        exc = unavailable_error(exc)
    if isinstance(exc, ApplicationError):
        answer = Response(error_body(exc.code, exc.message, **exc.extra), status=exc.http_status)
        if isinstance(exc, RateLimited):
            if exc.retry_after is not None:
                answer["Retry-After"] = str(exc.retry_after)
        elif isinstance(exc, ServiceUnavailable) and "retry_after" in exc.extra:
            answer["Retry-After"] = str(exc.extra["retry_after"])
        return answer
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    response = exception_handler(exc, context)
    if response is None or not isinstance(exc, exceptions.APIException):
        return response
    code = next((c for cls, c in _DRF_CODES.items() if isinstance(exc, cls)), "error")
    message = (
        "; ".join(_flatten(exc.detail)) if isinstance(exc, exceptions.ValidationError) else str(exc.detail)
    )
    response.data = error_body(code, message)
    if isinstance(exc, exceptions.NotAuthenticated | exceptions.AuthenticationFailed):
        response.status_code = status.HTTP_401_UNAUTHORIZED
        response["WWW-Authenticate"] = 'Bearer realm="scope"'
    return response


def json_error(status_code: int, code: str, message: str) -> JsonResponse:
    return JsonResponse(error_body(code, message), status=status_code)


_MACHINE_PATHS = ("/api/", "/v1/", "/metrics", "/healthz")


def wants_html(request: HttpRequest) -> bool:
    """A browser on a dashboard page (not the APIs, whose clients always get JSON)."""
    if request.path.startswith(_MACHINE_PATHS):
        return False
    return "text/html" in request.headers.get("Accept", "")


def _error_page(request: HttpRequest, status_code: int, title: str, message: str) -> HttpResponse:
    from django.shortcuts import render

    context = {"title": title, "message": message, "status": status_code}
    return render(request, "error_page.html", context, status=status_code)


def error_for_path(request: HttpRequest, status_code: int, code: str, message: str) -> JsonResponse:
    """SCOPE's JSON error, or OpenAI's error shape on the OpenAI-compatible paths (/v1/…)."""
    if request.path.startswith("/v1/"):
        from providers.openai_format import error_body  # the chat API's own shape

        return JsonResponse(error_body(status=status_code, message=message, code=code), status=status_code)
    return json_error(status_code, code, message)


def handler404(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if wants_html(request):
        return _error_page(request, 404, "Not found", f"There is nothing at {request.path}.")
    return error_for_path(request, 404, "not_found", f"No such resource: {request.path}")


def handler403(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    reason = str(exception) if exception is not None and str(exception) else "you may not use this page"
    if request.headers.get("HX-Request") and not request.path.startswith(_MACHINE_PATHS):
        from django.shortcuts import render  # an HTMX swap: the dashboard's error fragment

        error = {"code": "permission_denied", "message": reason}
        return render(request, "dashboard/error.html", {"error": error}, status=403)
    if wants_html(request):
        return _error_page(request, 403, "Not allowed", f"{reason[:1].upper()}{reason[1:]}.")
    return json_error(403, "permission_denied", reason)


def handler500(request: HttpRequest) -> JsonResponse:
    exc = sys.exc_info()[1]
    if exc is not None and isinstance(exc, UNAVAILABLE_ERRORS):  # outside DRF: pages, middleware
        error = unavailable_error(exc)
        response = json_error(503, error.code, error.message)
        response["Retry-After"] = str(UNAVAILABLE_RETRY_AFTER_S)
        return response
    return json_error(500, "internal_error", "SCOPE hit an internal error; it has been logged.")
