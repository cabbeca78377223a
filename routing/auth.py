from __future__ import annotations

import time
from typing import Any

from django.conf import settings
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from routing.models import ApiKey

# prefix → (loaded at, the key row or None when no usable key has that prefix)
_verified: dict[str, tuple[float, ApiKey | None]] = {}
_MAX_ENTRIES = 10_000


class ApiKeyUser:
    """The authenticated principal of an API request: an app holding an API key."""

    is_authenticated = True
    is_anonymous = False

    def __init__(self, key: ApiKey):
        self.api_key = key

    def __str__(self) -> str:
        return f"api-key:{self.api_key.name}"


def api_key_lookup(prefix: str) -> ApiKey | None:
    """The usable key row with this prefix, remembered per process for SCOPE_API_KEY_CACHE_SECONDS.

    Only the row is remembered, never a verdict on a secret: every request's key is still checked
    against the stored SHA-512 hash (microseconds). What the TTL trades is freshness: a revoked or
    deactivated key stops working in every process within that many seconds, without a database
    query per request.
    """
    ttl = float(settings.SCOPE_API_KEY_CACHE_SECONDS)
    now = time.monotonic()
    if ttl > 0:
        hit = _verified.get(prefix)
        if hit is not None and now - hit[0] < ttl:
            return hit[1]
    row = ApiKey.objects.get_usable_keys().select_related("default_policy").filter(prefix=prefix).first()
    if ttl > 0:
        if len(_verified) >= _MAX_ENTRIES:  # a flood of made-up prefixes cannot grow this without bound
            _verified.clear()
        _verified[prefix] = (now, row)
    return row


def api_key_cache_clear() -> None:
    _verified.clear()


class BearerApiKeyAuthentication(authentication.BaseAuthentication):
    """`Authorization: Bearer <key>`; the key is checked against its SHA-512 hash."""

    def authenticate(self, request: Request) -> tuple[Any, ApiKey] | None:
        header = request.META.get("HTTP_AUTHORIZATION", "")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return None
        prefix, dot, _ = token.partition(".")
        key = api_key_lookup(prefix) if dot and prefix else None
        if key is None or not ApiKey.objects.key_generator.verify(token, key.hashed_key):
            raise exceptions.AuthenticationFailed("Invalid API key")
        if key.revoked or not key.is_active or key.has_expired:
            raise exceptions.AuthenticationFailed("This API key is revoked, inactive or expired")
        return ApiKeyUser(key), key

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="scope"'
