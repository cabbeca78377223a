from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rest_framework import serializers
from rest_framework.settings import api_settings

from routing.field_names import unknown_fields, unknown_fields_message

MESSAGE_ROLES = ("system", "developer", "user", "assistant", "tool", "function")
MODELS_EMPTY = "must name at least one model (leave it out to allow every model)"


class NumberField(serializers.FloatField):
    """A FloatField that takes only JSON numbers: DRF would take true as 1.0 and "0.5" as 0.5."""

    def to_internal_value(self, data: Any) -> float:
        if isinstance(data, bool | str):
            self.fail("invalid")
        return float(super().to_internal_value(data))


class TextField(serializers.CharField):
    """A CharField that takes only JSON strings: DRF would turn 5 into "5"."""

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return str(super().to_internal_value(data))


class SlugTextField(serializers.SlugField):
    """A SlugField that takes only JSON strings."""

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return str(super().to_internal_value(data))


class UUIDTextField(serializers.UUIDField):
    """A UUIDField that takes only text: DRF would turn the number 123 into a UUID."""

    def to_internal_value(self, data: Any) -> Any:
        if not isinstance(data, str):
            self.fail("invalid", value=data)
        return super().to_internal_value(data)


class MessageSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=MESSAGE_ROLES)
    content = serializers.JSONField(required=False, allow_null=True)
    name = serializers.CharField(required=False, max_length=200)

    def validate_content(self, value: Any) -> Any:
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, list) and all(isinstance(part, dict) and "type" in part for part in value):
            return value
        raise serializers.ValidationError("must be a string or a list of content parts with a 'type'")


def validate_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if not any(m.get("role") in {"user", "system", "developer"} and m.get("content") for m in messages):
        raise serializers.ValidationError("needs at least one user or system message with content")
    return messages


class StrictSerializer(serializers.Serializer):
    """An input whose unknown keys are a 400 naming them and the known ones (OpenAPI:
    additionalProperties false, routing.schema), so a misspelt limit is never silently ignored."""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, Mapping):
            unknown = unknown_fields(data, self.fields)
            if unknown:
                raise serializers.ValidationError(
                    {api_settings.NON_FIELD_ERRORS_KEY: [unknown_fields_message(unknown, list(self.fields))]}
                )
        return super().to_internal_value(data)


class RouteInputSerializer(StrictSerializer):
    messages = MessageSerializer(many=True, allow_empty=False)
    policy = SlugTextField(required=False, max_length=100)
    alpha = NumberField(required=False, min_value=0.0, max_value=1.0)
    max_cost_usd = NumberField(required=False, min_value=0.0)
    max_latency_ms = NumberField(required=False, min_value=0.0)
    # leave `models` out for no restriction: an empty list is refused, not read as "every model"
    models = serializers.ListField(
        child=TextField(max_length=200),
        required=False,
        min_length=1,
        max_length=500,
        error_messages={"min_length": MODELS_EMPTY},
    )
    user = TextField(required=False, max_length=200, allow_blank=True)
    metadata = serializers.DictField(required=False)

    def validate_messages(self, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return validate_messages(value)


class PredictionSerializer(serializers.Serializer):
    quality = serializers.FloatField()
    uncertainty = serializers.FloatField()
    output_tokens = serializers.FloatField()
    latency_ms = serializers.FloatField()
    cost_usd = serializers.FloatField()
    known = serializers.BooleanField()


class CandidateSerializer(serializers.Serializer):
    model = serializers.CharField()
    provider = serializers.CharField()
    tier = serializers.IntegerField()
    eligible = serializers.BooleanField()
    excluded_reason = serializers.CharField(allow_null=True)
    utility = serializers.FloatField(allow_null=True)
    rank = serializers.IntegerField(allow_null=True)
    predictions = PredictionSerializer(allow_null=True)


class PolicyRefSerializer(serializers.Serializer):
    slug = serializers.CharField()
    version = serializers.IntegerField(allow_null=True)


class ExperimentRefSerializer(serializers.Serializer):
    name = serializers.CharField()
    arm = serializers.CharField()


class RouteOutputSerializer(serializers.Serializer):
    decision_id = serializers.UUIDField()
    created_at = serializers.DateTimeField()
    model = serializers.CharField()
    provider = serializers.CharField()
    strategy = serializers.CharField()
    policy = PolicyRefSerializer()
    predictor_version = serializers.CharField()
    alpha = serializers.FloatField(allow_null=True)
    experiment = ExperimentRefSerializer(allow_null=True)
    candidates = CandidateSerializer(many=True)
    fallbacks = serializers.ListField(child=serializers.CharField())
    explanation = serializers.DictField()
    feature_schema = serializers.IntegerField()


class ErrorDetailSerializer(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()


class ErrorSerializer(serializers.Serializer):
    error = ErrorDetailSerializer()
