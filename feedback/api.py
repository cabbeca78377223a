from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from feedback.services.feedback import THUMBS, feedback_record
from routing.models import ApiKey
from routing.serializers import ErrorSerializer, NumberField, StrictSerializer, UUIDTextField


class FeedbackApi(APIView):
    """Score a decision this API key made: `score` in [0, 1] or `thumbs` up|down."""

    class FeedbackInputSerializer(StrictSerializer):
        decision_id = UUIDTextField()
        score = NumberField(required=False, min_value=0.0, max_value=1.0)
        thumbs = serializers.ChoiceField(choices=sorted(THUMBS), required=False)
        label = serializers.CharField(required=False, max_length=100, allow_blank=True)  # type: ignore[assignment]
        comment = serializers.CharField(required=False, max_length=10_000, allow_blank=True)

    class FeedbackOutputSerializer(serializers.Serializer):
        id = serializers.IntegerField()
        decision_id = serializers.UUIDField()
        score = serializers.FloatField()
        label = serializers.CharField()  # type: ignore[assignment]
        comment = serializers.CharField()
        created_at = serializers.DateTimeField()

    @extend_schema(
        operation_id="feedback",
        request=FeedbackInputSerializer,
        responses={
            201: FeedbackOutputSerializer,
            400: OpenApiResponse(ErrorSerializer, description="Invalid score or body"),
            401: OpenApiResponse(ErrorSerializer, description="Missing or invalid API key"),
            404: OpenApiResponse(ErrorSerializer, description="Unknown decision (or another key's)"),
        },
    )
    def post(self, request: Request) -> Response:
        serializer = self.FeedbackInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        row = feedback_record(
            decision_id=data["decision_id"],
            api_key=request.auth if isinstance(request.auth, ApiKey) else None,
            score=data.get("score"),
            thumbs=data.get("thumbs"),
            label=data.get("label", ""),
            comment=data.get("comment", ""),
        )
        return Response(self.FeedbackOutputSerializer(row).data, status=201)
