"""A chat request's own needs (tools, images, JSON output) are hard constraints of its routing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from routing.models import DecisionLog
from tests.factories import make_policy

Api = Callable[..., Any]
HELLO = [{"role": "user", "content": "Say hello"}]
WEATHER = {
    "type": "function",
    "function": {"name": "weather", "parameters": {"type": "object", "properties": {}}},
}
IMAGE = [
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "What is in this picture?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        ],
    }
]


@pytest.fixture
def cheap(api: Api) -> Api:
    """Policy `cheap` ranks by cost only: `small` (capabilities [json]) unless it is excluded."""
    make_policy("cheap", strategy="hybrid", alpha=0.0)

    def chat(**body: Any) -> Any:
        return api("/v1/chat/completions", {"model": "scope/cheap", "messages": HELLO, **body})

    return chat


def _reasons(response: Any) -> dict[str, str]:
    row = DecisionLog.objects.get(pk=response["X-Scope-Decision-Id"])
    return {c["model"]: c["excluded_reason"] or "" for c in row.candidates}


def test_a_plain_request_goes_to_the_cheapest_model(cheap: Api) -> None:
    response = cheap(response_format={"type": "json_object"})
    assert response.status_code == 200 and response["X-Scope-Model"] == "small"


def test_a_request_with_tools_is_routed_only_to_models_with_the_tools_capability(cheap: Api) -> None:
    extras: list[dict[str, Any]] = [
        {"tools": [WEATHER]},
        {"tools": [WEATHER], "tool_choice": "auto"},
    ]
    for extra in extras:
        response = cheap(**extra)
        assert response.status_code == 200, response.content
        assert response["X-Scope-Model"] == "medium"
        assert _reasons(response)["small"] == "missing capability: tools"


def test_an_image_content_part_needs_a_vision_model(cheap: Api) -> None:
    response = cheap(messages=IMAGE)
    assert response.status_code == 200, response.content
    assert response["X-Scope-Model"] == "large"
    reasons = _reasons(response)
    assert reasons["small"] == reasons["medium"] == "missing capability: vision"


def test_a_json_response_format_needs_json_where_the_catalog_declares_it(api: Api, cheap: Api) -> None:
    from providers.models import LLMModel

    LLMModel.objects.filter(name="small").update(capabilities=[])
    response = cheap(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {}}})
    assert response["X-Scope-Model"] == "medium"
    assert _reasons(response)["small"] == "missing capability: json"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("tools", "bad"),
        ("tools", ["bad"]),
        ("tools", [{"function": {"name": "f"}}]),
        ("functions", {"name": "f"}),
        ("tool_choice", 3),
        ("response_format", "json"),
    ],
)
def test_malformed_tools_and_formats_are_a_400(cheap: Api, field: str, value: Any) -> None:
    response = cheap(**{field: value})
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == field
    assert not DecisionLog.objects.exists()


@pytest.mark.parametrize(
    ("field", "value", "instead"),
    [
        ("functions", [{"name": "weather", "parameters": {"type": "object", "properties": {}}}], "tools"),
        ("function_call", "auto", "tool_choice"),
        ("function_call", {"name": "weather"}, "tool_choice"),
    ],
)
def test_legacy_function_calling_is_refused_naming_the_field_and_what_to_send(
    cheap: Api, field: str, value: Any, instead: str
) -> None:
    response = cheap(**{field: value})
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["param"] == field and error["code"] == "unsupported_parameter"
    assert f"send `{instead}` instead" in error["message"]
    assert not DecisionLog.objects.exists()
