"""Every dashboard view, for every persona: the server enforces the role (not just hidden buttons)."""

from __future__ import annotations

from typing import Any

import pytest
from django.urls import URLPattern, URLResolver, get_resolver

from feedback.models import TrainingRun
from providers.models import LLMModel
from routing.dashboard.roles import DASHBOARDS, READ_ALL, WRITE, Role
from routing.models import AuditCheckpoint, Experiment, PolicyVersion
from routing.services.experiments import experiment_upsert
from tests.factories import make_policy

PERSONAS = ("operator", "auditor", "viewer", "outsider", "anonymous")


@pytest.fixture
def world(decisions: list[Any]) -> dict[str, Any]:
    make_policy("quality", strategy="pre_inference", alpha=0.9)
    experiment = experiment_upsert(
        actor="test",
        name="alpha-test",
        policy="default",
        arms=[{"policy": "default", "name": "a"}, {"policy": "quality", "name": "b"}],
    )
    run = TrainingRun.objects.create(status="running", progress=0.4, progress_message="training")
    return {
        "decision": decisions[0],
        "experiment": experiment,
        "run": run,
        "model": LLMModel.objects.get(name="small"),
    }


def _policy_post() -> dict[str, Any]:
    return {"strategy": "hybrid", "alpha": "0.3", "rules": "[]", "replay_limit": "5", "replay_scope": "all"}


def views(w: dict[str, Any]) -> list[tuple[str, str, dict[str, Any], frozenset[Role]]]:
    return [
        ("get", "/", {}, DASHBOARDS),
        ("get", "/?range=7d", {}, DASHBOARDS),
        ("get", "/providers/", {}, DASHBOARDS),
        ("get", "/experiments/", {}, DASHBOARDS),
        ("get", "/predictor/", {}, DASHBOARDS),
        ("get", f"/predictor/runs/{w['run'].pk}/", {}, DASHBOARDS),
        ("get", "/policies/", {}, READ_ALL),
        ("get", "/policies/default/", {}, READ_ALL),
        ("get", "/decisions/", {}, READ_ALL),
        ("get", f"/decisions/{w['decision'].id}/", {}, READ_ALL),
        ("get", "/decisions/export.csv", {}, READ_ALL),
        ("get", "/decisions/export.jsonl", {}, READ_ALL),
        ("get", "/audit/", {}, READ_ALL),
        ("get", "/audit/verify", {}, READ_ALL),
        ("get", "/activity/", {}, READ_ALL),
        ("get", "/activity/?action=model&actor=operator", {}, READ_ALL),
        ("get", "/activity.json?limit=5", {}, READ_ALL),
        ("post", "/policies/default/replay", _policy_post(), READ_ALL),
        ("post", f"/providers/models/{w['model'].pk}/enabled", {"enabled": "0"}, WRITE),
        ("post", "/policies/default/publish", _policy_post(), WRITE),
        ("post", f"/experiments/{w['experiment'].pk}/promote", {"arm": "b"}, WRITE),
        ("post", f"/experiments/{w['experiment'].pk}/stop", {}, WRITE),
        ("post", "/predictor/retrain", {}, WRITE),
        ("post", "/predictor/versions/999999/activate", {}, WRITE),
        ("post", "/audit/seal", {}, WRITE),
    ]


def _state() -> tuple[Any, ...]:
    return (
        tuple(LLMModel.objects.order_by("pk").values_list("enabled", flat=True)),
        PolicyVersion.objects.count(),
        tuple(Experiment.objects.order_by("pk").values_list("status", flat=True)),
        TrainingRun.objects.count(),
        AuditCheckpoint.objects.count(),
    )


@pytest.mark.parametrize("name", PERSONAS)
def test_each_persona_reaches_exactly_the_views_of_its_role(
    persona: Any, world: dict[str, Any], name: str
) -> None:
    client = persona(name)
    role = Role(name) if name in {"operator", "auditor", "viewer"} else None
    for method, url, data, allowed in views(world):
        before = _state()
        response = getattr(client, method)(url, data) if method == "post" else client.get(url)
        where = f"{name} {method.upper()} {url}"
        if name == "anonymous":
            assert response.status_code == 302 and response["Location"].startswith("/login/"), where
            assert _state() == before, where
        elif role in allowed:
            # authorised: the view ran (a write may still answer 409/503 from its service)
            assert response.status_code not in (401, 403), where
            assert not response.get("Location", "").startswith("/login/"), where
            if method == "get":
                assert response.status_code == 200, where
        else:
            assert response.status_code == 403, where
            assert _state() == before, f"{where} changed data although refused"


def test_auditor_is_refused_every_write_and_nothing_changes(persona: Any, world: dict[str, Any]) -> None:
    client = persona("auditor")
    before = _state()
    writes = [v for v in views(world) if v[3] == WRITE]
    assert len(writes) == 7
    for _, url, data, _ in writes:
        assert client.post(url, data).status_code == 403, url
        assert client.post(url, data, HTTP_HX_REQUEST="true").status_code == 403, url
    assert _state() == before


def test_writes_refuse_get(persona: Any, world: dict[str, Any]) -> None:
    client = persona("operator")
    for method, url, _, allowed in views(world):
        if method == "post" and allowed == WRITE:
            assert client.get(url).status_code == 405, url


def test_anonymous_htmx_request_gets_a_client_redirect_to_login(persona: Any, world: dict[str, Any]) -> None:
    response = persona("anonymous").get("/decisions/", HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    assert response["HX-Redirect"].startswith("/login/?next=/decisions/")


def _patterns(resolver: URLResolver, prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for p in resolver.url_patterns:
        if isinstance(p, URLResolver):
            out.extend(_patterns(p, prefix + str(p.pattern)))
        elif isinstance(p, URLPattern):
            out.append((prefix + str(p.pattern), p.callback))
    return out


def test_every_dashboard_url_declares_its_roles() -> None:
    dashboard = [
        (route, cb)
        for route, cb in _patterns(get_resolver())
        if cb.__module__.startswith("routing.dashboard")
    ]
    assert len(dashboard) >= 19
    for route, callback in dashboard:
        assert getattr(callback, "scope_roles", None), f"{route} has no role_required"


def test_operator_can_disable_a_model_and_routing_stops_using_it(persona: Any, world: dict[str, Any]) -> None:
    client = persona("operator")
    model = world["model"]
    typo = client.post(f"/providers/models/{model.pk}/enabled", {"enabled": "maybe"}, HTTP_HX_REQUEST="true")
    assert typo.status_code == 400 and b"enabled: must be 1" in typo.content
    model.refresh_from_db()
    assert model.enabled is True
    response = client.post(f"/providers/models/{model.pk}/enabled", {"enabled": "0"}, HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    assert b"Enable" in response.content
    model.refresh_from_db()
    assert model.enabled is False


def test_refusals_and_unknown_pages_speak_html_to_browsers_and_json_to_apis(
    persona: Any, world: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    viewer = persona("viewer")
    with caplog.at_level("WARNING", logger="django.request"):
        page = viewer.get("/decisions/", HTTP_ACCEPT="text/html")
    assert page.status_code == 403 and page["Content-Type"].startswith("text/html")
    assert "your role (viewer) may not use this page" in page.content.decode().lower()
    assert not any(r.exc_info for r in caplog.records)  # a refusal is not an error: no traceback
    fragment = viewer.get("/decisions/", HTTP_HX_REQUEST="true")
    assert fragment.status_code == 403 and b"permission_denied" in fragment.content
    missing = persona("auditor").get("/policies/nope/", HTTP_ACCEPT="text/html,application/xhtml+xml")
    assert missing.status_code == 404 and b"There is nothing at /policies/nope/" in missing.content
    api = viewer.get("/api/v1/nope", HTTP_ACCEPT="text/html")
    assert api.status_code == 404 and api.json()["error"]["code"] == "not_found"
