"""GET /api/v1/activity: the control-plane activity log, for signed-in operators and auditors.

The other /api/v1 reads belong to apps and show an API key its own rows; this log is global (who
changed providers, models, policies, keys, the predictor), so an API key may not read it. Auditors
and operators use their dashboard session (the same login as the Activity page), with the same
filters and keyset pagination as GET /api/v1/decisions.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import permissions, serializers
from rest_framework.authentication import SessionAuthentication
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from routing.activity import MAX_LIMIT, PAGE_SIZE, ActivityFilters, action_choices, activity_page
from routing.auth import ApiKeyUser, BearerApiKeyAuthentication
from routing.dashboard.roles import READ_ALL, user_role
from routing.decisions_api import RFC3339DateTimeField
from routing.serializers import ErrorSerializer


class ActivityQuerySerializer(serializers.Serializer):
    action = serializers.ChoiceField(
        choices=[c for c, _ in action_choices() if c],
        required=False,
        help_text="an action (`model.disable`) or an entity for all its actions (`model`)",
    )
    actor = serializers.CharField(required=False, max_length=150, help_text="username, system:…, cli:…")
    target = serializers.CharField(required=False, max_length=300, help_text="`model:gpt-4o`, or a prefix")
    start = RFC3339DateTimeField(required=False)
    end = RFC3339DateTimeField(required=False)
    after = serializers.RegexField(r"^\d{1,18}$", required=False, help_text="`next` of the previous page")
    limit = serializers.IntegerField(required=False, min_value=1, max_value=MAX_LIMIT, default=PAGE_SIZE)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(self.initial_data) - set(self.fields))
        if unknown:
            known = ", ".join(self.fields)
            raise serializers.ValidationError(
                {name: f"unknown query parameter (known: {known})" for name in unknown}
            )
        blank = [str(name) for name in self.fields if self.initial_data.get(name) == ""]
        if blank:
            raise serializers.ValidationError({name: "must not be empty" for name in blank})
        return attrs


class ControlEventOutSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    created_at = serializers.DateTimeField()
    actor = serializers.CharField()
    action = serializers.CharField()
    target = serializers.CharField()
    detail = serializers.JSONField(help_text="old → new values, versions; never key material")


class ActivityPageSerializer(serializers.Serializer):
    results = ControlEventOutSerializer(many=True)
    next = serializers.CharField(allow_blank=True, help_text="cursor for `after`; empty on the last page")


class CanReadActivity(permissions.BasePermission):
    message = (
        "the activity log is for signed-in operators and auditors (dashboard session); "
        "API keys belong to apps and cannot read it"
    )

    def has_permission(self, request: Request, view: Any) -> bool:
        if isinstance(request.user, ApiKeyUser):
            return False
        return user_role(request.user) in READ_ALL


class ActivityListApi(APIView):
    """Control-plane changes, newest first; `next` is the cursor of the following page."""

    # a bearer key is still recognised (and refused with 403, not asked to log in); a session reads
    authentication_classes = [BearerApiKeyAuthentication, SessionAuthentication]
    permission_classes = [permissions.IsAuthenticated, CanReadActivity]

    @extend_schema(
        operation_id="activity_list",
        parameters=[ActivityQuerySerializer],
        responses={
            200: ActivityPageSerializer,
            400: OpenApiResponse(ErrorSerializer),
            401: OpenApiResponse(ErrorSerializer),
            403: OpenApiResponse(ErrorSerializer),
        },
    )
    def get(self, request: Request) -> Response:
        query = ActivityQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        data = query.validated_data
        filters = ActivityFilters(
            action=data.get("action", ""),
            actor=data.get("actor", ""),
            target=data.get("target", ""),
            start=data.get("start"),
            end=data.get("end"),
        )
        rows, cursor = activity_page(filters=filters, after=data.get("after", ""), limit=data["limit"])
        return Response({"results": ControlEventOutSerializer(rows, many=True).data, "next": cursor})
