"""End to end over real HTTP: the official `openai` client against SCOPE under a live server."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import openai
import pytest
import requests

from feedback.models import Outcome
from routing.models import DecisionLog
from tests.factories import make_policy
from tests.providers.conftest import upstream_model
from tests.upstreams import Fail, FakeUpstream, Reply, Stream

HELLO: Any = [{"role": "user", "content": "Write one friendly sentence about routers."}]


def wait_for_outcome(decision_id: str, timeout: float = 3.0) -> Outcome:
    """Stream outcomes are written when the server finishes the stream, just after the client's last byte."""
    deadline = time.monotonic() + timeout
    while True:
        row = Outcome.objects.filter(decision_id=uuid.UUID(decision_id)).first()
        if row is not None or time.monotonic() > deadline:
            assert row is not None, "no outcome recorded"
            time.sleep(0.05)  # let the live server finish the request before the test's teardown flushes
            return row
        time.sleep(0.02)


def test_plain_answer_from_the_simulated_catalog(openai_client: openai.OpenAI) -> None:
    raw = openai_client.chat.completions.with_raw_response.create(model="scope/auto", messages=HELLO)
    completion = raw.parse()
    assert completion.choices[0].message.content and completion.choices[0].finish_reason in {"stop", "length"}
    assert (
        completion.model in {"small", "medium", "large"}
        and completion.system_fingerprint == "scope-simulated"
    )
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    assert raw.headers["x-scope-model"] == completion.model
    row = DecisionLog.objects.get(pk=raw.headers["x-scope-decision-id"])
    assert row.kind == "chat" and row.chosen_model == completion.model


def test_streamed_answer_with_a_final_usage_chunk(openai_client: openai.OpenAI) -> None:
    raw = openai_client.chat.completions.with_raw_response.create(
        model="scope/default", messages=HELLO, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("[simulated ")
    assert (
        chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    )
    assert any(c.choices and c.choices[0].finish_reason == "stop" for c in chunks)
    outcome = wait_for_outcome(raw.headers["x-scope-decision-id"])
    assert outcome.status == "ok" and outcome.ttft_ms is not None and outcome.latency_ms is not None
    assert outcome.ttft_ms <= outcome.latency_ms


@pytest.fixture
def broken_first(catalog: Any) -> None:
    """A simulated model that always fails ranks first in policy `demo-fallback`."""
    upstream_model("always-down", None, tier=5, sim_profile={"failure_rate": 1.0, "fail_status": 503})
    upstream_model("steady", None, tier=3, sim_profile={"failure_rate": 0.0, "latency_ms": 20})
    make_policy("demo-fallback", strategy="hybrid", alpha=0.5, allowed_models=["always-down", "steady"])


@pytest.mark.parametrize("stream", [False, True])
def test_a_failing_provider_first_in_line_answers_from_the_next_model(
    openai_client: openai.OpenAI, broken_first: None, stream: bool
) -> None:
    raw = openai_client.chat.completions.with_raw_response.create(
        model="scope/demo-fallback", messages=HELLO, stream=stream
    )
    assert raw.headers["x-scope-model"] == "steady"
    assert raw.headers["x-scope-fallbacks"] == "always-down (upstream_error 503)"
    parsed: Any = raw.parse()
    if stream:
        text = "".join(c.choices[0].delta.content or "" for c in parsed if c.choices)
        assert "steady" in text
        wait_for_outcome(raw.headers["x-scope-decision-id"])
    else:
        assert parsed.model == "steady"


@pytest.fixture
def streaming_upstream(catalog: Any) -> Iterator[FakeUpstream]:
    with FakeUpstream() as upstream:
        upstream_model("streamer", upstream, tier=5, read_timeout_s=0.3)
        yield upstream


def test_a_stream_failing_before_its_first_chunk_falls_back(
    openai_client: openai.OpenAI, streaming_upstream: FakeUpstream
) -> None:
    upstream_model("backup", None, tier=3)
    make_policy("stream-pair", strategy="hybrid", alpha=0.5, allowed_models=["streamer", "backup"])
    streaming_upstream.script(Fail(500), Fail(500))
    raw = openai_client.chat.completions.with_raw_response.create(
        model="scope/stream-pair", messages=HELLO, stream=True
    )
    assert raw.headers["x-scope-model"] == "backup" and raw.headers["x-scope-fallbacks"].startswith(
        "streamer ("
    )
    assert "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    # the server writes the outcome after the last frame: let it finish before the test's flush
    assert wait_for_outcome(raw.headers["x-scope-decision-id"]).model_name == "backup"


def test_a_stream_cut_midway_ends_with_an_error_and_no_done(
    live_server: Any, api_key: str, streaming_upstream: FakeUpstream
) -> None:
    streaming_upstream.script(Stream(pieces=("The ", "answer ", "is ", "cut"), cut_after=2))
    response = requests.post(
        f"{live_server.url}/v1/chat/completions",
        json={"model": "streamer", "messages": HELLO, "stream": True},
        headers={"Authorization": f"Bearer {api_key}"},
        timeout=10,
    )
    assert response.status_code == 200 and response.headers["X-Scope-Model"] == "streamer"
    frames = [f for f in response.text.split("\n\n") if f]
    assert "data: [DONE]" not in response.text
    assert '"error"' in frames[-1] and "stream_cut" in frames[-1]
    assert "The " in response.text and "answer " in response.text
    outcome = wait_for_outcome(response.headers["X-Scope-Decision-Id"])
    assert outcome.status == "partial" and outcome.error_class == "stream_cut"
    assert outcome.output_tokens > 0 and outcome.tokens_estimated and outcome.ttft_ms is not None


def test_the_openai_client_raises_on_a_cut_stream(
    openai_client: openai.OpenAI, streaming_upstream: FakeUpstream
) -> None:
    streaming_upstream.script(Stream(pieces=("a", "b", "c"), cut_after=1))
    received = []
    raw = openai_client.chat.completions.with_raw_response.create(
        model="streamer", messages=HELLO, stream=True
    )
    with pytest.raises(openai.APIError):
        for chunk in raw.parse():
            received.append(chunk)
    assert received  # the part that did arrive
    assert wait_for_outcome(raw.headers["x-scope-decision-id"]).status == "partial"


def test_a_slow_stream_is_relayed_whole(
    openai_client: openai.OpenAI, streaming_upstream: FakeUpstream
) -> None:
    streaming_upstream.script(Stream(pieces=("slow ", "but ", "steady"), delay=0.1, first_delay=0.15))
    raw = openai_client.chat.completions.with_raw_response.create(
        model="streamer", messages=HELLO, stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    assert text == "slow but steady"
    outcome = wait_for_outcome(raw.headers["x-scope-decision-id"])
    assert outcome.status == "ok" and outcome.ttft_ms is not None and outcome.ttft_ms >= 150
    assert outcome.latency_ms is not None and outcome.latency_ms >= 350


def test_models_lists_auto_policies_and_concrete_models(
    openai_client: openai.OpenAI, broken_first: None
) -> None:
    ids = [m.id for m in openai_client.models.list()]
    assert ids[0] == "scope/auto"
    assert {"scope/default", "scope/demo-fallback", "small", "medium", "large", "steady"} <= set(ids)
    assert openai_client.models.retrieve("scope/auto").owned_by == "scope"
    with pytest.raises(openai.NotFoundError):
        openai_client.models.retrieve("nope")


def test_client_errors_arrive_as_openai_exceptions(openai_client: openai.OpenAI, live_server: Any) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        openai_client.chat.completions.create(model="scope/auto", messages=[])
    assert bad.value.status_code == 400 and bad.value.param == "messages"  # type: ignore[attr-defined]
    with pytest.raises(openai.NotFoundError):
        openai_client.chat.completions.create(model="no-such-model", messages=HELLO)
    with (
        openai.OpenAI(
            base_url=f"{live_server.url}/v1", api_key="sk-not-a-scope-key", max_retries=0
        ) as stranger,
        pytest.raises(openai.AuthenticationError),
    ):
        stranger.chat.completions.create(model="scope/auto", messages=HELLO)
    # an endpoint SCOPE does not serve answers in OpenAI's shape too, so the client can read it
    with pytest.raises(openai.NotFoundError) as missing:
        openai_client.embeddings.create(model="scope/auto", input="hi")
    body = missing.value.body
    assert isinstance(body, dict) and body.get("type") == "not_found_error", body
    assert "No such resource: /v1/embeddings" in str(body.get("message"))


def test_logprobs_and_the_fingerprint_of_an_openai_compatible_upstream_reach_the_client(
    openai_client: openai.OpenAI, openai_upstream: FakeUpstream
) -> None:
    upstream_model("gpt-test", openai_upstream)
    openai_upstream.default = Reply("Hello there friend", system_fingerprint="fp_up_1")
    completion = openai_client.chat.completions.create(
        model="gpt-test", messages=HELLO, logprobs=True, top_logprobs=2
    )
    sent = openai_upstream.requests[0].body
    assert sent["logprobs"] is True and sent["top_logprobs"] == 2
    assert completion.system_fingerprint == "fp_up_1"
    logprobs = completion.choices[0].logprobs
    assert logprobs is not None and logprobs.content is not None
    assert [t.token for t in logprobs.content] == ["Hello ", "there ", "friend"]
    assert all(len(t.top_logprobs) == 2 for t in logprobs.content)


def test_streamed_logprobs_and_fingerprint_are_relayed_chunk_by_chunk(
    openai_client: openai.OpenAI, openai_upstream: FakeUpstream
) -> None:
    upstream_model("gpt-test", openai_upstream)
    openai_upstream.default = Reply("Hello there friend", system_fingerprint="fp_up_1")
    raw = openai_client.chat.completions.with_raw_response.create(
        model="gpt-test",
        messages=HELLO,
        logprobs=True,
        top_logprobs=2,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(raw.parse())
    tokens = [
        t.token
        for c in chunks
        if c.choices and c.choices[0].logprobs and c.choices[0].logprobs.content
        for t in c.choices[0].logprobs.content
    ]
    assert tokens == ["Hello ", "there ", "friend"]
    assert {c.system_fingerprint for c in chunks} == {"fp_up_1"}
    wait_for_outcome(raw.headers["x-scope-decision-id"])


def test_an_anthropic_answer_has_no_logprobs_or_fingerprint(
    openai_client: openai.OpenAI, anthropic_upstream: FakeUpstream
) -> None:
    upstream_model("claude-test", anthropic_upstream)
    completion = openai_client.chat.completions.create(model="claude-test", messages=HELLO, logprobs=True)
    assert completion.choices[0].logprobs is None and completion.system_fingerprint is None
