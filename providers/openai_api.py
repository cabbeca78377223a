"""The OpenAI-compatible API: POST /v1/chat/completions and GET /v1/models[/<id>].

Point the official `openai` client at SCOPE (base_url=".../v1", api_key=<SCOPE key>) and nothing
else changes. Errors use OpenAI's shape {"error": {"message", "type", "param", "code"}}.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from django.http import Http404, HttpResponseBase, StreamingHttpResponse
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import exceptions, serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from providers.chat_request import AUTO_MODEL, POLICY_PREFIX
from providers.execution import chat_complete
from providers.openai_format import error_body, model_entry
from providers.streaming import chat_stream
from routing.models import ApiKey
from routing.selectors import catalog_snapshot
from scope_site.errors import UNAVAILABLE_ERRORS, ApplicationError, NotFound, RateLimited, unavailable_error

_DRF_CODES: dict[type[exceptions.APIException], tuple[str, str]] = {
    exceptions.NotAuthenticated: (
        "missing_api_key",
        "Send your SCOPE API key as 'Authorization: Bearer <key>'.",
    ),
    exceptions.AuthenticationFailed: ("invalid_api_key", ""),
    exceptions.ParseError: ("invalid_json", ""),
    exceptions.UnsupportedMediaType: ("unsupported_media_type", ""),
    exceptions.MethodNotAllowed: ("method_not_allowed", ""),
    exceptions.PermissionDenied: ("forbidden", ""),
    exceptions.NotFound: ("not_found", ""),
    exceptions.Throttled: ("rate_limit_exceeded", ""),
}


def _scope_headers(
    response: HttpResponseBase, *, decision_id: str | None, model: str | None, fallbacks: Sequence[str]
) -> None:
    if decision_id:
        response["X-Scope-Decision-Id"] = decision_id
    if model:
        response["X-Scope-Model"] = model
    if fallbacks:
        response["X-Scope-Fallbacks"] = ", ".join(fallbacks)


def openai_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """Every API error in OpenAI's shape, with SCOPE's headers when a decision was made."""
    if isinstance(exc, UNAVAILABLE_ERRORS):  # database or cache down: a 503 to retry, not a 500
        exc = unavailable_error(exc)
    if isinstance(exc, ApplicationError):
        extra = dict(exc.extra)
        param = extra.pop("param", None)
        fallbacks = extra.pop("fallbacks", [])
        response = Response(
            error_body(status=exc.http_status, message=exc.message, code=exc.code, param=param, **extra),
            status=exc.http_status,
        )
        if isinstance(exc, RateLimited) and exc.retry_after is not None:
            response["Retry-After"] = str(exc.retry_after)
        _scope_headers(response, decision_id=extra.get("decision_id"), model=None, fallbacks=fallbacks)
        return response
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    if not isinstance(exc, exceptions.APIException):
        return None  # a bug: Django's 500 handler answers (and logs it)
    code, message = next(
        ((c, m) for cls, (c, m) in _DRF_CODES.items() if isinstance(exc, cls)), ("invalid_request", "")
    )
    status = exc.status_code
    if isinstance(exc, exceptions.NotAuthenticated | exceptions.AuthenticationFailed):
        status = 401
    response = Response(
        error_body(status=status, message=message or str(exc.detail), code=code), status=status
    )
    if status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="scope"'
    wait = getattr(exc, "wait", None)
    if isinstance(exc, exceptions.Throttled) and wait:
        response["Retry-After"] = str(int(wait) + 1)
    return response


# Documented error statuses (OpenAI's error shape), so clients and schema checks know them.
_ERRORS = {
    code: OpenApiResponse(description=text)
    for code, text in {
        400: "Invalid request",
        401: "Missing or invalid API key",
        404: "Unknown model or policy",
        413: "Body over 1 MB",
        422: "No eligible model",
        429: "Rate or budget limit",
        502: "Every candidate model failed",
        503: "A backing service is unavailable",
        504: "Upstream timed out",
    }.items()
}


def _api_key(request: Request) -> ApiKey | None:
    return request.auth if isinstance(request.auth, ApiKey) else None


class ScopeOptionsDoc(serializers.Serializer):
    alpha = serializers.FloatField(
        required=False, min_value=0.0, max_value=1.0, help_text="quality/cost trade-off"
    )
    max_cost_usd = serializers.FloatField(required=False, min_value=0.0)
    max_latency_ms = serializers.FloatField(required=False, min_value=0.0)
    models = serializers.ListField(child=serializers.CharField(), required=False, min_length=1)


class ChatCompletionsRequestDoc(serializers.Serializer):
    """OpenAI's chat-completions request as SCOPE reads it (providers/chat_request.py). The OpenAI
    options are forwarded to the model that answers; `scope` takes SCOPE's routing options, only
    with a `scope/…` model. Fields OpenAI has added since are passed over, not refused."""

    model = serializers.CharField(help_text="scope/auto, scope/<policy-slug> or a concrete model name")
    messages = serializers.ListField(child=serializers.DictField(), min_length=1)
    stream = serializers.BooleanField(required=False)
    stream_options = serializers.DictField(
        required=False, help_text='{"include_usage": true} adds a last chunk with the usage'
    )
    n = serializers.IntegerField(required=False, min_value=1, max_value=1, help_text="one choice per request")
    max_tokens = serializers.IntegerField(required=False, min_value=1)
    max_completion_tokens = serializers.IntegerField(
        required=False, min_value=1, help_text="OpenAI's current name for max_tokens; wins when both are sent"
    )
    temperature = serializers.FloatField(required=False, min_value=0.0, max_value=2.0)
    top_p = serializers.FloatField(required=False, min_value=0.0, max_value=1.0)
    stop = serializers.JSONField(required=False, help_text="a string or an array of strings")
    presence_penalty = serializers.FloatField(required=False, min_value=-2.0, max_value=2.0)
    frequency_penalty = serializers.FloatField(required=False, min_value=-2.0, max_value=2.0)
    seed = serializers.IntegerField(required=False)
    logit_bias = serializers.DictField(child=serializers.IntegerField(), required=False)
    logprobs = serializers.BooleanField(required=False)
    top_logprobs = serializers.IntegerField(required=False, min_value=0, max_value=20)
    tools = serializers.ListField(child=serializers.DictField(), required=False)
    tool_choice = serializers.JSONField(required=False, help_text='"auto", "none", "required" or an object')
    parallel_tool_calls = serializers.BooleanField(required=False)
    response_format = serializers.DictField(
        required=False, help_text='{"type": "json_object"} or {"type": "json_schema", …}'
    )
    reasoning_effort = serializers.CharField(required=False, help_text="forwarded to reasoning models")
    user = serializers.CharField(required=False, max_length=200)
    metadata = serializers.DictField(
        required=False, help_text="kept in the decision log; routing rules can match on it"
    )
    scope = ScopeOptionsDoc(required=False)


class OpenAIApiView(APIView):
    def get_exception_handler(self) -> Callable[[Exception, dict[str, Any]], Response | None]:
        return openai_exception_handler


class ChatCompletionsApi(OpenAIApiView):
    """Decide and execute a chat completion (plain JSON, or SSE with `stream: true`)."""

    @extend_schema(
        operation_id="chat_completions",
        request=ChatCompletionsRequestDoc,
        responses={
            200: OpenApiResponse(description="OpenAI chat.completion, or an SSE stream of chunks"),
            **_ERRORS,
        },
    )
    def post(self, request: Request) -> HttpResponseBase:
        body = request.data
        if isinstance(body, dict) and body.get("stream") is True:
            stream = chat_stream(api_key=_api_key(request), body=body)
            response: HttpResponseBase = StreamingHttpResponse(
                stream.events, content_type="text/event-stream"
            )
            response["Cache-Control"] = "no-cache"
            response["X-Accel-Buffering"] = "no"  # nginx: do not buffer the stream
            _scope_headers(
                response, decision_id=stream.decision_id, model=stream.model, fallbacks=stream.fallbacks
            )
            return response
        result = chat_complete(api_key=_api_key(request), body=body)
        response = Response(result.body)
        _scope_headers(
            response, decision_id=result.decision_id, model=result.model, fallbacks=result.fallbacks
        )
        return response


def _model_list() -> list[dict[str, Any]]:
    snapshot = catalog_snapshot()
    entries = [
        model_entry(AUTO_MODEL, owned_by="scope", description="routed by your API key's default policy")
    ]
    for slug, policy in sorted(snapshot.policies.items()):
        entries.append(
            model_entry(
                f"{POLICY_PREFIX}{slug}",
                owned_by="scope",
                description=f"routed by policy {slug!r} v{policy.version}",
            )
        )
    entries.extend(model_entry(m.name, owned_by=m.provider) for m in snapshot.models if m.enabled)
    return entries


class ModelsApi(OpenAIApiView):
    """scope/auto, scope/<policy> for every policy, and every enabled concrete model."""

    @extend_schema(
        operation_id="models_list",
        responses={
            200: OpenApiResponse(description="OpenAI model list"),
            401: _ERRORS[401],
            503: _ERRORS[503],
        },
    )
    def get(self, request: Request) -> Response:
        return Response({"object": "list", "data": _model_list()})


class ModelDetailApi(OpenAIApiView):
    @extend_schema(
        operation_id="models_retrieve",
        responses={200: OpenApiResponse(description="OpenAI model"), 401: _ERRORS[401], 404: _ERRORS[404]},
    )
    def get(self, request: Request, model_id: str) -> Response:
        entry = next((m for m in _model_list() if m["id"] == model_id), None)
        if entry is None:
            raise NotFound(
                f"The model {model_id!r} does not exist", code="model_not_found", extra={"param": "model"}
            )
        return Response(entry)
