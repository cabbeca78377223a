"""Fallbacks, retries, permanent errors and outcomes through POST /v1/chat/completions (test client)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from feedback.models import Outcome
from providers import http as provider_http
from providers.models import Provider
from routing.models import DecisionLog
from tests.factories import make_policy
from tests.providers.conftest import upstream_model
from tests.upstreams import Fail, FakeUpstream, Hang, Reply, Stream

Api = Callable[..., Any]
HELLO = [{"role": "user", "content": "Say hello to the test suite"}]


@pytest.fixture
def two_upstreams(api: Api) -> Iterator[tuple[FakeUpstream, FakeUpstream]]:
    """`first` (tier 5) ranks above `second` (tier 3) in policy `pair`: same price, higher prior quality."""
    with FakeUpstream() as first, FakeUpstream() as second:
        upstream_model("first", first, tier=5)
        upstream_model("second", second, tier=3)
        make_policy("pair", strategy="hybrid", alpha=0.5, allowed_models=["first", "second"])
        yield first, second


def chat(api: Api, model: str = "scope/pair", **extra: Any) -> Any:
    return api("/v1/chat/completions", {"model": model, "messages": HELLO, **extra})


def outcome_for(response: Any) -> Outcome:
    return Outcome.objects.get(decision_id=response["X-Scope-Decision-Id"])


def test_the_chosen_model_answers_with_its_headers_and_outcome(api: Api, two_upstreams: Any) -> None:
    first, _ = two_upstreams
    first.script(Reply("Hello!", prompt_tokens=12, completion_tokens=3))
    response = chat(api)
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["object"] == "chat.completion" and body["model"] == "first"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "Hello!"}
    assert body["usage"] == {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}
    assert response["X-Scope-Model"] == "first" and "X-Scope-Fallbacks" not in response
    row = DecisionLog.objects.get(pk=response["X-Scope-Decision-Id"])
    assert row.kind == "chat" and row.chosen_model == "first" and row.fallbacks == ["second"]
    outcome = outcome_for(response)
    assert (outcome.status, outcome.input_tokens, outcome.output_tokens, outcome.tokens_estimated) == (
        "ok",
        12,
        3,
        False,
    )
    # first costs $1 / $2 per Mtok in / out
    assert float(outcome.cost_usd) == pytest.approx((12 * 1 + 3 * 2) / 1e6)
    assert outcome.latency_ms is not None and outcome.attempts[-1]["result"] == "ok"


def test_a_failing_first_model_falls_back_and_the_headers_say_why(api: Api, two_upstreams: Any) -> None:
    first, second = two_upstreams
    first.script(Fail(500), Fail(502))  # one try + one retry, both fail
    second.script(Reply("from second"))
    response = chat(api)
    assert response.status_code == 200, response.content
    assert response["X-Scope-Model"] == "second"
    assert response["X-Scope-Fallbacks"] == "first (upstream_error 502)"
    assert response.json()["choices"][0]["message"]["content"] == "from second"
    assert len(first.requests) == 2  # retried once on the same model (transient 5xx)
    attempts = outcome_for(response).attempts
    assert [(a["model"], a["result"], a.get("status")) for a in attempts] == [
        ("first", "error", 500),
        ("first", "error", 502),
        ("second", "ok", None),
    ]


def test_a_timeout_moves_to_the_next_model_without_retrying(api: Api, two_upstreams: Any) -> None:
    first, second = two_upstreams
    first.script(Hang(2.0))
    response = chat(api)
    assert response.status_code == 200 and response["X-Scope-Model"] == "second"
    assert response["X-Scope-Fallbacks"] == "first (timeout)"
    assert len(first.requests) == 1
    timed_out = outcome_for(response).attempts[0]
    # the read timeout is 0.5 s
    assert timed_out["error_class"] == "timeout" and 450 <= timed_out["latency_ms"] < 1500


def test_retry_after_is_honoured_on_the_same_model(api: Api, two_upstreams: Any) -> None:
    first, second = two_upstreams
    first.script(Fail(429, retry_after="0.4"), Reply("after waiting"))
    started = time.monotonic()
    response = chat(api)
    elapsed = time.monotonic() - started
    assert response.status_code == 200 and response["X-Scope-Model"] == "first"
    assert elapsed >= 0.4 and second.requests == []
    assert outcome_for(response).attempts[0]["retry_after_s"] == 0.4


def test_a_retry_after_longer_than_we_wait_falls_back_at_once(api: Api, two_upstreams: Any) -> None:
    first, second = two_upstreams
    first.script(Fail(429, retry_after="30"))
    started = time.monotonic()
    response = chat(api)
    assert response["X-Scope-Model"] == "second" and time.monotonic() - started < 10
    assert len(first.requests) == 1


def test_a_permanent_auth_error_is_not_retried_but_falls_back(api: Api, two_upstreams: Any) -> None:
    first, second = two_upstreams
    first.script(Fail(401, message="bad key"))
    response = chat(api)
    assert response.status_code == 200 and response["X-Scope-Model"] == "second"
    assert response["X-Scope-Fallbacks"] == "first (auth 401)"
    assert len(first.requests) == 1


def test_a_request_the_upstream_rejects_as_bad_is_a_400_and_not_retried_anywhere(
    api: Api, two_upstreams: Any
) -> None:
    first, second = two_upstreams
    first.script(Fail(400, message="max_tokens is too large", param="max_tokens"))
    response = chat(api)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "upstream_rejected_request"
    assert "max_tokens is too large" in error["message"] and error["param"] == "max_tokens"
    assert len(first.requests) == 1 and second.requests == []
    assert outcome_for(response).status == "error"


@pytest.mark.parametrize("stream", [False, True])
def test_an_upstream_400_keeps_its_param_and_message(api: Api, two_upstreams: Any, stream: bool) -> None:
    first, _ = two_upstreams
    first.script(Fail(400, message="messages[0] is not valid", param="messages"))
    response = chat(api, stream=stream)
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["param"] == "messages" and "messages[0] is not valid" in error["message"]


def test_when_every_model_fails_the_answer_is_a_503_with_the_decision(api: Api, two_upstreams: Any) -> None:
    first, second = two_upstreams
    first.default = second.default = Fail(503)
    response = chat(api)
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["type"] == "api_error" and error["code"] == "all_models_failed"
    assert response["X-Scope-Fallbacks"] == "first (upstream_error 503), second (upstream_error 503)"
    outcome = outcome_for(response)
    assert outcome.status == "error" and float(outcome.cost_usd) == 0.0
    assert DecisionLog.objects.filter(pk=response["X-Scope-Decision-Id"]).count() == 1


def test_missing_usage_is_estimated_and_marked(api: Api, two_upstreams: Any) -> None:
    first, _ = two_upstreams
    first.script(Reply("one two three four five six seven eight", usage=False))
    response = chat(api)
    outcome = outcome_for(response)
    assert outcome.tokens_estimated and outcome.input_tokens > 0 and outcome.output_tokens > 0
    assert response.json()["scope"]["tokens_estimated"] is True


def test_a_concrete_model_is_passed_through_and_logged(api: Api, two_upstreams: Any) -> None:
    first, second = two_upstreams
    second.script(Reply("direct"))
    response = chat(api, model="second")
    assert response.status_code == 200 and response["X-Scope-Model"] == "second"
    row = DecisionLog.objects.get(pk=response["X-Scope-Decision-Id"])
    assert row.strategy == "passthrough" and row.chosen_model == "second" and row.fallbacks == []
    assert first.requests == []


@pytest.mark.parametrize(
    ("scope", "param"),
    [
        ({"models": ["first"], "max_cost_usd": 0}, "scope.max_cost_usd"),
        ({"models": ["first"]}, "scope.models"),
        ({"alpha": 1}, "scope.alpha"),
    ],
)
def test_routing_options_with_a_concrete_model_are_a_400_naming_the_option(
    api: Api, two_upstreams: Any, scope: dict[str, Any], param: str
) -> None:
    first, second = two_upstreams
    response = chat(api, model="second", scope=scope)
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert "scope/<policy>" in error["message"] and "'second'" in error["message"]
    assert first.requests == second.requests == [] and not DecisionLog.objects.exists()
    assert chat(api, model="second", scope={}).status_code == 200


@pytest.mark.parametrize("field", ["max_completion_tokens", "max_tokens"])
@pytest.mark.parametrize("stream", [False, True])
def test_the_output_token_limit_reaches_the_upstream_in_the_field_the_client_used(
    api: Api, two_upstreams: Any, field: str, stream: bool
) -> None:
    first, _ = two_upstreams
    limit: dict[str, Any] = {field: 64}
    response = chat(api, stream=stream, **limit)
    assert response.status_code == 200, response.content
    if stream:
        b"".join(response.streaming_content)
    sent = first.requests[0].body
    other = "max_tokens" if field == "max_completion_tokens" else "max_completion_tokens"
    assert sent[field] == 64 and other not in sent


@pytest.mark.parametrize("field", ["max_completion_tokens", "max_tokens"])
def test_either_output_token_limit_counts_against_the_context_window(
    api: Api, two_upstreams: Any, field: str
) -> None:
    limit: dict[str, Any] = {field: 40_000}  # both models have a 32k context window
    response = chat(api, **limit)
    assert response.status_code == 422, response.content
    assert all(not up.requests for up in two_upstreams)


def test_simulated_catalog_answers_and_says_so(api: Api) -> None:
    response = chat(api, model="scope/auto")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["scope_simulated"] is True and body["system_fingerprint"] == "scope-simulated"
    assert body["model"] in {"small", "medium", "large"} and body["choices"][0]["message"]["content"]


def test_provider_calls_run_outside_any_transaction(
    transactional_db: Any, api: Api, two_upstreams: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from django.db import connection

    seen: list[bool] = []
    real_post = provider_http.http_post

    def watching_post(*args: Any, **kwargs: Any) -> Any:
        seen.append(connection.in_atomic_block)
        return real_post(*args, **kwargs)

    monkeypatch.setattr("providers.adapters.openai_compatible.http_post", watching_post)
    assert chat(api).status_code == 200
    assert seen == [False]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": HELLO}, "model"),
        ({"model": 123, "messages": HELLO}, "model"),
        ({"model": "scope/", "messages": HELLO}, "model"),
        ({"model": "scope/auto"}, "messages"),
        ({"model": "scope/auto", "messages": "hi"}, "messages"),
        ({"model": "scope/auto", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"model": "scope/auto", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"model": "scope/auto", "messages": HELLO, "temperature": 7}, "temperature"),
        ({"model": "scope/auto", "messages": HELLO, "max_tokens": 0}, "max_tokens"),
        ({"model": "scope/auto", "messages": HELLO, "n": 3}, "n"),
        ({"model": "scope/auto", "messages": HELLO, "stream": "yes"}, "stream"),
        ({"model": "scope/auto", "messages": HELLO, "scope": {"alpha": 2}}, "scope.alpha"),
        ({"model": "scope/auto", "messages": HELLO, "scope": {"max_cost_usd": "1"}}, "scope.max_cost_usd"),
        ({"model": "scope/auto", "messages": HELLO, "scope": {"bogus": 1}}, "scope.bogus"),
        ({"model": "scope/auto", "messages": HELLO, "scope": {"models": []}}, "scope.models"),
        ([1, 2], ""),
    ],
)
def test_bad_input_gets_an_openai_shaped_400(api: Api, body: Any, param: str) -> None:
    response = api("/v1/chat/completions", body)
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    assert error["param"] == (param or None)


def test_a_misspelt_scope_option_is_refused_naming_it_and_the_known_ones(api: Api) -> None:
    body = {"model": "scope/auto", "messages": HELLO, "scope": {"max_cost": 0.001}}
    response = api("/v1/chat/completions", body)
    assert response.status_code == 400, response.content
    message = response.json()["error"]["message"]
    assert "'max_cost' (did you mean 'max_cost_usd'?)" in message
    assert "known fields: alpha, max_cost_usd, max_latency_ms, models" in message
    assert not DecisionLog.objects.exists()


def test_openai_fields_scope_does_not_use_are_still_accepted(api: Api) -> None:
    body = {
        "model": "scope/auto",
        "messages": HELLO,
        "scope": {"alpha": 0.5, "max_cost_usd": 1, "max_latency_ms": 9000},
        "store": False,
        "modalities": ["text"],
        "service_tier": "auto",
        "prediction": None,
        "web_search_options": {},
    }
    assert api("/v1/chat/completions", body).status_code == 200


@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [
        ("{not json", 400, "invalid_json"),
        ({"model": "no-such-model", "messages": HELLO}, 404, "model_not_found"),
        ({"model": "scope/no-such-policy", "messages": HELLO}, 404, "unknown_policy"),
    ],
)
def test_unknown_names_and_broken_json_are_4xx(api: Api, raw: Any, status: int, code: str) -> None:
    response = api("/v1/chat/completions", raw)
    assert response.status_code == status, response.content
    assert response.json()["error"]["code"] == code


def test_a_bad_key_is_a_401_in_openai_shape(api: Api) -> None:
    response = api("/v1/chat/completions", {"model": "scope/auto", "messages": HELLO}, key="sk-wrong")
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"
    missing = api("/v1/chat/completions", {"model": "scope/auto", "messages": HELLO}, key=None)
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "missing_api_key"


def test_an_anthropic_model_answers_in_openai_shape(api: Api, anthropic_upstream: FakeUpstream) -> None:
    upstream_model("claude-test", anthropic_upstream)
    anthropic_upstream.script(Reply("Bonjour", prompt_tokens=9, completion_tokens=2))
    messages = [{"role": "system", "content": "Answer in French."}, *HELLO]
    response = api("/v1/chat/completions", {"model": "claude-test", "messages": messages, "max_tokens": 50})
    assert response.status_code == 200, response.content
    body = response.json()
    assert (
        body["choices"][0]["message"]["content"] == "Bonjour"
        and body["choices"][0]["finish_reason"] == "stop"
    )
    assert body["usage"]["prompt_tokens"] == 9 and body["usage"]["completion_tokens"] == 2
    sent = anthropic_upstream.requests[0].body
    assert (
        sent["system"] == "Answer in French."
        and sent["max_tokens"] == 50
        and sent["model"] == "claude-test-upstream"
    )


CODE_INTERPRETER = [{"type": "code_interpreter"}]


@pytest.mark.parametrize("stream", [False, True])
def test_a_tool_type_the_anthropic_model_cannot_take_is_a_400_naming_it(
    api: Api, anthropic_upstream: FakeUpstream, stream: bool
) -> None:
    upstream_model("claude-test", anthropic_upstream)
    for _ in range(4):  # more than SCOPE_CIRCUIT_FAILURES: the model's circuit must not count them
        response = chat(api, model="claude-test", tools=CODE_INTERPRETER, stream=stream)
        assert response.status_code == 400, response.content
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error" and error["code"] == "invalid_request"
        assert error["param"] == "tools[0].type" and "'code_interpreter'" in error["message"]
        assert outcome_for(response).status == "error"
    assert anthropic_upstream.requests == []
    assert chat(api, model="claude-test").status_code == 200


def test_a_tool_type_one_model_cannot_take_falls_back_to_a_model_that_can(
    api: Api, anthropic_upstream: FakeUpstream
) -> None:
    from providers.models import LLMModel

    with FakeUpstream() as gpt:
        upstream_model("claude-test", anthropic_upstream, tier=5)
        upstream_model("gpt-test", gpt, tier=3)
        LLMModel.objects.filter(name__in=["claude-test", "gpt-test"]).update(capabilities=["tools"])
        make_policy("mixed", strategy="hybrid", alpha=0.5, allowed_models=["claude-test", "gpt-test"])
        response = chat(api, model="scope/mixed", tools=CODE_INTERPRETER)
        assert response.status_code == 200, response.content
        assert response["X-Scope-Model"] == "gpt-test"
        assert response["X-Scope-Fallbacks"] == "claude-test (unsupported)"
        assert gpt.requests[0].body["tools"] == CODE_INTERPRETER


def test_an_anthropic_stream_is_relayed_as_chat_chunks(api: Api, anthropic_upstream: FakeUpstream) -> None:
    upstream_model("claude-test", anthropic_upstream)
    anthropic_upstream.script(Stream(pieces=("Bon", "jour")))
    response = api(
        "/v1/chat/completions",
        {
            "model": "claude-test",
            "messages": HELLO,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    assert response.status_code == 200 and response["Content-Type"] == "text/event-stream"
    frames = b"".join(response.streaming_content).decode().split("\n\n")
    assert frames[-2] == "data: [DONE]"
    chunks = [json.loads(f.removeprefix("data: ")) for f in frames[:-2]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == "Bonjour"
    assert chunks[-1]["usage"] == {"prompt_tokens": 11, "completion_tokens": 2, "total_tokens": 13}
    outcome = Outcome.objects.get(decision_id=response["X-Scope-Decision-Id"])
    assert outcome.status == "ok" and not outcome.tokens_estimated and outcome.ttft_ms is not None


def test_all_attempts_together_stay_within_the_execution_budget(
    api: Api, two_upstreams: Any, settings: Any
) -> None:
    settings.SCOPE_EXECUTION_BUDGET_S = 1.5
    first, second = two_upstreams
    # `second` would wait 3 s on its own: only the budget's remainder (~1 s) can cut it short
    Provider.objects.filter(models__name="second").update(read_timeout_s=3.0)
    first.script(Hang(4.0))  # times out after its 0.5 s read timeout
    second.script(Hang(4.0))
    started = time.monotonic()
    response = chat(api)
    assert response.status_code == 503 and time.monotonic() - started < 2.5
    assert response.json()["error"]["code"] == "all_models_failed"
    attempts = outcome_for(response).attempts
    assert [a["error_class"] for a in attempts] == ["timeout", "timeout"]
    assert attempts[1]["latency_ms"] < 1400  # capped by the budget, not its own 3 s timeout


def test_a_client_that_hangs_up_mid_stream_leaves_a_partial_outcome(transactional_db: Any, api: Api) -> None:
    response = api("/v1/chat/completions", {"model": "large", "messages": HELLO, "stream": True})
    frames = iter(response.streaming_content)
    assert next(frames).startswith(b"data: ")
    response.close()  # the client went away: the server stops iterating and closes the response
    outcome = Outcome.objects.get(decision_id=response["X-Scope-Decision-Id"])
    assert outcome.status == "partial" and outcome.error_class == "client_disconnected"


def test_a_model_that_answers_on_its_retry_is_not_listed_as_a_fallback(api: Api, two_upstreams: Any) -> None:
    first, second = two_upstreams
    first.script(Fail(503), Reply("second try worked"))
    response = chat(api)
    assert response["X-Scope-Model"] == "first" and "X-Scope-Fallbacks" not in response
    assert [a["result"] for a in outcome_for(response).attempts] == ["error", "ok"]
