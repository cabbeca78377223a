"""SCOPE's Redis cache backend: Django's behaviour, one reused client per connection pool."""

from __future__ import annotations

import os

import pytest
import redis

from scope_site.cache import RedisCache
from tests.conftest import requires_redis


@requires_redis
def test_it_stores_and_reads_like_djangos_backend_with_one_client_object() -> None:
    cache = RedisCache(os.environ["REDIS_URL"], {"KEY_PREFIX": "h6-backend-test"})
    cache.set("k", {"a": 1}, 30)
    assert cache.get("k") == {"a": 1}
    cache.delete("n")
    assert cache.add("n", 0, 30)
    assert cache.incr("n") == 1
    first = cache._cache.get_client(write=True)
    assert cache._cache.get_client(write=True) is first
    assert cache._cache.get_client() is first  # one server: reads use the same pool
    cache.delete("k")
    assert cache.get("k") is None


def test_an_unreachable_redis_raises_a_connection_error_for_callers_to_degrade_on() -> None:
    cache = RedisCache("redis://127.0.0.1:1/0", {"OPTIONS": {"socket_connect_timeout": 0.2}})
    with pytest.raises(redis.exceptions.ConnectionError):
        cache.get("k")
