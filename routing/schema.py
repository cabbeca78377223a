"""OpenAPI descriptions drf-spectacular cannot infer: API-key authentication, strict inputs."""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension, OpenApiSerializerExtension


class BearerApiKeyScheme(OpenApiAuthenticationExtension):
    target_class = "routing.auth.BearerApiKeyAuthentication"
    name = "ApiKeyBearer"

    def get_security_definition(self, auto_schema: Any) -> dict[str, Any]:
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "SCOPE API key: `Authorization: Bearer <key>`",
        }


class StrictSerializerSchema(OpenApiSerializerExtension):
    """routing.serializers.StrictSerializer refuses unknown keys: the schema says so."""

    target_class = "routing.serializers.StrictSerializer"
    match_subclasses = True

    def map_serializer(self, auto_schema: Any, direction: Any) -> dict[str, Any]:
        schema: dict[str, Any] = auto_schema._map_basic_serializer(self.target, direction)
        if direction == "request":
            schema["additionalProperties"] = False
        return schema
