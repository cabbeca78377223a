"""POST /api/v1/jobs (submit an async chat completion) and GET /api/v1/jobs/<id> (poll it)."""

from __future__ import annotations

import uuid

from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from routing.models import ApiKey
from routing.serializers import ErrorSerializer
from routing.services.jobs import job_create, job_get, job_payload
from routing.services.limits import rpm_admit


def _api_key(request: Request) -> ApiKey:
    key = request.auth
    assert isinstance(key, ApiKey)  # BearerApiKeyAuthentication + IsAuthenticated guarantee it
    return key


class JobOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    object = serializers.CharField()
    status = serializers.ChoiceField(choices=["queued", "running", "succeeded", "failed"])
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)
    attempts = serializers.IntegerField()
    decision_id = serializers.UUIDField(allow_null=True)
    idempotency_key = serializers.CharField(allow_null=True)
    result = serializers.DictField(allow_null=True, help_text="The chat.completion, once succeeded")
    error = serializers.DictField(allow_null=True)


_ERRORS = {
    code: OpenApiResponse(ErrorSerializer, description=text)
    for code, text in {
        400: "Invalid chat-completions body",
        401: "Missing or invalid API key",
        404: "Unknown model or policy",
        409: "Idempotency-Key reused with a different body",
        413: "Body over 1 MB",
        429: "Rate limit",
    }.items()
}


class JobCreateApi(APIView):
    """Submit a chat completion to run in the background; the body is the /v1/chat/completions body."""

    @extend_schema(
        operation_id="job_create",
        request={"application/json": {"type": "object", "description": "A /v1/chat/completions body"}},
        parameters=[OpenApiParameter("Idempotency-Key", str, OpenApiParameter.HEADER, required=False)],
        responses={202: JobOutputSerializer, **_ERRORS},
    )
    def post(self, request: Request) -> Response:
        api_key = _api_key(request)
        rpm_admit(api_key=api_key)
        submission = job_create(
            api_key=api_key,
            body=request.data,
            idempotency_key=request.headers.get("Idempotency-Key", ""),
        )
        response = Response(job_payload(submission.job), status=status.HTTP_202_ACCEPTED)
        response["Location"] = f"/api/v1/jobs/{submission.job.id}"
        if not submission.created:
            response["Idempotent-Replayed"] = "true"
        return response


class JobDetailApi(APIView):
    """A job's status, and its result or error once finished (only for the key that submitted it)."""

    @extend_schema(
        operation_id="job_get",
        responses={200: JobOutputSerializer, 401: ErrorSerializer, 404: ErrorSerializer},
    )
    def get(self, request: Request, job_id: uuid.UUID) -> Response:
        return Response(job_payload(job_get(api_key=_api_key(request), job_id=job_id)))
