"""JSON nested deeper than the decoder's stack is a 400 invalid_json, never a 500; merely deep JSON
that parses is answered like any other body."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from routing.models import DecisionLog

Api = Callable[..., Any]
HI = '[{"role": "user", "content": "hi"}]'


def filled(template: str, depth: int) -> str:
    """`template` with HI as the messages and DEEP as `depth` nested arrays."""
    return template.replace("HI", HI).replace("DEEP", "[" * depth + "1" + "]" * depth)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/v1/route", '{"messages": HI, "metadata": {"a": DEEP}}'),
        ("/v1/chat/completions", '{"model": "scope/auto", "messages": HI, "metadata": {"a": DEEP}}'),
        ("/api/v1/jobs", '{"model": "scope/auto", "messages": HI, "metadata": {"a": DEEP}}'),
        ("/api/v1/feedback", '{"decision_id": "00000000-0000-0000-0000-000000000000", "x": DEEP}'),
    ],
)
def test_json_nested_too_deeply_is_a_400(api: Api, catalog: Any, path: str, body: str) -> None:
    response = api(path, filled(body, 5000))
    assert response.status_code == 400, response.content[:300]
    error = response.json()["error"]
    assert error["code"] == "invalid_json" and "nested deeper than 100 levels" in error["message"]
    assert DecisionLog.objects.count() == 0


@pytest.mark.parametrize("depth", [900, 101])  # 900 parsed, then broke the row's JSON; 101 is one over
def test_json_nested_deeper_than_the_limit_is_a_400(api: Api, catalog: Any, depth: int) -> None:
    response = api("/api/v1/route", filled('{"messages": HI, "metadata": DEEP}', depth))
    assert response.status_code == 400, response.content[:300]
    assert response.json()["error"]["code"] == "invalid_json"


@pytest.mark.parametrize("depth", [1, 98])  # with the metadata object around it: 99 and 100 levels
def test_deep_but_allowed_metadata_is_routed_and_logged(api: Api, catalog: Any, depth: int) -> None:
    response = api("/api/v1/route", filled('{"messages": HI, "metadata": {"a": DEEP}}', depth))
    assert response.status_code == 200, response.content[:300]
    assert DecisionLog.objects.filter(id=response.json()["decision_id"]).exists()


@pytest.mark.parametrize("number", ["1e400", "-1e999"])
def test_a_number_beyond_a_double_is_a_400(api: Api, catalog: Any, number: str) -> None:
    # read as infinity it had no JSON form for the decision row (jsonb refuses Infinity): a 500
    response = api("/api/v1/route", f'{{"messages": {HI}, "metadata": {{"x": {number}}}}}')
    assert response.status_code == 400, response.content[:300]
    error = response.json()["error"]
    assert error["code"] == "invalid_json" and f"number out of range: {number}" in error["message"]
    assert DecisionLog.objects.count() == 0
