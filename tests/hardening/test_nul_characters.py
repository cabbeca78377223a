"""A NUL character or a lone surrogate anywhere in what the decision row stores is a 400 naming
where, never a 500 (PostgreSQL cannot store the one, UTF-8 cannot encode the other)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from routing.models import DecisionLog

Api = Callable[..., Any]
HI = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"messages": [{"role": "user", "content": "hi\x00"}]}, "messages"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": "a\x00"}]}]}, "messages"),
        ({"messages": HI, "metadata": {"tenant": "a\x00b"}}, "metadata.tenant"),
        ({"messages": HI, "metadata": {"nested": {"list": ["ok", "\x00"]}}}, "metadata.nested.list[1]"),
        ({"messages": HI, "metadata": {"bad\x00key": 1}}, "metadata"),
        ({"messages": [{"role": "user", "content": "hi \ud800"}]}, "messages"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": "\udfff"}]}]}, "messages"),
        ({"messages": HI, "metadata": {"tenant": "a\ud800b"}}, "metadata.tenant"),
        ({"messages": HI, "metadata": {"\ud800": 1}}, "metadata"),
    ],
)
def test_route_refuses_a_nul_with_a_400_that_says_where(
    api: Api, catalog: Any, body: dict[str, Any], where: str
) -> None:
    response = api("/api/v1/route", body)
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "invalid_request" and error["message"].startswith(f"{where}: NUL")
    assert DecisionLog.objects.count() == 0


@pytest.mark.parametrize("model", ["scope/auto", "small"])  # routed, and passed through by name
@pytest.mark.parametrize("bad", ["x\x00", "x\ud800"])
def test_chat_completions_refuse_a_nul_in_the_openai_error_shape(
    api: Api, catalog: Any, model: str, bad: str
) -> None:
    response = api("/v1/chat/completions", {"model": model, "messages": [{"role": "user", "content": bad}]})
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and "NUL" in error["message"]
    assert DecisionLog.objects.count() == 0


def test_ordinary_text_with_backslashes_and_escapes_still_routes(api: Api, catalog: Any) -> None:
    response = api("/api/v1/route", {"messages": [{"role": "user", "content": "a \\u0000 literal, \\n, \t"}]})
    assert response.status_code == 200, response.content


@pytest.mark.parametrize(
    ("extra", "where"),
    [
        ({"messages": [{"role": "user", "content": "x\x00"}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": "x\ud800"}]}, "messages[0].content"),
        ({"metadata": {"k": "\ud800"}}, "metadata.k"),
        ({"\ud800": 1}, "body"),  # a top-level key
    ],
)
def test_an_async_job_that_could_not_be_stored_is_refused_when_submitted(
    api: Api, catalog: Any, extra: dict[str, Any], where: str
) -> None:
    response = api("/api/v1/jobs", {"model": "scope/auto", "messages": HI, **extra})
    assert response.status_code == 400, response.content
    assert response.json()["error"]["message"].startswith(f"{where}: NUL")
