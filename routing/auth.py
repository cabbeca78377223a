from __future__ import annotations

from typing import Any

from rest_framework import authentication, exceptions
from rest_framework.request import Request

from routing.models import ApiKey


class ApiKeyUser:
    """The authenticated principal of an API request: an app holding an API key."""

    is_authenticated = True
    is_anonymous = False

    def __init__(self, key: ApiKey):
        self.api_key = key

    def __str__(self) -> str:
        return f"api-key:{self.api_key.name}"


class BearerApiKeyAuthentication(authentication.BaseAuthentication):
    """`Authorization: Bearer <key>`; the key is checked against its SHA-512 hash."""

    def authenticate(self, request: Request) -> tuple[Any, ApiKey] | None:
        header = request.META.get("HTTP_AUTHORIZATION", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        try:
            key = ApiKey.objects.get_from_key(token.strip())
        except ApiKey.DoesNotExist:
            raise exceptions.AuthenticationFailed("Invalid API key") from None
        if key.revoked or not key.is_active or key.has_expired:
            raise exceptions.AuthenticationFailed("This API key is revoked, inactive or expired")
        return ApiKeyUser(key), key

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="scope"'
