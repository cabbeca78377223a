from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connections
from django.test import Client

from routing.models import ApiKey, DecisionLog
from tests.conftest import USER_MESSAGE, requires_postgres
from tests.factories import make_api_key, make_catalog, make_policy

ROUTE = "/api/v1/route"
Api = Callable[..., Any]


def test_it_answers_with_the_decision_and_logs_exactly_one_row(api: Api) -> None:
    response = api(ROUTE, {"messages": USER_MESSAGE("What is the capital of France?"), "user": "u1"})
    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) >= {
        "decision_id",
        "model",
        "provider",
        "strategy",
        "policy",
        "predictor_version",
        "candidates",
        "fallbacks",
        "explanation",
    }
    assert body["policy"] == {"slug": "default", "version": 1}
    assert body["predictor_version"] == "prior"
    assert {c["model"] for c in body["candidates"]} == {"small", "medium", "large"}
    for candidate in body["candidates"]:
        assert set(candidate) >= {"predictions", "utility", "eligible", "excluded_reason"}
        assert set(candidate["predictions"]) >= {
            "quality",
            "uncertainty",
            "output_tokens",
            "latency_ms",
            "cost_usd",
        }
    row = DecisionLog.objects.get()
    assert str(row.id) == body["decision_id"]
    assert row.chosen_model == body["model"] and row.user == "u1"
    assert row.candidates == body["candidates"]
    assert row.features["n_messages"] == 1.0 and row.feature_schema >= 1
    assert len(row.row_hash) == 64


def test_request_overrides_narrow_the_policy(api: Api) -> None:
    cheapest = api(ROUTE, {"messages": USER_MESSAGE("hello"), "alpha": 0.0}).json()
    best = api(ROUTE, {"messages": USER_MESSAGE("hello"), "alpha": 1.0}).json()
    assert cheapest["model"] == "small"
    assert best["model"] == "large"
    subset = api(
        ROUTE, {"messages": USER_MESSAGE("hello"), "alpha": 1.0, "models": ["small", "medium"]}
    ).json()
    assert subset["model"] == "medium"
    excluded = {c["model"]: c["excluded_reason"] for c in subset["candidates"]}
    assert excluded["large"] == "not in the request's models"


def test_the_api_keys_default_policy_applies_and_an_explicit_policy_wins(api: Api) -> None:
    make_policy("premium", strategy="pre_inference", alpha=1.0)
    _, key = make_api_key("premium-app", policy="premium")
    assert api(ROUTE, {"messages": USER_MESSAGE("hi")}, key=key).json()["policy"]["slug"] == "premium"
    assert (
        api(ROUTE, {"messages": USER_MESSAGE("hi"), "policy": "default"}, key=key).json()["policy"]["slug"]
        == "default"
    )


def test_when_nothing_is_eligible_it_answers_422_and_still_logs_the_decision(api: Api) -> None:
    response = api(ROUTE, {"messages": USER_MESSAGE("hi"), "max_cost_usd": 0.0})
    assert response.status_code == 422
    body = response.json()["error"]
    assert body["code"] == "no_eligible_model"
    row = DecisionLog.objects.get(id=body["decision_id"])
    assert row.chosen_model == ""
    assert all(not c["eligible"] for c in row.candidates)


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({}, 400, "invalid_request"),
        ({"messages": []}, 400, "invalid_request"),
        ({"messages": "hello"}, 400, "invalid_request"),
        ({"messages": [{"role": "user"}]}, 400, "invalid_request"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, 400, "invalid_request"),
        ({"messages": [{"role": "user", "content": 42}]}, 400, "invalid_request"),
        ({"messages": [{"role": "user", "content": "x"}], "alpha": 1.5}, 400, "invalid_request"),
        ({"messages": [{"role": "user", "content": "x"}], "alpha": -0.1}, 400, "invalid_request"),
        ({"messages": [{"role": "user", "content": "x"}], "alpha": "high"}, 400, "invalid_request"),
        ({"messages": [{"role": "user", "content": "x"}], "max_cost_usd": -1}, 400, "invalid_request"),
        ({"messages": [{"role": "user", "content": "x"}], "models": "small"}, 400, "invalid_request"),
        ({"messages": [{"role": "user", "content": "x"}], "models": ["nope"]}, 400, "unknown_model"),
        ({"messages": [{"role": "user", "content": "x"}], "models": []}, 400, "invalid_request"),
        ({"messages": [{"role": "user", "content": "x"}], "metadata": [1]}, 400, "invalid_request"),
        ({"messages": [{"role": "user", "content": "x"}], "policy": "no-such-policy"}, 404, "unknown_policy"),
        ([1, 2, 3], 400, "invalid_request"),
        ("{broken", 400, "invalid_json"),
    ],
)
def test_bad_input_gets_a_json_4xx_and_no_decision(api: Api, body: Any, status: int, code: str) -> None:
    response = api(ROUTE, body)
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert error["code"] == code and error["message"]
    assert not DecisionLog.objects.exists()


def test_a_non_json_body_is_415(api_key: str) -> None:
    response = Client().post(
        ROUTE, data="messages=hi", content_type="text/plain", HTTP_AUTHORIZATION=f"Bearer {api_key}"
    )
    assert response.status_code == 415
    assert response.json()["error"]["code"] == "unsupported_media_type"


def test_a_body_over_one_megabyte_is_413(api: Api) -> None:
    response = api(ROUTE, {"messages": USER_MESSAGE("x" * (1024 * 1024 + 10))})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    # the OpenAI-compatible endpoint answers in OpenAI's error shape
    response = api(
        "/v1/chat/completions", {"model": "scope/auto", "messages": USER_MESSAGE("x" * 1024 * 1025)}
    )
    assert response.status_code == 413
    error = response.json()["error"]
    assert error["code"] == "payload_too_large" and error["type"] == "invalid_request_error"
    assert "param" in error and "message" in error


def test_a_raised_body_limit_raises_djangos_own_cap_too() -> None:
    from tests.scope_site.test_site import run_manage

    shown = run_manage(
        "shell", "-v0", "-c",
        "from django.conf import settings; print(settings.DATA_UPLOAD_MAX_MEMORY_SIZE)",
        env={"SCOPE_MAX_BODY_BYTES": "3000000"},
    )  # fmt: skip
    assert shown.stdout.strip() == "3000000", shown.stderr


@pytest.mark.parametrize("header", [None, "Bearer", "Bearer wrong.key", "Basic dXNlcjpwYXNz", "Bearer abc"])
def test_missing_or_wrong_keys_get_401(catalog: Any, header: str | None) -> None:
    extra: dict[str, Any] = {"HTTP_AUTHORIZATION": header} if header else {}
    response = Client().post(
        ROUTE, data=json.dumps({"messages": USER_MESSAGE("hi")}), content_type="application/json", **extra
    )
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthenticated"


def test_a_revoked_or_inactive_key_gets_401(api: Api) -> None:
    row, key = make_api_key("soon-revoked")
    ApiKey.objects.filter(pk=row.pk).update(revoked=True)
    assert api(ROUTE, {"messages": USER_MESSAGE("hi")}, key=key).status_code == 401
    row2, key2 = make_api_key("inactive")
    ApiKey.objects.filter(pk=row2.pk).update(is_active=False)
    assert api(ROUTE, {"messages": USER_MESSAGE("hi")}, key=key2).status_code == 401


def test_the_key_is_stored_hashed_only(api_key: str) -> None:
    row = ApiKey.objects.get(name="tests")
    assert api_key not in row.hashed_key and row.hashed_key.startswith("sha512$$")
    assert api_key.startswith(row.prefix + ".")


@requires_postgres
@pytest.mark.django_db(transaction=True)
def test_forty_concurrent_requests_get_forty_answers_and_forty_rows() -> None:
    make_catalog()
    make_policy("default")
    _, key = make_api_key("concurrent")
    statuses: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(40)

    def call(i: int) -> None:
        try:
            barrier.wait()
            response = Client().post(
                ROUTE,
                data=json.dumps({"messages": USER_MESSAGE(f"question {i}"), "user": f"user-{i}"}),
                content_type="application/json",
                HTTP_AUTHORIZATION=f"Bearer {key}",
            )
            with lock:
                statuses.append(response.status_code)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=call, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [200] * 40
    assert DecisionLog.objects.count() == 40
    assert DecisionLog.objects.values("user").distinct().count() == 40


def test_an_image_in_the_messages_routes_to_a_vision_model(api: Api) -> None:
    make_policy("cheap", strategy="hybrid", alpha=0.0)
    image = {"type": "image_url", "image_url": {"url": "https://example.invalid/cat.png"}}
    body = {
        "policy": "cheap",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}, image]}],
    }
    response = api(ROUTE, body)
    assert response.status_code == 200, response.content
    assert response.json()["model"] == "large"
    reasons = {c["model"]: c["excluded_reason"] for c in response.json()["candidates"]}
    assert reasons["small"] == "missing capability: vision"


@pytest.mark.parametrize(("field", "known"), [("max_cost", "max_cost_usd"), ("aplha", "alpha")])
def test_a_misspelt_field_is_a_400_naming_it_and_the_known_ones(api: Api, field: str, known: str) -> None:
    response = api(ROUTE, {"messages": USER_MESSAGE("hi"), field: 0.0001})
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert f"unknown field {field!r} (did you mean {known!r}?)" in error["message"]
    assert (
        "known fields: messages, policy, alpha, max_cost_usd, max_latency_ms, models, user, metadata"
        in (error["message"])
    )
    assert not DecisionLog.objects.exists()


def test_the_schema_says_the_route_body_takes_no_other_fields(client: Client) -> None:
    schema = client.get("/api/schema/?format=json").json()
    assert schema["components"]["schemas"]["RouteInputRequest"]["additionalProperties"] is False


def test_an_empty_models_list_is_refused_not_read_as_every_model(api: Api, client: Client) -> None:
    response = api(ROUTE, {"messages": USER_MESSAGE("hi"), "models": []})
    assert response.status_code == 400, response.content
    assert "models: must name at least one model" in response.json()["error"]["message"]
    assert not DecisionLog.objects.exists()
    schema = client.get("/api/schema/?format=json").json()
    assert schema["components"]["schemas"]["RouteInputRequest"]["properties"]["models"]["minItems"] == 1


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"alpha": "0.5"}, "alpha"),
        ({"user": 5}, "user"),
        ({"models": [5]}, "models"),
        ({"policy": 7}, "policy"),
    ],
)
def test_values_of_the_wrong_json_type_are_refused_not_coerced(
    api: Any, extra: dict[str, Any], field: str
) -> None:
    response = api("/api/v1/route", {"messages": [{"role": "user", "content": "hi"}], **extra})
    assert response.status_code == 400, response.content
    assert field in response.json()["error"]["message"]


def test_a_policy_whose_strategy_this_server_does_not_define_is_a_503_naming_it(
    api: Api, settings: Any
) -> None:
    from routing.selectors import catalog_invalidate
    from routing.services.route import _strategies

    settings.SCOPE_EXTRA_STRATEGIES = ["longest-name=tests.routing.custom_strategy.LongestNameStrategy"]
    make_policy("custom", strategy="longest-name")
    settings.SCOPE_EXTRA_STRATEGIES = []  # the web started without it
    _strategies.cache_clear()
    catalog_invalidate()
    response = api("/api/v1/route", {"messages": USER_MESSAGE("hi"), "policy": "custom"})
    assert response.status_code == 503, response.content
    error = response.json()["error"]
    assert error["code"] == "unknown_strategy" and "SCOPE_EXTRA_STRATEGIES" in error["message"]
    chat = api("/v1/chat/completions", {"model": "scope/custom", "messages": USER_MESSAGE("hi")})
    assert chat.status_code == 503 and chat.json()["error"]["code"] == "unknown_strategy"


def test_without_a_default_policy_the_404_says_the_request_named_none(api: Api, settings: Any) -> None:
    settings.SCOPE_DEFAULT_POLICY = "house"  # names no published policy
    response = api("/api/v1/route", {"messages": USER_MESSAGE("hi")})
    assert response.status_code == 404
    assert "SCOPE_DEFAULT_POLICY ('house') applies" in response.json()["error"]["message"]
    named = api("/api/v1/route", {"messages": USER_MESSAGE("hi"), "policy": "house"})
    assert named.json()["error"]["message"] == "Unknown policy 'house'"
