from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest

from feedback.models import Feedback
from feedback.services.feedback import feedback_latest_scores
from tests.conftest import USER_MESSAGE
from tests.factories import make_api_key

pytestmark = pytest.mark.django_db


@pytest.fixture
def decision_id(api: Callable[..., Any]) -> str:
    response = api(
        "/api/v1/route", {"messages": USER_MESSAGE("Summarise the French revolution in one line.")}
    )
    assert response.status_code == 200, response.content
    return str(response.json()["decision_id"])


def test_it_records_a_numeric_score_for_the_callers_decision(
    api: Callable[..., Any], decision_id: str
) -> None:
    response = api(
        "/api/v1/feedback", {"decision_id": decision_id, "score": 0.75, "label": "ok", "comment": "fine"}
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["score"] == 0.75 and body["label"] == "ok" and body["decision_id"] == decision_id
    row = Feedback.objects.get()
    assert (str(row.decision_id), row.score, row.comment) == (decision_id, 0.75, "fine")


@pytest.mark.parametrize(("thumbs", "expected"), [("up", 1.0), ("down", 0.0)])
def test_thumbs_map_to_the_ends_of_the_scale(
    api: Callable[..., Any], decision_id: str, thumbs: str, expected: float
) -> None:
    response = api("/api/v1/feedback", {"decision_id": decision_id, "thumbs": thumbs})
    assert response.status_code == 201, response.content
    assert Feedback.objects.get().score == expected


def test_all_feedback_is_kept_and_the_latest_counts(api: Callable[..., Any], decision_id: str) -> None:
    for body in ({"score": 0.2}, {"thumbs": "up"}, {"score": 0.4}):
        assert api("/api/v1/feedback", {"decision_id": decision_id, **body}).status_code == 201
    assert Feedback.objects.count() == 3
    assert feedback_latest_scores(decision_ids=[uuid.UUID(decision_id)]) == {uuid.UUID(decision_id): 0.4}


@pytest.mark.parametrize(
    "body",
    [
        {"score": 1.5},
        {"score": -0.1},
        {"score": "high"},
        {"score": None},
        {"thumbs": "sideways"},
        {},
        {"score": 0.5, "thumbs": "up"},
        {"score": float("nan")},
        {"score": True},  # a boolean is not a number
    ],
)
def test_it_rejects_a_bad_score_with_400(
    api: Callable[..., Any], decision_id: str, body: dict[str, Any]
) -> None:
    response = api("/api/v1/feedback", {"decision_id": decision_id, **body})
    assert response.status_code == 400, response.content
    # NaN is not even valid JSON, so the parser rejects it before the serializer
    assert response.json()["error"]["code"] in {"invalid_request", "invalid_json"}
    assert Feedback.objects.count() == 0


def test_a_misspelt_field_is_a_400_naming_it_not_silently_dropped(
    api: Callable[..., Any], decision_id: str
) -> None:
    response = api("/api/v1/feedback", {"decision_id": decision_id, "score": 0.5, "commment": "x"})
    assert response.status_code == 400
    assert "unknown field 'commment' (did you mean 'comment'?)" in response.json()["error"]["message"]
    assert Feedback.objects.count() == 0


def test_it_rejects_a_malformed_decision_id_and_a_non_json_body(api: Callable[..., Any]) -> None:
    assert api("/api/v1/feedback", {"decision_id": "nope", "score": 1}).status_code == 400
    assert api("/api/v1/feedback", {"decision_id": 123, "score": 1}).status_code == 400  # not a UUID's text
    assert api("/api/v1/feedback", "{not json").status_code == 400
    assert api("/api/v1/feedback", [1, 2]).status_code == 400


def test_an_unknown_decision_is_404(api: Callable[..., Any]) -> None:
    response = api("/api/v1/feedback", {"decision_id": str(uuid.uuid4()), "score": 1})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "unknown_decision"


def test_another_keys_decision_is_404_and_records_nothing(api: Callable[..., Any], decision_id: str) -> None:
    _, other_key = make_api_key("other-app")
    response = api("/api/v1/feedback", {"decision_id": decision_id, "score": 1}, key=other_key)
    assert response.status_code == 404
    assert Feedback.objects.count() == 0


def test_it_needs_an_api_key(api: Callable[..., Any], decision_id: str) -> None:
    assert api("/api/v1/feedback", {"decision_id": decision_id, "score": 1}, key=None).status_code == 401
