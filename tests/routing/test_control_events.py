"""The control-plane activity log: every change, through its real entry point, with who made it."""

from __future__ import annotations

import json
from datetime import timedelta
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.contrib.admin.sites import site
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.db import IntegrityError, transaction
from django.test import Client, RequestFactory
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from feedback.models import PredictorVersion, TrainingRun, TrainingRunStatus
from feedback.services.retraining import retraining_execute, retraining_request
from providers.models import Deployment, LLMModel, Provider
from routing.models import ApiKey, ControlAction, ControlEvent, RoutingPolicy
from routing.services.control_events import REDACTED, control_event_record
from routing.services.experiments import experiment_upsert
from routing.services.pacing import pacing_adjust
from tests.factories import make_policy
from tests.feedback.learning import FAST_FIT, make_eval_data
from tests.routing.test_pacing import NOON, _traffic

CATALOG = {
    "providers": [{"name": "vllm", "kind": "openai_compatible", "base_url": "http://127.0.0.1:9/v1",
                   "api_key_env": "VLLM_KEY"}],
    "models": [{"name": "llama", "provider": "vllm", "input_usd_per_mtok": 0.02, "output_usd_per_mtok": 0.03,
                "tier": 2}],
    "deployments": [{"model": "llama", "name": "a", "provider": "vllm", "rpm_limit": 60}],
    "policies": [{"slug": "cheap", "strategy": "hybrid", "alpha": 0.3, "models": ["llama"]}],
}  # fmt: skip


def _events(action: str) -> list[ControlEvent]:
    return list(ControlEvent.objects.filter(action=action).order_by("id"))


def _load(tmp_path: Path, data: dict[str, Any]) -> None:
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(data))
    call_command("load_catalog", str(path), stdout=StringIO())


def test_load_catalog_records_the_load_and_each_change_as_the_command(catalog: Any, tmp_path: Path) -> None:
    _load(tmp_path, CATALOG)
    (load,) = _events("catalog.load")
    assert load.actor == "cli:load_catalog" and load.target.endswith("catalog.json")
    assert load.detail["new_policy_versions"] == ["cheap v1"]
    assert {(e.action, e.target) for e in ControlEvent.objects.filter(actor="cli:load_catalog")} == {
        ("catalog.load", load.target),
        ("provider.create", "provider:vllm"),
        ("model.create", "model:llama"),
        ("deployment.create", "deployment:llama/a"),
        ("policy.publish", "policy:cheap"),
    }

    # the same file again changes nothing: only the load itself is recorded
    _load(tmp_path, CATALOG)
    repeat = [(e.action, e.detail) for e in ControlEvent.objects.filter(actor="cli:load_catalog")[:7]]
    assert ControlEvent.objects.filter(actor="cli:load_catalog").count() == 6, repeat

    # a changed price, deployment limit and provider timeout: old → new, per row
    changed = json.loads(json.dumps(CATALOG))
    changed["models"][0]["output_usd_per_mtok"] = 0.05
    changed["deployments"] = [{"model": "llama", "name": "b", "provider": "vllm", "rpm_limit": 10}]
    changed["providers"][0]["read_timeout_s"] = 30
    _load(tmp_path, changed)
    assert _events("model.update")[-1].detail["changes"] == {"output_usd_per_mtok": ["0.03", "0.05"]}
    assert _events("provider.update")[-1].detail["changes"] == {"read_timeout_s": [60.0, 30.0]}
    assert [e.target for e in _events("deployment.delete")] == ["deployment:llama/a"]
    assert [e.target for e in _events("deployment.create")] == ["deployment:llama/a", "deployment:llama/b"]


def test_a_failed_catalog_load_records_nothing(catalog: Any, tmp_path: Path) -> None:
    broken = {**CATALOG, "policies": [{"slug": "cheap", "strategy": "nope"}]}
    with pytest.raises(Exception, match="strategy"):
        _load(tmp_path, broken)
    # the provider and model were upserted before the policy failed: all rolled back, records too
    assert not ControlEvent.objects.filter(actor="cli:load_catalog").exists()
    assert not Provider.objects.filter(name="vllm").exists()


def test_experiments_from_the_catalog_are_recorded_with_their_arms(catalog: Any) -> None:
    make_policy("quality", alpha=0.9)
    arms = [{"policy": "default", "name": "a"}, {"policy": "quality", "name": "b"}]
    experiment_upsert(name="ab", policy="default", arms=arms, actor="cli:load_catalog")
    experiment_upsert(name="ab", policy="default", arms=arms, actor="cli:load_catalog")  # unchanged
    experiment_upsert(name="ab", policy="default", arms=arms, status="stopped", actor="cli:load_catalog")
    assert [e.action for e in ControlEvent.objects.filter(target="experiment:ab").order_by("id")] == [
        "experiment.create",
        "experiment.update",
    ]
    assert _events("experiment.update")[0].detail["changes"] == {"status": ["running", "stopped"]}


def test_api_key_commands_record_the_key_without_any_key_material(catalog: Any) -> None:
    out = StringIO()
    call_command("create_api_key", "billing-app", "--daily-budget-usd", "5", stdout=out)
    key = out.getvalue().strip()
    row = ApiKey.objects.get(name="billing-app")
    call_command("revoke_api_key", row.prefix, stdout=StringIO())
    created, revoked = _events("api_key.create")[-1], _events("api_key.revoke")[-1]
    assert created.actor == "cli:create_api_key" and revoked.actor == "cli:revoke_api_key"
    assert created.target == revoked.target == f"api_key:billing-app@{row.created:%Y-%m-%dT%H:%M:%SZ}"
    assert created.detail["daily_budget_usd"] == "5"
    for event in (created, revoked):
        text = json.dumps([event.target, event.detail])
        assert row.prefix not in text and row.hashed_key not in text and key.split(".")[1] not in text
    call_command("revoke_api_key", row.prefix, stdout=StringIO())  # already revoked: nothing changed
    assert len(_events("api_key.revoke")) == 1


def test_secrets_are_redacted_from_any_detail_a_caller_passes(db: Any) -> None:
    event = control_event_record(
        actor="test",
        action=ControlAction.PROVIDER_UPDATE,
        target="provider:x",
        detail={
            "api_key": "sk-live-123",
            "nested": {"password": "hunter2", "token": "t"},
            "api_key_env": "X",
        },
    )
    assert event.detail == {
        "api_key": REDACTED,
        "nested": {"password": REDACTED, "token": REDACTED},
        "api_key_env": "X",  # the variable's name is what operators configure, not a secret
    }


def test_an_event_needs_an_actor_and_a_known_action(db: Any) -> None:
    with pytest.raises(ValueError, match="actor"):
        control_event_record(actor="", action=ControlAction.MODEL_ENABLE, target="model:x")
    with pytest.raises(ValueError, match="unknown control action"):
        control_event_record(actor="test", action="model.explode", target="model:x")


@pytest.mark.django_db
def test_the_pacing_worker_publishes_as_the_system(catalog: Any) -> None:
    make_policy("paced", alpha=0.9, options={"spend_target": {"usd": 0.2, "period": "day"}})
    _traffic(20, NOON - timedelta(minutes=30))
    assert pacing_adjust(policy_id=RoutingPolicy.objects.get(slug="paced").pk, now=NOON).action == "adjusted"
    event = ControlEvent.objects.filter(action="policy.publish", target="policy:paced").latest("id")
    assert event.actor == "system:pacing"
    assert (event.detail["version"], event.detail["previous_version"]) == (2, 1)
    old, new = event.detail["changes"]["alpha"]
    assert old == 0.9 and new < 0.9 and list(event.detail["changes"]) == ["alpha"]


def test_retraining_records_the_request_and_the_workers_promotion_and_shadow(catalog: Any) -> None:
    make_eval_data(30)
    first = retraining_request(trigger="schedule", params={"fit": FAST_FIT}, actor="system:retraining")
    first = retraining_execute(run_id=first.pk) or first
    assert first.status == TrainingRunStatus.PROMOTED
    second = retraining_request(trigger="manual", params={"fit": FAST_FIT, "margin": 1.0}, actor="alice")
    second = retraining_execute(run_id=second.pk) or second
    assert second.status == TrainingRunStatus.REJECTED
    requests = _events("retrain.request")
    assert [(e.actor, e.detail["trigger"]) for e in requests] == [
        ("system:retraining", "schedule"),
        ("alice", "manual"),
    ]
    assert first.challenger_id is not None and second.challenger_id is not None
    champion = PredictorVersion.objects.get(pk=first.challenger_id)
    shadow = PredictorVersion.objects.get(pk=second.challenger_id)
    (activated,) = _events("predictor.activate")
    assert (activated.actor, activated.target) == ("system:retraining", f"predictor:{champion.name}")
    (started,) = _events("shadow.start")
    assert (started.actor, started.target) == ("system:retraining", f"predictor:{shadow.name}")


def test_the_retrain_command_records_itself(catalog: Any) -> None:
    make_eval_data(30)
    err = StringIO()
    call_command("retrain", "--margin", "0.5", stdout=StringIO(), stderr=err)
    assert [e.actor for e in _events("retrain.request")] == ["cli:retrain"]
    assert "not used" not in err.getvalue()  # its own run, with its own options


def test_create_user_records_the_role_never_the_password(db: Any, monkeypatch: Any) -> None:
    monkeypatch.setenv("SCOPE_USER_PASSWORD", "a-long-enough-password-1")
    call_command("create_user", "carol", "--role", "auditor", stdout=StringIO())
    (event,) = _events("user.save")
    assert (event.actor, event.target, event.detail["role"]) == ("cli:create_user", "user:carol", "auditor")
    assert "a-long-enough-password-1" not in json.dumps(event.detail)


def test_the_log_is_append_only_in_the_admin(db: Any) -> None:
    admin = site._registry[ControlEvent]
    request = RequestFactory().get("/admin/")
    request.user = get_user_model().objects.create_superuser("root", "root@example.com", "pw")
    event = control_event_record(actor="test", action=ControlAction.MODEL_ENABLE, target="model:x")
    assert not admin.has_add_permission(request)
    assert not admin.has_change_permission(request, event)
    assert not admin.has_delete_permission(request, event)


def test_a_rolled_back_change_leaves_no_event(db: Any) -> None:
    with pytest.raises(IntegrityError), transaction.atomic():
        control_event_record(actor="test", action=ControlAction.MODEL_ENABLE, target="model:x")
        Provider.objects.create(name="p", kind="simulated")
        Provider.objects.create(name="p", kind="simulated")
    assert not ControlEvent.objects.exists()


@pytest.fixture
def admin_client(db: Any) -> Client:
    get_user_model().objects.create_superuser("root", "root@example.com", "pw")
    client = Client()
    assert client.login(username="root", password="pw")
    return client


def test_admin_edits_are_recorded_as_the_signed_in_user(catalog: Any, admin_client: Client) -> None:
    model = LLMModel.objects.get(name="small")
    form = {
        "name": "small", "provider": model.provider_id, "upstream_name": "", "input_usd_per_mtok": "0.1",
        "output_usd_per_mtok": "0.4", "context_window": "32768", "capabilities": '["json"]',
        "tags": '{"region": "eu"}', "tier": "1", "sim_profile": "{}", "load_balancing": "weighted",
        "enabled": "on",
    }  # fmt: skip
    response = admin_client.post(f"/admin/providers/llmmodel/{model.pk}/change/", form)
    assert response.status_code == 302, response.content.decode()[:2000]
    (event,) = _events("model.update")
    assert (event.actor, event.target) == ("root", "model:small")
    assert event.detail["changes"] == {"output_usd_per_mtok": ["0.2", "0.4"]}


def test_an_admin_revocation_and_deletion_are_recorded(catalog: Any, admin_client: Client) -> None:
    row, _ = ApiKey.objects.create_key(name="legacy")
    form = {"name": "legacy", "revoked": "on", "is_active": "on", "expiry_date_0": "", "expiry_date_1": ""}
    response = admin_client.post(f"/admin/routing/apikey/{row.pk}/change/", form)
    assert response.status_code == 302, response.content.decode()[:2000]
    (event,) = _events("api_key.revoke")
    assert (event.actor, event.target) == ("root", f"api_key:legacy@{row.created:%Y-%m-%dT%H:%M:%SZ}")

    deployment = Deployment.objects.create(
        model=LLMModel.objects.get(name="small"), provider=Provider.objects.get(name="sim"), name="d1"
    )
    response = admin_client.post(
        "/admin/providers/deployment/",
        {"action": "delete_selected", "_selected_action": [deployment.pk], "post": "yes"},
    )
    assert response.status_code == 302
    assert [(e.actor, e.target) for e in _events("deployment.delete")] == [("root", "deployment:small/d1")]


def test_seed_demo_records_what_it_creates_once_then_nothing(db: Any) -> None:
    call_command("seed_demo", stdout=StringIO())
    first = ControlEvent.objects.filter(actor="cli:seed_demo")
    assert {"catalog.load", "provider.create", "model.create", "policy.publish", "schedule.create"} <= set(
        first.values_list("action", flat=True)
    )
    count = first.count()
    call_command("seed_demo", stdout=StringIO())  # every `make run` seeds: nothing new, nothing logged
    assert ControlEvent.objects.filter(actor="cli:seed_demo").count() == count
    call_command("ensure_schedules", stdout=StringIO())
    assert not ControlEvent.objects.filter(actor="cli:ensure_schedules").exists()


def test_admin_edits_of_users_and_their_groups_are_recorded_never_the_password(admin_client: Client) -> None:
    reviewers = Group.objects.create(name="reviewers")
    response = admin_client.post(
        "/admin/auth/user/add/",
        {"username": "ann", "password1": "a-long-pass-9876", "password2": "a-long-pass-9876",
         "usable_password": "true"},
    )  # fmt: skip
    assert response.status_code == 302, response.content.decode()[:2000]
    (created,) = _events("user.create")
    assert (created.actor, created.target) == ("root", "user:ann")
    ann = get_user_model().objects.get(username="ann")
    form = {
        "username": "ann", "first_name": "", "last_name": "", "email": "", "is_active": "on",
        "is_staff": "on", "groups": [reviewers.pk], "last_login_0": "", "last_login_1": "",
        "date_joined_0": "2026-11-30", "date_joined_1": "10:00:00",
    }  # fmt: skip
    response = admin_client.post(f"/admin/auth/user/{ann.pk}/change/", form)
    assert response.status_code == 302, response.content.decode()[:2000]
    (updated,) = _events("user.update")
    assert updated.detail["changes"]["is_staff"] == [False, True]
    assert updated.detail["changes"]["groups"] == [[], ["reviewers"]]
    response = admin_client.post(
        f"/admin/auth/user/{ann.pk}/password/",
        {"password1": "another-pass-5432", "password2": "another-pass-5432", "usable_password": "true"},
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    password_event = _events("user.update")[-1]
    assert password_event.detail == {"password_set": True, "via": "admin"}
    everything = json.dumps([e.detail for e in ControlEvent.objects.all()])
    assert "pass-9876" not in everything and "pass-5432" not in everything and "pbkdf2" not in everything

    response = admin_client.post(f"/admin/auth/group/{reviewers.pk}/change/", {"name": "auditors-2"})
    assert response.status_code == 302, response.content.decode()[:2000]
    assert _events("group.update")[0].detail["changes"] == {"name": ["reviewers", "auditors-2"]}
    response = admin_client.post(f"/admin/auth/user/{ann.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert [e.target for e in _events("user.delete")] == ["user:ann"]


def test_admin_edits_of_periodic_tasks_and_their_intervals_are_recorded(
    db: Any, admin_client: Client
) -> None:
    call_command("ensure_schedules", stdout=StringIO())
    task = PeriodicTask.objects.get(name="scope: audit seal")
    response = admin_client.post(
        "/admin/django_celery_beat/periodictask/",
        {"action": "disable_tasks", "_selected_action": [task.pk]},
    )
    assert response.status_code == 302
    (disabled,) = _events("schedule.update")
    assert (disabled.actor, disabled.target) == ("root", "schedule:scope: audit seal")
    assert disabled.detail["changes"] == {"enabled": [True, False]}
    interval = task.interval
    assert interval is not None
    response = admin_client.post(
        f"/admin/django_celery_beat/intervalschedule/{interval.pk}/change/",
        {
            "every": "5",
            "period": "minutes",
            "periodictask_set-TOTAL_FORMS": "0",
            "periodictask_set-INITIAL_FORMS": "0",
        },  # fmt: skip
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    (timing,) = _events("schedule_timing.update")
    assert timing.actor == "root" and timing.detail["changes"]["every"] == [interval.every, 5]


def test_a_lost_retraining_run_marked_failed_is_recorded_as_the_system(catalog: Any, settings: Any) -> None:
    silent = timezone.now() - timedelta(seconds=settings.SCOPE_RETRAIN_STALE_AFTER_S + 1)
    lost = TrainingRun.objects.create(
        status=TrainingRunStatus.RUNNING, trigger="schedule", started_at=silent, heartbeat_at=silent
    )
    with transaction.atomic():
        retraining_request(trigger="manual", actor="ann")
        (event,) = _events("retrain.abandon")
    assert (event.actor, event.target) == ("system:retraining", f"training_run:{lost.pk}")
    assert event.detail["trigger"] == "schedule"
