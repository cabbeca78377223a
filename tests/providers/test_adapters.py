from __future__ import annotations

import pytest

from providers.adapters import adapter_for
from providers.adapters.base import ChatRequest, Target
from providers.http import ProviderError, parse_retry_after
from tests.providers.conftest import UPSTREAM_KEY_ENV
from tests.upstreams import Fail, FakeUpstream, Hang, Reply, Stream

REQUEST = ChatRequest(
    messages=({"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}),
    params={"temperature": 1.5},
)


def target(upstream: FakeUpstream, *, read_timeout_s: float = 0.5, key_env: str = UPSTREAM_KEY_ENV) -> Target:
    return Target(
        model="m",
        upstream_model="m-up",
        provider="p",
        kind="openai_compatible" if upstream.style == "openai" else "anthropic",
        base_url=upstream.base_url,
        api_key_env=key_env,
        connect_timeout_s=0.5,
        read_timeout_s=read_timeout_s,
    )


def test_openai_adapter_sends_the_key_and_model_and_reads_usage(openai_upstream: FakeUpstream) -> None:
    openai_upstream.script(Reply("Hi there", prompt_tokens=5, completion_tokens=2))
    done = adapter_for("openai_compatible").complete(target(openai_upstream), REQUEST)
    assert done.message["content"] == "Hi there"
    assert (done.usage.input_tokens, done.usage.output_tokens) == (5, 2)  # type: ignore[union-attr]
    sent = openai_upstream.requests[0]
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == "Bearer sk-upstream-test-secret"
    assert sent.body["model"] == "m-up" and sent.body["temperature"] == 1.5


def test_openai_adapter_streams_until_done_and_keeps_the_usage(openai_upstream: FakeUpstream) -> None:
    openai_upstream.script(Stream(pieces=("a", "b", "c")))
    events = list(adapter_for("openai_compatible").stream(target(openai_upstream), REQUEST))
    assert "".join(e.text for e in events) == "abc"
    assert events[-1].usage is not None and events[-1].usage.output_tokens == 3
    assert openai_upstream.requests[0].body["stream_options"] == {"include_usage": True}


def test_a_stream_closed_before_done_is_reported_as_cut(openai_upstream: FakeUpstream) -> None:
    openai_upstream.script(Stream(pieces=("a", "b", "c"), cut_after=2))
    events = adapter_for("openai_compatible").stream(target(openai_upstream), REQUEST)
    texts = []
    with pytest.raises(ProviderError) as err:
        for event in events:
            texts.append(event.text)
    assert "".join(texts) == "ab"
    assert err.value.error_class == "stream_cut" and not err.value.permanent


def test_a_stalled_stream_times_out(openai_upstream: FakeUpstream) -> None:
    openai_upstream.script(Stream(pieces=("a", "b"), stall_after=1, stall_seconds=1.0))
    with pytest.raises(ProviderError) as err:
        list(adapter_for("openai_compatible").stream(target(openai_upstream, read_timeout_s=0.2), REQUEST))
    assert err.value.error_class == "stream_timeout"


@pytest.mark.parametrize(
    ("action", "permanent", "error_class", "retry_after"),
    [
        (Fail(500), False, "upstream_error", None),
        (Fail(503, retry_after="2"), False, "upstream_error", 2.0),
        (Fail(429, retry_after="0.5"), False, "rate_limited", 0.5),
        (Fail(401), True, "auth", None),
        (Fail(400), True, "bad_request", None),
        (Hang(1.0), False, "timeout", None),
    ],
)
def test_errors_are_classified_permanent_or_transient(
    openai_upstream: FakeUpstream,
    action: Fail | Hang,
    permanent: bool,
    error_class: str,
    retry_after: float | None,
) -> None:
    openai_upstream.script(action)
    with pytest.raises(ProviderError) as err:
        adapter_for("openai_compatible").complete(target(openai_upstream, read_timeout_s=0.2), REQUEST)
    assert (err.value.permanent, err.value.error_class, err.value.retry_after) == (
        permanent,
        error_class,
        retry_after,
    )


def test_a_refused_connection_is_transient() -> None:
    with FakeUpstream() as upstream:
        dead = target(upstream)
    with pytest.raises(ProviderError) as err:
        adapter_for("openai_compatible").complete(dead, REQUEST)
    assert err.value.error_class in {"connection", "connect_timeout"} and not err.value.permanent


def test_a_missing_provider_key_is_a_permanent_config_error(openai_upstream: FakeUpstream) -> None:
    with pytest.raises(ProviderError) as err:
        adapter_for("openai_compatible").complete(
            target(openai_upstream, key_env="SCOPE_TEST_UNSET_KEY"), REQUEST
        )
    assert err.value.permanent and err.value.error_class == "config"
    assert "SCOPE_TEST_UNSET_KEY" in err.value.message and openai_upstream.requests == []


def test_anthropic_adapter_maps_system_prompt_options_and_usage(anthropic_upstream: FakeUpstream) -> None:
    anthropic_upstream.script(Reply("Bonjour", prompt_tokens=9, completion_tokens=3))
    done = adapter_for("anthropic").complete(target(anthropic_upstream), REQUEST)
    assert done.message == {"role": "assistant", "content": "Bonjour"} and done.finish_reason == "stop"
    assert (done.usage.input_tokens, done.usage.output_tokens) == (9, 3)  # type: ignore[union-attr]
    sent = anthropic_upstream.requests[0]
    assert sent.path == "/v1/messages"
    assert sent.headers["x-api-key"] == "sk-upstream-test-secret" and sent.headers["anthropic-version"]
    assert sent.body["system"] == "Be brief."
    assert sent.body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Say hello"}]}]
    assert sent.body["temperature"] == 1.0  # clamped to Anthropic's range
    assert sent.body["max_tokens"] > 0  # required by Anthropic


def test_anthropic_gets_openai_json_modes_as_a_system_instruction(anthropic_upstream: FakeUpstream) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    for response_format, said in (
        ({"type": "json_object"}, "Answer with one JSON object and nothing else"),
        (
            {"type": "json_schema", "json_schema": {"name": "c", "schema": schema}},
            '"city": {"type": "string"}',
        ),
    ):
        anthropic_upstream.script(Reply('{"city": "Paris"}'))
        request = ChatRequest(messages=REQUEST.messages, params={"response_format": response_format})
        adapter_for("anthropic").complete(target(anthropic_upstream), request)
        system = anthropic_upstream.requests[-1].body["system"]
        assert system.startswith("Be brief.\n\n") and said in system
        assert "response_format" not in anthropic_upstream.requests[-1].body


def test_anthropic_stream_events_become_chat_deltas_with_usage(anthropic_upstream: FakeUpstream) -> None:
    anthropic_upstream.script(Stream(pieces=("Hel", "lo")))
    events = list(adapter_for("anthropic").stream(target(anthropic_upstream), REQUEST))
    assert events[0].delta.get("role") == "assistant"
    assert "".join(e.text for e in events) == "Hello"
    assert events[-1].finish_reason == "stop"
    assert events[-1].usage is not None and (
        events[-1].usage.input_tokens,
        events[-1].usage.output_tokens,
    ) == (11, 2)


def test_anthropic_stream_without_message_stop_is_cut(anthropic_upstream: FakeUpstream) -> None:
    anthropic_upstream.script(Stream(pieces=("a", "b", "c"), cut_after=1))
    with pytest.raises(ProviderError) as err:
        list(adapter_for("anthropic").stream(target(anthropic_upstream), REQUEST))
    assert err.value.error_class == "stream_cut"


def test_simulated_answers_are_deterministic_and_labelled(settings: object) -> None:
    sim = Target(
        model="demo",
        upstream_model="demo",
        provider="sim",
        kind="simulated",
        sim_profile={"latency_ms": 100, "tokens_per_s": 100, "failure_rate": 0.0},
    )
    first = adapter_for("simulated").complete(sim, REQUEST)
    again = adapter_for("simulated").complete(sim, REQUEST)
    assert first.message == again.message and first.simulated
    assert "simulated demo" in first.message["content"]
    streamed = "".join(e.text for e in adapter_for("simulated").stream(sim, REQUEST))
    assert streamed == first.message["content"]


def test_simulated_failure_rate_one_always_fails_with_the_profiles_status() -> None:
    sim = Target(
        model="demo",
        upstream_model="demo",
        provider="sim",
        kind="simulated",
        sim_profile={"failure_rate": 1.0, "fail_status": 429},
    )
    with pytest.raises(ProviderError) as err:
        adapter_for("simulated").complete(sim, REQUEST)
    assert err.value.status == 429 and err.value.retry_after == 1.0


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert parse_retry_after("soon") is None
