"""GET /api/v1/decisions: an app reads back its own decisions (filtered, keyset-paginated)."""

from __future__ import annotations

import re
import uuid
from typing import Any, cast

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from feedback.models import Feedback, Outcome
from routing.dashboard.decisions import OUTCOME_CHOICES, DecisionFilters, decisions_page
from routing.models import ApiKey, DecisionKind, DecisionLog
from routing.serializers import ErrorSerializer, RouteOutputSerializer
from routing.services.route import decision_payload
from scope_site.errors import NotFound

MAX_LIMIT = 200


_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


class RFC3339DateTimeField(serializers.DateTimeField):
    """Only what OpenAPI's `date-time` means: RFC 3339 with an offset (no naive or date-only values)."""

    def to_internal_value(self, value: Any) -> Any:
        if not isinstance(value, str) or not _RFC3339.match(value):
            self.fail("invalid", format="RFC 3339, e.g. 2026-11-29T12:00:00Z")
        return super().to_internal_value(value)


class DecisionQuerySerializer(serializers.Serializer):
    start = RFC3339DateTimeField(required=False)
    end = RFC3339DateTimeField(required=False)
    model = serializers.CharField(required=False, max_length=200)
    policy = serializers.CharField(required=False, max_length=100)
    experiment = serializers.CharField(required=False, max_length=100)
    outcome = serializers.ChoiceField(choices=[c for c in OUTCOME_CHOICES if c], required=False)
    after = serializers.CharField(required=False, max_length=200)
    limit = serializers.IntegerField(required=False, min_value=1, max_value=MAX_LIMIT, default=50)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        # a misspelt filter ("modle=…") would otherwise silently return every decision
        unknown = sorted(set(self.initial_data) - set(self.fields))
        if unknown:
            known = ", ".join(self.fields)
            raise serializers.ValidationError(
                {name: f"unknown query parameter (known: {known})" for name in unknown}
            )
        # query strings drop empty values silently; a present-but-empty filter is a client mistake
        blank = [str(name) for name in self.fields if self.initial_data.get(name) == ""]
        if blank:
            raise serializers.ValidationError({name: "must not be empty" for name in blank})
        return attrs


class DecisionOutSerializer(RouteOutputSerializer):
    kind = serializers.ChoiceField(choices=DecisionKind.choices, help_text="route, chat or job")
    cache_hit = serializers.BooleanField(help_text="answered from the response cache: no call, no cost")


def _decision(row: DecisionLog) -> dict[str, Any]:
    return {**decision_payload(row), "kind": row.kind, "cache_hit": row.cache_hit}


class DecisionPageSerializer(serializers.Serializer):
    results = DecisionOutSerializer(many=True)
    next = serializers.CharField(
        allow_blank=True, help_text="cursor for `after` (URL-encode it); empty on the last page"
    )


class OutcomeOutSerializer(serializers.Serializer):
    model_name = serializers.CharField()
    status = serializers.CharField()
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    tokens_estimated = serializers.BooleanField()
    latency_ms = serializers.FloatField(allow_null=True)
    ttft_ms = serializers.FloatField(allow_null=True)
    total_ms = serializers.FloatField(allow_null=True, help_text="the whole call: every attempt and fallback")
    cost_usd = serializers.DecimalField(max_digits=14, decimal_places=8, coerce_to_string=False)
    error_class = serializers.CharField()
    created_at = serializers.DateTimeField()


class FeedbackOutSerializer(serializers.Serializer):
    score = serializers.FloatField()
    label = serializers.CharField()  # type: ignore[assignment]
    comment = serializers.CharField()
    created_at = serializers.DateTimeField()


class DecisionDetailSerializer(DecisionOutSerializer):
    outcomes = OutcomeOutSerializer(many=True)
    feedback = FeedbackOutSerializer(many=True)


_ERRORS = {400: OpenApiResponse(ErrorSerializer), 401: OpenApiResponse(ErrorSerializer)}


class DecisionListApi(APIView):
    """The calling key's decisions, newest first; `next` is the cursor of the following page."""

    @extend_schema(
        operation_id="decisions_list",
        parameters=[DecisionQuerySerializer],
        responses={200: DecisionPageSerializer, **_ERRORS},
    )
    def get(self, request: Request) -> Response:
        query = DecisionQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        data = query.validated_data
        api_key = cast(ApiKey, request.auth)
        filters = DecisionFilters(
            start=data.get("start"),
            end=data.get("end"),
            model=data.get("model", ""),
            policy=data.get("policy", ""),
            experiment=data.get("experiment", ""),
            outcome=data.get("outcome", ""),
            api_key_id=api_key.pk,
        )
        rows, cursor = decisions_page(
            filters=filters, after=data.get("after", ""), limit=data["limit"], full_rows=True
        )
        return Response({"results": [_decision(row) for row in rows], "next": cursor})


class DecisionDetailApi(APIView):
    """One of the calling key's decisions with its outcomes and feedback (another key's → 404)."""

    @extend_schema(
        operation_id="decisions_retrieve",
        responses={200: DecisionDetailSerializer, 404: OpenApiResponse(ErrorSerializer), **_ERRORS},
    )
    def get(self, request: Request, decision_id: uuid.UUID) -> Response:
        api_key = cast(ApiKey, request.auth)
        row = DecisionLog.objects.filter(id=decision_id, api_key=api_key).first()
        if row is None:
            raise NotFound(f"No decision {decision_id} for this API key", code="unknown_decision")
        body: dict[str, Any] = _decision(row)
        body["outcomes"] = OutcomeOutSerializer(
            Outcome.objects.filter(decision=row).order_by("created_at"), many=True
        ).data
        body["feedback"] = FeedbackOutSerializer(
            Feedback.objects.filter(decision=row).order_by("-created_at"), many=True
        ).data
        return Response(body)
