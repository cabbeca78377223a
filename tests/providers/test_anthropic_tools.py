"""OpenAI tool calling through the Anthropic adapter, against the fake Messages API on loopback.

The fake refuses (400) every body the real API would refuse for tool use — OpenAI-shaped tools,
a tool_result not answering the previous turn's tool_use, results after text, empty text blocks —
so each successful call here also proves the mapped request is one Anthropic accepts.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest
import requests

from feedback.models import Outcome
from providers.adapters import adapter_for
from providers.adapters.base import ChatRequest, StreamEvent
from providers.http import ProviderError
from tests.providers.conftest import upstream_model
from tests.providers.test_adapters import target
from tests.upstreams import FakeUpstream, Reply, Stream, ToolUse

WEATHER: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
            "required": ["city"],
        },
    },
}
CLOCK: dict[str, Any] = {"type": "function", "function": {"name": "get_time"}}  # no parameters at all
ASK: list[dict[str, Any]] = [{"role": "user", "content": "Weather in Paris and Oslo, and the time?"}]


def request(messages: list[dict[str, Any]] = ASK, **params: Any) -> ChatRequest:
    return ChatRequest(messages=tuple(messages), params={"tools": [WEATHER, CLOCK], **params})


def calls_from(events: list[StreamEvent]) -> dict[int, dict[str, Any]]:
    """Fold OpenAI tool-call deltas the way a client does: by index, arguments concatenated."""
    calls: dict[int, dict[str, Any]] = {}
    for event in events:
        for piece in event.delta.get("tool_calls") or []:
            call = calls.setdefault(piece["index"], {"id": None, "name": None, "arguments": ""})
            call["id"] = piece.get("id") or call["id"]
            call["name"] = (piece.get("function") or {}).get("name") or call["name"]
            call["arguments"] += (piece.get("function") or {}).get("arguments", "")
    return calls


def test_tools_become_anthropic_tools_with_an_input_schema(anthropic_upstream: FakeUpstream) -> None:
    adapter_for("anthropic").complete(target(anthropic_upstream), request())
    sent = anthropic_upstream.requests[0].body
    assert sent["tools"] == [
        {
            "name": "get_weather",
            "description": "Current weather for a city",
            "input_schema": WEATHER["function"]["parameters"],
        },
        {"name": "get_time", "input_schema": {"type": "object", "properties": {}}},
    ]
    assert "tool_choice" not in sent  # Anthropic's default is auto, like OpenAI's


@pytest.mark.parametrize(
    ("tool_choice", "parallel", "expected"),
    [
        ("auto", None, {"type": "auto"}),
        ("required", None, {"type": "any"}),
        ("none", None, {"type": "none"}),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            None,
            {"type": "tool", "name": "get_weather"},
        ),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
        ("none", False, {"type": "none"}),
    ],
)
def test_tool_choice_and_parallel_tool_calls_map_to_anthropic_tool_choice(
    anthropic_upstream: FakeUpstream, tool_choice: Any, parallel: bool | None, expected: dict[str, Any]
) -> None:
    params: dict[str, Any] = {}
    if tool_choice is not None:
        params["tool_choice"] = tool_choice
    if parallel is not None:
        params["parallel_tool_calls"] = parallel
    adapter_for("anthropic").complete(target(anthropic_upstream), request(**params))
    assert anthropic_upstream.requests[0].body["tool_choice"] == expected


def test_a_tool_use_answer_becomes_tool_calls(anthropic_upstream: FakeUpstream) -> None:
    anthropic_upstream.script(
        Reply(
            "",
            tool_uses=(
                ToolUse("get_weather", {"city": "Paris"}, id="toolu_a"),
                ToolUse("get_weather", {"city": "Oslo", "unit": "C"}, id="toolu_b"),
            ),
        )
    )
    done = adapter_for("anthropic").complete(target(anthropic_upstream), request())
    assert done.finish_reason == "tool_calls"
    assert done.message["content"] is None  # OpenAI's shape for a tools-only answer
    calls = done.message["tool_calls"]
    assert [(c["id"], c["type"], c["function"]["name"]) for c in calls] == [
        ("toolu_a", "function", "get_weather"),
        ("toolu_b", "function", "get_weather"),
    ]
    assert [json.loads(c["function"]["arguments"]) for c in calls] == [
        {"city": "Paris"},
        {"city": "Oslo", "unit": "C"},
    ]


def test_text_before_a_tool_call_is_kept_as_content(anthropic_upstream: FakeUpstream) -> None:
    anthropic_upstream.script(Reply("Let me check.", tool_uses=(ToolUse("get_time", id="toolu_t"),)))
    done = adapter_for("anthropic").complete(target(anthropic_upstream), request())
    assert done.message["content"] == "Let me check." and done.finish_reason == "tool_calls"
    assert done.message["tool_calls"][0]["function"] == {"name": "get_time", "arguments": "{}"}


def test_the_tool_round_trip_maps_calls_to_tool_use_and_results_to_tool_result(
    anthropic_upstream: FakeUpstream,
) -> None:
    conversation = [
        *ASK,
        {
            "role": "assistant",
            "content": "Checking both.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                },
                {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": ""}},
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18C, cloudy"},
        {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "14:05"}]},
        {"role": "user", "content": "Thanks, summarise."},
    ]
    anthropic_upstream.script(Reply("Paris is 18C at 14:05."))
    done = adapter_for("anthropic").complete(target(anthropic_upstream), request(conversation))
    assert done.message == {"role": "assistant", "content": "Paris is 18C at 14:05."}
    assert done.finish_reason == "stop"
    assert anthropic_upstream.requests[0].body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": ASK[0]["content"]}]},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking both."},
                {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "call_2", "name": "get_time", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "18C, cloudy"},
                {
                    "type": "tool_result",
                    "tool_use_id": "call_2",
                    "content": [{"type": "text", "text": "14:05"}],
                },
                {"type": "text", "text": "Thanks, summarise."},
            ],
        },
    ]


def test_tool_results_go_first_in_their_user_turn_even_after_a_user_message(
    anthropic_upstream: FakeUpstream,
) -> None:
    call = {"id": "call_9", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
    conversation = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "user", "content": "(the tool is slow today)"},
        {"role": "tool", "tool_call_id": "call_9", "content": "14:05"},
    ]
    adapter_for("anthropic").complete(target(anthropic_upstream), request(conversation))
    last = anthropic_upstream.requests[0].body["messages"][-1]
    assert [b["type"] for b in last["content"]] == ["tool_result", "text"]


def test_the_fake_refuses_what_anthropic_refuses(anthropic_upstream: FakeUpstream) -> None:
    """The guard that gives the tests above their teeth: OpenAI shapes sent as they are get a 400."""
    url = anthropic_upstream.base_url + "/v1/messages"
    openai_tools = {"model": "m", "max_tokens": 5, "messages": ASK, "tools": [WEATHER]}
    orphan_result = {
        "model": "m",
        "max_tokens": 5,
        "tools": [{"name": "t", "input_schema": {"type": "object"}}],
        "messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "x"}]}],
    }
    for body in (openai_tools, orphan_result):
        response = requests.post(url, json=body, timeout=5)
        assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_request_error"


def test_streamed_tool_use_becomes_openai_tool_call_deltas(anthropic_upstream: FakeUpstream) -> None:
    anthropic_upstream.script(
        Stream(
            pieces=("Checking ", "now."),
            tool_uses=(
                ToolUse("get_weather", {"city": "Paris", "unit": "C"}, id="toolu_a"),
                ToolUse("get_time", id="toolu_b"),
            ),
        )
    )
    events = list(adapter_for("anthropic").stream(target(anthropic_upstream), request()))
    assert "".join(e.text for e in events) == "Checking now."
    calls = calls_from(events)
    assert sorted(calls) == [0, 1]  # numbered among the tool calls, not among Anthropic's blocks
    assert (calls[0]["id"], calls[0]["name"]) == ("toolu_a", "get_weather")
    assert json.loads(calls[0]["arguments"]) == {"city": "Paris", "unit": "C"}
    assert (calls[1]["id"], calls[1]["name"], calls[1]["arguments"]) == ("toolu_b", "get_time", "{}")
    first = next(e.delta["tool_calls"][0] for e in events if e.delta.get("tool_calls"))
    assert first["type"] == "function" and first["function"]["arguments"] == ""
    fragments = [e for e in events if e.delta.get("tool_calls") and "id" not in e.delta["tool_calls"][0]]
    assert len(fragments) >= 3  # the arguments really arrived in pieces
    assert events[-1].finish_reason == "tool_calls"


def test_invalid_tool_call_arguments_are_the_callers_error_and_nothing_is_sent(
    anthropic_upstream: FakeUpstream,
) -> None:
    broken = [
        *ASK,
        {
            "role": "assistant",
            "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "get_time", "arguments": "{"}}
            ],
        },
        {"role": "tool", "tool_call_id": "c", "content": "x"},
    ]
    with pytest.raises(ProviderError) as err:
        adapter_for("anthropic").complete(target(anthropic_upstream), request(broken))
    assert err.value.request_is_bad and err.value.status == 400
    assert "messages[1].tool_calls[0].function.arguments" in err.value.message
    with pytest.raises(ProviderError) as missing_id:
        adapter_for("anthropic").complete(
            target(anthropic_upstream), request([*ASK, {"role": "tool", "content": "x"}])
        )
    assert missing_id.value.request_is_bad and "tool_call_id" in missing_id.value.message
    assert anthropic_upstream.requests == []


def test_a_non_function_tool_is_unsupported_so_another_model_can_take_it(
    anthropic_upstream: FakeUpstream,
) -> None:
    custom = ChatRequest(messages=tuple(ASK), params={"tools": [{"type": "custom", "custom": {"name": "x"}}]})
    with pytest.raises(ProviderError) as err:
        adapter_for("anthropic").complete(target(anthropic_upstream), custom)
    assert err.value.error_class == "unsupported" and err.value.permanent and not err.value.request_is_bad
    assert err.value.param == "tools[0].type"


# --- end to end: the official openai client → SCOPE → the fake Anthropic upstream ---------------


@pytest.fixture
def claude(catalog: Any) -> Iterator[FakeUpstream]:
    with FakeUpstream(style="anthropic") as upstream:
        upstream_model("claude-tools", upstream)
        yield upstream


def wait_for_outcome(model: str) -> Outcome:
    """Stream outcomes are written when the server finishes the stream, just after the client's last byte."""
    deadline = time.monotonic() + 3.0
    while (row := Outcome.objects.filter(model_name=model).first()) is None:
        assert time.monotonic() < deadline, "no outcome recorded"
        time.sleep(0.02)
    time.sleep(0.05)  # let the live server finish the request before the test's teardown flushes
    return row


def test_the_openai_client_gets_tool_calls_from_an_anthropic_model_and_sends_results_back(
    openai_client: openai.OpenAI, claude: FakeUpstream
) -> None:
    claude.script(
        Reply("", tool_uses=(ToolUse("get_weather", {"city": "Paris"}, id="toolu_p"),)),
        Reply("It is 18C in Paris."),
    )
    messages: Any = ASK
    tools: Any = [WEATHER]
    first = openai_client.chat.completions.create(model="claude-tools", messages=messages, tools=tools)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert choice.message.tool_calls is not None
    call: Any = choice.message.tool_calls[0]
    assert (call.id, call.function.name, json.loads(call.function.arguments)) == (
        "toolu_p",
        "get_weather",
        {"city": "Paris"},
    )
    history: Any = [
        *ASK,
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "18C"},
    ]
    second = openai_client.chat.completions.create(model="claude-tools", messages=history, tools=tools)
    assert second.choices[0].message.content == "It is 18C in Paris."
    assert claude.requests[1].body["messages"][-1]["content"] == [
        {"type": "tool_result", "tool_use_id": "toolu_p", "content": "18C"}
    ]


def test_the_openai_client_assembles_streamed_tool_calls_from_an_anthropic_model(
    openai_client: openai.OpenAI, claude: FakeUpstream
) -> None:
    claude.script(Stream(pieces=(), tool_uses=(ToolUse("get_weather", {"city": "Oslo"}, id="toolu_o"),)))
    messages: Any = ASK
    tools: Any = [WEATHER]
    with openai_client.chat.completions.stream(
        model="claude-tools", messages=messages, tools=tools
    ) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls is not None
    call: Any = choice.message.tool_calls[0]
    assert (call.id, call.function.name, json.loads(call.function.arguments)) == (
        "toolu_o",
        "get_weather",
        {"city": "Oslo"},
    )
    assert wait_for_outcome("claude-tools").status == "ok"
