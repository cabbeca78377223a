from __future__ import annotations

import os
import subprocess
import sys
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.apps import apps
from django.contrib import admin
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.test import Client

from tests.factories import make_policy

ROOT = Path(__file__).resolve().parents[2]


def run_manage(*args: str, env: dict[str, str], timeout: int = 120) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.django_db
def test_healthz_checks_the_database_cache_and_default_policy(settings: Any) -> None:
    response = Client().get("/healthz")  # an empty catalog: no default policy yet
    assert response.status_code == 200 and response.json()["status"] == "degraded"
    assert "SCOPE_DEFAULT_POLICY names 'default'" in response.json()["checks"]["default_policy"]["error"]
    make_policy("default")
    body = Client().get("/healthz").json()
    assert body["status"] == "ok"
    assert body["checks"]["database"]["ok"] is True and body["checks"]["cache"]["ok"] is True
    assert body["checks"]["default_policy"] == {"ok": True, "slug": "default"}


@pytest.mark.django_db
def test_healthz_says_which_parts_of_routing_run_compiled_in_this_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from routing import features

    make_policy("default")
    monkeypatch.setattr(features, "_char_kernel", None)  # as when the kernel was refused
    body = Client().get("/healthz").json()
    assert body["status"] == "ok"  # the same results, slower: not a failed check
    assert "character_ngrams" in body["acceleration"]["numpy"]
    assert "character_ngrams" not in body["acceleration"]["compiled"]


@pytest.mark.django_db
def test_healthz_says_degraded_when_the_decision_writer_is_gone_and_ok_when_it_listens(
    settings: Any, tmp_path: Path
) -> None:
    import socket

    make_policy("default")
    path = str(tmp_path / "writer.sock")
    settings.SCOPE_DECISION_WRITER_SOCKET = path
    body = Client().get("/healthz").json()
    assert body["status"] == "degraded"
    assert body["checks"]["decision_writer"]["ok"] is False
    assert body["checks"]["decision_writer"]["fallback"] == "workers commit their own rows"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(path)
        listener.listen(1)
        response = Client().get("/healthz")
    assert response.status_code == 200 and response.json()["checks"]["decision_writer"] == {"ok": True}
    assert response.json()["status"] == "ok"


@pytest.mark.django_db
def test_the_openapi_schema_is_served_and_valid() -> None:
    response = Client().get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    out = StringIO()
    call_command("spectacular", "--validate", "--fail-on-warn", stdout=out)
    assert "/api/v1/route" in out.getvalue()


def test_every_model_of_scope_is_in_the_admin_and_decisions_are_read_only() -> None:
    for label in ("providers", "routing", "feedback"):
        for model in apps.get_app_config(label).get_models():
            assert model in admin.site._registry, f"{model.__name__} is not in the admin"
    from routing.models import DecisionLog

    decision_admin = admin.site._registry[DecisionLog]
    request: Any = None
    assert not decision_admin.has_add_permission(request)
    assert not decision_admin.has_change_permission(request)
    assert not decision_admin.has_delete_permission(request)


@pytest.mark.django_db
def test_roles_exist_and_auditors_can_only_view() -> None:
    auditor = Group.objects.get(name="auditor")
    codenames = set(auditor.permissions.values_list("codename", flat=True))
    assert codenames and all(c.startswith("view_") for c in codenames)
    assert "view_decisionlog" in codenames
    operator = set(Group.objects.get(name="operator").permissions.values_list("codename", flat=True))
    assert {"change_llmmodel", "add_routingpolicy"} <= operator


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DATABASE_URL": "mysql://u@h/db"}, "DATABASE_URL must start with one of"),
        ({"REDIS_URL": "http://localhost"}, "REDIS_URL must start with one of"),
        ({"DJANGO_DEBUG": "maybe"}, "DJANGO_DEBUG='maybe' is not a boolean"),
        ({"SCOPE_CONN_MAX_AGE": "forever"}, "SCOPE_CONN_MAX_AGE='forever' is not an integer"),
        ({"SCOPE_PROMPT_STORAGE": "sometimes"}, "SCOPE_PROMPT_STORAGE='sometimes' must be one of"),
        ({"SCOPE_EXTRA_STRATEGIES": "mine=nope.Mod"}, "SCOPE_EXTRA_STRATEGIES: No module named 'nope'"),
        ({"SCOPE_EXTRA_STRATEGIES": "mine=routing.engine.strategies.Nope"}, "SCOPE_EXTRA_STRATEGIES: "),
        ({"SCOPE_TRAINING_SOURCE_WEIGHTS": "foo"}, "SCOPE_TRAINING_SOURCE_WEIGHTS: 'foo' is not key=number"),
        ({"SCOPE_LOG_LEVEL": "LOUD"}, "SCOPE_LOG_LEVEL='LOUD' must be one of"),
        ({"SCOPE_GROUP_COMMIT_DELAY_MS": "inf"}, "SCOPE_GROUP_COMMIT_DELAY_MS='inf' is not a finite number"),
        (
            {"SCOPE_RETRAIN_HOLDOUT_FRACTION": "1.5"},
            "SCOPE_RETRAIN_HOLDOUT_FRACTION=1.5 must be at most 0.95",
        ),
    ],
)
def test_bad_settings_fail_at_start_with_a_clear_message(
    env: dict[str, str], message: str, tmp_path: Path
) -> None:
    result = run_manage("check", env={**env, "SCOPE_VAR_DIR": str(tmp_path)})
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr  # one line naming the variable, not 30 lines of stack


def test_the_embedded_default_runs_on_sqlite_with_wal_and_routes(tmp_path: Path) -> None:
    env = {"SCOPE_VAR_DIR": str(tmp_path)}
    assert run_manage("migrate", "-v0", env=env).returncode == 0
    seeded = run_manage("seed_demo", env=env)
    assert seeded.returncode == 0, seeded.stderr
    key = run_manage("create_api_key", "embedded", env=env).stdout.strip()
    script = (
        "import django, json; django.setup();"
        "from django.conf import settings; from django.db import connection; from django.test import Client;"
        "assert connection.vendor == 'sqlite', connection.vendor;"
        "c = connection.cursor(); c.execute('PRAGMA journal_mode'); print('journal', c.fetchone()[0]);"
        "print('eager', settings.CELERY_TASK_ALWAYS_EAGER, settings.CACHES['default']['BACKEND'].rsplit('.', 1)[-1]);"
        f"r = Client().post('/api/v1/route', data=json.dumps({{'messages': [{{'role': 'user', 'content': 'hi'}}]}}),"
        f" content_type='application/json', HTTP_AUTHORIZATION='Bearer {key}');"
        "print('status', r.status_code, r.json()['model'])"
    )
    clean = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**clean, **env, "DJANGO_SETTINGS_MODULE": "scope_site.settings"},
    )
    assert result.returncode == 0, result.stderr
    assert "journal wal" in result.stdout
    assert "eager True LocMemCache" in result.stdout
    assert "status 200" in result.stdout
    assert (tmp_path / "scope.sqlite3").exists()
