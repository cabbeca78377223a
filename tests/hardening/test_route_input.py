"""The fast path of the route input gives exactly what RouteInputSerializer gives, or defers to it."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rest_framework.exceptions import ValidationError

from routing.route_input import _canonical, route_input_validate
from routing.serializers import RouteInputSerializer


def via_serializer(data: Any) -> tuple[bool, Any]:
    serializer = RouteInputSerializer(data=data)
    if serializer.is_valid():
        return True, dict(serializer.validated_data)
    return False, serializer.errors


def via_fast_path(data: Any) -> tuple[bool, Any]:
    try:
        return True, route_input_validate(data)
    except ValidationError as exc:
        return False, exc.detail


def as_plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: as_plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [as_plain(v) for v in value]
    return value


CANONICAL = [
    {"messages": [{"role": "user", "content": "hi"}]},
    {
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": None},
            {"role": "tool", "content": "4", "name": "calc"},
        ],
        "policy": "cheap-first",
        "alpha": 0.25,
        "max_cost_usd": 0,
        "max_latency_ms": 1500,
        "models": ["a", "b"],
        "user": "",
        "metadata": {"plan": "premium", "n": 3, "nested": {"x": [1]}},
    },
    {
        "messages": [{"role": "user", "content": [{"type": "text", "text": "look"}, {"type": "image_url"}]}],
        "alpha": 1,
        "models": ["a"],
    },
    {
        "messages": [
            {"role": "developer", "content": "rules", "extra": "dropped"},
            {"role": "user", "content": "q"},
        ]
    },
]

NOT_CANONICAL: list[Any] = [
    None,
    [],
    "text",
    {},
    {"messages": []},
    {"messages": "hi"},
    {"messages": [{"content": "no role"}]},
    {"messages": [{"role": "robot", "content": "x"}]},
    {"messages": [{"role": "assistant", "content": "only"}]},
    {"messages": [{"role": "user", "content": ""}]},
    {"messages": [{"role": "user", "content": 5}]},
    {"messages": [{"role": "user", "content": [{"text": "no type"}]}]},
    {"messages": [{"role": "user", "content": "x", "name": " padded "}]},
    {"messages": [{"role": "user", "content": "x", "name": ""}]},
    {"messages": [{"role": "user", "content": "x", "name": None}]},
    {"messages": [{"role": "user", "content": "x"}], "alpha": "0.5"},
    {"messages": [{"role": "user", "content": "x"}], "alpha": True},
    {"messages": [{"role": "user", "content": "x"}], "alpha": 1.5},
    {"messages": [{"role": "user", "content": "x"}], "alpha": 10**400},
    {"messages": [{"role": "user", "content": "x"}], "max_cost_usd": -1},
    {"messages": [{"role": "user", "content": "x"}], "policy": "not a slug"},
    {"messages": [{"role": "user", "content": "x"}], "policy": " default"},
    {"messages": [{"role": "user", "content": "x"}], "models": "a"},
    {"messages": [{"role": "user", "content": "x"}], "models": []},
    {"messages": [{"role": "user", "content": "x"}], "models": [1, 2]},
    {"messages": [{"role": "user", "content": "x"}], "models": ["x" * 201]},
    {"messages": [{"role": "user", "content": "x"}], "user": "  bob "},
    {"messages": [{"role": "user", "content": "x"}], "user": "nul\x00char"},
    {"messages": [{"role": "user", "content": "x"}], "user": "\ud800"},
    {"messages": [{"role": "user", "content": "x"}], "metadata": []},
    {"messages": [{"role": "user", "content": "x"}], "unknown_key": "refused"},
    {"messages": [{"role": "user", "content": "x"}], "max_cost": 0.01, "aplha": 0.5},
]


@pytest.mark.parametrize("body", CANONICAL)
def test_a_canonical_body_takes_the_fast_path_and_matches_the_serializer(body: Any) -> None:
    assert _canonical(body) is not None
    ok, expected = via_serializer(body)
    assert ok
    assert as_plain(route_input_validate(body)) == as_plain(expected)


@pytest.mark.parametrize("body", NOT_CANONICAL)
def test_any_other_body_gets_exactly_the_serializers_answer(body: Any) -> None:
    assert _canonical(body) is None
    assert as_plain(via_fast_path(body)) == as_plain(via_serializer(body))


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
    st.sampled_from(["user", "system", "assistant", "default", " x", "0.5", ""]),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)
messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "system", "assistant", "tool", "x"])},
        optional={"content": values, "name": values},
    ),
    max_size=3,
)
bodies = st.fixed_dictionaries(
    {"messages": messages | values},
    optional={
        key: values
        for key in (
            "policy",
            "alpha",
            "max_cost_usd",
            "max_latency_ms",
            "models",
            "user",
            "metadata",
            "aplha",
        )
    },
)


@settings(max_examples=400, deadline=None, derandomize=True)
@given(bodies)
def test_fast_path_and_serializer_agree_on_generated_bodies(body: Any) -> None:
    assert as_plain(via_fast_path(body)) == as_plain(via_serializer(body))


near_valid = st.fixed_dictionaries(
    {
        "messages": st.lists(
            st.fixed_dictionaries(
                {
                    "role": st.sampled_from(["user", "system", "assistant"]),
                    "content": st.text(max_size=5) | st.none(),
                },
                optional={"name": st.text(max_size=4)},
            ),
            min_size=1,
            max_size=3,
        )
    },
    optional={
        "policy": st.from_regex(r"[-a-z0-9_ ]{0,8}", fullmatch=True),
        "alpha": st.floats(-0.5, 1.5) | st.integers(-1, 2),
        "max_cost_usd": st.floats(-1, 10, allow_nan=False),
        "models": st.lists(st.text(max_size=4), max_size=3),
        "user": st.text(max_size=4),
        "metadata": st.dictionaries(st.text(max_size=3), st.integers() | st.text(max_size=3), max_size=2),
    },
)


@settings(max_examples=400, deadline=None, derandomize=True)
@given(near_valid)
def test_fast_path_and_serializer_agree_on_nearly_valid_bodies(body: Any) -> None:
    assert as_plain(via_fast_path(body)) == as_plain(via_serializer(body))


@pytest.mark.django_db
@pytest.mark.parametrize("field", ["alpha", "max_cost_usd", "max_latency_ms"])
def test_a_boolean_is_not_a_number(api: Any, catalog: Any, field: str) -> None:
    response = api("/api/v1/route", {"messages": [{"role": "user", "content": "hi"}], field: True})
    assert response.status_code == 400, response.content
    assert field in response.json()["error"]["message"]
