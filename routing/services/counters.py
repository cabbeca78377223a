"""Shared counters in the cache (Redis in production, local memory embedded).

Every operation here is a single atomic cache command (ADD, INCRBY), so processes sharing Redis
agree without a lock. A check is "increment, compare, roll back": the increment reserves the
slot first, so two racing callers can never both see room for one remaining slot.
"""

from __future__ import annotations

import logging
import time

import redis.exceptions
from django.core.cache import cache

logger = logging.getLogger("scope.counters")

# What a cache that is down or unreachable raises; callers degrade instead of failing the request.
CACHE_ERRORS: tuple[type[BaseException], ...] = (redis.exceptions.RedisError, OSError)
_WARN_EVERY_S = 30.0
_last_warning: dict[str, float] = {}


def warn_degraded(what: str, exc: BaseException) -> None:
    """Log that a cache-backed limit is not enforced right now (at most every 30 s per kind)."""
    now = time.monotonic()
    if now - _last_warning.get(what, -_WARN_EVERY_S) >= _WARN_EVERY_S:
        _last_warning[what] = now
        logger.warning("cache unavailable, %s degraded (allowing requests): %s", what, exc)


def counter_add(key: str, delta: int, *, ttl_s: int) -> int:
    """Atomically add `delta` to the counter `key` (created at 0 with `ttl_s`); returns the new value."""
    for _ in range(3):
        cache.add(key, 0, ttl_s)
        try:
            return int(cache.incr(key, delta))
        except ValueError:  # expired between ADD and INCR: create it again
            continue
    raise RuntimeError(f"counter {key} keeps expiring")


def counter_take(key: str, amount: int, *, limit: int, ttl_s: int) -> tuple[bool, int]:
    """Take `amount` if the counter stays within `limit`; (taken, value after the attempt)."""
    value = counter_add(key, amount, ttl_s=ttl_s)
    if value > limit:
        counter_add(key, -amount, ttl_s=ttl_s)
        return False, value - amount
    return True, value


def counter_get(key: str) -> int:
    value = cache.get(key)
    return int(value) if value is not None else 0


def counters_get(keys: list[str]) -> list[int]:
    """The counters `keys` in order (0 where absent), in one round trip (MGET)."""
    values = cache.get_many(keys)
    return [int(values.get(key) or 0) for key in keys]
