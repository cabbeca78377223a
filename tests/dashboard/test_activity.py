"""The Activity page and /activity.json: dashboard changes recorded with who made them,
read by operators and auditors only, filtered and keyset-paginated."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from feedback.models import PredictorVersion
from providers.models import LLMModel
from routing.activity import PAGE_SIZE
from routing.models import ControlAction, ControlEvent, Experiment
from routing.services.control_events import control_event_record
from routing.services.experiments import experiment_upsert
from tests.dashboard.test_policies import _form
from tests.dashboard.test_predictor_activation import champion_and_shadow  # noqa: F401  (fixture)
from tests.factories import make_policy

ARMS = [{"policy": "default", "name": "a"}, {"policy": "quality", "name": "b"}]


def _latest(action: str) -> ControlEvent:
    return ControlEvent.objects.filter(action=action).latest("id")


@pytest.fixture
def experiments(catalog: Any) -> tuple[Experiment, Experiment]:
    make_policy("quality", strategy="pre_inference", alpha=0.9)
    make_policy("other")
    first = experiment_upsert(name="first", policy="default", arms=ARMS, actor="test")
    second = experiment_upsert(
        name="second", policy="other", arms=[{"policy": "other", "name": "a"}, ARMS[1]], actor="test"
    )
    return first, second


def test_operator_changes_from_the_dashboard_are_recorded_as_the_operator(
    persona: Callable[[str], Client], experiments: tuple[Experiment, Experiment]
) -> None:
    operator = persona("operator")
    model = LLMModel.objects.get(name="small")
    assert operator.post(f"/providers/models/{model.pk}/enabled", {"enabled": "0"}).status_code == 302
    assert operator.post(f"/providers/models/{model.pk}/enabled", {"enabled": "1"}).status_code == 302
    first, second = experiments
    assert operator.post(f"/experiments/{first.pk}/stop").status_code == 302
    assert operator.post(f"/experiments/{second.pk}/promote", {"arm": "b"}).status_code == 302
    assert operator.post("/policies/default/publish", _form(alpha="0.3", note="cheaper")).status_code == 302

    rows = ControlEvent.objects.filter(actor="operator").order_by("id")
    assert [(e.action, e.target) for e in rows] == [
        ("model.disable", "model:small"),
        ("model.enable", "model:small"),
        ("experiment.stop", "experiment:first"),
        ("policy.publish", "policy:other"),  # the winner's settings, published by the promotion
        ("experiment.promote", "experiment:second"),
        ("policy.publish", "policy:default"),
    ]
    promoted = _latest("experiment.promote").detail
    assert promoted["arm"] == "b" and promoted["published_version"] == 2
    published = _latest("policy.publish").detail
    assert published["changes"]["alpha"] == [0.5, 0.3] and published["note"] == "cheaper"


def test_a_refused_or_empty_change_records_nothing(
    persona: Callable[[str], Client], experiments: tuple[Experiment, Experiment]
) -> None:
    first, _ = experiments
    clients = {name: persona(name) for name in ("operator", "auditor", "viewer")}
    last = ControlEvent.objects.latest("id").pk
    for name in ("auditor", "viewer"):
        assert clients[name].post(f"/experiments/{first.pk}/stop").status_code == 403
    operator = clients["operator"]
    assert operator.post(f"/experiments/{first.pk}/stop").status_code == 302
    assert operator.post(f"/experiments/{first.pk}/stop").status_code == 409  # already stopped
    model = LLMModel.objects.get(name="small")
    assert (
        operator.post(f"/providers/models/{model.pk}/enabled", {"enabled": "1"}).status_code == 302
    )  # as is
    assert operator.post(f"/providers/models/{model.pk}/enabled", {"enabled": "yes"}).status_code == 400
    new = ControlEvent.objects.filter(pk__gt=last).order_by("id")
    assert [(e.actor, e.action) for e in new] == [("operator", "experiment.stop")]


def test_activating_a_predictor_and_retraining_from_the_page_record_the_operator(
    persona: Callable[[str], Client],
    champion_and_shadow: tuple[PredictorVersion, PredictorVersion],  # noqa: F811
) -> None:
    _, shadow = champion_and_shadow
    operator = persona("operator")
    assert operator.post(f"/predictor/versions/{shadow.pk}/activate").status_code == 302
    activated = _latest("predictor.activate")
    assert (activated.actor, activated.target) == ("operator", f"predictor:{shadow.name}")
    stopped = _latest("shadow.stop")  # the promoted shadow stops shadowing, by the same hand
    assert (stopped.actor, stopped.target) == ("operator", f"predictor:{shadow.name}")
    assert operator.post("/predictor/retrain").status_code == 302
    requested = _latest("retrain.request")
    assert (requested.actor, requested.detail["trigger"]) == ("operator", "manual")


@pytest.fixture
def events(db: Any) -> list[ControlEvent]:
    rows = []
    for i in range(7):
        rows.append(
            control_event_record(
                actor="alice" if i % 2 else "system:pacing",
                action=ControlAction.MODEL_DISABLE if i % 3 == 0 else ControlAction.POLICY_PUBLISH,
                target=f"model:m{i}" if i % 3 == 0 else f"policy:p{i}",
                detail={"i": i},
            )
        )
    return rows


@pytest.mark.parametrize(
    ("name", "status"), [("operator", 200), ("auditor", 200), ("viewer", 403), ("outsider", 403)]
)
def test_the_activity_page_is_for_operators_and_auditors(
    persona: Callable[[str], Client], events: list[ControlEvent], name: str, status: int
) -> None:
    response = persona(name).get("/activity/")
    assert response.status_code == status
    if status == 200:
        page = response.content.decode()
        assert 'href="/activity/"' in page and "model:m6" in page and "system:pacing" in page


def test_anonymous_visitors_are_sent_to_log_in(client: Client, db: Any) -> None:
    response = client.get("/activity/")
    assert response.status_code == 302 and response["Location"].startswith("/login/")


def _targets(html: str) -> list[str]:
    """The targets in the page's table, in page order."""
    return re.findall(r"<td>((?:model|policy):\w+)</td>", html)


def test_the_page_filters_by_action_actor_target_and_time(
    persona: Callable[[str], Client], events: list[ControlEvent]
) -> None:
    auditor = persona("auditor")
    page = auditor.get("/activity/", {"action": "model.disable"}).content.decode()
    assert _targets(page) == ["model:m6", "model:m3", "model:m0"]  # newest first
    page = auditor.get("/activity/", {"action": "model", "actor": "alice"}).content.decode()
    assert _targets(page) == ["model:m3"]
    page = auditor.get("/activity/", {"target": "policy:p"}).content.decode()
    assert _targets(page) == ["policy:p5", "policy:p4", "policy:p2", "policy:p1"]
    future = (timezone.now() + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")
    assert _targets(auditor.get("/activity/", {"start": future}).content.decode()) == []


@pytest.mark.parametrize(
    "query",
    [{"action": "model.explode"}, {"start": "yesterday"}, {"after": "abc"}, {"acter": "alice"}],
)
def test_bad_filters_are_a_400_not_a_500(
    persona: Callable[[str], Client], events: list[ControlEvent], query: dict[str, str]
) -> None:
    response = persona("auditor").get("/activity/", query)
    assert response.status_code == 400


def test_the_page_is_keyset_paginated_newest_first(persona: Callable[[str], Client], db: Any) -> None:
    for i in range(PAGE_SIZE + 5):
        control_event_record(actor="bob", action=ControlAction.MODEL_ENABLE, target=f"model:n{i}")
    auditor = persona("auditor")
    seen: list[str] = []
    query = {"actor": "bob"}
    for _ in range(3):
        response = auditor.get("/activity/", query)
        seen += re.findall(r"<td>model:(n\d+)</td>", response.content.decode())
        if not response.context["next_cursor"]:
            break
        query["after"] = response.context["next_cursor"]
    assert seen == [f"n{i}" for i in reversed(range(PAGE_SIZE + 5))]  # every row once, newest first


# --- GET /activity.json ----------------------------------------------------------------------


@pytest.mark.parametrize(("name", "status"), [("operator", 200), ("auditor", 200), ("viewer", 403)])
def test_the_json_read_follows_the_page_roles(
    persona: Callable[[str], Client], events: list[ControlEvent], name: str, status: int
) -> None:
    response = persona(name).get("/activity.json")
    assert response.status_code == status and response["Content-Type"] == "application/json"
    body = response.json()
    if status == 200:
        assert [r["detail"]["i"] for r in body["results"] if "i" in r["detail"]] == [6, 5, 4, 3, 2, 1, 0]
        assert set(body["results"][0]) == {"id", "created_at", "actor", "action", "target", "detail"}
        assert body["results"][0]["created_at"].endswith("Z")  # UTC, as every API time
    else:
        assert body["error"]["code"] == "permission_denied"


def test_an_api_key_does_not_open_the_log(client: Client, api_key: str, events: list[ControlEvent]) -> None:
    # the log is global: API keys belong to apps and authenticate /api/v1 only, never the dashboard
    response = client.get("/activity.json", HTTP_AUTHORIZATION=f"Bearer {api_key}")
    assert response.status_code == 302 and response["Location"].startswith("/login/")


def test_the_json_read_filters_and_paginates(
    persona: Callable[[str], Client], events: list[ControlEvent]
) -> None:
    auditor = persona("auditor")
    pages: list[list[str]] = []
    query: dict[str, Any] = {"actor": "system:pacing", "limit": 2}
    while True:
        body = auditor.get("/activity.json", query).json()
        pages.append([r["target"] for r in body["results"]])
        if not body["next"]:
            break
        query["after"] = body["next"]
    assert pages == [["model:m6", "policy:p4"], ["policy:p2", "model:m0"]]
    body = auditor.get("/activity.json", {"action": "model", "target": "model:m3"}).json()
    assert [(r["actor"], r["action"]) for r in body["results"]] == [("alice", "model.disable")]
    later = (timezone.now() + timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%S")
    assert auditor.get("/activity.json", {"start": later}).json() == {"results": [], "next": ""}


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ({"action": "model.explode"}, "action"),
        ({"start": "yesterday"}, "start"),
        ({"after": "-1"}, "after"),
        ({"limit": "0"}, "limit"),
        ({"limit": "9999"}, "limit"),
        ({"acter": "alice"}, "acter"),
    ],
)
def test_bad_json_filters_are_a_json_400_naming_the_field(
    persona: Callable[[str], Client], events: list[ControlEvent], query: dict[str, str], named: str
) -> None:
    response = persona("auditor").get("/activity.json", query)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_request" and named in error["message"]
