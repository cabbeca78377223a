from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.test import Client

from feedback.models import Feedback, Outcome
from routing.models import DecisionLog
from tests.conftest import USER_MESSAGE
from tests.factories import make_api_key

Api = Callable[..., Any]


def get(path: str, key: str) -> Any:
    return Client().get(path, HTTP_AUTHORIZATION=f"Bearer {key}")


def route(api: Api, text: str, key: str | None = None, **extra: Any) -> str:
    body = {"messages": USER_MESSAGE(text), **extra}
    response = api("/api/v1/route", body) if key is None else api("/api/v1/route", body, key=key)
    assert response.status_code == 200, response.content
    return str(response.json()["decision_id"])


def test_a_key_pages_through_its_own_decisions_newest_first(api: Api, api_key: str) -> None:
    mine = [route(api, f"question {i}") for i in range(5)]
    _, other_key = make_api_key("other-app")
    theirs = route(api, "not yours", key=other_key)
    first = get("/api/v1/decisions?limit=2", api_key).json()
    assert [d["decision_id"] for d in first["results"]] == mine[::-1][:2]
    seen = [d["decision_id"] for d in first["results"]]
    cursor = first["next"]
    while cursor:
        assert "+" not in cursor and " " not in cursor  # pasted into a URL as it is
        page = get(f"/api/v1/decisions?limit=2&after={cursor}", api_key).json()
        seen += [d["decision_id"] for d in page["results"]]
        cursor = page["next"]
    assert seen == mine[::-1]
    assert theirs not in seen
    assert set(first["results"][0]) >= {"model", "candidates", "explanation", "policy", "predictor_version"}


def test_filters_narrow_the_list(api: Api, api_key: str) -> None:
    cheap = route(api, "hello", alpha=0.0)
    route(api, "hello", alpha=1.0)
    model = DecisionLog.objects.get(id=cheap).chosen_model
    results = get(f"/api/v1/decisions?model={model}&outcome=none", api_key).json()["results"]
    assert [d["decision_id"] for d in results] == [cheap]
    assert get("/api/v1/decisions?policy=nope", api_key).json()["results"] == []


def test_one_decision_comes_with_its_feedback_and_another_keys_is_404(api: Api, api_key: str) -> None:
    decision_id = route(api, "rate me")
    Feedback.objects.create(decision_id=decision_id, score=0.75, label="ok")
    body = get(f"/api/v1/decisions/{decision_id}", api_key).json()
    assert body["decision_id"] == decision_id
    assert body["feedback"][0]["score"] == 0.75 and body["outcomes"] == []
    Outcome.objects.create(decision_id=decision_id, model_name=body["model"], status="ok", cost_usd="0.00012")
    body = get(f"/api/v1/decisions/{decision_id}", api_key).json()
    # money is a number and every time is UTC with "Z", as in the route answer
    assert body["outcomes"][0]["cost_usd"] == 0.00012
    stamps = [body["created_at"], body["outcomes"][0]["created_at"], body["feedback"][0]["created_at"]]
    assert all(s.endswith("Z") for s in stamps), stamps
    _, other_key = make_api_key("nosy-app")
    response = get(f"/api/v1/decisions/{decision_id}", other_key)
    assert response.status_code == 404 and response.json()["error"]["code"] == "unknown_decision"
    assert get("/api/v1/decisions/not-a-uuid", api_key).status_code == 404


def test_bad_queries_are_400_and_no_key_is_401(api: Api, api_key: str) -> None:
    for query in (
        "limit=0",
        "limit=1000",
        "limit=x",
        "start=yesterday",
        "start=",
        "outcome=great",
        "after=garbage",
    ):
        response = get(f"/api/v1/decisions?{query}", api_key)
        assert response.status_code == 400, query
        assert response.json()["error"]["message"]
    assert Client().get("/api/v1/decisions").status_code == 401


def test_a_misspelt_filter_is_a_400_naming_it_not_every_decision(api: Api, api_key: str) -> None:
    route(api, "one")
    response = get("/api/v1/decisions?modle=gpt-4o&limit=5", api_key)
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert "modle" in message and "unknown query parameter" in message and "model" in message


def test_time_filters_take_rfc3339_only(api: Api, api_key: str) -> None:
    route(api, "timed")
    assert len(get("/api/v1/decisions?start=2000-01-01T00:00:00Z", api_key).json()["results"]) == 1
    assert get("/api/v1/decisions?end=2000-01-01T00:00:00%2B00:00", api_key).json()["results"] == []
    for naive in ("2000-01-01", "2000-01-01T00:00:00", "2000-01-01 00:00:00Z"):
        assert get(f"/api/v1/decisions?start={naive}", api_key).status_code == 400, naive
