"""Response cache: an identical request routed to the same model gets the stored answer for free.

Opt-in per policy, in the policy version's options:

    options: {cache: {ttl_s: 300}}             # per API key (the default)
    options: {cache: {ttl_s: 3600, shared: true}}  # one cache for every key using the policy

The key is a hash of the normalised request — the messages (strings trimmed, null fields
dropped), every option that shapes the answer (temperature, max_tokens, tools, response format…),
the `model` the caller asked for — plus the model the decision chose, the policy and (unless
shared) the API key. So a hit needs the same decision too: when a circuit or a new policy version
sends the request elsewhere, the cache misses. Hits are logged as decisions with
`cache_hit=True`, call no provider and cost nothing. Streams bypass the cache. Entries live in
the Django cache (Redis in production) and expire after `ttl_s`; if the cache is down every
lookup is a miss.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.core.cache import cache

from routing.engine.types import Decision, PolicySpec
from routing.services.counters import CACHE_ERRORS, warn_degraded

logger = logging.getLogger(__name__)
_KEY_VERSION = 1
_MAX_TTL_S = 30 * 24 * 3600
_MAX_ENTRY_BYTES = 512 * 1024
_DEFAULT_TTL_S = 300
# caller fields that do not change the answer (they identify the caller or shape the transport)
_NOT_IN_KEY = frozenset({"user", "metadata", "stream", "stream_options"})


@dataclass(frozen=True, slots=True)
class CacheSettings:
    ttl_s: int
    shared: bool = False


def cache_option_error(raw: Any) -> str:
    """What is wrong with a policy's `options.cache` value, or "" (publishing refuses it; serving
    a version stored before that check turns caching off)."""
    if raw is None or isinstance(raw, bool):
        return ""
    if not isinstance(raw, Mapping):
        return "options.cache: must be true, false or an object like {ttl_s: 300, shared: false}"
    ttl = raw.get("ttl_s", _DEFAULT_TTL_S)
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 1 <= ttl <= _MAX_TTL_S:
        return f"options.cache.ttl_s: must be 1..{_MAX_TTL_S} seconds"
    if not isinstance(raw.get("shared", False), bool):
        return "options.cache.shared: must be true or false"
    return ""


def cache_settings(policy: PolicySpec) -> CacheSettings | None:
    """The policy's cache settings, or None when it does not cache (or the option is malformed)."""
    raw = policy.options.get("cache") if policy.options else None
    if raw is None or raw is False:
        return None
    error = cache_option_error(raw)
    if error:
        logger.warning("policy %s: %s; caching is off", policy.slug, error)
        return None
    if raw is True:
        return CacheSettings(ttl_s=_DEFAULT_TTL_S)
    return CacheSettings(ttl_s=int(raw.get("ttl_s", _DEFAULT_TTL_S)), shared=bool(raw.get("shared", False)))


def _normalise(value: Any) -> Any:
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, Mapping):
        return {str(k): _normalise(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_normalise(v) for v in value]
    return value


def request_fingerprint(
    *, messages: Any, params: Mapping[str, Any], max_tokens: int | None, requested_model: str
) -> dict[str, Any]:
    """The parts of a chat request that decide its answer, normalised (input to the cache key)."""
    return {
        "messages": _normalise(list(messages)),
        "params": _normalise({k: v for k, v in params.items() if k not in _NOT_IN_KEY}),
        "max_tokens": max_tokens,
        "requested_model": requested_model,
    }


def response_cache_key(
    *, fingerprint: Mapping[str, Any], model: str, policy: str, api_key_id: str | None, shared: bool
) -> str:
    material = {
        "v": _KEY_VERSION,
        "scope": "shared" if shared else f"key:{api_key_id or '-'}",
        "policy": policy,
        "model": model,
        **fingerprint,
    }
    digest = hashlib.sha256(json.dumps(material, sort_keys=True, separators=(",", ":"), default=str).encode())
    return f"rcache:{digest.hexdigest()}"


class ResponseCacheProbe:
    """One request's view of the cache: looked up once the decision is known, filled after the call.

    Passed to route_decide as `cache_probe`: called with the decision and the policy in force
    (an experiment may have swapped it) just before the decision is logged, so the row records
    whether it was a hit.
    """

    def __init__(self, *, api_key_id: str | None, fingerprint: Mapping[str, Any]):
        self.api_key_id = api_key_id
        self.fingerprint = dict(fingerprint)
        self.key: str | None = None
        self.ttl_s = 0
        self.hit: dict[str, Any] | None = None

    def __call__(self, decision: Decision, policy: PolicySpec) -> bool:
        config = cache_settings(policy)
        if config is None or decision.model is None:
            return False
        self.ttl_s = config.ttl_s
        self.key = response_cache_key(
            fingerprint=self.fingerprint,
            model=decision.model.name,
            policy=policy.slug,
            api_key_id=self.api_key_id,
            shared=config.shared,
        )
        try:
            stored = cache.get(self.key)
        except CACHE_ERRORS as exc:
            warn_degraded("response cache", exc)
            return False
        self.hit = stored if isinstance(stored, dict) else None
        return self.hit is not None

    @property
    def enabled(self) -> bool:
        return self.key is not None

    def store(self, body: Mapping[str, Any]) -> bool:
        """Keep a successful answer for the TTL (answers over 512 KB are not cached)."""
        if self.key is None or self.hit is not None:
            return False
        if len(json.dumps(body, default=str)) > _MAX_ENTRY_BYTES:
            return False
        try:
            cache.set(self.key, dict(body), timeout=self.ttl_s)
        except CACHE_ERRORS as exc:
            warn_degraded("response cache", exc)
            return False
        return True

    def replay(self, *, decision_id: str, completion_id: str) -> dict[str, Any]:
        """The stored answer as this request's answer: its own ids, no fallbacks, no cost."""
        assert self.hit is not None
        body = dict(self.hit)
        original = dict(body.get("scope") or {})
        body["id"] = completion_id
        body["created"] = int(time.time())
        body["scope"] = {
            **original,
            "decision_id": decision_id,
            "fallbacks": [],
            "cost_usd": 0.0,
            "cache": "hit",
            "cached_decision_id": original.get("decision_id"),
        }
        return body
