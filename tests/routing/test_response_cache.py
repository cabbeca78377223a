"""The response cache through POST /v1/chat/completions (simulated catalog)."""

from __future__ import annotations

import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from django.test import Client, override_settings

from feedback.models import Outcome
from providers.circuit import circuit_record_failure
from routing.engine.types import PolicySpec
from routing.models import BudgetHold, DecisionLog
from routing.response_cache import CacheSettings, cache_settings
from tests.factories import make_api_key, make_policy

pytestmark = pytest.mark.django_db
Api = Callable[..., Any]
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(autouse=True)
def _fast(settings: Any, catalog: Any) -> None:
    settings.SCOPE_SIMULATED_SPEEDUP = 1000.0
    settings.SCOPE_CIRCUIT_FAILURES = 3
    make_policy("cached", strategy="hybrid", alpha=0.5, options={"cache": {"ttl_s": 300}})
    make_policy("shared", strategy="hybrid", alpha=0.5, options={"cache": {"ttl_s": 300, "shared": True}})


def chat(api: Api, policy: str = "cached", key: str | None = None, **extra: Any) -> Any:
    body = {"model": f"scope/{policy}", "messages": MESSAGES, **extra}
    response = (
        api("/v1/chat/completions", body) if key is None else api("/v1/chat/completions", body, key=key)
    )
    assert response.status_code == 200, response.content
    return response


def row(response: Any) -> DecisionLog:
    return DecisionLog.objects.get(pk=response["X-Scope-Decision-Id"])


def test_a_repeated_request_is_answered_from_the_cache_logged_and_free(api: Api, api_key: str) -> None:
    first, second = chat(api), chat(api)
    assert (row(first).cache_hit, row(second).cache_hit) == (False, True)
    a, b = first.json(), second.json()
    assert b["choices"] == a["choices"] and b["model"] == a["model"] == second["X-Scope-Model"]
    assert b["id"] != a["id"] and b["scope"]["decision_id"] == second["X-Scope-Decision-Id"]
    assert b["scope"]["cache"] == "hit" and b["scope"]["cost_usd"] == 0.0
    assert b["scope"]["cached_decision_id"] == first["X-Scope-Decision-Id"]
    assert Outcome.objects.count() == 1  # only the real call has an outcome (and a cost)
    # an app reading its decisions back, and an auditor on the decision page, can tell the hit
    detail = Client().get(
        f"/api/v1/decisions/{second['X-Scope-Decision-Id']}", HTTP_AUTHORIZATION=f"Bearer {api_key}"
    )
    assert (detail.json()["cache_hit"], detail.json()["kind"], detail.json()["outcomes"]) == (
        True,
        "chat",
        [],
    )


def test_a_cache_hit_reserves_nothing_against_the_budget(api: Api) -> None:
    _, key = make_api_key("budgeted", daily_budget_usd=Decimal("10"))
    chat(api, key=key)
    chat(api, key=key)
    assert BudgetHold.objects.count() == 1


def test_the_key_covers_everything_that_shapes_the_answer(api: Api) -> None:
    chat(api, temperature=0.2)
    assert row(chat(api, temperature=0.2)).cache_hit
    assert not row(chat(api, temperature=0.9)).cache_hit
    assert not row(chat(api, temperature=0.2, max_tokens=5)).cache_hit
    other = [{"role": "user", "content": "What is the capital of Spain?"}]
    assert not row(chat(api, messages=other)).cache_hit


def test_the_request_is_normalised_before_matching(api: Api) -> None:
    chat(api)
    padded = [{"role": "user", "content": "  What is the capital of France?\n", "name": None}]
    assert row(chat(api, messages=padded, user="someone-else")).cache_hit


def test_policies_without_the_option_never_cache(api: Api) -> None:
    chat(api, policy="default")
    assert not row(chat(api, policy="default")).cache_hit


def test_entries_are_per_api_key_unless_the_policy_shares_them(api: Api) -> None:
    _, other = make_api_key("other")
    chat(api)
    assert not row(chat(api, key=other)).cache_hit
    chat(api, policy="shared")
    assert row(chat(api, policy="shared", key=other)).cache_hit


def test_a_different_decision_misses(api: Api) -> None:
    first = chat(api)
    for _ in range(3):  # the chosen model's circuit opens: the same request routes elsewhere
        circuit_record_failure(first["X-Scope-Model"], error_class="server_error")
    second = chat(api)
    assert second["X-Scope-Model"] != first["X-Scope-Model"] and not row(second).cache_hit


def test_entries_expire_after_their_ttl(api: Api) -> None:
    make_policy("brief", strategy="hybrid", alpha=0.5, options={"cache": {"ttl_s": 1}})
    chat(api, policy="brief")
    assert row(chat(api, policy="brief")).cache_hit
    time.sleep(1.2)
    assert not row(chat(api, policy="brief")).cache_hit


def test_streams_bypass_the_cache(api: Api) -> None:
    chat(api)
    response = api("/v1/chat/completions", {"model": "scope/cached", "messages": MESSAGES, "stream": True})
    b"".join(response.streaming_content)
    assert not row(response).cache_hit


def test_an_unreachable_cache_only_means_misses(api: Api) -> None:
    dead = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",
            "OPTIONS": {"socket_connect_timeout": 0.2, "socket_timeout": 0.2},
        }
    }
    with override_settings(CACHES=dead):
        assert not row(chat(api)).cache_hit
        assert not row(chat(api)).cache_hit


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, None),
        ({"cache": False}, None),
        ({"cache": True}, CacheSettings(ttl_s=300)),
        ({"cache": {"ttl_s": 60, "shared": True}}, CacheSettings(ttl_s=60, shared=True)),
        ({"cache": {"ttl_s": 0}}, None),
        ({"cache": {"ttl_s": "long"}}, None),
        ({"cache": "yes"}, None),
    ],
)
def test_cache_settings_are_read_from_the_policy_options(options: dict[str, Any], expected: Any) -> None:
    assert cache_settings(PolicySpec(slug="p", version=1, options=options)) == expected
