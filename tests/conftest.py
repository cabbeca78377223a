from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.core.cache import cache
from django.test import Client

from feedback.services.shadow import shadow_reset
from routing.predictor import registry as predictor_registry
from routing.selectors import catalog_invalidate
from tests.factories import make_api_key, make_catalog, make_policy

os.environ.setdefault("SCOPE_TESTING", "1")


def pytest_configure(config: pytest.Config) -> None:
    from django.conf import settings

    settings.SCOPE_CATALOG_TTL_SECONDS = 0  # every request sees the catalog the test just wrote
    settings.SCOPE_API_KEY_CACHE_SECONDS = 0  # a key revoked in a test is refused at once
    settings.SCOPE_CIRCUIT_SNAPSHOT_SECONDS = 0  # a circuit a test opens is seen by the next route


@pytest.fixture(scope="session")
def live_server(django_db_setup: None, live_server: Any) -> Any:
    """pytest-django's live server, stopped before the test database is dropped (it tore the
    database down first, while the server's threads could still hold connections to it)."""
    return live_server


@pytest.fixture(autouse=True)
def _fresh_state() -> Iterator[None]:
    catalog_invalidate()
    # the active and shadow predictors are looked up at most every few seconds per process: a
    # version an earlier test activated (its rows rolled back since) must not answer this test
    predictor_registry.reset()
    shadow_reset()
    with contextlib.suppress(Exception):  # a test may have stopped Redis on purpose
        cache.clear()
    yield
    catalog_invalidate()


@pytest.fixture
def catalog(db: Any) -> list[Any]:
    models = make_catalog()
    make_policy("default", strategy="hybrid", alpha=0.5)
    return models


@pytest.fixture
def api_key(catalog: Any) -> str:
    _, key = make_api_key("tests")
    return key


@pytest.fixture
def api(api_key: str) -> Callable[..., Any]:
    """POST JSON to an API path with the test key: api("/api/v1/route", {...})."""
    client = Client()

    def post(path: str, body: Any, key: str | None = api_key, **headers: Any) -> Any:
        import json

        extra: dict[str, Any] = {"HTTP_AUTHORIZATION": f"Bearer {key}"} if key else {}
        extra.update(headers)
        data = body if isinstance(body, str | bytes) else json.dumps(body)
        return client.post(path, data=data, content_type="application/json", **extra)

    return post


def on_postgres() -> bool:
    from django.db import connection

    return connection.vendor == "postgresql"


def live_database_url() -> str:
    """DATABASE_URL of the database this test runs on, for a process the test starts (PostgreSQL)."""
    from django.db import connection

    s = connection.settings_dict
    auth = s["USER"] + (f":{s['PASSWORD']}" if s.get("PASSWORD") else "")
    return f"postgres://{auth}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"


requires_postgres = pytest.mark.skipif(
    not os.environ.get("DATABASE_URL", "").startswith(("postgres", "pgsql")),
    reason="needs PostgreSQL (DATABASE_URL); CI runs it",
)
requires_redis = pytest.mark.skipif(
    not os.environ.get("REDIS_URL"), reason="needs Redis (REDIS_URL); CI runs it"
)
USER_MESSAGE: Callable[[str], list[dict[str, str]]] = lambda text: [{"role": "user", "content": text}]  # noqa: E731
